"""User-facing errors: one line, naming the file, device or flag at fault."""


class VivimError(Exception):
    """An error caused by the user's input or environment, reported as one line without a traceback."""


class CheckpointError(VivimError):
    """A checkpoint is missing, truncated, foreign or does not match the requested model."""


class ScanShapeError(VivimError, ValueError):
    """Selective-scan arguments of inconsistent shapes (also a ValueError, as for any torch op)."""


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM: `terminated`), with what was kept and how to continue; reported as one line, exit 130
    (143 for SIGTERM, as a shell reports a process it ended) - not a VivimError: no failure."""

    def __init__(self, message: str, *, terminated: bool = False) -> None:
        super().__init__(message)
        self.terminated = terminated


class Terminated(KeyboardInterrupt):
    """Raised by a SIGTERM handler (a batch scheduler or `docker stop` ending a run) to unwind like Ctrl-C."""
