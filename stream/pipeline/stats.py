"""Percentile summaries of times, in the one form every report uses.

The status heartbeat (capture intervals, ring write times), `python -m stream.bench`
(every latency and stage of its rows) and the scripts in benchmarks/ summarise a
series of times as `p50 / p90 / p99 / max` in milliseconds; a tail (p99, max) is what
a real-time pipeline is judged by, so a mean alone is never reported.
"""

from __future__ import annotations

import numpy as np

#: The keys of a summary, in the order reports print them.
STATS = ("p50", "p90", "p99", "max")


def summary_ms(values_ms) -> dict[str, float | None]:
    """`{"p50", "p90", "p99", "max"}` of `values_ms` (milliseconds), rounded to the
    microsecond; every value None when there are no values."""
    v = np.asarray(values_ms, dtype=np.float64)
    if v.size == 0:
        return dict.fromkeys(STATS)
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {
        "p50": round(float(p50), 3),
        "p90": round(float(p90), 3),
        "p99": round(float(p99), 3),
        "max": round(float(v.max()), 3),
    }
