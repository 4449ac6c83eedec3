"""`vivim-train`: train Vivim on a video segmentation dataset (the paper's recipe by default), one GPU, CPU, or
several GPUs through `torchrun` (DistributedDataParallel).

Recipe (spec §3): Adam lr 1e-4 (no weight decay), cosine to 1e-6 stepped per epoch, batch 8 clips, 256², T = 5,
structure loss (BCE + weighted IoU) on the supervised frame only. Validation every epoch on videos held out from
the training folder (never its test split); the best-by-Dice (threshold 0.5, mean over frames) and the last
weights are saved as Vivim checkpoints, and `<out stem>.state.pt` holds everything `--resume` needs.
"""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

from vivim import atomic, paths
from vivim.cli_utils import count, next_command, run_app, shell, sigterm_unwinds, warn
from vivim.constants import SEED_MAX
from vivim.devices import torch_device
from vivim.errors import Interrupted, Terminated, VivimError

STATE_FORMAT = "vivim-train-state-1"


@dataclass
class TrainConfig:
    data: str
    out: str
    variant: str = "paper"
    epochs: int = 100
    frames: int = 5
    size: int = 256
    batch: int = 8
    workers: int = 2
    lr: float = 1e-4
    min_lr: float = 1e-6
    val: Optional[str] = None
    val_fraction: float = 0.2
    seed: int = 1234
    resume: bool = False
    init: Optional[str] = None
    amp: Optional[bool] = None  # None = on for CUDA, off on CPU
    output_frame: str = "centre"
    device: Optional[str] = None
    threads: Optional[int] = None
    cache: Optional[bool] = None  # keep decoded frames in memory (None = when the dataset is small)
    max_steps: Optional[int] = None  # this run stops after that many steps (validated and saved; --resume continues)
    progress: bool = True
    augment: bool = True
    overwrite: bool = False  # a fresh run may replace the checkpoint of an earlier run at `out`
    sparse_masks: bool = False  # frames without a mask feed clips but are not supervised
    patience: Optional[int] = None  # stop after this many epochs without a better validation Dice


@dataclass
class TrainResult:
    best_path: Path
    last_path: Path
    state_path: Path
    best_dice: float
    best_epoch: int
    epochs_done: int
    step_losses: list[float] = field(default_factory=list)
    val_dice: list[float] = field(default_factory=list)
    seconds: float = 0.0
    final_state: Optional[dict] = None  # the model's final weights (tests compare DDP ranks with it)


def output_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """best = OUT, last = <stem>.last.safetensors, resume state = <stem>.state.pt (all beside OUT)."""
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out.with_suffix(out.suffix + ".safetensors") if out.suffix else out.with_suffix(".safetensors")
    stem = out.with_suffix("")
    return out, stem.with_name(stem.name + ".last.safetensors"), stem.with_name(stem.name + ".state.pt")


def history_path(out: str | Path) -> Path:
    """<stem>.history.csv beside the checkpoints: one row per epoch (loss, validation Dice, learning rate), for plots."""
    best = output_paths(out)[0]
    return best.with_name(best.with_suffix("").name + ".history.csv")


def history_csv(history: dict, best_epoch: int) -> str:
    """The run's epochs as CSV; val_dice is empty without a validation set (the history keeps -1 there)."""
    rows = ["epoch,train_loss,val_dice,lr,best"]
    for k, (loss, dice, lr) in enumerate(zip(history["epoch_loss"], history["val_dice"], history["lr"])):
        rows.append(f"{k + 1},{loss:.6f},{'' if dice < 0 else f'{dice:.6f}'},{lr:.6e},{int(k == best_epoch)}")
    return "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------------------------- state file


