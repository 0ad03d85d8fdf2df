"""Event rules and the per-stream tracker (stream/rules.py, stream/pipeline/events.py) on
made-up score sequences: when events start and end, no flapping around the thresholds,
cooldown, updates, every start has its end, degraded windows; and the rules' bad input,
from a file and from a run config, refused before anything starts."""

from __future__ import annotations

import multiprocessing
import os
import random

import pytest

from helpers import segments_of
from stream import config, rules, run
from stream.errors import UserError
from stream.pipeline.events import EventTracker
from stream.transport import wire

STRIDE_NS = 250_000_000  # a window every 0.25 s
T0 = 7_000_000_000  # the capture clock's reading at the first window
WALL0 = 1_700_000_000_000_000_000  # the same instant in Unix time
LABELS = ["knocking on door", "applauding", "silence"]


def _rule(**over) -> rules.Rule:
    values = dict(name="knocking", labels=("knocking on door",), on=0.6, off=0.4)
    return rules.Rule(**{**values, **over})


class Feed:
    """A tracker of stream cam0 and the windows given to it, one every STRIDE_NS: the
    messages it made, each checked by the wire module."""

    def __init__(self, *rule_list: rules.Rule, numbers: dict | None = None):
        self.rules = list(rule_list) or [_rule()]
        indices = rules.label_indices(self.rules, LABELS, "test")
        self.clock = iter(range(WALL0 + 10**12, WALL0 + 2 * 10**12))  # when each is made
        self.tracker = EventTracker(
            "cam0", self.rules, indices, numbers=numbers, clock=lambda: next(self.clock)
        )
        self.seq = 0
        self.messages: list[dict] = []

    def t(self, seq: int) -> int:
        return T0 + seq * STRIDE_NS

    def window(self, score: float, *, raw: float | None = None, degraded: bool = False):
        """One window whose first label scores `score` (smoothed; `raw` unsmoothed)."""
        smoothed = [score, (1 - score) / 2, (1 - score) / 2]
        raw_score = score if raw is None else raw
        unsmoothed = [raw_score, (1 - raw_score) / 2, (1 - raw_score) / 2]
        got = self.tracker.observe(
            seq=self.seq,
            capture_ns=self.t(self.seq),
            wall_ns=WALL0 + self.seq * STRIDE_NS,
            smoothed=smoothed,
            raw=unsmoothed,
            degraded=degraded,
        )
        self._take(got)
        self.seq += 1
        return got

    def scores(self, *scores: float) -> list[dict]:
        return [m for s in scores for m in self.window(s)]

    def close(self, reason: str = "stopped") -> list[dict]:
        got = self.tracker.close(reason)
        self._take(got)
        return got

    def _take(self, got: list[dict]) -> None:
        for body in got:
            assert wire.decode(wire.encode("event.cam0", body)) == ("event.cam0", body)
        self.messages.extend(got)

    def kinds(self) -> list[str]:
        return [m["type"] for m in self.messages]


