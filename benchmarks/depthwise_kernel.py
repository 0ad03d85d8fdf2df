"""X3D's depthwise 3×3×3 convolutions: oneDNN's kernel (what the compiled CPU engine
calls, weights pre-packed as inductor's freezing packs them) against a hand-written
AVX-512 kernel, on each depthwise layer's shape in X3D-XS (4×182²) and X3D-M (16×256²),
fp32, channels-last, the same input, interleaved.

The kernel is written for this comparison and is not part of the engine: register-blocked
along the width (8 outputs × 16 channels per block, the 3 weight vectors and 10 or 17
input columns of each (kd, kh) loaded once per block), masked loads for the zero padding,
the last channel vector overlapping the one before it where the channels are not a
multiple of 16, and OpenMP over the output rows. It is checked against
`F.conv3d` before it is timed. It needs g++ and a CPU with AVX-512. glibc's malloc is set
as a CPU engine sets it for its process (`keep_freed_memory`), so that oneDNN's output,
allocated on every call, is not faulted in afresh each time (ours is allocated once).

    python benchmarks/depthwise_kernel.py --rounds 30
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from interleave import interleaved

from engines.malloc import keep_freed_memory

KERNEL = r"""
#include <immintrin.h>
#include <algorithm>
#include <cstddef>

template <int WB, int S>
static inline void block(const float* x, const float* w, const float* b, float* y,
                         int D, int H, int W, int C, int od, int oh, int ow, int Wo, int c) {
  constexpr int NC = (WB - 1) * S + 3;  // input columns one block reads
  __m512 acc[WB];
  __m512 bias = _mm512_loadu_ps(b + c);
  for (int i = 0; i < WB; i++) acc[i] = bias;
  int d0 = od - 1, h0 = oh * S - 1, w0 = ow * S - 1;
  __mmask16 m[NC];
  for (int j = 0; j < NC; j++) m[j] = (w0 + j >= 0 && w0 + j < W) ? 0xFFFF : 0;
  for (int kd = 0; kd < 3; kd++) {
    int id = d0 + kd;
    if (id < 0 || id >= D) continue;
    for (int kh = 0; kh < 3; kh++) {
      int ih = h0 + kh;
      if (ih < 0 || ih >= H) continue;
      const float* xr = x + (((ptrdiff_t)id * H + ih) * W + w0) * C + c;
      const float* wt = w + (kd * 9 + kh * 3) * C + c;
      __m512 w0v = _mm512_loadu_ps(wt), w1v = _mm512_loadu_ps(wt + C),
             w2v = _mm512_loadu_ps(wt + 2 * C);
      __m512 col[NC];
      for (int j = 0; j < NC; j++) col[j] = _mm512_maskz_loadu_ps(m[j], xr + (ptrdiff_t)j * C);
      for (int i = 0; i < WB; i++) {
        acc[i] = _mm512_fmadd_ps(col[i * S], w0v, acc[i]);
        acc[i] = _mm512_fmadd_ps(col[i * S + 1], w1v, acc[i]);
        acc[i] = _mm512_fmadd_ps(col[i * S + 2], w2v, acc[i]);
      }
    }
  }
  int Ho = (H - 1) / S + 1;
  float* yp = y + (((ptrdiff_t)od * Ho + oh) * Wo + ow) * C + c;
  int n = std::min(WB, Wo - ow);
  for (int i = 0; i < n; i++) _mm512_storeu_ps(yp + (ptrdiff_t)i * C, acc[i]);
}

template <int WB, int S>
static void run(const float* x, const float* w, const float* b, float* y,
                int D, int H, int W, int C) {
  int Ho = (H - 1) / S + 1, Wo = (W - 1) / S + 1, nvec = (C + 15) / 16;
  #pragma omp parallel for schedule(static) collapse(2)
  for (int od = 0; od < D; od++)
    for (int oh = 0; oh < Ho; oh++)
      for (int ow = 0; ow < Wo; ow += WB)
        for (int v = 0; v < nvec; v++)
          block<WB, S>(x, w, b, y, D, H, W, C, od, oh, ow, Wo, std::min(v * 16, C - 16));
}

