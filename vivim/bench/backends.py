"""The benchmark rows: each one builds its model/session, measures it with `timing.measure` and returns a `Row`.

Rows are planned first (`plan_rows`) and run one after another in the same process (`run_rows`), so every number
in a table shares the machine state. A row never raises: an unavailable path becomes 'skipped: <reason>', an
error 'failed: <reason>' (out-of-memory reads 'failed: out of memory'). Each row starts from a fresh copy of
the model and frees it before the next row, so peak memory is per row.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from vivim.bench import timing
from vivim.bench.records import Row, failed, one_line, skipped
from vivim.errors import VivimError

# --backends names. 'torch' is FP32 eager (also the reference row), 'torch-graph' is FP16 + CUDA graph.
BACKENDS = ("torch", "torch-fp16", "torch-graph", "ort-cpu", "ort-cuda", "tensorrt")
SCANS = ("reference", "mamba_ssm", "vivim_cuda")
LONG_CLIP_FRAMES = (5, 16, 32, 64, 150)

TORCH_EAGER = "PyTorch eager"
TORCH_GRAPH = "PyTorch CUDA graph"
TORCH_STREAM = "PyTorch streaming"
TORCH_STREAM_GRAPH = "PyTorch streaming CUDA graph"


@dataclass
class BenchSettings:
    """Everything a row needs to know; filled by the CLI."""

    variant: str | None = "tiny"
    checkpoint: str | None = None
    frames: int = 5
    size: int = 256
    batch: int = 1
    device: str = "cpu"
    warmup: int = 10
    iters: int = 100
    max_row_seconds: float | None = 60.0
    output_frame: str | int = "centre"
    fp16_mode: str = "half"  # 'half' (weights and activations in fp16) or 'autocast'
    reference_scan: str = "auto"
    seed: int = 0
    keep_onnx: Path | None = None  # folder to keep exported ONNX files in; None = temporary folder
    video: str | None = None  # source for the pipeline rows
    pipeline_frames: int = 120
    long_iters: int = 10
    engine: Path | None = None  # a prebuilt TensorRT engine to benchmark instead of building one
    trt_plugin: Path | None = None  # plugin library for building/running the engine
    compile: bool = False  # add torch.compile (Inductor) variants of the FP16 CUDA-graph rows


@dataclass
class PlannedRow:
    """A row to run: its label for the progress bar and the function that measures it."""

    label: str
    run: Callable[[], "Row | list[Row]"]


# ------------------------------------------------------------------------------------------------ the model
class ModelSource:
    """Builds fresh CPU copies of the benchmarked model (from a checkpoint or a variant with random weights)."""

    def __init__(self, settings: BenchSettings) -> None:
        self.settings = settings
        self._base: Any = None
        self.metadata: dict[str, Any] = {}

    def base(self) -> Any:
        """The model as loaded/created (CPU, fp32, eval); rows never run it directly, they take copies."""
        if self._base is None:
            import torch

            import vivim

            s = self.settings
            torch.manual_seed(s.seed)
            if s.checkpoint is not None:
                model, metadata = vivim.load_checkpoint(s.checkpoint, map_location="cpu")
                self.metadata = dict(metadata)
            elif s.variant is not None:
                model = vivim.create_model(s.variant, frames=s.frames, img_size=s.size)
            else:
                raise VivimError("give --checkpoint or --variant")
            self._base = model.eval()
        return self._base

    def fresh(self) -> Any:
        """A deep copy of the model for the benchmark's T and size, in eval mode on the CPU (the caller moves it)."""
        return self.for_frames(self.settings.frames)

    def for_frames(self, frames: int) -> Any:
        """The same weights in a model built for clips of `frames` frames (the interleave period is T)."""
        base = self.base()
        config = getattr(base, "config", None)
        if config is None or (config.frames == frames and config.img_size == self.settings.size):
            return copy.deepcopy(base).eval()
        model = type(base)(config.replace(frames=frames, img_size=self.settings.size))
        model.load_state_dict(base.state_dict())
        return model.eval()

    def checkpoint_defaults(self) -> tuple[int | None, int | None]:
        """(frames, size) the checkpoint was trained with, for the CLI's defaults."""
        if self.settings.checkpoint is None:
            return None, None
        base = self.base()
        size = getattr(base, "img_size", None) or self.metadata.get("img_size")
        if isinstance(size, (list, tuple)):
            size = size[0]
        return getattr(base, "frames", None) or self.metadata.get("frames"), size


# ------------------------------------------------------------------------------------------------ helpers
def _torch() -> Any:
    import torch

    return torch


def _dtype(precision: str) -> Any:
    torch = _torch()
    return {"fp32": torch.float32, "fp16": torch.float16}[precision]


def cuda_ready(device: str) -> bool:
    return timing.is_cuda(device) and _torch().cuda.is_available()


