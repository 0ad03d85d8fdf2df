"""`python -m stream.bench`: the latency numbers to check before trusting the pipeline.

Pipeline mode (default) runs the real pipeline — `python -m stream.run` as its own
process tree (capture processes, rings, inference, publisher) — on a synthetic source, a
file or a camera, subscribes from this process, and reports per stage, all from one
monotonic clock (stream/transport/wire.py names the timestamps):

  capture interval      time between consecutive captured frames (jitter = its spread)
  ring write            copying one frame into the FrameRing (capture process)
  ring read / frame     time in the ring per frame of a window: the inference reads
                        frames in place, so this is choosing and checking them
  capture → window      capture of the window's newest frame → its window starts (the
                        frame made and written, the loop seeing it land; audio models:
                        from the newest sample, which may come later)
  preprocess            resize, crop, normalise, straight from the ring's slots
  window + preprocess   window_ns → infer_start: choosing frames, preprocessing (and,
                        for audio models, the wait for the audio and the log-mel)
  engine                infer_start → infer_end
  publish               infer_end → publish: smoothing, top-k, JSON, send
  subscriber receive    publish → received here
  capture→publish       publish − capture of the newest sample in the window
  capture→subscriber    received here − capture
  overhead              capture→publish − engine: what the pipeline adds to the model

each as p50 / p90 / p99 / max; windows run and skipped; CPU and peak memory of every
process; and the slope of capture→publish over the run (ms per minute: growth shows a
leak or a backlog). Comma lists in --model, --engine and --stride sweep, one row each.

`--streams 1,4` runs rows of 1 and then 4 streams (the source once per --camera, ids
cam0, cam1, ...; `--max-batch` as stream.run's unless given) side by side: a row
pools every stream's windows and also has each stream's figures alone, the engine's calls
by windows per call (the run status, topic `run`), and per process (main, inference, each
capture) its CPU seconds over the measured span and its memory at the end, read from
/proc/PID/stat, /proc/PID/status and /proc/PID/smaps_rollup. A comparison then sets each
row against the one with the fewest streams: skipped windows, the worst stream's
capture→publish p99 as a ratio, and the memory each added stream costs.

Engine mode (--engine-only) times the models alone at their window shapes over
models × engines × precisions, and names the largest model (by FLOPs) whose engine
time fits the stride on this machine. `--batch 1,2,4,8` times each model's engine at
several batch sizes side by side, in one process with one engine built for the largest:
windows per second and ms per call for each, and how many times the windows per second
of one window a call each batch reaches.

Ctrl-C or SIGTERM is an orderly stop: the row being measured is dropped, the finished
rows are written (--json, --plot) and one line says what was kept; exit status 0.
Bad options: one `error:` line and exit status 2, before anything starts.
"""

from __future__ import annotations

from stream._deps import require_pipeline

require_pipeline("python -m stream.bench")  # before the imports that need the `run` extra

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from engines import malloc
from stream import control
from stream.bench.pages import shown
from stream.errors import ArgumentParser
from stream.pipeline.proc import start_ignoring_sigint
from stream.pipeline.stats import STATS, summary_ms
from stream.transport import wire
from stream.transport.subscribe import Subscriber

#: Windows at the start that are not counted (first-call allocations, caches).
WARMUP_WINDOWS = 3
#: --kill-every: how long a row waits, after its measurement, for the status that reports
#: the last kill (a generous bound: a loaded machine is slow to notice and report it).
KILL_REPORT_WAIT_S = 30.0
#: The bar while a row is measured, on a terminal:
#: `x3d_xs torch stride 0.25: <bar>   3/8 s, 12 windows, engine 40.1 ms, overhead 3.2 ms`.
BAR_FORMAT = "{desc}: {bar} {n:3.0f}/{total:.0f} s{postfix}"
#: The plot's names for the per-window series (stream/transport/wire.py and DESIGN.md define them).
SERIES = {
    "engine_ms": "engine",
    "overhead_ms": "pipeline overhead",
    "capture_to_publish_ms": "capture→publish",
    "capture_to_subscriber_ms": "capture→subscriber",
}
CAPTION = (
    "overhead = capture→publish − engine: what the pipeline adds to the model. "
    "Dashed: the stride, each window's time budget."
)


class Interrupted(Exception):
    """Ctrl-C or SIGTERM while measuring: the row under way is dropped."""


class _Signals:
    """SIGINT and SIGTERM set `name`; the loops check it and stop in order."""

    def __init__(self):
        self.name: str | None = None
        self._previous = {}

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._on) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _on(self, signum, frame) -> None:
        self.name = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def check(self) -> None:
        if self.name:
            raise Interrupted(self.name)


def _check_stop(args) -> None:
    """Raise Interrupted after Ctrl-C or SIGTERM (main sets args.signals)."""
    signals = getattr(args, "signals", None)
    if signals is not None:
        signals.check()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def machine() -> dict:
    from engines.inductor import cpu_model

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": platform.platform(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


# -- process accounting ------------------------------------------------------------------


class ProcessWatch:
    """CPU time and peak memory of a process tree, sampled while it runs."""

    def __init__(self, root_pid: int):
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(root_pid)
        self.me = psutil.Process()
        self.cpu: dict[int, tuple[str, float, float]] = {}  # pid -> (name, first cpu s, last cpu s)
        self.peak_rss: dict[int, tuple[str, float]] = {}
        self.rss_series: dict[int, list[tuple[float, float]]] = {}  # pid -> [(s, MB)]
        self.shm_series: list[tuple[float, float]] = []  # (s, MB of our segments in /dev/shm)
        self.started = time.monotonic()
        self.marks: dict[int, tuple[float, float]] = {}  # pid -> (when, cpu s) at mark()

    def _tree(self):
        try:
            return [self.root, *self.root.children(recursive=True), self.me]
        except self._psutil.NoSuchProcess:
            return [self.me]

    def _name(self, p) -> str:
        if p.pid == self.me.pid:
            return "subscriber"
        if p.pid == self.root.pid:
            return "main"
        try:
            cmd = " ".join(p.cmdline())
        except self._psutil.Error:
            return str(p.pid)
        if "resource_tracker" in cmd:
            return "resource-tracker"
        return p.name()

    def sample(self) -> None:
        for p in self._tree():
            try:
                with p.oneshot():
                    if p.status() == self._psutil.STATUS_ZOMBIE:
                        continue  # it has exited (a killed capture not yet reaped): no memory
                    t = p.cpu_times()
                    cpu_s = t.user + t.system
                    rss = p.memory_info().rss / 2**20
            except self._psutil.Error:
                continue
            name = self.cpu[p.pid][0] if p.pid in self.cpu else self._name(p)
            first = self.cpu[p.pid][1] if p.pid in self.cpu else cpu_s
            self.cpu[p.pid] = (name, first, cpu_s)
            if rss == 0:  # exiting, not yet a zombie: its memory is gone already
                continue
            self.peak_rss[p.pid] = (name, max(rss, self.peak_rss.get(p.pid, ("", 0.0))[1]))
            self.rss_series.setdefault(p.pid, []).append((time.monotonic() - self.started, rss))
        self.shm_series.append((time.monotonic() - self.started, shm_mb(self.root.pid)))

    def name_children(self, names: dict[int, str]) -> None:
        for pid, name in names.items():
            if pid in self.cpu:
                self.cpu[pid] = (name, *self.cpu[pid][1:])
            if pid in self.peak_rss:
                self.peak_rss[pid] = (name, self.peak_rss[pid][1])

    def mark(self) -> None:
        """The CPU time of every process of the tree now: `usage` counts from here."""
        now = time.monotonic()
        for p in self._tree():
            u = proc_usage(p.pid)
            if u is not None:
                self.marks[p.pid] = (now, u["cpu_s"])

    def usage(self, names: dict[str, int]) -> dict[str, dict]:
        """Per named process (name -> pid) still running: its pid, CPU seconds since
        `mark` (its whole life for one started after) and as a percentage of one core over
        that span, and its memory now (`proc_usage`)."""
        now = time.monotonic()
        out = {}
        for name, pid in names.items():
            u = proc_usage(pid)
            if u is None:
                continue
            since, cpu_then = self.marks.get(pid, (None, 0.0))
            cpu_s = u["cpu_s"] - cpu_then
            span = now - since if since is not None else u["age_s"]
            out[name] = {
                "pid": pid,
                "cpu_s": round(cpu_s, 2),
                "cpu_percent": round(100 * cpu_s / max(span, 1e-9), 1),
                **{k: round(v, 1) for k, v in u.items() if k.endswith("_mb")},
            }
        return out

    def restart_series(self) -> None:
        """Forget memory samples so far (start-up growth is not a leak)."""
        self.rss_series.clear()
        self.shm_series.clear()

    def rss_slopes(self, min_span_s: float) -> dict:
        """MB per minute of the processes watched for at least `min_span_s`."""
        out = {}
        for pid, series in self.rss_series.items():
            t, mb = np.array(series).T
            if t[-1] - t[0] >= min_span_s and len(t) >= 3:
                out[f"{self.cpu[pid][0]} ({pid})"] = round(float(np.polyfit(t / 60, mb, 1)[0]), 3)
        return out

    def summary(self) -> tuple[dict, dict]:
        wall = max(1e-9, time.monotonic() - self.started)
        cpu = {
            f"{n} ({pid})": round(100 * (last - first) / wall, 1)
            for pid, (n, first, last) in self.cpu.items()
        }
        rss = {f"{n} ({pid})": round(mb, 1) for pid, (n, mb) in self.peak_rss.items()}
        return cpu, rss


