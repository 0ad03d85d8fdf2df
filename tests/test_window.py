"""Window geometry and sampler (irregular and dropped timestamps), and scheduler."""

from __future__ import annotations

import numpy as np
import pytest

from stream.errors import FrameLost
from stream.pipeline.ring import FrameRing
from stream.pipeline.window import (
    PathwaySpec,
    Scheduler,
    Window,
    WindowGeometry,
    WindowSampler,
    nearest,
    target_times,
)

MS = 1_000_000
X3D_XS = WindowGeometry((PathwaySpec(4, 0.4),))
SLOWFAST_8X8 = WindowGeometry((PathwaySpec(2, 8 / 30), PathwaySpec(8, 2 / 30)))


def test_target_times_end_at_newest_and_step_by_interval():
    t = target_times(10_000 * MS, PathwaySpec(frames=4, interval_s=0.4))
    assert t.tolist() == [8_800 * MS, 9_200 * MS, 9_600 * MS, 10_000 * MS]


def test_nearest_irregular():
    times = np.array([0, 10, 25, 27, 60, 100], dtype=np.int64)
    targets = np.array([-5, 4, 6, 17, 18, 26, 43, 44, 80, 200], dtype=np.int64)
    # ties go to the earlier frame (17.5 is the midpoint of 10 and 25; 43.5 of 27 and 60)
    assert nearest(times, targets).tolist() == [0, 0, 1, 1, 2, 2, 3, 4, 4, 5]
    assert nearest(np.array([7]), np.array([0, 100])).tolist() == [0, 0]


def test_plan_targets_centre_and_audio_window():
    g = WindowGeometry(
        (PathwaySpec(2, 0.3), PathwaySpec(4, 0.2)), audio_samples=8000, sample_rate=16_000
    )
    plan = g.plan(10_000 * MS)
    assert [t.tolist() for t in plan.targets] == [
        [9_700 * MS, 10_000 * MS],
        [9_400 * MS, 9_600 * MS, 9_800 * MS, 10_000 * MS],
    ]
    assert (g.span_ns, plan.start_ns, plan.oldest_ns) == (600 * MS, 9_400 * MS, 9_350 * MS)
    # 0.5 s of sound centred on the video window's centre
    assert (plan.centre_ns, plan.audio_first_ns, plan.audio_samples) == (
        9_700 * MS,
        9_450 * MS,
        8000,
    )
    assert g.ends_within_sound(2.0) == (
        550 * MS,
        2_050 * MS,
    )  # sound from end - 550 ms to end - 50 ms
    assert WindowGeometry((PathwaySpec(4, 0.4),)).plan(0).audio_first_ns is None
    with pytest.raises(ValueError):
        WindowGeometry(())


def test_plan_chooses_only_frames_of_the_window():
    plan = WindowGeometry((PathwaySpec(3, 0.5),)).plan(1100 * MS)  # targets 100, 600, 1100
    assert plan.oldest_ns == 50 * MS  # 50 ms of tolerance before the first target
    # 40 ms is nearest to the first target, but older than the window: 300 ms instead
    # (and the gap shows); at 60 ms it lies inside
    times = np.array([0, 40, 300, 900, 1000, 1100], dtype=np.int64) * MS
    assert plan.choose(times)[0].tolist() == [2, 2, 5]
    times[1] = 60 * MS
    assert plan.choose(times)[0].tolist() == [1, 2, 5]


def _fill(ring: FrameRing, times_ms: list[float]) -> None:
    frame = np.empty(ring.shape, dtype=np.uint8)
    for i, t in enumerate(times_ms):
        frame.fill(i % 256)
        ring.write(frame, round(t * MS))


def _sample(ring: FrameRing, geometry: WindowGeometry) -> Window | None:
    got = WindowSampler(ring, geometry).sample_in_place(lambda w: None)
    return None if got is None else got[0]


