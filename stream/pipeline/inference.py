"""The inference process: one engine serves every stream of the run. Per stream a
scheduler ticks every stride; the windows that fall due are cut and preprocessed per
stream, run through the engine together as one batch (stream/pipeline/batching.py says
which and when), and each stream's row of the logits is smoothed and published on its
own topic, `pred.<id>`. With event rules (--events), each stream's EventTracker
(stream/pipeline/events.py) turns its scores into events, published on `event.<id>`
right after the prediction that caused them; every event that starts ends: below its
threshold, or when its stream goes (removed, ended, failed: its last status follows), its
camera goes down, or the run stops (`close`).

Over the pipe to the parent, with the messages of stream/control.py: ModelBuilt and
EngineReady once each; then, at any time, AddStream (serve a stream from its rings),
RemoveStream (publish its last status, let go of its rings, answer StreamRemoved),
StreamState (a stream not served yet or any more, for the run-level status) and
SourceHealth (a stream's capture process went down or came back); BadInput or Crash when
it fails. A heartbeat thread publishes `status.<id>` for each stream and `run` for the
run twice a second from the moment the publisher is bound, also while the model loads and
while a slow batch runs. With --metrics, a thread serves the run's Prometheus metrics
(stream/pipeline/metrics.py) from the moment the process starts.

Ticks are aligned to frames: when a batch is chosen, each of its streams waits for its
next frame to land in its ring (at most two of its frame periods) and its window is cut
right then, so the newest frame of each window is fresh instead of up to a frame period
old. The streams wait side by side, each cut as soon as its frame lands, so a batch waits
for its slowest camera's next frame, never for the sum. An audio window is centred on
its video window's centre; each stream waits at most one of its strides for its last
sample (side by side as well, and not at all while its audio capture is known to be
down), then runs with the gap zero-filled and says so (`degraded`).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import socket
import statistics
import threading
import time
from collections import deque

import numpy as np

from engines import malloc
from stream import config, control, rules
from stream.errors import UserError
from stream.pipeline import batching
from stream.pipeline.aggregate import softmax, top_k
from stream.pipeline.events import EventTracker
from stream.pipeline.metrics import Metrics
from stream.pipeline.stats import summary_ms
from stream.transport import wire

log = logging.getLogger("stream.inference")

HEARTBEAT_S = 0.5
#: The "not keeping up" warning: counted over the last PACE_TICKS ticks, at most once
#: every PACE_WARN_EVERY_S seconds.
PACE_TICKS = 20
PACE_WARN_EVERY_S = 30.0
#: The run-level status remembers this many streams that ended or failed (the newest).
GONE_KEPT = 64
#: The states of a stream that is no longer served: its last status says which.
LAST_STATES = ("removed", "ended", "failed")
#: How long the loop sleeps at most while nothing is due: it looks at its pipe and the
#: stop event this often.
IDLE_S = 0.05
#: The reason an event ends with when its stream goes, by the stream's last state.
END_REASON = {"removed": "stream removed", "ended": "stream ended", "failed": "stream failed"}
#: How long the ends of events (and anything else queued) get to reach the subscribers at
#: the stop: within the stop's grace (processes.STOP_GRACE_S).
CLOSE_LINGER_S = 0.5


def keeping_stride(seconds: float) -> float:
    """A round stride of at least `seconds`: 0.05, 0.1, 0.25, 0.5, then 1, 2, 4, 8..."""
    for step in (0.05, 0.1, 0.25, 0.5):
        if seconds <= step:
            return step
    return float(2 ** math.ceil(math.log2(seconds)))


class PaceWatch:
    """Notices ticks skipped because windows take longer than the stride, and says what
    would keep up: the engine's time (median of the recent windows) and a stride that
    leaves 20 % headroom over a whole window's work (reading, preprocessing, engine)."""

    def __init__(
        self, stride_s: float, *, ticks: int = PACE_TICKS, every_s: float = PACE_WARN_EVERY_S
    ):
        self.stride_s = stride_s
        self.every_s = every_s
        self.ticks: deque[bool] = deque(maxlen=ticks)  # per tick, newest last: True = skipped
        self.engine_s: deque[float] = deque(maxlen=ticks)
        self.work_s: deque[float] = deque(maxlen=ticks)
        self.warned_at: float | None = None

    def window(self, *, skipped: int, engine_s: float, work_s: float, now: float) -> str | None:
        """Record one window run and the ticks that passed while it ran; the warning to
        log, or None (nothing skipped, too few windows yet, or warned recently)."""
        self.ticks.append(False)
        self.ticks.extend([True] * min(skipped, self.ticks.maxlen))
        self.engine_s.append(engine_s)
        self.work_s.append(work_s)
        missed = sum(self.ticks)
        if missed < 2 or len(self.engine_s) < 3:  # one late tick is a hiccup, not a pace
            return None
        if self.warned_at is not None and now - self.warned_at < self.every_s:
            return None
        self.warned_at = now
        engine, work = statistics.median(self.engine_s), statistics.median(self.work_s)
        stride = keeping_stride(max(1.2 * work, self.stride_s * 1.01))
        return (
            f"not keeping up: {missed} of the last {len(self.ticks)} windows were skipped at "
            f"--stride {self.stride_s:g}; the engine takes {engine * 1e3:.0f} ms per window and "
            f"the whole window {work * 1e3:.0f} ms (medians of the last {len(self.engine_s)}): "
            f"--stride {stride:g} would keep up"
        )


