"""X3D video classifiers.

Christoph Feichtenhofer, "X3D: Expanding Architectures for Efficient Video Recognition",
CVPR 2020, arXiv:2004.04730. A ResNet of channel-wise (depthwise) 3x3x3 bottlenecks with
squeeze-excitation on every other block and swish inside the bottleneck, grown from a
tiny base (X2D) along six axes: frame interval, frames, spatial resolution, depth,
width and bottleneck width (paper section 3).

Computes what pytorchvideo 0.1.5 (`pytorchvideo/models/x3d.py`) and PySlowFast
(`slowfast/models/video_model_builder.py` class X3D) compute at test time. Differences:
- Module names are our own (`stem`, `stages.S.B`, `head`); `remap_pytorchvideo` and
  `remap_pyslowfast` translate the two official checkpoint layouts.
- PySlowFast puts a BatchNorm after the first stage's shortcut convolution, pytorchvideo
  does not (its `create_x3d_res_block` adds one only when the width changes). Here it is
  optional (`X3DConfig.shortcut_norm`) so that both checkpoint families load exactly.
- The head returns logits averaged over the positions left after its pool (pytorchvideo
  with `head_activation=None`). PySlowFast applies softmax per position before averaging;
  the two agree when the input is the train crop (one position).
- Channel widths are rounded as pytorchvideo does (multiples of 8); PySlowFast rounds
  the width factor to multiples of 1. Both give the same widths for the zoo (factor 2).
- No drop-connect (PySlowFast's default rate for X3D is 0) and no detection head.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from models._registry import ModelMeta, Option, VideoInput, class_labels, register

# X3D paper Table 1 / pytorchvideo `create_x3d`: the X2D base network before expansion.
_BASE_STEM_WIDTH = 12  # conv1 width before the width factor (PySlowFast X3D.DIM_C1)
_BASE_DEPTHS = (1, 2, 5, 3)  # residual blocks of res2..res5 before the depth factor
_STAGE_GROWTH = 2.0  # each stage doubles the width of the one before
_STEM_TEMPORAL_KERNEL = 5  # PySlowFast _TEMPORAL_KERNEL_BASIS["x3d"]
_TOTAL_STRIDE = 32  # stem (2) and four stages (2 each), spatial only; no temporal stride
# PySlowFast config defaults (DATA.MEAN / DATA.STD), used for every X3D zoo checkpoint.
_MEAN = (0.45, 0.45, 0.45)
_STD = (0.225, 0.225, 0.225)


@dataclass(frozen=True)
class X3DConfig:
    """One X3D network.

    The paper's six expansion factors come first (frame interval gamma_tau, frames
    gamma_t, resolution gamma_s with its test-time counterparts, depth gamma_d, width
    gamma_w, bottleneck gamma_b); the defaults are those of every zoo variant.
    """

    interval_s: float  # gamma_tau: seconds between sampled frames (temporal duration / rate)
    frames: int  # gamma_t: frames per clip
    train_crop: int  # gamma_s: training resolution; sets the head's pool kernel
    test_crop: int  # test-time centre crop (square)
    short_side: int  # test-time short-side resize
    depth_factor: float  # gamma_d: multiplies the blocks per stage
    width_factor: float = 2.0  # gamma_w: multiplies all widths
    bottleneck_factor: float = 2.25  # gamma_b: inner width of a block / its output width
    num_classes: int = 400
    se_ratio: float = 0.0625  # squeeze-excitation width / block inner width (0 disables)
    head_dim: int = 2048  # width of the head's lin_5 (PySlowFast X3D.DIM_C5)
    dropout: float = 0.5  # before the classifier (training only)
    shortcut_norm: bool = False  # BatchNorm after the first stage's shortcut (PySlowFast)

    def __post_init__(self) -> None:
        for field in ("frames", "train_crop", "test_crop", "short_side", "num_classes", "head_dim"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"X3DConfig.{field} must be a positive int, got {value!r}")
        for field in ("interval_s", "depth_factor", "width_factor", "bottleneck_factor"):
            if not getattr(self, field) > 0:
                raise ValueError(f"X3DConfig.{field} must be > 0, got {getattr(self, field)!r}")
        if not 0.0 <= self.se_ratio < 1.0:
            raise ValueError(f"X3DConfig.se_ratio must be in [0, 1), got {self.se_ratio!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"X3DConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.test_crop > self.short_side:
            raise ValueError(
                f"X3DConfig.test_crop {self.test_crop} exceeds short_side {self.short_side}"
            )
        if _ceil_div(self.test_crop, _TOTAL_STRIDE) < self.pool_kernel[1]:
            raise ValueError(
                f"X3DConfig.test_crop {self.test_crop} is too small for the head pool of "
                f"train_crop {self.train_crop}"
            )

    @property
    def pool_kernel(self) -> tuple[int, int, int]:
        """Head AvgPool3d kernel: the train clip's final feature map (T, H/32, W/32)."""
        side = _ceil_div(self.train_crop, _TOTAL_STRIDE)
        return (int(self.frames), int(side), int(side))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _round_width(width: float, multiplier: float, divisor: int = 8) -> int:
    """Widths rounded to a multiple of `divisor`, never below it and never under 90 %.

    As `round_width` in pytorchvideo `layers/utils.py` and PySlowFast's SE.
    """
    width *= multiplier
    out = max(divisor, int(width + divisor / 2) // divisor * divisor)
    if out < 0.9 * width:
        out += divisor
    return int(out)


class _Stem(nn.Module):
    """Spatial 1x3x3 conv (stride 2), depthwise temporal 5x1x1 conv, BN, ReLU."""

    def __init__(self, dim_out: int) -> None:
        super().__init__()
        k_t = _STEM_TEMPORAL_KERNEL
        self.conv_xy = nn.Conv3d(
            3, dim_out, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False
        )
        self.conv_t = nn.Conv3d(
            dim_out,
            dim_out,
            kernel_size=(k_t, 1, 1),
            padding=(k_t // 2, 0, 0),
            groups=dim_out,
            bias=False,
        )
        self.bn = nn.BatchNorm3d(dim_out)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv_t(self.conv_xy(x))))


