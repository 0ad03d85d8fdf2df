"""Window sampler (irregular and dropped timestamps) and scheduler."""

from __future__ import annotations

import numpy as np
import pytest

from stream.errors import FrameLost
from stream.pipeline.ring import FrameRing
from stream.pipeline.window import PathwaySpec, Scheduler, WindowSampler, nearest, target_times

MS = 1_000_000


def test_target_times_end_at_newest_and_step_by_interval():
    t = target_times(10_000 * MS, PathwaySpec(frames=4, interval_s=0.4))
    assert t.tolist() == [8_800 * MS, 9_200 * MS, 9_600 * MS, 10_000 * MS]


def test_nearest_irregular():
    times = np.array([0, 10, 25, 27, 60, 100], dtype=np.int64)
    targets = np.array([-5, 4, 6, 17, 18, 26, 43, 44, 80, 200], dtype=np.int64)
    # ties go to the earlier frame (17.5 is the midpoint of 10 and 25; 43.5 of 27 and 60)
    assert nearest(times, targets).tolist() == [0, 0, 1, 1, 2, 2, 3, 4, 4, 5]
    assert nearest(np.array([7]), np.array([0, 100])).tolist() == [0, 0]


def _fill(ring: FrameRing, times_ms: list[float]) -> None:
    frame = np.empty(ring.shape, dtype=np.uint8)
    for i, t in enumerate(times_ms):
        frame.fill(i % 256)
        ring.write(frame, round(t * MS))


@pytest.fixture
def ring():
    r = FrameRing.create(128, 8, 8, 3)
    yield r
    r.close()


def test_sampler_picks_nearest_frame_per_target_at_any_rate(ring):
    # 60 fps camera for 1.5 s; X3D-XS-like pathway: 4 frames every 0.4 s
    times = [i * 1000 / 60 for i in range(91)]
    _fill(ring, times)
    w = WindowSampler(ring, [PathwaySpec(4, 0.4)]).sample()
    assert w is not None
    end = times[-1]
    expected = [int(np.argmin([abs(t - (end - k * 400)) for t in times])) for k in (3, 2, 1, 0)]
    assert w.seqs[0].tolist() == expected
    assert [int(c[0, 0, 0]) for c in w.clips[0]] == [s % 256 for s in expected]
    assert w.end_ns == round(end * MS) and w.start_ns == round(times[expected[0]] * MS)


def test_sampler_with_dropped_and_jittered_frames(ring):
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.uniform(20, 45, size=60))  # irregular ~30 fps
    keep = np.ones(60, bool)
    keep[30:40] = False  # a 10-frame drop-out in the middle
    times = times[keep].tolist()
    _fill(ring, times)
    spec = PathwaySpec(5, 0.2)
    w = WindowSampler(ring, [spec]).sample()
    targets = times[-1] - np.arange(4, -1, -1) * 200
    picked = np.array(times)[w.seqs[0]]
    # nearest frame per target, among the window's own frames (none from before it,
    # 50 ms tolerance): the first target falls in the drop-out here
    allowed = np.array([t for t in times if t >= targets[0] - 50])
    assert allowed[0] > times[0]
    for tgt, got in zip(targets, picked):
        assert abs(got - tgt) == min(abs(allowed - tgt))
    assert w.max_gap_ns / MS == pytest.approx(max(abs(picked - targets)), abs=1e-3)
    assert w.max_gap_ns > 100 * MS  # the drop-out shows


def test_sampler_never_uses_frames_from_before_the_window(ring):
    # 1 s of frames, a 1.5 s outage, then 0.5 s: the window (1.2 s) may not reach back
    # across the outage to the old frames, although they are nearest to its early targets.
    _fill(ring, [i * 33.3 for i in range(31)] + [2500 + i * 33.3 for i in range(16)])
    w = WindowSampler(ring, [PathwaySpec(4, 0.4)]).sample()
    seqs, times = ring.snapshot()
    used = times[np.isin(seqs, w.seqs[0])]
    assert used.min() >= times[-1] - 1.2e9 - 50 * MS
    assert w.max_gap_ns > 400 * MS  # reported, so the prediction is marked degraded


def test_sampler_waits_for_history(ring):
    _fill(ring, [i * 33.3 for i in range(10)])  # 0.3 s of history
    assert WindowSampler(ring, [PathwaySpec(4, 0.4)]).sample() is None  # needs 1.2 s
    assert WindowSampler(ring, [PathwaySpec(4, 0.1)]).sample() is not None


