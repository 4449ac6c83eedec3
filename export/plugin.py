"""Build the TensorRT plugin library (plugins/tensorrt) with CMake: `vivim-export plugin`.

Only TensorRT *headers* and the CUDA toolkit are needed; the library links against the CUDA runtime
alone, so it can be built on a machine without TensorRT libraries (and cross-checked against both
TensorRT 10.3 of JetPack 6 and 11.x headers).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Sequence

from vivim import atomic, paths
from vivim.paths import PathLike
from vivim.errors import VivimError

PLUGIN_LIBRARY_NAME = "libvivim_trt_plugin.so"
# The plugin's identity: the TensorRT creator (name, version, namespace) and the ONNX node's attributes that select it.
PLUGIN_NAME = "VivimSelectiveScan"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "vivim"
DEFAULT_PLUGIN_DIR = Path("vivim_plugin")  # where `vivim-export plugin` puts it by default
HARNESS_NAME = "vivim_trt_plugin_harness"
# Used when neither --arch is given nor a GPU can be queried: Jetson Orin and Hopper.
FALLBACK_CUDA_ARCHS = ("87", "90")
# Where distributions put the headers (JetPack: /usr/include/aarch64-linux-gnu).
STANDARD_INCLUDE_DIRS = (
    "/usr/include/aarch64-linux-gnu",
    "/usr/include/x86_64-linux-gnu",
    "/usr/local/tensorrt/include",
    "/usr/src/tensorrt/include",
    "/usr/include",
)
HEADERS_MISSING = (
    "TensorRT headers not found (NvInferRuntime.h): pass --tensorrt-include DIR or set TENSORRT_ROOT; "
    "on Jetson: sudo apt install libnvinfer-dev; on desktop: the TensorRT tarball's include/ folder "
    "(or include/ of github.com/NVIDIA/TensorRT for the matching release)"
)


def plugin_source_dir() -> Path:
    """The repository's plugins/ folder (CMake project of the kernel and the TensorRT glue)."""
    root = Path(__file__).resolve().parent.parent / "plugins"
    if not (root / "tensorrt" / "CMakeLists.txt").is_file():
        raise VivimError(
            f"plugin sources not found at {root}: build the plugin from a source checkout of vivim-edge"
        )
    return root


def find_tensorrt_include(tensorrt_include: Path | None = None) -> Path:
    """Directory holding NvInferRuntime.h: the explicit flag, then TENSORRT_ROOT, then system folders."""
    if tensorrt_include is not None:
        for candidate in (Path(tensorrt_include), Path(tensorrt_include) / "include"):
            if (candidate / "NvInferRuntime.h").is_file():
                return candidate.resolve()
        raise VivimError(f"--tensorrt-include {tensorrt_include}: no NvInferRuntime.h there (or in its include/)")
    candidates: list[Path] = []
    root = os.environ.get("TENSORRT_ROOT")
    if root:
        candidates += [Path(root) / "include", Path(root)]
    candidates += [Path(d) for d in STANDARD_INCLUDE_DIRS]
    for candidate in candidates:
        if (candidate / "NvInferRuntime.h").is_file():
            return candidate.resolve()
    raise VivimError(HEADERS_MISSING)


def tensorrt_header_version(include_dir: Path) -> tuple[int, int, int]:
    """(major, minor, patch) from NvInferVersion.h; 11.x spells them TRT_*_ENTERPRISE."""
    text = (include_dir / "NvInferVersion.h").read_text(errors="replace")
    values: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "#define" and parts[2].isdigit():
            values[parts[1]] = int(parts[2])
    version = []
    for field in ("MAJOR", "MINOR", "PATCH"):
        value = values.get(f"TRT_{field}_ENTERPRISE", values.get(f"NV_TENSORRT_{field}"))
        if value is None:
            raise VivimError(f"{include_dir / 'NvInferVersion.h'}: cannot read the TensorRT version")
        version.append(value)
    return version[0], version[1], version[2]


def find_nvcc() -> Path:
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise VivimError(
        "nvcc not found: install the CUDA toolkit (JetPack puts it in /usr/local/cuda/bin; add that to PATH) "
        "or set CUDACXX=/path/to/nvcc"
    )


def find_cmake() -> Path:
    found = shutil.which("cmake")
    if not found:
        raise VivimError("cmake not found: install CMake >= 3.18 (sudo apt install cmake, or pip install cmake)")
    return Path(found)


