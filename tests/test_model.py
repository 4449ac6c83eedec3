"""Model structure: shapes, the paper's parameter count, ST-Mamba orderings, single-frame decoding, streaming split."""

import pytest
import torch

from scan_oracle import scan_oracle

import vivim
from vivim.model.st_mamba import BRANCHES, STMamba, from_branch_order, to_branch_order


@pytest.mark.parametrize("variant", ["paper", "b1", "b0", "tiny"])
def test_every_variant_maps_a_clip_to_per_frame_logits(variant):
    model = vivim.create_model(variant, frames=2, img_size=64).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 2, 3, 64, 64))
    assert logits.shape == (1, 2, 1, 64, 64)
    assert torch.isfinite(logits).all()


def test_paper_variant_has_59_50_million_parameters():
    count = sum(p.numel() for p in vivim.create_model("paper").parameters())
    assert abs(count - 59.50e6) / 59.50e6 <= 0.005


@pytest.mark.parametrize("kwargs, message", [(dict(frames=2.5), "frames must be an int"),
                                             (dict(img_size=33), "img_size must be a multiple of 32")])
def test_configs_that_export_could_not_use_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        vivim.create_model("tiny", **kwargs)


def test_variants_lists_the_built_in_configs():
    assert vivim.variants() == ["paper", "b1", "b0", "tiny"]
    with pytest.raises(ValueError, match="unknown variant"):
        vivim.create_model("b7")


@pytest.mark.parametrize("frames", [1, 3, 5, 8])
def test_branch_orders_are_exact_inverses(frames):
    hw = 6
    x = torch.randn(2, 4, frames * hw)
    for branch in BRANCHES:
        torch.testing.assert_close(from_branch_order(to_branch_order(x, branch, frames), branch, frames), x,
                                   rtol=0, atol=0)


@pytest.mark.parametrize("frames", [1, 3, 5, 8])
def test_interleaved_order_is_position_major_with_frames_fastest(frames):
    hw = 4
    # token value = t * 100 + p in T-major order
    tokens = torch.tensor([t * 100 + p for t in range(frames) for p in range(hw)], dtype=torch.float32)
    interleaved = to_branch_order(tokens, "interleaved", frames)
    expected = torch.tensor([t * 100 + p for p in range(hw) for t in range(frames)], dtype=torch.float32)
    torch.testing.assert_close(interleaved, expected, rtol=0, atol=0)
    torch.testing.assert_close(to_branch_order(tokens, "reversed", frames), tokens.flip(0), rtol=0, atol=0)


def test_grouped_scan_equals_three_separate_branch_scans(rng_seed):
    """The one grouped call must compute exactly the paper's three branches, each in its own order, averaged."""
    frames, hw, dim = 3, 4, 8
    mixer = STMamba(dim, d_state=4).double()
    for p in mixer.parameters():  # non-trivial values everywhere, including the zero-initialised biases
        p.data.normal_(0, 0.3)
    tokens = torch.randn(2, frames * hw, dim, dtype=torch.float64)
    got = mixer(tokens, frames)

    xz = mixer.in_proj(tokens).transpose(1, 2)
    x, z = xz.chunk(2, dim=1)
    outputs = []
    for name, branch in zip(BRANCHES, mixer.branches):
        u, delta, B, C = branch.scan_inputs(to_branch_order(x, name, frames))
        y = scan_oracle(u, delta, -torch.exp(branch.A_log), B, C, branch.D,
                                      to_branch_order(z, name, frames), branch.dt_proj.bias, delta_softplus=True)
        outputs.append(from_branch_order(y, name, frames))
    expected = mixer.out_proj((sum(outputs) / 3).transpose(1, 2))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def _scan_order(name, frames, hw):
    """T-major token indices in the branch's scan order, written out by hand."""
    L = frames * hw
    if name == "forward":
        return list(range(L))
    if name == "reversed":
        return list(range(L - 1, -1, -1))
    return [t * hw + p for p in range(hw) for t in range(frames)]  # each pixel's frames in a row


