"""What can be proven about the TensorRT path without a GPU: every registered model exports
with torch.export at its static example shapes (one of each family at full size, the others
reduced), and its lowered graph uses only operators torch-tensorrt converts
(engines/tensorrt_ops.py). Export traces with fake tensors, so the
models are built on the meta device (no memory, no initialisation) and never run; that this
finds the operators a CPU model has is checked too."""

from __future__ import annotations

import re
import runpy

import pytest
import torch

import models
from engines import _trt_ops_data, tensorrt_ops
from engines.tensorrt_ops import check_model
from helpers_models import meta_inputs, on_meta, small


def _findings(report) -> tuple:
    return (
        report.export_error,
        dict(report.ops),
        report.unsupported,
        dict(report.folded),
        dict(report.trt_decomposed),
    )


# Convolutions, BatchNorm and pooling; attention (whose kernel torch picks by device),
# LayerNorm and GELU.
@pytest.mark.parametrize("name", ["x3d_xs", "motionformer_b"])
def test_meta_device_export_finds_the_cpu_operators(name):
    on_cpu = small(name)
    with torch.device("meta"):
        meta = small(name)
    assert next(meta.parameters()).is_meta
    expected = _findings(check_model(on_cpu, on_cpu.example_inputs()))
    assert expected[1], "no operators found"
    assert _findings(check_model(meta, meta_inputs(meta))) == expected


#: One model of each family is exported at full size. The others are size variants of
#: one of them (x3d_s/m/l, motionformer_b_hr/l: deeper, wider, larger inputs, the same
#: blocks) or siblings in its module (avslowfast_r50, mvit_v1_b), and are exported as
#: their reduced network (helpers_models.small: every kind of block kept, one per stage or
#: one in all, the same inputs), which lowers to the same operators as the full-size model
#: (compared for every registered model when this was written) in a fraction of the time
#: (x3d_l: 9 s at full size, 1 s reduced).
FULL_SIZE = {"x3d_xs", "slowfast_r50", "motionformer_b", "mvit_v2_s"}


@pytest.mark.slow  # full-size graphs: seconds each to export and lower
@pytest.mark.parametrize("name", models.available())
def test_model_exports_and_every_op_converts(name):
    if name in FULL_SIZE:
        model = on_meta(name)
    else:
        with torch.device("meta"):
            model = small(name)
    report = check_model(model, meta_inputs(model), name)
    assert report.export_error is None, report.summary()
    assert report.ops, f"{name}: the lowered graph has no operators"
    assert report.ok, report.summary()


class _FFT(torch.nn.Module):
    """aten._fft_r2c: no converter in torch-tensorrt, and nobody decomposes it."""

    def forward(self, x):
        return torch.fft.rfft(x).abs()


def test_checker_catches_an_op_without_converter():
    report = check_model(_FFT(), (torch.randn(1, 3, 8),))
    assert report.export_error is None
    assert not report.ok
    assert set(report.unsupported) == {"torch.ops.aten._fft_r2c.default"}
    assert report.unsupported["torch.ops.aten._fft_r2c.default"] == {"no converter"}
    assert report.ops["torch.ops.aten.abs.default"] == 1  # seen, and convertible
    assert "aten._fft_r2c.default" in report.summary()


def test_checker_repeats_converter_argument_checks():
    # avg_pool with ceil_mode=True has a converter, whose validator refuses it.
    pool = torch.nn.Sequential(torch.nn.AvgPool3d(2, ceil_mode=True))
    report = check_model(pool, (torch.randn(1, 2, 5, 5, 5),))
    assert report.unsupported == {"torch.ops.aten.avg_pool3d.default": {"ceil_mode=True"}}
    ok = check_model(torch.nn.Sequential(torch.nn.AvgPool3d(2)), (torch.randn(1, 2, 5, 5, 5),))
    assert ok.ok, ok.summary()


class _OwnDecompositions(torch.nn.Module):
    """silu and view: torch-tensorrt decomposes them itself (no converter of their own)."""

    def forward(self, x):
        return torch.nn.functional.silu(x).view(-1)


def test_ops_torch_tensorrt_decomposes_itself_pass():
    report = check_model(_OwnDecompositions(), (torch.randn(2, 3),))
    assert report.ok, report.summary()
    assert report.trt_decomposed["torch.ops.aten.silu.default"] == 1
    assert "torch.ops.aten.silu.default" not in _trt_ops_data.CONVERTERS


class _MaxPoolAndConstants(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = torch.nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
        self.scale = torch.nn.Parameter(torch.ones(2))

    def forward(self, x):
        # A function of a parameter only: folded at build time, needs no converter (i0 has none).
        scale = torch.special.i0(self.scale)
        return self.pool(x) * scale.view(1, 2, 1, 1, 1)


def test_max_pool_indices_and_constant_subgraphs():
    report = check_model(_MaxPoolAndConstants(), (torch.randn(1, 2, 4, 8, 8),))
    assert report.ok, report.summary()
    assert report.ops == {"torch.ops.aten.max_pool3d.default": 1, "torch.ops.aten.mul.Tensor": 1}
    assert report.folded["torch.ops.aten.i0.default"] == 1
    assert "torch.ops.aten.i0.default" not in _trt_ops_data.CONVERTERS


class _DataDependent(torch.nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


def test_export_failure_is_reported():
    report = check_model(_DataDependent(), (torch.randn(3),))
    assert not report.ok
    assert report.export_error and "\n" not in report.export_error
    assert "torch.export failed" in report.summary()


def test_op_tables_match_this_torch():
    """torch-tensorrt X.Y is built for torch X.Y: after a torch upgrade, regenerate the
    tables (`python -m engines.tensorrt_ops regenerate WHEEL`) for the matching release."""
    release = tuple(int(p) for p in re.findall(r"\d+", torch.__version__)[:2])
    assert tuple(int(p) for p in _trt_ops_data.VERSION.split(".")[:2]) == release
    unknown = [
        name
        for name in _trt_ops_data.CONVERTERS
        if name.startswith(("torch.ops.aten.", "torch.ops.prims."))
        and not tensorrt_ops._resolve(name)
    ]
    for group in (
        _trt_ops_data.ENABLED_TORCH_DECOMPOSITIONS,
        _trt_ops_data.DISABLED_TORCH_DECOMPOSITIONS,
        _trt_ops_data.TORCH_TRT_DECOMPOSITIONS,
        _trt_ops_data.ATTENTION_DECOMPOSITIONS,
    ):
        unknown += [name for name in group if not tensorrt_ops._resolve(name)]
    assert not unknown


def test_data_module_round_trip(tmp_path):
    facts = {
        "version": "9.9.0",
        "source": "torch_tensorrt-9.9.0.whl",
        "converters": {
            "torch.ops.aten.add.Tensor": ("",),
            "operator.getitem": ("getitem_validator",),
        },
        "enabled": ["aten.addcdiv"],
        "disabled": ["aten.linear.default"],
        "own": ["aten.silu.default"],
        "attention": ["aten.scaled_dot_product_attention.default"],
    }
    path = tmp_path / "data.py"
    tensorrt_ops.write_data_module(facts, path)
    namespace = runpy.run_path(str(path))
    assert namespace["VERSION"] == "9.9.0"
    assert namespace["CONVERTERS"] == facts["converters"]
    assert namespace["TORCH_TRT_DECOMPOSITIONS"] == ("aten.silu.default",)
