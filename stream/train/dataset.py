"""Training and validation samples from labelled clips, cut as the stream cuts windows.

The dataset is `python -m stream.record`'s layout (`stream.train.clips.list_dataset`): one
folder per label. A sample is one window of one clip, made by the stream's own parts:

- the window ends at a frame's time (the stream's windows end at the newest captured
  frame) and lies where the stream's `stream.pipeline.window.WindowGeometry` puts it: per
  pathway, the frame nearest each target time (`WindowPlan.choose`, on the clip's frame
  times); the audio window centred on the video window's centre, zeros where it reaches
  past the clip's sound, through `stream.pipeline.preprocess.LogMel`;
- the frames go through `stream.pipeline.preprocess.Preprocessor` (short-side resize, centre
  crop, normalisation), the stream's exact transform.

Training windows: the end is drawn uniformly over the clip (temporal jitter; where the
clip is long enough, so that the video window and the audio window both lie inside it),
then, on the raw frames before the Preprocessor, a random crop of 0.7-1.0 of each side
(scale and aspect jitter, the same for every frame of the window) and a horizontal flip
with probability 0.5. Validation windows: the one centred on the clip, no augmentation.

Audiovisual synchronisation (AVSlowFast's auxiliary task) needs, per sample, an audio
window that does not belong to the picture: an easy negative is a window of another
clip's sound; a hard negative is the same clip's sound shifted in time by at least
`shift_s` (0.5 s, the reference's DATA.AUDIO_MISALIGNED_GAP), inside the clip where it
can be. `ClipDataset.hard_fraction` says which share of the negatives is hard; the
trainer sets it per epoch (the curriculum).

Every random draw of a sample comes from a generator seeded by (seed, epoch, index), so
a run is reproducible and a resumed run sees the samples it would have seen.

Decoded clips are cached in memory up to a bound (`cache_mb`, 4 GiB by default); clips
past it are decoded again each time they are sampled (slower, never wrong). Frames are
decoded at a short side of `ceil(meta.short_side / MIN_SCALE)`, so that the smallest
random crop needs no upscaling and validation frames are resized by the Preprocessor as
camera frames are. For scale: a 10-second 16:9 clip at 30 fps takes 108 MB for X3D-XS
(decoded at 260 pixels) and 214 MB for SlowFast (366 pixels), so 4 GiB hold about 38
and 19 such clips; short clips at small sizes (the tests' 2 s at 96x72) take under 1 MB.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stream.errors import UserError
from stream.pipeline.preprocess import LogMel, Preprocessor
from stream.pipeline.window import WindowGeometry, nearest
from stream.train.clips import Clip, ClipError, list_dataset, read_clip

#: The smallest side fraction of the random crop (each side drawn in [MIN_SCALE, 1]).
MIN_SCALE = 0.7
#: Default bound of the decoded-clip cache.
DEFAULT_CACHE_MB = 4096
#: Default seconds between a clip's picture and its shifted sound (hard negatives):
#: PySlowFast AVSlowFast branch, DATA.AUDIO_MISALIGNED_GAP.
DEFAULT_SHIFT_S = 0.5
#: Pairs left out of the sync loss (reference `filter_duplicates`, SLOWFAST.AVS_VAR_THRESH
#: and AVS_DUPLICATE_THRESH, on the raw log-mel): near-silent windows, and negatives that
#: are near-copies of the positive (a steady sound shifted in time looks the same).
SYNC_VAR_THRESH = 0.01
SYNC_DUPLICATE_THRESH = 0.99


class DatasetError(UserError):
    """A dataset that cannot be trained on; the message names the folder or file."""


@dataclass(frozen=True)
class Item:
    path: Path
    label: int


@dataclass(frozen=True)
class Split:
    labels: tuple[str, ...]
    train: tuple[Item, ...]
    val: tuple[Item, ...]


def split_dataset(root: str | Path, *, val_fraction: float, seed: int) -> Split:
    """Stratified, seeded train/validation split of `root/<label>/<clip>`.

    Every label keeps at least one clip for validation and one for training, so a label
    needs two clips at least. Raises DatasetError (or ClipError) naming the problem.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"--val-fraction {val_fraction} must be between 0 and 1 (e.g. 0.2)")
    dataset = list_dataset(root)
    if len(dataset) < 2:
        (label,) = dataset
        raise DatasetError(
            f"dataset folder {str(root)!r} has one label folder ({label!r}): a classifier needs "
            f"at least two; add a folder of clips for each other class (e.g. {root}/nothing/)"
        )
    for label, paths in dataset.items():
        if len(paths) < 2:
            raise DatasetError(
                f"label folder {str(paths[0].parent)!r} holds 1 clip: training needs at least 2 "
                f"per label (one to train on, one to validate on); record more clips of {label!r}"
            )
    rng = random.Random(seed)
    train: list[Item] = []
    val: list[Item] = []
    labels = tuple(dataset)
    for index, label in enumerate(labels):
        paths = list(dataset[label])
        rng.shuffle(paths)
        n_val = min(len(paths) - 1, max(1, round(len(paths) * val_fraction)))
        val.extend(Item(p, index) for p in sorted(paths[:n_val]))
        train.extend(Item(p, index) for p in sorted(paths[n_val:]))
    return Split(labels=labels, train=tuple(train), val=tuple(val))


