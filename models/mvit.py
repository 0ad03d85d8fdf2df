"""MViT video classifiers: MViTv1-B and MViTv2-S.

Haoqi Fan et al., "Multiscale Vision Transformers", ICCV 2021, arXiv:2104.11227, and
Yanghao Li et al., "MViTv2: Improved Multiscale Vision Transformers for Classification and
Detection", CVPR 2022, arXiv:2112.01526. A transformer over 3-D patch tokens whose stages
shrink the token grid (pooling the queries) while they widen the channels; keys and values
are pooled more strongly than the queries. MViTv2 replaces the absolute positional
embedding with decomposed relative positions (t, h, w terms added to the attention
logits), adds the pooled query back to the attention output (residual pooling) and grows
the channels inside the attention of a stage's first block rather than in the MLP of the
previous stage's last block.

Computes what torchvision 0.29 (`torchvision/models/video/mvit.py`, `mvit_v1_b`,
`mvit_v2_s`) and PySlowFast (`slowfast/models/video_model_builder.py` class MViT,
`slowfast/models/attention.py` MultiScaleBlock) compute at test time. Differences:
- Module names are our own; `remap_torchvision` and `remap_pyslowfast` translate the two
  checkpoint layouts. PySlowFast's MViTv1-era files keep separate `attn.q/k/v` linears
  (its SEPARATE_QKV layout); they are concatenated into our `attn.qkv`.
- Attention runs through `scaled_dot_product_attention`; MViTv2's relative positions enter
  it as the additive mask (zero on the class token's row and column), gathered from the
  tables with indices fixed when the model is built.
- The input size is fixed (16x224x224 for the zoo): the relative-position gather indices
  and the absolute embeddings are made for it; there is no interpolation for other sizes.
- Only the class token's final LayerNorm is computed (LayerNorm is per token).
- No dropout and no stochastic depth (inference only).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models._registry import ModelMeta, VideoInput, class_labels, register

# torchvision `MViT_V1_B_Weights` / `MViT_V2_S_Weights` transforms (VideoClassification preset:
# resize the short side to 256, centre crop 224) and meta ("frame_rate=7.5", clip_len 16:
# every 4th frame of 30 fps video); PySlowFast MVIT_B_16x4_CONV / MVITv2_S_16x4 say 16x4.
_MEAN = (0.45, 0.45, 0.45)
_STD = (0.225, 0.225, 0.225)
_LN_EPS = 1e-6  # torchvision and PySlowFast: partial(nn.LayerNorm, eps=1e-6)


@dataclass(frozen=True)
class MViTConfig:
    """One MViT network.

    Stage s has `depths[s]` blocks of `embed_dim * 2**s` channels and `heads[s]` heads.
    The first block of every stage after the first pools its queries with `q_stride`;
    keys and values are pooled with `kv_stride` in the first block, divided by each query
    stride after it (PySlowFast's POOL_KV_STRIDE_ADAPTIVE), never below 1.
    """

    interval_s: float  # seconds between sampled frames
    frames: int = 16  # frames per clip; the token grid is fixed by it
    train_crop: int = 224  # square input side; test crop is the same (PySlowFast asserts it)
    short_side: int = 256  # test-time short-side resize before the centre crop
    num_classes: int = 400
    embed_dim: int = 96
    depths: tuple[int, ...] = (1, 2, 11, 2)
    heads: tuple[int, ...] = (1, 2, 4, 8)
    mlp_ratio: float = 4.0
    patch_kernel: tuple[int, int, int] = (3, 7, 7)
    patch_stride: tuple[int, int, int] = (2, 4, 4)
    patch_padding: tuple[int, int, int] = (1, 3, 3)
    pool_kernel: tuple[int, int, int] = (3, 3, 3)  # depthwise conv pooling Q, K and V
    q_stride: tuple[int, int, int] = (1, 2, 2)
    kv_stride: tuple[int, int, int] = (1, 8, 8)
    # MViTv2 switches (all False: MViTv1).
    rel_pos: bool = False  # decomposed relative positions instead of absolute embeddings
    residual_pool: bool = False  # add the pooled query to the attention output
    expand_in_attention: bool = False  # channels grow in the attention (v2), not the MLP (v1)
    pool_q_every_block: bool = False  # v2 pools Q (kernel 3, stride 1) in every block

    def __post_init__(self) -> None:
        for field in ("frames", "train_crop", "short_side", "num_classes", "embed_dim"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MViTConfig.{field} must be a positive int, got {value!r}")
        if not self.interval_s > 0:
            raise ValueError(f"MViTConfig.interval_s must be > 0, got {self.interval_s!r}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"MViTConfig.mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if not self.depths or len(self.depths) != len(self.heads):
            raise ValueError(
                f"MViTConfig.depths {self.depths} and heads {self.heads} need one entry per stage"
            )
        if min(self.depths) < 1 or min(self.heads) < 1:
            raise ValueError("MViTConfig.depths and heads must be positive")
        for s, heads in enumerate(self.heads):
            if (self.embed_dim << s) % heads:
                raise ValueError(
                    f"MViTConfig: stage {s} width {self.embed_dim << s} is not divisible by "
                    f"its {heads} heads"
                )
        for field in ("patch_kernel", "patch_stride", "pool_kernel", "q_stride", "kv_stride"):
            value = getattr(self, field)
            if len(value) != 3 or min(value) < 1:
                raise ValueError(f"MViTConfig.{field} must be three positive ints, got {value}")
        if self.train_crop > self.short_side:
            raise ValueError(
                f"MViTConfig.train_crop {self.train_crop} exceeds short_side {self.short_side}"
            )
        if self.rel_pos and (self.q_stride[0] != 1 or self.kv_stride[0] != 1):
            # The temporal table would need interpolation (torchvision sizes it 2T-1).
            raise ValueError("MViTConfig: relative positions need temporal strides of 1")

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one clip."""
        return (3, self.frames, self.train_crop, self.train_crop)

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """(T, H, W) of the patch tokens."""
        return tuple(  # type: ignore[return-value]
            _conv_out(n, k, s, p)
            for n, k, s, p in zip(
                self.input_shape[1:], self.patch_kernel, self.patch_stride, self.patch_padding
            )
        )


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _pooled(size: int, kernel: int, stride: int) -> int:
    """Extent after a pooling conv with 'same' padding (kernel // 2), as in both references."""
    return _conv_out(size, kernel, stride, kernel // 2)


@dataclass(frozen=True)
class _BlockSetting:
    dim_in: int
    dim_out: int
    heads: int
    kernel_q: tuple[int, int, int] | None  # None: queries are not pooled
    stride_q: tuple[int, int, int]
    stride_kv: tuple[int, int, int]


def _block_settings(cfg: MViTConfig) -> list[_BlockSetting]:
    """Per-block widths, heads and pooling, as torchvision's tables for v1_b / v2_s."""
    dims = [cfg.embed_dim << s for s in range(len(cfg.depths))]
    one = (1, 1, 1)
    kv_stride = cfg.kv_stride
    settings = []
    for s, depth in enumerate(cfg.depths):
        for b in range(depth):
            first = s > 0 and b == 0
            stride_q = cfg.q_stride if first else one
            if first:
                kv_stride = tuple(max(k // q, 1) for k, q in zip(kv_stride, stride_q))
            if cfg.expand_in_attention:
                dim_in, dim_out = (dims[s - 1] if first else dims[s]), dims[s]
            else:
                last = b == depth - 1 and s + 1 < len(dims)
                dim_in, dim_out = dims[s], (dims[s + 1] if last else dims[s])
            settings.append(
                _BlockSetting(
                    dim_in=dim_in,
                    dim_out=dim_out,
                    heads=cfg.heads[s],
                    kernel_q=cfg.pool_kernel if first or cfg.pool_q_every_block else None,
                    stride_q=stride_q,
                    stride_kv=kv_stride,  # type: ignore[arg-type]
                )
            )
    return settings


class _Pool(nn.Module):
    """Per-head depthwise Conv3d over the token grid, class token passed by, then LayerNorm.

    The convolution is shared by all heads (its groups are the head's channels), as in
    both references ("conv" pooling mode).
    """

    def __init__(
        self,
        head_dim: int,
        kernel: tuple[int, int, int],
        stride: tuple[int, int, int],
        in_thw: tuple[int, int, int],
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            head_dim,
            head_dim,
            kernel,
            stride=stride,
            padding=tuple(k // 2 for k in kernel),
            groups=head_dim,
            bias=False,
        )
        self.norm = nn.LayerNorm(head_dim, eps=_LN_EPS)
        self.in_thw = in_thw
        self.out_thw = tuple(_pooled(n, k, s) for n, k, s in zip(in_thw, kernel, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, heads, _, dim = x.shape
        t, h, w = self.in_thw
        cls, tokens = x[:, :, :1], x[:, :, 1:]
        # (B, h, T*H*W, d) -> (B*h, d, T, H, W)
        tokens = tokens.reshape(batch * heads, t, h, w, dim).permute(0, 4, 1, 2, 3)
        tokens = self.conv(tokens)  # -> (B*h, d, T', H', W')
        # (B*h, d, T', H', W') -> (B, h, T'*H'*W', d)
        tokens = tokens.flatten(2).transpose(1, 2).reshape(batch, heads, -1, dim)
        return self.norm(torch.cat((cls, tokens), dim=2))  # (B, h, 1 + T'*H'*W', d)


def _rel_index(q_size: int, k_size: int) -> torch.Tensor:
    """(q_size, k_size) rows of the relative-position table for each query/key pair.

    The distance of query i and key j on a grid pooled to different extents, scaled to the
    finer one and offset to be >= 0 (torchvision `_add_rel_pos`, PySlowFast
    `cal_rel_pos_spatial`): i * max(k/q, 1) - j * max(q/k, 1) + (k - 1) * max(q/k, 1).
    """
    q_ratio = max(k_size / q_size, 1.0)
    k_ratio = max(q_size / k_size, 1.0)
    dist = (
        torch.arange(q_size)[:, None] * q_ratio
        - (torch.arange(k_size)[None, :] + (1.0 - k_size)) * k_ratio
    )
    return dist.long()


class _Attention(nn.Module):
    """Multi-head pooling attention (the MViT paper), with the MViTv2 options."""

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        heads: int,
        in_thw: tuple[int, int, int],
        setting: _BlockSetting,
        cfg: MViTConfig,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim_out // heads
        self.dim_out = dim_out
        self.residual_pool = cfg.residual_pool
        self.qkv = nn.Linear(dim_in, 3 * dim_out)
        self.pool_q = (
            _Pool(self.head_dim, setting.kernel_q, setting.stride_q, in_thw)
            if setting.kernel_q is not None
            else None
        )
        # Keys and values are pooled in every block (the kernel is 3x3x3 even at stride 1).
        self.pool_k = _Pool(self.head_dim, cfg.pool_kernel, setting.stride_kv, in_thw)
        self.pool_v = _Pool(self.head_dim, cfg.pool_kernel, setting.stride_kv, in_thw)
        self.proj = nn.Linear(dim_out, dim_out)
        self.q_thw = self.pool_q.out_thw if self.pool_q is not None else in_thw
        self.kv_thw = self.pool_k.out_thw
        self.rel_pos = cfg.rel_pos
        if cfg.rel_pos:
            (qt, qh, qw), (kt, kh, kw) = self.q_thw, self.kv_thw
            # Table lengths 2 * max(q, k) - 1: what both references allocate for these grids.
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * max(qh, kh) - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * max(qw, kw) - 1, self.head_dim))
            self.rel_pos_t = nn.Parameter(torch.zeros(2 * max(qt, kt) - 1, self.head_dim))
            self.register_buffer("index_h", _rel_index(qh, kh), persistent=False)
            self.register_buffer("index_w", _rel_index(qw, kw), persistent=False)
            self.register_buffer("index_t", _rel_index(qt, kt), persistent=False)

    def _rel_pos_bias(self, q: torch.Tensor) -> torch.Tensor:
        """Decomposed relative positions (MViTv2) as an additive attention mask."""
        batch, heads, _, dim = q.shape
        (qt, qh, qw), (kt, kh, kw) = self.q_thw, self.kv_thw
        r_q = q[:, :, 1:].reshape(batch, heads, qt, qh, qw, dim)  # (B, h, Lq, d) -> grid
        r_h = self.rel_pos_h[self.index_h]  # (qh, kh, d)
        r_w = self.rel_pos_w[self.index_w]  # (qw, kw, d)
        r_t = self.rel_pos_t[self.index_t]  # (qt, kt, d)
        bias_h = torch.einsum("bnthwc,hkc->bnthwk", r_q, r_h)  # (B, h, qt, qh, qw, kh)
        bias_w = torch.einsum("bnthwc,wkc->bnthwk", r_q, r_w)  # (B, h, qt, qh, qw, kw)
        bias_t = torch.einsum("bnthwc,tkc->bnthwk", r_q, r_t)  # (B, h, qt, qh, qw, kt)
        bias = (
            bias_t[:, :, :, :, :, :, None, None]
            + bias_h[:, :, :, :, :, None, :, None]
            + bias_w[:, :, :, :, :, None, None, :]
        )  # (B, h, qt, qh, qw, kt, kh, kw)
        bias = bias.reshape(batch, heads, qt * qh * qw, kt * kh * kw)
        return F.pad(bias, (1, 0, 1, 0))  # (B, h, 1 + Lq, 1 + Lk): nothing on the class token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        # (B, N, 3*C) -> (3, B, h, N, d)
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.pool_q is not None:
            q = self.pool_q(q)  # (B, h, 1 + Lq, d)
        k = self.pool_k(k)  # (B, h, 1 + Lk, d)
        v = self.pool_v(v)
        mask = self._rel_pos_bias(q) if self.rel_pos else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, 1 + Lq, d)
        if self.residual_pool:
            # MViTv2 residual pooling; the class token's row is left alone (torchvision
            # residual_with_cls_embed=False, PySlowFast `x[:, :, 1:] += q[:, :, 1:]`).
            out = out + F.pad(q[:, :, 1:], (0, 0, 1, 0))
        out = out.transpose(1, 2).reshape(batch, -1, self.dim_out)  # -> (B, 1 + Lq, C)
        return self.proj(out)


class _Mlp(nn.Module):
    def __init__(self, dim_in: int, hidden: int, dim_out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim_in, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm block: pooling attention with a max-pooled skip, then the MLP.

    Where the width changes, the skip goes through `proj` from the normalised input of the
    sub-layer that changes it (attention in v2, MLP in v1), as in both references.
    """

    def __init__(self, setting: _BlockSetting, in_thw: tuple[int, int, int], cfg: MViTConfig):
        super().__init__()
        attn_dim = setting.dim_out if cfg.expand_in_attention else setting.dim_in
        self.expand_in_attention = cfg.expand_in_attention
        self.norm1 = nn.LayerNorm(setting.dim_in, eps=_LN_EPS)
        self.attn = _Attention(setting.dim_in, attn_dim, setting.heads, in_thw, setting, cfg)
        self.norm2 = nn.LayerNorm(attn_dim, eps=_LN_EPS)
        self.mlp = _Mlp(attn_dim, int(attn_dim * cfg.mlp_ratio), setting.dim_out)
        self.proj = (
            nn.Linear(setting.dim_in, setting.dim_out)
            if setting.dim_in != setting.dim_out
            else None
        )
        self.pool_skip = None
        if math.prod(setting.stride_q) > 1:
            # Kernel stride + 1 where strided (torchvision `kernel_skip`, PySlowFast).
            kernel = tuple(s + 1 if s > 1 else s for s in setting.stride_q)
            self.pool_skip = nn.MaxPool3d(
                kernel, stride=setting.stride_q, padding=tuple(k // 2 for k in kernel)
            )
        self.in_thw = in_thw
        self.out_thw = self.attn.q_thw

    def _skip(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_skip is None:
            return x
        batch, _, dim = x.shape
        cls, tokens = x[:, :1], x[:, 1:]
        # (B, T*H*W, C) -> (B, C, T, H, W)
        tokens = tokens.transpose(1, 2).reshape(batch, dim, *self.in_thw)
        tokens = self.pool_skip(tokens).flatten(2).transpose(1, 2)  # -> (B, T'*H'*W', C)
        return torch.cat((cls, tokens), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_norm = self.norm1(x)
        y = self.attn(x_norm)
        if self.proj is not None and self.expand_in_attention:
            x = self.proj(x_norm)
        x = self._skip(x) + y
        x_norm = self.norm2(x)
        if self.proj is not None and not self.expand_in_attention:
            x = self.proj(x_norm)
        return x + self.mlp(x_norm)


class MViT(nn.Module):
    """MViT network; `meta` describes its input and labels."""

    def __init__(self, cfg: MViTConfig, meta: ModelMeta) -> None:
        super().__init__()
        self.cfg = cfg
        self.meta = meta
        self.weights_id: str | None = None
        settings = _block_settings(cfg)
        dim = cfg.embed_dim
        self.patch_embed = nn.Conv3d(
            3, dim, cfg.patch_kernel, stride=cfg.patch_stride, padding=cfg.patch_padding
        )
        t, h, w = cfg.token_grid
        self.cls_token = nn.Parameter(torch.zeros(dim))
        self.pos_spatial = self.pos_temporal = self.pos_class = None
        if not cfg.rel_pos:
            # MViTv1's separable absolute embedding (PySlowFast SEP_POS_EMBED).
            self.pos_spatial = nn.Parameter(torch.zeros(h * w, dim))
            self.pos_temporal = nn.Parameter(torch.zeros(t, dim))
            self.pos_class = nn.Parameter(torch.zeros(dim))
        thw: tuple[int, int, int] = (t, h, w)
        blocks = []
        for setting in settings:
            block = _Block(setting, thw, cfg)
            blocks.append(block)
            thw = block.out_thw
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(settings[-1].dim_out, eps=_LN_EPS)
        self.head = nn.Linear(settings[-1].dim_out, cfg.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # As torchvision's MViT: truncated normal (std 0.02) for linears, embeddings and
        # relative-position tables; LayerNorm at identity; convolutions at PyTorch's default.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if name.split(".")[-1] in (
                "cls_token", "pos_spatial", "pos_temporal", "pos_class",
                "rel_pos_h", "rel_pos_w", "rel_pos_t",
            ):  # fmt: skip
                nn.init.trunc_normal_(p, std=0.02)

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """One clip per batch item: ((B, 3, T, crop, crop) float32,)."""
        generator = torch.Generator().manual_seed(0)
        shape = (batch, *self.cfg.input_shape)
        return (torch.randn(shape, generator=generator, dtype=torch.float32),)

    def _pos_embed(self) -> torch.Tensor:
        t, h, w = self.cfg.token_grid
        dim = self.cls_token.shape[0]
        # (T, C) and (H*W, C) -> (T*H*W, C): time-major, as the patch tokens
        grid = self.pos_temporal[:, None, :] + self.pos_spatial[None, :, :]
        grid = grid.reshape(t * h * w, dim)
        return torch.cat((self.pos_class[None], grid), dim=0)  # (1 + T*H*W, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) normalised RGB -> (B, num_classes) logits."""
        # Shape checks only (static under export): the token grid is fixed.
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"MViT expects (B, 3, T, H, W) input, got {tuple(x.shape)}")
        if tuple(x.shape[1:]) != self.cfg.input_shape:
            _, frames, side, _ = self.cfg.input_shape
            raise ValueError(
                f"MViT {self.meta.name} needs exactly {frames} frames of {side}x{side} pixels "
                f"(its positional terms are made for that grid), got {tuple(x.shape)}"
            )
        x = self.patch_embed(x)  # (B, 3, T, H, W) -> (B, C, T', H', W')
        x = x.flatten(2).transpose(1, 2)  # -> (B, T'*H'*W', C)
        cls = self.cls_token.expand(x.shape[0], 1, -1)  # (B, 1, C)
        x = torch.cat((cls, x), dim=1)  # (B, 1 + L, C)
        if self.pos_class is not None:
            x = x + self._pos_embed()
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))  # class token (B, C) -> (B, num_classes)


# Checkpoint layouts. Module-path tables; parameter names (weight, bias) carry over.

_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")

# torchvision 0.29 `MViT`: conv_proj, pos_encoding, blocks (MultiscaleBlock with
# torchvision.ops.MLP: Linear, GELU, Dropout, Linear, Dropout), norm, head (Dropout, Linear).
_TV_TOP = {
    "conv_proj": "patch_embed",
    "pos_encoding.class_token": "cls_token",
    "pos_encoding.spatial_pos": "pos_spatial",
    "pos_encoding.temporal_pos": "pos_temporal",
    "pos_encoding.class_pos": "pos_class",
    "norm": "norm",
    "head.1": "head",
}
_TV_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.qkv": "attn.qkv",
    "attn.project.0": "attn.proj",
    "attn.pool_q.pool": "attn.pool_q.conv",
    "attn.pool_q.norm_act.0": "attn.pool_q.norm",
    "attn.pool_k.pool": "attn.pool_k.conv",
    "attn.pool_k.norm_act.0": "attn.pool_k.norm",
    "attn.pool_v.pool": "attn.pool_v.conv",
    "attn.pool_v.norm_act.0": "attn.pool_v.norm",
    "attn.rel_pos_h": "attn.rel_pos_h",
    "attn.rel_pos_w": "attn.rel_pos_w",
    "attn.rel_pos_t": "attn.rel_pos_t",
    "mlp.0": "mlp.fc1",
    "mlp.3": "mlp.fc2",
    "project": "proj",
}

# PySlowFast `MViT`: patch_embed (stem_helper.PatchEmbed), cls_token and the separable
# pos_embed_* of shape (1, n, C), blocks (MultiScaleBlock), norm, head (TransformerBasicHead).
_PSF_TOP = {
    "patch_embed.proj": "patch_embed",
    "cls_token": "cls_token",
    "pos_embed_spatial": "pos_spatial",
    "pos_embed_temporal": "pos_temporal",
    "pos_embed_class": "pos_class",
    "norm": "norm",
    "head.projection": "head",
}
_PSF_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.qkv": "attn.qkv",
    "attn.proj": "attn.proj",
    "attn.pool_q": "attn.pool_q.conv",
    "attn.norm_q": "attn.pool_q.norm",
    "attn.pool_k": "attn.pool_k.conv",
    "attn.norm_k": "attn.pool_k.norm",
    "attn.pool_v": "attn.pool_v.conv",
    "attn.norm_v": "attn.pool_v.norm",
    "attn.rel_pos_h": "attn.rel_pos_h",
    "attn.rel_pos_w": "attn.rel_pos_w",
    "attn.rel_pos_t": "attn.rel_pos_t",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "proj": "proj",
}
# Parameters held without a module (no ".weight" suffix).
_BARE = {
    "pos_encoding.class_token", "pos_encoding.spatial_pos", "pos_encoding.temporal_pos",
    "pos_encoding.class_pos", "cls_token", "pos_embed_spatial", "pos_embed_temporal",
    "pos_embed_class", "attn.rel_pos_h", "attn.rel_pos_w", "attn.rel_pos_t",
}  # fmt: skip
# Our tensors that PySlowFast stores with leading singleton dimensions: (1, 1, C), (1, n, C).
_PSF_SQUEEZE = {"cls_token": 2, "pos_spatial": 1, "pos_temporal": 1, "pos_class": 2}

