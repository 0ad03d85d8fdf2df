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

import argparse
import shutil
import sys
from pathlib import Path


def make_keys(folder: Path, clients: list[str]) -> None:
    import zmq.auth

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "clients").mkdir(exist_ok=True)
    zmq.auth.create_certificates(folder, "server")
    for name in clients:
        public, _ = zmq.auth.create_certificates(folder, name)
        shutil.move(public, folder / "clients" / Path(public).name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stream.keys", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="where to write the keys")
    p.add_argument("--client", action="append", default=None, help="client name (repeatable; default: subscriber)")
    args = p.parse_args(argv)
    folder = Path(args.folder)
    if (folder / "server.key_secret").exists():
        print(f"error: {folder / 'server.key_secret'} exists: choose an empty folder", file=sys.stderr)
        return 2
    make_keys(folder, args.client or ["subscriber"])
    print(f"keys written to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
