"""Leases kept alive, locks and leader elections, on leases and revisions (etcd's
`concurrency` package: the same keys, the same order, the same guarantees).

    with kv.lock("jobs/nightly", ttl=10) as lock:    # blocks until this client holds it
        storage.write(data, fencing_token=lock.revision)

    e = kv.election("scheduler")
    e.campaign(b"host-a")                            # blocks until elected
    for leader in e.observe(): ...                   # every change of leader

**A lock** is a queue of keys under `__lock/<name>/`, one per contender, each put with
the contender's own lease. The key's create_revision is its place in the queue: the
contender whose key has the lowest holds the lock, and the others each wait for the
deletion of the key just before theirs (no thundering herd). A holder that crashes stops
keeping its lease alive; the leader revokes it after its TTL, which deletes the key, and
the next in line goes on. The holder's create_revision is its **fencing token**: every
later holder's is higher, so a resource that remembers the highest token it has seen can
refuse a holder that lost the lock without knowing it (a long GC pause, a partition).

**An election** is the same queue under `__elect/<name>/`, whose keys hold the
candidates' values: the leader is the candidate with the lowest create_revision, and
`observe` follows it.

**Leases.** `Lease` keeps one alive from a thread, every ttl/3. A keepalive answered
proves the lease was never revoked (a revoke is final), so a holder whose keepalives
stalled a while and then succeeded held its lock throughout. `Lease.alive` is the
client's own safe bound: the lease is certainly alive until `ttl` after the last
keepalive that was answered was *sent* (the leader restarted its TTL after that), and
the leader never shortens a TTL, not even across a failover (raftkv/lease_timer.py).
Work that must not outlive the lock checks `lock.is_held()` or, better, uses the
fencing token.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from raftkv.errors import Compacted, LeaseNotFound, RaftKVError
from raftkv.txn import Compare, Get, Key, Oldest, Put, Value, to_bytes
from raftkv.watch import DELETE

if TYPE_CHECKING:
    from raftkv.client import Client

LOCK_PREFIX = b"__lock/"
ELECTION_PREFIX = b"__elect/"
WATCH_WAIT = 1.0  # seconds a wait for a key's deletion holds one watch request


class NotAcquired(RaftKVError):
    """A lock or an election was not won before the timeout (the contender's key is
    withdrawn: nothing is left queued)."""


class LeaseLost(RaftKVError):
    """The lease under a lock or a candidacy expired or was revoked: the key is gone, and
    whatever it held is held no longer."""


class Lease:
    """A lease granted now and, with `keepalive`, kept alive from a daemon thread every
    ttl/3 until `close()` (or the end of a `with` block), which revokes it. `id` is the
    lease's id, for `Client.put(..., lease=)`. `on_lost` is called (from the thread)
    if a keepalive finds the lease gone."""

    def __init__(self, client: Client, ttl: float, *, keepalive: bool = True,
                 on_lost: Callable[[Lease], None] | None = None) -> None:
        self.client = client
        self.ttl = float(ttl)
        self.on_lost = on_lost
        sent = time.monotonic()
        self.id: int = client.grant(ttl)
        self._valid_until = sent + self.ttl
        self._closed = threading.Event()
        self.lost: str | None = None  # why the lease is gone, once it is known to be
        self._thread: threading.Thread | None = None
        if keepalive:
            self._thread = threading.Thread(target=self._keep, name=f"raftkv-lease-{self.id}",
                                            daemon=True)
            self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the lease is certainly still alive (see the module docstring)."""
        return self.lost is None and time.monotonic() < self._valid_until

    def keepalive(self) -> float:
        """One keepalive now; the TTL restarted (seconds). Raises LeaseLost if the lease
        is gone."""
        sent = time.monotonic()
        try:
            ttl = self.client.keepalive(self.id, timeout=max(self.ttl / 3, 0.2))
        except LeaseNotFound as e:
            self._lose(str(e))
            raise LeaseLost(str(e)) from None
        self._valid_until = max(self._valid_until, sent + ttl)
        return ttl

    def _keep(self) -> None:
        while not self._closed.wait(self.ttl / 3):
            try:
                self.keepalive()
            except LeaseLost:
                return
            except RaftKVError:
                if self.client.closed:
                    return  # the client went: nothing can keep the lease alive now
                # no answer this time; `alive` runs out if none comes in time

    def _lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
            if self.on_lost is not None:
                self.on_lost(self)

    def close(self) -> None:
        """Stop keeping the lease alive and revoke it (its keys go with it); a revoke
        that gets no answer leaves the lease to expire after its TTL. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.lost is None:
            with contextlib.suppress(RaftKVError):  # unanswered: it expires after its TTL
                self.client.revoke(self.id)
            self.lost = "revoked"

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<raftkv.Lease {self.id} ttl={self.ttl:g}s {'alive' if self.alive else 'gone'}>"


class Contender(NamedTuple):
    """A key in a lock's or an election's queue."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int


