"""Helpers shared by the Typer command-line tools: one-line errors, warnings, the 'next command' hint."""

from __future__ import annotations

import sys
from typing import Callable, NoReturn

from vivim.errors import VivimError


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error to stderr and exit non-zero."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def next_command(command: str) -> None:
    print(f"next: {command}")


def run_app(app: Callable[..., object]) -> None:
    """Run a Typer app, turning expected failures into one-line errors instead of tracebacks."""
    try:
        app(standalone_mode=True)
    except VivimError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130)
    except FileNotFoundError as exc:
        fail(f"{exc.filename or exc}: no such file or directory")
    except PermissionError as exc:
        fail(f"{exc.filename or exc}: permission denied")
