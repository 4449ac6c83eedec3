"""vivim-eval: numbers match an independent re-computation, JSON keys, overlays, CLI, and the shipped demo weights."""

from __future__ import annotations

import json
import re
import shutil
import sys
from importlib import resources

import cv2
import numpy as np
import pytest
import torch

import vivim
from vivim.constants import IMAGENET_MEAN, IMAGENET_STD
from vivim.data.synth_dataset import write_synthetic_dataset
from vivim.errors import VivimError
from vivim.evaluate import default_split, evaluate_checkpoint, format_table, write_overlays
from vivim.structure_metrics import s_measure, weighted_f_measure



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    write_synthetic_dataset(root, videos=2, frames=5, size=48, seed=3, mp4=False, sheet=False)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = vivim.create_model("tiny", frames=3, img_size=32)
    path = tmp_path_factory.mktemp("ckpt") / "random.safetensors"
    vivim.save_checkpoint(model, path, output_frame="centre")
    return path


def _reference_scores(checkpoint, data, mode):
    """Re-do the evaluation by hand: read files with OpenCV, build clamped clips, run the model, count pixels."""
    model, _ = vivim.load_checkpoint(checkpoint)
    mean = np.array(IMAGENET_MEAN, np.float32) * 255
    std = np.array(IMAGENET_STD, np.float32) * 255
    scores = {}
    for video in sorted((data / "JPEGImages").iterdir()):
        files = sorted(video.glob("*.jpg"))
        images = [cv2.resize(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), (32, 32), interpolation=cv2.INTER_LINEAR) for f in files]
        for i, f in enumerate(files):
            start = i - 1 if mode == "centre" else i - 2
            clip = np.stack([images[min(max(j, 0), len(files) - 1)] for j in range(start, start + 3)]).astype(np.float32)
            x = torch.from_numpy(((clip - mean) / std).transpose(0, 3, 1, 2)[None].copy())
            with torch.no_grad():
                p = torch.sigmoid(model(x, output_frame=mode))[0, 0, 0].numpy()
            raw = (cv2.imread(str(data / "Annotations" / video.name / f"{f.stem}.png"), cv2.IMREAD_GRAYSCALE) > 127).astype(np.float32)
            gt = cv2.resize(raw, (32, 32), interpolation=cv2.INTER_LINEAR) > 0.5
            pred = p > 0.5
            tp, fp, fn = np.sum(pred & gt), np.sum(pred & ~gt), np.sum(~pred & gt)
            swept = []  # the paper's protocol: Dice at each of 256 thresholds from 1 down to 0, p > t
            for t in np.linspace(1, 0, 256):
                above = p > t
                a, b, c = np.sum(above & gt), np.sum(above & ~gt), np.sum(~above & gt)
                swept.append(2 * a / (2 * a + b + c) if (2 * a + b + c) else 0.0)
            scores[(video.name, i)] = {
                "dice": 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0,
                "precision": tp / (tp + fp) if tp + fp else 0.0,
                "recall": tp / (tp + fn) if tp + fn else 0.0,
                "mae": float(np.abs(p - gt).mean()),
                "dice_256": float(np.mean(swept)),
                "empty_gt": not gt.any(),
                "s_measure": float(s_measure(torch.from_numpy(p)[None], torch.from_numpy(gt)[None])[0]),
                "weighted_f": float(weighted_f_measure(torch.from_numpy(p)[None], torch.from_numpy(gt)[None])[0]),
            }
    return scores


