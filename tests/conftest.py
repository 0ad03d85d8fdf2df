"""Fixtures and nothing else (what tests import lives in helpers.py): the session's engine
cache and compiled x3d_xs, a generated video file and audio/video clip, an MJPEG camera
served over HTTP on 127.0.0.1, an ALSA microphone that plays a file, `python -m
stream.run` as a real process, and a stand-in model zoo."""

from __future__ import annotations

import http.server
import os
import socketserver
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import (
    AV_CLIP_EVENT_S,
    REPO,
    StreamProcess,
    auto_cpu_precision,
    expected_cpu_engine_name,
)

# OpenMP threads (torch's, and those of the compiled engines in the processes the tests
# start) sleep while they wait for work instead of spinning: the suite runs two workers and
# their pipelines on two cores, where a thread that spins waits for a sibling that is not
# on a core. Under a competing process, MViT's parity tests took 68 s spinning, 24 s
# sleeping (one thread: 36 s). Set before torch is imported; a value given wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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

    def do_GET(self):
        import cv2

        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            for frame in _moving_frames(10**9, 320, 240):
                _, jpg = cv2.imencode(".jpg", frame)
                self.wfile.write(
                    b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                    + jpg.tobytes()
                    + b"\r\n"
                )
                if self.server.stopping:
                    return
                time.sleep(1.0 / self.fps)
        except (BrokenPipeError, ConnectionResetError):
            return

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def mjpeg_url():
    """A network camera stand-in: MJPEG over HTTP on 127.0.0.1, 30 fps, until the module's
    tests are done."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _MJPEGHandler)
    server.daemon_threads = True
    server.stopping = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg"
    server.stopping = True
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session", autouse=True)
def engine_cache(tmp_path_factory):
    """Compiled engines (and anything else under $AVSTREAM_CACHE) go to a cache of this
    test session, shared by its tests and by the processes they start, never ~/.cache."""
    root = tmp_path_factory.mktemp("avstream-cache")
    old = os.environ.get("AVSTREAM_CACHE")
    os.environ["AVSTREAM_CACHE"] = str(root)
    yield root
    if old is None:
        del os.environ["AVSTREAM_CACHE"]
    else:
        os.environ["AVSTREAM_CACHE"] = old


def _x3d_xs_engine() -> dict:
    """engines.create's options for x3d_xs as `stream.run --weights none` with one camera
    builds it on this CPU (its --max-batch included)."""
    from stream import config, run

    cfg = run.parse_config(["--model", "x3d_xs", "--weights", "none"])
    batch = config.engine_batch(cfg, cuda=False)
    return dict(backend="torch", device="cpu", precision=cfg.precision, max_batch=batch)


_X3D_XS_BUILD = """
import json, sys, engines, models
model = models.create("x3d_xs", seed=0)
engines.create(model, model.example_inputs(), **json.loads(sys.argv[1]))
"""

#: Whether the selected tests need the compiled x3d_xs (pytest_collection_finish).
_NEEDS_X3D_XS = pytest.StashKey[bool]()
#: The compile of x3d_xs in a process of its own: (process, its stderr in a file).
_X3D_XS_BUILDING: dict[str, tuple] = {}


def _start_x3d_xs_build(cache: Path) -> None:
    """Compile x3d_xs into the session's engine cache in a process of its own (once)."""
    import json
    import subprocess
    import sys

    if not _X3D_XS_BUILDING:
        err = (cache.parent / "x3d_xs-build.log").open("w+")
        proc = subprocess.Popen(
            [sys.executable, "-c", _X3D_XS_BUILD, json.dumps(_x3d_xs_engine())],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        _X3D_XS_BUILDING["x3d_xs"] = (proc, err)


@pytest.fixture(autouse=True)
def _x3d_xs_ahead(request, engine_cache):
    """At the first pipeline test of a session whose tests need the compiled x3d_xs, its
    compile starts in the background: the pipeline tests that do not need it run first
    (pytest_collection_modifyitems), beside the compile (half a minute of CPU)."""
    if request.config.stash.get(_NEEDS_X3D_XS, False) and _in_pipeline(request.node.nodeid):
        _start_x3d_xs_build(engine_cache)
    yield


@pytest.fixture(scope="session")
def x3d_xs_compiled(engine_cache) -> Path:
    """The CPU engine of x3d_xs without weights (seed 0), compiled once per session
    exactly as `stream.run --weights none` builds it (under --precision auto: the
    precision `auto_cpu_precision()` names, with the bf16 check's verdict saved beside
    it; for the batches a run of one camera takes), so that every pipeline in the tests
    loads it instead of compiling. The compile runs in a process of its own
    (_x3d_xs_ahead starts it early); here it is waited for and loaded. Returns the
    engine cache."""
    import engines
    import models

    _start_x3d_xs_build(engine_cache)
    proc, err = _X3D_XS_BUILDING["x3d_xs"]
    proc.wait(timeout=900)
    err.seek(0)
    log = err.read()
    assert proc.returncode == 0, log
    model = models.create("x3d_xs", seed=0)
    engine = engines.create(model, model.example_inputs(), **_x3d_xs_engine())
    assert engine.mode == "aot-compiled", (
        f"x3d_xs did not compile (is g++ installed?); the compile's log:\n{log}"
    )
    assert engine.name == expected_cpu_engine_name(), (
        f"--precision auto gave {engine.name} here, not {expected_cpu_engine_name()} "
        f"({auto_cpu_precision()} is picked): see the bf16 check's line in the log:\n{log}"
    )
    return engine_cache / "engines"


@pytest.fixture
def run_stream(x3d_xs_compiled):
    started: list[StreamProcess] = []

    def start(*args: str, env: dict | None = None) -> StreamProcess:
        p = StreamProcess(*args, env=env)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()


@pytest.fixture(scope="session")
def av_clip(tmp_path_factory) -> Path:
    """4 s at 30 fps (mpeg4) with 16 kHz audio (PCM) in Matroska: dark frames with one white
    flash at 2.0 s, silence with one 10 ms click at 2.0 s."""
    import av

    path = tmp_path_factory.mktemp("av") / "flash_click.mkv"
    flash = round(AV_CLIP_EVENT_S * 30)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=30)
        vs.width, vs.height, vs.pix_fmt = 320, 240, "yuv420p"
        aus = c.add_stream("pcm_s16le", rate=16000)
        aus.layout = "mono"
        for i in range(120):
            img = np.full((240, 320, 3), 255 if i == flash else 20, np.uint8)
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in vs.encode():
            c.mux(packet)
        audio = np.zeros(16000 * 4, np.int16)
        click = round(AV_CLIP_EVENT_S * 16000)
        audio[click : click + 160] = 20000
        for i in range(0, len(audio), 1024):
            frame = av.AudioFrame.from_ndarray(
                audio[i : i + 1024].reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = 16000, i
            for packet in aus.encode(frame):
                c.mux(packet)
        for packet in aus.encode():
            c.mux(packet)
    return path


ASOUNDRC = """
pcm.testmic {
    type plug
    slave { pcm "testmic_file"; format S16_LE; rate 16000; channels 1 }
    hint { show on; description "test microphone reading a file" }
}
pcm.testmic_file {
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "%s"
    format "raw"
}
"""


@pytest.fixture
def alsa_file_mic(tmp_path, monkeypatch):
    """An ALSA capture device `testmic` that plays a raw S16 file (a 440 Hz tone, 30 s)
    through PortAudio: the real sounddevice path, with no hardware. HOME points at a
    folder with the .asoundrc, for this process's children."""
    t = np.arange(16000 * 30) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    raw = tmp_path / "tone.raw"
    tone.tofile(raw)
    (tmp_path / ".asoundrc").write_text(ASOUNDRC % raw)
    monkeypatch.setenv("HOME", str(tmp_path))
    return "testmic"


# -- weights -----------------------------------------------------------------------------


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """A fresh weights cache, no base-URL override, and no proxy for 127.0.0.1."""
    monkeypatch.setenv("AVSTREAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AVSTREAM_WEIGHTS_BASE_URL", raising=False)
    # The test servers are local: never route them through a proxy from the environment.
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    return tmp_path / "cache" / "weights"


@pytest.fixture
def file_server(isolated_cache):
    """HTTP server on 127.0.0.1 with a random port, standing in for a model zoo: `files`
    maps paths to bodies (404 otherwise; a path ending in `.cut` announces its full size,
    sends half and hangs up); `requests` lists the paths asked for."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from types import SimpleNamespace

    files: dict[str, bytes] = {}
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            body = files.get(self.path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path.endswith(".cut"):
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        port = httpd.server_address[1]
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", files=files, requests=requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
        assert not thread.is_alive()


# -- two workers (pytest-xdist) -------------------------------------------------------------

#: What runs in the pipeline worker, one test after another: the files (or single tests,
#: as FILE::TEST) that start the pipeline's processes (python -m stream.run, record, bench,
#: proxy) or need the compiled x3d_xs. They must not run beside each other: a run without
#: --publish or --control binds the default ports, every start sweeps the stale /dev/shm
#: segments that test_faults makes on purpose, and the benchmark's figures and the runs'
#: real-time pace need the CPU they would share. Session fixtures are per worker: x3d_xs
#: is compiled once, in this worker. The other worker runs every other file (in process:
#: models, engines, export, trainings, rings, audio), a file at a time so that a module
#: fixture is built once. pytest_runtest_setup fails an e2e test left out of this list.
PIPELINE = {
    "test_bench.py",
    "test_cli_errors.py",
    "test_e2e.py",
    "test_e2e_av.py",
    "test_events_run.py",
    "test_events_timing.py",
    "test_faults.py",
    "test_fuzz.py",
    "test_malloc.py",
    "test_metrics.py",
    "test_preview.py",
    "test_progress.py",  # a real stream.record on a terminal
    "test_protocol.py",
    "test_proxy.py",
    "test_record.py",
    "test_run_messages.py",
    "test_streams.py",
    "test_subscribers.py",
    "test_train.py::test_trained_model_runs_in_stream",
    "test_web_run.py",
    "test_web_browser_run.py",  # a real stream.run --web in a browser
}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist turns -n into workers
def pytest_cmdline_main(config):
    """The whole suite (no paths named; -m and -k select as usual) runs in two workers
    unless -n says otherwise; named files or tests run in one process, since a file is one
    unit of work (below) and a second worker would only add its start-up. `-n 0` (or --pdb,
    or `-p no:xdist`) runs in one process. Here rather than `addopts = "-n 2"` in pyproject,
    which `-p no:xdist` (or an environment without pytest-xdist) would refuse as an unknown
    flag."""
    if hasattr(config, "workerinput") or not config.pluginmanager.hasplugin("xdist"):
        return  # a worker itself, or no pytest-xdist
    whole = config.args_source is not pytest.Config.ArgsSource.ARGS
    if config.option.numprocesses is None and whole and not config.option.usepdb:
        config.option.numprocesses = 2


def _in_pipeline(nodeid: str) -> bool:
    path, _, test = nodeid.partition("::")
    file = path.rpartition("/")[2]
    return file in PIPELINE or f"{file}::{test.split('[')[0]}" in PIPELINE


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: none without it (-p no:xdist)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's `load` distribution (what `-n N` gives) with the tests of PIPELINE
    as one unit of work and every other file as one unit each (xdist's loadscope, by
    file). Not `--dist loadgroup` with xdist_group marks: with pytest 9.2 the group never
    reaches the scheduler (pytest-xdist issue #1386), and the tests would run as if
    ungrouped."""
    if config.getvalue("dist") != "load":  # another distribution asked for by name
        return None
    from xdist.scheduler import LoadScopeScheduling

    class PipelineApart(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "pipeline" if _in_pipeline(nodeid) else nodeid.partition("::")[0]

    return PipelineApart(config, log)


def pytest_collection_modifyitems(items):
    """A test that starts `python -m stream.run` through the `run_stream` fixture is an
    end-to-end test, wherever it is: it gets the `e2e` marker without repeating it. One
    that needs the compiled x3d_xs engine (a compile of about half a minute per session)
    is `slow`."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "run_stream" in fixtures:
            item.add_marker(pytest.mark.e2e)
        if "x3d_xs_compiled" in fixtures:
            item.add_marker(pytest.mark.slow)
    # The files that need the compiled x3d_xs last (a file's tests stay together), so that
    # the pipeline tests before them run while it compiles (_x3d_xs_ahead).
    compiled = {
        item.path for item in items if "x3d_xs_compiled" in getattr(item, "fixturenames", ())
    }
    items.sort(key=lambda item: item.path in compiled)


def pytest_collection_finish(session):
    session.config.stash[_NEEDS_X3D_XS] = any(
        "x3d_xs_compiled" in getattr(item, "fixturenames", ()) for item in session.items
    )


def pytest_sessionfinish(session):
    """A compile of x3d_xs still running (the session stopped early) is stopped."""
    for proc, err in _X3D_XS_BUILDING.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.close()


@pytest.hookimpl(tryfirst=True)  # before its fixtures are set up
def pytest_runtest_setup(item):
    """An e2e test, or one that needs the compiled x3d_xs, outside PIPELINE fails at
    once, with or without workers (so that it is noticed at its first run): with them, it
    would run beside the pipeline tests."""
    fixtures = getattr(item, "fixturenames", ())
    if (item.get_closest_marker("e2e") or "x3d_xs_compiled" in fixtures) and not _in_pipeline(
        item.nodeid
    ):
        pytest.fail(
            f"{item.nodeid} starts the pipeline (e2e) or needs the compiled x3d_xs: add its "
            "file (or FILE::TEST) to PIPELINE in tests/conftest.py, so that it runs in the "
            "pipeline worker",
            pytrace=False,
        )
