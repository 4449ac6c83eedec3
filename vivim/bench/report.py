"""Writers for benchmark results: console table, results.json, results.csv, results.md and PNG plots.

Every file carries the environment block: a top-level "environment" object in JSON, '# key: value' comment
lines at the top of the CSV (read it with `csv` after skipping lines starting with '#', or
pandas.read_csv(path, comment='#')), a bullet list in Markdown and a caption line in each plot.
All files are written atomically (temporary file in the same folder, then os.replace).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from vivim import atomic
from vivim.bench.env import environment_lines
from vivim.bench.records import Row
from vivim.cli_utils import warn
from vivim.constants import size_argument
from vivim.errors import VivimError
from vivim.latency import LATENCY_FIELDS

SCHEMA_VERSION = 1

# CSV columns, flat (latency fields expanded with a latency_ prefix).
CSV_COLUMNS = (
    ["backend", "precision", "scan", "mode", "status", "frames", "size", "batch", "output_frame"]
    + [f"latency_{k}_ms" if k != "n" else "latency_n" for k in LATENCY_FIELDS]
    + ["host_latency_mean_ms", "fps", "speedup", "memory_mb", "reserved_mb", "warmup", "iters", "timer",
       "reference", "notes"]
)


# ----------------------------------------------------------------------------------------------- file helpers
def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _status_cell(status: str, width: int = 34) -> str:
    return status if len(status) <= width else status[: width - 3] + "..."


# ---------------------------------------------------------------------------------------------- console table
TABLE_HEADER = ("Backend", "Scan", "Precision", "Mode", "T", "Status", "Mean ms", "P50 ms", "P95 ms", "P99 ms",
                "FPS", "Speed-up", "Memory MiB")


def table_rows(rows: Iterable[Row]) -> list[tuple[str, ...]]:
    """The table's cells as strings (shared by the console and Markdown writers)."""
    cells: list[tuple[str, ...]] = []
    for row in rows:
        lat = row.latency
        cells.append((
            row.backend,
            row.scan or "-",
            row.precision,
            row.mode,
            str(row.frames) if row.frames is not None else "-",
            row.status,
            _fmt(lat.mean if lat else None),
            _fmt(lat.p50 if lat else None),
            _fmt(lat.p95 if lat else None),
            _fmt(lat.p99 if lat else None),
            _fmt(row.fps, 1),
            "-" if row.speedup is None else f"{row.speedup:.2f}x",
            _fmt(row.memory_mb, 0),
        ))
    return cells


def format_table(rows: Sequence[Row], *, status_width: int = 34) -> str:
    """Ultralytics-style aligned text table; long skip/fail reasons are listed in full under it."""
    body = [tuple(_status_cell(c, status_width) if i == 5 else c for i, c in enumerate(r)) for r in table_rows(rows)]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(TABLE_HEADER)]
    numeric = set(range(6, len(TABLE_HEADER)))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(TABLE_HEADER), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in body]
    long_reasons = [r for r in rows if len(r.status) > status_width]
    if long_reasons:
        out.append("")
        out += [f"{r.label}: {r.status}" for r in long_reasons]
    reference = next((r for r in rows if r.reference), None)
    if reference is not None:
        out.append("")
        out.append(f"speed-up = mean latency of the reference row ({reference.label}) / mean latency of the row")
    return "\n".join(out)


def format_environment(env: dict[str, Any]) -> str:
    return "\n".join(environment_lines(env))


# ------------------------------------------------------------------------------------------------------- JSON
def results_document(rows: Sequence[Row], env: dict[str, Any], config: dict[str, Any] | None = None,
                     *, with_samples: bool = True) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "environment": env,
        "config": dict(config or {}),
        "statistics": {
            "percentiles": "linear interpolation (numpy.percentile default)",
            "std": "population (ddof=0)",
            "fps": "1000 / mean latency ms (pipeline rows: measured frames per second)",
            "speedup": "reference mean / row mean",
            "memory_mb": "peak torch.cuda.max_memory_allocated during the row, MiB (null on CPU / non-torch memory)",
        },
        "rows": [r.to_dict(with_samples=with_samples) for r in rows],
    }


def write_json(path: str | os.PathLike[str], rows: Sequence[Row], env: dict[str, Any],
               config: dict[str, Any] | None = None) -> Path:
    document = results_document(rows, env, config)
    return atomic.write_json(path, document, parents=True)  # strict JSON: a NaN (a row that never ran) becomes null


