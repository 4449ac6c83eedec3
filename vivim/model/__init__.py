"""The Vivim model: configs, building blocks and `create_model`."""

from __future__ import annotations

from typing import Union

from vivim.model.config import VARIANTS, VivimConfig, variant_config
from vivim.model.vivim import VivimModel

__all__ = ["VivimConfig", "VivimModel", "VARIANTS", "create_model", "variants", "variant_config"]


def variants() -> list[str]:
    """Names of the built-in variants, largest first."""
    return list(VARIANTS)


def create_model(variant: str = "paper", *, frames: int = 5, img_size: Union[int, tuple[int, int]] = 256,
                 **overrides) -> VivimModel:
    """Build a randomly initialised Vivim model for inputs of side img_size (or (height, width)); load weights with
    `vivim.load_checkpoint` or the SegFormer importer."""
    return VivimModel(variant_config(variant, frames=frames, img_size=img_size, **overrides))