def test_an_event_starts_after_min_on_and_ends_after_hold():
    feed = Feed(_rule(min_on=1.0, hold=0.5))
    assert feed.scores(0.1, 0.2, 0.1) == []
    # above on from seq 3: 1.0 s later (seq 7) it starts, dated at seq 3
    assert feed.scores(0.7, 0.9, 0.8, 0.7) == []
    (start,) = feed.window(0.65)
    assert start["type"] == "start" and start["id"] == "cam0-knocking-1"
    assert (start["seq_first"], start["seq_last"]) == (3, 7)
    assert start["start_ns"] == feed.t(3) and start["start_wall_ns"] == WALL0 + 3 * STRIDE_NS
    assert start["end_ns"] is None and start["end_wall_ns"] is None and start["reason"] is None
    assert start["peak"] == pytest.approx(0.9)
    assert start["mean"] == pytest.approx((0.7 + 0.9 + 0.8 + 0.7 + 0.65) / 5)
    assert feed.tracker.active == [
        {"name": "knocking", "id": "cam0-knocking-1", "start_ns": feed.t(3), "peak": 0.9}
    ]
    # between off and on it goes on; below off for 0.5 s (three windows: 0, 0.25, 0.5) it ends
    assert feed.scores(0.5, 0.45, 0.3, 0.2) == []
    (end,) = feed.window(0.1)
    assert end["type"] == "end" and end["id"] == start["id"] and end["reason"] == "below threshold"
    assert end["end_ns"] == feed.t(9)  # the last window at or above off
    assert end["end_wall_ns"] == WALL0 + 9 * STRIDE_NS
    assert (end["seq_first"], end["seq_last"]) == (3, 9)
    assert end["mean"] == pytest.approx((0.7 + 0.9 + 0.8 + 0.7 + 0.65 + 0.5 + 0.45) / 7)
    assert end["start_ns"] == start["start_ns"] and end["degraded"] is False
    assert feed.tracker.active == []
    assert [m["seq"] for m in feed.messages] == [0, 1]  # the stream's event messages
    assert all(m["stream"] == "cam0" and m["labels"] == ["knocking on door"] for m in feed.messages)


def test_without_min_on_and_hold_the_first_window_above_starts_and_below_ends():
    feed = Feed(_rule())
    assert [m["type"] for m in feed.window(0.61)] == ["start"]
    assert [m["type"] for m in feed.window(0.39)] == ["end"]
    assert feed.messages[1]["end_ns"] == feed.messages[0]["start_ns"]  # one window long


def test_a_dip_below_on_before_min_on_starts_the_run_again():
    feed = Feed(_rule(min_on=0.5))
    feed.scores(0.8, 0.8, 0.5, 0.8, 0.8, 0.55, 0.9, 0.9)  # never 0.5 s above on in a row
    assert feed.messages == []
    (start,) = feed.window(0.9)
    assert start["seq_first"] == 6 and start["start_ns"] == feed.t(6)


def test_no_flapping_around_the_thresholds():
    """Scores that wander around `on` start one event; scores that wander around `off`
    (each dip shorter than `hold`) do not end it; one real drop ends it once."""
    feed = Feed(_rule(on=0.6, off=0.4, min_on=0.5, hold=0.75))
    rng = random.Random(0)
    feed.scores(*(0.6 + rng.uniform(-0.08, 0.08) for _ in range(40)))
    feed.scores(*(0.4 + (-0.05 if i % 2 else 0.05) for i in range(40)))
    feed.scores(*(0.4 + rng.choice((-0.03, 0.03, 0.04)) for _ in range(40)))
    assert feed.kinds() == ["start"]
    feed.scores(*[0.1] * 10)
    assert feed.kinds() == ["start", "end"]
    # and without the gap between on and off each crossing would be an event
    plain = Feed(_rule(on=0.6, off=0.59))
    plain.scores(*(0.6 + (0.05 if i % 2 else -0.05) for i in range(20)))
    assert plain.kinds().count("start") == 10


def test_cooldown_keeps_an_event_from_starting_again_at_once():
    feed = Feed(_rule(cooldown=1.0))
    feed.scores(0.9, 0.9, 0.1)  # starts at seq 0, ends at seq 2
    feed.scores(*[0.9] * 3)  # seq 3-5: within 1 s of the end
    assert feed.kinds() == ["start", "end"]
    (again,) = feed.window(0.9)  # seq 6: 1 s after seq 2
    assert again["type"] == "start" and again["id"] == "cam0-knocking-2"
    assert again["start_ns"] == feed.t(6)  # the first window past the cooldown
    # no cooldown: the next window above on starts the next one
    quick = Feed(_rule())
    quick.scores(0.9, 0.1, 0.9)
    assert quick.kinds() == ["start", "end", "start"]


