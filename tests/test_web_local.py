"""The parts of `stream.run --web` that run in one process: the publisher's local endpoint
for the browser view (plain, also when the run encrypts with CURVE or publishes through a
proxy), and RingFrames, the view's reader of the rings (JPEG frames, the sound's level),
against real rings in /dev/shm. The run itself: tests/test_web_run.py."""

from __future__ import annotations

import logging
import math
import os
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq
from test_wire import _prediction

from helpers import Sending, free_port, wait_until
from stream import control
from stream.pipeline.ring import AudioRing, FrameRing
from stream.transport.keys import make_keys
from stream.transport.publish import Publisher
from stream.transport.subscribe import HandshakeError, Subscriber

# -- the publisher's local endpoint ---------------------------------------------------------


def test_a_curve_publisher_serves_its_local_endpoint_without_keys(tmp_path):
    """The ipc endpoint is bound before the CURVE options are set: a plain subscriber gets
    the messages there, while the tcp endpoint still refuses it."""
    make_keys(tmp_path / "keys", ["viewer"])
    keys = tmp_path / "keys"
    local = f"ipc://{tmp_path}/pub"
    with Sending(
        [_prediction()],
        curve_secret_key=str(keys / "server.key_secret"),
        curve_clients=str(keys / "clients"),
        local=local,
    ) as pub:
        with Subscriber(local) as sub:
            assert sub.recv(timeout=60).topic == "pred.cam0"
        with Subscriber(pub.endpoint) as plain, pytest.raises(HandshakeError) as refused:
            plain.recv(timeout=60)
        assert "requires CURVE encryption" in str(refused.value)
        with Subscriber(
            pub.endpoint,
            curve_server_key=str(keys / "server.key"),
            curve_client_key=str(keys / "viewer.key_secret"),
        ) as viewer:
            assert viewer.recv(timeout=60).topic == "pred.cam0"


def test_a_publisher_of_a_proxy_serves_its_local_endpoint(tmp_path, caplog):
    """Connected to a proxy (here one that is not there), the socket also binds the
    local endpoint; its subscriber is not taken for the proxy in the log."""
    caplog.set_level(logging.INFO, logger="stream.transport.publish")
    local = f"ipc://{tmp_path}/pub"
    context = zmq.Context()
    pub = Publisher(f"connect:tcp://127.0.0.1:{free_port()}", local=local, context=context)
    try:
        with Subscriber(local, context=context) as sub:

            def received():
                pub.send("pred.cam0", _prediction())
                pub.count_subscriptions()  # reads the monitor's events: what it logs
                try:
                    return sub.recv(timeout=0.05)
                except TimeoutError:
                    return None

            assert wait_until(received, "a message on the local endpoint").topic == "pred.cam0"
            assert pub.count_subscriptions() == 1
    finally:
        pub.close()
        context.term()
    assert "proxy" not in caplog.text


# -- RingFrames: the view's reader of the rings ----------------------------------------------


def _add(stream: str, frames: FrameRing, audio: AudioRing | None = None) -> control.AddStream:
    return control.AddStream(
        stream=stream,
        stride=0.25,
        video=frames.name,
        fps=30.0,
        video_kind="synthetic",
        audio=None if audio is None else audio.name,
        audio_kind=None if audio is None else "synthetic",
        processes={"main": 1},
    )


