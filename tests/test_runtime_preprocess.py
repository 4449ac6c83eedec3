"""Host preprocessing of the ONNX Runtime and TensorRT backends: normalisation against a float64 formula."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vivim.runtime.preprocess import Normalization, normalize_chw


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-6), (np.float16, 1e-3)])
def test_normalize_chw_matches_the_formula(dtype, tol):
    rng = np.random.default_rng()
    rgb = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    mean, std = tuple(rng.uniform(0.2, 0.6, 3)), tuple(rng.uniform(0.1, 0.4, 3))
    out = normalize_chw(rgb, Normalization(mean, std), dtype)
    expected = ((rgb.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)).transpose(2, 0, 1)
    assert out.dtype == dtype and out.shape == (3, 37, 53) and out.flags.c_contiguous
    np.testing.assert_allclose(out.astype(np.float64), expected, rtol=tol, atol=tol)


def test_float16_is_the_float32_result_rounded_once():
    """The float16 path (a lookup table) gives bit for bit the float32 path's values cast to float16."""
    rng = np.random.default_rng()
    frame = rng.integers(0, 256, size=(41, 66, 3), dtype=np.uint8)
    rgb = frame[:, 1:-1]  # a non-contiguous view, as a crop would give
    norm = Normalization(tuple(rng.uniform(0.2, 0.6, 3)), tuple(rng.uniform(0.1, 0.4, 3)))
    half = normalize_chw(rgb, norm, np.float16)
    cast = normalize_chw(rgb, norm, np.float32).astype(np.float16)
    assert half.dtype == np.float16 and half.shape == (3, 41, 64) and half.flags.c_contiguous
    np.testing.assert_array_equal(half.view(np.uint16), cast.view(np.uint16))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_normalize_chw_writes_into_the_given_buffer(dtype):
    rng = np.random.default_rng()
    rgb = rng.integers(0, 256, size=(24, 31, 3), dtype=np.uint8)
    buffer = np.full((3, 24, 31), np.nan, dtype)
    result = normalize_chw(rgb, Normalization(), dtype, out=buffer)
    assert result is buffer
    np.testing.assert_array_equal(buffer, normalize_chw(rgb, Normalization(), dtype))
    with pytest.raises(ValueError, match="out must be"):
        normalize_chw(rgb, Normalization(), dtype, out=np.empty((3, 31, 24), dtype))


def test_bench_preprocess_times_every_frame_size_and_filter(tmp_path, monkeypatch):
    import json
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_preprocess

    out = tmp_path / "pre.json"
    result = bench_preprocess.main(["--size", "32", "--frames", "64x48", "40x30", "--iters", "3", "--warmup", "1",
                                    "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert [(r["frame"], r["filter"]) for r in result["rows"]] == [
        ("64x48", "linear"), ("64x48", "area"), ("40x30", "linear"), ("40x30", "area")]
    assert all(0 < r["p50_ms"] <= r["p95_ms"] for r in result["rows"])
    with pytest.raises(SystemExit):
        bench_preprocess.main(["--frames", "640by480"])
    del sys.modules["bench_preprocess"]


def test_normalization_from_model_metadata_is_checked_not_trusted():
    from vivim.errors import VivimError

    assert Normalization.from_metadata(None, "--onnx m.onnx") == Normalization()  # older exports: ImageNet
    text = json.dumps({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    assert Normalization.from_metadata(text, "--onnx m.onnx") == Normalization((0.5,) * 3, (0.25,) * 3)
    for bad in ({"mean": [0.5, 0.5], "std": [0.2, 0.2]}, {"mean": [0.5] * 3, "std": [0.2, 0.0, 0.2]},
                {"mean": [0.5] * 3, "std": [0.2, float("nan"), 0.2]}, {"mean": [0.5] * 3}, "{not json", [1, 2, 3]):
        value = json.dumps(bad) if isinstance(bad, dict) else bad
        with pytest.raises(VivimError, match=r"^--engine m.engine: metadata normalization must hold 3 finite means"):
            Normalization.from_metadata(value, "--engine m.engine")
