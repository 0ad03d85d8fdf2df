"""Events against the truth (issue #20, section 4): a real `python -m stream.run --events`
on a video whose action segments are known, and how far each event's start and end lie
from them.

1. A labelled training set of generated clips (stream.train.synthetic): a tall bar
   bouncing left and right (`bounce`), a wide bar bouncing up and down (`drop`), and the
   plain background (`nothing`), 2 s each, no sound.
2. A small video-only SlowFast (width 16, one block per stage, 64-pixel crop) trained on
   them by `python -m stream.train` from random weights (one torch thread).
3. A timeline video at 15 fps: the background, and at known times segments of 3 to 10 s
   (--quick: 3 to 5) in which a bar bounces or drops, in turn (the same generator: each its
   own colour, position, period and phase), with hold + 2 to 5 s of background between
   them.
4. `python -m stream.run --config <the trained model's config.yaml> --camera timeline.mp4
   --events rules.yaml --stride S --threads 1 --no-compile`, publishing on a free port of
   127.0.0.1 with no control socket; the file plays once, paced at its frame rate, and the run exits
   when it ends. Two rules, `bounce` and `drop`, each on its label's probability, with
   --on, --off, --min-on and --hold (by default the issue's example rule: on 0.6,
   min_on 1, off 0.4, hold 2). A subscriber in this process keeps every prediction,
   event and status.

Capture clock to timeline seconds: a file's frame i is stamped with its due time on the
paced schedule, origin + i * period (stream/capture/video.py; period = round(1e9 / fps)
ns), so the offset `origin` maps the capture clock onto the file exactly. The stream's
status heartbeat (twice a second) gives a pair: the frames written so far (`frames`: the
newest is frame frames - 1) and the newest frame's age at the heartbeat's `mono_ns`, so its
capture time; offset = that time - (frames - 1) * period. If the capture fell more than a
period behind (a stalled machine), the schedule moved its origin later: the offsets grow,
and the benchmark reports by how much (`slip`). Each capture time is mapped with the
offset of the first heartbeat at or after it, or of the one before when the time lies on
that one's frame grid (a slip between two heartbeats moves the grid by a fraction of a
period); a heartbeat that counted a frame written between its two reads (an offset one
period low) is corrected by taking the largest offset seen so far, as a true offset never
decreases. Every window's end is checked to lie on the frame grid (`off grid`).

Per true segment [S, E) (the bar is on screen from frame S * fps to the frame before E *
fps): the event of its rule whose span overlaps [S - bound, E + bound]; start error =
the event's `start_ns` on the timeline - S, end error = its `end_ns` - E (positive: late),
the number of starts (more than one: the event flapped), and when the start and the end
were announced (the capture time of the window after whose prediction the message came).
An event that overlaps no segment of its label is a false event. The issue's criterion:
every start and end within `bound` = stride + hold of the truth, one start per segment,
no false events.

What bounds them: an event's `start_ns` is its first window above `on`, and `end_ns`
its last window at or above `off` (docs/events.md): `min_on` and `hold` delay when a start
or end is *announced*, not the times it reports. So the errors come from the model's
window (a window ends at its newest frame and spans 0.47 s here: it sees the bar only
once the bar has been on screen for part of it, and still sees it after it has gone), the
stride (windows lie on a grid), and the smoothing (an exponential average lags). The
announcement comes min_on (start) or hold (end) of capture time later. Time is capture
time throughout, so a busy machine changes the results little while the engine keeps up;
when it does not, windows are skipped (counted, with the longest stretch of video between
two windows), which coarsens the grid, and an engine starved for seconds can miss a
short segment altogether. One engine thread (--threads 1) keeps it from spin-waiting on a
shared machine (two threads took up to 4 s per window at a load of 10 on 2 cores).

    python benchmarks/events_timing.py                    # 120 s timeline, about 3 min
    python benchmarks/events_timing.py --quick            # 30 s timeline, about 1 min
    python benchmarks/events_timing.py --stride 0.5 --min-on 0.5 --hold 0.5 --seed 1

Exit status 0 when the criterion is met, 1 when missed, 2 for bad options.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from stream.train.clips import write_clip
from stream.train.synthetic import FPS, RATE, bar_frames, make_dataset
from stream.train.trainer import is_better
from stream.transport import wire
from stream.transport.subscribe import Subscriber

#: label → (motion, sound) of the training set; the timeline's segments are the first two.
CLASSES = {"bounce": ("bounce", None), "drop": ("drop", None), "nothing": ("none", None)}
ACTIONS = ("bounce", "drop")
#: The small SlowFast of the training tests (its window spans 0.47 s).
ARCH = {
    "width": 16, "beta_inv": 4, "depths": "1,1,1,1", "slow_frames": 4, "alpha": 2,
    "crop": 64, "short_side": 64,
}  # fmt: skip
LEAD_S = 4.0  # background before the first segment: the first windows, the smoothing's start
GRID_S = 0.2  # segment times are whole frames (3 at 15 fps)
PERIOD_NS = round(1e9 / FPS)  # the paced schedule's frame period (stream/capture/video.py)


@dataclasses.dataclass
class Segment:
    label: str
    start_s: float
    end_s: float


def plan(
    seconds: float, rng: np.random.Generator, *, lengths: tuple[float, float], hold: float
) -> list[Segment]:
    """Segments at known times, `bounce` and `drop` in turn: lengths drawn from `lengths`,
    and background between them for 2 to 5 s more than `hold` (so that each event has
    ended, below threshold, before the next segment), and as long after the last."""
    segments: list[Segment] = []
    t, first = LEAD_S, int(rng.integers(2))
    while True:
        length = _grid(rng.uniform(*lengths))
        if t + length + hold + 3.0 > seconds:
            return segments
        segments.append(Segment(ACTIONS[(first + len(segments)) % 2], t, _grid(t + length)))
        t = _grid(t + length + hold + rng.uniform(2.0, 5.0))


def _grid(t: float) -> float:
    return round(round(t / GRID_S) * GRID_S, 6)


def write_timeline(
    path: Path, segments: list[Segment], seconds: float, rng: np.random.Generator
) -> None:
    """The timeline video: one background, each segment's bar drawn by bar_frames."""
    times = np.arange(round(seconds * FPS)) / FPS
    background = rng.integers(0, 60, 3)
    frames, _, _ = bar_frames("none", times, rng, background)
    for seg in segments:
        inside = np.flatnonzero((times >= seg.start_s - 1e-9) & (times < seg.end_s - 1e-9))
        motion = CLASSES[seg.label][0]
        frames[inside] = bar_frames(motion, times[inside] - seg.start_s, rng, background)[0]
    write_clip(path, frames, times, None, RATE)