class _SqueezeExcite(nn.Module):
    """Channel gates from the clip mean: 1x1x1 conv, ReLU, 1x1x1 conv, sigmoid."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        dim_fc = _round_width(dim, ratio)
        self.fc1 = nn.Conv3d(dim, dim_fc, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv3d(dim_fc, dim, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3, 4), keepdim=True)  # (B, C, T, H, W) -> (B, C, 1, 1, 1)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class _Block(nn.Module):
    """Residual bottleneck: 1x1x1, depthwise 3x3x3 (+SE, swish), 1x1x1; ReLU after the sum."""

    def __init__(
        self,
        dim_in: int,
        dim_inner: int,
        dim_out: int,
        stride: int,
        se_ratio: float,
        shortcut_norm: bool,
    ) -> None:
        super().__init__()
        self.conv_a = nn.Conv3d(dim_in, dim_inner, 1, bias=False)
        self.bn_a = nn.BatchNorm3d(dim_inner)
        self.act_a = nn.ReLU(inplace=True)
        self.conv_b = nn.Conv3d(
            dim_inner,
            dim_inner,
            kernel_size=3,
            stride=(1, stride, stride),
            padding=1,
            groups=dim_inner,
            bias=False,
        )
        self.bn_b = nn.BatchNorm3d(dim_inner)
        self.se = _SqueezeExcite(dim_inner, se_ratio) if se_ratio > 0 else nn.Identity()
        self.act_b = nn.SiLU(inplace=True)  # swish
        self.conv_c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.bn_c = nn.BatchNorm3d(dim_out)
        self.shortcut: nn.Module = nn.Identity()
        self.shortcut_bn: nn.Module = nn.Identity()
        if dim_in != dim_out or stride != 1:
            self.shortcut = nn.Conv3d(
                dim_in, dim_out, kernel_size=1, stride=(1, stride, stride), bias=False
            )
            if shortcut_norm:
                self.shortcut_bn = nn.BatchNorm3d(dim_out)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act_a(self.bn_a(self.conv_a(x)))
        y = self.act_b(self.se(self.bn_b(self.conv_b(y))))
        y = self.bn_c(self.conv_c(y))
        return self.act(self.shortcut_bn(self.shortcut(x)) + y)


class _Head(nn.Module):
    """conv_5 + BN + ReLU, pool of the train clip's feature map, lin_5 + ReLU, classifier.

    Fully convolutional at test time: a clip larger than the train clip leaves several
    pooled positions, each is classified and the logits are averaged (PySlowFast X3DHead).
    """

    def __init__(
        self,
        dim_in: int,
        dim_inner: int,
        dim_out: int,
        num_classes: int,
        pool_kernel: tuple[int, int, int],
        dropout: float,
    ) -> None:
        super().__init__()
        self.conv_5 = nn.Conv3d(dim_in, dim_inner, 1, bias=False)
        self.bn_5 = nn.BatchNorm3d(dim_inner)
        self.act_5 = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool3d(pool_kernel, stride=1)
        self.lin_5 = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.act_lin = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(dim_out, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_5(self.bn_5(self.conv_5(x)))
        if x.dtype == torch.bfloat16 and x.device.type == "cpu":
            x = self.pool(x.float()).to(x.dtype)  # the CPU has no bf16 avg_pool3d
        else:
            x = self.pool(x)
        x = self.act_lin(self.lin_5(x))
        x = x.permute(0, 2, 3, 4, 1)  # (B, C, T', H', W') -> (B, T', H', W', C)
        x = self.proj(self.dropout(x))  # (B, T', H', W', C) -> (B, T', H', W', K)
        return x.mean(dim=(1, 2, 3))  # (B, T', H', W', K) -> (B, K)


class X3D(nn.Module):
    """X3D network; `meta` describes its input and labels."""

    def __init__(self, cfg: X3DConfig, meta: ModelMeta) -> None:
        super().__init__()
        self.cfg = cfg
        self.meta = meta
        self.weights_id: str | None = None
        stem_dim = _round_width(_BASE_STEM_WIDTH, cfg.width_factor)
        self.stem = _Stem(stem_dim)
        stages = []
        dim_in, base = stem_dim, _BASE_STEM_WIDTH
        for index, depth in enumerate(_BASE_DEPTHS):
            if index > 0:
                base = _round_width(base, _STAGE_GROWTH)
            dim_out = _round_width(base, cfg.width_factor)
            dim_inner = int(cfg.bottleneck_factor * dim_out)
            blocks = [
                _Block(
                    dim_in if b == 0 else dim_out,
                    dim_inner,
                    dim_out,
                    stride=2 if b == 0 else 1,
                    # SE on blocks 0, 2, 4, ... (PySlowFast X3DTransform, pytorchvideo).
                    se_ratio=cfg.se_ratio if b % 2 == 0 else 0.0,
                    shortcut_norm=cfg.shortcut_norm or index > 0,
                )
                for b in range(math.ceil(cfg.depth_factor * depth))
            ]
            stages.append(nn.Sequential(*blocks))
            dim_in = dim_out
        self.stages = nn.ModuleList(stages)
        self.head = _Head(
            dim_in, dim_inner, cfg.head_dim, cfg.num_classes, cfg.pool_kernel, cfg.dropout
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # As PySlowFast's init_helper (less its zero-init of the last BN of each block):
        # MSRA fill for convolutions, N(0, 0.01) for the classifier.
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """One test-size clip per batch item: ((B, 3, T, crop, crop) float32,)."""
        crop = self.meta.crop
        generator = torch.Generator().manual_seed(0)
        shape = (batch, 3, self.cfg.frames, crop, crop)
        return (torch.randn(shape, generator=generator, dtype=torch.float32),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) normalised RGB -> (B, num_classes) logits."""
        kt, ks, _ = self.cfg.pool_kernel
        # Shape checks only (static under export); the pool needs the train clip's extent.
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"X3D expects (B, 3, T, H, W) input, got {tuple(x.shape)}")
        if x.shape[2] < kt or min(x.shape[3], x.shape[4]) <= (ks - 1) * _TOTAL_STRIDE:
            raise ValueError(
                f"X3D {self.meta.name} needs at least {kt} frames of "
                f"{(ks - 1) * _TOTAL_STRIDE + 1}x{(ks - 1) * _TOTAL_STRIDE + 1} pixels, "
                f"got {tuple(x.shape)}"
            )
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


