"""The CLI on a deployment run by hand (#19): nodes started with `python -m raftkv node`,
no harness dir at all, reached with --endpoints (or RAFTKV_ENDPOINTS) and --credentials.
Every verb runs as its own process, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness.cluster_state import REPO, format_cluster_id, new_cluster_id
from harness.launcher import free_ports, wait_for
from raftkv import Client
from raftkv.security import ADMIN, Credentials, make_key, make_keys


class HandCluster:
    """Nodes run by hand: `python -m raftkv node` processes on free loopback ports, each
    with its own data dir under `root`, killed by pid at `close`."""

    def __init__(self, root: Path, n: int, keys: Path, cluster_id: int) -> None:
        self.root, self.keys, self.cluster_id = root, keys, cluster_id
        self.addresses = {i: f"tcp://127.0.0.1:{p}" for i, p in
                          enumerate(free_ports(n), start=1)}
        self.procs: dict[int, subprocess.Popen] = {}

    def argv(self, node_id: int, *extra: str) -> list[str]:
        peers = [f"--peer={i}={a}" for i, a in self.addresses.items() if i != node_id]
        return [sys.executable, "-m", "raftkv", "node", "--id", str(node_id),
                "--listen", self.addresses[node_id], *peers,
                "--data-dir", str(self.root / f"node{node_id}"), "--keys", str(self.keys),
                "--cluster-id", format_cluster_id(self.cluster_id),
                "--heartbeat-ms", "20", "--election-ms", "150", *extra]

    def start(self, node_id: int, *extra: str) -> None:
        with open(self.root / f"node{node_id}.log", "ab") as log:  # the child keeps a copy
            self.procs[node_id] = subprocess.Popen(self.argv(node_id, *extra), stdout=log,
                                                   stderr=subprocess.STDOUT, cwd=REPO)

    def kill(self, node_id: int) -> None:
        proc = self.procs.pop(node_id, None)
        if proc is not None:
            proc.kill()
            proc.wait(10)

    def close(self) -> None:
        for node_id in list(self.procs):
            self.kill(node_id)

    @property
    def endpoints(self) -> str:
        return ",".join(a.removeprefix("tcp://") for a in self.addresses.values())


def run(*args: str, env: dict[str, str], check: int | None = 0,
        stdin: str | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "harness.cli", *args], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=60, input=stdin)
    if check is not None:
        assert p.returncode == check, (f"raftkv {' '.join(args)} exited {p.returncode}, "
                                       f"want {check}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


@pytest.fixture
def keys(tmp_path):
    path = tmp_path / "keys"
    make_keys(path, [1, 2, 3, 4])
    return path


@pytest.fixture
def hand(tmp_path, keys):
    """Three secure nodes, run by hand, with a leader."""
    c = HandCluster(tmp_path, 3, keys, new_cluster_id())
    try:
        for i in c.addresses:
            c.start(i, "--new")
        yield c
    finally:
        c.close()


@pytest.fixture
def env(tmp_path, hand, keys):
    """What a user on another machine has: RAFTKV_ENDPOINTS and RAFTKV_CREDENTIALS (a
    key dir: its admin key is taken), and no harness dir."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("RAFTKV_")}
    return dict(e, PYTHONPATH=str(REPO), RAFTKV_ENDPOINTS=hand.endpoints,
                RAFTKV_CREDENTIALS=str(keys))


def statuses(env: dict[str, str], *extra: str) -> list[dict]:
    p = run("endpoint", "status", "--json", *extra, env=env, check=None)
    assert p.returncode in (0, 3), p.stderr
    return json.loads(p.stdout)


def wait_leader(env: dict[str, str], exclude: int | None = None) -> int:
    def leader() -> int | None:
        found = [r["id"] for r in statuses(env, "--timeout", "1")
                 if r.get("role") == "leader" and r["id"] != exclude]
        return found[0] if found else None
    return wait_for(leader, 20, "a leader")


