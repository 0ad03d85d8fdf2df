"""The model registry: metadata types, exceptions, and `create` / `available`.

Each family module (`models/x3d.py`, ...) registers its variants with `register`;
`models/__init__.py` imports the family modules so that the registry is complete once
`models` is imported. Registering a name twice raises (torchvision's `models/_api.py`
does the same; timm only warns).
"""

from __future__ import annotations

import functools
import importlib.resources
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import os

    import torch
    from torch import nn

#: The class count of the zoo checkpoints (Kinetics-400).
KINETICS400_CLASSES = 400


@dataclass(frozen=True)
class VideoInput:
    """One video pathway of a model's input."""

    frames: int  # frames per window
    interval_s: float  # seconds between sampled frames (X3D-XS: 12/30)

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s}")


@dataclass(frozen=True)
class AudioInput:
    """The audio pathway's input: a log-mel spectrogram window, (B, 1, frames, n_mels).

    Defaults are the Audiovisual SlowFast paper's front end (arXiv:2001.08740, Sec. 4):
    16 kHz mono, 32 ms Hann window, 16 ms hop, 80 mel bins, 128 frames (2.048 s),
    natural log with a small epsilon, normalised with the reference's mean and std.
    """

    sample_rate: int = 16_000
    n_fft: int = 512  # 32 ms at 16 kHz; also the window length
    hop_length: int = 256  # 16 ms
    n_mels: int = 80
    frames: int = 128  # spectrogram frames per window
    log_eps: float = 1e-6
    mean: float = -7.03
    std: float = 4.66

    @property
    def span_s(self) -> float:
        """Seconds of audio one window needs (its frames' hops plus one FFT window)."""
        return ((self.frames - 1) * self.hop_length + self.n_fft) / self.sample_rate


@dataclass(frozen=True)
class ModelMeta:
    """Everything `stream`, `engines` and tests need to feed a model and read its output."""

    name: str
    video: tuple[VideoInput, ...]  # one entry per video pathway
    crop: int  # test-time centre crop (square)
    short_side: int  # test-time short-side resize
    mean: tuple[float, float, float]  # RGB in [0, 1]
    std: tuple[float, float, float]
    labels: tuple[str, ...] = field(repr=False)  # class names in index order
    audio: AudioInput | None = None  # None for video-only models

    def __post_init__(self) -> None:
        if not self.video:
            raise ValueError(f"{self.name}: a model needs at least one video pathway")
        if self.crop > self.short_side:
            raise ValueError(f"{self.name}: crop {self.crop} exceeds short side {self.short_side}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"{self.name}: mean and std need three (RGB) values")

    @property
    def span_s(self) -> float:
        """Seconds from the first to the last sampled frame of one window."""
        return max((v.frames - 1) * v.interval_s for v in self.video)


class ModelError(Exception):
    """Base class of every error raised by `models`; the message is one line for the user."""


class UnknownModelError(ModelError):
    """`create` was given a name that is not registered."""


class WeightsError(ModelError):
    """Weights that cannot be found, downloaded, read or loaded into the model.

    For a checkpoint that does not fit the model, `missing` lists the model's keys the
    checkpoint lacks, `unexpected` the checkpoint's keys the model lacks, and `mismatched`
    holds `(key, checkpoint_shape, model_shape)` triples (keys in the model's layout).
    """

    def __init__(
        self,
        message: str,
        *,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] | None = None,
    ) -> None:
        super().__init__(message)
        self.missing = list(missing or [])
        self.unexpected = list(unexpected or [])
        self.mismatched = list(mismatched or [])


