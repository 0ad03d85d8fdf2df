"""Inference engines behind one protocol.

    engine = engines.create(model, model.example_inputs(), backend="auto")
    logits = engine(*inputs)          # inputs on any device; logits float32 on engine.device

Backends: `torch` (PyTorch on CPU, or CUDA when present) and `tensorrt` (torch-tensorrt;
not in this release). Optional backends are imported lazily inside their module, so a
CPU-only machine imports everything else.
"""

from __future__ import annotations

import logging

import torch

from .base import Engine, EngineError

__all__ = ["BACKENDS", "Engine", "EngineError", "create", "pick_backend"]

BACKENDS = ("auto", "torch", "tensorrt")

log = logging.getLogger(__name__)


def pick_backend(device: str | None = None) -> tuple[str, str]:
    """(backend, reason) for `--engine auto`."""
    if device is not None and torch.device(device).type == "cpu":
        return "torch", "PyTorch on the CPU, as --device cpu asks"
    if torch.cuda.is_available():
        return "torch", (
            f"PyTorch on CUDA ({torch.cuda.get_device_name()}); the TensorRT backend is not in "
            "this release"
        )
    return "torch", "PyTorch on the CPU: no CUDA GPU found"


def create(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    backend: str = "auto",
    device: str | None = None,
    precision: str | None = None,
) -> Engine:
    """Build an engine that runs `model` at the shapes of `example_inputs`."""
    if backend == "auto":
        backend, reason = pick_backend(device)
        log.info("engine auto: %s", reason)
    if backend == "torch":
        from .torch_engine import TorchEngine

        return TorchEngine(model, example_inputs, device=device, precision=precision)
    if backend == "tensorrt":
        raise EngineError(
            "the tensorrt engine is not available in this release: use --engine torch "
            "(PyTorch on CUDA or CPU)"
        )
    raise EngineError(f"unknown engine {backend!r}: use one of {', '.join(BACKENDS)}")
