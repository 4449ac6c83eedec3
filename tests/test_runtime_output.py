"""Overlay, sinks and statistics: blend maths, thresholds, video/mask/strip files, latency percentiles."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from vivim.errors import VivimError
from vivim.runtime.overlay import draw_hud, draw_mask, mask_from_logits, parse_color
from vivim.runtime.preprocess import Normalization, preprocess
from vivim.runtime.sinks import MaskFolderSink, StripSink, VideoSink
from vivim.runtime.stats import RunStats, write_json_atomic


def test_parse_color_forms():
    assert parse_color("255,0,0") == (0, 0, 255)  # R,G,B in, BGR out
    assert parse_color("#00ff80") == (128, 255, 0)
    assert parse_color("green") == (0, 255, 0)
    for bad in ("1,2", "red-ish", "300,0,0", "#12345"):
        with pytest.raises(VivimError, match="--color"):
            parse_color(bad)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_mask_threshold_matches_sigmoid(threshold):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(16, 16)).astype(np.float32)
    mask = mask_from_logits(logits, (16, 16, 3), threshold)
    np.testing.assert_array_equal(mask, 1.0 / (1.0 + np.exp(-logits.astype(np.float64))) > threshold)


def test_mask_upsampled_to_the_frame():
    logits = np.full((8, 8), -5.0, np.float32)
    logits[2:6, 2:6] = 5.0
    mask = mask_from_logits(logits, (32, 48, 3))
    assert mask.shape == (32, 48)
    assert mask[16, 24] and not mask[0, 0] and not mask[31, 47]


def test_draw_mask_blends_inside_and_keeps_outside():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:12, 8:20] = True
    out = draw_mask(frame, mask, color_bgr=(10, 200, 30), alpha=0.25, contour=False)
    expected = frame.astype(np.float64)
    expected[mask] = expected[mask] * 0.75 + np.array([10, 200, 30]) * 0.25
    np.testing.assert_allclose(out.astype(np.float64), expected, atol=1.0)
    np.testing.assert_array_equal(out[~mask], frame[~mask])
    assert not np.shares_memory(out, frame)
    with_outline = draw_mask(frame, mask, color_bgr=(10, 200, 30), alpha=0.0, contour=True)
    assert (with_outline != frame).any() and (with_outline[0, 0] == frame[0, 0]).all()


def _near_edge(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inner edge: mask pixels with a 4-neighbour outside the mask, pixels within one step of any such edge)."""
    padded = np.pad(mask, 1, constant_values=False)  # the frame border is an edge of the mask
    inner = mask & ~(padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    outer = ~mask & (padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:])
    return inner, inner | outer


@pytest.mark.parametrize("kind", ["rectangle", "speckle", "touching the frame, with a hole"])
def test_outline_is_a_thin_band_on_the_mask_edge(kind):
    rng = np.random.default_rng(3)
    frame = np.full((40, 60, 3), 7, np.uint8)
    if kind == "rectangle":
        mask = np.zeros((40, 60), bool)
        mask[10:25, 12:40] = True
    elif kind.startswith("touching"):
        mask = np.zeros((40, 60), bool)
        mask[:30, :45] = True
        mask[10:15, 20:30] = False
    else:  # an untrained model's output: hundreds of specks
        mask = rng.random((40, 60)) > 0.6
    color = (10, 200, 30)
    out = draw_mask(frame, mask, color_bgr=color, alpha=0.0, contour=True, thickness=2)
    drawn = (out != frame).any(axis=2)
    inner_edge, near = _near_edge(mask)
    assert (out[drawn] == color).all()
    assert not (drawn & ~near).any(), "outline pixels away from the mask edge"
    assert drawn[inner_edge].all(), "mask edge pixels without outline"


