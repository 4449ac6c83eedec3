"""Frame resizing on the device (runtime/resample.py) against OpenCV's resize, on fresh random frames."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("cv2")  # the CPU path the device resize must match

from vivim.runtime.preprocess import resize_rgb  # noqa: E402
from vivim.runtime.resample import DeviceResizer, area_weights, resample_weights, resize_bgr_to_rgb  # noqa: E402

# (source h, w) -> (model H, W): VGA, 1080p, integer factors (OpenCV's integer area paths: 2x2, 3x4, 2x4, 2x1), a
# near-identity shrink, mixed integer / non-integer axes, the identity, and an enlargement (linear only)
SIZES = [((480, 640), (256, 256)), ((1080, 1920), (256, 256)), ((512, 512), (256, 256)), ((768, 1024), (256, 256)),
         ((512, 1024), (256, 256)), ((512, 256), (256, 256)), ((300, 301), (256, 256)), ((480, 640), (224, 320)),
         ((256, 256), (256, 256)), ((200, 100), (256, 256))]


def _min_identical(src: tuple, dst: tuple, mode: str) -> float:
    """Share of values that must equal OpenCV's. Non-integer area factors: all but rare exact halves. Integer area
    factors: OpenCV rounds exact halves to even (up in its 2x2 path), we round them up; with an even block size,
    up to a quarter of the values (2x1) are exact halves. Linear: OpenCV's 11-bit fixed-point weights."""
    if mode == "linear":
        return 0.8
    integer_axis = any(s % d == 0 and s != d for s, d in zip(src, dst))
    return 0.7 if integer_axis else 0.999


def _opencv_rgb(image: np.ndarray, size: tuple, mode: str) -> np.ndarray:
    """The CPU path (OpenCV), which the device resize must reproduce, as (3, H, W) float."""
    return resize_rgb(image, size, mode).transpose(2, 0, 1).astype(np.float32)


@pytest.mark.parametrize("mode", ["area", "linear"])
@pytest.mark.parametrize("src, dst", SIZES, ids=[f"{s[0]}x{s[1]}-{d[0]}x{d[1]}" for s, d in SIZES])
def test_matches_opencv(src, dst, mode):
    if mode == "area" and (dst[0] > src[0] or dst[1] > src[1]):
        pytest.skip("area enlargement stays on the CPU (DeviceResizer.handles)")
    seed = int(np.random.SeedSequence().entropy % 2**32)  # fresh frame every run
    image = np.random.default_rng(seed).integers(0, 256, size=(*src, 3), dtype=np.uint8)
    wy = torch.from_numpy(resample_weights(src[0], dst[0], mode))
    wx_t = torch.from_numpy(resample_weights(src[1], dst[1], mode)).t().contiguous()
    got = resize_bgr_to_rgb(torch.from_numpy(image), wy, wx_t).numpy()
    diff = np.abs(got - _opencv_rgb(image, dst, mode))
    # Same uint8 grid; a level apart only where the two roundings straddle a half (OpenCV's linear path also uses
    # 11-bit fixed-point weights).
    assert diff.max() <= 1.0, f"seed {seed}"
    assert (diff == 0).mean() >= _min_identical(src, dst, mode), f"seed {seed}"


@pytest.mark.parametrize("mode", ["area", "linear"])
def test_weights_are_averages(mode):
    for src, dst in [(640, 256), (480, 256), (7, 3), (256, 256), (100, 200 if mode == "linear" else 50)]:
        w = resample_weights(src, dst, mode)
        assert w.shape == (dst, src) and (w >= 0).all()
        np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)


def test_area_integer_factor_is_the_block_mean():
    np.testing.assert_allclose(area_weights(12, 4), np.kron(np.eye(4), np.full((1, 3), 1 / 3)), rtol=1e-6)
    with pytest.raises(ValueError):
        area_weights(100, 200)  # area enlargement is not this mapping


def test_device_resizer_takes_only_what_it_reproduces():
    resizer = DeviceResizer((256, 256), "area", torch.device("cpu"))  # handles() needs no device
    assert resizer.handles(np.zeros((480, 640, 3), np.uint8))
    assert not resizer.handles(np.zeros((200, 640, 3), np.uint8))  # area enlargement: OpenCV on the CPU
    assert not resizer.handles(np.zeros((256, 256, 3), np.uint8))  # already the model's size: nothing to save
    assert not resizer.handles(np.zeros((480, 640), np.uint8))  # grey
    assert not resizer.handles(np.zeros((480, 640, 3), np.uint16))
    assert DeviceResizer((256, 256), "linear", torch.device("cpu")).handles(np.zeros((200, 100, 3), np.uint8))


def test_device_resizer_holds_two_recent_sizes_and_the_kept_ones():
    """A camera that changes resolution, or a folder of mixed images, does not grow the buffers; a size a CUDA graph
    reads is never dropped. (Bookkeeping only: runs on the CPU; no CUDA call is made before upload.)"""
    messages: list = []
    resizer = DeviceResizer((8, 8), "area", torch.device("cpu"), log=messages.append)
    resizer.keep((16, 16))
    for size in [(20, 20), (24, 24), (32, 32), (40, 40)]:
        resizer.resize(torch.zeros((*size, 3), dtype=torch.uint8))
    assert resizer.cached_sizes == [(16, 16), (32, 32), (40, 40)]
    resizer.resize(torch.zeros((32, 32, 3), dtype=torch.uint8))  # used again: now the most recent
    resizer.resize(torch.zeros((48, 48, 3), dtype=torch.uint8))
    assert resizer.cached_sizes == [(16, 16), (32, 32), (48, 48)]
    resizer.clear()
    assert resizer.cached_sizes == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("mode", ["area", "linear"])
def test_device_resizer_on_gpu_back_to_back(mode):
    """Frames uploaded one after another with no synchronisation (the pinned buffer is reused) each come out as
    OpenCV resizes them."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    rng = np.random.default_rng(seed)
    resizer = DeviceResizer((256, 256), mode, torch.device("cuda"))
    frames = [rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8) for _ in range(4)]
    resizer(frames[0])  # buffers and matrices made, outside the timed part
    saved_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True  # an application's setting must not change the values
    try:
        torch.cuda._sleep(200_000_000)  # keep the stream busy: every upload below is still queued when the next
        outs = [resizer(frame) for frame in frames]  # frame is written to the host buffer, unless upload waits
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved_tf32
    for frame, out in zip(frames, outs):
        assert out.shape == (1, 3, 256, 256) and out.device.type == "cuda"
        diff = np.abs(out[0].cpu().numpy() - _opencv_rgb(frame, (256, 256), mode))
        assert diff.max() <= 1.0 and (diff == 0).mean() >= _min_identical((480, 640), (256, 256), mode), f"seed {seed}"
