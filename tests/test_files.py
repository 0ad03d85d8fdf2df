"""models/_files.py: the cache root, atomic writes and the first line of an exception,
the rules every package shares."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from models._files import FIRST_LINE_LIMIT, cache_root, first_line, write_atomically


def test_write_atomically_replaces_the_file_when_the_block_ends(tmp_path):
    path = tmp_path / "engine.pt2"
    path.write_text("old")
    with write_atomically(path) as tmp:
        # A hidden file beside the target, with its suffix (writers that choose the
        # format by the suffix, like AOTInductor's .pt2, accept it).
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.suffix == ".pt2"
        tmp.write_text("new")
        assert path.read_text() == "old"  # a reader sees the old file until the rename
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine.pt2"]


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt(), SystemExit(143)])
def test_a_failure_in_the_middle_keeps_the_old_file_and_leaves_no_temporary(tmp_path, failure):
    path = tmp_path / "model.pt"
    path.write_text("old")
    with pytest.raises(type(failure)), write_atomically(path) as tmp:
        tmp.write_text("half of the ne")
        raise failure
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_a_failure_before_any_file_existed_leaves_nothing(tmp_path):
    path = tmp_path / "new" / "clip.mp4"  # its folder is created
    with pytest.raises(ValueError), write_atomically(path) as tmp:
        tmp.write_bytes(b"\0" * 10)
        raise ValueError("encoder failed")
    assert list(path.parent.iterdir()) == []


def test_two_writers_of_one_path_get_their_own_temporary_files(tmp_path):
    path = tmp_path / "verdict.json"
    with write_atomically(path) as a, write_atomically(path) as b:
        assert a != b
        a.write_text("a")
        b.write_text("b")
    assert path.read_text() == "a"  # the outer block ends last: its rename wins
    assert sorted(p.name for p in tmp_path.iterdir()) == ["verdict.json"]


def test_the_written_file_has_the_usual_permissions(tmp_path):
    """Like a file the writer creates itself (0666 less the umask), not 0600 as a
    temporary file of the tempfile module would be: a checkpoint or a clip stays
    readable by whom the user's umask allows."""
    umask = os.umask(0o022)
    os.umask(umask)
    path = tmp_path / "model.pt"
    with write_atomically(path) as tmp:
        tmp.write_text("x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_cache_root_is_avstream_cache_else_the_home_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("AVSTREAM_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.setenv("AVSTREAM_CACHE", "")  # set but empty: the default
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "avstream"


def test_every_cache_is_under_the_root(monkeypatch, tmp_path):
    from engines.cache import default_cache_dir
    from models import _weights

    monkeypatch.setenv("AVSTREAM_CACHE", str(tmp_path))
    assert _weights.cache_dir() == tmp_path / "weights"
    assert default_cache_dir() == tmp_path / "engines"


@pytest.mark.parametrize(
    "exc, expected",
    [
        (RuntimeError("\n  first line  \nsecond line"), "first line"),
        (OSError(), "OSError"),
        (RuntimeError(" \n\t"), "RuntimeError"),
        ("a reason given as text", "a reason given as text"),
    ],
)
def test_first_line(exc, expected):
    assert first_line(exc) == expected


def test_first_line_cuts_a_long_line():
    text = first_line(RuntimeError("x" * 1000))
    assert len(text) == FIRST_LINE_LIMIT and text.endswith("...")
    assert first_line(RuntimeError("y" * 50), limit=20) == "y" * 17 + "..."
    assert first_line(RuntimeError("z" * 20), limit=20) == "z" * 20


def test_nothing_else_writes_a_file_by_rename():
    """One way to write a file atomically: a second hand-made rename would drift apart
    from it (in its temporary name, its cleanup, its permissions)."""
    root = Path(__file__).resolve().parent.parent
    found = [
        str(p.relative_to(root))
        for folder in ("models", "engines", "stream", "benchmarks")
        for p in (root / folder).rglob("*.py")
        if "os.replace(" in p.read_text() or ".rename(" in p.read_text()
    ]
    assert found == ["models/_files.py"]


def test_the_small_modules_of_models_do_not_import_torch():
    """stream's torch-free processes (the parent of stream.record writes clips with
    write_atomically) import models._files; the registry imports the families (and torch)
    when it is first used."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    probe = (
        "import sys, models, models._files, stream.train.clips\n"
        "print('torch' in sys.modules)\n"
        "print(len(models.available()) > 0, 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True"]
