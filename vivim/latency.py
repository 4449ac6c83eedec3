"""Summary statistics of latency samples (pure Python, no numpy/torch needed), for vivim-bench and vivim-run.

Percentiles use linear interpolation between closest ranks, the definition of numpy.percentile's default
method ('linear'): for sorted samples s[0..n-1] the q-th percentile sits at rank (n - 1) * q / 100.
The standard deviation is the *population* standard deviation (divide by n, numpy.std's default ddof=0):
we describe the measured samples themselves, not estimate a wider population.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Iterable, Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """q-th percentile (0 <= q <= 100) with linear interpolation, equal to numpy.percentile(samples, q)."""
    if not samples:
        raise ValueError("percentile of an empty sample")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    ordered = sorted(float(v) for v in samples)
    rank = (len(ordered) - 1) * q / 100.0
    lower = math.floor(rank)
    upper = min(lower + 1, len(ordered) - 1)
    weight = rank - lower
    return ordered[lower] + (ordered[upper] - ordered[lower]) * weight


def mean(samples: Sequence[float]) -> float:
    if not samples:
        raise ValueError("mean of an empty sample")
    return math.fsum(samples) / len(samples)


def population_std(samples: Sequence[float]) -> float:
    """Standard deviation with divisor n (numpy.std default, ddof=0)."""
    mu = mean(samples)
    return math.sqrt(math.fsum((v - mu) ** 2 for v in samples) / len(samples))


@dataclass(frozen=True)
class LatencyStats:
    """Latency summary in milliseconds; `n` is the number of timed iterations."""

    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    min: float
    std: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


LATENCY_FIELDS = tuple(f.name for f in fields(LatencyStats))  # the CSV columns, the stats JSON keys


def summarize(samples_ms: Iterable[float]) -> LatencyStats:
    """Mean, median, p90/p95/p99, max, min and population std of latency samples (ms)."""
    values = [float(v) for v in samples_ms]
    if not values:
        raise ValueError("no latency samples to summarise")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError("latency samples must be finite and non-negative")
    return LatencyStats(
        mean=mean(values),
        p50=percentile(values, 50),
        p90=percentile(values, 90),
        p95=percentile(values, 95),
        p99=percentile(values, 99),
        max=max(values),
        min=min(values),
        std=population_std(values),
        n=len(values),
    )


def fps(mean_ms: float | None) -> float | None:
    """Frames (clips) per second of a serial loop: 1000 / mean latency in ms."""
    if mean_ms is None or mean_ms <= 0:
        return None
    return 1000.0 / mean_ms


def speedup(reference_mean_ms: float | None, row_mean_ms: float | None) -> float | None:
    """How many times faster a row is than the reference row (reference mean / row mean)."""
    if reference_mean_ms is None or row_mean_ms is None or row_mean_ms <= 0:
        return None
    return reference_mean_ms / row_mean_ms
