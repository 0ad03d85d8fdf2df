"""The memory allocator of the process an engine runs in: which one it starts with
(`--malloc`), and how glibc's is tuned when it is glibc's.

A CPU engine allocates its intermediate tensors, and oneDNN its scratchpads and memory
descriptors, afresh on every window: thousands of allocations per X3D window. Two things
make that cheaper, both measured in docs/performance.md ("Kept: tcmalloc for the
inference process", "Kept: freed memory stays mapped"):

- tcmalloc, which keeps freed blocks in per-thread caches, serves them faster than glibc's
  malloc. The dynamic linker picks the allocator when a process starts (LD_PRELOAD), so a
  running process cannot switch: `stream.run` sets it for the inference process it spawns
  (`preloaded`). `auto` uses tcmalloc where it is installed (Debian/Ubuntu:
  `apt-get install libtcmalloc-minimal4`), `glibc` keeps the C library's. A script of your
  own that calls `engines.create` gets the same by starting as
  `LD_PRELOAD=libtcmalloc_minimal.so.4 python script.py`.
- Under glibc, every CPU engine keeps freed memory mapped in its process
  (`keep_freed_memory`), instead of unmapping large blocks and faulting them in again on
  the next window.

Nothing here imports torch: the parent process of `stream.run` checks `--malloc` with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
from collections.abc import Iterator
from pathlib import Path

#: What `--malloc` takes, besides the path of an allocator's shared library.
CHOICES = ("auto", "tcmalloc", "glibc")

_TCMALLOC = ("tcmalloc_minimal", "tcmalloc")  # for ctypes.util.find_library
_INSTALL = "apt-get install libtcmalloc-minimal4 (Debian/Ubuntu)"
# tcmalloc prints a line for each allocation above 1 GiB by default (a big model's
# weights); a report nobody asked for.
_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}


@functools.cache
def find_tcmalloc() -> str | None:
    """The soname of an installed tcmalloc ('libtcmalloc_minimal.so.4'), or None.
    The dynamic linker finds a soname in LD_PRELOAD as it finds any library. Cached:
    find_library runs `ldconfig -p`, and a start asks more than once (the config's
    check, then the spawn)."""
    for name in _TCMALLOC:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def _is_allocator(entry: str) -> bool:
    return "malloc" in Path(entry).name


def resolve(choice: str) -> str | None:
    """The LD_PRELOAD entry for `choice` (None: the C library's malloc). Raises
    ValueError, with what to do, for a choice that cannot be had on this machine."""
    if choice == "glibc":
        return None
    if choice in ("auto", "tcmalloc"):
        found = find_tcmalloc()
        if found is None and choice == "tcmalloc":
            raise ValueError(f"tcmalloc is not installed: {_INSTALL}, or use auto or glibc")
        return found
    try:
        path = Path(choice).expanduser()
    except RuntimeError:  # ~name of a user this machine does not know: no such file either
        path = Path(choice)
    if not path.is_file():
        raise ValueError(
            f"no such file: give {', '.join(CHOICES)}, or the path of an allocator's shared "
            "library (e.g. /usr/lib/x86_64-linux-gnu/libjemalloc.so.2)"
        )
    return str(path.resolve())


def child_preload(choice: str, inherited: str | None) -> str | None:
    """LD_PRELOAD for a child process, given this process's (`inherited`). An allocator
    the user preloaded already stays with `auto`; an explicit choice replaces it."""
    entries = (inherited or "").replace(":", " ").split()
    if choice == "auto" and any(_is_allocator(e) for e in entries):
        return inherited
    mine = resolve(choice)
    rest = [e for e in entries if not _is_allocator(e)]
    joined = " ".join(([mine] if mine else []) + rest)
    return joined or None


@contextlib.contextmanager
def preloaded(choice: str) -> Iterator[None]:
    """Processes started inside (multiprocessing's spawn, subprocess) run with the
    allocator of `choice`; os.environ is as before afterwards."""
    keys = ("LD_PRELOAD", *_QUIET)
    saved = {k: os.environ.get(k) for k in keys}
    preload = child_preload(choice, saved["LD_PRELOAD"])
    try:
        if preload:
            os.environ["LD_PRELOAD"] = preload
            for k, v in _QUIET.items():
                os.environ.setdefault(k, v)
        else:
            os.environ.pop("LD_PRELOAD", None)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def active(pid: int | str = "self") -> str:
    """The allocator a process runs with: 'tcmalloc', 'jemalloc', 'mimalloc', or 'glibc'
    (none of those mapped; on Linux, from /proc/PID/maps; elsewhere 'unknown')."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "unknown"
    for name in ("tcmalloc", "jemalloc", "mimalloc"):
        if f"lib{name}" in maps:
            return name
    return "glibc"


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory in the process instead of handing it back.

    A CPU model allocates its intermediate tensors afresh on every call. By default glibc
    serves the large ones with mmap and unmaps them when freed (or trims the heap), so the
    next call faults every page in again (thousands of page faults per X3D-XS window).
    Raising the mmap and trim thresholds keeps those pages mapped; the process holds on to
    its peak memory, which it needs again on the next window anyway. Process-wide, set once
    per process (cached); False where the C library is not glibc. Under a preloaded
    allocator (tcmalloc) this tunes the unused glibc malloc: harmless."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS, Windows: nothing to tune
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 1 << 30) and mallopt(m_trim_threshold, 2**31 - 1))
