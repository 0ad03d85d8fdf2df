"""Small rules about files and errors that every package follows, written once.

`models` is the lowest layer (it imports neither `engines` nor `stream`), so these live
here and the others import them: where the caches are (`cache_root`), how a file is
written so that a reader never sees half of it (`write_atomically`), and how an
exception becomes the short text of an error line or a warning (`first_line`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

#: The longest text `first_line` returns: an error line stays readable in a terminal.
FIRST_LINE_LIMIT = 200


def cache_root() -> Path:
    """`$AVSTREAM_CACHE`, default `~/.cache/avstream`: the folder every cache of the
    project lives under (downloaded weights in `weights/`, compiled engines in `engines/`)."""
    root = os.environ.get("AVSTREAM_CACHE") or os.path.join("~", ".cache", "avstream")
    return Path(root).expanduser()


@contextlib.contextmanager
def write_atomically(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Write `path` so that it appears complete or not at all.

        with write_atomically(path) as tmp:
            torch.save(obj, tmp)

    The block writes `tmp`, a new hidden file in the same folder (same file system, so
    the rename is atomic) whose name ends like `path`'s (`.pt2`, `.mp4`: writers that
    pick a format by the suffix pick the same one). When the block ends without an
    exception, `tmp` is renamed over `path`; when it raises (Ctrl-C and SIGTERM's
    SystemExit included), `tmp` is deleted and `path` is left as it was. The folder is
    created if missing. Nothing is fsync'ed: a reader sees an old or a new file, and a
    power cut may lose the new one, which every caller can write again.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:  # a unique name: two processes may write the same path at once
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.part{path.suffix}")
        try:
            # 0o666 less the umask, like a file the writer would create itself.
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def first_line(exc: object, limit: int = FIRST_LINE_LIMIT) -> str:
    """The first non-blank line of `str(exc)`, stripped and cut to `limit` characters
    (ending in "..." when cut), for an error line or a warning that quotes a library's
    exception: those can span pages (a compiler's log, torch.load's preamble). When the
    text is blank, the exception's type name (an `OSError()` says nothing else)."""
    for line in str(exc).splitlines():
        if line.strip():
            text = line.strip()
            return text if len(text) <= limit else text[: limit - 3] + "..."
    return type(exc).__name__