def queue(client: Client, prefix: bytes) -> list[Contender]:
    """The contenders under `prefix`, first in line first (lowest create_revision): one
    linearizable read a page of them."""
    out = [Contender(to_bytes(k, "key"), to_bytes(kv.value, "value"), kv.create_revision,
                     kv.mod_revision)
           for k, kv in client.scan_iter(prefix, revisions=True)]
    return sorted(out, key=lambda c: c.create_revision)


class _Queued:
    """One contender's place in a queue: its lease, its key, its create_revision. With
    `shared`, a lease the caller keeps (etcd's session) holds the key, and leaving
    deletes the key; otherwise each entry grants a lease of `ttl` and leaving revokes
    it."""

    def __init__(self, client: Client, prefix: bytes, ttl: float,
                 shared: Lease | None = None) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0 seconds, not {ttl!r}")
        self.client, self.prefix, self.ttl = client, prefix, ttl
        self.shared = shared
        self.lease: Lease | None = None
        self.key = b""
        self.revision = 0

    def enter(self, value: bytes, timeout: float | None) -> int:
        """Queue up with `value` and wait to be first; the key's create_revision."""
        if self.lease is not None:
            raise RaftKVError(f"{self.key!r:.60} is queued already")
        deadline = None if timeout is None else time.monotonic() + timeout
        self.lease = self.shared or self.client.lease(self.ttl)
        try:
            self.key = self.prefix + b"%016x" % self.lease.id
            # One log entry queues us and reads the head of the line (etcd's Mutex):
            # uncontended, the lock is ours in one round trip.
            r = self.client.txn([Compare.create(self.key) == 0],
                                [Put(self.key, value, lease=self.lease.id), Oldest(self.prefix)],
                                [Get(self.key), Oldest(self.prefix)])
            self.revision = r.results[0] if r.succeeded else r.results[0].create_revision
            head = r.results[1]
            if head is None or to_bytes(head[0], "key") != self.key:
                self._wait_first(deadline)
        except BaseException:
            self.leave()
            raise
        return self.revision

    def _wait_first(self, deadline: float | None) -> None:
        """Until no key before ours is left: each time, wait for the deletion of the one
        just before (etcd's waitDeletes)."""
        client = self.client
        while True:
            line = queue(client, self.prefix)
            if not any(c.key == self.key for c in line):
                raise LeaseLost(f"{self.key!r:.60} is gone: its lease expired while queued")
            before = [c for c in line if c.create_revision < self.revision]
            if not before:
                return
            self._wait_deleted(before[-1], deadline)

    def _wait_deleted(self, c: Contender, deadline: float | None) -> None:
        """Until `c`'s key is deleted, watched from just after the state we read of it."""
        with self.client.watch(c.key, start_revision=c.mod_revision + 1) as w:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise NotAcquired(f"{self.prefix!r:.60}: not first in line within the "
                                      f"timeout (behind revision {c.create_revision})")
                w.wait = WATCH_WAIT if left is None else max(0.01, min(WATCH_WAIT, left))
                try:
                    events = w.poll()
                except Compacted:
                    return  # the history moved on: the caller reads the queue again
                if any(e.kind == DELETE for e in events):
                    return

    def is_first(self) -> bool:
        """Whether our key still exists and is first in line (one linearizable read of
        the head of the line)."""
        if self.lease is None or not self.lease.alive:
            return False
        head = self.client.oldest(self.prefix)
        return (head is not None and to_bytes(head[0], "key") == self.key
                and head[1].create_revision == self.revision)

    def leave(self) -> None:
        """Withdraw: revoke our own lease, which deletes the key, or delete the key from
        a shared one. Idempotent."""
        lease, self.lease = self.lease, None
        if lease is self.shared and lease is not None and self.key:
            with contextlib.suppress(RaftKVError):  # unanswered: it goes with the lease
                self.client.delete(self.key)
        elif lease is not None:
            lease.close()
        self.key, self.revision = b"", 0