def test_updates_every_update_every_seconds_with_the_same_id():
    feed = Feed(_rule(update_every=1.0))
    feed.scores(*[0.7] * 17, 0.95, 0.7, 0.7, 0.7, 0.7, 0.1)  # 5.5 s above on
    assert feed.kinds() == ["start", "update", "update", "update", "update", "update", "end"]
    assert len({m["id"] for m in feed.messages}) == 1
    updates = [m for m in feed.messages if m["type"] == "update"]
    assert [m["seq_last"] for m in updates] == [4, 8, 12, 16, 20]
    assert all(m["end_ns"] is None and m["reason"] is None for m in updates)
    assert [m["peak"] for m in updates] == pytest.approx([0.7, 0.7, 0.7, 0.7, 0.95])
    assert [m["seq"] for m in feed.messages] == list(range(7))


def test_every_start_has_its_end():
    """A long random score sequence with two rules, then a stop: each event has one
    start, then its updates, then one end, in order, and none overlaps the next."""
    rng = random.Random(1)
    feed = Feed(
        _rule(min_on=0.5, hold=0.5, update_every=2.0),
        _rule(name="clapping", labels=("applauding", "silence"), on=0.5, off=0.3, cooldown=1.0),
    )
    level = 0.0
    for _ in range(2000):
        if rng.random() < 0.05:
            level = rng.choice((0.05, 0.5, 0.8))
        feed.window(
            min(1.0, max(0.0, level + rng.uniform(-0.1, 0.1))), degraded=rng.random() < 0.02
        )
    assert feed.kinds().count("start") > 10  # the sequence does make events
    feed.close("stopped")
    by_id: dict[str, list[dict]] = {}
    for m in feed.messages:
        by_id.setdefault(m["id"], []).append(m)
    for event_id, msgs in by_id.items():
        kinds = [m["type"] for m in msgs]
        assert kinds[0] == "start" and kinds[-1] == "end", (event_id, kinds)
        assert set(kinds[1:-1]) <= {"update"}, (event_id, kinds)
        assert msgs[-1]["end_ns"] >= msgs[0]["start_ns"]
    for name in ("knocking", "clapping"):
        events = [msgs for msgs in by_id.values() if msgs[0]["name"] == name]
        for before, after in zip(events, events[1:]):
            assert after[0]["start_ns"] > before[-1]["end_ns"]
            assert after[0]["wall_ns"] > before[-1]["wall_ns"]  # sent after the end
    assert feed.messages[-1]["reason"] in ("stopped", "below threshold")
    assert feed.tracker.active == []
    assert [m["seq"] for m in feed.messages] == list(range(len(feed.messages)))


def test_degraded_windows_never_start_an_event():
    feed = Feed(_rule(min_on=0.5))
    for _ in range(20):
        feed.window(0.95, degraded=True)
    assert feed.messages == []
    # one degraded window inside a run above on starts the run again after it
    feed.window(0.9)
    feed.window(0.9)
    feed.window(0.9, degraded=True)
    feed.window(0.9)
    feed.window(0.9)
    assert feed.messages == []
    (start,) = feed.window(0.9)
    assert start["seq_first"] == 23 and start["degraded"] is False


def test_an_event_that_spans_a_degraded_window_says_so():
    feed = Feed(_rule(hold=0.5))
    feed.scores(0.9, 0.9)
    feed.window(0.8, degraded=True)  # covered: above off
    feed.scores(0.9, 0.1, 0.1, 0.1)
    assert feed.kinds() == ["start", "end"] and feed.messages[-1]["degraded"] is True
    # a degraded window below off after the event's last window is not covered by it
    other = Feed(_rule(hold=0.5))
    other.scores(0.9, 0.9)
    other.window(0.1, degraded=True)
    other.scores(0.1, 0.1)
    assert other.kinds() == ["start", "end"] and other.messages[-1]["degraded"] is False
    # but one that the event's windows above off come back after is
    back = Feed(_rule(hold=0.5))
    back.scores(0.9)
    back.window(0.1, degraded=True)
    back.scores(0.9, 0.1, 0.1, 0.1)
    assert back.kinds() == ["start", "end"] and back.messages[-1]["degraded"] is True
    assert back.messages[-1]["mean"] == pytest.approx((0.9 + 0.1 + 0.9) / 3)


