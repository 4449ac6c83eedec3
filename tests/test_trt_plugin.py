"""The TensorRT plugin (plugins/tensorrt) against the official TensorRT headers, without TensorRT libraries.

(a) the glue compiles against TensorRT 11.x and 10.3 (JetPack 6) headers; the library builds with CMake
    for sm_87 (Orin), links against the CUDA runtime only and passes the harness's interface checks
    (creator lookup, fields, shapes, formats, serialisation round trip) -- no GPU needed;
(b) on a GPU, the harness also runs enqueue against its float64 reference (marked gpu).

Headers are found through VIVIM_TRT_INCLUDE_DIRS (os.pathsep-separated include folders),
VIVIM_TRT_INCLUDE, TENSORRT_ROOT, or, as a developer convenience, the repository's .deps/trt*/include.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vivim.errors import VivimError
from vivim.export import plugin as plugin_build

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SOURCES = sorted((ROOT / "plugins" / "tensorrt" / "src").glob("*.cpp"))
HARNESS_SOURCES = sorted((ROOT / "plugins" / "tensorrt" / "harness").glob("*.cpp"))
KERNEL_INCLUDE = ROOT / "plugins" / "selective_scan" / "include"
NO_HEADERS = "TensorRT headers not found; set TENSORRT_ROOT or VIVIM_TRT_INCLUDE"


def _header_dirs() -> list[Path]:
    candidates: list[Path] = []
    for entry in os.environ.get("VIVIM_TRT_INCLUDE_DIRS", "").split(os.pathsep):
        if entry:
            candidates.append(Path(entry))
    if os.environ.get("VIVIM_TRT_INCLUDE"):
        candidates.append(Path(os.environ["VIVIM_TRT_INCLUDE"]))
    if os.environ.get("TENSORRT_ROOT"):
        candidates.append(Path(os.environ["TENSORRT_ROOT"]) / "include")
    if not candidates:
        candidates = sorted((ROOT / ".deps").glob("trt*/include"))
    found: list[Path] = []
    for c in candidates:
        if (c / "NvInferRuntime.h").is_file() and c.resolve() not in found:
            found.append(c.resolve())
    return found


HEADER_DIRS = _header_dirs()
HEADER_PARAMS = [pytest.param(d, id=f"trt{'.'.join(map(str, plugin_build.tensorrt_header_version(d)[:2]))}")
                 for d in HEADER_DIRS] or [pytest.param(None, id="no-headers")]


def _cuda_include() -> Path | None:
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        homes.insert(0, str(Path(nvcc).resolve().parents[1]))
    for home in homes:
        if home and (Path(home) / "include" / "cuda_runtime_api.h").is_file():
            return Path(home) / "include"
    return None


def _need_headers(header_dir: Path | None) -> Path:
    if header_dir is None:
        pytest.skip(NO_HEADERS)
    return header_dir


def _gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


# ---------------------------------------------------------------------------------------------
# (a) compile against both header sets


@pytest.mark.parametrize("header_dir", HEADER_PARAMS)
def test_glue_and_harness_compile_against_headers(header_dir: Path | None, tmp_path: Path) -> None:
    header_dir = _need_headers(header_dir)
    gxx = shutil.which("g++") or shutil.which("c++")
    cuda_include = _cuda_include()
    if gxx is None or cuda_include is None:
        pytest.skip("g++ and the CUDA toolkit headers (cuda_runtime_api.h) are needed to compile the glue")
    # Our code must be warning-free; TensorRT's own headers are -isystem (they trip -Wextra themselves).
    for source in PLUGIN_SOURCES + HARNESS_SOURCES:
        cmd = [gxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-Wno-deprecated-declarations",
               "-isystem", str(header_dir), "-isystem", str(cuda_include), f"-I{KERNEL_INCLUDE}",
               f"-I{source.parent}", str(source)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{source.name} vs {header_dir}:\n{proc.stderr[-4000:]}"


@pytest.mark.parametrize("header_dir", HEADER_PARAMS)
def test_header_version_parse_matches_preprocessor(header_dir: Path | None, tmp_path: Path) -> None:
    """build_plugin reads NvInferVersion.h itself; the C preprocessor is the independent judge."""
    header_dir = _need_headers(header_dir)
    cpp = shutil.which("cpp") or shutil.which("g++")
    if cpp is None:
        pytest.skip("no C preprocessor")
    probe = tmp_path / "probe.cpp"
    probe.write_text('#include "NvInferVersion.h"\nvivim_version NV_TENSORRT_MAJOR NV_TENSORRT_MINOR NV_TENSORRT_PATCH\n')
    args = [cpp] if cpp.endswith("cpp") else [cpp, "-E", "-x", "c++"]
    out = subprocess.run(args + [f"-I{header_dir}", str(probe)], capture_output=True, text=True, check=True).stdout
    match = re.search(r"vivim_version (\d+) (\d+) (\d+)", out)
    assert match, out[-500:]
    assert plugin_build.tensorrt_header_version(header_dir) == tuple(int(g) for g in match.groups())


@pytest.fixture(scope="module", params=HEADER_PARAMS)
def built_plugin(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """libvivim_trt_plugin.so + harness, built by build_plugin() with CMake (real kernel, real flags)."""
    header_dir = _need_headers(request.param)
    if shutil.which("cmake") is None or _cuda_include() is None:
        pytest.skip("cmake and the CUDA toolkit (nvcc) are needed to build the plugin")
    out = tmp_path_factory.mktemp(f"plugin-{Path(header_dir).parent.name}")
    # On a GPU machine build for that GPU (the enqueue test runs there); otherwise for Jetson Orin.
    arch = None if _gpu_available() else "87"
    library = plugin_build.build_plugin(out, arch, header_dir, build_harness=True)
    return library, plugin_build.harness_path(out)


@pytest.mark.slow
def test_plugin_library_exports_and_interfaces(built_plugin: tuple[Path, Path]) -> None:
    library, harness = built_plugin
    nm = shutil.which("nm")
    if nm:
        exported = subprocess.run([nm, "-D", "--defined-only", str(library)], capture_output=True, text=True,
                                  check=True).stdout
        functions = {line.split()[-1] for line in exported.splitlines() if " T " in line}
        assert functions == {"getCreators", "setLoggerFinder"}, functions
    readelf = shutil.which("readelf")
    if readelf:
        dynamic = subprocess.run([readelf, "-d", str(library)], capture_output=True, text=True, check=True).stdout
        needed = set(re.findall(r"Shared library: \[(.+?)\]", dynamic))
        assert not any("nvinfer" in n for n in needed), needed
        assert any(n.startswith("libcudart") for n in needed), needed
    proc = subprocess.run([str(harness), "--plugin", str(library), "--skip-gpu"], capture_output=True, text=True,
                          timeout=300)
    lines = proc.stdout.splitlines()
    failures = [line for line in lines if line.startswith("FAIL")]
    assert proc.returncode == 0 and not failures, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert sum(line.startswith("PASS") for line in lines) >= 50
    assert re.search(r"SUMMARY \d+ passed, 0 failed", proc.stdout)


# ---------------------------------------------------------------------------------------------
# (b) the harness's GPU part: enqueue vs the float64 reference


@pytest.mark.gpu
@pytest.mark.slow
def test_plugin_enqueue_matches_reference_on_gpu(built_plugin: tuple[Path, Path]) -> None:
    if not _gpu_available():
        pytest.skip("no CUDA GPU (torch.cuda.is_available() is False)")
    library, harness = built_plugin
    proc = subprocess.run([str(harness), "--plugin", str(library), "--require-gpu"], capture_output=True, text=True,
                          timeout=600)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert re.search(r"PASS enqueue stage-1 fused 3-branch fp16", proc.stdout)
    assert re.search(r"SUMMARY \d+ passed, 0 failed", proc.stdout)


# ---------------------------------------------------------------------------------------------
# build_plugin's one-line errors


def test_explicit_include_without_headers_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(VivimError, match=r"--tensorrt-include .*no NvInferRuntime.h"):
        plugin_build.find_tensorrt_include(tmp_path)


def test_missing_headers_message_says_how_to_get_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TENSORRT_ROOT", raising=False)
    monkeypatch.setattr(plugin_build, "STANDARD_INCLUDE_DIRS", ())
    with pytest.raises(VivimError) as info:
        plugin_build.find_tensorrt_include(None)
    message = str(info.value)
    assert "TENSORRT_ROOT" in message and "libnvinfer-dev" in message and "\n" not in message


def test_tensorrt_root_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "NvInferRuntime.h").write_text("// placeholder\n")
    monkeypatch.setenv("TENSORRT_ROOT", str(tmp_path))
    assert plugin_build.find_tensorrt_include(None) == (tmp_path / "include").resolve()


def test_missing_cmake_and_nvcc_are_one_line_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(plugin_build.shutil, "which", lambda name: None)
    monkeypatch.delenv("CUDACXX", raising=False)
    with pytest.raises(VivimError, match="cmake not found"):
        plugin_build.build_plugin(tmp_path / "out")
    monkeypatch.setattr(plugin_build, "find_cmake", lambda: Path("/usr/bin/cmake"))
    if not Path("/usr/local/cuda/bin/nvcc").is_file():
        with pytest.raises(VivimError, match="nvcc not found"):
            plugin_build.build_plugin(tmp_path / "out")


@pytest.mark.parametrize("arch, expected", [("87", ["87"]), ("87,90", ["87", "90"]), ("sm_87;90", ["87", "90"]),
                                            ("8.7", ["87"]), ("90a", ["90a"])])
def test_arch_flag_forms(arch: str, expected: list[str]) -> None:
    assert plugin_build.resolve_cuda_archs(arch) == expected


def test_the_default_arch_is_the_local_gpus_with_or_without_nvidia_smi(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """nvidia-smi's compute capabilities; without nvidia-smi (containers, some Jetson images) the CUDA driver's,
    so a desktop sm_86 card does not get a plugin built for 87 and 90 only; neither: the fallback."""
    from vivim.export import tensorrt_build as tb

    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '8.6\\n8.6\\n'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert plugin_build.resolve_cuda_archs(None) == ["86"]
    smi.unlink()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    gpus = [tb.GpuInfo("NVIDIA RTX A6000", "8.6", "13.0"), tb.GpuInfo("NVIDIA Jetson AGX Orin", "8.7", "12.6")]
    monkeypatch.setattr(tb, "current_gpu", lambda index=0: gpus[index] if index < len(gpus) else None)
    assert plugin_build.resolve_cuda_archs(None) == ["86", "87"]
    assert plugin_build.cuda_archs_and_origin(None)[1] == "this machine's GPU"
    monkeypatch.setattr(tb, "current_gpu", lambda index=0: None)
    assert plugin_build.resolve_cuda_archs(None) == list(plugin_build.FALLBACK_CUDA_ARCHS)
    # no GPU: the build says which architectures it chose, and why (it used to choose them silently)
    assert plugin_build.cuda_archs_and_origin(None)[1].startswith("no GPU found here: Jetson Orin and Hopper")
    assert plugin_build.cuda_archs_and_origin("87") == (["87"], "--arch")


@pytest.mark.parametrize("arch, bad", [("orin", "orin"), ("5", "5"), ("87,native", "native"), ("sm_", "")])
def test_bad_arch_is_rejected(arch: str, bad: str) -> None:
    """Refused here with the flag named, not later by CMake's configure step with a pointer to its log."""
    with pytest.raises(VivimError, match=f"--arch {bad}: expected a CUDA compute capability of 75 or more"):
        plugin_build.resolve_cuda_archs(arch)


