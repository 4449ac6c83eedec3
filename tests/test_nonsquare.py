"""Non-square input sizes end to end: --size HxW parsed alike by every tool, a model built for (H, W) (its decoder's
cached resize weights included), vivim-train at HxW recording it, vivim-eval, --resume and vivim-export taking it
from the checkpoint, and the size vivim-data suggests for wide frames."""

from __future__ import annotations

import json
import re
import math

import pytest
import torch

import vivim
from vivim.constants import canonical_size, image_hw, parse_size, size_argument
from vivim.data.cli import suggested_train_size
from vivim.data.synth_dataset import write_synthetic_dataset
from vivim.errors import VivimError
from vivim.train import TrainConfig, load_state, output_paths, run_training


def test_size_flag_takes_one_side_or_height_by_width() -> None:
    assert parse_size("64") == 64 and parse_size("64x96") == (64, 96) and parse_size("96,64") == (96, 64)
    assert parse_size("96x96") == 96  # a square given as HxW is the square's one form
    assert size_argument((64, 96)) == "64x96" and size_argument(64) == "64" and size_argument([96, 96]) == "96"
    assert image_hw(64) == (64, 64) and image_hw([64, 96]) == (64, 96) and canonical_size([32, 32]) == 32
    with pytest.raises(VivimError, match=r"^--size 64x80: each side must be a multiple of 32"):
        parse_size("64x80")
    for bad in ("64x", "0", "-32", "32x32x32", "abc", "+64", "6_4", "\u0666\u0664"):  # the last: Arabic-Indic 64
        with pytest.raises(VivimError, match=f"^--size {re.escape(bad)}: "):
            parse_size(bad)


def test_model_built_for_height_by_width_matches_the_square_model_on_the_same_input(rng_seed) -> None:
    """The (H, W) model's decoder resizes with weights cached for its stage sizes; a square model given the same
    clip builds them per call: the same weights must give the same logits."""
    wide = vivim.create_model("tiny", frames=3, img_size=(64, 96)).eval()
    square = vivim.create_model("tiny", frames=3, img_size=64).eval()
    square.load_state_dict(wide.state_dict())
    assert wide.img_size == (64, 96) and wide.input_hw == (64, 96)
    assert [m.dst for m in wide.decode_head.upsample] == [(16, 24)] * 3  # stage 1's map: 1/4 of each side
    assert [m.src for m in wide.decode_head.upsample] == [(8, 12), (4, 6), (2, 3)]
    clip = torch.randn(2, 3, 3, 64, 96)
    with torch.no_grad():
        got, want = wide(clip), square(clip)
    assert got.shape == (2, 3, 1, 64, 96)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert vivim.create_model("tiny", img_size=(64, 64)).img_size == 64  # the config keeps one form per size


def _widen(data, height: int = 48, width: int = 80) -> None:
    """Every frame and mask of a synthetic dataset stretched to height x width: wide source frames, as an endoscope
    gives them."""
    import cv2

    for folder, interpolation in (("JPEGImages", cv2.INTER_AREA), ("Annotations", cv2.INTER_NEAREST)):
        for path in (data / folder).rglob("*.*"):
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            assert cv2.imwrite(str(path), cv2.resize(image, (width, height), interpolation=interpolation))


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    """A few steps of vivim-train at 32x64 on 48x80 synthetic frames; the checkpoint and its config."""
    root = tmp_path_factory.mktemp("wide")
    data = root / "data"
    write_synthetic_dataset(data, videos=3, frames=4, size=48, seed=0, mp4=False, sheet=False)
    _widen(data)
    cfg = TrainConfig(data=str(data), out=str(root / "run" / "wide.safetensors"), variant="tiny", epochs=2, frames=3,
                      size=(32, 64), batch=2, workers=0, lr=1e-3, val_fraction=0.34, seed=0, device="cpu",
                      progress=False, max_steps=2)
    run_training(cfg)
    return cfg


