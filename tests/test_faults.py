"""Faults: a capture process killed while running is restarted and reported; SIGKILL of
the main process leaves no process and no shared memory; stale segments of a crashed
run are swept at the next start, and nobody else's are touched."""

from __future__ import annotations

import os
import signal
import time
from multiprocessing import resource_tracker, shared_memory

import pytest

from helpers import descendants, running, shm_segments
from stream.pipeline.ring import sweep_stale_segments
from stream.transport.subscribe import Subscriber

ARGS = ("--camera", "synthetic", "--size", "320x240", "--weights", "none", "--stride", "0.2", "--log-level", "info")


def _collect(sub: Subscriber, seconds: float) -> tuple[list, list]:
    preds, statuses = [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            msg = sub.recv(timeout=max(0.01, end - time.monotonic()))
        except TimeoutError:
            break
        (preds if msg.topic.startswith("pred.") else statuses).append(msg)
    return preds, statuses


def test_killed_capture_is_restarted_and_reported(run_stream):
    stream = run_stream(*ARGS)
    with Subscriber(stream.endpoint, topics=("pred.", "status.")) as sub:
        preds, statuses = _collect(sub, 0)
        # Until the inference attaches the rings, its heartbeat names no capture process;
        # the first prediction can come before the next heartbeat.
        while not (preds and statuses and "capture-video" in statuses[-1].body["processes"]):
            more = _collect(sub, 1.0)
            preds += more[0]
            statuses += more[1]
            assert stream.proc.poll() is None, stream.wait()[1]
        victim = statuses[-1].body["processes"]["capture-video"]
        os.kill(victim, signal.SIGKILL)
        preds, statuses = _collect(sub, 6.0)
    code, err = stream.stop()
    assert code == 0, err
    video = statuses[-1].body["sources"]["video"]
    assert video["state"] == "up" and video["restarts"] == 1
    assert video["last_failure"] == "exit code -9"
    assert statuses[-1].body["processes"]["capture-video"] != victim
    assert "capture-video stopped" in err and "restart 1" in err
    # predictions resumed, and the windows across the outage say they had a gap
    assert len(preds) >= 5
    assert any(any("video gap" in d for d in p.body["degraded"]) for p in preds)
    for p in preds:  # never built from frames older than the window's span
        w = p.body["window"]
        assert (w["end_ns"] - w["start_ns"]) / 1e9 <= 1.2 + 0.1
        assert w["end_ns"] == p.body["t"]["capture_ns"]


def test_sigkill_of_the_main_process_leaves_nothing(run_stream):
    before = shm_segments()
    stream = run_stream(*ARGS)
    with Subscriber(stream.endpoint) as sub:
        sub.recv(timeout=120)
    children = descendants(stream.proc.pid)
    assert children and shm_segments() - before
    stream.proc.kill()
    stream.proc.wait(10)
    deadline = time.monotonic() + 5
    while (running(children) or shm_segments() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(children), "children outlived a SIGKILLed parent"
    assert not shm_segments() - before, "shared memory left after SIGKILL of the parent"


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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_start_up_exits_cleanly(run_stream, sig):
    before = shm_segments()
    stream = run_stream(*ARGS)
    time.sleep(1.0)  # children spawned, model loading
    code, err = stream.stop(sig)
    assert code == 0, err
    assert "Traceback" not in err
    assert shm_segments() <= before
