"""TensorRT engine: torch-tensorrt's dynamo path on a `torch.export` program at the
window's static shapes, fp16 (default) or fp32, cached on disk.

Start-up:
  1. key = model, weights, input shapes, precision, GPU, torch / torch-tensorrt / TensorRT
     versions (`EngineKey`); a file under `$AVSTREAM_CACHE/engines` (default
     `~/.cache/avstream/engines`) holds the compiled program for each key
  2. cached: `torch_tensorrt.load`; else build: export (`tensorrt_ops.export`) ->
     `torch_tensorrt.dynamo.compile` -> `torch_tensorrt.save`, with progress log lines
  3. run the example inputs through it and through eager PyTorch on the same GPU at the
     same precision; serve it when they agree within `base.TOLERANCE`, else (and when the
     build fails) log one warning and serve PyTorch on CUDA instead

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
import time
from pathlib import Path

import torch

from models._files import write_atomically

from .base import TOLERANCE, EngineError, relative_error
from .cache import (
    CacheKey,
    Progress,
    default_cache_dir,
    model_options,
    weights_digest,
    write_meta,
)
from .torch_engine import InputStager, TorchEngine, resolve_device, resolve_kind

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32")
_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
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
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        return None, f"torch-tensorrt does not import ({type(exc).__name__}: {first})"
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


def key_for(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    *,
    precision: str,
    gpu: str,
    versions: tuple[str, str, str],
) -> EngineKey:
    """The cache key of `model`'s engine; `versions`: torch, torch-tensorrt, TensorRT."""
    torch_version, torch_tensorrt_version, tensorrt_version = versions
    return EngineKey(
        model=getattr(getattr(model, "meta", None), "name", type(model).__name__),
        weights=weights_digest(model),
        input_shapes=tuple(tuple(x.shape) for x in example_inputs),
        precision=precision,
        gpu=gpu,
        torch=torch_version,
        torch_tensorrt=torch_tensorrt_version,
        tensorrt=tensorrt_version,
        options=model_options(model),
    )


# --- The engine ---------------------------------------------------------------------------


class TensorRTEngine:
    """A compiled (or loaded) torch-tensorrt module behind the Engine protocol."""

    def __init__(
        self,
        module,
        example_inputs: tuple[torch.Tensor, ...],
        *,
        device: torch.device,
        precision: str,
    ):
        self.module = module
        self.device = device
        self.precision = precision
        self.dtype = _DTYPES[precision]
        self.name = f"tensorrt-{precision}"
        self._stage = InputStager(device, self.dtype)
        self.example_inputs = self._stage(tuple(example_inputs))

    @torch.inference_mode()
    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self.module(*self._stage(inputs))
        if isinstance(out, (tuple, list)):
            (out,) = out
        logits = out.float()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # infer_end must be when the result exists
        return logits

    def warmup(self, iterations: int = 2) -> None:
        for _ in range(iterations):
            self(*self.example_inputs)


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


def _build(torch_tensorrt, model, inputs, *, device, precision, what):
    """Export and compile; returns the compiled module."""
    dtype = _DTYPES[precision]
    if dtype != torch.float32:
        model = copy.deepcopy(model)  # the casts must not touch the model PyTorch serves
        _fp32_layer_norms(model, dtype)
    from .tensorrt_ops import export

    t0 = time.perf_counter()
    log.info("TensorRT: step 1/3: torch.export of %s at %s", what, [tuple(x.shape) for x in inputs])
    program = export(model, inputs)
    log.info(
        "TensorRT: step 2/3: compiling %s with torch-tensorrt %s (minutes for big models)",
        what,
        torch_tensorrt.__version__,
    )
    options = {"arg_inputs": list(inputs), "device": device, "min_block_size": 1}
    if precision == "fp16" and _release(torch_tensorrt.__version__) < (2, 10):
        options["enabled_precisions"] = {torch.float16}  # weak typing before 2.10
    with Progress(f"TensorRT: {what}"):
        module = torch_tensorrt.dynamo.compile(program, **options)
    log.info("TensorRT: built %s in %.1f s", what, time.perf_counter() - t0)
    return module


