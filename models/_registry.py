"""The model registry: metadata types, exceptions, and `create` / `available`.

Each family module (`models/x3d.py`, ...) registers its variants with `register`;
`models/__init__.py` imports every family module when the registry is first used through
it (`models.create`, `models.available`, ...), so that the registry is complete then, and
`import models` alone stays free of torch. Registering a name twice raises (torchvision's
`models/_api.py` does the same; timm only warns).
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
class Option:
    """A build option a model family takes: `create(name, **{option: value})`.

    kind: int, float, bool, str (with `choices`) or tuple (of ints). `create` checks the
    kind; ranges and combinations are checked by the family's config (`__post_init__`).
    """

    kind: type
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        """What a value must be, for error lines and docs: 'an integer', 'one of a, b'."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        return _KIND_NAMES[self.kind]

    def check(self, value: object) -> object:
        """`value` in the form the builder takes (a number for float, a tuple for tuple);
        ValueError when it is of another kind."""
        if self.kind is tuple:
            if isinstance(value, (list, tuple)) and all(_is_int(v) for v in value):
                return tuple(value)
        elif self.kind is float:
            if _is_int(value) or isinstance(value, float):
                return float(value)  # type: ignore[arg-type]
        elif self.kind is int:
            if _is_int(value):
                return value
        elif isinstance(value, self.kind) and (not self.choices or value in self.choices):
            return value
        raise ValueError(self.describe())


_KIND_NAMES = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    tuple: "a list of integers",
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    # The build options `create(name, **options)` may pass (attention kind, a reduced
    # width...), by name; the builder takes each as a keyword argument.
    options: Mapping[str, Option]


_REGISTRY: dict[str, _Entry] = {}


