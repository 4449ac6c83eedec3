"""The selective-scan CUDA kernel compiles with nvcc for Jetson Orin (sm_87) and Hopper (sm_90); no GPU needed.

CI runs this so a broken kernel fails there even though CI has no GPU. Skipped (with the reason) without nvcc.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNEL = ROOT / "plugins" / "selective_scan" / "src" / "selective_scan.cu"
BACKWARD_KERNEL = ROOT / "plugins" / "selective_scan" / "src" / "selective_scan_bwd.cu"
INCLUDE = ROOT / "plugins" / "selective_scan" / "include"


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return None


NVCC = _nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (install the CUDA toolkit to compile-check the kernel)")


# torch.utils.cpp_extension compiles the kernel with these (no implicit half/bfloat16 conversions); the CMake and
# TensorRT builds do not. Compiling with them covers both.
_TORCH_EXTENSION_MACROS = ("-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                           "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__")
_OBJECTS: dict[str, Path] = {}  # arch -> compiled object, reused by the host-side workspace check


def _compile(arch: str, out_dir: Path, source: Path = KERNEL) -> Path:
    obj = out_dir / f"{source.stem}_sm{arch}.o"
    cmd = [NVCC, "-c", "-O3", "-std=c++17", f"-I{INCLUDE}", f"-gencode=arch=compute_{arch},code=sm_{arch}",
           "-Werror", "all-warnings", *_TORCH_EXTENSION_MACROS, str(source), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"nvcc failed for {source.name}, sm_{arch}:\n{proc.stderr[-4000:]}"
    if source == KERNEL:
        _OBJECTS[arch] = obj
    return obj


@pytest.mark.parametrize("arch", ["87", "90"])
def test_kernel_compiles_for_arch(arch: str, tmp_path: Path) -> None:
    obj = _compile(arch, tmp_path)
    assert obj.stat().st_size > 0
    # The launcher API is exported with C linkage, as the header promises (the TensorRT plugin links it).
    nm = shutil.which("nm")
    if nm:
        symbols = subprocess.run([nm, "-g", "--defined-only", str(obj)], capture_output=True, text=True).stdout
        assert " vivim_selective_scan_fwd" in symbols
        assert " vivim_selective_scan_workspace_size" in symbols


@pytest.mark.parametrize("arch", ["87", "90"])
def test_backward_kernel_compiles_for_arch(arch: str, tmp_path: Path) -> None:
    obj = _compile(arch, tmp_path, BACKWARD_KERNEL)
    nm = shutil.which("nm")
    if nm:
        symbols = subprocess.run([nm, "-g", "--defined-only", str(obj)], capture_output=True, text=True).stdout
        assert " vivim_selective_scan_bwd" in symbols
        assert " vivim_selective_scan_bwd_workspace_size" in symbols


def test_header_is_plain_c() -> None:
    """The header compiles as C (no torch, no TensorRT, no C++-only constructs), so any host code can use it."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler found")
    cuda_include = Path(NVCC).resolve().parents[1] / "include"  # type: ignore[arg-type]
    candidates = [cuda_include, Path("/usr/local/cuda/include")]
    inc = next((p for p in candidates if (p / "cuda_runtime_api.h").exists()), None)
    if inc is None:
        pytest.skip("cuda_runtime_api.h not found next to nvcc")
    src = ('#include "vivim/selective_scan.h"\n#include "vivim/selective_scan_bwd.h"\n'
           'int main(void) { return (int)(sizeof(vivim_scan_params_t) + sizeof(vivim_scan_bwd_params_t)) > 0 ? 0 : 1; }\n')
    proc = subprocess.run([cc, "-std=c99", "-fsyntax-only", f"-I{INCLUDE}", f"-I{inc}", "-x", "c", "-"],
                          input=src, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_workspace_size_contract(tmp_path: Path) -> None:
    """Host-only: the size query is monotone in batch and L, and the launcher accepts exactly that many bytes."""
    obj = _OBJECTS.get("90")
    if obj is None or not obj.exists():
        obj = _compile("90", tmp_path)
    exe = tmp_path / "workspace_check"
    src = ROOT / "plugins" / "selective_scan" / "test" / "workspace_check.cpp"
    proc = subprocess.run([NVCC, "-O2", "-std=c++17", f"-I{INCLUDE}", str(src), str(obj), "-o", str(exe)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    def check(*args: str, **env: str) -> str:
        run = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120,
                             env={**os.environ, **env})
        assert run.returncode == 0 and run.stdout.strip().endswith("ok (0 failures)"), run.stdout[-4000:]
        return run.stdout.split("digest ")[1].split()[0]

    default = check()
    # a TensorRT engine's workspace is sized where it is built: the tuning variables of the process that runs it must
    # not change what the kernel needs (a larger target needed more scratch than was reserved)
    tuned_env = {"VIVIM_SCAN_TARGET_BLOCKS": "4096", "VIVIM_SCAN_CPB": "16", "VIVIM_SCAN_RESIDENT": "0"}
    assert check(**tuned_env) == default
    # a process that opts in (the PyTorch binding, for benchmarks) gets the tuned chunking, sized consistently
    assert check("--tuning", **tuned_env) != default
