"""The ZeroMQ transport (raftkv/transport.py) on loopback: peers, clients, garbage,
partitions, dead peers. Every wait is a poll loop with a deadline, never a bare sleep."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import msgpack
import pytest
import zmq

from raftkv import wire
from raftkv.raft.types import Entry, Message, MsgType
from raftkv.transport import STAT_KEYS, Transport
from raftkv.wire import (
    VERSION,
    ClientReply,
    ClientRequest,
    Kind,
    ReplyCode,
    ReqOp,
    decode_replies,
    decode_reply,
    encode_message,
    encode_request,
    encode_requests,
)

DEADLINE = 10.0  # seconds; generous for a loaded CI machine, reached only on failure


def free_ports(n: int) -> list[int]:
    """Ports free right now (the kernel hands out distinct ephemeral ports)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(cond: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.002)


def hb(frm: int, to: int, context: int = 0) -> Message:
    return Message(MsgType.HEARTBEAT, to, frm, 1, commit=0, context=context)


class Inbox:
    """What one transport received, accumulated across polls."""

    def __init__(self, t: Transport) -> None:
        self.t = t
        self.messages: list[Message] = []
        self.requests: list[ClientRequest] = []

    def pump(self) -> None:
        if self.t.poll(5):
            msgs, reqs = self.t.recv_all()
            self.messages += msgs
            self.requests += reqs

    def wait_message(self, pred: Callable[[Message], bool], what: str) -> Message:
        found: list[Message] = []

        def cond() -> bool:
            self.pump()
            found[:] = [m for m in self.messages if pred(m)]
            return bool(found)

        wait_until(cond, what)
        return found[0]

    def wait_request(self) -> ClientRequest:
        wait_until(lambda: self.pump() or bool(self.requests), "a client request")
        return self.requests.pop(0)


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., dict[int, Transport]]]:
    made: list[Transport] = []

    def make(n: int = 3, connect: bool = True, **kw) -> dict[int, Transport]:
        ports = free_ports(n)
        addrs = {i + 1: f"tcp://127.0.0.1:{p}" for i, p in enumerate(ports)}
        ts = {i: Transport(i, addrs[i], addrs, **kw) for i in addrs}
        made.extend(ts.values())
        if connect:
            wait_connected(ts)
        return ts

    yield make
    for t in made:
        t.close()


def wait_connected(ts: dict[int, Transport]) -> None:
    """Until every DEALER has a completed connection (IMMEDIATE drops sends before
    that), send heartbeats; then drain them so tests start from empty inboxes."""
    pending = {(a, b) for a in ts for b in ts if a != b}

    def cond() -> bool:
        for a, b in pending:
            ts[a].send(hb(a, b, context=999))
        for b, t in ts.items():
            if t.poll(5):
                msgs, _ = t.recv_all()
                pending.difference_update((m.frm, b) for m in msgs)
        return not pending

    wait_until(cond, "all peers connected")
    for t in ts.values():
        while t.poll(20):
            t.recv_all()
        for k in t.stats:
            t.stats[k] = 0


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def client(zctx: zmq.Context) -> Callable[..., zmq.Socket]:
    def make(address: str, identity: bytes | None = None) -> zmq.Socket:
        s = zctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        if identity is not None:
            s.setsockopt(zmq.ROUTING_ID, identity)
        s.connect(address)
        return s

    return make


def recv_reply(sock: zmq.Socket) -> ClientReply:
    assert sock.poll(int(DEADLINE * 1000)), "no reply before the deadline"
    return decode_reply(sock.recv())


# ---- peers --------------------------------------------------------------------------


def test_raft_messages_flow_both_ways_between_three_nodes(make_cluster) -> None:
    ts = make_cluster(3)
    inbox = {i: Inbox(t) for i, t in ts.items()}
    app = Message(
        MsgType.APP,
        2,
        1,
        4,
        log_term=3,
        index=9,
        entries=[Entry(4, 10, data=b"a" * 100), Entry(4, 11, data=b"b")],
        commit=8,
    )
    assert ts[1].send(app)
    assert inbox[2].wait_message(lambda m: m.type == MsgType.APP, "APP at n2") == app
    resp = Message(MsgType.APP_RESP, 1, 2, 4, index=11)
    ts[2].send(resp)
    assert inbox[1].wait_message(lambda m: m.frm == 2, "APP_RESP at n1") == resp
    vote = Message(MsgType.VOTE, 1, 3, 5, log_term=4, index=11)
    assert ts[3].send_many([vote, Message(MsgType.VOTE, 2, 3, 5, log_term=4, index=11)]) == 2
    assert inbox[1].wait_message(lambda m: m.frm == 3, "VOTE at n1") == vote
    assert inbox[2].wait_message(lambda m: m.frm == 3, "VOTE at n2").to == 2
    assert ts[1].stats["frames_out"] == 1 and ts[1].stats["frames_in"] >= 2


