"""Streaming without redundant work: per-frame features cached in the ring give the full-clip logits."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import vivim  # noqa: E402
from vivim.runtime.backend_torch import TorchBackend  # noqa: E402
from vivim.runtime.preprocess import Normalization, preprocess  # noqa: E402
from vivim.runtime.ring import ClipWindow  # noqa: E402



@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return vivim.create_model("tiny", frames=5, img_size=32).eval()


def _stream(backend, frames, output_frame):
    """Run frames through the ring the way the app does; return {frame index: logits}."""
    window = ClipWindow(backend.frames, output_frame)
    out = {}

    def emit(emission):
        if emission is not None:
            out[emission.record] = backend.infer(emission.clip, emission.index)

    for k, frame in enumerate(frames):
        emit(window.push(k, backend.preprocess(frame)))
    while window.pending:
        emit(window.pad())
    return out, window.index


def _reference(model, frames, index):
    """Full-clip inference, built independently: NumPy preprocessing + model(clip) on the clamped window."""
    norm = Normalization()
    pre = [torch.from_numpy(preprocess(f, model.img_size, norm)) for f in frames]
    n, t = len(frames), model.frames
    result = {}
    with torch.inference_mode():
        for k in range(n):
            clip = torch.stack([pre[min(max(k - index + j, 0), n - 1)] for j in range(t)])[None]
            result[k] = model(clip, output_frame=index)[0, 0, 0].numpy()
    return result


@pytest.mark.parametrize("output_frame", ["centre", "newest"])
def test_stream_cache_equals_full_clip(tiny_model, output_frame, rng_seed):
    rng = np.random.default_rng(rng_seed)
    frames = [rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8) for _ in range(7)]
    cached = TorchBackend(tiny_model, device="cpu", stream_cache=True, log=lambda m: None)
    cached.prepare(frames[0].shape)
    got, index = _stream(cached, frames, output_frame)
    assert sorted(got) == list(range(7))  # warm-up and end padding included: 7 frames in, 7 masks out
    expected = _reference(tiny_model, frames, index)
    for k in range(7):
        assert got[k].shape == (32, 32)
        np.testing.assert_allclose(got[k], expected[k], atol=2e-4, rtol=1e-4)
    if output_frame == "centre":  # recomputing the whole clip each step (no cache) gives the same logits too
        full = TorchBackend(tiny_model, device="cpu", stream_cache=False, log=lambda m: None)
        again, _ = _stream(full, frames, output_frame)
        for k in range(7):
            np.testing.assert_allclose(again[k], expected[k], atol=2e-4, rtol=1e-4)


def test_frame_features_run_once_per_new_frame(tiny_model):
    calls = []
    original = tiny_model.frame_features

    def counting(x):
        calls.append(x.shape[0])
        return original(x)

    backend = TorchBackend(tiny_model, device="cpu", log=lambda m: None)
    tiny_model.frame_features = counting
    try:
        frames = [np.full((32, 32, 3), 10 * k, np.uint8) for k in range(6)]
        _stream(backend, frames, "centre")
    finally:
        del tiny_model.frame_features
    assert calls == [1] * 6  # once per new frame, never for warm-up or end padding


def test_fp16_and_cuda_graph_fall_back_on_cpu(tiny_model):
    messages = []
    backend = TorchBackend(tiny_model, device="cpu", fp16=True, cuda_graph=True, threads=1, log=messages.append)
    assert backend.dtype == torch.float32 and backend.cuda_graph is False
    assert any("--fp16" in m for m in messages) and any("--cuda-graph" in m for m in messages)
    info = backend.describe()
    assert info["backend"] == "pytorch" and info["device"] == "cpu" and info["scan_impl"] == "reference"
    assert info["threads"] == 1
    quiet = []  # the default (graphs wherever CUDA is) is not a request: no warning on the CPU
    assert TorchBackend(tiny_model, device="cpu", threads=1, log=quiet.append).cuda_graph is False and quiet == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("fp16, cuda_graph, compiled, frame_size", [
    (False, False, False, 64), (False, True, False, 64), (True, True, False, 64), (True, True, True, 64),
    (False, True, False, 32)])
def test_cuda_stream_matches_cpu_reference(tiny_model, fp16, cuda_graph, compiled, frame_size):
    import copy

    rng = np.random.default_rng(8)
    # 64x64: larger than the model's 32x32 input, so the backend resizes on the device and the reference with OpenCV
    # (a factor of 2, where both give the same uint8 values; other factors: test_runtime_resample); 32x32: no resize
    frames = [rng.integers(0, 256, size=(frame_size, frame_size, 3), dtype=np.uint8) for _ in range(6)]
    expected = _reference(tiny_model, frames, 2)
    backend = TorchBackend(copy.deepcopy(tiny_model), device="cuda", fp16=fp16, cuda_graph=cuda_graph,
                           compile=compiled, log=print)
    backend.prepare(frames[0].shape)
    got, _ = _stream(backend, frames, "centre")
    info = backend.describe()
    assert info["precision"] == ("fp16" if fp16 else "fp32") and info["compiled"] == compiled
    print("scan implementation on CUDA:", info["scan_impl"])
    for k in range(6):
        scale = float(np.abs(expected[k]).max())
        tol = (0.03 * scale + 0.03) if fp16 else (1e-3 * scale + 1e-3)
        assert float(np.abs(got[k] - expected[k]).max()) <= tol, (k, fp16, cuda_graph)
    if cuda_graph:
        assert backend.cuda_graph, "CUDA graph capture fell back to eager"
        # the preprocessing graph exists exactly when the frame needs a resize
        assert bool(backend._prep_graphs) == (frame_size != 32)
