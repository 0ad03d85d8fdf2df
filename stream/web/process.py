"""The web process of `python -m stream.run --web HOST:PORT`: the browser view's server
(stream/web/server.py) with the run's frames.

The supervisor starts it beside the inference process, restarts it with backoff when it
dies (the run goes on), and gives it each stream's rings with the AddStream the
inference process gets, and RemoveStream when the stream goes (stream/control.py). A
thread reads those messages and attaches or detaches the rings (RingFrames, frames.py);
the server subscribes, without keys, to the local ipc endpoint that the inference
process's publisher binds besides --publish (`RunConfig.web_endpoint`, in a folder of
the supervisor's that only this user may enter), so it works the same with CURVE and
through a proxy. Once listening it says so (WebListening); a port in use is BadInput.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading

from stream import config, control
from stream.errors import UserError

log = logging.getLogger("stream.web")

#: How often the control thread looks at the stop event and the parent.
POLL_S = 0.1
#: The private folders of the local endpoint: `avstream-web-<pid of the run>-<random>`.
FOLDER_PREFIX = "avstream-web-"
_FOLDER = re.compile(rf"^{FOLDER_PREFIX}(\d+)-\w+$")


def private_folder() -> str:
    """A new folder that only this user may enter (mkdtemp: 0700), for the endpoint
    without keys; the run removes it at exit. Those of runs that were killed (SIGKILL
    leaves them) are removed first."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        m = _FOLDER.match(name)
        if m is None:
            continue
        try:
            os.kill(int(m[1]), 0)
            continue  # its run runs
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        except PermissionError:
            continue  # another user's live run
    return tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")


def web_main(cfg, parent_pid: int, conn, stop) -> None:
    """Entry point of the web process. `cfg` is the run's stream.config.RunConfig."""
    from stream.pipeline.proc import init_child

    init_child(cfg.log_level, parent_pid)
    halt = threading.Event()  # the server stops when it is set
    frames = None
    try:
        from stream.web import server
        from stream.web.frames import RingFrames

        frames = RingFrames()
        options = server.WebOptions(
            listen=cfg.web,
            connect=[cfg.web_endpoint],
            token=config.web_token(cfg),
            allow_remote=cfg.allow_remote,
            fps=cfg.web_fps,
            width=cfg.web_width,
            source="run",
        )
        failed: list[BaseException] = []

        def run_server() -> None:
            try:
                server.serve(
                    options,
                    frames,
                    ready=lambda url: conn.send(control.WebListening(url)),
                    stop=halt,
                )
            except BaseException as exc:  # said to the supervisor by the main thread
                failed.append(exc)
            finally:
                halt.set()

        # The server runs in a thread of its own, so that it leaves the signals alone:
        # Ctrl-C is the supervisor's (init_child), which stops this process itself.
        thread = threading.Thread(target=run_server, name="web-server", daemon=True)
        thread.start()
        _control(conn, stop, frames, halt)
        halt.set()
        thread.join()
        if failed:
            raise failed[0]
    except UserError as exc:
        conn.send(control.BadInput(str(exc)))
    except Exception as exc:  # a bug: one line to the supervisor, the traceback in the log
        log.exception("the browser view failed")
        conn.send(control.Crash(f"web process failed: {type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None
    finally:
        if frames is not None:
            frames.close()


def _control(conn, stop, frames, halt: threading.Event) -> None:
    """The supervisor's messages, until the server has stopped, the stop event is set or
    the parent has gone."""
    from stream.pipeline.proc import parent_alive

    while not halt.is_set() and not stop.is_set() and parent_alive():
        try:
            if not conn.poll(POLL_S):
                continue
            message = control.receive(conn, "the web process")
        except (EOFError, OSError):  # the supervisor has gone
            return
        match message:
            case control.AddStream(stream=stream):
                frames.attach(stream, message)
            case control.RemoveStream(stream=stream):
                frames.detach(stream)
            case _:
                control.unexpected(message, "the web process")
