"""Metrics against hand-computed cases (empty masks included) and a brute-force 256-threshold reference."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from vivim.losses import boundary_weight, structure_loss
from vivim.metrics import MetricAccumulator, fixed_threshold_scores, frame_scores, threshold_sweep_scores


def _scores(prob, gt):
    s = fixed_threshold_scores(torch.tensor([prob], dtype=torch.float64), torch.tensor([gt], dtype=torch.bool))
    return {k: float(v[0]) for k, v in s.items()}


def test_hand_computed_frame():
    prob = [[0.9, 0.2], [0.6, 0.1]]
    gt = [[1, 0], [0, 1]]
    # prediction [[1,0],[1,0]]: TP=1 FP=1 FN=1 TN=1
    s = _scores(prob, gt)
    assert s["dice"] == pytest.approx(0.5)
    assert s["jaccard"] == pytest.approx(1 / 3)
    assert s["precision"] == pytest.approx(0.5) and s["recall"] == pytest.approx(0.5)
    assert s["specificity"] == pytest.approx(0.5)
    record = frame_scores(torch.tensor([prob]), torch.tensor([gt], dtype=torch.bool))[0]
    assert record["mae"] == pytest.approx((0.1 + 0.2 + 0.6 + 0.9) / 4)


def test_hand_computed_uneven_frame():
    prob = [[0.7, 0.8, 0.4], [0.51, 0.5, 0.0]]  # p > 0.5 is strict: 0.5 is background
    gt = [[1, 1, 1], [0, 1, 0]]
    # prediction [[1,1,0],[1,0,0]]: TP=2 FP=1 FN=2 TN=1
    s = _scores(prob, gt)
    assert s["dice"] == pytest.approx(4 / 7)
    assert s["jaccard"] == pytest.approx(2 / 5)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 4)
    assert s["specificity"] == pytest.approx(1 / 2)


def test_empty_mask_conventions():
    # empty GT, empty prediction: every ratio with a zero denominator is 0 (the released code's convention)
    s = _scores([[0.1, 0.2], [0.3, 0.0]], [[0, 0], [0, 0]])
    assert s == {"dice": 0.0, "jaccard": 0.0, "precision": 0.0, "recall": 0.0, "specificity": 1.0}
    # empty GT, a false positive
    s = _scores([[0.9, 0.2], [0.3, 0.0]], [[0, 0], [0, 0]])
    assert s["dice"] == 0.0 and s["precision"] == 0.0 and s["recall"] == 0.0 and s["specificity"] == pytest.approx(3 / 4)
    # lesion missed entirely
    s = _scores([[0.1, 0.2], [0.3, 0.0]], [[1, 0], [0, 0]])
    assert s["dice"] == 0.0 and s["precision"] == 0.0 and s["recall"] == 0.0
    # all foreground, all predicted: no background, specificity 0
    s = _scores([[0.9, 0.9], [0.9, 0.9]], [[1, 1], [1, 1]])
    assert s["dice"] == 1.0 and s["specificity"] == 0.0


def _sweep_reference(prob: np.ndarray, gt: np.ndarray) -> dict:
    """Loop over the 256 thresholds exactly as spec §6 describes (numpy, float64)."""
    out = {k: [] for k in ("dice", "jaccard", "precision", "recall", "specificity")}
    for tau in np.linspace(1, 0, 256):
        pred = prob > tau
        tp = np.sum(pred & gt)
        fp = np.sum(pred & ~gt)
        fn = np.sum(~pred & gt)
        tn = np.sum(~pred & ~gt)
        div = lambda a, b: a / b if b else 0.0  # noqa: E731
        out["dice"].append(div(2 * tp, 2 * tp + fp + fn))
        out["jaccard"].append(div(tp, tp + fp + fn))
        out["precision"].append(div(tp, tp + fp))
        out["recall"].append(div(tp, tp + fn))
        out["specificity"].append(div(tn, tn + fp))
    return {k: float(np.mean(v)) for k, v in out.items()}


def test_threshold_sweep_matches_brute_force(rng_seed):
    rng = np.random.default_rng(rng_seed)
    prob = rng.random((4, 17, 13))
    prob[0, :3] = np.linspace(1, 0, 256)[rng.integers(0, 256, (3, 13))]  # values exactly on thresholds (strict >)
    prob[1] = 0.0
    prob[2, :, :4] = 1.0
    gt = rng.random((4, 17, 13)) > 0.6
    gt[3] = False  # an empty mask
    got = threshold_sweep_scores(torch.from_numpy(prob), torch.from_numpy(gt))
    for n in range(4):
        ref = _sweep_reference(prob[n], gt[n])
        for key, value in ref.items():
            assert float(got[key][n]) == pytest.approx(value, abs=1e-12), (n, key)


def test_threshold_sweep_of_a_perfect_binary_prediction():
    gt = torch.zeros(1, 8, 8, dtype=torch.bool)
    gt[0, 2:5, 2:6] = True
    got = threshold_sweep_scores(gt.double(), gt)
    # p = 1 on the lesion, 0 elsewhere: tau = 1 predicts nothing (Dice 0); every other tau, tau = 0 included
    # (p > 0 is strict), predicts exactly the lesion (Dice 1)
    assert float(got["dice"][0]) == pytest.approx(255 / 256)
    assert float(got["recall"][0]) == pytest.approx(255 / 256)


def test_accumulator_means_per_frame_and_per_video():
    acc = MetricAccumulator()
    prob = torch.zeros(3, 4, 4)
    gt = torch.zeros(3, 4, 4, dtype=torch.bool)
    gt[:, :2] = True
    prob[0, :2] = 0.9  # perfect
    prob[1, :1] = 0.9  # half the lesion: dice 2*4/(8+4) = 2/3
    # frame 2 predicts nothing: dice 0
    acc.add(prob, gt, ["a", "a", "b"], [0, 1, 0])
    s = acc.summary()
    assert s["dice"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert s["per_video"]["a"]["dice"] == pytest.approx((1 + 2 / 3) / 2) and s["per_video"]["b"]["dice"] == 0.0
    assert s["frames"] == 3 and s["videos"] == 2 and s["empty_gt_frames"] == 0
    # MAE per frame from the formula, each frame's own pixels: mean |p - g|
    expected_mae = [float((prob[i] - gt[i].float()).abs().mean()) for i in range(3)]
    assert s["mae"] == pytest.approx(sum(expected_mae) / 3)
    assert s["per_video"]["b"]["mae"] == pytest.approx(expected_mae[2])
    assert [r["frame"] for r in acc.worst(2)] == [0, 1] and acc.worst(1)[0]["video"] == "b"
    assert "thresholds_256" in s and set(s["thresholds_256"]) >= {"dice", "jaccard", "precision", "recall"}


def test_accumulator_structure_measures_per_frame_video_and_set(rng_seed):
    """S, mean/adaptive E and weighted F are frame means (of vivim.structure_metrics' per-frame values, tested against
    references of their own); max E is the maximum over thresholds of the frames' mean E curve, per video and over
    all frames, as the toolboxes take it, which is not the mean of each frame's max."""
    from vivim.structure_metrics import e_measure, e_measure_curve, s_measure, weighted_f_measure

    rng = np.random.default_rng(rng_seed)
    gt = torch.zeros(5, 24, 32, dtype=torch.bool)
    for i in range(5):
        y, x = rng.integers(2, 14), rng.integers(2, 20)
        gt[i, y:y + rng.integers(3, 9), x:x + rng.integers(3, 11)] = True
    prob = torch.from_numpy(np.clip(gt.numpy() * 0.7 + rng.normal(0.15, 0.2, gt.shape), 0, 1)).float()
    videos = ["a", "a", "b", "b", "b"]
    acc = MetricAccumulator(sweep=False, structure=True)
    acc.add(prob[:2], gt[:2], videos[:2], [0, 1])  # two batches: the curves must follow their records
    acc.add(prob[2:], gt[2:], videos[2:], [0, 1, 2])
    s = acc.summary()
    per_frame = {"s_measure": s_measure(prob, gt), "mean_e_measure": e_measure(prob, gt)["mean"],
                 "adaptive_e_measure": e_measure(prob, gt)["adaptive"], "weighted_f": weighted_f_measure(prob, gt)}
    curves = e_measure_curve(prob, gt)
    for name, frames in (("all", slice(0, 5)), ("a", slice(0, 2)), ("b", slice(2, 5))):
        block = s if name == "all" else s["per_video"][name]
        for key, values in per_frame.items():
            assert block[key] == pytest.approx(float(values[frames].mean()), abs=1e-12), (name, key)
        assert block["max_e_measure"] == pytest.approx(float(curves[frames].mean(0).max()), abs=1e-6), name
    assert s["max_e_measure"] <= float(e_measure(prob, gt)["max"].mean()) + 1e-12  # max of the mean <= mean of maxes
    # the toolboxes' dataset score: each video's mean, then the mean over videos (2 and 3 frames here, so it differs
    # from the frame mean); max E from the mean of the videos' mean curves
    over = s["over_videos"]
    for key, values in (*per_frame.items(), ("dice", fixed_threshold_scores(prob, gt)["dice"])):
        assert over[key] == pytest.approx((float(values[:2].mean()) + float(values[2:].mean())) / 2, abs=1e-12), key
    video_curves = (curves[:2].mean(0) + curves[2:].mean(0)) / 2
    assert over["max_e_measure"] == pytest.approx(float(video_curves.max()), abs=1e-6) and over["videos"] == 2
    assert all("e_curve" not in r for r in acc.records)  # 256 numbers a frame stay out of the per-frame JSON
    plain = MetricAccumulator(sweep=False)
    plain.add(prob, gt, videos, range(5))
    assert "s_measure" not in plain.summary() and "s_measure" not in plain.records[0]


