"""Engines: the PyTorch CPU engine, backend choice, the tensorrt backend's errors and cache
key on any machine; load or build, check, save or fall back (engines/compiled.py) with the
CPU engine and with a stand-in torch-tensorrt; compile, parity, cache reuse and fallback on
a CUDA GPU (marked `gpu`, skipped without CUDA, and without torch-tensorrt where they need it)."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import engines
import models
from engines import inductor, precision, tensorrt, torch_engine
from engines.base import TOLERANCE, relative_error
from engines.export import export
from engines.tensorrt import EngineKey, weights_digest
from engines.torch_engine import TorchEngine

try:
    from cancels import Cancels as _Cancels  # tests/ on sys.path: under pytest
except ModuleNotFoundError:  # imported as tests.test_engines by the subprocess scripts below
    from tests.cancels import Cancels as _Cancels


def _perturbed(name: str = "x3d_xs", seed: int = 0) -> torch.nn.Module:
    """A registered model with non-trivial BatchNorm statistics (random init gives
    near-uniform logits, which hide errors)."""
    torch.manual_seed(seed)
    model = models.create(name)
    gen = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1, generator=gen)
            m.running_var.uniform_(0.5, 1.5, generator=gen)
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
            m.bias.data.uniform_(-0.1, 0.1, generator=gen)
    return model


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, repr(text)
    return text


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fresh_import():
    """Forget what earlier tests learnt about importing torch-tensorrt."""
    tensorrt.import_torch_tensorrt.cache_clear()
    yield
    tensorrt.import_torch_tensorrt.cache_clear()


@pytest.fixture
def fake_torch_tensorrt(tmp_path, monkeypatch):
    """Install a `torch_tensorrt` package whose import runs the given source; removed after."""
    original = sys.modules.pop("torch_tensorrt", None)

    def install(body: str) -> None:
        package = tmp_path / "fake_site" / "torch_tensorrt"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(body)
        monkeypatch.syspath_prepend(str(package.parent))

    yield install
    sys.modules.pop("torch_tensorrt", None)
    if original is not None:
        sys.modules["torch_tensorrt"] = original


def _pretend_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Pretend GPU")


# --- PyTorch on the CPU -----------------------------------------------------------------


def test_cpu_engine_basics(no_cuda):
    model = _perturbed()
    inputs = model.example_inputs()
    with torch.no_grad():
        expected = model(*inputs)
    engine = engines.create(model, inputs, backend="torch", precision="fp32", compile=False)
    assert isinstance(engine, engines.Engine)
    assert engine.name == "torch-cpu"
    assert engine.device == torch.device("cpu")
    assert engine.dtype == torch.float32
    assert engine.mode == "eager"
    engine.warmup()
    logits = engine(*inputs)
    assert logits.dtype == torch.float32 and logits.shape == expected.shape
    assert torch.equal(logits, expected)
    # Inputs of another dtype are cast, not refused.
    assert torch.allclose(engine(inputs[0].double()), expected, atol=1e-5)


def test_auto_picks_torch_cpu_and_says_why(no_cuda, caplog):
    model = models.create("x3d_xs")
    with caplog.at_level(logging.INFO, logger="engines"):
        engine = engines.create(
            model, model.example_inputs(), backend="auto", precision="fp32", compile=False
        )
    assert engine.name == "torch-cpu"
    assert "engine auto: PyTorch on the CPU: no CUDA GPU found" in caplog.messages


def test_auto_with_device_cpu():
    assert engines.pick_backend("cpu") == ("torch", "PyTorch on the CPU, as --device cpu asks")


def test_cpu_rejects_gpu_only_options(no_cuda):
    model = models.create("x3d_xs")
    with pytest.raises(engines.EngineError) as err:
        engines.create(model, model.example_inputs(), backend="torch", precision="fp16")
    assert "fp32" in _one_line(err.value)
    with pytest.raises(engines.EngineError) as err:
        engines.create(model, model.example_inputs(), backend="torch", cudagraphs=True)
    _one_line(err.value)


def test_compile_failure_falls_back_to_eager(monkeypatch, tmp_path, caplog):
    def broken_compile(program, package_path, **kwargs):
        Path(package_path).write_bytes(b"half a package")
        raise RuntimeError("inductor exploded\nsecond line")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", broken_compile)
    model = _Tiny()
    (x,) = model.example_inputs()
    with caplog.at_level(logging.WARNING, logger="engines"):
        engine = torch_engine.create(model, (x,), device="cpu", cache_dir=tmp_path)
    assert engine.mode == "eager"
    (warning,) = _warnings(caplog)
    assert warning == (
        "torch-cpu: compiling tiny fp32 failed (RuntimeError: inductor exploded): "
        "running torch-cpu (eager) instead"
    )
    assert list(tmp_path.iterdir()) == []  # no half-written package left in the cache
    with torch.no_grad():
        assert torch.equal(engine(x), model(x))


# --- PyTorch on the CPU, compiled ahead of time (AOTInductor) ----------------------------


def _infos(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]


# Compiles _Tiny into the engine cache argv[1], as a user's start would.
_COMPILE_SCRIPT = """
import sys
import engines
from tests.test_engines import _Tiny

