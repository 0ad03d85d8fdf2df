"""Bad input to the commands: one clear `error:` line, exit status 2, no traceback, and
nothing left behind (processes, /dev/shm segments, files).

What stream.run finds while reading its flags and YAML (before any child process starts)
is checked in this process, calling `stream.run.main`; what only its children can judge
(a camera, a model, weights, a port) in real runs; one real run checks that a refused
command line leaves nothing behind. Each command's other bad input is in its own tests."""

from __future__ import annotations

import importlib
import multiprocessing
import os
import re

import pytest
import zmq

from helpers import REPO, free_port, held_port, one_error_line, run_to_end, segments_of
from stream import options, run

FAST = ("--weights", "none", "--log-level", "warning")
CORES = len(os.sched_getaffinity(0))


# -- in this process: the flags and the YAML -----------------------------------------------


@pytest.fixture
def refused(capsys, monkeypatch):
    """Run `stream.run.main(argv)` here and return its one error line: exit status 2, the
    line is all stderr holds, and no child process or shared memory was made."""

    def _pipeline_would_start(cfg):
        pytest.fail(f"the options were accepted, a pipeline would start: {cfg}")

    # A tripwire, not a stand-in: every case here must be refused before the supervisor.
    monkeypatch.setattr(run, "Supervisor", _pipeline_would_start)

    def call(*argv: str) -> str:
        before = segments_of(os.getpid())
        try:
            code = run.main(list(argv))
        except SystemExit as exc:  # argparse
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2, err
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert not multiprocessing.active_children() and segments_of(os.getpid()) <= before
        return lines[0]

    return call


FLAG_CASES = {
    "bad stride": (("--stride", "0"), "error: --stride 0.0 must be > 0 seconds (e.g. 0.25)"),
    "bad smoothing": (
        ("--smoothing", "median:3"),
        (
            "error: --smoothing 'median:3' is not understood: use ema:ALPHA with 0 < ALPHA <= 1, "
            "mean:K with K >= 1, or none"
        ),
    ),
    "remote publish without --allow-remote": (
        ("--publish", "tcp://0.0.0.0:5999"),
        (
            "error: --publish 'tcp://0.0.0.0:5999' would let other hosts subscribe: add "
            "--allow-remote if that is what you want, or publish on 127.0.0.1"
        ),
    ),
    "bad size": (
        ("--size", "640by480"),
        "error: --size '640by480' is not WIDTHxHEIGHT, e.g. 640x480",
    ),
    "unknown flag": (
        ("--camra", "0"),
        "error: unrecognized arguments: --camra 0 (see python -m stream.run --help)",
    ),
    "not a choice": (("--engine", "onnx"), "argument --engine: invalid choice: 'onnx'"),
    "not a number": (("--topk", "five"), "argument --topk: invalid int value: 'five'"),
    "no threads": (
        ("--threads", "0"),
        "error: --threads 0 must be >= 1 (leave it out for one per core)",
    ),
    "more threads than cores": (
        ("--threads", str(CORES + 1)),
        (
            f"error: --threads {CORES + 1} is more than the {CORES} CPU core(s) this process may "
            f"use: give at most {CORES}, or leave --threads out for one per core"
        ),
    ),
    "allocator that is not there": (
        ("--malloc", "/no/libjemalloc.so.2"),
        "error: --malloc '/no/libjemalloc.so.2': no such file",
    ),
    "allocator in the home of a user that is not there": (
        ("--malloc", "~nobody-here/libtcmalloc.so"),
        "error: --malloc '~nobody-here/libtcmalloc.so': no such file",
    ),
    "missing config file": (
        ("--config", "no/such.yaml"),
        "error: config file 'no/such.yaml' does not exist",
    ),
    # Each case starts with --camera synthetic: one more --camera makes two streams.
    "duplicate stream ids": (
        ("--camera", "synthetic", "--stream-id", "door", "--stream-id", "door"),
        (
            "error: stream id 'door' is given twice (streams[0] and streams[1]): give each "
            "stream its own id (the Nth --stream-id names the Nth --camera, and a camera "
            "without one is camN)"
        ),
    ),
    "a stream id that is camN of another camera": (
        ("--camera", "synthetic", "--stream-id", "cam1"),
        "error: stream id 'cam1' is given twice (streams[0] and streams[1])",
    ),
    "a bad stream id among several": (
        ("--camera", "synthetic", "--stream-id", "front door"),
        (
            "error: --stream-id: stream id 'front door' must be 1-64 characters of letters, "
            "digits, '_' or '-'"
        ),
    ),
    "more --mic than --camera": (
        ("--mic", "synthetic", "--mic", "none"),
        (
            "error: more --mic (2) than --camera (1): give --mic once per --camera, in the same "
            "order; none for a camera without sound"
        ),
    ),
    "--mic once for several cameras": (
        ("--camera", "synthetic", "--mic", "synthetic"),
        (
            "error: --mic given once for 2 --camera: give --mic once per --camera, in the same "
            "order; none for a camera without sound (or --mic none once, for all)"
        ),
    ),
    "more --stream-id than --camera": (
        ("--stream-id", "a", "--stream-id", "b"),
        "error: more --stream-id (2) than --camera (1): give at most one --stream-id per --camera",
    ),
    "no batch": (
        ("--max-batch", "0"),
        "error: --max-batch 0 must be >= 1 (1: every window runs alone)",
    ),
    "batch wait as long as the stride": (
        ("--stride", "0.5", "--batch-wait", "0.5"),
        (
            "error: --batch-wait 0.5 must be less than the stride (0.5 s): a window would wait "
            "for its batch past its next one; give e.g. --batch-wait 0.02"
        ),
    ),
    "negative batch wait": (
        ("--batch-wait", "-0.1"),
        "error: --batch-wait -0.1 must be >= 0 seconds (0: no wait)",
    ),
    "remote control without --allow-remote": (
        ("--control", "tcp://0.0.0.0:5554"),
        (
            "error: --control 'tcp://0.0.0.0:5554' would let other hosts control this run: "
            "add --allow-remote if that is what you want, or listen on 127.0.0.1"
        ),
    ),
    "control that is no endpoint": (
        ("--control", "5554"),
        "error: --control '5554' is not an endpoint like tcp://127.0.0.1:5555",
    ),
}


