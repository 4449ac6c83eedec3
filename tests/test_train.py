"""vivim-train: a short run lowers the loss and writes loadable checkpoints, --resume continues exactly, DDP with
two gloo processes keeps both ranks identical, CLI smoke tests. Tiny variant, 32x32, T=3: seconds on a CPU."""

from __future__ import annotations

import os
import re
import socket
import sys

import pytest
import torch

import vivim
from vivim.data.synth_dataset import write_synthetic_dataset
from vivim.errors import VivimError
from vivim.train import TrainConfig, history_path, load_state, output_paths, run_training



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(root, videos=3, frames=4, size=48, seed=0, mp4=False, sheet=False)
    return root


def _cfg(data, out, **overrides) -> TrainConfig:
    base = dict(data=str(data), out=str(out), variant="tiny", epochs=2, frames=3, size=32, batch=2, workers=0, lr=1e-3,
                val_fraction=0.0, seed=0, device="cpu", progress=False)
    base.update(overrides)
    return TrainConfig(**base)


def _plain_types_only(obj, path="state"):
    """The resume state must hold only tensors / numbers / strings / lists / dicts (safe with weights_only=True)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, (str, int)), f"{path}: key {k!r}"
            _plain_types_only(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _plain_types_only(v, f"{path}[{i}]")
    else:
        assert obj is None or isinstance(obj, (torch.Tensor, int, float, str, bool)), f"{path}: {type(obj).__name__}"


def test_short_run_lowers_loss_and_writes_loadable_checkpoints(data, tmp_path):
    cfg = _cfg(data, tmp_path / "run" / "model.safetensors", epochs=5, val_fraction=0.34, augment=False)
    result = run_training(cfg)
    per_epoch = len(result.step_losses) // 5
    first, last = result.step_losses[:per_epoch], result.step_losses[-per_epoch:]
    assert sum(last) / len(last) < sum(first) / len(first)
    assert len(result.val_dice) == 5 and all(0.0 <= d <= 1.0 for d in result.val_dice)

    best, last_path, state_path = output_paths(cfg.out)
    assert best == tmp_path / "run/model.safetensors" and last_path.name == "model.last.safetensors"
    model, meta = vivim.load_checkpoint(best)
    assert meta["variant"] == "tiny" and meta["frames"] == 3 and meta["img_size"] == 32
    training = meta["training"]
    assert training["kind"] == "best" and training["seed"] == 0 and training["data"] == str(data)
    assert training["best_val_dice"] == pytest.approx(max(result.val_dice), abs=1e-6)
    _, last_meta = vivim.load_checkpoint(last_path)
    assert last_meta["training"]["epochs_done"] == 5
    x = torch.randn(1, 3, 3, 32, 32)
    assert model(x, output_frame="centre").shape == (1, 1, 1, 32, 32)

    state = load_state(state_path)  # torch.load(weights_only=True) inside
    _plain_types_only(state)
    assert state["epoch"] == 4 and len(state["history"]["epoch_loss"]) == 5
    # the per-epoch log: the epochs' mean losses, the validation Dice of each epoch, the best one marked
    import csv

    with open(history_path(cfg.out)) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [float(r["train_loss"]) for r in rows] == pytest.approx(state["history"]["epoch_loss"], abs=1e-6)
    assert [float(r["val_dice"]) for r in rows] == pytest.approx(result.val_dice, abs=1e-6)
    assert [r["best"] for r in rows].count("1") == 1
    assert float(rows[[r["best"] for r in rows].index("1")]["val_dice"]) == pytest.approx(max(result.val_dice), abs=1e-6)


@pytest.mark.parametrize("workers", [0, 2])  # 2: persistent worker processes, vivim-train's default
def test_resume_gives_identical_next_step_loss(data, tmp_path, workers, capsys):
    # three epochs, resumed after the first: the second resumed epoch runs on the restored schedule's learning rate
    full = run_training(_cfg(data, tmp_path / "full.safetensors", epochs=3, workers=workers))
    steps_per_epoch = len(full.step_losses) // 3
    first = run_training(_cfg(data, tmp_path / "part.safetensors", epochs=3, max_steps=steps_per_epoch,
                              workers=workers))
    assert first.step_losses == full.step_losses[:steps_per_epoch]
    capsys.readouterr()
    resumed = run_training(_cfg(data, tmp_path / "part.safetensors", epochs=3, resume=True, workers=workers))
    # no validation set: no Dice to report (the -1 that stands for none is not one)
    assert "at epoch 2/3 (no validation set)" in capsys.readouterr().out
    assert resumed.step_losses[0] == full.step_losses[steps_per_epoch]  # bit-identical next step
    assert resumed.step_losses == full.step_losses[steps_per_epoch:]
    for key, value in full.final_state.items():
        assert torch.equal(value, resumed.final_state[key]), key
    # the resumed run's log continues the first part's: the same file as the uninterrupted run's
    log = history_path(tmp_path / "part.safetensors").read_text()
    assert log == history_path(tmp_path / "full.safetensors").read_text()
    assert [line.split(",")[2] for line in log.splitlines()[1:]] == ["", "", ""]  # no validation set: no Dice


@pytest.mark.parametrize("workers", [0, 2])
def test_max_steps_inside_an_epoch_leaves_it_open_and_resume_finishes_it_exactly(data, tmp_path, workers, capsys):
    """--max-steps stopping inside an epoch saves and validates, but does not count the epoch as done (nor step the
    schedule): --resume continues at the next batch, and the run ends as the uninterrupted one does, to the bit."""
    full = run_training(_cfg(data, tmp_path / "full.safetensors", epochs=2, workers=workers, val_fraction=0.34))
    steps_per_epoch = len(full.step_losses) // 2
    assert steps_per_epoch >= 3
    out = tmp_path / "part.safetensors"
    stop = steps_per_epoch + 2  # inside the second epoch
    first = run_training(_cfg(data, out, epochs=2, workers=workers, val_fraction=0.34, max_steps=stop))
    printed = capsys.readouterr().out
    assert first.epochs_done == 1 and first.step_losses == full.step_losses[:stop]
    assert f"epoch 2/2 stopped by --max-steps after 2 of {steps_per_epoch} batches" in printed, printed
    assert f"done: 1 epoch and 2 of {steps_per_epoch} batches of epoch 2 (--max-steps)" in printed, printed
    state = load_state(output_paths(out)[2])
    assert state["epoch"] == 0 and state["partial"]["batches"] == 2 and state["partial"]["of"] == steps_per_epoch
    assert len(state["history"]["epoch_loss"]) == 1  # the open epoch has no row yet
    _, meta = vivim.load_checkpoint(output_paths(out)[1])
    assert meta["training"]["epochs_done"] == 1 and meta["training"]["partial_epoch"]["batches"] == 2
    # a second stop inside the same epoch, then the rest
    second = run_training(_cfg(data, out, epochs=2, workers=workers, val_fraction=0.34, resume=True, max_steps=1))
    assert f"(best Dice so far {state['best_dice']:.4f})" in capsys.readouterr().out
    assert second.step_losses == full.step_losses[stop : stop + 1]
    rest = run_training(_cfg(data, out, epochs=2, workers=workers, val_fraction=0.34, resume=True))
    assert rest.step_losses == full.step_losses[stop + 1 :]
    assert rest.epochs_done == 2
    for key, value in full.final_state.items():
        assert torch.equal(value, rest.final_state[key]), key
    assert history_path(out).read_text() == history_path(tmp_path / "full.safetensors").read_text()


def test_resuming_a_finished_run_trains_nothing_and_says_so(data, tmp_path, capsys):
    out = tmp_path / "done.safetensors"
    first = run_training(_cfg(data, out, epochs=1))
    capsys.readouterr()
    again = run_training(_cfg(data, out, epochs=1, max_steps=1, resume=True, progress=True))
    printed = capsys.readouterr()
    assert "already trained 1 of --epochs 1; nothing to do" in printed.err, printed.err
    assert "resuming from" not in printed.out, printed.out  # it said "at epoch 2/1" before
    assert first.step_losses and again.step_losses == [] and again.epochs_done == 1  # no step taken


def test_resume_errors(data, tmp_path):
    with pytest.raises(VivimError, match="no training state"):
        run_training(_cfg(data, tmp_path / "none.safetensors", resume=True))
    run_training(_cfg(data, tmp_path / "a.safetensors", max_steps=1, epochs=1))
    with pytest.raises(VivimError, match="frames"):
        run_training(_cfg(data, tmp_path / "a.safetensors", resume=True, frames=5))
    with pytest.raises(VivimError, match="--epochs 1"):
        run_training(_cfg(data, tmp_path / "a.safetensors", resume=True, epochs=3))
    for change, flag in ((dict(lr=0.05), "--lr"), (dict(seed=9), "--seed"), (dict(val_fraction=0.5), "--val-fraction"),
                         (dict(val=str(data)), "--val"), (dict(output_frame="newest"), "--output-frame")):
        with pytest.raises(VivimError, match=f"started with {flag} "):
            run_training(_cfg(data, tmp_path / "a.safetensors", resume=True, epochs=1, **change))
    with pytest.raises(VivimError, match="started without --no-augment; resume with the same flags"):
        run_training(_cfg(data, tmp_path / "a.safetensors", resume=True, epochs=1, augment=False))
    # every difference in one message, not one attempt per flag
    with pytest.raises(VivimError, match="started with --frames 3, not 5; with --lr 0.001, not 0.05; without "
                                         "--no-augment; resume with the same flags"):
        run_training(_cfg(data, tmp_path / "a.safetensors", resume=True, epochs=1, frames=5, lr=0.05, augment=False))
    with pytest.raises(VivimError, match="--resume continues the run at --out and --overwrite starts a new one"):
        run_training(_cfg(data, tmp_path / "a.safetensors", resume=True, overwrite=True, epochs=1))


def test_resume_of_an_older_state_without_none_settings_still_refuses_a_new_val(data, tmp_path):
    """States written before 2026-11-27 left out settings that were None: a --val given only at resume is refused."""
    out = tmp_path / "old.safetensors"
    run_training(_cfg(data, out, max_steps=1, epochs=2, output_frame="center"))
    assert vivim.load_checkpoint(out)[1]["output_frame"] == "centre"  # one spelling in checkpoints and state
    state_path = output_paths(out)[2]
    state = load_state(state_path)
    state["config"] = {k: v for k, v in state["config"].items() if v is not None}  # the older format
    torch.save(state, state_path)
    with pytest.raises(VivimError, match="started with --val None"):
        run_training(_cfg(data, out, resume=True, epochs=2, val=str(data)))
    assert len(run_training(_cfg(data, out, resume=True, epochs=2, max_steps=1)).step_losses) == 1  # same flags: resumes


def test_init_from_a_vivim_checkpoint(data, tmp_path):
    source = run_training(_cfg(data, tmp_path / "src.safetensors", epochs=1, max_steps=2))
    # with a vanishing learning rate the fine-tuned weights stay those of the checkpoint it started from
    tuned = run_training(_cfg(data, tmp_path / "tuned.safetensors", epochs=1, max_steps=1, lr=1e-20, init=str(source.best_path)))
    start, _ = vivim.load_checkpoint(source.best_path)
    for key, value in start.state_dict().items():
        if "running_" in key or "num_batches" in key:
            continue
        torch.testing.assert_close(tuned.final_state[key], value, rtol=0, atol=1e-12, msg=key)
    other = tmp_path / "b0.safetensors"
    vivim.save_checkpoint(vivim.create_model("b0", frames=3, img_size=32), other)
    with pytest.raises(VivimError, match="cannot initialise"):
        run_training(_cfg(data, tmp_path / "x.safetensors", epochs=1, max_steps=1, init=str(other)))


def test_init_demo_names_the_bundled_weights_as_in_the_other_tools():
    from vivim.training.init_weights import initialise_weights

    demo, meta = vivim.load_checkpoint("demo")
    model = vivim.create_model(meta["variant"], frames=3, img_size=32)  # any T and size: fine-tuning elsewhere
    initialise_weights(model, "demo", verbose=False)
    for key, value in demo.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    with pytest.raises(VivimError, match="cannot initialise the 'b0' variant"):
        initialise_weights(vivim.create_model("b0", frames=3, img_size=32), "demo", verbose=False)
    tiny = vivim.create_model("tiny", frames=3, img_size=32)
    with pytest.raises(VivimError, match=r"--init runs/nope.safetensors: no such file or folder"):
        initialise_weights(tiny, "runs/nope.safetensors", verbose=False)


def test_init_refuses_a_checkpoint_with_tensors_this_model_does_not_have(tmp_path):
    """Same variant, one tensor more (another version of the model): a one-line error, not load_state_dict's
    multi-line RuntimeError."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from vivim.training.init_weights import initialise_weights

    from vivim.checkpoint import checkpoint_file

    demo = checkpoint_file("demo")
    tensors = load_file(str(demo))
    with safe_open(str(demo), framework="pt") as handle:
        metadata = handle.metadata()
    tensors["decoder.extra_head.weight"] = torch.zeros(3)
    save_file(tensors, str(tmp_path / "newer.safetensors"), metadata=metadata)
    with pytest.raises(VivimError, match=r"1 tensors do not fit this model \(e.g. decoder.extra_head.weight\)"):
        initialise_weights(vivim.create_model("tiny", frames=3, img_size=32), str(tmp_path / "newer.safetensors"), False)


