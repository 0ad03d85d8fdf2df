"""examples/: each client runs as a subprocess against a real publisher and does what its
docstring says; each imports only the light part of the package (stream.subscribe,
stream.transport.wire), which `pip install avstream` provides without the pipeline's packages."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from test_wire import _prediction

from helpers import REPO, Sending
from stream.transport.keys import make_keys

EXAMPLES = sorted((REPO / "examples").glob("*.py"))
LIGHT = {"stream.transport", "stream.transport.wire"}


def _example(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / name), *args],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_import_only_the_light_api(path):
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    ours = {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names}
    assert ours and ours <= LIGHT, ours


def _scored(label: str, score: float) -> dict:
    return _prediction(
        labels=[
            {"label": label, "index": 1, "score": score},
            {"label": "other", "index": 2, "score": 0.01},
        ]
    )


def test_act_on_label_acts_once_per_streak(tmp_path):
    marker = tmp_path / "acted"
    with Sending([_scored("whistling", 0.9)]) as pub:
        out = _example(
            "act_on_label.py",
            pub.endpoint,
            "--label",
            "whistling",
            "--threshold",
            "0.8",
            "--times",
            "3",
            "--count",
            "8",
            "--run",
            f"echo ran >> {marker}",
        )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "whistling above 0.8 for 3 predictions (cam0 #"
    ), lines
    assert marker.read_text() == "ran\n"  # the command ran, once


def test_act_on_label_needs_the_predictions_in_a_row():
    # two above the threshold, then one below (or a label out of the top-k), round and round
    pattern = [
        _scored("whistling", 0.9),
        _scored("whistling", 0.95),
        _scored("whistling", 0.3),
        _scored("sneezing", 0.9),
    ]
    with Sending(pattern) as pub:
        never = _example(
            "act_on_label.py",
            pub.endpoint,
            "--label",
            "whistling",
            "--threshold",
            "0.8",
            "--times",
            "3",
            "--count",
            "12",
        )
        twice = _example(
            "act_on_label.py",
            pub.endpoint,
            "--label",
            "whistling",
            "--threshold",
            "0.8",
            "--times",
            "2",
            "--count",
            "12",
        )
    assert never.returncode == 0 and never.stdout == "", never.stdout + never.stderr
    # 12 predictions hold 2 or 3 runs of two above, depending on where the subscriber joined
    assert twice.returncode == 0 and len(twice.stdout.splitlines()) in (2, 3), (
        twice.stdout + twice.stderr
    )


def test_secure_subscriber_receives_with_its_keys_and_is_refused_with_others(tmp_path):
    keys, other = tmp_path / "keys", tmp_path / "other"
    make_keys(keys, ["subscriber"])
    make_keys(other, ["subscriber"])
    with Sending(
        [_prediction()],
        curve_secret_key=str(keys / "server.key_secret"),
        curve_clients=str(keys / "clients"),
    ) as pub:
        ok = _example("secure_subscriber.py", str(keys), pub.endpoint, "--count", "3")
        refused = _example("secure_subscriber.py", str(other), pub.endpoint, "--count", "3")
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert len(lines) == 3 and all(
        " cam0 #" in line and "whistling 0.50" in line for line in lines
    ), lines
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith(f"error: the CURVE handshake with {pub.endpoint} fails"), (
        refused.stderr
    )
    assert refused.stderr.count("\n") == 1
