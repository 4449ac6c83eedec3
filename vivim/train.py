"""`vivim-train`: train Vivim on a video segmentation dataset (the paper's recipe by default), one GPU, CPU, or
several GPUs through `torchrun` (DistributedDataParallel).

Recipe (spec §3): Adam lr 1e-4 (no weight decay), cosine to 1e-6 stepped per epoch, batch 8 clips, 256², T = 5,
structure loss (BCE + weighted IoU) on the supervised frame only. Validation every epoch on videos held out from
the training folder (never its test split); the best-by-Dice (threshold 0.5, mean over frames) and the last
weights are saved as Vivim checkpoints, and `<out stem>.state.pt` holds everything `--resume` needs.
"""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import Optional

import typer

from vivim import paths
from vivim.cli_utils import cli_app, count, run_app, warn
from vivim.constants import SEED_MAX, parse_size, size_argument, size_label
from vivim.errors import Interrupted, VivimError
from vivim.graceful_stop import GracefulStop
from vivim.progress import stderr_line
from vivim.training.config import TrainConfig, TrainResult
from vivim.training.data import build_data
from vivim.training.environment import init_distributed, scan_implementations
from vivim.training.init_weights import initialise_weights
from vivim.training.loop import Run, out_of_patience, validate
from vivim.training.state import (check_resumable, check_same_validation, history_path, load_state, output_paths,
                                  started_val_kind)

__all__ = ["TrainConfig", "TrainResult", "run_training", "output_paths", "history_path", "load_state", "app", "main"]

# Variants above this many million parameters get a warning when trained on a CPU (tiny 1.2 M, b0 7.0 M, b1 26 M).
CPU_TRIAL_MAX_M_PARAMS = 10.0


