"""The typed messages between our processes (stream/control.py): each one crosses a real
multiprocessing pipe unchanged, and a receiver given anything else fails loudly."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import subprocess
import sys

import pytest

from helpers import REPO
from stream import config, control

EXAMPLES = [
    control.VideoOpened(kind="camera", width=640, height=480, fps=29.97, paced=False, live=True),
    control.AudioOpened(kind="file", rate=16000, live=False, description="clip.mkv"),
    control.VideoEnded(frames=120),
    control.AudioEnded(samples=64000),
    control.SourceFailed("camera 0 stopped delivering frames after 12"),
    control.BadInput("camera 3 did not open: check that it is connected"),
    control.Crash("inference process failed: ValueError: bad shape"),
    control.ModelBuilt(name="avslowfast_r50", span_s=2.13, audio=control.AudioNeeds(16000, 2.048)),
    control.EngineReady(engine="torch-cpu", window_s=0.25, max_batch=8),
    control.StreamRemoved(stream="door"),
    control.WebListening(url="http://127.0.0.1:8080/"),
    control.WriteRing(name="avstream_frames_123_ab", start_ns=12_345_678_901_234),
    control.AddStream(
        stream="door",
        stride=0.5,
        video="avstream_frames_123_ab",
        fps=30.0,
        video_kind="synthetic",
        audio="avstream_audio_123_cd",
        audio_kind="synthetic",
        processes={"main": 123, "capture-video": 124, "capture-audio": 125},
    ),
    control.RemoveStream(stream="door", reason="ended"),
    control.StreamState(stream="cam1", state="restarting", reason="exit code -9"),
    control.SourceHealth(
        stream="cam0",
        name="capture-video",
        state="down",
        reason="exit code -9",
        restarts=1,
        pid=None,
    ),
    control.BenchRow({"model": "x3d_xs", "engine_ms": {"p50": 12.5}}),
    control.Died(code=-9),
]


def test_every_message_has_an_example():
    assert {type(m) for m in EXAMPLES} == set(control.MESSAGES)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_message_round_trips_through_a_pipe(message):
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    try:
        parent.send(message)
        assert child.poll(5)
        got = control.receive(child, "the test")
    finally:
        parent.close()
        child.close()
    assert got == message and type(got) is type(message)
    assert got is not message  # it was pickled, not passed by reference
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.__setattr__(dataclasses.fields(got)[0].name, None)


def _echo(conn) -> None:
    """A child that sends back what it gets, as the capture and inference processes do."""
    while (message := conn.recv()) is not None:
        conn.send(message)


def test_messages_cross_into_a_spawned_process_and_back():
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_echo, args=(child,))
    proc.start()
    child.close()
    try:
        for message in EXAMPLES:
            parent.send(message)
            assert parent.poll(60), f"no answer to {message!r}"
            assert control.receive(parent, "the test") == message
        parent.send(None)
    finally:
        proc.join(30)
        parent.close()
    assert proc.exitcode == 0


def test_a_tuple_is_not_a_message():
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    with parent, child:
        parent.send(("ring", {"name": "x", "start_ns": 0}))
        with pytest.raises(
            control.UnexpectedMessage, match=r"the test got an unexpected message: \('ring'"
        ):
            control.receive(child, "the test")


def test_process_names_say_their_stream():
    name = control.capture_name(control.CAPTURE_VIDEO, "door")
    assert name == "capture-video:door"
    assert control.split_name(name) == (control.CAPTURE_VIDEO, "door")
    assert control.split_name(control.INFERENCE) == (control.INFERENCE, None)


def test_supervisor_fails_loudly_on_a_message_it_does_not_expect():
    """A known message at the wrong end (WriteRing goes to the captures, never to main)."""
    from stream.pipeline.ring_plan import RingPlan
    from stream.pipeline.supervisor import Supervisor, _Stream

    cfg = config.RunConfig()
    supervisor = Supervisor(cfg)
    with pytest.raises(control.UnexpectedMessage, match=r"stream\.run \(from inference\)"):
        supervisor._from_inference(control.WriteRing("x", 0))
    stream = _Stream(cfg.streams[0], RingPlan(sweep=False), initial=True)
    with pytest.raises(control.UnexpectedMessage, match=r"stream\.run \(from capture-video:cam0\)"):
        supervisor._from_capture(stream, control.CAPTURE_VIDEO, control.WriteRing("x", 0))


def test_capture_fails_loudly_on_a_message_it_does_not_expect():
    """The video capture waits for its ring; anything else ends it with a traceback."""
    script = f"""
import multiprocessing as mp, os, sys
sys.path.insert(0, {str(REPO)!r})
from stream import control
from stream.capture.video import capture_main

if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=capture_main,
        args=("synthetic", (64, 48), 10.0, False, "warning", os.getpid(), child, stop),
    )
    proc.start()
    child.close()
    assert parent.poll(60)
    assert isinstance(parent.recv(), control.VideoOpened)
    parent.send(control.EngineReady("torch-cpu", 0.1, 1))
    proc.join(60)
    print("exit", proc.exitcode)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert "exit 1" in done.stdout, done.stderr
    assert (
        "UnexpectedMessage: the video capture got an unexpected message: EngineReady("
        in done.stderr
    )
