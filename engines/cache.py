"""On-disk cache of compiled engines, shared by the TensorRT engine (GPU) and the
AOTInductor engine (CPU): where it lives, what a cache key is made of, and the progress
line of a long build. Files are written with `models._files.write_atomically`."""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import re
import threading
import time
from pathlib import Path

import torch

from models._files import cache_root

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """Where compiled engines are kept: `engines/` under the cache root."""
    return cache_root() / "engines"


def weights_digest(model: torch.nn.Module) -> str:
    """`model.weights_id` when it came from a checkpoint, else a digest of its weights:
    a randomly initialised model differs on every start, and its engine must too."""
    weights_id = getattr(model, "weights_id", None)
    if weights_id is not None:
        return str(weights_id)
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "init-" + h.hexdigest()[:16]


def model_options(model: torch.nn.Module) -> str:
    """The build options the model was created with (`model.options`: Motionformer's
    attention, a reduced width...), as canonical JSON: two models of one name and one
    checkpoint may still differ by them, and so must their engines."""
    options = getattr(model, "options", None) or {}
    return json.dumps(options, sort_keys=True, default=repr)


class CacheKey:
    """Mixin for a frozen dataclass of everything a compiled engine depends on, with
    `model` and `precision` among its fields: any change of a field means a rebuild.

    A `max_batch` of 1 is left out of the digest: an engine of one window a call keeps
    the key (and the cached file) it had before engines took batches."""

    @property
    def digest(self) -> str:
        fields = dataclasses.asdict(self)
        fields = {k: [list(s) for s in v] if k == "input_shapes" else v for k, v in fields.items()}
        if fields.get("max_batch") == 1:
            del fields["max_batch"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    @property
    def stem(self) -> str:
        """File name (without suffix): readable, and unique through the digest."""
        model = re.sub(r"[^A-Za-z0-9_.-]", "_", self.model)
        return f"{model}-{self.precision}-{self.digest[:16]}"


def write_meta(path: Path, key: CacheKey, build_s: float) -> None:
    """The key and the build time beside the cached file, in `path.json`, for people."""
    meta = {**dataclasses.asdict(key), "build_s": round(build_s, 1), "created": time.time()}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1))


def beside(path: Path, what: str) -> Path:
    """`<stem of path>.<what>.json`: a file about the cached engine at `path` (the bf16
    check's verdict), kept beside it and deleted with it (`remove_beside`)."""
    return path.with_name(f"{path.stem}.{what}.json")


def remove_beside(path: Path) -> None:
    """Delete the files `beside` names for `path`: their engine is gone or being rebuilt."""
    for found in path.parent.glob(f"{glob.escape(path.stem)}.*.json"):
        found.unlink(missing_ok=True)


def forget(path: Path) -> None:
    """Delete the cached engine at `path` with everything kept about it (its key in
    `path.json`, the files `beside` it): it no longer agrees with eager PyTorch, and the
    next start builds it afresh."""
    path.unlink(missing_ok=True)
    path.with_suffix(".json").unlink(missing_ok=True)
    remove_beside(path)


class Progress:
    """Logs `<what>: still <doing> (N s so far)` every `every` seconds while the block runs."""

    def __init__(self, what: str, doing: str = "building", every: float = 15.0):
        self.what = what
        self.doing = doing
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-progress", daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(self.every):
            log.info("%s: still %s (%.0f s so far)", self.what, self.doing, time.monotonic() - t0)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
