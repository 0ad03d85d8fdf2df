"""MViT: parity with torchvision 0.29, its and PySlowFast's checkpoint layouts, metadata.

The registry-wide tests (shapes, export, wrong inputs, parameter counts) are in
tests/test_models.py.
"""

from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace

import pytest
import torch

import models
from helpers import rel_err
from helpers_models import on_meta
from models import _weights, mvit

tv_video = pytest.importorskip("torchvision.models.video")

NAMES = ["mvit_v1_b", "mvit_v2_s"]
TV_WEIGHTS = {
    "mvit_v1_b": tv_video.MViT_V1_B_Weights.KINETICS400_V1,
    "mvit_v2_s": tv_video.MViT_V2_S_Weights.KINETICS400_V1,
}


def perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Weights far from torchvision's init, so that a mis-mapped tensor shows in the logits.

    Linear weights at unit gain (attention logits of order 1, not near-uniform attention),
    LayerNorm affine terms away from identity, biases non-zero, positional tables and
    relative-position tables large enough to move the attention.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                p.uniform_(-0.1, 0.1, generator=g)
            elif re.search(r"norm[12]?\.weight$|norm_act\.0\.weight$", name):
                p.uniform_(0.5, 1.5, generator=g)
            elif p.dim() == 2 and "rel_pos" not in name and "pos_encoding" not in name:
                p.normal_(0.0, p.shape[1] ** -0.5, generator=g)
            elif "rel_pos" in name or "pos_encoding" in name:
                p.normal_(0.0, 0.2, generator=g)


@pytest.fixture(scope="module", params=NAMES)
def reference(request):
    """torchvision's model (perturbed, eval), its state dict, a 16x224 clip and its logits."""
    name = request.param
    torch.manual_seed(0)
    ref = getattr(tv_video, name)()
    perturb(ref)
    ref.eval()
    clip = torch.randn(1, 3, 16, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = ref(clip)
    return SimpleNamespace(name=name, state=ref.state_dict(), clip=clip, logits=logits, ref=ref)


@pytest.mark.slow
def test_parity_with_torchvision(reference):
    state = mvit.remap_torchvision(reference.state)
    model = models.create(reference.name)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        got = model(reference.clip)
        assert rel_err(got, reference.logits) <= 1e-4
        # The check can fail: two equally shaped tensors swapped change the logits.
        a, b = {
            # v1: key and value pooling of one block.
            "mvit_v1_b": ("blocks.5.attn.pool_k.conv.weight", "blocks.5.attn.pool_v.conv.weight"),
            # v2: the height and width relative-position tables of one block.
            "mvit_v2_s": ("blocks.5.attn.rel_pos_h", "blocks.5.attn.rel_pos_w"),
        }[reference.name]
        swapped = dict(state)
        swapped[a], swapped[b] = state[b], state[a]
        model.load_state_dict(swapped)
        assert rel_err(model(reference.clip), reference.logits) > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_param_count_matches_torchvision(name):
    with torch.device("meta"):  # shapes are all a count needs
        ref = getattr(tv_video, name)()
    ours = sum(p.numel() for p in on_meta(name).parameters())
    assert ours == sum(p.numel() for p in ref.parameters())
    assert ours == TV_WEIGHTS[name].meta["num_params"]


@pytest.mark.slow
def test_torchvision_file_loads(tmp_path, reference):
    # torchvision's weights are plain state dicts.
    path = tmp_path / f"{reference.name}.pth"
    torch.save(reference.state, path)
    model = models.create(reference.name, weights=path)
    assert not model.training and model.weights_id is not None
    expected = mvit.remap_torchvision(reference.state)
    got = model.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


# Our layout -> PySlowFast's, written out from slowfast/models/video_model_builder.py (MViT:
# patch_embed = stem_helper.PatchEmbed, cls_token and pos_embed_{spatial,temporal,class} of
# shape (1, n, C), head = head_helper.TransformerBasicHead) and slowfast/models/attention.py
# (MultiScaleBlock: norm1, attn, norm2, mlp = common.Mlp fc1/fc2, proj; MultiScaleAttention:
# qkv (or q, k, v), proj, pool_q/k/v convs with norm_q/k/v, rel_pos_h/w/t).
PSF_TOP = {
    "patch_embed.weight": "patch_embed.proj.weight",
    "patch_embed.bias": "patch_embed.proj.bias",
    "cls_token": "cls_token",
    "pos_spatial": "pos_embed_spatial",
    "pos_temporal": "pos_embed_temporal",
    "pos_class": "pos_embed_class",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
    "head.weight": "head.projection.weight",
    "head.bias": "head.projection.bias",
}
PSF_BLOCK = {
    "attn.pool_q.conv": "attn.pool_q",
    "attn.pool_q.norm": "attn.norm_q",
    "attn.pool_k.conv": "attn.pool_k",
    "attn.pool_k.norm": "attn.norm_k",
    "attn.pool_v.conv": "attn.pool_v",
    "attn.pool_v.norm": "attn.norm_v",
}
PSF_UNSQUEEZE = {
    "cls_token": (1, 1),
    "pos_class": (1, 1),
    "pos_spatial": (1,),
    "pos_temporal": (1,),
}


def to_pyslowfast(state: dict, separate_qkv: bool) -> dict:
    out = {}
    for key, value in state.items():
        if key in PSF_TOP:
            lead = PSF_UNSQUEEZE.get(key, ())
            out[PSF_TOP[key]] = value.reshape(*lead, *value.shape)
            continue
        index, rest = re.fullmatch(r"blocks\.(\d+)\.(.+)", key).groups()
        module, _, param = rest.rpartition(".")
        if module == "attn.qkv" and separate_qkv:
            # MViTv1-era PySlowFast (before SEPARATE_QKV became an option): three linears.
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"blocks.{index}.attn.{name}.{param}"] = part.clone()
            continue
        out[f"blocks.{index}.{PSF_BLOCK.get(module, module)}.{param}"] = value
    return out


