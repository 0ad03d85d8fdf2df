"""`python -m stream.mqtt`: the events of one or more `stream.run` endpoints, published
through an MQTT broker (Home Assistant, Node-RED, openHAB...), with paho-mqtt.

    python -m stream.mqtt --connect tcp://127.0.0.1:5555 --broker mqtt://localhost:1883

Topics, under `--prefix` (default `avstream`):
  <prefix>/<stream>/event         every event message's JSON as the run sent it
                                  (avstream.event.v1: start, update, end), not retained
  <prefix>/<stream>/<event-name>  `ON` from a start (an update too, for a bridge that came
                                  in during the event), `OFF` from its end: retained
  <prefix>/<stream>/top           with --top: the labels and scores of each prediction
                                  (QoS 0, not retained; only while the broker is there)
  <prefix>/bridge                 `online` (retained) while the bridge is connected;
                                  `offline` when it stops, or from the broker (the last
                                  will) when the bridge dies or its connection is lost
With --homeassistant, each (stream, event name) gets a retained MQTT discovery config
(`<discovery-prefix>/binary_sensor/<node>/<name>/config`) the first time one of its
event messages is seen: a binary_sensor per event, grouped in one device per stream.

Broker gone: the bridge reconnects with backoff (RECONNECT_MIN_S doubling to
RECONNECT_MAX_S). Meanwhile the messages for it wait in a bounded queue (--queue, the
oldest dropped first; the drops are counted and logged once per outage) and go out, in
order, once it is back; the retained states and discovery configs are published again
then (a broker restarted without persistence has lost them). ZeroMQ is never held up:
the threads that receive only append to the queue.

Threads: one per --connect endpoint receives (a Subscriber, which validates every
message); one owns the paho client and does all of its I/O, with paho's calls for an
external loop (loop_read, loop_write, loop_misc) rather than loop_start(). With
loop_start, paho's thread handles the broker's CONNACK while another thread may publish:
a message published in that moment goes out before the ones paho resends from the
outage, and an event's end could reach the broker before its start. In one thread the
resends always come first.

Bad input (the URL, the prefix, a file, a broker that is not there or refuses the login)
is one `error:` line and exit status 2; SIGINT and SIGTERM stop it cleanly (the queue is
delivered if the broker is there, `offline` published) with exit status 0.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
import select
import shlex
import signal
import socket
import ssl
import stat
import sys
import threading
import time
import urllib.parse

from stream.errors import ArgumentParser, UserError, error_line
from stream.transport import wire
from stream.transport.subscribe import DEFAULT_ENDPOINT, HandshakeError, Subscriber

try:  # the `mqtt` extra: pip install 'avstream[mqtt]'
    import paho.mqtt.client as paho
except ImportError:  # main() says what to install
    paho = None

log = logging.getLogger("stream.mqtt")

DEFAULT_BROKER = "mqtt://localhost:1883"
DEFAULT_PREFIX = "avstream"
DEFAULT_DISCOVERY_PREFIX = "homeassistant"
#: Messages that wait for the broker (--queue): at a few events a minute per stream,
#: hours of an outage; the oldest are dropped first (the newest say the current state).
DEFAULT_QUEUE = 1000
#: The password, when no --password-file is given (never on the command line: every user
#: of the host can read a process's arguments).
PASSWORD_ENV = "AVSTREAM_MQTT_PASSWORD"
#: Seconds for the broker to accept the connection and answer the login (--connect-timeout).
CONNECT_TIMEOUT_S = 5.0
#: MQTT keepalive: a broker that vanished without closing the connection (a host switched
#: off) is seen as gone after 1.5 times this, and the bridge reconnects.
KEEPALIVE_S = 15
#: Reconnection backoff: the first try this long after the loss, then twice as long each
#: time, up to RECONNECT_MAX_S.
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0
#: Messages handed to paho and not yet acknowledged (QoS 1 and 2) at most; the rest wait
#: in the bridge's queue, where the drop policy applies.
IN_FLIGHT = 100
#: How long a clean stop may take to deliver what waits and say `offline`.
STOP_DEADLINE_S = 5.0

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# -- options ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Broker:
    tls: bool
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_broker(url: str) -> Broker:
    """`mqtt://HOST[:PORT]` (1883) or `mqtts://HOST[:PORT]` (TLS, 8883); UserError otherwise."""
    example = "mqtt://localhost:1883 or mqtts://broker.example:8883"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise UserError(
            f"--broker {url!r} is not a broker URL like {example} (the port is a number "
            "from 1 to 65535)"
        ) from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise UserError(f"--broker {url!r} is not a broker URL like {example}")
    if parts.username is not None or parts.password is not None:
        raise UserError(
            f"--broker {url!r} holds a user name or password: pass --username and "
            f"--password-file (or {PASSWORD_ENV}) instead (every user of the host can read "
            "a command line)"
        )
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UserError(f"--broker {url!r} is not a broker URL like {example}")
    if port == 0:
        raise UserError(f"--broker {url!r}: port 0 is no broker's port (e.g. {example})")
    tls = parts.scheme == "mqtts"
    return Broker(tls, parts.hostname, port or (8883 if tls else 1883))


def check_prefix(prefix: str, flag: str) -> str:
    """A topic prefix to publish under: MQTT's wildcards `+` and `#` may not appear in a
    topic one publishes to, `$` topics are the broker's, and empty levels (`a//b`, a
    leading or trailing `/`) are almost always a mistake."""
    if not prefix:
        raise UserError(f"{flag} is empty: give one, e.g. {DEFAULT_PREFIX}")
    if "+" in prefix or "#" in prefix:
        raise UserError(
            f"{flag} {prefix!r} holds an MQTT wildcard (+ or #), which a topic to publish "
            "to may not: use letters, digits, '_', '-' and '/' between levels"
        )
    if prefix.startswith("$"):
        raise UserError(f"{flag} {prefix!r} starts with '$': those topics are the broker's")
    if "\0" in prefix or any(not c.isprintable() for c in prefix):
        raise UserError(f"{flag} {prefix!r} holds a control character")
    if prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        raise UserError(
            f"{flag} {prefix!r} has an empty topic level (a leading, trailing or double '/')"
        )
    return prefix


def read_password(path: str) -> str:
    """The first line of a password file that only its owner may read (as ssh wants of a
    private key, and stream.keys of a CURVE secret key); UserError otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            password = f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UserError(f"--password-file {path!r} cannot be read ({reason})") from None
    if os.name == "posix" and mode & 0o066:
        what = "readable" if mode & 0o044 else "writable"
        raise UserError(
            f"--password-file {path} is {what} by other users (mode {mode:04o}): "
            f"run chmod 600 {shlex.quote(path)}"
        )
    if not password:
        raise UserError(f"--password-file {path!r} is empty: its first line is the password")
    return password


