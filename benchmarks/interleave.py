"""The timing loop the side-by-side benchmarks share: each round runs every variant once,
in turn, so a busy machine slows them alike."""

from __future__ import annotations

import time
from collections.abc import Callable


def interleaved(
    variants: dict[str, Callable[[], object]], rounds: int, warmup: int = 3, calls: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each variant, one figure per round: after `warmup` untimed
    rounds, `rounds` rounds in which each variant is called `calls` times in a row."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - t0) / calls)
    return times
