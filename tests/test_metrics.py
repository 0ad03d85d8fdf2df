"""Prometheus metrics of a run (`--metrics HOST:PORT`, stream/pipeline/metrics.py): the
module fed by hand (the registry's series and values, a removed stream's series gone, one
scrape one moment, served over real HTTP), bad input (an address other hosts can reach
without --allow-remote, a malformed one, a port in use), and a real `python -m stream.run`
of two cameras scraped over HTTP while it runs."""

from __future__ import annotations

import importlib.metadata
import json
import multiprocessing
import os
import signal
import threading
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import (
    ctl_output,
    expected_cpu_engine_name,
    free_port,
    held_port,
    one_error_line,
    run_to_end,
    wait_until,
)
from stream import run
from stream.errors import UserError
from stream.pipeline.metrics import Metrics, parse_address
from stream.transport.subscribe import Subscriber

VIDEO = ("capture-video",)
#: What the build info says of the version: this checkout is installed (editable).
VERSION = importlib.metadata.version("avstream")
AV = ("capture-video", "capture-audio")


def _body(stream: str, engine_ms: float = 12.0, c2p_ms: float = 80.0, degraded=()) -> dict:
    """What Metrics.window reads of a published prediction (wire.prediction, stamped)."""
    return {
        "stream": stream,
        "latency_ms": {"engine": engine_ms, "capture_to_publish": c2p_ms},
        "degraded": list(degraded),
    }


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, its labels): value} of a scrape in the text format."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _streams_of(samples: dict) -> set[str]:
    return {dict(labels)["stream"] for _, labels in samples if "stream" in dict(labels)}


def _registry(metrics: Metrics) -> dict:
    from prometheus_client import generate_latest

    return _samples(generate_latest(metrics.registry).decode())


def _scrape(port: int, path: str = "/metrics") -> dict:
    # No proxy from the environment for 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        assert response.status == 200
        return _samples(response.read().decode())


# -- the module, fed by hand ---------------------------------------------------------------


def test_the_registry_holds_what_it_was_fed():
    m = Metrics(None, max_batch=2)
    assert "avstream_build_info" not in {name for name, _ in _registry(m)}  # no engine yet
    m.built(model="x3d_xs", engine="torch-cpu")
    m.add_stream("door", AV)
    m.add_stream("yard", VIDEO)
    m.window(_body("door", engine_ms=12.0, c2p_ms=80.0))
    m.window(_body("door", engine_ms=40.0, c2p_ms=400.0, degraded=["audio gap: 10 missing"]))
    m.window(_body("yard", engine_ms=40.0, c2p_ms=120.0))
    m.batch(1)
    m.batch(2)
    m.skipped("door", 3)
    m.skipped("yard", 0)
    m.restarts("door", "capture-audio", 1)
    m.restarts("door", "capture-audio", 1)  # the same restart said again: counted once
    m.restarts("door", "capture-audio", 3)
    m.active_events("yard", 2)
    m.subscriptions(4)
    m.window(_body("gone"))  # not served: nothing
    m.active_events("gone", 1)
    got = _registry(m)

    assert _value(got, "avstream_build_info", model="x3d_xs", engine="torch-cpu", version=VERSION)
    assert _value(got, "avstream_streams") == 2
    assert _value(got, "avstream_subscriptions") == 4
    assert _value(got, "avstream_windows_run_total", stream="door") == 2
    assert _value(got, "avstream_windows_run_total", stream="yard") == 1
    assert _value(got, "avstream_windows_degraded_total", stream="door") == 1
    assert _value(got, "avstream_windows_degraded_total", stream="yard") == 0
    assert _value(got, "avstream_windows_skipped_total", stream="door") == 3
    assert _value(got, "avstream_windows_skipped_total", stream="yard") == 0
    restarts = "avstream_capture_restarts_total"
    assert _value(got, restarts, stream="door", capture="capture-audio") == 3
    assert _value(got, restarts, stream="door", capture="capture-video") == 0
    assert _value(got, restarts, stream="yard", capture="capture-video") == 0
    assert _value(got, restarts, stream="yard", capture="capture-audio") is None  # no sound
    assert _value(got, "avstream_active_events", stream="yard") == 2
    assert _value(got, "avstream_active_events", stream="door") == 0
    # seconds, in the buckets they fall in
    engine = "avstream_engine_seconds"
    assert _value(got, f"{engine}_count", stream="door") == 2
    assert _value(got, f"{engine}_sum", stream="door") == pytest.approx(0.052)
    assert _value(got, f"{engine}_bucket", stream="door", le="0.01") == 0
    assert _value(got, f"{engine}_bucket", stream="door", le="0.02") == 1
    assert _value(got, f"{engine}_bucket", stream="door", le="0.05") == 2
    c2p = "avstream_capture_to_publish_seconds"
    assert _value(got, f"{c2p}_bucket", stream="door", le="0.1") == 1
    assert _value(got, f"{c2p}_bucket", stream="door", le="0.5") == 2
    assert _value(got, f"{c2p}_sum", stream="yard") == pytest.approx(0.12)
    assert _value(got, f"{c2p}_bucket", stream="yard", le="0.005") == 0
    assert _value(got, f"{c2p}_bucket", stream="yard", le="10.0") == 1
    assert _value(got, f"{c2p}_bucket", stream="yard", le="+Inf") == 1
    # windows per engine call: buckets 1 to max_batch
    assert _value(got, "avstream_batch_windows_bucket", le="1.0") == 1
    assert _value(got, "avstream_batch_windows_bucket", le="2.0") == 2
    assert _value(got, "avstream_batch_windows_sum") == 3
    assert _streams_of(got) == {"door", "yard"}
    # the inference process's own figures
    assert _value(got, "process_resident_memory_bytes") > 0


