"""Build a TensorRT engine from the exported ONNX (with our selective-scan plugin) and describe it.

The engine stays a plain TensorRT plan; next to it `<engine>.json` (the sidecar) records what the
engine is bound to (GPU, compute capability, TensorRT/CUDA versions, plugin library and hash) and
what it contains (I/O tensors, model metadata, source hashes). The runtime reads the sidecar with
read_sidecar() and refuses a mismatching machine with check_engine_compatible().

TensorRT is imported lazily, so this module imports (and its pure-Python parts work) without it.
Networks are built strongly typed: precision comes from the ONNX graph itself (TensorRT 11 has no
other mode; on 10.x the STRONGLY_TYPED flag gives the same behaviour).
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import json
import math
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from vivim import atomic, paths
from vivim.checkpoint import file_sha256
from vivim.cli_utils import shell
from vivim.constants import MAX_SCAN_STATES
from vivim.errors import VivimError
from vivim.export.onnx_files import missing_vivim_metadata, onnx_metadata
from vivim.export.plugin import DEFAULT_PLUGIN_DIR, PLUGIN_LIBRARY_NAME, PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

if TYPE_CHECKING:  # annotations only; the real import happens inside build_engine
    import tensorrt

SIDECAR_SCHEMA = "vivim-engine/1"


def tensorrt_missing_message(rerun: str = "the same command") -> str:
    return (
        "TensorRT is not installed: on Jetson it comes with JetPack (sudo apt install nvidia-tensorrt / "
        f"python3-libnvinfer); on desktop pip install tensorrt; then rerun {rerun}"
    )


def import_tensorrt() -> Any:
    """The real `tensorrt` module, or None. tensorrt-stubs alone leaves an empty namespace package that imports."""
    try:
        import tensorrt as trt
    except (ImportError, OSError):
        return None
    return trt if hasattr(trt, "Builder") else None


def installed_tensorrt_version() -> str | None:
    """Version string of the importable TensorRT, or None."""
    trt = import_tensorrt()
    return None if trt is None else str(trt.__version__)


# ---------------------------------------------------------------------------------------------
# Small file helpers


def sidecar_path(engine_path: Path) -> Path:
    """`model.engine` -> `model.engine.json`."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


# ---------------------------------------------------------------------------------------------
# Machine facts (CUDA driver API through ctypes: no torch, no cuda-python needed)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.7"
    cuda_driver: str  # CUDA version the driver supports, "12.6"


def _load_first(names: tuple[str, ...]) -> ctypes.CDLL | None:
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _cuda_version_string(value: int) -> str:
    return f"{value // 1000}.{(value % 1000) // 10}"


def current_gpu(index: int = 0) -> GpuInfo | None:
    """Name and compute capability of CUDA device `index`, or None without a usable driver/GPU."""
    cuda = _load_first(("libcuda.so.1", "libcuda.so", "nvcuda.dll"))
    if cuda is None or cuda.cuInit(0) != 0:
        return None
    device = ctypes.c_int()
    if cuda.cuDeviceGet(ctypes.byref(device), index) != 0:
        return None
    name = ctypes.create_string_buffer(256)
    major, minor, driver = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    # 75 / 76 = CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR (stable driver API values).
    if (
        cuda.cuDeviceGetName(name, len(name), device) != 0
        or cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device) != 0
        or cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device) != 0
        or cuda.cuDriverGetVersion(ctypes.byref(driver)) != 0
    ):
        return None
    return GpuInfo(
        name=name.value.decode(errors="replace"),
        compute_capability=f"{major.value}.{minor.value}",
        cuda_driver=_cuda_version_string(driver.value),
    )


def cuda_runtime_version() -> str | None:
    """Version of the CUDA runtime library the process can load (what the plugin links), or None."""
    cudart = _load_first(("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"))
    if cudart is None:
        return None
    value = ctypes.c_int()
    if cudart.cudaRuntimeGetVersion(ctypes.byref(value)) != 0:
        return None
    return _cuda_version_string(value.value)


# ---------------------------------------------------------------------------------------------
# Sidecar: write, read, check