@pytest.mark.parametrize("mode", ["centre", "newest"])
def test_scores_match_an_independent_recomputation(checkpoint, data, mode):
    summary, acc, _, _ = evaluate_checkpoint(str(checkpoint), str(data), output_frame=mode, device="cpu", batch=4, progress=False)
    ref = _reference_scores(checkpoint, data, mode)
    assert len(acc.records) == len(ref) == 10
    for record in acc.records:
        expected = ref[(record["video"], record["frame"])]
        assert record["file"] == sorted((data / "JPEGImages" / record["video"]).glob("*.jpg"))[record["frame"]].name
        for key in ("dice", "precision", "recall", "mae"):
            assert record[key] == pytest.approx(expected[key], abs=1e-5), (record["video"], record["frame"], key)
        assert record["thresholds_256"]["dice"] == pytest.approx(expected["dice_256"], abs=1e-5)
        for key in ("s_measure", "weighted_f"):  # of the continuous map each frame's clip gave
            assert record[key] == pytest.approx(expected[key], abs=1e-5), (record["video"], record["frame"], key)
    assert summary["dice"] == pytest.approx(np.mean([r["dice"] for r in ref.values()]), abs=1e-6)
    assert summary["thresholds_256"]["dice"] == pytest.approx(np.mean([r["dice_256"] for r in ref.values()]), abs=1e-6)
    assert summary["empty_gt_frames"] == sum(r["empty_gt"] for r in ref.values())
    for name in ("synth_0000", "synth_0001"):  # per video: the mean of that video's frames
        frames = [r for (video, _), r in ref.items() if video == name]
        assert summary["per_video"][name]["dice"] == pytest.approx(np.mean([r["dice"] for r in frames]), abs=1e-6)
        assert summary["per_video"][name]["thresholds_256"]["dice"] == pytest.approx(
            np.mean([r["dice_256"] for r in frames]), abs=1e-6)
    assert summary["output_frame"] == mode and summary["frames"] == 10 and summary["videos"] == 2


def test_masks_halved_in_size_are_thresholded_above_one_half(checkpoint, tmp_path):
    """Ground truth at twice the model's size: halving it puts boundary pixels at exactly 0.5, which the protocol
    (p > 0.5 for the prediction, gt > 0.5 for the mask) counts as background. The same independent recomputation."""
    data = tmp_path / "data64"
    write_synthetic_dataset(data, videos=2, frames=5, size=64, seed=5, mp4=False, sheet=False)
    summary, acc, _, _ = evaluate_checkpoint(str(checkpoint), str(data), output_frame="centre", device="cpu", batch=4,
                                             progress=False)
    ref = _reference_scores(checkpoint, data, "centre")
    for record in acc.records:
        expected = ref[(record["video"], record["frame"])]
        for key in ("dice", "precision", "recall", "mae"):
            assert record[key] == pytest.approx(expected[key], abs=1e-5), (record["video"], record["frame"], key)


def test_the_frame_a_checkpoint_was_trained_for_is_the_default(data, tmp_path):
    """A model trained on the newest frame is scored on the newest frame unless --output-frame says otherwise."""
    torch.manual_seed(1)
    path = tmp_path / "newest.safetensors"
    vivim.save_checkpoint(vivim.create_model("tiny", frames=3, img_size=32), path, output_frame="newest")
    summary, acc, _, _ = evaluate_checkpoint(str(path), str(data), device="cpu", batch=4, progress=False)
    assert summary["output_frame"] == "newest"
    ref = _reference_scores(path, data, "newest")
    for record in acc.records:
        assert record["dice"] == pytest.approx(ref[(record["video"], record["frame"])]["dice"], abs=1e-5)
    summary, _, _, _ = evaluate_checkpoint(str(path), str(data), output_frame="centre", device="cpu", batch=4,
                                           progress=False)
    assert summary["output_frame"] == "centre"


def test_sparse_masks_score_the_annotated_frames_with_full_clips(checkpoint, data, tmp_path):
    import shutil

    ref = _reference_scores(checkpoint, data, "centre")  # every frame annotated, clips from every frame
    copy = tmp_path / "sparse"
    shutil.copytree(data, copy)
    seed = int(np.random.SeedSequence().entropy % 2**32)  # fresh each run, named in any failure
    rng = np.random.default_rng(seed)
    kept = set()
    for video in ("synth_0000", "synth_0001"):
        masks = sorted((copy / "Annotations" / video).iterdir())
        keep = set(rng.choice(len(masks), size=2, replace=False).tolist())
        for i, mask in enumerate(masks):
            if i not in keep:
                mask.unlink()
        kept |= {(video, i) for i in keep}
    with pytest.raises(VivimError, match="--sparse-masks"):
        evaluate_checkpoint(str(checkpoint), str(copy), device="cpu", progress=False)
    summary, acc, _, _ = evaluate_checkpoint(str(checkpoint), str(copy), device="cpu", progress=False, sparse_masks=True)
    assert {(r["video"], r["frame"]) for r in acc.records} == kept and summary["frames"] == 4
    for record in acc.records:
        expected = ref[(record["video"], record["frame"])]
        for key in ("dice", "precision", "recall", "mae"):
            assert record[key] == pytest.approx(expected[key], abs=1e-5), (seed, record["video"], record["frame"], key)
    assert summary["dice"] == pytest.approx(np.mean([ref[key]["dice"] for key in kept]), abs=1e-6), seed