_WEIGHT_DIMS = [
    (re.compile(r"patch_embed\.weight|blocks\.\d+\.attn\.pool_[qkv]\.conv\.weight"), 5),
    (re.compile(r"head\.weight|blocks\.\d+\.(attn\.(qkv|proj)|mlp\.fc[12]|proj)\.weight"), 2),
    (re.compile(r"pos_spatial|pos_temporal|blocks\.\d+\.attn\.rel_pos_[hwt]"), 2),
    (re.compile(r"cls_token|pos_class|.*\.bias|(.*\.)?norm\d?\.weight"), 1),
]


def _split(key: str) -> tuple[str, str]:
    """'blocks.3.attn.qkv.weight' -> ('blocks.3.attn.qkv', 'weight'); bare parameters whole."""
    tail = re.sub(r"^blocks\.\d+\.", "", key)
    if key in _BARE or tail in _BARE:
        return key, ""
    module, _, param = key.rpartition(".")
    return module, param


def _remap(
    state_dict: dict[str, torch.Tensor],
    top: dict[str, str],
    block: dict[str, str],
    layout: str,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state_dict.items():
        module, param = _split(key)
        new_module = top.get(module)
        match = _BLOCK_KEY.fullmatch(module)
        if match is not None and match.group(2) in block:
            new_module = f"blocks.{match.group(1)}.{block[match.group(2)]}"
        # Unknown keys pass through unchanged so that the strict load reports them.
        new_key = key if new_module is None else f"{new_module}.{param}" if param else new_module
        if new_key in out:
            raise ValueError(f"{layout} keys {origin[new_key]} and {key} both map to {new_key}")
        out[new_key] = value
        origin[new_key] = key
    return out, origin


def _check_shapes(state: dict[str, torch.Tensor], origin: dict[str, str], layout: str) -> None:
    """Catch a layout mix-up early: each known tensor has a fixed number of dimensions."""
    for key, value in state.items():
        for pattern, dims in _WEIGHT_DIMS:
            if pattern.fullmatch(key):
                if value.dim() != dims:
                    raise ValueError(
                        f"{layout} key {origin.get(key, key)} has shape {list(value.shape)}, "
                        f"expected {dims} dimensions"
                    )
                break


def remap_torchvision(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision `mvit_v1_b` / `mvit_v2_s` state dict (its Kinetics-400 weights) -> ours."""
    out, origin = _remap(state_dict, _TV_TOP, _TV_BLOCK, "torchvision")
    _check_shapes(out, origin, "torchvision")
    return out


def remap_pyslowfast(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PySlowFast `MViT` state dict (its model-zoo `model_state`) -> ours.

    Separate `attn.q`, `attn.k`, `attn.v` linears (MViTv1-era files) are concatenated into
    `attn.qkv` in that order, which is how `attn.qkv`'s output is split.
    """
    state = dict(state_dict)
    fused: dict[str, torch.Tensor] = {}
    for key in list(state):
        match = re.fullmatch(r"(blocks\.\d+\.attn)\.q\.(weight|bias)", key)
        if match is None:
            continue
        prefix, param = match.groups()
        parts = [f"{prefix}.{name}.{param}" for name in ("q", "k", "v")]
        missing = [p for p in parts if p not in state]
        if missing:
            raise ValueError(f"PySlowFast key {key} comes without {', '.join(missing)}")
        shapes = {tuple(state[p].shape) for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"PySlowFast keys {', '.join(parts)} differ in shape: {shapes}")
        fused[f"{prefix}.qkv.{param}"] = torch.cat([state.pop(p) for p in parts], dim=0)
    for key in state:
        if re.fullmatch(r"blocks\.\d+\.attn\.[kv]\.(weight|bias)", key):
            raise ValueError(f"PySlowFast key {key} comes without its attn.q counterpart")
    state.update(fused)
    out, origin = _remap(state, _PSF_TOP, _PSF_BLOCK, "PySlowFast")
    for key, singleton in _PSF_SQUEEZE.items():
        value = out.get(key)
        if value is None:
            continue
        if value.dim() != 3 or tuple(value.shape[:singleton]) != (1,) * singleton:
            raise ValueError(
                f"PySlowFast key {origin[key]} has shape {list(value.shape)}, expected "
                f"{'(1, 1, C)' if singleton == 2 else '(1, n, C)'}"
            )
        out[key] = value.reshape(value.shape[singleton:])
    _check_shapes(out, origin, "PySlowFast")
    return out


def _detect_layout(state_dict: dict[str, torch.Tensor]) -> str:
    keys = list(state_dict)
    if any(k.startswith(("conv_proj.", "pos_encoding.")) for k in keys):
        return "torchvision"
    if any(k.startswith(("patch_embed.proj.", "head.projection.")) for k in keys):
        return "pyslowfast"
    if any(k.startswith("patch_embed.") for k in keys):
        return "avstream"
    shown = ", ".join(keys[:3])
    raise ValueError(
        f"not an MViT checkpoint in a known layout (torchvision conv_proj.*, PySlowFast "
        f"patch_embed.proj.*, or ours); its first keys are {shown}"
    )


def adapt_checkpoint(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """Checkpoint in any supported layout -> (our state dict, build options)."""
    layout = _detect_layout(state_dict)
    if layout == "torchvision":
        state = remap_torchvision(state_dict)
    elif layout == "pyslowfast":
        state = remap_pyslowfast(state_dict)
    else:
        state = dict(state_dict)
    options: dict = {}
    head = state.get("head.weight")
    if head is not None and head.dim() == 2:
        options["num_classes"] = int(head.shape[0])
    return state, options


# The zoo: torchvision's `mvit_v1_b` / `mvit_v2_s` (their tables of heads, widths and
# strides, which are PySlowFast's configs/Kinetics/MVIT_B_16x4_CONV.yaml and
# MVITv2_S_16x4.yaml) and their Kinetics-400 weights. 16 frames every 4 frames of 30 fps.
_FPS = 30
_VARIANTS: dict[str, dict] = {
    "mvit_v1_b": {"interval_s": 4 / _FPS},
    "mvit_v2_s": {
        "interval_s": 4 / _FPS,
        "rel_pos": True,
        "residual_pool": True,
        "expand_in_attention": True,
        "pool_q_every_block": True,
    },
}
# torchvision `MViT_V1_B_Weights.KINETICS400_V1.url`, `MViT_V2_S_Weights.KINETICS400_V1.url`.
# The classifier: newly initialised when fine-tuning for other labels.
_CLASSIFIER = ("head.",)

_ZOO_URLS = {
    "mvit_v1_b": "https://download.pytorch.org/models/mvit_v1_b-dbeb1030.pth",
    "mvit_v2_s": "https://download.pytorch.org/models/mvit_v2_s-ae3be167.pth",
}


def _config(name: str, num_classes: int = 400) -> MViTConfig:
    return MViTConfig(num_classes=num_classes, **_VARIANTS[name])


def _build(name: str, num_classes: int) -> MViT:
    cfg = _config(name, num_classes)
    meta = ModelMeta(
        name=name,
        video=(VideoInput(frames=cfg.frames, interval_s=cfg.interval_s),),
        crop=cfg.train_crop,
        short_side=cfg.short_side,
        mean=_MEAN,
        std=_STD,
        labels=class_labels(num_classes),
    )
    return MViT(cfg, meta)


@register(
    "mvit_v1_b", adapt=adapt_checkpoint, zoo_file=_ZOO_URLS["mvit_v1_b"], classifier=_CLASSIFIER
)
def mvit_v1_b(num_classes: int = 400) -> MViT:
    return _build("mvit_v1_b", num_classes)


@register(
    "mvit_v2_s", adapt=adapt_checkpoint, zoo_file=_ZOO_URLS["mvit_v2_s"], classifier=_CLASSIFIER
)
def mvit_v2_s(num_classes: int = 400) -> MViT:
    return _build("mvit_v2_s", num_classes)
