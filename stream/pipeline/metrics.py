"""Prometheus metrics of a run (`--metrics HOST:PORT`), served over HTTP by the inference
process; docs/metrics.md lists every metric.

The inference process is where the figures are (every window's engine time and
capture→publish latency, the skipped ticks, the streams it serves, the publisher's
subscriptions, the capture restarts the parent tells it of), so the registry lives there,
and so does the HTTP server (prometheus_client's WSGI app, on a thread of its own): a
scrape reads this process's memory, and no message crosses processes for it. The port is
bound when the inference process starts, before the model loads: a port in use is a
UserError, which the process reports as BadInput like the publisher's (one line, exit 2,
before the run says it is running).

The registry is the run's own, not prometheus_client's global one (which holds whatever
else imports the library, and would mix runs started in one test process). One lock
covers every hook and each scrape, so that a scrape is one moment of the run: in every
scrape, a stream's histograms count exactly its `avstream_windows_run_total`.

A stream's series exist while it is served, from its AddStream (at 0) to its removal
(removed, ended or failed): then they are removed, so that a stream that went is not
scraped as if it were still there with its last values. A hook about a stream that is not
served does nothing.
"""

from __future__ import annotations

import errno
import importlib.metadata
import re
import socket
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
from prometheus_client.process_collector import ProcessCollector

from stream.errors import UserError
from stream.transport.publish import loopback

#: Seconds of the latency histograms: 5 ms (a small model's engine call on a GPU) to 10 s
#: (a large model on a CPU), closest where strides are (0.1 to 1 s).
LATENCY_BUCKETS_S = (
    0.005,
    0.01,
    0.02,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.5,
    5.0,
    10.0,
)
#: How often the server's thread looks whether it is asked to stop: `close` (in the
#: inference process's stop, which has a grace period) waits up to this long.
POLL_S = 0.05
#: The metrics' names start with it.
PREFIX = "avstream_"

_ADDRESS = re.compile(r"(\[[^\]\s]+\]|[^:/\[\]\s]+):(\d{1,5})")
_EXAMPLE = "127.0.0.1:9108"


def parse_address(address: str, *, allow_remote: bool = False) -> tuple[str, int]:
    """(host, port) of --metrics HOST:PORT (an IPv6 address in brackets: [::1]:9108);
    UserError when malformed, or when other hosts could reach it without `allow_remote`."""
    m = _ADDRESS.fullmatch(address)
    if not m or not 0 < int(m[2]) < 65536:
        raise UserError(f"--metrics {address!r} is not HOST:PORT (port 1-65535), e.g. {_EXAMPLE}")
    host = m[1].strip("[]")
    if not loopback(host) and not allow_remote:
        raise UserError(
            f"--metrics {address!r} would let other hosts read this run's metrics: add "
            f"--allow-remote if that is what you want, or listen on 127.0.0.1"
        )
    return host, int(m[2])


def _version() -> str:
    try:
        return importlib.metadata.version("avstream")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return "unknown"


class _Quiet(WSGIRequestHandler):
    """A request handler that does not log each scrape on stderr (wsgiref's does)."""

    def log_message(self, *args) -> None:
        pass


class _Snapshot:
    """A collector of `metrics` that collects them all under `lock` (one moment)."""

    def __init__(self, metrics: list, lock: threading.Lock):
        self.metrics, self.lock = metrics, lock

    def describe(self):
        return [family for m in self.metrics for family in m.describe()]

    def collect(self):
        with self.lock:
            return [family for m in self.metrics for family in m.collect()]


