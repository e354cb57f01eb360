"""Membership changes on real processes (thesis §4.1-4.2): add-node, promote, remove-node
through the controller, as `raftkv add-node` / `remove-node` do them."""

from __future__ import annotations

import threading

import pytest
import zmq

from harness import cluster_state
from harness.cluster_state import ClusterState
from harness.launcher import wait_for
from harness.membership import add_node, remove_node
from raftkv import Client
from raftkv.client import Timeout, Unavailable
from raftkv.raft import ConfOp
from raftkv.wire import ClientRequest, ReplyCode, ReqOp, encode_request
from tests.integration.controller_fixture import ControllerCluster


@pytest.fixture
def cc(tmp_path):
    """Three nodes (snapshotting every 50 entries, keeping no entries below a snapshot)
    and a controller, killed by pid afterwards, added nodes too (they are recorded in
    cluster.json)."""
    c = ControllerCluster(tmp_path, extra=("--snapshot-entries", "50",
                                           "--snapshot-catch-up-entries", "0"))
    try:
        c.start()
        yield c
    finally:
        c.close()


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def node_status(cc: ControllerCluster, address: str) -> dict:
    reply = cc.call(encode_request(ClientRequest(1, ReqOp.STATUS)), 2.0, address)
    assert reply is not None and reply.code == ReplyCode.OK, reply
    return reply.value


def stale_get(cc: ControllerCluster, address: str, key: str) -> bytes | None:
    reply = cc.call(encode_request(ClientRequest(1, ReqOp.GET_STALE, key=key.encode())), 2.0,
                    address)
    assert reply is not None and reply.code == ReplyCode.OK, reply
    return reply.value


