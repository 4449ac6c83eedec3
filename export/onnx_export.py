"""Checkpoint -> ONNX with one `vivim::VivimSelectiveScan` node per selective scan (dynamo exporter).

The torch op `vivim::selective_scan` is opaque to torch.export (it has a fake implementation), and the
translation below turns each call into a single node of the v1 contract:

    VivimSelectiveScan(u, delta, A, B, C, D, z, delta_bias) -> y      domain "vivim", opset_import ("vivim", 1)
    attributes: delta_softplus (INT), plugin_version = "1", plugin_namespace = "vivim" (STRINGs)

which the TensorRT ONNX parser maps to our plugin (op_type = plugin name, version/namespace from the attributes)
and `ort_ops` runs in ONNX Runtime. A, D and delta_bias stay fp32 in an FP16 graph (the model keeps them fp32).
"""

from __future__ import annotations

import contextlib
import json
import logging
import numbers
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
import onnxscript
import torch
from onnxscript import FLOAT
from vivim import atomic, paths
from vivim.export.ort_ops import INPUT_NAMES, OP_DOMAIN, OP_TYPE

import vivim
from vivim.cli_utils import warn
from vivim.constants import (MAX_SCAN_STATES, image_size_problem, parse_output_frame, size_label,
                             untrained_output_frame)
from vivim.errors import VivimError
from vivim.export.plugin import PLUGIN_NAMESPACE, PLUGIN_VERSION
from vivim.progress import Heartbeat

INPUT_NAME = "frames"
OUTPUT_NAME = "logits"
MIN_OPSET = 18

if TYPE_CHECKING:
    from vivim.model import VivimModel

_vivim_opset = onnxscript.values.Opset(OP_DOMAIN, 1)


# Parameters mirror the torch op's schema positionally; the annotations are needed by onnxscript (FLOAT also
# accepts FLOAT16 inputs: the node's types come from the graph). `delta_softplus` keeps the op's default (False):
# an argument equal to its default is dropped from the FX node, so the default here is what the node gets.
@onnxscript.script()
def selective_scan_translation(
    u: FLOAT,
    delta: FLOAT,
    A: FLOAT,
    B: FLOAT,
    C: FLOAT,
    D: FLOAT,
    z: FLOAT,
    delta_bias: FLOAT,
    delta_softplus: bool = False,
) -> FLOAT:
    return _vivim_opset.VivimSelectiveScan(
        u, delta, A, B, C, D, z, delta_bias,
        delta_softplus=delta_softplus, plugin_version="1", plugin_namespace="vivim",
    )


def translation_table(op: Any = None) -> dict:
    """`custom_translation_table` for torch.onnx.export; `op` defaults to torch.ops.vivim.selective_scan.default."""
    if op is None:
        import vivim.ops  # noqa: F401  (registers torch.ops.vivim.selective_scan)

        op = torch.ops.vivim.selective_scan.default
    return {op: selective_scan_translation}


@dataclass
class ExportResult:
    path: Path
    inputs: list = field(default_factory=list)  # (name, shape, dtype)
    outputs: list = field(default_factory=list)
    nodes: int = 0
    scan_nodes: int = 0
    size_bytes: int = 0
    seconds: float = 0.0
    metadata: dict = field(default_factory=dict)


class _ClipModel(torch.nn.Module):
    """The exported graph: frames (1, T, 3, H, W) -> logits for all frames or the chosen one."""

    def __init__(self, model: torch.nn.Module, output_frame: str):
        super().__init__()
        self.model = model
        self.output_frame = output_frame

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if self.output_frame == "all":
            return self.model(frames)
        return self.model(frames, output_frame=self.output_frame)


def load_model(checkpoint: str | os.PathLike[str]) -> tuple[VivimModel, dict, Path]:
    """(model in eval mode on CPU, checkpoint metadata, checkpoint file); 'demo' = the packaged demo weights."""
    from vivim.checkpoint import load_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    model, metadata = load_checkpoint(path)
    return model.eval(), dict(metadata), path


def save_model_atomic(model: onnx.ModelProto, path: Path) -> None:
    """Write next to the target and rename, so a crash never leaves a half-written model."""
    atomic.write_bytes(path, model.SerializeToString())


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter logs progress lines and library warnings; keep the CLI output to our own summary."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(open(os.devnull, "w")) as devnull:
                try:
                    yield
                finally:
                    devnull.close()
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _light_optimize(model) -> None:
    """Constant folding (e.g. A = -exp(A_log) becomes an fp32 initializer) and dead-node cleanup, in place."""
    import onnx_ir
    import onnx_ir.passes.common as passes
    from onnxscript.optimizer import fold_constants_ir

    fold_constants_ir(model)
    onnx_ir.passes.Sequential(
        passes.RemoveUnusedNodesPass(),
        passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        passes.DeduplicateInitializersPass(),
        passes.CommonSubexpressionEliminationPass(),
        passes.RemoveUnusedNodesPass(),
    )(model)