# Checkpoint layouts. Each table maps a module path of the official layout to ours;
# parameter/buffer names (weight, bias, running_mean, ...) carry over unchanged.

# pytorchvideo `create_x3d`: blocks.0 stem, blocks.1-4 stages, blocks.5 head. Its stem
# calls the spatial conv `conv_t` and the temporal one `conv_xy` (names swapped).
_PTV_STAGE = re.compile(r"blocks\.([1-4])\.res_blocks\.(\d+)\.(.+)")
_PTV_BLOCK = {
    "branch1_conv": "shortcut",
    "branch1_norm": "shortcut_bn",
    "branch2.conv_a": "conv_a",
    "branch2.norm_a": "bn_a",
    "branch2.conv_b": "conv_b",
    "branch2.norm_b.0": "bn_b",
    "branch2.norm_b.1.block.0": "se.fc1",  # fvcore SqueezeExcitation
    "branch2.norm_b.1.block.2": "se.fc2",
    "branch2.conv_c": "conv_c",
    "branch2.norm_c": "bn_c",
}
_PTV_OTHER = {
    "blocks.0.conv.conv_t": "stem.conv_xy",
    "blocks.0.conv.conv_xy": "stem.conv_t",
    "blocks.0.norm": "stem.bn",
    "blocks.5.pool.pre_conv": "head.conv_5",
    "blocks.5.pool.pre_norm": "head.bn_5",
    "blocks.5.pool.post_conv": "head.lin_5",
    "blocks.5.proj": "head.proj",
}

