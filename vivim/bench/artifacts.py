"""Files some benchmark rows need, made once per run: a checkpoint, ONNX exports, a synthetic capture video."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from vivim.bench.common import CAPTURE_SHAPE, BenchSettings, ModelSource, quiet
from vivim.bench.records import one_line
from vivim.constants import size_label
from vivim.errors import VivimError


class Artifacts:
    """Files some rows need, made once per run: a checkpoint of the benchmarked weights, ONNX exports per
    precision, a synthetic capture video. They go to --keep-onnx or a temporary folder removed at the end."""

    def __init__(self, source: ModelSource, settings: BenchSettings) -> None:
        self.source = source
        self.settings = settings
        self._paths: dict[str, Path] = {}
        self._errors: dict[str, str] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def folder(self) -> Path:
        if self.settings.keep_onnx is not None:
            self.settings.keep_onnx.mkdir(parents=True, exist_ok=True)
            return self.settings.keep_onnx
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="vivim-bench-")
        return Path(self._tmp.name)

    def _once(self, key: str, make: Callable[[], Path], what: str) -> Path:
        """Make an artifact once; a failure is remembered and re-raised as a one-line VivimError."""
        if key in self._errors:
            raise VivimError(self._errors[key])
        if key not in self._paths:
            try:
                self._paths[key] = make()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - reported in the rows that need it
                self._errors[key] = f"{what} failed: {type(exc).__name__}: {one_line(str(exc))}"
                raise VivimError(self._errors[key]) from exc
        return self._paths[key]

    def checkpoint(self) -> str:
        """--checkpoint, or the variant's random weights saved once (for the exporter and vivim-run)."""
        if self.settings.checkpoint is not None:
            return str(self.settings.checkpoint)

        def make() -> Path:
            import vivim

            target = self.folder() / f"bench_{self.settings.variant}.safetensors"
            vivim.save_checkpoint(self.source.fresh(), target, note="random weights saved by vivim-bench")
            return target

        return str(self._once("checkpoint", make, "saving the benchmark checkpoint"))

    def onnx(self, precision: str) -> Path:
        """The model exported to ONNX (full clip output, like the PyTorch reference row)."""

        def make() -> Path:
            from vivim.export.onnx_export import export_onnx

            s = self.settings
            target = self.folder() / f"vivim_{s.frames}x{size_label(s.size)}_{precision}.onnx"
            export_onnx(self.checkpoint(), target, fp16=precision == "fp16", frames=s.frames, size=s.hw,
                        output_frame="all", log=quiet)
            return target

        return self._once(f"onnx-{precision}", make, f"ONNX export ({precision})")

    def video(self) -> Path:
        """--video, or a synthetic capture-sized clip (content does not change the latency)."""
        if self.settings.video is not None:
            return Path(self.settings.video)
        return self._once("video", lambda: write_synthetic_video(self.folder() / "capture.mp4",
                                                                  self.settings.pipeline_frames,
                                                                  seed=self.settings.seed), "writing the test video")

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def write_synthetic_video(path: Path, frames: int, *, fps: float = 30.0, seed: int = 0,
                          shape: tuple[int, int] = CAPTURE_SHAPE) -> Path:
    """An mp4 of speckle-like noise with a moving dark ellipse: cheap to make, exercises decode and resize."""
    import cv2
    import numpy as np

    from vivim.data.image_io import write_video

    height, width = shape
    rng = np.random.default_rng(seed)

    def grey_frames():
        for k in range(frames):
            grey = rng.rayleigh(40.0, size=(height, width)).clip(0, 255).astype(np.uint8)
            centre = (int(width * (0.3 + 0.4 * k / max(frames - 1, 1))), height // 2)
            cv2.ellipse(grey, centre, (width // 10, height // 12), 0, 0, 360, 10, -1)
            yield grey

    write_video(path, grey_frames(), fps)
    return path
