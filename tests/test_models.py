"""The model zoo: registry, shapes, metadata, export and parity with pytorchvideo."""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch

import helpers
import models
from helpers import perturb_batchnorm, rel_err
from helpers_models import REDUCED, meta_inputs, on_meta, small
from models import x3d
from models._registry import register

NAMES = models.available()
X3D_NAMES = [name for name in NAMES if name.startswith("x3d_")]

# Parameters with the 400-class head (pytorchvideo's create_x3d gives the same counts).
PARAMS = {"x3d_xs": 3_794_274, "x3d_s": 3_794_274, "x3d_m": 3_794_274, "x3d_l": 6_153_384}
# torchvision's MViT_V1_B_Weights / MViT_V2_S_Weights meta "num_params".
PARAMS.update({"mvit_v1_b": 36_610_672, "mvit_v2_s": 34_537_744})
# The official Motionformer checkpoints hold 109,144,720 (b, hr); less their unused 2-D
# patch embedding (768x3x16x16 + 768 = 590,592). The L variant's temporal table has 16
# rows instead of 8 (+8x768).
PARAMS.update(
    {
        "motionformer_b": 108_554_128,
        "motionformer_b_hr": 108_554_128,
        "motionformer_b_l": 108_560_272,
    }
)
# SlowFast 8x8 R50: pytorchvideo's hub slowfast_r50 (the count); AVSlowFast adds
# the audio pathway, A->FS fusions after res3/res4 and the sync head (tests/test_slowfast.py).
PARAMS.update({"slowfast_r50": 34_566_488, "avslowfast_r50": 41_581_144})
# PySlowFast's extra BatchNorm on the first stage's shortcut: weight and bias of 24 channels.
SHORTCUT_NORM_PARAMS = 48


def test_available_is_sorted_zoo():
    # Every registered model has its parameter count here, and nothing else does.
    assert NAMES == sorted(PARAMS)


def test_unknown_model_lists_choices():
    with pytest.raises(models.UnknownModelError) as info:
        models.create("foo")
    assert str(info.value) == f"unknown model 'foo': choose one of {', '.join(NAMES)}"
    assert "x3d_l, x3d_m, x3d_s, x3d_xs" in str(info.value)
    assert isinstance(info.value, models.ModelError)


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register("x3d_xs", adapt=x3d.adapt_checkpoint)(x3d.x3d_xs)
    assert NAMES == models.available()


# -- build options ------------------------------------------------------------------------

# A value other than the default for every option a model declares; a new option fails
# test_every_option_has_a_test_value until it gets one here.
OTHER_VALUE = {
    # X3D's expansion factors
    "frames": 8,
    "interval_s": 0.25,
    "depth_factor": 1.0,
    "width_factor": 1.0,
    "bottleneck_factor": 1.5,
    # SlowFast and AVSlowFast
    "width": 32,
    "depths": [1, 1, 2, 1],  # a list, as a config file gives it: taken as a tuple
    "slow_frames": 4,
    "alpha": 2,
    "beta_inv": 4,
    "fusion_kernel": 5,
    "crop": 128,
    "short_side": 320,
    "fusion": "a_f_s",
    "fusion_stages": (4,),
    "audio_frames": 64,
    "n_mels": 40,
    "drop_pathway": 0.5,
    "sync_dim": 32,
    # Motionformer
    "attention": "orthoformer",
    "landmarks": 8,
    "depth": 2,
    "embed_dim": 32,
    "heads": 4,
}
OPTIONS = [(name, option) for name in NAMES for option in models.build_options(name)]


def test_every_option_has_a_test_value():
    assert {option for _, option in OPTIONS} <= set(OTHER_VALUE)
    attention = models.build_options("motionformer_b")["attention"]
    assert attention.choices == ("trajectory", "orthoformer")
    fusion = models.build_options("avslowfast_r50")["fusion"]
    assert set(fusion.choices) == {"a_f_s", "a_fs", "av_nonlocal"}


@functools.cache
def _small_config(name: str):
    return small(name).cfg


