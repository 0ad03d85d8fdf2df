"""Run configuration: built-in defaults ← configs/<model>.yaml (or --config) ← flags.

A YAML file may set any run option under the flag's name (with `_` for `-`); an
unknown key or a value of the wrong type is a UserError naming the file and the key.
Clip length, sampling interval, crop and normalisation are not run options: they come
from the model's metadata (`model.meta`), the one place they live.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import ipaddress
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from engines.names import BACKENDS, PRECISIONS
from engines import malloc
from stream.transport import wire
from stream.pipeline.aggregate import Smoother
from stream.errors import UserError


@dataclasses.dataclass
class RunConfig:
    camera: str = "0"
    mic: str = "default"
    model: str = "x3d_xs"
    weights: str | None = "kinetics400"
    num_classes: int | None = None
    labels: list[str] | None = None  # class names (YAML only); default: the checkpoint's
    engine: str = "auto"
    device: str | None = None
    precision: str = "auto"  # engines.create picks fp16 / bf16 / fp32 for the device and says why
    compile: bool = True  # compile the model for this machine (cached); False: eager PyTorch
    threads: int | None = None  # CPU threads of the engine; None: torch's default (one per core)
    malloc: str = "auto"  # the inference process's allocator (engines.malloc)
    stride: float = 0.25
    smoothing: str = "ema:0.5"
    topk: int = 5
    publish: str = "tcp://127.0.0.1:5555"
    stream_id: str = "cam0"
    duration: float | None = None
    loop: bool = False
    preview: bool = False
    size: str | None = None  # capture size WxH (camera, synthetic)
    fps: float | None = None  # capture rate (camera, synthetic)
    log_level: str = "info"
    allow_remote: bool = False
    curve_secret_key: str | None = None  # server's *.key_secret: encrypt with CURVE
    curve_clients: str | None = None  # folder of client public keys: only they may subscribe
    # The model's build options, passed to models.create (YAML only), e.g. {fusion: a_f_s}.
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Not an option: where each value came from ("--stride", "configs/x3d_xs.yaml", ...),
    # for log lines that say why a value is what it is. Filled by `resolve`.
    origins: dict[str, str] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def origin(self, name: str) -> str:
        """Where option `name` came from: a flag, a config file, or the built-in default."""
        return self.origins.get(name, "the built-in default")

    def validate(self) -> RunConfig:
        """Check every value; raises UserError with the flag's name and what to do."""
        if not self.stride > 0:
            raise UserError(f"--stride {self.stride} must be > 0 seconds (e.g. 0.25)")
        if self.topk < 1:
            raise UserError(f"--topk {self.topk} must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads {self.threads} must be >= 1 (leave it out for one per core)")
        if self.threads is not None and self.threads > (cores := usable_cores()):
            # More threads than cores only make the engine's threads wait for each other.
            raise UserError(
                f"--threads {self.threads} is more than the {cores} CPU core(s) this process "
                f"may use: give at most {cores}, or leave --threads out for one per core"
            )
        if self.duration is not None and not self.duration > 0:
            raise UserError(f"--duration {self.duration} must be > 0 seconds")
        if self.fps is not None and not self.fps > 0:
            raise UserError(f"--fps {self.fps} must be > 0")
        if self.num_classes is not None and self.num_classes < 1:
            raise UserError(f"num_classes {self.num_classes} must be >= 1")
        if self.labels is not None:
            if not self.labels or not all(isinstance(x, str) and x.strip() for x in self.labels):
                raise UserError("labels must be a non-empty list of class names (one per class)")
            if len(set(self.labels)) != len(self.labels):
                raise UserError("labels name a class more than once: give each class its own name")
            if self.num_classes is not None and self.num_classes != len(self.labels):
                raise UserError(f"{len(self.labels)} labels for num_classes {self.num_classes}: give one name per class")
        if self.engine not in BACKENDS:
            raise UserError(f"--engine {self.engine!r} is not known: use one of {', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision {self.precision!r} is not known: use one of {', '.join(PRECISIONS)}")
        try:
            malloc.resolve(self.malloc)
        except ValueError as exc:
            raise UserError(f"--malloc {self.malloc!r}: {exc}") from None
        if self.log_level not in LOG_LEVELS:
            raise UserError(f"--log-level {self.log_level!r} is not known: use one of {', '.join(LOG_LEVELS)}")
        try:
            wire.check_stream_id(self.stream_id)
        except ValueError as exc:
            raise UserError(f"--stream-id: {exc}") from None
        options = self.model_options
        if not isinstance(options, dict) or not all(isinstance(k, str) and k for k in options):
            raise UserError(
                "model_options must map option names (strings) to values, "
                "e.g. model_options: {fusion: a_f_s}"
            )
        if self.preview and not display_available():
            raise UserError(
                "--preview needs a display but neither DISPLAY nor WAYLAND_DISPLAY is set: "
                "run without --preview, or from a desktop session"
            )
        Smoother(self.smoothing)  # raises UserError when malformed
        parse_size(self.size)
        check_endpoint(self.publish, allow_remote=self.allow_remote)
        if self.curve_clients is not None and self.curve_secret_key is None:
            raise UserError("--curve-clients needs --curve-secret-key (the server's *.key_secret file)")
        if self.curve_secret_key is not None:
            from stream.transport.publish import load_curve_keys

            load_curve_keys(self.curve_secret_key, secret=True)
        if self.curve_clients is not None and not Path(self.curve_clients).is_dir():
            raise UserError(f"--curve-clients {self.curve_clients!r} is not a folder of client public keys")
        return self


