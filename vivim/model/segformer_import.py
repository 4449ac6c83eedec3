"""Initialise Vivim's encoder and decoder from HuggingFace SegFormer weights, as the paper does.

Accepts a local model folder (`model.safetensors` or `pytorch_model.bin`, e.g. a download of
`nvidia/segformer-b3-finetuned-ade-512-512`), a weights file, or a state dict. Both key layouts are understood:
the one of the published checkpoints / transformers 4.x (`segformer.encoder.block.0.0.attention.self.query`) and the
one of transformers 5.x (`segformer.stages.0.blocks.0.attention.q_proj`). The ST-Mamba layers and the new 1-class
output conv have no SegFormer counterpart and keep their initialisation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import torch
from torch import Tensor

from vivim.errors import VivimError
from vivim.model.vivim import VivimModel

# (pattern on the SegFormer key without the "segformer." prefix, our key template); {s} stage, {b} block
_BLOCK_PARTS = {
    # transformers 4.x / published checkpoints
    r"layer_norm_1": "norm1", r"attention\.self\.query": "attn.query", r"attention\.self\.key": "attn.key",
    r"attention\.self\.value": "attn.value", r"attention\.self\.sr": "attn.sr",
    r"attention\.self\.layer_norm": "attn.sr_norm", r"attention\.output\.dense": "attn.proj",
    r"layer_norm_2": "norm2", r"mlp\.dense1": "mlp.fc1", r"mlp\.dwconv\.dwconv": "mlp.dwconv",
    r"mlp\.dense2": "mlp.fc2",
    # transformers 5.x
    r"layernorm_before": "norm1", r"attention\.q_proj": "attn.query", r"attention\.k_proj": "attn.key",
    r"attention\.v_proj": "attn.value", r"attention\.sequence_reduction\.sequence_reduction": "attn.sr",
    r"attention\.sequence_reduction\.layer_norm": "attn.sr_norm", r"attention\.o_proj": "attn.proj",
    r"layernorm_after": "norm2", r"mlp\.fc1": "mlp.fc1", r"mlp\.fc2": "mlp.fc2",
}
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"encoder\.patch_embeddings\.(\d+)\.proj\.(weight|bias)"), r"patch_embeds.\1.proj.\2"),
    (re.compile(r"encoder\.patch_embeddings\.(\d+)\.layer_norm\.(weight|bias)"), r"patch_embeds.\1.norm.\2"),
    (re.compile(r"stages\.(\d+)\.patch_embeddings\.proj\.(weight|bias)"), r"patch_embeds.\1.proj.\2"),
    (re.compile(r"stages\.(\d+)\.patch_embeddings\.layer_norm\.(weight|bias)"), r"patch_embeds.\1.norm.\2"),
    *[(re.compile(rf"encoder\.block\.(\d+)\.(\d+)\.{src}\.(weight|bias)"), rf"blocks.\1.\2.{dst}.\3")
      for src, dst in _BLOCK_PARTS.items()],
    *[(re.compile(rf"stages\.(\d+)\.blocks\.(\d+)\.{src}\.(weight|bias)"), rf"blocks.\1.\2.{dst}.\3")
      for src, dst in _BLOCK_PARTS.items()],
    (re.compile(r"decode_head\.(?:linear_c|linear_projections)\.(\d+)\.proj\.(weight|bias)"),
     r"decode_head.linear_c.\1.\2"),
    (re.compile(r"decode_head\.linear_fuse\.weight"), "decode_head.linear_fuse.weight"),
    (re.compile(r"decode_head\.batch_norm\.(weight|bias|running_mean|running_var|num_batches_tracked)"),
     r"decode_head.batch_norm.\1"),
]


@dataclass
class ImportReport:
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (SegFormer key, our key)
    unmapped_source: list[str] = field(default_factory=list)  # SegFormer tensors with no place in Vivim
    not_initialised: list[str] = field(default_factory=list)  # our tensors SegFormer does not provide

    def summary(self) -> str:
        return (f"SegFormer import: {len(self.mapped)} tensors mapped, {len(self.unmapped_source)} SegFormer tensors "
                f"unused ({', '.join(self.unmapped_source[:4])}{'...' if len(self.unmapped_source) > 4 else ''}), "
                f"{len(self.not_initialised)} Vivim tensors keep their initialisation (temporal layers, output conv)")


def segformer_key_to_vivim(key: str) -> Union[str, None]:
    key = key.removeprefix("segformer.")
    for pattern, template in _RULES:
        if pattern.fullmatch(key):
            return pattern.sub(template, key)
    return None


def read_segformer_state_dict(source: Union[str, Path]) -> dict[str, Tensor]:
    """Weights from a HuggingFace model folder or a file; pickled .bin files load with weights_only=True."""
    path = Path(source)
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise VivimError(f"{source}: no model.safetensors or pytorch_model.bin in this SegFormer folder")
    if not path.is_file():
        raise VivimError(f"{source}: SegFormer weights not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged or foreign file: one clear line
        raise VivimError(f"{path}: not readable as SegFormer weights ({type(exc).__name__}); expected model.safetensors, "
                         "a pytorch_model.bin state dict or a HuggingFace SegFormer folder") from None


def load_segformer_weights(model: VivimModel, source: Union[str, Path, dict[str, Tensor]]) -> ImportReport:
    """Copy SegFormer encoder/decoder weights into `model`; raises VivimError on a shape mismatch."""
    state = source if isinstance(source, dict) else read_segformer_state_dict(source)
    ours = model.state_dict()
    report = ImportReport()
    updates: dict[str, Tensor] = {}
    for key, tensor in state.items():
        target = segformer_key_to_vivim(key)
        if target is None or target not in ours:
            report.unmapped_source.append(key)
            continue
        if tuple(ours[target].shape) != tuple(tensor.shape):
            raise VivimError(f"SegFormer tensor {key} has shape {tuple(tensor.shape)} but Vivim's {target} is "
                             f"{tuple(ours[target].shape)}: the SegFormer size does not match the "
                             f"'{model.config.name}' variant")
        updates[target] = tensor.to(ours[target].dtype)
        report.mapped.append((key, target))
    if not updates:
        raise VivimError("no SegFormer tensor matched: is this a SegFormer checkpoint?")
    model.load_state_dict(updates, strict=False)
    report.not_initialised = sorted(set(ours) - set(updates))
    return report