@pytest.mark.parametrize("case", list(FLAG_CASES))
def test_bad_flags_give_one_clear_line(case, refused):
    """Also at --log-level debug the error line is all stderr holds: no model was built,
    so no 'no weights' warning and no engine line."""
    args, expected = FLAG_CASES[case]
    line = refused("--camera", "synthetic", "--weights", "none", "--log-level", "debug", *args)
    assert line.startswith(expected) if expected.startswith("error: ") else expected in line


def test_preview_without_a_display(refused, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert refused("--camera", "synthetic", "--preview", "--log-level", "debug") == (
        "error: --preview needs a display but neither DISPLAY nor WAYLAND_DISPLAY is set: "
        "run without --preview, or from a desktop session"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "model: x3d_xs\nstrde: 0.5\n",
            "unknown key 'strde' (known keys: allow_remote, batch_wait, camera,",
        ),
        ("stride: [1, 2]\n", "stride must be int or float, got list [1, 2]"),
        ("model: [\n", "is not valid YAML at line 2: fix the syntax"),
        ("- a\n- b\n", "must be a mapping of option: value"),
        ("model_options: [fusion]\n", "model_options must be dict, got list ['fusion']"),
        ("model_options: {1: 2}\n", "model_options must map option names to values"),
        (
            "streams:\n  - {id: door, camera: a.mp4}\n  - {id: door, camera: b.mp4}\n",
            "stream id 'door' is given twice (streams[0] and streams[1]): give each stream its "
            "own id (an entry of streams: without an id: is camN, N its place)",
        ),
        (
            "streams:\n  - {id: door, camera: a.mp4, colour: red}\n",
            ": streams[0]: unknown key 'colour' (known keys: id, camera, mic, size, fps, loop, "
            "stride)",
        ),
        (
            "streams:\n  - {camera: a.mp4}\n  - b.mp4\n",
            ": streams[1] must be a mapping with the keys id, camera, mic, size, fps, loop, "
            "stride, got str 'b.mp4'",
        ),
        ("streams:\n  - {id: 7, camera: a.mp4}\n", ": streams[0]: id must be str, got int 7"),
        ("streams:\n  - {camera: a.mp4, loop: 1}\n", ": streams[0]: loop must be bool, got int 1"),
        (
            "streams:\n  - {id: front door, camera: a.mp4}\n",
            ": streams[0]: stream id 'front door' must be 1-64 characters",
        ),
        (
            "streams:\n  - {camera: a.mp4}\n  - {id: yard, camera: b.mp4, size: big}\n",
            ": streams[1] (id yard): --size 'big' is not WIDTHxHEIGHT, e.g. 640x480",
        ),
        ("streams: []\n", "streams is empty: give one mapping per stream"),
        (
            "stream_id: door\nstreams:\n  - {camera: a.mp4}\n",
            "stream_id names one stream, but the file has a streams: list: give each entry its "
            "id: instead",
        ),
    ],
)
def test_bad_yaml_gives_one_clear_line(tmp_path, refused, text, expected):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    line = refused("--config", str(cfg), *FAST)
    assert expected in line and str(cfg) in line, line


