"""`python -m stream.record`: record labelled clips (video with its sound) for training.

    python -m stream.record --camera 0 --mic default --label clapping \\
        --seconds 3 --count 20 --out data/

writes `data/clapping/clapping-<YYYYmmdd-HHMMSS>-<NNN>.mp4`, the dataset format of
stream/train/clips.py (one folder per label). Before each clip a countdown; while it records,
a progress bar on a terminal; after it, one line saying what became of it (all on stderr).

The sources are those of `python -m stream.run`, opened by the same capture processes
into the same shared-memory rings with the same timestamps (the process group and ring
plan of stream.run's supervisor, with recording in place of inference): what a model sees
in a recorded clip is what it sees live. A clip is `--seconds` of frames from the first
frame captured after the
countdown, every frame read from the ring as it arrives; its sound is the audio samples
of the same span of the monotonic clock (sample 0 at the first frame's capture time),
cut by the stream's own `AudioSampler`.

A clip is written only once it is complete (`clips.write_clip` writes a hidden file and
renames it): Ctrl-C, SIGTERM, a source that ends or fails during a clip drop that clip
and keep the earlier ones. Existing files are never overwritten.

Exit status: 0 when every clip was recorded, and after Ctrl-C or SIGTERM (an orderly stop:
one line says how many clips were kept); 1 when a source ended (a file without --loop) or
failed first, after a line saying how many clips were recorded and why; 2 for bad input
(one `error:` line, nothing started or written). Every exit path stops the children and
unlinks the shared memory.
"""

from __future__ import annotations

from stream._deps import require_pipeline

require_pipeline("python -m stream.record")  # before the imports that need the `run` extra

import argparse
import dataclasses
import logging
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stream import config, control
from stream.capture import audio as audio_capture
from stream.capture import video as video_capture
from stream.control import CAPTURE_AUDIO, CAPTURE_VIDEO
from stream.errors import ArgumentParser, EndOfStream, UserError, error_line
from stream.pipeline.proc import setup_logging
from stream.pipeline.processes import STARTING_GRACE_S, STOP_GRACE_S, ProcessGroup, StopSignals
from stream.pipeline.ring_plan import RingPlan
from stream.pipeline.window import AudioSampler

log = logging.getLogger("stream.record")

PROG = "python -m stream.record"
#: Sample rate of the recorded sound: the models' audio front end (AVSlowFast: 16 kHz).
AUDIO_RATE = 16_000
#: Frames are read as they arrive, so the frame ring only has to cover a stall of this
#: process; it holds a clip plus a margin, but never more than this many seconds.
RING_MAX_S = 10.0
#: How long, after a clip's last frame, its last audio sample may take to arrive
#: (device blocks are 16 ms; a loaded machine delays them).
AUDIO_WAIT_S = 1.0
#: Sound missing at the end of a clip (zero-filled) that still counts as a complete clip
#: when the audio source has ended: the audio track of a file may be a little shorter.
AUDIO_END_SLACK_S = 0.1
#: A folder name: what `list_dataset` takes as a label and every filesystem accepts.
LABEL_RE = re.compile(r"[A-Za-z0-9_.-]{1,100}")
#: The bar while a clip records: `clip 3/20 <bar> 1.5/3.0 s`.
BAR_FORMAT = "{desc} {bar} {n:4.1f}/{total:.1f} s{postfix}"


