"""Segmentation metrics per frame: Dice, Jaccard, precision, recall, specificity, MAE.

Two protocols, both reported:
- fixed threshold: prediction = p > 0.5;
- the released Vivim code's protocol: the mean of each metric over 256 thresholds τ = linspace(1, 0, 256),
  prediction = p > τ (τ = 1 always predicts nothing, τ = 0 everything).
The ground truth is binary (a soft resized mask is binarised at > 0.5 first).

Empty-mask conventions (the released code's, spec §6): a ratio whose denominator is zero scores 0.
So a frame with an empty ground truth and an empty prediction gets Dice = Jaccard = 0 (not 1), recall is 0
when the ground truth is empty, precision is 0 when the prediction is empty, specificity is 0 when the frame
has no background. Frames with an empty ground truth are counted in the summary (`empty_gt_frames`) so this
never hides silently. Dataset scores are means over frames (frame-level), per-video scores means over that
video's frames.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np
import torch

METRICS = ("dice", "jaccard", "precision", "recall", "specificity")
THRESHOLDS = 256


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, 0 where den == 0 (the empty-mask convention above)."""
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))


def scores_from_counts(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, tn: torch.Tensor) -> dict[str, torch.Tensor]:
    tp, fp, fn, tn = (x.double() for x in (tp, fp, fn, tn))
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "jaccard": _ratio(tp, tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
    }


def fixed_threshold_scores(prob: torch.Tensor, gt: torch.Tensor, threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """prob (N, H, W) in [0, 1], gt (N, H, W) bool → each metric as (N,) float64."""
    pred = prob > threshold
    gt = gt.bool()
    dims = tuple(range(1, prob.ndim))
    tp = (pred & gt).sum(dims)
    fp = (pred & ~gt).sum(dims)
    fn = (~pred & gt).sum(dims)
    tn = (~pred & ~gt).sum(dims)
    return scores_from_counts(tp, fp, fn, tn)


def threshold_sweep_scores(prob: torch.Tensor, gt: torch.Tensor, thresholds: int = THRESHOLDS) -> dict[str, torch.Tensor]:
    """Each metric averaged over `thresholds` thresholds linspace(1, 0, n), prediction = p > τ; (N,) float64.

    One pass: bucket each pixel by how many thresholds it exceeds, then suffix sums give, for every τ, the
    count of predicted-positive pixels (all, and inside the ground truth)."""
    n = prob.shape[0]
    flat_p = prob.reshape(n, -1).double()
    flat_g = gt.reshape(n, -1).bool()
    # numpy's linspace(1, 0, n), reversed: the released code's exact threshold values (torch's differ in the last bit)
    ascending = torch.from_numpy(np.linspace(1.0, 0.0, thresholds)[::-1].copy()).to(prob.device)
    # number of thresholds strictly below p, in [0, thresholds]
    bucket = torch.bucketize(flat_p, ascending, right=False)
    offset = (torch.arange(n, device=prob.device) * (thresholds + 1))[:, None]
    size = n * (thresholds + 1)
    hist_all = torch.bincount((bucket + offset).reshape(-1), minlength=size).reshape(n, thresholds + 1)
    hist_fg = torch.bincount((bucket + offset)[flat_g], minlength=size).reshape(n, thresholds + 1)
    # predicted positives at ascending threshold j = pixels whose bucket > j
    pp = hist_all.flip(-1).cumsum(-1).flip(-1)[:, 1:]
    tp = hist_fg.flip(-1).cumsum(-1).flip(-1)[:, 1:]
    positives = flat_g.sum(1, keepdim=True)
    pixels = flat_p.shape[1]
    fp = pp - tp
    fn = positives - tp
    tn = pixels - pp - fn
    return {k: v.mean(dim=1) for k, v in scores_from_counts(tp, fp, fn, tn).items()}


def mean_absolute_error(prob: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return (prob.double() - gt.double()).abs().reshape(prob.shape[0], -1).mean(1)


def frame_scores(prob: torch.Tensor, gt: torch.Tensor, sweep: bool = True) -> list[dict]:
    """Per-frame records for a batch: {'dice', …, 'mae', 'fg_pixels', 'thresholds_256': {…}}."""
    gt = gt.bool()
    fixed = fixed_threshold_scores(prob, gt)
    mae = mean_absolute_error(prob, gt)
    swept = threshold_sweep_scores(prob, gt) if sweep else None
    fg = gt.reshape(gt.shape[0], -1).sum(1)
    records = []
    for i in range(prob.shape[0]):
        record: dict = {k: float(fixed[k][i]) for k in METRICS}
        record["mae"] = float(mae[i])
        record["fg_pixels"] = int(fg[i])
        if swept is not None:
            record["thresholds_256"] = {k: float(swept[k][i]) for k in METRICS}
        records.append(record)
    return records


def _mean(records: list[dict], key: str, sub: str | None = None) -> float:
    values = [(r[sub][key] if sub else r[key]) for r in records]
    return float(sum(values) / len(values)) if values else 0.0


class MetricAccumulator:
    """Collects per-frame scores; `summary()` gives frame-level means, per-video means and the worst frames."""

    def __init__(self, sweep: bool = True) -> None:
        self.sweep = sweep
        self.records: list[dict] = []

    def add(self, prob: torch.Tensor, gt: torch.Tensor, videos: Iterable[str], frames: Iterable[int]) -> None:
        for record, video, frame in zip(frame_scores(prob.detach().float().cpu(), gt.detach().cpu(), self.sweep), videos, frames):
            record["video"] = video
            record["frame"] = int(frame)
            self.records.append(record)

    def _block(self, records: list[dict]) -> dict:
        block: dict = {k: _mean(records, k) for k in (*METRICS, "mae")}
        if self.sweep:
            block["thresholds_256"] = {k: _mean(records, k, "thresholds_256") for k in METRICS}
        block["frames"] = len(records)
        return block

    def summary(self) -> dict:
        by_video: dict[str, list[dict]] = defaultdict(list)
        for record in self.records:
            by_video[record["video"]].append(record)
        out = self._block(self.records)
        out["videos"] = len(by_video)
        out["empty_gt_frames"] = sum(1 for r in self.records if r["fg_pixels"] == 0)
        out["per_video"] = {name: self._block(recs) for name, recs in sorted(by_video.items())}
        return out

    def worst(self, k: int) -> list[dict]:
        return sorted(self.records, key=lambda r: (r["dice"], r["video"], r["frame"]))[:k]