def detect_local_cuda_archs() -> list[str]:
    """Compute capabilities of the visible GPUs, e.g. ['87']: nvidia-smi's, else the CUDA driver's (containers and
    some Jetson images have no nvidia-smi, or one without compute_cap); [] when neither knows."""
    archs: set[str] = set()
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20, check=True,
            ).stdout
            archs = {line.strip().replace(".", "") for line in out.splitlines() if line.strip()}
        except (OSError, subprocess.SubprocessError):
            pass
    archs = {a for a in archs if a.isdigit()}
    if not archs:
        from vivim.export.tensorrt_build import current_gpu

        for index in range(16):
            gpu = current_gpu(index)
            if gpu is None:
                break
            archs.add(gpu.compute_capability.replace(".", ""))
    return sorted(archs)


def resolve_cuda_archs(arch: str | None, cuda_archs: Sequence[str] | None = None) -> list[str]:
    """`--arch 87`, `--arch 87,90` or a list; default: the local GPU, else FALLBACK_CUDA_ARCHS."""
    return cuda_archs_and_origin(arch, cuda_archs)[0]


def cuda_archs_and_origin(arch: str | None, cuda_archs: Sequence[str] | None = None) -> tuple[list[str], str]:
    """resolve_cuda_archs, and where the architectures come from, for the build's log line."""
    requested: list[str] = []
    if arch:
        requested += [a for a in arch.replace(";", ",").split(",") if a.strip()]
    if cuda_archs:
        requested += list(cuda_archs)
    cleaned = [a.strip().replace("sm_", "").replace(".", "") for a in requested]
    for a in cleaned:
        number = a[:-1] if a[-1:] in ("a", "f") else a
        # CUDA 13 builds for 7.5 and newer; 'native' (this machine's GPU) cannot be mixed with named ones
        if not ((number.isdigit() and 75 <= int(number) < 1000) or (a == "native" and len(cleaned) == 1)):
            raise VivimError(f"--arch {a}: expected a CUDA compute capability of 75 or more, such as 87 (Orin), "
                             "90 (H100) or 110 (Thor), or 'native' alone")
    if cleaned:
        return list(dict.fromkeys(cleaned)), "--arch"
    local = detect_local_cuda_archs()
    if local:
        return local, "this machine's GPU"
    return list(FALLBACK_CUDA_ARCHS), "no GPU found here: Jetson Orin and Hopper; --arch for another"


