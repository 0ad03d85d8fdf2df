"""`python -m stream.run`: the command that starts the pipeline.

It parses the flags and the YAML config into a checked `RunConfig` (its streams: one per
--camera, or the config's `streams:` list) and hands it to the supervisor
(stream/pipeline/supervisor.py), which starts each stream's capture processes and the one
inference process, owns the shared memory and serves the control socket (stream.ctl).

Exit status: 0 after SIGINT/SIGTERM, --duration, or once every stream has ended (a file
without --loop ends its stream); 2 for bad input
(one line on stderr that names the problem and what to do); 1 when a process fails
while running. Every exit path stops the children and unlinks the shared memory.
"""

from __future__ import annotations

from stream._deps import require_pipeline

require_pipeline("python -m stream.run")  # before the imports that need the `run` extra

import argparse
import logging
import sys

from stream import config, options
from stream.errors import UserError, error_line
from stream.pipeline.proc import setup_logging
from stream.pipeline.supervisor import Supervisor

log = logging.getLogger("stream.run")


def build_parser() -> argparse.ArgumentParser:
    """The flags of RunConfig's options (stream/config.py declares them)."""
    return options.parser(
        config.RunConfig,
        prog="python -m stream.run",
        description="Recognise what happens in front of a camera and publish predictions "
        "on ZeroMQ.",
    )


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
    return Supervisor(cfg).run()


if __name__ == "__main__":
    sys.exit(main())