class _Stream:
    """One stream of the run as the inference process knows it: before it is served (a
    configured stream while the model loads, or one the parent told of with StreamState),
    and while served (from AddStream to RemoveStream: its rings, samplers, scheduler,
    smoother, seq and counters). The heartbeat thread reads it for the stream's status."""

    def __init__(self, stream_id: str, state: str = "starting", reason: str | None = None):
        self.id = stream_id
        # Before it is served: what the parent said (starting, restarting); served:
        # warming until its first window, then running.
        self.state = state
        self.reason = reason
        self.served = False
        self.windows_run = 0
        self.stale = 0
        self.scheduler = None
        self.events: EventTracker | None = None  # while served, with event rules
        self.ring = self.audio_ring = None
        self.video_kind = "?"
        self.audio: dict = {"source": "none", "used": False}
        self.processes: dict[str, int] = {}
        # capture kind -> {"state": "up" | "down", "restarts", "last_failure"} (from the
        # parent)
        self.capture: dict[str, dict] = {}
        # the heartbeat's own: its seq and the frame count of its last beat (for fps_in)
        self.status_seq = 0
        self.beat_ns = time.monotonic_ns()
        self.beat_frames: int | None = None

    @property
    def skipped(self) -> int:
        return 0 if self.scheduler is None else self.scheduler.skipped

    def source_event(self, health: control.SourceHealth) -> None:
        c = self.capture.setdefault(health.name, {"last_failure": None})
        c.update(state=health.state, restarts=health.restarts)
        if health.reason:
            c["last_failure"] = health.reason
        if health.pid is not None:
            self.processes = {**self.processes, health.name: health.pid}

    def down(self, kind: str) -> bool:
        return self.capture.get(kind, {}).get("state") == "down"

    def _capture(self, name: str) -> dict:
        c = self.capture.get(name, {})
        return {
            "state": c.get("state", "up"),
            "restarts": c.get("restarts", 0),
            "last_failure": c.get("last_failure"),
        }

    def shown_state(self, run_state: str) -> str:
        """The state its status and the run status show: the run's while the model loads
        (a stream waits for it) or stops, `degraded` while running with a capture source
        down."""
        if self.state in LAST_STATES:
            return self.state
        if run_state == "stopping":
            return run_state
        if not self.served:
            return run_state if run_state in ("starting", "loading") else self.state
        if self.state == "running" and any(c.get("state") == "down" for c in self.capture.values()):
            return "degraded"
        return self.state

    def shown_reason(self) -> str | None:
        """Why it is in its state: the parent's reason, or which of its sources are down."""
        down = [
            f"{kind} down" + (f": {c['last_failure']}" if c.get("last_failure") else "")
            for kind, c in sorted(self.capture.items())
            if c.get("state") == "down"
        ]
        return "; ".join(down) if self.served and down else self.reason

    def video_health(self, now_ns: int) -> dict:
        ring = self.ring
        if ring is None:
            return {"source": self.video_kind, "frames": 0, **self._capture("capture-video")}
        seqs, times = ring.snapshot()
        writes = ring.write_times_ns()
        return {
            "source": self.video_kind,
            **self._capture("capture-video"),
            "frames": ring.next_seq,
            "last_frame_age_ms": (now_ns - int(times[-1])) / 1e6 if len(times) else None,
            # over the frames the ring holds now: capture intervals and write times (null
            # until there is one)
            "interval_ms": summary_ms(np.diff(times) / 1e6) if len(times) > 1 else None,
            "ring_write_ms": summary_ms(writes / 1e6) if len(writes) else None,
        }

    def audio_health(self, now_ns: int) -> dict:
        ring = self.audio_ring
        if ring is None:
            return self.audio
        count, _, _ = ring.clock()
        age_ms = (now_ns - ring.time_of(count - 1)) / 1e6 if count else None
        return {
            **self.audio,
            **self._capture("capture-audio"),
            "samples": count,
            "rate": ring.sample_rate,
            "overflows": ring.overflows,
            "last_sample_age_ms": age_ms,
            "healthy": age_ms is not None and age_ms < 500,
        }

    def close(self) -> None:
        """Let go of its rings (the parent unlinks them)."""
        rings, self.ring, self.audio_ring = (self.ring, self.audio_ring), None, None
        for ring in rings:
            if ring is not None:
                ring.close()