def _layer_norm(x, norm):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _reference_temporal_layer(layer, tokens, frames, h, w):
    """Vivim's temporal layer from the raw weights: explicit causal conv, SiLU, projections, index-list orders,
    the oracle scan per branch, explicit 3x3x3 depthwise conv and erf GELU. No module method is called."""
    mixer, hw = layer.mixer, h * w
    batch, L, _ = tokens.shape
    xz = _layer_norm(tokens, layer.norm1) @ mixer.in_proj.weight.T
    x, z = xz.chunk(2, dim=-1)  # (batch, L, d_inner)
    merged = 0
    for name, branch in zip(BRANCHES, mixer.branches):
        order = _scan_order(name, frames, hw)
        xs = x[:, order, :]
        weight, K = branch.conv1d.weight[:, 0, :], branch.conv1d.weight.shape[-1]
        padded = torch.cat([torch.zeros(batch, K - 1, xs.shape[-1], dtype=xs.dtype), xs], dim=1)
        conv = sum(padded[:, k:k + L, :] * weight[:, k] for k in range(K)) + branch.conv1d.bias  # causal
        u = conv * torch.sigmoid(conv)
        proj = u @ branch.x_proj.weight.T
        r, n = branch.dt_rank, branch.d_state
        dt_low, B, C = proj[..., :r], proj[..., r:r + n], proj[..., r + n:]
        delta = dt_low @ branch.dt_proj.weight.T
        y = scan_oracle(u.transpose(1, 2), delta.transpose(1, 2), -torch.exp(branch.A_log), B.transpose(1, 2),
                        C.transpose(1, 2), branch.D, z[:, order, :].transpose(1, 2), branch.dt_proj.bias,
                        delta_softplus=True)
        back = torch.empty_like(y)
        back[:, :, order] = y
        merged = merged + back / 3
    tokens = tokens + merged.transpose(1, 2) @ mixer.out_proj.weight.T
    mlp = layer.mlp
    a = _layer_norm(tokens, layer.norm2) @ mlp.fc1.weight.T + mlp.fc1.bias  # (batch, L, hidden)
    vol = a.transpose(1, 2).reshape(batch, -1, frames, h, w)
    padded = torch.nn.functional.pad(vol, (1, 1, 1, 1, 1, 1))
    kernel = mlp.dwconv.weight[:, 0]  # (hidden, 3, 3, 3)
    conv = mlp.dwconv.bias[None, :, None, None, None] + sum(
        padded[:, :, i:i + frames, j:j + h, k:k + w] * kernel[None, :, i, j, k, None, None, None]
        for i in range(3) for j in range(3) for k in range(3))
    c = conv.flatten(2).transpose(1, 2)
    gelu = 0.5 * c * (1 + torch.erf(c / 2 ** 0.5))
    return tokens + gelu @ mlp.fc2.weight.T + mlp.fc2.bias


