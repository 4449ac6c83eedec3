"""Planning and running a benchmark: which rows, in which order, and the loop that runs them.

Rows are planned first (`plan_rows`) and run one after another in the same process (`run_rows`), so every number
in a table shares the machine state. A row never raises: an unavailable path becomes 'skipped: <reason>', an
error 'failed: <reason>' (out-of-memory reads 'failed: out of memory').
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from vivim.bench import timing
from vivim.bench.artifacts import Artifacts
from vivim.bench.common import BenchSettings, ModelSource, cuda_ready, resolve_scan, scan_unavailable_reason
from vivim.bench.records import Row
from vivim.bench.rows_deploy import ort_row, tensorrt_rows
from vivim.bench.rows_runtime import pipeline_rows, runtime_stream_row
from vivim.bench.rows_torch import TORCH_EAGER, torch_clip_row, torch_stream_row
from vivim.errors import VivimError

# --backends names. 'torch' is FP32 eager (also the reference row), 'torch-graph' is FP16 + CUDA graph.
BACKENDS = ("torch", "torch-fp16", "torch-graph", "ort-cpu", "ort-cuda", "tensorrt")
SCANS = ("reference", "mamba_ssm", "vivim_cuda")


@dataclass
class PlannedRow:
    """A row to run: its label for the progress bar and the function that measures it."""

    label: str
    run: Callable[[], "Row | list[Row]"]


def parse_list(text: str, allowed: Sequence[str], flag: str) -> list[str]:
    """'all' or a comma list of known names (order kept, duplicates dropped)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise VivimError(f"{flag}: empty list (name one or more of {', '.join(allowed)}, or all)")
    if names == ["all"]:
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
    from vivim.progress import bar as progress_bar

    rows: list[Row] = []
    try:
        # a step may produce several table rows (the clip-length sweep): the bar counts steps
        with progress_bar(plan.rows, desc="vivim-bench", unit="step", disable=not progress, leave=False) as bar:
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
