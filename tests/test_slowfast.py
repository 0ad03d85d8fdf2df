"""SlowFast and AVSlowFast: sizes, metadata, parity with pytorchvideo, checkpoint layouts,
the audio fusions, DropPathway, the sync head and partial initialisation from SlowFast."""

from __future__ import annotations

import dataclasses
import re
import warnings
from types import SimpleNamespace

import pytest
import torch

import models
from helpers import perturb_batchnorm, rel_err
from helpers_models import on_meta, small
from models import _weights
from models import slowfast as sf

SLOWFAST_PARAMS = 34_566_488  # the issue; pytorchvideo's hub slowfast_r50 has the same
# AVSlowFast (a_fs) = SlowFast + audio pathway 5,830,848 + its classifier term 409,600 +
# A->FS fusions at res3/res4 720,832 + sync head 53,376.
AVSLOWFAST_PARAMS = {"a_fs": 41_581_144, "a_f_s": 41_116_888, "av_nonlocal": 44_456_984}


def clips(slow_frames: int, side: int, batch: int = 1, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 3, slow_frames, side, side, generator=g),
        torch.randn(batch, 3, 4 * slow_frames, side, side, generator=g),
    )


def run(model, *inputs):
    with torch.no_grad():
        return model(*inputs)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread for this module: on a shared two-core machine, torch's worker
    threads wait on each other whenever another process holds a core, and these small
    forwards then take seconds instead of milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


pytestmark = pytest.mark.usefixtures("isolated_cache")


# Our layout -> the official ones, written out independently of models/slowfast.py.
# pytorchvideo: pytorchvideo/models/slowfast.py (create_slowfast, MultiPathWayWithFuse,
# FuseFastToSlow, PoolConcatPathway, ResNetBasicHead). PySlowFast:
# slowfast/models/{video_model_builder,resnet_helper,stem_helper,head_helper}.py.
PTV_BLOCK = {
    "shortcut": "branch1_conv",
    "shortcut_bn": "branch1_norm",
    "conv_a": "branch2.conv_a",
    "bn_a": "branch2.norm_a",
    "conv_b": "branch2.conv_b",
    "bn_b": "branch2.norm_b",
    "conv_c": "branch2.conv_c",
    "bn_c": "branch2.norm_c",
}
PSF_BLOCK = {
    "shortcut": "branch1",
    "shortcut_bn": "branch1_bn",
    "conv_a": "branch2.a",
    "bn_a": "branch2.a_bn",
    "conv_b": "branch2.b",
    "bn_b": "branch2.b_bn",
    "conv_c": "branch2.c",
    "bn_c": "branch2.c_bn",
}


PATHWAY = {"slow": 0, "fast": 1}


def to_layout(state: dict, layout: str) -> dict:
    ptv = layout == "pytorchvideo"
    out = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if m := re.fullmatch(r"(slow|fast)\.stem\.(conv|bn)", module):
            p = PATHWAY[m[1]]
            name = ("conv" if m[2] == "conv" else "norm") if ptv else m[2]
            new = (
                f"blocks.0.multipathway_blocks.{p}.{name}" if ptv else f"s1.pathway{p}_stem.{name}"
            )
        elif m := re.fullmatch(r"fuse\.(\d)\.(conv|bn)", module):
            i = int(m[1])
            if ptv:
                new = f"blocks.{i}.multipathway_fusion." + (
                    "conv_fast_to_slow" if m[2] == "conv" else "norm"
                )
            else:
                new = f"s{i + 1}_fuse." + ("conv_f2s" if m[2] == "conv" else "bn")
        elif m := re.fullmatch(r"(slow|fast)\.stages\.(\d)\.(\d+)\.(.+)", module):
            p = PATHWAY[m[1]]
            s, b = int(m[2]), m[3]
            if ptv:
                new = f"blocks.{s + 1}.multipathway_blocks.{p}.res_blocks.{b}.{PTV_BLOCK[m[4]]}"
            else:
                new = f"s{s + 2}.pathway{p}_res{b}.{PSF_BLOCK[m[4]]}"
        elif module == "head.proj":
            new = "blocks.6.proj" if ptv else "head.projection"
        else:
            raise AssertionError(f"no {layout} name for {key}")
        out[f"{new}.{param}"] = value
    return out


