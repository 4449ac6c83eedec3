"""Frame resizing on the device, as two small matrix products, for the PyTorch backend on CUDA.

OpenCV's INTER_AREA resize of a 640x480 frame to 256x256 takes ~1.5 ms on a 16-core x86 host, while the GPU waits
for its input. A resize is separable: out = Wy @ image @ Wx^T per channel, with Wy (H, h) and Wx (W, w) holding
OpenCV's coefficients, and on a GPU the two products take microseconds. The result is rounded to the uint8 grid as
OpenCV rounds, so the model sees what the CPU path (and the ONNX Runtime / TensorRT backends) would give it, up to a
level where the two roundings straddle a half.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch


def area_weights(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights of OpenCV's INTER_AREA when shrinking (dst <= src): output pixel i is the mean of the source
    span [i s, (i + 1) s), s = src / dst, each source pixel weighted by its overlap with the span."""
    if not 1 <= dst <= src:
        raise ValueError(f"area weights shrink only: {src} -> {dst}")
    scale = src / dst
    start = np.arange(dst, dtype=np.float64)[:, None] * scale
    end = np.minimum(start + scale, src)
    left = np.arange(src, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(end, left + 1.0) - np.maximum(start, left), 0.0, None)
    return (overlap / (end - start)).astype(np.float32)


def linear_weights(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights of OpenCV's INTER_LINEAR: pixel centres aligned, the two neighbours of (i + 0.5) s - 0.5,
    clamped at the borders as OpenCV clamps (no antialiasing, as in OpenCV)."""
    scale = src / dst
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5
    left = np.floor(pos).astype(np.int64)
    frac = pos - left
    frac[left < 0] = 0.0
    left[left < 0] = 0
    at_end = left >= src - 1
    frac[at_end] = 0.0
    left[at_end] = src - 1
    weights = np.zeros((dst, src), dtype=np.float64)
    rows = np.arange(dst)
    np.add.at(weights, (rows, left), 1.0 - frac)
    np.add.at(weights, (rows, np.minimum(left + 1, src - 1)), frac)
    return weights.astype(np.float32)


def resample_weights(src: int, dst: int, mode: str) -> np.ndarray:
    if mode == "area":
        return area_weights(src, dst)
    if mode == "linear":
        return linear_weights(src, dst)
    raise ValueError(f"interpolation must be 'area' or 'linear', got {mode!r}")


def resize_bgr_to_rgb(image: torch.Tensor, wy: torch.Tensor, wx_t: torch.Tensor) -> torch.Tensor:
    """BGR uint8 (h, w, 3) on the device -> RGB float (3, H, W) in 0..255 on the uint8 grid, with wy (H, h) and
    wx_t (w, W) from resample_weights. Halves round up, as OpenCV's integer-factor INTER_AREA path does (its other
    paths rarely meet an exact half)."""
    bgr = image.permute(2, 0, 1).float()  # (3, h, w)
    out = torch.matmul(torch.matmul(wy, bgr), wx_t)  # (3, H, W)
    return out.flip(0).add_(0.5).floor_()  # convex weights of 0..255 values: no clamp needed


class DeviceResizer:
    """Uploads BGR uint8 frames through a pinned buffer and resizes them on the device (see the module docstring).

    Handles shrinking with 'area' and any resize with 'linear' (OpenCV's INTER_AREA enlarges differently); frames
    already at the model's size, or of another kind, are the caller's (no resize to save). Matrices and buffers are
    made once per frame size."""

    def __init__(self, size: Tuple[int, int], mode: str, device: torch.device) -> None:
        self.size = size
        self.mode = mode
        self.device = device
        self._buffers: Dict[Tuple[int, int], Tuple[torch.Tensor, torch.Tensor, torch.cuda.Event]] = {}
        self._weights: Dict[Tuple[int, int], Tuple[torch.Tensor, torch.Tensor]] = {}

    def handles(self, frame: np.ndarray) -> bool:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            return False
        height, width = self.size
        if (frame.shape[0], frame.shape[1]) == (height, width):
            return False
        return self.mode == "linear" or (height <= frame.shape[0] and width <= frame.shape[1])

    def upload(self, frame_bgr: np.ndarray) -> torch.Tensor:
        """The frame as (h, w, 3) uint8 on the device, in a buffer reused for the next frame of this size (stream
        order keeps the copy after every earlier use of it)."""
        key = (int(frame_bgr.shape[0]), int(frame_bgr.shape[1]))
        if key not in self._buffers:
            pinned = torch.empty((*key, 3), dtype=torch.uint8, pin_memory=True)
            on_device = torch.empty((*key, 3), dtype=torch.uint8, device=self.device)
            self._buffers[key] = (pinned, on_device, torch.cuda.Event())
        pinned, on_device, copied = self._buffers[key]
        copied.synchronize()  # the previous frame's copy has left the pinned buffer
        pinned.numpy()[...] = frame_bgr
        on_device.copy_(pinned, non_blocking=True)
        copied.record(torch.cuda.current_stream(self.device))
        return on_device

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """(h, w, 3) uint8 BGR on the device -> (1, 3, H, W) float RGB in 0..255."""
        key = (int(image.shape[0]), int(image.shape[1]))
        if key not in self._weights:
            height, width = self.size
            wy = torch.from_numpy(resample_weights(key[0], height, self.mode)).to(self.device)
            wx_t = torch.from_numpy(resample_weights(key[1], width, self.mode)).t().contiguous().to(self.device)
            self._weights[key] = (wy, wx_t)
        wy, wx_t = self._weights[key]
        return resize_bgr_to_rgb(image, wy, wx_t)[None]

    def __call__(self, frame_bgr: np.ndarray) -> torch.Tensor:
        return self.resize(self.upload(frame_bgr))
