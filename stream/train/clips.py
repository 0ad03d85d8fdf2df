"""Labelled clips on disk: one video file with its sound per clip, decoded with PyAV.

This is the dataset format that `python -m stream.record` writes and `python -m
stream.train` reads:

    data/
      clapping/  *.mp4   (any video file FFmpeg reads: .mp4 .mkv .mov .avi .webm)
      whistling/ *.mp4
      nothing/   *.mp4

One folder per label; the folder's name is the label. Clips hold frames as the capture
ring does (BGR uint8) with their times, and the audio track as mono float32, both on the
clip's own timeline (seconds from its first frame), so that a window is cut from a clip
exactly as the stream cuts it from the rings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from models._files import write_atomically
from stream.errors import UserError

#: File name suffixes `list_dataset` takes as clips (FFmpeg reads many more, but a folder
#: also holds notes, thumbnails and partial downloads).
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v")
#: Time base of written video: MPEG's 90 kHz clock, so frame times keep 11 µs of the
#: capture times and 24, 25, 30 and 60 fps periods are whole ticks.
VIDEO_TIME_BASE = Fraction(1, 90_000)


class ClipError(UserError):
    """A clip that cannot be read or written; the message names the file."""


@dataclass
class Clip:
    path: Path
    frames: np.ndarray  # (N, H, W, 3) uint8 BGR, as in the capture ring
    times_s: np.ndarray  # (N,) float64: each frame's time, seconds from the clip's start
    audio: np.ndarray | None  # (S,) float32 mono at sample_rate, sample 0 at time 0
    sample_rate: int

    @property
    def duration_s(self) -> float:
        """From the first frame to one frame period past the last."""
        if len(self.times_s) < 2:
            return 0.0
        return float(self.times_s[-1] + np.median(np.diff(self.times_s)))


def _av():
    try:
        import av
    except ImportError:
        raise ClipError("reading and writing clips needs PyAV: pip install av") from None
    return av


def read_clip(
    path: str | os.PathLike[str], *, sample_rate: int = 16_000, max_short_side: int | None = None
) -> Clip:
    """Decode a whole clip: every video frame with its time, and the first audio track
    resampled to mono `sample_rate` (None when the file has no audio track).

    Frames whose short side exceeds `max_short_side` are scaled down on decoding (keeping
    the aspect ratio), which saves memory when the model's input is much smaller.
    Raises ClipError naming the file.
    """
    av = _av()
    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise ClipError(
            f"clip {str(path)!r} cannot be read ({exc}): delete or replace the file"
        ) from None
    try:
        if not container.streams.video:
            raise ClipError(f"clip {str(path)!r} has no video track: delete it or record it again")
        vstream = container.streams.video[0]
        vstream.thread_type = "AUTO"
        frames: list[np.ndarray] = []
        times: list[float] = []
        size = None
        try:
            for frame in container.decode(vstream):
                if size is None:
                    size = _decoded_size(frame.width, frame.height, max_short_side)
                if size != (frame.width, frame.height):
                    frame = frame.reformat(width=size[0], height=size[1])
                frames.append(frame.to_ndarray(format="bgr24"))
                times.append(
                    float(frame.time)
                    if frame.time is not None
                    else len(times) / float(vstream.average_rate or 30)
                )
        except av.error.FFmpegError as exc:
            raise ClipError(
                f"clip {str(path)!r} is damaged ({exc}): delete or replace the file"
            ) from None
        if not frames:
            raise ClipError(f"clip {str(path)!r} has no video frames: delete it or record it again")
        start = times[0]
        audio = None
        if container.streams.audio:
            audio = _read_audio(av, path, sample_rate, start)
    finally:
        container.close()
    return Clip(
        path=path,
        frames=np.stack(frames),
        times_s=np.asarray(times, dtype=np.float64) - start,
        audio=audio,
        sample_rate=sample_rate,
    )


def _decoded_size(width: int, height: int, max_short_side: int | None) -> tuple[int, int]:
    short = min(width, height)
    if max_short_side is None or short <= max_short_side:
        return width, height
    scale = max_short_side / short
    return max(1, round(width * scale)), max(1, round(height * scale))


def _read_audio(av, path: Path, sample_rate: int, video_start_s: float) -> np.ndarray:
    """The first audio track as mono float32, sample 0 at the first video frame's time."""
    try:
        with av.open(str(path)) as container:
            astream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            chunks: list[np.ndarray] = []
            first_s = None
            for frame in container.decode(astream):
                if first_s is None and frame.time is not None:
                    first_s = float(frame.time)
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    except av.error.FFmpegError as exc:
        raise ClipError(
            f"clip {str(path)!r} has a damaged audio track ({exc}): delete or replace the file"
        ) from None
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    # Put sample 0 at the first video frame: pad when the sound starts later, trim when
    # it starts earlier.
    offset = round(((first_s or 0.0) - video_start_s) * sample_rate)
    if offset > 0:
        audio = np.concatenate([np.zeros(offset, np.float32), audio])
    elif offset < 0:
        audio = audio[-offset:]
    return audio


