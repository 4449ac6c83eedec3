"""`vivim-run` end to end on the CPU: synthetic video in, N masks out, errors as one line, Ctrl-C, no torch."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from vivim.errors import VivimError
from vivim.runtime.app import run
from vivim.runtime.config import RunConfig
from vivim.runtime.sources import opencv_has_gstreamer
from vivim.runtime.stats import format_summary

torch = pytest.importorskip("torch")
import vivim  # noqa: E402

N_FRAMES = 9
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # 2 shared CI cores

BLOCK_TORCH = """
import importlib.abc, sys
class _BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test: " + name)
        return None
sys.meta_path.insert(0, _BlockTorch())
"""



@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("runtime_app")


@pytest.fixture(scope="module")
def checkpoint(workdir):
    torch.manual_seed(0)
    model = vivim.create_model("tiny", frames=5, img_size=32)
    path = workdir / "tiny32.safetensors"
    vivim.save_checkpoint(model, path)
    return str(path)


def write_clip(path, n=N_FRAMES, size=(48, 40), fps=10.0):
    """A bright disc moving over a speckled background (an ultrasound-ish synthetic clip)."""
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    for k in range(n):
        image = rng.integers(20, 60, size=(size[1], size[0], 3), dtype=np.uint8)
        cv2.circle(image, (10 + 3 * k, size[1] // 2), 8, (220, 220, 220), -1)
        writer.write(image)
    writer.release()
    return str(path)


@pytest.fixture(scope="module")
def clip(workdir):
    return write_clip(workdir / "clip.mp4")


def count_frames(path):
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    n = 0
    while capture.read()[0]:
        n += 1
    capture.release()
    return n


def cfg(**sections):
    return RunConfig.build(None, sections)


@pytest.mark.parametrize("output_frame, threshold", [("centre", 0.5), ("newest", 0.45)])
def test_synthetic_video_end_to_end(tmp_path, checkpoint, clip, output_frame, threshold):
    out = tmp_path / "run"
    lines = []
    summary = run(
        cfg(
            source={"kind": "video", "location": clip},
            backend={"kind": "checkpoint", "model": checkpoint, "device": "cpu", "output_frame": output_frame,
                     "threshold": threshold},
            sink={"headless": True, "save": str(out / "overlay.mp4"), "save_masks": str(out / "masks"),
                  "stats": str(out / "stats.json"), "strip": str(out / "strip.png")},
        ),
        log=lines.append,
        out=lines.append,
    )
    assert count_frames(out / "overlay.mp4") == N_FRAMES  # N frames in -> N frames in the overlay video
    capture = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0, abs=0.01)  # plays at the source's rate
    capture.release()
    masks = sorted(p.name for p in (out / "masks").glob("*.png"))
    assert masks == [f"{k:06d}.png" for k in range(N_FRAMES)]  # ... and N masks, one per frame index
    stats = json.loads((out / "stats.json").read_text())
    assert stats["frames_captured"] == stats["frames_processed"] == N_FRAMES and stats["frames_dropped"] == 0
    assert stats["fps"] > 0 and set(stats["latency_ms"]) >= {"p50", "p90", "p99"}
    assert stats["latency_ms"]["p50"] <= stats["latency_ms"]["p90"] <= stats["latency_ms"]["p99"]
    assert stats["backend"] == "pytorch" and stats["device"] == "cpu" and stats["output_frame"] == output_frame
    assert stats["lag_frames"] == (2 if output_frame == "centre" else 0)
    assert summary == stats
    assert cv2.imread(str(out / "strip.png")).shape[0] == 192
    assert any("latency" in line for line in lines)
    # overlay frame k shows frame k: the video matches the source plus the drawn mask, never a lagged frame
    source, overlay = cv2.VideoCapture(clip), cv2.VideoCapture(str(out / "overlay.mp4"))
    for k in range(N_FRAMES):
        a, b = source.read()[1], overlay.read()[1]
        mask = cv2.imread(str(out / "masks" / f"{k:06d}.png"), cv2.IMREAD_GRAYSCALE) > 0
        keep = ~cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        keep[:60, :] = False  # the HUD
        if keep.any():
            assert np.abs(a[keep].astype(int) - b[keep].astype(int)).mean() < 12, k
    source.release()
    overlay.release()
    # mask k is the model's answer for frame k: the clamped window around it, decoded at the output index
    index = 4 if output_frame == "newest" else 2
    expected = _reference_masks(checkpoint, clip, index, threshold)
    if threshold != 0.5:  # the check must tell the thresholds apart
        assert np.mean([(a != b).mean() for a, b in zip(expected, _reference_masks(checkpoint, clip, index, 0.5))]) > 0.02
    for k in range(N_FRAMES):
        saved = cv2.imread(str(out / "masks" / f"{k:06d}.png"), cv2.IMREAD_GRAYSCALE) > 0
        assert (saved == expected[k]).mean() > 0.99, k


def _decode_frames(clip):
    """Every frame of a video file, decoded with OpenCV."""
    capture, frames = cv2.VideoCapture(clip), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def _reference_masks(checkpoint, clip, index, threshold=0.5):
    """Per source frame, the mask of model(window) built here: frames decoded with OpenCV, the window clamped at
    both ends of the video, the model's own resize and normalisation, logits upsampled, sigmoid > threshold."""
    from vivim.runtime.preprocess import Normalization, preprocess

    model, meta = vivim.load_checkpoint(checkpoint)
    model.eval()
    frames = _decode_frames(clip)
    norm = Normalization(tuple(meta["normalization"]["mean"]), tuple(meta["normalization"]["std"]))
    pre = [torch.from_numpy(preprocess(f, model.img_size, norm, meta["resize"])) for f in frames]
    n, t = len(frames), model.frames
    masks = []
    with torch.inference_mode():
        for k in range(n):
            window = torch.stack([pre[min(max(k - index + j, 0), n - 1)] for j in range(t)])[None]
            logits = model(window, output_frame=index)[0, 0, 0].numpy()
            height, width = frames[k].shape[:2]
            probability = 1.0 / (1.0 + np.exp(-cv2.resize(logits, (width, height), interpolation=cv2.INTER_LINEAR)))
            masks.append(probability > threshold)
    return masks


