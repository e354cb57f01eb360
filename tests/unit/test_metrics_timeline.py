"""Histograms the node's loop fills, the event lines it logs, and the controller's
timeline (what the dashboard and `events` show)."""

from __future__ import annotations

from harness.timeline import Timeline
from raftkv.eventlog import EventLog, describe
from raftkv.metrics import Buckets, histogram_family, quantile
from raftkv.raft import EventKind, RaftEvent, VoteRefusal


def test_buckets_count_each_value_in_the_first_bound_at_or_above_it():
    h = Buckets((1, 2, 4))
    for v in (0.5, 1, 1.5, 3, 100):
        h.observe(v)
    d = h.to_dict()
    assert d["counts"] == [2, 1, 1, 1] and d["count"] == 5 and d["sum"] == 106
    assert quantile(d, 0.5) == 2 and quantile(d, 1.0) == 4
    assert quantile(Buckets((1,)).to_dict(), 0.5) is None


def test_histogram_family_is_cumulative_with_an_inf_bucket():
    h = Buckets((0.001, 0.01))
    for v in (0.0005, 0.005, 0.005, 1.0):
        h.observe(v)
    samples = {(s.name, s.labels.get("le")): s.value
               for s in histogram_family("x_seconds", "doc", h.to_dict()).samples}
    assert samples[("x_seconds_bucket", "0.001")] == 1
    assert samples[("x_seconds_bucket", "0.01")] == 3
    assert samples[("x_seconds_bucket", "+Inf")] == 4
    assert samples[("x_seconds_count", None)] == 4


def test_lost_election_line_names_each_refusal_and_its_reason():
    e = RaftEvent(EventKind.ELECTION_LOST, 7, granted=(1,),
                  refused=((2, VoteRefusal.LOG_BEHIND), (3, VoteRefusal.VOTED_ELSEWHERE)))
    assert describe(e) == ("election for term 7 lost: refused by 2 (log behind), "
                           "3 (voted for another); votes from 1")


def test_lost_election_line_says_loudly_that_voters_are_repairing_damaged_logs():
    e = RaftEvent(EventKind.PRE_VOTE_LOST, 4, granted=(1,),
                  refused=((2, VoteRefusal.REPAIRING), (3, VoteRefusal.REPAIRING)))
    assert describe(e) == (
        "pre-vote for term 4 lost: refused by 2 (repairing a damaged log), "
        "3 (repairing a damaged log); votes from 1; REPAIRING: node(s) 2,3 lost part of "
        "their log to storage damage and vote only once a leader has caught them up")


def test_event_log_counts_elections_and_keeps_a_numbered_tail():
    counters: dict[str, int] = {}
    log = EventLog()
    log.record([RaftEvent(EventKind.PRE_VOTE_STARTED, 2, reason="election timeout"),
                RaftEvent(EventKind.ELECTION_STARTED, 2, reason="pre-vote won")], counters)
    assert counters == {"pre_votes_started": 1, "elections_started": 1}
    assert [(e["seq"], e["kind"]) for e in log.tail()] == [
        (1, "pre_vote_started"), (2, "election_started")]


def status(term: int, events: list[dict], uptime: float = 10.0, **counters: int) -> dict:
    return {"term": term, "role": "follower", "last_index": 1, "uptime_s": uptime,
            "events": events, "counters": counters, "snapshot_index": 0}


def node_event(seq: int, kind: str, term: int, text: str = "x") -> dict:
    return {"seq": seq, "time": 1.0, "kind": kind, "term": term, "text": text}


def test_timeline_takes_each_node_event_once_and_starts_over_after_a_restart():
    t = Timeline()
    won = node_event(1, "election_won", 1)
    t.observe(1, None, status(1, [won]))
    t.observe(1, status(1, [won]), status(1, [won]))
    assert [e["kind"] for e in t.events] == ["node_up", "election_won"]
    t.observe(1, None, status(1, [node_event(1, "election_started", 2)], uptime=0.1))
    assert [e["kind"] for e in t.events][-1] == "election_started"


def test_timeline_shows_a_cut_off_nodes_repeated_pre_votes_once():
    t = Timeline()
    pre = [node_event(i, "pre_vote_started", 5) for i in range(1, 5)]
    t.observe(2, None, status(4, pre))
    assert [e["kind"] for e in t.events].count("pre_vote_started") == 1


def test_timeline_notes_term_changes_snapshots_and_commands():
    t = Timeline()
    t.observe(1, None, status(1, []))
    t.observe(1, status(1, []), status(2, [], snapshots_installed=1))
    t.command("kill", (3,), {"killed": 3})
    kinds = [(e["kind"], e["node"]) for e in t.events]
    assert ("term", 1) in kinds and ("snapshot_installed", 1) in kinds and ("kill", 3) in kinds


def test_timeline_since_pages_and_reports_what_the_ring_dropped():
    t = Timeline(keep=3)
    for i in range(5):
        t.add("x", str(i))
    page = t.since(0)
    assert [e["text"] for e in page["events"]] == ["2", "3", "4"]
    assert page["lost"] == 2 and page["next"] == 5
    assert t.since(5) == {"events": [], "next": 5, "last": 5, "lost": 0}
