"""The `vivim-run` pipeline: source -> preprocess -> ring of T -> infer -> overlay -> sinks, plus the summary.

Order of work is chosen so mistakes fail fast and cheaply: flags and paths first, then the input is opened and
one frame read, then the model is loaded and warmed up, and only then does the capture thread start (a live
source would otherwise count the model's loading time as dropped frames).

Shutdown: the first Ctrl-C (or SIGTERM) asks the loop to stop after the current frame; the frames already in the
clip window still get their masks, every sink is closed (the mp4 gets its index and is renamed into place) and the
summary is printed and written. A second Ctrl-C aborts while frames are still being processed (a stuck input or
model); once the run is stopping it only says to wait: what is left is bounded (the capture thread's end, at most
T // 2 masks, closing the files) and is what the user wants to keep.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from vivim import paths
from vivim.checkpoint import checkpoint_file
from vivim.constants import turned_against, untrained_output_frame
from vivim.errors import VivimError
from vivim.graceful_stop import GracefulStop
from vivim.progress import stderr_line
from vivim.runtime.backends import Backend, create_backend
from vivim.runtime.config import RunConfig
from vivim.runtime.overlay import draw_hud, draw_mask, logit, mask_from_logits, parse_color
from vivim.runtime.ring import ClipWindow, Emission
from vivim.runtime.sinks import (
    MaskFolderSink, Sink, StripSink, VideoSink, WindowSink, display_available, opencv_has_gui,
)
from vivim.runtime.sources import FrameSource, create_source
from vivim.runtime.stats import RunStats, format_summary, write_json_atomic

Log = Callable[[str], None]


class Pipeline:
    """Per-frame work after capture: push into the ring, infer when a mask is due, draw, hand to the sinks."""

    def __init__(self, cfg: RunConfig, backend: Backend, sinks: List[Sink], window: ClipWindow, stats: RunStats):
        self.backend = backend
        self.sinks = sinks
        self.window = window
        self.stats = stats
        self.color = parse_color(cfg.overlay.color)
        self.overlay_cfg = cfg.overlay
        self.threshold = cfg.backend.threshold
        self.hud_tail = f"{backend.name} {backend.device.split(' ')[0]} | {window.output_frame} (lag {window.lag})"

    def push(self, frame: Any) -> None:
        t0 = time.perf_counter()
        item = self.backend.preprocess(frame.image)  # includes the per-frame network part with the stream cache
        self.stats.preprocess_ms.append((time.perf_counter() - t0) * 1000.0)
        self._emit(self.window.push(frame, item))

    def flush(self) -> None:
        """End of a finite run: repeat the last frame until every lagged frame has its mask."""
        while self.window.pending:
            self._emit(self.window.pad())

    def _emit(self, emission: Optional[Emission]) -> None:
        if emission is None:
            return
        frame = emission.record  # the frame this mask belongs to (T - 1 - T // 2 frames old in centre mode)
        t0 = time.perf_counter()
        logits = self.backend.infer(emission.clip, emission.index)
        infer_s = time.perf_counter() - t0
        mask = mask_from_logits(logits, frame.image.shape, self.threshold)
        o = self.overlay_cfg
        overlay = draw_mask(frame.image, mask, self.color, o.alpha, o.contour, o.contour_thickness)
        self.stats.record(frame.t_capture, infer_s)
        if o.hud:
            fps = self.stats.live_fps
            draw_hud(
                overlay,
                [f"{fps:5.1f} FPS  latency {self.stats.latency_ms[-1]:.0f} ms" if fps else
                 f"  --  FPS  latency {self.stats.latency_ms[-1]:.0f} ms", self.hud_tail],
            )
        for sink in self.sinks:
            sink.write(frame.index, overlay, mask)


def source_image_names(files: List[str], log: Log) -> Optional[List[str]]:
    """The stems of a --frames folder's images in reading order, to name each mask after its image; None when two
    images share a stem (frame_1.png and frame_1.jpg), where names by capture index are the unambiguous choice."""
    from vivim.data.layouts import shared_stem

    twice = shared_stem(files)
    if twice is not None:
        log(f"note: --frames {Path(files[0]).parent}: several images are named {twice}.*, so --save-masks names masks "
            "by capture index")
        return None
    return [Path(path).stem for path in files]


def build_sinks(cfg: RunConfig, log: Log, image_files: Optional[List[str]] = None) -> List[Sink]:
    s = cfg.sink
    sinks: List[Sink] = []
    if s.save:
        sinks.append(VideoSink(s.save, fps=s.save_fps or 0.0))
    if s.save_masks:
        names = source_image_names(image_files, log) if image_files else None
        sinks.append(MaskFolderSink(s.save_masks, names))
    if s.strip:
        sinks.append(StripSink(s.strip, count=s.strip_frames))
    if not s.headless and s.show is not False:
        if not display_available():
            if s.show:
                log("warning: --show ignored: no display (DISPLAY/WAYLAND_DISPLAY unset); running headless")
        elif s.show or opencv_has_gui():  # an explicit --show without a GUI build is an error (WindowSink says so)
            sinks.append(WindowSink())
    return sinks


def turned_input_note(input_size: tuple[int, int], frame_shape: tuple[int, ...]) -> Optional[str]:
    """A warning when a non-square model input lies the other way round from the frames (portrait against landscape):
    every frame is then squeezed to the wrong aspect, most likely from an export's --size given as WxH, not HxW."""
    (in_h, in_w), (fr_h, fr_w) = input_size, frame_shape[:2]
    if not turned_against(input_size, (fr_h, fr_w)):
        return None
    return (f"the model takes {in_h}x{in_w} (HxW) inputs and the frames are {fr_h}x{fr_w}: portrait against landscape, "
            f"every frame is squeezed; was it exported with --size {in_w}x{in_h} in mind (vivim-export takes HxW)?")


