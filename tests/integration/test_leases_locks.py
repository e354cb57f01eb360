"""Leases, locks and elections on three real node processes (the `cluster` fixture),
across a leader kill (SIGKILL) and a holder's SIGKILL. Failure model: processes killed
-9; the page cache and the network stay."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from harness.cluster_state import REPO
from harness.launcher import wait_for
from raftkv import Client
from raftkv.client import LeaseNotFound
from raftkv.concurrency import NotAcquired
from tests.lines import line_within


def client(cluster, **kw) -> Client:
    return Client(cluster.addresses, credentials=cluster.credentials, timeout=10, **kw)


def test_a_lease_outlives_a_leader_kill_at_full_ttl_and_expires_only_after_its_ttl(cluster):
    cluster.wait_leader()
    with client(cluster) as kv:
        lease = kv.grant(3.0)
        kv.put("svc/a", "up", lease=lease)
        old = cluster.wait_leader()
        cluster.kill(old)
        killed = time.monotonic()
        cluster.wait_leader(exclude=old)
        info = kv.lease_info(lease)
        # The new leader started the lease anew when it took over: never less left than
        # the whole TTL minus the time since the kill.
        assert info.ttl == 3.0 and info.keys == [b"svc/a"]
        assert info.remaining >= 3.0 - (time.monotonic() - killed) - 0.05
        assert kv.keepalive(lease) == 3.0
        last_keepalive_sent = time.monotonic()
        kv.keepalive(lease)
        gone = wait_for(lambda: kv.get("svc/a") is None and time.monotonic(), 15,
                        "the lease's key to go after its TTL")
        assert gone - last_keepalive_sent >= 3.0  # never before the TTL ran on the leader
        with pytest.raises(LeaseNotFound):
            kv.keepalive(lease)
        with pytest.raises(LeaseNotFound):
            kv.put("svc/b", "x", lease=lease)
        assert kv.get("svc/b") is None


def test_a_kept_alive_lease_holds_its_keys_until_revoked(cluster):
    cluster.wait_leader()
    with client(cluster) as kv:
        with kv.lease(1.5) as lease:
            kv.put("eph", "1", lease=lease)
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline:  # over two TTLs, kept alive every third
                assert kv.get("eph") == b"1" and lease.alive
                time.sleep(0.1)
        assert kv.get("eph") is None  # the with block revoked it
        assert not lease.alive


def test_a_lock_is_held_by_one_client_at_a_time_and_its_tokens_grow(cluster):
    cluster.wait_leader()
    holders: list[str] = []
    tokens: list[int] = []
    inside = threading.Lock()
    errors: list[BaseException] = []

    def contend(name: str) -> None:
        try:
            with client(cluster) as kv:
                for _ in range(5):
                    with kv.lock("jobs", ttl=5) as lock:
                        assert inside.acquire(blocking=False), "two holders at once"
                        holders.append(name)
                        tokens.append(lock.revision)
                        assert lock.is_held()
                        time.sleep(0.01)
                        inside.release()
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=contend, args=(f"c{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(holders) == 15 and set(holders) == {"c0", "c1", "c2"}
    assert tokens == sorted(tokens) and len(set(tokens)) == 15  # fencing: only grows


HOLDER = """
import sys, time
from raftkv import Client
with Client(sys.argv[1].split(","), credentials=sys.argv[2], timeout=10) as kv:
    lock = kv.lock("crash", ttl=2)
    print(lock.acquire(), flush=True)
    time.sleep(600)
