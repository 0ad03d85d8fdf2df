"""Run configuration: built-in defaults ← configs/<model>.yaml (or --config) ← flags.

`RunConfig` declares every option of `python -m stream.run` once, on its fields (name,
type, default, help, docs; stream/options.py says how): the flags, the YAML checks and
docs/cli.md's tables come from there. A YAML file may set any option under its name
(`stream_id`, `compile: false` for --no-compile); an unknown key or a value of the wrong
type is a UserError naming the file and the key. Clip length, sampling interval, crop and
normalisation are not run options: they come from the model's metadata (`model.meta`),
the one place they live.

A run has one or more streams (`RunConfig.streams`, each a `StreamSpec`): one per
`--camera` flag (the Nth named by the Nth `--stream-id`, else camN, with the Nth `--mic`),
or the YAML `streams:` list when no `--camera` flag is given, or the one stream of the
run-level values. `camera`, `mic` and `stream_id` remain run-level values: the one
stream's in a one-camera run, and what a stream that does not say takes; the code that
serves streams reads `streams`.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import re
import sys
from pathlib import Path
from typing import Any

from engines import malloc
from engines.names import BACKENDS, PRECISIONS
from stream import options, rules
from stream.errors import UserError
from stream.options import option
from stream.pipeline.aggregate import Smoother
from stream.pipeline.metrics import parse_address
from stream.transport import wire
from stream.transport.publish import check_curve_options, check_endpoint
from stream.web import auth as web_auth  # the standard library alone: no aiohttp

LOG_LEVELS = ("debug", "info", "warning", "error")
#: --max-batch when it is left out on CUDA: the streams the run starts with, at most this
#: many (on the CPU: 1, see `engine_batch`).
MAX_BATCH_AUTO = 8

#: The keys of an entry of a YAML `streams:` list, and the option whose value and type
#: each takes (a key left out takes the run's value; an id left out is camN).
STREAM_KEYS = {
    "id": "stream_id",
    "camera": "camera",
    "mic": "mic",
    "size": "size",
    "fps": "fps",
    "loop": "loop",
    "stride": "stride",
}
#: What to do when --mic does not match --camera.
MIC_PER_CAMERA = "give --mic once per --camera, in the same order; none for a camera without sound"


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """One stream of a run: its id (topics `pred.<id>`, `status.<id>`), its sources and
    how they are read (`size` as --size, None: the source's own; `fps` None: the source's
    own), and the seconds between its windows."""

    id: str
    camera: str
    mic: str
    size: str | None
    fps: float | None
    loop: bool
    stride: float


@dataclasses.dataclass
class RunConfig:
    camera: str = option(
        "0",
        yaml_types=(str, int),
        path=True,
        repeat=True,
        help="camera index, video file, URL (http/rtsp/udp...) or 'synthetic' ({default}); "
        "each --camera is a stream (cam0, cam1, ...), and --camera flags replace a config "
        "file's streams: list",
        doc="camera index, video file (paced at its frame rate), URL (http, https, rtsp, rtp, "
        "udp, tcp, rtmp) or `synthetic` (a moving test pattern). Each `--camera` is a stream, "
        "`cam0`, `cam1`, … in order; `--camera` flags replace a config file's `streams` list",
    )
    mic: str = option(
        "default",
        yaml_types=(str, int),
        path=True,
        per_model=True,
        repeat=True,
        help="microphone: default, a device name or index, an audio/video file, "
        "synthetic (a beep every second), or none ({default}); with several --camera, "
        "one --mic per camera in the same order, or --mic none once for all",
        doc="`default`, a device name (or a unique part of it) or index, an audio/video file "
        "(its sound, in sync with the same file as `--camera`), `synthetic` (a beep every "
        "second), or `none`; video-only models say once that they do not use it. With several "
        "`--camera`: one `--mic` per camera in the same order (`none` for a camera without "
        "sound), `--mic none` once for all, or none at all (every stream takes the default)",
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
    max_batch: int | None = option(
        None,
        help="most windows, of different streams, that the engine runs in one call (default: "
        f"on CUDA the number of streams the run starts with, at most {MAX_BATCH_AUTO}; on the "
        "CPU 1)",
        doc="most windows, of different streams, that the engine runs in one call; the engine "
        "is built for batches up to this size (`1`: every window alone). Left out: on CUDA "
        "the number of streams the run starts with, so that a one-camera run builds no batch "
        "engine (give it when you will add streams with `stream.ctl`); on the CPU 1, since "
        "batches there cost latency for little throughput "
        "([performance.md](performance.md#many-streams))",
        doc_default=f"CUDA: streams at start, at most {MAX_BATCH_AUTO}; CPU: 1",
    )
    batch_wait: float = option(
        0.02,
        help="seconds the engine waits, once a window is due, for other streams' windows to "
        "join its batch; less than the stride ({default})",
        doc="seconds the engine waits, once a window is due, for other streams' windows to "
        "join its batch (never past a window's next tick); at least 0 and less than the "
        "smallest stride of the run's streams (left out, it is 0 when a stride is that short)",
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
    # The flag names a YAML file whose `events:` list this is; a config file gives the
    # list itself. Either way the rules are checked (stream/rules.py) before anything starts.
    events: list[rules.Rule] = option(  # noqa: RUF009 (option() returns a dataclasses.field)
        default_factory=list,
        yaml_types=(list,),
        path=True,
        help="YAML file of event rules (events: a list of name, labels, on, min_on, off, "
        "hold, ...): each stream publishes event.ID messages when they start and end; "
        "replaces a config file's events: list (default: none)",
        doc="YAML file of event rules (`events:`, a list of `name`, `labels`, `on`, `min_on`, "
        "`off`, `hold`, `cooldown`, `update_every`, `raw`): each stream publishes a start, "
        "updates and an end on `event.<stream-id>` ([events.md](events.md)). A config file "
        "gives the list itself under `events:`; the flag replaces it",
        doc_default="none",
    )
    publish: str = option(
        "tcp://127.0.0.1:5555",
        help="ZeroMQ endpoint to bind ({default}), or connect:tcp://HOST:PORT to publish "
        "through a python -m stream.proxy",
        doc="ZeroMQ endpoint to bind, or `connect:tcp://HOST:PORT` to connect to the frontend of "
        "a `python -m stream.proxy` instead ([deploy.md](deploy.md))",
    )
    allow_remote: bool = option(
        False,
        help="allow --publish, --control, --metrics and --web addresses other hosts can reach",
        doc="needed to bind an address other hosts can reach (`--publish`, `--control`, "
        "`--metrics`, `--web`)",
    )
    # None: no control socket (`--control none`, or `control: null` in YAML).
    control: str | None = option(
        "tcp://127.0.0.1:5554",
        help="ZeroMQ endpoint of the control socket, where python -m stream.ctl adds, removes "
        "and lists streams while the run runs; or none ({default})",
        doc="ZeroMQ endpoint to bind the control socket on: `python -m stream.ctl` adds, "
        "removes and lists streams there while the run runs (CURVE with the run's keys); "
        "`none`: no control socket",
    )
    # None: no metrics served.
    metrics: str | None = option(
        None,
        help="serve Prometheus metrics over HTTP on HOST:PORT, e.g. 127.0.0.1:9108 (default: off)",
        doc="serve Prometheus metrics over HTTP on `HOST:PORT` (e.g. `127.0.0.1:9108`; any path, "
        "`/metrics` by convention): per stream engine time and capture→publish, windows run, "
        "skipped and degraded, capture restarts, active events; subscriptions, batch sizes "
        "([metrics.md](metrics.md))",
        doc_default="off",
    )
    # None: no browser view.
    web: str | None = option(
        None,
        help="serve a live view in the browser on HOST:PORT, e.g. 127.0.0.1:8080: every "
        "stream's video, labels, events, latency and status (default: off)",
        doc="serve a live view in the browser on `HOST:PORT` (e.g. `127.0.0.1:8080`): every "
        "stream's video with its labels, events, latency and status ([web.md](web.md)); "
        "another address than loopback needs `--allow-remote` and `--web-token-file`",
        doc_default="off",
    )
    web_token_file: str | None = option(
        None,
        path=True,
        help="with --web: file whose one line is the token the browser must give "
        "(at least 16 characters); needed for an address other hosts can reach",
        doc="with `--web`: a file whose one line is the token a browser must give (at least "
        "16 characters; `Authorization: Bearer`, or `?token=` once, which sets a cookie); "
        "needed for an address other hosts can reach",
        doc_default="none",
    )
    web_fps: float = option(
        web_auth.DEFAULT_FPS,
        help="with --web: video frames per second per stream, at most ({default})",
        doc="with `--web`: video frames per second per stream, at most (JPEG frames; the "
        "capture and the windows do not change)",
    )
    web_width: int = option(
        web_auth.DEFAULT_WIDTH,
        help="with --web: video frames at most this many pixels wide, downscaled with the "
        "aspect kept ({default})",
        doc="with `--web`: video frames at most this many pixels wide (downscaled, the aspect "
        "kept)",
    )
    stream_id: str = option(
        "cam0",
        repeat=True,
        help="name of the stream in topics and messages ({default}); with several --camera, "
        "the Nth --stream-id names the Nth camera, and a camera without one is camN",
        doc="name of the stream in topics and messages; with several `--camera`, the Nth "
        "`--stream-id` names the Nth camera, and a camera without one is `camN` (N its place, "
        "from 0)",
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
    curve_server_key: str | None = option(
        None,
        path=True,
        help="with --publish connect:...: the proxy's public key (its server.key); "
        "--curve-secret-key is then this run's own NAME.key_secret",
        doc="with `--publish connect:tcp://HOST:PORT`: the proxy's public key (its `server.key`); "
        "`--curve-secret-key` is then this run's own client key `NAME.key_secret` "
        "([deploy.md](deploy.md))",
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
    # Filled by `resolve` (and __post_init__): YAML gives mappings, the run StreamSpecs.
    streams: list[StreamSpec] = option(  # noqa: RUF009 (option() returns a dataclasses.field)
        default_factory=list,
        flag=None,
        doc="the run's streams, one mapping each with the keys `id`, `camera`, `mic`, `size`, "
        "`fps`, `loop`, `stride` (e.g. `streams: [{id: door, camera: rtsp://door/stream, "
        "mic: none}, {id: yard, camera: 0, stride: 0.5}]`): a key an entry leaves out takes "
        "the run's value (the flag, else the file's key, else the default), an id left out is "
        "`camN` (N the entry's place, from 0); `--camera` flags replace the list",
    )
    # Not an option: the local endpoint (ipc://, in a private folder) that the inference
    # process's publisher binds besides --publish, without CURVE, for the process of the
    # browser view (--web). Set by the supervisor.
    web_endpoint: str | None = dataclasses.field(default=None, repr=False, compare=False)
    # Not an option: where each value came from ("--stride", "configs/x3d_xs.yaml", ...),
    # for log lines that say why a value is what it is. Filled by `resolve`.
    origins: dict[str, str] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.streams:  # a run of one stream: the run-level values
            self.streams = [
                StreamSpec(
                    id=self.stream_id,
                    camera=self.camera,
                    mic=self.mic,
                    size=self.size,
                    fps=self.fps,
                    loop=self.loop,
                    stride=self.stride,
                )
            ]

    def origin(self, name: str) -> str:
        """Where option `name` came from: a flag, a config file, or the built-in default."""
        return self.origins.get(name, "the built-in default")

    def validate(self) -> RunConfig:
        """Check every value; raises UserError with the flag's name and what to do."""
        check_source(self.size, self.fps, self.stride)
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
        self._check_streams()
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
        check_endpoint(self.publish, allow_remote=self.allow_remote, connect=True)
        if self.control is not None:
            check_endpoint(
                self.control,
                flag="--control",
                allow_remote=self.allow_remote,
                others="control this run",
            )
        if self.metrics is not None:
            parse_address(self.metrics, allow_remote=self.allow_remote)
        web_auth.check_video(
            self.web_fps, self.web_width, fps_flag="--web-fps", width_flag="--web-width"
        )
        if self.web is not None:
            web_token(self)
        check_curve_options(
            self.publish,
            curve_secret_key=self.curve_secret_key,
            curve_clients=self.curve_clients,
            curve_server_key=self.curve_server_key,
        )
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

    def _check_streams(self) -> None:
        """Each stream's id (valid, its own) and values, and the batching options against
        the streams. The run-level values are checked before with their flags' words, so a
        stream that takes them passes."""
        origin = self.origins.get("streams")  # "--camera", a config file, or none
        from_flags = origin == "--camera"
        file = f"config file {origin!r}: " if origin and not from_flags else ""
        seen: dict[str, int] = {}
        for i, spec in enumerate(self.streams):
            # From flags, only an id can be wrong here (the rest are the run's values).
            check_stream(spec, "--stream-id" if from_flags else f"{file}streams[{i}]")
            if spec.id in seen:
                how = (
                    "the Nth --stream-id names the Nth --camera, and a camera without one is camN"
                    if from_flags
                    else "an entry of streams: without an id: is camN, N its place"
                )
                raise UserError(
                    f"{file}stream id {spec.id!r} is given twice (streams[{seen[spec.id]}] and "
                    f"streams[{i}]): give each stream its own id ({how})"
                )
            seen[spec.id] = i
        if self.max_batch is not None and self.max_batch < 1:
            raise UserError(
                f"--max-batch {self.max_batch} must be >= 1 (1: every window runs alone)"
            )
        if not self.batch_wait >= 0:
            raise UserError(f"--batch-wait {self.batch_wait} must be >= 0 seconds (0: no wait)")
        smallest = min(self.streams, key=lambda spec: spec.stride)
        if not self.batch_wait < smallest.stride and "batch_wait" not in self.origins:
            # The default is for strides well above it: a run with a stride as short as
            # that waits for no batch (as every run did before batching) rather than being
            # refused for an option it did not give.
            self.batch_wait = 0.0
        if not self.batch_wait < smallest.stride:
            which = (
                f"the smallest stride of the streams ({smallest.stride:g} s, {smallest.id})"
                if len(self.streams) > 1
                else f"the stride ({smallest.stride:g} s)"
            )
            raise UserError(
                f"--batch-wait {self.batch_wait:g} must be less than {which}: a window would "
                f"wait for its batch past its next one; give e.g. --batch-wait "
                f"{min(RunConfig.batch_wait, smallest.stride / 2):g}"
            )

    def check_new_stream(self, spec: StreamSpec) -> None:
        """What a stream added while the run runs must pass (that its id is not in use is
        the caller's to check): UserError naming the stream."""
        check_stream(spec, f"stream {spec.id!r}")
        if not self.batch_wait < spec.stride:
            raise UserError(
                f"stream {spec.id!r}: --stride {spec.stride:g} must be more than the run's "
                f"--batch-wait {self.batch_wait:g}"
            )