# PySlowFast X3D: s1 stem (VideoModelStem -> X3DStem), s2-s5 ResStage of ResBlock with
# X3DTransform as branch2, head X3DHead.
_PSF_STAGE = re.compile(r"s([2-5])\.pathway0_res(\d+)\.(.+)")
_PSF_BLOCK = {
    "branch1": "shortcut",
    "branch1_bn": "shortcut_bn",
    "branch2.a": "conv_a",
    "branch2.a_bn": "bn_a",
    "branch2.b": "conv_b",
    "branch2.b_bn": "bn_b",
    "branch2.se.fc1": "se.fc1",
    "branch2.se.fc2": "se.fc2",
    "branch2.c": "conv_c",
    "branch2.c_bn": "bn_c",
}
_PSF_OTHER = {
    "s1.pathway0_stem.conv_xy": "stem.conv_xy",
    "s1.pathway0_stem.conv": "stem.conv_t",
    "s1.pathway0_stem.bn": "stem.bn",
    "head.conv_5": "head.conv_5",
    "head.conv_5_bn": "head.bn_5",
    "head.lin_5": "head.lin_5",
    "head.projection": "head.proj",
}


_CONV_WEIGHT = re.compile(
    r"(stem\.conv_(xy|t)|stages\.\d+\.\d+\.(conv_[abc]|shortcut|se\.fc[12])|head\.(conv_5|lin_5))"
    r"\.weight"
)


