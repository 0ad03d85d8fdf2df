"""The batching policy (stream/pipeline/batching.py) on a fake clock: what runs together,
how long a due window is held for others, the cap, fairness under overload and the skips
it leaves to each stream's scheduler."""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
import time

import numpy as np
import pytest
import torch
import zmq

from helpers_models import REDUCED
from stream import config, control
from stream.pipeline.aggregate import softmax, top_k
from stream.pipeline.batching import Candidate, Plan, plan
from stream.pipeline.inference import InferenceLoop
from stream.pipeline.ring import FrameRing
from stream.pipeline.window import Scheduler
from stream.transport import wire
from stream.transport.subscribe import Subscriber

MS = 1_000_000


def _c(stream: str, due_ms: float, stride_ms: float = 500, ran: int = 0) -> Candidate:
    return Candidate(stream, round(due_ms * MS), round(stride_ms * MS), ran)


def _plan(candidates, now_ms: float, *, max_batch: int = 8, batch_wait_ms: float = 20) -> Plan:
    return plan(
        candidates, round(now_ms * MS), max_batch=max_batch, batch_wait_ns=round(batch_wait_ms * MS)
    )


def test_nothing_due_wakes_at_the_earliest_tick():
    assert _plan([_c("a", 130), _c("b", 110)], now_ms=100) == Plan((), 110 * MS)
    assert _plan([], now_ms=100) == Plan((), None)


def test_a_due_window_runs_at_once_when_no_other_falls_due_within_the_wait():
    assert _plan([_c("a", 100)], now_ms=100) == Plan(("a",))
    # b's tick comes after a's wait (20 ms) ends: a does not wait for it
    assert _plan([_c("a", 100), _c("b", 121)], now_ms=100) == Plan(("a",))
    assert _plan([_c("a", 100)], now_ms=100, batch_wait_ms=0) == Plan(("a",))


def test_a_due_window_waits_for_one_falling_due_within_the_wait():
    candidates = [_c("a", 100), _c("b", 112), _c("c", 119), _c("d", 300)]
    assert _plan(candidates, now_ms=100) == Plan((), 112 * MS)  # look again at b's tick
    assert _plan(candidates, now_ms=112) == Plan((), 119 * MS)  # and at c's
    assert _plan(candidates, now_ms=119) == Plan(("a", "b", "c"))  # longest-waiting first
    # batch_wait 0: never held
    assert _plan(candidates, now_ms=100, batch_wait_ms=0) == Plan(("a",))


def test_the_wait_counts_from_the_earliest_due_tick_not_from_now():
    # a fell due 25 ms ago (the engine was busy): held no longer, although b comes in 1 ms
    assert _plan([_c("a", 100), _c("b", 126)], now_ms=125) == Plan(("a",))
    # a fell due 15 ms ago: it may wait 5 ms more, and b comes in 3
    assert _plan([_c("a", 100), _c("b", 118)], now_ms=115) == Plan((), 118 * MS)
    # two due: the earlier one's hold ends first, and that ends the batch's
    assert _plan([_c("a", 100), _c("b", 110), _c("c", 125)], now_ms=110) == Plan(("a", "b"))


def test_a_window_is_never_held_up_to_its_own_next_tick():
    # a wait longer than the stride (the run's options forbid it) still ends before a's
    # next tick at 130: c's tick at 130 is too late, b's at 129 is not
    assert _plan([_c("a", 100, stride_ms=30), _c("c", 130)], now_ms=100, batch_wait_ms=50) == Plan(
        ("a",)
    )
    assert _plan([_c("a", 100, stride_ms=30), _c("b", 129)], now_ms=100, batch_wait_ms=50) == Plan(
        (), 129 * MS
    )


def test_the_batch_is_capped_and_the_longest_waiting_go_first():
    candidates = [_c("e", 104), _c("d", 103), _c("c", 102), _c("b", 101), _c("a", 100)]
    assert _plan(candidates, now_ms=110, max_batch=2) == Plan(("a", "b"))
    # a full batch runs at once, without waiting for one more
    assert _plan(candidates + [_c("f", 111)], now_ms=110, max_batch=5) == Plan(
        ("a", "b", "c", "d", "e")
    )
    # the stream whose last window ran longest ago goes first, whatever its tick; then
    # the earliest tick, then the id
    waited = [_c("x", 100, ran=5), _c("y", 105, ran=2), _c("w", 100, ran=5), _c("v", 99, ran=6)]
    assert _plan(waited, now_ms=110, max_batch=3) == Plan(("y", "w", "x"))
    assert _plan(waited + [_c("new", 109)], now_ms=110, max_batch=2) == Plan(("new", "y"))


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="max_batch"):
        _plan([_c("a", 0)], now_ms=0, max_batch=0)
    with pytest.raises(ValueError, match="batch_wait"):
        _plan([_c("a", 0)], now_ms=0, batch_wait_ms=-1)


