"""The environment block written into every result file: GPU, driver, CUDA, library versions, CPU, OS, date."""

from __future__ import annotations

import datetime as _dt
import importlib
import os
import platform
import shutil
import subprocess
from typing import Any


def _distribution_version(name: str) -> str | None:
    """An installed distribution's version from its metadata, without importing it (mamba_ssm's import loads its
    language models, triton and transformers: seconds, for one string)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _module_version(name: str) -> str | None:
    """Version of an importable module, or None when it is not installed (import errors are not fatal here)."""
    try:
        module = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a broken optional install reads as "absent", never crashes the benchmark
        return None
    if getattr(module, "__file__", None) is None:
        # A namespace package only (e.g. tensorrt-stubs without TensorRT): nothing importable is installed.
        return None
    return str(getattr(module, "__version__", "unknown"))


def cpu_name() -> str:
    """CPU model name from /proc/cpuinfo on Linux, platform.processor() elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvidia_smi_query(fields: tuple[str, ...] = ("driver_version", "clocks.sm", "clocks.max.sm", "power.limit",
                                                "persistence_mode", "temperature.gpu")) -> dict[str, str] | None:
    """First GPU's fields from `nvidia-smi --query-gpu` (None when nvidia-smi is missing or fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        result = subprocess.run(
            [exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0 or not result.stdout.strip():
        return None
    values = [v.strip() for v in result.stdout.strip().splitlines()[0].split(",")]
    return dict(zip(fields, values))


def _git_commit() -> str | None:
    """Commit of the source tree the benchmark runs from, when it is a git checkout."""
    exe = shutil.which("git")
    if exe is None:
        return None
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        # --dirty: a run from a tree with uncommitted changes says so (the numbers are not that commit's)
        result = subprocess.run([exe, "-C", here, "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True,
                                text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def collect_environment(device: str = "cpu") -> dict[str, Any]:
    """Everything needed to reproduce or compare a benchmark row (Ultralytics prints the same before a table)."""
    import torch

    env: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device,
        "gpu": None,
        "gpu_compute_capability": None,
        "gpu_memory_mb": None,
        "gpu_count": 0,
        "driver": None,
        "cuda": torch.version.cuda,
        "cudnn": None,
        "torch": torch.__version__,
        "tensorrt": _module_version("tensorrt"),
        "onnxruntime": _module_version("onnxruntime"),
        "onnxruntime_providers": None,
        "onnx": _module_version("onnx"),
        "mamba_ssm": _distribution_version("mamba_ssm"),
        "numpy": _module_version("numpy"),
        "vivim": _module_version("vivim"),
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "os": platform.platform(),
    }
    try:
        import onnxruntime

        env["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
    except Exception:  # noqa: BLE001 - optional
        pass
    if torch.backends.cudnn.is_available():
        env["cudnn"] = torch.backends.cudnn.version()
    if torch.cuda.is_available():
        index = torch.device(device).index if str(device).startswith("cuda") else None
        index = torch.cuda.current_device() if index is None else index
        props = torch.cuda.get_device_properties(index)
        env["gpu"] = props.name
        env["gpu_compute_capability"] = f"{props.major}.{props.minor}"
        env["gpu_memory_mb"] = round(props.total_memory / float(1 << 20))
        env["gpu_count"] = torch.cuda.device_count()
        smi = nvidia_smi_query()
        if smi is not None:
            env["driver"] = smi.get("driver_version")
            env["gpu_clocks_sm_mhz"] = smi.get("clocks.sm")
            env["gpu_clocks_max_sm_mhz"] = smi.get("clocks.max.sm")
            env["gpu_power_limit"] = smi.get("power.limit")
            env["gpu_persistence_mode"] = smi.get("persistence_mode")
            env["gpu_temperature_c"] = smi.get("temperature.gpu")
    return env


def environment_lines(env: dict[str, Any]) -> list[str]:
    """The block as 'key: value' lines (console, CSV comment header, Markdown)."""
    return [f"{key}: {value}" for key, value in env.items() if value is not None]
