"""The controller against real processes: three nodes and one controller on loopback."""

from __future__ import annotations

import signal
import threading

import msgpack
import pytest
import zmq

from harness import cluster_state
from harness.cluster_state import ClusterState
from harness.controller import Controller
from harness.launcher import wait_for
from harness.router import COUNTER_KEYS
from raftkv import Client
from raftkv.client import Unavailable
from raftkv.security import present
from raftkv.wire import (
    ClientRequest,
    ReplyCode,
    ReqOp,
    decode_replies,
    decode_reply,
    encode_request,
    encode_requests,
)
from tests.integration.controller_fixture import ControllerCluster

NODE_FIELDS = {
    "id", "address", "pid", "alive", "paused", "member", "role", "term", "last_index",
    "commit_index", "applied_index", "cpu_percent", "rss_bytes", "open_files", "uptime_s",
    "dropped_malformed", "partitioned_from", "exit_code",
    # for the dashboard (issue #9)
    "vote", "lead", "snapshot_index", "log_tail", "counters", "fsync_ms", "metrics_port",
    "repair", "kv",
}


@pytest.fixture
def cc(tmp_path):
    """Three nodes and a controller, killed by pid afterwards (restarted nodes too)."""
    c = ControllerCluster(tmp_path)
    try:
        c.start()
        yield c
    finally:
        c.close()


def followers(cc: ControllerCluster, leader: int) -> list[int]:
    return [n.id for n in cc.state.nodes if n.id != leader]


def leader_commit(cc: ControllerCluster) -> int:
    """The leader's commit index now, asked of the leader itself (the controller's view
    may be a poll old)."""
    leader = cc.wait_leader()
    reply = cc.call(encode_request(ClientRequest(1, ReqOp.STATUS)), 2.0,
                    cc.node_addresses[leader])
    assert reply is not None and reply.value["role"] == "leader", reply
    return reply.value["commit_index"]


def wait_caught_up(cc: ControllerCluster, node_id: int, timeout: float = 10.0) -> None:
    """`node_id` has applied everything the leader had committed when this was called."""
    target = leader_commit(cc)
    cc.wait_node(node_id, f"applied index reaches {target}",
                 lambda n: (n["applied_index"] or 0) >= target, timeout)


def test_put_and_get_through_the_controller(cc):
    cc.wait_leader()
    with Client(cc.address, timeout=10) as kv:
        kv.put("user:1", "alice")
        assert kv.get("user:1") == b"alice"
        assert kv.cas("user:1", "alice", "bob") is True
        assert kv.scan("user:") == [(b"user:1", b"bob")]
        assert kv.delete("user:1") is True
        assert kv.get("user:1") is None
        assert kv.get("absent", consistency="stale") is None
    assert cc.status()["controller"]["relayed"] >= 6


@pytest.fixture
def raw(cc):
    """A DEALER on the controller with the admin key, once key "k" holds "v"."""
    cc.wait_leader()
    with Client(cc.address, timeout=10) as kv:
        kv.put("k", "v")
    sock = cc.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    present(sock, cc.credentials)
    sock.connect(cc.address)
    try:
        yield sock
    finally:
        sock.close()


def gets_of_k(sock: zmq.Socket, n: int) -> int:
    """Take the replies to GETs of "k" numbered 1..n, however they are framed; checks
    each and returns how many frames carried them."""
    replies, frames = [], 0
    while len(replies) < n:
        assert sock.poll(10_000), f"{len(replies)} of {n} replies came"
        replies += decode_replies(sock.recv())
        frames += 1
    assert sorted(r.request_id for r in replies) == list(range(1, n + 1))
    assert {(r.code, r.value) for r in replies} == {(ReplyCode.OK, b"v")}
    return frames


def test_a_clients_requests_of_one_turn_reach_the_leader_as_one_batch(cc, raw):
    """What one client sent while the router was busy leaves for the leader as one REQS
    frame; the leader answers that route with REPS, which the router passes back
    unopened. Stopping the controller (SIGSTOP) makes "at once" sure."""
    leader = cc.wait_leader()
    cc.call(encode_request(ClientRequest(1, ReqOp.STATUS)))  # the controller is up
    cc.controller.send_signal(signal.SIGSTOP)
    try:
        for rid in range(1, 21):
            raw.send(encode_request(ClientRequest(rid, ReqOp.GET, key=b"k")))
    finally:
        cc.controller.send_signal(signal.SIGCONT)
    assert gets_of_k(raw, 20) < 20  # the leader's REPS, as it came
    assert cc.status()["controller"]["batches"] >= 1
    at_leader = cc.call(encode_request(ClientRequest(1, ReqOp.STATUS)), 2.0,
                        cc.node_addresses[leader])
    assert at_leader.value["transport"]["batches_in"] >= 1
    assert at_leader.value["transport"]["batches_out"] >= 1