def _simulate(
    starts_ms: list[float],
    *,
    stride_ms: float,
    engine_ms,
    max_batch: int,
    batch_wait_ms: float,
    until_ms: float,
):
    """The inference loop's use of the policy on a fake clock: a Scheduler per stream, an
    engine call taking engine_ms(batch size). (runs per stream, skips per stream, the
    batches in order)."""
    names = [f"s{i}" for i in range(len(starts_ms))]
    schedulers = {
        n: Scheduler(stride_ms / 1e3, start_ns=round(t * MS))
        for n, t in zip(names, starts_ms, strict=True)
    }
    ran = dict.fromkeys(names, 0)
    stamp = 0
    runs = dict.fromkeys(names, 0)
    batches: list[tuple[str, ...]] = []
    now, waited = 0, False
    while now < until_ms * MS:
        decided = plan(
            [Candidate(n, s.next_tick_ns, s.stride_ns, ran[n]) for n, s in schedulers.items()],
            now,
            max_batch=max_batch,
            batch_wait_ns=round(batch_wait_ms * MS),
        )
        if not decided.run:
            assert decided.wake_ns > now
            now, waited = decided.wake_ns, True
            continue
        if waited:  # a wait for more never ends past the earliest due tick's batch_wait
            assert now <= min(schedulers[n].next_tick_ns for n in decided.run) + batch_wait_ms * MS
        waited = False
        batches.append(decided.run)
        now += round(engine_ms(len(decided.run)) * MS)
        for n in decided.run:
            runs[n] += 1
            stamp += 1
            ran[n] = stamp
            schedulers[n].advance(now)
    return runs, {n: s.skipped for n, s in schedulers.items()}, batches


def test_streams_that_fall_due_close_together_run_as_one_batch_and_skip_nothing():
    # four streams whose grids started within 15 ms; the engine keeps up easily
    runs, skipped, batches = _simulate(
        [0, 5, 9, 15],
        stride_ms=500,
        engine_ms=lambda b: 40 + 10 * b,
        max_batch=8,
        batch_wait_ms=20,
        until_ms=10_000,
    )
    assert set(batches) == {("s0", "s1", "s2", "s3")}
    assert len(batches) == 20 and set(runs.values()) == {20}
    assert set(skipped.values()) == {0}


def test_streams_apart_run_alone():
    runs, skipped, batches = _simulate(
        [0, 100, 250],
        stride_ms=500,
        engine_ms=lambda b: 40,
        max_batch=8,
        batch_wait_ms=20,
        until_ms=5_000,
    )
    assert {len(b) for b in batches} == {1} and set(skipped.values()) == {0}
    assert set(runs.values()) == {10}


def test_under_overload_no_stream_starves_and_skips_are_counted_per_stream():
    # five streams want a window every 100 ms; the engine takes 150 ms for two
    streams, max_batch = 5, 2
    runs, skipped, batches = _simulate(
        [0, 3, 6, 9, 12],
        stride_ms=100,
        engine_ms=lambda b: 150,
        max_batch=max_batch,
        batch_wait_ms=20,
        until_ms=30_000,
    )
    assert {len(b) for b in batches} == {max_batch}
    # every stream runs within ceil(streams / max_batch) batches of its last window
    most = math.ceil(streams / max_batch)
    for name in runs:
        ran = [i for i, b in enumerate(batches) if name in b]
        assert ran[0] < most and max(b - a for a, b in zip(ran, ran[1:])) <= most, (name, ran)
    # fair shares, and each stream's ticks are either run or counted as skipped
    assert max(runs.values()) - min(runs.values()) <= 1, runs
    for name in runs:
        assert abs(runs[name] + skipped[name] - 300) <= 2, (name, runs[name], skipped[name])


# -- the inference loop, in this process: two streams on one engine --------------------