def decode_short_side(meta) -> int:
    """Short side clips are decoded at: the smallest random crop needs no upscaling."""
    return math.ceil(meta.short_side / MIN_SCALE)


def clip_bytes(clip: Clip) -> int:
    return clip.frames.nbytes + (clip.audio.nbytes if clip.audio is not None else 0)


class ClipStore:
    """Decoded clips by path: every clip is decoded (and so checked) once up front; those
    that fit in `cache_mb` stay in memory, the others are decoded again when needed."""

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        meta,
        cache_mb: float = DEFAULT_CACHE_MB,
        progress: Callable[[int, int, Path], None] | None = None,
    ):
        self.meta = meta
        self.sample_rate = meta.audio.sample_rate if meta.audio is not None else 16_000
        self.short_side = decode_short_side(meta)
        self.budget = int(cache_mb * 2**20)
        self.cached: dict[Path, Clip] = {}
        self.durations: dict[Path, tuple[float, float]] = {}  # video s, audio s
        self.used = 0
        for i, path in enumerate(paths):
            if progress is not None:
                progress(i, len(paths), path)
            clip = self._decode(path)
            if self.meta.audio is not None and clip.audio is None:
                raise DatasetError(
                    f"clip {str(path)!r} has no audio track, but {meta.name} listens as well as "
                    f"watches: record it again with sound, remove it, or train a video-only model"
                )
            audio_s = len(clip.audio) / clip.sample_rate if clip.audio is not None else 0.0
            self.durations[path] = (clip.duration_s, audio_s)
            size = clip_bytes(clip)
            if self.used + size <= self.budget:
                self.cached[path] = clip
                self.used += size
        if progress is not None:
            progress(len(paths), len(paths), None)

    def _decode(self, path: Path) -> Clip:
        try:
            return read_clip(path, sample_rate=self.sample_rate, max_short_side=self.short_side)
        except ClipError:
            raise
        except (OSError, ValueError, RuntimeError) as exc:
            raise ClipError(
                f"clip {str(path)!r} cannot be decoded ({exc}): delete or replace the file"
            ) from None

    def get(self, path: Path) -> Clip:
        clip = self.cached.get(path)
        return clip if clip is not None else self._decode(path)