def test_flags_against_yaml_streams_give_one_clear_line(tmp_path, refused):
    """The run-level flags that a YAML streams: list makes wrong: --batch-wait against the
    stride an entry gives, --stream-id that would name no stream."""
    cfg = tmp_path / "site.yaml"
    cfg.write_text("streams:\n  - {camera: a.mp4}\n  - {camera: b.mp4, stride: 0.1}\n")
    assert refused("--config", str(cfg), "--batch-wait", "0.1", *FAST) == (
        "error: --batch-wait 0.1 must be less than the smallest stride of the streams (0.1 s, "
        "cam1): a window would wait for its batch past its next one; give e.g. --batch-wait 0.02"
    )
    assert refused("--config", str(cfg), "--stream-id", "door", *FAST) == (
        f"error: --stream-id door names one stream, but config file {str(cfg)!r} has a "
        "streams: list: give each entry its id: instead"
    )


def test_help_gives_each_models_own_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        run.main(["--help"])
    assert exit_.value.code == 0
    text = re.sub(r"\s+", " ", capsys.readouterr().out)  # argparse wraps lines anywhere
    strides = options.model_defaults("stride")
    assert len(set(strides.values())) > 1
    assert len(strides) == len(list(REPO.glob("configs/*.yaml")))
    for model, stride in strides.items():
        assert f"{model} {stride:g}" in text, (model, text)
    assert "none for avslowfast_r50; kinetics400 for the others" in text
    assert "{auto,fp32,fp16,bf16}" in text and "auto (the default:" in text
    assert "seconds of running, after start-up" in text


#: Each command's module, and a command line it refuses for its one unknown flag.
COMMANDS = {
    "stream.run": ("stream.run", ("--bogus",)),
    "stream.record": ("stream.train.record", ("--label", "clapping", "--bogus")),
    "stream.train": ("stream.train.trainer", ("data", "--bogus")),
    "stream.bench": ("stream.bench.latency", ("--bogus",)),
    "stream.keys": ("stream.transport.keys", ("keys", "--bogus")),
    "stream.subscribe": ("stream.transport.subscribe", ("--bogus",)),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_refuses_a_bad_flag_in_one_line(command, capsys, tmp_path, monkeypatch):
    """Every command's parser is stream.errors.ArgumentParser: one line naming the flag and
    the command's --help, exit 2, and nothing written."""
    module, argv = COMMANDS[command]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(list(argv))
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: unrecognized arguments: --bogus (see python -m {command} --help)"
    ]
    assert not list(tmp_path.iterdir())


# -- real runs -------------------------------------------------------------------------------


