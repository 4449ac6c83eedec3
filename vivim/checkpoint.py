"""Checkpoints: one `.safetensors` file holding the weights, with the model config and metadata as JSON in its header.

Never pickle: safetensors cannot execute code. Writes are atomic (temporary file in the same folder, then rename),
so an interrupted save never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from vivim import __version__
from vivim.atomic import atomic_path
from vivim.constants import (IMAGENET_MEAN, IMAGENET_STD, TRAIN_RESIZE, canonical_size, image_size_problem,
                             normalization_from_metadata)
from vivim.errors import CheckpointError, CheckpointNotFound, VivimError

if TYPE_CHECKING:  # torch stays out of `import vivim.checkpoint` for metadata-only readers
    from vivim.model import VivimModel

FORMAT = "vivim-checkpoint"
FORMAT_VERSION = "1"
DEMO_NAME = "demo"
DEMO_FILE = "demo_tiny.safetensors"
DEMO_CLIP = "demo_clip.mp4"  # a held-out synthetic ultrasound video: an input every printed example can run on

PathLike = Union[str, os.PathLike]


def bundled_asset(name: str) -> str:
    """The path of a file shipped in vivim/assets (DEMO_FILE, DEMO_CLIP)."""
    return str(resources.files("vivim") / "assets" / name)


def checkpoint_file(name: PathLike) -> str:
    """The file a checkpoint argument names: 'demo' is the bundled weights' path, anything else itself."""
    return bundled_asset(DEMO_FILE) if str(name) == DEMO_NAME else str(name)


def resolve_checkpoint(path: PathLike) -> Path:
    """'demo' -> the bundled demo weights; anything else -> that file, which must exist."""
    if str(path) == DEMO_NAME:
        demo = Path(checkpoint_file(DEMO_NAME))
        if not demo.is_file():
            raise CheckpointError(f"the bundled demo weights are missing from the package ({demo})")
        return demo
    p = Path(path)
    if not p.exists():
        raise CheckpointNotFound(f"{p}: checkpoint not found")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a folder, expected a .safetensors checkpoint file")
    return p


def file_sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Files people hand to --checkpoint by mistake, and where each belongs instead.
_OTHER_MODEL_FILES = {".onnx": "an ONNX model: vivim-run takes it with --onnx",
                      ".engine": "a TensorRT engine: vivim-run takes it with --engine",
                      ".plan": "a TensorRT engine: vivim-run takes it with --engine",
                      ".pt": "a PyTorch pickle (vivim-train's resume state is one): checkpoints are .safetensors",
                      ".pth": "a PyTorch pickle: checkpoints are .safetensors"}


def _other_model_hint(path: Path) -> str:
    hint = _OTHER_MODEL_FILES.get(path.suffix.lower())
    return f"; this looks like {hint}" if hint else ""


