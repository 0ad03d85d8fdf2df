"""The browser view's server (stream/web), over real HTTP and a real WebSocket, without a
browser and without the pipeline: `python -m stream.web --connect` as a real process, fed
by this test's own ZeroMQ PUB socket with real wire messages; the frame path (MJPEG and
WebSocket frames) in process with a stand-in FrameSource that gives real JPEGs. The page
in a browser: tests/test_web_browser.py; with stream.run --web: tests/test_web_run.py."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import threading
import time

import aiohttp
import cv2
import numpy as np
import pytest
import zmq
from test_wire import _event, _prediction, _run_status, _status

from helpers import REPO, Sending, WebProcess, free_port, held_port, wait_until
from stream.errors import UserError
from stream.transport import wire
from stream.transport.keys import make_keys
from stream.web import server
from stream.web.server import Frame, WebOptions

TIMEOUT = 60.0  # bounds a hang only; a busy machine never gets near it


# -- the test's publisher and the view as a process ----------------------------------------


class Publishing:
    """This test's own PUB socket (ZeroMQ picks the port), sending wire messages."""

    def __init__(self):
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind("tcp://127.0.0.1:*")
        self.endpoint = self.socket.getsockopt(zmq.LAST_ENDPOINT).decode()

    def send(self, topic: str, body: dict) -> None:
        self.socket.send_multipart(wire.encode(topic, body))

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()


class View(WebProcess):
    """`python -m stream.web ...` listening on a free port (it picks: --listen HOST:0), its
    stdout kept: `stop` checks that it wrote nothing there, no traceback, and exit 0."""

    def __init__(self, *args: str):
        super().__init__("--listen", "127.0.0.1:0", *args, stdout=subprocess.PIPE)
        self.url = self.wait_listening().removesuffix("/")
        self.host, _, port = self.url.removeprefix("http://").rpartition(":")
        self.port = int(port)

    def stop(self, sig: int | None = None) -> None:
        code, err = super().stop(sig)
        out = self.proc.stdout.read()
        assert code == 0, err
        assert "Traceback" not in err, err
        assert out == ""


@pytest.fixture
def publisher():
    pub = Publishing()
    yield pub
    pub.close()


@pytest.fixture
def view(publisher):
    v = View("--connect", publisher.endpoint)
    yield v
    v.kill()


def _get(view: View, path: str, headers: dict | None = None):
    """(status, headers, body) of a GET of `path` exactly as given (no redirect followed,
    nothing normalised)."""
    conn = http.client.HTTPConnection(view.host, view.port, timeout=TIMEOUT)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def _state(view: View, headers: dict | None = None) -> dict:
    status, head, body = _get(view, "/api/state", headers)
    assert status == 200, body
    return json.loads(body)


def _link_up(view: View, publisher: Publishing) -> None:
    """Heartbeats until the view has one: from then on, what is sent reaches it (a SUB
    that has just connected misses what was sent before)."""

    def up():
        publisher.send("status.cam0", _status())
        return _state(view)["link"]["state"] == "up"

    wait_until(up, "the view receives the publisher")


# -- what the view shows of a run -------------------------------------------------------------


