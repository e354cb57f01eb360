"""Behaviours of the Raft core, each named for the paper/thesis section it implements.

Paper: "In Search of an Understandable Consensus Algorithm" (Ongaro & Ousterhout).
Thesis: "Consensus: Bridging Theory and Practice" (Ongaro, 2014).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

from raftkv.raft import (
    CampaignKind,
    Config,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    NotLeader,
    ProposalDropped,
    Raft,
    Role,
)
from raftkv.raft.types import AFTER_PERSIST_TYPES
from tests.sim.cluster import Cluster


def drain(core: Raft) -> None:
    """Persist and apply everything, dropping messages to others: a node talking to
    nobody. What it sends itself once persisted (its own vote) is stepped back in."""
    while core.has_ready():
        rd = core.ready()
        for m in rd.persisted_messages:
            if m.to == core.id:
                core.step(m)
        core.advance(rd)


def single_leader() -> Raft:
    core = Raft(Config(1, (1,)))
    for _ in range(25):
        core.tick()
        drain(core)
    assert core.role == Role.LEADER
    return core


# -- §5.2 leader election --------------------------------------------------------------

@pytest.mark.parametrize("n", [3, 5, 7])
def test_s5_2_cluster_elects_exactly_one_leader(n):
    c = Cluster(n, seed=n)
    c.run_until(lambda: c.leader() is not None, max_ticks=100)
    c.run(20)
    leaders = c.believed_leaders()
    assert len(leaders) == 1
    term = c.nodes[leaders[0]].core.term
    assert all(c.nodes[i].core.lead == leaders[0] and c.nodes[i].core.term == term
               for i in c.ids)


def test_s5_2_randomized_timeouts_come_from_the_seeded_rng():
    def timeouts(seed: int) -> list[int]:
        core = Raft(Config(1, (1, 2, 3), seed=seed))
        out = []
        for _ in range(5):
            core.become_follower(core.term + 1, 0)
            out.append(core.randomized_election_timeout)
        return out

    assert timeouts(7) == timeouts(7)
    assert timeouts(7) != timeouts(8)
    assert all(10 <= t < 20 for t in timeouts(7))


def test_s5_4_1_vote_refused_to_candidate_with_older_log():
    core = Raft(Config(2, (1, 2, 3)), hard_state=HardState(term=2),
                entries=[Entry(1, 1), Entry(2, 2)])
    # Longer, but its last entry is of an older term: not at least as up to date.
    core.step(Message(MsgType.VOTE, 2, 1, 3, log_term=1, index=5))
    rd = core.ready()
    [resp] = rd.persisted_messages
    assert resp.type == MsgType.VOTE_RESP and resp.reject
    assert core.vote == 0


def test_s3_8_vote_grant_leaves_only_after_persistence():
    core = Raft(Config(2, (1, 2, 3)))
    core.step(Message(MsgType.VOTE, 2, 1, 1, log_term=0, index=0))
    rd = core.ready()
    assert rd.messages == []
    assert [m.type for m in rd.persisted_messages] == [MsgType.VOTE_RESP]
    assert rd.hard_state == HardState(term=1, vote=1, commit=0)
    assert {MsgType.VOTE, MsgType.VOTE_RESP, MsgType.APP_RESP} <= AFTER_PERSIST_TYPES


def test_s3_8_candidate_counts_its_own_vote_only_once_it_is_durable():
    core = Raft(Config(1, (1,)), hard_state=HardState(term=4))
    core.campaign(CampaignKind.ELECTION)
    assert core.role == Role.CANDIDATE  # a lone voter: its own vote would be a majority
    rd = core.ready()
    assert rd.hard_state == HardState(term=5, vote=1, commit=0)
    assert rd.messages == [] and rd.entries == []
    [own] = rd.persisted_messages
    assert (own.type, own.to, own.frm, own.term) == (MsgType.VOTE_RESP, 1, 1, 5)
    core.advance(rd)
    assert core.role == Role.CANDIDATE  # persisted, but not yet delivered
    core.step(own)
    assert core.role == Role.LEADER
    # Its own no-op counts toward commit only once durable too (§10.2.1).
    rd = core.ready()
    assert [e.index for e in rd.entries] == [1]
    assert core.prs[1].match == 0 and core.log.committed == 0
    core.advance(rd)
    assert core.log.committed == 1


def test_s9_6_pre_candidate_counts_its_own_pre_vote_at_once():
    core = Raft(Config(1, (1, 2, 3)), hard_state=HardState(term=4))
    core.campaign(CampaignKind.PRE_ELECTION)
    assert core.votes == {1: True}
    core.step(Message(MsgType.PRE_VOTE_RESP, 1, 2, 5))
    assert core.role == Role.CANDIDATE and core.term == 5
    assert core.votes == {}  # the real election's own vote waits for the fsync


# -- §9.6 pre-vote, §6.2 / §4.2.3 check-quorum ------------------------------------------

def test_s9_6_pre_vote_that_cannot_win_leaves_term_unchanged():
    c = Cluster(3, seed=2)
    c.elect(1)
    c.deliver_all()
    term = c.nodes[1].core.term
    c.isolate(2)
    c.run(60)  # S2's timer fires several times; each pre-vote goes unanswered
    assert c.nodes[2].core.term == term
    assert c.nodes[2].core.role in (Role.PRE_CANDIDATE, Role.FOLLOWER)


def test_s6_2_leader_steps_down_without_quorum():
    c = Cluster(5, seed=4)
    c.elect(1)
    c.deliver_all()
    c.partition([1, 2], [3, 4, 5])
    c.run(25)  # two election timeouts: one check-quorum round must fail
    assert c.nodes[1].core.role == Role.FOLLOWER


def test_s4_2_3_follower_hearing_a_live_leader_ignores_disruptive_vote():
    c = Cluster(3, seed=6)
    c.elect(1)
    c.deliver_all()
    term = c.nodes[1].core.term
    # A disruptive vote request of a higher term, arriving while the leader is alive.
    c.nodes[2].core.step(Message(MsgType.VOTE, 2, 3, term + 5, log_term=99, index=99))
    assert c.nodes[2].core.term == term and c.nodes[2].core.lead == 1


def test_s3_10_transfer_vote_bypasses_the_lease():
    c = Cluster(3, seed=6)
    c.elect(1)
    c.deliver_all()
    c.nodes[1].core.transfer_leader(3)
    c.drive(1)
    c.deliver_all()
    assert c.nodes[3].core.role == Role.LEADER
    assert c.nodes[1].core.role == Role.FOLLOWER


# -- §5.3 log replication: pipelining, batching, back-off --------------------------------

def test_s5_3_proposals_of_one_turn_travel_in_one_append_per_follower():
    c = Cluster(3, seed=1)
    c.elect(1)
    c.deliver_all()
    core = c.nodes[1].core
    for n in range(10):
        core.propose(f"k{n}=v".encode())
    rd = core.ready()
    apps = [m for m in rd.messages if m.type == MsgType.APP]
    assert sorted(m.to for m in apps) == [2, 3]
    assert all(len(m.entries) == 10 for m in apps)


def test_s5_3_pipelining_keeps_a_bounded_window_of_appends_in_flight():
    c = Cluster(3, seed=1, max_inflight=3)
    c.elect(1)
    c.deliver_all()
    core = c.nodes[1].core
    sent = []
    for n in range(5):
        core.propose(f"k{n}=v".encode())
        rd = core.ready()
        sent.append(sum(1 for m in rd.messages if m.type == MsgType.APP and m.to == 2))
        core.advance(rd)
    # Three appends go out without waiting for an answer; then the window is full.
    assert sent == [1, 1, 1, 0, 0]


def test_s5_3_rejection_backs_off_a_whole_term_at_once():
    c = Cluster(3, seed=1)
    c.elect(1)
    c.deliver_all()
    c.isolate(1)
    for n in range(40):
        c.propose(1, f"lost{n}", "x")
    c.elect(2)
    c.propose(2, "k", "v")
    c.deliver_all()
    before = c.delivered[(MsgType.APP_RESP, True)]
    c.heal()
    c.run_until(lambda: c.nodes[1].core.log.last_term() == c.nodes[2].core.term, 10)
    assert c.delivered[(MsgType.APP_RESP, True)] - before <= 3


# -- §5.4.2 commitment, §10.2.1 leader's own durability -------------------------------

def test_s5_4_2_new_leader_commits_its_noop_first():
    c = Cluster(3, seed=3)
    c.elect(2)
    core = c.nodes[2].core
    assert core.log.entries[-1].type == EntryType.NOOP
    c.deliver_all()
    assert core.log.committed == core.log.last_index()


def test_s10_2_1_leader_counts_itself_only_once_its_entry_is_durable():
    c = Cluster(3, seed=3)
    c.elect(1)
    c.deliver_all()
    c.crash(3)
    core = c.nodes[1].core
    index = core.propose(b"k=v")
    rd = core.ready()
    # The append leaves before the leader's own fsync (thesis §10.2.1) ...
    [app] = [m for m in rd.messages if m.type == MsgType.APP and m.to == 2]
    follower = c.nodes[2].core
    follower.step(app)
    frd = follower.ready()
    [ack] = frd.persisted_messages
    follower.advance(frd)
    core.step(ack)  # S2 holds it; with S3 down, the leader's own durable copy is needed
    assert core.log.committed < index
    c.nodes[1].disk.persist(rd.hard_state, rd.entries)
    core.advance(rd)
    assert core.log.committed == index


def test_s10_2_1_appends_taken_while_a_ready_persists_count_the_leader_only_once_durable():
    c = Cluster(3, seed=3)
    c.elect(1)
    c.deliver_all()
    c.crash(3)
    core = c.nodes[1].core
    first = core.propose(b"a=1")
    rd = core.ready()  # being persisted (asynchronously) from here ...
    second = core.propose(b"b=2")
    # ... while the second proposal already goes to the followers, without a Ready.
    taken = core.take_messages()
    assert [[e.index for e in m.entries] for m in taken if m.to == 2] == [[second]]
    assert all(m.type not in AFTER_PERSIST_TYPES for m in taken)
    assert core.take_messages() == []  # nothing is sent twice
    follower = c.nodes[2].core
    for app in [m for m in rd.messages + taken if m.to == 2]:
        follower.step(app)
    frd = follower.ready()
    follower.advance(frd)
    for ack in frd.persisted_messages:
        core.step(ack)
    assert core.log.committed < first  # S3 is down: the leader's durable copy is needed
    c.nodes[1].disk.persist(rd.hard_state, rd.entries)
    core.advance(rd)
    assert core.log.committed == first  # not `second`: the leader has not persisted it
    rd2 = core.ready()
    assert [e.index for e in rd2.entries] == [second]
    assert not [m for m in rd2.messages if m.type == MsgType.APP and m.entries]
    c.nodes[1].disk.persist(rd2.hard_state, rd2.entries)
    core.advance(rd2)
    assert core.log.committed == second


def test_single_node_commits_and_applies_after_persisting():
    core = single_leader()
    index = core.propose(b"k=v")
    rd = core.ready()
    assert [e.index for e in rd.entries] == [index] and rd.committed_entries == []
    core.advance(rd)
    rd = core.ready()
    assert [e.index for e in rd.committed_entries] == [index]


# -- §6.4 ReadIndex ----------------------------------------------------------------------

def test_s6_4_read_waits_until_leader_commits_an_entry_of_its_term():
    c = Cluster(3, seed=5)
    c.elect(1)  # its no-op is not yet committed: the APPs are still in flight
    core = c.nodes[1].core
    assert core.log.committed < core.log.last_index()
    core.read_index("r1")
    assert not any(m.type == MsgType.HEARTBEAT for m in core.ready().messages)
    c.deliver_all()
    assert c.nodes[1].core.log.committed == core.log.last_index()


def test_s6_4_read_released_only_after_a_quorum_confirms_leadership():
    c = Cluster(3, seed=5)
    c.elect(1)
    c.deliver_all()
    core = c.nodes[1].core
    core.read_index("r1")
    rd = core.ready()
    assert rd.read_states == []
    beats = [m for m in rd.messages if m.type == MsgType.HEARTBEAT]
    assert len(beats) == 2 and all(m.context == core.read_round for m in beats)
    core.advance(rd)
    c.nodes[2].core.step(beats[0])
    [resp] = c.nodes[2].core.ready().messages
    core.step(resp)
    rd = core.ready()
    assert [(r.ctx, r.index) for r in rd.read_states] == [("r1", core.log.committed)]


def test_s6_4_reads_on_a_deposed_leader_are_aborted():
    c = Cluster(3, seed=5)
    c.elect(1)
    c.deliver_all()
    c.isolate(1)
    core = c.nodes[1].core
    core.read_index("r1")
    core.become_follower(core.term + 1, 0)
    assert core.ready().aborted_reads == ["r1"]


def test_followers_refuse_proposals_reads_and_transfers_with_a_hint():
    c = Cluster(3, seed=5)
    c.elect(1)
    c.deliver_all()
    follower = c.nodes[2].core
    with pytest.raises(NotLeader) as exc:
        follower.propose(b"x")
    assert exc.value.leader == 1
    with pytest.raises(NotLeader):
        follower.read_index("r")
    with pytest.raises(NotLeader):
        follower.transfer_leader(3)


# -- §3.10 leadership transfer ---------------------------------------------------------

def test_s3_10_transfer_catches_target_up_and_refuses_proposals_meanwhile():
    c = Cluster(3, seed=7)
    c.elect(1)
    c.deliver_all()
    c.isolate(3)
    for n in range(5):
        c.propose(1, f"k{n}", "v")
    c.deliver_all()
    core = c.nodes[1].core
    core.transfer_leader(3)
    with pytest.raises(ProposalDropped):
        core.propose(b"k=v")
    c.heal()
    c.run_until(lambda: c.nodes[3].core.role == Role.LEADER, 10)
    assert c.nodes[3].core.log.last_index() >= core.log.committed


def test_s3_10_transfer_to_unreachable_target_is_abandoned():
    c = Cluster(3, seed=7)
    c.elect(1)
    c.deliver_all()
    c.crash(3)
    core = c.nodes[1].core
    core.transfer_leader(3)
    c.run(12)
    assert core.role == Role.LEADER and core.lead_transferee == 0
    core.propose(b"k=v")  # accepted again


# -- the core's boundary -----------------------------------------------------------------

def test_core_imports_no_io_clock_or_threads():
    forbidden = {"zmq", "socket", "time", "os", "threading", "asyncio", "subprocess"}
    root = pathlib.Path(__file__).resolve().parents[2] / "raftkv" / "raft"
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"