def save(path, state: dict, layout: str | None = None):
    body = state if layout is None else to_layout(state, layout)
    checkpoint = {"model_state": body}
    if layout == "pyslowfast":
        # PySlowFast's save_checkpoint stores the config as a YAML string.
        checkpoint.update(epoch=196, cfg="MODEL:\n  ARCH: slowfast\n  MODEL_NAME: SlowFast\n")
    torch.save(checkpoint, path)
    return path


def pytorchvideo_slowfast() -> torch.nn.Module:
    """pytorchvideo 0.1.5's hub slowfast_r50 (logits out), its head pool sized for a
    4/16-frame 96x96 clip: the final maps (4 and 16 x 3x3) are pooled whole, as the zoo
    model's 8x7x7 / 32x7x7 pool does for its 8/32-frame 224 clip (kept small for CPU time;
    the pool holds no weights)."""
    hub = pytest.importorskip("pytorchvideo.models.hub.slowfast")
    return hub.slowfast_r50(
        pretrained=False, head_activation=None, head_pool_kernel_sizes=((4, 3, 3), (16, 3, 3))
    )


@pytest.fixture(scope="module")
def reference():
    """`pytorchvideo_slowfast()` with perturbed BatchNorm, in eval mode."""
    torch.manual_seed(0)
    ref = pytorchvideo_slowfast()
    perturb_batchnorm(ref)
    return ref.eval()


@pytest.fixture(scope="module")
def reference_shapes():
    """`pytorchvideo_slowfast()` on the meta device: its keys, shapes and counts."""
    with torch.device("meta"):
        return pytorchvideo_slowfast()


@pytest.fixture(scope="module")
def visual():
    """A perturbed slowfast_r50 in our layout and its logits on a small clip pair (the
    head pools globally, so 4/16 frames of 96x96 run the whole network quickly)."""
    torch.manual_seed(0)
    model = models.create("slowfast_r50")
    perturb_batchnorm(model, seed=3)
    inputs = clips(4, 96)
    return SimpleNamespace(state=model.state_dict(), inputs=inputs, logits=run(model, *inputs))


# -- sizes and metadata ----------------------------------------------------------------


def test_param_counts(reference_shapes):
    model = on_meta("slowfast_r50")
    assert sum(p.numel() for p in model.parameters()) == SLOWFAST_PARAMS
    assert sum(p.numel() for p in reference_shapes.parameters()) == SLOWFAST_PARAMS
    for fusion, count in AVSLOWFAST_PARAMS.items():
        with torch.device("meta"):  # shapes only: no memory, no initialisation time
            av = sf.avslowfast_r50(fusion=fusion)
        assert sum(p.numel() for p in av.parameters()) == count, fusion
        visual = [p for n, p in av.named_parameters() if not n.startswith(sf.AUDIO_PREFIXES)]
        assert sum(p.numel() for p in visual) == SLOWFAST_PARAMS  # the same visual network
    assert on_meta("avslowfast_r50").cfg.fusion == "a_fs"