@pytest.mark.slow
@pytest.mark.parametrize("separate_qkv", [False, True])
def test_pyslowfast_layout_loads(tmp_path, reference, separate_qkv):
    ours = mvit.remap_torchvision(reference.state)
    checkpoint = {
        "epoch": 200,
        "model_state": to_pyslowfast(ours, separate_qkv),
        # PySlowFast's save_checkpoint stores the config as a YAML string.
        "cfg": "MODEL:\n  ARCH: mvit\n  MODEL_NAME: MViT\nMVIT:\n  DEPTH: 16\n",
    }
    layout = checkpoint["model_state"]
    assert "patch_embed.proj.weight" in layout and "head.projection.weight" in layout
    assert layout["cls_token"].shape == (1, 1, 96)
    assert ("blocks.0.attn.q.weight" in layout) == separate_qkv
    path = tmp_path / f"{reference.name}_pyslowfast.pyth"
    torch.save(checkpoint, path)
    model = models.create(reference.name, weights=path)
    got = model.state_dict()
    assert set(got) == set(ours)
    for key, value in ours.items():
        assert torch.equal(got[key], value), key


# One forward is enough: test_pyslowfast_layout_loads compares the state dicts of both.
@pytest.mark.slow
@pytest.mark.parametrize("reference", ["mvit_v1_b"], indirect=True)
def test_pyslowfast_layout_gives_torchvision_logits(tmp_path, reference):
    path = tmp_path / "mvit_v1_b_pyslowfast.pyth"
    state = to_pyslowfast(mvit.remap_torchvision(reference.state), separate_qkv=True)
    torch.save({"model_state": state}, path)
    model = models.create("mvit_v1_b", weights=path)
    with torch.no_grad():
        assert rel_err(model(reference.clip), reference.logits) <= 1e-4


def test_pyslowfast_incomplete_qkv_is_rejected():
    state = {
        "patch_embed.proj.weight": torch.zeros(96, 3, 3, 7, 7),
        "blocks.0.attn.q.weight": torch.zeros(96, 96),
        "blocks.0.attn.k.weight": torch.zeros(96, 96),
    }
    with pytest.raises(ValueError, match="blocks.0.attn.v.weight"):
        mvit.remap_pyslowfast(state)


def test_layout_mixup_is_caught():
    state = {"conv_proj.weight": torch.zeros(96, 3, 7, 7)}  # a 2-D stem
    with pytest.raises(ValueError, match="conv_proj.weight"):
        mvit.remap_torchvision(state)
    with pytest.raises(ValueError, match="known layout"):
        mvit.adapt_checkpoint({"fc.weight": torch.zeros(2, 2)})


