"""ONNX Runtime backend (--onnx M.onnx): the exported graph with the NumPy selective-scan op registered.

No torch: preprocessing is OpenCV/NumPy, the ring holds normalised (3, H, W) NumPy frames, and the session comes
from `vivim.export.ort_ops.create_session`, which registers the custom `vivim::VivimSelectiveScan` node.
The graph recomputes the whole clip per mask (the streaming feature cache is a PyTorch-backend feature).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from vivim import paths
from vivim.devices import parse_device
from vivim.errors import VivimError
from vivim.runtime.backends import (default_output_frame, metadata_int, output_index_from_metadata, select_output,
                                    trained_output_frame)
from vivim.runtime.preprocess import Normalization, choose_resize, preprocess

_NP_OF_ORT = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OrtBackend:
    name = "onnxruntime"

    def __init__(
        self,
        path: str,
        *,
        device: str = "auto",
        interpolation: Optional[str] = None,
        threads: Optional[int] = None,
        log: Callable[[str], None] = print,
    ) -> None:
        paths.require_file(path, "--onnx")
        try:
            import onnxruntime as ort
        except ImportError:
            raise VivimError("--onnx needs ONNX Runtime: pip install 'vivim-edge[export]'") from None
        from vivim.export.ort_ops import create_session

        available = ort.get_available_providers()
        spec = parse_device(device)
        if spec.kind == "auto":
            device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
            spec = parse_device(device)
        if spec.kind == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise VivimError(
                    f"--device {device}: this ONNX Runtime has no CUDA provider (pip install onnxruntime-gpu); use --device cpu"
                )
            providers: List[Any] = [("CUDAExecutionProvider", {"device_id": spec.cuda_index}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        # a foreign graph would "run" and draw meaningless masks: refused before its session is built
        self.session = create_session(path, providers, threads=threads, require_metadata=f"--onnx {path}")
        self.threads = threads  # None: ONNX Runtime's own choice
        self.device = device
        self.source = path

        meta: Dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.interpolation = choose_resize(interpolation, meta.get("resize"), f"--onnx {path}", log)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise VivimError(f"--onnx {path}: expected one input (1, T, 3, H, W), found {len(inputs)}")
        if not outputs:
            raise VivimError(f"--onnx {path}: the graph has no output; export it with vivim-export onnx")
        shape = inputs[0].shape
        if len(shape) != 5 or not all(isinstance(d, int) for d in shape[1:]) or shape[2] != 3:
            raise VivimError(f"--onnx {path}: input shape {shape} is not a static (1, T, 3, H, W); re-export it")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.frames = int(shape[1])
        self.input_size: Tuple[int, int] = (int(shape[3]), int(shape[4]))
        self.input_dtype = _NP_OF_ORT.get(inputs[0].type, np.float32)
        self.normalization = Normalization.from_metadata(meta.get("normalization"), f"--onnx {path}")
        out_shape = outputs[0].shape
        out_frames = out_shape[1] if len(out_shape) == 5 and isinstance(out_shape[1], int) else self.frames
        self.fixed_output_index = output_index_from_metadata(meta, self.frames, int(out_frames))
        self.trained_output_frame = trained_output_frame(meta)
        self.default_output_frame = default_output_frame(meta)
        if metadata_int(meta, "frames", self.frames) != self.frames:
            log(f"warning: --onnx {path}: metadata says T={meta.get('frames')} but the input has T={self.frames}")
        self.precision = meta.get("precision", "fp16" if self.input_dtype == np.float16 else "fp32")
        self.providers = self.session.get_providers()

    def prepare(self, frame_shape: Sequence[int]) -> None:
        item = self.preprocess(np.zeros((int(frame_shape[0]), int(frame_shape[1]), 3), np.uint8))
        index = self.fixed_output_index if self.fixed_output_index is not None else self.frames - 1
        self.infer([item] * self.frames, index)  # first run allocates and optimises

    def preprocess(self, frame_bgr: np.ndarray) -> np.ndarray:
        return preprocess(frame_bgr, self.input_size, self.normalization, self.interpolation, self.input_dtype)

    def infer(self, clip: List[np.ndarray], index: int) -> np.ndarray:
        batch = np.stack(clip)[None]
        (logits,) = self.session.run([self.output_name], {self.input_name: batch})
        return select_output(logits, self.frames, index, self.fixed_output_index)

    def describe(self) -> Dict[str, Any]:
        import onnxruntime as ort

        return {
            "backend": self.name,
            "device": self.device,
            "model": self.source,
            "precision": self.precision,
            "resize": self.interpolation,
            "providers": list(self.providers),
            "threads": self.threads,  # None: ONNX Runtime's own choice
            "onnxruntime": ort.__version__,
        }

    def close(self) -> None:
        pass
