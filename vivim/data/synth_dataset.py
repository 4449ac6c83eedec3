"""Write generated videos as a dataset on disk: DAVIS or Vivim/VTUS layout, an .mp4 per video, a contact sheet."""

from __future__ import annotations

import contextlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from vivim import atomic
from vivim.data.contact_sheet import write_contact_sheet
from vivim.data.image_io import write_image, write_video
from vivim.data.layouts import MANIFEST, read_manifest
from vivim.data.synthetic import make_video
from vivim.errors import VivimError

LAYOUTS = ("davis", "vtus")
# Everything the writer may create under its folder (DAVIS puts one <video>.mp4 per video at the top as well).
_ENTRIES = ("JPEGImages", "Annotations", "Train", "Train_GT", "Test", "Test_GT", "videos", "contact_sheet.png", MANIFEST)


@dataclass
class SynthSummary:
    root: Path
    layout: str
    videos: list[str]
    test_videos: list[str]
    frames: int
    size: int
    contact_sheet: Path | None
    foreground: float  # mean fraction of lesion pixels


def write_synthetic_dataset(
    out: str | Path,
    *,
    videos: int = 8,
    frames: int = 30,
    size: int = 256,
    seed: int = 0,
    layout: str = "davis",
    test_fraction: float = 0.25,
    sector: bool | None = None,
    mp4: bool = True,
    sheet: bool = True,
    fps: float = 25.0,
    first_index: int = 0,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
    label_every: int = 1,
) -> SynthSummary:
    """Generate `videos` videos (video k uses stream (seed, first_index + k)) and write them under `out`.

    davis: JPEGImages/<v>/00000.jpg + Annotations/<v>/00000.png + <v>.mp4.
    vtus:  Train/<v>/0000.jpg + Train_GT/<v>/0000.png (Test, Test_GT for the last `test_fraction` of videos)
           + videos/<v>.mp4.
    A folder that already holds a dataset is refused (new frames would mix with old ones); with `overwrite` a
    previous synthetic dataset (one with synth.json) is removed first, and anything else there is left alone.
    `label_every` k > 1 writes the masks of frames 0, k, 2k, ... only: a sparsely annotated set (--sparse-masks).
    """
    if label_every < 1:
        raise VivimError(f"--label-every must be at least 1, got {label_every}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    root = Path(out)
    prepare_output_folder(root, overwrite)
    root.mkdir(parents=True, exist_ok=True)
    n_test = int(round(videos * test_fraction)) if layout == "vtus" else 0
    if layout == "vtus" and videos >= 2:
        n_test = min(max(n_test, 1), videos - 1)
    planned = [_video_name(layout, first_index + k) for k in range(videos)]
    # Written first, completed last: an interrupted run is recognisable (and --overwrite knows what it wrote).
    _write_manifest(root, {"generator": "vivim.data.synthetic", "layout": layout, "complete": False,
                           "videos": [{"name": n} for n in planned],
                           "test_videos": planned[videos - n_test:]})
    names: list[str] = []
    test_names: list[str] = []
    sheet_rows: list[tuple[str, np.ndarray, np.ndarray]] = []
    foreground = []
    manifest = []
    for k in range(videos):
        index = first_index + k
        video = make_video(seed, index, frames=frames, size=size, sector=sector, fps=fps)
        name = _video_name(layout, index)
        frame_dir, mask_dir, mp4_path = _video_paths(root, layout, name, test=k >= videos - n_test)
        stem_digits = 5 if layout == "davis" else 4
        (test_names if layout == "vtus" and k >= videos - n_test else names).append(name)
        for i in range(frames):
            stem = f"{i:0{stem_digits}d}"
            rgb_like = np.repeat(video.frames[i][..., None], 3, axis=2)  # RGB with grey content, like VTUS
            write_image(frame_dir / f"{stem}.jpg", rgb_like)
            if i % label_every == 0:
                write_image(mask_dir / f"{stem}.png", video.masks[i] * np.uint8(255))
        if mp4:
            write_video(mp4_path, video.frames, fps)
        # the sheet and the lesion share describe what is on disk: the annotated frames only
        kept = slice(None, None, label_every)
        if len(sheet_rows) < 6:
            sheet_rows.append((name, video.frames[kept], video.masks[kept]))
        foreground.append(float(video.masks[kept].mean()))
        manifest.append({"name": name, **video.info})
        if progress is not None:
            progress(k + 1)
    sheet_path = write_contact_sheet(root / "contact_sheet.png", sheet_rows) if sheet else None
    info = {
        "generator": "vivim.data.synthetic",
        "layout": layout,
        "complete": True,
        "seed": seed,
        "frames": frames,
        "size": size,
        "label_every": label_every,
        "videos": manifest,
        "test_videos": test_names,
        "note": "synthetic B-mode ultrasound, for software testing and demos only; not for clinical use",
    }
    _write_manifest(root, info)
    return SynthSummary(root, layout, names, test_names, frames, size, sheet_path, float(np.mean(foreground)) if foreground else 0.0)


def _video_name(layout: str, index: int) -> str:
    return f"synth_{index:04d}" if layout == "davis" else f"{index:04d}"


def _video_paths(root: Path, layout: str, name: str, test: bool) -> tuple[Path, Path, Path]:
    """(frame folder, mask folder, .mp4) of one video; `test` places a vtus video in Test/ (davis has no split)."""
    if layout == "davis":
        return root / "JPEGImages" / name, root / "Annotations" / name, root / f"{name}.mp4"
    split = "Test" if test else "Train"
    return root / split / name, root / f"{split}_GT" / name, root / "videos" / f"{name}.mp4"


def _write_manifest(root: Path, info: dict) -> None:
    atomic.write_json(root / MANIFEST, info, indent=1)


def _written_by(root: Path, info: dict) -> list[Path]:
    """The folders and files an earlier run listed in `info` wrote (its videos, their .mp4s, the contact sheet)."""
    test = set(info.get("test_videos", []))
    # "videos" lists every video (the test ones too, once complete): each name once
    names = list(dict.fromkeys([v["name"] for v in info.get("videos", []) if isinstance(v, dict) and "name" in v]
                               + sorted(test)))
    foreign = [n for n in names if not (isinstance(n, str) and re.fullmatch(r"(synth_)?\d{4,}", n))]
    if foreign:  # only names this writer gives are ever removed (an edited manifest must not reach outside `root`)
        raise VivimError(f"{root / MANIFEST}: lists {foreign[0]!r}, not a video name vivim-data synth writes; "
                         "remove the folder's contents by hand or choose a new folder")
    layout = "vtus" if info.get("layout") == "vtus" else "davis"
    found = [path for name in names for path in _video_paths(root, layout, name, test=name in test)]
    return [p for p in found + [root / "contact_sheet.png", root / MANIFEST] if p.exists()]


def prepare_output_folder(root: Path, overwrite: bool, *, clear: bool = True) -> None:
    """Refuse a folder that holds a dataset; with `overwrite`, remove what an earlier synthetic run wrote (as its
    synth.json lists it) and nothing else (clear=False: only check). A no-op for a new or empty folder."""
    root = Path(root)
    if not root.is_dir():
        return
    found = [root / name for name in _ENTRIES if (root / name).exists()] + sorted(root.glob("synth_*.mp4"))
    if not found:
        return
    names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
    if not overwrite:
        raise VivimError(f"{root}: already holds a dataset ({names}); choose a new folder, or pass --overwrite to "
                         "replace a previous vivim-data synth output")
    info = read_manifest(root)
    if info is None:
        raise VivimError(f"{root}: holds a dataset that vivim-data synth did not write (no synth.json); "
                         "--overwrite only replaces synthetic datasets, choose a new folder")
    if not clear:
        return
    written = _written_by(root, info)
    for path in written:
        linked = next((p for p in (path, *path.parents) if p.is_symlink() and root in p.parents), None)
        if linked is not None:  # never delete through a link: it may lead to a data drive
            raise VivimError(f"{linked}: is a symbolic link; --overwrite removes nothing through links, "
                             "clear the earlier dataset by hand or choose a new folder")
    for path in written:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for name in _ENTRIES:  # the layout folders, once they hold nothing of anyone's
        with contextlib.suppress(OSError):
            (root / name).rmdir()
