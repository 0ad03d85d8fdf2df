"""SlowFast and Audiovisual SlowFast video classifiers.

SlowFast: Christoph Feichtenhofer, Haoqi Fan, Jitendra Malik, Kaiming He, "SlowFast Networks
for Video Recognition", ICCV 2019, arXiv:1812.03982. Two 3D ResNet-50 pathways on the same
clip: a Slow one on T frames and a Fast one on alpha*T frames with 1/beta of the channels and
temporal kernels from the stem on; after the stem and after res2..res4 a strided temporal
convolution carries Fast features into Slow (concatenated on channels). The 8x8 zoo model
takes 8 slow and 32 fast frames (alpha 4, beta 1/8, fusion kernel 7).

AVSlowFast: Fanyi Xiao, Yong Jae Lee, Kristen Grauman, Jitendra Malik, Christoph
Feichtenhofer, "Audiovisual SlowFast Networks for Video Recognition", arXiv:2001.08740. A
third, Audio pathway on a log-mel spectrogram (half the Slow width; a 9x1 + 1x9 stem; res2
and res3 with separable 3x1 + 1x3 bottlenecks, res4 and res5 with 3x3) is fused into the
visual pathways, DropPathway drops the audio pathway during training, and an audio-visual
synchronisation head gives embeddings for a contrastive loss.

SlowFast computes what pytorchvideo 0.1.5 (`pytorchvideo/models/slowfast.py`, hub
`slowfast_r50`) and PySlowFast (`slowfast/models/video_model_builder.py` class SlowFast)
compute at the train crop (224). Differences:
- Module names are our own (`slow.*`, `fast.*`, `fuse.N`, `head.proj`);
  `remap_pytorchvideo` and `remap_pyslowfast` translate the two official layouts.
- The head averages each pathway's features over all positions (global pooling), so any
  crop works (the zoo's test crop is 256). pytorchvideo and PySlowFast pool 8x7x7 /
  32x7x7 windows with stride 1 and average the logits (pytorchvideo) or softmaxes
  (PySlowFast) of the windows; at 224 there is one window and all three agree, at 256
  global pooling weighs the border positions of the 8x8 map like the others.
- Logits out, no softmax (pytorchvideo with `head_activation=None`). No detection head.

AVSlowFast follows the paper and its reference training code (PySlowFast's AVSlowFast
branch: `FuseAV`, `AVS`, `gen_fusion_avs_pattern`); no official checkpoint exists.
Differences:
- The audio input is (B, 1, time, frequency) = (B, 1, 128, 80) and the audio pathway uses
  2D convolutions over (time, frequency). The reference feeds (B, 1, 1, T, F) to 3D
  convolutions; pytorchvideo's `create_audio_visual_slowfast` expects (B, 1, T, 1, F).
- Separable convolutions (the stem's 9x1 and 1x9, res2/res3's 3x1 and 1x3) run in parallel
  and are summed, as pytorchvideo's `create_acoustic_res_basic_stem` and
  `create_acoustic_bottleneck_block` do (the stem: one BatchNorm after the sum; the
  bottleneck: BatchNorm and ReLU on each branch before the sum).
- Fusion (`AVSlowFastConfig.fusion`), after res3 and res4 by default as in the reference:
  `a_fs` (A->FS, the reference's only mode and the paper's default): Fast fuses into Slow,
  then the audio features, averaged over frequency, go through two temporal convolutions
  (the second strided down to the slow frame rate, to the fused slow width) and are added
  to the fused slow tensor. `a_f_s` (A->F->S): the same projection strided to the fast rate
  and width is added to Fast, which then fuses into Slow as usual. `av_nonlocal`: A->FS
  plus a non-local block in which the slow positions attend to the (2x2 max-pooled) audio
  positions, added residually through a zero-initialised BatchNorm.
- DropPathway drops the whole audio contribution (fusions and the audio term of the
  classifier) in a training step with probability `model.drop_pathway` (paper: 0.8; the
  reference keeps the audio features in the classifier). One draw per step from torch's
  RNG; the audio pathway still runs, so every parameter gets a gradient.
- The classifier is `head.proj` on the pooled visual features plus a bias-free
  `head.audio_proj` on the pooled audio features: the reference's one linear layer on
  the concatenation, split so that a SlowFast checkpoint's classifier loads unchanged.
- `sync_embeddings` gives L2-normalised embeddings of the pooled visual and audio
  features at the first fusion point (before audio enters the visual pathways) for a
  synchronisation loss; the loss, negatives and masking belong to training code.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models._registry import AudioInput, ModelMeta, Option, VideoInput, class_labels, register

# PySlowFast `_TEMPORAL_KERNEL_BASIS["slowfast"]`: temporal kernel of conv1 and of the
# first conv of every res2..res5 block, for the slow and the fast pathway.
_SLOW_TEMPORAL_KERNELS = (1, 1, 1, 3, 3)
_FAST_TEMPORAL_KERNELS = (5, 3, 3, 3, 3)
_STAGE_STRIDES = (1, 2, 2, 2)  # spatial stride of res2..res5 (also the audio T/F stride)
_STEM_KERNEL = 7  # spatial kernel of the visual conv1
_BOTTLENECK_EXPANSION = 4  # block output width / inner width
_AUDIO_STEM_KERNEL = 9  # the audio conv1's 9x1 (time) and 1x9 (frequency) kernels
# PySlowFast configs/Kinetics/SLOWFAST_8x8_R50.yaml (DATA.MEAN / DATA.STD, 30 fps video).
_MEAN = (0.45, 0.45, 0.45)
_STD = (0.225, 0.225, 0.225)
_FPS = 30

FUSIONS = ("a_f_s", "a_fs", "av_nonlocal")


@dataclass(frozen=True)
class SlowFastConfig:
    """One SlowFast network; the defaults are the 8x8 R50 zoo model (SLOWFAST_8x8_R50)."""

    slow_frames: int = 8  # T: slow pathway frames
    alpha: int = 4  # fast frames per slow frame (SLOWFAST.ALPHA)
    beta_inv: int = 8  # slow width / fast width (SLOWFAST.BETA_INV)
    fusion_kernel: int = 7  # temporal kernel of the fast->slow conv (FUSION_KERNEL_SZ)
    fusion_channel_ratio: int = 2  # fast->slow conv width / fast width
    depths: tuple[int, int, int, int] = (3, 4, 6, 3)  # res2..res5 blocks (ResNet-50)
    width: int = 64  # slow conv1 width (RESNET.WIDTH_PER_GROUP)
    fast_interval_s: float = 2 / _FPS  # fast frames every 2 frames of 30 fps video
    crop: int = 256  # test-time centre crop (DATA.TEST_CROP_SIZE)
    short_side: int = 256  # test-time short-side resize
    num_classes: int = 400
    dropout: float = 0.5  # before the classifier (training only)

    def __post_init__(self) -> None:
        for name in (
            "slow_frames", "alpha", "beta_inv", "fusion_kernel", "fusion_channel_ratio",
            "width", "crop", "short_side", "num_classes",
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SlowFastConfig.{name} must be a positive int, got {value!r}")
        if self.slow_frames < 2:
            raise ValueError(
                f"SlowFastConfig.slow_frames must be >= 2 (it sets the slow interval), "
                f"got {self.slow_frames}"
            )
        if len(self.depths) != 4 or any(
            isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in self.depths
        ):
            raise ValueError(
                f"SlowFastConfig.depths must be four positive ints, got {self.depths!r}"
            )
        if self.fusion_kernel % 2 == 0:
            raise ValueError(
                f"SlowFastConfig.fusion_kernel must be odd (centred), got {self.fusion_kernel}"
            )
        if self.width % self.beta_inv:
            raise ValueError(
                f"SlowFastConfig.width {self.width} is not divisible by beta_inv {self.beta_inv}"
            )
        if not self.fast_interval_s > 0:
            raise ValueError(
                f"SlowFastConfig.fast_interval_s must be > 0, got {self.fast_interval_s!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SlowFastConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.crop > self.short_side:
            raise ValueError(
                f"SlowFastConfig.crop {self.crop} exceeds short_side {self.short_side}"
            )

    @property
    def fast_frames(self) -> int:
        return self.slow_frames * self.alpha

    @property
    def slow_interval_s(self) -> float:
        """Seconds between slow frames: the slow frames span the fast frames' window.

        pytorchvideo and PySlowFast take slow = fast[linspace(0, alpha*T - 1, T)], i.e.
        8 frames over the 31 fast intervals of the 8x8 model: 31 * (2/30) / 7 s apart.
        """
        return (self.fast_frames - 1) * self.fast_interval_s / (self.slow_frames - 1)

    def widths(self, beta_inv: int = 1) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """(conv1 width, res2..res5 inner widths, res2..res5 output widths) / beta_inv."""
        inner = tuple(self.width * 2**i // beta_inv for i in range(4))
        return (
            self.width // beta_inv,
            inner,
            tuple(w * _BOTTLENECK_EXPANSION for w in inner),
        )


@dataclass(frozen=True)
class AVSlowFastConfig:
    """One Audiovisual SlowFast network: a SlowFast plus the audio pathway and fusions.

    Audio defaults are the reference's (PySlowFast AVSlowFast branch `config/defaults.py`
    SLOWFAST.AU_* and the paper): half the slow width, fusion convolutions of kernel 5 with
    1/8 of the audio width inside, 128 x 80 log-mel input, DropPathway 0.8, sync
    projections of 64 (AVS_PROJ_DIM).
    """

    visual: SlowFastConfig = field(default_factory=SlowFastConfig)
    fusion: str = "a_fs"  # one of FUSIONS
    # Junctions where audio is fused: 1 after conv1, 2..4 after res2..res4. The reference
    # training code fuses after res3 and res4 (SLOWFAST.AFS_FUSION [False, False, True, True]).
    fusion_stages: tuple[int, ...] = (3, 4)
    audio_frames: int = 128  # log-mel frames (time) per window
    n_mels: int = 80  # mel bins (frequency)
    audio_beta_inv: int = 2  # slow width / audio width (AU_BETA_INV)
    audio_fusion_kernel: int = 5  # temporal kernel of the audio fusion convs
    audio_fusion_ratio: float = 0.125  # inner width / audio width of the fusion convs
    separable_stages: int = 2  # res2.. with separable 3x1 + 1x3 convs (AUDIO_TRANS_NUM)
    drop_pathway: float = 0.8  # DropPathway probability (SLOWFAST.DROPPATHWAY_RATE)
    sync_dim: int = 64  # synchronisation embedding width (AVS_PROJ_DIM)

    def __post_init__(self) -> None:
        if not isinstance(self.visual, SlowFastConfig):
            raise TypeError(
                f"AVSlowFastConfig.visual must be a SlowFastConfig, got {self.visual!r}"
            )
        if self.fusion not in FUSIONS:
            raise ValueError(
                f"AVSlowFastConfig.fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}"
            )
        stages = self.fusion_stages
        if (
            not isinstance(stages, tuple)
            or not stages
            or any(isinstance(s, bool) or s not in (1, 2, 3, 4) for s in stages)
            or list(stages) != sorted(set(stages))
        ):
            raise ValueError(
                f"AVSlowFastConfig.fusion_stages must be a non-empty increasing tuple of "
                f"junctions in 1..4 (1: after conv1, 2-4: after res2-res4), got {stages!r}"
            )
        for name in (
            "audio_frames", "n_mels", "audio_beta_inv", "audio_fusion_kernel",
            "separable_stages", "sync_dim",
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AVSlowFastConfig.{name} must be a positive int, got {value!r}")
        if self.separable_stages > 4:
            raise ValueError(
                f"AVSlowFastConfig.separable_stages must be <= 4, got {self.separable_stages}"
            )
        if self.audio_fusion_kernel % 2 == 0:
            raise ValueError(
                f"AVSlowFastConfig.audio_fusion_kernel must be odd, got {self.audio_fusion_kernel}"
            )
        if self.visual.width % self.audio_beta_inv:
            raise ValueError(
                f"AVSlowFastConfig.audio_beta_inv {self.audio_beta_inv} does not divide "
                f"the slow width {self.visual.width}"
            )
        if not 0.0 < self.audio_fusion_ratio <= 1.0:
            raise ValueError(
                f"AVSlowFastConfig.audio_fusion_ratio must be in (0, 1], "
                f"got {self.audio_fusion_ratio!r}"
            )
        if not 0.0 <= self.drop_pathway <= 1.0:
            raise ValueError(
                f"AVSlowFastConfig.drop_pathway must be in [0, 1], got {self.drop_pathway!r}"
            )
        # The fusion convs stride the audio time axis down to the visual frame count.
        target = self.visual.fast_frames if self.fusion == "a_f_s" else self.visual.slow_frames
        for junction in stages:
            frames = self.audio_time(junction)
            if frames % target:
                raise ValueError(
                    f"AVSlowFastConfig: {frames} audio frames at junction {junction} cannot "
                    f"be strided to the {target} frames of the pathway that fusion "
                    f"{self.fusion!r} feeds; choose audio_frames or fusion_stages to match"
                )

    def audio_time(self, junction: int) -> int:
        """Audio time steps at a junction (conv1 and res2 keep them, res3/res4 halve them)."""
        frames = self.audio_frames
        for stride in _STAGE_STRIDES[: max(junction - 1, 0)]:
            frames = -(-frames // stride)
        return frames

    def audio_widths(self) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        return self.visual.widths(self.audio_beta_inv)


def _gate(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """DropPathway: x times the 0/1 keep draw in training, x unchanged in eval (None)."""
    return x if keep is None else x * keep


# -- visual blocks ---------------------------------------------------------------------


class _Stem(nn.Module):
    """Conv kx7x7 (stride 1x2x2), BN, ReLU, max pool 1x3x3 (stride 1x2x2)."""

    def __init__(self, dim_out: int, temporal_kernel: int) -> None:
        super().__init__()
        k = temporal_kernel
        self.conv = nn.Conv3d(
            3,
            dim_out,
            kernel_size=(k, _STEM_KERNEL, _STEM_KERNEL),
            stride=(1, 2, 2),
            padding=(k // 2, _STEM_KERNEL // 2, _STEM_KERNEL // 2),
            bias=False,
        )
        self.bn = nn.BatchNorm3d(dim_out)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.bn(self.conv(x))))


class _Bottleneck(nn.Module):
    """Residual bottleneck: kx1x1, 1x3x3 (spatial stride), 1x1x1; BN after each conv."""

    def __init__(
        self, dim_in: int, dim_inner: int, dim_out: int, temporal_kernel: int, stride: int
    ) -> None:
        super().__init__()
        k = temporal_kernel
        self.conv_a = nn.Conv3d(
            dim_in, dim_inner, kernel_size=(k, 1, 1), padding=(k // 2, 0, 0), bias=False
        )
        self.bn_a = nn.BatchNorm3d(dim_inner)
        self.act_a = nn.ReLU(inplace=True)
        self.conv_b = nn.Conv3d(
            dim_inner,
            dim_inner,
            kernel_size=(1, 3, 3),
            stride=(1, stride, stride),
            padding=(0, 1, 1),
            bias=False,
        )
        self.bn_b = nn.BatchNorm3d(dim_inner)
        self.act_b = nn.ReLU(inplace=True)
        self.conv_c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.bn_c = nn.BatchNorm3d(dim_out)
        self.shortcut: nn.Module = nn.Identity()
        self.shortcut_bn: nn.Module = nn.Identity()
        if dim_in != dim_out or stride != 1:
            self.shortcut = nn.Conv3d(
                dim_in, dim_out, kernel_size=1, stride=(1, stride, stride), bias=False
            )
            self.shortcut_bn = nn.BatchNorm3d(dim_out)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act_a(self.bn_a(self.conv_a(x)))
        y = self.act_b(self.bn_b(self.conv_b(y)))
        y = self.bn_c(self.conv_c(y))
        return self.act(self.shortcut_bn(self.shortcut(x)) + y)


class _VisualPathway(nn.Module):
    """conv1 and res2..res5 of one visual pathway (fusions live in the model)."""

    def __init__(
        self, cfg: SlowFastConfig, beta_inv: int, temporal_kernels: tuple[int, ...],
        dims_in: tuple[int, ...],
    ) -> None:  # fmt: skip
        super().__init__()
        stem_dim, inner, out = cfg.widths(beta_inv)
        self.stem = _Stem(stem_dim, temporal_kernels[0])
        self.stages = nn.ModuleList(
            nn.Sequential(
                *(
                    _Bottleneck(
                        dims_in[i] if b == 0 else out[i],
                        inner[i],
                        out[i],
                        temporal_kernels[i + 1],
                        stride=_STAGE_STRIDES[i] if b == 0 else 1,
                    )
                    for b in range(depth)
                )
            )
            for i, depth in enumerate(cfg.depths)
        )


class _FastToSlow(nn.Module):
    """Fast -> Slow lateral: conv kx1x1 with temporal stride alpha, BN, ReLU, concatenated
    to the slow features on channels."""

    def __init__(self, dim_fast: int, cfg: SlowFastConfig) -> None:
        super().__init__()
        k = cfg.fusion_kernel
        self.conv = nn.Conv3d(
            dim_fast,
            dim_fast * cfg.fusion_channel_ratio,
            kernel_size=(k, 1, 1),
            stride=(cfg.alpha, 1, 1),
            padding=(k // 2, 0, 0),
            bias=False,
        )
        self.bn = nn.BatchNorm3d(dim_fast * cfg.fusion_channel_ratio)
        self.act = nn.ReLU(inplace=True)

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        lateral = self.act(self.bn(self.conv(fast)))  # (B, Cf, aT, H, W) -> (B, 2Cf, T, H, W)
        return torch.cat([slow, lateral], dim=1)  # -> (B, Cs + 2Cf, T, H, W)


class _Head(nn.Module):
    """Global average pool per pathway, concatenate, dropout, linear classifier.

    With an audio pathway, a bias-free `audio_proj` adds the pooled audio features' logits:
    the same as one linear layer on [slow, fast, audio], but `proj` keeps SlowFast's shape.
    """

    def __init__(self, dim_visual: int, num_classes: int, dropout: float, dim_audio: int = 0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(dim_visual, num_classes)
        self.audio_proj: nn.Linear | None = None
        if dim_audio:
            self.audio_proj = nn.Linear(dim_audio, num_classes, bias=False)

    def forward(
        self,
        slow: torch.Tensor,
        fast: torch.Tensor,
        audio: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # (B, Cs, T, H, W), (B, Cf, aT, H, W) -> (B, Cs + Cf)
        x = torch.cat([slow.mean(dim=(2, 3, 4)), fast.mean(dim=(2, 3, 4))], dim=1)
        logits = self.proj(self.dropout(x))  # (B, Cs + Cf) -> (B, K)
        if audio is not None and self.audio_proj is not None:
            a = audio.mean(dim=(2, 3))  # (B, Ca, Ta, Fa) -> (B, Ca)
            logits = logits + _gate(self.audio_proj(self.dropout(a)), keep)
        return logits


# -- audio blocks ----------------------------------------------------------------------


class _AudioStem(nn.Module):
    """9x1 (time) and 1x9 (frequency) convs in parallel, summed, BN, ReLU; no stride."""

    def __init__(self, dim_out: int) -> None:
        super().__init__()
        k = _AUDIO_STEM_KERNEL
        self.conv_t = nn.Conv2d(1, dim_out, kernel_size=(k, 1), padding=(k // 2, 0), bias=False)
        self.conv_f = nn.Conv2d(1, dim_out, kernel_size=(1, k), padding=(0, k // 2), bias=False)
        self.bn = nn.BatchNorm2d(dim_out)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv_t(x) + self.conv_f(x)))  # (B, 1, T, F) -> (B, C, T, F)


class _AudioBottleneck(nn.Module):
    """Residual bottleneck over (time, frequency): 1x1, then either 3x1 and 1x3 in parallel
    (each with BN and ReLU, summed) or one 3x3, then 1x1; the stride is on both axes."""

    def __init__(
        self, dim_in: int, dim_inner: int, dim_out: int, stride: int, separable: bool
    ) -> None:
        super().__init__()
        self.separable = separable
        self.conv_a = nn.Conv2d(dim_in, dim_inner, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(dim_inner)
        self.act_a = nn.ReLU(inplace=True)
        if separable:
            self.conv_b_t = nn.Conv2d(
                dim_inner, dim_inner, (3, 1), stride=stride, padding=(1, 0), bias=False
            )
            self.bn_b_t = nn.BatchNorm2d(dim_inner)
            self.conv_b_f = nn.Conv2d(
                dim_inner, dim_inner, (1, 3), stride=stride, padding=(0, 1), bias=False
            )
            self.bn_b_f = nn.BatchNorm2d(dim_inner)
        else:
            self.conv_b = nn.Conv2d(dim_inner, dim_inner, 3, stride=stride, padding=1, bias=False)
            self.bn_b = nn.BatchNorm2d(dim_inner)
        self.act_b = nn.ReLU(inplace=True)
        self.conv_c = nn.Conv2d(dim_inner, dim_out, 1, bias=False)
        self.bn_c = nn.BatchNorm2d(dim_out)
        self.shortcut: nn.Module = nn.Identity()
        self.shortcut_bn: nn.Module = nn.Identity()
        if dim_in != dim_out or stride != 1:
            self.shortcut = nn.Conv2d(dim_in, dim_out, 1, stride=stride, bias=False)
            self.shortcut_bn = nn.BatchNorm2d(dim_out)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act_a(self.bn_a(self.conv_a(x)))
        if self.separable:
            y_t = self.act_b(self.bn_b_t(self.conv_b_t(y)))  # 3x1: along time
            y = y_t + self.act_b(self.bn_b_f(self.conv_b_f(y)))  # + 1x3: along frequency
        else:
            y = self.act_b(self.bn_b(self.conv_b(y)))
        y = self.bn_c(self.conv_c(y))
        return self.act(self.shortcut_bn(self.shortcut(x)) + y)


class _AudioPathway(nn.Module):
    """conv1 and res2..res5 of the audio pathway on (B, 1, time, frequency)."""

    def __init__(self, cfg: AVSlowFastConfig) -> None:
        super().__init__()
        stem_dim, inner, out = cfg.audio_widths()
        self.stem = _AudioStem(stem_dim)
        dims_in = (stem_dim, *out[:3])
        self.stages = nn.ModuleList(
            nn.Sequential(
                *(
                    _AudioBottleneck(
                        dims_in[i] if b == 0 else out[i],
                        inner[i],
                        out[i],
                        stride=_STAGE_STRIDES[i] if b == 0 else 1,
                        separable=i < cfg.separable_stages,
                    )
                    for b in range(depth)
                )
            )
            for i, depth in enumerate(cfg.visual.depths)
        )


class _AudioToVisual(nn.Module):
    """Audio features averaged over frequency, then two temporal convs (the second strided
    to the visual frame rate and widened to the visual width), each with BN and ReLU
    (reference `FuseAV` conv_a2fs_0/1)."""

    def __init__(self, dim_audio: int, dim_out: int, stride: int, cfg: AVSlowFastConfig):
        super().__init__()
        k = cfg.audio_fusion_kernel
        dim_inner = max(1, int(dim_audio * cfg.audio_fusion_ratio))
        self.conv_0 = nn.Conv1d(dim_audio, dim_inner, k, padding=k // 2, bias=False)
        self.bn_0 = nn.BatchNorm1d(dim_inner)
        self.conv_1 = nn.Conv1d(dim_inner, dim_out, k, stride=stride, padding=k // 2, bias=False)
        self.bn_1 = nn.BatchNorm1d(dim_out)
        self.act = nn.ReLU(inplace=True)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = audio.mean(dim=3)  # (B, Ca, Ta, Fa) -> (B, Ca, Ta)
        x = self.act(self.bn_0(self.conv_0(x)))
        x = self.act(self.bn_1(self.conv_1(x)))  # (B, Ca/8, Ta) -> (B, C, Ta / stride)
        return x[..., None, None]  # (B, C, T) -> (B, C, T, 1, 1), broadcast over H, W


class _AVNonLocal(nn.Module):
    """Visual positions attend to audio positions (embedded-Gaussian non-local, Wang et al.
    arXiv:1711.07971, with audio keys and values): query from the slow features, key and
    value from the audio features max-pooled 2x2 (PySlowFast NONLOCAL.POOL), output conv
    and BatchNorm with zero-initialised scale so that the block starts as the identity."""

    def __init__(self, dim_visual: int, dim_audio: int) -> None:
        super().__init__()
        dim_inner = dim_visual // 2  # PySlowFast Nonlocal: dim_inner = dim // 2
        self.query = nn.Conv3d(dim_visual, dim_inner, 1)
        self.pool = nn.MaxPool2d(2)
        self.key = nn.Conv2d(dim_audio, dim_inner, 1)
        self.value = nn.Conv2d(dim_audio, dim_inner, 1)
        self.out = nn.Conv3d(dim_inner, dim_visual, 1)
        self.bn = nn.BatchNorm3d(dim_visual)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        q = self.query(visual).flatten(2).transpose(1, 2)  # (B, C, T, H, W) -> (B, THW, Ci)
        a = self.pool(audio)  # (B, Ca, Ta, Fa) -> (B, Ca, Ta/2, Fa/2)
        k = self.key(a).flatten(2).transpose(1, 2)  # -> (B, Ta*Fa/4, Ci)
        v = self.value(a).flatten(2).transpose(1, 2)  # -> (B, Ta*Fa/4, Ci)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, THW, Ci), softmax(q k^T / sqrt(Ci)) v
        y = y.transpose(1, 2).unflatten(2, visual.shape[2:])  # -> (B, Ci, T, H, W)
        return self.bn(self.out(y))  # (B, C, T, H, W), added to `visual` by the caller


class _AudioFusion(nn.Module):
    """Audio into the visual pathways at one junction; which parts exist says the mode:
    `to_fast` (a_f_s), `to_slow` (a_fs, av_nonlocal), `attn` (av_nonlocal)."""

    def __init__(
        self, mode: str, dim_audio: int, dim_fast: int, dim_slow_fused: int,
        time_audio: int, cfg: AVSlowFastConfig,
    ) -> None:  # fmt: skip
        super().__init__()
        self.to_fast: _AudioToVisual | None = None
        self.to_slow: _AudioToVisual | None = None
        self.attn: _AVNonLocal | None = None
        if mode == "a_f_s":
            stride = time_audio // cfg.visual.fast_frames
            self.to_fast = _AudioToVisual(dim_audio, dim_fast, stride, cfg)
        else:
            stride = time_audio // cfg.visual.slow_frames
            self.to_slow = _AudioToVisual(dim_audio, dim_slow_fused, stride, cfg)
        if mode == "av_nonlocal":
            self.attn = _AVNonLocal(dim_slow_fused, dim_audio)


class _SyncHead(nn.Module):
    """Linear projections of pooled visual and audio features into one embedding space
    (reference `AVS`: ref_fc / query_fc, AVS_PROJ_DIM)."""

    def __init__(self, dim_visual: int, dim_audio: int, dim: int) -> None:
        super().__init__()
        self.visual = nn.Linear(dim_visual, dim)
        self.audio = nn.Linear(dim_audio, dim)


# -- models ----------------------------------------------------------------------------


def _init_weights(model: nn.Module) -> None:
    # As PySlowFast's init_helper (less its zero-init of the last BN of each block): MSRA
    # fill for convolutions, N(0, 0.01) for linear layers.
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _AVNonLocal):
            nn.init.zeros_(m.bn.weight)


def _check_video(name: str, slow: torch.Tensor, fast: torch.Tensor, alpha: int) -> None:
    """Shape checks only (static under export)."""
    expects = (
        f"{name} expects slow (B, 3, T, H, W) and fast (B, 3, {alpha}*T, H, W) clips, got "
        f"{tuple(slow.shape)} and {tuple(fast.shape)}"
    )
    if slow.dim() != 5 or fast.dim() != 5 or slow.shape[1] != 3 or fast.shape[1] != 3:
        raise ValueError(expects)
    if (
        fast.shape[0] != slow.shape[0]
        or fast.shape[2] != alpha * slow.shape[2]
        or fast.shape[3:] != slow.shape[3:]
    ):
        raise ValueError(expects)


class SlowFast(nn.Module):
    """SlowFast network; forward(slow, fast) -> logits; `meta` describes inputs and labels."""

    def __init__(self, cfg: SlowFastConfig, meta: ModelMeta) -> None:
        super().__init__()
        self.cfg = cfg
        self.meta = meta
        self.weights_id: str | None = None
        stem_s, _, out_s = cfg.widths()
        stem_f, _, out_f = cfg.widths(cfg.beta_inv)
        lateral = cfg.fusion_channel_ratio
        # The slow stage input carries the fast->slow lateral of the junction before it.
        self.slow = _VisualPathway(
            cfg,
            1,
            _SLOW_TEMPORAL_KERNELS,
            tuple(s + f * lateral for s, f in zip((stem_s, *out_s[:3]), (stem_f, *out_f[:3]))),
        )
        self.fast = _VisualPathway(cfg, cfg.beta_inv, _FAST_TEMPORAL_KERNELS, (stem_f, *out_f[:3]))
        # Junctions 1..4: after conv1 and after res2..res4 (PySlowFast s1_fuse..s4_fuse).
        self.fuse = nn.ModuleList(_FastToSlow(f, cfg) for f in (stem_f, *out_f[:3]))
        self.head = _Head(out_s[3] + out_f[3], cfg.num_classes, cfg.dropout)
        _init_weights(self)

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """One test-size clip per batch item: (slow (B, 3, T, crop, crop), fast (B, 3,
        alpha*T, crop, crop)), slow taken from fast as the reference samplers do."""
        return _example_video(self.cfg, self.meta.crop, batch)

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        """slow (B, 3, T, H, W), fast (B, 3, alpha*T, H, W), normalised RGB -> (B, K) logits."""
        _check_video(f"SlowFast {self.meta.name}", slow, fast, self.cfg.alpha)
        s, f = self.slow.stem(slow), self.fast.stem(fast)
        s = self.fuse[0](s, f)
        for i in range(4):
            s, f = self.slow.stages[i](s), self.fast.stages[i](f)
            if i < 3:
                s = self.fuse[i + 1](s, f)
        return self.head(s, f)


def _example_video(cfg: SlowFastConfig, crop: int, batch: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    fast = torch.randn(
        (batch, 3, cfg.fast_frames, crop, crop), generator=generator, dtype=torch.float32
    )
    # pytorchvideo / PySlowFast PackPathway: slow = fast[linspace(0, aT - 1, T)].
    index = torch.linspace(0, cfg.fast_frames - 1, cfg.slow_frames).long()
    return fast[:, :, index].contiguous(), fast


class AVSlowFast(SlowFast):
    """Audiovisual SlowFast; forward(slow, fast, audio) -> logits.

    `drop_pathway` (float, settable at run time) is the probability of dropping the audio
    pathway's contribution in a training step; eval mode always uses the audio.
    """

    def __init__(self, cfg: AVSlowFastConfig, meta: ModelMeta) -> None:
        vcfg = cfg.visual
        super().__init__(vcfg, meta)
        self.cfg = cfg  # type: ignore[assignment]  (the visual part is cfg.visual)
        self.drop_pathway = float(cfg.drop_pathway)
        stem_s, _, out_s = vcfg.widths()
        stem_f, _, out_f = vcfg.widths(vcfg.beta_inv)
        stem_a, _, out_a = cfg.audio_widths()
        lateral = vcfg.fusion_channel_ratio
        # Widths at junctions 1..4 (index 0..3).
        dims_s, dims_f, dims_a = (stem_s, *out_s[:3]), (stem_f, *out_f[:3]), (stem_a, *out_a[:3])
        self.audio = _AudioPathway(cfg)
        self.audio_fuse = nn.ModuleDict(
            {
                str(j): _AudioFusion(
                    cfg.fusion,
                    dims_a[j - 1],
                    dims_f[j - 1],
                    dims_s[j - 1] + dims_f[j - 1] * lateral,
                    cfg.audio_time(j),
                    cfg,
                )
                for j in cfg.fusion_stages
            }
        )
        j = cfg.fusion_stages[0]
        self.sync = _SyncHead(dims_s[j - 1] + dims_f[j - 1], dims_a[j - 1], cfg.sync_dim)
        self.head = _Head(out_s[3] + out_f[3], vcfg.num_classes, vcfg.dropout, out_a[3])
        for module in (self.audio, self.audio_fuse, self.sync, self.head):
            _init_weights(module)

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """(slow, fast, audio (B, 1, audio frames, mel bins)) for one window per item."""
        slow, fast = _example_video(self.cfg.visual, self.meta.crop, batch)
        generator = torch.Generator().manual_seed(1)
        shape = (batch, 1, self.cfg.audio_frames, self.cfg.n_mels)
        return slow, fast, torch.randn(shape, generator=generator, dtype=torch.float32)

    def _check(self, slow: torch.Tensor, fast: torch.Tensor, audio: torch.Tensor) -> None:
        cfg = self.cfg
        name = f"AVSlowFast {self.meta.name}"
        _check_video(name, slow, fast, cfg.visual.alpha)
        # The audio fusions are strided for these frame counts (static under export).
        want = (cfg.visual.slow_frames, 1, cfg.audio_frames, cfg.n_mels)
        if (
            slow.shape[2] != want[0]
            or audio.dim() != 4
            or audio.shape[0] != slow.shape[0]
            or tuple(audio.shape[1:]) != want[1:]
        ):
            raise ValueError(
                f"{name} expects {want[0]} slow frames and audio (B, {want[1]}, {want[2]}, "
                f"{want[3]}) (log-mel frames x mel bins), got slow {tuple(slow.shape)} and "
                f"audio {tuple(audio.shape)}"
            )

    def _keep(self, audio: torch.Tensor) -> torch.Tensor | None:
        """DropPathway draw: None in eval; in training a 0/1 scalar, 0 with probability p."""
        if not self.training:
            return None
        draw = torch.rand((), device=audio.device)
        return (draw >= self.drop_pathway).to(audio.dtype)

    def _trunk(
        self,
        slow: torch.Tensor,
        fast: torch.Tensor,
        audio: torch.Tensor,
        keep: torch.Tensor | None,
        stop_at: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three pathways with their fusions; stops on reaching junction `stop_at`
        (before anything is fused there) when it is given."""
        s, f, a = self.slow.stem(slow), self.fast.stem(fast), self.audio.stem(audio)
        return self._pathways(s, f, a, keep, start=1, stop_at=stop_at)

    def _pathways(
        self,
        s: torch.Tensor,
        f: torch.Tensor,
        a: torch.Tensor,
        keep: torch.Tensor | None,
        start: int,
        stop_at: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """From junction `start`, where `s, f, a` arrive and nothing is fused yet, to the
        end of the pathways, or to junction `stop_at` before anything is fused there."""
        for j in range(start, 5):  # junction j: after conv1 (1) or after res{j} (2..4)
            if j > start:
                i = j - 2
                s, f, a = self.slow.stages[i](s), self.fast.stages[i](f), self.audio.stages[i](a)
            if j == stop_at:
                return s, f, a
            # (nn.ModuleDict has no get; the membership test is static under export.)
            fusion = self.audio_fuse[str(j)] if str(j) in self.audio_fuse else None  # noqa: SIM401
            if fusion is not None and fusion.to_fast is not None:  # A->F->S
                f = f + _gate(fusion.to_fast(a), keep)  # + (B, Cf, aT, 1, 1)
            s = self.fuse[j - 1](s, f)
            if fusion is not None and fusion.to_slow is not None:  # A->FS
                s = s + _gate(fusion.to_slow(a), keep)  # + (B, Cs + 2Cf, T, 1, 1)
            if fusion is not None and fusion.attn is not None:  # audiovisual non-local
                s = s + _gate(fusion.attn(s, a), keep)
        s, f, a = self.slow.stages[3](s), self.fast.stages[3](f), self.audio.stages[3](a)
        return s, f, a

    def forward(  # type: ignore[override]
        self, slow: torch.Tensor, fast: torch.Tensor, audio: torch.Tensor
    ) -> torch.Tensor:
        """slow (B, 3, T, H, W), fast (B, 3, alpha*T, H, W), audio (B, 1, Ta, mels) -> (B, K)."""
        self._check(slow, fast, audio)
        keep = self._keep(audio)
        s, f, a = self._trunk(slow, fast, audio, keep)
        return self.head(s, f, a, keep)

    def sync_embeddings(
        self, slow: torch.Tensor, fast: torch.Tensor, audio: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(visual, audio) embeddings, each (B, sync_dim) with unit L2 norm, for an
        audio-visual synchronisation loss (the paper's AVS).

        Taken at the first fusion junction, before audio enters the visual pathways (the
        reference computes its AVS loss only there and earlier, where telling in-sync from
        shifted audio is not trivial): visual = pooled [slow, fast], audio = pooled audio.
        Not used by `forward`; pair each clip with in-sync and shifted audio in training.
        """
        self._check(slow, fast, audio)
        s, f, a = self._trunk(slow, fast, audio, None, stop_at=self.cfg.fusion_stages[0])
        return self._embed_visual(s, f), self._embed_audio(a)

    def forward_with_sync(
        self, slow: torch.Tensor, fast: torch.Tensor, audio: torch.Tensor, audio_neg: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward` and `sync_embeddings` in one pass, for training with the sync loss:
        (logits (B, K), visual, in-sync audio and negative audio embeddings, each
        (B, sync_dim)), `audio_neg` being shifted or other clips' audio shaped like `audio`.

        The visual pathways up to the first fusion junction do not depend on the audio, so
        they run once, where `forward` then `sync_embeddings` on [audio; audio_neg] ran
        them three times over. The audio pathway below the junction (the small one) still
        runs twice, so that in training BatchNorm sees the batches it saw before: the
        in-sync audio alone on the classifier's path, as in `forward`, and [audio;
        audio_neg] together for the embeddings, as in `sync_embeddings`. (One joint pass
        for both lowered the held-out accuracy of the training tests' tiny task from 0.97
        to 0.87, in one run.)"""
        self._check(slow, fast, audio)
        self._check(slow, fast, audio_neg)
        keep = self._keep(audio)
        j, b = self.cfg.fusion_stages[0], audio.shape[0]
        stems = self.slow.stem(slow), self.fast.stem(fast), self.audio.stem(audio)
        s, f, a = self._pathways(*stems, keep, start=1, stop_at=j)
        pair = self.audio.stem(torch.cat([audio, audio_neg]))
        for i in range(j - 1):  # the audio stages below junction j, as _pathways runs them
            pair = self.audio.stages[i](pair)
        visual, sounds = self._embed_visual(s, f), self._embed_audio(pair)
        s, f, a = self._pathways(s, f, a, keep, start=j)
        return self.head(s, f, a, keep), visual, sounds[:b], sounds[b:]

    def _embed_visual(self, s: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        # (B, Cs, T, H, W), (B, Cf, aT, H, W) -> (B, Cs + Cf) -> unit (B, sync_dim)
        visual = torch.cat([s.mean(dim=(2, 3, 4)), f.mean(dim=(2, 3, 4))], dim=1)
        return F.normalize(self.sync.visual(visual), dim=1)

    def _embed_audio(self, a: torch.Tensor) -> torch.Tensor:
        # (B, Ca, Ta, Fa) -> (B, Ca) -> unit (B, sync_dim)
        return F.normalize(self.sync.audio(a.mean(dim=(2, 3))), dim=1)


# -- checkpoint layouts ----------------------------------------------------------------
# Each rule maps a module path of an official layout to ours; parameter and buffer names
# (weight, bias, running_mean, ...) carry over unchanged. Pathway 0 is slow, 1 is fast.

_PATHWAYS = ("slow", "fast")
_BLOCK_PTV = {
    "branch1_conv": "shortcut",
    "branch1_norm": "shortcut_bn",
    "branch2.conv_a": "conv_a",
    "branch2.norm_a": "bn_a",
    "branch2.conv_b": "conv_b",
    "branch2.norm_b": "bn_b",
    "branch2.conv_c": "conv_c",
    "branch2.norm_c": "bn_c",
}
_BLOCK_PSF = {
    "branch1": "shortcut",
    "branch1_bn": "shortcut_bn",
    "branch2.a": "conv_a",
    "branch2.a_bn": "bn_a",
    "branch2.b": "conv_b",
    "branch2.b_bn": "bn_b",
    "branch2.c": "conv_c",
    "branch2.c_bn": "bn_c",
}

# pytorchvideo `create_slowfast`: blocks.0 stems + first fusion, blocks.1-4 stages with
# the fusion after them (blocks.4's is an Identity), blocks.5 pool/concat, blocks.6 head.
_PTV_STEM = re.compile(r"blocks\.0\.multipathway_blocks\.([01])\.(conv|norm)")
_PTV_FUSE = re.compile(r"blocks\.([0-3])\.multipathway_fusion\.(conv_fast_to_slow|norm)")
_PTV_STAGE = re.compile(r"blocks\.([1-4])\.multipathway_blocks\.([01])\.res_blocks\.(\d+)\.(.+)")
# PySlowFast SlowFast: s1 VideoModelStem, s1_fuse..s4_fuse FuseFastToSlow, s2-s5 ResStage
# of ResBlock with BottleneckTransform as branch2, head ResNetBasicHead.
_PSF_STEM = re.compile(r"s1\.pathway([01])_stem\.(conv|bn)")
_PSF_FUSE = re.compile(r"s([1-4])_fuse\.(conv_f2s|bn)")
_PSF_STAGE = re.compile(r"s([2-5])\.pathway([01])_res(\d+)\.(.+)")


def _module_ptv(module: str) -> str | None:
    if m := _PTV_STEM.fullmatch(module):
        return f"{_PATHWAYS[int(m[1])]}.stem.{'conv' if m[2] == 'conv' else 'bn'}"
    if m := _PTV_FUSE.fullmatch(module):
        return f"fuse.{m[1]}.{'conv' if m[2] == 'conv_fast_to_slow' else 'bn'}"
    if (m := _PTV_STAGE.fullmatch(module)) and m[4] in _BLOCK_PTV:
        return f"{_PATHWAYS[int(m[2])]}.stages.{int(m[1]) - 1}.{m[3]}.{_BLOCK_PTV[m[4]]}"
    if module == "blocks.6.proj":
        return "head.proj"
    return None


def _module_psf(module: str) -> str | None:
    if m := _PSF_STEM.fullmatch(module):
        return f"{_PATHWAYS[int(m[1])]}.stem.{m[2]}"
    if m := _PSF_FUSE.fullmatch(module):
        return f"fuse.{int(m[1]) - 1}.{'conv' if m[2] == 'conv_f2s' else 'bn'}"
    if (m := _PSF_STAGE.fullmatch(module)) and m[4] in _BLOCK_PSF:
        return f"{_PATHWAYS[int(m[2])]}.stages.{int(m[1]) - 2}.{m[3]}.{_BLOCK_PSF[m[4]]}"
    if module == "head.projection":
        return "head.proj"
    return None


_CONV_WEIGHT = re.compile(
    r"((slow|fast)\.(stem\.conv|stages\.\d+\.\d+\.(conv_[abc]|shortcut))|fuse\.\d+\.conv)\.weight"
)


def _remap(state_dict: dict[str, torch.Tensor], rename, layout: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        new_module = rename(module)
        # Unknown keys pass through unchanged so that the strict load reports them.
        new_key = f"{new_module}.{param}" if new_module is not None else key
        if new_key in out:
            raise ValueError(f"{layout} keys {origin[new_key]} and {key} both map to {new_key}")
        out[new_key] = value
        origin[new_key] = key
    _check_shapes(out, origin, layout)
    return out


def _check_shapes(state: dict[str, torch.Tensor], origin: dict[str, str], layout: str) -> None:
    """Catch a layout mix-up early: visual convolutions are 5-D, the classifier 2-D, and
    pathway 0 is the slow one (wider, temporal kernel 1 in conv1)."""
    for key, value in state.items():
        want = 5 if _CONV_WEIGHT.fullmatch(key) else 2 if key == "head.proj.weight" else None
        if want is not None and value.dim() != want:
            raise ValueError(
                f"{layout} key {origin[key]} has shape {list(value.shape)}, "
                f"expected a {want}-D weight"
            )
    slow, fast = state.get("slow.stem.conv.weight"), state.get("fast.stem.conv.weight")
    if slow is not None and fast is not None and slow.shape[0] <= fast.shape[0]:
        raise ValueError(
            f"{layout} keys {origin['slow.stem.conv.weight']} ({slow.shape[0]} channels) and "
            f"{origin['fast.stem.conv.weight']} ({fast.shape[0]} channels): pathway 0 must be "
            f"the slow (wider) pathway"
        )


def remap_pytorchvideo(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pytorchvideo `create_slowfast` state dict (its Kinetics zoo files) -> ours."""
    return _remap(state_dict, _module_ptv, "pytorchvideo")


def remap_pyslowfast(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PySlowFast SlowFast state dict (its own zoo checkpoints) -> ours."""
    return _remap(state_dict, _module_psf, "PySlowFast")


def _to_our_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = list(state_dict)
    if any(k.startswith("blocks.0.multipathway_blocks.") for k in keys):
        return remap_pytorchvideo(state_dict)
    if any(k.startswith(("s1.pathway0_stem.", "s1_fuse.")) for k in keys):
        return remap_pyslowfast(state_dict)
    if any(k.startswith(("slow.", "fast.")) for k in keys):
        return dict(state_dict)
    shown = ", ".join(keys[:3])
    raise ValueError(
        f"not a SlowFast checkpoint in a known layout (pytorchvideo "
        f"blocks.0.multipathway_blocks.*, PySlowFast s1.pathway0_stem.*, or ours); "
        f"its first keys are {shown}"
    )


def _num_classes(state: dict[str, torch.Tensor]) -> dict:
    proj = state.get("head.proj.weight")
    return {"num_classes": int(proj.shape[0])} if proj is not None and proj.dim() == 2 else {}


def adapt_slowfast(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """SlowFast checkpoint in any supported layout -> (our state dict, build options)."""
    state = _to_our_layout(state_dict)
    return state, _num_classes(state)


# What AVSlowFast adds to SlowFast: the tensors a visual-only checkpoint cannot hold.
AUDIO_PREFIXES = ("audio.", "audio_fuse.", "sync.", "head.audio_proj.")
_AUDIO_FUSE_KEY = re.compile(r"audio_fuse\.(\d+)\.(to_fast|to_slow|attn)\.")


def adapt_avslowfast(
    state_dict: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict]:
    """AVSlowFast or SlowFast checkpoint -> (our state dict, build options).

    A visual-only checkpoint (SlowFast in any layout: no key under AUDIO_PREFIXES) loads
    every visual and classifier tensor and leaves the audio pathway, fusions, sync head and
    audio classifier newly initialised (`fresh_prefixes`; `models.create` warns). An
    AVSlowFast checkpoint in our layout loads strictly; its fusion mode and junctions are
    read from its keys.
    """
    state = _to_our_layout(state_dict)
    options = _num_classes(state)
    if not any(k.startswith(AUDIO_PREFIXES) for k in state):
        options["fresh_prefixes"] = AUDIO_PREFIXES
        return state, options
    found = {(int(m[1]), m[2]) for k in state if (m := _AUDIO_FUSE_KEY.match(k))}
    if found:
        junctions = tuple(sorted({j for j, _ in found}))
        if not set(junctions) <= {1, 2, 3, 4}:
            raise ValueError(f"its audio fusions sit at junctions {junctions}, not within 1..4")
        parts = {part for _, part in found}
        fusion = "av_nonlocal" if "attn" in parts else "a_f_s" if "to_fast" in parts else "a_fs"
        options.update(fusion=fusion, fusion_stages=junctions)
    return state, options


# -- the zoo ---------------------------------------------------------------------------
# pytorchvideo `models/hub/slowfast.py` slowfast_r50 and PySlowFast
# configs/Kinetics/SLOWFAST_8x8_R50.yaml: 8 slow / 32 fast frames, fast every 2 frames of
# 30 fps video, alpha 4, beta 1/8, fusion kernel 7, test crop 256. AVSlowFast R50 (the
# paper's 8x8 Kinetics model): the same visual network plus AVSlowFastConfig's audio
# defaults.
_VARIANTS: dict[str, SlowFastConfig] = {
    "slowfast_r50": SlowFastConfig(),
    "avslowfast_r50": SlowFastConfig(),
}


def _meta(name: str, cfg: SlowFastConfig, audio: AudioInput | None = None) -> ModelMeta:
    return ModelMeta(
        name=name,
        # In forward's order. The slow frames span the fast frames' window:
        # slow = fast[linspace(0, 31, 8)] in the references, i.e. 8 frames 31*(2/30)/7 s
        # apart; the stream's sampler takes, per pathway, the captured frame nearest to
        # each target time.
        video=(
            VideoInput(frames=cfg.slow_frames, interval_s=cfg.slow_interval_s),
            VideoInput(frames=cfg.fast_frames, interval_s=cfg.fast_interval_s),
        ),
        crop=cfg.crop,
        short_side=cfg.short_side,
        mean=_MEAN,
        std=_STD,
        labels=class_labels(cfg.num_classes),
        audio=audio,
    )


def _config(name: str, num_classes: int = 400, **visual) -> SlowFastConfig:
    return dataclasses.replace(_VARIANTS[name], num_classes=num_classes, **visual)


def build_slowfast(cfg: SlowFastConfig, name: str = "slowfast") -> SlowFast:
    """A SlowFast of any config (tests, experiments); the zoo uses the registered builders."""
    return SlowFast(cfg, _meta(name, cfg))


def build_avslowfast(cfg: AVSlowFastConfig, name: str = "avslowfast") -> AVSlowFast:
    """An AVSlowFast of any config; `meta.audio` carries the config's frames and mel bins
    on the AVSlowFast paper's front end (models.AudioInput)."""
    audio = AudioInput(frames=cfg.audio_frames, n_mels=cfg.n_mels)
    return AVSlowFast(cfg, _meta(name, cfg.visual, audio))


# What `models.create(name, **options)` may change: SlowFastConfig's and AVSlowFastConfig's
# fields of the same names. A reduced network (width, depths...) is for fine-tuning on a CPU
# and for tests; AVSlowFast's `fusion` picks among the paper's fusion variants (FUSIONS).
SLOWFAST_OPTIONS = {
    "width": Option(int),
    "depths": Option(tuple),
    "slow_frames": Option(int),
    "alpha": Option(int),
    "beta_inv": Option(int),
    "fusion_kernel": Option(int),
    "crop": Option(int),
    "short_side": Option(int),
}
AVSLOWFAST_OPTIONS = {
    **SLOWFAST_OPTIONS,
    "fusion": Option(str, FUSIONS),
    "fusion_stages": Option(tuple),
    "audio_frames": Option(int),
    "n_mels": Option(int),
    "drop_pathway": Option(float),
    "sync_dim": Option(int),
}


@register(
    "slowfast_r50",
    adapt=adapt_slowfast,
    zoo_file="SLOWFAST_8x8_R50.pyth",
    options=SLOWFAST_OPTIONS,
)
def slowfast_r50(num_classes: int = 400, **visual) -> SlowFast:
    return build_slowfast(_config("slowfast_r50", num_classes, **visual), "slowfast_r50")


# "kinetics400" is the SlowFast-R50 zoo file: the visual pathways and classifier start from
# it, the audio parts from scratch (no official AVSlowFast checkpoint exists).
@register(
    "avslowfast_r50",
    adapt=adapt_avslowfast,
    zoo_file="SLOWFAST_8x8_R50.pyth",
    zoo_partial=True,  # SlowFast's checkpoint: the audio pathway and fusion are left as initialised
    classifier=("head.proj.", "head.audio_proj."),
    options=AVSLOWFAST_OPTIONS,
)
def avslowfast_r50(
    num_classes: int = 400,
    fusion: str = "a_fs",
    fusion_stages: tuple[int, ...] = (3, 4),
    drop_pathway: float = 0.8,
    audio_frames: int = 128,
    n_mels: int = 80,
    sync_dim: int = 64,
    **visual,
) -> AVSlowFast:
    cfg = AVSlowFastConfig(
        visual=_config("avslowfast_r50", num_classes, **visual),
        fusion=fusion,
        fusion_stages=tuple(fusion_stages),
        audio_frames=audio_frames,
        n_mels=n_mels,
        drop_pathway=drop_pathway,
        sync_dim=sync_dim,
    )
    return build_avslowfast(cfg, "avslowfast_r50")
