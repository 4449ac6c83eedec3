"""Selective-scan speed: the project's CUDA kernel vs mamba-ssm's selective_scan_fn vs the PyTorch reference.

Vivim's four stage shapes (D, L) at 256x256 input with T = 5 frames, N = 16, with z, D, delta_bias and softplus
(as a Mamba block calls it), batch 1 and 8, fp16 and fp32. Timing: CUDA events after warm-up, each sample a
burst of back-to-back calls, median over many samples; "eager" launches from Python, "graph" replays the same
burst captured in a CUDA graph (launch overhead removed, as a deployed engine runs). The memory-traffic floor is
the bytes a call must move divided by the device-to-device copy bandwidth measured in the same run. Also: the
three ST-Mamba branches as one grouped call (G = 3) vs three separate calls.

    python benchmarks/bench_scan.py --out bench.json
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vivim import atomic  # noqa: E402  (after the path line: the repository's own package)
from vivim.cuda_graph import capture_cuda_graph  # noqa: E402

STAGES = [(128, 20480), (256, 5120), (640, 1280), (1024, 320)]
ANCHOR_H200_MAMBA_FP16_B1 = {(128, 20480): 199.8, (256, 5120): 74.1, (640, 1280): 54.7, (1024, 320): 30.5}


Inputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def make_inputs(batch: int, dim: int, L: int, N: int, G: int, dtype: torch.dtype, seed: int = 0) -> Inputs:
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
    u = r(batch, dim, L).to(dtype)
    delta = (r(batch, dim, L) * 0.5 - 1).to(dtype)
    A = -torch.exp(r(dim, N) * 0.5)
    B = r(batch, G, N, L).to(dtype) if G > 1 else r(batch, N, L).to(dtype)
    C = r(batch, G, N, L).to(dtype) if G > 1 else r(batch, N, L).to(dtype)
    D = r(dim)
    z = r(batch, dim, L).to(dtype)
    bias = r(dim) * 0.3 - 0.5
    return (u, delta, A, B, C, D, z, bias)


def bytes_moved(batch, dim, L, N, G, dtype) -> int:
    es = torch.tensor([], dtype=dtype).element_size()
    return batch * dim * L * es * 4 + batch * G * N * L * es * 2 + dim * (N + 2) * 4  # u,delta,z,out; B,C; A,D,bias


def time_eager(fn, burst=10, samples=30, warmup=5) -> float:
    """Median µs per call of `fn` launched from Python, bursts of back-to-back calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(samples):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(burst):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0 / burst)
    return statistics.median(times)