def web_token(cfg: RunConfig) -> str | None:
    """--web and its token file checked (the address, --allow-remote with a token for one
    other hosts can reach, aiohttp installed): UserError otherwise. Returns the token of
    --web-token-file (None without one)."""
    import importlib.util

    if importlib.util.find_spec("aiohttp") is None:
        raise UserError("--web needs aiohttp, which is not installed: pip install 'avstream[web]'")
    token = None
    if cfg.web_token_file is not None:
        token = web_auth.read_token(cfg.web_token_file, flag="--web-token-file")
    web_auth.check_listen(
        cfg.web,
        allow_remote=cfg.allow_remote,
        token=token,
        flag="--web",
        token_flag="--web-token-file",
    )
    return token


def engine_batch(cfg: RunConfig, *, cuda: bool) -> int:
    """The largest batch the engine is built for: --max-batch, or when it is left out, on
    CUDA the streams the run starts with (at most MAX_BATCH_AUTO; one camera: 1, the engine
    built before batching), on the CPU 1: there a batch of 4 X3D-XS windows took 2.5 times
    one window's engine time for 1.1 to 1.5 times the throughput, and doubled the worst
    stream's capture→publish p99 (docs/performance.md, "Many streams")."""
    if cfg.max_batch is not None:
        return cfg.max_batch
    return min(MAX_BATCH_AUTO, len(cfg.streams)) if cuda else 1


