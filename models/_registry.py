"""The model registry: metadata types, exceptions, and `create` / `available`.

Each family module (`models/x3d.py`, ...) registers its variants with `register`;
`models/__init__.py` imports the family modules so that the registry is complete once
`models` is imported. Registering a name twice raises (torchvision's `models/_api.py`
does the same; timm only warns).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import warnings
from collections.abc import Callable, Mapping, Sequence
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
    # The zoo checkpoint holds only part of the model (another model's, a start for
    # fine-tuning): no published weights give this model usable predictions.
    zoo_partial: bool
    # Key prefixes of the classifier: the tensors whose size is the class count, newly
    # initialised when weights are loaded for another set of labels.
    classifier: tuple[str, ...]
    # Build options that `create(arch=...)` may override (a reduced-width network).
    arch: tuple[str, ...]


_REGISTRY: dict[str, _Entry] = {}


def register(
    name: str,
    *,
    adapt: Callable,
    zoo_file: str | None = None,
    zoo_partial: bool = False,
    classifier: tuple[str, ...] = ("head.proj.",),
    arch: tuple[str, ...] = (),
) -> Callable:
    """Decorator: register `build(num_classes, **options)` under `name`; duplicates raise."""

    def decorator(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = _Entry(
            name=name, build=build, adapt=adapt, zoo_file=zoo_file, zoo_partial=zoo_partial,
            classifier=classifier, arch=arch,
        )
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
    labels: Sequence[str] | None = None,
    arch: Mapping[str, Any] | None = None,
    seed: int | None = None,
) -> nn.Module:
    """Build model `name` in eval mode.

    weights: None (random init), a local checkpoint path, an http(s) URL, or "kinetics400"
    (the official zoo checkpoint of the variant; base URL overridable with
    AVSTREAM_WEIGHTS_BASE_URL). Downloads are cached under $AVSTREAM_CACHE/weights.
    num_classes: size of the classifier. When the weights' classifier has another size
    (Kinetics-400 weights fine-tuned for your own labels), the classifier is newly
    initialised and everything else loads, with a warning.
    labels: the class names (their count is the class count); default: the checkpoint's
    (`save_checkpoint` stores them), Kinetics-400's for 400 classes, else class_0...
    arch: architecture overrides for a reduced network (SlowFast / AVSlowFast width,
    depths, frames, crop...; `models.arch_options(name)` lists them). A checkpoint written
    by `save_checkpoint` carries its own, so `create(name, weights=path)` rebuilds it.
    seed: draw the random initialisation (all of it without weights, the new classifier
    with them) from this seed, leaving torch's global generator as it was; the same seed
    gives the same model, so an engine compiled for it is found in the cache next time.
    None: from torch's global generator.

    The model carries `meta` (ModelMeta), `example_inputs(batch)`, `weights_id` (sha256
    prefix of the checkpoint file, None for random init) and `arch` (the overrides).
    """
    if seed is not None:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return create(name, weights=weights, num_classes=num_classes, labels=labels, arch=arch)
    entry = _REGISTRY.get(name)
    if entry is None:
        raise UnknownModelError(f"unknown model {name!r}: choose one of {', '.join(available())}")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")
    if labels is not None:
        labels = _check_labels(labels)
        if num_classes is not None and num_classes != len(labels):
            raise ModelError(f"{len(labels)} labels were given for num_classes={num_classes}: give one name per class")
        num_classes = len(labels)
    arch = _check_arch(entry, dict(arch or {}), "arch")

    if weights is None:
        model = _build(entry, num_classes or KINETICS400_CLASSES, arch)
        model.weights_id = None
        if labels is not None:
            model.meta = dataclasses.replace(model.meta, labels=labels)
        return model.eval()

    # Imported here: urllib and hashlib are only needed when weights are asked for.
    from models import _weights

    path, source = _weights.resolve(weights, model=name, zoo_file=entry.zoo_file)
    state, weights_id, extras = _weights.read_checkpoint(path, source)
    try:
        state, options = entry.adapt(state)
    except ValueError as exc:
        raise WeightsError(f"cannot use weights {source} for {name}: {exc}") from None
    ckpt_classes = options.pop("num_classes", None)
    fresh_prefixes = tuple(options.pop("fresh_prefixes", ()))
    saved_arch = _check_arch(entry, extras.get("arch", {}), f"weights {source}: arch")
    for key in saved_arch.keys() & arch.keys():
        if _same(saved_arch[key], arch[key]):
            continue
        raise WeightsError(
            f"weights {source} were trained with {key}={saved_arch[key]!r} but arch asks for "
            f"{key}={arch[key]!r}: leave {key} out to use the checkpoint's"
        )
    options.update(saved_arch)
    options.update(arch)
    classes = num_classes or ckpt_classes or KINETICS400_CLASSES
    replaced = ckpt_classes is not None and classes != ckpt_classes
    if replaced:
        # Fine-tuning for other labels: the old classifier cannot be used; start it afresh.
        state = {k: v for k, v in state.items() if not k.startswith(entry.classifier)}
        fresh_prefixes += entry.classifier
    if labels is None and not replaced and len(extras.get("labels", ())) == classes:
        labels = tuple(extras["labels"])
    model = _build(entry, classes, options)
    fresh = _weights.load_strict(
        model, state, source=source, name=name, fresh_prefixes=fresh_prefixes
    )
    if replaced:
        warnings.warn(
            f"weights {source} have a {ckpt_classes}-class classifier: {name} gets a new "
            f"{classes}-class one (newly initialised; train it before use)",
            stacklevel=2,
        )
    fresh = [k for k in fresh if not k.startswith(entry.classifier)] if replaced else fresh
    if fresh:
        # A partial checkpoint is a start for fine-tuning, not a usable model: say so loudly.
        warnings.warn(
            f"weights {source} initialise {name} only in part: {len(fresh)} tensors under "
            f"{', '.join(p for p in fresh_prefixes if p not in entry.classifier)} are newly "
            f"initialised ({_weights._names(fresh)}); train them before use",
            stacklevel=2,
        )
    model.weights_id = weights_id
    if labels is not None:
        model.meta = dataclasses.replace(model.meta, labels=labels)
    return model.eval()


def has_zoo_weights(name: str) -> bool:
    """Whether a published checkpoint (`weights="kinetics400"`) gives the whole of model
    `name` trained weights: False when there is none, or when it covers only part of the
    model (AVSlowFast's visual pathways from SlowFast's)."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise UnknownModelError(f"unknown model {name!r}: choose one of {', '.join(available())}")
    return entry.zoo_file is not None and not entry.zoo_partial