@pytest.mark.parametrize("name, option", OPTIONS)
def test_each_option_is_taken_and_changes_the_model(name, option):
    # Varied from the reduced network: building the full SlowFasts and Motionformers
    # thirty times over would take minutes.
    base = REDUCED[name]
    value = OTHER_VALUE[option]
    model = models.create(name, seed=0, **{**base, option: value})
    expected = tuple(value) if isinstance(value, list) else value
    assert model.options == {**base, option: expected}
    assert model.cfg != _small_config(name)
    assert model.meta.name == name


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_is_refused_naming_the_valid_ones(name):
    with pytest.raises(models.ModelError) as info:
        models.create(name, atention="orthoformer")
    valid = ", ".join(sorted(models.build_options(name)))
    expected = f"(options: {valid})" if valid else "(it takes none)"
    assert _one_line(info.value) == f"{name} has no option 'atention' {expected}"


def test_unknown_option_line_for_motionformer():
    with pytest.raises(models.ModelError) as info:
        models.create("motionformer_b", atention="orthoformer")
    assert _one_line(info.value) == (
        "motionformer_b has no option 'atention' "
        "(options: attention, depth, embed_dim, heads, landmarks)"
    )
    # The keyword that options replaced is refused like any other unknown one.
    with pytest.raises(models.ModelError, match="x3d_xs has no option 'arch' .options: bottleneck"):
        models.create("x3d_xs", arch={"width_factor": 1.0})


# A value of the wrong kind for each kind of option.
WRONG_KIND = {int: "many", float: "fast", tuple: [1, "2"], str: 3}


@pytest.mark.parametrize("name, option", OPTIONS)
def test_option_of_the_wrong_kind_is_refused(name, option):
    declared = models.build_options(name)[option]
    bad = WRONG_KIND[declared.kind]
    with pytest.raises(models.ModelError) as info:
        models.create(name, **{option: bad})
    expected = f"{name} option {option!r} must be {declared.describe()}, got {bad!r}"
    assert _one_line(info.value) == expected


def test_option_kinds_in_words():
    options = models.build_options("avslowfast_r50")
    with pytest.raises(models.ModelError, match="'width' must be an integer, got True"):
        models.create("slowfast_r50", width=True)  # a bool is not a width
    assert options["fusion"].describe() == "one of a_f_s, a_fs, av_nonlocal"
    assert options["depths"].describe() == "a list of integers"
    assert options["drop_pathway"].describe() == "a number"
    with pytest.raises(models.ModelError) as info:
        models.create("avslowfast_r50", fusion="afs")
    assert _one_line(info.value) == (
        "avslowfast_r50 option 'fusion' must be one of a_f_s, a_fs, av_nonlocal, got 'afs'"
    )
    # Ranges and combinations are the config's to check, in one line too.
    with pytest.raises(models.ModelError) as info:
        models.create("slowfast_r50", width=30)
    assert _one_line(info.value) == (
        "cannot build slowfast_r50 with width=30: "
        "SlowFastConfig.width 30 is not divisible by beta_inv 8"
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, repr(text)
    return text


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "400"])
def test_num_classes_must_be_positive_int(bad):
    with pytest.raises(models.ModelError, match="num_classes"):
        models.create("x3d_xs", num_classes=bad)


@pytest.mark.parametrize("name", NAMES)
def test_param_count(name):
    model = on_meta(name)  # shapes are all a count needs
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert not model.training
    assert model.weights_id is None


@pytest.mark.parametrize("name", X3D_NAMES)
def test_shortcut_norm_adds_pyslowfast_params(name):
    with torch.device("meta"):
        model = x3d._build(name, 400, shortcut_norm=True)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name] + SHORTCUT_NORM_PARAMS


def test_every_model_has_a_reduced_network():
    # The shape, batch and export checks below run each model's reduced network
    # (helpers_models.REDUCED): a new model gets one there.
    assert sorted(REDUCED) == NAMES


@functools.cache
def _forward(name: str):
    """The reduced network (the full model's inputs, fewer and narrower blocks), its batch-2
    inputs and logits, and the logits of its second item alone: what test_output_shape
    and test_export share. Full-size forwards are the parity tests'."""
    model = small(name)
    inputs = model.example_inputs(batch=2)
    with torch.no_grad():
        logits = model(*inputs)
        single = model(*(x[1:] for x in inputs))
    return model, inputs, logits, single


