"""mamba-ssm's compiled selective-scan kernels (`selective_scan_cuda`), called without the `mamba_ssm` package.

They are the fallback on a GPU where our own extension cannot be built (forward and backward), and compute the
backward of scans with more than 16 states, where they are faster than ours. Importing `mamba_ssm` would load its
language models first (transformers, triton, tilelang): seconds on the first training step, and an ImportError
wherever one of those is missing, for two compiled functions that need none of it. This wrapper talks to the
extension directly, with the argument conventions of its `fwd`/`bwd` entry points (mamba-ssm 2.x).
"""

from __future__ import annotations

import importlib.util
from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def installed() -> bool:
    """True when mamba-ssm's compiled extension can be found (without importing it)."""
    return importlib.util.find_spec("selective_scan_cuda") is not None


def importable() -> bool:
    try:
        import selective_scan_cuda  # noqa: F401
    except ImportError:
        return False
    return True


class _KernelScan(torch.autograd.Function):
    """y = selective_scan(...) through `selective_scan_cuda.fwd`; its gradients through `selective_scan_cuda.bwd`.

    Inputs arrive contiguous and in the dtypes the kernels take (see `mamba_kernel_scan`), B and C as
    (batch, groups, N, L); the kernel's per-chunk states `x` are kept for the backward, as mamba-ssm does.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):  # type: ignore[override]
        import selective_scan_cuda

        out, states, *rest = selective_scan_cuda.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.delta_softplus = delta_softplus
        ctx.has = (D is not None, z is not None, delta_bias is not None)
        # the gated output is rest[0]; the backward needs the ungated `out` only when there is a gate
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states, out if z is not None else None)
        return rest[0] if z is not None else out

    @staticmethod
    @once_differentiable  # the kernel's gradients carry no graph: a second derivative must fail, not come out wrong
    def backward(ctx, grad_out):  # type: ignore[override]
        import selective_scan_cuda

        u, delta, A, B, C, D, z, delta_bias, states, out = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dbias, *rest = selective_scan_cuda.bwd(
            u, delta, A, B, C, D, z, delta_bias, grad_out.contiguous(), states, out, None, ctx.delta_softplus,
            False)  # False: do not recompute the gated output (nothing here needs it)
        has_D, has_z, has_bias = ctx.has
        return (du, ddelta, dA, dB, dC, dD if has_D else None, rest[0] if has_z else None,
                dbias if has_bias else None, None)


def mamba_kernel_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                      z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool) -> Tensor:
    """The `vivim::selective_scan` contract on mamba-ssm's kernels; differentiable in every floating input.

    The casts and reshapes happen here, outside the autograd function, so autograd returns each gradient in its
    input's own dtype and shape (B and C of (batch, N, L) go to the kernel as one group).
    """
    dtype = u.dtype
    B4 = B.to(dtype).contiguous()
    C4 = C.to(dtype).contiguous()
    B4 = B4.unsqueeze(1) if B4.dim() == 3 else B4
    C4 = C4.unsqueeze(1) if C4.dim() == 3 else C4
    return _KernelScan.apply(  # the extension takes delta, B, C and z in u's dtype only
        u.contiguous(), delta.to(dtype).contiguous(), A.float().contiguous(), B4, C4,
        None if D is None else D.float().contiguous(), None if z is None else z.to(dtype).contiguous(),
        None if delta_bias is None else delta_bias.float().contiguous(), bool(delta_softplus))
