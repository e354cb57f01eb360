"""Acknowledged writes survive kill -9 of the leader and of the whole cluster."""

from __future__ import annotations

from harness.launcher import wait_for
from raftkv import Client


def test_round_trips_through_the_python_client(cluster):
    cluster.wait_leader()
    with Client(cluster.addresses) as kv:
        kv.put("user:1", "alice")
        assert kv.get("user:1") == b"alice"
        assert kv.cas("user:1", "alice", "bob") is True
        assert kv.cas("user:1", "alice", "carol") is False
        assert kv.cas("new", None, "x") is True
        assert kv.scan("user:") == [(b"user:1", b"bob")]
        assert kv.delete("user:1") is True
        assert kv.delete("user:1") is False
        assert kv.get("user:1") is None


def test_acknowledged_writes_survive_killing_the_leader(cluster):
    leader = cluster.wait_leader()
    with Client(cluster.addresses, timeout=10) as kv:
        for n in range(200):
            kv.put(f"k{n}", f"v{n}")
        cluster.kill(leader)
        new_leader = cluster.wait_leader(timeout=10, exclude=leader)
        assert new_leader != leader
        for n in range(200, 250):
            kv.put(f"k{n}", f"v{n}")
        for n in range(250):
            assert kv.get(f"k{n}") == f"v{n}".encode()


def test_acknowledged_writes_survive_killing_every_node(cluster):
    cluster.wait_leader()
    with Client(cluster.addresses, timeout=10) as kv:
        for n in range(300):
            kv.put(f"k{n}", f"v{n}")
    for i in cluster.nodes:
        cluster.kill(i)
    cluster.start_all()
    cluster.wait_leader(timeout=15)
    with Client(cluster.addresses, timeout=10) as kv:
        for n in range(300):
            assert kv.get(f"k{n}") == f"v{n}".encode()


def test_restarted_follower_catches_up(cluster):
    leader = cluster.wait_leader()
    follower = next(i for i in cluster.nodes if i != leader)
    cluster.kill(follower)
    with Client(cluster.addresses, timeout=10) as kv:
        for n in range(100):
            kv.put(f"k{n}", "v")
    cluster.start(follower)
    target = cluster.status(leader)["commit_index"]
    wait_for(lambda: (cluster.status(follower) or {}).get("applied_index", 0) >= target, 10,
             "the restarted follower to apply everything")
