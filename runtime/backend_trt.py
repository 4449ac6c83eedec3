"""TensorRT backend (--engine M.engine): no torch; pycuda for device buffers and the stream.

Why pycuda (and not cuda-python): the product design names it, JetPack-based images routinely carry it, and it
gives exactly the three things this backend needs with ownership built in: device allocations freed with their
Python object, page-locked NumPy arrays for asynchronous copies, and stream objects. cuda-python would work
too but returns raw handles and error tuples that we would have to wrap by hand. We retain the device's
*primary* context (not `pycuda.autoinit`'s private one) so TensorRT, its plugin and pycuda share one context.

Before anything is loaded the engine's sidecar (`<engine>.json`, written by `vivim-export trt`) is checked
against this GPU, TensorRT release and plugin library; a mismatch stops with the rebuild command. The plugin
library is --plugin, else ./vivim_plugin/ or the engine's folder: never the path the sidecar records (whoever
hands over an engine would choose the code that runs); the sidecar's hash still has to match it.

Data path per frame: OpenCV resize + NumPy normalise into a page-locked slot, one async upload into one of
T + 1 device slots (the ring holds slot references; T + 1 slots means the slot being written is never in the
current clip). Per mask: T device-to-device copies assemble the contiguous (1, T, 3, H, W) input, the engine
runs, the logits come back through page-locked memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from vivim import paths
from vivim.devices import parse_device
from vivim.errors import VivimError
from vivim.export.onnx_files import missing_vivim_metadata
from vivim.export.plugin import find_plugin_library
from vivim.runtime.backends import default_output_frame, output_index_from_metadata, select_output, trained_output_frame
from vivim.runtime.preprocess import Normalization, choose_resize, normalize_chw, resize_rgb


@dataclass(frozen=True)
class DeviceSlot:
    """One preprocessed frame on the GPU (the ring keeps these references)."""

    index: int
    pointer: int


def _device_index(device: str) -> int:
    spec = parse_device(device)
    if spec.kind == "cpu":
        raise VivimError("--engine runs on an NVIDIA GPU only; use --device cuda (or --onnx / --checkpoint on the CPU)")
    return spec.cuda_index


class TensorRTBackend:
    name = "tensorrt"

    def __init__(
        self,
        engine_path: str,
        *,
        device: str = "auto",
        plugin: Optional[str] = None,
        interpolation: Optional[str] = None,
        log: Callable[[str], None] = print,
    ) -> None:
        index = _device_index(device)
        path = paths.require_file(engine_path, "--engine")
        from vivim.export import tensorrt_build as tb

        sidecar = tb.read_sidecar(path)
        trt = tb.import_tensorrt()
        if trt is None:
            raise VivimError(tb.tensorrt_missing_message("vivim-run"))
        try:
            import pycuda.driver as cuda
        except ImportError:
            raise VivimError(
                "--engine needs pycuda for device buffers: pip install 'vivim-edge[trt]' "
                "(on Jetson it builds against JetPack's CUDA)"
            ) from None
        gpu = tb.current_gpu(index)
        if gpu is None:
            raise VivimError(f"--device cuda:{index}: no usable NVIDIA GPU/driver found")
        built_with = sidecar.get("plugin", {}).get("path")
        plugin_path = find_plugin_library(plugin, path, hint=f"the engine was built with {built_with}" if built_with else "")
        plan = path.read_bytes()  # read once: hashed against the sidecar here, deserialised by _load
        tb.check_engine_compatible(sidecar, gpu.name, gpu.compute_capability, str(trt.__version__),
                                   plugin_sha256=tb.file_sha256(plugin_path),
                                   engine_sha256=hashlib.sha256(plan).hexdigest(), engine_path=path)
        # the frames are prepared from the model's metadata (normalisation, output frame): an engine whose sidecar
        # lacks it (built before the metadata was read without the onnx package) would draw misplaced masks
        missing_vivim_metadata({str(k): str(v) for k, v in (sidecar.get("model") or {}).items()},
                               f"--engine {path} (its sidecar)", f"rebuild it: {tb.rebuild_command(sidecar, path)}")

        cuda.init()
        self._cuda = cuda
        self._context = cuda.Device(index).retain_primary_context()
        self._context.push()  # current for this thread until close()
        try:
            self._load(trt, path, plan, plugin_path, sidecar, tb)
        except BaseException:
            self._context.pop()
            raise
        self.device = f"cuda:{index} ({gpu.name})"
        self.source = str(path)
        self.interpolation = choose_resize(interpolation, (sidecar.get("model") or {}).get("resize"),
                                           f"--engine {engine_path}", log)
        self.plugin_path = str(plugin_path)
        self.trt_version = str(trt.__version__)
        self._log = log

    def _load(self, trt: Any, path: Path, plan: bytes, plugin_path: Path, sidecar: Dict[str, Any], tb: Any) -> None:
        cuda = self._cuda
        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")
        tb.load_plugin_library(plugin_path)  # once per process: a second backend reuses it
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise VivimError(f"--engine {path}: TensorRT could not deserialize it; rebuild: "
                             f"{tb.rebuild_command(sidecar, path)}")
        self._exec = self._engine.create_execution_context()
        if self._exec is None:  # TensorRT logs the reason (usually device memory for the activations)
            raise VivimError(f"--engine {path}: TensorRT could not create an execution context (out of GPU memory?)")

        inputs: List[Tuple[str, Tuple[int, ...], np.dtype]] = []
        outputs: List[Tuple[str, Tuple[int, ...], np.dtype]] = []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = tuple(int(d) for d in self._engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (inputs if is_input else outputs).append((name, shape, dtype))
        if len(inputs) != 1 or not outputs:
            raise VivimError(f"--engine {path}: expected one input (1, T, 3, H, W) and one output")
        (self._in_name, in_shape, self._in_dtype), (self._out_name, out_shape, out_dtype) = inputs[0], outputs[0]
        if len(in_shape) != 5 or in_shape[0] != 1 or in_shape[2] != 3 or min(in_shape) < 1:
            raise VivimError(f"--engine {path}: input {self._in_name} has shape {in_shape}, expected static (1, T, 3, H, W)")
        self.frames = in_shape[1]
        self.input_size: Tuple[int, int] = (in_shape[3], in_shape[4])
        meta = {str(k): str(v) for k, v in (sidecar.get("model") or {}).items()}
        self.normalization = Normalization.from_metadata(meta.get("normalization"), f"--engine {path}")
        out_frames = out_shape[1] if len(out_shape) == 5 else self.frames
        self.fixed_output_index = output_index_from_metadata(meta, self.frames, out_frames)
        self.trained_output_frame = trained_output_frame(meta)
        self.default_output_frame = default_output_frame(meta)
        self.precision = str(sidecar.get("precision", "?"))

        self._stream = cuda.Stream()
        self._slot_shape = (3, self.input_size[0], self.input_size[1])
        self._slot_bytes = int(np.prod(self._slot_shape)) * self._in_dtype.itemsize
        self._d_input = cuda.mem_alloc(self._slot_bytes * self.frames)
        self._h_output = cuda.pagelocked_empty(out_shape, out_dtype)
        self._d_output = cuda.mem_alloc(self._h_output.nbytes)
        n_slots = self.frames + 1  # the ring holds at most T distinct frames; the next upload uses the spare
        self._d_slots = [cuda.mem_alloc(self._slot_bytes) for _ in range(n_slots)]
        self._h_slots = [cuda.pagelocked_empty(self._slot_shape, self._in_dtype) for _ in range(n_slots)]
        self._next_slot = 0
        self._exec.set_tensor_address(self._in_name, int(self._d_input))
        self._exec.set_tensor_address(self._out_name, int(self._d_output))

    # -- interface ---------------------------------------------------------------------------------------------
    def prepare(self, frame_shape: Sequence[int]) -> None:
        item = self.preprocess(np.zeros((int(frame_shape[0]), int(frame_shape[1]), 3), np.uint8))
        index = self.fixed_output_index if self.fixed_output_index is not None else self.frames - 1
        for _ in range(3):  # first enqueues initialise the plugin and the engine's lazy resources
            self.infer([item] * self.frames, index)

    def preprocess(self, frame_bgr: np.ndarray) -> DeviceSlot:
        i = self._next_slot
        self._next_slot = (i + 1) % len(self._d_slots)
        host = self._h_slots[i]
        # The previous upload from this page-locked buffer finished: infer() synchronises the stream every mask.
        normalize_chw(resize_rgb(frame_bgr, self.input_size, self.interpolation), self.normalization, self._in_dtype,
                      out=host)
        self._cuda.memcpy_htod_async(self._d_slots[i], host, self._stream)
        return DeviceSlot(i, int(self._d_slots[i]))

    def infer(self, clip: List[DeviceSlot], index: int) -> np.ndarray:
        cuda, base = self._cuda, int(self._d_input)
        for t, slot in enumerate(clip):  # assemble the contiguous clip input on the device
            cuda.memcpy_dtod_async(base + t * self._slot_bytes, slot.pointer, self._slot_bytes, self._stream)
        if not self._exec.execute_async_v3(self._stream.handle):
            raise VivimError("TensorRT enqueue failed (see the TensorRT log above)")
        cuda.memcpy_dtoh_async(self._h_output, self._d_output, self._stream)
        self._stream.synchronize()
        # copy: the page-locked output buffer is overwritten by the next enqueue
        return select_output(self._h_output, self.frames, index, self.fixed_output_index).copy()

    def describe(self) -> Dict[str, Any]:
        return {
            "backend": self.name,
            "device": self.device,
            "model": self.source,
            "precision": self.precision,
            "resize": self.interpolation,
            "plugin": self.plugin_path,
            "tensorrt": self.trt_version,
        }

    def close(self) -> None:
        if getattr(self, "_context", None) is None:
            return
        self._stream.synchronize()
        # free device memory while the context is still current, then release it
        self._exec = None
        self._engine = None
        self._d_slots, self._h_slots = [], []
        self._d_input = self._d_output = self._h_output = None
        self._stream = None
        self._context.pop()
        self._context = None
