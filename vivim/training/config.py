"""What a training run is asked to do (the CLI's flags) and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union


@dataclass
class TrainConfig:
    data: str
    out: str
    variant: str = "paper"
    epochs: int = 100
    frames: int = 5
    size: Union[int, tuple[int, int]] = 256  # side N (square) or (height, width)
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