def test_a_rule_scores_its_labels_summed_smoothed_or_raw():
    two = Feed(_rule(labels=("applauding", "silence"), on=0.5, off=0.2))
    (start,) = two.window(0.3)  # each of the two has 0.35: 0.7 summed
    assert start["type"] == "start" and start["peak"] == pytest.approx(0.7)
    assert [m["type"] for m in two.window(0.85)] == ["end"]  # 0.15 summed
    raw = Feed(_rule(raw=True))
    assert raw.window(0.9, raw=0.1) == []
    assert [m["type"] for m in raw.window(0.1, raw=0.9)] == ["start"]
    assert raw.messages[0]["peak"] == pytest.approx(0.9)


def test_close_ends_active_events_with_the_reason_and_forgets_a_run_not_started():
    feed = Feed(_rule(), _rule(name="slow", min_on=10.0))
    feed.scores(0.9, 0.9, 0.35)  # knocking is active (0.35 below off, within hold 0)
    assert feed.kinds() == ["start", "end"]
    feed.scores(0.9, 0.9)
    (end,) = feed.close("stream removed")
    assert end["reason"] == "stream removed" and end["name"] == "knocking"
    assert end["end_ns"] == feed.t(4) and feed.tracker.active == []
    assert feed.close("stopped") == []  # nothing is active
    # the tracker goes on (a camera back after a failure): "slow"'s run started again
    feed.scores(*[0.9] * 41)  # 10 s from the first of them to the last
    assert [m["name"] for m in feed.messages if m["type"] == "start"] == [
        "knocking",
        "knocking",
        "knocking",
        "slow",
    ]
    assert [m["seq_first"] for m in feed.messages if m["name"] == "slow"] == [5]


def test_ids_stay_unique_when_a_stream_comes_back():
    numbers: dict[str, int] = {}
    first = Feed(numbers=numbers)
    first.scores(0.9, 0.1, 0.9)
    first.close("stream removed")
    again = Feed(numbers=numbers)  # the same stream id added again
    again.scores(0.9)
    ids = [m["id"] for m in first.messages + again.messages if m["type"] == "start"]
    assert ids == ["cam0-knocking-1", "cam0-knocking-2", "cam0-knocking-3"]


# -- rules: what a file or a run config says ----------------------------------------------


RULE = {"name": "knocking", "labels": ["knocking on door"], "on": 0.6, "off": 0.4}


