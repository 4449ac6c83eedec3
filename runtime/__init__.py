"""`vivim-run`: live Vivim segmentation of a video stream through a rolling buffer of the last T frames.

The pipeline follows Holoscan's operator shape, one small module per stage:

    sources (capture thread) -> preprocess (once per frame) -> ring of T device items -> backend.infer
        -> overlay (mask drawn on the frame it belongs to) -> sinks (window, video, mask PNGs, strip)

`stats` collects FPS and capture-to-mask latency, `config` merges the YAML file with the flags,
`app` wires the stages together and `cli` is the Typer front end. Importing this package (and the
ONNX Runtime / TensorRT backends) never imports torch: JetPack images ship TensorRT, OpenCV and pycuda only.
"""

from __future__ import annotations

__all__ = ["RunConfig", "run"]


def __getattr__(name: str):  # lazy: keep `import vivim.runtime` free of OpenCV/torch imports
    if name == "RunConfig":
        from vivim.runtime.config import RunConfig

        return RunConfig
    if name == "run":
        from vivim.runtime.app import run

        return run
    raise AttributeError(f"module 'vivim.runtime' has no attribute {name!r}")
