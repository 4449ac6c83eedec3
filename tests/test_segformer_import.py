"""Initialising Vivim from SegFormer weights built by transformers' own classes (random init, no download)."""

import pytest
import torch

import vivim
from vivim.errors import VivimError
from vivim.model.segformer_import import load_segformer_weights, segformer_key_to_vivim

transformers = pytest.importorskip("transformers", reason="transformers is not installed")


def hf_segformer(variant_model, num_labels=150):
    c = variant_model.config
    config = transformers.SegformerConfig(
        num_encoder_blocks=4, depths=list(c.depths), hidden_sizes=list(c.embed_dims),
        num_attention_heads=list(c.num_heads), sr_ratios=list(c.sr_ratios), decoder_hidden_size=c.decoder_dim,
        num_labels=num_labels)
    return transformers.SegformerForSemanticSegmentation(config).eval()


def test_every_segformer_tensor_maps_with_matching_shape():
    model = vivim.create_model("tiny", frames=2, img_size=64).eval()
    hf = hf_segformer(model)
    report = load_segformer_weights(model, hf.state_dict())
    ours = model.state_dict()
    for src, dst in report.mapped:
        torch.testing.assert_close(ours[dst], hf.state_dict()[src].to(ours[dst].dtype), rtol=0, atol=0)
    # only the skipped stage-final LayerNorms and the 150-class ADE classifier stay unused
    assert sorted(report.unmapped_source) == sorted(
        [f"segformer.stages.{i}.layer_norm.{p}" for i in range(4) for p in ("weight", "bias")]
        + ["decode_head.classifier.weight", "decode_head.classifier.bias"])
    non_temporal = [k for k in report.not_initialised if not k.startswith("temporal.")]
    assert non_temporal == ["decode_head.classifier.bias", "decode_head.classifier.weight"]


def test_imported_encoder_computes_what_segformer_computes(rng_seed):
    model = vivim.create_model("tiny", frames=2, img_size=64).eval()
    hf = hf_segformer(model)
    load_segformer_weights(model, hf.state_dict())
    frames = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        hidden = hf.segformer(frames, output_hidden_states=True).hidden_states[0]
        ours = model.frame_features(frames)
        # SegFormer applies its stage-final LayerNorm; Vivim skips it (as the official model does)
        norm = hf.segformer.stages[0].layer_norm if hasattr(hf.segformer, "stages") else hf.segformer.encoder.layer_norm[0]
        expected = norm(ours.flatten(2).transpose(1, 2)).transpose(1, 2).reshape_as(ours)
    torch.testing.assert_close(hidden, expected, rtol=1e-5, atol=1e-5)


def test_published_checkpoint_key_names_map_too():
    # the layout of the published hub files (transformers 4.x names)
    assert segformer_key_to_vivim("segformer.encoder.block.2.5.attention.self.query.weight") == \
        "blocks.2.5.attn.query.weight"
    assert segformer_key_to_vivim("segformer.encoder.block.0.0.attention.self.sr.bias") == "blocks.0.0.attn.sr.bias"
    assert segformer_key_to_vivim("segformer.encoder.patch_embeddings.3.layer_norm.weight") == \
        "patch_embeds.3.norm.weight"
    assert segformer_key_to_vivim("decode_head.linear_c.1.proj.weight") == "decode_head.linear_c.1.weight"
    assert segformer_key_to_vivim("segformer.encoder.layer_norm.0.weight") is None


def test_wrong_size_and_foreign_weights_are_refused(tmp_path):
    model = vivim.create_model("tiny", frames=2, img_size=64)
    b0 = vivim.create_model("b0", frames=2, img_size=64)
    with pytest.raises(VivimError, match="does not match"):
        load_segformer_weights(model, hf_segformer(b0).state_dict())
    with pytest.raises(VivimError, match="no SegFormer tensor"):
        load_segformer_weights(model, {"fc.weight": torch.zeros(2, 2)})
    with pytest.raises(VivimError, match="no model.safetensors"):
        load_segformer_weights(model, tmp_path)


# transformers 5.x name -> the name the published hub checkpoints (transformers 4.x) use for the same tensor
_AS_PUBLISHED = [
    (r"segformer\.stages\.(\d+)\.patch_embeddings\.", r"segformer.encoder.patch_embeddings.\1."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.layernorm_before\.", r"segformer.encoder.block.\1.\2.layer_norm_1."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.layernorm_after\.", r"segformer.encoder.block.\1.\2.layer_norm_2."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.attention\.q_proj\.", r"segformer.encoder.block.\1.\2.attention.self.query."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.attention\.k_proj\.", r"segformer.encoder.block.\1.\2.attention.self.key."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.attention\.v_proj\.", r"segformer.encoder.block.\1.\2.attention.self.value."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.attention\.o_proj\.", r"segformer.encoder.block.\1.\2.attention.output.dense."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.attention\.sequence_reduction\.sequence_reduction\.",
     r"segformer.encoder.block.\1.\2.attention.self.sr."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.attention\.sequence_reduction\.layer_norm\.",
     r"segformer.encoder.block.\1.\2.attention.self.layer_norm."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.", r"segformer.encoder.block.\1.\2.mlp.dense1."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.", r"segformer.encoder.block.\1.\2.mlp.dense2."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.mlp\.dwconv\.", r"segformer.encoder.block.\1.\2.mlp.dwconv."),
    (r"segformer\.stages\.(\d+)\.layer_norm\.", r"segformer.encoder.layer_norm.\1."),
    (r"decode_head\.linear_projections\.", r"decode_head.linear_c."),
]


def test_published_checkpoint_layout_imports_the_same_weights():
    """The hub files use the transformers 4.x names: renamed that way, the same tensors must land in the same places
    (a swapped key/value or query mapping would load silently otherwise)."""
    import re

    model = vivim.create_model("tiny", frames=2, img_size=64).eval()
    hf = hf_segformer(model)
    current = hf.state_dict()
    if not any(".stages." in key for key in current):
        pytest.skip("transformers 4.x installed: its names are the published ones")
    published = {}
    for key, value in current.items():
        for pattern, replacement in _AS_PUBLISHED:
            key = re.sub(pattern, replacement, key)
        published[key] = value
    assert not any(".stages." in key or "_proj." in key for key in published)
    from_current = vivim.create_model("tiny", frames=2, img_size=64)
    from_published = vivim.create_model("tiny", frames=2, img_size=64)
    imported = {dst for _, dst in load_segformer_weights(from_current, current).mapped}
    assert {dst for _, dst in load_segformer_weights(from_published, published).mapped} == imported
    ours = from_published.state_dict()
    for key in imported:  # the rest (ST-Mamba layers, the 1-class output) keeps its own random initialisation
        assert torch.equal(from_current.state_dict()[key], ours[key]), key
