"""Audio sources and the audio capture process.

`--mic` takes `default` (the system's default input), a device name (or a unique part
of it) or index, an audio or video file (its audio track, decoded with PyAV and paced
in real time; `--loop` repeats it), `synthetic` (a beep every second), or `none`.

Samples reach the AudioRing as mono float32 at the model's rate (16 kHz). A device that
cannot open at that rate captures at its own default rate and is resampled on the fly
(soxr, streaming, so there are no seams between blocks).

Time: a device block is stamped from PortAudio's ADC time of its first sample
(`inputBufferAdcTime`), mapped onto time.monotonic_ns() through the callback's
`currentTime`. File and synthetic samples are stamped by their place in the paced
timeline, which starts at the `start_ns` the parent hands out, shared with the video
capture, so `--camera clip.mp4 --mic clip.mp4` plays picture and sound in sync.

The capture process talks to its parent with the messages of stream/control.py
(AudioOpened or BadInput, then WriteRing, then AudioEnded or SourceFailed).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from stream import control
from stream.errors import SourceError, UserError

BLOCK_S = 0.016  # one block per log-mel hop: 16 ms
log = logging.getLogger("stream.capture.audio")


MEDIA_SUFFIXES = {
    ".wav",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".m4a",
    ".aac",
    ".mp4",
    ".m4v",
    ".mkv",
    ".webm",
    ".mov",
    ".avi",
}


def describe(spec: str) -> str:
    """device | file | synthetic | none, for `--mic spec`."""
    if spec in ("none", "synthetic"):
        return spec
    if spec == "default" or spec.isdigit():
        return "device"
    path = Path(spec)
    if path.exists() or path.suffix.lower() in MEDIA_SUFFIXES:
        return "file"
    return "device"


class AudioSource:
    """Base: `start(ring, start_ns)` begins writing blocks into the ring."""

    kind = "?"
    live = True
    rate: int  # the rate samples reach the ring at (the model's)

    def info(self) -> control.AudioOpened:
        return control.AudioOpened(
            kind=self.kind, rate=self.rate, live=self.live, description=self.description
        )

    def start(self, ring, start_ns: int) -> None:
        raise NotImplementedError

    def finished(self) -> bool:
        """True once a source with an end has written everything."""
        return False

    def failure(self) -> str | None:
        return None

    def close(self) -> None:
        pass


class _Resampler:
    """Streaming mono resampler to `out_rate` (identity when the rates match)."""

    def __init__(self, in_rate: int, out_rate: int):
        self.ratio = out_rate / in_rate
        self._stream = None
        if in_rate != out_rate:
            import soxr

            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return block
        return self._stream.resample_chunk(block, last=last)


#: What to do on a machine without a microphone, for the error lines that say so.
NO_MIC_HINT = (
    "pass --mic synthetic for test beeps, --mic FILE for the sound of an audio or video file, "
    "or --mic none for a video-only model"
)


def list_input_devices() -> list[tuple[int, str]]:
    import sounddevice as sd

    return [(i, d["name"]) for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]


class DeviceSource(AudioSource):
    """A PortAudio input device through sounddevice's callback stream."""

    kind = "device"

    def __init__(self, spec: str, rate: int):
        try:
            import sounddevice as sd
        except OSError as exc:  # PortAudio library missing
            raise SourceError(
                f"microphone input needs PortAudio ({exc}): install libportaudio2"
            ) from None
        self._sd = sd
        self.rate = rate
        devices = list_input_devices()
        if not devices:
            raise SourceError(
                f"no microphone: this machine has no audio input device (--mic {spec}): "
                f"{NO_MIC_HINT}"
            )
        listing = "; ".join(f"{i}: {n}" for i, n in devices)
        if spec == "default":
            device = None
        elif spec.isdigit():
            device = int(spec)
            if device not in {i for i, _ in devices}:
                raise SourceError(
                    f"microphone {spec} is not an input device; input devices: {listing}"
                )
        else:
            matches = [i for i, n in devices if n == spec] or [
                i for i, n in devices if spec.lower() in n.lower()
            ]
            if not matches:
                raise SourceError(f"microphone {spec!r} not found; input devices: {listing}")
            if len(matches) > 1:
                names = ", ".join(repr(n) for i, n in devices if i in matches)
                raise SourceError(
                    f"microphone {spec!r} matches several devices ({names}): "
                    "use its index or full name"
                )
            device = matches[0]
        self.device = device
        try:
            info = sd.query_devices(device, "input")
        except (ValueError, sd.PortAudioError) as exc:
            raise SourceError(
                f"microphone {spec} cannot be used ({exc}): pass --mic with the index or name of "
                f"an input device ({listing}), or {NO_MIC_HINT.removeprefix('pass ')}"
            ) from None
        self.description = info["name"]
        try:
            sd.check_input_settings(device, samplerate=rate, channels=1, dtype="float32")
            self.device_rate = rate
        except (ValueError, sd.PortAudioError):
            self.device_rate = int(info["default_samplerate"])
            log.info(
                "microphone %r cannot capture at %d Hz: capturing at %d Hz and resampling",
                self.description,
                rate,
                self.device_rate,
            )
        self._resample = _Resampler(self.device_rate, rate)
        self._block = max(16, round(self.device_rate * BLOCK_S))
        try:
            self._stream = sd.InputStream(
                device=device,
                samplerate=self.device_rate,
                channels=1,
                dtype="float32",
                blocksize=self._block,
                callback=self._callback,
                latency="low",
            )
        except sd.PortAudioError as exc:
            raise SourceError(
                f"microphone {self.description!r} cannot be opened ({exc}): "
                "is another program using it?"
            ) from None
        self._ring = None
        self._failure: str | None = None
        self._captured = 0
        self._t0 = 0.0

    def _callback(self, indata, frames, time_info, status) -> None:
        now_ns = time.monotonic_ns()
        ring = self._ring
        if ring is None:
            return
        if status.input_overflow:
            ring.add_overflow()
        lag = time_info.currentTime - time_info.inputBufferAdcTime
        if not (time_info.inputBufferAdcTime > 0 and 0 <= lag < 1.0):
            lag = frames / self.device_rate  # the host gave no ADC time: the block just completed
        t_first_ns = now_ns - round(lag * 1e9)
        out = self._resample(indata[:, 0])
        if len(out):
            ring.write(out, t_first_ns)
        # A device that delivers faster than real time (a file-backed virtual device)
        # is held to real time here; a real microphone never runs ahead.
        self._captured += frames
        ahead = self._t0 + self._captured / self.device_rate - time.monotonic()
        if ahead > 2 * BLOCK_S:
            time.sleep(ahead - BLOCK_S)

    def start(self, ring, start_ns: int) -> None:
        self._ring = ring
        self._t0 = time.monotonic()
        self._stream.start()

    def failure(self) -> str | None:
        if self._stream.active or self._ring is None:
            return None
        return f"microphone {self.description!r} stopped delivering audio"

    def close(self) -> None:
        try:
            self._stream.abort()
            self._stream.close()
        except self._sd.PortAudioError:
            pass