@pytest.mark.slow
def test_plugin_command_prints_a_next_command_that_runs_as_printed(built_plugin: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    """`vivim-export plugin` ends with the engine build to run next, on the bundled demo weights: pasted into a
    shell, it passes every check of `vivim-export trt` and stops only where TensorRT itself is missing (here), or
    builds the engine (with TensorRT). The same folder again, so CMake only checks that the library is current."""
    import shlex
    import sys

    library, _ = built_plugin
    include = next(d for d in HEADER_DIRS if library.parent.name.startswith(f"plugin-{d.parent.name}"))
    arch = None if _gpu_available() else "87"
    cmd = [sys.executable, "-m", "vivim.export.cli", "plugin", "-o", str(library.parent), "--tensorrt-include",
           str(include)] + (["--arch", arch] if arch else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    printed = [line[len("next: "):] for line in proc.stdout.splitlines() if line.startswith("next: ")]
    assert len(printed) == 1 and printed[0].startswith("vivim-export trt demo --fp16"), proc.stdout
    words = shlex.split(printed[0])
    run = subprocess.run([sys.executable, "-m", "vivim.export.cli", *words[1:]], cwd=tmp_path, capture_output=True,
                         text=True, timeout=900)
    if run.returncode != 0:  # no TensorRT: the one error left is that, with this very command to rerun
        assert "TensorRT" in run.stderr and "--plugin" in run.stderr and len(run.stderr.strip().splitlines()) == 1, \
            run.stderr
    else:
        assert (tmp_path / "demo.engine").is_file()


def test_old_cmake_falls_back_to_the_standalone_plugin_project() -> None:
    """JetPack 6 ships CMake 3.22: plugins/tensorrt (CMake 3.18) must still build when plugins/ asks for more."""
    root = plugin_build.plugin_source_dir()
    text = (root / "CMakeLists.txt").read_text()
    required = tuple(int(x) for x in re.search(r"cmake_minimum_required\(VERSION (\d+)\.(\d+)", text).groups())
    assert plugin_build.cmake_source_dir(root, required) == root
    if required > (3, 18):
        assert plugin_build.cmake_source_dir(root, (required[0], required[1] - 1)) == root / "tensorrt"
    with pytest.raises(VivimError, match="too old"):
        plugin_build.cmake_source_dir(root, (3, 17))
