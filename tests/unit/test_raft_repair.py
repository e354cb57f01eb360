"""A core restarted in repairing mode after its storage cut a damaged log (protocol-aware
recovery, Alagappan et al., FAST '18): it never votes or campaigns, follows a leader as a
non-voting catch-up, and votes again only once it durably holds an entry that a leader of
a term >= its starting term committed in that term (§5.4.2)."""

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
    SnapshotMeta,
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


# -- the exit rule ----------------------------------------------------------------------

def test_append_of_the_leaders_term_below_its_own_term_commit_does_not_end_repair():
    core = repairing_core()
    # Term 4's no-op arrives, but the commit the leader sends (4) is an entry of term 2.
    core.step(append(4, 2, 5, commit=4))
    readies = drain(core)
    assert core.log.committed == 4 and core.log.stabled == 5
    assert core.repairing and not any(rd.repaired for rd in readies)
    # A heartbeat carrying the commit of the leader's own no-op ends it.
    core.step(Message(MsgType.HEARTBEAT, 3, 1, 4, commit=5))
    readies = drain(core)
    assert not core.repairing and core.status()["repairing"] is False
    assert [rd.repaired for rd in readies] == [True]
    [done] = [e for e in events_of(readies) if e.kind == EventKind.REPAIR_DONE]
    assert (done.term, done.peer) == (4, 1)
    assert "index 5 of term 4" in done.reason and "index 5 of term 4" in describe(done)


def test_follower_commit_is_capped_by_the_last_new_entry():
    """The leader committed its no-op (5), but this append carries only up to index 4:
    the commit the follower holds is 4, of term 2, which proves nothing."""
    core = repairing_core()
    core.step(append(4, 2, 4, commit=5))
    drain(core)
    assert core.log.committed == 4 and core.repairing


def test_repair_ends_only_once_the_own_term_commit_is_durable():
    core = repairing_core()
    core.step(append(4, 2, 5, commit=5))
    assert core.log.committed == 5 and core.log.stabled == 2
    assert core.repairing  # known committed, not yet on our disk
    rd = core.ready()
    assert [e.index for e in rd.entries] == [3, 4, 5] and not rd.repaired
    # The acknowledgement is truthful: it leaves after the fsync, and counts.
    assert [(m.type, m.index) for m in rd.persisted_messages] == [(MsgType.APP_RESP, 5)]
    assert core.repairing
    core.advance(rd)
    assert not core.repairing
    rd = core.ready()
    assert rd.repaired and [e.kind for e in rd.events] == [EventKind.REPAIR_DONE]
    core.advance(rd)
    assert not core.ready().repaired  # said once


def test_repair_through_a_snapshot_ends_once_the_snapshot_is_persisted():
    core = repairing_core()
    meta = SnapshotMeta(5, 4, (1, 2, 3))
    core.step(Message(MsgType.SNAP, 3, 1, 4, snapshot=meta))
    assert core.repairing
    rd = core.ready()
    assert rd.snapshot == meta and not rd.repaired
    core.advance(rd)
    assert not core.repairing and core.ready().repaired


def test_messages_of_a_leader_older_than_the_repair_term_do_not_end_repair():
    core = repairing_core()
    # Node 1, still leading term 2, commits (4, term 2), an entry of its own term.
    old_log = LEADER_LOG[:4]
    core.step(Message(MsgType.APP, 3, 1, 2, log_term=1, index=2, entries=old_log[2:],
                      commit=4))
    core.step(Message(MsgType.HEARTBEAT, 3, 1, 2, commit=4))
    readies = drain(core)
    assert core.repairing and core.log.last_index() == 2
    # Both were answered with our term, which makes the stale leader step down.
    resps = [m for rd in readies for m in rd.messages + rd.persisted_messages]
    assert [(m.type, m.term, m.reject) for m in resps] == [(MsgType.APP_RESP, 3, False)] * 2


def test_the_repair_point_survives_a_later_term_until_it_is_durable():
    core = repairing_core()
    core.step(append(4, 2, 5, commit=5))
    rd = core.ready()
    # A leader of term 6 is heard before the fsync; (5, term 4) stays committed.
    core.step(Message(MsgType.HEARTBEAT, 3, 2, 6, commit=0))
    assert core.repairing
    core.advance(rd)
    drain(core)
    assert not core.repairing and core.term == 6


# -- in a cluster -----------------------------------------------------------------------

def test_one_repairing_node_of_three_catches_up_and_votes_again():
    c = Cluster(3, seed=11)
    c.elect(1)
    for n in range(6):
        c.propose(1, f"k{n}", "v")
    c.run(2)  # followers learn the commit index from the next heartbeat
    assert c.nodes[3].core.log.committed == 7
    c.damage(3, keep=3)
    repair_term = c.nodes[3].core.repair_term
    assert c.nodes[3].core.repairing and repair_term == c.nodes[1].core.term + 1
    ended_at = None
    for _ in range(200):
        c.run(1)
        core = c.nodes[3].core
        if ended_at is None and not core.repairing:
            ended_at = core.repair_point
            index, term = ended_at
            lead = c.leader()
            # The entry that ended it: committed by a leader of its own term, at least the
            # repair term, and on node 3's disk.
            assert lead in (1, 2) and term >= repair_term
            assert c.checker.committed[index][0] == term
            assert any((e.index, e.term) == (index, term) for e in c.nodes[3].disk.entries)
            assert not c.nodes[3].disk.repairing  # the marker went with that Ready
            break
    assert ended_at is not None
    lead = c.leader()
    c.propose(lead, "after", "repair")
    c.run(3)
    assert c.nodes[3].core.log.committed == c.nodes[lead].core.log.committed > 7
    # Voting again: node 3 can now be elected.
    c.elect(3)


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
    c.run_until(lambda: c.leader() == 1 and not c.nodes[3].core.repairing, 200)
    assert c.nodes[3].core.log.term(index) == c.nodes[1].core.log.term(index)
