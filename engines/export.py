"""The one way a model becomes a graph for a compiler: `torch.export` at the window's
static shapes. The CPU engine (AOTInductor), the TensorRT engine and the operator check
(engines/tensorrt_ops.py) all start from it, so that what the check proves is what the
engines compile."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def export(
    model: torch.nn.Module, example_inputs: Sequence[torch.Tensor]
) -> torch.export.ExportedProgram:
    """`torch.export` at the inputs' static shapes, as `torch_tensorrt.dynamo.trace` does
    (non-strict, grad off).

    torch.export captures the whole forward as one graph or raises: there is no graph
    break to fall back on, so success means one graph.
    """
    with torch.no_grad():
        return torch.export.export(model.eval(), tuple(example_inputs), strict=False)