def rebuild_command(sidecar: Mapping[str, Any], engine_path: Path | str | None = None) -> str:
    """The commands that rebuild this engine on the current machine (plugin first: it is per-arch); `engine_path`:
    where the engine is now (it may have moved with its sidecar since it was built)."""
    onnx = sidecar.get("source_onnx", {}).get("path", "model.onnx")
    engine = engine_path if engine_path is not None else sidecar.get("engine", {}).get("path", "model.engine")
    plugin = sidecar.get("plugin", {}).get("path", str(DEFAULT_PLUGIN_DIR / PLUGIN_LIBRARY_NAME))
    precision = sidecar.get("precision", "fp16")
    flag = "--fp16" if precision == "fp16" else ""
    plugin_dir = str(Path(plugin).parent)
    return (shell("vivim-export", "plugin", "-o", plugin_dir) + " && "
            + shell("vivim-export", "trt", onnx, flag or None, "-o", engine, "--plugin", plugin))


def write_sidecar(engine_path: Path, sidecar: Mapping[str, Any]) -> Path:
    path = sidecar_path(engine_path)
    atomic.write_json(path, sidecar)
    return path


def read_sidecar(path: Path) -> dict[str, Any]:
    """Read `<engine>.json`; `path` may be the engine or the sidecar itself."""
    path = Path(path)
    side = path if path.suffix == ".json" else sidecar_path(path)
    if not side.is_file():
        engine = side.with_suffix("") if side.suffix == ".json" else path
        raise VivimError(  # from a checkpoint, as --fp16 refuses an FP32 ONNX (an ONNX is built in its own types)
            f"{side}: engine sidecar not found; engines built by vivim-export trt have one (rebuild the engine: "
            f"{shell('vivim-export', 'trt', 'CHECKPOINT', '--fp16', '-o', engine)})"
        )
    try:
        data = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VivimError(f"{side}: unreadable engine sidecar ({exc})") from exc
    if not isinstance(data, dict) or data.get("schema") != SIDECAR_SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise VivimError(f"{side}: not a Vivim engine sidecar (schema {found!r}, expected {SIDECAR_SCHEMA!r})")
    for key in ("gpu", "tensorrt_version", "engine", "inputs", "outputs"):
        if key not in data:
            raise VivimError(f"{side}: engine sidecar lacks '{key}'")
    return data


