"""Early path checks: every CLI refuses an output it cannot write, or an input that is not a file, before any work,
with one line naming the flag and the path."""

from __future__ import annotations

import os
import sys

import pytest

from vivim import paths
from vivim.cli_utils import one_line
from vivim.errors import VivimError


def test_check_writable_creates_missing_folders_and_leaves_no_probe(tmp_path):
    target = tmp_path / "a" / "b" / "stats.json"
    assert paths.check_writable(target, "--stats") == target
    assert (tmp_path / "a" / "b").is_dir() and os.listdir(tmp_path / "a" / "b") == []
    folder = tmp_path / "masks"
    paths.check_writable(folder, "--save-masks", folder=True)
    assert folder.is_dir() and os.listdir(folder) == []


def test_check_writable_names_the_flag_and_what_is_in_the_way(tmp_path):
    blocker = tmp_path / "weights.txt"
    blocker.write_text("a file, not a folder")
    with pytest.raises(VivimError, match=r"^--save .*weights.txt/deep/o.mp4: .*weights.txt is a file, not a folder$"):
        paths.check_writable(blocker / "deep" / "o.mp4", "--save")
    with pytest.raises(VivimError, match=r"^--overlays .*weights.txt: is a file, not a folder$"):
        paths.check_writable(blocker, "--overlays", folder=True)
    with pytest.raises(VivimError, match=r"^--json .*: is a folder, not a file name$"):
        paths.check_writable(tmp_path, "--json")
    assert blocker.read_text() == "a file, not a folder"


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_writable_reports_a_read_only_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(VivimError, match=r"^--out .*x.safetensors: permission denied in .*locked$"):
            paths.check_writable(locked / "x.safetensors", "--out")
    finally:
        locked.chmod(0o755)


def test_require_file(tmp_path):
    with pytest.raises(VivimError, match=r"^--checkpoint .*nope.safetensors: no such file$"):
        paths.require_file(tmp_path / "nope.safetensors", "--checkpoint")
    with pytest.raises(VivimError, match=r"^--video .*: is a folder, not a file \(use --frames DIR\)$"):
        paths.require_file(tmp_path, "--video", hint="use --frames DIR")
    (tmp_path / "m.onnx").write_bytes(b"x")
    assert paths.require_file(tmp_path / "m.onnx", "--onnx") == tmp_path / "m.onnx"


class _Unreadable:
    """A dataset whose second item cannot be read, as a damaged frame on disk."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        if index == 1:
            raise VivimError("clips/0001/00002.jpg: cannot decode this frame")
        return index


def test_an_error_in_a_dataloader_worker_keeps_its_one_line():
    """torch re-raises a worker's error with the worker's traceback as the message; the CLIs print its last line."""
    from torch.utils.data import DataLoader

    with pytest.raises(VivimError) as info:
        list(DataLoader(_Unreadable(), batch_size=None, num_workers=1))
    assert "Original Traceback" in str(info.value)  # what torch does, and why one_line exists
    assert one_line(str(info.value)) == "clips/0001/00002.jpg: cannot decode this frame"
    assert one_line("plain: one line") == "plain: one line"


def test_a_refused_run_leaves_no_empty_output_folders(tmp_path):
    """vivim-eval checks --json and --overlays (creating their folders), then finds no dataset: the folders it
    created and left empty are gone, an existing one stays, and the error is one line."""
    import subprocess

    empty_data = tmp_path / "no_videos"
    empty_data.mkdir()
    kept = tmp_path / "existing"
    kept.mkdir()
    cmd = [sys.executable, "-m", "vivim.evaluate", "demo", "--data", str(empty_data),
           "--json", str(kept / "deep" / "scores.json"), "--overlays", str(tmp_path / "new" / "overlays")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "new").exists() and not (kept / "deep").exists()
    assert kept.is_dir() and empty_data.is_dir()


def test_only_empty_folders_are_removed(tmp_path):
    paths._created_here.clear()  # folders earlier tests of this process made are theirs
    paths.check_writable(tmp_path / "a" / "b", "--out", folder=True)
    (tmp_path / "a" / "b" / "result.txt").write_text("written before the failure")
    paths.check_writable(tmp_path / "c" / "d" / "x.json", "--json")
    paths.remove_folders_left_empty()
    assert (tmp_path / "a" / "b" / "result.txt").is_file()
    assert not (tmp_path / "c").exists()
