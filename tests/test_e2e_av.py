"""Audiovisual end to end: `python -m stream.run --model avslowfast_r50` with the real
sounddevice path (PortAudio over an ALSA device that plays a file) and a subscriber, and
a microphone that the audio capture process refuses as the run's one error line."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

import models
from helpers import REPO, free_port, segments_of, wait_until
from stream.transport.subscribe import Subscriber

pytestmark = pytest.mark.skipif(
    "avslowfast_r50" not in models.available(), reason="needs the AVSlowFast model"
)


def test_avslowfast_from_camera_and_alsa_microphone(run_stream, alsa_file_mic):
    stream = run_stream(
        "--camera",
        "synthetic",
        "--size",
        "320x240",
        "--mic",
        alsa_file_mic,
        "--model",
        "avslowfast_r50",
        "--weights",
        "none",
        "--stride",
        "1.0",
        "--log-level",
        "info",
        "--no-compile",  # compiling AVSlowFast-R50 takes minutes; the engine has its own tests
    )
    preds, statuses = [], []
    with Subscriber(stream.endpoint, topics=("pred.", "status.")) as sub:
        while len(preds) < 3:
            assert stream.proc.poll() is None, stream.wait()[1]
            msg = sub.recv(timeout=300)
            (preds if msg.topic.startswith("pred.") else statuses).append(msg.body)
    code, err = stream.stop(signal.SIGINT)
    assert code == 0, err
    assert not segments_of(stream.proc.pid)
    assert "audio: device 'testmic" in err
    audio = statuses[-1]["sources"]["audio"]
    assert audio["source"] == "device" and audio["used"] and audio["healthy"], audio
    assert audio["overflows"] == 0 and audio["rate"] == 16000
    for p in preds[1:]:
        w = p["window"]
        assert p["degraded"] == [], p["degraded"]
        assert w["audio_s"] == pytest.approx(2.064, abs=1e-3)
        video_centre = (w["start_ns"] + w["end_ns"]) / 2
        audio_centre = (w["audio_start_ns"] + w["audio_end_ns"]) / 2
        assert abs(video_centre - audio_centre) < 40e6  # centred, within a frame
        assert p["t"]["capture_ns"] >= w["end_ns"]
        assert (
            p["t"]["capture_ns"]
            <= p["t"]["infer_start_ns"]
            <= p["t"]["infer_end_ns"]
            <= p["t"]["publish_ns"]
        )
    assert len(preds[-1]["labels"]) == 5


def _run_cli_with_mic(mic: str) -> str:
    """`python -m stream.run` with a model that listens; returns its one error line after
    checking exit status 2, no traceback and nothing left in /dev/shm."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stream.run",
            "--camera",
            "synthetic",
            "--model",
            "avslowfast_r50",
            "--weights",
            "none",
            "--no-compile",
            "--log-level",
            "warning",
            "--mic",
            mic,
            "--publish",
            f"tcp://127.0.0.1:{free_port()}",
            "--control",
            "none",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    # the children unlink as they exit
    wait_until(lambda: not segments_of(proc.pid), "shared memory left behind", 60)
    return lines[0]


@pytest.mark.e2e
def test_cli_folder_as_mic(tmp_path):
    """What the audio capture process refuses (a folder here; no microphone, an unknown
    device, a file without sound: test_audio.py checks their lines at the capture process)
    is the run's one error line: the same path for every refusal, so one real run checks
    it."""
    line = _run_cli_with_mic(str(tmp_path))
    assert line == (
        f"error: --mic '{tmp_path}' is a folder: pass an audio or video file, a microphone name "
        "or index, synthetic, or none"
    )
