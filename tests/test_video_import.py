"""vivim-data import: video files and their masks (mask videos, or folders of mask images) -> a DAVIS dataset.

The expected frames and masks are the ones written into the source videos, read back with OpenCV (the frames) or
known exactly (the masks): the imported dataset must hold the same pictures, in order, through the dataset reader.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from vivim.data.cli import app
from vivim.data.image_io import read_frame, read_mask
from vivim.data.layouts import discover_videos
from vivim.errors import VivimError

H, W = 40, 48


def _scene(rng: np.random.Generator, frames: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Speckled frames with a bright disc moving across them, and the disc's masks."""
    images, masks = [], []
    x, y, r = rng.integers(12, 20), rng.integers(12, 24), int(rng.integers(6, 10))
    for k in range(frames):
        image = rng.integers(0, 60, (H, W), dtype=np.uint8)
        mask = np.zeros((H, W), np.uint8)
        cv2.circle(mask, (int(x) + 3 * k, int(y)), r, 1, -1)
        image[mask > 0] = 220
        images.append(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
        masks.append(mask)
    return images, masks


def _write_video(path: Path, images: list[np.ndarray]) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*("MJPG" if path.suffix == ".avi" else "mp4v")), 10,
                             (images[0].shape[1], images[0].shape[0]))
    assert writer.isOpened()
    for image in images:
        writer.write(image)
    writer.release()


def _video_and_mask_folder(root: Path, name: str, images: list[np.ndarray], masks: list[np.ndarray],
                           mask_name: str = "{k:05d}.png") -> tuple[Path, Path]:
    """root/videos/<name>.avi and root/masks/<name>/ holding one mask image per frame (named by `mask_name` with the
    0-based index k or the 1-based n); returns the videos and masks folders, as vivim-data import takes them."""
    videos, masks_root = root / "videos", root / "masks"
    videos.mkdir(parents=True, exist_ok=True)
    (masks_root / name).mkdir(parents=True)
    _write_video(videos / f"{name}.avi", images)
    for k, mask in enumerate(masks):
        cv2.imwrite(str(masks_root / name / mask_name.format(k=k, n=k + 1)), mask)
    return videos, masks_root


def _source_folders(root: Path, masks_name: str = "masks") -> tuple[Path, Path]:
    """root/videos and root/<masks_name>, made empty: where a test writes the videos and masks it imports."""
    videos, masks = root / "videos", root / masks_name
    videos.mkdir()
    masks.mkdir()
    return videos, masks


def _decoded(path: Path) -> list[np.ndarray]:
    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


@pytest.fixture
def sources(tmp_path):
    """Two videos: one with a mask video (0/255, lossy codec), one with a folder of 0/1 PNG masks."""
    rng = np.random.default_rng()
    videos, masks = _source_folders(tmp_path)
    truth = {}
    first, first_masks = _scene(rng, 7)
    _write_video(videos / "case 1.mp4", first)
    _write_video(masks / "case 1.avi", [cv2.cvtColor(m * 255, cv2.COLOR_GRAY2BGR) for m in first_masks])
    truth["case 1"] = first_masks
    second, second_masks = _scene(rng, 4)
    _write_video(videos / "case_2.avi", second)
    (masks / "case_2").mkdir()
    for k, mask in enumerate(second_masks):
        cv2.imwrite(str(masks / "case_2" / f"frame_{k + 1}.png"), mask)  # 1-based names: the order is what counts
    truth["case_2"] = second_masks
    return videos, masks, truth


def _import(*args: str):
    return CliRunner().invoke(app, ["import", *args])


