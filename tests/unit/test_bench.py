"""The benchmark's arithmetic and report formatting (no cluster)."""

from __future__ import annotations

import json
from array import array

import pytest

from harness.bench import format_failover, format_report, to_json
from harness.loadgen import parse_mix, percentile, split_evenly, summarize


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]  # 1 .. 100
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.9) == 90.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.999) == 100.0
    assert percentile(values, 1.0) == 100.0


def test_percentile_of_one_value_is_that_value():
    assert percentile([7.5], 0.5) == 7.5
    assert percentile([7.5], 0.999) == 7.5


def test_percentile_of_nothing_is_zero():
    assert percentile([], 0.5) == 0.0


def test_summarize_sorts_and_rounds():
    s = summarize(array("d", [3.0, 1.0, 2.0, 4.0004]))
    assert (s.count, s.p50, s.p90, s.p99, s.p999, s.max) == (4, 2.0, 4.0, 4.0, 4.0, 4.0)
    assert s.mean == 2.5


def test_summarize_of_nothing_is_zeros():
    s = summarize([])
    assert s.count == 0 and s.p50 == 0.0 and s.max == 0.0


def test_summary_of_a_long_tail():
    s = summarize([1.0] * 990 + [100.0] * 10)
    assert s.p50 == 1.0 and s.p99 == 1.0 and s.p999 == 100.0 and s.max == 100.0


@pytest.mark.parametrize("mix, gets", [("put", 0), ("get", 100), ("mixed:90/10", 90),
                                       ("mixed:0/100", 0), ("mixed:100/0", 100)])
def test_parse_mix_gives_the_get_percentage(mix, gets):
    assert parse_mix(mix) == gets


@pytest.mark.parametrize("mix", ["mixed:90/20", "mixed:90", "mixed", "reads", "mixed:a/b", ""])
def test_parse_mix_refuses_what_it_cannot_read(mix):
    with pytest.raises(ValueError, match="mixed:R/W"):
        parse_mix(mix)


def test_split_evenly_keeps_the_total():
    assert split_evenly(64, 2) == [32, 32]
    assert split_evenly(10, 3) == [4, 3, 3]
    assert split_evenly(1, 1) == [1]


def report(**extra):
    return {"config": {"nodes": 3, "fsync": True, "via": "direct", "mix": "put",
                       "consistency": "linearizable", "clients": 4, "processes": 1,
                       "value_size": 100, "key_space": 10, "duration": 1.0, "warmup": 0.5},
            "cores": 2, "disk_fdatasync_ms": {"p50": 0.1, "p99": 0.2}, **extra}


def test_load_report_names_every_figure():
    r = report(ops=10, ops_per_s=10.0, errors=1, error_kinds={"NOT_LEADER": 1},
               latency_ms={"p50": 1.0, "p90": 2.0, "p99": 3.0, "p999": 4.0, "max": 5.0},
               nodes={"node1": {"cpu_percent": 50.0, "rss_mb": 30.0}},
               controller={"cpu_percent": 1.0, "rss_mb": 20.0},
               load_processes={"count": 1, "cpu_percent": 10.0}, latencies=array("d", [1.0]))
    text = format_report(r)
    for word in ("10 ops/s", "p50 1.00", "p99.9 4.00", "max 5.00", "NOT_LEADER", "node1",
                 "controller", "fsync on"):
        assert word in text
    assert "latencies" not in json.loads(to_json(r))


def test_failover_report_prints_each_kill_and_the_median():
    lines = format_failover({"rounds": [{"killed": 1, "term": 2, "seconds": 0.4},
                                        {"killed": 2, "term": 3, "seconds": None}],
                             "median_s": 0.4, "max_s": 0.4})
    assert "400 ms" in lines[1] and "never" in lines[2] and lines[-1].startswith("median 400")


def test_compare_table_takes_medians_and_the_ratio_to_the_best_peer():
    from harness.bench_compare import Measured, format_table, medians, settings

    ours_1, ours_64, ours_unsynced, peer_1, peer_64, peer_1000 = settings(64)
    rows = [(ours_1, medians([Measured(900, 1.0, 2.0, 0)] * 3)),
            (ours_64, medians([Measured(v, 3.0, 5.0, 0) for v in (20_000, 10_000, 30_000)])),
            (ours_unsynced, medians([Measured(90_000, 3.0, 5.0, 0)])),
            (peer_1, medians([Measured(1_000, 0.5, 1.0, 0)])),
            (peer_64, medians([Measured(600, 100.0, 101.0, 0)])),
            (peer_1000, medians([Measured(v, 120.0, 400.0, 0) for v in (8_000, 9_000, 1)]))]
    table = format_table(rows, 3)
    assert "20,000" in table and "8,000" in table and "no fsync" in table
    assert table.splitlines()[-1].endswith("2.50x")


def test_compare_sums_up_what_pysyncobj_wrote_to_its_stderr(tmp_path):
    from harness.bench_compare import describe_log

    log = tmp_path / "pysyncobj.log"
    log.write_text("")
    assert "wrote nothing" in describe_log(str(log))
    log.write_text("truncating already-applied log entries from index 17\n"
                   "Traceback (most recent call last):\n  File x\nIndexError: list index\n"
                   "failed _onTick in _autoTickThread\nTraceback (most recent call last):\n")
    line = describe_log(str(log))
    assert "6 lines" in line and "2 of them tracebacks" in line and str(log) in line
    assert "truncating already-applied" in line


def test_one_load_process_per_64_requests_in_flight_unless_told():
    from harness.bench import BenchConfig

    assert BenchConfig(clients=64, mix="put").load_processes == 1
    assert BenchConfig(clients=64, mix="get").load_processes == 1
    assert BenchConfig(clients=65, mix="mixed:90/10").load_processes == 2
    assert BenchConfig(clients=1).load_processes == 1
    assert BenchConfig(clients=64, processes=3).load_processes == 3
