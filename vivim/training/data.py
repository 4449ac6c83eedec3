"""The training clips and the validation videos of a run: which videos validate (--val, a VTUS Val/ folder, or
videos held out from --data, never a test split), caching, and the data loaders."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vivim.cli_utils import warn
from vivim.constants import image_hw

if TYPE_CHECKING:
    from vivim.data.transforms import ImageSize
    from vivim.training.config import TrainConfig
    from vivim.training.environment import Dist


def labelled_val_folder(root: Path) -> bool:
    """A VTUS folder's own validation split: Val/ with its masks in Val_GT/ (the same rule for --data and --val)."""
    from vivim.data.layouts import detect_layout

    return detect_layout(root) == "vtus" and (root / "Val").is_dir() and (root / "Val_GT").is_dir()


def val_videos_in(path: str, sparse: bool):
    """The videos a --val folder validates on."""
    from vivim.data.layouts import detect_layout, discover_videos

    root = Path(path)
    if detect_layout(root) == "vtus":  # its labelled Val/ when there is one, else its Train/ — never its Test/
        return discover_videos(root, "val" if labelled_val_folder(root) else "train", sparse=sparse)
    return discover_videos(root, "val", sparse=sparse)


def annotated_only(videos: list, what: str, main: bool) -> list:
    """A sparsely annotated set may hold videos without any mask: they give no sample, and a validation split
    carved from them would score nothing."""
    from vivim.data.dataset import no_mask_error

    kept = [v for v in videos if v.annotated]
    if not kept:
        raise no_mask_error(videos, what)
    if len(kept) < len(videos) and main:
        warn(f"{len(videos) - len(kept)} {what} video(s) have no mask at all and are left out (e.g. {next(v.name for v in videos if not v.annotated)})")
    return kept


def patient_on_both_sides(data: Path, train_videos: list, val_videos: list) -> str | None:
    """A warning when a carved validation split puts videos of one source folder (a patient or exam, as vivim-data
    import records it in import.json) on both sides: the model then validates on a patient it trains on, and the
    validation Dice reads high. Only for imports from several such folders (a flat import has one source folder)."""
    from vivim.data.video_import import MANIFEST

    try:
        records = json.loads((data / MANIFEST).read_text())["videos"]
        folder = {str(r["name"]): str(Path(r["source"]).parent) for r in records}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not an import, or a manifest of another form: nothing known about patients
    if len(set(folder.values())) < 2:
        return None
    trained = {folder[v.name]: v.name for v in train_videos if v.name in folder}
    both = next(((v.name, trained[folder[v.name]]) for v in val_videos
                 if v.name in folder and folder[v.name] in trained), None)
    if both is None:
        return None
    return (f"--val-fraction: {Path(folder[both[0]]).name} has videos on both sides of the validation split ({both[1]} "
            f"for training, {both[0]} for validation), so validation Dice reads high; to hold out whole patients, "
            "import them into another folder and pass it as --val")


CACHE_BUDGET = 2 * 1024**3  # bytes of decoded, resized frames kept in memory, over every copy on this machine


def should_cache(videos, size: ImageSize, copies: int) -> bool:
    """Cache decoded frames when every copy of them fits the budget: each DataLoader worker (or the process itself
    without workers) fills a cache of its own, and so does each training process on this machine."""
    frames = sum(len(v) for v in videos)
    height, width = image_hw(size)
    return frames * height * width * 3 * max(1, copies) < CACHE_BUDGET



@dataclass
class TrainData:
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

    @functools.cached_property
    def train_fingerprints(self) -> list[str]:
        """Content fingerprints of the training videos, for the checkpoint: vivim-eval flags copies of them."""
        from vivim.data.fingerprint import fingerprints

        return fingerprints(self.train_videos)