def arch_options(name: str) -> tuple[str, ...]:
    """The build options `create(name, arch=...)` accepts (empty: none)."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise UnknownModelError(f"unknown model {name!r}: choose one of {', '.join(available())}")
    return entry.arch


def _build(entry: _Entry, num_classes: int, options: dict[str, Any]) -> nn.Module:
    try:
        model = entry.build(num_classes=num_classes, **options)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"cannot build {entry.name} with {options}: {exc}") from None
    model.arch = {k: options[k] for k in entry.arch if k in options}
    return model


def _check_arch(entry: _Entry, arch: dict[str, Any], what: str) -> dict[str, Any]:
    unknown = sorted(set(arch) - set(entry.arch))
    if unknown:
        allowed = f"it takes {', '.join(entry.arch)}" if entry.arch else "it takes none"
        raise ModelError(f"{what}: {entry.name} has no architecture option {', '.join(unknown)} ({allowed})")
    # Saved checkpoints hold lists where the configs want tuples.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()}


def _same(a: object, b: object) -> bool:
    norm = (lambda v: tuple(v) if isinstance(v, (list, tuple)) else v)
    return norm(a) == norm(b)


def _check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    if isinstance(labels, str) or not all(isinstance(x, str) and x.strip() for x in labels) or not labels:
        raise ModelError(f"labels must be a non-empty list of non-empty class names, got {labels!r}")
    if len(set(labels)) != len(labels):
        dup = sorted({x for x in labels if list(labels).count(x) > 1})
        raise ModelError(f"labels name {', '.join(dup)} more than once: give each class its own name")
    return tuple(labels)
