"""Frame sources: every frame from files, newest-only for live sources, drop counting, reconnects, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from vivim.errors import VivimError
from vivim.runtime import sources
from vivim.runtime.config import SourceConfig
from vivim.runtime.sources import FrameSource, ImageFolder, create_source


def make_video(path, n=6, size=(48, 40), fps=10.0):
    """Frame k has brightness 20 * k + 10 everywhere, so the decoded order can be read back."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for k in range(n):
        writer.write(np.full((size[1], size[0], 3), (20 * k + 10) % 256, np.uint8))
    writer.release()
    return path


def make_folder(path, n=5):
    path.mkdir()
    for k in range(n):
        cv2.imwrite(str(path / f"{k:04d}.png"), np.full((24, 32, 3), 30 * k, np.uint8))
    return path


def drain(source, limit=10.0):
    frames, deadline = [], time.monotonic() + limit
    while time.monotonic() < deadline:
        frame = source.read(0.05)
        if frame is not None:
            frames.append(frame)
        elif source.finished:
            frame = source.read(0.0)
            if frame is None:
                break
            frames.append(frame)
    return frames


def test_video_file_delivers_every_frame_in_order(tmp_path):
    path = make_video(tmp_path / "clip.mp4", n=7)
    source = create_source(SourceConfig(kind="video", location=str(path))).open()
    assert source.frame_shape == (40, 48, 3)
    assert source.fps == pytest.approx(10.0)
    source.start()
    time.sleep(0.2)  # a slow consumer must not lose file frames
    frames = drain(source)
    source.stop()
    assert [f.index for f in frames] == list(range(7))
    levels = [int(f.image.mean()) for f in frames]
    assert levels == sorted(levels) and abs(levels[0] - 10) <= 3 and abs(levels[-1] - 130) <= 3
    stamps = [f.t_capture for f in frames]
    assert stamps == sorted(stamps)
    assert source.frames_dropped == 0 and source.frames_captured == 7 and source.error is None


def test_folder_loop_and_max_frames(tmp_path):
    folder = make_folder(tmp_path / "frames", n=4)
    source = create_source(SourceConfig(kind="frames", location=str(folder), loop=True, max_frames=10)).start()
    frames = drain(source)
    source.stop()
    assert len(frames) == 10
    assert [round(f.image.mean()) for f in frames] == [30 * (k % 4) for k in range(10)]


def test_realtime_paces_at_the_frame_rate(tmp_path):
    folder = make_folder(tmp_path / "frames", n=6)
    source = create_source(SourceConfig(kind="frames", location=str(folder), realtime=True, fps=20.0))
    assert source.live  # --realtime behaves like a camera: newest frame only
    t0 = time.monotonic()
    source.start()
    frames = drain(source)
    elapsed = time.monotonic() - t0
    source.stop()
    assert elapsed >= 5 / 20.0 * 0.9
    assert len(frames) + source.frames_dropped == 6


class SyntheticDevice:
    """A stand-in capture device: frame k is filled with k % 256; it can fail after `fail_after` reads."""

    def __init__(self, counter, fail_after=None, period=0.0):
        self.counter = counter
        self.fail_after = fail_after
        self.period = period
        self.reads = 0

    def read(self):
        if self.fail_after is not None and self.reads >= self.fail_after:
            return False, None
        self.reads += 1
        if self.period:
            time.sleep(self.period)
        value = self.counter[0] % 256
        self.counter[0] += 1
        return True, np.full((8, 8, 3), value, np.uint8)

    def release(self):
        pass


def test_live_source_keeps_newest_and_counts_drops():
    counter = [0]
    source = FrameSource("fake camera", lambda: SyntheticDevice(counter, period=0.002), live=True, reconnect=True,
                         max_frames=200)
    source.open().start()
    got = []
    while True:
        frame = source.read(0.05)
        if frame is None and source.finished:
            frame = source.read(0.0)  # the last frame may land between the timeout and the check
            if frame is None:
                break
        if frame is not None:
            got.append(frame)
            time.sleep(0.02)  # a model ten times slower than the camera
    source.stop()
    indices = [f.index for f in got]
    assert indices == sorted(set(indices))  # newest only, never out of order
    assert source.frames_dropped > 0
    assert source.frames_captured == 200
    assert len(got) + source.frames_dropped == source.frames_captured


