"""The import arrows of docs/architecture.md ("Layout"), checked on the source: a module
may import only from the folders its layer allows, so an arrow running upward (a model
importing the pipeline, the transport importing torch) fails here, not in a user's
light install."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from helpers import REPO

#: Folder (or module) → the project modules it may import (prefixes), and whether it may
#: import third-party packages other than pyzmq.
ALLOWED = {
    "models": ("models",),
    "engines": ("engines", "models"),
    "stream/transport": ("stream.transport", "stream.errors"),
    "stream/control.py": (),
    "stream/errors.py": (),
    "stream/_deps.py": (),
    "stream/options.py": ("stream.errors", "stream.config"),
    "stream/capture": ("stream.capture", "stream.control", "stream.errors", "stream.pipeline"),
    "stream/pipeline": (
        "stream.pipeline",
        "stream.capture",
        "stream.control",
        "stream.errors",
        "stream.transport",
        "stream._deps",
        "engines",
        "models",
        "stream.config",  # the run's settings (RunConfig), which the supervisor is given
        "stream.rules",  # the event rules the inference process checks and follows
        "stream.web.process",  # the browser view's process (stream.run --web)
    ),
}
#: The browser view's server, which runs for a run on another host with `pip install
#: 'avstream[web]'` alone (frames.py and process.py run inside stream.run: not light).
WEB_LIGHT = tuple(f"stream/web/{m}.py" for m in ("__init__", "__main__", "auth", "feed", "server"))
ALLOWED |= dict.fromkeys(
    WEB_LIGHT,
    (
        "stream.errors",
        "stream.transport",
        "stream.web.auth",
        "stream.web.feed",
        "stream.web.server",
    ),
)
OURS = ("stream", "engines", "models", "configs")
#: What the light layers may import besides the standard library: pyzmq, and paho-mqtt in
#: stream/transport/mqtt.py (the `mqtt` extra; the module imports without it).
LIGHT_THIRD_PARTY = {"zmq", "paho"}
LIGHT = ("stream/transport", "stream/control.py", "stream/errors.py", "stream/_deps.py", *WEB_LIGHT)


def _files(where: str) -> list[Path]:
    path = REPO / where
    return [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            if node.module in OURS:  # `from stream import control`
                names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            package = ".".join(path.relative_to(REPO).with_suffix("").parts[: -node.level])
            names.add(f"{package}.{node.module}" if node.module else package)
    return names


@pytest.mark.parametrize("where", sorted(ALLOWED))
def test_imports_follow_the_layers(where):
    allowed = ALLOWED[where]
    wrong = []
    for path in _files(where):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in OURS and name not in OURS:
                if not name.startswith(tuple(a + "." for a in allowed) + allowed):
                    wrong.append(f"{path.relative_to(REPO)} imports {name}")
            elif top in OURS:  # `from stream import X` is checked as stream.X above
                continue
            elif where in LIGHT and top not in sys.stdlib_module_names | LIGHT_THIRD_PARTY | (
                {"aiohttp"} if where in WEB_LIGHT else set()  # the `web` extra
            ):
                wrong.append(f"{path.relative_to(REPO)} imports {name} (light layer)")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_wrong_arrow(tmp_path):
    # The parser reads every import form the tree uses.
    source = tmp_path / "m.py"
    source.write_text("import torch\nfrom stream import run\nfrom stream.pipeline.ring import X\n")
    assert {"torch", "stream", "stream.run", "stream.pipeline.ring"} <= _imports(source)