def test_state_and_websocket_follow_the_published_messages(view, publisher):
    """/api/state holds the last of each; the WebSocket says hello, then each message as it
    comes, the link going down when the publisher is quiet and up when it speaks again."""
    first = _state(view)
    assert first["source"] == "connect" and first["frames"] is False
    assert first["endpoints"] == [publisher.endpoint]
    assert first["link"]["state"] == "down" and "retrying" in first["link"]["detail"]
    _link_up(view, publisher)

    async def session():
        async with aiohttp.ClientSession() as http_session:
            async with http_session.ws_connect(f"{view.url}/ws") as ws:
                hello = await ws.receive_json(timeout=TIMEOUT)
                assert hello["kind"] == "hello"
                assert hello["source"] == "connect" and hello["frames"] is False
                assert hello["endpoints"] == [publisher.endpoint] and hello["fps"] == 10
                assert hello["state"]["streams"]["cam0"]["status"]["schema"] == wire.STATUS_SCHEMA
                assert isinstance(hello["version"], str)
                sent = {
                    "pred.cam0": _prediction(seq=77),
                    "event.cam0": _event("start", seq=5),
                    "run": _run_status(seq=9),
                }
                for topic, body in sent.items():
                    publisher.send(topic, body)
                got = {}
                while len(got) < len(sent):
                    msg = await ws.receive_json(timeout=TIMEOUT)
                    if msg["kind"] == "msg" and msg["topic"] in sent:
                        got[msg["topic"]] = msg["body"]
                assert got == sent
                # Quiet: the link goes down (3 s without a message), then comes back.
                while (msg := await ws.receive_json(timeout=TIMEOUT))["kind"] != "link":
                    pass
                assert msg["state"] == "down" and "retrying" in msg["detail"]
                assert msg["endpoints"] == [publisher.endpoint]
                down = _state(view)["link"]
                assert down["state"] == "down" and "retrying" in down["detail"]
                publisher.send("status.cam0", _status(seq=1))
                while (msg := await ws.receive_json(timeout=TIMEOUT))["kind"] != "link":
                    pass
                assert msg["state"] == "up"

    asyncio.run(session())
    state = _state(view)
    cam0 = state["streams"]["cam0"]
    assert cam0["pred"] == _prediction(seq=77)
    assert cam0["status"]["seq"] == 1
    assert cam0["events"] == [_event("start", seq=5)]
    assert state["run"] == _run_status(seq=9)
    assert state["link"]["state"] == "up"
    status, head, body = _get(view, "/api/streams/cam0")
    assert status == 200 and json.loads(body) == cam0
    assert head["Cache-Control"] == "no-store"
    status, head, body = _get(view, "/api/streams/nope")
    assert status == 404 and head["Content-Type"] == "application/json; charset=utf-8"
    assert "no stream 'nope'" in json.loads(body)["error"]
    # The run status names door; cam0 has messages; nope is nowhere.
    for known in ("cam0", "door"):
        status, head, body = _get(view, f"/stream/{known}")
        assert status == 200 and head["Content-Type"] == "text/html; charset=utf-8"
        assert b"<title>avstream</title>" in body
    status, head, body = _get(view, "/stream/nope")
    assert status == 404 and head["Content-Type"] == "text/html; charset=utf-8"
    assert b"no stream &#x27;nope&#x27; in this run (its streams: cam0, door)" in body
    view.stop()


def test_events_kept_are_the_last_fifty(view, publisher):
    _link_up(view, publisher)
    for seq in range(60):
        publisher.send("event.cam0", _event("update", seq=seq))
    publisher.send("pred.cam0", _prediction(seq=1))  # after them all: the last to arrive
    wait_until(lambda: _state(view)["streams"]["cam0"]["pred"], "the prediction")
    events = _state(view)["streams"]["cam0"]["events"]
    assert [e["seq"] for e in events] == list(range(10, 60))


def test_a_stream_page_waits_for_the_run_status_that_lists_it(view, publisher):
    """Right after the view starts, only another stream's messages may have come: a page of
    a stream the run has is not 404, it waits for the run's status (which lists them all)."""
    _link_up(view, publisher)  # cam0's status only: door is not known yet
    assert "door" not in _state(view)["streams"] and _state(view)["run"] is None
    answer: list = []
    asking = threading.Thread(target=lambda: answer.append(_get(view, "/stream/door")))
    asking.start()
    # The run status is sent until the answer is in, as a run sends it twice a second.
    while asking.is_alive():
        publisher.send("run", _run_status())
        asking.join(0.1)
    status, head, body = answer[0]
    assert status == 200, body
    assert b"<title>avstream</title>" in body
    status, head, body = _get(view, "/stream/nope")  # listed now: no wait, and 404
    assert status == 404 and b"its streams: cam0, door" in body