def train(data: Path, out: Path, args) -> dict:
    """`python -m stream.train` on `data`; returns the line of metrics.jsonl of the epoch
    whose weights model.pt holds."""
    argv = [
        sys.executable, "-m", "stream.train", str(data), "--model", "slowfast_r50",
        "--weights", "none", *(x for k, v in ARCH.items() for x in ("--arch", f"{k}={v}")),
        "--out", str(out), "--epochs", str(args.epochs), "--batch-size", "4",
        "--optimizer", "adamw", "--lr", "0.002", "--seed", str(args.seed), "--no-progress",
    ]  # fmt: skip
    # One torch thread: on a shared 2-core machine, OpenMP threads spin-waiting for a
    # descheduled sibling make each step many times slower (tests/test_train.py).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": _pythonpath()}
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: stream.train failed ({proc.returncode}):\n{proc.stderr}")
    best = None  # the epoch whose weights model.pt holds, by the trainer's own rule
    for line in (out / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if best is None or is_better(
            m["val_accuracy"], m["val_loss"], best["val_accuracy"], best["val_loss"]
        ):
            best = m
    return best


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Received:
    preds: list[dict] = dataclasses.field(default_factory=list)
    events: list[tuple[dict, int | None]] = dataclasses.field(default_factory=list)
    statuses: list[dict] = dataclasses.field(default_factory=list)
    stderr: list[str] = dataclasses.field(default_factory=list)
    missed: int = 0
    exit_code: int | None = None


def run(config: Path, video: Path, rules: Path, args) -> Received:
    """A real stream.run on `video`, until the file has played and the run exited. Each
    event comes with the capture time of the prediction just before it (the window that
    caused it: events follow their window's prediction)."""
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    argv = [
        sys.executable, "-m", "stream.run", "--config", str(config), "--camera", str(video),
        "--events", str(rules), "--publish", endpoint, "--control", "none",
        "--stride", str(args.stride), "--smoothing", args.smoothing, "--log-level", "info",
        *([] if args.compile else ["--no-compile"]),
        *(["--threads", str(args.threads)] if args.threads else []),
        *([] if args.precision is None else ["--precision", args.precision]),
    ]  # fmt: skip
    got = Received()
    # Subscribed before the run starts: nothing it publishes is missed for a late join.
    with Subscriber(endpoint, topics=("pred.", "event.", "status.")) as sub:
        env = {**os.environ, "PYTHONPATH": _pythonpath()}
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        reader = threading.Thread(
            target=lambda: got.stderr.extend(line.rstrip("\n") for line in proc.stderr),
            daemon=True,
        )
        reader.start()
        last_capture = None
        ended = False
        # Only against a hang: the file plays in `seconds`, after the model's start-up.
        deadline = time.monotonic() + 3 * args.seconds + 600
        try:
            while True:
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"error: stream.run did not end in {3 * args.seconds + 600:g} s"
                    )
                try:
                    msg = sub.recv(timeout=1.0)
                except TimeoutError:
                    if proc.poll() is not None:
                        break  # exited, and nothing more came
                    continue
                body = msg.body
                if msg.topic.startswith(wire.PRED_TOPIC + "."):
                    got.preds.append(body)
                    last_capture = body["t"]["capture_ns"]
                elif msg.topic.startswith(wire.EVENT_TOPIC + "."):
                    got.events.append((body, last_capture))
                else:
                    got.statuses.append(body)
                    ended = ended or body["state"] == "ended"
                if ended and proc.poll() is not None:
                    break
        finally:
            if proc.poll() is None and not ended:
                proc.terminate()
            got.exit_code = proc.wait(timeout=120)
            reader.join(timeout=10)
            got.missed = sub.missed
    return got


