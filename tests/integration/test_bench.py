"""`raftkv bench` end to end on a small temp cluster: the figures it prints, never how
fast they are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.launcher import down

REPO = Path(__file__).resolve().parents[2]
LOAD_FIELDS = {"config", "cores", "ops", "seconds", "ops_per_s", "errors", "error_kinds",
               "latency_ms", "nodes", "controller", "load_processes", "timeline_ops_per_s",
               "disk_fdatasync_ms"}


def run_bench(tmp_path: Path, *args: str) -> dict:
    """Run the CLI with its temp dir under tmp_path, so whatever it leaves running is
    found and stopped by pid (launcher.down) even if the run fails."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    try:
        proc = subprocess.run([sys.executable, "-m", "harness.cli", "bench", *args, "--json"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
    finally:
        for cluster_dir in tmp_path.glob("raftkv-bench-*/cluster"):
            down(cluster_dir, grace=1.0)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_bench_prints_one_json_object_with_every_figure(tmp_path):
    report = run_bench(tmp_path, "--duration", "1", "--clients", "4")
    assert report.keys() >= LOAD_FIELDS
    assert report["errors"] == 0, report["error_kinds"]
    assert report["ops"] > 0 and report["ops"] == report["latency_ms"]["count"]
    assert {"p50", "p90", "p99", "p999", "max"} <= report["latency_ms"].keys()
    assert set(report["nodes"]) == {"node1", "node2", "node3"}
    assert all(n["rss_mb"] > 0 for n in report["nodes"].values())
    assert report["config"]["fsync"] is True and report["config"]["clients"] == 4


def test_bench_reads_and_writes_through_the_controller(tmp_path):
    report = run_bench(tmp_path, "--duration", "1", "--clients", "4", "--warmup", "0.5",
                       "--mix", "mixed:50/50", "--via", "controller", "--key-space", "50")
    assert report["errors"] == 0, report["error_kinds"]
    assert report["ops"] > 0


def test_bench_failover_times_each_kill(tmp_path):
    report = run_bench(tmp_path, "--failover", "--failover-rounds", "1")
    rounds = report["failover"]["rounds"]
    assert len(rounds) == 1 and rounds[0]["seconds"] is not None
    assert report["failover"]["median_s"] == pytest.approx(rounds[0]["seconds"])


@pytest.mark.parametrize("mix", ["mixed:90/20", "sometimes"])
def test_bench_refuses_a_mix_it_cannot_read(tmp_path, mix):
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "--mix", mix],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "mixed:R/W" in proc.stderr


def test_pysyncobj_side_of_the_comparison_measures_writes():
    from harness.bench_compare import pysyncobj_installed, run_pysyncobj, settings

    if not pysyncobj_installed():  # not importorskip: importing it patches socket (see there)
        pytest.skip("PySyncObj is not installed (the optional `compare` extra)")

    fastest_single = settings(4)[2]
    m = run_pysyncobj(fastest_single, duration=0.5, warmup=0.2, value_size=100, key_space=10)
    assert m.errors == 0 and m.writes_per_s > 0
