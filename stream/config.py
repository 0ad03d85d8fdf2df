"""Run configuration: built-in defaults ← configs/<model>.yaml (or --config) ← flags.

`RunConfig` declares every option of `python -m stream.run` once, on its fields (name,
type, default, help, docs; stream/options.py says how): the flags, the YAML checks and
docs/cli.md's tables come from there. A YAML file may set any option under its name
(`stream_id`, `compile: false` for --no-compile); an unknown key or a value of the wrong
type is a UserError naming the file and the key. Clip length, sampling interval, crop and
normalisation are not run options: they come from the model's metadata (`model.meta`),
the one place they live.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import ipaddress
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from engines import malloc
from engines.names import BACKENDS, PRECISIONS
from stream import options
from stream.errors import UserError
from stream.options import option
from stream.pipeline.aggregate import Smoother
from stream.transport import wire

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclasses.dataclass
class RunConfig:
    camera: str = option(
        "0",
        yaml_types=(str, int),
        path=True,
        help="camera index, video file, URL (http/rtsp/udp...) or 'synthetic' ({default})",
        doc="camera index, video file (paced at its frame rate), URL (http, https, rtsp, rtp, "
        "udp, tcp, rtmp) or `synthetic` (a moving test pattern)",
    )
    mic: str = option(
        "default",
        yaml_types=(str, int),
        path=True,
        per_model=True,
        help="microphone: default, a device name or index, an audio/video file, "
        "synthetic (a beep every second), or none ({default})",
        doc="`default`, a device name (or a unique part of it) or index, an audio/video file "
        "(its sound, in sync with the same file as `--camera`), `synthetic` (a beep every "
        "second), or `none`; video-only models say once that they do not use it",
    )
    model: str = option(
        "x3d_xs",
        help="model name ({default}); see models.available()",
        doc="one of `models.available()`: {models}",
    )
    # The file given with --config (None: configs/<model>.yaml, where there is one).
    config: str | None = option(
        None,
        yaml=False,
        path=True,
        help="YAML file of run options (default: configs/<model>.yaml)",
        doc="YAML file of run options",
        doc_default="`configs/<model>.yaml`",
    )
    weights: str | None = option(
        "kinetics400",
        path=True,
        per_model=True,
        help="checkpoint path, http(s) URL, kinetics400 (the model's "
        "published checkpoint), or none for random weights ({default})",
        doc="checkpoint path, http(s) URL, `kinetics400` (the official checkpoint, downloaded "
        "once into `$AVSTREAM_CACHE/weights`), or `none` (random weights: predictions are "
        "meaningless, said once in the log and flagged `random_weights` in every message)",
    )
    engine: str = option(
        "auto",
        choices=BACKENDS,
        help="inference engine ({default})",
        doc="{choices} ([architecture.md](architecture.md#engines))",
    )
    device: str | None = option(
        None,
        help="cpu, cuda or cuda:N (default: cuda when present)",
        doc="`cpu`, `cuda`, `cuda:N`",
        doc_default="cuda if present",
    )
    # engines.create picks fp16 / bf16 / fp32 for the device and says why. A YAML null is
    # auto (what a config file of before auto says).
    precision: str = option(
        "auto",
        choices=PRECISIONS,
        nullable=True,
        help="auto (the default: fp16 on CUDA, bf16 on a CPU with AMX or AVX512-BF16, else fp32; "
        "the log says which and why), fp32, fp16 or bf16",
        doc="`auto`: fp16 on CUDA, bf16 on a CPU with AMX or AVX512-BF16 (checked against fp32, "
        "[below](#--precision-auto)), fp32 elsewhere; or `fp32`, `fp16` (CUDA), `bf16` (CUDA, "
        "and CPUs with AVX512-BF16 or AMX), taken as asked",
    )
    compile: bool = option(
        True,
        flag="--no-compile",
        help="run eager PyTorch instead of compiling the model for this machine (the first "
        "start compiles and caches under $AVSTREAM_CACHE/engines; later ones load in a second)",
        doc="run eager PyTorch instead of compiling the model for this machine (the first start "
        "compiles and caches under `$AVSTREAM_CACHE/engines`; later ones load in a second)",
    )
    threads: int | None = option(
        None,
        help="CPU threads of the engine (default: one per core)",
        doc="CPU threads of the engine, at most the cores this process may use "
        "(`os.sched_getaffinity`; more is an error); on 2 cores, 1 can suit X3D-XS "
        "([performance.md](performance.md#kept-one-engine-thread-per-core))",
        doc_default="one per core",
    )
    malloc: str = option(
        "auto",
        path=True,
        help="memory allocator of the inference process: auto (tcmalloc where installed, "
        "which makes the CPU engine faster), tcmalloc, glibc, or the path of an allocator's .so "
        "({default})",
        doc="memory allocator of the inference process: `auto` (tcmalloc where "
        "installed, else glibc's), `tcmalloc`, `glibc`, or the path of an allocator's `.so`",
    )
    stride: float = option(
        0.25,
        per_model=True,
        help="seconds between windows ({default})",
        doc="seconds between windows; `--help` lists each model's default (`configs/<model>.yaml`)",
    )
    smoothing: str = option(
        "ema:0.5",
        per_model=True,
        help="ema:ALPHA, mean:K or none ({default})",
        doc="`ema:ALPHA` (0 < ALPHA ≤ 1, the weight of the newest window), `mean:K` (last K "
        "windows) or `none`",
    )
    topk: int = option(
        5, per_model=True, help="labels per prediction ({default})", doc="labels per prediction"
    )
    publish: str = option(
        "tcp://127.0.0.1:5555",
        help="ZeroMQ endpoint to bind ({default})",
        doc="ZeroMQ endpoint to bind",
    )
    allow_remote: bool = option(
        False,
        help="allow a --publish address other hosts can reach",
        doc="needed to bind an address other hosts can reach",
    )
    stream_id: str = option(
        "cam0",
        help="name of this stream in topics and messages ({default})",
        doc="name of the stream in topics and messages",
    )
    duration: float | None = option(
        None,
        help="seconds of running, after start-up: counted from the 'running' log line, so "
        "loading and compiling the model do not count (default: run until Ctrl-C)",
        doc="seconds of running, after start-up: counted from the `running` log line, so "
        "loading and compiling the model do not count",
        doc_default="until Ctrl-C",
    )
    loop: bool = option(
        False,
        help="repeat a video file instead of stopping at its end",
        doc="repeat a video file instead of stopping at its end",
    )
    preview: bool = option(
        False,
        help="show the frames and the current top-k in a window",
        doc="window with the frame and the current top-k (q or Esc closes it and stops the run); "
        "needs a display (`DISPLAY` or `WAYLAND_DISPLAY`), checked before anything starts",
    )
    size: str | None = option(
        None,
        help="capture size WIDTHxHEIGHT for cameras and synthetic (e.g. 640x480)",
        doc="capture size `WxH` (cameras, synthetic)",
        doc_default="source's own",
    )
    fps: float | None = option(
        None,
        help="capture rate for cameras and synthetic",
        doc="capture rate (cameras, synthetic)",
        doc_default="source's own",
    )
    log_level: str = option("info", choices=LOG_LEVELS, help="{default}", doc="{choices}")
    curve_secret_key: str | None = option(
        None,
        path=True,
        help="encrypt with ZeroMQ CURVE: the server's *.key_secret (python -m stream.keys)",
        doc="encrypt with ZeroMQ CURVE: the server's `*.key_secret` "
        "([stream.keys](#python--m-streamkeys))",
        doc_default="off",
    )
    curve_clients: str | None = option(
        None,
        path=True,
        help="with --curve-secret-key: folder of the public keys of the clients allowed in",
        doc="with `--curve-secret-key`: folder of the public keys of the clients allowed in",
        doc_default="off",
    )
    labels: list[str] | None = option(  # noqa: RUF009 (option() returns a dataclasses.field)
        None,
        flag=None,
        doc="the class names, one per class (default: the checkpoint's; Kinetics-400's for 400 "
        "classes)",
    )
    num_classes: int | None = option(
        None, flag=None, doc="size of the classifier, when no `labels` are given"
    )
    model_options: dict[str, Any] = option(  # noqa: RUF009 (option() returns a dataclasses.field)
        default_factory=dict,
        flag=None,
        doc="a mapping of the model family's build options, passed to "
        "`models.create(name, **options)` (default `{}`: the published architecture)",
    )
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
            raise UserError(
                f"--threads {self.threads} must be >= 1 (leave it out for one per core)"
            )
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
                raise UserError(
                    f"{len(self.labels)} labels for num_classes {self.num_classes}: "
                    "give one name per class"
                )
        if self.engine not in BACKENDS:
            raise UserError(
                f"--engine {self.engine!r} is not known: use one of {', '.join(BACKENDS)}"
            )
        if self.precision not in PRECISIONS:
            raise UserError(
                f"--precision {self.precision!r} is not known: use one of {', '.join(PRECISIONS)}"
            )
        try:
            malloc.resolve(self.malloc)
        except ValueError as exc:
            raise UserError(f"--malloc {self.malloc!r}: {exc}") from None
        if self.log_level not in LOG_LEVELS:
            raise UserError(
                f"--log-level {self.log_level!r} is not known: use one of {', '.join(LOG_LEVELS)}"
            )
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
            raise UserError(
                "--curve-clients needs --curve-secret-key (the server's *.key_secret file)"
            )
        if self.curve_secret_key is not None:
            from stream.transport.publish import load_curve_keys

            load_curve_keys(self.curve_secret_key, secret=True)
        if self.curve_clients is not None and not Path(self.curve_clients).is_dir():
            raise UserError(
                f"--curve-clients {self.curve_clients!r} is not a folder of client public keys"
            )
        return self


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
        raise UserError(
            f"config file {str(path)!r} is not valid YAML{at}: fix the syntax"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must be a mapping of option: value")
    where = f"config file {str(path)!r}"
    out: dict[str, Any] = {}
    for key, value in data.items():
        name, value = options.yaml_value(RunConfig, where, key, value)
        if name == "labels" and value is not None and not all(isinstance(x, str) for x in value):
            raise UserError(f"{where}: labels must be a list of class names (strings)")
        if name == "model_options" and not all(isinstance(k, str) and k for k in value):
            raise UserError(
                f"{where}: model_options must map option names to values, "
                f"got keys {sorted(map(repr, value))}"
            )
        out[name] = value
    weights = out.get("weights")
    if (
        isinstance(weights, str)
        and not weights.startswith(("http://", "https://"))
        and not Path(weights).is_absolute()
    ):
        # A checkpoint next to its config (what python -m stream.train writes) is found
        # wherever the folder is moved to.
        beside = path.parent / weights
        if beside.is_file():
            out["weights"] = str(beside)
    return out


def resolve(flags: dict[str, Any]) -> RunConfig:
    """Merge defaults ← YAML ← flags (flags with value None were not given)."""
    given = {k: v for k, v in flags.items() if v is not None}
    paths = options.path_options(RunConfig)
    for name in paths:
        check_path_text(name, given.get(name))
    config_path = given.get("config")
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
        for name in paths:
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
