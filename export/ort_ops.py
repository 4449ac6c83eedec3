"""ONNX Runtime support for the `vivim::VivimSelectiveScan` node, without torch.

The scan is implemented a second time, independently of the PyTorch op, in vectorised NumPy: the sequence is cut
into chunks, and inside a chunk the linear recurrence h_t = a_t * h_{t-1} + b_t is solved by a log-depth
(Hillis-Steele) scan over the pairs (a, b); the state is carried from chunk to chunk. All math is fp32, as in the
CUDA kernel and the TensorRT plugin; fp16 inputs are widened and the output is rounded back to the input type.

It runs inside ORT as an onnxruntime-extensions Python op. Version 0.15.2 always registers Python ops in its own
domain (`ai.onnx.contrib`; the `domain=` keyword is ignored) and its Python-op bridge has no float16, so
`create_session` runs a rewritten in-memory copy of the model: each scan node moves to that domain, and an FP16
node is wrapped in Casts to and from fp32 (which is what the plugin does in registers). The file on disk is untouched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from vivim import paths
from vivim.errors import VivimError
from vivim.export.plugin import PLUGIN_NAME

OP_TYPE = PLUGIN_NAME  # TensorRT's ONNX parser finds the plugin creator by the node's op type
OP_DOMAIN = "vivim"
INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
# ORT's Python-op domain in onnxruntime-extensions (fixed there; see module docstring).
_PYOP_DOMAIN = "ai.onnx.contrib"
# Elements of one (batch, dim, dstate, chunk) fp32 work array: bounds memory at a few tens of MB.
_CHUNK_ELEMENTS = 1 << 22


def _softplus(x: np.ndarray) -> np.ndarray:
    # log(1 + e^x) without overflow for large x.
    return np.logaddexp(np.float32(0.0), x)


def _scan_chunk(a: np.ndarray, b: np.ndarray, h0: np.ndarray) -> np.ndarray:
    """States of h_t = a_t * h_{t-1} + b_t along the last axis, starting from h0. a and b are overwritten."""
    length = a.shape[-1]
    shift = 1
    while shift < length:
        # Compose each step with the one `shift` earlier: (a1, b1) then (a2, b2) = (a1 * a2, a2 * b1 + b2).
        b[..., shift:] += a[..., shift:] * b[..., :-shift]
        a[..., shift:] *= a[..., :-shift]
        shift *= 2
    b += a * h0[..., None]
    return b


def selective_scan_numpy(
    u: np.ndarray,
    delta: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    D: np.ndarray | None = None,
    z: np.ndarray | None = None,
    delta_bias: np.ndarray | None = None,
    delta_softplus: bool = False,
    chunk_elements: int = _CHUNK_ELEMENTS,
) -> np.ndarray:
    """Forward selective scan (mamba-ssm `selective_scan_fn` semantics) in fp32 NumPy; returns an array of u's dtype.

    u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, N, L) or (batch, G, N, L); D, delta_bias: (dim,).
    """
    if u.ndim != 3:
        raise ValueError(f"u must be (batch, dim, L), got shape {u.shape}")
    batch, dim, length = u.shape
    if B.ndim == 3:
        B, C = B[:, None], C[:, None]
    groups, dstate = B.shape[1], B.shape[2]
    if dim % groups or A.shape != (dim, dstate) or B.shape != (batch, groups, dstate, length) or C.shape != B.shape:
        raise ValueError(f"inconsistent scan shapes: u {u.shape}, A {A.shape}, B {B.shape}, C {C.shape}")
    per_group = dim // groups
    f32 = np.float32

    # Grouped views (batch, G, dim/G, ...) so each channel meets its group's B and C by broadcasting.
    dt = delta.astype(f32, copy=True)
    if delta_bias is not None:
        dt += delta_bias.astype(f32)[None, :, None]
    if delta_softplus:
        dt = _softplus(dt)
    dt = dt.reshape(batch, groups, per_group, 1, length)
    uu = u.astype(f32).reshape(batch, groups, per_group, 1, length)
    AA = A.astype(f32).reshape(1, groups, per_group, dstate, 1)
    BB = B.astype(f32)[:, :, None]
    CC = C.astype(f32)[:, :, None]

    y = np.empty((batch, groups, per_group, length), dtype=f32)
    h = np.zeros((batch, groups, per_group, dstate), dtype=f32)
    chunk = max(1, min(length, chunk_elements // max(1, batch * dim * dstate)))
    for start in range(0, length, chunk):
        sl = slice(start, min(start + chunk, length))
        dt_c = dt[..., sl]
        a = np.exp(dt_c * AA)
        b = (dt_c * uu[..., sl]) * BB[..., sl]
        states = _scan_chunk(a, b, h)
        h = states[..., -1].copy()
        y[..., sl] = np.einsum("bgdnl,bgdnl->bgdl", states, np.broadcast_to(CC[..., sl], states.shape))

    y = y.reshape(batch, dim, length)
    if D is not None:
        y += D.astype(f32)[None, :, None] * u.astype(f32)
    if z is not None:
        zf = z.astype(f32)
        y *= zf / (1.0 + np.exp(-zf))  # silu
    return y.astype(u.dtype, copy=False)


_registered = False


def register_ort_op() -> None:
    """Register the NumPy scan as an onnxruntime-extensions Python op (once per process)."""
    global _registered
    if _registered:
        return
    try:
        from onnxruntime_extensions import PyCustomOpDef, onnx_op
    except ImportError as exc:
        raise VivimError(
            "onnxruntime-extensions is needed to run VivimSelectiveScan in ONNX Runtime: "
            "pip install 'vivim-edge[export]'"
        ) from exc

    f32, i64, string = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int64, PyCustomOpDef.dt_string

    @onnx_op(
        op_type=OP_TYPE,
        inputs=[f32] * len(INPUT_NAMES),
        outputs=[f32],
        attrs={"delta_softplus": i64, "plugin_version": string, "plugin_namespace": string},
    )
    def _vivim_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=0, **_plugin_attrs):
        return selective_scan_numpy(u, delta, A, B, C, D, z, delta_bias, delta_softplus=bool(delta_softplus))

    _registered = True


def _elem_types(model) -> dict:
    """Element type of every typed tensor name in the graph (inputs, outputs, value_info, initializers)."""
    types = {}
    graph = model.graph
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    return types


def prepare_for_ort(model):
    """Copy of an ONNX ModelProto whose scan nodes run on the registered Python op (see module docstring)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    def is_scan(node) -> bool:
        return node.op_type == OP_TYPE and node.domain == OP_DOMAIN

    scan_nodes = [n for n in model.graph.node if is_scan(n)]
    if any(n.op_type == OP_TYPE and n.domain != OP_DOMAIN for n in model.graph.node):
        raise VivimError(f"{OP_TYPE} nodes must be in domain '{OP_DOMAIN}'")
    if not scan_nodes:
        return model
    types = _elem_types(model)
    if any(types.get(n.input[0]) is None for n in scan_nodes):
        model = onnx.shape_inference.infer_shapes(model)
        types = _elem_types(model)

    new_nodes = []
    for index, node in enumerate(model.graph.node):
        if not is_scan(node):
            new_nodes.append(node)
            continue
        if len(node.input) != len(INPUT_NAMES) or any(not name for name in node.input):
            raise VivimError(f"{OP_TYPE} node '{node.name}' must have the 8 inputs {', '.join(INPUT_NAMES)}")
        io_type = types.get(node.input[0], TensorProto.FLOAT)
        if io_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            raise VivimError(f"{OP_TYPE} node '{node.name}': ONNX Runtime check supports fp32/fp16 inputs only")
        inputs, casts = [], {}
        for name in node.input:
            if types.get(name, TensorProto.FLOAT) == TensorProto.FLOAT:
                inputs.append(name)
                continue
            if name not in casts:  # one Cast per distinct tensor (a tensor may feed several inputs)
                casts[name] = f"{name}__to_fp32__{index}"
                new_nodes.append(helper.make_node("Cast", [name], [casts[name]], to=TensorProto.FLOAT))
            inputs.append(casts[name])
        output = node.output[0]
        scan_out = output if io_type == TensorProto.FLOAT else f"{output}__fp32__{index}"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs.setdefault("delta_softplus", 0)
        new_nodes.append(helper.make_node(OP_TYPE, inputs, [scan_out], name=node.name, domain=_PYOP_DOMAIN, **attrs))
        if scan_out != output:
            new_nodes.append(helper.make_node("Cast", [scan_out], [output], to=io_type))

    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    if not any(o.domain == _PYOP_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_PYOP_DOMAIN, 1))
    return model