def check_stream(spec: StreamSpec, where: str) -> None:
    """A stream's id and values: UserError '<where>: ...' in the words of the flags."""
    try:
        wire.check_stream_id(spec.id)
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None
    try:
        check_source(spec.size, spec.fps, spec.stride)
    except UserError as exc:
        raise UserError(f"{where} (id {spec.id}): {exc}") from None


def check_source(size: str | None, fps: float | None, stride: float) -> None:
    """A stream's capture size, rate and stride: UserError in the words of their flags."""
    if not stride > 0:
        raise UserError(f"--stride {stride} must be > 0 seconds (e.g. 0.25)")
    if fps is not None and not fps > 0:
        raise UserError(f"--fps {fps} must be > 0")
    parse_size(size)


def parse_size(size: str | None) -> tuple[int, int] | None:
    """'640x480' → (640, 480)."""
    if size is None:
        return None
    m = re.fullmatch(r"(\d{1,5})x(\d{1,5})", size)
    if not m or int(m[1]) == 0 or int(m[2]) == 0:
        raise UserError(f"--size {size!r} is not WIDTHxHEIGHT, e.g. 640x480")
    return int(m[1]), int(m[2])


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
    data = options.load_yaml(path, f"config file {str(path)!r}")
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
        if name == "streams":
            value = _yaml_streams(where, value)
        if name == "events":
            value = rules.parse(value, where)
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