class OtherLoad:
    """CPU that processes other than this benchmark's took while a row was measured: the
    machine's busy time (/proc/stat) less that of this process and its descendants (the
    pipeline, the pages' browsers), sampled about every second. On a shared machine it
    says whether a row's numbers met someone else's work."""

    def __init__(self):
        import psutil

        self._me = psutil.Process()
        self._psutil = psutil
        self.samples: list[tuple[float, float, float]] = []  # (when, machine busy s, ours s)

    def _ours(self) -> float:
        total = 0.0
        try:
            t = self._me.cpu_times()
            total = t.user + t.system + t.children_user + t.children_system
            children = self._me.children(recursive=True)
        except self._psutil.Error:
            return total
        for p in children:
            try:
                t = p.cpu_times()
            except self._psutil.Error:
                continue
            total += t.user + t.system  # its reaped children are in its parent's
        return total

    def sample(self) -> None:
        self.samples.append((time.monotonic(), machine_busy_s(), self._ours()))

    def at(self, times_ns: list[int]) -> list[float | None]:
        """Others' CPU, % of one core, between the two samples around each time (monotonic
        ns: a window's capture); None outside the samples."""
        out = []
        for t in times_ns:
            when = t / 1e9
            pair = next(
                ((a, b) for a, b in zip(self.samples, self.samples[1:]) if a[0] <= when < b[0]),
                None,
            )
            if pair is None:
                out.append(None)
                continue
            a, b = pair
            rate = max(0.0, (b[1] - a[1]) - (b[2] - a[2])) / max(b[0] - a[0], 1e-9)
            out.append(round(100 * rate, 1))
        return out

    def summary(self) -> dict | None:
        """`mean_percent` of one core over the samples' span, and `max_2s_percent`: the
        most in any span of at least 2 s between samples."""
        if len(self.samples) < 2:
            return None

        def others(a, b) -> float:
            return max(0.0, (b[1] - a[1]) - (b[2] - a[2])) / max(b[0] - a[0], 1e-9)

        mean = others(self.samples[0], self.samples[-1])
        worst = mean  # the whole span is one of the spans (a shorter one is the only one)
        for i, a in enumerate(self.samples):
            b = next((b for b in self.samples[i + 1 :] if b[0] - a[0] >= 2.0), None)
            if b is not None:
                worst = max(worst, others(a, b))
        return {"mean_percent": round(100 * mean, 1), "max_2s_percent": round(100 * worst, 1)}


