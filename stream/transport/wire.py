"""The wire format, in one place: topics, JSON bodies, their versions and validation.

Every message is a ZeroMQ multipart message `[topic, body]`: `topic` is ASCII
(`pred.<stream-id>`, `status.<stream-id>`, `event.<stream-id>`, or `run` for the
run-level status), `body` UTF-8 JSON. Nothing is pickled. Publishers build a body with one
call, `prediction()`, `status()`, `event()` or `run_status()`, from every field it has; a
prediction gets its publish
stamps from `stamp_publish()` just before the send
(`stream.transport.publish.Publisher.send_prediction` does both). They send
`encode(...)`; subscribers call `decode(frames)`, which validates and raises `WireError`
on anything that does not match the schema named in the body. docs/protocol.md describes
every field; docs/schemas/*.json are the same schemas in JSON Schema, for other languages.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

PREDICTION_SCHEMA = "avstream.prediction.v1"
STATUS_SCHEMA = "avstream.status.v1"
RUN_SCHEMA = "avstream.run.v1"
EVENT_SCHEMA = "avstream.event.v1"
PRED_TOPIC = "pred"
STATUS_TOPIC = "status"
EVENT_TOPIC = "event"
#: An event message's `type`: its first, its updates while it lasts, its last.
EVENT_TYPES = ("start", "update", "end")
#: Why an event ended (an end's `reason`); docs/events.md says when each is given.
END_REASONS = ("below threshold", "stopped", "stream failed", "stream removed", "stream ended")
#: The run-level status's topic: one per run (it has no stream id; `host` and `pid` in the
#: body tell the runs behind one proxy apart).
RUN_TOPIC = "run"

_STREAM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class WireError(ValueError):
    """A message that is not valid under the schema it names."""


def check_stream_id(stream_id: str) -> str:
    if not _STREAM_ID.match(stream_id):
        raise ValueError(
            f"stream id {stream_id!r} must be 1-64 characters of letters, digits, '_' or '-'"
        )
    return stream_id


def topic(kind: str, stream_id: str) -> str:
    return f"{kind}.{stream_id}"


def prediction(
    *,
    seq: int,
    stream: str,
    model: str,
    engine: str,
    labels: list[dict],
    window_start_ns: int,
    window_end_ns: int,
    frames: int,
    audio_start_ns: int,
    audio_end_ns: int,
    capture_ns: int,
    window_ns: int,
    infer_start_ns: int,
    infer_end_ns: int,
    smoothing: str,
    random_weights: bool,
    stride_s: float,
    skipped: int,
    degraded: list[str],
    stages_ms: dict[str, float],
    batch: int,
) -> dict:
    """A prediction body with every field but the publish stamps (`t.publish_ns`,
    `t.wall_ns`, `latency_ms.capture_to_publish`), which `stamp_publish` adds just before
    the send; until then it is not a valid message.

    `window_start_ns`, `window_end_ns`: capture times of the window's first and last frame;
    `frames`: distinct frames given to the model; `audio_start_ns`, `audio_end_ns`: times of
    the sound's first sample and of the one after its last (0 and 0 without sound).
    `capture_ns`: the newest input's capture time. `window_ns`: when the window was chosen
    (the tick). `random_weights`: the model has no trained weights, so its labels mean
    nothing. `stride_s`: seconds between windows. `skipped`: windows skipped so far because
    the engine was slower than the stride. `degraded` lists why the prediction saw less
    than a full window (e.g. "audio gap"); empty when the window was complete. `stages_ms`:
    time per stage before the engine (diagnostics for the benchmark), rounded here to the
    microsecond. `batch`: windows in the engine call that ran this one (1: alone).
    """
    return {
        "schema": PREDICTION_SCHEMA,
        "seq": seq,
        "stream": stream,
        "model": model,
        "engine": engine,
        "labels": labels,
        "window": {
            "start_ns": window_start_ns,
            "end_ns": window_end_ns,
            "frames": frames,
            "audio_s": (audio_end_ns - audio_start_ns) / 1e9,
            "audio_start_ns": audio_start_ns,
            "audio_end_ns": audio_end_ns,
        },
        "t": {
            "capture_ns": capture_ns,
            "window_ns": window_ns,
            "infer_start_ns": infer_start_ns,
            "infer_end_ns": infer_end_ns,
        },
        "latency_ms": {"engine": (infer_end_ns - infer_start_ns) / 1e6},
        "smoothing": smoothing,
        "random_weights": random_weights,
        "stride_s": stride_s,
        "skipped": skipped,
        "degraded": list(degraded),
        "stages_ms": {k: round(v, 3) for k, v in stages_ms.items()},
        "batch": batch,
    }


def stamp_publish(body: dict, *, publish_ns: int, wall_ns: int) -> dict:
    """Complete a `prediction()` body with its publish stamps: `t.publish_ns` (monotonic,
    just before the send), `t.wall_ns` (Unix time, taken with it) and
    `latency_ms.capture_to_publish`. Returns the body."""
    t = body["t"]
    t["publish_ns"], t["wall_ns"] = publish_ns, wall_ns
    body["latency_ms"]["capture_to_publish"] = (publish_ns - t["capture_ns"]) / 1e6
    return body


def status(
    *,
    seq: int,
    stream: str,
    model: str,
    engine: str,
    state: str,
    mono_ns: int,
    wall_ns: int,
    fps_in: float,
    windows_run: int,
    windows_skipped: int,
    windows_stale: int,
    video: dict,
    audio: dict,
    sent: int,
    dropped: int,
    subscriptions: int,
    processes: dict[str, int],
    events: list[dict],
) -> dict:
    """A heartbeat body (sent at least once a second), complete: `mono_ns` and `wall_ns`
    are when it was made. `video`, `audio`: each source's health (free-form objects).
    `sent`, `dropped`, `subscriptions`: the publisher's counts. `processes`: name → pid.
    `events`: the stream's active events, `active_event` entries."""
    return {
        "schema": STATUS_SCHEMA,
        "seq": seq,
        "stream": stream,
        "model": model,
        "engine": engine,
        "state": state,
        "t": {"mono_ns": mono_ns, "wall_ns": wall_ns},
        "fps_in": fps_in,
        "windows": {"run": windows_run, "skipped": windows_skipped, "stale": windows_stale},
        "sources": {"video": video, "audio": audio},
        "publish": {"sent": sent, "dropped": dropped, "subscriptions": subscriptions},
        "processes": dict(processes),
        "events": [dict(e) for e in events],
    }