// x: (D, H, W, C), w: (27, C), b: (C), y: (D, Ho, Wo, C); padding 1, stride (1, s, s); C >= 16
extern "C" void depthwise3(const float* x, const float* w, const float* b, float* y,
                           int D, int H, int W, int C, int s) {
  if (s == 1) run<8, 1>(x, w, b, y, D, H, W, C);
  else run<8, 2>(x, w, b, y, D, H, W, C);
}
"""

# (channels, frames, side, spatial stride) of each distinct depthwise layer
SHAPES = {
    "x3d_xs": [
        (54, 4, 91, 2),
        (54, 4, 46, 1),
        (108, 4, 46, 2),
        (108, 4, 23, 1),
        (216, 4, 23, 2),
        (216, 4, 12, 1),
        (432, 4, 12, 2),
        (432, 4, 6, 1),
    ],
    "x3d_m": [
        (54, 16, 128, 2),
        (54, 16, 64, 1),
        (108, 16, 64, 2),
        (108, 16, 32, 1),
        (216, 16, 32, 2),
        (216, 16, 16, 1),
        (432, 16, 16, 2),
        (432, 16, 8, 1),
    ],
}


def build(workdir: str) -> ctypes.CDLL:
    src, lib = os.path.join(workdir, "depthwise.cpp"), os.path.join(workdir, "libdepthwise.so")
    with open(src, "w") as f:
        f.write(KERNEL)
    cmd = ["g++", "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", src, "-o", lib]
    subprocess.run(cmd, check=True)
    return ctypes.CDLL(lib)


def compare(
    lib: ctypes.CDLL, c: int, t: int, side: int, s: int, rounds: int
) -> tuple[float, float]:
    """Median ms of oneDNN's call and of the hand-written kernel, on one layer's shape."""
    x = torch.randn(1, c, t, side, side).contiguous(memory_format=torch.channels_last_3d)
    w, b = torch.randn(c, 1, 3, 3, 3), torch.randn(c)
    pad, stride, one = [1, 1, 1], [1, s, s], [1, 1, 1]
    packed = torch.ops.mkldnn._reorder_convolution_weight(w, pad, stride, one, c, x.shape)
    want = F.conv3d(x, w, b, stride, pad, 1, c)  # channels-last, like x
    taps = w.view(c, 27).t().contiguous()
    y = torch.empty_like(want)
    ptr = ctypes.c_void_p
    args = [
        ptr(x.data_ptr()),
        ptr(taps.data_ptr()),
        ptr(b.data_ptr()),
        ptr(y.data_ptr()),
        t,
        side,
        side,
        c,
        s,
    ]

    def onednn():
        return torch.ops.mkldnn._convolution_pointwise(
            x, packed, b, pad, stride, one, c, "none", [], ""
        )

    def ours():
        lib.depthwise3(*args)

    ours()
    err = ((y - want).abs().max() / want.abs().max()).item()
    if err > 1e-5:
        sys.exit(
            f"depthwise_kernel: the hand-written kernel is wrong at {(c, t, side, s)}: {err:.1e}"
        )
    calls = max(1, int(2e6 // (c * t * side * side)))  # a few ms per timing
    times = interleaved({"onednn": onednn, "ours": ours}, rounds, calls=calls)
    return statistics.median(times["onednn"]) * 1e3, statistics.median(times["ours"]) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="x3d_xs,x3d_m")
    p.add_argument("--rounds", type=int, default=30, help="interleaved rounds per layer")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    with open("/proc/cpuinfo") as f:
        if " avx512f" not in f.read():
            sys.exit("depthwise_kernel: this CPU has no AVX-512; the hand-written kernel needs it")
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    with tempfile.TemporaryDirectory() as workdir:
        lib = build(workdir)
    print(
        f"# fp32, {args.threads} threads, medians of {args.rounds} interleaved rounds; "
        f"torch {torch.__version__}"
    )
    print(
        "| model | depthwise layer (C, T×H², stride) | oneDNN | hand-written "
        "| oneDNN / hand-written |"
    )
    print("|---|---|---|---|---|")
    with torch.no_grad():
        for model in args.model.split(","):
            for c, t, side, s in SHAPES[model]:
                a, m = compare(lib, c, t, side, s, args.rounds)
                print(
                    f"| {model} | {c}, {t}×{side}², {s} | {a:.3f} ms | {m:.3f} ms | {a / m:.2f} |"
                )


if __name__ == "__main__":
    main()
