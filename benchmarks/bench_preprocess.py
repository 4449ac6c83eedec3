"""Host-side frame preprocessing: what the ONNX Runtime and TensorRT backends of vivim-run do per frame on the CPU.

Resize to the model's input size (area or linear filter), BGR -> RGB, normalise to (3, H, W) fp32 or fp16 — the
same function the backends call (`vivim.runtime.preprocess.preprocess`). Run it on the target's CPU (a Jetson's
ARM cores are much slower than a desktop's) to see what the resize filter costs per frame. Prints a table and,
with --out, writes JSON. OpenCV runs on one thread by default, as the capture-paced runtime sees it.

    python benchmarks/bench_preprocess.py --size 256 --frames 640x480 1920x1080
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

import cv2
import numpy as np

from vivim import atomic
from vivim.bench.env import cpu_name
from vivim.latency import percentile
from vivim.runtime.preprocess import Normalization, preprocess


def time_preprocess(frame: np.ndarray, size: int, interpolation: str, dtype, iters: int, warmup: int) -> list[float]:
    """Per-call wall times in ms."""
    norm = Normalization()
    for _ in range(warmup):
        preprocess(frame, size, norm, interpolation, dtype)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        preprocess(frame, size, norm, interpolation, dtype)
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="model input size (square)")
    parser.add_argument("--frames", nargs="+", default=["640x480", "1280x720", "1920x1080"], help="WxH frame sizes")
    parser.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32", help="the model input's type")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (cv2.setNumThreads)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    sizes = []
    for spec in args.frames:
        try:
            width, height = (int(v) for v in spec.lower().split("x"))
        except ValueError:
            parser.error(f"--frames {spec}: expected WIDTHxHEIGHT, e.g. 640x480")
        sizes.append((width, height))
    cv2.setNumThreads(args.threads)
    dtype = np.float16 if args.dtype == "fp16" else np.float32
    rng = np.random.default_rng(0)
    cpu = cpu_name()
    print(f"CPU {cpu}, OpenCV {cv2.__version__} ({args.threads} thread(s)), model input {args.size}², {args.dtype}")
    print(f"{'frame':>10} | {'filter':>6} | {'p50 ms':>7} {'p95 ms':>7}")
    rows = []
    for width, height in sizes:
        frame = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        for interpolation in ("linear", "area"):
            times = time_preprocess(frame, args.size, interpolation, dtype, args.iters, args.warmup)
            p50, p95 = percentile(times, 50), percentile(times, 95)
            rows.append(dict(frame=f"{width}x{height}", filter=interpolation, p50_ms=p50, p95_ms=p95))
            print(f"{width:>5}x{height:<4} | {interpolation:>6} | {p50:7.3f} {p95:7.3f}")
    result = dict(date_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"), cpu=cpu,
                  opencv=cv2.__version__, threads=args.threads, size=args.size, dtype=args.dtype, rows=rows)
    if args.out:
        atomic.write_json(args.out, result, indent=1)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