def _tensor_info(value_info: onnx.ValueInfoProto) -> tuple[str, list, str]:
    tt = value_info.type.tensor_type
    shape = [d.dim_param or d.dim_value for d in tt.shape.dim]
    return value_info.name, shape, onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name


def scan_nodes(model: onnx.ModelProto) -> list:
    return [n for n in model.graph.node if n.op_type == OP_TYPE and n.domain == OP_DOMAIN]


def validate_scan_nodes(model: onnx.ModelProto) -> int:
    """Check the v1 node contract on every scan node (count, inputs, attributes, opset); returns the count."""
    nodes = scan_nodes(model)
    if not nodes:
        raise VivimError(f"export produced no {OP_DOMAIN}::{OP_TYPE} node (is the model using vivim.ops?)")
    if not any(o.domain == OP_DOMAIN and o.version == 1 for o in model.opset_import):
        raise VivimError(f"exported model lacks opset_import ('{OP_DOMAIN}', 1)")
    for node in nodes:
        if len(node.input) != len(INPUT_NAMES) or any(not name for name in node.input):
            raise VivimError(
                f"{OP_TYPE} node '{node.name}' has inputs {list(node.input)}; the contract needs all of "
                f"{', '.join(INPUT_NAMES)} (pass D, z and delta_bias to the op)"
            )
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("plugin_version") != PLUGIN_VERSION.encode() or attrs.get("plugin_namespace") != PLUGIN_NAMESPACE.encode():
            raise VivimError(f"{OP_TYPE} node '{node.name}' has wrong plugin attributes {attrs}")
    return len(nodes)


