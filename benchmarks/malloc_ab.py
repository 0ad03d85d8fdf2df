"""The CPU engine under each memory allocator, side by side: glibc's malloc (as the engine
tunes it) against tcmalloc (what `stream.run --malloc auto` gives the inference process
where it is installed), and any other allocator named by the path of its library.

An allocator is chosen when a process starts, so each one times the engine in processes
of its own, started the way `stream.run` starts its inference process
(`engines.malloc.preloaded`). The allocators take turns, `--rounds` processes each, so a
busy machine slows them alike. Each process loads the compiled engine (compiled into
$AVSTREAM_CACHE/engines on the first run), warms it up and times `--runs` windows; the
table gives the median of the processes' medians, and their range.

    python benchmarks/malloc_ab.py --model x3d_xs,x3d_m --precision fp32,bf16
    python benchmarks/malloc_ab.py \\
        --malloc glibc,tcmalloc,/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from engines import malloc


def child(name: str, precision: str, runs: int) -> None:
    """Time the engine in this process; print one JSON line."""
    import torch

    import engines
    import models

    model = models.create(name, seed=0)
    (x,) = model.example_inputs()
    engine = engines.create(model, (x,), backend="torch", device="cpu", precision=precision)
    with torch.inference_mode():
        for _ in range(5):
            engine(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            engine(x)
            times.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "median_ms": statistics.median(times) * 1e3,
                "mode": engine.mode,
                "malloc": malloc.active(),
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="x3d_xs")
    p.add_argument("--precision", default="fp32")
    p.add_argument(
        "--malloc",
        default="glibc,tcmalloc",
        help="allocators: glibc, tcmalloc, or a library's path",
    )
    p.add_argument("--rounds", type=int, default=6, help="processes per allocator, taking turns")
    p.add_argument("--runs", type=int, default=60, help="windows timed per process")
    p.add_argument(
        "--child", nargs=3, metavar=("MODEL", "PRECISION", "RUNS"), help=argparse.SUPPRESS
    )
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    choices = args.malloc.split(",")
    for choice in choices:
        malloc.resolve(choice)  # raises with what to install before any process runs
    import platform

    import torch

    from engines import inductor

    print(
        f"# {inductor.cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{platform.python_version()}; batch 1; median of {args.rounds} processes' medians of "
        f"{args.runs} windows each (range in brackets)"
    )
    print("| model | precision | " + " | ".join(choices) + " |")
    print("|---|---|" + "---|" * len(choices))
    for name in args.model.split(","):
        for precision in args.precision.split(","):
            medians: dict[str, list[float]] = {c: [] for c in choices}
            seen: dict[str, str] = {}
            for _ in range(args.rounds):
                for choice in choices:
                    argv = [sys.executable, __file__, "--child", name, precision, str(args.runs)]
                    with malloc.preloaded(choice):
                        out = subprocess.run(argv, capture_output=True, text=True, check=False)
                    if out.returncode != 0:
                        sys.exit(f"{name} {precision} under {choice} failed:\n{out.stderr[-2000:]}")
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                    medians[choice].append(row["median_ms"])
                    seen[choice] = f"{row['malloc']}, {row['mode']}"
            base = statistics.median(medians[choices[0]])
            cells = []
            for choice in choices:
                ms = medians[choice]
                med = statistics.median(ms)
                cells.append(f"{med:.1f} ms ({med / base:.2f}×) [{min(ms):.1f}–{max(ms):.1f}]")
            print(f"| {name} | {precision} | " + " | ".join(cells) + " |", flush=True)
            print(f"#   ran as: {seen}", file=sys.stderr)


if __name__ == "__main__":
    main()
