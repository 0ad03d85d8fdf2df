"""The Engine protocol that every backend implements, and its error type."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


class EngineError(Exception):
    """An engine that cannot be built as asked; the message is one line saying what to do."""


@runtime_checkable
class Engine(Protocol):
    name: str  # e.g. "torch-cpu", "torch-cuda-fp16", "tensorrt-fp16"
    device: torch.device  # where inputs should be prepared
    dtype: torch.dtype  # input dtype the engine expects

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Model inputs → float32 logits (B, classes)."""
        ...

    def warmup(self, iterations: int = 2) -> None:
        """Run the example inputs so that the first real window is not slow."""
        ...
