"""Clip transforms: resize to the model size, the paper's augmentations, ImageNet normalisation.

Geometry (flips, rotate-180) is drawn once per clip and applied to every frame and the mask; colour jitter
is drawn independently per frame, as in the released Vivim code. All randomness comes from the numpy
Generator passed in, so a sample is a pure function of (seed, epoch, index).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import cv2
import numpy as np

from vivim.constants import IMAGENET_MEAN, IMAGENET_STD, TRAIN_RESIZE, image_hw
from vivim.data.image_io import CV2_FILTERS

ImageSize = Union[int, tuple[int, int]]  # side N (square) or (height, width)


def resize_frame(image: np.ndarray, size: ImageSize, resize: str = TRAIN_RESIZE) -> np.ndarray:
    """The training resize to side N or (height, width) (TRAIN_RESIZE); checkpoints record its filter so that
    vivim-run and vivim-eval resize alike."""
    height, width = image_hw(size)
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=CV2_FILTERS[resize])


def resize_mask(mask: np.ndarray, size: ImageSize) -> np.ndarray:
    """Bilinear resize of a {0,1} mask to soft values in [0, 1] (float32), as the paper's loader does."""
    soft = mask.astype(np.float32)
    height, width = image_hw(size)
    if soft.shape[:2] == (height, width):
        return soft
    return cv2.resize(soft, (width, height), interpolation=cv2.INTER_LINEAR)


def _step(rng: np.random.Generator, low: float, high: float) -> float:
    """A factor drawn from {low, low+0.1, …, high} (the paper's 0.1 steps)."""
    return round(float(rng.choice(np.arange(round((high - low) * 10) + 1))) * 0.1 + low, 1)


def colour_jitter(image: np.ndarray, brightness: float, contrast: float, saturation: float, sharpness: float) -> np.ndarray:
    """The released loader's PIL ImageEnhance chain on an RGB uint8 image (brightness, contrast, colour, sharpness),
    run by PIL itself: each step rounds and clips to uint8 before the next, and sharpness leaves the border pixels
    alone; float math carried values above 255 into the later steps (up to 42 grey levels off)."""
    from PIL import Image, ImageEnhance

    img = Image.fromarray(np.ascontiguousarray(image))
    for enhancer, factor in ((ImageEnhance.Brightness, brightness), (ImageEnhance.Contrast, contrast),
                             (ImageEnhance.Color, saturation), (ImageEnhance.Sharpness, sharpness)):
        img = enhancer(img).enhance(factor)
    return np.array(img)


def salt_and_pepper(mask: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Set `fraction` of mask pixels to 0 or 1 at random (the released code does this to the GT, 0.15 %)."""
    out = mask.astype(np.float32, copy=True)
    n = int(round(fraction * out.size))
    if n:
        flat = out.reshape(-1)
        idx = rng.integers(0, flat.size, n)
        flat[idx] = rng.integers(0, 2, n).astype(np.float32)
    return out


@dataclass
class TrainAugment:
    """The paper's training augmentations (probabilities and ranges from its released loader)."""

    flip_p: float = 0.5
    rotate180_p: float = 0.5
    brightness: tuple[float, float] = (0.5, 1.5)
    contrast: tuple[float, float] = (0.5, 1.5)
    saturation: tuple[float, float] = (0.0, 2.0)
    sharpness: tuple[float, float] = (0.0, 3.0)
    mask_noise: float = 0.0015

    def geometry(self, rng: np.random.Generator) -> tuple[bool, bool, bool]:
        return bool(rng.random() < self.flip_p), bool(rng.random() < self.flip_p), bool(rng.random() < self.rotate180_p)

    def jitter(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return colour_jitter(image, _step(rng, *self.brightness), _step(rng, *self.contrast), _step(rng, *self.saturation), _step(rng, *self.sharpness))


def apply_geometry(image: np.ndarray, vflip: bool, hflip: bool, rot180: bool) -> np.ndarray:
    if vflip:
        image = image[::-1]
    if hflip:
        image = image[:, ::-1]
    if rot180:
        image = image[::-1, ::-1]
    return np.ascontiguousarray(image)


def normalise(frames: np.ndarray, mean_std: tuple[Sequence[float], Sequence[float]] = (IMAGENET_MEAN, IMAGENET_STD)) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB → (T, 3, H, W) float32 with a per-channel (mean, std) on the 0–1 scale (ImageNet's
    for training; a checkpoint's recorded one for evaluation)."""
    mean = np.asarray(mean_std[0], np.float32) * 255.0
    std = np.asarray(mean_std[1], np.float32) * 255.0
    out = (frames.astype(np.float32) - mean) / std
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))