class _InLine:
    """What a lock and an election share: a place in a queue of keys."""

    _q: _Queued

    @property
    def revision(self) -> int:
        """The key's create_revision while queued or first (0 otherwise): a fencing
        token, larger for every later holder."""
        return self._q.revision

    @property
    def lease(self) -> Lease | None:
        """The lease the key is held on, while queued or first."""
        return self._q.lease


class Lock(_InLine):
    """A distributed mutex (etcd's `concurrency.Mutex`); see the module docstring.
    `revision`: the fencing token of the current hold (0 when not held)."""

    def __init__(self, client: Client, name: Key, ttl: float = 10.0,
                 lease: Lease | None = None) -> None:
        self.name = to_bytes(name, "lock name")
        self._q = _Queued(client, LOCK_PREFIX + self.name + b"/", ttl, lease)

    def acquire(self, timeout: float | None = None) -> int:
        """Block until held (or raise NotAcquired after `timeout` seconds); the fencing
        token."""
        return self._q.enter(b"", timeout)

    def release(self) -> None:
        """Let go (the next in line gets it). Idempotent."""
        self._q.leave()

    def is_held(self) -> bool:
        """Whether this client still holds the lock: its lease is alive and its key
        first in line."""
        return self._q.is_first()

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        held = f"held, token {self.revision}" if self.revision else "not held"
        return f"<raftkv.Lock {self.name!r} {held}>"


class Leader(NamedTuple):
    """An election's leader: its value, and the create_revision that put it first."""

    value: bytes
    revision: int


class Election(_InLine):
    """A leader election (etcd's `concurrency.Election`); see the module docstring."""

    def __init__(self, client: Client, name: Key, ttl: float = 10.0,
                 lease: Lease | None = None) -> None:
        self.client = client
        self.name = to_bytes(name, "election name")
        self.prefix = ELECTION_PREFIX + self.name + b"/"
        self._q = _Queued(client, self.prefix, ttl, lease)

    def campaign(self, value: Value, timeout: float | None = None) -> int:
        """Stand with `value` and block until elected (or raise NotAcquired after
        `timeout`); the leadership's revision, a fencing token like a lock's."""
        return self._q.enter(to_bytes(value, "value"), timeout)

    def proclaim(self, value: Value) -> None:
        """As leader, announce a new value without a new election. Raises RaftKVError
        if this client is not the leader any more."""
        q = self._q
        if q.lease is None:
            raise RaftKVError("proclaim: not campaigning")
        r = self.client.txn([Compare.create(q.key) == q.revision],
                            [Put(q.key, to_bytes(value, "value"), lease=q.lease.id)])
        if not r.succeeded:
            raise LeaseLost(f"proclaim: {q.key!r:.60} is gone: no longer the leader")

    def resign(self) -> None:
        """Step down (or withdraw a campaign): the next candidate leads. Idempotent."""
        self._q.leave()

    def is_leader(self) -> bool:
        return self._q.is_first()

    def leader(self) -> Leader | None:
        """The current leader, or None if there is no candidate."""
        head = self.client.oldest(self.prefix)
        if head is None:
            return None
        return Leader(to_bytes(head[1].value, "value"), head[1].create_revision)

    def observe(self, *, wait: float = WATCH_WAIT) -> Iterator[Leader | None]:
        """The leader now, then each time it changes (None: no candidate), for as long
        as the caller iterates. Every change is seen; a quick succession may show only
        its last leader."""
        # The watch's start comes from a read made before the leader's: a change the
        # leader read missed is later than every revision that read saw, so the watch
        # sees it. The other order loses a campaign that lands between the two reads.
        line = queue(self.client, self.prefix)
        start = max((c.mod_revision for c in line), default=0) + 1
        current = self.leader()
        yield current
        while True:
            with self.client.watch(self.prefix, prefix=True, start_revision=start,
                                   wait=wait) as w:
                try:
                    while not w.poll():
                        pass
                    start = w.next_revision
                except Compacted as e:
                    start = e.oldest  # the history moved on: look again from there
            new = self.leader()
            if new != current:
                current = new
                yield current

    def __repr__(self) -> str:
        return f"<raftkv.Election {self.name!r} revision {self.revision}>"
