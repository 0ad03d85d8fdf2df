"""`python -m stream.bench --web-pages`: pages of the run's browser view in headless Chromium.

Each page is a Chromium of its own (Selenium drives it through chromedriver), as two people
looking at the view would have: tabs of one browser share a renderer and a hidden tab is
throttled. `Pages` opens them, waits until every tile of every page shows video and labels,
and reads what they showed (the `.video` canvas's `data-frames` and the tile's
`data-seq`, the page's hooks: stream/web/assets/app.js) and the CPU time their processes took.
selenium is imported here only: the benchmark without --web-pages does not need it.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

#: How long the pages may take to show every stream's video and labels once opened.
READY_TIMEOUT_S = 60.0

NEEDS_SELENIUM = (
    "error: --web-pages opens the view in headless Chromium through Selenium, which is not "
    "installed: pip install selenium (or 'avstream[test]')"
)

# Per tile: its stream, the frames its video has shown, the seq of the prediction it shows
# and how many label rows it has.
_READ = """
return Array.from(document.querySelectorAll('.tile[data-stream]')).map(t => {
  const video = t.querySelector('.video');
  return {stream: t.dataset.stream,
          frames: video ? Number(video.dataset.frames || 0) : 0,
          seq: Number(t.dataset.seq || -1),
          labels: t.querySelectorAll('.label').length};
});
"""


def chromium_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) from PATH (Debian: /usr/bin/chromium, /usr/bin/chromedriver)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def missing() -> str | None:
    """The one error line when pages cannot be opened here, else None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return NEEDS_SELENIUM
    if chromium_paths() is None:
        return (
            "error: --web-pages needs Chromium and its driver on PATH (chromium, chromedriver): "
            "apt-get install chromium chromium-driver"
        )
    return None


