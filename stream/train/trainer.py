"""`python -m stream.train DATA --model NAME`: fine-tune a model on your own labelled clips.

    python -m stream.train data/ --model avslowfast_r50 --out runs/kitchen
    python -m stream.run --config runs/kitchen/config.yaml

DATA is `python -m stream.record`'s layout (one folder of clips per label, see
`stream.train.clips`). The clips are split per label into training and validation clips
(seeded), decoded once and cut into windows exactly as the stream cuts them
(`stream.train.dataset`), with random crops, flips and window positions for training.

Weights: X3D and SlowFast start from their Kinetics-400 checkpoints, AVSlowFast's visual
pathways from SlowFast-R50's (its audio parts start afresh); the classifier is replaced
by one for your labels. `--arch` builds a reduced network (random weights).

AVSlowFast is trained as its paper (Xiao et al., arXiv:2001.08740) and the reference
code (PySlowFast's AVSlowFast branch) do:
- DropPathway: in each training step the whole audio contribution is dropped with
  probability `--drop-pathway` (0.8, SLOWFAST.DROPPATHWAY_RATE), because the audio
  pathway learns faster than the visual ones and would otherwise dominate. Paper and
  reference keep it constant; `--drop-pathway-schedule linear:P0` or `cosine:P0` moves
  it from P0 at the first step to `--drop-pathway` at the last. Evaluation always uses
  the audio (the model draws only in train mode).
- Audiovisual synchronisation: the sync head's unit-norm visual and audio embeddings
  (taken before audio is fused into the visual pathways; `model.forward_with_sync`
  gives them with the logits, from one pass of the visual pathways) go
  into the reference's contrastive loss (`AVS.contrastive_loss`, after Hadsell et al.):
  embeddings scaled by 1/2, squared distance for the in-sync pair, squared hinge
  max(0, 0.99 - distance) for the negative, averaged over the pairs that pass the
  reference's silence/duplicate filter; added to the classification loss with weight
  `--sync-weight` (1, as the reference sums them).
- Curriculum of negatives: easy ones (another clip's sound) until epoch
  `--hard-negatives-from` (by default the second half of training), then hard ones (the
  same clip's sound shifted by at least `--shift-s`, 0.5 s) for `--hard-fraction` of the
  samples (0.25; the reference keeps 3/4 easy, DATA.EASY_NEG_RATIO) and easy for the rest.

Optimisation (PySlowFast's fine-tuning recipe): SGD with momentum 0.9 (or `--optimizer
adamw`), no weight decay on BatchNorm and bias terms, a linear warm-up from a tenth of
`--lr` over `--warmup-epochs`, then a cosine decay to zero, stepped every iteration. On
CUDA, mixed precision (bf16 where the GPU has it, else fp16 with loss scaling).

Output in `--out` (default runs/<model>): `last.pt` after every epoch (model, optimiser,
schedule, RNG states, history; `--resume` continues from it), `metrics.jsonl` (one line
per epoch), `model.pt` (the weights of the epoch with the best validation accuracy, ties
going to a clearly lower validation loss; a `models.save_checkpoint` file) and, at the
end, `config.yaml` for `python -m stream.run --config` (model, weights, labels and run
defaults). Every file is written under a temporary name and renamed; a run that fails to
start leaves nothing.

Exit status: 0 when training finished, and after Ctrl-C or SIGTERM (an orderly stop: one
line names the best checkpoint so far, or says that nothing was saved; continue with
--resume); 2 for bad input (one `error:` line naming the file or option and what to do);
1 when training failed (e.g. the loss diverged).
"""

from __future__ import annotations

from stream._deps import require_pipeline

require_pipeline("python -m stream.train")  # before the imports that need the `run` extra

import argparse
import dataclasses
import json
import logging
import math
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from models._files import write_atomically
from models._weights import plain
from stream.config import LOG_LEVELS
from stream.errors import ArgumentParser, UserError

log = logging.getLogger("stream.train")

CHECKPOINT_FORMAT = "avstream.train.v1"
#: AVSlowFast-only options (their flag names), refused for video-only models.
AV_OPTIONS = (
    "drop_pathway", "drop_pathway_schedule", "sync_weight", "hard_negatives_from",
    "hard_fraction", "shift_s",
)  # fmt: skip
#: Options a resumed run may change; all others are the run's own (stored in last.pt).
RESUME_MAY_CHANGE = (
    "epochs",
    "device",
    "amp",
    "workers",
    "cache_mb",
    "progress",
    "resume",
    "data",
    "out",
)
#: The reference's contrastive margin (AVS.forward, margin=0.99).
SYNC_MARGIN = 0.99


