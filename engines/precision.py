"""`--precision auto`: the precision an engine runs at on this machine, and, for bf16 on
the CPU, the check that it keeps fp32's predictions.

    auto on CUDA                          fp16 (half precision on the tensor cores)
    auto on a CPU with AMX or AVX512-BF16 bf16, if its top-1 equals fp32's (else fp32, one warning)
    auto on any other CPU                 fp32 (bf16 would be emulated, slower than fp32)

The check runs when the bf16 engine is compiled; its verdict (bf16 kept, or fp32 instead)
is saved beside the compiled engine in the cache, and a start that loads the engine from
the cache reuses it. An engine that runs eager (`compile=False`, or a failed compile) has
nothing cached: it is checked on every start.

Both instruction sets compute bf16 in hardware through oneDNN; AMX's tile multiplies are
the faster. Whether bf16 pays on a CPU with AVX512-BF16 and no AMX was measured both ways
(docs/performance.md, "Kept: bf16 on CPUs with AVX512-BF16 and no AMX");
`--precision fp32` is the way out where it does not.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from models._files import write_atomically

from .base import Engine
from .cache import beside

log = logging.getLogger(__name__)

AUTO = "auto"

#: A window takes part in the bf16 check only when fp32's top-1 logit leads the
#: runner-up's by at least this much: the top class is then at least 1.5 times as likely
#: as the next. Closer calls are ties that bf16's rounding (8 significant bits) may break
#: either way without being wrong, and a randomly initialised 400-class model gives
#: little else; flipping one of those would throw bf16 away for nothing.
CLEAR_MARGIN = math.log(1.5)

#: How many of the model's example windows (`model.example_inputs(batch)`) are compared.
WINDOWS = 4

#: What a saved verdict was reached with: one reached by another check is not reused.
CHECK = {"version": 1, "windows": WINDOWS, "margin": round(CLEAR_MARGIN, 6)}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of /proc/cpuinfo (empty where there is none: not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def pick(device: str | None = None) -> tuple[str, str]:
    """(precision, reason) for `--precision auto` on `device` (None: CUDA when present)."""
    try:
        kind = torch.device(device).type if device is not None else None
    except RuntimeError:  # not a device: the engine says so in its own words
        return "fp32", f"--device {device!r} is not a CUDA device"
    if kind is None:
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        return "fp16", "on CUDA, half precision runs on the tensor cores"
    if kind != "cpu":
        return "fp32", f"{kind} is not a CUDA device"
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "bf16", "this CPU has AMX"
    if "avx512_bf16" in flags:
        return "bf16", "this CPU has AVX512-BF16"
    return "fp32", "this CPU has neither AMX nor AVX512-BF16 (bf16 would be emulated or slow)"


def example_windows(
    model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], count: int = WINDOWS
) -> list[tuple[torch.Tensor, ...]]:
    """`count` deterministic windows of the engine's input shapes: the batch items of
    `model.example_inputs(count)`, or `example_inputs` alone for a model without them."""
    make = getattr(model, "example_inputs", None)
    try:
        batch = make(count) if callable(make) else None
    except TypeError:  # an example_inputs() that takes no batch size
        batch = None
    if batch is not None:
        windows = [tuple(x[i : i + 1] for x in batch) for i in range(count)]
        shapes = [tuple(x.shape) for x in example_inputs]
        if all([tuple(x.shape) for x in w] == shapes for w in windows):
            return windows
    return [tuple(example_inputs)]


def top1_disagreement(
    candidate: Callable[..., torch.Tensor],
    reference: Callable[..., torch.Tensor],
    windows: list[tuple[torch.Tensor, ...]],
    margin: float = CLEAR_MARGIN,
) -> tuple[str | None, str, int]:
    """Run both on every window; compare their top-1 where `reference`'s is clear (its top
    logit leads the next by `margin` or more). Returns (what differs, or None; a summary;
    how many windows were compared)."""
    differ = compared = 0
    with torch.inference_mode():
        for window in windows:
            expected = reference(*window).float().cpu().reshape(-1)
            actual = candidate(*window).float().cpu().reshape(-1)
            top = torch.topk(expected, min(2, expected.numel())).values
            if top.numel() == 2 and top[0] - top[1] < margin:
                continue
            compared += 1
            differ += int(actual.argmax() != expected.argmax())
    unclear = len(windows) - compared
    summary = f"{compared} of {len(windows)} example windows compared"
    if unclear:
        summary += f", {unclear} too close to call in fp32"
    if differ:
        return f"its top-1 differs from fp32's on {differ} of them ({summary})", summary, compared
    return None, summary, compared


def verdict_path(engine: Engine) -> Path | None:
    """Where the bf16 check's verdict on `engine` is kept: beside its compiled package in
    the cache (None for an engine with no package, such as eager PyTorch)."""
    package = getattr(engine, "package", None)
    return None if package is None else beside(Path(package), "bf16-check")


def load_verdict(path: Path) -> dict | None:
    """The verdict saved at `path`, or None when there is none this check can reuse."""
    try:
        verdict = json.loads(path.read_text())
        if verdict["check"] != CHECK or verdict["precision"] not in ("bf16", "fp32"):
            return None
        return {k: verdict[k] for k in ("precision", "problem", "summary", "compared")}
    except (OSError, ValueError, TypeError, KeyError):  # none, half-copied, another format
        return None


def save_verdict(verdict: dict, path: Path) -> None:
    """Write `verdict` to `path` atomically; a cache that cannot be written only means
    that the check runs again at the next start."""
    text = json.dumps({**verdict, "check": CHECK, "created": time.time()}, indent=1)
    try:
        with write_atomically(path) as tmp:
            tmp.write_text(text)
    except OSError as exc:
        log.warning(
            "precision bf16: cannot save the check's verdict to %s (%s): "
            "it runs again at the next start",
            path,
            exc.strerror or type(exc).__name__,
        )


def check_bf16(
    engine: Engine, model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]
) -> dict:
    """Compare `engine`'s top-1 with eager fp32 `model`'s on the model's example windows:
    {"precision": "bf16" or "fp32", "problem", "summary", "compared"}."""
    windows = example_windows(model, example_inputs)
    reference = model
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in model.parameters()):
        reference = copy.deepcopy(model).float().cpu()
    was_training = reference.training
    reference.eval()
    try:
        problem, summary, compared = top1_disagreement(engine, reference, windows)
    finally:
        reference.train(was_training)
    precision = "bf16" if problem is None else "fp32"
    return {"precision": precision, "problem": problem, "summary": summary, "compared": compared}


def checked_bf16(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    build: Callable[[str], Engine],
) -> Engine:
    """`build("bf16")` when its top-1 equals eager fp32's on the model's example windows,
    else (with one warning line) `build("fp32")`. For `--precision auto` on the CPU; an
    explicit `--precision bf16` is taken as asked, without this check.

    The check runs when the engine is built; a bf16 engine loaded from the cache comes
    with the verdict saved beside it then (see the module docstring)."""
    engine = build("bf16")
    path = verdict_path(engine)
    verdict = None
    if path is not None and getattr(engine, "from_cache", False):
        verdict = load_verdict(path)
    if verdict is None:
        verdict = check_bf16(engine, model, example_inputs)
        if path is not None:
            save_verdict(verdict, path)
        when = ""
    else:
        when = ", checked before and saved with the compiled engine"
    if verdict["precision"] == "fp32":
        log.warning("precision bf16: %s%s: running fp32 instead", verdict["problem"], when)
        return build("fp32")
    if verdict["compared"]:
        log.info("precision bf16: top-1 equals fp32's (%s)%s", verdict["summary"], when)
    else:
        log.info(
            "precision bf16: no example window has a clear fp32 top-1 to compare (%s)%s",
            verdict["summary"],
            when,
        )
    return engine