@dataclass(frozen=True)
class _Entry:
    name: str
    # (num_classes, **options) -> model in train mode with `.meta` set.
    build: Callable[..., nn.Module]
    # checkpoint state dict -> (state dict in the model's layout, build options); options
    # may hold `num_classes` read from the checkpoint's head, and `fresh_prefixes`: key
    # prefixes of the model that this checkpoint may lack because it holds only part of
    # the network (SlowFast weights for AVSlowFast's visual pathways); `create` leaves
    # those tensors as initialised and warns. Raises ValueError.
    adapt: Callable[[dict[str, torch.Tensor]], tuple[dict[str, torch.Tensor], dict[str, Any]]]
    # File name of the official Kinetics-400 checkpoint under the zoo base URL.
    zoo_file: str | None


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, *, adapt: Callable, zoo_file: str | None = None) -> Callable:
    """Decorator: register `build(num_classes, **options)` under `name`; duplicates raise."""

    def decorator(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = _Entry(name=name, build=build, adapt=adapt, zoo_file=zoo_file)
        return build

    return decorator


def available() -> list[str]:
    """Names accepted by `create`, sorted."""
    return sorted(_REGISTRY)


@functools.cache
def _kinetics400_labels() -> tuple[str, ...]:
    text = importlib.resources.files("models").joinpath("labels/kinetics400.txt").read_text()
    labels = tuple(line for line in text.splitlines() if line)
    if len(labels) != KINETICS400_CLASSES:
        raise RuntimeError(f"models/labels/kinetics400.txt has {len(labels)} names, not 400")
    return labels


def class_labels(num_classes: int) -> tuple[str, ...]:
    """Kinetics-400 names for 400 classes, else `class_0 .. class_{n-1}`."""
    if num_classes == KINETICS400_CLASSES:
        return _kinetics400_labels()
    return tuple(f"class_{i}" for i in range(num_classes))


def create(
    name: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """Build model `name` in eval mode.

    weights: None (random init), a local checkpoint path, an http(s) URL, or "kinetics400"
    (the official zoo checkpoint of the variant; base URL overridable with
    AVSTREAM_WEIGHTS_BASE_URL). Downloads are cached under $AVSTREAM_CACHE/weights.
    num_classes: size of the classifier; with weights it must match the checkpoint.

    The model carries `meta` (ModelMeta), `example_inputs(batch)` and `weights_id`
    (sha256 prefix of the checkpoint file, None for random init).
    """
    entry = _REGISTRY.get(name)
    if entry is None:
        raise UnknownModelError(f"unknown model {name!r}: choose one of {', '.join(available())}")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")

    if weights is None:
        model = entry.build(num_classes=num_classes or KINETICS400_CLASSES)
        model.weights_id = None
        return model.eval()

    # Imported here: urllib and hashlib are only needed when weights are asked for.
    from models import _weights

    path, source = _weights.resolve(weights, model=name, zoo_file=entry.zoo_file)
    state, weights_id = _weights.read_state_dict(path, source)
    try:
        state, options = entry.adapt(state)
    except ValueError as exc:
        raise WeightsError(f"cannot use weights {source} for {name}: {exc}") from None
    ckpt_classes = options.pop("num_classes", None)
    fresh_prefixes = tuple(options.pop("fresh_prefixes", ()))
    if num_classes is not None and ckpt_classes is not None and num_classes != ckpt_classes:
        raise WeightsError(
            f"weights {source} have a {ckpt_classes}-class head but num_classes={num_classes} "
            f"was asked for; replacing the head is not supported yet: leave num_classes unset "
            f"or pass a checkpoint with {num_classes} classes"
        )
    model = entry.build(num_classes=ckpt_classes or num_classes or KINETICS400_CLASSES, **options)
    fresh = _weights.load_strict(
        model, state, source=source, name=name, fresh_prefixes=fresh_prefixes
    )
    if fresh:
        # A partial checkpoint is a start for fine-tuning, not a usable model: say so loudly.
        warnings.warn(
            f"weights {source} initialise {name} only in part: {len(fresh)} tensors under "
            f"{', '.join(fresh_prefixes)} are newly initialised ({_weights._names(fresh)}); "
            f"train them before use",
            stacklevel=2,
        )
    model.weights_id = weights_id
    return model.eval()
