"""Atomic writes: the target is replaced whole or not at all, and ends up readable by others."""

import json
import os
import stat

import pytest

from vivim import atomic


def test_write_replaces_whole_file_with_shared_permissions(tmp_path):
    target = tmp_path / "stats.json"
    target.write_text("old")
    atomic.write_json(target, {"fps": 30.5})
    assert json.loads(target.read_text()) == {"fps": 30.5}
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]


def test_an_error_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            with open(tmp, "wb") as handle:
                handle.write(b"half a fi")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_temporary_keeps_the_extension_for_format_sniffing_writers(tmp_path):
    tmp = atomic.temp_beside(tmp_path / "overlay.mp4", suffix=".mp4")
    assert tmp.endswith(".mp4") and os.path.dirname(tmp) == str(tmp_path)
    atomic.commit(tmp, tmp_path / "overlay.mp4", mode=0o600)
    assert stat.S_IMODE(os.stat(tmp_path / "overlay.mp4").st_mode) == 0o600


def test_json_is_strict_non_finite_numbers_become_null(tmp_path):
    path = tmp_path / "scores.json"
    atomic.write_json(path, {"dice": float("nan"), "runs": [1.5, float("inf"), {"mae": -float("inf")}], "n": 3,
                             "where": tmp_path})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"dice": None, "runs": [1.5, None, {"mae": None}], "n": 3, "where": str(tmp_path)}
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]  # no temporary file left


def test_data_is_flushed_to_disk_before_the_rename(tmp_path, monkeypatch):
    """A power cut right after the rename must not leave an empty or partial file under the real name (ext4 and
    others may commit the rename before the data): the temporary's full contents are fsynced before it replaces
    the target."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        events.append(("fsync", info.st_ino, info.st_size))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(("replace", os.stat(src).st_ino, os.path.abspath(dst)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "best.safetensors"
    target.write_bytes(b"previous")
    data = os.urandom(4096 + int.from_bytes(os.urandom(2), "little"))
    atomic.write_bytes(target, data)
    assert target.read_bytes() == data
    inode = os.stat(target).st_ino  # a rename keeps the inode: the temporary's
    renames = [i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(target)]
    assert len(renames) == 1 and events[renames[0]][1] == inode
    synced = [i for i, e in enumerate(events) if e[0] == "fsync" and e[1] == inode and e[2] == len(data)]
    assert synced and synced[0] < renames[0], events


def test_the_folder_is_flushed_after_the_rename(tmp_path, monkeypatch):
    """The new name lives in the folder's entry: without a folder fsync after the rename, a power cut can bring back
    the previous file (or none) even though the data was flushed."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    folder_inode = os.stat(tmp_path).st_ino

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(("replace", None))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic.write_json(tmp_path / "stats.json", {"frames": 3})
    rename = events.index(("replace", None))
    assert ("fsync", folder_inode) in events[rename + 1:], events


def test_a_folder_that_refuses_fsync_still_gets_the_file(tmp_path, monkeypatch):
    """Some mounts refuse fsync on a folder; the file is complete and in place by then, so that is not an error."""
    real_fsync = os.fsync

    def fsync(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}") or os.fstat(fd).st_ino == os.stat(tmp_path).st_ino:
            raise OSError(22, "Invalid argument")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic.write_text(tmp_path / "note.txt", "kept")
    assert (tmp_path / "note.txt").read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["note.txt"]


def test_a_failed_write_names_the_file_asked_for_not_the_temporary(tmp_path):
    """A full disk fails the write itself, an OSError without a file name (or with the temporary's): the error
    must name the target, which is all the user knows."""
    import errno

    from vivim import atomic

    target = tmp_path / "model.onnx"
    for filename in (None, "TMP"):
        with pytest.raises(OSError) as info:
            with atomic.atomic_path(target) as tmp:
                raise OSError(errno.ENOSPC, "No space left on device", *([tmp] if filename else []))
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert os.listdir(tmp_path) == []
