"""What one call of a tiny convolution costs on the CPU: squeeze-excite's first layer of
X3D's res4 (216 -> 16 channels over a clip's mean, 3,456 multiply-adds), as the
compiled engine called it before (oneDNN's convolution with pre-packed weights, what
inductor's freezing emits), and as the broadcast multiply and sum it becomes now
(`engines.inductor.tiny_convolutions_as_sums`), here in eager PyTorch; MKL's packed
linear for scale. Means over `--calls` calls after 50 warm-up calls, at 1 and 2 threads,
with glibc's malloc set as a CPU engine sets it for its process (`keep_freed_memory`).

    python benchmarks/conv_call.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engines.malloc import keep_freed_memory


def per_call_us(fn, calls: int) -> float:
    for _ in range(50):
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--channels", default="216,16", help="in,out")
    args = p.parse_args()
    keep_freed_memory()
    c_in, c_out = (int(c) for c in args.channels.split(","))
    x = torch.randn(1, c_in, 1, 1, 1).contiguous(memory_format=torch.channels_last_3d)
    w, b = torch.randn(c_out, c_in, 1, 1, 1), torch.randn(c_out)
    zeros, ones = [0, 0, 0], [1, 1, 1]
    packed = torch.ops.mkldnn._reorder_convolution_weight(w, zeros, ones, ones, 1, x.shape)
    w2 = w.view(c_out, c_in)
    mkl = torch.ops.mkl._mkl_reorder_linear_weight(w2, 1)
    x2, w3 = x.view(1, 1, c_in), w.view(1, c_out, c_in)
    variants = {
        "oneDNN convolution (pre-packed)": lambda: torch.ops.mkldnn._convolution_pointwise(
            x, packed, b, zeros, ones, ones, 1, "none", [], ""
        ),
        "multiply and sum (eager)": lambda: (x2 * w3).sum(-1).add_(b),
        "MKL linear (packed)": lambda: torch.ops.mkl._mkl_linear(x.view(1, c_in), mkl, w2, b, 1),
    }
    print(
        f"# {c_in} -> {c_out} channels over a (1, {c_in}, 1, 1, 1) input; torch {torch.__version__}"
    )
    print("| call | 1 thread | 2 threads |")
    print("|---|---|---|")
    with torch.no_grad():
        for name, fn in variants.items():
            us = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                us.append(per_call_us(fn, args.calls))
            print(f"| {name} | {us[0]:.1f} us | {us[1]:.1f} us |")


if __name__ == "__main__":
    main()
