"""Frame sources: a capture thread per source, monotonic capture timestamps, drop counting, reconnects.

Live sources (camera, GStreamer, files with --realtime) keep only the newest frame: a slow model drops frames
instead of falling behind the sensor, and each drop is counted. Files and folders (without --realtime) deliver
every frame, in order, with back-pressure. A live source that stops delivering is reopened with exponential
back-off and each attempt is reported; after `reconnect_attempts` failures the run ends with an error.

Every failure a user can cause (missing device or file, corrupt video, OpenCV without GStreamer) is raised as a
one-line `VivimError` from `start()`, in the caller's thread, before any model work starts.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Protocol, Tuple

import numpy as np

from vivim import paths
from vivim.errors import VivimError

os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")  # keep decoder chatter out of the one-line errors
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
import cv2  # noqa: E402

try:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
except AttributeError:  # pragma: no cover - very old OpenCV
    pass


@dataclass
class Frame:
    index: int  # capture order, counting dropped frames too
    image: np.ndarray  # BGR uint8, H x W x 3
    t_capture: float  # time.monotonic() when the frame left the device


class Capture(Protocol):
    """The part of cv2.VideoCapture a source needs (also implemented by `ImageFolder`)."""

    def read(self) -> Tuple[bool, Optional[np.ndarray]]: ...

    def release(self) -> None: ...


class Logger(Protocol):
    def __call__(self, message: str, /) -> None: ...


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class LatestSlot:
    """One-frame mailbox: a new frame replaces an unread one (counted as dropped)."""

    def __init__(self) -> None:
        self._frame: Optional[Frame] = None
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, frame: Frame, stop: threading.Event) -> None:
        with self._cond:
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._cond.notify()

    def get(self, timeout: float) -> Optional[Frame]:
        with self._cond:
            if self._frame is None:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return frame

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class EveryFrameQueue:
    """Bounded FIFO: the capture thread waits for the consumer, so no frame is lost."""

    dropped = 0

    def __init__(self, depth: int = 4) -> None:
        self._queue: "queue.Queue[Frame]" = queue.Queue(maxsize=depth)

    def put(self, frame: Frame, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._queue.put(frame, timeout=0.05)
                return
            except queue.Full:
                continue

    def get(self, timeout: float) -> Optional[Frame]:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def wake(self) -> None:
        pass


class FrameSource:
    """Runs `open_capture()` and a capture thread; `read()` hands frames to the pipeline."""

    def __init__(
        self,
        name: str,
        open_capture: Callable[[], Capture],
        *,
        live: bool,
        reconnect: bool,
        loop: bool = False,
        pace_fps: Optional[float] = None,
        max_frames: Optional[int] = None,
        reconnect_attempts: int = 10,
        reconnect_delay: float = 0.5,
        reconnect_max_delay: float = 5.0,
        fps: Optional[float] = None,
        declared_frames: Optional[int] = None,
        log: Logger = _stderr,
    ) -> None:
        self.name = name
        self.declared_frames = declared_frames  # a file's or folder's frame count: the progress total, and damage
        # told apart from the end
        self.ended_early = False
        self.live = live
        self.fps = fps  # nominal frame rate (for --save), None when unknown
        self._open = open_capture
        self._reconnect = reconnect
        self._loop = loop
        self._pace_fps = pace_fps
        self._max_frames = max_frames
        self._attempts = reconnect_attempts
        self._delay = reconnect_delay
        self._max_delay = reconnect_max_delay
        self._log = log
        self._mailbox = LatestSlot() if live else EveryFrameQueue()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._capture: Optional[Capture] = None
        self.frames_captured = 0
        self.reconnects = 0
        self.error: Optional[VivimError] = None
        self.frame_shape: Optional[Tuple[int, ...]] = None
        self._probe: Optional[np.ndarray] = None
        self.image_files: Optional[List[str]] = None  # a --frames folder's images, in reading order (mask names)

    # -- consumer side ---------------------------------------------------------------------------------------
    def open(self) -> "FrameSource":
        """Open the device/file and read one frame here, so bad input fails before the model is loaded."""
        self._capture = self._open()
        ok, image = self._capture.read()
        if not ok or image is None:
            self._capture.release()
            self._capture = None
            raise VivimError(f"{self.name}: no frame could be read (unreadable or corrupt input)")
        self._probe = _as_bgr(image)
        self.frame_shape = self._probe.shape
        if self.fps is None:
            self.fps = _capture_fps(self._capture)
        return self

    def start(self) -> "FrameSource":
        """Start the capture thread (opens first when `open` was not called)."""
        if self._capture is None:
            self.open()
        first = None
        if not self._reconnect and self._probe is not None:
            first = self._stamp(self._probe)  # a file's first frame is frame 0; a device's probe is stale by now
        self._probe = None
        self._thread = threading.Thread(target=self._run, args=(first,), name=f"capture {self.name}", daemon=True)
        self._thread.start()
        return self

    def read(self, timeout: float = 0.1) -> Optional[Frame]:
        """The next frame (newest for live sources), or None when none arrived within `timeout`.

        Frames of files and folders are stamped when the pipeline takes them: a file frame is available on
        demand, so its latency starts when the pipeline could first use it, not when the read-ahead decoded it.
        """
        frame = self._mailbox.get(timeout)
        if frame is not None and not self.live:
            frame.t_capture = time.monotonic()
        return frame

    @property
    def finished(self) -> bool:
        """True once the capture thread has ended (end of file, max frames, stop, or a lost device)."""
        return self._done.is_set()

    @property
    def frames_dropped(self) -> int:
        return self._mailbox.dropped

    def stop(self) -> None:
        self._stop.set()
        self._mailbox.wake()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    # -- capture thread --------------------------------------------------------------------------------------
    def _stamp(self, image: np.ndarray) -> Frame:
        frame = Frame(index=self.frames_captured, image=_as_bgr(image), t_capture=time.monotonic())
        self.frames_captured += 1
        return frame

    def _run(self, first: Optional[Frame]) -> None:
        try:
            t_start = time.monotonic()
            if first is not None:
                self._deliver(first)
            frames_at_restart = -1
            while not self._stop.is_set() and not self._reached_max():
                if self._pace_fps:  # --realtime: frame k is due at t_start + k / fps
                    due = t_start + self.frames_captured / self._pace_fps
                    self._stop.wait(max(0.0, due - time.monotonic()))
                    if self._stop.is_set():
                        break
                assert self._capture is not None
                ok, image = self._capture.read()
                if ok and image is not None:
                    self._deliver(self._stamp(image))
                    continue
                if self._reconnect:
                    if not self._reopen():
                        break
                elif self._loop:
                    if frames_at_restart == self.frames_captured:
                        break  # the file yields no frame after a restart: stop instead of spinning
                    frames_at_restart = self.frames_captured
                    self._restart()
                    t_start = time.monotonic() - self.frames_captured / (self._pace_fps or 1.0)
                else:
                    self._check_complete()
                    break  # end of file
        except VivimError as exc:
            self.error = exc
        except Exception as exc:  # a capture thread must never die silently
            self.error = VivimError(f"{self.name}: capture failed: {exc}")
        finally:
            self._done.set()
            self._mailbox.wake()

    def _check_complete(self) -> None:
        """A file that stops decoding well before the frame count its header declares is damaged, not finished."""
        declared = self.declared_frames
        if declared and declared - self.frames_captured > max(2, declared // 100):
            self.ended_early = True
            self._log(f"warning: {self.name}: decoding stopped at frame {self.frames_captured} of the {declared} "
                      "its header declares (a damaged or truncated file?)")

    def _deliver(self, frame: Frame) -> None:
        self._mailbox.put(frame, self._stop)

    def _reached_max(self) -> bool:
        return self._max_frames is not None and self.frames_captured >= self._max_frames

    def _restart(self) -> None:
        """--loop: reopen the file from its first frame."""
        assert self._capture is not None
        self._capture.release()
        self._capture = self._open()

    def _reopen(self) -> bool:
        """A live source stopped delivering: reopen it with exponential back-off; False after giving up."""
        assert self._capture is not None
        self._capture.release()
        delay = self._delay
        for attempt in range(1, self._attempts + 1):
            self._log(f"warning: {self.name}: no frame, reopening in {delay:.1f} s (attempt {attempt}/{self._attempts})")
            if self._stop.wait(delay):
                return False
            try:
                capture = self._open()
            except VivimError:
                capture = None
            if capture is not None:
                ok, image = capture.read()
                if ok and image is not None:
                    self._capture = capture
                    self.reconnects += 1
                    self._log(f"{self.name}: reconnected after {attempt} attempt(s)")
                    self._deliver(self._stamp(image))
                    return True
                capture.release()
            delay = min(delay * 2.0, self._max_delay)
        self.error = VivimError(f"{self.name}: lost and not recovered after {self._attempts} reconnect attempts")
        self._capture = _Closed()
        return False


def _capture_fps(capture: Capture) -> Optional[float]:
    get = getattr(capture, "get", None)
    if get is None:
        return None
    try:
        fps = float(get(cv2.CAP_PROP_FPS))
    except Exception:
        return None
    return fps if 0 < fps < 1000 else None


class _Closed:
    def read(self) -> Tuple[bool, Optional[np.ndarray]]:
        return False, None

    def release(self) -> None:
        pass


def _as_bgr(image: np.ndarray) -> np.ndarray:
    """Grey (ultrasound), BGRA, 16-bit and float frames become 3-channel BGR uint8."""
    if image.dtype != np.uint8:
        scale = 255.0 / max(float(image.max()), 1e-6)  # 16-bit or float frames: stretch to 8 bits
        image = np.clip(image.astype(np.float32) * scale, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


# -- concrete sources ------------------------------------------------------------------------------------------


class ImageFolder:
    """A folder of images read in frame-number order, behaving like a VideoCapture. `files`: a listing taken before,
    so every --loop pass reads the same images, the ones the masks are named after."""

    def __init__(self, folder: str, files: Optional[List[str]] = None) -> None:
        if not os.path.exists(folder):
            raise VivimError(f"--frames {folder}: no such folder")
        if not os.path.isdir(folder):
            raise VivimError(f"--frames {folder}: not a folder (use --video for a video file)")
        # here: it imports OpenCV, which must follow the log settings above
        from vivim.data.image_io import FRAME_EXTENSIONS
        from vivim.data.layouts import list_frame_files

        # numbered frames in number order (frame_2 before frame_10), exactly as the dataset loaders read them
        self.files: List[str] = list(files) if files is not None else [str(p) for p in list_frame_files(Path(folder))]
        if not self.files:
            from vivim.data.video_import import videos_in

            videos = videos_in(Path(folder))
            hint = f"; it holds video files: give one with --video, e.g. --video {videos[0]}" if videos else ""
            raise VivimError(f"--frames {folder}: no images ({', '.join(FRAME_EXTENSIONS)}){hint}")
        self._next = 0

    def read(self) -> Tuple[bool, Optional[np.ndarray]]:
        if self._next >= len(self.files):
            return False, None
        path = self.files[self._next]
        self._next += 1
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            why = "unreadable image" if os.path.exists(path) else "removed during the run"
            raise VivimError(f"--frames: {path}: {why}")
        return True, image

    def release(self) -> None:
        self._next = len(self.files)


_MUTE_LOCK = threading.Lock()  # fd 2 is the process's: two overlapping mutes would restore each other's /dev/null


@contextlib.contextmanager
def native_stderr_muted() -> Iterator[None]:
    """OpenCV's own AVI parser prints its complaints about a damaged file straight to file descriptor 2 (no log level
    governs it), ahead of the one-line error that says what matters. Where fd 2 cannot be swapped (closed), the open
    runs unmuted."""
    with _MUTE_LOCK:
        try:
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass
        try:
            saved = os.dup(2)
        except OSError:
            yield
            return
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, 2)
            finally:
                os.close(null)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def openable_by_opencv(path: "str | os.PathLike[str]", flag: str = "") -> None:
    """OpenCV's VideoCapture crashes the process on a path that is not valid UTF-8 (a name copied from another
    system's encoding): a one-line error naming it instead."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        name = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise VivimError(f"{flag + ' ' if flag else ''}{name}: the file name is not valid UTF-8, which OpenCV cannot "
                         "open; rename the file") from None


