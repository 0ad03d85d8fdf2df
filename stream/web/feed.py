"""The view's ZeroMQ side: one SUB socket (zmq.asyncio, every topic) connected to each
endpoint, every message decoded and validated by stream.transport.wire, the latest state
of the run kept for pages that open later, and every message and link change handed on.

Kept: per stream its latest prediction and status and its last EVENTS_KEPT events; the
latest run status. The link is down from the start until a message arrives, and again
after LINK_TIMEOUT_S without any (a run sends its status at least once a second); ZeroMQ
reconnects by itself, so the feed only waits.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from stream.errors import UserError
from stream.transport import wire
from stream.transport.subscribe import HandshakeError, Handshakes, curve_client

log = logging.getLogger("stream.web")

#: Seconds without any message after which the link is down (3 heartbeats missed).
LINK_TIMEOUT_S = 3.0
#: Events kept per stream for a page that opens later (its timeline shows 2 minutes).
EVENTS_KEPT = 50
#: Streams kept: a publisher that invents stream ids cannot grow the view without bound.
MAX_STREAMS = 256
#: Messages ZeroMQ holds for the view before it drops (the view keeps up: it only parses).
RCVHWM = 1000


class Feed:
    """Subscribes to `endpoints`; `on_message(topic, body)` and `on_link(link)` are called
    in the event loop for each valid message and each change of `link` ({"state": "up" |
    "down", "detail": line}). `first` is set by the first message."""

    def __init__(
        self,
        endpoints: list[str],
        *,
        on_message: Callable[[str, dict], None],
        on_link: Callable[[dict], None],
        curve_server_key: str | None = None,
        curve_client_key: str | None = None,
    ):
        self.endpoints = list(endpoints)
        self._on_message, self._on_link = on_message, on_link
        self.streams: dict[str, dict] = {}
        self.run: dict | None = None
        self.invalid = 0  # messages that failed validation (skipped)
        self.link = {"state": "down", "detail": f"waiting for a run at {self._where()}: retrying"}
        self.listed = asyncio.Event()
        self._told_full = False
        self._monitor = None
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.SUB)
        endpoint = None
        try:
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.RCVHWM, RCVHWM)
            if curve_server_key is not None:
                curve_client(self._socket, curve_server_key, curve_client_key)
            self._socket.setsockopt(zmq.SUBSCRIBE, b"")
            # Before connecting, so that the first handshake is seen.
            self._monitor = self._socket.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_SUCCEEDED
                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            )
            self._handshakes = {
                e: Handshakes(e, curve_server_key, curve_client_key) for e in self.endpoints
            }
            for endpoint in self.endpoints:
                self._socket.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise UserError(
                f"cannot subscribe to {endpoint!r}: {exc.strerror}; "
                "pass --connect an endpoint like tcp://127.0.0.1:5555"
            ) from None
        except BaseException:
            self.close()
            raise

    def _where(self) -> str:
        return " and ".join(self.endpoints)

    def state(self) -> dict:
        """The kept state: {"link", "run", "streams": {id: {"pred", "status", "events"}}}."""
        return {
            "link": dict(self.link),
            "run": self.run,
            "streams": {
                sid: {"pred": s["pred"], "status": s["status"], "events": list(s["events"])}
                for sid, s in self.streams.items()
            },
        }

    def known(self) -> set[str]:
        """The stream ids this run has spoken of: in messages and in the run status."""
        ids = set(self.streams)
        if self.run is not None:
            ids.update(s["id"] for s in self.run["streams"])
        return ids

    async def run_forever(self) -> None:
        await asyncio.gather(self._receive(), self._watch_handshakes())

    async def _watch_handshakes(self) -> None:
        """A publisher that refuses the view (CURVE keys) says why in the link's detail."""
        loop = asyncio.get_running_loop()
        told = None
        while True:
            event = parse_monitor_message(await self._monitor.recv_multipart())
            address = event["endpoint"].decode("utf-8", "replace")
            handshakes = self._handshakes.get(address) or self._handshakes[self.endpoints[0]]
            try:
                # It may ask the peer which mechanism it has: up to 2 s, not in the loop.
                await loop.run_in_executor(None, handshakes.event, event)
            except HandshakeError as exc:
                detail = f"{exc} (retrying)"
                if self.link["state"] == "down":
                    if self.link["detail"] != detail:
                        self._set_link("down", detail)
                elif detail != told:  # another endpoint answers
                    log.warning("%s", detail)
                told = detail

    async def _receive(self) -> None:
        while True:
            if not await self._socket.poll(LINK_TIMEOUT_S * 1000, zmq.POLLIN):
                if self.link["state"] == "up":  # down with a reason: left as it is
                    self._set_link(
                        "down",
                        f"no run answers at {self._where()} (nothing for "
                        f"{LINK_TIMEOUT_S:g} s): retrying",
                    )
                continue
            frames = await self._socket.recv_multipart()
            if self.link["state"] != "up":
                self._set_link("up", f"receiving from {self._where()}")
            try:
                topic, body = wire.decode(frames)
                if topic != wire.RUN_TOPIC:
                    wire.check_stream_id(topic.partition(".")[2])
            except ValueError as exc:  # WireError is one
                self.invalid += 1
                if self.invalid == 1:
                    log.warning("a message that is not valid was skipped (so are others): %s", exc)
                continue
            if self._keep(topic, body):
                self._on_message(topic, body)

    def _keep(self, topic: str, body: dict) -> bool:
        kind, _, sid = topic.partition(".")
        if kind == wire.RUN_TOPIC:
            self.run = body
            self.listed.set()
            return True
        if kind == wire.STATUS_TOPIC and body.get("state") == "removed":
            # Its last status (stream.ctl removed it): the pages get it, nothing is kept,
            # so that its id is unknown again (/video/<id>, /api/streams/<id>: 404).
            self.streams.pop(sid, None)
            return True
        stream = self.streams.get(sid)
        if stream is None:
            if len(self.streams) >= MAX_STREAMS:
                if not self._told_full:
                    log.warning("more than %d streams: the others are left out", MAX_STREAMS)
                    self._told_full = True
                return False
            stream = self.streams[sid] = {
                "pred": None,
                "status": None,
                "events": collections.deque(maxlen=EVENTS_KEPT),
            }
        if kind == wire.PRED_TOPIC:
            stream["pred"] = body
        elif kind == wire.STATUS_TOPIC:
            stream["status"] = body
        elif kind == wire.EVENT_TOPIC:
            stream["events"].append(body)
        return True

    def _set_link(self, state: str, detail: str) -> None:
        self.link = {"state": state, "detail": detail}
        (log.info if state == "up" else log.warning)("link %s: %s", state, detail)
        self._on_link(dict(self.link))

    def close(self) -> None:
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(0)
        self._socket.close(0)
        self._context.term()
