"""Faults: a capture process killed while running is restarted and reported; SIGKILL of
the main process leaves no process and no shared memory; stale segments of a crashed
run are swept at the next start, and nobody else's are touched."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from multiprocessing import resource_tracker, shared_memory

import pytest

from helpers import StreamProcess, descendants, running, segments_of, wait_until
from stream.pipeline.ring import sweep_stale_segments
from stream.transport.subscribe import Subscriber

ARGS = (
    "--camera",
    "synthetic",
    "--size",
    "320x240",
    "--weights",
    "none",
    "--stride",
    "0.2",
    "--log-level",
    "info",
)


@dataclasses.dataclass
class Faulted:
    """What a run went through: its video capture process SIGKILLed (and restarted),
    then the main process SIGKILLed."""

    victim: int  # the capture process killed
    preds: list  # predictions after the kill
    statuses: list  # heartbeats after the kill
    err: str
    children: set[int]  # the run's processes before its main process was killed
    segments: set[str]  # its shared memory then
    survivors: set[int]  # of `children`, still running after it
    segments_after: set[str]  # of `segments`, still in /dev/shm after it


def _video(status) -> dict:
    return status.body["sources"]["video"]


@pytest.fixture(scope="module")
def faulted(x3d_xs_compiled) -> Faulted:
    stream = StreamProcess(*ARGS)
    try:
        with Subscriber(stream.endpoint, topics=("pred.", "status.")) as sub:

            def recv():
                assert stream.proc.poll() is None, stream.wait()[1]
                try:
                    return sub.recv(timeout=1.0)
                except TimeoutError:
                    return None

            # Until the inference attaches the rings, its heartbeat names no capture process;
            # the first prediction can come before the next heartbeat.
            seen_pred, status = False, None
            deadline = time.monotonic() + 180
            while not (seen_pred and status and "capture-video" in status.body["processes"]):
                assert time.monotonic() < deadline, "no prediction and heartbeat naming the capture"
                if (msg := recv()) is not None:
                    seen_pred |= msg.topic.startswith("pred.")
                    status = msg if msg.topic.startswith("status.") else status
            victim = status.body["processes"]["capture-video"]
            os.kill(victim, signal.SIGKILL)
            # Until the restart shows, predictions have resumed and one says it had a gap.
            preds, statuses = [], []
            deadline = time.monotonic() + 180
            while not (
                statuses
                and _video(statuses[-1])["restarts"] >= 1
                and _video(statuses[-1])["state"] == "up"
                and len(preds) >= 5
                and any(any("video gap" in d for d in p.body["degraded"]) for p in preds)
            ):
                assert time.monotonic() < deadline, (
                    f"after the kill: {len(preds)} predictions, last heartbeat "
                    f"{statuses[-1].body if statuses else None}"
                )
                if (msg := recv()) is not None:
                    (preds if msg.topic.startswith("pred.") else statuses).append(msg)
        children = descendants(stream.proc.pid)
        segments = segments_of(stream.proc.pid)
        stream.proc.kill()
        stream.proc.wait(30)
        deadline = time.monotonic() + 60
        while (running(children) or segments_of(stream.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors, segments_after = running(children), segments_of(stream.proc.pid)
        _, err = stream.wait(60)
    finally:
        stream.kill()
    return Faulted(victim, preds, statuses, err, children, segments, survivors, segments_after)


@pytest.mark.e2e
def test_killed_capture_is_restarted_and_reported(faulted):
    video = _video(faulted.statuses[-1])
    assert video["state"] == "up" and video["restarts"] == 1
    assert video["last_failure"] == "exit code -9"
    assert faulted.statuses[-1].body["processes"]["capture-video"] != faulted.victim
    assert "capture-video stopped" in faulted.err and "restart 1" in faulted.err
    # predictions resumed, and the windows across the outage say they had a gap
    assert len(faulted.preds) >= 5
    assert any(any("video gap" in d for d in p.body["degraded"]) for p in faulted.preds)
    for p in faulted.preds:  # never built from frames older than the window's span
        w = p.body["window"]
        assert (w["end_ns"] - w["start_ns"]) / 1e9 <= 1.2 + 0.1
        assert w["end_ns"] == p.body["t"]["capture_ns"]


@pytest.mark.e2e
def test_sigkill_of_the_main_process_leaves_nothing(faulted):
    assert faulted.children and faulted.segments
    assert not faulted.survivors, "children outlived a SIGKILLed parent"
    assert not faulted.segments_after, "shared memory left after SIGKILL of the parent"


def _orphan_segment(name: str) -> None:
    """A segment nobody owns any more (as after a crash of every process of a run)."""
    shm = shared_memory.SharedMemory(name=name, create=True, size=4096)
    resource_tracker.unregister(shm._name, "shared_memory")  # our tracker must not clean it up
    shm.close()


def test_sweep_removes_only_stale_segments_of_our_naming():
    dead = 2**22 + 12345  # above the default pid_max: no such process
    stale = f"avstream_frames_{dead}_abcdef"
    live = f"avstream_audio_{os.getpid()}_123abc"  # this test runs: not stale
    foreign = f"someone_else_{dead}_abcdef"
    for name in (stale, live, foreign):
        _orphan_segment(name)
    try:
        removed = sweep_stale_segments()
        assert stale in removed
        assert not os.path.exists(f"/dev/shm/{stale}")
        assert os.path.exists(f"/dev/shm/{live}") and os.path.exists(f"/dev/shm/{foreign}")
    finally:
        for name in (stale, live, foreign):
            try:
                os.unlink(f"/dev/shm/{name}")
            except FileNotFoundError:
                pass


def test_a_ring_plan_sweeps_stale_segments_first(caplog):
    """stream.run and stream.record sweep before they make rings: their RingPlan does."""
    from stream.pipeline.ring_plan import RingPlan

    stale = f"avstream_frames_{2**22 + 12346}_fedcba"  # no such process
    _orphan_segment(stale)
    try:
        with caplog.at_level(logging.INFO, logger="stream.pipeline.ring_plan"):
            RingPlan()
        assert not os.path.exists(f"/dev/shm/{stale}")
        assert f"removed shared memory {stale} left by a crashed run" in caplog.text
    finally:
        if os.path.exists(f"/dev/shm/{stale}"):
            os.unlink(f"/dev/shm/{stale}")


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_start_up_exits_cleanly(run_stream, sig):
    stream = run_stream(*ARGS)
    # the capture and inference processes are spawned: start-up (loading the model) is on
    wait_until(lambda: len(descendants(stream.proc.pid)) >= 2, "no child processes", 120)
    code, err = stream.stop(sig)
    assert code == 0, err
    assert "running:" not in err, err  # the signal came during start-up
    assert "Traceback" not in err
    assert not segments_of(stream.proc.pid)