def test_messages_to_one_peer_arrive_in_order(make_cluster) -> None:
    ts = make_cluster(2)
    inbox = Inbox(ts[2])
    assert ts[1].send_many(hb(1, 2, context=i) for i in range(500)) == 500
    wait_until(lambda: inbox.pump() or len(inbox.messages) == 500, "500 heartbeats")
    assert [m.context for m in inbox.messages] == list(range(500))


def test_message_for_an_unknown_peer_is_dropped_and_counted(make_cluster) -> None:
    ts = make_cluster(2)
    assert not ts[1].send(hb(1, 7))
    assert ts[1].stats["dropped_send"] == 1


def test_a_peer_added_and_removed_at_run_time(make_cluster) -> None:
    ts = make_cluster(3)
    t1, t3 = ts[1], ts[3]
    assert t1.remove_peer(3) and not t1.remove_peer(3)
    assert not t1.send(hb(1, 3))
    assert t1.stats["dropped_send"] == 1
    t3.send(hb(3, 1, context=5))

    def dropped() -> bool:
        if t1.poll(5):
            assert t1.recv_all() == ([], [])
        return t1.stats["dropped_unknown_peer"] >= 1

    wait_until(dropped, "the removed peer's frame to be dropped")
    assert t1.set_peer(3, t3.endpoint) and not t1.set_peer(3, t3.endpoint)
    assert not t1.set_peer(1, "tcp://127.0.0.1:1")  # our own id: ignored
    inbox3 = Inbox(t3)

    def delivered() -> bool:
        t1.send(hb(1, 3, context=7))  # dropped until the new DEALER is connected
        inbox3.pump()
        return any(m.context == 7 for m in inbox3.messages)

    wait_until(delivered, "a heartbeat to the re-added peer")
    t3.send(hb(3, 1, context=8))
    Inbox(t1).wait_message(lambda m: m.context == 8, "a frame from the re-added peer")


# ---- clients ------------------------------------------------------------------------


def test_client_request_and_reply_through_the_router(make_cluster, client) -> None:
    ts = make_cluster(2)
    c = client(ts[1].endpoint)
    put = ClientRequest(41, ReqOp.PUT, key=b"k", value=b"v", client_id=3, seq=1)
    c.send(encode_request(put))
    req = Inbox(ts[1]).wait_request()
    assert (req.request_id, req.op, req.key, req.value, req.client_id, req.seq) == (
        41,
        ReqOp.PUT,
        b"k",
        b"v",
        3,
        1,
    )
    assert req.identity  # ZeroMQ's generated routing id for the client
    ts[1].leader_hint = 1
    assert ts[1].reply(req.identity, req.request_id, ReplyCode.OK)
    assert recv_reply(c) == ClientReply(41, ReplyCode.OK, None, 1)
    assert ts[1].reply(req.identity, 42, ReplyCode.NOT_LEADER, "ask n2", leader_hint=2)
    assert recv_reply(c) == ClientReply(42, ReplyCode.NOT_LEADER, "ask n2", 2)


def test_a_client_that_batches_gets_one_reply_frame_per_flush(make_cluster, client) -> None:
    ts = make_cluster(1)
    t = ts[1]
    batcher, single = client(t.endpoint), client(t.endpoint)
    batcher.send(encode_requests([encode_request(ClientRequest(i, ReqOp.GET, key=b"k"))
                                  for i in (1, 2, 3)]))
    single.send(encode_request(ClientRequest(4, ReqOp.GET, key=b"k")))
    inbox = Inbox(t)
    got = [inbox.wait_request() for _ in range(4)]
    by_id = {r.request_id: r for r in got}
    assert sorted(by_id) == [1, 2, 3, 4]
    for rid in (1, 2, 3, 4):
        assert t.reply(by_id[rid].identity, rid, ReplyCode.OK, b"v%d" % rid)
    # The REQ-only client was answered at once; the batching one only on flush.
    assert recv_reply(single) == ClientReply(4, ReplyCode.OK, b"v4", 0)
    assert not batcher.poll(50)
    t.flush()
    assert batcher.poll(int(DEADLINE * 1000))
    assert decode_replies(batcher.recv()) == [
        ClientReply(rid, ReplyCode.OK, b"v%d" % rid, 0) for rid in (1, 2, 3)]
    assert not batcher.poll(50)  # one frame for the three
    assert t.stats["batches_in"] == 1 and t.stats["batches_out"] == 1
    # A lone held reply leaves as a plain REP frame.
    assert t.reply(by_id[1].identity, 5, ReplyCode.OK)
    t.flush()
    assert recv_reply(batcher) == ClientReply(5, ReplyCode.OK, None, 0)


