"""What a user installs: the wheel's contents, and the light install (`pip install avstream`,
pyzmq alone) that a subscriber in another project gets.

The wheel is built from a copy of this checkout the way pip builds it for a user (an
isolated build environment), installed into a fresh venv without system site packages,
and everything in that venv runs from a temporary folder, so nothing can come from the
checkout or from the test environment's packages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from helpers import REPO, free_port, segments_of, wait_until
from stream.transport import wire
from stream.transport.publish import Publisher

pytestmark = pytest.mark.slow  # a wheel built in an isolated environment, a fresh venv

PACKAGE_ROOTS = ("stream", "engines", "models", "configs")
ENTRY_MODULES = ("run", "record", "train", "bench")


def _clean_env() -> dict[str, str]:
    # The venv's python must not be pointed back at the checkout or the test venv.
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".venv",
            ".git",
            "__pycache__",
            "*.egg-info",
            "build",
            "dist",
            ".pytest_cache",
            ".hypothesis",
            ".ruff_cache",
            ".whl",
            ".gl",
        ),
    )
    out = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        cwd=work,
        env=_clean_env(),
        check=True,
        timeout=240,
    )
    (built,) = out.glob("avstream-*.whl")
    return built


@pytest.fixture(scope="module")
def light_python(wheel, tmp_path_factory) -> Path:
    """The python of a fresh venv holding `pip install <wheel>`: base dependencies only."""
    venv = tmp_path_factory.mktemp("light") / "venv"
    env = _clean_env()
    python = venv / "bin" / "python"
    # pip 22.3 and later installs into another interpreter (--python): the venv then needs
    # no pip of its own, whose bootstrap takes seconds. Older ones (Ubuntu 22.04's venvs
    # have 22.0) bootstrap it. pip's version from its metadata, not `import pip`: importing
    # pip turns setuptools' distutils shim off for the rest of the process, and a later
    # AOTInductor compile in the same test worker then fails on the stdlib's distutils.
    from importlib.metadata import version

    if tuple(int(part) for part in version("pip").split(".")[:2]) >= (22, 3):
        venv_args, pip_cmd = ["--without-pip"], [sys.executable, "-m", "pip", "--python", python]
    else:
        venv_args, pip_cmd = [], [python, "-m", "pip"]
    subprocess.run(
        [sys.executable, "-m", "venv", *venv_args, str(venv)], env=env, check=True, timeout=120
    )
    subprocess.run(
        [*map(str, pip_cmd), "install", "-q", str(wheel)],
        cwd=venv.parent,
        env=env,
        check=True,
        timeout=240,
    )
    return python


def _run_light(
    python: Path, cwd: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), *args],
        check=False,  # the callers check the status
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_wheel_holds_every_package_and_its_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for root in PACKAGE_ROOTS:
        for init in (REPO / root).rglob("__init__.py"):
            package = init.parent
            if "__pycache__" in package.parts:
                continue
            for module in package.glob("*.py"):
                expected.add(module.relative_to(REPO).as_posix())
    expected.add("models/labels/kinetics400.txt")
    expected |= {p.relative_to(REPO).as_posix() for p in (REPO / "configs").glob("*.yaml")}
    assets = {p.relative_to(REPO).as_posix() for p in (REPO / "stream/web/assets").iterdir()}
    assert "stream/web/assets/index.html" in assets  # the browser view's page
    expected |= assets
    assert "stream/capture/__init__.py" in expected  # the subpackage the wheel once left out
    assert sorted(expected - names) == []
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == set(PACKAGE_ROOTS)  # no tests/ or benchmarks/ installed as packages


def test_light_install_imports_the_wire_side_without_the_pipeline(light_python, tmp_path):
    no_torch = _run_light(light_python, tmp_path, "-c", "import torch")
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    probe = (
        "import sys, stream, stream.errors, stream.transport.wire, stream.subscribe, stream.keys\n"
        "from stream.transport.publish import Publisher, load_curve_keys\n"
        "print(stream.__file__)\n"
        "print(sorted(m for m in ('numpy', 'torch', 'yaml', 'cv2', 'numba') if m in sys.modules))\n"
    )
    done = _run_light(light_python, tmp_path, "-c", probe)
    assert done.returncode == 0, done.stderr
    where, heavy = done.stdout.splitlines()
    assert Path(where).is_relative_to(
        light_python.parent.parent
    )  # the wheel's copy, not the checkout
    assert heavy == "[]"
    # The console scripts come with the light install; CURVE keys need pyzmq alone.
    keys = _run_light(
        light_python, tmp_path, str(light_python.parent / "avstream-keys"), str(tmp_path / "keys")
    )
    assert keys.returncode == 0, keys.stderr
    assert (tmp_path / "keys" / "server.key_secret").is_file()


def test_mqtt_bridge_without_its_extra_says_what_to_install(light_python, tmp_path):
    # The module imports without paho (and without the pipeline); the command says what to add.
    probe = (
        "import sys, stream.transport.mqtt\n"
        "print(sorted(m for m in ('paho', 'numpy', 'torch', 'yaml') if m in sys.modules))\n"
    )
    done = _run_light(light_python, tmp_path, "-c", probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    bridge = _run_light(light_python, tmp_path, str(light_python.parent / "avstream-mqtt"))
    assert bridge.returncode == 2
    assert bridge.stderr.splitlines() == [
        "error: python -m stream.mqtt needs paho-mqtt: pip install 'avstream[mqtt]'"
    ]


def test_web_view_without_its_extra_says_what_to_install(light_python, tmp_path):
    # Light: a token is made without aiohttp; the server says what to add.
    token = _run_light(
        light_python,
        tmp_path,
        str(light_python.parent / "avstream-web"),
        "--make-token",
        str(tmp_path / "web.token"),
    )
    assert token.returncode == 0, token.stderr
    assert len((tmp_path / "web.token").read_text().strip()) >= 40
    view = _run_light(
        light_python,
        tmp_path,
        str(light_python.parent / "avstream-web"),
        "--connect",
        "tcp://127.0.0.1:5555",
    )
    assert view.returncode == 2
    assert view.stderr.splitlines() == [
        "error: python -m stream.web needs aiohttp: pip install 'avstream[web]'"
    ]


@pytest.mark.parametrize("command", ENTRY_MODULES)
def test_pipeline_commands_without_the_run_extra_say_what_to_install(
    light_python, tmp_path, command
):
    proc = subprocess.Popen(
        [str(light_python), "-m", f"stream.{command}", "--camera", "synthetic"],
        cwd=tmp_path,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = proc.communicate(timeout=60)
    missing = (
        "torch, numpy, cv2, sounddevice, yaml, av, soxr, psutil, numba, einops, tqdm, "
        "prometheus_client, aiohttp"
    )
    assert proc.returncode == 2
    expected = (
        f"error: python -m stream.{command} needs the pipeline's packages (missing: {missing}): "
        "pip install 'avstream[run]'"
    )
    assert stderr.splitlines() == [expected]
    assert stdout == ""
    assert not segments_of(proc.pid)


LIGHT_SUBSCRIBER = """
import json, sys
from stream.transport.subscribe import Subscriber