engine = engines.create(
    _Tiny(), _Tiny().example_inputs(), backend="torch", device="cpu", precision="fp32",
    cache_dir=sys.argv[1],
)
print(engine.mode)
"""


@pytest.fixture(scope="module")
def tiny_compile(tmp_path_factory) -> tuple[Path, str]:
    """The compiled _Tiny (seed 0, fp32) in an engine cache, and the stderr of the process
    that compiled it: compiled once here (a compile takes seconds), in a process of its
    own as a user's start compiles, with CUDA_HOME set and no GPU visible (see
    test_cpu_compile_says_nothing_about_a_missing_cuda_runtime). Tests copy the cache."""
    cache = tmp_path_factory.mktemp("tiny-engines")
    env = {**os.environ, "CUDA_HOME": str(cache.parent), "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT, str(cache)],
        cwd=Path(__file__).resolve().parent.parent,  # the script imports tests.test_engines
        check=False, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "aot-compiled", out.stdout + out.stderr
    return cache, out.stderr


@pytest.fixture(scope="module")
def tiny_package(tiny_compile) -> Path:
    """An engine cache holding the compiled _Tiny (seed 0, fp32)."""
    return tiny_compile[0]


@pytest.mark.slow  # compiles with AOTInductor and g++
def test_cpu_engine_saves_its_package_with_the_key(no_cuda, tiny_package):
    model = _Tiny()
    (package,) = tiny_package.glob("cpu-tiny-fp32-*.pt2")
    meta = json.loads(package.with_suffix(".json").read_text())
    assert meta["model"] == "tiny" and meta["precision"] == "fp32"
    assert meta["threads"] == torch.get_num_threads() and meta["torch"] == torch.__version__
    assert meta["weights"] == weights_digest(model) and meta["build_s"] > 0
    assert meta["passes"] == inductor.GRAPH_PASSES  # a change of the rewrites means a rebuild
    assert package.stem == f"cpu-{inductor.key_for(model, model.example_inputs(), 'fp32').stem}"
    assert not [p for p in tiny_package.iterdir() if p.name.startswith(".")]  # no temporary file


def test_cpu_engine_loads_a_compiled_package_without_compiling(
    no_cuda, tiny_package, tmp_path, caplog
):
    shutil.copytree(tiny_package, tmp_path, dirs_exist_ok=True)
    model = _Tiny()
    inputs = model.example_inputs()
    with torch.no_grad():
        expected = model(*inputs)
    with caplog.at_level(logging.INFO, logger="engines"):
        engine = engines.create(
            model, inputs, backend="torch", precision="fp32", cache_dir=tmp_path
        )
    assert engine.mode == "aot-compiled" and engine.name == "torch-cpu"
    assert any("loaded the compiled tiny fp32" in m for m in _infos(caplog))
    assert not any("compiling" in m for m in caplog.messages)
    assert relative_error(engine(*inputs), expected) < 1e-5
    assert not torch.equal(engine(inputs[0] + 1), engine(*inputs))  # it computes, not replays


def test_cpu_cache_key_changes_with_weights_precision_and_threads():
    model, other = _Tiny(seed=0), _Tiny(seed=1)
    inputs = model.example_inputs()
    key = inductor.key_for(model, inputs, "fp32")
    assert key == inductor.key_for(_Tiny(seed=0), inputs, "fp32")
    assert key.stem != inductor.key_for(other, inputs, "fp32").stem
    assert key.stem != inductor.key_for(model, inputs, "bf16").stem
    assert key.stem != inductor.key_for(model, (torch.zeros(1, 3, 4, 9, 9),), "fp32").stem
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert key.stem != inductor.key_for(model, inputs, "fp32").stem
    finally:
        torch.set_num_threads(threads)
    assert inductor.cpu_name().endswith(torch.backends.cpu.get_cpu_capability())


class _Gated(torch.nn.Module):
    """A squeeze-excite gate beside convolutions that the rewrite must leave alone."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(3, 8, 3, padding=1)
        self.point = torch.nn.Conv3d(8, 8, 1)  # 1x1x1 over a clip: stays a convolution
        self.fc1 = torch.nn.Conv3d(8, 4, 1)  # over the clip's mean: becomes a sum
        self.fc2 = torch.nn.Conv3d(4, 8, 1, bias=False)  # the same, without a bias
        self.padded = torch.nn.Conv2d(8, 8, 1, padding=1)  # a 1x1 input, but a 3x3 output

    def forward(self, x):
        y = self.point(self.conv(x))
        s = y.mean((2, 3, 4), keepdim=True)
        gate = torch.sigmoid(self.fc2(self.fc1(s).relu()))
        return (y * gate).mean((2, 3, 4)) + self.padded(s[:, :, 0]).mean((2, 3))


def _convolutions(gm: torch.fx.GraphModule) -> list[str]:
    return [
        str(n.target) for n in gm.graph.nodes if n.op == "call_function" and "conv" in str(n.target)
    ]