def _pattern(i: int, height: int = 480, width: int = 960) -> np.ndarray:
    frame = np.zeros((height, width, 3), np.uint8)
    frame[:, : width // 2] = (0, 0, 255)  # red left half (BGR)
    frame[:, width // 2 :] = (255, 0, 0)  # blue right half
    frame[height // 3 : height // 2, 40 * i : 40 * i + 100] = 255
    return frame


def _near(pixel: np.ndarray, bgr: tuple[int, int, int]) -> bool:
    """Within what JPEG's compression changes of a flat colour."""
    return bool(np.abs(pixel.astype(int) - bgr).max() <= 40)


@pytest.fixture
def rings():
    frames = FrameRing.create(16, 480, 960)
    audio = AudioRing.create(16000 * 4, 16000, max_block=4096)
    yield frames, audio
    frames.close()
    audio.close()


def test_grab_gives_the_newest_frame_once_downscaled_as_jpeg(rings):
    from stream.web.frames import RingFrames

    frames, _ = rings
    source = RingFrames()
    source.attach("cam0", _add("cam0", frames))
    try:
        assert source.streams() == ["cam0"]
        assert source.grab("cam0", 640, 80) is None  # nothing written yet
        for i in range(3):
            frames.write(_pattern(i), 1000 + i)
        got = source.grab("cam0", 640, 80)
        assert (got.stream, got.seq, got.t_ns) == ("cam0", 2, 1002)
        assert (got.width, got.height) == (640, 320)  # the aspect kept
        image = cv2.imdecode(np.frombuffer(got.jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (320, 640, 3)
        # what was drawn: red on the left, blue on the right (BGR), a white bar
        assert _near(image[40, 100], (0, 0, 255)) and _near(image[40, 540], (255, 0, 0))
        assert _near(image[130, 85], (255, 255, 255))  # frame 2: x 80 to 180, so 53 to 120
        assert source.grab("cam0", 640, 80) is None  # no newer frame
        frames.write(_pattern(3), 1003)
        wide = source.grab("cam0", 4000, 50)  # never upscaled
        assert (wide.seq, wide.width, wide.height) == (3, 960, 480)
        small = cv2.imdecode(np.frombuffer(wide.jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert small.shape == (480, 960, 3)
        with pytest.raises(KeyError):
            source.grab("nope", 640, 80)
        assert source.level("cam0") is None  # no sound
    finally:
        source.detach("cam0")
    assert source.streams() == []
    with pytest.raises(KeyError):
        source.grab("cam0", 640, 80)
    source.detach("cam0")  # again: nothing to do


def test_level_is_the_last_tenth_of_a_second(rings):
    from stream.web.frames import RingFrames

    frames, audio = rings
    source = RingFrames()
    source.attach("door", _add("door", frames, audio))
    try:
        assert source.level("door") is None  # nothing heard yet
        t = np.arange(16000) / 16000
        loud = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        quiet = np.zeros(1600, np.float32)
        quiet[::100] = 0.01  # 16 clicks of 0.01
        now = time.monotonic_ns()
        for i in range(0, len(loud), 4000):
            audio.write(loud[i : i + 4000], now)
        level = source.level("door")
        assert level["dbfs"] == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.1)
        assert level["peak_dbfs"] == pytest.approx(20 * math.log10(0.5), abs=0.1)
        audio.write(quiet, now)  # the last 0.1 s: the loud second is not in it
        level = source.level("door")
        assert level["peak_dbfs"] == pytest.approx(-40.0, abs=0.01)
        assert level["dbfs"] == pytest.approx(20 * math.log10(0.01 / 10), abs=0.1)
        audio.write(np.zeros(1600, np.float32), now)
        assert source.level("door")["dbfs"] == source.level("door")["peak_dbfs"] < -100
    finally:
        source.detach("door")


def test_attach_of_a_ring_that_is_gone_is_left_out(rings):
    """A stream whose rings went before the view attached (removed meanwhile) is not
    served; the view goes on."""
    from stream.web.frames import RingFrames

    frames, _ = rings
    message = _add("gone", frames)
    frames.close()  # the owner unlinks it
    source = RingFrames()
    source.attach("gone", message)
    assert source.streams() == []


# -- the private folder of the local endpoint ------------------------------------------------


def test_the_private_folder_is_the_users_and_a_killed_runs_is_removed(tmp_path, monkeypatch):
    from stream.web.process import FOLDER_PREFIX, private_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid runs no more: a run killed with SIGKILL left its folder
    stale = tmp_path / f"{FOLDER_PREFIX}{gone.pid}-abc123"
    live = tmp_path / f"{FOLDER_PREFIX}{os.getppid()}-def456"  # a run that runs
    other = tmp_path / "avstream-web-notours"
    for folder in (stale, live, other):
        folder.mkdir()
    made = Path(private_folder())
    assert made.parent == tmp_path and made.name.startswith(f"{FOLDER_PREFIX}{os.getpid()}-")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert not stale.exists() and live.exists() and other.exists()
