"""An optional package that is not installed ends a command with one line naming the package and the extra that
installs it (exit 2), never an import traceback."""

import os
import subprocess
import sys

import pytest

from vivim.cli_utils import missing_package_hint, run_app

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

BLOCK = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {module!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Block())
"""


def _run_blocked(module: str, code: str, tmp_path):
    script = BLOCK.format(module=module) + code
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=ENV,
                          timeout=300)


def test_export_without_onnxscript_names_the_extra(tmp_path):
    pytest.importorskip("torch")
    result = _run_blocked("onnxscript", (
        "sys.argv = ['vivim-export', 'onnx', 'demo', '-o', 'demo.onnx']\n"
        "from vivim.export.cli import main\nmain()\n"), tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "onnxscript" in lines[0] and "pip install 'vivim-edge[export]'" in lines[0], lines
    assert not (tmp_path / "demo.onnx").exists()


def test_onnx_session_without_onnxruntime_extensions_says_which_extra(tmp_path):
    """create_session imported the extensions' library before the check that words this error."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    result = _run_blocked("onnxruntime_extensions", (
        "from vivim.errors import VivimError\nfrom vivim.export.ort_ops import create_session\n"
        "try:\n    create_session('m.onnx')\nexcept VivimError as exc:\n    print('VivimError:', exc)\n"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "VivimError:" in result.stdout and "vivim-edge[export]" in result.stdout, result.stdout


@pytest.mark.parametrize("module, extra", [("cv2", "runtime"), ("yaml", "runtime"), ("onnxruntime", "export"),
                                           ("pycuda", "trt"), ("matplotlib", "bench")])
def test_run_app_turns_a_missing_optional_module_into_one_line(module, extra, capsys):
    def app(standalone_mode=True):
        raise ModuleNotFoundError(f"No module named '{module}'", name=f"{module}.sub" if module == "cv2" else module)

    with pytest.raises(SystemExit) as stop:
        run_app(app)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and f"vivim-edge[{extra}]" in err[0], err


def test_a_missing_module_of_our_own_stays_a_traceback():
    """vivim.* missing is a packaging bug, not the user's set-up: no install hint that would mislead."""
    def app(standalone_mode=True):
        raise ModuleNotFoundError("No module named 'vivim.nothing'", name="vivim.nothing")

    assert missing_package_hint(ModuleNotFoundError(name="export.x")) is None
    with pytest.raises(ModuleNotFoundError):
        run_app(app)
    hint = missing_package_hint(ModuleNotFoundError(name="torch"))
    assert hint is not None and "pip install torch" in hint