def resolve_scan(name: str | None, device: str) -> str:
    """The implementation name a row will run with ('auto' resolves to what dispatch picks on this device)."""
    from vivim.ops import dispatch

    device_type = "cuda" if timing.is_cuda(device) else "cpu"
    if name in (None, "auto"):
        return dispatch.pick(device_type).name
    return name


def scan_unavailable_reason(name: str, device: str) -> str | None:
    """Why a scan implementation cannot run here (None when it can), phrased for a 'skipped:' status."""
    from vivim.ops import dispatch

    device_type = "cuda" if timing.is_cuda(device) else "cpu"
    if name != "reference" and device_type != "cuda":
        return f"{name} scan runs on CUDA only (device is {device})"
    if name == "mamba_ssm" and importlib.util.find_spec("mamba_ssm") is None:
        return "mamba-ssm not installed (pip install mamba-ssm)"
    ok, reason = dispatch.is_available(name, device_type)
    if ok:
        return None
    if name == "vivim_cuda" and reason.startswith("unknown"):
        return "vivim_cuda kernel not built or not registered (see plugins/selective_scan)"
    return reason


@contextlib.contextmanager
def _scan_scope(name: str, device: str) -> Iterator[None]:
    from vivim.ops import dispatch

    device_type = "cuda" if timing.is_cuda(device) else "cpu"
    with dispatch.use_impl(name, device_type):
        yield


def _is_oom(exc: BaseException) -> bool:
    torch = _torch()
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return "out of memory" in text and ("cuda" in text or "alloc" in text)


def _failure_status(exc: BaseException) -> str:
    if _is_oom(exc):
        return failed("out of memory")
    if isinstance(exc, VivimError):
        return failed(str(exc))
    return failed(f"{type(exc).__name__}: {one_line(str(exc))}")


def guarded(row: Row, device: str, body: Callable[[Row], None]) -> Row:
    """Run `body(row)`; turn any exception into the row's failed status and free memory either way."""
    try:
        body(row)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a broken row must not end the benchmark
        row.status = _failure_status(exc)
        row.latency = None
        row.samples_ms = []
    finally:
        timing.release_memory(device)
    return row


def _apply_measurement(row: Row, measurement: timing.Measurement, device: str) -> None:
    row.set_samples(measurement.samples_ms, measurement.host_ms)
    row.warmup = measurement.warmup
    row.iters = measurement.iters
    row.timer = measurement.timer
    row.notes.extend(measurement.notes)
    row.memory_mb = timing.peak_memory_mb(device)
    row.reserved_mb = timing.peak_reserved_mb(device)


def _measure(settings: BenchSettings, fn: Callable[[], Any], *, iters: int | None = None,
             warmup: int | None = None) -> timing.Measurement:
    return timing.measure(fn, device=settings.device, warmup=settings.warmup if warmup is None else warmup,
                          iters=iters or settings.iters, max_seconds=settings.max_row_seconds)


def _to_precision(model: Any, precision: str, settings: BenchSettings) -> tuple[Any, Any]:
    """(model on the device, input dtype) for a precision; autocast keeps fp32 weights and inputs."""
    model = model.to(settings.device)
    if precision == "fp16" and settings.fp16_mode == "half":
        torch = _torch()
        if hasattr(model, "to_inference_dtype"):  # keeps A_log, D and the dt bias fp32, as the scan expects
            return model.to_inference_dtype(torch.float16), torch.float16
        return model.half(), torch.float16
    return model, _dtype("fp32")


@contextlib.contextmanager
def _precision_scope(precision: str, settings: BenchSettings) -> Iterator[None]:
    torch = _torch()
    if precision == "fp16" and settings.fp16_mode == "autocast":
        # No weight-cast cache: CUDA graph capture requires it off, and eager runs then pay the same casts.
        with torch.autocast(device_type="cuda", dtype=torch.float16, cache_enabled=False):
            yield
    else:
        yield


def _clip(settings: BenchSettings, frames: int, dtype: Any) -> Any:
    torch = _torch()
    generator = torch.Generator().manual_seed(settings.seed)
    x = torch.randn(settings.batch, frames, 3, settings.size, settings.size, generator=generator)
    return x.to(device=settings.device, dtype=dtype)


# ------------------------------------------------------------------------------------------- PyTorch rows
def torch_row_unavailable_reason(settings: BenchSettings, *, precision: str, graph: bool, scan: str) -> str | None:
    """Why a PyTorch row cannot run here (FP16 and CUDA graphs need CUDA; the scan must be available), or None."""
    if (graph or precision == "fp16") and not cuda_ready(settings.device):
        return f"CUDA only (device is {settings.device})"
    return scan_unavailable_reason(scan, settings.device)


def _precision_notes(precision: str, settings: BenchSettings) -> list[str]:
    return ["fp16 via torch.autocast (fp32 weights)"] if precision == "fp16" and settings.fp16_mode == "autocast" else []


