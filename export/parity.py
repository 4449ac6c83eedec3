"""`vivim-export check`: run an exported ONNX in ONNX Runtime and the PyTorch model on the same clip, compare.

The clip is a synthetic ultrasound video (vivim.data.synthetic; fixed seed), normalised with the mean and std the
ONNX metadata records; both sides get the same clip. The PyTorch side is always the FP32 model, so an FP16 ONNX is judged against full precision.

Tolerances (defaults, override with --atol / --min-dice):
- FP32 ONNX: max |logit difference| <= 1e-3 and Dice(mask_onnx, mask_torch) >= 0.999. Both sides compute in fp32;
  the differences come from operator order (our NumPy scan vs the torch reference scan, ORT kernels vs ATen).
- FP16 ONNX: max |logit difference| <= 0.5 and Dice >= 0.98. Every layer rounds to fp16 (11-bit mantissa), so
  logits of size ~10 carry errors of a few 1e-2 after ~100 layers; a few pixels on the mask border flip sign.
Masks are logits > 0 (probability > 0.5); Dice of two empty masks counts as 1 here (the outputs agree).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vivim import paths
from vivim.errors import VivimError

TOLERANCES = {"fp32": {"atol": 1e-3, "min_dice": 0.999}, "fp16": {"atol": 0.5, "min_dice": 0.98}}


@dataclass
class ParityResult:
    onnx: str
    checkpoint: str
    precision: str
    output_frame: str
    input_shape: list
    max_abs_err: float
    mean_abs_err: float
    max_abs_logit: float
    dice: float
    mask_agreement: float
    mask_pixels_torch: int
    mask_pixels_onnx: int
    atol: float
    min_dice: float
    checkpoint_matches: bool
    seconds_torch: float
    seconds_onnxruntime: float
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty (they agree)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def synthetic_clip(frames: int, height: int, width: int, mean, std, seed: int = 0) -> np.ndarray:
    """(1, T, 3, H, W) float32, normalised: a synthetic B-mode clip with a lesion (grey replicated to RGB)."""
    try:
        from vivim.data.synthetic import make_video
    except ImportError:  # generator unavailable (e.g. no OpenCV): fixed-seed noise in the same value range
        rng = np.random.default_rng(seed)
        grey = rng.integers(0, 256, (frames, height, width)).astype(np.uint8)
    else:
        import cv2

        video = make_video(seed, 0, frames=frames, size=max(height, width, 32))
        grey = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in video.frames])
    rgb = np.repeat(grey[:, None].astype(np.float32) / 255.0, 3, axis=1)
    mean = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return ((rgb - mean) / std)[None].astype(np.float32)


def _vivim_metadata(onnx_path: Path) -> dict:
    from vivim.export.onnx_files import missing_vivim_metadata, onnx_metadata

    meta = onnx_metadata(onnx_path)
    missing_vivim_metadata(meta, str(onnx_path))
    return meta


def check_parity(
    checkpoint: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    *,
    atol: float | None = None,
    min_dice: float | None = None,
    seed: int = 0,
) -> ParityResult:
    """Compare ONNX Runtime (custom op registered) with the FP32 PyTorch model on one synthetic clip."""
    import torch
    from vivim.export.onnx_export import load_model
    from vivim.export.ort_ops import create_session

    from vivim.checkpoint import file_sha256

    if atol is not None and not atol >= 0:
        raise VivimError(f"--atol must be 0 or more (a logit difference), got {atol}")
    if min_dice is not None and not 0 <= min_dice <= 1:
        raise VivimError(f"--min-dice must be within [0, 1], got {min_dice}")
    onnx_path = paths.require_file(onnx_path, "--onnx")
    meta = _vivim_metadata(onnx_path)
    model, _, ckpt_path = load_model(checkpoint)
    precision = meta.get("precision", "fp32")
    tol = TOLERANCES.get(precision, TOLERANCES["fp32"])
    atol = tol["atol"] if atol is None else float(atol)
    min_dice = tol["min_dice"] if min_dice is None else float(min_dice)

    frames = int(meta["frames"])
    height, width = json.loads(meta["img_size"])
    norm = json.loads(meta["normalization"])
    clip = synthetic_clip(frames, height, width, norm["mean"], norm["std"], seed)

    session = create_session(onnx_path)
    feed = session.get_inputs()[0]
    in_dtype = np.float16 if "float16" in feed.type else np.float32
    start = time.perf_counter()
    (onnx_logits,) = session.run(None, {feed.name: clip.astype(in_dtype)})
    seconds_ort = time.perf_counter() - start

    output_frame = meta["output_frame"]
    start = time.perf_counter()
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(clip), output_frame=None if output_frame == "all" else output_frame)
    seconds_torch = time.perf_counter() - start
    ref = torch_logits.float().numpy()
    got = onnx_logits.astype(np.float32)
    if got.shape != ref.shape:
        raise VivimError(f"{onnx_path}: output shape {got.shape} differs from PyTorch {ref.shape} "
                         "(exported from another checkpoint or settings?)")

    err = np.abs(got - ref)
    mask_ref, mask_got = ref > 0, got > 0
    score = dice(mask_got, mask_ref)
    max_err = float(err.max()) if np.isfinite(err).all() else float("inf")
    return ParityResult(
        onnx=str(onnx_path),
        checkpoint=str(ckpt_path),
        precision=precision,
        output_frame=output_frame,
        input_shape=list(clip.shape),
        max_abs_err=max_err,
        mean_abs_err=float(err.mean()),
        max_abs_logit=float(np.abs(ref).max()),
        dice=score,
        mask_agreement=float((mask_ref == mask_got).mean()),
        mask_pixels_torch=int(mask_ref.sum()),
        mask_pixels_onnx=int(mask_got.sum()),
        atol=atol,
        min_dice=min_dice,
        checkpoint_matches=meta.get("checkpoint_sha256") == file_sha256(ckpt_path),
        seconds_torch=seconds_torch,
        seconds_onnxruntime=seconds_ort,
        passed=bool(max_err <= atol and score >= min_dice),
    )
