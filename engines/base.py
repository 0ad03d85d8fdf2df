"""The Engine protocol that every backend implements, its error type, and the output
comparison that the compiled backends use to check themselves before serving."""

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
    `tensorrt` (torch-tensorrt's TensorRT engines)."""

    name: str  # e.g. "torch-cpu", "torch-cuda-fp16", "tensorrt-fp16"
    device: torch.device  # where inputs should be prepared
    dtype: torch.dtype  # input dtype the engine expects
    precision: str  # "fp32", "fp16" or "bf16"
    mode: str  # how the model runs (see above)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Model inputs → float32 logits (B, classes)."""
        ...

    def warmup(self, iterations: int = 2) -> None:
        """Run the example inputs so that the first real window is not slow."""
        ...


def model_name(model: torch.nn.Module) -> str:
    """The registered name of `model` (`model.meta.name`), else its class name: what log
    lines and cache keys call it."""
    return getattr(getattr(model, "meta", None), "name", None) or type(model).__name__


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
