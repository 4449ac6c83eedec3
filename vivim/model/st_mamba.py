"""ST-Mamba: three selective-scan branches over one clip's tokens, computed as ONE grouped scan.

Tokens are T-major (all h*w tokens of frame 0 in raster order, then frame 1, ...). The branches see the same
tokens in three orders:
  forward     - as they are: a temporal scan through the frames
  reversed    - the whole sequence backwards
  interleaved - position-major, frame fastest ((p0,t0), (p0,t1), ..., (p1,t0), ...): each pixel's T tokens in a row
Each branch has its own causal depthwise conv1d, x_proj, dt_proj, A and D; in_proj, the z gate and out_proj are
shared, and the three outputs (restored to T-major order) are averaged.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vivim.ops import selective_scan

BRANCHES = ("forward", "reversed", "interleaved")


def to_branch_order(x: Tensor, branch: str, frames: int) -> Tensor:
    """Reorder the last (token) axis of (..., L) from T-major into the branch's scan order."""
    if branch == "forward":
        return x
    if branch == "reversed":
        return x.flip(-1)
    lead, length = x.shape[:-1], x.shape[-1]
    return x.reshape(*lead, frames, length // frames).transpose(-1, -2).reshape(*lead, length)


def from_branch_order(x: Tensor, branch: str, frames: int) -> Tensor:
    """Inverse of `to_branch_order`: back to T-major."""
    if branch == "forward":
        return x
    if branch == "reversed":
        return x.flip(-1)
    lead, length = x.shape[:-1], x.shape[-1]
    return x.reshape(*lead, length // frames, frames).transpose(-1, -2).reshape(*lead, length)


def _at_least_fp32(t: Tensor) -> Tensor:
    """A, D and the dt bias enter the scan in fp32 (or fp64 in a double-precision model)."""
    return t if t.dtype == torch.float64 else t.float()


class SSMBranch(nn.Module):
    """One branch's own parameters: causal depthwise conv, input-dependent (dt, B, C) projections, A and D."""

    def __init__(self, d_inner: int, d_state: int, d_conv: int, dt_rank: int):
        super().__init__()
        self.dt_rank, self.d_state = dt_rank, d_state
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)  # its bias is the scan's delta_bias
        # S4D-real initialisation A = -(1..N); A_log, D and the dt bias stay fp32 (see VivimModel.to_inference_dtype)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))

    def scan_inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (batch, d_inner, L) in scan order -> u, delta (without bias), B, C (batch, N, L)."""
        length = x.shape[-1]
        u = F.silu(self.conv1d(x)[..., :length])
        x_dbl = torch.matmul(self.x_proj.weight, u)  # (batch, dt_rank + 2N, L)
        dt_low, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
        delta = torch.matmul(self.dt_proj.weight, dt_low)
        return u, delta, B, C


class STMamba(nn.Module):
    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.d_inner = expand * d_model
        dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.branches = nn.ModuleList(SSMBranch(self.d_inner, d_state, d_conv, dt_rank) for _ in BRANCHES)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def branch_list(self) -> list[SSMBranch]:
        """The branches in BRANCHES order, typed (an nn.ModuleList iterates as plain Modules)."""
        return [cast(SSMBranch, b) for b in self.branches]

    def forward(self, tokens: Tensor, frames: int) -> Tensor:
        """tokens (batch, L = T*h*w, C) in T-major order -> (batch, L, C)."""
        # in_proj (no bias) with the transposed product, so x and z come out channel-major and contiguous: the
        # branches' conv1d and reorderings then read contiguous rows (0.3 ms of a paper-model step on an H200)
        xz = torch.matmul(self.in_proj.weight, tokens.transpose(1, 2))  # (batch, 2*d_inner, L)
        x, z = xz.chunk(2, dim=1)
        branches = self.branch_list()
        parts = [branch.scan_inputs(to_branch_order(x, name, frames)) for name, branch in zip(BRANCHES, branches)]
        dtype = x.dtype
        u = torch.cat([p[0] for p in parts], dim=1).to(dtype)
        delta = torch.cat([p[1] for p in parts], dim=1).to(dtype)
        B = torch.stack([p[2] for p in parts], dim=1).to(dtype)  # (batch, G=3, N, L)
        C = torch.stack([p[3] for p in parts], dim=1).to(dtype)
        gate = torch.cat([to_branch_order(z, name, frames) for name in BRANCHES], dim=1).to(dtype)
        A = torch.cat([-torch.exp(_at_least_fp32(b.A_log)) for b in branches])
        D = torch.cat([_at_least_fp32(b.D) for b in branches])
        dt_bias = torch.cat([_at_least_fp32(b.dt_proj.bias) for b in branches])
        y = selective_scan(u, delta, A, B, C, D, gate, dt_bias, delta_softplus=True)
        ys = y.chunk(len(BRANCHES), dim=1)
        merged = cast(Tensor, sum(from_branch_order(yb, name, frames) for name, yb in zip(BRANCHES, ys))) / len(BRANCHES)
        return self.out_proj(merged.transpose(1, 2).to(tokens.dtype))
