"""Atomic file writes, shared by every writer in the project (checkpoints, datasets, ONNX, engines, videos, stats).

A file is written under a temporary name in its own folder, flushed to disk, given ordinary permissions and renamed
over the target: a reader never sees half a file, and a crash or Ctrl-C leaves the previous file (or none).
No torch import: the runtime uses this on torch-free devices.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]

FILE_MODE = 0o644  # mkstemp creates 0600 files; checkpoints, datasets and package data are meant to be shared


def temp_beside(path: PathLike, suffix: str = ".tmp") -> str:
    """A new empty temporary file in `path`'s folder. Keep the real extension as `suffix` where a library (OpenCV)
    picks the format from the file name. An OSError names `path`, not the temporary name the user never gave."""
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent if str(target.parent) else ".")
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, str(target)) from None
    os.close(fd)
    return tmp


def commit(tmp: PathLike, path: PathLike, mode: int = FILE_MODE) -> Path:
    """Flush `tmp` to disk and move it onto `path` in one step, then flush the folder so the rename itself survives
    a power cut (the new name lives in the folder's entry, not in the file)."""
    try:
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:  # name the file the user asked for, not the temporary one they never saw
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    _fsync_folder(Path(path).parent)
    return Path(path)


def _fsync_folder(folder: Path) -> None:
    # Best effort: Windows cannot open a folder, and some file systems (network mounts) refuse fsync on one;
    # the file is already in place and complete by then.
    try:
        fd = os.open(folder if str(folder) else ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def discard(tmp: PathLike) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(path: PathLike, *, suffix: str = ".tmp", mode: int = FILE_MODE, parents: bool = False) -> Iterator[str]:
    """Yield a temporary path to write; on success it replaces `path`, on any error it is removed. `parents`:
    create `path`'s missing folders first (outputs whose folder no early check made, e.g. a report's)."""
    if parents:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path, suffix)
    try:
        try:
            yield tmp
        except OSError as exc:  # a write that failed (a full disk): name the file the user asked for
            if exc.errno is None or exc.filename not in (None, tmp):
                raise
            raise type(exc)(exc.errno, exc.strerror, str(path)) from None
        commit(tmp, path, mode)
    finally:
        discard(tmp)


def write_bytes(path: PathLike, data: bytes, *, parents: bool = False) -> Path:
    with atomic_path(path, parents=parents) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_text(path: PathLike, text: str, *, parents: bool = False) -> Path:
    return write_bytes(path, text.encode("utf-8"), parents=parents)


def write_json(path: PathLike, data: Any, *, indent: int = 2, parents: bool = False) -> Path:
    """Strict JSON: a NaN or infinite number (a diverged score, a timing that never ran) is written as null, which
    every JSON reader accepts, instead of Python's NaN/Infinity, which most refuse."""
    text = json.dumps(_finite_or_null(data), indent=indent, allow_nan=False, default=str) + "\n"
    return write_text(path, text, parents=parents)


def _finite_or_null(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite_or_null(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite_or_null(value) for value in data]
    return data
