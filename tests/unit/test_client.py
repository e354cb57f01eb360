"""The client (raftkv/client.py) against fake nodes: ROUTER sockets on loopback that
decode requests with raftkv.wire and answer scripted replies, the leader among them
backed by a real kv.KVStore so sessions behave as in the cluster. Every wait is bounded."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

import raftkv
from raftkv.client import (
    BadRequest,
    Client,
    Compacted,
    RaftKVError,
    SessionExpired,
    Timeout,
    Unavailable,
)
from raftkv.kv import KeyValue, KVStore
from raftkv.security import ServerKeys
from raftkv.txn import Compare, Delete, Get, Put, TxnResult
from raftkv.wire import (
    ClientRequest,
    InvalidRequest,
    MalformedFrame,
    ReplyCode,
    ReqOp,
    RequestBatch,
    decode_frame,
    encode_replies,
    encode_reply,
)

DEADLINE = 10.0  # seconds; reached only when a test fails

Answer = tuple[int, object, int] | None  # (code, value, leader_hint); None drops it
Handler = Callable[[ClientRequest], Answer]


class FakeNode:
    """A ROUTER on a free loopback port served by a background thread: each request is
    recorded in `requests` and answered with `handler(request)`. The requests of a REQS
    frame are answered in one REPS frame, as a node does; `batches` counts them.
    `batch_replies`: a lone request's reply goes in a REPS frame too (what a node sends a
    client that once sent it a REQS frame). `keys`: the ROUTER is a CurveZMQ server
    admitting the keys of `keys`."""

    def __init__(self, ctx: zmq.Context, handler: Handler, *, batch_replies: bool = False,
                 keys: ServerKeys | None = None) -> None:
        self.handler = handler
        self.batch_replies = batch_replies
        self.requests: list[ClientRequest] = []
        self.batches = 0
        self.sock = ctx.socket(zmq.ROUTER)
        if keys is not None:
            keys.serve(self.sock)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:*")
        self.address: str = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-node", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(10):
                continue
            identity, frame = self.sock.recv_multipart()
            try:
                got = decode_frame(frame, identity=identity)
            except InvalidRequest as e:
                answer: Answer = (ReplyCode.BAD_REQUEST, e.message, 0)
                self.sock.send_multipart([identity, encode_reply(e.request_id, *answer)])
                continue
            except MalformedFrame:
                continue
            if type(got) is not RequestBatch:
                got = RequestBatch([got], [])
            else:
                self.batches += 1
            replies = [encode_reply(e.request_id, ReplyCode.BAD_REQUEST, e.message, 0)
                       for e in got.invalid]
            for req in got.requests:
                self.requests.append(req)
                answer = self.handler(req)
                if answer is not None:
                    replies.append(encode_reply(req.request_id, *answer))
            if len(replies) == 1 and not self.batch_replies:
                self.sock.send_multipart([identity, replies[0]])
            elif replies:
                self.sock.send_multipart([identity, encode_replies(replies)])

    def ops(self, op: ReqOp) -> list[ClientRequest]:
        return [r for r in list(self.requests) if r.op == op]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(DEADLINE)
        self.sock.close(linger=0)


class FakeKV:
    """A leader's answers from a real state machine: writes and OPEN_SESSION are
    applied at consecutive log indexes, reads served from the store."""

    def __init__(self, max_sessions: int = 10_000) -> None:
        self.store = KVStore(max_sessions=max_sessions)
        self.index = 0

    def apply(self, data: bytes) -> tuple[int, object, int]:
        self.index += 1
        reply = self.store.apply(self.index, data)
        return reply.code, reply.value, 0

    def __call__(self, req: ClientRequest) -> Answer:
        if req.op == ReqOp.GET or req.op == ReqOp.GET_STALE:
            return ReplyCode.OK, self.store.get(req.key), 0
        if req.op == ReqOp.SCAN:
            pairs = self.store.scan(req.key, req.limit, req.start)
            return ReplyCode.OK, [list(p) for p in pairs], 0
        if req.op == ReqOp.GET_KV:
            kv = self.store.get_kv(req.key)
            return ReplyCode.OK, None if kv is None else list(kv), 0
        return self.apply(req.command())


def not_leader(hint: int) -> Handler:
    return lambda req: (ReplyCode.NOT_LEADER, "not the leader", hint)


def drop(req: ClientRequest) -> Answer:
    return None


def repeating_watch_node(asked: list[int]) -> Handler:
    """A node answering four WATCHes (recording each one's revision in `asked`): events
    3 and 4, then 4 again with 5 (a node repeating revision 4), none, then 9."""
    answers = iter([
        [5, [[3, 1, b"k", b"a"], [4, 2, b"k", None]]],
        [6, [[4, 2, b"k", None], [5, 1, b"k", b"b"]]],
        [9, []],
        [10, [[9, 1, b"k", b"c"]]],
    ])

    def watch_node(req: ClientRequest) -> Answer:
        asked.append(req.revision)
        return ReplyCode.OK, next(answers), 0

    return watch_node


def first_put_reply_lost(kv_handler: FakeKV, *, evict: bool = False) -> Handler:
    """`kv_handler`'s answers, but the first PUT's reply is lost after it was applied;
    `evict`: its session is evicted with it (another OPEN_SESSION, in a store that keeps
    one), so that the retry finds it gone."""
    lost: list[ClientRequest] = []

    def handler(req: ClientRequest) -> Answer:
        answer = kv_handler(req)
        if req.op == ReqOp.PUT and not lost:
            lost.append(req)
            if evict:
                kv_handler.apply(ClientRequest(0, ReqOp.OPEN_SESSION).command())
            return None
        return answer

    return handler


def dead_address() -> str:
    """A loopback port nothing listens on (free when asked)."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


def io_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "raftkv-client-io" and t.is_alive()]


