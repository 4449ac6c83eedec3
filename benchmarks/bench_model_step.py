"""One model step per variant, fp16, replayed from a CUDA graph: for A/B runs of two source trees on one GPU.

    python benchmarks/bench_model_step.py                       # the installed vivim
    python benchmarks/bench_model_step.py --tree /tmp/old-tree  # another checkout (its vivim/ and plugins/)
    python benchmarks/bench_model_step.py --train --batch 8     # vivim-train's step instead

Prints one JSON line per run (median ms of 40 bursts of 5 replays, batch 1, 5-frame clips): every frame decoded,
the newest frame only (what vivim-run decodes), and the per-frame part alone. With --train: vivim-train's step
(AMP fp16 forward of the centre frame, structure loss, backward, Adam through the grad scaler), eager, median of
20 steps (--steps) after 5 warm-up ones. Alternate the trees in one session: the numbers move by a few percent
between machines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys


def graph_ms(step, reps: int = 40, inner: int = 5) -> float:
    import torch

    from vivim.cuda_graph import capture_cuda_graph

    graph, _ = capture_cuda_graph(step)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def train_step_ms(model, batch: int, size: int, steps: int = 20, warmup: int = 5) -> tuple[float, float]:
    """vivim-train's step on random clips and masks, timed with CUDA events (eager, as vivim-train runs it):
    (median ms, peak GPU memory allocated in MiB)."""
    import torch

    from vivim.losses import structure_loss

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda")
    clip = torch.randn(batch, 5, 3, size, size, device="cuda")
    target = (torch.rand(batch, 1, size, size, device="cuda") > 0.5).float()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.float16):
            logits = model(clip, output_frame="centre")[:, 0]
        loss = structure_loss(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    times = []
    torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", help="source tree to import vivim from (default: the installed package)")
    parser.add_argument("--variants", default="paper:256,b1:256,b0:256,tiny:64", help="variant:size list")
    parser.add_argument("--label", default="", help="name of this run in the JSON line")
    parser.add_argument("--train", action="store_true", help="time vivim-train's step instead of inference")
    parser.add_argument("--batch", type=int, default=8, help="clips per training step (--train)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps after 5 warm-up ones (--train)")
    parser.add_argument("--backward", help="scan implementation of the backward (--train; default: the dispatcher's "
                                           "choice): vivim_cuda, mamba_ssm or reference")
    args = parser.parse_args()
    if args.tree:
        sys.path.insert(0, os.path.abspath(args.tree))
    import torch

    import vivim
    from vivim.errors import VivimError
    from vivim.model import create_model
    from vivim.ops import dispatch

    if not torch.cuda.is_available():
        sys.exit("bench_model_step: needs a CUDA GPU")
    row: dict[str, object] = {"label": args.label or args.tree or "installed", "vivim": os.path.dirname(vivim.__file__),
                              "gpu": torch.cuda.get_device_name()}
    torch.manual_seed(0)
    if args.train:
        with contextlib.ExitStack() as scope:
            if args.backward:  # only that implementation computes backwards in this run
                try:
                    scope.enter_context(dispatch.use_backward(args.backward))
                except VivimError as exc:
                    sys.exit(f"bench_model_step: {exc}")
                if dispatch.pick("cuda", need_grad=True).name != args.backward:
                    sys.exit(f"bench_model_step: {args.backward} cannot run the backward here")
            for spec in args.variants.split(","):
                variant, size = spec.split(":")[0], int(spec.split(":")[1])
                model = create_model(variant, img_size=size).cuda().train()
                step_ms, peak_mib = train_step_ms(model, args.batch, size, args.steps)
                row[f"train {variant}@{size} batch {args.batch}"] = round(step_ms, 2)
                row[f"train {variant}@{size} peak MiB"] = round(peak_mib)
                del model
                torch.cuda.empty_cache()
            # the op's forward takes the fastest kernel; its backward recomputes with a differentiable one
            row["scan"] = (f"{dispatch.pick('cuda').name} forward, "
                           f"{dispatch.pick('cuda', need_grad=True).name} backward")
        print(json.dumps(row), flush=True)
        return
    with torch.inference_mode():
        for spec in args.variants.split(","):
            variant, size = spec.split(":")[0], int(spec.split(":")[1])
            model = create_model(variant, img_size=size).cuda().eval().to_inference_dtype(torch.float16)
            clip = torch.randn(1, 5, 3, size, size, device="cuda", dtype=torch.float16)
            for output_frame in (None, "newest"):
                row[f"{variant}@{size} {output_frame or 'all'}"] = round(
                    graph_ms(lambda: model(clip, output_frame=output_frame)), 3)
            frame = clip[:, 0]
            row[f"{variant}@{size} frame part"] = round(graph_ms(lambda: model.frame_features(frame)), 3)
    row["scan"] = dispatch.pick("cuda").name  # both trees must time the same scan
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
