"""PyTorch backend (--checkpoint CKPT|demo): streaming inference with a cache of per-frame features.

Vivim's network splits in two: `frame_features` (the first SegFormer stage, before any temporal layer) depends
on one frame only, so each new frame runs it once and the ring keeps its (C1, H/4, W/4) output; per clip only
`forward_from_frame_features` runs (the temporal layers and the rest of the encoder over T frames, then the
decoder for the output frame alone). Without the cache (`stream_cache=False`) the ring keeps normalised frames
and every step recomputes the whole clip: same logits, more work (see benchmarks/streaming_notes.md).

On CUDA the selective scans go through `vivim.ops` dispatch (our kernel when built, then mamba-ssm, then the
reference); `fp16` casts the model for inference (scan parameters stay fp32), `cuda_graph` captures both parts
as CUDA graphs (replayed with static buffers: removes the launch overhead that dominates at batch 1).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch

from vivim import paths
from vivim.constants import TRAIN_RESIZE
from vivim.cuda_graph import capture_cuda_graph
from vivim.devices import torch_device
from vivim.runtime.backends import trained_output_frame
from vivim.runtime.preprocess import Normalization, choose_resize, resize_rgb
from vivim.runtime.resample import DeviceResizer


class TorchBackend:
    name = "pytorch"
    fixed_output_index: Optional[int] = None
    trained_output_frame: Optional[str] = None  # from the checkpoint's metadata (vivim-train writes it)
    default_output_frame: Optional[str] = None  # a checkpoint decodes any frame: the trained one

    def __init__(
        self,
        model: Any,  # vivim.model.VivimModel
        *,
        normalization: Normalization = Normalization(),
        device: str = "auto",
        fp16: bool = False,
        cuda_graph: Optional[bool] = None,
        compile: bool = False,
        stream_cache: bool = True,
        threads: Optional[int] = None,
        interpolation: str = TRAIN_RESIZE,
        source: str = "model",
        log: Callable[[str], None] = print,
    ) -> None:
        self._device = torch_device(device)
        self._log = log
        on_cuda = self._device.type == "cuda"
        if fp16 and not on_cuda:
            log("warning: --fp16 needs --device cuda; running fp32 on the CPU")
            fp16 = False
        if cuda_graph and not on_cuda:
            log("warning: --cuda-graph needs --device cuda; running eagerly on the CPU")
        # on by default on CUDA: at batch 1 the model is launch-bound (the demo, fp32: 54-61 FPS eager, 350-370
        # replayed, H200)
        cuda_graph = on_cuda if cuda_graph is None else (cuda_graph and on_cuda)
        self._threads_before: Optional[int] = None
        if threads and not on_cuda:
            # on a shared or small CPU, fewer threads than cores avoids OpenMP oversubscription stalls; the
            # process's own setting comes back at close() (a library caller's other work keeps its threads)
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(threads)
        self._run_threads = torch.get_num_threads()  # for the summary, which is written after close()
        self.dtype = torch.float16 if fp16 else torch.float32
        model = model.eval().to(self._device)
        if fp16:
            model.to_inference_dtype(torch.float16)  # keeps A_log, D and dt bias fp32 (the scan's contract)
        self.model = model
        self.compiled = compile
        # --compile: the two network parts (and the whole clip, without the stream cache) through torch.compile;
        # each compiles on its first call, i.e. in prepare()
        self._compiled_parts: Dict[str, Callable[..., torch.Tensor]] = {}
        if compile:
            log("compiling the model with torch.compile (once, at start-up)")
            self._compiled_parts = {part: torch.compile(getattr(model, part), dynamic=False)
                                    for part in ("frame_features", "forward_from_frame_features", "__call__")}
        self.frames = int(model.frames)
        size = model.img_size
        self.input_size: Tuple[int, int] = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.normalization = normalization
        self.stream_cache = stream_cache
        self.cuda_graph = cuda_graph
        self.interpolation = interpolation
        self.source = source
        self.device = str(self._device) + (f" ({torch.cuda.get_device_name(self._device)})" if on_cuda else "")
        # On CUDA the frame is uploaded whole and resized there, with the normalisation in the same graph (on the
        # CPU, OpenCV's area resize of a VGA frame costs ~1 ms and the normalisation ~0.1 ms while the GPU waits);
        # on the CPU device, OpenCV is the faster of the two.
        self._device_resize = DeviceResizer(self.input_size, interpolation, self._device, log) if on_cuda else None
        self._warned_sizes: Set[Tuple[int, ...]] = set()  # sizes told about running their preprocessing eagerly
        self._mean = torch.tensor(normalization.mean, device=self._device).view(1, 3, 1, 1)
        self._inv_std = 1.0 / torch.tensor(normalization.std, device=self._device).view(1, 3, 1, 1)
        # CUDA-graph state: the per-frame graph and one decode graph per output index
        self._frame_graph: Optional[Tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = None
        self._clip_graphs: Dict[int, Tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._prep_graphs: Dict[Tuple[int, ...], Tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_checkpoint(cls, checkpoint: str, **kwargs: Any) -> "TorchBackend":
        import vivim
        from vivim.checkpoint import checkpoint_file

        paths.require_file(checkpoint_file(checkpoint), "--checkpoint")  # 'demo': the bundled file, which must be there

        model, metadata = vivim.load_checkpoint(checkpoint, map_location="cpu")
        norm = Normalization.from_metadata(metadata.get("normalization"), f"--checkpoint {checkpoint}")
        kwargs["interpolation"] = choose_resize(kwargs.get("interpolation"), metadata.get("resize"),
                                                f"--checkpoint {checkpoint}", kwargs.get("log", print))
        backend = cls(model, normalization=norm, source=checkpoint, **kwargs)
        backend.trained_output_frame = trained_output_frame(metadata)
        backend.default_output_frame = backend.trained_output_frame
        return backend

    # -- interface ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def prepare(self, frame_shape: Sequence[int]) -> None:
        """Warm up (first-use kernel builds, cuDNN choices) and capture CUDA graphs before timing starts."""
        dummy = np.zeros((int(frame_shape[0]), int(frame_shape[1]), 3), dtype=np.uint8)
        item = self.preprocess(dummy)  # eager: no graph captured yet
        stacked = torch.stack([item] * self.frames)[None]
        indices = sorted({self.frames - 1, self.frames // 2})  # newest and centre
        for index in indices:
            self._clip_part(stacked, index)
        if self.cuda_graph:
            try:
                if self._device_resize is not None and self._device_resize.handles(dummy):
                    image = self._device_resize.upload(dummy)
                    self._prep_graphs[tuple(image.shape)] = self._capture(self._device_prep, image)
                    self._device_resize.keep(image.shape)
                if self.stream_cache:
                    self._frame_graph = self._capture(self._frame_part, self._upload(dummy))
                for index in indices:
                    self._clip_graphs[index] = self._capture(functools.partial(self._clip_part, index=index), stacked)
            except RuntimeError as exc:
                self._log(f"warning: CUDA graph capture failed ({str(exc).splitlines()[0]}); running eagerly")
                self.cuda_graph = False
                self.close()
        self._sync()

    @torch.inference_mode()
    def preprocess(self, frame_bgr: np.ndarray) -> torch.Tensor:
        x = self._upload(frame_bgr)
        if not self.stream_cache:
            return x[0]
        if self._frame_graph is not None:
            graph, static_in, static_out = self._frame_graph
            static_in.copy_(x)
            graph.replay()
            return static_out[0].clone()  # the ring keeps it; the static buffer is reused next frame
        return self._frame_part(x)[0]

    @torch.inference_mode()
    def infer(self, clip: List[torch.Tensor], index: int) -> np.ndarray:
        stacked = torch.stack(clip)[None]
        if self.cuda_graph:
            if index not in self._clip_graphs:
                self._clip_graphs[index] = self._capture(functools.partial(self._clip_part, index=index), stacked)
            graph, static_in, static_out = self._clip_graphs[index]
            static_in.copy_(stacked)
            graph.replay()
            logits = static_out
        else:
            logits = self._clip_part(stacked, index)
        return logits[0, 0, 0].float().cpu().numpy()

    def describe(self) -> Dict[str, Any]:
        try:
            from vivim.ops import dispatch

            scan = dispatch.pick(self._device.type).name
        except Exception:  # reporting only
            scan = "unknown"
        return {
            "backend": self.name,
            "device": self.device,
            "model": self.source,
            "precision": "fp16" if self.dtype == torch.float16 else "fp32",
            "cuda_graph": self.cuda_graph,
            "compiled": self.compiled,
            "stream_cache": self.stream_cache,
            "resize": self.interpolation,
            "scan_impl": scan,
            "torch": torch.__version__,
            "threads": self._run_threads if self._device.type == "cpu" else None,
        }

    def close(self) -> None:
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None
        self._frame_graph = None
        self._clip_graphs.clear()
        self._prep_graphs.clear()
        if self._device_resize is not None:
            self._device_resize.clear()

    # -- the two network parts ---------------------------------------------------------------------------------
    def _upload(self, frame_bgr: np.ndarray) -> torch.Tensor:
        """Resize (on the device when it can, else on the CPU), normalise on the device: (1, 3, H, W) in the model
        dtype. Both resizes give the same uint8-grid values, at most a level apart (runtime/resample.py)."""
        if self._device_resize is not None and self._device_resize.handles(frame_bgr):
            image = self._device_resize.upload(frame_bgr)
            graph = self._prep_graphs.get(tuple(image.shape))
            if graph is None:
                if self._prep_graphs and image.shape not in self._warned_sizes:  # captured at start, for another size
                    self._warned_sizes.add(image.shape)
                    self._log(f"frame size changed to {image.shape[1]}x{image.shape[0]}: its preprocessing runs "
                              "without a CUDA graph (restart to capture one)")
                return self._device_prep(image)
            replay, static_in, static_out = graph
            static_in.copy_(image)
            replay.replay()
            return static_out.clone()  # the ring may keep it; the static buffer is reused next frame
        rgb = torch.from_numpy(resize_rgb(frame_bgr, self.input_size, self.interpolation))
        x = rgb.to(self._device, non_blocking=True).permute(2, 0, 1)[None].float().mul_(1.0 / 255.0)
        return self._normalize(x)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self._mean) * self._inv_std).to(self.dtype)

    def _device_prep(self, image: torch.Tensor) -> torch.Tensor:
        """(h, w, 3) uint8 BGR on the device -> the normalised model input; one CUDA graph when graphs are on."""
        assert self._device_resize is not None
        return self._normalize(self._device_resize.resize(image).mul_(1.0 / 255.0))

    def _network(self, part: str) -> Callable[..., torch.Tensor]:
        """A part of the model ('frame_features', 'forward_from_frame_features', '__call__'), compiled if asked."""
        return self._compiled_parts.get(part) or getattr(self.model, part)

    def _frame_part(self, x: torch.Tensor) -> torch.Tensor:
        return self._network("frame_features")(x)

    def _clip_part(self, stacked: torch.Tensor, index: int) -> torch.Tensor:
        if self.stream_cache:
            return self._network("forward_from_frame_features")(stacked, output_frame=index, out_size=self.input_size)
        return self._network("__call__")(stacked, output_frame=index)

    def _capture(self, fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor):
        """Record `fn` on a static input as a CUDA graph (warm-up on a side stream first, as CUDA graphs need)."""
        static_in = example.clone()
        with torch.inference_mode():
            graph, static_out = capture_cuda_graph(lambda: fn(static_in), warmup=2, device=self._device)
        return graph, static_in, static_out

    def _sync(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