def test_convolutions_of_a_mean_become_sums():
    model = _Gated().eval()
    x = torch.randn(2, 3, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    gm = export(model, (x,)).module()
    assert len(_convolutions(gm)) == 5
    assert inductor.tiny_convolutions_as_sums(gm) == 2  # fc1 and fc2 only
    assert _convolutions(gm) == [
        "aten.conv3d.default",
        "aten.conv3d.default",
        "aten.conv2d.default",
    ]
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(gm(x), expected, rtol=1e-5, atol=1e-6)
        other = torch.randn_like(x)  # it computes from its input, for each batch item
        torch.testing.assert_close(gm(other), model(other), rtol=1e-5, atol=1e-6)
    program = inductor.prepare(model, (x,))  # what the CPU engine compiles: exports again
    assert len(_convolutions(program.graph_module)) == 3
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # exports and rewrites registered models
@pytest.mark.parametrize("name", ["x3d_xs", "x3d_l", "slowfast_r50", "avslowfast_r50"])
def test_cpu_compile_graph_of_models_with_convolutions(name):
    """What the CPU engine hands inductor for a registered model: X3D's squeeze-excite
    layers (two per gated block) become sums, every other convolution stays. x3d_xs at
    full size (its output is compared too); the others' reduced networks, which have the
    same kinds of blocks at the same input size (tests/helpers_models.py)."""
    from helpers_models import small
    from models.x3d import _SqueezeExcite

    model = models.create(name).eval() if name == "x3d_xs" else small(name)
    inputs = model.example_inputs()
    before = _convolutions(export(model, inputs).module())
    program = inductor.prepare(model, inputs)
    after = _convolutions(program.graph_module)
    gates = sum(isinstance(m, _SqueezeExcite) for m in model.modules())
    assert len(before) - len(after) == 2 * gates
    assert (gates > 0) == name.startswith("x3d")
    if name == "x3d_xs":
        with torch.no_grad():
            torch.testing.assert_close(
                program.module()(*inputs), model(*inputs), rtol=1e-4, atol=1e-5
            )


def test_cached_package_that_disagrees_is_dropped(no_cuda, tiny_package, tmp_path, caplog):
    other = _Tiny(seed=1)  # its key's file holds the seed-0 model: loads, but computes otherwise
    (package,) = tiny_package.glob("cpu-tiny-fp32-*.pt2")
    key = inductor.key_for(other, other.example_inputs(), "fp32")
    stale = tmp_path / f"cpu-{key.stem}.pt2"
    shutil.copy(package, stale)
    with caplog.at_level(logging.WARNING, logger="engines"):
        engine = engines.create(
            other, other.example_inputs(), backend="torch", precision="fp32", cache_dir=tmp_path
        )
    assert engine.mode == "eager"
    (warning,) = _warnings(caplog)
    assert warning.startswith("torch-cpu: the compiled tiny fp32 disagrees with eager PyTorch")
    assert warning.endswith("running torch-cpu (eager) instead")
    assert not stale.exists() and not stale.with_suffix(".json").exists()  # compiled afresh next


@pytest.mark.slow  # compiles with AOTInductor and g++
def test_corrupt_package_is_compiled_again(no_cuda, tiny_package, tmp_path, caplog):
    shutil.copytree(tiny_package, tmp_path, dirs_exist_ok=True)
    (package,) = tmp_path.glob("cpu-tiny-fp32-*.pt2")
    package.write_bytes(b"not a zip file")
    with caplog.at_level(logging.INFO, logger="engines"):
        engine = engines.create(
            _Tiny(), _Tiny().example_inputs(), backend="torch", precision="fp32", cache_dir=tmp_path
        )
    assert engine.mode == "aot-compiled"
    assert any("cannot load" in m and "compiling it again" in m for m in _warnings(caplog))
    assert any("compiling tiny fp32 ahead of time" in m for m in _infos(caplog))
    assert any(m.startswith("torch-cpu: compiled tiny fp32 in") for m in _infos(caplog))
    assert package.stat().st_size > 1000


def test_a_long_build_says_it_is_still_going(caplog):
    from engines.cache import Progress

    with (
        caplog.at_level(logging.INFO, logger="engines"),
        Progress("torch-cpu: big fp32", "compiling", every=0.05),
    ):
        time.sleep(0.3)
    ticks = [m for m in caplog.messages if m.startswith("torch-cpu: big fp32: still compiling (")]
    assert len(ticks) >= 3, caplog.messages


@pytest.mark.slow  # compiles with AOTInductor and g++
@pytest.mark.skipif(not inductor.bf16_native(), reason="this CPU has no native bf16")
def test_cpu_bf16_compiled(no_cuda, tmp_path):
    model = _Tiny()
    inputs = model.example_inputs()
    with torch.no_grad():
        expected = model(*inputs)
    engine = engines.create(model, inputs, backend="torch", precision="bf16", cache_dir=tmp_path)
    assert engine.name == "torch-cpu-bf16" and engine.dtype == torch.bfloat16
    assert engine.mode == "aot-compiled"
    logits = engine(*inputs)
    assert logits.dtype == torch.float32
    assert relative_error(logits, expected) < 2e-2


def test_engine_leaves_the_callers_model_as_it_was(no_cuda):
    # A float64 model, served in fp32: the engine must cast (on any CPU), and casts a copy.
    model = _Tiny().double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine = engines.create(
        model, model.example_inputs(), backend="torch", precision="fp32", compile=False
    )
    assert engine.model is not model and next(engine.model.parameters()).dtype == torch.float32
    for k, v in model.state_dict().items():  # still float64, unchanged
        assert v.dtype == torch.float64 and torch.equal(v, before[k]), k
    fp32 = _Tiny()
    assert (
        engines.create(
            fp32, fp32.example_inputs(), backend="torch", precision="fp32", compile=False
        ).model
        is fp32
    )  # no copy


def test_cpu_bf16_refused_without_native_bf16(no_cuda, monkeypatch):
    monkeypatch.setattr(inductor, "bf16_native", lambda: False)
    with pytest.raises(engines.EngineError) as err:
        engines.create(_Tiny(), _Tiny().example_inputs(), backend="torch", precision="bf16")
    line = _one_line(err.value)
    assert "no native bfloat16" in line and "use fp32" in line


@pytest.mark.slow  # compiles with AOTInductor and g++
@pytest.mark.skipif(not torch.version.cuda, reason="a CPU-only torch build never looks for CUDA")
def test_cpu_compile_says_nothing_about_a_missing_cuda_runtime(tiny_compile):
    """A CUDA build of torch on a machine without a GPU logs "No CUDA runtime is found,
    using CUDA_HOME=..." when the compiler imports torch.utils.cpp_extension: noise on
    every start that compiles. CUDA_HOME set and no GPU visible make torch log it."""
    _, stderr = tiny_compile
    assert "CUDA" not in stderr, stderr


@pytest.mark.slow  # compiles the package of batches (the one-window package is the fixture's)
def test_cpu_engine_for_batches(no_cuda, tiny_package, tmp_path, caplog):
    """max_batch 3: one window runs the package that a max_batch 1 engine runs (loaded
    here, not compiled), batches the package with a dynamic batch (compiled once, then
    loaded); each window of a batch gives what it gives alone (fp32, 1e-5)."""
    shutil.copytree(tiny_package, tmp_path, dirs_exist_ok=True)
    (single,) = tmp_path.glob("cpu-tiny-fp32-*.pt2")
    model = _Tiny()
    inputs = model.example_inputs()
    with caplog.at_level(logging.INFO, logger="engines"):
        engine = engines.create(
            model, inputs, backend="torch", precision="fp32", cache_dir=tmp_path, max_batch=3
        )
    assert engine.mode == "aot-compiled" and engine.max_batch == 3, _warnings(caplog)
    assert engine.package == single and not engine.from_cache
    infos = _infos(caplog)
    assert any("loaded the compiled tiny fp32 from" in m for m in infos)
    assert any("compiling tiny fp32 for batches of 1 to 3 ahead of time" in m for m in infos)
    (batched,) = set(tmp_path.glob("cpu-tiny-fp32-*.pt2")) - {single}
    assert json.loads(batched.with_suffix(".json").read_text())["max_batch"] == 3
    batch = engines.base.example_batch(inputs, 3)
    one = [engine(x[None]) for x in batch[0]]
    assert relative_error(torch.cat(one), model(*batch).detach()) < 1e-5
    logits = engine(*batch)
    assert logits.shape == (3, 5) and logits.dtype == torch.float32
    for i in range(3):
        assert relative_error(logits[i], one[i][0]) < 1e-5, i
    assert relative_error(one[1], one[0]) > 1e-3  # distinct windows: a mix-up would show
    assert relative_error(engine(batch[0][1:]), logits[1:]) < 1e-5
    with pytest.raises(ValueError, match="a batch of 4 windows, but this engine takes 1 to 3"):
        engine(torch.cat([batch[0], batch[0][:1]]))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engines"):
        again = engines.create(
            model, inputs, backend="torch", precision="fp32", cache_dir=tmp_path, max_batch=3
        )
    assert again.mode == "aot-compiled" and again.from_cache
    assert not any("compiling" in m for m in caplog.messages)
    assert relative_error(again(*batch), logits) < 1e-6


def test_relative_error():
    a = torch.tensor([[1.0, -2.0, 4.0]])
    assert relative_error(a, a) == 0.0
    assert relative_error(a + 0.4, a) == pytest.approx(0.1)
    assert relative_error(a[:, :2], a) == float("inf")
    assert relative_error(torch.full_like(a, float("nan")), a) == float("inf")


# --- tensorrt backend without TensorRT ------------------------------------------------------


def test_tensorrt_without_torch_tensorrt_or_gpu(no_cuda, fresh_import, monkeypatch):
    real_find_spec = tensorrt.importlib.util.find_spec
    monkeypatch.setattr(
        tensorrt.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "torch_tensorrt" else real_find_spec(name, *a),
    )
    model = models.create("x3d_xs")
    with pytest.raises(engines.EngineError) as err:
        engines.create(model, model.example_inputs(), backend="tensorrt")
    line = _one_line(err.value)
    assert "avstream[tensorrt]" in line and "NVIDIA GPU" in line and "--engine torch" in line


def test_tensorrt_installed_but_no_gpu(no_cuda, fresh_import, fake_torch_tensorrt):
    fake_torch_tensorrt("__version__ = '2.14.0'\n")
    model = models.create("x3d_xs")
    with pytest.raises(engines.EngineError) as err:
        engines.create(model, model.example_inputs(), backend="tensorrt")
    line = _one_line(err.value)
    assert "needs an NVIDIA GPU" in line and "--engine torch" in line


def test_tensorrt_import_raising_plain_exception(fresh_import, fake_torch_tensorrt, monkeypatch):
    # What torch-tensorrt does without TensorRT libraries or a driver.
    fake_torch_tensorrt("raise Exception('libnvinfer.so.11: cannot open shared object file')\n")
    _pretend_gpu(monkeypatch)
    model = models.create("x3d_xs")
    with pytest.raises(engines.EngineError) as err:
        engines.create(model, model.example_inputs(), backend="tensorrt")
    line = _one_line(err.value)
    assert "does not import" in line and "libnvinfer" in line and "avstream[tensorrt]" in line
    backend, reason = engines.pick_backend()
    assert backend == "torch" and "Pretend GPU" in reason and "does not import" in reason


def test_auto_picks_tensorrt_when_it_imports_on_a_gpu(
    fresh_import, fake_torch_tensorrt, monkeypatch
):
    fake_torch_tensorrt("__version__ = '2.14.0'\n")
    _pretend_gpu(monkeypatch)
    assert engines.pick_backend() == ("tensorrt", "TensorRT on Pretend GPU (torch-tensorrt 2.14.0)")
    backend, reason = engines.pick_backend(precision="bf16")
    assert backend == "torch" and "bf16" in reason
    assert engines.pick_backend("cpu")[0] == "torch"


def test_tensorrt_argument_errors():
    model = models.create("x3d_xs")
    for kwargs, expected in (
        ({"device": "cpu"}, "--engine torch"),
        ({"precision": "bf16"}, "fp16 or fp32"),
        ({"device": "gpu0"}, "not a device"),
    ):
        with pytest.raises(engines.EngineError) as err:
            engines.create(model, model.example_inputs(), backend="tensorrt", **kwargs)
        assert expected in _one_line(err.value)


# --- --precision auto ------------------------------------------------------------------------


def test_auto_precision_follows_the_machine(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    assert precision.pick("cpu") == ("bf16", "this CPU has AMX")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert precision.pick("cpu") == ("bf16", "this CPU has AVX512-BF16")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx2"}))
    assert precision.pick("cpu") == (
        "fp32",
        "this CPU has neither AMX nor AVX512-BF16 (bf16 would be emulated or slow)",
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.pick(None)[0] == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert precision.pick(None)[0] == precision.pick("cuda:0")[0] == "fp16"
    assert precision.pick("cpu")[0] == "fp32"  # --device cpu on a GPU machine (no bf16 flag)


def test_auto_precision_is_logged_with_its_reason(no_cuda, caplog):
    model = _Cancels(1.25)  # the same top-1 in bf16: kept where bf16 is picked
    chosen, reason = precision.pick("cpu")
    for asked in (None, "auto"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="engines"):
            engine = engines.create(
                model, model.example_inputs(), backend="torch", precision=asked, compile=False
            )
        assert f"precision {chosen}: {reason}" in caplog.messages
        assert engine.precision == chosen


def test_top1_check_compares_clear_calls_only():
    flips = _Cancels(1 + 2**-9)
    bf16 = copy.deepcopy(flips).to(torch.bfloat16)
    windows = precision.example_windows(flips, flips.example_inputs())
    assert len(windows) == precision.WINDOWS and all(w[0].shape == (1, 1) for w in windows)

    def run_bf16(x):
        return bf16(x.to(torch.bfloat16)).float()

    problem, summary, compared = precision.top1_disagreement(run_bf16, flips, windows)
    assert (
        compared == 4
        and problem
        == "its top-1 differs from fp32's on 4 of them (4 of 4 example windows compared)"
    )
    agrees = _Cancels(1.25)
    agrees_bf16 = copy.deepcopy(agrees).to(torch.bfloat16)
    problem, summary, _ = precision.top1_disagreement(
        lambda x: agrees_bf16(x.bfloat16()), agrees, windows
    )
    assert problem is None and summary == "4 of 4 example windows compared"
    # A near tie in fp32 (1.1 against 1.0: the top class under 1.5 times as likely) that
    # the candidate breaks the other way is not counted against it.
    tie, flipped = torch.tensor([[1.1, 1.0, 0.0]]), torch.tensor([[1.0, 1.1, 0.0]])
    problem, summary, compared = precision.top1_disagreement(
        lambda x: flipped, lambda x: tie, windows[:2]
    )
    assert problem is None and compared == 0
    assert summary == "0 of 2 example windows compared, 2 too close to call in fp32"


@pytest.mark.skipif(not inductor.bf16_native(), reason="this CPU has no native bf16")
def test_auto_bf16_falls_back_to_fp32_when_top1_changes(no_cuda, monkeypatch, caplog):
    """Under auto on a CPU with AMX (pretended: the flag), a bf16 engine whose top-1
    differs from fp32's is replaced by fp32, with one warning; one that agrees is kept;
    an explicit bf16 is not checked."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    flips = _Cancels(1 + 2**-9)
    with caplog.at_level(logging.INFO, logger="engines"):
        engine = engines.create(flips, flips.example_inputs(), backend="torch", compile=False)
    assert engine.precision == "fp32" and engine.name == "torch-cpu"
    assert _warnings(caplog) == [
        (
            "precision bf16: its top-1 differs from fp32's on 4 of them "
            "(4 of 4 example windows compared): running fp32 instead"
        )
    ]
    assert int(engine(*flips.example_inputs()).argmax()) == 0
    caplog.clear()
    agrees = _Cancels(1.25)
    with caplog.at_level(logging.INFO, logger="engines"):
        engine = engines.create(agrees, agrees.example_inputs(), backend="torch", compile=False)
    assert engine.precision == "bf16"
    assert (
        "precision bf16: top-1 equals fp32's (4 of 4 example windows compared)" in caplog.messages
    )
    explicit = engines.create(
        flips, flips.example_inputs(), backend="torch", precision="bf16", compile=False
    )
    assert explicit.precision == "bf16" and int(explicit(*flips.example_inputs()).argmax()) == 1


# --- Cache key --------------------------------------------------------------------------------

_KEY = EngineKey(
    model="x3d_xs",
    weights="3f1e2d4c5b6a7988",
    input_shapes=((1, 3, 4, 160, 160),),
    precision="fp16",
    gpu="NVIDIA H100 80GB HBM3 sm_90",
    torch="2.14.1+cu130",
    torch_tensorrt="2.14.0",
    tensorrt="11.1.0",
)
_OTHER = {
    "model": "x3d_s",
    "weights": "init-0123456789abcdef",
    "input_shapes": ((1, 3, 13, 160, 160),),
    "precision": "fp32",
    "gpu": "NVIDIA L4 sm_89",
    "torch": "2.14.2+cu130",
    "torch_tensorrt": "2.14.1",
    "tensorrt": "11.1.1",
    "options": '{"attention": "orthoformer"}',
    "max_batch": 8,
}


def test_cache_key_is_stable_and_readable():
    assert dataclasses.replace(_KEY).stem == _KEY.stem
    # An engine of one window a call keeps the key it had before engines took batches.
    assert _KEY.max_batch == 1 and _KEY.stem == "x3d_xs-fp16-13622fdeb99e54f1"
    assert _KEY.stem.startswith("x3d_xs-fp16-") and len(_KEY.stem) == len("x3d_xs-fp16-") + 16
    assert EngineKey(**{**dataclasses.asdict(_KEY), "model": "a/b c"}).stem.startswith("a_b_c-")


@pytest.mark.parametrize("component", [f.name for f in dataclasses.fields(EngineKey)])
def test_cache_key_changes_with_each_component(component):
    assert set(_OTHER) == {f.name for f in dataclasses.fields(EngineKey)}
    changed = dataclasses.replace(_KEY, **{component: _OTHER[component]})
    assert changed.digest != _KEY.digest
    assert changed.stem != _KEY.stem


def test_cache_keys_differ_by_model_options():
    """Orthoformer attention changes no weight: only the options tell the engines apart."""
    small = {"depth": 1, "embed_dim": 16, "heads": 2, "seed": 0}
    exact = models.create("motionformer_b", **small)
    approx = models.create("motionformer_b", attention="orthoformer", landmarks=8, **small)
    assert weights_digest(exact) == weights_digest(approx)
    inputs = exact.example_inputs()
    cpu = [inductor.key_for(m, inputs, "fp32") for m in (exact, approx)]
    assert cpu[0].stem != cpu[1].stem and json.loads(cpu[1].options)["attention"] == "orthoformer"
    versions = ("2.14.1+cu130", "2.14.0", "11.1.0")
    gpu = [
        tensorrt.key_for(m, inputs, precision="fp16", gpu="GPU", versions=versions)
        for m in (exact, approx)
    ]
    assert gpu[0].stem != gpu[1].stem
    # The same options, in another order or as a list: the same key.
    again = models.create("motionformer_b", landmarks=8, attention="orthoformer", **small)
    assert inductor.key_for(again, inputs, "fp32") == cpu[1]


def test_weights_digest():
    model = models.create("x3d_xs")
    first = weights_digest(model)
    assert first.startswith("init-") and first == weights_digest(model)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1.0
    assert weights_digest(model) != first
    model.weights_id = "abc123"
    assert weights_digest(model) == "abc123"


def test_layer_norm_stays_fp32_in_a_reduced_precision_graph():
    from engines.tensorrt_ops import check_model

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    model = model.to(torch.bfloat16)
    tensorrt._fp32_layer_norms(model, torch.bfloat16)
    assert model[1].weight.dtype == torch.float32 and model[0].weight.dtype == torch.bfloat16
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    assert model(x).dtype == torch.bfloat16
    report = check_model(model, (x,))
    assert report.ok, report.summary()
    assert report.ops["torch.ops.aten._to_copy.default"] == 2  # into and out of fp32


# --- Load or build, check, serve: driven on the CPU with a stand-in torch-tensorrt -------


class _StandInTorchTensorRT:
    """The torch-tensorrt calls the engine makes, done in plain PyTorch: `compile` returns the
    exported program's module as one stand-in TensorRT part (`convert=False`: the module
    itself, as torch-tensorrt returns a graph in which nothing converted), save/load go
    through torch.export; `shift` is added to the outputs of what compile (`shift`) or load
    (`load_shift`) return. Counts the builds."""

    __version__ = "2.14.0"
    __tensorrt_version__ = "11.1.0"

    def __init__(
        self, shift: float = 0.0, load_shift: float = 0.0, fail: bool = False, convert: bool = True
    ):
        self.builds = 0
        self.options: dict = {}
        self.saved: dict = {}
        self.load_shift = load_shift
        stand_in = self

        class dynamo:  # mirrors torch_tensorrt.dynamo
            @staticmethod
            def compile(program, **options):
                stand_in.builds += 1
                stand_in.options = options
                if fail:
                    raise RuntimeError("no converter for aten.weird.default\nmore detail")
                if not convert:
                    return program.module()
                return _Shifted(program.module(), shift)

        self.dynamo = dynamo

    class Input:  # mirrors torch_tensorrt.Input's dynamic form
        def __init__(self, *, min_shape, opt_shape, max_shape, dtype):
            self.shape = {"min_shape": min_shape, "opt_shape": opt_shape, "max_shape": max_shape}
            self.dtype = dtype

    def save(self, module, path, output_format, arg_inputs, dynamic_shapes=None):
        assert output_format == "exported_program"
        self.saved = {"arg_inputs": arg_inputs, "dynamic_shapes": dynamic_shapes}
        engine = module._run_on_acc_0  # what the stand-in TensorRT runs; load wraps it again
        program = torch.export.export(engine, tuple(arg_inputs), dynamic_shapes=dynamic_shapes)
        torch.export.save(program, path)

    def load(self, path):
        program = torch.export.load(path)
        return _Program(_Shifted(program.module(), self.load_shift))


class _StandInEngine(torch.nn.Module):
    """Stands in for a TorchTensorRTModule: a part of the graph that TensorRT runs."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


class _Shifted(torch.nn.Module):
    def __init__(self, module, shift: float):
        super().__init__()
        # Named as torch-tensorrt's partitioner names the parts it converts.
        self._run_on_acc_0 = _StandInEngine(module)
        self.shift = shift

    def forward(self, x):
        return self._run_on_acc_0(x) + self.shift


class _Program:  # what torch_tensorrt.load returns: has .module()
    def __init__(self, module):
        self._module = module

    def module(self):
        return self._module


class _Tiny(torch.nn.Module):
    """A registered model's interface (meta.name, example_inputs, weights_id), small enough
    to export and save in a fraction of a second."""

    class meta:  # stands in for ModelMeta
        name = "tiny"

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv3d(3, 8, 3)
        self.head = torch.nn.Linear(8, 5)
        self.weights_id = None

    def example_inputs(self):
        return (torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0)),)

    def forward(self, x):
        return self.head(self.conv(x).relu().mean((2, 3, 4)))


