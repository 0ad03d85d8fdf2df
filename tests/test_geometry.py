"""One window geometry for serving and training.

The same clip goes through the stream (its frames and sound written into a real FrameRing
and AudioRing as capture writes them, the window cut by the inference loop's samplers)
and through the training dataset's window selection; at the same end time both pick the
same frames and the same audio samples. For a one-pathway model (X3D), a two-pathway one
(SlowFast) and an audiovisual one (AVSlowFast).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import models
from stream.pipeline.preprocess import LogMel
from stream.pipeline.ring import AudioRing, FrameRing
from stream.pipeline.window import AudioSampler, WindowGeometry, WindowSampler
from stream.train.clips import Clip
from stream.train.dataset import ClipDataset, ClipStore, clip_times_ns

RATE = 16_000
BLOCK = 1600  # audio written as capture writes it, 0.1 s at a time
T0_NS = 5_000_000_123  # the clip's time 0 on the stream's monotonic clock: any offset
# Smaller networks take the same inputs (frames, intervals, sound) as the full-size ones.
REDUCED = {"width": 16, "depths": (1, 1, 1, 1)}
MODELS = [
    ("x3d_xs", {}, 1, False),
    ("slowfast_r50", REDUCED, 2, False),
    ("avslowfast_r50", REDUCED, 2, True),
]


@pytest.fixture(scope="module")
def clip() -> Clip:
    """A jittered ~30 fps clip with a 0.3 s drop-out; each frame's pixels hold its index,
    each audio sample its own index (a ramp)."""
    rng = np.random.default_rng(0)
    times_s = np.cumsum(rng.uniform(0.025, 0.042, 130))
    times_s = times_s[(times_s < 2.6) | (times_s > 2.9)]  # frames lost between 2.6 s and 2.9 s
    times_s -= times_s[0]
    frames = np.zeros((len(times_s), 8, 8, 3), np.uint8)
    frames[:] = (np.arange(len(times_s)) % 256)[:, None, None, None]
    audio = np.arange(round(times_s[-1] + 1) * RATE, dtype=np.float32)  # past the last frame
    return Clip(Path("synthetic.mp4"), frames, times_s, audio, RATE)


@pytest.mark.parametrize(("name", "options", "pathways", "listens"), MODELS)
def test_serving_and_training_cut_the_same_window(clip, name, options, pathways, listens):
    meta = models.create(name, **options).meta
    # The serving side, as stream.pipeline.inference builds it.
    logmel = LogMel(meta.audio) if meta.audio is not None else None
    geometry = WindowGeometry.of(meta, logmel)
    assert (len(geometry.pathways), geometry.audio_samples > 0) == (pathways, listens)
    # The training side: the dataset of stream.train, with nothing to decode.
    dataset = ClipDataset(ClipStore([], meta=meta), [], train=False)

    times_ns = clip_times_ns(clip)
    # Ends from the first that the stream's history covers to the clip's last frame,
    # across the drop-out.
    ends = [k for k, t in enumerate(times_ns) if t >= geometry.span_ns][::7] + [len(times_ns) - 1]
    assert np.diff(times_ns).max() > 250_000_000  # the drop-out, inside some of the windows
    with (
        FrameRing.create(len(times_ns), 8, 8, 3) as ring,
        AudioRing.create(len(clip.audio) + 2 * BLOCK, RATE, max_block=BLOCK) as audio_ring,
    ):
        for first in range(0, len(clip.audio), BLOCK):  # all the sound has arrived
            audio_ring.write(clip.audio[first : first + BLOCK], T0_NS + first * 10**9 // RATE)
        sampler = WindowSampler(ring, geometry)
        audio_sampler = AudioSampler(audio_ring, geometry.audio_samples)
        written = 0
        for end in ends:
            while written <= end:  # the frames captured up to the window's end
                ring.write(clip.frames[written], T0_NS + int(times_ns[written]))
                written += 1
            window, _ = sampler.sample_in_place(lambda w: None)
            picks, sound = dataset.window(clip, int(times_ns[end]))

            assert window.end_ns == T0_NS + times_ns[end]
            assert [s.tolist() for s in window.seqs] == [p.tolist() for p in picks], end
            assert len(picks) == pathways
            assert [len(p) for p in picks] == [p.frames for p in geometry.pathways]
            if not listens:
                assert sound is None and window.plan.audio_first_ns is None
                continue
            served = audio_sampler.span(window.plan.audio_first_ns)
            assert served == sound, end
            got = audio_sampler.sample(window.plan.audio_first_ns)
            assert got.missing == 0
            np.testing.assert_array_equal(got.samples, clip.audio[sound[0] : sound[1]])
