"""Find videos on disk: DAVIS layout (JPEGImages/, Annotations/) or Vivim/VTUS layout (Train/, Train_GT/, Test/, Test_GT/)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from vivim.cli_utils import count as count_text, shell, warn
from vivim.data.image_io import FRAME_EXTENSIONS, image_size, size_mismatch
from vivim.errors import VivimError

SPLITS = ("train", "val", "test", "all")
MANIFEST = "synth.json"  # written by vivim-data synth (vivim.data.synth_dataset)
_VTUS_FOLDERS = {"train": ("Train",), "val": ("Val",), "test": ("Test",), "all": ("Train", "Val", "Test")}


@dataclass
class VideoRecord:
    """One video: its frame files in temporal order and the matching mask file for each frame (None for a frame
    without a mask, which only a sparsely annotated dataset has)."""

    name: str
    frames: list[Path]
    masks: list[Path | None]

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def annotated(self) -> list[int]:
        """Indices of the frames that have a mask: the frames a model is trained and scored on."""
        return [i for i, mask in enumerate(self.masks) if mask is not None]


def detect_layout(root: Path, flag: str = "") -> str:
    """"davis" or "vtus"; a one-line VivimError naming `root` (after `flag`, e.g. "--val", where a tool has two)."""
    name = f"{flag} {root}" if flag else f"{root}"
    if root.is_file():
        raise VivimError(f"{name}: is a file, not a dataset folder")
    if not root.is_dir():
        raise VivimError(f"{name}: no such dataset folder")
    if (root / "JPEGImages").is_dir():
        return "davis"
    if any((root / name).is_dir() for name in ("Train", "Test", "Val")):
        return "vtus"
    raise VivimError(f"{name}: not a dataset folder (expected JPEGImages/ + Annotations/, or Train/ + Train_GT/)"
                     + _what_it_looks_like(root))


def _what_it_looks_like(root: Path) -> str:
    """A hint for the folders people pass by mistake: a layout's subfolder, a folder of videos, one video's frames."""
    from vivim.data.video_import import VIDEO_EXTENSIONS

    if root.name in ("JPEGImages", "Annotations", "Train", "Train_GT", "Test", "Test_GT", "Val", "Val_GT"):
        return f"; this is the {root.name}/ folder of one: pass its parent {root.parent}"
    files = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    if any(p.suffix.lower() in VIDEO_EXTENSIONS for p in files):
        return f"; it holds video files: vivim-data import {shell(root)} --masks MASKS -o DATASET makes a dataset of them"
    if any(p.suffix.lower() in FRAME_EXTENSIONS for p in files):
        return "; it holds the frames of one video, which go in JPEGImages/<video>/ (masks in Annotations/<video>/)"
    return ""


def frame_order(path: Path) -> tuple:
    """Sort key of frame files: runs of digits compare as numbers wherever they are in the name (frame_2 < frame_10,
    2_us < 10_us, clip3.2 < clip3.10); names without any number come after the numbered ones; the full name breaks
    ties (frame_01 / frame_1)."""
    runs = [run for run in re.split(r"(\d+)", path.stem) if run]
    key = tuple((0, int(run), "") if run.isdigit() else (1, 0, run) for run in runs)
    return (0 if any(run.isdigit() for run in runs) else 1), key, path.name


def list_frame_files(folder: Path) -> list[Path]:
    """The frame images of a folder in frame-number order; hidden files (macOS '._0001.jpg' resource forks, editor
    temporaries) are not frames. Shared by the dataset loaders and vivim-run --frames."""
    return sorted((p for p in Path(folder).iterdir() if p.suffix.lower() in FRAME_EXTENSIONS and not p.name.startswith(".")),
                  key=frame_order)


def shared_stem(files) -> str | None:
    """The first stem that two of `files` share, ignoring case (frame_1.jpg and Frame_1.png), or None. Masks named
    after their frames would collide there, and on macOS and Windows case does not tell files apart."""
    stems = [Path(path).stem for path in files]
    folded = [stem.casefold() for stem in stems]
    if len(set(folded)) == len(folded):
        return None
    return next(stem for stem, key in zip(stems, folded) if folded.count(key) > 1)


def _list_frames(folder: Path) -> list[Path]:
    frames = list_frame_files(folder)
    if not frames:
        raise VivimError(f"{folder}: no frame images ({'/'.join(FRAME_EXTENSIONS)}) in this video folder")
    return frames


def masks_by_stem_in(mask_dir: Path) -> dict[str, Path]:
    """The mask image of each stem in a folder. A .png wins over another image of its name (the annotation beside a
    .jpg preview of it); two of one name, neither a .png, are refused: which one counts would be a guess."""
    masks_by_stem: dict[str, Path] = {}
    for mask in sorted(mask_dir.iterdir(), key=lambda p: (p.suffix.lower() != ".png", p.name)):  # <stem>.png first
        if mask.suffix.lower() in FRAME_EXTENSIONS and not mask.name.startswith("."):
            chosen = masks_by_stem.setdefault(mask.stem, mask)
            if chosen is not mask and chosen.suffix.lower() != ".png":
                raise VivimError(f"{mask_dir}: several masks are named {mask.stem}.* ({chosen.name}, {mask.name}) and "
                                 "none is a .png, which would be the one read; keep one of them")
    return masks_by_stem


_said_unnamed: set[str] = set()  # mask folders already warned about in this process (datasets are read repeatedly)


def _video_record(name: str, frame_dir: Path, mask_dir: Path, sparse: bool) -> VideoRecord:
    if not mask_dir.is_dir():
        raise VivimError(f"{mask_dir}: mask folder for video '{name}' is missing")
    frames = _list_frames(frame_dir)
    # a mask belongs to the frame of its stem: two frames of one stem (00002.jpg and 00002.png) would share one mask
    twice = shared_stem(frames)
    if twice is not None:
        names = sorted(p.name for p in frames if p.stem.casefold() == twice.casefold())
        raise VivimError(f"{frame_dir}: several frames are named {twice}.* ({', '.join(names)}); keep one of them")
    masks_by_stem = masks_by_stem_in(mask_dir)
    missing = [frame for frame in frames if frame.stem not in masks_by_stem]
    # masks named after no frame (frame_0001.jpg beside 0001_mask.png) would never be read: --sparse-masks must not
    # turn a naming mismatch into a video without masks
    stems = {frame.stem for frame in frames}
    unnamed = sorted((mask for stem, mask in masks_by_stem.items() if stem not in stems), key=frame_order)
    if unnamed and len(unnamed) == len(masks_by_stem):
        raise VivimError(f"{mask_dir}: none of its {len(unnamed)} mask images is named after a frame of '{name}' "
                         f"(e.g. {unnamed[0].name}; its frames are named like {frames[0].name}); a mask takes its "
                         f"frame's name ({frames[0].stem}.png): rename them, or import the video with vivim-data "
                         "import, which pairs masks with frames by order")
    if unnamed and sparse and str(mask_dir) not in _said_unnamed:  # a stray file, or masks named another way
        _said_unnamed.add(str(mask_dir))
        warn(f"{mask_dir}: {count_text(len(unnamed), 'mask image')} named after no frame of '{name}' "
             f"(e.g. {unnamed[0].name}) {'is' if len(unnamed) == 1 else 'are'} not read; a mask takes its frame's name")
    # a missing mask is an error unless the dataset says it is annotated sparsely: a file lost in a copy must not
    # silently shrink the training set
    if missing and not sparse:
        raise VivimError(f"{mask_dir / missing[0].stem}.png: mask for frame {missing[0]} is missing "
                         f"({len(missing)} of {len(frames)} frames of '{name}' have none; any image type is read; "
                         "if only some frames are annotated, pass --sparse-masks)")
    return VideoRecord(name, frames, [masks_by_stem.get(frame.stem) for frame in frames])


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _davis_videos(root: Path, split: str, sparse: bool) -> list[VideoRecord]:
    images, annotations = root / "JPEGImages", root / "Annotations"
    if not annotations.is_dir():
        raise VivimError(f"{annotations}: mask folder is missing (DAVIS layout needs Annotations/ beside JPEGImages/)")
    # DAVIS 2017 keeps a resolution level (480p / Full-Resolution) between the two
    if (images / "480p").is_dir() and not any(p.suffix for p in images.iterdir() if p.is_file()):
        images, annotations = images / "480p", annotations / "480p"
    names = [p.name for p in _subfolders(images)]
    if split != "all":
        lists = sorted((root / "ImageSets").glob(f"**/{split}.txt")) if (root / "ImageSets").is_dir() else []
        if (root / "ImageSets").is_dir() and not lists:  # lists exist, but none for this split: never "all videos"
            have = sorted({p.stem for p in (root / "ImageSets").glob("**/*.txt")})
            raise VivimError(f"{root / 'ImageSets'}: no {split}.txt list (lists: {', '.join(have) or 'none'}); "
                             f"pass --split {' / '.join(have + ['all'])}")
        if lists:  # DAVIS keeps one folder per year (ImageSets/2016, ImageSets/2017): the latest year's list wins
            wanted = [line.strip() for line in lists[-1].read_text().splitlines() if line.strip()]
            missing = [n for n in wanted if n not in names]
            if missing:  # a list naming absent videos: the split would silently be smaller than it says
                raise VivimError(f"{lists[-1]}: {len(missing)} listed video(s) not in {images} (e.g. {missing[0]})")
            names = [n for n in names if n in set(wanted)]
    if not names:
        raise VivimError(f"{images}: no video folders found")
    return [_video_record(n, images / n, annotations / n, sparse) for n in names]


def _vtus_videos(root: Path, split: str, sparse: bool) -> list[VideoRecord]:
    folders = [f for f in _VTUS_FOLDERS[split] if (root / f).is_dir()]
    if not folders:
        raise VivimError(f"{root / _VTUS_FOLDERS[split][0]}: split folder '{split}' is missing")
    videos = []
    for folder in folders:
        names = [p.name for p in _subfolders(root / folder)]
        if not names:
            raise VivimError(f"{root / folder}: no video folders found")
        # several split folders (split 'all'): Train/0001 and Test/0001 are different videos
        prefix = f"{folder}/" if len(folders) > 1 else ""
        videos += [_video_record(prefix + n, root / folder / n, root / f"{folder}_GT" / n, sparse) for n in names]
    return videos


def discover_videos(root: str | Path, split: str = "all", *, sparse: bool = False) -> list[VideoRecord]:
    """All videos of `split` under `root`; every frame must have a mask (<stem>.png, or another image type) or a
    one-line error names it. `sparse` (--sparse-masks): frames may lack masks (echocardiography sets label only a
    few frames per video); they still feed the clips of their neighbours, and their record holds None.

    DAVIS layout: split 'all' = every video; 'train'/'val'/'test' use ImageSets/**/<split>.txt when present
    (else every video). VTUS layout: 'train' = Train/, 'test' = Test/, 'val' = Val/, 'all' = all of them.
    """
    if split not in SPLITS:
        raise VivimError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    root = Path(root)
    layout = detect_layout(root)
    info = read_manifest(root)
    if info is not None and info.get("complete") is False:
        raise VivimError(f"{root}: an interrupted vivim-data synth run (synth.json says incomplete); run it again "
                         "with --overwrite")
    return _davis_videos(root, split, sparse) if layout == "davis" else _vtus_videos(root, split, sparse)


def every_video_note(root: str | Path, split: str) -> str | None:
    """A DAVIS folder without ImageSets/ has no train/val/test lists: there a split asked for by name is every video.
    Returns the one-line warning the tools print then (None otherwise)."""
    root = Path(root)
    named = split in SPLITS and split != "all"  # an unknown name gets discover_videos' error, not this warning
    if named and detect_layout(root) == "davis" and not (root / "ImageSets").is_dir():
        return f"--split {split}: {root} has no ImageSets/ lists, so the split is every video"
    return None


def check_headers(videos: list[VideoRecord]) -> None:
    """Every frame and mask readable and of the same size, from the file headers: a bad file of a validation video
    must fail here, not after the first epoch of training. Frames without a mask (sparse annotation) are checked
    too: they enter their neighbours' clips."""
    for video in videos:
        for frame, mask in zip(video.frames, video.masks):
            frame_size = image_size(frame, "frame")
            if mask is None:
                continue
            mask_size = image_size(mask, "mask")
            if frame_size != mask_size:
                raise size_mismatch(mask, mask_size, frame, frame_size)


