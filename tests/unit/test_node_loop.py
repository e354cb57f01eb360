"""The node loop around the core (raftkv/node.py), driven by hand: its Node is built in a
temp dir on loopback, and its `run` loop does not run; tests call its methods."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

import pytest

from raftkv.kv import encode_open_session
from raftkv.node import Node, NodeConfig, _FullCollections
from raftkv.raft import (
    CampaignKind,
    ConfChange,
    ConfOp,
    InvariantViolation,
    Message,
    MsgType,
    Raft,
    Role,
)
from raftkv.replica import Replica
from raftkv.wire import ClientRequest, ReplyCode, ReqOp


@pytest.fixture
def lone(tmp_path) -> Iterator[Node]:
    """Node 1, the cluster's only voter."""
    node = Node(NodeConfig(1, "tcp://127.0.0.1:0", {}, tmp_path / "n1"))
    try:
        yield node
    finally:
        node.close()


def test_send_steps_a_message_to_this_node_into_its_core(lone):
    core = lone.replica.core
    core.campaign(CampaignKind.ELECTION)
    rd = core.ready()
    [own] = rd.persisted_messages
    assert (own.type, own.to, own.frm) == (MsgType.VOTE_RESP, 1, 1)
    assert core.role == Role.CANDIDATE  # not before the Ready is durable
    lone.replica.storage.append(rd.entries, rd.hard_state)
    lone.replica.storage.sync()
    sent_before = dict(lone.transport.stats)
    lone.replica.send(rd.persisted_messages)
    assert core.role == Role.LEADER
    assert lone.transport.stats == sent_before  # stepped, not put on the wire
    core.advance(rd)


def test_a_lone_voter_leads_only_after_its_vote_is_durable(lone):
    lone.replica.core.campaign(CampaignKind.ELECTION)
    synced = []
    real_sync = lone.replica.storage.sync

    def sync() -> None:
        synced.append((lone.replica.storage.hard_state.vote, lone.replica.core.role))
        real_sync()

    lone.replica.storage.sync = sync
    lone.replica.process_ready()
    assert synced[0] == (1, Role.CANDIDATE)  # the vote's fsync came before leading
    assert lone.replica.core.role == Role.LEADER
    assert lone.replica.storage.hard_state.vote == 1


def test_a_stale_own_vote_is_ignored(lone):
    core = lone.replica.core
    core.campaign(CampaignKind.ELECTION)
    lone.replica.process_ready()
    assert core.role == Role.LEADER
    lone.replica.send([Message(MsgType.VOTE_RESP, 1, 1, core.term - 1)])
    assert core.role == Role.LEADER


# -- a broken invariant stops the node; a peer's or client's error does not --------------

def replies(node: Node) -> list[tuple]:
    got: list[tuple] = []
    node.transport.reply = lambda ident, rid, code, value=None, hint=0: got.append(
        (rid, code, value))
    return got


def test_a_refused_transfer_is_answered(lone):
    lone.replica.core.campaign(CampaignKind.ELECTION)
    lone.replica.process_ready()
    got = replies(lone)
    lone.replica.transfer(ClientRequest(7, ReqOp.TRANSFER, target=5))
    [(rid, code, why)] = got
    assert (rid, code) == (7, ReplyCode.BAD_REQUEST) and "not a voter" in why


def test_an_invariant_violation_is_not_turned_into_a_reply(lone, monkeypatch):
    lone.replica.core.campaign(CampaignKind.ELECTION)
    lone.replica.process_ready()
    got = replies(lone)

    def broken(target: int) -> None:
        raise InvariantViolation("node 2 needs index 101, below our log start 0")

    monkeypatch.setattr(lone.replica.core, "transfer_leader", broken)
    with pytest.raises(InvariantViolation):
        lone.replica.transfer(ClientRequest(7, ReqOp.TRANSFER, target=2))
    assert got == []


# -- storage belongs to the fsync thread while a Ready syncs ------------------------------

class OwnedStorage:
    """Storage as the loop sees it: touching it from the loop's thread while a Ready is
    syncing (the helper thread owns it then) fails the test."""

    def __init__(self, real: object, replica: Replica) -> None:
        self._real, self._replica = real, replica

    def __getattr__(self, name: str) -> object:
        if (self._replica.syncing is not None
                and threading.current_thread() is threading.main_thread()):
            raise AssertionError(f"storage.{name} touched while the fsync thread owns it")
        return getattr(self._real, name)


