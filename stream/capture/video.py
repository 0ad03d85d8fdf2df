"""Video sources and the video capture process.

`--camera` takes a camera index (`0`), a video file path (paced at the file's frame
rate, `--loop` repeats it), an http/https/rtsp/rtp/udp/tcp URL (a live stream, read as
it arrives), or `synthetic` (a moving test pattern at `--size` and `--fps`).

Every frame is stamped with `time.monotonic_ns()` right after `grab()` (before the
decode in `retrieve()`), the closest point to the hardware that OpenCV exposes.
Cameras are asked for a one-frame buffer so that the frames we get are fresh.

The capture process talks to its parent over a pipe with the messages of stream/control.py
(VideoOpened or BadInput, then WriteRing, then VideoEnded or SourceFailed), and exits
when the parent sets the stop event or goes away.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from stream import control
from stream.errors import SourceError, UserError

URL_SCHEMES = (
    "http://",
    "https://",
    "rtsp://",
    "rtsps://",
    "rtp://",
    "udp://",
    "tcp://",
    "rtmp://",
)
#: How long a network stream may take to open or to deliver a frame.
NETWORK_TIMEOUT_MS = 5000
DEFAULT_SYNTHETIC_SIZE = (640, 480)
DEFAULT_FPS = 30.0


def describe(spec: str) -> str:
    """What kind of source `--camera spec` names: camera | file | url | synthetic."""
    if spec == "synthetic":
        return "synthetic"
    if spec.isdigit():
        return "camera"
    if spec.lower().startswith(URL_SCHEMES):
        return "url"
    return "file"


class VideoSource:
    """Base class: `read()` returns (BGR uint8 frame, t_capture_ns) or None at the end."""

    kind = "?"
    paced = False  # True when read() itself keeps real time (files, synthetic)
    live = True  # False for sources with an end (files)
    width: int
    height: int
    fps: float

    def read(self) -> tuple[np.ndarray, int] | None:
        raise NotImplementedError

    def start(self, start_ns: int) -> None:
        """Start the clock of a paced source at `start_ns` (shared with the audio capture)."""

    def skip(self) -> None:
        """Drop one frame (keeps a live source fresh while nobody consumes)."""

    def close(self) -> None:
        pass

    def info(self) -> control.VideoOpened:
        return control.VideoOpened(
            kind=self.kind,
            width=self.width,
            height=self.height,
            fps=self.fps,
            paced=self.paced,
            live=self.live,
        )


class _PacedClock:
    """Real-time schedule of a paced source: frame i is due at origin + i * period.

    A source that falls more than a period behind (slow decoding, a stalled machine)
    moves its origin instead of bursting to catch up.
    """

    def __init__(self, period_ns: int):
        self.period_ns = period_ns
        self._next_ns: int | None = None

    def start(self, start_ns: int) -> None:
        self._next_ns = start_ns

    def wait_next(self) -> int:
        """Sleep until the next frame is due; returns its due time."""
        now = time.monotonic_ns()
        if self._next_ns is None or now - self._next_ns > self.period_ns:
            self._next_ns = now
        elif self._next_ns > now:
            time.sleep((self._next_ns - now) / 1e9)
        due, self._next_ns = self._next_ns, self._next_ns + self.period_ns
        return due


class SyntheticSource(VideoSource):
    """A moving pattern: a gradient that scrolls and a bright square that bounces."""

    kind = "synthetic"
    paced = True

    def __init__(self, size: tuple[int, int] | None, fps: float | None):
        self.width, self.height = size or DEFAULT_SYNTHETIC_SIZE
        self.fps = fps or DEFAULT_FPS
        self._period_ns = round(1e9 / self.fps)
        y = np.linspace(0, 255, self.height, dtype=np.float32)[:, None]
        x = np.linspace(0, 255, self.width, dtype=np.float32)[None, :]
        base = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)  # (H, W, 3)
        self._base = np.concatenate([base, base], axis=1)  # scroll by slicing, no copy per frame
        self._frame = np.empty((self.height, self.width, 3), dtype=np.uint8)
        self._i = 0
        self._clock = _PacedClock(self._period_ns)

    def start(self, start_ns: int) -> None:
        self._clock.start(start_ns)

    def read(self) -> tuple[np.ndarray, int]:
        self._clock.wait_next()
        t_ns = time.monotonic_ns()  # like a camera: when the frame is there, jitter included
        i, self._i = self._i, self._i + 1
        shift = (i * 4) % self.width
        np.copyto(self._frame, self._base[:, shift : shift + self.width])
        side = max(8, min(self.width, self.height) // 6)
        span_x, span_y = self.width - side, self.height - side
        px = abs((i * 7) % (2 * span_x) - span_x) if span_x else 0
        py = abs((i * 5) % (2 * span_y) - span_y) if span_y else 0
        self._frame[py : py + side, px : px + side] = 255
        return self._frame, t_ns


class OpenCVSource(VideoSource):
    """A camera, a video file or a network stream through OpenCV's VideoCapture."""

    def __init__(
        self,
        spec: str,
        *,
        size: tuple[int, int] | None = None,
        fps: float | None = None,
        loop: bool = False,
    ):
        import cv2  # imported here: only the capture process needs OpenCV

        self._cv2 = cv2
        self.spec = spec
        self.kind = describe(spec)
        self.loop = loop
        if self.kind == "camera":
            cap = cv2.VideoCapture(int(spec))
            if cap.isOpened():
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
                if size:
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
                if fps:
                    cap.set(cv2.CAP_PROP_FPS, fps)
            failure = (
                f"camera {spec} did not open: check that it is connected and not used by another "
                "program (or pass a video file, a URL or 'synthetic' to --camera)"
            )
        elif self.kind == "url":
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                NETWORK_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                NETWORK_TIMEOUT_MS,
            ]
            cap = cv2.VideoCapture(spec, cv2.CAP_FFMPEG, params)
            failure = (
                f"video stream {spec} did not answer within {NETWORK_TIMEOUT_MS / 1000:.0f} s: "
                "check the address and that the camera or server is running"
            )
        else:
            path = Path(spec)
            if not path.exists():
                raise SourceError(
                    f"video file {spec!r} does not exist: check the path (or pass a camera index)"
                )
            if not path.is_file() or not os.access(path, os.R_OK):
                raise SourceError(f"video file {spec!r} is not a readable file")
            cap = cv2.VideoCapture(str(path))
            failure = f"video file {spec!r} cannot be decoded: is it a video that ffmpeg can read?"
        self._cap = cap
        # A source counts as open once it has delivered a frame.
        first = self._grab_retrieve() if cap.isOpened() else None
        if first is None:
            cap.release()
            raise SourceError(failure)
        self.height, self.width = first[0].shape[:2]
        reported = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(reported) if 0 < reported < 1000 else (fps or DEFAULT_FPS)
        frame_count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        # Files, and URLs that serve a finite file, are paced to real time.
        self.live = not (self.kind == "file" or (self.kind == "url" and frame_count > 0))
        self.paced = not self.live
        self._clock = _PacedClock(round(1e9 / self.fps))
        if not self.live:
            self._rewind()

    def start(self, start_ns: int) -> None:
        self._clock.start(start_ns)

    def _grab_retrieve(self) -> tuple[np.ndarray, int] | None:
        if not self._cap.grab():
            return None
        t_ns = time.monotonic_ns()
        ok, frame = self._cap.retrieve()
        if not ok or frame is None:
            return None
        if frame.ndim == 2:  # grey cameras
            frame = self._cv2.cvtColor(frame, self._cv2.COLOR_GRAY2BGR)
        return frame, t_ns

    def _rewind(self) -> bool:
        if self._cap.set(self._cv2.CAP_PROP_POS_FRAMES, 0):
            return True
        self._cap.release()
        self._cap = self._cv2.VideoCapture(self.spec)
        return self._cap.isOpened()

    def read(self) -> tuple[np.ndarray, int] | None:
        scheduled = self._clock.wait_next() if self.paced else None
        got = self._grab_retrieve()
        if got is None and self.loop and not self.live and self._rewind():
            got = self._grab_retrieve()
        if got is None:
            return None
        frame, t_ns = got
        if scheduled is not None:
            t_ns = scheduled  # a file frame's capture time is its place in the paced timeline
        if frame.shape[:2] != (self.height, self.width):  # a camera that changed mode
            frame = self._cv2.resize(
                frame, (self.width, self.height), interpolation=self._cv2.INTER_AREA
            )
        return frame, t_ns

    def skip(self) -> None:
        if self.live:
            self._cap.grab()

    def close(self) -> None:
        self._cap.release()


