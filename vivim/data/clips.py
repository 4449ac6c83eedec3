"""Which frames make up the clip for frame i (the paper's clamped ±T/2 window, or a causal 'newest' window)."""

from __future__ import annotations

from vivim.constants import output_frame_index


def clip_indices(i: int, length: int, frames: int, output_frame: str = "centre") -> list[int]:
    """Frame indices of the T-frame clip whose `output_frame` position is frame `i` of a `length`-frame video.

    centre: i sits at position T // 2 (T = 5 → i-2 … i+2); newest: the clip ends at i (i-T+1 … i), usable live.
    Indices past either end are clamped, so edge frames repeat (as in the released Vivim code).
    """
    if length < 1:
        raise ValueError("a video needs at least one frame")
    if not 0 <= i < length:
        raise IndexError(f"frame {i} is outside a video of {length} frames")
    start = i - output_frame_index(output_frame, frames)
    return [min(max(start + k, 0), length - 1) for k in range(frames)]
