"""Engines take batches: the batch rules every engine follows (engines/base.py), eager
PyTorch on a batch of the registered families' reduced networks, the dynamic-batch program
the CPU engine compiles, and the cache keys of engines for batches. The compiled engines'
batch tests are with their backends in tests/test_engines.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import engines
from engines import inductor, tensorrt
from engines.base import batch_size, bucket_for, bucket_sizes, example_batch, relative_error
from helpers_models import small


def test_bucket_sizes():
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(2) == (1, 2)
    assert bucket_sizes(6) == (1, 2, 4, 6)
    assert bucket_sizes(8) == (1, 2, 4, 8)
    assert bucket_sizes(9) == (1, 2, 4, 8, 9)
    assert [bucket_for(n, (1, 2, 4, 6)) for n in range(1, 7)] == [1, 2, 4, 4, 6, 6]


def test_example_batch_is_distinct_windows_after_the_example():
    example = (torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 + 5,)
    assert example_batch(example, 1) == example
    (batch,) = example_batch(example, 4)
    assert batch.shape == (4, 3, 4, 8, 8) and torch.equal(batch[:1], example[0])
    assert all(not torch.equal(batch[i], batch[j]) for i in range(4) for j in range(i))
    assert abs(batch[1:].mean().item() - 5) < 0.2 and abs(batch[1:].std().item() - 2) < 0.2
    (again,) = example_batch(example, 4)
    assert torch.equal(again, batch)  # drawn from a fixed seed: a check sees the same windows


def test_batch_size_rules():
    x = torch.zeros(3, 2)
    assert batch_size((x, torch.zeros(3, 5)), 4) == 3
    with pytest.raises(ValueError, match="a batch of 3 windows, but this engine takes 1 to 2"):
        batch_size((x,), 2)
    with pytest.raises(
        ValueError, match=r"the same windows on dim 0, got shapes \(3, 2\), \(2, 2\)"
    ):
        batch_size((x, torch.zeros(2, 2)), 4)
    with pytest.raises(ValueError, match="takes 1 to 4"):
        batch_size((torch.zeros(0, 2),), 4)


def test_eager_batch_gives_each_window_what_it_gives_alone():
    """The engine's side of a batch (every model's own batch items are independent:
    tests/test_models.py checks each registered model)."""
    model = small("x3d_xs")
    engine = engines.create(
        model, model.example_inputs(), backend="torch", device="cpu", precision="fp32",
        compile=False, max_batch=4,
    )  # fmt: skip
    assert engine.max_batch == 4 and engine.batch_sizes == (1, 2, 3, 4)
    batch = example_batch(model.example_inputs(), 3)
    logits = engine(*batch)
    assert logits.shape == (3, 400) and logits.dtype == torch.float32
    alone = [engine(*(x[i : i + 1] for x in batch))[0] for i in range(3)]
    for i in range(3):
        assert relative_error(logits[i], alone[i]) <= 1e-5, i
    assert relative_error(alone[1], alone[0]) > 1e-3  # distinct: a mix-up of windows would show
    with pytest.raises(ValueError, match="a batch of 5 windows, but this engine takes 1 to 4"):
        engine(*example_batch(model.example_inputs(), 5))


def test_max_batch_must_be_a_whole_number_of_windows():
    model = small("x3d_xs")
    for bad in (0, -1, 2.0, True):
        with pytest.raises(engines.EngineError, match=f"max_batch {bad!r} must be a whole number"):
            engines.create(
                model, model.example_inputs(), backend="torch", device="cpu", compile=False,
                max_batch=bad,
            )  # fmt: skip
    with pytest.raises(ValueError, match="the example inputs are one window"):
        engines.create(
            model, example_batch(model.example_inputs(), 2), backend="torch", device="cpu",
            compile=False, max_batch=2,
        )  # fmt: skip


def test_warmup_runs_every_batch_size(monkeypatch):
    model = torch.nn.Linear(4, 2)
    engine = engines.create(
        model, (torch.zeros(1, 4),), backend="torch", device="cpu", precision="fp32",
        compile=False, max_batch=3,
    )  # fmt: skip
    seen = []
    forward = engine._forward
    monkeypatch.setattr(engine, "_forward", lambda *x: seen.append(x[0].shape[0]) or forward(*x))
    engine.warmup(2)
    assert seen == [1, 2, 3, 1, 2, 3]


def test_cpu_program_with_a_dynamic_batch():
    """What the CPU engine compiles for batches: X3D exported with a batch of 1 to 4 and
    its squeeze-excite layers rewritten as sums (reshapes that take any batch); it runs
    every batch size as eager PyTorch does. Compiling it is test_engines.py's."""
    from models.x3d import _SqueezeExcite

    model = small("x3d_xs")
    inputs = model.example_inputs()
    program = inductor.prepare(model, inputs, max_batch=4)
    ((low, high),) = [(r.lower, r.upper) for r in program.range_constraints.values()]
    assert (low, high) == (1, 4)
    convolutions = sum(
        n.op == "call_function" and "conv" in str(n.target)
        for n in program.graph_module.graph.nodes
    )
    gates = sum(isinstance(m, _SqueezeExcite) for m in model.modules())
    assert (
        gates
        and convolutions == sum(isinstance(m, torch.nn.Conv3d) for m in model.modules()) - 2 * gates
    )
    batch = example_batch(inputs, 3)
    with torch.no_grad():
        for size in (1, 3):
            x = tuple(t[:size] for t in batch)
            torch.testing.assert_close(program.module()(*x), model(*x), rtol=1e-5, atol=1e-6)