def build_data(cfg: TrainConfig, dist_info: Dist, device: Any, val_kind: str | None = None) -> TrainData:
    """Train on the folder's train split, validate on whole held-out videos (never the test split): --val, else a
    VTUS folder's own Val/ (with Val_GT/), else videos carved from --data; `val_kind` forces one (a resumed run)."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, Subset

    from vivim.data.dataset import ClipDataset, EpochSampler
    from vivim.data.layouts import check_headers, discover_videos, split_by_video
    from vivim.data.transforms import TrainAugment

    sparse = cfg.sparse_masks
    all_train = annotated_only(discover_videos(cfg.data, "train", sparse=sparse), "training", dist_info.main)
    if cfg.val and os.path.realpath(cfg.val) == os.path.realpath(cfg.data) and dist_info.main:
        warn(f"--val {cfg.val} is the --data folder: validation scores videos the model trains on")
    val_kind = val_kind or choose_val_kind(cfg)
    if val_kind == "--val":
        val_videos = annotated_only(val_videos_in(str(cfg.val), sparse), "validation", dist_info.main)
        train_videos, val_source = all_train, str(cfg.val)
    elif val_kind == "Val/":
        val_videos = annotated_only(discover_videos(cfg.data, "val", sparse=sparse), "validation", dist_info.main)
        train_videos = all_train
        val_source = str(Path(cfg.data) / "Val")
    else:
        train_videos, val_videos = split_by_video(all_train, cfg.val_fraction, cfg.seed)
        val_source = f"{len(val_videos)} video(s) carved from --data"
        shared = patient_on_both_sides(Path(cfg.data), train_videos, val_videos)
        if shared and dist_info.main:
            warn(shared)
        unlabelled_val = Path(cfg.data) / "Val"
        if val_videos and unlabelled_val.is_dir() and not (Path(cfg.data) / "Val_GT").is_dir() and dist_info.main:
            warn(f"{unlabelled_val} has no Val_GT/ beside it (no masks to score): validating on videos carved from "
                 "--data instead")
    check_headers(train_videos + val_videos)
    local_ranks = os.environ.get("LOCAL_WORLD_SIZE", "1")  # torchrun's processes on this machine
    copies = max(1, cfg.workers) * (int(local_ranks) if local_ranks.isdigit() else 1)
    cache = cfg.cache if cfg.cache is not None else should_cache(train_videos + val_videos, cfg.size, copies)
    augment = TrainAugment() if cfg.augment else None
    train_ds = ClipDataset(train_videos, frames=cfg.frames, size=cfg.size, output_frame=cfg.output_frame,
                           augment=augment, seed=cfg.seed, cache=cache)
    sampler = EpochSampler(DistributedSampler(train_ds, num_replicas=dist_info.world, rank=dist_info.rank,
                                              shuffle=True, seed=cfg.seed, drop_last=False))
    loader_args: dict[str, Any] = {"num_workers": cfg.workers, "pin_memory": device.type == "cuda",
                                   "persistent_workers": cfg.workers > 0, "worker_init_fn": leave_stop_signals_to_main}
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
    return TrainData(train_videos, val_videos, train_ds, sampler, train_loader, val_loader, val_kind, val_source)


def leave_stop_signals_to_main(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C, SIGHUP and a first SIGTERM to the main process: a terminal's Ctrl-C (or a
    scheduler's SIGTERM) reaches every process of the job, and a worker it ended would fail the batch being fetched.
    The main process stops after its current batch and saves, and its loader then ends the workers. A second
    SIGTERM ends a worker: what a loader (or Python at exit) sends to one stuck in a read."""
    import signal

    for signum in (signal.SIGINT, getattr(signal, "SIGHUP", None)):
        if signum is not None:
            signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _end_on_second_sigterm)


_sigterms: list[int] = []


def _end_on_second_sigterm(signum: int, frame: object) -> None:
    if _sigterms:
        os._exit(128 + signum)
    _sigterms.append(signum)


def choose_val_kind(cfg: TrainConfig) -> str:
    root = Path(cfg.data)
    if cfg.val:
        return "--val"
    if cfg.val_fraction > 0 and labelled_val_folder(root):
        return "Val/"  # the split the dataset was made with, rather than videos carved off Train/
    return "carved"
