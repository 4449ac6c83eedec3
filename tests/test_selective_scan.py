"""The selective-scan op against a token-by-token float64 oracle, its gradients and its export as one node."""

import pytest
import torch

from scan_oracle import scan_oracle

from vivim.errors import ScanShapeError, VivimError
from vivim.ops import dispatch, selective_scan, selective_scan_reference, selective_scan_sequential


def random_scan_inputs(batch, dim, length, dstate, groups, dtype=torch.float32, grouped_layout=True):
    u = torch.randn(batch, dim, length, dtype=dtype)
    delta = torch.randn(batch, dim, length, dtype=dtype) * 0.7
    A = -torch.exp(torch.randn(dim, dstate) * 0.5)
    shape = (batch, groups, dstate, length) if grouped_layout else (batch, dstate, length)
    B = torch.randn(*shape, dtype=dtype)
    C = torch.randn(*shape, dtype=dtype)
    D = torch.randn(dim)
    z = torch.randn(batch, dim, length, dtype=dtype)
    delta_bias = torch.randn(dim) * 0.3
    return u, delta, A, B, C, D, z, delta_bias


def rel_error(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("length", [1, 2, 7, 64, 129, 1001])
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("with_z,with_D,softplus", [(True, True, True), (False, False, False), (True, False, True),
                                                     (False, True, False)])
def test_reference_matches_sequential_float64(rng_seed, length, groups, with_z, with_D, softplus):
    u, delta, A, B, C, D, z, bias = random_scan_inputs(2, 6, length, 5, groups)
    if not softplus:  # a step size must be positive; softplus guarantees it, otherwise the caller does
        delta = delta.abs()
    kwargs = dict(D=D if with_D else None, z=z if with_z else None, delta_bias=bias if softplus else None,
                  delta_softplus=softplus)
    y = selective_scan(u, delta, A, B, C, **kwargs)
    oracle = scan_oracle(u.double(), delta.double(), A.double(), B.double(), C.double(),
                                       **{k: (v.double() if torch.is_tensor(v) else v) for k, v in kwargs.items()})
    assert y.dtype == torch.float32 and y.shape == u.shape
    assert rel_error(y, oracle) <= 1e-5


@pytest.mark.parametrize("length", [1, 9, 40])
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("options", [True, False])
def test_the_public_sequential_scan_matches_the_tests_oracle(rng_seed, length, groups, options):
    # vivim.ops exports selective_scan_sequential for users to check results with: it must be right on its own
    inputs = [t.double() for t in random_scan_inputs(2, 6, length, 5, groups)]
    u, delta, A, B, C, D, z, bias = inputs
    kwargs = dict(D=D, z=z, delta_bias=bias, delta_softplus=True) if options else {}
    if not options:
        delta = delta.abs()
    y = selective_scan_sequential(u, delta, A, B, C, **kwargs)
    assert y.dtype == torch.float64 and y.shape == u.shape
    assert rel_error(y, scan_oracle(u, delta, A, B, C, **kwargs)) <= 1e-12


def test_three_dimensional_B_C_equal_one_group(rng_seed):
    u, delta, A, B, C, D, z, bias = random_scan_inputs(1, 4, 33, 3, 1, grouped_layout=False)
    y3 = selective_scan(u, delta, A, B, C, D, z, bias, True)
    y4 = selective_scan(u, delta, A, B[:, None], C[:, None], D, z, bias, True)
    torch.testing.assert_close(y3, y4, rtol=0, atol=0)


def test_long_sequence_fp32_accuracy(rng_seed):
    # Vivim's stage-1 length at 256x256 with T = 5
    u, delta, A, B, C, D, z, bias = random_scan_inputs(1, 3, 20480, 4, 3)
    y = selective_scan(u, delta, A, B, C, D, z, bias, True)
    oracle = scan_oracle(*(t.double() for t in (u, delta, A, B, C, D, z, bias)), delta_softplus=True)
    assert rel_error(y, oracle) <= 1e-5


@pytest.mark.parametrize("chunk", [1, 3, 16, 40])
def test_chunk_size_does_not_change_the_result(rng_seed, chunk):
    args = random_scan_inputs(2, 3, 40, 4, 3)
    oracle = scan_oracle(*(t.double() for t in args), delta_softplus=True)
    assert rel_error(selective_scan_reference(*args, delta_softplus=True, chunk=chunk), oracle) <= 1e-5


def test_half_inputs_accumulate_in_fp32(rng_seed):
    u, delta, A, B, C, D, z, bias = random_scan_inputs(1, 4, 2000, 8, 1)
    y = selective_scan(u.half(), delta.half(), A, B.half(), C.half(), D, z.half(), bias, True)
    assert y.dtype == torch.float16
    oracle = scan_oracle(*(t.half().double() for t in (u, delta)), A.double(),
                                       *(t.half().double() for t in (B, C)), D.double(), z.half().double(),
                                       bias.double(), delta_softplus=True)
    # the fp16 rounding of the output only: at most 2^-11 of each value (fp16 accumulation: ~3x that)
    assert rel_error(y, oracle) <= 2.0 ** -11


def test_gradients_match_finite_differences(rng_seed):
    args = [t.double().requires_grad_() for t in random_scan_inputs(1, 2, 9, 3, 2)]

    def fn(*tensors):
        return selective_scan(*tensors, delta_softplus=True)

    assert torch.autograd.gradcheck(fn, tuple(args), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradients_match_the_sequential_oracle(rng_seed):
    base = random_scan_inputs(2, 6, 50, 4, 3)
    a = [t.clone().requires_grad_() for t in base]
    b = [t.double().requires_grad_() for t in base]
    g_out = torch.randn(2, 6, 50)
    selective_scan(*a, delta_softplus=True).backward(g_out)
    scan_oracle(*b, delta_softplus=True).backward(g_out.double())
    for x, y in zip(a, b):
        assert rel_error(x.grad, y.grad) <= 1e-5


def test_bad_shapes_are_rejected():
    u, delta, A, B, C, D, z, bias = random_scan_inputs(1, 6, 10, 4, 4)  # 6 channels, 4 groups
    with pytest.raises(ValueError, match="divisible"):
        selective_scan_reference(u, delta, A, B, C)
    with pytest.raises(ValueError, match="delta shape"):
        selective_scan_reference(u, delta[..., :5], A, B, C)
    # B grouped, C not (or the other way round): named, not a reshape error from inside the scan
    u, delta, A, B, C, D, z, bias = random_scan_inputs(2, 6, 37, 4, 3)
    with pytest.raises(ScanShapeError, match=r"^C must be \(2, 3, 4, 37\), got shape \(2, 4, 37\)$"):
        selective_scan(u, delta, A, B, C[:, 0])
    with pytest.raises(ScanShapeError, match=r"^C must be \(2, 1, 4, 37\), got shape \(2, 3, 4, 37\)$"):
        selective_scan(u, delta, A, B[:, 0], C)
    # one group may be written either way, as mamba-ssm takes it: B (batch, N, L) with C (batch, 1, N, L)
    one = random_scan_inputs(2, 6, 37, 4, 1)
    u1, d1, A1, B1, C1 = one[:5]
    expected = selective_scan(u1, d1, A1, B1[:, 0], C1[:, 0])
    torch.testing.assert_close(selective_scan(u1, d1, A1, B1[:, 0], C1), expected, rtol=0, atol=0)
    torch.testing.assert_close(selective_scan(u1, d1, A1, B1, C1[:, 0]), expected, rtol=0, atol=0)
    with pytest.raises(ScanShapeError, match="^u must be a floating-point tensor, got torch.int64$"):
        selective_scan(u.long(), delta, A, B, C)  # it ran and truncated its output to integers


def test_optional_arguments_of_the_wrong_shape_are_rejected_not_broadcast():
    from vivim.ops import selective_scan

    u, delta, A, B, C, D, z, bias = random_scan_inputs(2, 4, 10, 8, 1)
    assert selective_scan(u, delta, A, B, C, D, z, bias, True).shape == u.shape
    for kwargs, message in ((dict(D=torch.randn(2, 4, 10)), r"D must be \(4,\), got \(2, 4, 10\)"),
                            (dict(delta_bias=torch.randn(5)), r"delta_bias must be \(4,\)"),
                            (dict(z=z[:, :, :3]), r"z must be \(2, 4, 10\)")):
        with pytest.raises(ValueError, match=message):
            selective_scan(u, delta, A, B, C, **kwargs)
    with pytest.raises(ValueError, match="must not be empty"):
        selective_scan(u[..., :0], delta[..., :0], A, B[..., :0], C[..., :0])


def test_dispatch_uses_the_reference_on_cpu_and_reports_unavailable_impls():
    assert dispatch.pick("cpu").name == "reference"
    ok, reason = dispatch.is_available("vivim_cuda", "cpu")
    assert not ok and reason


def test_dispatch_skips_implementations_that_do_not_take_the_inputs_dtype():
    """A float64 model on CUDA must fall back to the reference, not fail in a kernel that takes 16/32-bit floats."""
    calls = []

    def float32_only(*args):
        calls.append(args[0].dtype)
        return dispatch.pick("cpu", dtype=torch.float64).fn(*args)  # the reference computes the values

    dispatch.register_impl("float32_only", float32_only, priority=1000, devices=("cpu",), dtypes=(torch.float32,))
    try:
        assert dispatch.pick("cpu", dtype=torch.float32).name == "float32_only"
        assert dispatch.pick("cpu", dtype=torch.float64).name == "reference"
        u, delta, A, B, C, D, z, bias = random_scan_inputs(1, 4, 9, 3, 1)
        selective_scan(u.double(), delta.double(), A, B.double(), C.double(), D, z.double(), bias, True)
        assert calls == []
        selective_scan(u, delta, A, B, C, D, z, bias, True)
        assert calls == [torch.float32]
    finally:
        dispatch._REGISTRY.pop("float32_only")


def test_backward_also_skips_implementations_that_do_not_take_the_dtype():
    """The backward picks a differentiable implementation: a float32-only one must not get float64 gradients."""
    calls = []

    def float32_only(*args):
        calls.append(args[0].dtype)
        return dispatch.pick("cpu", dtype=torch.float64).fn(*args)

    dispatch.register_impl("float32_only", float32_only, priority=1000, devices=("cpu",), differentiable=True,
                           dtypes=(torch.float32,))
    try:
        for dtype in (torch.float64, torch.float32):
            u, delta, A, B, C, D, z, bias = random_scan_inputs(1, 4, 9, 3, 1, dtype=dtype)
            u.requires_grad_(True)
            selective_scan(u, delta, A, B, C, D, z, bias, True).sum().backward()
            assert u.grad is not None and u.grad.dtype == dtype
        assert calls == [torch.float32, torch.float32]  # float32's forward and backward; none for float64
    finally:
        dispatch._REGISTRY.pop("float32_only")


def test_the_cuda_kernels_register_with_the_dtypes_they_take(monkeypatch):
    """vivim_cuda and mamba_ssm take 16- and 32-bit floats only; their registrations must say so (a float64 model on
    CUDA then falls back to the reference). Registered here without CUDA, then removed again."""
    from vivim.ops import _cuda_ext

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    saved = dict(dispatch._REGISTRY)
    try:
        assert _cuda_ext.try_register()
        dispatch.register_mamba_ssm()
        for name in ("vivim_cuda", "mamba_ssm"):
            assert dispatch._REGISTRY[name].dtypes == (torch.float32, torch.float16, torch.bfloat16)
    finally:
        dispatch._REGISTRY.clear()
        dispatch._REGISTRY.update(saved)


def test_torch_export_sees_one_op_per_scan(rng_seed):
    class TwoScans(torch.nn.Module):
        def forward(self, u, delta, A, B, C, D, z, bias):
            y = selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True)
            return selective_scan(y, delta, A, B, C, D, z, bias, delta_softplus=True)

    program = torch.export.export(TwoScans(), random_scan_inputs(1, 6, 12, 4, 3))
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.vivim.selective_scan.default) == 2