DEMO_CLIP = os.path.join(os.path.dirname(vivim.__file__), "assets", "demo_clip.mp4")


@pytest.mark.skipif(not os.path.isfile(DEMO_CLIP), reason="bundled demo clip not present")
def test_bundled_demo_clip_with_demo_weights(tmp_path):
    """What `make demo` runs, on the first frames: the shipped weights find the lesion on the shipped clip."""
    summary = run(
        cfg(source={"kind": "video", "location": DEMO_CLIP, "max_frames": 8},
            backend={"kind": "checkpoint", "model": "demo", "device": "cpu"},
            sink={"headless": True, "quiet": True, "save_masks": str(tmp_path / "m"), "strip": str(tmp_path / "s.png")}),
        log=lambda m: None,
    )
    assert summary["frames_processed"] == 8 and summary["model"] == "demo"
    fractions = [(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 0).mean() for p in sorted((tmp_path / "m").glob("*.png"))]
    assert all(0.005 < f < 0.5 for f in fractions), fractions  # a lesion-sized mask, neither empty nor everything


def test_loop_with_max_frames_and_config_file(tmp_path, checkpoint, clip):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"source: {{kind: video, location: {clip}, loop: true, max_frames: 14}}\n"
        f"backend: {{kind: checkpoint, model: {checkpoint}, device: cpu}}\n"
        "overlay: {contour: false, color: '#ff0000', hud: false}\n"
        f"sink: {{headless: true, save_masks: {tmp_path / 'masks'}, quiet: true}}\n"
    )
    summary = run(RunConfig.build(str(config), {"backend": {"output_frame": "newest"}}), log=lambda m: None)
    assert summary["frames_processed"] == 14 and summary["output_frame"] == "newest"
    assert len(list((tmp_path / "masks").glob("*.png"))) == 14


def test_image_folder_end_to_end(tmp_path, checkpoint):
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for k in range(4):
        cv2.imwrite(str(folder / f"img_{k:03d}.png"), rng.integers(0, 256, size=(36, 44), dtype=np.uint8))  # grey
    summary = run(
        cfg(source={"kind": "frames", "location": str(folder)},
            backend={"kind": "checkpoint", "model": checkpoint, "device": "cpu", "output_frame": "centre"},
            sink={"headless": True, "quiet": True, "save_masks": str(tmp_path / "masks")}),
        log=lambda m: None,
    )
    assert summary["frames_processed"] == 4 and summary["source"].startswith("frames")
    shapes = {cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).shape for p in (tmp_path / "masks").glob("*.png")}
    assert shapes == {(36, 44)}  # masks at the frame's own resolution


def test_masks_of_a_frame_folder_are_named_after_its_images(tmp_path, checkpoint, clip):
    # the clip's frames as lossless images numbered without padding (us_2 before us_10); mask us_k.png must be the
    # reference mask of frame k, whatever the file order on disk
    frames = _decode_frames(clip)
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in np.random.default_rng().permutation(len(frames)):
        cv2.imwrite(str(folder / f"us_{k}.png"), frames[k])
    masks = tmp_path / "masks"
    settings = dict(backend={"kind": "checkpoint", "model": checkpoint, "device": "cpu", "output_frame": "centre"},
                    sink={"headless": True, "quiet": True, "save_masks": str(masks)})
    run(cfg(source={"kind": "frames", "location": str(folder)}, **settings), log=lambda m: None)
    assert sorted(p.name for p in masks.glob("*.png")) == sorted(f"us_{k}.png" for k in range(len(frames)))
    expected = _reference_masks(checkpoint, clip, 2)
    for k in range(len(frames)):
        saved = cv2.imread(str(masks / f"us_{k}.png"), cv2.IMREAD_GRAYSCALE) > 0
        assert (saved == expected[k]).mean() > 0.99, k
    # a later run into the same folder replaces these masks with its own, named by capture index
    run(cfg(source={"kind": "video", "location": clip, "max_frames": 3}, **settings), log=lambda m: None)
    assert sorted(p.name for p in masks.glob("*.png")) == ["000000.png", "000001.png", "000002.png"]
    # images sharing a stem cannot name their masks: capture index, said once
    cv2.imwrite(str(folder / "us_0.jpg"), frames[0])
    notes = []
    run(cfg(source={"kind": "frames", "location": str(folder), "max_frames": 2}, **settings), log=notes.append)
    assert sorted(p.name for p in masks.glob("*.png")) == ["000000.png", "000001.png"]
    assert any("several images are named us_0.*" in line for line in notes)


def test_a_looped_frame_folder_keeps_one_mask_per_image(tmp_path, checkpoint):
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(3):
        cv2.imwrite(str(folder / f"f{k}.png"), np.full((32, 32, 3), 60 * k, np.uint8))
    notes = []
    summary = run(cfg(source={"kind": "frames", "location": str(folder), "loop": True, "max_frames": 7},
                      backend={"kind": "checkpoint", "model": checkpoint, "device": "cpu"},
                      sink={"headless": True, "quiet": True, "save_masks": str(tmp_path / "masks")}), log=notes.append)
    assert summary["frames_processed"] == 7
    assert sorted(p.name for p in (tmp_path / "masks").glob("*.png")) == ["f0.png", "f1.png", "f2.png"]
    (folder / "F1.jpg").write_bytes((folder / "f1.png").read_bytes())  # one mask file where names ignore case
    run(cfg(source={"kind": "frames", "location": str(folder), "max_frames": 2},
            backend={"kind": "checkpoint", "model": checkpoint, "device": "cpu"},
            sink={"headless": True, "quiet": True, "save_masks": str(tmp_path / "masks")}), log=notes.append)
    assert sorted(p.name for p in (tmp_path / "masks").glob("*.png")) == ["000000.png", "000001.png"]
    assert any("several images are named" in line for line in notes)


