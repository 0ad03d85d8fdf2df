"""Preprocessing numerics against an independent reference (OpenCV's bilinear resize).

pytorchvideo's transforms no longer import with torchvision 0.29, so the reference is
OpenCV: INTER_LINEAR on float32 images uses the same half-pixel-centre bilinear
interpolation as torch's align_corners=False (without antialias)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stream.pipeline.preprocess import Preprocessor, bilinear_taps, short_side_size
from stream.pipeline.ring import FrameRing, Frames

MEAN, STD = (0.45, 0.40, 0.35), (0.225, 0.25, 0.2)
# The blend runs as a numba kernel where numba is installed, else as torch operations:
# both are checked wherever numba is there.
PATHS = [
    False,
    pytest.param(
        True,
        marks=pytest.mark.skipif(
            Preprocessor(short_side=8, crop=8, mean=MEAN, std=STD).fused is False,
            reason="numba is not installed",
        ),
    ),
]


def resize_then_crop(frames: np.ndarray, short_side: int, crop: int) -> torch.Tensor:
    """The transform as pytorchvideo's test pipeline writes it: the whole frame to float,
    ShortSideScale (F.interpolate, bilinear, align_corners=False), centre crop, normalise."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (T, BGR, H, W)
    new_h, new_w = short_side_size(*x.shape[-2:], short_side)
    if (new_h, new_w) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    top, left = round((new_h - crop) / 2.0), round((new_w - crop) / 2.0)
    x = x[:, :, top : top + crop, left : left + crop].flip(1) / 255.0  # RGB
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x.permute(1, 0, 2, 3).unsqueeze(0)  # (1, 3, T, crop, crop)


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize(
    ("hw", "short_side", "crop"),
    [
        ((480, 640), 182, 182),  # X3D-XS on a webcam
        ((640, 480), 182, 160),  # portrait
        ((720, 1280), 256, 224),
        ((240, 320), 256, 256),  # upscaling, crop == short side
        ((301, 457), 182, 100),  # odd sizes
        ((182, 300), 182, 182),  # short side already right: rows copied
        ((481, 641), 224, 224),
        ((3, 5), 4, 4),  # tiny: every tap at an edge
    ],
)
def test_crop_only_blend_matches_resize_then_crop(fused, hw, short_side, crop):
    rng = np.random.default_rng(sum(hw))
    frames = rng.integers(0, 256, size=(3, *hw, 3), dtype=np.uint8)
    pre = Preprocessor(short_side=short_side, crop=crop, mean=MEAN, std=STD, fused=fused)
    ours = pre.clip(frames)
    assert (
        ours.shape == (1, 3, 3, crop, crop) and ours.dtype == torch.float32 and ours.is_contiguous()
    )
    # 1e-5 after dividing by std is under 1/1000 of a grey level: the same taps and
    # weights as torch's kernel, only the order of the float32 multiply-adds differs
    torch.testing.assert_close(ours, resize_then_crop(frames, short_side, crop), rtol=0, atol=1e-5)


def test_taps_are_torchs():
    """bilinear_taps against upsample_bilinear2d itself: resizing an image that holds each
    column's index (and its next) recovers the index and weight of every output column."""
    for n_in, n_out in [(640, 242), (480, 182), (320, 341), (457, 275), (5, 4), (7, 7)]:
        i0, i1, w0, w1 = bilinear_taps(n_in, n_out, 0, n_out)
        ramp = torch.arange(n_in, dtype=torch.float32).view(1, 1, 1, n_in)
        got = (
            F.interpolate(ramp, size=(1, n_out), mode="bilinear", align_corners=False)
            .view(-1)
            .numpy()
        )
        np.testing.assert_allclose(w0 * i0 + w1 * i1, got, rtol=0, atol=1e-4)
        assert ((i1 == i0 + 1) | (i1 == i0)).all() and (i1 < n_in).all()
        np.testing.assert_allclose(w0 + w1, 1, atol=1e-6)


