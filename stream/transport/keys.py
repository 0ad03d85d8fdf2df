"""`python -m stream.keys DIR`: make CURVE key pairs for an encrypted, authenticated stream.

Writes DIR/server.key (public) + DIR/server.key_secret, and DIR/clients/NAME.key +
DIR/NAME.key_secret for each client name (default: one client, "subscriber"). Then:

    python -m stream.run ... --publish tcp://0.0.0.0:5555 --allow-remote \\
        --curve-secret-key DIR/server.key_secret --curve-clients DIR/clients
    python -m stream.subscribe tcp://HOST:5555 \\
        --curve-server-key DIR/server.key --curve-client-key DIR/subscriber.key_secret

Give each subscriber its own *.key_secret and the server.key; keep server.key_secret on
the publishing host. Remove a client's public key from DIR/clients to revoke it.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
from pathlib import Path

from stream.errors import ArgumentParser

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# The layout of ZeroMQ certificate files (czmq's zcert, which zmq.auth.load_certificate
# reads), written here rather than with zmq.auth.create_certificates: that one opens the
# secret file with the umask's mode (0644 usually), readable by every user of the host.
_CERTIFICATE = """#   ****  Generated on {now} by python -m stream.keys  ****
#   ZeroMQ CURVE {kind} Certificate
#   {advice}

metadata
curve
    public-key = "{public}"
{secret}"""


def _write_certificate(path: Path, public: bytes, secret: bytes | None) -> None:
    """Create `path` (never overwrite): 0600 with a secret key, else 0644. The mode is
    given to open(2), so the file is never readable by others, not even for a moment."""
    text = _CERTIFICATE.format(
        now=datetime.datetime.now().isoformat(timespec="seconds"),
        kind="**Secret**" if secret else "Public",
        advice="Keep this file private (mode 0600)."
        if secret
        else "Give this file to the other side.",
        public=public.decode("ascii"),
        secret=f'    secret-key = "{secret.decode("ascii")}"\n' if secret else "",
    )
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)


def make_keys(folder: Path, clients: list[str]) -> None:
    """server.key + server.key_secret, NAME.key_secret and clients/NAME.key per client.
    Raises FileExistsError rather than replace a key."""
    import zmq

    folder = Path(folder)
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    (folder / "clients").mkdir(mode=0o755, exist_ok=True)
    for name, public_dir in [("server", folder)] + [(c, folder / "clients") for c in clients]:
        public, secret = zmq.curve_keypair()
        _write_certificate(folder / f"{name}.key_secret", public, secret)
        _write_certificate(public_dir / f"{name}.key", public, None)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m stream.keys", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="where to write the keys")
    p.add_argument(
        "--client",
        action="append",
        default=None,
        help="client name (repeatable; default: subscriber)",
    )
    args = p.parse_args(argv)
    folder = Path(args.folder)
    clients = args.client or ["subscriber"]
    for name in clients:
        if not _NAME.match(name) or name == "server":
            print(
                f"error: client name {name!r} must be 1-64 letters, digits, '_' or '-', "
                "and not 'server'",
                file=sys.stderr,
            )
            return 2
    if len(set(clients)) != len(clients):
        print("error: --client names a client twice", file=sys.stderr)
        return 2
    targets = [folder / "server.key_secret", folder / "server.key"]
    targets += [
        p for c in clients for p in (folder / f"{c}.key_secret", folder / "clients" / f"{c}.key")
    ]
    existing = [t for t in targets if t.exists()]
    if existing:  # checked first, so that a refusal leaves no half-made set behind
        print(f"error: {existing[0]} exists: choose an empty folder", file=sys.stderr)
        return 2
    try:
        make_keys(folder, clients)
    except FileExistsError as exc:
        print(f"error: {exc.filename} exists: choose an empty folder", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write keys to {folder}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"keys written to {folder} (secret keys readable by you alone)")
    return 0
