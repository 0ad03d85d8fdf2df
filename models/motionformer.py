"""Motionformer video classifiers: a ViT-B over space-time tubelets with trajectory attention.

Mandela Patrick et al., "Keeping Your Eye on the Ball: Trajectory Attention in Video
Transformers", NeurIPS 2021, arXiv:2106.05392. ViT-B/16 (ImageNet-initialised) on 2x16x16
tubelets with divided space-time positional embeddings (a spatial table shared by all
frames plus a temporal one), a Linear + Tanh pre-logits layer and, in every block,
trajectory attention, as the paper defines it:
1. for every query patch and every frame, a softmax over that frame's patches pools one
   trajectory token (spatial attention within each frame, never across frames here);
2. the trajectory token of the query's own frame, projected, is a new query that attends
   over the query's trajectory tokens along time (keys: their projection);
3. the class token attends to all tokens; then the output projection.
The paper's Orthoformer approximates step 1 through N landmarks: the queries,
chosen greedily to be mutually most orthogonal, attend to each frame's patches, and every
query mixes the landmarks' tokens by its softmax similarity to them, in time and memory
linear in the number of tokens.

Computes what the official code (github.com/facebookresearch/Motionformer,
`slowfast/models/video_model_builder.py` VisionTransformer, `vit_helper.py`
TrajectoryAttention, `orthoformer_helper.py`) computes at test time. Differences:
- Step 2's values are the trajectory tokens themselves, as in the official code with its
  default USE_ORIGINAL_TRAJ_ATTN_CODE=True (set "for reproducibility" of the released
  checkpoints; its comment calls the missing value projection a typo). The paper projects
  them: `project_temporal_values=True` does, with the second half of `attn.proj_kv`.
- Attention runs through `scaled_dot_product_attention`: step 1 is one attention of every
  query over each frame's patches, so the (tokens x tokens) attention matrix is never
  held, only the trajectory tokens the method needs (tokens x frames x channels).
- Orthoformer's first landmark is the first patch's query, not a random one, so that the
  output is deterministic; the paper's and official code's greedy rule follows.
- The unused 2-D `patch_embed.proj` of the official files (left over from the ImageNet
  ViT) is not part of the model; `adapt_checkpoint` drops it and says so (the model's
  `unused_checkpoint_keys`).
- The HR variant's 14x14 spatial table is resized to 21x21 by the official bicubic
  interpolation, written as the equivalent fixed linear map (a matmul at forward time).
- Returns logits: the official test forward ends in a softmax.
- No dropout and no stochastic depth (inference only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models._registry import ModelMeta, Option, VideoInput, class_labels, register

# configs/K400/motionformer_*.yaml: DATA.MEAN = DATA.STD = [0.5, 0.5, 0.5].
_MEAN = (0.5, 0.5, 0.5)
_STD = (0.5, 0.5, 0.5)
_LN_EPS = 1e-6  # VisionTransformer: partial(nn.LayerNorm, eps=1e-6)
_ATTENTIONS = ("trajectory", "orthoformer")


@dataclass(frozen=True)
class MotionformerConfig:
    """One Motionformer network (defaults: ViT-B/16 on 2-frame tubelets, the K400 zoo)."""

    interval_s: float  # seconds between sampled frames
    frames: int = 16  # frames per clip (the official DATA.NUM_FRAMES)
    train_crop: int = 224  # square input side; also the test crop and short side
    num_classes: int = 400
    patch_size: int = 16
    tubelet: int = 2  # frames per token (VIT.PATCH_SIZE_TEMP)
    embed_dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    # Side of the checkpoints' spatial positional table: ViT-B/16 at 224 (14x14 + class).
    # Another token grid (the HR variant's 21x21) resizes it bicubically, as the official
    # forward does.
    pos_grid: int = 14
    attention: str = "trajectory"  # or "orthoformer"
    landmarks: int = 128  # Orthoformer landmarks (VIT.APPROX_ATTN_DIM)
    project_temporal_values: bool = False  # False: the released checkpoints' behaviour

    def __post_init__(self) -> None:
        for field in (
            "frames", "train_crop", "num_classes", "patch_size", "tubelet", "embed_dim",
            "depth", "heads", "pos_grid", "landmarks",
        ):  # fmt: skip
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"MotionformerConfig.{field} must be a positive int, got {value!r}"
                )
        if not self.interval_s > 0:
            raise ValueError(f"MotionformerConfig.interval_s must be > 0, got {self.interval_s!r}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"MotionformerConfig.mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if self.frames % self.tubelet:
            raise ValueError(
                f"MotionformerConfig.frames {self.frames} is not a multiple of the "
                f"{self.tubelet}-frame tubelet"
            )
        if self.train_crop % self.patch_size:
            raise ValueError(
                f"MotionformerConfig.train_crop {self.train_crop} is not a multiple of the "
                f"{self.patch_size}-pixel patch"
            )
        if self.embed_dim % self.heads:
            raise ValueError(
                f"MotionformerConfig.embed_dim {self.embed_dim} is not divisible by "
                f"{self.heads} heads"
            )
        if self.attention not in _ATTENTIONS:
            raise ValueError(
                f"MotionformerConfig.attention must be one of {', '.join(_ATTENTIONS)}, "
                f"got {self.attention!r}"
            )
        if self.attention == "orthoformer" and self.landmarks > self.tokens:
            raise ValueError(
                f"MotionformerConfig.landmarks {self.landmarks} exceeds the "
                f"{self.tokens} patch tokens"
            )

    @property
    def time_steps(self) -> int:
        """Tokens along time (the official VIT.TEMPORAL_RESOLUTION)."""
        return self.frames // self.tubelet

    @property
    def grid(self) -> int:
        """Tokens along each spatial side."""
        return self.train_crop // self.patch_size

    @property
    def tokens(self) -> int:
        """Patch tokens per clip (the class token not counted)."""
        return self.time_steps * self.grid**2

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one clip."""
        return (3, self.frames, self.train_crop, self.train_crop)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over the last two dimensions."""
    return F.scaled_dot_product_attention(q, k, v)


def orthogonal_landmarks(q: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` mutually most orthogonal rows of q, greedily: (..., S, d) -> (..., count, d).

    The first landmark is row 0; each next one is the unselected row whose largest absolute
    cosine similarity to the landmarks so far is smallest (the Motionformer paper,
    `orthoformer_helper.orthogonal_landmarks`). Returns the selected rows of q unnormalised,
    in the order they were selected.
    """
    *lead, length, dim = q.shape
    flat = q.reshape(-1, length, dim)  # (..., S, d) -> (G, S, d)
    unit = F.normalize(flat, dim=-1)
    index = torch.zeros(flat.shape[0], 1, dtype=torch.long, device=q.device)  # (G, 1)
    # Largest |cos| of every row to the landmarks so far; selected rows are set above 1.
    worst = torch.zeros(flat.shape[0], length, dtype=q.dtype, device=q.device)  # (G, S)
    picks = []
    for _ in range(count):
        picks.append(index)
        chosen = unit.gather(1, index[:, :, None].expand(-1, -1, dim))  # (G, 1, d)
        cos = torch.matmul(unit, chosen.transpose(1, 2))[:, :, 0].abs()  # (G, S)
        worst = torch.maximum(worst, cos).scatter(1, index, 2.0)
        index = worst.argmin(dim=1, keepdim=True)
    selected = torch.cat(picks, dim=1)  # (G, count)
    rows = flat.gather(1, selected[:, :, None].expand(-1, -1, dim))  # (G, count, d)
    return rows.reshape(*lead, count, dim)


