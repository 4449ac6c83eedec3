"""Constants shared by training, export and the runtime (no torch import here)."""

import re

# ImageNet normalisation, as in the paper's pre-processing (SegFormer backbone pretrained on ImageNet/ADE20K).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# --seed of every tool: the range NumPy and torch both accept
SEED_MAX = 2**32 - 1

# The most states per channel (d_state, N) the selective-scan CUDA kernel and TensorRT plugin hold.
MAX_SCAN_STATES = 64

# Input sides the network takes: the encoder downsamples 32x (four stages), so a side is a multiple of 32.
SIZE_MULTIPLE = 32


def size_problem(side: object) -> "str | None":
    """Why `side` is not a usable input side (None when it is): the one rule behind vivim-train's, vivim-export's,
    vivim-bench's and the model config's checks."""
    if isinstance(side, bool) or not isinstance(side, int) or side < SIZE_MULTIPLE or side % SIZE_MULTIPLE:
        return f"must be a multiple of {SIZE_MULTIPLE}, at least {SIZE_MULTIPLE} (the encoder downsamples 32x), got {side!r}"
    return None


# An input size: one side N (square) or (height, width). A square size is kept as its int, the form checkpoints
# written before non-square training hold, so square models read and write the same metadata as before.
def image_hw(size: object) -> "tuple[int, int]":
    """(height, width) of an input size given as N or (H, W) (a list from JSON metadata too)."""
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return int(size[0]), int(size[1])
    return int(size), int(size)  # type: ignore[call-overload]


def canonical_size(size: object) -> "int | tuple[int, int]":
    """N for a square size (also given as (N, N) or [N, N]), else (H, W)."""
    height, width = image_hw(size)
    return height if height == width else (height, width)


def image_size_problem(size: object) -> "str | None":
    """Why `size` (N or (H, W)) is not a usable input size, or None."""
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            return f"must be one side N or two sides (H, W), got {size!r}"
        problems = [size_problem(side) for side in size]
        return next((f"each side {p}" for p in problems if p), None)
    return size_problem(size)


def turned_against(size: object, frame_hw: "tuple[int, int]") -> bool:
    """Whether a non-square input size lies the other way round from non-square frames (portrait against landscape):
    each frame would be squeezed to the other aspect, most likely from an HxW given as WxH."""
    (height, width), (frame_h, frame_w) = image_hw(size), frame_hw
    return height != width and frame_h != frame_w and (height > width) != (frame_h > frame_w)


def size_label(size: object) -> str:
    """'256x256' or '256x320' (height x width, as --size takes it)."""
    height, width = image_hw(size)
    return f"{height}x{width}"


def size_argument(size: object) -> str:
    """A size as --size takes it: 'N' when square, else 'HxW'."""
    height, width = image_hw(size)
    return str(height) if height == width else f"{height}x{width}"


def parse_size(text: object, flag: str = "--size") -> "int | tuple[int, int]":
    """A --size flag: 'N' (square) or 'HxW' (also 'H,W'), each side checked; a one-line VivimError naming `flag`."""
    from vivim.errors import VivimError

    match = re.fullmatch(r"([0-9]+)(?:[xX,]([0-9]+))?", str(text).strip())
    if match is None:
        raise VivimError(f"{flag} {text}: give one side N (square) or HxW, e.g. 256 or 256x320")
    height = int(match.group(1))
    size = canonical_size((height, int(match.group(2) or height)))
    problem = image_size_problem(size)
    if problem:
        raise VivimError(f"{flag} {text}: {problem}")
    return size


# Resize filters for frames going into the model. vivim-train resizes with TRAIN_RESIZE and records it in each
# checkpoint ("resize"); export carries it into the ONNX and engine metadata, and vivim-run uses it by default, so a
# model sees the same kind of pixels at run time as in training.
RESIZE_FILTERS = ("area", "linear")
TRAIN_RESIZE = "linear"


def resize_from_metadata(value: object) -> str:
    """The resize filter recorded with a model (checkpoint, ONNX or engine metadata). Models exported before it was
    recorded were trained with the same filter as today ("linear")."""
    return value if isinstance(value, str) and value in RESIZE_FILTERS else TRAIN_RESIZE


