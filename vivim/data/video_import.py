"""`vivim-data import`: video files and their masks -> a DAVIS-layout dataset that vivim-train and vivim-eval read.

Users record clips as video files; the training layouts are folders of frames. Each video `<stem>.<ext>` becomes
`JPEGImages/<stem>/00000.jpg ...`, and its masks `Annotations/<stem>/00000.png ...` (0/255), from either a mask
video (`MASKS/<stem>.<ext>` or `MASKS/<stem>_mask.<ext>`; any container OpenCV reads) or a folder of one mask image
per frame (`MASKS/<stem>/` or `MASKS/<stem>_mask/`), or the images `MASKS/<stem>_00000.png ...` among other videos'
masks in one folder, numbered consecutively. A folder holding one subfolder per patient or exam is imported whole:
`patient01/clip_a.mp4` becomes `patient01_clip_a`, with its masks in `MASKS/patient01/` (or `MASKS`). A mask video
is thresholded at half of
the level its lesion is coded with (255, a class colour such as 128, or 1), measured over the whole video: a
lossy codec's noise around a per-frame threshold would otherwise eat into the lesion. Mask images are read with the
dataset reader's rules (0/1, 0/255, labels, alpha). The dataset is written under a temporary name and moved into
place at the end, so a failure, Ctrl-C or SIGTERM leaves no half-imported dataset.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from vivim import atomic
from vivim.data.image_io import read_mask, size_mismatch, why_unreadable
from vivim.data.layouts import frame_order, list_frame_files, masks_by_stem_in
from vivim.errors import VivimError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")
MANIFEST = "import.json"
MASK_SUFFIXES = ("", "_mask", "-mask", "_masks", "_label", "_gt")  # <stem><suffix>: the names masks are given


@dataclass
class ImportSummary:
    videos: list[dict] = field(default_factory=list)  # name, source, masks, frames, width, height, lesion fraction
    frames: int = 0
    warnings: list[str] = field(default_factory=list)  # per video: masks all empty, or mostly lesion (inverted?)


def _is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")


def _mask_named(stem: str) -> str | None:
    """The video stem a mask's stem names ('a_mask' -> 'a'), or None."""
    return next((stem[: -len(s)] for s in MASK_SUFFIXES if s and stem.endswith(s) and len(stem) > len(s)), None)


def videos_in(folder: Path) -> list[Path]:
    """The videos of one folder, hidden files and mask videos beside their video (`a_mask.mp4` by `a.mp4`) aside."""
    found = [p for p in folder.iterdir() if _is_video(p)]
    stems = {p.stem for p in found}
    return sorted((p for p in found if _mask_named(p.stem) not in stems), key=frame_order)


def find_videos(source: Path, masks: Path | None = None) -> list[Path]:
    """The video files to import: `source` itself, or the videos of a folder, by name. A folder with no video of its
    own but videos in subfolders (one per patient or exam: `patient01/clip_a.mp4`) gives those, outside `masks`."""
    if source.is_file():
        if source.suffix.lower() not in VIDEO_EXTENSIONS:
            raise VivimError(f"{source}: not a video file ({', '.join(VIDEO_EXTENSIONS)})")
        return [source]
    if not source.is_dir():
        raise VivimError(f"{source}: no such video file or folder")
    videos = videos_in(source)
    if not videos:
        skip = masks.resolve() if masks is not None and masks.is_dir() and masks.resolve() != source.resolve() else None
        folders = sorted((p for p in source.rglob("*") if p.is_dir() and not any(part.startswith(".") for part in
                          p.relative_to(source).parts) and (skip is None or not p.resolve().is_relative_to(skip))),
                         key=lambda p: [frame_order(Path(part)) for part in p.relative_to(source).parts])
        videos = [video for folder in folders for video in videos_in(folder)]
    if not videos:
        raise VivimError(f"{source}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in this folder or its subfolders")
    names = [dataset_name(v, source) for v in videos]
    twice = next((s for s in names if names.count(s) > 1), None)
    if twice is not None:  # one frame folder per name
        raise VivimError(f"{source}: several videos would be named {twice} "
                         f"({', '.join(str(v.relative_to(source)) for v, n in zip(videos, names) if n == twice)}); "
                         "rename one (a mask video is named <stem>_mask.<ext>)")
    return videos