@pytest.mark.parametrize("name", NAMES)
def test_output_shape(name):
    model, inputs, logits, single = _forward(name)
    meta = model.meta
    full = on_meta(name)
    assert meta == full.meta and model.cfg != full.cfg  # the same inputs, a smaller network
    assert sum(p.numel() for p in model.parameters()) < PARAMS[name] / 3
    # One clip per video pathway in meta.video's order, then the log-mel window if any.
    shapes = [(2, 3, video.frames, meta.crop, meta.crop) for video in meta.video]
    if meta.audio is not None:
        shapes.append((2, 1, meta.audio.frames, meta.audio.n_mels))
    assert [tuple(x.shape) for x in inputs] == shapes
    assert all(x.dtype == torch.float32 for x in inputs)
    assert logits.shape == (2, 400)
    assert torch.isfinite(logits).all()
    # Batch items are independent (eval-mode BatchNorm); kernels differ by batch size.
    torch.testing.assert_close(single[0], logits[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_meta(name):
    model = on_meta(name)
    meta = model.meta
    cfg = model.cfg
    assert isinstance(meta, models.ModelMeta)
    assert dataclasses.is_dataclass(meta)
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.crop = 1
    assert meta.name == name
    assert meta.video and all(isinstance(v, models.VideoInput) for v in meta.video)
    if len(meta.video) == 1:  # one pathway: the config's clip (SlowFast: test_slowfast.py)
        assert meta.video[0] == models.VideoInput(cfg.frames, cfg.interval_s)
        assert meta.span_s == pytest.approx((cfg.frames - 1) * cfg.interval_s)
        assert meta.crop >= cfg.train_crop
    if name in X3D_NAMES:  # other families check their meta against their references
        assert meta.crop == meta.short_side == cfg.test_crop
        assert meta.mean == (0.45, 0.45, 0.45) and meta.std == (0.225, 0.225, 0.225)
    assert len(meta.labels) == 400 and len(set(meta.labels)) == 400
    assert meta.labels[0] == "abseiling" and meta.labels[-1] == "zumba"
    hash(meta)  # frozen and hashable: usable as a cache key


def test_zoo_timing_matches_pyslowfast_configs():
    # PySlowFast configs/Kinetics/X3D_*.yaml: NUM_FRAMES x SAMPLING_RATE at 30 fps.
    expected = {"x3d_xs": (4, 12), "x3d_s": (13, 6), "x3d_m": (16, 5), "x3d_l": (16, 5)}
    for name, (frames, rate) in expected.items():
        video = on_meta(name).meta.video[0]
        assert (video.frames, video.interval_s) == (frames, rate / 30)


def test_other_num_classes_without_weights():
    model = models.create("x3d_xs", num_classes=7)
    assert model.meta.labels == tuple(f"class_{i}" for i in range(7))
    with torch.no_grad():
        assert model(*model.example_inputs()).shape == (1, 7)


def test_seed_gives_the_same_model_and_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = models.create("x3d_xs", seed=0)
    assert torch.equal(torch.rand(1), expected_next)
    b = models.create("x3d_xs", seed=0)
    c = models.create("x3d_xs", seed=1)
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in pairs)
    assert not torch.equal(a.head.proj.weight, c.head.proj.weight)


def test_bf16_on_the_cpu():
    """The head pool runs in fp32 inside a bf16 model (the CPU has no bf16 avg_pool3d)."""
    model = models.create("x3d_xs", seed=0)
    perturb_batchnorm(model)
    (x,) = model.example_inputs()
    with torch.no_grad():
        expected = model(x)
        actual = model.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert actual.dtype == torch.bfloat16
    assert rel_err(actual.float(), expected) < 2e-2


def test_labels_match_torchvision():
    meta_module = pytest.importorskip("torchvision.models._meta")
    assert on_meta("x3d_xs").meta.labels == tuple(meta_module._KINETICS400_CATEGORIES)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_input_shape_raises(name):
    # On the meta device: the checks come before any arithmetic; a missing one would let
    # the meta forward run (or fail otherwise than with ValueError).
    model = on_meta(name)
    clip, *rest = meta_inputs(model)  # the first video pathway, the other inputs
    cfg = model.cfg
    with torch.no_grad():
        with pytest.raises(ValueError, match="expects"):
            model(clip[0], *rest)  # no batch dimension
        with pytest.raises(ValueError, match="expects"):
            model(clip[:, :2], *rest)  # two channels
        if rest:  # several inputs (SlowFast: any crop; frame counts in test_slowfast.py)
            return
        # X3D needs at least its head pool's extent; the transformers' token grid is fixed.
        with pytest.raises(ValueError, match="needs (at least|exactly)"):
            model(clip[:, :, : cfg.frames - 1])  # shorter than the head's pool
        small = (math.ceil(cfg.train_crop / 32) - 1) * 32
        with pytest.raises(ValueError, match="needs (at least|exactly)"):
            model(clip[..., :small, :small])


def test_longer_clip_is_averaged_over_positions():
    # Fully convolutional test: twice the frames at the train crop leaves T+1 pooled
    # positions; the result is still one row of logits per clip.
    model = models.create("x3d_xs")
    clip = torch.randn(1, 3, 8, 160, 160)
    with torch.no_grad():
        assert model(clip).shape == (1, 400)


@pytest.mark.parametrize("name", NAMES)
def test_export(name):
    model, inputs, _, single = _forward(name)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, inputs, dynamic_shapes=tuple({0: batch} for _ in inputs))
    one = tuple(x[1:] for x in inputs)  # another batch size than exported with
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*one), single, rtol=1e-5, atol=1e-6)
    if name in X3D_NAMES:
        kernel = model.head.pool.kernel_size
        assert all(type(k) is int for k in kernel)


