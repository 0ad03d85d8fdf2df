"""ZeroMQ PUB side: bind, send without ever blocking, count what was dropped.

Drop policy: the PUB socket keeps at most `hwm` messages per subscriber; past that
ZeroMQ drops for that subscriber (a slow or stalled subscriber never slows the
pipeline). A send that cannot be queued at all raises `zmq.Again` with NOBLOCK and is
counted in `dropped`.
"""

from __future__ import annotations

import errno
import threading
import time

import zmq

from . import wire
from .errors import UserError


class Publisher:
    def __init__(self, endpoint: str, *, hwm: int = 100, context: zmq.Context | None = None):
        self.endpoint = endpoint
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self._socket.close(0)
            if exc.errno == errno.EADDRINUSE:
                raise UserError(
                    f"cannot publish on {endpoint}: the address is in use (another stream.run?); "
                    "pass a free one with --publish tcp://127.0.0.1:PORT"
                ) from None
            raise UserError(
                f"cannot publish on {endpoint!r}: {exc.strerror}; pass an endpoint like "
                "tcp://127.0.0.1:5555 with --publish"
            ) from None
        # The heartbeat thread and the inference loop share the socket.
        self._lock = threading.Lock()
        self.sent = 0
        self.dropped = 0

    def send(self, topic: str, body: dict, *, stamp_publish: bool = False) -> bool:
        """Send one message; never waits. Returns False when it was dropped.

        With `stamp_publish`, a prediction's `publish_ns`, `wall_ns` and the
        capture-to-publish latency are stamped here, as late as possible before the send.
        """
        with self._lock:
            if stamp_publish:
                t = body["t"]
                t["publish_ns"] = time.monotonic_ns()
                t["wall_ns"] = time.time_ns()
                body["latency_ms"]["capture_to_publish"] = (t["publish_ns"] - t["capture_ns"]) / 1e6
            frames = wire.encode(topic, body)
            try:
                self._socket.send_multipart(frames, flags=zmq.NOBLOCK)
            except zmq.Again:
                self.dropped += 1
                return False
            self.sent += 1
            return True

    def close(self) -> None:
        with self._lock:
            self._socket.close(0)
