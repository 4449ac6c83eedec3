"""SegFormer / MiT building blocks (per frame): overlapped patch embedding, efficient self-attention, Mix-FFN."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlap (padding = kernel // 2), then LayerNorm over channels: tokens (N, h*w, C)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from a map reduced by a strided conv (ratio sr)."""

    def __init__(self, dim: int, heads: int, sr_ratio: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.sr_norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        n, length, dim = x.shape
        kv = x
        if self.sr_ratio > 1:
            kv = self.sr(x.transpose(1, 2).reshape(n, dim, h, w)).flatten(2).transpose(1, 2)
            kv = self.sr_norm(kv)

        def split_heads(t: Tensor) -> Tensor:
            return t.reshape(n, -1, self.heads, dim // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split_heads(self.query(x)), split_heads(self.key(kv)),
                                             split_heads(self.value(kv)))
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class MixFFN(nn.Module):
    """Linear -> 3x3 depthwise conv (positional information without position embeddings) -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = self.fc1(x)
        n, _, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(n, c, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(x))


class SegFormerBlock(nn.Module):
    """Pre-norm transformer layer applied to each frame on its own (spatial mixing only)."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, mlp_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientSelfAttention(dim, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


def init_segformer_weights(module: nn.Module) -> None:
    """SegFormer's initialisation: truncated-normal linears, unit LayerNorms, fan-out normal convs."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
