"""Events from a real `python -m stream.run --events FILE`: a rule that fires on what the
run sees starts, is updated, is listed in the stream's status, ends when its stream is
removed, starts again (a new id) when the stream is added back, ends when its camera
fails (the capture process killed), starts again once it is restarted, and ends when the
run is stopped with SIGINT; every message is valid under docs/schemas. An event ends
with its file. A rule naming a label the
model does not have is one error line from a real run, exit 2, nothing left behind.

The model has random weights, so no single label's score can be foreseen; the rule sums
every label of the model, a probability of 1 in every window, always above its `on`."""

from __future__ import annotations

import os
import signal
import time

import pytest
import yaml
from test_protocol import VALIDATORS

from helpers import REPO, ctl_command, descendants, one_error_line, run_to_end, running, segments_of
from stream.transport import wire
from stream.transport.subscribe import Subscriber

MODEL_ARGS = ("--model", "x3d_xs", "--weights", "none", "--log-level", "info")
LABELS = (REPO / "models" / "labels" / "kinetics400.txt").read_text().splitlines()


class Listener:
    """A subscriber to a run's events and statuses, and what it received."""

    def __init__(self, endpoint: str):
        self.sub = Subscriber(endpoint, topics=("event.", "status."))
        self.events: list[dict] = []
        self.statuses: list[dict] = []

    def until(self, done, what: str, proc=None, timeout: float = 180.0) -> None:
        """Receive until `done()`; fails if `proc` (the run) exits first."""
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"no {what} in {timeout} s: {self.events}"
            if proc is not None:
                assert proc.poll() is None, f"stream.run exited before {what}"
            try:
                msg = self.sub.recv(timeout=1.0)
            except TimeoutError:
                continue
            if msg.topic.startswith(wire.EVENT_TOPIC + "."):
                self.events.append(msg.body)
            else:
                self.statuses.append(msg.body)

    def find(self, kind: str, event_id: str) -> dict | None:
        got = [b for b in self.events if b["type"] == kind and b["id"] == event_id]
        return got[0] if got else None


def test_events_of_a_real_run(run_stream, tmp_path):
    rules = tmp_path / "rules.yaml"
    rule = {"name": "anything", "labels": LABELS, "on": 0.5, "off": 0.2, "min_on": 0.5}
    rules.write_text(yaml.safe_dump({"events": [{**rule, "update_every": 1.0}]}))
    stream = run_stream(
        "--camera", "synthetic", "--size", "160x120", "--mic", "none", *MODEL_ARGS,
        "--events", str(rules),
    )  # fmt: skip
    listener = Listener(stream.endpoint)
    first, second, third = (f"cam0-anything-{n}" for n in (1, 2, 3))
    try:
        listener.until(lambda: listener.find("update", first), "start and update", stream.proc)
        start = listener.find("start", first)
        listed = {"name": "anything", "id": first, "start_ns": start["start_ns"]}

        def listing() -> bool:
            return any(
                [{k: e[k] for k in listed} for e in s["events"]] == [listed]
                for s in listener.statuses
                if s["t"]["mono_ns"] > start["start_ns"]
            )

        listener.until(listing, "status listing the event", stream.proc)
        code, out, err = ctl_command(stream.control, "remove", "cam0")
        assert (code, out) == (0, "removed cam0\n"), err
        listener.until(lambda: listener.find("end", first), "end on removal", stream.proc)
        code, out, err = ctl_command(stream.control, "add", "cam0", "--camera", "synthetic")
        assert code == 0, err
        listener.until(lambda: listener.find("start", second), "start once back", stream.proc)
        # its camera fails: the capture process killed (it is restarted)
        since = listener.find("start", second)["start_ns"]

        def capture() -> int | None:
            pids = [
                s["processes"].get("capture-video")
                for s in listener.statuses
                if s["t"]["mono_ns"] > since  # of the stream added back
            ]
            return next(filter(None, reversed(pids)), None)

        listener.until(capture, "its capture process in a status", stream.proc)
        os.kill(capture(), signal.SIGKILL)
        listener.until(lambda: listener.find("end", second), "end on the failure", stream.proc)
        listener.until(lambda: listener.find("start", third), "start once restarted", stream.proc)
        children = descendants(stream.proc.pid)
        segments = segments_of(stream.proc.pid)
        code, err = stream.stop(signal.SIGINT)
        # the end was sent before the run exited: it is in the subscriber's queue
        listener.until(lambda: listener.find("end", third), "end on SIGINT", timeout=30)
    finally:
        listener.sub.close()
    assert code == 0, err
    assert "Traceback" not in err, err
    wait = time.monotonic() + 30
    while running(children) and time.monotonic() < wait:
        time.sleep(0.05)
    assert not running(children) and not segments_of(stream.proc.pid) & segments

    events = listener.events
    for body in events + listener.statuses:
        assert not list(VALIDATORS[body["schema"]].iter_errors(body)), body
    # each event: a start, its updates, an end; one after the other
    ids = [first, second, third]
    assert [b["id"] for b in events] == sorted(b["id"] for b in events)
    for event_id in ids:
        kinds = [b["type"] for b in events if b["id"] == event_id]
        assert kinds == ["start", *["update"] * (len(kinds) - 2), "end"], (event_id, kinds)
    # the stream's event messages counted without a gap, from 0 again once added back
    lives = [[b["seq"] for b in events if b["id"] == first]]
    lives.append([b["seq"] for b in events if b["id"] in (second, third)])
    assert all(seqs == list(range(len(seqs))) for seqs in lives), lives
    starts = [listener.find("start", i) for i in ids]
    ends = [listener.find("end", i) for i in ids]
    assert [e["reason"] for e in ends] == ["stream removed", "stream failed", "stopped"]
    for b in events:
        assert b["stream"] == "cam0" and b["name"] == "anything" and b["labels"] == LABELS
        # every label summed: a probability of 1 in every window
        assert b["peak"] == pytest.approx(1.0) and b["mean"] == pytest.approx(1.0)
    for opened, closed in zip(starts, ends):
        assert opened["degraded"] is False  # a degraded window never starts one
        assert closed["start_ns"] == opened["start_ns"] <= closed["end_ns"]
        assert closed["seq_first"] == opened["seq_first"] < opened["seq_last"] <= closed["seq_last"]
        # the same instants in Unix time: the two clocks' offset is the one seen here
        offset = closed["end_wall_ns"] - closed["end_ns"]
        assert closed["start_wall_ns"] - closed["start_ns"] == pytest.approx(offset, abs=5e7)
        assert abs(offset - (time.time_ns() - time.monotonic_ns())) < 1e9
    # the status listed the active event with its peak so far
    entries = [e for s in listener.statuses for e in s["events"]]
    assert entries and all(e["peak"] == pytest.approx(1.0) for e in entries)
    # the removed stream's last status, sent after the end, lists no event
    removed = [s for s in listener.statuses if s["state"] == "removed"]
    assert removed and removed[0]["events"] == []
    assert f"cam0: event anything started ({first}, peak 1.00)" in err
    assert f"cam0: event anything ended ({second}, peak 1.00, stream failed)" in err
    assert f"cam0: event anything ended ({third}, peak 1.00, stopped)" in err