def _in_place(window: Window, pathway: int, ring: FrameRing) -> list[np.ndarray]:
    """The frames of one pathway, read where they lie in the ring."""
    frames, n = window.in_ring[pathway], int(np.prod(ring.shape))
    return [frames.buffer[o : o + n].reshape(ring.shape) for o in frames.offsets.tolist()]


@pytest.fixture
def ring():
    r = FrameRing.create(128, 8, 8, 3)
    yield r
    r.close()


def test_sampler_picks_nearest_frame_per_target_at_any_rate(ring):
    # 60 fps camera for 1.5 s; X3D-XS-like pathway: 4 frames every 0.4 s
    times = [i * 1000 / 60 for i in range(91)]
    _fill(ring, times)
    w = _sample(ring, X3D_XS)
    assert w is not None
    end = times[-1]
    expected = [int(np.argmin([abs(t - (end - k * 400)) for t in times])) for k in (3, 2, 1, 0)]
    assert w.seqs[0].tolist() == expected
    assert [int(f[0, 0, 0]) for f in _in_place(w, 0, ring)] == [s % 256 for s in expected]
    assert w.end_ns == round(end * MS) and w.start_ns == round(times[expected[0]] * MS)


def test_sampler_with_dropped_and_jittered_frames(ring):
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.uniform(20, 45, size=60))  # irregular ~30 fps
    keep = np.ones(60, bool)
    keep[30:40] = False  # a 10-frame drop-out in the middle
    times = times[keep].tolist()
    _fill(ring, times)
    w = _sample(ring, WindowGeometry((PathwaySpec(5, 0.2),)))
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
    w = _sample(ring, X3D_XS)
    seqs, times = ring.snapshot()
    used = times[np.isin(seqs, w.seqs[0])]
    assert used.min() >= times[-1] - 1.2e9 - 50 * MS
    assert w.max_gap_ns > 400 * MS  # reported, so the prediction is marked degraded


def test_sampler_waits_for_history(ring):
    assert not WindowSampler(ring, X3D_XS).covered()  # nothing yet
    _fill(ring, [i * 33.3 for i in range(10)])  # 0.3 s of history
    assert _sample(ring, X3D_XS) is None  # needs 1.2 s
    assert not WindowSampler(ring, X3D_XS).covered()  # says so without cutting
    short = WindowGeometry((PathwaySpec(4, 0.1),))
    assert WindowSampler(ring, short).covered() and _sample(ring, short) is not None


def test_sampler_two_pathways_share_frames(ring):
    _fill(ring, [i * 1000 / 30 for i in range(40)])
    w = _sample(ring, SLOWFAST_8X8)
    assert [len(s) for s in w.seqs] == [2, 8]
    assert set(w.seqs[0].tolist()) <= set(w.seqs[1].tolist())
    assert w.frames == 8  # distinct frames
    for p, seqs in enumerate(w.seqs):
        assert [int(f[0, 0, 0]) for f in _in_place(w, p, ring)] == [s % 256 for s in seqs.tolist()]


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


def test_in_place_window_holds_the_frames_it_names(ring):
    times = [i * 1000 / 30 for i in range(40)]
    _fill(ring, times)
    window, result = WindowSampler(ring, SLOWFAST_8X8).sample_in_place(lambda w: "used")
    assert result == "used"
    for p, seqs in enumerate(window.seqs):
        for seq, frame in zip(seqs.tolist(), _in_place(window, p, ring)):
            assert (frame == ring.read(seq)[0]).all()
    newest = int(window.seqs[0][-1])
    assert newest == window.newest_seq == 39
    assert (window.newest_frame() == ring.read(newest)[0]).all()
    assert (window.start_ns, window.end_ns) == (
        round(times[int(window.seqs[1][0])] * MS),
        round(times[-1] * MS),
    )
    assert window.plan.end_ns == window.end_ns  # the window ends at the newest frame


def test_in_place_window_overwritten_during_use_is_used_again_on_newer_frames(ring):
    times = [i * 1000 / 30 for i in range(400)]
    _fill(ring, times[:128])  # the ring is full: the next write takes the oldest slot
    sampler = WindowSampler(ring, X3D_XS)
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
