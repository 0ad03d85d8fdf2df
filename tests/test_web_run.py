"""`python -m stream.run --web HOST:PORT`, the browser view of a run, over real HTTP and
a real WebSocket (the page itself in a browser: tests/test_web_browser*.py).

One run (CURVE-encrypted, so that the view's keyless local endpoint is tried where it
matters) serves every check of the working view: a WebSocket opened while the model
loads gets the predictions and the frames once they come; /api/state has predictions;
/video/<id> sends JPEG frames that decode and change; a stream added with stream.ctl
appears and its video is served, removed it is 404; the web process killed comes back
and the run goes on; stopped, nothing is left. A run that publishes through a proxy
serves its view as well. Then the bad input: a port in use at start, and options refused
before anything starts."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import (
    REPO,
    ctl_output,
    descendants,
    free_port,
    held_port,
    one_error_line,
    run_to_end,
    running,
    segments_of,
    wait_until,
)
from stream.transport.keys import make_keys
from stream.transport.subscribe import HandshakeError, Subscriber
from stream.web.process import FOLDER_PREFIX

#: No proxy from the environment for 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _status(port: int, path: str) -> int:
    """The status of a GET, its body left unread (/video/<id> never ends)."""
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _state(port: int) -> dict:
    status, body = _get(port, "/api/state")
    assert status == 200, body
    return json.loads(body)


def _predicted(port: int, stream: str) -> dict | None:
    """The stream's last prediction in /api/state, once there is one."""
    entry = _state(port)["streams"].get(stream)
    return None if entry is None else entry["pred"]


def _mjpeg(port: int, stream: str, count: int) -> list[np.ndarray]:
    """The first `count` frames of /video/<stream>, decoded."""
    with _OPENER.open(f"http://127.0.0.1:{port}/video/{stream}", timeout=60) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=frame"
        images = []
        while len(images) < count:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += response.read(1)
            length = int(re.search(rb"Content-Length: (\d+)", head)[1])
            assert b"Content-Type: image/jpeg" in head, head
            jpeg = response.read(length)
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert image is not None, "a part that is not a JPEG"
            images.append(image)
        return images


async def _watch(port: int, stream: str) -> tuple[dict, dict, dict]:
    """Over /ws: the hello, then the first prediction of `stream` and the header of its
    first video frame (binary: 2-byte length, JSON, JPEG)."""
    import aiohttp

    pred = frame = None
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws,
    ):
        hello = await ws.receive_json(timeout=60)
        while pred is None or frame is None:
            msg = await ws.receive(timeout=120)
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                if data["kind"] == "msg" and data["topic"] == f"pred.{stream}":
                    pred = data["body"]
            elif msg.type == aiohttp.WSMsgType.BINARY:
                (n,) = struct.unpack(">H", msg.data[:2])
                head = json.loads(msg.data[2 : 2 + n])
                image = cv2.imdecode(np.frombuffer(msg.data[2 + n :], np.uint8), cv2.IMREAD_COLOR)
                assert image.shape == (head["height"], head["width"], 3)
                if head["stream"] == stream:
                    frame = head
            else:
                pytest.fail(f"the WebSocket ended: {msg}")
    return hello, pred, frame


