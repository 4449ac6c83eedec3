"""Selective-scan references in plain PyTorch.

`selective_scan_reference` is the CPU/generic implementation behind the `vivim::selective_scan` op: a chunked scan,
vectorised over the sequence (a short loop inside chunks of ~sqrt(L) tokens, then a short loop carrying the states
across chunks), fp32 accumulation, differentiable. `selective_scan_sequential` is a token-by-token recurrence for users
checking a result (run it in float64); the tests keep an oracle of their own (tests/scan_oracle.py) and check this
one against it.

Shapes follow mamba-ssm's `selective_scan_fn`: u, delta, z (batch, D, L); A (D, N); B, C (batch, N, L) or
(batch, G, N, L) with channel d using group d // (D // G); D, delta_bias (D,).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from vivim.errors import ScanShapeError


def check_shapes(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, max_dstate: Optional[int] = None,
    D: Optional[Tensor] = None, z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
) -> tuple[int, int, int, int, int]:
    """(batch, D, L, N, G) of a selective-scan call, or a one-line ScanShapeError; `max_dstate` bounds N (kernels)."""
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, Tensor):
            raise ScanShapeError(f"{name} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():  # an integer scan would run and truncate its output
            raise ScanShapeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if u.dim() != 3:
        raise ScanShapeError(f"u must be (batch, D, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if min(batch, dim, length) < 1:
        raise ScanShapeError(f"u must not be empty, got shape {tuple(u.shape)}")
    if delta.shape != u.shape:
        raise ScanShapeError(f"delta shape {tuple(delta.shape)} differs from u shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ScanShapeError(f"A must be (D={dim}, N), got shape {tuple(A.shape)}")
    dstate = A.shape[1]
    if max_dstate is not None and not 1 <= dstate <= max_dstate:
        raise ScanShapeError(f"A must be (D={dim}, N) with N (dstate) in 1..{max_dstate}, got shape {tuple(A.shape)}")
    groups = 1 if B.dim() == 3 else B.shape[1]
    for name, m in (("B", B), ("C", C)):
        # (batch, N, L) stands for one group, as in mamba-ssm: B and C may each take either layout when G = 1
        expected = (batch, dstate, length) if m.dim() == 3 and groups == 1 else (batch, groups, dstate, length)
        if tuple(m.shape) != expected:
            raise ScanShapeError(f"{name} must be {expected}, got shape {tuple(m.shape)}")
    if groups < 1 or dim % groups:
        raise ScanShapeError(f"D={dim} is not divisible by the number of groups G={groups}")
    # the optional ones broadcast silently into a wrong-shaped output if not checked
    optional: tuple[tuple[str, Optional[Tensor], tuple[int, ...]], ...] = (
        ("D", D, (dim,)), ("delta_bias", delta_bias, (dim,)), ("z", z, (batch, dim, length)))
    for opt_name, value, want in optional:
        if value is not None and (not isinstance(value, Tensor) or tuple(value.shape) != want):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ScanShapeError(f"{opt_name} must be {want}, got {got}")
    return batch, dim, length, dstate, groups


def _prepare_delta(delta: Tensor, delta_bias: Optional[Tensor], delta_softplus: bool, dtype: torch.dtype) -> Tensor:
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish(y: Tensor, u: Tensor, D: Optional[Tensor], z: Optional[Tensor], out_dtype: torch.dtype) -> Tensor:
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def selective_scan_sequential(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
) -> Tensor:
    """Token-by-token recurrence h_t = exp(dt A) h_{t-1} + dt B_t u_t, y_t = C_t . h_t: a slow, plain check."""
    batch, dim, length, dstate, groups = check_shapes(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias)
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    uf = u.to(acc)
    dt = _prepare_delta(delta, delta_bias, delta_softplus, acc)
    Bg = B.to(acc).reshape(batch, groups, dstate, length).repeat_interleave(dim // groups, dim=1)
    Cg = C.to(acc).reshape(batch, groups, dstate, length).repeat_interleave(dim // groups, dim=1)
    Af = A.to(acc)
    h = torch.zeros(batch, dim, dstate, dtype=acc, device=u.device)
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, :, t, None] * Af) * h + (dt[:, :, t] * uf[:, :, t])[:, :, None] * Bg[:, :, :, t]
        ys.append((h * Cg[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    return _finish(y, uf, D, z, u.dtype)


def default_chunk(length: int) -> int:
    """Chunk size ~sqrt(L/4): a step inside chunks costs ~4x a step across chunks, so this balances the two loops."""
    return max(1, min(length, math.ceil(math.sqrt(length / 4))))


def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    chunk: Optional[int] = None,
) -> Tensor:
    """Chunked selective scan, exact in fp32, differentiable, no Python loop over the sequence."""
    batch, dim, length, dstate, groups = check_shapes(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias)
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    k = chunk or default_chunk(length)
    n_chunks = -(-length // k)
    pad = n_chunks * k - length
    per_group = dim // groups

    uf = u.to(acc)
    dt = _prepare_delta(delta, delta_bias, delta_softplus, acc)
    Bf = B.to(acc).reshape(batch, groups, dstate, length)
    Cf = C.to(acc).reshape(batch, groups, dstate, length)
    if pad:  # padded tokens have dt = 0: decay 1 and no input, so they leave the state untouched
        dt, uu, Bf, Cf = (F.pad(t, (0, pad)) for t in (dt, uf, Bf, Cf))
    else:
        uu = uf

    # Layout (k, batch, G, D/G, [N,] n_chunks): one loop step handles token t of every chunk at once, and nothing
    # of size N x L is materialised (each step forms its own decay and input: cheaper in memory traffic).
    def tokens_first(x: Tensor, shape: tuple[int, ...]) -> Tensor:
        return x.reshape(*shape, n_chunks, k).movedim(-1, 0).contiguous()

    dt_k = tokens_first(dt, (batch, groups, per_group)).unsqueeze(-2)  # (k, b, G, Dg, 1, c)
    du_k = tokens_first(dt * uu, (batch, groups, per_group)).unsqueeze(-2)
    B_k = tokens_first(Bf, (batch, groups, dstate)).unsqueeze(3)  # (k, b, G, 1, N, c)
    C_k = tokens_first(Cf, (batch, groups, dstate)).unsqueeze(3)
    A_g = A.to(acc).reshape(groups, per_group, dstate, 1)

    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, delta_bias))
    scan = _scan_chunks_autograd if needs_grad else _scan_chunks_inplace
    y = scan(dt_k, du_k, B_k, C_k, A_g)  # (k, b, G, Dg, c)
    y = y.movedim(0, -1).reshape(batch, dim, n_chunks * k)[..., :length]
    return _finish(y, uf, D, z, u.dtype)


def _scan_chunks_autograd(dt_k: Tensor, du_k: Tensor, B_k: Tensor, C_k: Tensor, A_g: Tensor) -> Tensor:
    """The three passes of the chunked scan with out-of-place ops, so autograd can differentiate them.

    Per-step slices come from unbind(): indexing one step at a time would make the backward allocate a full-size
    gradient buffer per slice.
    """
    k, n_chunks = dt_k.shape[0], dt_k.shape[-1]
    dts, dus, Bs, Cs = dt_k.unbind(0), du_k.unbind(0), B_k.unbind(0), C_k.unbind(0)
    # 1) the state at the end of every chunk, scanned from zero
    h = dus[0] * Bs[0]
    for t in range(1, k):
        h = torch.addcmul(dus[t] * Bs[t], torch.exp(dts[t] * A_g), h)
    # 2) carry those states across chunks; a chunk's total decay is exp(A * sum(dt)), in (0, 1]
    chunk_decay = torch.exp(dt_k.sum(0) * A_g)  # (b, G, Dg, N, c)
    h_cols, decay_cols = h.unbind(-1), chunk_decay.unbind(-1)
    carried = [torch.zeros_like(h_cols[0])]
    for c in range(n_chunks - 1):
        carried.append(torch.addcmul(h_cols[c], decay_cols[c], carried[-1]))
    h = torch.stack(carried, dim=-1)  # state entering each chunk
    # 3) rescan every chunk from its true initial state, reading out y_t = C_t . h_t
    ys = []
    for t in range(k):
        h = torch.addcmul(dus[t] * Bs[t], torch.exp(dts[t] * A_g), h)
        ys.append((h * Cs[t]).sum(-2))
    return torch.stack(ys)


@torch.no_grad()
def _scan_chunks_inplace(dt_k: Tensor, du_k: Tensor, B_k: Tensor, C_k: Tensor, A_g: Tensor) -> Tensor:
    """The same three passes for inference, in preallocated buffers (no allocation inside the loops)."""
    k, n_chunks = dt_k.shape[0], dt_k.shape[-1]
    decay = torch.empty(torch.broadcast_shapes(dt_k.shape[1:], A_g.shape), dtype=dt_k.dtype, device=dt_k.device)
    h = torch.zeros_like(decay)

    def step(t: int) -> None:
        torch.mul(dt_k[t], A_g, out=decay)
        decay.exp_()
        h.mul_(decay).addcmul_(du_k[t], B_k[t])

    for t in range(k):
        step(t)
    chunk_decay = torch.exp(dt_k.sum(0) * A_g)
    chunk_end = h.clone()
    h[..., 0] = 0
    for c in range(1, n_chunks):  # h[..., c] becomes the state entering chunk c
        h[..., c] = chunk_decay[..., c - 1] * h[..., c - 1] + chunk_end[..., c - 1]
    y = torch.empty(k, *decay.shape[:-2], n_chunks, dtype=dt_k.dtype, device=dt_k.device)
    product = torch.empty_like(decay)
    for t in range(k):
        step(t)
        torch.sum(torch.mul(h, C_k[t], out=product), dim=-2, out=y[t])
    return y
