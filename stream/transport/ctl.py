"""The control socket of `python -m stream.run`, and `python -m stream.ctl`, its client:
add a stream to a running pipeline, remove one, list them, ask for the run's status.

    python -m stream.ctl add yard --camera http://yard/video.mjpg
    python -m stream.ctl remove door
    python -m stream.ctl list
    python -m stream.ctl status --json

The wire: ZeroMQ request and reply, each one frame of UTF-8 JSON (never pickle).
A request is `{"schema": "avstream.ctl.v1", "op": OP, ...}`:
  add     id, camera; optional mic, size ("WxH"), fps, loop, stride (a field left out
          takes the run's value: its --mic, --size, --fps, --loop, --stride)
  remove  id
  list    (nothing)
  status  (nothing)
A reply is `{"schema": "avstream.ctl.v1", "ok": true, ...}` (add: `stream`, the stream
as `list` shows it; remove: `stream`, its id; list: `streams`; status: the run's pid,
model, engine, endpoints, processes and `streams`) or `{"schema": ..., "ok": false,
"error": "<one line that says what to do>"}`.

An add is answered once the stream's camera has opened and the stream is handed to
the inference process (or with the camera's error line, or after ADD_DEADLINE_S without
an opened camera); duplicate and unknown ids are refused at once. The run's socket is a
ROUTER, ZeroMQ's asynchronous REP: an add waiting for its camera holds up neither the
run nor another client's request. Clients are plain REQ sockets.

Loopback by default; with the run's CURVE keys (--curve-secret-key, --curve-clients)
the socket is encrypted and only the clients whose public keys are in the folder are
answered, as on the publisher (stream/transport/publish.py).

Only pyzmq here (no torch, numpy or OpenCV): stream.ctl runs from the light install.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from typing import Any

import zmq

from stream.errors import ArgumentParser, UserError, error_line
from stream.transport.publish import curve_server, load_curve_keys

SCHEMA = "avstream.ctl.v1"
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5554"
#: How long stream.ctl waits for any answer: a run that does not answer in this time
#: is not there (or refused this client's CURVE keys).
REPLY_TIMEOUT_S = 2.0
#: How long the run waits for an added stream's camera (and microphone) to open before
#: it refuses the add: a network camera may take NETWORK_TIMEOUT_MS (5 s,
#: stream/capture/video.py) to open, and a busy machine seconds to start the process.
ADD_DEADLINE_S = 20.0

#: Each operation's fields besides schema and op: name -> (types, required).
_NUMBER = (int, float)
FIELDS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "add": {
        "id": ((str,), True),
        "camera": ((str,), True),
        "mic": ((str,), False),
        "size": ((str,), False),
        "fps": (_NUMBER, False),
        "loop": ((bool,), False),
        "stride": (_NUMBER, False),
    },
    "remove": {"id": ((str,), True)},
    "list": {},
    "status": {},
}
OPS = tuple(FIELDS)


class RequestError(ValueError):
    """A request that is not one of this module's: the one line of the error reply."""


def request(op: str, **fields: Any) -> dict:
    """A request body; fields that are None are left out (the run's value applies)."""
    body = {"schema": SCHEMA, "op": op, **{k: v for k, v in fields.items() if v is not None}}
    return check_request(body)


def check_request(body: object) -> dict:
    """The request, checked: schema, op, the op's fields with their types, nothing else
    (a null field is left out); RequestError with one line otherwise."""
    if not isinstance(body, dict):
        raise RequestError("a control request is a JSON object: update stream.ctl")
    if body.get("schema") != SCHEMA:
        raise RequestError(
            f"not an {SCHEMA} request (schema {body.get('schema')!r}): use the stream.ctl "
            "of the same avstream version as stream.run"
        )
    op = body.get("op")
    if op not in FIELDS:
        raise RequestError(f"unknown op {op!r}: use one of {', '.join(OPS)}")
    fields = FIELDS[op]
    unknown = sorted(set(body) - set(fields) - {"schema", "op"})
    if unknown:
        raise RequestError(f"{op} takes no field {unknown[0]!r}: its fields are {_names(fields)}")
    checked = {"schema": SCHEMA, "op": op}
    for name, (types, required) in fields.items():
        value = body.get(name)
        if value is None:
            if required:
                raise RequestError(f"{op} needs {name!r}")
            continue
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            kind = " or ".join(t.__name__ for t in types)
            raise RequestError(f"{op}: {name!r} must be {kind}, not {value!r}")
        checked[name] = value
    return checked


def _names(fields: dict) -> str:
    return ", ".join(fields) or "none"


def ok(**fields: Any) -> dict:
    return {"schema": SCHEMA, "ok": True, **fields}


def refused(line: str) -> dict:
    return {"schema": SCHEMA, "ok": False, "error": line}


