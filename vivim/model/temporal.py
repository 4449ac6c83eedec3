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
        x = self.dwconv(x.transpose(1, 2).reshape(batch, hidden, frames, h, w))
        return self.fc2(F.gelu(x.flatten(2).transpose(1, 2)))


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
