"""The benchmark's arithmetic and report formatting, its per-interval accounting, and
the load generator following the leader among fake nodes (no cluster)."""

from __future__ import annotations

import json
import time
from array import array
from collections import Counter
from collections.abc import Iterator

import pytest
import zmq

from harness.bench import format_failover, format_report, rates, to_json
from harness.loadgen import (
    Pipeline,
    Route,
    Workload,
    add_counts,
    bench_keys,
    drive,
    fill_keys,
    parse_mix,
    per_second,
    percentile,
    split_evenly,
    summarize,
)
from raftkv.wire import ClientReply, ClientRequest, ReplyCode, ReqOp
from tests.unit.test_client import DEADLINE, FakeKV, FakeNode, drop, not_leader


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
    return {"config": {"nodes": 3, "fsync": True, "secure": True, "state": "lmdb",
                       "via": "direct", "mix": "put",
                       "consistency": "linearizable", "clients": 4, "processes": 1,
                       "value_size": 100, "key_space": 10, "duration": 1.0, "warmup": 0.5},
            "cores": 2, "disk_fdatasync_ms": {"p50": 0.1, "p99": 0.2}, **extra}


def test_load_report_names_every_figure():
    r = report(ops=10, seconds=1.0, ops_per_s=10.0, errors=3, errors_per_s=3.0,
               error_kinds={"UNAVAILABLE": 3}, rerouted=64, reroute_kinds={"no reply": 64},
               latency_ms={"p50": 1.0, "p90": 2.0, "p99": 3.0, "p999": 4.0, "max": 5.0},
               nodes={"node1": {"cpu_percent": 50.0, "rss_mb": 30.0, "private_mb": 12.0}},
               controller={"cpu_percent": 1.0, "rss_mb": 20.0},
               load_processes={"count": 1, "cpu_percent": 10.0},
               timeline_ops_per_s=[20.0, 0.0], timeline_errors_per_s=[0.0, 6.0],
               timeline_interval_s=0.5, latencies=array("d", [1.0]))
    text = format_report(r)
    for word in ("10 ops/s", "p50 1.00", "p99.9 4.00", "max 5.00", "3 errors/s",
                 "UNAVAILABLE", "re-routed    64", "no reply", "node1", "controller",
                 "fsync on", "state in lmdb", "private 12.0 MB"):
        assert word in text
    # Only the interval in which something failed or nothing succeeded is listed.
    interval_rows = [line for line in text.splitlines() if line.endswith("errors/s")
                     and line.lstrip()[0].isdigit()]
    assert len(interval_rows) == 1 and "0.5-1.0" in interval_rows[0]
    assert interval_rows[0].split() == ["0.5-1.0", "s", "0", "ops/s", "6", "errors/s"]
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


# -- per-interval accounting -------------------------------------------------------------------

MS = 1_000_000  # ns


class ScriptedPipe:
    """Stands in for a Pipeline in `drive`: each receive hands out the next batch of the
    script, (ms into the window it was received, reply code), every reply 1 ms after its
    request was sent."""

    def __init__(self, start_ns: int, script: list[list[tuple[float, ReplyCode]]]) -> None:
        self.start_ns, self.script = start_ns, script
        self.out: dict = {}
        self.rerouted: Counter = Counter()
        self.count_window = (0, 0)
        self.sent = 0

    def send(self, op: ReqOp, key: bytes = b"", value: bytes | None = None) -> None:
        self.sent += 1

    def receive(self, timeout_s: float) -> list[tuple[int, int, ClientReply]]:
        if not self.script:
            time.sleep(min(timeout_s, 0.005))
            return []
        return [(self.start_ns + int(at * MS) - MS, self.start_ns + int(at * MS),
                 ClientReply(0, code)) for at, code in self.script.pop(0)]


