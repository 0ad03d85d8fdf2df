"""Turn captured BGR uint8 clips into model inputs, on the engine's device.

The transform is the one the Kinetics models were evaluated with (PySlowFast /
pytorchvideo test pipeline): RGB in [0, 1], short side resized with bilinear
interpolation (align_corners=False, no antialias, as pytorchvideo's ShortSideScale),
a centre crop (torchvision's rounding of the offsets), then per-channel normalisation.

Only the crop's pixels are computed, straight from the uint8 frames: per frame geometry,
the source rows and columns of the crop and their bilinear weights are worked out once,
as torch's `upsample_bilinear2d` works them out (see `bilinear_taps`), with the channel
flip and the normalisation folded into the horizontal weights. Resizing whole frames in
float and then cropping (what the reference does) converts and interpolates about three
times as many pixels. Frames may lie anywhere in a flat buffer (`Frames`), so the capture
ring's slots are read in place, without copying them out first.

On the CPU the blend runs as one fused loop (numba, when installed: a fraction of the
CPU time of resizing then cropping; docs/performance.md has the measurements); otherwise,
and on GPUs, as a few torch operations. Either runs single-threaded on the CPU: the step is
too small to gain from a second thread and, on a machine whose other core is busy with
the capture process, waiting for that thread is what made its slow tail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from stream.pipeline.ring import Frames

log = logging.getLogger("stream.preprocess")

#: Plans kept per Preprocessor (one per frame geometry; training crops vary it).
_PLAN_CACHE = 16


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(new_h, new_w) with the short side = `short_side` (pytorchvideo's floor rounding)."""
    if width < height:
        return math.floor(height / width * short_side), short_side
    return short_side, math.floor(width / height * short_side)