def _serve(stand_in, model, cache_dir, tolerance=1e-3, max_batch=1):
    return tensorrt._serve(
        stand_in,
        model,
        model.example_inputs(),
        device=torch.device("cpu"),
        gpu="Stand-in GPU sm_00",
        precision="fp32",
        cache_dir=cache_dir,
        tolerance=tolerance,
        compile=False,  # the PyTorch fallback, eager: compiling it has tests of its own
        cudagraphs=None,
        max_batch=max_batch,
    )


def _warnings(caplog) -> list[str]:
    """The WARNING lines of our own loggers (`engines.*`): torch-tensorrt logs its builder's
    warnings at that level too, and they are not ours to count."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.split(".")[0] == "engines"
    ]


def test_build_save_then_load_without_building(tmp_path, caplog):
    stand_in = _StandInTorchTensorRT()
    model = _Tiny()
    with torch.no_grad():
        expected = model(*model.example_inputs())
    with caplog.at_level(logging.INFO, logger="engines"):
        first = _serve(stand_in, model, tmp_path)
    assert first.name == "tensorrt-fp32" and first.mode == "tensorrt" and stand_in.builds == 1
    assert isinstance(first, engines.Engine)
    assert "enabled_precisions" not in stand_in.options
    (saved,) = tmp_path.glob("tiny-fp32-*.pt2")
    assert json.loads(saved.with_suffix(".json").read_text())["gpu"] == "Stand-in GPU sm_00"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file
    messages = "\n".join(caplog.messages)
    for step in (
        "tensorrt-fp32: building tiny fp32 with torch-tensorrt 2.14.0 for Stand-in GPU sm_00 (once",
        "tensorrt-fp32: torch.export of tiny fp32",
        "tensorrt-fp32: tiny fp32 runs as 1 TensorRT engine(s)",
        "tensorrt-fp32: built tiny fp32 in",
        "tensorrt-fp32: tiny compiled by torch-tensorrt (relative error",
        f"tensorrt-fp32: saved to {saved}",
    ):
        assert step in messages
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engines"):
        second = _serve(stand_in, _Tiny(), tmp_path)
    assert stand_in.builds == 1  # loaded, not built
    assert any(
        m.startswith("tensorrt-fp32: loaded the compiled tiny fp32 from") for m in caplog.messages
    )
    # The engines are counted again after the load.
    assert "tensorrt-fp32: tiny fp32 runs as 1 TensorRT engine(s)" in caplog.messages
    assert torch.allclose(second(*model.example_inputs()), expected, atol=1e-6)
    _serve(stand_in, _Tiny(seed=3), tmp_path)  # other weights: another key
    assert stand_in.builds == 2


def test_disagreeing_engine_falls_back_and_is_not_cached(tmp_path, caplog):
    stand_in = _StandInTorchTensorRT(shift=1.0)
    with caplog.at_level(logging.WARNING, logger="engines"):
        engine = _serve(stand_in, _Tiny(), tmp_path)
    assert engine.name == "torch-cpu" and engine.mode == "eager"
    (warning,) = _warnings(caplog)
    assert warning.startswith("tensorrt-fp32: the built tiny fp32 disagrees with eager PyTorch")
    assert warning.endswith(": running torch-cpu (eager) instead")
    assert list(tmp_path.iterdir()) == []  # neither the engine nor a temporary file


def test_tolerance_zero(tmp_path):
    # The stand-in's engine is PyTorch's own module: bit-identical, so tolerance 0 passes;
    # any difference at all fails it.
    assert (
        _serve(_StandInTorchTensorRT(), _Tiny(), tmp_path / "a", tolerance=0.0).name
        == "tensorrt-fp32"
    )
    shifted = _StandInTorchTensorRT(shift=1e-4)
    assert _serve(shifted, _Tiny(), tmp_path / "b", tolerance=0.0).name == "torch-cpu"


def test_cached_engine_that_disagrees_is_dropped(tmp_path, caplog):
    _serve(_StandInTorchTensorRT(), _Tiny(), tmp_path)
    stale = _StandInTorchTensorRT(load_shift=1.0)
    with caplog.at_level(logging.WARNING, logger="engines"):
        assert _serve(stale, _Tiny(), tmp_path).name == "torch-cpu"
    assert stale.builds == 0 and "disagrees" in _warnings(caplog)[0]
    assert list(tmp_path.iterdir()) == []  # the engine and its key: the next start builds afresh
    fresh = _StandInTorchTensorRT()
    assert _serve(fresh, _Tiny(), tmp_path).name == "tensorrt-fp32" and fresh.builds == 1


def test_build_failure_falls_back(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="engines"):
        engine = _serve(_StandInTorchTensorRT(fail=True), _Tiny(), tmp_path)
    assert engine.name == "torch-cpu"
    (warning,) = _warnings(caplog)
    assert warning == (
        "tensorrt-fp32: building tiny fp32 failed (RuntimeError: no converter for "
        "aten.weird.default): running torch-cpu (eager) instead"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_build_that_converted_nothing_falls_back(tmp_path, caplog):
    """torch-tensorrt hands back the PyTorch graph when no op converts: it would pass the
    check and be served as tensorrt-fp32, so no TensorRT engine is a failed build."""
    stand_in = _StandInTorchTensorRT(convert=False)
    with caplog.at_level(logging.WARNING, logger="engines"):
        engine = _serve(stand_in, _Tiny(), tmp_path)
    assert engine.name == "torch-cpu" and stand_in.builds == 1
    (warning,) = _warnings(caplog)
    assert warning == (
        "tensorrt-fp32: building tiny fp32 failed (RuntimeError: torch-tensorrt converted no "
        "part of tiny fp32 into a TensorRT engine (it would run as PyTorch)): "
        "running torch-cpu (eager) instead"
    )
    assert list(tmp_path.iterdir()) == []


def test_broken_cache_file_is_rebuilt(tmp_path, caplog):
    stand_in = _StandInTorchTensorRT()
    _serve(stand_in, _Tiny(), tmp_path)
    (saved,) = tmp_path.glob("*.pt2")
    saved.write_bytes(b"not a program")
    with caplog.at_level(logging.WARNING, logger="engines"):
        engine = _serve(stand_in, _Tiny(), tmp_path)
    assert engine.name == "tensorrt-fp32" and stand_in.builds == 2
    assert any("cannot load" in m and "building it again" in m for m in _warnings(caplog))


def test_an_engine_that_cannot_be_saved_is_served(tmp_path, caplog):
    stand_in = _StandInTorchTensorRT()

    def save(*args, **kwargs):
        raise OSError(28, "No space left on device")

    stand_in.save = save
    with caplog.at_level(logging.WARNING, logger="engines"):
        engine = _serve(stand_in, _Tiny(), tmp_path)
    assert engine.name == "tensorrt-fp32"
    (warning,) = _warnings(caplog)
    assert "could not save tiny fp32" in warning and "No space left on device" in warning
    assert list(tmp_path.iterdir()) == []  # nothing half-written either


def test_tensorrt_batches_build_with_a_profile_and_save_a_dynamic_batch(tmp_path, caplog):
    """max_batch 3: exported with a dynamic batch, built with one profile per input (min 1,
    opt and max 3), saved with the same dynamic batch; built and loaded, it runs any batch
    of 1 to 3 windows, each as its window alone; its key is another file than batch 1's."""
    stand_in = _StandInTorchTensorRT()
    model = _Tiny()
    with caplog.at_level(logging.INFO, logger="engines"):
        first = _serve(stand_in, model, tmp_path, max_batch=3)
    assert first.name == "tensorrt-fp32" and first.max_batch == 3, _warnings(caplog)
    (profile,) = stand_in.options["arg_inputs"]
    assert profile.shape == {
        "min_shape": (1, 3, 4, 8, 8),
        "opt_shape": (3, 3, 4, 8, 8),
        "max_shape": (3, 3, 4, 8, 8),
    }
    (dims,) = stand_in.saved["dynamic_shapes"]
    assert (dims[0].min, dims[0].max) == (1, 3)
    assert "tensorrt-fp32: building tiny fp32 for batches of 1 to 3 with" in "\n".join(
        caplog.messages
    )
    second = _serve(stand_in, _Tiny(), tmp_path, max_batch=3)
    assert stand_in.builds == 1  # loaded
    batch = engines.base.example_batch(model.example_inputs(), 3)
    with torch.no_grad():
        expected = model(*batch)
    for engine in (first, second):
        for size in (1, 2, 3):
            assert relative_error(engine(batch[0][:size]), expected[:size]) < 1e-5
        with pytest.raises(ValueError, match="a batch of 4 windows, but this engine takes 1 to 3"):
            engine(torch.cat([batch[0], batch[0][:1]]))
    _serve(stand_in, _Tiny(), tmp_path)  # one window a call: another key, another build
    assert stand_in.builds == 2 and len(list(tmp_path.glob("tiny-fp32-*.pt2"))) == 2


