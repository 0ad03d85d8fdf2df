"""PyTorch engine: eager execution on CPU (fp32) or CUDA (fp32 / fp16)."""

from __future__ import annotations

import torch

from .base import EngineError

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchEngine:
    def __init__(
        self,
        model: torch.nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        *,
        device: str | None = None,
        precision: str | None = None,
    ):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except RuntimeError:
            raise EngineError(f"--device {device!r} is not a device: use cpu, cuda or cuda:N") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise EngineError(f"--device {device} asked for, but PyTorch sees no CUDA GPU: use --device cpu")
        if self.device.type not in ("cpu", "cuda"):
            raise EngineError(f"--device {device!r} is not supported: use cpu or cuda")
        if precision is None:
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        supported = ("fp32", "fp16") if self.device.type == "cuda" else ("fp32",)
        if precision not in supported:
            raise EngineError(
                f"--precision {precision} is not supported by the torch engine on {self.device.type}: "
                f"use {' or '.join(supported)}"
            )
        self.precision = precision
        self.dtype = _DTYPES[precision]
        self.model = model.to(self.device, self.dtype).eval()
        self.example_inputs = tuple(x.to(self.device, self.dtype) for x in example_inputs)
        self.name = "torch-cpu" if self.device.type == "cpu" else f"torch-cuda-{precision}"

    @torch.inference_mode()
    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        inputs = tuple(x.to(self.device, self.dtype, non_blocking=True) for x in inputs)
        logits = self.model(*inputs).float()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # infer_end must be when the result exists
        return logits

    def warmup(self, iterations: int = 2) -> None:
        for _ in range(iterations):
            self(*self.example_inputs)
