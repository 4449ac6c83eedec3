"""Frame resizing on the device, as two small matrix products, for the PyTorch backend on CUDA.

OpenCV's INTER_AREA resize of a 640x480 frame to 256x256 takes ~1.5 ms on a 16-core x86 host, while the GPU waits
for its input. A resize is separable: out = Wy @ image @ Wx^T per channel, with Wy (H, h) and Wx (W, w) holding
OpenCV's coefficients, and on a GPU the two products take microseconds (dense: ~1,500 FLOP per source pixel, 2 GFLOP
for a 1080p frame). The result is rounded to the uint8 grid, so the model sees what the CPU path (and the ONNX
Runtime / TensorRT backends) would give it, at most a level apart where the two roundings differ.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Callable, Iterator, NamedTuple, Optional, Set, Tuple

import numpy as np
import torch

from vivim.model.resize import bilinear_weights


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
    """(dst, src) weights of OpenCV's INTER_LINEAR, which are the model's bilinear weights (pixel centres aligned,
    neighbours clamped at the borders, no antialiasing)."""
    return bilinear_weights(src, dst).float().numpy()


def resample_weights(src: int, dst: int, mode: str) -> np.ndarray:
    """(dst, src) weights of one axis for `mode` ('area' shrinks only, 'linear' any size)."""
    if mode == "area":
        return area_weights(src, dst)
    if mode == "linear":
        return linear_weights(src, dst)
    raise ValueError(f"interpolation must be 'area' or 'linear', got {mode!r}")


@contextlib.contextmanager
def _full_fp32_matmul() -> Iterator[None]:
    """TF32, if the application enabled it, rounds the weights to 10 bits: up to a tenth of a level of error, enough
    to move many values across a rounding boundary."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def resize_bgr_to_rgb(image: torch.Tensor, wy: torch.Tensor, wx_t: torch.Tensor) -> torch.Tensor:
    """BGR uint8 (h, w, 3) on the device -> RGB float (3, H, W) in 0..255 on the uint8 grid, with wy (H, h) and
    wx_t (w, W) from resample_weights. Exact halves round up. OpenCV does the same in its non-integer area path
    (where exact halves are rare) and its 2x2 path, and rounds to even in its other integer-factor area paths,
    so there some values are a level apart."""
    bgr = image.permute(2, 0, 1).float()  # (3, h, w)
    with _full_fp32_matmul():
        out = torch.matmul(torch.matmul(wy, bgr), wx_t)  # (3, H, W)
    return out.flip(0).add_(0.5).floor_()  # convex weights of 0..255 values: no clamp needed


class _PerSize(NamedTuple):
    host: torch.Tensor  # pinned (pageable if pinning failed)
    device: torch.Tensor
    copied: "Optional[torch.cuda.Event]"  # None off CUDA (the copy is synchronous there)
    wy: torch.Tensor
    wx_t: torch.Tensor


class DeviceResizer:
    """Uploads BGR uint8 frames through a pinned buffer and resizes them on the device (see the module docstring).

    Handles shrinking with 'area' and any resize with 'linear' (OpenCV's INTER_AREA enlarges differently); frames
    already at the model's size, or of another kind, are the caller's (no resize to save). Buffers and matrices are
    kept for the two most recent frame sizes (a camera that renegotiates, a folder of mixed images: no growth), and
    for the sizes a CUDA graph was captured with (keep(): the graph reads their matrices).
    One CUDA stream is assumed: the caller resizes and consumes a frame on the stream it uploads on."""

    _KEEP_SIZES = 2

    def __init__(self, size: Tuple[int, int], mode: str, device: torch.device,
                 log: Callable[[str], None] = print) -> None:
        self.size = size
        self.mode = mode
        self.device = device
        self._log = log
        self._per_size: "OrderedDict[Tuple[int, int], _PerSize]" = OrderedDict()
        self._kept: Set[Tuple[int, int]] = set()

    def handles(self, frame: np.ndarray) -> bool:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            return False
        height, width = self.size
        if (frame.shape[0], frame.shape[1]) == (height, width):
            return False
        return self.mode == "linear" or (height <= frame.shape[0] and width <= frame.shape[1])

    def _for_size(self, key: Tuple[int, int]) -> _PerSize:
        entry = self._per_size.get(key)
        if entry is not None:
            self._per_size.move_to_end(key)
            return entry
        try:
            host = torch.empty((*key, 3), dtype=torch.uint8, pin_memory=True)
        except RuntimeError as exc:  # e.g. a container's locked-memory limit: slower, still correct
            self._log(f"warning: cannot pin a {key[1]}x{key[0]} frame buffer ({str(exc).splitlines()[0]}); "
                      "uploading from pageable memory")
            host = torch.empty((*key, 3), dtype=torch.uint8)
        height, width = self.size
        entry = _PerSize(
            host=host,
            device=torch.empty((*key, 3), dtype=torch.uint8, device=self.device),
            copied=torch.cuda.Event() if self.device.type == "cuda" else None,
            wy=torch.from_numpy(resample_weights(key[0], height, self.mode)).to(self.device),
            wx_t=torch.from_numpy(resample_weights(key[1], width, self.mode)).t().contiguous().to(self.device),
        )
        self._per_size[key] = entry
        evictable = [k for k in self._per_size if k not in self._kept]  # least recently used first
        for old in evictable[: max(0, len(evictable) - self._KEEP_SIZES)]:
            del self._per_size[old]
        return entry

    def keep(self, shape: Tuple[int, ...]) -> None:
        """Never drop this frame size's buffers and matrices (a CUDA graph captured with them reads them)."""
        key = (int(shape[0]), int(shape[1]))
        self._for_size(key)
        self._kept.add(key)

    def upload(self, frame_bgr: np.ndarray) -> torch.Tensor:
        """The frame as (h, w, 3) uint8 on the device, in a buffer reused for the next frame of this size. Stream
        order keeps the next copy into it after every earlier use (one stream, see the class docstring)."""
        entry = self._for_size((int(frame_bgr.shape[0]), int(frame_bgr.shape[1])))
        if entry.copied is not None:
            entry.copied.synchronize()  # the previous frame's copy has left the host buffer
        entry.host.numpy()[...] = frame_bgr
        entry.device.copy_(entry.host, non_blocking=True)
        if entry.copied is not None:
            entry.copied.record(torch.cuda.current_stream(self.device))
        return entry.device

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """(h, w, 3) uint8 BGR on the device -> (1, 3, H, W) float RGB in 0..255."""
        entry = self._for_size((int(image.shape[0]), int(image.shape[1])))
        return resize_bgr_to_rgb(image, entry.wy, entry.wx_t)[None]

    def __call__(self, frame_bgr: np.ndarray) -> torch.Tensor:
        return self.resize(self.upload(frame_bgr))

    @property
    def cached_sizes(self) -> list:
        """(h, w) of the frame sizes whose buffers and matrices are held, least recently used first."""
        return list(self._per_size)

    def clear(self) -> None:
        """Drop every size (after the graphs that read them are gone)."""
        self._per_size.clear()
        self._kept.clear()
