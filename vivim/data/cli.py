"""`vivim-data`: make synthetic ultrasound datasets and look at datasets on disk."""

from __future__ import annotations

import math
import time
from pathlib import Path

import typer

from vivim import paths
from vivim.cli_utils import cli_app, count, next_command, run_app, shell, warn
from vivim.constants import SEED_MAX, SIZE_MULTIPLE, canonical_size, size_argument
from vivim.errors import VivimError

app = cli_app("Synthetic ultrasound data, video import and dataset checks.", no_args_is_help=True)


@app.command(short_help="Synthetic ultrasound videos with exact lesion masks.")
def synth(
    out: Path = typer.Argument(..., metavar="OUT", help="Output folder (created)."),
    videos: int = typer.Option(8, "--videos", "-n", min=1, help="Number of videos."),
    frames: int = typer.Option(30, "--frames", "-f", min=1, help="Frames per video."),
    size: int = typer.Option(256, "--size", "-s", min=32, help="Frame width = height in pixels."),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Seed; video k is the same for a given (seed, k) whatever --videos is."),
    layout: str = typer.Option("davis", "--layout", help="davis (JPEGImages/, Annotations/) or vtus (Train/, Train_GT/, Test/, Test_GT/)."),
    test_fraction: float = typer.Option(0.25, "--test-fraction", min=0.0, max=0.9, help="vtus layout: share of videos written to Test/."),
    probe: str = typer.Option("mixed", "--probe", help="linear, convex (sector) or mixed (drawn per video)."),
    first_index: int = typer.Option(0, "--first-index", min=0, help="Start at video index k (held-out sets: same seed, other indices)."),
    fps: float = typer.Option(25.0, "--fps", min=1.0, help="Frame rate written into the .mp4 files."),
    mp4: bool = typer.Option(True, "--mp4/--no-mp4", help="Also write one .mp4 per video."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous vivim-data synth output in OUT."),
    label_every: int = typer.Option(1, "--label-every", min=1, help="Write the mask of every k-th frame only (a sparsely annotated set: train it with --sparse-masks)."),
) -> None:
    """Write procedural B-mode ultrasound videos with exact lesion masks (+ .mp4s and contact_sheet.png)."""
    from vivim.progress import bar as progress_bar

    from vivim.data.synth_dataset import LAYOUTS, prepare_output_folder, write_synthetic_dataset

    if layout not in LAYOUTS:
        raise VivimError(f"--layout {layout!r}: choose davis or vtus")
    sector = {"linear": False, "convex": True, "mixed": None}.get(probe, "bad")
    if sector == "bad":
        raise VivimError(f"--probe {probe!r}: choose linear, convex or mixed")
    paths.check_writable(out, "OUT", folder=True)
    prepare_output_folder(out, overwrite, clear=False)  # before the progress bar: a refusal is the only output
    start = time.perf_counter()
    with progress_bar(total=videos, unit="video", desc="synth") as bar:
        summary = write_synthetic_dataset(
            out, videos=videos, frames=frames, size=size, seed=seed, layout=layout, test_fraction=test_fraction,
            sector=sector, mp4=mp4, fps=fps, first_index=first_index, progress=lambda k: bar.update(1),  # type: ignore[arg-type]
            overwrite=overwrite, label_every=label_every,
        )
    elapsed = time.perf_counter() - start
    split = f" ({len(summary.videos)} train / {len(summary.test_videos)} test)" if layout == "vtus" else ""
    labels = f", masks on one frame in {label_every}" if label_every > 1 else ""
    print(f"wrote {count(videos, 'video')} x {count(frames, 'frame')} at {size}x{size}{split}{labels} to {out} in {elapsed:.1f} s; "
          f"lesion pixels {100 * summary.foreground:.1f} %")
    if summary.contact_sheet:
        print(f"contact sheet: {summary.contact_sheet}")
    train_size = suggested_train_size([(size, size)])
    no_val = ["--val-fraction", 0] if len(summary.videos) < 2 else []  # one training video: nothing to hold out
    sparse = ["--sparse-masks"] if label_every > 1 else []
    if first_index > 0:  # a held-out set (same seed, later indices): score the model trained on the first set
        next_command(shell("vivim-eval", "runs/synth.safetensors", "--data", out, "--split", "all", *sparse))
        return
    next_command(shell("vivim-train", "--data", out, "--variant", "tiny", "--size", size_argument(train_size), "--epochs", 20, *no_val,
                       *sparse, "--out", "runs/synth.safetensors"))


@app.command("import", short_help="Video files and their masks -> a dataset for vivim-train.")
def import_command(
    videos: Path = typer.Argument(..., metavar="VIDEOS", help="A video file, or a folder of them (.mp4, .avi, .mov, .mkv, ...), or of subfolders of them (one per patient: named <patient>_<clip>)."),
    masks: Path = typer.Option(..., "--masks", "-m", help="Folder with, per video <stem>, a mask video (<stem>.mp4 or <stem>_mask.mp4, any container) or a folder (<stem>/ or <stem>_mask/) of one mask image per frame, or numbered images <stem>_00000.png ... among other videos' masks; for a single video, also its mask video or mask folder itself. Clips in subfolders look in the same subfolder of --masks first."),
    out: Path = typer.Option(..., "--out", "--output", "-o", help="New dataset folder (DAVIS layout: JPEGImages/ + Annotations/)."),
    image_format: str = typer.Option("jpg", "--format", help="Frame files: jpg (quality 95, as DAVIS) or png (lossless)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier vivim-data import in OUT (once the new one is complete)."),
) -> None:
    """Turn video files and their masks into a dataset for vivim-train and vivim-eval."""
    from vivim.progress import bar as progress_bar

    from vivim.data.video_import import find_videos, header_frames, import_videos, named_for_another_video, plan_import

    if image_format not in ("jpg", "png"):
        raise VivimError(f"--format {image_format!r}: choose jpg or png")
    if not masks.exists():
        raise VivimError(f"--masks {masks}: no such folder or file")
    paths.check_writable(out, "-o", folder=True)
    files = find_videos(videos, masks)
    sources = plan_import(files, masks, out, root=videos, overwrite=overwrite)
    if len(sources) == 1 and sources[0][1] == masks:  # one video's masks given by their own path
        mismatch = named_for_another_video(files[0], masks)
        if mismatch:
            warn(mismatch)
    start = time.perf_counter()
    # SIGTERM unwinds like Ctrl-C: the half-written dataset under its temporary name is removed either way
    with progress_bar(total=sum(header_frames(v) for v in files) or None, unit="frame", desc="import") as bar:
        summary = import_videos(sources, out, image_format=image_format, progress=bar.update)
    sizes = sorted({f"{v['width']}x{v['height']}" for v in summary.videos})
    lesion = sum(v["lesion"] * v["frames"] for v in summary.videos) / max(1, summary.frames)
    print(f"imported {count(len(summary.videos), 'video')}, {count(summary.frames, 'frame')} ({', '.join(sizes)} "
          "width x height) "
          f"into {out} in {time.perf_counter() - start:.1f} s; lesion pixels {100 * lesion:.1f} %")
    for warning in summary.warnings:
        warn(warning)
    if lesion == 0:
        warn(f"{masks}: every mask is empty; see README (Data) for how a mask marks the lesion")
    no_val = ["--val-fraction", 0] if len(summary.videos) < 2 else []  # one video: nothing to hold out
    train_size = suggested_train_size([(v["width"], v["height"]) for v in summary.videos])
    next_command(shell("vivim-train", "--data", out, "--size", size_argument(train_size), *no_val,
                       "--out", "runs/model.safetensors"))


def suggested_train_size(frame_sizes: list[tuple[int, int]], side: int = 256) -> int | tuple[int, int]:
    """The --size to suggest for frames of these (width, height): the paper's side x side pixels (or fewer, for small
    frames) in multiples of 32; in the frames' own aspect when they share one that is not square (wide endoscopy
    video would otherwise be squeezed), so a step costs about what a square one does."""
    smallest = min(min(width, height) for width, height in frame_sizes)
    side = max(SIZE_MULTIPLE, min(smallest, side) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    aspects = [width / height for width, height in frame_sizes]
    aspect = math.exp(sum(math.log(a) for a in aspects) / len(aspects))
    if max(aspects) / min(aspects) > 1.1 or abs(math.log(aspect)) < math.log(1.15):  # mixed or near square
        return side

    def multiple(x: float) -> int:
        return max(SIZE_MULTIPLE, round(x / SIZE_MULTIPLE) * SIZE_MULTIPLE)

    height = multiple(side / math.sqrt(aspect))
    return canonical_size((height, multiple(height * aspect)))


@app.command(short_help="Check a dataset: videos, frames, sizes and lesion area.")
def check(
    data: Path = typer.Argument(..., metavar="DATA", help="Dataset folder (DAVIS or Vivim/VTUS layout)."),
    split: str = typer.Option("all", "--split", help="train, val, test or all."),
    sparse_masks: bool = typer.Option(False, "--sparse-masks", help="Only some frames have masks (the others feed clips only)."),
) -> None:
    """Read every frame and mask of a dataset and report videos, frames, sizes and lesion area."""
    import numpy as np
    from vivim.progress import bar as progress_bar

    from vivim.data.image_io import read_frame, read_mask, size_mismatch
    from vivim.data.layouts import detect_layout, discover_videos, every_video_note

    videos = discover_videos(data, split, sparse=sparse_masks)
    note = every_video_note(data, split)
    if note:
        warn(note)
    sizes: set[tuple[int, int]] = set()
    fg, empty = [], 0
    total = sum(len(v) for v in videos)
    with progress_bar(total=total, unit="frame", desc="check") as bar:
        for video in videos:
            for frame, mask_path in zip(video.frames, video.masks):
                image = read_frame(frame)
                sizes.add((image.shape[1], image.shape[0]))
                if mask_path is not None:
                    mask = read_mask(mask_path)
                    if image.shape[:2] != mask.shape:
                        raise size_mismatch(mask_path, mask.shape[::-1], frame, image.shape[1::-1])
                    fg.append(float(mask.mean()))
                    empty += int(not mask.any())
                bar.update(1)
    size_text = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
    unlabelled = sum(not v.annotated for v in videos)
    annotated = f"{len(fg)} of them annotated ({unlabelled} video(s) without any mask), " if sparse_masks else ""
    lesion = f"{100 * float(np.mean(fg)):.1f} %" if fg else "n/a"
    print(f"{data}: {detect_layout(Path(data))} layout, split {split}: {count(len(videos), 'video')}, {count(total, 'frame')}, "
          f"{annotated}sizes {size_text} (width x height), lesion pixels {lesion} on average, {empty} frames with an empty mask")
    if fg and empty == len(fg):  # nothing to learn: most likely masks that encode the lesion in another way
        warn(f"{data}: every one of the {len(fg)} masks is empty; see README (Data) for how a mask marks the lesion")
    elif sparse_masks and not fg:
        warn(f"{data}: no frame has a mask; masks are named like their frames (<frame stem>.png)")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
