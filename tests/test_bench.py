"""python -m stream.bench: a short real run; its JSON has every field and the figures agree."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from stream import malloc

pytestmark = pytest.mark.usefixtures("x3d_xs_compiled")  # pipelines load it, not compile it

STAT_KEYS = {"p50", "p90", "p99", "max"}


def _bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stream.bench", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def _ordered(stat: dict) -> bool:
    values = [stat[k] for k in ("p50", "p90", "p99", "max") if stat[k] is not None]
    return values == sorted(values)


def test_pipeline_bench_json_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = _bench("--duration", "8", "--stride", "0.25,0.5", "--size", "320x240",
                  "--json", str(out), "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    assert "overhead" in proc.stdout and "windows" in proc.stderr  # table, live progress line
    report = json.loads(out.read_text())
    assert report["machine"]["cores"] >= 1
    rows = report["summary"]
    assert [r["stride"] for r in rows] == [0.25, 0.5]
    for row in rows:
        assert row["model"] == "x3d_xs" and row["engine"] == "torch-cpu"
        for key in ("overhead_ms", "engine_ms", "capture_to_publish_ms", "capture_to_subscriber_ms"):
            assert set(row[key]) == STAT_KEYS and _ordered(row[key]), (key, row[key])
        assert row["windows"]["run"] >= row["windows"]["measured"] > 0
        assert row["windows"]["skipped"] >= 0
        assert isinstance(row["latency_slope_ms_per_min"], float)
        assert 0 < row["startup_s"] < 120  # launch to the first prediction
        names = " ".join(row["cpu_percent"])
        for process in ("main", "capture-video", "inference", "subscriber"):
            assert process in names and process in " ".join(row["peak_rss_mb"])
        assert all(v > 0 for v in row["peak_rss_mb"].values())
        for stage, stat in row["stages_ms"].items():
            assert set(stat) == STAT_KEYS, stage
        s = report["samples"][f"{row['model']}|{row['engine']}|{row['stride']}"]
        c2p, eng, ovh, c2s = (np.array(s[k]) for k in ("capture_to_publish_ms", "engine_ms", "overhead_ms", "capture_to_subscriber_ms"))
        assert len(c2p) == row["windows"]["measured"]
        np.testing.assert_allclose(ovh, c2p - eng, atol=1e-3)  # overhead = capture→publish − engine
        assert (c2s >= c2p - 1e-3).all() and (eng > 0).all()
        assert row["engine_ms"]["max"] == pytest.approx(eng.max(), abs=1e-2)
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_engine_only_mode(tmp_path):
    out = tmp_path / "engines.json"
    proc = _bench("--engine-only", "--model", "x3d_xs", "--engine", "torch", "--precision", "fp32,fp16",
                  "--runs", "3", "--stride", "10", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    ok, refused = report["engines"]
    assert ok["engine"] == "torch-cpu" and ok["gflops"] > 0.3 and _ordered(ok["engine_ms"])
    assert ok["peak_rss_mb"] > 100  # measured in the row's own process
    assert ok["malloc"] == ("tcmalloc" if malloc.find_tcmalloc() else "glibc")  # as stream.run's inference
    assert "fp16" in refused["error"]  # fp16 on the CPU is refused with the engine's own message
    assert report["largest_fitting"] == {"10.0": "x3d_xs"}
    assert "largest model that fits a 10.0 s stride here: x3d_xs" in proc.stdout


def test_soak_short_form(tmp_path):
    """The CI form of the soak (docs: 30 min, a capture killed every minute)."""
    out = tmp_path / "soak.json"
    proc = _bench("--duration", "12", "--kill-every", "3", "--stride", "0.25", "--size", "160x120", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    soak = json.loads(out.read_text())["summary"][0]["soak"]
    assert soak["kills"] >= 3
    assert soak["restarts_reported"] == soak["kills"]  # every restart on the status topic
    assert soak["windows_older_than_span"] == 0
    assert soak["degraded_predictions"] >= 1  # windows across an outage say so
    shm = soak["shm_mb"]
    assert shm["last"] == shm["first"] == shm["max"] > 0  # the rings, nothing more


def test_bench_under_subscriber_load(tmp_path):
    out = tmp_path / "load.json"
    proc = _bench("--duration", "5", "--stride", "0.25", "--size", "160x120", "--load-subscribers", "30",
                  "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    row = json.loads(out.read_text())["summary"][0]
    assert row["load_subscribers"] == 30 and row["windows"]["measured"] > 0
    # the send never waits on the idle, stalled or reconnecting subscribers
    assert row["stages_ms"]["publish"]["max"] < 500


@pytest.mark.parametrize(
    "args, line",
    [
        (("--precision", "fp32,bf16"), "error: --precision 'fp32,bf16': the pipeline runs one precision"),
        (("--threads", "0"), "error: --threads 0 must be >= 1"),
        (("--malloc", "/no/libjemalloc.so.2"), "error: --malloc '/no/libjemalloc.so.2': no such file"),
    ],
)
def test_bad_options_give_one_line(args, line):
    proc = _bench(*args, "--duration", "1", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(line), proc.stderr