def test_a_message_that_is_not_valid_is_skipped(view, publisher):
    _link_up(view, publisher)
    publisher.socket.send_multipart([b"pred.cam1", b'{"schema": "avstream.prediction.v1"}'])
    publisher.socket.send_multipart([b"pred.x/../y", json.dumps(_prediction()).encode()])
    publisher.send("pred.cam2", _prediction(stream="cam2"))
    wait_until(lambda: _state(view)["streams"].get("cam2"), "the valid prediction")
    assert set(_state(view)["streams"]) == {"cam0", "cam2"}
    view.wait_for("not valid was skipped")


# -- what is served, and how --------------------------------------------------------------------

CSP = "default-src 'self'; connect-src 'self'; frame-ancestors 'none'"


def test_routes_content_types_and_security_headers(view, publisher):
    expected = {
        "/": "text/html; charset=utf-8",
        "/assets/app.js": "application/javascript; charset=utf-8",
        "/assets/style.css": "text/css; charset=utf-8",
        "/assets/index.html": "text/html; charset=utf-8",
        "/assets/favicon.svg": "image/svg+xml",
        "/api/state": "application/json; charset=utf-8",
        "/healthz": "text/plain; charset=utf-8",
    }
    for path, kind in expected.items():
        status, head, body = _get(view, path)
        assert (status, head["Content-Type"]) == (200, kind), path
        assert head["X-Content-Type-Options"] == "nosniff"
        assert head["Content-Security-Policy"] == CSP
        assert head["Referrer-Policy"] == "no-referrer"
        assert head["Server"] == "avstream"
        assert body
    assert _get(view, "/healthz")[2] == b"ok"
    shipped = REPO / "stream" / "web" / "assets" / "app.js"
    assert _get(view, "/assets/app.js")[2] == shipped.read_bytes()
    # No listing, no file outside the assets, however the path is spelled.
    source = (REPO / "stream" / "web" / "server.py").read_bytes()
    for path in (
        "/assets/",
        "/assets",
        "/assets/../server.py",
        "/assets/%2e%2e/server.py",
        "/assets/..%2fserver.py",
        "/assets/%2e%2e%2fserver.py",
        "/assets/..%5cserver.py",
        "/assets/.%2e/.%2e/auth.py",
        "//etc/passwd",
        "/../../etc/passwd",
        "/assets/nope.js",
        "/static/app.js",
    ):
        status, head, body = _get(view, path)
        assert status == 404, path
        assert b"import" not in body and b"root:" not in body and source[:200] not in body
        assert head["X-Content-Type-Options"] == "nosniff"


def test_video_without_frames_says_where_the_video_is(view, publisher):
    _link_up(view, publisher)
    for sid in ("cam0", "nope"):
        status, head, body = _get(view, f"/video/{sid}")
        assert status == 404
        assert body.decode().strip() == server.RELAY_LINE


def test_a_page_from_another_site_may_not_open_the_websocket(view):
    async def attempt(origin):
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(f"{view.url}/ws", origin=origin) as ws:
                return (await ws.receive_json(timeout=TIMEOUT))["kind"]

    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        asyncio.run(attempt("http://evil.example"))
    assert refused.value.status == 403
    assert asyncio.run(attempt(view.url)) == "hello"  # its own page may


def test_a_loopback_view_answers_to_loopback_names_only(view):
    """DNS rebinding: a site whose name is made to point at 127.0.0.1 sends its own name
    as Host; the view refuses it."""
    status, _, body = _get(view, "/api/state", {"Host": f"evil.example:{view.port}"})
    assert status == 403 and b"loopback address only" in body
    assert _get(view, "/api/state", {"Host": f"localhost:{view.port}"})[0] == 200
    assert _get(view, "/healthz", {"Host": "evil.example"})[0] == 200


