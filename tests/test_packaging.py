"""Packaging: folder-to-namespace mapping, console scripts, and a torch-free `import vivim`."""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("externally_managed", [True, False])
def test_make_uses_a_virtual_environment_only_where_the_system_python_refuses_pip(tmp_path, externally_managed):
    """PEP 668 (Debian 12, Ubuntu 23.04+): pip refuses the system Python, and `make demo` failed there. The Makefile
    asks the interpreter itself (outside any environment, with an EXTERNALLY-MANAGED marker in its stdlib); here the
    real interpreter answers, with its stdlib path pointed at a folder that has the marker or not."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    stdlib = tmp_path / "stdlib"
    stdlib.mkdir()
    if externally_managed:
        (stdlib / "EXTERNALLY-MANAGED").write_text("[externally-managed]\n")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys, sysconfig\n"
        "real = sysconfig.get_path\n"
        f"sysconfig.get_path = lambda name, *a, **k: {str(stdlib)!r} if name == 'stdlib' else real(name, *a, **k)\n"
        "sys.base_prefix = sys.prefix  # as if outside any environment, as on a fresh machine\n")
    interpreter = tmp_path / "python3"
    interpreter.write_text(f"#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} \"$@\"\n")
    interpreter.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "MAKEFLAGS", "VIRTUAL_ENV", "CONDA_PREFIX")}
    dry = subprocess.run(["make", "-n", "-B", "demo", f"SYS_PYTHON={interpreter}"], cwd=ROOT, capture_output=True,
                         text=True, env=env, timeout=60)
    assert dry.returncode == 0, dry.stderr
    if externally_managed:
        assert f"{interpreter} -m venv .venv" in dry.stdout
        assert ".venv/bin/python -m pip install" in dry.stdout and ".venv/bin/python -m vivim.runtime.cli" in dry.stdout
    else:
        assert "venv" not in dry.stdout
        assert f"{interpreter} -m pip install" in dry.stdout and f"{interpreter} -m vivim.runtime.cli" in dry.stdout
