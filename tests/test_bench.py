"""python -m stream.bench: a short real run; its JSON has every field and the figures agree."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engines import malloc
from helpers import REPO, auto_cpu_precision, descendants, expected_cpu_engine_name, running

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # real benchmark runs

pipelines = pytest.mark.usefixtures("x3d_xs_compiled")  # pipelines load it, not compile it

STAT_KEYS = {"p50", "p90", "p99", "max"}


def _bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stream.bench", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _ordered(stat: dict) -> bool:
    values = [stat[k] for k in ("p50", "p90", "p99", "max") if stat[k] is not None]
    return values == sorted(values)


@pytest.fixture(scope="module")
def pipeline_bench(x3d_xs_compiled, tmp_path_factory) -> dict:
    """One real benchmark run that several tests check (each pipeline run takes its
    start-up plus --duration): one row, a capture killed every 1.5 s once it is back up
    (the CI form of the soak; docs: 30 min, a kill every minute) and 30 bad subscribers
    beside the measured one, with the JSON and the plot written. A second row (stride)
    is test_ctrl_c_keeps_the_finished_rows's: the first row's results are kept when the
    second starts."""
    folder = tmp_path_factory.mktemp("bench")
    out, png = folder / "bench.json", folder / "bench.png"
    args = ["--duration", "8", "--stride", "0.25", "--size", "160x120", "--kill-every", "1.5",
            "--load-subscribers", "30", "--json", str(out)]  # fmt: skip
    plots = importlib.util.find_spec("matplotlib") is not None
    if plots:
        args += ["--plot", str(png)]
    proc = _bench(*args)
    assert proc.returncode == 0, proc.stderr
    return {"proc": proc, "report": json.loads(out.read_text()), "png": png if plots else None}


def test_pipeline_bench_json(pipeline_bench):
    proc, report = pipeline_bench["proc"], pipeline_bench["report"]
    assert "overhead" in proc.stdout  # the table
    # One line as each row starts; no bar, since stderr is not a terminal.
    assert "x3d_xs auto stride 0.25: measuring 8 s\n" in proc.stderr
    assert "\r" not in proc.stderr
    assert report["machine"]["cores"] >= 1
    rows = report["summary"]
    assert [r["stride"] for r in rows] == [0.25]
    for row in rows:
        assert row["model"] == "x3d_xs" and row["engine"] == expected_cpu_engine_name()
        for key in (
            "overhead_ms",
            "engine_ms",
            "capture_to_publish_ms",
            "capture_to_subscriber_ms",
        ):
            assert set(row[key]) == STAT_KEYS and _ordered(row[key]), (key, row[key])
        assert row["windows"]["run"] >= row["windows"]["measured"] > 0
        assert row["windows"]["skipped"] >= 0
        assert isinstance(row["latency_slope_ms_per_min"], float)
        assert row["startup_s"] > 0  # launch to the first prediction (no bound: a busy machine)
        names = " ".join(row["cpu_percent"])
        for process in ("main", "capture-video", "inference", "subscriber"):
            assert process in names and process in " ".join(row["peak_rss_mb"])
        assert all(v > 0 for v in row["peak_rss_mb"].values())
        for stage, stat in row["stages_ms"].items():
            assert set(stat) == STAT_KEYS, stage
        assert row["streams"] == 1 and [s["stream"] for s in row["per_stream"]] == ["cam0"]
        s = report["samples"][f"{row['model']}|{row['engine']}|{row['stride']}|1"]
        c2p, eng, ovh, c2s = (
            np.array(s[k])
            for k in (
                "capture_to_publish_ms",
                "engine_ms",
                "overhead_ms",
                "capture_to_subscriber_ms",
            )
        )
        assert len(c2p) == row["windows"]["measured"]
        np.testing.assert_allclose(ovh, c2p - eng, atol=1e-3)  # overhead = capture→publish − engine
        assert (c2s >= c2p - 1e-3).all() and (eng > 0).all()
        assert row["engine_ms"]["max"] == pytest.approx(eng.max(), abs=1e-2)


def test_streams_row(tmp_path):
    """--streams 2: one stream.run with two cameras (eager fp32: nothing to compile for
    batches of 2); the row has each stream's windows and latencies, the engine's calls by
    windows per call, and CPU and memory of every process. The bench's runs have no control
    socket: one held on stream.run's default port does not stop them."""
    out = tmp_path / "streams.json"
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 5554))  # stream.run's default --control
        holder.listen()
    except OSError:
        pass  # held by another run already: as good
    try:
        proc = _bench(
            "--streams", "2", "--max-batch", "2", "--engine", "torch", "--no-compile",
            "--precision", "fp32", "--size", "160x120", "--stride", "0.5", "--duration", "5",
            "--json", str(out),
        )  # fmt: skip
    finally:
        holder.close()
    assert proc.returncode == 0, proc.stderr
    assert "x3d_xs torch stride 0.5, 2 streams: measuring 5 s\n" in proc.stderr
    report = json.loads(out.read_text())
    (row,) = report["summary"]
    assert row["streams"] == 2 and row["max_batch"] == 2 and row["engine"] == "torch-cpu"
    streams = row["per_stream"]
    assert [s["stream"] for s in streams] == ["cam0", "cam1"]
    for s in streams:
        assert s["windows"]["run"] >= s["windows"]["measured"] > 0, s
        assert s["windows"]["skipped"] >= 0
        for key in ("capture_to_publish_ms", "engine_ms", "overhead_ms"):
            assert set(s[key]) == STAT_KEYS and _ordered(s[key]), (key, s[key])
        # its measured windows by the size of their engine call: 1 or 2
        assert set(s["batch_sizes"]) <= {"1", "2"}
        assert sum(s["batch_sizes"].values()) == s["windows"]["measured"]
    for key in ("run", "skipped", "measured"):
        assert row["windows"][key] == sum(s["windows"][key] for s in streams)
    samples = report["samples"]["x3d_xs|torch-cpu|0.5|2"]
    assert len(samples["capture_to_publish_ms"]) == row["windows"]["measured"]
    # the row pools the streams' windows
    c2p_max = max(s["capture_to_publish_ms"]["max"] for s in streams)
    assert row["capture_to_publish_ms"]["max"] == pytest.approx(c2p_max, abs=1e-3)
    # the run status's histogram: calls of 1 and of 2 windows, which ran every window
    calls = row["batches"]
    assert len(calls) == 2 and sum(calls) > 0
    assert calls[0] + 2 * calls[1] >= row["windows"]["measured"]
    processes = row["processes"]
    assert set(processes) == {"main", "inference", "capture-video:cam0", "capture-video:cam1"}
    assert len({p["pid"] for p in processes.values()}) == 4
    for name, p in processes.items():
        assert p["rss_mb"] > 0 and p["pss_mb"] > 0 and p["peak_rss_mb"] >= p["rss_mb"], name
        assert p["cpu_s"] >= 0, name
    assert processes["inference"]["cpu_s"] > 0  # it ran the model
    assert row["rss_total_mb"] == pytest.approx(
        sum(p["rss_mb"] for p in processes.values()), abs=0.2
    )
    assert "streams_comparison" not in report  # one row: nothing to set it against
    assert "2 streams" in proc.stdout and "capture-video:cam1" in proc.stdout


