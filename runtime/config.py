"""Run configuration: one dataclass per pipeline stage, filled from defaults <- YAML file <- command-line flags.

The YAML file mirrors Holoscan apps: one top-level section per stage (`source`, `preprocess`, `backend`,
`overlay`, `sink`), keys = the stage's fields below. A flag given on the command line always wins.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional

from vivim import paths
from vivim.constants import RESIZE_FILTERS, parse_output_frame
from vivim.devices import parse_device
from vivim.errors import VivimError

SOURCE_KINDS = ("camera", "video", "frames", "gst")
MODEL_KINDS = ("checkpoint", "onnx", "engine")


@dataclass
class SourceConfig:
    kind: Optional[str] = None  # camera | video | frames | gst
    location: Optional[str] = None  # device path/index, file, folder or GStreamer pipeline
    loop: bool = False  # files/folders: start again at the end
    realtime: bool = False  # files/folders: pace at the file's frame rate and behave like a live source
    fps: Optional[float] = None  # camera: requested rate; files/folders: play (--realtime) and save rate
    width: Optional[int] = None  # camera: requested frame size
    height: Optional[int] = None
    fourcc: Optional[str] = None  # camera: pixel format, e.g. MJPG or YUYV (set before size and rate)
    buffer_size: int = 1  # camera: driver buffers; 1 keeps the newest frame closest to the sensor
    max_frames: Optional[int] = None  # stop after this many captured frames (each gets a mask unless --realtime drops it)
    reconnect_attempts: int = 10  # live sources: reopen a lost device this many times before giving up
    reconnect_delay: float = 0.5  # first back-off in seconds, doubled after each failed attempt
    reconnect_max_delay: float = 5.0


@dataclass
class PreprocessConfig:
    interpolation: str = "model"  # model | area | linear: resize filter for the model input (model = the one it
    # was trained with, from its checkpoint, ONNX or engine metadata)


@dataclass
class BackendConfig:
    kind: Optional[str] = None  # checkpoint | onnx | engine
    model: Optional[str] = None  # checkpoint path or 'demo', .onnx file or .engine file
    device: str = "auto"  # auto | cpu | cuda (auto = cuda when available)
    fp16: bool = False  # PyTorch backend on CUDA
    cuda_graph: Optional[bool] = None  # PyTorch backend: replay CUDA graphs of both network parts (None: on for CUDA)
    compile: bool = False  # PyTorch backend: torch.compile (Inductor) both network parts before capturing/running
    stream_cache: bool = True  # PyTorch backend: per-frame features computed once and kept in the ring
    threads: Optional[int] = None  # PyTorch or ONNX Runtime on the CPU: intra-op threads (default: the runtime's)
    plugin: Optional[str] = None  # TensorRT plugin library (default: ./vivim_plugin/, else the engine's folder)
    # centre (T-1-T//2 frames lag, the paper's protocol) | newest (no lag); None: the one the model was trained for
    # (its metadata), else centre
    output_frame: Optional[str] = None
    threshold: float = 0.5  # mask = sigmoid(logits) > threshold


@dataclass
class OverlayConfig:
    alpha: float = 0.45  # opacity of the filled mask
    contour: bool = True  # draw the mask outline
    contour_thickness: int = 2
    color: str = "0,255,0"  # mask colour as R,G,B, #RRGGBB or a name (green, red, yellow, cyan, magenta, blue)
    hud: bool = True  # FPS / latency text in the corner


@dataclass
class SinkConfig:
    show: Optional[bool] = None  # window; None = automatic (shown when there is a display and OpenCV has a GUI)
    headless: bool = False  # never open a window
    save: Optional[str] = None  # overlay video (.mp4)
    save_fps: Optional[float] = None  # default: the source's frame rate
    save_masks: Optional[str] = None  # folder of binary mask PNGs, one per processed frame
    stats: Optional[str] = None  # summary JSON
    strip: Optional[str] = None  # PNG strip of frames with their masks
    strip_frames: int = 6
    quiet: bool = False


@dataclass
class RunConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @classmethod
    def build(
        cls, config_file: Optional[str] = None, overrides: Optional[Mapping[str, Mapping[str, Any]]] = None
    ) -> "RunConfig":
        """Defaults, then the YAML file's sections, then every override that is not None. A flag naming another kind
        of input than the file's (--video with a file for a camera) replaces the file's whole source section: its
        camera's fps, size and pixel format belong to that camera, not to the video."""
        config = cls()
        if config_file is not None:
            for section, values in load_yaml(config_file).items():
                _apply(config, section, values, origin=f"--config {config_file}")
        kind = (overrides or {}).get("source", {}).get("kind")
        if kind is not None and _kind_of_source(config.source) not in (None, kind):
            config.source = SourceConfig()
        model_kind = (overrides or {}).get("backend", {}).get("kind")
        if model_kind is not None and model_kind != "engine" and _kind_of_model(config.backend) == "engine":
            config.backend.plugin = None  # the file's engine's plugin library, not the flag's model's
        sink_flags = (overrides or {}).get("sink", {})
        if sink_flags.get("headless"):  # a flag wins over the file's window: --headless on a server
            config.sink.show = None
        if sink_flags.get("show"):
            config.sink.headless = False
        for section, flags in (overrides or {}).items():
            _apply(config, section, {k: v for k, v in flags.items() if v is not None}, origin="flags")
        config.validate()
        return config

    def validate(self) -> None:
        s, b, o = self.source, self.backend, self.overlay
        if s.kind is None and s.location is not None:  # a config file may name the input alone
            s.kind = _source_kind(str(s.location))
        if b.kind is None and b.model is not None:
            b.kind = _model_kind(str(b.model))
        if s.kind is None or s.location is None:
            raise VivimError("no input: give one of --camera DEV, --video FILE, --frames DIR, --gst PIPELINE")
        if s.kind not in SOURCE_KINDS:
            raise VivimError(f"source.kind must be one of {', '.join(SOURCE_KINDS)}, got {s.kind!r}")
        if b.kind is None or b.model is None:
            raise VivimError("no model: give one of --checkpoint CKPT (or 'demo'), --onnx M.onnx, --engine M.engine")
        if b.kind not in MODEL_KINDS:
            raise VivimError(f"backend.kind must be one of {', '.join(MODEL_KINDS)}, got {b.kind!r}")
        parse_device(b.device)
        if b.output_frame is not None:
            b.output_frame = str(parse_output_frame(b.output_frame))
        if self.sink.show and self.sink.headless:
            raise VivimError("--show opens a window and --headless never does; give one of them")
        if not 0.0 <= o.alpha <= 1.0:
            raise VivimError(f"--alpha must be within [0, 1], got {o.alpha}")
        if o.contour_thickness < 1:
            raise VivimError(f"overlay.contour_thickness must be at least 1 pixel, got {o.contour_thickness}")
        if b.threads is not None and b.threads < 1:
            raise VivimError(f"--threads must be at least 1, got {b.threads}")
        for flag, count in (("--max-frames", s.max_frames), ("--width", s.width), ("--height", s.height),
                            ("--buffer-size", s.buffer_size)):
            if count is not None and count < 1:
                raise VivimError(f"{flag} must be at least 1, got {count}")
        if s.fps is not None and not 0 < s.fps < float("inf"):
            raise VivimError(f"--fps must be a positive number of frames per second, got {s.fps}")
        if s.reconnect_attempts < 0:
            raise VivimError(f"--reconnect-attempts must be 0 or more, got {s.reconnect_attempts}")
        if not 0 < s.reconnect_delay <= s.reconnect_max_delay < float("inf"):
            raise VivimError("source.reconnect_delay and source.reconnect_max_delay must be positive seconds, the "
                             f"first no larger than the second, got {s.reconnect_delay} and {s.reconnect_max_delay}")
        if self.sink.strip_frames < 1:
            raise VivimError(f"sink.strip_frames must be at least 1, got {self.sink.strip_frames}")
        if self.sink.save_fps is not None and not 0 < self.sink.save_fps < float("inf"):
            raise VivimError(f"sink.save_fps must be a positive number of frames per second, got {self.sink.save_fps}")
        if self.sink.save is not None and not self.sink.save.lower().endswith((".mp4", ".avi", ".mkv")):
            raise VivimError(f"--save {self.sink.save}: use a .mp4 (or .avi/.mkv) file name")
        if self.preprocess.interpolation not in ("model", *RESIZE_FILTERS):
            raise VivimError(
                f"preprocess.interpolation must be 'model', 'area' or 'linear', got {self.preprocess.interpolation!r}"
            )


    def ignored_flags(self) -> List[str]:
        """Warnings for flags that the chosen input or model does not use: silently ignoring them would leave a user
        believing they took effect (camera settings on a file, a plugin for a PyTorch model)."""
        s, b = self.source, self.backend
        notes = []
        if s.kind != "camera":
            camera_only = [flag for flag, value in (("--width", s.width), ("--height", s.height),
                                                    ("--fourcc", s.fourcc), ("--buffer-size", s.buffer_size != 1))
                           if value]
            if camera_only:
                notes.append(f"{', '.join(camera_only)} set(s) the camera's capture mode; ignored for --{s.kind}")
        if s.kind in ("camera", "gst") and (s.loop or s.realtime):
            flags = ", ".join(flag for flag, on in (("--loop", s.loop), ("--realtime", s.realtime)) if on)
            notes.append(f"{flags} applies to files and folders; --{s.kind} is live already; ignored")
        if s.kind in ("video", "frames") and s.reconnect_attempts != SourceConfig.reconnect_attempts:
            notes.append(f"--reconnect-attempts reopens a lost live source; ignored for --{s.kind}")
        if b.plugin and b.kind != "engine":
            notes.append("--plugin is the TensorRT plugin library of an --engine; ignored")
        return notes


