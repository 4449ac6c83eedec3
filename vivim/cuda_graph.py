"""CUDA-graph capture, shared by the runtime's torch backend and the benchmarks."""

from __future__ import annotations

from typing import Any, Callable, Optional


def capture_cuda_graph(step: Callable[[], Any], *, warmup: int = 3, device: Optional[Any] = None) -> tuple[Any, Any]:
    """Capture `step` (which reads only static input tensors) into a CUDA graph; returns (graph, static output).

    Warm-up runs on a side stream first, as torch.cuda.graphs requires, so lazy initialisation (cuBLAS handles,
    kernel builds, autotuning, allocator growth) happens outside the capture. Grad/inference mode is the caller's.
    """
    import torch

    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        for _ in range(max(warmup, 1)):
            step()
    current.wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_output = step()
    torch.cuda.synchronize(device)
    return graph, static_output