def test_drive_counts_ok_answers_and_failures_apart_in_each_interval():
    ok, unavailable, stale = ReplyCode.OK, ReplyCode.UNAVAILABLE, ReplyCode.STALE_REQUEST
    start = time.monotonic_ns() + 20 * MS
    end = start + 100 * MS
    pipe = ScriptedPipe(start, [
        [(-5, ok)],  # the warm-up: not in the window
        [(1, ok), (2, ok), (3, unavailable), (40, ok)],  # 0-50 ms: 3 OK, 1 failure
        [(55, unavailable), (60, unavailable), (70, stale), (99, stale)],  # 50-100: failures
        [(101, ok)],  # after the window: drained, not counted
    ])
    progress = [0, 0]
    result = drive(pipe, Workload(Route(("x",)), in_flight=4), start, end, progress,
                   interval_ns=50 * MS)

    assert list(result.ok_per_interval) == [3, 0]
    assert list(result.errors_per_interval) == [1, 4]
    assert per_second(result.ok_per_interval, 0.05, 0.1) == [60.0, 0.0]
    assert per_second(result.errors_per_interval, 0.05, 0.1) == [20.0, 80.0]
    assert list(result.latencies_ms) == [1.0, 1.0, 1.0]
    assert result.errors == {"UNAVAILABLE": 3, "STALE_REQUEST": 2}
    assert progress == [5, 5]  # every answer so far, warm-up included, OK and failed apart
    assert pipe.sent == 4 + 1 + 4 + 4  # each answer in time makes room for a new request


def test_per_second_takes_the_last_interval_as_what_is_left_of_the_window():
    assert per_second([10, 10, 3], 0.5, 1.25) == [20.0, 20.0, 12.0]
    assert per_second([], 0.5, 1.0) == []


def test_add_counts_sums_processes_of_any_length():
    total = array("q")
    add_counts(total, [1, 2])
    add_counts(total, [10, 20, 30])
    assert list(total) == [11, 22, 30]


def test_progress_rates_keep_ok_answers_and_failures_apart():
    assert rates((100, 7), (600, 7), 0.5) == (1000.0, 0.0)
    assert rates((600, 7), (600, 4007), 0.5) == (0.0, 8000.0)


# -- following the leader ----------------------------------------------------------------------

@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def nodes(ctx: zmq.Context) -> Iterator[list[FakeNode]]:
    made: list[FakeNode] = []
    yield made
    for node in made:
        node.stop()


def answers_to(pipe: Pipeline, count: int) -> list[ClientReply]:
    """The next `count` answers `pipe` returns; fails the test at DEADLINE."""
    got: list[ClientReply] = []
    deadline = time.monotonic() + DEADLINE
    while len(got) < count:
        assert time.monotonic() < deadline, f"{len(got)} of {count} answers"
        got += [reply for _, _, reply in pipe.receive(0.05)]
    return got


def puts(node: FakeNode) -> list[tuple[int, int, int, bytes]]:
    return [(r.request_id, r.client_id, r.seq, r.key) for r in node.ops(ReqOp.PUT)]


def test_not_leader_sends_the_same_request_to_the_hinted_node(ctx, nodes):
    kv, leader = FakeKV(), [1]

    def serve_as(node_id: int):
        def handle(req: ClientRequest):
            if leader[0] != node_id:
                return ReplyCode.NOT_LEADER, "not the leader", leader[0]
            return kv(req)
        return handle

    nodes += [FakeNode(ctx, serve_as(1)), FakeNode(ctx, serve_as(2))]
    pipe = Pipeline(ctx, Route((nodes[0].address, nodes[1].address), (1, 2), first=0),
                    batch=True)
    try:
        pipe.open_sessions(2)
        pipe.send(ReqOp.PUT, b"k1", b"v")
        assert [r.code for r in answers_to(pipe, 1)] == [ReplyCode.OK]
        leader[0] = 2
        pipe.send(ReqOp.PUT, b"k2", b"v")
        pipe.send(ReqOp.PUT, b"k3", b"v")
        assert [r.code for r in answers_to(pipe, 2)] == [ReplyCode.OK, ReplyCode.OK]
    finally:
        pipe.close()
    refused = puts(nodes[0])[1:]
    assert [key for *_, key in refused] == [b"k2", b"k3"]
    assert puts(nodes[1]) == refused  # same request ids, session and seqs
    assert kv.store.get(b"k2") == b"v" and kv.store.get(b"k3") == b"v"
    assert pipe.target == 1 and pipe.rerouted == {"NOT_LEADER": 2}


def test_a_silent_node_is_left_and_its_hints_not_followed(ctx, nodes):
    kv = FakeKV()
    nodes += [FakeNode(ctx, drop), FakeNode(ctx, not_leader(1)), FakeNode(ctx, kv)]
    route = Route(tuple(n.address for n in nodes), (1, 2, 3), first=0)
    pipe = Pipeline(ctx, route, batch=True, no_reply_s=0.05)
    try:
        pipe.open_sessions(1)
        pipe.send(ReqOp.PUT, b"k", b"v")
        assert [r.code for r in answers_to(pipe, 1)] == [ReplyCode.OK]
    finally:
        pipe.close()
    # Node 1 never answered; node 2 named it as the leader, and was passed over for 3.
    assert pipe.gone == 0 and pipe.target == 2
    assert len(nodes[0].ops(ReqOp.OPEN_SESSION)) == 1
    assert pipe.rerouted == {"no reply": 1, "NOT_LEADER": 1}
    assert kv.store.get(b"k") == b"v"