def machine_busy_s() -> float:
    """CPU seconds the machine's cores have been busy (all but idle and iowait) since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    jiffies = [int(x) for x in fields]
    idle = jiffies[3] + (jiffies[4] if len(jiffies) > 4 else 0)
    # guest time is already counted in user and nice
    busy = sum(jiffies[:8]) - idle
    return busy / os.sysconf("SC_CLK_TCK")


def proc_usage(pid: int) -> dict | None:
    """CPU seconds (user + system), age and memory of a process from /proc: `rss_mb`
    (VmRSS) and its parts `anon_mb`, `file_mb`, `shmem_mb` (the rings it maps count in
    every process that touched them), `peak_rss_mb` (VmHWM, the kernel's own peak) and
    `pss_mb` (smaps_rollup: each shared page divided among the processes that map it, so
    that the processes' sum is the memory they take together). None when it is gone or a
    zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    # stat(5): the fields after the command, which is in parentheses and may hold spaces;
    # fields[0] is field 3 (state), so utime (14), stime (15), starttime (22) are 11, 12, 19
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    kb = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            kb[key] = int(value.split()[0])
    if "VmRSS" not in kb:
        return None  # a kernel thread, or exiting
    pss = None
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) / 1024
                break
    except OSError:
        pass
    uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    out = {
        "cpu_s": (int(fields[11]) + int(fields[12])) / tick,
        "age_s": uptime_s - int(fields[19]) / tick,
        "rss_mb": kb["VmRSS"] / 1024,
        "anon_mb": kb.get("RssAnon", 0) / 1024,
        "file_mb": kb.get("RssFile", 0) / 1024,
        "shmem_mb": kb.get("RssShmem", 0) / 1024,
        "peak_rss_mb": kb.get("VmHWM", kb["VmRSS"]) / 1024,
    }
    if pss is not None:
        out["pss_mb"] = pss
    return out


def shm_mb(owner: int, shm_dir: str = "/dev/shm") -> float:
    """Size of the shared-memory segments that process `owner` created (the pipeline's
    main process creates its rings; a segment's name holds its creator's pid), now; 0
    where there is no /dev/shm. Other pipelines on the machine are not counted."""
    from stream.pipeline.ring import SEGMENT_PREFIX

    total = 0
    try:
        for entry in os.scandir(shm_dir):
            if entry.name.startswith(SEGMENT_PREFIX) and f"_{owner}_" in entry.name:
                try:
                    total += entry.stat().st_size
                except OSError:
                    pass
    except OSError:
        return 0.0
    return total / 2**20


# -- pipeline mode -----------------------------------------------------------------------


def summarise(
    preds: list,
    statuses: list,
    rss_cpu: tuple[dict, dict],
    *,
    model: str,
    engine: str,
    stride: float,
) -> tuple[dict, dict]:
    """(summary row, per-window samples) from received messages (stream.subscribe.Message)
    of every stream of a run. The row's figures pool the streams' windows (each stream's
    first WARMUP_WINDOWS left out); `per_stream` has the same figures of each stream alone,
    with its windows run, skipped and measured and `batch_sizes`: its measured windows by
    the number of windows their engine call ran."""
    ids = sorted({m.body["stream"] for m in (*preds, *statuses)}, key=lambda i: (len(i), i))
    measured, per_stream = [], []
    for sid in ids:
        received = [m for m in preds if m.body["stream"] == sid]
        own_statuses = [m for m in statuses if m.body["stream"] == sid]
        rows = received[WARMUP_WINDOWS:]
        measured += rows
        figures, _ = _figures(rows, own_statuses)
        last = own_statuses[-1].body if own_statuses else {}
        windows = last.get("windows", {})
        batch_sizes: dict[str, int] = {}
        for m in rows:
            size = str(m.body.get("batch", 1))
            batch_sizes[size] = batch_sizes.get(size, 0) + 1
        per_stream.append(
            {
                "stream": sid,
                "windows": {
                    "run": windows.get("run", len(received)),
                    "skipped": windows.get("skipped", 0),
                    "measured": len(rows),
                },
                "fps_in": last.get("fps_in"),
                "batch_sizes": dict(sorted(batch_sizes.items(), key=lambda kv: int(kv[0]))),
                **figures,
            }
        )
    measured.sort(key=lambda m: m.body["t"]["capture_ns"])
    figures, samples = _figures(measured, statuses)
    fps = [s["fps_in"] for s in per_stream if s["fps_in"] is not None]
    cpu, rss = rss_cpu
    row = {
        "model": model,
        "engine": measured[0].body["engine"] if measured else engine,
        "stride": stride,
        "streams": len(ids),
        "windows": {
            k: sum(s["windows"][k] for s in per_stream) for k in ("run", "skipped", "measured")
        },
        "fps_in": round(float(np.mean(fps)), 2) if fps else None,  # per stream
        **figures,
        "per_stream": per_stream,
        "cpu_percent": cpu,
        "peak_rss_mb": rss,
    }
    return row, samples


def _figures(rows: list, statuses: list) -> tuple[dict, dict]:
    """The latency figures of measured predictions (in capture order) and the capture-side
    ones of their streams' heartbeats: ({engine_ms, overhead_ms, capture_to_publish_ms,
    capture_to_subscriber_ms, stages_ms, latency_slope_ms_per_min}, per-window samples)."""
    t = {
        k: np.array([m.body["t"][k] for m in rows], dtype=np.int64)
        for k in ("capture_ns", "window_ns", "infer_start_ns", "infer_end_ns", "publish_ns")
    }
    recv = np.array([m.received_ns for m in rows], dtype=np.int64)
    engine_ms = (t["infer_end_ns"] - t["infer_start_ns"]) / 1e6
    c2p = (t["publish_ns"] - t["capture_ns"]) / 1e6
    c2s = (recv - t["capture_ns"]) / 1e6
    overhead = c2p - engine_ms
    minutes = (t["capture_ns"] - (t["capture_ns"][0] if len(rows) else 0)) / 60e9
    slope = float(np.polyfit(minutes, c2p, 1)[0]) if len(rows) >= 2 and minutes[-1] > 0 else None
    frames = np.array([m.body["window"]["frames"] for m in rows], dtype=np.float64)
    read_per_frame = np.array(
        [m.body.get("stages_ms", {}).get("ring_read", np.nan) for m in rows]
    ) / np.maximum(frames, 1)
    preprocess = np.array([m.body.get("stages_ms", {}).get("preprocess", np.nan) for m in rows])
    videos = [s.body["sources"]["video"] for s in statuses if s.body["state"] == "running"]

    def merged(key: str) -> dict:
        """Capture-side figures come from the heartbeats, each over the ring's contents:
        the median of their p50s, the worst of their p90s, p99s and maxima."""
        parts = [v[key] for v in videos if v.get(key)]
        if not parts:
            return dict.fromkeys(STATS)
        return {
            "p50": float(np.median([p["p50"] for p in parts])),
            "p90": max(p["p90"] for p in parts),
            "p99": max(p["p99"] for p in parts),
            "max": max(p["max"] for p in parts),
        }

    figures = {
        "engine_ms": summary_ms(engine_ms),
        "overhead_ms": summary_ms(overhead),
        "capture_to_publish_ms": summary_ms(c2p),
        "capture_to_subscriber_ms": summary_ms(c2s),
        "stages_ms": {
            "capture_interval": merged("interval_ms"),
            "ring_write": merged("ring_write_ms"),
            "ring_read_per_frame": summary_ms(read_per_frame[~np.isnan(read_per_frame)]),
            "capture_to_window": summary_ms((t["window_ns"] - t["capture_ns"]) / 1e6),
            "preprocess": summary_ms(preprocess[~np.isnan(preprocess)]),
            "window_and_preprocess": summary_ms((t["infer_start_ns"] - t["window_ns"]) / 1e6),
            "engine": summary_ms(engine_ms),
            "publish": summary_ms((t["publish_ns"] - t["infer_end_ns"]) / 1e6),
            "subscriber_receive": summary_ms((recv - t["publish_ns"]) / 1e6),
        },
        "latency_slope_ms_per_min": None if slope is None else round(slope, 4),
    }
    samples = {
        "t_s": (minutes * 60).round(4).tolist(),
        "capture_ns": t["capture_ns"].tolist(),  # the monotonic clock: set against others'
        "engine_ms": engine_ms.round(4).tolist(),
        "overhead_ms": overhead.round(4).tolist(),
        "capture_to_publish_ms": c2p.round(4).tolist(),
        "capture_to_subscriber_ms": c2s.round(4).tolist(),
        # the overhead's parts, per window: where a slow one lost its time
        "capture_to_window_ms": ((t["window_ns"] - t["capture_ns"]) / 1e6).round(4).tolist(),
        "window_and_preprocess_ms": ((t["infer_start_ns"] - t["window_ns"]) / 1e6)
        .round(4)
        .tolist(),
        "publish_ms": ((t["publish_ns"] - t["infer_end_ns"]) / 1e6).round(4).tolist(),
    }
    return figures, samples


def _label(model: str, engine: str, stride: float, streams: int, web: str = "") -> str:
    """A row's name in the lines that announce it: `x3d_xs auto stride 0.5` (one
    stream), `x3d_xs auto stride 0.5, 4 streams`, `x3d_xs auto stride 0.5, --web, 2 pages`."""
    return (
        f"{model} {engine} stride {stride}"
        + (f", {streams} streams" if streams > 1 else "")
        + (f", {web}" if web else "")
    )


def web_setting(web: dict) -> str:
    """A --web-pages row's setting in words: `no --web`, `--web, 0 pages`, `--web, 2 pages`,
    `--web, 2 ws clients`."""
    pages = web["pages"]
    if pages is None:
        return "no --web"
    if web.get("clients") == "websocket":
        return f"--web, {pages} ws client" + ("" if pages == 1 else "s")
    return f"--web, {pages} page" + ("" if pages == 1 else "s")


def web_key(web: dict) -> str:
    """A --web-pages setting as given: `off`, `0`, `2`, `2ws`."""
    if web["pages"] is None:
        return "off"
    return f"{web['pages']}ws" if web.get("clients") == "websocket" else str(web["pages"])


def parse_web_pages(text: str) -> list[dict]:
    """--web-pages: [{"pages": None (off) or N, "clients": "chromium" or "websocket"}], in
    the order given; ValueError for anything else."""
    out = []
    for item in _csv(text):
        item = item.lower()
        if item == "off":
            out.append({"pages": None, "clients": None})
            continue
        ws = item.endswith("ws")
        digits = item.removesuffix("ws")
        if not digits.isdigit():
            raise ValueError(item)
        out.append({"pages": int(digits), "clients": "websocket" if ws else "chromium"})
    if not out:
        raise ValueError(text)
    return out


def run_pipeline(
    args, model: str, engine: str, stride: float, streams: int = 1, web: dict | None = None
) -> tuple[dict, dict]:
    """One row: stream.run with `streams` cameras, each the source (ids cam0, cam1, ...),
    measured from this process for --duration seconds after the first prediction.

    `web` (--web-pages): {"pages": None (no --web), or N pages, "round": its turn}. With
    --web the run serves its browser view on a free port; N > 0 pages are opened in
    headless Chromium once it publishes, and the row is measured from the moment every
    page shows every stream's video and labels (the windows captured before are left out).
    `Nws` (clients "websocket") opens N WebSocket clients without a browser instead: what
    viewers on other machines cost the run's machine. The row's `web` has what the pages
    showed over the span (`shown`: frames, their rate, the predictions their labels went
    through), the CPU of the web process and of the viewers (the browsers, or the clients'
    process), and the windows run and skipped within the span."""
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    argv = [sys.executable, "-m", "stream.run"]
    for _ in range(streams):
        argv += ["--camera", args.source, "--mic", args.mic]
    argv += [
        "--model",
        model,
        "--engine",
        engine,
        "--stride",
        str(stride),
        "--publish",
        endpoint,
        # no control socket: a benchmark never takes a run's port (5554) nor needs stream.ctl
        "--control",
        "none",
        "--log-level",
        "warning",
    ]
    if args.max_batch:  # else stream.run's default: what a user's run of these cameras does
        argv += ["--max-batch", str(args.max_batch)]
    if args.config:
        argv += ["--config", args.config]
    if args.precisions:
        argv += ["--precision", args.precisions[0]]
    if not args.compile:
        argv += ["--no-compile"]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    argv += ["--malloc", args.malloc]
    if args.weights:
        argv += ["--weights", args.weights]
    if args.source == "synthetic":
        argv += ["--size", args.size, "--fps", str(args.fps)]
    elif not args.source.isdigit():
        argv += ["--loop"]
    pages_wanted = web["pages"] if web else None
    websocket = bool(web) and web.get("clients") == "websocket"
    web_url = None
    if pages_wanted is not None:
        web_port = _free_port()
        argv += ["--web", f"127.0.0.1:{web_port}"]
        web_url = f"http://127.0.0.1:{web_port}/"
    label = _label(model, engine, stride, streams, web_setting(web) if web else "")
    pages = None
    shown_before = None
    start_ns = 0  # predictions of windows captured before it are not measured
    windows_at_start: dict[str, dict] = {}
    preds, statuses, runs = [], [], []
    launched = time.monotonic()
    proc = subprocess.Popen(argv)
    watch = ProcessWatch(proc.pid)
    others = OtherLoad()
    load = SubscriberLoad(endpoint, args.load_subscribers) if args.load_subscribers else None
    kills: list[str] = []
    killed_pids: set[int] = set()
    next_kill = None
    bar = None
    try:
        topics = ("pred.", "status.", wire.RUN_TOPIC)
        with Subscriber(endpoint, topics=topics) as sub:
            first = None
            give_up = time.monotonic() + args.startup_timeout
            next_sample = 0.0
            while first is None or time.monotonic() - first < args.duration:
                # before the pipeline's exit: Ctrl-C in a terminal stops it too
                _check_stop(args)
                if time.monotonic() > give_up or proc.poll() is not None:
                    raise SystemExit(
                        f"error: the pipeline did not run ({model}, {engine}): "
                        f"exit code {proc.poll()}"
                    )
                if time.monotonic() >= next_sample:
                    watch.sample()
                    if first is not None:
                        others.sample()
                    next_sample = time.monotonic() + 1.0
                if next_kill is not None and time.monotonic() >= next_kill and statuses:
                    killed = _kill_a_capture(statuses[-1].body, len(kills), killed_pids)
                    if killed is not None:  # else the next status may show it back up
                        kills.append(killed)
                        next_kill += args.kill_every
                try:
                    msg = sub.recv(timeout=0.5)
                except TimeoutError:
                    continue
                if _heartbeat(msg, statuses, runs):
                    continue
                if first is None:
                    first_prediction = time.monotonic()
                    if pages_wanted:
                        from stream.bench.pages import Clients, Pages

                        # Opened while the run publishes; waiting for them is start-up.
                        ids = {f"cam{i}" for i in range(streams)}
                        opener = Clients if websocket else Pages
                        pages = opener(web_url, pages_wanted, ids)
                        shown_before = pages.wait_ready(check=lambda: _check_running(args, proc))
                        start_ns = time.monotonic_ns()
                        pages.mark()
                        # What queued meanwhile: the heartbeats that count the windows so far
                        # (the predictions were captured before the span).
                        _drain(sub, statuses, runs)
                    first = time.monotonic()
                    give_up = first + args.duration + 60
                    watch.restart_series()
                    watch.mark()
                    others.sample()
                    windows_at_start = {
                        m.body["stream"]: dict(m.body.get("windows", {})) for m in statuses
                    }
                    if args.kill_every:
                        next_kill = first + args.kill_every
                    # One line per row, also in a log; the bar below it on a terminal only
                    # (tqdm's rule: none in a log or a pipe), gone when the row ends.
                    print(f"{label}: measuring {args.duration:g} s", file=sys.stderr, flush=True)
                    bar = tqdm(
                        total=args.duration,
                        desc=label,
                        bar_format=BAR_FORMAT,
                        disable=None,
                        leave=False,
                        dynamic_ncols=True,
                    )
                if msg.body["t"]["capture_ns"] < start_ns:
                    continue
                preds.append(msg)
                lat = msg.body["latency_ms"]
                bar.set_postfix_str(
                    f"{len(preds)} windows, engine {lat['engine']:.1f} ms, "
                    f"overhead {lat['capture_to_publish'] - lat['engine']:.1f} ms",
                    refresh=False,
                )
                bar.update(min(time.monotonic() - first, args.duration) - bar.n)
            watch.sample()
            others.sample()
            if pages is not None:
                span_s = time.monotonic() - first
                shown_after = pages.read()
                browser_cpu = pages.cpu()
                pages.close()  # before the run stops: a page would only try to reconnect
            # One more heartbeat of every stream and of the run for the final counts; after
            # kills, the one that reports the last kill's death (the supervisor notices it,
            # then tells the inference).
            waiting = {m.body["stream"] for m in preds} | {wire.RUN_TOPIC}
            end = time.monotonic() + (KILL_REPORT_WAIT_S if kills else 1.5)
            while waiting and time.monotonic() < end:
                try:
                    msg = sub.recv(timeout=max(0.01, end - time.monotonic()))
                except TimeoutError:
                    break
                if msg.topic == wire.RUN_TOPIC:
                    runs.append(msg)
                    waiting.discard(wire.RUN_TOPIC)
                elif msg.topic.startswith("status."):
                    statuses.append(msg)
                    if _restarts(msg.body) >= len(kills):
                        waiting.discard(msg.body["stream"])
        # The heartbeats name the processes of the pipeline; every one seen, since a
        # capture restarted by --kill-every has a new pid in each life.
        watch.name_children(
            {pid: name for status in statuses for pid, name in _process_names(status.body)}
        )
        # The last heartbeat of each stream names the processes running now.
        now_running = {
            name: pid for status in statuses for pid, name in _process_names(status.body)
        }
        if pages_wanted is not None and "web" not in now_running:
            web_pid = _web_pid(proc.pid, set(now_running.values()))
            if web_pid is not None:
                now_running["web"] = web_pid
        processes = watch.usage(now_running)
    finally:
        if bar is not None:
            bar.close()
        if pages is not None:
            pages.close()
        if load is not None:
            load.stop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    row, samples = summarise(
        preds, statuses, watch.summary(), model=model, engine=engine, stride=stride
    )
    row["streams"] = streams  # as started: one that published nothing has no per_stream entry
    samples["others_percent"] = others.at(samples["capture_ns"])
    if runs:
        last = runs[-1].body
        row["max_batch"] = last["max_batch"]
        row["batch_wait_s"] = last["batch_wait_s"]
        # engine calls since the run started, by windows per call (index 0: one window)
        row["batches"] = last["batches"]
    row["processes"] = processes
    row["rss_total_mb"] = round(sum(p["rss_mb"] for p in processes.values()), 1)
    if all("pss_mb" in p for p in processes.values()):
        row["pss_total_mb"] = round(sum(p["pss_mb"] for p in processes.values()), 1)
    row["shm_mb"] = round(watch.shm_series[-1][1], 1) if watch.shm_series else None
    # Launch to the first prediction received: start-up (imports, the model, loading or
    # compiling the engine, opening the source) plus the first window's span of frames.
    row["startup_s"] = None if first is None else round(first_prediction - launched, 2)
    row["load_subscribers"] = args.load_subscribers
    row["others_cpu_percent"] = others.summary()
    if web:
        row["web"] = {
            **web,
            "url": web_url,
            "windows_in_span": _windows_since(windows_at_start, statuses),
            "web_process": processes.get("web"),
        }
        if pages is not None:
            row["web"]["shown"] = shown(shown_before, shown_after, span_s)
            row["web"]["viewers"] = browser_cpu
    if args.kill_every:
        row["soak"] = soak_summary(preds, statuses, kills, watch, model)
    return row, samples


def _heartbeat(msg, statuses: list, runs: list) -> bool:
    """Keep `msg` if it is a stream's heartbeat or the run's status (True), else False."""
    if msg.topic == wire.RUN_TOPIC:
        runs.append(msg)
    elif msg.topic.startswith("status."):
        statuses.append(msg)
    else:
        return False
    return True


def _drain(sub: Subscriber, statuses: list, runs: list) -> None:
    """Read what has queued on `sub`, keeping the heartbeats and run statuses."""
    while True:
        try:
            msg = sub.recv(timeout=0)
        except TimeoutError:
            return
        _heartbeat(msg, statuses, runs)


def _check_running(args, proc: subprocess.Popen) -> None:
    """Between looks at the pages: Ctrl-C, or a pipeline that has exited, ends the row."""
    _check_stop(args)
    if proc.poll() is not None:
        raise SystemExit(
            f"error: the pipeline exited while the pages opened: exit code {proc.poll()}"
        )


def _web_pid(root: int, named: set[int]) -> int | None:
    """The web process of a run with --web: the one child of its main process that is
    neither named in the heartbeats (inference, captures) nor multiprocessing's resource
    tracker. None when that is not one process."""
    import psutil

    try:
        children = psutil.Process(root).children()
        found = [
            c.pid
            for c in children
            if c.pid not in named and "resource_tracker" not in " ".join(c.cmdline())
        ]
    except psutil.Error:
        return None
    return found[0] if len(found) == 1 else None


def _windows_since(at_start: dict[str, dict], statuses: list) -> dict:
    """Windows run and skipped over the measured span, summed over the streams: each
    stream's last heartbeat's counts less those of its last one before the span (the
    heartbeats come every second: the count may take in a second more on each side)."""
    last = {m.body["stream"]: m.body.get("windows", {}) for m in statuses}
    return {
        key: sum(w.get(key, 0) - at_start.get(sid, {}).get(key, 0) for sid, w in last.items())
        for key in ("run", "skipped")
    }


def _process_names(status: dict) -> list[tuple[int, str]]:
    """(pid, name) of the processes a stream's heartbeat lists: `main`, `inference`,
    `web`, and its captures by stream (`capture-video:cam0`)."""
    out = []
    for kind, pid in status.get("processes", {}).items():
        name = (
            kind
            if kind in ("main", "inference", "web")
            else control.capture_name(kind, status["stream"])
        )
        out.append((pid, name))
    return out


class SubscriberLoad:
    """Bad subscribers beside the measured one: `count` that subscribe and never read, one
    that reads a message now and then, and one thread that keeps connecting and leaving."""

    def __init__(self, endpoint: str, count: int):
        import threading

        import zmq

        self._zmq = zmq
        ctx = zmq.Context.instance()
        self.idle = []
        for _ in range(count):
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.RCVHWM, 1)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(endpoint)
            self.idle.append(s)
        self._halt = threading.Event()
        self._threads = [
            threading.Thread(target=self._churn, args=(ctx, endpoint), daemon=True),
            threading.Thread(target=self._stall, args=(ctx, endpoint), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _churn(self, ctx, endpoint: str) -> None:
        zmq = self._zmq
        while not self._halt.wait(0.02):
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SUBSCRIBE, b"pred.")
            s.connect(endpoint)
            self._halt.wait(0.05)
            s.close(0)

    def _stall(self, ctx, endpoint: str) -> None:
        zmq = self._zmq
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SUBSCRIBE, b"")
        s.connect(endpoint)
        while not self._halt.wait(5.0):  # one message every 5 s
            if s.poll(0):
                s.recv_multipart()
        s.close(0)

    def stop(self) -> None:
        self._halt.set()
        for t in self._threads:
            t.join(6)
        for s in self.idle:
            s.close(0)


