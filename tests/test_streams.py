"""Many streams in one `python -m stream.run`, and `python -m stream.ctl` on its control
socket: two cameras served by one inference process, a stream added and removed while
the others run, a file stream that ends alone, bad requests refused in one line with
the running streams untouched, and Ctrl-C leaving nothing behind. The control socket's
wire (stream/transport/ctl.py) is checked on its own first, with real sockets.

The run is started once (a module fixture) and each test leaves it as it found it;
the last test stops it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict

import pytest

from helpers import (
    REPO,
    StreamProcess,
    ctl_command,
    descendants,
    free_port,
    running,
    segments_of,
    wait_until,
)
from stream.errors import UserError
from stream.transport import ctl
from stream.transport.subscribe import Subscriber

MODEL_ARGS = ("--model", "x3d_xs", "--weights", "none", "--stride", "0.5", "--log-level", "info")


def _one_error(code: int, out: str, err: str) -> str:
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# -- the wire, and stream.ctl without a run ------------------------------------------------


def test_requests_are_checked_field_by_field():
    add = ctl.request("add", id="door", camera="synthetic", mic=None, fps=10)
    assert add == {
        "schema": ctl.SCHEMA,
        "op": "add",
        "id": "door",
        "camera": "synthetic",
        "fps": 10,
    }
    assert ctl.check_request(json.loads(ctl.encode(add))) == add  # JSON both ways
    wrong = [
        ([], "a control request is a JSON object"),
        ({"op": "list"}, "not an avstream.ctl.v1 request"),
        ({"schema": ctl.SCHEMA, "op": "reboot"}, "unknown op 'reboot': use one of add, remove"),
        ({"schema": ctl.SCHEMA, "op": "remove"}, "remove needs 'id'"),
        ({"schema": ctl.SCHEMA, "op": "list", "id": "x"}, "list takes no field 'id'"),
        ({"schema": ctl.SCHEMA, "op": "add", "id": "x", "camera": 0}, "'camera' must be str"),
        (
            {"schema": ctl.SCHEMA, "op": "add", "id": "x", "camera": "0", "loop": 1},
            "'loop' must be bool",
        ),
        (
            {"schema": ctl.SCHEMA, "op": "add", "id": "x", "camera": "0", "fps": True},
            "'fps' must be int or float",
        ),
    ]
    for body, line in wrong:
        with pytest.raises(ctl.RequestError, match=line):
            ctl.check_request(body)


def test_ctl_prints_readable_lines():
    door = {"id": "door", "state": "running", "camera": "rtsp://door/stream", "mic": "none"}
    yard = {"id": "yard", "state": "ended", "camera": "yard.mp4", "reason": "end of yard.mp4"}
    assert ctl.format_reply("add", ctl.ok(stream=door)) == [
        "added door: rtsp://door/stream (running)"
    ]
    assert ctl.format_reply("remove", ctl.ok(stream="door")) == ["removed door"]
    assert ctl.format_reply("list", ctl.ok(streams=[door, yard])) == [
        "door         running    rtsp://door/stream",
        "yard         ended      yard.mp4: end of yard.mp4",
    ]
    assert ctl.format_reply("list", ctl.ok(streams=[])) == ["no streams"]
    status = {
        "pid": 12,
        "host": "box",
        "state": "starting",
        "model": "x3d_xs",
        "engine": None,
        "max_batch": None,
        "publish": "tcp://127.0.0.1:5555",
        "control": "tcp://127.0.0.1:5554",
        "processes": {"main": 12, "inference": 13, "capture-video:door": 14},
        "streams": [door],
    }
    assert ctl.format_reply("status", ctl.ok(**status)) == [
        "stream.run pid 12 on box: starting, model x3d_xs, the engine is loading",
        "publishing on tcp://127.0.0.1:5555, control on tcp://127.0.0.1:5554",
        "processes: main 12, inference 13, capture-video:door 14",
        "streams (1):",
        "  door         running    rtsp://door/stream",
    ]
    status.update(state="running", engine="torch-cpu", max_batch=8)
    assert ctl.format_reply("status", ctl.ok(**status))[0] == (
        "stream.run pid 12 on box: running, model x3d_xs, engine torch-cpu (batches of up to 8)"
    )


class _Serving:
    """A ControlServer answering every request with `ok(echo=request)` from a thread."""

    def __init__(self, **options):
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.server = ctl.ControlServer(self.endpoint, **options)
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._halt.wait(0.01):  # the polling rate, not a wait for anything
            for request in self.server.poll():
                self.server.reply(request, ctl.ok(echo=request.body))

    def close(self) -> None:
        self._halt.set()
        self._thread.join(10)
        self.server.close()


def test_the_control_socket_answers_and_refuses_a_port_in_use():
    serving = _Serving()
    try:
        with ctl.ControlClient(serving.endpoint) as client:
            assert client.call(ctl.request("list"), timeout=60) == ctl.ok(
                echo={"schema": ctl.SCHEMA, "op": "list"}
            )
        import zmq

        raw = zmq.Context.instance().socket(zmq.REQ)  # not stream.ctl: not JSON at all
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(serving.endpoint)
        raw.send(b"\xff")
        assert raw.poll(60_000)
        assert json.loads(raw.recv()) == ctl.refused("a control message is one frame of UTF-8 JSON")
        raw.close()
        with pytest.raises(
            UserError, match="cannot listen for stream.ctl on .*: the address is in"
        ):
            ctl.ControlServer(serving.endpoint)
    finally:
        serving.close()


def test_ctl_against_no_run_is_one_line():
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    err = _one_error(*ctl_command(endpoint, "list"))
    assert err == (
        f"error: no stream.run answers on {endpoint}: start one with --control {endpoint}, "
        "or pass the endpoint it uses with --control\n"
    )
    err = _one_error(*ctl_command(endpoint, "add", "x"))  # a bad flag: before any request
    assert "--camera" in err and "python -m stream.ctl add --help" in err


def test_ctl_with_curve_keys(tmp_path, capsys):
    """Only the clients whose public keys are in the run's folder are answered."""
    from stream.transport.keys import make_keys

    make_keys(tmp_path, ["ctl", "stranger"])
    (tmp_path / "clients" / "stranger.key").unlink()
    serving = _Serving(
        curve_secret_key=str(tmp_path / "server.key_secret"),
        curve_clients=str(tmp_path / "clients"),
    )
    try:
        base = ["--control", serving.endpoint, "--curve-server-key", str(tmp_path / "server.key")]
        code = ctl.main([*base, "--curve-secret-key", str(tmp_path / "ctl.key_secret"), "list"])
        assert code == 0 and capsys.readouterr().out == "no streams\n"
        code = ctl.main(
            [*base, "--curve-secret-key", str(tmp_path / "stranger.key_secret"), "--json", "list"]
        )
        err = capsys.readouterr().err
        assert code == 2 and "(or it does not accept this client's CURVE keys)" in err, err
        assert ctl.main(["--control", serving.endpoint, "list"]) == 2  # no keys: no answer
    finally:
        serving.close()


