"""FrameRing: writing one frame, and reading it back by copy or checking it in place.

One process, a fresh pattern in the source frame before every write (not timed), then
  write      FrameRing.write (the capture process's cost per frame)
  read       FrameRing.read into a preallocated frame (a reader that copies)
  in place   FrameRing.frames + FrameRing.check twice (what the inference now does per
             window instead of copying; the preprocessing then reads only what it needs)
p50 / p90 / p99 / max over `--runs` frames; `--fps` paces the writes like a camera (caches
go cold between frames), 0 runs them back to back.

    python benchmarks/ring_rw.py --size 640x480 --runs 600 --fps 30
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stream.pipeline.ring import FrameRing
from stream.pipeline.stats import STATS, summary_ms


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="640x480", help="frame WIDTHxHEIGHT")
    p.add_argument("--slots", type=int, default=48)
    p.add_argument("--runs", type=int, default=600)
    p.add_argument("--fps", type=float, default=30.0, help="0: back to back")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    src = np.empty((height, width, 3), np.uint8)
    out = np.empty_like(src)
    times = {"write": [], "read": [], "write + read": [], "in place": []}
    with FrameRing.create(args.slots, height, width, 3) as ring:
        for i in range(args.runs + ring.slots):  # the first lap touches fresh pages: not counted
            src.fill(i % 251)
            t0 = time.perf_counter_ns()
            seq = ring.write(src, time.monotonic_ns())
            t1 = time.perf_counter_ns()
            ring.read(seq, out)
            t2 = time.perf_counter_ns()
            seqs = np.array([seq])
            ring.check(seqs)
            ring.frames(seqs)
            ring.check(seqs)
            t3 = time.perf_counter_ns()
            if i >= ring.slots:
                times["write"].append(t1 - t0)
                times["read"].append(t2 - t1)
                times["write + read"].append(t2 - t0)
                times["in place"].append(t3 - t2)
            if args.fps:
                time.sleep(1 / args.fps)
    print(
        f"{width}x{height}x3 frames, {args.runs} frames at {args.fps or 'full'} fps; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    for name, v in times.items():
        s = summary_ms(np.array(v) / 1e6)
        shown = " / ".join(f"{s[k]:6.3f}" for k in STATS)
        print(f"  {name:14s} {shown} ms ({' / '.join(STATS)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
