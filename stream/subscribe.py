"""`python -m stream.subscribe`: print predictions (the command lives in
stream.transport.subscribe). `from stream.subscribe import Subscriber` keeps working."""

import sys

from stream.transport.subscribe import HandshakeError, Subscriber, main

__all__ = ["HandshakeError", "Subscriber", "main"]

if __name__ == "__main__":
    sys.exit(main())