def _kill_a_capture(status: dict, n: int, killed: set[int]) -> str | None:
    """SIGKILL a capture process (video and audio in turn) and return its name; None, and
    no kill, while the status shows it down or still with a pid killed before (until its
    restart is up: a kill then would hit a process already dead, or a zombie its parent
    has not reaped yet, and count a kill that nothing reports)."""
    names = sorted(k for k in status["processes"] if k.startswith("capture-"))
    name = names[n % len(names)]
    pid = status["processes"][name]
    source = status["sources"].get(name.removeprefix("capture-"), {})
    if pid in killed or source.get("state") != "up":
        return None
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    killed.add(pid)
    return name


def _restarts(status: dict) -> int:
    """Restarts of the capture processes that a status reports, summed over the sources."""
    return sum(src.get("restarts", 0) for src in status["sources"].values())


def soak_summary(
    preds: list, statuses: list, kills: list[str], watch: ProcessWatch, model: str
) -> dict:
    """What a soak run must show: every restart reported, memory and /dev/shm flat, and
    no prediction built from frames older than its window."""
    import models

    span_s = models.create(model).meta.span_s
    restarts = {}  # per source, the most any status said (they only grow)
    for s in statuses:
        for kind, src in s.body["sources"].items():
            if "restarts" in src:
                restarts[kind] = max(restarts.get(kind, 0), src["restarts"])
    too_old = sum(
        (p.body["window"]["end_ns"] - p.body["window"]["start_ns"]) / 1e9 > span_s + 0.1
        for p in preds
    )
    shm = [mb for _, mb in watch.shm_series]
    return {
        "kills": len(kills),
        "restarts_reported": sum(restarts.values()),
        "degraded_predictions": sum(bool(p.body["degraded"]) for p in preds),
        "windows_older_than_span": too_old,
        "shm_mb": {"first": round(shm[0], 3), "last": round(shm[-1], 3), "max": round(max(shm), 3)}
        if shm
        else None,
        "rss_slope_mb_per_min": watch.rss_slopes(
            min_span_s=0.8 * (watch.shm_series[-1][0] - watch.shm_series[0][0]) if shm else 0
        ),
    }


