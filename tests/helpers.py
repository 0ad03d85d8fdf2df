"""What the tests import: paths, free ports, the processes and shared memory a run leaves,
waiting for a readiness signal, a command run to its end (leaving nothing behind) and its
one error line, a real process whose log lines a test waits for (`python -m stream.run`
and `python -m stream.web` among them), an in-process publisher, and the parity helpers
of the model tests. Fixtures live in conftest.py."""

from __future__ import annotations

import contextlib
import copy
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def held_port() -> Iterator[int]:
    """A port of 127.0.0.1 that a listening TCP socket holds (in use) while the block runs;
    it accepts connections (its backlog) and never answers."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


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


# -- the pipeline and the commands, run to their end -------------------------------------


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


def run_to_end(*args: str, command: str = "stream.run", cwd=REPO, timeout: float = 120):
    """Run `python -m COMMAND ARGS` to its end: (exit code, stderr), after checking that it
    left no process and no shared memory behind. stream.run gets a free --publish port and
    --control none unless `args` name them."""
    path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    if command == "stream.run":  # never the default ports, which another run may hold
        if "--publish" not in args:
            args = (*args, "--publish", f"tcp://127.0.0.1:{free_port()}")
        if "--control" not in args:
            args = (*args, "--control", "none")
    seen: set[int] = set()
    # stderr goes to a file: a pipe nobody reads while we watch could fill and stall it.
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", command, *args],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
            env=env,
        )
        try:

            def ended() -> bool:
                seen.update(descendants(proc.pid))  # the children it starts, while it runs
                return proc.poll() is not None

            wait_until(ended, f"python -m {command} to end", timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        err.seek(0)
        text = err.read()
    wait_until(lambda: not running(seen), f"the processes of python -m {command} to end")
    assert not segments_of(proc.pid), "shared memory left behind"
    return proc.returncode, text


def ctl_command(endpoint: str, *args: str, **keys: str) -> tuple[int, str, str]:
    """`python -m stream.ctl --control ENDPOINT ARGS` as a real process, `keys` its CURVE
    flags (curve_server_key="..." is --curve-server-key=...): (exit, out, err)."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in keys.items()]
    done = subprocess.run(
        [sys.executable, "-m", "stream.ctl", "--control", endpoint, *flags, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def ctl_output(endpoint: str, *args: str, **keys: str) -> str:
    """The stdout of a `ctl_command` that succeeds (exit 0)."""
    code, out, err = ctl_command(endpoint, *args, **keys)
    assert code == 0, err
    return out


def one_error_line(err: str) -> str:
    """The one `error: ` line of a command's stderr `err` (a user error), which has no
    traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


# -- a real process and its log lines -------------------------------------------------------


class ProcessLines:
    """A real process (`argv`, run in the repository, `env` added to the environment; stdout
    to /dev/null unless `stdout` says otherwise) whose stderr is read line by line as it
    comes (a thread), so that a test waits for a log line (`wait_for`) instead of sleeping,
    and a chatty process never fills the pipe. `timeout` is every wait's bound unless the
    call gives one: it only bounds a hang, a busy machine must never reach it."""

    timeout = 60.0
    #: What `stop` sends unless told: SIGINT, the Ctrl-C of a user.
    stop_signal = signal.SIGINT

    def __init__(self, argv: list[str], *, env: dict | None = None, stdout=subprocess.DEVNULL):
        self.argv = list(argv)
        # Failures name it: the module of `python -m MODULE`, else the program.
        self.name = self.argv[2] if self.argv[1:2] == ["-m"] else Path(self.argv[0]).name
        self.proc = subprocess.Popen(
            self.argv,
            cwd=REPO,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        #: The stderr lines read so far (by `wait_for`, and all of them by `wait`).
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _next(self, deadline: float) -> str | None:
        """The next stderr line, kept in `lines`; None at the end of stderr (which stays
        seen); raises queue.Empty at `deadline` (time.monotonic())."""
        line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        if line is None:
            self._queue.put(None)
        else:
            self.lines.append(line)
        return line

    @property
    def err(self) -> str:
        """The stderr read so far (all of it once the process has been waited for)."""
        return "".join(f"{line}\n" for line in self.lines)

    def wait_for(self, pattern: str, timeout: float | None = None) -> re.Match:
        """The match of the regular expression `pattern` in the first stderr line from now
        on that has one (the line is its `.string`); fails, with the stderr read, if the
        process ends first or no such line comes within `timeout` seconds."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._next(deadline)
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} in {timeout:g} s:\n{self.err}")
            if line is None:
                code = self.proc.wait(timeout)
                pytest.fail(f"{self.name} ended (exit {code}) before {pattern!r}:\n{self.err}")
            if m := re.search(pattern, line):
                return m

    def wait(self, timeout: float | None = None) -> tuple[int, str]:
        """Wait for the exit and the end of stderr; returns (exit code, all of stderr). A
        process that does not exit within `timeout` seconds is killed, and the test fails."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.name} did not exit within {timeout:g} s:\n{self.err}")
        try:
            while self._next(deadline) is not None:
                pass
        except queue.Empty:
            pytest.fail(
                f"{self.name} exited ({code}), but something it started still holds its "
                f"stderr:\n{self.err}"
            )
        return code, self.err

    def stop(self, sig: int | None = None, timeout: float | None = None) -> tuple[int, str]:
        """Send `sig` (`stop_signal` unless given) unless it has ended, and `wait`."""
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal if sig is None else sig)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(self.timeout)


class StreamProcess(ProcessLines):
    """`python -m stream.run ...` as a real process publishing on a free port of 127.0.0.1,
    with its control socket (`control`, for stream.ctl) on another unless `args` say
    `--control` (runs never collide on the default 5554). Its waits are bounded by 180 s:
    a run loads and warms up its model before it runs."""

    timeout = 180.0

    def __init__(self, *args: str, env: dict | None = None):
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        own = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--control"]
        self.control = own[-1] if own else f"tcp://127.0.0.1:{free_port()}"
        control = [] if own else ["--control", self.control]
        argv = [sys.executable, "-m", "stream.run", "--publish", self.endpoint, *control, *args]
        super().__init__(argv, env=env)


class WebProcess(ProcessLines):
    """`python -m stream.web ARGS` as a real process: a test waits for the line that says
    it listens (`wait_listening`). `stop` sends SIGTERM."""

    stop_signal = signal.SIGTERM

    def __init__(self, *args: str, stdout=subprocess.DEVNULL):
        super().__init__([sys.executable, "-m", "stream.web", *args], stdout=stdout)

    def wait_listening(self) -> str:
        """The page's URL, once the server says it listens."""
        return self.wait_for(r"web view on (http://\S+/)")[1]


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
