"""Structure-aware metrics per frame of a continuous prediction p in [0, 1] against a binary ground truth g.

Papers:
- S-measure: Fan et al., "Structure-measure: A New Way to Evaluate Foreground Maps", ICCV 2017.
- E-measure: Fan et al., "Enhanced-alignment Measure for Binary Foreground Map Evaluation", IJCAI 2018.
- weighted F-measure: Margolin, Zelnik-Manor, Tal, "How to Evaluate Foreground Maps?", CVPR 2014.

Conventions: the authors' MATLAB code (as in the PNS-Net/SUN-SEG VPS toolbox); where PySODMetrics differs, noted.
- eps is MATLAB's eps = 2**-52 wherever the reference formulas add it.
- p is used as given (no min-max rescaling, which the toolboxes apply to 8-bit maps of unknown range).
- S: alpha = 0.5; all-background g gives 1 - mean(p), all-foreground g gives mean(p); otherwise clamped at 0.
- S: centroid = MATLAB's round (halves away from zero) of g's mean 1-based row/column, kept by the top/left parts
  (PySODMetrics rounds the 0-based mean half to even, which differs when that mean ends in .5).
- S: object scores use the sample standard deviation (n - 1; 0 for one pixel); region SSIM uses n - 1 + eps.
- E: binarisation p >= t / 255, t = 0..255 (main_VPS.m, PySODMetrics; Fan's CODToolbox main.m has p > t); t / 255
  is in p's dtype, so a map decoded from 8 bits as v / 255 lands on its level v; t = 0 predicts every pixel.
- E: the score is the mean of the enhanced matrix over the w * h pixels (the paper); the MATLAB code and
  PySODMetrics divide by w * h - 1 instead (scores larger by w*h/(w*h - 1), 1.5e-5 relative at 256x256).
- E: all-background g scores the predicted-background fraction, all-foreground g the predicted-foreground one.
- E: 'mean' and 'max' are over the 256 thresholds of one frame (the toolboxes' maxE is the max of the curve
  averaged over frames: average `e_measure_curve` to get it); 'adaptive': p >= min(2 * mean(p), 1), as PySODMetrics.
- wF: beta^2 = 1 (original_WFb.m of the VPS toolbox: Q = 2RP/(eps+R+P); PySODMetrics' default); all-background g
  scores 0 (PySODMetrics; MATLAB gives NaN).
- wF: exact Euclidean distance to the nearest foreground pixel; among equally near ones the first in row-major
  order gives the error copied to a background pixel (bwdist/scipy's EDT pick by their algorithm's internals:
  scores then differ from PySODMetrics by up to ~2e-4 on a frame, more for small objects).
- wF: 7x7 Gaussian with sigma 5, normalised, zero padding (fspecial + imfilter); background importance
  2 - exp(ln(0.5) / 5 * distance).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

EPS = float(np.finfo(np.float64).eps)  # MATLAB's eps, as in the reference implementations
E_THRESHOLDS = 256
GAUSSIAN_SIZE = 7
GAUSSIAN_SIGMA = 5.0
BACKGROUND_DECAY = math.log(0.5) / 5  # background errors weigh 1.5 at distance 5 from the object, towards 2 far away
_HALF = GAUSSIAN_SIZE // 2


def _as_arrays(prob: torch.Tensor, gt: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """prob (N, H, W) floating in [0, 1] and gt (N, H, W) bool, checked, as float64 and bool NumPy arrays.

    The metrics then run in NumPy/OpenCV: no torch op per frame, as torch's intra-op threads, woken between
    short ops, made them 10-100x slower on a 2-core VM."""
    if prob.ndim != 3 or prob.shape != gt.shape:
        raise ValueError(f"prob and gt must both be (N, H, W); got {tuple(prob.shape)} and {tuple(gt.shape)}")
    if gt.dtype != torch.bool:
        raise TypeError(f"gt must be a bool tensor, got {gt.dtype}")
    if not prob.is_floating_point():
        raise TypeError(f"prob must be a floating tensor of probabilities, got {prob.dtype}")
    if prob.shape[1] == 0 or prob.shape[2] == 0:
        raise ValueError(f"frames must have pixels; got {tuple(prob.shape)}")
    prob = prob.detach().cpu()
    if prob.dtype not in (torch.float32, torch.float64):
        prob = prob.float()  # float16, bfloat16: exact in float32
    p = np.ascontiguousarray(prob.numpy(), dtype=np.float64)  # exact, so t / 255 compares as in prob's dtype
    if p.size and not (0.0 <= p.min() and p.max() <= 1.0):  # also false for NaN
        raise ValueError(f"prob must lie in [0, 1], got values in [{p.min()}, {p.max()}]")
    return p, np.ascontiguousarray(gt.detach().cpu().numpy())


def _per_frame(values: list[float] | np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64)).to(like.device)


# --- S-measure ---------------------------------------------------------------------------------------------------


def _object_similarity(values: np.ndarray) -> float:
    """The paper's object score of one region: high mean, low spread (sample std; 0 for one pixel, as MATLAB)."""
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return 2.0 * mean / (mean * mean + 1.0 + std + EPS)


