"""The node loop around the core (raftkv/node.py), driven by hand: its Node is built in a
temp dir on loopback, and its `run` loop does not run; tests call its methods."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from raftkv.node import Node, NodeConfig
from raftkv.raft import CampaignKind, InvariantViolation, Message, MsgType, Role
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
    core = lone.core
    core.campaign(CampaignKind.ELECTION)
    rd = core.ready()
    [own] = rd.persisted_messages
    assert (own.type, own.to, own.frm) == (MsgType.VOTE_RESP, 1, 1)
    assert core.role == Role.CANDIDATE  # not before the Ready is durable
    lone.storage.append(rd.entries, rd.hard_state)
    lone.storage.sync()
    sent_before = dict(lone.transport.stats)
    lone.send(rd.persisted_messages)
    assert core.role == Role.LEADER
    assert lone.transport.stats == sent_before  # stepped, not put on the wire
    core.advance(rd)


def test_a_lone_voter_leads_only_after_its_vote_is_durable(lone):
    lone.core.campaign(CampaignKind.ELECTION)
    synced = []
    real_sync = lone.storage.sync

    def sync() -> None:
        synced.append((lone.storage.hard_state.vote, lone.core.role))
        real_sync()

    lone.storage.sync = sync
    lone.process_ready()
    assert synced[0] == (1, Role.CANDIDATE)  # the vote's fsync came before leading
    assert lone.core.role == Role.LEADER
    assert lone.storage.hard_state.vote == 1


def test_a_stale_own_vote_is_ignored(lone):
    core = lone.core
    core.campaign(CampaignKind.ELECTION)
    lone.process_ready()
    assert core.role == Role.LEADER
    lone.send([Message(MsgType.VOTE_RESP, 1, 1, core.term - 1)])
    assert core.role == Role.LEADER


# -- a broken invariant stops the node; a peer's or client's error does not --------------

def replies(node: Node) -> list[tuple]:
    got: list[tuple] = []
    node.transport.reply = lambda ident, rid, code, value=None, hint=0: got.append(
        (rid, code, value))
    return got


def test_a_refused_transfer_is_answered(lone):
    lone.core.campaign(CampaignKind.ELECTION)
    lone.process_ready()
    got = replies(lone)
    lone.transfer(ClientRequest(7, ReqOp.TRANSFER, target=5))
    [(rid, code, why)] = got
    assert (rid, code) == (7, ReplyCode.BAD_REQUEST) and "not a voter" in why


def test_an_invariant_violation_is_not_turned_into_a_reply(lone, monkeypatch):
    lone.core.campaign(CampaignKind.ELECTION)
    lone.process_ready()
    got = replies(lone)

    def broken(target: int) -> None:
        raise InvariantViolation("node 2 needs index 101, below our log start 0")

    monkeypatch.setattr(lone.core, "transfer_leader", broken)
    with pytest.raises(InvariantViolation):
        lone.transfer(ClientRequest(7, ReqOp.TRANSFER, target=2))
    assert got == []