def open_video(path: str) -> Callable[[], Capture]:
    paths.require_file(path, "--video", hint="use --frames DIR for a folder of images")
    openable_by_opencv(path, "--video")

    def opener() -> Capture:
        with native_stderr_muted():
            capture = cv2.VideoCapture(path)
        if not capture.isOpened():
            raise VivimError(f"--video {path}: cannot open (unreadable or corrupt video, or a codec OpenCV lacks)")
        return capture

    return opener


def video_header(path: str) -> Tuple[Optional[float], Optional[int]]:
    """(frame rate, frame count) as the video's header declares them, each None when it has none; one open."""
    with native_stderr_muted():
        capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            return None, None
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        return _capture_fps(capture), (count if count > 0 else None)
    finally:
        capture.release()


def parse_camera(device: str) -> "int | str":
    return int(device) if device.isdigit() else device


def open_camera(
    device: str,
    *,
    fourcc: Optional[str] = None,
    width: Optional[int] = None,
    height: Optional[int] = None,
    fps: Optional[float] = None,
    buffer_size: int = 1,
) -> Callable[[], Capture]:
    target = parse_camera(device)
    if isinstance(target, str) and target.startswith("/dev/") and not os.path.exists(target):
        raise VivimError(f"--camera {device}: no such device (list them with `v4l2-ctl --list-devices`)")
    if fourcc is not None and len(fourcc) != 4:
        raise VivimError(f"--fourcc {fourcc}: a pixel format is four characters, e.g. MJPG or YUYV")
    api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY

    def opener() -> Capture:
        capture = cv2.VideoCapture(target, api)
        if not capture.isOpened():
            raise VivimError(f"--camera {device}: cannot open (missing, busy, no permission, or not a capture node)")
        # FourCC before size and rate: drivers pick the mode list from the pixel format.
        if fourcc:
            capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*fourcc))
        if width:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        if fps:
            capture.set(cv2.CAP_PROP_FPS, fps)
        capture.set(cv2.CAP_PROP_BUFFERSIZE, buffer_size)  # honoured by V4L2: fewer stale frames queued
        return capture

    return opener


