"""Subscriber client and `python -m stream.subscribe`.

    from stream.transport.subscribe import Subscriber
    with Subscriber("tcp://127.0.0.1:5555") as sub:
        for msg in sub:                      # predictions of every stream
            print(msg.body["labels"][0]["label"], msg.age_ms)

    with Subscriber(topics=("event.",)) as sub:  # events: start, update, end
        for msg in sub:
            print(msg.body["name"], msg.body["type"], msg.body["peak"])

CLI: `python -m stream.subscribe [ENDPOINT] [--json] [--count N] [--topic PREFIX]
[--events]` prints one readable line per message (or the raw JSON with --json).

A publisher that refuses us (it needs CURVE keys, or ours are not among its clients)
shows as a failed handshake on the socket's monitor: `recv` raises `HandshakeError`
with the fix in one line, instead of waiting for messages that cannot come.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import sys
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from stream.errors import ArgumentParser, UserError
from stream.transport import wire

__all__ = [
    "DEFAULT_ENDPOINT",
    "HandshakeError",
    "Message",
    "Subscriber",
    "UserError",
    "format_message",
]

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"

# A failure that does not say why (the connection reset mid-handshake) is what a CURVE
# publisher given the wrong server key gives every time; but on a busy host a publisher
# with the other mechanism (CURVE against none) also often hangs up before its greeting
# has been read. After this many in a row (ZeroMQ reconnects every 0.1 s),
# _peer_mechanism asks the peer which mechanism it has.
_UNEXPLAINED_FAILURES = 3
# The start of a ZMTP 3 greeting (signature, then major version 3): a ZeroMQ peer answers
# with its own greeting, which names its security mechanism, and waits for the rest of
# ours, so nothing is refused before we have read it. (ZMTP 3.1, rfc.zeromq.org/spec/37)
_GREETING_START = b"\xff" + bytes(8) + b"\x7f\x03"


def _peer_mechanism(endpoint: str, timeout: float = 2.0) -> str | None:
    """The security mechanism ("NULL", "CURVE", ...) a ZeroMQ peer at a tcp:// or ipc://
    endpoint greets with; None when it cannot be asked or does not answer as ZeroMQ."""
    transport, _, address = endpoint.partition("://")
    try:
        if transport == "tcp":
            host, _, port = address.rpartition(":")
            conn = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        elif transport == "ipc" and hasattr(socket, "AF_UNIX"):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(timeout)
            conn.connect(address)
        else:
            return None
        with conn:
            conn.sendall(_GREETING_START)
            greeting = b""
            while (
                len(greeting) < 64
            ):  # signature 10, version 2, mechanism 20, as-server 1, filler 31
                chunk = conn.recv(64 - len(greeting))
                if not chunk:
                    break
                greeting += chunk
    except (OSError, ValueError):
        return None
    if len(greeting) < 32 or greeting[0] != 0xFF or greeting[9] != 0x7F:
        return None
    return greeting[12:32].rstrip(b"\0").decode("ascii", "replace")


def curve_client(sock: zmq.Socket, server_key: str, client_key: str | None) -> None:
    """Make `sock` (not yet connected) a CURVE client of the publisher whose public key is
    in the file `server_key`, with this client's secret key file `client_key`: ValueError
    without the client key, UserError for a key file that cannot be used."""
    from stream.transport.publish import load_curve_keys

    if client_key is None:
        raise ValueError("CURVE needs the client's *.key_secret as well as the server's public key")
    sock.curve_serverkey = load_curve_keys(server_key, secret=False)[0]
    sock.curve_publickey, sock.curve_secretkey = load_curve_keys(client_key, secret=True)


class HandshakeError(UserError):
    """The publisher refused the connection: the message says which key to pass."""


class Handshakes:
    """What the handshake events of a SUB socket's monitor say about one publisher:
    `event(event)` raises HandshakeError, with the fix, for a failure that will repeat on
    every reconnection. It may ask the peer which mechanism it has (a blocking connection
    of at most 2 s)."""

    def __init__(self, endpoint: str, curve_server_key: str | None, curve_client_key: str | None):
        self.endpoint = endpoint
        self.curve_server_key, self.curve_client_key = curve_server_key, curve_client_key
        self._unexplained = 0

    def event(self, event: dict) -> None:
        """Raise HandshakeError for a failure that will repeat on every reconnection."""
        kind, value, curve = event["event"], event["value"], self.curve_server_key is not None
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._unexplained = 0
            return
        where = f"the publisher at {self.endpoint}"
        if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            raise HandshakeError(
                f"{where} does not accept the client key {self.curve_client_key}: "
                "copy its public key (clients/NAME.key from python -m stream.keys) "
                "into the publisher's --curve-clients folder"
            )
        if (
            kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
        ):
            self._mechanism_mismatch(where, curve)
        self._unexplained += 1
        if self._unexplained < _UNEXPLAINED_FAILURES:
            return
        mechanism = _peer_mechanism(self.endpoint)
        if mechanism == ("NULL" if curve else "CURVE"):
            self._mechanism_mismatch(where, curve)
        if curve and mechanism == "CURVE":
            raise HandshakeError(
                f"the CURVE handshake with {self.endpoint} fails: is {self.curve_server_key} the "
                "publisher's server.key (the public half of its --curve-secret-key)?"
            )
        self._unexplained = 0  # not understood (yet): keep trying, as ZeroMQ does

    def _mechanism_mismatch(self, where: str, curve: bool) -> None:
        if curve:
            raise HandshakeError(
                f"{where} does not use CURVE encryption: "
                "leave out --curve-server-key and --curve-client-key"
            )
        raise HandshakeError(
            f"{where} requires CURVE encryption: pass --curve-server-key server.key and "
            "--curve-client-key NAME.key_secret (python -m stream.keys)"
        )


@dataclasses.dataclass
class Message:
    topic: str
    body: dict
    received_ns: int  # time.monotonic_ns() when it arrived here

    @property
    def age_ms(self) -> float | None:
        """capture → receive latency of a prediction (same host: one monotonic clock)."""
        t = self.body.get("t", {})
        if "capture_ns" not in t:
            return None
        return (self.received_ns - t["capture_ns"]) / 1e6


class Subscriber:
    """SUB socket on `endpoint`, filtered by topic prefixes; every receive can time out.

    `missed` counts messages lost on the way (ZeroMQ drops for a subscriber that does
    not keep up): the gaps in each topic's `seq`. With CURVE keys (python -m
    stream.keys) the connection is encrypted and the publisher can authenticate us.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        topics: tuple[str, ...] = (wire.PRED_TOPIC + ".",),
        *,
        hwm: int = 1000,
        curve_server_key: str | None = None,
        curve_client_key: str | None = None,
        context: zmq.Context | None = None,
    ):
        self.endpoint = endpoint
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.RCVHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        self.curve_server_key, self.curve_client_key = curve_server_key, curve_client_key
        self._handshakes = Handshakes(endpoint, curve_server_key, curve_client_key)
        if curve_server_key is not None:
            try:
                curve_client(self._socket, curve_server_key, curve_client_key)
            except (ValueError, UserError):
                self._socket.close(0)
                raise
        for t in topics:
            self._socket.setsockopt(zmq.SUBSCRIBE, t.encode("ascii"))
        # Before connecting, so that the first handshake is seen.
        self._monitor = self._socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        )
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        try:
            self._socket.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise UserError(
                f"cannot subscribe to {endpoint!r}: {exc.strerror}; "
                f"pass an endpoint like {DEFAULT_ENDPOINT}"
            ) from None
        self.invalid = 0  # messages that failed validation (skipped)
        self.missed = 0
        self._last_seq: dict[str, int] = {}

    def recv(self, timeout: float | None = None) -> Message:
        """The next valid message; raises TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait_ms = (
                None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            )
            ready = dict(self._poller.poll(wait_ms))
            if self._monitor in ready:
                self._handshakes.event(recv_monitor_message(self._monitor))
            if self._socket not in ready:
                if self._monitor in ready:
                    continue
                raise TimeoutError(f"no message from {self.endpoint} in {timeout} s")
            frames = self._socket.recv_multipart()
            received_ns = time.monotonic_ns()
            try:
                topic, body = wire.decode(frames)
            except wire.WireError:
                self.invalid += 1
                continue
            # Every run sends topic `run` (through a proxy, several reach us): its seq
            # counts per run, told apart by host and process.
            key = (topic, body["host"], body["pid"]) if body["schema"] == wire.RUN_SCHEMA else topic
            last = self._last_seq.get(key)
            if last is not None and body["seq"] > last + 1:
                self.missed += body["seq"] - last - 1
            self._last_seq[key] = body["seq"]  # a restarted stream starts again at 0
            return Message(topic, body, received_ns)

    def __iter__(self):
        while True:
            yield self.recv()

    def close(self) -> None:
        if self._socket.closed:
            return
        self._socket.disable_monitor()
        self._monitor.close(0)
        self._socket.close(0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def format_message(msg: Message) -> str:
    """One human-readable line per message."""
    b = msg.body
    if b["schema"] == wire.EVENT_SCHEMA:
        return _format_event(b)
    clock = time.strftime("%H:%M:%S", time.localtime(b["t"]["wall_ns"] / 1e9))
    if b["schema"] == wire.RUN_SCHEMA:
        return _format_run(clock, b)
    if b["schema"] == wire.STATUS_SCHEMA:
        w = b["windows"]
        return (
            f"{clock} {msg.topic} {b['state']} {b['model']} on {b['engine']} "
            f"in {b['fps_in']:.1f} fps, windows run {w.get('run', 0)} skipped {w.get('skipped', 0)}"
        )
    labels = "  ".join(f"{x['label']} {x['score']:.2f}" for x in b["labels"])
    if b["random_weights"]:  # before the labels: they mean nothing
        labels = f"RANDOM WEIGHTS  {labels}"
    lat = b["latency_ms"]
    line = (
        f"{clock} {b['stream']} #{b['seq']}  {labels}  "
        f"[engine {lat['engine']:.0f} ms, capture→publish {lat['capture_to_publish']:.0f} ms, "
        f"age {msg.age_ms:.0f} ms]"
    )
    if b["skipped"] > 0:
        line += f"  skipped {b['skipped']}"
    if b["degraded"]:
        line += "  DEGRADED: " + "; ".join(b["degraded"])
    return line


def _format_event(b: dict) -> str:
    """An event in one line, at the time it is about (its start, its end, or when an
    update was sent): `14:02:11 cam0 knocking START peak 0.91`, `14:02:14 cam0 knocking
    END after 3.2 s (below threshold), peak 0.91 mean 0.78`."""
    kind = b["type"]
    at = {"start": b["start_wall_ns"], "end": b["end_wall_ns"]}.get(kind) or b["wall_ns"]
    clock = time.strftime("%H:%M:%S", time.localtime(at / 1e9))
    line = f"{clock} {b['stream']} {b['name']} {kind.upper()}"
    if kind == "start":
        line += f" peak {b['peak']:.2f}"
    elif kind == "end":
        line += (
            f" after {(b['end_ns'] - b['start_ns']) / 1e9:.1f} s ({b['reason']}), "
            f"peak {b['peak']:.2f} mean {b['mean']:.2f}"
        )
    else:
        line += (
            f" {(b['wall_ns'] - b['start_wall_ns']) / 1e9:.1f} s so far, "
            f"peak {b['peak']:.2f} mean {b['mean']:.2f}"
        )
    if b["degraded"]:
        line += "  DEGRADED: it spans a window with a video or audio gap"
    return line


def _format_run(clock: str, b: dict) -> str:
    """A run status in one line: the run, its streams (state, windows run/skipped) and
    how many engine calls ran each batch size."""
    streams = ", ".join(
        f"{s['id']} {s['state']} {s['windows_run']}/{s['windows_skipped']}"
        + (f" ({s['reason']})" if s.get("reason") else "")
        for s in b["streams"]
    )
    batches = " ".join(f"{size}:{calls}" for size, calls in enumerate(b["batches"], 1) if calls)
    w = b["windows"]
    return (
        f"{clock} run {b['host']}:{b['pid']} {b['state']} {b['model']} on {b['engine']}, "
        f"{len(b['streams'])} stream{'' if len(b['streams']) == 1 else 's'} "
        f"[{streams or 'none yet'}] (windows run/skipped), windows run {w['run']} "
        f"skipped {w['skipped']}, batches (size:calls, at most {b['max_batch']}) "
        f"{batches or 'none yet'}"
    )


def waiting_line(endpoint: str, topics: tuple[str, ...]) -> str:
    """What the CLI says until the first message: which stream, where, which topics."""
    names = []
    for t in topics:
        kind, _, stream_id = t.partition(".")
        if kind == wire.PRED_TOPIC:
            names.append(stream_id or "predictions")
        elif kind == wire.STATUS_TOPIC:
            names.append(f"{stream_id} status" if stream_id else "status")
        elif kind == wire.EVENT_TOPIC:
            names.append(f"{stream_id} events" if stream_id else "events")
        elif t == wire.RUN_TOPIC:
            names.append("the run status")
        else:
            names.append(t or "every message")
    shown = ", ".join(t.rstrip(".") or '""' for t in topics)
    return (
        f"waiting for {' and '.join(names)} on {endpoint} "
        f"(topic{'s' if len(topics) > 1 else ''} {shown})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m stream.subscribe",
        description="Print the predictions (and, with --topic status, the heartbeats; with "
        "--topic run, the run-level status; with --events, the events) of a run's streams.",
    )
    parser.add_argument(
        "endpoint", nargs="?", default=DEFAULT_ENDPOINT, help=f"default {DEFAULT_ENDPOINT}"
    )
    parser.add_argument(
        "--json", action="store_true", help="print each message body as one JSON line"
    )
    parser.add_argument(
        "--count", type=int, default=0, help="exit after N messages (default: run until Ctrl-C)"
    )
    parser.add_argument(
        "--topic",
        action="append",
        default=None,
        help="topic prefix to receive, e.g. pred.cam0, status, event.cam0 or run (the "
        "run-level status) (repeatable; default: pred)",
    )
    parser.add_argument(
        "--events",
        action="store_true",
        help="print the events (topic event.): one line as each starts, is updated and ends "
        "(with --topic: those topics as well; without: the events alone)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=0,
        help="exit with status 1 after this many seconds without a message",
    )
    parser.add_argument(
        "--curve-server-key", help="CURVE: the publisher's public key file (server.key)"
    )
    parser.add_argument(
        "--curve-client-key", help="CURVE: this client's secret key file (NAME.key_secret)"
    )
    args = parser.parse_args(argv)
    if not args.endpoint.startswith(("tcp://", "ipc://", "inproc://")):
        print(
            f"error: endpoint {args.endpoint!r} is not a ZeroMQ endpoint "
            f"such as {DEFAULT_ENDPOINT}",
            file=sys.stderr,
        )
        return 2
    events = (wire.EVENT_TOPIC + ".",) if args.events else ()
    topics = (*(args.topic or ()), *events) or (wire.PRED_TOPIC + ".",)
    if (args.curve_server_key is None) != (args.curve_client_key is None):
        print("error: CURVE needs both --curve-server-key and --curve-client-key", file=sys.stderr)
        return 2
    received = missed = 0
    told_skipped = False
    try:
        sub = Subscriber(
            args.endpoint,
            topics,
            curve_server_key=args.curve_server_key,
            curve_client_key=args.curve_client_key,
        )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(waiting_line(args.endpoint, topics), file=sys.stderr, flush=True)
    try:
        with sub:
            while args.count <= 0 or received < args.count:
                try:
                    msg = sub.recv(timeout=args.timeout or None)
                except TimeoutError:
                    print(
                        f"error: no message from {args.endpoint} in {args.timeout} s: "
                        "is stream.run publishing there?",
                        file=sys.stderr,
                    )
                    return 1
                except HandshakeError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 2
                if sub.missed > missed:
                    print(
                        f"({sub.missed - missed} messages missed: this subscriber fell behind)",
                        file=sys.stderr,
                    )
                    missed = sub.missed
                if not told_skipped and msg.body.get("skipped", 0) > 0:
                    print(
                        f"(skipped N: windows left out because the engine is slower than the "
                        f"{msg.body['stride_s']} s stride; a longer --stride keeps up)",
                        file=sys.stderr,
                    )
                    told_skipped = True
                line = (
                    json.dumps(msg.body, separators=(",", ":"))
                    if args.json
                    else format_message(msg)
                )
                print(line, flush=True)
                received += 1
    except KeyboardInterrupt:
        pass
    except zmq.ZMQError as exc:
        print(f"error: cannot subscribe to {args.endpoint!r}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0