def test_reply_to_a_vanished_client_is_dropped_and_counted(make_cluster) -> None:
    ts = make_cluster(1)
    assert not ts[1].reply(b"\0nobody", 1, ReplyCode.OK)
    assert ts[1].stats["dropped_reply"] == 1


def test_oversize_value_is_answered_bad_request_naming_the_limit(make_cluster, client) -> None:
    ts = make_cluster(1, max_value=16)
    c = client(ts[1].endpoint)
    c.send(
        encode_request(ClientRequest(5, ReqOp.PUT, key=b"k", value=b"v" * 17, client_id=1, seq=1))
    )
    ts[1].leader_hint = 1
    inbox = Inbox(ts[1])
    wait_until(lambda: inbox.pump() or ts[1].stats["bad_requests"] == 1, "the bad request")
    assert inbox.requests == []  # answered by the transport, never seen by the node
    reply = recv_reply(c)
    assert (reply.request_id, reply.code, reply.leader_hint) == (5, ReplyCode.BAD_REQUEST, 1)
    assert reply.value == "value of 17 bytes exceeds the limit of 16"


def test_request_in_another_protocol_version_gets_a_clear_answer(make_cluster, client) -> None:
    ts = make_cluster(1)
    c = client(ts[1].endpoint)
    c.send(msgpack.packb([VERSION + 1, Kind.REQ, 8, "new-op"]))
    inbox = Inbox(ts[1])
    wait_until(lambda: inbox.pump() or ts[1].stats["bad_requests"] == 1, "the answer")
    reply = recv_reply(c)
    assert reply.code == ReplyCode.BAD_REQUEST and "protocol version" in reply.value


# ---- garbage ------------------------------------------------------------------------


def test_malformed_frames_are_counted_and_dropped_and_the_node_keeps_working(
    make_cluster, client
) -> None:
    ts = make_cluster(2)
    t = ts[1]
    inbox = Inbox(t)
    c = client(t.endpoint)
    c.send(b"\xc1garbage")  # not msgpack
    c.send(b"")  # empty frame
    c.send_multipart([encode_request(ClientRequest(1, ReqOp.STATUS)), b"extra"])
    c.send_multipart([b"a", b"b", encode_request(ClientRequest(1, ReqOp.STATUS))])  # 4 parts
    c.send(b"\x93\x01\x03\x00")  # a reply-kind frame, not for a node
    wait_until(lambda: inbox.pump() or t.stats["dropped_malformed"] == 5, "5 malformed")
    assert inbox.messages == [] and inbox.requests == []
    assert t.stats["frames_in"] == 5
    # Still serves clients and peers afterwards.
    c.send(encode_request(ClientRequest(2, ReqOp.GET, key=b"k")))
    assert inbox.wait_request().request_id == 2
    ts[2].send(hb(2, 1, context=5))
    assert inbox.wait_message(lambda m: m.context == 5, "heartbeat after garbage").frm == 2


def test_peer_frames_with_a_false_sender_or_recipient_are_dropped(make_cluster, client) -> None:
    ts = make_cluster(2)
    t = ts[1]
    inbox = Inbox(t)
    # Keep references: a collected socket closes with LINGER 0, discarding its frames.
    impostor = client(t.endpoint)
    impostor.send(encode_message(hb(2, 1)))  # a client claiming to be n2
    stranger = client(t.endpoint, identity=b"n3")
    stranger.send(encode_message(hb(3, 1)))  # the routing id of no peer
    wait_until(lambda: inbox.pump() or t.stats["dropped_unknown_peer"] == 2, "both drops")
    assert inbox.messages == []
    ts[2].send(hb(2, 1, context=4))  # the genuine n2 still gets through
    assert inbox.wait_message(lambda m: m.context == 4, "n2's heartbeat").frm == 2


def test_peer_frame_addressed_to_another_node_is_dropped(make_cluster) -> None:
    ts = make_cluster(3)
    raw = ts[2]._dealers[1]  # n2's connection to n1, with a frame meant for n3
    raw.send(encode_message(hb(2, 3)))
    inbox = Inbox(ts[1])
    wait_until(lambda: inbox.pump() or ts[1].stats["dropped_unknown_peer"] == 1, "the drop")
    assert inbox.messages == []