def write_clip(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    times_s: np.ndarray,
    audio: np.ndarray | None,
    sample_rate: int,
) -> None:
    """Write BGR frames at their times (seconds from the clip's start, variable rate is
    kept) and mono float32 audio (sample 0 at time 0) as H.264 + AAC in MP4.

    The file appears complete or not at all: it is written under a hidden temporary name
    in the same folder and renamed at the end.
    """
    av = _av()
    path = Path(path)
    frames = np.asarray(frames)
    times_s = np.asarray(times_s, dtype=np.float64)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"expected (N, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    if times_s.shape != (len(frames),) or np.any(np.diff(times_s) <= 0):
        raise ValueError("times_s needs one strictly increasing time per frame")
    # yuv420p needs even sizes: drop a last odd row or column.
    height, width = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    rate = round(1.0 / float(np.median(np.diff(times_s)))) if len(times_s) > 1 else 30
    with write_atomically(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        vstream = container.add_stream("libx264", rate=max(rate, 1))
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        # The encoder's time base would otherwise be 1/rate: two frames captured
        # closer than a frame period (a capture that caught up after a stall) would
        # get the same pts there, and the muxer refuses the repeated timestamp.
        vstream.codec_context.time_base = VIDEO_TIME_BASE
        vstream.time_base = VIDEO_TIME_BASE
        vstream.options = {"crf": "18", "preset": "veryfast"}
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=sample_rate)
            astream.layout = "mono"
        last_pts = -1
        for image, t in zip(frames, times_s - times_s[0]):
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(image[:height, :width]), format="bgr24"
            )
            frame.pts = max(round(t / VIDEO_TIME_BASE), last_pts + 1)
            frame.time_base = VIDEO_TIME_BASE
            last_pts = frame.pts
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode())
        if astream is not None:
            samples = np.asarray(audio, dtype=np.float32).reshape(1, -1)
            block = 1024
            for i in range(0, samples.shape[1], block):
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(samples[:, i : i + block]), format="flt", layout="mono"
                )
                frame.sample_rate = sample_rate
                frame.pts = i
                frame.time_base = Fraction(1, sample_rate)
                container.mux(astream.encode(frame))
            container.mux(astream.encode())


def list_dataset(root: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """`root/<label>/<clip>` → {label: sorted clip paths}, labels sorted.

    Raises ClipError for a missing root, a root without label folders, or a label folder
    without clips; hidden files and folders (a `.part` file of an interrupted recording)
    are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise ClipError(
            f"dataset folder {str(root)!r} does not exist: "
            f"record clips with python -m stream.record --out {root}"
        )
    dataset: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        clips = sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in VIDEO_SUFFIXES
        )
        if not clips:
            raise ClipError(
                f"label folder {str(folder)!r} holds no clips ({', '.join(VIDEO_SUFFIXES)}): "
                f"record some or remove the folder"
            )
        dataset[folder.name] = clips
    if not dataset:
        raise ClipError(
            f"dataset folder {str(root)!r} has no label folders: put clips in {root}/<label>/ "
            f"(python -m stream.record does)"
        )
    return dataset
