"""`python -m stream.bench`: the latency benchmark (stream.bench.latency)."""

import sys

from stream.bench.latency import main

sys.exit(main())
