"""The pipeline's packages, checked before an entry point imports them.

`pip install avstream` is light (pyzmq: the wire format and stream.subscribe); the
pipeline commands need the `run` extra. Without it their first import of torch or cv2
would end in a traceback, so each pipeline entry point calls `require_pipeline` first.
"""

from __future__ import annotations

import importlib.util
import sys

# Import names of the `run` extra in pyproject.toml (opencv-python is cv2, PyYAML is yaml).
PIPELINE_MODULES = (
    "torch",
    "numpy",
    "cv2",
    "sounddevice",
    "yaml",
    "av",
    "soxr",
    "psutil",
    "numba",
    "einops",
    "tqdm",
    "prometheus_client",
    "aiohttp",
)


def missing_modules() -> list[str]:
    # find_spec looks for the module without importing it: importing sounddevice without
    # libportaudio2 raises OSError, and importing torch takes seconds.
    return [name for name in PIPELINE_MODULES if importlib.util.find_spec(name) is None]


def require_pipeline(command: str) -> None:
    """Exit 2 with one error line when a package of the `run` extra is not installed."""
    missing = missing_modules()
    if missing:
        print(
            f"error: {command} needs the pipeline's packages (missing: {', '.join(missing)}): "
            "pip install 'avstream[run]'",
            file=sys.stderr,
        )
        raise SystemExit(2)
