"""Only the cluster's own get in (issue 17): three nodes and a controller with the keys
`raftkv up` makes, attacked over loopback by connections with no keys, a client key, and
one node's key posing as another node. Failure model: a stranger or a key holder on the
network, not a local root user (see the README's security section)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from harness import rpc
from harness.launcher import wait_for
from raftkv import AuthenticationFailed, Client, Credentials, Forbidden
from raftkv.raft.types import Message, MsgType
from raftkv.security import CLIENT, ENV_CREDENTIALS
from raftkv.wire import ClientRequest, ReplyCode, ReqOp, encode_peer, encode_request
from tests.integration.controller_fixture import ControllerCluster


@pytest.fixture(scope="module")
def cc(tmp_path_factory):
    """One cluster for the module: no test here changes its membership, and each checks
    terms and the leader against what it saw first."""
    c = ControllerCluster(tmp_path_factory.mktemp("secure"))
    try:
        c.start()
        c.wait_leader()
        yield c
    finally:
        c.close()


def node_status(cc: ControllerCluster, node_id: int) -> dict[str, Any]:
    """A node's own STATUS answer, asked with the admin key."""
    reply = cc.call(rpc_frame(ReqOp.STATUS), 2.0, cc.node_addresses[node_id])
    assert reply is not None and reply.code == ReplyCode.OK, reply
    return reply.value


def rpc_frame(op: ReqOp, **fields: Any) -> bytes:
    return encode_request(ClientRequest(rpc.next_request_id(), op, **fields))


def terms_and_leader(cc: ControllerCluster) -> tuple[dict[int, int], int]:
    statuses = {i: node_status(cc, i) for i in cc.node_addresses}
    leaders = {i for i, st in statuses.items() if st["role"] == "leader"}
    assert len(leaders) == 1, statuses
    return {i: st["term"] for i, st in statuses.items()}, leaders.pop()


def refused(cc: ControllerCluster, node_id: int) -> int:
    return node_status(cc, node_id)["transport"]["refused_role"]


def test_without_keys_nothing_is_read_or_written_on_any_port(cc, monkeypatch):
    with Client(cc.node_addresses, credentials=cc.credentials) as kv:
        kv.put("k", "v0")
    before = terms_and_leader(cc)
    monkeypatch.delenv(ENV_CREDENTIALS, raising=False)  # a stranger: no keys at all
    for addresses in (cc.node_addresses, cc.address):
        with Client(addresses, timeout=1.5) as kv:
            with pytest.raises(AuthenticationFailed, match="refused this client's connection"):
                kv.put("k", "stranger")
            with pytest.raises(AuthenticationFailed):
                kv.get("k")
    # A raw FAULT without keys gets no answer at all, from any node or the controller.
    for address in [*cc.node_addresses.values(), cc.address]:
        assert rpc.call_raw(cc.ctx, address, rpc_frame(ReqOp.FAULT, peers=[1, 2, 3]),
                            0.5) is None
    with Client(cc.node_addresses, credentials=cc.credentials) as kv:
        assert kv.get("k") == b"v0"
    assert terms_and_leader(cc) == before


def test_a_client_key_reads_and_writes_but_cannot_administer(cc):
    client = Credentials.load(cc.root, CLIENT)
    with Client(cc.node_addresses, credentials=client) as kv:
        kv.put("k", "v")
        assert kv.get("k") == b"v"
        assert kv.scan("k") == [(b"k", b"v")]
    with Client(cc.address, credentials=client) as kv:
        assert kv.get("k") == b"v"
    before, leader = terms_and_leader(cc)
    admin_ops = [
        (ReqOp.FAULT, {"peers": [1, 2, 3]}),
        (ReqOp.PEERS, {"addresses": {9: "tcp://127.0.0.1:1"}}),
        (ReqOp.CONTROL, {"name": "kill-leader", "args": ()}),
        (ReqOp.TRANSFER, {"target": 1 if leader != 1 else 2}),
        (ReqOp.CONF_CHANGE, {"conf_op": 3, "target": 1 if leader != 1 else 2}),
    ]
    for address in [cc.node_addresses[leader], cc.address]:
        for op, fields in admin_ops:
            reply = rpc.call_raw(cc.ctx, address, rpc_frame(op, **fields), 5.0, client)
            assert reply is not None and reply.code == ReplyCode.FORBIDDEN, (address, op, reply)
            assert "needs the admin key" in reply.value
    assert refused(cc, leader) >= len(admin_ops)
    assert cc.status()["controller"]["refused_role"] >= len(admin_ops)
    assert terms_and_leader(cc) == (before, leader)


def test_a_node_key_sends_peer_frames_only(cc):
    node_key = Credentials.load(cc.state.keys_dir, "node-1")
    for addresses in (cc.node_addresses, cc.address):
        with Client(addresses, credentials=node_key, timeout=5) as kv:
            with pytest.raises(Forbidden, match="needs the admin key"):
                kv.get("k")
            with pytest.raises(Forbidden):
                kv.put("k", "v")


def send_as(cc: ControllerCluster, credentials: Credentials, to: int, msg: Message) -> None:
    """Send peer frame `msg` to node `to` over a fresh DEALER presenting `credentials`,
    with the routing id of the node `msg.frm` names, and close it once it is sent."""
    sock = cc.ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 1000)
        sock.routing_id = b"n%d" % msg.frm
        credentials.apply(sock)
        sock.connect(cc.node_addresses[to])
        sock.send(encode_peer(msg))
    finally:
        sock.close()


def test_a_key_cannot_send_peer_frames_for_another_node(cc):
    before, leader = terms_and_leader(cc)
    follower, other = (i for i in sorted(cc.node_addresses) if i != leader)
    term = before[leader] + 1000
    posers = {
        "a client key": Credentials.load(cc.state.keys_dir, CLIENT),
        f"node {other}'s key": Credentials.load(cc.state.keys_dir, f"node-{other}"),
    }
    for n, key in enumerate(posers.values(), start=1):
        was = refused(cc, follower), refused(cc, leader)
        # As the leader, to a follower: a heartbeat of a far higher term.
        send_as(cc, key, follower, Message(MsgType.HEARTBEAT, follower, leader, term))
        # As the follower, to the leader: a vote request of a far higher term.
        send_as(cc, key, leader, Message(MsgType.VOTE, leader, follower, term,
                                         log_term=term, index=10**9))
        wait_for(lambda was=was: refused(cc, follower) > was[0]
                 and refused(cc, leader) > was[1], 10.0,
                 f"both nodes to refuse the frames of poser {n}")
    assert terms_and_leader(cc) == (before, leader)


def test_a_stranger_is_told_its_handshake_failed(cc):
    """A connection with keys the cluster does not admit sees ZeroMQ's handshake failure
    (what the client reports as AuthenticationFailed), and sends nothing."""
    stranger_keys = zmq.curve_keypair()
    server_public = Credentials.load(cc.root, CLIENT).server_public
    sock = cc.ctx.socket(zmq.DEALER)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    try:
        Credentials(stranger_keys[0], stranger_keys[1], server_public).apply(sock)
        sock.connect(cc.address)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not monitor.poll(100):
            pass
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
