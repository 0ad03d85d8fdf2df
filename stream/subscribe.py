"""Subscriber client and `python -m stream.subscribe`.

    from stream.subscribe import Subscriber
    with Subscriber("tcp://127.0.0.1:5555") as sub:
        for msg in sub:                      # predictions of every stream
            print(msg.body["labels"][0]["label"], msg.age_ms)

CLI: `python -m stream.subscribe [ENDPOINT] [--json] [--count N] [--topic PREFIX]`
prints one readable line per message (or the raw JSON with --json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import zmq

from . import wire
from .errors import UserError

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


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
        if curve_server_key is not None:
            from .publish import load_curve_keys

            if curve_client_key is None:
                self._socket.close(0)
                raise ValueError("CURVE needs the client's *.key_secret as well as the server's public key")
            self._socket.curve_serverkey = load_curve_keys(curve_server_key, secret=False)[0]
            public, secret = load_curve_keys(curve_client_key, secret=True)
            self._socket.curve_publickey, self._socket.curve_secretkey = public, secret
        for t in topics:
            self._socket.setsockopt(zmq.SUBSCRIBE, t.encode("ascii"))
        self._socket.connect(endpoint)
        self.invalid = 0  # messages that failed validation (skipped)
        self.missed = 0
        self._last_seq: dict[str, int] = {}

    def recv(self, timeout: float | None = None) -> Message:
        """The next valid message; raises TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self._socket.poll(wait_ms):
                raise TimeoutError(f"no message from {self.endpoint} in {timeout} s")
            frames = self._socket.recv_multipart()
            received_ns = time.monotonic_ns()
            try:
                topic, body = wire.decode(frames)
            except wire.WireError:
                self.invalid += 1
                continue
            last = self._last_seq.get(topic)
            if last is not None and body["seq"] > last + 1:
                self.missed += body["seq"] - last - 1
            self._last_seq[topic] = body["seq"]  # a restarted stream starts again at 0
            return Message(topic, body, received_ns)

    def __iter__(self):
        while True:
            yield self.recv()

    def close(self) -> None:
        self._socket.close(0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def format_message(msg: Message) -> str:
    """One human-readable line per message."""
    b = msg.body
    clock = time.strftime("%H:%M:%S", time.localtime(b["t"]["wall_ns"] / 1e9))
    if b["schema"] == wire.STATUS_SCHEMA:
        w = b["windows"]
        return (
            f"{clock} {msg.topic} {b['state']} {b['model']} on {b['engine']} "
            f"in {b['fps_in']:.1f} fps, windows run {w.get('run', 0)} skipped {w.get('skipped', 0)}"
        )
    labels = "  ".join(f"{x['label']} {x['score']:.2f}" for x in b["labels"])
    lat = b["latency_ms"]
    return (
        f"{clock} {b['stream']} #{b['seq']}  {labels}  "
        f"[engine {lat['engine']:.0f} ms, capture→publish {lat['capture_to_publish']:.0f} ms, "
        f"age {msg.age_ms:.0f} ms]"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stream.subscribe",
        description="Print the predictions (and, with --topic status, the heartbeats) of a stream.",
    )
    parser.add_argument("endpoint", nargs="?", default=DEFAULT_ENDPOINT, help=f"default {DEFAULT_ENDPOINT}")
    parser.add_argument("--json", action="store_true", help="print each message body as one JSON line")
    parser.add_argument("--count", type=int, default=0, help="exit after N messages (default: run until Ctrl-C)")
    parser.add_argument(
        "--topic", action="append", default=None,
        help="topic prefix to receive, e.g. pred.cam0 or status (repeatable; default: pred)",
    )
    parser.add_argument("--timeout", type=float, default=0, help="exit with status 1 after this many seconds without a message")
    parser.add_argument("--curve-server-key", help="CURVE: the publisher's public key file (server.key)")
    parser.add_argument("--curve-client-key", help="CURVE: this client's secret key file (NAME.key_secret)")
    args = parser.parse_args(argv)
    if not args.endpoint.startswith(("tcp://", "ipc://", "inproc://")):
        print(f"error: endpoint {args.endpoint!r} is not a ZeroMQ endpoint such as {DEFAULT_ENDPOINT}", file=sys.stderr)
        return 2
    topics = tuple(args.topic) if args.topic else (wire.PRED_TOPIC + ".",)
    if (args.curve_server_key is None) != (args.curve_client_key is None):
        print("error: CURVE needs both --curve-server-key and --curve-client-key", file=sys.stderr)
        return 2
    received = missed = 0
    try:
        sub = Subscriber(
            args.endpoint, topics, curve_server_key=args.curve_server_key, curve_client_key=args.curve_client_key
        )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with sub:
            while args.count <= 0 or received < args.count:
                try:
                    msg = sub.recv(timeout=args.timeout or None)
                except TimeoutError:
                    print(f"error: no message from {args.endpoint} in {args.timeout} s: is stream.run publishing there?", file=sys.stderr)
                    return 1
                if sub.missed > missed:
                    print(f"({sub.missed - missed} messages missed: this subscriber fell behind)", file=sys.stderr)
                    missed = sub.missed
                line = json.dumps(msg.body, separators=(",", ":")) if args.json else format_message(msg)
                print(line, flush=True)
                received += 1
    except KeyboardInterrupt:
        pass
    except zmq.ZMQError as exc:
        print(f"error: cannot subscribe to {args.endpoint!r}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