def test_an_event_ends_with_its_file(run_stream, tmp_path, video_file):
    """A file without --loop ends its stream: its event ends (stream ended) before the
    stream's last status, and the run, every stream ended, exits 0. The rule comes from
    the run's config file this time."""
    cfg = tmp_path / "run.yaml"
    rule = {"name": "anything", "labels": LABELS, "on": 0.5, "off": 0.2}
    cfg.write_text(yaml.safe_dump({"model": "x3d_xs", "events": [rule]}))
    stream = run_stream("--config", str(cfg), "--camera", str(video_file), *MODEL_ARGS)
    listener = Listener(stream.endpoint)
    try:
        listener.until(lambda: listener.find("start", "cam0-anything-1"), "start", stream.proc)
        listener.until(lambda: listener.find("end", "cam0-anything-1"), "end", timeout=60)
        listener.until(lambda: any(s["state"] == "ended" for s in listener.statuses), "ended")
    finally:
        listener.sub.close()
    code, err = stream.wait()
    assert code == 0 and "every stream has ended: stopping" in err, err
    assert [b["type"] for b in listener.events] == ["start", "end"]
    assert listener.events[-1]["reason"] == "stream ended"
    ended = [s for s in listener.statuses if s["state"] == "ended"]
    assert ended[0]["events"] == []


@pytest.mark.e2e
def test_an_unknown_label_is_one_line_from_a_real_run(tmp_path):
    """The labels are judged once the model is built (its own label list), before the
    engine is compiled: a typo names the closest labels."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "model: x3d_xs\nevents:\n  - {name: guitar, labels: [playing gitar], on: 0.6, off: 0.4}\n"
    )
    code, err = run_to_end(
        "--config", str(cfg), "--camera", "synthetic", "--weights", "none",
        "--log-level", "warning", "--control", "none", cwd=tmp_path,
    )  # fmt: skip
    assert code == 2, err
    assert one_error_line(err) == (
        "error: events rule 'guitar': unknown label 'playing gitar': did you mean "
        "'playing guitar'? (also close: 'playing bass guitar', 'playing harp')"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["run.yaml"]