def _row_key(row: dict) -> str:
    """The key of a row's per-window samples in the JSON's "samples":
    `model|engine|stride|streams`, and with --web-pages `|web-P|R` (P pages or `off`,
    R the setting's turn: 1, 2, ...)."""
    key = f"{row['model']}|{row['engine']}|{row['stride']}|{row['streams']}"
    if "web" in row:
        key += f"|web-{web_key(row['web'])}|{row['web']['round']}"
    return key


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_row(row: dict) -> str:
    def f(stat: dict) -> str:
        return " / ".join(_ms(stat[k]) for k in STATS)

    w = row["windows"]
    n = row["streams"]
    head = f"{row['model']} on {row['engine']}, stride {row['stride']} s"
    inputs = f"{row['fps_in']} fps in"
    if n > 1:
        head += f", {n} streams"
        inputs += f" each, batches of up to {row.get('max_batch')}"
    lines = [
        (
            f"{head} ({inputs}): "
            f"windows run {w['run']}, skipped {w['skipped']}, measured {w['measured']}; "
            f"capture→publish slope {row['latency_slope_ms_per_min']} ms/min; "
            f"first prediction {row['startup_s']} s after launch"
        ),
        "  ms (p50 / p90 / p99 / max)",
    ]
    for name, stat in row["stages_ms"].items():
        lines.append(f"  {name:22s} {f(stat)}")
    lines += [
        f"  {'overhead':22s} {f(row['overhead_ms'])}",
        f"  {'capture→publish':22s} {f(row['capture_to_publish_ms'])}",
        f"  {'capture→subscriber':22s} {f(row['capture_to_subscriber_ms'])}",
        "  cpu %: " + ", ".join(f"{k} {v}" for k, v in row["cpu_percent"].items()),
        *(
            [
                f"  other processes on the machine, % of one core in the span: mean "
                f"{row['others_cpu_percent']['mean_percent']}, most in any 2 s "
                f"{row['others_cpu_percent']['max_2s_percent']}"
            ]
            if row.get("others_cpu_percent")
            else []
        ),
        "  peak RSS MB: " + ", ".join(f"{k} {v}" for k, v in row["peak_rss_mb"].items()),
    ]
    if n > 1:
        lines.append("  per stream: windows run / skipped / measured; capture→publish ms p50 / p99")
        for s in row["per_stream"]:
            sw, c2p = s["windows"], s["capture_to_publish_ms"]
            lines.append(
                f"    {s['stream']:10s} {sw['run']} / {sw['skipped']} / {sw['measured']}; "
                f"{_ms(c2p['p50'])} / {_ms(c2p['p99'])}"
            )
    if row.get("batches"):
        lines.append(
            "  engine calls by windows per call: "
            + ", ".join(f"{i + 1}: {c}" for i, c in enumerate(row["batches"]))
        )
    if row.get("processes"):
        lines.append(
            "  measured span, per process: CPU s, RSS MB (PSS MB): "
            + ", ".join(
                f"{name} {p['cpu_s']} s, {p['rss_mb']} ({p.get('pss_mb', '-')})"
                for name, p in row["processes"].items()
            )
        )
    if "web" in row:
        web = row["web"]
        line = f"  browser view: {web_setting(web)}"
        if web["url"]:
            line += f" on {web['url']}"
        span = web["windows_in_span"]
        line += f"; in the span windows run {span['run']}, skipped {span['skipped']}"
        if web.get("web_process"):
            line += f"; web process {web['web_process']['cpu_percent']} % of a core"
        if web.get("viewers"):
            what = "ws clients" if web["clients"] == "websocket" else "browsers"
            line += f"; {what} {web['viewers']['cpu_percent']} % of a core"
        lines.append(line)
        for i, page in enumerate(web.get("shown", [])):
            lines.append(
                f"    page {i + 1}: {page['frames']} frames ({page['fps']} per s) in "
                f"{page['tiles']} tile(s), labels of {page['predictions']} predictions"
            )
    if "soak" in row:
        lines.append(f"  soak: {json.dumps(row['soak'])}")
    return "\n".join(lines)