# ---- faults -------------------------------------------------------------------------


def test_fault_filter_drops_both_directions_and_heals(make_cluster) -> None:
    ts = make_cluster(3)
    inbox = {i: Inbox(t) for i, t in ts.items()}
    ts[1].set_fault({2})
    assert not ts[1].send(hb(1, 2))  # outbound cut at n1
    assert ts[1].stats["dropped_filtered"] == 1
    assert ts[2].send(hb(2, 1, context=1))  # leaves n2, cut on arrival at n1
    wait_until(lambda: inbox[1].pump() or ts[1].stats["dropped_filtered"] == 2, "inbound drop")
    assert inbox[1].messages == []
    ts[3].send(hb(3, 1, context=3))  # the rest of the cluster is unaffected
    inbox[1].wait_message(lambda m: m.frm == 3, "n3 -> n1 during the partition")
    assert ts[1].send(hb(1, 3))
    inbox[3].wait_message(lambda m: m.frm == 1, "n1 -> n3 during the partition")

    ts[1].set_fault(())
    assert ts[1].send(hb(1, 2, context=7))
    inbox[2].wait_message(lambda m: m.frm == 1 and m.context == 7, "n1 -> n2 healed")
    ts[2].send(hb(2, 1, context=8))
    inbox[1].wait_message(lambda m: m.frm == 2 and m.context == 8, "n2 -> n1 healed")


def test_fault_request_from_the_controller_sets_the_filter(make_cluster, client) -> None:
    ts = make_cluster(3)
    c = client(ts[1].endpoint, identity=b"controller")
    c.send(encode_request(ClientRequest(3, ReqOp.FAULT, peers=frozenset({3, 2}))))
    inbox = Inbox(ts[1])
    wait_until(lambda: inbox.pump() or ts[1].fault == {2, 3}, "the fault to be set")
    assert recv_reply(c) == ClientReply(3, ReplyCode.OK, [2, 3], 0)
    assert inbox.requests == []  # served by the transport
    c.send(encode_request(ClientRequest(4, ReqOp.FAULT)))
    wait_until(lambda: inbox.pump() or ts[1].fault == frozenset(), "the fault to heal")
    assert recv_reply(c).value == []
    assert ts[1].stats["faults_set"] == 2


def test_peers_request_teaches_the_transport_new_members(make_cluster, client) -> None:
    ts = make_cluster(2)
    c = client(ts[1].endpoint, identity=b"controller")
    c.send(encode_request(ClientRequest(5, ReqOp.PEERS,
                                        addresses={1: "tcp://127.0.0.1:1",
                                                   7: "tcp://127.0.0.1:7"})))
    inbox = Inbox(ts[1])
    wait_until(lambda: inbox.pump() or 7 in ts[1].peers, "node 7 to be known")
    assert recv_reply(c) == ClientReply(5, ReplyCode.OK, [2, 7], 0)  # never itself
    assert ts[1].peers[7] == "tcp://127.0.0.1:7" and inbox.requests == []


# ---- dead and slow peers ------------------------------------------------------------


def test_sending_to_a_peer_that_is_not_up_does_not_block(make_cluster) -> None:
    ts = make_cluster(2, connect=False)
    ts[2].close()  # n1's DEALER has nobody to connect to
    start = time.monotonic()
    sent = ts[1].send_many(hb(1, 2) for _ in range(1000))
    elapsed = time.monotonic() - start
    assert sent == 0 and ts[1].stats["dropped_send"] == 1000
    assert elapsed < 1.0, f"1000 sends to a dead peer took {elapsed:.3f}s"


def test_a_peer_that_comes_up_later_is_reached(make_cluster) -> None:
    ports = free_ports(2)
    addrs = {1: f"tcp://127.0.0.1:{ports[0]}", 2: f"tcp://127.0.0.1:{ports[1]}"}
    n1 = Transport(1, addrs[1], addrs)
    n2: Transport | None = None
    try:
        assert not n1.send(hb(1, 2))  # n2 is not up: dropped at once
        assert n1.stats["dropped_send"] == 1
        for _ in range(2):  # n2 comes up late, then restarts on the same address
            if n2 is not None:
                n2.close()
            n2 = Transport(2, addrs[2], addrs)
            inbox = Inbox(n2)

            def delivered(inbox: Inbox = inbox) -> bool:
                n1.send(hb(1, 2))
                inbox.pump()
                return bool(inbox.messages)

            wait_until(delivered, "n1 -> n2 after it came up")
    finally:
        n1.close()
        if n2 is not None:
            n2.close()


