"""The rolling buffer of the last T frames and the rule that says which frame a mask belongs to.

Each incoming frame is preprocessed once by the backend into a device-resident item (a normalised tensor,
a feature map, or a TensorRT device buffer); the ring keeps the last T items by reference, oldest first.

Start-up fills the ring by repeating the first frame; the end of a finite stream is padded by repeating the
last one. With this padding the clip used for frame k is frames clamp(k - i, 0, N - 1) for the T window
positions, exactly Vivim's own clip sampling at the ends of a sequence.

The output position is T - 1 for `newest` (no lag) and T // 2 for `centre` (the paper's protocol: the mask of
frame k is ready once frame k + lag has arrived, lag = T - 1 - T // 2: T // 2 for odd T, one less for even T).
Every pushed frame is emitted exactly once, in order: N frames in -> N masks out, once `pad` has been called
until `pending` is 0 at the end of the stream (lag times).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, List, Optional, TypeVar

from vivim.constants import output_frame_index

Item = TypeVar("Item")


class Ring(Generic[Item]):
    """Fixed-size ring of references, oldest first; the first push fills every slot (warm-up)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"ring size must be at least 1, got {size}")
        self.size = size
        self._slots: List[Any] = []
        self._head = 0  # index of the oldest slot once full

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def empty(self) -> bool:
        return not self._slots

    def push(self, item: Item) -> None:
        if not self._slots:
            self._slots = [item] * self.size  # warm-up: repeat the first frame
            self._head = 0
            return
        self._slots[self._head] = item  # overwrite the oldest
        self._head = (self._head + 1) % self.size

    def newest(self) -> Item:
        if not self._slots:
            raise IndexError("empty ring")
        return self._slots[(self._head - 1) % self.size]

    def items(self) -> List[Item]:
        """Oldest -> newest."""
        return self._slots[self._head :] + self._slots[: self._head]

    def __getitem__(self, position: int) -> Item:
        """Position in time order: 0 = oldest, size - 1 (or -1) = newest."""
        if not self._slots:
            raise IndexError("empty ring")
        if not -self.size <= position < self.size:
            raise IndexError(f"ring position {position} outside 0..{self.size - 1}")
        return self._slots[(self._head + position) % self.size]


@dataclass
class Emission(Generic[Item]):
    """A frame whose mask can be computed now: its record and the clip (oldest first) around it."""

    record: Any
    clip: List[Any]
    index: int  # position of `record` inside `clip`


class ClipWindow:
    """Pairs each frame record with its backend item and decides when a frame's mask is due."""

    def __init__(self, frames: int, output_frame: "str | int") -> None:
        self.frames = frames
        self.output_frame = output_frame  # as given (centre, newest or an index), for messages and the summary
        self.index = output_frame_index(output_frame, frames)
        self.lag = frames - 1 - self.index  # frames that must arrive after a frame before its mask is due
        self._records: Ring[Any] = Ring(frames)
        self._items: Ring[Any] = Ring(frames)
        self._pushed = 0  # real frames
        self._pads = 0  # repeats of the last frame at the end of the stream
        self._emitted = 0  # frames 0.._emitted-1 have had their mask

    @property
    def pending(self) -> int:
        """Frames pushed but not yet emitted (at most `lag`); call `pad` until this is 0 at the end of a stream."""
        return self._pushed - self._emitted

    def push(self, record: Any, item: Any) -> Optional[Emission]:
        if self._pads:
            raise RuntimeError("cannot push a frame after the end of the stream was padded")
        self._records.push(record)
        self._items.push(item)
        self._pushed += 1
        return self._due()

    def pad(self) -> Optional[Emission]:
        """Repeat the newest frame (no new capture, no recompute) to flush the lagged frames at the end."""
        if self._records.empty or self.pending == 0:
            return None
        self._records.push(self._records.newest())
        self._items.push(self._items.newest())
        self._pads += 1
        return self._due()

    def _due(self) -> Optional[Emission]:
        # After `pushed` frames and `pads` repeats the output slot holds frame pushed - 1 + pads - lag (clamped
        # at 0 by the warm-up fill); the next frame to emit is due once that number reaches it.
        if self._emitted >= self._pushed or self._pushed - 1 + self._pads - self.lag < self._emitted:
            return None
        self._emitted += 1
        return Emission(record=self._records[self.index], clip=self._items.items(), index=self.index)