def _load(torch_tensorrt, path: Path, what: str):
    t0 = time.perf_counter()
    module = torch_tensorrt.load(str(path)).module()
    log.info(
        "TensorRT: loaded the cached %s engine %s in %.1f s", what, path, time.perf_counter() - t0
    )
    return module


def _save(torch_tensorrt, module, inputs, path: Path, key: EngineKey, build_s: float) -> None:
    with write_atomically(path) as tmp:
        torch_tensorrt.save(
            module, str(tmp), output_format="exported_program", arg_inputs=list(inputs)
        )
    write_meta(path, key, build_s)
    log.info("TensorRT: step 3/3: saved to %s; the next start loads it", path)


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
):
    """A TensorRT engine for `model` at the shapes of `example_inputs`, or PyTorch on CUDA
    (with a warning) when the build fails or its outputs disagree with PyTorch.

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
    return _serve(
        torch_tensorrt,
        model,
        example_inputs,
        device=dev,
        gpu=f"{torch.cuda.get_device_name(dev)} sm_{major}{minor}",
        precision=precision,
        cache_dir=Path(cache_dir) if cache_dir is not None else default_cache_dir(),
        tolerance=TOLERANCE[precision] if tolerance is None else tolerance,
        compile=compile,
        cudagraphs=cudagraphs,
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
    tolerance: float,
    compile: bool | None,
    cudagraphs: bool | None,
):
    """Load or build, check against PyTorch, serve (or fall back). Takes `torch_tensorrt`
    as an argument and runs on any device, so that tests can drive it with a stand-in."""
    name = getattr(getattr(model, "meta", None), "name", type(model).__name__)
    what = f"{name} {precision}"
    key = key_for(
        model, example_inputs, precision=precision, gpu=gpu, versions=_versions(torch_tensorrt)
    )
    path = cache_dir / f"{key.stem}.pt2"  # torch.export.save wants .pt2
    # Eager PyTorch at the same precision: the reference, and the model a fallback serves.
    reference = TorchEngine(
        model,
        example_inputs,
        device=str(device),
        precision=precision,
        compile=False,
        cudagraphs=False,
    )

    def fallback(why: str):
        engine = TorchEngine(
            model,
            example_inputs,
            device=str(device),
            precision=precision,
            compile=compile,
            cudagraphs=cudagraphs,
        )
        log.warning("TensorRT: %s: serving PyTorch (%s) instead", why, engine.name)
        return engine

    module = None
    if path.exists():
        try:
            module = _load(torch_tensorrt, path, what)
        except Exception as exc:  # noqa: BLE001 (a stale or broken file: build again)
            log.warning("TensorRT: cannot load %s (%s): building again", path, type(exc).__name__)
    built = module is None
    if built:
        log.info(
            "TensorRT: no cached engine for %s on %s (key %s): building it once",
            what,
            gpu,
            key.stem,
        )
        t0 = time.perf_counter()
        try:
            module = _build(
                torch_tensorrt,
                reference.model,
                reference.example_inputs,
                device=device,
                precision=precision,
                what=what,
            )
        except Exception as exc:  # any build failure: PyTorch still runs
            log.debug("TensorRT build failure", exc_info=True)
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            return fallback(f"building {what} failed ({type(exc).__name__}: {first})")
        build_s = time.perf_counter() - t0
    engine = TensorRTEngine(module, example_inputs, device=device, precision=precision)
    try:
        actual = engine(*engine.example_inputs)
    except Exception as exc:  # it cannot run: PyTorch still can
        log.debug("TensorRT run failure", exc_info=True)
        return fallback(f"running {what} failed ({type(exc).__name__})")
    error = relative_error(actual, reference(*reference.example_inputs))
    if not error <= tolerance:
        if not built:  # a cached engine that no longer matches: build afresh next time
            path.unlink(missing_ok=True)
        return fallback(
            f"{what} disagrees with PyTorch (relative error {error:.3g} > {tolerance:g})"
        )
    log.info("TensorRT: %s matches PyTorch (relative error %.2g)", what, error)
    if built:
        try:
            _save(torch_tensorrt, module, engine.example_inputs, path, key, build_s)
        except Exception as exc:  # noqa: BLE001 (serve it anyway; the next start builds again)
            log.warning(
                "TensorRT: could not save the engine to %s (%s: %s)", path, type(exc).__name__, exc
            )
    return engine
