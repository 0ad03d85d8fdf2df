"""Which streams' windows run together through the engine, and when: the batching policy
of the inference process, pure (times are arguments), so that it is tested without
processes or clocks (tests/test_batching.py).

Each stream has its own scheduler ticking every stride on its own grid
(stream/pipeline/window.py, `Scheduler`); a stream whose tick has come is *due*. Given the
streams' next ticks and the time now, `plan` answers either "run these streams' windows
now, as one engine call" or "nothing to run: look again at this time":

1. Nothing is due: look again at the earliest tick.
2. `max_batch` or more are due: run the `max_batch` that have waited longest now.
3. Otherwise the due windows may wait for more to fall due, but only until the earliest
   of their holds ends: a due window is held at most `batch_wait` past its own tick, and
   never up to its own next tick (`min(batch_wait, stride)`). When another stream's tick
   comes before that, look again at that tick; when none does, run what is due now.

"Waited longest" is the longest since the stream's last window ran, in the order the
windows ran: the loop stamps each stream whose window ran with a counter (`ran`, 0 for
never), in the order of its batch, and the smallest stamp goes first (then the earliest
tick, then the id). The due streams are served round robin: a stream left out of a full
batch keeps its stamp while every stream that ran gets a newer one, so no stream waits
more than ceil(streams / max_batch) engine calls for its turn, and streams with the same
stride get equal shares, whatever the phases of their grids. A window held so long that
its stream's next tick has passed as well (the engine was busy with other batches) runs
once, with the newest data; the ticks that passed are that stream's skipped windows
(`Scheduler.advance` counts them once the window has run).

A window is never held for batching's sake past the earliest held window's `batch_wait`:
a window overdue for longer than that (the engine was busy) is never held at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A stream the inference serves, as the policy sees it."""

    stream: str
    due_ns: int  # its next tick (time.monotonic_ns)
    stride_ns: int
    ran: int = 0  # the stamp of its last window run (0: never): the smallest waited longest


@dataclasses.dataclass(frozen=True)
class Plan:
    """`run`: the streams whose windows run now, in one engine call, longest-waiting
    first; empty: nothing runs now, look again at `wake_ns` (None: no stream at all)."""

    run: tuple[str, ...]
    wake_ns: int | None = None


def _waited(c: Candidate) -> tuple[int, int, str]:
    return c.ran, c.due_ns, c.stream


def plan(
    candidates: Iterable[Candidate], now_ns: int, *, max_batch: int, batch_wait_ns: int
) -> Plan:
    """The policy of the module docstring."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if batch_wait_ns < 0:
        raise ValueError(f"batch_wait must be >= 0, got {batch_wait_ns} ns")
    due, later = [], []
    for c in candidates:
        (due if c.due_ns <= now_ns else later).append(c)
    if not due:
        return Plan((), min((c.due_ns for c in later), default=None))
    due.sort(key=_waited)
    if len(due) >= max_batch:
        return Plan(tuple(c.stream for c in due[:max_batch]))
    hold_until = min(c.due_ns + min(batch_wait_ns, c.stride_ns - 1) for c in due)
    coming = [c.due_ns for c in later if c.due_ns <= hold_until]
    if coming and now_ns < hold_until:
        return Plan((), min(coming))
    return Plan(tuple(c.stream for c in due))
