"""User-facing errors: one line, naming the file, device or flag at fault."""

from __future__ import annotations

import signal


class VivimError(Exception):
    """An error caused by the user's input or environment, reported as one line without a traceback."""


class CheckpointError(VivimError):
    """A checkpoint is missing, truncated, foreign or does not match the requested model."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """No file where a checkpoint was named (also a FileNotFoundError, as a library caller would catch it)."""


class ScanShapeError(VivimError, ValueError):
    """Selective-scan arguments of inconsistent shapes (also a ValueError, as for any torch op)."""


class Interrupted(Exception):
    """Ctrl-C, SIGTERM or SIGHUP (`by`), with what was kept and how to continue; reported as one line, exit 130 (128
    + the signal's number for the others, as a shell reports a process it ended) - not a VivimError: no failure."""

    def __init__(self, message: str, *, by: BaseException | None = None) -> None:
        super().__init__(message)
        self.by = by

    @property
    def label(self) -> str:
        return stop_label(self.by)

    @property
    def exit_code(self) -> int:
        return stop_exit_code(self.by)


class Terminated(KeyboardInterrupt):
    """Raised by the handler of SIGTERM (a batch scheduler or `docker stop` ending a run) or SIGHUP (the terminal or
    SSH session gone) to unwind like Ctrl-C."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__()
        self.signum = signum

    @property
    def label(self) -> str:
        return signal_label(self.signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_label(signum: int) -> str:
    """How a run stopped by SIGTERM or SIGHUP says so (a summary's stopped_by, the last line of a command)."""
    return "hung up (SIGHUP)" if signum == getattr(signal, "SIGHUP", None) else "terminated (SIGTERM)"


def stop_label(by: BaseException | None) -> str:
    """The last line of a command stopped by Ctrl-C (`by` a KeyboardInterrupt, or None) or a stop signal."""
    return by.label if isinstance(by, Terminated) else "interrupted"


def stop_exit_code(by: BaseException | None) -> int:
    """The exit status a shell gives a process stopped that way: 130 for Ctrl-C, 128 + the signal's number else."""
    return by.exit_code if isinstance(by, Terminated) else 130
