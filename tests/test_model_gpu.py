"""The model's CUDA fast paths against the CPU reference (skipped without an NVIDIA GPU)."""

import pytest
import torch

import vivim
from vivim.model import VivimModel
from vivim.ops import dispatch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs an NVIDIA GPU (torch.cuda.is_available() is False)", allow_module_level=True)


def scan_impls():
    names = [impl.name for impl in dispatch.implementations()]
    return [n for n in names if dispatch.is_available(n, "cuda")[0]]


@pytest.fixture(scope="module")
def model_and_clip():
    torch.manual_seed(0)
    model = vivim.create_model("b0", frames=5, img_size=128).eval()
    for p in model.parameters():  # trained-like, non-trivial values for the temporal layers too
        if p.dim() == 1 and p.numel() > 1:
            p.data.add_(torch.randn_like(p) * 0.05)
    clip = torch.randn(1, 5, 3, 128, 128)
    with torch.no_grad():
        expected = model(clip)  # CPU, reference scan, fp32
    return model, clip, expected


def cuda_fp32_logits(model, clip, impl):
    """The same weights in a fresh model of the same config on CUDA, fp32 without TF32, scans by `impl`."""
    gpu = VivimModel(model.config)
    gpu.load_state_dict(model.state_dict())
    gpu = gpu.cuda().eval()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad(), dispatch.use_impl(impl):
        return gpu(clip.cuda()).cpu()


@pytest.mark.parametrize("impl", scan_impls())
def test_cuda_fp32_matches_cpu_reference(model_and_clip, impl):
    model, clip, expected = model_and_clip
    got = cuda_fp32_logits(model, clip, impl)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-4


@pytest.mark.parametrize("impl", scan_impls())
def test_cuda_fp16_masks_agree_with_fp32(model_and_clip, impl):
    model, clip, expected = model_and_clip
    gpu = vivim.create_model("b0", frames=5, img_size=128)
    gpu.load_state_dict(model.state_dict())
    gpu = gpu.cuda().eval().to_inference_dtype(torch.float16)
    with torch.no_grad(), dispatch.use_impl(impl):
        got = gpu(clip.cuda().half()).float().cpu()
    agree = ((got > 0) == (expected > 0)).float().mean().item()
    assert agree > 0.99
    assert (got - expected).abs().max().item() < 0.05 * expected.abs().max().item() + 0.05


def test_cuda_graph_replay_equals_eager(model_and_clip):
    model, clip, _ = model_and_clip
    gpu = vivim.create_model("b0", frames=5, img_size=128)
    gpu.load_state_dict(model.state_dict())
    gpu = gpu.cuda().eval().to_inference_dtype(torch.float16)
    static_in = clip.cuda().half()
    with torch.no_grad():
        eager = gpu(static_in)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                gpu(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = gpu(static_in)
        static_in.copy_(torch.randn_like(static_in))
        graph.replay()
        fresh = gpu(static_in)
    torch.cuda.synchronize()
    torch.testing.assert_close(static_out, fresh, rtol=2e-3, atol=2e-3)
    assert not torch.allclose(static_out, eager)


def test_training_step_on_cuda_reduces_loss():
    torch.manual_seed(0)
    model = vivim.create_model("tiny", frames=3, img_size=64).cuda().train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    clip = torch.randn(2, 3, 3, 64, 64, device="cuda")
    target = (torch.rand(2, 1, 1, 64, 64, device="cuda") > 0.5).float()
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(clip, output_frame="centre"), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("impl", scan_impls())
def test_non_square_model_on_cuda_matches_cpu_reference(impl):
    """A model built for 64x96 (its decoder's resize weights cached for that grid) on CUDA, each scan."""
    torch.manual_seed(1)
    model = vivim.create_model("b0", frames=3, img_size=(64, 96)).eval()
    clip = torch.randn(2, 3, 3, 64, 96)
    with torch.no_grad():
        expected = model(clip)
    got = cuda_fp32_logits(model, clip, impl)
    assert got.shape == (2, 3, 1, 64, 96)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-4
