"""A tiny model for --precision auto's bf16 check (tests/test_engines.py and
tests/test_precision.py)."""

import torch


class Cancels(torch.nn.Module):
    """A model whose bf16 top-1 differs from fp32's, or not, by its scale (for
    --precision auto's check). Class 0's logit is (x * scale - x) * 1000, class 1's is 1,
    class 2's is 0.

    With scale = 1 + 2**-9, fp32 gives class 0 about 1.95 x, a clear top-1, while bf16
    rounds the scale to exactly 1, so class 0 gets 0 and class 1 wins: bf16 changes the
    top-1. With scale = 1.25 (exact in bf16) both agree. `calls` counts the forward calls
    of this instance (the fp32 model), not of the bf16 copy an engine makes of it."""

    class meta:  # stands in for ModelMeta
        name = "cancels"

    def __init__(self, scale: float):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))
        self.weights_id = f"cancels-{scale}"
        self.calls = 0

    def example_inputs(self, batch: int = 1):
        return (1.0 + 0.25 * torch.arange(batch, dtype=torch.float32)[:, None],)  # (B, 1)

    def forward(self, x):
        self.calls += 1
        class0 = (x * self.scale - x) * 1000
        return torch.cat([class0, torch.ones_like(x), torch.zeros_like(x)], dim=1)  # (B, 3)
