"""What the browser tests of the web view import (tests/test_web_browser*.py): Debian's
headless Chromium driven by Selenium, and a stand-in for a run on another host that
publishes real wire messages on a ZeroMQ PUB socket of its own (`python -m stream.web` as
a real process is helpers.WebProcess).

The browser is opened as `python -m stream.bench --web-pages` opens its pages
(stream.bench.pages.chromium): nothing is downloaded at test time, since the driver's path
is given to Selenium, which then never runs Selenium Manager
(selenium.webdriver.common.driver_finder skips it when the Service has a path)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from helpers import running, wait_until
from stream.bench.pages import chromium, chromium_paths, processes_naming


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (None when they can): a developer machine
    without Debian's chromium and chromium-driver, or without selenium."""
    if chromium_paths() is None:
        return (
            "chromium and chromedriver are not on PATH (apt-get install chromium "
            "chromium-driver; .ci/run installs them)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


# -- the browser ---------------------------------------------------------------------------


class Browser:
    """One headless Chromium (1280×720) with its own profile and HOME under `root`, so that
    every process it starts (the crash handler too, whose database lives under HOME) names
    `root` on its command line: `quit` checks that none is left."""

    def __init__(self, root: Path):
        self.root = root
        # The page's console (errors included) is read back with get_log("browser").
        self.driver, self.driver_pid = chromium(root, *chromium_paths(), console=True)
        self.driver.set_page_load_timeout(60)
        self.driver.set_script_timeout(30)

    def processes(self) -> set[int]:
        """The live processes of this browser: its driver, and any that names `root`."""
        return running({self.driver_pid} | processes_naming(self.root))

    def quit(self) -> None:
        """Quit the browser and check that none of its processes is left (any left is
        killed, and the test fails)."""
        try:
            self.driver.quit()
        finally:
            try:
                wait_until(lambda: not self.processes(), "chromium's processes to exit", 30)
            except BaseException:
                left = self.processes()
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                pytest.fail(f"chromium processes left after driver.quit(): {sorted(left)}")

    # -- the page ------------------------------------------------------------------------

    def get(self, url: str) -> None:
        self.driver.get(url)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait_js(self, script: str, what: str, timeout: float = 30.0, every: float = 0.02):
        """Poll `script` (a function body that returns) in the page until it returns
        something true (returned); fail naming `what`, with the page's console, after
        `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not (value := self.js(script)):
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{what}: not within {timeout:g} s; the page's console:\n"
                    + "\n".join(self.console())
                )
            time.sleep(every)
        return value

    def console(self) -> list[str]:
        """The page's console messages since the last call (every level), as text."""
        return [f"{e['level']} {e['message']}" for e in self.driver.get_log("browser")]

    def console_errors(self) -> list[str]:
        """The page's console errors since the last call to `console`/`console_errors`."""
        return [line for line in self.console() if line.startswith("SEVERE")]

    def navigation_status(self) -> int:
        """The HTTP status of the page's own response (the navigation's last response,
        after redirects), from the browser's Performance API."""
        return self.js(
            "const n = performance.getEntriesByType('navigation')[0];"
            "return n ? n.responseStatus : 0;"
        )

    def screenshot(self, folder: Path, name: str) -> Path:
        """Save the window as `folder/name.png` and check that it decodes and is not
        blank."""
        path = folder / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        check_not_blank(path.read_bytes(), str(path))
        return path


def screenshot_folder(tmp_path_factory) -> Path:
    """Where a test session's screenshots of the web view go: $AVSTREAM_TEST_OUTPUT, or
    web-screenshots under pytest's basetemp. Printed, so that the test output names it."""
    folder = os.environ.get("AVSTREAM_TEST_OUTPUT")
    path = Path(folder) if folder else tmp_path_factory.getbasetemp() / "web-screenshots"
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots of the web view: {path}")
    return path


def check_not_blank(png: bytes, what: str, min_std: float = 4.0):
    """Decode a PNG with OpenCV; it must have pixels that differ (standard deviation of
    the grey levels above `min_std`). Returns the image (BGR)."""
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, f"{what} does not decode as an image"
    assert image.size, f"{what} is empty"
    std = float(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).std())
    assert std > min_std, f"{what} is blank (grey level std {std:.2f})"
    return image


# -- a run on another host -------------------------------------------------------------------


