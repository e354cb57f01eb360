"""Nodes with `--state lmdb` (raftkv/lmdb_state.py), as real processes: snapshots while
writes go on, a restart after kill -9 that goes on from the database, and a restart after
a power cut that must not trust it."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq

from harness.launcher import LocalCluster, wait_for
from harness.loadgen import Route, fill_keys
from raftkv import Client
from raftkv.wire import ReqOp

LMDB = ("--state", "lmdb")
SMALL = (*LMDB, "--snapshot-entries", "300", "--snapshot-jitter", "0",
         "--wal-segment-bytes", "65536")


@pytest.fixture
def cluster(tmp_path: Path):
    c = LocalCluster(3, tmp_path, extra_args=SMALL)
    c.start_all()
    try:
        yield c
    finally:
        c.close()


def write(c: LocalCluster, n: int, tag: str = "v") -> None:
    with Client(c.addresses, timeout=10) as kv:
        for i in range(n):
            kv.put(f"k{i}", f"{tag}{i}")


def check(c: LocalCluster, n: int, tag: str = "v") -> None:
    with Client(c.addresses, timeout=10) as kv:
        for i in range(0, n, 7):
            assert kv.get(f"k{i}") == f"{tag}{i}".encode(), i


def test_after_kill_9_of_every_node_each_goes_on_from_its_database(cluster: LocalCluster):
    """Failure model: kill -9 of every process; the page cache, and with it every write
    to the database, survives."""
    c = cluster
    c.wait_leader()
    write(c, 1000)
    for i in c.nodes:
        assert c.status(i)["counters"]["snapshots_taken"] >= 1
    for i in c.nodes:
        c.kill(i)
    c.start_all()
    c.wait_leader(timeout=15)
    for i in c.nodes:
        st = c.status(i)
        assert st["kv"]["state"] == "lmdb" and st["kv"]["resumed"] is True, (i, st["kv"])
    check(c, 1000)


def test_after_a_power_cut_no_node_trusts_its_database(cluster: LocalCluster):
    """Failure model: the machine loses power. The database is written without fsync, so
    what its file holds afterwards is unknown: here it is overwritten with garbage, and
    the boot it records is not this one (a power cut is always followed by a new boot).
    Each node must rebuild its state from its snapshot and its log, which it synced."""
    c = cluster
    c.wait_leader()
    write(c, 1000)
    for i in c.nodes:
        c.kill(i)
    for node in c.nodes.values():
        state = node.data_dir / "state"
        (state / "BOOT").write_text("a boot before the power cut")
        with open(state / "data.mdb", "r+b") as f:
            f.seek(8192)
            f.write(b"\xa5" * 65536)
    c.start_all()
    c.wait_leader(timeout=15)
    for i in c.nodes:
        st = c.status(i)
        assert st["kv"]["resumed"] is False, (i, st["kv"])
    check(c, 1000)
    write(c, 50, tag="after")  # and the rebuilt state takes writes
    check(c, 50, tag="after")


def test_a_follower_that_missed_compacted_entries_installs_the_leaders_copy(
        cluster: LocalCluster):
    c = cluster
    leader = c.wait_leader()
    follower = next(i for i in c.nodes if i != leader)
    c.kill(follower)
    write(c, 1500)
    assert c.status(leader)["counters"]["snapshots_taken"] >= 1
    c.start(follower)
    target = c.status(leader)["commit_index"]
    wait_for(lambda: (c.status(follower) or {}).get("applied_index", 0) >= target, 20,
             "the follower to catch up")
    assert c.status(follower)["counters"]["snapshots_installed"] >= 1
    for k in range(0, 1500, 37):
        want = c.request(leader, ReqOp.GET_STALE, key=f"k{k}".encode()).value
        assert c.request(follower, ReqOp.GET_STALE, key=f"k{k}".encode()).value == want
    leftovers = [p.name for p in c.nodes[follower].data_dir.iterdir()
                 if p.name.startswith(("state.incoming-", ".state-"))]
    assert leftovers == []


def test_snapshots_of_a_large_state_stop_no_loop_and_cost_no_election(tmp_path: Path):
    """Issue 16, with the state in LMDB: about 48 MB written with a snapshot every
    4,000 entries; a snapshot is a copy made on a thread, so no turn of any node's loop
    comes near half the shortest election timeout. Failure model: none; a healthy
    cluster under steady writes."""
    c = LocalCluster(3, tmp_path, extra_args=(*LMDB, "--snapshot-entries", "4000"))
    c.start_all()
    ctx = zmq.Context()
    try:
        leader = c.wait_leader()
        term = c.status(leader)["term"]
        ids = tuple(c.addresses)
        route = Route(tuple(c.addresses[i] for i in ids), ids, ids.index(leader))
        fill_keys(ctx, route, key_space=48_000, value_size=1000)
        commit = c.status(leader)["commit_index"]
        wait_for(lambda: all(c.status(i)["applied_index"] >= commit for i in c.nodes), 20,
                 "every node to apply the writes")
        statuses = {i: c.status(i) for i in c.nodes}
        for i, st in statuses.items():
            counters = st["counters"]
            assert counters["snapshots_taken"] >= 3, (i, counters)
            assert counters["snapshots_failed"] == 0, (i, counters)
            assert st["term"] == term, f"node {i}: an election happened ({st['term']})"
            assert counters["longest_turn_ms"] < 150, (i, counters)
            assert counters["last_snapshot_start_ms"] < 50, (i, counters)
        assert {st["kv"]["keys"] for st in statuses.values()} == {48_000}
    finally:
        ctx.destroy(linger=0)
        c.close()


def test_a_key_past_lmdbs_limit_is_refused_before_the_log(cluster: LocalCluster):
    c = cluster
    c.wait_leader()
    with Client(c.addresses, timeout=10) as kv:
        kv.put("k" * 510, "fits")
        assert kv.get("k" * 510) == b"fits"
        with pytest.raises(ValueError, match="510"):
            kv.put("k" * 511, "too long")
