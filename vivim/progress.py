"""Feedback during long single calls that report no progress of their own (the ONNX exporter, a TensorRT build)."""

from __future__ import annotations

import sys
import threading
from typing import Any, Optional


class Heartbeat:
    """`with Heartbeat("ONNX: exporting"):` keeps a line with the elapsed time on a terminal while the block runs, so
    a minute-long call does not look hung; in a log (no terminal) it prints nothing."""

    def __init__(self, desc: str, *, enabled: Optional[bool] = None, interval: float = 1.0) -> None:
        self.desc = desc
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.interval = interval
        self._bar: Any = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "Heartbeat":
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=None, desc=self.desc, bar_format="{desc} {elapsed}", leave=False, file=sys.stderr)
            self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self._bar.refresh()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._bar.close()