def test_a_live_frame_keeps_the_time_it_left_the_device_and_a_file_frame_the_time_it_was_taken():
    # capture-to-mask latency starts at capture for a camera (time spent waiting in the mailbox counts), and when the
    # pipeline takes the frame for a file (a file frame waits for nobody)
    counter = [0]
    source = FrameSource("fake camera", lambda: SyntheticDevice(counter, period=0.01), live=True, reconnect=False,
                         max_frames=6)
    source.open().start()
    time.sleep(0.15)  # the pipeline busy: the newest frame waits in the mailbox
    taken = time.monotonic()
    frame = source.read(1.0)
    source.stop()
    assert frame is not None and taken - frame.t_capture >= 0.02  # stamped well before it was taken
    files = FrameSource("fake file", lambda: SyntheticDevice([0], fail_after=8), live=False, reconnect=False)
    files.open().start()
    time.sleep(0.1)  # decoded ahead, then taken
    taken = time.monotonic()
    frame = files.read(1.0)
    files.stop()
    assert frame is not None and frame.t_capture >= taken


def test_reconnects_with_backoff_after_the_device_is_lost():
    counter = [0]
    opens = []
    messages = []

    def opener():
        opens.append(time.monotonic())
        attempt = len(opens)
        if attempt == 1:
            return SyntheticDevice(counter, fail_after=4)  # probe + 3 frames, then the cable is pulled
        if attempt in (2, 3):
            raise VivimError("camera gone")
        return SyntheticDevice(counter, fail_after=None)

    source = FrameSource("fake camera", opener, live=False, reconnect=True, max_frames=10,
                         reconnect_delay=0.02, reconnect_max_delay=1.0, log=messages.append)
    source.open().start()
    frames = drain(source)
    source.stop()
    assert source.error is None
    assert source.reconnects == 1
    assert len(opens) == 4
    # back-off doubles: 0.02, 0.04, 0.08 s between the failing attempts
    gaps = np.diff(opens[1:])
    assert gaps[0] >= 0.035 and gaps[1] >= 0.07
    assert any("attempt 1/10" in m for m in messages) and any("reconnected after 3" in m for m in messages)
    # the live probe frame (value 0) is not delivered; the rest arrive in order across the reconnect
    assert [f.index for f in frames] == list(range(10))
    assert [int(f.image[0, 0, 0]) for f in frames] == list(range(1, 11))


def test_the_back_off_stops_growing_at_its_maximum():
    # six failed reopenings from 0.05 s doubling would wait 0.05 + 0.1 + ... + 1.6 = 3.15 s; capped at 0.1 s, 0.55 s
    counter, opens = [0], []

    def opener():
        opens.append(time.monotonic())
        if len(opens) == 1:
            return SyntheticDevice(counter, fail_after=2)
        if len(opens) <= 7:
            raise VivimError("camera gone")
        return SyntheticDevice(counter, fail_after=None)

    source = FrameSource("fake camera", opener, live=False, reconnect=True, max_frames=4, reconnect_attempts=10,
                         reconnect_delay=0.05, reconnect_max_delay=0.1, log=lambda m: None)
    source.open().start()
    drain(source)
    source.stop()
    assert source.error is None and source.reconnects == 1 and len(opens) == 8
    gaps = np.diff(opens[1:])
    assert gaps[0] >= 0.09 and all(gap >= 0.095 for gap in gaps)  # 0.1 s each once capped (after 0.05 s doubled)
    assert gaps.sum() < 1.2, gaps  # far below the uncapped 3.1 s