def active_event(*, name: str, id: str, start_ns: int, peak: float) -> dict:
    """One entry of a status's `events`: an event that has started and not ended, with its
    rule's name, its id (as in its messages), when it started (capture clock) and its peak
    score so far."""
    return {"name": name, "id": id, "start_ns": start_ns, "peak": peak}


def event(
    *,
    seq: int,
    id: str,
    stream: str,
    name: str,
    labels: list[str],
    type: str,
    start_ns: int,
    end_ns: int | None,
    start_wall_ns: int,
    end_wall_ns: int | None,
    peak: float,
    mean: float,
    seq_first: int,
    seq_last: int,
    degraded: bool,
    reason: str | None,
    wall_ns: int,
) -> dict:
    """An event message body (topic `event.<stream-id>`), complete. `seq`: the stream's
    event messages counted from 0 (gaps are losses). `id`: the event's, the same in its
    start, updates and end (`<stream>-<name>-<n>`, unique within the run). `name`,
    `labels`: its rule's. `type`: one of EVENT_TYPES. `start_ns`: capture time of its first
    window above the rule's `on`; `end_ns`: of its last window at or above `off`, on the
    end (None before). `*_wall_ns`: the same instants in Unix time. `peak`, `mean`: the
    score over the windows it covers, `seq_first` to `seq_last` (prediction seqs).
    `degraded`: one of those windows was degraded. `reason`: why it ended (END_REASONS),
    on the end only. `wall_ns`: when the message was made (Unix time)."""
    return {
        "schema": EVENT_SCHEMA,
        "seq": seq,
        "id": id,
        "stream": stream,
        "name": name,
        "labels": list(labels),
        "type": type,
        "start_ns": start_ns,
        "end_ns": end_ns,
        "start_wall_ns": start_wall_ns,
        "end_wall_ns": end_wall_ns,
        "peak": peak,
        "mean": mean,
        "seq_first": seq_first,
        "seq_last": seq_last,
        "degraded": degraded,
        "reason": reason,
        "wall_ns": wall_ns,
    }


def run_stream(
    *, stream: str, state: str, reason: str | None, windows_run: int, windows_skipped: int
) -> dict:
    """One entry of a run status's `streams`: a stream's id, state, why it is in that
    state (absent when there is nothing to say) and its window counts."""
    entry = {
        "id": stream,
        "state": state,
        "windows_run": windows_run,
        "windows_skipped": windows_skipped,
    }
    if reason:
        entry["reason"] = reason
    return entry


