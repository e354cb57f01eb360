"""raftkv.aio.Client against three real nodes (the `cluster` fixture: free loopback
ports, a temporary dir, every process killed by pid at the end): writes, reads, a txn
and a watch go on through a SIGKILL of the leader, and the watch delivers every event
exactly once across it."""

from __future__ import annotations

import asyncio

import pytest

from harness.launcher import LocalCluster
from raftkv import Compare, Event, LeaseNotFound, Put, aio

DEADLINE = 60.0  # seconds for the whole scenario; reached only when the test fails


def test_put_get_txn_and_a_watch_through_a_leader_kill(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    term = cluster.status(leader)["term"]  # the term the killed leader leads

    async def scenario() -> list[Event]:
        async with aio.Client(cluster.addresses, credentials=cluster.credentials,
                              timeout=15) as kv:
            first = await kv.put("k/1", "a")
            assert await kv.get("k/1") == b"a"
            seen: list[Event] = []
            want = 4  # k/1, k/2 (txn), k/3 and k/4 (after the kill)

            async def follow() -> None:
                async with kv.watch("k/", prefix=True, start_revision=first, wait=0.5) as w:
                    async for event in w:
                        seen.append(event)
                        if len(seen) == want:
                            return

            watcher = asyncio.create_task(follow())
            r = await kv.txn([Compare.value("k/1") == "a"], [Put("k/2", "b")])
            assert r.succeeded
            await asyncio.to_thread(cluster.kill, leader)  # SIGKILL, waited for
            # The client finds the new leader itself within the call's deadline.
            assert await kv.put("k/3", "c") > r.results[0]
            assert await kv.get("k/2") == b"b"
            r2 = await kv.txn([Compare.version("k/3") == 1], [Put("k/4", "d")],
                              [Put("k/4", "wrong")])
            assert r2.succeeded
            assert [p async for p in kv.scan_iter("k/", page=2)] == [
                (b"k/1", b"a"), (b"k/2", b"b"), (b"k/3", b"c"), (b"k/4", b"d")]
            await watcher  # bounded by the scenario's DEADLINE
            return seen

    seen = asyncio.run(asyncio.wait_for(scenario(), DEADLINE))
    assert [(e.key, e.value) for e in seen] == [
        (b"k/1", b"a"), (b"k/2", b"b"), (b"k/3", b"c"), (b"k/4", b"d")]
    revisions = [e.revision for e in seen]
    assert revisions == sorted(set(revisions))  # none repeated, in order
    # wait_leader(exclude=) never answers `leader`: the new leader's term is the check.
    new = cluster.wait_leader(exclude=leader)
    assert new != leader and cluster.status(new)["term"] > term


def test_leases_through_the_async_client(cluster: LocalCluster) -> None:
    cluster.wait_leader()

    async def scenario() -> None:
        async with aio.Client(cluster.addresses, credentials=cluster.credentials,
                              timeout=10) as kv:
            lease = await kv.grant(30)
            await kv.put("eph", "1", lease=lease)
            assert await kv.keepalive(lease) == 30.0
            info = await kv.lease_info(lease)
            assert info.keys == [b"eph"] and 29 < info.remaining <= 30
            listing = await kv.leases()
            assert [i.id for i in listing.leases] == [lease] and listing.revision > lease
            assert listing.leases[0].keys == [b"eph"]
            assert await kv.revoke(lease) and await kv.get("eph") is None
            assert (await kv.leases()).leases == []
            with pytest.raises(LeaseNotFound):
                await kv.put("eph", "2", lease=lease)
            assert not await kv.revoke(lease)

    asyncio.run(asyncio.wait_for(scenario(), DEADLINE))