def run_training(cfg: TrainConfig) -> TrainResult:
    """Train as configured; returns paths, losses and the best validation Dice (rank 0 writes all files)."""
    import numpy as np
    import torch

    import vivim

    best_path, last_path, state_path = _check_flags(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist_info, device = init_distributed(cfg.device)
    use_amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    if use_amp and device.type != "cuda":
        if dist_info.main:
            warn("--amp needs CUDA; training in fp32 on the CPU")
        use_amp = False
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    state = load_state(state_path) if cfg.resume else None
    if state is not None:
        check_resumable(cfg, state, state_path, last_path)
        partial = state.get("partial")
        if partial and partial.get("world", 1) != dist_info.world:
            raise VivimError(f"{state_path}: the run stopped inside epoch {state['epoch'] + 2} with "
                             f"{count(partial.get('world', 1), 'process', 'processes')}; resume it with as many (each skips its "
                             "own share of the epoch's clips)")
    # a resumed run validates where it started, even if a Val/ folder appeared or went since ("best" keeps its meaning)
    data = build_data(cfg, dist_info, device, started_val_kind(state) if state else None)
    if state is not None:
        check_same_validation(state, data, state_path)
    if cfg.patience is not None and not data.val_videos:
        raise VivimError("--patience needs validation videos (--val, a VTUS Val/ folder, or --val-fraction above 0)")

    model = vivim.create_model(cfg.variant, frames=cfg.frames, img_size=cfg.size)
    if cfg.init and not cfg.resume:
        initialise_weights(model, cfg.init, dist_info.main)
    model.to(device)
    run = Run(cfg, dist_info, device, use_amp, model, best_path, last_path, state_path)
    if state is not None:
        if bool(state["scaler"]) != use_amp and dist_info.main:  # a disabled GradScaler saves an empty state
            warn(f"{state_path}: the run was trained {'with' if state['scaler'] else 'without'} AMP and continues "
                 f"{'with' if use_amp else 'without'} it ({'--amp' if state['scaler'] else '--no-amp'} keeps it as it was)")
        run.resume(state)
        del state  # weights and optimiser moments: not kept for the whole run
    run.wrap_ddp()
    if run.progress.start_epoch >= cfg.epochs and dist_info.main:
        warn(f"{state_path}: already trained {run.progress.start_epoch} of --epochs {cfg.epochs}; nothing to do "
             "(the run is complete)")
    if dist_info.main:
        millions = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"training {cfg.variant} ({millions:.2f} M params) on {device} x{dist_info.world}: "
              f"{count(len(data.train_videos), 'video')} / {count(len(data.train_ds), 'clip')} for training, {count(len(data.val_videos), 'video')} for "
              f"validation{' (' + data.val_source + ')' if data.val_videos else ''}; T={cfg.frames}, {size_label(cfg.size)}, batch {cfg.batch}{' per process' if dist_info.world > 1 else ''}, "
              f"{'AMP fp16' if use_amp else 'fp32'}; {scan_implementations(device)}")
        turned = turned_size_note(cfg.size, data.train_videos)
        if turned:
            warn(turned)
        if device.type == "cpu" and millions > CPU_TRIAL_MAX_M_PARAMS:  # a 2-core machine took 44 s per step for paper
            warn(f"the {cfg.variant} model ({millions:.1f} M params) trains very slowly on a CPU (tens of seconds per "
                 "step on a few cores); for a CPU trial use --variant tiny, for real training a GPU")

    start = time.perf_counter()
    # One process: Ctrl-C, SIGTERM or SIGHUP ends the epoch after the current batch (or cuts its validation short)
    # and saves it unvalidated, for --resume to continue; a second Ctrl-C aborts, except while files are written.
    # Under DDP every rank would have to stop at the same batch; there they unwind at once, as before.
    stop = GracefulStop(stderr_line, step="this batch and saving it",
                        finishing_note="saving what is trained, one moment") if dist_info.world == 1 else None
    with stop if stop is not None else contextlib.nullcontext():
        run.stop = stop
        for epoch in range(run.progress.start_epoch, cfg.epochs):
            if out_of_patience(run.progress, epoch, cfg.patience, dist_info.main):
                break
            t_epoch = time.perf_counter()
            lr = run.optimizer.param_groups[0]["lr"]  # the epoch's learning rate (the schedule steps after the epoch)
            mean_loss, stopped = run.train_epoch(epoch, data)
            dice = None if run.stopped_by_signal else (
                validate(model, data.val_loader, device, cfg.output_frame, dist_info, run.amp_dtype, stop)
                if data.val_loader is not None else float("nan"))
            if dice is None:  # a signal: saved at once, unvalidated (a scheduler's SIGKILL follows its SIGTERM)
                run.stopped_by_signal = True
                run.progress.partial = run.progress.partial or run.epoch_sums  # the epoch stays open for --resume
                improved, dice = False, float("nan")
            elif run.progress.partial is None:
                run.close_epoch()
                improved = run.progress.record_epoch(mean_loss, dice, epoch, lr)
            else:  # --max-steps stopped inside the epoch: validated and saved, the epoch left open for --resume
                improved = run.progress.record_partial()
            with stop.protected() if stop is not None else contextlib.nullcontext():
                run.save_epoch(epoch, data, run.progress.elapsed_before + time.perf_counter() - start, improved, dice,
                               t_epoch)
            if stop is not None and stop.requested and (run.stopped_by_signal or not stopped) \
                    and (run.progress.partial is not None or epoch + 1 < cfg.epochs):
                raise StoppedAndSaved(stop.as_interrupt())  # what was trained is saved: exit as the signal asks
            if stopped:
                break
    return run.finish(data, run.progress.elapsed_before + time.perf_counter() - start)


class StoppedAndSaved(KeyboardInterrupt):
    """A signal stopped training and what was trained is saved for --resume; `by`: the interrupt the signal stands
    for (Ctrl-C, or a Terminated carrying SIGTERM or SIGHUP), which sets the exit status."""

    def __init__(self, by: KeyboardInterrupt) -> None:
        super().__init__()
        self.by = by