def _per_frame(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, h, F*P, d) -> (B, h*F, P, d): each frame's patches as one attention's keys."""
    batch, heads, tokens, dim = x.shape
    return x.reshape(batch, heads * frames, tokens // frames, dim)


def _against_each_frame(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, h, L, d) -> (B, h*F, L, d): the same queries once for every frame."""
    batch, heads, length, dim = x.shape
    x = x[:, :, None].expand(batch, heads, frames, length, dim)
    return x.reshape(batch, heads * frames, length, dim)


def trajectories(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frames: int) -> torch.Tensor:
    """Trajectory tokens (step 1), exactly: (B, h, F*P, d) q, k, v -> (B, h, F, F*P, d).

    Token [f, s] pools frame f's values by the softmax of query s over frame f's keys.
    """
    batch, heads, tokens, dim = q.shape
    out = _attention(_against_each_frame(q, frames), _per_frame(k, frames), _per_frame(v, frames))
    return out.reshape(batch, heads, frames, tokens, dim)  # (B, h*F, S, d) -> (B, h, F, S, d)


def orthoformer_trajectories(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frames: int, landmarks: int
) -> torch.Tensor:
    """Trajectory tokens through Orthoformer landmarks: shapes as `trajectories`.

    softmax(q L^T / sqrt(d)) [softmax_f(L K_f^T / sqrt(d)) V_f]: the landmarks L (queries
    chosen by `orthogonal_landmarks`) pool every frame, and each query mixes the landmarks'
    tokens by its similarity to them (the Motionformer paper; `orthoformer_helper.py`
    scales q and k by d^-1/4 each, the same). O(S N d) instead of O(S^2 d).
    """
    batch, heads, tokens, dim = q.shape
    marks = orthogonal_landmarks(q, landmarks)  # (B, h, N, d)
    # Each landmark against each frame: (B, h*F, N, d)
    mark_tokens = _attention(
        _against_each_frame(marks, frames), _per_frame(k, frames), _per_frame(v, frames)
    )
    # (B, h*F, N, d) -> (B, h, N, F*d): all frames' tokens of a landmark as one value
    mark_tokens = mark_tokens.reshape(batch, heads, frames, landmarks, dim)
    mark_tokens = mark_tokens.permute(0, 1, 3, 2, 4).reshape(batch, heads, landmarks, -1)
    # Each query mixes them by softmax(q . l / sqrt(d)): an explicit (S, N) softmax, since
    # TensorRT's attention layer wants values shaped like the keys.
    weights = torch.softmax(torch.matmul(q, marks.transpose(-1, -2)) * dim**-0.5, dim=-1)
    out = torch.matmul(weights, mark_tokens)  # (B, h, S, N) @ (B, h, N, F*d) -> (B, h, S, F*d)
    out = out.reshape(batch, heads, tokens, frames, dim)
    return out.permute(0, 1, 3, 2, 4)  # -> (B, h, F, S, d)