def test_a_peer_that_stops_reading_costs_drops_not_blocking(make_cluster) -> None:
    ts = make_cluster(2, hwm=10)
    big = Message(MsgType.APP, 2, 1, 1, index=0, entries=[Entry(1, 1, data=b"x" * 64 * 1024)])
    start = time.monotonic()
    sent = ts[1].send_many(big for _ in range(2000))  # 128 MiB; n2 never reads
    elapsed = time.monotonic() - start
    assert ts[1].stats["dropped_send"] == 2000 - sent > 0
    assert elapsed < 5.0, f"sends to a stalled peer took {elapsed:.3f}s"


def test_stats_start_at_zero_with_every_key() -> None:
    port = free_ports(1)[0]
    with Transport(1, f"tcp://127.0.0.1:{port}", {}) as t:
        assert t.stats == dict.fromkeys(STAT_KEYS, 0)
        assert t.endpoint == f"tcp://127.0.0.1:{port}"


def test_port_zero_binds_a_free_port() -> None:
    with Transport(1, "tcp://127.0.0.1:0", {}) as t:
        assert not t.endpoint.endswith(":0") and t.endpoint.startswith("tcp://127.0.0.1:")


@pytest.fixture
def proxied():
    """A node's transport, and a DEALER connected to it as the controller's is."""
    ctx = zmq.Context()
    node = Transport(1, "tcp://127.0.0.1:0", {}, context=ctx)
    proxy = ctx.socket(zmq.DEALER)
    proxy.setsockopt(zmq.LINGER, 0)
    proxy.connect(node.endpoint)
    try:
        yield node, proxy
    finally:
        proxy.close()
        node.close()
        ctx.destroy(linger=0)


def test_request_relayed_through_a_proxy_envelope_is_answered_through_it(proxied):
    """The controller relays [client id, frame] on its DEALER; the reply carries the
    client id back so the proxy can route it without decoding the payload."""
    node, proxy = proxied
    proxy.send_multipart([b"client-7",
                          wire.encode_request(ClientRequest(9, ReqOp.GET, key=b"k"))])
    req = Inbox(node).wait_request()
    assert req.identity[1] == b"client-7"
    node.reply(req.identity, req.request_id, wire.ReplyCode.OK, b"v")
    assert proxy.poll(5000)
    envelope, reply = proxy.recv_multipart()
    assert envelope == b"client-7" and wire.decode_reply(reply).value == b"v"


def test_a_batch_relayed_through_a_proxy_is_answered_with_one_batch_per_flush(proxied):
    """The controller forwards a client's requests of one turn as one REQS frame under
    that client's envelope; the node holds the replies to that route and sends them as
    one REPS frame, as it does for a client that batches itself."""
    node, proxy = proxied
    proxy.send_multipart([b"client-7", encode_requests(
        [encode_request(ClientRequest(i, ReqOp.GET, key=b"k")) for i in (1, 2, 3)])])
    inbox = Inbox(node)
    requests = [inbox.wait_request() for _ in range(3)]
    assert {r.identity[1] for r in requests} == {b"client-7"}
    for r in requests:
        node.reply(r.identity, r.request_id, wire.ReplyCode.OK, b"v%d" % r.request_id)
    assert not proxy.poll(50)  # held until the turn ends
    node.flush()
    assert proxy.poll(5000)
    envelope, frame = proxy.recv_multipart()
    assert envelope == b"client-7"
    assert decode_replies(frame) == [
        ClientReply(i, wire.ReplyCode.OK, b"v%d" % i, 0) for i in (1, 2, 3)]
    assert node.stats["batches_in"] == 1 and node.stats["batches_out"] == 1


@pytest.mark.parametrize("address", ["tcp://h", "tcp://-:1", "tcp://127.0.0.1:abc"])
def test_a_peer_address_zeromq_cannot_use_is_counted_not_raised(address: str) -> None:
    """Addresses come from the network (PEERS, a log entry): a bad one must not stop the
    node. The peer is left unreachable, and counted."""
    with Transport(1, "tcp://127.0.0.1:0", {2: "tcp://127.0.0.1:1"}) as t:
        assert t.set_peer(2, address)
        assert 2 not in t.peers and t.stats["bad_peer_address"] == 1
        assert not t.send(Message(MsgType.HEARTBEAT, 2, 1, 1))
