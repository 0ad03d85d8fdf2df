"""`python -m stream.proxy` and `stream.run --publish connect:...`: many publishers, one
endpoint for subscribers, through libzmq's proxy; CURVE on both sides; bad input; a proxy
killed and started again while three runs publish through it."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import sys
import threading

import pytest
import zmq
from test_wire import _prediction

from helpers import ProcessLines, descendants, free_port, running, segments_of, wait_until
from stream.errors import UserError
from stream.transport import proxy, wire
from stream.transport.keys import make_keys
from stream.transport.publish import Publisher
from stream.transport.subscribe import HandshakeError, Subscriber

PUBLISH_LOG = "stream.transport.publish"


class ProxyProcess(ProcessLines):
    """`python -m stream.proxy` as a real process on free ports of 127.0.0.1; started, it
    has said that it is ready (its first line)."""

    stop_signal = signal.SIGTERM

    def __init__(self, *args: str, frontend: int | None = None, backend: int | None = None):
        self.frontend = f"tcp://127.0.0.1:{frontend or free_port()}"
        self.backend = f"tcp://127.0.0.1:{backend or free_port()}"
        argv = [sys.executable, "-m", "stream.proxy", "--frontend", self.frontend]
        super().__init__([*argv, "--backend", self.backend, *args])
        self.wait_for(r"^proxy: publishers connect to ")
        assert self.lines == [
            f"proxy: publishers connect to {self.frontend}, subscribers to {self.backend}"
            + (
                " (CURVE: runs pass the proxy's server.key as --curve-server-key)"
                if "--curve-secret-key" in args
                else ""
            )
        ], self.err

    def stop(self, sig: int | None = None) -> tuple[int, list[str]]:
        """Send `sig` (SIGTERM unless given); the exit status and the lines it wrote after
        the ready line."""
        code, _ = super().stop(sig)
        return code, self.lines[1:]


@pytest.fixture
def start_proxy():
    started: list[ProxyProcess] = []

    def start(*args: str, **ports) -> ProxyProcess:
        started.append(ProxyProcess(*args, **ports))
        return started[-1]

    yield start
    for p in started:
        p.kill()


class Sender:
    """Publishers that send a prediction on their stream's topic every 20 ms (the send rate,
    not a wait) until closed, in one thread, and read their subscriptions and connection
    events as a run's heartbeat does."""

    def __init__(self, publishers: dict[str, Publisher]):
        self.publishers = publishers
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._send, daemon=True)
        self._thread.start()

    def _send(self) -> None:
        seq = 0
        while not self._halt.wait(0.02):
            for stream, publisher in self.publishers.items():
                body = _prediction(stream=stream, seq=seq)
                publisher.send(wire.topic(wire.PRED_TOPIC, stream), body)
                publisher.count_subscriptions()
            seq += 1

    def close(self) -> None:
        self._halt.set()
        self._thread.join(timeout=10)
        for publisher in self.publishers.values():
            publisher.close()


def _streams_seen(sub: Subscriber, wanted: set[str], timeout: float = 60) -> None:
    seen: set[str] = set()
    while seen != wanted:
        seen.add(sub.recv(timeout=timeout).body["stream"])


def _port_free(endpoint: str) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", int(endpoint.rpartition(":")[2])))
        except OSError:
            return False
    return True


# -- publishers through a proxy ---------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_publishers_that_connect_reach_every_subscriber_of_the_proxy(start_proxy, caplog, sig):
    caplog.set_level(logging.INFO, logger=PUBLISH_LOG)
    front, back = free_port(), free_port()
    context = zmq.Context()
    # Publishers first: connecting to a proxy that is not there yet costs nothing.
    publishers = {
        s: Publisher(f"connect:tcp://127.0.0.1:{front}", context=context) for s in ("a", "b")
    }
    sender = Sender(publishers)

    def subscribed(count: int) -> None:
        for publisher in publishers.values():
            wait_until(lambda pub=publisher: pub.count_subscriptions() == count, f"{count} subs")

    try:
        subscribed(0)
        p = start_proxy(frontend=front, backend=back)
        with Subscriber(p.backend, context=context) as stays:
            with Subscriber(p.backend, context=context) as other:
                _streams_seen(stays, {"a", "b"})
                _streams_seen(other, {"a", "b"})
                # Through the proxy a publisher sees each prefix asked for once: both
                # subscribers want "pred.".
                subscribed(1)
            assert f"publishing through the proxy at tcp://127.0.0.1:{front}" in caplog.text
            code, lines = p.stop(sig)
            assert (code, lines) == (0, ["proxy: stopped"])
            subscribed(0)
            assert "lost the proxy at" in caplog.text
            assert _port_free(p.frontend) and _port_free(p.backend)
            # Started again on the same ports: publishers and the subscriber that stayed
            # reconnect by themselves, and the subscription counts once, not twice.
            start_proxy(frontend=front, backend=back)
            _streams_seen(stays, {"a", "b"})
            subscribed(1)
    finally:
        sender.close()
        context.term()


