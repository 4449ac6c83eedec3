"""Checkpoint round trip, atomic writes and one-line errors for bad files."""

import json
import struct

import pytest
import torch

import vivim
from vivim.checkpoint import file_sha256, read_metadata
from vivim.constants import TRAIN_RESIZE
from vivim.errors import CheckpointError, VivimError


@pytest.fixture
def tiny():
    model = vivim.create_model("tiny", frames=3, img_size=64).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    return model


def test_round_trip_restores_weights_config_and_metadata(tmp_path, tiny):
    path = vivim.save_checkpoint(tiny, tmp_path / "m.safetensors", note="unit test", summary={"dice": 0.5})
    model, meta = vivim.load_checkpoint(path)
    assert not model.training
    assert meta["variant"] == "tiny" and meta["frames"] == 3 and meta["img_size"] == 64
    assert meta["note"] == "unit test" and meta["summary"] == {"dice": 0.5}
    assert meta["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert meta["resize"] == TRAIN_RESIZE  # vivim-run resizes frames with the filter training used
    assert meta["package_version"] == vivim.__version__
    clip = torch.randn(1, 3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(clip), tiny(clip), rtol=0, atol=0)
    assert read_metadata(path) == meta
    assert len(file_sha256(path)) == 64
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left behind


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        vivim.load_checkpoint(tmp_path / "absent.safetensors")
    with pytest.raises(FileNotFoundError, match="absent.safetensors: checkpoint not found"):  # as a caller catches it
        vivim.load_checkpoint(tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match="is a folder"):
        vivim.load_checkpoint(tmp_path)


def test_truncated_file(tmp_path, tiny):
    path = vivim.save_checkpoint(tiny, tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path.name)):
        vivim.load_checkpoint(path)


def test_garbage_and_foreign_files(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        vivim.load_checkpoint(garbage)
    onnx_file = tmp_path / "model.onnx"  # handed to --checkpoint by mistake: say where it belongs
    onnx_file.write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(64))
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint .*this looks like an ONNX model: vivim-run "
                                              "takes it with --onnx"):
        vivim.load_checkpoint(onnx_file)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a Vivim checkpoint"):
        vivim.load_checkpoint(foreign)
    # valid JSON headers of the wrong shape: a list, and metadata that is not an object
    for name, header in (("list", b"[]"), ("meta", b'{"__metadata__": [1]}')):
        odd = tmp_path / f"{name}.safetensors"
        odd.write_bytes(struct.pack("<Q", len(header)) + header)
        for read in (read_metadata, vivim.load_checkpoint):
            with pytest.raises(CheckpointError, match=f"{name}.safetensors: not a safetensors checkpoint"):
                read(odd)


def _edit_metadata(src, dst, change):
    """Copy a checkpoint with its JSON metadata edited (the header rewritten, the tensors' bytes kept)."""
    data = src.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    meta = json.loads(header["__metadata__"]["vivim"])
    change(meta)
    header["__metadata__"]["vivim"] = json.dumps(meta)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    dst.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + size:])
    return dst


def test_edited_metadata_is_refused_in_one_line(tmp_path, tiny):
    good = vivim.save_checkpoint(tiny, tmp_path / "good.safetensors")
    relabelled = _edit_metadata(good, tmp_path / "relabelled.safetensors", lambda m: m.update(variant="paper"))
    with pytest.raises(CheckpointError, match="variant 'paper' but its config is 'tiny'"):
        read_metadata(relabelled)
    bad_norm = _edit_metadata(good, tmp_path / "norm.safetensors",
                              lambda m: m.update(normalization={"mean": [0.5], "std": [0, 0, 0]}))
    with pytest.raises(CheckpointError, match="normalization must hold 3 finite means and 3 positive stds"):
        vivim.load_checkpoint(bad_norm)
    as_bool = _edit_metadata(good, tmp_path / "bool.safetensors",
                             lambda m: m.update(normalization={"mean": [0.5] * 3, "std": [True, 1, 1]}))
    with pytest.raises(CheckpointError, match="normalization must hold"):
        read_metadata(as_bool)
    same = _edit_metadata(good, tmp_path / "same.safetensors", lambda m: None)
    assert read_metadata(same) == read_metadata(good)


def test_a_newer_checkpoint_format_is_refused(tmp_path, tiny):
    path = vivim.save_checkpoint(tiny, tmp_path / "m.safetensors")
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    header["__metadata__"]["format_version"] = "2"  # written by a later release: its fields may mean other things
    new_header = json.dumps(header).encode()
    new_header += b" " * (-len(new_header) % 8)
    path.write_bytes(struct.pack("<Q", len(new_header)) + new_header + raw[8 + size:])
    with pytest.raises(CheckpointError, match=r"checkpoint format version '2' is not supported"):
        vivim.load_checkpoint(path)


def test_weights_that_do_not_match_their_config(tmp_path, tiny):
    path = vivim.save_checkpoint(tiny, tmp_path / "m.safetensors")
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    meta = json.loads(header["__metadata__"]["vivim"])
    meta["config"]["embed_dims"] = [32, 64, 160, 256]  # claims to be wider than its weights
    header["__metadata__"]["vivim"] = json.dumps(meta)
    new_header = json.dumps(header).encode()
    new_header += b" " * (-len(new_header) % 8)
    path.write_bytes(struct.pack("<Q", len(new_header)) + new_header + raw[8 + size:])
    with pytest.raises(CheckpointError, match="do not match"):
        vivim.load_checkpoint(path)