def test_a_refused_run_leaves_nothing_behind(tmp_path):
    """The real command, refused while reading its options: the one line is all stderr
    holds (also at --log-level debug), exit 2, and no process, shared memory or file."""
    code, err = run_to_end("--stride", "0", "--log-level", "debug", cwd=tmp_path)
    assert code == 2, err
    assert err.splitlines() == ["error: --stride 0.0 must be > 0 seconds (e.g. 0.25)"]
    assert not list(tmp_path.iterdir())


def test_a_refused_run_of_several_streams_leaves_nothing_behind(tmp_path):
    """The same for a command line of several streams: the duplicate id is found before
    any stream's process starts."""
    code, err = run_to_end(
        *("--camera", "synthetic", "--camera", "synthetic", "--camera", "synthetic"),
        *("--stream-id", "door", "--stream-id", "yard", "--stream-id", "door"),
        *("--log-level", "debug"),
        cwd=tmp_path,
    )
    assert code == 2, err
    assert err.splitlines() == [
        "error: stream id 'door' is given twice (streams[0] and streams[2]): give each stream "
        "its own id (the Nth --stream-id names the Nth --camera, and a camera without one is "
        "camN)"
    ]
    assert not list(tmp_path.iterdir())


def _checkpoint_that_does_not_fit(tmp_path):
    import torch

    import models

    sd = models.create("x3d_xs").state_dict()
    sd["head.extra.weight"] = torch.zeros(3)
    sd.pop(next(iter(sd)))
    path = tmp_path / "bad.pyth"
    torch.save({"model_state": sd}, path)
    return str(path)


CHILD_CASES = {
    "camera index that does not open": (("--camera", "7"), "camera 7 did not open"),
    "missing file": (("--camera", "no/such/clip.mp4"), "does not exist"),
    "url that does not answer": (
        ("--camera", f"http://127.0.0.1:{free_port()}/cam.mjpg"),
        "did not answer",
    ),
    "unknown model": (("--camera", "synthetic", "--model", "x3d_xxl"), "unknown model 'x3d_xxl'"),
    "tensorrt not yet": (("--camera", "synthetic", "--engine", "tensorrt"), "tensorrt"),
    "fp16 on cpu": (("--camera", "synthetic", "--precision", "fp16", "--device", "cpu"), "fp16"),
}


@pytest.mark.usefixtures("x3d_xs_compiled")  # pipelines load it, not compile it
@pytest.mark.parametrize("case", list(CHILD_CASES))
def test_what_the_children_find_gives_one_clear_line(case):
    args, expected = CHILD_CASES[case]
    code, err = run_to_end(*args, *FAST)
    assert code == 2, err
    assert expected in one_error_line(err)


@pytest.mark.usefixtures("x3d_xs_compiled")
def test_weights_that_do_not_fit(tmp_path):
    path = _checkpoint_that_does_not_fit(tmp_path)
    code, err = run_to_end("--camera", "synthetic", "--weights", path, "--log-level", "warning")
    assert code == 2, err
    line = one_error_line(err)
    assert "missing" in line and "unexpected" in line and "head.extra.weight" in line


@pytest.mark.usefixtures("x3d_xs_compiled")
def test_unknown_model_option(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: x3d_xs\nmodel_options: {nonsense: 1}\n")
    code, err = run_to_end("--config", str(cfg), "--camera", "synthetic", *FAST)
    assert code == 2, err
    assert "nonsense" in one_error_line(err)


@pytest.mark.usefixtures("x3d_xs_compiled")
def test_port_in_use():
    sock = zmq.Context.instance().socket(zmq.PUB)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    try:
        code, err = run_to_end(
            "--camera", "synthetic", "--publish", f"tcp://127.0.0.1:{port}", *FAST
        )
    finally:
        sock.close(0)
    assert code == 2, err
    assert "in use" in one_error_line(err)


@pytest.mark.usefixtures("x3d_xs_compiled")
def test_no_process_outlives_a_failed_start():
    """A failure after both children started (a port that a plain TCP socket holds) still
    leaves nothing running: run_to_end saw the children and waits for them to be gone."""
    with held_port() as port:
        code, err = run_to_end(
            "--camera", "synthetic", "--publish", f"tcp://127.0.0.1:{port}", *FAST
        )
    assert code == 2, err
    assert "in use" in one_error_line(err)
