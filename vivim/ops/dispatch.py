"""Which selective-scan implementation runs a call.

Implementations register with a priority and an availability check. A call picks, in order of priority, the first
implementation that is available for the tensors' device: the project's CUDA kernel ('vivim_cuda', when built),
mamba-ssm's kernel on CUDA ('mamba_ssm', when its compiled extension is installed), then the PyTorch reference
(always). The backward has a ranking of its own (`grad_priority`, a number or a function of the call's inputs): ours
(vivim.ops.cuda_backward) where its fused kernel takes the call, mamba-ssm's kernel, ours otherwise, the reference.
`use_impl(name)` forces one for the forward, for benchmarks and cross-checks.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor

from vivim.errors import VivimError
from vivim.ops import mamba_kernel
from vivim.ops.reference import selective_scan_reference

# fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> out
ScanFn = Callable[..., Tensor]
# (u, delta, A, B, C, D, z, delta_bias) of one call -> that call's rank: for a kernel faster on some calls only
CallRank = Callable[[Sequence[Optional[Tensor]]], int]


@dataclass
class ScanImpl:
    name: str
    fn: ScanFn
    priority: int
    available: Callable[[], bool]
    devices: tuple[str, ...]  # device types it runs on
    differentiable: bool  # True when it can compute the backward (fn itself, or grad_fn, supports autograd)
    dtypes: Optional[tuple[torch.dtype, ...]] = None  # input dtypes it takes (None: any)
    grad_fn: Optional[ScanFn] = None  # fn with autograd support, when fn itself has none (a faster plain call)
    grad_priority: Union[None, int, CallRank] = None  # its rank for the backward, when that differs from the forward's

    def backward_priority(self, inputs: Optional[Sequence[Optional[Tensor]]] = None) -> int:
        """Its rank for the backward of a call with these inputs (without inputs: a call-ranked one ranks as its
        forward does)."""
        if callable(self.grad_priority):
            return self.grad_priority(inputs) if inputs is not None else self.priority
        return self.priority if self.grad_priority is None else self.grad_priority

    @property
    def differentiable_fn(self) -> ScanFn:
        return self.grad_fn or self.fn


_REGISTRY: dict[str, ScanImpl] = {}
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the CUDA kernels take for u, delta, B, C, z
_forced = threading.local()


def register_impl(
    name: str,
    fn: ScanFn,
    priority: int,
    available: Callable[[], bool] = lambda: True,
    devices: tuple[str, ...] = ("cuda",),
    differentiable: bool = False,
    dtypes: Optional[tuple[torch.dtype, ...]] = None,
    grad_fn: Optional[ScanFn] = None,
    grad_priority: Union[None, int, CallRank] = None,
) -> None:
    """Add (or replace) an implementation of the selective scan (`grad_fn` makes it differentiable)."""
    _REGISTRY[name] = ScanImpl(name, fn, priority, available, devices, differentiable or grad_fn is not None, dtypes,
                               grad_fn, grad_priority)


def implementations(for_backward: bool = False,
                    inputs: Optional[Sequence[Optional[Tensor]]] = None) -> list[ScanImpl]:
    """Registered implementations, the preferred first (for the forward, or for the backward of a call with
    `inputs` = (u, delta, A, B, C, D, z, delta_bias))."""
    return sorted(_REGISTRY.values(),
                  key=lambda impl: -(impl.backward_priority(inputs) if for_backward else impl.priority))


def is_available(name: str, device_type: str = "cuda") -> tuple[bool, str]:
    """(available, reason) for an implementation on a device type; the reason explains a 'no'."""
    _load_optional_impls()
    impl = _REGISTRY.get(name)
    if impl is None and name in _CUDA_ONLY:  # registered only where PyTorch sees a CUDA device, and it loads
        if not torch.cuda.is_available():
            return False, f"{name} needs CUDA (PyTorch sees no CUDA device here)"
        return False, (f"{name} is not available here: " + ("mamba-ssm is not installed" if name == "mamba_ssm" else
                                                             "the project's CUDA extension could not be built or loaded"))
    if impl is None:
        known = sorted({*_REGISTRY, *_CUDA_ONLY})
        return False, f"unknown selective-scan implementation {name!r} (known: {', '.join(known)})"
    if device_type not in impl.devices:
        return False, f"{name} does not run on {device_type}"
    try:
        if not impl.available():
            return False, f"{name} is not available here"
    except Exception as exc:  # an availability probe must never break a forward pass
        return False, f"{name} is not available here ({exc})"
    return True, ""


@contextlib.contextmanager
def use_impl(name: Optional[str], device_type: str = "cuda") -> Iterator[None]:
    """Force one implementation inside the block (None = automatic choice)."""
    if name is not None:
        ok, reason = is_available(name, device_type)
        if not ok:
            raise VivimError(reason)
    previous = getattr(_forced, "name", None)
    _forced.name = name
    try:
        yield
    finally:
        _forced.name = previous


@contextlib.contextmanager
def use_backward(name: str) -> Iterator[None]:
    """Only `name` computes backwards inside the block (the reference stays the last resort), for benchmarks and
    tests. Process-wide, unlike use_impl: autograd runs backwards on threads of its own."""
    _load_optional_impls()
    impl = _REGISTRY.get(name)
    if impl is None or not impl.differentiable:
        raise VivimError(f"{name!r} cannot compute the selective scan's backward "
                         f"(differentiable: {', '.join(sorted(n for n, i in _REGISTRY.items() if i.differentiable))})")
    saved = {key: other.differentiable for key, other in _REGISTRY.items()}
    for key, other in _REGISTRY.items():
        other.differentiable = key == name
    try:
        yield
    finally:
        for key, was in saved.items():
            if key in _REGISTRY:
                _REGISTRY[key].differentiable = was


def pick(device_type: str, need_grad: bool = False, dtype: Optional[torch.dtype] = None,
         inputs: Optional[Sequence[Optional[Tensor]]] = None) -> ScanImpl:
    """The implementation a call on `device_type` (with inputs of `dtype`, when given) uses now; a backward is
    ranked for its call's `inputs` (u, delta, A, B, C, D, z, delta_bias) when given."""
    _load_optional_impls()
    forced = getattr(_forced, "name", None)
    if forced is not None and not need_grad:
        return _REGISTRY[forced]
    for impl in implementations(for_backward=need_grad, inputs=inputs):
        if need_grad and not impl.differentiable:
            continue
        if dtype is not None and impl.dtypes is not None and dtype not in impl.dtypes:
            continue  # e.g. a float64 model on CUDA: the kernels take 16- and 32-bit floats only
        if is_available(impl.name, device_type)[0]:
            return impl
    return _REGISTRY["reference"]


_optional_loaded = False


# The CUDA implementations, registered on first use where a CUDA device is visible (vivim_cuda: the project's kernel).
_CUDA_ONLY = ("mamba_ssm", "vivim_cuda")


def _load_optional_impls() -> None:
    """Register the CUDA implementations lazily: probing them at import time would slow down `import vivim.ops`."""
    global _optional_loaded
    if _optional_loaded:
        return
    _optional_loaded = True
    if not torch.cuda.is_available():
        return
    if mamba_kernel.installed():
        register_mamba_ssm()
    try:
        from vivim.ops import _cuda_ext  # the project's kernel; builds on first use
    except ImportError:
        return
    try:
        _cuda_ext.try_register()
    except Exception:  # never let an optional accelerator break the reference path
        pass


def register_mamba_ssm() -> None:
    register_impl("mamba_ssm", mamba_kernel.mamba_kernel_scan, priority=50, available=mamba_kernel.importable,
                  devices=("cuda",), differentiable=True, dtypes=KERNEL_DTYPES)


def _reference_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))


register_impl("reference", _reference_scan, priority=0, available=lambda: True,
              devices=("cpu", "cuda", "mps", "meta"), differentiable=True)
