"""Sliding windows: which captured frames make a window, and when windows run.

The sampler works on capture timestamps, not frame counts: for each target time across
a pathway's span it takes the captured frame nearest to it, so a camera at 24 or 60 fps,
or one that drops frames, still gives the model the temporal span it was trained on.
The window ends at the newest captured frame (its timestamp is `capture_ns` on the
wire), so a prediction's age is measured from the freshest sample it saw.

The inference reads a window's frames in place (`WindowSampler.sample_in_place`): the
preprocessing reads the pixels it needs straight from the ring's slots, and the window
counts only when none of them was overwritten meanwhile (`FrameRing.check` before and
after, the same sequence check as a copy). Copying four 640×480 frames out first cost
about 0.6 ms of a window's few milliseconds.

The scheduler runs a window every `stride` seconds on a fixed grid. When a window
takes longer than the stride, the ticks that passed are counted as skipped and the next
window takes the newest data: latency never builds up.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from stream.errors import FrameLost
from stream.pipeline.ring import AudioRing, FrameRing, Frames

R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class PathwaySpec:
    """Frames per window and the interval between them, for one video pathway."""

    frames: int
    interval_s: float

    @property
    def span_ns(self) -> int:
        return round((self.frames - 1) * self.interval_s * 1e9)


def target_times(end_ns: int, spec: PathwaySpec) -> np.ndarray:
    """Target timestamps of one pathway's frames, oldest first, the last at `end_ns`."""
    steps = np.arange(spec.frames - 1, -1, -1, dtype=np.float64)  # frames-1 ... 0
    return end_ns - np.round(steps * spec.interval_s * 1e9).astype(np.int64)


def nearest(times_ns: np.ndarray, targets_ns: np.ndarray) -> np.ndarray:
    """Index into sorted `times_ns` of the element nearest to each target (ties: earlier)."""
    if len(times_ns) == 0:
        raise ValueError("no timestamps to choose from")
    right = np.searchsorted(times_ns, targets_ns, side="left").clip(1, len(times_ns) - 1)
    left = right - 1
    if len(times_ns) == 1:
        return np.zeros(len(targets_ns), dtype=np.int64)
    pick_right = np.abs(times_ns[right] - targets_ns) < np.abs(targets_ns - times_ns[left])
    return np.where(pick_right, right, left)


@dataclasses.dataclass
class Window:
    """One window: per pathway its frames (copies, or where they lie in the ring), plus its timing."""

    clips: list[np.ndarray] | None  # per pathway (T, H, W, C) uint8 copies; None when read in place
    seqs: list[np.ndarray]  # ring sequence numbers per pathway
    start_ns: int  # capture time of the oldest frame used
    end_ns: int  # capture time of the newest frame used (= capture_ns on the wire)
    newest_seq: int
    frames: int  # distinct frames read from the ring
    read_ns: int  # time spent in the ring: copying the frames out, or checking them in place
    max_gap_ns: int  # the largest distance of a chosen frame from its target time
    in_ring: list[Frames] | None = None  # per pathway, the frames in place (`sample_in_place`)
    ring: FrameRing | None = None

    def newest_frame(self) -> np.ndarray | None:
        """A copy of the newest frame of the first pathway (None: overwritten meanwhile)."""
        if self.clips is not None:
            return self.clips[0][-1]
        try:
            return self.ring.read(int(self.seqs[0][-1]))[0]
        except FrameLost:
            return None


