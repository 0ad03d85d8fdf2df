"""`python -m stream.keys`: make CURVE keys (the command lives in stream.transport.keys)."""

import sys

from stream.transport.keys import main

if __name__ == "__main__":
    sys.exit(main())
