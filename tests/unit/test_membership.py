"""Membership changes in the core: single-server changes with learners (thesis §4.1)."""

from __future__ import annotations

import pytest

from raftkv.raft import ConfChange, ConfChangeError, ConfOp, MsgType, Role
from raftkv.raft.confchange import Membership, decode_change, encode_change
from tests.sim.cluster import Cluster


def elect_with_spare(spare: int = 2) -> Cluster:
    c = Cluster(3, seed=31, spare=spare)
    c.elect(1)
    c.deliver_all()
    return c


def test_change_entry_carries_the_whole_resulting_membership():
    cc = ConfChange(ConfOp.ADD_LEARNER, 4, "tcp://127.0.0.1:7704")
    after = Membership(frozenset({1, 2, 3}), frozenset({4}))
    assert decode_change(encode_change(cc, after)) == (cc, after)
    with pytest.raises(ValueError):
        decode_change(b"garbage")


def test_s4_1_membership_rejects_changes_that_make_no_sense():
    m = Membership(frozenset({1}))
    with pytest.raises(ConfChangeError):
        m.apply(ConfChange(ConfOp.ADD_LEARNER, 1))
    with pytest.raises(ConfChangeError):
        m.apply(ConfChange(ConfOp.PROMOTE, 2))
    with pytest.raises(ConfChangeError):
        m.apply(ConfChange(ConfOp.REMOVE, 1))  # the last voter


def test_a_change_already_made_is_in_force_and_one_that_makes_no_sense_is_not():
    m = Membership(frozenset({1, 2}), frozenset({3}))
    assert m.in_force(ConfChange(ConfOp.ADD_LEARNER, 3))  # a retried add
    assert m.in_force(ConfChange(ConfOp.ADD_LEARNER, 2))
    assert not m.in_force(ConfChange(ConfOp.ADD_LEARNER, 4))
    assert m.in_force(ConfChange(ConfOp.PROMOTE, 2))  # a retried promote
    assert not m.in_force(ConfChange(ConfOp.PROMOTE, 3))
    assert not m.in_force(ConfChange(ConfOp.PROMOTE, 9))  # refused: not a learner
    assert m.in_force(ConfChange(ConfOp.REMOVE, 9))  # a retried removal
    assert not m.in_force(ConfChange(ConfOp.REMOVE, 3))
    assert not m.in_force(ConfChange(ConfOp.REMOVE, 1))


def test_s4_2_1_learner_replicates_but_does_not_count_or_vote():
    c = elect_with_spare()
    leader = c.nodes[1].core
    leader.propose_conf_change(ConfChange(ConfOp.ADD_LEARNER, 4))
    c.drive(1)
    c.deliver_all()
    assert c.nodes[4].core.learners == {4} and c.nodes[4].core.voters == {1, 2, 3}
    assert c.nodes[4].core.log.last_index() == leader.log.last_index()
    c.crash(2)
    c.crash(3)
    index = c.propose(1, "k", "v")
    c.deliver_all()
    assert leader.log.committed < index  # the learner's copy is not a vote
    c.run(40)
    assert c.nodes[4].core.role == Role.FOLLOWER  # a learner never campaigns


def test_s4_1_one_uncommitted_change_at_a_time():
    c = elect_with_spare()
    leader = c.nodes[1].core
    c.isolate(1)
    leader.propose_conf_change(ConfChange(ConfOp.ADD_LEARNER, 4))
    with pytest.raises(ConfChangeError, match="not committed yet"):
        leader.propose_conf_change(ConfChange(ConfOp.ADD_LEARNER, 5))


def test_s4_1_new_leader_changes_nothing_before_committing_in_its_term():
    c = elect_with_spare()
    c.isolate(1)
    c.elect(2)  # its no-op is still in flight... and cut off with the partition below
    c.isolate(2)
    with pytest.raises(ConfChangeError, match="its term"):
        c.nodes[2].core.propose_conf_change(ConfChange(ConfOp.ADD_LEARNER, 4))


def test_s4_2_2_removed_leader_steps_down_once_its_removal_commits():
    c = elect_with_spare()
    c.nodes[1].core.propose_conf_change(ConfChange(ConfOp.REMOVE, 1))
    c.drive(1)
    c.deliver_all()
    assert c.nodes[1].core.role == Role.FOLLOWER
    assert c.nodes[2].core.voters == {2, 3}
    c.run_until(lambda: c.leader() in (2, 3), 60)


@pytest.mark.parametrize("seed", range(5))
def test_s4_2_2_a_leader_removing_itself_still_campaigns_until_its_removal_commits(seed):
    """Figure 4.6: leader 1 of {1, 2} removes itself, and the entry reaches nobody before
    node 1 restarts. Node 2 lacks the entry: under {1, 2} it needs node 1's vote, which
    node 1 refuses (its log is longer). Node 1, under {2}, must campaign anyway (its own
    vote not counted) and bring the entry to node 2. Found by the replica simulator
    (shrink mix, seed 3596): the leader removing itself lost its power; no leader was ever
    elected again."""
    c = Cluster(2, seed=seed)
    c.elect(1)
    c.deliver_all()
    c.isolate(1)
    c.nodes[1].core.propose_conf_change(ConfChange(ConfOp.REMOVE, 1))
    c.drive(1)
    c.crash(1)
    c.restart(1)
    assert c.nodes[1].core.voters == {2} and c.nodes[2].core.voters == {1, 2}
    c.heal()
    c.run_until(lambda: c.leader() == 2 and c.nodes[2].core.voters == {2}, 300)
    assert c.nodes[1].core.role == Role.FOLLOWER


def test_grow_to_five_then_lose_two_originals_and_keep_serving():
    c = elect_with_spare()
    for node in (4, 5):
        for op in (ConfOp.ADD_LEARNER, ConfOp.PROMOTE):
            c.nodes[1].core.propose_conf_change(ConfChange(op, node))
            c.drive(1)
            c.deliver_all()
    assert c.nodes[1].core.voters == {1, 2, 3, 4, 5}
    c.crash(2)
    c.crash(3)
    index = c.propose(1, "k", "v")
    c.deliver_all()
    assert c.nodes[1].core.log.committed >= index  # 1, 4, 5: a majority of five
    assert c.delivered[(MsgType.APP_RESP, False)] > 0


def test_snapshot_records_the_membership_at_its_index_not_a_later_one():
    c = elect_with_spare()
    leader = c.nodes[1].core
    leader.propose_conf_change(ConfChange(ConfOp.ADD_LEARNER, 4))
    c.drive(1)
    c.deliver_all()
    applied = leader.log.applied
    c.isolate(1)
    leader.propose_conf_change(ConfChange(ConfOp.PROMOTE, 4))  # appended, not committed
    assert leader.voters == {1, 2, 3, 4}
    leader.compact(applied)
    assert leader.snapshot.voters == (1, 2, 3) and leader.snapshot.learners == (4,)
