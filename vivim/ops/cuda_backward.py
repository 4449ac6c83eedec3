"""Training on the project's CUDA kernels: the selective scan as an autograd function.

The forward is the forward kernel. The backward splits the op in two: the elementwise chain around the recurrence
(delta_bias and softplus, the D skip, the silu(z) gate) is a few PyTorch expressions here, and the recurrence itself
is `plugins/selective_scan/src/selective_scan_bwd.cu` (fp32, states in slices of 16). So a GPU trains without
mamba-ssm, whose package builds from source.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from vivim.errors import ScanShapeError

_STATES_PER_CALL = 16  # the backward kernel holds 16 states per channel


def scan_core_backward(u: Tensor, dt: Tensor, A: Tensor, B4: Tensor, C4: Tensor, dy: Tensor
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of y_t = sum_n C_t[n] h_t[n], h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t (all fp32, B/C 4-D).

    States are independent of each other, so N > 16 runs the kernel on slices of 16 and sums du and ddt.
    """
    from vivim.ops._cuda_ext import load_extension

    ext = load_extension()
    du = ddt = None
    dA, dB, dC = [], [], []
    for s in range(0, A.shape[1], _STATES_PER_CALL):
        part = slice(s, s + _STATES_PER_CALL)
        grads = ext.bwd(u, dt, A[:, part].contiguous(), B4[:, :, part].contiguous(), C4[:, :, part].contiguous(), dy)
        if not grads:
            raise ScanShapeError(ext.last_error())
        du = grads[0] if du is None else du + grads[0]
        ddt = grads[1] if ddt is None else ddt + grads[1]
        dA.append(grads[2])
        dB.append(grads[3])
        dC.append(grads[4])
    assert du is not None and ddt is not None
    return du, ddt, torch.cat(dA, 1), torch.cat(dB, 2), torch.cat(dC, 2)


class _TrainableKernelScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):  # type: ignore[override]
        from vivim.ops._cuda_ext import selective_scan_cuda

        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.delta_softplus = delta_softplus
        return selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    @staticmethod
    @once_differentiable  # the kernel's gradients carry no graph: a second derivative must fail, not come out wrong
    def backward(ctx, grad_out):  # type: ignore[override]
        from vivim.ops._cuda_ext import selective_scan_cuda

        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        softplus = ctx.delta_softplus

        def as_computed(t: Tensor) -> Tensor:  # the forward kernel rounds delta, B, C and z to u's dtype first
            return t.to(u.dtype).float()

        g = grad_out.float()
        dt_raw = as_computed(delta)
        if delta_bias is not None:
            dt_raw = dt_raw + delta_bias.float()[None, :, None]
        dt = F.softplus(dt_raw) if softplus else dt_raw
        dz: Optional[Tensor] = None
        if z is not None:  # out = y * silu(z): the gate needs y, recomputed by the forward kernel without it
            y = selective_scan_cuda(u, delta, A, B, C, D, None, delta_bias, softplus).float()
            zf = as_computed(z)
            sig = torch.sigmoid(zf)
            dz = g * y * sig * (1 + zf * (1 - sig))
            g = g * zf * sig
        uf = u.float().contiguous()
        B4 = as_computed(B if B.dim() == 4 else B.unsqueeze(1)).contiguous()
        C4 = as_computed(C if C.dim() == 4 else C.unsqueeze(1)).contiguous()
        du, ddt, dA, dB4, dC4 = scan_core_backward(uf, dt.contiguous(), A.float().contiguous(), B4, C4,
                                                   g.contiguous())
        dD = None
        if D is not None:
            dD = (g * uf).sum((0, 2))
            du = du + D.float()[None, :, None] * g
        ddelta = ddt * torch.sigmoid(dt_raw) if softplus else ddt
        dbias = ddelta.sum((0, 2)) if delta_bias is not None else None
        dB = dB4 if B.dim() == 4 else dB4.squeeze(1)
        dC = dC4 if C.dim() == 4 else dC4.squeeze(1)

        def like(grad: Optional[Tensor], t: Optional[Tensor]) -> Optional[Tensor]:
            return None if grad is None or t is None else grad.to(t.dtype)

        return (like(du, u), like(ddelta, delta), like(dA, A), like(dB, B), like(dC, C), like(dD, D), like(dz, z),
                like(dbias, delta_bias), None)


def trainable_selective_scan_cuda(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                                  z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool) -> Tensor:
    """`selective_scan_cuda` with a backward: the op's backward on CUDA tensors when mamba-ssm's kernel is absent."""
    return _TrainableKernelScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
