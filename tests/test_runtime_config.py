"""Run configuration: YAML sections per stage, flags override the file, clear errors for bad keys and values."""

from __future__ import annotations

import pytest

from vivim.errors import VivimError
from vivim.runtime.config import RunConfig

BASE = {"source": {"kind": "video", "location": "x.mp4"}, "backend": {"kind": "checkpoint", "model": "demo"}}


def test_yaml_sections_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "source: {kind: camera, location: /dev/video0, width: 1280, fourcc: MJPG}\n"
        "backend: {kind: onnx, model: m.onnx, output_frame: newest}\n"
        "overlay: {alpha: 0.3, contour: false, color: red}\n"
        "sink: {headless: true, stats: s.json}\n"
        "preprocess: {interpolation: linear}\n"
    )
    cfg = RunConfig.build(str(path))
    assert (cfg.source.kind, cfg.source.location, cfg.source.width, cfg.source.fourcc) == ("camera", "/dev/video0", 1280, "MJPG")
    assert cfg.backend.output_frame == "newest" and cfg.overlay.alpha == 0.3 and cfg.overlay.contour is False
    assert cfg.preprocess.interpolation == "linear"
    cfg = RunConfig.build(str(path), {"source": {"kind": "video", "location": "clip.mp4", "width": None},
                                      "overlay": {"contour": True, "alpha": None}, "backend": {"output_frame": "centre"}})
    assert (cfg.source.kind, cfg.source.location, cfg.source.width) == ("video", "clip.mp4", None)  # the camera's
    assert cfg.overlay.contour is True and cfg.overlay.alpha == 0.3 and cfg.backend.output_frame == "centre"


def test_a_flag_replaces_a_yaml_camera_index_with_a_file(tmp_path):
    """Types come from the fields, not from what the file set: location 0 (a YAML int) is text, and a flag's file
    name may follow it."""
    path = tmp_path / "camera.yaml"
    path.write_text("source: {kind: camera, location: 0, fps: 30}\nbackend: {kind: checkpoint, model: demo}\n")
    cfg = RunConfig.build(str(path))
    assert (cfg.source.kind, cfg.source.location, cfg.source.fps) == ("camera", "0", 30.0)
    cfg = RunConfig.build(str(path), {"source": {"kind": "video", "location": "clip.mp4"}})
    assert (cfg.source.kind, cfg.source.location) == ("video", "clip.mp4")
    with pytest.raises(VivimError, match="source.width must be a whole number, got 12.5"):
        RunConfig.build(None, {**BASE, "source": {**BASE["source"], "width": 12.5}})


def test_defaults_need_an_input_and_a_model():
    with pytest.raises(VivimError, match="no input"):
        RunConfig.build(None, {"backend": BASE["backend"]})
    with pytest.raises(VivimError, match="no model"):
        RunConfig.build(None, {"source": BASE["source"]})
    cfg = RunConfig.build(None, BASE)
    assert cfg.backend.output_frame is None and cfg.backend.device == "auto"  # None: the model's own, else centre
    assert cfg.preprocess.interpolation == "model"  # the filter the model was trained with


def test_unknown_resize_filter_is_rejected():
    with pytest.raises(VivimError, match="preprocess.interpolation must be 'model', 'area' or 'linear', got 'cubic'"):
        RunConfig.build(None, {**BASE, "preprocess": {"interpolation": "cubic"}})


def test_config_that_is_not_text_or_not_a_file(tmp_path):
    binary = tmp_path / "weights.safetensors"
    binary.write_bytes(b"\x89\xff\xfe\x00binary")
    with pytest.raises(VivimError, match="--config .*weights.safetensors: not a text file"):
        RunConfig.build(str(binary), BASE)
    with pytest.raises(VivimError, match="--config .*: is a folder, not a file"):
        RunConfig.build(str(tmp_path), BASE)