def dataset_name(video: Path, root: Path) -> str:
    """The video's name in the dataset: its stem, prefixed by the subfolders it sits in below the folder imported
    (`patient01/clip_a.mp4` -> `patient01_clip_a`), so that two patients' `clip_a` stay two videos."""
    if root.is_file() or video.parent == root:
        return video.stem
    return "_".join((*video.parent.relative_to(root).parts, video.stem))


@dataclass(frozen=True)
class NumberedMasks:
    """One video's mask images among other videos' in one folder: `<stem>_00000.png`, `<stem>_mask-1.png`, ..."""

    folder: Path
    stem: str
    files: tuple[Path, ...]  # in frame-number order

    def __str__(self) -> str:
        return self.named(self.folder)

    def named(self, folder: Path) -> str:
        """The images as `folder/first.png ... last.png`: the separators vary (case_1, case-mask.00001), no glob fits."""
        return str(folder / self.files[0].name) + (f" ... {self.files[-1].name}" if len(self.files) > 1 else "")


MaskSource = Path | NumberedMasks  # a mask video, a folder of one video's mask images, or NumberedMasks
_NUMBERED = re.compile(r"(.+?)[ _.-](\d+)")  # <name><separator><frame number>, the name as short as it can be


def numbered_masks_of(stem: str, folder: Path) -> NumberedMasks | None:
    """The images of `folder` named `<stem>` (or `<stem>_mask`, ...), a separator and a frame number, or None."""
    wanted = {(stem + suffix).casefold() for suffix in MASK_SUFFIXES}
    files = [path for path in masks_by_stem_in(folder).values()
             if (match := _NUMBERED.fullmatch(path.stem)) and match.group(1).casefold() in wanted]
    return NumberedMasks(folder, stem, tuple(sorted(files, key=frame_order))) if files else None


class NoMasksFound(VivimError):
    """No masks named after a video: the one refusal that a single video's own folder of masks may answer."""


def masks_of(video: Path, masks: Path) -> MaskSource:
    """The masks of `video` in the folder `masks`: a folder of mask images or a mask video named after it (`<stem>`,
    `<stem>_mask`, ...; case aside), else its numbered images `<stem>_00000.png ...` there; a one-line error saying
    what was looked for otherwise."""
    here = video.resolve()
    wanted = {(video.stem + suffix).casefold() for suffix in MASK_SUFFIXES}
    candidates = sorted((p for p in masks.iterdir() if p.stem.casefold() in wanted or p.name.casefold() in wanted),
                        key=lambda p: (not p.is_dir(), p.name))
    for path in candidates:
        if path.is_dir() and path.name.casefold() in wanted:
            return path
        if _is_video(path) and path.resolve() != here:  # the video itself is no mask (--masks = the videos' folder)
            return path
    numbered = numbered_masks_of(video.stem, masks)
    if numbered is not None:
        return numbered
    raise NoMasksFound(f"--masks {masks}: no masks for {video.name} (looked for a folder or video named {video.stem} or "
                     f"{video.stem}_mask, or images {video.stem}_00000.png ...)")


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[cv2.VideoCapture]:
    from vivim.runtime.sources import native_stderr_muted, openable_by_opencv

    openable_by_opencv(path)
    with native_stderr_muted():  # OpenCV's parsers print their own complaints about a damaged file
        capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            why = why_unreadable(path, "unreadable or corrupt, or a codec OpenCV lacks")
            raise VivimError(f"{path}: cannot open this video ({why})")
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


def _values(frame: np.ndarray) -> np.ndarray:
    """One value per pixel of a mask video's frame: its brightest channel (a class colour lights one channel)."""
    return frame.max(axis=2) if frame.ndim == 3 else frame


def _mask_video_threshold(path: Path) -> float:
    """Half of the level the lesion is coded with, over the whole mask video: the most common value from 32 up
    (255, or a class colour such as 128), else the most common non-zero value (a 0/1 mask)."""
    histogram = np.zeros(256, np.int64)
    for frame in _video_frames(path):
        histogram += np.bincount(_values(frame).ravel(), minlength=256)[:256]
    if histogram[32:].any():
        return (32 + int(np.argmax(histogram[32:]))) / 2
    if histogram[1:].any():
        return (1 + int(np.argmax(histogram[1:]))) / 2
    return 0.5  # every frame empty