def test_gives_up_after_the_last_attempt():
    counter = [0]
    opens = []

    def opener():
        opens.append(1)
        if len(opens) == 1:
            return SyntheticDevice(counter, fail_after=2)
        raise VivimError("camera gone")

    source = FrameSource("fake camera", opener, live=True, reconnect=True, reconnect_attempts=3,
                         reconnect_delay=0.01, log=lambda m: None)
    source.open().start()
    drain(source)
    source.stop()
    assert source.finished
    assert isinstance(source.error, VivimError) and "not recovered after 3" in str(source.error)
    assert len(opens) == 4


# -- error paths: one VivimError naming the input ---------------------------------------------------------------


def test_missing_video(tmp_path):
    with pytest.raises(VivimError, match="no such file"):
        create_source(SourceConfig(kind="video", location=str(tmp_path / "nope.mp4")))


def test_folder_given_as_video(tmp_path):
    with pytest.raises(VivimError, match="is a folder"):
        create_source(SourceConfig(kind="video", location=str(tmp_path)))


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 1000, b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000)])
def test_corrupt_video(tmp_path, content):
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    source = create_source(SourceConfig(kind="video", location=str(path)))
    with pytest.raises(VivimError, match="broken.mp4") as info:
        source.open()
    assert "\n" not in str(info.value)


