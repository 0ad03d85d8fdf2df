"""Events against the truth (issue #20, section 4), the small version of
benchmarks/events_timing.py: a SlowFast trained by `python -m stream.train` on the moving
bars (stream.train.synthetic), a 30 s video with a bouncing and a dropping bar at known
times, a real `python -m stream.run --events` on it. Every event starts and ends within
stride + hold of its segment, each segment starts one event (no flapping), and nothing
else starts one. The benchmark's docstring says how capture times are mapped onto the
video's own seconds; time is capture time, so a busy machine does not move the errors
much (it skips windows)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO
from stream.train.synthetic import FPS

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # trains a model, then a real run


def test_events_start_and_end_within_stride_plus_hold_of_the_truth(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/events_timing.py", "--quick", "--seed", "0",
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    bound = result["bound_s"]
    assert bound == 0.25 + 2.0  # --stride 0.25, the example rule (hold 2)
    segments = result["segments"]
    assert len(segments) >= 2 and {s["label"] for s in segments} == {"bounce", "drop"}
    for s in segments:
        assert s["starts"] == 1, s  # one event per segment: no flapping, none missed
        assert abs(s["start_error_s"]) <= bound and abs(s["end_error_s"]) <= bound, s
        # nothing is seen before the bar is on screen: a start earlier than the truth
        # would be a clock mapped wrongly
        assert s["start_error_s"] >= -1 / FPS, s
    assert result["false_events"] == []
    # the mapping: every window's end is a frame of the file
    assert result["clock"]["off_grid_frames"] < 0.01
    assert result["windows"]["run"] > 0 and result["exit_code"] == 0
    assert "MET: bound stride + hold = 0.25 + 2 = 2.25 s" in proc.stdout