def _kind_of_source(source: "SourceConfig") -> Optional[str]:
    """A source section's kind, as given or guessed from its location (a file may give the location alone)."""
    return source.kind or (_source_kind(str(source.location)) if source.location is not None else None)


def _kind_of_model(backend: "BackendConfig") -> Optional[str]:
    return backend.kind or (_model_kind(str(backend.model)) if backend.model is not None else None)


def _source_kind(location: str) -> str:
    """The kind of input a location names, for a config file that gives source.location without source.kind."""
    if os.path.isdir(location):
        return "frames"
    if location.isdigit() or location.startswith("/dev/"):
        return "camera"
    if "!" in location and not os.path.exists(location):  # GStreamer elements are linked with '!'
        return "gst"
    return "video"


def _model_kind(model: str) -> str:
    """The kind of model a file names (by its extension): .onnx, .engine / .plan / .trt, else a checkpoint or 'demo'."""
    suffix = os.path.splitext(model)[1].lower()
    return {".onnx": "onnx", ".engine": "engine", ".plan": "engine", ".trt": "engine"}.get(suffix, "checkpoint")


def load_yaml(path: str) -> dict[str, dict[str, Any]]:
    """Read a run config file; every top-level key must name a stage and hold a mapping."""
    import yaml  # optional dependency, only needed with --config

    data: Any
    paths.require_file(path, "--config")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except UnicodeDecodeError:
        raise VivimError(f"--config {path}: not a text file (expected YAML)") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise VivimError(f"--config {path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise VivimError(f"--config {path}: expected sections {', '.join(_SECTIONS)} at the top level")
    for section, values in data.items():
        if section not in _SECTIONS:
            raise VivimError(f"--config {path}: unknown section {section!r} (expected {', '.join(_SECTIONS)})")
        if values is not None and not isinstance(values, dict):
            raise VivimError(f"--config {path}: section {section!r} must be a mapping of keys to values")
    return {k: (v or {}) for k, v in data.items()}


_SECTIONS = ("source", "preprocess", "backend", "overlay", "sink")


def _apply(config: RunConfig, section: str, values: Mapping[str, Any], origin: str) -> None:
    if section not in _SECTIONS:
        raise VivimError(f"{origin}: unknown section {section!r} (expected {', '.join(_SECTIONS)})")
    target = getattr(config, section)
    declared = typing.get_type_hints(type(target))
    for key, value in values.items():
        if key not in declared:
            raise VivimError(f"{origin}: unknown key {section}.{key} (known: {', '.join(declared)})")
        setattr(target, key, _coerce(value, declared[key], f"{origin}: {section}.{key}"))


def _coerce(value: Any, declared: Any, where: str) -> Any:
    """Keep YAML types honest, by the field's declared type (not the value a file set before: a flag may follow
    a YAML camera index with a file name): a bool field gets a bool, a number field a number, a text field text."""
    args = typing.get_args(declared)
    if value is None:  # `key:` with nothing after it: only an optional field may be empty
        if type(None) in args:
            return None
        raise VivimError(f"{where} needs a value")
    options = [t for t in args if t is not type(None)] or [declared]  # Optional[X] -> X
    kind = options[0]
    if kind is bool:
        if not isinstance(value, bool):
            raise VivimError(f"{where} must be true or false, got {value!r}")
        return value
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise VivimError(f"{where} must be a number, got {value!r}")
        if kind is int and not (math.isfinite(value) and value == int(value)):
            raise VivimError(f"{where} must be a whole number, got {value!r}")
        return kind(value)
    if isinstance(value, (dict, list)):
        raise VivimError(f"{where} must be a single value, got {type(value).__name__}")
    return str(value) if isinstance(value, (int, float)) else value
