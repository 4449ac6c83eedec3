"""`vivim-bench`: the same Vivim model through every backend and precision, one process, one table.

    vivim-bench --variant paper --device cuda --streaming --long-clips --out runs/bench/h100
    vivim-bench --checkpoint demo --device cpu --backends torch,ort-cpu --iters 20
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer

from vivim import paths
from vivim.cli_utils import cli_app, next_command, run_app, warn
from vivim.constants import SEED_MAX, parse_output_frame, parse_size, size_label
from vivim.devices import torch_device
from vivim.errors import VivimError

app = cli_app("Benchmark Vivim latency: PyTorch eager/FP16/CUDA graph per scan kernel, ONNX Runtime, TensorRT, "
              "streaming and long clips. Writes results.json/.csv/.md and PNG plots.")


@app.command()
def bench(
    ctx: typer.Context,
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", "-c",
                                             help="Checkpoint (.safetensors, or 'demo') to benchmark."),
    variant: Optional[str] = typer.Option(None, "--variant", "-v",
                                          help="Model variant with random weights (paper, b1, b0, tiny)."),
    frames: Optional[int] = typer.Option(None, "--frames", "-T", "-t", help="Clip length T (default: the checkpoint's, else 5)."),
    size: Optional[str] = typer.Option(None, "--size", "-s", help="Input side N (square) or HxW, e.g. 256 or 256x320 (default: the checkpoint's, else 256)."),
    batch: int = typer.Option(1, "--batch", help="Clips per call."),
    device: str = typer.Option("auto", "--device", "-d", help="cpu, cuda, cuda:N or auto."),
    backends: str = typer.Option("all", "--backends", "-b",
                                 help="Comma list of torch, torch-fp16, torch-graph, ort-cpu, ort-cuda, tensorrt "
                                      "(or all). The FP32 eager reference row always runs."),
    scans: str = typer.Option("all", "--scans",
                              help="Scan implementations for the PyTorch rows: reference, mamba_ssm, vivim_cuda "
                                   "(or all); unavailable ones are reported as skipped."),
    reference_scan: str = typer.Option("auto", "--reference-scan",
                                       help="Scan of the FP32 eager reference row (auto: mamba_ssm on CUDA when "
                                            "installed, else the dispatcher's choice)."),
    iters: int = typer.Option(100, "--iters", "-n", help="Timed iterations per row."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed warm-up iterations per row."),
    max_row_seconds: float = typer.Option(60.0, "--max-row-seconds",
                                          help="Time budget of one row; slower rows time fewer iterations "
                                               "(0 = no limit)."),
    out: Path = typer.Option(Path("runs/bench"), "--out", "--output", "-o", help="Results folder."),
    streaming: bool = typer.Option(False, "--streaming",
                                   help="Add per-new-frame streaming rows, the full-clip recompute they replace, "
                                        "and the vivim-run pipeline rows."),
    output_frame: str = typer.Option("newest", "--output-frame",
                                     help="Output frame of the streaming rows: newest (no lag), centre (T-1-T//2 frames "
                                          "of lag, the paper's protocol) or an index."),
    stream_scan: str = typer.Option("auto", "--stream-scan",
                                    help="Scan of the streaming and long-clip rows (auto: the dispatcher's choice)."),
    long_clips: bool = typer.Option(False, "--long-clips", help="Add the clip-length sweep (time and memory vs T)."),
    compile_rows: bool = typer.Option(False, "--compile",
                                      help="With --streaming on CUDA: add torch.compile (Inductor) variants of the "
                                           "FP16 CUDA-graph recompute and streaming rows."),
    long_frames: str = typer.Option("5,16,32,64,150", "--long-frames", help="Clip lengths of the sweep."),
    long_precisions: str = typer.Option("fp32,fp16", "--long-precisions", help="Precisions of the sweep."),
    long_iters: int = typer.Option(10, "--long-iters", help="Timed iterations per clip length."),
    fp16_mode: str = typer.Option("half", "--fp16-mode",
                                  help="half: fp16 weights and activations (scan parameters stay fp32); "
                                       "autocast: torch.autocast over fp32 weights."),
    video: Optional[str] = typer.Option(None, "--video",
                                        help="Video file for the vivim-run pipeline rows (default: a synthetic 640x480 clip)."),
    pipeline_frames: int = typer.Option(120, "--pipeline-frames", help="Frames per vivim-run pipeline row."),
    engine: Optional[Path] = typer.Option(None, "--engine", help="Prebuilt TensorRT engine to benchmark "
                                                                 "(otherwise built from the FP16 ONNX)."),
    trt_plugin: Optional[Path] = typer.Option(None, "--plugin", "--trt-plugin",
                                              help="TensorRT plugin library, as for vivim-run and vivim-export trt (default: ./vivim_plugin/libvivim_trt_plugin.so, else beside the engine)."),
    keep_onnx: Optional[Path] = typer.Option(None, "--keep-onnx", help="Keep the exported ONNX files here."),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Seed of the random weights and inputs."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write PNG plots."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    threads: Optional[int] = typer.Option(None, "--threads",
                                          help="CPU threads for PyTorch and ONNX Runtime's CPU rows (default: their own)."),
) -> None:
    """Measure latency per backend and precision in one process and write the results folder."""
    import torch

    # the flags given on the command line, to name those that no row of the run uses (defaults are not "given")
    given = {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"}
    previous_threads = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise VivimError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        # Every option except the thread count goes on to _bench, by name.
        _bench(**{k: v for k, v in locals().items() if k not in ("torch", "previous_threads", "ctx")})
    finally:
        torch.set_num_threads(previous_threads)


def _require_readable_video(video: str) -> None:
    """The pipeline rows come last: a video they cannot read must fail now, not after every other row."""
    from vivim.runtime.sources import FrameSource, open_video

    # vivim-run's own first-frame probe: one line naming --video when OpenCV cannot open or decode it
    FrameSource(f"--video {video}", open_video(video), live=False, reconnect=False).open().stop()


def _bench(*, checkpoint: Optional[str], variant: Optional[str], frames: Optional[int], size: Optional[str],
           batch: int, device: str, backends: str, scans: str, reference_scan: str, iters: int, warmup: int,
           max_row_seconds: float, out: Path, streaming: bool, output_frame: str, stream_scan: str,
           long_clips: bool, compile_rows: bool, long_frames: str, long_precisions: str, long_iters: int,
           fp16_mode: str, video: Optional[str], pipeline_frames: int, engine: Optional[Path], trt_plugin: Optional[Path],
           keep_onnx: Optional[Path], seed: int, plots: bool, progress: bool, threads: Optional[int],
           given: set[str]) -> None:
    from vivim.bench import report
    from vivim.bench.common import BenchSettings, ModelSource, scan_unavailable_reason
    from vivim.bench.env import collect_environment
    from vivim.bench.plan import BACKENDS, SCANS, parse_frames_list, parse_list, plan_rows
    from vivim.constants import check_output_frame

    variant = _model_choice(checkpoint, variant)
    device = str(torch_device(device))
    _warn_unused_flags(given, streaming=streaming, long_clips=long_clips, device=device, backends=backends)
    _check_counts(iters=iters, warmup=warmup, batch=batch, long_iters=long_iters, pipeline_frames=pipeline_frames)
    if not math.isfinite(max_row_seconds) or max_row_seconds < 0:  # nan would pass a range check, then break the JSON
        raise VivimError(f"--max-row-seconds must be a number of seconds >= 0 (0 = no limit), got {max_row_seconds}")
    if fp16_mode not in ("half", "autocast"):
        raise VivimError(f"--fp16-mode must be half or autocast, got {fp16_mode!r}")
    backend_list = parse_list(backends, BACKENDS, "--backends")
    scan_list = parse_list(scans, SCANS, "--scans")
    for flag, name in (("--reference-scan", reference_scan), ("--stream-scan", stream_scan)):
        if name != "auto" and name not in SCANS:
            raise VivimError(f"{flag} must be auto or one of {', '.join(SCANS)}, got {name!r}")
    long_list = parse_frames_list(long_frames) if long_clips else []
    long_precision_list = parse_list(long_precisions, ("fp32", "fp16"), "--long-precisions")
    for flag, named in (("--video", video), ("--engine", engine), ("--plugin", trt_plugin)):
        if named is not None:
            paths.require_file(named, flag)
    if video is not None:
        _require_readable_video(video)

    settings = BenchSettings(
        variant=variant, checkpoint=checkpoint, frames=5 if frames is None else frames,
        size=256 if size is None else parse_size(size), batch=batch, device=device,
        warmup=warmup, iters=iters, max_row_seconds=max_row_seconds or None, output_frame=parse_output_frame(output_frame, allow_index=True),
        fp16_mode=fp16_mode, reference_scan=reference_scan, seed=seed, keep_onnx=keep_onnx, video=video,
        pipeline_frames=pipeline_frames, long_iters=long_iters, engine=engine, trt_plugin=trt_plugin,
        compile=compile_rows, threads=threads,
    )
    source = ModelSource(settings)
    if checkpoint is not None:
        trained_frames, trained_size = source.checkpoint_defaults()
        settings.frames = int(trained_frames or 5) if frames is None else frames  # 0 is an error, not "default"
        settings.size = (trained_size or 256) if size is None else settings.size
    if settings.frames < 1:
        raise VivimError(f"--frames must be at least 1, got {settings.frames}")
    check_output_frame(settings.output_frame, settings.frames)  # an index must fit the clip: now, not after rows

    paths.check_writable(out, "--out", folder=True)  # after the flags, before the measurements
    if keep_onnx is not None:
        paths.check_writable(keep_onnx, "--keep-onnx", folder=True)
    env = collect_environment(device)
    print(report.format_environment(env))
    print(f"model: {checkpoint or variant}, clip {settings.batch}x{settings.frames}x3x{size_label(settings.size)}, "
          f"device {device}, warm-up {warmup}, iterations {iters}")

    plan = plan_rows(settings, backends=backend_list, scans=scan_list, streaming=streaming, long_clips=long_list,
                     long_precisions=long_precision_list, stream_scan=stream_scan, source=source)
    if device.startswith("cuda") and plan.reference_scan != "mamba_ssm":
        warn(f"the FP32 eager reference row uses the '{plan.reference_scan}' scan (mamba-ssm is not available); "
             "speed-ups are relative to it, not to the mamba-ssm anchor")

    config: dict[str, Any] = {
        "checkpoint": checkpoint, "variant": variant or source.metadata.get("variant"), "frames": settings.frames,
        "size": settings.size, "batch": settings.batch, "device": device, "warmup": warmup, "iters": iters,
        "max_row_seconds": settings.max_row_seconds, "backends": backend_list, "scans": scan_list,
        "reference_scan": plan.reference_scan, "streaming": streaming, "output_frame": settings.output_frame,
        "long_clips": long_list, "fp16_mode": fp16_mode, "seed": seed, "complete": False,
        "scan_availability": {name: scan_unavailable_reason(name, device) or "available"
                              for name in SCANS},
    }
    rows, written = _run_and_save(plan, env, config, out, progress=progress, plots=plots)
    print()
    print(report.format_table(rows))
    _warn_uneven_timings(rows)
    summary = best_streaming_summary(rows)
    if summary:
        print(summary)
    print(f"\nResults saved to {out}: {', '.join(p.name for p in written)}")
    if Path("benchmarks/RESULTS.md").is_file():  # a checkout of this repository: the numbers belong in its record
        next_command(f"paste {out / 'results.md'} into benchmarks/RESULTS.md with the card and date")


def _warn_unused_flags(given: set[str], *, streaming: bool, long_clips: bool, device: str, backends: str) -> None:
    """One warning naming the flags given (`given`: their parameter names) that change nothing in this run, as
    vivim-run gives: a flag that seems to work and does not is worse than one refused."""
    from vivim.bench.plan import BACKENDS, parse_list

    chosen = set(parse_list(backends, BACKENDS, "--backends"))
    needs = {  # parameter -> (flag, why it is unused here, or None when it is used)
        "video": ("--video", None if streaming else "needs --streaming"),
        "pipeline_frames": ("--pipeline-frames", None if streaming else "needs --streaming"),
        "compile_rows": ("--compile", "needs --streaming" if not streaming else
                         None if device.startswith("cuda") else "CUDA only"),
        "stream_scan": ("--stream-scan", None if streaming or long_clips else "needs --streaming or --long-clips"),
        "long_frames": ("--long-frames", None if long_clips else "needs --long-clips"),
        "long_precisions": ("--long-precisions", None if long_clips else "needs --long-clips"),
        "long_iters": ("--long-iters", None if long_clips else "needs --long-clips"),
        "engine": ("--engine", None if "tensorrt" in chosen else "no tensorrt in --backends"),
        "trt_plugin": ("--plugin", None if "tensorrt" in chosen else "no tensorrt in --backends"),
        "keep_onnx": ("--keep-onnx", None if chosen & {"ort-cpu", "ort-cuda", "tensorrt"} else
                      "no ONNX Runtime or TensorRT in --backends"),
    }
    unused = [f"{flag} ({why})" for name, (flag, why) in needs.items() if name in given and why is not None]
    if unused:
        warn(f"no row of this run uses {', '.join(unused)}")


def _model_choice(checkpoint: Optional[str], variant: Optional[str]) -> Optional[str]:
    """The variant to build (None with --checkpoint); 'paper' with random weights when neither flag is given."""
    if checkpoint is not None and variant is not None:
        raise VivimError("give --checkpoint or --variant, not both")
    if checkpoint is None and variant is None:
        warn("no --checkpoint or --variant: benchmarking the 'paper' variant with random weights")
        return "paper"
    if variant is not None:
        import vivim

        if variant not in vivim.variants():
            raise VivimError(f"--variant must be one of {', '.join(vivim.variants())}, got {variant!r}")
    return variant


def _check_counts(**counts: int) -> None:
    """Each count flag, named by its keyword (long_iters -> --long-iters), at least 1 (--warmup: at least 0)."""
    lowest = {"warmup": 0}
    for name, value in counts.items():
        low = lowest.get(name, 1)
        if value < low:
            raise VivimError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")


def _run_and_save(plan: Any, env: Any, config: dict[str, Any], out: Path, *, progress: bool,
                  plots: bool) -> tuple[list[Any], list[Path]]:
    """Measure every planned row; the JSON and CSV are rewritten after each one, so a run cut short (time limit,
    crash) keeps what it measured. Returns the rows and the files written at the end."""
    from tqdm import tqdm

    from vivim.bench import report
    from vivim.bench.plan import run_rows
    from vivim.bench.records import apply_speedups

    finished: list[Any] = []

    def on_row(row: Any) -> None:
        timing_text = f"{row.latency.mean:.2f} ms mean, p99 {row.latency.p99:.2f} ms" if row.latency else ""
        cut = next((f"  ({note})" for note in row.notes if note.startswith("warm-up cut")), "")
        tqdm.write(f"{row.label}: {row.status}{'  ' + timing_text if timing_text else ''}{cut}")
        finished.append(row)
        apply_speedups(finished)
        report.write_json(out / "results.json", finished, env, config)
        report.write_csv(out / "results.csv", finished, env)

    rows = run_rows(plan, progress=progress, on_row=on_row)
    apply_speedups(rows)
    config["complete"] = True
    return rows, report.write_all(out, rows, env, config, plots=plots)


def _warn_uneven_timings(rows: list[Any]) -> None:
    """Speed-ups compare means: a row whose mean is far above its median had a few slow calls (a busy machine,
    another process on the cores) that decide its speed-up. Said, with the rows, rather than left in the JSON."""
    uneven = [r for r in rows if r.ok and r.latency and r.latency.p50 > 0 and r.latency.mean > 1.5 * r.latency.p50]
    if uneven:
        worst = max(uneven, key=lambda r: r.latency.mean / r.latency.p50)
        warn(f"{len(uneven)} row(s) have a mean far above their median (e.g. {worst.label}: mean {worst.latency.mean:.2f} "
             f"ms, median {worst.latency.p50:.2f} ms): a few slow calls decide their speed-up; on a busy CPU try "
             "--threads 1 and more --iters")


def best_streaming_summary(rows: list[Any]) -> str | None:
    """The issue-7 target line: best per-new-frame PyTorch path vs the FP32 eager reference of the same run."""
    reference = next((r for r in rows if r.reference and r.ok), None)
    candidates = [r for r in rows if r.ok and r.mode in ("stream", "recompute") and r.speedup is not None
                  and not r.backend.startswith("TensorRT")]
    if reference is None or not candidates:
        return None
    best = max(candidates, key=lambda r: r.speedup)
    return (f"best per-new-frame PyTorch path: {best.label}, {best.latency.mean:.2f} ms mean "
            f"({best.speedup:.2f}x the FP32 eager reference {reference.latency.mean:.2f} ms; target >= 5x)")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