def _release(version: str) -> tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0): engines are tied to the TensorRT release, not the build number."""
    parts: list[int] = []
    for token in str(version).split(".")[:3]:
        digits = "".join(ch for ch in token if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _normalise_cc(cc: str | tuple[int, int]) -> str:
    if isinstance(cc, tuple):
        return f"{cc[0]}.{cc[1]}"
    text = str(cc).strip().replace("sm_", "")
    if "." not in text and text.isdigit() and len(text) >= 2:
        text = f"{text[:-1]}.{text[-1]}"
    return text


def check_engine_compatible(
    sidecar: Mapping[str, Any],
    gpu_name: str,
    cc: str | tuple[int, int],
    trt_version: str,
    *,
    plugin_sha256: str | None = None,
    engine_sha256: str | None = None,
    engine_path: Path | str | None = None,
) -> None:
    """Raise VivimError (with the rebuild command) unless the engine was built for this machine.

    TensorRT plans are specific to the GPU model and the TensorRT release that built them; the
    plugin library must be the one the engine was built with, and the engine file the one the sidecar describes
    (an engine copied over another, or a sidecar whose write failed, would otherwise pass with stale facts).
    """
    built_gpu = sidecar.get("gpu", {})
    built_name = str(built_gpu.get("name", "?"))
    built_cc = _normalise_cc(str(built_gpu.get("compute_capability", "?")))
    built_trt = str(sidecar.get("tensorrt_version", "?"))
    engine = engine_path if engine_path is not None else sidecar.get("engine", {}).get("path", "the engine")
    problems: list[str] = []
    if built_name != gpu_name or built_cc != _normalise_cc(cc):
        problems.append(f"GPU {built_name} (sm {built_cc}) vs this {gpu_name} (sm {_normalise_cc(cc)})")
    if _release(built_trt) != _release(trt_version):
        problems.append(f"TensorRT {built_trt} vs installed {trt_version}")
    built_plugin = sidecar.get("plugin", {}).get("sha256")
    if plugin_sha256 is not None and built_plugin is not None and built_plugin != plugin_sha256:
        problems.append("plugin library differs from the one it was built with (sha256 mismatch)")
    described = sidecar.get("engine", {}).get("sha256")
    if engine_sha256 is not None and described is not None and described != engine_sha256:
        problems.append("the engine file is not the one its sidecar describes (sha256 mismatch)")
    if problems:
        raise VivimError(
            f"{engine} was built for another setup ({'; '.join(problems)}); rebuild it here: {rebuild_command(sidecar, engine_path)}"
        )


# ---------------------------------------------------------------------------------------------
# Engine build (TensorRT Python API)


def _dtype_name(dtype: object) -> str:
    """`DataType.HALF` -> 'HALF' (stable across TensorRT versions)."""
    return str(dtype).rsplit(".", 1)[-1]


PRECISION_OF_DTYPE = {"HALF": "fp16", "BF16": "bf16", "FLOAT": "fp32"}


def build_progress_monitor(trt: Any, enabled: bool) -> Any:
    """A bar per top-level phase of a TensorRT build (minutes on a Jetson), where TensorRT reports them (10.0 and
    newer) and stderr is a terminal; None otherwise. TensorRT may call it from several threads."""
    if not enabled or not hasattr(trt, "IProgressMonitor"):
        return None
    import threading

    from tqdm import tqdm

    class BuildProgress(trt.IProgressMonitor):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()
            self._bars: dict[str, Any] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                if parent_phase is None:  # nested phases would stack bars: the top-level ones tell the progress
                    self._bars[phase_name] = tqdm(total=num_steps, desc=f"TensorRT: {phase_name}", unit="step",
                                                  leave=False, file=sys.stderr)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                bar = self._bars.get(phase_name)
                if bar is not None:
                    bar.update(step + 1 - bar.n)
            return True  # never asks TensorRT to cancel

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                bar = self._bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

    return BuildProgress()


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    plugin_path: Path,
    workspace_gib: float = 2.0,
    timing_cache: Path | None = None,
    verbose: bool = False,
    *,
    precision: str | None = None,
    rerun: str | None = None,
) -> Path:
    """Parse `onnx_path`, build a strongly typed engine with our plugin, write it and its sidecar.

    precision ('fp16' | 'bf16' | 'fp32' | None): what the caller expects the graph to be; a
    mismatch is an error because strong typing never converts precision on its own.
    """
    onnx_path, engine_path, plugin_path = Path(onnx_path), Path(engine_path), Path(plugin_path)
    _check_build_arguments(onnx_path, engine_path, plugin_path, workspace_gib, precision)
    if import_tensorrt() is None:
        raise VivimError(tensorrt_missing_message(rerun or f"vivim-export trt {onnx_path} -o {engine_path}"))
    import tensorrt as trt

    class _Logger(trt.ILogger):
        """Prints warnings (everything with --verbose) and remembers the last error for the one-line message."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.last_error = ""

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity <= trt.ILogger.ERROR:
                self.last_error = msg.strip().splitlines()[-1] if msg.strip() else msg
            if verbose or severity <= trt.ILogger.WARNING:
                print(f"[TensorRT] {msg}", file=sys.stderr)

    logger = _Logger()
    load_plugin_library(plugin_path)
    gpu = current_gpu()
    if gpu is None:  # the sidecar binds the engine to its GPU; without it no later run could accept the engine
        raise VivimError(f"cannot build {engine_path}: the CUDA driver (libcuda) does not name this machine's GPU")
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # pybind's TypeError/RuntimeError when CUDA cannot start
        raise VivimError(f"TensorRT could not start a builder on this GPU ({exc}); check the driver with nvidia-smi") from exc
    # the parser owns weights that the network refers to: both stay referenced here until the build returns
    network, parser = _parse_onnx(builder, logger, onnx_path)
    graph_precision = _graph_precision(network)
    if precision is not None and precision != graph_precision:
        raise VivimError(
            f"{onnx_path}: the graph computes in {graph_precision} but {precision} was requested; TensorRT builds "
            f"strongly typed, so export the ONNX in {precision} "
            f"({'vivim-export onnx ... --fp16' if precision == 'fp16' else 'vivim-export onnx ... without --fp16'})"
        )
    config = _builder_config(builder, workspace_gib, timing_cache)
    monitor = build_progress_monitor(trt, sys.stderr.isatty())
    if monitor is not None:  # kept referenced until the build returns: TensorRT calls it from its threads
        config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise VivimError(f"TensorRT could not build {engine_path}: {logger.last_error or 'see the log above'}")
    atomic.write_bytes(engine_path, bytes(memoryview(serialized)))
    if timing_cache is not None:
        atomic.write_bytes(Path(timing_cache), bytes(memoryview(config.get_timing_cache().serialize())))
    write_sidecar(engine_path, _engine_sidecar(engine_path, plugin_path, onnx_path, network, graph_precision,
                                               workspace_gib, gpu))
    return engine_path


