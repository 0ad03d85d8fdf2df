"""Motionformer: trajectory attention against its definition, Orthoformer, the official
checkpoint layout, metadata and export.

The registry-wide tests (shapes, export, wrong inputs, parameter counts) are in
tests/test_models.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import models
from helpers import rel_err
from helpers_models import on_meta
from models import _weights, motionformer
from models._registry import ModelMeta, VideoInput

NAMES = ["motionformer_b", "motionformer_b_hr", "motionformer_b_l"]


def small_config(**changes) -> motionformer.MotionformerConfig:
    """3 time steps of 2x2 patches, 8 channels over 2 heads: small enough for plain loops."""
    base = {
        "interval_s": 0.1,
        "frames": 6,
        "train_crop": 32,
        "num_classes": 5,
        "embed_dim": 8,
        "depth": 2,
        "heads": 2,
        "pos_grid": 2,
    }
    return motionformer.MotionformerConfig(**{**base, **changes})


def small_model(**changes) -> motionformer.Motionformer:
    cfg = small_config(**changes)
    meta = ModelMeta(
        name="motionformer_small",
        video=(VideoInput(cfg.frames, cfg.interval_s),),
        crop=cfg.train_crop,
        short_side=cfg.train_crop,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        labels=tuple(f"class_{i}" for i in range(cfg.num_classes)),
    )
    return motionformer.Motionformer(cfg, meta).eval()


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter of order 1, so that attention weights are far from uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


# -- trajectory attention --------------------------------------------------------------


def softmax(scores: list[torch.Tensor]) -> torch.Tensor:
    return torch.softmax(torch.stack(scores), dim=0)


def reference_trajectory_attention(attn, x, frames, patches, project_values):
    """The definition, one query, frame and head at a time.

    x: (B, 1 + F*P, C), the class token first, patches time-major. For each patch query:
    1. per frame f, a softmax over frame f's patches only gives trajectory token y[f];
    2. the own-frame token y[frame of the query], projected (proj_q), is a new query that
       attends over y[0..F-1] along time: keys proj_kv(y) (first half), values y itself
       (the released code) or proj_kv(y)'s second half;
    3. the class token attends to all tokens.
    Then the output projection.
    """
    batch, tokens, width = x.shape
    heads = attn.heads
    dim = width // heads
    scale = dim**-0.5
    qkv = attn.qkv(x)
    q, k, v = qkv[..., :width], qkv[..., width : 2 * width], qkv[..., 2 * width :]
    out = torch.zeros(batch, tokens, width, dtype=x.dtype)
    for b in range(batch):
        for h in range(heads):
            ch = slice(h * dim, (h + 1) * dim)
            weights = softmax([q[b, 0, ch] @ k[b, j, ch] * scale for j in range(tokens)])
            out[b, 0, ch] = sum(weights[j] * v[b, j, ch] for j in range(tokens))
        for s in range(frames * patches):
            query = 1 + s
            traj = torch.zeros(frames, width, dtype=x.dtype)  # y[f], heads side by side
            for h in range(heads):
                ch = slice(h * dim, (h + 1) * dim)
                for f in range(frames):
                    keys = [1 + f * patches + p for p in range(patches)]
                    weights = softmax([q[b, query, ch] @ k[b, j, ch] * scale for j in keys])
                    traj[f, ch] = sum(w * v[b, j, ch] for w, j in zip(weights, keys))
            own = traj[s // patches]
            q2 = attn.proj_q(own)
            kv2 = attn.proj_kv(traj)  # (F, 2C)
            k2 = kv2[:, :width]
            v2 = kv2[:, width:] if project_values else traj
            for h in range(heads):
                ch = slice(h * dim, (h + 1) * dim)
                weights = softmax([q2[ch] @ k2[f, ch] * scale for f in range(frames)])
                out[b, query, ch] = sum(weights[f] * v2[f, ch] for f in range(frames))
    return attn.proj(out)


@pytest.mark.parametrize("project_values", [False, True])
def test_trajectory_attention_matches_definition(project_values):
    cfg = small_config(project_temporal_values=project_values)
    attn = motionformer._TrajectoryAttention(cfg).double()
    randomise(attn)
    x = torch.randn(2, 1 + cfg.tokens, cfg.embed_dim, dtype=torch.float64)
    with torch.no_grad():
        got = attn(x)
        expected = reference_trajectory_attention(
            attn, x, cfg.time_steps, cfg.grid**2, project_values
        )
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
        # The check can fail: the other choice of step 2's values gives other outputs.
        other = reference_trajectory_attention(
            attn, x, cfg.time_steps, cfg.grid**2, not project_values
        )
        assert rel_err(got, other) > 1e-3


def test_spatial_step_stays_within_frames():
    # Changing one frame's keys changes trajectory tokens of that frame only.
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 3 * 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    base = motionformer.trajectories(q, k, v, frames=3)
    k2 = k.clone()
    k2[:, :, 4:8] += torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64)  # frame 1's keys
    moved = motionformer.trajectories(q, k2, v, frames=3)
    changed = (moved - base).abs().amax(dim=(0, 1, 3, 4))  # per frame
    assert changed[1] > 1e-3 and changed[0] == 0 and changed[2] == 0


# -- Orthoformer -----------------------------------------------------------------------


def reference_landmarks(q: torch.Tensor, count: int) -> list[int]:
    """Greedy orthogonal selection in plain Python, for one (S, d) set of queries."""
    unit = F.normalize(q, dim=-1)
    chosen = [0]
    while len(chosen) < count:
        best, best_score = None, None
        for i in range(q.shape[0]):
            if i in chosen:
                continue
            score = max(abs(float(unit[i] @ unit[j])) for j in chosen)
            if best_score is None or score < best_score:
                best, best_score = i, score
        chosen.append(best)
    return chosen


def test_orthogonal_landmarks_are_the_greedy_choice():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 20, 6, generator=g, dtype=torch.float64)
    marks = motionformer.orthogonal_landmarks(q, 7)
    assert marks.shape == (2, 3, 7, 6)
    for b in range(2):
        for h in range(3):
            expected = q[b, h, reference_landmarks(q[b, h], 7)]
            torch.testing.assert_close(marks[b, h], expected, rtol=0, atol=0)
    # All queries are selected once each when the count is the sequence length.
    every = motionformer.orthogonal_landmarks(q, 20)
    match = (every[:, :, :, None, :] == q[:, :, None, :, :]).all(-1)  # (B, h, N, S)
    assert (match.sum(-1) == 1).all() and (match.sum(-2) == 1).all()


def orthoformer_errors(q, k, v, frames, counts):
    exact = motionformer.trajectories(q, k, v, frames)
    return [
        rel_err(motionformer.orthoformer_trajectories(q, k, v, frames, n), exact) for n in counts
    ]


def test_orthoformer_approaches_exact_attention():
    frames, patches, dim = 4, 16, 16
    tokens = frames * patches
    counts = [4, 8, 16, 32, tokens]
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, tokens, dim, generator=g, dtype=torch.float64)
    k = torch.randn(1, 2, tokens, dim, generator=g, dtype=torch.float64)
    v = torch.randn(1, 2, tokens, dim, generator=g, dtype=torch.float64)

    # Generic queries: the error falls as landmarks are added.
    errors = orthoformer_errors(q, k, v, frames, counts)
    assert all(a > b for a, b in itertools.pairwise(errors)), errors

    # With every query a landmark the approximation is softmax(Q Q^T / sqrt(d)) times the
    # exact tokens (Orthoformer drops the Nystrom inverse of that matrix, the paper's
    # premise being near-orthogonal landmarks). Distinct queries of equal norm at a low
    # temperature make it the identity, and the approximation exact.
    sharp_q = F.normalize(q, dim=-1) * 6 * dim**0.5
    sharp_k = k * 3
    errors = orthoformer_errors(sharp_q, sharp_k, v, frames, counts)
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[0] > 0.5 and errors[-1] < 1e-6, errors


def test_orthoformer_model_switch():
    exact = small_model()
    approx = small_model(attention="orthoformer", landmarks=5)
    randomise(exact)
    approx.load_state_dict(exact.state_dict())  # same weights, other attention
    clip = exact.example_inputs(batch=2)[0]
    with torch.no_grad():
        a, b = exact(clip), approx(clip)
    assert a.shape == b.shape == (2, 5)
    assert torch.isfinite(b).all() and rel_err(b, a) > 1e-4
    with torch.device("meta"):  # the full-size builder takes the options too
        zoo = motionformer.motionformer_b(attention="orthoformer", landmarks=128)
    assert zoo.cfg.attention == "orthoformer" and zoo.cfg.landmarks == 128


@pytest.mark.parametrize("name", NAMES)
def test_create_takes_orthoformer_and_runs_it_small(name):
    """`models.create` passes the build options: Orthoformer attention on a reduced
    network (two blocks of 16 channels: the class token reads the patch tokens exactly, so
    the approximation shows from the second block on) at the variant's own clip size."""
    small = {"depth": 2, "embed_dim": 16, "heads": 2}
    exact = models.create(name, seed=0, **small)
    approx = models.create(name, seed=0, attention="orthoformer", landmarks=32, **small)
    assert approx.cfg.attention == "orthoformer" and approx.cfg.landmarks == 32
    assert approx.options == {"attention": "orthoformer", "landmarks": 32, **small}
    assert exact.cfg.attention == "trajectory" and exact.meta == approx.meta
    randomise(exact)
    approx.load_state_dict(exact.state_dict())  # the same weights: only the attention differs
    (clip,) = exact.example_inputs()
    with torch.no_grad():
        a, b = exact(clip), approx(clip)
    assert b.shape == (1, 400) and torch.isfinite(b).all()
    assert rel_err(b, a) > 1e-4  # it took the other attention