@pytest.mark.parametrize(
    "changes",
    [
        {"frames": 0},
        {"interval_s": 0.0},
        {"depth_factor": -1.0},
        {"se_ratio": 1.0},
        {"dropout": 1.0},
        {"test_crop": 400},  # above short_side
        {"test_crop": 96, "short_side": 96},  # smaller than the head pool
        {"num_classes": True},
    ],
)
def test_config_checks(changes):
    base = dataclasses.asdict(x3d._config("x3d_xs"))
    x3d.X3DConfig(**base)
    with pytest.raises(ValueError):
        x3d.X3DConfig(**{**base, **changes})


def reference_x3d(name: str) -> torch.nn.Module:
    pytest.importorskip("pytorchvideo.models.x3d")
    return helpers.reference_x3d(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", X3D_NAMES)
def test_parity_with_pytorchvideo(name):
    ref = reference_x3d(name)
    state = x3d.remap_pytorchvideo(ref.state_dict())
    model = models.create(name)
    model.load_state_dict(state, strict=True)
    cfg = model.cfg
    g = torch.Generator().manual_seed(1)
    clip = torch.randn(1, 3, cfg.frames, cfg.train_crop, cfg.train_crop, generator=g)
    with torch.no_grad():
        expected = ref(clip)
        got = model(clip)
        assert rel_err(got, expected) <= 1e-4
        if name != "x3d_xs":
            return  # the variants share the remap and the check's power: shown once, cheaply
        # The check can fail: a swapped pair of equally shaped BatchNorms shows.
        swapped = dict(state)
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            a, b = f"stages.2.3.bn_a.{suffix}", f"stages.2.3.bn_b.{suffix}"
            swapped[a], swapped[b] = state[b], state[a]
        model.load_state_dict(swapped)
        assert rel_err(model(clip), expected) > 1e-3


@pytest.mark.slow
def test_parity_with_pytorchvideo_fully_convolutional():
    # Test crop larger than the train crop: several head positions, logits averaged.
    ref = reference_x3d("x3d_s")
    model = models.create("x3d_s")
    model.load_state_dict(x3d.remap_pytorchvideo(ref.state_dict()))
    clip = model.example_inputs()[0]
    with torch.no_grad():
        assert rel_err(model(clip), ref(clip)) <= 1e-4


def test_remap_rejects_swapped_stem():
    ref = reference_x3d("x3d_xs")
    state = ref.state_dict()
    state["blocks.0.conv.conv_t.weight"], state["blocks.0.conv.conv_xy.weight"] = (
        state["blocks.0.conv.conv_xy.weight"],
        state["blocks.0.conv.conv_t.weight"],
    )
    with pytest.raises(ValueError, match="blocks.0.conv.conv_t.weight"):
        x3d.remap_pytorchvideo(state)