class FakeRun:
    """A stand-in for a run that `python -m stream.web --connect` relays: a ZeroMQ PUB
    socket bound to `endpoint` sending real wire messages (stream.transport.wire): the
    run status and each listed stream's status every 0.25 s (a run sends them at least
    once a second), and the predictions and events a test asks for. The socket is used
    under a lock (a test's thread and the heartbeat thread both send)."""

    def __init__(self, endpoint: str, streams: tuple[str, ...] = ("cam0",)):
        import zmq

        self.endpoint = endpoint
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(endpoint)
        self._lock = threading.Lock()
        self._seq: dict[str, int] = {}
        self.streams = list(streams)
        self.started_ns = time.monotonic_ns()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _next(self, key: str) -> int:
        n = self._seq.get(key, 0)
        self._seq[key] = n + 1
        return n

    def send(self, topic: str, body: dict) -> float:
        """Send one message; returns time.monotonic() just before the send."""
        from stream.transport import wire

        wire.validate(body)  # only real wire messages
        with self._lock:
            sent = time.monotonic()
            self._socket.send_multipart(wire.encode(topic, body))
        return sent

    def _beat(self) -> None:
        while not self._halt.wait(0.25):  # the heartbeat rate, not a wait for anything
            with self._lock:
                streams = list(self.streams)
            for stream in streams:
                self.send(f"status.{stream}", self.status(stream))
            self.send("run", self.run_status(streams))

    def set_streams(self, streams: tuple[str, ...]) -> None:
        with self._lock:
            self.streams = list(streams)

    # -- bodies --

    def status(self, stream: str) -> dict:
        from stream.transport import wire

        with self._lock:
            seq = self._next(f"status.{stream}")
        return wire.status(
            seq=seq,
            stream=stream,
            model="x3d_xs",
            engine="torch-cpu",
            state="running",
            mono_ns=time.monotonic_ns(),
            wall_ns=time.time_ns(),
            fps_in=30.0,
            windows_run=seq,
            windows_skipped=0,
            windows_stale=0,
            video={"source": "synthetic"},
            audio={"source": "none", "used": False},
            sent=seq,
            dropped=0,
            subscriptions=1,
            processes={"main": os.getpid()},
            events=[],
        )

    def run_status(self, streams: list[str]) -> dict:
        from stream.transport import wire

        with self._lock:
            seq = self._next("run")
        return wire.run_status(
            seq=seq,
            host="testhost",
            pid=os.getpid(),
            model="x3d_xs",
            engine="torch-cpu",
            state="running",
            mono_ns=time.monotonic_ns(),
            wall_ns=time.time_ns(),
            max_batch=1,
            batch_wait_s=0.0,
            streams=[
                wire.run_stream(
                    stream=s, state="running", reason=None, windows_run=seq, windows_skipped=0
                )
                for s in streams
            ],
            batches=[seq],
            windows_run=seq,
            windows_skipped=0,
            sent=seq,
            dropped=0,
            subscriptions=1,
        )

    def predict(
        self, stream: str, labels: list[tuple[str, float]], *, random_weights: bool = False
    ) -> tuple[int, float]:
        """Publish a prediction of `labels` (name, probability; the first is the top one)
        for `stream`, stamped as stream.run's publisher does; returns (its seq,
        time.monotonic() just before the send)."""
        from stream.transport import wire

        with self._lock:
            seq = self._next(f"pred.{stream}")
        now = time.monotonic_ns()
        body = wire.prediction(
            seq=seq,
            stream=stream,
            model="x3d_xs",
            engine="torch-cpu",
            labels=[{"label": name, "index": i, "score": p} for i, (name, p) in enumerate(labels)],
            window_start_ns=now - 2_000_000_000,
            window_end_ns=now - 40_000_000,
            frames=16,
            audio_start_ns=0,
            audio_end_ns=0,
            capture_ns=now - 40_000_000,
            window_ns=now - 35_000_000,
            infer_start_ns=now - 30_000_000,
            infer_end_ns=now - 5_000_000,
            smoothing="none",
            random_weights=random_weights,
            stride_s=0.5,
            skipped=0,
            degraded=[],
            stages_ms={"preprocess": 2.0},
            batch=1,
        )
        wire.stamp_publish(body, publish_ns=time.monotonic_ns(), wall_ns=time.time_ns())
        return seq, self.send(f"pred.{stream}", body)

    def event(self, stream: str, name: str, id: str, type: str, started_wall_ns: int) -> float:
        """Publish an event message (`type` start, update or end) of event `id`; returns
        time.monotonic() just before the send."""
        from stream.transport import wire

        with self._lock:
            seq = self._next(f"event.{stream}")
        now, wall = time.monotonic_ns(), time.time_ns()
        ended = type == "end"
        body = wire.event(
            seq=seq,
            id=id,
            stream=stream,
            name=name,
            labels=[name],
            type=type,
            start_ns=now - (wall - started_wall_ns),
            end_ns=now if ended else None,
            start_wall_ns=started_wall_ns,
            end_wall_ns=wall if ended else None,
            peak=0.9,
            mean=0.8,
            seq_first=0,
            seq_last=seq,
            degraded=False,
            reason="below threshold" if ended else None,
            wall_ns=wall,
        )
        return self.send(f"event.{stream}", body)

    def close(self) -> None:
        self._halt.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()
        self._socket.close(0)
        self._context.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