def test_training_at_height_by_width_records_it_and_eval_scores_at_it(wide_run, tmp_path) -> None:
    from vivim.evaluate import evaluate_checkpoint

    best, _, state_path = output_paths(wide_run.out)
    model, meta = vivim.load_checkpoint(best)
    assert meta["img_size"] == [32, 64] and meta["config"]["img_size"] == [32, 64] and model.input_hw == (32, 64)
    assert tuple(load_state(state_path)["config"]["size"]) == (32, 64)
    summary, _, dataset, _ = evaluate_checkpoint(best, wide_run.data, split="all", batch=2, workers=0, progress=False)
    assert summary["img_size"] == (32, 64) and json.loads(json.dumps(summary))["img_size"] == [32, 64]
    item = dataset[0]
    assert item["clip"].shape == (3, 3, 32, 64) and item["mask"].shape[-2:] == (32, 64)
    assert dataset._shapes and set(dataset._shapes.values()) == {(48, 80)}  # wide source frames, resized


def test_a_square_size_given_as_height_by_width_is_kept_as_one_side(wide_run, tmp_path) -> None:
    """TrainConfig(size=(32, 32)): the state and the checkpoint hold 32, so --size 32 resumes the run."""
    cfg = TrainConfig(**{**wide_run.__dict__, "size": (32, 32), "out": str(tmp_path / "sq.safetensors"),
                         "max_steps": 1})
    run_training(cfg)
    best, _, state_path = output_paths(cfg.out)
    assert load_state(state_path)["config"]["size"] == 32 and vivim.load_checkpoint(best)[1]["img_size"] == 32
    run_training(TrainConfig(**{**cfg.__dict__, "size": 32, "resume": True, "max_steps": 2}))


def test_vivim_run_prepares_frames_at_the_trained_height_by_width(wide_run, rng_seed) -> None:
    import numpy as np

    from vivim.runtime.backend_torch import TorchBackend

    backend = TorchBackend.from_checkpoint(output_paths(wide_run.out)[0], device="cpu", log=lambda m: None)
    frame = np.random.default_rng(rng_seed).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    backend.prepare(frame.shape)
    x = backend.preprocess(frame)
    assert backend.input_size == (32, 64) and tuple(x.shape[-2:]) == (8, 16)  # stream cache: features at 1/4
    assert backend.infer([x] * backend.frames, backend.frames - 1).shape == (32, 64)
    backend.close()