def test_a_run_serves_its_view(run_stream, tmp_path):
    keys = tmp_path / "keys"
    make_keys(keys, ["ctl"])
    ctl_keys = {
        "curve_server_key": str(keys / "server.key"),
        "curve_secret_key": str(keys / "ctl.key_secret"),
    }
    port = free_port()
    stream = run_stream(
        "--camera", "synthetic", "--size", "320x240", "--model", "x3d_xs", "--weights", "none",
        "--stride", "0.5", "--log-level", "info", "--web", f"127.0.0.1:{port}",
        "--curve-secret-key", str(keys / "server.key_secret"),
        "--curve-clients", str(keys / "clients"),
    )  # fmt: skip

    def ctl(*args: str) -> str:
        return ctl_output(stream.control, *args, **ctl_keys)

    # The page answers while the model loads; what it watches comes once it is there.
    stream.wait_for(rf"web INFO: web view on http://127\.0\.0\.1:{port}/$")
    hello, pred, frame = asyncio.run(_watch(port, "cam0"))
    assert (hello["kind"], hello["source"], hello["frames"]) == ("hello", "run", True)
    assert pred["stream"] == "cam0" and pred["labels"]
    assert (frame["width"], frame["height"]) == (320, 240)
    line = stream.wait_for("running: publishing on").string
    assert f"; web view on http://127.0.0.1:{port}/;" in line
    seen = descendants(stream.proc.pid)

    # The view's endpoint has no keys; the run's own still refuses a subscriber without.
    (local,) = _state(port)["endpoints"]
    folder = Path(local.removeprefix("ipc://")).parent
    assert local.startswith("ipc://") and folder.stat().st_mode & 0o077 == 0
    with Subscriber(stream.endpoint) as plain, pytest.raises(HandshakeError):
        plain.recv(timeout=60)

    assert wait_until(lambda: _predicted(port, "cam0"), "a prediction in /api/state")["labels"]
    first, *_, last = _mjpeg(port, "cam0", 4)
    assert first.shape == (240, 320, 3) and first.std() > 10  # not blank
    assert not np.array_equal(first, last)  # the synthetic pattern moves

    # A stream added while the run runs is shown; removed, it is gone.
    assert ctl("add", "door", "--camera", "synthetic", "--size", "160x120").startswith("added door")
    wait_until(lambda: _predicted(port, "door"), "door's prediction in /api/state")
    (image,) = _mjpeg(port, "door", 1)
    assert image.shape == (120, 160, 3)
    assert ctl("remove", "door") == "removed door\n"
    wait_until(lambda: _status(port, "/video/door") == 404, "/video/door: 404")
    assert "door" not in _state(port)["streams"]

    # The web process killed: restarted, and the run goes on.
    web = json.loads(ctl("status", "--json"))["processes"]["web"]
    os.kill(web, signal.SIGKILL)
    stream.wait_for(r"the web view stopped \(exit code -9\): restart 1 in ")
    stream.wait_for(r"the web view is back after restart 1")
    assert _get(port, "/healthz") == (200, b"ok")
    before = wait_until(lambda: _predicted(port, "cam0"), "a prediction after the restart")
    wait_until(lambda: _predicted(port, "cam0")["seq"] > before["seq"], "the next prediction")
    assert len(_mjpeg(port, "cam0", 2)) == 2
    seen |= descendants(stream.proc.pid)

    code, err = stream.stop()
    assert code == 0, err
    assert "Traceback" not in err, err
    wait_until(lambda: not running(seen), "the processes of stream.run to end")
    assert not segments_of(stream.proc.pid)
    assert not folder.exists()


def test_a_run_through_a_proxy_serves_its_view(run_stream):
    """With --publish connect:... the publisher also binds the view's local endpoint: the
    page has predictions while the proxy is not there (and the log does not take the view
    for the proxy)."""
    port = free_port()
    stream = run_stream(
        "--camera", "synthetic", "--size", "160x120", "--model", "x3d_xs", "--weights", "none",
        "--stride", "0.5", "--log-level", "info", "--web", f"127.0.0.1:{port}",
        "--publish", f"connect:tcp://127.0.0.1:{free_port()}",
    )  # fmt: skip
    stream.wait_for("running: publishing on connect:tcp://")
    assert wait_until(lambda: _predicted(port, "cam0"), "a prediction in /api/state")["labels"]
    code, err = stream.stop()
    assert code == 0, err
    assert "publishing through the proxy" not in err, err


def _web_folders() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith(FOLDER_PREFIX)}


@pytest.mark.e2e
def test_a_web_port_in_use_ends_the_run_at_start():
    """The web process binds as it starts: a port in use is one line, exit 2, and
    nothing is left behind (processes, shared memory, the private folder)."""
    folders = _web_folders()
    with held_port() as port:
        code, err = run_to_end(
            "--camera", "synthetic", "--weights", "none", "--log-level", "warning",
            "--web", f"127.0.0.1:{port}", timeout=180,
        )  # fmt: skip
    assert code == 2, err
    assert f"127.0.0.1:{port} is in use" in one_error_line(err), err
    assert "running:" not in err
    assert _web_folders() <= folders


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--web", "0.0.0.0:8080"],
            "error: --web 0.0.0.0:8080 can be reached from other hosts: listen on 127.0.0.1, "
            "or pass --allow-remote with --web-token-file FILE (python -m stream.web "
            "--make-token FILE makes one)",
        ),
        (
            ["--web", "0.0.0.0:8080", "--allow-remote"],
            "error: --web 0.0.0.0:8080 with --allow-remote needs --web-token-file FILE, the "
            "token every visitor must give (python -m stream.web --make-token FILE makes one)",
        ),
        (
            ["--web", "127.0.0.1:8080", "--web-token-file", "no/such.token"],
            "error: --web-token-file 'no/such.token' does not exist: make one with python -m "
            "stream.web --make-token FILE",
        ),
        (
            ["--web", "127.0.0.1:8080", "--web-fps", "0"],
            "error: --web-fps 0 must be above 0 and at most 60 (frames per second)",
        ),
    ],
    ids=["remote", "no token", "missing token file", "fps"],
)
def test_bad_web_options_are_one_line(args, line):
    """Refused before anything starts: no process, nothing made."""
    done = subprocess.run(
        [sys.executable, "-m", "stream.run", "--camera", "synthetic", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stderr) == (2, line + "\n")