# -- a run with two cameras ----------------------------------------------------------------


def _predictions(run: StreamProcess, want: dict[str, int], timeout: float = 180.0) -> dict:
    """Predictions until each stream of `want` has that many; {stream: [bodies]} of every
    stream subscribed to (pred. of all). Fails if the run exits."""
    got: dict[str, list[dict]] = defaultdict(list)
    deadline = time.monotonic() + timeout
    with Subscriber(run.endpoint, topics=("pred.",)) as sub:
        while any(len(got[s]) < n for s, n in want.items()):
            assert time.monotonic() < deadline, f"predictions {dict(got)} in {timeout} s"
            assert run.proc.poll() is None, run.wait()[1]
            try:
                msg = sub.recv(timeout=1.0)
            except TimeoutError:
                continue
            got[msg.body["stream"]].append(msg.body)
    return got


def _status(run: StreamProcess) -> dict:
    code, out, err = ctl_command(run.control, "status", "--json")
    assert code == 0, err
    return json.loads(out)


def _states(status: dict) -> dict[str, str]:
    return {s["id"]: s["state"] for s in status["streams"]}


def _consecutive(bodies: list[dict]) -> bool:
    seqs = [b["seq"] for b in bodies]
    return seqs == list(range(seqs[0], seqs[0] + len(seqs)))


@pytest.fixture(scope="module")
def run(x3d_xs_compiled, video_file):
    """stream.run with a synthetic camera (cam0) and a looping video file (cam1). Its
    engine runs one window per call (--max-batch 1): the session's compiled x3d_xs is a
    one-camera run's, loaded instead of compiled again; batching has tests of its own
    (test_batching.py)."""
    stream = StreamProcess(
        "--camera", "synthetic", "--camera", str(video_file), "--loop", "--size", "160x120",
        "--max-batch", "1", *MODEL_ARGS,
    )  # fmt: skip
    try:
        stream.wait_for("running: publishing on")
        yield stream
    finally:
        stream.kill()


@pytest.mark.e2e
def test_two_cameras_one_inference_process(run, video_file):
    got = _predictions(run, {"cam0": 3, "cam1": 3})
    assert set(got) == {"cam0", "cam1"}
    assert all(_consecutive(bodies) for bodies in got.values())
    status = _status(run)
    assert status["state"] == "running" and status["model"] == "x3d_xs"
    assert status["pid"] == run.proc.pid
    processes = status["processes"]
    assert sorted(processes) == ["capture-video:cam0", "capture-video:cam1", "inference", "main"]
    assert _states(status) == {"cam0": "running", "cam1": "running"}
    assert set(descendants(run.proc.pid)) >= set(processes.values()) - {run.proc.pid}
    code, out, _ = ctl_command(run.control, "list")
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines] == [["cam0", "running"], ["cam1", "running"]]
    assert lines[1].endswith(str(video_file))


