"""Shared fixtures: free ports, a generated video file, an MJPEG camera served over HTTP
on 127.0.0.1, and a helper that runs `python -m stream.run` as a real process."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shm_segments() -> set[str]:
    """This project's shared-memory segments currently in /dev/shm."""
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("avstream_")}
    except FileNotFoundError:
        return set()


def descendants(pid: int) -> set[int]:
    """PIDs of all live descendants of `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return found


def running(pids: set[int]) -> set[int]:
    """The PIDs of `pids` that still run (zombies count as gone)."""
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _moving_frames(count: int, width: int, height: int):
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(count):
        frame = np.zeros((height, width, 3), np.uint8)
        frame[..., 0] = (xx + 3 * i) % 256
        frame[..., 1] = (yy + 2 * i) % 256
        side = height // 4
        x0 = (7 * i) % (width - side)
        frame[height // 3 : height // 3 + side, x0 : x0 + side] = 255
        yield frame


@pytest.fixture(scope="session")
def video_file(tmp_path_factory) -> Path:
    """A 3-second 320×240 clip at 30 fps with motion, written with OpenCV."""
    import cv2

    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (320, 240))
    assert writer.isOpened()
    for frame in _moving_frames(90, 320, 240):
        writer.write(frame)
    writer.release()
    return path


class _MJPEGHandler(http.server.BaseHTTPRequestHandler):
    fps = 30.0

    def do_GET(self):  # noqa: N802 (http.server's naming)
        import cv2

        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            for frame in _moving_frames(10**9, 320, 240):
                ok, jpg = cv2.imencode(".jpg", frame)
                self.wfile.write(
                    b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                    + jpg.tobytes() + b"\r\n"
                )
                if self.server.stopping:
                    return
                time.sleep(1.0 / self.fps)
        except (BrokenPipeError, ConnectionResetError):
            return

    def log_message(self, *args):
        pass


@pytest.fixture
def mjpeg_url():
    """A network camera stand-in: MJPEG over HTTP on 127.0.0.1, 30 fps, until the test ends."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _MJPEGHandler)
    server.daemon_threads = True
    server.stopping = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg"
    server.stopping = True
    server.shutdown()
    server.server_close()


class StreamProcess:
    """`python -m stream.run ...` as a real process, with its stderr captured."""

    def __init__(self, *args: str, env: dict | None = None):
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        argv = [sys.executable, "-m", "stream.run", "--publish", self.endpoint, *args]
        self.proc = subprocess.Popen(
            argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )

    def stop(self, sig=signal.SIGINT, timeout: float = 10.0) -> tuple[int, str, float]:
        """Send `sig`, wait; returns (exit code, stderr, seconds it took to exit)."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err, time.monotonic() - t0

    def wait(self, timeout: float = 60.0) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)


@pytest.fixture
def run_stream():
    started: list[StreamProcess] = []

    def start(*args: str, env: dict | None = None) -> StreamProcess:
        p = StreamProcess(*args, env=env)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()