@pytest.mark.parametrize("name", ["slowfast_r50", "avslowfast_r50"])
def test_meta_and_example_inputs(name):
    model = on_meta(name)  # example_inputs are drawn on the CPU all the same
    meta = model.meta
    slow, fast = meta.video
    assert slow == models.VideoInput(8, 31 * (2 / 30) / 7)
    assert fast == models.VideoInput(32, 2 / 30)
    # Both pathways span the same 31 * 2/30 s window.
    assert (slow.frames - 1) * slow.interval_s == pytest.approx(31 * 2 / 30)
    assert meta.span_s == pytest.approx(31 * 2 / 30)
    assert (meta.crop, meta.short_side) == (256, 256)
    assert meta.mean == (0.45,) * 3 and meta.std == (0.225,) * 3
    assert meta.labels[0] == "abseiling" and len(meta.labels) == 400
    inputs = model.example_inputs(batch=2)
    assert inputs[0].shape == (2, 3, 8, 256, 256) and inputs[1].shape == (2, 3, 32, 256, 256)
    # slow = fast[linspace(0, 31, 8)], as pytorchvideo's and PySlowFast's samplers take it.
    torch.testing.assert_close(inputs[0], inputs[1][:, :, [0, 4, 8, 13, 17, 22, 26, 31]])
    if name == "slowfast_r50":
        assert meta.audio is None and len(inputs) == 2
    else:
        assert meta.audio == models.AudioInput()
        assert inputs[2].shape == (2, 1, 128, 80) and inputs[2].dtype == torch.float32
        # The audio window (2.064 s) covers the video window (2.067 s) to within one hop.
        assert abs(meta.audio.span_s - meta.span_s) < meta.audio.hop_length / 16_000


# -- parity and checkpoint layouts -----------------------------------------------------


def test_test_layout_matches_pytorchvideo_keys(reference_shapes):
    ours = on_meta("slowfast_r50").state_dict()  # keys and shapes
    ref_state = reference_shapes.state_dict()
    converted = to_layout(ours, "pytorchvideo")
    assert set(converted) == set(ref_state)
    assert all(converted[k].shape == ref_state[k].shape for k in ref_state)
    assert sf.remap_pytorchvideo(converted).keys() == ours.keys()


@pytest.mark.slow
def test_parity_with_pytorchvideo(reference):
    state = sf.remap_pytorchvideo(reference.state_dict())
    model = models.create("slowfast_r50")
    model.load_state_dict(state, strict=True)
    slow, fast = clips(4, 96)  # one position of the reference's head pool
    expected = run(reference, [slow, fast])
    assert rel_err(run(model, slow, fast), expected) <= 1e-4
    # The check can fail: a swapped pair of equally shaped BatchNorms shows.
    swapped = dict(state)
    for suffix in ("weight", "bias", "running_mean", "running_var"):
        a, b = f"slow.stages.2.3.bn_a.{suffix}", f"slow.stages.2.3.bn_b.{suffix}"
        swapped[a], swapped[b] = state[b], state[a]
    model.load_state_dict(swapped)
    assert rel_err(run(model, slow, fast), expected) > 1e-3


@pytest.mark.slow
def test_pytorchvideo_and_pyslowfast_layouts_load(tmp_path, visual):
    for layout in ("pytorchvideo", "pyslowfast"):
        path = save(tmp_path / f"{layout}.pyth", visual.state, layout)
        model = models.create("slowfast_r50", weights=path)
        assert not model.training and model.weights_id is not None
        torch.testing.assert_close(run(model, *visual.inputs), visual.logits, rtol=0, atol=0)
    keys = torch.load(tmp_path / "pyslowfast.pyth", weights_only=True)["model_state"]
    assert "s1.pathway0_stem.conv.weight" in keys and "s1_fuse.conv_f2s.weight" in keys


def test_remap_rejects_swapped_pathways():
    state = to_layout(on_meta("slowfast_r50").state_dict(), "pyslowfast")  # keys and shapes
    swapped = {}
    for key, value in state.items():
        key = key.replace("pathway0", "pathway@").replace("pathway1", "pathway0")
        swapped[key.replace("pathway@", "pathway1")] = value
    with pytest.raises(ValueError, match="pathway 0 must be the slow"):
        sf.remap_pyslowfast(swapped)


