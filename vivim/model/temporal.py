"""Vivim's temporal layer: LayerNorm -> ST-Mamba -> residual, LayerNorm -> detail-specific FFN -> residual."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from vivim.model.st_mamba import STMamba


class DetailSpecificFFN(nn.Module):
    """Linear -> 3x3x3 depthwise Conv3d over (T, h, w) -> GELU -> Linear: local spatio-temporal detail."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv3d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, tokens: Tensor, frames: int, h: int, w: int) -> Tensor:
        x = self.fc1(tokens)  # (batch, T*h*w, hidden), T-major
        batch, _, hidden = x.shape
        x = depthwise_conv3d_as_2d(x.reshape(batch, frames, h, w, hidden), self.dwconv)
        return self.fc2(F.gelu(x.reshape(batch, frames * h * w, hidden)))


def depthwise_conv3d_as_2d(x: Tensor, conv: nn.Conv3d) -> Tensor:
    """A depthwise Conv3d (odd kernel, 'same' zero padding, stride 1) on channels-last maps x (batch, T, h, w, C), as
    one depthwise Conv2d per temporal tap over the T-padded frames, summed.

    The Conv3d's own kernel is PyTorch's generic depthwise-3D one (no cuDNN): 143 against 87 us at 256 channels on
    64x64x5 on an H200; on a 2-core CPU 81 against 37 ms. Depthwise 2-D convolutions over channels-last maps have fast kernels
    everywhere. The Conv3d keeps the weights, so checkpoints do not change.
    """
    batch, frames, h, w, channels = x.shape
    taps, kh, kw = conv.kernel_size
    padded = F.pad(x, (0, 0, 0, 0, 0, 0, taps // 2, taps // 2))  # zero frames before the first and after the last

    def tap(k: int) -> Tensor:
        # frames k .. k+T-1 of the padded clip, as an NCHW view of channels-last memory
        window = padded[:, k:k + frames].reshape(batch * frames, h, w, channels).permute(0, 3, 1, 2)
        return F.conv2d(window, conv.weight[:, :, k], conv.bias if k == 0 else None, padding=(kh // 2, kw // 2),
                        groups=channels)

    out = tap(0)
    for k in range(1, taps):
        out = out + tap(k)
    return out.permute(0, 2, 3, 1).reshape(batch, frames, h, w, channels)


class MambaLayer(nn.Module):
    def __init__(self, dim: int, d_state: int, d_conv: int, expand: int, dsf_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = STMamba(dim, d_state, d_conv, expand)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = DetailSpecificFFN(dim, dim * dsf_ratio)
        self._init_like_vivim()

    def _init_like_vivim(self) -> None:
        # The official code re-initialises every Linear (trunc-normal 0.02, zero bias) and LayerNorm of the layer
        # after construction; this also zeroes dt_proj's bias (initial dt = softplus(0)). Reproduced for fidelity.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, tokens: Tensor, frames: int, h: int, w: int) -> Tensor:
        """tokens (batch, T*h*w, C), T-major."""
        tokens = tokens + self.mixer(self.norm1(tokens), frames)
        return tokens + self.mlp(self.norm2(tokens), frames, h, w)