def test_init_from_local_segformer_weights(data, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    c = vivim.create_model("tiny", frames=3, img_size=32).config
    hf = transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(
        num_encoder_blocks=4, depths=list(c.depths), hidden_sizes=list(c.embed_dims), num_attention_heads=list(c.num_heads),
        sr_ratios=list(c.sr_ratios), decoder_hidden_size=c.decoder_dim, num_labels=150))
    hf.save_pretrained(tmp_path / "segformer")  # a local folder with model.safetensors, as users download it
    result = run_training(_cfg(data, tmp_path / "seg.safetensors", epochs=1, max_steps=1, lr=1e-20, init=str(tmp_path / "segformer")))
    # every mapped SegFormer tensor arrives unchanged (names follow vivim.model.segformer_import)
    from vivim.model.segformer_import import segformer_key_to_vivim

    checked = 0
    for key, value in hf.state_dict().items():
        target = segformer_key_to_vivim(key)
        if target in result.final_state and "running_" not in target and "num_batches" not in target:
            torch.testing.assert_close(result.final_state[target], value, rtol=0, atol=1e-12, msg=key)
            checked += 1
    assert checked > 20


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    from safetensors.torch import save_file

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    result = run_training(_cfg(data, out, epochs=1, max_steps=2, val_fraction=0.34))
    save_file({k: v.contiguous() for k, v in result.final_state.items()}, f"{out}.rank{rank}.safetensors")
    dist.destroy_process_group()


