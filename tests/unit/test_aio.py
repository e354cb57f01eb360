"""The asyncio client (raftkv/aio.py) against test_client's fake nodes: ROUTER sockets
on loopback answering scripted replies, the leader backed by a real kv.KVStore. Each test
is a plain function running its coroutine with asyncio.run, bounded by DEADLINE."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from raftkv import aio
from raftkv.client import (
    AuthenticationFailed,
    BadRequest,
    Client,
    Compacted,
    RaftKVError,
    SessionExpired,
    Timeout,
    Unavailable,
)
from raftkv.kv import KeyValue
from raftkv.retry import Retry
from raftkv.security import CLIENT, Credentials, ServerKeys, make_keys, secret_file
from raftkv.txn import Compare, Delete, Get, Put
from raftkv.wire import ReplyCode, ReqOp
from tests.unit import test_client as fakes
from tests.unit.test_client import (
    DEADLINE,
    FakeKV,
    FakeNode,
    dead_address,
    drop,
    first_put_reply_lost,
    not_leader,
    repeating_watch_node,
)

ctx, node = fakes.ctx, fakes.node


def run(make: Callable[[], Awaitable[Any]]) -> Any:
    """Run a test's coroutine in a fresh loop, failing it at DEADLINE."""
    async def bounded() -> Any:
        return await asyncio.wait_for(make(), DEADLINE)
    return asyncio.run(bounded())


@pytest.fixture
def client() -> Iterator[Callable[..., aio.Client]]:
    """aio clients, each closed at the end of the test if it did not close itself (the
    test's loop has ended by then: closing then only closes the sockets)."""
    made: list[aio.Client] = []

    def make(addresses: object, **kw: Any) -> aio.Client:
        c = aio.Client(addresses, **kw)  # type: ignore[arg-type]
        made.append(c)
        return c

    yield make
    for c in made:
        if not c._closed:
            c._closed = True
            c._close_sockets()


def test_round_trip_of_every_operation(node, client) -> None:
    kv = client(node(FakeKV()).address)

    async def go() -> None:
        async with kv:
            assert await kv.get("user:1") is None
            assert await kv.put("user:1", "alice") == 2  # OPEN_SESSION took index 1
            assert await kv.get("user:1") == b"alice"
            assert await kv.cas("user:1", "bob", "carol") is False
            assert await kv.cas("user:1", b"alice", b"bob") is True
            assert await kv.cas("user:2", None, "dave") is True
            assert await kv.scan("user:") == [(b"user:1", b"bob"), (b"user:2", b"dave")]
            assert await kv.delete("user:1") is True
            assert await kv.delete("user:1") is False
            assert await kv.get("user:1", consistency="stale") is None
            with pytest.raises(ValueError, match="consistency"):
                await kv.get("k", consistency="eventual")
            with pytest.raises(TypeError, match="key must be str or bytes"):
                await kv.put(1, "x")  # type: ignore[arg-type]
        assert "closed" in repr(kv)
        with pytest.raises(RaftKVError, match="closed"):
            await kv.get("k")

    run(go)


def test_revisions_a_txn_and_a_cas_on_the_mod_revision(node, client) -> None:
    kv = client(node(FakeKV()).address)

    async def go() -> None:
        async with kv:
            first = await kv.put("cfg", "v1")
            assert await kv.get_kv("cfg") == KeyValue(b"v1", first, first, 1)
            await kv.put("cfg", "v2")
            again = await kv.put("cfg", "v1")
            assert await kv.cas("cfg", None, "mine", mod_revision=first) is False  # ABA
            assert await kv.cas("cfg", None, "mine", mod_revision=again) is True
            with pytest.raises(ValueError, match="either"):
                await kv.cas("cfg", "mine", "x", mod_revision=again)
            r = await kv.txn(compare=[Compare.value("cfg") == "mine"],
                             success=[Put("a", "1"), Get("a"), Delete("absent")])
            assert r.succeeded and r.results[0] == r.results[1].mod_revision
            assert r.results[2] is False
            with pytest.raises(BadRequest, match="written twice"):
                await kv.txn(success=[Put("k", "1"), Delete("k")])

    run(go)