@pytest.mark.parametrize("hw", [(480, 640), (720, 540), (182, 182), (300, 301)])
def test_matches_reference_test_transform(hw):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(4, *hw, 3), dtype=np.uint8)  # BGR
    mean, std = (0.45, 0.40, 0.35), (0.225, 0.25, 0.2)
    ours = Preprocessor(short_side=182, crop=160, mean=mean, std=std).clip(frames)

    h, w = hw
    new_h, new_w = (182, int(w / h * 182)) if h <= w else (int(h / w * 182), 182)
    top, left = round((new_h - 160) / 2), round((new_w - 160) / 2)
    ref = []
    for f in frames:
        rgb = f[..., ::-1].astype(np.float32) / 255.0
        r = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)[
            top : top + 160, left : left + 160
        ]
        ref.append((r - np.array(mean, np.float32)) / np.array(std, np.float32))
    ref = torch.from_numpy(np.stack(ref)).permute(3, 0, 1, 2)  # (T,H,W,C) -> (C,T,H,W)
    assert ours.shape == (1, 3, 4, 160, 160)
    # 1e-3 after dividing by std is under 0.06 of one grey level
    torch.testing.assert_close(ours[0], ref, rtol=0, atol=1e-3)


@pytest.mark.parametrize("fused", PATHS)
def test_channel_order_and_normalisation_by_hand(fused):
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    frames[..., 0] = 255  # pure blue in BGR
    x = Preprocessor(
        short_side=8, crop=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), fused=fused
    ).clip(frames)
    assert torch.allclose(x[0, 2], torch.ones(2, 8, 8))  # B lands in the last (RGB) channel
    assert torch.allclose(x[0, :2], -torch.ones(2, 2, 8, 8))


def test_short_side_size_and_bad_input():
    assert short_side_size(480, 640, 182) == (182, 242)
    assert short_side_size(640, 480, 256) == (341, 256)
    with pytest.raises(ValueError):
        Preprocessor(short_side=100, crop=160, mean=(0,) * 3, std=(1,) * 3)
    with pytest.raises(ValueError):
        Preprocessor(short_side=182, crop=160, mean=(0,) * 3, std=(1,) * 3).clip(
            np.zeros((4, 8, 8), np.uint8)
        )


@pytest.mark.parametrize("fused", PATHS)
def test_shared_frames_are_preprocessed_once_and_gathered(fused):
    rng = np.random.default_rng(3)
    fast = rng.integers(0, 256, size=(8, 60, 80, 3), dtype=np.uint8)
    fast_seqs = np.arange(100, 108)
    slow_seqs = fast_seqs[[0, 3, 7]]
    slow = fast[[0, 3, 7]]
    pre = Preprocessor(short_side=48, crop=48, mean=(0.45,) * 3, std=(0.225,) * 3, fused=fused)
    s, f = pre([slow, fast], [slow_seqs, fast_seqs])
    torch.testing.assert_close(s, pre.clip(slow))
    torch.testing.assert_close(f, pre.clip(fast))
    other = np.array([100, 999, 107])  # not a subset: preprocessed on its own
    s2, _ = pre([slow, fast], [other, fast_seqs])
    torch.testing.assert_close(s2, pre.clip(slow))


@pytest.mark.parametrize("fused", PATHS)
def test_frames_in_place_in_a_ring(fused):
    """Frames read where they lie in the ring's slots (slot size not a multiple of a row,
    wrapped around) give what the same frames copied out give; SlowFast's slow pathway is
    still gathered from its fast one."""
    rng = np.random.default_rng(5)
    pre = Preprocessor(short_side=40, crop=32, mean=MEAN, std=STD, fused=fused)
    with FrameRing.create(6, 45, 61, 3) as ring:  # 45*61*3 bytes: slots padded to 64
        written = [rng.integers(0, 256, size=ring.shape, dtype=np.uint8) for _ in range(9)]
        for i, f in enumerate(written):
            ring.write(f, i)
        fast_seqs, slow_seqs = np.array([3, 5, 6, 8]), np.array([3, 8])
        copies = np.stack([written[s] for s in fast_seqs])
        slow, fast = pre([ring.frames(slow_seqs), ring.frames(fast_seqs)], [slow_seqs, fast_seqs])
        torch.testing.assert_close(fast, pre.clip(copies), rtol=0, atol=0)
        torch.testing.assert_close(slow, pre.clip(copies[[0, 3]]), rtol=0, atol=0)
        torch.testing.assert_close(fast, resize_then_crop(copies, 40, 32), rtol=0, atol=1e-5)