class ClipDataset(torch.utils.data.Dataset):
    """One window per item: `{"video": (per pathway (3, T, crop, crop)), "audio": (1,
    frames, mels), "audio_neg": ..., "sync_ok": bool, "hard": bool, "label": int}`
    (the audio keys only for models that listen; the negative only with `sync`)."""

    def __init__(
        self,
        store: ClipStore,
        items: Sequence[Item],
        *,
        train: bool,
        seed: int = 0,
        sync: bool = False,
        shift_s: float = DEFAULT_SHIFT_S,
    ):
        meta = store.meta
        self.store = store
        self.items = list(items)
        self.train = train
        self.seed = seed
        self.sync = sync and meta.audio is not None
        self.shift_s = shift_s
        self.epoch = 0
        self.hard_fraction = 0.0  # share of hard sync negatives; the trainer's curriculum
        self.preprocess = Preprocessor(
            short_side=meta.short_side, crop=meta.crop, mean=meta.mean, std=meta.std
        )
        self.logmel = LogMel(meta.audio) if meta.audio is not None else None
        self.geometry = WindowGeometry.of(meta, self.logmel)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        rng = np.random.default_rng([self.seed, self.epoch, index, int(self.train)])
        clip = self.store.get(item.path)
        end_ns = self._end_ns(clip, clip_times_ns(clip), rng)
        picks, audio_span = self.window(clip, end_ns)
        used = np.unique(np.concatenate(picks))
        frames = clip.frames[used]  # (N, H, W, 3) BGR, each distinct frame once
        if self.train:
            frames = _augment(frames, rng)
        # The Preprocessor returns inference tensors; indexing copies them into ordinary
        # ones that autograd can save.
        base = self.preprocess.clip(frames)[0]  # (3, N, crop, crop)
        where = np.searchsorted(used, np.concatenate(picks))
        video, at = [], 0
        for p in picks:
            video.append(base[:, torch.from_numpy(where[at : at + len(p)])])  # (3, T, crop, crop)
            at += len(p)
        out = {"video": tuple(video), "label": item.label}
        if self.logmel is None:
            return out
        out["audio"] = self._logmel(self._audio(clip, audio_span))
        if self.sync:
            centre_ns = self.geometry.centre_ns(end_ns)
            hard = bool(rng.random() < self.hard_fraction)
            if hard:
                source, neg_centre = index, self._hard_centre(clip, centre_ns, rng)
                negative = self._audio(clip, self._centred(clip, neg_centre))
            else:
                source, negative = self._easy_negative(index, rng)
                neg_centre = None
            out["audio_neg"] = self._logmel(negative)
            out["hard"] = hard
            # Where the negative came from (for tests and debugging): the item, and for
            # a hard negative its shift from the in-sync window in seconds.
            out["neg_item"] = source
            out["neg_shift_s"] = (neg_centre - centre_ns) / 1e9 if neg_centre is not None else 0.0
            out["sync_ok"] = _sync_pair_ok(out["audio"], out["audio_neg"], self.logmel.cfg)
        return out

    # -- windows --------------------------------------------------------------------

    def window(self, clip: Clip, end_ns: int) -> tuple[list[np.ndarray], tuple[int, int] | None]:
        """The window ending at `end_ns` (clip time), as `__getitem__` cuts it: per pathway
        the indices of its frames in `clip`, and its sound's samples [first, end) (None for
        a video-only model; they may reach past the clip's sound)."""
        plan = self.geometry.plan(end_ns)
        audio = None
        if plan.audio_first_ns is not None:
            audio = self._samples(clip, plan.audio_first_ns)
        return plan.choose(clip_times_ns(clip)), audio

    def _end_ns(self, clip: Clip, times_ns: np.ndarray, rng: np.random.Generator) -> int:
        """The window's end: a frame time, drawn (training) or centred (validation)."""
        span_ns, last = self.geometry.span_ns, int(times_ns[-1])
        if not self.train:
            return int(times_ns[nearest(times_ns, np.array([(last + span_ns) // 2]))[0]])
        lo, hi = span_ns, last
        if self.logmel is not None:  # keep the audio window inside the clip's sound too
            first, latest = self.geometry.ends_within_sound(len(clip.audio) / clip.sample_rate)
            lo, hi = max(lo, first), min(hi, latest)
        choices = times_ns[(times_ns >= lo) & (times_ns <= hi)]
        if len(choices) == 0:  # a short clip: any frame that completes the video window
            choices = times_ns[times_ns >= min(span_ns, last)]
        return int(choices[rng.integers(len(choices))])

    def _samples(self, clip: Clip, first_ns: int) -> tuple[int, int]:
        """Samples [first, end) of the clip's sound for an audio window whose first sample
        is at `first_ns` (sample 0 is at the clip's time 0); they may reach past the sound."""
        first = round(first_ns * clip.sample_rate / 1e9)
        return first, first + self.geometry.audio_samples

    def _centred(self, clip: Clip, centre_ns: int) -> tuple[int, int]:
        """Samples [first, end) of the audio window centred on `centre_ns` (a negative's)."""
        return self._samples(clip, self.geometry.audio_first_ns(centre_ns))

    def _audio(self, clip: Clip, span: tuple[int, int]) -> np.ndarray:
        """Samples [first, end) of the clip's sound, zeros where they lie outside it."""
        first, end = span
        out = np.zeros(end - first, np.float32)
        lo, hi = max(first, 0), min(end, len(clip.audio))
        if hi > lo:
            out[lo - first : hi - first] = clip.audio[lo:hi]
        return out

    def _logmel(self, samples: np.ndarray) -> torch.Tensor:
        return self.logmel(samples)[0].clone()  # (1, frames, mels), an ordinary tensor

    def _easy_negative(self, index: int, rng: np.random.Generator) -> tuple[int, np.ndarray]:
        """(item, a window of its sound): another clip, of any label."""
        if len(self.items) < 2:
            other = index
        else:
            other = int(rng.integers(len(self.items) - 1))
            other += other >= index
        clip = self.store.get(self.items[other].path)
        audio_ns = round(len(clip.audio) / clip.sample_rate * 1e9)
        lo, hi = self.geometry.audio_half_ns, audio_ns - self.geometry.audio_half_ns
        centre = int(rng.integers(lo, hi + 1)) if hi > lo else audio_ns // 2
        return other, self._audio(clip, self._centred(clip, centre))

    def _hard_centre(self, clip: Clip, centre_ns: int, rng: np.random.Generator) -> int:
        """Centre of a hard negative: the in-sync centre moved by at least shift_s, the
        window inside the clip's sound where that is possible, else by shift_s exactly
        to the side that reaches less far out (zero-padded there)."""
        audio_ns = round(len(clip.audio) / clip.sample_rate * 1e9)
        shift = round(self.shift_s * 1e9)
        lo, hi = self.geometry.audio_half_ns, audio_ns - self.geometry.audio_half_ns
        spans = [(lo, min(hi, centre_ns - shift)), (max(lo, centre_ns + shift), hi)]
        spans = [(a, b) for a, b in spans if b >= a]
        if spans:
            lengths = np.array([b - a + 1 for a, b in spans], dtype=np.float64)
            a, b = spans[int(rng.choice(len(spans), p=lengths / lengths.sum()))]
            centre = int(rng.integers(a, b + 1))
        else:  # too short to stay inside: the side that reaches less far out
            before, after = centre_ns - shift, centre_ns + shift
            centre = before if lo - before < after - hi else after
        return centre


def clip_times_ns(clip: Clip) -> np.ndarray:
    """The clip's frame times in ns from its start (the clock its windows are planned on)."""
    return np.round(clip.times_s * 1e9).astype(np.int64)


def _augment(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random crop of MIN_SCALE..1 of each side, then a horizontal flip half the time."""
    _, height, width, _ = frames.shape
    h = max(1, round(height * rng.uniform(MIN_SCALE, 1.0)))
    w = max(1, round(width * rng.uniform(MIN_SCALE, 1.0)))
    top = int(rng.integers(height - h + 1))
    left = int(rng.integers(width - w + 1))
    frames = frames[:, top : top + h, left : left + w]
    if rng.random() < 0.5:
        frames = frames[:, :, ::-1]
    return np.ascontiguousarray(frames)


def _sync_pair_ok(pos: torch.Tensor, neg: torch.Tensor, audio) -> bool:
    """Reference `filter_duplicates`: both windows carry sound, and they differ."""
    raw = torch.stack([pos, neg]).flatten(1) * audio.std + audio.mean  # undo normalisation
    if bool((raw.var(dim=1) <= SYNC_VAR_THRESH).any()):
        return False
    similarity = torch.nn.functional.cosine_similarity(raw[0], raw[1], dim=0)
    return bool(similarity < SYNC_DUPLICATE_THRESH)