def test_ddp_two_gloo_processes_end_with_identical_weights(data, tmp_path):
    from safetensors.torch import load_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp.safetensors")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(data), out), nprocs=2, join=True)
    rank0, rank1 = load_file(f"{out}.rank0.safetensors"), load_file(f"{out}.rank1.safetensors")
    init = vivim.create_model("tiny", frames=3, img_size=32).state_dict()
    params = [k for k in rank0 if "running_" not in k and "num_batches" not in k]  # BN statistics are per rank
    assert params
    for key in params:
        assert torch.equal(rank0[key], rank1[key]), key
    assert any(not torch.equal(rank0[k], init[k]) for k in params), "the weights were updated"
    model, meta = vivim.load_checkpoint(out)  # only rank 0 writes, and it did
    assert meta["training"]["world_size"] == 2


def test_cli_smoke_and_one_line_errors(data, tmp_path, monkeypatch, capsys):
    from typer.testing import CliRunner

    from vivim.train import app, main

    out = tmp_path / "cli.safetensors"
    args = ["--data", str(data), "--variant", "tiny", "--size", "32", "--frames", "3", "--epochs", "1", "--batch", "2",
            "--workers", "0", "--max-steps", "1", "--val-fraction", "0.34", "--out", str(out), "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "next: vivim-eval" in result.output and out.is_file()
    assert "fp32; scan reference\n" in result.output  # the start line names the scan implementation (one on the CPU)

    monkeypatch.setattr(sys, "argv", ["vivim-train", "--data", str(tmp_path / "missing"), "--variant", "tiny", "--out",
                                      str(tmp_path / "other.safetensors")])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing" in err[0]

    # bad flags are named, and found before the first epoch
    blocker = tmp_path / "weights.txt"
    blocker.write_text("not a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    for extra, needle in ((["--frames", "0"], "--frames must be at least 1, got 0"),
                          (["--lr", "-1"], "--lr must be a positive learning rate"),
                          (["--size", "48"], "--size 48: must be a multiple of 32, at least 32"),
                          (["--val", str(tmp_path / "nope")], f"--val {tmp_path / 'nope'}: no such dataset folder"),
                          (["--val", str(empty)], f"--val {empty}: not a dataset folder (expected JPEGImages/"),
                          (["--workers", "-1"], "--workers must be 0 or more"),
                          (["--threads", "0"], "--threads must be at least 1"),
                          (["--out", str(blocker / "x.safetensors")], "weights.txt is a file, not a folder"),
                          (["--out", str(tmp_path)], "is a folder, not a file name"),
                          (["--out", str(tmp_path / "z4.pt")], f"vivim-train writes .safetensors checkpoints (its resume "
                                                                f"state .state.pt beside them); use --out {tmp_path / 'z4.safetensors'}"),
                          ([], "an earlier run's checkpoint or log is there"),  # the first run above wrote --out
                          (["--overwrite", "--init", str(out)], f"--out {out}: is the input --init"),
                          (["--overwrite", "--init", str(blocker)], f"--init {blocker}: not readable as SegFormer weights")):
        result = CliRunner().invoke(app, [*args, *extra])
        assert result.exit_code != 0 and needle in str(result.exception), (extra, result.exception)


def _epoch_clips(data, workers: int, epochs: int = 2) -> list[dict]:
    """Each epoch's augmented training clips by (video, frame), from the loader vivim-train builds and advances."""
    from vivim.training.data import build_data
    from vivim.training.environment import Dist

    built = build_data(_cfg(data, "unused.safetensors", workers=workers, batch=4), Dist(), torch.device("cpu"))
    clips = []
    for epoch in range(epochs):
        built.start_epoch(epoch)
        clips.append({(video, int(frame)): clip for batch in built.train_loader
                      for video, frame, clip in zip(batch["video"], batch["frame"], batch["clip"])})
    return clips


def test_persistent_workers_draw_new_augmentation_each_epoch(data):
    # Workers hold copies of the dataset made at their start: the epoch must reach them with each sample's key
    serial, parallel = _epoch_clips(data, workers=0), _epoch_clips(data, workers=2)
    assert serial[0].keys() == serial[1].keys() == parallel[0].keys() == parallel[1].keys()
    changed = [key for key in serial[0] if not torch.equal(serial[0][key], serial[1][key])]
    assert len(changed) > len(serial[0]) // 2, "augmentation must change between epochs"
    for epoch in range(2):
        for key, clip in serial[epoch].items():
            assert torch.equal(clip, parallel[epoch][key]), f"epoch {epoch}, {key}: 2 workers must give the 0-worker clip"


@pytest.mark.parametrize("signame, progress, workers", [("SIGINT", False, 0), ("SIGTERM", True, 0), ("SIGINT", False, 2),
                                                       ("SIGTERM", False, 2)])
def test_ctrl_c_saves_the_batches_done_and_says_how_to_continue(data, tmp_path, signame, progress, workers):
    """Ctrl-C, and SIGTERM (a batch scheduler's time limit, docker stop), inside an epoch: the run stops after the
    current batch and saves it (the epoch left open for --resume), then one line on a line of its own (the progress
    bar is closed first); exit 130 and 143, as a shell reports them. The signal goes to the whole process group, as
    a terminal's Ctrl-C does: data-loading workers leave it to the main process."""
    import signal
    import subprocess
    import time

    out = tmp_path / "ctrl_c" / "model.safetensors"
    state = out.with_name("model.state.pt")
    command = [sys.executable, "-m", "vivim.train", "--data", str(data), "--variant", "tiny", "--size", "32", "--frames",
               "3", "--epochs", "500", "--batch", "2", "--workers", str(workers), "--val-fraction", "0", "--out", str(out),
               "--device", "cpu", "--threads", "1", "--progress" if progress else "--no-progress"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # not inherited as ignored
    deadline = time.monotonic() + 120
    while not state.is_file() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # inside the next epoch's steps
    os.killpg(child.pid, getattr(signal, signame))
    out_text, err = child.communicate(timeout=60)
    assert child.returncode == (130 if signame == "SIGINT" else 143), err
    lines = err.strip().splitlines()
    said = "interrupted" if signame == "SIGINT" else "terminated (SIGTERM)"
    assert lines[-1] == f"{said}: what was trained is saved; continue with --resume and the same flags ({state})"
    assert f"{'Ctrl-C' if signame == 'SIGINT' else 'SIGTERM'}: stopping after this batch and saving it (Ctrl-C again to abort)" in err
    assert "Traceback" not in err and "DataLoader worker" not in err
    saved = load_state(state)
    if "saving what is trained" not in err:  # unless it landed while an epoch's files were written, the epoch is open
        assert 1 <= saved["partial"]["batches"] <= saved["partial"]["of"]
        how = "interrupted (Ctrl-C)" if signame == "SIGINT" else "terminated (SIGTERM)"
        assert f"epoch {saved['epoch'] + 2}/500 {how} after {saved['partial']['batches']} of" in out_text, out_text


@pytest.mark.parametrize("when, workers", [("inside", 0), ("inside", 2), ("last batch", 0), ("validation", 0),
                                           ("max-steps validation", 0)])
def test_a_run_stopped_by_ctrl_c_resumes_to_the_uninterrupted_result(data, tmp_path, monkeypatch, capsys, when, workers):
    """Ctrl-C in the second of three epochs - inside it, with its last batch, or while it is validated (also the
    validation --max-steps asks for) - then --resume: the same losses step for step, the same validation history and
    the same final weights as a run never stopped. The stop waits for the batch to end, so no step is half done; a
    cut validation is redone on resume."""
    import signal

    import vivim.losses
    import vivim.train

    cfg = dict(epochs=3, val_fraction=0.34, workers=workers)
    full = run_training(_cfg(data, tmp_path / "full.safetensors", **cfg))
    steps_per_epoch = len(full.step_losses) // 3
    real_loss, real_validate, calls, validations = vivim.losses.structure_loss, vivim.train.validate, [], []
    at_step = {"inside": steps_per_epoch + 2, "last batch": 2 * steps_per_epoch}.get(when)

    def loss_then_ctrl_c(*args, **kwargs):  # the real loss; Ctrl-C arrives while a chosen step runs
        calls.append(1)
        if len(calls) == at_step:
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(*args, **kwargs)

    def validate_then_ctrl_c(*args, **kwargs):  # Ctrl-C while the second epoch (or its --max-steps part) validates
        validations.append(1)
        if len(validations) == 2 and "validation" in when:
            os.kill(os.getpid(), signal.SIGINT)
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(vivim.losses, "structure_loss", loss_then_ctrl_c)
    monkeypatch.setattr(vivim.train, "validate", validate_then_ctrl_c)
    out = tmp_path / "stopped.safetensors"
    max_steps = steps_per_epoch + 3 if when == "max-steps validation" else None
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        run_training(_cfg(data, out, max_steps=max_steps, **cfg))
    printed = capsys.readouterr()
    monkeypatch.setattr(vivim.losses, "structure_loss", real_loss)
    monkeypatch.setattr(vivim.train, "validate", real_validate)
    state = load_state(output_paths(out)[2])
    done = {"inside": 2, "last batch": steps_per_epoch, "validation": steps_per_epoch, "max-steps validation": 3}[when]
    assert state["epoch"] == 0 and state["partial"]["batches"] == done and state["partial"]["of"] == steps_per_epoch
    assert f"epoch 2/3 interrupted (Ctrl-C) after {done} of {steps_per_epoch} batches" in printed.out, printed.out
    assert "not validated" in printed.out and "Ctrl-C: stopping after this batch and saving it" in printed.err
    assert len(state["history"]["val_dice"]) == 1  # the open epoch has no row yet
    resumed = run_training(_cfg(data, out, resume=True, **cfg))
    assert resumed.step_losses == full.step_losses[steps_per_epoch + done :]
    for key, value in full.final_state.items():
        assert torch.equal(value, resumed.final_state[key]), key
    assert load_state(output_paths(out)[2])["history"] == load_state(output_paths(tmp_path / "full.safetensors")[2])["history"]


def test_a_second_ctrl_c_while_saving_waits_for_the_files(data, tmp_path, monkeypatch, capsys):
    import signal

    import vivim.training.loop as loop

    real_save, saves = loop.save_state_file, []

    def save_with_two_ctrl_c(*args, **kwargs):  # the resume state is being written when both arrive
        saves.append(1)
        if len(saves) == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # would abort anywhere else
        return real_save(*args, **kwargs)

    monkeypatch.setattr(loop, "save_state_file", save_with_two_ctrl_c)
    out = tmp_path / "m.safetensors"
    with pytest.raises(KeyboardInterrupt) as stopped:
        run_training(_cfg(data, out, epochs=3))
    assert type(stopped.value).__name__ == "StoppedAndSaved"  # not the abort: the files were finished first
    assert "saving what is trained, one moment" in capsys.readouterr().err
    state = load_state(output_paths(out)[2])
    assert state["epoch"] == 0 and state["partial"] is None  # the first epoch, whole, and nothing half written


def test_ctrl_c_in_any_command_is_one_line_and_exit_130(tmp_path, capsys):
    import typer

    from vivim import paths
    from vivim.cli_utils import run_app

    app = typer.Typer()
    made = tmp_path / "made_by_the_early_checks"

    @app.command()
    def slow() -> None:
        paths.check_writable(str(made), "--out", folder=True)
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        run_app(lambda standalone_mode: app(args=[], standalone_mode=standalone_mode))
    assert info.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"
    assert not made.exists()  # the empty output folder the command created is gone


def test_a_bad_mask_in_any_video_fails_before_the_first_epoch(data, tmp_path, capsys):
    import shutil

    from PIL import Image

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    mask = sorted((copy / "Annotations").glob("*/*.png"))[-1]  # some video's last mask, wherever the split puts it
    Image.open(mask).resize((96, 96)).save(mask)
    with pytest.raises(VivimError, match=f"^{mask}: mask is 96x96 but frame .* is 48x48$"):
        run_training(_cfg(copy, tmp_path / "out" / "m.safetensors", val_fraction=0.34))
    assert "training tiny" not in capsys.readouterr().out  # found while the data was set up, before any step


def test_learning_rate_follows_the_cosine_schedule(data, tmp_path):
    import math

    cfg = _cfg(data, tmp_path / "lr.safetensors", epochs=4, lr=2e-3, min_lr=1e-5, max_steps=None)
    run_training(cfg)
    history = load_state(output_paths(cfg.out)[2])["history"]["lr"]
    expected = [1e-5 + (2e-3 - 1e-5) * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]  # LR used in epoch e
    assert history == pytest.approx(expected, rel=1e-9)


def test_best_checkpoint_holds_the_best_epoch_s_weights(data, tmp_path, monkeypatch):
    import vivim.train as train_module

    scripted = iter([0.3, 0.2, 0.9, 0.5])  # validation Dice per epoch: the third epoch is the best
    monkeypatch.setattr(train_module, "validate", lambda *args, **kwargs: next(scripted))
    result = run_training(_cfg(data, tmp_path / "best.safetensors", epochs=4, val_fraction=0.34))
    best_model, best_meta = vivim.load_checkpoint(result.best_path)
    assert best_meta["training"]["best_epoch"] == 3 and best_meta["training"]["val_dice"] == 0.9
    assert best_meta["training"]["epochs_done"] == 3  # written when the third epoch ended
    _, last_meta = vivim.load_checkpoint(result.last_path)
    assert last_meta["training"]["epochs_done"] == 4 and last_meta["training"]["best_epoch"] == 3
    # the same run stopped after three epochs (same schedule, same steps) ends with exactly the best weights
    steps_per_epoch = len(result.step_losses) // 4
    monkeypatch.setattr(train_module, "validate", lambda *args, **kwargs: 0.1)
    three = run_training(_cfg(data, tmp_path / "three.safetensors", epochs=4, val_fraction=0.34,
                              max_steps=3 * steps_per_epoch))
    for key, value in best_model.state_dict().items():
        assert torch.equal(value, three.final_state[key]), key
    assert not all(torch.equal(v, result.final_state[k]) for k, v in best_model.state_dict().items())


def test_a_resumed_run_keeps_the_best_checkpoint_of_the_epochs_before_it(data, tmp_path, monkeypatch):
    """The best Dice so far travels in the training state: after --resume, worse epochs must not replace the best
    checkpoint written before the interruption."""
    import vivim.train as train_module

    out = tmp_path / "run.safetensors"
    monkeypatch.setattr(train_module, "validate", lambda *args, **kwargs: 0.1)
    probe = run_training(_cfg(data, tmp_path / "probe.safetensors", epochs=1, val_fraction=0.34))
    steps_per_epoch = len(probe.step_losses)
    monkeypatch.setattr(train_module, "validate", lambda *args, **kwargs: 0.9)
    first = run_training(_cfg(data, out, epochs=3, val_fraction=0.34, max_steps=steps_per_epoch))
    best_bytes = first.best_path.read_bytes()
    monkeypatch.setattr(train_module, "validate", lambda *args, **kwargs: 0.2)
    resumed = run_training(_cfg(data, out, epochs=3, val_fraction=0.34, resume=True))
    assert resumed.best_path.read_bytes() == best_bytes
    _, meta = vivim.load_checkpoint(resumed.last_path)
    assert meta["training"]["epochs_done"] == 3 and meta["training"]["best_epoch"] == 1


@pytest.mark.parametrize("output_frame", ["centre", "newest"])
def test_validation_dice_is_the_mean_over_frames_of_the_supervised_frame(data, output_frame):
    """validate against a by-hand Dice per frame (threshold 0.5) over a loader whose last batch is short."""
    from torch.utils.data import DataLoader

    from vivim.data.dataset import ClipDataset
    from vivim.data.layouts import discover_videos
    from vivim.training.environment import Dist
    from vivim.training.loop import validate

    torch.manual_seed(0)
    model = vivim.create_model("tiny", frames=3, img_size=32).eval()
    dataset = ClipDataset(discover_videos(data), frames=3, size=32, output_frame=output_frame)
    per_frame = []
    with torch.no_grad():
        for k in range(len(dataset)):
            item = dataset[k]
            pred = torch.sigmoid(model(item["clip"][None], output_frame=output_frame)[0, 0, 0]) > 0.5
            gt = item["mask"][0] > 0.5
            tp, fp, fn = (pred & gt).sum().item(), (pred & ~gt).sum().item(), (~pred & gt).sum().item()
            per_frame.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0)
    assert len(set(per_frame)) > 3, "the check needs frames that score differently"
    loader = DataLoader(dataset, batch_size=5, shuffle=False)  # 12 frames: batches of 5, 5 and 2
    dice = validate(model, loader, torch.device("cpu"), output_frame, Dist(), None)
    assert dice == pytest.approx(sum(per_frame) / len(per_frame), abs=1e-9)


def test_a_vtus_val_folder_is_the_validation_split(tmp_path, capsys):
    import shutil

    root = tmp_path / "vtus"
    write_synthetic_dataset(root, videos=4, frames=4, size=48, seed=5, layout="vtus", test_fraction=0.25, mp4=False,
                            sheet=False)
    moved = sorted(p.name for p in (root / "Train").iterdir())[0]
    for part in ("", "_GT"):
        (root / f"Val{part}").mkdir()
        shutil.move(str(root / f"Train{part}" / moved), str(root / f"Val{part}" / moved))
    result = run_training(_cfg(root, tmp_path / "m.safetensors", epochs=1, val_fraction=0.2, max_steps=1))
    _, meta = vivim.load_checkpoint(result.best_path)
    assert meta["training"]["val_videos"] == [moved] and meta["training"]["val"] == str(root / "Val")
    assert meta["training"]["train_videos"] == 2  # every Train/ video trains; none carved off
    none = run_training(_cfg(root, tmp_path / "n.safetensors", epochs=1, val_fraction=0.0, max_steps=1))
    assert vivim.load_checkpoint(none.best_path)[1]["training"]["val_videos"] == []
    # a resumed run validates where it started: carved before a Val/ folder appeared, it keeps carving
    shutil.rmtree(root / "Val")
    shutil.rmtree(root / "Val_GT")
    run_training(_cfg(root, tmp_path / "r.safetensors", epochs=2, val_fraction=0.34, max_steps=1))
    carved = vivim.load_checkpoint(tmp_path / "r.safetensors")[1]["training"]
    assert carved["val_kind"] == "carved" and len(carved["val_videos"]) == 1
    source = sorted((root / "Train").iterdir())[0].name
    for part in ("", "_GT"):  # new, labelled validation videos arrive in Val/
        shutil.copytree(root / f"Train{part}" / source, root / f"Val{part}" / "new_video")
    resumed = run_training(_cfg(root, tmp_path / "r.safetensors", epochs=2, val_fraction=0.34, resume=True))
    assert vivim.load_checkpoint(resumed.last_path)[1]["training"]["val_videos"] == carved["val_videos"]
    # Val/ without its masks is not a validation split: carve as before
    shutil.rmtree(root / "Val_GT")
    capsys.readouterr()
    unlabelled = run_training(_cfg(root, tmp_path / "u.safetensors", epochs=1, val_fraction=0.34, max_steps=1))
    assert vivim.load_checkpoint(unlabelled.best_path)[1]["training"]["val_kind"] == "carved"
    assert f"warning: {root / 'Val'} has no Val_GT/ beside it (no masks to score)" in capsys.readouterr().err
    # the same rule for a VTUS folder given as --val: its unlabelled Val/ is passed over for its Train/
    other = tmp_path / "other"
    shutil.copytree(root, other)
    given = run_training(_cfg(root, tmp_path / "v.safetensors", epochs=1, val=str(other), max_steps=1))
    assert sorted(vivim.load_checkpoint(given.best_path)[1]["training"]["val_videos"]) == sorted(
        p.name for p in (other / "Train").iterdir())


def test_resume_flags_are_checked_before_the_data_is_read(data, tmp_path):
    run_training(_cfg(data, tmp_path / "v.safetensors", epochs=2, max_steps=1, val=str(data)))
    with pytest.raises(VivimError, match=r"started with --val '.*', not None; resume with the same flags"):
        run_training(_cfg(data, tmp_path / "v.safetensors", epochs=2, resume=True))


def test_states_of_earlier_versions_validate_where_they_started(tmp_path):
    from vivim.training.state import started_val_kind

    data = str(tmp_path / "vt")
    assert started_val_kind({"val_kind": "Val/", "config": {"data": data}}) == "Val/"
    assert started_val_kind({"config": {"data": data, "val": "other"}}) == "--val"
    assert started_val_kind({"config": {"data": data}}) == "carved"  # before Val/ folders were used
    assert started_val_kind({"val_source": str(tmp_path / "vt" / "Val"), "config": {"data": data}}) == "Val/"
    assert started_val_kind({"val_source": "1 video(s) carved from --data", "config": {"data": data}}) == "carved"


def test_sparse_masks_train_on_the_annotated_frames_only(data, tmp_path, capsys):
    import shutil

    import numpy as np

    copy = tmp_path / "sparse"
    shutil.copytree(data, copy)
    seed = int(np.random.SeedSequence().entropy % 2**32)  # fresh each run, named in any failure
    rng = np.random.default_rng(seed)
    videos = sorted((copy / "Annotations").iterdir())
    for mask in videos[0].iterdir():  # one video has no mask at all: it is left out, with a warning
        mask.unlink()
    annotated = 0
    for folder in videos[1:]:
        masks = sorted(folder.iterdir())
        drop = rng.choice(len(masks), size=int(rng.integers(1, len(masks))), replace=False)
        for i in drop:
            masks[i].unlink()
        annotated += len(masks) - len(drop)
    with pytest.raises(VivimError, match="--sparse-masks"):
        run_training(_cfg(copy, tmp_path / "refused.safetensors"))
    cfg = _cfg(copy, tmp_path / "m.safetensors", epochs=1, batch=1, sparse_masks=True)
    result = run_training(cfg)
    assert len(result.step_losses) == annotated, f"seed {seed}"  # one step per annotated frame, none for the others
    printed = capsys.readouterr()
    assert "--data HELD_OUT_DIR --sparse-masks --json" in printed.out  # the next command, runnable as printed
    assert f"1 training video(s) have no mask at all and are left out (e.g. {videos[0].name})" in printed.err
    _, meta = vivim.load_checkpoint(result.best_path)
    assert meta["training"]["sparse_masks"] is True and meta["training"]["train_videos"] == 2
    from vivim.evaluate import evaluate_checkpoint

    summary, *_ = evaluate_checkpoint(str(result.best_path), str(copy), device="cpu", progress=False, sparse_masks=True)
    assert summary["frames"] == annotated  # the video without masks is neither scored nor called a training video
    assert summary["training_videos_scored"] == [folder.name for folder in videos[1:]]
    with pytest.raises(VivimError, match="the run was started with --sparse-masks; resume with the same flags"):
        run_training(_cfg(copy, tmp_path / "m.safetensors", epochs=1, batch=1, resume=True))
    for mask in (copy / "Annotations").glob("*/*"):
        mask.unlink()
    with pytest.raises(VivimError, match="none of the 3 training videos has a mask"):
        run_training(_cfg(copy, tmp_path / "none.safetensors", sparse_masks=True))


def test_resume_refuses_a_dataset_whose_validation_videos_changed(data, tmp_path):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    out = tmp_path / "m.safetensors"
    run_training(_cfg(copy, out, epochs=2, max_steps=1, val_fraction=0.34, sparse_masks=True))
    _, meta = vivim.load_checkpoint(out.with_name("m.last.safetensors"))
    (held_out,) = meta["training"]["val_videos"]
    for mask in (copy / "Annotations" / held_out).iterdir():  # that video now gives no sample: another carve
        mask.unlink()
    with pytest.raises(VivimError, match=f"the validation videos differ from the run's start .*then {held_out}"):
        run_training(_cfg(copy, out, epochs=2, val_fraction=0.34, sparse_masks=True, resume=True))


def test_an_epoch_whose_steps_amp_skipped_prints_no_scheduler_warning(data, tmp_path, monkeypatch):
    # AMP's scaler skips steps whose gradients overflow; an epoch where it skipped all of them (a short first epoch on
    # a GPU) must not print torch's "scheduler before optimiser" warning: the schedule is per epoch. Here every
    # step is skipped the way the scaler does it, without calling the optimiser.
    import warnings

    monkeypatch.setattr(torch.amp.GradScaler, "step", lambda self, optimizer, *args, **kwargs: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_training(_cfg(data, tmp_path / "m.safetensors", epochs=1))
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]


def test_patience_stops_after_epochs_without_a_better_dice(data, tmp_path, monkeypatch, capsys):
    import vivim.train as train

    scores = iter([0.5, 0.6, 0.6, 0.58, 0.9, 0.95])  # best at epoch 2, then a tie (not better) and a lower one
    monkeypatch.setattr(train, "validate", lambda *args, **kwargs: next(scores))
    out = tmp_path / "m.safetensors"
    result = run_training(_cfg(data, out, epochs=6, val_fraction=0.34, patience=2))
    assert result.epochs_done == 4 and result.val_dice == [0.5, 0.6, 0.6, 0.58]
    assert result.best_epoch == 2 and result.best_dice == pytest.approx(0.6)
    assert "stopping early: no better validation Dice in the last 2 epochs (best 0.6000 at epoch 2)" in capsys.readouterr().out
    _, meta = vivim.load_checkpoint(out)
    assert meta["training"]["best_epoch"] == 2 and meta["training"]["epochs_done"] == 2  # best = epoch 2's weights
    resumed = run_training(_cfg(data, out, epochs=6, val_fraction=0.34, patience=2, resume=True))
    assert resumed.step_losses == []  # out of patience already: nothing more to train
    more = run_training(_cfg(data, out, epochs=6, val_fraction=0.34, patience=3, resume=True))
    assert more.val_dice == pytest.approx([0.9, 0.95])  # more patience: the run goes on to --epochs
    with pytest.raises(VivimError, match="--patience needs validation videos"):
        run_training(_cfg(data, tmp_path / "n.safetensors", patience=2))
    with pytest.raises(VivimError, match="--patience must be at least 1"):
        run_training(_cfg(data, tmp_path / "n.safetensors", patience=0))


def test_the_per_epoch_log_is_an_output_like_the_checkpoints(data, tmp_path):
    out = tmp_path / "m.safetensors"
    history_path(out).write_text("epoch,train_loss\n1,0.5\n")  # an earlier run's log, its checkpoints deleted
    with pytest.raises(VivimError, match="an earlier run's checkpoint or log is there"):
        run_training(_cfg(data, out, epochs=1))
    assert history_path(out).read_text() == "epoch,train_loss\n1,0.5\n"
    history_path(out).unlink()
    history_path(out).mkdir()  # refused before any training, naming the path the user would look for
    with pytest.raises(VivimError, match=r"per-epoch log"):
        run_training(_cfg(data, out, epochs=1))
    assert not out.exists()


def test_the_next_command_after_a_sparse_vtus_run_scores_its_test_split_sparsely(tmp_path, capsys):
    root = tmp_path / "vt"
    write_synthetic_dataset(root, videos=3, frames=4, size=48, seed=2, layout="vtus", test_fraction=0.34, mp4=False,
                            sheet=False, label_every=2)
    run_training(_cfg(root, tmp_path / "m.safetensors", epochs=1, max_steps=1, sparse_masks=True))
    assert "--split test --sparse-masks --json" in capsys.readouterr().out


def test_the_start_line_names_forward_and_backward_scans_when_they_differ():
    from vivim.ops import dispatch
    from vivim.training.environment import scan_implementations

    reference = dispatch.pick("cpu").fn
    dispatch.register_impl("plain_kernel", reference, priority=1000, devices=("cpu",))  # forward only
    try:
        assert scan_implementations(torch.device("cpu")) == "scan plain_kernel forward, reference backward"
    finally:
        dispatch._REGISTRY.pop("plain_kernel")
    assert scan_implementations(torch.device("cpu")) == "scan reference"


def test_a_cuda_run_says_when_the_scan_backward_falls_back_to_the_reference(capsys):
    """Without a CUDA kernel for the backward (ours not buildable, mamba-ssm absent) a GPU run's backward is the
    PyTorch reference (3x slower steps, benchmarks/RESULTS.md). The run says so, and only then."""
    from vivim.ops import dispatch
    from vivim.training.environment import scan_implementations

    scan_implementations(torch.device("cpu"))
    assert capsys.readouterr().err == ""
    if dispatch.pick("cuda", need_grad=True).name == "reference":  # no differentiable CUDA kernel here
        scan_implementations(torch.device("cuda"))
        err = capsys.readouterr().err
        assert err.startswith("warning: no CUDA kernel for the selective scan's backward") and err.count("\n") == 1
    dispatch.register_impl("differentiable_cuda_kernel", dispatch.pick("cpu").fn, priority=60, devices=("cuda",),
                           differentiable=True)
    try:
        scan_implementations(torch.device("cuda"))
        assert capsys.readouterr().err == ""
    finally:
        dispatch._REGISTRY.pop("differentiable_cuda_kernel")


@pytest.mark.parametrize("workers, local_ranks, cached", [(0, 1, True), (1, 1, True), (2, 1, False), (0, 2, False)])
def test_the_frame_cache_budget_counts_every_copy_on_the_machine(data, monkeypatch, workers, local_ranks, cached):
    """Each DataLoader worker and each training process on the machine fills its own cache: the automatic choice
    must fit all of them in the budget, not one."""
    import vivim.training.data as training_data
    from vivim.training.data import build_data
    from vivim.training.environment import Dist

    frames = 3 * 4  # the fixture: 3 videos of 4 frames, at the configuration's 32 x 32
    one_copy = frames * 32 * 32 * 3
    monkeypatch.setattr(training_data, "CACHE_BUDGET", int(1.5 * one_copy))  # one copy fits, two do not
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_ranks))
    built = build_data(_cfg(data, "unused.safetensors", workers=workers), Dist(), torch.device("cpu"))
    assert (built.train_ds.cache is not None) == cached


