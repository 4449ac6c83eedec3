"""User-facing errors: one line, naming the file, device or flag at fault."""

from __future__ import annotations


class VivimError(Exception):
    """An error caused by the user's input or environment, reported as one line without a traceback."""


class CheckpointError(VivimError):
    """A checkpoint is missing, truncated, foreign or does not match the requested model."""


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
        return self.by.label if isinstance(self.by, Terminated) else "interrupted"

    @property
    def exit_code(self) -> int:
        return self.by.exit_code if isinstance(self.by, Terminated) else 130


class Terminated(KeyboardInterrupt):
    """Raised by the handler of SIGTERM (a batch scheduler or `docker stop` ending a run) or SIGHUP (the terminal or
    SSH session gone) to unwind like Ctrl-C."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__()
        self.signum = signum

    @property
    def label(self) -> str:
        return "hung up (SIGHUP)" if self.signum == 1 else "terminated (SIGTERM)"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
