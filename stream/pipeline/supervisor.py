"""The supervisor of `python -m stream.run`: starts the capture and inference processes,
makes the shared-memory rings once the model's span and the sources' formats are known,
restarts a capture process that died, and stops everything (children, shared memory) on
every exit path.

The main process owns the shared memory (a RingPlan, stream/pipeline/ring_plan.py) and
supervises its children (a ProcessGroup, stream/pipeline/processes.py; spawned, so no
torch state is forked), which talk to it with the messages of stream/control.py:
  capture-video   opens --camera, writes frames into the FrameRing
  capture-audio   for models that listen: opens --mic, writes samples into the AudioRing
  inference       builds the model and engine, cuts windows, publishes on ZeroMQ
Start-up runs them in parallel (the camera opens while the model loads). The rings are
made, sized from the model's span and the sources' sizes and rates, and handed out to
the capture processes as soon as those are known when every source is live (so the
first window fills while the engine loads), or once the engine is ready when one is a
file (so a file starts playing when its frames can be used). A capture process that
dies while running is restarted with backoff; its source's health goes to the inference
process, which reports it on the status topic.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from engines import malloc
from stream import config, control
from stream.capture import audio as audio_capture
from stream.capture import video as video_capture
from stream.control import CAPTURE_AUDIO, CAPTURE_VIDEO, INFERENCE
from stream.errors import UserError, error_line
from stream.pipeline.inference import inference_main
from stream.pipeline.processes import (
    STARTING_GRACE_S,
    STOP_GRACE_S,
    ProcessGroup,
    StopSignals,
)
from stream.pipeline.ring_plan import RingPlan

log = logging.getLogger("stream.run")


def rings_due(
    *,
    ready: bool,
    model: control.ModelBuilt | None,
    video: control.VideoOpened | None,
    audio: control.AudioOpened | None,
    audio_ready: bool,
) -> bool:
    """Whether start-up can make the rings and start capturing into them now.

    Live sources (cameras, network streams, synthetic) start as soon as the model's span
    and the sources' formats are known, so the first window's frames arrive while the
    engine is still loading. A file (video or sound) starts only once the engine is
    ready, so that none of it plays to nobody."""
    if model is None or video is None or not audio_ready:
        return False
    live = video.live and (audio is None or audio.live)
    return ready or live


class Supervisor:
    def __init__(self, cfg: config.RunConfig):
        self.cfg = cfg
        self.group = ProcessGroup()
        self.signals = StopSignals()
        self.rings = RingPlan()
        self.running = False  # past start-up: children get a grace period to stop
        # The inference process gets twice its warm-up window time on top (EngineReady),
        # so that a window in progress when the stop came can finish (a slow model's
        # takes seconds).
        self.stop_grace_s = STOP_GRACE_S

    # -- life cycle --------------------------------------------------------------------

    def run(self) -> int:
        with self.signals:
            try:
                self._start_children()
                return self._supervise()
            except UserError as exc:
                print(error_line(exc), file=sys.stderr, flush=True)
                return 2
            finally:
                self._shutdown()

    def _start_children(self) -> None:
        cfg = self.cfg
        self.group.start(
            CAPTURE_VIDEO,
            video_capture.capture_main,
            (
                cfg.camera,
                config.parse_size(cfg.size),
                cfg.fps,
                cfg.loop,
                cfg.log_level,
                os.getpid(),
            ),
        )
        with malloc.preloaded(cfg.malloc):  # only the engine's process gains from it
            self.group.start(INFERENCE, inference_main, (cfg, os.getpid()))

    # -- supervision -------------------------------------------------------------------

    def _capture_down(self, name: str, reason: str) -> None:
        """A capture process died or lost its source: restart it later, with backoff."""
        delay = self.group.down(name)
        restarts = self.group.restarts[name]
        log.warning("%s stopped (%s): restart %d in %.1f s", name, reason, restarts, delay)
        self._tell_inference(name, "down", reason)

    def _tell_inference(self, name: str, state: str, reason: str | None) -> None:
        """Source health for the status topic (and for marking predictions degraded)."""
        try:
            self.group.send(
                INFERENCE,
                control.SourceHealth(
                    name=name,
                    state=state,
                    reason=reason,
                    restarts=self.group.restarts.get(name, 0),
                    pid=self.group.pid(name),
                ),
            )
        except (OSError, KeyError):
            pass

    def _start_audio(self, model: control.ModelBuilt) -> None:
        """Start the audio capture once the model is known to listen."""
        cfg = self.cfg
        if model.audio is None:
            return
        if audio_capture.describe(cfg.mic) == "none":
            raise UserError(
                f"{model.name} listens as well as watches but --mic is none: pass --mic default, "
                "a device name or index, an audio/video file, or synthetic"
            )
        self.group.start(
            CAPTURE_AUDIO,
            audio_capture.capture_main,
            (cfg.mic, model.audio.rate, cfg.loop, cfg.log_level, os.getpid()),
        )

    def _make_rings(
        self,
        video: control.VideoOpened,
        model: control.ModelBuilt,
        audio: control.AudioOpened | None,
    ) -> None:
        # A window's sound is centred on its frames' centre and read up to a stride
        # late: the two spans and the stride bound how far back it reaches.
        self.rings.create(
            video,
            model.span_s,
            audio_rate=None if audio is None else audio.rate,
            audio_s=0.0 if audio is None else model.audio.span_s + model.span_s + self.cfg.stride,
        )
        for name, message in self.rings.handout().items():
            self.group.send(name, message)

    def _fail_on(self, name: str, message: control.Message) -> None:
        """A child's failure that ends the run (start-up, or the inference process)."""
        match message:
            case control.BadInput(line):
                raise UserError(line)
            case control.Crash(line) | control.SourceFailed(line):
                raise _RunFailed(line)
            case control.Died(code):
                raise _RunFailed(f"the {name} process exited unexpectedly (exit code {code})")
            case _:
                control.unexpected(message, f"stream.run (from {name})")

    def _supervise(self) -> int:
        cfg = self.cfg
        video: control.VideoOpened | None = None
        model: control.ModelBuilt | None = None
        audio: control.AudioOpened | None = None
        ready = False
        try:
            # -- start-up: the children report; then the rings are made and handed out.
            while not (ready and self.rings.frames is not None):
                if self.signals.received:
                    return 0
                msg = self.group.receive(0.1)
                if msg is None:
                    continue
                name, message = msg
                match message:
                    case control.VideoOpened():
                        video = message
                        log.info(
                            "video: %s %dx%d at %.1f fps%s",
                            video.kind,
                            video.width,
                            video.height,
                            video.fps,
                            " (paced)" if video.paced else "",
                        )
                    case control.AudioOpened():
                        audio = message
                        log.info("audio: %s %r at %d Hz", audio.kind, audio.description, audio.rate)
                    case control.ModelBuilt():
                        model = message
                        self._start_audio(model)
                    case control.EngineReady(window_s=window_s):
                        ready = True
                        self.stop_grace_s = STOP_GRACE_S + 2 * window_s
                    case _:
                        self._fail_on(name, message)
                audio_ready = audio is not None or CAPTURE_AUDIO not in self.group
                if self.rings.frames is None and rings_due(
                    ready=ready, model=model, video=video, audio=audio, audio_ready=audio_ready
                ):
                    self._make_rings(video, model, audio)
            self.group.send(
                INFERENCE,
                control.ReadRings(
                    video=self.rings.frames.name,
                    fps=video.fps,
                    video_kind=video.kind,
                    audio=None if self.rings.audio is None else self.rings.audio.name,
                    audio_kind=None if audio is None else audio.kind,
                    processes={
                        "main": os.getpid(),
                        **{n: pid for n, pid in self.group.pids().items() if n != INFERENCE},
                    },
                ),
            )
            self.running = True
            log.info(
                "running: publishing on %s (pred.%s, status.%s); %s",
                cfg.publish,
                cfg.stream_id,
                cfg.stream_id,
                "until Ctrl-C" if cfg.duration is None else f"stopping after {cfg.duration:g} s",
            )
            # -- running
            deadline = None if cfg.duration is None else time.monotonic() + cfg.duration
            while True:
                if self.signals.received:
                    log.info("%s: stopping", self.signals.received)
                    return 0
                if self.group.stop.is_set():  # e.g. the preview window was closed
                    return 0
                if deadline is not None and time.monotonic() >= deadline:
                    log.info("--duration reached: stopping")
                    return 0
                self.group.restart_due()
                msg = self.group.receive(0.1)
                if msg is None:
                    continue
                name, message = msg
                if name == INFERENCE:
                    self._fail_on(name, message)
                match message:
                    case control.AudioEnded():
                        log.info("end of the audio of %s", cfg.mic)
                    case control.VideoEnded(frames=frames):
                        log.info("end of %s after %d frames: stopping", cfg.camera, frames)
                        time.sleep(min(1.0, cfg.stride * 2))  # let the last windows publish
                        return 0
                    case control.VideoOpened() | control.AudioOpened():  # a restarted capture
                        self.group.send(name, self.rings.handout()[name])
                        restarts = self.group.restarts[name]
                        log.info("%s is back after restart %d", name, restarts)
                        self._tell_inference(name, "up", None)
                    case control.BadInput(line) | control.SourceFailed(line) | control.Crash(line):
                        self._capture_down(name, line)
                    case control.Died(code):
                        self._capture_down(name, f"exit code {code}")
                    case _:
                        control.unexpected(message, f"stream.run (from {name})")
        except _RunFailed as exc:
            print(error_line(exc), file=sys.stderr, flush=True)
            return 1

    def _shutdown(self) -> None:
        grace = self.stop_grace_s if self.running else STARTING_GRACE_S
        self.group.stop_all(grace, warn=self.running)
        self.rings.close()


class _RunFailed(Exception):
    """A failure while running (not the user's input): exit status 1."""
