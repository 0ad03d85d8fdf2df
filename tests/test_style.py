"""ruff's lint and format checks pass on the whole tree (the rules are in pyproject.toml),
so the README's test command is also the style check CI runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO


def _ruff() -> str:
    beside = Path(sys.executable).with_name("ruff")  # the venv's, from the test extra
    found = str(beside) if beside.exists() else shutil.which("ruff")
    if found is None:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    return found


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=" ".join)
def test_ruff_passes(command):
    done = subprocess.run(
        [_ruff(), *command, "."], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