def test_backward_uses_the_grad_fn_of_an_implementation_whose_plain_call_has_no_autograd(rng_seed):
    """An implementation may register a plain fast call for the forward and an autograd version for training (our
    CUDA kernel does): the op's forward must take the first, its backward the second."""
    calls = []
    reference = dispatch.pick("cpu").fn

    def plain(*args):
        calls.append("fn")
        with torch.no_grad():
            return reference(*args)

    def trainable(*args):
        calls.append("grad_fn")
        return reference(*args)

    dispatch.register_impl("plain_with_grad_fn", plain, priority=1000, devices=("cpu",), grad_fn=trainable)
    try:
        assert dispatch.pick("cpu", need_grad=True).name == "plain_with_grad_fn"
        base = random_scan_inputs(1, 4, 21, 3, 1)
        a = [t.clone().requires_grad_() for t in base]
        b = [t.double().requires_grad_() for t in base]
        selective_scan(*a, delta_softplus=True).sum().backward()
        scan_oracle(*b, delta_softplus=True).sum().backward()
        assert calls == ["fn", "grad_fn"]
        for x, y in zip(a, b):
            assert rel_error(x.grad, y.grad) <= 1e-5
    finally:
        dispatch._REGISTRY.pop("plain_with_grad_fn")


def test_the_backward_ranks_implementations_on_its_own(rng_seed):
    """An implementation may be the fastest forward but not the fastest backward (until the fifteenth session our
    CUDA backward ranked after mamba-ssm's): grad_priority ranks it for the backward alone."""
    reference = dispatch.pick("cpu").fn
    dispatch.register_impl("fast_forward", reference, priority=1000, devices=("cpu",), grad_fn=reference,
                           grad_priority=10)
    dispatch.register_impl("fast_backward", reference, priority=500, devices=("cpu",), differentiable=True)
    try:
        assert dispatch.pick("cpu").name == "fast_forward"
        assert dispatch.pick("cpu", need_grad=True).name == "fast_backward"
        dispatch._REGISTRY.pop("fast_backward")
        assert dispatch.pick("cpu", need_grad=True).name == "fast_forward"  # still above the reference (0)
    finally:
        dispatch._REGISTRY.pop("fast_forward")
        dispatch._REGISTRY.pop("fast_backward", None)


