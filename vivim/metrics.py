"""Segmentation metrics per frame: Dice, Jaccard, precision, recall, specificity, MAE.

Two protocols, both reported:
- fixed threshold: prediction = p > 0.5;
- the released Vivim code's protocol: the mean of each metric over 256 thresholds τ = linspace(1, 0, 256),
  prediction = p > τ (τ = 1 always predicts nothing, τ = 0 everything).
The ground truth is binary (a soft resized mask is binarised at > 0.5 first).

Structure-aware measures of the continuous p (vivim.structure_metrics; what the video polyp segmentation papers
report beside Dice): S-measure (alpha 0.5), E-measure (mean over the 256 thresholds t / 255 per frame and then over
frames; max = the maximum over thresholds of the frame-averaged curve, as the evaluation toolboxes take it; adaptive)
and the weighted F-measure (beta^2 = 1).

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

from vivim.structure_metrics import structure_scores

METRICS = ("dice", "jaccard", "precision", "recall", "specificity")
THRESHOLDS = 256
# per frame, of the continuous p; a dataset's max E is formed from the frames' E curves (max_e_measure)
STRUCTURE = ("s_measure", "mean_e_measure", "adaptive_e_measure", "weighted_f")


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


def frame_scores(prob: torch.Tensor, gt: torch.Tensor, sweep: bool = True,
                 structure: bool = False) -> list[dict]:
    """Per-frame records for a batch: {'dice', …, 'mae', 'fg_pixels', 'thresholds_256': {…}}, with `structure` also
    's_measure', 'mean_e_measure', 'adaptive_e_measure', 'weighted_f' and the frame's E curve under 'e_curve' (256
    values; MetricAccumulator keeps it out of its records)."""
    gt = gt.bool()
    fixed = fixed_threshold_scores(prob, gt)
    mae = mean_absolute_error(prob, gt)
    swept = threshold_sweep_scores(prob, gt) if sweep else None
    shaped = structure_scores(prob.float(), gt) if structure else None
    fg = gt.reshape(gt.shape[0], -1).sum(1)
    records = []
    for i in range(prob.shape[0]):
        record: dict = {k: float(fixed[k][i]) for k in METRICS}
        record["mae"] = float(mae[i])
        record["fg_pixels"] = int(fg[i])
        if swept is not None:
            record["thresholds_256"] = {k: float(swept[k][i]) for k in METRICS}
        if shaped is not None:
            record.update(s_measure=float(shaped["s_measure"][i]), mean_e_measure=float(shaped["e_curve"][i].mean()),
                          adaptive_e_measure=float(shaped["adaptive_e"][i]), weighted_f=float(shaped["weighted_f"][i]),
                          e_curve=shaped["e_curve"][i])
        records.append(record)
    return records


def _mean(records: list[dict], key: str, sub: str | None = None) -> float:
    values = [(r[sub][key] if sub else r[key]) for r in records]
    return float(sum(values) / len(values)) if values else 0.0


class MetricAccumulator:
    """Collects per-frame scores; `summary()` gives frame-level means, per-video means and the worst frames."""

    def __init__(self, sweep: bool = True, structure: bool = False) -> None:
        self.sweep = sweep
        self.structure = structure
        self.records: list[dict] = []
        # each frame's E curve by record index: the max E of a set of frames is the maximum of their mean curve
        self._e_curves: list[np.ndarray] = []

    def add(self, prob: torch.Tensor, gt: torch.Tensor, videos: Iterable[str], frames: Iterable[int]) -> None:
        scored = frame_scores(prob.detach().float().cpu(), gt.detach().cpu(), self.sweep, self.structure)
        for record, video, frame in zip(scored, videos, frames):
            if self.structure:
                self._e_curves.append(record.pop("e_curve").astype(np.float32))  # 1 KB a frame, not in the JSON
            record["video"] = video
            record["frame"] = int(frame)
            self.records.append(record)

    def _block(self, indices: list[int]) -> dict:
        records = [self.records[i] for i in indices]
        block: dict = {k: _mean(records, k) for k in (*METRICS, "mae")}
        if self.sweep:
            block["thresholds_256"] = {k: _mean(records, k, "thresholds_256") for k in METRICS}
        if self.structure:
            block.update({k: _mean(records, k) for k in STRUCTURE})
            block["max_e_measure"] = float(self._mean_e_curve(indices).max()) if indices else 0.0
        block["frames"] = len(records)
        return block

    def _mean_e_curve(self, indices: list[int]) -> np.ndarray:
        """The mean E curve (256 values, float64) of these frames."""
        return np.mean([self._e_curves[i].astype(np.float64) for i in indices], axis=0)

    def summary(self) -> dict:
        by_video: dict[str, list[int]] = defaultdict(list)
        for index, record in enumerate(self.records):
            by_video[record["video"]].append(index)
        out = self._block(list(range(len(self.records))))
        out["videos"] = len(by_video)
        out["empty_gt_frames"] = sum(1 for r in self.records if r["fg_pixels"] == 0)
        out["per_video"] = {name: self._block(indices) for name, indices in sorted(by_video.items())}
        out["over_videos"] = self._over_videos(out["per_video"], list(by_video.values()))
        return out

    def _over_videos(self, per_video: dict[str, dict], videos: list[list[int]]) -> dict:
        """Each measure averaged over the videos' own means, the VPS toolboxes' dataset score (a long video counts
        once, as a short one does); max E from the mean of the videos' mean E curves."""
        blocks = list(per_video.values())
        if not blocks:
            return {}
        out: dict = {k: float(np.mean([b[k] for b in blocks])) for k in (*METRICS, "mae")}
        if self.sweep:
            out["thresholds_256"] = {k: float(np.mean([b["thresholds_256"][k] for b in blocks])) for k in METRICS}
        if self.structure:
            out.update({k: float(np.mean([b[k] for b in blocks])) for k in STRUCTURE})
            out["max_e_measure"] = float(np.mean([self._mean_e_curve(indices) for indices in videos], axis=0).max())
        out["videos"] = len(blocks)
        return out

    def worst(self, k: int) -> list[dict]:
        return sorted(self.records, key=lambda r: (r["dice"], r["video"], r["frame"]))[:k]