class Clock:
    """Capture time (ns) → timeline seconds, from the status heartbeats (the module's
    docstring says how)."""

    def __init__(self, statuses: list[dict]):
        pairs = []
        for s in statuses:
            video = s["sources"]["video"]
            if video.get("frames") and video.get("last_frame_age_ms") is not None:
                newest = s["t"]["mono_ns"] - round(video["last_frame_age_ms"] * 1e6)
                pairs.append((newest, newest - (video["frames"] - 1) * PERIOD_NS))
        if not pairs:
            raise SystemExit("error: no status heartbeat reported the frames written")
        pairs.sort()
        self.newest = [p[0] for p in pairs]
        self.offsets = list(np.maximum.accumulate([p[1] for p in pairs]))
        self.slip_ms = (self.offsets[-1] - self.offsets[0]) / 1e6

    def frame(self, t_ns: int) -> float:
        """The frame index of capture time `t_ns` (a whole number for a frame's time).

        The offset of the first heartbeat at or after `t_ns`, or of the one before it if
        the schedule slipped between the two and `t_ns` lies on the earlier grid: a slip
        moves the grid by a fraction of a period, so a frame's time says which it is on."""
        j = min(bisect.bisect_left(self.newest, t_ns), len(self.newest) - 1)
        candidates = [(t_ns - off) / PERIOD_NS for off in self.offsets[max(j - 1, 0) : j + 1]]
        return min(reversed(candidates), key=lambda f: abs(f - round(f)))

    def seconds(self, t_ns: int) -> float:
        return self.frame(t_ns) / FPS


