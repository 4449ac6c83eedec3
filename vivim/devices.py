"""The --device flag, parsed in one place: 'auto', 'cpu', 'cuda' or 'cuda:N'.

`parse_device` needs no torch (the ONNX Runtime and TensorRT paths run without it); `torch_device` resolves the
text against what PyTorch sees. Both fail with one line naming the flag.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, NamedTuple, Optional

from vivim.errors import VivimError

if TYPE_CHECKING:
    import torch

_DEVICE = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


class DeviceSpec(NamedTuple):
    kind: str  # "auto", "cpu" or "cuda"
    ordinal: Optional[int]  # N of cuda:N; None for plain "cuda" (device 0), "cpu" and "auto"

    @property
    def cuda_index(self) -> int:
        return self.ordinal or 0


def parse_device(text: str, flag: str = "--device") -> DeviceSpec:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> DeviceSpec; anything else (e.g. 'gpu', 'cuda:first') is refused."""
    match = _DEVICE.fullmatch(str(text).strip().lower())
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise VivimError(f"{flag} must be cpu, cuda, cuda:N or auto, got {text!r}")
    return DeviceSpec(match.group(1), int(match.group(2)) if match.group(2) is not None else None)


def torch_device(text: Optional[str], flag: str = "--device") -> "torch.device":
    """The torch device for `text` (None = auto): CUDA when asked for must be there, and device N must exist."""
    import torch

    spec = parse_device(text or "auto", flag)
    if spec.kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise VivimError(f"{flag} {text}: PyTorch sees no CUDA device (torch {torch.__version__}); use {flag} cpu")
    if spec.cuda_index >= torch.cuda.device_count():
        raise VivimError(f"{flag} {text}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device("cuda", spec.cuda_index)