def test_curve_keys_and_a_publisher_that_needs_them(tmp_path):
    """With the keys the view receives from a CURVE publisher; without, its link says what
    to pass."""
    make_keys(tmp_path / "keys", ["viewer"])
    keys = tmp_path / "keys"
    with Sending(
        [_status()],
        topic="status.cam0",
        curve_secret_key=str(keys / "server.key_secret"),
        curve_clients=str(keys / "clients"),
    ) as pub:
        plain = View("--connect", pub.endpoint)
        keyed = View(
            "--connect",
            pub.endpoint,
            "--curve-server-key",
            str(keys / "server.key"),
            "--curve-client-key",
            str(keys / "viewer.key_secret"),
        )
        try:
            wait_until(lambda: _state(keyed)["link"]["state"] == "up", "the keyed view's link")
            assert _state(keyed)["streams"]["cam0"]["status"]["schema"] == wire.STATUS_SCHEMA
            link = wait_until(
                lambda: "CURVE" in (d := _state(plain)["link"])["detail"] and d, "the reason"
            )
            assert link["state"] == "down"
            assert "requires CURVE encryption: pass --curve-server-key" in link["detail"]
            assert link["detail"].endswith("(retrying)")
            assert _state(plain)["streams"] == {}
            plain.stop()
            keyed.stop()
        finally:
            plain.kill()
            keyed.kill()


def test_signals_stop_it_cleanly(publisher):
    for sig in (signal.SIGINT, signal.SIGTERM):
        v = View("--connect", publisher.endpoint)
        try:
            v.stop(sig)
        finally:
            v.kill()
        assert v.lines[-1].endswith("stopped")


# -- the token --------------------------------------------------------------------------------


