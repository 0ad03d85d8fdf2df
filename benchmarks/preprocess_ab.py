"""Preprocessing of one window, old way against new, interleaved in one process.

  resize-then-crop   the whole frames to float, F.interpolate to the short side, crop,
                     flip, normalise (the transform as pytorchvideo writes it; what
                     stream.pipeline.preprocess did before it computed the crop only)
  crop-only          stream.pipeline.preprocess.Preprocessor: the crop's pixels only, from uint8,
                     fused kernel (numba) or torch operations

Wall time and the thread's CPU time per call, p50 / p90 / p99 / max, over `--runs` rounds
in which every variant runs once (so that a busy machine slows them alike). On a shared
machine compare the CPU times; the wall times show what waiting for threads adds.

    python benchmarks/preprocess_ab.py --size 640x480 --frames 4 --short-side 182 --crop 182
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stream.pipeline.preprocess import Preprocessor, short_side_size
from stream.pipeline.stats import STATS, summary_ms

MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)


@torch.inference_mode()
def resize_then_crop(frames: np.ndarray, short_side: int, crop: int) -> torch.Tensor:
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # channels-last memory
    new_h, new_w = short_side_size(*x.shape[-2:], short_side)
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    top, left = round((new_h - crop) / 2.0), round((new_w - crop) / 2.0)
    x = x[:, :, top : top + crop, left : left + crop]
    scale = 1.0 / (255.0 * torch.tensor(STD).view(1, 3, 1, 1))
    shift = -torch.tensor(MEAN).view(1, 3, 1, 1) / torch.tensor(STD).view(1, 3, 1, 1)
    x = x.flip(1) * scale + shift
    return x.permute(1, 0, 2, 3).unsqueeze(0).contiguous()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="640x480", help="frame WIDTHxHEIGHT")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--short-side", type=int, default=182)
    p.add_argument("--crop", type=int, default=182)
    p.add_argument("--runs", type=int, default=300)
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    frames = np.random.default_rng(0).integers(
        0, 256, (args.frames, height, width, 3), dtype=np.uint8
    )
    threads = torch.get_num_threads()

    def one_thread(fn):
        def run(x):
            torch.set_num_threads(1)
            try:
                return fn(x)
            finally:
                torch.set_num_threads(threads)

        return run

    kw = {"short_side": args.short_side, "crop": args.crop, "mean": MEAN, "std": STD}
    variants = {
        f"resize-then-crop, {threads} threads": lambda x: resize_then_crop(
            x, args.short_side, args.crop
        ),
        "resize-then-crop, 1 thread": one_thread(
            lambda x: resize_then_crop(x, args.short_side, args.crop)
        ),
        "crop-only, torch ops": Preprocessor(**kw, fused=False).clip,
    }
    fused = Preprocessor(**kw)
    if fused.fused:
        started = time.perf_counter()
        fused.warmup(height, width)
        print(f"numba kernel compiled in {time.perf_counter() - started:.2f} s")
        variants["crop-only, fused (numba)"] = fused.clip
    ref = resize_then_crop(frames, args.short_side, args.crop)
    for name, fn in variants.items():
        err = (fn(frames) - ref).abs().max().item()
        print(f"{name:34s} max |difference| from resize-then-crop {err:.2e}")
    wall = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    for _ in range(args.runs):
        for name, fn in variants.items():
            t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            fn(frames)
            cpu[name].append(time.thread_time_ns() - c0)
            wall[name].append(time.perf_counter_ns() - t0)
    print(
        f"{args.frames} frames {width}x{height} -> {args.crop}x{args.crop}, {args.runs} rounds; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    print(f"{'ms':34s} {'wall p50 / p90 / p99 / max':>30s}   {'CPU p50 / p90':>14s}")
    for name in variants:
        w, c = summary_ms(np.array(wall[name]) / 1e6), summary_ms(np.array(cpu[name]) / 1e6)
        shown = " / ".join(f"{w[k]:6.2f}" for k in STATS)
        print(f"{name:34s} {shown}   {c['p50']:5.2f} / {c['p90']:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
