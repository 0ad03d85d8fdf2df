"""`python -m stream.web`: the browser view of a run, here or on another host.

    python -m stream.web --connect tcp://camerahost:5555          # open http://127.0.0.1:8080
    python -m stream.web --make-token web.token                   # a new token file (0600)
    python -m stream.web --connect tcp://camerahost:5555 --listen 0.0.0.0:8080 \\
        --allow-remote --token-file web.token

Predictions, events and status come over ZeroMQ; the video only from a run's own --web
(frames never cross the network). Bad input is one `error:` line and exit status 2;
SIGINT and SIGTERM stop it cleanly with exit status 0.
"""

from __future__ import annotations

import logging
import sys

from stream.errors import ArgumentParser, UserError, error_line
from stream.transport.subscribe import DEFAULT_ENDPOINT
from stream.web.auth import DEFAULT_FPS, DEFAULT_WIDTH, make_token

DEFAULT_LISTEN = "127.0.0.1:8080"


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m stream.web",
        description="Serve a page that shows a run's streams (labels, events, latency, "
        "status) in the browser, from the run's ZeroMQ endpoint.",
    )
    p.add_argument(
        "--connect",
        action="append",
        metavar="ENDPOINT",
        help=f"the run's ZeroMQ endpoint, e.g. {DEFAULT_ENDPOINT} (repeatable: one page for "
        "several runs, or a stream.proxy's backend)",
    )
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where the page is served (default {DEFAULT_LISTEN}: this host only; port 0: "
        "any free port)",
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --listen address other hosts can reach (needs --token-file)",
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="a file holding the token every visitor must give (make one with --make-token)",
    )
    p.add_argument(
        "--make-token",
        metavar="FILE",
        help="write a new random token to FILE (a new file, mode 0600) and exit",
    )
    p.add_argument("--curve-server-key", help="CURVE: the publisher's public key file (server.key)")
    p.add_argument(
        "--curve-client-key",
        help="CURVE: this client's secret key file (NAME.key_secret, python -m stream.keys)",
    )
    p.add_argument(
        "--fps",
        type=float,
        default=DEFAULT_FPS,
        help=f"video frames per second per stream, at most (default {DEFAULT_FPS:g})",
    )
    p.add_argument(
        "--width",
        type=int,
        default=DEFAULT_WIDTH,
        help=f"video frames at most this wide, in pixels (default {DEFAULT_WIDTH})",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def _options(args):
    from stream.web.server import WebOptions, check_listen, read_token

    if args.make_token is not None:
        raise UserError("--make-token writes a token file and exits: pass it alone")
    if not args.connect:
        raise UserError(
            f"pass the run's endpoint with --connect (e.g. --connect {DEFAULT_ENDPOINT})"
        )
    for endpoint in args.connect:
        if not endpoint.startswith(("tcp://", "ipc://")):
            raise UserError(
                f"--connect {endpoint!r} is not a ZeroMQ endpoint such as {DEFAULT_ENDPOINT}"
            )
    if (args.curve_server_key is None) != (args.curve_client_key is None):
        raise UserError("CURVE needs both --curve-server-key and --curve-client-key")
    if args.allow_remote and args.token_file is None:
        raise UserError(
            "--allow-remote needs --token-file FILE, the token every visitor must give "
            "(python -m stream.web --make-token FILE makes one)"
        )
    token = read_token(args.token_file) if args.token_file is not None else None
    check_listen(args.listen, allow_remote=args.allow_remote, token=token)
    return WebOptions(
        listen=args.listen,
        connect=list(args.connect),
        token=token,
        allow_remote=args.allow_remote,
        curve_secret_key=args.curve_client_key,
        curve_server_key=args.curve_server_key,
        fps=args.fps,
        width=args.width,
        source="connect",
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.make_token is not None and not args.connect:
            make_token(args.make_token)
            print(
                f"wrote a new token to {args.make_token} (readable by you alone): pass "
                f"--token-file {args.make_token}",
                file=sys.stderr,
            )
            return 0
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            raise UserError(
                "python -m stream.web needs aiohttp: pip install 'avstream[web]'"
            ) from None
        opts = _options(args)
        logging.basicConfig(
            level=getattr(logging, args.log_level.upper()),
            format="%(asctime)s web %(levelname)s: %(message)s",
            datefmt="%H:%M:%S",
            stream=sys.stderr,
        )
        from stream.web.server import serve

        serve(opts)
    except UserError as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the server's own handlers were in place
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