def wait_until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {DEADLINE}s waiting for {what}")
        time.sleep(0.002)


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
def node(ctx: zmq.Context) -> Iterator[Callable[[Handler], FakeNode]]:
    made: list[FakeNode] = []

    def make(handler: Handler) -> FakeNode:
        n = FakeNode(ctx, handler)
        made.append(n)
        return n

    yield make
    for n in made:
        n.stop()


@pytest.fixture
def client() -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(addresses: object, **kw: object) -> Client:
        c = Client(addresses, **kw)  # type: ignore[arg-type]
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


# ---- the API -----------------------------------------------------------------------


def test_round_trip_of_every_operation(node, client) -> None:
    kv = client(node(FakeKV()).address)
    assert kv.get("user:1") is None
    assert kv.put("user:1", "alice") == 2  # its revision: OPEN_SESSION took index 1
    assert kv.get("user:1") == b"alice"
    assert kv.get(b"user:1") == b"alice"
    assert kv.cas("user:1", "bob", "carol") is False
    assert kv.cas("user:1", b"alice", b"bob") is True
    assert kv.cas("user:2", None, "dave") is True  # None: expected absent
    assert kv.put(b"other", b"\x00\xff") == 6
    assert kv.scan("user:", limit=100) == [(b"user:1", b"bob"), (b"user:2", b"dave")]
    assert kv.scan("user:", limit=1) == [(b"user:1", b"bob")]
    assert kv.delete("user:1") is True
    assert kv.delete("user:1") is False
    assert kv.get("user:1") is None
    assert kv.get(b"other") == b"\x00\xff"