def build_metadata(
    metadata: dict, *, frames: int, size: Sequence[int], output_frame: str, fp16: bool, checkpoint_path: Path,
    scan_states: int,
) -> dict[str, str]:
    """metadata_props (all strings; JSON for structured values) read back by `check`, `trt` and `vivim-run`."""
    from vivim.checkpoint import file_sha256
    from vivim.constants import IMAGENET_MEAN, IMAGENET_STD, resize_from_metadata

    normalization = metadata.get("normalization") or {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return {
        "variant": str(metadata.get("variant", "")),
        "frames": str(frames),
        "img_size": json.dumps([int(size[0]), int(size[1])]),
        "normalization": json.dumps(normalization),
        "resize": resize_from_metadata(metadata.get("resize")),
        "output_frame": output_frame,
        # the frame it was trained to segment: vivim-run's default --output-frame for an all-frames graph too
        "trained_output_frame": str(metadata.get("output_frame", "centre")),
        "precision": "fp16" if fp16 else "fp32",
        "input_layout": "NTCHW, RGB, float, (x/255 - mean) / std",
        "output": "logits (sigmoid > 0.5 = lesion, i.e. logit > 0)",
        "package_version": vivim.__version__,
        "checkpoint_sha256": file_sha256(checkpoint_path),
        "checkpoint_name": checkpoint_path.name,
        "scan_contract": f"{OP_DOMAIN}::{OP_TYPE} v{PLUGIN_VERSION}",
        "scan_states": str(scan_states),  # N of every scan: vivim-export trt refuses more than the plugin holds
    }


def check_opset(opset: int) -> None:
    """--opset, before the model loads. torch's exporter builds opset-18 graphs and only converts upwards reliably (a
    down-conversion to 17 leaves opset-18 attributes behind, e.g. Split's num_outputs); above what the installed onnx
    package knows, its checker fails after the whole export."""
    newest = newest_convertible_opset()
    if not MIN_OPSET <= opset <= newest:
        raise VivimError(f"--opset {opset}: choose {MIN_OPSET}..{newest} (the exporter builds opset {MIN_OPSET} and "
                         f"converts upwards, up to {newest} with the installed onnx {onnx.__version__} and onnxscript)")


def newest_convertible_opset() -> int:
    """The newest opset the export can reach: the installed onnx's, capped by onnxscript's version converter (its
    bound is not public API: without it, onnx's)."""
    newest = onnx.defs.onnx_opset_version()
    try:
        from onnxscript.version_converter import _version_converter

        return min(newest, int(_version_converter.SUPPORTED_MAX_ONNX_OPSET))
    except (ImportError, AttributeError, TypeError, ValueError):
        return newest


def export_onnx(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    fp16: bool = False,
    frames: int | None = None,
    size: Sequence[int] | int | None = None,
    output_frame: str = "all",
    opset: int | None = None,
    optimize: bool = True,
    log=print,
) -> ExportResult:
    """Export a checkpoint ('demo' or a .safetensors path) to a static-shape ONNX file (batch 1).

    optimize=True runs the exporter's full ONNX optimizer; False only folds constants and removes dead nodes
    (about half the export time, ~2 % more nodes, same scan nodes; TensorRT and ORT fuse the rest themselves).
    """
    start = time.perf_counter()
    output = Path(output)
    output_frame = str(parse_output_frame(output_frame, extra=("all",)))
    paths.check_writable(output, "-o")
    if opset is not None:
        check_opset(opset)
    model, metadata, ckpt_path = load_model(checkpoint)

    trained_size = model.input_hw
    frames = model.frames if frames is None else int(frames)  # 0 is an error, not "the default"
    if size is None:
        size = trained_size
    elif isinstance(size, (int, numbers.Integral)):  # one side (also a NumPy integer): square, as create_model takes it
        size = (int(size), int(size))
    else:
        size = (int(size[0]), int(size[1]))
    if frames < 1:
        raise VivimError(f"--frames must be at least 1, got {frames}")
    problem = image_size_problem(size)
    if problem:
        raise VivimError(f"--size {size_label(size)}: {problem}")
    if model.config.d_state > MAX_SCAN_STATES:  # ONNX Runtime runs it; vivim-export trt refuses it (metadata)
        warn(f"{ckpt_path.name}: its model has d_state {model.config.d_state}; the graph runs in ONNX Runtime, but the "
             f"TensorRT plugin and the CUDA kernel hold at most {MAX_SCAN_STATES} states per channel")
    # the network accepts other T and sizes (no positional embeddings), but accuracy is only known for the trained ones
    if frames != model.frames:
        warn(f"the checkpoint was trained on clips of {model.frames} frames; exporting --frames {frames}")
    if size != trained_size:
        swapped = " (--size is HxW: height first)" if size == trained_size[::-1] else ""
        warn(f"the checkpoint was trained at {size_label(trained_size)}; exporting --size {size_label(size)}{swapped}")
    mismatch = untrained_output_frame(None if output_frame == "all" else output_frame,
                                      metadata.get("output_frame", "centre"), frames, ckpt_path.name)
    if mismatch:
        warn(mismatch)

    dtype = torch.float16 if fp16 else torch.float32
    if fp16:
        # keeps A_log, D and dt bias fp32 (A = -exp(A_log) in fp32) so the scan node gets fp32 A/D/delta_bias
        model.to_inference_dtype(torch.float16)
    clip = _ClipModel(model, output_frame).eval()
    example = torch.randn(1, frames, 3, size[0], size[1], generator=torch.Generator().manual_seed(0)).to(dtype)

    log(f"PyTorch: {metadata.get('variant', '?')} from {ckpt_path.name}, input (1, {frames}, 3, {size[0]}, {size[1]}) "
        f"{'fp16' if fp16 else 'fp32'}, output frame {output_frame}")
    log(f"ONNX: exporting with torch.onnx.export(dynamo=True) {torch.__version__} ...")
    kwargs: dict[str, Any] = {}
    if opset is not None:
        kwargs["opset_version"] = int(opset)
    try:
        with _quiet_exporter(), torch.no_grad(), Heartbeat("ONNX: exporting"):
            program = torch.onnx.export(
                clip, (example,), dynamo=True, custom_translation_table=translation_table(),
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False, optimize=optimize, **kwargs,
            )
            if not optimize and program is not None:
                _light_optimize(program.model)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VivimError(f"ONNX export of {ckpt_path.name} failed: {first[:300]}") from exc
    assert program is not None  # dynamo=True always returns a program
    proto = program.model_proto

    n_scans = validate_scan_nodes(proto)
    meta = build_metadata(metadata, frames=frames, size=size, output_frame=output_frame, fp16=fp16,
                          checkpoint_path=ckpt_path, scan_states=model.config.d_state)
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "vivim-export"
    proto.producer_version = vivim.__version__
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise VivimError(f"exported ONNX failed onnx.checker: {str(exc).splitlines()[0]}") from exc
    save_model_atomic(proto, output)

    return ExportResult(
        path=output,
        inputs=[_tensor_info(v) for v in proto.graph.input],
        outputs=[_tensor_info(v) for v in proto.graph.output],
        nodes=len(proto.graph.node),
        scan_nodes=n_scans,
        size_bytes=output.stat().st_size,
        seconds=time.perf_counter() - start,
        metadata=meta,
    )
