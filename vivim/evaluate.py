"""`vivim-eval`: score a checkpoint on a dataset — Dice, Jaccard, precision, recall, specificity, MAE per frame,
frame-level and per-video means, at a fixed 0.5 threshold and with the paper's mean-over-256-thresholds protocol.

Conventions (see vivim.metrics): predictions and ground truth at the model's input size (the released code's
protocol), ground truth binarised at 0.5 after the bilinear resize, a zero denominator scores 0.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Optional

import typer

from vivim import atomic, paths
from vivim.checkpoint import checkpoint_file
from vivim.cli_utils import cli_app, count, run_app, warn
from vivim.devices import torch_device
from vivim.errors import VivimError

ROWS = ("dice", "jaccard", "precision", "recall", "specificity", "mae")
STRUCTURE_COLUMNS = (("S-measure", "s_measure"), ("mean E", "mean_e_measure"), ("max E", "max_e_measure"),
                     ("adaptive E", "adaptive_e_measure"), ("weighted F", "weighted_f"))


def default_split(data: str | Path) -> str:
    """VTUS layout: Test/; DAVIS layout: ImageSets' val list when there is one, else every video ('all')."""
    from vivim.data.layouts import detect_layout

    root = Path(data)
    if detect_layout(root) == "vtus":
        return "test"
    return "val" if any((root / "ImageSets").glob("**/val.txt")) else "all"


def _trained_on(meta: dict, data: str | Path) -> bool:
    """Whether the checkpoint's training metadata names `data` as the folder it trained on."""
    import os

    from vivim.data.layouts import folder_id

    training = meta.get("training") or {}
    if "data_id" in training:  # written since 2026-11-27: the folder, wherever eval runs from
        return bool(training["data_id"] == folder_id(data))
    # the path as given to vivim-train, relative to where it ran
    return bool(training.get("data")) and os.path.realpath(training["data"]) == os.path.realpath(data)


def _carved_videos(meta: dict) -> list[str]:
    """The videos vivim-train carved out of its training folder for validation (none for a --val or Val/ split;
    metadata before val_kind says "carved" in its text)."""
    training = meta.get("training") or {}
    carved = training.get("val_kind", "carved" if str(training.get("val", "")).endswith("carved from --data") else None)
    return list(training.get("val_videos") or []) if carved == "carved" else []


def training_videos_among(meta: dict, data: str | Path, videos) -> list[str]:
    """Names of the `videos` (from `data`) that the checkpoint was trained on, by its training metadata: scores on
    them are optimistic. In the training folder itself videos are compared by folder, so Train/0001 and Val/0001 of
    a VTUS set stay apart; anywhere, a video whose frames are byte-identical to a training video's is one too (a
    copied or rearranged training set), for checkpoints that record their videos' fingerprints."""
    import os

    from vivim.data.fingerprint import video_fingerprint
    from vivim.data.layouts import discover_videos

    trained: set[str] = set()
    if _trained_on(meta, data):
        held_out = set(_carved_videos(meta))
        # only the video folders matter here, so frames without masks are no error
        trained = {os.path.realpath(v.frames[0].parent) for v in discover_videos(data, "train", sparse=True)
                   if v.name not in held_out}
    recorded = set((meta.get("training") or {}).get("train_fingerprints") or [])
    return [v.name for v in videos
            if os.path.realpath(v.frames[0].parent) in trained or (recorded and video_fingerprint(v) in recorded)]


