"""Bad input to `python -m stream.run`: one clear `error:` line, a non-zero exit, no
traceback, and nothing left behind (processes, /dev/shm)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest
import zmq

from helpers import REPO, free_port, running, shm_segments

pytestmark = pytest.mark.usefixtures("x3d_xs_compiled")  # pipelines load it, not compile it

FAST = ("--weights", "none", "--log-level", "warning")


def _run(*args: str, timeout: float = 90, env: dict | None = None) -> tuple[int, str, set[int]]:
    before = shm_segments()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.run", *args], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    _, err = proc.communicate(timeout=timeout)
    time.sleep(0.2)
    assert shm_segments() <= before, "shared memory left behind"
    return proc.returncode, err, before


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _closed_port() -> int:
    return free_port()


def _checkpoint_that_does_not_fit(tmp_path):
    import torch

    import models

    sd = models.create("x3d_xs").state_dict()
    sd["head.extra.weight"] = torch.zeros(3)
    sd.pop(next(iter(sd)))
    path = tmp_path / "bad.pyth"
    torch.save({"model_state": sd}, path)
    return str(path)


CASES = {
    "camera index that does not open": (("--camera", "7"), "camera 7 did not open"),
    "missing file": (("--camera", "no/such/clip.mp4"), "does not exist"),
    "url that does not answer": (
        ("--camera", f"http://127.0.0.1:{_closed_port()}/cam.mjpg"), "did not answer",
    ),
    "unknown model": (("--camera", "synthetic", "--model", "x3d_xxl"), "unknown model 'x3d_xxl'"),
    "bad stride": (("--stride", "0"), "--stride"),
    "bad smoothing": (("--smoothing", "median:3"), "--smoothing"),
    "remote publish without --allow-remote": (("--publish", "tcp://0.0.0.0:5999"), "--allow-remote"),
    "bad size": (("--size", "640by480"), "--size"),
    "unknown flag": (("--camra", "0"), "unrecognized arguments"),
    "tensorrt not yet": (("--camera", "synthetic", "--engine", "tensorrt"), "tensorrt"),
    "fp16 on cpu": (("--camera", "synthetic", "--precision", "fp16", "--device", "cpu"), "fp16"),
    "no threads": (("--camera", "synthetic", "--threads", "0"), "--threads 0 must be >= 1"),
    "allocator that is not there": (("--camera", "synthetic", "--malloc", "/no/libjemalloc.so.2"), "--malloc"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_clear_line(case):
    args, expected = CASES[case]
    code, err, _ = _run(*args, *FAST)
    assert code == 2, err
    assert expected in _one_error_line(err)


def test_weights_that_do_not_fit(tmp_path):
    code, err, _ = _run("--camera", "synthetic", "--weights", _checkpoint_that_does_not_fit(tmp_path), "--log-level", "warning")
    assert code == 2, err
    line = _one_error_line(err)
    assert "missing" in line and "unexpected" in line and "head.extra.weight" in line


def test_unknown_yaml_key(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: x3d_xs\nstrde: 0.5\n")
    code, err, _ = _run("--config", str(cfg), *FAST)
    assert code == 2
    line = _one_error_line(err)
    assert "unknown key 'strde'" in line and str(cfg) in line


@pytest.mark.parametrize(
    "text, expected",
    [
        ("stride: [1, 2]\n", "stride must be"),
        ("model: [\n", "not valid YAML"),
        ("- a\n- b\n", "mapping"),
        ("model_options: [fusion]\n", "model_options must be dict"),
        ("model_options: {1: 2}\n", "model_options must map option names to values"),
    ],
)
def test_malformed_yaml(tmp_path, text, expected):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    code, err, _ = _run("--config", str(cfg), *FAST)
    assert code == 2
    assert expected in _one_error_line(err)


def test_port_in_use():
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PUB)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    try:
        code, err, _ = _run("--camera", "synthetic", "--publish", f"tcp://127.0.0.1:{port}", *FAST)
    finally:
        sock.close(0)
    assert code == 2
    assert "in use" in _one_error_line(err)


def test_missing_config_file():
    code, err, _ = _run("--config", "no/such.yaml", *FAST)
    assert code == 2
    assert "does not exist" in _one_error_line(err)


def test_no_process_outlives_a_failed_start():
    """A failure after both children started (port in use) still leaves nothing running."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    before = shm_segments()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.run", "--camera", "synthetic", "--publish", f"tcp://127.0.0.1:{port}", *FAST],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    from helpers import descendants

    seen: set[int] = set()
    while proc.poll() is None:
        seen |= descendants(proc.pid)
        time.sleep(0.05)
    blocker.close()
    assert proc.returncode == 2
    deadline = time.monotonic() + 2.0
    while running(seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(seen)
    assert shm_segments() <= before


def _without_display() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}


CORES = len(os.sched_getaffinity(0))
BEFORE_THE_MODEL = {
    "preview without a display": (
        ("--preview",), _without_display,
        (
            "error: --preview needs a display but neither DISPLAY nor WAYLAND_DISPLAY is set: "
            "run without --preview, or from a desktop session"
        ),
    ),
    "more threads than cores": (
        ("--threads", str(CORES + 1)), lambda: None,
        (
            f"error: --threads {CORES + 1} is more than the {CORES} CPU core(s) this process may "
            f"use: give at most {CORES}, or leave --threads out for one per core"
        ),
    ),
}


@pytest.mark.parametrize("case", list(BEFORE_THE_MODEL))
def test_checks_that_need_no_model_come_first(case):
    """Found while reading the options, before any process starts: the error line is all
    stderr holds (no model was built, so no 'no weights' warning and no engine line, even
    at --log-level debug)."""
    args, env, expected = BEFORE_THE_MODEL[case]
    code, err, _ = _run(
        "--camera", "synthetic", "--weights", "none", "--log-level", "debug", *args, env=env()
    )
    assert code == 2, err
    assert err.splitlines() == [expected]


def _help() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "stream.run", "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 0, out.stderr
    return re.sub(r"\s+", " ", out.stdout)  # argparse wraps lines anywhere


def test_help_gives_each_models_own_defaults():
    from stream import options

    text = _help()
    strides = options.model_defaults("stride")
    assert len(set(strides.values())) > 1 and len(strides) == len(list(REPO.glob("configs/*.yaml")))
    for model, stride in strides.items():
        assert f"{model} {stride:g}" in text, (model, text)
    assert "none for avslowfast_r50; kinetics400 for the others" in text
    assert "{auto,fp32,fp16,bf16}" in text and "auto (the default:" in text
    assert "seconds of running, after start-up" in text


def test_unknown_model_option(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: x3d_xs\nmodel_options: {nonsense: 1}\n")
    code, err, _ = _run("--config", str(cfg), "--camera", "synthetic", *FAST)
    assert code == 2, err
    assert "nonsense" in _one_error_line(err)