def test_hud_draws_text():
    image = np.zeros((120, 200, 3), np.uint8)
    draw_hud(image, ["12.0 FPS  latency 40 ms", "pytorch cpu"])
    assert image[:40].any() and not image[80:].any()
    # a small frame keeps the picture: the block stays within about a quarter of its height (the first line at least)
    for height in (64, 96, 480):
        small = np.zeros((height, height, 3), np.uint8)
        draw_hud(small, ["12.0 FPS  latency 40 ms", "pytorch cpu", "frame 120", "mask 3.2 %"])
        rows = np.flatnonzero(small.any(axis=(1, 2)))
        assert rows.size and rows.max() < height // 4 + 4, (height, rows.max())
    tiny = np.zeros((17, 23, 3), np.uint8)  # not even one line fits a quarter of it: no HUD over the mask
    draw_hud(tiny, ["12.0 FPS  latency 40 ms"])
    assert not tiny.any()


def test_preprocess_matches_formula():
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    norm = Normalization()
    out = preprocess(frame, 64, norm)
    rgb = frame[..., ::-1].astype(np.float64) / 255.0
    expected = ((rgb - np.array(norm.mean)) / np.array(norm.std)).transpose(2, 0, 1)
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert preprocess(frame, (32, 48), norm).shape == (3, 32, 48)


def _frames(n, h=40, w=56):
    return [np.full((h, w, 3), (15 * k) % 256, np.uint8) for k in range(n)]


def test_video_sink_writes_every_frame_atomically(tmp_path):
    path = tmp_path / "sub" / "out.mp4"
    sink = VideoSink(str(path), fps=12.0)
    for k, frame in enumerate(_frames(9)):
        sink.write(k, frame, np.zeros(frame.shape[:2], bool))
        assert not path.exists()  # only the temporary file exists while writing
    sink.close()
    capture = cv2.VideoCapture(str(path))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 9
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    assert count == 9
    assert os.listdir(path.parent) == ["out.mp4"]


def test_video_sink_without_frames_writes_nothing(tmp_path):
    sink = VideoSink(str(tmp_path / "empty.mp4"), fps=10.0)
    sink.close()
    assert os.listdir(tmp_path) == []
    assert sink.saved() is None  # so the run's summary does not claim a video


def test_sinks_report_only_what_they_completed(tmp_path):
    frames = _frames(3)
    sinks = [VideoSink(str(tmp_path / "o.mp4"), fps=10.0), MaskFolderSink(str(tmp_path / "m")),
             StripSink(str(tmp_path / "s.png"), count=2)]
    assert [sink.saved() for sink in sinks] == [None, None, None]
    for sink in sinks:
        for k, frame in enumerate(frames):
            sink.write(k, frame, np.zeros(frame.shape[:2], bool))
        sink.close()
    assert [sink.saved() for sink in sinks] == [
        ("overlay video", str(tmp_path / "o.mp4")), ("masks", str(tmp_path / "m")), ("strip", str(tmp_path / "s.png"))]
    assert all(os.path.exists(path) for _, path in (sink.saved() for sink in sinks))


def _listing(folder) -> list:
    return sorted(os.listdir(folder))


def test_a_folder_of_other_pictures_is_refused_for_masks(tmp_path):
    # a ground-truth folder (00000.png, 5 digits) beside which 000000.png ... would never line up file by file
    folder = tmp_path / "gt"
    folder.mkdir()
    for k in range(3):
        cv2.imwrite(str(folder / f"{k:05d}.png"), np.zeros((4, 4), np.uint8))
    (folder / "readme.txt").write_text("labels by Dr X")
    with pytest.raises(VivimError) as refused:
        MaskFolderSink(str(folder))
    assert str(refused.value) == (f"--save-masks {folder}: already holds 3 image(s) that vivim-run did not write (e.g. "
                                  "00000.png), which its masks would mix with; choose a new or empty folder")
    assert _listing(folder) == ["00000.png", "00001.png", "00002.png", "readme.txt"]  # nothing written
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("text only")
    MaskFolderSink(str(tmp_path / "notes")).close()  # files that are no pictures do not mix with masks


