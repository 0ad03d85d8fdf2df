"""The latency benchmark, `python -m stream.bench` (stream.bench.latency)."""