def test_frames_folder_errors(tmp_path):
    with pytest.raises(VivimError, match="no such folder"):
        create_source(SourceConfig(kind="frames", location=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(VivimError, match="no images") as none:
        create_source(SourceConfig(kind="frames", location=str(tmp_path / "empty")))
    assert "video" not in str(none.value)
    (tmp_path / "exams").mkdir()
    for name in ("b.avi", "a.MP4", "._a.MP4"):  # a macOS resource fork is no video to name
        (tmp_path / "exams" / name).write_bytes(b"")
    with pytest.raises(VivimError) as videos:
        create_source(SourceConfig(kind="frames", location=str(tmp_path / "exams")))
    assert str(videos.value).endswith(f"; it holds video files: give one with --video, e.g. --video {tmp_path / 'exams' / 'a.MP4'}")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "0000.png").write_bytes(b"not a png")
    with pytest.raises(VivimError, match="unreadable image"):
        create_source(SourceConfig(kind="frames", location=str(bad))).open()


def test_missing_camera_device():
    with pytest.raises(VivimError, match="/dev/video97: no such device"):
        create_source(SourceConfig(kind="camera", location="/dev/video97"))


def test_camera_index_that_does_not_open():
    source = create_source(SourceConfig(kind="camera", location="97"))
    with pytest.raises(VivimError, match="--camera 97: cannot open"):
        source.open()


def test_bad_fourcc():
    with pytest.raises(VivimError, match="four characters"):
        sources.open_camera("0", fourcc="MJPEG")


@pytest.mark.skipif(sources.opencv_has_gstreamer(), reason="this OpenCV has GStreamer")
def test_gstreamer_missing_in_opencv():
    with pytest.raises(VivimError, match="no GStreamer support"):
        create_source(SourceConfig(kind="gst", location="videotestsrc ! videoconvert ! appsink"))


def test_image_folder_reads_in_name_order(tmp_path):
    folder = make_folder(tmp_path / "f", n=3)
    (folder / "notes.txt").write_text("ignored")
    assert [int(image.mean()) for image in _read_all(ImageFolder(str(folder)))] == [0, 30, 60]


def _read_all(reader):
    images = []
    while True:
        ok, image = reader.read()
        if not ok:
            return images
        images.append(image)


def test_image_folder_reads_numbered_frames_in_number_order(tmp_path):
    """frame_2 before frame_10, as the dataset loaders read them (name order would give 0, 1, 10, 11, 2, ...), and
    hidden files skipped like there."""
    import cv2

    folder = tmp_path / "numbered"
    folder.mkdir()
    for k in range(12):
        cv2.imwrite(str(folder / f"frame_{k}.png"), np.full((8, 8, 3), 20 * k, np.uint8))
    (folder / "._frame_3.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # hidden: not a frame
    assert [int(image.mean()) // 20 for image in _read_all(ImageFolder(str(folder)))] == list(range(12))


def test_stop_unblocks_a_waiting_capture_thread(tmp_path):
    path = make_video(tmp_path / "clip.mp4", n=30)
    source = create_source(SourceConfig(kind="video", location=str(path))).start()
    time.sleep(0.1)  # the queue is full, the thread waits for the consumer
    t0 = time.monotonic()
    source.stop()
    assert time.monotonic() - t0 < 2.0
    assert not any(t.name.startswith("capture") and t.is_alive() for t in threading.enumerate())


def test_frames_of_any_depth_and_layout_become_bgr_uint8():
    rng = np.random.default_rng()
    bgr = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    bgra = np.dstack([bgr, rng.integers(0, 256, (6, 7), dtype=np.uint8)])
    np.testing.assert_array_equal(sources._as_bgr(bgra), bgr)  # alpha dropped, channel order kept
    grey16 = rng.integers(0, 4096, (6, 7), dtype=np.uint16)  # a 12-bit sensor
    stretched = grey16.astype(np.float64) * (255.0 / grey16.max())  # the sensor's full range onto 0..255
    out = sources._as_bgr(grey16)
    assert out.dtype == np.uint8 and out.shape == (6, 7, 3)
    assert np.all(out == out[..., :1]) and np.abs(out[..., 0] - stretched).max() < 1.001  # truncated to 8 bits
    bgra16 = np.dstack([bgr.astype(np.uint16) * 257, np.full((6, 7), 65535, np.uint16)])
    np.testing.assert_array_equal(sources._as_bgr(bgra16), bgr)


def test_an_explicit_fps_wins_over_the_video_s_own_rate(tmp_path):
    video = make_video(tmp_path / "v.mp4", fps=10.0)
    assert create_source(SourceConfig(kind="video", location=str(video))).fps == 10.0
    assert create_source(SourceConfig(kind="video", location=str(video), fps=5.0)).fps == 5.0


def test_a_looped_folder_reads_the_images_listed_at_the_start(tmp_path):
    # the masks of a --frames run are named after this listing; an image added mid-run must not shift the loop
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(3):
        cv2.imwrite(str(folder / f"f{k}.png"), np.full((8, 8, 3), 50 * (k + 1), np.uint8))
    source = create_source(SourceConfig(kind="frames", location=str(folder), loop=True, max_frames=7))
    assert [os.path.basename(path) for path in source.image_files] == ["f0.png", "f1.png", "f2.png"]
    cv2.imwrite(str(folder / "f3.png"), np.full((8, 8, 3), 250, np.uint8))  # arrives after the run started
    frames = drain(source.start())
    source.stop()
    assert [int(frame.image[0, 0, 0]) for frame in frames] == [50, 100, 150, 50, 100, 150, 50]


def test_an_image_removed_during_the_run_is_named_as_such(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(2):
        cv2.imwrite(str(folder / f"f{k}.png"), np.full((8, 8, 3), 50, np.uint8))
    reader = ImageFolder(str(folder))
    (folder / "f1.png").unlink()
    assert reader.read()[0]
    with pytest.raises(VivimError, match=r"f1.png: removed during the run$"):
        reader.read()


def test_muting_the_native_stderr_restores_it_under_threads_and_tolerates_it_closed():
    """The mute swaps file descriptor 2 of the whole process: overlapping mutes from two threads must not leave it
    on /dev/null, and a process whose fd 2 was closed still opens its video (unmuted)."""
    from vivim.runtime.sources import native_stderr_muted

    before = os.fstat(2)
    start = threading.Barrier(4)

    def mute_a_while():
        start.wait()
        with native_stderr_muted():
            time.sleep(0.02)

    threads = [threading.Thread(target=mute_a_while) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    code = ("import os\nos.close(2)\nfrom vivim.runtime.sources import native_stderr_muted\n"
            "with native_stderr_muted():\n    pass\nprint('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