def test_a_folder_holding_masks_named_like_the_images_is_refused(tmp_path, checkpoint):
    # --save-masks pointed at the ground truth of the images being read: nothing may be overwritten
    folder, truth = tmp_path / "frames", tmp_path / "truth"
    folder.mkdir()
    truth.mkdir()
    for k in range(3):
        cv2.imwrite(str(folder / f"frame_{k}.jpg"), np.full((32, 32, 3), 40 * k, np.uint8))
    cv2.imwrite(str(truth / "frame_1.png"), np.full((32, 32), 255, np.uint8))
    with pytest.raises(VivimError, match=r"holds 1 mask-named file\(s\) \(e.g. frame_1.png\)"):
        run(cfg(source={"kind": "frames", "location": str(folder)},
                backend={"kind": "checkpoint", "model": checkpoint, "device": "cpu"},
                sink={"headless": True, "quiet": True, "save_masks": str(truth)}), log=lambda m: None)
    assert sorted(p.name for p in truth.iterdir()) == ["frame_1.png"]
    assert (cv2.imread(str(truth / "frame_1.png"), cv2.IMREAD_GRAYSCALE) == 255).all()


def test_realtime_video_behaves_like_a_live_source(tmp_path, checkpoint, workdir):
    fast = write_clip(workdir / "fast.mp4", n=30, fps=200.0)  # faster than the CPU model: frames must drop
    summary = run(
        cfg(source={"kind": "video", "location": fast, "realtime": True},
            backend={"kind": "checkpoint", "model": checkpoint, "device": "cpu"},
            sink={"headless": True, "quiet": True, "stats": str(tmp_path / "s.json")}),
        log=lambda m: None,
    )
    assert summary["frames_captured"] == 30
    assert summary["frames_dropped"] > 0
    assert summary["frames_processed"] + summary["frames_dropped"] == 30
    assert summary["frames_unprocessed"] == 0  # a dropped frame is not one left in the queue at the end


def _cli(argv, capsys):
    from vivim.runtime.cli import main

    old, ctrl_c = sys.argv, signal.getsignal(signal.SIGINT)
    sys.argv = ["vivim-run", *argv]
    try:
        with pytest.raises(SystemExit) as info:
            main()
    finally:
        sys.argv = old
        signal.signal(signal.SIGINT, ctrl_c)  # main() is a process's end: a Ctrl-C after it exits at once
    captured = capsys.readouterr()
    return info.value.code, captured.err


def _error_cases(tmp_path, checkpoint, clip):
    from vivim.checkpoint import checkpoint_file

    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(5000))
    model = ["--checkpoint", checkpoint, "--device", "cpu"]
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    lonely = tmp_path / "lonely.engine"
    lonely.write_bytes(b"plan")
    (tmp_path / "m.engine.json").write_text(json.dumps({
        "schema": "vivim-engine/1", "gpu": {"name": "NVIDIA Jetson AGX Orin", "compute_capability": "8.7"},
        "tensorrt_version": "10.3.0.30", "engine": {"path": str(engine)}, "inputs": [], "outputs": [],
        "plugin": {"path": str(tmp_path / "libvivim_trt_plugin.so")},
    }))
    cases = [
        (["--video", str(tmp_path / "missing.mp4"), *model], "missing.mp4: no such file"),
        (["--video", clip, "--engine", str(lonely)], "sidecar not found"),
        (["--video", clip, "--engine", str(tmp_path / "nope.engine")], "nope.engine: no such file"),
        (["--video", str(corrupt), *model], "corrupt.mp4: cannot open"),
        (["--frames", str(tmp_path / "nodir"), *model], "nodir: no such folder"),
        (["--camera", "/dev/video97", *model], "/dev/video97: no such device"),
        (["--video", clip, "--checkpoint", str(tmp_path / "nope.safetensors")], "nope.safetensors: no such file"),
        (["--video", clip, "--onnx", str(tmp_path / "nope.onnx")], "nope.onnx: no such file"),
        (["--video", clip, "--engine", str(tmp_path / "m.engine"), "--device", "cpu"], "GPU only"),
        (["--video", clip, "--camera", "0", *model], "give one input"),
        (["--video", clip], "no model"),
        (["--video", clip, *model, "--color", "purple-ish"], "--color"),
        (["--video", clip, *model, "--output-frame", "middle"], "--output-frame"),
        (["--video", clip, *model, "--config", str(tmp_path / "none.yaml")], "--config"),
        # outputs over inputs: a recording or the frames being read must never be replaced or mixed into
        (["--video", clip, *model, "--save", clip], f"--save {clip}: is the input --video"),
        (["--frames", str(tmp_path), *model, "--save-masks", str(tmp_path / "masks")],
         "--save-masks " + str(tmp_path / "masks") + ": is inside the input --frames"),
        (["--video", clip, *model, "--stats", checkpoint], f"--stats {checkpoint}: is the input --checkpoint"),
        (["--video", clip, *model, "--checkpoint", str(tmp_path)], "is a folder, not a file"),
        (["--video", clip, *model, "--save", str(tmp_path / "o.mp4"), "--stats", str(tmp_path / "o.mp4")],
         "is also the output of --save"),
        (["--video", clip, "--checkpoint", "demo", "--device", "cpu", "--stats", checkpoint_file("demo")],
         "is the input --checkpoint"),
    ]
    cases.append((["--video", clip, "--engine", str(engine)], _expected_engine_refusal()))
    if not opencv_has_gstreamer():
        cases.append((["--gst", "videotestsrc ! appsink", *model], "no GStreamer support"))
    return cases


def _expected_engine_refusal():
    """What refuses an engine built for a Jetson Orin with TensorRT 10.3, depending on this machine."""
    import importlib.util

    try:
        import tensorrt

        has_trt = hasattr(tensorrt, "Runtime")
    except ImportError:
        has_trt = False
    if not has_trt:
        return "TensorRT is not installed"
    if importlib.util.find_spec("pycuda") is None:
        return "needs pycuda"
    from vivim.export.tensorrt_build import current_gpu

    if current_gpu() is None:
        return "no usable NVIDIA GPU"
    return "libvivim_trt_plugin.so not found"  # the plugin is checked before the GPU/TensorRT match