def _rng_state() -> dict:
    """Python, numpy and torch RNG states as tensors / lists / ints only (loadable with weights_only=True)."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss if gauss is not None else "none"},
        "numpy": {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), None if py["gauss"] == "none" else py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"], nps["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj: dict, path: Path) -> None:
    import torch

    with atomic.atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_state(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise VivimError(f"{path}: no training state to resume from (it is written after each epoch)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged or foreign file
        raise VivimError(f"{path}: cannot read the training state ({exc.__class__.__name__})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise VivimError(f"{path}: not a vivim-train state file")
    return state


# ----------------------------------------------------------------------------------------------- helpers


@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _scan_implementations(device: Any) -> str:
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


def _init_distributed(device_name: Optional[str]) -> tuple[_Dist, Any]:
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = _Dist(world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))
    device = torch_device(device_name)
    if device.type == "cuda":
        if world > 1:  # one process per GPU: the launcher's local rank picks it
            device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return d, device


def _labelled_val_folder(root: Path) -> bool:
    """A VTUS folder's own validation split: Val/ with its masks in Val_GT/ (the same rule for --data and --val)."""
    from vivim.data.layouts import detect_layout

    return detect_layout(root) == "vtus" and (root / "Val").is_dir() and (root / "Val_GT").is_dir()


def _val_videos(path: str, sparse: bool):
    from vivim.data.layouts import detect_layout, discover_videos

    root = Path(path)
    if detect_layout(root) == "vtus":  # its labelled Val/ when there is one, else its Train/ — never its Test/
        return discover_videos(root, "val" if _labelled_val_folder(root) else "train", sparse=sparse)
    return discover_videos(root, "val", sparse=sparse)


def _annotated_only(videos: list, what: str, main: bool) -> list:
    """A sparsely annotated set may hold videos without any mask: they give no sample, and a validation split
    carved from them would score nothing."""
    from vivim.data.dataset import no_mask_error

    kept = [v for v in videos if v.annotated]
    if not kept:
        raise no_mask_error(videos, what)
    if len(kept) < len(videos) and main:
        warn(f"{len(videos) - len(kept)} {what} video(s) have no mask at all and are left out (e.g. {next(v.name for v in videos if not v.annotated)})")
    return kept


CACHE_BUDGET = 2 * 1024**3  # bytes of decoded, resized frames kept in memory, over every copy on this machine


def _should_cache(videos, size: int, copies: int) -> bool:
    """Cache decoded frames when every copy of them fits the budget: each DataLoader worker (or the process itself
    without workers) fills a cache of its own, and so does each training process on this machine."""
    frames = sum(len(v) for v in videos)
    return frames * size * size * 3 * max(1, copies) < CACHE_BUDGET


def _validate(model, loader, device, output_frame: str, dist_info: _Dist, amp_dtype) -> float:
    """Mean Dice (threshold 0.5) over this rank's share of validation frames, reduced over ranks."""
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
    if dist_info.world > 1:
        dist.all_reduce(total)
    model.train()
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


def _initialise(model, source: str, verbose: bool) -> None:
    """--init: a Vivim checkpoint (fine-tune; same variant, any T / size; 'demo' names the bundled weights, as in the
    other tools) or local SegFormer weights."""
    from vivim.checkpoint import FORMAT, checkpoint_file, read_metadata

    path = Path(checkpoint_file(source))
    if not path.exists():
        raise VivimError(f"--init {source}: no such file or folder (a Vivim checkpoint, 'demo', or a SegFormer folder "
                         "or file)")
    if path.name.endswith(".state.pt"):  # vivim-train's resume state holds the optimiser too, not a model to load
        last = path.with_name(path.name[: -len(".state.pt")] + ".last.safetensors")
        raise VivimError(f"--init {path}: a resume state, not weights; continue that run with --resume, or "
                         f"fine-tune from {last}")
    if path.is_file() and path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                is_vivim = (handle.metadata() or {}).get("format") == FORMAT
        except (SafetensorError, OSError) as exc:
            raise VivimError(f"--init {path}: not a readable safetensors file ({exc})") from None
        if is_vivim:
            from safetensors.torch import load_file

            meta = read_metadata(path)
            if meta.get("variant") != model.config.name:
                raise VivimError(f"--init {path}: a '{meta.get('variant')}' checkpoint cannot initialise the '{model.config.name}' variant")
            state = load_file(str(path))
            ours = model.state_dict()
            wrong = [k for k in ours if k not in state or state[k].shape != ours[k].shape]
            wrong += [k for k in state if k not in ours]  # e.g. a checkpoint of another version of the model
            if wrong:
                raise VivimError(f"--init {path}: {len(wrong)} tensors do not fit this model (e.g. {wrong[0]})")
            model.load_state_dict(state)
            if verbose:
                print(f"initialised all weights from Vivim checkpoint {path}")
            return
    from vivim.model.segformer_import import load_segformer_weights

    try:
        report = load_segformer_weights(model, source)
    except VivimError as exc:
        message = str(exc)
        named = message.startswith((str(source), str(path)))  # the reader's errors mostly begin with the path
        raise VivimError(f"--init {message}" if named else f"--init {source}: {message}") from None
    if verbose:
        print(f"initialised {len(report.mapped)} tensors from SegFormer weights {source}")