def turned_size_note(size: object, videos: list) -> Optional[str]:
    """A warning when a non-square --size lies the other way round from the training frames (HxW given as WxH):
    every frame would be squeezed to the other aspect, in training and wherever the model runs."""
    from vivim.constants import image_hw, turned_against
    from vivim.data.image_io import image_size

    height, width = image_hw(size)
    if height == width or not videos:  # a square size: no frame header to read
        return None
    frame_w, frame_h = image_size(videos[0].frames[0], "frame")
    if not turned_against(size, (frame_h, frame_w)):
        return None
    return (f"--size {size_argument(size)} is {'portrait' if height > width else 'landscape'} (height x width) but the "
            f"frames are {frame_w} wide and {frame_h} high ({videos[0].name}): every frame is squeezed to the other "
            f"aspect; --size {width}x{height} keeps theirs")


def _check_flags(cfg: TrainConfig) -> tuple[Path, Path, Path]:
    """Every flag checked before any work, with one line naming it; returns the (best, last, state) paths."""
    import vivim
    from vivim.constants import canonical_size, check_output_frame, image_size_problem, parse_output_frame

    if cfg.variant not in vivim.variants():
        raise VivimError(f"--variant {cfg.variant!r}: choose one of {', '.join(vivim.variants())}")
    for flag, value in (("--epochs", cfg.epochs), ("--frames", cfg.frames), ("--batch", cfg.batch),
                        ("--threads", cfg.threads), ("--max-steps", cfg.max_steps), ("--patience", cfg.patience)):
        if value is not None and value < 1:
            raise VivimError(f"{flag} must be at least 1, got {value}")
    if cfg.workers < 0:
        raise VivimError(f"--workers must be 0 or more, got {cfg.workers}")
    if not cfg.lr > 0:
        raise VivimError(f"--lr must be a positive learning rate, got {cfg.lr}")
    cfg.output_frame = str(parse_output_frame(cfg.output_frame))  # 'center' -> 'centre': one spelling in the state
    check_output_frame(cfg.output_frame, cfg.frames)  # after --frames: against a valid clip length
    problem = image_size_problem(cfg.size)
    if problem:
        raise VivimError(f"--size {problem}")
    cfg.size = canonical_size(cfg.size)  # (256, 256) is 256: one form in the state, the checkpoint and --resume
    from vivim.data.layouts import detect_layout

    for flag, folder in (("--data", cfg.data), ("--val", cfg.val)):  # checked now, named by flag (there are two)
        if folder is not None:
            detect_layout(Path(folder), flag)
    if Path(cfg.out).suffix.lower() in (".pt", ".pth", ".ckpt", ".bin", ".onnx", ".engine"):  # not "x.pt.safetensors"
        earlier = output_paths(cfg.out)[0]  # where runs before this rule wrote such an --out: resume them there
        use = earlier if any(p.exists() for p in output_paths(earlier)) else Path(cfg.out).with_suffix(".safetensors")
        raise VivimError(f"--out {cfg.out}: vivim-train writes .safetensors checkpoints (its resume state .state.pt "
                         f"beside them); use --out {use}")
    paths.check_writable(cfg.out, "--out")  # now, not after the first epoch (and not a folder)
    best_path, last_path, state_path = output_paths(cfg.out)
    log_path = history_path(cfg.out)
    paths.check_writable(log_path, "--out (its per-epoch log)")
    paths.refuse_writing_over_inputs({"--out": best_path, "--out (last)": last_path, "--out (state)": state_path,
                                      "--out (history)": log_path}, {"--init": cfg.init})
    if cfg.resume and cfg.overwrite:
        raise VivimError("--resume continues the run at --out and --overwrite starts a new one there; choose one")
    if not (cfg.resume or cfg.overwrite) and any(p.exists() for p in (best_path, last_path, state_path, log_path)):
        raise VivimError(f"--out {best_path}: an earlier run's checkpoint or log is there; --resume continues that "
                         "run, --overwrite replaces it, or choose another --out")
    return best_path, last_path, state_path



# ----------------------------------------------------------------------------------------------- CLI

