"""The messages between our own processes: one frozen dataclass per message, sent
whole over the multiprocessing pipe between a child and its parent and told apart with
`match` (what the wire format is for ZeroMQ, this module is for the pipes).

The processes (each child has one pipe, to the main process). A run serves one or more
streams (ids cam0, cam1, ... or --stream-id); each stream has its own capture processes,
named after it (`capture_name`): `capture-video:cam0`, `capture-audio:cam0`.
  main           `python -m stream.run` (stream/pipeline/supervisor.py) or
                 `python -m stream.record` (stream/train/record.py); owns the rings
  capture-video  stream/capture/video.py: opens a stream's camera, writes its FrameRing
  capture-audio  stream/capture/audio.py: opens a stream's mic, writes its AudioRing
  inference      stream/pipeline/inference.py (stream.run only): one process for every
                 stream of the run, one engine; reads the rings, publishes predictions
  web            stream/web/process.py (stream.run --web only): the browser view; reads
                 the rings of the streams it is given, subscribes to the predictions

Who sends what to whom:
  capture → main     VideoOpened | AudioOpened  once, at start-up: the source delivers,
                                                in this format (again after a restart)
  capture → main     BadInput(line)             once, instead: the source does not open;
                                                the process exits
  main → capture     WriteRing(name, start_ns)  the ring to write into, and the start of
                                                the paced timeline (files and synthetic
                                                sources of one stream start together)
  capture → main     VideoEnded | AudioEnded    a file played to its end (the ring is
                                                closed for writing); the process exits 0
  capture → main     SourceFailed(line)         a live source broke; the process exits 1
  inference → main   ModelBuilt                 the model is built: its span and audio
                                                needs (main sizes the rings from them)
  inference → main   EngineReady                publisher bound, engine built (for batches
                                                up to max_batch) and warmed up; the warm-up
                                                window's seconds set the stop grace
  main → inference   StreamState                a stream the inference does not serve yet
                                                or any more: starting, restarting, ended,
                                                failed (for the run-level status)
  main → inference   AddStream                  serve a stream: its rings, its stride, the
                                                sources' kinds, its process ids
  main → inference   SourceHealth               a stream's capture process went down or
                                                came back
  main → inference   RemoveStream               stop serving a stream (removed, or its file
                                                ended): publish its last status, let go of
                                                its rings ...
  inference → main   StreamRemoved              ... done: main may unlink them
  inference → main   BadInput(line)             a user error at start-up (exit 2)
  inference → main   Crash(line)                a bug; the process exits 1 (exit 1)
  main → web         AddStream | RemoveStream   what the inference process gets, at the
                                                same moments: read a stream's rings, or
                                                let go of them (before they are unlinked)
  web → main         WebListening(url)          the view listens (again after a restart)
  web → main         BadInput(line)             it cannot listen (the port is in use):
                                                at start-up the run ends (exit 2); later
                                                it is restarted with backoff, as after a
                                                Crash(line) or its death: the run goes on
  bench-engine → stream.bench  BenchRow(row) | Crash(line)  the benchmark's engine-only
                                                measurement, run in a process of its own
A child that exits without a word is reported to main by its process group
(stream/pipeline/processes.py) as `Died(code)`; nothing sends it over a pipe.

Every receiver matches the classes it expects and raises `UnexpectedMessage` for
anything else (`receive` already for what is not a message of this module): a mistake
in the protocol is a loud bug, never a message silently dropped.

No numpy, no torch: only plain values cross the pipes.
"""

from __future__ import annotations

import dataclasses
from typing import NoReturn

#: The child processes' names (also their process names in the log).
CAPTURE_VIDEO = "capture-video"
CAPTURE_AUDIO = "capture-audio"
INFERENCE = "inference"
WEB = "web"


def capture_name(kind: str, stream: str) -> str:
    """The process name of a stream's capture process: `capture_name(CAPTURE_VIDEO, "cam0")`
    is `capture-video:cam0`."""
    return f"{kind}:{stream}"


def split_name(name: str) -> tuple[str, str | None]:
    """(kind, stream) of a process name: `capture-video:cam0` → (capture-video, cam0);
    `inference` → (inference, None)."""
    kind, _, stream = name.partition(":")
    return kind, stream or None


class UnexpectedMessage(TypeError):
    """A receiver got something it does not handle: a bug in the protocol."""


_message = dataclasses.dataclass(frozen=True, slots=True)


# -- capture → main ------------------------------------------------------------------