def test_a_reqs_frame_of_plain_requests_is_forwarded_whole(cc, raw):
    """raftkv.Client batches toward the controller as toward nodes: a REQS frame of
    requests for the leader leaves as the one frame it came as, and the leader's REPS
    comes back unopened."""
    before = cc.status()["controller"]
    raw.send(encode_requests([encode_request(ClientRequest(rid, ReqOp.GET, key=b"k"))
                              for rid in range(1, 11)]))
    assert gets_of_k(raw, 10) < 10  # some came together, in a REPS frame
    after = cc.status()["controller"]
    assert after["forwarded"] - before["forwarded"] == 1
    assert after["requests"] - before["requests"] == 10 + 1  # and the STATUS that asked
    assert after["batches"] == before["batches"]  # not re-made: forwarded as it came


def test_a_reqs_frame_with_a_status_in_it_is_split(cc, raw):
    """A STATUS is the router's to answer, so a batch holding one is served request by
    request: the GETs still reach the leader, the STATUS is answered here."""
    raw.send(encode_requests([
        encode_request(ClientRequest(1, ReqOp.GET, key=b"k")),
        encode_request(ClientRequest(2, ReqOp.STATUS)),
        encode_request(ClientRequest(3, ReqOp.GET, key=b"k")),
    ]))
    replies = {}
    while len(replies) < 3:
        assert raw.poll(10_000), f"{len(replies)} of 3 replies came"
        replies.update((r.request_id, r) for r in decode_replies(raw.recv()))
    assert (replies[1].code, replies[1].value) == (ReplyCode.OK, b"v")
    assert (replies[3].code, replies[3].value) == (ReplyCode.OK, b"v")
    assert replies[2].code == ReplyCode.OK and "controller" in replies[2].value


def test_status_map_reports_every_node(cc):
    leader = cc.wait_leader()
    state = ClusterState.load(cc.root)
    wait_for(lambda: all(n["role"] for n in cc.status()["nodes"]), 5, "every node's role")
    st = cc.status()
    assert set(st) == {"leader", "term", "voters", "learners", "nodes", "controller"}
    assert st["leader"] == leader and st["term"] >= 1
    assert [n["id"] for n in st["nodes"]] == [1, 2, 3]
    for n in st["nodes"]:
        assert set(n) == NODE_FIELDS
        entry = state.node(n["id"])
        assert (n["address"], n["pid"]) == (entry.address, entry.pid)
        assert n["alive"] is True and n["paused"] is False
        assert n["role"] == ("leader" if n["id"] == leader else "follower")
        assert n["term"] == st["term"]
        assert n["cpu_percent"] is None or n["cpu_percent"] >= 0
        assert n["rss_bytes"] > 1_000_000 and n["open_files"] >= 1 and n["uptime_s"] > 0
        assert n["dropped_malformed"] == 0 and n["partitioned_from"] == []
        assert n["exit_code"] is None and n["repair"] is None
    assert set(st["controller"]) == {*COUNTER_KEYS, "commands_running", "uptime_s"}
    plain = cc.request(ReqOp.STATUS)  # a plain STATUS gets the same map
    assert plain.code == ReplyCode.OK and plain.value["leader"] == leader


def test_a_client_write_during_kill_leader_reaches_the_new_leader(cc):
    """The router forwards once; raftkv.Client retries (a NOT_LEADER with no hint while
    no leader is known, a request lost with the killed leader) until the new leader
    takes the write."""
    leader = cc.wait_leader()
    with Client(cc.address, timeout=10) as kv:
        kv.put("k", "before")
        killed = cc.command("kill-leader")
        assert killed.code == ReplyCode.OK
        assert killed.value["killed"] == leader and killed.value["term"] >= 1
        kv.put("k", "after")
        assert kv.get("k") == b"after"
    assert cc.wait_leader(exclude=leader) != leader
    assert cc.node(leader)["alive"] is False


def test_restart_brings_a_killed_follower_back_caught_up(cc):
    leader = cc.wait_leader()
    follower = followers(cc, leader)[0]
    assert cc.command("kill", follower).value == {"killed": follower}
    assert cc.command("kill", follower).value == {"not_running": follower}
    with Client(cc.address, timeout=10) as kv:
        for n in range(100):
            kv.put(f"k{n}", "v")
    restarted = cc.command("restart", follower)
    assert restarted.code == ReplyCode.OK
    pid = restarted.value["pid"]
    assert restarted.value == {"restarted": follower, "pid": pid}
    entry = ClusterState.load(cc.root).node(follower)
    assert entry.pid == pid and cluster_state.live_process(pid, entry.create_time)
    cc.wait_node(follower, "rejoins as a follower", lambda n: n["role"] == "follower")
    wait_caught_up(cc, follower)
    assert cc.command("restart", follower).value == {"already_running": follower}