@pytest.mark.parametrize(
    "version, explicit", [("2.9.0", False), ("2.10.0", True), ("2.14.0", True)]
)
def test_fp16_build_follows_the_release(version, explicit):
    """Half model and inputs on every release; enabled_precisions only before explicit
    typing (2.10)."""
    stand_in = _StandInTorchTensorRT()
    stand_in.__version__ = version
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)).half()
    x = torch.randn(2, 8).half()
    tensorrt._build(
        stand_in, model, (x,), device=torch.device("cpu"), precision="fp16", what="t", name="t"
    )
    assert ("enabled_precisions" in stand_in.options) != explicit
    assert all(t.dtype == torch.float16 for t in stand_in.options["arg_inputs"])
    assert model[1].weight.dtype == torch.float16  # the served model is left alone


# Registered here only where torch-tensorrt (which registers the real one) is not installed.
_EXECUTE_ENGINE_LIBRARY = None


def test_tensorrt_engines_are_counted_in_built_and_loaded_graphs():
    """count_tensorrt_engines: none in a PyTorch graph (what torch-tensorrt returns when
    nothing converts) or in a part left unconverted; one per converted `_run_on_acc` part
    of a built module; one per tensorrt::execute_engine call of a loaded program."""
    import operator

    model = _Tiny()
    plain = export(model, model.example_inputs()).module()
    assert tensorrt.count_tensorrt_engines(plain) == 0
    assert tensorrt.count_tensorrt_engines(model) == 0
    built = _Shifted(plain, 0.0)
    assert tensorrt.count_tensorrt_engines(built) == 1
    unconverted = torch.nn.Module()
    unconverted._run_on_acc_0 = plain  # still a GraphModule: no converter ran on it
    assert tensorrt.count_tensorrt_engines(unconverted) == 0

    global _EXECUTE_ENGINE_LIBRARY
    if importlib.util.find_spec("torch_tensorrt") is None and _EXECUTE_ENGINE_LIBRARY is None:
        _EXECUTE_ENGINE_LIBRARY = torch.library.Library("tensorrt", "FRAGMENT")
        _EXECUTE_ENGINE_LIBRARY.define("execute_engine(Tensor[] inputs) -> Tensor[]")
    if _EXECUTE_ENGINE_LIBRARY is None:
        pytest.skip("torch-tensorrt is installed: its own execute_engine is counted on a GPU")
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    calls = [
        graph.call_function(torch.ops.tensorrt.execute_engine.default, ([x],)) for _ in range(2)
    ]
    graph.output([graph.call_function(operator.getitem, (c, 0)) for c in calls])
    loaded = torch.fx.GraphModule(torch.nn.Module(), graph)
    assert tensorrt.count_tensorrt_engines(loaded) == 2


