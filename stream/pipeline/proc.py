"""Plumbing shared by the child processes of `stream.run`.

Children ignore SIGINT (the parent coordinates the shutdown through a stop event, so
Ctrl-C in a terminal, which reaches the whole process group, does not kill a child in
the middle of a write), and they die with the parent: on Linux through
PR_SET_PDEATHSIG, everywhere through `parent_alive()` checks in their loops.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

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
    """`proc.start()` with SIGINT ignored meanwhile: a spawned child inherits the ignored
    SIGINT across exec, so Ctrl-C in a terminal, which reaches the whole process group,
    is acted on by the parent alone, which stops its children itself."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc.start()
    finally:
        signal.signal(signal.SIGINT, previous)


def parent_alive() -> bool:
    return _parent_pid is None or os.getppid() == _parent_pid
