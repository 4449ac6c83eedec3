"""The project's CUDA selective-scan kernel as a PyTorch extension, built on first use and cached.

`try_register()` (called lazily by `vivim.ops.dispatch` when a CUDA tensor is first scanned) registers the
implementation 'vivim_cuda' (priority 100, before mamba-ssm's kernel; the backward is ranked per call by
`backward_rank`). Its availability check builds the extension once with `torch.utils.cpp_extension.load` (nvcc +
ninja) into ~/.cache/vivim/torch_extensions/... (or $TORCH_EXTENSIONS_DIR); when that is impossible it answers False
and dispatch falls back to mamba-ssm or the reference. Training: `vivim.ops.cuda_backward` gives it a backward (the
kernel of selective_scan_bwd.cu).

The cache folder is named by a digest of every source and flag and of the target GPU architectures, so a process
that finds the library there imports it directly, with no compiler: a runtime image (Jetson's l4t runtime
containers have no nvcc) can use a cache built in a development image. Load time is the same either way (2 against
9 ms on an H200 host, measured 2026-11-27).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Optional, Sequence

import torch
from torch import Tensor

from vivim.errors import ScanShapeError

_EXT_NAME = "vivim_selective_scan_ext"
_REPO_PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
_KERNEL_DIR = _REPO_PLUGINS / "selective_scan" / "src"
_INCLUDE = _REPO_PLUGINS / "selective_scan" / "include"
_SOURCES = (
    _REPO_PLUGINS / "torch_binding" / "selective_scan_binding.cpp",
    _KERNEL_DIR / "selective_scan.cu",
    _KERNEL_DIR / "selective_scan_bwd.cu",
)

_lock = threading.Lock()
_module: Optional[ModuleType] = None
_failure: Optional[str] = None


def _build_flags() -> dict[str, list[str]]:
    return {
        "extra_include_paths": [str(_INCLUDE)],
        "extra_cflags": ["-O3"],
        "extra_cuda_cflags": ["-O3", "-lineinfo", f"-DVIVIM_SCAN_SOURCES={_kernel_sources_digest()}"],
    }


def _target_architectures() -> str:
    """What torch compiles for: TORCH_CUDA_ARCH_LIST, else the visible GPUs' compute capabilities. A build for
    sm_90 must not be imported on an sm_87 board that shares the cache folder (a copied image, a shared home)."""
    listed = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if listed:
        return listed
    if not torch.cuda.is_available():
        return "none"
    return ",".join(sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}))


def build_directory() -> Path:
    """Where the compiled extension is cached: one folder per torch/CUDA version, per target architecture and per
    digest of the sources (binding, kernel, headers) and flags, so a library found there was built from exactly
    this code for these GPUs. Paths are left out, so a checkout elsewhere finds the same build."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "vivim" / "torch_extensions"
    tag = f"torch{torch.__version__.split('+')[0]}_cu{(torch.version.cuda or 'none').replace('.', '')}"
    flags = {key: value for key, value in _build_flags().items() if key != "extra_include_paths"}  # headers: digest
    digest = hashlib.sha256(repr((sorted(flags.items()), _target_architectures())).encode())
    for source in _SOURCES:
        digest.update(source.read_bytes() if source.is_file() else b"")
    return base / tag / f"{_EXT_NAME}-{digest.hexdigest()[:12]}"


def _import_cached(build_dir: Path) -> Optional[ModuleType]:
    """The library a previous process built into `build_dir`, or None (none there, or one that does not load, such
    as a build still being linked by another process: then torch's `load` waits for that build)."""
    from torch.utils.cpp_extension import LIB_EXT

    library = build_dir / f"{_EXT_NAME}{LIB_EXT}"
    if not library.is_file() or (build_dir / "lock").exists():  # absent, or another process is building it
        return None
    try:
        spec = importlib.util.spec_from_file_location(_EXT_NAME, library)
        if spec is None or spec.loader is None:
            return None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception:
        return None
    return module


