"""Models for the model tests, built no bigger than a test needs (the full-size transformers
take seconds to build and tens of seconds per forward on two cores):

- `on_meta(name)`: the registered model on the meta device: every shape, the metadata and
  the graph, no memory and no initialisation. For parameter counts, metadata, state-dict
  layouts, wrong-input checks and the operator check of an export.
- `small(name)`: a reduced network of the registered model (fewer and narrower blocks) that
  takes the same inputs, for shape, batch, export-with-numbers and gradient checks.
  `REDUCED` says how each model is reduced; every registered model has an entry.

Full-size models with real numbers are built by the parity tests themselves.
"""

from __future__ import annotations

import dataclasses

import torch

import models
from models import mvit

# The build options of each model's reduced network: one block per stage (X3D, SlowFast)
# or one block (Motionformer), a fraction of the widths. The options tests vary every
# option from these (tests/test_models.py), so a value here must differ from OTHER_VALUE's.
REDUCED = {
    **{
        name: {"depth_factor": 0.2, "width_factor": 0.5, "bottleneck_factor": 1.0}
        for name in ("x3d_xs", "x3d_s", "x3d_m", "x3d_l")
    },
    "slowfast_r50": {"width": 16, "depths": (1, 1, 1, 1)},
    "avslowfast_r50": {"width": 16, "depths": (1, 1, 1, 1)},
    **{
        name: {"depth": 1, "embed_dim": 16, "heads": 2}
        for name in ("motionformer_b", "motionformer_b_hr", "motionformer_b_l")
    },
    # MViT takes no build options: its config is reduced instead (`small`), one block per
    # stage at a sixth of the width, which keeps every stage's pooling.
    "mvit_v1_b": {},
    "mvit_v2_s": {},
}
_MVIT_REDUCED = {"embed_dim": 16, "depths": (1, 1, 1, 1)}


def on_meta(name: str, **kwargs) -> torch.nn.Module:
    """`models.create(name, **kwargs)` on the meta device (eval mode, no weights)."""
    with torch.device("meta"):
        return models.create(name, **kwargs)


def meta_inputs(model: torch.nn.Module, batch: int = 1) -> tuple[torch.Tensor, ...]:
    """`model.example_inputs(batch)` as meta tensors (for a model on the meta device)."""
    return tuple(x.to("meta") for x in model.example_inputs(batch=batch))


def small(name: str, seed: int = 0) -> torch.nn.Module:
    """The reduced network of registered model `name` in eval mode, drawn from `seed`: the
    same `meta` (inputs, labels) as the full model, other blocks."""
    options = REDUCED[name]
    if not name.startswith("mvit_"):
        return models.create(name, seed=seed, **options)
    full = on_meta(name)
    cfg = dataclasses.replace(full.cfg, **_MVIT_REDUCED)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return mvit.MViT(cfg, full.meta).eval()
