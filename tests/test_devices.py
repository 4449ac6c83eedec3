"""--device parsing: one grammar for every command, one-line errors naming the flag."""

import pytest
import torch
from typer.testing import CliRunner

from vivim.devices import DeviceSpec, parse_device, torch_device
from vivim.errors import VivimError


@pytest.mark.parametrize("text, spec", [("auto", DeviceSpec("auto", None)), ("cpu", DeviceSpec("cpu", None)),
                                        ("cuda", DeviceSpec("cuda", None)), ("cuda:3", DeviceSpec("cuda", 3)),
                                        (" CUDA:0 ", DeviceSpec("cuda", 0))])
def test_accepted_forms(text, spec):
    assert parse_device(text) == spec
    assert parse_device(text).cuda_index == (spec.ordinal or 0)


@pytest.mark.parametrize("text", ["gpu", "cuda:first", "cuda:", "cpu:1", "auto:0", "cuda:-1", "", "mps"])
def test_refused_forms_name_the_flag(text):
    with pytest.raises(VivimError, match=r"^--dev must be cpu, cuda, cuda:N or auto, got "):
        parse_device(text, "--dev")


def test_torch_device_on_this_machine():
    assert torch_device("cpu") == torch.device("cpu")
    assert torch_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        with pytest.raises(VivimError, match=f"--device cuda:{n}: only {n} CUDA device"):
            torch_device(f"cuda:{n}")
    else:
        with pytest.raises(VivimError, match="--device cuda:1: PyTorch sees no CUDA device"):
            torch_device("cuda:1")


def test_eval_blames_the_flag_not_the_checkpoint(tmp_path):
    from vivim.evaluate import app

    result = CliRunner().invoke(app, ["demo", "--data", str(tmp_path), "--device", "gpu"])
    assert result.exit_code != 0
    assert "--device must be cpu, cuda, cuda:N or auto, got 'gpu'" in str(result.exception)
