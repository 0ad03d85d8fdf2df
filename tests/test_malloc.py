"""The allocator of an engine's process (engines/malloc.py): with `--malloc`, tcmalloc where
it is installed, glibc's malloc on request or where it is not, a library given by path; the
process that `stream.run` spawns really runs with it, and nothing else changes. Under glibc,
a CPU engine keeps freed memory mapped in its process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engines import malloc
from helpers import REPO, expected_cpu_engine_name

TCMALLOC = malloc.find_tcmalloc()
needs_tcmalloc = pytest.mark.skipif(
    TCMALLOC is None, reason="tcmalloc is not installed (libtcmalloc-minimal4)"
)


def _allocator_of_a_child() -> str:
    """What a Python process started now (as stream.run starts its inference) runs with."""
    code = "from engines import malloc; print(malloc.active())"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_this_process_runs_on_glibc():
    if "malloc" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("the tests themselves run with a preloaded allocator")
    assert malloc.active() == "glibc"
    assert malloc.active(pid=2**22 + 12345) == "unknown"  # no such process


@needs_tcmalloc
def test_children_started_inside_preloaded_run_on_tcmalloc(monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    with malloc.preloaded("auto"):
        assert _allocator_of_a_child() == "tcmalloc"
    assert "LD_PRELOAD" not in os.environ  # as before
    assert _allocator_of_a_child() == "glibc"


@needs_tcmalloc
def test_glibc_takes_an_inherited_allocator_out_and_keeps_the_rest(monkeypatch, tmp_path):
    other = tmp_path / "libother.so"  # not loaded: only the string is checked
    monkeypatch.setenv("LD_PRELOAD", f"{TCMALLOC}:{other}")
    assert malloc.child_preload("glibc", os.environ["LD_PRELOAD"]) == str(other)
    monkeypatch.setenv("LD_PRELOAD", TCMALLOC)
    with malloc.preloaded("glibc"):
        assert _allocator_of_a_child() == "glibc"
    assert os.environ["LD_PRELOAD"] == TCMALLOC  # restored


def test_auto_keeps_an_allocator_the_user_preloaded():
    assert malloc.child_preload("auto", "/opt/lib/libjemalloc.so.2") == "/opt/lib/libjemalloc.so.2"


def test_an_allocator_given_by_path(tmp_path):
    lib = tmp_path / "libmymalloc.so"
    lib.write_bytes(b"")
    assert (
        malloc.child_preload(str(lib), "/opt/lib/libjemalloc.so.2 /x/libfoo.so")
        == f"{lib} /x/libfoo.so"
    )
    with pytest.raises(ValueError, match="no such file"):
        malloc.resolve(str(tmp_path / "missing.so"))


def test_tcmalloc_asked_for_where_it_is_not_installed(monkeypatch):
    monkeypatch.setattr(malloc, "find_tcmalloc", lambda: None)
    assert malloc.resolve("auto") is None  # auto falls back to glibc
    with pytest.raises(ValueError, match="apt-get install libtcmalloc-minimal4"):
        malloc.resolve("tcmalloc")


@pytest.mark.parametrize("choice", ["auto", "glibc"])
def test_the_inference_process_runs_with_the_chosen_allocator(run_stream, choice):
    stream = run_stream(
        "--camera", "synthetic", "--size", "160x120", "--duration", "3", "--weights", "none",
        "--malloc", choice, "--log-level", "info",
    )  # fmt: skip
    code, err = stream.wait(timeout=90)
    assert code == 0, err
    expected = "tcmalloc" if choice == "auto" and TCMALLOC else "glibc"
    engine = f"engine {expected_cpu_engine_name()} (aot-compiled) on "
    [line] = [line for line in err.splitlines() if engine in line]
    assert f", malloc {expected}, " in f"{line}, ", line


_FAULTS_SCRIPT = """
import resource, sys, torch
import engines

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

if sys.argv[1] == "engine":  # eager: the engine sets it on any CPU start, compiled or not
    engines.create(
        torch.nn.Linear(4, 2), (torch.zeros(1, 4),), backend="torch", device="cpu",
        precision="fp32", compile=False,
    )
per_window = []
for _ in range(8):  # what a model does per window: large intermediates, allocated and freed
    f0 = faults()
    # 2 x 48 MB: above the 32 MB that glibc's own adaptive threshold can reach
    buffers = [torch.empty(12 << 20).fill_(1.0) for _ in range(2)]
    del buffers
    per_window.append(faults() - f0)
print(per_window[-1])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_cpu_engine_keeps_freed_memory_mapped(monkeypatch):
    """With a CPU engine in the process, a window's large buffers reuse pages already
    mapped instead of faulting in 24,000 fresh ones each time (`malloc.keep_freed_memory`)."""
    monkeypatch.delenv("LD_PRELOAD", raising=False)  # glibc's malloc, which is what is tuned

    def last_window_faults(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS_SCRIPT, mode],
            check=False, cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return int(out.stdout.split()[-1])

    # glibc's default: unmapped on free, faulted in again
    assert last_window_faults("plain") > 10000
    assert last_window_faults("engine") < 100