def test_a_removed_stream_has_no_series_and_comes_back_at_zero():
    m = Metrics(None, max_batch=1)
    m.add_stream("door", VIDEO)
    m.add_stream("yard", AV)
    m.window(_body("yard"))
    m.restarts("yard", "capture-video", 2)
    m.active_events("yard", 1)
    m.remove_stream("yard")
    got = _registry(m)
    assert _streams_of(got) == {"door"}
    assert _value(got, "avstream_streams") == 1
    m.window(_body("yard"))  # a late hook of the stream that went does nothing
    m.active_events("yard", 0)
    assert _streams_of(_registry(m)) == {"door"}
    m.add_stream("yard", VIDEO)  # the same id again: a new stream, from 0
    m.restarts("yard", "capture-video", 1)
    got = _registry(m)
    assert _value(got, "avstream_windows_run_total", stream="yard") == 0
    assert _value(got, "avstream_capture_restarts_total", stream="yard", capture="capture-video")
    assert _value(got, "avstream_streams") == 2


def test_a_scrape_is_one_moment():
    """While windows are recorded as fast as they come, every scrape counts as many
    windows in each histogram as in the windows counter (one lock for hooks and scrape)."""
    m = Metrics(None, max_batch=1)
    m.add_stream("door", VIDEO)
    halt = threading.Event()

    def feed():
        while not halt.is_set():
            m.window(_body("door"))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        for _ in range(200):
            got = _registry(m)
            windows = _value(got, "avstream_windows_run_total", stream="door")
            assert _value(got, "avstream_engine_seconds_count", stream="door") == windows
            assert _value(got, "avstream_capture_to_publish_seconds_count", stream="door") == (
                windows
            )
    finally:
        halt.set()
        feeder.join(timeout=10)
    assert windows > 0


def test_served_over_http_and_the_port_freed_on_close():
    port = free_port()
    m = Metrics(f"127.0.0.1:{port}", max_batch=1)
    try:
        assert m.address == ("127.0.0.1", port)
        m.add_stream("door", VIDEO)
        m.window(_body("door"))
        got = _scrape(port)
        assert _value(got, "avstream_windows_run_total", stream="door") == 1
        assert _scrape(port, "/")  # any path, as prometheus_client serves it
    finally:
        m.close()
    again = Metrics(f"127.0.0.1:{port}", max_batch=1)  # the port was let go
    again.close()


def test_a_port_in_use_is_one_line():
    with held_port() as port, pytest.raises(UserError) as err:
        Metrics(f"127.0.0.1:{port}", max_batch=1)
    assert str(err.value) == (
        f"cannot serve metrics on 127.0.0.1:{port}: the address is in use (another "
        "stream.run?); pass a free one with --metrics 127.0.0.1:PORT"
    )


def test_addresses():
    assert parse_address("127.0.0.1:9108") == ("127.0.0.1", 9108)
    assert parse_address("localhost:9108") == ("localhost", 9108)
    assert parse_address("[::1]:9108") == ("::1", 9108)
    assert parse_address("0.0.0.0:9108", allow_remote=True) == ("0.0.0.0", 9108)
    assert parse_address("[::]:9108", allow_remote=True) == ("::", 9108)
    for remote in ("0.0.0.0:9108", "[::]:9108", "metrics.example.org:9108", "10.1.2.3:9108"):
        with pytest.raises(UserError, match="would let other hosts read this run's metrics"):
            parse_address(remote)
    for malformed in ("9108", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "::1:9108", ""):
        with pytest.raises(UserError, match="is not HOST:PORT"):
            parse_address(malformed)


# -- bad input of stream.run ---------------------------------------------------------------


@pytest.fixture
def refused(capsys, monkeypatch):
    """`stream.run.main(argv)` in this process: its one error line (exit 2, nothing else
    on stderr, no child process)."""

    def _pipeline_would_start(cfg):
        pytest.fail(f"the options were accepted, a pipeline would start: {cfg}")

    monkeypatch.setattr(run, "Supervisor", _pipeline_would_start)  # a tripwire

    def call(*argv: str) -> str:
        code = run.main(list(argv))
        err = capsys.readouterr().err
        assert code == 2, err
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert not multiprocessing.active_children()
        return lines[0]

    return call