def test_the_backward_ranks_per_call_when_an_implementation_asks(rng_seed):
    """A kernel may be the fastest backward on some calls only (ours: 16 states or fewer). A callable grad_priority
    ranks it per call, from that call's inputs, through the op's own backward."""
    reference = dispatch.pick("cpu").fn
    ran = []

    def recording(name):
        def fn(*args):
            ran.append(name)
            return reference(*args)
        return fn

    dispatch.register_impl("narrow_states_first", recording("narrow_states_first"), priority=900, devices=("cpu",),
                           differentiable=True, grad_priority=lambda inputs: 900 if inputs[2].shape[1] <= 16 else 5)
    dispatch.register_impl("steady", recording("steady"), priority=800, devices=("cpu",), differentiable=True)
    try:
        assert dispatch.pick("cpu", need_grad=True).name == "narrow_states_first"  # no call: its forward's rank
        for N, expected in ((16, "narrow_states_first"), (32, "steady")):
            base = random_scan_inputs(2, 4, 19, N, 1)
            assert dispatch.pick("cpu", need_grad=True, inputs=base).name == expected
            ran.clear()
            a = [t.clone().requires_grad_() for t in base]
            b = [t.double().requires_grad_() for t in base]
            selective_scan(*a, delta_softplus=True).sum().backward()
            scan_oracle(*b, delta_softplus=True).sum().backward()
            assert ran == ["narrow_states_first", expected], (N, ran)  # forward by priority, backward per call
            for x, y in zip(a, b):
                assert rel_error(x.grad, y.grad) <= 1e-5
    finally:
        dispatch._REGISTRY.pop("narrow_states_first")
        dispatch._REGISTRY.pop("steady")