def compare_streams(rows: list[dict]) -> list[dict]:
    """Rows of one model, engine and stride with different numbers of streams, each set
    against the one with the fewest (`vs_streams`): its windows skipped, the worst
    stream's capture→publish p50 and p99 and that p99 over the fewest streams' worst
    (`p99_ratio`), the memory of its processes (main, inference, captures) summed as RSS
    and as PSS, and what each stream beyond the fewest added to them. Empty when no row
    has a partner."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        web = row.get("web") or {}
        key = (row["model"], row["engine"], row["stride"], web.get("pages"), web.get("round"))
        groups.setdefault(key, []).append(row)
    out = []
    for group in groups.values():
        if len({r["streams"] for r in group}) < 2:
            continue
        group = sorted(group, key=lambda r: r["streams"])
        base = group[0]

        def worst(row: dict, key: str) -> float | None:
            values = [s["capture_to_publish_ms"][key] for s in row["per_stream"]]
            values = [v for v in values if v is not None]
            return max(values) if values else None

        base_p99 = worst(base, "p99")
        for row in group:
            extra = row["streams"] - base["streams"]
            p99 = worst(row, "p99")
            entry = {
                "model": row["model"],
                "engine": row["engine"],
                "stride": row["stride"],
                "streams": row["streams"],
                "vs_streams": base["streams"],
                "windows_run": row["windows"]["run"],
                "windows_skipped": row["windows"]["skipped"],
                "capture_to_publish_p50_ms": worst(row, "p50"),
                "capture_to_publish_p99_ms": p99,
                "p99_ratio": round(p99 / base_p99, 2) if p99 and base_p99 else None,
                "rss_total_mb": row.get("rss_total_mb"),
                "pss_total_mb": row.get("pss_total_mb"),
            }
            for key in ("rss", "pss"):
                total, base_total = row.get(f"{key}_total_mb"), base.get(f"{key}_total_mb")
                entry[f"{key}_added_per_stream_mb"] = (
                    round((total - base_total) / extra, 1)
                    if extra and total is not None and base_total is not None
                    else None
                )
            out.append(entry)
    return out


def format_comparison(entries: list[dict]) -> str:
    lines = [
        "streams side by side: capture→publish ms of the worst stream; memory of main, "
        "inference and the captures",
        f"  {'':28s} {'streams':>7s} {'run':>6s} {'skipped':>7s} {'p50':>8s} {'p99':>8s} "
        f"{'p99 ×':>6s} {'RSS MB':>8s} {'+/stream':>8s} {'PSS MB':>8s} {'+/stream':>8s}",
    ]

    def num(v, spec=".1f") -> str:
        return "-" if v is None else format(v, spec)

    for e in entries:
        lines.append(
            f"  {e['model'] + ' ' + e['engine'] + ' ' + str(e['stride']) + ' s':28s} "
            f"{e['streams']:7d} {e['windows_run']:6d} {e['windows_skipped']:7d} "
            f"{num(e['capture_to_publish_p50_ms'], '.2f'):>8s} "
            f"{num(e['capture_to_publish_p99_ms'], '.2f'):>8s} {num(e['p99_ratio'], '.2f'):>6s} "
            f"{num(e['rss_total_mb']):>8s} {num(e['rss_added_per_stream_mb']):>8s} "
            f"{num(e['pss_total_mb']):>8s} {num(e['pss_added_per_stream_mb']):>8s}"
        )
    return "\n".join(lines)


#: Issue #21: capture→publish p99 with two pages open within 10 % of the run without --web.
WEB_P99_LIMIT = 1.10
#: A window is "quiet" when the machine's other processes took at most this much of one
#: core (%) in the second around its capture (OtherLoad): on a shared machine the pooled
#: figures are given for all windows and for the quiet ones.
QUIET_PERCENT = 10.0


def compare_web(rows: list[dict], samples: dict) -> dict:
    """--web-pages rows of one model, engine, stride and number of streams side by side:
    `rows`, one entry per row with its capture→publish p50 and p99 (every stream's
    windows), engine p50, windows run and skipped within the span, CPU of the web process
    and of the browsers, the frames each page showed per second, and `p99_ratio`: its p99
    over the `no --web` row of the same turn; `pooled`, one entry per setting with the
    windows of all its turns pooled (a p99 of more windows), its ratio over the pooled
    `no --web` windows and `within_limit` (at most WEB_P99_LIMIT), and the same of the
    `quiet` windows alone (other processes at most QUIET_PERCENT of a core around their
    capture). Empty without a `no --web` row to set them against."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if "web" in row:
            key = (row["model"], row["engine"], row["stride"], row["streams"])
            groups.setdefault(key, []).append(row)
    entries, pooled = [], []
    for (model, engine, stride, streams), group in groups.items():
        base = {r["web"]["round"]: r for r in group if r["web"]["pages"] is None}
        if not base:
            continue
        head = {"model": model, "engine": engine, "stride": stride, "streams": streams}
        for row in group:
            web = row["web"]
            c2p = row["capture_to_publish_ms"]
            partner = base.get(web["round"])
            base_p99 = partner["capture_to_publish_ms"]["p99"] if partner else None
            pages = web.get("shown") or []
            entries.append(
                {
                    **head,
                    "setting": web_setting(web),
                    "pages": web["pages"],
                    "clients": web["clients"],
                    "round": web["round"],
                    "windows_run": web["windows_in_span"]["run"],
                    "windows_skipped": web["windows_in_span"]["skipped"],
                    "capture_to_publish_p50_ms": c2p["p50"],
                    "capture_to_publish_p99_ms": c2p["p99"],
                    "engine_p50_ms": row["engine_ms"]["p50"],
                    "p99_ratio": _ratio(c2p["p99"], base_p99),
                    "web_cpu_percent": (web.get("web_process") or {}).get("cpu_percent"),
                    "viewers_cpu_percent": (web.get("viewers") or {}).get("cpu_percent"),
                    "page_fps": min((p["fps"] for p in pages), default=None),
                    "others_max_2s_percent": (row.get("others_cpu_percent") or {}).get(
                        "max_2s_percent"
                    ),
                }
            )
        settings: dict = {}
        for row in group:
            s = samples[_row_key(row)]
            c2p = s["capture_to_publish_ms"]
            others = s.get("others_percent") or [None] * len(c2p)
            quiet = [v for v, o in zip(c2p, others) if o is not None and o <= QUIET_PERCENT]
            _, every, calm = settings.setdefault(web_key(row["web"]), (row["web"], [], []))
            every.extend(c2p)
            calm.extend(quiet)
        base_p99 = summary_ms(settings["off"][1])["p99"]
        base_quiet_p99 = summary_ms(settings["off"][2])["p99"]
        for key, (web, values, calm) in settings.items():
            stat, quiet = summary_ms(values), summary_ms(calm)
            ratio = _ratio(stat["p99"], base_p99)
            quiet_ratio = _ratio(quiet["p99"], base_quiet_p99)
            pooled.append(
                {
                    **head,
                    "setting": web_setting(web),
                    "pages": web["pages"],
                    "clients": web["clients"],
                    "rounds": sum(web_key(r["web"]) == key for r in group),
                    "windows": len(values),
                    "capture_to_publish_p50_ms": stat["p50"],
                    "capture_to_publish_p99_ms": stat["p99"],
                    "p99_ratio": ratio,
                    "within_limit": None if ratio is None else ratio <= WEB_P99_LIMIT,
                    "quiet": {
                        "windows": len(calm),
                        "capture_to_publish_p50_ms": quiet["p50"],
                        "capture_to_publish_p99_ms": quiet["p99"],
                        "p99_ratio": quiet_ratio,
                        "within_limit": None
                        if quiet_ratio is None
                        else quiet_ratio <= WEB_P99_LIMIT,
                    },
                }
            )
    return {"rows": entries, "pooled": pooled} if entries else {}


def _ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 3) if value is not None and base else None


def format_web_comparison(comparison: dict) -> str:
    def num(v, spec=".2f") -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        "browser view side by side: capture→publish ms (every window of the span), "
        "its p99 over the same turn's run without --web; CPU % of one core (others: "
        "other processes on the machine, the most in any 2 s)",
        f"  {'setting':20s} {'turn':>4s} {'run':>5s} {'skipped':>7s} {'p50':>7s} {'p99':>7s} "
        f"{'p99 ×':>6s} {'engine':>7s} {'web %':>6s} {'viewers %':>10s} {'page fps':>8s} "
        f"{'others %':>8s}",
    ]
    for e in comparison["rows"]:
        lines.append(
            f"  {e['setting']:20s} {e['round']:4d} {e['windows_run']:5d} "
            f"{e['windows_skipped']:7d} {num(e['capture_to_publish_p50_ms']):>7s} "
            f"{num(e['capture_to_publish_p99_ms']):>7s} {num(e['p99_ratio'], '.3f'):>6s} "
            f"{num(e['engine_p50_ms']):>7s} {num(e['web_cpu_percent'], '.1f'):>6s} "
            f"{num(e['viewers_cpu_percent'], '.1f'):>10s} {num(e['page_fps'], '.1f'):>8s} "
            f"{num(e['others_max_2s_percent'], '.1f'):>8s}"
        )
    lines.append(
        f"  pooled over the turns (limit: p99 at most {WEB_P99_LIMIT:.2f}× the run without --web)"
    )
    for e in comparison["pooled"]:
        verdict = {True: "within", False: "OVER", None: "-"}[e["within_limit"]]
        lines.append(
            f"  {e['setting']:20s} {e['rounds']:4d} {e['windows']:5d} {'':7s} "
            f"{num(e['capture_to_publish_p50_ms']):>7s} {num(e['capture_to_publish_p99_ms']):>7s} "
            f"{num(e['p99_ratio'], '.3f'):>6s} {verdict}"
        )
    lines.append(
        f"  pooled, the quiet windows only (other processes at most {QUIET_PERCENT:g} % of a "
        "core in the second of their capture)"
    )
    for e in comparison["pooled"]:
        q = e["quiet"]
        verdict = {True: "within", False: "OVER", None: "-"}[q["within_limit"]]
        lines.append(
            f"  {e['setting']:20s} {e['rounds']:4d} {q['windows']:5d} {'':7s} "
            f"{num(q['capture_to_publish_p50_ms']):>7s} {num(q['capture_to_publish_p99_ms']):>7s} "
            f"{num(q['p99_ratio'], '.3f'):>6s} {verdict}"
        )
    return "\n".join(lines)


PLOT_NEEDS = "error: --plot needs matplotlib: pip install 'avstream[bench]'"


