"""Leases: the leader's timer alone (raftkv/lease_timer.py), then on a replica whose clock
the test moves (the state machine's side is in test_kv.py)."""

from __future__ import annotations

import pytest

from raftkv.kv import Op
from raftkv.lease_timer import LeaseTimer
from raftkv.replica import Replica
from raftkv.wire import ClientRequest, ReplyCode, ReqOp
from tests.unit.test_watch import leader, put


def test_a_new_leader_starts_every_lease_at_its_full_ttl() -> None:
    timer = LeaseTimer()
    assert not timer.leading and timer.due(100.0) == []
    timer.start({7: 2000, 9: 500}, epoch=3, now=10.0)
    assert timer.remaining(7, 10.0) == 2.0 and timer.remaining(9, 10.0) == 0.5
    assert timer.due(10.49) == [] and timer.due(10.5) == [9]
    assert timer.due(10.6) == []  # handed out once...
    assert timer.due(11.5) == [9]  # ...and again only after the retry, if still there
    timer.stop()
    timer.start({7: 2000, 9: 500}, epoch=3, now=50.0)  # leader again, later: full TTLs
    assert timer.remaining(9, 50.0) == 0.5 and timer.due(50.4) == []


def test_a_keepalive_restarts_the_ttl_but_not_once_the_lease_is_due() -> None:
    timer = LeaseTimer()
    timer.start({7: 1000}, epoch=1, now=0.0)
    assert timer.renew(7, 1000, 0.9) and timer.due(1.5) == []
    assert timer.remaining(7, 1.5) == pytest.approx(0.4)
    assert not timer.renew(7, 1000, 1.9)  # due: its revoke may be in the log already
    assert timer.due(1.9) == [7]
    assert not timer.renew(7, 1000, 1.95)  # being revoked


def test_reconcile_times_new_grants_and_forgets_revoked_leases() -> None:
    timer = LeaseTimer()
    timer.start({1: 1000}, epoch=1, now=0.0)
    timer.reconcile({1: 1000, 4: 300}, epoch=2, now=5.0)
    assert timer.remaining(4, 5.0) == pytest.approx(0.3) and timer.due(5.0) == [1]
    timer.reconcile({4: 300}, epoch=3, now=5.0)  # 1's revoke applied
    assert 1 not in timer.deadlines and 1 not in timer.revoking
    timer.reconcile({}, epoch=3, now=5.0)  # same epoch: nothing moved, nothing read
    assert 4 in timer.deadlines


def lease_request(r: Replica, rid: int, op: ReqOp, **kw: int) -> tuple[int, object]:
    r.handle_requests([ClientRequest(rid, op, **kw)])
    r.process()
    return next((c, v) for i, c, v in r.transport.replies if i == rid)


def test_the_leader_revokes_a_lease_only_once_its_ttl_ran_without_a_keepalive() -> None:
    r = leader()
    code, lease = lease_request(r, 1, ReqOp.LEASE_GRANT, ttl_ms=1000)
    assert code == ReplyCode.OK and lease == r.kv.applied_index
    r.handle_requests([ClientRequest(2, ReqOp.PUT, b"lock", b"me", lease=lease)])
    r.process()
    for now in (0.6, 1.2, 1.8):  # kept alive every 0.6 s: never expires
        r.clock.now = now
        r.tick()
        r.process()
        assert lease_request(r, int(now * 10), ReqOp.LEASE_KEEPALIVE, lease=lease) == (
            ReplyCode.OK, 1000)
    assert lease_request(r, 30, ReqOp.LEASE_INFO, lease=lease) == (
        ReplyCode.OK, [1000, 1000, [b"lock"]])
    r.clock.now = 2.79
    r.tick()
    r.process()
    assert r.kv.get(b"lock") == b"me" and r.counters["leases_expired"] == 0
    r.clock.now = 2.8  # 1 s after the last keepalive: the leader proposes the revoke
    r.tick()
    r.process()
    assert r.kv.get(b"lock") is None and r.kv.lease_ttls == {}
    assert r.counters["leases_expired"] == 1
    code, why = lease_request(r, 31, ReqOp.LEASE_KEEPALIVE, lease=lease)
    assert code == ReplyCode.NOT_FOUND and f"lease {lease} not found" in why
    code, _ = lease_request(r, 32, ReqOp.PUT, key=b"k", value=b"v", lease=lease)
    assert code == ReplyCode.NOT_FOUND and r.kv.get(b"k") is None


def test_a_client_revoke_deletes_the_keys_and_a_watch_sees_each_delete() -> None:
    r = leader()
    _, lease = lease_request(r, 1, ReqOp.LEASE_GRANT, ttl_ms=60_000)
    put(r, 2, b"cfg/a", b"1")
    for rid, key in ((3, b"cfg/b"), (4, b"cfg/c")):
        r.handle_requests([ClientRequest(rid, ReqOp.PUT, key, b"x", lease=lease)])
    r.process()
    assert lease_request(r, 5, ReqOp.LEASE_REVOKE, lease=lease) == (ReplyCode.OK, True)
    at = r.kv.applied_index
    r.handle_requests([ClientRequest(6, ReqOp.WATCH, b"cfg/", prefix=True, revision=at)])
    assert r.transport.replies[-1] == (6, ReplyCode.OK, [at + 1, [
        [at, int(Op.DELETE), b"cfg/b", None], [at, int(Op.DELETE), b"cfg/c", None]]])
    assert r.kv.get(b"cfg/a") == b"1"
    assert lease_request(r, 7, ReqOp.LEASE_REVOKE, lease=lease) == (ReplyCode.OK, False)


def test_a_follower_does_not_answer_a_keepalive() -> None:
    r = leader()
    _, lease = lease_request(r, 1, ReqOp.LEASE_GRANT, ttl_ms=1000)
    r.lease_timer.stop()  # what a step-down does (on_role_change)
    assert lease_request(r, 2, ReqOp.LEASE_KEEPALIVE, lease=lease)[0] == ReplyCode.NOT_LEADER
    r.clock.now = 10.0
    r.tick()
    r.process()
    assert r.kv.lease_ttls == {lease: 1000}  # nobody timing it: nothing revoked


def test_lease_list_names_every_lease_its_keys_and_the_index_it_read_them_at() -> None:
    r = leader()
    assert lease_request(r, 1, ReqOp.LEASE_LIST) == (ReplyCode.OK, [r.kv.applied_index, []])
    _, a = lease_request(r, 2, ReqOp.LEASE_GRANT, ttl_ms=1000)
    _, b = lease_request(r, 3, ReqOp.LEASE_GRANT, ttl_ms=60_000)
    for rid, key, lid in ((4, b"svc/y", a), (5, b"svc/x", a), (6, b"lock", b)):
        r.handle_requests([ClientRequest(rid, ReqOp.PUT, key, b"v", lease=lid)])
    r.process()
    r.clock.now = 0.25
    code, (index, table) = lease_request(r, 7, ReqOp.LEASE_LIST)
    assert code == ReplyCode.OK and index == r.kv.applied_index
    assert table == [[a, 1000, 750, [b"svc/x", b"svc/y"]], [b, 60_000, 59_750, [b"lock"]]]
    r.lease_timer.stop()  # a follower's timer: only the leader answers
    assert lease_request(r, 8, ReqOp.LEASE_LIST)[0] == ReplyCode.NOT_LEADER