def check_workspace(workspace_gib: float) -> None:
    """--workspace: a finite size of at least 1 MiB (nan and inf would fail in the byte conversion; a sub-byte value
    would give TensorRT an empty pool)."""
    if not math.isfinite(workspace_gib) or workspace_gib * 2**30 < 2**20:
        raise VivimError(f"--workspace {workspace_gib}: must be a number of GiB, at least 1 MiB (0.001)")


def _check_build_arguments(onnx_path: Path, engine_path: Path, plugin_path: Path, workspace_gib: float,
                           precision: str | None) -> None:
    """The checks that need no TensorRT, so a typo fails at once, also on a machine without it."""
    if not onnx_path.is_file():
        raise VivimError(f"{onnx_path}: no such ONNX file")
    if not plugin_path.is_file():
        raise VivimError(f"--plugin {plugin_path}: no such plugin library (build it with vivim-export plugin)")
    check_workspace(workspace_gib)
    if precision is not None and precision not in PRECISION_OF_DTYPE.values():
        raise VivimError(f"precision {precision!r}: expected one of fp16, bf16, fp32")
    paths.check_writable(engine_path, "-o")
    # the sidecar carries the model's metadata to vivim-run (normalisation, output frame): a graph without it would
    # build, then draw masks from wrongly prepared frames
    meta = onnx_metadata(onnx_path)
    missing_vivim_metadata(meta, str(onnx_path))
    states = meta.get("scan_states", "")  # graphs exported before it was recorded: the plugin itself refuses
    if states.isdigit() and int(states) > MAX_SCAN_STATES:
        raise VivimError(f"{onnx_path}: its scans have {states} states per channel (the model's d_state); the plugin "
                         f"holds at most {MAX_SCAN_STATES}: run this graph with vivim-run --onnx (ONNX Runtime)")


# The plugin library this process registered with TensorRT: (resolved path, sha256, handle). TensorRT keeps a
# library's creators until the process ends and refuses to load one whose creators are registered already.
_loaded_plugin: tuple[str, str, Any] | None = None


def load_plugin_library(plugin_path: Path, flag: str = "--plugin") -> None:
    """Register our plugin's creator with TensorRT, once per process: a second engine in the same process (vivim-bench
    builds one, then opens it twice) reuses it. A different build of the library in the same process is refused,
    since TensorRT would keep running the first one."""
    global _loaded_plugin
    import tensorrt as trt

    digest = file_sha256(plugin_path)
    if _loaded_plugin is not None:
        if _loaded_plugin[1] == digest:
            return
        raise VivimError(f"{flag} {plugin_path}: this process already loaded another build of the plugin "
                         f"({_loaded_plugin[0]}), which TensorRT keeps until the process ends; run it in a new process")
    registry = trt.get_plugin_registry()
    if registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is not None:
        raise VivimError(f"{flag} {plugin_path}: a {PLUGIN_NAMESPACE}::{PLUGIN_NAME} v{PLUGIN_VERSION} creator is already "
                         "registered in this process by another library, which TensorRT would run instead")
    try:
        handle = registry.load_library(str(plugin_path))
    except Exception as exc:  # pybind raises RuntimeError/TypeError depending on the version
        raise VivimError(f"{flag} {plugin_path}: TensorRT could not load it ({exc})") from exc
    if handle is None or registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
        raise VivimError(
            f"{flag} {plugin_path}: no {PLUGIN_NAMESPACE}::{PLUGIN_NAME} v{PLUGIN_VERSION} creator after loading; "
            f"rebuild it against TensorRT {trt.__version__} headers with vivim-export plugin"
        )
    _loaded_plugin = (str(Path(plugin_path).resolve()), digest, handle)


