"""export/tensorrt_build.py without TensorRT: type-checked against tensorrt-stubs, sidecar round trip,
compatibility refusal, and the TensorRT-missing path. Building an engine needs TensorRT and a GPU and is
not exercised here.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from vivim.errors import VivimError
from vivim.export import tensorrt_build as tb

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# mypy against tensorrt-stubs


def _stub_packages() -> dict[str, Path]:
    """Folders of the stub-only packages shipped by tensorrt-stubs (tensorrt/, tensorrt_bindings/)."""
    try:
        dist = metadata.distribution("tensorrt-stubs")
    except metadata.PackageNotFoundError:
        return {}
    folders: dict[str, Path] = {}
    for file in dist.files or []:
        if file.name.endswith(".pyi") and len(file.parts) == 2:
            folders[file.parts[0]] = Path(str(dist.locate_file(file))).parent
    return folders


def _sanitised_stubs(target: Path) -> Path:
    """Copy the stubs into a MYPYPATH folder, replacing the few signatures Python cannot parse.

    tensorrt-stubs 10.13 has parameters named `in` and a required parameter after defaulted ones
    (5 `def` lines); those methods become `(*args, **kwargs)` with their return type kept.
    Without a py.typed marker mypy would otherwise ignore the stubs altogether (everything Any).
    """
    for name, folder in _stub_packages().items():
        out_dir = target / name
        out_dir.mkdir(parents=True)
        for stub in folder.glob("*.pyi"):
            lines = []
            for line in stub.read_text().splitlines(keepends=True):
                text = line.strip()
                if text.startswith("def ") and text.endswith(":"):
                    try:
                        ast.parse(text + " ...")
                    except SyntaxError:
                        m = re.match(r"^(\s*)def (\w+)\(.*\)\s*->\s*(.*):\s*$", line.rstrip("\n"))
                        assert m, line
                        line = f"{m.group(1)}def {m.group(2)}(self, *args: typing.Any, **kwargs: typing.Any) -> {m.group(3)}:\n"
                lines.append(line)
            (out_dir / stub.name).write_text("".join(lines))
    return target


def _mypy_config(tmp_path: Path) -> Path:
    stubs = _sanitised_stubs(tmp_path / "stubs")
    config = tmp_path / "mypy.ini"
    config.write_text(
        "[mypy]\n"
        "strict = True\n"
        "ignore_missing_imports = True\n"
        "follow_imports = silent\n"
        f"mypy_path = {stubs}\n"
        # Third-party stubs and unrelated package modules are not what this test judges.
        "[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*,tensorrt_libs]\n"
        "ignore_errors = True\n"
        "[mypy-torch,torch.*,vivim,vivim.model.*,vivim.ops.*,vivim.data.*,vivim.checkpoint]\n"
        "follow_imports = skip\n"
    )
    return config


def _run_mypy(config: Path, target: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir", str(tmp_path / "cache"), str(target)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )


def test_tensorrt_build_type_checks_against_tensorrt_stubs(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    if not _stub_packages():
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    config = _mypy_config(tmp_path)
    # The check must not be vacuous: the stubs resolve to real classes, and a wrong call is caught.
    probe = tmp_path / "probe.py"
    probe.write_text("import tensorrt as trt\nreveal_type(trt.Builder)\ntrt.Builder(trt.Logger(), 3)\n")
    probed = _run_mypy(config, probe, tmp_path)
    assert "tensorrt_bindings.tensorrt.Builder" in probed.stdout, probed.stdout
    assert "Too many arguments" in probed.stdout, probed.stdout

    result = _run_mypy(config, ROOT / "export" / "tensorrt_build.py", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


# ---------------------------------------------------------------------------------------------
# Sidecar


def _sidecar(tmp_path: Path) -> dict[str, object]:
    return {
        "schema": tb.SIDECAR_SCHEMA,
        "engine": {"path": str(tmp_path / "model.engine"), "sha256": "ab" * 32, "bytes": 1234},
        "gpu": {"name": "NVIDIA Jetson AGX Orin", "compute_capability": "8.7"},
        "tensorrt_version": "10.3.0.30",
        "cuda": {"driver": "12.6", "runtime": "12.6"},
        "precision": "fp16",
        "strongly_typed": True,
        "workspace_gib": 2.0,
        "plugin": {"path": str(tmp_path / "vivim_plugin" / "libvivim_trt_plugin.so"), "sha256": "cd" * 32,
                   "name": tb.PLUGIN_NAME, "version": tb.PLUGIN_VERSION, "namespace": tb.PLUGIN_NAMESPACE},
        "inputs": [{"name": "clip", "shape": [1, 5, 3, 256, 256], "dtype": "HALF"}],
        "outputs": [{"name": "logits", "shape": [1, 1, 1, 256, 256], "dtype": "HALF"}],
        "model": {"variant": "tiny", "frames": "5", "img_size": "256"},
        "source_onnx": {"path": str(tmp_path / "model.onnx"), "sha256": "ef" * 32},
    }


def test_sidecar_round_trip_is_atomic(tmp_path: Path) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(os.urandom(64))
    written = tb.write_sidecar(engine, _sidecar(tmp_path))
    assert written == tmp_path / "model.engine.json"
    assert tb.read_sidecar(engine) == _sidecar(tmp_path)
    assert tb.read_sidecar(written) == _sidecar(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.engine", "model.engine.json"]  # no temp files left


def test_missing_corrupt_and_foreign_sidecars_are_refused(tmp_path: Path) -> None:
    engine = tmp_path / "model.engine"
    with pytest.raises(VivimError, match="model.engine.json: engine sidecar not found"):
        tb.read_sidecar(engine)
    tb.sidecar_path(engine).write_text("{not json")
    with pytest.raises(VivimError, match="unreadable engine sidecar"):
        tb.read_sidecar(engine)
    tb.sidecar_path(engine).write_text(json.dumps({"schema": "someone-else/3"}))
    with pytest.raises(VivimError, match="not a Vivim engine sidecar"):
        tb.read_sidecar(engine)
    partial = _sidecar(tmp_path)
    del partial["gpu"]
    tb.sidecar_path(engine).write_text(json.dumps(partial))
    with pytest.raises(VivimError, match="lacks 'gpu'"):
        tb.read_sidecar(engine)


def test_compatible_machine_passes(tmp_path: Path) -> None:
    side = _sidecar(tmp_path)
    # The same release with another build number, and every spelling of the compute capability.
    for cc in ("8.7", "87", "sm_87", (8, 7)):
        tb.check_engine_compatible(side, "NVIDIA Jetson AGX Orin", cc, "10.3.0.26")
    tb.check_engine_compatible(side, "NVIDIA Jetson AGX Orin", "8.7", "10.3.0.30", plugin_sha256="cd" * 32,
                               engine_sha256="ab" * 32)


@pytest.mark.parametrize(
    "gpu, cc, trt, plugin_sha, reason",
    [
        ("NVIDIA H100 80GB HBM3", "9.0", "10.3.0.30", None, r"GPU NVIDIA Jetson AGX Orin \(sm 8.7\) vs this NVIDIA H100"),
        ("NVIDIA Jetson AGX Orin", "8.7", "11.1.0.106", None, r"TensorRT 10.3.0.30 vs installed 11.1.0.106"),
        ("NVIDIA Jetson AGX Orin", "8.7", "10.3.1.5", None, r"TensorRT 10.3.0.30 vs installed 10.3.1.5"),
        ("NVIDIA Jetson AGX Orin", "8.7", "10.3.0.30", "00" * 32, r"plugin library differs"),
    ],
)
def test_incompatible_machine_is_refused_with_rebuild_command(
    tmp_path: Path, gpu: str, cc: str, trt: str, plugin_sha: str | None, reason: str
) -> None:
    side = _sidecar(tmp_path)
    with pytest.raises(VivimError) as info:
        tb.check_engine_compatible(side, gpu, cc, trt, plugin_sha256=plugin_sha)
    message = str(info.value)
    assert re.search(reason, message), message
    assert "\n" not in message
    plugin_dir = tmp_path / "vivim_plugin"
    assert message.endswith(
        f"rebuild it here: vivim-export plugin -o {plugin_dir} && vivim-export trt {tmp_path / 'model.onnx'} --fp16 "
        f"-o {tmp_path / 'model.engine'} --plugin {plugin_dir / 'libvivim_trt_plugin.so'}"
    ), message


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # spans several read chunks
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert tb.file_sha256(path) == hashlib.sha256(data).hexdigest()


def _model_with_weights(props: dict, rng) -> "object":
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], initializer=[weight],
    )
    model = helper.make_model(graph, doc_string="d" * 300)  # a doc string and weights around the metadata
    helper.set_model_props(model, props)
    return model


def test_onnx_metadata_is_read_from_metadata_props(tmp_path: Path) -> None:
    """The wire-format reader against onnx's own parser, on fresh random keys and values (unicode, long, empty),
    inline and external weights; broken files are one-line errors."""
    onnx = pytest.importorskip("onnx")
    rng = np.random.default_rng()
    props = {f"k{i}-é{rng.integers(1e9)}": "v" * int(rng.integers(0, 400)) + "→" for i in range(int(rng.integers(3, 9)))}
    props["normalization"] = json.dumps({"mean": rng.random(3).tolist(), "std": rng.random(3).tolist()})
    props["empty"] = ""
    model = _model_with_weights(props, rng)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    expected = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert tb.onnx_metadata(path) == expected == props
    external = tmp_path / "ext.onnx"
    onnx.save(model, str(external), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").stat().st_size >= 64 * 64 * 4  # the weights did move out
    assert tb.onnx_metadata(external) == props

    data = path.read_bytes()
    # an unknown field in the deprecated group encoding (field 99 holding a varint and a nested group) is valid
    grouped = tmp_path / "grouped.onnx"
    grouped.write_bytes(bytes([0x9B, 0x06, 0x08, 0x05, 0x13, 0x0A, 0x02]) + b"hi" + bytes([0x14, 0x9C, 0x06]) + data)
    assert {p.key: p.value for p in onnx.load(str(grouped), load_external_data=False).metadata_props} == props
    assert tb.onnx_metadata(grouped) == props
    # an entry whose value field comes twice holds the last one (protobuf's rule, which onnx's parser follows)
    entry = b"\x0a\x01k" + b"\x12\x02v1" + b"\x12\x02v2"
    doubled = tmp_path / "doubled.onnx"
    doubled.write_bytes(data + bytes([(14 << 3) | 2, len(entry)]) + entry)
    reparsed = {p.key: p.value for p in onnx.load(str(doubled), load_external_data=False).metadata_props}
    assert reparsed["k"] == "v2"
    assert tb.onnx_metadata(doubled) == reparsed == {**props, "k": "v2"}
    cases = {"junk.onnx": b"\xff" * 64, "empty.onnx": b"", "half.onnx": data[: len(data) // 2],
             "text.onnx": b"this is not a model\n"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(VivimError, match=f"{name}: not a readable ONNX model") as error:
            tb.onnx_metadata(tmp_path / name)
        assert "\n" not in str(error.value)
    with pytest.raises(VivimError, match="nope.onnx: cannot read it"):
        tb.onnx_metadata(tmp_path / "nope.onnx")


def test_onnx_metadata_needs_no_onnx_package(tmp_path: Path) -> None:
    """A Jetson that builds engines with TensorRT's own parser may have no onnx package: the engine's sidecar still
    gets the model's metadata (normalisation, output frame), without which vivim-run would guess them."""
    import subprocess
    import sys

    onnx = pytest.importorskip("onnx")
    props = {"frames": "5", "output_frame": "newest"}
    onnx.save(_model_with_weights(props, np.random.default_rng(0)), str(tmp_path / "m.onnx"))
    script = (
        "import sys\nsys.modules['onnx'] = None\n"  # import onnx now raises ImportError
        "from vivim.export.onnx_files import onnx_metadata\nprint(onnx_metadata('m.onnx'))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(props)


# ---------------------------------------------------------------------------------------------
# Without TensorRT


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import tensorrt` fail even where TensorRT is installed."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


VIVIM_PROPS = {"frames": "5", "img_size": "[64, 64]", "output_frame": "centre", "precision": "fp16",
               "normalization": json.dumps({"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})}


def _inputs(tmp_path: Path, props: dict | None = None) -> tuple[Path, Path]:
    """A small ONNX file with Vivim's metadata (or `props`), and a stand-in plugin library."""
    pytest.importorskip("onnx")
    import onnx

    onnx_path = tmp_path / "model.onnx"
    onnx.save(_model_with_weights(VIVIM_PROPS if props is None else props, np.random.default_rng(0)), str(onnx_path))
    plugin = tmp_path / "libvivim_trt_plugin.so"
    plugin.write_bytes(b"\x7fELF")
    return onnx_path, plugin


def test_missing_tensorrt_explains_how_to_install(no_tensorrt: None, tmp_path: Path) -> None:
    onnx_path, plugin = _inputs(tmp_path)
    assert tb.installed_tensorrt_version() is None
    with pytest.raises(VivimError) as info:
        tb.build_engine(onnx_path, tmp_path / "model.engine", plugin, rerun="vivim-export trt model.onnx --fp16 -o model.engine")
    message = str(info.value)
    assert message.startswith("TensorRT is not installed: on Jetson it comes with JetPack (sudo apt install nvidia-tensorrt")
    assert "pip install tensorrt" in message
    assert message.endswith("then rerun vivim-export trt model.onnx --fp16 -o model.engine")
    assert not (tmp_path / "model.engine").exists()


def test_bad_arguments_fail_before_tensorrt(no_tensorrt: None, tmp_path: Path) -> None:
    onnx_path, plugin = _inputs(tmp_path)
    engine = tmp_path / "model.engine"
    with pytest.raises(VivimError, match="missing.onnx: no such ONNX file"):
        tb.build_engine(tmp_path / "missing.onnx", engine, plugin)
    with pytest.raises(VivimError, match="--plugin .*nope.so: no such plugin library"):
        tb.build_engine(onnx_path, engine, tmp_path / "nope.so")
    with pytest.raises(VivimError, match="--workspace 0"):
        tb.build_engine(onnx_path, engine, plugin, workspace_gib=0)
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(VivimError, match="-o .*model.engine: .*a_file is a file, not a folder"):
        tb.build_engine(onnx_path, tmp_path / "a_file" / "model.engine", plugin)
    with pytest.raises(VivimError, match="precision 'int8'"):
        tb.build_engine(onnx_path, engine, plugin, precision="int8")
    foreign, _ = _inputs(_subdir(tmp_path, "foreign"), props={"author": "x"})
    with pytest.raises(VivimError, match="model.onnx: no Vivim metadata .*export it with vivim-export onnx"):
        tb.build_engine(foreign, engine, plugin)
    many_states, _ = _inputs(_subdir(tmp_path, "n65"), props={**VIVIM_PROPS, "scan_states": "65"})
    with pytest.raises(VivimError, match="model.onnx: its scans have 65 states .* at most 64: run this graph with "
                                         "vivim-run --onnx"):
        tb.build_engine(many_states, engine, plugin)
    assert not engine.exists()


def _subdir(tmp_path: Path, name: str) -> Path:
    (tmp_path / name).mkdir(exist_ok=True)
    return tmp_path / name


def test_no_cuda_driver_means_no_gpu_info(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(tb.ctypes, "CDLL", refuse)
    assert tb.current_gpu() is None
    assert tb.cuda_runtime_version() is None


def test_the_plugin_library_is_the_flag_or_a_default_place_never_the_sidecars_path(tmp_path: Path,
                                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from vivim.export.plugin import find_plugin_library

    monkeypatch.chdir(tmp_path)
    engine = tmp_path / "engines" / "m.engine"
    engine.parent.mkdir()
    elsewhere = tmp_path / "elsewhere" / "libvivim_trt_plugin.so"  # what a sidecar might name
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"\x7fELF")
    with pytest.raises(VivimError, match="no plugin library given .* pass --plugin PATH .*built with /x.so"):
        find_plugin_library(None, engine, hint="built with /x.so")
    beside = engine.parent / "libvivim_trt_plugin.so"
    beside.write_bytes(b"\x7fELF")
    assert find_plugin_library(None, engine) == beside
    default = tmp_path / "vivim_plugin" / "libvivim_trt_plugin.so"
    default.parent.mkdir()
    default.write_bytes(b"\x7fELF")
    assert find_plugin_library(None, engine).resolve() == default  # ./vivim_plugin/ first
    assert find_plugin_library(elsewhere, engine) == elsewhere  # the user's own flag
    with pytest.raises(VivimError, match="--plugin .*nope.so: no such file"):
        find_plugin_library(tmp_path / "nope.so", engine)


def test_build_progress_monitor_follows_top_level_phases(capsys: pytest.MonkeyPatch) -> None:
    """Driven as TensorRT drives it, with a stand-in for the IProgressMonitor base class (TensorRT is not here)."""
    import types

    class Base:
        def __init__(self) -> None:
            self.constructed = True

    fake_trt = types.SimpleNamespace(IProgressMonitor=Base)
    assert tb.build_progress_monitor(fake_trt, enabled=False) is None  # not a terminal: no bars in a log
    assert tb.build_progress_monitor(types.SimpleNamespace(), enabled=True) is None  # TensorRT before 10.0
    monitor = tb.build_progress_monitor(fake_trt, enabled=True)
    assert isinstance(monitor, Base) and monitor.constructed
    monitor.phase_start("Building engine", None, 4)
    monitor.phase_start("Tactic selection", "Building engine", 100)  # nested: no bar of its own
    assert all(monitor.step_complete("Tactic selection", step) for step in range(100))
    assert all(monitor.step_complete("Building engine", step) for step in range(3))
    assert monitor._bars["Building engine"].n == 3 and "Tactic selection" not in monitor._bars
    monitor.phase_finish("Tactic selection")
    monitor.phase_finish("Building engine")
    assert monitor._bars == {}


# ---------------------------------------------------------------------------------------------
# build_engine against a stand-in TensorRT (no machine of this project has TensorRT): what it asks of TensorRT and
# what it writes


class _FakeBuildTensorRT:
    """The parts of the TensorRT Python API build_engine uses, recording what it is asked."""

    def __init__(self, *, input_shape=(1, 5, 3, 64, 64), layer_dtype="HALF", plan: bytes | None = b"serialized plan",
                 builder_error: Exception | None = None) -> None:
        import types

        self.calls: dict = {"network_flags": [], "pool_limit": None, "loads": []}
        self.registered = False
        fake = self

        class SeverityLevel(int):
            pass

        class ILogger:
            Severity = SeverityLevel
            ERROR, WARNING, INFO = SeverityLevel(1), SeverityLevel(2), SeverityLevel(3)

            def __init__(self) -> None:
                pass

        class Tensor:
            def __init__(self, name, shape, dtype):
                self.name, self.shape, self.dtype = name, shape, f"DataType.{dtype}"  # as str() of TensorRT's enum

        class Layer:
            num_outputs = 1

            def get_output(self, j):
                return Tensor("l", (1,), layer_dtype)

        class Network:
            num_inputs = num_outputs = num_layers = 1

            def get_input(self, i):
                return Tensor("frames", input_shape, layer_dtype)

            def get_output(self, i):
                return Tensor("logits", (1, 1, 1, 64, 64), layer_dtype)

            def get_layer(self, i):
                return Layer()

        class Cache:
            def serialize(self):
                return b"timing cache"

        class Config:
            progress_monitor = None

            def set_memory_pool_limit(self, pool, size):
                fake.calls["pool_limit"] = (pool, size)

            def create_timing_cache(self, data):
                return Cache()

            def set_timing_cache(self, cache, ignore_mismatch):
                return True

            def get_timing_cache(self):
                return Cache()

        class Builder:
            def __init__(self, logger):
                if builder_error is not None:
                    raise builder_error
                self.logger = logger

            def create_network(self, flags):
                fake.calls["network_flags"].append(flags)
                return Network()

            def create_builder_config(self):
                return Config()

            def build_serialized_network(self, network, config):
                if plan is None:
                    self.logger.log(ILogger.ERROR, "out of memory while building")
                return plan

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                fake.calls["parsed"] = path
                return True

        class Registry:
            def load_library(self, path):
                fake.calls["loads"].append(path)
                if fake.registered:
                    return None  # the header's contract: its creators are registered already
                fake.registered = True
                return object()

            def get_creator(self, name, version, namespace):
                return object() if fake.registered else None

        module = types.ModuleType("tensorrt")
        module.__version__ = "10.3.0.30"
        module.ILogger = ILogger
        module.Builder = Builder
        module.OnnxParser = OnnxParser
        module.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
        module.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        registry = Registry()
        module.get_plugin_registry = lambda: registry
        self.module = module


@pytest.fixture
def fake_build(monkeypatch: pytest.MonkeyPatch):
    def install(**kwargs) -> _FakeBuildTensorRT:
        fake = _FakeBuildTensorRT(**kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
        monkeypatch.setattr(tb, "current_gpu", lambda index=0: tb.GpuInfo("NVIDIA H100 80GB HBM3", "9.0", "13.0"))
        monkeypatch.setattr(tb, "_loaded_plugin", None)  # a fresh process
        return fake

    return install


def test_build_writes_a_strongly_typed_engine_and_its_sidecar(tmp_path: Path, fake_build) -> None:
    fake = fake_build()
    onnx_path, plugin = _inputs(tmp_path)
    engine = tmp_path / "out" / "model.engine"
    engine.parent.mkdir()
    cache = tmp_path / "timing.cache"
    assert tb.build_engine(onnx_path, engine, plugin, workspace_gib=1.5, timing_cache=cache, precision="fp16") == engine
    assert engine.read_bytes() == b"serialized plan" and cache.read_bytes() == b"timing cache"
    assert fake.calls["network_flags"] == [1 << 5]  # STRONGLY_TYPED: TensorRT never changes the graph's types
    assert fake.calls["pool_limit"] == ("workspace", int(1.5 * 2**30))
    side = tb.read_sidecar(engine)
    assert side["precision"] == "fp16" and side["strongly_typed"] is True
    assert side["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    assert side["engine"]["sha256"] == hashlib.sha256(b"serialized plan").hexdigest()
    assert side["plugin"]["sha256"] == hashlib.sha256(b"\x7fELF").hexdigest()
    assert side["model"] == VIVIM_PROPS  # what vivim-run prepares frames and picks the output frame with
    assert side["inputs"] == [{"name": "frames", "shape": [1, 5, 3, 64, 64], "dtype": "HALF"}]
    assert sorted(p.name for p in engine.parent.iterdir()) == ["model.engine", "model.engine.json"]  # no temporaries

    # a second engine in the same process (vivim-bench) reuses the registered library
    tb.build_engine(onnx_path, tmp_path / "second.engine", plugin, precision="fp16")
    assert len(fake.calls["loads"]) == 1


@pytest.mark.parametrize("case, match", [
    ("precision", "computes in fp32 but fp16 was requested"),
    ("dynamic", "has a dynamic shape .*export with static shapes"),
    ("build fails", "TensorRT could not build .*out of memory while building"),
    ("no builder", "TensorRT could not start a builder on this GPU \\(CUDA initialization failure"),
    ("no gpu", "the CUDA driver \\(libcuda\\) does not name this machine's GPU"),
    ("another plugin", "a vivim::VivimSelectiveScan v1 creator is already registered in this process by another"),
])
def test_a_failed_build_is_one_line_and_writes_nothing(tmp_path: Path, fake_build, monkeypatch, case, match) -> None:
    settings = {"precision": {"layer_dtype": "FLOAT"}, "dynamic": {"input_shape": (-1, 5, 3, 64, 64)},
                "build fails": {"plan": None}, "no builder": {"builder_error": TypeError("CUDA initialization failure")}}
    fake = fake_build(**settings.get(case, {}))
    if case == "no gpu":
        monkeypatch.setattr(tb, "current_gpu", lambda index=0: None)
    if case == "another plugin":
        fake.registered = True  # something else registered a creator of that name first
    onnx_path, plugin = _inputs(tmp_path)
    engine = tmp_path / "out" / "model.engine"
    engine.parent.mkdir()
    with pytest.raises(VivimError, match=match) as error:
        tb.build_engine(onnx_path, engine, plugin, precision="fp16", timing_cache=tmp_path / "out" / "t.cache")
    assert "\n" not in str(error.value)
    assert list(engine.parent.iterdir()) == []