def test_data_verbs_status_and_health_without_a_harness_dir(hand, env, keys):
    leader = wait_leader(env)
    revision = json.loads(run("put", "user:1", "alice", "--json", env=env).stdout)["revision"]
    assert run("get", "user:1", env=env).stdout == "alice\n"
    # The flags on the command line, ids named, tcp:// spelled out: the same cluster.
    named = ",".join(f"{i}={a}" for i, a in hand.addresses.items())
    bare = {k: v for k, v in env.items() if k not in ("RAFTKV_ENDPOINTS", "RAFTKV_CREDENTIALS")}
    got = json.loads(run("get", "user:1", "--json", "--endpoints", named, "--credentials",
                         str(keys / f"{ADMIN}.key_secret"), env=bare).stdout)
    assert got["value"] == "alice" and got["mod_revision"] == revision
    run("put", "photo", "-", stdin="bytes", env=env)
    assert run("scan", "", env=env).stdout == "photo\tbytes\nuser:1\talice\n"
    assert run("cas", "user:1", "alice", "bob", env=env).stdout == "SWAPPED\n"
    assert run("del", "photo", env=env).stdout == "OK\n"
    assert run("get", "photo", env=env, check=1).returncode == 1

    rows = statuses(env)
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert [r["role"] for r in rows].count("leader") == 1
    assert {r["leader"] for r in rows} == {leader}
    assert all(r["keys"] == 1 and r["db_bytes"] > 0 for r in wait_for(
        lambda: (lambda rs: rs if all(r["applied_index"] == r["commit_index"] for r in rs)
                 else None)(statuses(env)), 10, "every node to apply"))
    text = run("endpoint", "status", env=env).stdout
    assert text.splitlines()[0].split()[:4] == ["ID", "ADDRESS", "ROLE", "TERM"]

    health = json.loads(run("endpoint", "health", "--json", env=env).stdout)
    assert [h["healthy"] for h in health] == [True, True, True]
    assert {h["leader"] for h in health} == {leader}

    follower = next(i for i in hand.addresses if i != leader)
    hand.kill(follower)
    p = run("endpoint", "health", "--timeout", "1", "--json", env=env, check=1)
    assert {h["id"]: h["healthy"] for h in json.loads(p.stdout)} == {
        i: i != follower for i in hand.addresses}
    assert "error" in statuses(env, "--timeout", "1")[follower - 1]
    hand.start(follower)  # its data dir exists now: no --new
    wait_for(lambda: run("endpoint", "health", "--timeout", "1", env=env, check=None)
             .returncode == 0, 20, "every endpoint healthy again")


def test_naming_the_cluster_twice_or_badly_is_a_usage_error(tmp_path):
    env = dict({k: v for k, v in os.environ.items() if not k.startswith("RAFTKV_")},
               PYTHONPATH=str(REPO), RAFTKV_ENDPOINTS="127.0.0.1:1")
    both = run("get", "k", "--dir", str(tmp_path), "--endpoints", "127.0.0.1:1", env=env,
               check=2)
    assert "both --dir and --endpoints" in both.stderr
    assert "ID=HOST:PORT" in run("get", "k", "--endpoints", "h:p", env=env, check=2).stderr
    assert "tcp://" in run("put", "k", "v", "--endpoints", "udp://h:1", env=env,
                           check=2).stderr
    assert "in the environment" in run("get", "k", env=dict(env, RAFTKV_DIR=str(tmp_path)),
                                       check=2).stderr
    # The command line beats the environment: here the dir, which holds no cluster.
    neither = run("get", "k", "--dir", str(tmp_path / "none"), env=env, check=3)
    assert "--endpoints" in neither.stderr  # the message names both ways