@pytest.mark.parametrize("frames,h,w", [(3, 2, 3), (5, 3, 2), (1, 2, 2)])
def test_temporal_layer_matches_a_hand_written_reference(frames, h, w):
    """The whole temporal layer (norms, ST-Mamba's three branches, the detail-specific FFN) against a reference
    built from its raw weights: catches an anti-causal conv, a wrong activation or a wrong branch order."""
    from vivim.model.temporal import MambaLayer

    layer = MambaLayer(dim=8, d_state=4, d_conv=4, expand=2, dsf_ratio=2).double()
    for p in layer.parameters():  # fresh non-trivial values everywhere (the init zeroes biases)
        p.data.normal_(0, 0.3)
    tokens = torch.randn(2, frames * h * w, 8, dtype=torch.float64)
    got = layer(tokens, frames, h, w)
    torch.testing.assert_close(got, _reference_temporal_layer(layer, tokens, frames, h, w), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("frames", [1, 3, 5, 8])
def test_any_clip_length_works(frames):
    model = vivim.create_model("tiny", frames=frames, img_size=64).eval()
    with torch.no_grad():
        assert model(torch.randn(1, frames, 3, 64, 64)).shape == (1, frames, 1, 64, 64)


def test_frames_are_mixed_by_the_temporal_layers(rng_seed):
    model = vivim.create_model("tiny", frames=3, img_size=64).eval()
    clip = torch.randn(1, 3, 3, 64, 64)
    changed = clip.clone()
    changed[:, 2] = torch.randn(3, 64, 64)
    with torch.no_grad():
        a, b = model(clip), model(changed)
    assert not torch.allclose(a[:, 0], b[:, 0])  # frame 0's mask depends on frame 2


@pytest.mark.parametrize("output_frame,index", [("centre", 2), ("newest", 4), (0, 0), (-2, 3)])
def test_single_frame_decoding_equals_that_frame_of_the_full_output(rng_seed, output_frame, index):
    model = vivim.create_model("tiny", frames=5, img_size=64).eval()
    clip = torch.randn(2, 5, 3, 64, 64)
    with torch.no_grad():
        full = model(clip)
        one = model(clip, output_frame=output_frame)
    assert one.shape == (2, 1, 1, 64, 64)
    torch.testing.assert_close(one[:, 0], full[:, index], rtol=1e-5, atol=1e-5)


def test_training_decodes_one_frame_with_batch_norm_statistics_over_every_frame(rng_seed):
    """Training supervises one frame per clip; the official code decodes all T and its decoder's BatchNorm takes
    batch statistics over B·T frames. Decoding the supervised frame alone took them over B frames (logits off by
    ~2 in train mode). With dropout and drop-path off, the two must agree, running statistics included."""
    import copy

    model = vivim.create_model("tiny", frames=5, img_size=64).train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    twin = copy.deepcopy(model)
    clip = torch.randn(2, 5, 3, 64, 64)
    one = model(clip, output_frame="centre")
    full = twin(clip)
    torch.testing.assert_close(one[:, 0], full[:, 2], rtol=1e-4, atol=1e-4)
    bn, bn_full = model.decode_head.batch_norm, twin.decode_head.batch_norm
    torch.testing.assert_close(bn.running_mean, bn_full.running_mean)
    torch.testing.assert_close(bn.running_var, bn_full.running_var)
    one.sum().backward()  # the gradient flows to the encoder through every frame's statistics
    assert model.patch_embeds[0].proj.weight.grad is not None


def test_decoder_equals_segformers_project_upsample_concatenate_fuse_order(rng_seed):
    """The decoder forms fuse_i · linear_i per stage and sums the resized results; SegFormer projects, upsamples,
    concatenates (deepest stage first) and fuses. Same map, values and gradients, written out the original way here
    in float64 on random weights (so a wrong stage-to-block pairing cannot cancel out)."""
    import torch.nn.functional as F

    head = vivim.create_model("tiny", frames=5, img_size=64).decode_head.double()
    for param in head.parameters():
        param.data.normal_(0.0, 0.1)
    dims, sides = [lin.in_features for lin in head.linear_c], [16, 8, 4, 2]
    features = [torch.randn(3, d, s, s, dtype=torch.float64, requires_grad=True) for d, s in zip(dims, sides)]

    def segformer_order(maps):
        projected = []
        for i, (x, linear) in enumerate(zip(maps, head.linear_c)):
            n, _, h, w = x.shape
            x = linear(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, -1, h, w)
            projected.append(x if i == 0 else F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False))
        return head.linear_fuse(torch.cat(projected[::-1], dim=1))

    ours, theirs = head.fused_maps(features), segformer_order(features)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(ours)
    grads = torch.autograd.grad((ours * weights).sum(), features + list(head.parameters()), allow_unused=True)
    expected = torch.autograd.grad((theirs * weights).sum(), features + list(head.parameters()), allow_unused=True)
    for a, b in zip(grads, expected):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_streaming_split_equals_forward(rng_seed):
    model = vivim.create_model("tiny", frames=4, img_size=64).eval()
    clip = torch.randn(1, 4, 3, 64, 64)
    with torch.no_grad():
        features = torch.stack([model.frame_features(clip[:, t]) for t in range(4)], dim=1)
        assert features.shape == (1, 4, 16, 16, 16)
        torch.testing.assert_close(model.forward_from_frame_features(features, "newest"),
                                   model(clip, output_frame="newest"), rtol=1e-5, atol=1e-5)


def test_inference_dtype_keeps_the_scan_parameters_fp32():
    model = vivim.create_model("tiny", frames=2, img_size=64).to_inference_dtype(torch.float16)
    fp32 = {id(p) for p in model.ssm_fp32_parameters()}
    assert len(fp32) == 4 * 2 * 3 * 3  # stages x layers x branches x (A_log, D, dt bias)
    for p in model.parameters():
        assert p.dtype == (torch.float32 if id(p) in fp32 else torch.float16)


def test_torch_export_has_one_scan_node_per_temporal_layer():
    model = vivim.create_model("tiny", frames=2, img_size=64).eval()
    program = torch.export.export(model, (torch.randn(1, 2, 3, 64, 64),))
    scans = [n for n in program.graph.nodes if n.target == torch.ops.vivim.selective_scan.default]
    assert len(scans) == 4 * 2  # 4 stages x 2 ST-Mamba layers, each one grouped call (G = 3)
    for node in scans:
        assert node.args[3].meta["val"].shape[1] == 3  # B is (batch, G=3, N, L)


def test_eval_mode_applies_no_stochastic_depth(rng_seed):
    """Drop path is a training regulariser: in eval a model trained with it must give the same, deterministic masks
    as the same weights without it, or vivim-run and vivim-eval would drop whole residual branches at random."""
    import copy

    from vivim.model.segformer import DropPath

    model = vivim.create_model("tiny", frames=3, img_size=64, drop_path_rate=0.5).eval()
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, DropPath):
            module.rate = 0.0
    assert any(m.rate > 0 for m in model.modules() if isinstance(m, DropPath))
    clip = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        first, second, plain = model(clip), model(clip), twin(clip)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first, plain, rtol=0, atol=0)


