"""The epochs of a run: the model with its optimiser, schedule and AMP scaler, one epoch of steps (or the rest of one
--max-steps left open), validation, and the checkpoints and resume state written after each."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from vivim import atomic
from vivim.cli_utils import count, next_command, shell, warn
from vivim.errors import VivimError
from vivim.training.config import TrainResult
from vivim.training.state import STATE_FORMAT, history_csv, history_path, rng_state, save_state_file, set_rng_state

if TYPE_CHECKING:
    from vivim.training.config import TrainConfig
    from vivim.training.data import TrainData
    from vivim.training.environment import Dist


def validate(model, loader, device, output_frame: str, dist_info: Dist, amp_dtype, stop: Any = None) -> Optional[float]:
    """Mean Dice (threshold 0.5) over this rank's share of validation frames, reduced over ranks; None when `stop`
    (a GracefulStop, one process) was asked to stop meanwhile: the caller saves without the Dice."""
    import torch
    import torch.distributed as dist

    from vivim.metrics import fixed_threshold_scores

    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for batch in loader:
            clip = batch["clip"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(clip, output_frame=output_frame)
            prob = torch.sigmoid(logits.float()[:, 0, 0])
            gt = batch["mask"].to(device)[:, 0] > 0.5
            dice = fixed_threshold_scores(prob, gt)["dice"]
            total += torch.stack([dice.sum(), torch.tensor(float(len(dice)), dtype=torch.float64, device=device)])
            if stop is not None and stop.requested:
                model.train()
                return None
    if dist_info.world > 1:
        dist.all_reduce(total)
    model.train()
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")



def out_of_patience(progress: "Progress", epoch: int, patience: Optional[int], main: bool) -> bool:
    """True when the `patience` epochs before `epoch` brought no better validation Dice (--patience): the run stops
    there, with the best checkpoint already saved. Every rank sees the same all-reduced Dice, so all stop together."""
    if patience is None or progress.best_epoch < 0 or epoch - 1 - progress.best_epoch < patience:
        return False
    if main:
        print(f"stopping early: no better validation Dice in the last {'epoch' if patience == 1 else f'{patience} epochs'} "
              f"(best {progress.best_dice:.4f} at epoch {progress.best_epoch + 1})")
    return True



@dataclass
class Progress:
    """What a resumed run must continue from: the next epoch, the best so far, the history and time spent."""

    start_epoch: int = 0
    best_dice: float = -1.0
    best_epoch: int = -1
    history: dict = field(default_factory=lambda: {"epoch_loss": [], "val_dice": [], "lr": []})
    elapsed_before: float = 0.0
    step_losses: list = field(default_factory=list)  # this process's steps only (not saved)
    val_history: list = field(default_factory=list)
    steps: int = 0
    # an epoch --max-steps stopped inside: {"batches": done, "of": the epoch's batches, "loss_sum": their losses}
    partial: Optional[dict] = None

    def record_partial(self) -> bool:
        """A validation inside an open epoch (--max-steps) decides nothing: the best epoch, --patience and the history
        wait for the epoch's end, so the run ends as an uninterrupted one. True while no whole epoch was validated:
        then the weights are written as the best file for now (a smoke run gets one), and the epoch replaces them."""
        return self.best_epoch < 0

    def record_epoch(self, mean_loss: float, dice: float, epoch: int, lr: float) -> bool:
        """Append the epoch; True when it is the best so far (every epoch is, without a validation set)."""
        self.val_history.append(dice)
        self.history["epoch_loss"].append(mean_loss)
        self.history["val_dice"].append(dice if math.isfinite(dice) else -1.0)
        self.history["lr"].append(lr)
        improved = (not math.isfinite(dice)) or dice > self.best_dice
        if improved:
            self.best_dice, self.best_epoch = (dice if math.isfinite(dice) else self.best_dice), epoch
        return improved


class Run:
    """The model, its optimiser state and progress of one training run: resume, one epoch, the files per epoch."""

    def __init__(self, cfg: TrainConfig, dist_info: Dist, device: Any, use_amp: bool, model: Any,
                 best_path: Path, last_path: Path, state_path: Path) -> None:
        import torch

        self.cfg, self.dist, self.device, self.use_amp, self.model = cfg, dist_info, device, use_amp, model
        self.best_path, self.last_path, self.state_path = best_path, last_path, state_path
        self.amp_dtype = torch.float16 if use_amp else None
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs, eta_min=cfg.min_lr)
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
        self.progress = Progress()
        self.net = model  # wrap_ddp() replaces it once the weights are final (after a resume)
        self.saw_lesion = False  # any training mask with a lesion in this run's first epoch
        self.stop: Any = None  # a GracefulStop (one process): a signal ends the epoch after the current batch
        self.stopped_by_signal = False  # the signal came: what is saved next is unvalidated, the epoch left open
        self.epoch_sums: dict = {}  # the last epoch's batches and loss sum, kept open if a signal cuts its validation

    def wrap_ddp(self) -> None:
        """One process per GPU: DistributedDataParallel over the model, after resume() loaded its weights."""
        from torch.nn.parallel import DistributedDataParallel

        if self.dist.world > 1:
            # the depthwise Conv3d weight grads differ from DDP's bucket view only in the stride of a size-1 dim
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=device_ids)

    def resume(self, state: dict) -> None:
        """Continue from a state that `check_resumable` accepted: weights, optimiser, schedule, progress, RNG."""
        cfg, state_path = self.cfg, self.state_path
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty from a run without AMP: a run now with it starts a fresh scale
            self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(state["epoch"] + 1, state["best_dice"], state["best_epoch"], state["history"],
                                  state["seconds"], partial=state.get("partial"))
        rank = self.dist.rank
        set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        if self.dist.main and self.progress.start_epoch < cfg.epochs:  # a finished run gets the warning instead
            partial = self.progress.partial
            inside = f", batch {partial['batches'] + 1} of {partial['of']}" if partial else ""
            best = (f"best Dice so far {self.progress.best_dice:.4f}" if self.progress.best_dice >= 0
                    else "no validation set" if not state.get("val_videos") else "no validation Dice yet")
            print(f"resuming from {state_path} at epoch {self.progress.start_epoch + 1}/{cfg.epochs}{inside} ({best})")

    def train_epoch(self, epoch: int, data: TrainData) -> tuple[float, bool]:
        """One pass over the training clips, or the rest of one that --max-steps or a signal stopped inside; (mean
        loss, stopped by --max-steps or a signal). `progress.partial` tells an epoch left open; the LR schedule steps
        in close_epoch(), once the epoch is validated."""
        from vivim import progress as progress_bars

        cfg, progress = self.cfg, self.progress
        # an epoch left open by --max-steps continues where it stopped: the shuffle and the augmentation are functions
        # of (seed, epoch, index), so skipping the batches done gives the clips the uninterrupted run would have drawn
        open_epoch = progress.partial or {"batches": 0, "loss_sum": 0.0}
        done_before = int(open_epoch["batches"])
        data.start_epoch(epoch, skip=done_before * cfg.batch)
        self.net.train()
        epoch_batches = done_before + len(data.train_loader)
        if progress.partial and epoch_batches != progress.partial["of"] and self.dist.main:
            warn(f"the training set changed since the run stopped inside epoch {epoch + 1} ({progress.partial['of']} "
                 f"batches then, {epoch_batches} now): the rest of the epoch draws from the new set, so the run no "
                 "longer repeats an uninterrupted one")
        bar = progress_bars.bar(total=epoch_batches, initial=done_before, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not (cfg.progress and self.dist.main), dynamic_ncols=True)
        try:
            total, batches, stopped = self._steps(epoch, data, bar, float(open_epoch["loss_sum"]), done_before)
        finally:
            bar.close()  # also on Ctrl-C: the interruption's message starts on a line of its own
        whole = done_before == 0 and batches >= epoch_batches  # a part of an epoch proves nothing
        if whole and not self.saw_lesion and self.dist.main and self.dist.world == 1:
            self.saw_lesion = True  # said once
            warn(f"every training mask this epoch was empty: the model can only learn 'no lesion'; check how the masks "
                 f"mark the lesion with vivim-data check {shell(cfg.data)}")
        # "world": the batches are per process, so only the same number of processes can skip the right clips
        self.epoch_sums = {"batches": batches, "of": epoch_batches, "loss_sum": total, "world": self.dist.world}
        # a signal keeps the epoch open even after its last batch: it is saved unvalidated, and --resume validates it
        progress.partial = None if batches >= epoch_batches and not self.stopped_by_signal else self.epoch_sums
        return total / max(1, batches), stopped

    def close_epoch(self) -> None:
        """The learning-rate schedule's step, once an epoch is trained and validated."""
        with warnings.catch_warnings():
            # AMP's grad scaler skips the steps whose gradients overflow, at first while it finds its scale; when
            # that is every step of an epoch (a short epoch), torch warns that the schedule steps before the
            # optimiser did. The schedule is per epoch, so the warning describes nothing wrong here.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.scheduler.step()

    def _steps(self, epoch: int, data: TrainData, bar: Any, total: float, batches: int) -> tuple[float, int, bool]:
        """The optimisation steps of one epoch, continuing the sums (`total` loss over `batches`) of the batches done
        before; returns them and whether --max-steps or a signal ended the steps."""
        import torch

        from vivim.losses import structure_loss

        cfg, progress = self.cfg, self.progress
        stopped, clips, t0 = False, 0, time.perf_counter()
        for batch in data.train_loader:
            self.saw_lesion = self.saw_lesion or bool(batch["lesion"].any())  # the files', before any mask noise
            clip = batch["clip"].to(self.device, non_blocking=True)
            target = batch["mask"].to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                logits = self.net(clip, output_frame=cfg.output_frame)[:, 0]  # (B, 1, H, W) of the supervised frame
            loss = structure_loss(logits.float(), target)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise VivimError(f"training diverged at epoch {epoch + 1} (loss {value}); try a lower --lr or --no-amp")
            progress.step_losses.append(value)
            total, batches, clips = total + value, batches + 1, clips + clip.shape[0] * self.dist.world
            progress.steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{total / batches:.4f}", clips_s=f"{clips / (time.perf_counter() - t0):.2f}")
            if cfg.max_steps is not None and progress.steps >= cfg.max_steps:
                stopped = True
                break
            if self.stop is not None and self.stop.requested:  # Ctrl-C, SIGTERM: this batch is the last one
                stopped = self.stopped_by_signal = True
                break
        return total, batches, stopped

    def save_epoch(self, epoch: int, data: TrainData, seconds: float, improved: bool, dice: float, t_epoch: float) -> None:
        """Rank 0 writes last (and best) checkpoints and the resume state, atomically; every rank sends its RNG."""
        import torch.distributed as dist

        import vivim
        from vivim.data.layouts import folder_id

        cfg, progress = self.cfg, self.progress
        if not self.dist.main:
            if self.dist.world > 1:
                dist.gather_object(rng_state(), None, dst=0)
            return
        best, partial = progress.best_dice, progress.partial
        summary = {
            "epochs_done": epoch + (partial is None), "epochs": cfg.epochs,
            **({"partial_epoch": {"epoch": epoch + 1, "batches": partial["batches"], "of": partial["of"]}}
               if partial else {}), "best_val_dice": round(best, 6) if best >= 0 else None,
            "best_epoch": progress.best_epoch + 1, "data": str(cfg.data),
            "val": data.val_source, "val_kind": data.val_kind, "data_id": folder_id(cfg.data),
            "seed": cfg.seed,
            "seconds": round(seconds, 1), "lr": cfg.lr, "batch": cfg.batch, "world_size": self.dist.world,
            "device": str(self.device), "amp": self.use_amp, "train_videos": len(data.train_videos),
            "train_fingerprints": data.train_fingerprints, "val_videos": [v.name for v in data.val_videos], "init": cfg.init, "sparse_masks": cfg.sparse_masks,
        }
        metadata = {"output_frame": cfg.output_frame}
        vivim.save_checkpoint(self.model, self.last_path, **metadata, training={**summary, "kind": "last"})
        if improved:
            vivim.save_checkpoint(self.model, self.best_path, **metadata, training={
                **summary, "kind": "best", "val_dice": round(dice, 6) if math.isfinite(dice) else None})
        rngs = [rng_state()]
        if self.dist.world > 1:  # every rank's RNG, so a resumed DDP run draws the same numbers
            gathered: list = [None] * self.dist.world
            dist.gather_object(rngs[0], gathered, dst=0)
            rngs = gathered
        save_state_file({
            "format": STATE_FORMAT, "config": asdict(cfg),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            # "epoch": the last whole one; "partial": the epoch after it, open (--max-steps stopped inside it)
            "scaler": self.scaler.state_dict(), "epoch": epoch - (partial is not None), "partial": partial,
            "best_dice": best, "best_epoch": progress.best_epoch,
            "history": progress.history, "seconds": seconds, "rng": rngs, "val_kind": data.val_kind,
            "val_videos": [v.name for v in data.val_videos],
        }, self.state_path)
        atomic.write_text(history_path(cfg.out), history_csv(progress.history, progress.best_epoch))
        shown = f"val Dice {dice:.4f}" if math.isfinite(dice) else "no validation set"
        if partial:
            signalled = self.stopped_by_signal
            how = self.stop.reason if signalled else "stopped by --max-steps"  # "interrupted (Ctrl-C)", ...
            shown = "not validated" if signalled and data.val_videos else shown
            print(f"epoch {epoch + 1}/{cfg.epochs} {how} after {partial['batches']} of {partial['of']} "
                  f"batches: loss {partial['loss_sum'] / max(1, partial['batches']):.4f}, {shown}, "
                  f"{time.perf_counter() - t_epoch:.0f} s{' (the best file until an epoch completes)' if improved else ''}; "
                  "saved, --resume continues the epoch")
            return
        print(f"epoch {epoch + 1}/{cfg.epochs}: loss {progress.history['epoch_loss'][-1]:.4f}, {shown}, "
              f"lr {progress.history['lr'][-1]:.2e}, {time.perf_counter() - t_epoch:.0f} s{' (best)' if improved else ''}")

    def finish(self, data: TrainData, seconds: float) -> TrainResult:
        """The result, the summary line and the next command (rank 0)."""
        import torch.distributed as dist

        from vivim.data.layouts import detect_layout

        cfg, progress = self.cfg, self.progress
        if self.dist.world > 1:
            dist.barrier()
        epochs_done = len(progress.history["epoch_loss"])
        if self.dist.main and epochs_done:  # again: a run killed between the state and the log left it one row short
            atomic.write_text(history_path(cfg.out), history_csv(progress.history, progress.best_epoch))
        result = TrainResult(self.best_path, self.last_path, self.state_path, progress.best_dice, progress.best_epoch + 1,
                             epochs_done, progress.step_losses, progress.val_history, seconds,
                             {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()})
        if self.dist.main and (epochs_done or progress.partial):
            best = progress.best_dice
            best_text = (f"best val Dice {best:.4f} (epoch {progress.best_epoch + 1})" if best >= 0
                         else "no whole epoch validated yet" if data.val_videos else "no validation")
            open_epoch = (f" and {progress.partial['batches']} of {progress.partial['of']} batches of epoch "
                          f"{epochs_done + 1} (--max-steps)" if progress.partial else "")
            print(f"done: {count(epochs_done, 'epoch')}{open_epoch} in {seconds / 60:.1f} min, {best_text}; "
                  f"best {self.best_path}, last {self.last_path}, resume state {self.state_path}, "
                  f"per-epoch log {history_path(cfg.out)}")
            report = self.best_path.with_suffix(".eval.json")
            sparse = ["--sparse-masks"] if cfg.sparse_masks else []  # a held-out set annotated the same way
            scored_test = all((Path(cfg.data) / name).is_dir() for name in ("Test", "Test_GT"))  # frames and masks
            if detect_layout(Path(cfg.data)) == "vtus" and scored_test:
                next_command(shell("vivim-eval", self.best_path, "--data", cfg.data, "--split", "test", *sparse,
                                   "--json", report))
            else:  # a DAVIS folder has no test split of its own: score on videos the model never saw
                print(f"note: {cfg.data} holds the training videos; give vivim-eval a held-out dataset for a fair score")
                next_command(shell("vivim-eval", self.best_path, "--data", "HELD_OUT_DIR", *sparse, "--json", report))
        return result
