"""The node's answers on the wire: duplicates, malformed frames, oversize values."""

from __future__ import annotations

import msgpack

from harness.launcher import wait_for
from raftkv.wire import ReplyCode, ReqOp


def open_session(cluster, leader: int) -> int:
    r = cluster.request(leader, ReqOp.OPEN_SESSION)
    assert r is not None and r.code == ReplyCode.OK
    return r.value


def test_duplicate_request_is_applied_once(cluster):
    leader = cluster.wait_leader()
    cid = open_session(cluster, leader)
    put = dict(client_id=cid, key=b"k")
    assert cluster.request(leader, ReqOp.PUT, seq=1, value=b"v1", **put).code == ReplyCode.OK
    assert cluster.request(leader, ReqOp.PUT, seq=2, value=b"v2", **put).code == ReplyCode.OK
    # A retry of seq 2 with other contents: answered with the saved reply, not applied.
    again = cluster.request(leader, ReqOp.PUT, seq=2, value=b"v3", **put)
    assert again.code == ReplyCode.OK
    assert cluster.request(leader, ReqOp.GET, key=b"k").value == b"v2"
    stale = cluster.request(leader, ReqOp.PUT, seq=1, value=b"v1", **put)
    assert stale.code == ReplyCode.STALE_REQUEST
    assert cluster.request(leader, ReqOp.GET, key=b"k").value == b"v2"


def test_malformed_frames_are_counted_and_the_node_stays_up(cluster):
    leader = cluster.wait_leader()
    garbage = [b"", b"\x00\xff\x13", msgpack.packb([1, 2]), msgpack.packb({"op": "put"}),
               b"\xc1" * 100]
    for frame in garbage:
        assert cluster.call_raw(leader, frame, timeout=0.2) is None  # dropped, never answered
    st = wait_for(lambda: (lambda s: s if s["transport"]["dropped_malformed"] >= 5 else None)(
        cluster.status(leader)), 5, "the malformed frames to be counted")
    assert st["role"] == "leader" and cluster.nodes[leader].alive


def test_invalid_requests_get_a_clear_error(cluster):
    leader = cluster.wait_leader()
    cid = open_session(cluster, leader)
    big = cluster.request(leader, ReqOp.PUT, client_id=cid, seq=1, key=b"k",
                          value=b"x" * (1024 * 1024 + 1))
    assert big.code == ReplyCode.BAD_REQUEST and "1048576" in big.value
    unknown_op = cluster.call_raw(leader, msgpack.packb([1, 2, 77, 250, b"k"]))
    assert unknown_op.code == ReplyCode.BAD_REQUEST and unknown_op.request_id == 77
    other_version = cluster.call_raw(leader, msgpack.packb([99, 2, 78, 5, b"k"]))
    assert other_version.code == ReplyCode.BAD_REQUEST and "version 99" in other_version.value
    assert cluster.request(leader, ReqOp.GET, key=b"k").code == ReplyCode.OK
    assert cluster.status(leader)["transport"]["bad_requests"] >= 2


def test_follower_redirects_to_the_leader(cluster):
    leader = cluster.wait_leader()
    follower = next(i for i in cluster.nodes if i != leader)
    wait_for(lambda: cluster.status(follower)["lead"] == leader, 5, "the follower to learn")
    r = cluster.request(follower, ReqOp.GET, key=b"k")
    assert r.code == ReplyCode.NOT_LEADER and r.leader_hint == leader


def test_sigterm_stops_a_node_cleanly(cluster):
    leader = cluster.wait_leader()
    follower = next(i for i in cluster.nodes if i != leader)
    assert cluster.stop(follower) == 0
    cluster.start(follower)
    wait_for(lambda: cluster.status(follower), 10, "the restarted node to answer")


def test_stale_get_is_served_by_a_follower_from_applied_state(cluster):
    leader = cluster.wait_leader()
    cid = open_session(cluster, leader)
    cluster.request(leader, ReqOp.PUT, client_id=cid, seq=1, key=b"k", value=b"v")
    follower = next(i for i in cluster.nodes if i != leader)
    got = wait_for(lambda: (lambda r: r if r.value == b"v" else None)(
        cluster.request(follower, ReqOp.GET_STALE, key=b"k")), 5, "the follower to apply")
    assert got.code == ReplyCode.OK


def test_transfer_hands_leadership_to_the_named_node(cluster):
    leader = cluster.wait_leader()
    target = next(i for i in cluster.nodes if i != leader)
    r = cluster.request(leader, ReqOp.TRANSFER, target=target)
    assert r.code == ReplyCode.OK
    wait_for(lambda: cluster.leader() == target, 5, f"node {target} to lead")
    r = cluster.request(leader, ReqOp.TRANSFER, target=99)
    assert r.code == ReplyCode.NOT_LEADER


def test_nodes_refuse_controller_commands(cluster):
    leader = cluster.wait_leader()
    r = cluster.request(leader, ReqOp.CONTROL, name="kill-leader", args=())
    assert r.code == ReplyCode.BAD_REQUEST and "controller" in r.value