class _Source(threading.Thread):
    """A camera stand-in: writes the same picture into a ring 30 times a second."""

    def __init__(self, picture: np.ndarray, slots: int):
        super().__init__(daemon=True)
        self.picture = picture
        self.ring = FrameRing.create(slots, *picture.shape[:2])
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(1 / 30):  # the source's frame rate, not a wait for anything
            self.ring.write(self.picture, time.monotonic_ns())

    def close(self) -> None:
        self.halt.set()
        self.join(timeout=10)
        self.ring.close()


def _expected(cfg, picture: np.ndarray) -> dict[int, float]:
    """What the model alone (batch 1, eager, smoothing none) says of a clip of `picture`:
    class index -> probability."""
    import models
    from stream.pipeline.preprocess import Preprocessor

    model = models.create(cfg.model, weights=None, seed=0, **cfg.model_options)
    meta = model.meta
    pre = Preprocessor(short_side=meta.short_side, crop=meta.crop, mean=meta.mean, std=meta.std)
    clips = [np.stack([picture] * v.frames) for v in meta.video]
    with torch.inference_mode():
        logits = model(*pre(clips))[0].numpy()
    return {x["index"]: x["score"] for x in top_k(softmax(logits), meta.labels, len(meta.labels))}


def _scores(body: dict) -> dict[int, float]:
    return {x["index"]: x["score"] for x in body["labels"]}


