"""vivim-bench: statistics against numpy and hand-computed samples, the writers read back, timing, streaming
window equivalence, and a tiny CPU run of the CLI end to end (CUDA-only rows reported as skipped)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest

from vivim import latency as stats
from vivim.bench import report, timing
from vivim.cuda_graph import capture_cuda_graph
from vivim.bench.records import Row, apply_speedups, failed, skipped

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------ statistics
@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 1001])
def test_percentiles_mean_std_match_numpy(n: int) -> None:
    rng = np.random.default_rng()  # fresh samples every run: the definitions must agree, not one fixture
    samples = rng.lognormal(mean=2.0, sigma=0.7, size=n)
    for q in (0, 1, 25, 50, 90, 95, 99, 99.9, 100):
        assert stats.percentile(list(samples), q) == pytest.approx(np.percentile(samples, q), rel=1e-12, abs=1e-12)
    summary = stats.summarize(samples)
    assert summary.mean == pytest.approx(np.mean(samples), rel=1e-12)
    assert summary.std == pytest.approx(np.std(samples), rel=1e-9, abs=1e-12)  # population std (ddof=0)
    assert summary.p50 == pytest.approx(np.median(samples), rel=1e-12)
    assert summary.max == samples.max() and summary.min == samples.min() and summary.n == n


def test_statistics_of_small_hand_computed_samples() -> None:
    s = stats.summarize([4.0, 1.0, 3.0, 2.0])  # order must not matter
    # sorted 1,2,3,4: rank = 3q/100 -> p50 at 1.5 -> 2.5; p90 at 2.7 -> 3.7; p95 at 2.85 -> 3.85; p99 at 2.97
    assert (s.p50, s.p90, s.p95, s.p99) == pytest.approx((2.5, 3.7, 3.85, 3.97))
    assert s.mean == 2.5 and s.max == 4.0 and s.min == 1.0
    assert s.std == pytest.approx(math.sqrt(1.25))  # ((1.5^2 + 0.5^2) * 2) / 4
    single = stats.summarize([7.0])
    assert (single.mean, single.p50, single.p99, single.max, single.std) == (7.0, 7.0, 7.0, 7.0, 0.0)
    # ten samples 10..100: p90 = rank 8.1 -> 90 + 0.1*10 = 91
    assert stats.percentile([10.0 * k for k in range(1, 11)], 90) == pytest.approx(91.0)


def test_fps_speedup_and_bad_samples() -> None:
    assert stats.fps(20.0) == pytest.approx(50.0)
    assert stats.speedup(17.3, 3.46) == pytest.approx(5.0)
    assert stats.fps(None) is None and stats.speedup(None, 1.0) is None and stats.speedup(1.0, 0.0) is None
    for bad in ([], [1.0, float("nan")], [-1.0]):
        with pytest.raises(ValueError):
            stats.summarize(bad)
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


# -------------------------------------------------------------------------------------------------- writers
def _rows(rng: np.random.Generator) -> list[Row]:
    rows = []
    for backend, precision, scale, reference in (("PyTorch eager", "fp32", 17.0, True),
                                                 ("PyTorch CUDA graph", "fp16", 8.0, False),
                                                 ("PyTorch streaming", "fp16", 3.0, False)):
        row = Row(backend=backend, precision=precision, scan="mamba_ssm", frames=5, size=256, reference=reference,
                  mode="stream" if "stream" in backend else "clip")
        row.set_samples(list(scale + rng.gamma(2.0, 0.3, size=50)), list(scale + 0.1 + rng.gamma(2.0, 0.3, 50)))
        row.memory_mb = float(rng.uniform(100, 5000))
        rows.append(row)
    for frames in (5, 16, 150):
        row = Row(backend="PyTorch eager", precision="fp32", mode="long-clip", scan="mamba_ssm", frames=frames)
        if frames == 150:
            row.status = failed("out of memory")
        else:
            row.set_samples(list(frames * 3.0 + rng.gamma(2.0, 0.3, size=5)))
            row.memory_mb = frames * 100.0
        rows.append(row)
    rows.append(Row(backend="TensorRT", precision="fp16", status=skipped("TensorRT not installed")))
    return rows


ENV = {"date_utc": "2026-11-26T16:00:00Z", "gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "cuda": "13.0",
       "tensorrt": None, "cpu": "test cpu"}


def test_speedups_against_reference_row() -> None:
    rows = _rows(np.random.default_rng())
    reference = apply_speedups(rows)
    assert reference is rows[0] and rows[0].speedup == pytest.approx(1.0)
    expected = np.mean(rows[0].samples_ms) / np.mean(rows[1].samples_ms)
    assert rows[1].speedup == pytest.approx(expected)
    assert all(r.speedup is None for r in rows if r.mode == "long-clip" or not r.ok)


def test_json_csv_markdown_and_plots_read_back(tmp_path) -> None:
    rows = _rows(np.random.default_rng())
    apply_speedups(rows)
    written = report.write_all(tmp_path, rows, ENV, {"variant": "paper"})
    names = {p.name for p in written}
    assert {"results.json", "results.csv", "results.md", "latency_bars.png", "latency_cdf.png",
            "long_clips.png"} <= names

    document = json.loads((tmp_path / "results.json").read_text())
    assert document["environment"]["gpu"] == ENV["gpu"] and document["config"]["variant"] == "paper"
    assert len(document["rows"]) == len(rows)
    for record, row in zip(document["rows"], rows):
        assert record["backend"] == row.backend and record["status"] == row.status
        if row.ok:
            samples = np.asarray(record["samples_ms"])
            lat = record["latency_ms"]
            assert set(lat) >= {"mean", "p50", "p90", "p95", "p99", "max", "std"}
            assert lat["mean"] == pytest.approx(samples.mean())
            assert lat["p95"] == pytest.approx(np.percentile(samples, 95))
            assert lat["std"] == pytest.approx(samples.std())
            assert record["fps"] == pytest.approx(1000.0 / samples.mean())
        else:
            assert record["latency_ms"] is None and record["fps"] is None
    assert document["rows"][-2]["status"] == "failed: out of memory"

    env, csv_rows = report.read_csv(tmp_path / "results.csv")
    assert env["gpu"] == ENV["gpu"] and "tensorrt" not in env  # None values are left out
    assert len(csv_rows) == len(rows)
    for record, csv_row in zip(document["rows"], csv_rows):
        assert csv_row["status"] == record["status"]
        if record["latency_ms"]:
            assert float(csv_row["latency_p99_ms"]) == pytest.approx(record["latency_ms"]["p99"])
            assert float(csv_row["fps"]) == pytest.approx(record["fps"])
        else:
            assert csv_row["latency_mean_ms"] == ""
    # The file stays a plain CSV for any reader that skips the '#' header.
    with open(tmp_path / "results.csv", newline="") as handle:
        plain = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    assert [r["backend"] for r in plain] == [r.backend for r in rows]

    markdown = (tmp_path / "results.md").read_text()
    assert "| Backend |" in markdown and "- gpu: NVIDIA H100 80GB HBM3" in markdown
    assert markdown.count("\n| ") == len(rows) + 1

    import matplotlib.image

    for name in ("latency_bars.png", "latency_cdf.png", "long_clips.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        image = matplotlib.image.imread(tmp_path / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert not list(tmp_path.glob(".*tmp")) and not list(tmp_path.glob(".*.png"))  # no temporary files left


def test_console_table_lists_every_row_and_full_reasons() -> None:
    rows = _rows(np.random.default_rng())
    rows.append(Row(backend="ONNX Runtime CUDA", precision="fp16",
                    status=skipped("CUDAExecutionProvider not available in this onnxruntime build")))
    apply_speedups(rows)
    text = report.format_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["Backend", "Scan", "Precision"]
    assert "CUDAExecutionProvider not available in this onnxruntime build" in text  # long reason in full
    assert "1.00x" in text and f"{rows[0].latency.mean:.2f}" in text
    assert sum(1 for line in lines if line.startswith(("PyTorch", "TensorRT", "ONNX"))) >= len(rows)
    # every timed row's numbers, in their columns, from the samples themselves (linear percentiles, as NumPy's)
    header = [h.strip() for h in report.TABLE_HEADER]
    for row, cells in zip(rows, report.table_rows(rows)):
        if row.latency is None:
            continue
        samples = np.array(row.samples_ms)
        column = dict(zip(header, cells))
        assert column["Mean ms"] == f"{samples.mean():.2f}" and column["P50 ms"] == f"{np.percentile(samples, 50):.2f}"
        assert column["P95 ms"] == f"{np.percentile(samples, 95):.2f}"
        assert column["P99 ms"] == f"{np.percentile(samples, 99):.2f}"
        assert column["FPS"] == f"{1000.0 / samples.mean():.1f}"


# ---------------------------------------------------------------------------------------------------- timing
def test_measure_counts_calls_and_times_wall_clock() -> None:
    calls = []

    def work() -> None:
        calls.append(time.perf_counter())
        time.sleep(0.002)

    m = timing.measure(work, device="cpu", warmup=2, iters=5)
    finished = time.perf_counter()
    assert len(calls) == 7 and m.iters == 5 and len(m.samples_ms) == 5 and m.timer == "perf_counter"
    assert all(s >= 2.0 for s in m.samples_ms)
    # each sample is its own call: no longer than from that call's start to the next one's (a timer started once
    # before the loop would add up the calls before it: >= 4 ms from the second sample on). The 1.5 ms slack is the
    # loop's own overhead before fn's first line, which a busy 2-core machine can stretch.
    bounds = [(b - a) * 1000.0 + 1.5 for a, b in zip(calls[2:], [*calls[3:], finished])]
    assert all(sample <= bound for sample, bound in zip(m.samples_ms, bounds)), (m.samples_ms, bounds)
    assert timing.peak_memory_mb("cpu") is None


def test_measure_caps_iterations_to_the_time_budget() -> None:
    m = timing.measure(lambda: time.sleep(0.02), device="cpu", warmup=0, iters=1000, max_seconds=0.1, min_iters=3)
    assert 3 <= m.iters <= 6 and len(m.samples_ms) == m.iters
    assert m.notes and "capped" in m.notes[0]


# -------------------------------------------------------------------------------------------- the model rows
def test_streaming_window_equals_full_clip_forward() -> None:
    import torch

    import vivim
    from vivim.bench.rows_torch import StreamingWindow

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster on a shared 2-core machine
    try:
        _check_streaming_window(torch, vivim, StreamingWindow)
    finally:
        torch.set_num_threads(threads)


def _check_streaming_window(torch, vivim, StreamingWindow) -> None:
    model = vivim.create_model("tiny", frames=3, img_size=64).eval()
    clip = torch.randn(1, 3, 3, 64, 64)
    new_frames = torch.randn(2, 1, 3, 64, 64)
    with torch.inference_mode():
        window = StreamingWindow(model, clip, "newest")
        current = clip
        for frame in new_frames:
            out = window.step(frame)
            current = torch.cat([current[:, 1:], frame[:, None]], dim=1)
            expected = model(current, output_frame="newest")
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_cli_tiny_cpu_end_to_end(tmp_path) -> None:
    from typer.testing import CliRunner

    from vivim.bench.cli import app

    out = tmp_path / "tmp"
    result = CliRunner().invoke(app, [
        "--variant", "tiny", "--frames", "3", "--size", "64", "--iters", "3", "--warmup", "1", "--device", "cpu",
        "--out", str(out), "--backends", "torch,torch-fp16,torch-graph,ort-cuda,tensorrt", "--streaming",
        "--no-progress", "--pipeline-frames", "8", "--threads", "1",  # one thread: no OpenMP spinning on a shared CI machine
    ])
    assert result.exit_code == 0, result.output
    document = json.loads((out / "results.json").read_text())
    assert document["environment"]["torch"] and document["environment"]["device"] == "cpu"
    assert document["config"]["complete"] is True
    rows = document["rows"]
    by_key = {(r["backend"], r["precision"], r["mode"], r["scan"]): r for r in rows}

    reference = rows[0]
    assert reference["reference"] and reference["status"] == "ok" and reference["backend"] == "PyTorch eager"
    assert reference["precision"] == "fp32" and reference["scan"] == "reference" and reference["iters"] == 3
    lat = reference["latency_ms"]
    assert len(reference["samples_ms"]) == 3
    assert lat["mean"] == pytest.approx(np.mean(reference["samples_ms"]))
    assert lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert reference["fps"] == pytest.approx(1000.0 / lat["mean"]) and reference["speedup"] == pytest.approx(1.0)

    cuda_only = [r for r in rows if r["precision"] == "fp16" or r["backend"] in ("TensorRT", "ONNX Runtime CUDA")
                 or r["scan"] in ("mamba_ssm", "vivim_cuda")]
    assert len(cuda_only) >= 7
    for row in cuda_only:
        assert row["status"].startswith("skipped: ") and len(row["status"]) > len("skipped: ") + 5, row
        assert row["latency_ms"] is None and row["speedup"] is None

    stream = by_key[("PyTorch streaming", "fp32", "stream", "reference")]
    recompute = by_key[("PyTorch eager", "fp32", "recompute", "reference")]
    for row in (stream, recompute):
        assert row["status"] == "ok" and row["output_frame"] == "newest"
        assert row["speedup"] == pytest.approx(lat["mean"] / row["latency_ms"]["mean"])
    runtime_stream = by_key[("vivim-run TorchBackend", "fp32", "stream", "reference")]
    runtime_recompute = by_key[("vivim-run TorchBackend", "fp32", "recompute", "reference")]
    assert runtime_stream["status"] == "ok" and runtime_recompute["status"] == "ok"
    pipeline = [r for r in rows if r["mode"].startswith("pipeline")]
    assert [r["mode"] for r in pipeline] == ["pipeline-realtime", "pipeline-fast"]
    for row in pipeline:  # capture-to-mask through vivim-run on a synthetic video
        assert row["status"] == "ok", row["status"]
        assert row["latency_ms"]["n"] == row["iters"] and 1 <= row["iters"] <= 8
        assert row["fps"] > 0 and row["speedup"] is None

    _, csv_rows = report.read_csv(out / "results.csv")
    assert [r["status"] for r in csv_rows] == [r["status"] for r in rows]
    for name in ("latency_bars.png", "latency_cdf.png"):
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)
    assert "Results saved to" in result.output and "skipped: CUDA only" in result.output


def test_cli_rejects_bad_flags_in_one_line() -> None:
    result = subprocess.run([sys.executable, "-m", "vivim.bench.cli", "--variant", "tiny", "--backends", "torch,foo"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: --backends: unknown name(s) foo (choose from torch, torch-fp16, "
                                     "torch-graph, ort-cpu, ort-cuda, tensorrt or all)")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--backends", ","], "--backends: empty list"),
    (["--frames", "0"], "--frames must be at least 1, got 0"),
    (["--size", "48"], "--size 48: must be a multiple of 32, at least 32"),
    (["--iters", "0"], "--iters must be at least 1, got 0"),
    (["--warmup", "-1"], "--warmup must be at least 0, got -1"),
    (["--long-iters", "0"], "--long-iters must be at least 1, got 0"),
    (["--pipeline-frames", "0"], "--pipeline-frames must be at least 1, got 0"),
    (["--max-row-seconds", "nan"], "--max-row-seconds must be a number of seconds >= 0 (0 = no limit), got nan"),
    (["--max-row-seconds", "inf"], "--max-row-seconds must be a number of seconds >= 0 (0 = no limit), got inf"),
    (["--max-row-seconds", "-1"], "--max-row-seconds must be a number of seconds >= 0 (0 = no limit), got -1.0"),
    (["--checkpoint", "demo"], "give --checkpoint or --variant, not both"),
    (["--fp16-mode", "fast"], "--fp16-mode must be half or autocast"),
    (["--output-frame", "9"], "--output-frame: output frame index 9 is outside a clip of 5 frames"),
    (["--video", "CORRUPT"], None),  # a video the pipeline rows (run last) could not read
    (["--plugin", "no_such_plugin.so"], "--plugin no_such_plugin.so: no such file"),
])
def test_cli_rejects_values_before_measuring(tmp_path, args, message) -> None:
    from typer.testing import CliRunner

    from vivim.bench.cli import app

    if args == ["--video", "CORRUPT"]:
        corrupt = tmp_path / "damaged.mp4"
        corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
        args, message = ["--video", str(corrupt)], f"--video {corrupt}: cannot open"
    result = CliRunner().invoke(app, ["--variant", "tiny", "--size", "32", "--device", "cpu", "--backends", "torch",
                                      "--out", str(tmp_path / "b"), *args])
    assert result.exit_code != 0 and message in str(result.exception), result.exception
    assert not (tmp_path / "b" / "results.json").exists()


def test_measure_cuts_a_slow_warmup_to_a_third_of_the_budget() -> None:
    calls = []
    m = timing.measure(lambda: (calls.append(1), time.sleep(0.05)), device="cpu", warmup=100, iters=2,
                       max_seconds=0.3, min_iters=2)
    assert m.warmup < 100 and m.warmup >= 1 and any("warm-up cut" in n for n in m.notes)
    assert len(calls) == m.warmup + 1 + m.iters  # warm-up, the budget probe, the timed calls


def test_cli_checkpoint_takes_its_clip_length_and_size(tmp_path) -> None:
    import torch
    from typer.testing import CliRunner

    import vivim
    from vivim.bench.cli import app

    torch.manual_seed(1)
    checkpoint = tmp_path / "tiny.safetensors"
    vivim.save_checkpoint(vivim.create_model("tiny", frames=2, img_size=64), checkpoint)
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, ["--checkpoint", str(checkpoint), "--device", "cpu", "--backends", "torch",
                                      "--scans", "reference", "--iters", "2", "--warmup", "0", "--threads", "1",
                                      "--no-plots", "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads((out / "results.json").read_text())
    assert (document["config"]["frames"], document["config"]["size"]) == (2, 64)
    assert document["config"]["checkpoint"] == str(checkpoint)
    (row,) = document["rows"]
    assert row["status"] == "ok" and (row["frames"], row["size"]) == (2, 64) and row["latency_ms"]["n"] == 2
    assert not (out / "latency_bars.png").exists()  # --no-plots


def test_results_json_round_trips_and_re_renders(tmp_path) -> None:
    rows = _rows(np.random.default_rng())
    pipeline = Row(backend="vivim-run pipeline", precision="fp16", mode="pipeline-fast", scan="vivim_cuda")
    pipeline.set_samples([30.0, 35.0, 50.0])
    pipeline.throughput_fps = 61.5
    rows.append(pipeline)
    apply_speedups(rows)
    report.write_json(tmp_path / "results.json", rows, ENV, {"variant": "paper"})

    back, env, config = report.read_results(tmp_path / "results.json")
    assert env == ENV and config == {"variant": "paper"}
    assert [r.to_dict() for r in back] == [r.to_dict() for r in rows]
    assert back[-1].fps == 61.5

    again = tmp_path / "again"
    result = subprocess.run([sys.executable, "-m", "vivim.bench.report", str(tmp_path / "results.json"), str(again)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Backend" in result.stdout and "failed: out of memory" in result.stdout
    assert {"results.json", "results.csv", "results.md", "latency_bars.png"} <= {p.name for p in again.iterdir()}
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    result = subprocess.run([sys.executable, "-m", "vivim.bench.report", str(bad)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------------ GPU only
def _needs_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    return torch


@pytest.mark.gpu
def test_streaming_window_cuda_graph_replays_the_eager_step() -> None:
    torch = _needs_cuda()
    import vivim
    from vivim.bench.rows_torch import StreamingWindow

    torch.manual_seed(0)
    model = vivim.create_model("tiny", frames=3, img_size=64).eval().cuda()
    clip = torch.randn(1, 3, 3, 64, 64, device="cuda")
    frames = torch.randn(3, 1, 3, 64, 64, device="cuda")
    with torch.inference_mode():
        eager = StreamingWindow(model, clip, "newest")
        graphed = StreamingWindow(model, clip, "newest")
        static_frame = frames[0].clone()
        graph, static_out = capture_cuda_graph(lambda: graphed.step(static_frame), warmup=1)
        # warm-up and capture advanced the graphed window: rebuild its contents from the same clip
        graphed.window.copy_(StreamingWindow(model, clip, "newest").window)
        for frame in frames:
            expected = eager.step(frame)
            static_frame.copy_(frame)
            graph.replay()
            torch.testing.assert_close(static_out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_capture_warms_up_on_a_side_stream_then_replays_the_step() -> None:
    """The warm-up calls (lazy cuBLAS handles, allocator growth) run before the capture, on a stream of their own
    as CUDA graphs require; then one call is captured, and a replay recomputes from the static input."""
    torch = _needs_cuda()
    default = torch.cuda.current_stream()
    static_in = torch.randn(64, 64, device="cuda")
    weight = torch.randn(64, 64, device="cuda")
    calls: list[tuple[bool, bool]] = []  # (capturing, on the caller's stream) per call

    def step():
        calls.append((torch.cuda.is_current_stream_capturing(), torch.cuda.current_stream() == default))
        return torch.relu(static_in @ weight)

    graph, out = capture_cuda_graph(step, warmup=3)
    assert calls[:3] == [(False, False)] * 3 and len(calls) == 4 and calls[3][0]  # 3 warm-up calls, then the capture
    static_in.copy_(torch.randn(64, 64, device="cuda"))
    graph.replay()
    torch.testing.assert_close(out, torch.relu(static_in @ weight))


@pytest.mark.gpu
def test_cli_tiny_cuda_end_to_end(tmp_path) -> None:
    """Every CUDA path of vivim-bench once, small: events, CUDA graphs, streaming, runtime rows, long clips."""
    _needs_cuda()
    from typer.testing import CliRunner

    from vivim.bench.cli import app

    out = tmp_path / "gpu"
    result = CliRunner().invoke(app, [
        "--variant", "tiny", "--frames", "3", "--size", "64", "--iters", "5", "--warmup", "2", "--device", "cuda",
        "--backends", "torch,torch-fp16,torch-graph", "--scans", "all", "--streaming", "--long-clips",
        "--long-frames", "3,12", "--pipeline-frames", "10", "--no-progress", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    failed_rows = [(r["backend"], r["scan"], r["precision"], r["mode"], r["status"]) for r in rows
                   if r["status"].startswith("failed") and "OpenCV" not in r["status"]]  # no mp4 encoder: not ours
    assert not failed_rows, failed_rows
    measured = [r for r in rows if r["status"] == "ok"]
    assert rows[0]["reference"] and rows[0]["status"] == "ok" and rows[0]["timer"] == "cuda-event"
    assert any(r["backend"] == "PyTorch CUDA graph" for r in measured)
    assert any(r["backend"] == "PyTorch streaming CUDA graph" for r in measured)
    for row in measured:
        if row["timer"] == "cuda-event":
            assert row["memory_mb"] > 0 and row["reserved_mb"] >= row["memory_mb"]
            # the events sit inside the host-timed interval of the same call
            assert row["latency_ms"]["mean"] <= row["host_latency_ms"]["mean"] * 1.05 + 0.05
    long = {(r["precision"], r["frames"]): r for r in measured if r["mode"] == "long-clip"}
    assert long[("fp32", 12)]["memory_mb"] > long[("fp32", 3)]["memory_mb"]


def test_a_run_cut_short_keeps_the_rows_it_measured(tmp_path, monkeypatch) -> None:
    # the JSON and CSV are rewritten after every row: a crash (or a time limit) before the end loses no row
    from typer.testing import CliRunner

    from vivim.bench import report
    from vivim.bench.cli import app

    def crash(*args, **kwargs):
        raise RuntimeError("cut short after the last row")

    monkeypatch.setattr(report, "write_all", crash)
    out = tmp_path / "b"
    result = CliRunner().invoke(app, ["--variant", "tiny", "--frames", "3", "--size", "32", "--iters", "2",
                                      "--warmup", "0", "--device", "cpu", "--backends", "torch", "--out", str(out),
                                      "--no-progress", "--threads", "1"])
    assert isinstance(result.exception, RuntimeError)
    document = json.loads((out / "results.json").read_text())
    assert document["config"]["complete"] is False and document["rows"]
    assert all(row["status"] == "ok" or row["status"].startswith("skipped") for row in document["rows"])
    _, csv_rows = report.read_csv(out / "results.csv")
    assert [r["status"] for r in csv_rows] == [r["status"] for r in document["rows"]]


def test_neither_checkpoint_nor_variant_benchmarks_the_paper_model_and_says_so(capsys) -> None:
    from vivim.bench.cli import _model_choice

    assert _model_choice(None, None) == "paper"
    assert "benchmarking the 'paper' variant with random weights" in capsys.readouterr().err
    assert _model_choice("demo", None) is None and _model_choice(None, "b1") == "b1"


@pytest.mark.parametrize("frames", [3, 5, 8])
def test_pipeline_rows_map_an_output_frame_index_onto_the_runtime_names(frames) -> None:
    """vivim-run takes only 'centre' or 'newest': an index must map onto the frame it means (T // 2 is the centre,
    T - 1 the newest), else the pipeline row would time a different output frame than the other rows."""
    from vivim.bench.rows_runtime import _runtime_output_frame

    assert _runtime_output_frame(frames // 2, frames) == "centre"
    assert _runtime_output_frame(frames - 1, frames) == "newest"
    assert _runtime_output_frame(-1, frames) == "newest"
    assert _runtime_output_frame(0, frames) is None  # neither: the pipeline row is skipped, not mislabelled
    assert _runtime_output_frame("centre", frames) == "centre" and _runtime_output_frame("newest", frames) == "newest"


def test_the_environment_record_never_imports_mamba_ssm(monkeypatch):
    """Its import loads mamba-ssm's language models (triton, transformers): seconds for a version string, which the
    distribution's metadata gives without running its code."""
    import importlib.abc
    import sys

    from vivim.bench.env import collect_environment

    attempted = []

    class Watch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "mamba_ssm":
                attempted.append(name)
            return None

    monkeypatch.setattr(sys, "meta_path", [Watch(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "mamba_ssm", raising=False)
    env = collect_environment("cpu")
    assert attempted == [] and "mamba_ssm" in env


def test_a_nan_in_a_row_is_written_as_null_instead_of_losing_the_results(tmp_path) -> None:
    """The results file is written after every measurement: a NaN (a degenerate timing) must not raise there."""
    rows = _rows(np.random.default_rng())
    rows[0].throughput_fps = float("nan")
    report.write_json(tmp_path / "results.json", rows, ENV, {"variant": "paper"})
    assert "NaN" not in (tmp_path / "results.json").read_text()
    back, _, _ = report.read_results(tmp_path / "results.json")
    assert len(back) == len(rows) and back[0].throughput_fps is None


def test_flags_no_row_uses_are_named_in_one_warning(capsys, tmp_path) -> None:
    """A flag that seems to work and does not is worse than one refused: vivim-bench says which of the flags given
    its rows do not use, as vivim-run does (a default value given by hand too, and nothing for flags not given)."""
    from typer.testing import CliRunner

    from vivim.bench.cli import _warn_unused_flags, app

    _warn_unused_flags(set(), streaming=False, long_clips=False, device="cpu", backends="torch")
    assert capsys.readouterr().err == ""
    given = {"video", "pipeline_frames", "long_iters", "engine", "trt_plugin", "keep_onnx"}
    _warn_unused_flags(given, streaming=False, long_clips=False, device="cpu", backends="torch")
    err = capsys.readouterr().err
    assert err == ("warning: no row of this run uses --video (needs --streaming), --pipeline-frames (needs --streaming), "
                   "--long-iters (needs --long-clips), --engine (no tensorrt in --backends), --plugin (no tensorrt in "
                   "--backends), --keep-onnx (no ONNX Runtime or TensorRT in --backends)\n"), err
    _warn_unused_flags(given | {"compile_rows"}, streaming=True, long_clips=True, device="cpu", backends="torch,tensorrt")
    assert capsys.readouterr().err == "warning: no row of this run uses --compile (CUDA only)\n"
    # through the command line: the flags given by hand, even at their default value
    result = CliRunner().invoke(app, ["--variant", "tiny", "--frames", "3", "--size", "32", "--iters", "1", "--warmup",
                                      "0", "--device", "cpu", "--backends", "torch", "--scans", "reference", "--no-plots",
                                      "--no-progress", "--threads", "1", "--pipeline-frames", "120", "--out",
                                      str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert "warning: no row of this run uses --pipeline-frames (needs --streaming)\n" in result.output


def test_onnx_runtime_rows_run_on_the_threads_asked_for(monkeypatch, tmp_path) -> None:
    """--threads set PyTorch's threads only: ONNX Runtime ran on all cores beside a one-thread PyTorch row."""
    from vivim.bench import rows_deploy
    from vivim.export import ort_ops

    asked = []
    real = ort_ops.create_session

    def spy(path, providers, threads=None, **kwargs):
        asked.append(threads)
        return real(path, providers, threads=threads, **kwargs)

    monkeypatch.setattr(ort_ops, "create_session", spy)
    from vivim.bench.artifacts import Artifacts
    from vivim.bench.common import BenchSettings, ModelSource

    settings = BenchSettings(variant="tiny", frames=3, size=32, device="cpu", warmup=0, iters=2, threads=1,
                             keep_onnx=tmp_path)
    row = rows_deploy.ort_row(Artifacts(ModelSource(settings), settings), settings, provider="CPUExecutionProvider",
                              precision="fp32")
    if row.status.startswith("skipped"):
        pytest.skip(row.status)
    assert row.ok and asked == [1] and "ONNX Runtime CPU, synchronous, 1 intra-op thread" in row.notes


def test_a_row_whose_mean_a_few_slow_calls_decide_is_said(capsys) -> None:
    """Speed-ups compare means: [1149, 31, 34] ms (a busy 2-core machine) made ONNX Runtime look 4.9x faster where
    the medians said 0.4x. Such rows are named after the table."""
    from vivim.bench.cli import _warn_uneven_timings
    from vivim.bench.records import Row
    from vivim.latency import summarize

    steady = Row(backend="ONNX Runtime CPU", precision="fp32", mode="clip", scan="onnx-custom-op", frames=5, size=64,
                 batch=1, latency=summarize([92.0, 91.0, 93.5]))
    _warn_uneven_timings([steady])
    assert capsys.readouterr().err == ""
    busy = Row(backend="PyTorch eager", precision="fp32", mode="clip", scan="reference", frames=5, size=64, batch=1,
               latency=summarize([1149.0, 31.0, 34.0]))
    _warn_uneven_timings([steady, busy])
    err = capsys.readouterr().err
    assert err.startswith("warning: 1 row(s) have a mean far above their median (e.g. PyTorch eager") and \
        "median 34.00 ms" in err, err