def test_scan_iter_is_an_async_iterator_over_every_page(node, client) -> None:
    kv = client(node(FakeKV()).address, decode=True)

    async def go() -> None:
        async with kv:
            keys = [f"k{i:02d}" for i in range(7)]
            for k in reversed(keys):
                await kv.put(k, k + "!")
            await kv.put("other", "x")
            assert [p async for p in kv.scan_iter("k", page=2)] == [(k, k + "!") for k in keys]
            assert [p async for p in kv.scan_iter("k", start="k05", page=3)] == [
                (k, k + "!") for k in keys[5:]]
            with pytest.raises(ValueError, match="page"):
                await kv.scan_iter("k", page=0).__anext__()

    run(go)


def test_a_watch_resumes_after_the_last_event_and_never_repeats_one(node, client) -> None:
    asked: list[int] = []
    kv = client(node(repeating_watch_node(asked)).address)

    async def go() -> None:
        async with kv, kv.watch("k", start_revision=3) as w:
            got = []
            async for e in w:
                got.append((e.revision, e.type, e.value))
                if len(got) == 4:
                    w.close()
            assert got == [(3, "put", b"a"), (4, "delete", None), (5, "put", b"b"),
                           (9, "put", b"c")]
            assert asked == [3, 5, 6, 9] and w.next_revision == 10

    run(go)


def test_a_watch_past_what_the_node_keeps_raises_compacted(node, client) -> None:
    kv = client(node(lambda req: (ReplyCode.COMPACTED, 42, 0)).address)

    async def go() -> None:
        async with kv:
            with pytest.raises(Compacted) as e:
                await kv.watch("k", start_revision=7).poll()
            assert e.value.oldest == 42
            with pytest.raises(ValueError, match="start_revision"):
                kv.watch("k", start_revision=0)

    run(go)


def test_a_watch_one_node_has_compacted_is_served_by_another_that_keeps_it(
        node, client) -> None:
    restarted = node(lambda req: (ReplyCode.COMPACTED, 40, 0))
    keeper = node(lambda req: (ReplyCode.OK, [req.revision + 1, [[7, 1, b"k", b"v"]]], 0))
    kv = client([restarted.address, keeper.address])

    async def go() -> None:
        async with kv:
            events = await kv.watch("k", start_revision=7).poll()
            assert [(e.revision, e.value) for e in events] == [(7, b"v")]

    run(go)
    assert len(restarted.requests) == 1 and len(keeper.requests) == 1


def test_not_leader_with_a_hint_goes_to_the_hinted_node(node, client) -> None:
    n1, n2, leader = node(not_leader(3)), node(not_leader(3)), node(FakeKV())
    kv = client([n1.address, n2.address, leader.address])

    async def go() -> None:
        async with kv:
            await kv.put("k", "v")
            assert await kv.get("k") == b"v"

    run(go)
    assert len(n1.requests) == 1 and n2.requests == []


def test_dead_address_is_skipped_without_waiting(node, client) -> None:
    kv = client([dead_address(), node(FakeKV()).address], attempt_timeout=5.0)

    async def go() -> float:
        async with kv:
            start = time.monotonic()
            await kv.put("k", "v")
            assert await kv.get("k") == b"v"
            return time.monotonic() - start

    assert run(go) < 2.0


def test_a_retried_write_reuses_its_client_id_and_seq(node, client) -> None:
    kv_handler = FakeKV()
    fake = node(first_put_reply_lost(kv_handler))
    kv = client(fake.address, attempt_timeout=0.1)

    async def go() -> None:
        async with kv:
            await kv.put("k", "v1")
            await kv.put("k", "v2")
            assert await kv.get("k") == b"v2"

    run(go)
    first, retry, second = fake.ops(ReqOp.PUT)
    assert (retry.client_id, retry.seq) == (first.client_id, first.seq) == (first.client_id, 1)
    assert (second.client_id, second.seq) == (first.client_id, 2)
    assert kv_handler.store.stats.duplicates == 1  # answered from the session
    assert len(fake.ops(ReqOp.OPEN_SESSION)) == 1


