"""The leader's view of each follower: how far it matches, what is in flight.

After etcd-io/raft `tracker/`. A follower is in one of three states:
- PROBE: we do not know where its log matches ours; at most one append is in flight,
  and a rejection walks `next` back (fast, by term: paper §5.3).
- REPLICATE: it matches up to `match`; appends are pipelined optimistically, bounded by
  a window of in-flight messages.
- SNAPSHOT: it needs entries we compacted; we wait for it to install a snapshot (paper §7).

Invariant: 0 <= match < next, and match <= sent <= the leader's last index.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Progress:
    __slots__ = (
        "match", "next", "state", "probe_sent", "inflight", "max_inflight",
        "recent_active", "read_ack", "pending_snapshot", "sent_commit", "snapshot_wait",
        "sent",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False  # PROBE: an append is outstanding, wait for its answer
        # REPLICATE: last index of each append in flight, oldest first.
        self.inflight: deque[int] = deque()
        self.max_inflight = max_inflight
        self.recent_active = False  # heard from it since the last check-quorum round
        self.read_ack = 0  # highest read-index round it acknowledged (thesis §6.4)
        self.pending_snapshot = 0
        self.sent_commit = 0  # the last commit index we told it about
        self.snapshot_wait = 0  # SNAPSHOT: heartbeat intervals since the snapshot left
        # The highest index we sent it while leading this term: the last entry of an
        # append, the index an empty append matches at, a snapshot's index. Nothing it
        # acknowledges can be past this.
        self.sent = 0

    def __repr__(self) -> str:
        return (f"Progress(match={self.match}, next={self.next}, state={self.state.name}, "
                f"inflight={len(self.inflight)})")

    def become_probe(self) -> None:
        # Leaving SNAPSHOT, resume right after the snapshot we sent.
        if self.state == ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, snapshot_index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = snapshot_index
        self.snapshot_wait = 0
        self.probe_sent = False
        self.inflight.clear()

    def is_paused(self) -> bool:
        """Whether sending another append now would overrun this follower."""
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True

    def sent_entries(self, last_index: int) -> None:
        """Record an append that carried entries up to `last_index`."""
        if self.state == ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflight.append(last_index)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """An acknowledgement that the follower matches up to `index`. Returns whether
        `match` advanced; a stale (duplicated, reordered) acknowledgement changes nothing."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return updated

    def maybe_decr_to(self, rejected: int, hint: int) -> bool:
        """A rejection of the append at `rejected`. Returns whether `next` moved back.

        A rejection older than what we already know (a stale, reordered reply) is ignored.
        """
        if self.state == ProgressState.SNAPSHOT:
            return False  # a snapshot is on its way; its acknowledgement moves us on
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1  # the caller moves us to PROBE
            return True
        if self.next - 1 != rejected:
            return False  # not the probe we are waiting on
        self.next = max(min(rejected, hint + 1), self.match + 1)
        self.probe_sent = False
        return True