# --- On a GPU ---------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_tensorrt = pytest.mark.skipif(
    tensorrt.unavailable_reason() is not None,
    reason=f"needs torch-tensorrt on a CUDA GPU ({tensorrt.unavailable_reason()})",
)
needs_two_gpus = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"
)


def _reduced_slowfast() -> torch.nn.Module:
    """SlowFast R50's two pathways and fusions (two inputs) at a fraction of its size."""
    return models.create("slowfast_r50", seed=0, width=16, depths=(1, 1, 1, 1), crop=128)


def _reduced_mvit() -> torch.nn.Module:
    """MViTv2-S's blocks (LayerNorms, pooled attention with relative positions, residual
    pooling) at a fraction of its size: two stages of one block, 8 frames of 64 x 64."""
    from models import mvit
    from models._registry import ModelMeta, VideoInput, class_labels

    cfg = dataclasses.replace(
        mvit._config("mvit_v2_s", num_classes=10),
        frames=8,
        train_crop=64,
        short_side=64,
        embed_dim=32,
        depths=(1, 1),
        heads=(1, 2),
    )
    meta = ModelMeta(
        name="mvit_v2_s",
        video=(VideoInput(frames=cfg.frames, interval_s=cfg.interval_s),),
        crop=cfg.train_crop,
        short_side=cfg.short_side,
        mean=mvit._MEAN,
        std=mvit._STD,
        labels=class_labels(10),
    )
    torch.manual_seed(0)
    return mvit.MViT(cfg, meta).eval()


