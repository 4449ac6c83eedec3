"""The cached PyTorch extension is rebuilt when any kernel source changes, headers included (no GPU needed).

torch.utils.cpp_extension rebuilds when the listed sources or the compiler flags change; the kernel also includes
headers (resident_pass.cuh, the C API header), so the binding passes a digest of every file of the kernel's
source and include folders as a define.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vivim.ops import _cuda_ext


def _copy_tree(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    inc = tmp_path / "include"
    shutil.copytree(_cuda_ext._KERNEL_DIR, src)
    shutil.copytree(_cuda_ext._INCLUDE, inc)
    return src, inc


def _each_edit_changes(files, key, first) -> None:
    """Edit each file in turn: `key()` must take a value not seen before every time, and `first` again once every
    file is restored."""
    seen = {first}
    for path in files:
        original = path.read_bytes()
        path.write_bytes(original + b"\n// edited\n")
        value = key()
        assert value not in seen, f"an edit of {path.name} leaves {key.__name__} unchanged"
        seen.add(value)
        path.write_bytes(original)
    assert key() == first


def test_header_edits_change_the_build_flags(tmp_path, monkeypatch):
    src, inc = _copy_tree(tmp_path)
    monkeypatch.setattr(_cuda_ext, "_KERNEL_DIR", src)
    monkeypatch.setattr(_cuda_ext, "_INCLUDE", inc)
    first = _cuda_ext._kernel_sources_digest()
    assert first == _cuda_ext._kernel_sources_digest()  # stable for unchanged files
    headers = sorted(p for p in (*src.rglob("*"), *inc.rglob("*")) if p.is_file())
    assert {p.name for p in headers} >= {"resident_pass.cuh", "selective_scan.cu", "selective_scan.h"}
    _each_edit_changes(headers, _cuda_ext._kernel_sources_digest, first)


def test_the_cache_folder_is_named_by_every_source(tmp_path, monkeypatch):
    # a process imports a library found in the folder without asking torch to rebuild: the folder name must change
    # whenever the binding, the kernel or one of its headers does
    src, inc = _copy_tree(tmp_path)
    binding = tmp_path / "selective_scan_binding.cpp"
    shutil.copy(_cuda_ext._SOURCES[0], binding)
    monkeypatch.setattr(_cuda_ext, "_KERNEL_DIR", src)
    monkeypatch.setattr(_cuda_ext, "_INCLUDE", inc)
    monkeypatch.setattr(_cuda_ext, "_SOURCES", (binding, src / "selective_scan.cu"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    first = _cuda_ext.build_directory()
    assert first == _cuda_ext.build_directory() and first.parent.parent == tmp_path / "cache"
    with monkeypatch.context() as m:  # the same files in another checkout: the same build
        m.setattr(_cuda_ext, "_KERNEL_DIR", _cuda_ext._REPO_PLUGINS / "selective_scan" / "src")
        m.setattr(_cuda_ext, "_INCLUDE", _cuda_ext._REPO_PLUGINS / "selective_scan" / "include")
        m.setattr(_cuda_ext, "_SOURCES", (_cuda_ext._REPO_PLUGINS / "torch_binding" / "selective_scan_binding.cpp",
                                          _cuda_ext._REPO_PLUGINS / "selective_scan" / "src" / "selective_scan.cu"))
        assert _cuda_ext.build_directory() == first
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.7")  # a Jetson Orin build is another build
    assert _cuda_ext.build_directory() != first
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    files = [binding, *sorted(p for p in (*src.rglob("*"), *inc.rglob("*")) if p.is_file())]
    _each_edit_changes(files, _cuda_ext.build_directory, first)


def test_a_cached_build_loads_without_a_compiler(tmp_path, monkeypatch):
    # a stand-in library with the extension's module name, compiled here with the C compiler; no nvcc, no torch build
    import shutil as sh
    import subprocess
    import sysconfig

    compiler = sh.which("gcc") or sh.which("cc")
    if compiler is None:
        pytest.skip("no C compiler")
    name = _cuda_ext._EXT_NAME
    source = tmp_path / "stub.c"
    source.write_text('#include <Python.h>\n'
                      f'static struct PyModuleDef def = {{PyModuleDef_HEAD_INIT, "{name}", NULL, -1, NULL}};\n'
                      f'PyMODINIT_FUNC PyInit_{name}(void) {{\n'
                      '  PyObject *m = PyModule_Create(&def);\n'
                      '  if (m) PyModule_AddStringConstant(m, "origin", "cached stub");\n'
                      '  return m;\n}\n')
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))
    folder = _cuda_ext.build_directory()
    folder.mkdir(parents=True)
    built = subprocess.run([compiler, "-shared", "-fPIC", f"-I{sysconfig.get_paths()['include']}", str(source),
                            "-o", str(folder / f"{name}.so")], capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"cannot build a Python extension here: {built.stderr.strip()[:200]}")
    monkeypatch.setattr(_cuda_ext, "_module", None)
    monkeypatch.setattr(_cuda_ext, "_failure", None)
    monkeypatch.setattr(_cuda_ext, "_build_tools_present", lambda: (False, "no nvcc in this image"))
    assert _cuda_ext.load_extension().origin == "cached stub"
    (folder / "lock").write_text("")  # another process is building: wait for it through torch instead
    monkeypatch.setattr(_cuda_ext, "_module", None)
    assert _cuda_ext._import_cached(folder) is None


def test_a_cached_library_that_does_not_load_is_ignored(tmp_path):
    assert _cuda_ext._import_cached(tmp_path) is None  # nothing there
    (tmp_path / f"{_cuda_ext._EXT_NAME}.so").write_bytes(b"half-written by another process")
    assert _cuda_ext._import_cached(tmp_path) is None  # then torch's load() builds or waits for the build