def test_curve_on_both_sides_of_the_proxy(start_proxy, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=PUBLISH_LOG)
    keys = tmp_path / "keys"
    make_keys(keys, ["host1", "rogue", "viewer"])
    # The runs' public keys go to a folder of their own, so that a viewer cannot publish.
    (keys / "publishers").mkdir()
    shutil.move(keys / "clients" / "host1.key", keys / "publishers")
    (keys / "clients" / "rogue.key").unlink()
    p = start_proxy(
        "--curve-secret-key",
        str(keys / "server.key_secret"),
        "--curve-publishers",
        str(keys / "publishers"),
        "--curve-clients",
        str(keys / "clients"),
    )
    context = zmq.Context()
    server = str(keys / "server.key")
    host1, rogue = (
        Publisher(
            f"connect:{p.frontend}",
            curve_secret_key=str(keys / f"{name}.key_secret"),
            curve_server_key=server,
            context=context,
        )
        for name in ("host1", "rogue")
    )
    plain = Publisher(f"connect:{p.frontend}", context=context)
    sender = Sender({"host1": host1, "rogue": rogue, "plain": plain})
    try:
        with Subscriber(
            p.backend,
            curve_server_key=server,
            curve_client_key=str(keys / "viewer.key_secret"),
            context=context,
        ) as viewer:
            _streams_seen(viewer, {"host1"})
            # The proxy refuses the publisher whose key is not in --curve-publishers, and
            # that publisher says so in its log (counted from its heartbeat's calls).
            wait_until(
                lambda: (
                    rogue.count_subscriptions() == 0
                    and "refuses this run's CURVE key" in caplog.text
                ),
                "the refused publisher's log line",
            )
            # A run without keys cannot talk to a proxy with them, and says so in its log.
            wait_until(
                lambda: (
                    plain.count_subscriptions() == 0
                    and f"the handshake with the proxy at {p.frontend} failed" in caplog.text
                ),
                "the plain publisher's log line",
            )
            streams = {viewer.recv(timeout=60).body["stream"] for _ in range(20)}
            assert streams == {"host1"}
        refused = {
            "plain": {},
            "a run's key": {"curve_client_key": str(keys / "host1.key_secret")},
            "not a client": {"curve_client_key": str(keys / "rogue.key_secret")},
        }
        for what, key in refused.items():
            curve = {"curve_server_key": server, **key} if key else {}
            with Subscriber(p.backend, context=context, **curve) as sub:
                with pytest.raises(HandshakeError):
                    sub.recv(timeout=60)
                    pytest.fail(f"{what}: a subscriber the proxy should refuse got a message")
    finally:
        sender.close()
        context.term()
    assert p.stop()[0] == 0
    # The refused handshakes repeated (ZeroMQ retries every 0.1 s); the log said it once.
    assert caplog.text.count("refuses this run's CURVE key") == 1
    assert caplog.text.count("the handshake with the proxy at") == 1


# -- bad input -----------------------------------------------------------------------------


@pytest.fixture
def refused(capsys):
    """Run `proxy.main(argv)` here and return its one error line: exit status 2, the line
    is all stderr holds, no thread is left and the signal handlers are as they were."""

    def call(*argv: str) -> str:
        threads = threading.active_count()
        handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        try:
            code = proxy.main(list(argv))
        except SystemExit as exc:  # argparse
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2, err
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert threading.active_count() == threads
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
        return lines[0]

    return call


