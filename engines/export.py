"""The one way a model becomes a graph for a compiler: `torch.export` at the window's
static shapes, or with a dynamic batch dimension. The CPU engine (AOTInductor), the
TensorRT engine and the operator check (engines/tensorrt_ops.py) all start from it, so
that what the check proves is what the engines compile."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import example_batch


def export(
    model: torch.nn.Module, example_inputs: Sequence[torch.Tensor], max_batch: int = 1
) -> torch.export.ExportedProgram:
    """`torch.export` at the inputs' static shapes, as `torch_tensorrt.dynamo.trace` does
    (non-strict, grad off); with `max_batch` > 1, dim 0 of every input is one dynamic
    batch dimension of 1 to `max_batch` (`batch_dims`).

    torch.export captures the whole forward as one graph or raises: there is no graph
    break to fall back on, so success means one graph.
    """
    inputs, dynamic_shapes = batch_dims(tuple(example_inputs), max_batch)
    with torch.no_grad():
        return torch.export.export(
            model.eval(), inputs, dynamic_shapes=dynamic_shapes, strict=False
        )


def batch_dims(
    example_inputs: tuple[torch.Tensor, ...], max_batch: int
) -> tuple[tuple[torch.Tensor, ...], tuple[dict, ...] | None]:
    """(inputs to trace with, `dynamic_shapes`) for a program taking 1 to `max_batch`
    windows: the inputs' dim 0 is one shared `Dim("batch", min=1, max=max_batch)`. Traced
    from two windows: from one, torch.export specialises a dimension of size 1 to the
    constant 1 and refuses the Dim (torch 2.14: "your code specialized it to be a
    constant (1)"); from two, the range stays 1 to `max_batch`. `max_batch` 1: the
    example inputs as they are, static."""
    if max_batch == 1:
        return example_inputs, None
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    return example_batch(example_inputs, 2), tuple({0: batch} for _ in example_inputs)