"""


def test_a_holder_killed_9_loses_the_lock_after_its_ttl(cluster):
    cluster.wait_leader()
    addrs = ",".join(cluster.addresses[i] for i in sorted(cluster.addresses))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, addrs, str(cluster.keys_dir)],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        token = int(line_within(holder.stdout, 30, "the holder's token"))
        with client(cluster) as kv:
            with pytest.raises(NotAcquired):
                kv.lock("crash", ttl=2).acquire(timeout=0.5)
            holder.kill()
            killed = time.monotonic()
            lock = kv.lock("crash", ttl=2)
            assert lock.acquire(timeout=15) > token
            assert time.monotonic() - killed < 10
            lock.release()
    finally:
        holder.kill()
        holder.wait()


def test_an_election_has_one_leader_and_observers_see_it_change(cluster):
    cluster.wait_leader()
    with client(cluster) as a, client(cluster) as b, client(cluster) as watcher:
        ea, eb = a.election("sched", ttl=5), b.election("sched", ttl=5)
        assert watcher.election("sched").leader() is None
        ea.campaign("host-a")
        seen: list[bytes | None] = []
        observing = threading.Event()

        def observe() -> None:
            for leader in watcher.election("sched").observe(wait=0.3):
                seen.append(None if leader is None else leader.value)
                observing.set()
                if leader is not None and leader.value == b"host-b2":
                    return

        t = threading.Thread(target=observe, daemon=True)
        t.start()
        assert observing.wait(10) and seen == [b"host-a"]
        with pytest.raises(NotAcquired):
            eb.campaign("host-b", timeout=0.5)
        electing = threading.Thread(target=eb.campaign, args=("host-b",))
        electing.start()
        wait_for(lambda: len(watcher.scan("__elect/sched/")) == 2, 10, "b's candidacy")
        assert ea.is_leader() and not eb.is_leader()
        ea.resign()
        electing.join(timeout=15)
        assert eb.is_leader() and eb.revision > ea.revision == 0
        eb.proclaim("host-b2")
        t.join(timeout=15)
        assert not t.is_alive() and seen[0] == b"host-a" and seen[-1] == b"host-b2"
        assert watcher.election("sched").leader().value == b"host-b2"
        eb.resign()


def test_an_observer_sees_a_campaign_that_lands_right_after_its_leader_read(cluster):
    """observe() reads the line (for the watch's start) and the leader: a candidate
    elected just after the leader read must still be reported, by the watch. The hook
    campaigns once the observer's first leader read has answered (reading the line
    after the leader, as observe once did, started the watch past that campaign)."""
    cluster.wait_leader()
    with client(cluster) as a, client(cluster) as watcher:
        election = a.election("race", ttl=5)
        fired = threading.Event()
        read_leader = watcher.oldest

        def hooked(*args, **kw):
            out = read_leader(*args, **kw)
            if not fired.is_set():
                fired.set()
                election.campaign("host-a")
            return out

        watcher.oldest = hooked
        seen: list[bytes | None] = []
        elected = threading.Event()

        def observe() -> None:
            for leader in watcher.election("race").observe(wait=0.3):
                seen.append(None if leader is None else leader.value)
                if leader is not None:
                    elected.set()
                    return

        threading.Thread(target=observe, daemon=True).start()
        assert elected.wait(10), f"the observer never saw the campaign: {seen}"
        # None first: the campaign came after the leader read, and the watch caught it.
        assert fired.is_set() and seen == [None, b"host-a"]
        election.resign()


def test_locks_on_one_shared_lease_release_by_deleting_their_key(cluster):
    """etcd's session: one lease kept alive for many locks; release deletes the key and
    the lease lives on."""
    cluster.wait_leader()
    with client(cluster) as kv, client(cluster) as other, kv.lease(5) as session:
        tokens = []
        for _ in range(3):
            with kv.lock("shared", lease=session) as lock:
                tokens.append(lock.revision)
                with pytest.raises(NotAcquired):
                    other.lock("shared", ttl=5).acquire(timeout=0.3)
        assert tokens == sorted(tokens) and len(set(tokens)) == 3
        assert session.alive and kv.lease_info(session).keys == []
        with other.lock("shared", ttl=5) as theirs:
            assert theirs.revision > tokens[-1]


def test_a_lease_left_open_stops_its_keepalives_when_its_client_closes(cluster):
    cluster.wait_leader()
    kv = client(cluster)
    lease = kv.lease(0.6)
    thread = lease._thread
    kv.close()
    thread.join(timeout=5)  # a keepalive fails on the closed client and the thread ends
    assert not thread.is_alive()
    wait_for(lambda: not lease.alive, 5, "the safe bound to run out a TTL after")