@pytest.mark.slow
@pytest.mark.parametrize("reference", ["mvit_v2_s"], indirect=True)
def test_wrong_variant_weights_fail_with_key_lists(tmp_path, reference):
    path = tmp_path / "v2.pth"
    torch.save(reference.state, path)
    with pytest.raises(models.WeightsError) as info:
        models.create("mvit_v1_b", weights=path)
    exc = info.value
    # v1 has absolute embeddings, v2 relative-position tables and Q pooling everywhere.
    assert "pos_spatial" in exc.missing
    assert "blocks.0.attn.rel_pos_h" in exc.unexpected
    assert "\n" not in str(exc) and str(path) in str(exc)


@pytest.mark.parametrize("name", NAMES)
def test_meta_matches_torchvision(name):
    model = on_meta(name)
    meta, weights = model.meta, TV_WEIGHTS[name]
    preset = weights.transforms()
    assert meta.crop == preset.crop_size[0] == preset.crop_size[1] == 224
    assert meta.short_side == preset.resize_size[0] == 256
    assert meta.mean == tuple(preset.mean) == (0.45, 0.45, 0.45)
    assert meta.std == tuple(preset.std) == (0.225, 0.225, 0.225)
    (video,) = meta.video
    assert video.frames == weights.meta["min_temporal_size"] == 16
    # "frame_rate=7.5" (torchvision's docs of the weights): every 4th frame of 30 fps video,
    # PySlowFast's 16x4 configs.
    assert "frame_rate=7.5" in weights.meta["_docs"]
    assert video.interval_s == pytest.approx(1 / 7.5) and video.interval_s == 4 / 30
    assert meta.labels == tuple(weights.meta["categories"])
    assert meta.audio is None
    assert model.cfg.num_classes == len(weights.meta["categories"]) == 400


@pytest.mark.parametrize("name", NAMES)
def test_kinetics400_is_torchvisions_url(name, monkeypatch, tmp_path):
    monkeypatch.setenv("AVSTREAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AVSTREAM_WEIGHTS_BASE_URL", raising=False)
    asked = []

    def fake_download(url, **kwargs):
        asked.append(url)
        raise models.WeightsError(f"not downloading {url} in tests")

    monkeypatch.setattr(_weights, "download", fake_download)
    with pytest.raises(models.WeightsError, match="not downloading"):
        models.create(name, weights="kinetics400")
    assert asked == [TV_WEIGHTS[name].url]


def test_kinetics400_base_url_override(monkeypatch, file_server, isolated_cache):
    # A mirror (AVSTREAM_WEIGHTS_BASE_URL) serves the file under torchvision's file name.
    file_server.files["/zoo/mvit_v2_s-ae3be167.pth"] = b"not a checkpoint"
    monkeypatch.setenv("AVSTREAM_WEIGHTS_BASE_URL", f"{file_server.url}/zoo/")
    # torchvision's file name carries the SHA-256 prefix: this body is refused
    with pytest.raises(models.WeightsError, match="not the published file"):
        models.create("mvit_v2_s", weights="kinetics400")
    assert file_server.requests == ["/zoo/mvit_v2_s-ae3be167.pth"]
    assert not list(isolated_cache.glob("*mvit*"))  # nothing cached


def test_block_table_matches_torchvision():
    # Widths, heads and strides per block, against torchvision's written-out tables.
    for name in NAMES:
        with torch.device("meta"):  # shapes and strides only
            ref = getattr(tv_video, name)()
        ours = mvit._block_settings(mvit._config(name))
        assert len(ours) == len(ref.blocks) == 16
        for setting, block in zip(ours, ref.blocks):
            assert setting.heads == block.attn.num_heads
            assert setting.dim_in == block.norm1.normalized_shape[0]
            assert setting.dim_out == block.mlp[3].out_features
            assert (setting.kernel_q is not None) == (block.attn.pool_q is not None)
            assert tuple(block.attn.pool_k.pool.stride) == setting.stride_kv
            if block.attn.pool_q is not None:
                assert tuple(block.attn.pool_q.pool.stride) == setting.stride_q


@pytest.mark.parametrize(
    "changes",
    [
        {"frames": 0},
        {"interval_s": 0.0},
        {"train_crop": 300},  # above short_side
        {"depths": (1, 2, 11)},  # one entry short of heads
        {"heads": (1, 2, 5, 8)},  # 384 channels over 5 heads
        {"q_stride": (2, 2, 2), "rel_pos": True},  # temporal pooling with relative positions
        {"num_classes": True},
        {"pool_kernel": (3, 3)},
    ],
)
def test_config_checks(changes):
    base = dataclasses.asdict(mvit._config("mvit_v2_s"))
    mvit.MViTConfig(**base)
    with pytest.raises(ValueError):
        mvit.MViTConfig(**{**base, **changes})
