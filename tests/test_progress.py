"""Heartbeat: an elapsed-time line during a long call, on a terminal only, and no thread left behind."""

from __future__ import annotations

import threading
import time

from vivim.progress import Heartbeat


def test_heartbeat_shows_elapsed_time_and_stops(capsys):
    with Heartbeat("ONNX: exporting", enabled=True, interval=0.05):
        time.sleep(0.3)
    err = capsys.readouterr().err
    assert "ONNX: exporting 00:00" in err and err.count("ONNX: exporting") >= 3  # refreshed while the call ran
    assert not [t for t in threading.enumerate() if t.name == "heartbeat"]


def test_heartbeat_is_silent_in_a_log(capsys):
    with Heartbeat("ONNX: exporting", enabled=False, interval=0.01):
        time.sleep(0.05)
    assert capsys.readouterr().err == ""


def test_a_bar_in_a_log_file_writes_whole_lines_at_an_interval(monkeypatch, capsys):
    """nohup, a batch scheduler or systemd: tqdm's carriage-return redraws piled up into one line of thousands of
    updates. In a log the bar is one plain line per LOG_INTERVAL, plus its first and last."""
    from vivim import progress

    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.05)
    with progress.bar(total=40, desc="epoch 1/3", unit="batch") as bar:  # capsys: stderr is no terminal
        for k in range(40):
            time.sleep(0.005)
            bar.update(1)
            bar.set_postfix(loss=f"{1 / (k + 1):.4f}")  # as vivim-train does per batch: no line of its own
            bar.set_postfix_str(f"step {k}")
            bar.set_description("epoch 1/3")
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and err.endswith("\n")
    assert lines[0].startswith("epoch 1/3:   0%") and lines[-1].startswith("epoch 1/3: 100%") and "40/40" in lines[-1]
    assert 3 <= len(lines) <= 8, lines  # ~0.2 s of work at one line per 0.05 s, not one per update
    with progress.bar(total=3, disable=True) as quiet:
        quiet.update(3)
    assert capsys.readouterr().err == ""