def test_bad_metrics_options_are_one_line(refused, tmp_path):
    assert refused("--metrics", "0.0.0.0:9108") == (
        "error: --metrics '0.0.0.0:9108' would let other hosts read this run's metrics: add "
        "--allow-remote if that is what you want, or listen on 127.0.0.1"
    )
    assert refused("--metrics", "9108") == (
        "error: --metrics '9108' is not HOST:PORT (port 1-65535), e.g. 127.0.0.1:9108"
    )
    assert "is not HOST:PORT" in refused("--metrics", "localhost:http")
    config = tmp_path / "run.yaml"
    config.write_text("metrics: 9108\n")
    assert refused("--config", str(config)) == (
        f"error: config file '{config}': metrics must be str, got int 9108"
    )
    # what is refused without --allow-remote is taken with it; off unless given
    assert run.parse_config(["--metrics", "0.0.0.0:9108", "--allow-remote"]).metrics == (
        "0.0.0.0:9108"
    )
    assert run.parse_config([]).metrics is None


@pytest.mark.e2e
def test_a_metrics_port_in_use_ends_the_run_at_start():
    """The inference process binds the port as it starts, before the model loads: a port
    in use is one line, exit 2, and nothing is left behind."""
    with held_port() as port:
        code, err = run_to_end(
            "--camera", "synthetic", "--weights", "none", "--log-level", "warning",
            "--metrics", f"127.0.0.1:{port}", timeout=180,
        )  # fmt: skip
    assert code == 2, err
    assert one_error_line(err) == (
        f"error: cannot serve metrics on 127.0.0.1:{port}: the address is in use (another "
        "stream.run?); pass a free one with --metrics 127.0.0.1:PORT"
    ), err
    assert "running:" not in err


# -- a real run, scraped -------------------------------------------------------------------


def _consistent(samples: dict, stream: str) -> float:
    """A stream's windows run; each histogram of the scrape counts as many."""
    windows = _value(samples, "avstream_windows_run_total", stream=stream)
    assert windows is not None, f"no series of {stream}"
    for name in ("avstream_engine_seconds", "avstream_capture_to_publish_seconds"):
        assert _value(samples, f"{name}_count", stream=stream) == windows, (name, stream)
        assert _value(samples, f"{name}_bucket", stream=stream, le="+Inf") == windows
    return windows


def test_a_run_is_scraped_while_it_runs(run_stream):
    port = free_port()
    stream = run_stream(
        "--camera", "synthetic", "--camera", "synthetic", "--size", "160x120",
        "--max-batch", "1", "--model", "x3d_xs", "--weights", "none", "--stride", "0.5",
        "--metrics", f"127.0.0.1:{port}", "--log-level", "info",
    )  # fmt: skip
    line = stream.wait_for("running: publishing on").string
    assert f"metrics on http://127.0.0.1:{port}/metrics" in line

    def windows_of_both(at_least: float):
        got = _scrape(port)
        runs = [_value(got, "avstream_windows_run_total", stream=s) or 0 for s in ("cam0", "cam1")]
        return got if min(runs) >= at_least else None

    first = wait_until(lambda: windows_of_both(2), "2 windows of each stream", timeout=180)
    assert _streams_of(first) == {"cam0", "cam1"}
    before = {s: _consistent(first, s) for s in ("cam0", "cam1")}
    # one window per engine call (--max-batch 1): as many calls as windows, all of one
    assert _value(first, "avstream_batch_windows_count") == sum(before.values())
    assert _value(first, "avstream_batch_windows_bucket", le="1.0") == sum(before.values())
    assert _value(first, "avstream_streams") == 2
    build = {"model": "x3d_xs", "engine": expected_cpu_engine_name(), "version": VERSION}
    assert _value(first, "avstream_build_info", **build) == 1
    for s in ("cam0", "cam1"):
        assert _value(first, "avstream_windows_skipped_total", stream=s) is not None
        assert _value(first, "avstream_windows_degraded_total", stream=s) is not None
        assert _value(first, "avstream_active_events", stream=s) == 0
        assert _value(first, "avstream_capture_restarts_total", stream=s, capture=VIDEO[0]) == 0

    # a subscriber is counted
    with Subscriber(stream.endpoint, topics=("pred.",)) as sub:
        sub.recv(timeout=120)
        wait_until(lambda: _value(_scrape(port), "avstream_subscriptions") >= 1, "the subscription")

    # the counters go on
    later = wait_until(
        lambda: windows_of_both(max(before.values()) + 2), "more windows", timeout=180
    )
    for s in ("cam0", "cam1"):
        assert _consistent(later, s) > before[s]

    # a capture process killed and restarted is counted
    status = json.loads(ctl_output(stream.control, "status", "--json"))
    os.kill(status["processes"]["capture-video:cam0"], signal.SIGKILL)
    restarts = "avstream_capture_restarts_total"
    wait_until(
        lambda: _value(_scrape(port), restarts, stream="cam0", capture=VIDEO[0]) == 1,
        "the restart of cam0's capture counted",
        timeout=120,
    )

    # a removed stream's series are gone; the other's remain
    assert ctl_output(stream.control, "remove", "cam1") == "removed cam1\n"
    after = _scrape(port)
    assert _streams_of(after) == {"cam0"}
    assert _value(after, "avstream_streams") == 1
    _consistent(after, "cam0")

    code, err = stream.stop()
    assert code == 0, err