class WindowSampler:
    """Cuts windows out of a FrameRing by timestamp.

    `sample()` copies the frames out of the ring, into buffers allocated once, each
    distinct frame once even when pathways share frames (SlowFast's slow frames are a
    subset of its fast ones). `sample_in_place(use)` copies nothing: `use` reads the
    frames where they lie, and the window counts only if none was overwritten meanwhile.
    """

    def __init__(self, ring: FrameRing, pathways: Sequence[PathwaySpec], *, tolerance_s: float = 0.05):
        if not pathways:
            raise ValueError("a window needs at least one pathway")
        self.ring = ring
        self.pathways = tuple(pathways)
        self.span_ns = max(p.span_ns for p in self.pathways)
        # How far before the oldest frame held the earliest target may lie and still
        # count as covered (at start-up, history must cover the whole span).
        self.tolerance_ns = round(tolerance_s * 1e9)
        self._clips: list[np.ndarray] | None = None  # allocated on the first copying sample()

    def sample(self, *, retries: int = 3) -> Window | None:
        """The window ending at the newest frame, copied out of the ring, or None while
        history is too short."""
        if self._clips is None:
            self._clips = [np.empty((p.frames, *self.ring.shape), dtype=np.uint8) for p in self.pathways]
        for _ in range(retries):
            chosen = self._choose()
            if chosen is None:
                return None
            try:
                return self._read(*chosen)
            except FrameLost:
                continue  # the writer lapped a slot we chose; choose again from newer data
        raise FrameLost(f"could not read a consistent window in {retries} attempts")

    def sample_in_place(self, use: Callable[[Window], R], *, retries: int = 3) -> tuple[Window, R] | None:
        """(window, use(window)) for the window ending at the newest frame, or None while
        history is too short.

        `use` reads the frames in place (`window.in_ring`); afterwards they are checked as
        `FrameRing.read` checks a copy, and when the writer reached one of them meanwhile,
        its result is dropped and `use` runs again on a newer window.
        """
        for _ in range(retries):
            chosen = self._choose()
            if chosen is None:
                return None
            picks, times, newest_seq, max_gap_ns = chosen
            started = time.perf_counter_ns()
            distinct = np.unique(np.concatenate(picks))
            try:
                self.ring.check(distinct)  # the chosen frames and their times are (still) consistent
            except FrameLost:
                continue
            window = Window(
                clips=None, seqs=picks,
                start_ns=min(int(t.min()) for t in times), end_ns=max(int(t.max()) for t in times),
                newest_seq=newest_seq, frames=len(distinct), read_ns=time.perf_counter_ns() - started,
                max_gap_ns=max_gap_ns, in_ring=[self.ring.frames(p) for p in picks], ring=self.ring,
            )
            result = use(window)
            try:
                self.ring.check(distinct)
            except FrameLost:
                continue  # overwritten while `use` read it: a newer window
            return window, result
        raise FrameLost(f"could not read a consistent window in {retries} attempts")

    def _choose(self) -> tuple[list[np.ndarray], list[np.ndarray], int, int] | None:
        """(seqs per pathway, their capture times, newest seq, largest gap to a target), or
        None while history is too short. From an unlocked snapshot: check before trusting it."""
        seqs, times = self.ring.snapshot()
        if len(seqs) == 0:
            return None
        end_ns = int(times[-1])
        start_ns = end_ns - self.span_ns - self.tolerance_ns
        if start_ns + 2 * self.tolerance_ns < int(times[0]):
            return None  # not enough history yet for the whole span
        # Never a frame from before the window (after an outage the nearest frame to
        # an early target may be older): choose among the window's own frames only.
        inside = times >= start_ns
        seqs, times = seqs[inside], times[inside]
        targets = [target_times(end_ns, p) for p in self.pathways]
        chosen = [nearest(times, t) for t in targets]
        max_gap = max(int(np.abs(times[c] - t).max()) for c, t in zip(chosen, targets))
        return [seqs[c] for c in chosen], [times[c] for c in chosen], int(seqs[-1]), max_gap

    def _read(self, picks: list[np.ndarray], _times, newest_seq: int, max_gap_ns: int) -> Window:
        started = time.perf_counter_ns()
        read_t: dict[int, int] = {}
        first_copy: dict[int, tuple[int, int]] = {}
        for p, (seq_list, clip) in enumerate(zip(picks, self._clips)):
            for i, seq in enumerate(seq_list.tolist()):
                if seq in first_copy:  # already read for this window: copy within our buffers
                    q, j = first_copy[seq]
                    clip[i] = self._clips[q][j]
                    continue
                _, read_t[seq] = self.ring.read(seq, out=clip[i])
                first_copy[seq] = (p, i)
        return Window(
            clips=self._clips,
            seqs=picks,
            start_ns=min(read_t.values()),
            end_ns=max(read_t.values()),
            newest_seq=newest_seq,
            frames=len(read_t),
            read_ns=time.perf_counter_ns() - started,
            max_gap_ns=max_gap_ns,
        )


