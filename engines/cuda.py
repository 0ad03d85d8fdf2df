"""The torch backend on CUDA, compiled for the window's fixed shapes: torch.compile and/or a
CUDA graph of the eager model, fp32, fp16 or bf16.

  compile  cudagraphs  mode
  True     True        compiled+cudagraphs: torch.compile(mode="reduce-overhead"), inductor
                       kernels replayed as a CUDA graph (one launch per window instead of
                       hundreds)
  True     False       compiled: torch.compile, default mode
  False    True        cudagraphs: the eager model captured once with torch.cuda.graph
torch.compile keeps its own on-disk caches; this backend keeps no file of its own. The
build (the compile, or the capture) runs when the engine starts, and the check against
eager PyTorch and the fallback to it are engines/compiled.py's, as for every compiled
backend. Everything runs inside `torch.cuda.device` of the engine's GPU.
"""

from __future__ import annotations

import torch

from . import compiled
from .base import model_name
from .torch_engine import StagedEngine, TorchEngine, on_device

_DOING = {
    "compiled+cudagraphs": ("compiling", "compiled", "with torch.compile and CUDA graphs"),
    "compiled": ("compiling", "compiled", "with torch.compile"),
    "cudagraphs": ("capturing", "captured", "as a CUDA graph"),
}


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
                    f"the CUDA graph was captured for inputs {tuple(dst.shape)}, "
                    f"got {tuple(src.shape)}"
                )
            dst.copy_(src)
        self.graph.replay()
        return self.output


class CudaEngine(StagedEngine):
    """The eager CUDA engine `reference`'s model, compiled and/or captured (see the module
    docstring). Building it compiles or captures: the first three calls happen here."""

    def __init__(self, reference: TorchEngine, *, compile: bool, cudagraphs: bool):
        mode = "+".join(m for m, on in (("compiled", compile), ("cudagraphs", cudagraphs)) if on)
        super().__init__(
            name=reference.name,
            device=reference.device,
            precision=reference.precision,
            mode=mode,
            example_inputs=reference.example_inputs,
        )
        # torch.compile's CUDA graphs want each call marked; a CUDA graph's output tensor is
        # the one its next replay overwrites.
        self._mark_step = compile and cudagraphs
        self._static_output = cudagraphs
        with on_device(self.device), torch.inference_mode():
            if compile:
                self._run = torch.compile(
                    reference.model,
                    mode="reduce-overhead" if cudagraphs else None,
                    fullgraph=True,
                    dynamic=False,
                )
            else:
                self._run = _CudaGraph(reference.model, self.example_inputs)
        # Three calls: compile, then (reduce-overhead) warm up and record the graph.
        for _ in range(3):
            self(*self.example_inputs)

    def _forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self._mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        logits = self._run(*inputs)
        # A new tensor, never the one a CUDA graph overwrites on its next replay.
        if self._static_output and logits.dtype == torch.float32:
            return logits.clone()
        return logits.float()


def start(reference: TorchEngine, *, compile: bool, cudagraphs: bool):
    """The compiled CUDA engine of the eager CUDA engine `reference`, checked against it;
    `reference` itself (with one warning) when compiling or capturing fails."""
    mode = "+".join(m for m, on in (("compiled", compile), ("cudagraphs", cudagraphs)) if on)
    doing, done, how = _DOING[mode]
    backend = compiled.Backend(
        name=reference.name,
        model=model_name(reference.model),
        precision=reference.precision,
        build=lambda tmp: CudaEngine(reference, compile=compile, cudagraphs=cudagraphs),
        verbs=(doing, done),
        how=how,
        ready=f"{done} {how}",
    )
    return compiled.start(backend, reference, fallback=lambda: reference)