def test_proxy_bad_input(refused, tmp_path):
    port = free_port()
    assert refused("--frontend", "tcp://127.0.0.1") == (
        "error: --frontend 'tcp://127.0.0.1' is not an endpoint like tcp://127.0.0.1:5555"
    )
    assert refused("--backend", "connect:tcp://127.0.0.1:5557") == (
        "error: --backend 'connect:tcp://127.0.0.1:5557' is not an endpoint like "
        "tcp://127.0.0.1:5555"
    )
    assert refused("--frontend", f"tcp://0.0.0.0:{port}") == (
        f"error: --frontend 'tcp://0.0.0.0:{port}' would let other hosts publish: add "
        "--allow-remote if that is what you want, or listen on 127.0.0.1"
    )
    assert refused("--backend", f"tcp://[::]:{port}") == (
        f"error: --backend 'tcp://[::]:{port}' would let other hosts subscribe: add "
        "--allow-remote if that is what you want, or listen on 127.0.0.1"
    )
    same = f"tcp://127.0.0.1:{port}"
    assert refused("--frontend", same, "--backend", same) == (
        f"error: --frontend {same} and --backend {same} share port {port}: give each its own "
        "(e.g. 5556 and 5557)"
    )
    assert refused("--colour") == (
        "error: unrecognized arguments: --colour (see python -m stream.proxy --help)"
    )
    clients = tmp_path / "clients"
    clients.mkdir()
    assert refused("--curve-clients", str(clients), "--backend", same) == (
        "error: --curve-clients needs --curve-secret-key (the proxy's server.key_secret)"
    )
    garbage = tmp_path / "server.key_secret"
    garbage.write_text("not a key\n")
    garbage.chmod(0o600)
    assert refused("--curve-secret-key", str(garbage)).startswith(
        f"error: CURVE key file '{garbage}' cannot be read"
    )
    make_keys(tmp_path / "keys", ["viewer"])
    secret = str(tmp_path / "keys" / "server.key_secret")
    missing = str(tmp_path / "nowhere")
    assert refused("--curve-secret-key", secret, "--curve-publishers", missing) == (
        f"error: --curve-publishers {missing!r} is not a folder of client public keys (*.key)"
    )


def test_proxy_port_in_use_leaves_the_other_port_free(refused):
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(back.rpartition(":")[2])))
        taken.listen()
        assert refused("--frontend", front, "--backend", back) == (
            f"error: cannot listen on --backend {back}: the address is in use (another "
            "stream.proxy or stream.run?); pass a free port"
        )
    assert _port_free(front)  # the frontend, bound first, was closed again


# -- stream.run's options for a proxy ---------------------------------------------------------


def _run_config(*argv: str):
    from stream import run

    return run.parse_config(["--weights", "none", *argv])


def test_run_connects_to_a_proxy_on_any_host_without_allow_remote(tmp_path):
    cfg = _run_config("--publish", "connect:tcp://proxy.example.org:5556")
    assert cfg.publish == "connect:tcp://proxy.example.org:5556" and not cfg.allow_remote
    make_keys(tmp_path, ["host1"])
    cfg = _run_config(
        "--publish",
        "connect:tcp://[2001:db8::1]:5556",
        "--curve-secret-key",
        str(tmp_path / "host1.key_secret"),
        "--curve-server-key",
        str(tmp_path / "server.key"),
    )
    assert cfg.curve_server_key == str(tmp_path / "server.key")


def test_run_options_for_a_proxy_that_do_not_fit(tmp_path):
    make_keys(tmp_path, ["host1"])
    secret, server = str(tmp_path / "host1.key_secret"), str(tmp_path / "server.key")
    cases = {
        ("--publish", "connect:tcp://proxyhost"): (
            "--publish 'connect:tcp://proxyhost' is not an endpoint like "
            "connect:tcp://proxyhost:5556 (a stream.proxy's --frontend)"
        ),
        ("--publish", "connect:ipc:///tmp/proxy"): (
            "--publish 'connect:ipc:///tmp/proxy' is not an endpoint like "
            "connect:tcp://proxyhost:5556 (a stream.proxy's --frontend)"
        ),
        ("--publish", "tcp://127.0.0.1"): (
            "--publish 'tcp://127.0.0.1' is not an endpoint like tcp://127.0.0.1:5555 "
            "(or connect:tcp://proxyhost:5556 for a stream.proxy)"
        ),
        ("--curve-server-key", server): (
            "--curve-server-key is for --publish connect:tcp://HOST:PORT (the proxy's public "
            "key): a run that binds is the CURVE server itself"
        ),
        ("--publish", "connect:tcp://h:5556", "--curve-secret-key", secret): (
            "CURVE through a proxy needs both --curve-secret-key (this run's NAME.key_secret) "
            "and --curve-server-key (the proxy's server.key)"
        ),
        ("--publish", "connect:tcp://h:5556", "--curve-server-key", server): (
            "CURVE through a proxy needs both --curve-secret-key (this run's NAME.key_secret) "
            "and --curve-server-key (the proxy's server.key)"
        ),
        (
            "--publish",
            "connect:tcp://h:5556",
            "--curve-secret-key",
            secret,
            "--curve-clients",
            str(tmp_path / "clients"),
        ): (
            "--curve-clients is for a run that binds: connected to a proxy, the proxy lets "
            "subscribers in (python -m stream.proxy --curve-clients DIR)"
        ),
        (
            "--publish",
            "connect:tcp://h:5556",
            "--curve-secret-key",
            secret,
            "--curve-server-key",
            str(tmp_path / "nope.key"),
        ): f"CURVE key file '{tmp_path / 'nope.key'}' cannot be read",
    }
    for argv, message in cases.items():
        with pytest.raises(UserError) as info:
            _run_config(*argv)
        assert str(info.value).startswith(message), argv


