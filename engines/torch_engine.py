"""The torch backend: eager PyTorch on the CPU or CUDA (`TorchEngine`), and `create`, which
compiles it the way the options ask:

  device  compile  cudagraphs  engine
  cpu     True     -           the AOTInductor package, cached on disk (engines/inductor.py)
  cuda    True     True        torch.compile(mode="reduce-overhead"): inductor kernels,
                               replayed as a CUDA graph (engines/cuda.py)
  cuda    True     False       torch.compile, default mode
  cuda    False    True        the eager model captured once with torch.cuda.graph
  any     False    False       eager
The defaults are compile on, cudagraphs on CUDA. A compiled engine is checked against the
eager one before it serves, and gives way to it (one warning) when compiling fails or the
outputs disagree (engines/compiled.py).

Every engine here, and the TensorRT engine, stages its inputs the same way (`StagedEngine`):
inputs that arrive on the host go through pinned buffers (one per input, reused) with
non-blocking copies; inputs already on the device (the stream's Preprocessor runs there)
are only cast. On CUDA an engine builds and runs inside `torch.cuda.device` of its own
GPU, so `--device cuda:1` works while cuda:0 is the current device.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os

import torch

from . import malloc
from .base import EngineError, batch_size, check_max_batch, example_batch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_kind(device: str | torch.device) -> str:
    """`cpu`, `cuda`, ... for `device`; EngineError when it is not a device."""
    try:
        return torch.device(device).type
    except RuntimeError:
        raise EngineError(f"--device {device!r} is not a device: use cpu, cuda or cuda:N") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device` (None: cuda when present, else cpu) checked against what PyTorch sees."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolve_kind(device)
    resolved = torch.device(device)
    if resolved.type not in ("cpu", "cuda"):
        raise EngineError(f"--device {device!r} is not supported: use cpu or cuda")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineError(
                f"--device {device} asked for, but PyTorch sees no CUDA GPU: use --device cpu"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise EngineError(
                f"--device {device}: PyTorch sees {count} CUDA GPU(s): "
                f"use cuda:0 to cuda:{count - 1}"
            )
        if resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def on_device(device: torch.device):
    """A context in which `device` is CUDA's current device (nothing to do on the CPU):
    CUDA streams, graphs and TensorRT's execution contexts belong to the current device,
    which need not be the engine's."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class InputStager:
    """Moves inputs to `device` and `dtype`. Host tensors bound for a GPU are copied into a
    pinned buffer (kept per input position, shape and dtype: one per batch size a call
    brings, so that alternating batch sizes never allocate pinned memory again) and sent
    with a non-blocking copy; the caller synchronises before the next call, so a buffer is
    never overwritten mid-transfer."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device = device
        self.dtype = dtype
        self._pinned: dict[tuple, torch.Tensor] = {}

    def __call__(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        staged = []
        for i, x in enumerate(inputs):
            if self.device.type == "cuda" and x.device.type == "cpu" and not x.is_pinned():
                key = (i, tuple(x.shape), x.dtype)
                buf = self._pinned.get(key)
                if buf is None:
                    buf = self._pinned[key] = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
                buf.copy_(x)
                x = buf
            # Copy first, cast on the device: the host sends what it has (often uint8 or fp32).
            staged.append(x.to(self.device, non_blocking=True).to(self.dtype))
        return tuple(staged)


class StagedEngine:
    """What every engine shares: its name, device, precision, mode and largest batch (the
    `Engine` protocol), the example inputs (one window) staged once, and a call that checks
    the batch, stages the inputs, runs `_forward` on them (float32 logits) and, on CUDA,
    waits for the result.

    `batch_sizes` are the batch sizes that `_forward` runs at, which `warmup` runs each:
    every size from 1 to `max_batch` unless the engine pads batches up to a few buckets."""

    def __init__(
        self,
        *,
        name: str,
        device: torch.device,
        precision: str,
        mode: str,
        example_inputs: tuple[torch.Tensor, ...],
        max_batch: int = 1,
        batch_sizes: tuple[int, ...] | None = None,
    ):
        self.name = name
        self.device = device
        self.precision = precision
        self.dtype = DTYPES[precision]
        self.mode = mode
        self.max_batch = check_max_batch(max_batch)
        self.batch_sizes = batch_sizes or tuple(range(1, max_batch + 1))
        if batch_size(tuple(example_inputs), self.max_batch) != 1:
            raise ValueError("the example inputs are one window: dim 0 of size 1")
        self._stage = InputStager(device, self.dtype)
        with on_device(device):
            self.example_inputs = self._stage(tuple(example_inputs))

    def _forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        batch_size(inputs, self.max_batch)
        with on_device(self.device):
            logits = self._forward(*self._stage(inputs))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # infer_end must be when the result exists
        return logits

    def example_batch(self, size: int) -> tuple[torch.Tensor, ...]:
        """`size` distinct example windows, stacked (`base.example_batch`), on the device."""
        with on_device(self.device):
            return example_batch(self.example_inputs, size)

    def warmup(self, iterations: int = 2) -> None:
        batches = [self.example_batch(size) for size in self.batch_sizes]
        for _ in range(iterations):
            for inputs in batches:
                self(*inputs)


def engine_name(device: torch.device, precision: str) -> str:
    """`torch-cpu` (fp32), `torch-cpu-bf16`, `torch-cuda-fp16`, ..."""
    if device.type == "cpu" and precision == "fp32":
        return "torch-cpu"
    return f"torch-{device.type}-{precision}"


class TorchEngine(StagedEngine):
    """`model` in eager PyTorch on `device` at `precision` (None: fp16 on CUDA, fp32 on
    the CPU), taking batches of up to `max_batch` windows: served as is with
    `compile=False`, and the reference every compiled engine is checked against and falls
    back to. The caller's model keeps its device and dtype (a copy is cast when they
    differ)."""

    def __init__(
        self,
        model: torch.nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        *,
        device: str | torch.device | None = None,
        precision: str | None = None,
        max_batch: int = 1,
    ):
        device = resolve_device(device)
        cuda = device.type == "cuda"
        if precision is None:
            precision = "fp16" if cuda else "fp32"
        supported = ("fp32", "fp16", "bf16") if cuda else ("fp32", "bf16")
        if precision not in supported:
            raise EngineError(
                f"--precision {precision} is not supported by the torch engine on {device.type}: "
                f"use {' or '.join(supported)}"
            )
        if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
            raise EngineError(
                f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support: "
                "use fp16"
            )
        if precision == "bf16" and not cuda:
            from . import inductor

            if not inductor.bf16_native():
                raise EngineError(
                    f"--precision bf16: this CPU ({inductor.cpu_name()}) has no native bfloat16 "
                    "(AVX512-BF16 or AMX), so bf16 would be slower than fp32: use fp32"
                )
        if not cuda:
            malloc.keep_freed_memory()
        dtype = DTYPES[precision]
        tensors = itertools.chain(model.parameters(), model.buffers())
        if any(t.device != device or (t.is_floating_point() and t.dtype != dtype) for t in tensors):
            model = copy.deepcopy(model)  # the caller's model keeps its device and dtype
        self.model = model.to(device, dtype).eval()
        super().__init__(
            name=engine_name(device, precision),
            device=device,
            precision=precision,
            mode="eager",
            example_inputs=example_inputs,
            max_batch=max_batch,
        )

    def _forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(*inputs).float()


def create(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    device: str | None = None,
    precision: str | None = None,
    compile: bool | None = None,
    cudagraphs: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_batch: int = 1,
):
    """The torch backend's engine for `model` (see the module docstring for the options),
    taking batches of up to `max_batch` windows."""
    resolved = resolve_device(device)
    if cudagraphs and resolved.type != "cuda":
        raise EngineError("CUDA graphs need a CUDA device: leave cudagraphs off on the CPU")
    with on_device(resolved):
        reference = TorchEngine(
            model, example_inputs, device=resolved, precision=precision, max_batch=max_batch
        )
        return optimise(reference, compile=compile, cudagraphs=cudagraphs, cache_dir=cache_dir)


def optimise(
    reference: TorchEngine,
    *,
    compile: bool | None = None,
    cudagraphs: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
):
    """The compiled form of the eager `reference` that `compile` and `cudagraphs` ask for
    (None: the defaults), or `reference` itself when they ask for none or it fails."""
    cuda = reference.device.type == "cuda"
    compile = True if compile is None else compile
    cudagraphs = cuda if cudagraphs is None else cudagraphs
    if not cuda and compile:
        from . import inductor

        return inductor.start(reference, cache_dir=cache_dir)
    if cuda and (compile or cudagraphs):
        from . import cuda as cuda_engine

        with on_device(reference.device):
            return cuda_engine.start(reference, compile=compile, cudagraphs=cudagraphs)
    return reference