@pytest.mark.e2e
def test_a_stream_added_and_removed_while_running(run):
    before = _status(run)
    segments = segments_of(run.proc.pid)
    added: dict[str, list[dict]] = defaultdict(list)
    with Subscriber(run.endpoint, topics=("pred.",)) as sub:
        wait_until(lambda: sub.recv(timeout=60).body["stream"] == "cam0", "no cam0 prediction")
        code, out, err = ctl_command(
            run.control, "add", "cam2", "--camera", "synthetic", "--fps", "15"
        )
        assert (code, out) == (0, "added cam2: synthetic (running)\n"), err
        while len(added["cam2"]) < 3:  # the new stream's predictions; the others go on
            assert run.proc.poll() is None, run.wait()[1]
            msg = sub.recv(timeout=60)
            added[msg.body["stream"]].append(msg.body)
    # the others' seq went on without a gap while the stream came, and nothing restarted
    assert len(added["cam0"]) >= 1 and _consecutive(added["cam0"])
    assert _consecutive(added["cam2"]) and added["cam2"][0]["seq"] == 0
    during = _status(run)
    assert during["processes"]["inference"] == before["processes"]["inference"]
    assert _states(during) == {"cam0": "running", "cam1": "running", "cam2": "running"}
    capture = during["processes"]["capture-video:cam2"]
    rings = segments_of(run.proc.pid) - segments
    assert len(rings) == 1  # its frame ring (x3d_xs does not listen)

    code, out, err = ctl_command(run.control, "remove", "cam2")
    assert (code, out) == (0, "removed cam2\n"), err
    # answered once its process had stopped and its ring was unlinked
    assert not running({capture})
    assert not rings & segments_of(run.proc.pid)
    after = _status(run)
    assert after["processes"] == before["processes"]
    assert _states(after) == {"cam0": "running", "cam1": "running"}
    _predictions(run, {"cam0": 2, "cam1": 2})  # the others run on


@pytest.mark.e2e
def test_bad_requests_are_one_line_and_leave_the_streams_alone(run, tmp_path):
    before = _status(run)
    segments = segments_of(run.proc.pid)
    missing = tmp_path / "missing.mp4"
    cases = [
        (("add", "cam0", "--camera", "synthetic"), "error: stream cam0 exists (running): pick"),
        (("remove", "nope"), "error: no stream nope in this run (its streams: cam0, cam1)"),
        (("add", "cam9", "--camera", str(missing)), f"video file '{missing}' does not exist"),
        (("add", "bad id", "--camera", "synthetic"), "stream 'bad id'"),
        (("add", "cam9", "--camera", "synthetic", "--size", "12"), "--size '12'"),
    ]
    for args, line in cases:
        err = _one_error(*ctl_command(run.control, *args))
        assert line in err, (args, err)
    after = _status(run)
    assert after["processes"] == before["processes"]
    assert _states(after) == {"cam0": "running", "cam1": "running"}
    assert [s["restarts"] for s in after["streams"]] == [0, 0]
    assert segments_of(run.proc.pid) == segments
    _predictions(run, {"cam0": 2, "cam1": 2})


@pytest.mark.e2e
def test_a_file_stream_ends_alone(run, video_file):
    segments = segments_of(run.proc.pid)
    code, out, err = ctl_command(
        run.control, "add", "clip", "--camera", str(video_file), "--no-loop"
    )
    assert (code, out) == (0, "added clip: " + str(video_file) + " (running)\n"), err
    capture = _status(run)["processes"]["capture-video:clip"]
    rings = segments_of(run.proc.pid) - segments
    assert len(rings) == 1
    _predictions(run, {"clip": 1})
    run.wait_for(r"end of .*clip\.mp4 after \d+ frames: stream clip ends")
    run.wait_for(r"stream clip ended")
    wait_until(lambda: not running({capture}), "the ended stream's capture still runs", 30)
    assert not rings & segments_of(run.proc.pid)
    status = _status(run)
    assert _states(status) == {"cam0": "running", "cam1": "running", "clip": "ended"}
    assert sorted(status["processes"]) == [
        "capture-video:cam0",
        "capture-video:cam1",
        "inference",
        "main",
    ]
    _predictions(run, {"cam0": 2, "cam1": 2})  # the others run on
    code, out, _ = ctl_command(run.control, "remove", "clip")  # its line in the list goes
    assert (code, out) == (0, "removed clip\n")
    assert _states(_status(run)) == {"cam0": "running", "cam1": "running"}


@pytest.mark.e2e
def test_ctrl_c_leaves_nothing_behind(run):
    """Last: stops the module's run."""
    children = descendants(run.proc.pid)
    assert children and segments_of(run.proc.pid)
    code, err = run.stop(signal.SIGINT)
    assert code == 0, err
    assert "Traceback" not in err and "SIGINT: stopping" in err
    wait_until(lambda: not running(children), "processes outlived stream.run", timeout=30)
    assert not segments_of(run.proc.pid)


@pytest.mark.e2e
def test_a_control_port_in_use_is_one_line(tmp_path):
    serving = _Serving()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "stream.run", "--control", serving.endpoint, *MODEL_ARGS],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        serving.close()
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and lines == [
        f"error: cannot listen for stream.ctl on {serving.endpoint}: the address is in use "
        "(another stream.run?); pass a free one with --control tcp://127.0.0.1:PORT, or "
        "--control none"
    ], done.stderr
    assert "Traceback" not in done.stderr