def _numbered(files: list[Path], folder: MaskSource) -> list[Path]:
    """Mask images in frame order, checked to be numbered consecutively by the last number in their names (frame_1,
    frame_2, ... or 00000, 00001, ...): a lost or duplicated file would shift every later mask onto another frame."""
    numbers = [re.findall(r"\d+", f.stem) for f in files]
    if not files or not all(numbers):
        return files  # not numbered: their order is all there is
    by_number: dict[int, Path] = {}
    for file, found in zip(files, numbers):
        number = int(found[-1])
        if number in by_number:
            one, other = sorted((by_number[number].name, file.name))
            raise VivimError(f"{folder}: {one} and {other} both carry frame number {number}; keep one")
        by_number[number] = file
    first, last = min(by_number), max(by_number)
    missing = [n for n in range(first, last + 1) if n not in by_number]
    if missing:
        raise VivimError(f"{folder}: the masks are numbered {first}..{last} but {len(missing)} are missing (e.g. "
                         f"number {missing[0]}); import needs every frame's mask, in order (sparsely annotated sets go in "
                         "the DAVIS layout directly, see README)")
    return [by_number[n] for n in sorted(by_number)]


def _mask_frames(path: MaskSource) -> Iterator[tuple[np.ndarray, str]]:
    """(binary mask, where it comes from) per frame: from a mask video, or mask images."""
    if isinstance(path, NumberedMasks):
        for file in _numbered(list(path.files), path):
            yield read_mask(file), str(file)
        return
    if path.is_dir():
        for file in _numbered(sorted(masks_by_stem_in(path).values(), key=frame_order), path):
            yield read_mask(file), str(file)
        return
    threshold = _mask_video_threshold(path)
    for k, frame in enumerate(_video_frames(path)):
        yield _values(frame) > threshold, f"{path} (frame {k})"


def header_frames(path: Path) -> int:
    """The frame count a video's header declares (0 when it has none): for the progress bar and messages."""
    with contextlib.suppress(VivimError), _opened(path) as capture:
        return max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
    return 0


def plan_import(videos: list[Path], masks: Path, out: Path, root: Path | None = None,
                overwrite: bool = False) -> list[tuple[Path, MaskSource, str]]:
    """(video, its masks, its name in the dataset) for every video, and `out` checked, before any frame is decoded: a
    refusal is the only output. For a single video, `masks` may also be its mask video or its folder of mask images
    itself (when the folder holds no masks named after it). A video in a subfolder of `root` (the folder imported)
    finds its masks in the same subfolder of `masks` where there is one (`masks/patient01/clip_a_mask.mp4`), else in
    `masks` itself."""
    from vivim.runtime.sources import openable_by_opencv

    openable_by_opencv(out, "-o")  # cv2.imwrite crashes on such a path too
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise VivimError(f"-o {out}: already exists and is not empty; choose a new folder, or pass --overwrite to "
                             "replace an earlier vivim-data import there")
        _check_replaceable(out, [*videos, masks])
    root = root if root is not None and root.is_dir() else None
    sources: list[tuple[Path, MaskSource, str]] = []
    if len(videos) == 1 and _is_video(masks):
        sources = [(videos[0], masks, videos[0].stem)]  # the one video's mask video, given directly
    elif not masks.is_dir():
        raise VivimError(f"--masks {masks}: no such folder" + (" (a mask video goes with a single video file as "
                                                             "VIDEOS)" if masks.is_file() else ""))
    else:
        lacking = []
        for video in videos:
            name = dataset_name(video, root) if root is not None else video.stem
            mirrored = masks / video.parent.relative_to(root) if root is not None else masks
            try:
                sources.append((video, masks_of(video, mirrored if mirrored.is_dir() else masks), name))
            except NoMasksFound:
                if len(videos) == 1 and list_frame_files(masks):  # the one video's own folder of masks
                    sources.append((video, masks, name))
                else:
                    lacking.append(str(video.relative_to(root)) if root is not None else video.name)
        if lacking:  # every one named at once, not one per attempt
            raise VivimError(f"--masks {masks}: no masks for {count_text(lacking)} (looked for a folder or video "
                             f"named <stem> or <stem>_mask)")
    _refuse_shared_masks(sources, masks)
    for video, mask_source, _ in sources:
        for path in (video, *(mask_source.files if isinstance(mask_source, NumberedMasks) else [mask_source])):
            openable_by_opencv(path)
    return sources