def test_mask_folder_replaces_an_earlier_run_instead_of_mixing(tmp_path):
    folder = tmp_path / "m"
    earlier = MaskFolderSink(str(folder))
    for k, frame in zip((50, 1), _frames(2)):
        earlier.write(k, frame, np.zeros(frame.shape[:2], bool))
    earlier.close()
    (folder / "notes.txt").write_text("mine")
    sink = MaskFolderSink(str(folder))
    sink.close()  # no mask written: the earlier run's masks stay
    assert _listing(folder) == ["000001.png", "000050.png", "notes.txt", MaskFolderSink.MARKER]
    sink = MaskFolderSink(str(folder))
    for k, frame in zip((1, 2), _frames(2)):
        sink.write(k, frame, np.ones(frame.shape[:2], bool))
    sink.close()
    assert _listing(folder) == ["000001.png", "000002.png", "notes.txt", MaskFolderSink.MARKER]
    assert sink.saved() == ("masks (1 of an earlier run removed)", str(folder))
    assert cv2.imread(str(folder / "000001.png"), cv2.IMREAD_GRAYSCALE).max() == 255  # this run's mask


def test_mask_folder_never_touches_masks_it_did_not_write(tmp_path):
    folder = tmp_path / "ground_truth"
    folder.mkdir()
    for name in ("000000.png", "000007.png"):
        cv2.imwrite(str(folder / name), np.full((4, 4), 255, np.uint8))
    with pytest.raises(VivimError, match=r"^--save-masks .*ground_truth: holds 2 mask-named file\(s\) \(e.g. 000000.png\) "
                                         r"but no vivim-run-masks.json"):
        MaskFolderSink(str(folder))
    assert _listing(folder) == ["000000.png", "000007.png"]
    (folder / MaskFolderSink.MARKER).write_text("")  # the way out the message names: the folder is handed over
    sink = MaskFolderSink(str(folder))
    sink.write(0, _frames(1)[0], np.ones((24, 32), bool))
    sink.close()
    assert _listing(folder) == ["000000.png", MaskFolderSink.MARKER]


def test_sinks_refuse_unwritable_paths_before_any_frame(tmp_path):
    blocker = tmp_path / "weights.txt"
    blocker.write_text("x")
    for make, flag in ((lambda p: VideoSink(p, fps=10.0), "--save"), (StripSink, "--strip")):
        with pytest.raises(VivimError, match=f"^{flag} .*weights.txt is a file, not a folder"):
            make(str(blocker / "out.png" if flag == "--strip" else blocker / "out.mp4"))