def create_session(onnx_path: str | os.PathLike[str], providers: Sequence[str] | None = None, *,
                   threads: int | None = None, require_metadata: str | None = None):
    """An `onnxruntime.InferenceSession` for a Vivim ONNX file, with VivimSelectiveScan registered; `threads`: the
    CPU provider's intra-op threads (None: ONNX Runtime's choice). A file ONNX Runtime refuses (no graph, an
    unknown op, a broken graph) is a one-line VivimError naming it. `require_metadata`: refuse, naming that source,
    a graph without the metadata vivim-export onnx writes, before paying for a session build."""
    import onnxruntime as ort

    from vivim.export.onnx_files import load_onnx, missing_vivim_metadata

    path = paths.require_file(onnx_path, "")
    model = load_onnx(path, what=require_metadata)
    if require_metadata is not None:
        missing_vivim_metadata({prop.key: prop.value for prop in model.metadata_props}, require_metadata)
    register_ort_op()  # first: its one-line error names the extra when onnxruntime-extensions is missing
    from onnxruntime_extensions import get_library_path

    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = int(threads)
    # one provider may be named alone: a string is not a list of one-letter providers
    provider_list = [providers] if isinstance(providers, str) else list(providers or ["CPUExecutionProvider"])
    try:
        return ort.InferenceSession(
            prepare_for_ort(model).SerializeToString(), options, providers=provider_list
        )
    except Exception as exc:  # onnxruntime's own error types (InvalidGraph, InvalidArgument, Fail, ...)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VivimError(f"{require_metadata or path}: ONNX Runtime cannot load this model ({reason})") from exc
