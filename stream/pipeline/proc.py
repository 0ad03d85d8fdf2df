"""Plumbing shared by the child processes of `stream.run`.

Children ignore SIGINT (blocked from their start, ignored from `init_child` on: the
parent coordinates the shutdown through a stop event, so Ctrl-C in a terminal, which
reaches the whole process group, does not kill a child in the middle of a write), and
they die with the parent: on Linux through PR_SET_PDEATHSIG, everywhere through
`parent_alive()` checks in their loops.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from multiprocessing import resource_tracker

_PR_SET_PDEATHSIG = 1
_parent_pid: int | None = None

LOG_FORMAT = "%(asctime)s %(processName)s %(levelname)s: %(message)s"


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=LOG_FORMAT,
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def init_child(log_level: str, parent_pid: int) -> None:
    """First thing every child process does."""
    global _parent_pid
    _parent_pid = parent_pid
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # see start_ignoring_sigint
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass
    setup_logging(log_level)
    if not parent_alive():  # the parent died before prctl took effect
        sys.exit(1)


def start_ignoring_sigint(proc) -> None:
    """`proc.start()` with SIGINT blocked in this thread meanwhile: the spawned child
    inherits the blocked signal across exec, so Ctrl-C in a terminal, which reaches the
    whole process group, cannot interrupt it while it starts (a KeyboardInterrupt
    traceback), and `init_child` ignores SIGINT before it unblocks it. The parent alone
    acts on Ctrl-C, and stops its children itself.

    The parent keeps its own handler throughout: a SIGINT that comes during the start
    waits until the end of the block (or is handled by another of its threads), where
    ignoring it here, for the child to inherit, lost it."""
    # Its first start unblocks SIGINT on its way (multiprocessing.resource_tracker).
    resource_tracker.ensure_running()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def parent_alive() -> bool:
    return _parent_pid is None or os.getppid() == _parent_pid