class _PacedSource(AudioSource):
    """Writes blocks from `_next_block()` on a real-time schedule starting at start_ns."""

    def __init__(self, rate: int):
        self.rate = rate
        self._block = round(rate * BLOCK_S)
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()
        self._done = False
        self._error: str | None = None

    def _next_block(self) -> np.ndarray | None:
        raise NotImplementedError

    def _run(self, ring, start_ns: int) -> None:
        written = 0
        origin = start_ns
        try:
            while not self._halt.is_set():
                block = self._next_block()
                if block is None:
                    self._done = True
                    return
                t_ns = origin + round(written * 1e9 / self.rate)
                delay = t_ns + round(len(block) * 1e9 / self.rate) - time.monotonic_ns()
                if delay > 0:  # a block is written once its last sample's time has come
                    self._halt.wait(delay / 1e9)
                elif -delay > 1e9:  # fell far behind (machine stalled): do not burst
                    origin += -delay
                    t_ns += -delay
                ring.write(block, t_ns)
                written += len(block)
        except Exception as exc:  # surfaced to the parent as a failure
            self._error = f"{self.kind} audio source failed: {exc}"

    def start(self, ring, start_ns: int) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(ring, start_ns), daemon=True, name="audio"
        )
        self._thread.start()

    def finished(self) -> bool:
        return self._done

    def failure(self) -> str | None:
        return self._error

    def close(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(1.0)


class SyntheticSource(_PacedSource):
    """A 0.1 s 880 Hz beep at the start of every second, silence otherwise."""

    kind = "synthetic"
    description = "synthetic beeps"

    def __init__(self, rate: int):
        super().__init__(rate)
        t = np.arange(rate) / rate
        self._second = np.where(t < 0.1, 0.3 * np.sin(2 * np.pi * 880 * t), 0.0).astype(np.float32)
        self._pos = 0

    def _next_block(self) -> np.ndarray:
        idx = (self._pos + np.arange(self._block)) % self.rate
        self._pos += self._block
        return self._second[idx]


class FileSource(_PacedSource):
    """The audio track of a file (wav, flac, ogg, mp3, or a video), decoded with PyAV.

    A packet that does not decode (a damaged frame, such as the first AC3 packet of
    OpenCV's sample Megamind.avi) is skipped and its span becomes silence, placed by the
    packets' timestamps, so that the samples after it keep their time and stay in sync
    with the picture. Only a track of which no packet decodes is an error.
    """

    kind = "file"
    live = False

    def __init__(self, spec: str, rate: int, *, loop: bool = False):
        super().__init__(rate)
        try:
            import av
        except ImportError:
            raise SourceError("reading audio files needs PyAV: pip install av") from None
        self._av = av
        path = Path(spec)
        if path.is_dir():
            raise SourceError(
                f"--mic {spec!r} is a folder: pass an audio or video file, a microphone name or "
                "index, synthetic, or none"
            )
        if not path.is_file():
            raise SourceError(
                f"audio file {spec!r} does not exist: check the path "
                "(or pass a device name to --mic)"
            )
        self.path = path
        self.loop = loop
        self.description = path.name
        self.skipped = 0  # undecodable packets, over all passes through the file
        self._skipped_s = 0.0  # the silence put in their place
        self._first_error: str | None = None
        self._reported = False
        self._buffer = np.zeros(0, np.float32)
        self._ended = False
        self._open()
        # Decode up to the first samples now, so that a track of which nothing decodes is
        # an error at start-up (one line, exit 2), not a capture that restarts forever.
        try:
            while len(self._buffer) == 0 and self._decode_packet():
                pass
        except self._av.error.FFmpegError as exc:
            self._container.close()
            raise SourceError(
                f"audio file {str(path)!r} cannot be read ({exc}): is it an audio or video file?"
            ) from None
        if self._pass_frames == 0:
            self._container.close()
            what = "pass a file with sound, a microphone or 'synthetic' to --mic"
            if self._pass_skipped == 0:
                raise SourceError(f"the audio track of {str(path)!r} is empty: {what}")
            raise SourceError(
                f"the audio track of {str(path)!r} cannot be decoded (none of its "
                f"{self._pass_skipped} packets decode: {self._first_error}): {what}"
            )

    def _open(self) -> None:
        av = self._av
        try:
            container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError) as exc:
            raise SourceError(
                f"audio file {str(self.path)!r} cannot be read ({exc}): "
                "is it an audio or video file?"
            ) from None
        if not container.streams.audio:
            container.close()
            raise SourceError(
                f"file {str(self.path)!r} has no audio track: pass a file with sound, "
                "a microphone or 'synthetic' to --mic"
            )
        self._container = container
        self._track = container.streams.audio[0]
        self._packets = container.demux(self._track)
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.rate)
        self._track_done = False
        self._pass_frames = 0
        self._pass_skipped = 0
        self._pending = False  # packets were skipped since the last decoded frame
        self._end_s: float | None = None  # track time just past the last decoded sample
        self._gap_from_s: float | None = None  # where the packets skipped since then begin
        self._gap_s = 0.0  # their durations, for packets without timestamps

    def _skip(self, packet, exc) -> None:
        """A packet that does not decode: remember where its span begins, to fill it."""
        self._pass_skipped += 1
        self.skipped += 1
        self._pending = True
        if self._first_error is None:
            self._first_error = getattr(exc, "strerror", None) or str(exc)
        if self._gap_from_s is None:
            if self._end_s is not None:
                self._gap_from_s = self._end_s
            elif self._track.start_time is not None and self._track.time_base is not None:
                self._gap_from_s = float(self._track.start_time * self._track.time_base)
            elif packet.pts is not None and packet.time_base is not None:
                self._gap_from_s = float(packet.pts * packet.time_base)
        if packet.duration and packet.time_base is not None:
            self._gap_s += float(packet.duration * packet.time_base)

    def _silence_before(self, frame) -> float:
        """Seconds of silence that put `frame` at its time after skipped packets."""
        if self._gap_from_s is not None and frame.pts is not None and frame.time_base is not None:
            gap = float(frame.pts * frame.time_base) - self._gap_from_s
        else:
            gap = self._gap_s
        self._pending, self._gap_from_s, self._gap_s = False, None, 0.0
        return max(0.0, gap)

    def _resample(self, frame) -> None:
        """Convert `frame` (None: what the resampler holds) into the buffer."""
        if frame is not None:
            frame.pts = None  # the timeline is kept here; the filter graph only converts
        chunks = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        if chunks:
            self._buffer = np.concatenate([self._buffer, *chunks]).astype(np.float32)

    def _take(self, frame) -> None:
        if self._pending:
            silence = round(self._silence_before(frame) * frame.sample_rate)
            if silence:
                zeros = self._av.AudioFrame(
                    format=frame.format.name, layout=frame.layout.name, samples=silence
                )
                for plane in zeros.planes:
                    plane.update(bytes(plane.buffer_size))
                zeros.sample_rate = frame.sample_rate
                self._resample(zeros)
                self._skipped_s += silence / frame.sample_rate
        duration = frame.samples / frame.sample_rate
        if frame.pts is not None and frame.time_base is not None:
            self._end_s = float(frame.pts * frame.time_base) + duration
        elif self._end_s is not None:
            self._end_s += duration
        self._pass_frames += 1
        self._resample(frame)

    def _decode_packet(self) -> bool:
        """Decode the next packet into the buffer; False at the end of the track."""
        if self._track_done:
            return False
        packet = next(self._packets, None)
        if packet is None:
            self._track_done = True
            self._resample(None)
            return False
        try:
            frames = packet.decode()
        except self._av.error.FFmpegError as exc:
            self._skip(packet, exc)
            return True
        for frame in frames:
            self._take(frame)
        return True

    def _report(self) -> None:
        """One warning per run about skipped packets (after the first pass, or at close)."""
        if self._reported or not self.skipped:
            return
        self._reported = True
        n = self.skipped
        log.warning(
            "skipped %d undecodable audio packet%s in %s (%s): %.3f s of silence in their place",
            n,
            "" if n == 1 else "s",
            self.path,
            self._first_error,
            self._skipped_s,
        )

    def _decode_more(self) -> bool:
        """Decode until the buffer grows; False once the track (with --loop: never) ends."""
        while not self._ended:
            before = len(self._buffer)
            more = self._decode_packet()
            if len(self._buffer) > before:
                return True
            if not more:
                self._end_pass()
        return False

    def _end_pass(self) -> None:
        self._report()
        self._container.close()
        if self.loop and self._pass_frames:
            self._open()
        else:
            self._ended = True

    def _next_block(self) -> np.ndarray | None:
        while len(self._buffer) < self._block:
            if not self._decode_more():
                if len(self._buffer) == 0:
                    return None
                break
        block, self._buffer = self._buffer[: self._block], self._buffer[self._block :]
        return block

    def close(self) -> None:
        super().close()
        self._report()
        try:
            self._container.close()
        except Exception:  # already closed
            pass


