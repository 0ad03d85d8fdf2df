"""Progress bars (tqdm) appear on a terminal: `python -m stream.record` with its stderr on
a pseudo-terminal. Off a terminal (a pipe, a log) the commands draw none: test_record,
test_train and test_bench read their stderr through pipes and check that."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import time

from helpers import REPO


def _run_on_a_terminal(args: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run `python ARGS` with stderr on an 80-column pseudo-terminal; (exit code, what
    the terminal received)."""
    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=side,
    )  # fmt: skip
    os.close(side)
    received = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert time.monotonic() < deadline, received.decode(errors="replace")
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: every holder of the terminal's other side has closed it
                break
            if not chunk:
                break
            received += chunk
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, received.decode(errors="replace")


def test_record_draws_a_bar_on_a_terminal(tmp_path):
    out = tmp_path / "data"
    code, text = _run_on_a_terminal([
        "-m", "stream.record", "--camera", "synthetic", "--size", "160x120", "--mic", "none",
        "--label", "tick", "--seconds", "1", "--count", "1", "--countdown", "0", "--out", str(out),
        "--log-level", "warning",
    ])  # fmt: skip
    assert code == 0, text
    (clip,) = (out / "tick").iterdir()
    # the bar, redrawn in place: the clip's seconds, then the note while it is written
    assert "\rclip 1/1 " in text and "0/1.0 s\r" in text and "1.0/1.0 s, saving...\r" in text
    last = text.replace("\r\n", "\n").rstrip("\n").rsplit("\n", 1)[-1]  # what stays on screen
    assert last.rsplit("\r", 1)[-1].startswith("clip 1/1  ") and last.endswith(f" frames -> {clip}")