def evaluate_checkpoint(
    checkpoint: str,
    data: str,
    *,
    split: Optional[str] = None,
    output_frame: Optional[str] = None,
    device: Optional[str] = None,
    batch: int = 8,
    workers: int = 0,
    sweep: bool = True,
    structure: bool = True,
    progress: bool = True,
    model_and_meta=None,
    sparse_masks: bool = False,
    save_masks: Optional[Path] = None,
):
    """Run the model over every annotated frame of `data`; returns (summary dict, accumulator, dataset, model)."""
    import torch
    from torch.utils.data import DataLoader
    from vivim.progress import bar as progress_bar

    import vivim
    from vivim.constants import (check_output_frame, normalization_from_metadata, resize_from_metadata,
                                 untrained_output_frame)
    from vivim.data.dataset import ClipDataset
    from vivim.data.layouts import discover_videos, every_video_note
    from vivim.metrics import MetricAccumulator

    device = str(torch_device(device))
    model, meta = model_and_meta or vivim.load_checkpoint(checkpoint, map_location=device)
    model.to(device).eval()
    frames, size = model.frames, model.img_size  # the network's own (the metadata repeats them, checked at load)
    trained_frame = meta.get("output_frame", "centre")  # checkpoints record the frame they were trained for
    mismatch = untrained_output_frame(output_frame, trained_frame, frames, str(checkpoint))
    if mismatch:
        warn(mismatch)
    output_frame = output_frame or trained_frame
    check_output_frame(output_frame, frames)
    split_given = split is not None
    asked = split = split or default_split(data)
    note = every_video_note(data, split)  # a DAVIS folder without lists: a named split would be every video
    held_out = _carved_videos(meta) if note and split == "val" and _trained_on(meta, data) else []
    if held_out:  # ... but for --split val on its own training folder the checkpoint names its validation videos
        print(f"note: --split val: {data} has no ImageSets/ lists; scoring the {count(len(held_out), 'video')} "
              f"{checkpoint} held out for validation")
        videos = [v for v in discover_videos(data, "all", sparse=sparse_masks) if v.name in set(held_out)]
        if len(videos) != len(held_out):
            raise VivimError(f"{data}: {len(held_out) - len(videos)} of the validation videos {checkpoint} records are "
                             f"gone (e.g. {sorted(set(held_out) - {v.name for v in videos})[0]})")
    else:
        if note:
            if split_given:
                warn(note)
            split = "all"
        videos = discover_videos(data, split, sparse=sparse_masks)
    # the frames prepared as the model was trained on them: its recorded normalisation and resize filter
    normalization = normalization_from_metadata(meta.get("normalization"), f"{checkpoint}")
    dataset = ClipDataset(videos, frames=frames, size=size, output_frame=output_frame, normalization=normalization,
                          resize=resize_from_metadata(meta.get("resize")))
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers)
    acc = MetricAccumulator(sweep=sweep, structure=structure)
    predictions = PredictionFolders(save_masks, videos, data) if save_masks is not None else None
    start = time.perf_counter()
    with torch.no_grad(), progress_bar(total=len(dataset), unit="frame", desc="eval", disable=not progress,
                               dynamic_ncols=True) as bar:
        for item in loader:
            logits = model(item["clip"].to(device), output_frame=output_frame).float()[:, 0, 0]
            prob = torch.sigmoid(logits)
            acc.add(prob, item["mask"][:, 0] > 0.5, item["video"], item["frame"].tolist())
            if predictions is not None:
                predictions.write(logits.cpu().numpy(), item["video"], item["frame"].tolist())
            bar.update(len(prob))
    if predictions is not None:
        # only after every frame: a failed evaluation leaves the earlier masks listed, and the next one replaces them
        predictions.close()
    seconds = time.perf_counter() - start
    for record, (v, i) in zip(acc.records, dataset.samples):  # in dataset order (no shuffle): the frame's file name
        record["file"] = videos[v].frames[i].name
    summary = acc.summary()
    summary = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "split": split,
        **({"split_requested": asked} if asked != split else {}),
        **({"split_videos": "held out for validation by vivim-train (recorded in the checkpoint)"} if held_out else {}),
        "output_frame": output_frame,
        "variant": meta.get("variant"),
        "frames_per_clip": frames,
        "img_size": size,
        "threshold": 0.5,
        "training_videos_scored": training_videos_among(meta, data, [v for v in videos if v.annotated]),
        **summary,
        "seconds": round(seconds, 2),
        "conventions": "metrics at the model input size; GT = bilinear-resized mask > 0.5; prediction = sigmoid > 0.5 "
                       "(top level) or mean over 256 thresholds linspace(1,0,256) with p > t (thresholds_256); a zero "
                       "denominator scores 0 (empty GT and empty prediction -> Dice 0); means over frames, per_video "
                       "= mean over that video's frames, over_videos = mean of the per_video means (the VPS "
                       "toolboxes' dataset score, though they also skip each video's first and last frame and score "
                       "at the GT's resolution); s_measure (alpha 0.5), mean/adaptive_e_measure and weighted_f "
                       "(beta^2 1) of the continuous p, per frame as those toolboxes compute them; max_e_measure = max "
                       "over thresholds t/255 of the frame-averaged (over_videos: video-averaged) E curve",
    }
    return summary, acc, dataset, model


