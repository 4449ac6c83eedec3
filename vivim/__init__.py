"""Vivim Edge: Vivim (Video Vision Mamba) for real-time medical video segmentation on NVIDIA GPUs.

`import vivim` stays light (no torch import): the TensorRT runtime path runs on devices without torch.
The torch-backed API below is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vivim.errors import CheckpointError, VivimError

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "variants", "save_checkpoint", "load_checkpoint", "ops", "VivimError",
           "CheckpointError"]

# public name -> (module, attribute); resolved lazily so `import vivim` does not import torch.
_LAZY = {
    "create_model": ("vivim.model", "create_model"),
    "variants": ("vivim.model", "variants"),
    "save_checkpoint": ("vivim.checkpoint", "save_checkpoint"),
    "load_checkpoint": ("vivim.checkpoint", "load_checkpoint"),
}

if TYPE_CHECKING:  # pragma: no cover
    from vivim import ops
    from vivim.checkpoint import load_checkpoint, save_checkpoint
    from vivim.model import create_model, variants


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    if name == "ops":
        return importlib.import_module("vivim.ops")
    raise AttributeError(f"module 'vivim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
