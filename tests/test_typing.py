"""The whole package type-checks with mypy under the project's configuration (pyproject.toml [tool.mypy])."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _installed_layout(target: Path) -> Path:
    """The package as installed, built from symlinks: vivim.runtime and vivim.export live in the top-level runtime/
    and export/ folders (pyproject's package-dir), which mypy cannot map, so without this it would treat every
    import of them as a missing module (Any) and check nothing across that boundary."""
    tomllib = pytest.importorskip("tomllib")
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    package = target / "vivim"
    package.mkdir(parents=True)
    for child in (ROOT / "vivim").iterdir():
        (package / child.name).symlink_to(child)
    for name, folder in package_dir.items():
        if name.startswith("vivim."):
            (package / name.split(".", 1)[1]).symlink_to(ROOT / folder)
    (target / "benchmarks").symlink_to(ROOT / "benchmarks")
    return target


def test_package_type_checks(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    tree = _installed_layout(tmp_path / "tree")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir",
         str(tmp_path / "cache"), "vivim", "benchmarks"],
        capture_output=True, text=True, cwd=tree, timeout=900,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    sources = [p for folder in ("vivim", "runtime", "export", "benchmarks") for p in (ROOT / folder).rglob("*.py")]
    assert f"in {len(sources)} source files" in result.stdout, result.stdout  # every module was read
