"""End to end: `python -m stream.run` as a real process on a video file and on a network
stream from 127.0.0.1, a real subscriber, then SIGINT / SIGTERM; exit codes, timestamps,
heartbeats, child processes and /dev/shm are checked.

A run costs seconds of start-up, so each run below is started once (a module fixture)
and what it left (messages, log, exit code, processes, /dev/shm) is checked by several
tests."""

from __future__ import annotations

import dataclasses
import itertools
import signal
import statistics
import time
from pathlib import Path

import pytest

from helpers import (
    StreamProcess,
    auto_cpu_precision,
    descendants,
    expected_cpu_engine_name,
    running,
    segments_of,
    wait_until,
)
from stream.transport import wire
from stream.transport.subscribe import Message, Subscriber

MODEL_ARGS = ("--model", "x3d_xs", "--weights", "none", "--stride", "0.1", "--log-level", "info")


@dataclasses.dataclass
class Observed:
    """What one run of stream.run left for the tests to check."""

    preds: list[Message]
    statuses: list[Message]
    missed: int  # messages the subscriber lost on the way (gaps in seq)
    children: set[int]  # the run's processes while it ran
    segments: set[str]  # its shared memory while it ran
    code: int
    err: str
    survivors: set[int]  # processes of the run still there once it had exited
    segments_after: set[str]  # of `segments`, still in /dev/shm once it had exited


def _read(stream: StreamProcess, preds: int, statuses: int = 0, timeout: float = 180.0):
    """`preds` predictions and at least `statuses` heartbeats; fails fast if the run exits.
    Returns them and the count of messages the subscriber missed."""
    got: dict[str, list[Message]] = {"pred": [], "status": []}
    deadline = time.monotonic() + timeout
    with Subscriber(stream.endpoint, topics=("pred.", "status.")) as sub:
        while len(got["pred"]) < preds or len(got["status"]) < statuses:
            assert time.monotonic() < deadline, (
                f"{len(got['pred'])} predictions, {len(got['status'])} heartbeats in {timeout} s"
            )
            if stream.proc.poll() is not None:
                pytest.fail(f"stream.run exited with {stream.proc.returncode}: {stream.wait()[1]}")
            try:
                msg = sub.recv(timeout=1.0)
            except TimeoutError:
                continue
            got[msg.topic.split(".")[0]].append(msg)
        return got["pred"], got["status"], sub.missed


def _observe(stream: StreamProcess, sig: int, preds: int, statuses: int = 0) -> Observed:
    """Read from a running `stream`, stop it with `sig`, and note what it left."""
    got_preds, got_statuses, missed = _read(stream, preds, statuses)
    children = descendants(stream.proc.pid)
    segments = segments_of(stream.proc.pid)
    code, err = stream.stop(sig)
    # The resource tracker (multiprocessing's helper) exits once its pipe closes: give the
    # children a generous while to be gone; what is still there after it is a leak.
    deadline = time.monotonic() + 30
    while running(children) and time.monotonic() < deadline:
        time.sleep(0.05)
    return Observed(
        got_preds,
        got_statuses,
        missed,
        children,
        segments,
        code,
        err,
        running(children),
        segments_of(stream.proc.pid),
    )


def _check_predictions(preds, stream_id="cam0"):
    seqs = [m.body["seq"] for m in preds]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for m in preds:
        b = m.body
        assert m.topic == f"pred.{stream_id}"
        assert b["schema"] == wire.PREDICTION_SCHEMA and b["stream"] == stream_id
        assert b["model"] == "x3d_xs" and b["engine"] == expected_cpu_engine_name()
        assert len(b["labels"]) == 5
        scores = [x["score"] for x in b["labels"]]
        assert scores == sorted(scores, reverse=True)
        t = b["t"]
        assert (
            t["capture_ns"]
            <= t["infer_start_ns"]
            <= t["infer_end_ns"]
            <= t["publish_ns"]
            <= m.received_ns
        )
        assert b["window"]["start_ns"] < b["window"]["end_ns"] == t["capture_ns"]
        assert b["window"]["frames"] == 4
        # the window spans X3D-XS's 3 × 12/30 s within a frame period either side
        assert abs((b["window"]["end_ns"] - b["window"]["start_ns"]) / 1e9 - 1.2) < 0.07
        lat = b["latency_ms"]
        assert lat["engine"] == pytest.approx((t["infer_end_ns"] - t["infer_start_ns"]) / 1e6)
        assert lat["capture_to_publish"] == pytest.approx((t["publish_ns"] - t["capture_ns"]) / 1e6)
        # Unix time, stamped with publish_ns: the two clocks' offset is the one seen here
        offset_ns = t["wall_ns"] - t["publish_ns"]
        assert abs(offset_ns - (time.time_ns() - time.monotonic_ns())) < 1e9


