"""docs/schemas/*.json (JSON Schema 2020-12) describe the messages a real stream.run sends,
and refuse what stream.transport.wire.validate refuses."""

from __future__ import annotations

import json
import time

import jsonschema
import pytest
import zmq
from test_wire import _event, _prediction, _run_status, _status

from helpers import REPO, StreamProcess
from stream.transport import wire

SCHEMAS = REPO / "docs" / "schemas"


def _validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{kind}.v1.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


VALIDATORS = {
    wire.PREDICTION_SCHEMA: _validator("prediction"),
    wire.STATUS_SCHEMA: _validator("status"),
    wire.RUN_SCHEMA: _validator("run"),
    wire.EVENT_SCHEMA: _validator("event"),
}
TOPICS = {
    wire.PREDICTION_SCHEMA: "pred.cam0",
    wire.STATUS_SCHEMA: "status.cam0",
    wire.RUN_SCHEMA: "run",
    wire.EVENT_SCHEMA: "event.cam0",
}


@pytest.mark.e2e  # a real stream.run run
def test_real_messages_match_the_schemas():
    stream = StreamProcess(
        "--camera",
        "synthetic",
        "--size",
        "160x120",
        "--mic",
        "none",
        "--weights",
        "none",
        "--no-compile",
        "--duration",
        "5",
        "--log-level",
        "warning",
    )
    sub = zmq.Context.instance().socket(zmq.SUB)  # a plain socket: nothing of ours decodes for us
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(stream.endpoint)
    got: dict[str, list[dict]] = {schema: [] for schema in VALIDATORS}
    deadline = time.monotonic() + 300
    try:
        while stream.proc.poll() is None:  # --duration ends it
            assert time.monotonic() < deadline, "stream.run did not stop after --duration"
            if not sub.poll(1000):
                continue
            topic, body = sub.recv_multipart()
            body = json.loads(body)
            assert topic.decode() == TOPICS[body["schema"]]
            got[body["schema"]].append(body)
        code, err = stream.wait()
    finally:
        sub.close(0)
        stream.kill()
    assert code == 0, err
    preds, statuses, runs = (
        got[schema] for schema in (wire.PREDICTION_SCHEMA, wire.STATUS_SCHEMA, wire.RUN_SCHEMA)
    )
    assert preds and any(s["state"] == "running" for s in statuses), (
        len(preds),
        [s["state"] for s in statuses],
    )
    assert runs and runs[-1]["streams"][0]["id"] == "cam0", runs[-1:]
    for body in preds + statuses + runs:
        errors = [e.message for e in VALIDATORS[body["schema"]].iter_errors(body)]
        assert not errors, (errors, body)
        wire.validate(body)
    assert all(p["random_weights"] is True and p["stride_s"] > 0 for p in preds)
    assert all(p["batch"] == 1 for p in preds)  # one stream: every window alone
    assert sum(runs[-1]["batches"]) == runs[-1]["windows"]["run"]


def _at(body: dict, path: str) -> tuple[dict | list, str | int]:
    """The object or array in `body` that holds `path`'s last part, and that part
    ("streams.0.state": the first stream, "state")."""
    *parents, last = (int(p) if p.isdigit() else p for p in path.split("."))
    inner = body
    for name in parents:
        inner = inner[name]
    return inner, last


def _without(body: dict, path: str) -> dict:
    body = json.loads(json.dumps(body))
    inner, last = _at(body, path)
    del inner[last]
    return body


def _with(body: dict, path: str, value) -> dict:
    body = json.loads(json.dumps(body))
    inner, last = _at(body, path)
    inner[last] = value
    return body


P, S, R, E = _prediction(), _status(), _run_status(), _event()
GOOD = [
    E,
    _event("start"),
    _event("update"),
    _event(reason="a reason of a later v1"),
    _event(degraded=True, peak=1, mean=1),
    _with(S, "events", []),
    _without(S, "events"),  # a publisher of before events
    R,
    _with(P, "batch", 8),
    _without(P, "batch"),  # a publisher of before batching
    _with(R, "streams", []),
    _without(R, "streams.1.reason"),
    P,
    S,
    _with(P, "random_weights", True),
    _with(P, "degraded", ["audio gap: 1 of 2 samples missing"]),
    _with(P, "stages_ms", {}),
    _with(P, "window.audio_start_ns", 5),
    _with(P, "extra_field_of_a_later_v1", {"any": "thing"}),
    _with(S, "processes", {}),
]
BAD = [
    _without(E, "reason"),
    _without(E, "end_ns"),
    _without(E, "seq_first"),
    _with(E, "type", "stop"),
    _with(E, "reason", None),
    _with(E, "end_ns", None),
    _with(E, "end_wall_ns", "3"),
    _with(_event("start"), "reason", "stopped"),
    _with(_event("update"), "end_ns", 5),
    _with(E, "degraded", 0),
    _with(E, "labels", "knocking on door"),
    _with(E, "labels", [1]),
    _with(E, "peak", "0.9"),
    _with(E, "seq", 1.5),
    _with(S, "events", [{"name": "knocking", "id": "x", "start_ns": 1}]),
    _with(S, "events", [{"name": "knocking", "id": "x", "start_ns": 1.5, "peak": 0.5}]),
    _without(P, "random_weights"),
    _without(P, "stride_s"),
    _without(P, "skipped"),
    _without(P, "stages_ms"),
    _without(P, "t.window_ns"),
    _without(P, "labels"),
    _without(P, "window.frames"),
    _with(P, "random_weights", 1),
    _with(P, "random_weights", "true"),
    _with(P, "stride_s", "0.25"),
    _with(P, "skipped", True),
    _with(P, "skipped", 1.5),
    _with(P, "t.window_ns", "21"),
    _with(P, "stages_ms", {"preprocess": "2"}),
    _with(P, "stages_ms", [1.0]),
    _with(P, "degraded", [3]),
    _with(P, "degraded", "audio gap"),
    _with(P, "labels", [{"label": "x", "index": 1}]),
    _with(P, "window.audio_start_ns", 0.5),
    _with(P, "seq", "3"),
    _without(S, "windows"),
    _without(S, "windows.skipped"),
    _without(S, "publish.subscriptions"),
    _without(S, "sources.audio"),
    _without(S, "t.mono_ns"),
    _with(S, "processes", {"main": "100"}),
    _with(S, "fps_in", None),
    _with(S, "state", 1),
    _with(P, "batch", 0),
    _with(P, "batch", 1.5),
    _with(P, "batch", "2"),
    _without(R, "host"),
    _without(R, "pid"),
    _without(R, "batches"),
    _without(R, "max_batch"),
    _without(R, "windows.skipped"),
    _without(R, "streams.0.windows_run"),
    _without(R, "streams.0.state"),
    _with(R, "streams.1.reason", None),
    _with(R, "batches", [1, "2"]),
    _with(R, "pid", True),
    _with(R, "batch_wait_s", "0.02"),
]


@pytest.mark.parametrize("body", GOOD)
def test_schemas_and_wire_accept_the_same_bodies(body):
    wire.validate(body)
    VALIDATORS[body["schema"]].validate(body)


@pytest.mark.parametrize("body", BAD)
def test_schemas_and_wire_refuse_the_same_bodies(body):
    with pytest.raises(wire.WireError):
        wire.validate(body)
    assert not VALIDATORS[body["schema"]].is_valid(body)