def test_every_error_is_one_line(tmp_path, checkpoint, clip, capsys):
    for argv, message in _error_cases(tmp_path, checkpoint, clip):
        code, err = _cli(argv, capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (argv, err)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (argv, err)


@pytest.mark.parametrize("name, head", [
    ("corrupt.mp4", b"\x00\x00\x00\x18ftypmp42"),
    ("corrupt.avi", b"RIFF\x00\x10\x00\x00AVI "),  # OpenCV's own AVI parser printed its complaints first
])
def test_error_in_a_subprocess_has_no_traceback(tmp_path, checkpoint, name, head):
    corrupt = tmp_path / name
    corrupt.write_bytes(head + os.urandom(3000))
    proc = subprocess.run(
        [sys.executable, "-m", "vivim.runtime.cli", "--video", str(corrupt), "--checkpoint", checkpoint, "--headless"],
        capture_output=True, text=True, env=ENV, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: --video {corrupt}: cannot open"), proc.stderr


@pytest.mark.parametrize("how", ["Ctrl-C", "Ctrl-C twice", "SSH session dropped"])
def test_ctrl_c_stops_cleanly_and_the_video_is_readable(tmp_path, checkpoint, clip, how):
    """Ctrl-C ends a live run with its files complete; so does a second Ctrl-C while the process ends, and SIGHUP
    from an SSH session that dropped (the terminal gone: writing to it fails, and must not cost the files)."""
    import pty

    out = tmp_path / "run"
    hang_up = how == "SSH session dropped"
    terminal, console = pty.openpty() if hang_up else (None, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vivim.runtime.cli", "--video", clip, "--loop", "--checkpoint", checkpoint,
         "--device", "cpu", "--headless", "--save", str(out / "overlay.mp4"), "--save-masks", str(out / "masks"),
         "--stats", str(out / "stats.json")],
        stdout=console or subprocess.PIPE, stderr=console or subprocess.PIPE, text=True, env=ENV,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a shell job may start pytest with it ignored
    )
    stdout = stderr = ""
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # wait until a few masks are out (the run would loop forever)
            if (out / "masks").is_dir() and len(list((out / "masks").glob("*.png"))) >= 3:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        if hang_up:
            os.close(console)
            os.close(terminal)  # the terminal's other end gone, as when sshd closes it: writes fail with EIO
            proc.send_signal(signal.SIGHUP)
            proc.wait(timeout=60)
        else:
            proc.send_signal(signal.SIGINT)
            if how == "Ctrl-C twice":
                while proc.poll() is None and not (out / "stats.json").exists():  # the run is ending
                    time.sleep(0.01)
                proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stopped_by"].startswith("hung up (SIGHUP)" if hang_up else "interrupted")
    assert stats["frames_processed"] >= 3
    assert count_frames(out / "overlay.mp4") == stats["frames_processed"]
    assert len(list((out / "masks").glob("*.png"))) == stats["frames_processed"]
    # every captured frame is accounted for, and the lagged frames in the window got their masks (centre mode)
    assert stats["frames_captured"] == stats["frames_processed"] + stats["frames_dropped"] + stats["frames_unprocessed"]
    last_pushed = max(int(p.stem) for p in (out / "masks").glob("*.png"))
    assert sorted(int(p.stem) for p in (out / "masks").glob("*.png")) == list(range(last_pushed + 1))
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temporary file left behind
    if not hang_up:
        assert "frames" in stdout and "latency" in stdout


def test_runtime_imports_without_torch():
    code = BLOCK_TORCH + (
        "import vivim, vivim.runtime\n"
        "from vivim.runtime import app, backends, backend_ort, backend_trt, cli, config, overlay, preprocess, ring, sinks, sources, stats\n"
        "assert 'torch' not in sys.modules\n"
        "try:\n"
        "    import torch\n"
        "except ImportError:\n"
        "    print('blocked ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "blocked ok" in proc.stdout


@pytest.fixture(scope="module")
def onnx_model(workdir, checkpoint):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxruntime_extensions")
    from vivim.export.onnx_export import export_onnx

    path = workdir / "tiny32.onnx"
    export_onnx(checkpoint, path, size=32, log=lambda m: None)  # one side: square, as create_model takes it
    return str(path)


def test_onnx_runtime_backend_without_torch_matches_pytorch(tmp_path, onnx_model, checkpoint, clip):
    out = tmp_path / "ort"
    code = BLOCK_TORCH + (
        "from vivim.runtime.cli import main\n"
        f"sys.argv = ['vivim-run', '--onnx', {onnx_model!r}, '--video', {clip!r}, '--device', 'cpu', '--headless',"
        f" '--save', {str(out / 'o.mp4')!r}, '--save-masks', {str(out / 'masks')!r}, '--stats', {str(out / 's.json')!r}]\n"
        "try:\n"
        "    main()\n"
        "finally:\n"
        "    assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((out / "s.json").read_text())
    assert stats["backend"] == "onnxruntime" and stats["frames_processed"] == N_FRAMES
    assert count_frames(out / "o.mp4") == N_FRAMES
    # same stream through the PyTorch backend: the masks agree
    run(cfg(source={"kind": "video", "location": clip},
            backend={"kind": "checkpoint", "model": checkpoint, "device": "cpu"},
            sink={"headless": True, "quiet": True, "save_masks": str(tmp_path / "torch_masks")}), log=lambda m: None)
    for k in range(N_FRAMES):
        a = cv2.imread(str(out / "masks" / f"{k:06d}.png"), cv2.IMREAD_GRAYSCALE)
        b = cv2.imread(str(tmp_path / "torch_masks" / f"{k:06d}.png"), cv2.IMREAD_GRAYSCALE)
        assert (a != b).mean() < 0.002, k  # pixels right at the threshold may flip


def test_a_graph_exported_the_other_way_round_is_warned_about(tmp_path, workdir, checkpoint, clip):
    """The clip is landscape (40x48, HxW): a graph exported portrait (--size 64x32, WxH given as HxW) squeezes every
    frame, which vivim-run says once; a landscape graph, or a square one, is not warned about."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxruntime_extensions")
    from vivim.export.onnx_export import export_onnx
    from vivim.runtime.app import turned_input_note

    for size, turned in (((64, 32), True), ((32, 64), False)):
        path = tmp_path / f"tiny{size[0]}x{size[1]}.onnx"
        export_onnx(checkpoint, path, size=size, log=lambda m: None)
        lines: list[str] = []
        run(cfg(source={"kind": "video", "location": clip}, backend={"kind": "onnx", "model": str(path), "device": "cpu"},
                sink={"headless": True, "quiet": True, "stats": str(tmp_path / "s.json")}), log=lines.append)
        said = [line for line in lines if "portrait against landscape" in line]
        assert len(said) == int(turned), lines
    assert said == [] and turned_input_note((64, 32), (40, 48, 3)) == (
        "the model takes 64x32 (HxW) inputs and the frames are 40x48: portrait against landscape, every frame is "
        "squeezed; was it exported with --size 32x64 in mind (vivim-export takes HxW)?")
    assert turned_input_note((32, 32), (40, 48, 3)) is None and turned_input_note((64, 32), (48, 48, 3)) is None


def _training_input(frame_bgr, size):
    """What vivim-train feeds the model for one frame: the dataset's resize, then its normalisation."""
    from vivim.data.transforms import normalise, resize_frame

    rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
    return normalise(resize_frame(rgb, size)[None])[0]


def test_runtime_resizes_frames_as_in_training(checkpoint):
    """The checkpoint records the training resize filter and the runtime uses it unless told otherwise, so a frame
    reaches the network with the same values as in training; another filter is allowed, with a note."""
    from vivim.checkpoint import read_metadata
    from vivim.constants import TRAIN_RESIZE
    from vivim.runtime.backend_torch import TorchBackend

    assert read_metadata(checkpoint)["resize"] == TRAIN_RESIZE
    frame = np.random.default_rng(11).integers(0, 256, size=(45, 70, 3), dtype=np.uint8)  # not a square, downscaled
    expected = _training_input(frame, 32)
    notes = []
    # without the stream cache, preprocess() returns the frame as the network receives it
    backend = TorchBackend.from_checkpoint(checkpoint, device="cpu", stream_cache=False, log=notes.append)
    assert backend.interpolation == TRAIN_RESIZE and backend.describe()["resize"] == TRAIN_RESIZE and not notes
    np.testing.assert_allclose(backend.preprocess(frame).numpy(), expected, atol=1e-5)

    other = "area" if TRAIN_RESIZE == "linear" else "linear"
    backend = TorchBackend.from_checkpoint(checkpoint, device="cpu", stream_cache=False, interpolation=other,
                                           log=notes.append)
    assert backend.interpolation == other and len(notes) == 1 and checkpoint in notes[0] and other in notes[0]
    assert np.abs(backend.preprocess(frame).numpy() - expected).max() > 0.05  # the filters really differ here


def test_exported_models_carry_the_resize_filter(onnx_model):
    import onnx

    from vivim.constants import TRAIN_RESIZE
    from vivim.runtime.backend_ort import OrtBackend

    props = {p.key: p.value for p in onnx.load(onnx_model, load_external_data=False).metadata_props}
    assert props["resize"] == TRAIN_RESIZE
    backend = OrtBackend(onnx_model, device="cpu", log=lambda m: None)
    assert backend.interpolation == TRAIN_RESIZE and backend.describe()["resize"] == TRAIN_RESIZE
    frame = np.random.default_rng(12).integers(0, 256, size=(45, 70, 3), dtype=np.uint8)
    np.testing.assert_allclose(backend.preprocess(frame), _training_input(frame, 32), atol=1e-5)


def test_models_without_a_recorded_filter_get_the_training_one():
    from vivim.constants import TRAIN_RESIZE, resize_from_metadata
    from vivim.runtime.preprocess import choose_resize

    assert resize_from_metadata(None) == TRAIN_RESIZE and resize_from_metadata("bicubic") == TRAIN_RESIZE
    assert resize_from_metadata("area") == "area" and resize_from_metadata("linear") == "linear"
    notes = []
    assert choose_resize(None, None, "--onnx old.onnx", notes.append) == TRAIN_RESIZE and not notes
    assert choose_resize("area", "area", "--onnx m.onnx", notes.append) == "area" and not notes
    assert choose_resize("linear", "area", "--onnx m.onnx", notes.append) == "linear"
    assert notes == ["note: --onnx m.onnx was trained on 'area'-resized frames; resizing with 'linear' as configured"]


def test_onnx_backend_logits_match_pytorch(onnx_model, checkpoint):
    from vivim.runtime.backend_ort import OrtBackend
    from vivim.runtime.backend_torch import TorchBackend

    ort_backend = OrtBackend(onnx_model, device="cpu")
    torch_backend = TorchBackend.from_checkpoint(checkpoint, device="cpu", log=lambda m: None)
    assert (ort_backend.frames, ort_backend.input_size) == (5, (32, 32)) and ort_backend.fixed_output_index is None
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8) for _ in range(5)]
    a = ort_backend.infer([ort_backend.preprocess(f) for f in frames], 2)
    b = torch_backend.infer([torch_backend.preprocess(f) for f in frames], 2)
    np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-3)