def test_structure_loss_matches_the_formula(rng_seed):
    logits = torch.randn(2, 1, 40, 40)
    target = (torch.rand(2, 1, 40, 40) > 0.7).float()
    p = torch.sigmoid(logits)
    # weight map written out with an explicit 31x31 box sum (zero padding, divisor 961 like avg_pool2d's default)
    padded = torch.nn.functional.pad(target, (15, 15, 15, 15))
    box = torch.zeros_like(target)
    for dy in range(31):
        for dx in range(31):
            box += padded[:, :, dy : dy + 40, dx : dx + 40]
    w = 1 + 5 * (box / 961 - target).abs()
    torch.testing.assert_close(boundary_weight(target), w)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    inter = (p * target * w).sum((2, 3))
    union = ((p + target) * w).sum((2, 3))
    wiou = (1 - (inter + 1) / (union - inter + 1)).mean()
    assert float(structure_loss(logits, target)) == pytest.approx(float(bce + wiou), rel=1e-5)
    # weighted BCE: per image sum(w * bce) / sum(w), then the batch mean
    per_pixel = -(target * torch.log(p) + (1 - target) * torch.log(1 - p))
    wbce = ((w * per_pixel).sum((2, 3)) / w.sum((2, 3))).mean()
    assert float(structure_loss(logits, target, weighted_bce=True)) == pytest.approx(float(wbce + wiou), rel=1e-5)


def test_only_frames_without_any_lesion_pixel_count_as_empty():
    """empty_gt_frames tells the user how many scores come from frames with nothing to find (where Dice is 0 by
    convention): a frame with a lesion of a single pixel is a real, if tiny, lesion and must not be counted."""
    rng = np.random.default_rng()
    acc = MetricAccumulator(sweep=False)
    gt = torch.zeros(4, 8, 8, dtype=torch.bool)
    gt[1, rng.integers(8), rng.integers(8)] = True  # exactly one lesion pixel
    gt[2, 2:5, 3:7] = True
    gt[3].view(-1)[torch.from_numpy(rng.choice(64, 2, replace=False))] = True  # two pixels
    prob = torch.from_numpy(rng.random((4, 8, 8))).float()
    acc.add(prob, gt, ["v"] * 4, range(4))
    assert [r["fg_pixels"] for r in acc.records] == [0, 1, 12, 2]
    assert acc.summary()["empty_gt_frames"] == 1
    acc.add(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8, dtype=torch.bool), ["w"], [0])
    assert acc.summary()["empty_gt_frames"] == 2
