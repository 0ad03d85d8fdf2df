"""The inference process: scheduler tick → window → preprocess → engine → smooth → publish.

Start-up and source health go over the pipe to the parent, with the messages of
stream/control.py (ModelBuilt, EngineReady, then ReadRings; SourceHealth while running;
BadInput or Crash when it fails). A heartbeat thread publishes `status.<stream-id>` twice
a second from the moment the publisher is bound, also while the model loads and while a
slow window runs.

Ticks are aligned to frames: when a tick is due, the loop waits for the next frame to
land in the ring (at most two frame periods) and cuts the window right then, so the
newest frame of each window is fresh instead of up to a frame period old. An audio
window is centred on the video window's centre; the loop waits at most one stride for
its last sample, then runs with the gap zero-filled and says so (`degraded`).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import statistics
import threading
import time
from collections import deque

import numpy as np

from engines import malloc
from stream import control
from stream.errors import UserError
from stream.pipeline.aggregate import softmax, top_k
from stream.pipeline.stats import summary_ms
from stream.transport import wire

log = logging.getLogger("stream.inference")

HEARTBEAT_S = 0.5
#: The "not keeping up" warning: counted over the last PACE_TICKS ticks, at most once
#: every PACE_WARN_EVERY_S seconds.
PACE_TICKS = 20
PACE_WARN_EVERY_S = 30.0


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


class _Stats:
    """What the loop knows, read by the heartbeat thread (plain attributes; GIL-safe)."""

    def __init__(self):
        self.state = "starting"
        self.model = "?"
        self.engine = "?"
        self.windows_run = 0
        self.skipped = 0
        self.stale = 0
        self.ring = None
        self.audio_ring = None
        self.video_kind = "?"
        self.audio = {"source": "none", "used": False}
        self.processes: dict[str, int] = {}
        # capture process name -> {"state": "up" | "down", "restarts", "last_failure"}
        # (from the parent)
        self.capture: dict[str, dict] = {}

    def source_event(self, health: control.SourceHealth) -> None:
        c = self.capture.setdefault(health.name, {"last_failure": None})
        c.update(state=health.state, restarts=health.restarts)
        if health.reason:
            c["last_failure"] = health.reason
        if health.pid is not None:
            self.processes = {**self.processes, health.name: health.pid}

    def _capture(self, name: str) -> dict:
        c = self.capture.get(name, {})
        return {
            "state": c.get("state", "up"),
            "restarts": c.get("restarts", 0),
            "last_failure": c.get("last_failure"),
        }

    @property
    def degraded(self) -> bool:
        return any(c.get("state") == "down" for c in self.capture.values())

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


class _Heartbeat(threading.Thread):
    def __init__(self, publisher, stream_id: str, stats: _Stats):
        super().__init__(name="heartbeat", daemon=True)
        self.publisher = publisher
        self.topic = wire.topic(wire.STATUS_TOPIC, stream_id)
        self.stream_id = stream_id
        self.stats = stats
        self.halt = threading.Event()

    def run(self) -> None:
        seq = 0
        last_ns, last_frames = time.monotonic_ns(), None
        while not self.halt.wait(HEARTBEAT_S if seq else 0):
            s = self.stats
            now = time.monotonic_ns()
            video = s.video_health(now)
            fps_in = 0.0
            if last_frames is not None and now > last_ns:
                fps_in = (video["frames"] - last_frames) / ((now - last_ns) / 1e9)
            last_ns, last_frames = now, video["frames"]
            state = "degraded" if s.state == "running" and s.degraded else s.state
            body = wire.status(
                seq=seq,
                stream=self.stream_id,
                model=s.model,
                engine=s.engine,
                state=state,
                mono_ns=now,
                wall_ns=time.time_ns(),
                fps_in=round(fps_in, 2),
                windows_run=s.windows_run,
                windows_skipped=s.skipped,
                windows_stale=s.stale,
                video=video,
                audio=s.audio_health(now),
                sent=self.publisher.sent,
                dropped=self.publisher.dropped,
                subscriptions=self.publisher.count_subscriptions(),
                processes=s.processes,
            )
            self.publisher.send(self.topic, body)
            seq += 1


def inference_main(cfg, parent_pid: int, conn, stop) -> None:
    """Entry point of the inference process. `cfg` is a stream.config.RunConfig."""
    from stream.pipeline.proc import init_child

    init_child(cfg.log_level, parent_pid)
    loop = None
    try:
        loop = InferenceLoop(cfg, conn, stop)
        if loop.start():
            loop.run()
    except UserError as exc:
        conn.send(control.BadInput(str(exc)))
    except Exception as exc:  # a bug: say so in one line, keep the traceback in the log
        log.exception("inference failed")
        conn.send(control.Crash(f"inference process failed: {type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None
    finally:
        if loop is not None:
            loop.close()


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
        self.stats = _Stats()
        self.ring = self.audio_ring = self.preview = None
        self.publisher = Publisher(  # first: a port in use fails fast
            cfg.publish, curve_secret_key=cfg.curve_secret_key, curve_clients=cfg.curve_clients
        )
        self.heartbeat = _Heartbeat(self.publisher, cfg.stream_id, self.stats)
        self.heartbeat.start()

    # -- start-up --------------------------------------------------------------------

    def start(self) -> bool:
        """Build model and engine, then wait for the rings. False when stopped meanwhile."""
        import engines
        import models
        from stream.pipeline.aggregate import Smoother
        from stream.pipeline.preprocess import LogMel, Preprocessor
        from stream.pipeline.proc import parent_alive
        from stream.pipeline.ring import AudioRing, FrameRing
        from stream.pipeline.window import AudioSampler, Scheduler, WindowGeometry, WindowSampler

        cfg, stats = self.cfg, self.stats
        stats.state = "loading"
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
        stats.model = meta.name
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
        if audio is None and cfg.mic != "none":
            log.info(
                "%s is a video-only model: the microphone (--mic %s) is not used",
                meta.name,
                cfg.mic,
            )
            stats.audio = {"source": "none", "used": False, "note": f"{meta.name} is video-only"}
        try:
            engine = engines.create(
                model,
                model.example_inputs(),
                backend=cfg.engine,
                device=cfg.device,
                precision=cfg.precision,
                compile=cfg.compile,
            )
        except engines.EngineError as exc:
            raise UserError(str(exc)) from None
        self.engine = engine
        stats.engine = engine.name
        if engine.device.type == "cpu":
            import torch

            log.info(
                "engine %s (%s) on %d CPU thread(s), malloc %s",
                engine.name,
                engine.mode,
                torch.get_num_threads(),
                malloc.active(),
            )
        # Each warm-up window timed: the last one (past first-call set-up) tells the parent
        # how long a window in progress may hold up a stop.
        for _ in range(2):
            started = time.monotonic()
            engine.warmup(1)
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
        self.smoother = Smoother(cfg.smoothing)
        if cfg.preview:
            from stream.pipeline.preview import Preview

            self.preview = Preview(f"avstream {cfg.stream_id}")
        self.conn.send(control.EngineReady(engine=engine.name, window_s=window_s))

        while not self.conn.poll(0.05):
            if self.stop.is_set() or not parent_alive():
                return False
        match control.receive(self.conn, "the inference process"):
            case control.ReadRings() as rings:
                pass
            case other:
                control.unexpected(other, "the inference process (waiting for its rings)")
        self.ring = stats.ring = FrameRing.attach(rings.video)
        stats.processes = {**rings.processes, "inference": os.getpid()}
        stats.video_kind = rings.video_kind
        self.frame_period_s = 1.0 / max(1.0, float(rings.fps))
        # A window whose frames lie further than this from their target times is degraded
        # (a source was down, or dropped frames): two frame periods, at least 50 ms.
        self.gap_limit_ns = round(max(2 * self.frame_period_s, 0.05) * 1e9)
        geometry = WindowGeometry.of(meta, self.logmel)
        self.sampler = WindowSampler(self.ring, geometry)
        self.preprocess.warmup(*self.ring.shape[:2])  # plans this geometry, before the first window
        self.audio_sampler = None
        if self.logmel is not None:
            self.audio_ring = stats.audio_ring = AudioRing.attach(rings.audio)
            stats.audio = {"source": rings.audio_kind, "used": True}
            self.audio_sampler = AudioSampler(self.audio_ring, geometry.audio_samples)
        self.scheduler = Scheduler(cfg.stride)
        self.pace = PaceWatch(cfg.stride)
        # What start-up built lives as long as the process: out of the collector's way, so
        # that a full collection (a walk over every object of the model and the libraries,
        # long enough to spoil a window's latency) never lands inside a window.
        gc.collect()
        gc.freeze()
        return True

    # -- running ---------------------------------------------------------------------

    def run(self) -> None:
        from stream.pipeline.proc import parent_alive

        stats = self.stats
        stats.state = "warming"
        topic = wire.topic(wire.PRED_TOPIC, self.cfg.stream_id)
        seq = 0
        last_newest = -1
        while not self.stop.is_set() and parent_alive():
            if not self._tick_due():
                continue
            window_ns = time.monotonic_ns()
            got = self.sampler.sample_in_place(
                lambda w, last=last_newest: self._preprocess(w, last)
            )
            if got is None:  # warming up: the span is not covered yet; again at the next frame
                self.scheduler.restart(self.frame_period_s)
                continue
            if got[1] is None:  # no new frame since the last window
                stats.stale += 1
                self.scheduler.advance(count_skipped=False)
                continue
            window, (inputs, preprocess_ns) = got
            last_newest = window.newest_seq
            stats.state = "running"
            stages = {"ring_read": window.read_ns / 1e6, "preprocess": preprocess_ns / 1e6}
            body, labels = self._infer(window, inputs, stages, window_ns, seq)
            self.publisher.send_prediction(topic, body)
            seq += 1
            stats.windows_run = seq
            behind = self.scheduler.advance()
            stats.skipped = self.scheduler.skipped
            work_ns = time.monotonic_ns() - window_ns - stages.get("audio_wait", 0.0) * 1e6
            warning = self.pace.window(
                skipped=behind,
                engine_s=self.engine_ns / 1e9,
                work_s=work_ns / 1e9,
                now=time.monotonic(),
            )
            if warning is not None:
                log.warning("%s", warning)
            if self.preview is not None:
                frame = window.newest_frame()
                if frame is not None:
                    self.preview.show(frame, labels)
                if self.preview.closed:
                    log.info("preview window closed: stopping")
                    self.stop.set()

    def _tick_due(self) -> bool:
        """Wait (in short slices) for the next tick, then for the next frame to land."""
        while self.conn.poll():  # source health from the parent
            match control.receive(self.conn, "the inference process"):
                case control.SourceHealth() as health:
                    self.stats.source_event(health)
                    reason = f" ({health.reason})" if health.reason else ""
                    log.info("%s is %s%s", health.name, health.state, reason)
                case other:
                    control.unexpected(other, "the inference process (running)")
        wait_s = self.scheduler.due_in_s()
        if wait_s > 0:
            if self.preview is not None:
                self.preview.refresh(self.ring)
            self.stop.wait(min(wait_s, 0.05))
            return False
        seen = self.ring.next_seq
        deadline = time.monotonic() + 2 * self.frame_period_s
        while self.ring.next_seq == seen and time.monotonic() < deadline and not self.ring.closed:
            time.sleep(0.0002)
        return True

    def _preprocess(self, window, last_newest: int) -> tuple[tuple, int] | None:
        """(model inputs, ns it took) from the window's frames where they lie in the ring;
        None when the window has no new frame."""
        if window.newest_seq == last_newest:
            return None
        started = time.monotonic_ns()
        inputs = self.preprocess(window.in_ring, window.seqs)
        return inputs, time.monotonic_ns() - started

    def _infer(
        self, window, inputs: tuple, stages: dict, window_ns: int, seq: int
    ) -> tuple[dict, list]:
        cfg, meta = self.cfg, self.meta
        degraded: list[str] = []
        if window.max_gap_ns > self.gap_limit_ns:  # frames missing inside the window
            degraded.append(
                f"video gap: a frame {window.max_gap_ns / 1e6:.0f} ms from its target time"
            )
        capture_ns = window.end_ns
        audio_span = (0, 0)
        if self.audio_sampler is not None:
            first_ns = window.plan.audio_first_ns  # centred on the video window's centre
            waited_ns = time.monotonic_ns()
            give_up = time.monotonic() + cfg.stride
            while not self.audio_sampler.arrived(first_ns) and time.monotonic() < give_up:
                if self.stop.is_set() or self.audio_ring.closed:
                    break
                time.sleep(0.001)
            stages["audio_wait"] = (time.monotonic_ns() - waited_ns) / 1e6
            aw = self.audio_sampler.sample(first_ns)
            if aw.missing:
                degraded.append(
                    f"audio gap: {aw.missing} of {self.audio_sampler.samples} samples missing"
                )
            else:
                capture_ns = max(capture_ns, aw.end_ns)
            audio_span = (aw.start_ns, aw.end_ns)
            inputs = (*inputs, self.logmel(aw.samples))
        infer_start_ns = time.monotonic_ns()
        logits = self.engine(*inputs)
        infer_end_ns = time.monotonic_ns()
        self.engine_ns = infer_end_ns - infer_start_ns
        probs = softmax(logits[0].detach().cpu().numpy().astype(np.float64))
        labels = top_k(self.smoother.update(probs), meta.labels, cfg.topk)
        body = wire.prediction(
            seq=seq,
            stream=cfg.stream_id,
            model=meta.name,
            engine=self.engine.name,
            labels=labels,
            window_start_ns=window.start_ns,
            window_end_ns=window.end_ns,
            frames=window.frames,
            audio_start_ns=audio_span[0],
            audio_end_ns=audio_span[1],
            capture_ns=capture_ns,
            window_ns=window_ns,
            infer_start_ns=infer_start_ns,
            infer_end_ns=infer_end_ns,
            smoothing=cfg.smoothing,
            random_weights=cfg.weights is None,
            stride_s=cfg.stride,
            skipped=self.scheduler.skipped,
            degraded=degraded,
            stages_ms=stages,
        )
        return body, labels

    # -- shutdown --------------------------------------------------------------------

    def close(self) -> None:
        self.stats.state = "stopping"
        if self.preview is not None:
            self.preview.close()
        self.heartbeat.halt.set()
        self.heartbeat.join(timeout=1.0)
        self.publisher.close()
        for ring in (self.ring, self.audio_ring):
            if ring is not None:
                ring.close()
        self.stats.ring = self.stats.audio_ring = self.ring = self.audio_ring = None