def test_mask_folder_sink(tmp_path):
    sink = MaskFolderSink(str(tmp_path / "masks"))
    rng = np.random.default_rng(3)
    masks = [rng.random((10, 12)) > 0.5 for _ in range(3)]
    for k, mask in enumerate(masks):
        sink.write(k + 5, np.zeros((10, 12, 3), np.uint8), mask)
    sink.close()
    assert _listing(tmp_path / "masks") == ["000005.png", "000006.png", "000007.png", MaskFolderSink.MARKER]
    back = cv2.imread(str(tmp_path / "masks" / "000006.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(back, masks[1].astype(np.uint8) * 255)
    (tmp_path / "file").write_text("x")
    with pytest.raises(VivimError, match="not a folder"):
        MaskFolderSink(str(tmp_path / "file"))


@pytest.mark.parametrize("n", [1, 4, 7, 50, 51])
def test_strip_spreads_frames_over_the_run(tmp_path, n):
    path = tmp_path / "strip.png"
    sink = StripSink(str(path), count=6, height=40)
    for k in range(n):  # frame k is grey level 5k, so a tile tells which frame it shows
        frame = np.full((40, 56, 3), 5 * k, np.uint8)
        sink.write(k, frame, np.zeros(frame.shape[:2], bool))
    sink.close()
    strip = cv2.imread(str(path))
    tiles = min(n, 6)
    assert strip.shape == (40, tiles * 56 + (tiles - 1) * 4, 3)
    shown = [round(strip[:20, t * 60:t * 60 + 56].mean() / 5) for t in range(tiles)]  # top half: no label text
    # spread over the whole run: in order, from the first frame to the last, no gap wider than two spacings
    assert shown == sorted(set(shown)) and shown[0] == 0 and shown[-1] == n - 1, shown
    assert max([b - a for a, b in zip(shown, shown[1:])], default=0) <= 2 * n / 5, shown
    with pytest.raises(VivimError, match=".png"):
        StripSink(str(tmp_path / "strip.jpg"))


def test_run_stats_percentiles_match_numpy():
    stats = RunStats()
    rng = np.random.default_rng(4)
    t = 100.0
    latencies = rng.uniform(0.01, 0.2, size=50)
    for k, lat in enumerate(latencies):
        t += 0.05
        stats.record(t_capture=t - lat, infer_s=lat / 2, t_done=t)
    summary = stats.summary(frames_captured=60, frames_dropped=10, backend="x")
    ms = latencies * 1000
    for q in (50, 90, 99):
        assert summary["latency_ms"][f"p{q}"] == pytest.approx(np.percentile(ms, q), abs=1e-3)
        assert summary["infer_ms"][f"p{q}"] == pytest.approx(np.percentile(ms / 2, q), abs=1e-3)
    assert summary["preprocess_ms"]["n"] == 0 and summary["preprocess_ms"]["p50"] is None
    assert summary["frames_captured"] == 60 and summary["frames_dropped"] == 10 and summary["frames_processed"] == 50
    # FPS from the first capture to the last mask
    assert summary["fps"] == pytest.approx(50 / (t - (100.05 - latencies[0])), rel=1e-3)
    empty = RunStats().summary()
    assert empty["latency_ms"]["p50"] is None and empty["frames_processed"] == 0


def test_the_hud_frame_rate_follows_the_smoothed_interval_between_masks():
    stats = RunStats()
    assert stats.live_fps is None  # no interval yet
    stats.record(t_capture=0.0, infer_s=0.01, t_done=0.0)
    stats.record(t_capture=0.05, infer_s=0.01, t_done=0.1)  # first interval 0.1 s starts the average
    assert stats.live_fps == pytest.approx(10.0)
    stats.record(t_capture=0.25, infer_s=0.01, t_done=0.3)  # 0.2 s now weighs 0.1 of the average
    assert stats.live_fps == pytest.approx(1 / (0.9 * 0.1 + 0.1 * 0.2))
    stats.preprocess_ms.extend([1.0, 3.0, 2.0])
    assert stats.summary()["preprocess_ms"]["p50"] == pytest.approx(2.0)


def test_write_json_atomic(tmp_path):
    path = tmp_path / "a" / "stats.json"
    write_json_atomic(str(path), {"fps": 1.5})
    assert json.loads(path.read_text()) == {"fps": 1.5}
    assert os.listdir(path.parent) == ["stats.json"]


def test_headless_is_automatic_without_a_display(monkeypatch, tmp_path):
    from vivim.runtime.app import build_sinks
    from vivim.runtime.config import RunConfig

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    base = {"source": {"kind": "video", "location": "x.mp4"}, "backend": {"kind": "onnx", "model": "m.onnx"}}
    messages = []
    assert build_sinks(RunConfig.build(None, base), messages.append) == [] and messages == []
    sinks = build_sinks(RunConfig.build(None, {**base, "sink": {"show": True, "strip": str(tmp_path / "s.png")}}),
                        messages.append)
    assert [type(s).__name__ for s in sinks] == ["StripSink"]
    assert len(messages) == 1 and "no display" in messages[0]


def test_mask_folder_removes_only_names_an_earlier_run_listed(tmp_path):
    import json

    folder = tmp_path / "m"
    earlier = MaskFolderSink(str(folder), names=["a_1", "a_2", "a_3"])
    for k, frame in enumerate(_frames(2)):  # stopped after two of its three images
        earlier.write(k, frame, np.zeros(frame.shape[:2], bool))
    # while it runs, the marker lists every name it may leave behind (a crash leaves no stray mask unclaimed) ...
    assert json.loads((folder / MaskFolderSink.MARKER).read_text())["files"] == ["a_1.png", "a_2.png", "a_3.png"]
    earlier.close()
    # ... and once closed, exactly the masks it wrote
    assert json.loads((folder / MaskFolderSink.MARKER).read_text())["files"] == ["a_1.png", "a_2.png"]
    outside = tmp_path / "keep.png"
    outside.write_bytes(b"not vivim-run's")
    (folder / "a_3.png").write_bytes(b"the user's")  # named like a mask, but no run wrote it
    marker = json.loads((folder / MaskFolderSink.MARKER).read_text())
    marker["files"] += ["../keep.png", "notes.txt"]  # an edited marker may not reach outside or beyond masks
    (folder / MaskFolderSink.MARKER).write_text(json.dumps(marker))
    (folder / "notes.txt").write_text("mine")
    sink = MaskFolderSink(str(folder))
    sink.write(0, _frames(1)[0], np.ones((24, 32), bool))
    sink.close()
    assert _listing(folder) == ["000000.png", "a_3.png", "notes.txt", MaskFolderSink.MARKER]
    assert outside.read_bytes() == b"not vivim-run's" and (folder / "a_3.png").read_bytes() == b"the user's"
    assert sink.removed == 2


def test_a_marked_folder_still_refuses_masks_no_run_wrote(tmp_path):
    # an index-named run marked the folder; ground truth copied in later must not be overwritten by a named run
    folder = tmp_path / "m"
    first = MaskFolderSink(str(folder))
    first.write(0, _frames(1)[0], np.zeros((24, 32), bool))
    first.close()
    cv2.imwrite(str(folder / "frame_1.png"), np.full((4, 4), 255, np.uint8))
    with pytest.raises(VivimError, match=r"holds 1 file\(s\) named like this run's masks \(e.g. frame_1.png\) that no "
                                         r"vivim-run wrote there"):
        MaskFolderSink(str(folder), names=["frame_0", "frame_1"])
    assert _listing(folder) == ["000000.png", "frame_1.png", MaskFolderSink.MARKER]


def test_looped_image_folder_writes_each_pass_under_that_image_name(tmp_path):
    """--loop over a folder of images comes back to the first image with a growing capture index: the mask written
    for image k on the second pass must replace image k's mask, not pile onto the last image's name."""
    names = ["scan_03", "scan_10", "scan_11", "scan_20"]
    rng = np.random.default_rng()
    passes = [[rng.random((10, 12)) > 0.5 for _ in names] for _ in range(2)]  # clip context differs per pass
    folder = tmp_path / "masks"
    sink = MaskFolderSink(str(folder), names=names)
    for p, masks in enumerate(passes):
        for k, mask in enumerate(masks):
            sink.write(p * len(names) + k, np.zeros((10, 12, 3), np.uint8), mask)
            back = cv2.imread(str(folder / f"{names[k]}.png"), cv2.IMREAD_GRAYSCALE)
            np.testing.assert_array_equal(back, mask.astype(np.uint8) * 255, err_msg=f"pass {p} image {k}")
    sink.close()
    assert _listing(folder) == sorted([f"{name}.png" for name in names] + [MaskFolderSink.MARKER])
    for name, mask in zip(names, passes[1]):
        np.testing.assert_array_equal(cv2.imread(str(folder / f"{name}.png"), cv2.IMREAD_GRAYSCALE),
                                      mask.astype(np.uint8) * 255, err_msg=name)
    assert sink.saved() == ("masks (4 files for 8 frames: each pass of --loop rewrote them)", str(folder))


def test_a_video_that_cannot_be_moved_into_place_leaves_no_temporary_and_names_the_target(tmp_path):
    """The rename can fail at the very end (here a folder appeared under the name): the error names --save's path,
    not the hidden temporary, and the temporary is removed."""
    path = tmp_path / "out.mp4"
    sink = VideoSink(str(path), fps=10.0)
    for k, frame in enumerate(_frames(3)):
        sink.write(k, frame, np.zeros(frame.shape[:2], bool))
    path.mkdir()
    with pytest.raises(OSError) as error:
        sink.close()
    assert error.value.filename == str(path)
    assert os.listdir(tmp_path) == ["out.mp4"] and path.is_dir() and not os.listdir(path)
    assert sink.saved() is None


def test_write_video_leaves_nothing_behind_when_a_frame_fails(tmp_path):
    from vivim.data.image_io import write_video

    def frames():
        yield from _frames(2)
        raise RuntimeError("decoder died")

    with pytest.raises(RuntimeError):
        write_video(tmp_path / "clip.mp4", frames())
    assert os.listdir(tmp_path) == []
    write_video(tmp_path / "clip.mp4", _frames(4))
    capture = cv2.VideoCapture(str(tmp_path / "clip.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    capture.release()


def test_the_overlay_video_keeps_real_time_across_dropped_frames(tmp_path):
    """A live source drops frames the model cannot keep up with: the video repeats the overlay shown meanwhile, so it
    lasts as long as the run instead of playing fast-forward."""
    path = tmp_path / "live.mp4"
    sink = VideoSink(str(path), fps=10.0)
    shades = {0: 20, 1: 80, 4: 160, 5: 240}  # frames 2 and 3 were dropped at capture
    for index, shade in shades.items():
        frame = np.full((48, 64, 3), shade, np.uint8)
        sink.write(index, frame, np.zeros(frame.shape[:2], bool))
    sink.close()
    capture = cv2.VideoCapture(str(path))
    seen = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        seen.append(float(image.mean()))
    capture.release()
    assert len(seen) == 6 and sink.frames_written == 6
    np.testing.assert_allclose(seen, [20, 80, 80, 80, 160, 240], atol=6)


def test_an_encoder_failure_reaches_the_caller_once_and_leaves_no_file(tmp_path, monkeypatch):
    """Encoding runs on its own thread: its error (a full disk, a codec refusing the size) must still stop the
    run with that error, and no partial video may appear under the real name."""
    from vivim.data.image_io import AtomicVideoWriter

    real_write = AtomicVideoWriter.write

    def failing_write(self, bgr):
        if self.frames_written == 2:
            raise OSError(28, "No space left on device", self.what)
        real_write(self, bgr)

    monkeypatch.setattr(AtomicVideoWriter, "write", failing_write)
    path = tmp_path / "o.mp4"
    sink = VideoSink(str(path), fps=10.0)
    raised = []
    for k, frame in enumerate(_frames(40)):
        try:
            sink.write(k, frame, np.zeros(frame.shape[:2], bool))
        except OSError as exc:
            raised.append(exc)
    sink.close()  # the error was reported already: closing discards the video quietly
    assert len(raised) == 1 and raised[0].errno == 28
    assert os.listdir(tmp_path) == [] and sink.saved() is None


def test_repeats_that_find_the_encoder_busy_are_skipped_and_counted(tmp_path, monkeypatch):
    """A long capture gap must not queue unbounded repeats on the live path: at most the queue's room, the rest
    counted and reported with the video."""
    path = tmp_path / "gap.mp4"
    sink = VideoSink(str(path), fps=10.0)
    frame = np.full((32, 48, 3), 90, np.uint8)
    sink.write(0, frame, np.zeros(frame.shape[:2], bool))
    sink.write(1000, frame, np.zeros(frame.shape[:2], bool))
    sink.close()
    assert sink.repeats_skipped > 0
    assert sink.frames_written + sink.repeats_skipped == 1001  # every capture index: written or counted
    what, where = sink.saved()
    assert where == str(path) and f"{sink.repeats_skipped} repeated frames skipped" in what


def test_a_folder_of_the_other_tools_masks_is_named_as_such(tmp_path):
    """vivim-eval's predictions (its own list file) handed to vivim-run --save-masks, and the reverse: the refusal
    says whose masks they are instead of 'no one wrote them'."""
    folder = tmp_path / "pred"
    evaluation = MaskFolderSink(str(folder), names=["frame_1", "frame_2"], tool="vivim-eval")
    evaluation.write(0, np.empty(0), np.ones((4, 4), bool))
    evaluation.close()
    with pytest.raises(VivimError, match=r"holds vivim-eval's masks \(vivim-eval-masks.json, e.g. frame_1.png\); "
                                         r"choose another folder"):
        MaskFolderSink(str(folder), names=["frame_1", "frame_2"])


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_an_odd_sized_video_keeps_its_last_row_and_column(tmp_path, suffix):
    """4:2:0 codecs crop an odd frame size by one pixel (93 x 67 became 92 x 66): the writer repeats the last row
    and column instead, so every pixel of the frame is in the video."""
    import cv2

    from vivim.data.image_io import write_video

    frame = np.zeros((67, 93, 3), np.uint8)
    frame[:, -8:] = 255  # a bright band along the right edge and the bottom, where a crop would eat into it
    frame[-8:, :] = 255
    path = tmp_path / f"odd{suffix}"
    write_video(path, [frame] * 3)
    ok, decoded = cv2.VideoCapture(str(path)).read()
    assert ok and decoded.shape == (68, 94, 3)
    assert decoded[:67, -2:].mean() > 200 and decoded[-2:, :93].mean() > 200  # the edges made it in
    assert np.abs(decoded[:67, :93].astype(float) - frame).mean() < 8  # the same picture


def _count_frames(path):
    capture, count = cv2.VideoCapture(str(path)), 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def test_a_disk_filling_up_stops_the_video_while_it_can_still_be_finished(tmp_path, monkeypatch):
    """OpenCV's writer does not report a full disk; it leaves a file without its index, which no player opens.
    The free space is watched instead: the video stops in time, is finished and kept, and the run is told why."""
    import shutil

    from vivim.data.image_io import AtomicVideoWriter, DiskNearlyFull

    real_usage = shutil.disk_usage
    frames_at_full = 20

    written = []  # the sink, once made

    def filling_disk(path):  # plenty of room until the sink's 20th frame, then less than the reserve
        usage = real_usage(path)
        full = written and written[0].frames_written >= frames_at_full
        return usage._replace(free=AtomicVideoWriter.MIN_RESERVE // 2 if full else 10 * 2**30)

    monkeypatch.setattr(shutil, "disk_usage", filling_disk)
    path = tmp_path / "o.mp4"
    sink = VideoSink(str(path), fps=10.0)
    written.append(sink)
    raised = []
    for k, frame in enumerate(_frames(60)):
        try:
            sink.write(k, frame, np.zeros(frame.shape[:2], bool))
        except DiskNearlyFull as exc:
            raised.append(exc)
            break
    sink.close()
    stopped_at = AtomicVideoWriter.CHECK_EVERY * -(-frames_at_full // AtomicVideoWriter.CHECK_EVERY)  # the next look
    assert len(raised) == 1 and f"--save {path}: the disk is nearly full" in str(raised[0])
    assert str(raised[0]).endswith(f"stops after {stopped_at} frames, which are kept")
    assert _count_frames(path) == stopped_at and sink.saved() is not None
    assert os.listdir(tmp_path) == ["o.mp4"]


def test_a_video_the_disk_cut_short_is_not_moved_into_place(tmp_path):
    """A file OpenCV finished without a readable start (what a full disk leaves) is an error, not a saved video."""
    from vivim.data.image_io import AtomicVideoWriter

    path = tmp_path / "o.mp4"
    video = AtomicVideoWriter(path, 10.0, what=f"--save {path}")
    for frame in _frames(5):
        video.write(frame)
    video._writer.release()
    os.truncate(video._tmp, os.path.getsize(video._tmp) // 2)  # the index and the last frames never reached the disk

    class FinishedAlready:
        def release(self):
            pass

    video._writer = FinishedAlready()
    with pytest.raises(VivimError, match=r"--save .*o\.mp4: the video could not be finished \(.*\); nothing was saved"):
        video.close()
    assert os.listdir(tmp_path) == []


def test_a_full_disk_refuses_the_video_before_the_run(tmp_path, monkeypatch):
    import shutil

    from vivim.data.image_io import AtomicVideoWriter

    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=AtomicVideoWriter.MIN_RESERVE - 1))
    with pytest.raises(VivimError, match=r"^--save .*o\.mp4: its disk is full \(8 MB left\)$"):
        VideoSink(str(tmp_path / "o.mp4"), fps=10.0)
    assert os.listdir(tmp_path) == []
