"""Stopping long work at a safe point on a signal: the first Ctrl-C, SIGTERM (a service manager, a scheduler's time
limit) or SIGHUP (an SSH session dropped) asks the loop to stop after its current step; a second Ctrl-C aborts.
vivim-run stops after the current frame and closes its files; vivim-train after the current batch, saving it."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Dict, Iterator

from vivim.cli_utils import detach_from_terminal, stop_signals
from vivim.errors import Terminated, signal_label

Log = Callable[[str], None]


class GracefulStop:
    """SIGINT, SIGTERM and SIGHUP (see `stop_signals`) set a flag the loop checks; a second SIGINT raises
    KeyboardInterrupt (hard abort) until `finishing()`: from then on the work is completing its last files, and
    aborting would only lose them. After SIGHUP (an SSH session dropped) the work ends as it would on Ctrl-C, its
    console output going nowhere. `step`: what is finished before stopping, in the message ("the current frame")."""

    def __init__(self, log: Log, ctrl_c_after: Any = None, step: str = "the current frame",
                 finishing_note: str = "finishing the last masks and the output files, one moment") -> None:
        self.requested = False
        self._step = step
        self._finishing_note = finishing_note
        self._ctrl_c_after = ctrl_c_after  # SIGINT's handler once the run is over (None: the one before it)
        self.reason = ""  # "interrupted (Ctrl-C)", "terminated (SIGTERM)", "hung up (SIGHUP)": the summary's stopped_by
        self._finishing = False
        self.signum = 0  # the first signal's number (0: none yet)
        self._log = log
        self._previous: Dict[int, Any] = {}

    def as_interrupt(self) -> KeyboardInterrupt:
        """The exception that ends the command the way its first signal asked (exit 130, 143 or 129)."""
        return KeyboardInterrupt() if self.signum in (0, signal.SIGINT) else Terminated(self.signum)

    @contextlib.contextmanager
    def protected(self) -> Iterator[None]:
        """A section that a second Ctrl-C must not cut short (files being written): it only says to wait."""
        before, self._finishing = self._finishing, True
        try:
            yield
        finally:
            self._finishing = before

    def finishing(self) -> None:
        self._finishing = True

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, *stop_signals()):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, self._ctrl_c_after if sig == signal.SIGINT and self._ctrl_c_after is not None else handler)

    def _handle(self, signum: int, frame: object) -> None:
        if signum not in (signal.SIGINT, signal.SIGTERM):  # SIGHUP: the terminal is gone
            detach_from_terminal()
        if self.requested and signum == signal.SIGINT and not self._finishing:
            raise KeyboardInterrupt
        if signum == signal.SIGINT:
            by, reason = "Ctrl-C", "interrupted (Ctrl-C)"
        else:
            by, reason = signal.Signals(signum).name, signal_label(signum)
        first = not self.requested
        self.reason = self.reason or reason  # the first signal is why the run stopped
        self.signum = self.signum or signum
        self.requested = True
        if self._finishing:  # files being written: a first signal still asks to stop afterwards, none aborts
            self._log(self._finishing_note)
        elif first:
            self._log(f"{by}: stopping after {self._step} (Ctrl-C again to abort)")