def open_source(spec: str, rate: int, *, loop: bool = False) -> AudioSource:
    """Open `--mic spec`; raises SourceError (one line, what to do) when it cannot."""
    kind = describe(spec)
    if kind == "none":
        raise UserError("--mic none: no audio source to open")
    if kind == "synthetic":
        return SyntheticSource(rate)
    if kind == "file":
        return FileSource(spec, rate, loop=loop)
    return DeviceSource(spec, rate)


def capture_main(
    spec: str, rate: int, loop: bool, log_level: str, parent_pid: int, conn, stop
) -> None:
    """Entry point of the audio capture process."""
    import sys

    from stream.pipeline.proc import init_child, parent_alive
    from stream.pipeline.ring import AudioRing

    init_child(log_level, parent_pid)
    try:
        source = open_source(spec, rate, loop=loop)
    except UserError as exc:
        conn.send(control.BadInput(str(exc)))
        return
    conn.send(source.info())
    ring_msg = None
    while ring_msg is None:
        if stop.is_set() or not parent_alive():
            source.close()
            return
        if conn.poll(0.05):
            match control.receive(conn, "the audio capture"):
                case control.WriteRing() as ring_msg:
                    pass
                case other:
                    control.unexpected(other, "the audio capture")
    ring = AudioRing.attach(ring_msg.name)
    code = 0
    try:
        source.start(ring, ring_msg.start_ns)
        while not stop.wait(0.05) and parent_alive():
            failure = source.failure()
            if failure:
                conn.send(control.SourceFailed(failure))
                code = 1
                break
            if source.finished():
                ring.close_writer()
                conn.send(control.AudioEnded(ring.clock()[0]))
                break
    finally:
        source.close()
        ring.close()
    sys.exit(code)
