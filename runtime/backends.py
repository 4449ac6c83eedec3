"""The one interface every inference backend implements, and the factory that picks one.

    backend.prepare(frame_shape)           allocate buffers, warm up, capture CUDA graphs (once, before the loop)
    item = backend.preprocess(frame_bgr)   once per new frame: resize + normalise + upload (+ per-frame network part)
    logits = backend.infer(clip, index)    clip = the ring's T items (oldest first); logits (H, W) float32 on the
                                           host for the frame at `clip[index]`

Items live on the backend's device (torch tensors, NumPy arrays, TensorRT device buffers); the ring only holds
references. The app talks to this interface alone and never asks which backend it has.

Backends by flag: --checkpoint -> PyTorch (`backend_torch`), --onnx -> ONNX Runtime (`backend_ort`),
--engine -> TensorRT (`backend_trt`). Only the chosen module is imported: the ONNX Runtime and TensorRT
backends never import torch.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np

from vivim.errors import VivimError


class Backend(Protocol):
    name: str  # pytorch | onnxruntime | tensorrt
    device: str  # what runs the model, e.g. "cpu" or "cuda:0 (NVIDIA H100)"
    frames: int  # T, clip length the model was built for
    input_size: Tuple[int, int]  # (H, W) of the model input
    fixed_output_index: Optional[int]  # a graph that decodes one baked-in frame only; None = any frame
    trained_output_frame: Optional[str]  # the frame it was trained to segment (centre | newest), when known
    default_output_frame: Optional[str]  # the frame run without --output-frame: a one-frame graph's own, else trained

    def prepare(self, frame_shape: Sequence[int]) -> None: ...

    def preprocess(self, frame_bgr: np.ndarray) -> Any: ...

    def infer(self, clip: List[Any], index: int) -> np.ndarray: ...

    def describe(self) -> Dict[str, Any]: ...

    def close(self) -> None: ...


def create_backend(cfg, interpolation: Optional[str] = None, log=print) -> Backend:  # cfg: config.BackendConfig
    """The backend named by the config (--checkpoint, --onnx or --engine), loaded and ready for `prepare`.
    `interpolation`: the resize filter, or None (or "model") for the one the model was trained with."""
    if interpolation == "model":
        interpolation = None
    if cfg.kind == "checkpoint":
        from vivim.runtime.backend_torch import TorchBackend

        return TorchBackend.from_checkpoint(
            cfg.model, device=cfg.device, fp16=cfg.fp16, cuda_graph=cfg.cuda_graph, compile=cfg.compile,
            stream_cache=cfg.stream_cache, threads=cfg.threads, interpolation=interpolation, log=log,
        )
    _reject_torch_only_flags(cfg, log)
    if cfg.kind == "onnx":
        from vivim.runtime.backend_ort import OrtBackend

        return OrtBackend(cfg.model, device=cfg.device, interpolation=interpolation, threads=cfg.threads, log=log)
    if cfg.kind == "engine":
        from vivim.runtime.backend_trt import TensorRTBackend

        return TensorRTBackend(cfg.model, device=cfg.device, plugin=cfg.plugin, interpolation=interpolation, log=log)
    raise VivimError(f"unknown backend kind {cfg.kind!r}")


def _reject_torch_only_flags(cfg, log) -> None:
    if cfg.fp16:
        log("warning: --fp16 applies to --checkpoint only; an ONNX model or engine runs in the precision it was exported with")
    if cfg.cuda_graph:
        log("warning: --cuda-graph applies to --checkpoint only; ignored")
    if cfg.compile:
        log("warning: --compile applies to --checkpoint only; ignored")
    if cfg.threads and cfg.kind == "engine":
        log("warning: --threads applies to --checkpoint and --onnx only (CPU intra-op threads); ignored")
    if not cfg.stream_cache:
        log("warning: --no-stream-cache applies to --checkpoint only; ignored")


def metadata_int(meta: Dict[str, str], key: str, default: Optional[int] = None) -> Optional[int]:
    try:
        return int(meta[key])
    except (KeyError, ValueError, TypeError):
        return default


def trained_output_frame(meta: Dict[str, str]) -> Optional[str]:
    """The frame the model was trained to segment: an exported graph's `trained_output_frame` (written since
    2026-11-27), else `output_frame` (a checkpoint's training frame; an older one-frame graph's own frame); None
    when the metadata says neither."""
    for key in ("trained_output_frame", "output_frame"):
        if meta.get(key) in ("centre", "newest"):
            return meta[key]
    return None


def default_output_frame(meta: Dict[str, str]) -> Optional[str]:
    """vivim-run's default --output-frame for an exported model: a one-frame graph's own frame (the only one it
    can decode), else the frame it was trained for; None when the metadata says neither (centre then)."""
    own = meta.get("output_frame")
    return own if own in ("centre", "newest") else trained_output_frame(meta)


def output_index_from_metadata(meta: Dict[str, str], frames: int, out_frames: int) -> Optional[int]:
    """A graph whose output has one frame decodes the frame named in its metadata; None when it has all T."""
    if out_frames == frames and frames != 1:
        return None
    from vivim.constants import output_frame_index, parse_output_frame

    policy = parse_output_frame(meta.get("output_frame", "centre"), "the model metadata's output_frame", extra=("all",))
    if policy == "all":  # a T = 1 graph exported with all frames: its one output frame is frame 0
        if out_frames != frames:
            raise VivimError(f"the model metadata says all {frames} frames are decoded, but the output has {out_frames}")
        return None
    return output_frame_index(policy, frames)


def select_output(logits: np.ndarray, frames: int, index: int, fixed_index: Optional[int]) -> np.ndarray:
    """(1, T or 1, 1, H, W) -> (H, W) float32 for the requested frame."""
    out = np.asarray(logits)
    if out.ndim != 5:
        raise VivimError(f"model output has shape {out.shape}; expected (1, T, 1, H, W)")
    if fixed_index is None:
        return out[0, index, 0].astype(np.float32, copy=False)
    if index != fixed_index:
        raise VivimError(f"model decodes frame {fixed_index} of the clip only, {index} requested")
    return out[0, 0, 0].astype(np.float32, copy=False)