def analyse(segments: list[Segment], got: Received, bound: float) -> dict:
    clock = Clock(got.statuses)
    off_grid = max(
        (abs(f - round(f)) for f in (clock.frame(p["window"]["end_ns"]) for p in got.preds)),
        default=0.0,
    )
    by_id: dict[str, dict] = {}
    for body, cause_ns in got.events:
        e = by_id.setdefault(body["id"], {"id": body["id"], "name": body["name"]})
        e[body["type"]] = body
        if cause_ns is not None and body["type"] in ("start", "end"):
            e[f"{body['type']}_announced_s"] = clock.seconds(cause_ns)
    events = []
    for e in by_id.values():
        if "start" in e:
            end = e.get("end")
            events.append({
                "id": e["id"], "name": e["name"],
                "start_s": clock.seconds(e["start"]["start_ns"]),
                "end_s": clock.seconds(end["end_ns"]) if end else None,
                "reason": end["reason"] if end else None,
                "peak": (end or e["start"])["peak"],
                "start_announced_s": e.get("start_announced_s"),
                "end_announced_s": e.get("end_announced_s"),
            })  # fmt: skip
    events.sort(key=lambda e: e["start_s"])
    matched: set[str] = set()
    rows = []
    for seg in segments:
        mine = [
            e
            for e in events
            if e["name"] == seg.label
            and e["start_s"] <= seg.end_s + bound
            and (e["end_s"] if e["end_s"] is not None else float("inf")) >= seg.start_s - bound
        ]
        matched.update(e["id"] for e in mine)
        row = {**dataclasses.asdict(seg), "starts": len(mine), "ids": [e["id"] for e in mine]}
        if mine:
            first, last = mine[0], mine[-1]
            row["start_error_s"] = first["start_s"] - seg.start_s
            row["end_error_s"] = None if last["end_s"] is None else last["end_s"] - seg.end_s
            row["peak"] = max(e["peak"] for e in mine)
            row["start_announced_after_s"] = _minus(first["start_announced_s"], seg.start_s)
            row["end_announced_after_s"] = _minus(last["end_announced_s"], seg.end_s)
        rows.append(row)
    false = [e for e in events if e["id"] not in matched]
    errors = [
        abs(r[k]) for r in rows for k in ("start_error_s", "end_error_s") if r.get(k) is not None
    ]
    met = (
        all(r["starts"] == 1 and r.get("end_error_s") is not None for r in rows)
        and all(err <= bound for err in errors)
        and not false
    )
    last = got.statuses[-1] if got.statuses else {"windows": {}}
    first_pred_s = clock.seconds(got.preds[0]["t"]["capture_ns"]) if got.preds else None
    ends = sorted(p["window"]["end_ns"] for p in got.preds)
    return {
        "bound_s": bound,
        "met": met,
        "segments": rows,
        "false_events": false,
        "windows": {
            "run": len(got.preds),
            "skipped": last["windows"].get("skipped"),
            "degraded": sum(1 for p in got.preds if p["degraded"]),
            "first_at_s": first_pred_s,
            # the longest stretch of the video without a window: a starved engine
            "max_gap_s": max(np.diff(ends), default=0) / 1e9,
        },
        "clock": {
            "heartbeats": len(clock.newest),
            "slip_ms": clock.slip_ms,
            "off_grid_frames": off_grid,
        },
        "missed_messages": got.missed,
        "exit_code": got.exit_code,
    }


def _minus(a: float | None, b: float) -> float | None:
    return None if a is None else a - b


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2f}"


def report(result: dict, args) -> str:
    bound = result["bound_s"]
    lines = [
        f"{'segment':>7}  {'label':6}  {'truth (s)':>13}  {'start err':>9}  {'end err':>7}  "
        f"{'starts':>6}  {'announced start':>15}  {'announced end':>13}",
    ]
    for i, r in enumerate(result["segments"], 1):
        lines.append(
            f"{i:>7}  {r['label']:6}  {r['start_s']:6.1f}-{r['end_s']:<6.1f}  "
            f"{_s(r.get('start_error_s')):>9}  {_s(r.get('end_error_s')):>7}  {r['starts']:>6}  "
            f"{_s(r.get('start_announced_after_s')):>15}  {_s(r.get('end_announced_after_s')):>13}"
        )
    for e in result["false_events"]:
        lines.append(
            f"false event {e['id']} ({e['name']}) from {e['start_s']:.2f} s to "
            f"{'-' if e['end_s'] is None else format(e['end_s'], '.2f')} s, peak {e['peak']:.2f}"
        )
    w, c = result["windows"], result["clock"]
    starts = [r["start_error_s"] for r in result["segments"] if "start_error_s" in r]
    ends = [r["end_error_s"] for r in result["segments"] if r.get("end_error_s") is not None]
    lines.append(
        f"engine {result['engine']}; windows: {w['run']} run, {w['skipped']} skipped, "
        f"{w['degraded']} degraded, at most {w['max_gap_s']:.2f} s apart; "
        f"first window at {w['first_at_s']:.2f} s of the timeline; clock: {c['heartbeats']} "
        f"heartbeats, slip {c['slip_ms']:.1f} ms, window ends off the frame grid by "
        f"{c['off_grid_frames']:.3f} frames at most; messages missed: "
        f"{result['missed_messages']}"
    )
    verdict = "MET" if result["met"] else "MISSED"
    lines.append(
        f"{verdict}: bound stride + hold = {args.stride:g} + {args.hold:g} = {bound:g} s; "
        f"start error {_range(starts)}, end error {_range(ends)} s; starts per segment "
        f"{sorted({r['starts'] for r in result['segments']})}; "
        f"{len(result['false_events'])} false events"
    )
    return "\n".join(lines)