def test_init_names_the_file_and_points_a_resume_state_to_resume(tmp_path):
    from vivim.training.init_weights import initialise_weights

    tiny = vivim.create_model("tiny", frames=3, img_size=32)
    state = tmp_path / "run.state.pt"
    torch.save({"epoch": 1}, state)
    with pytest.raises(VivimError, match=r"--init .*run.state.pt: a resume state, not weights; continue that run with "
                                         r"--resume, or fine-tune from .*run.last.safetensors"):
        initialise_weights(tiny, str(state), verbose=False)
    unrelated = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(unrelated))
    with pytest.raises(VivimError, match=rf"--init {re.escape(str(unrelated))}: no SegFormer tensor matched"):
        initialise_weights(tiny, str(unrelated), verbose=False)


def test_a_training_set_whose_masks_are_all_empty_is_named_once(data, tmp_path, capsys):
    """Masks that mark the lesion in a way the reader does not take read as empty: the run says so after its first
    epoch instead of training a model that only learned 'no lesion'."""
    import shutil

    import cv2
    import numpy as np

    copy = tmp_path / "blank"
    shutil.copytree(data, copy)
    for mask in (copy / "Annotations").rglob("*.png"):
        cv2.imwrite(str(mask), np.zeros(cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE).shape, np.uint8))
    run_training(_cfg(copy, tmp_path / "blank.safetensors", epochs=2))
    err = capsys.readouterr().err
    assert err.count("every training mask this epoch was empty") == 1, err
    # a part of an epoch proves nothing: not said after --max-steps stopped inside it, nor for the rest of it
    run_training(_cfg(copy, tmp_path / "part.safetensors", epochs=2, max_steps=1))
    assert "every training mask" not in capsys.readouterr().err
    run_training(_cfg(copy, tmp_path / "part.safetensors", epochs=2, resume=True))
    assert capsys.readouterr().err.count("every training mask this epoch was empty") == 1  # epoch 2, seen whole
    run_training(_cfg(data, tmp_path / "fine.safetensors", epochs=1, max_steps=2))
    assert "every training mask" not in capsys.readouterr().err