@pytest.fixture
def compacted(tmp_path) -> Iterator[Node]:
    """Node 1, sole voter and leader, its log compacted into a snapshot, with learner 2
    (nobody listens at its address)."""
    node = Node(NodeConfig(1, "tcp://127.0.0.1:0", {}, tmp_path / "n1", snapshot_entries=3,
                           snapshot_catch_up_entries=0))
    try:
        node.replica.core.campaign(CampaignKind.ELECTION)
        node.replica.process_ready()
        for _ in range(4):
            node.replica.core.propose(encode_open_session())
            node.replica.process_ready()
        wait_for_snapshot(node)
        assert node.replica.core.snapshot is not None
        node.replica.core.propose_conf_change(ConfChange(ConfOp.ADD_LEARNER, 2, "tcp://127.0.0.1:9"))
        node.replica.process_ready()
        assert 2 in node.replica.core.learners
        node.replica.storage = OwnedStorage(node.replica.storage, node.replica)
        yield node
    finally:
        node.replica.storage = getattr(node.replica.storage, "_real", node.replica.storage)
        node.close()


def wait_for_snapshot(node: Node) -> None:
    """Turn the replica until the snapshot its forked writer is writing is adopted."""
    deadline = time.monotonic() + 10
    while node.replica.snapshotting is not None:
        assert time.monotonic() < deadline, "the snapshot writer never finished"
        time.sleep(0.001)
        node.replica.process()


def start_async_sync(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next Ready a leader's overlapped fsync (input waiting: see process_ready)."""
    monkeypatch.setattr(node.transport, "pending", lambda: True)
    node.replica.core.propose(b"")
    node.replica.process_ready()
    assert node.replica.syncing is not None


def finish(node: Node) -> None:
    deadline = time.monotonic() + 10
    while not node.syncer.done():
        assert time.monotonic() < deadline, "the fsync thread never finished"
        time.sleep(0.001)
    node.replica.finish_sync()


def test_a_snapshot_to_send_waits_while_storage_is_syncing(compacted, monkeypatch):
    node = compacted
    start_async_sync(node, monkeypatch)
    # The learner says its log ends before ours starts: it needs our snapshot, and the
    # loop sends what the core has while the fsync runs (Node.run).
    core = node.replica.core
    core.step(Message(MsgType.APP_RESP, 1, 2, core.term, index=core.prs[2].next - 1,
                      reject=True, reject_hint=0))
    node.replica.send(core.take_messages())
    assert node.replica.counters["snapshots_sent"] == 0
    finish(node)
    assert node.replica.counters["snapshots_sent"] == 1


def test_status_while_storage_is_syncing_shows_the_last_stats_the_loop_took(
        compacted, monkeypatch):
    node = compacted
    before = node.replica.status()["storage"]
    start_async_sync(node, monkeypatch)
    during = node.replica.status()
    assert during["storage"]["fsyncs"] >= before["fsyncs"]
    assert during["repair"] is None
    finish(node)
    assert node.replica.status()["storage"]["fsyncs"] > before["fsyncs"]


# -- the clock: randomized election timeouts (§5.2) ----------------------------------------

def election_timeouts_ms(cfg: NodeConfig, draws: int = 2000) -> set[float]:
    """Every election timeout a node with `cfg` draws, in ms."""
    rc = cfg.raft_config()
    tick_ms = cfg.heartbeat_ms / rc.heartbeat_tick
    core = Raft(rc)
    out = set()
    for term in range(1, draws + 1):
        core.become_follower(term, 0)
        out.add(core.randomized_election_timeout * tick_ms)
    return out


def test_default_election_timeout_has_at_least_ten_values_in_300_to_600_ms(tmp_path):
    cfg = NodeConfig(1, "tcp://127.0.0.1:0", {}, tmp_path)
    got = election_timeouts_ms(cfg)
    assert len(got) >= 10  # 6 at a 50 ms tick: split votes were likely
    assert min(got) == 300 and max(got) < 600
    rc = cfg.raft_config()
    assert rc.heartbeat_tick * cfg.tick_ms() == cfg.heartbeat_ms == 50


@pytest.mark.parametrize(("heartbeat_ms", "election_ms"),
                         [(100, 300), (50, 1000), (10, 50), (50, 60), (1, 2)])
def test_election_timeout_has_at_least_ten_values_for_any_setting(tmp_path, heartbeat_ms,
                                                                   election_ms):
    cfg = NodeConfig(1, "tcp://127.0.0.1:0", {}, tmp_path, heartbeat_ms=heartbeat_ms,
                     election_ms=election_ms)
    got = election_timeouts_ms(cfg)
    assert len(got) >= 10
    assert election_ms - cfg.tick_ms() < min(got) <= election_ms
    assert max(got) < 2 * election_ms
    assert cfg.raft_config().heartbeat_tick * cfg.tick_ms() == heartbeat_ms


def test_full_collections_are_timed_for_the_slow_turn_warning():
    timer = _FullCollections()
    try:
        before = time.perf_counter()
        gc.collect(1)  # not a full collection: not counted
        assert timer.take(before) == 0
        gc.collect(2)
        assert timer.take(before) > 0 and timer.take(time.perf_counter()) == 0
    finally:
        timer.close()
    assert timer._callback not in gc.callbacks
