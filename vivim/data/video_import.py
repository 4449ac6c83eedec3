"""`vivim-data import`: video files and their masks -> a DAVIS-layout dataset that vivim-train and vivim-eval read.

Users record clips as video files; the training layouts are folders of frames. Each video `<stem>.<ext>` becomes
`JPEGImages/<stem>/00000.jpg ...`, and its masks `Annotations/<stem>/00000.png ...` (0/255), from either a mask
video `MASKS/<stem>.<ext>` (any container OpenCV reads; a lossy codec's noise is thresholded away) or a folder
`MASKS/<stem>/` with one mask image per frame in frame-number order. Masks are read with the dataset reader's rules
(0/1, 0/255, labels, alpha). The dataset is written under a temporary name beside the output folder and moved into
place at the end, so a failure or Ctrl-C leaves no half-imported dataset.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from vivim import atomic
from vivim.data.image_io import binarise_mask_image, read_mask, size_mismatch
from vivim.data.layouts import frame_order, list_frame_files
from vivim.errors import VivimError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")
MANIFEST = "import.json"


@dataclass
class ImportSummary:
    videos: list[dict] = field(default_factory=list)  # name, source, masks, frames, width, height, lesion fraction
    frames: int = 0


def find_videos(source: Path) -> list[Path]:
    """The video files to import: `source` itself, or the videos of a folder (hidden files aside), by name."""
    if source.is_file():
        if source.suffix.lower() not in VIDEO_EXTENSIONS:
            raise VivimError(f"{source}: not a video file ({', '.join(VIDEO_EXTENSIONS)})")
        return [source]
    if not source.is_dir():
        raise VivimError(f"{source}: no such video file or folder")
    videos = sorted((p for p in source.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith(".")),
                    key=frame_order)
    if not videos:
        raise VivimError(f"{source}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in this folder")
    stems = [v.stem for v in videos]
    twice = next((s for s in stems if stems.count(s) > 1), None)
    if twice is not None:  # one frame folder per stem
        raise VivimError(f"{source}: several videos are named {twice}.* ({', '.join(v.name for v in videos if v.stem == twice)}); "
                         "rename one")
    return videos


def masks_of(video: Path, masks: Path) -> Path:
    """`MASKS/<stem>/` (one image per frame) or a mask video `MASKS/<stem>.<ext>`; a one-line error naming both
    places looked at otherwise."""
    folder = masks / video.stem
    if folder.is_dir():
        return folder
    # by stem, not a glob pattern: names such as 'scan[1]' hold pattern characters
    found = sorted(p for p in masks.iterdir() if p.stem == video.stem and p.suffix.lower() in VIDEO_EXTENSIONS and p != video)
    if found:
        return found[0]
    raise VivimError(f"--masks {masks}: no masks for {video.name} (looked for the folder {folder}/ and a mask video "
                     f"{video.stem}.<{'|'.join(e.lstrip('.') for e in VIDEO_EXTENSIONS[:3])}|...>)")


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[cv2.VideoCapture]:
    from vivim.runtime.sources import native_stderr_muted, openable_by_opencv

    openable_by_opencv(path)
    with native_stderr_muted():  # OpenCV's parsers print their own complaints about a damaged file
        capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise VivimError(f"{path}: cannot open this video (unreadable or corrupt, or a codec OpenCV lacks)")
        yield capture
    finally:
        capture.release()


def _video_frames(path: Path) -> Iterator[np.ndarray]:
    with _opened(path) as capture:
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                return
            yield frame


def _mask_frames(path: Path) -> Iterator[np.ndarray]:
    """Binary masks from a mask video, or from a folder of mask images in frame-number order."""
    if path.is_dir():
        for file in _one_mask_per_stem(list_frame_files(path)):
            yield read_mask(file)
        return
    for frame in _video_frames(path):
        yield binarise_mask_image(frame)


def _one_mask_per_stem(files: list[Path]) -> list[Path]:
    """The dataset reader's rule: a .png mask wins over another image of its name (a .jpg preview of it)."""
    chosen: dict[str, Path] = {}
    for file in files:
        key = file.stem.casefold()
        if key not in chosen or (file.suffix.lower() == ".png" and chosen[key].suffix.lower() != ".png"):
            chosen[key] = file
    return [file for file in files if chosen[file.stem.casefold()] is file]


def header_frames(path: Path) -> int:
    """The frame count a video's header declares (0 when it has none): for the progress bar only."""
    with contextlib.suppress(VivimError), _opened(path) as capture:
        return max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
    return 0


def plan_import(videos: list[Path], masks: Path, out: Path) -> list[tuple[Path, Path]]:
    """(video, its masks) for every video, and `out` checked, before any frame is decoded: a refusal is the only
    output."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VivimError(f"-o {out}: already exists and is not empty; choose a new folder")
    from vivim.runtime.sources import openable_by_opencv

    sources = [(video, masks_of(video, masks)) for video in videos]
    for video, mask_source in sources:
        for path in (video, mask_source):
            openable_by_opencv(path)
    return sources


def import_videos(sources: list[tuple[Path, Path]], out: Path, *, image_format: str = "jpg",
                  progress: Callable[[int], None] = lambda n: None) -> ImportSummary:
    """Write each (video, masks) of `sources` (from `plan_import`) as a DAVIS-layout dataset at `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.importing-{os.getpid()}")  # beside `out`: the final move is a rename
    shutil.rmtree(staging, ignore_errors=True)
    summary = ImportSummary()
    try:
        for video, mask_source in sources:
            summary.videos.append(_import_one(video, mask_source, staging, image_format, progress))
            summary.frames += summary.videos[-1]["frames"]
        atomic.write_json(staging / MANIFEST, {"videos": summary.videos, "frames": summary.frames}, indent=1)
        if out.is_dir():
            out.rmdir()  # empty (checked above): the staged dataset takes its place
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _import_one(video: Path, mask_source: Path, root: Path, image_format: str,
                progress: Callable[[int], None]) -> dict:
    frame_dir, mask_dir = root / "JPEGImages" / video.stem, root / "Annotations" / video.stem
    frame_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_format == "jpg" else []
    masks = _mask_frames(mask_source)
    count, lesion, height, width = 0, 0.0, 0, 0
    for frame in _video_frames(video):
        mask = next(masks, None)
        if mask is None:
            raise VivimError(f"{mask_source}: only {count} masks for {video}, which has more frames")
        if mask.shape != frame.shape[:2]:
            raise size_mismatch(f"{mask_source} (frame {count})", mask.shape[::-1], video, frame.shape[1::-1])
        name = f"{count:05d}"
        if not cv2.imwrite(str(frame_dir / f"{name}.{image_format}"), frame, params):
            raise VivimError(f"{frame_dir}: could not write {name}.{image_format} (disk full?)")
        if not cv2.imwrite(str(mask_dir / f"{name}.png"), mask.astype(np.uint8) * 255):
            raise VivimError(f"{mask_dir}: could not write {name}.png (disk full?)")
        (height, width), count, lesion = frame.shape[:2], count + 1, lesion + float(mask.mean())
        progress(1)
    if count == 0:
        raise VivimError(f"{video}: no frame could be decoded")
    extra = sum(1 for _ in masks)
    if extra:
        raise VivimError(f"{mask_source}: {count + extra} masks for the {count} frames of {video}")
    return {"name": video.stem, "source": str(video.resolve()), "masks": str(mask_source.resolve()), "frames": count,
            "width": width, "height": height, "lesion": round(lesion / count, 6)}
