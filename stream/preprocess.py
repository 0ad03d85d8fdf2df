"""Turn captured BGR uint8 clips into model inputs, on the engine's device.

The transform is the one the Kinetics models were evaluated with (PySlowFast /
pytorchvideo test pipeline): RGB in [0, 1], short side resized with bilinear
interpolation (align_corners=False, no antialias, as pytorchvideo's ShortSideScale),
a centre crop (torchvision's rounding of the offsets), then per-channel normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(new_h, new_w) with the short side = `short_side` (pytorchvideo's floor rounding)."""
    if width < height:
        return int(math.floor(height / width * short_side)), short_side
    return short_side, int(math.floor(width / height * short_side))


class Preprocessor:
    """Per-pathway clip → (1, 3, T, crop, crop) tensor, on `device` in `dtype`."""

    def __init__(
        self,
        *,
        short_side: int,
        crop: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if crop > short_side:
            raise ValueError(f"crop {crop} is larger than the short side {short_side}")
        self.short_side = short_side
        self.crop = crop
        self.device = torch.device(device)
        self.dtype = dtype
        # x/255 then (x - mean)/std, folded into one multiply-add; (1, 3, 1, 1) so they
        # broadcast over (T, 3, H, W).
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t

    def __call__(self, clips: Sequence[np.ndarray]) -> tuple[torch.Tensor, ...]:
        return tuple(self.clip(c) for c in clips)

    @torch.inference_mode()
    def clip(self, frames: np.ndarray) -> torch.Tensor:
        """(T, H, W, 3) uint8 BGR → (1, 3, T, crop, crop).

        The resize runs on the full frame in float, channels-last (a view of the
        captured layout); the channel flip and normalisation run after the crop, on
        the small tensor.
        """
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
        x = torch.from_numpy(frames).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float()  # (T, H, W, BGR) -> (T, BGR, H, W), channels-last memory
        height, width = x.shape[-2:]
        new_h, new_w = short_side_size(height, width, self.short_side)
        if (new_h, new_w) != (height, width):
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
        top = int(round((new_h - self.crop) / 2.0))
        left = int(round((new_w - self.crop) / 2.0))
        x = x[:, :, top : top + self.crop, left : left + self.crop]
        x = x.flip(1) * self._scale + self._shift  # BGR -> RGB, then [0, 255] -> normalised
        # (T, 3, crop, crop) -> (1, 3, T, crop, crop)
        return x.permute(1, 0, 2, 3).unsqueeze(0).to(self.dtype).contiguous()
