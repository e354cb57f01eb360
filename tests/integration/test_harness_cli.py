"""End to end through `raftkv` itself: up, data verbs, faults, down, and every exit code."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request

import pytest

from harness.cluster_state import REPO, ClusterState, live_process, signal_process
from harness.launcher import free_base_port, port_in_use, wait_for
from raftkv import Client, Compare, Get, Put
from tests.lines import line_within


class CLI:
    def __init__(self, cluster_dir, base_port: int) -> None:
        self.dir = cluster_dir
        self.base_port = base_port
        self.env = dict(os.environ, RAFTKV_DIR=str(cluster_dir), PYTHONPATH=str(REPO))

    def __call__(self, *args: str, check: int | None = 0, timeout: float = 60,
                 stdin: str | None = None):
        p = subprocess.run([sys.executable, "-m", "harness.cli", *args], env=self.env,
                           cwd=REPO, capture_output=True, text=True, timeout=timeout,
                           input=stdin)
        if check is not None:
            assert p.returncode == check, (
                f"raftkv {' '.join(args)} exited {p.returncode}, want {check}\n"
                f"stdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def status(self) -> dict:
        return json.loads(self("status", "--json").stdout)

    def pids(self) -> list[tuple[int, float]]:
        state = ClusterState.load(self.dir)
        if state is None:
            return []
        return [(e.pid, e.create_time) for e in [state.controller, *state.nodes] if e.pid]


@pytest.fixture
def cli(tmp_path):
    c = CLI(tmp_path / "cluster", free_base_port(3))
    started: set[tuple[int, float]] = set()
    try:
        yield c
    finally:
        started.update(c.pids())
        c("down", "--grace", "2", check=None)
        for pid, created in started:  # whatever down missed, by pid and create time only
            signal_process(pid, created, signal.SIGKILL)


def up(cli: CLI, *extra: str, check: int | None = 0):
    return cli("up", "--base-port", str(cli.base_port), *extra, check=check)


def test_up_kill_leader_restart_down_up_keeps_the_data(cli):
    p = up(cli)
    assert "leader:" in p.stdout
    assert "already up" in up(cli).stdout  # idempotent
    again = json.loads(up(cli, "--json").stdout)
    assert again["started"] is False and again["leader"] is not None
    for n in range(20):
        cli("put", f"k{n}", f"v{n}")
    assert cli("get", "k7").stdout == "v7\n"
    first = cli.status()
    p = cli("kill-leader", "--timeout", "5")
    assert "is the new leader" in p.stdout
    st = cli.status()
    assert st["leader"] not in (None, first["leader"])
    assert cli("get", "k19").stdout == "v19\n"
    back = json.loads(cli("restart", str(first["leader"]), "--json").stdout)
    assert back["restarted"] == first["leader"] and back["role"] in ("follower", "candidate")
    target = next(n for n in st["nodes"] if n["id"] == st["leader"])["commit_index"]

    def old_leader_caught_up() -> bool:
        n = next(n for n in cli.status()["nodes"] if n["id"] == first["leader"])
        return n["alive"] and n["role"] == "follower" and (n["applied_index"] or 0) >= target

    wait_for(old_leader_caught_up, 15, "the old leader to rejoin as a follower and catch up")
    pids = cli.pids()
    assert "stopped" in cli("down").stdout
    assert all(live_process(pid, created) is None for pid, created in pids)
    assert not any(port_in_use(f"tcp://127.0.0.1:{cli.base_port + i}") for i in range(4))
    assert cli("down").stdout.strip() == "nothing was running"  # idempotent
    up(cli)
    assert cli("get", "k0").stdout == "v0\n"
    assert cli("get", "k19").stdout == "v19\n"
    # The verbs of any deployment, on a harness dir: they ask the nodes of cluster.json.
    assert [r["id"] for r in json.loads(cli("endpoint", "status", "--json").stdout)] == [
        1, 2, 3]
    wait_for(lambda: cli("endpoint", "health", check=None).returncode == 0, 10,
             "every endpoint healthy")
    members = json.loads(cli("member", "list", "--json").stdout)["members"]
    assert [(m["id"], m["member"]) for m in members] == [(1, "voter"), (2, "voter"),
                                                         (3, "voter")]
    saved = json.loads(cli("snapshot", "save", str(cli.dir.parent / "b.rkv"), "--json").stdout)
    assert saved["keys"] == 20


def test_partitioned_leader_steps_down_and_the_majority_serves(cli):
    up(cli)
    cli("put", "before", "1")
    leader = cli.status()["leader"]
    others = [i for i in (1, 2, 3) if i != leader]
    assert cli("partition", str(leader), ",".join(map(str, others))).stdout == (
        f"partitioned: {leader} | {','.join(map(str, others))}\n")
    # The isolated leader takes the write, then steps down with it pending: only a write
    # in a session may be resent to the new leader (without, it would exit 7, unknown).
    cli("put", "during", "2", "--timeout", "10", "--exactly-once")
    wait_for(lambda: next(n for n in cli.status()["nodes"] if n["id"] == leader)["role"]
             != "leader", 10, "the isolated leader to step down")
    assert cli.status()["leader"] in others
    assert json.loads(cli("heal", "--json").stdout) == {"healed": [1, 2, 3]}
    assert cli("get", "during").stdout == "2\n"
    killed = json.loads(cli("kill-leader", "--json").stdout)  # one object, on stdout
    assert killed["leader"] != killed["killed"] and killed["leader_term"] > killed["term"]
    assert json.loads(cli("kill", str(killed["killed"]), "--json").stdout) == {
        "not_running": killed["killed"]}


def test_a_one_shot_write_is_one_log_entry_and_a_session_adds_one(cli):
    up(cli)
    cli("put", "warm", "0")  # the leader's first-term entry is behind us

    leader = cli.status()["leader"]
    port = next(n.metrics_port for n in ClusterState.load(cli.dir).nodes if n.id == leader)

    def leader_last_index() -> int:
        # The node's own /metrics, read live: the controller's status is its last poll.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return int(float(re.search(r"^raftkv_last_index (\S+)$", text, re.M).group(1)))

    before = leader_last_index()
    cli("put", "k", "1")
    assert cli("cas", "k", "1", "2").stdout.strip() == "SWAPPED"
    cli("del", "k")
    assert leader_last_index() == before + 3
    cli("put", "k", "3", "--exactly-once")  # OPEN_SESSION, then the PUT
    assert leader_last_index() == before + 5
    assert cli.status()["leader"] == leader  # no election added an entry meanwhile
    assert cli("get", "k").stdout == "3\n"


@pytest.mark.parametrize("state", ["memory", "lmdb"])
def test_revisions_and_a_transaction_hold_across_a_leader_kill(cli, state):
    up(cli, "--state", state)
    first = json.loads(cli("put", "cfg", "v1", "--json").stdout)["revision"]
    assert json.loads(cli("get", "cfg", "--json").stdout) == {
        "key": "cfg", "found": True, "value": "v1", "create_revision": first,
        "mod_revision": first, "version": 1}
    with Client(ClusterState.load(cli.dir).controller.address, timeout=10,
                credentials=cli.dir) as kv:
        second = kv.put("cfg", "v2")
        r = kv.txn([Compare.mod("cfg") == second], [Put("cfg", "v3"), Put("other", "x")],
                   [Get("cfg")])
    assert second > first and r.succeeded and r.results[0] == r.results[1] > second
    cli("kill-leader", "--timeout", "5")
    assert json.loads(cli("get", "cfg", "--json").stdout) == {  # as the new leader has it
        "key": "cfg", "found": True, "value": "v3", "create_revision": first,
        "mod_revision": r.results[0], "version": 3}
    p = cli("cas", "cfg", "", "v4", "--mod-revision", str(second), check=1)
    assert p.stdout.strip() == "NOT SWAPPED"
    assert cli("cas", "cfg", "", "v4", "--mod-revision", str(r.results[0])).stdout.strip() \
        == "SWAPPED"
    assert cli("get", "cfg").stdout == "v4\n"
    cli("put", "multi", "-", stdin="two\nlines\n")  # -: the value is stdin, as it is
    assert cli("get", "multi").stdout == "two\nlines\n\n"
    for key in ("p1", "p2", "p3"):
        cli("put", key, key.upper())
    assert cli("scan", "p", "--all", "--limit", "2").stdout == "p1\tP1\np2\tP2\np3\tP3\n"
    assert cli("scan", "p", "--start", "p2").stdout == "p2\tP2\np3\tP3\n"
    out = cli("watch", "p", "--prefix", "--rev", str(first), "--count", "3").stdout
    assert [line.split("\t")[1:] for line in out.splitlines()] == [
        ["PUT", "p1", "P1"], ["PUT", "p2", "P2"], ["PUT", "p3", "P3"]]
    events = cli("watch", "cfg", "--rev", str(first), "--count", "4", "--json").stdout
    assert [json.loads(line)["value"] for line in events.splitlines()] == [
        "v1", "v2", "v3", "v4"]


def test_a_watch_sees_every_write_once_and_in_order_across_a_leader_kill(cli):
    up(cli)
    address = ClusterState.load(cli.dir).controller.address
    seen: list[tuple[int, str, bytes | None]] = []

    def watcher(start: int) -> None:
        with Client(address, timeout=10, credentials=cli.dir) as kv:
            for event in kv.watch("w/", prefix=True, start_revision=start, wait=0.5):
                seen.append((event.revision, event.type, event.value))
                if event.value == b"end":
                    return

    with Client(address, timeout=10, credentials=cli.dir) as kv:
        revisions = [kv.put("w/0", "0")]
        consumer = threading.Thread(target=watcher, args=(revisions[0],), daemon=True)
        consumer.start()
        for i in range(1, 30):
            revisions.append(kv.put(f"w/{i % 7}", str(i)))
            if i == 15:
                cli("kill-leader", "--timeout", "5")
        kv.delete("w/1")
        revisions.append(kv.put("w/end", "end"))
    consumer.join(timeout=60)
    assert not consumer.is_alive(), f"the watch stopped short at {seen[-1:]}"
    puts = [(r, v) for r, kind, v in seen if kind == "put"]
    assert [r for r, _ in puts] == revisions  # each once, in order: none missed
    assert [v for _, v in puts] == [b"0", *(str(i).encode() for i in range(1, 30)), b"end"]
    assert [kind for _, kind, _ in seen].count("delete") == 1


def test_paused_follower_does_not_stop_writes(cli):
    up(cli)
    leader = cli.status()["leader"]
    follower = next(i for i in (1, 2, 3) if i != leader)
    cli("pause", str(follower))
    for n in range(10):
        cli("put", f"p{n}", "x", "--timeout", "5")
    cli("resume", str(follower))
    assert cli("get", "p9").stdout == "x\n"


def test_exit_codes(cli):
    assert cli("get", "k", check=3).stderr.startswith("raftkv: no cluster in")
    up(cli)
    assert "key not found" in cli("get", "missing", check=1).stderr
    assert cli("del", "missing", check=1).stdout.strip() == "NOT FOUND"
    cli("put", "k", "a")
    assert cli("cas", "k", "zzz", "b", check=1).stdout.strip() == "NOT SWAPPED"
    assert cli("cas", "k", "a", "b").stdout.strip() == "SWAPPED"
    assert json.loads(cli("del", "k", "--json").stdout) == {"result": "OK"}
    assert "Usage" in cli("put", "only-a-key", check=2).stderr
    assert "unknown node 99" in cli("kill", "99", check=2).stderr
    # The controller gone: data verbs say the cluster is unavailable.
    state = ClusterState.load(cli.dir)
    signal_process(state.controller.pid, state.controller.create_time, signal.SIGKILL)
    wait_for(lambda: live_process(state.controller.pid, state.controller.create_time) is None,
             5, "the controller to die")
    assert cli("get", "k", "--timeout", "1", check=3).returncode == 3
    up(cli)  # restarts the missing controller, which finds the leader again
    cli("put", "k", "back")


def test_add_node_and_remove_node_grow_and_shrink_the_cluster(cli):
    up(cli)
    cli("put", "k", "v")
    out = cli("add-node").stdout
    assert "node 4 started" in out and "promoted to voter" in out, out
    wait_for(lambda: [n["member"] for n in cli.status()["nodes"]] == ["voter"] * 4, 10,
             "four voters in status")
    assert cli("status").stdout.splitlines()[1].split()[:5] == [
        "ID", "ADDRESS", "PID", "ALIVE", "MEMBER"]
    learner = json.loads(cli("add-node", "--learner", "--json").stdout)
    assert learner["added"] == 5 and learner["learners"] == [5]
    assert "unknown node 9" in cli("remove-node", "9", check=2).stderr
    leader = cli.status()["leader"]
    out = cli("remove-node", str(leader)).stdout
    assert f"node {leader} leads: handing leadership" in out, out
    removed = json.loads(cli("remove-node", "5", "--json").stdout)
    assert removed["learners"] == [] and removed["stopped"] is True
    assert sorted(n["id"] for n in cli.status()["nodes"]) == sorted({1, 2, 3, 4} - {leader})
    assert cli("get", "k").stdout.strip() == "v"
    # down and up bring back exactly the members, with their data.
    cli("down")
    up(cli)
    assert cli("get", "k").stdout.strip() == "v"
    assert len(cli.status()["nodes"]) == 3


def test_up_names_a_port_in_use(cli):
    with socket.socket() as s:
        s.bind(("127.0.0.1", cli.base_port + 2))
        s.listen()
        p = cli("up", "--base-port", str(cli.base_port), check=3)
    assert f"port {cli.base_port + 2}" in p.stderr


def test_up_reports_a_node_that_exits_at_start_with_its_log(cli):
    up(cli)
    cli("down")
    (cli.dir / "data" / "node1" / "FORMAT").write_text("raftkv-storage 99\n")
    p = up(cli, check=4)  # 4: its data dir
    assert "node 1" in p.stderr and "exited at start with code 4" in p.stderr
    assert "node1.log" in p.stderr and "raftkv-storage 99" in p.stderr


def test_a_node_whose_data_dir_vanished_refuses_to_start_and_the_rest_serves(cli):
    up(cli)
    state = ClusterState.load(cli.dir)
    for n in state.nodes:  # `up` saw them all up: no start from now on may create a dir
        assert "--new" not in n.argv
        assert n.argv[n.argv.index("--cluster-id") + 1] == f"{state.cluster_id:x}"
    cli("put", "k", "before")
    gone = next(i for i in (1, 2, 3) if i != cli.status()["leader"])
    data_dir = cli.dir / "data" / f"node{gone}"
    cli("kill", str(gone))
    shutil.rmtree(data_dir)
    for p in (cli("restart", str(gone), check=4), up(cli, check=4)):
        assert f"node {gone} (" in p.stderr and "exited at start with code 4" in p.stderr
        assert f"data dir {data_dir} is missing or empty" in p.stderr
        assert "remove-node" in p.stderr  # how to recover
    assert not data_dir.exists()  # it came back neither empty nor at all
    cli("put", "k", "after")  # two of three serve
    assert cli("get", "k").stdout == "after\n"


def test_bin_raftkv_runs_its_own_checkout_whatever_the_current_directory_holds(tmp_path):
    """Run from another checkout's directory, `python -m` put that directory first on
    sys.path: its harness started the cluster, and its nodes ran its code (a benchmark
    of this build measured the build before it)."""
    decoy = tmp_path / "harness"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("")
    (decoy / "cli.py").write_text("print('DECOY')\n")
    p = subprocess.run([str(REPO / "bin" / "raftkv"), "--version"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "DECOY" not in p.stdout, p.stdout + p.stderr
    assert "raftkv, version" in p.stdout


def test_up_gives_a_new_cluster_its_quota_and_put_past_it_exits_5(cli):
    up(cli, "--quota-bytes", str(1 << 20))
    value = "x" * (100 << 10)
    with Client(ClusterState.load(cli.dir).controller.address, timeout=10,
                credentials=cli.dir) as kv:
        for n in range(10):  # 1 MiB holds ten 100 KiB values and their per-key count
            kv.put(f"k{n}", value)
    p = cli("put", "k10", value, check=None)
    assert p.returncode == 5 and "quota of 1,048,576" in p.stderr, p.stderr
    cli("del", "k0")
    cli("put", "k10", value)  # a delete made room
    cli("down")
    up(cli, "--quota-bytes", str(8 << 20))  # an existing cluster keeps its own quota
    assert cli("put", "more", value, check=None).returncode == 5


def test_lease_lock_and_elect_verbs(cli):
    up(cli)
    lease = int(cli("lease", "grant", "30").stdout)
    cli("put", "svc/a", "up", "--lease", str(lease))
    info = json.loads(cli("lease", "info", str(lease), "--json").stdout)
    assert info["keys"] == ["svc/a"] and info["ttl"] == 30 and 0 < info["remaining"] <= 30
    assert "kept alive" in cli("lease", "keepalive", str(lease), "--once").stdout
    assert cli("lease", "list").stdout.startswith(f"lease {lease}: ttl 30s, ")
    cli("lease", "revoke", str(lease))
    cli("get", "svc/a", check=1)
    cli("lease", "revoke", str(lease), check=1)  # gone already
    cli("put", "svc/b", "x", "--lease", str(lease), check=1)
    cli("lease", "info", str(lease), check=1)
    cli("lease", "keepalive", str(lease), "--once", check=1)

    base = [sys.executable, "-m", "harness.cli"]
    # The holder's COMMAND holds the lock until the test closes its stdin.
    hold = subprocess.Popen([*base, "lock", "nightly", "--", sys.executable, "-c",
                             "import os, sys; print(os.environ['RAFTKV_LOCK_TOKEN'], "
                             "flush=True); sys.stdin.readline()"],
                            env=cli.env, cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        token = int(line_within(hold.stdout, 30, "the holder's token"))
        assert token > lease
        cli("lock", "nightly", "--wait", "0.3", "--", "true", check=1)  # held by the other
        hold.stdin.close()
        assert hold.wait(timeout=30) == 0
        again = cli("lock", "nightly", "--wait", "10", "--", sys.executable, "-c",
                    "import os, sys; t = int(os.environ['RAFTKV_LOCK_TOKEN']); "
                    "print(t); sys.exit(t % 7)", check=None)
        assert int(again.stdout) > token  # a later holder's token is larger
        assert again.returncode == int(again.stdout) % 7  # COMMAND's own code
    finally:
        hold.kill()
        hold.wait()

    leader = subprocess.Popen([*base, "elect", "sched", "host-a", "--json"], env=cli.env,
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    listen = subprocess.Popen([*base, "elect", "sched", "--listen", "--json"], env=cli.env,
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(line_within(leader.stdout, 30, "the election"))["value"] == "host-a"
        first = json.loads(line_within(listen.stdout, 30, "the listener's first leader"))
        if first["leader"] is None:  # the listener started before the candidate won
            first = json.loads(line_within(listen.stdout, 30, "host-a's election"))
        assert first["leader"] == "host-a" and first["revision"] > 0
        leader.send_signal(signal.SIGTERM)  # resigns on the way out
        assert leader.wait(timeout=30) == 0
        assert json.loads(line_within(listen.stdout, 30, "the resignation"))["leader"] is None
    finally:
        for p in (leader, listen):
            p.kill()
            p.wait()
    cli("elect", "sched", check=2)  # neither VALUE nor --listen