def _build_tools_present() -> tuple[bool, str]:
    if not all(p.is_file() for p in _SOURCES):
        return False, f"kernel sources not found under {_REPO_PLUGINS} (installed without the plugins/ folder)"
    from torch.utils.cpp_extension import CUDA_HOME

    nvcc = Path(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
    if nvcc is None or not nvcc.exists():
        if shutil.which("nvcc") is None:
            return False, "nvcc not found (set CUDA_HOME)"
    if shutil.which("ninja") is None:
        try:
            import ninja  # noqa: F401
        except ImportError:
            return False, "ninja not found (pip install ninja)"
    return True, ""


def _kernel_sources_digest() -> str:
    """A digest of every file of the kernel's source and include folders, passed as a define: torch rebuilds a
    cached extension when its listed sources or its flags change, and this makes an edit of an included header
    count as one."""
    digest = hashlib.sha256()
    for path in sorted(p for p in (*_KERNEL_DIR.rglob("*"), *_INCLUDE.rglob("*")) if p.is_file()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def load_extension() -> ModuleType:
    """The compiled extension; builds it on the first call (prints one line), raises RuntimeError on failure."""
    global _module, _failure
    if _module is not None:
        return _module
    with _lock:
        if _module is not None:
            return _module
        if _failure is not None:
            raise RuntimeError(_failure)
        build_dir = build_directory()
        _module = _import_cached(build_dir)
        if _module is not None:
            return _module
        ok, why = _build_tools_present()
        if not ok:
            _failure = f"vivim: cannot build the CUDA selective-scan extension: {why}"
            raise RuntimeError(_failure)
        from torch.utils.cpp_extension import load

        build_dir.mkdir(parents=True, exist_ok=True)
        if not any(build_dir.glob(f"{_EXT_NAME}*.so")):
            print(f"vivim: building the CUDA selective-scan extension (once, cached in {build_dir})",
                  file=sys.stderr, flush=True)
        try:
            _module = load(
                name=_EXT_NAME,
                sources=[str(s) for s in _SOURCES],
                build_directory=str(build_dir),
                verbose=os.environ.get("VIVIM_BUILD_VERBOSE", "") == "1",
                **_build_flags(),  # type: ignore[arg-type]
            )
        except Exception as exc:  # compiler missing or failing: remember, fall back elsewhere
            last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            _failure = f"vivim: building the CUDA selective-scan extension failed: {last}"
            raise RuntimeError(_failure) from exc
        return _module


def available() -> bool:
    """True when a CUDA device is present and the extension is (or can be) built; never raises."""
    if not torch.cuda.is_available():
        return False
    try:
        load_extension()
    except Exception as exc:
        if not getattr(available, "_warned", False):
            available._warned = True  # type: ignore[attr-defined]
            print(f"{exc}; using another selective-scan implementation", file=sys.stderr)
        return False
    return True


def selective_scan_cuda(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
) -> Tensor:
    """Forward selective scan with the project's kernel (mamba-ssm `selective_scan_fn` semantics).

    u, delta, z, B, C in one of fp32/fp16/bf16 (B and C are cast to u's dtype when they differ); A, D,
    delta_bias are used in fp32. Runs on torch's current stream; no host synchronisation. Bad shapes or
    dtypes raise VivimError with a one-line message.
    """
    # The binding validates every shape, dtype and device itself (one line, no C++ exception), so only the argument
    # types are checked here: repeating the shape checks would double the host cost of a call (~6 of ~20 us on an
    # H200 host, stage 4).
    ext = load_extension()
    if not all(isinstance(t, Tensor) for t in (u, delta, A, B, C)) or any(
            t is not None and not isinstance(t, Tensor) for t in (D, z, delta_bias)):
        names = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
        optional = ("D", "z", "delta_bias")
        wrong = [k for k, v in names.items() if not isinstance(v, Tensor) and (v is not None or k not in optional)]
        noun = "a tensor" if len(wrong) == 1 else "tensors"
        raise ScanShapeError(f"selective_scan: {', '.join(wrong)} must be {noun}")
    dtype = u.dtype
    if B.dtype != dtype:
        B = B.to(dtype)
    if C.dtype != dtype:
        C = C.to(dtype)
    if delta.dtype != dtype:
        delta = delta.to(dtype)
    if z is not None and z.dtype != dtype:
        z = z.to(dtype)
    out = ext.fwd(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
    if out is None:  # the binding reports bad arguments without C++ exceptions
        raise ScanShapeError(ext.last_error())
    return out


def backward_rank(inputs: Sequence[Optional[Tensor]]) -> int:
    """Our backward's rank for one call (mamba-ssm's is 50). First wherever one fused kernel call takes the scan
    (N <= 16, every Vivim layer): on an H200 the scan's forward + backward takes 10% less time than with mamba-ssm's
    over Vivim's four training shapes. Wider states take sliced calls with the chain in PyTorch, where mamba-ssm's
    kernel is faster (benchmarks/RESULTS.md), so it goes second there; except for one-token fp16/bf16 sequences,
    where mamba-ssm's dA is wrong. A delta or z in another dtype than u's keeps ours first: mamba-ssm's kernel
    would round their gradients to u's dtype, which is why ours takes its fp32 chain there."""
    from vivim.ops.cuda_backward import STATES_PER_CALL

    u, delta, A, z = inputs[0], inputs[1], inputs[2], inputs[6]
    assert u is not None and delta is not None and A is not None
    wide = A.shape[1] > STATES_PER_CALL
    mamba_dA_wrong = u.shape[-1] == 1 and u.dtype != torch.float32
    mixed = delta.dtype != u.dtype or (z is not None and z.dtype != u.dtype)
    return 40 if wide and not mamba_dA_wrong and not mixed else 100


def try_register() -> bool:
    """Register 'vivim_cuda' with the dispatcher (priority 100; the backward ranked by `backward_rank`). Never raises;
    False when it could not."""
    try:
        if not torch.cuda.is_available():
            return False
        from vivim.ops import dispatch

        from vivim.ops.cuda_backward import trainable_selective_scan_cuda

        dispatch.register_impl("vivim_cuda", selective_scan_cuda, priority=100, available=available,
                               devices=("cuda",), dtypes=dispatch.KERNEL_DTYPES, grad_fn=trainable_selective_scan_cuda,
                               grad_priority=backward_rank)
        return True
    except Exception:
        return False
