"""TensorRT engine: torch-tensorrt's dynamo path on a `torch.export` program at the
window's static shapes, fp16 (default) or fp32, cached on disk.

Batches: an engine for up to `max_batch` windows (> 1) is exported with a dynamic batch
dimension (engines/export.py) and built with one optimisation profile per input,
`torch_tensorrt.Input(min_shape=(1, ...), opt_shape=(max_batch, ...),
max_shape=(max_batch, ...))`: any batch from 1 to `max_batch` runs without padding, and
TensorRT picks its kernels for the largest batch, the one that comes when every stream
falls due at once. It is saved with the same dynamic dimension (`torch_tensorrt.save`'s
`dynamic_shapes`). `max_batch` 1 builds exactly as before batching existed.

Start-up (engines/compiled.py, as for every compiled backend):
  1. key = model, weights, input shapes, largest batch, precision, GPU, torch /
     torch-tensorrt / TensorRT versions (`EngineKey`); a file under
     `$AVSTREAM_CACHE/engines` (default `~/.cache/avstream/engines`) holds the compiled
     program for each key
  2. cached: `torch_tensorrt.load`; else build: export (`engines.export`) ->
     `torch_tensorrt.dynamo.compile`, with progress log lines
  3. count the TensorRT engines in the result (`count_tensorrt_engines`): torch-tensorrt
     returns the PyTorch graph unchanged when it converts nothing, which would pass the
     check below and be served as `tensorrt-fp16`; none is a failed build
  4. run the example inputs through it and through eager PyTorch on the same GPU at the
     same precision; serve it (and, built, `torch_tensorrt.save` it) when they agree
     within `base.TOLERANCE`, else (and when the build fails) log one warning and serve
     PyTorch on CUDA instead
All of it, and every call, runs inside `torch.cuda.device` of the engine's GPU, so that
`--device cuda:1` builds and runs there while cuda:0 is the current device.

fp16 differs between torch-tensorrt releases: up to 2.9 the builder picks layer precisions
from `enabled_precisions` (weak typing); from 2.10 the graph's own dtypes decide (explicit
typing, `enabled_precisions` asserts on 2.10-2.12 and is ignored from 2.13). This module
hands over a half-precision model and half inputs on every release, and adds
`enabled_precisions={torch.float16}` only before 2.10. LayerNorm stays fp32 inside the fp16
graph: its mean of squares overflows fp16's 65504 on activations above ~256.

torch-tensorrt is imported only here and only when asked for; its import raises a plain
Exception without TensorRT libraries or an NVIDIA driver, so every import is guarded.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.util
import logging
import os
import re
from pathlib import Path

import torch

from models._files import first_line

from . import compiled, torch_engine
from .base import EngineError, model_name
from .cache import CacheKey, default_cache_dir, model_options, weights_digest
from .export import batch_dims, export
from .torch_engine import StagedEngine, TorchEngine, on_device, resolve_device, resolve_kind

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32")
INSTALL_HINT = "pip install 'avstream[tensorrt]' on a machine with an NVIDIA GPU"


# --- Is it there? -------------------------------------------------------------------------


@functools.cache
def import_torch_tensorrt():
    """(torch_tensorrt, None), or (None, one line saying why it cannot be used)."""
    if importlib.util.find_spec("torch_tensorrt") is None:
        return None, "torch-tensorrt is not installed"
    try:
        import torch_tensorrt
    except Exception as exc:  # noqa: BLE001 (it raises plain Exception without TensorRT or a driver)
        return None, f"torch-tensorrt does not import ({type(exc).__name__}: {first_line(exc)})"
    return torch_tensorrt, None


def unavailable_reason() -> str | None:
    """None when the tensorrt backend can run here, else why not (one line, no advice).

    The GPU is checked first: without one, torch-tensorrt's import fails anyway, and is slow."""
    if not torch.cuda.is_available():
        if importlib.util.find_spec("torch_tensorrt") is None:
            return "torch-tensorrt is not installed and PyTorch sees no CUDA GPU"
        return "PyTorch sees no CUDA GPU"
    return import_torch_tensorrt()[1]