def test_wide_videos_get_a_training_size_in_their_own_aspect(tmp_path):
    """320x180 frames (16:9): the next command trains at HxW in that aspect, not at a square that squeezes them."""
    from vivim.constants import image_hw, size_argument
    from vivim.data.cli import suggested_train_size

    images = [np.full((180, 320, 3), 40 * k, np.uint8) for k in range(2)]
    masks = [np.zeros((180, 320), np.uint8) for _ in range(2)]
    for mask in masks:
        mask[60:120, 100:200] = 255
    videos, masks_root = _video_and_mask_folder(tmp_path, "wide", images, masks)
    result = _import(str(videos), "--masks", str(masks_root), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    size = suggested_train_size([(320, 180)])
    height, width = image_hw(size)
    assert width > height and f"--size {size_argument(size)} " in result.output and "x" in size_argument(size)


def test_videos_and_their_masks_become_a_dataset_the_reader_takes(sources, tmp_path):
    videos, masks, truth = sources
    out = tmp_path / "dataset"
    result = _import(str(videos), "--masks", str(masks), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "imported 2 videos, 11 frames (48x40 width x height)" in result.output
    assert f"next: vivim-train --data {out} --size 32 --out runs/model.safetensors" in result.output
    records = {v.name: v for v in discover_videos(out)}
    assert sorted(records) == ["case 1", "case_2"]
    for name, source in (("case 1", videos / "case 1.mp4"), ("case_2", videos / "case_2.avi")):
        record, expected_masks = records[name], truth[name]
        assert len(record.frames) == len(expected_masks) and record.frames[0].name == "00000.jpg"
        for frame_path, mask_path, decoded, expected in zip(record.frames, record.masks, _decoded(source),
                                                            expected_masks):
            error = read_frame(frame_path).astype(float) - decoded[..., ::-1].astype(float)  # read_frame gives RGB
            assert 10 * np.log10(255**2 / max(1e-9, float(np.mean(error**2)))) > 30  # the same picture (JPEG q95)
            mask = read_mask(mask_path)
            if name == "case_2":  # PNG masks: exact
                np.testing.assert_array_equal(mask, expected > 0)
            else:  # a mask video through a lossy codec: the same disc up to its rim
                assert (mask & (expected > 0)).sum() / (mask | (expected > 0)).sum() > 0.9
    manifest = json.loads((out / "import.json").read_text())
    for video in manifest["videos"]:  # the lesion share of every pixel of every mask, for the "inverted?" check
        expected_share = float(np.mean([m > 0 for m in truth[video["name"]]]))
        assert video["lesion"] == pytest.approx(expected_share, abs=0.02)
    assert "inverted" not in result.output and "empty" not in result.output
    assert not list(tmp_path.glob(".dataset.importing-*"))


@pytest.mark.parametrize("level", [255, 128])
def test_a_mask_video_is_cut_at_half_the_level_its_lesion_is_coded_with(tmp_path, level):
    # a lossless codec, so that every pixel keeps its value: 0 background, `level` lesion (255, or a class colour),
    # and a faint patch just below half the level (a codec's ringing), which must stay background
    rng = np.random.default_rng()
    images, _ = _scene(rng, 3)
    videos, masks = _source_folders(tmp_path)
    _write_video(videos / "case.avi", images)
    coded = np.zeros((H, W), np.uint8)
    coded[4:20, 4:24] = level
    coded[26:34, 30:40] = level // 2 - 8
    writer = cv2.VideoWriter(str(masks / "case.avi"), cv2.VideoWriter_fourcc(*"FFV1"), 10, (W, H))
    assert writer.isOpened()
    for _ in images:
        writer.write(cv2.cvtColor(coded, cv2.COLOR_GRAY2BGR))
    writer.release()
    out = tmp_path / "dataset"
    result = _import(str(videos), "--masks", str(masks), "-o", str(out))
    assert result.exit_code == 0, result.output
    (record,) = discover_videos(out)
    assert len(record.masks) == len(images)
    for mask_path in record.masks:
        np.testing.assert_array_equal(read_mask(mask_path), coded == level)


def test_png_frames_are_lossless(sources, tmp_path):
    videos, masks, _ = sources
    out = tmp_path / "png"
    assert _import(str(videos / "case_2.avi"), "--masks", str(masks), "-o", str(out), "--format", "png").exit_code == 0
    frames = sorted((out / "JPEGImages" / "case_2").iterdir())
    for path, decoded in zip(frames, _decoded(videos / "case_2.avi")):
        assert path.suffix == ".png" and np.array_equal(cv2.imread(str(path)), decoded)


def _error(result) -> str:
    assert result.exit_code != 0 and isinstance(result.exception, VivimError), result.output
    message = str(result.exception)
    assert "\n" not in message
    return message


def test_what_cannot_be_imported_is_one_line_and_leaves_nothing(sources, tmp_path):
    videos, masks, truth = sources
    out = tmp_path / "dataset"
    # a mask video one frame short, a mask folder one image long
    short = tmp_path / "short"
    short.mkdir()
    _write_video(short / "case 1.avi", [cv2.cvtColor(m * 255, cv2.COLOR_GRAY2BGR) for m in truth["case 1"][:-1]])
    (short / "case_2").mkdir()
    for k in range(len(truth["case_2"]) + 1):
        cv2.imwrite(str(short / "case_2" / f"{k:05d}.png"), truth["case_2"][0])
    assert f"{short / 'case 1.avi'}: 6 masks for the 7 frames of {videos / 'case 1.mp4'}; import needs one mask per " \
           "frame (sparsely annotated sets go in the DAVIS layout directly, see README)" == \
        _error(_import(str(videos), "--masks", str(short), "-o", str(out)))
    assert f"{short / 'case_2'}: 5 masks for the 4 frames of {videos / 'case_2.avi'}" == \
        _error(_import(str(videos / "case_2.avi"), "--masks", str(short), "-o", str(out)))
    # masks of another size, missing masks, a broken video, a file that is not a video
    wrong = tmp_path / "wrong"
    (wrong / "case_2").mkdir(parents=True)
    for k in range(4):
        cv2.imwrite(str(wrong / "case_2" / f"{k:05d}.png"), np.zeros((H, W + 2), np.uint8))
    assert f"{wrong / 'case_2' / '00000.png'}: mask is 50x40 but frame {videos / 'case_2.avi'} (frame 0) is 48x40" == \
        _error(_import(str(videos / "case_2.avi"), "--masks", str(wrong), "-o", str(out)))
    assert f"--masks {wrong}: no masks for case 1.mp4 (looked for a folder or video named <stem> or <stem>_mask)" in \
        _error(_import(str(videos), "--masks", str(wrong), "-o", str(out)))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "case_2.mp4").write_bytes(b"not a video at all" * 10)
    assert f"{broken / 'case_2.mp4'}: cannot open this video" in \
        _error(_import(str(broken), "--masks", str(masks), "-o", str(out)))
    assert f"{masks / 'case_2' / 'frame_1.png'}: not a video file" in \
        _error(_import(str(masks / "case_2" / "frame_1.png"), "--masks", str(masks), "-o", str(out)))
    assert not list(tmp_path.glob(".dataset.importing-*"))  # nothing half-imported
    assert not out.exists() or not any(out.iterdir())  # (the command's own empty folder goes in run_app, below)
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "vivim.data.cli", "import", str(videos), "--masks", str(wrong), "-o",
                           str(tmp_path / "via_cli")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --masks") and "Traceback" not in proc.stderr
    assert not (tmp_path / "via_cli").exists()
    if out.exists():
        out.rmdir()
    # an output folder that holds anything is never written into
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert f"-o {out}: already exists and is not empty" in _error(_import(str(videos), "--masks", str(masks), "-o", str(out)))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_an_imported_dataset_trains(sources, tmp_path):
    from vivim.train import TrainConfig, run_training

    videos, masks, _ = sources
    out = tmp_path / "dataset"
    assert _import(str(videos), "--masks", str(masks), "-o", str(out)).exit_code == 0
    result = run_training(TrainConfig(data=str(out), out=str(tmp_path / "m.safetensors"), variant="tiny", epochs=1,
                                      frames=3, size=32, batch=2, workers=0, val_fraction=0.5, seed=0, device="cpu",
                                      progress=False, max_steps=2))
    assert len(result.step_losses) == 2 and result.best_path.is_file()


def test_names_with_pattern_characters_and_mask_previews(tmp_path):
    """'scan[1]' is a name, not a glob pattern; a .jpg preview beside each .png mask is not a second mask."""
    rng = np.random.default_rng()
    videos, masks = tmp_path / "videos", tmp_path / "masks"
    (masks / "scan[2]").mkdir(parents=True)
    videos.mkdir()
    first, first_masks = _scene(rng, 3)
    _write_video(videos / "scan[1].avi", first)
    _write_video(masks / "scan[1].mp4", [cv2.cvtColor(m * 255, cv2.COLOR_GRAY2BGR) for m in first_masks])
    second, second_masks = _scene(rng, 3)
    _write_video(videos / "scan[2].avi", second)
    for k, mask in enumerate(second_masks):
        cv2.imwrite(str(masks / "scan[2]" / f"{k:05d}.png"), mask * 255)
        cv2.imwrite(str(masks / "scan[2]" / f"{k:05d}.jpg"), 255 - mask * 255)  # a stale preview: never read
    out = tmp_path / "dataset"
    result = _import(str(videos), "--masks", str(masks), "-o", str(out))
    assert result.exit_code == 0, result.output
    record = next(v for v in discover_videos(out) if v.name == "scan[2]")
    for mask_path, expected in zip(record.masks, second_masks):
        np.testing.assert_array_equal(read_mask(mask_path), expected > 0)


def test_a_file_name_opencv_cannot_open_is_one_line(tmp_path):
    """OpenCV crashes the process on a path that is not valid UTF-8 (a name from another system's encoding)."""
    import os
    import subprocess
    import sys

    rng = np.random.default_rng()
    videos, masks = _source_folders(tmp_path)
    images, image_masks = _scene(rng, 2)
    _write_video(videos / "ok.avi", images)
    raw = os.path.join(os.fsencode(videos), b"\xe9cho.avi")
    os.rename(os.fsencode(videos / "ok.avi"), raw)
    _write_video(masks / "x.avi", images)
    os.rename(os.fsencode(masks / "x.avi"), os.path.join(os.fsencode(masks), b"\xe9cho.avi"))
    proc = subprocess.run([sys.executable, "-m", "vivim.data.cli", "import", str(videos), "--masks", str(masks), "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "the file name is not valid UTF-8, which OpenCV cannot open; rename the file" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("signame, code, times", [("SIGINT", 130, 1), ("SIGTERM", 143, 1), ("SIGHUP", 129, 2)])
def test_an_import_stopped_midway_leaves_nothing(tmp_path, signame, code, times):
    """Ctrl-C, SIGTERM (docker stop, a scheduler) and SIGHUP (an SSH session dropped; sent twice, as a shell may
    pass the hang-up on while the first is handled) remove the dataset written so far under its temporary name."""
    import signal
    import subprocess
    import sys
    import time

    videos, masks = _video_and_mask_folder(tmp_path, "long", *_scene(np.random.default_rng(), 400))
    out = tmp_path / "dataset"
    child = subprocess.Popen([sys.executable, "-m", "vivim.data.cli", "import", str(videos), "--masks", str(masks),
                              "-o", str(out), "--format", "png"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("dataset/.importing-*/JPEGImages/long/*.png")) and time.monotonic() < deadline:
        time.sleep(0.01)
    for _ in range(times):
        child.send_signal(getattr(signal, signame))
        time.sleep(0.002)
    _, err = child.communicate(timeout=60)
    if child.returncode == 0:
        pytest.skip("the import finished before the signal arrived")
    assert child.returncode == code, err
    said = {"SIGINT": "interrupted", "SIGTERM": "terminated (SIGTERM)", "SIGHUP": "hung up (SIGHUP)"}[signame]
    assert err.strip().splitlines()[-1] == said
    assert not out.exists() and not list(tmp_path.glob(".dataset.importing-*"))


def test_mask_videos_beside_their_videos_and_the_same_folder_spelled_otherwise(tmp_path, monkeypatch):
    """`a_mask.mp4` beside `a.mp4` is a's mask, not a video to import; --masks naming the videos' folder by another
    spelling of its path must never take a video as its own mask."""
    rng = np.random.default_rng()
    rec = tmp_path / "rec"
    rec.mkdir()
    images, masks = _scene(rng, 4)
    _write_video(rec / "a.mp4", images)
    _write_video(rec / "a_mask.avi", [cv2.cvtColor(m * 255, cv2.COLOR_GRAY2BGR) for m in masks])
    monkeypatch.chdir(tmp_path)
    result = _import("rec", "--masks", str(rec), "-o", "ds")  # relative VIDEOS, absolute --masks
    assert result.exit_code == 0, result.output
    assert [v.name for v in discover_videos(tmp_path / "ds")] == ["a"]
    imported = discover_videos(tmp_path / "ds")[0]
    for mask_path, expected in zip(imported.masks, masks):
        got = read_mask(mask_path)
        assert (got & (expected > 0)).sum() / (got | (expected > 0)).sum() > 0.9
    alone = tmp_path / "alone"
    alone.mkdir()
    _write_video(alone / "b.mp4", images)
    assert "no masks for b.mp4" in _error(_import("alone", "--masks", str(alone), "-o", "ds2"))


def test_masks_given_by_path_but_named_after_another_video_are_said(tmp_path):
    # a.mp4 and b.mp4 of one exam, of the same length and size: b's masks given for a import, with a warning
    rng = np.random.default_rng()
    exam = tmp_path / "exam"
    exam.mkdir()
    images, masks = _scene(rng, 4)
    for name in ("a", "b"):
        _write_video(exam / f"{name}.mp4", images)
        (exam / f"{name}_mask").mkdir()
        for k, mask in enumerate(masks):
            cv2.imwrite(str(exam / f"{name}_mask" / f"{k:05d}.png"), mask * 255)
    swapped = _import(str(exam / "a.mp4"), "--masks", str(exam / "b_mask"), "-o", str(tmp_path / "ds"))
    assert swapped.exit_code == 0, swapped.output
    assert f"--masks {exam / 'b_mask'} is named after b.mp4, not a.mp4" in swapped.output
    own = _import(str(exam / "a.mp4"), "--masks", str(exam / "a_mask"), "-o", str(tmp_path / "ds2"))
    assert own.exit_code == 0 and "warning" not in own.output, own.output
    # a mask video given by its path, named after nothing else there, is not taken for another video
    _write_video(exam / "a_seg.avi", [cv2.cvtColor(m * 255, cv2.COLOR_GRAY2BGR) for m in masks])
    seg = _import(str(exam / "a.mp4"), "--masks", str(exam / "a_seg.avi"), "-o", str(tmp_path / "ds3"))
    assert seg.exit_code == 0 and "warning" not in seg.output, seg.output


def test_mask_images_must_be_numbered_without_gaps_or_repeats(tmp_path):
    """A lost mask file (frame_8.png) or a copy (frame_12 copy.png) would shift every later mask onto another frame."""
    images, image_masks = _scene(np.random.default_rng(), 6)
    videos, masks = _video_and_mask_folder(tmp_path, "scan", images, image_masks, "frame_{n}.png")  # 1-based names
    (masks / "scan" / "frame_4.png").rename(masks / "scan" / "frame_4 copy.png")
    cv2.imwrite(str(masks / "scan" / "frame_4.png"), image_masks[3])
    assert f"{masks / 'scan'}: frame_4 copy.png and frame_4.png both carry frame number 4" in \
        _error(_import(str(videos), "--masks", str(masks), "-o", str(tmp_path / "o1")))
    (masks / "scan" / "frame_4 copy.png").unlink()
    (masks / "scan" / "frame_3.png").unlink()
    assert f"{masks / 'scan'}: the masks are numbered 1..6 but 1 are missing (e.g. number 3)" in \
        _error(_import(str(videos), "--masks", str(masks), "-o", str(tmp_path / "o2")))


@pytest.mark.parametrize("colour", [(0, 0, 128), (0, 128, 0), (128, 128, 128), (255, 255, 255)])
def test_a_mask_video_in_a_class_colour_keeps_its_lesion(tmp_path, colour):
    """Label tools export mask videos in class colours (VOC's dark red is 128): thresholded per frame at half of
    255, codec noise around 128 wiped most of the lesion. The threshold is half the video's own lesion level."""
    rng = np.random.default_rng()
    videos, masks = _source_folders(tmp_path)
    images, image_masks = _scene(rng, 5)
    _write_video(videos / "c.mp4", images)
    coloured = [np.where(m[..., None] > 0, np.array(colour, np.uint8), np.uint8(0)).astype(np.uint8) for m in image_masks]
    _write_video(masks / "c.mp4", coloured)
    assert _import(str(videos), "--masks", str(masks), "-o", str(tmp_path / "ds")).exit_code == 0
    for mask_path, expected in zip(discover_videos(tmp_path / "ds")[0].masks, image_masks):
        got = read_mask(mask_path)
        assert (got & (expected > 0)).sum() / (got | (expected > 0)).sum() > 0.85, colour


def test_a_cut_short_video_is_named_and_odd_masks_are_said(tmp_path):
    images, image_masks = _scene(np.random.default_rng(), 20)
    videos, masks = _video_and_mask_folder(tmp_path, "cut", images, image_masks)
    data = (videos / "cut.avi").read_bytes()
    (videos / "cut.avi").write_bytes(data[: len(data) // 2])  # the header still declares 20 frames
    message = _error(_import(str(videos), "--masks", str(masks), "-o", str(tmp_path / "o")))
    assert message.startswith(f"{videos / 'cut.avi'}: decoding stopped at frame ") and "of the 20 its header" in message
    # one video whose masks are all empty, one whose masks are mostly lesion: imported, and said
    for name, make in (("empty", lambda m: m * 0), ("inverted", lambda m: 1 - m)):
        folder = tmp_path / name
        videos, masks = _video_and_mask_folder(folder, "v", images[:3], [make(m) for m in image_masks[:3]])
        result = _import(str(videos), "--masks", str(masks), "-o", str(folder / "ds"))
        assert result.exit_code == 0, result.output
        said = "v.avi: every mask is empty" if name == "empty" else "of the pixels are lesion; are its masks inverted?"
        assert said in result.output, result.output


def test_one_folder_of_numbered_masks_for_several_videos(tmp_path):
    """Annotation tools often export every video's masks into one folder as <video>_<frame>.png: each video takes
    its own images, in frame-number order, even where one video's name begins another's (case1, case10) and one
    import takes a single video from such a folder."""
    rng = np.random.default_rng()
    videos, flat = _source_folders(tmp_path, "labels")
    truth = {}
    for name, frames, pattern in (("case1", 5, "{name}_{n}.png"), ("case10", 4, "{name}_mask_{k:05d}.png")):
        images, masks = _scene(rng, frames)
        _write_video(videos / f"{name}.avi", images)
        for k, mask in enumerate(masks):
            cv2.imwrite(str(flat / pattern.format(name=name, n=k + 1, k=k)), mask)
        truth[name] = masks
    out = tmp_path / "ds"
    result = _import(str(videos), "--masks", str(flat), "-o", str(out))
    assert result.exit_code == 0, result.output
    imported = {v.name: v for v in discover_videos(out)}
    assert sorted(imported) == ["case1", "case10"]
    for name, masks in truth.items():
        assert len(imported[name]) == len(masks)
        for path, expected in zip(imported[name].masks, masks):  # PNG masks: exact, and in frame-number order
            assert np.array_equal(read_mask(path), expected > 0), (name, path)
    single = tmp_path / "ds1"
    assert _import(str(videos / "case1.avi"), "--masks", str(flat), "-o", str(single)).exit_code == 0
    assert len(discover_videos(single)[0]) == 5
    (flat / "case10_mask_00002.png").unlink()
    assert f"{flat / 'case10_mask_00000.png'} ... case10_mask_00003.png: the masks are numbered 0..3 but 1 are missing " \
           "(e.g. number 2)" in \
        _error(_import(str(videos), "--masks", str(flat), "-o", str(tmp_path / "ds2")))
    for suffix in (".jpg", ".bmp"):  # two masks of one name, neither a .png: said as such, not as "no masks"
        cv2.imwrite(str(flat / f"case1_9{suffix}"), truth["case1"][0])
    assert "several masks are named case1_9.*" in _error(_import(str(videos), "--masks", str(flat), "-o", str(tmp_path / "ds3")))


def test_a_folder_per_patient_is_imported_with_the_patients_in_the_names(tmp_path):
    """raw/<patient>/<clip>.mp4 with masks in a mirrored masks/<patient>/ (or beside the clips, or in a masks folder
    inside raw/): every clip, named <patient>_<clip> so that two patients' clip_a stay apart, masks lined up."""
    rng = np.random.default_rng()
    raw, masks = tmp_path / "raw", tmp_path / "masks"
    truth = {}
    for patient, clip, kind in (("patient01", "clip_a", "video"), ("patient01", "clip_b", "folder"),
                                ("patient02", "clip_a", "video")):
        images, clip_masks = _scene(rng, int(rng.integers(3, 6)))
        (raw / patient).mkdir(parents=True, exist_ok=True)
        (masks / patient).mkdir(parents=True, exist_ok=True)
        _write_video(raw / patient / f"{clip}.avi", images)
        if kind == "video":  # MJPG: lossy, so compared by overlap below
            _write_video(masks / patient / f"{clip}_mask.avi", [cv2.cvtColor(m * 255, cv2.COLOR_GRAY2BGR) for m in clip_masks])
        else:
            (masks / patient / clip).mkdir()
            for k, mask in enumerate(clip_masks):
                cv2.imwrite(str(masks / patient / clip / f"{k:05d}.png"), mask)
        truth[f"{patient}_{clip}"] = clip_masks
    result = _import(str(raw), "--masks", str(masks), "-o", str(tmp_path / "ds"))
    assert result.exit_code == 0, result.output
    records = {v.name: v for v in discover_videos(tmp_path / "ds")}
    assert sorted(records) == sorted(truth)
    for name, expected in truth.items():
        assert len(records[name].masks) == len(expected)
        for path, mask in zip(records[name].masks, expected):
            got = read_mask(path)
            assert (got & (mask > 0)).sum() / (got | (mask > 0)).sum() > 0.9, name
    # masks beside their clips, and a masks folder inside the imported one: neither is taken for a clip
    beside = tmp_path / "beside"
    (beside / "p1").mkdir(parents=True)
    (beside / "masks" / "p2").mkdir(parents=True)
    (beside / "p2").mkdir()
    images, clip_masks = _scene(rng, 3)
    for folder, mask_folder in ((beside / "p1", beside / "p1"), (beside / "p2", beside / "masks" / "p2")):
        _write_video(folder / "a.avi", images)
        _write_video(mask_folder / "a_mask.avi", [cv2.cvtColor(m * 255, cv2.COLOR_GRAY2BGR) for m in clip_masks])
    assert _import(str(beside / "p1"), "--masks", str(beside / "p1"), "-o", str(tmp_path / "ds1")).exit_code == 0
    assert [v.name for v in discover_videos(tmp_path / "ds1")] == ["a"]
    (beside / "p1" / "a_mask.avi").rename(beside / "masks" / "p1_a_mask.avi")  # p1's mask in masks/, not mirrored
    (beside / "masks" / "p1").mkdir()
    (beside / "masks" / "p1_a_mask.avi").rename(beside / "masks" / "p1" / "a_mask.avi")
    result = _import(str(beside), "--masks", str(beside / "masks"), "-o", str(tmp_path / "ds2"))
    assert result.exit_code == 0, result.output
    assert sorted(v.name for v in discover_videos(tmp_path / "ds2")) == ["p1_a", "p2_a"]
    # two clips that would take one name are refused, both named
    clash = tmp_path / "clash"
    (clash / "p_1").mkdir(parents=True)
    (clash / "p").mkdir()
    _write_video(clash / "p_1" / "a.avi", images)
    _write_video(clash / "p" / "1_a.avi", images)
    message = _error(_import(str(clash), "--masks", str(clash), "-o", str(tmp_path / "ds3")))
    assert message.startswith(f"{clash}: several videos would be named p_1_a (")
    assert "p/1_a.avi" in message and "p_1/a.avi" in message and message.endswith("rename one (a mask video is named "
                                                                                   "<stem>_mask.<ext>)")
    # a flat masks folder holding one patient's clip_a masks: found for both patients' clip_a, so refused
    flat = tmp_path / "flat_masks"
    flat.mkdir()
    (flat / "clip_a").mkdir()
    for k, mask in enumerate(truth["patient01_clip_a"]):
        cv2.imwrite(str(flat / "clip_a" / f"{k:05d}.png"), mask)
    (flat / "clip_b").mkdir()
    for k, mask in enumerate(truth["patient01_clip_b"]):
        cv2.imwrite(str(flat / "clip_b" / f"{k:05d}.png"), mask)
    message = _error(_import(str(raw), "--masks", str(flat), "-o", str(tmp_path / "ds4")))
    assert message.startswith(f"--masks {flat}: {flat / 'clip_a'} would be the masks of both patient01_clip_a and "
                              "patient02_clip_a; give each patient's masks a subfolder"), message
    assert not (tmp_path / "ds4" / "JPEGImages").exists()  # refused before any frame was written


def test_overwrite_replaces_an_earlier_import_only_once_the_new_one_is_complete(tmp_path):
    rng = np.random.default_rng()
    out = tmp_path / "ds"

    def recordings(name: str, videos: dict[str, int]) -> tuple[Path, Path]:
        root = tmp_path / name
        for stem, frames in videos.items():
            images, masks = _scene(rng, frames)
            _video_and_mask_folder(root, stem, images, masks)
        return root / "videos", root / "masks"

    first = recordings("first", {"a": 3, "b": 4})
    assert _import(str(first[0]), "--masks", str(first[1]), "-o", str(out)).exit_code == 0
    second = recordings("second", {"c": 5})
    refused = _error(_import(str(second[0]), "--masks", str(second[1]), "-o", str(out)))
    assert refused.endswith("choose a new folder, or pass --overwrite to replace an earlier vivim-data import there")
    # a failure midway (c's masks one short) leaves the earlier dataset as it was
    short = tmp_path / "second" / "masks" / "c"
    sorted(short.iterdir())[-1].unlink()
    _error(_import(str(second[0]), "--masks", str(second[1]), "-o", str(out), "--overwrite"))
    assert sorted(v.name for v in discover_videos(out)) == ["a", "b"]
    assert sorted(p.name for p in out.iterdir()) == ["Annotations", "JPEGImages", "import.json"]
    cv2.imwrite(str(short / "00004.png"), np.zeros((H, W), np.uint8))
    replaced = _import(str(second[0]), "--masks", str(second[1]), "-o", str(out), "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert [v.name for v in discover_videos(out)] == ["c"] and len(discover_videos(out)[0].frames) == 5
    assert sorted(p.name for p in out.iterdir()) == ["Annotations", "JPEGImages", "import.json"]  # nothing left over
    # only an import's own output is replaced, and never the files being imported
    (out / "ImageSets").mkdir()
    assert "also holds ImageSets" in _error(_import(str(second[0]), "--masks", str(second[1]), "-o", str(out),
                                                    "--overwrite"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not an import")
    assert "replaces only a folder an earlier vivim-data import wrote" in _error(
        _import(str(second[0]), "--masks", str(second[1]), "-o", str(mine), "--overwrite"))
    assert (mine / "notes.txt").read_text() == "not an import"
    (out / "ImageSets").rmdir()
    inputs = out / "JPEGImages"
    assert "an input of this import" in _error(_import(str(second[0]), "--masks", str(inputs), "-o", str(out),
                                                       "--overwrite"))


def test_a_carved_validation_split_that_shares_a_patient_is_named(tmp_path):
    """vivim-train's carved split is by video; an import from per-patient folders records each clip's folder, so a
    patient with clips on both sides is said (validation would score a patient the model trains on)."""
    from vivim.training.data import patient_on_both_sides

    rng = np.random.default_rng()
    raw, masks = tmp_path / "raw", tmp_path / "masks"
    for patient in ("patient01", "patient02"):
        for clip in ("clip_a", "clip_b"):
            images, clip_masks = _scene(rng, 3)
            (raw / patient).mkdir(parents=True, exist_ok=True)
            (masks / patient / clip).mkdir(parents=True)
            _write_video(raw / patient / f"{clip}.avi", images)
            for k, mask in enumerate(clip_masks):
                cv2.imwrite(str(masks / patient / clip / f"{k:05d}.png"), mask)
    out = tmp_path / "ds"
    assert _import(str(raw), "--masks", str(masks), "-o", str(out)).exit_code == 0
    videos = {v.name: v for v in discover_videos(out)}
    mixed = patient_on_both_sides(out, [videos["patient01_clip_a"], videos["patient02_clip_a"]],
                                  [videos["patient01_clip_b"], videos["patient02_clip_b"]])
    assert mixed is not None and mixed.startswith("--val-fraction: patient01 has videos on both sides of the "
                                                  "validation split (patient01_clip_a for training, patient01_clip_b")
    whole = patient_on_both_sides(out, [videos["patient01_clip_a"], videos["patient01_clip_b"]],
                                  [videos["patient02_clip_a"], videos["patient02_clip_b"]])
    assert whole is None
    flat = tmp_path / "flat"  # one source folder: nothing known about patients, nothing said
    flat.mkdir()
    for name in ("clip_a", "clip_b"):
        (raw / "patient01" / f"{name}.avi").rename(flat / f"{name}.avi")
    assert _import(str(flat), "--masks", str(masks / "patient01"), "-o", str(tmp_path / "flat_ds")).exit_code == 0
    flat_videos = discover_videos(tmp_path / "flat_ds")
    assert patient_on_both_sides(tmp_path / "flat_ds", flat_videos[:1], flat_videos[1:]) is None