def test_vivim_bench_runs_and_reports_height_by_width(wide_run, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from typer.testing import CliRunner

    from vivim.bench.cli import app

    best = output_paths(wide_run.out)[0]
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, ["--checkpoint", str(best), "--device", "cpu", "--backends", "torch,ort-cpu",
                                      "--scans", "reference", "--iters", "2", "--warmup", "1", "--no-progress",
                                      "--no-plots", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "clip 1x3x3x32x64" in result.output
    report = json.loads((out / "results.json").read_text())
    ran = [row for row in report["rows"] if row["status"] == "ok"]
    assert {row["backend"] for row in ran} >= {"PyTorch eager", "ONNX Runtime CPU"}
    assert report["config"]["size"] == [32, 64] and all(row["size"] == [32, 64] for row in ran)
    assert ",32x64," in (out / "results.csv").read_text() and "size=32x64" in (out / "results.md").read_text()


def _with_metadata(path, out, **changes):
    """A copy of checkpoint `path` with metadata fields changed (config fields as config_<name>)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as f:
        header = dict(f.metadata())
    meta = json.loads(header["vivim"])
    for key, value in changes.items():
        if key.startswith("config_"):
            meta["config"][key[len("config_"):]] = value
        else:
            meta[key] = value
    header["vivim"] = json.dumps(meta)
    save_file(load_file(str(path)), str(out), metadata=header)
    return out


def test_metadata_sizes_are_checked_and_a_square_pair_is_the_square(tmp_path) -> None:
    from vivim.errors import CheckpointError

    path = tmp_path / "m.safetensors"
    vivim.save_checkpoint(vivim.create_model("tiny", frames=3, img_size=64), path, img_size=(64, 64))
    # [64, 64] from another writer: loads as 64, and the loaded metadata saves again
    pair = _with_metadata(path, tmp_path / "pair.safetensors", img_size=[64, 64], config_img_size=[64, 64])
    model, meta = vivim.load_checkpoint(pair)
    assert model.img_size == 64
    vivim.save_checkpoint(model, tmp_path / "again.safetensors", **meta)
    for changes, message in (({"img_size": [64, 96]}, r"metadata says img_size \[64, 96\] but its config is 64"),
                             ({"img_size": "abc"}, "metadata img_size must be a multiple of 32"),
                             ({"img_size": [64, 96, 3]}, "metadata img_size must be one side N or two sides"),
                             ({"config_img_size": [48, 64]}, "metadata config img_size each side must be a multiple"),
                             ({"frames": 5}, "metadata says frames 5 but its config is 3")):
        bad = _with_metadata(path, tmp_path / "bad.safetensors", **changes)
        with pytest.raises(CheckpointError, match=message):
            vivim.load_checkpoint(bad)


def test_resume_names_a_different_size_as_the_flag_takes_it(wide_run) -> None:
    cfg = TrainConfig(**{**wide_run.__dict__, "size": 32, "resume": True})
    with pytest.raises(VivimError, match=r"the run was started with --size 32x64, not 32; resume with the same flags"):
        run_training(cfg)
    resumed = run_training(TrainConfig(**{**wide_run.__dict__, "size": (32, 64), "resume": True, "max_steps": None}))
    assert resumed.epochs_done == 2


def test_export_takes_the_trained_height_by_width(wide_run, tmp_path, capsys) -> None:
    pytest.importorskip("onnx")
    import onnx

    from vivim.export.onnx_export import export_onnx

    best = output_paths(wide_run.out)[0]
    export_onnx(best, tmp_path / "wide.onnx", output_frame="newest", optimize=False)
    graph = onnx.load(str(tmp_path / "wide.onnx"), load_external_data=False).graph
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 3, 32, 64]
    assert "trained at" not in capsys.readouterr().err  # the trained size itself: nothing to warn about
    export_onnx(best, tmp_path / "turned.onnx", size=(64, 32), output_frame="newest", optimize=False)
    assert "trained at 32x64; exporting --size 64x32 (--size is HxW: height first)" in capsys.readouterr().err


@pytest.mark.parametrize("frames", [[(1280, 720)], [(640, 480), (800, 600)], [(600, 800)], [(1920, 1080)] * 3])
def test_suggested_size_keeps_a_shared_aspect_at_about_the_square_pixel_count(frames) -> None:
    height, width = image_hw(suggested_train_size(frames))
    aspect = math.exp(sum(math.log(w / h) for w, h in frames) / len(frames))
    assert height % 32 == 0 and width % 32 == 0
    assert abs(math.log((width / height) / aspect)) < math.log(1.2)  # the frames' aspect, to a 32-pixel step
    assert 0.8 < height * width / 256**2 < 1.2  # what a square 256 step costs


@pytest.mark.parametrize("frames, expected", [([(256, 256)], 256), ([(1280, 720), (640, 480)], 256),
                                              ([(100, 100)], 96), ([(540, 500)], 256)])
def test_suggested_size_is_square_for_square_small_or_mixed_frames(frames, expected) -> None:
    assert suggested_train_size(frames) == expected


@pytest.mark.gpu
def test_vivim_run_on_cuda_with_a_graph_matches_the_cpu_at_height_by_width(wide_run, rng_seed) -> None:
    """The device resize to a non-square grid, the fp16 network and its CUDA graph against the CPU backend."""
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    import numpy as np

    from vivim.runtime.backend_torch import TorchBackend

    best = output_paths(wide_run.out)[0]
    frames = [np.random.default_rng(rng_seed + k).integers(0, 256, (48, 80, 3), dtype=np.uint8) for k in range(3)]
    masks = []
    for options in ({"device": "cpu"}, {"device": "cuda", "fp16": True, "cuda_graph": True}):
        backend = TorchBackend.from_checkpoint(best, log=lambda m: None, **options)
        backend.prepare(frames[0].shape)
        masks.append(backend.infer([backend.preprocess(f) for f in frames], 2))
        backend.close()
    assert masks[0].shape == masks[1].shape == (32, 64)
    assert np.abs(masks[0].astype(np.float32) - masks[1].astype(np.float32)).max() < 0.05 * np.abs(masks[0]).max() + 0.05


def test_vivim_train_names_a_size_turned_against_the_frames(wide_run) -> None:
    """48x80 (landscape) frames: --size 64x32 (portrait, HxW) would squeeze every frame; 32x64 and squares pass."""
    from vivim.data.layouts import discover_videos
    from vivim.train import turned_size_note

    videos = discover_videos(wide_run.data, "all")
    note = turned_size_note((64, 32), videos)
    assert note is not None and note.startswith("--size 64x32 is portrait (height x width) but the frames are 80 "
                                                "wide and 48 high") and note.endswith("--size 32x64 keeps theirs")
    assert turned_size_note((32, 64), videos) is None and turned_size_note(64, videos) is None
