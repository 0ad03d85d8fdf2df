"""`python -m stream.run`: the command that starts the pipeline.

It parses the flags and the YAML config into a checked `RunConfig` and hands it to the
supervisor (stream/pipeline/supervisor.py), which starts the capture and inference
processes and owns the shared memory.

Exit status: 0 after SIGINT/SIGTERM, --duration or the end of a file; 2 for bad input
(one line on stderr that names the problem and what to do); 1 when a process fails
while running. Every exit path stops the children and unlinks the shared memory.
"""

from __future__ import annotations

from stream._deps import require_pipeline

require_pipeline("python -m stream.run")  # before the imports that need the `run` extra

import argparse
import logging
import sys

from engines.names import BACKENDS, PRECISIONS
from stream import config
from stream.errors import ArgumentParser, UserError, error_line
from stream.pipeline.proc import setup_logging
from stream.pipeline.ring import sweep_stale_segments
from stream.pipeline.supervisor import Supervisor

log = logging.getLogger("stream.run")


def model_default(option: str) -> str:
    """The help's default of an option each model's shipped config may set: one value, or
    which model's config says what."""
    base = getattr(config.RunConfig, option)
    shown = {}
    for m in config.model_defaults("model"):
        v = config.model_defaults(option).get(m, base)
        shown[m] = "none" if v is None else f"{v:g}" if isinstance(v, float) else str(v)
    values = sorted(set(shown.values()))
    if len(values) <= 1:
        return f"default {values[0] if values else base}"
    common = max(values, key=list(shown.values()).count)
    if list(shown.values()).count(common) * 2 > len(shown):
        rest = "; ".join(
            f"{v} for {', '.join(m for m in shown if shown[m] == v)}" for v in values if v != common
        )
        return f"default: the model's config: {rest}; {common} for the others"
    return "default: the model's config: " + ", ".join(f"{m} {v}" for m, v in shown.items())


def build_parser() -> argparse.ArgumentParser:
    d = config.RunConfig
    p = ArgumentParser(
        prog="python -m stream.run",
        description="Recognise what happens in front of a camera and publish predictions on ZeroMQ.",
    )
    a = p.add_argument
    # Every default is None so that the YAML config can fill what a flag does not set.
    a(
        "--camera",
        help=f"camera index, video file, URL (http/rtsp/udp...) or 'synthetic' (default {d.camera})",
    )
    a(
        "--mic",
        help="microphone: default, a device name or index, an audio/video file, "
        f"synthetic (a beep every second), or none ({model_default('mic')})",
    )
    a("--model", help=f"model name (default {d.model}); see models.available()")
    a("--config", help="YAML file of run options (default: configs/<model>.yaml)")
    a(
        "--weights",
        help="checkpoint path, http(s) URL, kinetics400 (the model's published "
        f"checkpoint), or none for random weights ({model_default('weights')})",
    )
    a("--engine", choices=BACKENDS, help=f"inference engine (default {d.engine})")
    a("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    a(
        "--precision",
        choices=PRECISIONS,
        help="auto (the default: fp16 on CUDA, bf16 on a CPU with AMX or AVX512-BF16, else fp32; "
        "the log says which and why), fp32, fp16 or bf16",
    )
    a(
        "--no-compile",
        dest="compile",
        action="store_false",
        default=None,
        help="run eager PyTorch instead of compiling the model for this machine (the first "
        "start compiles and caches under $AVSTREAM_CACHE/engines; later ones load in a second)",
    )
    a("--threads", type=int, help="CPU threads of the engine (default: one per core)")
    a(
        "--malloc",
        help="memory allocator of the inference process: auto (tcmalloc where installed, "
        "which makes the CPU engine faster), tcmalloc, glibc, or the path of an allocator's .so "
        f"(default {d.malloc})",
    )
    a("--stride", type=float, help=f"seconds between windows ({model_default('stride')})")
    a("--smoothing", help=f"ema:ALPHA, mean:K or none ({model_default('smoothing')})")
    a("--topk", type=int, help=f"labels per prediction ({model_default('topk')})")
    a("--publish", help=f"ZeroMQ endpoint to bind (default {d.publish})")
    a(
        "--allow-remote",
        action="store_true",
        default=None,
        help="allow a --publish address other hosts can reach",
    )
    a("--stream-id", help=f"name of this stream in topics and messages (default {d.stream_id})")
    a(
        "--duration",
        type=float,
        help="seconds of running, after start-up: counted from the "
        "'running' log line, so loading and compiling the model do not count (default: run until "
        "Ctrl-C)",
    )
    a(
        "--loop",
        action="store_true",
        default=None,
        help="repeat a video file instead of stopping at its end",
    )
    a(
        "--preview",
        action="store_true",
        default=None,
        help="show the frames and the current top-k in a window",
    )
    a("--size", help="capture size WIDTHxHEIGHT for cameras and synthetic (e.g. 640x480)")
    a("--fps", type=float, help="capture rate for cameras and synthetic")
    a("--log-level", choices=config.LOG_LEVELS, help=f"default {d.log_level}")
    a(
        "--curve-secret-key",
        help="encrypt with ZeroMQ CURVE: the server's *.key_secret (python -m stream.keys)",
    )
    a(
        "--curve-clients",
        help="with --curve-secret-key: folder of the public keys of the clients allowed in",
    )
    return p


def parse_config(argv: list[str] | None = None) -> config.RunConfig:
    """Flags and YAML → a checked RunConfig; UserError (or SystemExit(2) from argparse)."""
    return config.resolve(vars(build_parser().parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
    except UserError as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    log.info("windows every %g s (from %s)", cfg.stride, cfg.origin("stride"))
    for name in sweep_stale_segments():
        log.info("removed shared memory %s left by a crashed run", name)
    return Supervisor(cfg).run()


if __name__ == "__main__":
    sys.exit(main())