# -------------------------------------------------------------------------------------------------------- CSV
def _csv_record(row: Row) -> dict[str, Any]:
    record = row.to_dict(with_samples=False)
    flat: dict[str, Any] = {k: record[k] for k in ("backend", "precision", "scan", "mode", "status", "frames",
                                                   "size", "batch", "output_frame")}
    if flat["size"] is not None:  # as --size takes it: 256, or HxW for a non-square input
        flat["size"] = size_argument(flat["size"])
    latency = record["latency_ms"] or {}
    for key in LATENCY_FIELDS:
        flat[f"latency_{key}_ms" if key != "n" else "latency_n"] = latency.get(key)
    host = record["host_latency_ms"] or {}
    flat["host_latency_mean_ms"] = host.get("mean")
    for key in ("fps", "speedup", "memory_mb", "reserved_mb", "warmup", "iters", "timer", "reference"):
        flat[key] = record[key]
    flat["notes"] = "; ".join(record["notes"])
    return {k: ("" if v is None else v) for k, v in flat.items()}


def write_csv(path: str | os.PathLike[str], rows: Sequence[Row], env: dict[str, Any]) -> Path:
    buffer = io.StringIO()
    for text in environment_lines(env):
        buffer.write(f"# {text}\n")
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(_csv_record(row))
    return atomic.write_text(path, buffer.getvalue(), parents=True)


def read_csv(path: str | os.PathLike[str]) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Read a results.csv back: (environment comment lines as a dict, rows as dicts of strings)."""
    env: dict[str, str] = {}
    lines = []
    with open(path, encoding="utf-8", newline="") as handle:
        for line in handle:
            if line.startswith("# "):
                key, _, value = line[2:].rstrip("\n").partition(": ")
                env[key] = value
            else:
                lines.append(line)
    return env, list(csv.DictReader(lines))


# --------------------------------------------------------------------------------------------------- Markdown
def format_markdown(rows: Sequence[Row], env: dict[str, Any], config: dict[str, Any] | None = None,
                    title: str = "vivim-bench results") -> str:
    out = [f"# {title}", ""]
    if config:
        shown = {k: size_argument(v) if k == "size" and v is not None else v for k, v in config.items()}
        out += ["Run: " + ", ".join(f"{k}={v}" for k, v in shown.items() if v not in (None, [], "")), ""]
    out += ["Environment:", ""]
    out += [f"- {text}" for text in environment_lines(env)]
    out += ["", "| " + " | ".join(TABLE_HEADER) + " |", "|" + "|".join("---" for _ in TABLE_HEADER) + "|"]
    for cells in table_rows(rows):
        out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    out.append("")
    return "\n".join(out)


def write_markdown(path: str | os.PathLike[str], rows: Sequence[Row], env: dict[str, Any],
                   config: dict[str, Any] | None = None) -> Path:
    return atomic.write_text(path, format_markdown(rows, env, config), parents=True)


# ------------------------------------------------------------------------------------------------------ plots
def _caption(env: dict[str, Any]) -> str:
    where = env.get("gpu") or env.get("cpu") or "unknown device"
    return f"{where} | torch {env.get('torch')} | CUDA {env.get('cuda')} | {env.get('date_utc')}"


def _save_figure(fig: Any, path: Path) -> Path:
    with atomic.atomic_path(path, suffix=".png", parents=True) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def write_plots(out_dir: str | os.PathLike[str], rows: Sequence[Row], env: dict[str, Any]) -> list[Path]:
    """latency_bars.png (mean with a whisker up to p99, p50 marked), latency_cdf.png, long_clips.png when swept."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    written: list[Path] = []
    measured = [r for r in rows if r.ok and r.latency is not None and r.mode != "long-clip"]
    if measured:
        labels = [r.label for r in measured]
        means = [r.latency.mean for r in measured]  # type: ignore[union-attr]
        upper = [max(r.latency.p99 - r.latency.mean, 0.0) for r in measured]  # type: ignore[union-attr]
        medians = [r.latency.p50 for r in measured]  # type: ignore[union-attr]
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(measured) + 1.8))
        positions = list(range(len(measured)))
        colors = ["tab:orange" if r.reference else "tab:blue" for r in measured]
        ax.barh(positions, means, xerr=[[0.0] * len(upper), upper], color=colors, capsize=3,
                error_kw={"elinewidth": 1})
        ax.scatter(medians, positions, marker="|", color="black", s=120, zorder=3, label="p50")
        ax.set_yticks(positions, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("latency (ms): bar = mean, whisker = p99, tick = p50; orange = reference")
        ax.set_title(f"vivim-bench latency\n{_caption(env)}", fontsize=9)
        written.append(_save_figure(fig, out / "latency_bars.png"))
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(8, 5))
        for row in measured:
            ordered = sorted(row.samples_ms)
            if not ordered:
                continue
            fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
            ax.step(ordered, fractions, where="post", label=row.label)
        span = [r.latency.max / max(r.latency.min, 1e-9) for r in measured]  # type: ignore[union-attr]
        if max(span) > 20:
            ax.set_xscale("log")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("fraction of iterations")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"latency CDF\n{_caption(env)}", fontsize=9)
        written.append(_save_figure(fig, out / "latency_cdf.png"))
        plt.close(fig)

    sweep = [r for r in rows if r.mode == "long-clip" and r.frames is not None]
    if any(r.ok and r.latency is not None for r in sweep):
        fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(10, 4.2))
        for precision in sorted({r.precision for r in sweep}):
            series = sorted((r for r in sweep if r.precision == precision), key=lambda r: r.frames or 0)
            ok = [r for r in series if r.ok and r.latency is not None]
            if ok:
                ax_time.plot([r.frames for r in ok], [r.latency.mean for r in ok],  # type: ignore[union-attr]
                             marker="o", label=precision)
            with_mem = [r for r in ok if r.memory_mb is not None]
            if with_mem:
                ax_mem.plot([r.frames for r in with_mem], [r.memory_mb for r in with_mem], marker="o",
                            label=precision)
            for r in series:
                if r.status.startswith("failed"):
                    ax_time.axvline(r.frames, color="red", alpha=0.4, linestyle="--")
        ax_time.set_xlabel("clip length T (frames)")
        ax_time.set_ylabel("latency per clip, mean (ms)")
        ax_mem.set_xlabel("clip length T (frames)")
        ax_mem.set_ylabel("peak GPU memory allocated (MiB)")
        if not ax_mem.lines:
            ax_mem.text(0.5, 0.5, "no GPU memory data (CPU run)", ha="center", va="center",
                        transform=ax_mem.transAxes)
        for ax in (ax_time, ax_mem):
            ax.grid(alpha=0.3)
            if ax.lines and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        fig.suptitle(f"long clips (red dashes: T that failed)\n{_caption(env)}", fontsize=9)
        fig.tight_layout()
        written.append(_save_figure(fig, out / "long_clips.png"))
        plt.close(fig)
    return written