def run(cfg: RunConfig, *, backend: Optional[Backend] = None, log: Log = stderr_line, out: Log = print,
        ctrl_c_after: Any = None) -> Dict[str, Any]:
    """Run the pipeline until the input ends, --max-frames is reached, q is pressed or Ctrl-C; return the summary.
    The backend (the caller's, or one made from cfg) is closed when run() returns or raises. `ctrl_c_after`: SIGINT's
    handler from the moment the files are closed (vivim-run: ignored, as the process only has to end; a Ctrl-C in
    that second killed it without a word), else the caller's is restored."""
    parse_color(cfg.overlay.color)  # flag errors before any heavy work
    logit(cfg.backend.threshold)
    for note in cfg.ignored_flags():
        log(f"warning: {note}")
    src, snk, model = cfg.source, cfg.sink, cfg.backend
    paths.refuse_writing_over_inputs(
        {"--save": snk.save, "--save-masks": snk.save_masks, "--stats": snk.stats, "--strip": snk.strip},
        {f"--{src.kind}": src.location if src.kind in ("video", "frames") else None,
         f"--{model.kind}": checkpoint_file(model.model) if model.model else None},
        folders=("--frames",),
    )
    if snk.stats:
        paths.check_writable(snk.stats, "--stats")  # before the run, not after it
    source: FrameSource = create_source(cfg.source, log=log)
    sinks = build_sinks(cfg, log, source.image_files)
    source.open()
    try:
        if backend is None:
            backend = create_backend(cfg.backend, cfg.preprocess.interpolation, log=log)
        # not given: the model's own (a model trained on the newest frame runs on it, without lag); the caller's
        # config is left as it was, for a next run with another model
        trained_frame = getattr(backend, "trained_output_frame", None)
        output_frame = cfg.backend.output_frame or getattr(backend, "default_output_frame", trained_frame) or "centre"
        mismatch = untrained_output_frame(output_frame, trained_frame, backend.frames,
                                          str(getattr(backend, "source", "the model")),
                                          flag=cfg.backend.output_frame is not None)
        if mismatch:
            log(f"warning: {mismatch}")
        window = ClipWindow(backend.frames, output_frame)
        if backend.fixed_output_index is not None and backend.fixed_output_index != window.index:
            raise VivimError(
                f"--output-frame {output_frame}: this model decodes clip frame "
                f"{backend.fixed_output_index} only; pass the matching --output-frame or re-export with --output-frame all"
            )
        assert source.frame_shape is not None
        turned = turned_input_note(backend.input_size, source.frame_shape)
        if turned:
            log(f"warning: {turned}")
        backend.prepare(source.frame_shape)
    except BaseException:
        source.stop()
        if backend is not None:  # run() owns the backend, as at the end of a run (TensorRT: CUDA context, buffers)
            with contextlib.suppress(Exception):  # the set-up error is the one to report
                backend.close()
        raise
    for sink in sinks:
        if isinstance(sink, VideoSink) and not cfg.sink.save_fps:
            sink.fps = source.fps or 25.0
    if not sinks and not cfg.sink.stats:
        log("warning: nothing is saved or shown; add --save OUT.mp4, --save-masks DIR, --stats OUT.json or --show")
    stats = RunStats()
    pipeline = Pipeline(cfg, backend, sinks, window, stats)
    if not cfg.sink.quiet:
        log(f"running: {source.name} -> {backend.name} on {backend.device}, T={backend.frames}, "
            f"output frame {window.output_frame} (lag {window.lag}); Ctrl-C stops")
    progress = _Progress(cfg, source, stats, log)
    failure: Optional[BaseException] = None
    with GracefulStop(log, ctrl_c_after) as stop:
        try:
            source.start()
            stopped_by = _process_until_stopped(cfg, source, pipeline, sinks, stop, progress)
            stop.finishing()  # bounded work from here on (the capture thread's end, T // 2 masks, the files)
            source.stop()  # nothing captured after the decision to stop counts as dropped
            pipeline.flush()  # the frames already in the window get their masks, also after Ctrl-C
        except BaseException as exc:  # still close the files and write the summary, then re-raise
            failure = exc
            stopped_by = "aborted (second Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else "error"
        stop.finishing()
        progress.close()
        failure = _close_sinks(sinks, failure, log)
        source.stop()
        backend.close()
        if (source.error is not None or failure is not None) and stopped_by != "aborted (second Ctrl-C)":
            stopped_by = "error"  # also a file that failed as it was closed (a disk filling up)
        summary = stats.summary(
            frames_captured=source.frames_captured,
            frames_dropped=source.frames_dropped,
            frames_unprocessed=max(0, source.frames_captured - stats.frames_processed - source.frames_dropped),
            reconnects=source.reconnects,
            source=source.name,
            output_frame=window.output_frame,
            frames_per_clip=backend.frames,
            lag_frames=window.lag,
            stopped_by=stopped_by,
            **({"error": str(failure or source.error)} if stopped_by == "error" else {}),
            **backend.describe(),
        )
        _report(cfg, summary, sinks, out)
    if failure is not None:
        raise failure
    if source.error is not None:
        raise source.error
    return summary


