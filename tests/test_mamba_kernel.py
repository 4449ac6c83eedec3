"""vivim.ops.mamba_kernel: the wrapper that calls mamba-ssm's compiled extension directly.

The extension needs CUDA, so on the CPU a stand-in `selective_scan_cuda` module takes its place. The stand-in keeps
the extension's calling conventions (argument order, (out, states, gated out) from fwd, gradients in B's dtype and 4-D
layout from bwd, dz computed from the ungated `out` it is handed) and its preconditions (contiguous rows, 4-D B/C in
u's dtype, fp32 A/D/delta_bias), and computes the values with the tests' float64 oracle. So these tests check the
wrapper's plumbing; tests/test_kernel_gpu.py checks it against the real extension.
"""

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from scan_oracle import scan_oracle
from test_selective_scan import random_scan_inputs, rel_error

from vivim.ops import mamba_kernel


def _check_like_the_extension(u, delta, A, B, C, D, z, delta_bias):
    for name, t in dict(u=u, delta=delta, B=B, C=C, z=z).items():
        assert t is None or t.stride(-1) == 1, f"{name} rows must be contiguous"
    assert B.dim() == 4 and C.dim() == 4, "B and C go to the kernel as (batch, groups, N, L)"
    assert B.dtype == u.dtype and C.dtype == u.dtype and delta.dtype == u.dtype
    for t in (A, D, delta_bias):
        assert t is None or t.dtype == torch.float32


class StandInExtension(types.ModuleType):
    def __init__(self):
        super().__init__("selective_scan_cuda")
        self.states = []

    def fwd(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        _check_like_the_extension(u, delta, A, B, C, D, z, delta_bias)
        out = scan_oracle(u, delta, A, B, C, D, None, delta_bias, delta_softplus).to(u.dtype)
        states = torch.randn(3)  # opaque to the wrapper: it must hand this very tensor back to bwd
        self.states.append(states)
        result = [out, states]
        if z is not None:
            result.append((out.double() * F.silu(z.double())).to(u.dtype))
        return result

    def bwd(self, u, delta, A, B, C, D, z, delta_bias, dout, states, out, dz, delta_softplus, recompute_out_z):
        _check_like_the_extension(u, delta, A, B, C, D, z, delta_bias)
        assert states is self.states[-1] and dz is None and recompute_out_z is False
        assert dout.stride(-1) == 1
        inputs = [t.detach().double().requires_grad_() if t is not None else None
                  for t in (u, delta, A, B, C, D, delta_bias)]
        uu, dd, AA, BB, CC, DD, bb = inputs
        with torch.enable_grad():  # autograd runs a backward with gradients off
            ungated = scan_oracle(uu, dd, AA, BB, CC, DD, None, bb, delta_softplus)
        upstream = dout.double()
        dz_out = None
        if z is not None:  # the kernel takes the gate's gradient from the ungated output it is given
            assert out is not None
            sig = torch.sigmoid(z.double())
            dz_out = (upstream * out.double() * sig * (1 + z.double() * (1 - sig))).to(z.dtype)
            upstream = upstream * F.silu(z.double())
        wanted = [t for t in inputs if t is not None]
        grads = iter(torch.autograd.grad(ungated, wanted, upstream))
        du, ddelta, dA, dB, dC, dD, dbias = [next(grads) if t is not None else None for t in inputs]
        result = [du.to(u.dtype), ddelta.to(delta.dtype), dA.float(), dB.to(B.dtype), dC.to(C.dtype),
                  None if dD is None else dD.float(), None if dbias is None else dbias.float()]
        if z is not None:
            result.append(dz_out)
        return result


@pytest.fixture
def stand_in(monkeypatch):
    ext = StandInExtension()
    monkeypatch.setitem(sys.modules, "selective_scan_cuda", ext)
    return ext


@pytest.mark.parametrize("with_z,with_D,with_bias", [(True, True, True), (False, False, False), (True, False, True),
                                                      (False, True, False)])
@pytest.mark.parametrize("grouped_layout", [True, False])
def test_values_and_gradients_equal_the_oracle(stand_in, rng_seed, with_z, with_D, with_bias, grouped_layout):
    groups = 3 if grouped_layout else 1
    u, delta, A, B, C, D, z, bias = random_scan_inputs(2, 6, 33, 4, groups, grouped_layout=grouped_layout)
    inputs = [u, delta, A, B, C, D if with_D else None, z if with_z else None, bias if with_bias else None]
    ours = [t.clone().requires_grad_() if t is not None else None for t in inputs]
    oracle = [t.double().requires_grad_() if t is not None else None for t in inputs]
    y = mamba_kernel.mamba_kernel_scan(*ours, delta_softplus=True)
    y_ref = scan_oracle(*oracle, delta_softplus=True)
    assert y.dtype == u.dtype and y.shape == u.shape
    assert rel_error(y, y_ref) <= 1e-6
    g_out = torch.randn_like(u)
    y.backward(g_out)
    y_ref.backward(g_out.double())
    for name, a, b in zip("u delta A B C D z delta_bias".split(), ours, oracle):
        if a is None:
            continue
        assert a.grad is not None and a.grad.shape == a.shape and a.grad.dtype == a.dtype, name
        assert rel_error(a.grad, b.grad) <= 1e-5, name


def test_inputs_are_brought_to_what_the_kernel_takes(stand_in, rng_seed):
    """Non-contiguous u, fp32 delta/z/B/C beside half u, half D: the wrapper converts; gradients keep each input's
    dtype and layout."""
    u, delta, A, B, C, D, z, bias = random_scan_inputs(1, 4, 20, 3, 1, grouped_layout=False)
    u_t = u.transpose(1, 2).contiguous().transpose(1, 2)  # rows no longer contiguous
    half = [u_t.half(), delta, z]  # delta and z in fp32 beside half u: the extension takes u's dtype only
    leaves = [t.requires_grad_() for t in (*half, B, D.half())]
    y = mamba_kernel.mamba_kernel_scan(leaves[0], leaves[1], A, B, C, leaves[4], leaves[2], bias, True)
    assert y.dtype == torch.float16
    y.float().sum().backward()
    for t in leaves:
        assert t.grad is not None and t.grad.dtype == t.dtype and t.grad.shape == t.shape


def test_the_dispatcher_registers_it_without_importing_mamba_ssm(monkeypatch, stand_in):
    from vivim.ops import dispatch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dispatch, "_optional_loaded", True)  # no lazy registration of the real kernels here
    monkeypatch.setattr(mamba_kernel, "installed", lambda: True)
    monkeypatch.delitem(sys.modules, "mamba_ssm", raising=False)
    saved = dict(dispatch._REGISTRY)
    try:
        dispatch.register_mamba_ssm()
        impl = dispatch._REGISTRY["mamba_ssm"]
        assert impl.differentiable and impl.fn is mamba_kernel.mamba_kernel_scan
        assert dispatch.is_available("mamba_ssm", "cuda") == (True, "")
        assert "mamba_ssm" not in sys.modules
    finally:
        dispatch._REGISTRY.clear()
        dispatch._REGISTRY.update(saved)