def test_errors_and_their_words_are_the_sync_clients(node, client) -> None:
    """The same scenarios through both clients: the same classes, the same messages."""
    nowhere = [node(drop).address, dead_address()]
    kv_handler = FakeKV()
    swallow = [node(lambda r: None if r.op == ReqOp.PUT else kv_handler(r)).address]

    def words(e: BaseException) -> str:
        # Up to the attempts tried (whose timings differ run to run), sessions aside.
        return re.sub(r"client \d+", "client N", str(e).split(". Tried")[0])

    async def go() -> list[str]:
        async with client(nowhere, attempt_timeout=0.05) as a, \
                client(swallow, attempt_timeout=0.05) as b:
            with pytest.raises(Unavailable) as unavailable:
                await a.get("k", timeout=0.3)
            with pytest.raises(Timeout) as timeout:
                await b.put("k", "v", timeout=0.4)
            assert "not connected" in str(unavailable.value)
            return [words(unavailable.value), words(timeout.value)]

    got = run(go)
    with Client(nowhere, attempt_timeout=0.05) as a, Client(swallow, attempt_timeout=0.05) as b:
        with pytest.raises(Unavailable) as unavailable:
            a.get("k", timeout=0.3)
        with pytest.raises(Timeout) as timeout:
            b.put("k", "v", timeout=0.4)
        want = [words(unavailable.value), words(timeout.value)]
    assert got[0] == "GET: no node served it within 0.3s; it had no effect"
    assert "may or may not have been applied" in got[1]
    assert got == want


def test_session_expired_on_first_delivery_is_replaced_and_during_retry_is_ambiguous(
        node, client) -> None:
    kv_handler = FakeKV(max_sessions=1)
    fake = node(kv_handler)
    a, b = client(fake.address), client(fake.address)

    async def replaced() -> None:
        async with a, b:
            await a.put("k", "a1")
            await b.put("k", "b1")  # a second session, evicting a's
            await a.put("k", "a2")  # SESSION_EXPIRED, nothing applied: a new session
            assert await a.get("k") == b"a2"

    run(replaced)
    assert len(fake.ops(ReqOp.OPEN_SESSION)) == 3

    evicting = first_put_reply_lost(FakeKV(max_sessions=1), evict=True)
    kv = client(node(evicting).address, attempt_timeout=0.1)

    async def ambiguous() -> None:
        async with kv:
            with pytest.raises(SessionExpired, match="may or may not have been applied"):
                await kv.put("k", "v")
            await kv.put("k", "w")  # a fresh session
            assert await kv.get("k") == b"w"

    run(ambiguous)


def test_at_most_once_writes(node, client) -> None:
    kv_handler = FakeKV()
    fake = node(kv_handler)
    silent = node(drop)
    unavailable = node(lambda req: (ReplyCode.UNAVAILABLE, "leadership lost", 0))
    kv = client(fake.address)
    lost = client([silent.address, fake.address], attempt_timeout=0.05)
    refusing = client(unavailable.address)

    async def go() -> None:
        async with kv, lost, refusing:
            await kv.put("k", "v", at_most_once=True)
            assert await kv.cas("k", "v", "w", at_most_once=True) is True
            assert await kv.delete("k", at_most_once=True) is True
            with pytest.raises(Timeout, match="may or may not have been applied"):
                await lost.put("k", "v", timeout=0.4, at_most_once=True)
            start = time.monotonic()
            with pytest.raises(Timeout, match="not resent"):
                await refusing.put("k", "v", timeout=DEADLINE / 2, at_most_once=True)
            assert time.monotonic() - start < DEADLINE / 4

    run(go)
    assert [r.op for r in fake.requests] == [ReqOp.PUT, ReqOp.CAS, ReqOp.DELETE]
    assert all(r.client_id == 0 and r.seq == 0 for r in fake.requests)
    assert len(silent.requests) == 1 and len(unavailable.requests) == 1