@pytest.mark.parametrize(
    "text, message",
    [
        ("camera: {}\n", "unknown section 'camera'"),
        ("source: {speed: 3}\n", "unknown key source.speed"),
        ("overlay: {contour: 'yes'}\n", "overlay.contour must be true or false"),
        ("overlay: {alpha: fast}\n", "overlay.alpha must be a number"),
        ("source: [1, 2]\n", "must be a mapping"),
        ("- just\n- a list\n", "expected sections"),
        ("source: {kind: video\n", "not valid YAML"),
        ("backend: {device: null}\n", "backend.device needs a value"),
        ("source: {max_frames: .inf}\n", "source.max_frames must be a whole number"),
        ("source: {reconnect_delay: -1}\n", "source.reconnect_delay and source.reconnect_max_delay must be positive"),
        ("sink: {save_fps: 0}\n", "sink.save_fps must be a positive number"),
    ],
)
def test_bad_config_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(VivimError, match=message):
        RunConfig.build(str(path), BASE)


def test_bad_values():
    for section, values, message in [
        ("backend", {"output_frame": "middle"}, "--output-frame"),
        ("backend", {"device": "tpu"}, "--device"),
        ("overlay", {"alpha": 1.5}, "--alpha"),
        ("source", {"fps": -5.0}, "--fps must be a positive number"),
        ("source", {"fps": float("nan")}, "--fps must be a positive number"),
        ("overlay", {"contour_thickness": 0}, "contour_thickness"),
        ("source", {"max_frames": 0}, "--max-frames"),
        ("source", {"width": -1}, "--width must be at least 1, got -1"),
        ("source", {"height": 0}, "--height must be at least 1, got 0"),
        ("source", {"buffer_size": -1}, "--buffer-size must be at least 1, got -1"),
        ("backend", {"threads": 0}, "--threads"),
        ("source", {"reconnect_attempts": -1}, "--reconnect-attempts must be 0 or more"),
        ("sink", {"save": "out.gif"}, "--save"),
    ]:
        overrides = {k: dict(v) for k, v in BASE.items()}
        overrides.setdefault(section, {}).update(values)
        with pytest.raises(VivimError, match=message):
            RunConfig.build(None, overrides)
    with pytest.raises(VivimError, match="--config"):
        RunConfig.build("/nonexistent/run.yaml", BASE)


def test_example_config_loads(tmp_path):
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "runtime", "example.yaml")
    cfg = RunConfig.build(path)
    assert cfg.source.kind == "camera" and cfg.backend.model == "demo" and cfg.source.buffer_size == 1
    # another kind of input from a flag: the camera's rate, size and format stay with the camera (a video kept its
    # own 25 fps instead of being written at the camera's 30), the other sections still apply
    video = RunConfig.build(path, {"source": {"kind": "video", "location": "clip.mp4"}})
    assert (video.source.fps, video.source.width, video.source.fourcc, video.source.reconnect_delay) == (None, None, None, 0.5)
    assert video.backend.model == "demo" and video.sink.save == "runs/live/overlay.mp4"
    camera = RunConfig.build(path, {"source": {"kind": "camera", "location": "/dev/video2"}})
    assert (camera.source.location, camera.source.fps, camera.source.fourcc) == ("/dev/video2", 30, "YUYV")
    # the same for a file that names its camera by location alone, and for an engine's plugin under --onnx
    located = tmp_path / "located.yaml"
    located.write_text("source: {location: /dev/video0, fps: 30, width: 1280}\nbackend: {model: m.engine, plugin: lib.so}\n")
    other = RunConfig.build(str(located), {"source": {"kind": "video", "location": "clip.mp4"},
                                           "backend": {"kind": "onnx", "model": "m.onnx"}})
    assert (other.source.fps, other.source.width, other.backend.plugin) == (None, None, None)
    assert other.ignored_flags() == []


def test_a_config_file_may_name_input_and_model_alone(tmp_path):
    frames, odd = tmp_path / "frames", tmp_path / "scan!new"
    frames.mkdir()
    odd.mkdir()
    cases = [("/dev/video2", "camera"), ("0", "camera"), ("scan.mp4", "video"), (str(frames), "frames"),
             ("v4l2src ! videoconvert ! appsink", "gst"), (str(odd), "frames")]
    models = [("demo", "checkpoint"), ("runs/m.safetensors", "checkpoint"), ("m.onnx", "onnx"), ("M.ENGINE", "engine"),
              ("m.plan", "engine"), ("m.trt", "engine")]
    for (location, source_kind), (model, model_kind) in zip(cases, models):
        path = tmp_path / "run.yaml"
        path.write_text(f"source: {{location: '{location}'}}\nbackend: {{model: '{model}', device: cpu}}\n")
        cfg = RunConfig.build(str(path))
        assert (cfg.source.kind, cfg.backend.kind) == (source_kind, model_kind), (location, model)


