"""`vivim-run`: live Vivim segmentation of a camera, video file, image folder or GStreamer pipeline.

vivim-run --video clip.mp4 --checkpoint demo --device cpu --headless --save out.mp4 --stats stats.json
vivim-run --camera /dev/video0 --engine vivim.engine --output-frame newest --show
"""

from __future__ import annotations

import signal
from typing import Optional

import typer

from vivim.cli_utils import cli_app, run_app
from vivim.errors import VivimError

app = cli_app("Segment a live video stream with Vivim: a rolling buffer of the last T frames, the mask drawn on the "
              "frame it belongs to, FPS and capture-to-mask latency reported.", no_args_is_help=True)


def _one_of(kind: str, **given: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    chosen = [(name, value) for name, value in given.items() if value is not None]
    if len(chosen) > 1:
        flags = ", ".join("--" + name for name, _ in chosen)
        raise VivimError(f"give one {kind}, not several ({flags})")
    return chosen[0] if chosen else (None, None)


@app.command()
def run(
    camera: Optional[str] = typer.Option(
        None, "--camera", help="V4L2 device path or index, e.g. /dev/video0 or 0."
    ),
    video: Optional[str] = typer.Option(None, "--video", help="Video file."),
    frames: Optional[str] = typer.Option(
        None, "--frames", help="Folder of images, read in frame-number order (frame_2 before frame_10)."
    ),
    gst: Optional[str] = typer.Option(
        None, "--gst", help="GStreamer pipeline ending in appsink (OpenCV built with GStreamer)."
    ),
    checkpoint: Optional[str] = typer.Option(
        None, "--checkpoint", help="PyTorch checkpoint (.safetensors) or 'demo'."
    ),
    onnx: Optional[str] = typer.Option(
        None, "--onnx", help="ONNX model from `vivim-export onnx` (ONNX Runtime)."
    ),
    engine: Optional[str] = typer.Option(
        None,
        "--engine",
        help="TensorRT engine from `vivim-export trt` (with its .json sidecar).",
    ),
    config: Optional[str] = typer.Option(
        None, "--config", help="YAML file with sections source/preprocess/backend/overlay/sink; flags override it."
    ),
    device: Optional[str] = typer.Option(
        None, "--device", "-d", help="auto, cpu, cuda or cuda:N (default auto: cuda when available)."
    ),
    output_frame: Optional[str] = typer.Option(
        None,
        "--output-frame",
        help="centre: the paper's protocol, T-1-T//2 frames lag (2 at T=5); newest: no lag (default: a one-frame graph's own frame, else the frame the model was trained for, else centre).",
    ),
    fp16: Optional[bool] = typer.Option(
        None, "--fp16/--fp32", help="PyTorch on CUDA: half precision."
    ),
    cuda_graph: Optional[bool] = typer.Option(
        None, "--cuda-graph/--no-cuda-graph", help="PyTorch on CUDA: replay CUDA graphs (default: on; --no-cuda-graph runs eagerly)."
    ),
    compile_model: Optional[bool] = typer.Option(
        None, "--compile/--no-compile",
        help="PyTorch: torch.compile the network (Inductor; about a minute at start-up). With --fp16 --cuda-graph "
             "the fastest PyTorch path."
    ),
    stream_cache: Optional[bool] = typer.Option(
        None,
        "--stream-cache/--no-stream-cache",
        help="PyTorch: compute per-frame features once per frame (default) or recompute the whole clip.",
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="PyTorch or ONNX Runtime on the CPU: intra-op threads (1 is fastest on a busy machine).",
    ),
    plugin: Optional[str] = typer.Option(
        None,
        "--plugin",
        help="TensorRT plugin library (default: ./vivim_plugin/libvivim_trt_plugin.so, else the one beside the engine).",
    ),
    threshold: Optional[float] = typer.Option(
        None, "--threshold", help="Mask = sigmoid(logits) > threshold (default 0.5)."
    ),
    loop: Optional[bool] = typer.Option(
        None, "--loop/--no-loop", help="Files/folders: start again at the end."
    ),
    realtime: Optional[bool] = typer.Option(
        None,
        "--realtime/--no-realtime",
        help="Files/folders: pace at the frame rate and keep only the newest frame, like a camera.",
    ),
    fps: Optional[float] = typer.Option(
        None, "--fps", help="Camera: requested rate; video files and folders: the rate they play at (--realtime) and are saved at (default: a video's own rate, 25 for folders)."
    ),
    width: Optional[int] = typer.Option(None, "--width", help="Camera: requested width."),
    height: Optional[int] = typer.Option(None, "--height", help="Camera: requested height."),
    fourcc: Optional[str] = typer.Option(
        None, "--fourcc", help="Camera: pixel format, e.g. MJPG or YUYV."
    ),
    buffer_size: Optional[int] = typer.Option(
        None,
        "--buffer-size",
        help="Camera: V4L2 driver buffers (default 1: newest frame, least latency).",
    ),
    max_frames: Optional[int] = typer.Option(
        None, "--max-frames", help="Stop after N captured frames (each gets its mask, unless --realtime drops some to keep up)."
    ),
    reconnect_attempts: Optional[int] = typer.Option(
        None,
        "--reconnect-attempts",
        help="Live sources: reopen attempts (exponential back-off) before giving up.",
    ),
    alpha: Optional[float] = typer.Option(
        None, "--alpha", help="Mask opacity 0..1 (default 0.45)."
    ),
    contour: Optional[bool] = typer.Option(
        None, "--contour/--no-contour", help="Draw the mask outline (default on)."
    ),
    color: Optional[str] = typer.Option(
        None, "--color", help="Mask colour: R,G,B, #RRGGBB or a name (default green)."
    ),
    hud: Optional[bool] = typer.Option(
        None, "--hud/--no-hud", help="FPS and latency text on the picture (default on)."
    ),
    show: Optional[bool] = typer.Option(
        None,
        "--show/--no-show",
        help="Window with the overlay (default: shown when there is a display and OpenCV has a GUI).",
    ),
    headless: Optional[bool] = typer.Option(
        None, "--headless", help="Never open a window (automatic without a display)."
    ),
    save: Optional[str] = typer.Option(None, "--save", help="Overlay video (.mp4)."),
    save_masks: Optional[str] = typer.Option(
        None, "--save-masks", help="Folder for one binary mask PNG per frame, named after its image with --frames, else by capture index (replaces an earlier vivim-run's masks there; never files it did not write)."
    ),
    stats: Optional[str] = typer.Option(
        None, "--stats", help="Summary JSON (frames, FPS, latency percentiles)."
    ),
    strip: Optional[str] = typer.Option(
        None, "--strip", help="PNG strip of frames with their masks."
    ),
    quiet: Optional[bool] = typer.Option(
        None, "--quiet", help="No progress and no summary on the console."
    ),
) -> None:
    """Run Vivim on a live or recorded stream and draw the masks.

    One input (--camera, --video, --frames or --gst) and one model (--checkpoint, --onnx or --engine), given here
    or in --config; then the inference, source and output options below.
    """
    from vivim.runtime.app import run as run_pipeline
    from vivim.runtime.config import RunConfig

    source_kind, location = _one_of("input", camera=camera, video=video, frames=frames, gst=gst)
    model_kind, model = _one_of("model", checkpoint=checkpoint, onnx=onnx, engine=engine)
    cfg = RunConfig.build(
        config,
        {
            "source": dict(
                kind=source_kind,
                location=location,
                loop=loop,
                realtime=realtime,
                fps=fps,
                width=width,
                height=height,
                fourcc=fourcc,
                buffer_size=buffer_size,
                max_frames=max_frames,
                reconnect_attempts=reconnect_attempts,
            ),
            "backend": dict(
                kind=model_kind,
                model=model,
                device=device,
                fp16=fp16,
                cuda_graph=cuda_graph,
                compile=compile_model,
                stream_cache=stream_cache,
                threads=threads,
                plugin=plugin,
                output_frame=output_frame,
                threshold=threshold,
            ),
            "overlay": dict(alpha=alpha, contour=contour, color=color, hud=hud),
            "sink": dict(
                show=show, headless=headless, save=save, save_masks=save_masks, stats=stats, strip=strip, quiet=quiet
            ),
        },
    )
    run_pipeline(cfg, ctrl_c_after=signal.SIG_IGN)  # the process ends right after: nothing left to abort


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