@pytest.mark.slow
def test_kinetics400_for_both_is_the_slowfast_zoo_file(tmp_path, visual, monkeypatch, file_server):
    body = save(tmp_path / "SLOWFAST_8x8_R50.pyth", visual.state, "pytorchvideo").read_bytes()
    file_server.files["/zoo/SLOWFAST_8x8_R50.pyth"] = body
    requests = file_server.requests
    monkeypatch.setenv("AVSTREAM_WEIGHTS_BASE_URL", f"{file_server.url}/zoo")
    model = models.create("slowfast_r50", weights="kinetics400")
    with pytest.warns(UserWarning, match="newly initialised"):
        av = models.create("avslowfast_r50", weights="kinetics400")
    assert requests == ["/zoo/SLOWFAST_8x8_R50.pyth"]  # the second came from the cache
    torch.testing.assert_close(run(model, *visual.inputs), visual.logits, rtol=0, atol=0)
    assert av.weights_id == model.weights_id


# -- AVSlowFast ------------------------------------------------------------------------

# Small enough for CPU tests: a quarter of the widths, 2 slow / 8 fast frames of 64x64, 32
# log-mel frames of 16 bins; the audio frames still stride exactly to the visual rates at
# res3 and res4.
SMALL_VISUAL = sf.SlowFastConfig(slow_frames=2, width=16, crop=64, short_side=64)


def small_av(fusion: str, **changes) -> sf.AVSlowFast:
    cfg = sf.AVSlowFastConfig(
        visual=SMALL_VISUAL, fusion=fusion, audio_frames=32, n_mels=16, **changes
    )
    torch.manual_seed(0)
    model = sf.build_avslowfast(cfg)
    perturb_batchnorm(model)  # also wakes up the non-local block's zero-initialised norm
    return model


@pytest.mark.parametrize("fusion", sf.FUSIONS)
def test_fusion_variant_trains_and_exports(fusion):
    model = small_av(fusion, drop_pathway=0.0)
    slow, fast, audio = model.example_inputs(batch=2)
    assert audio.shape == (2, 1, 32, 16)
    part = {"a_f_s": "to_fast", "a_fs": "to_slow", "av_nonlocal": "attn"}[fusion]
    assert all(getattr(model.audio_fuse[str(j)], part) is not None for j in (3, 4))
    assert sorted(model.audio_fuse) == ["3", "4"]

    model.train()
    model(slow, fast, audio).logsumexp(dim=1).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for n, g in grads.items()
               if not n.startswith("sync."))  # fmt: skip
    fusion_grad = [g for n, g in grads.items() if n.startswith(f"audio_fuse.3.{part}.")]
    assert fusion_grad and any(g.abs().sum() > 0 for g in fusion_grad)
    assert all(g is None for n, g in grads.items() if n.startswith("sync."))  # not in forward

    model.eval()
    inputs = model.example_inputs(batch=1)
    program = torch.export.export(model, inputs)
    torch.testing.assert_close(program.module()(*inputs), run(model, *inputs), rtol=1e-5, atol=1e-5)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert ("scaled_dot_product" in " ".join(targets)) == (fusion == "av_nonlocal")


@pytest.mark.parametrize("fusion", ["a_fs", "av_nonlocal"])
def test_drop_pathway(fusion):
    model = small_av(fusion)
    slow, fast, audio = model.example_inputs(batch=2)
    other = torch.randn_like(audio)

    def logits(a):
        torch.manual_seed(7)  # the same dropout masks and DropPathway draw for both
        with torch.no_grad():
            return model(slow, fast, a)

    assert model.drop_pathway == 0.8  # the paper's rate
    model.train()
    model.drop_pathway = 1.0  # settable at run time, e.g. by a schedule
    torch.testing.assert_close(logits(audio), logits(other), rtol=0, atol=0)
    model.drop_pathway = 0.0
    assert rel_err(logits(audio), logits(other)) > 1e-3
    model.eval()  # eval ignores the probability: audio always counts
    model.drop_pathway = 1.0
    assert rel_err(logits(audio), logits(other)) > 1e-3


