"""A subscriber on an encrypted, authenticated stream (ZeroMQ CURVE).

    python -m stream.keys keys                # server.key(_secret), subscriber.key_secret, clients/
    python -m stream.run --camera synthetic --weights none \
        --curve-secret-key keys/server.key_secret --curve-clients keys/clients
    python examples/secure_subscriber.py keys

On another host, this client needs keys/server.key and keys/subscriber.key_secret only
(keep that one private: mode 0600). Needs only the base package
(`pip install PATH/TO/avstream`: pyzmq).
"""

import argparse
import sys
from pathlib import Path

from stream.transport import DEFAULT_ENDPOINT, Subscriber, UserError, format_message


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("keys", type=Path, help="the folder python -m stream.keys wrote")
    p.add_argument("endpoint", nargs="?", default=DEFAULT_ENDPOINT)
    p.add_argument("--name", default="subscriber", help="this client's name in the keys folder")
    p.add_argument("--count", type=int, default=0, help="stop after N predictions (default: never)")
    args = p.parse_args()
    try:
        with Subscriber(
            args.endpoint,
            curve_server_key=str(args.keys / "server.key"),  # the publisher's public key
            curve_client_key=str(args.keys / f"{args.name}.key_secret"),  # ours, both halves
        ) as sub:
            for seen, msg in enumerate(sub, 1):
                print(format_message(msg), flush=True)
                if seen == args.count:
                    return 0
    except UserError as exc:  # a key file missing or unsafe, or the publisher refused us
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
