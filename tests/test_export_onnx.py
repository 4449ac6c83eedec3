"""ONNX export: the VivimSelectiveScan node contract, the NumPy/ORT implementation of the node, and ORT parity.

The NumPy scan in vivim.export.ort_ops is checked against the float64 token-by-token oracle of vivim.ops on fresh
random inputs; exported models are checked node by node and run in ONNX Runtime against the PyTorch model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from scan_oracle import scan_oracle
from vivim.export import ort_ops


RNG_SEED = int.from_bytes(os.urandom(4), "little")  # fresh inputs every run; printed on failure via ids


def random_scan_inputs(rng, batch, dim, dstate, length, groups, grouped=True, dtype=np.float32, softplus=True):
    """mamba-ssm-like value ranges: A = -exp(.), delta around softplus's knee (or small and positive when no
    softplus follows, so the recurrence decays), B/C/u/z standard normal."""
    bc_shape = (batch, groups, dstate, length) if grouped else (batch, dstate, length)
    delta = rng.standard_normal((batch, dim, length)) * 0.5 - 1.0 if softplus else rng.uniform(0.0, 0.3, (batch, dim, length))
    return dict(
        u=rng.standard_normal((batch, dim, length)).astype(dtype),
        delta=delta.astype(dtype),
        A=(-np.exp(rng.uniform(0.0, np.log(16.0), (dim, dstate)))).astype(np.float32),
        B=rng.standard_normal(bc_shape).astype(dtype),
        C=rng.standard_normal(bc_shape).astype(dtype),
        D=rng.standard_normal(dim).astype(np.float32),
        z=rng.standard_normal((batch, dim, length)).astype(dtype),
        delta_bias=(rng.standard_normal(dim) * 0.5 if softplus else rng.uniform(0.0, 0.2, dim)).astype(np.float32),
    )


def oracle(inputs: dict, delta_softplus: bool, drop: tuple = ()) -> np.ndarray:
    """float64 sequential scan from vivim.ops on the same (already rounded) values."""
    args = {k: (None if k in drop else torch.from_numpy(np.asarray(v, dtype=np.float64))) for k, v in inputs.items()}
    return scan_oracle(**args, delta_softplus=delta_softplus).numpy()


# ----------------------------------------------------------------------------------------- NumPy scan


@pytest.mark.parametrize(
    "batch,dim,dstate,length,groups,grouped,softplus,drop,chunk_elements",
    [
        (2, 12, 4, 37, 3, True, True, (), 1 << 22),  # G = 3 as in the ST-Mamba layer, odd L, one chunk
        (2, 12, 4, 37, 3, True, True, (), 200),  # same, cut into many chunks (state carried across)
        (1, 6, 5, 1, 1, True, True, (), 1 << 22),  # L = 1
        (1, 9, 3, 129, 3, True, False, (), 64),  # no softplus, odd L across chunk borders
        (3, 8, 16, 50, 1, False, True, (), 1000),  # B/C without the group axis
        (1, 6, 4, 33, 2, True, True, ("D", "z", "delta_bias"), 300),  # optional inputs absent
    ],
)
def test_numpy_scan_matches_sequential_oracle(batch, dim, dstate, length, groups, grouped, softplus, drop, chunk_elements):
    rng = np.random.default_rng(RNG_SEED)
    x = random_scan_inputs(rng, batch, dim, dstate, length, groups, grouped, softplus=softplus)
    expected = oracle(x, softplus, drop)
    args = {k: (None if k in drop else v) for k, v in x.items()}
    got = ort_ops.selective_scan_numpy(**args, delta_softplus=softplus, chunk_elements=chunk_elements)
    assert got.dtype == np.float32 and got.shape == (batch, dim, length)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(expected).max()))


def test_numpy_scan_fp16_io_fp32_math():
    rng = np.random.default_rng(RNG_SEED)
    x = random_scan_inputs(rng, 1, 12, 8, 301, 3, dtype=np.float16)
    got = ort_ops.selective_scan_numpy(**x, delta_softplus=True, chunk_elements=2000)
    assert got.dtype == np.float16
    expected = oracle(x, True)  # same fp16-rounded inputs, float64 math
    # only the final rounding to fp16 differs: relative error <= 2^-11 plus tiny fp32 accumulation error
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=2e-3, atol=2e-3)


def test_numpy_scan_long_sequence_is_vectorised():
    """L = 20480 (the first stage of a 256x256 clip) finishes quickly: no Python loop per token."""
    import time

    rng = np.random.default_rng(RNG_SEED)
    x = random_scan_inputs(rng, 1, 6, 4, 20480, 3)
    start = time.perf_counter()
    got = ort_ops.selective_scan_numpy(**x, delta_softplus=True)
    assert time.perf_counter() - start < 5.0
    # spot-check the tail against the oracle on the last channel group only (the oracle is slow)
    sub = {k: v for k, v in x.items()}
    sub.update(u=x["u"][:, 4:], delta=x["delta"][:, 4:], z=x["z"][:, 4:], A=x["A"][4:], D=x["D"][4:],
               delta_bias=x["delta_bias"][4:], B=x["B"][:, 2:], C=x["C"][:, 2:])
    expected = oracle(sub, True)
    np.testing.assert_allclose(got[:, 4:], expected, rtol=1e-3, atol=1e-3 * max(1.0, np.abs(expected).max()))


# ----------------------------------------------------------------------------------------- ORT custom op


def single_scan_model(dtype: int, batch, dim, dstate, length, groups, softplus: int | None) -> onnx.ModelProto:
    """A one-node graph exactly as the exporter writes it (domain vivim, 8 inputs, plugin attributes);
    softplus None leaves the delta_softplus attribute out (the node contract's default is 0)."""
    f32 = TensorProto.FLOAT
    specs = [("u", dtype, [batch, dim, length]), ("delta", dtype, [batch, dim, length]), ("A", f32, [dim, dstate]),
             ("B", dtype, [batch, groups, dstate, length]), ("C", dtype, [batch, groups, dstate, length]),
             ("D", f32, [dim]), ("z", dtype, [batch, dim, length]), ("delta_bias", f32, [dim])]
    attributes = {} if softplus is None else {"delta_softplus": softplus}
    node = helper.make_node(
        "VivimSelectiveScan", [s[0] for s in specs], ["y"], name="scan0", domain="vivim",
        plugin_version="1", plugin_namespace="vivim", **attributes,
    )
    graph = helper.make_graph(
        [node], "one_scan", [helper.make_tensor_value_info(*s) for s in specs],
        [helper.make_tensor_value_info("y", dtype, [batch, dim, length])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("vivim", 1)])
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("np_dtype,onnx_dtype", [(np.float32, TensorProto.FLOAT), (np.float16, TensorProto.FLOAT16)])
@pytest.mark.parametrize("softplus", [0, 1, None])  # None: no attribute, which means 0 (as in the TensorRT plugin)
def test_ort_session_runs_vivim_node(tmp_path, np_dtype, onnx_dtype, softplus):
    rng = np.random.default_rng(RNG_SEED)
    shape = (2, 9, 4, 45, 3)
    x = random_scan_inputs(rng, *shape, dtype=np_dtype, softplus=bool(softplus))
    path = tmp_path / "scan.onnx"
    onnx.save(single_scan_model(onnx_dtype, *shape, softplus), path)
    # one provider may be given by name alone (a string is not read as a list of one-letter providers)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ONNX Runtime warns of each unknown provider name ("C", "P", "U", ...)
        session = ort_ops.create_session(path, "CPUExecutionProvider" if softplus == 1 else None)
    assert session.get_providers() == ["CPUExecutionProvider"]
    (y,) = session.run(None, x)
    assert y.dtype == np_dtype and y.shape == x["u"].shape
    tol = 2e-3 if np_dtype == np.float16 else 1e-4
    expected = oracle(x, bool(softplus))
    np.testing.assert_allclose(y.astype(np.float64), expected, rtol=tol, atol=tol * max(1.0, np.abs(expected).max()))
    # the file on disk keeps the TensorRT contract (the rewrite happens on an in-memory copy)
    assert onnx.load(path).graph.node[0].domain == "vivim"


def test_ort_ops_work_without_torch(tmp_path):
    """The ONNX path must run on machines without torch: block the import and run a session."""
    path = tmp_path / "scan.onnx"
    onnx.save(single_scan_model(TensorProto.FLOAT16, 1, 6, 4, 20, 3, 1), path)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from vivim.export.ort_ops import create_session\n"
        f"s = create_session({str(path)!r})\n"
        "feeds = {i.name: np.ones([d for d in i.shape], np.float16 if 'float16' in i.type else np.float32) * -0.5"
        " for i in s.get_inputs()}\n"
        "y, = s.run(None, feeds); assert np.isfinite(y).all(); print('ok', y.dtype)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "ok float16" in proc.stdout


def test_ort_rejects_node_missing_inputs(tmp_path):
    from vivim.errors import VivimError

    model = single_scan_model(TensorProto.FLOAT, 1, 3, 2, 4, 1, 0)
    del model.graph.node[0].input[7]
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    with pytest.raises(VivimError, match="8 inputs"):
        ort_ops.create_session(path)


def test_ort_missing_or_foreign_file(tmp_path):
    from vivim.errors import VivimError

    with pytest.raises(VivimError, match="nope.onnx: no such file"):
        ort_ops.create_session(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 not a protobuf \xff" * 10)
    with pytest.raises(VivimError, match="junk.onnx"):
        ort_ops.create_session(junk)


# ----------------------------------------------------------------------------------------- translation (toy op)

# A stand-in op with the exact schema of vivim::selective_scan, in another namespace so it never clashes with
# the real op; its eager implementation is the vivim reference scan.
@torch.library.custom_op("vivim_export_test::selective_scan", mutates_args=())
def _standin_scan(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = None, z: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    from vivim.ops import selective_scan_reference

    return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus).contiguous()


@_standin_scan.register_fake
def _(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    return torch.empty_like(u)


class _ToyMamba(torch.nn.Module):
    """Two grouped scans (G = 3) around linear layers, fp32 A_log/D/dt-bias like the real model."""

    def __init__(self, dim=12, dstate=4, groups=3):
        super().__init__()
        self.groups, self.dstate = groups, dstate
        self.inp = torch.nn.Linear(dim, 2 * dim)
        self.bc = torch.nn.Linear(dim, 2 * groups * dstate)
        self.A_log = torch.nn.Parameter(torch.log(torch.rand(dim, dstate) * 15 + 1))
        self.D = torch.nn.Parameter(torch.randn(dim))
        self.dt_bias = torch.nn.Parameter(torch.rand(dim) * 0.3)  # >= 0: the scan without softplus still decays

    def half_keep_fp32(self):
        self.inp.half(), self.bc.half()
        return self

    def forward(self, x):  # x (B, L, dim)
        b, length, _ = x.shape
        u, z = self.inp(x).transpose(1, 2).chunk(2, dim=1)
        bc = self.bc(x).transpose(1, 2).reshape(b, 2, self.groups, self.dstate, length)
        A = -torch.exp(self.A_log.float())
        y = torch.ops.vivim_export_test.selective_scan(
            u.contiguous(), u.contiguous(), A, bc[:, 0].contiguous(), bc[:, 1].contiguous(), self.D.float(),
            z.contiguous(), self.dt_bias.float(), True)
        positive_delta = torch.nn.functional.softplus(u.float() - 1.0).to(u.dtype).contiguous()
        y = torch.ops.vivim_export_test.selective_scan(
            y, positive_delta, A, bc[:, 1].contiguous(), bc[:, 0].contiguous(), self.D.float(), z.contiguous(),
            self.dt_bias.float(), False)
        return y.transpose(1, 2)


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_translation_emits_contract_nodes_and_runs_in_ort(tmp_path, fp16):
    from vivim.export.onnx_export import (
        save_model_atomic,
        translation_table,
        validate_scan_nodes,
    )

    torch.manual_seed(RNG_SEED)
    toy = _ToyMamba().eval()
    x = torch.randn(1, 25, 12)
    with torch.no_grad():
        expected = toy(x).double()  # fp32 eager reference
    if fp16:
        toy.half_keep_fp32()
        x = x.half()
    program = torch.onnx.export(
        toy, (x,), dynamo=True, verbose=False,
        custom_translation_table=translation_table(torch.ops.vivim_export_test.selective_scan.default),
    )
    model = program.model_proto
    assert validate_scan_nodes(model) == 2
    assert ("vivim", 1) in [(o.domain, o.version) for o in model.opset_import]
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    io_type = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    scans = [n for n in model.graph.node if n.op_type == "VivimSelectiveScan"]
    for node, softplus in zip(scans, (1, 0)):
        attrs = {a.name: a for a in node.attribute}
        assert attrs["delta_softplus"].type == onnx.AttributeProto.INT and attrs["delta_softplus"].i == softplus
        assert attrs["plugin_version"].type == onnx.AttributeProto.STRING and attrs["plugin_version"].s == b"1"
        assert attrs["plugin_namespace"].s == b"vivim"
        in_types = [types[name] for name in node.input]
        assert in_types == [io_type, io_type, TensorProto.FLOAT, io_type, io_type, TensorProto.FLOAT, io_type,
                            TensorProto.FLOAT]
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "toy.onnx"
    save_model_atomic(model, path)
    (got,) = ort_ops.create_session(path).run(None, {model.graph.input[0].name: x.numpy()})
    tol = 3e-2 if fp16 else 1e-4
    np.testing.assert_allclose(got.astype(np.float64), expected.numpy(), rtol=tol,
                               atol=tol * max(1.0, expected.abs().max().item()))


# ----------------------------------------------------------------------------------------- the real model

FRAMES, SIZE = 3, (64, 96)  # small, non-square, so H/W mix-ups show


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    import vivim

    torch.manual_seed(1234)
    model = vivim.create_model("tiny", frames=FRAMES, img_size=SIZE[0])
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    vivim.save_checkpoint(model, path)
    return path


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    """exported(fp16, output_frame) -> (onnx path, ExportResult); each combination is exported once per module."""
    from vivim.export.onnx_export import export_onnx

    cache: dict = {}
    folder = tmp_path_factory.mktemp("onnx")

    def get(fp16: bool, output_frame: str):
        key = (fp16, output_frame)
        if key not in cache:
            path = folder / f"tiny_{'fp16' if fp16 else 'fp32'}_{output_frame}.onnx"
            # 'all' goes through the shipped default (full optimizer); the single-frame graphs use the light
            # optimizer to halve CI time (same scan nodes; frame selection happens before ONNX optimisation)
            result = export_onnx(tiny_checkpoint, path, fp16=fp16, size=SIZE, output_frame=output_frame,
                                 optimize=output_frame == "all", log=lambda *_: None)
            cache[key] = (path, result)
        return cache[key]

    return get


def _types(model: onnx.ModelProto) -> dict:
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_exported_model_structure_and_metadata(exported, tiny_checkpoint, fp16):
    import vivim
    from vivim.checkpoint import file_sha256, read_metadata

    path, result = exported(fp16, "all")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    config = read_metadata(tiny_checkpoint)["config"]
    io_type = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    f32 = TensorProto.FLOAT

    # one grouped scan (G = 3) per ST-Mamba layer: mamba_layers x stages nodes
    scans = [n for n in model.graph.node if n.op_type == "VivimSelectiveScan"]
    assert len(scans) == config["mamba_layers"] * len(config["embed_dims"]) == result.scan_nodes
    assert all(n.domain == "vivim" for n in scans)
    assert not [n for n in model.graph.node if n.domain not in ("", "vivim")]
    assert {o.domain: o.version for o in model.opset_import}["vivim"] == 1
    assert not model.functions
    types = _types(model)
    for node in scans:
        attrs = {a.name: a for a in node.attribute}
        assert set(attrs) == {"delta_softplus", "plugin_version", "plugin_namespace"}
        assert attrs["delta_softplus"].type == onnx.AttributeProto.INT and attrs["delta_softplus"].i in (0, 1)
        assert attrs["plugin_version"].type == onnx.AttributeProto.STRING and attrs["plugin_version"].s == b"1"
        assert attrs["plugin_namespace"].type == onnx.AttributeProto.STRING and attrs["plugin_namespace"].s == b"vivim"
        assert len(node.input) == 8 and all(node.input)
        assert [types[name] for name in node.input] == [io_type, io_type, f32, io_type, io_type, f32, io_type, f32]
        assert types[node.output[0]] == io_type
    # grouped B/C (batch, 3, N, L), A (D, N) with D divisible by 3
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
    shapes.update({i.name: list(i.dims) for i in model.graph.initializer})
    for node in scans:
        b_shape, a_shape = shapes[node.input[3]], shapes[node.input[2]]
        assert b_shape[1] == 3 and a_shape[0] % 3 == 0 and b_shape[2] == a_shape[1]

    # static shapes, named I/O
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "frames" and out.name == "logits"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, FRAMES, 3, *SIZE]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, FRAMES, 1, *SIZE]
    assert inp.type.tensor_type.elem_type == io_type == out.type.tensor_type.elem_type

    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["variant"] == "tiny" and meta["frames"] == str(FRAMES)
    assert json.loads(meta["img_size"]) == list(SIZE)
    norm = json.loads(meta["normalization"])
    assert len(norm["mean"]) == 3 and len(norm["std"]) == 3
    assert meta["output_frame"] == "all" and meta["precision"] == ("fp16" if fp16 else "fp32")
    assert meta["package_version"] == vivim.__version__
    assert meta["checkpoint_sha256"] == file_sha256(tiny_checkpoint)


def test_an_fp16_graph_keeps_a_d_and_dt_bias_at_full_precision(exported):
    """The contract keeps A, D and delta_bias in fp32 inside an FP16 graph: their values, not only their types,
    must be the FP32 graph's (a model cast to half before export would pass fp16-rounded values through fp32)."""
    from onnx import numpy_helper

    def scan_parameters(fp16):
        model = onnx.load(exported(fp16, "all")[0])
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        scans = [n for n in model.graph.node if n.op_type == "VivimSelectiveScan"]
        assert all(n.input[k] in inits for n in scans for k in (2, 5, 7)), "A, D, delta_bias are constants"
        return [[inits[n.input[k]] for k in (2, 5, 7)] for n in scans]

    half, full = scan_parameters(True), scan_parameters(False)
    assert len(half) == len(full)
    for node_half, node_full in zip(half, full):
        for a, b in zip(node_half, node_full):
            assert a.dtype == np.float32 and np.array_equal(a, b)
    assert any(np.any(a != a.astype(np.float16).astype(np.float32)) for node in full for a in node)  # a real test


def test_scan_node_contract_check_refuses_a_node_with_missing_inputs():
    """validate_scan_nodes guards the plugin's input count: a node without its optional inputs (D, z, delta_bias
    left out by a caller of the op) is refused at export, not at engine build on the device."""
    from vivim.errors import VivimError
    from vivim.export.onnx_export import validate_scan_nodes

    for inputs in (["u", "delta", "A", "B", "C", "D", "z"], ["u", "delta", "A", "B", "C", "D", "", "bias"]):
        model = single_scan_model(TensorProto.FLOAT, 1, 6, 4, 9, 1, 1)
        model.graph.node[0].input[:] = inputs
        with pytest.raises(VivimError, match="the contract needs all of"):
            validate_scan_nodes(model)
    assert validate_scan_nodes(single_scan_model(TensorProto.FLOAT, 1, 6, 4, 9, 1, 1)) == 1


@pytest.mark.parametrize("output_frame", ["all", "centre", "newest"])
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_onnxruntime_parity_with_pytorch(exported, tiny_checkpoint, fp16, output_frame):
    from vivim.export.parity import TOLERANCES, check_parity

    path, _ = exported(fp16, output_frame)
    result = check_parity(tiny_checkpoint, path, seed=RNG_SEED % 1000)
    frames_out = FRAMES if output_frame == "all" else 1
    assert result.input_shape == [1, FRAMES, 3, *SIZE]
    tol = TOLERANCES["fp16" if fp16 else "fp32"]
    assert result.max_abs_err <= tol["atol"] and result.dice >= tol["min_dice"], result
    # the defaults `vivim-export check --help` documents, chosen by the graph's precision
    assert (result.atol, result.min_dice) == ((0.5, 0.98) if fp16 else (1e-3, 0.999))
    assert result.passed and result.checkpoint_matches
    assert result.mask_pixels_torch > 0  # the comparison is not between two empty masks
    # The CLI's defaults are sized for deep, trained models; this tiny one must do much better. fp16 rounds to
    # 2^-11 relative per layer: measured ~1e-3 of the largest logit, so 1% of it catches a real error.
    assert result.max_abs_err <= (1e-2 if fp16 else 1e-5) * max(result.max_abs_logit, 1.0), result
    assert result.mask_agreement >= (0.995 if fp16 else 0.999), result
    # the selected frame really is that frame of the full clip (independent of the parity code path)
    if output_frame != "all":
        session = ort_ops.create_session(path)
        full_session = ort_ops.create_session(exported(fp16, "all")[0])
        from vivim.export.parity import synthetic_clip

        model = onnx.load(path)
        meta = {p.key: p.value for p in model.metadata_props}
        norm = json.loads(meta["normalization"])
        clip = synthetic_clip(FRAMES, *SIZE, norm["mean"], norm["std"], seed=3)
        clip = clip.astype(np.float16 if fp16 else np.float32)
        (one,) = session.run(None, {"frames": clip})
        (full,) = full_session.run(None, {"frames": clip})
        index = FRAMES // 2 if output_frame == "centre" else FRAMES - 1
        assert one.shape == (1, frames_out, 1, *SIZE)
        np.testing.assert_allclose(one[:, 0].astype(np.float32), full[:, index].astype(np.float32),
                                   atol=2e-2 if fp16 else 1e-5)


def test_parity_fails_beyond_tolerance_and_flags_other_checkpoint(exported, tmp_path):
    from vivim.export.parity import check_parity

    import vivim

    path, _ = exported(True, "all")
    torch.manual_seed(99)
    other = tmp_path / "other.safetensors"
    vivim.save_checkpoint(vivim.create_model("tiny", frames=FRAMES, img_size=SIZE[0]), other)
    result = check_parity(other, path)
    assert not result.checkpoint_matches and not result.passed


def test_parity_compares_the_onnx_masks_with_pytorch_s(exported, tiny_checkpoint, tmp_path):
    """Masks are the user-facing output: a graph whose logits have the wrong sign fails on Dice even when the
    logit tolerance is lifted, and the report counts the ONNX masks' own pixels."""
    from vivim.export.parity import check_parity

    model = onnx.load(exported(False, "centre")[0])
    out = model.graph.output[0].name
    producer = next(n for n in model.graph.node if out in n.output)
    producer.output[list(producer.output).index(out)] = "logits_before_negation"
    model.graph.node.append(helper.make_node("Neg", ["logits_before_negation"], [out]))
    negated = tmp_path / "negated.onnx"
    onnx.save(model, negated)
    result = check_parity(tiny_checkpoint, negated, atol=1e9)
    assert result.max_abs_err <= 1e9 and not result.passed
    assert result.dice < 0.5
    total = int(np.prod(result.input_shape[-2:]))  # one decoded frame
    assert result.mask_pixels_onnx + result.mask_pixels_torch == total  # complements (no logit exactly 0)
    assert result.mask_agreement == 0.0


def test_export_error_paths(tiny_checkpoint, tmp_path):
    from safetensors.numpy import save_file
    from vivim.export.onnx_export import export_onnx

    from vivim.errors import CheckpointError, VivimError

    with pytest.raises(CheckpointError, match="nope.safetensors"):
        export_onnx(tmp_path / "nope.safetensors", tmp_path / "m.onnx")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": np.zeros((2, 2), np.float32)}, str(foreign))
    with pytest.raises(CheckpointError, match="foreign.safetensors"):
        export_onnx(foreign, tmp_path / "m.onnx")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(VivimError, match="a_file is a file, not a folder"):
        export_onnx(tiny_checkpoint, blocker / "m.onnx")  # parent is a file: unwritable
    with pytest.raises(VivimError, match="--output-frame"):
        export_onnx(tiny_checkpoint, tmp_path / "m.onnx", output_frame="middle")
    with pytest.raises(VivimError, match="--opset"):
        export_onnx(tiny_checkpoint, tmp_path / "m.onnx", opset=13)
    with pytest.raises(VivimError, match="--size"):
        export_onnx(tiny_checkpoint, tmp_path / "m.onnx", size=(60, 64))
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*tmp"))


def test_more_scan_states_than_the_plugin_holds_export_with_a_warning_and_are_recorded(tmp_path, capsys):
    """ONNX Runtime runs any d_state; the graph records it, so vivim-export trt refuses it before building."""
    from vivim.export.onnx_export import export_onnx
    from vivim.export.onnx_files import onnx_metadata

    import vivim

    n65 = tmp_path / "n65.safetensors"
    vivim.save_checkpoint(vivim.create_model("tiny", frames=2, img_size=32, d_state=65), n65)
    export_onnx(n65, tmp_path / "m.onnx", output_frame="newest", optimize=False)
    assert "n65.safetensors: its model has d_state 65; the graph runs in ONNX Runtime" in capsys.readouterr().err
    assert onnx_metadata(tmp_path / "m.onnx")["scan_states"] == "65"


@pytest.mark.parametrize("resize", ["area", "linear"])
def test_metadata_carries_the_checkpoint_s_normalization_and_resize(tmp_path, resize):
    from vivim.export.onnx_export import build_metadata

    rng = np.random.default_rng()
    normalization = {"mean": rng.uniform(0.1, 0.9, 3).round(4).tolist(), "std": rng.uniform(0.1, 0.4, 3).round(4).tolist()}
    checkpoint = tmp_path / "c.safetensors"
    checkpoint.write_bytes(rng.bytes(64))
    meta = build_metadata({"variant": "tiny", "normalization": normalization, "resize": resize}, frames=3,
                          size=(64, 96), output_frame="newest", fp16=True, checkpoint_path=checkpoint, scan_states=16)
    assert json.loads(meta["normalization"]) == normalization and meta["resize"] == resize
    assert json.loads(meta["img_size"]) == [64, 96] and meta["output_frame"] == "newest" and meta["precision"] == "fp16"
    assert meta["scan_states"] == "16"


def test_exporting_a_frame_the_model_was_not_trained_for_is_said(tiny_checkpoint, tmp_path, capsys):
    from vivim.export.onnx_export import export_onnx

    export_onnx(tiny_checkpoint, tmp_path / "newest.onnx", size=SIZE, output_frame="newest", optimize=False,
                log=lambda *_: None)
    assert "tiny.safetensors was trained to segment the centre frame of its clip; --output-frame newest asks for " \
           "another" in capsys.readouterr().err


def test_parity_dice_matches_the_formula_and_agrees_on_empty_masks():
    # both masks empty: the two runtimes agree, Dice 1 (a random model's all-background logits must not fail parity)
    from vivim.export.parity import dice

    rng = np.random.default_rng()
    a, b = rng.random((2, 17, 23)) > 0.6
    assert dice(a, b) == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
    empty = np.zeros((4, 4), bool)
    assert dice(empty, empty) == 1.0 and dice(empty, a[:4, :4] | True) == 0.0