def test_two_streams_run_as_one_batch_each_on_its_own_topic():
    """A real InferenceLoop (eager reduced X3D-XS) serves two streams fed different
    pictures: their windows run together (batch 2), each stream's prediction is the one
    its picture gives alone, on its own topic; a stream removed says so in its last
    status and the other runs on alone; the run status counts it all."""
    cfg = config.resolve(
        {
            "camera": ["synthetic", "synthetic"],
            "mic": ["none", "none"],
            "weights": "none",
            "compile": False,
            "engine": "torch",
            "device": "cpu",
            "precision": "fp32",
            "smoothing": "none",
            "stride": 0.5,
            "max_batch": 2,
            "batch_wait": 0.1,
        }
    )
    cfg.model_options = REDUCED[cfg.model]
    cfg.topk = 10_000  # every class: scores compared by index, whatever near-ties do
    cfg.publish = "tcp://127.0.0.1:*"
    # Random weights say much the same of any picture: black and noise differ most.
    pictures = {
        "cam0": np.zeros((120, 160, 3), np.uint8),
        "cam1": np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8),
    }
    assert [s.id for s in cfg.streams] == list(pictures)
    expected = {sid: _expected(cfg, p) for sid, p in pictures.items()}
    a, b = expected.values()
    assert max(abs(a[i] - b[i]) / a[i] for i in a) > 1e-3  # 100 x the tolerance: routing shows
    parent, child = multiprocessing.Pipe()
    stop = threading.Event()
    failures: list[BaseException] = []
    loop = InferenceLoop(cfg, child, stop)
    endpoint = loop.publisher._socket.getsockopt(zmq.LAST_ENDPOINT).decode()

    def serve() -> None:
        try:
            loop.start()
            loop.run()
        except BaseException as exc:
            failures.append(exc)
            stop.set()

    def receive() -> control.Message:
        assert parent.poll(180), "nothing from the inference loop in 180 s"
        return control.receive(parent, "the test")

    sources = {sid: _Source(p, slots=90) for sid, p in pictures.items()}
    thread = threading.Thread(target=serve, daemon=True)
    got: dict[str, list[dict]] = {}

    def read_until(done, what: str) -> None:
        deadline = time.monotonic() + 180
        while not done():
            assert not failures, failures
            assert time.monotonic() < deadline, f"{what}: not within 180 s"
            try:
                msg = sub.recv(timeout=1)
            except TimeoutError:
                continue
            got.setdefault(msg.topic, []).append(msg.body)

    try:
        with Subscriber(endpoint, topics=("pred.", "status.", wire.RUN_TOPIC)) as sub:
            thread.start()
            assert isinstance(receive(), control.ModelBuilt)
            ready = receive()
            assert isinstance(ready, control.EngineReady) and ready.max_batch == 2
            for source in sources.values():
                source.start()
            for sid, source in sources.items():
                parent.send(
                    control.AddStream(
                        stream=sid,
                        stride=0.5,
                        video=source.ring.name,
                        fps=30.0,
                        video_kind="synthetic",
                        audio=None,
                        audio_kind=None,
                        processes={"main": os.getpid()},
                    )
                )
            batched = lambda sid: [p for p in got.get(f"pred.{sid}", []) if p["batch"] == 2]  # noqa: E731
            read_until(lambda: len(batched("cam0")) >= 3 and len(batched("cam1")) >= 3, "batches")
            for sid in pictures:
                for p in got[f"pred.{sid}"]:
                    assert p["stream"] == sid and p["skipped"] == 0, p
                    assert _scores(p).keys() == expected[sid].keys()
                    for i, score in _scores(p).items():
                        assert score == pytest.approx(expected[sid][i], rel=1e-5), (sid, i)
                seqs = [p["seq"] for p in got[f"pred.{sid}"]]
                assert seqs == list(range(len(seqs)))
            # the pair ran as one engine call: the same infer times
            pairs = {p["t"]["infer_start_ns"] for p in batched("cam0")}
            assert pairs & {p["t"]["infer_start_ns"] for p in batched("cam1")}

            parent.send(control.RemoveStream("cam0", "removed"))
            assert receive() == control.StreamRemoved("cam0")
            removed_at = len(got.get("pred.cam1", []))
            read_until(
                lambda: (
                    any(s["state"] == "removed" for s in got.get("status.cam0", []))
                    and len(got["pred.cam1"]) >= removed_at + 3
                ),
                "cam1 alone",
            )
            last = got["status.cam0"][-1]
            assert last["state"] == "removed" and last["windows"]["run"] >= 3, last
            assert all(s["state"] != "removed" for s in got["status.cam0"][:-1])
            assert [p["batch"] for p in got["pred.cam1"][removed_at + 1 :]] == [1] * (
                len(got["pred.cam1"]) - removed_at - 1
            )
            got.pop(wire.RUN_TOPIC, None)
            read_until(lambda: got.get(wire.RUN_TOPIC), "a run status")
            run = got[wire.RUN_TOPIC][-1]
            assert [s["id"] for s in run["streams"]] == ["cam1"]  # a removed stream goes
            assert run["state"] == "running" and run["max_batch"] == 2
            assert run["batches"][1] >= 3 and run["batches"][0] >= 2, run["batches"]
            assert run["pid"] == os.getpid() and run["model"] == cfg.model

            # cam1's camera goes down: its status says degraded, the run status why
            def latest(topic: str) -> dict:
                return got.get(topic, [{}])[-1]

            parent.send(control.SourceHealth("cam1", "capture-video", "down", "exit -9", 1, None))
            read_until(
                lambda: (
                    latest("status.cam1").get("state") == "degraded"
                    and latest(wire.RUN_TOPIC).get("streams")
                    == [
                        {
                            "id": "cam1",
                            "state": "degraded",
                            "reason": "capture-video down: exit -9",
                            "windows_run": latest("status.cam1")["windows"]["run"],
                            "windows_skipped": 0,
                        }
                    ]
                ),
                "cam1 degraded",
            )
            parent.send(control.SourceHealth("cam1", "capture-video", "up", None, 1, 4242))
            # a stream the parent starts, which fails before it is served; then cam1's
            # file ends: both stay in the run status, with why
            parent.send(control.StreamState("cam9", "starting", None))
            read_until(lambda: latest("status.cam9").get("state") == "starting", "cam9")
            parent.send(control.StreamState("cam9", "failed", "camera 9 did not open"))
            parent.send(control.RemoveStream("cam1", "ended"))
            assert receive() == control.StreamRemoved("cam1")
            parent.send(control.StreamState("cam1", "ended", "end of clip.mp4"))
            ends = [
                ("cam9", "failed", "camera 9 did not open"),
                ("cam1", "ended", "end of clip.mp4"),
            ]
            read_until(
                lambda: (
                    [
                        (s["id"], s["state"], s.get("reason"))
                        for s in latest(wire.RUN_TOPIC).get("streams", [])
                    ]
                    == ends
                ),
                "the ends in the run status",
            )
            assert latest("status.cam9")["state"] == "failed"
            assert latest("status.cam1")["state"] == "ended"
            assert latest("status.cam1")["processes"]["capture-video"] == 4242
            # the run's totals count the streams no longer listed too
            windows = latest(wire.RUN_TOPIC)["windows"]
            assert windows == {"run": len(got["pred.cam0"]) + len(got["pred.cam1"]), "skipped": 0}
        assert not failures, failures
    finally:
        stop.set()
        thread.join(timeout=60)
        loop.close()
        for source in sources.values():
            source.close()
    assert not thread.is_alive() and not failures, failures