def run_status(
    *,
    seq: int,
    host: str,
    pid: int,
    model: str,
    engine: str,
    state: str,
    mono_ns: int,
    wall_ns: int,
    max_batch: int,
    batch_wait_s: float,
    streams: list[dict],
    batches: list[int],
    windows_run: int,
    windows_skipped: int,
    sent: int,
    dropped: int,
    subscriptions: int,
) -> dict:
    """The run-level heartbeat (topic `run`), complete: the run's host and inference
    process, model and engine, its streams (`run_stream` entries), and how its engine
    calls were batched: `batches[i]` engine calls ran i + 1 windows (`max_batch` long).
    `windows_run`, `windows_skipped`: since the run started, over every stream it has
    served (also those no longer listed)."""
    if len(batches) != max_batch:
        raise ValueError(f"batches has {len(batches)} entries for max_batch {max_batch}")
    return {
        "schema": RUN_SCHEMA,
        "seq": seq,
        "host": host,
        "pid": pid,
        "model": model,
        "engine": engine,
        "state": state,
        "t": {"mono_ns": mono_ns, "wall_ns": wall_ns},
        "max_batch": max_batch,
        "batch_wait_s": batch_wait_s,
        "streams": [dict(s) for s in streams],
        "batches": list(batches),
        "windows": {"run": windows_run, "skipped": windows_skipped},
        "publish": {"sent": sent, "dropped": dropped, "subscriptions": subscriptions},
    }


def encode(topic_: str, body: dict) -> list[bytes]:
    return [topic_.encode("ascii"), json.dumps(body, separators=(",", ":")).encode("utf-8")]


# The schemas as data: a field maps to a tuple of types, a nested dict (an object with
# those fields), _ListOf (an array of one kind) or _MapOf (an object of one kind of value).
# A name ending in "?" may be absent. bool is not an int here, although Python says it is.
# docs/schemas/*.json say the same in JSON Schema; tests/test_protocol.py holds them together.
_INT = (int,)
_NUM = (int, float)
_STR = (str,)
_BOOL = (bool,)
_INT_OR_NULL = (int, type(None))
_STR_OR_NULL = (str, type(None))


class _ListOf(NamedTuple):
    item: Any


class _MapOf(NamedTuple):
    value: Any


_PREDICTION = {
    "schema": _STR,
    "seq": _INT,
    "stream": _STR,
    "model": _STR,
    "engine": _STR,
    "labels": _ListOf({"label": _STR, "index": _INT, "score": _NUM}),
    "window": {
        "start_ns": _INT,
        "end_ns": _INT,
        "frames": _INT,
        "audio_s": _NUM,
        "audio_start_ns?": _INT,
        "audio_end_ns?": _INT,
    },
    "t": dict.fromkeys(
        ("capture_ns", "infer_start_ns", "infer_end_ns", "publish_ns", "wall_ns", "window_ns"), _INT
    ),
    "latency_ms": {"engine": _NUM, "capture_to_publish": _NUM},
    "smoothing": _STR,
    "random_weights": _BOOL,
    "stride_s": _NUM,
    "skipped": _INT,
    "degraded": _ListOf(_STR),
    "stages_ms": _MapOf(_NUM),
    "batch?": _INT,
}
_STATUS = {
    "schema": _STR,
    "seq": _INT,
    "stream": _STR,
    "model": _STR,
    "engine": _STR,
    "state": _STR,
    "t": {"mono_ns": _INT, "wall_ns": _INT},
    "fps_in": _NUM,
    "windows": {"run": _INT, "skipped": _INT, "stale": _INT},
    "sources": {"video": {}, "audio": {}},
    "publish": {"sent": _INT, "dropped": _INT, "subscriptions": _INT},
    "processes": _MapOf(_INT),
    # absent from publishers of before events
    "events?": _ListOf({"name": _STR, "id": _STR, "start_ns": _INT, "peak": _NUM}),
}
_EVENT = {
    "schema": _STR,
    "seq": _INT,
    "id": _STR,
    "stream": _STR,
    "name": _STR,
    "labels": _ListOf(_STR),
    "type": _STR,
    "start_ns": _INT,
    "end_ns": _INT_OR_NULL,
    "start_wall_ns": _INT,
    "end_wall_ns": _INT_OR_NULL,
    "peak": _NUM,
    "mean": _NUM,
    "seq_first": _INT,
    "seq_last": _INT,
    "degraded": _BOOL,
    "reason": _STR_OR_NULL,
    "wall_ns": _INT,
}
_RUN = {
    "schema": _STR,
    "seq": _INT,
    "host": _STR,
    "pid": _INT,
    "model": _STR,
    "engine": _STR,
    "state": _STR,
    "t": {"mono_ns": _INT, "wall_ns": _INT},
    "max_batch": _INT,
    "batch_wait_s": _NUM,
    "streams": _ListOf(
        {"id": _STR, "state": _STR, "reason?": _STR, "windows_run": _INT, "windows_skipped": _INT}
    ),
    "batches": _ListOf(_INT),
    "windows": {"run": _INT, "skipped": _INT},
    "publish": {"sent": _INT, "dropped": _INT, "subscriptions": _INT},
}
#: schema -> (its fields, what a message of it is called, the topic kind it comes on)
_SCHEMAS = {
    PREDICTION_SCHEMA: (_PREDICTION, "prediction", PRED_TOPIC),
    STATUS_SCHEMA: (_STATUS, "status", STATUS_TOPIC),
    RUN_SCHEMA: (_RUN, "run status", RUN_TOPIC),
    EVENT_SCHEMA: (_EVENT, "event", EVENT_TOPIC),
}
_TYPE_NAMES = {
    _INT: "an integer",
    _NUM: "a number",
    _STR: "a string",
    _BOOL: "true or false",
    _INT_OR_NULL: "an integer or null",
    _STR_OR_NULL: "a string or null",
}