def cmake_version(cmake: Path) -> tuple[int, int]:
    try:
        out = subprocess.run([str(cmake), "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise VivimError(f"{cmake}: cannot run it ({exc})") from exc
    match = re.search(r"version (\d+)\.(\d+)", out)
    if not match:
        raise VivimError(f"{cmake}: cannot read its version from {out.strip()[:80]!r}")
    return int(match.group(1)), int(match.group(2))


def _required_cmake(cmakelists: Path) -> tuple[int, int]:
    match = re.search(r"cmake_minimum_required\s*\(\s*VERSION\s+(\d+)\.(\d+)", cmakelists.read_text(), re.I)
    return (int(match.group(1)), int(match.group(2))) if match else (3, 18)


def cmake_source_dir(source_root: Path, installed: tuple[int, int]) -> Path:
    """plugins/ (kernel and plugin together) when this CMake can configure it, else plugins/tensorrt alone.

    plugins/tensorrt needs CMake 3.18 and pulls the kernel target from plugins/selective_scan, so stock
    JetPack 6 CMake (3.22) works even if the top-level project asks for a newer one.
    """
    standalone = source_root / "tensorrt"
    top = source_root / "CMakeLists.txt"
    if top.is_file() and installed >= _required_cmake(top):
        return source_root
    needed = _required_cmake(standalone / "CMakeLists.txt")
    if installed < needed:
        raise VivimError(
            f"cmake {installed[0]}.{installed[1]} is too old: the plugin needs CMake >= {needed[0]}.{needed[1]} "
            "(pip install cmake)"
        )
    return standalone


def _run_step(command: list[str], log_path: Path, step: str, verbose: bool) -> None:
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        try:
            if verbose:
                proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                assert proc.stdout is not None
                for line in proc.stdout:
                    print(line, end="")
                    log.write(line)
                code = proc.wait()
            else:
                code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
        except OSError as exc:
            raise VivimError(f"plugin build: could not run {command[0]}: {exc}") from exc
    if code != 0:
        raise VivimError(f"plugin build failed during {step} (exit {code}); full log: {log_path}")


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic.atomic_path(dst, mode=0o755) as tmp:
        shutil.copy2(src, tmp)


def build_plugin(
    out_dir: Path,
    arch: str | None = None,
    tensorrt_include: Path | None = None,
    cuda_archs: Sequence[str] | None = None,
    verbose: bool = False,
    *,
    build_harness: bool = False,
    build_type: str = "Release",
    jobs: int | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> Path:
    """Configure and build the plugin with CMake; returns out_dir/libvivim_trt_plugin.so.

    The CMake tree lives in out_dir/build (kept for fast rebuilds, log in out_dir/build/build_plugin.log).
    With build_harness the interface/GPU test driver is copied to out_dir too (see harness_path()).
    """
    cmake = find_cmake()
    nvcc = find_nvcc()
    include_dir = find_tensorrt_include(tensorrt_include)
    major, _, _ = tensorrt_header_version(include_dir)
    if major < 10:
        raise VivimError(f"{include_dir}: TensorRT {major}.x headers; the IPluginV3 plugin needs TensorRT 10.0 or newer")
    out_dir = paths.check_writable(out_dir, "-o", folder=True)  # after the tools are found: a refusal leaves no folder
    archs, origin = cuda_archs_and_origin(arch, cuda_archs)
    log(f"plugin: building for compute capability {', '.join(archs)} ({origin})")
    source = cmake_source_dir(plugin_source_dir(), cmake_version(cmake))

    build_dir = out_dir / "build"
    build_dir.mkdir(exist_ok=True)
    log_path = build_dir / "build_plugin.log"
    log_path.write_text("")
    configure = [
        str(cmake), "-S", str(source), "-B", str(build_dir),
        f"-DCMAKE_BUILD_TYPE={build_type}",
        f"-DCMAKE_CUDA_COMPILER={nvcc}",
        f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(archs)}",
        f"-DTENSORRT_INCLUDE_DIR={include_dir}",
        "-DVIVIM_BUILD_TRT_PLUGIN=ON",
        f"-DVIVIM_BUILD_TRT_HARNESS={'ON' if build_harness else 'OFF'}",
    ]
    _run_step(configure, log_path, "CMake configure", verbose)
    parallel = jobs or max(1, min(os.cpu_count() or 1, 8))
    targets = ["vivim_trt_plugin"] + ([HARNESS_NAME] if build_harness else [])
    build = [str(cmake), "--build", str(build_dir), "--parallel", str(parallel), "--target", *targets]
    _run_step(build, log_path, "compilation", verbose)

    built = _find_artifact(build_dir, PLUGIN_LIBRARY_NAME)
    library = out_dir / PLUGIN_LIBRARY_NAME
    _copy_atomic(built, library)
    if build_harness:
        _copy_atomic(_find_artifact(build_dir, HARNESS_NAME), out_dir / HARNESS_NAME)
    return library


def harness_path(out_dir: Path) -> Path:
    return Path(out_dir) / HARNESS_NAME


def _find_artifact(build_dir: Path, name: str) -> Path:
    matches = sorted(p for p in build_dir.rglob(name) if p.is_file() and "CMakeFiles" not in p.parts)
    if not matches:
        raise VivimError(f"plugin build finished but {name} was not produced in {build_dir}")
    return matches[0]


def find_plugin_library(given: PathLike | None, engine: Path, flag: str = "--plugin", hint: str = "") -> Path:
    """The plugin library to load: `given` (the user's flag), else ./vivim_plugin/, else the engine's folder.

    Never a path read from a file: an engine's sidecar records the library it was built with, and loading whatever
    a sidecar names would let anyone who hands over an engine choose the code that runs. `hint` ends the error."""
    if given is not None:
        return paths.require_file(given, flag)
    candidates = (DEFAULT_PLUGIN_DIR / PLUGIN_LIBRARY_NAME, Path(engine).parent / PLUGIN_LIBRARY_NAME)
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise VivimError(f"no plugin library given and none at ./{candidates[0]} or beside {engine}: pass {flag} PATH "
                         f"or build it with `vivim-export plugin -o {DEFAULT_PLUGIN_DIR}`" + (f" ({hint})" if hint else ""))
    return found