def test_drop_pathway_draws_per_step():
    model = small_av("a_fs", drop_pathway=0.5)
    model.train()
    slow, fast, audio = model.example_inputs()
    silent = torch.zeros_like(audio)
    torch.manual_seed(0)
    dropped = 0
    for _ in range(8):
        state = torch.get_rng_state()
        with torch.no_grad():
            a = model(slow, fast, audio)
            torch.set_rng_state(state)
            b = model(slow, fast, silent)
        dropped += bool(torch.equal(a, b))
    assert 0 < dropped < 8


def test_sync_embeddings():
    model = small_av("a_fs").eval()
    slow, fast, audio = model.example_inputs(batch=3)
    visual_emb, audio_emb = model.sync_embeddings(slow, fast, audio)
    assert visual_emb.shape == audio_emb.shape == (3, 64)
    torch.testing.assert_close(visual_emb.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(audio_emb.norm(dim=1), torch.ones(3))
    # Taken before audio enters the visual pathways: other audio, same visual embedding.
    visual_2, audio_2 = model.sync_embeddings(slow, fast, torch.randn_like(audio))
    torch.testing.assert_close(visual_2, visual_emb, rtol=0, atol=0)
    assert rel_err(audio_2, audio_emb) > 1e-3
    # A loss on the embeddings trains the sync projections and the pathways below them.
    model.train()
    v, a = model.sync_embeddings(slow, fast, audio)
    (v * a).sum().backward()
    assert model.sync.visual.weight.grad is not None and model.audio.stem.conv_t.weight.grad.any()
    assert model.audio.stages[3][0].conv_a.weight.grad is None  # res5 is past the junction


def test_forward_with_sync_is_forward_and_sync_embeddings_in_one_pass():
    model = small_av("a_fs").eval()
    slow, fast, audio = model.example_inputs(batch=2)
    negative = torch.randn_like(audio)
    stems = []
    model.slow.stem.register_forward_hook(lambda *_: stems.append("slow"))
    with torch.no_grad():
        logits, visual, sound, sound_neg = model.forward_with_sync(slow, fast, audio, negative)
        assert stems == ["slow"]  # the visual pathways ran once
        torch.testing.assert_close(logits, model(slow, fast, audio))
        v, a = model.sync_embeddings(
            torch.cat([slow, slow]), torch.cat([fast, fast]), torch.cat([audio, negative])
        )
    torch.testing.assert_close(visual, v[:2])
    torch.testing.assert_close(sound, a[:2])
    torch.testing.assert_close(sound_neg, a[2:])
    with pytest.raises(ValueError, match="expects"):
        model.forward_with_sync(slow, fast, audio, negative[..., :8])
    # In training, both losses reach the weights below the junction.
    model.train()
    logits, visual, sound, sound_neg = model.forward_with_sync(slow, fast, audio, negative)
    (logits.sum() + (visual * (sound - sound_neg)).sum()).backward()
    assert model.sync.visual.weight.grad.any() and model.head.proj.weight.grad.any()
    assert model.slow.stem.conv.weight.grad.any() and model.audio.stem.conv_t.weight.grad.any()


def test_av_wrong_inputs_raise():
    model = small_av("a_fs").eval()
    slow, fast, audio = model.example_inputs()
    with torch.no_grad():
        with pytest.raises(ValueError, match="expects"):
            model(slow, fast, audio[0])  # no batch dimension
        with pytest.raises(ValueError, match="expects"):
            model(slow, fast, audio[..., :8])  # other mel bins
        with pytest.raises(ValueError, match="expects"):
            model(slow[:, :, :1], fast[:, :, :4], audio)  # other frames than the fusions
        with pytest.raises(ValueError, match="expects"):
            model(slow, fast[:, :, :4], audio)  # fast is not alpha * slow
        with pytest.raises(ValueError, match="expects"):
            model(slow[:, :2], fast, audio)  # two channels


def test_slowfast_takes_any_clip_size():
    # Global pooling: any T (fast = 4 T) and crop, 64 and the 256 test crop; the reduced
    # network has the full one's stem, strides and head.
    model = small("slowfast_r50")
    for slow, fast in (clips(2, 64), clips(2, 256)):
        assert run(model, slow, fast).shape == (1, 400)
    with pytest.raises(ValueError, match="expects"):
        run(model, *clips(2, 64)[::-1])  # pathways swapped


@pytest.mark.parametrize(
    "changes",
    [
        {"slow_frames": 1},
        {"alpha": 0},
        {"fusion_kernel": 6},
        {"depths": (3, 4, 6)},
        {"dropout": 1.0},
        {"crop": 320},  # above short_side
        {"fast_interval_s": 0.0},
        {"num_classes": True},
    ],
)
def test_slowfast_config_checks(changes):
    base = dataclasses.asdict(sf.SlowFastConfig())
    sf.SlowFastConfig(**base)
    with pytest.raises(ValueError):
        sf.SlowFastConfig(**{**base, **changes})


@pytest.mark.parametrize(
    "changes",
    [
        {"fusion": "a_s"},
        {"fusion_stages": ()},
        {"fusion_stages": (4, 3)},
        {"fusion_stages": (5,)},
        {"drop_pathway": 1.5},
        {"audio_frames": 100},  # 25 frames at res4 do not stride to 8 slow frames
        {"fusion": "a_f_s", "fusion_stages": (4,), "audio_frames": 64},  # 16 < 32 fast frames
        {"audio_beta_inv": 3},
        {"audio_fusion_kernel": 4},
    ],
)
def test_avslowfast_config_checks(changes):
    sf.AVSlowFastConfig()
    with pytest.raises(ValueError):
        sf.AVSlowFastConfig(**changes)


# -- partial initialisation from SlowFast ------------------------------------------------


@pytest.mark.slow
def test_avslowfast_from_slowfast_checkpoint(tmp_path, visual):
    path = save(tmp_path / "slowfast_pyslowfast.pyth", visual.state, "pyslowfast")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = models.create("avslowfast_r50", weights=path)
    assert len(caught) == 1 and caught[0].category is UserWarning
    message = one_line(caught[0].message)
    new_keys = [
        k for k in model.state_dict()
        if k.startswith(sf.AUDIO_PREFIXES) and not k.endswith("num_batches_tracked")
    ]  # fmt: skip
    assert f"{len(new_keys)} tensors" in message and str(path) in message
    assert "audio.stem.conv_t.weight" in message and f"and {len(new_keys) - 3} more" in message
    assert "head.audio_proj.weight" in new_keys and "audio_fuse.3.to_slow.conv_0.weight" in new_keys
    # Every visual tensor (and the classifier) is the checkpoint's.
    state = model.state_dict()
    assert set(visual.state) == {k for k in state if not k.startswith(sf.AUDIO_PREFIXES)}
    for key, value in visual.state.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    assert model.cfg.fusion == "a_fs" and not model.training


def test_avslowfast_checkpoint_loads_strictly(tmp_path):
    source = small_av("a_f_s").eval()
    source.head.audio_proj.weight.data.normal_()
    inputs = source.example_inputs()
    path = save(tmp_path / "av.pt", source.state_dict())
    # A full-size model with the same keys: build the small one through adapt + load_strict.
    state, options = sf.adapt_avslowfast(torch.load(path, weights_only=True)["model_state"])
    assert options == {"num_classes": 400, "fusion": "a_f_s", "fusion_stages": (3, 4)}
    model = sf.build_avslowfast(dataclasses.replace(source.cfg, fusion=options["fusion"])).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _weights.load_strict(model, state, source=str(path), name="avslowfast") == []
    torch.testing.assert_close(run(model, *inputs), run(source, *inputs), rtol=0, atol=0)

    # Our own layout is strict: a missing audio tensor is an error, not a fresh init.
    del state["audio.stages.1.0.conv_b_t.weight"]
    state, options = sf.adapt_avslowfast(state)
    assert "fresh_prefixes" not in options
    with pytest.raises(models.WeightsError) as info:
        _weights.load_strict(model, state, source=str(path), name="avslowfast")
    assert info.value.missing == ["audio.stages.1.0.conv_b_t.weight"]


@pytest.mark.slow
def test_avslowfast_zoo_size_checkpoint_round_trip(tmp_path):
    source = sf.avslowfast_r50(fusion="av_nonlocal", drop_pathway=0.5)
    perturb_batchnorm(source)
    path = save(tmp_path / "av_nonlocal.pt", source.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete checkpoint: no partial-init warning
        model = models.create("avslowfast_r50", weights=path)
    assert model.cfg.fusion == "av_nonlocal" and model.audio_fuse["4"].attn is not None
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.slow
def test_wrong_checkpoints_fail_with_key_lists(tmp_path, visual):
    # A SlowFast checkpoint with a visual tensor gone and a stray one: the audio tensors may
    # be absent, the rest stays strict.
    state = to_layout(visual.state, "pytorchvideo")
    del state["blocks.3.multipathway_blocks.1.res_blocks.2.branch2.conv_b.weight"]
    state["blocks.6.extra.weight"] = torch.zeros(3)
    path = save(tmp_path / "broken.pyth", state)
    with pytest.raises(models.WeightsError) as info:
        models.create("avslowfast_r50", weights=path)
    exc = info.value
    assert exc.missing == ["fast.stages.2.2.conv_b.weight"]
    assert exc.unexpected == ["blocks.6.extra.weight"] and not exc.mismatched
    text = one_line(exc)
    assert "1 missing, 1 unexpected, 0 mis-shaped" in text and str(path) in text

    # An AVSlowFast checkpoint is no SlowFast checkpoint: its audio tensors are unexpected.
    path = save(tmp_path / "av.pt", sf.avslowfast_r50().state_dict())
    with pytest.raises(models.WeightsError) as info:
        models.create("slowfast_r50", weights=path)
    exc = info.value
    assert not exc.missing and not exc.mismatched
    assert {k.split(".")[0] for k in exc.unexpected} == {"audio", "audio_fuse", "sync", "head"}

    # An X3D checkpoint is in no SlowFast layout.
    path = save(tmp_path / "x3d.pt", models.create("x3d_xs").state_dict())
    for name in ("slowfast_r50", "avslowfast_r50"):
        with pytest.raises(models.WeightsError, match="not a SlowFast checkpoint"):
            models.create(name, weights=path)


def test_load_strict_fresh_prefixes_is_general():
    # The mechanism on a toy network: prefixes name what may be absent, nothing more.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    partial = {"0.weight": torch.ones(3, 2), "0.bias": torch.ones(3)}
    with pytest.raises(models.WeightsError) as info:
        _weights.load_strict(model, partial, source="toy", name="toy")
    assert info.value.missing == ["1.weight", "1.bias", "1.running_mean", "1.running_var"]
    fresh = _weights.load_strict(model, partial, source="toy", name="toy", fresh_prefixes=("1.",))
    assert fresh == ["1.weight", "1.bias", "1.running_mean", "1.running_var"]
    assert torch.equal(model[0].weight, torch.ones(3, 2))
    assert torch.equal(model[1].weight, before["1.weight"])
    # A fresh prefix does not excuse other keys, nor unexpected or mis-shaped ones.
    with pytest.raises(models.WeightsError) as info:
        _weights.load_strict(model, {"0.weight": torch.ones(3, 2)}, source="toy", name="toy",
                             fresh_prefixes=("1.",))  # fmt: skip
    assert info.value.missing == ["0.bias"]
    with pytest.raises(models.WeightsError) as info:
        _weights.load_strict(model, {**partial, "1.weight": torch.ones(4)}, source="toy",
                             name="toy", fresh_prefixes=("1.",))  # fmt: skip
    assert info.value.mismatched == [("1.weight", (4,), (3,))]