def test_predicted_masks_are_written_per_video_at_each_frame_s_size(checkpoint, data, tmp_path):
    # reference: the model's logits for frame k's clamped clip, upsampled to the frame's size, above 0 (= p > 0.5);
    # frames 56 wide and 40 high, so a swapped width and height would show
    model, _ = vivim.load_checkpoint(checkpoint)
    mean = np.array(IMAGENET_MEAN, np.float32) * 255
    std = np.array(IMAGENET_STD, np.float32) * 255
    wide = tmp_path / "wide"
    shutil.copytree(data, wide)
    for path in [*wide.glob("JPEGImages/*/*.jpg"), *wide.glob("Annotations/*/*.png")]:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(path), cv2.resize(image, (56, 40), interpolation=cv2.INTER_NEAREST))
    data = wide
    out = tmp_path / "pred"
    summary, *_ = evaluate_checkpoint(str(checkpoint), str(data), device="cpu", progress=False, save_masks=out)
    for video in ("synth_0000", "synth_0001"):
        files = sorted((data / "JPEGImages" / video).glob("*.jpg"))
        assert sorted(p.name for p in (out / video).glob("*.png")) == sorted(f"{f.stem}.png" for f in files)
        images = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]
        small = [cv2.resize(im, (32, 32), interpolation=cv2.INTER_LINEAR) for im in images]
        for k, f in enumerate(files):
            clip = np.stack([small[min(max(j, 0), len(files) - 1)] for j in range(k - 1, k + 2)]).astype(np.float32)
            x = torch.from_numpy(((clip - mean) / std).transpose(0, 3, 1, 2)[None].copy())
            with torch.no_grad():
                logits = model(x, output_frame="centre")[0, 0, 0].numpy()
            height, width = images[k].shape[:2]
            expected = cv2.resize(logits, (width, height), interpolation=cv2.INTER_LINEAR) > 0
            saved = cv2.imread(str(out / video / f"{f.stem}.png"), cv2.IMREAD_GRAYSCALE)
            assert saved.shape == (height, width) and set(np.unique(saved)) <= {0, 255}
            assert ((saved > 0) == expected).mean() > 0.99, (video, k)
    # ground truth named like the predictions is never overwritten
    truth = tmp_path / "truth"
    shutil.copytree(data / "Annotations", truth)
    with pytest.raises(VivimError, match="vivim-eval-masks.json"):
        evaluate_checkpoint(str(checkpoint), str(data), device="cpu", progress=False, save_masks=truth)
    assert sorted(p.name for p in (truth / "synth_0000").iterdir()) == sorted(
        p.name for p in (data / "Annotations" / "synth_0000").iterdir())


def test_predicted_mask_folders_keep_what_vivim_eval_did_not_write_and_survive_a_failed_run(checkpoint, data,
                                                                                               tmp_path):
    copy, out = tmp_path / "data", tmp_path / "pred"
    shutil.copytree(data, copy)
    evaluate_checkpoint(str(checkpoint), str(copy), device="cpu", progress=False, save_masks=out)
    (out / "synth_0000" / "123456.png").write_bytes(b"the user's")  # index-named, but vivim-eval never writes those
    earlier = sorted(p.name for p in (out / "synth_0001").iterdir())
    (copy / "JPEGImages" / "synth_0001" / "00003.jpg").write_bytes(b"damaged")
    with pytest.raises(VivimError, match="00003.jpg"):
        evaluate_checkpoint(str(checkpoint), str(copy), device="cpu", progress=False, save_masks=out)
    assert sorted(p.name for p in (out / "synth_0001").iterdir()) == earlier  # nothing deleted by the failed run
    shutil.copy(data / "JPEGImages" / "synth_0001" / "00003.jpg", copy / "JPEGImages" / "synth_0001" / "00003.jpg")
    evaluate_checkpoint(str(checkpoint), str(copy), device="cpu", progress=False, save_masks=out)
    assert (out / "synth_0000" / "123456.png").read_bytes() == b"the user's"
    # two frames that would share one mask (and one predicted mask file): refused by the reader, before any model pass
    cv2.imwrite(str(copy / "JPEGImages" / "synth_0000" / "00001.png"), np.zeros((48, 48, 3), np.uint8))
    with pytest.raises(VivimError, match=r"synth_0000: several frames are named 00001\.\* \(00001\.jpg, 00001\.png\)"):
        evaluate_checkpoint(str(checkpoint), str(copy), device="cpu", progress=False, save_masks=tmp_path / "p2")