def open_source(
    spec: str, *, size: tuple[int, int] | None = None, fps: float | None = None, loop: bool = False
) -> VideoSource:
    """Open `--camera spec`; raises SourceError (one line, what to do) when it cannot."""
    if not spec:
        raise UserError(
            "--camera is empty: pass a camera index, a video file, a URL or 'synthetic'"
        )
    if describe(spec) == "synthetic":
        return SyntheticSource(size, fps)
    return OpenCVSource(spec, size=size, fps=fps, loop=loop)


def quiet_opencv(log_level: str) -> None:
    """Keep OpenCV's and FFmpeg's own messages off the terminal unless debugging.

    Must run before cv2 is imported in this process; errors reach the user through
    our own one-line messages instead.
    """
    if log_level != "debug":
        os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
        os.environ.setdefault("OPENCV_VIDEOIO_DEBUG", "0")


def capture_main(
    spec: str,
    size: tuple[int, int] | None,
    fps: float | None,
    loop: bool,
    log_level: str,
    parent_pid: int,
    conn,
    stop,
) -> None:
    """Entry point of the video capture process (see the module docstring)."""
    import logging
    import sys

    from stream.pipeline.proc import init_child, parent_alive
    from stream.pipeline.ring import FrameRing

    init_child(log_level, parent_pid)
    quiet_opencv(log_level)
    log = logging.getLogger("stream.capture.video")
    try:
        source = open_source(spec, size=size, fps=fps, loop=loop)
    except UserError as exc:
        conn.send(control.BadInput(str(exc)))
        return
    conn.send(source.info())
    ring_msg = None
    while ring_msg is None:  # while the model loads: keep a live source fresh
        if stop.is_set() or not parent_alive():
            source.close()
            return
        if conn.poll(0.01):
            match control.receive(conn, "the video capture"):
                case control.WriteRing() as ring_msg:
                    pass
                case other:
                    control.unexpected(other, "the video capture")
        elif source.live:
            source.skip()
    ring = FrameRing.attach(ring_msg.name)
    source.start(ring_msg.start_ns)
    resize = (source.height, source.width) != ring.shape[:2]  # a restart at another size
    if resize:
        import cv2

        log.warning(
            "the source now gives %dx%d frames: resizing them to the ring's %dx%d",
            source.width,
            source.height,
            ring.shape[1],
            ring.shape[0],
        )
    frames = 0
    code = 0
    try:
        while not stop.is_set() and parent_alive():
            got = source.read()
            if got is not None:
                frame, t_ns = got
                if resize:
                    frame = cv2.resize(
                        frame, (ring.shape[1], ring.shape[0]), interpolation=cv2.INTER_AREA
                    )
                ring.write(frame, t_ns)
                frames += 1
                continue
            if source.live:
                conn.send(
                    control.SourceFailed(
                        f"{source.kind} {spec} stopped delivering frames after {frames}"
                    )
                )
                code = 1
            else:
                ring.close_writer()
                conn.send(control.VideoEnded(frames))
            break
    finally:
        ring.close()
        source.close()
        log.debug("video capture wrote %d frames", frames)
    sys.exit(code)
