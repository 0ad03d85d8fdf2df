"""The supervisor of `python -m stream.run`: starts the inference process and each
stream's capture processes, makes each stream's shared-memory rings once the model's
span and the stream's formats are known, adds and removes streams while the run runs
(its control socket, `python -m stream.ctl`), restarts a capture process that died, and
stops everything (children, shared memory) on every exit path.

The main process owns the shared memory (a RingPlan per stream,
stream/pipeline/ring_plan.py) and supervises its children (a ProcessGroup,
stream/pipeline/processes.py; spawned, so no torch state is forked), which talk to it
with the messages of stream/control.py:
  capture-video:ID  opens the stream's camera, writes frames into its FrameRing
  capture-audio:ID  for models that listen: opens the stream's mic, writes its AudioRing
  inference         one for the run: builds the model and engine, cuts every stream's
                    windows, runs them in batches, publishes on ZeroMQ
  web               with --web: the browser view (stream/web/process.py), given each
                    stream's rings as the inference process is; it subscribes to a
                    local endpoint of the publisher in a private folder of this process
Start-up runs them all in parallel (the cameras open while the model loads). A
stream's rings are made, sized from the model's span and the stream's sizes and rates,
and handed to its capture processes as soon as those are known when its sources are
live (so its first window fills while the engine loads), or once the engine is ready
when one is a file (so a file starts playing when its frames can be used); then, once
the engine is ready, the stream goes to the inference process (AddStream). Streams
never wait for each other.

While running, a stream's capture process that dies is restarted with backoff (its
source's health goes to the inference process, which reports it on the stream's status
topic); a file that ends without --loop ends its stream alone (RemoveStream, and the
rings are unlinked once the inference process has let go of them: StreamRemoved). The
run ends on a signal, --duration, the preview window closed, or when every stream has
ended (exit 0); a user error of a stream named at start-up ends it with that line
(exit 2), the inference process failing ends it with exit 1. The web process that dies
is restarted with backoff, as a capture is (the run goes on); its port in use at
start-up ends the run (exit 2).

The control socket (stream/transport/ctl.py) is bound before any child starts; its
requests are served by the same loop, which never waits on one: an add is answered
when the new stream's camera has opened and the stream is handed to the inference
process, meanwhile the loop goes on supervising the others.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import socket
import sys
import time

from engines import malloc
from stream import config, control
from stream.capture import audio as audio_capture
from stream.capture import video as video_capture
from stream.control import CAPTURE_AUDIO, CAPTURE_VIDEO, INFERENCE, WEB, capture_name
from stream.errors import UserError, error_line
from stream.pipeline.inference import inference_main
from stream.pipeline.processes import (
    STARTING_GRACE_S,
    STOP_GRACE_S,
    ProcessGroup,
    StopSignals,
)
from stream.pipeline.ring_plan import RingPlan
from stream.transport import ctl
from stream.web.process import private_folder, web_main

log = logging.getLogger("stream.run")

#: How long the supervising loop waits for a child's message before it looks at the
#: signals, the timers and the control socket again (a stream.ctl request waits at most
#: this long to be read).
POLL_S = 0.05
#: After a file ends, its stream is removed this long later (at most: twice its stride)
#: so that its last windows are published.
ENDING_S = 1.0

#: States of a stream (run-level status, `stream.ctl list`):
#   starting  its captures open; not yet served by the inference process
#   running   served (its capture may be restarting: its status topic says degraded)
#   ending    its file ended: removed once its last windows are out
#   removing  stream.ctl remove: waiting for the inference process to let go
#   ended     its file ended; everything of it is gone (listed until added again)
#   failed    added, accepted, then could not start (its rings); everything of it is gone
ENDED = "ended"
FAILED = "failed"
FINISHED = (ENDED, FAILED)


def rings_due(
    *,
    ready: bool,
    model: control.ModelBuilt | None,
    video: control.VideoOpened | None,
    audio: control.AudioOpened | None,
    audio_ready: bool,
) -> bool:
    """Whether a stream's rings can be made and capture into them start now.

    Live sources (cameras, network streams, synthetic) start as soon as the model's span
    and the sources' formats are known, so the first window's frames arrive while the
    engine is still loading. A file (video or sound) starts only once the engine is
    ready, so that none of it plays to nobody."""
    if model is None or video is None or not audio_ready:
        return False
    live = video.live and (audio is None or audio.live)
    return ready or live


@dataclasses.dataclass(eq=False)
class _Stream:
    """What the supervisor knows of one stream."""

    spec: config.StreamSpec
    rings: RingPlan
    # Named at start-up (flags or config): its user error ends the run, as with one camera.
    initial: bool
    state: str = "starting"
    reason: str | None = None
    video: control.VideoOpened | None = None
    audio: control.AudioOpened | None = None
    served: bool = False  # AddStream sent, StreamRemoved not yet received
    added: control.AddStream | None = None  # what the inference (and web) process got
    ends_at: float = math.inf  # its file ended: when to remove it
    add: ctl.Request | None = None  # a stream.ctl add waiting for the camera
    add_deadline: float = math.inf
    remove: ctl.Request | None = None  # a stream.ctl remove waiting for StreamRemoved

    @property
    def id(self) -> str:
        return self.spec.id

    def name(self, kind: str) -> str:
        return capture_name(kind, self.spec.id)


class Supervisor:
    def __init__(self, cfg: config.RunConfig):
        self.cfg = cfg
        self.group = ProcessGroup()
        self.signals = StopSignals()
        self.streams: dict[str, _Stream] = {}
        self.control: ctl.ControlServer | None = None
        self.model: control.ModelBuilt | None = None
        self.engine: control.EngineReady | None = None
        self.running = False  # past start-up: children get a grace period to stop
        # The inference process gets twice its warm-up window time on top (EngineReady),
        # so that a window in progress when the stop came can finish (a slow model's
        # takes seconds).
        self.stop_grace_s = STOP_GRACE_S
        self._swept = False  # the first RingPlan sweeps stale segments; the others need not
        # Messages for the inference process before it is ready: it reads its pipe only then.
        self._held: list[control.Message] = []
        self._web_dir: str | None = None  # --web: the private folder of the local endpoint
        self.web_url: str | None = None  # where the web process listens, once it does

    # -- life cycle --------------------------------------------------------------------

    def run(self) -> int:
        with self.signals:
            try:
                self._open_control()
                self._start_children()
                return self._supervise()
            except UserError as exc:
                print(error_line(exc), file=sys.stderr, flush=True)
                return 2
            except _RunFailed as exc:
                print(error_line(exc), file=sys.stderr, flush=True)
                return 1
            finally:
                self._shutdown()

    def _open_control(self) -> None:
        """Bind the control socket before any child starts: a port in use is one line."""
        cfg = self.cfg
        if cfg.control is not None:
            self.control = ctl.ControlServer(
                cfg.control,
                curve_secret_key=cfg.curve_secret_key,
                curve_clients=cfg.curve_clients,
            )

    def _start_children(self) -> None:
        cfg = self.cfg
        if cfg.web is not None:
            self._web_dir = private_folder()
            cfg.web_endpoint = f"ipc://{self._web_dir}/pub"
        with malloc.preloaded(cfg.malloc):  # only the engine's process gains from it
            self.group.start(INFERENCE, inference_main, (cfg, os.getpid()))
        if cfg.web is not None:  # at once: the page answers while the model loads
            self.group.start(WEB, web_main, (cfg, os.getpid()))
        for spec in cfg.streams:
            self._start_stream(spec, initial=True)

    def _shutdown(self) -> None:
        if self.control is not None:
            for s in self.streams.values():
                for pending in (s.add, s.remove):
                    if pending is not None:
                        self.control.reply(pending, ctl.refused("stream.run is stopping"))
            self.control.close()
        grace = self.stop_grace_s if self.running else STARTING_GRACE_S
        self.group.stop_all(grace, warn=self.running)
        for s in self.streams.values():
            s.rings.close()
        if self._web_dir is not None:
            shutil.rmtree(self._web_dir, ignore_errors=True)

    # -- streams -----------------------------------------------------------------------

    def _start_stream(
        self, spec: config.StreamSpec, *, initial: bool, add: ctl.Request | None = None
    ) -> None:
        """Start the stream's video capture (and its audio capture once the model is known
        to listen); its rings follow when its formats are known. `add`: the stream.ctl
        request that asked for it, answered once the stream is served (or cannot be)."""
        s = _Stream(spec, RingPlan(sweep=not self._swept), initial, add=add)
        if add is not None:
            s.add_deadline = time.monotonic() + ctl.ADD_DEADLINE_S
        self._swept = True
        self.streams[spec.id] = s
        self.group.start(
            s.name(CAPTURE_VIDEO),
            video_capture.capture_main,
            (
                spec.camera,
                config.parse_size(spec.size),
                spec.fps,
                spec.loop,
                self.cfg.log_level,
                os.getpid(),
            ),
        )
        self._tell(control.StreamState(spec.id, "starting", None))
        if self.model is not None:
            self._try(s, self._start_audio)

    def _start_audio(self, s: _Stream) -> None:
        """Start the stream's audio capture once the model is known to listen."""
        model = self.model
        if model.audio is None:
            return
        if audio_capture.describe(s.spec.mic) == "none":
            where = "" if len(self.cfg.streams) == 1 and s.initial else f" for stream {s.id}"
            raise UserError(
                f"{model.name} listens as well as watches but --mic is none{where}: pass --mic "
                "default, a device name or index, an audio/video file, or synthetic"
            )
        self.group.start(
            s.name(CAPTURE_AUDIO),
            audio_capture.capture_main,
            (s.spec.mic, model.audio.rate, s.spec.loop, self.cfg.log_level, os.getpid()),
        )

    def _audio_ready(self, s: _Stream) -> bool:
        return self.model is not None and (self.model.audio is None or s.audio is not None)

    def _progress(self, s: _Stream) -> None:
        """Make the stream's rings and hand them out when due; serve it once the engine
        is ready."""
        if s.state != "starting":
            return
        if s.rings.frames is None and rings_due(
            ready=self.engine is not None,
            model=self.model,
            video=s.video,
            audio=s.audio,
            audio_ready=self._audio_ready(s),
        ):
            model, audio = self.model, s.audio
            # A window's sound is centred on its frames' centre and read up to a stride
            # late: the two spans and the stride bound how far back it reaches.
            s.rings.create(
                s.video,
                model.span_s,
                audio_rate=None if audio is None else audio.rate,
                audio_s=0.0 if audio is None else model.audio.span_s + model.span_s + s.spec.stride,
            )
            for kind, message in s.rings.handout().items():
                self.group.send(s.name(kind), message)
        if s.rings.frames is not None and self.engine is not None and not s.served:
            self._serve(s)

    def _serve(self, s: _Stream) -> None:
        """Hand the stream to the inference process."""
        video, audio = s.video, s.audio
        processes = {"main": os.getpid()}
        for kind in (CAPTURE_VIDEO, CAPTURE_AUDIO):
            pid = self.group.pid(s.name(kind))
            if pid is not None:
                processes[kind] = pid
        s.added = control.AddStream(
            stream=s.id,
            stride=s.spec.stride,
            video=s.rings.frames.name,
            fps=video.fps,
            video_kind=video.kind,
            audio=None if s.rings.audio is None else s.rings.audio.name,
            audio_kind=None if audio is None else audio.kind,
            processes=processes,
        )
        self._tell(s.added)
        self._tell_web(s.added)
        s.served = True
        s.state = "running"
        if self.running:
            log.info("stream %s: publishing (pred.%s, status.%s)", s.id, s.id, s.id)
        if s.add is not None:
            self._reply(s.add, ctl.ok(stream=self._describe(s)))
            s.add = None

    def _capture_down(self, s: _Stream, kind: str, reason: str) -> None:
        """A capture process died or lost its source: restart it later, with backoff."""
        name = s.name(kind)
        delay = self.group.down(name)
        restarts = self.group.restarts[name]
        log.warning(
            "stream %s: %s stopped (%s): restart %d in %.1f s", s.id, kind, reason, restarts, delay
        )
        if s.served:
            self._health(s, kind, "down", reason)
        else:
            self._tell(control.StreamState(s.id, "restarting", reason))

    def _health(self, s: _Stream, kind: str, state: str, reason: str | None) -> None:
        """Source health for the stream's status topic (and its degraded predictions)."""
        name = s.name(kind)
        self._tell(
            control.SourceHealth(
                stream=s.id,
                name=kind,
                state=state,
                reason=reason,
                restarts=self.group.restarts.get(name, 0),
                pid=self.group.pid(name),
            )
        )

    def _fail(self, s: _Stream, line: str) -> None:
        """A stream added with stream.ctl that cannot start (its camera or mic did not
        open, its rings do not fit): everything of it goes. Its add still waiting gets
        the error, and the id is free again; one already answered stays listed, failed."""
        log.warning("stream %s %s: %s", s.id, "not added" if s.add else "failed", line)
        self._stop_captures(s)
        s.rings.close()
        s.state, s.reason = FAILED, line
        if s.add is not None:
            self._reply(s.add, ctl.refused(line))
            s.add = None
            del self.streams[s.id]
        self._tell(control.StreamState(s.id, FAILED, line))

    def _stop_captures(self, s: _Stream) -> None:
        for kind in (CAPTURE_VIDEO, CAPTURE_AUDIO):
            self.group.stop_one(s.name(kind), STOP_GRACE_S)

    def _finish(self, s: _Stream, reason: str) -> None:
        """End a stream (its file ended, or stream.ctl removed it): its captures stop,
        the inference process lets go of its rings, then they are unlinked."""
        self._stop_captures(s)
        s.state = "ending" if reason == ENDED else "removing"
        s.ends_at = math.inf
        if s.served:
            self._tell(control.RemoveStream(s.id, reason))  # answered with StreamRemoved
            self._tell_web(control.RemoveStream(s.id, reason))
        else:
            self._released(s)

    def _released(self, s: _Stream) -> None:
        """The inference process no longer reads the stream's rings: unlink them."""
        s.rings.close()
        s.served = False
        if s.state == "removing" or s.remove is not None:
            log.info("stream %s removed", s.id)
            del self.streams[s.id]
            self._tell(control.StreamState(s.id, "removed", None))
        else:
            log.info("stream %s ended", s.id)
            s.state = ENDED
            self._tell(control.StreamState(s.id, ENDED, s.reason))
        if s.remove is not None:
            self._reply(s.remove, ctl.ok(stream=s.id))
            s.remove = None

    # -- messages from the children ----------------------------------------------------

    def _tell(self, message: control.Message) -> None:
        """To the inference process (held until it is ready: it reads its pipe only then)."""
        if self.engine is None:
            self._held.append(message)
            return
        try:
            self.group.send(INFERENCE, message)
        except (OSError, KeyError):
            pass  # it is gone: its exit reaches the loop

    def _tell_web(self, message: control.Message) -> None:
        """To the web process, when there is one running (a restarted one gets every
        served stream: `_web_started`)."""
        if WEB in self.group:
            try:
                self.group.send(WEB, message)
            except OSError:
                pass  # it is gone: its exit reaches the loop

    def _web_started(self) -> None:
        """The web process was restarted: it reads the served streams' rings again."""
        for s in self.streams.values():
            if s.served:
                self._tell_web(s.added)

    def _from_web(self, message: control.Message) -> None:
        match message:
            case control.WebListening(url):
                if self.web_url is not None:
                    log.info("the web view is back after restart %d", self.group.restarts[WEB])
                self.web_url = url
            case control.BadInput(line) if self.web_url is None:
                raise UserError(line)  # its port is in use: at start-up, exit 2
            case control.BadInput(line) | control.Crash(line):
                self._web_down(line)
            case control.Died(code):
                self._web_down(f"exit code {code}")
            case _:
                control.unexpected(message, f"stream.run (from {WEB})")

    def _web_down(self, reason: str) -> None:
        """The web process died: the run goes on, and it restarts later, with backoff."""
        delay = self.group.down(WEB)
        restarts = self.group.restarts[WEB]
        log.warning("the web view stopped (%s): restart %d in %.1f s", reason, restarts, delay)

    def _from_inference(self, message: control.Message) -> None:
        match message:
            case control.ModelBuilt():
                self.model = message
                for s in list(self.streams.values()):
                    if s.state == "starting":
                        self._try(s, self._start_audio)
            case control.EngineReady(window_s=window_s):
                self.engine = message
                self.stop_grace_s = STOP_GRACE_S + 2 * window_s
                held, self._held = self._held, []
                for m in held:
                    self._tell(m)
            case control.StreamRemoved(stream=stream_id):
                s = self.streams.get(stream_id)
                if s is not None and s.state in ("ending", "removing"):
                    self._released(s)
            case control.BadInput(line):
                raise UserError(line)
            case control.Crash(line):
                raise _RunFailed(line)
            case control.Died(code):
                raise _RunFailed(f"the inference process exited unexpectedly (exit code {code})")
            case _:
                control.unexpected(message, "stream.run (from inference)")
        for s in list(self.streams.values()):
            self._try(s, self._progress)

    def _try(self, s: _Stream, step) -> None:
        """`step(s)`; a user error of a stream added with stream.ctl fails that stream
        alone (one named at start-up ends the run, as with one camera)."""
        try:
            step(s)
        except UserError as exc:
            if s.initial:
                raise
            self._fail(s, str(exc))

    def _from_capture(self, s: _Stream, kind: str, message: control.Message) -> None:
        name = s.name(kind)
        if s.state not in ("starting", "running"):  # the stream goes: its captures stop
            if not isinstance(message, (control.VideoOpened, control.AudioOpened)):
                self.group.forget(name)  # it exits (or has)
            return
        match message:
            case control.VideoOpened() | control.AudioOpened():
                self._opened(s, kind, message)
            case control.VideoEnded(frames=frames):
                self.group.forget(name)  # it exits
                log.info("end of %s after %d frames: stream %s ends", s.spec.camera, frames, s.id)
                s.reason = f"end of {s.spec.camera}"
                s.state = "ending"
                if s.served:  # its last windows are published first
                    s.ends_at = time.monotonic() + min(ENDING_S, 2 * s.spec.stride)
                else:
                    self._finish(s, ENDED)
            case control.AudioEnded():
                self.group.forget(name)  # it exits; the stream goes on with its video
                log.info("end of the audio of %s (stream %s)", s.spec.mic, s.id)
            case control.BadInput(line) if s.add is None and s.initial and not s.served:
                raise UserError(line)  # at start-up, as with one camera: exit 2
            case control.BadInput(line) | control.SourceFailed(line) | control.Crash(line):
                self._down_or_fail(s, kind, line)
            case control.Died(code) if s.add is not None:
                self._fail(s, f"the {name} process exited unexpectedly (exit code {code})")
            case control.Died(code):
                self._capture_down(s, kind, f"exit code {code}")
            case _:
                control.unexpected(message, f"stream.run (from {name})")

    def _down_or_fail(self, s: _Stream, kind: str, line: str) -> None:
        """A stream's capture failed: an add still waiting for it is refused with the
        line; otherwise the capture restarts with backoff."""
        if s.add is not None:
            self._fail(s, line)
        else:
            self._capture_down(s, kind, line)

    def _opened(self, s: _Stream, kind: str, message) -> None:
        name = s.name(kind)
        first = (s.video if kind == CAPTURE_VIDEO else s.audio) is None
        if first and kind == CAPTURE_VIDEO:
            s.video = message
            log.info(
                "%s video: %s %dx%d at %.1f fps%s",
                s.id,
                message.kind,
                message.width,
                message.height,
                message.fps,
                " (paced)" if message.paced else "",
            )
        elif first:
            s.audio = message
            log.info(
                "%s audio: %s %r at %d Hz", s.id, message.kind, message.description, message.rate
            )
        if not first:  # a restarted capture
            restarts = self.group.restarts.get(name, 0)
            log.info("stream %s: %s is back after restart %d", s.id, kind, restarts)
            if s.rings.frames is not None:
                self.group.send(name, s.rings.handout()[kind])
            if s.served:
                self._health(s, kind, "up", None)
        self._try(s, self._progress)

    # -- stream.ctl ----------------------------------------------------------------------

    def _reply(self, request: ctl.Request, body: dict) -> None:
        if self.control is not None:
            self.control.reply(request, body)

    def _describe(self, s: _Stream) -> dict:
        """A stream as stream.ctl lists it."""
        out = {"id": s.id, "state": s.state, "camera": s.spec.camera}
        if self.model is None or self.model.audio is not None:
            out["mic"] = s.spec.mic
        out["stride"] = s.spec.stride
        if s.reason:
            out["reason"] = s.reason
        kinds = (CAPTURE_VIDEO, CAPTURE_AUDIO)
        pids = {kind: self.group.pid(s.name(kind)) for kind in kinds}
        out["processes"] = {kind: pid for kind, pid in pids.items() if pid is not None}
        out["restarts"] = sum(self.group.restarts.get(s.name(kind), 0) for kind in kinds)
        return out

    def _serve_control(self) -> None:
        if self.control is None:
            return
        for request in self.control.poll():
            body = request.body
            match request.op:
                case "list":
                    self._reply(request, ctl.ok(streams=self._stream_list()))
                case "status":
                    self._reply(request, ctl.ok(**self._status()))
                case "add":
                    self._add(request)
                case "remove":
                    self._remove(request, body["id"])

    def _stream_list(self) -> list[dict]:
        return [self._describe(s) for s in self.streams.values()]

    def _status(self) -> dict:
        cfg = self.cfg
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "state": "running" if self.running else "starting",
            "model": None if self.model is None else self.model.name,
            "engine": None if self.engine is None else self.engine.engine,
            "max_batch": None if self.engine is None else self.engine.max_batch,
            "publish": cfg.publish,
            "control": cfg.control,
            "processes": {"main": os.getpid(), **self.group.pids()},
            "streams": self._stream_list(),
        }

    def _add(self, request: ctl.Request) -> None:
        body = request.body
        stream_id = body["id"]
        existing = self.streams.get(stream_id)
        if existing is not None and existing.state not in FINISHED:
            self._reply(
                request,
                ctl.refused(
                    f"stream {stream_id} exists ({existing.state}): pick another id, or remove "
                    f"it first with python -m stream.ctl remove {stream_id}"
                ),
            )
            return
        try:
            spec = self._spec_of(body)
        except UserError as exc:
            self._reply(request, ctl.refused(str(exc)))
            return
        if existing is not None:  # an ended stream's id: the new one takes its place
            del self.streams[stream_id]
        log.info("stream.ctl: adding stream %s (%s)", spec.id, spec.camera)
        self._start_stream(spec, initial=False, add=request)

    def _spec_of(self, body: dict) -> config.StreamSpec:
        """The stream an add asks for: the fields it leaves out take the run's values;
        checked as the run's own streams are (UserError with the line)."""
        cfg = self.cfg
        spec = config.StreamSpec(
            id=body["id"],
            camera=body["camera"],
            mic=body.get("mic", cfg.mic),
            size=body.get("size", cfg.size),
            fps=body.get("fps", cfg.fps),
            loop=body.get("loop", cfg.loop),
            stride=body.get("stride", cfg.stride),
        )
        config.check_path_text("camera", spec.camera)
        config.check_path_text("mic", spec.mic)
        cfg.check_new_stream(spec)
        return spec

    def _remove(self, request: ctl.Request, stream_id: str) -> None:
        s = self.streams.get(stream_id)
        if s is None:
            known = ", ".join(self.streams) or "none"
            self._reply(
                request,
                ctl.refused(
                    f"no stream {stream_id} in this run (its streams: {known}): "
                    "python -m stream.ctl list shows them"
                ),
            )
            return
        if s.remove is not None:
            self._reply(request, ctl.refused(f"stream {stream_id} is being removed already"))
            return
        if s.add is not None:
            self._fail(s, f"stream {stream_id} was removed before its camera opened")
            self._reply(request, ctl.ok(stream=stream_id))
            return
        log.info("stream.ctl: removing stream %s", stream_id)
        if s.state in FINISHED:  # nothing of it is left but its line in the list
            del self.streams[stream_id]
            self._tell(control.StreamState(stream_id, "removed", None))
            self._reply(request, ctl.ok(stream=stream_id))
            return
        s.remove = request
        if s.state == "removing":
            return  # the inference process lets go of it
        if s.state == "ending":  # its file ended: it goes already
            if s.ends_at != math.inf:
                self._finish(s, ENDED)
            return
        self._finish(s, "removed")

    # -- the loop ------------------------------------------------------------------------

    def _timers(self) -> None:
        now = time.monotonic()
        for s in list(self.streams.values()):
            if s.state == "ending" and now >= s.ends_at:
                self._finish(s, ENDED)
            elif s.add is not None and now >= s.add_deadline:
                late = None
                if s.video is None:
                    late = f"the camera {s.spec.camera}"
                elif not self._audio_ready(s) and self.model is not None:
                    late = f"the microphone {s.spec.mic}"
                if late is not None:
                    self._fail(
                        s,
                        f"{late} of stream {s.id} did not open within {ctl.ADD_DEADLINE_S:g} s: "
                        "check it, then add the stream again",
                    )
                else:  # open, but the engine is not ready yet: it starts with the run
                    self._reply(s.add, ctl.ok(stream=self._describe(s)))
                    s.add = None

    def _started(self) -> bool:
        """Start-up is over: the engine is ready, every stream named at start-up is
        served (or has ended already), and the web view listens (unless it failed)."""
        web_waited = self.web_url is not None or WEB not in self.group
        return (
            self.engine is not None
            and web_waited
            and all(s.served or s.state in FINISHED for s in self.streams.values() if s.initial)
        )

    def _running_line(self) -> str:
        cfg = self.cfg
        ids = [s.id for s in self.streams.values() if s.initial]
        if len(ids) == 1:
            topics = f"pred.{ids[0]}, status.{ids[0]}"
        else:
            topics = f"pred.ID and status.ID of {', '.join(ids)}"
        control_on = "" if cfg.control is None else f"; control on {cfg.control}"
        metrics_on = "" if cfg.metrics is None else f"; metrics on http://{cfg.metrics}/metrics"
        web_on = "" if self.web_url is None else f"; web view on {self.web_url}"
        until = "until Ctrl-C" if cfg.duration is None else f"stopping after {cfg.duration:g} s"
        return (
            f"running: publishing on {cfg.publish} ({topics}){control_on}{metrics_on}{web_on}; "
            f"{until}"
        )

    def _supervise(self) -> int:
        cfg = self.cfg
        deadline = math.inf
        while True:
            if self.signals.received:
                if self.running:
                    log.info("%s: stopping", self.signals.received)
                return 0
            if self.group.stop_requested(INFERENCE):  # e.g. the preview window was closed
                return 0
            if time.monotonic() >= deadline:
                log.info("--duration reached: stopping")
                return 0
            if WEB in self.group.restart_due():
                self._web_started()
            self._serve_control()
            self._timers()
            msg = self.group.receive(POLL_S)
            if msg is not None:
                name, message = msg
                kind, stream_id = control.split_name(name)
                if name == INFERENCE:
                    self._from_inference(message)
                elif name == WEB:
                    self._from_web(message)
                elif (s := self.streams.get(stream_id)) is not None:
                    self._from_capture(s, kind, message)
            if not self.running and self._started():
                self.running = True
                log.info("%s", self._running_line())
                if cfg.duration is not None:
                    deadline = time.monotonic() + cfg.duration
            if self.running and self.streams:
                if all(s.state in FINISHED for s in self.streams.values()):
                    log.info("every stream has ended: stopping")
                    return 0


class _RunFailed(Exception):
    """A failure while running (not the user's input): exit status 1."""