@dataclasses.dataclass
class _Cut:
    """One stream's window of a batch, cut and preprocessed, on its way to the engine."""

    stream: _Stream
    window: object  # stream.pipeline.window.Window
    inputs: tuple  # the model's inputs for this window, each (1, ...)
    window_ns: int  # when it was cut
    stages: dict[str, float]
    degraded: list[str]
    capture_ns: int
    audio_span: tuple[int, int] = (0, 0)


class _Heartbeat(threading.Thread):
    """Publishes every stream's status and the run status every HEARTBEAT_S (the first at
    once), on its own clock: not with each window."""

    def __init__(self, loop: InferenceLoop):
        super().__init__(name="heartbeat", daemon=True)
        self.loop = loop
        self.halt = threading.Event()

    def run(self) -> None:
        first = True
        while not self.halt.wait(0 if first else HEARTBEAT_S):
            first = False
            self.loop.beat()


def inference_main(cfg, parent_pid: int, conn, stop) -> None:
    """Entry point of the inference process. `cfg` is a stream.config.RunConfig."""
    from stream.pipeline.proc import init_child

    init_child(cfg.log_level, parent_pid)
    loop = None
    ended = "stopped"  # why the events still active end
    try:
        loop = InferenceLoop(cfg, conn, stop)
        loop.start()
        loop.run()
    except UserError as exc:
        conn.send(control.BadInput(str(exc)))
    except Exception as exc:  # a bug: say so in one line, keep the traceback in the log
        log.exception("inference failed")
        conn.send(control.Crash(f"inference process failed: {type(exc).__name__}: {exc}"))
        ended = "stream failed"
        raise SystemExit(1) from None
    finally:
        if loop is not None:
            loop.close(ended)


def _on_cuda(cfg) -> bool:
    """Whether the engine will run on CUDA (what --max-batch's default depends on)."""
    import torch

    if cfg.engine == "tensorrt":
        return True
    if cfg.device is None:
        return torch.cuda.is_available()
    return cfg.device.startswith("cuda")


def _weights_hint(model: str) -> str:
    """What to pass for trained weights: the published checkpoint where one exists."""
    import models

    if models.has_zoo_weights(model):
        return "pass --weights kinetics400 for its published checkpoint, a checkpoint path or a URL"
    return (
        f"no published checkpoint exists for {model}: record clips with python -m stream.record, "
        "train with python -m stream.train and pass the checkpoint it writes with --weights PATH"
    )


