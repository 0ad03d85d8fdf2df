"""ZeroMQ publishing side: bind, send without ever blocking, count what happened.

Drop policy: the socket keeps at most `hwm` messages per subscriber; past that ZeroMQ
drops for that subscriber alone (a slow or stalled subscriber never slows the pipeline
or the other subscribers; it sees the drop as a gap in `seq`). A send that cannot be
queued at all is counted in `dropped`. The socket is an XPUB so that the status topic
can say how many subscriptions are live.

Security (optional): with a CURVE secret key the socket encrypts everything
(ZeroMQ's CURVE), and with a folder of client public keys only those clients may
subscribe (ZeroMQ's ZAP authentication). `python -m stream.keys DIR` makes the keys.
"""

from __future__ import annotations

import errno
import os
import shlex
import stat
import threading
import time
from pathlib import Path

import zmq

from stream.errors import UserError
from stream.transport import wire


def load_curve_keys(path: str, *, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) from a ZeroMQ certificate file; one clear UserError otherwise.

    A secret key that other users of the host can read or write is refused, as ssh
    refuses such a private key: whoever reads it can impersonate the publisher or client.
    """
    import zmq.auth

    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"CURVE key file {path!r} cannot be read ({exc}): "
            "make keys with python -m stream.keys DIR"
        ) from None
    if secret and secret_key is None:
        raise UserError(f"CURVE key file {path!r} has no secret key: pass the *.key_secret file")
    if secret and os.name == "posix":
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o066:
            what = "readable" if mode & 0o044 else "writable"
            raise UserError(
                f"CURVE secret key {path} is {what} by other users (mode {mode:04o}): "
                f"run chmod 600 {shlex.quote(str(path))}"
            )
    return public, secret_key


class Publisher:
    def __init__(
        self,
        endpoint: str,
        *,
        hwm: int = 100,
        curve_secret_key: str | None = None,
        curve_clients: str | None = None,
        context: zmq.Context | None = None,
    ):
        self.endpoint = endpoint
        self._context = context or zmq.Context.instance()
        self._auth = None
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscription reaches us
        try:
            if curve_secret_key is not None:
                self._setup_curve(curve_secret_key, curve_clients)
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            if exc.errno == errno.EADDRINUSE:
                raise UserError(
                    f"cannot publish on {endpoint}: the address is in use (another stream.run?); "
                    "pass a free one with --publish tcp://127.0.0.1:PORT"
                ) from None
            raise UserError(
                f"cannot publish on {endpoint!r}: {exc.strerror}; pass an endpoint like "
                "tcp://127.0.0.1:5555 with --publish"
            ) from None
        except UserError:
            self.close()
            raise
        # The heartbeat thread and the inference loop share the socket.
        self._lock = threading.Lock()
        self.sent = 0
        self.dropped = 0
        self.subscriptions = 0

    def _setup_curve(self, secret_key_file: str, clients_dir: str | None) -> None:
        public, secret = load_curve_keys(secret_key_file, secret=True)
        if clients_dir is not None:
            from zmq.auth.thread import ThreadAuthenticator

            if not Path(clients_dir).is_dir():
                raise UserError(
                    f"--curve-clients {clients_dir!r} is not a folder of client public keys"
                )
            self._auth = ThreadAuthenticator(self._context)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(clients_dir))
        self._socket.curve_secretkey = secret
        self._socket.curve_publickey = public
        self._socket.curve_server = True

    def send(self, topic: str, body: dict) -> bool:
        """Send one complete body (a status); never waits. Returns False when it was dropped."""
        with self._lock:
            return self._send(topic, body)

    def send_prediction(self, topic: str, body: dict) -> bool:
        """Stamp a `wire.prediction()` body (`wire.stamp_publish`: publish_ns, wall_ns and
        the capture-to-publish latency, as late as possible before the send) and send it;
        never waits. Returns False when it was dropped."""
        with self._lock:
            wire.stamp_publish(body, publish_ns=time.monotonic_ns(), wall_ns=time.time_ns())
            return self._send(topic, body)

    def _send(self, topic: str, body: dict) -> bool:
        try:
            self._socket.send_multipart(wire.encode(topic, body), flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def count_subscriptions(self) -> int:
        """Read pending (un)subscription notices; returns the live subscriptions."""
        with self._lock:
            while self._socket.poll(0, zmq.POLLIN):
                notice = self._socket.recv(zmq.NOBLOCK)
                if notice[:1] == b"\x01":
                    self.subscriptions += 1
                elif notice[:1] == b"\x00":
                    self.subscriptions = max(0, self.subscriptions - 1)
            return self.subscriptions

    def close(self) -> None:
        self._socket.close(0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
