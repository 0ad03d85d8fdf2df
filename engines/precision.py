"""`--precision auto`: the precision an engine runs at on this machine, and, for bf16 on
the CPU, the check that it keeps fp32's predictions.

    auto on CUDA                          fp16 (half precision on the tensor cores)
    auto on a CPU with AMX or AVX512-BF16 bf16, if its top-1 equals fp32's (else fp32, one warning)
    auto on any other CPU                 fp32 (bf16 would be emulated, slower than fp32)

Both instruction sets compute bf16 in hardware through oneDNN; AMX's tile multiplies are
the faster. AVX512-BF16 alone pays too on a 2-core AMD EPYC (no AMX): the compiled X3D-XS
took 0.66 to 0.70 of its fp32 time in bf16 (benchmarks/cpu_engine.py, three runs of 30
to 60 interleaved rounds on a busy machine, 2026-12-06). An earlier measurement on a 2-core Intel Xeon with
AVX512-BF16 and no AMX, before the CPU engine's malloc setting and graph rewrite, had
bf16 slower than fp32 (docs/performance.md); `--precision fp32` is the way out there.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from collections.abc import Callable

import torch

from .base import Engine

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


def checked_bf16(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    build: Callable[[str], Engine],
) -> Engine:
    """`build("bf16")` when its top-1 equals eager fp32's on the model's example windows,
    else (with one warning line) `build("fp32")`. For `--precision auto` on the CPU; an
    explicit `--precision bf16` is taken as asked, without this check."""
    engine = build("bf16")
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
    if problem is not None:
        log.warning("precision bf16: %s: running fp32 instead", problem)
        return build("fp32")
    if compared:
        log.info("precision bf16: top-1 equals fp32's (%s)", summary)
    else:
        log.info(
            "precision bf16: no example window has a clear fp32 top-1 to compare (%s)", summary
        )
    return engine