def torch_clip_row(source: ModelSource, settings: BenchSettings, *, precision: str, graph: bool, scan: str,
                   reference: bool = False, mode: str = "clip", output_frame: str | int | None = None,
                   frames: int | None = None, iters: int | None = None, warmup: int | None = None,
                   compiled: bool = False) -> Row:
    """PyTorch forward of a whole clip (eager or replayed from a CUDA graph) with one scan implementation;
    `compiled` runs it through torch.compile first (Inductor fuses the small ops the graph would replay)."""
    frames = frames or settings.frames
    backend = (TORCH_GRAPH if graph else TORCH_EAGER) + (" compiled" if compiled else "")
    row = Row(backend=backend, precision=precision, mode=mode, scan=scan, frames=frames, size=settings.size,
              batch=settings.batch, output_frame=output_frame, reference=reference)
    reason = torch_row_unavailable_reason(settings, precision=precision, graph=graph, scan=scan)
    if reason is not None:
        row.status = skipped(reason)
        return row
    row.notes.extend(_precision_notes(precision, settings))

    def body(row: Row) -> None:
        torch = _torch()
        timing.reset_peak_memory(settings.device)
        base = source.for_frames(frames)
        model, dtype = _to_precision(base, precision, settings)
        x = _clip(settings, frames, dtype)
        kwargs = {} if output_frame is None else {"output_frame": output_frame}
        forward = _compiled(model, compiled)
        with _scan_scope(scan, settings.device), torch.inference_mode(), _precision_scope(precision, settings):
            if graph:
                static_x = x.clone()
                cuda_graph, _ = timing.capture_cuda_graph(lambda: forward(static_x, **kwargs))

                def step() -> Any:
                    static_x.copy_(x)  # a new clip arrives in the captured input buffer
                    cuda_graph.replay()

            else:

                def step() -> Any:
                    return forward(x, **kwargs)

            _apply_measurement(row, _measure(settings, step, iters=iters, warmup=warmup), settings.device)

    return guarded(row, settings.device, body)


def torch_stream_row(source: ModelSource, settings: BenchSettings, *, precision: str, graph: bool,
                     scan: str, compiled: bool = False) -> Row:
    """Cost per new frame of the streaming path: frame_features(new frame) + forward_from_frame_features(window).

    The per-frame features of the last T frames stay on the device; each step computes the newest frame's
    features once, shifts the window by one and runs the temporal part and the decoder for one output frame.
    """
    backend = (TORCH_STREAM_GRAPH if graph else TORCH_STREAM) + (" compiled" if compiled else "")
    row = Row(backend=backend, precision=precision, mode="stream", scan=scan, frames=settings.frames,
              size=settings.size, batch=settings.batch, output_frame=settings.output_frame)
    reason = torch_row_unavailable_reason(settings, precision=precision, graph=graph, scan=scan)
    if reason is not None:
        row.status = skipped(reason)
        return row
    base = source.base()
    if not (hasattr(base, "frame_features") and hasattr(base, "forward_from_frame_features")):
        row.status = skipped("model has no frame_features/forward_from_frame_features streaming split")
        return row
    row.notes.extend(_precision_notes(precision, settings))

    def body(row: Row) -> None:
        torch = _torch()
        timing.reset_peak_memory(settings.device)
        model, dtype = _to_precision(source.fresh(), precision, settings)
        clip = _clip(settings, settings.frames, dtype)
        new_frame = clip[:, -1].contiguous()  # (B, 3, H, W): the frame that just arrived
        with _scan_scope(scan, settings.device), torch.inference_mode(), _precision_scope(precision, settings):
            window = StreamingWindow(model, clip, settings.output_frame)
            window_step = _compiled(window.step, compiled)
            if graph:
                static_frame = new_frame.clone()
                cuda_graph, _ = timing.capture_cuda_graph(lambda: window_step(static_frame))

                def step() -> Any:
                    static_frame.copy_(new_frame)  # the new frame arrives in the captured input buffer
                    cuda_graph.replay()

            else:

                def step() -> Any:
                    return window_step(new_frame)

            _apply_measurement(row, _measure(settings, step), settings.device)

    return guarded(row, settings.device, body)


def _compiled(fn: Any, enabled: bool) -> Any:
    """torch.compile with static shapes (compiled on the first call, i.e. during warm-up or graph capture)."""
    return _torch().compile(fn, dynamic=False) if enabled else fn


class StreamingWindow:
    """The streaming path with the model's split API: per-frame features of the last T frames stay on the device.

    `step(frame)` computes the new frame's features once (`model.frame_features`), shifts the window by one
    frame in place (so the same buffers serve a CUDA graph) and runs the temporal layers and the decoder for
    one output frame (`model.forward_from_frame_features(..., output_frame)`). The result equals
    `model(clip_with_new_frame, output_frame=output_frame)`.
    """

    def __init__(self, model: Any, clip: Any, output_frame: str | int) -> None:
        self.model = model
        self.output_frame = output_frame
        batch, frames = clip.shape[:2]
        features = model.frame_features(clip.flatten(0, 1))
        self.window = features.reshape(batch, frames, *features.shape[1:]).contiguous()

    def step(self, frame: Any) -> Any:
        newest = self.model.frame_features(frame)
        shifted = self.window[:, 1:].clone()  # a copy first: source and destination overlap
        self.window[:, :-1].copy_(shifted)
        self.window[:, -1].copy_(newest)
        return self.model.forward_from_frame_features(self.window, output_frame=self.output_frame)


