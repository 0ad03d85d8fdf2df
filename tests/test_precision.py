"""--precision auto's bf16 check on the CPU and its verdict in the engine cache: real
AOTInductor engines of a tiny model, compiled into a cache of the test's own, built once
(the check runs) and loaded again (the verdict saved at the build is reused)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import engines
from cancels import Cancels as _Cancels
from engines import inductor, precision

pytestmark = [
    pytest.mark.slow,  # compiled engines, built twice each
    pytest.mark.skipif(not inductor.bf16_native(), reason="this CPU has no native bf16"),
]


@pytest.fixture
def auto_is_bf16(monkeypatch):
    """--precision auto picks bf16 (a CPU with AMX, pretended through its flag)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))


def _create(model, cache_dir, caplog, **kwargs):
    """engines.create under auto; returns (engine, its log lines, forward calls of `model`)."""
    caplog.clear()
    model.calls = 0
    with caplog.at_level(logging.INFO, logger="engines"):
        engine = engines.create(
            model, model.example_inputs(), backend="torch", cache_dir=cache_dir, **kwargs
        )
    return engine, [r.getMessage() for r in caplog.records], model.calls


def _verdicts(cache_dir) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(cache_dir.glob("*.bf16-check.json"))]


SAVED = ", checked before and saved with the compiled engine"


def test_a_kept_bf16_verdict_is_saved_at_the_build_and_reused(auto_is_bf16, tmp_path, caplog):
    model = _Cancels(1.25)
    checked = "precision bf16: top-1 equals fp32's (4 of 4 example windows compared)"
    built, lines, _ = _create(model, tmp_path, caplog)
    assert built.precision == "bf16" and built.mode == "aot-compiled" and not built.from_cache
    assert any(line.startswith("torch-cpu-bf16: compiled cancels bf16 in") for line in lines)
    assert checked in lines
    [verdict] = _verdicts(tmp_path)
    assert verdict["precision"] == "bf16" and verdict["compared"] == 4
    assert verdict["check"] == precision.CHECK
    assert built.package.with_name(built.package.stem + ".bf16-check.json").exists()

    loaded, lines, calls = _create(model, tmp_path, caplog)
    assert loaded.precision == "bf16" and loaded.from_cache
    assert checked + SAVED in lines and checked not in lines
    # The check ran eager fp32 on the example windows; this start did not run it at all.
    _, _, explicit_calls = _create(model, tmp_path, caplog, precision="bf16")
    assert calls == explicit_calls == 0
    assert _verdicts(tmp_path) == [verdict]

    # A verdict this check cannot read is not trusted: the check runs and saves it again.
    path = loaded.package.with_name(loaded.package.stem + ".bf16-check.json")
    path.write_text("{")
    again, lines, calls = _create(model, tmp_path, caplog)
    assert again.precision == "bf16" and again.from_cache and checked in lines and calls > 0
    assert _verdicts(tmp_path)[0]["precision"] == "bf16"


def test_a_fallback_to_fp32_is_saved_at_the_build_and_reused(auto_is_bf16, tmp_path, caplog):
    flips = _Cancels(1 + 2**-9)
    problem = (
        "precision bf16: its top-1 differs from fp32's on 4 of them "
        "(4 of 4 example windows compared)"
    )
    built, lines, _ = _create(flips, tmp_path, caplog)
    assert built.precision == "fp32" and built.name == "torch-cpu" and built.mode == "aot-compiled"
    assert problem + ": running fp32 instead" in lines
    [verdict] = _verdicts(tmp_path)  # beside the bf16 engine, which was checked
    assert verdict["precision"] == "fp32" and verdict["problem"] in problem

    loaded, lines, calls = _create(flips, tmp_path, caplog)
    assert loaded.precision == "fp32" and loaded.from_cache
    assert int(loaded(*flips.example_inputs()).argmax()) == 0
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.split(".")[0] == "engines"
    ]
    assert warnings == [problem + SAVED + ": running fp32 instead"]
    # No eager fp32 runs beyond those of the fp32 engine's own start (its parity check).
    _, _, explicit_calls = _create(flips, tmp_path, caplog, precision="fp32")
    assert calls == explicit_calls
    assert _verdicts(tmp_path) == [verdict]


def test_an_eager_engine_is_checked_on_every_start(auto_is_bf16, tmp_path, caplog):
    model = _Cancels(1.25)
    checked = "precision bf16: top-1 equals fp32's (4 of 4 example windows compared)"
    for _ in range(2):
        engine, lines, calls = _create(model, tmp_path, caplog, compile=False)
        assert engine.precision == "bf16" and engine.mode == "eager" and checked in lines
        assert calls >= precision.WINDOWS
    assert list(tmp_path.iterdir()) == []  # nothing cached, no verdict either