def _object_score(p: np.ndarray, g: np.ndarray) -> float:
    """u * O(p on the object) + (1 - u) * O(1 - p on the background), u the object's share of the frame."""
    u = np.count_nonzero(g) / g.size
    return u * _object_similarity(p[g]) + (1.0 - u) * _object_similarity(1.0 - p[~g])


def _matlab_round_ratio(numerator: int, denominator: int) -> int:
    """round(numerator / denominator) with halves away from zero (MATLAB's round), exactly; both > 0."""
    return (2 * numerator + denominator) // (2 * denominator)


def _centroid(g: np.ndarray) -> tuple[int, int]:
    """(row, column) of the object's centroid, 1-based and rounded as in the MATLAB code."""
    h, w = g.shape
    total = int(np.count_nonzero(g))
    row = _matlab_round_ratio(int(g.sum(1) @ np.arange(1, h + 1)), total)
    col = _matlab_round_ratio(int(g.sum(0) @ np.arange(1, w + 1)), total)
    return row, col


def _block_ssim(p: np.ndarray, g: np.ndarray) -> float:
    """The paper's SSIM-like score of one quadrant, with the MATLAB code's n - 1 + eps denominators and branches."""
    n = p.size
    x = float(p.mean())
    y = np.count_nonzero(g) / n
    gt_bias = g - y  # exactly 0 on a pure quadrant, so its variance and covariance are exactly 0
    # A constant prediction has variance exactly 0 even where its mean is not exact in floating point, so the
    # "alpha = beta = 0" case does not hinge on rounding.
    pred_bias = p - x if p.max() > p.min() else np.zeros_like(p)
    denominator = n - 1 + EPS  # one pixel: every (co)variance is 0, and the quadrant scores 1 below
    var_x = float((pred_bias * pred_bias).sum()) / denominator
    var_y = float((gt_bias * gt_bias).sum()) / denominator
    cov = float((pred_bias * gt_bias).sum()) / denominator
    alpha = 4.0 * x * y * cov
    beta = (x * x + y * y) * (var_x + var_y)
    if alpha != 0:
        return alpha / (beta + EPS)
    return 1.0 if beta == 0 else 0.0  # both constant (or both 0): 1; otherwise no structure in common: 0


def _region_score(p: np.ndarray, g: np.ndarray) -> float:
    """Quadrants split at the centroid (the top-left one is rows 1..Y, columns 1..X), each weighted by its share
    of the frame (X*Y/area, ... in MATLAB). An empty quadrant (centroid on the last row or column, where MATLAB
    gets NaN) weighs 0 and is skipped."""
    h, w = g.shape
    row, col = _centroid(g)
    score = 0.0
    for rows in (slice(0, row), slice(row, h)):
        for cols in (slice(0, col), slice(col, w)):
            block = p[rows, cols]
            if block.size:
                score += block.size / g.size * _block_ssim(block, g[rows, cols])
    return score


def _s_measure_frame(p: np.ndarray, g: np.ndarray, alpha: float) -> float:
    fg_pixels = np.count_nonzero(g)
    if fg_pixels == 0:
        return 1.0 - float(p.mean())
    if fg_pixels == g.size:
        return float(p.mean())
    return max(0.0, alpha * _object_score(p, g) + (1.0 - alpha) * _region_score(p, g))