def test_drop_path_keeps_or_drops_whole_samples_and_preserves_the_expectation(rng_seed):
    """Stochastic depth must rescale kept samples by 1/keep: otherwise the residual branches are weaker in
    training than in eval and the trained model's masks shift once dropping stops."""
    from vivim.model.segformer import DropPath

    rate, n = 0.25, 2000
    layer = DropPath(rate).train()
    x = torch.randn(n, 3, 4) + 2.0  # no sample is all zeros
    y = layer(x)
    dropped = (y == 0).flatten(1).all(1)
    kept = ~dropped
    torch.testing.assert_close(y[kept], x[kept] / (1 - rate), rtol=1e-6, atol=0)
    assert kept.any() and dropped.any()
    assert abs(float(dropped.float().mean()) - rate) < 0.05  # ~5 standard deviations of the binomial share
    # expectation: the mean of many draws of one sample approaches the sample itself
    one = torch.randn(1, 8)
    draws = torch.stack([layer(one) for _ in range(4000)])
    torch.testing.assert_close(draws.mean(0), one, rtol=0, atol=0.06 * float(one.abs().max()) + 1e-6)


def test_drop_path_rate_ramps_linearly_from_zero_over_all_blocks():
    """SegFormer's stochastic depth grows linearly with depth, from 0 at the first block to drop_path_rate at the
    last: shallow blocks, which every later one depends on, are never dropped."""
    rate, depths = 0.3, (2, 3, 1, 2)
    model = vivim.create_model("tiny", frames=2, img_size=64, drop_path_rate=rate, depths=depths)
    rates = [block.drop_path.rate for stage in model.blocks for block in stage]
    n = sum(depths)
    assert len(rates) == n
    assert rates[0] == 0.0
    assert rates[-1] == pytest.approx(rate)
    assert rates == pytest.approx([rate * i / (n - 1) for i in range(n)])
    assert all(a < b for a, b in zip(rates, rates[1:]))


@pytest.mark.parametrize("index", [5, 6, -6, 100])
def test_output_frame_outside_the_clip_is_refused(index):
    """An index past either end of the clip must be an error, not wrap round to another frame's mask."""
    from vivim.constants import output_frame_index

    with pytest.raises(ValueError, match="outside a clip of 5 frames"):
        output_frame_index(index, 5)
    assert output_frame_index(4, 5) == 4 and output_frame_index(-5, 5) == 0
    with pytest.raises(ValueError, match="got True"):  # a bool is no frame index (True would mean frame 1)
        output_frame_index(True, 5)


def test_a_clip_the_network_cannot_take_is_named_at_the_call():
    """Wrong channels, dtype, sizes or an empty batch: one error naming `clip`, not one from inside a convolution
    (or, for sizes the encoder cannot divide by 32, masks computed from misaligned stages)."""
    import numpy as np

    model = vivim.create_model("tiny", frames=3, img_size=64).eval()
    good = torch.randn(1, 3, 3, 64, 96)
    with torch.no_grad():
        assert model(good).shape == (1, 3, 1, 64, 96)
        cases = [
            (np.zeros((1, 3, 3, 64, 64), np.float32), TypeError, "clip must be a torch.Tensor"),
            (good[0], ValueError, r"clip must be \(batch, T, C, H, W\), got shape \(3, 3, 64, 96\)"),
            (good[:, :0], ValueError, "at least one clip of at least one frame"),
            (good[:, :, :1], ValueError, "clip has 1 channels per frame; this model takes 3"),
            (torch.randn(1, 3, 3, 50, 64), ValueError, "clip frames are 50x64: each side must be a multiple of 32"),
            (good.half(), TypeError, r"clip is torch.float16 but the model's weights are torch.float32"),
            (good.to(torch.uint8), TypeError, "clip is torch.uint8"),
        ]
        for clip, error, message in cases:
            with pytest.raises(error, match=message):
                model(clip)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: fp32 weights take a bf16 clip
            assert model(good.bfloat16()).shape == (1, 3, 1, 64, 96)


def test_the_clip_checks_leave_torch_export_with_dynamic_sides_working():
    """Sides that are symbols (torch.export with dynamic H and W) are not forced to one value by the checks: the
    export's constraint check would refuse it. (The decoder's resize weights still guard the traced program to its
    example size; export for ONNX/TensorRT uses static sizes.)"""
    from torch.export import Dim, export

    model = vivim.create_model("tiny", frames=3, img_size=64).eval()
    clip = torch.randn(1, 3, 3, 64, 96)
    program = export(model, (clip,), dynamic_shapes={"clip": {3: 32 * Dim("h", min=1, max=8),
                                                              4: 32 * Dim("w", min=1, max=8)}})
    with torch.no_grad():
        torch.testing.assert_close(program.module()(clip), model(clip), rtol=1e-4, atol=1e-4)