def read_metadata(path: PathLike) -> dict[str, Any]:
    """The metadata of a checkpoint without loading the weights (plain Python, no torch)."""
    p = resolve_checkpoint(path)
    try:
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("file too short")
            (size,) = struct.unpack("<Q", head)
            if size > 100 * 1024 * 1024 or size > p.stat().st_size - 8:
                raise ValueError("header size out of range")
            header = json.loads(f.read(size))
        raw = header.get("__metadata__", {}) if isinstance(header, dict) else None
        if not isinstance(raw, dict):
            raise ValueError("its header is not a JSON object of tensors and metadata")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{p}: not a safetensors checkpoint ({exc}){_other_model_hint(p)}") from None
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a Vivim checkpoint (no '{FORMAT}' metadata; foreign safetensors file?)")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{p}: checkpoint format version {raw.get('format_version')!r} is not supported "
                              f"(this package reads version {FORMAT_VERSION})")
    try:
        meta = json.loads(raw["vivim"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{p}: damaged checkpoint metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{p}: damaged checkpoint metadata (not a mapping)")
    _check_metadata(p, meta)
    return meta


def _check_metadata(p: Path, meta: dict[str, Any]) -> None:
    """The fields every reader trusts (runtime, export, --init), checked once here: an edited or damaged value
    gives one line naming the file instead of a wrong normalisation or a mislabelled export later."""
    config = meta.get("config")
    if isinstance(config, dict) and "variant" in meta and meta["variant"] != config.get("name"):
        raise CheckpointError(f"{p}: metadata says variant {meta['variant']!r} but its config is {config.get('name')!r}")
    size, config_size = meta.get("img_size"), config.get("img_size") if isinstance(config, dict) else None
    for where, value in (("img_size", size), ("config img_size", config_size)):
        problem = image_size_problem(value) if value is not None else None
        if problem:
            raise CheckpointError(f"{p}: metadata {where} {problem}")
    if size is not None and config_size is not None and canonical_size(size) != canonical_size(config_size):
        raise CheckpointError(f"{p}: metadata says img_size {size!r} but its config is {config_size!r}")
    if isinstance(config, dict) and "frames" in meta and "frames" in config and meta["frames"] != config["frames"]:
        raise CheckpointError(f"{p}: metadata says frames {meta['frames']!r} but its config is {config['frames']!r}")
    if isinstance(meta.get("normalization"), str):  # checkpoints hold a mapping; only ONNX metadata holds text
        raise CheckpointError(f"{p}: metadata normalization must be a mapping, got {meta['normalization']!r}")
    try:
        normalization_from_metadata(meta.get("normalization"), str(p))
    except VivimError as exc:
        raise CheckpointError(str(exc)) from None


def save_checkpoint(model: "VivimModel", path: PathLike, **metadata: Any) -> Path:
    """Write the model's weights, config and `metadata` (JSON-serialisable) to one .safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: its state_dict keys carry a prefix
    config: Any = getattr(model, "config", None)
    if not hasattr(config, "to_dict"):
        raise CheckpointError(f"save_checkpoint takes a Vivim model (vivim.create_model), got {type(model).__name__}")
    own = {"variant": config.name, "frames": config.frames, "img_size": config.img_size, "config": config.to_dict()}
    # a value here contradicting the weights' own config would be trusted by load and export; the same value (a
    # loaded checkpoint's metadata saved again) is simply the model's
    clashing = sorted(key for key in set(metadata) & _FROM_THE_MODEL
                      if key != "package_version" and _json_value(metadata[key]) != _json_value(own[key]))
    if clashing:
        raise CheckpointError(f"save_checkpoint: {', '.join(clashing)} come(s) from the model's config, not from "
                              "metadata (build the model with the values wanted)")
    metadata = _checked_fields({key: value for key, value in metadata.items() if key not in _FROM_THE_MODEL},
                               config.frames)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; give the checkpoint's file name (e.g. {path / 'model.safetensors'})")
    meta = {
        "variant": config.name,
        "frames": config.frames,
        "img_size": config.img_size,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "resize": TRAIN_RESIZE,  # the filter frames were resized with in training; vivim-run uses it by default
        "package_version": __version__,
        **metadata,
        "config": config.to_dict(),
    }
    try:
        header = {"format": FORMAT, "format_version": FORMAT_VERSION, "vivim": json.dumps(meta)}
    except TypeError as exc:
        raise CheckpointError(f"checkpoint metadata is not JSON-serialisable: {exc}") from None
    # fp32 on the CPU, contiguous and unshared: what safetensors stores and every loader expects
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    if path.parent.exists() and not path.parent.is_dir():
        raise CheckpointError(f"{path.parent}: is a file, not a folder (for {path.name})")
    if not path.parent.is_dir():
        raise CheckpointError(f"{path.parent}: output folder does not exist")
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=header)
    return path


def _load_device(map_location: Any) -> Any:
    """load_checkpoint's device: None is the CPU; cpu/cuda/cuda:N/auto checked against what PyTorch sees (a bare
    'cuda' is the current CUDA device, as torch takes it: a DDP rank's after set_device); any other torch device
    type (mps, ...) is passed on as it is."""
    import torch

    from vivim.devices import parse_device, torch_device

    if map_location is None:
        return torch.device("cpu")
    text = str(map_location).strip().lower()
    try:
        parse_device(text)
    except VivimError:  # not one of ours: any device type torch knows (mps, xpu, ...), as torch takes it
        try:
            return torch.device(map_location)
        except (RuntimeError, TypeError):
            raise VivimError(f"load_checkpoint map_location must be a torch device (cpu, cuda, cuda:N, ...), got "
                             f"{map_location!r}") from None
    device = torch_device(text, "load_checkpoint map_location")  # CUDA asked for must be there
    return torch.device("cuda", torch.cuda.current_device()) if text == "cuda" else device


# Metadata save_checkpoint writes from the model itself; a caller's value for one of them is refused.
_FROM_THE_MODEL = frozenset({"variant", "frames", "img_size", "config", "package_version"})


def _json_value(value: Any) -> Any:
    """A value as the checkpoint's JSON holds it (tuples as lists; a size in its one form, N for [N, N]), to
    compare a caller's with the model's."""
    value = json.loads(json.dumps(value))
    if isinstance(value, dict) and "img_size" in value and not image_size_problem(value["img_size"]):
        value["img_size"] = canonical_size(value["img_size"])  # a config
    elif isinstance(value, list) and not image_size_problem(value):
        value = canonical_size(value)  # a size
    return value


def _checked_fields(metadata: dict[str, Any], frames: int) -> dict[str, Any]:
    """The metadata fields readers act on, checked before anything is written (a checkpoint that saves must load);
    returns `metadata` with output_frame in the one spelling every reader knows ('center' -> 'centre')."""
    from vivim.constants import RESIZE_FILTERS, check_output_frame, parse_output_frame

    try:
        if "normalization" in metadata:
            normalization_from_metadata(metadata["normalization"], "save_checkpoint")
            if isinstance(metadata["normalization"], str):
                raise VivimError("save_checkpoint: normalization must be a mapping {'mean': [...], 'std': [...]}")
        if "output_frame" in metadata:
            flag = "save_checkpoint output_frame"
            output_frame = parse_output_frame(metadata["output_frame"], flag)
            check_output_frame(output_frame, frames, flag)
            metadata = {**metadata, "output_frame": output_frame}
    except (VivimError, ValueError) as exc:
        raise CheckpointError(str(exc)) from None
    if "resize" in metadata and metadata["resize"] not in RESIZE_FILTERS:
        raise CheckpointError(f"save_checkpoint: resize must be one of {', '.join(RESIZE_FILTERS)}, got {metadata['resize']!r}")
    return metadata


def load_checkpoint(path: PathLike, map_location: str = "cpu") -> tuple["VivimModel", dict[str, Any]]:
    """Load a checkpoint ('demo' for the bundled demo weights) -> (model in eval mode, metadata)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from vivim.model import VivimConfig, VivimModel

    device = _load_device(map_location)  # before the file: a device it cannot use is not a damaged file
    p = resolve_checkpoint(path)
    metadata = read_metadata(p)
    try:
        config = VivimConfig.from_dict(metadata["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{p}: checkpoint config is invalid ({exc})") from None
    try:
        state = load_file(str(p), device=str(device))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{p}: cannot read the weights (truncated or damaged file?): {exc}") from None
    with torch.random.fork_rng(devices=[]):  # the weights are overwritten: their random init must not use the caller's
        model = VivimModel(config)            # random state (a seeded experiment would draw other numbers after a load)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(f"{label}: {len(keys)} (e.g. {keys[0]})" for label, keys in
                           (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
        raise CheckpointError(f"{p}: weights do not match the '{config.name}' model in its config ({detail})")
    model.load_state_dict(state)
    model.to(device)
    return model.eval(), metadata
