"""User-facing errors: one line, naming the file, device or flag at fault."""


class VivimError(Exception):
    """An error caused by the user's input or environment, reported as one line without a traceback."""


class CheckpointError(VivimError):
    """A checkpoint is missing, truncated, foreign or does not match the requested model."""


class ScanShapeError(VivimError, ValueError):
    """Selective-scan arguments of inconsistent shapes (also a ValueError, as for any torch op)."""


class Interrupted(Exception):
    """Ctrl-C, with what was kept and how to continue; reported as one line, exit 130 (not a VivimError: no failure)."""