def bilinear_taps(in_size: int, out_size: int, start: int, count: int) -> tuple[np.ndarray, ...]:
    """(i0, i1, w0, w1): source indices and weights of outputs `start` … `start + count - 1`
    of a bilinear resize from `in_size` to `out_size` samples.

    As torch's `upsample_bilinear2d` (align_corners=False) computes them
    (aten/src/ATen/native/UpSample.h: `area_pixel_compute_source_index`,
    `guard_index_and_lambda`): in float32, scale = in / out, source position
    scale · (dst + 0.5) − 0.5 rounded once (the kernels compile it to a fused
    multiply-add; rounding twice moves a weight by up to 3e-5 at 640 pixels), clamped at 0;
    the last sample's second tap is itself. Equal sizes copy.
    """
    dst = np.arange(start, start + count, dtype=np.int64)
    if in_size == out_size:
        return dst, dst.copy(), np.ones(count, np.float32), np.zeros(count, np.float32)
    scale = np.float32(in_size) / np.float32(out_size)
    half = (dst.astype(np.float32) + np.float32(0.5)).astype(np.float64)
    # float32 × float32 is exact in float64, and so is subtracting 0.5 from it here: one
    # rounding to float32, as a fused multiply-add
    src = np.maximum((np.float64(scale) * half - 0.5).astype(np.float32), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, (np.float32(1) - w1).astype(np.float32), w1


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Where the crop's pixels come from in frames of one geometry, and with what weights."""

    rows: np.ndarray  # (2, crop) int64: the two source rows of each output row
    wy: np.ndarray  # (2, crop) float32: their weights
    col0: int  # first byte of each source row that is used
    span: int  # bytes of each source row that are used
    cols: (
        np.ndarray
    )  # (2, crop) int64: byte offset (from col0) of the two source pixels of each output column
    wx: np.ndarray  # (2, 3, crop) float32: their weights per RGB channel, times 1 / (255 std)
    shift: np.ndarray  # (3,) float32: -mean / std


@contextlib.contextmanager
def _one_thread():
    """torch's intra-op CPU threads down to one for small work (see the module docstring);
    kernels on a GPU are not affected."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class Preprocessor:
    """Per-pathway clip → (1, 3, T, crop, crop) tensor, on `device` in `dtype`.

    `fused`: blend with the numba kernel (CPU only); None (default) uses it when the
    device is the CPU and numba is installed, else torch operations.
    """

    def __init__(
        self,
        *,
        short_side: int,
        crop: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        fused: bool | None = None,
    ):
        if crop > short_side:
            raise ValueError(f"crop {crop} is larger than the short side {short_side}")
        self.short_side = short_side
        self.crop = crop
        self.device = torch.device(device)
        self.dtype = dtype
        # x/255 then (x - mean)/std, folded into one multiply-add per channel (RGB)
        std64 = np.asarray(std, dtype=np.float64)
        self._scale = (1.0 / (255.0 * std64)).astype(np.float32)
        self._shift = (-np.asarray(mean, dtype=np.float64) / std64).astype(np.float32)
        if fused and self.device.type != "cpu":
            raise ValueError("the fused preprocessing kernel runs on the CPU only")
        self._kernel = (
            _fused_kernel() if fused or (fused is None and self.device.type == "cpu") else None
        )
        if fused and self._kernel is None:
            raise ValueError("the fused preprocessing kernel needs numba: pip install numba")
        self._plans: dict[tuple[int, int], _Plan] = {}
        self._device_plans: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}

    @property
    def fused(self) -> bool:
        return self._kernel is not None

    def __call__(
        self, clips: Sequence[np.ndarray | Frames], seqs: Sequence[np.ndarray] | None = None
    ) -> tuple[torch.Tensor, ...]:
        """One tensor per pathway. With the frames' ring sequence numbers, a pathway whose
        frames all appear in the longest one (SlowFast's slow in its fast) is gathered
        from that one's result instead of being preprocessed again."""
        clips = [c if isinstance(c, Frames) else Frames.of(c) for c in clips]
        if seqs is None or len(clips) == 1:
            return tuple(self.frames(c) for c in clips)
        longest = max(range(len(clips)), key=lambda i: len(seqs[i]))
        base = self.frames(clips[longest])
        where = {int(s): j for j, s in enumerate(seqs[longest])}
        out = []
        for i, clip in enumerate(clips):
            idx = [where.get(int(s)) for s in seqs[i]]
            if i == longest:
                out.append(base)
            elif None in idx:
                out.append(self.frames(clip))
            else:
                with _one_thread():
                    out.append(base[:, :, idx].contiguous())  # (1, 3, T_i, crop, crop)
        return tuple(out)

    def clip(self, frames: np.ndarray) -> torch.Tensor:
        """(T, H, W, 3) uint8 BGR → (1, 3, T, crop, crop)."""
        return self.frames(Frames.of(frames))

    @torch.inference_mode()
    def frames(self, frames: Frames) -> torch.Tensor:
        """`Frames` (e.g. ring slots in place) → (1, 3, T, crop, crop)."""
        plan = self._plan(frames.height, frames.width)
        with _one_thread():
            if self._kernel is not None:
                x = torch.empty(
                    (1, 3, len(frames), self.crop, self.crop)
                )  # torch's alignment (64 bytes)
                tmp = np.empty(plan.span, dtype=np.float32)
                self._kernel(
                    frames.buffer,
                    frames.offsets,
                    frames.width * 3,
                    plan.rows,
                    plan.wy,
                    plan.col0,
                    plan.cols,
                    plan.wx,
                    plan.shift,
                    tmp,
                    x.numpy()[0],
                )
            else:
                x = self._blend_torch(frames, plan)
            return x.to(self.dtype) if x.dtype != self.dtype else x

    def warmup(self, height: int, width: int) -> None:
        """Plan this geometry (and touch what it allocates) now rather than in the first window."""
        self.clip(np.zeros((1, height, width, 3), np.uint8))

    # -- internals -------------------------------------------------------------------

    def _plan(self, height: int, width: int) -> _Plan:
        plan = self._plans.get((height, width))
        if plan is not None:
            return plan
        new_h, new_w = short_side_size(height, width, self.short_side)
        top = round((new_h - self.crop) / 2.0)
        left = round((new_w - self.crop) / 2.0)
        y0, y1, wy0, wy1 = bilinear_taps(height, new_h, top, self.crop)
        x0, x1, wx0, wx1 = bilinear_taps(width, new_w, left, self.crop)
        first = int(x0.min())
        wx = np.stack([wx0, wx1])[:, None, :] * self._scale[None, :, None]  # (2, RGB, crop)
        plan = _Plan(
            rows=np.stack([y0, y1]),
            wy=np.stack([wy0, wy1]),
            col0=first * 3,
            span=(int(x1.max()) - first + 1) * 3,
            cols=np.stack([x0, x1]) * 3 - first * 3,
            wx=wx.astype(np.float32),
            shift=self._shift,
        )
        if len(self._plans) >= _PLAN_CACHE:
            self._plans.pop(next(iter(self._plans)))
            self._device_plans.clear()
        self._plans[(height, width)] = plan
        return plan

    def _blend_torch(self, frames: Frames, plan: _Plan) -> torch.Tensor:
        """The same blend as `_blend` in torch operations, on `device`."""
        c, n, row = self.crop, len(frames), frames.width * 3
        key = (frames.height, frames.width)
        if key not in self._device_plans:
            planar = (
                plan.cols[:, None, :] + np.array([2, 1, 0])[None, :, None]
            )  # (2, RGB, crop): BGR bytes
            self._device_plans[key] = (
                torch.from_numpy(plan.rows.reshape(-1)),
                torch.from_numpy(plan.wy[1]).view(c, 1).to(self.device),
                torch.from_numpy(planar.reshape(2, -1)).to(self.device),
                torch.from_numpy(plan.wx.reshape(2, -1)).to(self.device),
                torch.from_numpy(np.repeat(plan.shift, c)).to(self.device),
            )
        rows, wy1, cols, wx, shift = self._device_plans[key]
        src = torch.from_numpy(frames.buffer)
        picked = torch.empty((n, 2 * c, plan.span), dtype=torch.uint8)
        for i, off in enumerate(frames.offsets.tolist()):
            frame = src[off : off + frames.height * row].view(frames.height, row)
            torch.index_select(frame[:, plan.col0 : plan.col0 + plan.span], 0, rows, out=picked[i])
        x = picked.to(self.device, non_blocking=True).float()  # (T, 2 crop, span): rows y0 then y1
        x = torch.lerp(x[:, :c], x[:, c:], wy1)  # (T, crop, span)
        index = cols.view(2, 1, 1, 3 * c).expand(2, n, c, 3 * c)
        out = torch.gather(x, 2, index[0]).mul_(wx[0])
        out.addcmul_(torch.gather(x, 2, index[1]), wx[1]).add_(shift)  # (T, crop, RGB * crop)
        # (T, crop, 3, crop) -> (1, 3, T, crop, crop)
        return out.view(n, c, 3, c).permute(2, 0, 1, 3).unsqueeze(0).contiguous()


def _blend(buffer, offsets, row_stride, rows, wy, col0, cols, wx, shift, tmp, out):
    """out[ch, t, i, j] for the crop: per output row, the two source rows blended over the
    used span (vectorised), then per output pixel the two columns, per RGB channel."""
    span = tmp.shape[0]
    crop_h, crop_w = rows.shape[1], cols.shape[1]
    for t in range(offsets.shape[0]):
        base = offsets[t] + col0
        for i in range(crop_h):
            r0 = buffer[base + rows[0, i] * row_stride : base + rows[0, i] * row_stride + span]
            r1 = buffer[base + rows[1, i] * row_stride : base + rows[1, i] * row_stride + span]
            v0, v1 = wy[0, i], wy[1, i]
            for q in range(span):
                tmp[q] = np.float32(r0[q]) * v0 + np.float32(r1[q]) * v1
            for ch in range(3):
                bgr = 2 - ch
                sh = shift[ch]
                for j in range(crop_w):
                    out[ch, t, i, j] = (
                        tmp[cols[0, j] + bgr] * wx[0, ch, j]
                        + tmp[cols[1, j] + bgr] * wx[1, ch, j]
                        + sh
                    )


_KERNEL: list = []  # [the compiled kernel, or None], filled on first use


def _fused_kernel():
    """`_blend` compiled by numba, or None without numba (or when it fails to compile).

    Compiled on first use, for the one signature the Preprocessor calls it with, and
    cached on disk by numba (`__pycache__` beside this file, or NUMBA_CACHE_DIR): a later
    process loads it instead of compiling it again, which would be most of the kernel's
    share of every start (docs/performance.md). Where numba finds no writable directory,
    it is compiled without the cache, with one warning.
    """
    if not _KERNEL:
        try:
            import numba
        except ImportError:
            _KERNEL.append(None)
            return None
        t = numba.types
        signature = t.void(
            t.uint8[::1],
            t.int64[::1],
            t.int64,
            t.int64[:, ::1],
            t.float32[:, ::1],
            t.int64,
            t.int64[:, ::1],
            t.float32[:, :, ::1],
            t.float32[::1],
            t.float32[::1],
            t.float32[:, :, :, ::1],
        )

        def build(cache: bool):
            return numba.njit(
                signature, nogil=True, boundscheck=False, error_model="numpy", cache=cache
            )(_blend)

        try:
            kernel = build(cache=True)
        except Exception as exc:  # noqa: BLE001 (no writable cache directory, or a numba that does not work)
            try:
                kernel = build(cache=False)
            except Exception:  # noqa: BLE001 (a numba that does not work here: the torch operations do)
                log.warning(
                    "numba could not compile the preprocessing kernel (%s): using torch operations",
                    exc,
                )
                kernel = None
            else:
                log.warning(
                    "numba cannot cache the preprocessing kernel (%s): it is compiled again at "
                    "every start; set NUMBA_CACHE_DIR to a writable directory",
                    exc,
                )
        _KERNEL.append(kernel)
    return _KERNEL[0]


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
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
        return np.where(
            f >= min_log_hz,
            min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep,
            f / f_sp,
        )

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return np.where(
            m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m
        )

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

    def __init__(
        self, audio, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ):
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
            x,
            n_fft=self.cfg.n_fft,
            hop_length=self.cfg.hop_length,
            window=self._window,
            center=False,
            return_complex=True,
        )  # (n_fft // 2 + 1, frames)
        mel = self._fb @ spec.abs().square()  # (n_mels, frames)
        logmel = (torch.log(mel + self.cfg.log_eps) - self.cfg.mean) / self.cfg.std
        # (n_mels, frames) -> (1, 1, frames, n_mels): time first, as the model takes it
        return (
            logmel.t().reshape(1, 1, self.cfg.frames, self.cfg.n_mels).to(self.dtype).contiguous()
        )