def _make_token(path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "stream.web", "--make-token", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    return path.read_text().strip()


def test_token_header_cookie_and_query(tmp_path, publisher):
    token = _make_token(tmp_path / "web.token")
    assert len(token) >= 40 and re.fullmatch(r"[A-Za-z0-9_-]+", token)
    v = View("--connect", publisher.endpoint, "--token-file", str(tmp_path / "web.token"))
    try:
        for path in ("/", "/api/state", "/ws", "/video/cam0", "/assets/app.js"):
            status, head, body = _get(v, path)
            assert status == 401, path
            assert head["WWW-Authenticate"].startswith("Bearer")
            assert b"Authorization: Bearer" in body and b"?token=" in body
            assert len(body.decode().strip().splitlines()) == 1
        wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
        for headers, path in (
            ({"Authorization": f"Bearer {wrong}"}, "/api/state"),
            ({"Cookie": f"avstream_token={wrong}"}, "/api/state"),
            ({}, f"/api/state?token={wrong}"),
            ({}, "/?token=short"),
        ):
            assert _get(v, path, headers)[0] == 401, (headers, path)
        assert _get(v, "/healthz")[0] == 200  # for a health check that has no token
        assert _state(v, {"Authorization": f"Bearer {token}"})["source"] == "connect"
        assert _state(v, {"Cookie": f"avstream_token={token}"})["source"] == "connect"
        assert _get(v, f"/api/state?token={token}")[0] == 200  # for an MJPEG client's URL
        # A page visit with ?token= sets the cookie and drops the token from the address.
        status, head, _ = _get(v, f"/?token={token}")
        assert status == 303 and head["Location"] == "/"
        cookie = head["Set-Cookie"]
        assert cookie.startswith(f"avstream_token={token};")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        status, head, _ = _get(v, f"/stream/cam0?token={token}")
        assert status == 303 and head["Location"] == "/stream/cam0"

        async def ws(origin):
            async with aiohttp.ClientSession(cookies={"avstream_token": token}) as s:
                async with s.ws_connect(f"{v.url}/ws", origin=origin) as conn:
                    return (await conn.receive_json(timeout=TIMEOUT))["kind"]

        assert asyncio.run(ws(v.url)) == "hello"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            asyncio.run(ws("http://evil.example"))
        assert refused.value.status == 403
        v.stop()
    finally:
        v.kill()


# -- bad input ---------------------------------------------------------------------------------


def _refused(*args: str, cwd=REPO) -> str:
    """The one error line of `python -m stream.web ARGS`, which must exit 2 at once."""
    done = subprocess.run(
        [sys.executable, "-m", "stream.web", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert done.stdout == ""
    return lines[0]


def test_port_in_use_is_one_line(publisher):
    with held_port() as port:
        line = _refused("--connect", publisher.endpoint, "--listen", f"127.0.0.1:{port}")
    assert f"127.0.0.1:{port} is in use" in line


def test_bad_input_is_one_line(tmp_path):
    ep = f"tcp://127.0.0.1:{free_port()}"
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "short").write_text("abc123\n")
    good = tmp_path / "good"
    good.write_text("x" * 43 + "\n")
    cases = {
        ("--connect", ep, "--listen", "0.0.0.0:8080"): "can be reached from other hosts",
        ("--connect", ep, "--listen", "0.0.0.0:8080", "--allow-remote"): "needs --token-file",
        ("--connect", ep, "--allow-remote"): "needs --token-file",
        ("--connect", ep, "--token-file", str(tmp_path / "missing")): "does not exist",
        ("--connect", ep, "--token-file", str(tmp_path / "empty")): "is empty",
        ("--connect", ep, "--token-file", str(tmp_path / "short")): "at least 16",
        ("--connect", ep, "--listen", "8080"): "is not HOST:PORT",
        ("--connect", ep, "--listen", "127.0.0.1:99999"): "is not HOST:PORT",
        ("--connect", ep, "--listen", "127.0.0.1:http"): "is not HOST:PORT",
        ("--connect", "localhost:5555"): "is not a ZeroMQ endpoint",
        (): "pass the run's endpoint with --connect",
        ("--connect", ep, "--curve-server-key", str(good)): "needs both",
        ("--connect", ep, "--fps", "0"): "--fps 0",
        ("--connect", ep, "--width", "3"): "--width 3",
        ("--make-token", str(good)): "exists already",
        ("--make-token", str(tmp_path / "no" / "dir")): "cannot be made",
        ("--connect", ep, "--make-token", str(tmp_path / "t")): "pass it alone",
        ("--connect", ep, "--bogus"): "unrecognized arguments",
    }
    for args, expected in cases.items():
        assert expected in _refused(*args), args
    assert good.read_text() == "x" * 43 + "\n"  # never overwritten
    assert not (tmp_path / "t").exists()


def test_check_listen_and_read_token(tmp_path):
    assert server.check_listen("127.0.0.1:0", allow_remote=False, token=None) == ("127.0.0.1", 0)
    assert server.check_listen("[::1]:80", allow_remote=False, token=None) == ("::1", 80)
    assert server.check_listen("localhost:80", allow_remote=False, token=None)[0] == "localhost"
    assert server.check_listen("0.0.0.0:1", allow_remote=True, token="t" * 16) == ("0.0.0.0", 1)
    with pytest.raises(UserError, match="--web 0.0.0.0:1 can be reached"):
        server.check_listen("0.0.0.0:1", allow_remote=False, token="t" * 16, flag="--web")
    path = tmp_path / "token"
    path.write_text("  " + "a" * 16 + "\n")
    assert server.read_token(str(path)) == "a" * 16
    path.write_text("a b" * 8)
    with pytest.raises(UserError, match="no spaces"):
        server.read_token(str(path))


# -- the frame path, in process ------------------------------------------------------------------


class Pictures:
    """A stand-in for the rings' reader (stream/web/frames.py, tested with real rings in
    tests/test_web_local.py): every grab is a new frame, a real JPEG of a noisy picture
    large enough that a few fill the sockets' buffers; cam0 has sound, cam1 has none."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.jpegs = []
        for _ in range(4):
            picture = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
            ok, jpeg = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 95])
            assert ok
            self.jpegs.append(jpeg.tobytes())
        self.grabs = {"cam0": 0, "cam1": 0}
        self.lock = threading.Lock()

    def streams(self) -> list[str]:
        return list(self.grabs)

    def grab(self, stream: str, width: int, quality: int) -> Frame | None:
        with self.lock:
            seq = self.grabs[stream]  # KeyError for an unknown stream, as the protocol says
            self.grabs[stream] += 1
        return Frame(stream, seq, time.monotonic_ns(), 1280, 720, self.jpegs[seq % 4])

    def level(self, stream: str) -> dict | None:
        return {"dbfs": -23.5, "peak_dbfs": -10.25} if stream == "cam0" else None


@pytest.fixture
def in_process():
    """serve() in a thread of this process, with Pictures as its frames."""
    pictures = Pictures()
    stop, urls, errors = threading.Event(), [], []
    opts = WebOptions(
        listen="127.0.0.1:0", connect=[f"tcp://127.0.0.1:{free_port()}"], fps=60, source="run"
    )

    def run():
        try:
            server.serve(opts, pictures, ready=urls.append, stop=stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
            urls.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not urls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert urls and urls[0], errors
    yield urls[0].rstrip("/"), pictures
    stop.set()
    thread.join(TIMEOUT)
    assert not thread.is_alive() and not errors


def _frame(data: bytes) -> tuple[dict, np.ndarray]:
    (n,) = struct.unpack(">H", data[:2])
    head = json.loads(data[2 : 2 + n])
    picture = cv2.imdecode(np.frombuffer(data[2 + n :], np.uint8), cv2.IMREAD_COLOR)
    return head, picture


def test_mjpeg_serves_the_frames(in_process):
    url, pictures = in_process

    async def read_parts():
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{url}/video/nope") as r:
                assert r.status == 404
            async with s.get(f"{url}/video/cam0") as r:
                assert r.status == 200
                assert r.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=frame"
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                reader = aiohttp.MultipartReader.from_response(r)
                parts = []
                for _ in range(3):
                    part = await asyncio.wait_for(reader.next(), TIMEOUT)
                    assert part.headers["Content-Type"] == "image/jpeg"
                    parts.append(await part.read())
                return parts

    parts = asyncio.run(read_parts())
    for data in parts:
        picture = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert picture.shape == (720, 1280, 3)
    assert len(set(map(bytes, parts))) > 1  # the frames change


def test_a_slow_page_gets_the_newest_frame_not_a_backlog(in_process):
    url, pictures = in_process

    async def session():
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(f"{url}/ws", max_msg_size=0) as ws:
                hello = await ws.receive_json(timeout=TIMEOUT)
                assert hello["kind"] == "hello" and hello["frames"] is True
                assert hello["source"] == "run"
                await ws.send_json({"kind": "watch", "streams": ["cam0"], "large": None})
                heads, levels = [], []
                while len(heads) < 3 or not levels:  # a page that keeps up: frames and levels
                    msg = await ws.receive(timeout=TIMEOUT)
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        head, picture = _frame(msg.data)
                        assert picture.shape == (720, 1280, 3)
                        if head["stream"] == "cam0":  # cam1 too, until the watch is read
                            heads.append(head)
                    elif json.loads(msg.data)["kind"] == "level":
                        levels.append(json.loads(msg.data))
                assert levels[0] == {
                    "kind": "level",
                    "stream": "cam0",
                    "dbfs": -23.5,
                    "peak_dbfs": -10.25,
                }
                # The page stops reading while the source makes 300 more frames (each over a
                # megabyte of JPEG), far more than the sockets' buffers hold.
                start = pictures.grabs["cam0"]
                while pictures.grabs["cam0"] < start + 300:
                    await asyncio.sleep(0.05)
                newest = pictures.grabs["cam0"] - 1
                received = 0
                while True:
                    msg = await ws.receive(timeout=TIMEOUT)
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        received += 1
                        if _frame(msg.data)[0]["seq"] >= newest:
                            break
                # What was in the buffers, then the newest: never the 300 in between.
                assert received < 100, received
                # Long after the watch: cam1, which nobody watches, is not read at all.
                unwatched, until = pictures.grabs["cam1"], pictures.grabs["cam0"] + 30
                while True:
                    msg = await ws.receive(timeout=TIMEOUT)
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        head = _frame(msg.data)[0]
                        assert head["stream"] == "cam0"
                        if head["seq"] >= until:
                            break
                assert pictures.grabs["cam1"] == unwatched

    asyncio.run(session())
