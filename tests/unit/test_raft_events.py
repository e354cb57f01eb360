"""The core explains its elections as data (Ready.events): why one started, how it ended,
why a vote was refused. These records feed the node's log lines and the dashboard."""

from __future__ import annotations

from raftkv.raft import (
    Config,
    Entry,
    EventKind,
    HardState,
    Message,
    MsgType,
    Raft,
    Role,
    VoteRefusal,
)


def events(core: Raft) -> list:
    """Persist everything, as the node does; what the core sends itself once persisted
    (a candidate's own vote) is stepped back in. Returns the events."""
    out = []
    while core.has_ready():
        rd = core.ready()
        out.extend(rd.events)
        for m in rd.persisted_messages:
            if m.to == core.id:
                core.step(m)
        core.advance(rd)
    return out


def tick_until_campaign(core: Raft) -> None:
    for _ in range(100):
        core.tick()
        if core.role != Role.FOLLOWER:
            return
    raise AssertionError("no campaign after 100 ticks")


def test_s9_6_election_timeout_starts_a_pre_vote_and_a_won_pre_vote_starts_the_election():
    core = Raft(Config(1, (1, 2, 3), seed=1), hard_state=HardState(term=4))
    tick_until_campaign(core)
    [started] = events(core)
    assert (started.kind, started.term, started.reason) == (
        EventKind.PRE_VOTE_STARTED, 5, "election timeout")
    core.step(Message(MsgType.PRE_VOTE_RESP, 1, 2, 5))
    won, election = events(core)
    assert (won.kind, won.term, won.granted) == (EventKind.PRE_VOTE_WON, 5, (1, 2))
    assert (election.kind, election.term, election.reason) == (
        EventKind.ELECTION_STARTED, 5, "pre-vote won")


def test_s5_2_won_election_names_the_voters_that_granted_and_refused():
    core = Raft(Config(1, (1, 2, 3, 4, 5), pre_vote=False, seed=1))
    tick_until_campaign(core)
    events(core)
    core.step(Message(MsgType.VOTE_RESP, 1, 4, 1, reject=True,
                      context=int(VoteRefusal.LOG_BEHIND)))
    core.step(Message(MsgType.VOTE_RESP, 1, 2, 1))
    core.step(Message(MsgType.VOTE_RESP, 1, 3, 1))
    [won] = [e for e in events(core) if e.kind == EventKind.ELECTION_WON]
    assert won.granted == (1, 2, 3)
    assert won.refused == ((4, VoteRefusal.LOG_BEHIND),)


def test_s5_4_1_lost_election_says_each_voter_refused_because_the_log_was_behind():
    core = Raft(Config(1, (1, 2, 3), pre_vote=False, seed=1))
    tick_until_campaign(core)
    events(core)
    for voter in (2, 3):
        core.step(Message(MsgType.VOTE_RESP, 1, voter, 1, reject=True,
                          context=int(VoteRefusal.LOG_BEHIND)))
    [lost] = events(core)
    assert lost.kind == EventKind.ELECTION_LOST
    assert lost.refused == ((2, VoteRefusal.LOG_BEHIND), (3, VoteRefusal.LOG_BEHIND))
    assert core.role == Role.FOLLOWER


def test_s5_4_1_voter_refuses_an_older_log_and_tells_the_candidate_why():
    core = Raft(Config(2, (1, 2, 3)), hard_state=HardState(term=2),
                entries=[Entry(1, 1), Entry(2, 2)])
    core.step(Message(MsgType.VOTE, 2, 1, 3, log_term=1, index=5))
    rd = core.ready()
    [resp] = rd.persisted_messages
    assert resp.reject and resp.context == VoteRefusal.LOG_BEHIND
    [refused] = rd.events
    assert (refused.kind, refused.peer, refused.refusal) == (
        EventKind.VOTE_REFUSED, 1, VoteRefusal.LOG_BEHIND)
    assert "behind ours (term 2, index 2)" in refused.reason


def test_s5_2_second_candidate_in_a_term_is_refused_as_voted_elsewhere():
    core = Raft(Config(3, (1, 2, 3)))
    core.step(Message(MsgType.VOTE, 3, 1, 1))
    core.step(Message(MsgType.VOTE, 3, 2, 1))
    granted, refused = events(core)
    assert (granted.kind, granted.peer) == (EventKind.VOTE_GRANTED, 1)
    assert (refused.kind, refused.peer, refused.refusal) == (
        EventKind.VOTE_REFUSED, 2, VoteRefusal.VOTED_ELSEWHERE)


def test_s4_2_3_vote_inside_the_leader_lease_is_ignored_and_logged():
    core = Raft(Config(3, (1, 2, 3)), hard_state=HardState(term=1))
    core.step(Message(MsgType.HEARTBEAT, 3, 1, 1))
    events(core)
    core.step(Message(MsgType.PRE_VOTE, 3, 2, 2))
    [ignored] = events(core)
    assert (ignored.kind, ignored.peer) == (EventKind.VOTE_IGNORED, 2)


def test_s3_10_transfer_names_the_reason_on_the_target():
    core = Raft(Config(2, (1, 2, 3)), hard_state=HardState(term=1))
    core.step(Message(MsgType.HEARTBEAT, 2, 1, 1))
    events(core)
    core.step(Message(MsgType.TIMEOUT_NOW, 2, 1, 1))
    [started] = events(core)
    assert started.kind == EventKind.ELECTION_STARTED
    assert started.reason == "leadership transfer from node 1"


def test_s6_2_leader_without_a_quorum_says_why_it_stepped_down():
    core = Raft(Config(1, (1, 2, 3), pre_vote=False, seed=1))
    tick_until_campaign(core)
    events(core)  # our own vote counts once persisted
    core.step(Message(MsgType.VOTE_RESP, 1, 2, 1))
    assert core.role == Role.LEADER
    events(core)
    for _ in range(3 * core.cfg.election_tick):
        core.tick()
    down = [e for e in events(core) if e.kind == EventKind.STEPPED_DOWN]
    assert down and "check-quorum" in down[0].reason


def test_s5_1_candidate_that_meets_a_higher_term_says_who_had_it():
    core = Raft(Config(1, (1, 2, 3), pre_vote=False, seed=1))
    tick_until_campaign(core)
    events(core)
    core.step(Message(MsgType.VOTE_RESP, 1, 3, 7, reject=True,
                      context=int(VoteRefusal.STALE_TERM)))
    [down] = events(core)
    assert down.kind == EventKind.STEPPED_DOWN and down.peer == 3
    assert "term 7" in down.reason
