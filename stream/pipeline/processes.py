"""The child processes of one command, each with a pipe to this process: what
`python -m stream.run` (stream/pipeline/supervisor.py) and `python -m stream.record`
(stream/train/record.py) supervise.

A `ProcessGroup` starts children (spawned, so no torch state is forked, with SIGINT
ignored: the parent acts on Ctrl-C and stops them itself), gives each one pipe and a
stop event of its own, receives the next message from any of them (a child that exits
without a word is reported as `control.Died`), restarts one with backoff, and stops one
(a stream removed from a running stream.run) or all of them: the stop event first, a
grace period, then terminate, then kill. The messages are those of stream/control.py.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection
import signal
import time
from typing import Self

from stream import control
from stream.pipeline.proc import start_ignoring_sigint

log = logging.getLogger("stream.processes")

#: How long children get to stop after the stop event before they are terminated (once
#: running; stream.run adds the time a window in progress may take).
STOP_GRACE_S = 1.5
#: The same for a child still starting (importing torch, loading weights): it has
#: nothing to save, so after a failed start-up it is terminated almost at once.
STARTING_GRACE_S = 0.2
#: How long a child whose pipe has closed may take to exit (its interpreter shuts down;
#: a loaded machine takes its time) before it is reported as Died(None).
EXIT_WAIT_S = 5.0
#: Restart delays of a child that died: doubling from the first to the last; back to
#: the first once it has run for RESTART_RESET_S.
RESTART_BACKOFF_S = (0.5, 10.0)
RESTART_RESET_S = 30.0


class StopSignals:
    """Within the block, Ctrl-C and SIGTERM are noted in `received` (the signal's name)
    instead of raising: the supervising loop sees it and stops in order."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def _on_signal(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def __enter__(self) -> Self:
        for s in (signal.SIGINT, signal.SIGTERM):
            self._previous[s] = signal.signal(s, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class ProcessGroup:
    """Children by name; each gets `(*args, conn, stop)`: its end of a pipe and its own
    stop event (set by the group to stop it, or by the child itself to ask the group's
    owner to stop everything: `stop_requested`)."""

    def __init__(self):
        self.ctx = mp.get_context("spawn")
        #: Restarts so far, per name.
        self.restarts: dict[str, int] = {}
        self._procs: dict[str, mp.process.BaseProcess] = {}
        self._conns: dict[str, mp.connection.Connection] = {}
        self._stops: dict[str, mp.synchronize.Event] = {}
        self._specs: dict[str, tuple] = {}  # name -> (target, args), to start it again
        self._started_at: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._restart_due: dict[str, float] = {}

    def __contains__(self, name: str) -> bool:
        """Whether the child runs (started, not forgotten or down)."""
        return name in self._procs

    def pid(self, name: str) -> int | None:
        proc = self._procs.get(name)
        return None if proc is None else proc.pid

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self._procs.items()}

    def start(self, name: str, target, args: tuple) -> None:
        """Start `target(*args, conn, stop)` in a process called `name`."""
        parent_end, child_end = self.ctx.Pipe()
        stop = self.ctx.Event()
        proc = self.ctx.Process(target=target, args=(*args, child_end, stop), name=name)
        start_ignoring_sigint(proc)
        child_end.close()
        self._procs[name] = proc
        self._conns[name] = parent_end
        self._stops[name] = stop
        self._specs[name] = (target, args)
        self._started_at[name] = time.monotonic()

    def stop_requested(self, name: str) -> bool:
        """Whether the running child `name` has set its own stop event (the inference
        process does when its preview window is closed: the run ends)."""
        return name in self._procs and self._stops[name].is_set()

    def send(self, name: str, message: control.Message) -> None:
        self._conns[name].send(message)

    def receive(self, timeout: float) -> tuple[str, control.Message] | None:
        """The next message from any child as (name, message), None after `timeout`
        seconds; a child that exited without a word gives Died(exit code)."""
        waitables = {c: n for n, c in self._conns.items()}
        waitables.update({p.sentinel: n for n, p in self._procs.items()})
        for ready in mp.connection.wait(list(waitables), timeout):
            name = waitables[ready]
            conn = self._conns[name]
            if ready is conn or conn.poll():
                try:
                    return name, control.receive(conn, f"the supervisor (from {name})")
                except (EOFError, OSError):
                    pass
            proc = self._procs[name]
            proc.join(EXIT_WAIT_S)
            return name, control.Died(proc.exitcode)
        return None

    def forget(self, name: str) -> None:
        """A child that finished on its own (it exits): collect it and close its pipe."""
        self._procs.pop(name).join(0.5)
        self._conns.pop(name).close()
        self._stops.pop(name)

    def down(self, name: str) -> float:
        """A child died or lost its source: end it if it has not, and start it again
        after the returned delay (doubling while it keeps failing soon after a start)."""
        proc = self._procs.pop(name)
        self._conns.pop(name).close()
        self._stops.pop(name)
        proc.join(0.5)
        if proc.is_alive():
            proc.terminate()
            proc.join(0.5)
        ran = time.monotonic() - self._started_at[name]
        first, last = RESTART_BACKOFF_S
        previous = self._backoff.get(name, first / 2)
        delay = first if ran >= RESTART_RESET_S else min(last, 2 * previous)
        self._backoff[name] = delay
        self.restarts[name] = self.restarts.get(name, 0) + 1
        self._restart_due[name] = time.monotonic() + delay
        return delay

    def restart_due(self) -> list[str]:
        """Start again the children whose delay has passed; their names."""
        now = time.monotonic()
        due = [name for name, at in self._restart_due.items() if now >= at]
        for name in due:
            del self._restart_due[name]
            self.start(name, *self._specs[name])
        return due

    def stop_one(self, name: str, grace_s: float) -> None:
        """Stop one child for good (its stream was removed): its stop event, `grace_s`
        seconds to exit, then terminate and kill; a restart it was waiting for is
        cancelled and its restart count forgotten (a stream added again under the same
        name starts afresh). A name the group does not know is a no-op."""
        for table in (self._specs, self._started_at, self._backoff, self._restart_due):
            table.pop(name, None)
        self.restarts.pop(name, None)
        if name in self._procs:
            self._stop([name], grace_s, warn=True)

    def stop_all(self, grace_s: float, *, warn: bool) -> None:
        """Set every child's stop event, give them `grace_s` seconds to exit, then
        terminate (with a warning when `warn`) and kill what is left; close the pipes.
        Children waiting for a restart are not started again."""
        self._restart_due.clear()
        self._stop(list(self._procs), grace_s, warn=warn)

    def _stop(self, names: list[str], grace_s: float, *, warn: bool) -> None:
        for name in names:
            self._stops[name].set()
        deadline = time.monotonic() + grace_s
        for name in names:
            self._procs[name].join(max(0.0, deadline - time.monotonic()))
        for name in names:
            proc = self._procs.pop(name)
            if proc.is_alive():
                if warn:
                    log.warning("%s did not stop in %.1f s: terminating it", proc.name, grace_s)
                proc.terminate()
                proc.join(0.3)
            if proc.is_alive():
                proc.kill()
                proc.join(0.3)
            self._conns.pop(name).close()
            del self._stops[name]
