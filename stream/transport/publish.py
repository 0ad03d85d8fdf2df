"""ZeroMQ publishing side: bind (or connect to a proxy), send without ever blocking, count
what happened.

Drop policy: the socket keeps at most `hwm` messages per subscriber; past that ZeroMQ
drops for that subscriber alone (a slow or stalled subscriber never slows the pipeline
or the other subscribers; it sees the drop as a gap in `seq`). A send that cannot be
queued at all is counted in `dropped`. The socket is an XPUB so that the status topic
can say how many subscriptions are live.

`connect:tcp://HOST:PORT` connects the XPUB to the frontend of `python -m stream.proxy`
instead of binding (many hosts, one endpoint for subscribers: docs/deploy.md). The proxy
is then the one subscriber: `subscriptions` counts the distinct topic prefixes its
subscribers asked for (libzmq's proxy passes each prefix up once), 0 while the proxy is
down or has no subscribers; predictions then go nowhere, as with no subscriber at all,
and ZeroMQ reconnects by itself (every 0.1 s) when the proxy is back.

Security (optional): with a CURVE secret key the socket encrypts everything
(ZeroMQ's CURVE), and with a folder of client public keys only those clients may
subscribe (ZeroMQ's ZAP authentication). `python -m stream.keys DIR` makes the keys.
Connected to a proxy, the run is a CURVE client of the proxy: its secret key is its own
(a client's NAME.key_secret) and `curve_server_key` is the proxy's public key; the proxy
decides which publishers it lets in.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import re
import shlex
import stat
import threading
import time
from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

from stream.errors import UserError
from stream.transport import wire

log = logging.getLogger(__name__)

#: The prefix of an endpoint to connect to (a stream.proxy frontend) instead of binding.
CONNECT = "connect:"
#: ZMTP heartbeats between a publisher and a proxy, and between the proxy and its peers:
#: a peer that vanished without closing its connection (a host switched off, a cable
#: pulled) is seen as gone after HEARTBEAT_TIMEOUT_MS, and the publisher reconnects,
#: instead of filling a dead TCP connection until the kernel gives up (many minutes).
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 5000


_TCP = re.compile(r"tcp://(\[[^\]]+\]|[^:/\[\]]+):(\d{1,5})")


def check_endpoint(
    endpoint: str,
    *,
    flag: str = "--publish",
    allow_remote: bool = False,
    connect: bool = False,
    others: str = "subscribe",
) -> None:
    """A tcp://HOST:PORT endpoint to bind (UserError otherwise, naming `flag`): one that
    other hosts can reach only with `allow_remote` (they could then `others`). With
    `connect`, `connect:tcp://HOST:PORT` is also accepted, for any host: a socket that
    connects listens nowhere, so it opens nothing to other hosts."""
    to_connect = connect and endpoint.startswith(CONNECT)
    m = _TCP.fullmatch(endpoint[len(CONNECT) :] if to_connect else endpoint)
    if not m or not 0 < int(m[2]) < 65536:
        if to_connect:
            example = "connect:tcp://proxyhost:5556 (a stream.proxy's --frontend)"
        else:
            example = "tcp://127.0.0.1:5555"
            if connect:
                example += " (or connect:tcp://proxyhost:5556 for a stream.proxy)"
        raise UserError(f"{flag} {endpoint!r} is not an endpoint like {example}")
    if to_connect:
        return
    if not loopback(m[1].strip("[]")) and not allow_remote:
        raise UserError(
            f"{flag} {endpoint!r} would let other hosts {others}: add --allow-remote "
            f"if that is what you want, or {'publish' if flag == '--publish' else 'listen'} "
            "on 127.0.0.1"
        )


def loopback(host: str) -> bool:
    """Whether `host` (a name, or an IPv4 or IPv6 address without brackets) is this host
    alone: `localhost` or a loopback address. Any other name may resolve to an address
    other hosts can reach."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def set_heartbeats(sock: zmq.Socket) -> None:
    """ZMTP heartbeats on `sock` (HEARTBEAT_IVL_MS, HEARTBEAT_TIMEOUT_MS)."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)


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


def check_curve_options(
    endpoint: str,
    *,
    curve_secret_key: str | None,
    curve_clients: str | None,
    curve_server_key: str | None,
) -> None:
    """The CURVE options that go with connecting to a proxy (UserError otherwise): there
    the run is a client, with its own secret key and the proxy's public key, and the proxy
    decides who subscribes; a run that binds is the server and takes no server key."""
    if not endpoint.startswith(CONNECT):
        if curve_server_key is not None:
            raise UserError(
                "--curve-server-key is for --publish connect:tcp://HOST:PORT (the proxy's "
                "public key): a run that binds is the CURVE server itself"
            )
        return
    if curve_clients is not None:
        raise UserError(
            "--curve-clients is for a run that binds: connected to a proxy, the proxy lets "
            "subscribers in (python -m stream.proxy --curve-clients DIR)"
        )
    if (curve_secret_key is None) != (curve_server_key is None):
        raise UserError(
            "CURVE through a proxy needs both --curve-secret-key (this run's NAME.key_secret) "
            "and --curve-server-key (the proxy's server.key)"
        )
    if curve_server_key is not None:
        load_curve_keys(curve_server_key, secret=False)


#: The connection's state after a monitor event (a disconnection: see _connection_event).
_CONNECTION_STATES = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "connected",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused",
}


def curve_server(context: zmq.Context, socket: zmq.Socket, secret_key_file: str, clients_dir):
    """Make `socket` (before it binds) a CURVE server with the key pair of
    `secret_key_file`; with `clients_dir`, only the clients whose public keys are in that
    folder get in (ZeroMQ's ZAP, answered by an authenticator thread). Returns that
    thread, for the caller to stop when it closes the socket (None without clients_dir).
    What the publisher and stream.run's control socket do with the run's keys."""
    public, secret = load_curve_keys(secret_key_file, secret=True)
    auth = None
    if clients_dir is not None:
        from zmq.auth.thread import ThreadAuthenticator

        if not Path(clients_dir).is_dir():
            raise UserError(
                f"--curve-clients {clients_dir!r} is not a folder of client public keys"
            )
        auth = ThreadAuthenticator(context)
        auth.start()
        auth.configure_curve(domain="*", location=str(clients_dir))
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True
    return auth


class Publisher:
    """An XPUB socket bound to `endpoint`, or connected to a stream.proxy's frontend when
    `endpoint` is `connect:tcp://HOST:PORT`. CURVE: bound, `curve_secret_key` is the
    server's key and `curve_clients` the folder of subscribers let in; connected, it is
    this publisher's own client key and `curve_server_key` the proxy's public key.
    `local`: an endpoint bound as well, always without CURVE (an ipc:// path in a
    private folder, for a process of this host: stream.run's browser view); its
    subscribers count in `subscriptions`."""

    def __init__(
        self,
        endpoint: str,
        *,
        hwm: int = 100,
        curve_secret_key: str | None = None,
        curve_clients: str | None = None,
        curve_server_key: str | None = None,
        local: str | None = None,
        context: zmq.Context | None = None,
    ):
        self.endpoint = endpoint
        self.local = local
        self.connects = endpoint.startswith(CONNECT)
        self._context = context or zmq.Context.instance()
        self._auth = self._monitor = None
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscription reaches us
        try:
            check_curve_options(
                endpoint,
                curve_secret_key=curve_secret_key,
                curve_clients=curve_clients,
                curve_server_key=curve_server_key,
            )
            if local is not None:
                # Before any CURVE option is set: libzmq copies a socket's options into
                # an endpoint when it binds, so this one stays plain (no keys needed)
                # while `endpoint` is encrypted. For an ipc:// path in a folder only this
                # user may enter (stream.run's browser view): no other host reaches it.
                self._socket.bind(local)
            if self.connects:
                self._connect(endpoint[len(CONNECT) :], curve_secret_key, curve_server_key)
            else:
                if curve_secret_key is not None:
                    self._auth = curve_server(
                        self._context, self._socket, curve_secret_key, curve_clients
                    )
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
        self._state = "connecting"  # of the connection to the proxy, as last logged

    def _connect(self, address: str, secret_key_file: str | None, server_key_file: str | None):
        """Connect to a proxy's frontend: as a CURVE client when given keys. Nothing waits
        for the proxy: ZeroMQ connects in the background and reconnects whenever it is lost."""
        if secret_key_file is not None:
            server_public = load_curve_keys(server_key_file, secret=False)[0]
            public, secret = load_curve_keys(secret_key_file, secret=True)
            self._socket.curve_serverkey = server_public
            self._socket.curve_publickey, self._socket.curve_secretkey = public, secret
        set_heartbeats(self._socket)
        # A queue for the proxy only while it is connected. Without this, libzmq keeps the
        # pipe (and the proxy's subscriptions) across a lost connection: messages would
        # queue while the proxy is down, to reach subscribers late after it is back, and
        # the resent subscriptions would count twice.
        self._socket.setsockopt(zmq.IMMEDIATE, 1)
        # Before connecting, so that the first connection is seen (count_subscriptions logs).
        self._monitor = self._socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_DISCONNECTED
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        )
        self._socket.connect(address)

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
        """Read pending (un)subscription notices; returns the live subscriptions. Connected
        to a proxy, also logs the connection's changes (called twice a second by the run's
        heartbeat, so a lost or refused proxy shows in the log within a second)."""
        with self._lock:
            while self._socket.poll(0, zmq.POLLIN):
                notice = self._socket.recv(zmq.NOBLOCK)
                if notice[:1] == b"\x01":
                    self.subscriptions += 1
                elif notice[:1] == b"\x00":
                    self.subscriptions = max(0, self.subscriptions - 1)
            while self._monitor is not None and self._monitor.poll(0, zmq.POLLIN):
                event = recv_monitor_message(self._monitor)
                if event["endpoint"].decode() != self.local:  # the proxy's, not a local peer's
                    self._connection_event(event["event"])
            return self.subscriptions

    def _connection_event(self, event: int) -> None:
        """One log line per change of the connection to the proxy. A refused handshake
        repeats with every reconnection (each time followed by a disconnection), so the
        state is what changes, not the event."""
        if event == zmq.EVENT_DISCONNECTED:
            state = "lost" if self._state == "connected" else self._state
        else:
            state = _CONNECTION_STATES.get(event, "failed")
        if state == self._state:
            return
        self._state = state
        proxy = f"the proxy at {self.endpoint[len(CONNECT) :]}"
        if state == "connected":
            log.info("publishing through %s", proxy)
        elif state == "lost":
            log.warning(
                "lost %s: predictions go nowhere until it is back (ZeroMQ reconnects)", proxy
            )
        elif state == "refused":
            log.error(
                "%s refuses this run's CURVE key: copy its public key (clients/NAME.key from "
                "python -m stream.keys) into the proxy's --curve-publishers folder",
                proxy,
            )
        else:  # a mechanism mismatch, or a connection cut during the handshake
            log.warning(
                "the handshake with %s failed (ZeroMQ retries): if it keeps failing, give "
                "--curve-secret-key and --curve-server-key exactly when the proxy has "
                "--curve-secret-key, and the proxy's server.key as --curve-server-key",
                proxy,
            )

    def close(self, linger_s: float = 0.0) -> None:
        """Close the socket; what is still queued is dropped, unless `linger_s` > 0: then
        it gets up to that long to reach the subscribers, and the call waits for it. For a
        process's last words (the inference process's ends of events at a stop): ZeroMQ
        sends lingering messages only while the socket's context lives, so the context is
        terminated too, and any other socket of it closed at once."""
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
        if self._auth is not None:  # its thread's sockets are closed before the context ends
            self._auth.stop()
            self._auth = None
        self._socket.close(round(linger_s * 1000))
        if linger_s > 0:
            self._context.destroy(linger=0)
