"""S-measure, E-measure and weighted F-measure against references written here from the papers' formulas (plain
NumPy, per quadrant / per threshold / per pixel, brute-force nearest foreground pixel) on fresh random frames,
and against values derived by hand."""

from __future__ import annotations

import importlib.util
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from vivim.structure_metrics import e_measure, e_measure_curve, s_measure, weighted_f_measure

EPS = 2.0**-52  # MATLAB's eps
SHAPES = [(12, 17), (9, 9), (15, 11), (20, 23), (7, 5), (1, 13), (2, 9)]
needs_cv2 = pytest.mark.skipif(importlib.util.find_spec("cv2") is None, reason="weighted F needs OpenCV")


# --- references, straight from the formulas ------------------------------------------------------------------------


def ref_sample_covariance(x: np.ndarray, y: np.ndarray) -> float:
    """Sample covariance as the mean over pairs: sum_{i<j} (x_i - x_j)(y_i - y_j) / (n (n - 1)); 0 for n = 1.
    (Exactly 0 for a constant x or y, with no mean in between.)"""
    n = x.size
    if n < 2:
        return 0.0
    dx = x[:, None] - x[None, :]
    dy = y[:, None] - y[None, :]
    return float((dx * dy).sum() / 2 / (n * (n - 1)))


def ref_object(values: np.ndarray) -> float:
    x = values.mean()
    sigma = math.sqrt(ref_sample_covariance(values, values))
    return 2 * x / (x * x + 1 + sigma + EPS)