with Subscriber(sys.argv[1], topics=("status.",)) as sub:
    for _ in range(3):
        try:
            msg = sub.recv(timeout=120)
        except TimeoutError as exc:
            sys.exit(f"{exc} ({sub.invalid} refused as invalid)")
        print(json.dumps({"topic": msg.topic, "body": msg.body}), flush=True)
"""


def test_light_subscriber_receives_from_a_publisher(light_python, tmp_path):
    script = tmp_path / "light_subscriber.py"
    script.write_text(LIGHT_SUBSCRIBER)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    publisher = Publisher(endpoint)
    sub = subprocess.Popen(
        [str(light_python), str(script), endpoint],
        cwd=tmp_path,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # A SUB socket misses what is sent before its subscription has reached the
        # publisher (ZeroMQ's slow joiner): the XPUB counts it; then three are enough.
        wait_until(
            lambda: sub.poll() is not None or publisher.count_subscriptions() >= 1,
            "the light subscriber did not subscribe",
            timeout=180,
        )
        for seq in range(3):
            # Every field a running stream's heartbeat has, so the body stays valid.
            body = wire.status(
                seq=seq,
                stream="light",
                model="x3d_xs",
                engine="cpu-inductor",
                state="running",
                mono_ns=time.monotonic_ns(),
                wall_ns=time.time_ns(),
                fps_in=30.0,
                windows_run=seq,
                windows_skipped=0,
                windows_stale=0,
                video={},
                audio={},
                sent=publisher.sent,
                dropped=publisher.dropped,
                subscriptions=1,
                processes={"inference": os.getpid()},
                events=[],
            )
            publisher.send(wire.topic(wire.STATUS_TOPIC, "light"), body)
        out, err = sub.communicate(timeout=120)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait(timeout=30)
        publisher.close()
    assert sub.returncode == 0, err
    received = [json.loads(line) for line in out.splitlines()]
    assert len(received) == 3
    assert [m["body"]["seq"] for m in received] == [0, 1, 2]
    assert all(
        m["topic"] == "status.light" and m["body"]["schema"] == wire.STATUS_SCHEMA for m in received
    )
