"""`python -m stream.ctl`: add, remove and list the streams of a running stream.run (the
command lives in stream.transport.ctl, so that it runs from the light install)."""

import sys

from stream.transport.ctl import main

if __name__ == "__main__":
    sys.exit(main())