def register(
    name: str,
    *,
    adapt: Callable,
    zoo_file: str | None = None,
    zoo_partial: bool = False,
    classifier: tuple[str, ...] = ("head.proj.",),
    options: Mapping[str, Option] | None = None,
) -> Callable:
    """Decorator: register `build(num_classes, **options)` under `name`; duplicates raise."""

    def decorator(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = _Entry(
            name=name,
            build=build,
            adapt=adapt,
            zoo_file=zoo_file,
            zoo_partial=zoo_partial,
            classifier=classifier,
            options=dict(options or {}),
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
    seed: int | None = None,
    **options: Any,
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
    seed: draw the random initialisation (all of it without weights, the new classifier
    with them) from this seed, leaving torch's global generator as it was; the same seed
    gives the same model, so an engine compiled for it is found in the cache next time.
    None: from torch's global generator.
    options: the family's build options (`models.build_options(name)` lists them), e.g.
    Motionformer's `attention="orthoformer", landmarks=128`, AVSlowFast's
    `fusion="a_f_s"`, a reduced SlowFast's `width=16, depths=(1, 1, 1, 1)`, X3D's
    expansion factors. An unknown option, or a value of the wrong kind, raises ModelError.
    A checkpoint written by `save_checkpoint` carries its options, so
    `create(name, weights=path)` rebuilds it; an option that contradicts them raises.

    The model carries `meta` (ModelMeta), `example_inputs(batch)`, `weights_id` (sha256
    prefix of the checkpoint file, None for random init) and `options` (the build options
    it was made with, as checked: tuples for lists).
    """
    if seed is not None:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return create(name, weights=weights, num_classes=num_classes, labels=labels, **options)
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
            raise ModelError(
                f"{len(labels)} labels were given for num_classes={num_classes}: "
                "give one name per class"
            )
        num_classes = len(labels)
    options = _check_options(entry, options, "")

    if weights is None:
        model = _build(entry, num_classes or KINETICS400_CLASSES, options)
        model.weights_id = None
        if labels is not None:
            model.meta = dataclasses.replace(model.meta, labels=labels)
        return model.eval()

    # Imported here: urllib and hashlib are only needed when weights are asked for.
    from models import _weights

    path, source = _weights.resolve(weights, model=name, zoo_file=entry.zoo_file)
    state, weights_id, extras = _weights.read_checkpoint(path, source)
    try:
        state, adapted = entry.adapt(state)
    except ValueError as exc:
        raise WeightsError(f"cannot use weights {source} for {name}: {exc}") from None
    ckpt_classes = adapted.pop("num_classes", None)
    fresh_prefixes = tuple(adapted.pop("fresh_prefixes", ()))
    saved = _check_options(entry, extras.get("options", {}), f"weights {source}: ")
    for key in saved.keys() & options.keys():
        if saved[key] != options[key]:
            raise WeightsError(
                f"weights {source} were built with {key}={saved[key]!r} but the options ask "
                f"for {key}={options[key]!r}: leave {key} out to use the checkpoint's"
            )
    options = {**saved, **options}
    classes = num_classes or ckpt_classes or KINETICS400_CLASSES
    replaced = ckpt_classes is not None and classes != ckpt_classes
    if replaced:
        # Fine-tuning for other labels: the old classifier cannot be used; start it afresh.
        state = {k: v for k, v in state.items() if not k.startswith(entry.classifier)}
        fresh_prefixes += entry.classifier
    if labels is None and not replaced and len(extras.get("labels", ())) == classes:
        labels = tuple(extras["labels"])
    model = _build(entry, classes, options, adapted)
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


def build_options(name: str) -> dict[str, Option]:
    """The build options `create(name, **options)` accepts, by name (empty: none)."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise UnknownModelError(f"unknown model {name!r}: choose one of {', '.join(available())}")
    return dict(entry.options)


def has_zoo_weights(name: str) -> bool:
    """Whether a published checkpoint (`weights="kinetics400"`) gives the whole of model
    `name` trained weights: False when there is none, or when it covers only part of the
    model (AVSlowFast's visual pathways from SlowFast's)."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise UnknownModelError(f"unknown model {name!r}: choose one of {', '.join(available())}")
    return entry.zoo_file is not None and not entry.zoo_partial


def _build(
    entry: _Entry,
    num_classes: int,
    options: dict[str, Any],
    adapted: Mapping[str, Any] | None = None,
) -> nn.Module:
    """`adapted`: what the family's `adapt` read from a checkpoint's layout (PySlowFast's
    shortcut BatchNorm...): passed to the builder, not the user's to set."""
    try:
        model = entry.build(num_classes=num_classes, **{**(adapted or {}), **options})
    except (ValueError, TypeError) as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in options.items())
        with_options = f" with {given}" if given else ""
        raise ModelError(f"cannot build {entry.name}{with_options}: {exc}") from None
    model.options = dict(options)
    return model


def _check_options(entry: _Entry, options: Mapping[str, Any], what: str) -> dict[str, Any]:
    """`options` checked against the entry's declarations; `what` prefixes the error."""
    unknown = [k for k in options if k not in entry.options]
    if unknown:
        valid = f"options: {', '.join(sorted(entry.options))}" if entry.options else "it takes none"
        names = " or ".join(repr(k) for k in unknown)
        raise ModelError(f"{what}{entry.name} has no option {names} ({valid})")
    checked = {}
    for key, value in options.items():
        try:
            checked[key] = entry.options[key].check(value)
        except ValueError as exc:
            raise ModelError(
                f"{what}{entry.name} option {key!r} must be {exc}, got {value!r}"
            ) from None
    return checked


def _check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    if (
        isinstance(labels, str)
        or not all(isinstance(x, str) and x.strip() for x in labels)
        or not labels
    ):
        raise ModelError(
            f"labels must be a non-empty list of non-empty class names, got {labels!r}"
        )
    if len(set(labels)) != len(labels):
        dup = sorted({x for x in labels if list(labels).count(x) > 1})
        raise ModelError(
            f"labels name {', '.join(dup)} more than once: give each class its own name"
        )
    return tuple(labels)
