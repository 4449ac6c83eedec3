"""The cached PyTorch extension is rebuilt when any kernel source changes, headers included (no GPU needed).

torch.utils.cpp_extension rebuilds when the listed sources or the compiler flags change; the kernel also includes
headers (resident_pass.cuh, the C API header), so the binding passes a digest of every file of the kernel's
source and include folders as a define.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from vivim.ops import _cuda_ext


def _copy_tree(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    inc = tmp_path / "include"
    shutil.copytree(_cuda_ext._KERNEL_DIR, src)
    shutil.copytree(_cuda_ext._INCLUDE, inc)
    return src, inc


def test_header_edits_change_the_build_flags(tmp_path, monkeypatch):
    src, inc = _copy_tree(tmp_path)
    monkeypatch.setattr(_cuda_ext, "_KERNEL_DIR", src)
    monkeypatch.setattr(_cuda_ext, "_INCLUDE", inc)
    first = _cuda_ext._kernel_sources_digest()
    assert first == _cuda_ext._kernel_sources_digest()  # stable for unchanged files
    headers = sorted(p for p in (*src.rglob("*"), *inc.rglob("*")) if p.is_file())
    assert {p.name for p in headers} >= {"resident_pass.cuh", "selective_scan.cu", "selective_scan.h"}
    seen = {first}
    for header in headers:
        original = header.read_bytes()
        header.write_bytes(original + b"\n// edited\n")
        digest = _cuda_ext._kernel_sources_digest()
        assert digest not in seen, f"an edit of {header.name} does not change the digest"
        seen.add(digest)
        header.write_bytes(original)
    assert _cuda_ext._kernel_sources_digest() == first
