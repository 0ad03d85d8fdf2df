"""The wire format, in one place: topics, JSON bodies, their versions and validation.

Every message is a ZeroMQ multipart message `[topic, body]`: `topic` is ASCII
(`pred.<stream-id>` or `status.<stream-id>`), `body` UTF-8 JSON. Nothing is pickled.
Publishers build bodies with `prediction()` / `status()` and send `encode(...)`;
subscribers call `decode(frames)`, which validates and raises `WireError` on anything
that does not match the schema named in the body. docs/protocol.md describes every
field; docs/schemas/*.json are the same schemas in JSON Schema, for other languages.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

PREDICTION_SCHEMA = "avstream.prediction.v1"
STATUS_SCHEMA = "avstream.status.v1"
PRED_TOPIC = "pred"
STATUS_TOPIC = "status"

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
    window: dict,
    capture_ns: int,
    infer_start_ns: int,
    infer_end_ns: int,
    publish_ns: int,
    wall_ns: int,
    window_ns: int,
    smoothing: str,
    random_weights: bool,
    stride_s: float,
    skipped: int,
    degraded: list[str] | None = None,
    stages_ms: dict[str, float] | None = None,
) -> dict:
    """A prediction body. `publish_ns` is taken just before the send.

    `window_ns`: when the window was chosen (the tick). `random_weights`: the model has
    no trained weights, so its labels mean nothing. `stride_s`: seconds between windows.
    `skipped`: windows skipped so far because the engine was slower than the stride.
    `degraded` lists why the prediction saw less than a full window (e.g. "audio gap");
    empty when the window was complete. `stages_ms`: time per stage before the engine
    (diagnostics for the benchmark), rounded to the microsecond.
    """
    return {
        "schema": PREDICTION_SCHEMA,
        "seq": seq,
        "stream": stream,
        "model": model,
        "engine": engine,
        "labels": labels,
        "window": window,
        "t": {
            "capture_ns": capture_ns,
            "infer_start_ns": infer_start_ns,
            "infer_end_ns": infer_end_ns,
            "publish_ns": publish_ns,
            "wall_ns": wall_ns,
            "window_ns": window_ns,
        },
        "latency_ms": {
            "engine": (infer_end_ns - infer_start_ns) / 1e6,
            "capture_to_publish": (publish_ns - capture_ns) / 1e6,
        },
        "smoothing": smoothing,
        "random_weights": random_weights,
        "stride_s": stride_s,
        "skipped": skipped,
        "degraded": list(degraded or []),
        "stages_ms": {k: round(v, 3) for k, v in (stages_ms or {}).items()},
    }


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
    windows: dict,
    sources: dict,
    publish: dict,
    processes: dict | None = None,
) -> dict:
    """A heartbeat body (sent at least once a second). `processes`: name → pid."""
    return {
        "schema": STATUS_SCHEMA,
        "seq": seq,
        "stream": stream,
        "model": model,
        "engine": engine,
        "state": state,
        "t": {"mono_ns": mono_ns, "wall_ns": wall_ns},
        "fps_in": fps_in,
        "windows": windows,
        "sources": sources,
        "publish": publish,
        "processes": dict(processes or {}),
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
}
_TYPE_NAMES = {_INT: "an integer", _NUM: "a number", _STR: "a string", _BOOL: "true or false"}


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
    if schema == PREDICTION_SCHEMA:
        _check(body, _PREDICTION, "prediction")
    elif schema == STATUS_SCHEMA:
        _check(body, _STATUS, "status")
    else:
        raise WireError(
            f"unknown schema {schema!r} (this client reads {PREDICTION_SCHEMA}, {STATUS_SCHEMA})"
        )
    return body


def decode(frames: list[bytes]) -> tuple[str, dict]:
    """[topic, body] → (topic, validated body)."""
    if len(frames) != 2:
        raise WireError(f"expected 2 message parts [topic, body], got {len(frames)}")
    try:
        topic_ = frames[0].decode("ascii")
        body = json.loads(frames[1].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"undecodable message: {exc}") from None
    kind = topic_.partition(".")[0]
    validated = validate(body)
    expected = (
        PREDICTION_SCHEMA if kind == PRED_TOPIC else STATUS_SCHEMA if kind == STATUS_TOPIC else None
    )
    if expected != validated["schema"]:
        raise WireError(f"topic {topic_!r} carries schema {validated['schema']!r}")
    return topic_, validated
