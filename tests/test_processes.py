"""The process group that stream.run and stream.record supervise their children with
(stream/pipeline/processes.py): real spawned processes and pipes."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import time

import pytest

from stream import control
from stream.pipeline.proc import start_ignoring_sigint
from stream.pipeline.processes import RESTART_BACKOFF_S, ProcessGroup, StopSignals


def _child(mode: str, conn, stop) -> None:
    if mode == "exit3":
        sys.exit(3)
    if mode == "asks_stop":  # as the inference process does when its preview is closed
        stop.set()
    if mode == "stubborn":  # never looks at the stop event
        conn.send(control.EngineReady("stubborn", 0.0, 1))
        while True:
            time.sleep(0.05)
    conn.send(control.EngineReady(mode, 0.0, 1))  # "echo": answers until stopped
    while not stop.is_set():
        if conn.poll(0.05):
            conn.send(conn.recv())


def _next(group: ProcessGroup, timeout: float = 60.0) -> tuple[str, control.Message]:
    deadline = time.monotonic() + timeout
    while (got := group.receive(0.1)) is None:
        assert time.monotonic() < deadline, "no message from the group"
    return got


@pytest.fixture
def group():
    g = ProcessGroup()
    yield g
    g.stop_all(0.2, warn=False)


def test_messages_from_any_child_and_a_silent_exit_is_died(group):
    group.start("a", _child, ("echo",))
    group.start("b", _child, ("exit3",))
    got: dict[str, control.Message] = {}
    while len(got) < 2:  # "b"'s exit is reported until it is collected, maybe before "a" speaks
        name, message = _next(group)
        got.setdefault(name, message)
        if name == "b":
            group.forget("b")  # as its owner does
    assert got == {"a": control.EngineReady("echo", 0.0, 1), "b": control.Died(3)}
    group.send("a", control.WriteRing("ring", 7))
    assert _next(group) == ("a", control.WriteRing("ring", 7))


def test_children_ignore_ctrl_c(group):
    """Ctrl-C reaches the whole process group in a terminal; the parent acts on it."""
    group.start("a", _child, ("echo",))
    os.kill(group.pid("a"), signal.SIGINT)  # while it starts
    assert _next(group) == ("a", control.EngineReady("echo", 0.0, 1))
    os.kill(group.pid("a"), signal.SIGINT)  # while it runs
    group.send("a", control.Died(0))
    assert _next(group) == ("a", control.Died(0))  # echoed: still running


def test_a_child_that_goes_down_restarts_with_backoff(group):
    first, last = RESTART_BACKOFF_S
    group.start("a", _child, ("echo",))
    assert _next(group)[0] == "a"
    pid = group.pid("a")
    assert group.down("a") == first
    assert "a" not in group and group.restarts["a"] == 1
    deadline = time.monotonic() + 60
    while not (restarted := group.restart_due()):
        assert time.monotonic() < deadline, "not restarted"
        time.sleep(0.02)
    assert restarted == ["a"] and "a" in group and group.pid("a") != pid
    assert _next(group)[0] == "a"
    # down again soon after its start: the delay doubles, up to the last one
    assert group.down("a") == 2 * first
    assert group.restart_due() == []  # not due yet
    assert group.restarts["a"] == 2 and 2 * first <= last


def test_stop_all_waits_for_the_grace_then_terminates(group, caplog):
    group.start("polite", _child, ("echo",))
    group.start("stubborn", _child, ("stubborn",))
    assert {_next(group)[0] for _ in range(2)} == {"polite", "stubborn"}
    procs = dict(group._procs)
    with caplog.at_level(logging.WARNING, logger="stream.processes"):
        group.stop_all(0.5, warn=True)
    assert procs["polite"].exitcode == 0
    assert procs["stubborn"].exitcode == -signal.SIGTERM
    assert [r.getMessage() for r in caplog.records] == [
        "stubborn did not stop in 0.5 s: terminating it"
    ]
    assert group.pids() == {}


def test_stop_one_stops_that_child_alone(group):
    """A stream removed from a running stream.run: its processes stop, the others run on."""
    group.start("a", _child, ("echo",))
    group.start("b", _child, ("echo",))
    assert {_next(group)[0] for _ in range(2)} == {"a", "b"}
    a = group._procs["a"]
    group.stop_one("a", 60.0)
    assert a.exitcode == 0  # it saw its own stop event: not terminated
    assert "a" not in group and "b" in group and not group.stop_requested("b")
    group.send("b", control.WriteRing("ring", 7))
    assert _next(group) == ("b", control.WriteRing("ring", 7))
    # one waiting for its restart is not started again, and its count is forgotten
    group.down("b")
    group.stop_one("b", 1.0)
    assert "b" not in group.restarts
    group.stop_one("b", 1.0)  # again, or a name never started: nothing to do
    assert group.pids() == {}


def test_a_child_can_ask_for_the_stop(group):
    group.start("quiet", _child, ("echo",))
    group.start("preview", _child, ("asks_stop",))
    first: dict[str, control.Message] = {}
    while len(first) < 2:
        name, message = _next(group)
        if name in first:  # "preview" exited before "quiet" spoke: collect it, as owners do
            assert (name, message) == ("preview", control.Died(0))
            group.forget(name)
            continue
        first[name] = message
        if name == "preview":  # it set its own stop event before it spoke
            assert group.stop_requested("preview")
    assert first == {
        "quiet": control.EngineReady("echo", 0.0, 1),
        "preview": control.EngineReady("asks_stop", 0.0, 1),
    }
    assert not group.stop_requested("quiet")


def test_stop_signals_are_noted_and_handlers_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        assert signals.received is None
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while signals.received is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert signals.received == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


class _InterruptedStart(mp.get_context("spawn").Process):
    """A real process start during which Ctrl-C reaches the parent."""

    def start(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        super().start()


def test_ctrl_c_while_a_child_starts_reaches_the_parent():
    """The child is shielded from it while it starts, but the parent does not lose it (a
    Ctrl-C that came while a child started was ignored, and the run went on)."""
    proc = _InterruptedStart(target=_child, args=("exit3", None, None))
    with StopSignals() as signals:
        start_ignoring_sigint(proc)
        deadline = time.monotonic() + 10
        while signals.received is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert signals.received == "SIGINT"
    proc.join(60)
    assert proc.exitcode == 3