def test_cli_writes_json_table_and_overlays(checkpoint, data, tmp_path):
    from typer.testing import CliRunner

    from vivim.evaluate import app

    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, [str(checkpoint), "--data", str(data), "--json", str(out), "--overlays", str(tmp_path / "ov"),
                                      "--worst", "3", "--device", "cpu", "--no-progress", "--save-masks", str(tmp_path / "pred")])
    assert result.exit_code == 0, result.output
    assert "all @0.5" in result.output and "256-thr" in result.output
    assert re.search(r"\nall\s+10" + r"\s+0\.\d{4}" * 5 + r"\nvideos\s+10" + r"\s+0\.\d{4}" * 5, result.output), \
        result.output  # the structure measures over all frames and over the videos' means
    assert f"wrote the predicted masks of 10 frames to {tmp_path / 'pred'}/<video>/" in result.output
    assert len(list((tmp_path / "pred").glob("*/*.png"))) == 10
    inside = CliRunner().invoke(app, [str(checkpoint), "--data", str(data), "--device", "cpu", "--no-progress",
                                      "--save-masks", str(data / "predictions")])  # masks among the frames: refused
    assert isinstance(inside.exception, VivimError) and "--save-masks" in str(inside.exception)
    assert not (data / "predictions").exists()
    report = json.loads(out.read_text())
    for key in ("dice", "jaccard", "precision", "recall", "mae", "s_measure", "mean_e_measure", "max_e_measure",
                "adaptive_e_measure", "weighted_f"):
        assert 0.0 <= report[key] <= 1.0
        assert all(0.0 <= block[key] <= 1.0 for block in [*report["per_video"].values(), report["over_videos"]])
    assert set(report["thresholds_256"]) >= {"dice", "jaccard", "precision", "recall"}
    assert set(report["per_video"]) == {"synth_0000", "synth_0001"} and len(report["per_frame"]) == 10
    images = sorted((tmp_path / "ov").glob("*.png"))
    assert len(images) == 3 and cv2.imread(str(images[0])) is not None
    named_csv = CliRunner().invoke(app, [str(checkpoint), "--data", str(data), "--json", str(tmp_path / "e.csv"),
                                         "--device", "cpu", "--no-progress"])
    assert named_csv.exit_code == 0 and "the numbers are written as JSON whatever the file's name" in named_csv.output
    assert json.loads((tmp_path / "e.csv").read_text())["dice"] == report["dice"]
    first = images[0].stem.split("_")  # 001_<video>_<frame>: the worst frame comes first
    assert min(report["per_frame"], key=lambda r: (r["dice"], r["video"], r["frame"]))["frame"] == int(first[-1])

    # a second evaluation into the same folder replaces the first one's ranking instead of mixing with it
    (tmp_path / "ov" / "notes.txt").write_text("mine")
    theirs = tmp_path / "ov" / "007_mine_00042.png"  # named like an overlay, but no vivim-eval wrote it
    theirs.write_bytes(b"not ours")
    result = CliRunner().invoke(app, [str(checkpoint), "--data", str(data), "--overlays", str(tmp_path / "ov"),
                                      "--worst", "1", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in sorted((tmp_path / "ov").glob("*.png"))] == sorted([images[0].name, theirs.name])
    assert (tmp_path / "ov" / "notes.txt").read_text() == "mine" and theirs.read_bytes() == b"not ours"
    assert "warning: --overlays" in result.output and "007_mine_00042.png" in result.output  # said, not deleted
    assert not (data / "ImageSets").exists()  # a named split of a folder without lists scores every video: said so
    named = tmp_path / "named.json"
    result = CliRunner().invoke(app, [str(checkpoint), "--data", str(data), "--split", "test", "--device", "cpu",
                                      "--no-progress", "--json", str(named)])
    assert result.exit_code == 0 and "2 videos (all split" in result.output, result.output  # what was scored
    report = json.loads(named.read_text())
    assert report["split"] == "all" and report["split_requested"] == "test"
    assert "warning: --split test: " in result.output and "so the split is every video" in result.output
    for extra, needle in ((["--threads", "0"], "--threads must be at least 1"),
                          (["--overlays", str(data / "JPEGImages")], "is inside the input --data")):
        result = CliRunner().invoke(app, [str(checkpoint), "--data", str(data), "--device", "cpu", *extra])
        assert result.exit_code != 0 and needle in str(result.exception), (extra, result.exception)


def test_table_lists_every_video(checkpoint, data):
    summary, *_ = evaluate_checkpoint(str(checkpoint), str(data), device="cpu", progress=False)
    table = format_table(summary)
    assert "synth_0000" in table and "synth_0001" in table


def test_one_line_error_for_a_missing_checkpoint(data, tmp_path, monkeypatch, capsys):
    from vivim.evaluate import main

    monkeypatch.setattr(sys, "argv", ["vivim-eval", str(tmp_path / "nope.safetensors"), "--data", str(data)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.safetensors" in err[0]


def _demo_present() -> bool:
    return (resources.files("vivim") / "assets" / "demo_tiny.safetensors").is_file()


@pytest.mark.skipif(not _demo_present(), reason="demo weights not bundled in this checkout")
def test_demo_weights_segment_held_out_synthetic_video(tmp_path):
    model, meta = vivim.load_checkpoint("demo")
    assert meta["variant"] == "tiny" and "synthetic" in json.dumps(meta).lower()
    # held-out: video indices the demo never saw (it trained on indices < 100 of seed 7)
    write_synthetic_dataset(tmp_path, videos=2, frames=8, size=128, seed=7, first_index=5000, mp4=False, sheet=False)
    summary, *_ = evaluate_checkpoint("demo", str(tmp_path), device="cpu", progress=False, model_and_meta=(model, meta))
    # measured 0.873 (2026-11-27); an anti-causal temporal conv drops it to 0.78, a swapped decoder concat to 0.0
    assert summary["dice"] > 0.82, summary["dice"]


def test_scoring_the_training_videos_is_flagged(data, tmp_path, capsys):
    import shutil

    from vivim.evaluate import default_split, main
    from vivim.train import TrainConfig, run_training

    result = run_training(TrainConfig(data=str(data), out=str(tmp_path / "m.safetensors"), variant="tiny", epochs=1,
                                      frames=3, size=32, batch=2, workers=0, val_fraction=0.5, seed=0, device="cpu",
                                      progress=False, max_steps=1))
    _, meta = vivim.load_checkpoint(result.best_path)
    held_out = meta["training"]["val_videos"]
    assert default_split(data) == "all"  # no ImageSets lists: every video, said as such
    summary, *_ = evaluate_checkpoint(str(result.best_path), str(data), progress=False)
    assert summary["split"] == "all" and summary["videos"] == 2
    assert summary["training_videos_scored"] == [name for name in ("synth_0000", "synth_0001") if name not in held_out]
    # --split val on the training folder (no ImageSets lists): the videos the run held out, as its checkpoint says
    val, *_ = evaluate_checkpoint(str(result.best_path), str(data), split="val", progress=False)
    assert val["split"] == "val" and sorted(val["per_video"]) == sorted(held_out) and val["training_videos_scored"] == []
    assert "split_videos" in val and "scoring the 1 video" in capsys.readouterr().out
    trained = [name for name in ("synth_0000", "synth_0001") if name not in held_out]
    assert len(meta["training"]["train_fingerprints"]) == len(trained)
    copy = tmp_path / "training_copy"  # a copy of the training folder elsewhere: its training videos are found by content
    shutil.copytree(data, copy)
    assert evaluate_checkpoint(str(result.best_path), str(copy), progress=False)[0]["training_videos_scored"] == trained
    assert evaluate_checkpoint(str(result.best_path), str(copy), split="val", progress=False)[0]["split"] == "all"
    other = tmp_path / "other"  # videos the run never saw
    write_synthetic_dataset(other, videos=2, frames=4, size=48, seed=99, mp4=False, sheet=False)
    assert evaluate_checkpoint(str(result.best_path), str(other), progress=False)[0]["training_videos_scored"] == []

    monkey_argv = ["vivim-eval", str(result.best_path), "--data", str(data), "--no-progress"]
    old_argv, sys.argv = sys.argv, monkey_argv
    try:
        with pytest.raises(SystemExit) as info:
            main()
    finally:
        sys.argv = old_argv
    assert info.value.code in (0, None)
    assert "1 of the 2 videos scored here were training videos of this checkpoint or copies of them" in capsys.readouterr().err


def test_training_videos_are_found_by_folder_in_a_vtus_set(tmp_path, monkeypatch):
    import shutil

    from vivim.train import TrainConfig, run_training

    monkeypatch.chdir(tmp_path)
    write_synthetic_dataset("vt", videos=3, frames=4, size=48, seed=4, layout="vtus", test_fraction=0.34, mp4=False,
                            sheet=False)
    root = tmp_path / "vt"
    name = sorted(p.name for p in (root / "Train").iterdir())[0]
    for part in ("", "_GT"):  # Val/ and Test/ hold videos named like a Train/ one; the Test/ one is shorter
        shutil.copytree(root / f"Train{part}" / name, root / f"Val{part}" / name)
        shutil.copytree(root / f"Train{part}" / name, root / f"Test{part}" / name)
        shutil.copytree(root / f"Train{part}" / name, root / f"Val{part}" / "copied")  # the same video, renamed
        for extra in sorted((root / f"Test{part}" / name).iterdir())[2:]:
            extra.unlink()
    first = sorted((root / "Val" / name).iterdir())[0]  # the Val/ namesake is another video: other frames
    first.write_bytes(sorted((root / "Val" / name).iterdir())[1].read_bytes())
    result = run_training(TrainConfig(data="vt", out="m.safetensors", variant="tiny", epochs=1, frames=3, size=32,
                                      batch=2, workers=0, seed=0, device="cpu", progress=False, max_steps=1))
    summary, acc, dataset, model = evaluate_checkpoint(str(result.best_path), str(root), split="all", progress=False)
    train_names = sorted(f"Train/{p.name}" for p in (root / "Train").iterdir())
    # Val/ and Test/ namesakes are not training videos; a byte-identical copy under another name is one
    assert summary["training_videos_scored"] == sorted(train_names + ["Val/copied"])
    assert summary["per_video"][f"Test/{name}"]["frames"] == 2
    assert f"Test/{name}" in format_table(summary)  # whole names in the table
    written = write_overlays(tmp_path / "worst", acc, dataset, model, 3, summary["output_frame"])
    assert sorted(p.name for p in (tmp_path / "worst").glob("*.png")) == sorted(p.name for p in written)  # flat files
    assert all(p.parent == tmp_path / "worst" and "/" not in p.name for p in written)


def test_frames_are_prepared_with_the_checkpoints_own_normalisation_and_resize_filter(data, tmp_path):
    """vivim-run and the exports read a checkpoint's recorded (mean, std) and resize filter; vivim-eval must score
    the model on the same input, not on ImageNet's constants and the default filter."""
    from vivim.data.image_io import read_frame

    torch.manual_seed(1)
    mean, std = (0.3, 0.5, 0.7), (0.2, 0.25, 0.4)
    path = tmp_path / "own.safetensors"
    vivim.save_checkpoint(vivim.create_model("tiny", frames=3, img_size=32), path,
                          normalization={"mean": list(mean), "std": list(std)}, resize="area")
    _, _, dataset, _ = evaluate_checkpoint(str(path), str(data), device="cpu", progress=False)
    video, index = dataset.samples[0]
    clip = dataset[0]["clip"].numpy()  # (T, 3, H, W): its centre frame is the sample's own frame
    rgb = cv2.resize(read_frame(dataset.videos[video].frames[index]), (32, 32), interpolation=cv2.INTER_AREA)
    expected = ((rgb.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)).transpose(2, 0, 1)
    np.testing.assert_allclose(clip[1], expected, rtol=0, atol=1e-4)


def test_scoring_a_frame_the_model_was_not_trained_for_is_said(checkpoint, data, capsys):
    """A centre-trained model scored on the newest frame of its clips scores worse there: allowed, and said."""
    evaluate_checkpoint(str(checkpoint), str(data), device="cpu", progress=False, output_frame="newest", sweep=False)
    err = capsys.readouterr().err
    assert f"warning: {checkpoint} was trained to segment the centre frame of its clip; --output-frame newest" in err
    evaluate_checkpoint(str(checkpoint), str(data), device="cpu", progress=False, output_frame="centre", sweep=False)
    assert "was trained to segment" not in capsys.readouterr().err


def test_a_video_fingerprint_follows_the_frames_it_samples(tmp_path):
    """Copies match; a changed first, middle or last frame, or another frame count, does not; a frame that cannot
    be read gives no fingerprint (never a false match)."""
    from vivim.data.fingerprint import video_fingerprint
    from vivim.data.layouts import VideoRecord

    rng = np.random.default_rng()
    files = []
    for k in range(5):
        path = tmp_path / f"{k:05d}.bin"
        path.write_bytes(rng.bytes(64))
        files.append(path)
    video = VideoRecord("v", files, [None] * 5)
    base = video_fingerprint(video)
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in files:
        shutil.copy(path, copy / path.name)
    assert video_fingerprint(VideoRecord("w", sorted(copy.iterdir()), [None] * 5)) == base
    for index in (0, 2, 4):
        (copy / files[index].name).write_bytes(rng.bytes(64))
        assert video_fingerprint(VideoRecord("w", sorted(copy.iterdir()), [None] * 5)) != base
        shutil.copy(files[index], copy / files[index].name)
    assert video_fingerprint(VideoRecord("v", files[:4], [None] * 4)) != base
    assert video_fingerprint(VideoRecord("v", files[:4] + [tmp_path / "gone.bin"], [None] * 5)) is None


def test_a_davis_folder_with_a_val_list_is_scored_on_that_list_by_default(checkpoint, data, tmp_path):
    import shutil

    root = tmp_path / "listed"
    shutil.copytree(data, root)
    (root / "ImageSets/2017").mkdir(parents=True)
    (root / "ImageSets/2017/train.txt").write_text("synth_0000\n")
    (root / "ImageSets/2017/val.txt").write_text("synth_0001\n")
    assert default_split(root) == "val"
    summary, *_ = evaluate_checkpoint(str(checkpoint), str(root), device="cpu", progress=False)
    assert summary["split"] == "val" and sorted(summary["per_video"]) == ["synth_0001"]


def test_overlays_keep_the_frames_aspect(checkpoint, tmp_path):
    """A 40x80 frame is shown 40:80 with the ground truth's outline on the lesion's border, as vivim-run shows it;
    not squashed onto the model's square grid."""
    from vivim.data.contact_sheet import GT_COLOUR
    from vivim.evaluate import _overlay_size

    rng = np.random.default_rng()
    root, lesion = tmp_path / "wide", np.zeros((40, 80), np.uint8)
    lesion[10:30, 44:72] = 1  # a box, so its outline is easy to place
    for k in range(3):
        frame = rng.integers(0, 80, (40, 80, 3), dtype=np.uint8)
        frame[lesion > 0] = 230
        for folder, image in (("JPEGImages", frame), ("Annotations", lesion * 255)):
            (root / folder / "wide").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / folder / "wide" / f"{k:05d}.{'jpg' if folder == 'JPEGImages' else 'png'}"), image)
    summary, acc, dataset, model = evaluate_checkpoint(str(checkpoint), str(root), device="cpu", progress=False)
    (path,) = write_overlays(tmp_path / "ov", acc, dataset, model, 1, summary["output_frame"])
    image = cv2.imread(str(path))
    h, w = _overlay_size(40, 80)
    assert (h, w) == (192, 384) and image.shape == (h, 2 * w, 3)  # two panels, each 1:2 like the frame
    right = image[:, w:]
    green = np.all(right == np.array(GT_COLOUR, np.uint8), axis=2)
    ys, xs = np.nonzero(green)
    scale = w / 80  # the box's border, in panel pixels: rows 10..30, columns 44..72 of the frame
    assert green.sum() > 0
    assert abs(ys.min() - 10 * scale) <= scale + 2 and abs(ys.max() - 30 * scale) <= scale + 2
    assert abs(xs.min() - 44 * scale) <= scale + 2 and abs(xs.max() - 72 * scale) <= scale + 2
