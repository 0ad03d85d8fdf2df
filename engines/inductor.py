"""The CPU engine compiled ahead of time: AOTInductor on a `torch.export` program at the
window's static shapes, fp32 or bf16, cached on disk.

Compiling with inductor's freezing folds each BatchNorm into its convolution, pre-packs
the weights in oneDNN's blocked layouts, fuses the activations into the convolutions and
generates C++ loops for the rest (swish, the squeeze-excite gates, the residual adds).
Before that, the convolutions of a clip's mean (squeeze-excite's two layers) become sums,
which inductor writes as C++ loops too (`tiny_convolutions_as_sums`). Ahead of time, the
model then runs as one shared library, with no Python between its layers. The package
(`.pt2`) is written once under `$AVSTREAM_CACHE/engines`, keyed by model, weights, build
options, input shapes, precision, CPU, threads, torch version and the rewrites' version,
and a later start loads it in milliseconds.

Loading or compiling, the check against eager PyTorch, saving and the fallback to eager on
any failure are engines/compiled.py's, as for every compiled backend. A C++ compiler must be
on the machine (`g++`, as torch.compile needs on the CPU).

Batches (`max_batch` > 1): two packages, `BatchedCpuEngine`. One window a call runs the
package above (the very file, and key, of a `max_batch` 1 engine); 2 to `max_batch` run one
package exported with a dynamic batch (engines/export.py: `Dim("batch", min=1,
max=max_batch)`, traced from two windows since torch 2.14 specialises a traced size of 1).
Why not one dynamic package for every batch: for a dynamic input size inductor 2.14 does
not pre-pack the convolution weights at freezing ("For dynamic shape case, we need to pack
weight in runtime", fx_passes/mkldnn_fusion.py), so every call reorders every weight
(ONEDNN_VERBOSE: X3D-XS's 86 convolutions each get a reorder per call; none in the static
package). Measured on a 2-core AMD EPYC Zen 4, X3D-XS fp32, one thread, CPU time per call
(min of 8, the machine shared): dynamic against static 29.3 / 26.9 ms at batch 1 (+9 %),
54.0 / 50.9 at 2, 105.9 / 104.6 at 4, 226.8 / 230.3 at 8: the reorder is a fixed cost per
call that a batch shares. Why not buckets (a static package per 1, 2, 4, 8, padded up):
four compiles instead of two (about 30 s each for X3D-XS here), four copies of the
weights, and a batch of 3 or 5 computing 4 or 8 windows (+33 %, +60 %), where the dynamic
package computes only the batch. Each window of a batch of the dynamic package equals its
window alone within 1e-6 relative (fp32: X3D-XS full size; the reduced SlowFast, AVSlowFast,
MViTv2 and Motionformer, tests/helpers_models.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import signal
import threading
from pathlib import Path

import torch

from . import compiled
from .base import model_name
from .cache import CacheKey, default_cache_dir, model_options, weights_digest
from .export import batch_dims, export
from .torch_engine import StagedEngine, TorchEngine

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CpuKey(CacheKey):
    """Everything an AOTInductor package for the CPU depends on."""

    model: str
    weights: str  # model.weights_id, or a digest of the randomly initialised weights
    input_shapes: tuple[tuple[int, ...], ...]
    precision: str
    cpu: str  # model name and the instruction set torch dispatches to (AVX2, AVX512...)
    threads: int  # the generated loops are parallelised for this many threads
    torch: str
    passes: int = 0  # GRAPH_PASSES: what this module does to the graph before inductor
    options: str = "{}"  # the model's build options (cache.model_options)
    max_batch: int = 1  # the package takes 1 to this many windows (CacheKey leaves 1 out)


# Bumped whenever the graph handed to inductor changes, so that a package built before
# is keyed apart. 1: convolutions of a (B, C, 1, ..., 1) tensor as sums.
GRAPH_PASSES = 1


@functools.cache
def cpu_model() -> str:
    """'Intel(R) Xeon(R) Processor': /proc/cpuinfo's model name, else what platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def cpu_name() -> str:
    """'Intel(R) Xeon(R) Processor AVX512': the model and the instruction set torch uses."""
    return f"{cpu_model()} {torch.backends.cpu.get_cpu_capability()}"


