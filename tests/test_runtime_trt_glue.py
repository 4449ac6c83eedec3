"""TensorRT backend glue without TensorRT: slot ring, clip assembly, output selection and engine refusal.

No machine of this project has TensorRT, so the backend's own logic (T + 1 device slots reused round-robin, the
T device-to-device copies that assemble the clip in ring order, the host round trip, the sidecar checks) runs here
against a stand-in `tensorrt` + `pycuda.driver` pair: device memory is a dictionary of byte buffers and the
"engine" computes a simple per-frame function of its input. The expected logits come from an independent
reference (NumPy preprocessing of the clamped clip, the same function). The real engine is checked on a
TensorRT machine (`vivim-run --engine ...`).
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
import sys
import types

import numpy as np
import pytest

from vivim.errors import VivimError
from vivim.export import tensorrt_build as tb
from vivim.runtime.preprocess import Normalization, preprocess
from vivim.runtime.ring import ClipWindow

T, H, W = 5, 16, 24


class _Memory:
    """Fake device memory: allocations at increasing fake addresses, each a bytearray."""

    def __init__(self):
        self.bases, self.buffers, self.next = [], [], 1 << 20

    def alloc(self, nbytes):
        base = self.next
        self.next += nbytes + 256
        self.bases.append(base)
        self.buffers.append(bytearray(nbytes))
        return base

    def view(self, address, nbytes):
        i = bisect.bisect_right(self.bases, address) - 1
        offset = address - self.bases[i]
        assert 0 <= offset and offset + nbytes <= len(self.buffers[i]), "out-of-bounds device access"
        return memoryview(self.buffers[i])[offset : offset + nbytes]


class _Registry:
    """TensorRT's plugin registry as its header describes it: loading a library whose creators are registered
    already fails (None), and they stay registered until the process ends."""

    def __init__(self):
        self.loads, self.registered = [], False

    def load_library(self, path):
        self.loads.append(path)
        if self.registered:
            return None
        self.registered = True
        return object()

    def get_creator(self, name, version, namespace):
        ours = (name, version, namespace) == (tb.PLUGIN_NAME, tb.PLUGIN_VERSION, tb.PLUGIN_NAMESPACE)
        return object() if ours and self.registered else None


def _fake_modules(memory, frames_out, registry, dtype=np.float32):
    cuda = types.ModuleType("pycuda.driver")

    class Allocation:
        def __init__(self, nbytes):
            self.address = memory.alloc(nbytes)

        def __int__(self):
            return self.address

    class Stream:
        handle = 7

        def synchronize(self):
            pass

    class PrimaryContext:
        def push(self):
            pass

        def pop(self):
            pass

    cuda.init = lambda: None
    cuda.Device = lambda index: types.SimpleNamespace(retain_primary_context=lambda: PrimaryContext())
    cuda.Stream = Stream
    cuda.mem_alloc = Allocation
    cuda.pagelocked_empty = lambda shape, dtype: np.empty(shape, dtype)
    cuda.memcpy_htod_async = lambda dst, src, stream: memory.view(int(dst), src.nbytes).__setitem__(
        slice(None), np.ascontiguousarray(src).tobytes())
    cuda.memcpy_dtod_async = lambda dst, src, n, stream: memory.view(int(dst), n).__setitem__(
        slice(None), bytes(memory.view(int(src), n)))

    def dtoh(dst, src, stream):
        dst[...] = np.frombuffer(bytes(memory.view(int(src), dst.nbytes)), dst.dtype).reshape(dst.shape)

    cuda.memcpy_dtoh_async = dtoh
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = cuda

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0.30"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=None: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.init_libnvinfer_plugins = lambda logger, namespace: True
    trt.get_plugin_registry = lambda: registry
    trt.nptype = lambda name: {"FLOAT": np.float32, "HALF": np.float16}[name]
    shapes = {"frames": (1, T, 3, H, W), "logits": (1, frames_out, 1, H, W)}

    class ExecutionContext:
        def __init__(self):
            self.addresses = {}

        def set_tensor_address(self, name, address):
            self.addresses[name] = address

        def execute_async_v3(self, stream_handle):
            n_in = int(np.prod(shapes["frames"])) * np.dtype(dtype).itemsize
            clip = np.frombuffer(bytes(memory.view(self.addresses["frames"], n_in)), dtype).reshape(shapes["frames"])
            out = engine_function(clip.astype(np.float32)).astype(dtype)
            if frames_out == 1:
                out = out[:, T // 2 : T // 2 + 1]
            memory.view(self.addresses["logits"], out.nbytes)[:] = out.tobytes()
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["frames", "logits"][i]

        def get_tensor_shape(self, name):
            return shapes[name]

        def get_tensor_dtype(self, name):
            return "HALF" if dtype == np.float16 else "FLOAT"

        def get_tensor_mode(self, name):
            return "in" if name == "frames" else "out"

        def create_execution_context(self):
            return ExecutionContext()

    trt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: Engine())
    trt.Builder = object  # what tells real bindings from the empty namespace that tensorrt-stubs leaves
    return {"tensorrt": trt, "pycuda": pycuda, "pycuda.driver": cuda}


def engine_function(clip):
    """The stand-in network: logits of frame t = channel mean of frame t + 0.1 x mean of the whole clip."""
    per_frame = clip.mean(axis=2, keepdims=True)
    return per_frame + 0.1 * clip.mean(axis=(1, 2), keepdims=True)


GPU = tb.GpuInfo(name="NVIDIA H100 80GB HBM3", compute_capability="9.0", cuda_driver="13.0")


def _engine_files(tmp_path, gpu_name=GPU.name, output_frame="all", plugin_bytes=b"plugin bytes"):
    plugin = tmp_path / "libvivim_trt_plugin.so"
    plugin.write_bytes(plugin_bytes)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    sidecar = {
        "schema": tb.SIDECAR_SCHEMA, "gpu": {"name": gpu_name, "compute_capability": "9.0"},
        "tensorrt_version": "10.3.0.30", "engine": {"path": str(engine), "sha256": tb.file_sha256(engine)},
        "precision": "fp32",
        "plugin": {"path": str(plugin), "sha256": tb.file_sha256(plugin)},
        "inputs": [{"name": "frames", "shape": [1, T, 3, H, W], "dtype": "FLOAT"}],
        "outputs": [{"name": "logits", "shape": [1, T, 1, H, W], "dtype": "FLOAT"}],
        "model": {"frames": str(T), "img_size": f"[{H}, {W}]", "output_frame": output_frame,
                  "normalization": json.dumps({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})},
        "source_onnx": {"path": "m.onnx"},
    }
    (tmp_path / "m.engine.json").write_text(json.dumps(sidecar))
    return str(engine)


@pytest.fixture
def fake_trt(monkeypatch):
    memory = _Memory()

    def install(frames_out=T, dtype=np.float32):
        registry = _Registry()
        for name, module in _fake_modules(memory, frames_out, registry, dtype).items():
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(tb, "current_gpu", lambda index=0: GPU)
        monkeypatch.setattr(tb, "_loaded_plugin", None)  # a fresh process
        return registry

    return install


@pytest.mark.parametrize("output_frame, dtype", [("centre", np.float32), ("newest", np.float32), ("centre", np.float16)])
def test_stream_through_device_slots_matches_reference(tmp_path, fake_trt, output_frame, dtype):
    """fp16: the engine's input and output types decide the slot sizes and the host buffers (an FP16 engine is the
    default of vivim-export trt)."""
    from vivim.runtime.backend_trt import TensorRTBackend

    fake_trt(dtype=dtype)
    backend = TensorRTBackend(_engine_files(tmp_path), device="cuda")
    assert (backend.frames, backend.input_size, backend.fixed_output_index) == (T, (H, W), None)
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8) for _ in range(11)]
    backend.prepare(frames[0].shape)
    window = ClipWindow(T, output_frame)
    got = {}
    for k, frame in enumerate(frames):
        emission = window.push(k, backend.preprocess(frame))
        if emission is not None:
            got[emission.record] = backend.infer(emission.clip, emission.index)
    while window.pending:
        emission = window.pad()
        if emission is not None:
            got[emission.record] = backend.infer(emission.clip, emission.index)
    backend.close()
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # from the sidecar's model metadata
    pre = [preprocess(f, (H, W), norm) for f in frames]
    index = window.index
    assert sorted(got) == list(range(11))
    for k in range(11):
        clip = np.stack([pre[min(max(k - index + j, 0), 10)] for j in range(T)])[None]
        tol = 1e-5 if dtype == np.float32 else 2e-3
        np.testing.assert_allclose(got[k], engine_function(clip)[0, index, 0], rtol=tol, atol=tol)


def test_single_frame_engine_and_policy_mismatch(tmp_path, fake_trt):
    from vivim.runtime.backend_trt import TensorRTBackend

    fake_trt(frames_out=1)
    backend = TensorRTBackend(_engine_files(tmp_path, output_frame="centre"), device="cuda")
    assert backend.fixed_output_index == T // 2
    item = backend.preprocess(np.zeros((8, 8, 3), np.uint8))
    assert backend.infer([item] * T, T // 2).shape == (H, W)
    with pytest.raises(VivimError, match="decodes frame 2"):
        backend.infer([item] * T, T - 1)
    backend.close()


def test_engine_for_another_gpu_is_refused_with_the_rebuild_command(tmp_path, fake_trt):
    from vivim.runtime.backend_trt import TensorRTBackend

    fake_trt()
    with pytest.raises(VivimError, match="built for another setup.*vivim-export trt"):
        TensorRTBackend(_engine_files(tmp_path, gpu_name="NVIDIA Jetson AGX Orin"), device="cuda")


def test_an_engine_copied_over_another_is_refused_by_its_sidecar(tmp_path, fake_trt):
    """The sidecar's facts (GPU, TensorRT, plugin, model metadata) hold only for the engine it was written with."""
    from vivim.runtime.backend_trt import TensorRTBackend

    fake_trt()
    engine = Path(_engine_files(tmp_path))
    engine.write_bytes(b"another plan")
    with pytest.raises(VivimError, match="not the one its sidecar describes.*vivim-export trt"):
        TensorRTBackend(str(engine), device="cuda")


