"""The browser view's frames in `stream.run --web`: each served stream's rings, read as
any reader reads them (the writer never waits for the view), its newest frame encoded as
JPEG and the level of its last tenth of a second of sound.

`RingFrames` is the server's FrameSource (stream/web/server.py). The web process
(stream/web/process.py) attaches a stream when the supervisor hands it out (the
AddStream the inference process gets) and detaches it when the stream goes
(RemoveStream), from its control thread; the server grabs from its executor threads.
Each stream has a lock, so that a grab never reads a ring that is being closed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading

import cv2
import numpy as np

from stream import control
from stream.errors import FrameLost, RingError
from stream.pipeline.ring import AudioRing, FrameRing
from stream.web.server import Frame

log = logging.getLogger("stream.web")

#: Seconds of sound a level is measured over.
LEVEL_S = 0.1
#: The level of silence, in dBFS (20·log10 of 0 is -inf, which JSON cannot say).
FLOOR_DBFS = -120.0


def dbfs(amplitude: float) -> float:
    """20·log10 of an amplitude of full scale 1.0, at least FLOOR_DBFS."""
    return max(FLOOR_DBFS, 20 * math.log10(amplitude)) if amplitude > 0 else FLOOR_DBFS


@dataclasses.dataclass(eq=False)
class _Rings:
    """One stream's rings, as attached by the view."""

    frames: FrameRing
    audio: AudioRing | None
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    last: int = -1  # the seq of the last frame grabbed
    closed: bool = False


class RingFrames:
    """The frames and sound levels of the streams attached (a FrameSource)."""

    def __init__(self):
        self._lock = threading.Lock()  # guards the dict; each stream's own lock its rings
        self._rings: dict[str, _Rings] = {}

    def attach(self, stream: str, message: control.AddStream) -> None:
        """Read the stream's rings from now on (again: its new rings replace the old).
        Rings that are gone already (the stream went meanwhile) are logged and left out."""
        try:
            frames = FrameRing.attach(message.video)
        except RingError as exc:
            log.warning("stream %s: no video for the browser view: %s", stream, exc)
            return
        try:
            audio = None if message.audio is None else AudioRing.attach(message.audio)
        except RingError as exc:
            log.warning("stream %s: no sound level for the browser view: %s", stream, exc)
            audio = None
        self.detach(stream)
        with self._lock:
            self._rings[stream] = _Rings(frames, audio)

    def detach(self, stream: str) -> None:
        """Let go of the stream's rings (a stream not attached: nothing to do)."""
        with self._lock:
            rings = self._rings.pop(stream, None)
        if rings is None:
            return
        with rings.lock:  # a grab in progress finishes first
            rings.closed = True
            rings.frames.close()
            if rings.audio is not None:
                rings.audio.close()

    def close(self) -> None:
        for stream in self.streams():
            self.detach(stream)

    def streams(self) -> list[str]:
        with self._lock:
            return list(self._rings)

    def _get(self, stream: str) -> _Rings:
        with self._lock:
            return self._rings[stream]  # KeyError: not attached

    def grab(self, stream: str, width: int, quality: int) -> Frame | None:
        """The newest frame of the stream, if newer than the last one grabbed, at most
        `width` pixels wide (downscaled, the aspect kept) as JPEG of `quality`; None
        otherwise, and when the frame was overwritten while it was copied (the next grab
        takes a newer one). KeyError for a stream not attached."""
        rings = self._get(stream)
        with rings.lock:
            if rings.closed:
                raise KeyError(stream)
            seqs, _ = rings.frames.snapshot()
            if not len(seqs) or int(seqs[-1]) <= rings.last:
                return None
            seq = int(seqs[-1])
            try:
                image, t_ns = rings.frames.read(seq)
            except FrameLost:
                return None
            rings.last = seq
        height, wide = image.shape[:2]
        if wide > width:
            height = max(1, round(height * width / wide))
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:  # cv2 could not encode it: the next frame may do
            return None
        return Frame(
            stream=stream,
            seq=seq,
            t_ns=t_ns,
            width=image.shape[1],
            height=image.shape[0],
            jpeg=jpeg.tobytes(),
        )

    def level(self, stream: str) -> dict | None:
        """{"dbfs": RMS, "peak_dbfs": peak} of the stream's last LEVEL_S seconds of sound,
        in dBFS (20·log10, full scale 1.0; FLOOR_DBFS for silence); None without sound,
        or before any was heard. KeyError for a stream not attached."""
        rings = self._get(stream)
        with rings.lock:
            audio = rings.audio
            if rings.closed:
                raise KeyError(stream)
            if audio is None:
                return None
            count, _, _ = audio.clock()
            start = max(count - round(LEVEL_S * audio.sample_rate), audio.oldest_safe(count))
            if count <= start:
                return None
            samples = np.empty(count - start, np.float32)
            try:
                audio.read(start, samples)
            except FrameLost:  # overwritten while read: the next call measures anew
                return None
        rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
        peak = float(np.max(np.abs(samples)))
        return {"dbfs": dbfs(rms), "peak_dbfs": dbfs(peak)}