def bf16_native() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX) through oneDNN."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_CONVS = (
    torch.ops.aten.conv1d.default,
    torch.ops.aten.conv2d.default,
    torch.ops.aten.conv3d.default,
)
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def tiny_convolutions_as_sums(gm: torch.fx.GraphModule) -> int:
    """Rewrite, in place, each convolution whose input is (B, C, 1, ..., 1) (a clip's
    mean: squeeze-excite's two layers) as a broadcast multiply and a sum over C. Returns
    how many it rewrote.

    A oneDNN convolution call has a fixed cost before any arithmetic (ideep sets up
    descriptors, attributes and buffers on every call) that dwarfs a 216 x 16 layer's
    3,456 multiply-adds (measured in docs/performance.md, "Kept: squeeze-excite as sums").
    As sums, inductor fuses them with the mean and the sigmoid into its own loops. X3D-XS,
    S and M have 30 of these per window, X3D-L 58."""
    aten = torch.ops.aten
    graph = gm.graph
    rewritten = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _CONVS:
            continue
        a = {**_CONV_DEFAULTS, **dict(zip(_CONV_ARGS, node.args)), **node.kwargs}
        x, w, bias, padding = a["input"], a["weight"], a["bias"], a["padding"]
        padding = padding if isinstance(padding, (list, tuple)) else [padding]
        xs, ws = x.meta["val"].shape, w.meta["val"].shape
        if a["groups"] != 1 or any(n != 1 for n in (*xs[2:], *ws[2:])) or any(padding):
            continue  # stride and dilation do nothing to a 1 x ... x 1 input and kernel
        # A dynamic batch (a symbol, not a number) is left for the reshape to infer.
        b, c, out = xs[0] if isinstance(xs[0], int) else -1, xs[1], ws[0]
        with graph.inserting_before(node):
            products = graph.call_function(
                aten.mul.Tensor,
                (
                    graph.call_function(aten.reshape.default, (x, [b, 1, c])),
                    graph.call_function(aten.reshape.default, (w, [1, out, c])),
                ),
            )
            y = graph.call_function(aten.sum.dim_IntList, (products, [-1]))
            if bias is not None:
                y = graph.call_function(aten.add.Tensor, (y, bias))
            y = graph.call_function(aten.reshape.default, (y, [b, out, *[1] * (len(xs) - 2)]))
        node.replace_all_uses_with(y)
        graph.erase_node(node)
        rewritten += 1
    if rewritten:
        graph.lint()
        gm.recompile()
    return rewritten


def prepare(
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    passes: int = GRAPH_PASSES,
    max_batch: int = 1,
) -> torch.export.ExportedProgram:
    """The program inductor compiles: `model` exported at the inputs' shapes (one window;
    with `max_batch` > 1, a dynamic batch of 1 to `max_batch`), rewritten (`passes` 0:
    not rewritten, for side-by-side benchmarks)."""
    program = export(model, inputs, max_batch)
    if passes == 0:
        return program
    gm = program.module()
    if tiny_convolutions_as_sums(gm):
        traced, dynamic_shapes = batch_dims(tuple(inputs), max_batch)
        with torch.no_grad():
            program = torch.export.export(gm, traced, dynamic_shapes=dynamic_shapes, strict=False)
    return program


def key_for(
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    precision: str,
    passes: int = GRAPH_PASSES,
    max_batch: int = 1,
) -> CpuKey:
    """The cache key of `model`'s package for `inputs` (one window), 1 to `max_batch` a call."""
    return CpuKey(
        model=model_name(model),
        weights=weights_digest(model),
        input_shapes=tuple(tuple(x.shape) for x in inputs),
        precision=precision,
        cpu=cpu_name(),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        passes=passes,
        options=model_options(model),
        max_batch=max_batch,
    )


class _Package:
    """A compiled package, loaded: `package(*inputs)` returns the model's one output tensor.

    It is loaded with the C++ loader that `torch._inductor.aoti_load_package` wraps, called
    directly: importing `torch._inductor` imports dynamo too, which would be most of a
    cached start; this also skips re-reading the call spec on every call."""

    def __init__(self, path: Path):
        loader = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
        if loader is None:  # another torch: the public entry point
            compiled = torch._inductor.aoti_load_package(str(path))
            self._run = lambda inputs: [compiled(*inputs)]
        else:
            self._run = loader(str(path), "model", False, 1, -1).boxed_run

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        (output,) = self._run(list(inputs))
        return output


@contextlib.contextmanager
def _unwind_on_sigterm():
    """Within the block, SIGTERM raises SystemExit instead of ending the process at once.

    `stream.run` stops a child that is still starting with SIGTERM. Mid-compile, the
    default action would leave the compiler (g++ and its cc1plus) running as orphans and
    a temporary package in the cache: the handler kills every process below this one,
    and unwinding removes the temporary file (`write_atomically`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        _kill_descendants()
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _kill_descendants() -> None:
    """SIGKILL every process below this one."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:  # gone already
            pass