def test_puts_a_silent_leader_applied_are_answered_ok_when_sent_again(ctx, nodes):
    """The leader applies three pipelined puts and dies before answering; the next leader
    has them in its log. Sent again there, each is answered with its saved reply: every
    put has a session of its own. (On one shared session the store keeps only the last
    seq, and the first two came back STALE_REQUEST.)"""
    kv = FakeKV()

    def apply_then_die(req: ClientRequest) -> None:
        kv(req)  # applied, never answered

    nodes += [FakeNode(ctx, kv), FakeNode(ctx, kv)]
    pipe = Pipeline(ctx, Route((nodes[0].address, nodes[1].address), (1, 2), first=0),
                    batch=True, no_reply_s=0.05)
    try:
        pipe.open_sessions(3)
        nodes[0].handler = apply_then_die
        for key in (b"a", b"b", b"c"):
            pipe.send(ReqOp.PUT, key, b"v")
        assert [r.code for r in answers_to(pipe, 3)] == [ReplyCode.OK] * 3
    finally:
        pipe.close()
    assert pipe.rerouted == {"no reply": 3}
    assert len({cid for _, cid, _, _ in puts(nodes[1])}) == 3


def test_with_no_leader_anywhere_rounds_of_re_routes_are_paced(ctx, nodes):
    nodes += [FakeNode(ctx, not_leader(0)) for _ in range(3)]
    pipe = Pipeline(ctx, Route(tuple(n.address for n in nodes), (1, 2, 3)), batch=True)
    try:
        pipe.send(ReqOp.GET, b"k")
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            assert pipe.receive(0.01) == []
    finally:
        pipe.close()
    # Unpaced, a GET would bounce thousands of times in 0.3 s; paced (10, 20, 40, 80,
    # 160 ms after each round of three) a few dozen at most.
    bounces = sum(len(n.ops(ReqOp.GET)) for n in nodes)
    assert 3 <= bounces <= 30
    assert pipe.out  # still outstanding: no answer but OK ends a re-routed request


def test_filling_puts_again_a_key_whose_leader_lost_the_leadership(ctx, nodes):
    """Found filling 10 million keys: a leader change answered a pending put UNAVAILABLE
    and the whole fill stopped. Its outcome is unknown; putting the same value again
    leaves the same state, so the fill does that and goes on."""
    kv, refused = FakeKV(), []

    def lose_some(req: ClientRequest):
        lost = (b"bench-key-0000002", b"bench-key-0000005")
        if req.op == ReqOp.PUT and req.key in lost and req.key not in refused:
            refused.append(req.key)
            return ReplyCode.UNAVAILABLE, "leadership lost while the write was pending", 0
        return kv(req)

    nodes.append(FakeNode(ctx, lose_some))
    fill_keys(ctx, Route((nodes[0].address,), (1,)), key_space=8, value_size=10, in_flight=3)
    assert len(refused) == 2
    assert sorted(k for k in kv.store.scan(b"", 100)) == sorted(
        (k, kv.store.get(k)) for k in bench_keys(8))


def test_the_sampler_reports_private_memory_within_rss():
    import os

    from harness.bench import ProcessSampler

    sampler = ProcessSampler({"me": os.getpid()})
    sampler.start()
    sampler.sample()
    me = sampler.summary()["me"]
    assert 0 < me["private_mb"] <= me["rss_mb"]


def test_compare_has_etcd_rows_only_when_asked_at_1_and_n_in_flight_as_it_comes():
    from harness.bench_compare import ETCD_CONNS, RAFTKV_DURABILITY, settings

    assert all(s.system != "etcd" for s in settings(64))
    etcd = [s for s in settings(64, etcd=True) if s.system == "etcd"]
    assert [s.in_flight for s in etcd] == [1, 64]
    assert etcd[0].options == () and etcd[1].options == (("conns", ETCD_CONNS),)
    assert all(s.durability == RAFTKV_DURABILITY and "linearizable" in s.reads for s in etcd)
    assert settings(64, etcd=True)[:6] == settings(64)


