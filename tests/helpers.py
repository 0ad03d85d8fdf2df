"""What the tests import: paths, free ports, the processes and shared memory a run leaves,
waiting for a readiness signal, `python -m stream.run` as a real process, an in-process
publisher, and the parity helpers of the model tests. Fixtures live in conftest.py."""

from __future__ import annotations

import copy
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: When the flash and the click happen in conftest's `av_clip`.
AV_CLIP_EVENT_S = 2.0


# -- waiting -----------------------------------------------------------------------------


def wait_until(ready: Callable[[], object], what: str, timeout: float = 60.0, every: float = 0.05):
    """Poll `ready` until it returns something true (returned); fail naming `what` after
    `timeout` seconds. The timeout is generous on purpose: it only bounds a hang, a busy
    machine must never reach it."""
    deadline = time.monotonic() + timeout
    while not (value := ready()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s")
        time.sleep(every)
    return value


# -- ports, processes, shared memory -----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shm_segments() -> set[str]:
    """This project's shared-memory segments currently in /dev/shm."""
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("avstream_")}
    except FileNotFoundError:
        return set()


def segments_of(pid: int) -> set[str]:
    """This project's /dev/shm segments that process `pid` made (a segment's name carries
    its creator's pid: stream/pipeline/ring.py), so that other runs on the machine do not count."""
    return {n for n in shm_segments() if n.split("_")[2] == str(pid)}


def descendants(pid: int) -> set[int]:
    """PIDs of all live descendants of `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return found


def running(pids: set[int]) -> set[int]:
    """The PIDs of `pids` that still run (zombies count as gone)."""
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


# -- the pipeline as a real process --------------------------------------------------------


def auto_cpu_precision() -> str:
    """The precision `--precision auto` picks for the CPU on this machine: bf16 on a CPU
    with AMX or AVX512-BF16, else fp32 (engines.precision.pick)."""
    from engines import precision

    return precision.pick("cpu")[0]


def expected_cpu_engine_name() -> str:
    """The CPU engine a pipeline runs under the default `--precision auto` on this
    machine: `torch-cpu` (fp32) or `torch-cpu-bf16`. The `x3d_xs_compiled` fixture holds
    x3d_xs to it (its bf16 check must keep bf16 where bf16 is picked)."""
    chosen = auto_cpu_precision()
    return "torch-cpu" if chosen == "fp32" else f"torch-cpu-{chosen}"


class StreamProcess:
    """`python -m stream.run ...` as a real process publishing on a free port of 127.0.0.1,
    with its control socket (`control`, for stream.ctl) on another unless `args` say
    `--control` (runs never collide on the default 5554).

    Its stderr is read line by line as it comes (a thread), so that a test can wait for a
    log line (`wait_for`) instead of sleeping, and a chatty run never fills the pipe."""

    def __init__(self, *args: str, env: dict | None = None):
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        own = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--control"]
        self.control = own[-1] if own else f"tcp://127.0.0.1:{free_port()}"
        control = [] if own else ["--control", self.control]
        argv = [sys.executable, "-m", "stream.run", "--publish", self.endpoint, *control, *args]
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    @property
    def err(self) -> str:
        """The stderr read so far (all of it once the process has been waited for)."""
        return "".join(f"{line}\n" for line in self.lines)

    def wait_for(self, pattern: str, timeout: float = 180.0) -> str:
        """The first stderr line from now on that matches the regular expression `pattern`;
        fails if the run ends first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} in {timeout:g} s:\n{self.err}")
            if line is None:
                self._queue.put(None)  # the end stays seen
                code = self.proc.wait()
                pytest.fail(f"stream.run ended (exit {code}) before {pattern!r}:\n{self.err}")
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def wait(self, timeout: float = 120.0) -> tuple[int, str]:
        """Wait for the exit; returns (exit code, all of stderr)."""
        deadline = time.monotonic() + timeout
        code = self.proc.wait(timeout)
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(
                    f"stream.run exited ({code}), but something it started still "
                    f"holds its stderr:\n{self.err}"
                )
            if line is None:
                break
            self.lines.append(line)
        self._queue.put(None)  # the end stays seen
        return code, self.err

    def stop(self, sig=signal.SIGINT, timeout: float = 60.0) -> tuple[int, str]:
        """Send `sig` and wait; returns (exit code, stderr). How fast it stops is the
        benchmark's to measure: `timeout` only bounds a hang."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# -- an in-process publisher ----------------------------------------------------------------


class Sending:
    """A stand-in for stream.run: a real Publisher in this process that sends `bodies`
    (each in turn, round and round, `seq` counting up) every 20 ms on `topic` until closed."""

    def __init__(self, bodies: list[dict], *, topic: str = "pred.cam0", **publisher_options):
        import zmq

        from stream.transport.publish import Publisher

        # ZeroMQ picks the port (one from free_port() can be taken before the bind), in a
        # context of its own: a ZAP handler (CURVE authentication) binds one inproc address
        # per context, which the last Sending's may not have released yet.
        self._context = zmq.Context()
        self.publisher = Publisher("tcp://127.0.0.1:*", context=self._context, **publisher_options)
        self.endpoint = self.publisher._socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.bodies = bodies
        self.topic = topic
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._send, daemon=True)
        self._thread.start()

    def _send(self) -> None:
        seq = 0
        while not self._halt.wait(0.02):  # the send rate, not a wait for anything
            body = copy.deepcopy(self.bodies[seq % len(self.bodies)])
            body["seq"] = seq
            self.publisher.send(self.topic, body)
            seq += 1

    def close(self) -> None:
        self._halt.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()
        self.publisher.close()
        self._context.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- model parity ------------------------------------------------------------------------


def perturb_batchnorm(module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine terms, so a mis-mapped key shows in a
    parity test (random init leaves them at 0/1, where many mistakes cancel)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.1, 0.1, generator=g)


def reference_x3d(name: str):
    """pytorchvideo 0.1.5's X3D for the variant (logits out, BatchNorm perturbed): the
    parity reference of the model tests and of benchmarks/cpu_engine.py."""
    import torch
    from pytorchvideo.models.x3d import create_x3d

    from models import x3d

    cfg = x3d._config(name)
    torch.manual_seed(0)
    ref = create_x3d(
        input_clip_length=cfg.frames,
        input_crop_size=cfg.train_crop,
        depth_factor=cfg.depth_factor,
        head_activation=None,
    )
    perturb_batchnorm(ref)
    return ref.eval()


def rel_err(a, b) -> float:
    """Relative error of `a` against the reference `b` (Frobenius norms)."""
    return float((a - b).detach().norm() / b.detach().norm())
