"""Torch dataset of clips: one sample per annotated frame, the clip built around it (centre or newest)."""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from vivim.constants import IMAGENET_MEAN, IMAGENET_STD, TRAIN_RESIZE, output_frame_index
from vivim.data.clips import clip_indices
from vivim.data.image_io import read_frame, read_mask, size_mismatch
from vivim.data.layouts import VideoRecord
from vivim.data.transforms import ImageSize, TrainAugment, apply_geometry, normalise, resize_frame, resize_mask, salt_and_pepper
from vivim.errors import VivimError


def no_mask_error(videos: Sequence, what: str = "") -> VivimError:
    """The one-line error for a set of videos none of which has a mask (`what`: e.g. "validation")."""
    kind = f"{what} videos" if what else "video(s)"
    return VivimError(f"{videos[0].frames[0].parent.parent}: none of the {len(videos)} {kind} has a mask")


class ClipDataset(Dataset):
    """Samples are (video, frame) pairs; item = {'clip': (T,3,S,S) float32, 'mask': (1,S,S) float32 in [0,1],
    'video': name, 'frame': index, 'lesion': whether the mask file marks any}. The mask is the supervised frame's
    (soft after the bilinear resize).

    Randomness (augmentation) is a pure function of (seed, epoch, index): identical across worker counts,
    processes and resumed runs. Index it with (epoch, index) keys from `EpochSampler`; a plain index uses the epoch
    of `set_epoch`, which DataLoader workers (copies of the dataset) never see.
    """

    def __init__(
        self,
        videos: Sequence[VideoRecord],
        *,
        frames: int = 5,
        size: ImageSize = 256,
        output_frame: str = "centre",
        augment: TrainAugment | None = None,
        seed: int = 0,
        cache: bool = False,
        normalization: tuple[Sequence[float], Sequence[float]] = (IMAGENET_MEAN, IMAGENET_STD),
        resize: str = TRAIN_RESIZE,
    ) -> None:
        if not videos:
            raise VivimError("dataset has no videos")
        output_frame_index(output_frame, frames)  # validates the name early
        self.videos = list(videos)
        self.frames = frames
        self.size = size
        self.output_frame = output_frame
        self.augment = augment
        self.seed = seed
        self.normalization = normalization  # (mean, std): a checkpoint's recorded values when evaluating it
        self.resize = resize  # the filter frames are resized with (a checkpoint's recorded one when evaluating)
        self.epoch = 0
        self.cache: dict[str, np.ndarray] | None = {} if cache else None
        self._shapes: dict[str, tuple[int, int]] = {}  # native (H, W) of frames read so far
        # frames without a mask (a sparsely annotated set) are not samples, but their pixels enter neighbours' clips
        self.samples = [(v, i) for v, video in enumerate(self.videos) for i in video.annotated]
        if not self.samples:
            raise no_mask_error(self.videos)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def _frame(self, path) -> np.ndarray:
        key = str(path)
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        native = read_frame(path)
        self._shapes[key] = native.shape[:2]
        image = resize_frame(native, self.size, self.resize)
        if self.cache is not None:
            self.cache[key] = image
        return image

    def _mask(self, video: VideoRecord, index: int, rng: np.random.Generator | None) -> tuple[np.ndarray, bool]:
        """The supervised frame's mask at the model's size (augmentation noise added when training), and whether
        the file itself marks any lesion."""
        mask_path, frame_path = video.masks[index], video.frames[index]
        assert mask_path is not None  # samples are annotated frames only
        mask = read_mask(mask_path)
        frame_shape = self._shapes.get(str(frame_path)) or read_frame(frame_path).shape[:2]
        if mask.shape != frame_shape:
            raise size_mismatch(mask_path, mask.shape[::-1], frame_path, frame_shape[::-1])
        if rng is not None and self.augment is not None and self.augment.mask_noise > 0:
            return resize_mask(salt_and_pepper(mask, self.augment.mask_noise, rng), self.size), bool(mask.any())
        return resize_mask(mask, self.size), bool(mask.any())

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, idx = key if isinstance(key, tuple) else (self.epoch, key)
        v, i = self.samples[idx]
        video = self.videos[v]
        indices = clip_indices(i, len(video), self.frames, self.output_frame)
        rng = np.random.default_rng([self.seed, epoch, idx]) if self.augment is not None else None
        clip = np.stack([self._frame(video.frames[j]) for j in indices])
        mask, lesion = self._mask(video, i, rng)
        if rng is not None and self.augment is not None:
            geometry = self.augment.geometry(rng)
            clip = np.stack([self.augment.jitter(apply_geometry(f, *geometry), rng) for f in clip])
            mask = apply_geometry(mask, *geometry)
        return {
            "clip": torch.from_numpy(normalise(clip, self.normalization)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)[None]),
            "video": video.name,
            "frame": i,
            "lesion": lesion,  # the mask file marks a lesion (the noise the augmentation adds aside)
        }


class EpochSampler(Sampler):
    """Yields (epoch, index) keys from another sampler's indices. The epoch travels with each key, so persistent
    DataLoader workers draw new augmentation every epoch (their dataset copies keep the epoch they were made with)."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """`skip`: leave out the epoch's first indices (the part of an epoch a resumed run has done already)."""
        self.epoch, self.skip = epoch, skip
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, int(idx)) for idx in itertools.islice(self.sampler, self.skip, None))

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)  # type: ignore[arg-type]