# ----------------------------------------------------------------------------------------------- training


def run_training(cfg: TrainConfig) -> TrainResult:
    """Train as configured; returns paths, losses and the best validation Dice (rank 0 writes all files)."""
    import numpy as np
    import torch

    import vivim

    best_path, last_path, state_path = _check_flags(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist_info, device = _init_distributed(cfg.device)
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
        _check_resumable(cfg, state, state_path, last_path)
        partial = state.get("partial")
        if partial and partial.get("world", 1) != dist_info.world:
            raise VivimError(f"{state_path}: the run stopped inside epoch {state['epoch'] + 2} with "
                             f"{count(partial.get('world', 1), 'process', 'processes')}; resume it with as many (each skips its "
                             "own share of the epoch's clips)")
    # a resumed run validates where it started, even if a Val/ folder appeared or went since ("best" keeps its meaning)
    data = _build_data(cfg, dist_info, device, _started_val_kind(state) if state else None)
    if state is not None:
        _check_same_validation(state, data, state_path)
    if cfg.patience is not None and not data.val_videos:
        raise VivimError("--patience needs validation videos (--val, a VTUS Val/ folder, or --val-fraction above 0)")

    model = vivim.create_model(cfg.variant, frames=cfg.frames, img_size=cfg.size)
    if cfg.init and not cfg.resume:
        _initialise(model, cfg.init, dist_info.main)
    model.to(device)
    run = _Run(cfg, dist_info, device, use_amp, model, best_path, last_path, state_path)
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
        print(f"training {cfg.variant} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params) on {device} x{dist_info.world}: "
              f"{count(len(data.train_videos), 'video')} / {count(len(data.train_ds), 'clip')} for training, {count(len(data.val_videos), 'video')} for "
              f"validation{' (' + data.val_source + ')' if data.val_videos else ''}; T={cfg.frames}, {cfg.size}x{cfg.size}, batch {cfg.batch}{' per process' if dist_info.world > 1 else ''}, "
              f"{'AMP fp16' if use_amp else 'fp32'}; {_scan_implementations(device)}")

    start = time.perf_counter()
    for epoch in range(run.progress.start_epoch, cfg.epochs):
        if _out_of_patience(run.progress, epoch, cfg.patience, dist_info.main):
            break
        t_epoch = time.perf_counter()
        lr = run.optimizer.param_groups[0]["lr"]  # the epoch's learning rate (the schedule steps after the epoch)
        mean_loss, stopped = run.train_epoch(epoch, data)
        dice = _validate(model, data.val_loader, device, cfg.output_frame, dist_info, run.amp_dtype) \
            if data.val_loader is not None else float("nan")
        if run.progress.partial is None:
            improved = run.progress.record_epoch(mean_loss, dice, epoch, lr)
        else:  # --max-steps stopped inside the epoch: validated and saved, the epoch left open for --resume
            improved = run.progress.record_partial()
        run.save_epoch(epoch, data, run.progress.elapsed_before + time.perf_counter() - start, improved, dice, t_epoch)
        if stopped:
            break
    return run.finish(data, run.progress.elapsed_before + time.perf_counter() - start)


def _out_of_patience(progress: "_Progress", epoch: int, patience: Optional[int], main: bool) -> bool:
    """True when the `patience` epochs before `epoch` brought no better validation Dice (--patience): the run stops
    there, with the best checkpoint already saved. Every rank sees the same all-reduced Dice, so all stop together."""
    if patience is None or progress.best_epoch < 0 or epoch - 1 - progress.best_epoch < patience:
        return False
    if main:
        print(f"stopping early: no better validation Dice in the last {'epoch' if patience == 1 else f'{patience} epochs'} "
              f"(best {progress.best_dice:.4f} at epoch {progress.best_epoch + 1})")
    return True


def _check_flags(cfg: TrainConfig) -> tuple[Path, Path, Path]:
    """Every flag checked before any work, with one line naming it; returns the (best, last, state) paths."""
    import vivim
    from vivim.constants import check_output_frame, parse_output_frame, size_problem

    if cfg.variant not in vivim.variants():
        raise VivimError(f"--variant {cfg.variant!r}: choose one of {', '.join(vivim.variants())}")
    for flag, value in (("--epochs", cfg.epochs), ("--frames", cfg.frames), ("--batch", cfg.batch), ("--size", cfg.size),
                        ("--threads", cfg.threads), ("--max-steps", cfg.max_steps), ("--patience", cfg.patience)):
        if value is not None and value < 1:
            raise VivimError(f"{flag} must be at least 1, got {value}")
    if cfg.workers < 0:
        raise VivimError(f"--workers must be 0 or more, got {cfg.workers}")
    if not cfg.lr > 0:
        raise VivimError(f"--lr must be a positive learning rate, got {cfg.lr}")
    cfg.output_frame = str(parse_output_frame(cfg.output_frame))  # 'center' -> 'centre': one spelling in the state
    check_output_frame(cfg.output_frame, cfg.frames)  # after --frames: against a valid clip length
    problem = size_problem(cfg.size)
    if problem:
        raise VivimError(f"--size {problem}")
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


@dataclass
class _Data:
    train_videos: list
    val_videos: list
    train_ds: Any
    sampler: Any
    train_loader: Any
    val_loader: Any
    val_kind: str = "carved"  # "--val", "Val/" (a VTUS folder's own) or "carved" (held out from --data)
    val_source: str = ""  # where the validation videos come from, for the log and the checkpoint metadata

    def start_epoch(self, epoch: int, skip: int = 0) -> None:
        """New shuffle and augmentation; the epoch reaches the DataLoader workers inside each sample's key. `skip`:
        this process's first clips of the epoch, done before a resume."""
        self.sampler.set_epoch(epoch, skip)


def _build_data(cfg: TrainConfig, dist_info: _Dist, device: Any, val_kind: str | None = None) -> _Data:
    """Train on the folder's train split, validate on whole held-out videos (never the test split): --val, else a
    VTUS folder's own Val/ (with Val_GT/), else videos carved from --data; `val_kind` forces one (a resumed run)."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, Subset

    from vivim.data.dataset import ClipDataset, EpochSampler
    from vivim.data.layouts import check_headers, discover_videos, split_by_video
    from vivim.data.transforms import TrainAugment

    sparse = cfg.sparse_masks
    all_train = _annotated_only(discover_videos(cfg.data, "train", sparse=sparse), "training", dist_info.main)
    if cfg.val and os.path.realpath(cfg.val) == os.path.realpath(cfg.data) and dist_info.main:
        warn(f"--val {cfg.val} is the --data folder: validation scores videos the model trains on")
    val_kind = val_kind or _val_kind(cfg)
    if val_kind == "--val":
        val_videos = _annotated_only(_val_videos(str(cfg.val), sparse), "validation", dist_info.main)
        train_videos, val_source = all_train, str(cfg.val)
    elif val_kind == "Val/":
        val_videos = _annotated_only(discover_videos(cfg.data, "val", sparse=sparse), "validation", dist_info.main)
        train_videos = all_train
        val_source = str(Path(cfg.data) / "Val")
    else:
        train_videos, val_videos = split_by_video(all_train, cfg.val_fraction, cfg.seed)
        val_source = f"{len(val_videos)} video(s) carved from --data"
        unlabelled_val = Path(cfg.data) / "Val"
        if val_videos and unlabelled_val.is_dir() and not (Path(cfg.data) / "Val_GT").is_dir() and dist_info.main:
            warn(f"{unlabelled_val} has no Val_GT/ beside it (no masks to score): validating on videos carved from "
                 "--data instead")
    check_headers(train_videos + val_videos)
    local_ranks = os.environ.get("LOCAL_WORLD_SIZE", "1")  # torchrun's processes on this machine
    copies = max(1, cfg.workers) * (int(local_ranks) if local_ranks.isdigit() else 1)
    cache = cfg.cache if cfg.cache is not None else _should_cache(train_videos + val_videos, cfg.size, copies)
    augment = TrainAugment() if cfg.augment else None
    train_ds = ClipDataset(train_videos, frames=cfg.frames, size=cfg.size, output_frame=cfg.output_frame,
                           augment=augment, seed=cfg.seed, cache=cache)
    sampler = EpochSampler(DistributedSampler(train_ds, num_replicas=dist_info.world, rank=dist_info.rank,
                                              shuffle=True, seed=cfg.seed, drop_last=False))
    loader_args: dict[str, Any] = {"num_workers": cfg.workers, "pin_memory": device.type == "cuda",
                                   "persistent_workers": cfg.workers > 0}
    # each loader draws its workers' base seed from a generator of its own: from torch's global one, persistent
    # workers took one draw when first iterated, which a resumed run took again (dropout then drew other values)
    train_loader = DataLoader(train_ds, batch_size=cfg.batch, sampler=sampler,
                              generator=torch.Generator().manual_seed(cfg.seed), **loader_args)
    val_loader = None
    if val_videos:
        val_ds = ClipDataset(val_videos, frames=cfg.frames, size=cfg.size, output_frame=cfg.output_frame, cache=cache)
        shard = Subset(val_ds, list(range(dist_info.rank, len(val_ds), dist_info.world)))
        val_loader = DataLoader(shard, batch_size=cfg.batch, shuffle=False,
                                generator=torch.Generator().manual_seed(cfg.seed), **loader_args)
    return _Data(train_videos, val_videos, train_ds, sampler, train_loader, val_loader, val_kind, val_source)


def _val_kind(cfg: TrainConfig) -> str:
    root = Path(cfg.data)
    if cfg.val:
        return "--val"
    if cfg.val_fraction > 0 and _labelled_val_folder(root):
        return "Val/"  # the split the dataset was made with, rather than videos carved off Train/
    return "carved"


def _check_resumable(cfg: TrainConfig, state: dict, state_path: Path, last_path: Path) -> None:
    """The same settings are required to resume (a resumed run that silently changed the model, the schedule or the
    validation split would compare "best" epochs across different runs); checked before the data is read."""
    saved = state["config"]
    differences = []
    for key in ("variant", "frames", "size", "output_frame", "lr", "min_lr", "batch", "seed", "val_fraction", "val",
                "sparse_masks", "augment"):
        # absent: a state file from before the key was recorded, or (states written before 2026-11-27 left out
        # None values) a --val that was not given; --val is the only one of these settings that can be None
        was, now = saved.get(key), getattr(cfg, key)
        if (key in saved or key == "val") and was != now:
            if key == "augment":  # the flag is --no-augment
                differences.append(f"{'without' if was else 'with'} --no-augment")
            elif isinstance(was, bool):  # an on/off flag
                differences.append(f"{'with' if was else 'without'} --{key.replace('_', '-')}")
            else:
                differences.append(f"with --{key.replace('_', '-')} {was!r}, not {now!r}")
    if saved["epochs"] != cfg.epochs:  # the cosine schedule's length is part of the state
        differences.append(f"with --epochs {saved['epochs']}, not {cfg.epochs} (to train longer, start a new run "
                           f"with --init {last_path} and another --out)")
    if differences:  # every one at once: resuming should not take one attempt per flag
        raise VivimError(f"{state_path}: the run was started {'; '.join(differences)}; resume with the same flags")


def _check_same_validation(state: dict, data: "_Data", state_path: Path) -> None:
    """A resumed run scores the videos the run started with: a dataset folder that gained or lost videos (or, with
    --sparse-masks, masks) would carve another split, and "best" would compare epochs scored on different sets."""
    saved = state.get("val_videos")  # states before 2026-11-27 did not record them
    now = [v.name for v in data.val_videos]
    if saved is not None and sorted(saved) != sorted(now):
        gone, new = sorted(set(saved) - set(now)), sorted(set(now) - set(saved))
        change = ", ".join(part for part in (f"then {gone[0]}" if gone else "", f"now {new[0]}" if new else "") if part)
        raise VivimError(f"{state_path}: the validation videos differ from the run's start ({len(saved)} then, "
                         f"{len(now)} now; e.g. {change}): the dataset changed; resume on the same videos, or start "
                         "a new run with --overwrite")


def _started_val_kind(state: dict) -> str:
    """Where a saved run validated. Older states: early 2026-11-27 ones name the source (a Val/ folder, or text for
    carved videos); before that, only --val or carving existed."""
    if state.get("val_kind"):
        return state["val_kind"]
    if state["config"].get("val"):
        return "--val"
    source = str(state.get("val_source", ""))
    return "Val/" if source == str(Path(state["config"]["data"]) / "Val") else "carved"


@dataclass
class _Progress:
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


class _Run:
    """The model, its optimiser state and progress of one training run: resume, one epoch, the files per epoch."""

    def __init__(self, cfg: TrainConfig, dist_info: _Dist, device: Any, use_amp: bool, model: Any,
                 best_path: Path, last_path: Path, state_path: Path) -> None:
        import torch

        self.cfg, self.dist, self.device, self.use_amp, self.model = cfg, dist_info, device, use_amp, model
        self.best_path, self.last_path, self.state_path = best_path, last_path, state_path
        self.amp_dtype = torch.float16 if use_amp else None
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs, eta_min=cfg.min_lr)
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
        self.progress = _Progress()
        self.net = model  # wrap_ddp() replaces it once the weights are final (after a resume)
        self.saw_lesion = False  # any training mask with a lesion in this run's first epoch

    def wrap_ddp(self) -> None:
        """One process per GPU: DistributedDataParallel over the model, after resume() loaded its weights."""
        from torch.nn.parallel import DistributedDataParallel

        if self.dist.world > 1:
            # the depthwise Conv3d weight grads differ from DDP's bucket view only in the stride of a size-1 dim
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=device_ids)

    def resume(self, state: dict) -> None:
        """Continue from a state that `_check_resumable` accepted: weights, optimiser, schedule, progress, RNG."""
        cfg, state_path = self.cfg, self.state_path
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty from a run without AMP: a run now with it starts a fresh scale
            self.scaler.load_state_dict(state["scaler"])
        self.progress = _Progress(state["epoch"] + 1, state["best_dice"], state["best_epoch"], state["history"],
                                  state["seconds"], partial=state.get("partial"))
        rank = self.dist.rank
        _set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        if self.dist.main and self.progress.start_epoch < cfg.epochs:  # a finished run gets the warning instead
            partial = self.progress.partial
            inside = f", batch {partial['batches'] + 1} of {partial['of']}" if partial else ""
            print(f"resuming from {state_path} at epoch {self.progress.start_epoch + 1}/{cfg.epochs}{inside} "
                  f"(best Dice so far {self.progress.best_dice:.4f})")

    def train_epoch(self, epoch: int, data: _Data) -> tuple[float, bool]:
        """One pass over the training clips, or the rest of one that --max-steps stopped inside; (mean loss, stopped by
        --max-steps). The LR schedule steps after a whole epoch; `progress.partial` tells an epoch left open."""
        from tqdm import tqdm

        cfg, progress = self.cfg, self.progress
        # an epoch left open by --max-steps continues where it stopped: the shuffle and the augmentation are functions
        # of (seed, epoch, index), so skipping the batches done gives the clips the uninterrupted run would have drawn
        open_epoch = progress.partial or {"batches": 0, "loss_sum": 0.0}
        done_before = int(open_epoch["batches"])
        data.start_epoch(epoch, skip=done_before * cfg.batch)
        self.net.train()
        epoch_batches = done_before + len(data.train_loader)
        bar = tqdm(total=epoch_batches, initial=done_before, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
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
        progress.partial = None if batches >= epoch_batches else {"batches": batches, "of": epoch_batches,
                                                                    "loss_sum": total, "world": self.dist.world}
        if progress.partial is None:
            with warnings.catch_warnings():
                # AMP's grad scaler skips the steps whose gradients overflow, at first while it finds its scale; when
                # that is every step of an epoch (a short epoch), torch warns that the schedule steps before the
                # optimiser did. The schedule is per epoch, so the warning describes nothing wrong here.
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                self.scheduler.step()
        return total / max(1, batches), stopped

    def _steps(self, epoch: int, data: _Data, bar: Any, total: float, batches: int) -> tuple[float, int, bool]:
        """The optimisation steps of one epoch, continuing the sums (`total` loss over `batches`) of the batches done
        before; returns them and whether --max-steps ended the steps."""
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
        return total, batches, stopped

    def save_epoch(self, epoch: int, data: _Data, seconds: float, improved: bool, dice: float, t_epoch: float) -> None:
        """Rank 0 writes last (and best) checkpoints and the resume state, atomically; every rank sends its RNG."""
        import torch.distributed as dist

        import vivim
        from vivim.data.layouts import folder_id

        cfg, progress = self.cfg, self.progress
        if not self.dist.main:
            if self.dist.world > 1:
                dist.gather_object(_rng_state(), None, dst=0)
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
            "val_videos": [v.name for v in data.val_videos], "init": cfg.init, "sparse_masks": cfg.sparse_masks,
        }
        metadata = {"output_frame": cfg.output_frame}
        vivim.save_checkpoint(self.model, self.last_path, **metadata, training={**summary, "kind": "last"})
        if improved:
            vivim.save_checkpoint(self.model, self.best_path, **metadata, training={
                **summary, "kind": "best", "val_dice": round(dice, 6) if math.isfinite(dice) else None})
        rngs = [_rng_state()]
        if self.dist.world > 1:  # every rank's RNG, so a resumed DDP run draws the same numbers
            gathered: list = [None] * self.dist.world
            dist.gather_object(rngs[0], gathered, dst=0)
            rngs = gathered
        _atomic_torch_save({
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
            print(f"epoch {epoch + 1}/{cfg.epochs} stopped by --max-steps after {partial['batches']} of {partial['of']} "
                  f"batches: loss {partial['loss_sum'] / max(1, partial['batches']):.4f}, {shown}, "
                  f"{time.perf_counter() - t_epoch:.0f} s{' (the best file until an epoch completes)' if improved else ''}; "
                  "--resume continues the epoch")
            return
        print(f"epoch {epoch + 1}/{cfg.epochs}: loss {progress.history['epoch_loss'][-1]:.4f}, {shown}, "
              f"lr {progress.history['lr'][-1]:.2e}, {time.perf_counter() - t_epoch:.0f} s{' (best)' if improved else ''}")

    def finish(self, data: _Data, seconds: float) -> TrainResult:
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


# ----------------------------------------------------------------------------------------------- CLI

app = typer.Typer(add_completion=False, help="Train Vivim on a video segmentation dataset (DAVIS or Vivim/VTUS layout).")


@app.command()
def train(
    data: Path = typer.Option(..., "--data", help="Dataset folder (DAVIS: JPEGImages/ + Annotations/; VTUS: Train/ + Train_GT/)."),
    out: Path = typer.Option(Path("runs/vivim.safetensors"), "--out", "--output", "-o", help="Best checkpoint; <stem>.last.safetensors and <stem>.state.pt go beside it."),
    variant: str = typer.Option("paper", "--variant", help="paper, b1, b0 or tiny."),
    epochs: int = typer.Option(100, "--epochs", help="Epochs (cosine schedule length)."),
    frames: int = typer.Option(5, "--frames", "-T", help="Clip length T."),
    size: int = typer.Option(256, "--size", "-s", help="Input size (square, multiple of 32)."),
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
        data=str(data), out=str(out), variant=variant, epochs=epochs, frames=frames, size=size, batch=batch,
        workers=workers, lr=lr, val=str(val) if val else None, val_fraction=val_fraction, seed=seed, resume=resume,
        init=str(init) if init else None, amp=amp, output_frame=output_frame, device=device, threads=threads,
        max_steps=max_steps, progress=progress, augment=not no_augment, overwrite=overwrite, sparse_masks=sparse_masks,
        patience=patience,
    )
    started = time.time()
    try:
        with sigterm_unwinds():
            run_training(cfg)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (a scheduler's time limit, docker stop) through Terminated
        terminated = isinstance(exc, Terminated)
        state = output_paths(cfg.out)[2]
        if state.is_file() and (resume or state.stat().st_mtime >= started):  # this run's, or the one it continues
            raise Interrupted(f"the finished epochs are saved; continue with --resume and the same flags ({state})",
                              terminated=terminated) from None
        raise Interrupted("before the first epoch finished; nothing was saved", terminated=terminated) from None
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
