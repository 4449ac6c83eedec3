"""PyTorch rows: a whole clip (eager, CUDA graph, optionally torch.compile) and the streaming step per new frame."""

from __future__ import annotations

from typing import Any

from vivim.bench import timing
from vivim.bench.common import (
    BenchSettings, ModelSource, apply_measurement, cuda_ready, guarded, measure, precision_scope, random_clip,
    scan_scope, scan_unavailable_reason, to_precision, torch_module,
)
from vivim.bench.records import Row, skipped
from vivim.cuda_graph import capture_cuda_graph

TORCH_EAGER = "PyTorch eager"
TORCH_GRAPH = "PyTorch CUDA graph"
TORCH_STREAM = "PyTorch streaming"
TORCH_STREAM_GRAPH = "PyTorch streaming CUDA graph"


def torch_row_unavailable_reason(settings: BenchSettings, *, precision: str, graph: bool, scan: str) -> str | None:
    """Why a PyTorch row cannot run here (FP16 and CUDA graphs need CUDA; the scan must be available), or None."""
    if (graph or precision == "fp16") and not cuda_ready(settings.device):
        return f"CUDA only (device is {settings.device})"
    return scan_unavailable_reason(scan, settings.device)


def precision_notes(precision: str, settings: BenchSettings) -> list[str]:
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
    row.notes.extend(precision_notes(precision, settings))

    def body(row: Row) -> None:
        torch = torch_module()
        timing.reset_peak_memory(settings.device)
        base = source.for_frames(frames)
        model, dtype = to_precision(base, precision, settings)
        x = random_clip(settings, frames, dtype)
        kwargs = {} if output_frame is None else {"output_frame": output_frame}
        forward = compiled_fn(model, compiled)
        with scan_scope(scan, settings.device), torch.inference_mode(), precision_scope(precision, settings):
            if graph:
                static_x = x.clone()
                cuda_graph, _ = capture_cuda_graph(lambda: forward(static_x, **kwargs))

                def step() -> Any:
                    static_x.copy_(x)  # a new clip arrives in the captured input buffer
                    cuda_graph.replay()

            else:

                def step() -> Any:
                    return forward(x, **kwargs)

            apply_measurement(row, measure(settings, step, iters=iters, warmup=warmup), settings.device)

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
    row.notes.extend(precision_notes(precision, settings))

    def body(row: Row) -> None:
        torch = torch_module()
        timing.reset_peak_memory(settings.device)
        model, dtype = to_precision(source.fresh(), precision, settings)
        clip = random_clip(settings, settings.frames, dtype)
        new_frame = clip[:, -1].contiguous()  # (B, 3, H, W): the frame that just arrived
        with scan_scope(scan, settings.device), torch.inference_mode(), precision_scope(precision, settings):
            window = StreamingWindow(model, clip, settings.output_frame)
            window_step = compiled_fn(window.step, compiled)
            if graph:
                static_frame = new_frame.clone()
                cuda_graph, _ = capture_cuda_graph(lambda: window_step(static_frame))

                def step() -> Any:
                    static_frame.copy_(new_frame)  # the new frame arrives in the captured input buffer
                    cuda_graph.replay()

            else:

                def step() -> Any:
                    return window_step(new_frame)

            apply_measurement(row, measure(settings, step), settings.device)

    return guarded(row, settings.device, body)


def compiled_fn(fn: Any, enabled: bool) -> Any:
    """torch.compile with static shapes (compiled on the first call, i.e. during warm-up or graph capture)."""
    return torch_module().compile(fn, dynamic=False) if enabled else fn


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
