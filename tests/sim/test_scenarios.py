"""Scripted scenarios that bit real Raft implementations, replayed in the simulator.

Each one drives the cluster by hand, step by step, with the Figure 3 checker running
after every message: a broken rule shows up as a SafetyViolation.
"""

from __future__ import annotations

import contextlib

from raftkv.raft import CampaignKind, ConfChange, ConfOp, EntryType, MsgType, NotLeader, Role
from tests.sim.cluster import Cluster, encode_put


def log_of(c: Cluster, i: int) -> list[tuple[int, int, bytes]]:
    return [(e.index, e.term, e.data) for e in c.nodes[i].core.log.entries]


def test_figure8_entry_of_old_term_is_not_committed_by_counting_replicas():
    """Raft paper §5.4.2, Figure 8: a leader may not commit an entry of an earlier term
    by counting replicas, or a later leader can overwrite a "committed" entry."""
    c = Cluster(5, seed=8, max_entries_per_msg=1)
    # (a) S1 leads term 1 and gets X (index 2) onto S2 only.
    c.elect(1)
    c.deliver_all()
    c.partition([1, 2], [3, 4, 5])
    c.propose(1, "x", "from-term-1")
    c.deliver_all()
    assert log_of(c, 2)[-1][2] == encode_put("x", "from-term-1")
    # (b) S1 crashes; S5 wins term 2 with S3 and S4 and appends an entry nobody gets.
    c.crash(1)
    c.partition([3, 4, 5], [2])
    c.elect(5)
    c.isolate(5)
    c.crash(5)
    # (c) S1 restarts and wins term 3 (S4 is cut off). It gets its no-op (term 3) onto
    # S2 and X (term 1) onto S3, but not the no-op onto S3: S1, S2, S3 hold X, a
    # majority — of an entry of term 1, which must not be committed by counting it.
    c.restart(1)
    c.partition([1, 2, 3, 4], [5])
    c.elect(1)
    assert c.nodes[1].core.term == 3
    c.partition([1, 2, 3], [4], [5])
    x_index = 2
    c.deliver_until(lambda: c.nodes[3].core.log.term(x_index) == 1)
    c.block(1, 3)
    prs = c.nodes[1].core.prs
    c.deliver_until(lambda: prs[2].match >= 3 and prs[3].match >= x_index)
    assert c.nodes[3].core.log.last_index() == x_index
    assert c.nodes[1].core.log.committed < x_index, "X committed by counting old-term replicas"
    # (d) S1 crashes before its own term's entry reaches anyone. S5 (last term 2) can
    # win term 4 and overwrite X: legal only because X was never committed.
    c.crash(1)
    c.restart(5)
    c.partition([2, 3, 4, 5], [1])
    c.elect(5)
    c.deliver_all()
    assert all(c.nodes[i].core.log.term(x_index) == 2 for i in (2, 3, 4, 5))


def test_partitioned_leader_long_divergent_tail_is_overwritten():
    """§5.3: a deposed leader's uncommitted entries are replaced by the new leader's log,
    and the fast back-off by term skips the whole divergent tail in few round trips."""
    c = Cluster(5, seed=3)
    c.elect(1)
    c.deliver_all()
    c.isolate(1)
    for n in range(60):
        c.propose(1, f"lost{n}", "x")  # never replicated: S1 is cut off
    c.elect(2)
    for n in range(10):
        c.propose(2, f"kept{n}", "y")
    c.deliver_all()
    assert c.nodes[2].core.log.committed >= 12
    rejects_before = c.delivered[(MsgType.APP_RESP, True)]
    c.heal()
    c.run_until(lambda: log_of(c, 1) == log_of(c, 2), max_ticks=20)
    assert c.nodes[1].core.role == Role.FOLLOWER
    lost = [e for e in c.nodes[1].core.log.entries if e.data.startswith(b"lost")]
    assert lost == []
    # 60 divergent entries, all of one term: one rejection (plus a possible stale one
    # from a heartbeat) must be enough to find the match point.
    assert c.delivered[(MsgType.APP_RESP, True)] - rejects_before <= 3
    c.run_until(lambda: c.nodes[1].core.log.applied == c.nodes[2].core.log.applied, 20)