class _NoCudaRuntimeNotice(logging.Filter):
    """Drops torch's "No CUDA runtime is found, using CUDA_HOME=..." warning.

    `torch.utils.cpp_extension` logs it when imported (inductor imports it to compile) by a
    CUDA build of torch that finds a CUDA toolkit (an nvcc on PATH, /usr/local/cuda) but no
    GPU. The CPU compiler needs neither, so on a CPU machine it is noise on every start
    that compiles. Only that record is dropped; the logger's other messages stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


@functools.cache
def _quiet_cuda_runtime_notice() -> None:
    """Installed once, before the first compile imports the module that logs it."""
    logging.getLogger("torch.utils.cpp_extension").addFilter(_NoCudaRuntimeNotice())


class AotInductorEngine(StagedEngine):
    """The CPU engine compiled ahead of time: a loaded AOTInductor package, for one window
    a call, or for 1 to `reference.max_batch` windows (a package with a dynamic batch).

    `package` is its file in the cache, `from_cache` whether this start loaded it (else it
    compiled it): engines.precision keeps its bf16 check's verdict beside the package."""

    def __init__(self, package: _Package, reference: TorchEngine, *, path: Path, from_cache: bool):
        super().__init__(
            name=reference.name,
            device=reference.device,
            precision=reference.precision,
            mode="aot-compiled",
            example_inputs=reference.example_inputs,
            max_batch=reference.max_batch,
        )
        self._package = package
        self.package = path
        self.from_cache = from_cache

    def _forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self._package(*inputs).float()


class BatchedCpuEngine(StagedEngine):
    """The CPU engine for batches: one window a call runs the package of one window (the
    one a `max_batch` 1 engine runs, weights pre-packed), 2 or more the package with a
    dynamic batch (see the module docstring for why two).

    `package` and `from_cache` are the one-window package's: the bf16 check runs one
    window at a time, and its verdict is kept beside that package."""

    def __init__(self, single: AotInductorEngine, batched: AotInductorEngine):
        super().__init__(
            name=batched.name,
            device=batched.device,
            precision=batched.precision,
            mode="aot-compiled",
            example_inputs=batched.example_inputs,
            max_batch=batched.max_batch,
        )
        self.single = single
        self.batched = batched
        self.package = single.package
        self.from_cache = single.from_cache and batched.from_cache

    def _forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        engine = self.single if inputs[0].shape[0] == 1 else self.batched
        return engine._forward(*inputs)


def start(
    reference: TorchEngine,
    *,
    cache_dir: str | os.PathLike | None = None,
    passes: int = GRAPH_PASSES,
):
    """The AOTInductor engine of the eager CPU engine `reference` (its model and example
    inputs, at its precision, for 1 to its `max_batch` windows a call), loaded from
    `cache_dir` (default `$AVSTREAM_CACHE/engines`) or compiled and saved there;
    `reference` itself when that fails (engines/compiled.py). `passes` 0 compiles the
    graph as exported, for side-by-side benchmarks.

    `max_batch` > 1 starts two packages (`BatchedCpuEngine`): the one-window package, the
    same file a `max_batch` 1 engine uses, and the one with a dynamic batch. When either
    fails, `reference` serves every batch (the first failure's warning says why; the
    second package is then not tried)."""
    if reference.max_batch == 1:
        return _start(reference, cache_dir, passes)
    one = TorchEngine(  # the same model (cast already: not copied), one window a call
        reference.model,
        reference.example_inputs,
        device=reference.device,
        precision=reference.precision,
    )
    single = _start(one, cache_dir, passes)
    if single is one:
        return reference
    batched = _start(reference, cache_dir, passes)
    if batched is reference:
        return reference
    return BatchedCpuEngine(single, batched)


def _start(reference: TorchEngine, cache_dir: str | os.PathLike | None, passes: int):
    """`start` for one package: of one window, or with a dynamic batch of 1 to
    `reference.max_batch`."""
    model, inputs, max_batch = reference.model, reference.example_inputs, reference.max_batch
    key = key_for(model, inputs, reference.precision, passes, max_batch)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"cpu-{key.stem}.pt2"

    def build(tmp: Path) -> AotInductorEngine:
        _quiet_cuda_runtime_notice()
        from torch._inductor import aoti_compile_and_package

        # no_grad: inductor freezes (folds BN, pre-packs weights) only when grad is off.
        with _unwind_on_sigterm(), torch.no_grad():
            program = prepare(model, inputs, passes, max_batch)
            aoti_compile_and_package(
                program, package_path=str(tmp), inductor_configs={"freezing": True}
            )
        return AotInductorEngine(_Package(tmp), reference, path=path, from_cache=False)

    def load(path: Path) -> AotInductorEngine:
        return AotInductorEngine(_Package(path), reference, path=path, from_cache=True)

    backend = compiled.Backend(
        name=reference.name,
        model=model_name(model),
        precision=reference.precision,
        build=build,
        how="ahead of time for this CPU",
        ready="compiled ahead of time",
        path=path,
        key=key,
        load=load,
        max_batch=max_batch,
    )
    return compiled.start(backend, reference, fallback=lambda: reference)
