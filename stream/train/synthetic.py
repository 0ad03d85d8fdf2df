"""Generated clips of moving bars, with sound: labelled data whose classes are known
exactly, for the tests of `python -m stream.train` (tests/test_train.py) and for the
benchmarks that need a model trained on something (benchmarks/events_timing.py).

A bar bounces left and right (a tall bar, `bounce`) or up and down (a wide bar, `drop`)
on a plain background, or there is no bar at all (`none`); with a beep at every turn of
the bar (`beep`), a burst of noise instead (`crash`), or only a faint hiss (None). Period,
phase, position, colours, pitch and loudness are drawn per clip from the generator given,
so nothing can be memorised and the same seed gives the same clips.

`CLASSES` is the dataset whose classes need both senses: telling bounce_beep from
bounce_crash takes the sound, telling bounce_beep from drop_beep takes the picture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stream.train.clips import write_clip

#: Frame size (width, height), frames per second and sound sample rate of every clip.
SIZE = (96, 72)
FPS = 15
RATE = 16_000
#: The motions `bar_frames` draws and the sounds `make_clip` makes (None: hiss only).
MOTIONS = ("bounce", "drop", "none")
SOUNDS = ("beep", "crash", None)
#: label → (motion, sound): the classes that need both senses.
CLASSES = {
    "bounce_beep": ("bounce", "beep"),
    "bounce_crash": ("bounce", "crash"),
    "drop_beep": ("drop", "beep"),
}


def bar_frames(
    motion: str, times: np.ndarray, rng: np.random.Generator, background=None
) -> tuple[np.ndarray, float, float]:
    """(frames, period, phase): BGR uint8 frames (N, H, W, 3) of one bar moving as
    `motion` at `times` (seconds), on a plain background (drawn from `rng`, or the colour
    `background` when given: a timeline keeps one background across its segments), and
    the motion's period (seconds from one side to the other and back) and phase (0-1)."""
    if motion not in MOTIONS:
        raise ValueError(f"motion {motion!r} is none of {MOTIONS}")
    width, height = SIZE
    period, phase = rng.uniform(0.6, 1.0), rng.uniform()
    frames = np.empty((len(times), height, width, 3), np.uint8)
    drawn = rng.integers(0, 60, 3)
    frames[:] = drawn if background is None else background
    if motion == "none":
        return frames, period, phase
    colour = rng.integers(150, 256, 3)
    u = ((np.asarray(times) / period + phase) % 1.0) * 2.0
    position = np.where(u < 1.0, u, 2.0 - u)  # 0 -> 1 -> 0 every period
    if motion == "bounce":  # a tall bar, left and right
        top = int(rng.integers(4, height - 34))
        for i, p in enumerate(position):
            x = round(4 + p * (width - 16))
            frames[i, top : top + 30, x : x + 8] = colour
    else:  # a wide bar, up and down
        left = int(rng.integers(4, width - 34))
        for i, p in enumerate(position):
            y = round(4 + p * (height - 16))
            frames[i, y : y + 8, left : left + 30] = colour
    return frames, period, phase


def make_clip(
    path: Path,
    motion: str,
    sound: str | None,
    rng: np.random.Generator,
    seconds: float = 2.0,
    with_audio: bool = True,
) -> None:
    """Write one clip of `seconds` at FPS (stream.train.clips.write_clip): the bar of
    `motion` and, with `with_audio`, its `sound` at every turn over a faint hiss."""
    if sound not in SOUNDS:
        raise ValueError(f"sound {sound!r} is none of {SOUNDS}")
    n = round(seconds * FPS)
    times = np.arange(n) / FPS
    frames, period, phase = bar_frames(motion, times, rng)
    samples = round(seconds * RATE)
    audio = rng.normal(0.0, rng.uniform(0.003, 0.01), samples)
    length = int(0.1 * RATE)
    envelope = np.hanning(length)
    pitch, loudness = rng.uniform(400, 1200), rng.uniform(0.3, 0.5)
    turns = () if sound is None else np.arange((-phase % 0.5) * period, seconds, period / 2)
    for turn in turns:  # the bar turns
        i = int(turn * RATE)
        k = min(length, samples - i)
        burst = (
            np.sin(2 * np.pi * pitch * np.arange(k) / RATE)
            if sound == "beep"
            else rng.uniform(-1, 1, k)
        )
        audio[i : i + k] += loudness * envelope[:k] * burst
    write_clip(path, frames, times, audio.astype(np.float32) if with_audio else None, RATE)


def make_dataset(
    root: Path,
    per_class: int,
    seed: int,
    classes: dict[str, tuple[str, str | None]] = CLASSES,
    *,
    seconds: float = 2.0,
    with_audio: bool = True,
) -> Path:
    """`per_class` clips per label of `classes` (label → (motion, sound)) in
    `root/<label>/NN.mp4`, the dataset layout stream.train reads; returns `root`."""
    rng = np.random.default_rng(seed)
    for label, (motion, sound) in classes.items():
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            make_clip(
                root / label / f"{i:02d}.mp4", motion, sound, rng, seconds, with_audio=with_audio
            )
    return root