class _NothingConverts(torch.nn.Module):
    """aten.i0 alone: no converter, nothing decomposes it (engines.tensorrt_ops says so)."""

    def forward(self, x):
        return torch.special.i0(x)

    def example_inputs(self):
        return (torch.randn(1, 5, generator=torch.Generator().manual_seed(0)),)


class _DataDependent(torch.nn.Module):
    """A branch on a tensor's value: torch.export refuses it."""

    def forward(self, x):
        return x if x.sum() > 0 else -x

    def example_inputs(self):
        return (torch.randn(1, 5, generator=torch.Generator().manual_seed(0)),)


@pytest.mark.gpu
@needs_cuda
def test_torch_cuda_compiled_with_cuda_graphs():
    model = _perturbed()
    inputs = model.example_inputs()
    reference = TorchEngine(_perturbed(), inputs, device="cuda")
    engine = engines.create(model, inputs, backend="torch", device="cuda")
    assert engine.name == "torch-cuda-fp16" and engine.dtype == torch.float16
    assert engine.mode == "compiled+cudagraphs"
    other = torch.randn_like(inputs[0])
    first = engine(*inputs)  # from the host: pinned buffer, non-blocking copy
    snapshot = first.clone()
    second = engine(other.cuda())  # already on the device
    assert first.device.type == "cuda" and first.dtype == torch.float32
    # The CUDA graph's output buffer is overwritten by each replay: results must be copies.
    assert torch.equal(first, snapshot) and not torch.equal(first, second)
    assert relative_error(first, reference(*inputs)) <= TOLERANCE["fp16"]
    assert relative_error(second, reference(other)) <= TOLERANCE["fp16"]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_torch_cuda_captured_graph_without_compile(precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bfloat16 on this GPU")
    model = _perturbed()
    inputs = model.example_inputs()
    with torch.no_grad():
        expected = model(*inputs)
    engine = engines.create(
        model, inputs, backend="torch", device="cuda", precision=precision, compile=False,
        cudagraphs=True,
    )  # fmt: skip
    assert engine.mode == "cudagraphs" and engine.name == f"torch-cuda-{precision}"
    assert relative_error(engine(*inputs), expected) <= TOLERANCE[precision]


def _tensorrt_matches_torch(model, precision, cache_dir, caplog) -> None:
    """Build `model` with TensorRT at `precision`, check that it serves TensorRT engines and
    agrees with eager PyTorch on inputs other than the example ones."""
    inputs = model.example_inputs()
    reference = TorchEngine(model, inputs, device="cuda", precision=precision)  # a cast copy
    with caplog.at_level(logging.INFO, logger="engines"):
        engine = engines.create(
            model, inputs, backend="tensorrt", precision=precision, cache_dir=cache_dir,
            compile=False,
        )  # fmt: skip
    assert engine.name == f"tensorrt-{precision}" and engine.mode == "tensorrt", _warnings(caplog)
    assert engine.dtype == torch_engine.DTYPES[precision]
    assert tensorrt.count_tensorrt_engines(engine.module) >= 1
    name = model.meta.name
    assert any(f"{name} {precision} runs as" in m for m in caplog.messages)
    generator = torch.Generator().manual_seed(5)
    other = tuple(torch.randn(x.shape, generator=generator) for x in inputs)
    assert relative_error(engine(*other), reference(*other)) <= TOLERANCE[precision]
    assert len(list(Path(cache_dir).glob(f"{name}-{precision}-*.pt2"))) == 1
    assert _warnings(caplog) == []


@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_tensorrt_compiles_and_matches_torch(tmp_path, caplog, precision):
    _tensorrt_matches_torch(_perturbed(), precision, tmp_path, caplog)


@pytest.mark.gpu
@needs_tensorrt
def test_tensorrt_two_inputs(tmp_path, caplog):
    """SlowFast: a slow and a fast pathway, two inputs through one TensorRT program."""
    model = _reduced_slowfast()
    assert len(model.example_inputs()) == 2
    _tensorrt_matches_torch(model, "fp16", tmp_path, caplog)


@pytest.mark.gpu
@needs_tensorrt
def test_tensorrt_layer_norms_in_fp16(tmp_path, caplog):
    """MViT's LayerNorms run in fp32 inside the fp16 TensorRT program (their mean of squares
    overflows fp16), and the program agrees with eager fp16 PyTorch."""
    model = _reduced_mvit()
    assert any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    _tensorrt_matches_torch(model, "fp16", tmp_path, caplog)


@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.parametrize(
    "model, reason",
    [
        (_NothingConverts(), "RuntimeError: torch-tensorrt converted no part of"),
        (_DataDependent(), "building"),
    ],
    ids=["nothing-converts", "export-fails"],
)
def test_tensorrt_build_failure_falls_back_to_torch(tmp_path, caplog, model, reason):
    with caplog.at_level(logging.WARNING, logger="engines"):
        engine = engines.create(
            model, model.example_inputs(), backend="tensorrt", precision="fp32",
            cache_dir=tmp_path, compile=False, cudagraphs=False,  # the fallback: eager
        )  # fmt: skip
    assert engine.name == "torch-cuda-fp32" and engine.mode == "eager"
    (warning,) = _warnings(caplog)
    assert warning.startswith("tensorrt-fp32: building ") and reason in warning, warning
    assert warning.endswith(": running torch-cuda-fp32 (eager) instead")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.timeout(1200)  # three TensorRT builds
def test_tensorrt_cache_reuse(tmp_path, caplog):
    inputs = _perturbed().example_inputs()
    first = engines.create(
        _perturbed(), inputs, backend="tensorrt", cache_dir=tmp_path, compile=False
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engines"):
        second = engines.create(
            _perturbed(), inputs, backend="tensorrt", cache_dir=tmp_path, compile=False
        )
    assert first.name == second.name == "tensorrt-fp16"
    assert any("loaded the compiled x3d_xs fp16" in m for m in caplog.messages)
    assert any("x3d_xs fp16 runs as" in m for m in caplog.messages)  # engines counted after load
    assert not any("building" in m or "compiling" in m for m in caplog.messages)
    assert relative_error(second(*inputs), first(*inputs)) <= TOLERANCE["fp16"]
    # Other weights: another key, so a build.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engines"):
        engines.create(
            _perturbed(seed=7), inputs, backend="tensorrt", cache_dir=tmp_path, compile=False
        )
    assert any("tensorrt-fp16: building x3d_xs fp16" in m for m in caplog.messages)


@pytest.mark.gpu
@needs_tensorrt
def test_tensorrt_falls_back_to_torch_when_parity_fails(tmp_path, caplog):
    model = _perturbed()
    with caplog.at_level(logging.WARNING, logger="engines"):
        engine = engines.create(
            model,
            model.example_inputs(),
            backend="tensorrt",
            cache_dir=tmp_path,
            tolerance=0.0,
            compile=False,
            cudagraphs=False,  # the fallback: eager
        )
    assert engine.name == "torch-cuda-fp16"
    (warning,) = _warnings(caplog)
    assert "disagrees with eager PyTorch" in warning
    assert warning.endswith("running torch-cuda-fp16 (eager) instead")
    assert list(tmp_path.iterdir()) == []  # an engine that failed its check is not cached


@pytest.mark.gpu
@needs_two_gpus
def test_engines_on_a_gpu_that_is_not_the_current_one(tmp_path):
    """--device cuda:1 while cuda:0 is current: the engine builds and runs on cuda:1 (CUDA
    graphs, streams and TensorRT contexts belong to the current device) and leaves the
    current device as it was."""
    model = _perturbed()
    inputs = model.example_inputs()
    torch.cuda.set_device(0)
    reference = TorchEngine(_perturbed(), inputs, device="cuda:1")
    backends = ["torch"] + (["tensorrt"] if tensorrt.unavailable_reason() is None else [])
    for backend in backends:
        engine = engines.create(model, inputs, backend=backend, device="cuda:1", cache_dir=tmp_path)
        assert engine.device == torch.device("cuda", 1)
        assert engine.mode in ("compiled+cudagraphs", "tensorrt"), engine.mode
        logits = engine(*inputs)
        assert logits.device == torch.device("cuda", 1)
        assert relative_error(logits, reference(*inputs)) <= TOLERANCE["fp16"]
        assert torch.cuda.current_device() == 0


def _batch_matches_windows(engine, model, precision: str) -> None:
    """Each window of a batch of every size from 1 to engine.max_batch gives what eager
    PyTorch gives it alone, within the precision's tolerance (TF32 and fp16 kernels differ
    between batch sizes, so not 1e-5)."""
    reference = TorchEngine(model, model.example_inputs(), device="cuda", precision=precision)
    batch = engines.base.example_batch(model.example_inputs(), engine.max_batch)
    alone = torch.cat([reference(*(x[i : i + 1] for x in batch)) for i in range(len(batch[0]))])
    for size in range(1, engine.max_batch + 1):
        logits = engine(*(x[:size] for x in batch))
        assert logits.shape == (size, alone.shape[1]) and logits.dtype == torch.float32
        for i in range(size):
            assert relative_error(logits[i], alone[i]) <= TOLERANCE[precision], (size, i)
    with pytest.raises(ValueError, match="this engine takes 1 to"):
        engine(*(torch.cat([x, x[:1]]) for x in batch))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("compile", [True, False], ids=["compiled", "captured"])
def test_torch_cuda_batches_in_buckets(compile):
    """max_batch 5: CUDA graphs for buckets 1, 2, 4 and 5; 3 runs padded into 4."""
    model = _perturbed()
    engine = engines.create(
        model, model.example_inputs(), backend="torch", device="cuda", compile=compile,
        max_batch=5,
    )  # fmt: skip
    assert engine.mode == ("compiled+cudagraphs" if compile else "cudagraphs")
    assert engine.batch_sizes == (1, 2, 4, 5) and engine.max_batch == 5
    _batch_matches_windows(engine, model, "fp16")


@pytest.mark.gpu
@needs_tensorrt
def test_tensorrt_batches(tmp_path, caplog):
    """max_batch 4: one TensorRT program with a profile of 1 to 4 (two inputs: SlowFast),
    any batch size in it, loaded from the cache as built."""
    model = _reduced_slowfast()
    with caplog.at_level(logging.INFO, logger="engines"):
        engine = engines.create(
            model, model.example_inputs(), backend="tensorrt", precision="fp16",
            cache_dir=tmp_path, compile=False, max_batch=4,
        )  # fmt: skip
    assert engine.mode == "tensorrt" and engine.max_batch == 4, _warnings(caplog)
    _batch_matches_windows(engine, model, "fp16")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engines"):
        again = engines.create(
            model, model.example_inputs(), backend="tensorrt", precision="fp16",
            cache_dir=tmp_path, compile=False, max_batch=4,
        )  # fmt: skip
    assert any(
        "loaded the compiled slowfast_r50 fp16 for batches of 1 to 4" in m for m in caplog.messages
    )
    _batch_matches_windows(again, model, "fp16")
