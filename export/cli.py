"""`vivim-export`: checkpoint -> ONNX -> parity check -> TensorRT plugin -> TensorRT engine.

    vivim-export onnx demo -o model.onnx --fp16
    vivim-export check demo --onnx model.onnx --json parity.json
    vivim-export plugin -o vivim_plugin --arch 87
    vivim-export trt model.onnx --fp16 -o model.engine --plugin vivim_plugin/libvivim_trt_plugin.so

The commands are thin: the work lives in onnx_export, parity, plugin and tensorrt_build.
"""

from __future__ import annotations

from pathlib import Path

import typer

from vivim import atomic, paths
from vivim.checkpoint import DEMO_CLIP, bundled_asset, checkpoint_file
from vivim.cli_utils import cli_app, next_command, run_app, shell, warn
from vivim.constants import SEED_MAX, image_hw
from vivim.constants import parse_size as parse_size_flag
from vivim.errors import VivimError
from vivim.export.plugin import DEFAULT_PLUGIN_DIR, PLUGIN_LIBRARY_NAME, find_plugin_library

app = cli_app("Export Vivim checkpoints to ONNX (one VivimSelectiveScan node per scan) and TensorRT engines.",
              name="vivim-export", no_args_is_help=True)


def parse_size(text: str | None) -> tuple[int, int] | None:
    """--size: 'N' (square) or 'HxW' (also 'H,W'), as vivim-train takes it; None = the checkpoint's trained size."""
    return None if text is None else image_hw(parse_size_flag(text))


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


# extra arguments reach the command, to answer the two-value --size of earlier versions with the form to use now
@app.command(context_settings={"allow_extra_args": True},
             short_help="Checkpoint -> ONNX with one custom node per selective scan.")
def onnx(
    ctx: typer.Context,
    checkpoint: str = typer.Argument(..., metavar="CHECKPOINT", help="Checkpoint (.safetensors) or 'demo' for the packaged demo weights."),
    output: Path = typer.Option(Path("model.onnx"), "-o", "--output", "--out", help="ONNX file to write."),
    fp16: bool = typer.Option(False, "--fp16", help="FP16 graph (A, D, delta_bias stay fp32); what TensorRT 11 needs for FP16."),
    frames: int | None = typer.Option(None, "--frames", "-T", help="Clip length T (default: the checkpoint's)."),
    size: str | None = typer.Option(None, "--size", "-s", help="Input side N (square) or HxW, e.g. 256 or 256x320 "
                                    "(multiples of 32; default: the checkpoint's).", show_default=False),
    output_frame: str = typer.Option("all", "--output-frame", help="Logits for all frames, or only the centre / newest one."),
    opset: int | None = typer.Option(None, "--opset", help="Default-domain ONNX opset (default: the exporter's)."),
    optimize: bool = typer.Option(True, "--optimize/--no-optimize", help="Full ONNX optimizer, or constant folding only (faster export)."),
) -> None:
    """Export a checkpoint to a static-shape ONNX with one vivim::VivimSelectiveScan node per selective scan."""
    from vivim.export.onnx_export import export_onnx

    if ctx.args:
        if size is not None and len(ctx.args) == 1 and ctx.args[0].isdigit():
            raise VivimError(f"--size {size} {ctx.args[0]}: give the two sides as HxW, e.g. --size {size}x{ctx.args[0]}")
        raise VivimError(f"unexpected argument(s): {' '.join(ctx.args)} (see vivim-export onnx --help)")

    paths.refuse_writing_over_inputs({"-o": output}, {"CHECKPOINT": checkpoint_file(checkpoint)})
    if output.suffix.lower() != ".onnx":  # "-o out/models/" reaches here without its slash: a folder was meant
        raise VivimError(f"-o {output}: an ONNX file name ends in .onnx (for a folder, give {output / 'model.onnx'})")
    result = export_onnx(checkpoint, output, fp16=fp16, frames=frames, size=parse_size(size), output_frame=output_frame,
                         opset=opset, optimize=optimize)
    for label, tensors in (("input", result.inputs), ("output", result.outputs)):
        for name, shape, dtype in tensors:
            print(f"  {label:6s} {name:8s} {tuple(shape)} {dtype}")
    print(f"ONNX: export success {result.seconds:.1f}s, saved as '{result.path}' ({_mb(result.size_bytes)}), "
          f"{result.nodes} nodes of which {result.scan_nodes} vivim::VivimSelectiveScan")
    precision = "--fp16" if fp16 else None
    next_command(shell("vivim-export", "check", checkpoint, "--onnx", result.path))
    _next_after_onnx(result.path, precision)


