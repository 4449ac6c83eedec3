"""The files a run leaves beside its checkpoint (the resume state, the per-epoch log) and the checks before a
resume continues one. The state loads with `torch.load(weights_only=True)`: tensors, lists and numbers only."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vivim import atomic
from vivim.constants import size_argument
from vivim.errors import VivimError

if TYPE_CHECKING:
    from vivim.training.config import TrainConfig
    from vivim.training.data import TrainData

STATE_FORMAT = "vivim-train-state-1"


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



def rng_state() -> dict:
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


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), None if py["gauss"] == "none" else py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"], nps["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state_file(obj: dict, path: Path) -> None:
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



def check_resumable(cfg: TrainConfig, state: dict, state_path: Path, last_path: Path) -> None:
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
            elif key == "size":  # as the flag takes it: 256 or 256x320
                differences.append(f"with --size {size_argument(was)}, not {size_argument(now)}")
            else:
                differences.append(f"with --{key.replace('_', '-')} {was!r}, not {now!r}")
    if saved["epochs"] != cfg.epochs:  # the cosine schedule's length is part of the state
        differences.append(f"with --epochs {saved['epochs']}, not {cfg.epochs} (to train longer, start a new run "
                           f"with --init {last_path} and another --out)")
    if differences:  # every one at once: resuming should not take one attempt per flag
        raise VivimError(f"{state_path}: the run was started {'; '.join(differences)}; resume with the same flags")


def check_same_validation(state: dict, data: "TrainData", state_path: Path) -> None:
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


def started_val_kind(state: dict) -> str:
    """Where a saved run validated. Older states: early 2026-11-27 ones name the source (a Val/ folder, or text for
    carved videos); before that, only --val or carving existed."""
    if state.get("val_kind"):
        return state["val_kind"]
    if state["config"].get("val"):
        return "--val"
    source = str(state.get("val_source", ""))
    return "Val/" if source == str(Path(state["config"]["data"]) / "Val") else "carved"