def test_our_cuda_backward_ranks_second_to_mamba_ssm_only_where_it_is_slower_and_mamba_ssm_is_right():
    """The rule behind our CUDA backward's per-call rank (mamba-ssm's is 50): first where one fused kernel call takes
    the scan, second for wider states (sliced calls, chain in PyTorch: mamba-ssm's is faster), first again where
    mamba-ssm's dA is wrong (one-token fp16/bf16) and where it would round a fp32 delta's gradient to u's dtype."""
    from vivim.ops._cuda_ext import backward_rank

    def rank(N, L, dtype, delta_dtype=None, z_dtype=None):
        u = torch.zeros(1, 4, L, dtype=dtype)
        delta = torch.zeros(1, 4, L, dtype=delta_dtype or dtype)
        z = torch.zeros(1, 4, L, dtype=z_dtype) if z_dtype is not None else None
        return backward_rank([u, delta, torch.zeros(4, N), None, None, None, z, None])

    mamba = 50
    assert rank(16, 20480, torch.half) > mamba and rank(8, 7, torch.float32) > mamba
    assert rank(16, 320, torch.half, delta_dtype=torch.float32) > mamba
    assert rank(32, 5, torch.half) < mamba and rank(64, 1, torch.float32) < mamba and rank(17, 9, torch.bfloat16) < mamba
    assert rank(32, 1, torch.half) > mamba and rank(64, 1, torch.bfloat16) > mamba
    assert rank(32, 5, torch.half, delta_dtype=torch.float32) > mamba  # wide, but fp32 delta: its gradient stays fp32
    assert rank(32, 5, torch.half, z_dtype=torch.float32) > mamba and rank(32, 5, torch.half, z_dtype=torch.half) < mamba
    assert rank(32, 5, torch.half) > dispatch._REGISTRY["reference"].priority