def test_plugin_override_must_exist_and_the_sidecars_path_is_never_loaded(tmp_path, fake_trt, monkeypatch):
    from vivim.runtime.backend_trt import TensorRTBackend

    fake_trt()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(VivimError, match="--plugin .*nowhere.so: no such file"):
        TensorRTBackend(_engine_files(tmp_path), device="cuda", plugin=str(tmp_path / "nowhere.so"))
    # the engine moved away from its plugin: the sidecar still names the library, which is not loaded unasked
    engine = Path(_engine_files(tmp_path))
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("m.engine", "m.engine.json"):
        (tmp_path / name).rename(moved / name)
    with pytest.raises(VivimError, match=f"no plugin library given .*the engine was built with {tmp_path}"):
        TensorRTBackend(str(moved / engine.name), device="cuda")
    with pytest.raises(VivimError, match="GPU only"):
        TensorRTBackend(_engine_files(tmp_path), device="cpu")


def test_a_second_engine_in_one_process_reuses_the_plugin_library(tmp_path, fake_trt):
    """TensorRT refuses a second load of a library whose creators are registered (vivim-bench opens its engine
    twice, after building it in the same process); a different build of the library is refused by name."""
    from vivim.runtime.backend_trt import TensorRTBackend

    registry = fake_trt()
    for _ in range(2):
        backend = TensorRTBackend(_engine_files(tmp_path), device="cuda")
        backend.close()
    assert len(registry.loads) == 1
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(VivimError, match="already loaded another build of the plugin .*new process"):
        TensorRTBackend(_engine_files(other, plugin_bytes=b"another build"), device="cuda")


def test_an_engine_without_model_metadata_or_context_is_refused(tmp_path, fake_trt, monkeypatch):
    """Without its model metadata the frames would be normalised by guess and the mask put on a guessed frame."""
    from vivim.runtime.backend_trt import TensorRTBackend

    fake_trt()
    engine = _engine_files(tmp_path)
    side = Path(engine + ".json")
    data = json.loads(side.read_text())
    data["model"] = {}
    side.write_text(json.dumps(data))
    with pytest.raises(VivimError, match=r"m.engine \(its sidecar\): no Vivim metadata .*rebuild it: vivim-export plugin"):
        TensorRTBackend(engine, device="cuda")

    engine = _engine_files(tmp_path)
    trt = sys.modules["tensorrt"]
    plain = trt.Runtime(None).deserialize_cuda_engine(b"")
    engine_class = type(plain)
    monkeypatch.setattr(engine_class, "create_execution_context", lambda self: None)
    with pytest.raises(VivimError, match="could not create an execution context"):
        TensorRTBackend(engine, device="cuda")