def split_by_video(videos: list[VideoRecord], val_fraction: float, seed: int) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """Carve a validation split by whole videos (frames of one video never land on both sides)."""
    import random

    if val_fraction <= 0:
        return list(videos), []
    if len(videos) < 2:
        raise VivimError(f"{videos[0].frames[0].parent}: only one video, cannot carve a validation split (pass --val DIR or --val-fraction 0)")
    order = list(range(len(videos)))
    random.Random(seed).shuffle(order)
    n_val = min(len(videos) - 1, max(1, int(round(val_fraction * len(videos)))))
    val_ids = set(order[:n_val])
    return [v for i, v in enumerate(videos) if i not in val_ids], [v for i, v in enumerate(videos) if i in val_ids]


def folder_id(root: str | Path) -> str:
    """A short fingerprint of a dataset folder's real path: checkpoints record which folder they trained on
    without writing the host's directory names into a file that may be shared."""
    import hashlib
    import os

    return hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:16]


def read_manifest(root: Path) -> dict | None:
    """synth.json of a folder written by vivim-data synth, or None. Its `complete` is False while a run writes
    (and after an interrupted one); files from before that field count as complete."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise VivimError(f"{path}: unreadable synthetic-dataset manifest ({exc})") from None
    return info if isinstance(info, dict) else None