def opencv_has_gstreamer() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return line.split(":", 1)[1].strip().upper().startswith("YES")
    return False


def open_gstreamer(pipeline: str) -> Callable[[], Capture]:
    if not opencv_has_gstreamer():
        raise VivimError(
            "--gst: this OpenCV build has no GStreamer support (pip wheels never have it); "
            "use the system OpenCV (JetPack: python3-opencv) or --camera"
        )
    if "appsink" not in pipeline:
        raise VivimError("--gst: the pipeline must end in an appsink, e.g. '... ! videoconvert ! appsink drop=1 max-buffers=1'")

    def opener() -> Capture:
        capture = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
        if not capture.isOpened():
            raise VivimError(f"--gst: the pipeline could not be started: {pipeline}")
        return capture

    return opener


def create_source(cfg, log: Logger = _stderr) -> FrameSource:  # cfg: config.SourceConfig
    """Build (not start) the source named by the config."""
    kind, where = cfg.kind, str(cfg.location)
    common = dict(
        max_frames=cfg.max_frames,
        reconnect_attempts=cfg.reconnect_attempts,
        reconnect_delay=cfg.reconnect_delay,
        reconnect_max_delay=cfg.reconnect_max_delay,
        log=log,
    )
    if kind == "camera":
        opener = open_camera(
            where, fourcc=cfg.fourcc, width=cfg.width, height=cfg.height, fps=cfg.fps, buffer_size=cfg.buffer_size
        )
        return FrameSource(f"camera {where}", opener, live=True, reconnect=True, fps=cfg.fps, **common)
    if kind == "gst":
        return FrameSource("gstreamer pipeline", open_gstreamer(where), live=True, reconnect=True, fps=cfg.fps, **common)
    if kind == "video":
        opener = open_video(where)
        file_fps, file_frames = video_header(where)
        rate = cfg.fps or file_fps  # an explicit --fps wins over the file's own rate
        if cfg.realtime and rate is None:
            raise VivimError(f"--video {where}: the file has no frame rate; give --fps for --realtime")
        return FrameSource(
            f"video {where}", opener, live=cfg.realtime, reconnect=False, loop=cfg.loop,
            pace_fps=rate if cfg.realtime else None, fps=rate,
            declared_frames=None if cfg.loop else file_frames, **common,
        )
    if kind == "frames":
        files = ImageFolder(where).files  # validates now, in the caller's thread; one listing for the whole run
        rate = cfg.fps or 25.0
        source = FrameSource(
            f"frames {where}", lambda: ImageFolder(where, files), live=cfg.realtime, reconnect=False, loop=cfg.loop,
            pace_fps=rate if cfg.realtime else None, fps=rate,
            declared_frames=None if cfg.loop else len(files), **common,
        )
        source.image_files = files
        return source
    raise VivimError(f"unknown source kind {kind!r}")
