"""Selective-scan training speed: forward + backward at Vivim's training shapes, our kernels vs mamba-ssm's.

Vivim's four stage shapes at 256x256 with T = 5, as ST-Mamba calls them in training: batch 8, the three branches
grouped (G = 3, so 3x the channels), N = 16 (--dstate to compare another width), fp16, with z, D, delta_bias and softplus. Each sample is one forward
and one backward through autograd (CUDA events, median after warm-up). For our backward it also times the backward
alone, both as shipped (one kernel call with the elementwise chain fused) and with the chain in PyTorch around the
bare kernel (the path for N > 16), under each split of the sequence asked for:

    auto        the kernel's own choice of parts
    parts=K     exactly K parts (VIVIM_SCAN_BWD_PARTS; 1 = one block walks the whole sequence)
    target=N    the split aiming at N blocks (VIVIM_SCAN_BWD_TARGET_BLOCKS)

    python benchmarks/bench_scan_train.py --out train-scan.json --splits auto,parts=1 [--reference]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scan import STAGES, make_inputs  # noqa: E402  (the forward benchmark's shapes and value ranges)
from vivim import atomic  # noqa: E402  (after the path lines: the repository's own package)

SPLIT_ENV = {"parts": "VIVIM_SCAN_BWD_PARTS", "target": "VIVIM_SCAN_BWD_TARGET_BLOCKS"}


@contextmanager
def split(spec: str) -> Iterator[None]:
    """Run the block under one split of the backward (the kernel reads these variables on every call)."""
    saved = {k: os.environ.pop(k, None) for k in SPLIT_ENV.values()}
    if spec != "auto":
        key, _, value = spec.partition("=")
        if key not in SPLIT_ENV or not value.isdigit():
            raise SystemExit(f"error: --splits: unknown split {spec!r} (auto, parts=K or target=N)")
        os.environ[SPLIT_ENV[key]] = value
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


def median_ms(step: Callable[[], None], samples: int) -> float:
    for _ in range(2):
        step()
    times = []
    for _ in range(samples):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_op(fn: Callable[..., Tensor], args: list[Tensor], g_out: Tensor, samples: int) -> float:
    leaves = [t.clone().requires_grad_() for t in args]

    def step() -> None:
        for t in leaves:
            t.grad = None
        fn(*leaves, True).backward(g_out)

    return median_ms(step, samples)


def time_backward(backward: Callable[..., object], args: list[Tensor], g_out: Tensor, samples: int) -> float:
    """One of vivim.ops.cuda_backward's backwards alone, on the op's own inputs (no forward, no autograd)."""
    u, delta, A, B, C, D, z, bias = args

    def step() -> None:
        backward(u, delta, A, B, C, g_out, D, z, bias, True)

    return median_ms(step, samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", type=Path, required=True, help="write the results as JSON here")
    ap.add_argument("--splits", default="auto,parts=1", help="comma-separated splits of our backward (see above)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dstate", type=int, default=16, help="states per channel (Vivim's: 16; wider ones take our "
                    "sliced backward)")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--reference", action="store_true", help="also time the PyTorch reference (slow)")
    a = ap.parse_args()
    if not 1 <= a.dstate <= 64:
        raise SystemExit(f"error: --dstate must be 1..64, got {a.dstate}")
    if not torch.cuda.is_available():
        raise SystemExit("error: bench_scan_train.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    from vivim.ops import mamba_kernel, selective_scan_reference
    from vivim.ops.cuda_backward import (STATES_PER_CALL, fused_backward, sliced_backward,
                                         trainable_selective_scan_cuda)

    splits = [s.strip() for s in a.splits.split(",") if s.strip()]
    for s in splits:  # reject a bad spelling before any timing
        with split(s):
            pass
    peers: dict[str, Callable[..., Tensor]] = {}
    if mamba_kernel.importable():
        peers["mamba_ssm"] = mamba_kernel.mamba_kernel_scan
    if a.reference:
        peers["reference"] = selective_scan_reference
    rows = []
    for d, L in STAGES:
        args = list(make_inputs(a.batch, 3 * d, L, a.dstate, 3, torch.half, seed=L))
        g_out = torch.randn(args[0].shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(L + 1))
        g_out = g_out.half()
        row: dict[str, object] = {"shape": f"{a.batch}x{3 * d}x{L}"}
        for s in splits:
            with split(s):
                row[f"ours[{s}] ms"] = round(time_op(trainable_selective_scan_cuda, args, g_out, a.samples), 3)
                if a.dstate <= STATES_PER_CALL:  # the fused kernel holds 16 states
                    row[f"ours[{s}] bwd ms"] = round(time_backward(fused_backward, args, g_out, a.samples), 3)
                row[f"ours[{s}] bwd, chain in PyTorch ms"] = round(
                    time_backward(sliced_backward, args, g_out, a.samples), 3)
        for name, fn in peers.items():
            row[f"{name} ms"] = round(time_op(fn, args, g_out, 3 if name == "reference" else a.samples), 3)
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "what": "fwd+bwd through autograd, batch %d, G = 3, N = %d, fp16, z, D, bias, softplus" % (a.batch, a.dstate),
              "rows": rows}
    atomic.write_json(a.out, result, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