def s_measure(prob: torch.Tensor, gt: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """S-measure per frame: alpha * S_object + (1 - alpha) * S_region, clamped at 0; (N,) float64, on prob's
    device."""
    p, g = _as_arrays(prob, gt)
    return _per_frame([_s_measure_frame(p[i], g[i], alpha) for i in range(p.shape[0])], prob)


# --- E-measure ---------------------------------------------------------------------------------------------------


def _enhanced_alignment(pred_bias: np.ndarray, gt_bias: np.ndarray) -> np.ndarray:
    """phi = ((1 + xi)^2) / 4, xi = 2ab / (a^2 + b^2 + eps) of the two bias (mean-removed) values."""
    xi = 2.0 * pred_bias * gt_bias / (pred_bias * pred_bias + gt_bias * gt_bias + EPS)
    return (1.0 + xi) ** 2 / 4.0


def _e_from_counts(tp: np.ndarray, predicted: np.ndarray, fg: np.ndarray, pixels: int) -> np.ndarray:
    """E of binary maps given only counts: the enhanced matrix takes one value on each of the four
    (prediction, ground truth) combinations. tp, predicted: predicted-foreground pixels inside g and in all;
    fg: foreground pixels of g (broadcastable); float64."""
    mu_pred = predicted / pixels
    mu_gt = fg / pixels
    parts = (
        (tp, 1.0 - mu_pred, 1.0 - mu_gt),                            # predicted fg, true fg
        (predicted - tp, 1.0 - mu_pred, -mu_gt),                     # predicted fg, true bg
        (fg - tp, -mu_pred, 1.0 - mu_gt),                            # predicted bg, true fg
        (pixels - predicted - fg + tp, -mu_pred, -mu_gt),            # predicted bg, true bg
    )
    score = sum(count * _enhanced_alignment(a, b) for count, a, b in parts) / pixels
    score = np.where(fg == 0, (pixels - predicted) / pixels, score)  # all-background g: 1 - FM
    return np.where(fg == pixels, predicted / pixels, score)  # all-foreground g: FM


def _threshold_levels(p: np.ndarray) -> np.ndarray:
    """The largest t with t / 255 <= p, t / 255 rounded to prob's dtype (p holds those values exactly, in
    float64), as int64: p is foreground at thresholds 0..level.

    floor(255 * p) in float64 is exactly that: for float32 values the product is exact and every float32 t / 255
    is rounded up (so p >= t / 255 in float32 iff 255 p >= t); for float64 the rounded product, monotone in p, is
    t at p = t / 255 and below t one step under it (the tests check every threshold and both neighbours)."""
    return np.clip(np.floor(p * (E_THRESHOLDS - 1)), 0, E_THRESHOLDS - 1).astype(np.int64)


def _e_curve(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """(N, 256). One pass: each pixel's level is the largest t with t / 255 <= p; suffix sums of the level
    histograms give every threshold's predicted-foreground counts."""
    n, h, w = p.shape
    flat_g = g.reshape(n, h * w)
    bins = _threshold_levels(p.reshape(n, h * w)) + E_THRESHOLDS * np.arange(n)[:, None]
    size = n * E_THRESHOLDS
    hist_all = np.bincount(bins.ravel(), minlength=size).reshape(n, E_THRESHOLDS)
    hist_fg = np.bincount(bins[flat_g], minlength=size).reshape(n, E_THRESHOLDS)
    predicted = hist_all[:, ::-1].cumsum(1)[:, ::-1].astype(np.float64)  # pixels with level >= t
    tp = hist_fg[:, ::-1].cumsum(1)[:, ::-1].astype(np.float64)
    fg = flat_g.sum(1, keepdims=True).astype(np.float64)
    return _e_from_counts(tp, predicted, fg, h * w)


def _adaptive_e(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    n, h, w = p.shape
    flat_p = p.reshape(n, h * w)
    flat_g = g.reshape(n, h * w)
    binary = flat_p >= np.minimum(2.0 * flat_p.mean(1, keepdims=True), 1.0)
    tp = np.count_nonzero(binary & flat_g, axis=1).astype(np.float64)
    predicted = np.count_nonzero(binary, axis=1).astype(np.float64)
    fg = np.count_nonzero(flat_g, axis=1).astype(np.float64)
    return _e_from_counts(tp, predicted, fg, h * w)


def e_measure_curve(prob: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """E-measure of p >= t / 255 for t = 0..255 (column t); (N, 256) float64, on prob's device."""
    return _per_frame(_e_curve(*_as_arrays(prob, gt)), prob)


def e_measure(prob: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
    """E-measure per frame: {'mean', 'max'} over the 256 thresholds, 'adaptive' at min(2 * mean(p), 1);
    each (N,) float64, on prob's device."""
    p, g = _as_arrays(prob, gt)
    curve = _e_curve(p, g)
    scores = {"mean": curve.mean(1), "max": curve.max(1), "adaptive": _adaptive_e(p, g)}
    return {name: _per_frame(value, prob) for name, value in scores.items()}


# --- weighted F-measure ------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _gaussian_1d() -> np.ndarray:
    """One factor of fspecial('gaussian', 7, 5), normalised: the 2-D kernel is its outer product (fspecial's
    cut of values below eps * max never applies at sigma 5, where the smallest is exp(-0.36) of the largest)."""
    x = np.arange(-_HALF, _HALF + 1, dtype=np.float64)
    k = np.exp(-(x * x) / (2.0 * GAUSSIAN_SIGMA**2))
    return k / k.sum()


@lru_cache(maxsize=1)
def _near_offsets() -> tuple[tuple[int, int], ...]:
    """Offsets (dy, dx) to search for the nearest foreground pixel of a background pixel within the filter's
    reach: ordered by distance, then row, then column, so the first hit is the nearest pixel and, among equally
    near ones, the first in row-major order. A background pixel within Chebyshev distance 3 of the object has
    one within Euclidean distance 3 * sqrt(2), so offsets with dy^2 + dx^2 <= 18 suffice."""
    reach = 2 * _HALF * _HALF
    radius = math.isqrt(reach)
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
               if 0 < dy * dy + dx * dx <= reach]
    return tuple(sorted(offsets, key=lambda o: (o[0] * o[0] + o[1] * o[1], o[0], o[1])))


def _error_from_nearest_foreground(error: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Et of the MATLAB code: E, with each background pixel taking the error of its nearest foreground pixel.
    Only background pixels the 7x7 filter reaches from the object matter (the filtered map is read on the
    object only), so only those are filled; elsewhere Et keeps E."""
    import cv2

    w = g.shape[1]
    pad = math.isqrt(2 * _HALF * _HALF)
    band = cv2.dilate(g.view(np.uint8), np.ones((GAUSSIAN_SIZE, GAUSSIAN_SIZE), np.uint8)).view(bool) & ~g
    rows, cols = np.nonzero(band)
    spread = error.copy()
    if rows.size == 0:
        return spread
    width = w + 2 * pad
    steps = np.array([dy * width + dx for dy, dx in _near_offsets()], dtype=np.int64)
    candidates = ((rows + pad) * width + (cols + pad))[:, None] + steps[None, :]  # (band pixels, offsets)
    hits = np.pad(g, pad).ravel()[candidates]
    nearest = candidates[np.arange(rows.size), hits.argmax(1)]  # every band pixel has a hit
    spread[rows, cols] = np.pad(error, pad).ravel()[nearest]
    return spread


def _distance_to_foreground(g: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of each pixel to the nearest foreground pixel, float64 (0 on the object).

    OpenCV's precise mode is the exact EDT of Felzenszwalb & Huttenlocher, returned as float32 sqrt(d^2) of the
    integer d^2; rounding its square restores that integer exactly while d^2 < 2^22 (distances up to 2048
    pixels), so the float64 square root is the exact distance rounded once."""
    import cv2

    distance = cv2.distanceTransform((~g).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.sqrt(np.rint(np.square(distance.astype(np.float64))))


def _weighted_f_frame(p: np.ndarray, g: np.ndarray, beta2: float) -> float:
    import cv2

    if not g.any():
        return 0.0
    error = np.abs(p - g)
    distance = _distance_to_foreground(g)
    kernel = _gaussian_1d()
    smoothed = cv2.sepFilter2D(_error_from_nearest_foreground(error, g), cv2.CV_64F, kernel, kernel,
                               borderType=cv2.BORDER_CONSTANT)  # imfilter's zero padding
    # pixel dependency: an object pixel's error is forgiven down to its neighbourhood's mean error
    dependent = np.where(g & (smoothed < error), smoothed, error)
    # pixel importance: background errors weigh more the farther they are from the object
    importance = np.where(g, 1.0, 2.0 - np.exp(BACKGROUND_DECAY * distance))
    weighted = dependent * importance
    fg_pixels = int(np.count_nonzero(g))
    fg_error = float(weighted[g].sum())
    tp = fg_pixels - fg_error
    fp = float(weighted[~g].sum())
    recall = 1.0 - fg_error / fg_pixels
    precision = tp / (EPS + tp + fp)
    return (1.0 + beta2) * recall * precision / (EPS + recall + beta2 * precision)


def weighted_f_measure(prob: torch.Tensor, gt: torch.Tensor, beta2: float = 1.0) -> torch.Tensor:
    """Weighted F-measure per frame; (N,) float64, on prob's device. Needs OpenCV (opencv-python-headless)."""
    p, g = _as_arrays(prob, gt)
    return _per_frame([_weighted_f_frame(p[i], g[i], beta2) for i in range(p.shape[0])], prob)


# --- all of them at once (vivim-eval) ------------------------------------------------------------------------------
def structure_scores(prob: torch.Tensor, gt: torch.Tensor) -> dict[str, np.ndarray]:
    """Every measure above for one batch, with the inputs checked and converted once: 's_measure', 'adaptive_e' and
    'weighted_f' (N,), and 'e_curve' (N, 256), from which a dataset's mean and max E are formed."""
    p, g = _as_arrays(prob, gt)
    return {
        "s_measure": np.array([_s_measure_frame(p[i], g[i], 0.5) for i in range(p.shape[0])], np.float64),
        "e_curve": _e_curve(p, g),
        "adaptive_e": _adaptive_e(p, g),
        "weighted_f": np.array([_weighted_f_frame(p[i], g[i], 1.0) for i in range(p.shape[0])], np.float64),
    }
