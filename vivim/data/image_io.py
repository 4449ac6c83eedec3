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
        raise VivimError(f"{path}: cannot decode this frame (not a readable image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path) -> np.ndarray:
    """A boolean (H, W) foreground mask.

    Foreground = palette index > 0 (DAVIS palette PNGs), value > 0 for 0/1 masks, else value > 127
    (0/255 masks, robust to a little compression noise)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            palette = img.mode == "P"
            array = np.asarray(img)
    except FileNotFoundError:
        raise VivimError(f"{path}: mask file is missing") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise VivimError(f"{path}: cannot decode this mask ({exc.__class__.__name__})") from None
    if array.ndim == 3:
        array = array[..., :3].max(axis=2)
    if palette or array.max(initial=0) <= 1:
        return array > 0
    return array > 127


def write_image(path: str | Path, image: np.ndarray, quality: int = 95) -> None:
    """Write a BGR/grey image atomically (JPEG quality `quality`, lossless PNG)."""
    path = Path(path)
    extension = path.suffix or ".png"  # a name without an extension gets a PNG
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if extension.lower() in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(extension, image, params)
    if not ok:
        raise VivimError(f"{path}: OpenCV could not encode this image type")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(path, data.tobytes())


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float = 25.0) -> None:
    """Write BGR/grey frames to an .mp4 (MPEG-4 Part 2, plays in OpenCV/ffmpeg/browsers with a plugin), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic.temp_beside(path, suffix=f".tmp{path.suffix}")  # OpenCV picks the container from the name
    writer = None
    try:
        for frame in frames:
            bgr = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame
            if writer is None:
                height, width = bgr.shape[:2]
                writer = cv2.VideoWriter(tmp, cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
                if not writer.isOpened():
                    raise VivimError(f"{path}: OpenCV cannot write .mp4 here (no FFmpeg backend?)")
            writer.write(bgr)
        if writer is None:
            raise VivimError(f"{path}: no frames to write")
        writer.release()  # writes the container index
        writer = None
        atomic.commit(tmp, path)
    finally:
        if writer is not None:
            writer.release()
        atomic.discard(tmp)
