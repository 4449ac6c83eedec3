"""Sinks: where each composited frame goes (window, overlay video, mask PNGs, a summary strip).

Every file is written to a temporary name in the target folder and renamed into place when complete, so an
interrupted run (Ctrl-C, a crash in the model) leaves either a finished file or none, never a broken one;
`close()` runs from the app's `finally` block.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import sys
import threading
from typing import Iterator, List, Optional, Protocol, Tuple

import numpy as np

from vivim import atomic, paths
from vivim.data.image_io import FRAME_EXTENSIONS, AtomicVideoWriter, DiskNearlyFull, check_disk_space, write_image
from vivim.errors import VivimError

import cv2  # noqa: E402


class Sink(Protocol):
    name: str  # what it writes, for messages: "--save out.mp4", "the window"

    def write(self, index: int, overlay: np.ndarray, mask: np.ndarray) -> None: ...

    def close(self) -> None: ...

    def saved(self) -> Optional[Tuple[str, str]]:
        """(what, path) of the file or folder this sink completed, for the end-of-run summary; None if none."""
        ...


class VideoSink:
    """The overlay video (--save); opened on the first frame, whose size it keeps.

    It keeps real time: a frame dropped at capture (a live source faster than the model) repeats the overlay shown
    before it, as the window did, so the video plays at the source's rate for the run's whole duration instead of
    fast-forwarding. Encoding runs on a thread of its own (OpenCV releases the GIL), off the path from capture to
    mask: each processed frame waits for room in a short queue, so every one is in the video, while repeats that
    find the queue full are skipped (and counted) instead of slowing the run down and dropping yet more frames."""

    QUEUE_FRAMES = 16  # about half a second at 30 FPS

    def __init__(self, path: str, fps: float) -> None:
        self.path = path
        self.name = f"--save {path}"  # in messages
        paths.check_writable(path, "--save")
        check_disk_space(path, self.name)  # before the run, not at its first frame
        self._video = AtomicVideoWriter(path, fps, what=self.name)
        self._committed = False
        self._size: Optional[Tuple[int, int]] = None  # (width, height) of the first frame
        self._last: Optional[Tuple[int, np.ndarray]] = None  # (capture index, overlay) of the latest frame queued
        self._queue: "queue.Queue[Optional[np.ndarray]]" = queue.Queue(maxsize=self.QUEUE_FRAMES)
        self._encoder: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None  # the encoder's failure, raised once on the caller's thread
        self._failed = False  # the encoder stopped writing (it drains the queue from then on)
        self._finishable = False  # it stopped before the disk filled up: the video so far is kept
        self.repeats_skipped = 0

    @property
    def fps(self) -> float:
        return self._video.fps

    @fps.setter
    def fps(self, value: float) -> None:  # the source's rate, known once it opened (before the first frame)
        self._video.fps = value if value and value > 0 else 25.0

    @property
    def frames_written(self) -> int:
        return self._video.frames_written

    def write(self, index: int, overlay: np.ndarray, mask: np.ndarray) -> None:
        self._raise_encoder_error()
        size = (overlay.shape[1], overlay.shape[0])
        if self._size is None:
            self._size = size
        elif size != self._size:  # a camera changed mode on reconnect
            overlay = cv2.resize(overlay, self._size, interpolation=cv2.INTER_AREA)
        if self._last is not None:
            shown_index, shown = self._last
            dropped = index - shown_index - 1  # frames dropped at capture in between (none for a file's frames)
            for queued in range(max(dropped, 0)):
                try:
                    self._queue.put_nowait(shown)
                except queue.Full:
                    self.repeats_skipped += dropped - queued
                    break
        self._put(overlay)
        self._last = (index, overlay)

    def close(self) -> None:
        if self._encoder is not None:
            self._put(None)  # the encoder's last item: it stops after the frames before it
            self._encoder.join()
            self._encoder = None
        if self._failed and not self._finishable:  # no half video under the real name
            self._video.abort()
            self._raise_encoder_error()
            return
        self._committed = self._video.close() or self._committed
        self._raise_encoder_error()  # the disk filled up: the video so far is saved, and the run says why it stopped

    def saved(self) -> Optional[Tuple[str, str]]:
        if not self._committed:
            return None
        skipped = f" ({self.repeats_skipped} repeated frames skipped to keep up)" if self.repeats_skipped else ""
        return (f"overlay video{skipped}", self.path)

    def _put(self, frame: Optional[np.ndarray]) -> None:
        if self._encoder is None:
            self._encoder = threading.Thread(target=self._encode, name="vivim-video-encoder", daemon=True)
            self._encoder.start()
        while True:  # wait for room, but not on an encoder that died (it drains without writing then)
            try:
                self._queue.put(frame, timeout=0.1)
                return
            except queue.Full:
                if not self._encoder.is_alive():
                    return

    def _encode(self) -> None:
        while True:
            frame = self._queue.get()
            if frame is None:
                return
            if not self._failed:
                try:
                    self._video.write(frame)
                except BaseException as exc:  # disk (nearly) full, a codec refusing the size: reported by write/close
                    self._finishable = isinstance(exc, DiskNearlyFull)
                    self._error = DiskNearlyFull(f"{exc}, which are kept") if self._finishable else exc
                    self._failed = True

    def _raise_encoder_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


class MaskFolderSink:
    """One binary PNG (0/255) per processed frame. Named after the source image for a folder of frames (`names`, the
    images' stems in reading order: frame_0007.jpg -> frame_0007.png, ready to compare with ground truth), else by
    the frame's capture index (000000.png, ...).

    The folder is this run's output: masks an earlier vivim-run left there are removed when the run closes, so the
    folder never mixes two runs. A small JSON file beside the masks marks vivim-run's folders and lists the names a
    run may write. Files named like this run's masks in a folder without it are the user's (a ground-truth folder,
    say), and the run is refused before it starts rather than overwrite or delete them. Other files are not touched,
    and nothing is removed if no mask was written."""

    _NAME = re.compile(r"\d{6}\.png")
    MARKER = "vivim-run-masks.json"

    def __init__(self, folder: str, names: Optional[List[str]] = None, tool: str = "vivim-run") -> None:
        paths.check_writable(folder, "--save-masks", folder=True)
        self.folder = folder
        self.name = f"--save-masks {folder}"  # in messages
        self._complete = True  # False once a write failed: then the folder is not reported as saved
        self.names = names
        self.tool = tool  # vivim-eval writes its predictions the same way, one folder per video
        self.marker = f"{tool}-masks.json"
        planned = {f"{name}.png" for name in names} if names else set()
        present = set(os.listdir(folder))
        # index-named masks are vivim-run's own (video and camera input); vivim-eval never writes such names
        indexed = {name for name in present if self._NAME.fullmatch(name)} if tool == "vivim-run" else set()
        if not os.path.exists(os.path.join(folder, self.marker)):
            theirs = sorted(indexed | (planned & present))
            other = next((t for t in ("vivim-run", "vivim-eval") if t != tool
                          and os.path.exists(os.path.join(folder, f"{t}-masks.json"))), None)
            if theirs and other:  # the other tool's masks: never mixed, never replaced
                raise VivimError(f"--save-masks {folder}: holds {other}'s masks ({other}-masks.json, e.g. {theirs[0]}); "
                                 "choose another folder")
            if theirs:
                raise VivimError(f"--save-masks {folder}: holds {len(theirs)} mask-named file(s) (e.g. {theirs[0]}) "
                                 f"but no {self.marker}, so {self.tool} did not write them"
                                 f"{' (or one from before 2026-11-27 did)' if tool == 'vivim-run' else ''}; "
                                 f"choose another folder, or create an empty {self.marker} there to let it replace them")
            # other pictures (a ground-truth folder's 00000.png ...) would sit among the masks, never lined up with them
            pictures = sorted(name for name in present - planned
                              if os.path.splitext(name)[1].lower() in FRAME_EXTENSIONS and not name.startswith("."))
            if pictures:
                raise VivimError(f"--save-masks {folder}: already holds {len(pictures)} image(s) that {self.tool} did "
                                 f"not write (e.g. {pictures[0]}), which its masks would mix with; choose a new or empty "
                                 "folder")
            earlier: set[str] = set()
        else:
            listed = paths.files_listed_in(os.path.join(folder, self.marker))
            if listed is None:  # an empty marker (the hand-over the refusal names) or one from before the list
                earlier = indexed | (planned & present)
            else:  # the earlier run's own list; index-named masks are claimed by the marker itself
                earlier = indexed | (listed & present)
                theirs = sorted((planned & present) - listed)
                if theirs:
                    raise VivimError(f"--save-masks {folder}: holds {len(theirs)} file(s) named like this run's masks "
                                     f"(e.g. {theirs[0]}) that no {self.tool} wrote there; choose another folder")
        self._earlier = earlier
        self._planned = planned
        self.written = 0
        self.removed = 0
        self._names: set[str] = set()

    def _mark(self, files: set) -> None:
        atomic.write_json(os.path.join(self.folder, self.marker), {
            "written_by": self.tool,
            "masks": "<source image stem>.png, 0 or 255" if self.names else "<capture index, 6 digits>.png, 0 or 255",
            "files": sorted(files)})

    def write(self, index: int, overlay: np.ndarray, mask: np.ndarray) -> None:
        # --loop over a folder comes back to its first image: the mask of that image is written again
        name = f"{self.names[index % len(self.names)]}.png" if self.names else f"{index:06d}.png"
        with self._named_os_errors():
            if not self.written:  # before the first mask, listing all it may leave behind if the run dies
                self._mark(self._planned | self._earlier)
            write_image(os.path.join(self.folder, name), mask.astype(np.uint8) * 255)
        self._names.add(name)
        self.written += 1

    @contextlib.contextmanager
    def _named_os_errors(self) -> Iterator[None]:
        """A failed write (a full disk) as one line naming the folder; the folder is then not reported as saved."""
        try:
            yield
        except OSError as exc:
            self._complete = False
            raise VivimError(f"{self.name}: {exc.strerror or exc}; the masks written before stay") from None

    def close(self) -> None:
        if not self.written:
            return
        with self._named_os_errors():
            for name in sorted(self._earlier - self._names):
                path = os.path.join(self.folder, name)
                if os.path.isfile(path):
                    os.unlink(path)
                    self.removed += 1
            self._mark(self._names)  # now exactly what the folder holds of ours

    def saved(self) -> Optional[Tuple[str, str]]:
        if not self.written or not self._complete:
            return None
        notes = [f"{self.removed} of an earlier run removed"] if self.removed else []
        if self.written > len(self._names):  # --loop over a folder: each pass rewrote its images' masks
            notes.append(f"{len(self._names)} files for {self.written} frames: each pass of --loop rewrote them")
        return ("masks" + (f" ({'; '.join(notes)})" if notes else ""), self.folder)


def opencv_has_gui() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        text = line.strip()
        if text.startswith(("GTK", "QT", "Win32 UI", "Cocoa")) and ":" in text:
            if text.split(":", 1)[1].strip().upper().startswith("YES"):
                return True
    return False


class WindowSink:
    """An OpenCV window; pressing q or Esc asks the app to stop."""

    def __init__(self, title: str = "vivim-run") -> None:
        if not opencv_has_gui():
            raise VivimError(
                "--show: this OpenCV build has no GUI (opencv-python-headless); use --headless with --save, "
                "or install opencv-python"
            )
        self.title = title
        self.name = "the window"  # in messages
        self.quit_requested = False
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)

    def saved(self) -> Optional[Tuple[str, str]]:
        return None

    def write(self, index: int, overlay: np.ndarray, mask: np.ndarray) -> None:
        cv2.imshow(self.title, overlay)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.quit_requested = True

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass


class StripSink:
    """A PNG strip of up to `count` frames with their masks, spread over the run.

    The run length is unknown for live sources, so frames are sampled with a stride that doubles whenever the
    strip is full (keeping every other sample): the kept frames stay evenly spread over the whole run. With two
    or more tiles, the first frame starts the strip and the last one ends it.
    """

    def __init__(self, path: str, count: int = 6, height: int = 192) -> None:
        if not path.lower().endswith(".png"):
            raise VivimError(f"--strip {path}: use a .png file name")
        paths.check_writable(path, "--strip")
        self.path = path
        self.name = f"--strip {path}"  # in messages
        self._written = False
        self.count = max(1, count)
        self.height = height
        self._stride = 1
        self._seen = 0
        self._kept: List[Tuple[int, np.ndarray]] = []
        self._last: Optional[Tuple[int, np.ndarray]] = None  # the newest frame (each overlay is a fresh array)

    def _thumb(self, overlay: np.ndarray) -> np.ndarray:
        scale = self.height / overlay.shape[0]
        return cv2.resize(overlay, (max(1, round(overlay.shape[1] * scale)), self.height), interpolation=cv2.INTER_AREA)

    def write(self, index: int, overlay: np.ndarray, mask: np.ndarray) -> None:
        if self._seen % self._stride == 0:
            self._kept.append((index, self._thumb(overlay)))
            if len(self._kept) > 2 * self.count:
                self._kept = self._kept[::2]
                self._stride *= 2
        self._last = (index, overlay)
        self._seen += 1

    def close(self) -> None:
        if not self._kept:
            return
        if self._last is not None and self._last[0] != self._kept[-1][0]:
            self._kept.append((self._last[0], self._thumb(self._last[1])))
        picks = sorted({round(i * (len(self._kept) - 1) / max(1, self.count - 1)) for i in range(self.count)})
        chosen = [self._kept[i] for i in picks]  # evenly spread, first and last kept frame included
        tiles = []
        for index, thumb in chosen:
            tile = thumb.copy()
            cv2.putText(tile, f"#{index}", (6, self.height - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(tile)
            tiles.append(np.full((self.height, 4, 3), 255, dtype=np.uint8))  # white separator
        write_image(self.path, np.hstack(tiles[:-1]))
        self._written = True

    def saved(self) -> Optional[Tuple[str, str]]:
        return ("strip", self.path) if self._written else None


def display_available() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True