def test_stale_leader_cannot_serve_a_read():
    """Thesis §6.4: a leader cut off from the majority cannot confirm a ReadIndex round,
    so it never serves a read that could miss a newer leader's write."""
    c = Cluster(5, seed=5)
    c.elect(1)
    c.propose(1, "k", "old")
    c.deliver_all()
    c.isolate(1)
    c.elect(2)
    c.propose(2, "k", "new")
    c.deliver_all()
    assert c.acked_writes["k"] > 0
    op = c.read(1, "k")  # S1 still believes it leads
    assert op is not None
    c.run_until(lambda: c.nodes[1].core.role != Role.LEADER, max_ticks=30)  # check-quorum
    assert all(r[0].id != op for r in c.read_results), "stale leader served a read"
    assert op not in c.pending_reads, "the read was neither served nor aborted"


def test_vote_grant_is_not_sent_before_it_is_durable_across_a_crash():
    """Thesis §3.8: a vote must be on disk before the grant leaves. S2 grants S1 a vote
    and dies before its fsync; after restart it may vote for S3 in the same term, which
    is safe only because S1 never received the first grant."""
    c = Cluster(3, seed=11, pre_vote=False)
    c.elect(1)
    c.deliver_all()
    term = c.nodes[1].core.term
    c.crash(1)
    c.restart(1)  # S1 comes back as follower; everyone still at `term`
    c.partition([1, 2], [3])
    c.nodes[2].crash_on_next_ready = True  # S2 dies between deciding and its fsync
    c.expire_leases()
    c.nodes[1].core.campaign(CampaignKind.ELECTION)
    c.drive(1)
    c.deliver_until(lambda: not c.nodes[2].alive)
    c.deliver_all()
    assert c.nodes[1].core.role != Role.LEADER, "a grant left S2 before it was durable"
    c.restart(2)
    assert c.nodes[2].core.term == term  # the vote and the new term were lost together
    c.partition([2, 3], [1])
    c.elect(3)  # term + 1, like S1's: election safety is checked on every message
    assert c.nodes[3].core.term == term + 1


def test_rejoining_node_does_not_disrupt_with_pre_vote():
    """Thesis §9.6: a node that was partitioned away keeps timing out, but its pre-votes
    fail, so its term stays put and it cannot depose the leader when it returns."""
    c = Cluster(3, seed=9)
    c.elect(1)
    c.deliver_all()
    term = c.nodes[1].core.term
    c.isolate(3)
    c.run(100)
    assert c.nodes[3].core.term == term, "pre-vote let an isolated node raise its term"
    c.heal()
    c.run(30)
    assert c.nodes[1].core.role == Role.LEADER
    assert c.nodes[1].core.term == term


def test_rejoining_node_without_pre_vote_forces_an_election():
    """The contrast that motivates pre-vote: without it, the isolated node's term grows
    and its return deposes a healthy leader."""
    c = Cluster(3, seed=9, pre_vote=False, check_quorum=False)
    c.elect(1)
    c.deliver_all()
    term = c.nodes[1].core.term
    c.isolate(3)
    c.run(100)
    assert c.nodes[3].core.term > term + 2
    c.heal()
    c.run_until(lambda: c.leader() is not None and c.nodes[c.leader()].core.term > term, 60)


def test_new_leader_appends_a_noop_of_its_term():
    """§5.4.2 / thesis §6.4: the first entry a new leader appends is a no-op of its term."""
    c = Cluster(3, seed=1)
    c.elect(2)
    last = c.nodes[2].core.log.entries[-1]
    assert last.type == EntryType.NOOP and last.term == c.nodes[2].core.term


def test_s7_follower_behind_a_compacted_log_catches_up_by_snapshot():
    """Paper §7: the leader compacted the entries a returning follower needs, so it sends
    its snapshot; the follower restores it and then replicates from there."""
    c = Cluster(3, seed=21, compact_every=10)
    c.elect(1)
    c.deliver_all()
    c.crash(3)
    for n in range(60):
        c.propose(1, f"k{n % 5}", str(n))
        c.deliver_all()
    assert c.nodes[1].core.log.offset >= 50  # the entries S3 lacks are gone
    c.restart(3)
    c.run_until(lambda: c.nodes[3].core.log.applied == c.nodes[1].core.log.applied, 30)
    assert c.delivered[(MsgType.SNAP, False)] >= 1
    assert c.nodes[3].kv == c.nodes[1].kv
    c.propose(1, "after", "snapshot")
    c.deliver_all()
    # Committed on the leader; S3 learns that with the next heartbeat (§5.3).
    c.run_until(lambda: "after" in c.nodes[3].kv, 3)
    assert c.nodes[3].kv["after"][0] == "snapshot"


