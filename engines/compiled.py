"""Load or build, check, save, or fall back: how every compiled backend starts, written once
for AOTInductor on the CPU (engines/inductor.py), torch.compile and CUDA graphs on CUDA
(engines/cuda.py) and torch-tensorrt (engines/tensorrt.py).

    engine = compiled.start(backend, reference, fallback)

1. A backend that keeps its engines on disk (`Backend.path`: a file under
   `$AVSTREAM_CACHE/engines` named by its cache key) loads the file when there is one; a
   file that does not load is built again (one warning).
2. Else it builds, with log lines saying so while it runs (`cache.Progress`).
3. The engine runs the example inputs, and its output is compared with eager PyTorch at
   the same precision on the same device (`reference`): a relative error above
   `base.TOLERANCE` (or the tolerance asked for) is a failure. An engine that takes
   batches (`max_batch` > 1) runs batches of distinct windows too (`base.example_batch`),
   compared the same way: the largest batch, and every bucket of an engine built for a
   few batch sizes (`batch_sizes`), since each is a program of its own.
4. A build that passed is renamed into the cache with its key beside it (`<file>.json`).
   It was written to a temporary file (`models._files.write_atomically`) that is
   renamed only after the check, so no reader ever sees half an engine or one that
   disagrees. A cached file that failed is deleted, so that the next start builds afresh.
5. On any failure in 1-3 (a build that raises, an engine that does not run or disagrees),
   one warning names the reason and `fallback()` serves instead: the model still runs, and
   a failure shows at start-up, never in the middle of a stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from models._files import first_line, write_atomically

from .base import TOLERANCE, Engine, relative_error
from .cache import CacheKey, Progress, forget, remove_beside, write_meta

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Backend:
    """What one compiled backend does at each step of `start`, and the words its log lines
    use: "<name>: <verbs[0]> <model> <precision> <how>", "<name>: <model> <ready>"."""

    name: str  # the engine's name ("torch-cpu", "tensorrt-fp16"): every log line starts with it
    model: str  # the model's name
    precision: str
    # Builds the engine. Given, for a backend that keeps files, the temporary file that
    # becomes the cached one after the check (the build may write it, or leave it to `save`).
    build: Callable[[Path | None], Engine]
    verbs: tuple[str, str] = ("compiling", "compiled")
    how: str = ""  # how it builds, e.g. "ahead of time for this CPU"
    ready: str = "compiled"  # what it says when the engine passed: "<model> compiled"
    path: Path | None = None  # the cached file; None: this backend keeps no files
    key: CacheKey | None = None  # written beside the cached file
    load: Callable[[Path], Engine] | None = None  # the engine from the cached file
    save: Callable[[Engine, Path], None] | None = None  # None: `build` wrote the file
    max_batch: int = 1  # the engine takes 1 to this many windows a call

    @property
    def what(self) -> str:
        """`x3d_xs fp32`, or `x3d_xs fp32 for batches of 1 to 8`."""
        batches = f" for batches of 1 to {self.max_batch}" if self.max_batch > 1 else ""
        return f"{self.model} {self.precision}{batches}"


class _Failed(Exception):
    """Building or checking failed: the message is the reason the warning gives."""


class _NotSaved(Exception):
    """The engine passed its check but could not be written to the cache."""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}"


def start(
    backend: Backend,
    reference,
    fallback: Callable[[], Engine],
    tolerance: float | None = None,
) -> Engine:
    """The engine `backend` loads or builds, checked against `reference` (eager PyTorch at
    the same precision on the same device, with its `example_inputs`), or `fallback()`
    with one warning when that fails. `tolerance`: the largest relative error accepted
    (default `base.TOLERANCE` of the precision)."""
    tolerance = TOLERANCE[backend.precision] if tolerance is None else tolerance
    name, what, (doing, done) = backend.name, backend.what, backend.verbs
    path = backend.path

    engine: Engine | None = None
    if path is not None and path.exists():
        t0 = time.perf_counter()
        try:
            engine = backend.load(path)
        except Exception as exc:  # a stale or broken file: build it again
            log.debug("%s: load failure", name, exc_info=True)
            log.warning("%s: cannot load %s (%s): %s it again", name, path, _describe(exc), doing)
        else:
            took = time.perf_counter() - t0
            log.info("%s: loaded the compiled %s from %s in %.2f s", name, what, path, took)
    from_cache = engine is not None
    build_s = 0.0
    try:
        with contextlib.ExitStack() as stack:
            tmp = None
            if path is not None and not from_cache:
                try:
                    tmp = stack.enter_context(write_atomically(path))
                except OSError as exc:
                    raise _Failed(f"the engine cache cannot be written ({_describe(exc)})") from exc
            if engine is None:
                t0 = time.perf_counter()
                engine = _build(backend, tmp)
                build_s = time.perf_counter() - t0
                log.info("%s: %s %s in %.1f s", name, done, what, build_s)
            error = 0.0
            for size in (1, *checked_batches(engine)):
                inputs = reference.example_batch(size)
                on = "" if size == 1 else f" on a batch of {size}"
                with torch.inference_mode():
                    expected = reference(*inputs)
                    try:
                        actual = engine(*inputs)
                    except Exception as exc:
                        raise _Failed(
                            f"running the {done} {what}{on} failed ({_describe(exc)})"
                        ) from exc
                batch_error = relative_error(actual, expected)
                if not batch_error <= tolerance:
                    raise _Failed(
                        f"the {done} {what} disagrees with eager PyTorch{on} "
                        f"(relative error {batch_error:.3g} > {tolerance:g})"
                    )
                error = max(error, batch_error)
            if tmp is not None and backend.save is not None:
                try:
                    backend.save(engine, tmp)
                except Exception as exc:
                    raise _NotSaved(_describe(exc)) from exc
    except _Failed as exc:
        if from_cache:
            forget(path)  # it no longer agrees with eager PyTorch: the next start builds afresh
        served = fallback()
        log.warning("%s: %s: running %s (%s) instead", name, exc, served.name, served.mode)
        return served
    except (_NotSaved, OSError) as exc:  # OSError: the rename into the cache
        reason = exc if isinstance(exc, _NotSaved) else _describe(exc)
        log.warning(
            "%s: could not save %s to %s (%s): the next start %s it again",
            name,
            what,
            path,
            reason,
            doing,
        )
        saved = False
    else:
        saved = path is not None and not from_cache
    log.info("%s: %s %s (relative error %.2g)", name, backend.model, backend.ready, error)
    if saved:
        try:
            write_meta(path, backend.key, build_s)
        except OSError as exc:  # the key is for people; the engine is cached
            log.warning("%s: could not write %s (%s)", name, path.with_suffix(".json"), exc)
        log.info("%s: saved to %s; the next start loads it", name, path)
    return engine


def checked_batches(engine: Engine) -> list[int]:
    """The batch sizes above 1 that `start` checks `engine` at: none for an engine of one
    window; the largest for an engine that takes any batch size (one program); every
    bucket above 1 for an engine built for a few sizes (a program, or a CUDA graph, each)."""
    if engine.max_batch == 1:
        return []
    sizes = getattr(engine, "batch_sizes", None) or range(1, engine.max_batch + 1)
    if len(sizes) == engine.max_batch:
        return [engine.max_batch]
    return [size for size in sizes if size > 1]


def _build(backend: Backend, tmp: Path | None) -> Engine:
    """`backend.build(tmp)`, with a line before and progress lines while it runs."""
    name, what, (doing, _) = backend.name, backend.what, backend.verbs
    line = " ".join(part for part in (doing, what, backend.how) if part)
    if backend.path is not None:
        line += f" (once: the next start loads it from {backend.path.parent})"
    log.info("%s: %s", name, line)
    if backend.path is not None:
        remove_beside(backend.path)  # what was said about an engine that this build replaces
    try:
        with Progress(f"{name}: {what}", doing):
            return backend.build(tmp)
    except Exception as exc:
        log.debug("%s: build failure", name, exc_info=True)
        raise _Failed(f"{doing} {what} failed ({_describe(exc)})") from exc
