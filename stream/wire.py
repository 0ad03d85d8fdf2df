"""The wire format, in one place: topics, JSON bodies, their versions and validation.

Every message is a ZeroMQ multipart message `[topic, body]`: `topic` is ASCII
(`pred.<stream-id>` or `status.<stream-id>`), `body` UTF-8 JSON. Nothing is pickled.
Publishers build bodies with `prediction()` / `status()` and send `encode(...)`;
subscribers call `decode(frames)`, which validates and raises `WireError` on anything
that does not match the schema named in the body.
"""

from __future__ import annotations

import json
import re
from typing import Any

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
    smoothing: str,
    degraded: list[str] | None = None,
) -> dict:
    """A prediction body. `publish_ns` is taken just before the send.

    `degraded` lists why the prediction saw less than a full window (e.g. "audio gap");
    empty when the window was complete.
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
        },
        "latency_ms": {
            "engine": (infer_end_ns - infer_start_ns) / 1e6,
            "capture_to_publish": (publish_ns - capture_ns) / 1e6,
        },
        "smoothing": smoothing,
        "degraded": list(degraded or []),
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


# Field name -> allowed types, per schema. bool is excluded from int fields on purpose.
_INT = (int,)
_NUM = (int, float)
_PREDICTION_FIELDS = {
    "schema": (str,), "seq": _INT, "stream": (str,), "model": (str,), "engine": (str,),
    "labels": (list,), "window": (dict,), "t": (dict,), "latency_ms": (dict,), "smoothing": (str,),
    "degraded": (list,),
}
_PREDICTION_T = ("capture_ns", "infer_start_ns", "infer_end_ns", "publish_ns", "wall_ns")
_PREDICTION_WINDOW = {"start_ns": _INT, "end_ns": _INT, "frames": _INT, "audio_s": _NUM}
_LABEL_FIELDS = {"label": (str,), "index": _INT, "score": _NUM}
_STATUS_FIELDS = {
    "schema": (str,), "seq": _INT, "stream": (str,), "model": (str,), "engine": (str,),
    "state": (str,), "t": (dict,), "fps_in": _NUM, "windows": (dict,), "sources": (dict,),
    "publish": (dict,),
}


def _check(obj: dict, fields: dict, where: str) -> None:
    for name, types in fields.items():
        if name not in obj:
            raise WireError(f"{where}: missing field {name!r}")
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise WireError(f"{where}: field {name!r} has type {type(value).__name__}")


def validate(body: Any) -> dict:
    """Check a decoded body against the schema it names; returns it unchanged."""
    if not isinstance(body, dict):
        raise WireError("message body is not a JSON object")
    schema = body.get("schema")
    if schema == PREDICTION_SCHEMA:
        _check(body, _PREDICTION_FIELDS, "prediction")
        _check(body["t"], dict.fromkeys(_PREDICTION_T, _INT), "prediction.t")
        _check(body["window"], _PREDICTION_WINDOW, "prediction.window")
        _check(body["latency_ms"], {"engine": _NUM, "capture_to_publish": _NUM}, "prediction.latency_ms")
        for item in body["labels"]:
            if not isinstance(item, dict):
                raise WireError("prediction.labels: an entry is not an object")
            _check(item, _LABEL_FIELDS, "prediction.labels[]")
    elif schema == STATUS_SCHEMA:
        _check(body, _STATUS_FIELDS, "status")
        _check(body["t"], {"mono_ns": _INT, "wall_ns": _INT}, "status.t")
    else:
        raise WireError(f"unknown schema {schema!r} (this client reads {PREDICTION_SCHEMA}, {STATUS_SCHEMA})")
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
    expected = PREDICTION_SCHEMA if kind == PRED_TOPIC else STATUS_SCHEMA if kind == STATUS_TOPIC else None
    if expected != validated["schema"]:
        raise WireError(f"topic {topic_!r} carries schema {validated['schema']!r}")
    return topic_, validated