def test_etcd_members_listen_on_their_own_loopback_ports_and_list_each_other(tmp_path):
    from harness.bench_compare import client_url, etcd_commands

    commands = etcd_commands(tmp_path, [2001, 2002, 2003, 3001, 3002, 3003])
    assert [client_url(c) for c in commands] == [f"http://127.0.0.1:{p}"
                                                 for p in (2001, 2002, 2003)]
    for i, c in enumerate(commands, 1):
        flags = dict(zip(c[1::2], c[2::2], strict=True))
        assert c[0] == "etcd" and flags["--name"] == f"e{i}"
        assert flags["--data-dir"] == str(tmp_path / f"e{i}")
        assert flags["--listen-peer-urls"] == f"http://127.0.0.1:{3000 + i}"
        assert flags["--initial-cluster"] == ("e1=http://127.0.0.1:3001,"
                                              "e2=http://127.0.0.1:3002,e3=http://127.0.0.1:3003")
        assert not any("unsafe" in f or "fsync" in f for f in flags)  # etcd's durability
    with pytest.raises(ValueError):
        etcd_commands(tmp_path, [2001, 2001, 3001, 3002])
    with pytest.raises(ValueError):
        etcd_commands(tmp_path, [2001, 2002, 3001])


def test_etcd_load_report_counts_ok_puts_per_second_and_every_failure():
    from harness.bench_compare import parse_etcd_load

    out = json.dumps({"leader": "http://127.0.0.1:2001", "latencies_ms": [3.0, 1.0, 2.0, 4.0],
                      "errors": {"timeout": 2, "Unavailable": 1}, "unanswered": 4})
    m = parse_etcd_load(out + "\n", duration=2.0)
    assert (m.writes_per_s, m.p50_ms, m.p99_ms, m.errors) == (2.0, 2.0, 4.0, 7)
    empty = parse_etcd_load(json.dumps({"leader": "", "latencies_ms": [], "errors": {},
                                        "unanswered": 0}), duration=1.0)
    assert (empty.writes_per_s, empty.p50_ms, empty.errors) == (0.0, 0.0, 0)


def test_each_system_goes_first_in_turn():
    from harness.bench_compare import rotated

    three = ["raftkv", "PySyncObj", "etcd"]
    assert [rotated(three, r)[0] for r in range(4)] == ["raftkv", "PySyncObj", "etcd", "raftkv"]
    assert all(sorted(rotated(three, r)) == sorted(three) for r in range(3))
    assert [rotated(["raftkv", "PySyncObj"], r) for r in range(2)] == [
        ["raftkv", "PySyncObj"], ["PySyncObj", "raftkv"]]


def test_compare_table_sets_raftkv_against_etcd_at_n_in_flight_and_one_clients_p50():
    from harness.bench_compare import Measured, format_table, settings

    table = settings(64, etcd=True)
    figures = {("raftkv", 1): Measured(1_500, 0.6, 1.4, 0),
               ("raftkv", 64): Measured(50_000, 1.1, 2.6, 0),
               ("etcd", 1): Measured(900, 1.2, 3.0, 0),
               ("etcd", 64): Measured(20_000, 3.0, 9.0, 0)}
    ours_1, ours_64, *_, etcd_1, etcd_64 = table
    rows = [(s, figures[s.system, s.in_flight]) for s in (ours_1, ours_64, etcd_1, etcd_64)]
    lines = format_table(rows, 3).splitlines()
    assert sum(line.startswith("etcd ") for line in lines) == 2
    assert lines[-2:] == [
        "one client's put p50: raftkv 0.60 ms, etcd 1.20 ms (raftkv's / etcd's: 0.50x)",
        "raftkv / etcd, puts/s at 64 in flight, both durable: 2.50x"]
    assert not any("PySyncObj" in line for line in lines)  # no PySyncObj rows, no ratio


def test_etcd_rows_need_etcd_go_and_the_client_sources(tmp_path, monkeypatch):
    from harness import bench_compare

    monkeypatch.setenv("PATH", str(tmp_path))
    assert bench_compare.etcd_missing() == "etcd is not on PATH"
    for name in ("etcd", "go"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setattr(bench_compare, "DEBIAN_GOPATH", tmp_path / "gocode")
    assert "sources" in bench_compare.etcd_missing()
    (tmp_path / "gocode/src/go.etcd.io/etcd/clientv3").mkdir(parents=True)
    assert bench_compare.etcd_missing() is None
