"""`raftkv bench` end to end on a small temp cluster: the figures it prints, never how
fast they are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from harness import rpc
from harness.launcher import down, free_base_port, node_statuses, up, wait_for

REPO = Path(__file__).resolve().parents[2]
LOAD_FIELDS = {"config", "cores", "ops", "seconds", "ops_per_s", "errors", "errors_per_s",
               "error_kinds", "rerouted", "reroute_kinds", "latency_ms", "nodes",
               "controller", "load_processes", "timeline_ops_per_s", "timeline_errors_per_s",
               "timeline_interval_s", "disk_fdatasync_ms"}


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
    assert report["config"]["secure"] is True
    assert report["rerouted"] == 0 and report["errors_per_s"] == 0
    assert_timeline_adds_up(report)


def assert_timeline_adds_up(report: dict) -> None:
    """The per-interval figures are the summary's, interval by interval: OK answers in
    ops/s, failures in errors/s, neither in the other."""
    step = report["timeline_interval_s"]
    assert sum(report["timeline_ops_per_s"]) * step == pytest.approx(report["ops"], abs=0.5)
    assert sum(report["timeline_errors_per_s"]) * step == pytest.approx(report["errors"],
                                                                       abs=0.5)


def test_bench_direct_follows_the_leader_when_it_is_killed(tmp_path):
    """The leader is killed early in the counted window; the load moves to the new leader
    and keeps writing, and the figures count what came back. With no warm-up the window
    opens with the load, so writes committing say the window is open."""
    cluster_dir = tmp_path / "cluster"
    warmup, duration = 0, 4.0
    ctx = zmq.Context()
    try:
        state, _ = up(cluster_dir, base_port=free_base_port(3))
        bench = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "bench", "--dir", str(cluster_dir),
             "--via", "direct", "--clients", "16", "--warmup", str(warmup), "--duration",
             str(duration), "--json"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            start = max(st["commit_index"] for st in node_statuses(ctx, state.addresses).values())
            wait_for(lambda: any(st["commit_index"] > start + 100
                                 for st in node_statuses(ctx, state.addresses).values()),
                     30.0, "the bench's writes")
            killed = rpc.control(ctx, state.controller.address, "kill-leader")
            out, err = bench.communicate(timeout=60)
        finally:
            if bench.poll() is None:
                bench.kill()
                bench.communicate()
    finally:
        down(cluster_dir, grace=1.0)
        ctx.destroy(linger=0)
    assert bench.returncode == 0, err
    report = json.loads(out)
    assert report.keys() >= LOAD_FIELDS
    # The load left the silent leader for another node, and wrote on there.
    assert report["reroute_kinds"].get("no reply", 0) > 0, (killed, report)
    ok = report["timeline_ops_per_s"]
    assert len(ok) == duration / report["timeline_interval_s"]
    assert all(rate > 0 for rate in ok[-2:]), ok  # the last second: under the new leader
    assert_timeline_adds_up(report)
    assert report["ops"] == report["latency_ms"]["count"]
    # A re-sent write has its own session, so it is never refused as stale; a leader
    # that lost its leadership with writes pending answers UNAVAILABLE.
    assert set(report["error_kinds"]) <= {"UNAVAILABLE"}, report["error_kinds"]


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


def test_etcd_side_of_the_comparison_measures_puts_and_leaves_nothing_behind(tmp_path,
                                                                             monkeypatch):
    import tempfile

    import psutil

    from harness.bench_compare import (
        ETCD_INSTALL,
        build_etcd_load,
        compare,
        etcd_missing,
        format_table,
        medians,
    )

    if why := etcd_missing():
        pytest.skip(f"{why} ({ETCD_INSTALL})")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the clusters' dirs go here
    load = build_etcd_load(tmp_path)
    runs = compare(1, duration=0.5, warmup=0.3, in_flight=4, value_size=100,
                   log=lambda _: None, etcd_load=load, systems=("etcd",))
    assert [(s.system, s.in_flight) for s, _ in runs] == [("etcd", 1), ("etcd", 4)]
    for _, ms in runs:
        assert len(ms) == 1 and ms[0].errors == 0
        assert ms[0].writes_per_s > 0 and 0 < ms[0].p50_ms <= ms[0].p99_ms
    table = format_table([(s, medians(ms)) for s, ms in runs], 1)
    assert sum(line.startswith("etcd ") for line in table.splitlines()) == 2
    assert not list(tmp_path.glob("raftkv-compare-etcd-*"))
    left = [p.pid for p in psutil.process_iter(["cmdline"])
            if any(str(tmp_path) in arg for arg in p.info["cmdline"] or ())]
    assert not left, left
