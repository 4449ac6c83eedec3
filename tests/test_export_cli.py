"""`vivim-export` end to end: onnx -> check (pass and fail) -> trt without TensorRT, and one-line errors."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner
from vivim.export.cli import app

from vivim.errors import VivimError
from vivim.export.onnx_export import newest_convertible_opset

FRAMES, SIZE = 3, (64, 64)


def vivim_export(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the real command line (run_app wrapper included) in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "vivim.export.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600, check=False)


def tensorrt_installed() -> bool:
    try:
        import tensorrt
    except (ImportError, OSError):
        return False
    return hasattr(tensorrt, "Builder")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    import torch

    import vivim

    folder = tmp_path_factory.mktemp("cli")
    torch.manual_seed(7)
    vivim.save_checkpoint(vivim.create_model("tiny", frames=FRAMES, img_size=SIZE[0]), folder / "tiny.safetensors")
    return folder


@pytest.fixture(scope="module")
def exported_onnx(workdir) -> Path:
    proc = vivim_export("onnx", "tiny.safetensors", "-o", "out/model fp16.onnx", "--fp16", "--frames", FRAMES,
                        "--size", f"{SIZE[0]}x{SIZE[1]}", "--output-frame", "newest", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    (workdir / "out" / "export.log").write_text(out)  # what the export printed, for the tests of its next commands
    assert "input  frames   (1, 3, 3, 64, 64) float16" in out
    assert "output logits   (1, 1, 1, 64, 64) float16" in out
    assert "8 vivim::VivimSelectiveScan" in out and "MB" in out
    assert "next: vivim-export check tiny.safetensors --onnx 'out/model fp16.onnx'" in out  # pastes into a shell
    build = "vivim-export trt 'out/model fp16.onnx' --fp16 -o 'out/model fp16.engine'"
    if tensorrt_installed():
        assert f"next: {build}" in out
    else:  # the graph runs here as it is; the engine is built where TensorRT is
        assert f"(on a machine with TensorRT: {build})" in out
        assert "next: vivim-run --onnx 'out/model fp16.onnx' --video " in out
    return workdir / "out" / "model fp16.onnx"


@pytest.mark.skipif(tensorrt_installed(), reason="with TensorRT the next command builds an engine")
def test_the_run_printed_after_an_export_without_tensorrt_runs(workdir, exported_onnx):
    pytest.importorskip("onnxruntime_extensions")
    exported = (workdir / "out" / "export.log").read_text()
    printed = next(line for line in exported.splitlines() if line.startswith("next: vivim-run"))[len("next: "):]
    run = subprocess.run([sys.executable, "-m", "vivim.runtime.cli", *shlex.split(printed)[1:], "--max-frames", "4",
                          "--headless", "--stats", "out/run.json"], cwd=workdir, capture_output=True, text=True,
                         timeout=600, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads((workdir / "out" / "run.json").read_text())["frames_processed"] == 4


def test_onnx_then_check_passes_and_writes_json(workdir, exported_onnx):
    import onnx

    meta = {p.key: p.value for p in onnx.load(exported_onnx).metadata_props}
    assert meta["output_frame"] == "newest" and meta["precision"] == "fp16" and meta["frames"] == str(FRAMES)
    printed = "vivim-export check tiny.safetensors --onnx 'out/model fp16.onnx'"  # the next command, as a shell reads it
    proc = vivim_export(*shlex.split(printed)[1:], "--json", "out/parity.json", cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "parity OK" in proc.stdout and "Dice" in proc.stdout
    report = json.loads((workdir / "out" / "parity.json").read_text())
    assert report["passed"] is True and report["precision"] == "fp16" and report["output_frame"] == "newest"
    assert report["max_abs_err"] <= report["atol"] and report["dice"] >= report["min_dice"]
    assert ("next: vivim-export trt" if tensorrt_installed() else "(on a machine with TensorRT: vivim-export trt") in proc.stdout


def test_check_exits_nonzero_beyond_tolerance(workdir, exported_onnx):
    proc = vivim_export("check", "tiny.safetensors", "--onnx", exported_onnx, "--atol", "1e-9",
                        "--json", "out/fail.json", cwd=workdir)
    assert proc.returncode == 1
    assert "PARITY FAILED" in proc.stdout
    assert json.loads((workdir / "out" / "fail.json").read_text())["passed"] is False


@pytest.mark.skipif(tensorrt_installed(), reason="TensorRT is installed here; this checks the message without it")
def test_trt_without_tensorrt_is_a_clear_error(workdir, exported_onnx):
    proc = vivim_export("trt", exported_onnx, "--fp16", "-o", "out/model.engine", cwd=workdir)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: TensorRT is not installed")
    assert "JetPack" in lines[0] and "pip install tensorrt" in lines[0]
    assert "Traceback" not in proc.stderr
    # from a checkpoint it fails before spending time on an ONNX export
    proc = vivim_export("trt", "tiny.safetensors", "--fp16", "-o", "out/from_ckpt.engine", cwd=workdir)
    assert proc.returncode != 0 and "TensorRT is not installed" in proc.stderr
    assert not (workdir / "out" / "from_ckpt.onnx").exists()


def test_missing_checkpoint_is_one_line_error(workdir):
    proc = vivim_export("onnx", "missing.safetensors", "-o", "out/x.onnx", cwd=workdir)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: missing.safetensors: checkpoint not found"]


runner = CliRunner()


def _error(args: list[str]) -> BaseException:
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    return result.exception


def test_cli_error_paths_in_process(workdir, exported_onnx):
    (workdir / "foreign.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}       ")
    cases = [
        (["onnx", str(workdir / "foreign.safetensors"), "-o", str(workdir / "x.onnx")], "foreign.safetensors"),
        (["onnx", str(workdir / "tiny.safetensors"), "-o", str(workdir / "tiny.safetensors" / "x.onnx")], "tiny.safetensors is a file, not a folder"),
        (["onnx", str(workdir / "tiny.safetensors"), "--output-frame", "middle"], "--output-frame"),
        (["onnx", str(workdir / "tiny.safetensors"), "-o", str(workdir / "models") + "/"],
         f"-o {workdir / 'models'}: an ONNX file name ends in .onnx (for a folder, give {workdir / 'models' / 'model.onnx'})"),
        (["onnx", str(workdir / "tiny.safetensors"), "-o", str(workdir / "tiny.safetensors")], "is the input CHECKPOINT"),
        (["check", "demo", "--onnx", str(workdir / "tiny.safetensors"), "--json", str(workdir / "tiny.safetensors")],
         "is the input --onnx"),
        (["onnx", str(workdir / "tiny.safetensors"), "-o", str(workdir / "t0.onnx"), "--frames", "0"],
         "--frames must be at least 1, got 0"),
        (["onnx", str(workdir / "tiny.safetensors"), "-o", str(workdir / "o.onnx"), "--opset", "12"], "--opset 12: choose 18.."),
        (["onnx", str(workdir / "tiny.safetensors"), "-o", str(workdir / "o.onnx"), "--opset", "99"], "--opset 99: choose 18.."),
        # one past what the installed onnx and onnxscript can convert to: refused before the model loads
        (["onnx", str(workdir / "tiny.safetensors"), "-o", str(workdir / "o.onnx"), "--opset",
          str(newest_convertible_opset() + 1)], f"--opset {newest_convertible_opset() + 1}: choose 18.."),
        (["check", str(workdir / "tiny.safetensors"), "--onnx", str(workdir / "none.onnx")], "none.onnx"),
        (["check", str(workdir / "tiny.safetensors"), "--onnx", str(workdir)], "is a folder, not a file"),
        (["check", str(workdir / "tiny.safetensors"), "--onnx", str(workdir / "none.onnx"), "--atol", "-1"],
         "--atol must be 0 or more"),
        (["check", str(workdir / "tiny.safetensors"), "--onnx", str(workdir / "none.onnx"), "--min-dice", "2"],
         "--min-dice must be within [0, 1]"),
        (["check", str(workdir / "tiny.safetensors"), "--onnx", str(workdir / "tiny.safetensors")], "tiny.safetensors"),
        # paths and values are checked before TensorRT: the rerun it prints after installing must not fail on them
        (["trt", str(workdir / "none.onnx"), "--fp16", "-o", str(workdir / "m.engine")], "none.onnx: no such file"),
        (["trt", str(workdir / "dummy.onnx"), "-o", str(workdir / "tiny.safetensors" / "m.engine")],
         "tiny.safetensors is a file, not a folder"),
        (["trt", str(workdir / "dummy.onnx"), "-o", str(workdir / "m.engine")], "dummy.onnx: not a readable ONNX model"),
        (["trt", str(exported_onnx), "--fp16", "-o", str(workdir / "m.engine"), "--plugin", str(workdir / "nosuch.so")],
         "--plugin " + str(workdir / "nosuch.so") + ": no such file"),
        (["trt", str(exported_onnx), "--fp16", "-o", str(workdir / "m.engine"), "--workspace", "nan"],
         "--workspace nan: must be a number of GiB, at least 1 MiB"),
        (["trt", str(exported_onnx), "--fp16", "-o", str(workdir / "m.engine"), "--workspace", "1e-12"],
         "--workspace 1e-12: must be a number of GiB, at least 1 MiB"),
        # from a checkpoint, the ONNX exported beside the engine would replace a file of that name: only its own
        (["trt", str(workdir / "tiny.safetensors"), "-o", str(workdir / "dummy.engine")],
         f"-o: {workdir / 'dummy.onnx'} exists and was not exported from {workdir / 'tiny.safetensors'}"),
        (["trt", "demo", "--fp16", "-o", str(exported_onnx.with_suffix(".engine"))],
         f"-o: {exported_onnx} exists and was not exported from demo"),
        (["trt", str(workdir / "tiny.safetensors"), "--fp16", "-o", str(exported_onnx.with_suffix(".engine"))],
         "TensorRT is not installed" if not tensorrt_installed() else "plugin"),  # the same checkpoint's: replaced
        (["trt", str(exported_onnx), "--fp16", "-o", str(workdir / "my engines" / "m.engine")],
         f"then rerun vivim-export trt {shlex.quote(str(exported_onnx))} --fp16 -o "
         f"'{workdir / 'my engines' / 'm.engine'}'" if not tensorrt_installed() else "plugin"),
    ]
    (workdir / "dummy.onnx").write_bytes(b"not an ONNX protobuf")
    for args, needle in cases:
        exc = _error(args)
        assert isinstance(exc, VivimError) and needle in str(exc), (args, exc)
        assert "\n" not in str(exc)


def test_trt_refuses_a_timing_cache_that_is_another_output_or_an_input(workdir):
    """The timing cache is rewritten after the build: it may not be the engine, its sidecar or an input. Checked
    before TensorRT is looked for, so this runs on a machine without it too."""
    plugin = workdir / "libfake_plugin.so"
    plugin.write_bytes(b"")
    (workdir / "some.onnx").write_bytes(b"not parsed before the paths are checked")
    base = ["trt", str(workdir / "some.onnx"), "--fp16", "-o", str(workdir / "m.engine"), "--plugin", str(plugin)]
    for cache, needle in ((workdir / "m.engine", "is also the output of -o"),
                          (workdir / "m.engine.json", "is also the output of -o (sidecar)"),
                          (plugin, "is the input --plugin"),
                          (workdir, "is a folder, not a file name")):
        exc = _error([*base, "--timing-cache", str(cache)])
        assert isinstance(exc, VivimError) and "--timing-cache" in str(exc) and needle in str(exc), (cache, exc)
    # from a checkpoint, the ONNX exported beside the engine is an output too
    exc = _error(["trt", str(workdir / "tiny.safetensors"), "-o", str(workdir / "m.engine"), "--plugin", str(plugin),
                  "--timing-cache", str(workdir / "m.onnx")])
    assert isinstance(exc, VivimError) and "is also the output of -o (ONNX exported first)" in str(exc), exc
    assert not (workdir / "m.engine").exists() and not (workdir / "m.onnx").exists()


def test_plugin_build_errors_surface_as_one_line(workdir, tmp_path):
    """Without nvcc/CMake/TensorRT headers (CPU CI) the plugin command fails with one readable line."""
    exc = _error(["plugin", "-o", str(tmp_path / "plug"), "--tensorrt-include", str(tmp_path / "no_headers")])
    assert isinstance(exc, VivimError) and "\n" not in str(exc)


def test_demo_checkpoint_is_accepted():
    """`CHECKPOINT` may be `demo`: it resolves to the packaged weights (export itself is covered above)."""
    from vivim.export.onnx_export import load_model

    from vivim.checkpoint import resolve_checkpoint
    from vivim.errors import CheckpointError

    try:
        path = resolve_checkpoint("demo")
    except CheckpointError as exc:
        pytest.skip(f"demo weights not packaged in this checkout: {exc}")
    model, metadata, resolved = load_model("demo")
    assert resolved == path and metadata["variant"] == model.config.name


@pytest.mark.parametrize("signame, code, said", [("SIGTERM", 143, "terminated (SIGTERM)"), ("SIGHUP", 129, "hung up (SIGHUP)")])
def test_a_stop_signal_during_an_export_is_said_and_leaves_nothing(tmp_path, signame, code, said):
    """A service manager's stop (SIGTERM) or a dropped SSH session (SIGHUP) ends a command as Ctrl-C does: one
    line, the shell's exit status for it, no half-written file and no folder the checks created."""
    import signal
    import time

    out = tmp_path / "new" / "sub" / "model.onnx"
    proc = subprocess.Popen([sys.executable, "-m", "vivim.export.cli", "onnx", "demo", "-o", str(out)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not out.parent.is_dir():  # the flag checks made it: the export has begun
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(getattr(signal, signame))
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode == 0:
        pytest.skip("the export finished before the signal arrived")
    assert proc.returncode == code and stderr.strip().splitlines()[-1] == said, stderr
    assert "Traceback" not in stderr and not (tmp_path / "new").exists()