def test_a_validation_inside_an_open_epoch_decides_nothing(data, tmp_path, monkeypatch, capsys):
    """The best epoch, --patience and the history's best row come from whole epochs only, so a run stopped by
    --max-steps and resumed ends as the uninterrupted one: same best file, same stop, same log. A mid-epoch
    validation writes the best file only while no whole epoch has been validated (a smoke run still gets one)."""
    import vivim.train as train

    def scripted(dice_by_call):
        calls = iter(dice_by_call)
        return lambda *args, **kwargs: next(calls)

    cfg = dict(epochs=3, patience=1, val_fraction=0.34)
    monkeypatch.setattr(train, "validate", scripted([0.5, 0.4]))  # epoch 2 is worse: patience stops the run
    full = run_training(_cfg(data, tmp_path / "full.safetensors", **cfg))
    steps = len(full.step_losses) // 2
    assert full.epochs_done == 2 and full.best_epoch == 1
    out = tmp_path / "part.safetensors"
    # epoch 1 whole (0.5), then a validation 2 batches into epoch 2 (0.9, better than any) and its end (0.4)
    monkeypatch.setattr(train, "validate", scripted([0.5, 0.9]))
    run_training(_cfg(data, out, max_steps=steps + 2, **cfg))
    monkeypatch.setattr(train, "validate", scripted([0.4]))
    rest = run_training(_cfg(data, out, resume=True, **cfg))
    assert (rest.epochs_done, rest.best_epoch, rest.best_dice) == (2, 1, 0.5)  # stopped by patience, as the full run
    assert history_path(out).read_text() == history_path(tmp_path / "full.safetensors").read_text()
    best_weights, _ = vivim.load_checkpoint(out)
    full_best, _ = vivim.load_checkpoint(tmp_path / "full.safetensors")
    for (name, a), b in zip(best_weights.state_dict().items(), full_best.state_dict().values()):
        assert torch.equal(a, b), name  # epoch 1's weights, not the mid-epoch ones
    # before any whole epoch: the mid-epoch weights are the best file for now
    monkeypatch.setattr(train, "validate", scripted([0.7]))
    capsys.readouterr()
    smoke = run_training(_cfg(data, tmp_path / "smoke.safetensors", max_steps=1, **cfg))
    assert smoke.best_path.is_file() and smoke.epochs_done == 0 and smoke.best_epoch == 0  # none recorded yet
    assert "no whole epoch validated yet" in capsys.readouterr().out