def test_a_publisher_without_its_proxy_never_waits():
    """Connected to a port where nothing listens, every send is taken at once (nothing
    subscribed: nothing queued), however many."""
    context = zmq.Context()
    publisher = Publisher(f"connect:tcp://127.0.0.1:{free_port()}", hwm=10, context=context)
    try:
        assert all(publisher.send("pred.a", _prediction(stream="a")) for _ in range(1000))
        assert (publisher.sent, publisher.dropped, publisher.count_subscriptions()) == (1000, 0, 0)
    finally:
        publisher.close()
        context.term()


# -- three runs through a proxy that is killed and started again ----------------------------

RUN_ARGS = (
    "--camera",
    "synthetic",
    "--size",
    "160x120",
    "--weights",
    "none",
    "--stride",
    "0.25",
    "--max-batch",  # one stream per run: the session's compiled engine (batch 1)
    "1",
    "--log-level",
    "info",
)


def _until_each(sub: Subscriber, streams: str, done, timeout: float = 180) -> dict[str, list]:
    """Messages by stream (predictions and status) until `done(messages of a stream)` holds
    for every stream."""
    got: dict[str, list] = {s: [] for s in streams}
    while not all(done(got[s]) for s in streams):
        msg = sub.recv(timeout=timeout)
        got[msg.body["stream"]].append(msg)
    return got


def _preds(msgs) -> list[dict]:
    return [m.body for m in msgs if m.topic.startswith(wire.PRED_TOPIC + ".")]


def _statuses(msgs) -> list[dict]:
    return [m.body for m in msgs if m.topic.startswith(wire.STATUS_TOPIC + ".")]


def test_three_runs_through_a_proxy_killed_and_started_again(run_stream, start_proxy):
    p = start_proxy()
    front, back = (int(e.rpartition(":")[2]) for e in (p.frontend, p.backend))
    runs = {
        s: run_stream(*RUN_ARGS, "--stream-id", s, "--publish", f"connect:{p.frontend}")
        for s in "abc"  # started side by side: none waits for another
    }
    with Subscriber(p.backend, topics=("pred.", "status.")) as sub:
        # Through the proxy a run counts the prefixes its subscribers asked for: pred. and
        # status. here.
        before = _until_each(
            sub,
            "abc",
            lambda msgs: (
                len(_preds(msgs)) >= 2
                and any(b["publish"]["subscriptions"] == 2 for b in _statuses(msgs))
            ),
        )
        for s, run in runs.items():
            run.wait_for(f"publishing through the proxy at {p.frontend}")
        p.kill()
        # Each run's heartbeat saw the proxy go: it shares the publisher (and its lock)
        # with the inference loop, so a send stuck on the dead proxy would have held it.
        for run in runs.values():
            run.wait_for(f"lost the proxy at {p.frontend}: predictions go nowhere")
        start_proxy(frontend=front, backend=back)
        # The subscriber and the runs reconnect by themselves.
        after = _until_each(
            sub, "abc", lambda msgs: len(_preds(msgs)) >= 3 and len(_statuses(msgs)) >= 1
        )
    for s, run in runs.items():
        run.wait_for(f"publishing through the proxy at {p.frontend}")
        last, first = _preds(before[s])[-1], _preds(after[s])[0]
        # The same pipeline went on: seq continued (a restarted one starts at 0) ...
        assert first["seq"] > last["seq"], (s, last["seq"], first["seq"])
        # ... and only the gap is lost: once back, nothing is missing.
        seqs = [b["seq"] for b in _preds(after[s])]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (s, seqs)
        status = _statuses(after[s])[-1]
        assert status["state"] == "running" and status["processes"]["main"] == run.proc.pid
        assert status["windows"]["run"] > _statuses(before[s])[-1]["windows"]["run"]
    kids = {s: descendants(run.proc.pid) for s, run in runs.items()}
    for run in runs.values():  # all at once: each stops in its own time
        run.proc.send_signal(signal.SIGINT)
    for s, run in runs.items():
        code, err = run.wait()
        assert code == 0, err
        # multiprocessing's resource tracker exits once its pipe has closed, a moment later
        wait_until(lambda s=s: not running(kids[s]), f"the processes of run {s} to end", 30)
        assert not segments_of(run.proc.pid), s
