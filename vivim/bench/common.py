"""What every benchmark row shares: the settings, the model source, the scan and precision scopes, and
`guarded`, which turns any failure of a row into its status (a row never raises).

Each row starts from a fresh copy of the model and frees it before the next row, so peak memory is per row.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from vivim.bench import timing
from vivim.bench.records import Row, failed, one_line
from vivim.constants import canonical_size, image_hw
from vivim.errors import VivimError

CAPTURE_SHAPE = (480, 640)  # height, width of the synthetic capture frames (VGA, a common HDMI-grabber mode)


@dataclass
class BenchSettings:
    """Everything a row needs to know; filled by the CLI."""

    variant: str | None = "tiny"
    checkpoint: str | None = None
    frames: int = 5
    size: int | tuple[int, int] = 256  # input side N (square) or (height, width)
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
    threads: int | None = None  # CPU threads of PyTorch (set by the CLI) and of ONNX Runtime's CPU sessions

    @property
    def hw(self) -> tuple[int, int]:
        """(height, width) of the benchmarked input."""
        return image_hw(self.size)


# --------------------------------------------------------------------------------------------- the model
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

    def checkpoint_defaults(self) -> tuple[int | None, int | tuple[int, int] | None]:
        """(frames, size) the checkpoint was trained with, for the CLI's defaults."""
        if self.settings.checkpoint is None:
            return None, None
        base = self.base()
        size = getattr(base, "img_size", None) or self.metadata.get("img_size")
        return getattr(base, "frames", None) or self.metadata.get("frames"), None if size is None else canonical_size(size)


# ------------------------------------------------------------------------------------------------ helpers
def torch_module() -> Any:
    """torch, imported on first use (the CLI's help and planning do not need it)."""
    import torch

    return torch


def dtype_of(precision: str) -> Any:
    torch = torch_module()
    return {"fp32": torch.float32, "fp16": torch.float16}[precision]


def cuda_ready(device: str) -> bool:
    return timing.is_cuda(device) and torch_module().cuda.is_available()


def resolve_scan(name: str | None, device: str) -> str:
    """The implementation name a row will run with ('auto' resolves to what dispatch picks on this device)."""
    from vivim.ops import dispatch

    device_type = "cuda" if timing.is_cuda(device) else "cpu"
    if name in (None, "auto"):
        return dispatch.pick(device_type).name
    return name


def scan_unavailable_reason(name: str, device: str) -> str | None:
    """Why a scan implementation cannot run here (None when it can), phrased for a 'skipped:' status."""
    from vivim.ops import dispatch, mamba_kernel

    device_type = "cuda" if timing.is_cuda(device) else "cpu"
    if name != "reference" and device_type != "cuda":
        return f"{name} scan runs on CUDA only (device is {device})"
    if name == "mamba_ssm" and not mamba_kernel.installed():
        return "mamba-ssm not installed (pip install mamba-ssm)"
    ok, reason = dispatch.is_available(name, device_type)
    if ok:
        return None
    if name == "vivim_cuda" and reason.startswith("unknown"):
        return "vivim_cuda kernel not built or not registered (see plugins/selective_scan)"
    return reason


@contextlib.contextmanager
def scan_scope(name: str, device: str) -> Iterator[None]:
    from vivim.ops import dispatch

    device_type = "cuda" if timing.is_cuda(device) else "cpu"
    with dispatch.use_impl(name, device_type):
        yield


def _is_oom(exc: BaseException) -> bool:
    torch = torch_module()
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


def apply_measurement(row: Row, measurement: timing.Measurement, device: str | None) -> None:
    """Copy a measurement into its row; `device` None: a runtime whose memory torch does not see (no memory
    columns)."""
    row.set_samples(measurement.samples_ms, measurement.host_ms)
    row.warmup = measurement.warmup
    row.iters = measurement.iters
    row.timer = measurement.timer
    row.notes.extend(measurement.notes)
    if device is not None:
        row.memory_mb = timing.peak_memory_mb(device)
        row.reserved_mb = timing.peak_reserved_mb(device)


def measure_on_host(settings: BenchSettings, fn: Callable[[], Any]) -> timing.Measurement:
    """Wall-clock timing, for runtimes whose calls return when the work is done (ONNX Runtime, TensorRT's synced
    infer): the host clock is the latency."""
    return timing.measure(fn, device="cpu", warmup=settings.warmup, iters=settings.iters,
                          max_seconds=settings.max_row_seconds)


def measure(settings: BenchSettings, fn: Callable[[], Any], *, iters: int | None = None,
             warmup: int | None = None) -> timing.Measurement:
    return timing.measure(fn, device=settings.device, warmup=settings.warmup if warmup is None else warmup,
                          iters=iters or settings.iters, max_seconds=settings.max_row_seconds)


def to_precision(model: Any, precision: str, settings: BenchSettings) -> tuple[Any, Any]:
    """(model on the device, input dtype) for a precision; autocast keeps fp32 weights and inputs."""
    model = model.to(settings.device)
    if precision == "fp16" and settings.fp16_mode == "half":
        torch = torch_module()
        if hasattr(model, "to_inference_dtype"):  # keeps A_log, D and the dt bias fp32, as the scan expects
            return model.to_inference_dtype(torch.float16), torch.float16
        return model.half(), torch.float16
    return model, dtype_of("fp32")


@contextlib.contextmanager
def precision_scope(precision: str, settings: BenchSettings) -> Iterator[None]:
    torch = torch_module()
    if precision == "fp16" and settings.fp16_mode == "autocast":
        # No weight-cast cache: CUDA graph capture requires it off, and eager runs then pay the same casts.
        with torch.autocast(device_type="cuda", dtype=torch.float16, cache_enabled=False):
            yield
    else:
        yield


def random_clip(settings: BenchSettings, frames: int, dtype: Any) -> Any:
    torch = torch_module()
    generator = torch.Generator().manual_seed(settings.seed)
    x = torch.randn(settings.batch, frames, 3, *settings.hw, generator=generator)
    return x.to(device=settings.device, dtype=dtype)


def quiet(*args: Any, **kwargs: Any) -> None:
    """A log/out callback that prints nothing (the runtime's own messages would break the progress bar)."""
    return None


def capture_frame(settings: BenchSettings) -> Any:
    """A random BGR frame of the capture size (content does not change the latency)."""
    import numpy as np

    return np.random.default_rng(settings.seed).integers(0, 256, size=(*CAPTURE_SHAPE, 3), dtype=np.uint8)