def test_unwritable_destination(tmp_path, tiny):
    with pytest.raises(CheckpointError, match="does not exist"):
        vivim.save_checkpoint(tiny, tmp_path / "no" / "such" / "m.safetensors")
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="f: is a file, not a folder"):
        vivim.save_checkpoint(tiny, tmp_path / "f" / "m.safetensors")


def test_fp16_model_is_saved_in_fp32(tmp_path, tiny):
    tiny.to_inference_dtype(torch.float16)
    model, _ = vivim.load_checkpoint(vivim.save_checkpoint(tiny, tmp_path / "m.safetensors"))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_save_that_fails_midway_keeps_the_previous_checkpoint(tmp_path, tiny, monkeypatch):
    """Ctrl-C or a full disk during a save: the earlier checkpoint is still whole and no temporary is left."""
    import safetensors.torch

    path = tmp_path / "best.safetensors"
    vivim.save_checkpoint(tiny, path, epoch=1)
    before = path.read_bytes()

    def half_then_fail(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_fail)
    with pytest.raises(OSError):
        vivim.save_checkpoint(tiny, path, epoch=2)
    assert path.read_bytes() == before
    assert read_metadata(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["best.safetensors"]


def test_fp16_model_is_stored_as_fp32_tensors_on_disk(tmp_path, tiny):
    """The file itself must hold fp32 whatever the model was cast to: a reader other than load_checkpoint (a
    user's own safetensors code, another framework) takes the stored dtype as it is, and a checkpoint saved
    from an fp16 inference model must not quietly become a half-precision file."""
    from safetensors import safe_open

    tiny.half()
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    assert any(v.dtype == torch.float16 for v in state.values())
    path = vivim.save_checkpoint(tiny, tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == set(state)
        for key in f.keys():
            stored = f.get_tensor(key)
            if state[key].is_floating_point():
                assert stored.dtype == torch.float32, key
                torch.testing.assert_close(stored, state[key].float(), rtol=0, atol=0)
            else:
                assert stored.dtype == state[key].dtype and torch.equal(stored, state[key]), key


def test_metadata_that_would_contradict_the_model_or_fail_to_load_is_refused_at_save(tmp_path, tiny):
    """What save_checkpoint writes must load, and mean what the weights are: the model's own fields (variant, T,
    size, config) cannot be overridden, and the fields readers act on are checked as load checks them."""
    import torch.nn as nn

    cases = {
        "variant": dict(variant="paper"), "frames": dict(frames=5, img_size=32),
        "normalization": dict(normalization={"mean": [0.5], "std": [0.5]}), "output_frame": dict(output_frame="last"),
        "resize": dict(resize="cubic"),
    }
    for name, metadata in cases.items():
        with pytest.raises(CheckpointError) as refused:
            vivim.save_checkpoint(tiny, tmp_path / f"{name}.safetensors", **metadata)
        assert "\n" not in str(refused.value) and name.split("_")[0] in str(refused.value), refused.value
    assert list(tmp_path.iterdir()) == []  # nothing written
    with pytest.raises(CheckpointError, match="is a folder"):
        vivim.save_checkpoint(tiny, tmp_path)
    with pytest.raises(CheckpointError, match="takes a Vivim model .* got Linear"):
        vivim.save_checkpoint(nn.Linear(2, 2), tmp_path / "linear.safetensors")
    # the accepted forms still load; 'center' is stored in the one spelling every reader knows
    path = vivim.save_checkpoint(tiny, tmp_path / "ok.safetensors", output_frame="center", resize="area",
                                 normalization={"mean": [0.2, 0.3, 0.4], "std": [0.5, 0.5, 0.5]})
    model, meta = vivim.load_checkpoint(path)
    assert meta["output_frame"] == "centre"
    # a loaded checkpoint's metadata saved again with a note (as DEMO_WEIGHTS.md does): the model's own values pass
    again = vivim.save_checkpoint(model, tmp_path / "again.safetensors", **{**meta, "intended_use": "demo"})
    resaved = vivim.load_checkpoint(again)[1]
    assert resaved["intended_use"] == "demo" and resaved["config"] == meta["config"]
    assert resaved["package_version"] == vivim.__version__
    # torch.compile's wrapper: saved as the model itself (its keys would carry an _orig_mod. prefix)
    compiled = torch.compile(tiny)
    loaded, _ = vivim.load_checkpoint(vivim.save_checkpoint(compiled, tmp_path / "compiled.safetensors"))
    clip = torch.randn(1, 3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(clip), tiny(clip), rtol=0, atol=0)


def test_loading_leaves_the_callers_random_state_and_names_a_device_it_cannot_use(tmp_path, tiny):
    path = vivim.save_checkpoint(tiny, tmp_path / "m.safetensors")
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    vivim.load_checkpoint(path)  # builds a model (random init) before the weights overwrite it
    assert torch.equal(torch.rand(4), expected)
    if not torch.cuda.is_available():
        with pytest.raises(VivimError, match="^load_checkpoint map_location cuda: PyTorch sees no CUDA device"):
            vivim.load_checkpoint(path, map_location="cuda")
    with pytest.raises(VivimError, match="^load_checkpoint map_location must be a torch device .* got 'gpu'"):
        vivim.load_checkpoint(path, map_location="gpu")
    for where in (None, torch.device("cpu"), "cpu"):  # None: the CPU, as before
        assert next(vivim.load_checkpoint(path, map_location=where)[0].parameters()).device.type == "cpu"