def test_followers_learn_the_commit_index_from_the_next_append_or_heartbeat():
    """§5.3: the leader includes its commit index in future appends, heartbeats
    included; a commit advance sends no append of its own."""
    c = Cluster(3, seed=23)
    c.elect(1)
    c.deliver_all()
    c.run_until(lambda: all(c.nodes[i].core.log.committed == c.nodes[1].core.log.committed
                            for i in (2, 3)), 3)
    c.deliver_all()  # the heartbeats still in flight
    appends_before = c.delivered[(MsgType.APP, False)]
    c.propose(1, "a", "1")
    c.deliver_all()
    first = c.nodes[1].core.log.committed
    assert c.nodes[1].kv["a"][0] == "1"  # committed and applied on the leader
    assert c.delivered[(MsgType.APP, False)] - appends_before == 2  # one per follower
    assert all(c.nodes[i].core.log.committed < first for i in (2, 3))
    c.propose(1, "b", "2")  # the next append carries the commit of "a"
    c.deliver_all()
    assert all(c.nodes[i].core.log.committed >= first for i in (2, 3))
    assert all(c.nodes[i].kv["a"][0] == "1" for i in (2, 3))
    assert all("b" not in c.nodes[i].kv for i in (2, 3))
    c.run_until(lambda: all("b" in c.nodes[i].kv for i in (2, 3)), 3)  # a heartbeat


def test_s7_lost_snapshot_is_sent_again():
    """A snapshot that never arrives (lost, or the follower restarted mid-transfer) is
    retried once the leader's wait times out."""
    c = Cluster(3, seed=22, compact_every=10)
    c.elect(1)
    c.deliver_all()
    c.crash(3)
    for n in range(40):
        c.propose(1, "k", str(n))
        c.deliver_all()
    c.lose_next.add(MsgType.SNAP)
    c.restart(3)
    c.run_until(lambda: c.nodes[3].core.log.applied == c.nodes[1].core.log.applied, 120)
    assert not c.lose_next, "no snapshot was ever sent"
    assert c.delivered[(MsgType.SNAP, False)] >= 1


def test_single_voter_counts_its_own_vote_only_once_durable():
    """Thesis §3.8 for the candidate's own vote (etcd's self MsgVoteResp, delivered after
    the Ready that holds the new term is persisted). A lone voter that won on its
    unpersisted self-vote sent its learner an entry of the new term before the fsync;
    killed then, it came back in the old term, won the same term again and put another
    entry at the same (index, term): the learner kept X, the leader committed Y."""
    c = Cluster(1, seed=41, spare=1)
    c.elect(1)
    c.deliver_all()
    lead = c.nodes[1].core
    lead.propose_conf_change(ConfChange(ConfOp.ADD_LEARNER, 2))
    c.drive(1)
    c.run_until(lambda: c.nodes[2].core.log.applied == lead.log.applied, 10)
    c.crash(1)
    c.restart(1)  # a follower in the term it led
    c.nodes[1].core.campaign(CampaignKind.ELECTION)
    # Refused once the self-vote waits for the fsync: no leader, no entry of the term.
    with contextlib.suppress(NotLeader):
        c.nodes[1].core.propose(encode_put("k", "X"))
    c.nodes[1].crash_on_next_ready = True  # dies between its early sends and the fsync
    c.drive(1)
    c.deliver_all()
    c.restart(1)
    c.elect(1)
    c.propose(1, "k", "Y")  # the checker compares every (index, term) held anywhere
    c.run_until(lambda: c.nodes[2].core.log.applied == c.nodes[1].core.log.applied, 10)
    c.check_converged()
    assert c.nodes[2].kv == c.nodes[1].kv
    assert c.nodes[1].kv["k"][0] == "Y"
