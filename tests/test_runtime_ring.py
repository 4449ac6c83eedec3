"""Ring buffer and clip-window semantics: warm-up by repetition, centre vs newest alignment, end padding."""

from __future__ import annotations

import random

import pytest

from vivim.runtime.ring import ClipWindow, Ring


def test_ring_warm_up_repeats_first_item_then_slides():
    ring = Ring(4)
    assert ring.empty
    ring.push("a")
    assert ring.items() == ["a"] * 4
    for item in "bcdef":
        ring.push(item)
    assert ring.items() == list("cdef")
    assert ring.newest() == "f"
    assert [ring[i] for i in range(4)] == list("cdef")
    assert ring[-1] == "f"
    with pytest.raises(IndexError):
        ring[4]


def _run_stream(frames: int, output_frame: str, n: int):
    """Push n frames then pad; record (frame emitted, clip of frame ids, push count when emitted)."""
    window = ClipWindow(frames, output_frame)
    events = []
    for k in range(n):
        emission = window.push(record=k, item=f"item{k}")
        if emission is not None:
            events.append((emission.record, emission.clip, emission.index, k))
    pads = 0
    while window.pending:
        emission = window.pad()
        pads += 1
        if emission is not None:
            events.append((emission.record, emission.clip, emission.index, None))
    return window, events, pads


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("output_frame", ["centre", "newest"])
@pytest.mark.parametrize("n", [1, 2, 3, 9])
def test_every_frame_emitted_once_with_clamped_clip(frames, output_frame, n):
    _check_stream(frames, output_frame, n)


def _check_stream(frames: int, output_frame: str, n: int) -> None:
    window, events, pads = _run_stream(frames, output_frame, n)
    index = frames - 1 if output_frame == "newest" else frames // 2
    lag = frames - 1 - index
    assert window.index == index and window.lag == lag
    # N frames in -> N masks out, in order
    assert [e[0] for e in events] == list(range(n))
    assert pads <= lag
    for record, clip, idx, pushed_at in events:
        # Vivim's clip for frame k: frames clamp(k - index + j, 0, n - 1), j = 0..T-1
        expected = [f"item{min(max(record - index + j, 0), n - 1)}" for j in range(frames)]
        assert clip == expected
        assert idx == index and clip[idx] == f"item{record}"  # the mask belongs to the frame drawn
        if pushed_at is not None:  # emitted during the stream: exactly `lag` frames after its own arrival
            assert pushed_at == record + lag


def test_centre_lags_and_newest_does_not():
    _, centre, _ = _run_stream(5, "centre", 6)
    _, newest, _ = _run_stream(5, "newest", 6)
    # newest: frame k is due when frame k arrives; centre: when frame k + 2 arrives
    assert [(r, at) for r, _, _, at in newest] == [(k, k) for k in range(6)]
    assert [(r, at) for r, _, _, at in centre] == [(0, 2), (1, 3), (2, 4), (3, 5), (4, None), (5, None)]
    # warm-up: the first centre clip repeats frame 0 on the left
    assert centre[0][1] == ["item0", "item0", "item0", "item1", "item2"]
    assert newest[0][1] == ["item0"] * 5


def test_random_streams_match_the_clamp_formula():
    seed = random.SystemRandom().randrange(1 << 30)  # fresh cases every run; the seed is in the failure message
    rng = random.Random(seed)
    for _ in range(50):
        frames, n, output = rng.randint(1, 9), rng.randint(1, 40), rng.choice(["centre", "newest"])
        try:
            _check_stream(frames, output, n)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}: T={frames} n={n} {output}: {exc}") from None


def test_push_after_padding_is_refused():
    window = ClipWindow(3, "centre")
    window.push(0, "a")
    while window.pending:
        window.pad()
    assert window.pad() is None
    window2 = ClipWindow(5, "centre")
    window2.push(0, "a")
    window2.pad()
    with pytest.raises(RuntimeError):
        window2.push(1, "b")
