"""A core restarted in repairing mode after its storage cut a damaged log (protocol-aware
recovery, Alagappan et al., FAST '18): it never votes or campaigns and follows a leader
as a non-voting catch-up."""

from __future__ import annotations

import pytest

from raftkv.eventlog import describe
from raftkv.raft import (
    Config,
    Entry,
    EntryType,
    EventKind,
    HardState,
    Message,
    MsgType,
    Raft,
    Role,
    VoteRefusal,
)
from raftkv.raft.core import CAMPAIGN_TRANSFER
from tests.sim.cluster import Cluster, SafetyViolation

# Node 3's log before the damage: it had also stored and acknowledged (3, term 2) and
# (4, term 2); the storage cut the log after index 2 and the node raised its term 2 -> 3.
DAMAGED = [Entry(1, 1), Entry(1, 2)]
# The log of node 1, leader of term 4: its no-op of term 4 is at index 5.
LEADER_LOG = [Entry(1, 1), Entry(1, 2), Entry(2, 3), Entry(2, 4),
              Entry(4, 5, EntryType.NOOP)]


def repairing_core(**cfg: object) -> Raft:
    return Raft(Config(3, (1, 2, 3), seed=3, **cfg), hard_state=HardState(3, 0, 2),
                entries=list(DAMAGED), repairing=True)


def drain(core: Raft) -> list:
    """Persist and apply everything; returns every Ready."""
    out = []
    while core.has_ready():
        rd = core.ready()
        out.append(rd)
        core.advance(rd)
    return out


def events_of(readies: list) -> list:
    return [e for rd in readies for e in rd.events]


def append(term: int, prev: int, upto: int, commit: int) -> Message:
    """An append from node 1 carrying LEADER_LOG after `prev` up to `upto`."""
    return Message(MsgType.APP, 3, 1, term, log_term=LEADER_LOG[prev - 1].term, index=prev,
                   entries=LEADER_LOG[prev:upto], commit=commit)


# -- never votes, never campaigns -----------------------------------------------------

def test_repairing_node_refuses_votes_and_pre_votes_with_repairing():
    core = repairing_core()
    up_to_date = dict(log_term=9, index=9)  # a log no voter could call behind its own
    core.step(Message(MsgType.PRE_VOTE, 3, 1, 4, **up_to_date))
    core.step(Message(MsgType.VOTE, 3, 1, 4, **up_to_date))
    core.step(Message(MsgType.VOTE, 3, 2, 5, context=CAMPAIGN_TRANSFER, **up_to_date))
    readies = drain(core)
    resps = [m for rd in readies for m in rd.messages + rd.persisted_messages]
    assert [(m.type, m.to, m.reject, m.context) for m in resps] == [
        (MsgType.PRE_VOTE_RESP, 1, True, VoteRefusal.REPAIRING),
        (MsgType.VOTE_RESP, 1, True, VoteRefusal.REPAIRING),
        (MsgType.VOTE_RESP, 2, True, VoteRefusal.REPAIRING),
    ]
    assert core.vote == 0 and core.term == 5
    refused = events_of(readies)
    assert [(e.kind, e.refusal) for e in refused] == [
        (EventKind.VOTE_REFUSED, VoteRefusal.REPAIRING)] * 3
    assert all("repairing a damaged log" in e.reason for e in refused)
    assert "repairing a damaged log" in describe(refused[0])


@pytest.mark.parametrize("pre_vote", [True, False])
def test_repairing_node_never_campaigns_and_ignores_timeout_now(pre_vote):
    core = repairing_core(pre_vote=pre_vote)
    readies = []
    for _ in range(50 * core.cfg.election_tick):
        core.tick()
        readies += drain(core)
    core.step(Message(MsgType.HEARTBEAT, 3, 1, 3))
    core.step(Message(MsgType.TIMEOUT_NOW, 3, 1, 3))
    readies += drain(core)
    assert core.role == Role.FOLLOWER and core.term == 3 and core.repairing
    sent = {m.type for rd in readies for m in rd.messages + rd.persisted_messages}
    assert not sent & {MsgType.PRE_VOTE, MsgType.VOTE}
    assert not {e.kind for e in events_of(readies)} & {
        EventKind.PRE_VOTE_STARTED, EventKind.ELECTION_STARTED}


def test_repairing_node_refuses_rather_than_ignores_once_its_leader_is_quiet():
    """The leader lease (thesis §4.2.3) still lapses: candidates hear REPAIRING, not
    silence, so their lost elections can say why."""
    core = repairing_core()
    core.step(Message(MsgType.HEARTBEAT, 3, 1, 3))
    drain(core)
    for _ in range(3 * core.cfg.election_tick):
        core.tick()
    core.step(Message(MsgType.PRE_VOTE, 3, 2, 4, log_term=9, index=9))
    [resp] = core.ready().messages
    assert resp.reject and resp.context == VoteRefusal.REPAIRING


# -- in a cluster -----------------------------------------------------------------------

@pytest.mark.parametrize("pre_vote", [True, False])
def test_two_of_three_repairing_elect_no_leader_and_the_loser_says_why(pre_vote):
    c = Cluster(3, seed=5, pre_vote=pre_vote)
    c.elect(1)
    c.propose(1, "k", "v")
    c.deliver_all()
    c.damage(2, keep=1)
    c.damage(3, keep=1)
    c.run(100)
    assert c.leader() is None
    kind = EventKind.PRE_VOTE_LOST if pre_vote else EventKind.ELECTION_LOST
    lost = [e for e in c.nodes[1].events if e.kind == kind]
    assert lost
    assert lost[-1].refused == ((2, VoteRefusal.REPAIRING), (3, VoteRefusal.REPAIRING))
    text = describe(lost[-1])
    assert "refused by 2 (repairing a damaged log), 3 (repairing a damaged log)" in text
    assert "REPAIRING: node(s) 2,3" in text


@pytest.mark.parametrize("repairing", [True, False])
def test_a_damaged_voter_cannot_elect_a_leader_missing_what_it_acknowledged(repairing):
    """Why the node must not vote: X is committed by S1 and S3 only. S3 loses X to
    damage and S1 crashes. Had S3 voted, S2 (without X) would win and lose X."""
    c = Cluster(3, seed=9)
    c.elect(1)
    c.deliver_all()
    c.block(1, 2)
    index = c.propose(1, "x", "committed")
    c.deliver_all()
    assert c.nodes[1].core.log.committed == index
    c.crash(1)
    c.damage(3, keep=index - 1)
    if not repairing:
        c.nodes[3].disk.repairing = False  # an unaware node: restart as if whole
        c.crash(3)
        c.restart(3)
        with pytest.raises(SafetyViolation, match="leader completeness"):
            c.run(100)
        return
    c.heal()
    c.run(100)
    assert c.leader() is None  # S2 lacks X, S3 refuses: wait for S1
    c.restart(1)
    c.run_until(lambda: c.leader() == 1, 200)
