"""The cluster's timeline: a bounded ring of numbered events, kept by the controller.

Three sources feed it:
- the controller's own commands (kill, restart, pause, partition, heal, ...);
- what its STATUS polls show changing: the cluster's highest term, the leader it
  routes to, a node coming back, snapshot counters;
- each node's own election events (the `events` tail of its STATUS: why an election
  started, who voted how and why), merged once each by their per-process number.

Readers ask for `since(seq)` and get what came after, so the dashboard and the CLI can
follow it without missing or repeating events while they stay within the ring.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

KEEP = 1_000
# Node events worth the timeline; granted and lease-ignored votes stay in the node's log.
NODE_KINDS = frozenset({
    "pre_vote_started", "pre_vote_lost", "election_started", "election_won",
    "election_lost", "vote_refused", "stepped_down", "transfer_started",
})


@dataclass(slots=True)
class NodeCursor:
    seq: int = 0  # the last node event taken
    started: float = 0.0  # wall time the node process started, from its uptime
    # The term of the pre-vote this node last started, while nothing else came from it:
    # a node cut off from everyone retries its pre-vote every election timeout, and
    # the timeline shows the first (its log has them all).
    pre_vote_term: int = -1


@dataclass
class Timeline:
    keep: int = KEEP
    seq: int = 0
    events: deque[dict[str, Any]] = field(default_factory=deque)
    max_term: int = 0
    cursors: dict[int, NodeCursor] = field(default_factory=dict)

    def add(self, kind: str, text: str, node: int | None = None, term: int | None = None,
            at: float | None = None) -> None:
        self.seq += 1
        self.events.append({"seq": self.seq, "time": round(at or time.time(), 3),
                            "kind": kind, "node": node, "term": term, "text": text})
        while len(self.events) > self.keep:
            self.events.popleft()

    def command(self, name: str, args: tuple, value: Any) -> None:
        """A controller command was carried out with answer `value`."""
        node = None
        if isinstance(value, dict):
            for key in ("killed", "restarted", "paused", "resumed", "transferring_to", "added",
                        "promoted", "removed"):
                if isinstance(value.get(key), int):
                    node = value[key]
            answer = ", ".join(f"{k} {v}" for k, v in value.items())
        else:
            answer = str(value)
        self.add(name, f"{' '.join([name, *map(str, args)])}: {answer}", node,
                 self.max_term or None)

    def since(self, seq: int, limit: int = 200) -> dict[str, Any]:
        """Events numbered above `seq` (the oldest `limit` of them) and the number to
        ask from next. `lost` > 0 when the ring dropped some the reader never saw."""
        out = [e for e in self.events if e["seq"] > seq][:limit]
        first = self.events[0]["seq"] if self.events else self.seq + 1
        return {"events": out, "next": out[-1]["seq"] if out else max(seq, 0),
                "last": self.seq, "lost": max(0, first - seq - 1)}

    def observe(self, node_id: int, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        """A STATUS answer from `node_id` arrived; `old` is the one before (None after a
        kill, a restart or at start)."""
        term = new.get("term") or 0
        if term > self.max_term:
            if self.max_term:
                self.add("term", f"term {term} begins (first seen at node {node_id})",
                         node_id, term)
            self.max_term = term
        if old is None:
            self.add("node_up", f"node {node_id} answers: {new.get('role')} in term {term}, "
                     f"log at {new.get('last_index')}", node_id, term)
        else:
            self.observe_counters(node_id, old, new, term)
        self.take_node_events(node_id, new)

    def observe_counters(self, node_id: int, old: dict[str, Any], new: dict[str, Any],
                         term: int) -> None:
        was, now = old.get("counters") or {}, new.get("counters") or {}
        if now.get("snapshots_installed", 0) > was.get("snapshots_installed", 0):
            self.add("snapshot_installed", f"node {node_id} installed the leader's snapshot "
                     f"up to index {new.get('snapshot_index')}", node_id, term)
        if now.get("snapshots_taken", 0) > was.get("snapshots_taken", 0):
            self.add("snapshot_taken", f"node {node_id} snapshotted and compacted its log up "
                     f"to index {new.get('snapshot_index')}", node_id, term)

    def take_node_events(self, node_id: int, new: dict[str, Any]) -> None:
        cur = self.cursors.setdefault(node_id, NodeCursor())
        started = time.time() - (new.get("uptime_s") or 0.0)
        if abs(started - cur.started) > 1.0:  # a new process: its numbering restarts
            cur.seq, cur.started = 0, started
        for e in new.get("events") or ():
            if e["seq"] <= cur.seq:
                continue
            cur.seq = e["seq"]
            if e["kind"] == "pre_vote_started":
                if e["term"] == cur.pre_vote_term:
                    continue
                cur.pre_vote_term = e["term"]
            elif e["kind"] in NODE_KINDS:
                cur.pre_vote_term = -1
            if e["kind"] in NODE_KINDS:
                self.add(e["kind"], f"node {node_id}: {e['text']}", node_id, e["term"],
                         e["time"])