def test_output_frame_must_match_a_single_frame_graph(tmp_path, onnx_model, checkpoint, clip):
    """A graph exported for one output frame refuses the other policy with a one-line error."""
    import onnx

    from vivim.runtime.backends import output_index_from_metadata

    meta = {p.key: p.value for p in onnx.load(onnx_model, load_external_data=False).metadata_props}
    assert meta["output_frame"] == "all"
    assert output_index_from_metadata({"output_frame": "centre"}, 5, 1) == 2
    assert output_index_from_metadata({"output_frame": "newest"}, 5, 1) == 4
    assert output_index_from_metadata({"output_frame": "all"}, 5, 5) is None
    assert output_index_from_metadata({"output_frame": "all"}, 1, 1) is None  # T = 1 exported with all frames
    with pytest.raises(VivimError, match="the model metadata's output_frame must be centre, newest"):
        output_index_from_metadata({"output_frame": "sideways"}, 5, 1)
    # and vivim-run refuses the other policy before the first frame (a mask drawn on the wrong frame otherwise)
    from vivim.export.onnx_export import export_onnx

    centre_only = tmp_path / "centre.onnx"
    export_onnx(checkpoint, centre_only, output_frame="centre", log=lambda m: None)
    with pytest.raises(VivimError, match="--output-frame newest: this model decodes clip frame"):
        run(cfg(source={"kind": "video", "location": clip},
                backend={"kind": "onnx", "model": str(centre_only), "output_frame": "newest"},
                sink={"headless": True, "quiet": True}), log=lambda m: None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("flags", [{}, {"cuda_graph": False}, {"fp16": True, "cuda_graph": True}])
def test_cuda_end_to_end(tmp_path, checkpoint, clip, flags):
    summary = run(
        cfg(source={"kind": "video", "location": clip},
            backend={"kind": "checkpoint", "model": checkpoint, "device": "cuda", **flags},
            sink={"headless": True, "quiet": True, "save": str(tmp_path / "o.mp4"), "save_masks": str(tmp_path / "m")}),
        log=print,
    )
    assert summary["frames_processed"] == N_FRAMES and summary["device"].startswith("cuda")
    assert summary["cuda_graph"] == flags.get("cuda_graph", True), "CUDA graphs: on by default, off when asked"
    print("CUDA run:", summary["scan_impl"], summary["precision"], summary["latency_ms"], summary["infer_ms"])
    assert count_frames(tmp_path / "o.mp4") == N_FRAMES


def test_first_ctrl_c_asks_to_stop_a_second_one_aborts():
    """In-process, with real signals: the first SIGINT sets the flag (the loop ends after the current frame), the
    second raises KeyboardInterrupt; the previous handlers come back afterwards."""
    from vivim.graceful_stop import GracefulStop

    before = signal.getsignal(signal.SIGINT)
    lines = []
    with GracefulStop(lines.append) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and "Ctrl-C again to abort" in lines[0] and stop.reason == "interrupted (Ctrl-C)"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    with GracefulStop(lines.append) as stop:  # a service manager's stop: said as such in the summary
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.reason == "terminated (SIGTERM)" and lines[-1].startswith("SIGTERM: stopping")


def test_once_the_run_is_over_ctrl_c_is_what_the_caller_asked_for():
    """vivim-run asks for SIGINT to be ignored from the moment its files are closed: what is left is the process's
    end, and a Ctrl-C there killed it without a word (exit -2). A library caller gets its own handler back."""
    from vivim.graceful_stop import GracefulStop

    before = signal.getsignal(signal.SIGINT)
    try:
        with GracefulStop(lambda m: None, signal.SIG_IGN):
            assert signal.getsignal(signal.SIGINT) not in (before, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)  # ignored: nothing raised
        time.sleep(0.05)
    finally:
        signal.signal(signal.SIGINT, before)
    with GracefulStop(lambda m: None):
        pass
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_while_the_files_are_closed_does_not_abort():
    """Once the run closes its files, a further Ctrl-C only says to wait: aborting then would lose the video."""
    from vivim.graceful_stop import GracefulStop

    lines = []
    with GracefulStop(lines.append) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        stop.finishing()
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt before finishing()
    assert lines[-2:] == ["finishing the last masks and the output files, one moment"] * 2


def test_a_failed_run_is_recorded_as_an_error(tmp_path, checkpoint):
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(4):
        cv2.imwrite(str(folder / f"{k:03d}.png"), np.full((24, 32, 3), 40 * k, np.uint8))
    (folder / "004.png").write_bytes(b"not a png")
    with pytest.raises(VivimError, match="004.png: unreadable image"):
        run(cfg(source={"kind": "frames", "location": str(folder)},
                backend={"kind": "checkpoint", "model": checkpoint, "device": "cpu"},
                sink={"headless": True, "quiet": True, "stats": str(tmp_path / "s.json")}), log=lambda m: None)
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["stopped_by"] == "error" and "004.png: unreadable image" in stats["error"]
    assert stats["frames_processed"] == 4  # the frames before the bad one still got their masks


def test_a_video_that_stops_decoding_early_is_not_a_normal_end(tmp_path, checkpoint):
    from vivim.data.image_io import write_video

    rng = np.random.default_rng()
    video = tmp_path / "damaged.mp4"
    write_video(video, [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(60)], fps=25.0)
    data = bytearray(video.read_bytes())
    start = len(data) // 3
    data[start:start + len(data) // 3] = bytes(len(data) // 3)  # zero the middle third of the frame data
    video.write_bytes(bytes(data))
    lines = []
    summary = run(cfg(source={"kind": "video", "location": str(video)},
                      backend={"kind": "checkpoint", "model": checkpoint, "device": "cpu"},
                      sink={"headless": True, "quiet": True}), log=lines.append)
    assert summary["frames_captured"] < 58
    assert summary["stopped_by"] == "input ended early"
    assert any(f"decoding stopped at frame {summary['frames_captured']} of the 60" in line for line in lines), lines
    assert "stopped   input ended early" in format_summary(summary).splitlines()  # printed, not only in --stats


def test_a_warning_during_the_progress_bar_gets_a_line_of_its_own(monkeypatch):
    """The capture thread warns (a truncated video) while the bar is drawn; the bar's next redraw on the same line
    used to overwrite the warning on a terminal."""
    import io

    from tqdm import tqdm

    from vivim.progress import stderr_line

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with tqdm(total=60, desc="vivim-run", file=err, mininterval=0) as bar:
        bar.update(15)
        stderr_line("warning: video half.avi: decoding stopped at frame 22")
        bar.update(7)
    text = err.getvalue()
    at = text.index("warning: video half.avi")
    assert text[at - 1] in "\r\n", repr(text[max(0, at - 40):at + 5])  # the bar's line was cleared first


def test_ctrl_c_twice_while_run_finishes_keeps_the_summary_and_files(tmp_path, checkpoint, clip):
    """run() itself shields its closing steps: two Ctrl-C during them (here from the model's close) lose nothing."""
    from vivim.runtime.backends import create_backend

    config = cfg(source={"kind": "video", "location": clip},
                 backend={"kind": "checkpoint", "model": checkpoint, "device": "cpu"},
                 sink={"headless": True, "quiet": True, "save": str(tmp_path / "o.mp4"), "stats": str(tmp_path / "s.json")})
    backend = create_backend(config.backend, config.preprocess.interpolation, log=lambda m: None)
    close = backend.close

    def close_under_ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # before the shield, the second one raised KeyboardInterrupt here
        close()

    backend.close = close_under_ctrl_c
    lines = []
    summary = run(config, backend=backend, log=lines.append)
    assert lines.count("finishing the last masks and the output files, one moment") == 2
    assert json.loads((tmp_path / "s.json").read_text()) == summary and summary["stopped_by"] == "end of input"
    assert count_frames(tmp_path / "o.mp4") == summary["frames_processed"] == N_FRAMES


def test_the_output_frame_defaults_to_the_one_the_model_was_trained_for(tmp_path, clip):
    """A model trained with vivim-train --output-frame newest was run on the centre frame, with T//2 frames of lag,
    unless the flag was repeated; vivim-eval already took the checkpoint's. Now the metadata decides by default,
    for a checkpoint and for its ONNX export of all frames; a flag still overrides it."""
    torch.manual_seed(0)
    newest = tmp_path / "newest.safetensors"
    vivim.save_checkpoint(vivim.create_model("tiny", frames=5, img_size=32), newest, output_frame="newest")

    def summary(model: dict, **backend) -> dict:
        return run(cfg(source={"kind": "video", "location": clip},
                       backend={"device": "cpu", **model, **backend}, sink={"headless": True, "quiet": True}),
                   log=lambda m: None)

    checkpoint = {"kind": "checkpoint", "model": str(newest)}
    assert (summary(checkpoint)["output_frame"], summary(checkpoint)["lag_frames"]) == ("newest", 0)
    assert summary(checkpoint, output_frame="centre")["lag_frames"] == 2
    lines = []  # asked for a frame it was not trained to segment: said, not refused
    run(cfg(source={"kind": "video", "location": clip}, backend={"device": "cpu", **checkpoint, "output_frame": "centre"},
            sink={"headless": True, "quiet": True}), log=lines.append)
    assert any(line.startswith(f"warning: {newest} was trained to segment the newest frame of its clip; "
                               "--output-frame centre asks for another") for line in lines), lines
    default = tmp_path / "default.safetensors"  # no output_frame in its metadata: the paper's centre
    vivim.save_checkpoint(vivim.create_model("tiny", frames=5, img_size=32), default)
    assert summary({"kind": "checkpoint", "model": str(default)})["output_frame"] == "centre"

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxruntime_extensions")
    from vivim.export.onnx_export import export_onnx

    onnx_path = tmp_path / "newest_all.onnx"
    export_onnx(str(newest), onnx_path, output_frame="all", log=lambda m: None)
    assert summary({"kind": "onnx", "model": str(onnx_path)})["output_frame"] == "newest"
    # a one-frame graph can decode only its own frame: that is the default, whatever the model was trained for
    one_frame = tmp_path / "newest_as_centre.onnx"
    export_onnx(str(newest), one_frame, output_frame="centre", log=lambda m: None)
    assert summary({"kind": "onnx", "model": str(one_frame)})["output_frame"] == "centre"
    # ... and said to be a frame its model was not trained for; asking for the graph's own frame by flag is said too,
    # naming the trained frame (not the graph's, as before)
    for flag in (None, "centre"):
        lines = []
        run(cfg(source={"kind": "video", "location": clip}, sink={"headless": True, "quiet": True},
                backend={"device": "cpu", "kind": "onnx", "model": str(one_frame), "output_frame": flag}), log=lines.append)
        said = [line for line in lines if "trained to segment" in line]
        assert len(said) == 1 and "trained to segment the newest frame" in said[0], lines
    lines = []  # the graph of the frame it was trained for: nothing to say
    newest_graph = tmp_path / "newest_one.onnx"
    export_onnx(str(newest), newest_graph, output_frame="newest", log=lambda m: None)
    run(cfg(source={"kind": "video", "location": clip}, sink={"headless": True, "quiet": True},
            backend={"device": "cpu", "kind": "onnx", "model": str(newest_graph)}), log=lines.append)
    assert not [line for line in lines if "trained to segment" in line], lines
    # the caller's config is not rewritten: a second run with another model picks that model's frame
    config = cfg(source={"kind": "video", "location": clip}, backend={"device": "cpu", **checkpoint},
                 sink={"headless": True, "quiet": True})
    assert run(config, log=lambda m: None)["output_frame"] == "newest" and config.backend.output_frame is None


def test_a_backend_the_run_created_is_closed_when_set_up_fails(tmp_path, checkpoint, clip, monkeypatch):
    """The TensorRT backend holds a CUDA context and device buffers: a refusal after it was created (here the
    model's own frame against --output-frame, as a one-frame engine gives) must release them. run() owns the
    backend, a caller's too, as it does when the run ends."""
    import vivim.runtime.app as app
    from vivim.runtime.backends import create_backend

    closed = []

    def one_frame_backend(*args, **kwargs):
        backend = create_backend(*args, **kwargs)
        backend.fixed_output_index = 0  # decodes clip frame 0 only
        real_close = backend.close
        backend.close = lambda: (closed.append(True), real_close())
        return backend

    monkeypatch.setattr(app, "create_backend", one_frame_backend)
    config = cfg(source={"kind": "video", "location": clip},
                 backend={"kind": "checkpoint", "model": checkpoint, "device": "cpu", "output_frame": "newest"},
                 sink={"headless": True, "quiet": True})
    with pytest.raises(VivimError, match="decodes clip frame 0 only"):
        run(config, log=lambda m: None)
    assert closed == [True]
    mine = one_frame_backend(config.backend, config.preprocess.interpolation, log=lambda m: None)
    closed.clear()
    with pytest.raises(VivimError, match="decodes clip frame 0 only"):
        run(config, backend=mine, log=lambda m: None)
    assert closed == [True]


def _tiny_graph(path, input_shape, metadata=None, op=("Identity", "")):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node(op[0], ["x"], ["y"], domain=op[1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, input_shape)])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(op[1], 1)] if op[1] else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.save(model, str(path))
    return str(path)


