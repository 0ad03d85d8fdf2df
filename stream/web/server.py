"""The view's web server (aiohttp): the page, the run's state as JSON, video as MJPEG, and
one WebSocket per page that carries every message of the run and the video frames.

    serve(WebOptions(listen="127.0.0.1:8080", connect=["tcp://127.0.0.1:5555"]))

Routes: `/` and `/stream/<id>` the page; `/assets/<name>` its files (a dict made at
start: a request never names a path on disk); `/api/state`, `/api/streams/<id>` JSON;
`/video/<id>` MJPEG; `/ws` the WebSocket; `/healthz`. docs/web.md describes them and the
WebSocket's messages.

Video: a `FrameSource` (stream/web/frames.py reads the run's rings) is asked for each
watched stream's newest frame, as JPEG, at most `fps` times a second and only while a page
or an MJPEG client watches that stream; the grab runs in a thread (numpy and OpenCV
release the GIL) and its one encoding goes to every client. A client holds at most one
frame per stream, the newest: a slow client gets fewer frames, never a queue, and the
server never waits for one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import html
import importlib.metadata
import importlib.resources
import ipaddress
import json
import logging
import math
import signal
import socket
import struct
import threading
import urllib.parse
from collections.abc import Callable
from typing import Protocol

from aiohttp import WSMsgType, web

from stream.errors import UserError
from stream.web.auth import (
    DEFAULT_FPS,
    DEFAULT_WIDTH,
    TOKEN_COOKIE,
    check_listen,
    check_video,
    read_token,
    token_matches,
)
from stream.web.feed import Feed

__all__ = ["Frame", "FrameSource", "WebOptions", "check_listen", "read_token", "serve"]

log = logging.getLogger("stream.web")

#: Content types of the page's files, by suffix; a file of another kind is not served.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "application/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # The page has no inline script or style and loads nothing from elsewhere (its video
    # frames are drawn on a canvas from the WebSocket's bytes).
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
#: What /video/<id> says in a view with no frames (python -m stream.web --connect).
RELAY_LINE = "this view relays a run on another host: its video is served by that run's own --web"
#: Text messages waiting for one WebSocket client; a client that falls this far behind is
#: closed (its page reconnects and gets the whole state again in its hello).
CLIENT_QUEUE = 1000
#: Level messages per second per stream, at most.
LEVELS_PER_S = 10
#: Seconds /stream/<id> and /video/<id> wait for the run's status (it lists every stream
#: of the run; sent twice a second) before they say "no stream".
RUN_STATUS_WAIT_S = 2.0
#: Threads that grab and encode frames (one stream's grab at a time each).
GRAB_THREADS = 4
#: How often the frame loop looks for new streams of the frame source while it has none
#: that someone watches.
STREAMS_EVERY_S = 0.25


@dataclasses.dataclass
class WebOptions:
    listen: str  # "HOST:PORT" (HOST an IP or name; port 0 = any free port)
    connect: list[str]  # ZeroMQ endpoints to subscribe to (SUB connects)
    token: str | None = None  # the token itself (read from the file by the caller)
    allow_remote: bool = False
    curve_secret_key: str | None = None  # this client's secret key file (NAME.key_secret)
    curve_server_key: str | None = None  # the publisher's public key file (server.key)
    fps: float = DEFAULT_FPS  # video frames per second per stream, at most
    width: int = DEFAULT_WIDTH  # video frames at most this wide (downscaled, aspect kept)
    quality: int = 70  # JPEG quality
    source: str = "connect"  # "run" (stream.run --web) or "connect" (python -m stream.web)


@dataclasses.dataclass
class Frame:
    stream: str
    seq: int
    t_ns: int
    width: int
    height: int
    jpeg: bytes


class FrameSource(Protocol):
    def streams(self) -> list[str]:
        """The ids whose frames can be read now."""

    def grab(self, stream: str, width: int, quality: int) -> Frame | None:
        """The newest frame if newer than the last one grabbed for `stream`, as JPEG at most
        `width` wide, else None; KeyError for an unknown stream. Blocking: called in a
        thread."""

    def level(self, stream: str) -> dict | None:
        """{"dbfs", "peak_dbfs"} of the last 0.1 s of sound; None without sound."""


def _version() -> str:
    try:
        return importlib.metadata.version("avstream")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def load_assets() -> dict[str, tuple[bytes, str]]:
    """name → (content, content type) of every file of the package's assets folder, read
    once at start; a request is answered from this dict alone."""
    assets: dict[str, tuple[bytes, str]] = {}
    folder = importlib.resources.files("stream.web") / "assets"
    if not folder.is_dir():
        return assets
    for entry in folder.iterdir():
        kind = CONTENT_TYPES.get("." + entry.name.rpartition(".")[2])
        if entry.is_file() and kind is not None and not entry.name.startswith("."):
            assets[entry.name] = (entry.read_bytes(), kind)
    return assets


def _frame_message(frame: Frame) -> bytes:
    """A frame as a binary WebSocket message: 2-byte big-endian header length, the header
    (JSON), the JPEG."""
    head = json.dumps(
        {
            "stream": frame.stream,
            "seq": frame.seq,
            "t_ns": frame.t_ns,
            "width": frame.width,
            "height": frame.height,
        },
        separators=(",", ":"),
    ).encode("utf-8")
    return struct.pack(">H", len(head)) + head + frame.jpeg


def _mjpeg_part(frame: Frame) -> bytes:
    return (
        b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
        + str(len(frame.jpeg)).encode("ascii")
        + b"\r\n\r\n"
        + frame.jpeg
        + b"\r\n"
    )


class _Client:
    """One page's WebSocket: its text messages in order (bounded), and per stream the
    newest frame and level only."""

    def __init__(self, ws: web.WebSocketResponse):
        self.ws = ws
        self.watch: set[str] | None = None  # None: every stream
        self.large: str | None = None
        self.texts: list[str] = []
        self.frames: dict[str, bytes] = {}
        self.levels: dict[str, str] = {}
        self.wake = asyncio.Event()
        self.overflowed = False

    def watches(self, stream: str) -> bool:
        return self.watch is None or stream in self.watch

    def text(self, data: str) -> None:
        if len(self.texts) >= CLIENT_QUEUE:
            self.overflowed = True
        else:
            self.texts.append(data)
        self.wake.set()

    async def send_loop(self) -> None:
        try:
            await self._send()
        except ConnectionError:  # the page went: its handler ends
            pass

    async def _send(self) -> None:
        ws = self.ws
        while not ws.closed:
            await self.wake.wait()
            self.wake.clear()
            if self.overflowed:
                log.info("a page fell %d messages behind: closed (it reconnects)", CLIENT_QUEUE)
                await ws.close(code=1013, message=b"too slow: reconnect")
                return
            texts, self.texts = self.texts, []
            for data in texts:
                await ws.send_str(data)
            levels, self.levels = self.levels, {}
            for data in levels.values():
                await ws.send_str(data)
            frames, self.frames = self.frames, {}
            for data in frames.values():
                await ws.send_bytes(data)


class _Viewer:
    """One MJPEG response: the newest part only."""

    def __init__(self, stream: str):
        self.stream = stream
        self.part: bytes | None = None
        self.wake = asyncio.Event()


class WebView:
    """The app and everything it serves from; made and run inside the event loop."""

    def __init__(self, opts: WebOptions, frames: FrameSource | None):
        self.opts, self.frames = opts, frames
        self.assets = load_assets()
        self.clients: set[_Client] = set()
        self.viewers: set[_Viewer] = set()
        self.closing = asyncio.Event()
        self._watch_changed = asyncio.Event()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loopback = True
        self.feed = Feed(
            opts.connect,
            on_message=self._message,
            on_link=self._link,
            curve_server_key=opts.curve_server_key,
            curve_client_key=opts.curve_secret_key,
        )

    # -- the app ----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.router.add_get("/", self.page)
        app.router.add_get("/stream/{id}", self.page)
        app.router.add_get("/assets/{name}", self.asset)
        app.router.add_get("/api/state", self.api_state)
        app.router.add_get("/api/streams/{id}", self.api_stream)
        app.router.add_get("/video/{id}", self.video)
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/healthz", self.healthz)
        app.on_response_prepare.append(self._headers)
        return app

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(SECURITY_HEADERS)
        response.headers["Server"] = "avstream"  # not aiohttp's name and version
        if not request.path.startswith("/assets/"):
            response.headers["Cache-Control"] = "no-store"

    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:
        """The Host check of a view without a token, and the token of one with."""
        if request.path == "/healthz":
            return await handler(request)
        token = self.opts.token
        if token is None:
            if self._loopback and not _loopback_host(request.host):
                # DNS rebinding: a site whose name now points at 127.0.0.1 would otherwise
                # read this view from a visitor's browser as its own origin.
                raise web.HTTPForbidden(
                    text=f"this view answers to its loopback address only, not to "
                    f"{request.host!r}: open http://{_url_host(request)}/\n",
                    content_type="text/plain",
                )
            return await handler(request)
        given = request.query.get("token")
        if given is not None:
            if not token_matches(given, token):
                raise self._unauthorized("wrong token")
            if request.match_info.route.handler == self.page:
                # From here on the cookie carries it, and the address bar no longer shows it.
                sid = request.match_info.get("id")
                where = "/" if sid is None else "/stream/" + urllib.parse.quote(sid, safe="")
                rest = [(k, v) for k, v in request.query.items() if k != "token"]
                if rest:
                    where += "?" + urllib.parse.urlencode(rest)
                response = web.Response(status=303, headers={"Location": where})
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/")
                return response
            return await handler(request)
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            if not token_matches(auth[7:].strip(), token):
                raise self._unauthorized("wrong token")
            return await handler(request)
        cookie = request.cookies.get(TOKEN_COOKIE)
        if cookie is not None:
            if not token_matches(cookie, token):
                raise self._unauthorized("wrong token")
            return await handler(request)
        raise self._unauthorized("this view needs its token")

    @staticmethod
    def _unauthorized(why: str) -> web.HTTPUnauthorized:
        return web.HTTPUnauthorized(
            headers={"WWW-Authenticate": 'Bearer realm="avstream"'},
            text=f"{why}: open the view once as /?token=TOKEN (a cookie keeps it), or send "
            "the header Authorization: Bearer TOKEN (TOKEN: the view's --token-file)\n",
            content_type="text/plain",
        )

    # -- routes -----------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        sid = request.match_info.get("id")
        if sid is not None:
            known = await self._known(sid)
            if sid not in known:
                listed = ", ".join(sorted(known)) or "none yet"
                return web.Response(
                    status=404,
                    text="<!doctype html><html><head><meta charset=utf-8><title>avstream"
                    f"</title></head><body><p>no stream {html.escape(repr(sid))} in this run "
                    f"(its streams: {html.escape(listed)})</p><p><a href=/>all streams</a>"
                    "</p></body></html>\n",
                    content_type="text/html",
                    charset="utf-8",
                )
        index = self.assets.get("index.html")
        if index is None:
            return web.Response(
                status=500,
                text="this install has no stream/web/assets/index.html: reinstall avstream\n",
                content_type="text/plain",
            )
        return web.Response(body=index[0], headers={"Content-Type": index[1]})

    async def asset(self, request: web.Request) -> web.Response:
        found = self.assets.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(text="no such file\n", content_type="text/plain")
        return web.Response(body=found[0], headers={"Content-Type": found[1]})

    def state(self) -> dict:
        state = self.feed.state()
        return {
            "source": self.opts.source,
            "endpoints": list(self.opts.connect),
            "link": state["link"],
            "frames": self.frames is not None,
            "run": state["run"],
            "streams": state["streams"],
        }

    async def api_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state(), dumps=_dumps)

    async def api_stream(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        stream = self.feed.state()["streams"].get(sid)
        if stream is None:
            listed = ", ".join(sorted(self.feed.known())) or "none yet"
            return web.json_response(
                {"error": f"no stream {sid!r} in this run (its streams: {listed})"}, status=404
            )
        return web.json_response(stream, dumps=_dumps)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok", content_type="text/plain")

    async def video(self, request: web.Request) -> web.StreamResponse:
        sid = request.match_info["id"]
        if self.frames is None:
            raise web.HTTPNotFound(text=RELAY_LINE + "\n", content_type="text/plain")
        if sid not in await self._known(sid):
            raise web.HTTPNotFound(
                text=f"no stream {sid!r} in this run\n", content_type="text/plain"
            )
        response = web.StreamResponse(
            headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame"}
        )
        await response.prepare(request)
        viewer = _Viewer(sid)
        self.viewers.add(viewer)
        self._watch_changed.set()
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            while not self.closing.is_set():
                woken = asyncio.ensure_future(viewer.wake.wait())
                await asyncio.wait({woken, closing}, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                viewer.wake.clear()
                part, viewer.part = viewer.part, None
                if part is not None:
                    await response.write(part)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            closing.cancel()
            self.viewers.discard(viewer)
            self._watch_changed.set()
        return response

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and urllib.parse.urlsplit(origin).netloc.lower() != (
            request.host.lower()
        ):
            # Cross-site WebSocket hijacking: a browser sends the visitor's cookie with a
            # WebSocket opened by any site; only this view's own page may read the run.
            raise web.HTTPForbidden(
                text=f"a page from {origin} may not open this view's WebSocket\n",
                content_type="text/plain",
            )
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=64 * 1024)
        await ws.prepare(request)
        client = _Client(ws)
        client.text(_dumps(self._hello()))  # first: before any message reaches the client
        self.clients.add(client)
        self._watch_changed.set()
        sender = asyncio.ensure_future(client.send_loop())
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._from_page(client, msg.data)
                if sender.done():
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.clients.discard(client)
            self._watch_changed.set()
            sender.cancel()
            if not ws.closed:
                await ws.close()
        return ws

    def _hello(self) -> dict:
        return {
            "kind": "hello",
            "source": self.opts.source,
            "endpoints": list(self.opts.connect),
            "frames": self.frames is not None,
            "fps": self.opts.fps,
            "version": _version(),
            "state": self.state(),
        }

    def _from_page(self, client: _Client, data: str) -> None:
        try:
            msg = json.loads(data)
        except ValueError:
            return
        if not isinstance(msg, dict) or msg.get("kind") != "watch":
            return
        streams, large = msg.get("streams"), msg.get("large")
        if streams is None:
            client.watch = None
        elif isinstance(streams, list) and all(isinstance(s, str) for s in streams):
            client.watch = set(streams[:256])
        client.large = large if isinstance(large, str) else None
        self._watch_changed.set()

    # -- from the feed ----------------------------------------------------------------

    def _message(self, topic: str, body: dict) -> None:
        data = _dumps({"kind": "msg", "topic": topic, "body": body})
        for client in self.clients:
            client.text(data)

    def _link(self, link: dict) -> None:
        data = _dumps({"kind": "link", "endpoints": list(self.opts.connect), **link})
        for client in self.clients:
            client.text(data)

    async def _known(self, sid: str) -> set[str]:
        """The streams this run knows of; when `sid` is not among them, once the run's
        status is here (or after RUN_STATUS_WAIT_S without one): a page opened right after
        the view started, when only another stream's messages have come, must not be told
        its stream does not exist."""
        known = self.feed.known() | set(self._frame_streams())
        if sid in known or self.feed.listed.is_set():
            return known
        try:
            await asyncio.wait_for(self.feed.listed.wait(), RUN_STATUS_WAIT_S)
        except asyncio.TimeoutError:
            pass
        return self.feed.known() | set(self._frame_streams())

    def _frame_streams(self) -> list[str]:
        return [] if self.frames is None else list(self.frames.streams())

    # -- frames -----------------------------------------------------------------------

    def _wanted(self) -> set[str]:
        """The streams someone watches now (None in a watch: every stream)."""
        wanted = {v.stream for v in self.viewers}
        if any(c.watch is None for c in self.clients):
            return wanted | set(self._frame_streams())
        for c in self.clients:
            wanted |= c.watch  # type: ignore[operator]
        return wanted

    def _grab(self, stream: str, levels: bool) -> tuple[str, Frame | None, dict | None]:
        """In a thread: the newest frame of `stream` and (when `levels`) its sound level."""
        assert self.frames is not None
        try:
            frame = self.frames.grab(stream, self.opts.width, self.opts.quality)
            level = self.frames.level(stream) if levels else None
        except KeyError:  # the stream went between streams() and grab()
            return stream, None, None
        return stream, frame, level

    async def frames_loop(self) -> None:
        """Every 1/fps s while someone watches: each watched stream's newest frame, grabbed
        and encoded once in a thread, to every client that watches it."""
        assert self.frames is not None
        loop = asyncio.get_running_loop()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            GRAB_THREADS, thread_name_prefix="web-frames"
        )
        period = 1.0 / self.opts.fps
        level_every = max(1, math.ceil(self.opts.fps / LEVELS_PER_S))
        tick, due = 0, loop.time()
        failures = 0
        while True:
            wanted = self._wanted() & set(self._frame_streams())
            if not wanted:
                self._watch_changed.clear()
                # A stream the frame source gains (stream.run hands the web process each
                # stream as it is served) sets no event: looked for STREAMS_EVERY_S.
                try:
                    await asyncio.wait_for(self._watch_changed.wait(), STREAMS_EVERY_S)
                except asyncio.TimeoutError:
                    pass
                due = loop.time()
                continue
            levels = tick % level_every == 0
            tick += 1
            grabs = [
                loop.run_in_executor(self._executor, self._grab, sid, levels) for sid in wanted
            ]
            for result in await asyncio.gather(*grabs, return_exceptions=True):
                if isinstance(result, BaseException):
                    failures += 1
                    if failures == 1 or failures % 1000 == 0:
                        log.error("reading a frame failed (%d times): %r", failures, result)
                    continue
                self._deliver(*result)
            due += period
            now = loop.time()
            if due < now:  # behind (a slow grab): start again from now, never catch up
                due = now
            await asyncio.sleep(due - now)

    def _deliver(self, stream: str, frame: Frame | None, level: dict | None) -> None:
        if frame is not None:
            message = part = None
            for client in self.clients:
                if client.watches(stream):
                    message = message or _frame_message(frame)
                    client.frames[stream] = message  # the newest wins
                    client.wake.set()
            for viewer in self.viewers:
                if viewer.stream == stream:
                    part = part or _mjpeg_part(frame)
                    viewer.part = part
                    viewer.wake.set()
        if level is not None:
            data = _dumps({"kind": "level", "stream": stream, **level})
            for client in self.clients:
                if client.watches(stream):
                    client.levels[stream] = data
                    client.wake.set()

    async def shutdown(self) -> None:
        self.closing.set()
        closing = [
            asyncio.ensure_future(c.ws.close(code=1001, message=b"the view stops"))
            for c in self.clients
        ]
        if closing:  # a page that does not answer its close is left after 1 s
            await asyncio.wait(closing, timeout=1.0)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self.feed.close()


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _loopback_host(host: str) -> bool:
    """Whether a request's Host header names a loopback address (an IP or localhost)."""
    name = urllib.parse.urlsplit("//" + host).hostname or ""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _url_host(request: web.Request) -> str:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:
        return "127.0.0.1"
    host = sockname[0]
    return f"[{host}]:{sockname[1]}" if ":" in host else f"{host}:{sockname[1]}"


