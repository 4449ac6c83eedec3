"""Timing one inference callable: warm-up, N timed iterations, peak GPU memory.

On CUDA each iteration is bracketed by two CUDA events recorded on the current stream and the end event is
synchronised before the next iteration starts, so one sample is the latency of one isolated request
(launch gaps included, no pipelining across iterations — the streaming use case). The host wall-clock time of
the same iteration (launch + GPU + synchronisation) is kept beside it. On CPU a sample is the
time.perf_counter() wall clock of one synchronous call.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any, Callable

MIB = float(1 << 20)


@dataclass
class Measurement:
    """Raw samples of one row: `samples_ms` (CUDA events on GPU, wall clock on CPU) and `host_ms` (wall clock)."""

    samples_ms: list[float]
    host_ms: list[float]
    warmup: int
    iters: int
    timer: str  # 'cuda-event' or 'perf_counter'
    notes: list[str] = field(default_factory=list)


def is_cuda(device: Any) -> bool:
    return str(device).startswith("cuda")


def synchronize(device: Any) -> None:
    if is_cuda(device):
        import torch

        torch.cuda.synchronize(device)


def release_memory(device: Any) -> None:
    """Drop the previous row's tensors so its memory does not count against the next row."""
    gc.collect()
    if is_cuda(device):
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def reset_peak_memory(device: Any) -> None:
    """Start a fresh peak-memory window (call before the row's model is moved to the GPU)."""
    release_memory(device)
    if is_cuda(device):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: Any) -> float | None:
    """Peak memory allocated by PyTorch's caching allocator since the last reset, in MiB (None on CPU)."""
    if not is_cuda(device):
        return None
    import torch

    return torch.cuda.max_memory_allocated(device) / MIB


def peak_reserved_mb(device: Any) -> float | None:
    """Peak memory reserved by the caching allocator (closer to what nvidia-smi shows, minus the context)."""
    if not is_cuda(device):
        return None
    import torch

    return torch.cuda.max_memory_reserved(device) / MIB


def _iterations_within_budget(probe_ms: float, iters: int, max_seconds: float | None, min_iters: int) -> int:
    """Cap the iteration count so a very slow row (e.g. the Python reference scan on a GPU) fits its time budget."""
    if max_seconds is None or probe_ms <= 0:
        return iters
    affordable = int(max_seconds * 1000.0 / probe_ms)
    return max(min(iters, affordable), min(min_iters, iters))


def measure(
    fn: Callable[[], Any],
    *,
    device: Any = "cpu",
    warmup: int = 10,
    iters: int = 100,
    max_seconds: float | None = None,
    min_iters: int = 3,
) -> Measurement:
    """Run `fn` `warmup` times untimed, then time up to `iters` calls (fewer if `max_seconds` would be exceeded)."""
    if iters < 1:
        raise ValueError("iters must be >= 1")
    if warmup < 0:
        raise ValueError("warmup must be >= 0")
    cuda = is_cuda(device)
    notes: list[str] = []
    synchronize(device)
    # Warm-up gets at most a third of the budget (at least one call), so a very slow row cannot spend it all there.
    warmup_deadline = None if max_seconds is None else time.perf_counter() + max_seconds / 3.0
    done = 0
    while done < warmup:
        fn()
        done += 1
        if warmup_deadline is not None and time.perf_counter() > warmup_deadline:
            synchronize(device)
            if time.perf_counter() > warmup_deadline and done < warmup:
                notes.append(f"warm-up cut to {done} of {warmup} calls to fit {max_seconds:g} s")
                break
    warmup = done
    synchronize(device)

    # One synchronised probe call sizes the loop against the time budget (not counted in the samples).
    if max_seconds is not None:
        start = time.perf_counter()
        fn()
        synchronize(device)
        probe_ms = (time.perf_counter() - start) * 1000.0
        planned = _iterations_within_budget(probe_ms, iters, max_seconds, min_iters)
        if planned < iters:
            notes.append(f"iterations capped at {planned} (of {iters}) to fit {max_seconds:g} s")
        iters = planned

    host_ms: list[float] = []
    if cuda:
        import torch

        # Events are created before the loop so their creation is not timed.
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for start_event, end_event in zip(starts, ends):
            t0 = time.perf_counter()
            start_event.record()
            fn()
            end_event.record()
            end_event.synchronize()
            host_ms.append((time.perf_counter() - t0) * 1000.0)
        torch.cuda.synchronize(device)
        samples = [s.elapsed_time(e) for s, e in zip(starts, ends)]
        return Measurement(samples, host_ms, warmup, iters, "cuda-event", notes)

    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        host_ms.append((time.perf_counter() - t0) * 1000.0)
    return Measurement(list(host_ms), host_ms, warmup, iters, "perf_counter", notes)
