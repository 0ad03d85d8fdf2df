"""The shared-memory rings of one stream (`python -m stream.run` has a plan per stream,
`python -m stream.record` one), owned by the command's main process: sized from how many
seconds their reader needs and the sources' formats, checked against the free space of
/dev/shm, created, handed out to the stream's capture processes with one start time, and
unlinked on every exit path (the owner calls `close()` in a `finally`, and when it
removes the stream).
"""

from __future__ import annotations

import logging
import math
import os
import time

from stream import control
from stream.errors import UserError
from stream.pipeline.ring import AudioRing, FrameRing, sweep_stale_segments

log = logging.getLogger(__name__)

#: Seconds each ring holds beyond what its reader needs: a late tick, the read itself.
RING_MARGIN_S = 1.0
#: Delay between handing out the rings and the first sample of paced sources, so that
#: video and audio files start their shared timeline together.
START_DELAY_S = 0.1
#: Largest block an audio capture writes at once (device blocks are 16 ms).
AUDIO_MAX_BLOCK = 8192


def ring_slots(span_s: float, fps: float) -> int:
    """Frame slots for `span_s` seconds plus the margin, at the source's frame rate."""
    return max(16, math.ceil((span_s + RING_MARGIN_S) * fps) + 4)


def audio_capacity(span_s: float, rate: int) -> int:
    """Samples for `span_s` seconds plus the margin on each side, and one largest block
    (a write in progress while the reader reads)."""
    return max(
        8 * AUDIO_MAX_BLOCK, math.ceil((span_s + 2 * RING_MARGIN_S) * rate) + AUDIO_MAX_BLOCK
    )


def check_shm_space(nbytes: int) -> None:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return  # not Linux: the OS decides
    free = st.f_bavail * st.f_frsize
    if nbytes > free:
        raise UserError(
            f"the frame ring needs {nbytes / 2**20:.0f} MiB of shared memory but /dev/shm has "
            f"{free / 2**20:.0f} MiB free: capture smaller frames with --size, or enlarge /dev/shm"
        )


class RingPlan:
    """The FrameRing (and the AudioRing when there is sound) of one stream.

    The first plan a command makes sweeps /dev/shm of segments of this project's naming
    whose creator is gone (a crashed run); a command with many streams makes the others
    with `sweep=False`, so that it sweeps once."""

    def __init__(self, *, sweep: bool = True):
        self.frames: FrameRing | None = None
        self.audio: AudioRing | None = None
        if sweep:
            for name in sweep_stale_segments():
                log.info("removed shared memory %s left by a crashed run", name)

    def create(
        self,
        video: control.VideoOpened,
        video_s: float,
        *,
        audio_rate: int | None = None,
        audio_s: float = 0.0,
    ) -> None:
        """Rings for `video_s` seconds of the video source's frames and, with
        `audio_rate`, `audio_s` seconds of sound at that rate (each plus the margin);
        UserError when /dev/shm cannot hold them."""
        slots = ring_slots(video_s, video.fps)
        capacity = 0 if audio_rate is None else audio_capacity(audio_s, audio_rate)
        check_shm_space(FrameRing.nbytes(slots, video.height, video.width) + 4 * capacity)
        self.frames = FrameRing.create(slots, video.height, video.width)
        if audio_rate is not None:
            self.audio = AudioRing.create(capacity, audio_rate, max_block=AUDIO_MAX_BLOCK)

    def handout(self) -> dict[str, control.WriteRing]:
        """What each capture process writes into, by its kind (`control.CAPTURE_VIDEO`,
        `control.CAPTURE_AUDIO`), all with one start time: picture and sound of paced
        sources (files) start together."""
        start_ns = time.monotonic_ns() + round(START_DELAY_S * 1e9)
        rings = {control.CAPTURE_VIDEO: self.frames, control.CAPTURE_AUDIO: self.audio}
        return {
            name: control.WriteRing(ring.name, start_ns)
            for name, ring in rings.items()
            if ring is not None
        }

    def close(self) -> None:
        """Unlink the rings (their readers may still hold them mapped); again is a no-op."""
        for ring in (self.frames, self.audio):
            if ring is not None:
                ring.close()  # the owner unlinks
        self.frames = self.audio = None
