"""--preview: a real OpenCV window on a virtual X display (Xvfb). Without a display it is
one error line before anything starts (tests/test_cli_errors.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest

from helpers import wait_until
from stream.transport.subscribe import Subscriber

pytestmark = pytest.mark.usefixtures("x3d_xs_compiled")  # pipelines load it, not compile it

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
    "warning",
)


@pytest.fixture
def xvfb_display():
    if shutil.which("Xvfb") is None or shutil.which("xwininfo") is None:
        pytest.skip("Xvfb and xwininfo are needed (apt-get install xvfb x11-utils)")
    # Xvfb picks a free display itself and writes its number to -displayfd once it
    # accepts connections: the readiness signal, instead of a sleep.
    read_end, write_end = os.pipe()
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "800x600x24"],
        pass_fds=(write_end,),
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    try:
        with os.fdopen(read_end) as ready:
            number = ready.readline().strip()  # empty if Xvfb exits first
        assert number.isdigit(), f"Xvfb did not start (exit code {server.poll()})"
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(10)


def _windows(display: str) -> str:
    return subprocess.run(
        ["xwininfo", "-root", "-tree"],
        check=False,
        env={**os.environ, "DISPLAY": display},
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout


@pytest.mark.e2e
def test_preview_window_shows_while_predicting(run_stream, xvfb_display):
    stream = run_stream(*ARGS, "--preview", env={"DISPLAY": xvfb_display})
    with Subscriber(stream.endpoint) as sub:
        for _ in range(3):
            sub.recv(timeout=180)
    wait_until(lambda: "avstream cam0" in _windows(xvfb_display), "no preview window", 60)
    code, err = stream.stop(signal.SIGINT)
    assert code == 0, err
    assert "Traceback" not in err