def test_onnx_files_the_runtime_cannot_use_are_one_line_errors(tmp_path, onnx_model):
    """An empty file (no graph), a graph from elsewhere (no Vivim metadata: it would run and draw meaningless
    masks) and a graph without 3 colour channels are refused before the run, naming the file."""
    from vivim.runtime.backend_ort import OrtBackend

    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    meta = {"frames": "5", "img_size": "32", "output_frame": "all",
            "normalization": json.dumps({"mean": [0.5] * 3, "std": [0.25] * 3})}
    cases = [(str(empty), "empty.onnx: not a readable ONNX model (no graph)"),
             (_tiny_graph(tmp_path / "foreign.onnx", [1, 5, 3, 32, 32]),
              "foreign.onnx: no Vivim metadata (frames, img_size, output_frame, normalization missing)"),
             (_tiny_graph(tmp_path / "grey.onnx", [1, 5, 1, 32, 32], meta), "grey.onnx: input shape [1, 5, 1, 32, 32] is not")]
    for path, message in cases:
        with pytest.raises(VivimError, match=re.escape(message)) as error:
            OrtBackend(path, device="cpu", log=lambda m: None)
        assert "\n" not in str(error.value)


def test_a_foreign_graph_is_refused_before_its_session_is_built(tmp_path):
    """The metadata check comes first: a foreign graph with an op ONNX Runtime does not know gets the metadata
    error, not a session-build failure (and a large foreign graph costs no session build)."""
    from vivim.runtime.backend_ort import OrtBackend

    foreign = _tiny_graph(tmp_path / "foreign.onnx", [1, 5, 3, 32, 32], op=("NoSuchOp", "com.example"))
    with pytest.raises(VivimError, match=re.escape("foreign.onnx: no Vivim metadata")):
        OrtBackend(foreign, device="cpu", log=lambda m: None)


