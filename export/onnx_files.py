"""Reading ONNX files with one-line errors: the model, or only its metadata (what vivim-export onnx recorded)."""

from __future__ import annotations

import os
from typing import Any

from vivim.errors import VivimError


def load_onnx(path: str | os.PathLike[str], *, external_data: bool = True) -> Any:
    """The `onnx.ModelProto` of `path`; a file that is not ONNX gets a one-line VivimError naming it."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=external_data)
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for a foreign or damaged file
        raise VivimError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from exc
    if not model.HasField("graph"):  # protobuf reads an empty (or truncated-to-nothing) file as an empty model
        raise VivimError(f"{path}: not a readable ONNX model (no graph)")
    return model


def onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The model's metadata_props (variant, frames, size, precision, normalisation, ...), without its weights;
    {} where the onnx package is not installed (a Jetson building engines with TensorRT's own parser)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return {}
    return {prop.key: prop.value for prop in load_onnx(path, external_data=False).metadata_props}


# What vivim-export onnx writes and every consumer (ONNX Runtime backend, parity check) needs to prepare frames.
VIVIM_METADATA_KEYS = ("frames", "img_size", "output_frame", "normalization")


def missing_vivim_metadata(meta: dict[str, str], source: str) -> None:
    """A one-line VivimError naming `source` unless `meta` holds the keys vivim-export onnx writes: a graph from
    elsewhere would run and draw masks from frames normalised in a way it was never trained on."""
    missing = [key for key in VIVIM_METADATA_KEYS if key not in meta]
    if missing:
        raise VivimError(f"{source}: no Vivim metadata ({', '.join(missing)} missing); export it with vivim-export onnx")