def test_revisions_a_txn_and_a_cas_on_the_mod_revision(node, client) -> None:
    kv = client(node(FakeKV()).address)
    assert kv.get_kv("cfg") is None
    first = kv.put("cfg", "v1")
    assert kv.get_kv("cfg") == KeyValue(b"v1", first, first, 1)
    kv.put("cfg", "v2")
    again = kv.put("cfg", "v1")  # the value is back: a value compare cannot tell
    assert kv.cas("cfg", None, "mine", mod_revision=first) is False  # ABA caught
    assert kv.cas("cfg", None, "mine", mod_revision=again) is True
    assert kv.get_kv("cfg").version == 4
    assert kv.cas("new", None, "x", mod_revision=0) is True  # 0: absent
    with pytest.raises(ValueError, match="either"):
        kv.cas("cfg", "mine", "x", mod_revision=again)
    r = kv.txn(compare=[Compare.value("cfg") == "mine", Compare.version("cfg") > 3],
               success=[Put("a", "1"), Get("a"), Delete("new")], failure=[Get("cfg")])
    assert r.succeeded and r.results[0] == r.results[1].mod_revision and r.results[2] is True
    r = kv.txn(compare=[Compare.create("cfg") < first], failure=[Get("cfg"), Get("absent")])
    assert r == TxnResult(False, [kv.get_kv("cfg"), None])
    with pytest.raises(TypeError, match="Compare"):
        kv.txn(compare=[("cfg", "==", "x")])
    with pytest.raises(TypeError, match="int"):
        Compare.mod("cfg") == "x"  # noqa: B015 (builds the compare, which refuses)
    with pytest.raises(BadRequest, match="written twice"):
        kv.txn(success=[Put("k", "1"), Delete("k")])


def test_scan_iter_pages_through_every_key_in_order(node, client) -> None:
    kv = client(node(FakeKV()).address)
    keys = [f"k{i:02d}".encode() for i in range(7)]
    for k in reversed(keys):
        kv.put(k, k + b"!")
    kv.put("other", "x")
    assert list(kv.scan_iter("k", page=2)) == [(k, k + b"!") for k in keys]
    assert list(kv.scan_iter("k", page=7)) == [(k, k + b"!") for k in keys]  # a full last page
    assert list(kv.scan_iter("k", start="k05", page=3)) == [(k, k + b"!") for k in keys[5:]]
    assert kv.scan("k", 2, start="k03") == [(b"k03", b"k03!"), (b"k04", b"k04!")]
    with pytest.raises(ValueError, match="page"):
        next(kv.scan_iter("k", page=0))


def test_scan_iter_stops_with_an_error_when_a_node_ignores_the_cursor(node, client) -> None:
    class NoCursor(FakeKV):
        def __call__(self, req: ClientRequest) -> Answer:
            req.start = b""  # a node of a build before cursors, or a broken one
            return super().__call__(req)

    kv = client(node(NoCursor()).address)
    for i in range(3):
        kv.put(f"k{i}", "v")
    with pytest.raises(RaftKVError, match="SCAN from"):
        list(kv.scan_iter("k", page=2))


def test_a_watch_asks_from_the_revision_after_the_last_event_and_never_repeats_one(
        node, client) -> None:
    asked: list[int] = []
    kv = client(node(repeating_watch_node(asked)).address)
    w = kv.watch("k", start_revision=3)
    got = [next(w) for _ in range(4)]
    assert [(e.revision, e.type, e.value) for e in got] == [
        (3, "put", b"a"), (4, "delete", None), (5, "put", b"b"), (9, "put", b"c")]
    assert asked == [3, 5, 6, 9] and w.next_revision == 10
    w.close()
    assert list(w) == []


def test_a_watch_past_what_the_node_keeps_raises_compacted(node, client) -> None:
    kv = client(node(lambda req: (ReplyCode.COMPACTED, 42, 0)).address)
    with pytest.raises(Compacted) as e:
        kv.watch("k", start_revision=7).poll()
    assert e.value.oldest == 42 and "42" in str(e.value)
    with pytest.raises(ValueError, match="start_revision"):
        kv.watch("k", start_revision=0)