@dataclasses.dataclass
class TrainOptions:
    data: str
    model: str = "x3d_xs"
    weights: str | None = None  # None: kinetics400, or random weights with --arch
    out: str | None = None  # None: runs/<model>
    arch: dict[str, Any] = dataclasses.field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 8
    optimizer: str = "sgd"
    lr: float | None = None  # None: 0.01 (sgd) / 0.001 (adamw)
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    amp: bool | None = None  # None: on for CUDA
    workers: int | None = None  # None: 0 on the CPU, 4 on CUDA
    cache_mb: float = 4096.0
    resume: bool = False
    progress: bool | None = None  # None: when stderr is a terminal
    # AVSlowFast
    drop_pathway: float | None = None  # None: the model's (0.8)
    drop_pathway_schedule: str = "constant"
    sync_weight: float = 1.0
    hard_negatives_from: int | None = None  # 1-based epoch; None: epochs // 2 + 1
    hard_fraction: float = 0.25
    shift_s: float = 0.5

    @property
    def out_dir(self) -> Path:
        return Path(self.out if self.out is not None else f"runs/{self.model}")

    def plain(self) -> dict:
        """What last.pt stores (loadable with weights_only)."""
        d = dataclasses.asdict(self)
        d["arch"] = plain(d["arch"])
        return d


@dataclasses.dataclass
class TrainResult:
    out: Path
    labels: tuple[str, ...]
    history: list[dict]
    best_accuracy: float
    best_epoch: int


class TrainingFailed(Exception):
    """Training started but could not go on (e.g. the loss diverged): exit status 1."""


@dataclasses.dataclass
class Kept:
    """What a stopped run leaves (set on the KeyboardInterrupt that stopped `train`)."""

    out: Path
    best_epoch: int  # 0: no epoch finished
    best_accuracy: float

    @property
    def checkpoint(self) -> Path | None:
        return self.out / "model.pt" if self.best_epoch > 0 else None


# -- command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:

    d = TrainOptions
    p = ArgumentParser(
        prog="python -m stream.train",
        description="Fine-tune a model on labelled clips (DATA/<label>/*.mp4) "
        "for python -m stream.run.",
    )
    a = p.add_argument
    # Defaults are None where a resumed run must tell "given" from "not given".
    a(
        "data",
        help="dataset folder: one folder of clips per label (python -m stream.record writes it)",
    )
    a("--model", help=f"model to fine-tune (default {d.model})")
    a(
        "--weights",
        help="kinetics400 (default; AVSlowFast: SlowFast-R50's for its visual pathways), "
        "a checkpoint path, or none",
    )
    a("--out", help="output folder (default runs/<model>)")
    a(
        "--arch",
        action="append",
        metavar="KEY=VALUE",
        help="architecture override for a reduced network, e.g. width=16 depths=1,1,1,1 "
        "(repeatable; random weights)",
    )
    a("--epochs", type=int, help=f"epochs to train (default {d.epochs})")
    a("--batch-size", type=int, help=f"clips per step (default {d.batch_size})")
    a("--optimizer", choices=("sgd", "adamw"), help=f"default {d.optimizer}")
    a("--lr", type=float, help="peak learning rate (default 0.01 for sgd, 0.001 for adamw)")
    a("--weight-decay", type=float, help=f"default {d.weight_decay} (none on BatchNorm and biases)")
    a(
        "--warmup-epochs",
        type=float,
        help=f"linear warm-up before the cosine decay (default {d.warmup_epochs})",
    )
    a("--label-smoothing", type=float, help=f"default {d.label_smoothing}")
    a(
        "--val-fraction",
        type=float,
        help=f"share of each label's clips kept for validation (default {d.val_fraction})",
    )
    a(
        "--seed",
        type=int,
        help=f"seed of the split, the initialisation and the sampling (default {d.seed})",
    )
    a("--device", help="auto (default: cuda when present), cpu, cuda or cuda:N")
    a(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed precision on CUDA (default: on with CUDA)",
    )
    a("--workers", type=int, help="data loader processes (default 0 on the CPU, 4 on CUDA)")
    a(
        "--cache-mb",
        type=float,
        help="memory for decoded clips; clips past it are decoded again when sampled "
        f"(default {d.cache_mb:.0f})",
    )
    a(
        "--resume",
        action="store_true",
        default=None,
        help="continue the run in --out from its last.pt",
    )
    a(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    g = p.add_argument_group("audiovisual models (AVSlowFast)")
    g.add_argument(
        "--drop-pathway",
        type=float,
        metavar="P",
        help="DropPathway probability of the audio pathway (default 0.8, the paper's)",
    )
    g.add_argument(
        "--drop-pathway-schedule",
        metavar="SCHEDULE",
        help="constant (default, as the paper), linear:P0 or cosine:P0 "
        "(from P0 at the first step to P at the last)",
    )
    g.add_argument(
        "--sync-weight",
        type=float,
        metavar="W",
        help=f"weight of the synchronisation loss (default {d.sync_weight}; 0 turns it off)",
    )
    g.add_argument(
        "--hard-negatives-from",
        type=int,
        metavar="EPOCH",
        help="first epoch with hard (time-shifted) sync negatives (default: half-way)",
    )
    g.add_argument(
        "--hard-fraction",
        type=float,
        metavar="F",
        help=f"share of hard negatives from then on (default {d.hard_fraction})",
    )
    g.add_argument(
        "--shift-s",
        type=float,
        metavar="S",
        help=f"smallest time shift of a hard negative in seconds (default {d.shift_s})",
    )
    a(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="default info",
    )
    return p


def parse_arch(pairs: list[str] | None) -> dict[str, Any]:
    """['width=16', 'depths=1,1,1,1'] -> {'width': 16, 'depths': (1, 1, 1, 1)}."""
    import yaml

    arch: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise UserError(
                f"--arch {pair!r} is not KEY=VALUE (e.g. --arch width=16 --arch depths=1,1,1,1)"
            )
        text = text.strip()
        if "," in text and not text.startswith("["):
            text = f"[{text}]"
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        arch[key] = tuple(value) if isinstance(value, list) else value
    return arch


def options_from_args(ns: argparse.Namespace) -> tuple[TrainOptions, set[str]]:
    """The options and the names of those given on the command line."""
    values = {k: v for k, v in vars(ns).items() if v is not None and k != "log_level"}
    if "arch" in values:
        values["arch"] = parse_arch(values["arch"])
    given = set(values)
    return TrainOptions(**values), given


# -- checks --------------------------------------------------------------------------------


def _check_options(opts: TrainOptions) -> None:
    """Option values; UserError naming the flag."""
    positive = {"epochs": opts.epochs, "batch_size": opts.batch_size}
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"--{key.replace('_', '-')} {value} must be >= 1")
    if opts.lr is not None and not opts.lr > 0:
        raise UserError(f"--lr {opts.lr} must be > 0 (e.g. 0.01)")
    if opts.weight_decay < 0 or opts.warmup_epochs < 0 or opts.cache_mb < 0:
        raise UserError("--weight-decay, --warmup-epochs and --cache-mb must be >= 0")
    if not 0.0 <= opts.label_smoothing < 1.0:
        raise UserError(f"--label-smoothing {opts.label_smoothing} must be in [0, 1)")
    if opts.workers is not None and opts.workers < 0:
        raise UserError(f"--workers {opts.workers} must be >= 0")