def _versions(torch_tensorrt) -> tuple[str, str, str]:
    try:
        import tensorrt

        trt_version = tensorrt.__version__
    except Exception:  # noqa: BLE001 (report what torch-tensorrt was built against instead)
        trt_version = getattr(torch_tensorrt, "__tensorrt_version__", "unknown")
    return torch.__version__, torch_tensorrt.__version__, trt_version


def _release(version: str) -> tuple[int, int]:
    major, minor = (int(p) for p in re.findall(r"\d+", version)[:2])
    return major, minor


# --- Cache --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EngineKey(CacheKey):
    """Everything a compiled TensorRT program depends on; any change means a rebuild."""

    model: str
    weights: str  # model.weights_id, or a digest of the randomly initialised weights
    input_shapes: tuple[tuple[int, ...], ...]
    precision: str
    gpu: str  # name and compute capability
    torch: str
    torch_tensorrt: str
    tensorrt: str
    options: str = "{}"  # the model's build options (cache.model_options)
    max_batch: int = 1  # the profile's batch sizes: 1 to this (CacheKey leaves 1 out)


def key_for(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    precision: str,
    gpu: str,
    versions: tuple[str, str, str],
    max_batch: int = 1,
) -> EngineKey:
    """The cache key of `model`'s engine for 1 to `max_batch` windows a call;
    `versions`: torch, torch-tensorrt, TensorRT."""
    torch_version, torch_tensorrt_version, tensorrt_version = versions
    return EngineKey(
        model=model_name(model),
        weights=weights_digest(model),
        input_shapes=tuple(tuple(x.shape) for x in example_inputs),
        precision=precision,
        gpu=gpu,
        torch=torch_version,
        torch_tensorrt=torch_tensorrt_version,
        tensorrt=tensorrt_version,
        options=model_options(model),
        max_batch=max_batch,
    )


# --- The engine ---------------------------------------------------------------------------


#: What the graph of a program that `torch_tensorrt.save` wrote calls for each engine.
_EXECUTE_ENGINE = "tensorrt.execute_engine.default"


def count_tensorrt_engines(module: torch.nn.Module) -> int:
    """How many TensorRT engines `module` runs; 0 when it is PyTorch throughout.

    Loaded (`torch_tensorrt.load(...).module()`): saving inlined each engine as a
    `tensorrt::execute_engine` call in the graph; those calls are counted. Built
    (`torch_tensorrt.dynamo.compile`), there are none: the partitioner names the parts it
    hands to TensorRT `_run_on_acc_N` and replaces each, once converted, by a
    TorchTensorRTModule (one still a GraphModule was not converted); those parts are
    counted. When no op converts, compile returns the exported graph itself: no such
    part, no such call."""
    calls = parts = 0
    for name, sub in module.named_modules():
        if isinstance(sub, torch.fx.GraphModule):
            calls += sum(
                node.op == "call_function" and str(node.target) == _EXECUTE_ENGINE
                for node in sub.graph.nodes
            )
        elif name.rpartition(".")[2].startswith("_run_on_acc"):
            parts += 1
    return calls or parts


class TensorRTEngine(StagedEngine):
    """A compiled (or loaded) torch-tensorrt module behind the Engine protocol."""

    def __init__(
        self,
        module,
        example_inputs: tuple[torch.Tensor, ...],
        *,
        device: torch.device,
        precision: str,
        max_batch: int = 1,
    ):
        super().__init__(
            name=f"tensorrt-{precision}",
            device=device,
            precision=precision,
            mode="tensorrt",
            example_inputs=example_inputs,
            max_batch=max_batch,
        )
        self.module = module

    def _forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self.module(*inputs)
        if isinstance(out, (tuple, list)):
            (out,) = out
        return out.float()


