"""Content fingerprints of videos. A checkpoint records those of the videos it trained on, so vivim-eval can tell
when a video it scores is a byte-identical copy of one: a training folder copied elsewhere, or its videos rearranged
into another layout or split. Re-encoded frames are not recognised."""

from __future__ import annotations

import hashlib

from vivim.data.layouts import VideoRecord


def video_fingerprint(video: VideoRecord) -> str | None:
    """16 hex digits over the frame count and the bytes of the first, middle and last frame files (None if one of
    them cannot be read): cheap enough to compute for every video at the start of a run or an evaluation."""
    frames = video.frames
    if not frames:
        return None
    digest = hashlib.sha256(str(len(frames)).encode())
    for index in sorted({0, len(frames) // 2, len(frames) - 1}):
        try:
            digest.update(frames[index].read_bytes())
        except OSError:
            return None
    return digest.hexdigest()[:16]


def fingerprints(videos: list[VideoRecord]) -> list[str]:
    """The fingerprints of `videos` that could be computed, sorted (a set, recorded compactly)."""
    return sorted({fp for fp in map(video_fingerprint, videos) if fp is not None})
