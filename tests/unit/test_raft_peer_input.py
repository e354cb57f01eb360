"""A buggy peer's message never trips the core (issue 17): a message that, taken, would
break one of the core's invariants is dropped and counted in `Raft.dropped` (STATUS shows
it, and the replica's `dropped_invalid` counter sums it), never raised.

Each message here is well-formed: raftkv.wire's decoder lets it through, and the
transport has checked who sent it. Cores are driven directly, Readies persisted at once.
"""

from __future__ import annotations

import pytest

from raftkv.raft import (
    CampaignKind,
    Config,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    Raft,
    Role,
    SnapshotMeta,
    decode_change,
)
from raftkv.wire import MAX_UINT64, decode_message, encode_message
from tests.unit.test_raft_leader import leader, persist

VOTERS = (1, 2, 3)


def follower() -> Raft:
    """Node 1 of three, a follower in term 3 with entries 1-3 (terms 1, 2, 3), committed
    to 2."""
    return Raft(Config(1, VOTERS), hard_state=HardState(3, 0, 2),
                entries=[Entry(1, 1), Entry(2, 2), Entry(3, 3)], applied=2)


def campaign_messages(core: Raft) -> list[bytes]:
    """The frames of an election the core starts now, as the node would send them."""
    core.campaign(CampaignKind.ELECTION)
    return [encode_message(m) for m in persist(core)]


# -- terms and indexes a cluster never reaches -------------------------------------------

def test_a_term_that_leaves_no_room_for_an_election_is_dropped_and_counted():
    core = follower()
    # Taken, the next campaign's term is 2**64, which neither the wire nor storage (both
    # 64-bit) can hold: the node stopped at its next election, and so did every node
    # that heard the term from it.
    core.step(Message(MsgType.HEARTBEAT, 1, 2, MAX_UINT64, commit=2))
    assert core.term == 3
    assert core.dropped["term_past_limit"] == 1
    assert core.ready().messages == []  # not answered either
    assert len(campaign_messages(core)) == 2


def test_a_snapshot_at_an_index_that_leaves_no_room_to_append_is_dropped_and_counted():
    core = follower()
    top = SnapshotMeta(MAX_UINT64, 3, VOTERS)
    # Taken, the log restarts at 2**64 - 1: a leader's first entry would be at 2**64.
    core.step(Message(MsgType.SNAP, 1, 2, 3, snapshot=top))
    assert core.log.offset == 0 and core.pending_snapshot is None
    assert core.dropped["index_past_limit"] == 1


# -- a snapshot's term -----------------------------------------------------------------

def test_a_snapshot_of_a_term_past_the_message_is_dropped_and_counted():
    core = follower()
    # Its last entry claims term 9 in a message of term 3: taken, the log would hold an
    # entry of a term we have not reached, and as leader we would append entries of a
    # lower term after it (log terms must never decrease: §5.3, Log Matching).
    core.step(Message(MsgType.SNAP, 1, 2, 3, snapshot=SnapshotMeta(20, 9, VOTERS)))
    assert core.log.last_index() == 3 and core.pending_snapshot is None
    assert core.dropped["snapshot_past_term"] == 1
    core.step(Message(MsgType.SNAP, 1, 2, 3, snapshot=SnapshotMeta(20, 3, VOTERS)))
    assert core.pending_snapshot == SnapshotMeta(20, 3, VOTERS)


def test_a_leader_drops_a_snapshot_past_its_term_before_stepping_down():
    core = leader()
    term = core.term
    core.step(Message(MsgType.SNAP, 1, 2, term + 1,
                      snapshot=SnapshotMeta(40, term + 2, VOTERS)))
    assert core.role == Role.FOLLOWER and core.term == term + 1  # the term is legitimate
    assert core.log.offset == 10 and core.dropped["snapshot_past_term"] == 1


# -- a configuration change that names no real configuration -----------------------------

@pytest.mark.parametrize("data", [
    b"1 0 - 1,2,3 0",  # adds node 0 (NONE: "nobody")
    b"3 1 - -1 -",  # leaves node -1 as the only voter
    b"2 4 - 1,2,0 -",  # a voter 0
    b"1 4 - 1,2,3 3,4",  # node 3 both voter and learner
    b"1 4 - 1,2,3 -",  # adds learner 4, which the resulting membership lacks
    b"2 4 - 1,2,3 4",  # promotes 4, still a learner after
    b"3 2 - 1,2,3 -",  # removes 2, still a voter after
])
def test_a_configuration_change_naming_no_real_configuration_is_ignored(data):
    core = follower()
    core.step(Message(MsgType.APP, 1, 2, 3, log_term=3, index=3,
                      entries=[Entry(3, 4, EntryType.CONF_CHANGE, data)]))
    # The entry stays (it is the leader's log; Log Matching), but changes nothing, as
    # any entry that is not a configuration change (the replica ignores it on apply).
    assert core.log.last_index() == 4 and core.conf.last_index == 4
    assert core.voters == frozenset(VOTERS) and core.learners == frozenset()
    with pytest.raises(ValueError):
        decode_change(data)
    # Taken, it made us ask nodes -1 or 0 for votes: no frame can name them.
    assert all(m.to in (2, 3) for m in [decode_message(f) for f in campaign_messages(core)])


# -- a second leader in one term ---------------------------------------------------------

def following_node_2() -> Raft:
    """A follower of node 2 in term 3: it appended and acknowledged 3-4 of term 3."""
    core = Raft(Config(1, VOTERS), hard_state=HardState(3, 0, 2),
                entries=[Entry(1, 1), Entry(2, 2)], applied=2)
    core.step(Message(MsgType.APP, 1, 2, 3, log_term=2, index=2,
                      entries=[Entry(3, 3), Entry(3, 4)], commit=2))
    [ack] = persist(core)
    assert (ack.type, ack.index) == (MsgType.APP_RESP, 4)
    return core


@pytest.mark.parametrize("t", [MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP])
def test_a_second_leader_of_the_term_is_dropped_and_counted(t):
    core = following_node_2()
    # Node 3 claims term 3 too (Election Safety, Figure 3: one leader per term). Taken,
    # its append replaced entries 3-4, which node 2 may have counted as committed.
    core.step(Message(t, 1, 3, 3, log_term=2, index=2, entries=[Entry(2, 3)]
                      if t == MsgType.APP else [], commit=4,
                      snapshot=SnapshotMeta(9, 3, VOTERS) if t == MsgType.SNAP else None))
    assert core.log.last_index() == 4 and core.log.term(3) == 3
    assert core.log.committed == 2 and core.pending_snapshot is None and core.lead == 2
    assert core.dropped["second_leader"] == 1
    assert persist(core) == []


def test_the_leader_of_the_term_is_remembered_while_not_followed():
    core = following_node_2()
    core.campaign(CampaignKind.PRE_ELECTION)  # its leader went quiet: lead is forgotten
    assert core.role == Role.PRE_CANDIDATE and core.term == 3
    core.step(Message(MsgType.HEARTBEAT, 1, 3, 3, commit=4))
    assert core.role == Role.PRE_CANDIDATE and core.dropped["second_leader"] == 1
    core.step(Message(MsgType.HEARTBEAT, 1, 2, 3, commit=4))
    assert core.role == Role.FOLLOWER and core.lead == 2 and core.log.committed == 4


def test_a_new_term_may_have_a_new_leader():
    core = following_node_2()
    core.step(Message(MsgType.APP, 1, 3, 4, log_term=3, index=4, entries=[Entry(4, 5)]))
    assert core.lead == 3 and core.log.last_index() == 5
    assert core.dropped["second_leader"] == 0
