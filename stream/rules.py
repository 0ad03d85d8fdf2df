"""Event rules: what `--events FILE` or a run config's `events:` list says, checked.

    events:
      - name: knocking              # letters, digits, _ and - (1-64)
        labels: [knocking on door]  # one or more of the model's labels: the score is their sum
        on: 0.6                     # start above this ...
        min_on: 1.0                 # ... for this many seconds
        off: 0.4                    # end below this ...
        hold: 2.0                   # ... for this many seconds
        cooldown: 0                 # seconds after an end before the same event may start again
        update_every: 10            # seconds between update messages of a long event (0: none)
        raw: false                  # score the unsmoothed probabilities

Everything that can be judged without the model (keys, types, names, thresholds,
durations) is checked here, in the parent process before any child starts; one
UserError line each, naming the file and the rule. The label names can only be judged
against the model's labels (its checkpoint's, or a config's `labels:`): the inference
process calls `label_indices` once the model is built. stream/pipeline/events.py turns a
stream's scores into events under these rules; docs/events.md says what they mean.

No torch and no numpy here: the parent process reads its options without them.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Sequence
from typing import Any

from stream import options
from stream.errors import UserError

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: The keys a rule must give.
REQUIRED = ("name", "labels", "on", "off")
#: The longest duration a rule may give: a year (in ns it stays an exact integer).
MAX_SECONDS = 365 * 24 * 3600


@dataclasses.dataclass(frozen=True)
class Rule:
    """One event rule (docs/events.md). Thresholds are scores (a sum of probabilities,
    0 to 1), durations seconds of capture time."""

    name: str
    labels: tuple[str, ...]
    on: float
    off: float
    min_on: float = 0.0
    hold: float = 0.0
    cooldown: float = 0.0
    update_every: float = 0.0
    raw: bool = False


#: Every key of a rule, in the order docs and errors list them.
KEYS = tuple(f.name for f in dataclasses.fields(Rule))
_NUMBERS = ("on", "off", "min_on", "hold", "cooldown", "update_every")
_DURATIONS = ("min_on", "hold", "cooldown", "update_every")


def parse(entries: object, where: str) -> list[Rule]:
    """The rules of a YAML `events:` list; `where` names its file in the errors
    ("events file 'rules.yaml'", "config file 'run.yaml'"). UserError for the first
    problem."""
    if not isinstance(entries, list):
        raise UserError(
            f"{where}: events must be a list of rules (name, labels, on, off, ...), "
            f"got {type(entries).__name__} {entries!r}"
        )
    if not entries:
        raise UserError(f"{where}: events is empty: give one rule per event, or leave it out")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        rule = _rule(entry, f"{where}: events[{i}]")
        if rule.name in seen:
            raise UserError(
                f"{where}: events[{i}]: name {rule.name!r} is given twice "
                f"(events[{seen[rule.name]}] and events[{i}]): give each rule its own name"
            )
        seen[rule.name] = i
        rules.append(rule)
    return rules


def _rule(entry: object, at: str) -> Rule:
    if not isinstance(entry, dict):
        raise UserError(
            f"{at} must be a mapping with the keys {', '.join(KEYS)}, "
            f"got {type(entry).__name__} {entry!r}"
        )
    name = entry.get("name")
    if name is not None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise UserError(
                f"{at}: name {name!r} must be 1-64 characters of letters, digits, '_' or '-'"
            )
        at = f"{at} ({name})"
    entry = _keys(entry, at)
    missing = [key for key in REQUIRED if key not in entry]
    if missing:
        raise UserError(
            f"{at}: missing {', '.join(map(repr, missing))} (a rule needs "
            f"{', '.join(REQUIRED[:-1])} and {REQUIRED[-1]})"
        )
    labels = entry["labels"]
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise UserError(
            f"{at}: labels must be a list of the model's label names, e.g. [knocking on door], "
            f"got {type(labels).__name__} {labels!r}"
        )
    if not labels:
        raise UserError(f"{at}: labels is empty: give one or more of the model's label names")
    if not all(x.strip() for x in labels):
        raise UserError(f"{at}: labels has an empty name: give the model's label names")
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise UserError(f"{at}: labels names {twice[0]!r} twice: give each label once")
    values: dict[str, Any] = {}
    for key in _NUMBERS:
        if key not in entry:
            continue
        value = entry[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(
                f"{at}: {key} must be a number, got {type(value).__name__} {value!r}"
                + _as_number(value)
            )
        values[key] = float(value)
    raw = entry.get("raw", False)
    if not isinstance(raw, bool):
        raise UserError(f"{at}: raw must be true or false, got {type(raw).__name__} {raw!r}")
    rule = Rule(name=name, labels=tuple(labels), raw=raw, **values)
    _check(rule, at)
    return rule


def _as_number(value: object) -> str:
    """A hint for text that reads as a number: YAML 1.1 (PyYAML) takes `1e-3` as text,
    since its numbers with an exponent need a dot (`1.0e-3`)."""
    try:
        number = float(value) if isinstance(value, str) else None
    except ValueError:
        number = None
    return "" if number is None else f": write it {number:g} (a number, not quoted)"


def _keys(entry: dict, at: str) -> dict:
    """The rule's mapping by its key names. YAML 1.1 (PyYAML, and so every config file of
    ours) reads a plain `on` and `off` as true and false, also as keys: those are taken
    back here."""
    out: dict[str, Any] = {}
    for key, value in entry.items():
        name = {True: "on", False: "off"}.get(key, key) if isinstance(key, bool) else key
        if name not in KEYS:
            raise UserError(f"{at}: unknown key {key!r} (known keys: {', '.join(KEYS)})")
        if name in out:
            raise UserError(f"{at}: {name} is given twice")
        out[name] = value
    return out


def _check(rule: Rule, at: str) -> None:
    for key in _DURATIONS:
        value = getattr(rule, key)
        if not value >= 0:  # also NaN
            raise UserError(f"{at}: {key} {value:g} must be >= 0 seconds")
        if value > MAX_SECONDS:  # also inf
            raise UserError(f"{at}: {key} {value:g} must be at most {MAX_SECONDS} seconds (a year)")
    if not 0 < rule.on < 1:
        raise UserError(
            f"{at}: on {rule.on:g} must be between 0 and 1: a score is the summed probability "
            "of the rule's labels"
        )
    if not 0 <= rule.off < rule.on:
        raise UserError(
            f"{at}: off {rule.off:g} must be >= 0 and below on {rule.on:g}: an event starts "
            "above on and ends below off, and the gap between them keeps it from flapping"
        )


def read_file(path: str) -> list[Rule]:
    """The rules of an events file (`--events FILE`): a YAML mapping whose one key,
    `events`, is the list of rules."""
    where = f"events file {path!r}"
    data = options.load_yaml(path, where)
    if not isinstance(data, dict) or "events" not in data:
        raise UserError(f"{where} must be a mapping with one key, events: a list of rules")
    for key in data:
        if key != "events":
            raise UserError(
                f"{where}: unknown key {key!r} (an events file holds one key, events: a list "
                "of rules)"
            )
    return parse(data["events"], where)


def label_indices(rules: Sequence[Rule], labels: Sequence[str], model: str) -> list[list[int]]:
    """Each rule's labels as indices into the model's `labels`; UserError naming the rule,
    the unknown label and the model's closest labels."""
    index = {label: i for i, label in enumerate(labels)}
    out = []
    for rule in rules:
        for label in rule.labels:
            if label not in index:
                raise UserError(
                    f"events rule {rule.name!r}: unknown label {label!r}: "
                    + _closest(label, labels, model)
                )
        out.append([index[label] for label in rule.labels])
    return out


def _closest(label: str, labels: Sequence[str], model: str) -> str:
    """'did you mean ...?' with the model's labels closest to `label` (case aside), or what
    the labels are when none is close."""
    lowered: dict[str, str] = {}
    for x in labels:
        lowered.setdefault(x.lower(), x)
    close = [lowered[x] for x in difflib.get_close_matches(label.lower(), lowered, n=3)]
    if len(close) > 1:
        return f"did you mean {close[0]!r}? (also close: {', '.join(map(repr, close[1:]))})"
    if close:
        return f"did you mean {close[0]!r}?"
    return (
        f"{model} has no label like it (its {len(labels)} labels are its checkpoint's, or the "
        "labels: of its config)"
    )
