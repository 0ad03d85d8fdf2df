"""The inference process: scheduler tick → window → preprocess → engine → smooth → publish.

Start-up, over the pipe to the parent:
  child → parent  ("model", info)   the model is built; info has its span (the parent
                                    sizes the ring from it)
  child → parent  ("ready", info)   publisher bound, engine built and warmed up
  parent → child  ("ring", name)    the frame ring to read
  child → parent  ("error", line)   a user error at start-up (the run ends, exit 2)
A heartbeat thread publishes `status.<stream-id>` twice a second from the moment the
publisher is bound, also while the model loads and while a slow window runs.

Ticks are aligned to frames: when a tick is due, the loop waits for the next frame to
land in the ring (at most two frame periods) and cuts the window right then, so the
newest frame of each window is fresh instead of up to a frame period old.
"""

from __future__ import annotations

import logging
import threading
import time

from . import wire
from .errors import UserError

log = logging.getLogger("stream.inference")

HEARTBEAT_S = 0.5


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

    def audio_health(self, now_ns: int) -> dict:
        ring = self.audio_ring
        if ring is None:
            return self.audio
        count, _, _ = ring.clock()
        age_ms = (now_ns - ring.time_of(count - 1)) / 1e6 if count else None
        return {
            **self.audio, "samples": count, "rate": ring.sample_rate, "overflows": ring.overflows,
            "last_sample_age_ms": age_ms, "healthy": age_ms is not None and age_ms < 500,
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
        last = (time.monotonic_ns(), 0)
        while not self.halt.wait(HEARTBEAT_S if seq else 0):
            s = self.stats
            now = time.monotonic_ns()
            ring = s.ring
            frames = ring.next_seq if ring is not None else 0
            fps_in = (frames - last[1]) / ((now - last[0]) / 1e9) if now > last[0] else 0.0
            last = (now, frames)
            age_ms = None
            if ring is not None and frames:
                _, times = ring.snapshot()
                age_ms = (now - int(times[-1])) / 1e6 if len(times) else None
            body = wire.status(
                seq=seq, stream=self.stream_id, model=s.model, engine=s.engine, state=s.state,
                mono_ns=now, wall_ns=time.time_ns(), fps_in=round(fps_in, 2),
                windows={"run": s.windows_run, "skipped": s.skipped, "stale": s.stale},
                sources={
                    "video": {"source": s.video_kind, "frames": frames, "last_frame_age_ms": age_ms},
                    "audio": s.audio_health(now),
                },
                publish={"sent": self.publisher.sent, "dropped": self.publisher.dropped},
            )
            self.publisher.send(self.topic, body)
            seq += 1


def inference_main(cfg, parent_pid: int, conn, stop) -> None:
    """Entry point of the inference process. `cfg` is a stream.config.RunConfig."""
    from .proc import init_child

    init_child(cfg.log_level, parent_pid)
    try:
        _run(cfg, conn, stop)
    except UserError as exc:
        conn.send(("error", str(exc)))
    except Exception as exc:  # a bug: say so in one line, keep the traceback in the log
        log.exception("inference failed")
        conn.send(("crash", f"inference process failed: {type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None


def _run(cfg, conn, stop) -> None:
    import numpy as np

    import engines
    import models

    from .aggregate import Smoother, softmax, top_k
    from .preprocess import LogMel, Preprocessor
    from .proc import parent_alive
    from .publish import Publisher
    from .ring import AudioRing, FrameRing
    from .window import AudioSampler, PathwaySpec, Scheduler, WindowSampler

    stats = _Stats()
    publisher = Publisher(cfg.publish)
    heartbeat = _Heartbeat(publisher, cfg.stream_id, stats)
    heartbeat.start()
    ring = preview = None
    try:
        stats.state = "loading"
        try:
            model = models.create(cfg.model, weights=cfg.weights, num_classes=cfg.num_classes)
        except models.ModelError as exc:
            raise UserError(str(exc)) from None
        meta = model.meta
        stats.model = meta.name
        audio = meta.audio
        conn.send((
            "model",
            {"name": meta.name, "span_s": meta.span_s,
             "audio": None if audio is None else {"rate": audio.sample_rate, "span_s": audio.span_s}},
        ))
        if cfg.weights is None:
            log.warning(
                "no weights: %s is randomly initialised and its predictions are random "
                "(pass --weights kinetics400, a checkpoint path or a URL)", meta.name,
            )
        if audio is None and cfg.mic != "none":
            log.info("%s is a video-only model: the microphone (--mic %s) is not used", meta.name, cfg.mic)
            stats.audio = {"source": "none", "used": False, "note": f"{meta.name} is video-only"}
        try:
            engine = engines.create(
                model, model.example_inputs(), backend=cfg.engine, device=cfg.device, precision=cfg.precision
            )
        except engines.EngineError as exc:
            raise UserError(str(exc)) from None
        stats.engine = engine.name
        engine.warmup()
        preprocess = Preprocessor(
            short_side=meta.short_side, crop=meta.crop, mean=meta.mean, std=meta.std,
            device=engine.device, dtype=engine.dtype,
        )
        logmel = None if audio is None else LogMel(audio, device=engine.device, dtype=engine.dtype)
        smoother = Smoother(cfg.smoothing)
        if cfg.preview:
            from .preview import Preview

            preview = Preview(f"avstream {cfg.stream_id}")
        conn.send(("ready", {"engine": engine.name}))

        while not conn.poll(0.05):
            if stop.is_set() or not parent_alive():
                return
        kind, payload = conn.recv()
        if kind != "ring":
            return
        ring = FrameRing.attach(payload["name"])
        stats.ring = ring
        stats.video_kind = payload.get("video_kind", "?")
        sampler = WindowSampler(ring, [PathwaySpec(v.frames, v.interval_s) for v in meta.video])
        audio_sampler = None
        if logmel is not None:
            audio_ring = AudioRing.attach(payload["audio"]["name"])
            stats.audio_ring = audio_ring
            stats.audio = {"source": payload["audio"]["kind"], "used": True}
            audio_sampler = AudioSampler(audio_ring, logmel.samples)
        scheduler = Scheduler(cfg.stride)
        frame_period_s = 1.0 / max(1.0, float(payload.get("fps", 30.0)))
        topic = wire.topic(wire.PRED_TOPIC, cfg.stream_id)
        stats.state = "warming"
        seq = 0
        last_newest = -1
        while not stop.is_set() and parent_alive():
            wait_s = scheduler.due_in_s()
            if wait_s > 0:
                if preview is not None:
                    preview.refresh(ring)
                stop.wait(min(wait_s, 0.05))
                continue
            # Align to the frames: cut the window as soon as the next frame lands.
            seen = ring.next_seq
            deadline = time.monotonic() + 2 * frame_period_s
            while ring.next_seq == seen and time.monotonic() < deadline and not ring.closed:
                time.sleep(0.0002)
            window_ns = time.monotonic_ns()
            window = sampler.sample()
            if window is None:
                scheduler.advance(count_skipped=False)
                continue
            if window.newest_seq == last_newest:  # nothing new since the last window
                stats.stale += 1
                scheduler.advance(count_skipped=False)
                if ring.closed:
                    stats.state = "ended"
                continue
            last_newest = window.newest_seq
            stats.state = "running"
            inputs = preprocess(window.clips)
            degraded = []
            capture_ns = window.end_ns
            audio_span = (0, 0)
            if audio_sampler is not None:
                # The audio window is centred on the video window's centre; wait for its
                # last sample at most one stride, then run with the gap zero-filled.
                centre_ns = window.end_ns - sampler.span_ns // 2
                give_up = time.monotonic() + cfg.stride
                while not audio_sampler.arrived(centre_ns) and time.monotonic() < give_up:
                    if stop.is_set() or audio_sampler.ring.closed:
                        break
                    time.sleep(0.001)
                aw = audio_sampler.sample(centre_ns)
                if aw.missing:
                    degraded.append(f"audio gap: {aw.missing} of {audio_sampler.samples} samples missing")
                else:
                    capture_ns = max(capture_ns, aw.end_ns)
                audio_span = (aw.start_ns, aw.end_ns)
                inputs = (*inputs, logmel(aw.samples))
            infer_start_ns = time.monotonic_ns()
            logits = engine(*inputs)
            infer_end_ns = time.monotonic_ns()
            probs = softmax(logits[0].detach().cpu().numpy().astype(np.float64))
            labels = top_k(smoother.update(probs), meta.labels, cfg.topk)
            body = wire.prediction(
                seq=seq, stream=cfg.stream_id, model=meta.name, engine=engine.name, labels=labels,
                window={
                    "start_ns": window.start_ns, "end_ns": window.end_ns, "frames": window.frames,
                    "audio_s": (audio_span[1] - audio_span[0]) / 1e9,
                    "audio_start_ns": audio_span[0], "audio_end_ns": audio_span[1],
                },
                capture_ns=capture_ns, infer_start_ns=infer_start_ns, infer_end_ns=infer_end_ns,
                publish_ns=0, wall_ns=0, smoothing=cfg.smoothing, degraded=degraded,
            )
            body["t"]["window_ns"] = window_ns
            publisher.send(topic, body, stamp_publish=True)
            seq += 1
            stats.windows_run = seq
            scheduler.advance()
            stats.skipped = scheduler.skipped
            if preview is not None:
                preview.show(window.clips[0][-1], labels)
                if preview.closed:
                    log.info("preview window closed: stopping")
                    stop.set()
    finally:
        stats.state = "stopping"
        if preview is not None:
            preview.close()
        heartbeat.halt.set()
        heartbeat.join(timeout=1.0)
        publisher.close()
        if ring is not None:
            stats.ring = None
            ring.close()
        if stats.audio_ring is not None:
            audio_ring, stats.audio_ring = stats.audio_ring, None
            audio_ring.close()