def test_streams_comparison():
    """Rows of 1 and 4 streams side by side: skipped windows, the worst stream's p99 as a
    ratio of the one-stream row's, and the memory each extra stream added."""
    from stream.bench import latency as bench

    def row(streams: int, p99s: list[float], rss: float, pss: float) -> dict:
        per_stream = [
            {"capture_to_publish_ms": {"p50": p / 2, "p90": p, "p99": p, "max": p}} for p in p99s
        ]
        return {
            "model": "x3d_xs", "engine": "torch-cpu", "stride": 0.5, "streams": streams,
            "windows": {"run": 10 * streams, "skipped": streams - 1, "measured": 9 * streams},
            "per_stream": per_stream, "rss_total_mb": rss, "pss_total_mb": pss,
        }  # fmt: skip

    other = {**row(1, [40.0], 1000.0, 700.0), "stride": 0.25}  # no partner: left out
    one, four = bench.compare_streams(
        [row(4, [50.0, 90.0, 60.0, 55.0], 1450.0, 850.0), row(1, [45.0], 1000.0, 700.0), other]
    )
    assert (one["streams"], one["vs_streams"], one["p99_ratio"]) == (1, 1, 1.0)
    assert one["rss_added_per_stream_mb"] is None
    assert four["streams"] == 4 and four["windows_skipped"] == 3
    assert four["capture_to_publish_p99_ms"] == 90.0 and four["p99_ratio"] == 2.0
    assert four["capture_to_publish_p50_ms"] == 45.0
    assert four["rss_added_per_stream_mb"] == 150.0 and four["pss_added_per_stream_mb"] == 50.0
    table = bench.format_comparison([one, four])
    last = table.splitlines()[-1].split()
    assert last[-10:] == [
        "4",
        "40",
        "3",
        "45.00",
        "90.00",
        "2.00",
        "1450.0",
        "150.0",
        "850.0",
        "50.0",
    ]