def _fp32_layer_norms(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Run every LayerNorm of a reduced-precision `model` in fp32, casting around it."""

    def to_fp32(module, args):
        return tuple(a.float() if torch.is_tensor(a) else a for a in args)

    def back(module, args, output):
        return output.to(dtype)

    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.float()
            module.register_forward_pre_hook(to_fp32)
            module.register_forward_hook(back)


def _converted(module, what: str, name: str):
    """`module`, after logging how many TensorRT engines it runs; RuntimeError when none."""
    count = count_tensorrt_engines(module)
    if count == 0:
        raise RuntimeError(
            f"torch-tensorrt converted no part of {what} into a TensorRT engine "
            "(it would run as PyTorch)"
        )
    log.info("%s: %s runs as %d TensorRT engine(s)", name, what, count)
    return module


def profile(torch_tensorrt, inputs: tuple[torch.Tensor, ...], max_batch: int) -> list:
    """The `arg_inputs` of a build for 1 to `max_batch` windows: one `torch_tensorrt.Input`
    per input (of one window), its batch from 1 to `max_batch`, optimised for `max_batch`."""
    return [
        torch_tensorrt.Input(
            min_shape=(1, *x.shape[1:]),
            opt_shape=(max_batch, *x.shape[1:]),
            max_shape=(max_batch, *x.shape[1:]),
            dtype=x.dtype,
        )
        for x in inputs
    ]


def _build(torch_tensorrt, model, inputs, *, device, precision, what, name, max_batch=1):
    """Export and compile (`inputs`: one window; the engine takes 1 to `max_batch`);
    returns the compiled module."""
    dtype = torch_engine.DTYPES[precision]
    if dtype != torch.float32:
        model = copy.deepcopy(model)  # the casts must not touch the model PyTorch serves
        _fp32_layer_norms(model, dtype)
    batches = "" if max_batch == 1 else f", batches of 1 to {max_batch}"
    shapes = [tuple(x.shape) for x in inputs]
    log.info("%s: torch.export of %s at %s%s", name, what, shapes, batches)
    program = export(model, inputs, max_batch)
    log.info("%s: compiling %s with torch-tensorrt (minutes for big models)", name, what)
    arg_inputs = list(inputs) if max_batch == 1 else profile(torch_tensorrt, inputs, max_batch)
    options = {"arg_inputs": arg_inputs, "device": device, "min_block_size": 1}
    if precision == "fp16" and _release(torch_tensorrt.__version__) < (2, 10):
        options["enabled_precisions"] = {torch.float16}  # weak typing before 2.10
    return _converted(torch_tensorrt.dynamo.compile(program, **options), what, name)


def create(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    device: str | None = None,
    precision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    tolerance: float | None = None,
    compile: bool | None = None,
    cudagraphs: bool | None = None,
    max_batch: int = 1,
):
    """A TensorRT engine for `model` at the shapes of `example_inputs` (one window), taking
    1 to `max_batch` windows a call, or PyTorch on CUDA (with a warning) when the build
    fails or its outputs disagree with PyTorch.

    tolerance: largest relative error against eager PyTorch (default `base.TOLERANCE`).
    compile, cudagraphs: options of the PyTorch engine used as the fallback.
    """
    if device is not None and resolve_kind(device) != "cuda":
        raise EngineError(
            f"the tensorrt engine runs on NVIDIA GPUs, not --device {device}: use --engine torch"
        )
    precision = precision or "fp16"
    if precision not in PRECISIONS:
        raise EngineError(
            f"--precision {precision} is not supported by the tensorrt engine: use fp16 or fp32 "
            f"(or --engine torch for {precision})"
        )
    if not torch.cuda.is_available():
        if importlib.util.find_spec("torch_tensorrt") is None:
            raise EngineError(
                f"the tensorrt engine needs torch-tensorrt and an NVIDIA GPU, and neither is here: "
                f"{INSTALL_HINT}, or use --engine torch"
            )
        raise EngineError(
            "the tensorrt engine needs an NVIDIA GPU, and PyTorch sees none: use --engine torch"
        )
    torch_tensorrt, reason = import_torch_tensorrt()
    if torch_tensorrt is None:
        raise EngineError(f"{reason}: {INSTALL_HINT}, or use --engine torch")

    dev = resolve_device(device)
    major, minor = torch.cuda.get_device_capability(dev)
    with on_device(dev):
        return _serve(
            torch_tensorrt,
            model,
            example_inputs,
            device=dev,
            gpu=f"{torch.cuda.get_device_name(dev)} sm_{major}{minor}",
            precision=precision,
            cache_dir=Path(cache_dir) if cache_dir is not None else default_cache_dir(),
            tolerance=tolerance,
            compile=compile,
            cudagraphs=cudagraphs,
            max_batch=max_batch,
        )


def _serve(
    torch_tensorrt,
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    device: torch.device,
    gpu: str,
    precision: str,
    cache_dir: Path,
    tolerance: float | None,
    compile: bool | None,
    cudagraphs: bool | None,
    max_batch: int = 1,
):
    """Load or build, check against PyTorch, serve (or fall back): engines/compiled.py with
    torch-tensorrt's calls. Takes `torch_tensorrt` as an argument and runs on any device,
    so that tests can drive it with a stand-in."""
    name = f"tensorrt-{precision}"
    what = f"{model_name(model)} {precision}"
    key = key_for(
        model, example_inputs, precision=precision, gpu=gpu, versions=_versions(torch_tensorrt),
        max_batch=max_batch,
    )  # fmt: skip
    # Eager PyTorch at the same precision: the reference, and what a fallback compiles.
    reference = TorchEngine(
        model, example_inputs, device=device, precision=precision, max_batch=max_batch
    )

    def serving(module) -> TensorRTEngine:
        return TensorRTEngine(
            module, reference.example_inputs, device=device, precision=precision,
            max_batch=max_batch,
        )  # fmt: skip

    def build(tmp: Path) -> TensorRTEngine:
        module = _build(
            torch_tensorrt,
            reference.model,
            reference.example_inputs,
            device=device,
            precision=precision,
            what=what,
            name=name,
            max_batch=max_batch,
        )
        return serving(module)

    def load(path: Path) -> TensorRTEngine:
        return serving(_converted(torch_tensorrt.load(str(path)).module(), what, name))

    def save(engine: TensorRTEngine, tmp: Path) -> None:
        if max_batch == 1:
            torch_tensorrt.save(
                engine.module, str(tmp), output_format="exported_program",
                arg_inputs=list(engine.example_inputs),
            )  # fmt: skip
            return
        # One Dim shared by every input (SlowFast has two): torch_tensorrt.save would infer
        # one Dim per input from Input objects, which its docs say breaks shared batches.
        inputs, dynamic_shapes = batch_dims(engine.example_inputs, max_batch)
        torch_tensorrt.save(
            engine.module, str(tmp), output_format="exported_program",
            arg_inputs=list(inputs), dynamic_shapes=dynamic_shapes,
        )  # fmt: skip

    backend = compiled.Backend(
        name=name,
        model=model_name(model),
        precision=precision,
        build=build,
        verbs=("building", "built"),
        how=f"with torch-tensorrt {torch_tensorrt.__version__} for {gpu}",
        ready="compiled by torch-tensorrt",
        path=cache_dir / f"{key.stem}.pt2",  # torch.export.save wants .pt2
        key=key,
        load=load,
        save=save,
        max_batch=max_batch,
    )
    return compiled.start(
        backend,
        reference,
        fallback=lambda: torch_engine.optimise(reference, compile=compile, cudagraphs=cudagraphs),
        tolerance=tolerance,
    )