def _yaml_streams(where: str, entries: list[Any]) -> list[dict[str, Any]]:
    """The entries of a YAML `streams:` list, each checked: {StreamSpec field: value} of
    the keys it gives."""
    if not entries:
        raise UserError(
            f"{where}: streams is empty: give one mapping per stream (id, camera, ...), "
            "or leave streams out"
        )
    declared = options.yaml_options(RunConfig)
    out = []
    for i, entry in enumerate(entries):
        at = f"{where}: streams[{i}]"
        if not isinstance(entry, dict):
            raise UserError(
                f"{at} must be a mapping with the keys {', '.join(STREAM_KEYS)}, "
                f"got {type(entry).__name__} {entry!r}"
            )
        spec: dict[str, Any] = {}
        for key, value in entry.items():
            name = STREAM_KEYS.get(key) if isinstance(key, str) else None
            if name is None:
                raise UserError(f"{at}: unknown key {key!r} (known keys: {', '.join(STREAM_KEYS)})")
            value = options.typed(declared[name], at, key, value)
            if declared[name].path and "\0" in value:
                raise UserError(
                    f"{at}: {key} {value!r} contains a NUL character (\\0): "
                    "give a file, device or URL without it"
                )
            spec[key] = value
        out.append(spec)
    return out


def _listed(value: str | list[str] | None) -> list[str]:
    """A repeatable flag's values: argparse gives a list, a caller of `resolve` a value."""
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def _check_counts(cameras: list[str], mics: list[str], ids: list[str]) -> None:
    """--mic and --stream-id name the streams of --camera, in the same order."""
    n = len(cameras)
    if len(ids) > max(n, 1):
        raise UserError(
            f"more --stream-id ({len(ids)}) than --camera ({n}): give at most one --stream-id "
            "per --camera, in the same order (a camera without one is camN)"
        )
    if len(mics) > max(n, 1):
        raise UserError(f"more --mic ({len(mics)}) than --camera ({n}): {MIC_PER_CAMERA}")
    if n > 1 and mics and len(mics) != n and mics != ["none"]:
        times = "once" if len(mics) == 1 else f"{len(mics)} times"
        raise UserError(
            f"--mic given {times} for {n} --camera: {MIC_PER_CAMERA} (or --mic none once, for all)"
        )


