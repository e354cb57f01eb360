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
  node leader, or dropped), it is handed out again.

Nothing here is replicated: a follower holds no deadlines (`stop`).
"""

from __future__ import annotations

from collections.abc import Mapping

REVOKE_RETRY = 1.0  # seconds before a revoke not yet applied is proposed again


class LeaseTimer:
    """Lease id -> the leader's deadline (monotonic seconds)."""

    __slots__ = ("deadlines", "revoking", "epoch", "retry", "scale")

    def __init__(self, retry: float = REVOKE_RETRY, *, scale: float = 1.0) -> None:
        self.deadlines: dict[int, float] = {}
        # Leases whose revoke was proposed -> when to propose it again.
        self.revoking: dict[int, float] = {}
        self.epoch = -1  # the state's lease_epoch when last reconciled; -1: not leading
        self.retry = retry
        self.scale = scale / 1000  # ms of TTL -> seconds; below 1/1000 only for a failpoint

    @property
    def leading(self) -> bool:
        return self.epoch >= 0

    def start(self, ttls: Mapping[int, int], epoch: int, now: float) -> None:
        """This node became leader: every lease starts anew at its full TTL."""
        self.deadlines = {lid: now + ttl * self.scale for lid, ttl in ttls.items()}
        self.revoking = {}
        self.epoch = epoch

    def stop(self) -> None:
        """This node no longer leads: it times nothing."""
        self.deadlines = {}
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
                deadlines[lid] = now + ttl * self.scale
        self.epoch = epoch

    def renew(self, lease_id: int, ttl_ms: int, now: float) -> bool:
        """Restart a lease's TTL; False if it is due (or being revoked): then it is as
        good as gone, and the keepalive must fail."""
        deadline = self.deadlines.get(lease_id)
        if lease_id in self.revoking or deadline is not None and deadline <= now:
            return False
        self.deadlines[lease_id] = now + ttl_ms * self.scale
        return True

    def remaining(self, lease_id: int, now: float) -> float | None:
        """Seconds left on the lease (0 once due); None if this leader does not time it."""
        deadline = self.deadlines.get(lease_id)
        return None if deadline is None else max(0.0, deadline - now)

    def due(self, now: float) -> list[int]:
        """The leases to propose a revoke for now, in id order: expired and not proposed,
        or proposed `retry` seconds ago and still not applied."""
        out = []
        for lid, deadline in self.deadlines.items():
            if deadline <= now and self.revoking.get(lid, 0.0) <= now:
                self.revoking[lid] = now + self.retry
                out.append(lid)
        return sorted(out)
