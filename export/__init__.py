"""Export a Vivim checkpoint to ONNX (one `vivim::VivimSelectiveScan` node per scan) and to TensorRT engines.

Modules (flat, one job each):
- `onnx_export`: checkpoint -> ONNX through the dynamo exporter (needs torch).
- `ort_ops`: NumPy implementation of the custom node for ONNX Runtime (no torch).
- `parity`: ONNX Runtime vs PyTorch on a synthetic clip (`vivim-export check`).
- `plugin`, `tensorrt_build`: build the TensorRT plugin library and engines.
- `cli`: the `vivim-export` command.

Importing this package imports nothing heavy; import the submodule you need.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_parity", "create_session", "export_onnx"]

_LAZY = {
    "export_onnx": ("vivim.export.onnx_export", "export_onnx"),
    "create_session": ("vivim.export.ort_ops", "create_session"),
    "check_parity": ("vivim.export.parity", "check_parity"),
}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'vivim.export' has no attribute {name!r}")