def test_a_rules_file_as_the_issue_writes_it(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(
        "events:\n"
        "  - name: knocking              # letters, digits, _ and -\n"
        "    labels: [knocking on door]\n"
        "    on: 0.6\n"
        "    min_on: 1.0\n"
        "    off: 0.4\n"
        "    hold: 2.0\n"
        "    cooldown: 0\n"
        "    update_every: 10\n"
        "  - {name: clap-2, labels: [applauding, silence], on: 1.0e-3, off: 0, raw: true}\n"
    )
    assert rules.read_file(str(path)) == [
        rules.Rule("knocking", ("knocking on door",), 0.6, 0.4, 1.0, 2.0, 0.0, 10.0, False),
        rules.Rule("clap-2", ("applauding", "silence"), 0.001, 0.0, raw=True),
    ]


BAD_RULES = {
    "unknown key": ({**RULE, "hodl": 2}, "events[0] (knocking): unknown key 'hodl' (known keys:"),
    "a number as text": (
        {**RULE, "on": "0.6"},
        "events[0] (knocking): on must be a number, got str",
    ),
    # YAML 1.1 (PyYAML) reads 1e-3, without a dot, as text
    "an exponent without a dot": ({**RULE, "on": "1e-3"}, "got str '1e-3': write it 0.001"),
    "true as a number": ({**RULE, "hold": True}, "hold must be a number, got bool True"),
    "raw not a switch": ({**RULE, "raw": "yes"}, "raw must be true or false, got str 'yes'"),
    "bad name": (
        {**RULE, "name": "knock knock"},
        "events[0]: name 'knock knock' must be 1-64 characters of letters, digits, '_' or '-'",
    ),
    "missing keys": (
        {"name": "knocking", "labels": ["a"]},
        "events[0] (knocking): missing 'on', 'off' (a rule needs name, labels, on and off)",
    ),
    "off above on": (
        {**RULE, "off": 0.7},
        "events[0] (knocking): off 0.7 must be >= 0 and below on 0.6: an event starts above "
        "on and ends below off",
    ),
    "off equal to on": ({**RULE, "off": 0.6}, "off 0.6 must be >= 0 and below on 0.6"),
    "on of 1": ({**RULE, "on": 1}, "on 1 must be between 0 and 1"),
    "negative hold": ({**RULE, "hold": -1}, "events[0] (knocking): hold -1 must be >= 0 seconds"),
    "negative min_on": ({**RULE, "min_on": -0.5}, "min_on -0.5 must be >= 0 seconds"),
    "negative cooldown": ({**RULE, "cooldown": -2}, "cooldown -2 must be >= 0 seconds"),
    "negative update_every": ({**RULE, "update_every": -10}, "update_every -10 must be >= 0"),
    "endless cooldown": ({**RULE, "cooldown": 1e300}, "cooldown 1e+300 must be at most 31536000"),
    "nan hold": ({**RULE, "hold": float("nan")}, "hold nan must be >= 0 seconds"),
    "nan on": ({**RULE, "on": float("nan")}, "on nan must be between 0 and 1"),
    "empty labels": (
        {**RULE, "labels": []},
        "events[0] (knocking): labels is empty: give one or more of the model's label names",
    ),
    "a blank label": ({**RULE, "labels": ["a", " "]}, "labels has an empty name"),
    "labels as text": ({**RULE, "labels": "knocking on door"}, "labels must be a list of"),
    "a label twice": ({**RULE, "labels": ["a", "a"]}, "labels names 'a' twice"),
    "not a mapping": ("knocking", "events[0] must be a mapping with the keys name, labels, on,"),
}


@pytest.mark.parametrize("case", list(BAD_RULES))
def test_bad_rules_are_one_line_naming_the_rule(case):
    entry, expected = BAD_RULES[case]
    with pytest.raises(UserError) as err:
        rules.parse([entry], "events file 'r.yaml'")
    line = str(err.value)
    assert line.startswith("events file 'r.yaml': events[0]") and expected in line, line
    assert "\n" not in line


def test_rule_names_are_unique_and_the_list_is_a_list():
    with pytest.raises(UserError, match=r"events\[2\]: name 'knocking' is given twice "):
        rules.parse([RULE, {**RULE, "name": "other"}, RULE], "f")
    with pytest.raises(UserError, match="events is empty: give one rule per event"):
        rules.parse([], "f")
    with pytest.raises(UserError, match="events must be a list of rules"):
        rules.parse(RULE, "f")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "events file '{path}' does not exist"),
        ("events: [\n", "events file '{path}' is not valid YAML at line 2: fix the syntax"),
        ("- name: x\n", "events file '{path}' must be a mapping with one key, events:"),
        (
            "events: []\nrules: []\n",
            "events file '{path}': unknown key 'rules' (an events file holds one key, events:",
        ),
    ],
)
def test_a_bad_events_file_is_one_line(tmp_path, text, expected):
    path = tmp_path / "rules.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError) as err:
        rules.read_file(str(path))
    assert str(err.value).startswith(expected.format(path=path)), str(err.value)


