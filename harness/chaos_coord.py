"""Chaos workloads for locks and leases (`raftkv chaos --coordination`), and the checks
that judge them from the clients' side alone, by time and fencing tokens.

**Locks** (`LockWorkload`). A few contenders take one lock (raftkv.concurrency.Lock)
again and again through the faults, each recording when it held it: from just after
`acquire` returned to just before `release`, and whether its lease was certainly alive
until then (`Lease.alive`: a keepalive answered within the TTL). Two holds that were
both certainly alive never overlap in time, and their fencing tokens grow in the order
of the holds. (A hold whose lease may have lapsed is the one a fencing token exists
for, and is left out.)

**Leases** (`LeaseWorkload`). A client grants short leases, puts a key with each, and
keeps some alive for a while; none is revoked by the client, so every one ends by
expiring, and a watcher notes when each key's delete arrives (`observed`, no earlier
than the revoke was proposed). The leader restarts a lease's TTL when it applies the
grant, on each keepalive it answers, and when it takes the lead; each of those resets
happened between the request's send and its answer. So a revoke at time P is legal only
if some window of the TTL between two resets fits before P. The check, for each lease:
some pair of consecutive answered resets (send of the one, answer of the next), or the
last reset's send and the delete's arrival, is at least the TTL apart. Otherwise the
lease was revoked before its TTL ran on the leader that revoked it. After the faults
heal, every lease must end within its TTL plus recovery (`finish`).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

LOCK_NAME = "chaos"
LOCK_TTL = 3.0
LOCK_CONTENDERS = 3
LEASE_TTL = 2.0
LEASE_PREFIX = "chaos-lease/"
OP_TIMEOUT = 2.0


@dataclass
class Hold:
    contender: int
    token: int
    acquired: int  # monotonic_ns, just after acquire returned
    released: int  # monotonic_ns, just before release
    alive: bool  # the lease was certainly alive at `released`


class LockWorkload:
    """`LOCK_CONTENDERS` threads taking one lock until `stop()`."""

    def __init__(self, addresses: dict[int, str] | str, seed: int) -> None:
        self.addresses = addresses
        self.holds: list[Hold] = []
        self.failed = 0  # acquires that gave up (timeout, cluster unavailable)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i, seed), daemon=True,
                                          name=f"chaos-lock-{i}")
                         for i in range(LOCK_CONTENDERS)]
        for t in self._threads:
            t.start()

    def _run(self, contender: int, seed: int) -> None:
        from raftkv import Client, RaftKVError

        rng = random.Random(f"lock-{seed}-{contender}")
        with Client(self.addresses, timeout=OP_TIMEOUT) as kv:
            while not self._stop.is_set():
                lock = kv.lock(LOCK_NAME, ttl=LOCK_TTL)
                try:
                    token = lock.acquire(timeout=5.0)
                except RaftKVError:
                    self.failed += 1
                    continue
                acquired = time.monotonic_ns()
                self._stop.wait(rng.uniform(0.02, 0.2))
                lease = lock.lease
                alive = lease is not None and lease.alive
                released = time.monotonic_ns()
                self.holds.append(Hold(contender, token, acquired, released, alive))
                lock.release()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=LOCK_TTL + 4 * OP_TIMEOUT + 10)


def lock_problems(holds: list[Hold]) -> list[str]:
    """Two certainly-alive holds at once, or tokens that do not grow with time."""
    alive = sorted((h for h in holds if h.alive), key=lambda h: h.acquired)
    problems = []
    for a, b in zip(alive, alive[1:], strict=False):
        if b.acquired < a.released:
            problems.append(f"lock held twice at once: contender {a.contender} (token "
                            f"{a.token}) and contender {b.contender} (token {b.token})")
        if b.token <= a.token:
            problems.append(f"lock tokens went back: {a.token} then {b.token}")
    return problems


@dataclass
class LeaseRecord:
    id: int
    key: str
    resets: list[tuple[int, int]]  # (sent, answered) of the grant and each keepalive answered
    keep_until: int  # monotonic_ns: kept alive until then (0: never)
    put_ok: bool = False
    observed: int | None = None  # monotonic_ns the delete of its key arrived


@dataclass
class LeaseWorkload:
    """Grants a lease every ~0.5 s, keeps every other one alive for 1-2 TTLs, and
    watches their keys, until `stop()`."""

    addresses: dict[int, str] | str
    seed: int
    leases: dict[str, LeaseRecord] = field(default_factory=dict)
    compacted: bool = False
    error: str | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True,
                                         name="chaos-lease-watch")
        self._granter = threading.Thread(target=self._grant, daemon=True,
                                         name="chaos-lease-grant")
        self._watcher.start()
        self._ready.wait(OP_TIMEOUT * 5)
        self._granter.start()

    def _watch(self) -> None:
        from raftkv import Client, Compacted, RaftKVError

        try:
            with Client(self.addresses, timeout=OP_TIMEOUT, decode=True) as kv:
                start = kv.put(LEASE_PREFIX + "start", "") + 1
                self._ready.set()
                watch = kv.watch(LEASE_PREFIX, prefix=True, start_revision=start, wait=0.5)
                while not (self._stop.is_set() and self._all_ended()):
                    for event in watch.poll():
                        now = time.monotonic_ns()
                        if event.type == "delete":
                            with self._lock:
                                rec = self.leases.get(event.key)
                                if rec is not None and rec.observed is None:
                                    rec.observed = now
        except Compacted:
            self.compacted = True
        except RaftKVError as e:
            self.error = str(e)
        finally:
            self._ready.set()

    def _all_ended(self) -> bool:
        with self._lock:
            return all(r.observed is not None for r in self.leases.values() if r.put_ok)

    def _grant(self) -> None:
        from raftkv import Client, RaftKVError
        from raftkv.client import LeaseNotFound

        rng = random.Random(f"lease-{self.seed}")
        with Client(self.addresses, timeout=OP_TIMEOUT) as kv:
            n = 0
            next_grant = 0.0
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_grant:
                    n += 1
                    next_grant = now + rng.uniform(0.3, 0.7)
                    sent = time.monotonic_ns()
                    try:
                        lid = kv.grant(LEASE_TTL)
                    except RaftKVError:
                        continue
                    answered = time.monotonic_ns()
                    keep = (answered + int(rng.uniform(1, 2) * LEASE_TTL * 1e9)
                            if n % 2 else 0)
                    rec = LeaseRecord(lid, f"{LEASE_PREFIX}{lid}", [(sent, answered)], keep)
                    with self._lock:
                        self.leases[rec.key] = rec
                    try:
                        kv.put(rec.key, "x", lease=lid)
                        rec.put_ok = True
                    except LeaseNotFound:
                        pass  # expired before its put: nothing to watch
                    except RaftKVError:
                        rec.put_ok = True  # unknown: its key may exist; the watch will tell
                for rec in list(self.leases.values()):
                    if rec.keep_until and time.monotonic_ns() < rec.keep_until:
                        sent = time.monotonic_ns()
                        try:
                            kv.keepalive(rec.id, timeout=LEASE_TTL / 4)
                        except LeaseNotFound:
                            rec.keep_until = 0
                        except RaftKVError:
                            continue
                        else:
                            rec.resets.append((sent, time.monotonic_ns()))
                self._stop.wait(LEASE_TTL / 8)

    def stop(self) -> None:
        self._stop.set()
        self._granter.join(timeout=4 * OP_TIMEOUT + 10)

    def finish(self, timeout: float) -> bool:
        """Wait until every lease's key was seen deleted (after the faults healed: each
        must expire); False if some did not within `timeout`."""
        self._watcher.join(timeout=timeout)
        return not self._watcher.is_alive() or self.compacted or self.error is not None


def lease_problems(leases: list[LeaseRecord], ttl: float = LEASE_TTL) -> list[str]:
    """Leases revoked before their TTL could have run on any leader (module docstring)."""
    ttl_ns = int(ttl * 1e9)
    problems = []
    for rec in leases:
        if rec.observed is None:
            continue
        resets = [r for r in rec.resets if r[0] < rec.observed]
        windows = [b[1] - a[0] for a, b in zip(resets, resets[1:], strict=False)]
        windows.append(rec.observed - resets[-1][0])
        if max(windows) < ttl_ns:
            problems.append(
                f"lease {rec.id} was revoked before its TTL of {ttl:g}s ran: its key's delete "
                f"arrived {(rec.observed - resets[-1][0]) / 1e9:.3f}s after the last reset "
                f"was sent, and no two resets were {ttl:g}s apart")
    return problems


class Coordination:
    """Both workloads of one chaos run."""

    def __init__(self, addresses: dict[int, str] | str, seed: int) -> None:
        self.locks = LockWorkload(addresses, seed)
        self.leases = LeaseWorkload(addresses, seed)

    def stop(self) -> None:
        self.locks.stop()
        self.leases.stop()

    def problems(self, run_dir: Path, log: Callable[[str], None]) -> list[str]:
        """After recovery: wait for every lease to end, write locks.jsonl and
        leases.jsonl, and judge both."""
        problems = []
        if not self.leases.finish(LEASE_TTL + 30):
            left = [r.id for r in self.leases.leases.values()
                    if r.put_ok and r.observed is None]
            problems.append(f"leases {left[:10]} did not expire within {LEASE_TTL + 30:g}s "
                            "after the faults healed")
        if self.leases.error:
            problems.append(f"lease watch failed: {self.leases.error}")
        records = list(self.leases.leases.values())
        for name, rows in (("locks", self.locks.holds), ("leases", records)):
            with open(run_dir / f"{name}.jsonl", "w") as f:
                for row in rows:
                    f.write(json.dumps(asdict(row)) + "\n")
        holds = self.locks.holds
        observed = sum(r.observed is not None for r in records)
        log(f"locks: {len(holds)} holds ({sum(h.alive for h in holds)} certainly alive), "
            f"{self.locks.failed} acquires gave up; leases: {len(records)} granted, "
            f"{observed} seen to expire" + (" (watch COMPACTED)" if self.leases.compacted
                                             else ""))
        if not holds:
            problems.append("the lock workload never held the lock")
        return problems + lock_problems(holds) + lease_problems(records)
