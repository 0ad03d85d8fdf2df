"""Events: one stream's scores turned into start, update and end messages, with hysteresis.

The inference process keeps one `EventTracker` per stream and gives it each window's
probabilities right after the window's prediction is published (`observe`); what it
returns goes out on `event.<stream-id>` at once. `close(reason)` ends every active event
when the stream goes or the run stops, so every start has its end.

Per rule (stream/rules.py), with the score the summed probability of its labels (smoothed
as published, or raw) and time the windows' capture time:
  start   the score is above `on` in every window for `min_on` seconds (from the first
          of them to the latest), and `cooldown` seconds have passed since the rule's
          last end (a window inside the cooldown does not count). A degraded window
          (a video or audio gap) does not count as above `on`: it never starts an event,
          and the run above `on` starts again after it. `start_ns` is the run's first
          window.
  update  every `update_every` seconds of an active event (0: never).
  end     the score is below `off` in every window for `hold` seconds (from the first
          of them to the latest): `reason` "below threshold", `end_ns` the capture time
          of the last window at or above `off`. Or `close(reason)`.
`peak` and `mean` are over the windows an event covers (`seq_first` to `seq_last`: its
first window above `on` to its last at or above `off`); `degraded` says whether one of
them was degraded.

Pure: no I/O, no clock but the one given (for the messages' `wall_ns`); tested on made-up
score sequences in tests/test_events.py. docs/events.md is the user's side of this.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

from stream.rules import Rule
from stream.transport import wire


@dataclasses.dataclass
class _Windows:
    """A span of windows and their scores."""

    start_ns: int
    start_wall_ns: int
    seq_first: int
    seq_last: int
    peak: float
    total: float
    count: int = 1

    def add(self, seq: int, score: float) -> None:
        self.seq_last = seq
        self.peak = max(self.peak, score)
        self.total += score
        self.count += 1


@dataclasses.dataclass
class _Event:
    """An active event: the windows it covers (through the last at or above `off`), and
    the ones below `off` since."""

    id: str
    covered: _Windows
    end_ns: int  # capture time of its last window at or above off
    end_wall_ns: int
    degraded: bool
    updated_ns: int  # capture time of the window of its start or last update
    below_since_ns: int | None = None  # the first window below off since, if any
    below_total: float = 0.0
    below_count: int = 0
    below_degraded: bool = False


@dataclasses.dataclass
class _RuleState:
    rule: Rule
    indices: list[int]
    min_on_ns: int  # the rule's durations in ns
    hold_ns: int
    cooldown_ns: int
    update_ns: int
    run: _Windows | None = None  # windows above on, not started yet
    event: _Event | None = None
    ended_ns: int | None = None  # capture time of the window that ended its last event


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


class EventTracker:
    """The events of one stream under `rules`. `indices[i]`: the model's label indices of
    `rules[i]` (stream.rules.label_indices). `numbers`: events started so far per rule
    name, kept by the caller across the stream's lives (a stream removed and added again
    keeps numbering, so that ids stay unique within the run). `clock`: Unix time in ns."""

    def __init__(
        self,
        stream: str,
        rules: Sequence[Rule],
        indices: Sequence[Sequence[int]],
        *,
        numbers: dict[str, int] | None = None,
        clock: Callable[[], int] = time.time_ns,
    ):
        self.stream = stream
        self.numbers = {} if numbers is None else numbers
        self.clock = clock
        self.seq = 0  # event messages made
        self.last_ns: int | None = None  # capture time of the latest window
        self._rules = [
            _RuleState(
                rule,
                list(idx),
                min_on_ns=_ns(rule.min_on),
                hold_ns=_ns(rule.hold),
                cooldown_ns=_ns(rule.cooldown),
                update_ns=_ns(rule.update_every),
            )
            for rule, idx in zip(rules, indices, strict=True)
        ]
        #: The active events, for the stream's status (wire.active_event entries): a new
        #: list after each call, so that another thread may read it at any time.
        self.active: list[dict] = []

    def observe(
        self,
        *,
        seq: int,
        capture_ns: int,
        wall_ns: int,
        smoothed: Sequence[float],
        raw: Sequence[float],
        degraded: bool,
    ) -> list[dict]:
        """One window: its prediction's `seq`, its capture time (`capture_ns`, the
        monotonic clock; `wall_ns`, the same instant in Unix time), the stream's
        probabilities as published (`smoothed`) and the window's own (`raw`), and whether
        it was degraded. Returns the event messages it causes (wire.event bodies)."""
        self.last_ns = capture_ns
        out: list[dict] = []
        for st in self._rules:
            probs = raw if st.rule.raw else smoothed
            score = float(sum(probs[i] for i in st.indices))
            if st.event is not None:
                out.extend(self._active(st, seq, capture_ns, wall_ns, score, degraded))
            else:
                out.extend(self._idle(st, seq, capture_ns, wall_ns, score, degraded))
        self._snapshot()
        return out

    def _idle(
        self, st: _RuleState, seq: int, t: int, wall: int, score: float, degraded: bool
    ) -> list[dict]:
        cooling = st.ended_ns is not None and t - st.ended_ns < st.cooldown_ns
        if degraded or cooling or not score > st.rule.on:
            st.run = None
            return []
        if st.run is None:
            st.run = _Windows(t, wall, seq, seq, score, score)
        else:
            st.run.add(seq, score)
        if t - st.run.start_ns < st.min_on_ns:
            return []
        number = self.numbers.get(st.rule.name, 0) + 1
        self.numbers[st.rule.name] = number
        st.event = _Event(
            id=f"{self.stream}-{st.rule.name}-{number}",
            covered=st.run,
            end_ns=t,
            end_wall_ns=wall,
            degraded=False,  # no window of the run was degraded
            updated_ns=t,
        )
        st.run = None
        return [self._message(st, "start")]

    def _active(
        self, st: _RuleState, seq: int, t: int, wall: int, score: float, degraded: bool
    ) -> list[dict]:
        ev = st.event
        if score >= st.rule.off:
            # the windows below off since its last one above are covered after all
            ev.covered.total += ev.below_total
            ev.covered.count += ev.below_count
            ev.covered.add(seq, score)
            ev.degraded = ev.degraded or ev.below_degraded or degraded
            ev.end_ns, ev.end_wall_ns = t, wall
            ev.below_since_ns, ev.below_total, ev.below_count = None, 0.0, 0
            ev.below_degraded = False
        else:
            if ev.below_since_ns is None:
                ev.below_since_ns = t
            ev.below_total += score
            ev.below_count += 1
            ev.below_degraded = ev.below_degraded or degraded
            if t - ev.below_since_ns >= st.hold_ns:
                st.ended_ns = t
                return [self._end(st, "below threshold")]
        if st.update_ns > 0 and t - ev.updated_ns >= st.update_ns:
            ev.updated_ns = t
            return [self._message(st, "update")]
        return []

    def close(self, reason: str) -> list[dict]:
        """End every active event with `reason` (wire.END_REASONS: the stream stopped,
        failed, ended or was removed, or the run stopped); a run above `on` that has not
        started is forgotten. The tracker may go on observing afterwards (a camera back
        after a failure): the rules' cooldowns count from the latest window seen."""
        out = []
        for st in self._rules:
            st.run = None
            if st.event is not None:
                st.ended_ns = self.last_ns
                out.append(self._end(st, reason))
        self._snapshot()
        return out

    def _end(self, st: _RuleState, reason: str) -> dict:
        body = self._message(st, "end", reason)
        st.event = None
        return body

    def _message(self, st: _RuleState, kind: str, reason: str | None = None) -> dict:
        ev = st.event
        w = ev.covered
        ended = kind == "end"
        body = wire.event(
            seq=self.seq,
            id=ev.id,
            stream=self.stream,
            name=st.rule.name,
            labels=list(st.rule.labels),
            type=kind,
            start_ns=w.start_ns,
            end_ns=ev.end_ns if ended else None,
            start_wall_ns=w.start_wall_ns,
            end_wall_ns=ev.end_wall_ns if ended else None,
            peak=w.peak,
            mean=w.total / w.count,
            seq_first=w.seq_first,
            seq_last=w.seq_last,
            degraded=ev.degraded,
            reason=reason,
            wall_ns=self.clock(),
        )
        self.seq += 1
        return body

    def _snapshot(self) -> None:
        self.active = [
            wire.active_event(
                name=st.rule.name,
                id=st.event.id,
                start_ns=st.event.covered.start_ns,
                peak=st.event.covered.peak,
            )
            for st in self._rules
            if st.event is not None
        ]