def test_threads_sets_onnx_runtime_s_cpu_threads(onnx_model):
    from vivim.runtime.backends import create_backend
    from vivim.runtime.config import BackendConfig

    config = BackendConfig(kind="onnx", model=onnx_model, device="cpu", threads=1)
    backend = create_backend(config, log=lambda m: None)  # the path vivim-run --threads takes
    assert backend.session.get_session_options().intra_op_num_threads == 1


def test_the_run_names_flags_its_input_does_not_use(tmp_path, checkpoint, clip):
    lines = []
    run(cfg(source={"kind": "video", "location": clip, "width": 640, "max_frames": 2},
            backend={"kind": "checkpoint", "model": checkpoint, "device": "cpu"}, sink={"headless": True, "quiet": True}),
        log=lines.append, out=lambda m: None)
    assert any(line.startswith("warning: --width set(s) the camera's capture mode; ignored for --video")
               for line in lines), lines


def test_a_disk_filling_up_ends_the_run_with_its_video_so_far(tmp_path, checkpoint, clip, monkeypatch):
    """The overlay video stops while it can still be finished: the run ends as an error, said once, its summary
    says so, and the frames written are a video that plays (the encoder may report it only when it is closed)."""
    import shutil

    from vivim.data.image_io import AtomicVideoWriter, DiskNearlyFull

    real_usage = shutil.disk_usage
    written = []
    real_write = AtomicVideoWriter.write

    def counting_write(self, bgr):
        real_write(self, bgr)
        written.append(1)

    monkeypatch.setattr(AtomicVideoWriter, "write", counting_write)
    monkeypatch.setattr(AtomicVideoWriter, "CHECK_EVERY", 2)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(
        free=AtomicVideoWriter.MIN_RESERVE // 2 if len(written) >= 4 else 10 * 2**30))
    lines = []
    with pytest.raises(DiskNearlyFull, match=r"the disk is nearly full .*: the video stops after 4 frames, which are kept$"):
        run(cfg(source={"kind": "video", "location": clip, "loop": True, "max_frames": 40},
                backend={"kind": "checkpoint", "model": checkpoint, "device": "cpu"},
                sink={"headless": True, "quiet": True, "save": str(tmp_path / "o.mp4"), "stats": str(tmp_path / "s.json")}),
            log=lines.append)
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["stopped_by"] == "error" and "the disk is nearly full" in stats["error"]
    assert not [line for line in lines if "nearly full" in line]  # the error is the run's, said once (by its caller)
    assert count_frames(tmp_path / "o.mp4") == 4


def test_the_pytorch_backend_gives_the_process_its_threads_back(checkpoint):
    """--threads (BackendConfig.threads) is the run's setting: a library caller's torch threads come back at close."""
    import torch

    from vivim.runtime.backends import create_backend
    from vivim.runtime.config import BackendConfig

    before = torch.get_num_threads()
    wanted = 1 if before > 1 else 2
    backend = create_backend(BackendConfig(kind="checkpoint", model=checkpoint, device="cpu", threads=wanted),
                             log=lambda m: None)
    try:
        assert torch.get_num_threads() == wanted
    finally:
        backend.close()
    assert torch.get_num_threads() == before
    assert backend.describe()["threads"] == wanted  # the run's, in the summary written after close()