@app.command(short_help="ONNX Runtime against PyTorch on a synthetic clip.")
def check(
    checkpoint: str = typer.Argument(..., metavar="CHECKPOINT", help="The checkpoint the ONNX was exported from (or 'demo')."),
    onnx_path: Path = typer.Option(..., "--onnx", help="ONNX file from `vivim-export onnx`."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the comparison as JSON here."),
    atol: float | None = typer.Option(None, "--atol", help="Max |logit difference| (default 1e-3 FP32, 0.5 FP16)."),
    min_dice: float | None = typer.Option(None, "--min-dice", help="Min Dice between masks (default 0.999 FP32, 0.98 FP16)."),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Seed of the synthetic clip."),
) -> None:
    """Run the ONNX in ONNX Runtime (NumPy VivimSelectiveScan) and the FP32 PyTorch model on a synthetic clip."""
    from vivim.export.parity import check_parity

    if json_out is not None:
        paths.refuse_writing_over_inputs({"--json": json_out}, {"CHECKPOINT": checkpoint_file(checkpoint),
                                                                "--onnx": onnx_path})
        paths.check_writable(json_out, "--json")
    result = check_parity(checkpoint, onnx_path, atol=atol, min_dice=min_dice, seed=seed)
    if not result.checkpoint_matches:
        warn(f"{onnx_path} was exported from another checkpoint file than {result.checkpoint} (sha256 differs)")
    rows = [
        ("input", f"{tuple(result.input_shape)} synthetic clip, seed {seed}"),
        ("precision", f"{result.precision} ONNX vs fp32 PyTorch, output frame {result.output_frame}"),
        ("max |logit diff|", f"{result.max_abs_err:.3g}  (tolerance {result.atol:g}; max |logit| {result.max_abs_logit:.3g})"),
        ("mean |logit diff|", f"{result.mean_abs_err:.3g}"),
        ("Dice (logit > 0)", f"{result.dice:.5f}  (minimum {result.min_dice:g}; mask pixels {result.mask_pixels_onnx} vs {result.mask_pixels_torch})"),
        ("time", f"onnxruntime {result.seconds_onnxruntime:.2f}s, pytorch {result.seconds_torch:.2f}s (CPU)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    if json_out is not None:
        atomic.write_json(json_out, result.to_dict())
        print(f"  {'json':<{width}}  {json_out}")
    if not result.passed:
        print(f"PARITY FAILED: {onnx_path} differs from the PyTorch model beyond tolerance")
        raise typer.Exit(1)
    print(f"parity OK: {onnx_path} matches the PyTorch model")
    flag = "--fp16" if result.precision == "fp16" else None
    _next_after_onnx(Path(onnx_path), flag)


def _next_after_onnx(onnx_path: Path, precision: str | None) -> None:
    """The engine build where TensorRT is installed; elsewhere the graph runs as it is, and the build is for the
    deployment machine (a Jetson, a GPU desktop)."""
    build = shell("vivim-export", "trt", onnx_path, precision, "-o", onnx_path.with_suffix(".engine"))
    if _tensorrt_installed():
        next_command(build)
        return
    next_command(shell("vivim-run", "--onnx", onnx_path, "--video", bundled_asset(DEMO_CLIP)))
    print(f"  (on a machine with TensorRT: {build})")


@app.command(short_help="Build the TensorRT selective-scan plugin (CMake + nvcc).")
def plugin(
    output_dir: Path = typer.Option(DEFAULT_PLUGIN_DIR, "-o", "--output", "--out", help="Folder for the plugin library."),
    arch: str | None = typer.Option(None, "--arch", help="CUDA compute capability, e.g. 87 (Orin), 90 (H100); default: this GPU's."),
    tensorrt_include: Path | None = typer.Option(None, "--tensorrt-include", help="Folder with NvInferRuntime.h (default: TENSORRT_ROOT or system paths)."),
    verbose: bool = typer.Option(False, "--verbose", help="Show the CMake/compiler output."),
) -> None:
    """Build the TensorRT IPluginV3 library (VivimSelectiveScan) with CMake + nvcc."""
    from vivim.export.plugin import build_plugin

    library = build_plugin(output_dir, arch, tensorrt_include, verbose=verbose, log=print)
    print(f"plugin: built {library} ({_mb(library.stat().st_size)})")
    # runnable as printed: the bundled demo weights, exported first (a checkpoint or an ONNX of one in their place)
    next_command(shell("vivim-export", "trt", "demo", "--fp16", "-o", "demo.engine", "--plugin", library))


@app.command(short_help="Checkpoint or ONNX -> TensorRT engine with the plugin.")
def trt(
    source: str = typer.Argument(..., metavar="SOURCE", help="An ONNX from `vivim-export onnx`, or a checkpoint / 'demo' (exported first)."),
    output: Path = typer.Option(Path("model.engine"), "-o", "--output", "--out", help="Engine file to write (+ .json sidecar)."),
    fp16: bool = typer.Option(False, "--fp16", help="FP16 engine (the ONNX must be an FP16 graph: strongly typed build)."),
    plugin_path: Path | None = typer.Option(None, "--plugin", help=f"Plugin library (default: ./{DEFAULT_PLUGIN_DIR}/{PLUGIN_LIBRARY_NAME}, else beside -o)."),
    workspace: float = typer.Option(2.0, "--workspace", help="Builder workspace in GiB."),
    timing_cache: Path | None = typer.Option(None, "--timing-cache", help="Timing cache file (read and updated)."),
    verbose: bool = typer.Option(False, "--verbose", help="TensorRT builder log."),
) -> None:
    """Build a TensorRT engine (strongly typed) with the VivimSelectiveScan plugin."""
    from vivim.export.tensorrt_build import build_engine, check_workspace, sidecar_path, tensorrt_missing_message

    given = [("--plugin", plugin_path), ("--workspace", workspace if workspace != 2.0 else None),
             ("--timing-cache", timing_cache)]
    rerun = shell("vivim-export", "trt", source, "--fp16" if fp16 else None, "-o", output,
                  *(word for flag, value in given if value is not None for word in (flag, value)))
    # the paths first (a rerun with TensorRT installed must not fail on them), then TensorRT, before a long export
    paths.require_file(checkpoint_file(source), "SOURCE")
    # the timing cache is read and rewritten after the build: an output like the engine (and the ONNX exported
    # beside it from a checkpoint)
    outputs: dict[str, Path | None] = {"-o": output, "-o (sidecar)": sidecar_path(output)}
    if not source.endswith(".onnx"):
        outputs["-o (ONNX exported first)"] = output.with_suffix(".onnx")
    outputs["--timing-cache"] = timing_cache  # last: a clash names it
    paths.refuse_writing_over_inputs(outputs, {"SOURCE": checkpoint_file(source), "--plugin": plugin_path})
    paths.check_writable(output, "-o")
    if timing_cache is not None:
        paths.check_writable(timing_cache, "--timing-cache")
    # the values too: the rerun printed when TensorRT is missing must not fail on a typo
    check_workspace(workspace)
    if plugin_path is not None:
        paths.require_file(plugin_path, "--plugin")
    if source.endswith(".onnx"):
        _check_onnx_precision(paths.require_file(source, "ONNX"), fp16)
    else:
        _check_replaceable_onnx(output.with_suffix(".onnx"), source)
    if not _tensorrt_installed():
        raise VivimError(tensorrt_missing_message(rerun))
    plugin_path = find_plugin_library(plugin_path, output)
    onnx_path = _onnx_for_engine(source, output, fp16)
    engine = build_engine(onnx_path, output, plugin_path, workspace, timing_cache, verbose,
                          precision="fp16" if fp16 else None, rerun=rerun)
    print(f"TensorRT: engine saved as '{engine}' ({_mb(engine.stat().st_size)}), sidecar '{engine}.json'")
    # the plugin named explicitly: vivim-run looks only in ./vivim_plugin/ and beside the engine by itself
    next_command(shell("vivim-run", "--engine", engine, "--plugin", plugin_path, "--video", bundled_asset(DEMO_CLIP)))


def _tensorrt_installed() -> bool:
    from vivim.export.tensorrt_build import import_tensorrt

    return import_tensorrt() is not None


def _check_onnx_precision(path: Path, fp16: bool) -> None:
    """--fp16 against the graph's own types (the build is strongly typed: the graph decides)."""
    from vivim.export.onnx_files import onnx_metadata

    precision = onnx_metadata(path).get("precision")
    if fp16 and precision == "fp32":
        raise VivimError(f"{path} is an FP32 graph; --fp16 needs an FP16 ONNX: vivim-export onnx CHECKPOINT --fp16 -o "
                         f"{path.with_name(path.stem + '_fp16.onnx')}")
    if not fp16 and precision == "fp16":
        warn(f"{path} is an FP16 graph: the engine is FP16 (strong typing keeps the graph's types)")


def _check_replaceable_onnx(onnx_path: Path, checkpoint: str) -> None:
    """The ONNX exported beside the engine may replace a file there only when that file was exported from the same
    checkpoint: another model's ONNX (a user's own file of that name) is not silently lost."""
    from vivim.checkpoint import file_sha256, resolve_checkpoint
    from vivim.export.onnx_files import onnx_metadata

    if not onnx_path.exists():
        return
    try:
        exported_from = onnx_metadata(onnx_path).get("checkpoint_sha256")
    except VivimError:
        exported_from = None
    if exported_from != file_sha256(resolve_checkpoint(checkpoint)):
        raise VivimError(f"-o: {onnx_path} exists and was not exported from {checkpoint}; the engine's ONNX would "
                         f"replace it: move it, or build from it (vivim-export trt {shell(onnx_path)} ...)")


def _onnx_for_engine(source: str, engine: Path, fp16: bool) -> Path:
    """The ONNX to build from: `source` itself, or a fresh export of the checkpoint next to the engine."""
    if source.endswith(".onnx"):
        return paths.require_file(source, "ONNX")  # its precision was checked before TensorRT was looked for
    from vivim.export.onnx_export import export_onnx

    onnx_path = engine.with_suffix(".onnx")
    print(f"exporting {source} to {onnx_path} first")
    export_onnx(source, onnx_path, fp16=fp16)
    return onnx_path


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