class Writer:
    """A client writing k0, k1, ... through the controller until stopped; every write
    must succeed (raftkv.Client retries through elections and redirects; the controller
    forwards each attempt once, and keeps forwarding while a membership command runs)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.done = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        try:
            with Client(self.address, timeout=20) as kv:
                while not self.stop.is_set():
                    kv.put(f"k{self.done}", f"v{self.done}")
                    self.done += 1
        except BaseException as e:  # reported by finish()
            self.error = e

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
        assert self.error is None, f"a write failed: {self.error!r}"


def test_grow_to_five_under_load_then_lose_two_originals_and_shrink_back(cc, ctx):
    cc.wait_leader()
    with Writer(cc.address) as w:
        wait_for(lambda: w.done >= 100, 20, "100 writes before the change")
        grown = [add_node(ctx, cc.address, timeout=30)["added"] for _ in range(2)]
        assert grown == [4, 5]
        wait_for(lambda: (cc.status()["voters"], cc.status()["learners"]) ==
                 ([1, 2, 3, 4, 5], []), 5, "the controller to report five voters")
        at_five = w.done
        wait_for(lambda: w.done >= at_five + 100, 20, "100 writes with five voters")
        # Two of the original three die: three of five voters remain, a majority.
        cc.command("kill", 1)
        cc.command("kill", 2)
        after_kill = w.done
        wait_for(lambda: w.done >= after_kill + 100, 30, "100 writes with two voters dead")
        for dead in (1, 2):
            removed = remove_node(ctx, cc.address, dead)
            assert removed["removed"] == dead and removed["stopped"] is False
        assert removed["voters"] == [3, 4, 5]
        shrunk = w.done
        wait_for(lambda: w.done >= shrunk + 100, 20, "100 writes after shrinking back")
    # The new members hold every write, though the log was compacted meanwhile (they
    # were brought up by snapshot and log).
    state = ClusterState.load(cc.root)
    assert sorted(n.id for n in state.nodes) == [3, 4, 5]
    last = f"k{w.done - 1}"
    for n in state.nodes:
        wait_for(lambda n=n: stale_get(cc, n.address, last) == f"v{w.done - 1}".encode(),
                 10, f"node {n.id} to apply the last write")
        assert stale_get(cc, n.address, "k0") == b"v0"
    for new in (4, 5):  # they joined after the log head was compacted
        assert node_status(cc, state.node(new).address)["counters"]["snapshots_installed"] >= 1
    # Every remaining member's command line names exactly the other members.
    for n in state.nodes:
        peers = {int(a.split("=")[0]) for a in n.argv[n.argv.index("node"):]
                 if "=tcp://" in a}
        assert peers == {3, 4, 5} - {n.id}


def test_removing_the_leader_hands_leadership_over_first(cc, ctx):
    leader = cc.wait_leader()
    term = cc.status()["term"]
    removed = remove_node(ctx, cc.address, leader)
    assert removed["removed"] == leader and removed["stopped"] is True
    assert len(removed["voters"]) == 2 and leader not in removed["voters"]
    new = cc.wait_leader(exclude=leader)
    # A transfer is one election, not a timeout's worth of them.
    assert cc.status()["term"] == term + 1
    assert leader not in [n.id for n in ClusterState.load(cc.root).nodes]
    with Client(cc.address, timeout=10) as kv:
        kv.put("after", "removal")
        assert kv.get("after") == b"removal"
    assert new != leader


def test_a_learner_catches_up_by_snapshot_and_counts_in_no_quorum(cc, ctx):
    cc.wait_leader()
    with Client(cc.address, timeout=10) as kv:
        for i in range(120):  # past --snapshot-entries 50: the log head is compacted
            kv.put(f"k{i}", f"v{i}")
    added = add_node(ctx, cc.address, promote=False)
    node = added["added"]
    assert added["learners"] == [node] and node not in added["voters"]
    address = added["address"]
    wait_for(lambda: stale_get(cc, address, "k119") == b"v119", 15, "the learner to catch up")
    st = node_status(cc, address)
    assert st["counters"]["snapshots_installed"] >= 1
    assert st["learners"] == [node] and st["role"] == "follower"
    # Stopping two voters of three stops commits though the learner is up: it counts in
    # no quorum.
    cc.command("kill", 1)
    cc.command("kill", 2)
    with Client(cc.address, timeout=1.5) as kv, pytest.raises((Timeout, Unavailable)):
        kv.put("no", "quorum")


def test_bad_changes_are_refused_with_a_reason(cc):
    cc.wait_leader()
    reply = cc.command("promote", 2)
    assert reply.code == ReplyCode.OK, reply  # already a voter: in force, OK
    assert reply.value["voters"] == [1, 2, 3]
    reply = cc.command("remove-node", 9)
    assert reply.code == ReplyCode.BAD_REQUEST and "unknown node 9" in reply.value
    reply = cc.command("add-node", 2)
    assert reply.code == ReplyCode.BAD_REQUEST and "already exists" in reply.value
    # Straight to the leader: promoting a node that is not a learner makes no sense.
    leader = cc.wait_leader()
    reply = cc.call(encode_request(ClientRequest(1, ReqOp.CONF_CHANGE,
                                                 conf_op=int(ConfOp.PROMOTE), target=7)),
                    5.0, cc.node_addresses[leader])
    assert reply.code == ReplyCode.BAD_REQUEST and "not a learner" in reply.value


def test_a_restarted_member_learns_added_members_from_its_own_state(cc, ctx):
    """A node started with the old peer list (no --peer for the added node) still
    reaches it: the address is in its log, and after compaction in its snapshot."""
    cc.wait_leader()
    state = ClusterState.load(cc.root)
    old_argv = list(state.node(2).argv)
    added = add_node(ctx, cc.address)["added"]
    with Client(cc.address, timeout=10) as kv:
        for i in range(120):  # compacts the ADD_LEARNER entry into a snapshot everywhere
            kv.put(f"k{i}", f"v{i}")
    cc.command("kill", 2)
    assert not any(f"{added}=tcp" in a for a in old_argv)
    cc.procs.append(cluster_state.spawn(old_argv, cc.root / "logs/node2-old-argv.log",
                                        detach=False))
    address = state.node(2).address
    st = wait_for(lambda: (lambda s: s if s["applied_index"] > 120 else None)(
        node_status(cc, address)), 15, "node 2 to catch up")
    assert str(added) in st["peers"]
    assert st["voters"] == [1, 2, 3, added]


def test_a_node_behind_the_configuration_still_answers_new_members(cc, ctx):
    """Node 3 misses the entries that add nodes 4 and 5, then the two old members die:
    3, 4 and 5 are a majority of five only if 3 answers 4 and 5, whose addresses it has
    never seen in its log (§4.1: servers answer servers outside their configuration).
    The controller tells it where they are."""
    cc.wait_leader()
    assert cc.command("partition", "3").code == ReplyCode.OK
    for _ in range(2):
        add_node(ctx, cc.address, timeout=30)
    wait_for(lambda: cc.status()["voters"] == [1, 2, 3, 4, 5], 5, "five voters")
    assert 4 not in node_status(cc, cc.node_addresses[3])["voters"]
    cc.command("kill", 1)
    cc.command("kill", 2)
    cc.command("heal")
    leader = cc.wait_leader(timeout=20, exclude=None)
    assert leader in (3, 4, 5)
    with Client(cc.address, timeout=15) as kv:
        kv.put("after", "two of five died")
    wait_for(lambda: node_status(cc, cc.node_addresses[3])["voters"] == [1, 2, 3, 4, 5], 10,
             "node 3 to catch up with the configuration")


def test_a_removed_node_left_running_does_not_disturb_the_cluster(cc):
    leader = cc.wait_leader()
    victim = next(i for i in (1, 2, 3) if i != leader)
    term = cc.status()["term"]
    # Removed straight at the leader, so the controller does not stop its process.
    reply = cc.call(encode_request(ClientRequest(1, ReqOp.CONF_CHANGE,
                                                 conf_op=int(ConfOp.REMOVE), target=victim)),
                    5.0, cc.node_addresses[leader])
    assert reply.code == ReplyCode.OK and victim not in reply.value["voters"]
    # The removed node hears from no leader, times out and campaigns (pre-vote); the
    # members hear a leader, so they refuse. Wait until it has tried several times.
    entry = ClusterState.load(cc.root).node(victim)
    assert cluster_state.live_process(entry.pid, entry.create_time) is not None
    log = cc.root / entry.log
    wait_for(lambda: log.read_text().count("pre_vote_started") >= 3, 20,
             "the removed node to campaign three times")
    assert node_status(cc, cc.node_addresses[leader])["term"] == term
    assert node_status(cc, cc.node_addresses[leader])["role"] == "leader"
    with Client(cc.address, timeout=10) as kv:
        kv.put("still", "here")