class InferenceLoop:
    def __init__(self, cfg, conn, stop):
        from stream.transport.publish import Publisher

        self.cfg = cfg
        self.conn = conn
        self.stop = stop
        self.state = "starting"  # of the run: starting, loading, running, stopping
        self.model_name = self.engine_name = "?"
        self.max_batch = cfg.max_batch or 1  # the engine's, once it is built
        self.batch_wait_ns = round(cfg.batch_wait * 1e9)
        self.batches = [0] * self.max_batch  # engine calls by batch size - 1
        self.windows_ran = 0  # every stream's windows run, and skipped, since the start
        self.windows_skipped = 0
        self.host, self.pid = socket.gethostname(), os.getpid()
        # The heartbeat thread reads the streams while this one adds and removes them (and
        # closes their rings): both hold the lock meanwhile.
        self.lock = threading.Lock()
        # The streams with a status topic: configured ones from the start, each served
        # from its AddStream to its RemoveStream.
        self.streams: dict[str, _Stream] = {s.id: _Stream(s.id) for s in cfg.streams}
        # The run status's entries of streams that ended or failed (the newest GONE_KEPT).
        self.gone: dict[str, dict] = {}
        self.run_seq = 0
        self.previews: dict[str, object] = {}
        # Each rule's label indices (once the model is known), and the events started so
        # far per stream id and rule: a stream added again numbers on, so ids stay unique.
        self.event_labels: list[list[int]] = []
        self.event_numbers: dict[str, dict[str, int]] = {}
        # Before the publisher, so that a metrics port in use leaves nothing to close.
        # made before the engine (its port fails fast): buckets up to the largest default
        self.metrics = Metrics(cfg.metrics, max_batch=cfg.max_batch or config.MAX_BATCH_AUTO)
        self.publisher = Publisher(  # first: a port in use fails fast
            cfg.publish,
            curve_secret_key=cfg.curve_secret_key,
            curve_clients=cfg.curve_clients,
            curve_server_key=cfg.curve_server_key,
            local=cfg.web_endpoint,  # --web: the web process's, without keys
        )
        self.heartbeat = _Heartbeat(self)
        self.heartbeat.start()

    # -- start-up --------------------------------------------------------------------

    def start(self) -> None:
        """Build model and engine; the streams come afterwards (AddStream)."""
        import engines
        import models
        from stream.pipeline.preprocess import LogMel, Preprocessor
        from stream.pipeline.window import WindowGeometry

        cfg = self.cfg
        self.state = "loading"
        if cfg.threads is not None:
            import torch

            torch.set_num_threads(cfg.threads)  # before the engine: a compiled one is built for it
        try:
            # seed: without weights the model is the same on every start, and so is the key
            # of its compiled engine in the cache.
            model = models.create(
                cfg.model,
                weights=cfg.weights,
                num_classes=cfg.num_classes,
                labels=cfg.labels,
                seed=0,
                **cfg.model_options,
            )
        except models.ModelError as exc:
            raise UserError(str(exc)) from None
        meta = self.meta = model.meta
        # Before anything is compiled: a rule's label the model does not have is BadInput.
        self.event_labels = rules.label_indices(cfg.events, meta.labels, meta.name)
        if cfg.events:
            log.info(
                "events: %s",
                "; ".join(f"{r.name} ({' + '.join(r.labels)})" for r in cfg.events),
            )
        self.model_name = meta.name
        audio = meta.audio
        self.conn.send(
            control.ModelBuilt(
                name=meta.name,
                span_s=meta.span_s,
                audio=None
                if audio is None
                else control.AudioNeeds(audio.sample_rate, audio.span_s),
            )
        )
        if cfg.weights is None:
            log.warning(
                "no weights: %s is randomly initialised and its predictions are random (%s)",
                meta.name,
                _weights_hint(cfg.model),
            )
        mics = sorted({s.mic for s in cfg.streams if s.mic != "none"})
        if audio is None and mics:
            log.info(
                "%s is a video-only model: the microphone (--mic %s) is not used",
                meta.name,
                ", ".join(mics),
            )
        try:
            engine = engines.create(
                model,
                model.example_inputs(),
                backend=cfg.engine,
                device=cfg.device,
                precision=cfg.precision,
                compile=cfg.compile,
                max_batch=config.engine_batch(cfg, cuda=_on_cuda(cfg)),
            )
        except engines.EngineError as exc:
            raise UserError(str(exc)) from None
        self.engine = engine
        self.engine_name = engine.name
        self.max_batch = engine.max_batch
        self.batches = [0] * engine.max_batch
        self.metrics.built(model=meta.name, engine=engine.name)
        if engine.device.type == "cpu":
            import torch

            log.info(
                "engine %s (%s) on %d CPU thread(s), malloc %s, batches of up to %d",
                engine.name,
                engine.mode,
                torch.get_num_threads(),
                malloc.active(),
                engine.max_batch,
            )
        # One warm-up (every batch size the engine runs at), then one full batch timed: it
        # tells the parent how long a batch in progress may hold up a stop.
        engine.warmup(1)
        started = time.monotonic()
        engine(*model.example_inputs(batch=engine.max_batch))
        window_s = time.monotonic() - started
        self.preprocess = Preprocessor(
            short_side=meta.short_side,
            crop=meta.crop,
            mean=meta.mean,
            std=meta.std,
            device=engine.device,
            dtype=engine.dtype,
        )
        self.logmel = (
            None if audio is None else LogMel(audio, device=engine.device, dtype=engine.dtype)
        )
        self.geometry = WindowGeometry.of(meta, self.logmel)
        self.state = "running"
        self.conn.send(
            control.EngineReady(engine=engine.name, window_s=window_s, max_batch=engine.max_batch)
        )
        # What start-up built lives as long as the process: out of the collector's way, so
        # that a full collection (a walk over every object of the model and the libraries,
        # long enough to spoil a window's latency) never lands inside a window.
        gc.collect()
        gc.freeze()

    # -- the streams -----------------------------------------------------------------

    def _receive(self) -> None:
        """Handle what the parent sent (nothing waits)."""
        while self.conn.poll():
            match control.receive(self.conn, "the inference process"):
                case control.AddStream() as add:
                    self._add(add)
                case control.RemoveStream(stream=stream, reason=reason):
                    self._remove(stream, reason)
                    self.conn.send(control.StreamRemoved(stream))
                case control.StreamState() as news:
                    self._stream_state(news)
                case control.SourceHealth() as health:
                    with self.lock:  # the heartbeat reads what it changes
                        s = self.streams.get(health.stream)
                        if s is not None:
                            s.source_event(health)
                            self.metrics.restarts(s.id, health.name, health.restarts)
                    if (
                        s is not None
                        and health.name == control.CAPTURE_VIDEO
                        and health.state == "down"
                    ):
                        self._end_events(s, "stream failed")  # no windows until it is back
                    reason = f" ({health.reason})" if health.reason else ""
                    log.info("%s of %s is %s%s", health.name, health.stream, health.state, reason)
                case other:
                    control.unexpected(other, "the inference process (running)")

    def _add(self, add: control.AddStream) -> None:
        from stream.pipeline.aggregate import Smoother
        from stream.pipeline.ring import AudioRing, FrameRing
        from stream.pipeline.window import AudioSampler, Scheduler, WindowSampler

        known = self.streams.get(add.stream)
        if known is not None and known.served:
            raise ValueError(f"AddStream for stream {add.stream!r}, which is served already")
        if (self.logmel is not None) != (add.audio is not None):
            raise ValueError(
                f"AddStream for stream {add.stream!r} with audio ring {add.audio!r}, but "
                f"{self.meta.name} {'listens' if self.logmel is not None else 'does not listen'}"
            )
        s = _Stream(add.stream)
        if known is not None:  # what the parent said of its sources before
            s.capture = known.capture
            s.status_seq = known.status_seq
        s.served, s.state = True, "warming"
        s.stride = add.stride
        s.ring = FrameRing.attach(add.video)
        s.video_kind = add.video_kind
        s.processes = {**add.processes, "inference": os.getpid()}
        s.frame_period_s = 1.0 / max(1.0, float(add.fps))
        # A window whose frames lie further than this from their target times is degraded
        # (a source was down, or dropped frames): two frame periods, at least 50 ms.
        s.gap_limit_ns = round(max(2 * s.frame_period_s, 0.05) * 1e9)
        s.sampler = WindowSampler(s.ring, self.geometry)
        self.preprocess.warmup(*s.ring.shape[:2])  # plans its geometry before its first window
        s.audio_sampler = None
        if self.logmel is None:
            s.audio = {"source": "none", "used": False, "note": f"{self.meta.name} is video-only"}
        else:
            s.audio_ring = AudioRing.attach(add.audio)
            s.audio = {"source": add.audio_kind, "used": True}
            s.audio_sampler = AudioSampler(s.audio_ring, self.geometry.audio_samples)
        s.scheduler = Scheduler(add.stride)
        s.pace = PaceWatch(add.stride)
        s.smoother = Smoother(self.cfg.smoothing)
        if self.cfg.events:
            s.events = EventTracker(
                add.stream,
                self.cfg.events,
                self.event_labels,
                numbers=self.event_numbers.setdefault(add.stream, {}),
            )
        s.seq, s.last_newest, s.ran = 0, -1, 0
        if self.cfg.preview and add.stream not in self.previews:
            from stream.pipeline.preview import Preview

            self.previews[add.stream] = Preview(f"avstream {add.stream}")
        with self.lock:
            self.streams[add.stream] = s
            self.gone.pop(add.stream, None)
        audio = () if add.audio is None else (control.CAPTURE_AUDIO,)
        self.metrics.add_stream(add.stream, (control.CAPTURE_VIDEO, *audio))
        log.info(
            "serving %s: %s video at %.1f fps%s, a window every %g s",
            add.stream,
            add.video_kind,
            add.fps,
            f", {add.audio_kind} audio" if add.audio is not None else "",
            add.stride,
        )

    def _remove(self, stream: str, state: str, reason: str | None = None) -> None:
        """Publish the stream's last status (in `state`: removed, ended, failed), forget it
        (the run status keeps an entry for one that ended or failed) and let go of its
        rings. Its active events end first."""
        served = self.streams.get(stream)
        if served is not None:
            self._end_events(served, END_REASON.get(state, "stream removed"))
        with self.lock:
            s = self.streams.pop(stream, None)
            if s is None:
                log.debug("%s is not a stream here (%s)", stream, state)
                return
            s.state, s.served = state, False
            s.reason = reason or s.reason
            now = time.monotonic_ns()
            self.publisher.send(
                wire.topic(wire.STATUS_TOPIC, stream),
                self._status(s, now, time.time_ns(), self.publisher.count_subscriptions()),
            )
            if state != "removed":
                self._forget_gone(stream)
                self.gone[stream] = self._entry(s)
            else:
                self.gone.pop(stream, None)
            s.close()
        self.metrics.remove_stream(stream)
        preview = self.previews.pop(stream, None)
        if preview is not None:
            preview.close()
        log.info("%s: no longer served (%s), %d windows run", stream, state, s.windows_run)

    def _forget_gone(self, keep_room_for: str) -> None:
        self.gone.pop(keep_room_for, None)
        while len(self.gone) >= GONE_KEPT:
            del self.gone[next(iter(self.gone))]

    def _stream_state(self, news: control.StreamState) -> None:
        """A stream the parent has not handed over (yet) or took back: its state for the
        run status; one that ended, failed or was removed sends its last status."""
        s = self.streams.get(news.stream)
        if s is not None and s.served:
            log.debug("%s is served: its state is its own, not %s", news.stream, news.state)
            return
        if news.state in LAST_STATES:
            if s is not None:
                self._remove(news.stream, news.state, news.reason)
            elif news.state == "removed":
                with self.lock:
                    self.gone.pop(news.stream, None)
            else:
                with self.lock:
                    entry = self.gone.get(news.stream)
                    self._forget_gone(news.stream)
                    self.gone[news.stream] = {
                        **(entry or {"id": news.stream, "windows_run": 0, "windows_skipped": 0}),
                        "state": news.state,
                        **({"reason": news.reason} if news.reason else {}),
                    }
            return
        with self.lock:
            if s is None:
                s = self.streams[news.stream] = _Stream(news.stream)
                self.gone.pop(news.stream, None)
            s.state, s.reason = news.state, news.reason

    # -- heartbeats ------------------------------------------------------------------

    def beat(self) -> None:
        """Every stream's status and the run status (the heartbeat thread)."""
        subscriptions = self.publisher.count_subscriptions()
        self.metrics.subscriptions(subscriptions)
        with self.lock:  # the streams and their rings stay as they are meanwhile
            now, wall = time.monotonic_ns(), time.time_ns()
            for s in self.streams.values():
                body = self._status(s, now, wall, subscriptions)
                self.publisher.send(wire.topic(wire.STATUS_TOPIC, s.id), body)
            self.publisher.send(wire.RUN_TOPIC, self._run_status(now, wall, subscriptions))

    def _status(self, s: _Stream, now: int, wall: int, subscriptions: int) -> dict:
        video = s.video_health(now)
        fps_in = 0.0
        if s.beat_frames is not None and now > s.beat_ns:
            fps_in = (video["frames"] - s.beat_frames) / ((now - s.beat_ns) / 1e9)
        s.beat_ns, s.beat_frames = now, video["frames"]
        body = wire.status(
            seq=s.status_seq,
            stream=s.id,
            model=self.model_name,
            engine=self.engine_name,
            state=s.shown_state(self.state),
            mono_ns=now,
            wall_ns=wall,
            fps_in=round(fps_in, 2),
            windows_run=s.windows_run,
            windows_skipped=s.skipped,
            windows_stale=s.stale,
            video=video,
            audio=s.audio_health(now),
            sent=self.publisher.sent,
            dropped=self.publisher.dropped,
            subscriptions=subscriptions,
            processes=s.processes,
            events=[] if s.events is None else s.events.active,
        )
        s.status_seq += 1
        return body

    def _entry(self, s: _Stream) -> dict:
        return wire.run_stream(
            stream=s.id,
            state=s.shown_state(self.state),
            reason=s.shown_reason(),
            windows_run=s.windows_run,
            windows_skipped=s.skipped,
        )

    def _run_status(self, now: int, wall: int, subscriptions: int) -> dict:
        entries = [*(self._entry(s) for s in self.streams.values()), *self.gone.values()]
        body = wire.run_status(
            seq=self.run_seq,
            host=self.host,
            pid=self.pid,
            model=self.model_name,
            engine=self.engine_name,
            state=self.state,
            mono_ns=now,
            wall_ns=wall,
            max_batch=self.max_batch,
            batch_wait_s=self.batch_wait_ns / 1e9,
            streams=entries,
            batches=self.batches,
            windows_run=self.windows_ran,
            windows_skipped=self.windows_skipped,
            sent=self.publisher.sent,
            dropped=self.publisher.dropped,
            subscriptions=subscriptions,
        )
        self.run_seq += 1
        return body

    # -- running ---------------------------------------------------------------------

    def run(self) -> None:
        from stream.pipeline.proc import parent_alive

        while not self.stop.is_set() and parent_alive():
            self._receive()
            now = time.monotonic_ns()
            served = [s for s in self.streams.values() if s.served]
            plan = batching.plan(
                (
                    batching.Candidate(s.id, s.scheduler.next_tick_ns, s.scheduler.stride_ns, s.ran)
                    for s in served
                ),
                now,
                max_batch=self.max_batch,
                batch_wait_ns=self.batch_wait_ns,
            )
            if plan.run:
                self._run_batch([self.streams[i] for i in plan.run])
                continue
            for stream, preview in self.previews.items():
                s = self.streams.get(stream)
                if s is not None and s.ring is not None:
                    preview.refresh(s.ring)
            wait_s = IDLE_S if plan.wake_ns is None else (plan.wake_ns - now) / 1e9
            self.conn.poll(min(max(wait_s, 0.0), IDLE_S))  # wakes for a message at once

    def _run_batch(self, streams: list[_Stream]) -> None:
        """Cut the streams' windows, run them as one engine call, publish each."""
        cuts = self._cut(streams)
        if not cuts:
            return
        self._listen(cuts)
        inputs = self._stack([c.inputs for c in cuts])
        infer_start_ns = time.monotonic_ns()
        logits = self.engine(*inputs)
        infer_end_ns = time.monotonic_ns()
        self.batches[len(cuts) - 1] += 1
        self.metrics.batch(len(cuts))
        rows = logits.detach().cpu().numpy()
        engine_s = (infer_end_ns - infer_start_ns) / 1e9
        for cut, row in zip(cuts, rows, strict=True):
            labels = self._publish(cut, row, infer_start_ns, infer_end_ns, len(cuts))
            s = cut.stream
            self.windows_ran += 1  # the order windows ran in: who waited longest (batching)
            s.ran = self.windows_ran
            behind = s.scheduler.advance()
            self.windows_skipped += behind
            self.metrics.skipped(s.id, behind)
            work_ns = time.monotonic_ns() - cut.window_ns - cut.stages.get("audio_wait", 0.0) * 1e6
            warning = s.pace.window(
                skipped=behind, engine_s=engine_s, work_s=work_ns / 1e9, now=time.monotonic()
            )
            if warning is not None:
                log.warning("%s: %s", s.id, warning)
            preview = self.previews.get(s.id)
            if preview is not None:
                frame = cut.window.newest_frame()
                if frame is not None:
                    preview.show(frame, labels)
                if preview.closed:
                    log.info("preview window of %s closed: stopping", s.id)
                    self.stop.set()

    def _cut(self, streams: list[_Stream]) -> list[_Cut]:
        """The streams' windows, each cut as soon as its next frame has landed (or two of
        its frame periods have passed, or its ring closed); the streams wait side by side.
        A stream without a window (history still too short, or no new frame) is left out
        and its scheduler moved on. A stream whose camera is down waits for no frame. In
        the order of `streams`."""
        decided = time.monotonic()
        waiting = []
        for s in streams:
            if s.state == "warming" and not s.sampler.covered():
                # its first window's span is still filling: again at its next frame, and
                # no wait for a frame now (the other streams of the batch would wait too)
                s.scheduler.restart(s.frame_period_s)
            elif s.down(control.CAPTURE_VIDEO):  # no frame is coming: cut what there is
                waiting.append((s, s.ring.next_seq, decided))
            else:
                waiting.append((s, s.ring.next_seq, decided + 2 * s.frame_period_s))
        cuts = []
        while waiting:
            left = []
            for s, seen, deadline in waiting:
                if s.ring.next_seq != seen or s.ring.closed or time.monotonic() >= deadline:
                    cut = self._cut_one(s)
                    if cut is not None:
                        cuts.append(cut)
                else:
                    left.append((s, seen, deadline))
            waiting = left
            if waiting:
                time.sleep(0.0002)
        order = {s.id: i for i, s in enumerate(streams)}
        return sorted(cuts, key=lambda c: order[c.stream.id])

    def _cut_one(self, s: _Stream) -> _Cut | None:
        window_ns = time.monotonic_ns()
        got = s.sampler.sample_in_place(lambda w, last=s.last_newest: self._preprocess(w, last))
        if got is None:  # warming up: the span is not covered yet; again at the next frame
            s.scheduler.restart(s.frame_period_s)
            return None
        if got[1] is None:  # no new frame since the last window
            s.stale += 1
            s.scheduler.advance(count_skipped=False)
            return None
        window, (inputs, preprocess_ns) = got
        s.last_newest = window.newest_seq
        s.state = "running"
        degraded = []
        if window.max_gap_ns > s.gap_limit_ns:  # frames missing inside the window
            degraded.append(
                f"video gap: a frame {window.max_gap_ns / 1e6:.0f} ms from its target time"
            )
        return _Cut(
            stream=s,
            window=window,
            inputs=inputs,
            window_ns=window_ns,
            stages={"ring_read": window.read_ns / 1e6, "preprocess": preprocess_ns / 1e6},
            degraded=degraded,
            capture_ns=window.end_ns,
        )

    def _preprocess(self, window, last_newest: int) -> tuple[tuple, int] | None:
        """(model inputs, ns it took) from the window's frames where they lie in the ring;
        None when the window has no new frame."""
        if window.newest_seq == last_newest:
            return None
        started = time.monotonic_ns()
        inputs = self.preprocess(window.in_ring, window.seqs)
        return inputs, time.monotonic_ns() - started

    def _listen(self, cuts: list[_Cut]) -> None:
        """The sound of each window that has some: each stream waits (side by side) for
        its window's last sample, at most one of its strides and not at all while its
        audio capture is down; a gap is zero-filled and said (`degraded`)."""
        listening = [c for c in cuts if c.stream.audio_sampler is not None]
        started_ns, started = time.monotonic_ns(), time.monotonic()
        waiting = listening
        while waiting:
            left = []
            for c in waiting:
                s = c.stream
                if (
                    s.audio_sampler.arrived(c.window.plan.audio_first_ns)
                    or s.audio_ring.closed
                    or s.down(control.CAPTURE_AUDIO)
                    or self.stop.is_set()
                    or time.monotonic() >= started + s.stride
                ):
                    c.stages["audio_wait"] = (time.monotonic_ns() - started_ns) / 1e6
                else:
                    left.append(c)
            waiting = left
            if waiting:
                time.sleep(0.001)
        for c in listening:
            s = c.stream
            aw = s.audio_sampler.sample(c.window.plan.audio_first_ns)
            if aw.missing:
                c.degraded.append(
                    f"audio gap: {aw.missing} of {s.audio_sampler.samples} samples missing"
                )
            else:
                c.capture_ns = max(c.capture_ns, aw.end_ns)
            c.audio_span = (aw.start_ns, aw.end_ns)
            c.inputs = (*c.inputs, self.logmel(aw.samples))

    @staticmethod
    def _stack(inputs: list[tuple]) -> tuple:
        """The windows' inputs stacked on dim 0, input by input (one window: as it is)."""
        if len(inputs) == 1:
            return inputs[0]
        import torch

        return tuple(torch.cat(parts, dim=0) for parts in zip(*inputs, strict=True))

    def _publish(
        self, cut: _Cut, logits: np.ndarray, infer_start_ns: int, infer_end_ns: int, batch: int
    ) -> list[dict]:
        """Publish the stream's prediction from its row of the logits; its top-k labels."""
        cfg, s, window = self.cfg, cut.stream, cut.window
        probs = softmax(logits.astype(np.float64))
        smoothed = s.smoother.update(probs)
        labels = top_k(smoothed, self.meta.labels, cfg.topk)
        body = wire.prediction(
            seq=s.seq,
            stream=s.id,
            model=self.meta.name,
            engine=self.engine.name,
            labels=labels,
            window_start_ns=window.start_ns,
            window_end_ns=window.end_ns,
            frames=window.frames,
            audio_start_ns=cut.audio_span[0],
            audio_end_ns=cut.audio_span[1],
            capture_ns=cut.capture_ns,
            window_ns=cut.window_ns,
            infer_start_ns=infer_start_ns,
            infer_end_ns=infer_end_ns,
            smoothing=cfg.smoothing,
            random_weights=cfg.weights is None,
            stride_s=s.stride,
            skipped=s.scheduler.skipped,
            degraded=cut.degraded,
            stages_ms=cut.stages,
            batch=batch,
        )
        self.publisher.send_prediction(wire.topic(wire.PRED_TOPIC, s.id), body)
        if s.events is not None:
            # the capture time in Unix time: now, less how long ago it was
            wall = time.time_ns() - (time.monotonic_ns() - cut.capture_ns)
            news = s.events.observe(
                seq=s.seq,
                capture_ns=cut.capture_ns,
                wall_ns=wall,
                smoothed=smoothed,
                raw=probs,
                degraded=bool(cut.degraded),
            )
            self._send_events(s, news)
        self.metrics.window(body)
        s.seq += 1
        s.windows_run = s.seq
        return labels

    def _end_events(self, s: _Stream, reason: str) -> None:
        """End the stream's active events with `reason` (wire.END_REASONS)."""
        if s.events is not None:
            self._send_events(s, s.events.close(reason))

    def _send_events(self, s: _Stream, bodies: list[dict]) -> None:
        if not bodies:
            return
        for body in bodies:
            self.publisher.send(wire.topic(wire.EVENT_TOPIC, s.id), body)
            if body["type"] != "update":
                log.info(
                    "%s: event %s %s (%s, peak %.2f%s)",
                    s.id,
                    body["name"],
                    "started" if body["type"] == "start" else "ended",
                    body["id"],
                    body["peak"],
                    f", {body['reason']}" if body["reason"] else "",
                )
        self.metrics.active_events(s.id, len(s.events.active))

    # -- shutdown --------------------------------------------------------------------

    def close(self, reason: str = "stopped") -> None:
        """Stop: the active events end with `reason`, the ends go out (within
        CLOSE_LINGER_S), everything is let go of."""
        self.state = "stopping"
        for s in list(self.streams.values()):
            self._end_events(s, reason)
        for preview in self.previews.values():
            preview.close()
        self.heartbeat.halt.set()
        self.heartbeat.join(timeout=1.0)
        self.publisher.close(linger_s=CLOSE_LINGER_S)
        self.metrics.close()
        with self.lock:
            for s in self.streams.values():
                s.close()
