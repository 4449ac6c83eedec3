"""Model variants as dataclass configs (no torch import: the runtime reads configs on torch-free devices)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Union

from vivim.constants import canonical_size, image_hw, image_size_problem


@dataclass(frozen=True)
class VivimConfig:
    name: str
    embed_dims: tuple[int, ...] = (64, 128, 320, 512)
    depths: tuple[int, ...] = (3, 4, 18, 3)  # SegFormer blocks per stage
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)  # key/value spatial reduction of efficient self-attention
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)
    strides: tuple[int, ...] = (4, 2, 2, 2)
    mlp_ratio: int = 4
    decoder_dim: int = 768
    drop_path_rate: float = 0.1  # stochastic depth, linear over all SegFormer blocks
    decoder_dropout: float = 0.1
    mamba_layers: int = 2  # temporal (Mamba) layers after each stage
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dsf_ratio: int = 4  # hidden width of the detail-specific feed-forward
    frames: int = 5  # clip length T, also the interleave period of the spatial branch
    img_size: Union[int, tuple[int, int]] = 256  # input side N (square) or (height, width)
    in_chans: int = 3
    num_classes: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        stages = len(self.embed_dims)
        for name in ("depths", "num_heads", "sr_ratios", "patch_sizes", "strides"):
            if len(getattr(self, name)) != stages:
                raise ValueError(f"config {self.name}: {name} needs {stages} entries")
        # ints checked as ints: a float T or size would be saved in the checkpoint and fail later, in export
        if isinstance(self.frames, bool) or not isinstance(self.frames, int) or self.frames < 1:
            raise ValueError(f"config {self.name}: frames must be an int >= 1, got {self.frames!r}")
        problem = image_size_problem(self.img_size)
        if problem:
            raise ValueError(f"config {self.name}: img_size {problem}")
        # one form per size: N when square (as configs before non-square sizes held it), else (H, W)
        object.__setattr__(self, "img_size", canonical_size(self.img_size))

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) of the input the network is built for."""
        return image_hw(self.img_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VivimConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(unknown)}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def replace(self, **changes: Any) -> "VivimConfig":
        return dataclasses.replace(self, **changes)


VARIANTS: dict[str, VivimConfig] = {
    # Paper: SegFormer/MiT-B3 encoder and decode head, 2 ST-Mamba layers per stage (59.50 M parameters).
    "paper": VivimConfig("paper"),
    # Edge variants: MiT-B1 / MiT-B0 widths with shallower SegFormer stages and a lighter decoder.
    "b1": VivimConfig("b1", embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2), decoder_dim=256),
    "b0": VivimConfig("b0", embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), decoder_dim=256),
    # For fast CPU tests and the bundled demo: every mechanism of the paper model at a fraction of the width.
    "tiny": VivimConfig("tiny", embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 4),
                        decoder_dim=64, d_state=8, drop_path_rate=0.0),
}


def variant_config(name: str, **overrides: Any) -> VivimConfig:
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of: {', '.join(VARIANTS)}")
    return VARIANTS[name].replace(**overrides) if overrides else VARIANTS[name]