def test_labels_are_the_models_and_a_wrong_one_names_the_closest():
    ok = [_rule(), _rule(name="b", labels=("silence", "applauding"))]
    assert rules.label_indices(ok, LABELS, "m") == [[0], [2, 1]]
    typo = [_rule(labels=("knocking on dor",))]
    with pytest.raises(UserError) as err:
        rules.label_indices(typo, LABELS, "x3d_xs")
    assert str(err.value) == (
        "events rule 'knocking': unknown label 'knocking on dor': did you mean 'knocking on door'?"
    )
    with pytest.raises(UserError, match="did you mean 'applauding'"):
        rules.label_indices([_rule(labels=("Applauding",))], LABELS, "m")  # case aside
    with pytest.raises(UserError) as err:
        rules.label_indices([_rule(labels=("zebra",))], LABELS, "x3d_xs")
    assert str(err.value) == (
        "events rule 'knocking': unknown label 'zebra': x3d_xs has no label like it (its 3 "
        "labels are its checkpoint's, or the labels: of its config)"
    )


def test_events_come_from_the_flag_or_the_run_config(tmp_path):
    """--events FILE gives the rules; a config file gives them under events:; the flag
    replaces the config's."""
    (tmp_path / "rules.yaml").write_text("events:\n  - " + repr(RULE).replace("'", '"') + "\n")
    (tmp_path / "run.yaml").write_text(
        "model: x3d_xs\nevents:\n  - {name: other, labels: [a], on: 0.5, off: 0.1}\n"
    )
    base = ["--camera", "synthetic", "--weights", "none"]
    assert run.parse_config(base).events == []
    from_flag = run.parse_config([*base, "--events", str(tmp_path / "rules.yaml")])
    assert [r.name for r in from_flag.events] == ["knocking"]
    assert from_flag.origin("events") == "--events"
    from_config = run.parse_config([*base, "--config", str(tmp_path / "run.yaml")])
    assert from_config.events == [rules.Rule("other", ("a",), 0.5, 0.1)]
    both = [*base, "--config", str(tmp_path / "run.yaml"), "--events", str(tmp_path / "rules.yaml")]
    assert [r.name for r in run.parse_config(both).events] == ["knocking"]
    assert config.RunConfig().events == []


@pytest.fixture
def refused(capsys, monkeypatch):
    """`stream.run.main(argv)` in this process: its one error line, exit status 2, and no
    child process or shared memory (the supervisor is a tripwire: never reached)."""

    def _pipeline_would_start(cfg):
        pytest.fail(f"the options were accepted, a pipeline would start: {cfg}")

    monkeypatch.setattr(run, "Supervisor", _pipeline_would_start)

    def call(*argv: str) -> str:
        before = segments_of(os.getpid())
        code = run.main(["--camera", "synthetic", "--weights", "none", *argv])
        err = capsys.readouterr().err
        assert code == 2, err
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert not multiprocessing.active_children() and segments_of(os.getpid()) <= before
        return lines[0]

    return call


def test_bad_rules_stop_stream_run_before_anything_starts(tmp_path, refused):
    path = tmp_path / "rules.yaml"
    path.write_text("events:\n  - {name: knocking, labels: [x], on: 0.4, off: 0.6}\n")
    assert refused("--events", str(path)) == (
        f"error: events file '{path}': events[0] (knocking): off 0.6 must be >= 0 and below on "
        "0.4: an event starts above on and ends below off, and the gap between them keeps it "
        "from flapping"
    )
    assert refused("--events", str(tmp_path / "none.yaml")) == (
        f"error: events file '{tmp_path / 'none.yaml'}' does not exist"
    )
    cfg = tmp_path / "run.yaml"
    cfg.write_text("events:\n  - {name: knocking, labels: [x], on: 0.6, off: 0.4, hold: -2}\n")
    assert refused("--config", str(cfg)) == (
        f"error: config file '{cfg}': events[0] (knocking): hold -2 must be >= 0 seconds"
    )
    cfg.write_text("events: knocking\n")
    assert refused("--config", str(cfg)) == (
        f"error: config file '{cfg}': events must be list, got str 'knocking'"
    )