@_message
class VideoOpened:
    """The video source is open and has delivered a frame."""

    kind: str  # camera | file | url | synthetic
    width: int
    height: int
    fps: float
    paced: bool  # read() keeps real time itself (files, synthetic)
    live: bool  # False for a source with an end (a file)


@_message
class AudioOpened:
    """The audio source is open; samples reach the ring at `rate`."""

    kind: str  # device | file | synthetic
    rate: int
    live: bool
    description: str  # the device's name, the file's name, or "synthetic"


@_message
class VideoEnded:
    """A video file played to its end; the FrameRing is closed for writing."""

    frames: int


@_message
class AudioEnded:
    """An audio file played to its end; the AudioRing is closed for writing."""

    samples: int


@_message
class SourceFailed:
    """A live source stopped delivering (or its device failed)."""

    line: str


# -- capture or inference → main -----------------------------------------------------


@_message
class BadInput:
    """A user error at start-up: the one line that names the thing and what to do."""

    line: str


@_message
class Crash:
    """A bug in the child: one line (the traceback is in its log)."""

    line: str


# -- inference → main ----------------------------------------------------------------


@_message
class AudioNeeds:
    """What a listening model needs of the sound (part of ModelBuilt)."""

    rate: int
    span_s: float


@_message
class ModelBuilt:
    name: str
    span_s: float  # seconds of video one window covers
    audio: AudioNeeds | None  # None: a video-only model


@_message
class EngineReady:
    engine: str  # the engine's name, e.g. torch-cpu
    window_s: float  # seconds the last warm-up window took
    max_batch: int  # most windows one engine call runs


@_message
class StreamRemoved:
    """The inference process no longer reads the stream's rings (answer to RemoveStream)."""

    stream: str


# -- web → main ----------------------------------------------------------------------


@_message
class WebListening:
    """The browser view listens: its address, e.g. http://127.0.0.1:8080/."""

    url: str


# -- main → children -----------------------------------------------------------------


@_message
class WriteRing:
    """To a capture process: the ring to write into; a paced source's first sample is
    due at `start_ns` (time.monotonic_ns)."""

    name: str
    start_ns: int


@_message
class AddStream:
    """To the inference process: serve a stream from these rings."""

    stream: str  # its id: topics pred.<id>, status.<id>
    stride: float  # seconds between its windows
    video: str  # the FrameRing's name
    fps: float
    video_kind: str
    audio: str | None  # the AudioRing's name; None without sound
    audio_kind: str | None
    # process name -> pid, for its status: main, capture-video, capture-audio (this
    # stream's, under their kind's name), inference
    processes: dict[str, int]


@_message
class RemoveStream:
    """To the inference process: stop serving a stream; answered with StreamRemoved."""

    stream: str
    reason: str  # removed | ended | failed: its last status says so


@_message
class StreamState:
    """To the inference process: a stream it does not serve (yet, or any more), for the
    run-level status."""

    stream: str
    state: str  # starting | restarting | ended | failed | removed
    reason: str | None


@_message
class SourceHealth:
    """To the inference process: a stream's capture process is down (and restarts
    later) or up."""

    stream: str
    name: str  # capture-video | capture-audio (the kind, without the stream)
    state: str  # up | down
    reason: str | None  # why it went down
    restarts: int
    pid: int | None  # of the process now running it


# -- bench-engine → stream.bench -----------------------------------------------------


@_message
class BenchRow:
    """One engine-only measurement of `python -m stream.bench` (a JSON-ready row)."""

    row: dict


# -- main's own ----------------------------------------------------------------------


@_message
class Died:
    """A child exited without a word (its pipe closed): its exit code."""

    code: int | None


Message = (
    VideoOpened
    | AudioOpened
    | VideoEnded
    | AudioEnded
    | SourceFailed
    | BadInput
    | Crash
    | ModelBuilt
    | EngineReady
    | StreamRemoved
    | WebListening
    | WriteRing
    | AddStream
    | RemoveStream
    | StreamState
    | SourceHealth
    | BenchRow
    | Died
)
#: Every message class (for `receive` and the tests).
MESSAGES: tuple[type, ...] = Message.__args__


def unexpected(message: object, where: str) -> NoReturn:
    """What a receiver's `case _:` does."""
    raise UnexpectedMessage(f"{where} got an unexpected message: {message!r}")


def receive(conn, where: str) -> Message:
    """The next message on `conn` (waits); UnexpectedMessage when what arrives is not one
    of this module's messages (EOFError when the other end has closed)."""
    message = conn.recv()
    if not isinstance(message, MESSAGES):
        unexpected(message, where)
    return message
