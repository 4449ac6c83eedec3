"""Bilinear resizing of feature maps as two matrix products.

PyTorch's CUDA kernel for these maps gives each output pixel one thread that loops over every channel: the
decoder's 768-channel maps upsampled to 64x64 run on 4,096 threads, ~0.4 ms per call on an H200. The resize is
separable (out = Wy @ map @ Wx^T per channel), and as two matrix products over the channels-last map it takes
microseconds: 1.4 ms less per paper-model step on the H200 (benchmarks/RESULTS.md). On a 2-core CPU it is faster for
one map (1.6 against 24 ms, 768 channels from 32x32: interpolation takes a slow path for a batch of one) and slower
for eight (58 against 30 ms). There the time goes to page faults on fresh output memory (allocating and filling
the 100 MB output alone takes 28 ms), and the products write an intermediate map as well. The result equals
F.interpolate(mode="bilinear", align_corners=False) up to rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def bilinear_weights(src: int, dst: int) -> Tensor:
    """(dst, src) float64 weights of a bilinear resize with pixel centres aligned (align_corners=False, no
    antialiasing): output i takes the two neighbours of (i + 0.5) src / dst - 0.5, clamped at the borders. This is
    also OpenCV's INTER_LINEAR."""
    pos = ((torch.arange(dst, dtype=torch.float64) + 0.5) * (src / dst) - 0.5).clamp(min=0.0)
    left = pos.floor().clamp(max=src - 1)
    frac = torch.where(left >= src - 1, torch.zeros_like(pos), pos - left)
    right = (left + 1).clamp(max=src - 1)
    weights = torch.zeros(dst, src, dtype=torch.float64)
    weights.scatter_add_(1, left.long()[:, None], (1.0 - frac)[:, None])
    weights.scatter_add_(1, right.long()[:, None], frac[:, None])
    return weights


def resize_with(maps: Tensor, wy: Tensor, wx: Tensor) -> Tensor:
    """maps (n, c, h, w), wy (H, h), wx (W, w) -> (n, c, H, W), laid out channels-last."""
    n, c, h, _ = maps.shape
    rows = torch.matmul(wx, maps.permute(0, 2, 3, 1))  # (n, h, W, c): each row resized along x
    out = torch.matmul(wy, rows.reshape(n, h, -1))  # (n, H, W c): then along y
    return out.reshape(n, wy.shape[0], wx.shape[0], c).permute(0, 3, 1, 2)


class BilinearResize(nn.Module):
    """Resize maps of one expected size to another. The weights are non-persistent buffers, so they follow .to()
    and dtype casts and stay out of checkpoints; maps of another size get weights built for the call."""

    wy: Tensor
    wx: Tensor

    def __init__(self, src: tuple[int, int], dst: tuple[int, int]):
        super().__init__()
        self.src, self.dst = src, dst
        self.register_buffer("wy", bilinear_weights(src[0], dst[0]).float(), persistent=False)
        self.register_buffer("wx", bilinear_weights(src[1], dst[1]).float(), persistent=False)

    def forward(self, maps: Tensor, size: tuple[int, int]) -> Tensor:
        src, dst = (maps.shape[-2], maps.shape[-1]), (size[0], size[1])
        if src == self.src and dst == self.dst:
            # no-ops unless the maps' dtype is not the model's (autocast)
            wy, wx = self.wy.to(maps.dtype), self.wx.to(maps.dtype)
        else:
            # built in float64 on the CPU (some devices have no float64), then moved
            wy = bilinear_weights(src[0], dst[0]).to(maps.device, maps.dtype)
            wx = bilinear_weights(src[1], dst[1]).to(maps.device, maps.dtype)
        return resize_with(maps, wy, wx)