# -- official checkpoints --------------------------------------------------------------

OFFICIAL_TENSORS = 205
OFFICIAL_PARAMS = 109_144_720
UNUSED_2D_PARAMS = 768 * 3 * 16 * 16 + 768


def official_shapes(time_steps: int = 8, classes: int = 400) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of an official K400 Motionformer `model_state`.

    From slowfast/models/video_model_builder.py (VisionTransformer: patch_embed,
    patch_embed_3d, cls_token, pos_embed, temp_embed, blocks, norm, pre_logits.fc, head)
    and slowfast/models/vit_helper.py (Block: norm1, attn, norm2, mlp.fc1/fc2;
    TrajectoryAttention: qkv, proj_q, proj_kv, proj).
    """
    c = 768
    shapes = {
        "cls_token": (1, 1, c),
        "pos_embed": (1, 197, c),
        "temp_embed": (1, time_steps, c),
        "patch_embed.proj.weight": (c, 3, 16, 16),
        "patch_embed.proj.bias": (c,),
        "patch_embed_3d.proj.weight": (c, 3, 2, 16, 16),
        "patch_embed_3d.proj.bias": (c,),
    }
    for i in range(12):
        for module, out_features, in_features in [
            ("attn.qkv", 3 * c, c),
            ("attn.proj_q", c, c),
            ("attn.proj_kv", 2 * c, c),
            ("attn.proj", c, c),
            ("mlp.fc1", 4 * c, c),
            ("mlp.fc2", c, 4 * c),
        ]:
            shapes[f"blocks.{i}.{module}.weight"] = (out_features, in_features)
            shapes[f"blocks.{i}.{module}.bias"] = (out_features,)
        for norm in ("norm1", "norm2"):
            shapes[f"blocks.{i}.{norm}.weight"] = (c,)
            shapes[f"blocks.{i}.{norm}.bias"] = (c,)
    shapes.update(
        {
            "norm.weight": (c,),
            "norm.bias": (c,),
            "pre_logits.fc.weight": (c, c),
            "pre_logits.fc.bias": (c,),
            "head.weight": (classes, c),
            "head.bias": (classes,),
        }
    )
    return shapes


def official_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    """The .pyth dict of Motionformer's slowfast/utils/checkpoint.py save_checkpoint."""
    return {
        "epoch": 35,
        "model_state": state,
        # AdamW's state_dict: tensors, dicts, lists, ints, floats, bools, a tuple, None.
        "optimizer_state": {
            "state": {0: {"step": torch.tensor(1000.0), "exp_avg": torch.zeros(3)}},
            "param_groups": [
                {
                    "lr": 1e-4,
                    "betas": (0.9, 0.999),
                    "eps": 1e-8,
                    "weight_decay": 0.05,
                    "amsgrad": False,
                    "foreach": None,
                    "params": [0],
                }
            ],
        },
        "cfg": "TRAIN:\n  ENABLE: True\nVIT:\n  PATCH_SIZE_TEMP: 2\n  ATTN_LAYER: trajectory\n",
    }