def test_sampler_two_pathways_share_frames(ring):
    _fill(ring, [i * 1000 / 30 for i in range(40)])
    w = WindowSampler(ring, [PathwaySpec(2, 8 / 30), PathwaySpec(8, 2 / 30)]).sample()
    assert [c.shape[0] for c in w.clips] == [2, 8]
    assert set(w.seqs[0].tolist()) <= set(w.seqs[1].tolist())
    assert w.frames == 8  # each distinct frame read once
    for seqs, clip in zip(w.seqs, w.clips):
        assert [int(f[0, 0, 0]) for f in clip] == [s % 256 for s in seqs.tolist()]


def test_scheduler_counts_skipped_ticks_and_never_builds_up():
    s = Scheduler(0.25, start_ns=0)
    assert s.due_in_s(0) == 0
    assert s.advance(100 * MS) == 0 and s.next_tick_ns == 250 * MS  # fast window
    assert s.advance(900 * MS) == 2 and s.next_tick_ns == 1000 * MS  # slow: 2 ticks skipped
    assert s.skipped == 2
    assert s.advance(1200 * MS, count_skipped=False) == 0
    assert s.advance(5000 * MS, count_skipped=False) == 15 and s.skipped == 2
    assert s.next_tick_ns > 5000 * MS  # next tick always in the future: no backlog
    with pytest.raises(ValueError):
        Scheduler(0)


def test_scheduler_restart_starts_a_new_grid_without_skips():
    s = Scheduler(0.5, start_ns=0)
    s.restart(0.033, now_ns=700 * MS)  # warming up at 700 ms: look again at the next frame
    assert s.next_tick_ns == 733 * MS and s.due_in_s(733 * MS) == 0
    assert s.advance(740 * MS) == 0 and s.next_tick_ns == 1233 * MS  # the grid runs from there
    assert s.skipped == 0


def test_in_place_window_is_the_copied_window(ring):
    _fill(ring, [i * 1000 / 30 for i in range(40)])
    sampler = WindowSampler(ring, [PathwaySpec(2, 8 / 30), PathwaySpec(8, 2 / 30)])
    copied = sampler.sample()
    window, result = sampler.sample_in_place(lambda w: "used")
    assert result == "used" and window.clips is None
    assert [s.tolist() for s in window.seqs] == [s.tolist() for s in copied.seqs]
    assert (window.start_ns, window.end_ns, window.frames) == (copied.start_ns, copied.end_ns, 8)
    n = int(np.prod(ring.shape))
    for frames, clip in zip(window.in_ring, copied.clips):
        for off, frame in zip(frames.offsets.tolist(), clip):
            assert (frames.buffer[off : off + n].reshape(ring.shape) == frame).all()
    assert (window.newest_frame() == copied.clips[0][-1]).all()


def test_in_place_window_overwritten_during_use_is_used_again_on_newer_frames(ring):
    times = [i * 1000 / 30 for i in range(400)]
    _fill(ring, times[:128])  # the ring is full: the next write takes the oldest slot
    sampler = WindowSampler(ring, [PathwaySpec(4, 0.4)])
    used = []

    def use(w):
        used.append(w.seqs[0].copy())
        if len(used) == 1:  # the writer laps the window's oldest frame meanwhile
            lapped = int(w.seqs[0][0]) + ring.slots
            _write_from(ring, 128, times[128 : lapped + 1])
        return len(used)

    window, result = sampler.sample_in_place(use)
    assert result == 2 and len(used) == 2
    assert window.seqs[0][-1] > used[0][-1]  # the second try saw the newer frames
    ring.check(window.seqs[0])

    def always_lapped(w):  # a whole ring of newer frames, at 30 fps, every time
        first = ring.next_seq
        _write_from(ring, first, [(first + k) * 1000 / 30 for k in range(ring.slots)])

    with pytest.raises(FrameLost):
        sampler.sample_in_place(always_lapped, retries=2)
    assert sampler.sample_in_place(lambda w: None)[0].frames == 4  # and reads on afterwards


def _write_from(ring: FrameRing, first_seq: int, times_ms: list[float]) -> None:
    frame = np.empty(ring.shape, dtype=np.uint8)
    for i, t in enumerate(times_ms):
        frame.fill((first_seq + i) % 256)
        ring.write(frame, round(t * MS))