class Metrics:
    """The run's metrics, in a registry of their own, served on `address` (HOST:PORT,
    already checked by the run's options) when one is given; None: recorded, not served.
    `max_batch`: the most windows an engine call runs (the batch histogram's buckets)."""

    def __init__(self, address: str | None, *, max_batch: int):
        self.lock = threading.Lock()
        self.streams: dict[str, set[str]] = {}  # served: the capture kinds of its series
        self.restart_totals: dict[tuple[str, str], int] = {}
        per_stream = ("stream",)
        self.engine_s = Histogram(
            PREFIX + "engine_seconds",
            "Engine time of the stream's windows: the engine call a window ran in, from its "
            "inputs in to its logits out (a batch's call counts for each of its windows)",
            per_stream,
            buckets=LATENCY_BUCKETS_S,
            registry=None,
        )
        self.capture_to_publish_s = Histogram(
            PREFIX + "capture_to_publish_seconds",
            "From the capture of a window's newest sample to the publication of its prediction",
            per_stream,
            buckets=LATENCY_BUCKETS_S,
            registry=None,
        )
        self.windows_run = Counter(
            PREFIX + "windows_run",
            "Windows run and published (predictions) of the stream",
            per_stream,
            registry=None,
        )
        self.windows_skipped = Counter(
            PREFIX + "windows_skipped",
            "Ticks of the stream that got no window because the windows before took longer "
            "than the stride",
            per_stream,
            registry=None,
        )
        self.windows_degraded = Counter(
            PREFIX + "windows_degraded",
            "Windows of the stream published as degraded (a video or audio gap inside them)",
            per_stream,
            registry=None,
        )
        self.capture_restarts = Counter(
            PREFIX + "capture_restarts",
            "Restarts of the stream's capture processes after they failed",
            ("stream", "capture"),
            registry=None,
        )
        self.active_events_n = Gauge(
            PREFIX + "active_events",
            "Events of the stream that have started and not ended",
            per_stream,
            registry=None,
        )
        self.streams_n = Gauge(PREFIX + "streams", "Streams served now", registry=None)
        self.subscriptions_n = Gauge(
            PREFIX + "subscriptions",
            "Live subscriptions of the run's publisher (each topic prefix a subscriber asked "
            "for; through a stream.proxy, the distinct prefixes of all its subscribers)",
            registry=None,
        )
        self.batch_windows = Histogram(
            PREFIX + "batch_windows",
            "Windows per engine call",
            buckets=tuple(float(n) for n in range(1, max_batch + 1)),
            registry=None,
        )
        self.build = Info(
            PREFIX + "build", "The run's model, engine and avstream version", registry=None
        )
        self.registry = CollectorRegistry()
        # The build info joins once there is one (`built`).
        self.snapshot = _Snapshot(
            [
                self.streams_n,
                self.subscriptions_n,
                self.batch_windows,
                self.engine_s,
                self.capture_to_publish_s,
                self.windows_run,
                self.windows_skipped,
                self.windows_degraded,
                self.capture_restarts,
                self.active_events_n,
            ],
            self.lock,
        )
        self.registry.register(self.snapshot)
        # The inference process's CPU time, memory and open files (process_*).
        ProcessCollector(registry=self.registry)
        self.server = self.thread = None
        if address is not None:
            self._serve(address)

    def _serve(self, address: str) -> None:
        host, port = parse_address(address, allow_remote=True)  # the options checked it
        try:
            # prometheus_client's start_http_server, with a thread that notices a stop
            # within POLL_S instead of its half a second.
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            server_class = type("Server", (ThreadingWSGIServer,), {"address_family": found[0][0]})
            app = make_wsgi_app(self.registry)
            self.server = make_server(host, port, app, server_class, handler_class=_Quiet)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(
                    f"cannot serve metrics on {address}: the address is in use (another "
                    f"stream.run?); pass a free one with --metrics 127.0.0.1:PORT"
                ) from None
            raise UserError(
                f"cannot serve metrics on {address}: {exc.strerror or exc}; pass an address "
                f"of this host with --metrics, e.g. {_EXAMPLE}"
            ) from None
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(POLL_S,), name="metrics", daemon=True
        )
        self.thread.start()

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) the server listens on, or None."""
        return None if self.server is None else self.server.server_address[:2]

    # -- the hooks ------------------------------------------------------------------------

    def built(self, *, model: str, engine: str) -> None:
        """The model and engine are ready."""
        with self.lock:
            self.build.info({"model": model, "engine": engine, "version": _version()})
            if self.build not in self.snapshot.metrics:
                self.snapshot.metrics.insert(0, self.build)

    def add_stream(self, stream: str, captures: tuple[str, ...]) -> None:
        """`stream` is served from now on, read by the capture processes `captures`
        (capture-video, capture-audio): its series start at 0."""
        with self.lock:
            self._drop(stream)
            self.streams[stream] = set(captures)
            for metric in self._per_stream():
                metric.labels(stream)
            for capture in captures:
                self.capture_restarts.labels(stream, capture)
            self.streams_n.set(len(self.streams))

    def remove_stream(self, stream: str) -> None:
        """`stream` is no longer served: its series go."""
        with self.lock:
            self._drop(stream)
            self.streams_n.set(len(self.streams))

    def window(self, body: dict) -> None:
        """A prediction was published: `body` as sent (wire.prediction, stamped)."""
        stream, latency = body["stream"], body["latency_ms"]
        with self.lock:
            if stream not in self.streams:
                return
            self.windows_run.labels(stream).inc()
            self.engine_s.labels(stream).observe(latency["engine"] / 1e3)
            self.capture_to_publish_s.labels(stream).observe(latency["capture_to_publish"] / 1e3)
            if body["degraded"]:
                self.windows_degraded.labels(stream).inc()

    def skipped(self, stream: str, ticks: int) -> None:
        """`ticks` of the stream passed without a window (the engine was behind)."""
        with self.lock:
            if ticks and stream in self.streams:
                self.windows_skipped.labels(stream).inc(ticks)

    def batch(self, windows: int) -> None:
        """An engine call ran `windows` windows."""
        with self.lock:
            self.batch_windows.observe(windows)

    def restarts(self, stream: str, capture: str, total: int) -> None:
        """The parent says the stream's `capture` process has restarted `total` times."""
        with self.lock:
            if stream not in self.streams:
                return
            self.streams[stream].add(capture)
            key = (stream, capture)
            more = total - self.restart_totals.get(key, 0)
            if more > 0:
                self.capture_restarts.labels(stream, capture).inc(more)
                self.restart_totals[key] = total

    def active_events(self, stream: str, n: int) -> None:
        """`n` events of the stream have started and not ended (the events' tracker)."""
        with self.lock:
            if stream in self.streams:
                self.active_events_n.labels(stream).set(n)

    def subscriptions(self, n: int) -> None:
        """The publisher has `n` live subscriptions."""
        with self.lock:
            self.subscriptions_n.set(n)

    def close(self) -> None:
        """Stop serving (the port is free once this returns)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5.0)
            self.server = self.thread = None

    # -- helpers --------------------------------------------------------------------------

    def _per_stream(self) -> tuple:
        return (
            self.engine_s,
            self.capture_to_publish_s,
            self.windows_run,
            self.windows_skipped,
            self.windows_degraded,
            self.active_events_n,
        )

    def _drop(self, stream: str) -> None:
        """Remove the stream's series (the lock is held)."""
        captures = self.streams.pop(stream, None)
        if captures is None:
            return
        for metric in self._per_stream():
            metric.remove(stream)
        for capture in captures:
            self.capture_restarts.remove(stream, capture)
            self.restart_totals.pop((stream, capture), None)