def test_a_watch_one_node_has_compacted_is_served_by_another_that_keeps_it(
        node, client) -> None:
    """Each node keeps its own history (a restarted one, only what it replayed): the
    client asks the others before it gives up on the revision."""
    def keeping(events: list) -> Handler:
        return lambda req: (ReplyCode.OK, [req.revision + 1, events], 0)

    restarted, behind = node(lambda req: (ReplyCode.COMPACTED, 40, 0)), dead_address()
    keeper = node(keeping([[7, 1, b"k", b"v"]]))
    kv = client([restarted.address, behind, keeper.address], timeout=DEADLINE)
    w = kv.watch("k", start_revision=7)
    assert [(e.revision, e.value) for e in w.poll()] == [(7, b"v")]
    assert len(restarted.requests) == 1 and len(keeper.requests) == 1

    # Every node that answers has compacted: the oldest revision any of them keeps.
    other = node(lambda req: (ReplyCode.COMPACTED, 35, 0))
    kv = client([restarted.address, other.address], timeout=DEADLINE)
    with pytest.raises(Compacted) as e:
        kv.watch("k", start_revision=7).poll()
    assert e.value.oldest == 35
    # One that never answers: the deadline ends it, still as Compacted, not Unavailable.
    kv = client([restarted.address, dead_address()], timeout=1.0)
    with pytest.raises(Compacted, match="no other node answered") as e:
        kv.watch("k", start_revision=7).poll()
    assert e.value.oldest == 40


def test_a_watch_served_by_a_follower_does_not_make_the_client_take_it_for_leader(
        node, client) -> None:
    store = FakeKV()

    def leader(req: ClientRequest) -> Answer:
        return (ReplyCode.COMPACTED, 40, 0) if req.op == ReqOp.WATCH else store(req)

    def follower(req: ClientRequest) -> Answer:
        if req.op == ReqOp.WATCH:
            return ReplyCode.OK, [req.revision + 1, [[7, 1, b"k", b"v"]]], 0
        return ReplyCode.NOT_LEADER, "not the leader", 1

    n1, n2 = node(leader), node(follower)
    kv = client([n1.address, n2.address], timeout=DEADLINE)
    assert len(kv.watch("k", start_revision=7).poll()) == 1
    assert kv.get("k") is None
    assert [r.op for r in n2.requests] == [ReqOp.WATCH]  # the GET went to the leader


def test_a_compacted_answer_naming_no_revision_is_passed_over(node, client) -> None:
    bad = node(lambda req: (ReplyCode.COMPACTED, "soon", 0))
    keeper = node(lambda req: (ReplyCode.OK, [req.revision + 1, []], 0))
    kv = client([bad.address, keeper.address], timeout=DEADLINE)
    w = kv.watch("k", start_revision=7)
    assert w.poll() == [] and w.next_revision == 8 and len(keeper.requests) == 1
    # Alone, it is no answer: the poll gives nothing (as when no node answers), and the
    # watch stays where it was, rather than resuming from a made-up revision.
    w = client([bad.address], timeout=1.0).watch("k", start_revision=7, wait=0.1)
    assert w.poll() == [] and w.next_revision == 7 and len(bad.requests) > 1


def test_decode_returns_str(node, client) -> None:
    kv = client(node(FakeKV()).address, decode=True)
    kv.put("k", "välue")
    assert kv.get("k") == "välue"
    assert kv.get("absent") is None
    assert kv.scan("k") == [("k", "välue")]


def test_package_exports_the_client_api() -> None:
    assert raftkv.Client is Client
    assert raftkv.Timeout is Timeout and raftkv.SessionExpired is SessionExpired
    assert issubclass(SessionExpired, Timeout)
    for cls in (Unavailable, Timeout, BadRequest, SessionExpired):
        assert issubclass(cls, raftkv.RaftKVError)
    with pytest.raises(AttributeError):
        raftkv.NoSuchThing  # noqa: B018


def test_stale_reads_are_spread_over_any_node(node, client) -> None:
    def follower(value: bytes) -> Handler:
        def answer(req: ClientRequest) -> Answer:
            if req.op == ReqOp.GET_STALE:
                return ReplyCode.OK, value, 3
            return ReplyCode.NOT_LEADER, "not the leader", 3

        return answer

    n1, n2, leader = node(follower(b"old")), node(follower(b"older")), node(FakeKV())
    kv = client([n1.address, n2.address, leader.address])
    kv.put("k", "new")
    seen = {kv.get("k", consistency="stale") for _ in range(6)}
    assert seen == {b"old", b"older", b"new"}
    assert {r.op for r in n1.requests[1:] + n2.requests} == {ReqOp.GET_STALE}
    before = len(n1.requests) + len(n2.requests)
    assert kv.get("k") == b"new"
    assert len(n1.requests) + len(n2.requests) == before  # the leader guess did not move
    with pytest.raises(ValueError, match="consistency"):
        kv.get("k", consistency="eventual")