app = cli_app("Train Vivim on a video segmentation dataset (DAVIS or Vivim/VTUS layout).")


@app.command()
def train(
    data: Path = typer.Option(..., "--data", help="Dataset folder (DAVIS: JPEGImages/ + Annotations/; VTUS: Train/ + Train_GT/)."),
    out: Path = typer.Option(Path("runs/vivim.safetensors"), "--out", "--output", "-o", help="Best checkpoint; <stem>.last.safetensors and <stem>.state.pt go beside it."),
    variant: str = typer.Option("paper", "--variant", help="paper, b1, b0 or tiny."),
    epochs: int = typer.Option(100, "--epochs", help="Epochs (cosine schedule length)."),
    frames: int = typer.Option(5, "--frames", "-T", help="Clip length T."),
    size: str = typer.Option("256", "--size", "-s", help="Input side N (square) or HxW, e.g. 256 or 256x320 for wide video (multiples of 32)."),
    batch: int = typer.Option(8, "--batch", help="Clips per step (per process under torchrun)."),
    workers: int = typer.Option(2, "--workers", help="Data-loading worker processes."),
    lr: float = typer.Option(1e-4, "--lr", help="Adam learning rate (cosine to 1e-6)."),
    val: Optional[Path] = typer.Option(None, "--val", help="Validation dataset folder (default: carve --val-fraction of the videos from --data)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", min=0.0, max=0.9, help="Share of training videos held out for validation (0 = none); when above 0, a VTUS folder's own Val/ + Val_GT/ is used instead if there is one."),
    seed: int = typer.Option(1234, "--seed", min=0, max=SEED_MAX, help="Seed for initialisation, split, shuffling and augmentation."),
    resume: bool = typer.Option(False, "--resume", help="Continue exactly from <out stem>.state.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh over an earlier run's checkpoints at --out."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from local SegFormer weights (folder or file) or a Vivim checkpoint of the same variant (fine-tuning; 'demo' = the bundled tiny weights)."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision (default: on with CUDA)."),
    output_frame: str = typer.Option("centre", "--output-frame", help="Supervised frame: centre (paper, offline) or newest (causal, live)."),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="cuda, cuda:N or cpu (default: cuda when available)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (1 is fastest on a busy machine)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop this run after this many steps (validated and saved; --resume continues from that step)."),
    no_augment: bool = typer.Option(False, "--no-augment", help="Turn the paper's augmentations off."),
    sparse_masks: bool = typer.Option(False, "--sparse-masks", help="Only some frames have masks: train on those; the others feed their clips."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Stop after this many epochs without a better validation Dice (default: train all --epochs)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Train with the paper's recipe; validation each epoch, best + last checkpoints, exact --resume."""
    cfg = TrainConfig(
        data=str(data), out=str(out), variant=variant, epochs=epochs, frames=frames, size=parse_size(size), batch=batch,
        workers=workers, lr=lr, val=str(val) if val else None, val_fraction=val_fraction, seed=seed, resume=resume,
        init=str(init) if init else None, amp=amp, output_frame=output_frame, device=device, threads=threads,
        max_steps=max_steps, progress=progress, augment=not no_augment, overwrite=overwrite, sparse_masks=sparse_masks,
        patience=patience,
    )
    started = time.time()
    try:
        run_training(cfg)
    except StoppedAndSaved as exc:  # stopped at a batch, what was trained saved (one process)
        raise Interrupted(f"what was trained is saved; continue with --resume and the same flags "
                          f"({output_paths(cfg.out)[2]})", by=exc.by) from None
    except KeyboardInterrupt as exc:  # Ctrl-C before training, a second Ctrl-C, or a signal under DDP
        state = output_paths(cfg.out)[2]
        if state.is_file() and (resume or state.stat().st_mtime >= started):  # this run's, or the one it continues
            raise Interrupted(f"the finished epochs are saved; continue with --resume and the same flags ({state})",
                              by=exc) from None
        raise Interrupted("before the first epoch finished; nothing was saved", by=exc) from None
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