@pytest.fixture(scope="module")
def official_state():
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g) for k, s in official_shapes().items()}


@pytest.fixture(scope="module")
def official_file(tmp_path_factory, official_state):
    path = tmp_path_factory.mktemp("motionformer") / "k400_motionformer_224_16x4.pyth"
    torch.save(official_checkpoint(official_state), path)
    return path


def test_fake_official_layout_is_the_documented_one():
    shapes = official_shapes()
    assert len(shapes) == OFFICIAL_TENSORS
    assert sum(math.prod(shape) for shape in shapes.values()) == OFFICIAL_PARAMS


@pytest.mark.slow
def test_official_checkpoint_loads(official_file, official_state):
    # torch.load(weights_only=True) takes the whole .pyth dict.
    loaded = torch.load(official_file, map_location="cpu", weights_only=True)
    assert set(loaded) == {"epoch", "model_state", "optimizer_state", "cfg"}

    model = models.create("motionformer_b", weights=official_file)
    assert model.unused_checkpoint_keys == ("patch_embed.proj.weight", "patch_embed.proj.bias")
    got = model.state_dict()
    renamed = {"patch_embed_3d.proj": "tubelet_embed", "pre_logits.fc": "pre_logits"}
    landed = 0
    for key, value in official_state.items():
        if key in model.unused_checkpoint_keys:
            continue
        module, _, param = key.rpartition(".")
        ours = f"{renamed[module]}.{param}" if module in renamed else key
        assert torch.equal(got[ours], value), key
        landed += 1
    assert landed == len(got) == OFFICIAL_TENSORS - 2
    params = sum(p.numel() for p in model.parameters())
    assert params == OFFICIAL_PARAMS - UNUSED_2D_PARAMS
    assert model.meta.labels[0] == "abseiling" and not model.training


