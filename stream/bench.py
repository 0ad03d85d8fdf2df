"""`python -m stream.bench`: latency of the real pipeline on this machine.

Runs `python -m stream.run` as its own process (capture and inference processes, the
ring, the publisher) on a synthetic source, a file or a camera, subscribes from this
process, and reports per window, from one monotonic clock:
  engine               infer_end - infer_start
  capture→publish      publish - capture of the newest frame in the window
  overhead             capture→publish - engine (what the pipeline itself adds)
  capture→subscriber   receive time here - capture
  window+preprocess    infer_start - window cut (ring reads, resize, crop, normalise)
as p50 / p90 / p99 / max, plus windows run and skipped (from the last heartbeat).
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from .subscribe import Subscriber

#: Windows at the start that are not counted (first-call allocations, caches).
WARMUP_WINDOWS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"p50": round(p50, 3), "p90": round(p90, 3), "p99": round(p99, 3), "max": round(float(v.max()), 3)}


def summarise(preds: list, last_status: dict | None) -> dict:
    """Per-stage figures from received prediction messages (stream.subscribe.Message)."""
    rows = preds[WARMUP_WINDOWS:]
    t = {k: np.array([m.body["t"][k] for m in rows], dtype=np.int64) for k in
         ("capture_ns", "window_ns", "infer_start_ns", "infer_end_ns", "publish_ns")}
    recv = np.array([m.received_ns for m in rows], dtype=np.int64)
    engine = (t["infer_end_ns"] - t["infer_start_ns"]) / 1e6
    c2p = (t["publish_ns"] - t["capture_ns"]) / 1e6
    windows = (last_status or {}).get("windows", {})
    return {
        "windows": {"run": windows.get("run", len(preds)), "skipped": windows.get("skipped"),
                    "measured": len(rows)},
        "engine_ms": percentiles(engine),
        "capture_to_publish_ms": percentiles(c2p),
        "overhead_ms": percentiles(c2p - engine),
        "capture_to_subscriber_ms": percentiles((recv - t["capture_ns"]) / 1e6),
        "window_and_preprocess_ms": percentiles((t["infer_start_ns"] - t["window_ns"]) / 1e6),
        "fps_in": (last_status or {}).get("fps_in"),
        "engine": rows[0].body["engine"] if rows else None,
    }


def machine() -> dict:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "os": platform.platform()}


def run_pipeline(args) -> dict:
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    argv = [
        sys.executable, "-m", "stream.run", "--camera", args.source, "--model", args.model,
        "--engine", args.engine, "--stride", str(args.stride), "--publish", endpoint,
        "--log-level", "warning", "--loop",
    ]
    if args.weights:
        argv += ["--weights", args.weights]
    if args.source == "synthetic":
        argv += ["--size", args.size, "--fps", str(args.fps)]
    preds, last_status = [], None
    proc = subprocess.Popen(argv)
    try:
        with Subscriber(endpoint, topics=("pred.", "status.")) as sub:
            first = None
            deadline = time.monotonic() + 300  # start-up (model load) bound
            while True:
                now = time.monotonic()
                if first is not None and now - first >= args.duration:
                    break
                if now > deadline or proc.poll() is not None:
                    raise SystemExit(f"error: the pipeline did not run (exit code {proc.poll()})")
                try:
                    msg = sub.recv(timeout=1.0)
                except TimeoutError:
                    continue
                if msg.topic.startswith("status."):
                    last_status = msg.body
                    continue
                if first is None:
                    first = time.monotonic()
                    deadline = first + args.duration + 60
                preds.append(msg)
                print(
                    f"\r{len(preds)} windows, last: engine {msg.body['latency_ms']['engine']:.1f} ms, "
                    f"capture→publish {msg.body['latency_ms']['capture_to_publish']:.1f} ms",
                    end="", file=sys.stderr, flush=True,
                )
            # one more heartbeat for the final window counts
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                try:
                    msg = sub.recv(timeout=max(0.01, end - time.monotonic()))
                except TimeoutError:
                    break
                if msg.topic.startswith("status."):
                    last_status = msg.body
                    break
        print(file=sys.stderr)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(10)
    return {"model": args.model, "stride": args.stride, "source": args.source, **summarise(preds, last_status)}


def format_row(row: dict) -> str:
    def f(stat):
        return " / ".join("-" if row[stat][k] is None else f"{row[stat][k]:.1f}" for k in ("p50", "p90", "p99", "max"))

    w = row["windows"]
    return "\n".join([
        f"{row['model']} on {row['engine']}, stride {row['stride']} s, source {row['source']} ({row['fps_in']} fps in)",
        f"  windows run {w['run']}, skipped {w['skipped']} (measured {w['measured']})",
        "  ms (p50 / p90 / p99 / max)",
        f"  engine              {f('engine_ms')}",
        f"  window+preprocess   {f('window_and_preprocess_ms')}",
        f"  overhead            {f('overhead_ms')}",
        f"  capture→publish     {f('capture_to_publish_ms')}",
        f"  capture→subscriber  {f('capture_to_subscriber_ms')}",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stream.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="synthetic", help="synthetic (default), a video file, or a camera index")
    p.add_argument("--size", default="640x480", help="synthetic frame size (default 640x480)")
    p.add_argument("--fps", type=float, default=30.0, help="synthetic frame rate (default 30)")
    p.add_argument("--model", default="x3d_xs")
    p.add_argument("--weights", default="none", help="weights to load (default none: timing only)")
    p.add_argument("--engine", default="auto")
    p.add_argument("--stride", type=float, default=0.25)
    p.add_argument("--duration", type=float, default=30.0, help="seconds measured after the first window")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    row = run_pipeline(args)
    print(format_row(row))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine(), "summary": [row]}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
