"""Feedback on long work: progress bars that suit a terminal and a log file alike, and a heartbeat during long single
calls that report no progress of their own (the ONNX exporter, a TensorRT build)."""

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


LOG_INTERVAL = 30.0  # seconds between two progress lines in a log file


def stderr_line(message: str) -> None:
    """A message on stderr that a progress bar, redrawn on the same line, does not overwrite (e.g. a warning from a
    capture thread, or a stop request, arriving while the bar is drawn)."""
    try:
        from tqdm import tqdm
    except ImportError:
        print(message, file=sys.stderr, flush=True)
        return
    with tqdm.external_write_mode(file=sys.stderr):
        print(message, file=sys.stderr, flush=True)


def bar(iterable: Any = None, **kwargs: Any) -> Any:
    """A tqdm progress bar on a terminal. In a log file (stderr not a terminal: nohup, a batch scheduler, systemd)
    one plain line every LOG_INTERVAL seconds instead: tqdm's carriage-return redraws pile up there into one line of
    thousands of updates."""
    from tqdm import tqdm

    if not kwargs.get("disable") and not sys.stderr.isatty():
        kwargs = {**kwargs, "file": _LogLines(sys.stderr), "mininterval": LOG_INTERVAL, "ascii": True,
                  "dynamic_ncols": False, "ncols": 100}
        return _log_bar_class()(iterable, **kwargs)
    return tqdm(iterable, **kwargs)


def _log_bar_class() -> Any:
    """tqdm whose postfix and description wait for the next interval's line: tqdm redraws at once on each of them
    by default, which in a log is a line per call (per batch, for vivim-train's loss)."""
    from tqdm import tqdm

    class LogBar(tqdm):  # type: ignore[misc]
        def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
            super().set_postfix(ordered_dict, refresh=False, **kwargs)

        def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
            super().set_postfix_str(s, refresh=False)

        def set_description(self, desc: Optional[str] = None, refresh: bool = True) -> None:
            super().set_description(desc, refresh=False)

    return LogBar


class _LogLines:
    """tqdm's output as whole lines: each redraw ("\r" + status) becomes a line, the clearing ones are dropped."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> None:
        for part in text.replace("\n", "\r").split("\r"):
            if part.strip():
                self._stream.write(part.rstrip() + "\n")

    def flush(self) -> None:
        self._stream.flush()