def _parse_onnx(builder: tensorrt.Builder, logger: tensorrt.ILogger,
                onnx_path: Path) -> tuple[tensorrt.INetworkDefinition, tensorrt.OnnxParser]:
    """A strongly typed network from the ONNX file, with static input shapes; the parser comes back too."""
    import tensorrt as trt

    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:  # TensorRT 11 keeps the flag (always strongly typed anyway)
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        first = errors[0].strip().replace("\n", " ") if errors else getattr(logger, "last_error", "")
        raise VivimError(f"{onnx_path}: TensorRT could not parse it ({len(errors)} error(s); first: {first})")
    for tensor in (network.get_input(i) for i in range(network.num_inputs)):
        if any(extent < 0 for extent in _shape(tensor)):
            raise VivimError(
                f"{onnx_path}: input {tensor.name} has a dynamic shape {_shape(tensor)}; "
                "export with static shapes (the default of vivim-export onnx)"
            )
    return network, parser


def _builder_config(builder: tensorrt.Builder, workspace_gib: float,
                    timing_cache: Path | None) -> tensorrt.IBuilderConfig:
    """Workspace limit and timing cache (a cache from another TensorRT or GPU is replaced, with a warning)."""
    import tensorrt as trt

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    cache_bytes = b""
    if timing_cache is not None and Path(timing_cache).is_file():
        cache_bytes = Path(timing_cache).read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    if cache is None or not config.set_timing_cache(cache, False):
        print(f"warning: timing cache {timing_cache} does not match this TensorRT/GPU; starting a new one", file=sys.stderr)
        config.set_timing_cache(config.create_timing_cache(b""), False)
    return config


def _engine_sidecar(engine_path: Path, plugin_path: Path, onnx_path: Path, network: tensorrt.INetworkDefinition,
                    precision: str, workspace_gib: float, gpu: GpuInfo) -> dict[str, Any]:
    """What the engine is bound to (GPU, TensorRT, CUDA, plugin) and what it holds (I/O, model, source)."""
    import tensorrt as trt

    return {
        "schema": SIDECAR_SCHEMA,
        "engine": {"path": str(engine_path), "sha256": file_sha256(engine_path), "bytes": engine_path.stat().st_size},
        "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability},
        "tensorrt_version": str(trt.__version__),
        "cuda": {"driver": gpu.cuda_driver, "runtime": cuda_runtime_version()},
        "precision": precision,
        "strongly_typed": True,
        "workspace_gib": workspace_gib,
        "plugin": {
            "path": str(plugin_path.resolve()),
            "sha256": file_sha256(plugin_path),
            "name": PLUGIN_NAME,
            "version": PLUGIN_VERSION,
            "namespace": PLUGIN_NAMESPACE,
        },
        "inputs": [_describe(network.get_input(i)) for i in range(network.num_inputs)],
        "outputs": [_describe(network.get_output(i)) for i in range(network.num_outputs)],
        "model": onnx_metadata(onnx_path),
        "source_onnx": {"path": str(onnx_path.resolve()), "sha256": file_sha256(onnx_path)},
        "built": {
            "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(),
            "machine": platform.machine(),
            "package_version": _package_version(),
        },
    }


def _shape(tensor: tensorrt.ITensor) -> list[int]:
    dims = tensor.shape
    return [int(dims[i]) for i in range(len(dims))]


def _describe(tensor: tensorrt.ITensor) -> dict[str, Any]:
    return {"name": str(tensor.name), "shape": _shape(tensor), "dtype": _dtype_name(tensor.dtype)}


def _graph_precision(network: tensorrt.INetworkDefinition) -> str:
    """fp16/bf16 if any layer produces such a tensor (A/D/dt_bias stay fp32 in an fp16 graph), else fp32."""
    seen: set[str] = set()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            seen.add(_dtype_name(layer.get_output(j).dtype))
    for dtype, name in (("HALF", "fp16"), ("BF16", "bf16")):
        if dtype in seen:
            return name
    return "fp32"


def _package_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("vivim-edge")
    except Exception:  # not installed as a distribution (plain checkout)
        return None