def test_an_open_epoch_resumes_only_with_as_many_processes(data, tmp_path):
    """The batches done are per process: another process count would skip other clips."""
    out = tmp_path / "w.safetensors"
    run_training(_cfg(data, out, max_steps=2))
    state_path = output_paths(out)[2]
    state = load_state(state_path)
    assert state["partial"]["world"] == 1
    state["partial"]["world"] = 2
    torch.save(state, state_path)
    with pytest.raises(VivimError, match=r"stopped inside epoch 1 with 2 processes; resume it with as many"):
        run_training(_cfg(data, out, resume=True))


def test_a_resumable_run_of_an_older_pt_out_is_pointed_at_its_files(data, tmp_path):
    """Runs before the .safetensors rule wrote --out x.pt as x.pt.safetensors (+ x.pt.state.pt): resume those."""
    run_training(_cfg(data, tmp_path / "z4.pt.safetensors", max_steps=1))
    with pytest.raises(VivimError, match=re.escape(f"use --out {tmp_path / 'z4.pt.safetensors'}")):
        run_training(_cfg(data, tmp_path / "z4.pt", resume=True))


def test_a_large_variant_on_the_cpu_is_warned_about(data, tmp_path, capsys):
    # the paper model took 44 s per step on a 2-core machine: a user trying vivim-train there should hear why
    run_training(_cfg(data, tmp_path / "b1.safetensors", variant="b1", epochs=1, max_steps=1))
    assert "warning: the b1 model (26.0 M params) trains very slowly on a CPU" in capsys.readouterr().err
    run_training(_cfg(data, tmp_path / "tiny.safetensors", epochs=1, max_steps=1))
    assert "trains very slowly" not in capsys.readouterr().err


