"""The view's options checked before it starts: who may see it (the listen address,
loopback unless asked, and the token) and how much video it sends (fps and width, the
same bounds for `python -m stream.web` and `stream.run --web`).

A view on a loopback address is open to the users of its host, like the run's own
ZeroMQ endpoint. Anywhere else it needs `--allow-remote` and a token file; the token is
then asked of every request (but /healthz), as `Authorization: Bearer TOKEN`, the cookie
`avstream_token`, or `?token=TOKEN`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import socket

from stream.errors import UserError

#: Video frames per second per stream, at most: the default and the bound.
DEFAULT_FPS = 10.0
MAX_FPS = 60
#: Video frames at most this wide: the default and the bounds (pixels).
DEFAULT_WIDTH = 640
WIDTHS = (16, 4096)

#: The cookie a page visit with ?token= sets (HttpOnly, SameSite=Strict).
TOKEN_COOKIE = "avstream_token"
#: Shorter tokens can be guessed: token_urlsafe(32) gives 43 characters.
MIN_TOKEN_CHARS = 16

#: What a cookie value holds without quoting (RFC 6265's cookie-octet): the token is one.
_COOKIE_SAFE = re.compile(r"[!#-+\--:<-\[\]-~]+")
_LISTEN = re.compile(r"(\[[^\]]+\]|[^:\[\]]+):(\d{1,5})")


def _loopback(host: str) -> bool:
    """Whether every address `host` (an IP or a name) stands for is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UserError(f"--listen host {host!r} cannot be resolved ({exc}): pass an IP") from None
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_listen(
    listen: str,
    *,
    allow_remote: bool,
    token: str | None,
    flag: str = "--listen",
    remote_flag: str = "--allow-remote",
    token_flag: str = "--token-file",
) -> tuple[str, int]:
    """(host, port) of a `HOST:PORT` to listen on (`[::1]:8080` for IPv6; port 0: any free
    one). UserError naming `flag` for one that is malformed, or that other hosts can reach
    without `allow_remote` and a token (the other flags' names are for the message)."""
    m = _LISTEN.fullmatch(listen)
    if not m or int(m[2]) > 65535:
        raise UserError(f"{flag} {listen!r} is not HOST:PORT like 127.0.0.1:8080")
    host, port = m[1].strip("[]"), int(m[2])
    if not _loopback(host):
        if not allow_remote:
            raise UserError(
                f"{flag} {listen} can be reached from other hosts: listen on 127.0.0.1, or "
                f"pass {remote_flag} with {token_flag} FILE (python -m stream.web "
                "--make-token FILE makes one)"
            )
        if token is None:
            raise UserError(
                f"{flag} {listen} with {remote_flag} needs {token_flag} FILE, the token every "
                "visitor must give (python -m stream.web --make-token FILE makes one)"
            )
    return host, port


def check_video(
    fps: float, width: int, *, fps_flag: str = "--fps", width_flag: str = "--width"
) -> None:
    """UserError, naming the flag, for a frame rate or width out of bounds."""
    if not 0 < fps <= MAX_FPS:
        raise UserError(
            f"{fps_flag} {fps:g} must be above 0 and at most {MAX_FPS} (frames per second)"
        )
    if not WIDTHS[0] <= width <= WIDTHS[1]:
        raise UserError(f"{width_flag} {width} must be {WIDTHS[0]} to {WIDTHS[1]} pixels")


def read_token(path: str, *, flag: str = "--token-file") -> str:
    """The token in the file `path` (surrounding white space dropped); UserError for a
    file that is missing, unreadable, empty or holds fewer than MIN_TOKEN_CHARS."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except FileNotFoundError:
        raise UserError(
            f"{flag} {path!r} does not exist: make one with python -m stream.web --make-token FILE"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{flag} {path!r} cannot be read: {exc}") from None
    if not token:
        raise UserError(
            f"{flag} {path!r} is empty: make a token with python -m stream.web --make-token FILE"
        )
    if len(token) < MIN_TOKEN_CHARS or not _COOKIE_SAFE.fullmatch(token):
        raise UserError(
            f"{flag} {path!r} does not hold a token of at least {MIN_TOKEN_CHARS} ASCII "
            "letters, digits or punctuation (no spaces, quotes, commas, semicolons or "
            "backslashes): python -m stream.web --make-token FILE makes one"
        )
    return token


def make_token(path: str) -> None:
    """Write a new random token to `path`, a new file readable by its owner alone;
    UserError if it exists (a token in use is never overwritten) or cannot be made."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UserError(
            f"--make-token {path!r} exists already: it is left as it is (remove it, or pass "
            "another file name)"
        ) from None
    except OSError as exc:
        raise UserError(f"--make-token {path!r} cannot be made: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_urlsafe(32) + "\n")


def token_matches(given: str | None, token: str) -> bool:
    """Whether `given` is `token`, in constant time whatever their lengths (the digests are
    compared, so not even the length leaks)."""
    if given is None:
        return False
    a = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(a, hashlib.sha256(token.encode("utf-8")).digest())
