"""PyTorch engine: eager fp32 on the CPU; on CUDA fp32 / fp16 / bf16, compiled for the
window's fixed shapes and replayed as a CUDA graph.

On CUDA, `compile` and `cudagraphs` (both on by default) pick how the model runs:
  compile  cudagraphs
  True     True     torch.compile(mode="reduce-overhead"): inductor kernels, replayed as a
                    CUDA graph (one launch per window instead of hundreds)
  True     False    torch.compile, default mode
  False    True     the eager model captured once with torch.cuda.graph and replayed
  False    False    eager
The constructor builds and runs the chosen form (torch.compile compiles on the first call),
then compares its output with eager PyTorch; when either step fails it logs one warning
and runs eager. So a failure shows at start-up, never in the middle of a stream.

Inputs that arrive on the host go through pinned buffers (one per input, reused) with
non-blocking copies; inputs already on the device (the stream's Preprocessor runs there)
are only cast.

On the CPU, fp32 (default) or bf16 (on CPUs that compute it natively: AVX512-BF16 or AMX),
`compile` (on by default) compiles the model ahead of time with AOTInductor and caches it
on disk (engines/inductor.py); the first start compiles, later ones load in milliseconds.
Its output is checked against eager PyTorch on every start, as on CUDA; a failure logs
one warning and runs eager.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import time
from pathlib import Path

import torch

from . import inductor, malloc
from .base import TOLERANCE, EngineError, relative_error
from .cache import default_cache_dir

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
                f"--device {device}: PyTorch sees {count} CUDA GPU(s): use cuda:0 to cuda:{count - 1}"
            )
        if resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


class InputStager:
    """Moves inputs to `device` and `dtype`. Host tensors bound for a GPU are copied into a
    pinned buffer (kept per input position) and sent with a non-blocking copy; the caller
    synchronises before the next call, so a buffer is never overwritten mid-transfer."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device = device
        self.dtype = dtype
        self._pinned: dict[int, torch.Tensor] = {}

    def __call__(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        staged = []
        for i, x in enumerate(inputs):
            if self.device.type == "cuda" and x.device.type == "cpu" and not x.is_pinned():
                buf = self._pinned.get(i)
                if buf is None or buf.shape != x.shape or buf.dtype != x.dtype:
                    buf = self._pinned[i] = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
                buf.copy_(x)
                x = buf
            # Copy first, cast on the device: the host sends what it has (often uint8 or fp32).
            staged.append(x.to(self.device, non_blocking=True).to(self.dtype))
        return tuple(staged)


class _CudaGraph:
    """`fn` captured once at the example inputs' shapes and replayed (torch.cuda.graph).

    Inputs are copied into the captured input tensors; the output tensor is the captured
    one and is overwritten by the next replay (callers copy it)."""

    def __init__(self, fn, example_inputs: tuple[torch.Tensor, ...]):
        self.inputs = tuple(x.clone() for x in example_inputs)
        # Warm up on a side stream before capture, as the CUDA graphs notes in the PyTorch docs ask.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        for dst, src in zip(self.inputs, inputs, strict=True):
            if src.shape != dst.shape:  # copy_ would broadcast silently
                raise ValueError(
                    f"the CUDA graph was captured for inputs {tuple(dst.shape)}, got {tuple(src.shape)}"
                )
            dst.copy_(src)
        self.graph.replay()
        return self.output


class TorchEngine:
    """`model` in PyTorch on `device`: see the module docstring for the CUDA options."""

    def __init__(
        self,
        model: torch.nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        *,
        device: str | None = None,
        precision: str | None = None,
        compile: bool | None = None,
        cudagraphs: bool | None = None,
        cache_dir: str | os.PathLike | None = None,
    ):
        self.device = resolve_device(device)
        cuda = self.device.type == "cuda"
        if precision is None:
            precision = "fp16" if cuda else "fp32"
        supported = ("fp32", "fp16", "bf16") if cuda else ("fp32", "bf16")
        if precision not in supported:
            raise EngineError(
                f"--precision {precision} is not supported by the torch engine on {self.device.type}: "
                f"use {' or '.join(supported)}"
            )
        if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
            raise EngineError(
                f"--precision bf16: {torch.cuda.get_device_name(self.device)} has no bfloat16 support: "
                "use fp16"
            )
        if precision == "bf16" and not cuda and not inductor.bf16_native():
            raise EngineError(
                f"--precision bf16: this CPU ({inductor.cpu_name()}) has no native bfloat16 "
                "(AVX512-BF16 or AMX), so bf16 would be slower than fp32: use fp32"
            )
        if cudagraphs and not cuda:
            raise EngineError("CUDA graphs need a CUDA device: leave cudagraphs off on the CPU")
        self.precision = precision
        self.dtype = _DTYPES[precision]
        if not cuda:
            malloc.keep_freed_memory()
        tensors = itertools.chain(model.parameters(), model.buffers())
        if any(t.device != self.device or (t.is_floating_point() and t.dtype != self.dtype) for t in tensors):
            model = copy.deepcopy(model)  # the caller's model keeps its device and dtype
        self.model = model.to(self.device, self.dtype).eval()
        if cuda:
            self.name = f"torch-cuda-{precision}"
        else:
            self.name = "torch-cpu" if precision == "fp32" else f"torch-cpu-{precision}"
        self._stage = InputStager(self.device, self.dtype)
        self.example_inputs = self._stage(tuple(example_inputs))
        self._run = self.model
        self._mark_step = False  # torch.compile's CUDA graphs want each call marked
        self._static_output = False  # the output tensor is reused by the next call
        self.mode = "eager"
        # The compiled package (CPU) and whether this start found it in the cache or built
        # it: engines.precision keeps its bf16 check's verdict beside the package.
        self.package: Path | None = None
        self.from_cache = False
        self._cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        compile = True if compile is None else compile
        cudagraphs = cuda if cudagraphs is None else cudagraphs
        if not cuda and compile:
            self._compile_ahead_of_time()
        elif compile or cudagraphs:
            self._optimise(compile, cudagraphs)

    def _compile_ahead_of_time(self) -> None:
        """CPU: the AOTInductor package for this model (cached), checked against eager."""
        what = getattr(getattr(self.model, "meta", None), "name", type(self.model).__name__)
        key = inductor.key_for(self.model, self.example_inputs, self.precision)
        try:
            with torch.inference_mode():
                expected = self.model(*self.example_inputs).float()
            compiled = inductor.load_or_build(
                self.model, self.example_inputs, key=key, cache_dir=self._cache_dir, name=self.name
            )
            with torch.inference_mode():
                actual = compiled(*self.example_inputs)
            error = relative_error(actual, expected)
            if not error <= TOLERANCE[self.precision]:
                inductor.forget(key, self._cache_dir)  # the next start compiles afresh
                raise RuntimeError(
                    f"output differs from eager by {error:.3g} (> {TOLERANCE[self.precision]})"
                )
        except Exception as exc:  # no compiler, an op it cannot lower...: eager still works
            log.debug("compile failure", exc_info=True)
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            log.warning(
                "%s: compiling %s failed (%s: %s): running eager PyTorch instead",
                self.name,
                what,
                type(exc).__name__,
                reason,
            )
            return
        self._run = compiled
        self.mode = "aot-compiled"
        self.package, self.from_cache = compiled.path, compiled.cached
        log.info("%s: %s compiled ahead of time (relative error %.2g)", self.name, what, error)

    def _optimise(self, compile: bool, cudagraphs: bool) -> None:
        mode = "+".join(m for m, on in (("compiled", compile), ("cudagraphs", cudagraphs)) if on)
        doing = {
            "compiled+cudagraphs": "torch.compile with CUDA graphs",
            "compiled": "torch.compile",
            "cudagraphs": "CUDA graph capture",
        }[mode]
        what = getattr(getattr(self.model, "meta", None), "name", type(self.model).__name__)
        t0 = time.perf_counter()
        if compile:
            log.info(
                "%s: torch.compile for %s (the first start takes a while; cached after)",
                self.name,
                what,
            )
        try:
            with torch.inference_mode():
                expected = self.model(*self.example_inputs).float()
                if compile:
                    self._run = torch.compile(
                        self.model,
                        mode="reduce-overhead" if cudagraphs else None,
                        fullgraph=True,
                        dynamic=False,
                    )
                    self._mark_step = cudagraphs
                    self._static_output = cudagraphs
                else:
                    self._run = _CudaGraph(self.model, self.example_inputs)
                    self._static_output = True
                # Three calls: compile, then (reduce-overhead) warm up and record the graph.
                for _ in range(3):
                    actual = self(*self.example_inputs)
            error = relative_error(actual, expected)
            if not error <= TOLERANCE[self.precision]:
                raise RuntimeError(
                    f"output differs from eager by {error:.3g} (> {TOLERANCE[self.precision]})"
                )
        except Exception as exc:  # noqa: BLE001 (any failure: eager still works)
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            log.warning(
                "%s: %s failed for %s (%s: %s): running eager PyTorch instead",
                self.name,
                doing,
                what,
                type(exc).__name__,
                reason,
            )
            self._run = self.model
            self._mark_step = self._static_output = False
            self.mode = "eager"
            return
        self.mode = mode
        log.info("%s: %s ready for %s in %.1f s", self.name, mode, what, time.perf_counter() - t0)

    @torch.inference_mode()
    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        inputs = self._stage(inputs)
        if self._mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        logits = self._run(*inputs)
        # A new tensor, never the one a CUDA graph overwrites on its next replay.
        logits = (
            logits.clone()
            if self._static_output and logits.dtype == torch.float32
            else logits.float()
        )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # infer_end must be when the result exists
        return logits

    def warmup(self, iterations: int = 2) -> None:
        for _ in range(iterations):
            self(*self.example_inputs)