def _check_clean_exit(run: Observed):
    assert run.children, "stream.run should have child processes while running"
    assert run.code == 0, run.err
    assert "Traceback" not in run.err, run.err
    assert not run.survivors, "child processes outlived stream.run"
    assert run.segments, "the frame ring should be in /dev/shm while running"
    assert not run.segments_after, "shared memory left in /dev/shm"


@pytest.fixture(scope="module")
def file_run(x3d_xs_compiled, video_file) -> Observed:
    """A video file played in a loop, stopped with SIGINT once 10 predictions and 6
    heartbeats have arrived."""
    stream = StreamProcess("--camera", str(video_file), "--loop", *MODEL_ARGS)
    try:
        return _observe(stream, signal.SIGINT, preds=10, statuses=6)
    finally:
        stream.kill()


@pytest.fixture(scope="module")
def mjpeg_run(x3d_xs_compiled, mjpeg_url) -> Observed:
    """A network camera (MJPEG over HTTP) as stream `door`, stopped with SIGTERM."""
    stream = StreamProcess("--camera", mjpeg_url, "--stream-id", "door", *MODEL_ARGS)
    try:
        return _observe(stream, signal.SIGTERM, preds=10)
    finally:
        stream.kill()


@pytest.mark.e2e
def test_video_file_to_subscriber(file_run):
    _check_predictions(file_run.preds)
    assert file_run.missed == 0
    assert file_run.statuses[-1].body["sources"]["video"]["source"] == "file"


@pytest.mark.e2e
def test_sigint_stops_the_run_cleanly(file_run):
    _check_clean_exit(file_run)


@pytest.mark.e2e
def test_the_log_of_a_run(file_run):
    err = file_run.err
    assert "the microphone (--mic default) is not used" in err
    assert err.count("predictions are random") == 1
    # The engine compiled for this CPU (once per test session, by the x3d_xs_compiled
    # fixture, as stream.run builds it) is loaded from the cache, not compiled again;
    # under bf16 the top-1 check's verdict comes with it and the check does not run again.
    name, chosen = expected_cpu_engine_name(), auto_cpu_precision()
    assert f"engine {name} (aot-compiled) on " in err, err
    assert f"{name}: loaded the compiled x3d_xs {chosen} from " in err, err
    assert f"{name}: x3d_xs compiled ahead of time" in err and "compiling" not in err
    if chosen == "bf16":
        assert "checked before and saved with the compiled engine" in err, err


@pytest.mark.e2e
def test_heartbeat_twice_a_second(file_run):
    """Heartbeats come on their own clock (every HEARTBEAT_S, not with each window) and
    none is lost. Their spacing is read from the stamps the heartbeat thread puts on
    them; the median (not each gap) is held to the documented once a second, so that a
    busy machine that delays a wake-up now and then does not fail it."""
    from stream.pipeline.inference import HEARTBEAT_S

    bodies = [m.body for m in file_run.statuses]
    assert all(b["schema"] == wire.STATUS_SCHEMA for b in bodies)
    seqs = [b["seq"] for b in bodies]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    gaps = [(b["t"]["mono_ns"] - a["t"]["mono_ns"]) / 1e9 for a, b in itertools.pairwise(bodies)]
    assert min(gaps) >= HEARTBEAT_S * 0.99, gaps  # not per window (10 a second here)
    assert statistics.median(gaps) <= 1.0, gaps


@pytest.mark.e2e
def test_mjpeg_stream_over_http(mjpeg_run):
    _check_predictions(mjpeg_run.preds, stream_id="door")
    assert mjpeg_run.missed == 0


@pytest.mark.e2e
def test_sigterm_stops_the_run_cleanly(mjpeg_run):
    _check_clean_exit(mjpeg_run)