class _TrajectoryAttention(nn.Module):
    """Trajectory attention, exact or through Orthoformer landmarks (steps 1-3 above)."""

    def __init__(self, cfg: MotionformerConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.heads = cfg.heads
        self.head_dim = dim // cfg.heads
        self.time_steps = cfg.time_steps
        self.patches = cfg.grid**2  # per time step
        self.orthoformer = cfg.attention == "orthoformer"
        self.landmarks = cfg.landmarks
        self.project_temporal_values = cfg.project_temporal_values
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj_q = nn.Linear(dim, dim)
        self.proj_kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def _trajectories(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.orthoformer:
            return orthoformer_trajectories(q, k, v, self.time_steps, self.landmarks)
        return trajectories(q, k, v, self.time_steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        heads, dim, frames, patches = self.heads, self.head_dim, self.time_steps, self.patches
        tokens = frames * patches
        width = heads * dim
        # (B, 1 + S, 3*C) -> (3, B, h, 1 + S, d)
        qkv = self.qkv(x).reshape(batch, 1 + tokens, 3, heads, dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        # Step 3: the class token attends to every token, itself included.
        cls = _attention(q[:, :, :1], k, v)  # (B, h, 1, d)
        cls = cls.transpose(1, 2).reshape(batch, 1, width)  # -> (B, 1, C)

        traj = self._trajectories(q[:, :, 1:], k[:, :, 1:], v[:, :, 1:])  # (B, h, F, S, d)
        # Step 2: each query's own-frame token. Query s = (g, p) lies in frame g, so its
        # token sits at (f, g) = (g, g) of (F, F*P): a stride of F + 1 over (F*F, P).
        own = traj.reshape(batch, heads, frames * frames, patches, dim)[:, :, :: frames + 1]
        # (B, h, F, P, d) -> (B, S, C)
        own = own.permute(0, 2, 3, 1, 4).reshape(batch, tokens, width)
        q2 = self.proj_q(own).reshape(batch, tokens * heads, 1, dim)  # (B, S*h, 1, d)
        traj = traj.permute(0, 3, 2, 1, 4).reshape(batch, tokens, frames, width)  # (B, S, F, C)
        key_w, value_w = self.proj_kv.weight.chunk(2, dim=0)
        key_b, value_b = self.proj_kv.bias.chunk(2, dim=0)
        k2 = F.linear(traj, key_w, key_b)  # (B, S, F, C)
        v2 = F.linear(traj, value_w, value_b) if self.project_temporal_values else traj
        # (B, S, F, h, d) -> (B, S*h, F, d): one attention over time per query and head
        k2 = k2.reshape(batch, tokens, frames, heads, dim).transpose(2, 3)
        k2 = k2.reshape(batch, tokens * heads, frames, dim)
        v2 = v2.reshape(batch, tokens, frames, heads, dim).transpose(2, 3)
        v2 = v2.reshape(batch, tokens * heads, frames, dim)
        out = _attention(q2, k2, v2).reshape(batch, tokens, width)  # (B, S*h, 1, d) -> (B, S, C)
        return self.proj(torch.cat((cls, out), dim=1))  # (B, 1 + S, C)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, cfg: MotionformerConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=_LN_EPS)
        self.attn = _TrajectoryAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=_LN_EPS)
        self.mlp = _Mlp(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _bicubic_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out**2, size_in**2): the official positional-table resize as a linear map.

    `F.interpolate(table, scale_factor=size_out / size_in, mode="bicubic")` (align_corners
    False) applied to each one-hot grid gives one column.
    """
    basis = torch.eye(size_in * size_in, dtype=torch.float64).reshape(-1, 1, size_in, size_in)
    columns = F.interpolate(basis, scale_factor=size_out / size_in, mode="bicubic")
    if columns.shape[-2:] != (size_out, size_out):
        raise ValueError(f"cannot resize a {size_in}x{size_in} table to {size_out}x{size_out}")
    return columns.reshape(size_in * size_in, size_out * size_out).T.float().contiguous()


class Motionformer(nn.Module):
    """Motionformer network; `meta` describes its input and labels."""

    def __init__(self, cfg: MotionformerConfig, meta: ModelMeta) -> None:
        super().__init__()
        self.cfg = cfg
        self.meta = meta
        self.weights_id: str | None = None
        # Official checkpoint keys deliberately not loaded (set by the builder).
        self.unused_checkpoint_keys: tuple[str, ...] = ()
        dim = cfg.embed_dim
        patch = (cfg.tubelet, cfg.patch_size, cfg.patch_size)
        self.tubelet_embed = nn.Conv3d(3, dim, patch, stride=patch)
        # Shapes as in the official checkpoints: (1, 1, C), (1, 1 + 14*14, C), (1, F, C).
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.pos_grid**2, dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, cfg.time_steps, dim))
        resize = _bicubic_matrix(cfg.pos_grid, cfg.grid) if cfg.grid != cfg.pos_grid else None
        self.register_buffer("pos_resize", resize, persistent=False)  # (P, P0) or None
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim, eps=_LN_EPS)
        self.pre_logits = nn.Linear(dim, dim)  # VIT.USE_MLP with HEAD_ACT tanh
        self.pre_act = nn.Tanh()
        self.head = nn.Linear(dim, cfg.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # As the official VisionTransformer: truncated normal (std 0.02) for linears, class
        # token and spatial table; LayerNorm at identity; the temporal table at zero.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """One clip per batch item: ((B, 3, T, crop, crop) float32,)."""
        generator = torch.Generator().manual_seed(0)
        shape = (batch, *self.cfg.input_shape)
        return (torch.randn(shape, generator=generator, dtype=torch.float32),)

    def _pos_embed(self) -> torch.Tensor:
        """Divided space-time embedding: (1, 1 + F*P, C), time-major like the tokens."""
        cfg = self.cfg
        frames, patches, dim = cfg.time_steps, cfg.grid**2, cfg.embed_dim
        spatial = self.pos_embed[:, 1:]  # (1, P0, C)
        if self.pos_resize is not None:
            spatial = torch.matmul(self.pos_resize, spatial)  # (P, P0) @ (1, P0, C) -> (1, P, C)
        spatial = spatial[:, None].expand(1, frames, patches, dim)  # (1, F, P, C)
        temporal = self.temp_embed[:, :, None].expand(1, frames, patches, dim)  # (1, F, P, C)
        grid = (spatial + temporal).reshape(1, frames * patches, dim)
        return torch.cat((self.pos_embed[:, :1], grid), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) normalised RGB -> (B, num_classes) logits."""
        # Shape checks only (static under export): the token grid is fixed.
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"Motionformer expects (B, 3, T, H, W) input, got {tuple(x.shape)}")
        if tuple(x.shape[1:]) != self.cfg.input_shape:
            _, frames, side, _ = self.cfg.input_shape
            raise ValueError(
                f"Motionformer {self.meta.name} needs exactly {frames} frames of {side}x{side} "
                f"pixels (its positional embeddings fix the token grid), got {tuple(x.shape)}"
            )
        x = self.tubelet_embed(x)  # (B, 3, T, H, W) -> (B, C, T/2, H/16, W/16)
        x = x.flatten(2).transpose(1, 2)  # -> (B, S, C), time-major
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, C)
        x = torch.cat((cls, x), dim=1) + self._pos_embed()  # (B, 1 + S, C)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x[:, 0])  # class token (B, C); LayerNorm is per token
        return self.head(self.pre_act(self.pre_logits(x)))  # (B, num_classes)


# The official checkpoint layout (`model_state` of the released .pyth files): our names
# except for these modules. Parameter names (weight, bias) carry over.
_OFFICIAL = {
    "patch_embed_3d.proj": "tubelet_embed",
    "pre_logits.fc": "pre_logits",
}
#: Official keys that are not part of the model: the ImageNet ViT's 2-D patch embedding,
#: unused when tubelets are 2 frames deep (VIT.PATCH_SIZE_TEMP > 1).
UNUSED_OFFICIAL_KEYS = ("patch_embed.proj.weight", "patch_embed.proj.bias")

_WEIGHT_DIMS = [
    (re.compile(r"tubelet_embed\.weight"), 5),
    (re.compile(r"cls_token|pos_embed|temp_embed"), 3),
    (re.compile(r"(head|pre_logits|blocks\.\d+\.(attn\.\w+|mlp\.fc[12]))\.weight"), 2),
    (re.compile(r".*\.bias|(.*\.)?norm\d?\.weight"), 1),
]


def remap_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Motionformer `model_state` -> ours (its unused 2-D patch embedding dropped)."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state_dict.items():
        if key in UNUSED_OFFICIAL_KEYS:
            continue
        module, _, param = key.rpartition(".")
        # Unknown keys pass through unchanged so that the strict load reports them.
        new_key = f"{_OFFICIAL[module]}.{param}" if module in _OFFICIAL else key
        if new_key in out:
            raise ValueError(f"Motionformer keys {origin[new_key]} and {key} both map to {new_key}")
        out[new_key] = value
        origin[new_key] = key
    for key, value in out.items():
        for pattern, dims in _WEIGHT_DIMS:
            if pattern.fullmatch(key):
                if value.dim() != dims:
                    raise ValueError(
                        f"Motionformer key {origin[key]} has shape {list(value.shape)}, "
                        f"expected {dims} dimensions"
                    )
                break
    return out


def adapt_checkpoint(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """Official or our layout -> (our state dict, build options).

    The options carry the classifier's size and the official keys that were dropped.
    """
    keys = list(state_dict)
    if any(k.startswith("patch_embed_3d.") for k in keys):
        state = remap_official(state_dict)
        unused = tuple(k for k in UNUSED_OFFICIAL_KEYS if k in state_dict)
    elif any(k.startswith("tubelet_embed.") for k in keys):
        state, unused = dict(state_dict), ()
    else:
        shown = ", ".join(keys[:3])
        raise ValueError(
            f"not a Motionformer checkpoint in a known layout (official patch_embed_3d.*, or "
            f"ours); its first keys are {shown}"
        )
    options: dict = {"unused_checkpoint_keys": unused}
    head = state.get("head.weight")
    if head is not None and head.dim() == 2:
        options["num_classes"] = int(head.shape[0])
    return state, options


# The K400 zoo: configs/K400/motionformer_{224_16x4,336_16x8,224_32x3}.yaml (NUM_FRAMES,
# SAMPLING_RATE in frames of 30 fps video, TRAIN_CROP_SIZE = TEST_CROP_SIZE) and the
# checkpoints of the repository's README model zoo table.
_FPS = 30
_ZOO = "https://dl.fbaipublicfiles.com/motionformer/"
# The classifier: newly initialised when fine-tuning for other labels.
_CLASSIFIER = ("head.",)

_VARIANTS: dict[str, tuple[int, int, int, str]] = {
    "motionformer_b": (16, 4, 224, _ZOO + "k400_motionformer_224_16x4.pyth"),
    "motionformer_b_hr": (16, 8, 336, _ZOO + "k400_motionformer_336_16x8.pyth"),
    "motionformer_b_l": (32, 3, 224, _ZOO + "k400_motionformer_224_32x3.pyth"),
}


def _config(name: str, num_classes: int = 400, **options) -> MotionformerConfig:
    frames, rate, crop, _ = _VARIANTS[name]
    return MotionformerConfig(
        interval_s=rate / _FPS, frames=frames, train_crop=crop, num_classes=num_classes, **options
    )


def _build(
    name: str,
    num_classes: int,
    unused_checkpoint_keys: tuple[str, ...] = (),
    **options,
) -> Motionformer:
    """`options`: MotionformerConfig fields, e.g. attention="orthoformer", landmarks=128."""
    cfg = _config(name, num_classes, **options)
    meta = ModelMeta(
        name=name,
        video=(VideoInput(frames=cfg.frames, interval_s=cfg.interval_s),),
        crop=cfg.train_crop,
        # The official test pipeline resizes the short side to TEST_CROP_SIZE
        # (slowfast/datasets/kinetics.py: min_scale = max_scale = crop_size).
        short_side=cfg.train_crop,
        mean=_MEAN,
        std=_STD,
        labels=class_labels(num_classes),
    )
    model = Motionformer(cfg, meta)
    model.unused_checkpoint_keys = tuple(unused_checkpoint_keys)
    return model


# What `models.create(name, **options)` may change: MotionformerConfig's fields of the same
# names. Orthoformer attention (with its landmarks) runs the zoo weights approximately;
# depth, width and heads make a reduced network (random weights, or a saved checkpoint).
OPTIONS = {
    "attention": Option(str, _ATTENTIONS),
    "landmarks": Option(int),
    "depth": Option(int),
    "embed_dim": Option(int),
    "heads": Option(int),
}


@register(
    "motionformer_b",
    adapt=adapt_checkpoint,
    zoo_file=_VARIANTS["motionformer_b"][3],
    classifier=_CLASSIFIER,
    options=OPTIONS,
)
def motionformer_b(num_classes: int = 400, **options) -> Motionformer:
    return _build("motionformer_b", num_classes, **options)


@register(
    "motionformer_b_hr",
    adapt=adapt_checkpoint,
    zoo_file=_VARIANTS["motionformer_b_hr"][3],
    classifier=_CLASSIFIER,
    options=OPTIONS,
)
def motionformer_b_hr(num_classes: int = 400, **options) -> Motionformer:
    return _build("motionformer_b_hr", num_classes, **options)


@register(
    "motionformer_b_l",
    adapt=adapt_checkpoint,
    zoo_file=_VARIANTS["motionformer_b_l"][3],
    classifier=_CLASSIFIER,
    options=OPTIONS,
)
def motionformer_b_l(num_classes: int = 400, **options) -> Motionformer:
    return _build("motionformer_b_l", num_classes, **options)
