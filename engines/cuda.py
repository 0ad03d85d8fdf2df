"""The torch backend on CUDA, compiled for the window's fixed shapes: torch.compile and/or a
CUDA graph of the eager model, fp32, fp16 or bf16, for each of a few batch sizes.

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

Batches: a CUDA graph replays fixed shapes, so an engine that takes up to `max_batch`
windows is built for the buckets `base.bucket_sizes(max_batch)` (1, 2, 4, 8 for 8): one
graph (or one compiled graph) each, built when the engine starts. A batch runs in the
smallest bucket that holds it: its windows are copied into that bucket's input buffers,
whose other rows keep windows of earlier calls (real numbers, never uninitialised
memory), and the logits are cut back to the batch. Padding costs at most half a call;
a graph per size would cost `max_batch` captures and their memory. torch.compile compiles
each bucket once (dynamic=False): at most 8 buckets, torch's default recompile limit, up
to max_batch 128.
"""

from __future__ import annotations

import torch

from . import compiled
from .base import bucket_for, bucket_sizes, model_name
from .torch_engine import StagedEngine, TorchEngine, on_device

_DOING = {
    "compiled+cudagraphs": ("compiling", "compiled", "with torch.compile and CUDA graphs"),
    "compiled": ("compiling", "compiled", "with torch.compile"),
    "cudagraphs": ("capturing", "captured", "as a CUDA graph"),
}


def _fill(buffers: tuple[torch.Tensor, ...], inputs: tuple[torch.Tensor, ...]) -> int:
    """Copy a batch into the first rows of a bucket's input buffers (the other rows keep
    earlier windows); returns the batch size."""
    size = inputs[0].shape[0]
    for dst, src in zip(buffers, inputs, strict=True):
        if src.shape[1:] != dst.shape[1:] or size > dst.shape[0]:  # copy_ would broadcast
            raise ValueError(
                f"the CUDA graph was captured for inputs {tuple(dst.shape)}, got {tuple(src.shape)}"
            )
        dst[:size].copy_(src)
    return size


class _Padded:
    """`fn` (torch.compile'd for one bucket's shapes) on a batch of up to the bucket's
    size: a full batch as it is, a smaller one copied into the bucket's buffers, with the
    output cut back to it."""

    def __init__(self, fn, buffers: tuple[torch.Tensor, ...]):
        self.fn = fn
        self.inputs = buffers

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if inputs[0].shape[0] == self.inputs[0].shape[0]:
            return self.fn(*inputs)
        size = _fill(self.inputs, inputs)
        return self.fn(*self.inputs)[:size]


class _CudaGraph:
    """`fn` captured once on one bucket's input buffers and replayed (torch.cuda.graph).

    A batch of up to the bucket's size is copied into the buffers' first rows; the
    output is the captured tensor's first rows, which the next replay overwrites
    (callers copy it)."""

    def __init__(self, fn, buffers: tuple[torch.Tensor, ...]):
        self.inputs = buffers
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
        size = _fill(self.inputs, inputs)
        self.graph.replay()
        return self.output[:size]


class CudaEngine(StagedEngine):
    """The eager CUDA engine `reference`'s model, compiled and/or captured for each batch
    bucket of `reference.max_batch` (see the module docstring). Building it compiles or
    captures: the first three calls of each bucket happen here."""

    def __init__(self, reference: TorchEngine, *, compile: bool, cudagraphs: bool):
        mode = "+".join(m for m, on in (("compiled", compile), ("cudagraphs", cudagraphs)) if on)
        super().__init__(
            name=reference.name,
            device=reference.device,
            precision=reference.precision,
            mode=mode,
            example_inputs=reference.example_inputs,
            max_batch=reference.max_batch,
            batch_sizes=bucket_sizes(reference.max_batch),
        )
        # torch.compile's CUDA graphs want each call marked; a CUDA graph's output tensor is
        # the one its next replay overwrites.
        self._mark_step = compile and cudagraphs
        self._static_output = cudagraphs
        self._buckets: dict[int, _Padded | _CudaGraph] = {}
        with on_device(self.device), torch.inference_mode():
            if compile:
                run = torch.compile(
                    reference.model,
                    mode="reduce-overhead" if cudagraphs else None,
                    fullgraph=True,
                    dynamic=False,
                )
            for size in self.batch_sizes:
                buffers = tuple(x.clone() for x in self.example_batch(size))
                self._buckets[size] = (
                    _Padded(run, buffers) if compile else _CudaGraph(reference.model, buffers)
                )
        # Three calls each: compile, then (reduce-overhead) warm up and record the graph.
        for size in self.batch_sizes:
            inputs = self.example_batch(size)
            for _ in range(3):
                self(*inputs)

    def _forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self._mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        logits = self._buckets[bucket_for(inputs[0].shape[0], self.batch_sizes)](*inputs)
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
        max_batch=reference.max_batch,
    )
    return compiled.start(backend, reference, fallback=lambda: reference)