def check_ca_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise UserError(f"--ca-file {path!r} cannot be read ({exc.strerror})") from None
    return path


# -- topics and bodies -----------------------------------------------------------------


def state_topic(prefix: str, stream: str, name: str) -> str:
    return f"{prefix}/{stream}/{name}"


def event_topic(prefix: str, stream: str) -> str:
    return f"{prefix}/{stream}/event"


def top_topic(prefix: str, stream: str) -> str:
    return f"{prefix}/{stream}/top"


def bridge_topic(prefix: str) -> str:
    return f"{prefix}/bridge"


def discovery(prefix: str, discovery_prefix: str, stream: str, name: str, qos: int):
    """(topic, config) of the Home Assistant binary_sensor of event `name` of `stream`:
    ON while the event lasts, unavailable while the bridge is offline; one device per
    stream. The state topic is the unique id: it is unique on the broker."""
    node = re.sub(r"[^A-Za-z0-9_-]", "_", prefix) + "_" + stream  # HA allows these alone
    config = {
        "name": name,
        "unique_id": state_topic(prefix, stream, name),
        "state_topic": state_topic(prefix, stream, name),
        "payload_on": "ON",
        "payload_off": "OFF",
        "availability_topic": bridge_topic(prefix),
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": qos,
        "device": {
            "identifiers": [f"{prefix}/{stream}"],
            "name": f"avstream {stream}",
            "manufacturer": "avstream",
            "model": "stream.run stream",
        },
        "origin": {"name": "avstream"},
    }
    return f"{discovery_prefix}/binary_sensor/{node}/{name}/config", config


