"""The `vivim::selective_scan` custom op: one opaque node per scan for torch.export and the ONNX exporter.

Eager calls go to the implementation chosen by `vivim.ops.dispatch`. The backward recomputes the forward with a
differentiable implementation and takes its vector-Jacobian product, ranked per call: on CUDA ours
(vivim.ops.cuda_backward) for every Vivim layer (N <= 16), mamba-ssm's kernel first for wider states when installed
(`vivim.ops._cuda_ext.backward_rank` says where), else the reference.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from vivim.ops import dispatch


@torch.library.custom_op("vivim::selective_scan", mutates_args=())
def _selective_scan_op(
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
    impl = dispatch.pick(u.device.type, dtype=u.dtype)
    out = impl.fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    # custom ops may not return a view or an input alias
    return out.contiguous() if out.data_ptr() not in (u.data_ptr(), delta.data_ptr()) else out.clone()


@_selective_scan_op.register_fake
def _selective_scan_fake(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    return torch.empty_like(u, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*[t if t is not None else torch.empty(0) for t in inputs[:8]])
    ctx.present = [t is not None for t in inputs[:8]]
    ctx.delta_softplus = inputs[8]


def _backward(ctx, grad_out):
    saved = ctx.saved_tensors
    args = [t.detach().requires_grad_(t.is_floating_point()) if present else None
            for t, present in zip(saved, ctx.present)]
    impl = dispatch.pick(grad_out.device.type, need_grad=True, dtype=grad_out.dtype, inputs=args)
    with torch.enable_grad():
        out = impl.differentiable_fn(*args, ctx.delta_softplus)
        wanted = [a for a in args if a is not None and a.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out, allow_unused=True))
    result = [next(grads) if a is not None and a.requires_grad else None for a in args]
    return (*result, None)


_selective_scan_op.register_autograd(_backward, setup_context=_setup_context)


def selective_scan(
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
    """Selective scan with mamba-ssm `selective_scan_fn` semantics, as the `vivim::selective_scan` op.

    u, delta, z: (batch, D, L); A: (D, N) fp32; B, C: (batch, N, L) or (batch, G, N, L) (channel d uses group
    d // (D // G)); D, delta_bias: (D,) fp32. Returns y (batch, D, L) in u's dtype, accumulated in fp32.
    """
    return torch.ops.vivim.selective_scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