class PredictionFolders:
    """--save-masks: each scored frame's predicted mask, 0/255 PNG at the frame's own size (the model's logits
    upsampled, then thresholded at 0.5, as vivim-run draws them), as DIR/<video>/<frame stem>.png for tools that score
    mask files. Each video's folder follows vivim-run's rules: an earlier vivim-eval's masks there are replaced,
    files it did not write are never overwritten. Folders of videos this evaluation does not score are left alone."""

    def __init__(self, folder: Path, videos, data: str | Path) -> None:
        from vivim.runtime.sinks import MaskFolderSink

        # masks written among the frames would be read as frames by the next evaluation
        paths.refuse_writing_over_inputs({"--save-masks": folder}, {"--data": data}, folders=("--data",))
        # one mask file per frame: the dataset reader refused frames that share a stem (frame_1.jpg and frame_1.png)
        self.videos = {video.name: video for video in videos if video.annotated}
        self.sinks = {name: MaskFolderSink(str(Path(folder) / name), names=[f.stem for f in video.frames],
                                           tool="vivim-eval")
                      for name, video in self.videos.items()}

    def write(self, logits, names: list[str], frames: list[int]) -> None:
        import numpy as np

        from vivim.data.image_io import image_size
        from vivim.runtime.overlay import mask_from_logits

        for lg, name, index in zip(logits, names, frames):
            width, height = image_size(self.videos[name].frames[index], "frame")
            mask = mask_from_logits(lg, (height, width))
            self.sinks[name].write(index, np.empty(0), mask)

    def close(self) -> None:
        for sink in self.sinks.values():
            sink.close()


def format_table(summary: dict) -> str:
    """A readable table: one row per video, then the frame-level means, for both protocols."""
    width = max([18, *(len(name) + 1 for name in summary["per_video"])])  # whole names: Train/0001 and Test/0001
    head = f"{'video':<{width}}{'frames':>7}" + "".join(f"{k:>12}" for k in ROWS)
    lines = [head, "-" * len(head)]
    for name, block in summary["per_video"].items():
        lines.append(f"{name:<{width}}{block['frames']:>7}" + "".join(f"{block[k]:>12.4f}" for k in ROWS))
    lines.append("-" * len(head))
    lines.append(f"{'all @0.5':<{width}}{summary['frames']:>7}" + "".join(f"{summary[k]:>12.4f}" for k in ROWS))
    videos = summary.get("over_videos") or {}
    if videos:
        lines.append(f"{'videos @0.5':<{width}}{summary['frames']:>7}" + "".join(f"{videos[k]:>12.4f}" for k in ROWS))
    if "thresholds_256" in summary:
        sweep = summary["thresholds_256"]
        lines.append(f"{'all 256-thr mean':<{width}}{summary['frames']:>7}"
                     + "".join(f"{sweep[k]:>12.4f}" for k in ROWS[:-1]) + f"{'':>12}")
    if "s_measure" in summary:  # the measures of the continuous map that polyp papers report beside Dice
        lines.append("")
        lines.append(f"{'continuous p':<{width}}{'frames':>7}"
                     + "".join(f"{label:>12}" for label, _ in STRUCTURE_COLUMNS))
        for name, block in (("all", summary), ("videos", videos)):
            if block:
                lines.append(f"{name:<{width}}{summary['frames']:>7}"
                             + "".join(f"{block[k]:>12.4f}" for _, k in STRUCTURE_COLUMNS))
    if videos:
        lines.append("all = mean over frames; videos = mean over the videos' own means (the VPS toolboxes' score)")
    return "\n".join(lines)