def test_config_file_errors_name_the_file_as_the_flag(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("backend: {modle: demo}\n")
    with pytest.raises(VivimError, match=f"^--config {path}: unknown key backend.modle"):
        RunConfig.build(str(path))
    path.write_text("sink: {strip_frames: 0}\n")
    with pytest.raises(VivimError, match="sink.strip_frames must be at least 1, got 0"):
        RunConfig.build(str(path), BASE)


def test_pytorch_only_flags_are_named_when_another_backend_ignores_them():
    from vivim.runtime.backends import _reject_torch_only_flags
    from vivim.runtime.config import BackendConfig

    lines: list = []
    _reject_torch_only_flags(BackendConfig(kind="onnx", model="m.onnx"), lines.append)
    assert lines == []  # the defaults say nothing
    _reject_torch_only_flags(BackendConfig(kind="onnx", model="m.onnx", fp16=True, cuda_graph=True, compile=True,
                                           threads=2, stream_cache=False), lines.append)
    assert [line.split()[1] for line in lines] == ["--fp16", "--cuda-graph", "--compile", "--no-stream-cache"]
    lines.clear()  # ONNX Runtime takes --threads; a TensorRT engine does not
    _reject_torch_only_flags(BackendConfig(kind="engine", model="m.engine", threads=2), lines.append)
    assert [line.split()[1] for line in lines] == ["--threads"]


def test_flags_the_input_or_model_does_not_use_are_named():
    """Camera settings on a file, --loop on a camera, a plugin for a PyTorch model: each said, none silently dropped."""
    from vivim.runtime.config import RunConfig

    def notes(**parts):
        return RunConfig.build(overrides={"source": {"kind": "video", "location": "clip.mp4"},
                                          "backend": {"kind": "checkpoint", "model": "demo"}, **parts}).ignored_flags()

    assert notes() == []
    assert notes(source={"kind": "camera", "location": "0", "width": 640, "fourcc": "MJPG"}) == []
    file_with_camera_flags = notes(source={"kind": "video", "location": "clip.mp4", "width": 640, "buffer_size": 3})
    assert len(file_with_camera_flags) == 1 and file_with_camera_flags[0].startswith("--width, --buffer-size")
    assert "--loop applies to files" in notes(source={"kind": "camera", "location": "0", "loop": True})[0]
    assert notes(backend={"kind": "onnx", "model": "m.onnx", "plugin": "lib.so"}) == [
        "--plugin is the TensorRT plugin library of an --engine; ignored"]
    assert notes(backend={"kind": "engine", "model": "m.engine", "plugin": "lib.so"}) == []
    assert notes(source={"kind": "video", "location": "clip.mp4", "reconnect_attempts": 3}) == [
        "--reconnect-attempts reopens a lost live source; ignored for --video"]
    assert notes(source={"kind": "camera", "location": "0", "reconnect_attempts": 3}) == []


def test_show_and_headless_together_are_refused(tmp_path):
    from vivim.runtime.config import RunConfig

    with pytest.raises(VivimError, match="^--show opens a window and --headless never does; give one of them$"):
        RunConfig.build(overrides={"source": {"kind": "video", "location": "clip.mp4"},
                                   "backend": {"kind": "checkpoint", "model": "demo"},
                                   "sink": {"show": True, "headless": True}})
    # one from the file, the other a flag: the flag wins (the example file shows a window; a server adds --headless)
    import os

    example = os.path.join(os.path.dirname(__file__), "..", "runtime", "example.yaml")
    config = RunConfig.build(example, {"sink": {"headless": True}})
    assert config.sink.headless and not config.sink.show
    # and the other way round: a file written for a server, run once at a desk with --show
    server = tmp_path / "server.yaml"
    server.write_text("source: {kind: video, location: clip.mp4}\nbackend: {kind: checkpoint, model: demo}\n"
                      "sink: {headless: true}\n")
    config = RunConfig.build(str(server), {"sink": {"show": True}})
    assert config.sink.show and not config.sink.headless
