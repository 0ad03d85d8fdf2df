"""What `python -m stream.run` tells its user while it runs: the stride in use and where it
came from, a warning when windows are skipped because the engine is slower than the
stride, `--duration` counted from "running", a slow model stopping without being
terminated, and a no-weights warning that suggests what exists for the model."""

from __future__ import annotations

import re
import signal

import pytest

from helpers import StreamProcess, segments_of
from stream import config
from stream.pipeline.inference import PaceWatch, _weights_hint, keeping_stride

pytestmark = pytest.mark.e2e  # real stream.run runs


@pytest.fixture
def start_run():
    """`python -m stream.run ARGS` (helpers.StreamProcess), killed after the test."""
    runs: list[StreamProcess] = []

    def start(*args: str) -> StreamProcess:
        runs.append(StreamProcess(*args))
        return runs[-1]

    yield start
    for r in runs:
        r.kill()


def test_a_stride_too_short_for_the_engine_is_warned_about(start_run):
    run = start_run(
        "--camera",
        "synthetic",
        "--size",
        "160x120",
        "--model",
        "x3d_xs",
        "--weights",
        "none",
        "--no-compile",
        "--stride",
        "0.01",
        "--log-level",
        "info",
    )
    assert run.wait_for("windows every").string.endswith("windows every 0.01 s (from --stride)")
    warning = run.wait_for("not keeping up").string
    m = re.search(
        r"not keeping up: (\d+) of the last (\d+) windows were skipped at --stride 0\.01; "
        r"the engine takes (\d+) ms per window and the whole window (\d+) ms "
        r"\(medians of the last \d+\): --stride ([\d.]+) would keep up",
        warning,
    )
    assert m, warning
    skipped, ticks, engine_ms, window_ms = (int(x) for x in m.groups()[:4])
    stride = float(m[5])
    assert 2 <= skipped <= ticks and 0 < engine_ms <= window_ms
    assert stride >= 1.2 * window_ms / 1e3 and stride == keeping_stride(stride)
    code, err = run.stop(signal.SIGINT)
    assert code == 0, err
    assert "Traceback" not in err
    assert not segments_of(run.proc.pid), "shared memory left behind"


def test_the_stride_says_where_it_comes_from(tmp_path):
    assert config.resolve({"model": "x3d_m"}).origin("stride") == "configs/x3d_m.yaml"
    assert config.resolve({"model": "x3d_m", "stride": 0.75}).origin("stride") == "--stride"
    own = tmp_path / "run.yaml"
    own.write_text("model: x3d_xs\nstride: 0.5\n")
    assert config.resolve({"config": str(own)}).origin("stride") == str(own)
    bare = tmp_path / "bare.yaml"
    bare.write_text("model: x3d_xs\n")
    assert config.resolve({"config": str(bare)}).origin("stride") == "the built-in default"


def test_pace_warning_is_rate_limited():
    pace = PaceWatch(0.25, ticks=20, every_s=30.0)
    seen = [pace.window(skipped=1, engine_s=0.3, work_s=0.35, now=t) for t in range(40)]
    warned = [t for t, w in enumerate(seen) if w is not None]
    assert warned == [2, 32]  # from the third window with two skips; then not for 30 s
    assert "--stride 0.5 would keep up" in seen[2]  # 1.2 × 0.35 s, rounded up to a round stride
    # keeping up: never a warning
    steady = PaceWatch(0.25)
    assert not any(steady.window(skipped=0, engine_s=0.1, work_s=0.12, now=t) for t in range(100))


def test_slow_model_stops_without_being_terminated(start_run):
    """A stop while a slow window runs (eager X3D-M takes seconds per window on 2 cores):
    the inference process gets time to finish it, so no 'terminating it' on a normal stop."""
    run = start_run(
        "--camera",
        "synthetic",
        "--size",
        "160x120",
        "--model",
        "x3d_m",
        "--weights",
        "none",
        "--no-compile",
        "--duration",
        "2",
        "--log-level",
        "info",
    )
    assert run.wait_for("running: publishing on").string.endswith("stopping after 2 s")
    code, err = run.wait(timeout=300)
    assert code == 0, err
    assert "--duration reached" in err
    assert "terminating" not in err, err


def test_no_weights_warning_suggests_what_exists():
    assert "--weights kinetics400" in _weights_hint("x3d_xs")
    hint = _weights_hint("avslowfast_r50")  # SlowFast's checkpoint gives only its visual pathways
    assert "kinetics400" not in hint
    for part in ("python -m stream.record", "python -m stream.train", "--weights PATH"):
        assert part in hint, hint
