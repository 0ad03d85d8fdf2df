"""`python -m stream.proxy`: one endpoint for many hosts' predictions (the command lives in
stream.transport.proxy: it needs pyzmq alone)."""

import sys

from stream.transport.proxy import main

if __name__ == "__main__":
    sys.exit(main())