@pytest.mark.slow
def test_official_checkpoint_with_missing_and_extra_keys(tmp_path, official_state):
    state = dict(official_state)
    del state["blocks.3.attn.proj_kv.bias"]
    state["blocks.3.attn.proj_v.weight"] = torch.zeros(768, 768)
    path = tmp_path / "broken.pyth"
    torch.save(official_checkpoint(state), path)
    with pytest.raises(models.WeightsError) as info:
        models.create("motionformer_b", weights=path)
    exc = info.value
    assert exc.missing == ["blocks.3.attn.proj_kv.bias"]
    assert exc.unexpected == ["blocks.3.attn.proj_v.weight"]
    assert not exc.mismatched
    text = str(exc)
    assert "\n" not in text and "1 missing, 1 unexpected" in text and str(path) in text


@pytest.mark.slow
def test_official_l_checkpoint_needs_the_l_variant(official_state):
    # The L variant's temporal table has 16 rows: it does not fit motionformer_b. (The file
    # round trip is tested above; this goes straight to the load.)
    state = {**official_state, "temp_embed": torch.randn(1, 16, 768)}
    state, options = motionformer.adapt_checkpoint(state)
    assert options["num_classes"] == 400
    with pytest.raises(models.WeightsError) as info:  # refused on shapes: a meta model does
        _weights.load_strict(on_meta("motionformer_b"), state, source="L", name="b")
    assert info.value.mismatched == [("temp_embed", (1, 16, 768), (1, 8, 768))]
    assert not info.value.missing and not info.value.unexpected
    model = models.create("motionformer_b_l")
    _weights.load_strict(model, state, source="L", name="motionformer_b_l")
    assert torch.equal(model.temp_embed, state["temp_embed"])


def test_layout_mixup_is_caught():
    with pytest.raises(ValueError, match="patch_embed_3d.proj.weight"):
        motionformer.remap_official({"patch_embed_3d.proj.weight": torch.zeros(768, 3, 16, 16)})
    with pytest.raises(ValueError, match="known layout"):
        motionformer.adapt_checkpoint({"fc.weight": torch.zeros(2, 2)})