def _check(value: Any, spec: Any, where: str) -> None:
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise WireError(f"{where} is not an object")
        for name, sub in spec.items():
            key = name.rstrip("?")
            if key in value:
                _check(value[key], sub, f"{where}.{key}")
            elif not name.endswith("?"):
                raise WireError(f"{where}: missing field {key!r}")
    elif isinstance(spec, _ListOf):
        if not isinstance(value, list):
            raise WireError(f"{where} is not an array")
        for i, item in enumerate(value):
            _check(item, spec.item, f"{where}[{i}]")
    elif isinstance(spec, _MapOf):
        if not isinstance(value, dict):
            raise WireError(f"{where} is not an object")
        for key, item in value.items():
            _check(item, spec.value, f"{where}.{key}")
    elif (spec is _BOOL) != isinstance(value, bool) or not isinstance(value, spec):
        raise WireError(f"{where} is {type(value).__name__}, not {_TYPE_NAMES[spec]}")


def validate(body: Any) -> dict:
    """Check a decoded body against the schema it names; returns it unchanged."""
    if not isinstance(body, dict):
        raise WireError("message body is not a JSON object")
    schema = body.get("schema")
    if schema not in _SCHEMAS:
        raise WireError(f"unknown schema {schema!r} (this client reads {', '.join(_SCHEMAS)})")
    fields, name, _ = _SCHEMAS[schema]
    _check(body, fields, name)
    if schema == PREDICTION_SCHEMA and body.get("batch", 1) < 1:
        raise WireError(f"prediction.batch is {body['batch']}, not a count of windows (>= 1)")
    if schema == EVENT_SCHEMA:
        _check_event(body)
    return body


def _check_event(body: dict) -> None:
    """What an event's field types do not say: its type, and that an end (and only an
    end) has its end times and a reason. Any reason string is taken: a later v1 may add
    reasons to END_REASONS."""
    kind = body["type"]
    if kind not in EVENT_TYPES:
        raise WireError(f"event.type is {kind!r}, not one of {', '.join(EVENT_TYPES)}")
    ended = kind == "end"
    for key in ("end_ns", "end_wall_ns", "reason"):
        if (body[key] is None) == ended:
            raise WireError(
                f"event.{key} is {body[key]!r} in an event of type {kind!r}: "
                + ("an end has one" if ended else "null until the end")
            )
    if body["seq_first"] > body["seq_last"]:
        raise WireError(
            f"event.seq_first {body['seq_first']} is after event.seq_last {body['seq_last']}"
        )


def decode(frames: list[bytes]) -> tuple[str, dict]:
    """[topic, body] → (topic, validated body)."""
    if len(frames) != 2:
        raise WireError(f"expected 2 message parts [topic, body], got {len(frames)}")
    try:
        topic_ = frames[0].decode("ascii")
        body = json.loads(frames[1].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"undecodable message: {exc}") from None
    validated = validate(body)
    if topic_kind(topic_) != _SCHEMAS[validated["schema"]][2]:
        raise WireError(f"topic {topic_!r} carries schema {validated['schema']!r}")
    return topic_, validated


def topic_kind(topic_: str) -> str:
    """`pred` of `pred.cam0`, `status` of `status.cam0`, `event` of `event.cam0`, `run` of
    `run`."""
    return topic_.partition(".")[0]