def _check_av_options(opts: TrainOptions, given: set[str], *, audio: bool, name: str) -> None:
    """The audiovisual options: refused for video-only models, checked for the others."""
    if not audio:
        av = sorted(k for k in AV_OPTIONS if k in given)
        if av:
            flags = ", ".join(f"--{k.replace('_', '-')}" for k in av)
            raise UserError(
                f"{flags}: {'these apply' if len(av) > 1 else 'it applies'} "
                f"to audiovisual models only, and {name} is video-only: "
                f"leave {'them' if len(av) > 1 else 'it'} out (or train avslowfast_r50)"
            )
        return
    if opts.drop_pathway is not None and not 0.0 <= opts.drop_pathway <= 1.0:
        raise UserError(
            f"--drop-pathway {opts.drop_pathway} must be a probability in [0, 1] "
            "(the paper's is 0.8)"
        )
    drop_schedule(opts.drop_pathway_schedule, 0.8)  # raises when malformed
    if opts.sync_weight < 0:
        raise UserError(f"--sync-weight {opts.sync_weight} must be >= 0")
    if not 0.0 <= opts.hard_fraction <= 1.0:
        raise UserError(f"--hard-fraction {opts.hard_fraction} must be in [0, 1]")
    if opts.hard_negatives_from is not None and opts.hard_negatives_from < 1:
        raise UserError(f"--hard-negatives-from {opts.hard_negatives_from} must be an epoch >= 1")
    if not opts.shift_s > 0:
        raise UserError(f"--shift-s {opts.shift_s} must be > 0 seconds (e.g. 0.5)")


def resolve_device(spec: str):
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {spec!r} is not known: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {spec} asked for, but PyTorch sees no CUDA GPU: use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"--device {spec}: there are {torch.cuda.device_count()} CUDA GPUs (cuda:0 ...)"
            )
    elif device.type != "cpu":
        raise UserError(f"--device {spec!r} is not supported: use auto, cpu, cuda or cuda:N")
    return device


def drop_schedule(spec: str, p_end: float):
    """DropPathway probability as a function of training progress in [0, 1]."""
    kind, _, start = spec.partition(":")
    if kind == "constant" and not start:
        return lambda progress: p_end
    if kind in ("linear", "cosine") and start:
        try:
            p0 = float(start)
        except ValueError:
            p0 = -1.0
        if 0.0 <= p0 <= 1.0:
            if kind == "linear":
                return lambda progress: p0 + (p_end - p0) * progress
            return lambda progress: p_end + (p0 - p_end) * 0.5 * (1 + math.cos(math.pi * progress))
    raise UserError(
        f"--drop-pathway-schedule {spec!r} is not understood: use constant, linear:P0 or cosine:P0 "
        "with 0 <= P0 <= 1 (from P0 at the first step to --drop-pathway at the last)"
    )


# -- losses and schedules ------------------------------------------------------------------