def _refuse_shared_masks(sources: list[tuple[Path, MaskSource, str]], masks: Path) -> None:
    """One set of masks found for two videos (patient02/clip_a.mp4 falling back on --masks's clip_a.mp4, which is
    patient01's) would train the second video on the first one's lesion: refused, both videos named."""
    claimed: dict[tuple[str, ...], str] = {}
    for _, mask_source, name in sources:
        files = mask_source.files if isinstance(mask_source, NumberedMasks) else [mask_source]
        key = tuple(str(Path(f).resolve()) for f in files)
        if key in claimed:
            raise VivimError(f"--masks {masks}: {mask_source} would be the masks of both {claimed[key]} and {name}; give "
                             "each patient's masks a subfolder of --masks named like the videos' (patient02/clip_a.mp4)")
        claimed[key] = name


def named_for_another_video(video: Path, masks: Path) -> str | None:
    """A warning when the masks given for a single video are named after another video beside it (`a.mp4` with
    `--masks b_mask/` where `b.mp4` sits next to it): frame counts and sizes may well match, and nothing else would
    tell the swap."""
    named = _mask_named(masks.stem) or masks.stem
    if named.casefold() == video.stem.casefold() or not video.parent.is_dir():
        return None
    other = next((p for p in sorted(video.parent.iterdir()) if p.stem.casefold() == named.casefold() and _is_video(p)
                  and p.resolve() not in (video.resolve(), masks.resolve())), None)
    return None if other is None else (f"--masks {masks} is named after {other.name}, not {video.name}; "
                                       "check that these are the masks of the video being imported")