def write_all(out_dir: str | os.PathLike[str], rows: Sequence[Row], env: dict[str, Any],
              config: dict[str, Any] | None = None, *, plots: bool = True) -> list[Path]:
    """results.json, results.csv, results.md and the plots under `out_dir`; returns the paths written."""
    out = Path(out_dir)
    written = [
        write_json(out / "results.json", rows, env, config),
        write_csv(out / "results.csv", rows, env),
        write_markdown(out / "results.md", rows, env, config),
    ]
    if plots:
        try:
            written += write_plots(out, rows, env)
        except ImportError as exc:  # matplotlib is optional (pip install 'vivim-edge[bench]')
            warn(f"plots not written: {exc.name or 'matplotlib'} is not installed (pip install matplotlib)")
        except Exception as exc:  # noqa: BLE001 - never lose the measured numbers to a plotting problem
            warn(f"plots not written: {type(exc).__name__}: {exc}")
    return written


# ------------------------------------------------------------------------------------------ re-render results
def read_results(path: str | os.PathLike[str]) -> tuple[list[Row], dict[str, Any], dict[str, Any]]:
    """(rows, environment, config) from a results.json written by write_json."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = [Row.from_dict(record) for record in document["rows"]]
    except FileNotFoundError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise VivimError(f"{path}: not a vivim-bench results.json ({type(exc).__name__}: {exc})") from None
    return rows, dict(document.get("environment") or {}), dict(document.get("config") or {})


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m vivim.bench.report results.json [OUT_DIR]`: print the table and rewrite CSV, Markdown and plots
    from a results.json (e.g. one copied back from a GPU machine without its plots)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or len(args) > 2 or args[0].startswith("-"):
        raise VivimError("usage: python -m vivim.bench.report results.json [OUT_DIR]")
    source = Path(args[0])
    out = Path(args[1]) if len(args) > 1 else source.parent
    rows, env, config = read_results(source)
    print(format_environment(env))
    print()
    print(format_table(rows))
    written = [write_csv(out / "results.csv", rows, env), write_markdown(out / "results.md", rows, env, config)]
    try:
        written += write_plots(out, rows, env)
    except ImportError:
        warn("plots not written: matplotlib is not installed (pip install matplotlib)")
    if out.resolve() != source.parent.resolve():
        written.insert(0, write_json(out / "results.json", rows, env, config))
    print(f"\nwritten: {', '.join(str(p) for p in written)}")


if __name__ == "__main__":
    from vivim.cli_utils import fail

    try:
        main()
    except VivimError as exc:
        fail(str(exc))
    except FileNotFoundError as exc:
        fail(f"{exc.filename or exc}: no such file or directory")
