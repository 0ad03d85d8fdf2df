"""--preview: a real OpenCV window on a virtual X display (Xvfb). Without a display it is
one error line before anything starts (tests/test_cli_errors.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from helpers import free_port
from stream.transport.subscribe import Subscriber

pytestmark = pytest.mark.usefixtures("x3d_xs_compiled")  # pipelines load it, not compile it

ARGS = ("--camera", "synthetic", "--size", "320x240", "--weights", "none", "--stride", "0.2", "--log-level", "warning")


@pytest.fixture
def xvfb_display():
    if shutil.which("Xvfb") is None or shutil.which("xwininfo") is None:
        pytest.skip("Xvfb and xwininfo are needed (apt-get install xvfb x11-utils)")
    display = f":{100 + free_port() % 400}"
    server = subprocess.Popen(["Xvfb", display, "-screen", "0", "800x600x24"], stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    assert server.poll() is None, "Xvfb did not start"
    yield display
    server.terminate()
    server.wait(10)


def _windows(display: str) -> str:
    return subprocess.run(
        ["xwininfo", "-root", "-tree"], env={**os.environ, "DISPLAY": display},
        capture_output=True, text=True, timeout=10,
    ).stdout


def test_preview_window_shows_while_predicting(run_stream, xvfb_display):
    stream = run_stream(*ARGS, "--preview", env={"DISPLAY": xvfb_display})
    with Subscriber(stream.endpoint) as sub:
        for _ in range(3):
            sub.recv(timeout=90)
    assert "avstream cam0" in _windows(xvfb_display)
    code, err = stream.stop(signal.SIGINT)
    assert code == 0, err
    assert "Traceback" not in err