def test_cache_keys_differ_by_max_batch():
    """A max_batch 4 engine is never loaded for a max_batch 8 run; an engine of one window
    a call keeps the key it had before engines took batches (pinned)."""
    key = inductor.CpuKey(
        model="tiny", weights="init-0123456789abcdef", input_shapes=((1, 3, 4, 8, 8),),
        precision="fp32", cpu="AMD EPYC 9R14 AVX512", threads=2, torch="2.14.1+cpu", passes=1,
    )  # fmt: skip
    assert key.max_batch == 1 and key.stem == "tiny-fp32-9f84102ed2912e15"
    stems = {dataclasses.replace(key, max_batch=n).stem for n in (1, 4, 8)}
    assert len(stems) == 3
    model = small("x3d_xs")
    inputs = model.example_inputs()
    assert inductor.key_for(model, inputs, "fp32", max_batch=4).max_batch == 4
    versions = ("2.14.1+cu130", "2.14.0", "11.1.0")
    gpu = [
        tensorrt.key_for(
            model, inputs, precision="fp16", gpu="GPU", versions=versions, max_batch=n
        ).stem
        for n in (1, 4, 8)
    ]
    assert len(set(gpu)) == 3


def test_a_batch_padded_up_to_its_bucket():
    """How the CUDA engine runs a batch in a bucket of fixed shapes (engines/cuda.py), on
    the CPU: copied into the bucket's buffers, whose other rows keep earlier windows, and
    cut back; a full bucket runs as it is."""
    from engines.cuda import _Padded

    model = torch.nn.Linear(4, 2)
    calls = []

    def run(x):
        calls.append(x)
        return model(x)

    buffers = (torch.zeros(4, 4),)
    padded = _Padded(run, buffers)
    batch = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = padded(batch[:3])
        assert out.shape == (3, 2) and torch.equal(out, model(batch[:3]))
        assert calls[-1] is buffers[0] and torch.equal(buffers[0][3], torch.zeros(4))
        assert torch.equal(padded(batch[3:]), model(batch[3:]))
        assert torch.equal(buffers[0][1:3], batch[1:3])  # rows of the earlier batch, kept
        assert padded(batch) is not None and calls[-1] is batch  # full: no copy
        with pytest.raises(ValueError, match=r"captured for inputs \(4, 4\), got \(5, 4\)"):
            padded(torch.zeros(5, 4))