def test_member_add_promotes_and_remove_moves_leadership_first(tmp_path, hand, env):
    leader = wait_leader(env)
    run("put", "k", "v", env=env)
    new = HandCluster(tmp_path, 1, hand.keys, hand.cluster_id)
    try:
        node4 = new.addresses[1]
        new.addresses = {4: node4, **hand.addresses}
        new.start(4, "--join")
        added = json.loads(run("member", "add", "4", node4, "--timeout", "30", "--json",
                               env=env).stdout)
        assert added["added"] == 4 and added["voters"] == [1, 2, 3, 4]
        env4 = dict(env, RAFTKV_ENDPOINTS=f"{hand.endpoints},{node4.removeprefix('tcp://')}")
        listed = json.loads(run("member", "list", "--json", env=env4).stdout)
        assert [(m["id"], m["member"]) for m in listed["members"]] == [
            (1, "voter"), (2, "voter"), (3, "voter"), (4, "voter")]
        assert listed["members"][3]["address"] == node4
        assert next(r for r in statuses(env4) if r["id"] == 4)["keys"] == 1  # caught up

        p = run("member", "remove", str(leader), "--json", env=env4)
        removed = json.loads(p.stdout)
        assert removed["removed"] == leader and leader not in removed["voters"]
        assert f"node {leader} leads: handing leadership to node" in p.stderr
        # wait_leader(exclude=) never answers `leader`: what the others and it say is
        # the check. It handed over before it left, so it no longer claims to lead.
        successor = wait_leader(env4, exclude=leader)
        assert successor != leader and successor in removed["voters"]
        assert [r.get("role") for r in statuses(env4, "--timeout", "1")
                if r["id"] == leader] != ["leader"]
        again = json.loads(run("member", "add", "4", node4, "--learner", "--json",
                               env=env4).stdout)
        assert 4 in again["voters"]  # already in force: answered as done
    finally:
        new.close()


