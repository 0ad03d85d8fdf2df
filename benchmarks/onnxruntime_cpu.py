"""ONNX Runtime against this project's compiled CPU engine, on the same model (random
weights, seed 0), input and threads, in one process, interleaved: the issue's "ONNX
Runtime only if it wins".

The model goes to ONNX through `torch.onnx.export(dynamo=True)` (opset 20) and runs on
ONNX Runtime's CPU execution provider with all graph optimisations, as many intra-op
threads as torch uses, and without spinning threads (they would steal the cores from the
engine it alternates with). ONNX Runtime is not a dependency of the project:

    pip install onnxruntime onnx onnxscript
    python benchmarks/onnxruntime_cpu.py --model x3d_xs,x3d_m --runs 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from interleave import interleaved

import engines
import models
from engines import inductor
from engines.base import relative_error


def bench(name: str, runs: int, folder: str) -> str:
    import onnxruntime as ort

    model = models.create(name, seed=0)
    (x,) = model.example_inputs()
    path = os.path.join(folder, f"{name}.onnx")
    with torch.no_grad():
        torch.onnx.export(model, (x,), path, dynamo=True, opset_version=20)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    engine = engines.create(model, (x,), backend="torch", device="cpu", precision="fp32")
    variants = {
        "onnxruntime": lambda: torch.from_numpy(session.run(None, feed)[0]),
        f"ours ({engine.mode})": lambda: engine(x),
    }
    with torch.inference_mode():
        expected = model(x)
        errors = {k: relative_error(f().float(), expected) for k, f in variants.items()}
        times = interleaved(variants, runs)
    base = statistics.median(times[f"ours ({engine.mode})"])
    return "\n".join(
        f"| {name} | {k} | {statistics.median(ts) * 1e3:.1f} "
        f"| {statistics.median(ts) / base:.2f}× | {errors[k]:.1e} |"
        for k, ts in times.items()
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="x3d_xs,x3d_m")
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args()
    try:
        import onnxruntime as ort
    except ImportError:
        sys.exit("error: onnxruntime is not installed: pip install onnxruntime onnx onnxscript")
    print(
        f"# {inductor.cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}; fp32, batch 1; "
        f"medians of {args.runs} interleaved rounds after 3"
    )
    print("| model | runtime | median ms | × ours | rel. error vs eager |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.model.split(","):
            print(bench(name, args.runs, folder), flush=True)


if __name__ == "__main__":
    main()