def count_text(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{len(names)} videos ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"


# What an import writes into its folder; --overwrite replaces a folder holding these and nothing else.
_WRITTEN = ("JPEGImages", "Annotations", MANIFEST)


def _check_replaceable(out: Path, inputs: list[Path]) -> None:
    """--overwrite replaces only an earlier import's output, and never the files being imported."""
    if not out.is_dir() or not (out / MANIFEST).is_file():
        raise VivimError(f"-o {out}: --overwrite replaces only a folder an earlier vivim-data import wrote (it holds "
                         f"{MANIFEST}); choose a new folder")
    other = sorted(p.name for p in out.iterdir() if p.name not in _WRITTEN and not p.name.startswith("."))
    if other:
        raise VivimError(f"-o {out}: also holds {', '.join(other[:3])}{', ...' if len(other) > 3 else ''}, which "
                         "vivim-data import did not write; --overwrite would remove it: choose a new folder")
    inside = next((p for p in inputs if p.resolve().is_relative_to(out.resolve())), None)
    if inside is not None:
        raise VivimError(f"-o {out}: holds {inside}, an input of this import; --overwrite would remove it")


def import_videos(sources: list[tuple[Path, MaskSource, str]], out: Path, *, image_format: str = "jpg",
                  progress: Callable[[int], None] = lambda n: None) -> ImportSummary:
    """Write each (video, masks, name) of `sources` (from `plan_import`) as a DAVIS-layout dataset at `out`; an
    earlier import's output there (which `plan_import(overwrite=True)` accepted) is replaced once the new one is
    complete, so a failed or interrupted import leaves the earlier dataset as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # staged beside `out` and renamed onto it; inside an `out` that exists already (an empty folder: perhaps a mount
    # point or a link to another disk), so every move stays on the disk the dataset is meant for
    inside = out.is_dir()
    staging = (out / f".importing-{os.getpid()}") if inside else out.with_name(f".{out.name}.importing-{os.getpid()}")
    _remove_stale_staging(out)
    summary = ImportSummary()
    try:
        for video, mask_source, name in sources:
            record, warning = _import_one(video, mask_source, name, staging, image_format, progress)
            summary.videos.append(record)
            summary.frames += record["frames"]
            if warning:
                summary.warnings.append(warning)
        atomic.write_json(staging / MANIFEST, {"videos": summary.videos, "frames": summary.frames}, indent=1)
        if inside:
            with _stops_ignored():  # three renames: never a dataset half old, half new
                _swap_in(staging, out)
        else:
            os.replace(staging, out)
    except BaseException:
        with _stops_ignored():  # a second Ctrl-C or stop signal must not leave the half-written dataset behind
            shutil.rmtree(staging, ignore_errors=True)  # out itself holds what it held before (_swap_in puts back)
        raise
    return summary


def _swap_in(staging: Path, out: Path) -> None:
    """Move the staged dataset into `out`, an earlier import's entries first set aside and removed once the new
    ones are in place (put back if a rename fails)."""
    earlier = out / f".replaced-{os.getpid()}"
    kept = [entry for entry in _WRITTEN if (out / entry).exists()]
    if kept:
        earlier.mkdir()
    moved: list[str] = []
    try:
        for entry in kept:
            os.replace(out / entry, earlier / entry)
        for entry in _WRITTEN:
            os.replace(staging / entry, out / entry)
            moved.append(entry)
    except OSError:
        for entry in moved:  # back as it was: the earlier dataset whole
            os.replace(out / entry, staging / entry)
        for entry in kept:
            os.replace(earlier / entry, out / entry)
        shutil.rmtree(earlier, ignore_errors=True)
        raise
    staging.rmdir()
    shutil.rmtree(earlier, ignore_errors=True)


def _remove_stale_staging(out: Path) -> None:
    """Temporary folders an import killed outright (SIGKILL, a power cut) left: their process is gone."""
    for folder in [*out.parent.glob(f".{out.name}.importing-*"), *(out.glob(".importing-*") if out.is_dir() else [])]:
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True


@contextlib.contextmanager
def _stops_ignored() -> Iterator[None]:
    """Ctrl-C and the stop signals (SIGTERM, SIGHUP) ignored while a half-written dataset is removed."""
    from vivim.cli_utils import stop_signals

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, *stop_signals())}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _import_one(video: Path, mask_source: MaskSource, name: str, root: Path, image_format: str,
                progress: Callable[[int], None]) -> tuple[dict, str | None]:
    frame_dir, mask_dir = root / "JPEGImages" / name, root / "Annotations" / name
    frame_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_format == "jpg" else []
    masks = _mask_frames(mask_source)
    count, lesion, height, width = 0, 0.0, 0, 0
    for frame in _video_frames(video):
        item = next(masks, None)
        if item is None:
            total = sum(1 for _ in _video_frames(video))  # the video's whole length, for the message
            raise VivimError(f"{mask_source}: {count} masks for the {total} frames of {video}{_rates(video, mask_source)}; "
                             "import needs one mask per frame (sparsely annotated sets go in the DAVIS layout "
                             "directly, see README)")
        mask, where = item
        if mask.shape != frame.shape[:2]:
            raise size_mismatch(where, mask.shape[::-1], f"{video} (frame {count})", frame.shape[1::-1])
        file = f"{count:05d}"
        if not cv2.imwrite(str(frame_dir / f"{file}.{image_format}"), frame, params):
            raise VivimError(f"{frame_dir}: could not write {file}.{image_format} (disk full?)")
        if not cv2.imwrite(str(mask_dir / f"{file}.png"), mask.astype(np.uint8) * 255):
            raise VivimError(f"{mask_dir}: could not write {file}.png (disk full?)")
        (height, width), count, lesion = frame.shape[:2], count + 1, lesion + float(mask.mean())
        progress(1)
    if count == 0:
        raise VivimError(f"{video}: no frame could be decoded")
    extra = sum(1 for _ in masks)
    if extra:
        declared = header_frames(video)
        if declared > count:  # the video stopped early: its masks are not the ones at fault
            raise VivimError(f"{video}: decoding stopped at frame {count} of the {declared} its header declares (a "
                             "cut-short or damaged file)")
        raise VivimError(f"{mask_source}: {count + extra} masks for the {count} frames of {video}"
                         f"{_rates(video, mask_source)}")
    share = lesion / count
    warning = (f"{video.name}: every mask is empty" if share == 0 else
               f"{video.name}: {100 * share:.0f} % of the pixels are lesion; are its masks inverted?" if share > 0.5
               else None)
    return ({"name": name, "source": str(video.resolve()), "masks": _where(mask_source), "frames": count,
             "width": width, "height": height, "lesion": round(share, 6)}, warning)


def _where(masks: MaskSource) -> str:
    """The masks' absolute path for the manifest (numbered images as their pattern)."""
    if isinstance(masks, NumberedMasks):
        return masks.named(masks.folder.resolve())
    return str(masks.resolve())


def _rates(video: Path, masks: MaskSource) -> str:
    """' (mask video at 10 fps, video at 30 fps)' when a mask video's frame rate differs, else ''."""
    if isinstance(masks, NumberedMasks) or masks.is_dir():
        return ""
    rates = []
    for path in (masks, video):
        with contextlib.suppress(VivimError), _opened(path) as capture:
            rates.append(float(capture.get(cv2.CAP_PROP_FPS)))
    if len(rates) == 2 and min(rates) > 0 and abs(rates[0] - rates[1]) > 0.01:
        return f" (mask video at {rates[0]:g} fps, video at {rates[1]:g} fps)"
    return ""
