"""vivim-run rows: the runtime's PyTorch backend per new frame, and capture-to-mask through the whole pipeline."""

from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import Any

from vivim.bench import timing
from vivim.bench.artifacts import Artifacts
from vivim.bench.common import (
    CAPTURE_SHAPE, BenchSettings, ModelSource, apply_measurement, capture_frame, cuda_ready, guarded, measure, quiet,
    scan_scope, scan_unavailable_reason,
)
from vivim.bench.records import Row, one_line, skipped
from vivim.bench.rows_torch import torch_row_unavailable_reason
from vivim.errors import VivimError

RUNTIME_STREAM = "vivim-run TorchBackend"
RUNTIME_PIPELINE = "vivim-run pipeline"


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
        from vivim.constants import output_frame_index

        timing.reset_peak_memory(settings.device)
        frame = capture_frame(settings)
        index = output_frame_index(settings.output_frame, settings.frames)
        with scan_scope(scan, settings.device):
            backend = TorchBackend(source.fresh(), device=settings.device, fp16=precision == "fp16",
                                   cuda_graph=graph, stream_cache=cache, log=quiet)
            try:
                backend.prepare(frame.shape)
                if graph and not backend.cuda_graph:
                    raise VivimError("the runtime's CUDA graph capture failed and it fell back to eager")
                ring = [backend.preprocess(frame) for _ in range(settings.frames)]

                def step() -> Any:
                    ring.append(backend.preprocess(frame))
                    del ring[0]
                    return backend.infer(ring, index)

                apply_measurement(row, measure(settings, step), settings.device)
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
    from vivim.latency import LATENCY_FIELDS, LatencyStats
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
    with scan_scope(scan, settings.device):
        summary = run(config, log=quiet, out=quiet)
    latency = summary.get("latency_ms") or {}
    if not summary.get("frames_processed") or latency.get("mean") is None:
        raise VivimError(f"vivim-run processed no frames of {video}")
    row.latency = LatencyStats(**{k: latency[k] for k in LATENCY_FIELDS})
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