def _bind(host: str, port: int, listen: str) -> socket.socket:
    """The listening socket, or one UserError line (in use, not an address of this host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise UserError(f"--listen {listen}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == 98 or "in use" in str(exc).lower():  # EADDRINUSE
            raise UserError(
                f"{listen} is in use: another program (another view?) listens there; pass "
                "another port, or 0 for any free one"
            ) from None
        raise UserError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def serve(
    opts: WebOptions,
    frames: FrameSource | None = None,
    *,
    ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve until `stop` is set or SIGINT/SIGTERM arrives (in the main thread). Binds
    first (UserError for an address in use or not allowed), then calls `ready(url)` once
    and logs `web view on URL`."""
    host, port = check_listen(opts.listen, allow_remote=opts.allow_remote, token=opts.token)
    if not opts.connect:
        raise UserError("the view needs at least one endpoint to --connect to")
    check_video(opts.fps, opts.width)
    asyncio.run(_serve(opts, frames, host, port, ready, stop))


async def _serve(opts, frames, host, port, ready, stop) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    handled = []
    runner = None
    tasks = []
    view = WebView(opts, frames)
    try:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stopping.set)
                handled.append(sig)
        sock = _bind(host, port, opts.listen)
        view._loopback = _loopback_bound(sock)
        # Open MJPEG responses never end by themselves: a stop waits 1 s for them at most.
        runner = web.AppRunner(view.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.SockSite(runner, sock)
        await site.start()
        tasks.append(asyncio.ensure_future(view.feed.run_forever()))
        if frames is not None:
            tasks.append(asyncio.ensure_future(view.frames_loop()))
        bound = sock.getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        url = f"http://{shown}:{bound[1]}/"
        log.info("web view on %s", url)
        if ready is not None:
            ready(url)
        while not stopping.is_set() and not (stop is not None and stop.is_set()):
            # A threading.Event cannot be awaited: looked at 5 times a second.
            try:
                await asyncio.wait_for(stopping.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
            for task in tasks:
                if task.done():
                    task.result()  # a failure there is a bug: raise it here
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await view.shutdown()
        if runner is not None:
            await runner.cleanup()
        if tasks:  # it was serving
            log.info("stopped")


def _loopback_bound(sock: socket.socket) -> bool:
    return ipaddress.ip_address(sock.getsockname()[0].split("%")[0]).is_loopback