def normalization_from_metadata(value: object, source: str) -> "tuple[tuple[float, ...], tuple[float, ...]]":
    """(mean, std) recorded with a model (checkpoint, ONNX or engine metadata: a mapping, or its JSON text);
    ImageNet's where none is recorded. Anything else is a one-line VivimError naming `source`: a damaged value
    must not silently normalise frames differently from training."""
    import json
    import math

    from vivim.errors import VivimError

    if value is None or value == "":
        return IMAGENET_MEAN, IMAGENET_STD
    try:
        norm = json.loads(value) if isinstance(value, str) else value
        mean, std = list(norm["mean"]), list(norm["std"])  # type: ignore[index]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in mean + std)
        valid = numbers and len(mean) == len(std) == 3 and all(math.isfinite(v) for v in mean + std) and min(std) > 0
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        raise VivimError(f"{source}: metadata normalization must hold 3 finite means and 3 positive stds, got {value!r}")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


# Which frame of a T-frame clip a prediction belongs to.
OUTPUT_FRAMES = ("centre", "newest")


def parse_output_frame(text: object, flag: str = "--output-frame", *, extra: "tuple[str, ...]" = (),
                       allow_index: bool = False) -> "str | int":
    """A user's or a file's output-frame text -> 'centre' ('center' accepted), 'newest', one of `extra` (export's
    'all'), or with `allow_index` an integer frame index; anything else is a one-line VivimError naming `flag`."""
    from vivim.errors import VivimError

    value = {"center": "centre"}.get(str(text), str(text))
    if value in OUTPUT_FRAMES or value in extra:
        return value
    if allow_index:
        try:
            return int(value)
        except ValueError:
            pass
    choices = ", ".join((*OUTPUT_FRAMES, *extra)) + (" or a frame index" if allow_index else "")
    raise VivimError(f"{flag} must be {choices}, got {text!r}")


def output_frame_index(output_frame: "str | int", frames: int) -> int:
    """Index of the decoded frame inside a clip of `frames` frames ("centre" = T // 2, "newest" = T - 1)."""
    if isinstance(output_frame, bool):  # True is an int to Python, and would silently mean frame 1
        raise ValueError(f"output frame must be 'centre', 'newest' or an int index, got {output_frame!r}")
    if isinstance(output_frame, int):
        index = output_frame
    elif output_frame in ("centre", "center"):
        index = frames // 2
    elif output_frame == "newest":
        index = frames - 1
    elif isinstance(output_frame, str):  # text comes from a command line or metadata, where indices are not offered
        raise ValueError(f"output frame must be 'centre' or 'newest', got {output_frame!r}")
    else:
        raise ValueError(f"output frame must be 'centre', 'newest' or an int index, got {output_frame!r}")
    if not -frames <= index < frames:
        raise ValueError(f"output frame index {index} is outside a clip of {frames} frames")
    return index % frames


def untrained_output_frame(given: "str | None", trained: "str | None", frames: int, source: str,
                           flag: bool = True) -> "str | None":
    """The warning for an --output-frame the model was not trained to segment (its masks are worse there, e.g. a
    centre-trained model asked for the newest frame of its clip), or None. Index equality: at T = 1 both are frame 0.
    `flag`: the frame came from --output-frame; else it is the one a one-frame exported graph decodes."""
    if given is None or trained is None or given == trained:
        return None
    try:
        if output_frame_index(given, frames) == output_frame_index(trained, frames):
            return None
    except ValueError:
        return None
    if not flag:
        return (f"{source} decodes the {given} frame of its clip, but its model was trained to segment the {trained} "
                f"frame: its masks are less accurate there (export with --output-frame {trained} or all)")
    return (f"{source} was trained to segment the {trained} frame of its clip; --output-frame {given} asks for "
            f"another, where its masks are less accurate (retrain with --output-frame {given} for that)")


def check_output_frame(output_frame: "str | int", frames: int, flag: str = "--output-frame") -> int:
    """output_frame_index for a user's flag: a frame outside the clip is a one-line VivimError naming the flag."""
    from vivim.errors import VivimError

    try:
        return output_frame_index(output_frame, frames)
    except ValueError as exc:
        raise VivimError(f"{flag}: {exc}") from None
