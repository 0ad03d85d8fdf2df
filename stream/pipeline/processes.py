"""The child processes of one command, each with a pipe to this process: what
`python -m stream.run` (stream/pipeline/supervisor.py) and `python -m stream.record`
(stream/train/record.py) supervise.

A `ProcessGroup` starts children (spawned, so no torch state is forked, with SIGINT
ignored: the parent acts on Ctrl-C and stops them itself), gives each one pipe and the
group's stop event, receives the next message from any of them (a child that exits
without a word is reported as `control.Died`), restarts one with backoff, and stops them
all: the stop event first, a grace period, then terminate, then kill. The messages are
those of stream/control.py.
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
    """Children by name; each gets `(*args, conn, stop)`: its end of a pipe and the
    group's stop event."""

    def __init__(self):
        self.ctx = mp.get_context("spawn")
        self.stop = self.ctx.Event()
        #: Restarts so far, per name.
        self.restarts: dict[str, int] = {}
        self._procs: dict[str, mp.process.BaseProcess] = {}
        self._conns: dict[str, mp.connection.Connection] = {}
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
        proc = self.ctx.Process(target=target, args=(*args, child_end, self.stop), name=name)
        start_ignoring_sigint(proc)
        child_end.close()
        self._procs[name] = proc
        self._conns[name] = parent_end
        self._specs[name] = (target, args)
        self._started_at[name] = time.monotonic()

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

    def down(self, name: str) -> float:
        """A child died or lost its source: end it if it has not, and start it again
        after the returned delay (doubling while it keeps failing soon after a start)."""
        proc = self._procs.pop(name)
        self._conns.pop(name).close()
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

    def stop_all(self, grace_s: float, *, warn: bool) -> None:
        """Set the stop event, give the children `grace_s` seconds to exit, then
        terminate (with a warning when `warn`) and kill what is left; close the pipes."""
        self.stop.set()
        deadline = time.monotonic() + grace_s
        for proc in self._procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self._procs.values():
            if proc.is_alive():
                if warn:
                    log.warning("%s did not stop in %.1f s: terminating it", proc.name, grace_s)
                proc.terminate()
                proc.join(0.3)
            if proc.is_alive():
                proc.kill()
                proc.join(0.3)
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        self._procs.clear()