@pytest.mark.skipif(
    not Preprocessor(short_side=8, crop=8, mean=MEAN, std=STD).fused,
    reason="numba is not installed",
)
@pytest.mark.slow  # two processes that import torch and numba, one of them compiles
def test_fused_kernel_is_compiled_once_then_loaded_from_disk(tmp_path):
    """A second process finds the kernel in numba's on-disk cache: no compile at start-up."""
    import subprocess
    import sys

    script = (
        "from stream.pipeline.preprocess import Preprocessor, _KERNEL\n"
        "Preprocessor(short_side=8, crop=8, mean=(0.5,) * 3, std=(0.5,) * 3).warmup(8, 8)\n"
        "stats = _KERNEL[0].stats\n"
        "print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    root = Path(__file__).resolve().parent.parent

    def hits_misses() -> list[int]:
        out = subprocess.run(
            [sys.executable, "-c", script],
            check=False,
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return [int(v) for v in out.stdout.split()]

    first = hits_misses()
    assert hits_misses() == [1, 0], first  # loaded, not compiled
    assert any(tmp_path.rglob("*.nbc"))


@pytest.mark.skipif(
    not Preprocessor(short_side=8, crop=8, mean=MEAN, std=STD).fused,
    reason="numba is not installed",
)
def test_fused_kernel_without_a_writable_cache_is_compiled_without_it(monkeypatch, caplog):
    """Where numba finds no directory to cache the kernel in (every locator fails, as on a
    read-only install with no writable home), the kernel is still compiled, with one
    warning, instead of falling back to the slower torch operations."""
    import logging

    import numba.core.caching

    from stream.pipeline import preprocess

    monkeypatch.setattr(numba.core.caching.CacheImpl, "_locator_classes", [])  # nowhere to cache
    monkeypatch.setattr(preprocess, "_KERNEL", [])  # compile afresh, in this state
    with caplog.at_level(logging.WARNING, logger="stream.pipeline.preprocess"):
        pre = Preprocessor(short_side=40, crop=32, mean=MEAN, std=STD)
    assert pre.fused and preprocess._KERNEL[0] is not None
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "cannot cache the preprocessing kernel" in warning and "NUMBA_CACHE_DIR" in warning
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 48, 64, 3), dtype=np.uint8)
    expected = Preprocessor(short_side=40, crop=32, mean=MEAN, std=STD, fused=False).clip(frames)
    torch.testing.assert_close(pre.clip(frames), expected, rtol=0, atol=1e-5)


def test_frames_outside_their_buffer_are_refused():
    buf = np.zeros(4 * 5 * 3 * 2, np.uint8)
    Frames(buf, np.array([0, 60]), 4, 5)
    with pytest.raises(ValueError):
        Frames(buf, np.array([0, 61]), 4, 5)
    with pytest.raises(ValueError):
        Frames(buf, np.array([-1]), 4, 5)


def test_other_dtypes_and_non_contiguous_frames():
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 256, size=(6, 50, 70, 3), dtype=np.uint8)
    pre = Preprocessor(short_side=40, crop=40, mean=MEAN, std=STD, dtype=torch.bfloat16)
    x = pre.clip(frames[::2, :, 5:])  # strided: copied first
    assert x.dtype == torch.bfloat16
    ref = resize_then_crop(np.ascontiguousarray(frames[::2, :, 5:]), 40, 40)
    torch.testing.assert_close(x.float(), ref, rtol=1e-2, atol=2e-2)  # bfloat16: 8 bits of mantissa
