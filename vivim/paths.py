"""Checks of the paths a user gives, before any work starts: one-line errors naming the flag and the path.

No torch import (the runtime uses these on torch-free devices).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from vivim.errors import VivimError

PathLike = Union[str, "os.PathLike[str]"]

# Folders check_writable created in this process, outermost first: a run refused later (a bad flag found when the
# model loads, Ctrl-C before the first output) removes those still empty instead of leaving them behind.
_created_here: list[Path] = []


def require_file(path: PathLike, flag: str, hint: str = "") -> Path:
    """`path` must be a readable file; `hint` is added where a folder was given (e.g. which flag takes folders)."""
    target = Path(path)
    where = f"{flag} {target}" if flag else str(target)
    if not target.exists():
        raise VivimError(f"{where}: no such file")
    if target.is_dir():
        raise VivimError(f"{where}: is a folder, not a file" + (f" ({hint})" if hint else ""))
    if not os.access(target, os.R_OK):
        raise VivimError(f"{where}: permission denied")
    return target


def check_writable(path: PathLike, flag: str, *, folder: bool = False) -> Path:
    """Fail before any long work when the output `path` (a file, or a folder with folder=True) cannot be written.

    Creates the missing folders and writes and removes a probe file where the output will go: permission bits,
    read-only file systems and a file standing where a folder is needed all show up here, as a one-line
    VivimError naming `flag` (the command-line flag or argument the path came from)."""
    target = Path(path)
    where = f"{flag} {target}" if flag else str(target)
    if folder and target.exists() and not target.is_dir():
        raise VivimError(f"{where}: is a file, not a folder")
    if not folder and target.is_dir():
        raise VivimError(f"{where}: is a folder, not a file name")
    directory = target if folder else (target.parent if str(target.parent) else Path("."))
    missing = [p for p in (directory, *directory.parents) if not p.exists()]  # innermost first
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _created_here.extend(reversed(missing))
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".vivim-write-check."):
            pass
    except OSError as exc:
        raise VivimError(f"{where}: {_why_not_writable(exc, directory)}") from None
    return target


def remove_folders_left_empty() -> None:
    """After a failed run: remove the folders check_writable created that nothing was written into (innermost first;
    a folder holding anything, an earlier output included, stays)."""
    for folder in reversed(_created_here):
        try:
            folder.rmdir()
        except OSError:
            pass
    _created_here.clear()


def _why_not_writable(exc: OSError, directory: Path) -> str:
    nearest = next((p for p in (directory, *directory.parents) if p.exists()), directory)  # what the OS refused
    if not nearest.is_dir():
        return f"{nearest} is a file, not a folder"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied in {nearest}"
    if exc.errno == errno.EROFS:
        return f"{nearest} is on a read-only file system"
    return f"cannot write in {nearest} ({exc.strerror or exc})"


def refuse_writing_over_inputs(
    outputs: Mapping[str, Optional[PathLike]], inputs: Mapping[str, Optional[PathLike]], *, folders: Sequence[str] = ()
) -> None:
    """No output may be one of the inputs (a --save onto the recording it reads would replace it), none may lie
    inside an input named in `folders` (masks written among the frames being read would become frames), and no two
    outputs may share a path (the second would replace the first)."""
    seen: dict[str, str] = {}
    for out_flag, out_path in outputs.items():
        if not out_path:
            continue
        out_real = os.path.realpath(out_path)
        if out_real in seen:
            raise VivimError(f"{out_flag} {out_path}: is also the output of {seen[out_real]}; give each its own path")
        seen[out_real] = out_flag
        for in_flag, in_path in inputs.items():
            if not in_path or not os.path.exists(in_path):
                continue
            in_real = os.path.realpath(in_path)
            inside = in_flag in folders and os.path.isdir(in_real) and out_real.startswith(in_real.rstrip(os.sep) + os.sep)
            if out_real == in_real or inside:
                where = "is" if out_real == in_real else "is inside"
                raise VivimError(f"{out_flag} {out_path}: {where} the input {in_flag} {in_path}; write somewhere else")


def files_listed_in(marker: PathLike) -> Optional[set[str]]:
    """The .png names a tool's list file (JSON with "files": [...], beside them) says it wrote: vivim-run's and
    vivim-eval's mask folders, vivim-eval's overlays. None when the file is missing, unreadable or holds no list.
    Plain names only: the list is a file anyone can edit, and it decides what the tool deletes."""
    import json

    try:
        with open(marker) as handle:
            info = json.load(handle)
    except (OSError, ValueError):
        return None
    listed = info.get("files") if isinstance(info, dict) else None
    if not isinstance(listed, list):
        return None
    return {name for name in listed if isinstance(name, str) and name.endswith(".png") and os.path.basename(name) == name}