def test_writes_continue_while_a_follower_is_paused(cc):
    leader = cc.wait_leader()
    follower = followers(cc, leader)[0]
    assert cc.command("pause", follower).value == {"paused": follower}
    cc.wait_node(follower, "paused", lambda n: n["paused"])
    with Client(cc.address, timeout=10) as kv:
        for n in range(50):
            kv.put(f"k{n}", "v")
        assert kv.get("k49") == b"v"
    assert cc.command("resume", follower).value == {"resumed": follower}
    cc.wait_node(follower, "resumed", lambda n: not n["paused"])
    wait_caught_up(cc, follower)


def test_a_request_at_a_paused_leader_is_forwarded_once(cc):
    """The router does not re-send: a write it passed to a leader that froze waits
    there, while raftkv.Client's own retry reaches the next leader. Once the old leader
    runs again its refusal comes back to the raw client as the node sent it."""
    leader = cc.wait_leader()
    session = cc.request(ReqOp.OPEN_SESSION)
    sock = cc.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    present(sock, cc.credentials)
    sock.connect(cc.address)
    try:
        assert cc.command("pause", leader).value == {"paused": leader}
        sock.send(encode_request(ClientRequest(
            1, ReqOp.PUT, client_id=session.value, seq=1, key=b"k", value=b"raw")))
        with Client(cc.address, timeout=10) as kv:
            kv.put("k", "v")  # retried by the client until a new leader takes it
        new_leader = cc.wait_leader(exclude=leader)
        sock.send(encode_request(ClientRequest(2, ReqOp.GET, key=b"k")))
        assert sock.poll(10_000)
        got = decode_reply(sock.recv())
        assert (got.request_id, got.code, got.value) == (2, ReplyCode.OK, b"v")
        assert not sock.poll(0)  # the PUT sits at the frozen node, sent there once
        assert cc.command("resume", leader).value == {"resumed": leader}
        assert sock.poll(10_000)
        refused = decode_reply(sock.recv())
        assert refused.request_id == 1
        assert refused.code in (ReplyCode.NOT_LEADER, ReplyCode.UNAVAILABLE), refused
    finally:
        sock.close()
    cc.wait_node(leader, "rejoins as a follower", lambda n: n["role"] == "follower")
    assert cc.wait_leader() == new_leader


def test_partitioned_leader_steps_down_and_the_majority_serves(cc):
    leader = cc.wait_leader()
    others = followers(cc, leader)
    reply = cc.command("partition", str(leader))
    assert reply.value == {"groups": [[leader], others]}
    with Client(cc.address, timeout=15) as kv:
        kv.put("during", "partition")
        assert kv.get("during") == b"partition"
    new_leader = cc.wait_leader(exclude=leader)
    assert new_leader in others
    # Cut off from a majority, the old leader stops leading (check quorum, §6.2).
    cc.wait_node(leader, "steps down", lambda n: n["role"] != "leader")
    assert cc.node(leader)["partitioned_from"] == others
    assert cc.node(others[0])["partitioned_from"] == [leader]
    assert cc.command("heal").value == {"healed": [1, 2, 3]}
    assert all(n["partitioned_from"] == [] for n in cc.status()["nodes"])
    wait_caught_up(cc, leader)


def test_partition_survives_a_restart_until_heal(cc):
    leader = cc.wait_leader()
    isolated = followers(cc, leader)[0]
    assert cc.command("partition", str(isolated)).code == ReplyCode.OK
    cc.command("kill", isolated)
    cc.command("restart", isolated)
    # The controller sends a node its FAULT before each STATUS poll, on one connection:
    # once the restarted node has answered a poll, its partition is back in force.
    cc.wait_node(isolated, "answers polls again", lambda n: n["role"] is not None)
    with Client(cc.address, timeout=10) as kv:
        kv.put("while", "isolated")
    assert cc.node(isolated)["applied_index"] < leader_commit(cc)
    assert cc.node(isolated)["partitioned_from"] == followers(cc, isolated)
    cc.command("heal")
    wait_caught_up(cc, isolated)


def test_transfer_leader_moves_leadership(cc):
    leader = cc.wait_leader()
    target = followers(cc, leader)[-1]
    reply = cc.command("transfer-leader", target)
    assert reply.code == ReplyCode.OK
    assert reply.value == {"transferring_to": target, "from": leader}
    wait_for(lambda: cc.status()["leader"] == target, 10, f"node {target} to lead")
    with Client(cc.address, timeout=10) as kv:
        kv.put("after", "transfer")