def figure(rows: list[dict], samples: dict):
    """The benchmark's figure: per row, latency over time and the distributions, on
    linear millisecond axes with the stride drawn as the budget."""
    from matplotlib.figure import Figure  # not pyplot: no display, no global figures

    fig = Figure(figsize=(13, 3.8 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for (over_time, dist), row in zip(axes, rows):
        s = samples[_row_key(row)]
        budget_ms = row["stride"] * 1000
        budget = f"stride = budget ({budget_ms:g} ms)"
        top = max([budget_ms, *(max(s[k], default=0.0) for k in SERIES)]) * 1.05
        for key, name in SERIES.items():
            over_time.plot(s["t_s"], s[key], ".", markersize=2, label=name)
        over_time.axhline(budget_ms, color="black", linestyle="--", linewidth=1, label=budget)
        streams = f", {row['streams']} streams" if row["streams"] > 1 else ""
        if "web" in row:
            streams += f", {web_setting(row['web'])} (turn {row['web']['round']})"
        over_time.set_title(
            f"{row['model']} on {row['engine']}, stride {row['stride']} s{streams}: "
            "latency per window"
        )
        over_time.set_xlabel("s since the first measured window")
        over_time.set_ylabel("ms")
        over_time.set_ylim(0, top)
        over_time.legend(fontsize=7, markerscale=4, loc="best")
        dist.boxplot([s[k] for k in SERIES], tick_labels=list(SERIES.values()), whis=(1, 99))
        dist.axhline(budget_ms, color="black", linestyle="--", linewidth=1, label=budget)
        dist.set_title("distributions (box: p25-p75, whiskers: p1-p99)")
        dist.set_ylabel("ms")
        dist.set_ylim(0, top)
        dist.tick_params(axis="x", labelsize=7)
    fig.suptitle(CAPTION, fontsize=9)
    return fig


def plot(path: str, rows: list[dict], samples: dict) -> None:
    """Write `figure(rows, samples)` as a PNG (needs matplotlib: main checks at start)."""
    figure(rows, samples).savefig(path, dpi=90)


# -- engine mode -------------------------------------------------------------------------


def gflops(model, inputs) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return counter.get_total_flops() / 1e9 / 2  # multiply-accumulates, as papers count "FLOPs"


def _time_engine(
    name: str,
    backend: str,
    precision: str | None,
    runs: int,
    compile: bool,
    threads: int | None,
    batches: list[int],
) -> dict:
    """One row of engine mode, run in its own process so that its peak memory is its own:
    `per_batch` holds the times of each batch size (`run_engines` makes a row of each),
    measured in turns so that a change of the machine's load falls on all of them."""
    import resource

    import torch

    if threads:
        torch.set_num_threads(threads)

    import engines
    import models
    from engines.base import example_batch

    model = models.create(name, seed=0)  # seeded: a compiled engine is cached for the next run
    inputs = model.example_inputs()
    row = {
        "model": name,
        "engine": backend,
        "precision": precision,
        "gflops": round(gflops(model, inputs), 2),
        "malloc": malloc.active(),
    }
    try:
        engine = engines.create(
            model, inputs, backend=backend, precision=precision, compile=compile,
            max_batch=max(batches),
        )  # fmt: skip
    except engines.EngineError as exc:
        return {**row, "error": str(exc)}
    engine.warmup(3)
    stacked = {size: example_batch(inputs, size) for size in batches}
    times: dict[int, list[float]] = {size: [] for size in batches}
    for _ in range(runs):
        for size in batches:
            t0 = time.perf_counter_ns()
            engine(*stacked[size])
            times[size].append((time.perf_counter_ns() - t0) / 1e6)
    row.update(engine=engine.name, mode=engine.mode, max_batch=engine.max_batch)
    row["per_batch"] = [
        {
            "batch": size,
            "engine_ms": summary_ms(times[size]),
            "windows_per_s": round(size * 1000 / float(np.median(times[size])), 2),
        }
        for size in batches
    ]
    # ru_maxrss is KiB on Linux: the whole process (weights, activations, the runtime)
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if torch.cuda.is_available():
        row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return row


def _child(conn, fn, args) -> None:
    try:
        conn.send(control.BenchRow(fn(*args)))
    except BaseException as exc:  # noqa: BLE001 (sent to the parent, which raises it)
        conn.send(control.Crash(f"{type(exc).__name__}: {exc}"))


def _in_child(ctx, fn, args: tuple, check_stop):
    """fn(*args) in a process of its own; ended at once when check_stop() raises."""
    parent, child_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child_end, fn, args), name="bench-engine")
    start_ignoring_sigint(proc)  # this process decides on Ctrl-C, and ends the child itself
    child_end.close()
    try:
        while not parent.poll(0.2):
            check_stop()
            if not proc.is_alive() and not parent.poll():
                raise RuntimeError(f"the engine's process exited (exit code {proc.exitcode})")
        match control.receive(parent, "stream.bench"):
            case control.BenchRow(row):
                return row
            case control.Crash(line):
                raise RuntimeError(line)
            case other:
                control.unexpected(other, "stream.bench")
    finally:
        parent.close()
        if proc.is_alive():
            _end_tree(proc.pid)
        proc.join(10)


def _end_tree(pid: int) -> None:
    """SIGTERM a process and its descendants (a compiling engine runs compiler
    processes), SIGKILL what is left after 10 s."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def by_batch(row: dict) -> list[dict]:
    """The rows of one engine's measurement: one per batch size, each with `batch`,
    `engine_ms` (per call), `windows_per_s` and, when one window a call was measured too,
    `vs_batch_1`: its windows per second over one window a call's. An error: the row."""
    per_batch = row.pop("per_batch", None)
    if per_batch is None:
        return [row]
    single = next((b["windows_per_s"] for b in per_batch if b["batch"] == 1), None)
    rows = []
    for measured in per_batch:
        out = {**row, **measured}
        if single:
            out["vs_batch_1"] = round(measured["windows_per_s"] / single, 2)
        rows.append(out)
    return rows


def run_engines(args, rows: list[dict] | None = None) -> list[dict]:
    """One row per model × engine × precision × batch size, appended to `rows` as each
    engine's rows finish."""
    import multiprocessing as mp

    rows = [] if rows is None else rows
    ctx = mp.get_context("spawn")
    for name in args.models:
        for backend in args.engines:
            for precision in args.precisions or [None]:
                # the child starts inside: it runs with the allocator stream.run gives
                with malloc.preloaded(args.malloc):
                    row = _in_child(
                        ctx,
                        _time_engine,
                        (
                            name,
                            backend,
                            precision,
                            args.runs,
                            args.compile,
                            args.threads,
                            args.batches,
                        ),
                        lambda: _check_stop(args),
                    )
                if "error" in row:
                    rows.append(row)
                    print(f"{name} {backend} {precision}: {row['error']}", file=sys.stderr)
                    continue
                for measured in by_batch(row):
                    rows.append(measured)
                    ratio = measured.get("vs_batch_1")
                    print(
                        f"{name:18s} {measured['engine']:18s} {measured['mode'] or '':13s} "
                        f"{measured['gflops']:7.2f} GFLOPs  batch {measured['batch']:3d}  "
                        f"median {measured['engine_ms']['p50']:8.1f} ms  "
                        f"{measured['windows_per_s']:8.1f} windows/s"
                        + (f" ({ratio:.2f}x batch 1)" if ratio and measured["batch"] > 1 else "")
                        + f"  peak RSS {measured['peak_rss_mb']:7.1f} MB  "
                        f"malloc {measured['malloc']}",
                        file=sys.stderr,
                    )
    return rows


def largest_fitting(rows: list[dict], stride: float) -> dict | None:
    """The model with the most FLOPs whose median engine time fits `stride`, at the
    smallest batch size measured (one window a call, unless --batch leaves 1 out)."""
    smallest = min((r["batch"] for r in rows if "batch" in r), default=None)
    fits = [
        r
        for r in rows
        if "engine_ms" in r and r["batch"] == smallest and r["engine_ms"]["p50"] <= stride * 1000
    ]
    return max(fits, key=lambda r: r["gflops"], default=None)