def matlab_round(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def ref_centroid(g: np.ndarray) -> tuple[int, int]:
    """MATLAB's (X, Y): rounded mean 1-based column and row of the foreground."""
    rows, cols = np.nonzero(g)
    n = rows.size
    return matlab_round(Fraction(int((cols + 1).sum()), n)), matlab_round(Fraction(int((rows + 1).sum()), n))


def ref_ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    x, y = pred.mean(), gt.mean()
    alpha = 4 * x * y * ref_sample_covariance(pred, gt)
    beta = (x * x + y * y) * (ref_sample_covariance(pred, pred) + ref_sample_covariance(gt, gt))
    if alpha != 0:
        return alpha / (beta + EPS)
    return 1.0 if beta == 0 else 0.0


def ref_region(p: np.ndarray, g: np.ndarray) -> float:
    h, w = g.shape
    x_split, y_split = ref_centroid(g)
    total = 0.0
    for rows in (slice(0, y_split), slice(y_split, h)):
        for cols in (slice(0, x_split), slice(x_split, w)):
            quadrant_p, quadrant_g = p[rows, cols].ravel(), g[rows, cols].ravel().astype(np.float64)
            if quadrant_p.size:
                total += quadrant_p.size / (h * w) * ref_ssim(quadrant_p, quadrant_g)
    return total


def ref_s_measure(p: np.ndarray, g: np.ndarray, alpha: float = 0.5) -> float:
    p = p.astype(np.float64)
    if not g.any():
        return 1 - p.mean()
    if g.all():
        return p.mean()
    u = g.mean()
    s_object = u * ref_object(p[g]) + (1 - u) * ref_object(1 - p[~g])
    return max(0.0, alpha * s_object + (1 - alpha) * ref_region(p, g))


def ref_e_binary(fm: np.ndarray, g: np.ndarray) -> float:
    """E of one binary map: mean of the enhanced alignment matrix over the pixels."""
    fm_d, gt_d = fm.astype(np.float64), g.astype(np.float64)
    if not g.any():
        enhanced = 1 - fm_d
    elif g.all():
        enhanced = fm_d
    else:
        a, b = fm_d - fm_d.mean(), gt_d - gt_d.mean()
        xi = 2 * a * b / (a * a + b * b + EPS)
        enhanced = (xi + 1) ** 2 / 4
    return float(enhanced.mean())


def ref_e_curve(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    dtype = p.dtype.type
    return np.array([ref_e_binary(p >= dtype(t) / dtype(255), g) for t in range(256)])


def ref_e_adaptive(p: np.ndarray, g: np.ndarray) -> list[float]:
    """The adaptive E, as the list of acceptable values: where a pixel lies on 2 * mean(p) itself (possible for
    8-bit maps), the rounding of the mean decides whether it is foreground, so both outcomes are accepted."""
    p = p.astype(np.float64)
    threshold = min(2 * p.mean(), 1.0)
    if np.abs(p - threshold).min() > 1e-9:
        return [ref_e_binary(p >= threshold, g)]
    return [ref_e_binary(p >= threshold - 1e-9, g), ref_e_binary(p > threshold + 1e-9, g)]


def ref_gaussian() -> np.ndarray:
    """fspecial('gaussian', 7, 5)."""
    h = np.array([[math.exp(-(x * x + y * y) / (2 * 5.0**2)) for x in range(-3, 4)] for y in range(-3, 4)])
    h[h < EPS * h.max()] = 0
    return h / h.sum()


def ref_filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """imfilter: correlation, zero padding, same size."""
    h, w = image.shape
    padded = np.pad(image, 3)
    out = np.zeros_like(image)
    for dy in range(7):
        for dx in range(7):
            out += kernel[dy, dx] * padded[dy:dy + h, dx:dx + w]
    return out


def ref_nearest_foreground(g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brute force over every foreground pixel: distance, row, column of the nearest one (ties: first in row-major
    order, which np.nonzero lists first and argmin returns first)."""
    fg_rows, fg_cols = np.nonzero(g)
    h, w = g.shape
    distance = np.zeros((h, w))
    near_rows, near_cols = np.zeros((h, w), int), np.zeros((h, w), int)
    for r in range(h):
        for c in range(w):
            squared = (fg_rows - r) ** 2 + (fg_cols - c) ** 2
            k = int(np.argmin(squared))
            distance[r, c] = math.sqrt(squared[k])
            near_rows[r, c], near_cols[r, c] = fg_rows[k], fg_cols[k]
    return distance, near_rows, near_cols


def ref_weighted_f(p: np.ndarray, g: np.ndarray, beta2: float = 1.0) -> float:
    if not g.any():
        return 0.0
    error = np.abs(p.astype(np.float64) - g)
    distance, near_rows, near_cols = ref_nearest_foreground(g)
    spread = np.where(g, error, error[near_rows, near_cols])
    smoothed = ref_filter(spread, ref_gaussian())
    dependent = np.where(g & (smoothed < error), smoothed, error)
    importance = np.where(g, 1.0, 2 - np.exp(math.log(0.5) / 5 * distance))
    weighted = dependent * importance
    tp = g.sum() - weighted[g].sum()
    fp = weighted[~g].sum()
    recall = 1 - weighted[g].mean()
    precision = tp / (EPS + tp + fp)
    return (1 + beta2) * recall * precision / (EPS + recall + beta2 * precision)


# --- random frames -------------------------------------------------------------------------------------------------


def blob_gt(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """1-3 random ellipses, sometimes with a few stray pixels; never all background or all foreground."""
    rows, cols = np.mgrid[0:h, 0:w]
    g = np.zeros((h, w), bool)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(-1, h), rng.uniform(-1, w)
        ry, rx = rng.uniform(0.6, max(h, 2) / 2), rng.uniform(0.6, max(w, 2) / 2)
        g |= ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
    if rng.random() < 0.3:
        g ^= rng.random((h, w)) < 0.04
    if g.all() or not g.any():
        g.flat[rng.integers(g.size)] ^= True
    return g


def prediction(rng: np.random.Generator, g: np.ndarray, kind: str) -> np.ndarray:
    noise = rng.random(g.shape)
    if kind == "soft":
        return np.clip(0.55 * g + 0.6 * noise - 0.1, 0, 1)
    if kind == "near_binary":
        flipped = g ^ (rng.random(g.shape) < 0.08)
        return np.where(flipped, 1 - 0.02 * noise, 0.02 * noise)
    if kind == "saturated":  # exact 0s and 1s among soft values
        soft = np.clip(0.5 * g + 0.5 * noise, 0, 1)
        return np.where(noise < 0.25, 0.0, np.where(noise > 0.8, 1.0, soft))
    if kind == "eight_bit":  # on the threshold grid: p = v / 255 exactly
        return np.round(np.clip(0.6 * g + 0.5 * noise - 0.05, 0, 1) * 255) / 255
    raise ValueError(kind)


KINDS = ("soft", "near_binary", "saturated", "eight_bit")


def random_batches(seed: int, dtype: type = np.float64, repeats: int = 2):
    """(prob, gt) batches: per shape, every prediction kind `repeats` times, on fresh random blobs."""
    rng = np.random.default_rng(seed)
    for h, w in SHAPES:
        kinds = [kind for kind in KINDS for _ in range(repeats)]
        gts = [blob_gt(rng, h, w) for _ in kinds]
        probs: list[np.ndarray] = [prediction(rng, g, kind).astype(dtype) for g, kind in zip(gts, kinds)]
        yield np.stack(probs), np.stack(gts)


def tensors(prob: np.ndarray, gt: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(prob)), torch.from_numpy(np.ascontiguousarray(gt))


# --- against the references ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_s_measure_matches_the_formula_reference(rng_seed, dtype):
    for prob, gt in random_batches(rng_seed, dtype):
        got = s_measure(*tensors(prob, gt))
        assert got.dtype == torch.float64 and got.shape == (len(prob),)
        expected = [ref_s_measure(p, g) for p, g in zip(prob, gt)]
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_s_measure_alpha_weights_object_and_region(rng_seed):
    for prob, gt in random_batches(rng_seed, repeats=1):
        for alpha in (0.0, 0.3, 1.0):
            expected = [ref_s_measure(p, g, alpha) for p, g in zip(prob, gt)]
            np.testing.assert_allclose(s_measure(*tensors(prob, gt), alpha=alpha).numpy(), expected, rtol=1e-10,
                                       atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_e_measure_matches_the_per_threshold_reference(rng_seed, dtype):
    for prob, gt in random_batches(rng_seed, dtype):
        curve = e_measure_curve(*tensors(prob, gt))
        assert curve.dtype == torch.float64 and curve.shape == (len(prob), 256)
        expected = np.stack([ref_e_curve(p, g) for p, g in zip(prob, gt)])
        np.testing.assert_allclose(curve.numpy(), expected, rtol=1e-12, atol=1e-14)
        scores = e_measure(*tensors(prob, gt))
        assert set(scores) == {"mean", "max", "adaptive"}
        np.testing.assert_allclose(scores["mean"].numpy(), expected.mean(1), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(scores["max"].numpy(), expected.max(1), rtol=1e-12, atol=1e-14)
        for got, p, g in zip(scores["adaptive"].tolist(), prob, gt):
            assert any(got == pytest.approx(e, rel=1e-12, abs=1e-14) for e in ref_e_adaptive(p, g)), got


@needs_cv2
@pytest.mark.parametrize("beta2", [1.0, 0.3])
def test_weighted_f_matches_the_brute_force_reference(rng_seed, beta2):
    for prob, gt in random_batches(rng_seed):
        got = weighted_f_measure(*tensors(prob, gt), beta2=beta2)
        assert got.dtype == torch.float64 and got.shape == (len(prob),)
        expected = [ref_weighted_f(p, g, beta2) for p, g in zip(prob, gt)]
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)


@needs_cv2
def test_weighted_f_with_far_background_and_thin_objects(rng_seed):
    """Small objects in a larger frame: distances up to ~50 pixels (beyond the 7x7 filter's reach) and many
    equidistant nearest pixels (single pixels, lines)."""
    rng = np.random.default_rng(rng_seed)
    h, w = 36, 52
    gts = []
    for _ in range(4):
        g = np.zeros((h, w), bool)
        g[rng.integers(h), rng.integers(w)] = True  # a lone pixel
        r, c = rng.integers(4, h - 4), rng.integers(4, w - 12)
        g[r, c:c + rng.integers(2, 10)] = True  # a horizontal line
        g[rng.integers(h):, rng.integers(w)] = True  # a vertical line to the bottom edge
        gts.append(g)
    gt = np.stack(gts)
    prob = np.stack([prediction(rng, g, kind) for g, kind in zip(gt, KINDS)])
    expected = [ref_weighted_f(p, g) for p, g in zip(prob, gt)]
    np.testing.assert_allclose(weighted_f_measure(*tensors(prob, gt)).numpy(), expected, rtol=1e-10, atol=1e-12)


def test_batch_scores_equal_single_frame_scores(rng_seed):
    """Frames of one batch never mix, special cases included (all-background and all-foreground frames)."""
    rng = np.random.default_rng(rng_seed)
    h, w = 11, 14
    gts = [blob_gt(rng, h, w) for _ in range(4)] + [np.zeros((h, w), bool), np.ones((h, w), bool)]
    gt = np.stack(gts)
    prob = np.stack([prediction(rng, g, KINDS[i % 4]) for i, g in enumerate(gts)])
    metrics = [s_measure, lambda p, g: e_measure(p, g)["mean"], lambda p, g: e_measure(p, g)["adaptive"]]
    if importlib.util.find_spec("cv2") is not None:
        metrics.append(weighted_f_measure)
    for metric in metrics:
        batch = metric(*tensors(prob, gt))
        single = torch.cat([metric(*tensors(prob[i:i + 1], gt[i:i + 1])) for i in range(len(gt))])
        np.testing.assert_allclose(batch.numpy(), single.numpy(), rtol=1e-13, atol=1e-15)


# --- derived by hand -----------------------------------------------------------------------------------------------


def square_gt(h: int = 16, w: int = 18) -> np.ndarray:
    """A 6x6 square with at least 4 pixels of background on every side: each quadrant holds object and
    background, and the 7x7 filter never reaches the frame's edge from the object."""
    g = np.zeros((h, w), bool)
    g[5:11, 6:12] = True
    return g


def scores(p: np.ndarray, g: np.ndarray) -> dict[str, float]:
    prob, gt = tensors(p[None], g[None])
    out = {"s": float(s_measure(prob, gt)[0]), **{f"e_{k}": float(v[0]) for k, v in e_measure(prob, gt).items()}}
    if importlib.util.find_spec("cv2") is not None:
        out["wf"] = float(weighted_f_measure(prob, gt)[0])
    return out


def test_perfect_prediction():
    g = square_gt()
    s = scores(g.astype(np.float64), g)
    assert s["s"] == pytest.approx(1.0, abs=1e-12)
    # every threshold t >= 1 reproduces g (E = 1); t = 0 predicts everything: bias 0, so phi = 1/4 everywhere
    assert s["e_mean"] == pytest.approx((255 + 0.25) / 256, abs=1e-12)
    assert s["e_max"] == pytest.approx(1.0, abs=1e-12)
    assert s["e_adaptive"] == pytest.approx(1.0, abs=1e-12)  # threshold 2 * 36/288 = 0.25 reproduces g
    if "wf" in s:
        assert s["wf"] == pytest.approx(1.0, abs=1e-12)


def test_inverted_prediction():
    g = square_gt()
    s = scores(1.0 - g, g)
    # object scores: mean 0 on the object and on the background; all four quadrants are mixed and perfectly
    # anti-correlated (negative SSIM), so S = max(0, negative) = 0
    assert s["s"] == 0.0
    # t >= 1: every pixel disagrees, the two biases are opposite, xi = -1, phi = 0; t = 0: phi = 1/4
    assert s["e_mean"] == pytest.approx(0.25 / 256, abs=1e-12)
    assert s["e_max"] == pytest.approx(0.25, abs=1e-12)
    assert s["e_adaptive"] == pytest.approx(0.0, abs=1e-12)  # 2 * mean = 2 * 252/288 > 1: threshold 1
    if "wf" in s:
        # E = 1 everywhere, so the smoothed error on the object is 1 too: recall 0, precision 0
        assert s["wf"] == pytest.approx(0.0, abs=1e-12)


def test_all_background_gt():
    g = np.zeros((10, 13), bool)
    s = scores(np.zeros(g.shape), g)
    assert s["s"] == 1.0  # 1 - mean(p)
    # t = 0 predicts everything (E = predicted-background fraction = 0), every other threshold nothing (E = 1)
    assert s["e_mean"] == pytest.approx(255 / 256, abs=1e-15)
    assert s["e_max"] == 1.0
    assert s["e_adaptive"] == 0.0  # threshold 2 * 0 = 0 predicts everything
    if "wf" in s:
        assert s["wf"] == 0.0  # the convention for an empty object

    p = np.linspace(0, 0.6, g.size).reshape(g.shape)
    assert scores(p, g)["s"] == pytest.approx(1 - 0.3, abs=1e-12)


def border_reach(n: int) -> np.ndarray:
    """Sum of the normalised 1-D factor of the Gaussian over the taps inside a side of n pixels: the 7x7
    zero-padded filter of an all-ones image is border_reach(h)[r] * border_reach(w)[c]."""
    k = np.exp(-np.arange(-3, 4) ** 2 / 50.0)
    k /= k.sum()
    return np.array([sum(k[d + 3] for d in range(-3, 4) if 0 <= i + d < n) for i in range(n)])


def test_all_foreground_gt():
    h, w, c = 9, 14, 0.3
    g = np.ones((h, w), bool)
    s = scores(np.full((h, w), c), g)
    assert s["s"] == pytest.approx(c, abs=1e-12)  # mean(p)
    # E = predicted-foreground fraction: 1 while t / 255 <= 0.3, i.e. t <= 76, else 0
    assert s["e_mean"] == pytest.approx(77 / 256, abs=1e-12)
    assert s["e_max"] == 1.0
    assert s["e_adaptive"] == 0.0  # threshold 0.6 predicts nothing
    if "wf" in s:
        # E = 0.7 everywhere; the filter only lowers it near the frame's edge: min(E, EA) = 0.7 * reach
        reach = np.outer(border_reach(h), border_reach(w))
        recall = 1 - 0.7 * reach.mean()
        precision = 1.0  # no background: TPw / (eps + TPw)
        assert s["wf"] == pytest.approx(2 * recall * precision / (recall + precision), abs=1e-12)


@pytest.mark.parametrize("c", [0.5, 0.1, 0.7])
def test_constant_prediction(c):
    """g: rows 0-3, columns 0-5 of a 10x12 frame; p = c everywhere (0.1 and 0.7 have no exact mean in floating
    point: the pure quadrant must still count as constant)."""
    h, w = 10, 12
    g = np.zeros((h, w), bool)
    g[0:4, 0:6] = True
    s = scores(np.full((h, w), c), g)
    # object: std 0 on both sides, mean c on the object and 1 - c on the background: O(m) = 2m / (m^2 + 1)
    u = 24 / 120
    s_object = u * 2 * c / (c * c + 1) + (1 - u) * 2 * (1 - c) / ((1 - c) ** 2 + 1)
    # centroid: mean 1-based row 2.5 -> Y = 3, column 3.5 -> X = 4 (MATLAB rounds halves away from zero)
    # region: p is constant, so a quadrant scores 1 where g is constant too (alpha = beta = 0) and 0 elsewhere;
    # only the top-left 3x4 block (rows 1-3, columns 1-4) is pure object: weight 12/120
    assert s["s"] == pytest.approx(0.5 * s_object + 0.5 * 12 / 120, abs=1e-12)
    # p >= t/255 is everything or nothing at each threshold: the prediction's bias is 0, phi = 1/4
    assert s["e_mean"] == pytest.approx(0.25, abs=1e-12)
    assert s["e_max"] == pytest.approx(0.25, abs=1e-12)
    assert s["e_adaptive"] == pytest.approx(0.25, abs=1e-12)
    if "wf" in s:
        # error 1 - c on the object, which the background next to it copies, so on the object EA = (1 - c) * reach
        # (the object touches the top and left edges); error c on the background
        object_error = (1 - c) * np.outer(border_reach(h), border_reach(w))[g]
        rows, cols = np.mgrid[0:h, 0:w]
        distance = np.hypot(np.maximum(rows - 3, 0), np.maximum(cols - 5, 0))  # to the rectangle
        background_error = c * (2 - np.exp(math.log(0.5) / 5 * distance[~g]))
        tp = g.sum() - object_error.sum()
        recall = 1 - object_error.mean()
        precision = tp / (tp + background_error.sum())
        assert s["wf"] == pytest.approx(2 * recall * precision / (recall + precision), abs=1e-12)


def test_one_pixel_object_makes_a_one_pixel_quadrant():
    """g: the single pixel (0, 0) of a 5x6 frame, so the centroid is (1, 1): the top-left quadrant is that pixel
    alone (all variances 0, alpha = beta = 0: SSIM 1); the three others are background under a varying
    prediction (alpha = 0 < beta: SSIM 0)."""
    h, w = 5, 6
    g = np.zeros((h, w), bool)
    g[0, 0] = True
    p = np.linspace(0.05, 0.35, h * w).reshape(h, w)
    p[0, 0] = 0.8
    background = 1 - p[~g]
    o_bg = 2 * background.mean() / (background.mean() ** 2 + 1 + background.std(ddof=1))
    o_fg = 2 * 0.8 / (0.8**2 + 1 + 0)  # one pixel: std 0
    u = 1 / 30
    expected = 0.5 * (u * o_fg + (1 - u) * o_bg) + 0.5 * (1 / 30)
    assert scores(p, g)["s"] == pytest.approx(expected, abs=1e-12)


def test_eight_bit_maps_binarise_at_their_own_level(rng_seed):
    """p = v / 255 (as decoded from an 8-bit map, float32 or float64) is foreground at threshold t exactly when
    v >= t: the curve equals the one from integer comparisons."""
    rng = np.random.default_rng(rng_seed)
    g = blob_gt(rng, 13, 16)
    v = rng.integers(0, 256, g.shape)
    v.flat[:2] = (0, 255)
    expected = np.array([ref_e_binary(v >= t, g) for t in range(256)])
    gt = torch.from_numpy(g)[None]
    for prob in (torch.from_numpy(v).float() / 255, torch.from_numpy(v).double() / 255):
        np.testing.assert_allclose(e_measure_curve(prob[None], gt)[0].numpy(), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_one_step_from_a_threshold(rng_seed, dtype):
    """p at each threshold t / 255 and at the next representable value either side of it."""
    thresholds = torch.arange(256, dtype=dtype) / 255
    below = torch.nextafter(thresholds, torch.tensor(-1.0, dtype=dtype))
    above = torch.nextafter(thresholds, torch.tensor(2.0, dtype=dtype))
    values = torch.cat([below, thresholds, above]).clamp(0, 1)
    rng = np.random.default_rng(rng_seed)
    prob = values[torch.from_numpy(rng.permutation(values.numel()))].reshape(2, 24, 16)
    gt = np.stack([blob_gt(rng, 24, 16) for _ in range(2)])
    expected = np.stack([ref_e_curve(p, g) for p, g in zip(prob.numpy(), gt)])
    np.testing.assert_allclose(e_measure_curve(prob, torch.from_numpy(gt)).numpy(), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("metric", [s_measure, e_measure, e_measure_curve, weighted_f_measure])
def test_rejects_malformed_inputs(metric):
    prob, gt = torch.full((2, 4, 5), 0.5), torch.zeros((2, 4, 5), dtype=torch.bool)
    with pytest.raises(ValueError, match="N, H, W"):
        metric(prob, gt[:, :3])
    with pytest.raises(ValueError, match="N, H, W"):
        metric(prob[0], gt[0])
    with pytest.raises(TypeError, match="bool"):
        metric(prob, gt.float())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metric(prob + 0.6, gt)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metric(torch.full_like(prob, math.nan), gt)
    with pytest.raises(ValueError, match="pixels"):
        metric(prob[:, :0], gt[:, :0])


@pytest.mark.parametrize("metric", [s_measure, e_measure, e_measure_curve, weighted_f_measure])
def test_an_empty_batch_gives_empty_results(metric):
    out = metric(torch.zeros((0, 4, 5)), torch.zeros((0, 4, 5), dtype=torch.bool))
    for value in out.values() if isinstance(out, dict) else [out]:
        assert value.dtype == torch.float64 and value.shape[0] == 0
