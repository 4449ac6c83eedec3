"""Training on the project's CUDA kernels: the selective scan as an autograd function.

The forward is the forward kernel; the backward is `plugins/selective_scan/src/selective_scan_bwd.cu`. For N <= 16
(Vivim's, and Mamba's default) one call does everything, the elementwise chain around the recurrence (delta_bias
and softplus, the D skip, the silu(z) gate) included, reading the inputs in their own dtype. Wider states run the
kernel on slices of 16 states, which are independent, with the chain done here in PyTorch in fp32; so does a delta
or z in another dtype than u's (the fused call would round their gradients to u's dtype). So a GPU trains without
mamba-ssm, whose package builds from source.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from vivim.errors import ScanShapeError

STATES_PER_CALL = 16  # the backward kernel holds 16 states per channel

Grads = tuple[Tensor, Tensor, Optional[Tensor], Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor]]


def _kernel_backward(u: Tensor, delta: Tensor, A: Tensor, B4: Tensor, C4: Tensor, dout: Tensor, D: Optional[Tensor],
                     z: Optional[Tensor], delta_bias: Optional[Tensor], softplus: bool) -> Grads:
    """One call of the backward kernel: (du, ddelta, dz, dA, dB, dC, dD, ddelta_bias); see selective_scan_bwd.h."""
    from vivim.ops._cuda_ext import load_extension

    ext = load_extension()
    grads = ext.bwd(u, delta, A, B4, C4, dout, D, z, delta_bias, softplus)
    if not grads:
        raise ScanShapeError(ext.last_error())
    return tuple(grads)  # type: ignore[return-value]


def fused_backward(u: Tensor, delta: Tensor, A: Tensor, B4: Tensor, C4: Tensor, dout: Tensor, D: Optional[Tensor],
                   z: Optional[Tensor], delta_bias: Optional[Tensor], softplus: bool) -> Grads:
    """The whole op's gradients in one kernel call (N <= 16). The forward kernel rounds delta, B, C and z to u's
    dtype before using them, so they are differentiated at those rounded values."""
    def as_u(t: Tensor) -> Tensor:
        return t.to(u.dtype).contiguous()

    def fp32(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.float().contiguous()

    return _kernel_backward(u.contiguous(), as_u(delta), A.float().contiguous(), as_u(B4), as_u(C4), as_u(dout),
                            fp32(D), None if z is None else as_u(z), fp32(delta_bias), softplus)


def sliced_backward(u: Tensor, delta: Tensor, A: Tensor, B4: Tensor, C4: Tensor, dout: Tensor, D: Optional[Tensor],
                    z: Optional[Tensor], delta_bias: Optional[Tensor], softplus: bool) -> Grads:
    """N > 16: the kernel on slices of 16 states (du and ddt summed over them), the elementwise chain here in fp32."""
    from vivim.ops._cuda_ext import selective_scan_cuda

    def as_computed(t: Tensor) -> Tensor:  # the forward kernel rounds delta, B, C and z to u's dtype first
        return t.to(u.dtype).float()

    g = dout.float()
    dt_raw = as_computed(delta)
    if delta_bias is not None:
        dt_raw = dt_raw + delta_bias.float()[None, :, None]
    dt = F.softplus(dt_raw) if softplus else dt_raw
    dz: Optional[Tensor] = None
    if z is not None:  # out = y * silu(z): the gate needs y, recomputed by the forward kernel without it
        y = selective_scan_cuda(u, delta, A, B4, C4, D, None, delta_bias, softplus).float()
        zf = as_computed(z)
        sig = torch.sigmoid(zf)
        dz = g * y * sig * (1 + zf * (1 - sig))
        g = g * zf * sig
    uf, dt, g = u.float().contiguous(), dt.contiguous(), g.contiguous()
    Af, B4f, C4f = A.float(), as_computed(B4), as_computed(C4)
    du = ddt = None
    dA, dB, dC = [], [], []
    for s in range(0, A.shape[1], STATES_PER_CALL):
        part = slice(s, s + STATES_PER_CALL)
        grads = _kernel_backward(uf, dt, Af[:, part].contiguous(), B4f[:, :, part].contiguous(),
                                 C4f[:, :, part].contiguous(), g, None, None, None, False)
        du = grads[0] if du is None else du + grads[0]
        ddt = grads[1] if ddt is None else ddt + grads[1]
        dA.append(grads[3])
        dB.append(grads[4])
        dC.append(grads[5])
    assert du is not None and ddt is not None
    dD = None
    if D is not None:
        dD = (g * uf).sum((0, 2))
        du = du + D.float()[None, :, None] * g
    ddelta = ddt * torch.sigmoid(dt_raw) if softplus else ddt
    dbias = ddelta.sum((0, 2)) if delta_bias is not None else None
    return du, ddelta, dz, torch.cat(dA, 1), torch.cat(dB, 2), torch.cat(dC, 2), dD, dbias


def takes_fused_path(u: Tensor, delta: Tensor, A: Tensor, z: Optional[Tensor]) -> bool:
    """Whether one fused kernel call computes this scan's backward. The fused kernel writes du, ddelta and dz in u's
    dtype, so a delta or z in another dtype (fp32 beside half u) keeps its gradient's precision through the fp32
    chain instead; more than 16 states take the sliced calls."""
    return A.shape[1] <= STATES_PER_CALL and delta.dtype == u.dtype and (z is None or z.dtype == u.dtype)


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
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        B4 = B if B.dim() == 4 else B.unsqueeze(1)
        C4 = C if C.dim() == 4 else C.unsqueeze(1)
        backward = fused_backward if takes_fused_path(u, delta, A, z) else sliced_backward
        du, ddelta, dz, dA, dB4, dC4, dD, dbias = backward(u, delta, A, B4, C4, grad_out, D, z, delta_bias,
                                                           ctx.delta_softplus)
        dB = dB4 if B.dim() == 4 else dB4.squeeze(1)
        dC = dC4 if C.dim() == 4 else dC4.squeeze(1)

        def like(grad: Optional[Tensor], t: Optional[Tensor]) -> Optional[Tensor]:
            return None if grad is None or t is None else grad.to(t.dtype)

        return (like(du, u), like(ddelta, delta), like(dA, A), like(dB, B), like(dC, C), like(dD, D), like(dz, z),
                like(dbias, delta_bias), None)


def trainable_selective_scan_cuda(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                                  z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool) -> Tensor:
    """`selective_scan_cuda` with a backward: the op's backward on CUDA tensors (before mamba-ssm's kernel)."""
    return _TrainableKernelScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