def top_body(body: dict) -> dict:
    """What <prefix>/<stream>/top carries of a prediction."""
    return {
        "stream": body["stream"],
        "seq": body["seq"],
        "labels": [{"label": x["label"], "score": x["score"]} for x in body["labels"]],
        "degraded": body["degraded"],
        "wall_ns": body["t"]["wall_ns"],
    }


def _json(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


@dataclasses.dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    #: (stream, event name) of an ON/OFF state message, whose drop must be made good.
    state_of: tuple[str, str] | None = None


class Outbox:
    """The messages that wait for the broker: first in, first out, at most `size`; a
    message put into a full outbox drops the oldest (the newest say what is true now).
    Not thread-safe: the bridge holds its lock."""

    def __init__(self, size: int):
        self.size = size
        self._items: collections.deque[Outgoing] = collections.deque()
        self.dropped = 0

    def put(self, item: Outgoing) -> Outgoing | None:
        """Append; returns the message dropped to make room, if any."""
        lost = None
        if len(self._items) >= self.size:
            lost = self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        return lost

    def get(self) -> Outgoing | None:
        return self._items.popleft() if self._items else None

    def __len__(self) -> int:
        return len(self._items)


# -- the bridge ------------------------------------------------------------------------


class Bridge:
    """Receiving threads call `handle()` (never waits); one thread calls `serve()`, which
    does every paho call from then on. `connect()` (before `serve()`) is the first
    connection, whose failures are the user's to fix."""

    def __init__(
        self,
        broker: Broker,
        *,
        prefix: str = DEFAULT_PREFIX,
        qos: int = 1,
        queue: int = DEFAULT_QUEUE,
        top: bool = False,
        discovery_prefix: str | None = None,
        client_id: str = "",
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT_S,
    ):
        self.broker, self.prefix, self.qos, self.top = broker, prefix, qos, top
        self.discovery_prefix, self.username = discovery_prefix, username
        self.connect_timeout = connect_timeout
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
            clean_session=True,  # the bridge only publishes: a session holds nothing for it
        )
        client.connect_timeout = connect_timeout
        # Past the in-flight window nothing reaches paho; this only bounds a mistake.
        client.max_queued_messages_set(IN_FLIGHT)
        client.max_inflight_messages_set(IN_FLIGHT)
        if username is not None:
            client.username_pw_set(username, password)
        if broker.tls:
            try:
                client.tls_set(ca_certs=ca_file)  # None: the system's certificate authorities
            except (ssl.SSLError, OSError) as exc:
                raise UserError(
                    f"--ca-file {ca_file!r} holds no CA certificate in PEM form ({exc})"
                ) from None
        client.will_set(bridge_topic(prefix), "offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client

        self._lock = threading.Lock()  # the outbox, tops, states, dirty, configs
        self._outbox = Outbox(queue)
        self._tops: dict[str, Outgoing] = {}
        self._states: dict[tuple[str, str], str] = {}
        self._dirty: set[tuple[str, str]] = set()  # states whose message was dropped
        self._configs: list[Outgoing] = []  # discovery configs not yet handed to paho
        self._known: set[tuple[str, str]] = set()
        self._skipped: set[str] = set()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

        # The paho thread's own (after connect(), only it touches these).
        self._retained: dict[str, Outgoing] = {}  # topic -> latest retained handed to paho
        self._unacked: set[int] = set()
        self._up = False  # CONNACK accepted and the connection not lost since
        self._connack = None  # the reason code of the last CONNACK
        self._came_up = False
        self._serving = False  # serve() runs: a refused login is logged, not raised
        self._lost_at: float | None = None
        self._attempt_at = 0.0
        self._attempt_open = False  # a reconnection waits for the broker's CONNACK
        self._next_try = 0.0
        self._delay = RECONNECT_MIN_S
        self._told_full = False

        self.stopping = threading.Event()
        #: (the error line, the exit status) of what ended the bridge, if anything did
        self.failure: tuple[str, int] | None = None

    def fail(self, line: str, code: int) -> None:
        """End the bridge from any thread: main() prints `line` and exits with `code`."""
        if self.failure is None:
            self.failure = (line, code)
        self.stop()

    # -- paho's callbacks (in the paho thread) --

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connack = reason_code
        self._attempt_open = False
        if not reason_code.is_failure:
            self._up = self._came_up = True
        elif self._serving:
            log.warning("%s; next try in %g s", self._refusal(reason_code), self._delay)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was_up, self._up = self._up, False
        if self._attempt_open and self._serving:
            log.warning(
                "the broker at %s hung up before answering the login: next try in %g s",
                self.broker.url,
                max(0.0, self._next_try - time.monotonic()),
            )
        self._attempt_open = False
        if was_up and not self.stopping.is_set():
            self._lost_at = time.monotonic()
            self._delay = RECONNECT_MIN_S
            self._next_try = self._lost_at + self._delay
            with self._lock:
                self._tops.clear()  # a prediction is only news while the broker is there
                waiting = len(self._outbox)
            log.warning(  # (paho's reason code for a lost connection says nothing more)
                "lost the broker at %s: reconnecting; until it is back, up to %d "
                "messages wait (%d now), the oldest dropped first",
                self.broker.url,
                self._outbox.size,
                waiting,
            )

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._unacked.discard(mid)

    # -- the receiving threads --

    def handle(self, msg) -> None:
        """A validated message from a run: queue what it means for the broker; never waits."""
        body = msg.body
        if body["schema"] == wire.EVENT_SCHEMA:
            self._event(body)
        elif body["schema"] == wire.PREDICTION_SCHEMA and self.top:
            if not self._up or not self._named(body["stream"]):
                return
            out = Outgoing(top_topic(self.prefix, body["stream"]), _json(top_body(body)), 0, False)
            with self._lock:
                self._tops[body["stream"]] = out
        else:
            return
        self._wake()

    def _named(self, *names: str) -> bool:
        """Stream ids and event names become topic levels: they must hold no '/', '+' or '#'
        (stream.run never sends such; another publisher might)."""
        bad = [n for n in names if not _ID.match(n)]
        for name in bad:
            if name not in self._skipped:
                self._skipped.add(name)
                log.warning("skipping messages of %r: not a stream id or event name", name)
        return not bad

    def _event(self, body: dict) -> None:
        stream, name, kind = body["stream"], body["name"], body["type"]
        if not self._named(stream, name):
            return
        key = (stream, name)
        state = "OFF" if kind == "end" else "ON"
        with self._lock:
            if self.discovery_prefix is not None and key not in self._known:
                topic, config = discovery(
                    self.prefix, self.discovery_prefix, stream, name, self.qos
                )
                self._configs.append(Outgoing(topic, _json(config), self.qos, True))
            self._known.add(key)
            out = [Outgoing(event_topic(self.prefix, stream), _json(body), self.qos, False)]
            # An update says ON too, for a bridge that started during the event.
            if kind != "update" or self._states.get(key) != state:
                out.append(
                    Outgoing(state_topic(self.prefix, *key), state.encode(), self.qos, True, key)
                )
            self._states[key] = state
            for item in out:
                lost = self._outbox.put(item)
                if lost is None:
                    continue
                if lost.state_of is not None:
                    self._dirty.add(lost.state_of)
                if not self._told_full:
                    self._told_full = True
                    log.warning(
                        "%d messages wait for the broker at %s: dropping the oldest until it "
                        "takes them again (--queue)",
                        self._outbox.size,
                        self.broker.url,
                    )

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:  # already woken, not yet drained
            pass

    # -- the paho thread --

    def connect(self, interrupted=lambda: False) -> None:
        """The first connection: UserError when the broker is not there, does not answer,
        or refuses the login; _Stopped once `interrupted()` while it waits for the answer."""
        url = self.broker.url
        try:
            self._client.connect(self.broker.host, self.broker.port, keepalive=KEEPALIVE_S)
        except ConnectionRefusedError:
            raise UserError(
                f"no broker at {url}: the connection was refused (is the broker running, "
                "and is the port right?)"
            ) from None
        except (TimeoutError, socket.timeout):
            raise UserError(
                f"the broker at {url} does not answer: no connection in "
                f"{self.connect_timeout:g} s (is the host right, and the port open?)"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise UserError(
                f"the TLS certificate of the broker at {url} is not trusted "
                f"({exc.verify_message}): pass the CA that signed it with --ca-file"
            ) from None
        except ssl.SSLError as exc:
            raise UserError(
                f"the TLS handshake with the broker at {url} failed ({exc.reason or exc}): "
                "is it a TLS listener? (mqtt:// for one without)"
            ) from None
        except OSError as exc:
            raise UserError(
                f"cannot connect to the broker at {url}: {exc.strerror or exc}"
            ) from None
        deadline = time.monotonic() + self.connect_timeout
        while self._connack is None and self._client.socket() is not None:
            if interrupted():
                raise _Stopped
            left = deadline - time.monotonic()
            if left <= 0:
                raise UserError(
                    f"the broker at {url} does not answer: no MQTT reply to the login in "
                    f"{self.connect_timeout:g} s (is it an MQTT broker"
                    + (", and a TLS listener?)" if self.broker.tls else "?)")
                )
            self._step(min(left, 0.2))  # how late a signal is seen
        if self._connack is None:
            raise UserError(
                f"the broker at {url} hung up before answering the login"
                + (
                    ": is it a TLS listener? (mqtt:// for one without)"
                    if self.broker.tls
                    else ": does it want TLS? (mqtts://)"
                )
            )
        if self._connack.is_failure:
            raise UserError(self._refusal(self._connack))
        self._connack = None

    def _refusal(self, reason) -> str:
        url, code = self.broker.url, reason.value
        if code in (134, 135) and self.username is not None:  # bad user or password, not authorized
            return (
                f"the broker at {url} refused the login of user {self.username!r}: check "
                f"--username and the password (--password-file or {PASSWORD_ENV})"
            )
        if code in (134, 135):
            return (
                f"the broker at {url} refused a login without a user name ({reason}): pass "
                f"--username and --password-file (or {PASSWORD_ENV})"
            )
        if code == 133:
            return f"the broker at {url} refused the client id: pass another --client-id"
        return f"the broker at {url} refused the connection ({reason})"

    def serve(self) -> None:
        """Deliver until `stop()`, reconnecting whenever the broker is lost; then deliver
        what waits (for STOP_DEADLINE_S at most), publish `offline` and disconnect."""
        self._serving = True
        try:
            while not self.stopping.is_set():
                self._serve_once()
            self._finish()
        except Exception:  # a bug: say so, and let main() end the bridge
            log.exception("the MQTT side failed")
            self.fail("error: the MQTT side of the bridge failed (see above)", 1)

    def stop(self) -> None:
        self.stopping.set()
        self._wake()

    def _serve_once(self) -> None:
        now = time.monotonic()
        if self._attempt_open and now - self._attempt_at >= self.connect_timeout:
            self._attempt_open = False  # the next reconnect() closes its socket
            log.warning(
                "the broker at %s does not answer the login (no reply in %g s): next try in %g s",
                self.broker.url,
                self.connect_timeout,
                max(0.0, self._next_try - now),
            )
        if not self._up and not self._attempt_open:
            if now < self._next_try:
                self._wait(self._next_try - now)
            else:
                self._reconnect(now)
            return
        if self._came_up:
            self._came_up = False
            self._back()
        if self._up:
            self._feed()
        self._step(1.0)

    def _reconnect(self, now: float) -> None:
        self._attempt_at, self._next_try = now, now + self._delay
        delay, self._delay = self._delay, min(2 * self._delay, RECONNECT_MAX_S)
        self._connack = None
        try:
            self._client.reconnect()
            self._attempt_open = True
            return
        except (OSError, ssl.SSLError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        with self._lock:
            waiting, dropped = len(self._outbox), self._outbox.dropped
        log.warning(
            "no broker at %s yet (%s): next try in %g s; %d messages wait, %d dropped",
            self.broker.url,
            why,
            delay,
            waiting,
            dropped,
        )

    def _back(self) -> None:
        """Connected (first or again): `online`, every retained message again, then the
        queue (in `_feed`)."""
        with self._lock:
            waiting, dropped = len(self._outbox), self._outbox.dropped
            self._outbox.dropped = 0
            self._told_full = False
        if self._lost_at is not None:
            log.warning(
                "the broker at %s is back after %.1f s: %d messages that waited go now, %d dropped",
                self.broker.url,
                time.monotonic() - self._lost_at,
                waiting,
                dropped,
            )
            self._lost_at = None
        self._publish(Outgoing(bridge_topic(self.prefix), b"online", 1, True))
        for item in list(self._retained.values()):
            self._publish(item)

    def _feed(self) -> None:
        """Hand paho what waits, as long as fewer than IN_FLIGHT are unacknowledged."""
        while len(self._unacked) < IN_FLIGHT:
            with self._lock:
                if self._outbox.dropped and not self._outbox:
                    # Dropped while connected (a broker slower than the events): said once
                    # the queue is empty again. After an outage, _back said it.
                    log.warning(
                        "%d messages for the broker at %s were dropped (the queue of %d was full)",
                        self._outbox.dropped,
                        self.broker.url,
                        self._outbox.size,
                    )
                    self._outbox.dropped = 0
                    self._told_full = False
                if self._configs:
                    item = self._configs.pop(0)
                elif self._outbox:
                    item = self._outbox.get()
                elif self._dirty:
                    key = self._dirty.pop()
                    item = Outgoing(
                        state_topic(self.prefix, *key),
                        self._states[key].encode(),
                        self.qos,
                        True,
                        key,
                    )
                elif self._tops:
                    item = self._tops.pop(next(iter(self._tops)))
                else:
                    return
            self._publish(item)

    def _publish(self, item: Outgoing) -> None:
        info = self._client.publish(item.topic, item.payload, item.qos, item.retain)
        if item.qos > 0:
            self._unacked.add(info.mid)
        if item.retain:
            self._retained[item.topic] = item

    def _wait(self, timeout: float) -> None:
        """Sleep until woken or `timeout` (no connection to serve)."""
        readable, _, _ = select.select([self._wake_r], [], [], timeout)
        if readable:
            self._drain_wake()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _step(self, timeout: float) -> None:
        """One turn of paho's external loop: wait for the socket (or a wake-up), read,
        write, keep alive."""
        sock = self._client.socket()
        if sock is None:
            return
        # Bytes TLS has decrypted already do not show as readable on the socket.
        pending = getattr(sock, "pending", lambda: 0)() > 0
        wlist = [sock] if self._client.want_write() else []
        readable, _, _ = select.select([sock, self._wake_r], wlist, [], 0 if pending else timeout)
        if self._wake_r in readable:
            self._drain_wake()
        if sock in readable or pending:
            self._client.loop_read()
        if self._client.socket() is not None and self._client.want_write():
            self._client.loop_write()
        if self._client.socket() is not None:
            self._client.loop_misc()

    def _finish(self) -> None:
        deadline = time.monotonic() + STOP_DEADLINE_S
        if self._came_up:
            self._came_up = False
            self._back()
        while self._up and time.monotonic() < deadline:
            self._feed()
            with self._lock:
                left = len(self._outbox) + len(self._configs) + len(self._dirty)
            if not left and not self._unacked:
                break
            self._step(max(0.0, min(0.1, deadline - time.monotonic())))
        if self._up:
            self._publish(Outgoing(bridge_topic(self.prefix), b"offline", 1, True))
            while self._up and self._unacked and time.monotonic() < deadline:
                self._step(max(0.0, min(0.1, deadline - time.monotonic())))
            self._client.disconnect()  # a clean DISCONNECT: the broker drops the will
            while self._client.socket() is not None and time.monotonic() < deadline:
                self._step(max(0.0, min(0.1, deadline - time.monotonic())))
        with self._lock:
            left = len(self._outbox) + len(self._configs)
        if left or self._unacked:
            log.warning(
                "stopped with %d messages not delivered to the broker at %s",
                left + len(self._unacked),
                self.broker.url,
            )

    def close(self) -> None:
        sock = self._client.socket()
        if sock is not None:
            sock.close()
        self._wake_r.close()
        self._wake_w.close()


def _receive(sub: Subscriber, bridge: Bridge) -> None:
    """One endpoint's messages into the bridge, until the bridge stops."""
    missed = 0
    try:
        while not bridge.stopping.is_set():
            try:
                msg = sub.recv(timeout=0.25)
            except TimeoutError:
                continue
            if sub.missed > missed:
                log.warning(
                    "%d messages from %s missed (the bridge fell behind): a retained state "
                    "may be stale until the next event",
                    sub.missed - missed,
                    sub.endpoint,
                )
                missed = sub.missed
            bridge.handle(msg)
    except HandshakeError as exc:
        bridge.fail(error_line(exc), 2)
    except Exception:
        log.exception("receiving from %s failed", sub.endpoint)
        bridge.fail(f"error: receiving from {sub.endpoint} failed (see above)", 1)
    finally:
        sub.close()


# -- the command -----------------------------------------------------------------------


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m stream.mqtt",
        description="Publish the events (and with --top the predictions' top labels) of "
        "stream.run endpoints through an MQTT broker; with --homeassistant, as Home Assistant "
        "binary sensors.",
    )
    parser.add_argument(
        "--connect",
        action="append",
        metavar="ENDPOINT",
        help=f"a stream.run (or stream.proxy backend) to subscribe to (repeatable; default "
        f"{DEFAULT_ENDPOINT})",
    )
    parser.add_argument(
        "--broker",
        default=DEFAULT_BROKER,
        metavar="URL",
        help=f"mqtt://HOST[:PORT] or mqtts://HOST[:PORT] for TLS (default {DEFAULT_BROKER})",
    )
    parser.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        metavar="PREFIX",
        help=f"the topics' first levels (default {DEFAULT_PREFIX})",
    )
    parser.add_argument(
        "--qos",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="MQTT QoS of events and states (default 1: the broker acknowledges each)",
    )
    parser.add_argument(
        "--queue",
        type=int,
        default=DEFAULT_QUEUE,
        metavar="N",
        help=f"messages that wait while the broker is gone, the oldest dropped first "
        f"(default {DEFAULT_QUEUE})",
    )
    parser.add_argument(
        "--client-id", default="", metavar="ID", help="MQTT client id (default: the broker's)"
    )
    parser.add_argument("--username", metavar="USER", help="user name of the login")
    parser.add_argument(
        "--password-file",
        metavar="FILE",
        help=f"file whose first line is the password (mode 600; or set {PASSWORD_ENV})",
    )
    parser.add_argument(
        "--ca-file",
        metavar="FILE",
        help="mqtts://: the CA certificate (PEM) that signed the broker's (default: the system's)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=CONNECT_TIMEOUT_S,
        metavar="S",
        help=f"seconds the broker has to answer at the start (default {CONNECT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--top", action="store_true", help="also publish each prediction's labels and scores"
    )
    parser.add_argument(
        "--homeassistant",
        action="store_true",
        help="publish Home Assistant discovery configs: a binary_sensor per event",
    )
    parser.add_argument(
        "--discovery-prefix",
        default=DEFAULT_DISCOVERY_PREFIX,
        metavar="PREFIX",
        help=f"Home Assistant's discovery prefix (default {DEFAULT_DISCOVERY_PREFIX})",
    )
    parser.add_argument(
        "--curve-server-key", metavar="FILE", help="CURVE: the publisher's public key (server.key)"
    )
    parser.add_argument(
        "--curve-client-key",
        metavar="FILE",
        help="CURVE: this client's secret key (NAME.key_secret)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    return parser


def _options(args) -> dict:
    """The Bridge's arguments from the command line; UserError for bad input."""
    broker = parse_broker(args.broker)
    check_prefix(args.prefix, "--prefix")
    if args.homeassistant:
        check_prefix(args.discovery_prefix, "--discovery-prefix")
    for endpoint in args.connect or ():
        if not endpoint.startswith(("tcp://", "ipc://", "inproc://")):
            raise UserError(
                f"--connect {endpoint!r} is not a ZeroMQ endpoint such as {DEFAULT_ENDPOINT}"
            )
    if args.queue < 1:
        raise UserError(f"--queue {args.queue} must be at least 1 message")
    if not args.connect_timeout > 0:
        raise UserError(f"--connect-timeout {args.connect_timeout:g} must be > 0 seconds")
    if (args.curve_server_key is None) != (args.curve_client_key is None):
        raise UserError("CURVE needs both --curve-server-key and --curve-client-key")
    if args.ca_file is not None and not broker.tls:
        raise UserError(f"--ca-file is for a TLS broker (mqtts://), not {broker.url}")
    password = None
    if args.password_file is not None:
        password = read_password(args.password_file)
    elif os.environ.get(PASSWORD_ENV):
        password = os.environ[PASSWORD_ENV]
    if password is not None and args.username is None:
        raise UserError(
            "a password (--password-file or " + PASSWORD_ENV + ") needs --username as well"
        )
    if args.client_id and not args.client_id.isprintable():
        raise UserError(f"--client-id {args.client_id!r} holds a control character")
    return {
        "broker": broker,
        "prefix": args.prefix,
        "qos": args.qos,
        "queue": args.queue,
        "top": args.top,
        "discovery_prefix": args.discovery_prefix if args.homeassistant else None,
        "client_id": args.client_id,
        "username": args.username,
        "password": password,
        "ca_file": check_ca_file(args.ca_file) if args.ca_file is not None else None,
        "connect_timeout": args.connect_timeout,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if paho is None:
        print(
            "error: python -m stream.mqtt needs paho-mqtt: pip install 'avstream[mqtt]'",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s mqtt %(levelname)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    endpoints = args.connect or [DEFAULT_ENDPOINT]
    topics = (wire.EVENT_TOPIC + ".",) + ((wire.PRED_TOPIC + ".",) if args.top else ())
    # The handler only takes note: an exception raised from it where the main thread happens
    # to be is lost there if that is a logging call (logging reports errors in a handler's
    # emit and goes on), and the bridge would not stop.
    signalled: list[int] = []
    handlers = {sig: signal.signal(sig, lambda n, _: signalled.append(n)) for sig in _SIGNALS}
    subs: list[Subscriber] = []
    bridge = None
    threads: list[threading.Thread] = []
    code = 0
    try:
        options = _options(args)
        for endpoint in endpoints:
            subs.append(
                Subscriber(
                    endpoint,
                    topics,
                    curve_server_key=args.curve_server_key,
                    curve_client_key=args.curve_client_key,
                )
            )
        bridge = Bridge(**options)
        bridge.connect(interrupted=lambda: bool(signalled))
        threads.append(threading.Thread(target=bridge.serve, name="mqtt", daemon=True))
        for sub in subs:
            threads.append(
                threading.Thread(target=_receive, args=(sub, bridge), name="receive", daemon=True)
            )
        for thread in threads:
            thread.start()
        subs = []  # each is its thread's now
        log.info(
            "connected to %s: the events of %s go to %s/<stream>/... (QoS %d)%s",
            bridge.broker.url,
            ", ".join(endpoints),
            bridge.prefix,
            bridge.qos,
            ", Home Assistant discovery under " + args.discovery_prefix
            if args.homeassistant
            else "",
        )
        # The sleep's length bounds how late a signal or a failure is acted on.
        while not bridge.stopping.is_set() and not signalled:
            time.sleep(0.2)
    except UserError as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    except _Stopped:
        pass
    finally:
        for sig in _SIGNALS:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        for sub in subs:
            sub.close()
        if bridge is not None:
            bridge.stop()
            for thread in threads:
                thread.join(timeout=2 * STOP_DEADLINE_S)
            if bridge.failure is not None:
                line, code = bridge.failure
                print(line, file=sys.stderr)
            elif threads:
                log.info("stopped")
            bridge.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return code


_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class _Stopped(Exception):
    """SIGINT or SIGTERM arrived before the bridge was up."""
