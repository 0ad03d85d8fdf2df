"""`python -m stream.proxy`: one endpoint for the predictions of many hosts.

    python -m stream.proxy --frontend tcp://0.0.0.0:5556 --backend tcp://0.0.0.0:5557 \\
        --allow-remote
    python -m stream.run --camera 0 --stream-id door --publish connect:tcp://proxyhost:5556
    python -m stream.subscribe tcp://proxyhost:5557 --topic pred --topic status

Each `stream.run` connects its publisher to the frontend (an XSUB socket); subscribers
connect to the backend (an XPUB socket) and get every host's streams; libzmq's own proxy
(`zmq_proxy_steerable`) passes messages down and subscriptions up. Nothing here reads or
changes a message, so the proxy needs pyzmq alone (the light install). A proxy that stops
and starts again costs the runs nothing: their sends never wait, and ZeroMQ reconnects
both sides by itself; only what was published meanwhile is lost.

CURVE (optional, docs/deploy.md): with `--curve-secret-key` the proxy is the CURVE server
on both sockets. The runs are its clients (`--curve-secret-key NAME.key_secret
--curve-server-key server.key`), so are the subscribers; `--curve-publishers DIR` and
`--curve-clients DIR` name the public keys let in on each side (left out: any client that
knows the proxy's public key).

Bad input (an endpoint, a port in use, a key file) is one `error:` line and exit status 2;
SIGINT and SIGTERM stop it with exit status 0.
"""

from __future__ import annotations

import errno
import signal
import sys
import threading
import time
from pathlib import Path

import zmq

from stream.errors import ArgumentParser, UserError, error_line
from stream.transport.publish import check_endpoint, load_curve_keys, set_heartbeats

DEFAULT_FRONTEND = "tcp://127.0.0.1:5556"
DEFAULT_BACKEND = "tcp://127.0.0.1:5557"

#: Messages the proxy keeps per subscriber (backend) and takes in from all publishers
#: (frontend) before ZeroMQ drops: a slow subscriber loses its own messages, never another's,
#: and never slows a publisher. Ten times a run's own (stream.transport.publish: 100), as
#: the proxy carries many runs.
HWM = 1000

#: The ZAP domains of the two sockets, so that one authenticator tells them apart.
_PUBLISHERS, _SUBSCRIBERS = "publishers", "subscribers"


class _AllowedKeys:
    """ZAP credentials provider: per domain, the set of allowed public keys (z85), or
    None for any key (encryption without a list of clients)."""

    def __init__(self, allowed: dict[str, set[bytes] | None]):
        self.allowed = allowed

    def callback(self, domain: str, key: bytes) -> bool:
        keys = self.allowed.get(domain)
        return keys is None or key in keys


def _client_keys(folder: str | None, flag: str) -> set[bytes] | None:
    if folder is None:
        return None
    import zmq.auth

    if not Path(folder).is_dir():
        raise UserError(f"{flag} {folder!r} is not a folder of client public keys (*.key)")
    return set(zmq.auth.load_certificates(folder))