def test_use_backward_lets_one_implementation_compute_backwards_and_restores_the_ranking():
    """Benchmarks compare backwards (bench_model_step.py --backward) and GPU tests pin one; process-wide, since
    autograd runs backwards on threads of its own."""
    reference = dispatch.pick("cpu").fn
    dispatch.register_impl("preferred", reference, priority=900, devices=("cpu",), differentiable=True)
    dispatch.register_impl("pinned", reference, priority=800, devices=("cpu",), differentiable=True)
    try:
        assert dispatch.pick("cpu", need_grad=True).name == "preferred"
        with dispatch.use_backward("pinned"):
            assert dispatch.pick("cpu", need_grad=True).name == "pinned"
            assert dispatch.pick("cpu").name == "preferred"  # the forward's choice is untouched
        assert dispatch.pick("cpu", need_grad=True).name == "preferred"
        assert dispatch._REGISTRY["reference"].differentiable
        with pytest.raises(VivimError, match="cannot compute the selective scan's backward"):
            with dispatch.use_backward("no_such_kernel"):
                pass
    finally:
        dispatch._REGISTRY.pop("preferred")
        dispatch._REGISTRY.pop("pinned")


def test_a_gradient_for_delta_bias_alone_is_computed(rng_seed):
    """Fine-tuning only the dt bias (the rest frozen) must still get its gradient: the reference's no-grad fast path
    is for calls where nothing needs one."""
    u, delta, A, B, C, D, z, bias = random_scan_inputs(1, 4, 33, 5, 1)
    bias_ours = bias.clone().requires_grad_()
    bias_oracle = bias.double().requires_grad_()
    selective_scan(u, delta, A, B, C, D, z, bias_ours, True).sum().backward()
    scan_oracle(u.double(), delta.double(), A.double(), B.double(), C.double(), D.double(), z.double(), bias_oracle,
                delta_softplus=True).sum().backward()
    assert bias_ours.grad is not None
    assert rel_error(bias_ours.grad, bias_oracle.grad) <= 1e-5


def test_an_implementation_for_another_device_is_never_picked():
    """A CUDA-only kernel ranked first must not receive CPU tensors."""
    reference = dispatch.pick("cpu").fn
    dispatch.register_impl("cuda_only", reference, priority=10**6, devices=("cuda",), differentiable=True)
    try:
        assert dispatch.is_available("cuda_only", "cpu") == (False, "cuda_only does not run on cpu")
        assert dispatch.pick("cpu").name == "reference"
        assert dispatch.pick("cpu", need_grad=True).name == "reference"
    finally:
        dispatch._REGISTRY.pop("cuda_only")


def test_use_impl_nests_and_leaves_the_backward_to_a_differentiable_implementation(rng_seed):
    """use_impl blocks restore the enclosing choice, and a forced forward-only implementation does not compute
    backwards: training inside use_impl still gets gradients."""
    reference = dispatch.pick("cpu").fn

    def forward_only(*args):
        with torch.no_grad():
            return reference(*args)

    dispatch.register_impl("outer", reference, priority=-2, devices=("cpu",))  # below the reference: chosen only when forced
    dispatch.register_impl("forward_only", forward_only, priority=-1, devices=("cpu",))
    try:
        with dispatch.use_impl("outer", "cpu"):
            with dispatch.use_impl("forward_only", "cpu"):
                assert dispatch.pick("cpu").name == "forward_only"
                assert dispatch.pick("cpu", need_grad=True).name == "reference"
                base = random_scan_inputs(1, 4, 17, 3, 1)
                a = [t.clone().requires_grad_() for t in base]
                selective_scan(*a, delta_softplus=True).sum().backward()
                assert all(t.grad is not None for t in a)
            assert dispatch.pick("cpu").name == "outer"
        assert dispatch.pick("cpu").name == "reference"
    finally:
        dispatch._REGISTRY.pop("outer")
        dispatch._REGISTRY.pop("forward_only")


def test_an_implementation_asked_for_by_name_says_why_it_cannot_run():
    # the README names vivim_cuda and mamba_ssm: on a machine without CUDA they are unavailable, not unknown
    if torch.cuda.is_available():
        pytest.skip("the CUDA implementations may be registered here")
    for name in ("vivim_cuda", "mamba_ssm"):
        assert dispatch.is_available(name) == (False, f"{name} needs CUDA (PyTorch sees no CUDA device here)")
        with pytest.raises(VivimError, match=f"^{name} needs CUDA"):
            with dispatch.use_impl(name):
                pass
    ok, reason = dispatch.is_available("vivim-cuda")
    assert not ok and reason.startswith("unknown selective-scan implementation 'vivim-cuda' (known: ")
    assert "mamba_ssm" in reason and "vivim_cuda" in reason and "reference" in reason
