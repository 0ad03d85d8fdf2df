"""Wire schema round trip and validation; smoothing and top-k."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from helpers import REPO, Sending
from stream.errors import UserError
from stream.pipeline.aggregate import Smoother, softmax, top_k
from stream.transport import wire
from stream.transport.publish import Publisher
from stream.transport.subscribe import Message, Subscriber, format_message, waiting_line

# Every field wire.prediction takes: the body a running stream builds for one window.
_PREDICTION_FIELDS = {
    "seq": 3,
    "stream": "cam0",
    "model": "x3d_xs",
    "engine": "torch-cpu",
    "labels": [{"label": "whistling", "index": 398, "score": 0.5}],
    "window_start_ns": 10,
    "window_end_ns": 20,
    "frames": 4,
    "audio_start_ns": 0,
    "audio_end_ns": 0,
    "capture_ns": 20,
    "window_ns": 21,
    "infer_start_ns": 25,
    "infer_end_ns": 45,
    "smoothing": "ema:0.5",
    "random_weights": False,
    "stride_s": 0.25,
    "skipped": 0,
    "degraded": [],
    "stages_ms": {"ring_read": 0.12345, "preprocess": 2.0},
    "batch": 1,
}


def _prediction(**over):
    """A complete prediction message body (stamped as at a publish at 50 ns), with the
    top-level fields in `over` replaced."""
    body = wire.prediction(**_PREDICTION_FIELDS)
    wire.stamp_publish(body, publish_ns=50, wall_ns=1_700_000_000_000_000_000)
    body.update(over)
    return body


def _status(**over):
    body = wire.status(
        seq=0,
        stream="cam0",
        model="x3d_xs",
        engine="torch-cpu",
        state="running",
        mono_ns=1,
        wall_ns=2,
        fps_in=30.0,
        windows_run=1,
        windows_skipped=0,
        windows_stale=0,
        video={"source": "synthetic"},
        audio={"source": "none", "used": False},
        sent=1,
        dropped=0,
        subscriptions=1,
        processes={"main": 100},
        events=[wire.active_event(name="knocking", id="cam0-knocking-1", start_ns=5, peak=0.9)],
    )
    body.update(over)
    return body


def _run_status(**over):
    """A complete run status body: two streams, one of them ended."""
    body = wire.run_status(
        seq=0,
        host="box",
        pid=4321,
        model="x3d_xs",
        engine="torch-cpu",
        state="running",
        mono_ns=1,
        wall_ns=1_700_000_000_000_000_000,
        max_batch=4,
        batch_wait_s=0.02,
        streams=[
            wire.run_stream(
                stream="cam0", state="running", reason=None, windows_run=10, windows_skipped=2
            ),
            wire.run_stream(
                stream="door", state="ended", reason="end of file", windows_run=5, windows_skipped=0
            ),
        ],
        batches=[3, 6, 0, 0],
        windows_run=19,
        windows_skipped=2,
        sent=40,
        dropped=0,
        subscriptions=1,
    )
    body.update(over)
    return body


#: An event's start, 14:02:11 in Unix time.
_EVENT_WALL = 1_700_000_000_000_000_000


def _event(kind: str = "end", **over):
    """A complete event message body: the end of cam0's knocking-3 after 3.2 s (its
    start, or an update, with `kind`), with the top-level fields in `over` replaced."""
    ended = kind == "end"
    body = wire.event(
        seq=4,
        id="cam0-knocking-3",
        stream="cam0",
        name="knocking",
        labels=["knocking on door"],
        type=kind,
        start_ns=10_000_000_000,
        end_ns=13_200_000_000 if ended else None,
        start_wall_ns=_EVENT_WALL,
        end_wall_ns=_EVENT_WALL + 3_200_000_000 if ended else None,
        peak=0.91,
        mean=0.78,
        seq_first=40,
        seq_last=52 if ended else 44,
        degraded=False,
        reason="below threshold" if ended else None,
        wall_ns=_EVENT_WALL + (5_100_000_000 if ended else 1_000_000_000),
    )
    body.update(over)
    return body


def test_prediction_round_trip():
    body = _prediction()
    assert body["latency_ms"] == {"engine": 20 / 1e6, "capture_to_publish": 30 / 1e6}
    assert body["t"] == {
        "capture_ns": 20,
        "window_ns": 21,
        "infer_start_ns": 25,
        "infer_end_ns": 45,
        "publish_ns": 50,
        "wall_ns": 1_700_000_000_000_000_000,
    }
    assert body["window"] == {
        "start_ns": 10,
        "end_ns": 20,
        "frames": 4,
        "audio_s": 0.0,
        "audio_start_ns": 0,
        "audio_end_ns": 0,
    }
    assert body["stages_ms"] == {"ring_read": 0.123, "preprocess": 2.0}
    assert (body["random_weights"], body["stride_s"], body["skipped"], body["degraded"]) == (
        False,
        0.25,
        0,
        [],
    )
    frames = wire.encode(wire.topic(wire.PRED_TOPIC, "cam0"), body)
    assert frames[0] == b"pred.cam0"
    topic, decoded = wire.decode(frames)
    assert topic == "pred.cam0" and decoded == body


def test_a_prediction_is_a_message_once_stamped():
    body = _prediction()
    for key in ("publish_ns", "wall_ns"):
        del body["t"][key]
    del body["latency_ms"]["capture_to_publish"]
    with pytest.raises(wire.WireError, match="publish_ns"):
        wire.validate(body)  # what prediction() builds is not sent before stamp_publish
    wire.stamp_publish(body, publish_ns=1020, wall_ns=7)
    assert wire.validate(body)["latency_ms"]["capture_to_publish"] == (1020 - 20) / 1e6
    assert (body["t"]["publish_ns"], body["t"]["wall_ns"]) == (1020, 7)


def test_audio_seconds_are_the_sound_window_given():
    body = wire.prediction(
        **{
            **_PREDICTION_FIELDS,
            "audio_start_ns": 1_000_000_000,
            "audio_end_ns": 3_064_000_000,
        }
    )
    assert body["window"]["audio_s"] == 2.064


def test_publisher_stamps_a_prediction_as_it_sends_it():
    context = zmq.Context()
    publisher = Publisher("tcp://127.0.0.1:*", context=context)
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"pred.")
    sub.connect(publisher._socket.getsockopt(zmq.LAST_ENDPOINT).decode())
    try:
        deadline = time.monotonic() + 60
        while publisher.count_subscriptions() == 0:  # the XPUB reports the subscription
            assert time.monotonic() < deadline, "the subscription never arrived"
            time.sleep(0.01)
        body = wire.prediction(**{**_PREDICTION_FIELDS, "capture_ns": time.monotonic_ns()})
        wall, mono = time.time_ns(), time.monotonic_ns()
        assert publisher.send_prediction("pred.cam0", body)
        mono_after, wall_after = time.monotonic_ns(), time.time_ns()
        assert sub.poll(30_000), "the prediction did not arrive"
        topic, got = wire.decode(sub.recv_multipart())
    finally:
        sub.close(0)
        publisher.close()
        context.term()
    t = got["t"]
    assert topic == "pred.cam0" and mono <= t["publish_ns"] <= mono_after
    assert wall <= t["wall_ns"] <= wall_after
    assert got["latency_ms"]["capture_to_publish"] == (t["publish_ns"] - t["capture_ns"]) / 1e6
    assert (publisher.sent, publisher.dropped) == (1, 0)


def test_status_round_trip():
    body = _status()
    assert wire.decode(wire.encode("status.cam0", body)) == ("status.cam0", body)
    assert body["events"] == [
        {"name": "knocking", "id": "cam0-knocking-1", "start_ns": 5, "peak": 0.9}
    ]
    older = _status()
    del older["events"]  # a publisher of before events
    wire.validate(older)


@pytest.mark.parametrize("kind", wire.EVENT_TYPES)
def test_event_round_trip(kind):
    body = _event(kind)
    frames = wire.encode(wire.topic(wire.EVENT_TOPIC, "cam0"), body)
    assert frames[0] == b"event.cam0"
    assert wire.decode(frames) == ("event.cam0", body)
    assert set(body) == {
        "schema", "seq", "id", "stream", "name", "labels", "type", "start_ns", "end_ns",
        "start_wall_ns", "end_wall_ns", "peak", "mean", "seq_first", "seq_last", "degraded",
        "reason", "wall_ns",
    }  # fmt: skip
    assert body["schema"] == wire.EVENT_SCHEMA == "avstream.event.v1"


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (_event(type="stop"), "event.type is 'stop', not one of start, update, end"),
        (_event(reason=None), "event.reason is None in an event of type 'end': an end has one"),
        (_event(end_ns=None), "event.end_ns is None in an event of type 'end'"),
        (_event("start", reason="stopped"), "event.reason is 'stopped' in an event of type"),
        (_event("update", end_ns=5), "event.end_ns is 5 in an event of type 'update': null"),
        (_event("start", end_wall_ns=5), "event.end_wall_ns is 5"),
        (_event(seq_first=53), "event.seq_first 53 is after event.seq_last 52"),
        (_event(degraded=0), "event.degraded is int, not true or false"),
        (_event(end_ns=1.5), "event.end_ns is float, not an integer or null"),
        (_event(reason=3), "event.reason is int, not a string or null"),
        (_event(labels="knocking on door"), "event.labels is not an array"),
        (_event(peak="0.9"), "event.peak is str, not a number"),
        ({k: v for k, v in _event().items() if k != "id"}, "event: missing field 'id'"),
    ],
)
def test_invalid_events_are_refused(body, match):
    with pytest.raises(wire.WireError, match=re.escape(match)):
        wire.validate(body)


def test_an_event_on_another_topic_is_refused():
    with pytest.raises(wire.WireError, match="topic 'pred.cam0' carries schema"):
        wire.decode(wire.encode("pred.cam0", _event()))
    with pytest.raises(wire.WireError, match="topic 'event.cam0' carries schema"):
        wire.decode(wire.encode("event.cam0", _status()))


def test_event_lines():
    def line(body):
        return format_message(Message("event.cam0", body, 0))

    clock = time.strftime("%H:%M:%S", time.localtime(_EVENT_WALL / 1e9))
    assert line(_event("start")) == f"{clock} cam0 knocking START peak 0.91"
    end = time.strftime("%H:%M:%S", time.localtime((_EVENT_WALL + 3_200_000_000) / 1e9))
    assert line(_event()) == (
        f"{end} cam0 knocking END after 3.2 s (below threshold), peak 0.91 mean 0.78"
    )
    assert line(_event("update")).endswith(
        " cam0 knocking UPDATE 1.0 s so far, peak 0.91 mean 0.78"
    )
    assert line(_event(reason="stopped", degraded=True)).endswith(
        "END after 3.2 s (stopped), peak 0.91 mean 0.78  DEGRADED: it spans a window with a "
        "video or audio gap"
    )
    assert Message("event.cam0", _event(), 0).age_ms is None


def test_subscribe_cli_prints_events():
    """--events subscribes to event. alone: a prediction on the same publisher is not
    printed; with --topic, both."""
    with Sending([_event("start"), _event()], topic="event.cam0") as pub:
        cli = subprocess.run(
            [sys.executable, "-m", "stream.subscribe", pub.endpoint, "--events"]
            + ["--count", "4", "--timeout", "60"],
            check=False,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert cli.returncode == 0, cli.stderr
    assert cli.stderr.splitlines() == [f"waiting for events on {pub.endpoint} (topic event)"]
    lines = cli.stdout.splitlines()
    assert len(lines) == 4 and all(" cam0 knocking " in x for x in lines), lines
    assert {x.split(" knocking ")[1].split()[0] for x in lines} == {"START", "END"}
    assert waiting_line("tcp://h:1", ("pred.", "event.door")) == (
        "waiting for predictions and door events on tcp://h:1 (topics pred, event.door)"
    )


def test_run_status_round_trip():
    body = _run_status()
    assert body["windows"] == {"run": 19, "skipped": 2}  # also of streams no longer listed
    assert body["streams"][0] == {
        "id": "cam0",
        "state": "running",
        "windows_run": 10,
        "windows_skipped": 2,
    }  # no reason: nothing to say
    assert body["streams"][1]["reason"] == "end of file"
    frames = wire.encode(wire.RUN_TOPIC, body)
    assert frames[0] == b"run"
    assert wire.decode(frames) == ("run", body)
    with pytest.raises(ValueError, match="batches has 2 entries for max_batch 4"):
        wire.run_status(**{**_RUN_FIELDS, "batches": [1, 2]})


_RUN_FIELDS = {
    k: v for k, v in _run_status().items() if k not in ("schema", "t", "windows", "publish")
} | {"mono_ns": 1, "wall_ns": 2, "sent": 0, "dropped": 0, "subscriptions": 0}
_RUN_FIELDS |= {"windows_run": 0, "windows_skipped": 0}


def test_batch_is_checked_when_present():
    assert wire.validate(_prediction(batch=3))["batch"] == 3
    older = _prediction()
    del older["batch"]  # a publisher of before batching
    wire.validate(older)
    for bad in (0, -1, 1.0, True, "2"):
        with pytest.raises(wire.WireError, match="batch"):
            wire.validate(_prediction(batch=bad))


@pytest.mark.parametrize(
    "frames",
    [
        [b"pred.cam0"],
        [b"pred.cam0", b"not json"],
        [b"pred.cam0", b"[1, 2]"],
        [b"pred.cam0", json.dumps({"schema": "avstream.prediction.v0"}).encode()],
        [b"pred.cam0", json.dumps(_prediction(seq="3")).encode()],
        [b"pred.cam0", json.dumps(_prediction(seq=True)).encode()],
        [b"pred.cam0", json.dumps(_prediction(labels=[{"label": "x"}])).encode()],
        [b"pred.cam0", json.dumps({**_prediction(), "t": {"capture_ns": 1}}).encode()],
        [b"pred.cam0", json.dumps(_prediction(random_weights=1)).encode()],
        [b"pred.cam0", json.dumps(_prediction(random_weights=None)).encode()],
        [b"pred.cam0", json.dumps(_prediction(stride_s="0.25")).encode()],
        [b"pred.cam0", json.dumps(_prediction(skipped=2.5)).encode()],
        [b"pred.cam0", json.dumps(_prediction(degraded=[3])).encode()],
        [b"pred.cam0", json.dumps(_prediction(stages_ms={"preprocess": "slow"})).encode()],
        [
            b"pred.cam0",
            json.dumps({k: v for k, v in _prediction().items() if k != "skipped"}).encode(),
        ],
        [b"status.cam0", json.dumps(_status(windows={"run": 1})).encode()],
        [b"status.cam0", json.dumps(_status(processes={"main": "x"})).encode()],
        [b"status.cam0", json.dumps(_prediction()).encode()],  # schema does not match the topic
        [b"pred.cam0", json.dumps(_prediction(batch=0)).encode()],
        [b"run", json.dumps(_status()).encode()],
        [b"status.cam0", json.dumps(_run_status()).encode()],
        [b"run", json.dumps(_run_status(pid="4321")).encode()],
        [b"run", json.dumps(_run_status(batches=[1, 2.5])).encode()],
        [b"run", json.dumps(_run_status(streams=[{"id": "cam0", "state": "running"}])).encode()],
        [
            b"run",
            json.dumps(
                _run_status(
                    streams=[
                        {"id": "a", "state": "ended", "reason": None, "windows_run": 1}
                        | {"windows_skipped": 0}
                    ]
                )
            ).encode(),
        ],
        [b"run", json.dumps({k: v for k, v in _run_status().items() if k != "host"}).encode()],
    ],
)
def test_invalid_messages_are_refused(frames):
    with pytest.raises(wire.WireError):
        wire.decode(frames)


def test_run_status_line():
    line = format_message(Message(wire.RUN_TOPIC, _run_status(), 0))
    assert line.endswith(
        " run box:4321 running x3d_xs on torch-cpu, 2 streams [cam0 running 10/2, door ended 5/0 "
        "(end of file)] (windows run/skipped), windows run 19 skipped 2, batches (size:calls, at "
        "most 4) 1:3 2:6"
    ), line
    fresh = format_message(
        Message("run", _run_status(streams=[], batches=[0] * 4, state="loading"), 0)
    )
    assert " run box:4321 loading x3d_xs on torch-cpu, 0 streams [none yet]" in fresh
    assert fresh.endswith("batches (size:calls, at most 4) none yet")


def test_subscriber_yields_run_statuses_and_counts_their_gaps_per_run():
    """Behind a proxy, several runs send topic `run`: each one's seq counts on its own."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)  # it tells when the subscription has arrived
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sent = [("box", 0), ("cellar", 0), ("box", 1), ("cellar", 1), ("box", 3), ("cellar", 2)]
    with Subscriber(f"tcp://127.0.0.1:{port}", topics=(wire.RUN_TOPIC,)) as sub:
        assert pub.poll(60_000), "the subscription did not reach the publisher"
        assert pub.recv() == b"\x01run"
        for host, seq in sent:
            pub.send_multipart(wire.encode(wire.RUN_TOPIC, _run_status(host=host, seq=seq)))
        got = [sub.recv(timeout=60) for _ in sent]
    pub.close(0)
    assert [(m.topic, m.body["host"], m.body["seq"]) for m in got] == [("run", *x) for x in sent]
    assert sub.missed == 1  # box's 2
    assert got[0].age_ms is None  # a run status has no capture time