@dataclasses.dataclass
class AudioWindow:
    samples: np.ndarray  # (n,) float32, zeros where audio was missing
    start_ns: int
    end_ns: int
    missing: int  # samples that were not in the ring (zero-filled)


class AudioSampler:
    """Cuts the audio window centred on a video window's centre out of an AudioRing."""

    def __init__(self, ring: AudioRing, samples: int):
        self.ring = ring
        self.samples = samples
        self._out = np.zeros(samples, dtype=np.float32)
        self._half_ns = round(samples / 2 * 1e9 / ring.sample_rate)

    def span(self, centre_ns: int) -> tuple[int, int]:
        """Sample indices [first, end) of the window centred on `centre_ns`."""
        first = self.ring.index_at(centre_ns - self._half_ns)
        return first, first + self.samples

    def arrived(self, centre_ns: int) -> bool:
        """Has the ring received the window's last sample?"""
        return self.ring.clock()[0] >= self.span(centre_ns)[1]

    def sample(self, centre_ns: int) -> AudioWindow:
        """The window, zero-filled where the ring lacks samples (too old, or not yet)."""
        clock = self.ring.clock()
        count = clock[0]
        first = self.ring.index_at(centre_ns - self._half_ns, clock)
        end = first + self.samples
        lo, hi = max(first, self.ring.oldest_safe(count)), min(end, count)
        self._out.fill(0.0)
        got = 0
        if hi > lo:
            try:
                self.ring.read(lo, self._out[lo - first : hi - first])
                got = hi - lo
            except FrameLost:
                self._out.fill(0.0)
        return AudioWindow(
            samples=self._out,
            start_ns=self.ring.time_of(first, clock),
            end_ns=self.ring.time_of(end, clock),
            missing=self.samples - got,
        )


class Scheduler:
    """Ticks every `stride_s` on a fixed grid; counts the ticks a slow window skipped."""

    def __init__(self, stride_s: float, *, start_ns: int | None = None):
        if not stride_s > 0:
            raise ValueError(f"stride must be > 0 seconds, got {stride_s}")
        self.stride_ns = round(stride_s * 1e9)
        self.next_tick_ns = time.monotonic_ns() if start_ns is None else start_ns
        self.skipped = 0

    def due_in_s(self, now_ns: int | None = None) -> float:
        """Seconds until the next tick (≤ 0 when due)."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        return (self.next_tick_ns - now_ns) / 1e9

    def advance(self, now_ns: int | None = None, *, count_skipped: bool = True) -> int:
        """Call after a tick was handled: move to the next tick in the future.

        Returns the number of ticks that passed meanwhile; they count as skipped unless
        `count_skipped` is False (no window could run anyway, e.g. while warming up).
        """
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        behind = max(0, (now_ns - self.next_tick_ns) // self.stride_ns)
        self.next_tick_ns += (behind + 1) * self.stride_ns
        if count_skipped:
            self.skipped += behind
        return behind

    def restart(self, delay_s: float = 0.0, now_ns: int | None = None) -> None:
        """Start the grid afresh, its next tick `delay_s` from now; nothing counts as skipped.

        While the first window's span is still filling, the inference process ticks at
        each new frame this way, so the first prediction comes as soon as the span is
        covered instead of at the next tick of a grid started before the first frame."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        self.next_tick_ns = now_ns + round(delay_s * 1e9)
