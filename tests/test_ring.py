"""FrameRing under a concurrent writer in another process: no torn reads, overwrite
semantics, several readers, end of stream, and nothing left in /dev/shm; the ring plan
of stream.run and stream.record."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import numpy as np
import pytest

from stream.control import CAPTURE_AUDIO, CAPTURE_VIDEO, VideoOpened
from stream.errors import EndOfStream, FrameLost, UserError
from stream.pipeline.ring import FrameRing
from stream.pipeline.ring_plan import AUDIO_MAX_BLOCK, RingPlan, audio_capacity, ring_slots

SHAPE = (48, 64, 3)


def _shm_exists(name: str) -> bool:
    return os.path.exists(f"/dev/shm/{name}")


def _writer(name: str, count: int, period_s: float) -> None:
    """Writes frames whose every byte is seq % 251, with t = monotonic_ns()."""
    ring = FrameRing.attach(name)
    frame = np.empty(ring.shape, dtype=np.uint8)
    for seq in range(count):
        frame.fill(seq % 251)
        ring.write(frame, time.monotonic_ns())
        if period_s:
            time.sleep(period_s)
    ring.close_writer()
    ring.close()


def _reader(name: str, result_queue) -> None:
    """Reads everything it can until end of stream; reports (frames, lost, torn)."""
    ring = FrameRing.attach(name)
    last, got, lost, torn = -1, 0, 0, 0
    out = np.empty(ring.shape, dtype=np.uint8)
    try:
        while True:
            try:
                seq, frame, _ = ring.read_next(last, timeout=5.0, out=out)
            except EndOfStream:
                break
            lost += seq - last - 1
            if not (frame == seq % 251).all():
                torn += 1
            last = seq
            got += 1
    finally:
        ring.close()
    result_queue.put((got, lost, torn, last))


@pytest.fixture
def ring():
    r = FrameRing.create(8, *SHAPE)
    yield r
    r.close()
    assert not _shm_exists(r.name)


def test_write_read_roundtrip_and_overwrite(ring):
    frame = np.zeros(SHAPE, dtype=np.uint8)
    for seq in range(20):
        frame.fill(seq)
        assert ring.write(frame, 1000 + seq) == seq
    assert ring.next_seq == 20
    seqs, times = ring.snapshot()
    assert seqs.tolist() == list(range(12, 20))  # the 8 newest, oldest first
    assert times.tolist() == [1000 + s for s in range(12, 20)]
    got, t = ring.read(19)
    assert (got == 19).all() and t == 1019
    with pytest.raises(FrameLost):
        ring.read(11)  # overwritten
    with pytest.raises(FrameLost):
        ring.read(20)  # not written yet


def test_slow_reader_sees_the_jump(ring):
    frame = np.zeros(SHAPE, dtype=np.uint8)
    for seq in range(3):
        ring.write(frame, seq)
    seq, _, _ = ring.read_next(-1)
    assert seq == 0
    for seq in range(3, 30):
        ring.write(frame, seq)
    seq, _, _ = ring.read_next(0)
    assert seq == 22  # 1..21 were lost: the oldest still held is 30 - 8
    with pytest.raises(TimeoutError):
        ring.read_next(29, timeout=0.05)
    ring.close_writer()
    with pytest.raises(EndOfStream):
        ring.read_next(29)


def test_wrong_frame_is_refused(ring):
    with pytest.raises(ValueError):
        ring.write(np.zeros((10, 10, 3), np.uint8), 0)
    with pytest.raises(ValueError):
        ring.write(np.zeros(SHAPE, np.float32), 0)


def _in_place_reader(name: str, result_queue) -> None:
    """Reads frames where they lie (`frames` + `check` before and after); reports
    (frames that passed the checks, frames refused, torn frames that passed)."""
    ring = FrameRing.attach(name)
    n = int(np.prod(ring.shape))
    passed = refused = torn = 0
    try:
        while not ring.closed or passed + refused == 0:
            seq = np.array([ring.next_seq - 1])
            if seq[0] < 0:
                continue
            try:
                ring.check(seq)
                frames = ring.frames(seq)
                off = int(frames.offsets[0])
                values = frames.buffer[off : off + n : 97].copy()  # "use" the frame in place
                ring.check(seq)
            except FrameLost:
                refused += 1
                continue
            passed += 1
            torn += int((values != seq[0] % 251).any())
    finally:
        ring.close()
    result_queue.put((passed, refused, torn))


def test_in_place_reads_under_a_concurrent_writer_never_pass_torn():
    ctx = mp.get_context("spawn")
    ring = FrameRing.create(2, 240, 320, 3)  # two slots: the writer is always close behind
    try:
        queue = ctx.Queue()
        reader = ctx.Process(target=_in_place_reader, args=(ring.name, queue))
        reader.start()
        time.sleep(0.5)
        writer = ctx.Process(target=_writer, args=(ring.name, 3000, 0.0))
        writer.start()
        writer.join(60)
        assert writer.exitcode == 0
        passed, refused, torn = queue.get(timeout=30)
        reader.join(10)
        assert reader.exitcode == 0
        assert torn == 0 and passed > 0
        assert refused > 0, "the test did not create any pressure"
    finally:
        ring.close()


def test_frames_in_place_point_at_the_slots(ring):
    frame = np.zeros(SHAPE, dtype=np.uint8)
    for seq in range(11):
        frame.fill(seq)
        ring.write(frame, seq)
    frames = ring.frames(np.array([4, 10]))
    n = int(np.prod(SHAPE))
    for seq, off in zip((4, 10), frames.offsets.tolist()):
        assert (frames.buffer[off : off + n] == seq).all()
    assert (frames.height, frames.width) == SHAPE[:2]
    ring.check(np.array([3, 10]))
    with pytest.raises(FrameLost):
        ring.check(np.array([2, 10]))  # overwritten by 10
    with pytest.raises(FrameLost):
        ring.check(np.array([11]))  # not written yet
    del frames  # views of the segment must go before close()


def test_concurrent_writer_several_readers_no_torn_reads():
    """A writer process at full speed against three reader processes on a small ring:
    readers lose frames (overwrite semantics) but never return a torn one."""
    ctx = mp.get_context("spawn")
    ring = FrameRing.create(4, 240, 320, 3)  # few slots, big frames: maximal pressure
    try:
        queue = ctx.Queue()
        readers = [ctx.Process(target=_reader, args=(ring.name, queue)) for _ in range(3)]
        for p in readers:
            p.start()
        time.sleep(0.5)  # let the readers attach and start polling
        writer = ctx.Process(target=_writer, args=(ring.name, 3000, 0.0))
        writer.start()
        writer.join(60)
        assert writer.exitcode == 0
        results = [queue.get(timeout=30) for _ in readers]
        for p in readers:
            p.join(10)
            assert p.exitcode == 0
        for got, lost, torn, last in results:
            assert torn == 0
            assert got > 0 and last == 2999
            assert got + lost == 3000
        assert sum(lost for _, lost, _, _ in results) > 0, "the test did not create any pressure"
    finally:
        ring.close()
    assert not _shm_exists(ring.name)


def test_paced_writer_reader_loses_nothing():
    ctx = mp.get_context("spawn")
    ring = FrameRing.create(16, *SHAPE)
    try:
        queue = ctx.Queue()
        reader = ctx.Process(target=_reader, args=(ring.name, queue))
        reader.start()
        time.sleep(0.5)
        writer = ctx.Process(target=_writer, args=(ring.name, 200, 0.002))
        writer.start()
        writer.join(30)
        got, lost, torn, last = queue.get(timeout=30)
        reader.join(10)
        assert (got, lost, torn, last) == (200, 0, 0, 199)
    finally:
        ring.close()


def test_owner_unlinks_and_attach_to_missing_fails():
    ring = FrameRing.create(4, *SHAPE)
    name = ring.name
    reader = FrameRing.attach(name)
    reader.close()
    assert _shm_exists(name)  # a reader closing does not unlink
    ring.close()
    ring.close()  # idempotent
    assert not _shm_exists(name)
    from stream.errors import RingError

    with pytest.raises(RingError):
        FrameRing.attach(name)


def test_ring_plan_sizes_creates_hands_out_and_unlinks():
    """stream.run's and stream.record's rings: sized from the seconds their reader needs,
    handed to both capture processes with one start time, unlinked by close()."""
    video = VideoOpened(kind="file", width=64, height=48, fps=30.0, paced=True, live=False)
    assert ring_slots(1.2, 30.0) == 70  # (1.2 s + the 1 s margin) at 30 fps, + 4
    assert ring_slots(0.1, 5.0) == 16  # never fewer than 16
    assert audio_capacity(3.0, 16000) == 5 * 16000 + AUDIO_MAX_BLOCK  # + a margin each side
    plan = RingPlan()
    try:
        plan.create(video, 1.2, audio_rate=16000, audio_s=3.0)
        names = [plan.frames.name, plan.audio.name]
        assert plan.frames.slots == 70 and plan.frames.shape == (48, 64, 3)
        assert plan.audio.capacity == audio_capacity(3.0, 16000)
        assert plan.audio.sample_rate == 16000
        handout = plan.handout()
        assert handout[CAPTURE_VIDEO].name == plan.frames.name
        assert handout[CAPTURE_AUDIO].name == plan.audio.name
        assert handout[CAPTURE_VIDEO].start_ns == handout[CAPTURE_AUDIO].start_ns
        assert all(_shm_exists(n) for n in names)
    finally:
        plan.close()
    assert not any(_shm_exists(n) for n in names)
    plan.close()  # again: nothing to do
    video_only = RingPlan()
    try:
        video_only.create(video, 1.2)
        assert video_only.audio is None and list(video_only.handout()) == [CAPTURE_VIDEO]
    finally:
        video_only.close()


def test_ring_plan_refuses_more_than_dev_shm_holds():
    huge = VideoOpened(
        kind="camera", width=100_000, height=100_000, fps=60.0, paced=False, live=True
    )
    plan = RingPlan()
    with pytest.raises(
        UserError,
        match=r"the frame ring needs \d+ MiB of shared memory but "
        r"/dev/shm has \d+ MiB free: capture smaller frames with --size",
    ):
        plan.create(huge, 2.0)
    assert plan.frames is None