def sync_loss(visual, audio_pos, audio_neg, mask):
    """The reference's AVS contrastive loss on unit-norm embeddings (B, D).

    Scaled by 1/2 so that squared distances lie in [0, 1]; in-sync pairs are pulled
    together (squared distance), negatives pushed past the margin (squared hinge); the
    sum over the pairs in `mask` is divided by twice their count.
    """
    v, p, n = visual * 0.5, audio_pos * 0.5, audio_neg * 0.5
    pos = (v - p).pow(2).sum(dim=1)
    neg = (SYNC_MARGIN - (v - n).norm(dim=1)).clamp(min=0).pow(2)
    m = mask.to(v.dtype)
    return ((pos + neg) * m).sum() / (2 * m.sum() + 1e-8)


#: A tie in validation accuracy goes to the later epoch only when its validation loss is
#: this much lower (relative): more confident on the same clips, not the noise of a few
#: steps that changed nothing.
TIE_LOSS_GAIN = 0.01


def is_better(accuracy: float, loss: float, best_accuracy: float, best_loss: float) -> bool:
    """Whether an epoch beats the best so far: a higher validation accuracy, or the same
    accuracy with a validation loss lower by TIE_LOSS_GAIN. The accuracy of a small
    validation set saturates early (every clip right from some epoch on); the loss still
    tells a model trained on from one that merely equals the first lucky epoch."""
    if accuracy != best_accuracy:
        return accuracy > best_accuracy
    return loss < best_loss * (1 - TIE_LOSS_GAIN)


def lr_factor(step: int, *, total: int, warmup: int) -> float:
    """Linear warm-up from 0.1 to 1, then cosine to 0 (PySlowFast's cosine policy)."""
    if step < warmup:
        return 0.1 + 0.9 * step / warmup
    rest = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / rest)))