@pytest.mark.e2e
def test_file_end_stops_the_run_cleanly(run_stream, video_file):
    stream = run_stream("--camera", str(video_file), *MODEL_ARGS)
    code, err = stream.wait(timeout=120)
    assert code == 0, err
    assert "end of" in err and "Traceback" not in err
    assert not segments_of(stream.proc.pid)


@pytest.mark.e2e
def test_duration_threads_and_no_compile(run_stream):
    stream = run_stream(
        "--camera",
        "synthetic",
        "--size",
        "160x120",
        "--duration",
        "1",
        "--threads",
        "1",
        "--no-compile",
        *MODEL_ARGS,
    )
    code, err = stream.wait(timeout=120)
    assert code == 0, err
    assert "--duration reached" in err
    assert f"engine {expected_cpu_engine_name()} (eager) on 1 CPU thread(s)" in err
    assert "compil" not in err
    if auto_cpu_precision() == "bf16":  # nothing compiled, nothing cached: checked on each start
        assert "example windows compared" in err and "saved with the compiled" not in err, err


def _compilers(pids: set[int]) -> set[int]:
    found = set()
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() in ("g++", "cc1plus", "c++"):
                found.add(pid)
        except OSError:
            pass
    return found


@pytest.mark.e2e
def test_stopping_while_the_engine_compiles_leaves_nothing_behind(run_stream, tmp_path):
    """Ctrl-C during a cold start, while g++ compiles the engine: the compiler dies with
    the run, and no half-written package stays in the cache. The model is a reduced
    x3d_xs (its build options from the YAML), so that g++ starts sooner."""
    config = tmp_path / "small.yaml"
    config.write_text("model_options: {depth_factor: 0.2, width_factor: 0.5}\n")
    cache = tmp_path / "cache"
    stream = run_stream(
        "--camera",
        "synthetic",
        "--size",
        "160x120",
        "--config",
        str(config),
        *MODEL_ARGS,
        env={"AVSTREAM_CACHE": str(cache)},
    )
    seen: set[int] = set()

    def compiling() -> set[int]:
        assert stream.proc.poll() is None, stream.wait()[1]
        seen.update(descendants(stream.proc.pid))
        return _compilers(seen)

    wait_until(compiling, "no compiler process appeared", timeout=180)
    code, err = stream.stop(signal.SIGINT)
    assert code == 0, err
    assert "Traceback" not in err, err
    left = seen | descendants(stream.proc.pid)
    wait_until(lambda: not running(left), "processes outlived stream.run", timeout=30)
    assert not segments_of(stream.proc.pid)
    assert [p.name for p in cache.rglob("*") if p.is_file()] == []


def test_live_sources_fill_the_first_window_while_the_engine_loads():
    """The rings (and capture into them) start before the engine is ready when every
    source is live; a file waits for the engine, so that none of it plays to nobody."""
    from stream.control import AudioOpened, ModelBuilt, VideoOpened
    from stream.pipeline.supervisor import rings_due

    model = ModelBuilt(name="x3d_xs", span_s=1.2, audio=None)
    camera = VideoOpened(kind="camera", width=640, height=480, fps=30.0, paced=False, live=True)
    file = VideoOpened(kind="file", width=640, height=480, fps=30.0, paced=True, live=False)
    mic = AudioOpened(kind="device", rate=16000, live=True, description="default")
    sound_file = AudioOpened(kind="file", rate=16000, live=False, description="clip.wav")
    assert rings_due(ready=False, model=model, video=camera, audio=None, audio_ready=True)
    assert rings_due(ready=False, model=model, video=camera, audio=mic, audio_ready=True)
    assert not rings_due(ready=False, model=model, video=file, audio=None, audio_ready=True)
    assert not rings_due(ready=False, model=model, video=camera, audio=sound_file, audio_ready=True)
    assert rings_due(ready=True, model=model, video=file, audio=sound_file, audio_ready=True)
    # not before the model's span, the video's format and (for listening models) the sound's
    # are known
    assert not rings_due(ready=False, model=None, video=camera, audio=None, audio_ready=True)
    assert not rings_due(ready=True, model=model, video=None, audio=None, audio_ready=True)
    assert not rings_due(ready=False, model=model, video=camera, audio=None, audio_ready=False)