@dataclasses.dataclass
class RecordOptions:
    label: str
    camera: str = "0"
    mic: str = "default"
    seconds: float = 3.0
    count: int = 10
    out: str = "data"
    countdown: int = 3
    size: str | None = None
    fps: float | None = None
    loop: bool = False
    log_level: str = "warning"

    @property
    def folder(self) -> Path:
        return Path(self.out) / self.label

    def validate(self) -> RecordOptions:
        """Check every value (touches nothing); raises UserError naming the flag."""
        if not LABEL_RE.fullmatch(self.label) or self.label.startswith("."):
            raise UserError(
                f"--label {self.label!r} is not a folder name: "
                "use letters, digits, '_', '-' and '.' "
                "(at most 100, not starting with a dot), e.g. --label clapping"
            )
        if not (self.seconds > 0 and math.isfinite(self.seconds)):
            raise UserError(
                f"--seconds {self.seconds} must be > 0 (the length of each clip, e.g. 3)"
            )
        if self.count < 1:
            raise UserError(f"--count {self.count} must be >= 1 (how many clips to record)")
        if self.countdown < 0:
            raise UserError(f"--countdown {self.countdown} must be >= 0 seconds (0: no countdown)")
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise UserError(f"--fps {self.fps} must be > 0")
        config.parse_size(self.size)
        if not self.camera:
            raise UserError(
                "--camera is empty: pass a camera index, a video file, a URL or 'synthetic'"
            )
        if not self.mic:
            raise UserError(
                "--mic is empty: pass default, a device name or index, an audio/video file, "
                "synthetic or none"
            )
        check_output_folder(self.folder)
        return self


def check_output_folder(folder: Path) -> None:
    """The clips' folder can be made and written to; nothing is created here."""
    if folder.exists():
        if not folder.is_dir():
            raise UserError(
                f"--out: {str(folder)!r} is a file, not a folder: pass another --out or --label"
            )
        existing = folder
    else:
        existing = folder.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise UserError(
                f"--out: {str(existing)!r} is a file, not a folder: pass a folder to --out"
            )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"--out: cannot write into {str(existing)!r} (permission denied): "
            "pass a folder you can write to"
        )


def build_parser() -> argparse.ArgumentParser:
    d = RecordOptions
    p = ArgumentParser(
        prog=PROG,
        description="Record labelled clips (video with its sound) from a camera and a microphone, "
        "into <out>/<label>/*.mp4.",
    )
    a = p.add_argument
    a(
        "--camera",
        default=d.camera,
        help="camera index, video file, URL (http/rtsp/udp...) or 'synthetic' "
        f"(default {d.camera})",
    )
    a(
        "--mic",
        default=d.mic,
        help="microphone: default, a device name or index, an audio/video file, synthetic, "
        f"or none for video only (default {d.mic})",
    )
    a("--label", required=True, help="what the clips show, e.g. clapping: the name of their folder")
    a(
        "--seconds",
        type=float,
        default=d.seconds,
        help=f"length of each clip in seconds (default {d.seconds:g})",
    )
    a("--count", type=int, default=d.count, help=f"how many clips to record (default {d.count})")
    a("--out", default=d.out, help=f"dataset folder; clips go to OUT/LABEL/ (default {d.out})")
    a(
        "--countdown",
        type=int,
        default=d.countdown,
        help=f"seconds of countdown before each clip, 0 for none (default {d.countdown})",
    )
    a("--size", help="capture size WIDTHxHEIGHT for cameras and synthetic (e.g. 640x480)")
    a("--fps", type=float, help="capture rate for cameras and synthetic")
    a("--loop", action="store_true", help="repeat a video file instead of stopping at its end")
    a("--log-level", default=d.log_level, choices=config.LOG_LEVELS, help=f"default {d.log_level}")
    return p


def parse_options(argv: list[str] | None = None) -> RecordOptions:
    """Flags → checked RecordOptions; UserError (or SystemExit(2) from argparse)."""
    return RecordOptions(**vars(build_parser().parse_args(argv))).validate()