def test_bad_arguments_fail_before_sending(client) -> None:
    with pytest.raises(ValueError, match="no address"):
        Client([])
    with pytest.raises(ValueError, match="cannot connect"):
        Client("not an endpoint")
    kv = client(dead_address())
    with pytest.raises(TypeError, match="key must be str or bytes"):
        kv.put(1, "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        kv.get("k", timeout=0)


def test_bad_request_raises_with_the_servers_message(node, client) -> None:
    kv = client(node(FakeKV()).address)
    with pytest.raises(BadRequest, match="key of 2000 bytes exceeds the limit of 1024"):
        kv.get("x" * 2000)
    with pytest.raises(BadRequest, match="key of 2000 bytes exceeds the limit of 1024"):
        kv.put("x" * 2000, "v")
    kv.put("k", "v")  # the session survived the refused write
    assert kv.get("k") == b"v"


# ---- finding the leader ------------------------------------------------------------


def test_not_leader_with_hint_goes_to_the_hinted_node(node, client) -> None:
    n1, n2, leader = node(not_leader(3)), node(not_leader(3)), node(FakeKV())
    kv = client([n1.address, n2.address, leader.address])  # node ids 1, 2, 3
    kv.put("k", "v")
    assert kv.get("k") == b"v"
    assert len(n1.requests) == 1  # the first request; then the client knows the leader
    assert n2.requests == []


def test_mapping_of_node_ids_resolves_hints(node, client) -> None:
    follower, leader = node(not_leader(9)), node(FakeKV())
    kv = client({5: follower.address, 9: leader.address})
    kv.put("k", "v")
    assert kv.get("k") == b"v"
    assert len(follower.requests) == 1


def test_not_leader_without_hint_tries_the_next_address(node, client) -> None:
    n1, leader = node(not_leader(0)), node(FakeKV())
    kv = client([n1.address, leader.address])
    kv.put("k", "v")
    assert kv.get("k") == b"v"
    assert len(n1.requests) == 1


def test_hint_to_an_unknown_node_is_explained(node, client) -> None:
    kv = client(node(not_leader(2)).address, attempt_timeout=0.05)
    with pytest.raises(Unavailable, match="leader is node 2, whose address"):
        kv.get("k", timeout=0.3)


def test_dead_address_is_skipped_without_waiting(node, client) -> None:
    leader = node(FakeKV())
    kv = client([dead_address(), leader.address], attempt_timeout=5.0)
    start = time.monotonic()
    kv.put("k", "v")
    assert kv.get("k") == b"v"
    assert time.monotonic() - start < 2.0  # no attempt timeout was spent on it


def test_unavailable_node_is_retried_until_it_serves(node, client) -> None:
    kv_handler = FakeKV()
    refusals = [2]

    def flaky(req: ClientRequest) -> Answer:
        if refusals[0]:
            refusals[0] -= 1
            return ReplyCode.UNAVAILABLE, "election under way", 0
        return kv_handler(req)

    fake = node(flaky)
    kv = client(fake.address)
    assert kv.get("k") is None
    assert len(fake.requests) == 3


# ---- retries, deadlines, sessions ---------------------------------------------------


def test_retried_write_reuses_its_client_id_and_seq(node, client) -> None:
    kv_handler = FakeKV()
    fake = node(first_put_reply_lost(kv_handler))
    kv = client(fake.address, attempt_timeout=0.1)
    kv.put("k", "v1")
    kv.put("k", "v2")
    puts = fake.ops(ReqOp.PUT)
    assert len(puts) == 3
    first, retry, second = puts
    assert (retry.client_id, retry.seq) == (first.client_id, first.seq) == (first.client_id, 1)
    assert retry.request_id != first.request_id
    assert (second.client_id, second.seq) == (first.client_id, 2)
    assert kv_handler.store.stats.duplicates == 1  # answered from the session, not reapplied
    assert len(fake.ops(ReqOp.OPEN_SESSION)) == 1
    assert kv.get("k") == b"v2"


def test_reads_carry_no_session(node, client) -> None:
    fake = node(FakeKV())
    kv = client(fake.address)
    kv.get("k")
    kv.scan("")
    assert [r.op for r in fake.requests] == [ReqOp.GET, ReqOp.SCAN]
    assert all(r.client_id == 0 and r.seq == 0 for r in fake.requests)


def test_deadline_without_any_answer_is_unavailable(node, client) -> None:
    silent = node(drop)
    kv = client([silent.address, dead_address()], attempt_timeout=0.05)
    start = time.monotonic()
    with pytest.raises(Unavailable) as e:
        kv.get("k", timeout=0.4)
    assert 0.4 <= time.monotonic() - start < 2.0
    assert silent.address in str(e.value) and "no reply" in str(e.value)
    assert "not connected" in str(e.value)
    # A write that cannot even open its session was never sent: also Unavailable.
    with pytest.raises(Unavailable):
        kv.put("k", "v", timeout=0.3)


def test_write_refused_everywhere_is_unavailable(node, client) -> None:
    kv_handler = FakeKV()

    def sessions_only(req: ClientRequest) -> Answer:
        if req.op == ReqOp.OPEN_SESSION:
            return kv_handler(req)
        return ReplyCode.NOT_LEADER, "not the leader", 0

    kv = client(node(sessions_only).address, attempt_timeout=0.05)
    with pytest.raises(Unavailable, match="it had no effect"):
        kv.put("k", "v", timeout=0.3)


def test_one_address_that_knows_no_leader_yet_is_retried_until_it_routes(node, client) -> None:
    """What the controller answers while it knows no leader (NOT_LEADER, hint 0): the
    client, given that one address, retries it (pausing after each refusal) and the
    write goes through once the controller routes again. The client owns the retries."""
    kv_handler = FakeKV()
    refused: list[ReqOp] = []

    def router(req: ClientRequest) -> Answer:
        if len(refused) < 5:
            refused.append(req.op)
            return ReplyCode.NOT_LEADER, "no leader known; retry", 0
        return kv_handler(req)

    kv = client(node(router).address)
    kv.put("k", "v", timeout=5)
    assert kv.get("k") == b"v"
    assert len(refused) == 5


def test_write_sent_but_never_answered_is_timeout(node, client) -> None:
    kv_handler = FakeKV()

    def swallow_puts(req: ClientRequest) -> Answer:
        return None if req.op == ReqOp.PUT else kv_handler(req)

    fake = node(swallow_puts)
    kv = client(fake.address, attempt_timeout=0.05)
    with pytest.raises(Timeout) as e:
        kv.put("k", "v", timeout=0.4)
    assert type(e.value) is Timeout
    assert "may or may not have been applied" in str(e.value)
    assert fake.address in str(e.value)
    puts = fake.ops(ReqOp.PUT)
    assert len(puts) >= 2 and len({(r.client_id, r.seq) for r in puts}) == 1


def test_expired_session_on_first_delivery_is_replaced(node, client) -> None:
    kv_handler = FakeKV(max_sessions=1)
    fake = node(kv_handler)
    a, b = client(fake.address), client(fake.address)
    a.put("k", "a1")
    b.put("k", "b1")  # opens a second session, evicting a's
    a.put("k", "a2")  # SESSION_EXPIRED, nothing applied: a new session, then applied
    assert a.get("k") == b"a2"
    assert len(fake.ops(ReqOp.OPEN_SESSION)) == 3
    assert kv_handler.store.stats.expired == 1


def test_session_expired_during_retry_is_ambiguous(node, client) -> None:
    fake = node(first_put_reply_lost(FakeKV(max_sessions=1), evict=True))
    kv = client(fake.address, attempt_timeout=0.1)
    with pytest.raises(SessionExpired, match="may or may not have been applied"):
        kv.put("k", "v")
    kv.put("k", "w")  # the next write opens a fresh session
    assert kv.get("k") == b"w"


def test_at_most_once_write_opens_no_session(node, client) -> None:
    kv_handler = FakeKV()
    fake = node(kv_handler)
    kv = client(fake.address)
    kv.put("k", "v", at_most_once=True)
    assert kv.cas("k", "v", "w", at_most_once=True) is True
    assert kv.delete("k", at_most_once=True) is True
    assert [r.op for r in fake.requests] == [ReqOp.PUT, ReqOp.CAS, ReqOp.DELETE]
    assert all(r.client_id == 0 and r.seq == 0 for r in fake.requests)
    assert kv_handler.index == 3 and kv_handler.store.stats.sessionless == 3


def test_at_most_once_write_unanswered_is_never_resent(node, client) -> None:
    fake = node(drop)
    kv = client([fake.address, node(FakeKV()).address], attempt_timeout=0.05)
    with pytest.raises(Timeout, match="may or may not have been applied"):
        kv.put("k", "v", timeout=0.4, at_most_once=True)
    assert len(fake.requests) == 1  # waited for to the deadline, not tried elsewhere


def test_at_most_once_write_unavailable_is_timeout_at_once(node, client) -> None:
    fake = node(lambda req: (ReplyCode.UNAVAILABLE, "leadership lost", 0))
    kv = client(fake.address)
    start = time.monotonic()
    with pytest.raises(Timeout, match="not resent"):
        kv.put("k", "v", timeout=DEADLINE, at_most_once=True)
    assert time.monotonic() - start < DEADLINE / 2 and len(fake.requests) == 1


def test_at_most_once_write_follows_a_refusal(node, client) -> None:
    kv_handler = FakeKV()
    follower, leader = node(not_leader(2)), node(kv_handler)
    kv = client([follower.address, leader.address])
    kv.put("k", "v", at_most_once=True)  # NOT_LEADER: never proposed, safe to resend
    assert len(follower.requests) == 1 and len(leader.requests) == 1
    assert kv_handler.store.get(b"k") == b"v"


# ---- threads and lifecycle ---------------------------------------------------------


def test_concurrent_threads_share_one_client(node, client) -> None:
    kv_handler = FakeKV()
    fake = node(kv_handler)
    kv = client(fake.address)
    errors: list[BaseException] = []
    n_threads, rounds = 32, 10  # 5 operations per round: 50 per thread

    def worker(t: int) -> None:
        try:
            for i in range(rounds):
                key, value = f"t{t}:{i}", f"v{t}.{i}"
                kv.put(key, value)
                assert kv.get(key) == value.encode()
                assert kv.cas(key, value, value + "!") is True
                assert kv.get(key) == (value + "!").encode()
                assert kv.delete(key) is True
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(fake.requests) >= n_threads * rounds * 5
    # One session per write in flight at once, at most one per thread; none stale.
    assert 1 <= kv_handler.store.session_count <= n_threads
    assert kv_handler.store.stats.stale == 0
    assert kv.scan("t") == []


@pytest.mark.parametrize("as_list", [True, False], ids=["node addresses", "one address"])
def test_it_batches_requests_and_takes_batched_replies(node, client, as_list) -> None:
    """Node addresses, or a single one (the controller's, which takes REQS too)."""
    kv_handler = FakeKV()
    fake = node(kv_handler)
    kv = client([fake.address] if as_list else fake.address)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(20):
                kv.put(f"t{t}:{i}", f"v{i}")
                assert kv.get(f"t{t}:{i}") == f"v{i}".encode()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert errors == []
    assert len(fake.ops(ReqOp.PUT)) == 16 * 20
    assert fake.batches >= 1  # 16 threads at once: some turns had several frames
    assert kv._io.stats["malformed"] == 0


def test_close_stops_the_io_thread(node, client) -> None:
    before = len(io_threads())
    kv = Client(node(FakeKV()).address)
    kv.put("k", "v")
    assert len(io_threads()) == before + 1
    kv.close()
    kv.close()  # idempotent
    assert len(io_threads()) == before
    with pytest.raises(RaftKVError, match="closed"):
        kv.get("k")
    with Client(node(FakeKV()).address) as kv2:
        kv2.put("k", "v")
    assert len(io_threads()) == before


def test_close_fails_requests_in_flight(node, client) -> None:
    silent = node(drop)
    kv = client(silent.address, timeout=DEADLINE)
    failures: list[BaseException] = []

    def read() -> None:
        try:
            kv.get("k")
        except BaseException as e:
            failures.append(e)

    t = threading.Thread(target=read)
    t.start()
    wait_until(lambda: silent.requests, "the request to arrive")
    kv.close()
    t.join(DEADLINE)
    assert not t.is_alive()
    assert len(failures) == 1 and type(failures[0]) is RaftKVError
    assert "closed" in str(failures[0])


def test_a_late_compacted_answer_during_a_pause_does_not_end_the_watch() -> None:
    """A node's COMPACTED that comes late, in the pause after a fruitless round, is one
    node's answer like any other: the watch still asks the nodes that have not said so
    (it used to end there, as if every node had compacted)."""
    from raftkv import Retry
    from raftkv._requests import ATTEMPT, PAUSE, Delivery, deliver
    from raftkv.wire import ClientReply

    req = ClientRequest(0, ReqOp.WATCH, key=b"k", revision=7, wait_ms=0)
    d = Delivery(req, ["a", "b", "c"], {}, 0, Retry(), time.monotonic() + DEADLINE,
                 DEADLINE, write=False, once=False, wait=0.0, learn=lambda i: None,
                 failures={}, credentials=None)
    steps = deliver(d)
    assert next(steps)[0] == ATTEMPT
    assert steps.send(None)[0] == ATTEMPT  # a: no reply in time; on to b
    assert steps.send(None)[0] == ATTEMPT  # b: none either; on to c
    assert steps.send(None)[0] == PAUSE  # c: none: a fruitless round, a pause
    step, _ = steps.send((0, ClientReply(0, ReplyCode.COMPACTED, 40)))  # a, at last
    while step == PAUSE:  # the rest of the pause, if any
        step, _ = steps.send(None)
    assert step == ATTEMPT and d.target != 0 and d.compacted.keys() == {0}
    # b and c keep the history: the next answer is the watch's.
    ok = ClientReply(0, ReplyCode.OK, [8, []])
    with pytest.raises(StopIteration) as done:
        steps.send((d.target, ok))
    assert done.value.value == (ok, True)


def test_leases_lists_them_in_seconds_and_refuses_a_malformed_answer(node, client) -> None:
    table = [[3, 1500, 250, [b"a", b"b"]], [9, 2**40, 2**40, []]]
    kv = client(node(lambda req: (ReplyCode.OK, [12, table], 0)).address, decode=True)
    listing = kv.leases()
    assert listing.revision == 12 and [tuple(i) for i in listing.leases] == [
        (3, 1.5, 0.25, ["a", "b"]), (9, 2**40 / 1000, 2**40 / 1000, [])]
    assert round(listing.leases[1].ttl * 1000) == 2**40  # a backup's ms, back exactly
    for bad in (None, [12], [True, []], [12, None], [12, [None]], [12, [[3, 1500, 250]]],
                [12, [["3", 1500, 250, []]]], [12, [[3, 1.5, 250, []]]],
                [12, [[3, 1500, 250, [1]]]], [12, [[3, 1500, 250, None]]]):
        kv = client(node(lambda req, bad=bad: (ReplyCode.OK, bad, 0)).address)
        with pytest.raises(RaftKVError, match="LEASE_"):
            kv.leases()