def test_pipeline_bench_plot(pipeline_bench):
    png = pipeline_bench["png"]
    if png is None:
        pytest.skip("matplotlib is not installed")
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pipelines
def test_engine_only_mode(tmp_path):
    out = tmp_path / "engines.json"
    # auto's CPU precision by name: the engine the session compiled (fp32 would compile anew)
    proc = _bench(
        "--engine-only",
        "--model",
        "x3d_xs",
        "--engine",
        "torch",
        "--precision",
        f"{auto_cpu_precision()},fp16",
        "--runs",
        "3",
        "--stride",
        "10",
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    ok, refused = report["engines"]
    assert ok["engine"] == expected_cpu_engine_name()
    assert ok["gflops"] > 0.3 and _ordered(ok["engine_ms"])
    assert ok["peak_rss_mb"] > 100  # measured in the row's own process
    assert ok["malloc"] == (
        "tcmalloc" if malloc.find_tcmalloc() else "glibc"
    )  # as stream.run's inference
    assert "fp16" in refused["error"]  # fp16 on the CPU is refused with the engine's own message
    assert report["largest_fitting"] == {"10.0": "x3d_xs"}
    assert "largest model that fits a 10.0 s stride here: x3d_xs" in proc.stdout


def test_engine_only_batches_side_by_side(tmp_path):
    """--batch 1,2: one engine for batches of 2 in one process, each size timed (eager:
    nothing to compile); a row per size with windows per second and ms per call."""
    out = tmp_path / "batches.json"
    proc = _bench(
        "--engine-only", "--model", "x3d_xs", "--engine", "torch", "--precision", "fp32",
        "--no-compile", "--batch", "2,1", "--runs", "1", "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    one, two = json.loads(out.read_text())["engines"]
    assert [one["batch"], two["batch"]] == [1, 2] and one["max_batch"] == two["max_batch"] == 2
    assert one["mode"] == two["mode"] == "eager" and one["vs_batch_1"] == 1.0
    for row in (one, two):
        assert _ordered(row["engine_ms"]) and row["windows_per_s"] > 0
        per_call_s = row["engine_ms"]["p50"] / 1000
        assert abs(row["windows_per_s"] * per_call_s - row["batch"]) < 0.01 * row["batch"]
    assert two["vs_batch_1"] == round(two["windows_per_s"] / one["windows_per_s"], 2)
    line = next(x for x in proc.stderr.splitlines() if "batch   2" in x)
    assert "windows/s" in line and "x batch 1)" in line, proc.stderr


def test_soak_short_form(pipeline_bench):
    """Captures killed again and again: every kill is seen as a restart, no window is
    older than its span, and the windows across an outage say so."""
    soak = pipeline_bench["report"]["summary"][0]["soak"]
    assert soak["kills"] >= 2  # again and again: a restarted capture is killed too
    assert soak["restarts_reported"] == soak["kills"]  # every restart on the status topic
    assert soak["windows_older_than_span"] == 0
    assert soak["degraded_predictions"] >= 1  # windows across an outage say so
    shm = soak["shm_mb"]
    assert shm["last"] == shm["first"] == shm["max"] > 0  # the rings, nothing more


def test_bench_under_subscriber_load(pipeline_bench):
    for row in pipeline_bench["report"]["summary"]:
        assert row["load_subscribers"] == 30 and row["windows"]["measured"] > 0
        # the send never waits on the idle, stalled or reconnecting subscribers
        assert row["stages_ms"]["publish"]["max"] < 500


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ("--precision", "fp32,bf16"),
            "error: --precision 'fp32,bf16': the pipeline runs one precision",
        ),
        (("--threads", "0"), "error: --threads 0 must be >= 1"),
        (
            ("--malloc", "/no/libjemalloc.so.2"),
            "error: --malloc '/no/libjemalloc.so.2': no such file",
        ),
        (("--engine-only", "--plot", "x.png"), "error: --plot draws the pipeline's latencies"),
        (("--engine-only", "--batch", "0,2"), "error: --batch '0,2' must be windows per call"),
        (("--batch", "1,4"), "error: --batch '1,4' times the engine alone: add --engine-only"),
        (("--json", "no/such/folder/b.json"), "error: --json 'no/such/folder/b.json': the folder"),
        (("--streams", "0,2"), "error: --streams '0,2' must be numbers of cameras"),
        (("--streams", "2", "--engine-only"), "error: --streams '2' runs the pipeline and"),
        (("--max-batch", "2", "--engine-only"), "error: --max-batch runs the pipeline and"),
        (("--max-batch", "0"), "error: --max-batch 0 must be >= 1"),
        (("--streams", "1,4", "--source", "0"), "error: --streams '1,4' opens the source 4 times"),
        (("--streams", "2", "--kill-every", "5"), "error: --kill-every soaks one stream"),
        (("--web-pages", "off,x"), "error: --web-pages 'off,x' must be 'off' (no --web), numbers"),
        (("--web-pages", "-2"), "error: --web-pages '-2' must be 'off' (no --web), numbers"),
        (("--web-pages", "2", "--engine-only"), "error: --web-pages runs the pipeline and"),
    ],
)
def test_bad_options_give_one_line(args, line):
    proc = _bench(*args, "--duration", "1", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(
        line
    ), proc.stderr


def test_plot_without_matplotlib_fails_before_anything_starts(tmp_path):
    """A matplotlib that cannot be imported: the one line at once, no pipeline started
    (it used to fail after the whole benchmark had run)."""
    fake = tmp_path / "site" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.bench", "--plot", str(tmp_path / "x.png"),
         "--duration", "1"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    pipelines: set[str] = set()
    while proc.poll() is None:  # a pipeline runs for seconds: it would be seen here
        for pid in descendants(proc.pid):
            # Only the pipeline counts: a library may run a helper (ctypes.util's ldconfig).
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"stream.run" in command:
                pipelines.add(command.decode(errors="replace"))
        time.sleep(0.01)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert err.splitlines() == ["error: --plot needs matplotlib: pip install 'avstream[bench]'"], (
        err
    )
    assert out == "" and not pipelines, pipelines
    assert not (tmp_path / "x.png").exists()


def _chromium_here() -> None:
    pytest.importorskip("selenium")
    from stream.bench.pages import chromium_paths

    if chromium_paths() is None:
        pytest.skip("chromium and chromedriver are not installed")


@pipelines
def test_web_pages_rows(tmp_path):
    """--web-pages off,1,1ws: a run without --web, one with --web and a page open in
    headless Chromium, measured once the page shows the stream's video and labels, and one
    with a WebSocket client in place of the page. The page went on showing new frames and
    predictions through the span, the client received them, the web process and the
    viewers are found and their CPU counted, and the rows are set side by side."""
    _chromium_here()
    out = tmp_path / "web.json"
    proc = _bench(
        "--web-pages", "off,1,1ws", "--size", "160x120", "--stride", "0.5", "--duration", "3",
        "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for setting in ("no --web", "--web, 1 page", "--web, 1 ws client"):
        assert f"x3d_xs auto stride 0.5, {setting}: measuring 3 s\n" in proc.stderr
    report = json.loads(out.read_text())
    off, page_row, ws_row = report["summary"]
    assert off["web"]["pages"] is None and off["web"]["url"] is None and "shown" not in off["web"]
    assert off["web"]["web_process"] is None and "web" not in off["processes"]
    for row, clients in ((page_row, "chromium"), (ws_row, "websocket")):
        web = row["web"]
        assert web["pages"] == 1 and web["clients"] == clients
        assert web["url"].startswith("http://127.0.0.1:")
        (page,) = web["shown"]
        assert page["frames"] > 0 and page["fps"] > 0  # video went on arriving in the span
        assert page["predictions"] > 0  # and the labels followed new predictions
        assert web["web_process"]["cpu_s"] > 0  # it encoded frames for the viewer
        assert row["processes"]["web"] == web["web_process"]
        assert web["viewers"]["cpu_s"] > 0
    assert page_row["web"]["shown"][0]["tiles"] == 1
    assert page_row["web"]["viewers"]["processes"] >= 2  # chromedriver and Chromium's
    for row in (off, page_row, ws_row):
        assert row["windows"]["measured"] > 0
        others = row["others_cpu_percent"]  # the rest of the machine, beside the row
        assert 0 <= others["mean_percent"] <= others["max_2s_percent"]
        span = row["web"]["windows_in_span"]
        assert span["run"] >= row["windows"]["measured"] and span["skipped"] >= 0
    engine = off["engine"]
    assert set(report["samples"]) == {
        f"x3d_xs|{engine}|0.5|1|web-{key}|1" for key in ("off", "1", "1ws")
    }
    for s in report["samples"].values():  # each window with the others' CPU at its capture
        assert len(s["others_percent"]) == len(s["capture_to_publish_ms"])
    assert {p["setting"] for p in report["web_comparison"]["pooled"] if "quiet" in p} == {
        "no --web",
        "--web, 1 page",
        "--web, 1 ws client",
    }
    rows = report["web_comparison"]["rows"]
    assert [(r["setting"], r["round"]) for r in rows] == [
        ("no --web", 1),
        ("--web, 1 page", 1),
        ("--web, 1 ws client", 1),
    ]
    assert rows[0]["p99_ratio"] == 1.0 and rows[1]["p99_ratio"] > 0
    assert rows[1]["page_fps"] == page_row["web"]["shown"][0]["fps"]
    assert "browser view side by side" in proc.stdout


def test_web_pages_without_selenium(tmp_path):
    """A selenium that cannot be imported: one line at once, nothing started."""
    fake = tmp_path / "site" / "selenium"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no selenium here')\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "stream.bench", "--web-pages", "off,2", "--duration", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "error: --web-pages opens the view in headless Chromium through Selenium, which is "
        "not installed: pip install selenium (or 'avstream[test]')"
    ], proc.stderr
    assert proc.stdout == ""


def test_web_comparison():
    """Rows of --web-pages off,0,2 in two turns: each p99 over its turn's row without
    --web, then every setting's windows pooled over the turns against the limit."""
    from stream.bench import latency as bench

    def row(pages, turn: int, c2p: list[float]) -> tuple[dict, list[float]]:
        shown = None if not pages else [{"fps": 9.5}, {"fps": 9.8}]
        clients = None if pages is None else "chromium"
        web = {
            "pages": pages,
            "clients": clients,
            "round": turn,
            "url": None,
            "windows_in_span": {"run": 40, "skipped": turn - 1},
            "web_process": None if pages is None else {"cpu_percent": 4.0},
        }
        if shown:
            web.update(shown=shown, viewers={"cpu_percent": 30.0})
        stat = bench.summary_ms(c2p)
        return {
            "model": "x3d_xs", "engine": "torch-cpu", "stride": 0.5, "streams": 1, "web": web,
            "capture_to_publish_ms": stat, "engine_ms": {"p50": 17.0},
        }, c2p  # fmt: skip

    base, slow = [20.0] * 95 + [40.0] * 5, [20.0] * 95 + [50.0] * 5
    made = [
        row(None, 1, base), row(0, 1, base), row(2, 1, slow),
        row(None, 2, base), row(0, 2, base), row(2, 2, base),
    ]  # fmt: skip
    rows = [r for r, _ in made]
    # the slow turn's slowest windows met other processes (50 % of a core): not quiet ones
    others = {id(slow): [0.0] * 95 + [50.0] * 5}
    samples = {
        bench._row_key(r): {
            "capture_to_publish_ms": c,
            "others_percent": others.get(id(c), [5.0] * 100),
        }
        for r, c in made
    }
    assert "x3d_xs|torch-cpu|0.5|1|web-2|2" in samples
    out = bench.compare_web(rows, samples)
    by = {(e["pages"], e["round"]): e for e in out["rows"]}
    assert by[(None, 1)]["p99_ratio"] == 1.0 and by[(0, 1)]["p99_ratio"] == 1.0
    assert by[(2, 1)]["p99_ratio"] == 1.25
    assert by[(2, 2)]["p99_ratio"] == 1.0 and by[(2, 2)]["windows_skipped"] == 1
    assert by[(2, 1)]["page_fps"] == 9.5 and by[(2, 1)]["viewers_cpu_percent"] == 30.0
    assert by[(0, 1)]["web_cpu_percent"] == 4.0 and by[(None, 1)]["web_cpu_percent"] is None
    pooled = {e["pages"]: e for e in out["pooled"]}
    assert pooled[2]["windows"] == 200 and pooled[2]["rounds"] == 2
    assert pooled[None]["within_limit"] and pooled[0]["within_limit"]
    assert pooled[2]["capture_to_publish_p99_ms"] == bench.summary_ms(slow + base)["p99"]
    assert pooled[2]["p99_ratio"] == 1.25 and not pooled[2]["within_limit"]
    quiet = pooled[2]["quiet"]
    assert quiet["windows"] == 195 and quiet["p99_ratio"] == 1.0 and quiet["within_limit"]
    assert pooled[None]["quiet"]["windows"] == 200
    table = bench.format_web_comparison(out)
    assert "--web, 2 pages" in table and "pooled over the turns" in table
    assert "the quiet windows only" in table
    assert bench.compare_web(rows[1:3], samples) == {}  # nothing without --web to set against


def test_plot_figure():
    """Linear millisecond axes, the stride as the budget, readable names, the caption."""
    pytest.importorskip("matplotlib")
    from stream.bench import latency as bench

    t = np.linspace(0, 10, 40)
    samples = {
        "t_s": t.tolist(),
        "engine_ms": (30 + t).tolist(),
        "overhead_ms": (5 + 0 * t).tolist(),
        "capture_to_publish_ms": (35 + t).tolist(),
        "capture_to_subscriber_ms": (36 + t).tolist(),
    }
    rows = [
        {"model": "x3d_xs", "engine": "torch-cpu", "stride": s, "streams": 1} for s in (0.25, 0.03)
    ]
    fig = bench.figure(rows, {bench._row_key(r): samples for r in rows})
    names = ["engine", "pipeline overhead", "capture→publish", "capture→subscriber"]
    for (over_time, dist), row in zip(np.reshape(fig.axes, (2, 2)), rows):
        budget = row["stride"] * 1000
        for ax in (over_time, dist):
            assert ax.get_yscale() == "linear" and ax.get_xscale() == "linear"
            assert ax.get_ylabel() == "ms"
            assert ax.get_ylim()[0] == 0
            assert ax.get_ylim()[1] >= max(budget, 46)  # every point and the budget in view
            budget_lines = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
            assert [list(ln.get_ydata()) for ln in budget_lines] == [[budget, budget]]
        legend = [x.get_text() for x in over_time.get_legend().get_texts()]
        assert legend == [*names, f"stride = budget ({budget:g} ms)"]
        assert [x.get_text() for x in dist.get_xticklabels()] == names
    assert fig.get_suptitle().startswith(
        "overhead = capture→publish − engine: what the pipeline adds"
    )


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from stream.bench import latency as bench

    samples = {k: [1.0, 2.0, 3.0] for k in ("t_s", *bench.SERIES)}
    row = {"model": "x3d_xs", "engine": "torch-cpu", "stride": 0.5, "streams": 1}
    bench.plot(str(tmp_path / "b.png"), [row], {bench._row_key(row): samples})
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pipelines
def test_ctrl_c_keeps_the_finished_rows(tmp_path):
    """SIGINT while the second row is measured: the first is written, the second dropped,
    exit 0, nothing left running."""
    out = tmp_path / "bench.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.bench", "--duration", "2", "--stride", "0.25,0.5",
         "--size", "160x120",
         "--json", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    err = b""
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while b"stride 0.5: measuring" not in err:  # the line that starts the second row
            assert proc.poll() is None and time.monotonic() < deadline, err.decode()
            seen |= descendants(proc.pid)
            err += os.read(proc.stderr.fileno(), 4096)
        stdout, err = _interrupt(proc, err, out)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [r["stride"] for r in json.loads(out.read_text())["summary"]] == [0.25]
    table = stdout.decode()  # the finished row's table; none for the dropped one
    assert ", stride 0.25 s (" in table and ", stride 0.5 s (" not in table
    _assert_gone(seen)


def _interrupt(proc, err: bytes, out) -> tuple[bytes, str]:
    """SIGINT to a bench run measuring its second of two rows: it exits 0 and its last
    line says the first row was kept in `out`. Returns (stdout, all of stderr)."""
    proc.send_signal(signal.SIGINT)
    stdout, rest = proc.communicate(timeout=60)
    text = (err + rest).decode()
    assert proc.returncode == 0, text
    assert "Traceback" not in text
    assert text.strip().splitlines()[-1] == (
        f"interrupted (SIGINT): kept the 1 of 2 rows that finished, written to {out}; "
        "the row being measured was dropped"
    )
    return stdout, text


def _assert_gone(seen: set[int]) -> None:
    """Every process the run started ends (the resource tracker sees its parent gone)."""
    deadline = time.monotonic() + 60
    while running(seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(seen), running(seen)


def test_ctrl_c_in_engine_mode_ends_the_row_being_timed(tmp_path):
    """The fp16 row is refused at once; SIGINT during the fp32 row (a million runs) ends
    its process: exit 0, the finished row written, nothing left running."""
    out = tmp_path / "engines.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.bench", "--engine-only", "--model", "x3d_xs",
         "--engine", "torch",
         "--precision", "fp16,fp32", "--runs", "1000000", "--no-compile", "--json", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    err = b""
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while b"x3d_xs torch fp16: " not in err:  # the first row's line
            assert proc.poll() is None and time.monotonic() < deadline, err.decode()
            err += os.read(proc.stderr.fileno(), 4096)
        while not [p for p in descendants(proc.pid) if "spawn_main" in " ".join(_cmdline(p))]:
            assert proc.poll() is None and time.monotonic() < deadline, err.decode()
            time.sleep(0.01)  # the fp32 row's process is being started
        seen |= descendants(proc.pid)
        stdout, err = _interrupt(proc, err, out)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert stdout == b""  # no verdict from a cut-short sweep
    (row,) = json.loads(out.read_text())["engines"]
    assert row["precision"] == "fp16" and "error" in row
    _assert_gone(seen)


def _cmdline(pid: int) -> list[str]:
    try:
        return open(f"/proc/{pid}/cmdline").read().split("\0")
    except OSError:
        return []