LOG_LEVELS = ("debug", "info", "warning", "error")

_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig) if f.name != "origins"}
# What a YAML value may be, per key (None is allowed where the default is None).
_TYPES: dict[str, tuple[type, ...]] = {
    "camera": (str, int), "mic": (str, int), "model": (str,), "weights": (str,),
    "num_classes": (int,), "labels": (list,), "engine": (str,), "device": (str,), "precision": (str,),
    "compile": (bool,), "threads": (int,), "malloc": (str,),
    "stride": (int, float), "smoothing": (str,), "topk": (int,), "publish": (str,),
    "stream_id": (str,), "duration": (int, float), "loop": (bool,), "preview": (bool,),
    "size": (str,), "fps": (int, float), "log_level": (str,), "allow_remote": (bool,),
    "curve_secret_key": (str,), "curve_clients": (str,), "model_options": (dict,),
}
#: Options that name a file, a folder or a device: the OS takes no NUL character in them.
_PATHS = ("config", "camera", "mic", "weights", "malloc", "curve_secret_key", "curve_clients")


_NULLABLE = {
    "weights", "num_classes", "labels", "device", "precision", "threads", "duration", "size", "fps", "curve_secret_key", "curve_clients",
}


def parse_size(size: str | None) -> tuple[int, int] | None:
    """'640x480' → (640, 480)."""
    if size is None:
        return None
    m = re.fullmatch(r"(\d{1,5})x(\d{1,5})", size)
    if not m or int(m[1]) == 0 or int(m[2]) == 0:
        raise UserError(f"--size {size!r} is not WIDTHxHEIGHT, e.g. 640x480")
    return int(m[1]), int(m[2])