def _range(values: list[float]) -> str:
    return f"{min(values):+.2f} to {max(values):+.2f}" if values else "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seed", type=int, default=0, help="clips, training and timeline")
    p.add_argument("--seconds", type=float, help="timeline length (default 120; --quick 30)")
    p.add_argument("--stride", type=float, default=0.25, help="seconds between windows")
    p.add_argument("--smoothing", default="ema:0.5", help="the run's --smoothing")
    p.add_argument("--on", type=float, default=0.6)
    p.add_argument("--off", type=float, default=0.4)
    p.add_argument("--min-on", type=float, default=1.0)
    p.add_argument("--hold", type=float, default=2.0)
    p.add_argument("--epochs", type=int, help="training epochs (default 25; --quick 20)")
    p.add_argument("--per-class", type=int, help="training clips per label (16; --quick 12)")
    p.add_argument("--compile", action="store_true", help="let the engine compile the model")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="the run's --threads (default 1: the small model needs no more, and on a shared "
        "machine a second thread spin-waits for a descheduled sibling; 0: the run's default)",
    )
    p.add_argument("--precision", help="the run's --precision (default: its own)")
    p.add_argument("--quick", action="store_true", help="a small version (about a minute)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--keep",
        type=Path,
        help="work in this (new) folder and keep it, with the run's log (run.log) and "
        "every message it sent (received.json)",
    )
    args = p.parse_args(argv)
    args.seconds = args.seconds or (30.0 if args.quick else 120.0)
    args.epochs = args.epochs or (20 if args.quick else 25)
    args.per_class = args.per_class or (12 if args.quick else 16)
    if not (0 <= args.off < args.on < 1 and args.stride > 0 and args.min_on >= 0 <= args.hold):
        p.error("need 0 <= --off < --on < 1, --stride > 0, --min-on >= 0 and --hold >= 0")
    rng = np.random.default_rng(args.seed)
    lengths = (3.0, 5.0) if args.quick else (3.0, 10.0)
    segments = plan(args.seconds, rng, lengths=lengths, hold=args.hold)
    if not segments:
        p.error(
            f"--seconds {args.seconds:g} holds no segment: give at least {LEAD_S + 6 + args.hold:g}"
        )
    if args.keep is not None and args.keep.exists():
        p.error(f"--keep {args.keep} exists: give a new folder")
    work = args.keep or Path(tempfile.mkdtemp(prefix="events-timing-"))
    work.mkdir(parents=True, exist_ok=args.keep is None)
    try:
        t0 = time.monotonic()
        make_dataset(work / "data", args.per_class, args.seed, CLASSES, with_audio=False)
        best = train(work / "data", work / "model", args)
        print(
            f"trained slowfast_r50 (small) on {args.per_class} clips per label in "
            f"{time.monotonic() - t0:.0f} s: validation accuracy {best['val_accuracy']:.3f} "
            f"(best at epoch {best['epoch']} of {args.epochs})",
            flush=True,
        )
        write_timeline(work / "timeline.mp4", segments, args.seconds, rng)
        spans = [s.end_s - s.start_s for s in segments]
        print(
            f"timeline: {args.seconds:g} s at {FPS} fps, {len(segments)} segments "
            f"({', '.join(f'{a} {sum(s.label == a for s in segments)}' for a in ACTIONS)}; "
            f"{min(spans):.1f} to {max(spans):.1f} s long); rules: on {args.on:g}, "
            f"off {args.off:g}, min_on {args.min_on:g}, hold {args.hold:g}; "
            f"--stride {args.stride:g}, --smoothing {args.smoothing}",
            flush=True,
        )
        rule = {"on": args.on, "off": args.off, "min_on": args.min_on, "hold": args.hold}
        rules = {"events": [{"name": label, "labels": [label], **rule} for label in ACTIONS]}
        (work / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
        got = run(work / "model" / "config.yaml", work / "timeline.mp4", work / "rules.yaml", args)
        if args.keep is not None:  # what the run said and sent, to look into
            (work / "run.log").write_text("".join(f"{line}\n" for line in got.stderr))
            raw = {"preds": got.preds, "events": got.events, "statuses": got.statuses}
            (work / "received.json").write_text(json.dumps(raw))
        if got.exit_code != 0 or not got.preds:
            tail = "\n".join(got.stderr[-30:])
            raise SystemExit(f"error: stream.run exited {got.exit_code}:\n{tail}")
        result = analyse(segments, got, args.stride + args.hold)
        result["training"] = best
        result["engine"] = got.preds[0]["engine"]
        result["options"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        print(report(result, args))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        return 0 if result["met"] else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
