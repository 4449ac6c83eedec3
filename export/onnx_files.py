"""Reading ONNX files with one-line errors: the model, or only its metadata (what vivim-export onnx recorded)."""

from __future__ import annotations

import os
from typing import Any

from vivim.errors import VivimError


def load_onnx(path: str | os.PathLike[str], *, external_data: bool = True, what: str | None = None) -> Any:
    """The `onnx.ModelProto` of `path`; a file that is not ONNX gets a one-line VivimError naming it (as `what`,
    e.g. "--onnx m.onnx", where a flag gave it)."""
    import onnx

    name = what or str(path)
    try:
        model = onnx.load(str(path), load_external_data=external_data)
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for a foreign or damaged file
        raise VivimError(f"{name}: not a readable ONNX model ({type(exc).__name__})") from exc
    if not model.HasField("graph"):  # protobuf reads an empty (or truncated-to-nothing) file as an empty model
        raise VivimError(f"{name}: not a readable ONNX model (no graph)")
    return model


def onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The model's metadata_props (variant, frames, size, precision, normalisation, ...), read straight from the
    protobuf wire format: no onnx package needed (a Jetson building engines with TensorRT's own parser has none),
    and the weights are skipped, not parsed. A file that is not an ONNX model is a one-line VivimError naming it."""
    try:
        with open(path, "rb") as handle:
            fields = _top_level_fields(handle)
            if _GRAPH not in fields:
                raise ValueError("no graph")
            meta: dict[str, str] = {}
            for offset, length in fields.get(_METADATA_PROPS, []):
                handle.seek(offset)
                entry = _fields_of(handle.read(length))
                meta[entry.get(1, b"").decode("utf-8")] = entry.get(2, b"").decode("utf-8")
            return meta
    except OSError as exc:
        raise VivimError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise VivimError(f"{path}: not a readable ONNX model ({exc})") from exc


# ModelProto field numbers (onnx.proto): graph = 7, metadata_props = 14 (StringStringEntryProto: key = 1, value = 2).
_GRAPH, _METADATA_PROPS = 7, 14
_VARINT, _FIXED64, _BYTES, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5


def _varint(read: Any) -> int | None:
    """A base-128 varint from `read(1)`; None at a clean end of input."""
    value, shift = 0, 0
    while True:
        byte = read(1)
        if not byte:
            if shift:
                raise ValueError("truncated")
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("bad varint")


def _top_level_fields(handle: Any) -> dict[int, list[tuple[int, int]]]:
    """(offset, length) of each length-delimited top-level field of a protobuf message in a file, by field
    number; the contents are seeked over, not read. Malformed input (truncation, bad wire types) is a ValueError."""
    start = handle.tell()
    size = handle.seek(0, os.SEEK_END)
    handle.seek(start)
    fields: dict[int, list[tuple[int, int]]] = {}
    while (key := _varint(handle.read)) is not None:
        number, wire = key >> 3, key & 7
        span = _skip_field(handle, number, wire, size)
        if span is not None:
            fields.setdefault(number, []).append(span)
    return fields


def _skip_field(handle: Any, number: int, wire: int, size: int) -> tuple[int, int] | None:
    """Move past one field's value; (offset, length) for a length-delimited one. Groups (a deprecated encoding
    that unknown fields may still use) are skipped to their end marker."""
    if number == 0:
        raise ValueError("field number 0")
    if wire == _VARINT:
        if _varint(handle.read) is None:
            raise ValueError("truncated")
    elif wire == _BYTES:
        length = _varint(handle.read)
        offset = handle.tell()
        if length is None or offset + length > size:
            raise ValueError("truncated")
        handle.seek(offset + length)
        return offset, length
    elif wire in (_FIXED64, _FIXED32):
        width = 8 if wire == _FIXED64 else 4
        if handle.tell() + width > size:
            raise ValueError("truncated")
        handle.seek(width, os.SEEK_CUR)
    elif wire == _START_GROUP:
        while True:
            key = _varint(handle.read)
            if key is None:
                raise ValueError("truncated group")
            if key & 7 == _END_GROUP:
                if key >> 3 != number:
                    raise ValueError("mismatched group end")
                break
            _skip_field(handle, key >> 3, key & 7, size)
    else:
        raise ValueError(f"wire type {wire}")
    return None


def _fields_of(message: bytes) -> dict[int, bytes]:
    """The length-delimited fields of a small message in memory (the last one of each number wins, as in protobuf)."""
    import io

    stream = io.BytesIO(message)
    out: dict[int, bytes] = {}
    for number, spans in _top_level_fields(stream).items():
        offset, length = spans[-1]
        out[number] = message[offset : offset + length]
    return out


# What vivim-export onnx writes and every consumer (ONNX Runtime backend, parity check) needs to prepare frames.
VIVIM_METADATA_KEYS = ("frames", "img_size", "output_frame", "normalization")


def missing_vivim_metadata(meta: dict[str, str], source: str, remedy: str = "export it with vivim-export onnx") -> None:
    """A one-line VivimError naming `source` unless `meta` holds the keys vivim-export onnx writes: a graph from
    elsewhere would run and draw masks from frames normalised in a way it was never trained on."""
    missing = [key for key in VIVIM_METADATA_KEYS if key not in meta]
    if missing:
        raise VivimError(f"{source}: no Vivim metadata ({', '.join(missing)} missing); {remedy}")