def test_resuming_inside_an_epoch_on_a_changed_training_set_is_warned_about(tmp_path, capsys):
    import shutil

    root = tmp_path / "data"
    write_synthetic_dataset(root, videos=3, frames=4, size=48, seed=0, mp4=False, sheet=False)
    out = tmp_path / "m.safetensors"
    run_training(_cfg(root, out, epochs=2, max_steps=2))
    capsys.readouterr()
    extra = tmp_path / "extra"  # one more video, added while the run was stopped
    write_synthetic_dataset(extra, videos=4, frames=4, size=48, seed=0, mp4=False, sheet=False)
    for folder in ("JPEGImages", "Annotations"):
        shutil.copytree(extra / folder / "synth_0003", root / folder / "synth_0003")
    run_training(_cfg(root, out, epochs=2, resume=True, max_steps=1))
    err = capsys.readouterr().err
    assert "the training set changed since the run stopped inside epoch 1" in err, err
    # the same set: no warning
    again = tmp_path / "again.safetensors"
    run_training(_cfg(root, again, epochs=2, max_steps=2))
    run_training(_cfg(root, again, epochs=2, resume=True, max_steps=1))
    assert "training set changed" not in capsys.readouterr().err


def test_validation_clips_are_never_augmented(data):
    """Training augments; validation scores the clips as they are, every epoch (a flipped or jittered validation
    clip would make the best checkpoint's Dice a matter of chance)."""
    from vivim.data.dataset import ClipDataset
    from vivim.training.data import build_data
    from vivim.training.environment import Dist

    cfg = _cfg(data, "unused.safetensors", val_fraction=0.34, batch=2)
    assert cfg.augment
    built = build_data(cfg, Dist(), torch.device("cpu"))
    plain = ClipDataset(built.val_videos, frames=cfg.frames, size=cfg.size, output_frame=cfg.output_frame)
    assert built.val_loader is not None and len(plain) > 0
    for epoch in range(2):
        built.start_epoch(epoch)
        seen = 0
        for batch in built.val_loader:
            for k in range(batch["clip"].shape[0]):
                item = plain[seen + k]
                assert torch.equal(batch["clip"][k], item["clip"]) and torch.equal(batch["mask"][k], item["mask"])
            seen += batch["clip"].shape[0]
        assert seen == len(plain)