def write_overlays(out_dir: Path, acc, dataset, model, worst: int, output_frame: str, device: Optional[str] = None) -> list[Path]:
    """Images of the `worst` frames by Dice: the input frame with ground truth (green) and prediction (cyan)."""
    import cv2
    import numpy as np
    import torch

    from vivim.data.contact_sheet import GT_COLOUR, PRED_COLOUR, draw_outline
    from vivim.data.image_io import read_frame, write_image

    index = {(dataset.videos[v].name, i): k for k, (v, i) in enumerate(dataset.samples)}
    device = device or next(model.parameters()).device
    records = acc.worst(worst)
    planned = [_overlay_name(rank, record) for rank, record in enumerate(records, start=1)]
    earlier = paths.files_listed_in(out_dir / OVERLAY_LIST) or set()
    unlisted = sorted(p.name for p in out_dir.glob("[0-9][0-9][0-9]_*_[0-9][0-9][0-9][0-9][0-9].png")
                      if p.name not in earlier and p.name not in planned) if out_dir.is_dir() else []
    if unlisted:  # e.g. an earlier version's ranking, which kept no list: it would read as ranks of this one
        warn(f"--overlays {out_dir}: {len(unlisted)} image(s) named like overlays (e.g. {unlisted[0]}) that no "
             f"vivim-eval listed in {OVERLAY_LIST} stay in place; remove them, or choose another folder")
    _list_overlays(out_dir, earlier | set(planned))  # first: a run that dies midway still owns what it wrote
    written = []
    for rank, record in enumerate(records, start=1):
        k = index[(record["video"], record["frame"])]
        item = dataset[k]
        with torch.no_grad():
            logits = model(item["clip"][None].to(device), output_frame=output_frame)
        pred = (torch.sigmoid(logits.float()[0, 0, 0]) > 0.5).cpu().numpy()
        gt = item["mask"][0].numpy() > 0.5
        v, i = dataset.samples[k]
        # shown with the frame's own aspect (vivim-run's overlay keeps it too): the masks, scored on the model's
        # grid (square, or another aspect), are stretched back onto the frame rather than the frame onto the grid
        frame = cv2.cvtColor(read_frame(dataset.videos[v].frames[i]), cv2.COLOR_RGB2BGR)
        shown = _overlay_size(frame.shape[0], frame.shape[1])
        big = lambda a: cv2.resize(a, shown[::-1], interpolation=cv2.INTER_NEAREST)  # noqa: E731
        frame = cv2.resize(frame, shown[::-1], interpolation=cv2.INTER_AREA)
        tinted = frame.copy()
        fill = big(pred.astype(np.uint8)) > 0
        tinted[fill] = (0.6 * tinted[fill] + 0.4 * np.array(PRED_COLOUR)).astype(np.uint8)
        picture = draw_outline(draw_outline(tinted, big(gt.astype(np.uint8)), GT_COLOUR, 2), big(pred.astype(np.uint8)), PRED_COLOUR, 1)
        cv2.putText(picture, f"{record['video']} #{record['frame']} {record.get('file', '')}  Dice {record['dice']:.3f}  "
                    "(green GT, cyan prediction)",
                    (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        path = out_dir / planned[rank - 1]
        write_image(path, np.hstack([frame, picture]))
        written.append(path)
    # the folder holds this evaluation's ranking only: an earlier one's images would read as ranks here. Only files
    # an earlier vivim-eval listed are removed, never a file of the same pattern that someone else put there.
    for stale in earlier - set(planned):
        with contextlib.suppress(FileNotFoundError):
            (out_dir / stale).unlink()
    _list_overlays(out_dir, set(planned))
    return written


OVERLAY_LIST = "vivim-eval-overlays.json"


def _overlay_size(height: int, width: int, small: int = 384, large: int = 768) -> tuple[int, int]:
    """(h, w) of an overlay panel: the frame's aspect, its longer side brought into [small, large] pixels."""
    longest = max(height, width)
    scale = small / longest if longest < small else min(1.0, large / longest)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _overlay_name(rank: int, record: dict) -> str:
    video = record["video"].replace("/", "_")  # Train/0001 (a VTUS 'all' split) stays one file name
    return f"{rank:03d}_{video}_{record['frame']:05d}.png"


def _list_overlays(out_dir: Path, names: set[str]) -> None:
    atomic.write_json(out_dir / OVERLAY_LIST, {"written_by": "vivim-eval --overlays", "files": sorted(names)}, parents=True)


app = cli_app("Evaluate a Vivim checkpoint on a dataset.")


@app.command()
def evaluate(
    checkpoint: str = typer.Argument(..., metavar="CHECKPOINT", help="A .safetensors checkpoint, or 'demo' for the bundled demo weights."),
    data: Path = typer.Option(..., "--data", help="Dataset folder (DAVIS or Vivim/VTUS layout)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write all numbers (per frame, per video, means) here."),
    split: Optional[str] = typer.Option(None, "--split", help="train, val, test or all (default: test for VTUS; for DAVIS, val with an ImageSets val list, else all)."),
    output_frame: Optional[str] = typer.Option(None, "--output-frame", help="centre or newest (default: the checkpoint's)."),
    overlays: Optional[Path] = typer.Option(None, "--overlays", help="Folder for overlay images of the worst frames."),
    worst: int = typer.Option(8, "--worst", min=1, help="How many worst frames get an overlay."),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="cuda, cuda:N or cpu."),
    batch: int = typer.Option(8, "--batch", min=1, help="Clips per forward pass."),
    workers: int = typer.Option(0, "--workers", min=0, help="Data-loading worker processes."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    sparse_masks: bool = typer.Option(False, "--sparse-masks", help="Only some frames have masks: score those."),
    save_masks: Optional[Path] = typer.Option(None, "--save-masks", help="Folder for each scored frame's predicted mask: DIR/<video>/<frame>.png, 0/255 at the frame's size."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Dice, Jaccard, precision, recall, MAE (threshold 0.5 and mean over 256 thresholds), per video and overall;
    S-measure, E-measure and weighted F of the probability map."""
    paths.refuse_writing_over_inputs({"--json": json_out, "--overlays": overlays, "--save-masks": save_masks},
                                     {"--data": data, "CHECKPOINT": checkpoint_file(checkpoint)},
                                     folders=("--data",))
    if json_out:
        paths.check_writable(json_out, "--json")  # before the evaluation, not after it
        if json_out.suffix.lower() != ".json":  # e.g. out.csv: a spreadsheet would not read what lands there
            warn(f"--json {json_out}: the numbers are written as JSON whatever the file's name")
    if overlays:
        paths.check_writable(overlays, "--overlays", folder=True)
    if threads is not None and threads < 1:
        raise VivimError(f"--threads must be at least 1, got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)
    summary, acc, dataset, model = evaluate_checkpoint(checkpoint, str(data), split=split, output_frame=output_frame,
                                                       device=device, batch=batch, workers=workers, progress=progress,
                                                       sparse_masks=sparse_masks, save_masks=save_masks)
    print(format_table(summary))
    seen = summary["training_videos_scored"]
    if seen:
        warn(f"{len(seen)} of the {summary['videos']} videos scored here were training videos of this checkpoint "
             f"or copies of them (e.g. {seen[0]}): these scores are optimistic; score held-out videos (--split, or another --data)")
    print(f"{count(summary['frames'], 'frame')} of {count(summary['videos'], 'video')} ({summary['split']} split, {summary['output_frame']} frame), "
          f"{summary['empty_gt_frames']} with an empty mask; Dice {summary['dice']:.4f} at threshold 0.5, "
          f"{summary['thresholds_256']['dice']:.4f} as the mean over 256 thresholds")
    if json_out:
        atomic.write_json(json_out, {**summary, "per_frame": acc.records}, indent=1)
        print(f"wrote {json_out}")
    if save_masks:
        print(f"wrote the predicted masks of {summary['frames']} frames to {save_masks}/<video>/")
    if overlays:
        written = write_overlays(overlays, acc, dataset, model, worst, summary["output_frame"], device)
        print(f"wrote {len(written)} overlay images of the worst frames to {overlays}")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
