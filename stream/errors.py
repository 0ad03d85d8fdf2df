"""The small exception hierarchy of the runtime.

`UserError` is anything the user can fix (a flag, a file, a device, a port): the entry
points print `str(exc)` as the one error line and exit with status 2. Everything else
that escapes is a bug and exits with status 1 and a traceback in the log.
`ArgumentParser` gives a bad flag the same one line, in every command.

Only the standard library here: stream.transport (pyzmq only) imports it.
"""

import argparse
from typing import NoReturn


class StreamError(Exception):
    """Base class of every error raised by `stream`."""


class UserError(StreamError):
    """Bad input the user can fix; the message is one line that says what to do."""


class SourceError(UserError):
    """A capture source that cannot be opened or read."""


class RingError(StreamError):
    """Base class of shared-memory ring errors."""


class FrameLost(RingError):
    """The requested sample was overwritten (the reader was too slow) or not yet written."""


class EndOfStream(RingError):
    """The writer closed the ring: no more samples will come."""


def error_line(message: object) -> str:
    """The one line printed for a user error: control characters (a stray newline or
    carriage return in a value) are shown escaped, so it stays one line."""
    text = str(message)
    return "error: " + "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ArgumentParser(argparse.ArgumentParser):
    """The parser of every command: a bad flag is one line, `error: MESSAGE (see PROG
    --help)`, and exit status 2, instead of argparse's usage and message."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, error_line(f"{message} (see {self.prog} --help)") + "\n")
