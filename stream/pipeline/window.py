"""Sliding windows: where a window lies in time, which captured frames make it, and when
windows run.

`WindowGeometry` is the one statement of a model's window in time, for serving and
training alike (`stream.train.dataset` cuts its samples with it): the span of the video
pathways, per pathway the target time of each frame, and the audio window centred on the
video window's centre. `WindowGeometry.plan(end_ns)` gives one window's `WindowPlan`, and
`WindowPlan.choose(times)` picks, for each target time, the captured frame nearest to it,
so a camera at 24 or 60 fps, or one that drops frames, still gives the model the temporal
span it was trained on. The window ends at the newest captured frame (its timestamp is
`capture_ns` on the wire), so a prediction's age is measured from the freshest sample it
saw.

The inference reads a window's frames in place (`WindowSampler.sample_in_place`): the
preprocessing reads the pixels it needs straight from the ring's slots, and the window
counts only when none of them was overwritten meanwhile (`FrameRing.check` before and
after, the same sequence check as a copy). Copying the frames out first was a sizeable
part of the pipeline's own overhead (docs/performance.md).

The scheduler runs a window every `stride` seconds on a fixed grid. When a window
takes longer than the stride, the ticks that passed are counted as skipped and the next
window takes the newest data: latency never builds up.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from stream.errors import FrameLost
from stream.pipeline.ring import AudioRing, FrameRing, Frames

R = TypeVar("R")

#: How far before a window's earliest target time a frame may lie and still be chosen
#: (and how far after it the oldest frame held may lie for history to cover the span).
TOLERANCE_NS = 50_000_000


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


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """Where one window lies in time (`WindowGeometry.plan`)."""

    end_ns: int  # the newest frame's time; the last target of every pathway
    targets: tuple[np.ndarray, ...]  # per pathway, its frames' target times, oldest first
    start_ns: int  # the earliest target time (end_ns - span_ns)
    oldest_ns: int  # frames captured before this are never chosen (start_ns - tolerance)
    centre_ns: int  # the video window's centre, where the audio window is centred
    audio_first_ns: int | None  # time of the audio window's first sample; None: no audio
    audio_samples: int

    def choose(self, times_ns: np.ndarray) -> list[np.ndarray]:
        """Per pathway, the index into sorted `times_ns` of the frame nearest each target.

        Only frames from `oldest_ns` on count: after an outage the frame nearest to an
        early target may be older than the window, and the window never reaches back
        across the outage (the gap to the target shows instead)."""
        lo = int(np.searchsorted(times_ns, self.oldest_ns, side="left"))
        inside = times_ns[lo:]
        return [nearest(inside, t) + lo for t in self.targets]


@dataclasses.dataclass(frozen=True)
class WindowGeometry:
    """A model's window in time: its video pathways and the length of its audio window.

    Built from a model's metadata (`of`), and used by the inference loop (through
    `WindowSampler` and `AudioSampler`) and by the training dataset, so that both cut the
    same window from the same capture."""

    pathways: tuple[PathwaySpec, ...]
    audio_samples: int = 0  # samples per audio window; 0: the model does not listen
    sample_rate: int = 0
    tolerance_ns: int = TOLERANCE_NS

    def __post_init__(self) -> None:
        if not self.pathways:
            raise ValueError("a window needs at least one pathway")
        if self.audio_samples < 0 or (self.audio_samples and self.sample_rate <= 0):
            raise ValueError(
                f"bad audio window: {self.audio_samples} samples at {self.sample_rate} Hz"
            )

    @classmethod
    def of(cls, meta, logmel=None) -> WindowGeometry:
        """The geometry of `meta`'s windows (a `models.ModelMeta`); the audio window is as
        long as `logmel` (the model's `LogMel` front end) takes, None for a video-only model."""
        pathways = tuple(PathwaySpec(v.frames, v.interval_s) for v in meta.video)
        if logmel is None:
            return cls(pathways)
        return cls(pathways, audio_samples=logmel.samples, sample_rate=logmel.cfg.sample_rate)

    @property
    def span_ns(self) -> int:
        """From the earliest target time to the last, over all pathways."""
        return max(p.span_ns for p in self.pathways)

    @property
    def audio_half_ns(self) -> int:
        """Half the audio window, from its first sample's time to its centre."""
        return round(self.audio_samples / 2 * 1e9 / self.sample_rate) if self.audio_samples else 0

    def centre_ns(self, end_ns: int) -> int:
        """The centre of the video window that ends at `end_ns`."""
        return end_ns - self.span_ns // 2

    def audio_first_ns(self, centre_ns: int) -> int:
        """Time of the first sample of the audio window centred on `centre_ns`."""
        return centre_ns - self.audio_half_ns

    def ends_within_sound(self, sound_s: float) -> tuple[int, int]:
        """(earliest, latest) end of a window whose audio window lies inside sound that
        runs from time 0 for `sound_s` seconds (a clip's)."""
        lead_ns = self.span_ns // 2 + self.audio_half_ns  # from the audio's start to the end
        return lead_ns, round(sound_s * 1e9) - 2 * self.audio_half_ns + lead_ns

    def plan(self, end_ns: int) -> WindowPlan:
        """The window whose last frame is at `end_ns`."""
        start_ns = end_ns - self.span_ns
        centre_ns = self.centre_ns(end_ns)
        return WindowPlan(
            end_ns=end_ns,
            targets=tuple(target_times(end_ns, p) for p in self.pathways),
            start_ns=start_ns,
            oldest_ns=start_ns - self.tolerance_ns,
            centre_ns=centre_ns,
            audio_first_ns=self.audio_first_ns(centre_ns) if self.audio_samples else None,
            audio_samples=self.audio_samples,
        )


@dataclasses.dataclass
class Window:
    """One window: per pathway where its frames lie in the ring, plus its timing."""

    plan: WindowPlan
    seqs: list[np.ndarray]  # ring sequence numbers per pathway
    in_ring: list[Frames]  # per pathway, the frames in place
    ring: FrameRing
    start_ns: int  # capture time of the oldest frame used
    end_ns: int  # capture time of the newest frame used (= capture_ns on the wire)
    newest_seq: int
    frames: int  # distinct frames in the window
    read_ns: int  # time spent checking the frames in the ring
    max_gap_ns: int  # the largest distance of a chosen frame from its target time

    def newest_frame(self) -> np.ndarray | None:
        """A copy of the newest frame of the first pathway (None: overwritten meanwhile)."""
        try:
            return self.ring.read(int(self.seqs[0][-1]))[0]
        except FrameLost:
            return None


class WindowSampler:
    """Cuts windows out of a FrameRing by timestamp, where the frames lie.

    `sample_in_place(use)` copies nothing: `use` reads the frames in the ring, and the
    window counts only if none was overwritten meanwhile.
    """

    def __init__(self, ring: FrameRing, geometry: WindowGeometry):
        self.ring = ring
        self.geometry = geometry

    def sample_in_place(
        self, use: Callable[[Window], R], *, retries: int = 3
    ) -> tuple[Window, R] | None:
        """(window, use(window)) for the window ending at the newest frame, or None while
        history is too short.

        `use` reads the frames in place (`window.in_ring`); afterwards they are checked as
        `FrameRing.read` checks a copy, and when the writer reached one of them meanwhile,
        its result is dropped and `use` runs again on a newer window.
        """
        for _ in range(retries):
            window = self._choose()
            if window is None:
                return None
            started = time.perf_counter_ns()
            distinct = np.unique(np.concatenate(window.seqs))
            try:  # the chosen frames and their times are (still) consistent
                self.ring.check(distinct)
            except FrameLost:
                continue
            window.read_ns = time.perf_counter_ns() - started
            result = use(window)
            try:
                self.ring.check(distinct)
            except FrameLost:
                continue  # overwritten while `use` read it: a newer window
            return window, result
        raise FrameLost(f"could not read a consistent window in {retries} attempts")

    def covered(self) -> bool:
        """Whether the ring holds the whole span of a window yet (`sample_in_place` gives
        one), without cutting it."""
        _, times = self.ring.snapshot()
        return len(times) > 0 and self._covers(self.geometry.plan(int(times[-1])), times)

    def _covers(self, plan: WindowPlan, times: np.ndarray) -> bool:
        return plan.start_ns + self.geometry.tolerance_ns >= int(times[0])

    def _choose(self) -> Window | None:
        """The window ending at the newest frame, or None while history is too short. From
        an unlocked snapshot: check before trusting it."""
        seqs, times = self.ring.snapshot()
        if len(seqs) == 0:
            return None
        plan = self.geometry.plan(int(times[-1]))
        if not self._covers(plan, times):
            return None  # not enough history yet for the whole span
        chosen = plan.choose(times)
        picks = [seqs[c] for c in chosen]
        used = np.unique(np.concatenate(chosen))
        return Window(
            plan=plan,
            seqs=picks,
            in_ring=[self.ring.frames(p) for p in picks],
            ring=self.ring,
            start_ns=int(times[used[0]]),
            end_ns=int(times[used[-1]]),
            newest_seq=int(seqs[-1]),
            frames=len(used),
            read_ns=0,
            max_gap_ns=max(int(np.abs(times[c] - t).max()) for c, t in zip(chosen, plan.targets)),
        )


@dataclasses.dataclass
class AudioWindow:
    samples: np.ndarray  # (n,) float32, zeros where audio was missing
    start_ns: int
    end_ns: int
    missing: int  # samples that were not in the ring (zero-filled)


class AudioSampler:
    """Cuts a window of `samples` samples out of an AudioRing by the time of its first
    sample (a model's audio window: `WindowPlan.audio_first_ns`)."""

    def __init__(self, ring: AudioRing, samples: int):
        self.ring = ring
        self.samples = samples
        self._out = np.zeros(samples, dtype=np.float32)

    def span(self, first_ns: int, clock: tuple[int, int, int] | None = None) -> tuple[int, int]:
        """Sample indices [first, end) of the window whose first sample is at `first_ns`."""
        first = self.ring.index_at(first_ns, clock)
        return first, first + self.samples

    def arrived(self, first_ns: int) -> bool:
        """Has the ring received the window's last sample?"""
        return self.ring.clock()[0] >= self.span(first_ns)[1]

    def sample(self, first_ns: int) -> AudioWindow:
        """The window, zero-filled where the ring lacks samples (too old, or not yet)."""
        clock = self.ring.clock()
        count = clock[0]
        first, end = self.span(first_ns, clock)
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
