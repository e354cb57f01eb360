"""The leases of the replicated state: which exist, their TTL, and the keys each holds.

A lease is granted by a log entry and its id is that entry's index, so every replica
agrees on it (as on client ids, raftkv/kv.py). A key put with a lease is attached to it
(a later put without one, or with another, moves it), and revoking the lease deletes
every key attached. Nothing here knows the time: the leader alone times leases
(raftkv/lease_timer.py) and proposes the revoke, which every replica then applies the
same way (etcd's lessor split the same way: the TTL is replicated, the expiry is not).
"""

from __future__ import annotations

from typing import Any

MAX_LEASE_TTL_MS = 1 << 40  # ~35 years: a bound for the wire, not a policy


class LeaseError(ValueError):
    """A lease table that a snapshot or a database holds is malformed."""


class LeaseTable:
    """Lease id -> TTL (ms), and the keys attached to each.

    Invariant: `owner[k] == lid` exactly when `k in keys[lid]`, and `keys` and `ttl`
    have the same lease ids. `changed` holds the ids whose entry changed since the
    state last saved them (raftkv.lmdb_state writes those; memory ignores them)."""

    __slots__ = ("ttl", "keys", "owner", "changed", "epoch")

    def __init__(self) -> None:
        self.ttl: dict[int, int] = {}
        self.keys: dict[int, set[bytes]] = {}
        self.owner: dict[bytes, int] = {}
        self.changed: set[int] = set()
        # Bumped on every grant and revoke: the leader's timer re-reads the table when
        # it moved (not replicated; a local change counter).
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ttl)

    def __contains__(self, lease_id: int) -> bool:
        return lease_id in self.ttl

    def grant(self, lease_id: int, ttl_ms: int) -> None:
        self.ttl[lease_id] = ttl_ms
        self.keys[lease_id] = set()
        self.changed.add(lease_id)
        self.epoch += 1

    def revoke(self, lease_id: int) -> set[bytes] | None:
        """Forget the lease; the keys it held (for the caller to delete), or None if
        there was no such lease."""
        if self.ttl.pop(lease_id, None) is None:
            return None
        keys = self.keys.pop(lease_id)
        for k in keys:
            del self.owner[k]
        self.changed.add(lease_id)
        self.epoch += 1
        return keys

    def attach(self, key: bytes, lease_id: int) -> None:
        """`key` is held by `lease_id` from now on (0: by none)."""
        old = self.owner.get(key, 0)
        if old == lease_id:
            return
        if old:
            self.keys[old].discard(key)
            self.changed.add(old)
            del self.owner[key]
        if lease_id:
            self.keys[lease_id].add(key)
            self.owner[key] = lease_id
            self.changed.add(lease_id)

    def wire(self) -> list[list[Any]]:
        """The table as a snapshot holds it: [[lease_id, ttl_ms, [key, ...]], ...] in id
        order, keys sorted."""
        return [[lid, self.ttl[lid], sorted(self.keys[lid])] for lid in sorted(self.ttl)]

    def entry(self, lease_id: int) -> list[Any] | None:
        """One lease's [ttl_ms, [key, ...]] (None: no such lease)."""
        if lease_id not in self.ttl:
            return None
        return [self.ttl[lease_id], sorted(self.keys[lease_id])]

    @classmethod
    def from_wire(cls, raw: object, applied: int) -> LeaseTable:
        """The table `wire` wrote; LeaseError if it is malformed (an id above `applied`,
        a TTL out of range, a key held twice)."""
        if type(raw) is not list:
            raise LeaseError("leases are not an array")
        table = cls()
        for item in raw:
            if (type(item) is not list or len(item) != 3 or type(item[0]) is not int
                    or not 0 < item[0] <= applied or type(item[1]) is not int
                    or not 0 < item[1] <= MAX_LEASE_TTL_MS or type(item[2]) is not list
                    or item[0] in table.ttl):
                raise LeaseError(f"lease {item!r:.80} is malformed")
            lid, ttl, keys = item
            table.ttl[lid] = ttl
            table.keys[lid] = set()
            for k in keys:
                if type(k) is not bytes or k in table.owner:
                    raise LeaseError(f"lease {lid}: key {k!r:.40} is not bytes or held twice")
                table.keys[lid].add(k)
                table.owner[k] = lid
        return table
