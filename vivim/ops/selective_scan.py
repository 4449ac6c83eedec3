"""The `vivim::selective_scan` custom op: one opaque node per scan for torch.export and the ONNX exporter.

Eager calls go to the implementation chosen by `vivim.ops.dispatch`. The backward recomputes the forward with a
differentiable implementation and takes its vector-Jacobian product, so forward-only kernels (ours) still train.

Eager inference (no autograd, no tracing, plain tensors, no dispatch mode) skips the op and calls the
implementation directly: torch's Python custom-op layer costs 25-45 us per call, more than our kernel takes at
Vivim's last stages (benchmarks/RESULTS.md, section 1). Everything else goes through the op.
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
    return _run_impl(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def _run_impl(u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> Tensor:
    impl = dispatch.pick(u.device.type)
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
    impl = dispatch.pick(grad_out.device.type, need_grad=True)
    with torch.enable_grad():
        out = impl.fn(*args, ctx.delta_softplus)
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
    if _plain_eager_inference(u, delta, A, B, C, D, z, delta_bias):
        return _run_impl(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
    return torch.ops.vivim.selective_scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))


def _plain_eager_inference(*tensors: Optional[Tensor]) -> bool:
    """True when nothing needs to see the op itself: no compiler, exporter or tracer, no dispatch or function mode
    (fake tensors, profilers' modes), no autograd, and every argument a plain tensor."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
        return False
    if torch._C._len_torch_dispatch_stack() > 0 or torch._C._is_torch_function_mode_enabled():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is not None and (type(t) is not Tensor or (grad and t.requires_grad)):
            return False
    return True