def _process_until_stopped(cfg: RunConfig, source: FrameSource, pipeline: Pipeline, sinks: List[Sink],
                           stop: GracefulStop, progress: "_Progress") -> str:
    """Push every frame the source delivers through the pipeline; returns why it stopped."""
    while True:
        if stop.requested:
            return stop.reason
        if any(getattr(sink, "quit_requested", False) for sink in sinks):
            return "window closed"
        frame = source.read(0.1)
        if frame is None:
            if not source.finished:
                continue
            frame = source.read(0.0)  # the thread may have queued its last frame just before ending
            if frame is None:
                return _end_reason(cfg, source)
        pipeline.push(frame)
        progress.update()


def _end_reason(cfg: RunConfig, source: FrameSource) -> str:
    if cfg.source.max_frames is not None and source.frames_captured >= cfg.source.max_frames:
        return "max frames"
    return "input ended early" if source.ended_early else "end of input"


def _close_sinks(sinks: List[Sink], failure: Optional[BaseException], log: Log) -> Optional[BaseException]:
    """Close every sink, even after one fails; returns the run's first failure (reported once, as the run's error;
    the others as warnings)."""
    for sink in sinks:
        try:
            sink.close()
        except Exception as exc:
            if failure is None:
                failure = exc
                continue
            log(f"warning: {exc}" if isinstance(exc, VivimError) else f"warning: {getattr(sink, 'name', type(sink).__name__)}: {exc}")
    return failure


def _report(cfg: RunConfig, summary: Dict[str, Any], sinks: List[Sink], out: Log) -> None:
    """The summary (printed, and --stats), then only what was really completed: a sink that failed or got no frame
    is not listed."""
    if not cfg.sink.quiet:
        out(format_summary(summary))
    if cfg.sink.stats:
        write_json_atomic(cfg.sink.stats, summary)
    if not cfg.sink.quiet:
        completed = [sink.saved() for sink in sinks] + [("stats", cfg.sink.stats) if cfg.sink.stats else None]
        for label, path in filter(None, completed):
            out(f"saved {label}: {path}")


class _Progress:
    """A tqdm bar for finite inputs on a terminal, else a status line every few seconds (live inputs, logs)."""

    def __init__(self, cfg: RunConfig, source: FrameSource, stats: RunStats, log: Log) -> None:
        self._stats = stats
        self._log = log
        self._bar = None
        self._next = time.monotonic() + 5.0
        self._quiet = cfg.sink.quiet
        if self._quiet:
            return
        # what the source already counted (a file's header, a folder's images; None when looping or live)
        total = cfg.source.max_frames if cfg.source.max_frames is not None else source.declared_frames
        # a bar only on a terminal: in a log (systemd, nohup) its redraws pile up; the status lines suit it better
        if cfg.source.kind in ("video", "frames") and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, unit="frame", desc="vivim-run", mininterval=1.0, leave=False)
            except ImportError:
                self._bar = None

    def update(self) -> None:
        if self._quiet:
            return
        if self._bar is not None:
            self._bar.update(self._stats.frames_processed - self._bar.n)
            return
        now = time.monotonic()
        if now >= self._next:
            self._next = now + 5.0
            lat = self._stats.latency_ms[-1] if self._stats.latency_ms else float("nan")
            fps = self._stats.live_fps or 0.0
            self._log(f"{self._stats.frames_processed} frames, {fps:.1f} FPS, latency {lat:.0f} ms")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