@pytest.mark.parametrize("name", NAMES)
def test_kinetics400_is_the_readme_url(name, monkeypatch, tmp_path):
    # The model zoo table of github.com/facebookresearch/Motionformer's README.
    urls = {
        "motionformer_b": "k400_motionformer_224_16x4.pyth",
        "motionformer_b_hr": "k400_motionformer_336_16x8.pyth",
        "motionformer_b_l": "k400_motionformer_224_32x3.pyth",
    }
    monkeypatch.setenv("AVSTREAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AVSTREAM_WEIGHTS_BASE_URL", raising=False)
    asked = []

    def fake_download(url, **how):  # how: the checksum and whether it is the official file
        asked.append(url)
        raise models.WeightsError(f"not downloading {url} in tests")

    monkeypatch.setattr(_weights, "download", fake_download)
    with pytest.raises(models.WeightsError, match="not downloading"):
        models.create(name, weights="kinetics400")
    assert asked == ["https://dl.fbaipublicfiles.com/motionformer/" + urls[name]]


# -- metadata, positional embedding, export ---------------------------------------------


@pytest.mark.parametrize(
    "name, frames, rate, crop",
    # configs/K400/motionformer_{224_16x4,336_16x8,224_32x3}.yaml: NUM_FRAMES,
    # SAMPLING_RATE (frames of 30 fps video), TRAIN_CROP_SIZE = TEST_CROP_SIZE.
    [
        ("motionformer_b", 16, 4, 224),
        ("motionformer_b_hr", 16, 8, 336),
        ("motionformer_b_l", 32, 3, 224),
    ],
)
def test_meta_matches_official_configs(name, frames, rate, crop):
    model = on_meta(name)
    meta = model.meta
    assert meta.video == (models.VideoInput(frames, rate / 30),)
    assert meta.crop == meta.short_side == crop
    assert meta.mean == meta.std == (0.5, 0.5, 0.5)
    assert len(meta.labels) == 400 and meta.labels[-1] == "zumba"
    assert meta.audio is None
    assert model.pos_embed.shape == (1, 197, 768)
    assert model.temp_embed.shape == (1, frames // 2, 768)


def test_hr_positional_table_is_the_official_bicubic_resize():
    # VisionTransformer.forward_features: F.interpolate(..., scale_factor=sqrt(npatch / N),
    # mode="bicubic") of the 14x14 table when TRAIN_CROP_SIZE != 224.
    g = torch.Generator().manual_seed(0)
    table = torch.randn(1, 196, 8, generator=g)
    grid = table.reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=math.sqrt(441 / 196), mode="bicubic")
    expected = expected.permute(0, 2, 3, 1).reshape(1, 441, 8)
    got = torch.matmul(motionformer._bicubic_matrix(14, 21), table)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "changes", [{}, {"attention": "orthoformer", "landmarks": 4}, {"train_crop": 48}]
)
def test_export_small(changes):
    # {"train_crop": 48}: a 3x3 grid from the 2x2 table, as HR resizes 14x14 to 21x21.
    model = small_model(**changes)
    randomise(model)
    (clip,) = model.example_inputs(batch=2)
    program = torch.export.export(model, (clip,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(clip), model(clip), rtol=1e-5, atol=1e-5)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten.scaled_dot_product_attention.default" in targets
    # No host round trip (.item()), and no diagonal (TensorRT converts it at static shapes only).
    assert not any(op in t for t in targets for op in ("aten.item", "_local_scalar", "diagonal"))


@pytest.mark.parametrize(
    "changes",
    [
        {"frames": 0},
        {"interval_s": 0.0},
        {"frames": 5},  # not a multiple of the 2-frame tubelet
        {"train_crop": 40},  # not a multiple of the 16-pixel patch
        {"heads": 3},  # 8 channels over 3 heads
        {"attention": "joint"},
        {"attention": "orthoformer", "landmarks": 13},  # more than the 12 patch tokens
        {"num_classes": True},
    ],
)
def test_config_checks(changes):
    base = dataclasses.asdict(small_config())
    motionformer.MotionformerConfig(**base)
    with pytest.raises(ValueError):
        motionformer.MotionformerConfig(**{**base, **changes})
