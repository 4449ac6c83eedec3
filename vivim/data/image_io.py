"""Reading frames and masks with one-line errors; atomic writes of images and .mp4 videos."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from vivim import atomic
from vivim.errors import VivimError

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
# OpenCV flag of each resize filter a model may be trained and run with (vivim.constants.RESIZE_FILTERS)
CV2_FILTERS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}


def read_frame(path: str | Path) -> np.ndarray:
    """An RGB uint8 (H, W, 3) image; greyscale files are expanded to three equal channels."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        if not Path(path).is_file():
            raise VivimError(f"{path}: frame file is missing")
        raise VivimError(f"{path}: cannot decode this frame ({why_unreadable(path, 'not a readable image')})")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_size(path: str | Path, what: str = "image") -> tuple[int, int]:
    """(width, height) as the readers will see it, from the file's header alone: a fast check of a whole dataset
    before hours of training. A frame's EXIF orientation is applied (OpenCV turns such JPEGs when it reads them)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            width, height = img.size
            if what == "frame" and img.getexif().get(0x0112) in (5, 6, 7, 8):  # a quarter turn
                width, height = height, width
            return width, height
    except FileNotFoundError:
        raise VivimError(f"{path}: {what} file is missing") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise VivimError(f"{path}: cannot decode this {what} ({why_unreadable(path, type(exc).__name__)})") from None


def why_unreadable(path: str | Path, otherwise: str) -> str:
    """Why a reader failed on `path`, for its message: an empty file (a copy cut short, a placeholder) says so,
    else `otherwise` (the reader's own reason)."""
    try:
        if Path(path).stat().st_size == 0:
            return "the file is empty"
    except OSError:
        pass
    return otherwise


def size_mismatch(mask: str | Path, mask_wh: tuple[int, int], frame: str | Path, frame_wh: tuple[int, int]) -> VivimError:
    """The one message for a mask whose (width, height) is not its frame's."""
    return VivimError(f"{mask}: mask is {mask_wh[0]}x{mask_wh[1]} but frame {frame} is {frame_wh[0]}x{frame_wh[1]}")


def read_mask(path: str | Path) -> np.ndarray:
    """A boolean (H, W) foreground mask.

    Foreground = palette index > 0 (DAVIS palette PNGs); in a mask holding 0 and one other value, that value (0/1,
    0/255, label masks such as 0/2 or 0/100); otherwise (soft edges, compression noise, a uniform mask) above half
    of the scale its values use (1, 255 or 65535). An alpha channel is the mask when the colour is uniform (masks
    drawn as transparency; a fully transparent one is empty); else it is ignored."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            palette = img.mode == "P"
            has_alpha = img.mode in ("LA", "RGBA", "La", "RGBa")
            array = np.asarray(img)
    except FileNotFoundError:
        raise VivimError(f"{path}: mask file is missing") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise VivimError(f"{path}: cannot decode this mask ({why_unreadable(path, type(exc).__name__)})") from None
    if palette:
        return array > 0
    return binarise_mask_image(array, has_alpha)


def binarise_mask_image(array: np.ndarray, has_alpha: bool = False) -> np.ndarray:
    """The lesion of a mask already in memory (e.g. a frame of a mask video, BGR), by the rules of `read_mask`."""
    return _binarise(_mask_values(array, has_alpha))


def _mask_values(array: np.ndarray, has_alpha: bool) -> np.ndarray:
    """One value per pixel: the alpha channel of a uniformly coloured mask, else the brightest colour channel."""
    if array.ndim == 2:
        return array
    colour, alpha = (array[..., :-1], array[..., -1]) if has_alpha else (array, None)
    uniform = alpha is not None and bool((colour == colour.reshape(-1, colour.shape[-1])[0]).all())  # one colour, any hue
    if alpha is not None and uniform:
        if np.ptp(alpha) > 0 or not alpha.any():  # drawn as transparency, or nothing drawn at all
            return alpha
    return colour.max(axis=2)


def _binarise(values: np.ndarray) -> np.ndarray:
    top = values.max(initial=0)
    if top == 0:
        return np.zeros(values.shape, bool)
    zero = values == 0
    if zero.any() and np.all(zero | (values == top)):  # 0 and one label value
        return ~zero
    if 1 < top < 128 and zero.any():  # small labels on a 0 background: classes (0/1/2), or 0/1 with JPEG noise
        return ~zero
    scale = 1 if top <= 1 else 255 if top <= 255 else 65535 if top <= 65535 else float(top)
    return values > scale / 2


def write_image(path: str | Path, image: np.ndarray, quality: int = 95) -> None:
    """Write a BGR/grey image atomically (JPEG quality `quality`, lossless PNG)."""
    path = Path(path)
    extension = path.suffix or ".png"  # a name without an extension gets a PNG
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if extension.lower() in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(extension, image, params)
    if not ok:
        raise VivimError(f"{path}: OpenCV could not encode this image type")
    atomic.write_bytes(path, data.tobytes(), parents=True)


class DiskNearlyFull(VivimError):
    """A video stopped before its disk filled up: the frames so far are a complete file, which `close()` keeps."""


class AtomicVideoWriter:
    """A video written under a temporary name beside `path` (the same extension: OpenCV picks the container from it)
    and moved onto `path` by `close()`; `abort()`, or a failure in `close()`, leaves no file behind. Opened on the
    first frame, whose size it keeps, rounded up to even sides (the last row or column repeated): the codecs'
    4:2:0 sampling would otherwise crop it. `what` names the file in errors (a flag, or the path itself).

    OpenCV's writer does not report failed writes: on a full disk it leaves a file without its index, which no
    player opens. So the free space is watched while writing (DiskNearlyFull stops the video while it can still be
    finished), and `close()` checks that the finished file opens before moving it into place."""

    CHECK_EVERY = 16  # frames between two looks at the free space
    MIN_RESERVE = 8 * 1024 * 1024  # bytes left free at least: the container index and the filesystem's own needs

    FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}

    def __init__(self, path: str | Path, fps: float, what: str = "") -> None:
        self.path = Path(path)
        self.fps = fps if fps and fps > 0 else 25.0
        self.what = what or str(path)
        self.size: tuple[int, int] | None = None  # (width, height) of the first frame
        self.frames_written = 0
        self._writer: cv2.VideoWriter | None = None
        self._tmp: str | None = None

    def write(self, bgr: np.ndarray) -> None:
        if bgr.shape[0] % 2 or bgr.shape[1] % 2:  # 4:2:0 codecs drop an odd last row/column: repeat it instead
            bgr = cv2.copyMakeBorder(bgr, 0, bgr.shape[0] % 2, 0, bgr.shape[1] % 2, cv2.BORDER_REPLICATE)
        if self._writer is None:
            suffix = self.path.suffix.lower()
            self._tmp = atomic.temp_beside(self.path, suffix)
            self.size = (bgr.shape[1], bgr.shape[0])
            self._writer = cv2.VideoWriter(self._tmp, cv2.VideoWriter.fourcc(*self.FOURCC.get(suffix, "mp4v")),
                                           self.fps, self.size)
            if not self._writer.isOpened():
                self.abort()
                check_disk_space(self.path, self.what)  # the likelier cause, when it is so
                raise VivimError(f"{self.what}: OpenCV cannot write {suffix or 'this'} video here (no FFmpeg backend?)")
            self._check_free_space()  # a full disk: said as such, before the first frame
        elif self.frames_written % self.CHECK_EVERY == 0:
            self._check_free_space()
        self._writer.write(bgr)
        self.frames_written += 1

    def _check_free_space(self) -> None:
        """DiskNearlyFull when less than the reserve is left: the larger of MIN_RESERVE and ~4 checks' worth of
        frames at the size written so far."""
        assert self._tmp is not None
        if not self.frames_written:  # nothing to keep yet: a full disk is said as such
            check_disk_space(self._tmp, self.what)
            return
        free = _free_bytes(self._tmp)
        try:
            per_frame = Path(self._tmp).stat().st_size / self.frames_written
        except OSError:
            return  # the writes themselves will tell
        if free is not None and free < max(self.MIN_RESERVE, 4 * self.CHECK_EVERY * per_frame):
            raise DiskNearlyFull(f"{self.what}: the disk is nearly full ({free / 2**20:.0f} MB left): the video stops "
                                 f"after {self.frames_written} frames")

    def close(self) -> bool:
        """Finish the file and move it into place; False when no frame was written (no file then)."""
        if self._writer is None or self._tmp is None:
            return False
        try:
            self._writer.release()  # writes the container index: without it an .mp4 is unreadable
            self._writer = None
            if not _video_opens(self._tmp):
                raise VivimError(f"{self.what}: the video could not be finished ({_disk_note(self._tmp)}); nothing "
                                 "was saved")
            atomic.commit(self._tmp, self.path)
            self._tmp = None  # moved into place: nothing left for abort() to remove
            return True
        finally:
            self.abort()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._tmp is not None:
            atomic.discard(self._tmp)
            self._tmp = None


def _free_bytes(path: str | Path) -> int | None:
    """Free bytes on the disk of `path`'s folder; None when the folder cannot be looked at."""
    import shutil

    try:
        return shutil.disk_usage(Path(path).parent).free
    except OSError:
        return None


def check_disk_space(path: str | Path, what: str) -> None:
    """A one-line error when the disk `path` goes to has less than a video's reserve left (checked before a run)."""
    free = _free_bytes(path)
    if free is not None and free < AtomicVideoWriter.MIN_RESERVE:  # None: the folder checks say what is wrong
        raise VivimError(f"{what}: its disk is full ({free / 2**20:.0f} MB left)")


def _video_opens(path: str) -> bool:
    """Whether OpenCV reads a first frame from the video at `path` (a file cut short by a full disk does not)."""
    from vivim.runtime.sources import native_stderr_muted

    with native_stderr_muted():  # FFmpeg's own complaints about a damaged file
        capture = cv2.VideoCapture(path)
        try:
            return bool(capture.isOpened() and capture.read()[0])
        finally:
            capture.release()


def _disk_note(path: str) -> str:
    free = _free_bytes(path)
    if free is None:
        return "its folder is gone"
    return "the disk is full" if free < AtomicVideoWriter.MIN_RESERVE else "OpenCV wrote no readable file"


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float = 25.0) -> None:
    """Write BGR/grey frames to an .mp4 (MPEG-4 Part 2, plays in OpenCV/ffmpeg/browsers with a plugin), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    video = AtomicVideoWriter(path, fps)
    try:
        for frame in frames:
            video.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame)
        if not video.close():
            raise VivimError(f"{path}: no frames to write")
    finally:
        video.abort()