def param_groups(model, weight_decay: float) -> list[dict]:
    """No weight decay on BatchNorm and bias terms (PySlowFast BN.WEIGHT_DECAY = 0)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


# -- progress --------------------------------------------------------------------------------


def progress_bar(show: bool | None, total: int, label: str) -> tqdm:
    """A bar on stderr for one phase (decoding, an epoch), gone when it is closed: the
    log line that follows says what the phase did. `show` is --progress: None draws it
    on a terminal only (tqdm's own rule), so that logs and pipes get no bar."""
    return tqdm(
        total=total,
        desc=label,
        disable=None if show is None else not show,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
    )


# -- files -----------------------------------------------------------------------------------


class _SignalsDeferred:
    """SIGINT and SIGTERM wait while an epoch's files are written, so that model.pt,
    last.pt and metrics.jsonl always belong to the same epoch; a signal that came
    meanwhile is raised again on leaving (to the handlers there were before)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.pending: list[int] = []
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._hold) for s in self.SIGNALS}
        return self

    def _hold(self, signum, frame) -> None:
        self.pending.append(signum)

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        for signum in dict.fromkeys(self.pending):
            signal.raise_signal(signum)


def _write_text(path: Path, text: str) -> None:
    with write_atomically(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def run_config(model_name: str, labels: tuple[str, ...], audio: bool, summary: str) -> str:
    """config.yaml for `python -m stream.run --config`: the shipped config of the model
    (stride, smoothing...) with this run's weights and labels."""
    import yaml

    from stream.config import builtin_config, read_yaml

    values: dict[str, Any] = {"model": model_name}
    base = builtin_config(model_name)
    if base is not None:
        values.update(read_yaml(base))
    values.pop("num_classes", None)
    # Found beside this file wherever the folder is moved (stream.config.read_yaml).
    values["weights"] = "model.pt"
    values["labels"] = list(labels)
    values["mic"] = "default" if audio else "none"
    values["topk"] = min(int(values.get("topk", 5)), len(labels))
    values.setdefault("stride", 1.0 if audio else 0.25)
    values.setdefault("smoothing", "ema:0.5")
    header = (
        f"# Written by python -m stream.train: {summary}\n"
        f"# Run it: python -m stream.run --config <this file> (flags override these values).\n"
    )
    return header + yaml.safe_dump(values, sort_keys=False, allow_unicode=True)


# -- training ----------------------------------------------------------------------------------


def train(
    opts: TrainOptions,
    given: set[str] | None = None,
    *,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Run (or resume) training; raises UserError for bad input before anything is
    written, TrainingFailed when training cannot go on.

    `given`: the options set on the command line (a resumed run refuses to change the
    others; the audiovisual ones are refused for video-only models). `on_epoch` is
    called with each epoch's record once its checkpoint is written.
    """
    import torch

    import models
    from stream.train.clips import list_dataset  # noqa: F401  (documents the dataset format)
    from stream.train.dataset import ClipDataset, ClipStore, split_dataset

    given = set(given if given is not None else ())
    out = opts.out_dir
    last_path = out / "last.pt"
    opts, checkpoint = _resume(opts, given, last_path)

    _check_options(opts)
    if opts.model not in models.available():
        raise UserError(
            f"unknown model {opts.model!r}: choose one of {', '.join(models.available())}"
        )
    device = resolve_device(opts.device)
    amp = opts.amp if opts.amp is not None else device.type == "cuda"
    if amp and device.type != "cuda":
        raise UserError("--amp needs a CUDA device: leave it out on the CPU")

    split = split_dataset(opts.data, val_fraction=opts.val_fraction, seed=opts.seed)
    if checkpoint is not None:
        _check_same_clips(checkpoint, split, opts.data, out)

    weights = opts.weights
    if weights is None:
        weights = "none" if opts.arch else "kinetics400"
    if weights.lower() == "none":
        weights = "none"
    torch.manual_seed(opts.seed)
    random.seed(opts.seed)
    model = _create(
        opts.model,
        None if weights == "none" or checkpoint is not None else weights,
        split.labels,
        opts.arch,
    )
    meta = model.meta
    audio = meta.audio is not None
    _check_av_options(opts, given, audio=audio, name=opts.model)
    can_sync = audio and hasattr(model, "forward_with_sync") and opts.sync_weight > 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model_state"])
    model.to(device)

    paths = [it.path for it in (*split.train, *split.val)]
    log.info(
        "%s: %d labels (%s), %d clips to train on, %d to validate on; decoding them",
        opts.data,
        len(split.labels),
        ", ".join(split.labels),
        len(split.train),
        len(split.val),
    )
    with progress_bar(opts.progress, len(paths), "decoding") as bar:

        def decoded(done: int, total: int, path: Path | None) -> None:
            bar.set_postfix_str(path.name if path else "", refresh=False)
            bar.update(done - bar.n)

        store = ClipStore(paths, meta=meta, cache_mb=opts.cache_mb, progress=decoded)
    log.info("decoded %d clips (%.0f MiB kept in memory)", len(paths), store.used / 2**20)

    train_set = ClipDataset(
        store, split.train, train=True, seed=opts.seed, sync=can_sync, shift_s=opts.shift_s
    )
    val_set = ClipDataset(store, split.val, train=False, seed=opts.seed)
    workers = opts.workers if opts.workers is not None else (4 if device.type == "cuda" else 0)
    steps_per_epoch = math.ceil(len(train_set) / opts.batch_size)
    total_steps = steps_per_epoch * opts.epochs
    warmup_steps = min(round(opts.warmup_epochs * steps_per_epoch), total_steps // 2)

    lr = opts.lr if opts.lr is not None else (0.01 if opts.optimizer == "sgd" else 0.001)
    optimizer, scheduler, scaler, amp_dtype = _optimiser(
        model, opts, lr=lr, total_steps=total_steps, warmup_steps=warmup_steps, amp=amp
    )

    p_drop = (
        opts.drop_pathway
        if opts.drop_pathway is not None
        else float(getattr(model, "drop_pathway", 0.0))
    )
    drop_at = drop_schedule(opts.drop_pathway_schedule, p_drop) if audio else None
    hard_from = (
        opts.hard_negatives_from if opts.hard_negatives_from is not None else opts.epochs // 2 + 1
    )

    history: list[dict] = []
    best_accuracy, best_epoch, start_epoch = -1.0, 0, 1
    best_loss = math.inf  # the validation loss of the best epoch: breaks accuracy ties
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        history = list(checkpoint["history"])
        best_accuracy, best_epoch = (
            float(checkpoint["best_accuracy"]),
            int(checkpoint["best_epoch"]),
        )
        best_loss = float(checkpoint.get("best_loss", math.inf))  # absent before tie-breaks
        start_epoch = int(checkpoint["epoch"]) + 1
        _set_rng(checkpoint["rng"])
        log.info(
            "resuming %s at epoch %d of %d (best validation accuracy so far %.3f, epoch %d)",
            out,
            start_epoch,
            opts.epochs,
            best_accuracy,
            best_epoch,
        )

    log.info(
        "training %s on %s%s for %d epochs (%d steps of %d clips each), %s lr %g, weights %s%s",
        opts.model,
        device,
        f" with {str(amp_dtype).removeprefix('torch.')} autocast" if amp_dtype else "",
        opts.epochs,
        steps_per_epoch,
        opts.batch_size,
        opts.optimizer,
        lr,
        "from last.pt" if checkpoint is not None else weights,
        f", arch {opts.arch}" if opts.arch else "",
    )
    if audio:
        log.info(
            "DropPathway %s (p %.2f at the end); sync loss %s",
            opts.drop_pathway_schedule,
            p_drop,
            f"weight {opts.sync_weight}, easy negatives until epoch {hard_from - 1}, then "
            f"{opts.hard_fraction:.0%} hard (shifted by >= {opts.shift_s} s)"
            if can_sync
            else "off",
        )
    completed = start_epoch - 1
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        for epoch in range(start_epoch, opts.epochs + 1):
            started = time.monotonic()
            hard = can_sync and epoch >= hard_from
            train_set.epoch = epoch
            train_set.hard_fraction = opts.hard_fraction if hard else 0.0
            if can_sync and (epoch == start_epoch or epoch == hard_from):
                log.info(
                    "epoch %d: sync negatives %s",
                    epoch,
                    f"hard: {opts.hard_fraction:.0%} the same clip's sound shifted by "
                    f">= {opts.shift_s} s, the rest another clip's"
                    if hard
                    else "easy: another clip's sound",
                )
            stats = _train_epoch(
                model,
                train_set,
                optimizer,
                scheduler,
                scaler,
                device=device,
                amp_dtype=amp_dtype,
                batch_size=opts.batch_size,
                workers=workers,
                seed=opts.seed,
                epoch=epoch,
                label_smoothing=opts.label_smoothing,
                sync_weight=opts.sync_weight if can_sync else 0.0,
                drop_at=drop_at,
                step0=(epoch - 1) * steps_per_epoch,
                total_steps=total_steps,
                progress=opts.progress,
                label=f"epoch {epoch}/{opts.epochs}",
            )
            result = evaluate(
                model,
                val_set,
                device=device,
                amp_dtype=amp_dtype,
                batch_size=opts.batch_size,
                workers=workers,
            )
            record = {
                "epoch": epoch,
                **stats,
                "val_accuracy": result["accuracy"],
                "val_loss": result["loss"],
                "val_per_label": {split.labels[k]: v for k, v in result["per_label"].items()},
                "negatives": ("hard" if hard else "easy") if can_sync else None,
                "hard_fraction": train_set.hard_fraction if can_sync else None,
                "seconds": round(time.monotonic() - started, 2),
            }
            history.append(record)
            improved = is_better(result["accuracy"], result["loss"], best_accuracy, best_loss)
            with _SignalsDeferred():
                if improved:
                    best_accuracy, best_epoch = result["accuracy"], epoch
                    best_loss = result["loss"]
                    models.save_checkpoint(
                        model, out / "model.pt", val_accuracy=best_accuracy, epoch=epoch
                    )
                models.save_checkpoint(
                    model,
                    last_path,
                    format=CHECKPOINT_FORMAT,
                    epoch=epoch,
                    train_options=opts.plain(),
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(),
                    scaler=scaler.state_dict() if scaler.is_enabled() else {},
                    best_accuracy=best_accuracy,
                    best_epoch=best_epoch,
                    best_loss=best_loss,
                    history=history,
                    split=_split_names(split, opts.data),
                    rng=_get_rng(),
                )
                _write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
                completed = epoch
            log.info(
                "epoch %d/%d: loss %.3f%s, train accuracy %.3f, "
                "validation accuracy %.3f%s%s (%.1f s)",
                epoch,
                opts.epochs,
                stats["loss"],
                f" (sync {stats['sync_loss']:.3f} on {stats['sync_pairs']} "
                f"{record['negatives']} pairs)"
                if can_sync
                else "",
                stats["train_accuracy"],
                result["accuracy"],
                f", DropPathway p {stats['drop_pathway']:.2f}" if audio else "",
                "  *best*" if improved else "",
                record["seconds"],
            )
            if on_epoch is not None:
                on_epoch(record)
    except BaseException as exc:  # Ctrl-C included: last.pt holds every finished epoch
        if created and completed < start_epoch:
            _remove_empty(out)
        if isinstance(exc, KeyboardInterrupt):
            exc.kept = Kept(out, best_epoch, best_accuracy)
        raise

    summary = (
        f"{opts.model} on {len(split.train) + len(split.val)} clips of {opts.data} "
        f"({len(split.labels)} labels); validation accuracy {best_accuracy:.3f} "
        f"at epoch {best_epoch} of {opts.epochs}"
    )
    _write_text(out / "config.yaml", run_config(opts.model, split.labels, audio, summary))
    log.info(
        "done: %s/model.pt (validation accuracy %.3f, epoch %d); run it with "
        "python -m stream.run --config %s/config.yaml",
        out,
        best_accuracy,
        best_epoch,
        out,
    )
    return TrainResult(
        out=out,
        labels=split.labels,
        history=history,
        best_accuracy=best_accuracy,
        best_epoch=best_epoch,
    )


def _resume(
    opts: TrainOptions, given: set[str], last_path: Path
) -> tuple[TrainOptions, dict | None]:
    """With --resume: the options of the run in `last_path` (those in RESUME_MAY_CHANGE
    as given now) and its checkpoint. Without: `opts`, None, once --out is free to use.
    Raises UserError for a run that cannot be resumed or an --out already in use."""
    import torch

    out = last_path.parent
    checkpoint = None
    if opts.resume:
        if not last_path.is_file():
            raise UserError(
                f"--resume: {str(out)!r} holds no last.pt to resume from: start without --resume"
            )
        try:
            checkpoint = torch.load(last_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 (a damaged file makes torch.load raise anything)
            raise UserError(
                f"--resume: {str(last_path)!r} cannot be read ({exc}): "
                "start a new run with another --out"
            ) from None
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise UserError(
                f"--resume: {str(last_path)!r} is not a stream.train checkpoint: "
                "start a new run with another --out"
            )
        fields = {f.name for f in dataclasses.fields(TrainOptions)}
        # "options": where a last.pt of before the model's build options took that name kept them
        saved = checkpoint.get("train_options", checkpoint.get("options"))
        stored = TrainOptions(**{k: v for k, v in saved.items() if k in fields})
        for key in sorted(given - set(RESUME_MAY_CHANGE)):
            if plain(getattr(opts, key)) != plain(getattr(stored, key)):
                raise UserError(
                    f"--{key.replace('_', '-')} {getattr(opts, key)!r} differs from the run "
                    f"being resumed ({getattr(stored, key)!r}): leave it out when resuming, "
                    "or start a new run with another --out"
                )
        kept = {
            k: getattr(opts, k)
            for k in RESUME_MAY_CHANGE
            if k in given or k in ("data", "out", "resume")
        }
        opts = dataclasses.replace(stored, **kept)
        opts.arch = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(opts.arch).items()}
        if int(checkpoint["epoch"]) >= opts.epochs:
            raise UserError(
                f"--resume: the run in {str(out)!r} has finished its {checkpoint['epoch']} epochs: "
                f"pass --epochs larger than {checkpoint['epoch']} to train on"
            )
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = (
            "already holds a training run (last.pt): pass --resume to continue it, or"
            if last_path.is_file()
            else "exists and is not an empty folder:"
        )
        raise UserError(f"--out {str(out)!r} {what} choose another --out")
    return opts, checkpoint


def _check_same_clips(checkpoint: dict, split, data: str, out: Path) -> None:
    """A resumed run trains on the labels and clips it started with."""
    if tuple(checkpoint["labels"]) != split.labels:
        raise UserError(
            f"the labels in {data!r} ({', '.join(split.labels)}) are not those of the run being "
            f"resumed ({', '.join(checkpoint['labels'])}): resume with the same dataset, "
            "or start a new run"
        )
    if _split_names(split, data) != checkpoint["split"]:
        raise UserError(
            f"the clips in {data!r} changed since the run in {str(out)!r} started: "
            "resume with the same clips, or start a new run with another --out"
        )


def _optimiser(
    model, opts: TrainOptions, *, lr: float, total_steps: int, warmup_steps: int, amp: bool
):
    """(optimizer, LR schedule, gradient scaler, autocast dtype or None) for a run."""
    import torch

    groups = param_groups(model, opts.weight_decay)
    if opts.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    else:
        optimizer = torch.optim.AdamW(groups, lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total=total_steps, warmup=warmup_steps)
    )
    amp_dtype = None
    if amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    return optimizer, scheduler, scaler, amp_dtype


def _create(name: str, weights: str | None, labels: tuple[str, ...], arch: dict):
    import models

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = models.create(name, weights=weights, labels=labels, **arch)
        except models.ModelError as exc:
            raise UserError(str(exc)) from None
    for w in caught:
        log.info("%s", w.message)
    return model


def _split_names(split, root: str) -> dict[str, list[str]]:
    base = Path(root)

    def rel(item) -> str:
        try:
            return str(item.path.relative_to(base))
        except ValueError:
            return str(item.path)

    return {"train": [rel(i) for i in split.train], "val": [rel(i) for i in split.val]}


def _get_rng() -> dict:
    import torch

    state = {"torch": torch.get_rng_state(), "python": plain(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _remove_empty(path: Path) -> None:
    try:
        path.rmdir()  # only when empty: nothing of value is removed
    except OSError:
        pass


def _loader(dataset, *, batch_size: int, workers: int, order=None):
    import torch

    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=order,
        num_workers=workers,
        pin_memory=False,
        drop_last=False,
    )


def _autocast(device, amp_dtype):
    import contextlib

    import torch

    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


def _inputs(batch: dict, device, *, key: str = "audio") -> list:
    inputs = [v.to(device, non_blocking=True) for v in batch["video"]]
    if key in batch:
        inputs.append(batch[key].to(device, non_blocking=True))
    return inputs


def _train_epoch(
    model,
    dataset,
    optimizer,
    scheduler,
    scaler,
    *,
    device,
    amp_dtype,
    batch_size,
    workers,
    seed,
    epoch,
    label_smoothing,
    sync_weight,
    drop_at,
    step0,
    total_steps,
    progress,
    label,
) -> dict:
    import torch
    import torch.nn.functional as F

    model.train()
    order = torch.randperm(
        len(dataset), generator=torch.Generator().manual_seed(seed * 100_003 + epoch)
    ).tolist()
    loader = _loader(dataset, batch_size=batch_size, workers=workers, order=order)
    n_steps = len(loader)
    sums = {"loss": 0.0, "cls_loss": 0.0, "sync_loss": 0.0}
    seen = correct = sync_pairs = hard_pairs = 0
    drop_ps = []
    with progress_bar(progress, n_steps, label) as bar:
        for i, batch in enumerate(loader):
            step = step0 + i
            if drop_at is not None:
                model.drop_pathway = float(drop_at(step / max(1, total_steps - 1)))
                drop_ps.append(model.drop_pathway)
            inputs = _inputs(batch, device)
            labels = batch["label"].to(device)
            with _autocast(device, amp_dtype):
                s_loss = None
                # with sync: one pass for both, the visual trunk below the fusions runs once
                if sync_weight > 0:
                    negative = batch["audio_neg"].to(device, non_blocking=True)
                    logits, visual, sound, sound_neg = model.forward_with_sync(*inputs, negative)
                    mask = batch["sync_ok"].to(device)
                    s_loss = sync_loss(visual.float(), sound.float(), sound_neg.float(), mask)
                else:
                    logits = model(*inputs)
                cls_loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
                loss = cls_loss
                if s_loss is not None:
                    loss = loss + sync_weight * s_loss
                    sync_pairs += int(mask.sum())
                    hard_pairs += int((mask & batch["hard"].to(device)).sum())
            if not torch.isfinite(loss):
                raise TrainingFailed(
                    f"training diverged at epoch {epoch}, step {i + 1} (loss {float(loss)}): "
                    "lower --lr (or resume from the last good epoch with --resume and a lower "
                    "--lr in a new run)"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            n = labels.shape[0]
            seen += n
            correct += int((logits.argmax(dim=1) == labels).sum())
            sums["loss"] += float(loss.detach()) * n
            sums["cls_loss"] += float(cls_loss.detach()) * n
            if s_loss is not None:
                sums["sync_loss"] += float(s_loss.detach()) * n
            bar.set_postfix_str(
                f"loss {sums['loss'] / seen:.3f}  acc {correct / seen:.2f}  "
                f"lr {scheduler.get_last_lr()[0]:.2g}",
                refresh=False,
            )
            bar.update()
    stats = {k: v / max(seen, 1) for k, v in sums.items()}
    stats.update(
        train_accuracy=correct / max(seen, 1),
        lr=scheduler.get_last_lr()[0],
        sync_pairs=sync_pairs,
        hard_pairs=hard_pairs,
        drop_pathway=sum(drop_ps) / len(drop_ps) if drop_ps else None,
    )
    return stats


def evaluate(
    model, dataset, *, device=None, amp_dtype=None, batch_size: int = 8, workers: int = 0
) -> dict:
    """Accuracy of `model` (eval mode: no DropPathway) on every window of `dataset`:
    {"accuracy", "loss", "per_label": {label index: accuracy}, "predictions", "targets"}."""
    import torch
    import torch.nn.functional as F

    device = device or next(model.parameters()).device
    model.eval()
    preds, targets, loss = [], [], 0.0
    with torch.no_grad():
        for batch in _loader(dataset, batch_size=batch_size, workers=workers):
            labels = batch["label"].to(device)
            with _autocast(device, amp_dtype):
                logits = model(*_inputs(batch, device)).float()
            loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            preds += logits.argmax(dim=1).tolist()
            targets += labels.tolist()
    per_label = {}
    for k in sorted(set(targets)):
        idx = [i for i, t in enumerate(targets) if t == k]
        per_label[k] = sum(preds[i] == k for i in idx) / len(idx)
    n = max(len(targets), 1)
    return {
        "accuracy": sum(p == t for p, t in zip(preds, targets)) / n,
        "loss": loss / n,
        "per_label": per_label,
        "predictions": preds,
        "targets": targets,
    }


def stopped_line(signal_name: str, kept: Kept | None, out: Path | None) -> str:
    """The one line after Ctrl-C or SIGTERM: what the run keeps."""
    head = f"interrupted ({signal_name})"
    resume = "continue with the same command and --resume"
    if kept is not None and kept.checkpoint is not None:
        return (
            f"{head}: the best checkpoint so far is {kept.checkpoint} (epoch {kept.best_epoch}, "
            f"validation accuracy {kept.best_accuracy:.3f}); {resume}"
        )
    if kept is None and out is not None and (out / "model.pt").is_file():
        # stopped before the first epoch of a resumed run: its files are as they were
        return f"{head}: the best checkpoint so far is {out / 'model.pt'}; {resume}"
    return f"{head}: no epoch finished, nothing was saved"


def main(argv: list[str] | None = None) -> int:
    from stream.errors import error_line
    from stream.pipeline.proc import setup_logging

    ns = build_parser().parse_args(argv)
    if logging.getLogger().handlers:  # called from a program that set up logging itself
        logging.getLogger("stream").setLevel(ns.log_level.upper())
    else:
        setup_logging(ns.log_level)
    received: list[str] = []

    def stop(signum, frame) -> None:
        received.append(signal.Signals(signum).name)
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM are an orderly stop, as for every command (stream.run too).
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    opts = None
    try:
        opts, given = options_from_args(ns)
        train(opts, given)
    except UserError as exc:
        print(error_line(exc), file=sys.stderr, flush=True)
        return 2
    except TrainingFailed as exc:
        print(error_line(exc), file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt as exc:
        name = received[0] if received else "SIGINT"
        out = opts.out_dir if opts is not None else None
        print(stopped_line(name, getattr(exc, "kept", None), out), file=sys.stderr, flush=True)
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