def test_many_coroutines_share_one_client_and_reps_batches_are_routed(ctx, client) -> None:
    kv_handler = FakeKV()
    fake = FakeNode(ctx, kv_handler, batch_replies=True)  # REPS, as a controller forwards
    kv = client(fake.address)

    async def worker(t: int) -> None:
        for i in range(10):
            await kv.put(f"t{t}:{i}", f"v{i}")
            assert await kv.get(f"t{t}:{i}") == f"v{i}".encode()
            assert await kv.delete(f"t{t}:{i}") is True

    async def go() -> None:
        async with kv:
            await asyncio.gather(*(worker(t) for t in range(16)))
            assert await kv.scan("t") == []

    try:
        run(go)
    finally:
        fake.stop()
    assert kv.stats == {"malformed": 0, "unmatched": 0}
    # A session per write in flight at once: at most one per coroutine; none stale.
    assert 1 <= kv_handler.store.session_count <= 16
    assert kv_handler.store.stats.stale == 0


def test_aclose_fails_requests_in_flight(node, client) -> None:
    silent = node(drop)
    kv = client(silent.address, timeout=DEADLINE)

    async def go() -> BaseException:
        async with kv:
            read = asyncio.ensure_future(kv.get("k"))
            while not silent.requests:  # bounded by run's DEADLINE
                await asyncio.sleep(0.002)
            await kv.aclose()
            await kv.aclose()  # idempotent
            return (await asyncio.gather(read, return_exceptions=True))[0]

    failure = run(go)
    assert type(failure) is RaftKVError and "closed" in str(failure)


def test_bad_arguments_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="no address"):
        aio.Client([])
    with pytest.raises(ValueError, match="cannot connect"):
        aio.Client("not an endpoint")
    with pytest.raises(ValueError, match="timeout"):
        aio.Client(dead_address(), timeout=0)


def test_a_client_serves_one_event_loop(node, client) -> None:
    kv = client(node(FakeKV()).address)

    async def use() -> None:
        await kv.put("k", "v")

    run(use)
    with pytest.raises(RaftKVError, match="event loop it started in"):
        run(use)


def test_from_url_and_the_retry_policy(node, client) -> None:
    fake = node(FakeKV())
    port = fake.address.rsplit(":", 1)[1]
    policy = Retry(backoff_cap=0.05)
    kv = aio.Client.from_url(f"raftkv://127.0.0.1:{port}?decode=1&timeout=3", retry=policy)
    assert kv.timeout == 3.0 and kv.retry is policy

    async def go() -> None:
        async with kv:
            await kv.put("k", "v")
            assert await kv.get("k") == "v"

    run(go)
    with pytest.raises(ValueError, match="bad raftkv URL"):
        aio.Client.from_url("tcp://127.0.0.1:1")


def test_credentials_are_presented_and_a_refused_handshake_is_authentication_failed(
        ctx, client, tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    make_keys(keys_dir, [1])
    keys = ServerKeys(keys_dir, own=CLIENT)
    fake = FakeNode(ctx, FakeKV(), keys=keys)
    try:
        good = client(fake.address, credentials=keys_dir)
        assert good.credentials == Credentials.load(secret_file(keys_dir, CLIENT))
        keyless = client(fake.address, attempt_timeout=0.05)

        async def go() -> None:
            async with good, keyless:
                await good.put("k", "v")
                assert await good.get("k") == b"v"
                with pytest.raises(AuthenticationFailed,
                                   match="refused this client's connection"):
                    await keyless.get("k", timeout=2)

        run(go)
    finally:
        fake.stop()
        keys.close()


def test_concurrent_requests_at_start_with_a_node_down_all_complete(node, client) -> None:
    """Many coroutines send to a socket still connecting at once (the connect grace),
    to a node that never answers the connection: none may wait on it past the grace."""
    kv = client([dead_address(), node(FakeKV()).address], attempt_timeout=5.0)

    async def go() -> float:
        async with kv:
            start = time.monotonic()
            got = await asyncio.gather(*(kv.get(f"k{i}") for i in range(20)))
            assert got == [None] * 20
            await asyncio.gather(*(kv.put(f"k{i}", "v") for i in range(20)))
            return time.monotonic() - start

    assert run(go) < 2.0