def time_graph(fn, burst=10, samples=30) -> float | None:
    """Median µs per call when a burst of calls is captured once in a CUDA graph and replayed."""
    try:
        graph, _ = capture_cuda_graph(lambda: [fn() for _ in range(burst)], warmup=1)
        for _ in range(3):
            graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(samples):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1000.0 / burst)
        del graph
        return statistics.median(times)
    except Exception as exc:  # noqa: BLE001 - report, don't abort the whole benchmark
        print(f"  (graph capture failed: {str(exc).splitlines()[0][:120]})", file=sys.stderr)
        return None


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write), 1 GiB buffers."""
    n = 1 << 28
    a = torch.empty(n, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    us = time_eager(lambda: b.copy_(a), burst=5, samples=15, warmup=3)
    return 2 * n * 4 / (us * 1e-6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="write the results as JSON here")
    ap.add_argument("--no-reference", action="store_true", help="skip timing the (slow) PyTorch reference")
    ap.add_argument("--quick", action="store_true",
                    help="our kernel only, fp16, the four stages at batch 1 and 8 (for tuning sweeps)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_scan.py needs an NVIDIA GPU")

    from vivim.ops import _cuda_ext

    ext = _cuda_ext.load_extension()
    ours_fn = _cuda_ext.selective_scan_cuda
    mamba_fn: Optional[Callable[..., Tensor]] = None
    try:
        from mamba_ssm.ops import selective_scan_interface

        mamba_fn = selective_scan_interface.selective_scan_fn
    except Exception as exc:  # noqa: BLE001
        print(f"mamba-ssm not importable ({exc}); timing our kernel only", file=sys.stderr)
    if args.quick:
        mamba_fn = None
        args.no_reference = True
    reference_fn: Optional[Callable[..., Tensor]] = None
    try:
        from vivim.ops import selective_scan_reference

        reference_fn = selective_scan_reference
    except Exception:  # noqa: BLE001
        pass

    props = torch.cuda.get_device_properties(0)
    bw = copy_bandwidth()
    result: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpu": props.name, "sm_count": props.multi_processor_count, "torch": torch.__version__,
        "cuda": torch.version.cuda, "copy_bandwidth_GBps": bw / 1e9, "N": 16,
        "env": {k: v for k, v in os.environ.items() if k.startswith("VIVIM_SCAN_")},
        "call": "z, D, delta_bias, delta_softplus=True", "rows": [], "grouped": [],
    }
    print(f"{props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"device copy {bw / 1e12:.2f} TB/s")
    hdr = (f"{'dtype':5} {'b':>2} {'D':>5} {'L':>6} | {'ours eager':>10} {'ours graph':>10} | {'mamba eager':>11} "
           f"{'mamba graph':>11} | {'x eager':>7} {'x graph':>7} | {'floor':>6} {'%floor':>6} | {'ref':>9}")
    print(hdr)
    print("-" * len(hdr))
    with torch.no_grad():
        for dtype in (torch.float16,) if args.quick else (torch.float16, torch.float32):
            for batch in (1, 8):
                for dim, L in STAGES:
                    x = make_inputs(batch, dim, L, 16, 1, dtype)
                    ours = lambda: ours_fn(*x, delta_softplus=True)  # noqa: E731
                    o_e, o_g = time_eager(ours, samples=10 if args.quick else 30), time_graph(ours)
                    m_e = m_g = None
                    if mamba_fn is not None:
                        mamba = lambda: mamba_fn(*x, delta_softplus=True)  # noqa: E731
                        m_e, m_g = time_eager(mamba), time_graph(mamba)
                    ref_us = None
                    if reference_fn is not None and not args.no_reference and batch == 1:
                        reference_fn(*x, delta_softplus=True)  # warm-up
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        reference_fn(*x, delta_softplus=True)
                        torch.cuda.synchronize()
                        ref_us = (time.perf_counter() - t0) * 1e6
                    floor_us = bytes_moved(batch, dim, L, 16, 1, dtype) / bw * 1e6
                    best = min(v for v in (o_e, o_g) if v is not None)
                    row = dict(dtype=str(dtype).split(".")[-1], batch=batch, D=dim, L=L, ours_eager_us=o_e,
                               ours_graph_us=o_g, mamba_eager_us=m_e, mamba_graph_us=m_g, reference_us=ref_us,
                               floor_us=floor_us, floor_fraction=floor_us / best,
                               speedup_eager=(m_e / o_e) if m_e else None,
                               speedup_graph=(m_g / o_g) if (m_g and o_g) else None,
                               workspace_bytes=ext.workspace_size(batch, dim, L, 16, 1))
                    result["rows"].append(row)
                    f = lambda v, w=10: f"{v:{w}.1f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
                    sx = lambda v: f"{v:7.2f}" if v is not None else f"{'-':>7}"  # noqa: E731
                    print(f"{row['dtype']:5} {batch:2d} {dim:5d} {L:6d} | {f(o_e)} {f(o_g)} | {f(m_e, 11)} "
                          f"{f(m_g, 11)} | {sx(row['speedup_eager'])} {sx(row['speedup_graph'])} | "
                          f"{floor_us:6.1f} {100 * row['floor_fraction']:5.1f}% | "
                          f"{(f'{ref_us / 1000:7.1f}ms') if ref_us else '-':>9}")
                    del x
        for tag in ("eager", "graph"):
            rows = [r for r in result["rows"] if r["dtype"] == "float16" and r["batch"] == 1]
            ours_sum = sum(r[f"ours_{tag}_us"] or float("nan") for r in rows)
            if all(r[f"mamba_{tag}_us"] for r in rows):
                m_sum = sum(r[f"mamba_{tag}_us"] for r in rows)
                result[f"four_stages_fp16_b1_{tag}"] = dict(ours_us=ours_sum, mamba_us=m_sum, speedup=m_sum / ours_sum)
                print(f"four stages together, fp16 batch 1, {tag}: ours {ours_sum:.1f} µs, mamba-ssm {m_sum:.1f} µs, "
                      f"{m_sum / ours_sum:.2f}x")
            anchor = sum(ANCHOR_H200_MAMBA_FP16_B1.values())
            print(f"  vs the H200 anchor for mamba-ssm ({anchor:.1f} µs): {anchor / ours_sum:.2f}x")

        if args.quick:
            atomic.write_json(args.out, result)
            return

        print("\nST-Mamba grouped call (three branches, G = 3) vs three separate calls, fp16, batch 1")
        print(f"{'D':>5} {'L':>6} | {'grouped eager':>13} {'3 calls eager':>13} | {'grouped graph':>13} "
              f"{'3 calls graph':>13} | {'mamba grouped':>13}")
        for dim, L in STAGES:
            xg = make_inputs(1, 3 * dim, L, 16, 3, torch.float16, seed=1)
            parts = [make_inputs(1, dim, L, 16, 1, torch.float16, seed=2 + i) for i in range(3)]
            grouped = lambda: ours_fn(*xg, delta_softplus=True)  # noqa: E731

            def three():
                for p in parts:
                    ours_fn(*p, delta_softplus=True)

            g_e, g_g = time_eager(grouped), time_graph(grouped)
            t_e, t_g = time_eager(three), time_graph(three)
            mg = time_eager(lambda: mamba_fn(*xg, delta_softplus=True)) if mamba_fn is not None else None
            result["grouped"].append(dict(D=dim, L=L, grouped_eager_us=g_e, three_eager_us=t_e,
                                          grouped_graph_us=g_g, three_graph_us=t_g, mamba_grouped_eager_us=mg))
            fmt = lambda v: f"{v:13.1f}" if v is not None else f"{'-':>13}"  # noqa: E731
            print(f"{dim:5d} {L:6d} | {fmt(g_e)} {fmt(t_e)} | {fmt(g_g)} {fmt(t_g)} | {fmt(mg)}")

        # Where our time goes: device time per kernel (torch profiler), fp16 batch 1.
        try:
            from torch.profiler import ProfilerActivity, profile

            print("\nper-kernel device time, ours, fp16 batch 1 (µs per call)")
            result["kernels"] = {}
            for dim, L in STAGES:
                x = make_inputs(1, dim, L, 16, 1, torch.float16)
                ours_fn(*x, delta_softplus=True)
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(20):
                        ours_fn(*x, delta_softplus=True)
                    torch.cuda.synchronize()
                per: dict[str, float] = {}
                for ev in prof.key_averages():
                    t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
                    if t and any(k in ev.key for k in ("chunk_pass", "carry_pass", "resident_pass")):
                        name = ("carry" if "carry_pass" in ev.key else "resident" if "resident_pass" in ev.key
                                else "final" if ("true>" in ev.key or "Lb1E" in ev.key) else "local")
                        per[name] = per.get(name, 0.0) + t / 20
                result["kernels"][f"{dim}x{L}"] = per
                print(f"  D={dim:5d} L={L:6d}: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(per.items())))
        except Exception as exc:  # noqa: BLE001
            print(f"(profiler unavailable: {exc})")

    atomic.write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
