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
