"""Preprocessing numerics against an independent reference (OpenCV's bilinear resize).

pytorchvideo's transforms no longer import with torchvision 0.29, so the reference is
OpenCV: INTER_LINEAR on float32 images uses the same half-pixel-centre bilinear
interpolation as torch's align_corners=False (without antialias)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stream.preprocess import Preprocessor, short_side_size


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
        r = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)[top : top + 160, left : left + 160]
        ref.append((r - np.array(mean, np.float32)) / np.array(std, np.float32))
    ref = torch.from_numpy(np.stack(ref)).permute(3, 0, 1, 2)  # (T,H,W,C) -> (C,T,H,W)
    assert ours.shape == (1, 3, 4, 160, 160)
    # 1e-3 after dividing by std is under 0.06 of one grey level
    torch.testing.assert_close(ours[0], ref, rtol=0, atol=1e-3)


def test_channel_order_and_normalisation_by_hand():
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    frames[..., 0] = 255  # pure blue in BGR
    x = Preprocessor(short_side=8, crop=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).clip(frames)
    assert torch.allclose(x[0, 2], torch.ones(2, 8, 8))  # B lands in the last (RGB) channel
    assert torch.allclose(x[0, :2], -torch.ones(2, 2, 8, 8))


def test_short_side_size_and_bad_input():
    assert short_side_size(480, 640, 182) == (182, 242)
    assert short_side_size(640, 480, 256) == (341, 256)
    with pytest.raises(ValueError):
        Preprocessor(short_side=100, crop=160, mean=(0,) * 3, std=(1,) * 3)
    with pytest.raises(ValueError):
        Preprocessor(short_side=182, crop=160, mean=(0,) * 3, std=(1,) * 3).clip(np.zeros((4, 8, 8), np.uint8))


def test_shared_frames_are_preprocessed_once_and_gathered():
    rng = np.random.default_rng(3)
    fast = rng.integers(0, 256, size=(8, 60, 80, 3), dtype=np.uint8)
    fast_seqs = np.arange(100, 108)
    slow_seqs = fast_seqs[[0, 3, 7]]
    slow = fast[[0, 3, 7]]
    pre = Preprocessor(short_side=48, crop=48, mean=(0.45,) * 3, std=(0.225,) * 3)
    s, f = pre([slow, fast], [slow_seqs, fast_seqs])
    torch.testing.assert_close(s, pre.clip(slow))
    torch.testing.assert_close(f, pre.clip(fast))
    other = np.array([100, 999, 107])  # not a subset: preprocessed on its own
    s2, _ = pre([slow, fast], [other, fast_seqs])
    torch.testing.assert_close(s2, pre.clip(slow))
