"""The leader's clock over the leases: when each expires, and which to revoke now.

The state machine keeps each lease's TTL and never reads a clock (raftkv/leases.py);
only the leader times leases, on its monotonic clock, and proposes the revoke of one
whose TTL ran out (etcd's lessor). Rules:

- A node that becomes leader starts every lease at its full TTL (`start`): a lease is
  never shortened by a failover, whatever the old leader had measured. So a lease whose
  holder keeps it alive through the new leader never expires.
- A lease granted while leading starts when this leader applies its grant; one the
  leader has not seen yet (it was applying behind) starts when it first does
  (`reconcile`).
- A keepalive restarts the TTL (`renew`), but not once the lease is due: its revoke may
  be in the log already, so the holder must not be told it still holds it.
- `due` hands out each expired lease once; if its revoke has not been applied
  `retry` seconds later (the proposal was lost with a leadership change that kept this
  node leader, or dropped), it is handed out again. It runs on every tick of the
  leader's loop, so it looks only at the head of a heap of deadlines: a renewed
  deadline leaves its old heap entry behind, skipped when it comes up.

Nothing here is replicated: a follower holds no deadlines (`stop`).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

REVOKE_RETRY = 1.0  # seconds before a revoke not yet applied is proposed again


class LeaseTimer:
    """Lease id -> the leader's deadline (monotonic seconds)."""

    __slots__ = ("deadlines", "revoking", "epoch", "retry", "_per_ms", "_heap")

    def __init__(self, retry: float = REVOKE_RETRY, *, scale: float = 1.0) -> None:
        """`scale` shortens every TTL (only the lease-half-ttl failpoint sets it)."""
        self.deadlines: dict[int, float] = {}
        # Leases whose revoke was proposed -> when to propose it again.
        self.revoking: dict[int, float] = {}
        self.epoch = -1  # the state's lease_epoch when last reconciled; -1: not leading
        self.retry = retry
        self._per_ms = scale / 1000  # seconds a ms of TTL lasts
        # (when, lease id): each deadline and retry time set, the stale ones included.
        self._heap: list[tuple[float, int]] = []

    @property
    def leading(self) -> bool:
        return self.epoch >= 0

    def start(self, ttls: Mapping[int, int], epoch: int, now: float) -> None:
        """This node became leader: every lease starts anew at its full TTL."""
        self.deadlines = {lid: now + ttl * self._per_ms for lid, ttl in ttls.items()}
        self._heap = [(when, lid) for lid, when in self.deadlines.items()]
        heapq.heapify(self._heap)
        self.revoking = {}
        self.epoch = epoch

    def stop(self) -> None:
        """This node no longer leads: it times nothing."""
        self.deadlines = {}
        self._heap = []
        self.revoking = {}
        self.epoch = -1

    def reconcile(self, ttls: Mapping[int, int], epoch: int, now: float) -> None:
        """The state's leases moved (`epoch` changed): start the new ones, forget the
        revoked ones."""
        if epoch == self.epoch or not self.leading:
            return
        deadlines = self.deadlines
        for lid in [lid for lid in deadlines if lid not in ttls]:
            del deadlines[lid]
            self.revoking.pop(lid, None)
        for lid, ttl in ttls.items():
            if lid not in deadlines:
                self._arm(lid, now + ttl * self._per_ms)
        self.epoch = epoch

    def renew(self, lease_id: int, ttl_ms: int, now: float) -> bool:
        """Restart a lease's TTL; False if it is due (or being revoked): then it is as
        good as gone, and the keepalive must fail."""
        deadline = self.deadlines.get(lease_id)
        if lease_id in self.revoking or deadline is not None and deadline <= now:
            return False
        self._arm(lease_id, now + ttl_ms * self._per_ms)
        return True

    def _arm(self, lease_id: int, deadline: float) -> None:
        self.deadlines[lease_id] = deadline
        heapq.heappush(self._heap, (deadline, lease_id))

    def remaining(self, lease_id: int, now: float) -> float | None:
        """Seconds left on the lease (0 once due); None if this leader does not time it."""
        deadline = self.deadlines.get(lease_id)
        return None if deadline is None else max(0.0, deadline - now)

    def due(self, now: float) -> list[int]:
        """The leases to propose a revoke for now, in id order: expired and not proposed,
        or proposed `retry` seconds ago and still not applied."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, lid = heapq.heappop(heap)
            # Current only if it is the lease's deadline, or its retry once revoking.
            if when != self.revoking.get(lid, self.deadlines.get(lid)):
                continue
            self.revoking[lid] = now + self.retry
            heapq.heappush(heap, (now + self.retry, lid))
            out.append(lid)
        return sorted(out)