# -- CLI ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m stream.bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--source", default="synthetic", help="synthetic (default), a video file, or a camera index"
    )
    p.add_argument(
        "--mic", default="synthetic", help="audio source for audiovisual models (default synthetic)"
    )
    p.add_argument("--size", default="640x480", help="synthetic frame size (default 640x480)")
    p.add_argument("--fps", type=float, default=30.0, help="synthetic frame rate (default 30)")
    p.add_argument("--model", default="x3d_xs", help="model name(s), comma-separated to sweep")
    p.add_argument("--config", help="YAML run config passed to stream.run")
    p.add_argument(
        "--weights", default="none", help="weights (default none: timing does not need them)"
    )
    p.add_argument("--engine", default="auto", help="engine(s), comma-separated to sweep")
    p.add_argument(
        "--precision",
        default="",
        help="fp32, fp16 or bf16 (default: the engine's); --engine-only: comma-separated to sweep",
    )
    p.add_argument("--threads", type=int, help="CPU threads of the engine (default: one per core)")
    p.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="eager PyTorch: do not compile the model (see stream.run --no-compile)",
    )
    p.add_argument(
        "--malloc",
        default="auto",
        help="allocator of the engine's process: auto (default), tcmalloc, glibc, "
        "or a library's path",
    )
    p.add_argument(
        "--stride", default="0.5", help="seconds between windows, comma-separated to sweep"
    )
    p.add_argument(
        "--duration",
        type=float,
        default=30.0,
        help="seconds measured per row, after the first window",
    )
    p.add_argument(
        "--startup-timeout", type=float, default=300.0, help="seconds allowed for start-up"
    )
    p.add_argument(
        "--load-subscribers",
        type=int,
        default=0,
        help="add N subscribers that never read, one that stalls, and one that keeps reconnecting",
    )
    p.add_argument(
        "--kill-every",
        type=float,
        default=0,
        help="soak: SIGKILL a capture process every this many seconds (video and audio in turn)",
    )
    p.add_argument(
        "--streams",
        default="1",
        help="pipeline mode: cameras in one run (the source once each), comma-separated to "
        "compare side by side (e.g. 1,4)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        help="pipeline mode: windows per engine call at most (default: stream.run's)",
    )
    p.add_argument(
        "--web-pages",
        help="pipeline mode: the browser view's cost, rows side by side in the order given: "
        "'off' (no --web) or N (stream.run --web, N pages open in headless Chromium), e.g. "
        "off,0,2,off,0,2 (needs selenium and chromium)",
    )
    p.add_argument("--engine-only", action="store_true", help="time the models alone (no pipeline)")
    p.add_argument(
        "--runs", type=int, default=10, help="--engine-only: timed runs per row after warm-up"
    )
    p.add_argument(
        "--batch",
        default="1",
        help="--engine-only: windows per engine call, comma-separated to compare (e.g. "
        "1,2,4,8: one engine for the largest, each size timed in the same process)",
    )
    p.add_argument("--json", help="write the results to this file")
    p.add_argument(
        "--plot",
        help="pipeline mode: write a PNG of latency over time and the distributions "
        "(needs matplotlib: pip install 'avstream[bench]')",
    )
    args = p.parse_args(argv)
    try:
        args.models = _csv(args.model)
        args.engines = _csv(args.engine)
        args.precisions = _csv(args.precision)
        strides = [float(s) for s in _csv(args.stride)]
    except ValueError:
        print(
            f"error: --stride {args.stride!r} must be seconds, e.g. 0.5 or 0.25,0.5",
            file=sys.stderr,
        )
        return 2
    try:
        args.batches = sorted({int(b) for b in _csv(args.batch)})
    except ValueError:
        args.batches = []
    if not args.batches or args.batches[0] < 1:
        print(
            f"error: --batch {args.batch!r} must be windows per call, whole numbers >= 1, "
            "e.g. 1 or 1,2,4,8",
            file=sys.stderr,
        )
        return 2
    if args.batches != [1] and not args.engine_only:
        print(
            f"error: --batch {args.batch!r} times the engine alone: add --engine-only",
            file=sys.stderr,
        )
        return 2
    try:
        args.stream_counts = sorted({int(n) for n in _csv(args.streams)})
    except ValueError:
        args.stream_counts = []
    if not args.stream_counts or args.stream_counts[0] < 1:
        print(
            f"error: --streams {args.streams!r} must be numbers of cameras, whole numbers >= 1, "
            "e.g. 4 or 1,4",
            file=sys.stderr,
        )
        return 2
    if args.engine_only and (args.stream_counts != [1] or args.max_batch is not None):
        flag = "--max-batch" if args.max_batch is not None else f"--streams {args.streams!r}"
        print(
            f"error: {flag} runs the pipeline and --engine-only times the engine alone: "
            "leave it out (--batch sets the engine's batch sizes)",
            file=sys.stderr,
        )
        return 2
    if args.max_batch is not None and args.max_batch < 1:
        print(
            f"error: --max-batch {args.max_batch} must be >= 1 "
            "(leave it out for the number of streams)",
            file=sys.stderr,
        )
        return 2
    args.web_rows = [None]  # no --web-pages: rows without the web view, as before
    if args.web_pages is not None:
        try:
            args.web_rows = parse_web_pages(args.web_pages)
        except ValueError:
            print(
                f"error: --web-pages {args.web_pages!r} must be 'off' (no --web), numbers of "
                "pages >= 0, or of WebSocket clients (2ws), e.g. off,0,2",
                file=sys.stderr,
            )
            return 2
        if args.engine_only:
            print(
                "error: --web-pages runs the pipeline and --engine-only times the engine alone: "
                "leave out --web-pages (or --engine-only)",
                file=sys.stderr,
            )
            return 2
        if any(w["pages"] and w["clients"] == "chromium" for w in args.web_rows):
            from stream.bench.pages import missing

            line = missing()
            if line is not None:
                print(line, file=sys.stderr)
                return 2
    many = args.stream_counts[-1]
    if many > 1 and args.source.isdigit():
        print(
            f"error: --streams {args.streams!r} opens the source {many} times, and camera "
            f"{args.source} opens once: use --source synthetic or a video file",
            file=sys.stderr,
        )
        return 2
    if many > 1 and args.kill_every:
        print(
            f"error: --kill-every soaks one stream, and --streams {args.streams!r} runs {many}: "
            "leave out --streams (or --kill-every)",
            file=sys.stderr,
        )
        return 2
    if args.threads is not None and args.threads < 1:
        print(
            f"error: --threads {args.threads} must be >= 1 (leave it out for one per core)",
            file=sys.stderr,
        )
        return 2
    try:
        malloc.resolve(args.malloc)
    except ValueError as exc:
        print(f"error: --malloc {args.malloc!r}: {exc}", file=sys.stderr)
        return 2
    if len(args.precisions) > 1 and not args.engine_only:
        print(
            f"error: --precision {args.precision!r}: the pipeline runs one precision; "
            "sweep precisions with --engine-only",
            file=sys.stderr,
        )
        return 2
    if args.plot and args.engine_only:
        print(
            "error: --plot draws the pipeline's latencies and --engine-only measures none: "
            "leave out --plot (or --engine-only)",
            file=sys.stderr,
        )
        return 2
    if args.plot:
        # Checked before anything starts: the plot is drawn after the whole benchmark.
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(PLOT_NEEDS, file=sys.stderr)
            return 2
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not os.path.isdir(folder):
            print(
                f"error: {flag} {path!r}: the folder {folder!r} does not exist: create it or "
                "write the file elsewhere",
                file=sys.stderr,
            )
            return 2
    with _Signals() as args.signals:
        if args.engine_only:
            return _engines_main(args, strides)
        return _pipeline_main(args, strides)


def _stopped(name: str, done: int, total: int, written: list[str]) -> None:
    """The one line after Ctrl-C or SIGTERM: what was kept."""
    if not done:
        line = f"interrupted ({name}): no row finished, nothing was written"
        print(line, file=sys.stderr, flush=True)
        return
    where = f", written to {' and '.join(written)}" if written else " (printed above)"
    print(
        f"interrupted ({name}): kept the {done} of {total} rows that finished{where}; "
        "the row being measured was dropped",
        file=sys.stderr,
        flush=True,
    )


def _engines_main(args, strides: list[float]) -> int:
    total = len(args.models) * len(args.engines) * max(1, len(args.precisions)) * len(args.batches)
    rows: list[dict] = []
    stopped = None
    try:
        run_engines(args, rows)
    except Interrupted as exc:
        stopped = exc.args[0]
    fits = {str(s): largest_fitting(rows, s) for s in strides}
    if stopped is None:
        for s, row in fits.items():
            verdict = (
                "none of these"
                if row is None
                else f"{row['model']} on {row['engine']} ({row['gflops']} GFLOPs)"
            )
            print(f"largest model that fits a {s} s stride here: {verdict}")
    written = []
    if args.json and rows:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "machine": machine(),
                    "engines": rows,
                    "largest_fitting": {s: r and r["model"] for s, r in fits.items()},
                },
                fh,
                indent=1,
            )
        written.append(args.json)
    if stopped is not None:
        _stopped(stopped, len(rows), total, written)
    return 0


def _pipeline_main(args, strides: list[float]) -> int:
    total = (
        len(args.models)
        * len(args.engines)
        * len(strides)
        * len(args.stream_counts)
        * len(args.web_rows)
    )
    rows, samples = [], {}
    stopped = None
    try:
        for model in args.models:
            for engine in args.engines:
                for stride in strides:
                    for streams in args.stream_counts:
                        turns: dict = {}
                        for setting in args.web_rows:
                            web = None
                            if setting is not None:  # --web-pages: the setting's turn
                                key = web_key(setting)
                                turns[key] = turns.get(key, 0) + 1
                                web = {**setting, "round": turns[key]}
                            row, s = run_pipeline(args, model, engine, stride, streams, web)
                            rows.append(row)
                            samples[_row_key(row)] = s
                            print(format_row(row), flush=True)
    except Interrupted as exc:
        stopped = exc.args[0]
    comparison = compare_streams(rows)
    if comparison:
        print(format_comparison(comparison), flush=True)
    web_comparison = compare_web(rows, samples)
    if web_comparison:
        print(format_web_comparison(web_comparison), flush=True)
    written = []
    if args.json and rows:
        report = {"machine": machine(), "summary": rows, "samples": samples}
        if comparison:
            report["streams_comparison"] = comparison
        if web_comparison:
            report["web_comparison"] = web_comparison
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
        written.append(args.json)
    if args.plot and rows:
        plot(args.plot, rows, samples)
        written.append(args.plot)
    if stopped is not None:
        _stopped(stopped, len(rows), total, written)
    return 0
