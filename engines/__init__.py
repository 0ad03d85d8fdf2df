"""Inference engines behind one protocol.

    engine = engines.create(model, model.example_inputs(), backend="auto", max_batch=4)
    logits = engine(*inputs)          # inputs on any device; logits float32 on engine.device

Every engine has `name` (e.g. `torch-cpu`, `torch-cuda-fp16`, `tensorrt-fp16`), `device`,
`dtype`, `precision`, `mode` (how the model runs: `eager`, `aot-compiled`,
`compiled+cudagraphs`, `tensorrt`...) and `max_batch`: the `Engine` protocol, engines/base.py.
The example inputs are one window (dim 0 of size 1); a call takes 1 to `max_batch` windows
stacked on dim 0 (of every input) and returns their logits (B, classes) in that order.

Backends:
  torch     PyTorch (engines/torch_engine.py). On the CPU fp32 (`torch-cpu`) or bf16
            (`torch-cpu-bf16`), compiled ahead of time with AOTInductor and cached on disk
            (engines/inductor.py). On CUDA fp16 (default), bf16 or fp32, compiled with
            torch.compile and replayed as a CUDA graph (`torch-cuda-fp16`, ...;
            engines/cuda.py). `compile=False` runs eager PyTorch.
  tensorrt  torch-tensorrt on a torch.export program, fp16 (default) or fp32, cached on
            disk (`tensorrt-fp16`; engines/tensorrt.py).
  auto      tensorrt when torch-tensorrt imports and a CUDA GPU is there, else torch on
            CUDA, else torch on the CPU; logs which and why.
Every compiled engine starts the same way (engines/compiled.py): loaded from the cache or
built, checked against eager PyTorch before it serves, saved, or, when any of that fails,
replaced by PyTorch with one warning that says why.
Precision `auto` (or None): fp16 on CUDA; bf16 on a CPU with AMX or AVX512-BF16 when its
top-1 equals fp32's on the model's example windows (else fp32, with a warning; checked
when the engine is compiled, the verdict cached with it); fp32 on other CPUs; logs which
and why. engines/precision.py
`engines.tensorrt_ops` checks without torch-tensorrt that a model exports (engines/export.py,
the export every compiled engine starts from) and uses only operators torch-tensorrt
converts. `engines.malloc` is the allocator of an engine's process. Optional backends are
imported lazily inside their module, so a CPU-only machine imports everything else.
Importing this package does not import torch (that waits for the first engine):
`engines.names`, the names `--engine` and `--precision` take, and `engines.malloc` are read
by the parent process of stream.run, which never needs torch.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from .names import BACKENDS, PRECISIONS

if TYPE_CHECKING:
    import torch

    from .base import Engine

__all__ = ["BACKENDS", "PRECISIONS", "Engine", "EngineError", "create", "pick_backend"]

log = logging.getLogger(__name__)


def __getattr__(name: str):
    # Engine and EngineError live beside torch (engines/base.py): loaded when first asked
    # for, so that importing the package (and engines.names) needs no torch.
    if name in ("Engine", "EngineError"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pick_backend(device: str | None = None, precision: str | None = None) -> tuple[str, str]:
    """(backend, reason) for `--engine auto`."""
    import torch

    try:
        kind = torch.device(device).type if device is not None else None
    except RuntimeError:  # not a device: the torch engine says so in its own words
        return "torch", f"PyTorch, for --device {device!r}"
    if kind == "cpu":
        return "torch", "PyTorch on the CPU, as --device cpu asks"
    if not torch.cuda.is_available():
        return "torch", "PyTorch on the CPU: no CUDA GPU found"
    try:
        gpu = torch.cuda.get_device_name(device)
    except (RuntimeError, AssertionError, ValueError):  # e.g. cuda:7 on a one-GPU machine
        return "torch", f"PyTorch, for --device {device}"
    from . import tensorrt

    if precision is not None and precision not in tensorrt.PRECISIONS:
        return "torch", f"PyTorch on CUDA ({gpu}): the tensorrt engine has no {precision}"
    reason = tensorrt.unavailable_reason()
    if reason is not None:
        return "torch", f"PyTorch on CUDA ({gpu}): {reason} ({tensorrt.INSTALL_HINT} for TensorRT)"
    torch_tensorrt, _ = tensorrt.import_torch_tensorrt()
    return "tensorrt", f"TensorRT on {gpu} (torch-tensorrt {torch_tensorrt.__version__})"


def create(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    backend: str = "auto",
    device: str | None = None,
    precision: str | None = None,
    compile: bool | None = None,
    cudagraphs: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    tolerance: float | None = None,
    max_batch: int = 1,
) -> Engine:
    """Build an engine that runs `model` at the shapes of `example_inputs` (one window),
    on batches of 1 to `max_batch` windows.

    precision: fp32, fp16, bf16, or "auto" (None too): see the module docstring.
    compile: the torch backend compiles (default on): ahead of time with AOTInductor on the
        CPU, torch.compile on CUDA; False runs eager PyTorch.
    cudagraphs: the torch backend on CUDA (default on). compile and cudagraphs also set up
        the tensorrt backend's PyTorch fallback.
    cache_dir: where compiled engines are kept (default `$AVSTREAM_CACHE/engines`).
    tolerance: the tensorrt backend's largest relative error against PyTorch.
    max_batch: the most windows one call takes (1: no batching, the engine of one stream).
    """
    from . import precision as _precision
    from .base import EngineError, check_max_batch

    check_max_batch(max_batch)

    auto = precision in (None, _precision.AUTO)
    if auto:
        # The tensorrt engine runs on CUDA only: its auto precision is CUDA's on any machine
        # (it then says itself what is missing, rather than refusing a CPU's bf16).
        where = (device or "cuda") if backend == "tensorrt" else device
        precision, reason = _precision.pick(where)
        log.info("precision %s: %s", precision, reason)
    if backend == "auto":
        backend, reason = pick_backend(device, precision)
        log.info("engine auto: %s", reason)
    if backend not in ("torch", "tensorrt"):
        raise EngineError(f"unknown engine {backend!r}: use one of {', '.join(BACKENDS)}")

    def build(precision: str) -> Engine:
        if backend == "torch":
            from . import torch_engine

            return torch_engine.create(
                model,
                example_inputs,
                device=device,
                precision=precision,
                compile=compile,
                cudagraphs=cudagraphs,
                cache_dir=cache_dir,
                max_batch=max_batch,
            )
        from . import tensorrt

        return tensorrt.create(
            model,
            example_inputs,
            device=device,
            precision=precision,
            cache_dir=cache_dir,
            tolerance=tolerance,
            compile=compile,
            cudagraphs=cudagraphs,
            max_batch=max_batch,
        )

    if auto and precision == "bf16" and backend == "torch":
        return _precision.checked_bf16(model, example_inputs, build)
    return build(precision)