def clip_path(folder: Path, label: str, number: int, wall_s: float) -> Path:
    """`<label>-<YYYYmmdd-HHMMSS>-<NNN>.mp4` in `folder`, the first number from `number`
    on whose file does not exist yet (two runs in one second do not overwrite)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(wall_s))
    while True:
        path = folder / f"{label}-{stamp}-{number:03d}.mp4"
        if not path.exists():
            return path
        number += 1


def _seconds(s: float) -> str:
    """3 -> '3.0', 0.25 -> '0.25'."""
    return f"{s:.1f}" if round(s, 1) == s else f"{s:g}"


class _Stop(Exception):
    """Recording ends before every clip is done: why, and the exit status (0: the user
    asked for it)."""

    def __init__(self, reason: str, code: int):
        super().__init__(reason)
        self.reason, self.code = reason, code
        self.dropped_clip = False  # a clip was being recorded and is not written


def _interrupted(signal_name: str) -> _Stop:
    """Ctrl-C or SIGTERM: an orderly stop (the clips finished so far are kept)."""
    return _Stop(f"interrupted ({signal_name})", 0)


class Recorder:
    """The capture processes and rings of stream.run (a process group, shared memory
    that this process owns); this process records."""

    def __init__(self, opts: RecordOptions):
        self.opts = opts
        self.group = ProcessGroup()
        self.signals = StopSignals()
        self.rings = RingPlan()
        self.running = False  # recording: the children get a grace period to stop
        self.with_audio = audio_capture.describe(opts.mic) != "none"
        self.video: control.VideoOpened | None = None
        self.audio: control.AudioOpened | None = None
        self.ended: set[str] = set()  # captures whose file has ended
        self.saved: list[Path] = []

    # -- life cycle ----------------------------------------------------------------------

    def run(self) -> int:
        with self.signals:
            try:
                self._start_children()
                return self._record()
            except UserError as exc:
                print(error_line(exc), file=sys.stderr, flush=True)
                return 2
            finally:
                self._shutdown()

    def _shutdown(self) -> None:
        self.group.stop_all(STOP_GRACE_S if self.running else STARTING_GRACE_S, warn=self.running)
        self.rings.close()

    # -- start-up ----------------------------------------------------------------------

    def _start_children(self) -> None:
        opts = self.opts
        self.group.start(
            CAPTURE_VIDEO,
            video_capture.capture_main,
            (
                opts.camera,
                config.parse_size(opts.size),
                opts.fps,
                opts.loop,
                opts.log_level,
                os.getpid(),
            ),
        )
        if self.with_audio:
            self.group.start(
                CAPTURE_AUDIO,
                audio_capture.capture_main,
                (opts.mic, AUDIO_RATE, opts.loop, opts.log_level, os.getpid()),
            )

    def _same_file(self) -> bool:
        cam, mic = Path(self.opts.camera), Path(self.opts.mic)
        return cam.is_file() and mic.is_file() and cam.resolve() == mic.resolve()

    def _open_sources(self) -> None:
        """Wait until every capture has opened its source (or raise its error)."""
        while self.video is None or (self.with_audio and self.audio is None):
            if self.signals.received:
                raise _interrupted(self.signals.received)
            msg = self.group.receive(0.1)
            if msg is None:
                continue
            name, message = msg
            match message:
                case control.VideoOpened():
                    self.video = message
                case control.AudioOpened():
                    self.audio = message
                case control.BadInput(line) if name == CAPTURE_AUDIO and self._same_file():
                    raise UserError(f"{line} (or --mic none to record video only)")
                case control.BadInput(line):
                    raise UserError(line)
                case _:
                    self._child_problem(name, message)

    def _make_rings(self) -> None:
        """Rings for a clip plus a margin; paced sources start on one timeline."""
        video, opts = self.video, self.opts
        self.rings.create(
            video,
            min(opts.seconds, RING_MAX_S),
            # The sound of a clip is cut once its last frame is in: the whole clip and
            # the wait for its last block.
            audio_rate=AUDIO_RATE if self.with_audio else None,
            audio_s=opts.seconds + AUDIO_WAIT_S,
        )
        for name, message in self.rings.handout().items():
            self.group.send(name, message)
        self.running = True

    # -- the children while recording ----------------------------------------------------

    def _child_problem(self, name: str, message: control.Message) -> None:
        source = self.opts.camera if name == CAPTURE_VIDEO else self.opts.mic
        match message:
            case control.SourceFailed(line) | control.Crash(line) | control.BadInput(line):
                raise _Stop(line, 1)
            case control.Died(code):
                raise _Stop(
                    f"the {name} process of {source!r} exited unexpectedly (exit code {code})", 1
                )
            case _:
                control.unexpected(message, f"stream.record (from {name})")

    def _check(self, timeout: float = 0.0) -> None:
        """Signals and messages of the children; raises _Stop when recording must end."""
        if self.signals.received:
            raise _interrupted(self.signals.received)
        while (msg := self.group.receive(timeout)) is not None:
            timeout = 0.0
            name, message = msg
            match message:
                case control.VideoEnded() | control.AudioEnded():
                    self.ended.add(name)  # the ring says the rest (EndOfStream, no more samples)
                case control.Died(0) if name in self.ended:
                    self.group.forget(name)  # it finished its file and exited
                case _:
                    self._child_problem(name, message)

    def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._check(min(0.05, left))

    # -- recording ----------------------------------------------------------------------

    def _record(self) -> int:
        opts = self.opts
        try:
            self._open_sources()
            self._make_rings()
            if not self.with_audio:
                print(
                    "--mic none: recording video only (the clips have no sound)",
                    file=sys.stderr,
                    flush=True,
                )
            print(
                f"recording {self._what(opts.count)} into {opts.folder} from {self._sources()}; "
                "Ctrl-C stops",
                file=sys.stderr,
                flush=True,
            )
            for number in range(1, opts.count + 1):
                self._countdown(number)
                self._record_clip(number)
        except _Stop as stop:
            done = len(self.saved)
            if stop.code == 0:
                where = f"in {opts.folder}" if done else "(nothing was written)"
                dropped = "; the clip being recorded was dropped" if stop.dropped_clip else ""
                line = f"{stop.reason}: kept {done} of {self._what(opts.count)} {where}{dropped}"
            else:
                line = (
                    f"{stop.reason}: recorded {done} of {self._what(opts.count)} into {opts.folder}"
                )
            print(line, file=sys.stderr, flush=True)
            return stop.code
        print(
            f"recorded {self._what(len(self.saved))} into {opts.folder} ({self._format()})",
            flush=True,
        )
        return 0

    def _what(self, n: int) -> str:
        return f"{n} clip{'s' if n != 1 else ''} of {self.opts.label!r}"

    def _format(self) -> str:
        v = self.video
        audio = f"audio {AUDIO_RATE} Hz" if self.with_audio else "no audio"
        return (
            f"{_seconds(self.opts.seconds)} s each, "
            f"video {v.width}x{v.height} at {v.fps:g} fps, {audio}"
        )

    def _sources(self) -> str:
        v, a = self.video, self.audio
        names = {
            "camera": f"camera {self.opts.camera}",
            "file": f"video file {self.opts.camera!r}",
            "url": f"video stream {self.opts.camera}",
            "synthetic": "the synthetic test pattern",
        }
        video = f"{names.get(v.kind, self.opts.camera)} ({v.width}x{v.height} at {v.fps:g} fps)"
        if a is None:
            return video
        sound = {
            "device": f"microphone {a.description!r}",
            "file": f"the sound of {a.description!r}",
            "synthetic": "synthetic beeps",
        }
        return f"{video} and {sound.get(a.kind, a.description)} ({a.rate} Hz)"

    def _countdown(self, number: int) -> None:
        if self.opts.countdown <= 0:
            return
        err = sys.stderr
        err.write(f"clip {number}/{self.opts.count} in")
        err.flush()
        try:
            for left in range(self.opts.countdown, 0, -1):
                err.write(f" {left}...")
                err.flush()
                self._wait(1.0)
        finally:
            err.write("\n")
            err.flush()

    def _record_clip(self, number: int) -> None:
        """Record one clip and write it; raises _Stop (and writes nothing) when it cannot
        be completed."""
        opts = self.opts
        ring = self.rings.frames
        period_ns = round(1e9 / self.video.fps)
        span_ns = round(opts.seconds * 1e9)
        prefix = f"clip {number}/{opts.count}"
        # A bar on a terminal only (tqdm's rule: none in a log or a pipe), gone when the
        # clip ends; the line printed then says what became of the clip.
        bar = tqdm(
            total=opts.seconds, desc=prefix, bar_format=BAR_FORMAT, disable=None, leave=False,
            dynamic_ncols=True,
        )  # fmt: skip
        frames: list[np.ndarray] = []
        times: list[int] = []
        after = ring.next_seq - 1  # the clip starts with the next frame captured
        t0 = wall0 = t_end_ns = None
        lost = 0
        try:
            while True:
                self._check()
                try:
                    seq, frame, t_ns = ring.read_next(after, timeout=0.05)
                except TimeoutError:
                    continue
                except EndOfStream:
                    # The source ended; the clip is complete when its last frame was due.
                    if times and times[-1] + period_ns >= t_end_ns:
                        break
                    raise _Stop(self._ended_reason(), 1) from None
                if t0 is None:
                    t0, wall0 = t_ns, time.time() - (time.monotonic_ns() - t_ns) / 1e9
                    # Frames due before t0 + seconds; half a period of slack for the jitter
                    # of capture times, so a 1 s clip at 30 fps holds 30 frames.
                    t_end_ns = t0 + span_ns - period_ns // 2
                elif seq > after + 1:
                    lost += seq - after - 1
                after = seq
                if t_ns >= t_end_ns:
                    break
                frames.append(frame)
                times.append(t_ns)
                bar.update((t_ns - t0) / 1e9 - bar.n)
            if lost:
                log.warning(
                    "clip %d: %d frames were lost (this process fell behind the camera)",
                    number,
                    lost,
                )
            audio = self._cut_audio(number, t0) if self.with_audio else None
        except _Stop as stop:
            bar.close()
            print(f"{prefix}  dropped ({stop.reason})", file=sys.stderr, flush=True)
            stop.dropped_clip = True
            raise
        bar.set_postfix_str("saving...")
        try:
            path = self._save(number, wall0, frames, times, t0, audio)
        finally:
            bar.close()
        print(f"{prefix}  {len(frames)} frames -> {path}", file=sys.stderr, flush=True)

    def _cut_audio(self, number: int, t0_ns: int) -> np.ndarray:
        """The samples of [t0, t0 + seconds) once they have arrived (zeros where missing)."""
        ring = self.rings.audio
        n = round(self.opts.seconds * AUDIO_RATE)
        sampler = AudioSampler(ring, n)
        deadline = time.monotonic() + AUDIO_WAIT_S
        while not sampler.arrived(t0_ns) and not ring.closed and time.monotonic() < deadline:
            self._check(0.01)
        window = sampler.sample(t0_ns)
        if window.missing:
            first, _ = sampler.span(t0_ns)
            count = ring.clock()[0]
            short_end = first + n - count  # samples that never arrived at the end
            if ring.closed and short_end > AUDIO_END_SLACK_S * AUDIO_RATE:
                raise _Stop(f"the sound of {self.opts.mic!r} ended", 1)
            if window.missing > AUDIO_END_SLACK_S * AUDIO_RATE / 2:
                log.warning(
                    "clip %d: %.0f ms of sound were not captured (silence in their place)",
                    number,
                    window.missing * 1000 / AUDIO_RATE,
                )
        return window.samples.copy()

    def _ended_reason(self) -> str:
        if self.video.kind == "file":
            return f"the video file {self.opts.camera!r} ended (--loop repeats it)"
        return f"the video stream {self.opts.camera} ended"

    def _save(self, number: int, wall_s: float, frames, times, t0_ns: int, audio) -> Path:
        from stream.train.clips import write_clip

        folder = self.opts.folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = clip_path(folder, self.opts.label, number, wall_s)
            times_s = (np.asarray(times, dtype=np.int64) - t0_ns) / 1e9
            write_clip(path, np.stack(frames), times_s, audio, AUDIO_RATE)
        except OSError as exc:
            raise _Stop(f"cannot write into {str(folder)!r} ({exc.strerror or exc})", 1) from None
        self.saved.append(path)
        return path


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse_options(argv)
    except UserError as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    setup_logging(opts.log_level)
    return Recorder(opts).run()
