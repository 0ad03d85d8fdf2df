"""`python -m stream.record`: record labelled clips (the command lives in stream.train.record)."""

import sys

from stream.train.record import main

if __name__ == "__main__":
    sys.exit(main())
