"""Compaction and InstallSnapshot with real processes (paper §7)."""

from __future__ import annotations

import pytest

from harness.launcher import LocalCluster, wait_for
from raftkv import Client
from raftkv.wire import ReqOp

SMALL = ("--snapshot-entries", "300", "--wal-segment-bytes", "65536")


@pytest.fixture
def small_cluster(tmp_path):
    c = LocalCluster(3, tmp_path, extra_args=SMALL)
    c.start_all()
    try:
        yield c
    finally:
        c.close()


def dir_size(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_follower_that_missed_compacted_entries_catches_up_by_snapshot(small_cluster):
    c = small_cluster
    leader = c.wait_leader()
    follower = next(i for i in c.nodes if i != leader)
    c.kill(follower)
    with Client(c.addresses, timeout=10) as kv:
        for n in range(1500):
            kv.put(f"k{n % 50}", f"v{n}")
    assert c.status(leader)["counters"]["snapshots_taken"] >= 1
    c.start(follower)
    target = c.status(leader)["commit_index"]
    wait_for(lambda: (c.status(follower) or {}).get("applied_index", 0) >= target, 20,
             "the follower to catch up")
    st = c.status(follower)
    assert st["counters"]["snapshots_installed"] >= 1
    for k in range(50):
        want = c.request(leader, ReqOp.GET_STALE, key=f"k{k}".encode()).value
        assert c.request(follower, ReqOp.GET_STALE, key=f"k{k}".encode()).value == want


def test_sustained_writes_keep_each_data_dir_bounded(small_cluster):
    c = small_cluster
    c.wait_leader()
    value = "x" * 1000
    with Client(c.addresses, timeout=10) as kv:
        for n in range(4000):  # about 4 MB of writes over 40 keys
            kv.put(f"k{n % 40}", value)
    state = 40 * 1100  # keys and values, with room for sessions
    bound = 3 * state + 3 * 65536  # the bound: state x 3 + a segment (and its tail)
    for node in c.nodes.values():
        wait_for(lambda n=node: dir_size(n.data_dir) <= bound, 10,
                 f"node {node.id}'s data dir to shrink under {bound} bytes "
                 f"(now {dir_size(node.data_dir)})")


def test_restart_from_snapshot_keeps_every_write(small_cluster):
    c = small_cluster
    c.wait_leader()
    with Client(c.addresses, timeout=10) as kv:
        for n in range(1000):
            kv.put(f"k{n}", f"v{n}")
    for i in c.nodes:
        c.kill(i)
    c.start_all()
    c.wait_leader(timeout=15)
    with Client(c.addresses, timeout=10) as kv:
        for n in range(0, 1000, 7):
            assert kv.get(f"k{n}") == f"v{n}".encode()