# --------------------------------------------------------------------------------------- ONNX Runtime rows
class Artifacts:
    """Files some rows need, made once per run: a checkpoint of the benchmarked weights, ONNX exports per
    precision, a synthetic capture video. They go to --keep-onnx or a temporary folder removed at the end."""

    def __init__(self, source: ModelSource, settings: BenchSettings) -> None:
        self.source = source
        self.settings = settings
        self._paths: dict[str, Path] = {}
        self._errors: dict[str, str] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def folder(self) -> Path:
        if self.settings.keep_onnx is not None:
            self.settings.keep_onnx.mkdir(parents=True, exist_ok=True)
            return self.settings.keep_onnx
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="vivim-bench-")
        return Path(self._tmp.name)

    def _once(self, key: str, make: Callable[[], Path], what: str) -> Path:
        """Make an artifact once; a failure is remembered and re-raised as a one-line VivimError."""
        if key in self._errors:
            raise VivimError(self._errors[key])
        if key not in self._paths:
            try:
                self._paths[key] = make()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - reported in the rows that need it
                self._errors[key] = f"{what} failed: {type(exc).__name__}: {one_line(str(exc))}"
                raise VivimError(self._errors[key]) from exc
        return self._paths[key]

    def checkpoint(self) -> str:
        """--checkpoint, or the variant's random weights saved once (for the exporter and vivim-run)."""
        if self.settings.checkpoint is not None:
            return str(self.settings.checkpoint)

        def make() -> Path:
            import vivim

            target = self.folder() / f"bench_{self.settings.variant}.safetensors"
            vivim.save_checkpoint(self.source.fresh(), target, note="random weights saved by vivim-bench")
            return target

        return str(self._once("checkpoint", make, "saving the benchmark checkpoint"))

    def onnx(self, precision: str) -> Path:
        """The model exported to ONNX (full clip output, like the PyTorch reference row)."""

        def make() -> Path:
            from vivim.export.onnx_export import export_onnx

            s = self.settings
            target = self.folder() / f"vivim_{s.frames}x{s.size}_{precision}.onnx"
            export_onnx(self.checkpoint(), target, fp16=precision == "fp16", frames=s.frames, size=(s.size, s.size),
                        output_frame="all", log=lambda *args, **kwargs: None)
            return target

        return self._once(f"onnx-{precision}", make, f"ONNX export ({precision})")

    def video(self) -> Path:
        """--video, or a synthetic capture-sized clip (content does not change the latency)."""
        if self.settings.video is not None:
            return Path(self.settings.video)
        return self._once("video", lambda: write_synthetic_video(self.folder() / "capture.mp4",
                                                                  self.settings.pipeline_frames,
                                                                  seed=self.settings.seed), "writing the test video")

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


CAPTURE_SHAPE = (480, 640)  # height, width of the synthetic capture frames (VGA, a common HDMI-grabber mode)