def test_bad_commands_get_a_clear_bad_request(cc):
    cases = {
        ("reboot",): "unknown command 'reboot'",
        ("kill", 9): "unknown node 9",
        ("pause", "x"): "'x' is not a node id",
        ("restart",): "takes one node id",
        ("heal", 1): "takes no arguments",
        ("partition", "1,2", "2"): "node 2 is in two groups",
        ("partition",): "takes groups of node ids",
        ("transfer-leader", 0): "unknown node 0",
    }
    for (name, *args), message in cases.items():
        reply = cc.command(name, *args)
        assert reply.code == ReplyCode.BAD_REQUEST, (name, args, reply)
        assert message in reply.value, (name, args, reply.value)
    # Malformed frames are dropped and counted; an unknown op is answered BAD_REQUEST.
    assert cc.call(b"\xc1garbage", timeout=0.3) is None
    unknown_op = cc.call(msgpack.packb([1, 2, 77, 99]))
    assert unknown_op.code == ReplyCode.BAD_REQUEST and "unknown op" in unknown_op.value
    st = cc.status()
    assert st["controller"]["malformed"] >= 1
    assert st["controller"]["bad_requests"] >= len(cases) + 1


def test_no_leader_known_is_answered_at_once_not_leader_with_no_hint(cc):
    leader = cc.wait_leader()
    for f in followers(cc, leader):
        cc.command("kill", f)
    wait_for(lambda: cc.status()["leader"] is None, 10, "the lone node to step down")
    reply = cc.command("kill-leader")
    assert (reply.code, reply.value) == (ReplyCode.UNAVAILABLE, "no leader to kill")
    # A refusal before the log: the client may count it as certainly not applied.
    refused = cc.request(ReqOp.GET, timeout=2.0, key=b"k")
    assert refused is not None and refused.code == ReplyCode.NOT_LEADER
    assert refused.leader_hint == 0
    assert cc.status()["controller"]["no_leader"] >= 1
    with Client(cc.address, timeout=1) as kv, pytest.raises(Unavailable):
        kv.put("k", "v")


def test_workers_outlive_the_controller_and_a_new_one_finds_the_leader(cc):
    cc.wait_leader()
    with Client(cc.address, timeout=10) as kv:
        kv.put("before", "1")
    cc.kill_controller()
    with Client(cc.node_addresses, timeout=10) as kv:
        assert kv.get("before") == b"1"
        kv.put("without", "controller")
    cc.start_controller()
    leader = cc.wait_leader()
    with Client(cc.address, timeout=10) as kv:
        assert kv.get("without") == b"controller"
    assert cc.node(leader)["role"] == "leader"


def test_sigterm_stops_the_controller(cc):
    cc.wait_leader()
    cc.controller.send_signal(signal.SIGTERM)
    assert cc.controller.wait(timeout=5) == 0


def test_clients_are_served_while_the_supervisor_runs_a_slow_command(tmp_path):
    """A command blocks the supervisor's thread only: puts through the router complete
    while one is running. The controller runs in this process, so a command of the
    test's own can hold the supervisor until the test lets it go."""
    cc = ControllerCluster(tmp_path)
    ctx = zmq.Context()
    gate, started = threading.Event(), threading.Event()

    def slow(_supervisor: object, args: tuple) -> dict:
        started.set()
        assert gate.wait(30)
        return {"slow": list(args)}

    runner = None
    try:
        cc.start_nodes()
        controller = Controller(ClusterState.load(cc.root), ctx)
        controller.supervisor.commands["slow"] = slow
        runner = threading.Thread(target=controller.run, name="controller")
        runner.start()
        cc.wait_leader()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        present(sock, cc.credentials)
        sock.connect(cc.address)
        sock.send(encode_request(ClientRequest(1, ReqOp.CONTROL, name="slow", args=(7,))))
        assert started.wait(10), "the supervisor never started the command"
        with Client(cc.address, timeout=10) as kv:
            for n in range(20):
                kv.put(f"k{n}", "v")
            assert kv.get("k19") == b"v"
        assert cc.status()["controller"]["commands_running"] == 1
        assert not sock.poll(0)  # still running
        gate.set()
        assert sock.poll(10_000)
        done = decode_reply(sock.recv())
        assert (done.code, done.value) == (ReplyCode.OK, {"slow": [7]})
        sock.close()
    finally:
        gate.set()
        if runner is not None:
            controller.stop()
            runner.join(10)
            controller.close()
        cc.close()
        ctx.destroy(linger=0)