@pytest.mark.parametrize("output_frame", ["centre", "newest"])
def test_the_first_step_trains_the_configured_frame_with_the_papers_loss(data, tmp_path, monkeypatch, output_frame):
    """The first step's loss, recomputed outside the training loop: the model as it was (weights and dropout's
    random state) on the same clip, decoding the frame --output-frame names, scored by the paper's loss written out
    here (plain BCE + IoU weighted by 1 + 5 |avg31(mask) - mask|)."""
    import copy

    import torch.nn.functional as F

    import vivim.losses
    from vivim.model.vivim import VivimModel

    seen: dict = {}
    real_forward, real_loss = VivimModel.forward, vivim.losses.structure_loss

    def forward_seen(self, clip, *args, **kwargs):  # the model's state when the first training step starts
        if self.training and "model" not in seen:
            seen.update(model=copy.deepcopy(self), clip=clip.detach().clone(), rng=torch.get_rng_state())
        return real_forward(self, clip, *args, **kwargs)

    def loss_seen(logits, target, *args, **kwargs):
        seen.setdefault("target", target.detach().clone())
        return real_loss(logits, target, *args, **kwargs)

    monkeypatch.setattr(VivimModel, "forward", forward_seen)
    monkeypatch.setattr(vivim.losses, "structure_loss", loss_seen)
    result = run_training(_cfg(data, tmp_path / "m.safetensors", epochs=1, max_steps=1, output_frame=output_frame))
    monkeypatch.setattr(VivimModel, "forward", real_forward)

    torch.set_rng_state(seen["rng"])
    with torch.no_grad():
        logits = seen["model"](seen["clip"], output_frame=output_frame)[:, 0].float()
    target = seen["target"].float()
    weight = 1 + 5 * (F.avg_pool2d(target, 31, stride=1, padding=15) - target).abs()
    bce = -(target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits)).mean()
    prob = torch.sigmoid(logits)
    inter, union = (prob * target * weight).sum((2, 3)), ((prob + target) * weight).sum((2, 3))
    expected = bce + (1 - (inter + 1) / (union - inter + 1)).mean()
    assert result.step_losses[0] == pytest.approx(float(expected), rel=1e-5)


def test_a_data_worker_outlives_one_sigterm_and_ends_on_the_second():
    """A scheduler's SIGTERM to the whole job leaves the workers to the main process, which saves and ends them;
    a second SIGTERM (a loader's, or Python's at exit, for a worker stuck in a read) ends one; Ctrl-C never does."""
    import subprocess

    script = ("import os, signal, time\n"
              "from vivim.training.data import leave_stop_signals_to_main\n"
              "leave_stop_signals_to_main(0)\n"
              "os.kill(os.getpid(), signal.SIGINT)\n"
              "os.kill(os.getpid(), signal.SIGTERM)\n"
              "time.sleep(0.2)\n"
              "print('alive', flush=True)\n"
              "os.kill(os.getpid(), signal.SIGTERM)\n"
              "time.sleep(5)\n"
              "print('still alive', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["alive"] and done.returncode == 143, (done.stdout, done.stderr)
