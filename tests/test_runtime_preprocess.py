"""Host preprocessing of the ONNX Runtime and TensorRT backends: normalisation against a float64 formula."""

from __future__ import annotations

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