def write_synthetic_video(path: Path, frames: int, *, fps: float = 30.0, seed: int = 0,
                          shape: tuple[int, int] = CAPTURE_SHAPE) -> Path:
    """An mp4 of speckle-like noise with a moving dark ellipse: cheap to make, exercises decode and resize."""
    import cv2
    import numpy as np

    height, width = shape
    rng = np.random.default_rng(seed)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise VivimError(f"{path}: OpenCV cannot write mp4 here (no mp4v encoder)")
    try:
        for k in range(frames):
            grey = rng.rayleigh(40.0, size=(height, width)).clip(0, 255).astype(np.uint8)
            centre = (int(width * (0.3 + 0.4 * k / max(frames - 1, 1))), height // 2)
            cv2.ellipse(grey, centre, (width // 10, height // 12), 0, 0, 360, 10, -1)
            writer.write(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    finally:
        writer.release()
    os.replace(tmp, path)
    return path


def onnx_unavailable_reason() -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime not installed (pip install onnxruntime or onnxruntime-gpu)"
    # The scan node runs as an onnxruntime-extensions Python op; onnxscript drives torch's ONNX exporter.
    for module, package in (("onnxruntime_extensions", "onnxruntime-extensions"), ("onnxscript", "onnxscript"),
                            ("onnx", "onnx")):
        if importlib.util.find_spec(module) is None:
            return f"{package} not installed (pip install {package})"
    for module in ("vivim.export.onnx_export", "vivim.export.ort_ops"):
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - reported as the skip reason
            return f"{module} not importable ({type(exc).__name__}: {one_line(str(exc))})"
    return None


def ort_row(artifacts: Artifacts, settings: BenchSettings, *, provider: str, precision: str) -> Row:
    """ONNX Runtime session over the exported model (the scan node runs through vivim.export.ort_ops)."""
    short = "CPU" if provider == "CPUExecutionProvider" else provider.replace("ExecutionProvider", "")
    row = Row(backend=f"ONNX Runtime {short}", precision=precision, mode="clip", scan="onnx-custom-op",
              frames=settings.frames, size=settings.size, batch=settings.batch)
    reason = onnx_unavailable_reason()
    if reason is not None:
        row.status = skipped(reason)
        return row
    import onnxruntime

    if provider not in onnxruntime.get_available_providers():
        row.status = skipped(f"{provider} not available in this onnxruntime build")
        return row
    if precision == "fp16" and provider == "CPUExecutionProvider":
        row.status = skipped("FP16 is not a CPU provider precision")
        return row

    def body(row: Row) -> None:
        import numpy as np

        from vivim.export.ort_ops import create_session

        path = artifacts.onnx(precision)
        providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
        session = create_session(str(path), providers)
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise VivimError(f"{path}: expected one input, found {len(inputs)}")
        np_dtype = np.float16 if "float16" in inputs[0].type else np.float32
        rng = np.random.default_rng(settings.seed)
        x = rng.standard_normal((settings.batch, settings.frames, 3, settings.size, settings.size)).astype(np_dtype)
        feed = {inputs[0].name: x}
        row.notes.append("host latency: includes host<->device copies" if provider != "CPUExecutionProvider"
                         else "ONNX Runtime CPU, synchronous")
        # ORT runs synchronously on the host: wall-clock timing is the right timer (device='cpu').
        measurement = timing.measure(lambda: session.run(None, feed), device="cpu", warmup=settings.warmup,
                                     iters=settings.iters, max_seconds=settings.max_row_seconds)
        row.set_samples(measurement.samples_ms, measurement.host_ms)
        row.warmup, row.iters, row.timer = measurement.warmup, measurement.iters, measurement.timer
        row.notes.extend(measurement.notes)

    return guarded(row, settings.device, body)


# ------------------------------------------------------------------------------------------- TensorRT row
def tensorrt_unavailable_reason() -> str | None:
    try:
        tensorrt_build = importlib.import_module("vivim.export.tensorrt_build")
    except Exception as exc:  # noqa: BLE001
        return f"vivim.export.tensorrt_build not importable ({type(exc).__name__}: {one_line(str(exc))})"
    if tensorrt_build.import_tensorrt() is None:
        return "TensorRT not installed"
    return None


DEFAULT_TRT_PLUGIN = Path("vivim_plugin") / "libvivim_trt_plugin.so"  # where `vivim-export plugin` puts it


def tensorrt_rows(artifacts: Artifacts, settings: BenchSettings) -> list[Row]:
    """TensorRT FP16 engine (built here from the FP16 ONNX with our plugin, or --engine) run through the runtime's
    TensorRTBackend: 'clip' = one engine call on a clip already on the GPU (T device copies, engine, logits to
    host); 'stream' = per new frame as vivim-run does it (resize + normalise + upload, then the clip call)."""
    rows = [Row(backend="TensorRT", precision="fp16", mode=mode, scan="vivim-plugin", frames=settings.frames,
                size=settings.size, batch=1, output_frame=settings.output_frame if mode == "stream" else None)
            for mode in ("clip", "stream")]
    reason = tensorrt_unavailable_reason()
    if reason is None and not cuda_ready(settings.device):
        reason = f"CUDA only (device is {settings.device})"
    if reason is None:
        try:
            from vivim.runtime.backend_trt import TensorRTBackend
        except Exception as exc:  # noqa: BLE001
            reason = f"vivim.runtime.backend_trt not importable ({type(exc).__name__}: {one_line(str(exc))})"
    plugin = settings.trt_plugin or DEFAULT_TRT_PLUGIN
    if reason is None and settings.engine is None and not plugin.is_file():
        reason = (f"TensorRT plugin library {plugin} not found (vivim-export plugin -o {plugin.parent}, "
                  "or pass --trt-plugin / --engine)")
    if reason is not None:
        for row in rows:
            row.status = skipped(reason)
        return rows
    if settings.batch != 1:
        for row in rows:
            row.status = skipped("the TensorRT engine is built for batch 1")
        return rows

    state: dict[str, Any] = {}

    def engine_path() -> Path:
        if settings.engine is not None:
            return settings.engine
        if "engine" not in state:
            from vivim.export.tensorrt_build import build_engine

            onnx_path = artifacts.onnx("fp16")
            state["engine"] = build_engine(onnx_path, onnx_path.with_suffix(".engine"), plugin, precision="fp16",
                                           rerun="vivim-bench --backends tensorrt")
        return Path(state["engine"])

    def body(row: Row, per_frame: bool) -> None:
        import numpy as np

        from vivim.constants import output_frame_index

        backend = TensorRTBackend(str(engine_path()), device=settings.device,
                                  plugin=str(settings.trt_plugin) if settings.trt_plugin else None, log=_quiet)
        try:
            frame = np.random.default_rng(settings.seed).integers(0, 256, size=(*CAPTURE_SHAPE, 3), dtype=np.uint8)
            backend.prepare(frame.shape)
            index = output_frame_index(settings.output_frame, backend.frames)
            clip = [backend.preprocess(frame) for _ in range(backend.frames)]

            if per_frame:
                def step() -> Any:
                    clip.append(backend.preprocess(frame))
                    del clip[0]
                    return backend.infer(clip, index)
            else:
                def step() -> Any:
                    return backend.infer(clip, index)

            # infer() synchronises its stream: host wall clock is the latency (TensorRT memory is not torch's).
            measurement = timing.measure(step, device="cpu", warmup=settings.warmup, iters=settings.iters,
                                         max_seconds=settings.max_row_seconds)
            row.set_samples(measurement.samples_ms, measurement.host_ms)
            row.warmup, row.iters, row.timer = measurement.warmup, measurement.iters, "perf_counter (stream synced)"
            row.notes.extend(measurement.notes)
            row.notes.append(f"engine {engine_path().name}, TensorRT {backend.trt_version}")
        finally:
            backend.close()

    return [guarded(rows[0], settings.device, functools.partial(body, per_frame=False)),
            guarded(rows[1], settings.device, functools.partial(body, per_frame=True))]


# ------------------------------------------------------------------------------------------- runtime rows
RUNTIME_STREAM = "vivim-run TorchBackend"
RUNTIME_PIPELINE = "vivim-run pipeline"


def _quiet(*args: Any, **kwargs: Any) -> None:
    return None


def _runtime_output_frame(output_frame: str | int, frames: int) -> str | None:
    """vivim-run takes 'centre' or 'newest' only; map an index onto them when it is one of the two."""
    from vivim.constants import output_frame_index

    if isinstance(output_frame, str):
        return output_frame
    index = output_frame_index(output_frame, frames)
    return {frames - 1: "newest", frames // 2: "centre"}.get(index)


def runtime_stream_row(source: ModelSource, settings: BenchSettings, *, precision: str, graph: bool, scan: str,
                       cache: bool = True) -> Row:
    """Per-new-frame cost through the runtime's PyTorch backend, as vivim-run drives it: preprocess (resize,
    upload, normalise and, with the cache, the frame's features) then infer (temporal part and decoder for the
    output frame, mask logits copied to the host). cache=False recomputes the whole clip for each frame."""
    row = Row(backend=RUNTIME_STREAM + (" CUDA graph" if graph else ""), precision=precision,
              mode="stream" if cache else "recompute", scan=scan, frames=settings.frames, size=settings.size,
              batch=1, output_frame=settings.output_frame)
    reason = torch_row_unavailable_reason(settings, precision=precision, graph=graph, scan=scan)
    if reason is None and importlib.util.find_spec("cv2") is None:
        reason = "OpenCV not installed (the runtime resizes frames with it: pip install opencv-python-headless)"
    if reason is None:
        try:
            from vivim.runtime.backend_torch import TorchBackend
        except Exception as exc:  # noqa: BLE001
            reason = f"vivim.runtime.backend_torch not importable ({type(exc).__name__}: {one_line(str(exc))})"
    if reason is not None:
        row.status = skipped(reason)
        return row

    def body(row: Row) -> None:
        import numpy as np

        from vivim.constants import output_frame_index

        timing.reset_peak_memory(settings.device)
        frame = np.random.default_rng(settings.seed).integers(0, 256, size=(*CAPTURE_SHAPE, 3), dtype=np.uint8)
        index = output_frame_index(settings.output_frame, settings.frames)
        with _scan_scope(scan, settings.device):
            backend = TorchBackend(source.fresh(), device=settings.device, fp16=precision == "fp16",
                                   cuda_graph=graph, stream_cache=cache, log=_quiet)
            try:
                backend.prepare(frame.shape)
                if graph and not backend.cuda_graph:
                    raise VivimError("the runtime's CUDA graph capture failed and it fell back to eager")
                ring = [backend.preprocess(frame) for _ in range(settings.frames)]

                def step() -> Any:
                    ring.append(backend.preprocess(frame))
                    del ring[0]
                    return backend.infer(ring, index)

                _apply_measurement(row, _measure(settings, step), settings.device)
            finally:
                backend.close()
        row.notes.append(f"per new {CAPTURE_SHAPE[1]}x{CAPTURE_SHAPE[0]} BGR frame: preprocess + infer, "
                         "mask logits to host")

    return guarded(row, settings.device, body)


def pipeline_rows(artifacts: Artifacts, settings: BenchSettings, *, scan: str) -> list[Row]:
    """Capture-to-mask latency through vivim-run's whole pipeline on a video file: paced at the file's frame rate
    (real time, a live source that drops frames when the model is slow) and as fast as possible."""
    cuda = cuda_ready(settings.device)
    rows = []
    for mode in ("pipeline-realtime", "pipeline-fast"):
        row = Row(backend=RUNTIME_PIPELINE + (" CUDA graph" if cuda else ""), precision="fp16" if cuda else "fp32",
                  mode=mode, scan=scan, frames=settings.frames, size=settings.size, batch=1,
                  output_frame=settings.output_frame)
        reason = _pipeline_unavailable_reason(settings) or scan_unavailable_reason(scan, settings.device)
        if reason is not None:
            row.status = skipped(reason)
        else:
            row = guarded(row, settings.device, functools.partial(
                _run_pipeline, artifacts=artifacts, settings=settings, scan=scan, realtime=mode == "pipeline-realtime"))
        rows.append(row)
    return rows


def _pipeline_unavailable_reason(settings: BenchSettings) -> str | None:
    try:
        runtime = importlib.import_module("vivim.runtime")
        runtime.run  # noqa: B018 - lazy attributes: touching them imports the pipeline
        runtime.RunConfig  # noqa: B018
    except Exception as exc:  # noqa: BLE001
        return f"vivim.runtime has no programmatic run entry ({type(exc).__name__}: {one_line(str(exc))})"
    if importlib.util.find_spec("cv2") is None:
        return "OpenCV not installed (pip install opencv-python-headless)"
    if _runtime_output_frame(settings.output_frame, settings.frames) is None:
        return "vivim-run takes --output-frame centre or newest only"
    return None


def _run_pipeline(row: Row, artifacts: Artifacts, settings: BenchSettings, *, scan: str, realtime: bool) -> None:
    from vivim.bench.stats import LatencyStats
    from vivim.runtime import RunConfig, run

    cuda = cuda_ready(settings.device)
    video = artifacts.video()
    stats_path = artifacts.folder() / f"pipeline_{'realtime' if realtime else 'fast'}.json"
    config = RunConfig.build(overrides={
        "source": {"kind": "video", "location": str(video), "realtime": realtime,
                   "max_frames": settings.pipeline_frames},
        "backend": {"kind": "checkpoint", "model": artifacts.checkpoint(), "device": settings.device,
                    "fp16": cuda, "cuda_graph": cuda, "stream_cache": True,
                    "output_frame": _runtime_output_frame(settings.output_frame, settings.frames)},
        "sink": {"headless": True, "quiet": True, "stats": str(stats_path)},
    })
    timing.reset_peak_memory(settings.device)
    with _scan_scope(scan, settings.device):
        summary = run(config, log=_quiet, out=_quiet)
    latency = summary.get("latency_ms") or {}
    if not summary.get("frames_processed") or latency.get("mean") is None:
        raise VivimError(f"vivim-run processed no frames of {video}")
    row.latency = LatencyStats(**{k: latency[k] for k in ("mean", "p50", "p90", "p95", "p99", "max", "min", "std",
                                                          "n")})
    row.throughput_fps = summary.get("fps")
    row.iters = summary.get("frames_processed")
    row.timer = "capture timestamp -> mask drawn (monotonic)"
    row.memory_mb = timing.peak_memory_mb(settings.device)
    row.reserved_mb = timing.peak_reserved_mb(settings.device)
    model_ms = (summary.get("infer_ms") or {}).get("p50")
    row.notes.append(f"frames captured {summary.get('frames_captured')}, processed {summary.get('frames_processed')}, "
                     f"dropped {summary.get('frames_dropped')}; model call p50 {model_ms} ms; "
                     f"lag {summary.get('lag_frames')} frames; fps = measured throughput")
    if row.scan in (None, "auto") or summary.get("scan_impl"):
        row.scan = summary.get("scan_impl", row.scan)


# ------------------------------------------------------------------------------------------------ planning
def parse_list(text: str, allowed: Sequence[str], flag: str) -> list[str]:
    """'all' or a comma list of known names (order kept, duplicates dropped)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names or names == ["all"]:
        return list(allowed)
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise VivimError(f"{flag}: unknown name(s) {', '.join(unknown)} (choose from {', '.join(allowed)} or all)")
    return list(dict.fromkeys(names))


def parse_frames_list(text: str, flag: str = "--long-frames") -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise VivimError(f"{flag}: expected a comma list of frame counts like 5,16,32, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise VivimError(f"{flag}: frame counts must be positive integers, got {text!r}")
    return values


@dataclass
class Plan:
    rows: list[PlannedRow] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    reference_scan: str = "reference"


def plan_rows(settings: BenchSettings, *, backends: Sequence[str], scans: Sequence[str], streaming: bool = False,
              long_clips: Sequence[int] = (), long_precisions: Sequence[str] = ("fp32",),
              stream_scan: str = "auto", source: ModelSource | None = None) -> Plan:
    """The ordered rows of one run. The FP32 eager reference row always comes first (speed-ups need it)."""
    source = source or ModelSource(settings)
    plan = Plan()
    artifacts = Artifacts(source, settings)
    plan.cleanups.append(artifacts.close)
    cuda = cuda_ready(settings.device)
    reference_scan = resolve_scan(
        settings.reference_scan if settings.reference_scan != "auto" else _default_reference_scan(settings.device),
        settings.device)
    plan.reference_scan = reference_scan

    def add(label: str, fn: Callable[..., "Row | list[Row]"], *args: Any, **kwargs: Any) -> None:
        # functools.partial binds the arguments now (a lambda in a loop would see the loop's last values).
        plan.rows.append(PlannedRow(label, functools.partial(fn, *args, **kwargs)))

    add(f"{TORCH_EAGER} fp32 [{reference_scan}] (reference)", torch_clip_row, source, settings, precision="fp32",
        graph=False, scan=reference_scan, reference=True)
    for backend in backends:
        if backend in ("torch", "torch-fp16", "torch-graph"):
            precision = "fp32" if backend == "torch" else "fp16"
            graph = backend == "torch-graph"
            if precision == "fp16" and not cuda:
                # One row says why, rather than one per scan implementation.
                add(backend, torch_clip_row, source, settings, precision=precision, graph=graph, scan="-")
                continue
            for scan in scans:
                if backend == "torch" and scan == reference_scan:
                    continue  # that is the reference row
                add(f"{backend} [{scan}]", torch_clip_row, source, settings, precision=precision, graph=graph,
                    scan=scan)
        elif backend == "ort-cpu":
            add("ort-cpu fp32", ort_row, artifacts, settings, provider="CPUExecutionProvider", precision="fp32")
        elif backend == "ort-cuda":
            for precision in ("fp32", "fp16"):
                add(f"ort-cuda {precision}", ort_row, artifacts, settings, provider="CUDAExecutionProvider",
                    precision=precision)
        elif backend == "tensorrt":
            add("tensorrt fp16", tensorrt_rows, artifacts, settings)

    best_scan = resolve_scan(stream_scan, settings.device)
    variants = [("fp32", False), ("fp16", False), ("fp16", True)]
    if streaming:
        for precision, graph in variants:
            tag = f"{precision}{' graph' if graph else ''} [{best_scan}]"
            add(f"recompute {tag}", torch_clip_row, source, settings, precision=precision, graph=graph,
                scan=best_scan, mode="recompute", output_frame=settings.output_frame)
            add(f"stream {tag}", torch_stream_row, source, settings, precision=precision, graph=graph,
                scan=best_scan)
        if settings.compile and cuda:
            tag = f"fp16 graph compiled [{best_scan}]"
            add(f"recompute {tag}", torch_clip_row, source, settings, precision="fp16", graph=True,
                scan=best_scan, mode="recompute", output_frame=settings.output_frame, compiled=True)
            add(f"stream {tag}", torch_stream_row, source, settings, precision="fp16", graph=True,
                scan=best_scan, compiled=True)
        for precision, graph in variants:
            for cache in (False, True):
                add(f"vivim-run backend {'stream' if cache else 'recompute'} {precision}{' graph' if graph else ''}",
                    runtime_stream_row, source, settings, precision=precision, graph=graph, scan=best_scan,
                    cache=cache)
        add("vivim-run pipeline", pipeline_rows, artifacts, settings, scan=best_scan)

    for precision in long_precisions:
        for frames in long_clips:
            add(f"long clip T={frames} {precision} [{best_scan}]", torch_clip_row, source, settings,
                precision=precision, graph=False, scan=best_scan, mode="long-clip", frames=frames,
                iters=settings.long_iters, warmup=min(settings.warmup, 2))
    return plan


def _default_reference_scan(device: str) -> str:
    """The 'PyTorch model' reference: mamba-ssm's kernels on CUDA when installed (how upstream Vivim runs), else
    whatever the dispatcher picks on this device."""
    if timing.is_cuda(device) and scan_unavailable_reason("mamba_ssm", device) is None:
        return "mamba_ssm"
    return "auto"


def run_rows(plan: Plan, *, progress: bool = True, on_row: Callable[[Row], None] | None = None) -> list[Row]:
    """Run the planned rows in order (one process, one device) with a progress bar; always runs the cleanups."""
    from tqdm import tqdm

    rows: list[Row] = []
    try:
        with tqdm(plan.rows, desc="vivim-bench", unit="row", disable=not progress, leave=False) as bar:
            for planned in bar:
                bar.set_postfix_str(planned.label[:40])
                produced = planned.run()
                for row in produced if isinstance(produced, list) else [produced]:
                    rows.append(row)
                    if on_row is not None:
                        on_row(row)
    finally:
        for cleanup in plan.cleanups:
            cleanup()
    return rows
