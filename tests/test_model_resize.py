"""The decoder's bilinear upsampling as matrix products (vivim/model/resize.py) against F.interpolate, and the decoder
head against a second implementation built on F.interpolate."""

import pytest
import torch
import torch.nn.functional as F

import vivim
from vivim.model.resize import BilinearResize, bilinear_weights
from vivim.model.vivim import stage_sizes

# (source h, w) -> (target H, W): the decoder's 2x/4x/8x, odd and non-square sizes, shrinking, identity, one pixel
SIZES = [((32, 32), (64, 64)), ((16, 16), (64, 64)), ((8, 8), (64, 64)), ((5, 7), (13, 20)), ((9, 6), (4, 5)),
         ((12, 12), (12, 12)), ((1, 3), (4, 6))]


@pytest.mark.parametrize("src,dst", SIZES, ids=[f"{s[0]}x{s[1]}-{d[0]}x{d[1]}" for s, d in SIZES])
def test_resize_equals_interpolate(rng_seed, src, dst):
    maps = torch.randn(2, 7, *src, dtype=torch.float64)
    expected = F.interpolate(maps, size=dst, mode="bilinear", align_corners=False)
    # kept weights are float32 (exact for the decoder's power-of-two factors); weights built per call are float64
    configured = BilinearResize(src, dst).double()
    torch.testing.assert_close(configured(maps, dst), expected, rtol=1e-6, atol=1e-6)
    other = BilinearResize((src[0] + 1, src[1] + 1), dst).double()
    torch.testing.assert_close(other(maps, dst), expected, rtol=1e-12, atol=1e-12)
    power_of_two = all(d % s == 0 and (d // s) & (d // s - 1) == 0 for s, d in zip(src, dst))
    if power_of_two:
        torch.testing.assert_close(configured(maps, dst), expected, rtol=1e-12, atol=1e-12)


def test_rows_of_the_weights_are_convex_combinations_of_two_neighbours():
    for src, dst in ((8, 64), (7, 3), (1, 5), (64, 64)):
        weights = bilinear_weights(src, dst)
        assert weights.shape == (dst, src)
        torch.testing.assert_close(weights.sum(1), torch.ones(dst, dtype=torch.float64))
        assert ((weights > 0).sum(1) <= 2).all() and (weights >= 0).all()


def test_weights_follow_the_model_dtype_and_stay_out_of_checkpoints():
    model = vivim.create_model("tiny", frames=2, img_size=64)
    assert not [k for k in model.state_dict() if "upsample" in k]
    model.to_inference_dtype(torch.float16)
    assert {b.dtype for b in model.decode_head.upsample.buffers()} == {torch.float16}


def test_stage_sizes_are_the_encoder_maps_sizes():
    model = vivim.create_model("tiny", frames=2, img_size=96).eval()
    maps = [model.frame_features(torch.randn(1, 3, 96, 96))]
    for i in range(1, 4):
        tokens, h, w = model._spatial_stage(i, maps[-1])
        maps.append(tokens.transpose(1, 2).reshape(1, -1, h, w))
    assert [tuple(m.shape[-2:]) for m in maps] == stage_sizes(model.config) == [(24, 24), (12, 12), (6, 6), (3, 3)]


def _reference_head(head, features):
    """SegFormer's all-MLP head as written upstream: project, F.interpolate to stage 1's size, fuse, classify."""
    size = features[0].shape[-2:]
    projected = [F.interpolate(linear(f.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(f.shape[0], -1, *f.shape[-2:]),
                               size=size, mode="bilinear", align_corners=False)
                 for f, linear in zip(features, head.linear_c)]
    x = head.linear_fuse(torch.cat(projected[::-1], dim=1))
    return head.classifier(F.relu(head.batch_norm(x)))


@pytest.mark.parametrize("side", [64, 96])  # the configured size (kept weights) and another one (weights per call)
def test_decoder_head_equals_the_interpolate_reference(rng_seed, side):
    model = vivim.create_model("tiny", frames=2, img_size=64).double().eval()
    head = model.decode_head
    for p in head.parameters():
        p.data.normal_(0, 0.3)
    head.batch_norm.running_mean.normal_(0, 0.1)
    head.batch_norm.running_var.uniform_(0.5, 1.5)
    features = [torch.randn(3, c, side // s, side // s, dtype=torch.float64)
                for c, s in zip(model.config.embed_dims, (4, 8, 16, 32))]
    with torch.no_grad():
        torch.testing.assert_close(head(features), _reference_head(head, features), rtol=1e-10, atol=1e-10)


def test_the_configured_size_uses_the_kept_weights(monkeypatch):
    """At the size the model was built for, no weights are built per call (that is the fast path)."""
    from vivim.model import resize

    model = vivim.create_model("tiny", frames=2, img_size=64).eval()
    clip = torch.randn(1, 2, 3, 64, 64)

    def not_at_this_size(src, dst):
        raise AssertionError(f"weights built per call for {src} -> {dst}")

    monkeypatch.setattr(resize, "bilinear_weights", not_at_this_size)
    with torch.no_grad():
        model(clip)
        with pytest.raises(AssertionError, match="weights built per call"):
            model(torch.randn(1, 2, 3, 96, 96))
