"""The Engine protocol that every backend implements, its error type, the batch rules every
engine follows, and the output comparison that the compiled backends use to check
themselves before serving."""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch


class EngineError(Exception):
    """An engine that cannot be built as asked; the message is one line saying what to do."""


@runtime_checkable
class Engine(Protocol):
    """A model, ready to run windows at the shapes it was built for.

    `mode` says how the model runs, for logs and benchmarks: `eager` (PyTorch as written,
    also every fallback), `aot-compiled` (an AOTInductor package on the CPU), `compiled`,
    `cudagraphs` or `compiled+cudagraphs` (torch.compile and CUDA graphs on CUDA), or
    `tensorrt` (torch-tensorrt's TensorRT engines).

    An engine runs a batch of 1 to `max_batch` windows in one call: each of the model's
    inputs holds the windows stacked on dim 0, in the same order, and row i of the logits
    is window i's (the same as that window alone would give, within the precision)."""

    name: str  # e.g. "torch-cpu", "torch-cuda-fp16", "tensorrt-fp16"
    device: torch.device  # where inputs should be prepared
    dtype: torch.dtype  # input dtype the engine expects
    precision: str  # "fp32", "fp16" or "bf16"
    mode: str  # how the model runs (see above)
    max_batch: int  # the most windows one call takes

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Model inputs holding B windows (1 <= B <= max_batch) → float32 logits
        (B, classes). B > max_batch raises ValueError: the caller batched too many."""
        ...

    def warmup(self, iterations: int = 2) -> None:
        """Run example windows at every batch size the engine's calls run at, so that no
        real window is the first of its shape (and pays for its set-up)."""
        ...


def model_name(model: torch.nn.Module) -> str:
    """The registered name of `model` (`model.meta.name`), else its class name: what log
    lines and cache keys call it."""
    return getattr(getattr(model, "meta", None), "name", None) or type(model).__name__


def check_max_batch(max_batch: int) -> int:
    """`max_batch` when it is a whole number >= 1; EngineError otherwise."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise EngineError(f"max_batch {max_batch!r} must be a whole number >= 1 (1: no batching)")
    return max_batch


def batch_size(inputs: tuple[torch.Tensor, ...], max_batch: int) -> int:
    """How many windows `inputs` hold (their common dim 0). ValueError when they disagree
    or hold none, or more than `max_batch`: a caller's bug, never a user's input."""
    if not inputs:
        raise ValueError("an engine call needs the model's inputs")
    sizes = {x.shape[0] if x.dim() else None for x in inputs}
    if len(sizes) != 1 or None in sizes:
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
        raise ValueError(f"the inputs must stack the same windows on dim 0, got shapes {shapes}")
    (size,) = sizes
    if not 1 <= size <= max_batch:
        raise ValueError(
            f"a batch of {size} windows, but this engine takes 1 to {max_batch} per call: "
            "split the batch (or create the engine with a larger max_batch)"
        )
    return size


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """The batch sizes an engine with fixed shapes is built for: the powers of two below
    `max_batch`, and `max_batch` (8: 1, 2, 4, 8; 6: 1, 2, 4, 6). A batch runs in the
    smallest bucket that holds it, padded up: at most half a call is padding."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != max_batch:
        sizes.append(max_batch)
    return tuple(sizes)


def bucket_for(size: int, buckets: tuple[int, ...]) -> int:
    """The smallest of `buckets` (ascending) that holds `size` windows."""
    return next(b for b in buckets if b >= size)


def example_batch(example_inputs: tuple[torch.Tensor, ...], size: int) -> tuple[torch.Tensor, ...]:
    """`size` distinct windows shaped like the one in `example_inputs`, stacked on dim 0:
    the example first, then windows drawn from a fixed seed at the example's mean and
    spread. Distinct, so that a check sees an engine that mixes up or repeats windows."""
    if size == 1:
        return tuple(example_inputs)
    generator = torch.Generator().manual_seed(1)
    batch = []
    for x in example_inputs:
        if x.is_floating_point():
            spread, mean = torch.std_mean(x.detach().float().cpu())
            rest = torch.randn((size - 1, *x.shape[1:]), generator=generator)
            rest = (rest * (spread if spread > 0 else 1.0) + mean).to(x.device, x.dtype)
        else:  # no model of ours takes whole numbers: repeated, they still have the shape
            rest = x.repeat(size - 1, *[1] * (x.dim() - 1))
        batch.append(torch.cat([x, rest]))
    return tuple(batch)


#: Largest `relative_error` a compiled engine (AOTInductor, torch.compile, CUDA graph,
#: TensorRT) may show against eager PyTorch at the same precision before it is thrown away.
#: fp16 keeps ~3 significant digits per op and errors add up over 100+ layers; a wrong
#: weight or a mis-converted op gives errors of order 1. TF32 matmuls (TensorRT's fp32
#: default) keep ~3 digits.
TOLERANCE = {"fp32": 1e-2, "fp16": 5e-2, "bf16": 1e-1}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| over max |expected| (float32 on the CPU; inf for NaN or a
    shape mismatch)."""
    actual = actual.detach().float().cpu()
    expected = expected.detach().float().cpu()
    if actual.shape != expected.shape:
        return float("inf")
    scale = expected.abs().max().item() if expected.numel() else 0.0
    error = (actual - expected).abs().max().item() if expected.numel() else 0.0
    if not math.isfinite(error):
        return float("inf")
    return error / max(scale, 1e-6)
