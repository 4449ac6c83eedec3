"""Where a run trains: its processes (torchrun's DistributedDataParallel or one process) and device, and which
selective-scan implementations it will use."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from vivim.cli_utils import warn
from vivim.devices import torch_device


@dataclass
class Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def scan_implementations(device: Any) -> str:
    """Which selective-scan implementations this run uses, for the start line (a user can tell whether mamba-ssm's
    kernel was found). On a GPU the backward runs ours (built on first use), else mamba-ssm's kernel, else the
    PyTorch reference: a warning says so before a long run starts 3x slower than it could."""
    from vivim.ops import dispatch

    forward = dispatch.pick(device.type).name
    backward = dispatch.pick(device.type, need_grad=True).name
    if device.type == "cuda" and backward == "reference":
        warn("no CUDA kernel for the selective scan's backward (the project's extension could not be built here and "
             "mamba-ssm is not installed): the PyTorch reference runs it, and a training step takes ~3x longer")
    return f"scan {forward}" if forward == backward else f"scan {forward} forward, {backward} backward"


def init_distributed(device_name: Optional[str]) -> tuple[Dist, Any]:
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = Dist(world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))
    device = torch_device(device_name)
    if device.type == "cuda":
        if world > 1:  # one process per GPU: the launcher's local rank picks it
            device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return d, device
