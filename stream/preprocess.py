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

    def __call__(
        self, clips: Sequence[np.ndarray], seqs: Sequence[np.ndarray] | None = None
    ) -> tuple[torch.Tensor, ...]:
        """One tensor per pathway. With the frames' ring sequence numbers, a pathway whose
        frames all appear in the longest one (SlowFast's slow in its fast) is gathered
        from that one's result instead of being preprocessed again."""
        if seqs is None or len(clips) == 1:
            return tuple(self.clip(c) for c in clips)
        longest = max(range(len(clips)), key=lambda i: len(seqs[i]))
        base = self.clip(clips[longest])
        where = {int(s): j for j, s in enumerate(seqs[longest])}
        out = []
        for i, clip in enumerate(clips):
            idx = [where.get(int(s)) for s in seqs[i]]
            if i == longest:
                out.append(base)
            elif None in idx:
                out.append(self.clip(clip))
            else:
                out.append(base[:, :, idx].contiguous())  # (1, 3, T_i, crop, crop)
        return tuple(out)

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


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters on the Slaney mel scale, area-normalised.

    The same construction as librosa.filters.mel's defaults (htk=False, norm="slaney"):
    linear below 1 kHz, logarithmic above, each filter scaled by 2 / its bandwidth in Hz.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


class LogMel:
    """Mono samples → normalised log-mel spectrogram (1, 1, frames, n_mels) on `device`.

    Power spectrogram of a periodic Hann window (torch.stft, no centre padding: the
    window's samples are exactly the frames' support), Slaney mel filters, natural log
    with `log_eps`, then (x - mean) / std. Settings come from `models.AudioInput`.
    """

    def __init__(self, audio, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.cfg = audio
        self.device = torch.device(device)
        self.dtype = dtype
        self.samples = (audio.frames - 1) * audio.hop_length + audio.n_fft
        self._window = torch.hann_window(audio.n_fft, periodic=True, device=self.device)
        fb = mel_filterbank(audio.sample_rate, audio.n_fft, audio.n_mels)
        self._fb = torch.from_numpy(fb).to(self.device)  # (n_mels, n_fft // 2 + 1)

    @torch.inference_mode()
    def __call__(self, samples: np.ndarray) -> torch.Tensor:
        if samples.shape != (self.samples,):
            raise ValueError(f"expected {self.samples} mono samples, got {samples.shape}")
        x = torch.from_numpy(samples).to(self.device, torch.float32, non_blocking=True)
        spec = torch.stft(
            x, n_fft=self.cfg.n_fft, hop_length=self.cfg.hop_length, window=self._window,
            center=False, return_complex=True,
        )  # (n_fft // 2 + 1, frames)
        mel = self._fb @ spec.abs().square()  # (n_mels, frames)
        logmel = (torch.log(mel + self.cfg.log_eps) - self.cfg.mean) / self.cfg.std
        # (n_mels, frames) -> (1, 1, frames, n_mels): time first, as the model takes it
        return logmel.t().reshape(1, 1, self.cfg.frames, self.cfg.n_mels).to(self.dtype).contiguous()
