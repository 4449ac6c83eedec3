"""benchmarks/bench_scan_train.py on the CPU: its split option sets and restores the backward's variables, rejects a
bad spelling in one line, and the script refuses to run without a GPU in one line."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scan_train.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_scan_train", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_split_sets_one_variable_and_restores_both(monkeypatch) -> None:
    bench = _load()
    monkeypatch.setenv("VIVIM_SCAN_BWD_TARGET_BLOCKS", "777")
    monkeypatch.delenv("VIVIM_SCAN_BWD_PARTS", raising=False)
    with bench.split("parts=3"):
        assert os.environ["VIVIM_SCAN_BWD_PARTS"] == "3"
        assert "VIVIM_SCAN_BWD_TARGET_BLOCKS" not in os.environ  # one knob at a time
    assert os.environ["VIVIM_SCAN_BWD_TARGET_BLOCKS"] == "777" and "VIVIM_SCAN_BWD_PARTS" not in os.environ
    with bench.split("auto"):
        assert "VIVIM_SCAN_BWD_PARTS" not in os.environ and "VIVIM_SCAN_BWD_TARGET_BLOCKS" not in os.environ
    assert os.environ["VIVIM_SCAN_BWD_TARGET_BLOCKS"] == "777"


@pytest.mark.parametrize("spec", ["parts", "parts=x", "chunks=4", "target=-1"])
def test_split_rejects_bad_spellings(spec: str) -> None:
    bench = _load()
    with pytest.raises(SystemExit, match="--splits: unknown split"), bench.split(spec):
        pass


def test_without_a_gpu_the_script_says_so_in_one_line(tmp_path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "-o", str(tmp_path / "x.json")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode != 0
    assert proc.stderr.strip() == "error: bench_scan_train.py needs a CUDA GPU (torch.cuda.is_available() is False)"
    assert not (tmp_path / "x.json").exists()
