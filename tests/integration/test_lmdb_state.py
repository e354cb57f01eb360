"""Nodes with `--state lmdb` (raftkv/lmdb_state.py), as real processes: a restart after
kill -9 that goes on from the database, one after a power cut that must not trust it,
catch-up by the leader's copy. (Snapshots under load: test_snapshots.py, both states.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.launcher import LocalCluster, wait_for
from raftkv import Client
from raftkv.wire import ReqOp
from tests.integration.test_snapshots import running


@pytest.fixture
def cluster(tmp_path: Path):
    with running(tmp_path, "--state", "lmdb") as c:
        yield c


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


def test_a_key_past_lmdbs_limit_is_refused_before_the_log(cluster: LocalCluster):
    c = cluster
    c.wait_leader()
    with Client(c.addresses, timeout=10) as kv:
        kv.put("k" * 510, "fits")
        assert kv.get("k" * 510) == b"fits"
        with pytest.raises(ValueError, match="510"):
            kv.put("k" * 511, "too long")
