"""Finding, downloading, reading, strictly loading and saving checkpoints.

Every failure is a `WeightsError` whose message is one line naming the file or URL and
what to do, because the command line prints it as the user's only error line.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import torch
from tqdm import tqdm

from models._files import cache_root, first_line, write_atomically
from models._registry import WeightsError

if TYPE_CHECKING:
    from torch import nn

#: Where the official pytorchvideo Kinetics-400 checkpoints live (pytorchvideo's
#: `models/hub/x3d.py`); AVSTREAM_WEIGHTS_BASE_URL overrides it (tests, mirrors).
ZOO_BASE_URL = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/"
ZOO_KEYWORD = "kinetics400"

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_SHOWN_KEYS = 3  # names shown per list in a "does not fit" message

# Offline, a user can still bring the file over, or try the whole pipeline with random weights.
_FETCH_HINT = (
    "download the file another way and pass its path with --weights PATH, "
    "or try the pipeline with random weights: --weights none"
)
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pyth", ".ckpt", ".bin")


def cache_dir() -> Path:
    """Where downloads are kept: `weights/` under the cache root."""
    return cache_root() / "weights"


def resolve(
    weights: str | os.PathLike[str], *, model: str, zoo_file: str | None
) -> tuple[Path, str]:
    """Turn a `weights=` value into a local file, downloading if needed.

    Returns the path and a short description of the source for error messages.
    """
    spec = os.fspath(weights)
    if spec == ZOO_KEYWORD:
        if zoo_file is None:
            raise WeightsError(
                f"{model} has no official {ZOO_KEYWORD} checkpoint; pass a checkpoint path or URL"
            )
        base = os.environ.get("AVSTREAM_WEIGHTS_BASE_URL")
        if zoo_file.startswith(("http://", "https://")):
            # A family hosted elsewhere (torchvision's MViT): a full URL. The override
            # still applies: a mirror holds the file under the same name.
            spec = zoo_file if not base else base.rstrip("/") + "/" + zoo_file.rsplit("/", 1)[1]
        else:
            spec = (base or ZOO_BASE_URL).rstrip("/") + "/" + zoo_file
    if spec.startswith(("http://", "https://")):
        # Official files whose publisher gives a hash (torchvision's file names carry the
        # SHA-256 prefix, torch.hub's convention) are checked against it.
        expected = published_sha256(zoo_file) if os.fspath(weights) == ZOO_KEYWORD else None
        official = os.fspath(weights) == ZOO_KEYWORD
        path = download(spec, sha256_prefix=expected, official=official)
        return path, f"{spec} (cached as {path})"
    try:
        path = Path(spec).expanduser()
    except RuntimeError:  # ~name of a user this machine does not have: a file not found
        path = Path(spec)
    if path.is_dir():
        raise WeightsError(f"weights {path} is a folder: {_folder_hint(path)}")
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} not found; pass an existing checkpoint file, "
            f"an http(s) URL or {ZOO_KEYWORD!r}"
        )
    return path, str(path)


_HUB_HASH = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


def published_sha256(zoo_file: str | None) -> str | None:
    """The SHA-256 prefix an official file name carries (`mvit_v1_b-dbeb1030.pth`), if any."""
    m = _HUB_HASH.search(zoo_file or "")
    return m[1] if m else None


def download(url: str, *, sha256_prefix: str | None = None, official: bool = False) -> Path:
    """Download `url` into the cache once; later calls return the cached file unrequested.

    The body goes to a temporary file in the cache folder that is renamed only when
    complete (and, with `sha256_prefix`, only when its SHA-256 starts with it), so an
    interrupted, corrupt or substituted download never leaves a file that looks finished.
    `official`: the URL is the zoo's, not the user's (an error line does not ask to check it).
    """
    name = Path(urllib.parse.urlsplit(url).path).name or "weights"
    # The URL's hash keeps two servers' X3D_XS.pyth apart.
    dest = cache_dir() / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"
    if dest.is_file():
        return dest
    try:
        with write_atomically(dest) as tmp:
            with open(tmp, "wb") as out:
                _fetch(url, out, dest, official)
            if sha256_prefix is not None:
                got = _sha256(tmp)
                if not got.startswith(sha256_prefix):
                    raise WeightsError(
                        f"download of {url} is not the published file: its SHA-256 is "
                        f"{got[:16]}..., the publisher's starts {sha256_prefix}; try again, or "
                        "download it yourself and pass its path as weights (--weights PATH)"
                    )
    except OSError as exc:  # the cache folder, the temporary file or the rename
        raise _cache_error(dest.parent, exc) from None
    return dest


def _fetch(url: str, out: BinaryIO, dest: Path, official: bool = False) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "avstream"})
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        raise WeightsError(
            f"cannot download {url}: HTTP {exc.code} {exc.reason}; check the URL, or {_FETCH_HINT}"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _network_error(url, exc, official) from None
    total = int(response.headers.get("Content-Length") or 0) or None
    received = 0
    # A bar on a terminal only (tqdm's rule: none in a log or a pipe), gone at the end;
    # the line printed then says what was downloaded, also in a log.
    bar = tqdm(
        total=total,
        desc=f"downloading {url}",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=None,
        leave=False,
    )
    with response, bar:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise _network_error(url, exc, official) from None
            if not chunk:
                break
            try:
                out.write(chunk)
            except OSError as exc:
                raise _cache_error(dest.parent, exc) from None
            received += len(chunk)
            bar.update(len(chunk))
    if total is not None and received != total:
        raise WeightsError(
            f"download of {url} stopped after {received} of {total} bytes; "
            f"try again, or {_FETCH_HINT}"
        )
    size = f"{received}/{total} bytes (100%)" if total else f"{received} bytes"
    print(f"downloaded {url}: {size}", file=sys.stderr, flush=True)


def _network_error(url: str, exc: BaseException, official: bool = False) -> WeightsError:
    reason = getattr(exc, "reason", None) or exc
    check = "the network connection" if official else "the network connection and the URL"
    return WeightsError(
        f"cannot download {url}: {first_line(reason)}; check {check}, or {_FETCH_HINT}"
    )


def _folder_hint(folder: Path) -> str:
    """What to pass instead of a folder: its checkpoint files, if it holds any."""
    try:
        found = sorted(
            p.name for p in folder.iterdir() if p.suffix in _CHECKPOINT_SUFFIXES and p.is_file()
        )
    except OSError:
        found = []
    hint = "pass a checkpoint file, not a folder (--weights PATH/TO/FILE.pt)"
    if found:
        shown = ", ".join(found[:_SHOWN_KEYS]) + (" ..." if len(found) > _SHOWN_KEYS else "")
        hint = f"pass one of its checkpoint files ({shown}), e.g. --weights {folder / found[0]}"
    return hint


def _cache_error(folder: Path, exc: OSError) -> WeightsError:
    return WeightsError(
        f"cannot write the weights cache {folder}: {first_line(exc)}; "
        f"set AVSTREAM_CACHE to a writable folder with free space"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: Path, source: str) -> tuple[dict[str, torch.Tensor], str, dict]:
    """Read `{"model_state": sd, ...}` or a plain state dict.

    Returns the state dict, the file's id (the first 16 hex digits of its sha256, for
    caches keyed on weights) and what a checkpoint written by `save_checkpoint` says
    about the model: `{"options": {...}, "labels": [...]}` (each only when present; the
    options of an older checkpoint's "arch" entry).
    """
    hint = "pass a PyTorch checkpoint saved with torch.save"
    if _is_inside(path, cache_dir()):
        hint = f"delete {path} to download it again"
    try:
        digest = _sha256(path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (a corrupt file makes torch.load raise anything)
        raise WeightsError(f"cannot read weights {source}: {_load_failure(exc)}; {hint}") from None
    state, extras = checkpoint, {}
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model_state"), dict):
        state, extras = checkpoint["model_state"], _checkpoint_extras(checkpoint, source)
    if not isinstance(state, dict) or not state:
        raise WeightsError(
            f"weights {source} hold no state dict (found {type(checkpoint).__name__}); "
            f"pass a file with {{'model_state': state_dict}} or a plain state dict"
        )
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(
            f"weights {source} are not a state dict: {len(bad)} entries are not tensors "
            f"({_names([str(k) for k in bad])}); pass a file with {{'model_state': state_dict}} "
            f"or a plain state dict"
        )
    # A checkpoint saved from a DistributedDataParallel wrapper prefixes every key.
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state), digest[:16], extras


def _checkpoint_extras(checkpoint: dict, source: str) -> dict:
    extras: dict = {}
    # "arch": what checkpoints written before build options had a name of their own held
    # (SlowFast / AVSlowFast reduced-network options, all of them options today). Such a
    # file may have an "options" key of another meaning beside it (stream.train's last.pt
    # kept its training options there), so "arch" wins where both are present.
    key = "arch" if "arch" in checkpoint else "options"
    options = checkpoint.get(key)
    if options is not None:
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise WeightsError(
                f"weights {source}: {key!r} must be a dict of build options, got {options!r}"
            )
        if options:
            extras["options"] = dict(options)
    labels = checkpoint.get("labels")
    if labels is not None:
        if not isinstance(labels, (list, tuple)) or not all(isinstance(x, str) for x in labels):
            raise WeightsError(f"weights {source}: 'labels' must be a list of class names")
        extras["labels"] = list(labels)
    return extras


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str], **extra: object) -> Path:
    """Write `model` so that `models.create(meta.name, weights=path)` rebuilds it alone:
    `{"model_state", "model", "options", "labels", **extra}` (`options`: the build options
    it was created with), loadable with `torch.load(weights_only=True)` (so `extra` holds
    only tensors, numbers, strings, lists and dicts). The file appears complete or not at
    all."""
    path = Path(path)
    checkpoint = {
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model": model.meta.name,
        "options": plain(getattr(model, "options", {}) or {}),
        "labels": list(model.meta.labels),
    }
    clash = sorted(checkpoint.keys() & extra.keys())
    if clash:  # an extra under one of these names would make the file unloadable as weights
        raise ValueError(f"save_checkpoint: {', '.join(clash)} are the checkpoint's own keys")
    checkpoint.update(extra)
    with write_atomically(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


def plain(value: object) -> object:
    """Tuples to lists, recursively (what weights_only loading accepts)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def load_strict(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    source: str,
    name: str,
    fresh_prefixes: tuple[str, ...] = (),
) -> list[str]:
    """Load `state` so that every checkpoint tensor lands and every model tensor is set.

    BatchNorm's `num_batches_tracked` counters may be absent (they do not affect eval).
    Model tensors whose keys start with one of `fresh_prefixes` may be absent too (a
    checkpoint of part of the network): they keep their initialisation and their keys are
    returned; everything else stays strict.
    """
    expected = model.state_dict()
    absent = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    fresh = [k for k in absent if fresh_prefixes and k.startswith(fresh_prefixes)]
    missing = [k for k in absent if not (fresh_prefixes and k.startswith(fresh_prefixes))]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected: {_names(unexpected)}")
        if mismatched:
            shown = [f"{k} checkpoint {list(a)} vs model {list(b)}" for k, a, b in mismatched]
            parts.append(f"mis-shaped: {_names(shown)}")
        raise WeightsError(
            f"weights {source} do not fit {name}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(mismatched)} mis-shaped keys "
            f"({'; '.join(parts)}); pass a checkpoint made for {name}",
            missing=missing,
            unexpected=unexpected,
            mismatched=mismatched,
        )
    model.load_state_dict(state, strict=False)
    return fresh


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN_KEYS])
    if len(items) > _SHOWN_KEYS:
        shown += f" ... and {len(items) - _SHOWN_KEYS} more"
    return shown


def _load_failure(exc: BaseException) -> str:
    text = str(exc)
    # weights_only refusals bury the reason after a long preamble about torch 2.6.
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = first_line(text.split(marker, 1)[1])
        return f"not a plain tensor checkpoint (torch.load weights_only: {detail})"
    return f"{type(exc).__name__}: {first_line(exc)}"


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False