class Proxy:
    """The two bound sockets and, with CURVE, the authenticator. `run()` relays (in a
    thread of its own) until another thread calls `stop()`."""

    def __init__(
        self,
        frontend: str = DEFAULT_FRONTEND,
        backend: str = DEFAULT_BACKEND,
        *,
        curve_secret_key: str | None = None,
        curve_publishers: str | None = None,
        curve_clients: str | None = None,
        context: zmq.Context | None = None,
    ):
        self.frontend, self.backend = frontend, backend
        self._context = context or zmq.Context()
        self._own_context = context is None
        self._auth = None
        self._sockets: list[zmq.Socket] = []
        self.done = threading.Event()
        try:
            self._open(curve_secret_key, curve_publishers, curve_clients)
        except BaseException:
            self.close()
            raise

    def _open(self, secret_key: str | None, publishers: str | None, clients: str | None) -> None:
        for flag, value in (("--curve-publishers", publishers), ("--curve-clients", clients)):
            if value is not None and secret_key is None:
                raise UserError(f"{flag} needs --curve-secret-key (the proxy's server.key_secret)")
        keys = None
        if secret_key is not None:
            keys = load_curve_keys(secret_key, secret=True)
            allowed = {
                _PUBLISHERS: _client_keys(publishers, "--curve-publishers"),
                _SUBSCRIBERS: _client_keys(clients, "--curve-clients"),
            }
            if any(v is not None for v in allowed.values()):
                from zmq.auth.thread import ThreadAuthenticator

                # With a ZAP handler in the context every CURVE handshake goes through it,
                # so the side without a folder is let in by the provider (None: any key).
                self._auth = ThreadAuthenticator(self._context)
                self._auth.start()
                provider = _AllowedKeys(allowed)
                for domain in allowed:
                    self._auth.configure_curve_callback(domain, credentials_provider=provider)
        self.xsub = self._bind(zmq.XSUB, self.frontend, "--frontend", keys, _PUBLISHERS)
        self.xpub = self._bind(zmq.XPUB, self.backend, "--backend", keys, _SUBSCRIBERS)
        # The steering pair: `stop()` sends TERMINATE on one end, the relay reads the other.
        self._control, self._steer = self._new(zmq.PAIR), self._new(zmq.PAIR)
        self._control.bind(f"inproc://stream.proxy.control.{id(self)}")
        self._steer.connect(f"inproc://stream.proxy.control.{id(self)}")

    def _new(self, kind: int) -> zmq.Socket:
        sock = self._context.socket(kind)
        self._sockets.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        return sock

    def _bind(self, kind, endpoint, flag, keys, domain) -> zmq.Socket:
        sock = self._new(kind)
        sock.setsockopt(zmq.SNDHWM if kind == zmq.XPUB else zmq.RCVHWM, HWM)
        set_heartbeats(sock)
        if keys is not None:
            sock.curve_publickey, sock.curve_secretkey = keys
            sock.curve_server = True
            sock.zap_domain = domain.encode()
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(
                    f"cannot listen on {flag} {endpoint}: the address is in use (another "
                    "stream.proxy or stream.run?); pass a free port"
                ) from None
            raise UserError(f"cannot listen on {flag} {endpoint!r}: {exc.strerror}") from None
        return sock

    def run(self) -> None:
        """Relay until `stop()`. libzmq's proxy: messages from the frontend to the backend,
        subscriptions from the backend to the frontend. `done` is set once it returned."""
        try:
            zmq.proxy_steerable(self.xsub, self.xpub, None, self._control)
        finally:
            self.done.set()

    def stop(self) -> None:
        """Make `run()` return (from another thread)."""
        self._steer.send(b"TERMINATE")

    def close(self) -> None:
        for sock in self._sockets:
            sock.close(0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_context:
            self._context.term()


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m stream.proxy",
        description="Relay the predictions and status of many stream.run processes (each with "
        "--publish connect:tcp://HOST:PORT of the frontend) to the subscribers of one endpoint "
        "(the backend).",
    )
    parser.add_argument(
        "--frontend",
        default=DEFAULT_FRONTEND,
        metavar="ENDPOINT",
        help=f"where the runs connect (their --publish connect:...; default {DEFAULT_FRONTEND})",
    )
    parser.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        metavar="ENDPOINT",
        help=f"where subscribers connect (default {DEFAULT_BACKEND})",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow --frontend and --backend addresses other hosts can reach",
    )
    parser.add_argument(
        "--curve-secret-key",
        metavar="FILE",
        help="encrypt both sides with ZeroMQ CURVE: the proxy's server.key_secret "
        "(python -m stream.keys)",
    )
    parser.add_argument(
        "--curve-publishers",
        metavar="DIR",
        help="with --curve-secret-key: folder of the public keys of the runs allowed to publish",
    )
    parser.add_argument(
        "--curve-clients",
        metavar="DIR",
        help="with --curve-secret-key: folder of the public keys of the subscribers allowed in",
    )
    args = parser.parse_args(argv)
    # A signal raises _Stopped wherever this thread is (a handler that takes no lock: one
    # that set an Event could deadlock on the Event's lock that the interrupted code holds).
    handlers = {sig: signal.signal(sig, _stopped) for sig in _SIGNALS}
    proxy = relay = None
    try:
        check_endpoint(
            args.frontend, flag="--frontend", allow_remote=args.allow_remote, others="publish"
        )
        check_endpoint(args.backend, flag="--backend", allow_remote=args.allow_remote)
        if _port(args.frontend) == _port(args.backend):
            raise UserError(
                f"--frontend {args.frontend} and --backend {args.backend} share port "
                f"{_port(args.frontend)}: give each its own (e.g. 5556 and 5557)"
            )
        # The threads started meanwhile (the authenticator's, the relay) block these signals
        # (libzmq's own threads block all), so they reach this thread and end its wait.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            proxy = Proxy(
                args.frontend,
                args.backend,
                curve_secret_key=args.curve_secret_key,
                curve_publishers=args.curve_publishers,
                curve_clients=args.curve_clients,
            )
            relay = threading.Thread(target=proxy.run, name="proxy", daemon=True)
            relay.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        curve = ""
        if args.curve_secret_key is not None:
            curve = " (CURVE: runs pass the proxy's server.key as --curve-server-key)"
        print(
            f"proxy: publishers connect to {args.frontend}, subscribers to {args.backend}{curve}",
            file=sys.stderr,
            flush=True,
        )
        # Not relay.join(): a signal's exception interrupting Thread.join marks the thread
        # stopped while it runs (CPython's bpo-45274 clean-up). A sleep ends at once on a
        # signal; its length only bounds how late a relay that failed is noticed.
        while not proxy.done.is_set():
            time.sleep(1.0)
        print("error: the proxy stopped relaying (see above)", file=sys.stderr)
        return 1
    except UserError as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    except _Stopped:
        print("proxy: stopped", file=sys.stderr, flush=True)
        return 0
    finally:
        for sig in _SIGNALS:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        if proxy is not None:
            if relay is not None:  # started (signals were blocked until it was)
                if not proxy.done.is_set():
                    proxy.stop()
                proxy.done.wait()  # signals are ignored now: nothing interrupts the wait
            proxy.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class _Stopped(Exception):
    """SIGINT or SIGTERM arrived."""


def _stopped(signum, frame):
    raise _Stopped


def _port(endpoint: str) -> int:
    return int(endpoint.rpartition(":")[2])
