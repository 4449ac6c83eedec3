"""Helpers shared by the Typer command-line tools: one-line errors, warnings, the 'next command' hint."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn

from vivim.errors import Interrupted, Terminated, VivimError, stop_exit_code, stop_label

if TYPE_CHECKING:
    import typer


def cli_app(help: str, **settings: Any) -> "typer.Typer":
    """A Typer app with the settings every vivim tool shares. Help is click's plain text, wrapped to the terminal:
    Rich's boxed tables cut option names and paths to fit 80 columns ("--max-row-secon…"), and an SSH or serial
    console on a Jetson is often that narrow. Errors are worded by run_app, not by Typer's tracebacks."""
    import typer

    return typer.Typer(help=help, add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False,
                       context_settings={"max_content_width": 100}, **settings)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error to stderr and exit non-zero."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def count(n: int, noun: str, plural: str | None = None) -> str:
    """'1 video', '3 videos'; `plural` where adding an s is wrong ('processes')."""
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def next_command(command: str) -> None:
    print(f"next: {command}")


def shell(*words: object) -> str:
    """A command line to print for copy and paste: paths with spaces or quotes come out quoted for the shell;
    None drops out (an option not given)."""
    return " ".join(shlex.quote(str(word)) for word in words if word is not None)


def run_app(app: Callable[..., object]) -> None:
    """Run a Typer app, turning expected failures into one-line errors instead of tracebacks. A failed run leaves
    no empty output folder behind (those the early checks created)."""
    from vivim.paths import remove_folders_left_empty

    try:
        # not standalone: usage errors (a flag out of range, an unknown option) come here as exceptions, to be
        # worded like every other error instead of in a multi-line box
        with stop_signals_unwind():
            code = app(standalone_mode=False)
    except VivimError as exc:
        remove_folders_left_empty()
        fail(one_line(str(exc)))
    except Interrupted as exc:
        remove_folders_left_empty()
        print(f"{exc.label}: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code)
    except KeyboardInterrupt as exc:
        remove_folders_left_empty()
        _stopped_by(exc)
    except SystemExit as exc:  # Typer turns Ctrl-C into exit 130 itself, before the handler above could see it
        stop = _interruption_in(exc) if exc.code == 130 else None
        if stop is not None:
            remove_folders_left_empty()
            _stopped_by(stop)
        raise
    except OSError as exc:  # a path the early checks could not foresee (a disk filling up, a folder removed)
        remove_folders_left_empty()
        fail(_os_error_line(exc))
    except ModuleNotFoundError as exc:  # an optional package this command needs (imports are lazy, per command)
        hint = missing_package_hint(exc)
        if hint is None:
            raise  # one of our own modules: a bug, keep the traceback
        remove_folders_left_empty()
        fail(hint)
    except Exception as exc:
        kind = _click_kind(exc)
        if kind is None:
            raise
        remove_folders_left_empty()
        if kind == "NoArgsIsHelpError":  # a bare `vivim-export`: the help was printed, nothing to add
            raise SystemExit(getattr(exc, "exit_code", 2))
        if kind == "Abort":  # click's wrapper of a Ctrl-C (or SIGTERM), or of end-of-input at a prompt
            stop = _interruption_in(exc)
            if stop is not None:
                _stopped_by(stop)
            print("aborted", file=sys.stderr)
            raise SystemExit(1)
        fail(usage_line(exc) if kind == "UsageError" else one_line(str(exc)), getattr(exc, "exit_code", 1) or 1)
    # typer.Exit(n) returns n here (e.g. a failed parity check); Typer returns 130 for a Ctrl-C it caught itself.
    # Exit as click's standalone mode does: always through SystemExit, 0 on success. (Click returns a command's own
    # return value the same way: every command returns None, which a test checks.)
    code = code if type(code) is int else 0
    if code == 130:  # Typer caught the KeyboardInterrupt (or Terminated) and kept only its exit code
        remove_folders_left_empty()
        _stopped_by(Terminated(_stop_signal[0]) if _stop_signal else KeyboardInterrupt())
    raise SystemExit(code)


def _click_kind(exc: BaseException) -> str | None:
    """Which of click's exceptions `exc` is, most specific first (Typer carries its own copy of click, so they are
    told apart by name); None for any other exception."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    kinds = ("NoArgsIsHelpError", "UsageError", "Abort", "ClickException")
    return next((kind for kind in kinds if kind in names), None)


def usage_line(exc: BaseException) -> str:
    """A usage error as one line: the flag it concerns, click's reason, where to read more."""
    format_message = getattr(exc, "format_message", None)
    message = str(format_message() if callable(format_message) else exc).strip().splitlines()
    text = " ".join(line.strip() for line in message if line.strip()) or type(exc).__name__
    param = getattr(exc, "param", None)
    flags = sorted(getattr(param, "opts", None) or [], key=len) if param is not None else []
    flag = flags[-1] if flags else None
    if flag and flag not in text:
        text = f"{flag}: {text}"
    ctx = getattr(exc, "ctx", None)  # 'vivim-export onnx': the help of the subcommand that refused the flag
    tool = getattr(ctx, "command_path", None) or (os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "")
    return f"{text} (see {tool or 'the command'} --help)"


# The extra of pyproject.toml that installs each optional top-level module.
_EXTRA_OF_MODULE = {
    "cv2": ("opencv-python-headless", "runtime"), "PIL": ("pillow", "data"), "yaml": ("pyyaml", "runtime"),
    "onnx": ("onnx", "export"), "onnxscript": ("onnxscript", "export"), "onnxruntime": ("onnxruntime", "export"),
    "onnxruntime_extensions": ("onnxruntime-extensions", "export"), "tensorrt": ("tensorrt", "trt"),
    "pycuda": ("pycuda", "trt"), "matplotlib": ("matplotlib", "bench"), "transformers": ("transformers", "dev"),
}


def missing_package_hint(exc: ModuleNotFoundError) -> str | None:
    """'this command needs <package> ...: pip install ...' for a missing third-party package; None for a module of
    this project (a packaging bug, not the user's set-up)."""
    name = (exc.name or "").split(".")[0]
    if not name or name in ("vivim", "export", "runtime"):
        return None
    if name == "torch":
        return "this command needs PyTorch, which is not installed: pip install torch (the CUDA build on a GPU machine)"
    package, extra = _EXTRA_OF_MODULE.get(name, (name, None))
    install = f"pip install 'vivim-edge[{extra}]'" if extra else f"pip install {package}"
    return f"this command needs the Python package {package} (module {name}), which is not installed: {install}"


def _interruption_in(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C (or SIGTERM, as Terminated) an exception was raised while handling, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _stopped_by(stop: KeyboardInterrupt) -> NoReturn:
    """One line and the exit status a shell gives a process stopped that way: 130 for Ctrl-C, 143 for SIGTERM, 129
    for SIGHUP."""
    print(stop_label(stop), file=sys.stderr)
    raise SystemExit(stop_exit_code(stop))


_stop_signal: list[int] = []  # the SIGTERM or SIGHUP received, for the exit code when Typer swallowed Terminated


def stop_signals() -> list[signal.Signals]:
    """The signals that end a command as Ctrl-C does, besides SIGINT: SIGTERM (a batch scheduler's time limit,
    docker stop) and SIGHUP (the terminal or SSH session closed) - unless SIGHUP is ignored, as under nohup."""
    signals: list[signal.Signals] = [signal.SIGTERM]
    hangup = getattr(signal, "SIGHUP", None)  # not on Windows
    if hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN:
        signals.append(hangup)
    return signals


def detach_from_terminal() -> None:
    """After SIGHUP the terminal is gone and writing to it fails (EIO): output that went to it goes nowhere from
    now on, so that printing a message cannot cost the files still to be closed. Files and pipes stay."""
    import stat

    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                # a character device: a hung-up terminal no longer passes isatty() (its settings cannot be read)
                if stat.S_ISCHR(os.fstat(fd).st_mode):
                    os.dup2(devnull, fd)
    finally:
        os.close(devnull)


@contextlib.contextmanager
def stop_signals_unwind() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Terminated, a KeyboardInterrupt, in the main thread: the command unwinds as on
    Ctrl-C (temporaries removed, what is kept said) instead of ending without a word. run_app wraps every command in
    it. Only the first signal raises: a second one (a hang-up and then the shell's SIGTERM) would cut the clean-up
    short, and after the first the process is ending, so none is acted on. Elsewhere than the main thread signals
    cannot be handled, and this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    _stop_signal.clear()

    def terminate(signum: int, frame: object) -> None:
        if signum != signal.SIGTERM:
            detach_from_terminal()
        if _stop_signal:  # a second signal (a hang-up, then the shell's SIGTERM) must not cut the clean-up short
            return
        _stop_signal[:] = [signum]
        raise Terminated(signum)

    previous = {signum: signal.signal(signum, terminate) for signum in stop_signals()}
    try:
        yield
    finally:
        for signum, handler in previous.items():  # once stopped, the process is ending: a further signal waits
            signal.signal(signum, signal.SIG_IGN if _stop_signal else handler)


def one_line(message: str) -> str:
    """The user's part of an error message. An error raised in a DataLoader worker reaches the main process as
    the same exception type, with the worker's whole traceback as its message: keep its last line, the original
    message, without the exception's qualified class name."""
    if "Original Traceback" not in message:
        return message
    last = message.rstrip().splitlines()[-1]
    return re.sub(r"^[\w.]+(Error|Exception): ", "", last)


def _os_error_line(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    if isinstance(exc, FileNotFoundError):
        what = "no such file or directory"
    elif isinstance(exc, PermissionError):
        what = "permission denied"
    elif isinstance(exc, NotADirectoryError):
        what = "a part of this path is a file, not a folder"
    elif isinstance(exc, FileExistsError):
        what = "already exists and is not a folder"
    return f"{exc.filename}: {what}" if exc.filename else what