def _remap(
    state_dict: dict[str, torch.Tensor],
    stage_re: re.Pattern[str],
    stage_offset: int,
    block_table: dict[str, str],
    other_table: dict[str, str],
    layout: str,
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        new_module = other_table.get(module)
        match = stage_re.fullmatch(module)
        if match is not None and match.group(3) in block_table:
            stage, block, part = match.groups()
            new_module = f"stages.{int(stage) - stage_offset}.{block}.{block_table[part]}"
        # Unknown keys pass through unchanged so that the strict load reports them.
        new_key = f"{new_module}.{param}" if new_module is not None else key
        if new_key in out:
            raise ValueError(f"{layout} keys {origin[new_key]} and {key} both map to {new_key}")
        out[new_key] = value
        origin[new_key] = key
    _check_shapes(out, origin, layout)
    return out


def _check_shapes(state: dict[str, torch.Tensor], origin: dict[str, str], layout: str) -> None:
    """Catch a layout mix-up early: convolutions are 5-D, the classifier 2-D, and the
    stem's spatial and temporal convs are 1xKxK and Kx1x1 (pytorchvideo swaps the names)."""
    for key, value in state.items():
        want = 5 if _CONV_WEIGHT.fullmatch(key) else 2 if key == "head.proj.weight" else None
        if want is not None and value.dim() != want:
            raise ValueError(
                f"{layout} key {origin[key]} has shape {list(value.shape)}, "
                f"expected a {want}-D weight"
            )
    xy, t = state.get("stem.conv_xy.weight"), state.get("stem.conv_t.weight")
    if xy is not None and (xy.dim() != 5 or xy.shape[2] != 1):
        raise ValueError(
            f"{layout} key {origin['stem.conv_xy.weight']} has shape {list(xy.shape)}; "
            f"expected the stem's spatial 1xKxK convolution there"
        )
    if t is not None and (t.dim() != 5 or t.shape[3:] != (1, 1)):
        raise ValueError(
            f"{layout} key {origin['stem.conv_t.weight']} has shape {list(t.shape)}; "
            f"expected the stem's temporal Kx1x1 convolution there"
        )


def remap_pytorchvideo(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pytorchvideo `create_x3d` state dict (its Kinetics zoo files) -> ours."""
    return _remap(state_dict, _PTV_STAGE, 1, _PTV_BLOCK, _PTV_OTHER, "pytorchvideo")


def remap_pyslowfast(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PySlowFast X3D state dict (its own zoo checkpoints) -> ours."""
    return _remap(state_dict, _PSF_STAGE, 2, _PSF_BLOCK, _PSF_OTHER, "PySlowFast")


def _detect_layout(state_dict: dict[str, torch.Tensor]) -> str:
    keys = list(state_dict)
    if any(k.startswith("blocks.") for k in keys):
        return "pytorchvideo"
    if any(k.startswith(("s1.pathway0_stem.", "s2.pathway0_res")) for k in keys):
        return "pyslowfast"
    if any(k.startswith(("stem.", "stages.")) for k in keys):
        return "avstream"
    shown = ", ".join(keys[:3])
    raise ValueError(
        f"not an X3D checkpoint in a known layout (pytorchvideo blocks.*, PySlowFast "
        f"s1.pathway0_stem.*, or ours); its first keys are {shown}"
    )


def adapt_checkpoint(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """Checkpoint in any supported layout -> (our state dict, build options).

    The options say whether the first stage's shortcut has a BatchNorm (PySlowFast) and
    how many classes the classifier has.
    """
    layout = _detect_layout(state_dict)
    if layout == "pytorchvideo":
        state = remap_pytorchvideo(state_dict)
    elif layout == "pyslowfast":
        state = remap_pyslowfast(state_dict)
    else:
        state = dict(state_dict)
    options: dict = {"shortcut_norm": "stages.0.0.shortcut_bn.weight" in state}
    proj = state.get("head.proj.weight")
    if proj is not None and proj.dim() == 2:
        options["num_classes"] = int(proj.shape[0])
    return state, options


# The zoo: pytorchvideo `models/hub/x3d.py` and PySlowFast `configs/Kinetics/X3D_*.yaml`:
# NUM_FRAMES, SAMPLING_RATE (frames of 30 fps video), TRAIN_CROP_SIZE, TEST_CROP_SIZE (the
# 3-crop test size, which is also the short side the clip is resized to), DEPTH_FACTOR.
_VARIANTS: dict[str, tuple[int, int, int, int, float]] = {
    "x3d_xs": (4, 12, 160, 182, 2.2),
    "x3d_s": (13, 6, 160, 182, 2.2),
    "x3d_m": (16, 5, 224, 256, 2.2),
    "x3d_l": (16, 5, 312, 356, 5.0),
}
_FPS = 30


def _config(name: str, num_classes: int = 400, shortcut_norm: bool = False, **factors) -> X3DConfig:
    frames, rate, train_crop, test_crop, depth_factor = _VARIANTS[name]
    base = {"frames": frames, "interval_s": rate / _FPS, "depth_factor": depth_factor}
    return X3DConfig(
        train_crop=train_crop,
        test_crop=test_crop,
        short_side=test_crop,
        num_classes=num_classes,
        shortcut_norm=shortcut_norm,
        **{**base, **factors},
    )


def _build(name: str, num_classes: int, shortcut_norm: bool, **factors) -> X3D:
    cfg = _config(name, num_classes, shortcut_norm, **factors)
    meta = ModelMeta(
        name=name,
        video=(VideoInput(frames=cfg.frames, interval_s=cfg.interval_s),),
        crop=cfg.test_crop,
        short_side=cfg.short_side,
        mean=_MEAN,
        std=_STD,
        labels=class_labels(num_classes),
    )
    return X3D(cfg, meta)


# What `models.create(name, **options)` may change: the paper's expansion factors (X3DConfig's
# fields of the same names) but resolution, whose train crop, test crop and resize go together.
# Another value than the variant's makes another network: random weights, or a checkpoint
# saved from one (`models.save_checkpoint` keeps the options).
OPTIONS = {
    "frames": Option(int),  # gamma_t
    "interval_s": Option(float),  # gamma_tau
    "depth_factor": Option(float),  # gamma_d
    "width_factor": Option(float),  # gamma_w
    "bottleneck_factor": Option(float),  # gamma_b
}


@register("x3d_xs", adapt=adapt_checkpoint, zoo_file="X3D_XS.pyth", options=OPTIONS)
def x3d_xs(num_classes: int = 400, shortcut_norm: bool = False, **factors) -> X3D:
    return _build("x3d_xs", num_classes, shortcut_norm, **factors)


@register("x3d_s", adapt=adapt_checkpoint, zoo_file="X3D_S.pyth", options=OPTIONS)
def x3d_s(num_classes: int = 400, shortcut_norm: bool = False, **factors) -> X3D:
    return _build("x3d_s", num_classes, shortcut_norm, **factors)


@register("x3d_m", adapt=adapt_checkpoint, zoo_file="X3D_M.pyth", options=OPTIONS)
def x3d_m(num_classes: int = 400, shortcut_norm: bool = False, **factors) -> X3D:
    return _build("x3d_m", num_classes, shortcut_norm, **factors)


@register("x3d_l", adapt=adapt_checkpoint, zoo_file="X3D_L.pyth", options=OPTIONS)
def x3d_l(num_classes: int = 400, shortcut_norm: bool = False, **factors) -> X3D:
    return _build("x3d_l", num_classes, shortcut_norm, **factors)
