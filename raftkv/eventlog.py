"""The node's account of its elections: one log line per core event, and the last few
kept for STATUS (the controller merges them into the cluster's timeline).

Lines read like `election_won: term 5, votes from 1,2; refused by 3 (log behind)`; the
node's log format adds the time, node id, term and role in front.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from raftkv.raft import EventKind, RaftEvent, VoteRefusal

log = logging.getLogger("raftkv.node")

KEEP = 32  # events kept for STATUS

# Counters in the node's STATUS (and so in its metrics) that events bump.
COUNTED = {
    EventKind.PRE_VOTE_STARTED: "pre_votes_started",
    EventKind.ELECTION_STARTED: "elections_started",
    EventKind.ELECTION_LOST: "elections_lost",
    EventKind.PRE_VOTE_LOST: "pre_votes_lost",
    EventKind.VOTE_GRANTED: "votes_granted",
    EventKind.VOTE_REFUSED: "votes_refused",
    EventKind.STEPPED_DOWN: "step_downs",
}
COUNTER_KEYS = tuple(COUNTED.values())

REFUSAL_WORDS = {
    VoteRefusal.UNSAID: "no reason given",
    VoteRefusal.LOG_BEHIND: "log behind",
    VoteRefusal.VOTED_ELSEWHERE: "voted for another",
    VoteRefusal.HAS_LEADER: "has a leader",
    VoteRefusal.STALE_TERM: "term stale",
    VoteRefusal.REPAIRING: "repairing a damaged log",
}


def ids(voters: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in voters) or "none"


def refused_text(refused: tuple[tuple[int, VoteRefusal], ...]) -> str:
    return ", ".join(f"{v} ({REFUSAL_WORDS[why]})" for v, why in refused) or "none"


def describe(e: RaftEvent) -> str:
    """One line saying what happened and why."""
    k = e.kind
    if k == EventKind.PRE_VOTE_STARTED:
        return f"pre-vote for term {e.term} started: {e.reason}"
    if k == EventKind.ELECTION_STARTED:
        return f"election for term {e.term} started: {e.reason}"
    if k in (EventKind.PRE_VOTE_WON, EventKind.ELECTION_WON):
        what = "pre-vote" if k == EventKind.PRE_VOTE_WON else "election"
        text = f"{what} for term {e.term} won: votes from {ids(e.granted)}"
        return text + (f"; refused by {refused_text(e.refused)}" if e.refused else "")
    if k in (EventKind.PRE_VOTE_LOST, EventKind.ELECTION_LOST):
        what = "pre-vote" if k == EventKind.PRE_VOTE_LOST else "election"
        text = (f"{what} for term {e.term} lost: refused by {refused_text(e.refused)}; "
                f"votes from {ids(e.granted)}")
        repairing = tuple(v for v, why in e.refused if why == VoteRefusal.REPAIRING)
        if repairing:
            # Said loudly: if these voters are a majority, no leader can be elected
            # until an operator restores their logs.
            text += (f"; REPAIRING: node(s) {ids(repairing)} lost part of their log to "
                     f"storage damage and vote only once a leader has caught them up")
        return text
    if k == EventKind.VOTE_GRANTED:
        return f"granted node {e.peer} its {e.reason} for term {e.term}"
    if k == EventKind.VOTE_REFUSED:
        return f"refused node {e.peer} ({REFUSAL_WORDS[e.refusal]}): {e.reason}"
    if k == EventKind.VOTE_IGNORED:
        return f"ignored node {e.peer}'s vote request: {e.reason} (leader lease)"
    if k == EventKind.STEPPED_DOWN:
        return f"stepped down in term {e.term}: {e.reason}"
    if k == EventKind.TRANSFER_STARTED:
        return f"handing leadership to node {e.peer}"
    if k == EventKind.REPAIR_DONE:
        return f"log repaired, voting again: {e.reason}"
    return f"{k.name.lower()} term {e.term}"


class EventLog:
    """Logs each event and keeps the last KEEP, numbered from 1 for this process, stamped
    with `now()` (wall-clock seconds)."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now
        self.recent: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self.seq = 0

    def record(self, events: list[RaftEvent], counters: dict[str, int]) -> None:
        now = self.now()
        for e in events:
            key = COUNTED.get(e.kind)
            if key is not None:
                counters[key] = counters.get(key, 0) + 1
            text = describe(e)
            kind = e.kind.name.lower()
            log.info("%s: %s", kind, text)
            self.seq += 1
            self.recent.append({"seq": self.seq, "time": round(now, 3), "kind": kind,
                                "term": e.term, "text": text})

    def tail(self) -> list[dict[str, Any]]:
        return list(self.recent)