def resolve(flags: dict[str, Any]) -> RunConfig:
    """Merge defaults ← YAML ← flags (flags with value None were not given), and make the
    run's streams: from the --camera flags, else the YAML streams: list, else one."""
    given = {k: v for k, v in flags.items() if v is not None}
    paths = options.path_options(RunConfig)
    for name in paths:
        for value in _listed(given.get(name)):
            check_path_text(name, value)
    if isinstance(given.get("events"), str):  # --events FILE: its rules replace the config's
        given["events"] = rules.read_file(given["events"])
    cameras, mics, ids = (_listed(given.pop(name, None)) for name in ("camera", "mic", "stream_id"))
    _check_counts(cameras, mics, ids)
    if len(cameras) <= 1:  # one stream, or the YAML's streams: the flags are run-level values
        given.update(
            {
                name: v[0]
                for name, v in zip(("camera", "mic", "stream_id"), (cameras, mics, ids))
                if v
            }
        )
    elif mics == ["none"]:
        given["mic"] = "none"
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
    if isinstance(values.get("control"), str) and values["control"].lower() == "none":
        values["control"] = None
    listed = values.pop("streams", None)
    cfg = RunConfig(**values, origins=origins)  # one stream, of the run-level values
    if cameras:
        # The flags win over the YAML's streams: each --camera is a stream.
        cfg.origins["streams"] = "--camera"
        if len(cameras) > 1:
            cfg.streams = [
                StreamSpec(
                    id=ids[i] if i < len(ids) else f"cam{i}",
                    camera=camera,
                    mic=mics[i] if len(mics) == len(cameras) else cfg.mic,
                    size=cfg.size,
                    fps=cfg.fps,
                    loop=cfg.loop,
                    stride=cfg.stride,
                )
                for i, camera in enumerate(cameras)
            ]
    elif listed is not None:
        if "stream_id" in values:  # it would name no stream
            where = cfg.origin("streams")
            said = (
                f"--stream-id {cfg.stream_id} names one stream, but config file {where!r}"
                if cfg.origin("stream_id") == "--stream-id"
                else f"config file {where!r}: stream_id names one stream, but the file"
            )
            raise UserError(f"{said} has a streams: list: give each entry its id: instead")
        run_level = {key: getattr(cfg, name) for key, name in STREAM_KEYS.items()}
        cfg.streams = [
            StreamSpec(**{**run_level, "id": f"cam{i}", **entry}) for i, entry in enumerate(listed)
        ]
    return cfg.validate()