def test_snapshot_save_is_one_point_in_time_and_restore_starts_a_new_cluster(
        tmp_path, hand, env, keys):
    wait_leader(env)
    names = [f"k{i:04d}" for i in range(2500)]  # three SCAN pages
    with Client(hand.addresses, credentials=Credentials.load(keys, ADMIN)) as kv, \
            ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: kv.put(k, "0"), names))
        stop = threading.Event()
        service = kv.grant(600)
        kv.put("svc/a", "up", lease=service)
        held = kv.lease(2.0)  # kept alive by this client only: gone after the restore
        kv.put("svc/held", "me", lease=held)

        errors: list[BaseException] = []

        def writer() -> None:  # the first key, then the last: never two steps apart
            i, lease = 0, 0
            try:
                while not stop.is_set():
                    i += 1
                    kv.put(names[0], str(i))
                    kv.put(names[-1], str(i))
                    if i % 5 == 0:  # a lease moved on: granted, its key put, old revoked
                        old, lease = lease, kv.grant(600)
                        kv.put("eph", str(i), lease=lease)
                        if old:
                            kv.revoke(old)
            except BaseException as e:  # reported by the test, not lost with the thread
                errors.append(e)

        t = threading.Thread(target=writer)
        t.start()
        try:
            saved = json.loads(run("snapshot", "save", str(tmp_path / "b.rkv"), "--json",
                                   env=env).stdout)
        finally:
            stop.set()
            t.join()
            held.close()
    assert not errors, errors  # else the save ran beside a writer that had stopped
    assert saved["keys"] in (len(names) + 2, len(names) + 3)  # svc/a, svc/held; eph?

    fresh = HandCluster(tmp_path / "new", 3, keys, new_cluster_id())
    (tmp_path / "new").mkdir()
    try:
        for i in fresh.addresses:
            restored = json.loads(run(
                "snapshot", "restore", str(tmp_path / "b.rkv"), "--data-dir",
                str(fresh.root / f"node{i}"), "--id", str(i), "--voters", "1,2,3",
                "--cluster-id", format_cluster_id(fresh.cluster_id), "--json",
                env=env).stdout)
            assert restored["index"] == saved["revision"] and restored["keys"] == saved["keys"]
            assert restored["leases"] == saved["leases"] >= 2
            fresh.start(i)  # no --new: the dir exists
        env2 = dict(env, RAFTKV_ENDPOINTS=fresh.endpoints)
        wait_leader(env2)
        pairs = dict(line.split("\t") for line in
                     run("scan", "k", "--all", "--limit", "1000", env=env2).stdout.splitlines())
        assert sorted(pairs) == names
        # The leases came along, each with its TTL and keys, as of the backup's revision:
        # the churned one with the key it held then, if any.
        leases = [json.loads(line) for line in run("lease", "list", "--json",
                                                   env=env2).stdout.splitlines()]
        by_id = {lease["id"]: lease for lease in leases}
        assert by_id[service]["keys"] == ["svc/a"] and by_id[service]["ttl"] == 600
        assert by_id[held.id]["keys"] == ["svc/held"] and by_id[held.id]["ttl"] == 2
        eph = run("get", "eph", env=env2, check=None)
        holders = [lease["id"] for lease in leases if lease["keys"] == ["eph"]]
        assert len(holders) == (1 if eph.returncode == 0 else 0), (eph.stdout, leases)
        # Nobody keeps `held` alive in the new cluster: it ends after its TTL, with its key.
        wait_for(lambda: run("get", "svc/held", env=env2, check=None).returncode == 1, 30,
                 "the restored lease nobody keeps alive to end")
        run("lease", "revoke", str(service), env=env2)
        assert run("get", "svc/a", env=env2, check=None).returncode == 1
        first, last = int(pairs[names[0]]), int(pairs[names[-1]])
        assert first - last in (0, 1), (first, last)  # one point in time of the writer
        # Each key's revisions came along: a put of "i" was its (i + 1)th, counted once
        # although the save read some of them in a page and again in the WATCH replay.
        for name, value in ((names[0], first), (names[-1], last)):
            got = json.loads(run("get", name, "--json", env=env2).stdout)
            assert got["version"] == value + 1, (name, got)
            assert got["create_revision"] < got["mod_revision"] <= saved["revision"]
        assert json.loads(run("put", "after", "x", "--json", env=env2).stdout)[
            "revision"] > saved["revision"]
        # A restore never touches a dir with data in it.
        p = run("snapshot", "restore", str(tmp_path / "b.rkv"), "--data-dir",
                str(fresh.root / "node1"), "--id", "1", "--voters", "1,2,3", env=env,
                check=4)
        assert "not empty" in p.stderr
        (tmp_path / "junk").write_bytes(b"not a backup")
        assert run("snapshot", "restore", str(tmp_path / "junk"), "--data-dir",
                   str(tmp_path / "d"), "--id", "1", "--voters", "1", env=env,
                   check=2).returncode == 2
    finally:
        fresh.close()


def test_a_client_key_reads_and_writes_but_may_not_change_membership(tmp_path, hand, env,
                                                                     keys):
    make_key(keys, "client-alice")
    alice = dict(env, RAFTKV_CREDENTIALS=str(keys / "client-alice.key_secret"))
    wait_leader(env)
    run("put", "a", "1", env=alice)
    assert run("member", "remove", "3", env=alice, check=6).returncode == 6


def test_lease_and_lock_verbs_on_a_hand_run_cluster(hand, env):
    wait_leader(env)
    lease = int(run("lease", "grant", "30", env=env).stdout)
    run("put", "svc/a", "up", "--lease", str(lease), env=env)
    info = json.loads(run("lease", "info", str(lease), "--json", env=env).stdout)
    assert info["keys"] == ["svc/a"] and info["ttl"] == 30
    token = run("lock", "jobs", "--", sys.executable, "-c",
                "import os; print(os.environ['RAFTKV_LOCK_TOKEN'])", env=env).stdout
    assert int(token) > lease
    run("lease", "revoke", str(lease), env=env)
    run("get", "svc/a", env=env, check=1)