def encode(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def decode(frame: bytes) -> object:
    """JSON of one frame; RequestError when it is not."""
    try:
        return json.loads(frame.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RequestError("a control message is one frame of UTF-8 JSON") from None


# -- the run's end -----------------------------------------------------------------------


class Request:
    """A checked request and where its reply goes (ZeroMQ's routing envelope)."""

    def __init__(self, envelope: list[bytes], body: dict):
        self.envelope = envelope
        self.body = body
        self.op: str = body["op"]

    def __repr__(self) -> str:
        return f"Request({self.body!r})"


class ControlServer:
    """The run's end: bind at once (a port in use is a UserError), then `poll()` for
    requests without waiting and `reply()` to each, now or later."""

    def __init__(
        self,
        endpoint: str,
        *,
        curve_secret_key: str | None = None,
        curve_clients: str | None = None,
    ):
        self.endpoint = endpoint
        # A context of its own: a ZAP handler (CURVE clients) binds one address per context.
        self._context = zmq.Context()
        self._auth = None
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            if curve_secret_key is not None:
                self._auth = curve_server(
                    self._context, self._socket, curve_secret_key, curve_clients
                )
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            if exc.errno == errno.EADDRINUSE:
                raise UserError(
                    f"cannot listen for stream.ctl on {endpoint}: the address is in use "
                    "(another stream.run?); pass a free one with --control tcp://127.0.0.1:PORT, "
                    "or --control none"
                ) from None
            raise UserError(
                f"cannot listen for stream.ctl on {endpoint!r}: {exc.strerror}; pass an "
                f"endpoint like {DEFAULT_ENDPOINT} with --control, or --control none"
            ) from None
        except UserError:
            self.close()
            raise

    def poll(self) -> list[Request]:
        """The requests that have arrived (never waits). A malformed one is answered here
        with its error line and not returned."""
        got = []
        while self._socket.poll(0, zmq.POLLIN):
            frames = self._socket.recv_multipart(zmq.NOBLOCK)
            try:
                split = frames.index(b"")  # REQ's envelope: routing ids, an empty frame
            except ValueError:
                continue  # not from a REQ socket: nowhere to answer
            envelope, content = frames[: split + 1], frames[split + 1 :]
            try:
                if len(content) != 1:
                    raise RequestError("a control request is one frame of UTF-8 JSON")
                got.append(Request(envelope, check_request(decode(content[0]))))
            except RequestError as exc:
                self._send(envelope, refused(str(exc)))
        return got

    def reply(self, request: Request, body: dict) -> None:
        self._send(request.envelope, body)

    def _send(self, envelope: list[bytes], body: dict) -> None:
        try:
            self._socket.send_multipart([*envelope, encode(body)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client is gone (ROUTER drops what it cannot route): nothing to tell

    def close(self) -> None:
        self._socket.close(0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        # destroy, not term: term waits for every socket of the context to be closed, and
        # a close that blocked there once hung a test for minutes.
        self._context.destroy(linger=0)


# -- the client ----------------------------------------------------------------------------


class ControlClient:
    """A REQ socket to a run's control endpoint; `call()` sends one request and waits
    for its reply."""

    def __init__(
        self,
        endpoint: str,
        *,
        curve_server_key: str | None = None,
        curve_secret_key: str | None = None,
        context: zmq.Context | None = None,
    ):
        self.endpoint = endpoint
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.REQ)
        self._socket.setsockopt(zmq.LINGER, 0)
        if curve_server_key is not None:
            server_public, _ = load_curve_keys(curve_server_key, secret=False)
            public, secret = load_curve_keys(curve_secret_key, secret=True)
            self._socket.curve_serverkey = server_public
            self._socket.curve_publickey = public
            self._socket.curve_secretkey = secret
        try:
            self._socket.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise UserError(
                f"--control {endpoint!r}: {exc.strerror}; pass an endpoint like {DEFAULT_ENDPOINT}"
            ) from None

    def call(self, body: dict, timeout: float = REPLY_TIMEOUT_S) -> dict:
        """The reply to `body`; TimeoutError when none comes within `timeout` seconds
        (the socket is then unusable: close it), RequestError when it is not a reply."""
        self._socket.send(encode(body))
        if not self._socket.poll(round(timeout * 1000), zmq.POLLIN):
            raise TimeoutError(f"no reply from {self.endpoint} in {timeout:g} s")
        reply = decode(self._socket.recv())
        if not isinstance(reply, dict) or reply.get("schema") != SCHEMA or "ok" not in reply:
            raise RequestError(
                f"{self.endpoint} answered with something that is not an {SCHEMA} reply: "
                "is it a stream.run control endpoint of the same avstream version?"
            )
        return reply

    def close(self) -> None:
        self._socket.close(0)

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- python -m stream.ctl ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # The common options go before or after the operation (`--json list`, `list --json`):
    # the sub-parsers have them too, without defaults of their own.
    def common(p: argparse.ArgumentParser, default) -> None:
        def d(value):
            return argparse.SUPPRESS if default is argparse.SUPPRESS else value

        p.add_argument(
            "--control",
            metavar="ENDPOINT",
            default=d(DEFAULT_ENDPOINT),
            help=f"the run's control endpoint (its --control; default {DEFAULT_ENDPOINT})",
        )
        p.add_argument(
            "--curve-server-key",
            metavar="FILE",
            default=d(None),
            help="CURVE: the run's public key file (server.key)",
        )
        p.add_argument(
            "--curve-secret-key",
            metavar="FILE",
            default=d(None),
            help="CURVE: this client's secret key file (NAME.key_secret; its public key "
            "in the run's --curve-clients folder)",
        )
        p.add_argument(
            "--json",
            action="store_true",
            default=d(False),
            help="print the reply as one JSON line",
        )

    parser = ArgumentParser(
        prog="python -m stream.ctl",
        description="Add a stream to a running python -m stream.run, remove one, list them, "
        "or show the run's status (through the run's --control socket).",
    )
    common(parser, None)
    ops = parser.add_subparsers(dest="op", required=True, metavar="{add,remove,list,status}")
    add = ops.add_parser(
        "add",
        help="add a stream (answers once its camera has opened)",
        description="Add a stream to the run; flags left out take the run's values.",
    )
    add.add_argument("id", help="the stream's id: topics pred.ID and status.ID")
    add.add_argument("--camera", required=True, help="camera index, video file, URL or synthetic")
    add.add_argument("--mic", help="microphone, audio/video file, synthetic or none")
    add.add_argument("--size", metavar="WxH", help="capture size (cameras, synthetic)")
    add.add_argument("--fps", type=float, help="capture rate (cameras, synthetic)")
    add.add_argument(
        "--loop",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="repeat a video file (--no-loop: end the stream at its end; default: the run's "
        "--loop)",
    )
    add.add_argument("--stride", type=float, help="seconds between the stream's windows")
    remove = ops.add_parser("remove", help="stop a stream and free its shared memory")
    remove.add_argument("id")
    ops.add_parser("list", help="the streams, one line each, with their state")
    ops.add_parser("status", help="the run: model, engine, endpoints, processes, streams")
    for sub in ops.choices.values():
        common(sub, argparse.SUPPRESS)
    return parser


def format_stream(s: dict) -> str:
    """One line of `list`: id, state, camera (and mic), and why when it ended or failed."""
    line = f"{s.get('id', '?'):<12} {s.get('state', '?'):<10} {s.get('camera', '?')}"
    if s.get("mic") not in (None, "none"):
        line += f" (mic {s['mic']})"
    if s.get("reason"):
        line += f": {s['reason']}"
    return line


def format_reply(op: str, reply: dict) -> list[str]:
    """The readable lines of an ok reply."""
    if op == "add":
        s = reply.get("stream", {})
        return [f"added {s.get('id')}: {s.get('camera')} ({s.get('state')})"]
    if op == "remove":
        return [f"removed {reply.get('stream')}"]
    streams = reply.get("streams", [])
    if op == "list":
        return [format_stream(s) for s in streams] or ["no streams"]
    engine = (
        "the engine is loading"
        if reply.get("engine") is None
        else f"engine {reply['engine']} (batches of up to {reply.get('max_batch')})"
    )
    lines = [
        f"stream.run pid {reply.get('pid')} on {reply.get('host')}: {reply.get('state')}, "
        f"model {reply.get('model') or '(loading)'}, {engine}",
        f"publishing on {reply.get('publish')}, control on {reply.get('control')}",
        "processes: "
        + ", ".join(f"{name} {pid}" for name, pid in reply.get("processes", {}).items()),
        f"streams ({len(streams)}):",
    ]
    return lines + [f"  {format_stream(s)}" for s in streams]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.curve_server_key is None) != (args.curve_secret_key is None):
        print(
            error_line(
                "CURVE needs both --curve-server-key (the run's server.key) and "
                "--curve-secret-key (this client's NAME.key_secret)"
            ),
            file=sys.stderr,
        )
        return 2
    fields = {}
    if args.op == "add":
        fields = dict(
            id=args.id,
            camera=args.camera,
            mic=args.mic,
            size=args.size,
            fps=args.fps,
            loop=args.loop,
            stride=args.stride,
        )
    elif args.op == "remove":
        fields = {"id": args.id}
    try:
        body = request(args.op, **fields)
        with ControlClient(
            args.control,
            curve_server_key=args.curve_server_key,
            curve_secret_key=args.curve_secret_key,
        ) as client:
            if args.op == "add":
                # An add waits for the camera: first make sure a run is there at all.
                client.call(request("status"))
                reply = client.call(body, ADD_DEADLINE_S + REPLY_TIMEOUT_S)
            else:
                reply = client.call(body)
    except TimeoutError:
        keys = " (or it does not accept this client's CURVE keys)" if args.curve_server_key else ""
        print(
            error_line(
                f"no stream.run answers on {args.control}{keys}: start one with --control "
                f"{args.control}, or pass the endpoint it uses with --control"
            ),
            file=sys.stderr,
        )
        return 2
    except (UserError, RequestError) as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(reply, separators=(",", ":")), flush=True)
    if not reply["ok"]:
        print(error_line(reply.get("error", "the run refused the request")), file=sys.stderr)
        return 2
    if not args.json:
        for line in format_reply(args.op, reply):
            print(line, flush=True)
    return 0
