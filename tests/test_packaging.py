"""Packaging: folder-to-namespace mapping, console scripts, and a torch-free `import vivim`."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_top_level_folders_exist():
    for folder in ("vivim", "export", "runtime", "plugins", "tests", "benchmarks"):
        assert (ROOT / folder).is_dir(), folder


def test_every_python_package_folder_is_listed():
    tool = pyproject()["tool"]["setuptools"]
    mapping = tool["package-dir"]
    assert mapping == {"vivim": "vivim", "vivim.export": "export", "vivim.runtime": "runtime"}
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    nested = {p for p in found if p.startswith(("vivim.export.", "vivim.runtime."))}
    assert found - nested == set(tool["packages"]) - nested
    assert not {"export", "runtime"} & set(tool["packages"])  # never installed as top-level modules


def test_torch_requirement_admits_the_ci_and_gpu_builds():
    from packaging.specifiers import SpecifierSet

    (torch_req,) = [r for r in pyproject()["project"]["dependencies"] if r.startswith("torch")]
    spec = SpecifierSet(torch_req.removeprefix("torch"))
    assert "2.13.0" in spec and "2.11.0" in spec


def test_import_vivim_does_not_import_torch():
    code = ("import sys, vivim, vivim.checkpoint, vivim.constants, vivim.errors; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(vivim.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == pyproject()["project"]["version"]


def test_public_api_is_lazy_but_complete():
    import vivim

    assert callable(vivim.create_model) and callable(vivim.variants)
    assert callable(vivim.save_checkpoint) and callable(vivim.load_checkpoint)
    assert callable(vivim.ops.selective_scan)
