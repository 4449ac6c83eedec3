"""Deployment rows: ONNX Runtime sessions over the exported model and TensorRT engines with our plugin."""

from __future__ import annotations

import functools
import importlib
import importlib.util
from pathlib import Path
from typing import Any

from vivim.bench.artifacts import Artifacts
from vivim.bench.common import (
    BenchSettings, apply_measurement, capture_frame, cuda_ready, guarded, measure_on_host, quiet,
)
from vivim.bench.records import Row, one_line, skipped
from vivim.cli_utils import count
from vivim.constants import canonical_size
from vivim.errors import VivimError
from vivim.export.plugin import DEFAULT_PLUGIN_DIR, PLUGIN_LIBRARY_NAME


def onnx_unavailable_reason() -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime not installed (pip install onnxruntime or onnxruntime-gpu)"
    # The scan node runs as an onnxruntime-extensions Python op; onnxscript drives torch's ONNX exporter.
    for module, package in (("onnxruntime_extensions", "onnxruntime-extensions"), ("onnxscript", "onnxscript"),
                            ("onnx", "onnx")):
        if importlib.util.find_spec(module) is None:
            return f"{package} not installed (pip install {package})"
    for module in ("vivim.export.onnx_export", "vivim.export.ort_ops"):
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - reported as the skip reason
            return f"{module} not importable ({type(exc).__name__}: {one_line(str(exc))})"
    return None


def ort_row(artifacts: Artifacts, settings: BenchSettings, *, provider: str, precision: str) -> Row:
    """ONNX Runtime session over the exported model (the scan node runs through vivim.export.ort_ops)."""
    short = "CPU" if provider == "CPUExecutionProvider" else provider.replace("ExecutionProvider", "")
    row = Row(backend=f"ONNX Runtime {short}", precision=precision, mode="clip", scan="onnx-custom-op",
              frames=settings.frames, size=settings.size, batch=settings.batch)
    reason = onnx_unavailable_reason()
    if reason is not None:
        row.status = skipped(reason)
        return row
    import onnxruntime

    if provider not in onnxruntime.get_available_providers():
        row.status = skipped(f"{provider} not available in this onnxruntime build")
        return row
    if precision == "fp16" and provider == "CPUExecutionProvider":
        row.status = skipped("FP16 is not a CPU provider precision")
        return row

    def body(row: Row) -> None:
        import numpy as np

        from vivim.export.ort_ops import create_session

        path = artifacts.onnx(precision)
        providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
        session = create_session(str(path), providers, threads=settings.threads)
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise VivimError(f"{path}: expected one input, found {len(inputs)}")
        np_dtype = np.float16 if "float16" in inputs[0].type else np.float32
        rng = np.random.default_rng(settings.seed)
        x = rng.standard_normal((settings.batch, settings.frames, 3, *settings.hw)).astype(np_dtype)
        feed = {inputs[0].name: x}
        threads = f", {count(settings.threads, 'intra-op thread')}" if settings.threads else ""
        row.notes.append("host latency: includes host<->device copies" if provider != "CPUExecutionProvider"
                         else f"ONNX Runtime CPU, synchronous{threads}")
        apply_measurement(row, measure_on_host(settings, lambda: session.run(None, feed)), None)

    return guarded(row, settings.device, body)


def tensorrt_unavailable_reason() -> str | None:
    try:
        tensorrt_build = importlib.import_module("vivim.export.tensorrt_build")
    except Exception as exc:  # noqa: BLE001
        return f"vivim.export.tensorrt_build not importable ({type(exc).__name__}: {one_line(str(exc))})"
    if tensorrt_build.import_tensorrt() is None:
        return "TensorRT not installed"
    return None


def tensorrt_rows(artifacts: Artifacts, settings: BenchSettings) -> list[Row]:
    """TensorRT FP16 engine (built here from the FP16 ONNX with our plugin, or --engine) run through the runtime's
    TensorRTBackend: 'clip' = one engine call on a clip already on the GPU (T device copies, engine, logits to
    host); 'stream' = per new frame as vivim-run does it (resize + normalise + upload, then the clip call)."""
    rows = [Row(backend="TensorRT", precision="fp16", mode=mode, scan="vivim-plugin", frames=settings.frames,
                size=settings.size, batch=1, output_frame=settings.output_frame if mode == "stream" else None)
            for mode in ("clip", "stream")]
    reason = tensorrt_unavailable_reason()
    if reason is None and not cuda_ready(settings.device):
        reason = f"CUDA only (device is {settings.device})"
    if reason is None:
        try:
            from vivim.runtime.backend_trt import TensorRTBackend
        except Exception as exc:  # noqa: BLE001
            reason = f"vivim.runtime.backend_trt not importable ({type(exc).__name__}: {one_line(str(exc))})"
    plugin = settings.trt_plugin or DEFAULT_PLUGIN_DIR / PLUGIN_LIBRARY_NAME
    if reason is None and settings.engine is None and not plugin.is_file():
        reason = (f"TensorRT plugin library {plugin} not found (vivim-export plugin -o {plugin.parent}, "
                  "or pass --plugin / --engine)")
    if reason is not None:
        for row in rows:
            row.status = skipped(reason)
        return rows
    if settings.batch != 1:
        for row in rows:
            row.status = skipped("the TensorRT engine is built for batch 1")
        return rows

    state: dict[str, Any] = {}

    def engine_path() -> Path:
        if settings.engine is not None:
            return settings.engine
        if "engine" not in state:
            from vivim.export.tensorrt_build import build_engine

            onnx_path = artifacts.onnx("fp16")
            state["engine"] = build_engine(onnx_path, onnx_path.with_suffix(".engine"), plugin, precision="fp16",
                                           rerun="vivim-bench --backends tensorrt")
        return Path(state["engine"])

    def body(row: Row, per_frame: bool) -> None:
        from vivim.constants import output_frame_index

        backend = TensorRTBackend(str(engine_path()), device=settings.device,
                                  plugin=str(settings.trt_plugin) if settings.trt_plugin else None, log=quiet)
        try:
            # what the engine was built for (a prebuilt --engine need not match --frames / --size)
            row.frames, row.size = backend.frames, canonical_size(backend.input_size)
            frame = capture_frame(settings)
            backend.prepare(frame.shape)
            index = output_frame_index(settings.output_frame, backend.frames)
            clip = [backend.preprocess(frame) for _ in range(backend.frames)]

            if per_frame:
                def step() -> Any:
                    clip.append(backend.preprocess(frame))
                    del clip[0]
                    return backend.infer(clip, index)
            else:
                def step() -> Any:
                    return backend.infer(clip, index)

            apply_measurement(row, measure_on_host(settings, step), None)  # infer() synchronises its stream
            row.timer = "perf_counter (stream synced)"
            row.notes.append(f"engine {engine_path().name}, TensorRT {backend.trt_version}")
        finally:
            backend.close()

    return [guarded(rows[0], settings.device, functools.partial(body, per_frame=False)),
            guarded(rows[1], settings.device, functools.partial(body, per_frame=True))]
