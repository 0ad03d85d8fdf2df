"""X3D on the CPU: pytorchvideo 0.1.5's eager model against this project's CPU engine
(eager, and compiled ahead of time in fp32 and bf16), in one process, on the same input
with the same threads, interleaved.

For each model, the reference is pytorchvideo's `create_x3d` for the variant (logits
out, BatchNorm statistics perturbed so that folding them is exercised), built by the
model tests' own `tests/helpers.reference_x3d` (so this needs the `test` extra); ours
loads the same weights through `x3d.remap_pytorchvideo`. Every round runs each variant once, so a
busy machine slows them alike; the medians are over `--runs` rounds after `--warmup`.

Columns: median ms, ratio to pytorchvideo's median, the relative error of the logits
against pytorchvideo's (max |diff| / max |logit|), and for bf16 how often its top-1
equals fp32's over `--windows` windows of generated moving textures (not real footage:
no weights or videos can be downloaded where this was written; random weights make
top-1 margins small, so this is a harsh test).

    python benchmarks/cpu_engine.py --model x3d_xs,x3d_s,x3d_m --runs 12

With `--without-rewrites`, each engine is also timed compiled from the graph as exported,
without `engines.inductor`'s rewrites (what they are worth, side by side):

    python benchmarks/cpu_engine.py --model x3d_xs --runs 150 --without-rewrites
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]  # the reference model is the tests' own

from interleave import interleaved

import engines
import models
from engines import inductor
from engines.base import relative_error
from helpers import reference_x3d
from models import x3d


def textures(n: int, frames: int, crop: int, seed: int = 0) -> list[torch.Tensor]:
    """`n` normalised windows: smooth random colour fields drifting across the frames."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        field = torch.rand(1, 3, 8, 8, generator=g)
        big = F.interpolate(field, size=(2 * crop, 2 * crop), mode="bicubic", align_corners=False)
        step = max(1, crop // 2 // frames)  # the drift stays inside the field
        dx, dy = torch.randint(-step, step + 1, (2,), generator=g).tolist()
        o = crop // 2
        clip = torch.stack(
            [
                big[0, :, o + t * dy : o + t * dy + crop, o + t * dx : o + t * dx + crop]
                for t in range(frames)
            ],
            dim=1,
        )
        out.append(((clip - 0.45) / 0.225).unsqueeze(0).contiguous())
    return out


def bench(name: str, args) -> list[str]:
    ref = reference_x3d(name)
    model = models.create(name)
    model.load_state_dict(x3d.remap_pytorchvideo(ref.state_dict()), strict=True)
    model.weights_id = (
        f"bench-pytorchvideo-seed0-{name}"  # the compiled engines are cached under this
    )
    (x,) = model.example_inputs()
    variants = {"pytorchvideo eager": ref}
    variants["ours eager"] = engines.create(
        model, (x,), backend="torch", device="cpu", precision="fp32", compile=False
    )
    modes = {}
    for precision in args.precisions:
        t0 = time.perf_counter()
        engine = engines.create(model, (x,), backend="torch", device="cpu", precision=precision)
        modes[f"engine {precision}"] = f"{engine.mode}, ready in {time.perf_counter() - t0:.1f} s"
        variants[f"engine {precision}"] = engine
        if args.without_rewrites:  # compiled from the graph as exported: the rewrites' worth
            eager = engines.create(
                model, (x,), backend="torch", device="cpu", precision=precision, compile=False
            )
            label = f"engine {precision} without rewrites"
            variants[label] = inductor.start(eager, passes=0)
            modes[label] = f"{variants[label].mode} from the graph as exported (passes=0)"
    with torch.inference_mode():
        expected = ref(x)
        outputs = {k: f(x).float() for k, f in variants.items()}
        times = interleaved(
            {k: functools.partial(f, x) for k, f in variants.items()}, args.runs, args.warmup
        )
        agree = {}
        if "engine bf16" in variants and "engine fp32" in variants and args.windows:
            same = 0
            for w in textures(args.windows, x.shape[2], x.shape[-1]):
                same += int(
                    variants["engine bf16"](w).argmax() == variants["engine fp32"](w).argmax()
                )
            agree["engine bf16"] = f"top-1 = fp32's on {same}/{args.windows} windows"
    base = statistics.median(times["pytorchvideo eager"])
    target = TARGETS.get(name)
    lines = []
    for k, ts in times.items():
        med = statistics.median(ts)
        note = modes.get(k, "")
        if k == "engine fp32" and target:
            note += f"; target <= {target}: {'met' if med / base <= target else 'MISSED'}"
        if k == "engine bf16" and name == "x3d_m":
            note += f"; target <= 0.12: {'met' if med / base <= 0.12 else 'MISSED'}"
        if k in agree:
            note += f"; {agree[k]}"
        lines.append(
            f"| {name} | {k} | {med * 1e3:.1f} | {med / base:.3f} | "
            f"{relative_error(outputs[k], expected):.1e} | {note.lstrip('; ')} |"
        )
    return lines


TARGETS = {"x3d_xs": 0.35, "x3d_s": 0.30, "x3d_m": 0.25}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="x3d_xs,x3d_s,x3d_m")
    p.add_argument("--precision", default="fp32,bf16" if inductor.bf16_native() else "fp32")
    p.add_argument("--runs", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--windows", type=int, default=200, help="bf16 top-1 check (0: none)")
    p.add_argument(
        "--without-rewrites",
        action="store_true",
        help="also time each engine compiled without engines.inductor's graph rewrites",
    )
    args = p.parse_args()
    args.precisions = args.precision.split(",")
    print(
        f"# {inductor.cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{platform.python_version()}; batch 1; medians of {args.runs} interleaved rounds "
        f"after {args.warmup}"
    )
    print("| model | variant | median ms | × pytorchvideo | rel. error vs pytorchvideo | notes |")
    print("|---|---|---|---|---|---|")
    for name in args.model.split(","):
        for line in bench(name, args):
            print(line, flush=True)


if __name__ == "__main__":
    main()
