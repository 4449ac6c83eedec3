"""One benchmark row and its status, as written to results.json / results.csv."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vivim.latency import LatencyStats, fps, speedup, summarize

OK = "ok"


def skipped(reason: str) -> str:
    return f"skipped: {one_line(reason)}"


def failed(reason: str) -> str:
    return f"failed: {one_line(reason)}"


def one_line(text: str, limit: int = 300) -> str:
    """First line of a message, trimmed, so every status stays one line in the table and CSV."""
    first = str(text).strip().splitlines()[0] if str(text).strip() else "no reason given"
    return first if len(first) <= limit else first[: limit - 3] + "..."


@dataclass
class Row:
    """One measured (or skipped/failed) configuration. Latencies are milliseconds, memory MiB."""

    backend: str
    precision: str
    mode: str = "clip"
    scan: str | None = None
    status: str = OK
    frames: int | None = None
    size: int | tuple[int, int] | None = None  # side N (square) or (height, width)
    batch: int = 1
    output_frame: str | int | None = None
    latency: LatencyStats | None = None
    host_latency: LatencyStats | None = None
    memory_mb: float | None = None
    reserved_mb: float | None = None
    warmup: int | None = None
    iters: int | None = None
    timer: str | None = None
    reference: bool = False
    speedup: float | None = None
    throughput_fps: float | None = None  # measured frames/s where it differs from 1000/mean (pipeline rows)
    notes: list[str] = field(default_factory=list)
    samples_ms: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def fps(self) -> float | None:
        """1000 / mean latency; for pipeline rows the measured throughput (latency there includes queueing/lag)."""
        if self.throughput_fps is not None:
            return self.throughput_fps
        return fps(self.latency.mean) if self.latency is not None else None

    @property
    def label(self) -> str:
        """Short name for plots: backend, scan, precision and mode."""
        parts = [self.backend]
        if self.scan:
            parts.append(self.scan)
        parts.append(self.precision)
        if self.mode != "clip":
            parts.append(self.mode if self.mode != "long-clip" else f"T={self.frames}")
        return " / ".join(parts)

    def set_samples(self, samples_ms: list[float], host_ms: list[float] | None = None) -> None:
        self.samples_ms = [float(v) for v in samples_ms]
        self.latency = summarize(self.samples_ms)
        self.host_latency = summarize(host_ms) if host_ms else None

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Row":
        """Rebuild a row from its results.json record (to re-render tables and plots elsewhere)."""
        def stats_of(data: dict[str, Any] | None) -> LatencyStats | None:
            return None if not data else LatencyStats(**{k: data[k] for k in LatencyStats.__dataclass_fields__})

        row = cls(backend=record["backend"], precision=record["precision"], mode=record.get("mode", "clip"),
                  scan=record.get("scan"), status=record["status"], frames=record.get("frames"),
                  size=record.get("size"), batch=record.get("batch", 1), output_frame=record.get("output_frame"),
                  latency=stats_of(record.get("latency_ms")), host_latency=stats_of(record.get("host_latency_ms")),
                  memory_mb=record.get("memory_mb"), reserved_mb=record.get("reserved_mb"),
                  warmup=record.get("warmup"), iters=record.get("iters"), timer=record.get("timer"),
                  reference=bool(record.get("reference")), speedup=record.get("speedup"),
                  notes=list(record.get("notes") or []), samples_ms=list(record.get("samples_ms") or []))
        # Pipeline rows store their measured throughput as fps; keep it when it differs from 1000 / mean.
        if record.get("fps") is not None and row.latency is not None and row.mode.startswith("pipeline"):
            row.throughput_fps = record["fps"]
        return row

    def to_dict(self, *, with_samples: bool = True) -> dict[str, Any]:
        record: dict[str, Any] = {
            "backend": self.backend,
            "precision": self.precision,
            "scan": self.scan,
            "mode": self.mode,
            "status": self.status,
            "frames": self.frames,
            "size": self.size,
            "batch": self.batch,
            "output_frame": self.output_frame,
            "latency_ms": self.latency.to_dict() if self.latency else None,
            "host_latency_ms": self.host_latency.to_dict() if self.host_latency else None,
            "fps": self.fps,
            "speedup": self.speedup,
            "memory_mb": self.memory_mb,
            "reserved_mb": self.reserved_mb,
            "warmup": self.warmup,
            "iters": self.iters,
            "timer": self.timer,
            "reference": self.reference,
            "notes": list(self.notes),
        }
        if with_samples:
            record["samples_ms"] = list(self.samples_ms)
        return record


def apply_speedups(rows: list[Row]) -> Row | None:
    """Fill `speedup` of every measured row against the reference row (reference mean / row mean).

    Long-clip rows process a different amount of work (T frames) and pipeline rows measure capture-to-mask time
    (queueing and output lag included), so neither gets a speed-up.
    """
    reference = next((r for r in rows if r.reference and r.ok and r.latency is not None), None)
    for row in rows:
        if (reference is None or not row.ok or row.latency is None or row.mode == "long-clip"
                or row.mode.startswith("pipeline")):
            row.speedup = None
        else:
            row.speedup = speedup(reference.latency.mean, row.latency.mean)  # type: ignore[union-attr]
    return reference