def check_endpoint(endpoint: str, *, allow_remote: bool = False) -> None:
    """A tcp:// endpoint; one other hosts can reach only with `allow_remote`."""
    m = re.fullmatch(r"tcp://(\[[^\]]+\]|[^:/]+):(\d{1,5})", endpoint)
    if not m or not 0 < int(m[2]) < 65536:
        raise UserError(f"--publish {endpoint!r} is not an endpoint like tcp://127.0.0.1:5555")
    host = m[1].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise UserError(
            f"--publish {endpoint!r} would let other hosts subscribe: add --allow-remote "
            "if that is what you want, or publish on 127.0.0.1"
        )


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a container's or taskset's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def display_available() -> bool:
    """Whether a window can open: on Linux an X11 or Wayland display must be named."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def check_path_text(option: str, value: object) -> None:
    """A NUL character cannot be part of a file name, a device or a URL the OS is given:
    say so here instead of as a ValueError wherever the path is first opened."""
    if isinstance(value, str) and "\0" in value:
        flag = "--" + option.replace("_", "-")
        raise UserError(
            f"{flag} {value!r} contains a NUL character (\\0): "
            "give a file, device or URL without it"
        )


@functools.cache
def model_defaults(option: str) -> dict[str, Any]:
    """{model: value} of `option` in each shipped configs/<model>.yaml that sets it (for --help)."""
    out: dict[str, Any] = {}
    for entry in sorted(importlib.resources.files("configs").iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        data = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
        if isinstance(data, dict) and option in data:
            out[entry.name.removesuffix(".yaml")] = data[option]
    return out


def builtin_config(model: str) -> Path | None:
    """configs/<model>.yaml shipped with the package, if there is one."""
    path = importlib.resources.files("configs").joinpath(f"{model}.yaml")
    return Path(str(path)) if path.is_file() else None


def read_yaml(path: Path) -> dict[str, Any]:
    """Read and check a config file; every problem is one UserError line."""
    check_path_text("config", str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {str(path)!r} cannot be read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"config file {str(path)!r} is not valid YAML{at}: fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must be a mapping of option: value")
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in _FIELDS:
            known = ", ".join(sorted(_FIELDS))
            raise UserError(f"config file {str(path)!r}: unknown key {key!r} (known keys: {known})")
        if value is None and name in _NULLABLE:
            out[name] = None
            continue
        if isinstance(value, bool) and bool not in _TYPES[name] or not isinstance(value, _TYPES[name]):
            expected = " or ".join(t.__name__ for t in _TYPES[name])
            raise UserError(
                f"config file {str(path)!r}: {key} must be {expected}, got {type(value).__name__} {value!r}"
            )
        if name == "labels" and not all(isinstance(x, str) for x in value):
            raise UserError(f"config file {str(path)!r}: labels must be a list of class names (strings)")
        if name == "model_options" and not all(isinstance(k, str) and k for k in value):
            raise UserError(
                f"config file {str(path)!r}: model_options must map option names to values, "
                f"got keys {sorted(map(repr, value))}"
            )
        out[name] = str(value) if name in ("camera", "mic") else value
    weights = out.get("weights")
    if isinstance(weights, str) and not weights.startswith(("http://", "https://")) and not Path(weights).is_absolute():
        # A checkpoint next to its config (what python -m stream.train writes) is found
        # wherever the folder is moved to.
        beside = path.parent / weights
        if beside.is_file():
            out["weights"] = str(beside)
    return out


def resolve(flags: dict[str, Any]) -> RunConfig:
    """Merge defaults ← YAML ← flags (flags with value None were not given)."""
    given = {k: v for k, v in flags.items() if v is not None}
    for name in _PATHS:
        check_path_text(name, given.get(name))
    config_path = given.pop("config", None)
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if config_path is not None:
        path, shown = Path(config_path), config_path
    else:
        model = given.get("model", RunConfig.model)
        path = builtin_config(model)
        shown = f"configs/{model}.yaml"
    if path is not None:
        from_file = read_yaml(path)
        for name in _PATHS:
            check_path_text(name, from_file.get(name))
        values.update(from_file)
        origins.update(dict.fromkeys(from_file, shown))
    values.update(given)
    origins.update({k: "--" + k.replace("_", "-") for k in given})
    if isinstance(values.get("weights"), str) and values["weights"].lower() == "none":
        values["weights"] = None
    if values.get("precision", "auto") is None:  # `precision: null` in a YAML file of before auto
        values["precision"] = "auto"
    return RunConfig(**values, origins=origins).validate()
