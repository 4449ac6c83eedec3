"""Run statistics: frames captured/processed/dropped, FPS, capture-to-mask latency percentiles.

Latency is measured honestly per frame: from the monotonic capture timestamp of the frame a mask belongs to
until that mask is drawn. In `centre` mode it therefore includes the T - 1 - T // 2 frames of lag the paper's
protocol needs; `infer_ms` is the clip model call alone and `preprocess_ms` the per-new-frame work (which
holds the per-frame network part when the PyTorch stream cache is on).
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

from vivim import atomic
from vivim.latency import LATENCY_FIELDS, summarize


class RunStats:
    def __init__(self) -> None:
        self.latency_ms: List[float] = []
        self.infer_ms: List[float] = []
        self.preprocess_ms: List[float] = []  # per new frame (resize, normalise, upload, per-frame network part)
        self.frames_processed = 0
        self._t_first: Optional[float] = None
        self._t_last: Optional[float] = None
        self._ema_interval: Optional[float] = None

    def started(self, t: Optional[float] = None) -> None:
        """Call when the first frame reaches the pipeline (FPS counts from here, model loading excluded)."""
        if self._t_first is None:
            self._t_first = time.monotonic() if t is None else t

    def record(self, t_capture: float, infer_s: float, t_done: Optional[float] = None) -> None:
        t_done = time.monotonic() if t_done is None else t_done
        self.started(t_capture)
        if self._t_last is not None:  # smoothed frame interval for the HUD
            interval = t_done - self._t_last
            self._ema_interval = interval if self._ema_interval is None else 0.9 * self._ema_interval + 0.1 * interval
        self._t_last = t_done
        self.frames_processed += 1
        self.latency_ms.append(max(0.0, (t_done - t_capture) * 1000.0))
        self.infer_ms.append(max(0.0, infer_s * 1000.0))

    @property
    def live_fps(self) -> Optional[float]:
        return 1.0 / self._ema_interval if self._ema_interval else None

    @property
    def wall_s(self) -> float:
        if self._t_first is None or self._t_last is None:
            return 0.0
        return max(0.0, self._t_last - self._t_first)

    @property
    def fps(self) -> float:
        wall = self.wall_s
        return self.frames_processed / wall if wall > 0 else 0.0

    def summary(self, **extra: Any) -> Dict[str, Any]:
        return {
            "frames_captured": extra.pop("frames_captured", self.frames_processed),
            "frames_processed": self.frames_processed,
            "frames_dropped": extra.pop("frames_dropped", 0),
            "fps": round(self.fps, 3),
            "wall_s": round(self.wall_s, 3),
            "latency_ms": _describe(self.latency_ms),
            "infer_ms": _describe(self.infer_ms),
            "preprocess_ms": _describe(self.preprocess_ms),
            **extra,
        }


def _describe(samples: List[float]) -> Dict[str, Optional[float]]:
    if not samples:
        return {key: (0 if key == "n" else None) for key in LATENCY_FIELDS}
    stats = summarize(samples).to_dict()
    return {key: (stats[key] if key == "n" else round(float(stats[key]), 3)) for key in LATENCY_FIELDS}


def format_summary(summary: Dict[str, Any]) -> str:
    lat = summary["latency_ms"]
    inf = summary["infer_ms"]

    def ms(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.1f}"

    return "\n".join(
        [
            f"backend   {summary.get('backend')} on {summary.get('device')}  (T={summary.get('frames_per_clip')}, "
            f"output frame {summary.get('output_frame')}, lag {summary.get('lag_frames')} frames)",
            f"frames    captured {summary['frames_captured']}, processed {summary['frames_processed']}, "
            f"dropped {summary['frames_dropped']}, reconnects {summary.get('reconnects', 0)}"
            + (f", not processed {summary['frames_unprocessed']} (read ahead when the run stopped)"
               if summary.get("frames_unprocessed") else ""),
            f"speed     {summary['fps']:.2f} FPS over {summary['wall_s']:.2f} s",
            f"latency   capture->mask p50 {ms(lat['p50'])} / p90 {ms(lat['p90'])} / p99 {ms(lat['p99'])} ms; "
            f"model per clip {ms(inf['p50'])} ms, preprocessing per new frame {ms(summary['preprocess_ms']['p50'])} ms "
            "(p50)",
        ]
        + ([f"stopped   {summary['stopped_by']}"] if summary.get("stopped_by") else [])
    )


def write_json_atomic(path: str, data: Dict[str, Any]) -> None:
    """The stats file, atomically (readers never see half a file), its folder created if needed."""
    atomic.write_json(path, data, parents=True)