def chromium(root: Path, browser: str, driver: str, *, console: bool = False):
    """A headless Chromium (1280×720) driven by Selenium: (its webdriver, the driver's pid).

    Its profile and HOME are under `root`, so that every process it starts (the crash
    handler too, whose database lives under HOME, outside the driver's process tree) names
    `root` on its command line: `processes_naming(root)` finds them. The driver's path is
    given, so Selenium Manager never runs: nothing is downloaded. `console`: the page's
    console is kept for `get_log("browser")`. The browser tests open theirs here too."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    (root / "home").mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,720",
        f"--user-data-dir={root / 'profile'}",
        "--no-first-run",
    ):
        options.add_argument(arg)
    if console:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(driver, env={**os.environ, "HOME": str(root / "home")})
    return webdriver.Chrome(service=service, options=options), service.process.pid


def processes_naming(root: Path) -> set[int]:
    """The processes whose command line names `root` (a `chromium` browser's)."""
    needle = str(root).encode()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.add(int(entry))
            except OSError:
                continue
    return found


class PagesError(Exception):
    """The pages did not show the view (one line)."""


class Pages:
    """`count` headless Chromium windows (1280×720) on `url`, each showing the whole grid.

    Every browser has its profile and HOME in one temporary folder, so that each of its
    processes (the crash handler too, which leaves the driver's tree) names the folder on
    its command line: their CPU is counted, and `close` ends any that quitting left."""

    def __init__(self, url: str, count: int, streams: set[str]):
        browser, driver = chromium_paths()
        self.url = url
        self.streams = streams
        self.root = Path(tempfile.mkdtemp(prefix="avstream-bench-pages-"))
        self.drivers = []
        self._driver_pids: list[int] = []
        self._cpu_mark: dict[int, float] = {}
        self._marked_at = None
        try:
            for i in range(count):
                page, pid = chromium(self.root / f"page{i}", browser, driver)
                self.drivers.append(page)
                self._driver_pids.append(pid)
                page.get(url)
        except BaseException:
            self.close()
            raise

    def read(self) -> list[list[dict]]:
        """Per page, per tile: {stream, frames, seq, labels}."""
        return [d.execute_script(_READ) for d in self.drivers]

    def wait_ready(self, timeout: float = READY_TIMEOUT_S, check=lambda: None) -> list[list[dict]]:
        """Until every page has a tile of each stream that has shown a frame and a label
        (or PagesError after `timeout`); `check()` is called between looks (it may raise)."""
        give_up = time.monotonic() + timeout
        while True:
            pages = self.read()
            if all(_ready(tiles, self.streams) for tiles in pages):
                return pages
            if time.monotonic() > give_up:
                raise PagesError(
                    f"the pages on {self.url} showed no video or labels of "
                    f"{', '.join(sorted(self.streams))} within {timeout:g} s (tiles: {pages})"
                )
            check()
            time.sleep(0.2)  # polling the pages' own state, not waiting for time to pass

    def _pids(self) -> set[int]:
        """The drivers and every process that names the pages' folder (Chromium's)."""
        return set(self._driver_pids) | processes_naming(self.root)

    def _cpu(self) -> dict[int, float]:
        import psutil

        out = {}
        for pid in self._pids():
            try:
                p = psutil.Process(pid)
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
                t = p.cpu_times()
            except psutil.Error:
                continue
            out[pid] = t.user + t.system
        return out

    def mark(self) -> None:
        """Start counting the browsers' CPU time (`cpu` counts from here)."""
        self._cpu_mark = self._cpu()
        self._marked_at = time.monotonic()

    def cpu(self) -> dict:
        """CPU seconds of chromedriver and Chromium since `mark` (all pages together) and as
        a percentage of one core over that span; processes that started since count whole."""
        now = self._cpu()
        cpu_s = sum(v - self._cpu_mark.get(pid, 0.0) for pid, v in now.items())
        span = max(1e-9, time.monotonic() - (self._marked_at or time.monotonic()))
        return {
            "cpu_s": round(cpu_s, 2),
            "cpu_percent": round(100 * cpu_s / span, 1),
            "processes": len(now),
        }

    def close(self) -> None:
        """Quit the browsers; SIGKILL any of their processes still there 10 s later."""
        import psutil

        for d in self.drivers:
            try:
                d.quit()
            except Exception:  # noqa: BLE001 (a browser that died already: nothing to end)
                pass
        self.drivers = []
        left = []
        for pid in self._pids():
            try:
                left.append(psutil.Process(pid))
            except psutil.Error:
                continue
        _, alive = psutil.wait_procs(left, timeout=10)
        for p in alive:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        psutil.wait_procs(alive, timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)


def _ready(tiles: list[dict], streams: set[str]) -> bool:
    shown = {t["stream"] for t in tiles if t["frames"] > 0 and t["labels"] > 0}
    return streams <= shown


def shown(before: list[list[dict]], after: list[list[dict]], span_s: float) -> list[dict]:
    """Per page, over the measured span: frames shown (all tiles), their rate, and the
    predictions the labels went through (seq advanced), from two `Pages.read()`s."""
    out = []
    for first, last in zip(before, after):
        start = {t["stream"]: t for t in first}
        frames = sum(t["frames"] - start.get(t["stream"], {}).get("frames", 0) for t in last)
        seqs = sum(max(0, t["seq"] - start.get(t["stream"], {}).get("seq", t["seq"])) for t in last)
        out.append(
            {
                "frames": frames,
                "fps": round(frames / max(span_s, 1e-9), 2),
                "predictions": seqs,
                "tiles": len(last),
            }
        )
    return out


# -- clients without a browser -------------------------------------------------------------

#: The clients' process: N WebSocket clients of the view, each reading and dropping every
#: message; a line on stdin is answered with one line of JSON, each client's counts.
_CLIENTS = """
import asyncio, json, sys
import aiohttp

async def client(url, counts):
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, max_msg_size=0) as ws:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    counts["frames"] += 1
                elif msg.type == aiohttp.WSMsgType.TEXT and '"pred.' in msg.data[:80]:
                    counts["predictions"] += 1

async def main(url, n):
    counts = [{"frames": 0, "predictions": 0} for _ in range(n)]
    tasks = [asyncio.ensure_future(client(url, c)) for c in counts]
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        failed = [str(t.exception()) for t in tasks if t.done() and t.exception()]
        print(json.dumps({"clients": counts, "failed": failed}), flush=True)
    for t in tasks:
        t.cancel()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


class Clients:
    """`count` WebSocket clients of the view in a process of their own (aiohttp), as pages
    on other machines would be for the run's machine: the server encodes and sends every
    frame and message, and nothing decodes or draws them here. `read`, `wait_ready`,
    `mark`, `cpu` and `close` as Pages'."""

    def __init__(self, url: str, count: int, streams: set[str]):
        import subprocess
        import sys

        self.url = url
        self.streams = streams
        ws = url.replace("http://", "ws://", 1).rstrip("/") + "/ws"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CLIENTS, ws, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._cpu_mark = 0.0
        self._marked_at = None

    def read(self) -> list[list[dict]]:
        """Per client, one entry (the clients see every stream) like a page's tile."""
        import json

        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise PagesError(f"the WebSocket clients of {self.url} exited")
        answer = json.loads(line)
        if answer["failed"]:
            raise PagesError(f"a WebSocket client of {self.url} failed: {answer['failed'][0]}")
        return [
            [{"stream": "*", "frames": c["frames"], "seq": c["predictions"], "labels": 1}]
            for c in answer["clients"]
        ]

    def wait_ready(self, timeout: float = READY_TIMEOUT_S, check=lambda: None) -> list[list[dict]]:
        give_up = time.monotonic() + timeout
        while True:
            clients = self.read()
            if all(t["frames"] > 0 and t["seq"] > 0 for tiles in clients for t in tiles):
                return clients
            if time.monotonic() > give_up:
                raise PagesError(
                    f"the WebSocket clients of {self.url} got no frames or predictions "
                    f"within {timeout:g} s ({clients})"
                )
            check()
            time.sleep(0.2)  # polling the clients' counts, not waiting for time to pass

    def _cpu(self) -> float:
        import psutil

        try:
            t = psutil.Process(self.proc.pid).cpu_times()
        except psutil.Error:
            return 0.0
        return t.user + t.system

    def mark(self) -> None:
        self._cpu_mark = self._cpu()
        self._marked_at = time.monotonic()

    def cpu(self) -> dict:
        cpu_s = self._cpu() - self._cpu_mark
        span = max(1e-9, time.monotonic() - (self._marked_at or time.monotonic()))
        return {
            "cpu_s": round(cpu_s, 2),
            "cpu_percent": round(100 * cpu_s / span, 1),
            "processes": 1,
        }

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except Exception:  # noqa: BLE001 (subprocess.TimeoutExpired: ended below)
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stdout.close()