def test_subscribe_cli_prints_run_statuses():
    with Sending([_run_status()], topic=wire.RUN_TOPIC) as pub:
        cli = subprocess.run(
            [sys.executable, "-m", "stream.subscribe", pub.endpoint, "--topic", "run"]
            + ["--count", "2", "--timeout", "60"],
            check=False,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert cli.returncode == 0, cli.stderr
    assert cli.stderr.splitlines() == [f"waiting for the run status on {pub.endpoint} (topic run)"]
    lines = cli.stdout.splitlines()
    assert len(lines) == 2 and all(" run box:4321 running x3d_xs " in line for line in lines)


def test_stream_id_rules():
    assert wire.check_stream_id("cam-0_a") == "cam-0_a"
    for bad in ("", "a b", "x" * 65, "cam.0"):
        with pytest.raises(ValueError):
            wire.check_stream_id(bad)


def test_smoothing_methods():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    ema = Smoother("ema:0.25")
    assert ema.update(a).tolist() == [1.0, 0.0]
    assert np.allclose(ema.update(b), [0.75, 0.25])
    mean = Smoother("mean:2")
    mean.update(a), mean.update(b)
    assert np.allclose(mean.update(b), [0.0, 1.0])  # only the last 2
    assert Smoother("none").update(b) is b
    for bad in ("ema", "ema:0", "ema:1.5", "mean:0", "mean:x", "median:3", "none:1"):
        with pytest.raises(UserError):
            Smoother(bad)


def test_softmax_and_top_k():
    p = softmax(np.array([1.0, 3.0, 2.0, 1000.0]))
    assert np.isclose(p.sum(), 1.0) and p.argmax() == 3
    labels = ["a", "b", "c", "d"]
    got = top_k(np.array([0.1, 0.4, 0.3, 0.2]), labels, 3)
    assert [x["label"] for x in got] == ["b", "c", "d"]
    assert got[0] == {"label": "b", "index": 1, "score": 0.4}
    assert len(top_k(np.array([0.5, 0.5]), ["a", "b"], 5)) == 2
