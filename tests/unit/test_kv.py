"""The replicated state machine (raftkv/kv.py): commands, sessions, bad data, snapshots.

Randomized tests are seeded; a failure names its seed. Replay one with
RAFTKV_KV_SEED=<seed> .venv/bin/python -m pytest tests/unit/test_kv.py -k random
"""

from __future__ import annotations

import os
import random
import struct

import msgpack
import pytest

from raftkv.kv import (
    MAX_KEY_SIZE,
    MAX_TXN_OPS,
    MAX_VALUE_SIZE,
    SHARDS,
    SNAPSHOT_VERSION,
    BadRequest,
    Cmp,
    Code,
    KeyValue,
    KVStore,
    Op,
    OutOfOrderApply,
    Reply,
    SnapshotError,
    Target,
    encode_command,
    encode_lease,
    encode_open_session,
    encode_txn,
    validate_request,
)
from raftkv.quota import KEY_OVERHEAD

SEEDS = [int(os.environ["RAFTKV_KV_SEED"])] if os.environ.get("RAFTKV_KV_SEED") else range(30)


class Log:
    """Feeds a store consecutive entries and keeps them, so a replica can replay them."""

    def __init__(self, store: KVStore) -> None:
        self.store = store
        self.entries: list[tuple[int, bytes]] = []

    def append(self, data: bytes, *, gap: int = 0) -> Reply:
        index = self.store.applied_index + 1 + gap
        self.entries.append((index, data))
        return self.store.apply(index, data)

    def open(self) -> int:
        reply = self.append(encode_open_session())
        assert reply.code == Code.OK
        return reply.value

    def put(self, cid: int, seq: int, key: bytes, value: bytes) -> Reply:
        return self.append(encode_command(Op.PUT, key, value, client_id=cid, seq=seq))

    def delete(self, cid: int, seq: int, key: bytes) -> Reply:
        return self.append(encode_command(Op.DELETE, key, client_id=cid, seq=seq))

    def cas(self, cid: int, seq: int, key: bytes, expected: bytes | None, new: bytes) -> Reply:
        return self.append(encode_command(Op.CAS, key, new, expected, client_id=cid, seq=seq))

    def txn(self, compares: list, success: list, failure: list = (), *, cid: int = 0,
            seq: int = 0) -> Reply:
        return self.append(encode_txn(compares, success, list(failure), client_id=cid,
                                      seq=seq))


def state(store: KVStore) -> tuple:
    """Everything replicated, in a form that compares (and prints) well."""
    version, applied, maps, sessions, members, leases = msgpack.unpackb(
        store.snapshot(), strict_map_key=False)
    data = [kv for m in maps for kv in m.items()]
    return applied, sorted(data), sessions, sorted(members.items()), leases


@pytest.fixture
def log() -> Log:
    return Log(KVStore())


# ---- commands and their replies ----------------------------------------------------------


def test_each_key_keeps_its_create_and_mod_revision_and_version(log: Log) -> None:
    cid = log.open()  # 1
    assert log.store.get_kv(b"k") is None
    log.put(cid, 1, b"k", b"a")  # 2
    log.put(cid, 2, b"other", b"x")  # 3
    assert log.store.get_kv(b"k") == KeyValue(b"a", 2, 2, 1)
    log.put(cid, 3, b"k", b"b")  # 4
    assert log.cas(cid, 4, b"k", b"b", b"c") == Reply(Code.OK, True)  # 5
    assert log.store.get_kv(b"k") == KeyValue(b"c", 2, 5, 3)
    assert log.cas(cid, 5, b"k", b"zz", b"d").value is False  # 6: no change, no revision
    assert log.store.get_kv(b"k") == KeyValue(b"c", 2, 5, 3)
    log.delete(cid, 6, b"k")  # 7
    log.put(cid, 7, b"k", b"again")  # 8: created anew
    assert log.store.get_kv(b"k") == KeyValue(b"again", 8, 8, 1)
    assert log.store.get(b"k") == b"again" and log.store.scan(b"k", 5) == [(b"k", b"again")]
    assert log.store.size == len(b"kagain") + len(b"otherx") + 2 * KEY_OVERHEAD


def test_a_txn_runs_success_when_every_compare_holds_else_failure(log: Log) -> None:
    cid = log.open()  # 1
    log.put(cid, 1, b"lock", b"me")  # 2
    M, V, C, VER = (int(t) for t in (Target.MOD, Target.VALUE, Target.CREATE, Target.VERSION))
    EQ, NE, LT, GT = (int(c) for c in Cmp)
    put, get, delete = int(Op.PUT), int(Op.GET), int(Op.DELETE)
    reply = log.txn([[M, b"lock", EQ, 2], [V, b"lock", EQ, b"me"], [C, b"lock", LT, 3],
                     [VER, b"lock", GT, 0], [V, b"none", EQ, None], [M, b"none", EQ, 0]],
                    [[put, b"a", b"1"], [get, b"a"], [delete, b"lock"], [get, b"lock"]],
                    [[put, b"b", b"2"]])  # 3
    assert reply == Reply(Code.OK, [True, [3, [b"1", 3, 3, 1], True, None]])
    assert log.store.get(b"lock") is None and log.store.get(b"b") is None
    reply = log.txn([[M, b"a", EQ, 2]], [[put, b"a", b"no"]], [[get, b"a"], [put, b"b", b"2"]])
    assert reply == Reply(Code.OK, [False, [[b"1", 3, 3, 1], 4]])  # 4
    # nil is neither less nor greater than a value; NE holds between nil and a value
    for cmp, holds in ((LT, False), (GT, False), (NE, True), (EQ, False)):
        assert log.txn([[V, b"none", cmp, b"x"]], []).value[0] is holds
    assert log.store.get_kv(b"b") == KeyValue(b"2", 4, 4, 1)


def test_scan_pages_on_from_a_start_key(log: Log) -> None:
    cid = log.open()
    for seq, key in enumerate((b"a", b"b1", b"b2", b"b3", b"c"), 1):
        log.put(cid, seq, key, key.upper())
    assert log.store.scan(b"b", 2) == [(b"b1", b"B1"), (b"b2", b"B2")]
    assert log.store.scan(b"b", 2, b"b2\x00") == [(b"b3", b"B3")]
    assert log.store.scan(b"", 10, b"b3") == [(b"b3", b"B3"), (b"c", b"C")]
    assert log.store.scan(b"b", 10, b"a") == log.store.scan(b"b", 10)  # below the prefix
    assert log.store.scan(b"b", 10, b"c") == []


def test_a_txn_in_a_session_is_applied_once(log: Log) -> None:
    cid = log.open()
    ops = [[int(Op.PUT), b"n", b"1"]]
    first = log.txn([[int(Target.VERSION), b"n", int(Cmp.EQ), 0]], ops, cid=cid, seq=1)
    assert first == Reply(Code.OK, [True, [2]])
    again = log.txn([[int(Target.VERSION), b"n", int(Cmp.EQ), 0]], ops, cid=cid, seq=1)
    assert again == first and log.store.get_kv(b"n").version == 1


@pytest.mark.parametrize("compares,success,failure,why", [
    ([[9, b"k", 0, 1]], [], [], "compare target"),
    ([[1, b"k", 7, 1]], [], [], "compare op"),
    ([[1, b"k", 0, b"x"]], [], [], "revision or version compare"),
    ([[0, b"k", 0, 5]], [], [], "value compare"),
    ([[0, "k", 0, None]], [], [], "compare key"),
    ([], [[1, b"k", b"1"], [2, b"k"]], [], "written twice"),
    ([], [[1, b"k"]], [], "is not [PUT, key, value]"),
    ([], [[3, b"k", b"x", b"y"]], [], "is not [PUT, key, value]"),
    ([], [[1, b"k", "str"]], [], "value must be bytes"),
    ([], [[1, b"k", b"1"]] * (MAX_TXN_OPS + 1), [], f"at most {MAX_TXN_OPS}"),
    ({}, [], [], "three lists"),
])
def test_a_malformed_txn_is_refused_saying_why_and_changes_nothing(
        log: Log, compares: object, success: object, failure: object, why: str) -> None:
    cid = log.open()
    log.put(cid, 1, b"k", b"v")
    before = state(log.store)
    reply = log.append(msgpack.packb([int(Op.TXN), 0, 0, compares, success, failure]))
    assert reply.code == Code.BAD_REQUEST and why in reply.value
    with pytest.raises(BadRequest, match=why.split()[0]):
        encode_txn(compares, success, failure, client_id=0, seq=0)
    assert state(log.store)[1:] == before[1:]


def test_put_answers_its_revision_and_get_returns_the_value(log: Log) -> None:
    cid = log.open()  # index 1
    assert log.put(cid, 1, b"k", b"v") == Reply(Code.OK, 2)  # its revision: its index
    assert log.store.get(b"k") == b"v"
    assert log.store.get(b"other") is None


def test_put_overwrites_an_existing_value(log: Log) -> None:
    cid = log.open()
    log.put(cid, 1, b"k", b"v1")
    log.put(cid, 2, b"k", b"v2")
    assert log.store.get(b"k") == b"v2"
    assert len(log.store) == 1


def test_empty_key_and_empty_value_are_allowed(log: Log) -> None:
    cid = log.open()
    assert log.put(cid, 1, b"", b"").ok
    assert log.store.get(b"") == b""


def test_delete_of_present_key_answers_true_and_removes_it(log: Log) -> None:
    cid = log.open()
    log.put(cid, 1, b"k", b"v")
    assert log.delete(cid, 2, b"k") == Reply(Code.OK, True)
    assert log.store.get(b"k") is None


def test_delete_of_absent_key_answers_false(log: Log) -> None:
    cid = log.open()
    assert log.delete(cid, 1, b"k") == Reply(Code.OK, False)
    assert len(log.store) == 0


def test_cas_swaps_when_current_value_matches(log: Log) -> None:
    cid = log.open()
    log.put(cid, 1, b"k", b"old")
    assert log.cas(cid, 2, b"k", b"old", b"new") == Reply(Code.OK, True)
    assert log.store.get(b"k") == b"new"


def test_cas_refuses_when_current_value_differs(log: Log) -> None:
    cid = log.open()
    log.put(cid, 1, b"k", b"other")
    assert log.cas(cid, 2, b"k", b"old", b"new") == Reply(Code.OK, False)
    assert log.store.get(b"k") == b"other"


def test_cas_with_expected_none_creates_an_absent_key(log: Log) -> None:
    cid = log.open()
    assert log.cas(cid, 1, b"k", None, b"new") == Reply(Code.OK, True)
    assert log.store.get(b"k") == b"new"


def test_cas_with_expected_none_refuses_when_key_exists(log: Log) -> None:
    cid = log.open()
    log.put(cid, 1, b"k", b"v")
    assert log.cas(cid, 2, b"k", None, b"new") == Reply(Code.OK, False)
    assert log.store.get(b"k") == b"v"


def test_cas_with_a_value_refuses_when_key_is_absent(log: Log) -> None:
    cid = log.open()
    assert log.cas(cid, 1, b"k", b"v", b"new") == Reply(Code.OK, False)
    assert log.store.get(b"k") is None


def test_cas_expecting_empty_value_does_not_match_an_absent_key(log: Log) -> None:
    cid = log.open()
    assert log.cas(cid, 1, b"k", b"", b"new") == Reply(Code.OK, False)
    log.put(cid, 2, b"k", b"")
    assert log.cas(cid, 3, b"k", b"", b"new") == Reply(Code.OK, True)


def test_scan_returns_prefix_matches_sorted_by_key_up_to_limit(log: Log) -> None:
    cid = log.open()
    for seq, key in enumerate([b"b2", b"a1", b"b10", b"b1", b"c", b"b"], start=1):
        log.put(cid, seq, key, key.upper())
    assert log.store.scan(b"b", 10) == [
        (b"b", b"B"),
        (b"b1", b"B1"),
        (b"b10", b"B10"),
        (b"b2", b"B2"),
    ]
    assert log.store.scan(b"b", 2) == [(b"b", b"B"), (b"b1", b"B1")]
    assert [k for k, _ in log.store.scan(b"", 100)] == [b"a1", b"b", b"b1", b"b10", b"b2", b"c"]
    assert log.store.scan(b"", 0) == []
    assert log.store.scan(b"zz", 5) == []


def test_open_session_answers_the_log_index_as_client_id(log: Log) -> None:
    log.append(b"", gap=4)
    assert log.append(encode_open_session()) == Reply(Code.OK, 6)
    assert log.store.session(6) is not None
    assert log.store.session_count == 1


def test_empty_entry_is_a_noop_that_advances_applied_index(log: Log) -> None:
    before = state(log.store)
    assert log.append(b"") == Reply(Code.OK, None)
    assert log.store.applied_index == 1
    assert state(log.store)[1:] == before[1:]
    assert log.store.stats.malformed == 0


def test_applied_index_follows_the_last_applied_entry_and_allows_gaps(log: Log) -> None:
    assert log.store.applied_index == 0
    cid = log.open()
    log.put(cid, 1, b"k", b"v")
    assert log.store.applied_index == 2
    log.append(encode_command(Op.PUT, b"k", b"w", client_id=cid, seq=2), gap=3)
    assert log.store.applied_index == 6
    assert log.store.get(b"k") == b"w"


@pytest.mark.parametrize("index", [0, 1, 2])
def test_applying_an_already_applied_index_raises(log: Log, index: int) -> None:
    log.open()
    log.append(b"")
    with pytest.raises(OutOfOrderApply, match=rf"entry {index} applied .* up to 2"):
        log.store.apply(index, b"")
    assert log.store.applied_index == 2


# ---- client sessions ---------------------------------------------------------------------


def test_retried_put_is_applied_once_and_answered_with_original_reply(log: Log) -> None:
    a, b = log.open(), log.open()
    assert log.put(a, 1, b"k", b"from a") == Reply(Code.OK, 3)
    log.put(b, 1, b"k", b"from b")
    assert log.put(a, 1, b"k", b"from a") == Reply(Code.OK, 3)  # the first put's revision
    assert log.store.get(b"k") == b"from b"
    assert log.store.stats.duplicates == 1


def test_retried_cas_answers_original_reply_even_though_it_would_now_fail(log: Log) -> None:
    cid = log.open()
    assert log.cas(cid, 1, b"k", None, b"v") == Reply(Code.OK, True)
    assert log.cas(cid, 1, b"k", None, b"v") == Reply(Code.OK, True)
    assert log.store.get(b"k") == b"v"


def test_retried_delete_answers_true_though_the_key_is_already_gone(log: Log) -> None:
    cid = log.open()
    log.put(cid, 1, b"k", b"v")
    assert log.delete(cid, 2, b"k") == Reply(Code.OK, True)
    assert log.delete(cid, 2, b"k") == Reply(Code.OK, True)


def test_retry_after_restart_from_snapshot_answers_original_reply(log: Log) -> None:
    cid = log.open()
    assert log.cas(cid, 1, b"k", None, b"v") == Reply(Code.OK, True)
    restarted = KVStore()
    restarted.restore(log.store.snapshot())
    retry = encode_command(Op.CAS, b"k", b"v", None, client_id=cid, seq=1)
    assert restarted.apply(log.store.applied_index + 1, retry) == Reply(Code.OK, True)
    assert restarted.get(b"k") == b"v"


def test_retry_on_a_replica_that_replayed_the_log_answers_original_reply(log: Log) -> None:
    cid = log.open()
    log.delete(cid, 1, b"absent")
    new_leader = KVStore()
    for index, data in log.entries:
        new_leader.apply(index, data)
    retry = encode_command(Op.DELETE, b"absent", client_id=cid, seq=1)
    assert new_leader.apply(log.store.applied_index + 1, retry) == Reply(Code.OK, False)


def test_stale_sequence_number_is_refused_and_not_applied(log: Log) -> None:
    cid = log.open()
    log.put(cid, 1, b"k", b"one")
    log.put(cid, 2, b"k", b"two")
    reply = log.put(cid, 1, b"k", b"one")
    assert reply.code == Code.STALE_REQUEST
    assert reply.value == f"request 1 of client {cid} is stale: its request 2 is already applied"
    assert log.store.get(b"k") == b"two"
    assert log.store.stats.stale == 1


def test_sequence_numbers_may_skip(log: Log) -> None:
    cid = log.open()
    assert log.put(cid, 5, b"k", b"v").ok
    assert log.put(cid, 9, b"k", b"w").ok
    assert log.put(cid, 7, b"k", b"x").code == Code.STALE_REQUEST
    assert log.store.get(b"k") == b"w"


def test_write_from_a_client_without_session_is_refused_as_expired(log: Log) -> None:
    reply = log.put(12345, 1, b"k", b"v")
    assert reply.code == Code.SESSION_EXPIRED
    assert "client 12345 has no session" in reply.value
    assert log.store.get(b"k") is None
    assert log.store.stats.expired == 1


def test_write_without_session_applies_every_copy_and_opens_none(log: Log) -> None:
    assert log.cas(0, 0, b"k", None, b"v") == Reply(Code.OK, True)
    assert log.cas(0, 0, b"k", None, b"v") == Reply(Code.OK, False)  # applied again: no dedup
    assert log.put(0, 0, b"k", b"w").ok and log.delete(0, 0, b"k") == Reply(Code.OK, True)
    assert log.store.get(b"k") is None
    assert log.store.session_count == 0 and log.store.stats.sessionless == 4


@pytest.mark.parametrize(("cid", "seq"), [(0, 1), (1, 0), (0, -1)])
def test_only_both_zero_means_no_session(log: Log, cid: int, seq: int) -> None:
    reply = log.append(pack(Op.PUT, cid, seq, b"k", b"v"))
    assert reply.code == Code.BAD_REQUEST and "both 0" in reply.value
    assert log.store.get(b"k") is None and log.store.stats.sessionless == 0


def test_opening_sessions_beyond_the_limit_evicts_the_least_recently_used() -> None:
    log = Log(KVStore(max_sessions=3))
    a, b, c = log.open(), log.open(), log.open()
    log.put(a, 1, b"k", b"a")  # a is now the most recently used; b the least
    d = log.open()
    assert log.store.session_count == 3
    assert log.store.session(b) is None
    assert [log.store.session(x) is not None for x in (a, c, d)] == [True, True, True]
    log.open()
    assert log.store.session(c) is None
    assert log.store.stats.evicted == 2


def test_a_retry_counts_as_use_for_eviction() -> None:
    log = Log(KVStore(max_sessions=2))
    a, b = log.open(), log.open()
    log.put(a, 1, b"k", b"a")
    log.put(b, 1, b"k", b"b")
    log.put(a, 1, b"k", b"a")  # retry: a is used again at a later index than b
    log.open()
    assert log.store.session(a) is not None
    assert log.store.session(b) is None


def test_evicted_client_retry_is_refused_not_applied_twice() -> None:
    log = Log(KVStore(max_sessions=1))
    a = log.open()
    assert log.cas(a, 1, b"counter", None, b"1").ok
    b = log.open()  # evicts a
    assert log.delete(b, 1, b"counter") == Reply(Code.OK, True)
    reply = log.cas(a, 1, b"counter", None, b"1")
    assert reply.code == Code.SESSION_EXPIRED
    assert log.store.get(b"counter") is None


def test_eviction_is_identical_on_every_replica() -> None:
    rng = random.Random(7)
    leader = Log(KVStore(max_sessions=4))
    clients: list[int] = []
    for _ in range(200):
        if rng.random() < 0.2 or not clients:
            clients.append(leader.open())
        else:
            cid = rng.choice(clients)
            leader.put(cid, leader.store.applied_index, b"k%d" % rng.randrange(5), b"v")
    follower = KVStore(max_sessions=4)
    for index, data in leader.entries:
        follower.apply(index, data)
    assert leader.store.stats.evicted > 0
    assert state(follower) == state(leader.store)
    alive = [cid for cid in clients if leader.store.session(cid) is not None]
    assert alive == [cid for cid in clients if follower.session(cid) is not None]
    assert len(alive) == 4


# ---- malformed commands ------------------------------------------------------------------

BIG_KEY = b"k" * (MAX_KEY_SIZE + 1)
BIG_VALUE = b"v" * (MAX_VALUE_SIZE + 1)


def pack(*fields: object) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)


MALFORMED = {
    "not_msgpack": b"\xc1",
    "truncated": b"\x95\x01\x01",
    "trailing_bytes": pack(Op.DELETE, 1, 1, b"k") + b"\x00",
    "string": msgpack.packb("put k v"),
    "map": msgpack.packb({"op": 1, "key": b"k"}),
    "integer": msgpack.packb(1),
    "empty_array": pack(),
    "unknown_op": pack(99, 1, 1, b"k"),
    "negative_op": pack(-1, 1, 1, b"k"),
    "bool_op": pack(True, 1, 1, b"k", b"v"),
    "str_op": pack("put", 1, 1, b"k", b"v"),
    "float_op": pack(1.0, 1, 1, b"k", b"v"),
    "read_op_get": pack(Op.GET, 1, 1, b"k"),
    "read_op_scan": pack(Op.SCAN, 1, 1, b"k", 10),
    "put_missing_value": pack(Op.PUT, 1, 1, b"k"),
    "put_extra_field": pack(Op.PUT, 1, 1, b"k", b"v", b"x"),
    "delete_extra_field": pack(Op.DELETE, 1, 1, b"k", b"v"),
    "cas_missing_new": pack(Op.CAS, 1, 1, b"k", None),
    "open_session_with_args": pack(Op.OPEN_SESSION, 1),
    "str_key": pack(Op.PUT, 1, 1, "k", b"v"),
    "none_key": pack(Op.DELETE, 1, 1, None),
    "int_value": pack(Op.PUT, 1, 1, b"k", 5),
    "none_value": pack(Op.PUT, 1, 1, b"k", None),
    "str_expected": pack(Op.CAS, 1, 1, b"k", "old", b"new"),
    "none_new": pack(Op.CAS, 1, 1, b"k", b"old", None),
    "zero_client_id": pack(Op.PUT, 0, 1, b"k", b"v"),
    "negative_seq": pack(Op.PUT, 1, -3, b"k", b"v"),
    "zero_seq": pack(Op.PUT, 1, 0, b"k", b"v"),
    "float_seq": pack(Op.PUT, 1, 2.0, b"k", b"v"),
    "bool_client_id": pack(Op.PUT, True, 2, b"k", b"v"),
    "bytes_client_id": pack(Op.PUT, b"\x01", 2, b"k", b"v"),
    "oversize_key": pack(Op.PUT, 1, 2, BIG_KEY, b"v"),
    "oversize_value": pack(Op.PUT, 1, 2, b"k", BIG_VALUE),
    "oversize_cas_new": pack(Op.CAS, 1, 2, b"k", None, BIG_VALUE),
    "oversize_cas_expected": pack(Op.CAS, 1, 2, b"k", BIG_VALUE, b"v"),
    "oversize_delete_key": pack(Op.DELETE, 1, 2, BIG_KEY),
    "nested_junk": pack([[[[]]]], {b"a": [1]}, 1),
    "ext_type": msgpack.packb([msgpack.ExtType(1, b"x"), 1, 1, b"k"]),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_command_answers_bad_request_counted_and_changes_nothing(data: bytes) -> None:
    log = Log(KVStore())
    cid = log.open()
    assert cid == 1  # the malformed commands above that name client 1 would be valid for it
    log.put(cid, 1, b"k", b"v")
    before = state(log.store)
    reply = log.append(data)
    assert reply.code == Code.BAD_REQUEST
    assert isinstance(reply.value, str) and reply.value
    assert log.store.stats.malformed == 1
    after = state(log.store)
    assert after[0] == before[0] + 1  # the entry is applied, as a no-op
    assert after[1:] == before[1:]
    # the session is untouched: the client's next request still applies, its last retries
    assert log.put(cid, 1, b"k", b"v") == Reply(Code.OK, 2)  # the saved reply: revision 2
    assert log.put(cid, 2, b"k", b"w").ok


def test_malformed_reply_says_what_is_wrong(log: Log) -> None:
    cid = log.open()
    reply = log.append(pack(Op.PUT, cid, 1, b"k", b"v" * 2_000_000))
    assert reply == Reply(Code.BAD_REQUEST, "value of 2000000 bytes exceeds the limit of 1048576")
    assert log.append(pack(Op.PUT, cid, 1, "k", b"v")).value == "key must be bytes, not str"
    assert log.append(pack(77, cid, 1)).value == "unknown op 77"
    assert log.append(pack(Op.DELETE, cid, 1)).value == "op DELETE with 2 arguments, not 3"
    assert log.append(pack(Op.OPEN_SESSION, 1)).value == "op OPEN_SESSION with 1 arguments, not 0"
    assert log.append(pack(Op.GET, cid, 1, b"k")).value == "op GET is a read: reads are not applied"
    assert log.append(pack(Op.PUT, cid, 0, b"k", b"v")).value == (
        "seq must be an int in [1, 2**64) (or client_id and seq both 0: a write without a "
        "session), not 0"
    )


def test_limits_are_constructor_parameters() -> None:
    log = Log(KVStore(max_key_size=4, max_value_size=8))
    cid = log.open()
    assert log.put(cid, 1, b"kkkk", b"v" * 8).ok
    assert log.put(cid, 2, b"kkkkk", b"v").value == "key of 5 bytes exceeds the limit of 4"
    assert log.put(cid, 3, b"k", b"v" * 9).value == "value of 9 bytes exceeds the limit of 8"
    assert log.store.get(b"k") is None
    with pytest.raises(ValueError, match="max_sessions=0"):
        KVStore(max_sessions=0)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_bytes_never_raise_and_leave_state_unchanged(seed: int) -> None:
    rng = random.Random(seed)
    log = Log(KVStore())
    cid = log.open()
    log.put(cid, 1, b"k", b"v")
    before = state(log.store)
    garbage = 0
    for _ in range(200):
        data = rng.randbytes(rng.randrange(1, 40))
        try:
            decoded = msgpack.unpackb(data)
        except Exception:
            decoded = None
        if isinstance(decoded, list) and decoded and decoded[0] in (1, 2, 3, 4):
            continue  # could be a valid command by chance; not garbage
        garbage += 1
        reply = log.append(data)
        assert reply.code == Code.BAD_REQUEST, f"seed={seed} data={data!r} reply={reply}"
    assert log.store.stats.malformed == garbage, f"seed={seed}"
    assert state(log.store)[1:] == before[1:], f"seed={seed}"


@pytest.mark.parametrize("seed", SEEDS)
def test_random_mutations_of_commands_never_raise_and_replicas_agree(seed: int) -> None:
    rng = random.Random(seed)
    a, b = KVStore(max_key_size=8, max_value_size=8), KVStore(max_key_size=8, max_value_size=8)
    valid = [
        encode_open_session(),
        encode_command(Op.PUT, b"k", b"v", client_id=1, seq=1),
        encode_command(Op.CAS, b"k", b"vvvvvvv", None, client_id=1, seq=2),
        encode_command(Op.DELETE, b"kkkkkkk", client_id=2, seq=3),
    ]
    for index in range(1, 400):
        data = bytearray(rng.choice(valid))
        for _ in range(rng.randrange(4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        reply = a.apply(index, bytes(data))
        assert reply == b.apply(index, bytes(data)), f"seed={seed} data={bytes(data)!r}"
        assert isinstance(reply, Reply) and reply.code in tuple(Code), f"seed={seed}"
    assert state(a) == state(b), f"seed={seed}"


# ---- validation before proposing ---------------------------------------------------------


def test_validate_request_accepts_good_requests() -> None:
    validate_request(Op.GET, b"k")
    validate_request(Op.SCAN, b"prefix", limit=0)
    validate_request(Op.PUT, b"k" * MAX_KEY_SIZE, b"v" * MAX_VALUE_SIZE)
    validate_request(Op.DELETE, b"k")
    validate_request(Op.CAS, b"k", b"new", None)
    validate_request(Op.CAS, b"k", b"new", b"old")


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (
            (Op.PUT, b"k", b"v" * 2_000_000),
            {},
            "value of 2000000 bytes exceeds the limit of 1048576",
        ),
        ((Op.GET, BIG_KEY), {}, f"key of {MAX_KEY_SIZE + 1} bytes exceeds the limit of 1024"),
        ((Op.GET, "k"), {}, "key must be bytes, not str"),
        ((Op.PUT, b"k"), {}, "value must be bytes, not NoneType"),
        ((Op.CAS, b"k", b"new", "old"), {}, "expected value must be bytes or None, not str"),
        ((Op.SCAN, b"p"), {"limit": -1}, "scan limit must be an int >= 0, not -1"),
        ((Op.SCAN, b"p"), {}, "scan limit must be an int >= 0, not None"),
        (
            (Op.PUT, b"k", b"12345"),
            {"max_value_size": 4},
            "value of 5 bytes exceeds the limit of 4",
        ),
        ((42, b"k"), {}, "unknown op 42"),
    ],
)
def test_validate_request_refuses_with_a_message_that_says_what_is_wrong(
    args: tuple, kwargs: dict, message: str
) -> None:
    with pytest.raises(BadRequest) as excinfo:
        validate_request(*args, **kwargs)
    assert str(excinfo.value) == message
    assert isinstance(excinfo.value, ValueError)


def test_store_validate_request_uses_the_store_limits() -> None:
    store = KVStore(max_key_size=2)
    store.validate_request(Op.GET, b"kk")
    with pytest.raises(BadRequest, match="key of 3 bytes exceeds the limit of 2"):
        store.validate_request(Op.GET, b"kkk")


# ---- wire forms --------------------------------------------------------------------------


def test_commands_encode_as_compact_arrays() -> None:
    def unpack(data: bytes) -> list:
        return msgpack.unpackb(data)

    assert unpack(encode_command(Op.PUT, b"k", b"v", client_id=7, seq=3)) == [1, 7, 3, b"k", b"v"]
    assert unpack(encode_command(Op.DELETE, b"k", client_id=7, seq=4)) == [2, 7, 4, b"k"]
    assert unpack(encode_command(Op.CAS, b"k", b"n", None, client_id=7, seq=5)) == [
        3, 7, 5, b"k", None, b"n",
    ]  # fmt: skip
    assert unpack(encode_open_session()) == [4]
    assert len(encode_command(Op.PUT, b"k", b"v", client_id=7, seq=3)) == 10  # 6 of framing


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((Op.GET, b"k"), {"client_id": 1, "seq": 1}, "not a write"),
        ((Op.OPEN_SESSION, b"k"), {"client_id": 1, "seq": 1}, "not a write"),
        ((Op.PUT, b"k", b"v"), {"client_id": 0, "seq": 1}, "client_id must be an int"),
        ((Op.PUT, b"k", b"v"), {"client_id": 1, "seq": 2**64}, "seq must be an int"),
        ((Op.PUT, "k", b"v"), {"client_id": 1, "seq": 1}, "key must be bytes"),
    ],
)
def test_encode_command_refuses_what_apply_would_refuse(
    args: tuple, kwargs: dict, message: str
) -> None:
    with pytest.raises(BadRequest, match=message):
        encode_command(*args, **kwargs)


def test_reply_packs_as_code_value_array_and_comes_back() -> None:
    for reply in [Reply(Code.OK, None), Reply(Code.OK, True), Reply(Code.STALE_REQUEST, "m")]:
        wire = msgpack.unpackb(msgpack.packb(reply))
        assert wire == [int(reply.code), reply.value]
        assert Reply.from_wire(wire) == reply
        assert Reply.from_wire(wire).code is reply.code
    for junk in (b"junk", [99, None], [True, None], [[0], None], [0], None):
        with pytest.raises(BadRequest):
            Reply.from_wire(junk)


# ---- snapshots and replicas --------------------------------------------------------------


def test_restore_reproduces_data_sessions_and_applied_index(log: Log) -> None:
    a, b = log.open(), log.open()
    log.put(a, 1, b"x", b"1")
    log.cas(b, 1, b"y", None, b"2")
    log.delete(a, 2, b"x")
    restored = KVStore()
    restored.restore(log.store.snapshot())
    assert restored.applied_index == log.store.applied_index
    assert restored.scan(b"", 10) == [(b"y", b"2")]
    assert restored.session(a) == log.store.session(a)
    assert restored.session(b) == log.store.session(b)
    assert state(restored) == state(log.store)
    assert restored.snapshot() == log.store.snapshot()


def test_restore_replaces_the_previous_state(log: Log) -> None:
    cid = log.open()
    log.put(cid, 1, b"old", b"v")
    snap = KVStore().snapshot()
    log.store.restore(snap)
    assert len(log.store) == 0
    assert log.store.session_count == 0
    assert log.store.applied_index == 0


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\xc1",
        msgpack.packb([5, 0, [], [], {}]),  # unknown version
        msgpack.packb([4, 9, [{b"k": b"short"}], [], {}]),  # a record without revisions
        msgpack.packb([4, 9, [{b"k": bytes(24) + b"v"}], [], {}]),  # revisions 0
        # created after it was last changed
        msgpack.packb([4, 9, [{b"k": struct.pack(">QQQ", 5, 4, 1) + b"v"}], [], {}]),
        msgpack.packb([3, 0, {}, [], {}]),  # version 3 with one map, not a list of them
        msgpack.packb([3, 0, [{b"k": b"1"}, {b"k": b"2"}], [], {}]),  # a key twice
        msgpack.packb([3, 0, [{b"k": 1}], [], {}]),  # a value not bytes
        msgpack.packb([2, 0, {}, []]),  # version 2 without its member map
        msgpack.packb([1, 0, {}, [], {}]),  # version 1 with one
        msgpack.packb([2, 0, {}, [], {"4": "tcp://h:1"}]),  # member id not an int
        msgpack.packb([2, 0, {}, [], {4: b"tcp://h:1"}]),  # address not a str
        msgpack.packb([1, 0, {}]),
        msgpack.packb([1, -1, {}, []]),
        msgpack.packb([1, 5, {b"k": "str"}, []]),
        msgpack.packb([1, 5, {}, [[1, 1, 9, 0, None]]]),  # session used after applied index
        msgpack.packb([1, 5, {}, [[1, 1, 3, 0, None], [2, 1, 2, 0, None]]]),  # out of order
        msgpack.packb([1, 5, {}, [[1, 1, 2, 0, None], [1, 1, 3, 0, None]]]),  # twice
        msgpack.packb([1, 5, {}, [[1, 1, 2, 9, None]]]),  # unknown reply code
    ],
)
def test_restore_of_a_bad_snapshot_raises_and_changes_nothing(log: Log, blob: bytes) -> None:
    cid = log.open()
    log.put(cid, 1, b"k", b"v")
    before = state(log.store)
    with pytest.raises(SnapshotError):
        log.store.restore(blob)
    assert state(log.store) == before


def test_members_added_through_the_log_survive_a_snapshot(log: Log) -> None:
    store = log.store
    store.apply_membership(1, 4, "tcp://127.0.0.1:7704")
    store.apply_membership(2, 5, "tcp://127.0.0.1:7705")
    store.apply_membership(3, 5, "")  # a promotion: no address, nothing changes
    store.apply_membership(4, 4, None)  # removed
    assert store.members == {5: "tcp://127.0.0.1:7705"}
    assert store.applied_index == 4
    restored = KVStore()
    restored.restore(store.snapshot())
    assert restored.members == {5: "tcp://127.0.0.1:7705"}
    with pytest.raises(OutOfOrderApply):
        store.apply_membership(4, 6, "tcp://127.0.0.1:7706")


@pytest.mark.parametrize("old", [
    [1, 7, {b"k": b"v"}, []],
    [2, 7, {b"k": b"v", b"j": b"w"}, [], {4: "tcp://h:1"}],
    [3, 7, [{b"k": b"v"}], [], {}],
])
def test_a_snapshot_from_before_revisions_is_refused_saying_why(log: Log, old: list) -> None:
    """Each replica restores its own snapshot's index then replays the log: revisions made
    up for its keys would differ between replicas, and a compare on them would diverge."""
    cid = log.open()
    log.put(cid, 1, b"mine", b"1")
    before = state(log.store)
    with pytest.raises(SnapshotError, match="before revisions"):
        log.store.restore(msgpack.packb(old))
    assert state(log.store) == before


def test_the_data_is_split_over_shards_and_a_snapshot_restores_it_anywhere(log: Log) -> None:
    """A dict that outgrows its table copies it whole; split in SHARDS dicts, each copy
    is a 256th of the data (issue 16: 430 ms at 5.6 million keys lost the leadership)."""
    cid = log.open()
    for seq in range(1, 2001):
        log.put(cid, seq, b"key-%d" % seq, b"v")
    sizes = [len(shard) for shard in log.store._shards]
    assert len(sizes) == SHARDS and sum(sizes) == 2000 and max(sizes) < 40
    maps = msgpack.unpackb(log.store.snapshot())[2]
    shuffled = [dict(kv) for kv in (list(m.items()) for m in maps[::-1])]  # any split will do
    again = KVStore()
    again.restore(msgpack.packb([SNAPSHOT_VERSION, log.store.applied_index, shuffled, [], {}, []]))
    assert len(again) == 2000 and again.get(b"key-77") == b"v"
    assert again.size == log.store.size


# ---- leases -------------------------------------------------------------------------


def grant(log: Log, ttl_ms: int = 5000) -> int:
    reply = log.append(encode_lease(Op.LEASE_GRANT, ttl_ms, client_id=0, seq=0))
    assert reply.code == Code.OK
    return reply.value


def revoke(log: Log, lease: int) -> Reply:
    return log.append(encode_lease(Op.LEASE_REVOKE, lease, client_id=0, seq=0))


def put_leased(log: Log, key: bytes, value: bytes, lease: int) -> Reply:
    return log.append(encode_command(Op.PUT, key, value, client_id=0, seq=0, lease=lease))


def test_a_lease_is_named_by_its_grant_index_and_its_revoke_deletes_what_it_holds() -> None:
    log = Log(KVStore())
    log.store.events = []
    lease = grant(log, 3000)
    assert lease == log.store.applied_index and log.store.lease_ttls == {lease: 3000}
    put_leased(log, b"b", b"2", lease)
    put_leased(log, b"a", b"1", lease)
    log.txn([], [[int(Op.PUT), b"c", b"3", lease]])
    log.put(0, 0, b"free", b"x")
    assert log.store.lease(lease) == [3000, [b"a", b"b", b"c"]]
    log.store.events.clear()
    assert revoke(log, lease) == Reply(Code.OK, True)
    at = log.store.applied_index
    assert [log.store.get(k) for k in (b"a", b"b", b"c", b"free")] == [None, None, None, b"x"]
    # one delete event a key, at the revoke's revision, in key order on every replica
    assert log.store.events == [at, Op.DELETE, b"a", b"", at, Op.DELETE, b"b", b"",
                                at, Op.DELETE, b"c", b""]
    assert log.store.lease(lease) is None and log.store.size == len(b"free") + 1 + KEY_OVERHEAD
    assert revoke(log, lease) == Reply(Code.OK, False)  # gone: a second revoke finds nothing


def test_a_put_without_the_lease_or_a_delete_takes_the_key_out_of_it() -> None:
    log = Log(KVStore())
    lease = grant(log)
    for k in (b"moved", b"plain", b"cas", b"gone"):
        put_leased(log, k, b"v", lease)
    other = grant(log)
    put_leased(log, b"moved", b"v2", other)
    log.put(0, 0, b"plain", b"v2")  # etcd: a put without a lease detaches the key
    log.cas(0, 0, b"cas", b"v", b"v2")
    log.delete(0, 0, b"gone")
    assert log.store.lease(lease) == [5000, []]
    revoke(log, lease)
    assert [log.store.get(k) for k in (b"moved", b"plain", b"cas")] == [b"v2"] * 3
    revoke(log, other)
    assert log.store.get(b"moved") is None


def test_a_write_naming_a_lease_that_is_gone_writes_nothing() -> None:
    log = Log(KVStore())
    lease = grant(log)
    revoke(log, lease)
    before = state(log.store)
    reply = put_leased(log, b"k", b"v", lease)
    assert reply.code == Code.NOT_FOUND and f"lease {lease} not found" in reply.value
    # a transaction is refused whole, the puts before the bad one included
    reply = log.txn([], [[int(Op.PUT), b"a", b"1"], [int(Op.PUT), b"k", b"v", lease]])
    assert reply.code == Code.NOT_FOUND
    assert state(log.store)[1:] == before[1:]


@pytest.mark.parametrize("bad", [
    encode_lease(Op.LEASE_GRANT, 1, client_id=0, seq=0)[:-1] + b"\x00",  # ttl 0
    msgpack.packb([int(Op.LEASE_GRANT), 0, 0, -5]),
    msgpack.packb([int(Op.LEASE_REVOKE), 0, 0, "1"]),
    msgpack.packb([int(Op.LEASE_REVOKE), 0, 0]),
    msgpack.packb([int(Op.PUT), 0, 0, b"k", b"v", 0]),
    msgpack.packb([int(Op.TXN), 0, 0, [], [[int(Op.PUT), b"k", b"v", True]], []]),
])
def test_a_malformed_lease_command_is_refused_and_changes_nothing(bad: bytes) -> None:
    log = Log(KVStore())
    grant(log)
    before = state(log.store)
    reply = log.append(bad)
    assert reply.code == Code.BAD_REQUEST
    assert state(log.store)[1:] == before[1:]


def test_leases_survive_a_snapshot_and_a_version_4_snapshot_restores_without_any() -> None:
    log = Log(KVStore())
    lease = grant(log, 1234)
    put_leased(log, b"k", b"v", lease)
    again = KVStore()
    again.restore(log.store.snapshot())
    assert again.lease(lease) == [1234, [b"k"]] and again.snapshot() == log.store.snapshot()
    revoke(Log(again), lease)
    assert again.get(b"k") is None
    v4 = msgpack.unpackb(log.store.snapshot())
    v4[0] = 4
    old = KVStore()
    old.restore(msgpack.packb(v4[:5]))
    assert old.get(b"k") == b"v" and old.lease_ttls == {}
    v4[0] = SNAPSHOT_VERSION
    v4[5] = [[lease, 1234, [b"not-in-the-data"]]]
    with pytest.raises(SnapshotError, match="lacks"):
        KVStore().restore(msgpack.packb(v4))


class Workload:
    """Random clients doing random things, against a small key space and few sessions so
    every path is taken: new writes, retries, stale and expired requests, bad data."""

    KEYS = [b"", b"a", b"ab", b"abc", b"b", b"ba", b"c"]
    VALUES = [b"", b"1", b"2", b"xyz"]

    def __init__(self, rng: random.Random, log: Log) -> None:
        self.rng = rng
        self.log = log
        self.clients: dict[int, tuple[int, bytes]] = {}  # client -> (last seq, last command)
        self.replies: list[Reply] = []
        self.leases: list[int] = [999_999]  # granted ids, and one that never was

    def lease(self) -> int:
        """A lease for a put: none mostly, else a granted one (maybe revoked since)."""
        return self.rng.choice(self.leases) if self.rng.random() < 0.3 else 0

    def step(self) -> None:
        rng, log = self.rng, self.log
        gap = 1 if rng.random() < 0.05 else 0
        roll = rng.random()
        if roll < 0.1 or not self.clients:
            reply = log.append(encode_open_session(), gap=gap)
            self.clients[reply.value] = (0, b"")
        elif roll < 0.75:
            sessionless = rng.random() < 0.1  # client_id = seq = 0: applied at most once
            cid = 0 if sessionless else rng.choice(list(self.clients))
            seq = 0 if sessionless else self.clients[cid][0] + rng.choice((1, 1, 1, 2))
            op = rng.choice((Op.PUT, Op.DELETE, Op.CAS, Op.TXN, Op.LEASE_GRANT,
                             Op.LEASE_REVOKE))
            key = rng.choice(self.KEYS)
            value = rng.choice(self.VALUES)
            expected = rng.choice([None, *self.VALUES])
            if op == Op.TXN:
                data = encode_txn(*self.txn(), client_id=cid, seq=seq)
            elif op == Op.LEASE_GRANT:
                data = encode_lease(op, rng.randrange(1, 10_000), client_id=cid, seq=seq)
            elif op == Op.LEASE_REVOKE:
                data = encode_lease(op, rng.choice(self.leases), client_id=cid, seq=seq)
            elif op == Op.PUT:
                data = encode_command(op, key, value, client_id=cid, seq=seq, lease=self.lease())
            else:
                data = encode_command(op, key, value, expected, client_id=cid, seq=seq)
            if not sessionless:
                self.clients[cid] = (seq, data)
            reply = log.append(data, gap=gap)
            if op == Op.LEASE_GRANT and type(reply.value) is int:  # (a retry may answer another op)
                self.leases.append(reply.value)
        elif roll < 0.85:  # a retry of the client's last request
            cid = rng.choice(list(self.clients))
            data = self.clients[cid][1] or encode_command(Op.DELETE, b"a", client_id=cid, seq=1)
            reply = log.append(data, gap=gap)
        elif roll < 0.9:  # a stale request
            cid = rng.choice(list(self.clients))
            reply = log.put(cid, 1 + rng.randrange(max(1, self.clients[cid][0])), b"a", b"stale")
        elif roll < 0.95:
            reply = log.append(rng.randbytes(rng.randrange(12)), gap=gap)
        else:
            reply = log.append(pack(Op.PUT, rng.choice(list(self.clients)), 10**6, b"a", 3))
        self.replies.append(reply)

    def txn(self) -> tuple[list, list, list]:
        """A random transaction on the workload's keys: compares on every target, and
        branches of puts, deletes and gets (a key written at most once in each)."""
        rng = self.rng
        compares = []
        for _ in range(rng.randrange(3)):
            target = rng.choice(list(Target))
            operand = (rng.choice([None, *self.VALUES]) if target == Target.VALUE
                       else rng.randrange(self.log.store.applied_index + 2))
            compares.append([int(target), rng.choice(self.KEYS), int(rng.choice(list(Cmp))),
                             operand])
        branches = []
        for _ in range(2):
            ops, written = [], set()
            for key in rng.sample(self.KEYS, rng.randrange(4)):
                kind = rng.choice((Op.PUT, Op.DELETE, Op.GET))
                if kind == Op.GET and key in written:
                    continue
                lease = self.lease()
                ops.append([int(kind), key, rng.choice(self.VALUES), *([lease] if lease else [])]
                           if kind == Op.PUT else [int(kind), key])
                if rng.random() < 0.3:
                    ops.append([int(Op.GET), key])  # sees the write before it
                if rng.random() < 0.2:
                    ops.append([int(Op.OLDEST), key[:1]])  # the first-created under it
                written.add(key)
            branches.append(ops)
        return compares, branches[0], branches[1]


def run_workload(seed: int, steps: int, store: KVStore) -> Workload:
    workload = Workload(random.Random(seed), Log(store))
    for _ in range(steps):
        workload.step()
    return workload


@pytest.mark.parametrize("seed", SEEDS)
def test_random_workload_restored_snapshot_is_indistinguishable(seed: int) -> None:
    workload = run_workload(seed, 300, KVStore(max_sessions=5))
    original = workload.log.store
    stats = original.stats
    assert stats.duplicates and stats.evicted and stats.malformed, f"seed={seed}: weak workload"
    assert any(type(r.value) is list and r.value[0] for r in workload.replies), "no txn succeeded"
    assert any(type(r.value) is list and not r.value[0] for r in workload.replies), "none failed"
    restored = KVStore(max_sessions=5)
    restored.restore(original.snapshot())
    assert state(restored) == state(original), f"seed={seed}"
    assert restored.snapshot() == original.snapshot(), f"seed={seed}"
    for cid in workload.clients:
        assert restored.session(cid) == original.session(cid), f"seed={seed} client={cid}"
    # both now apply the same future: same replies, same end state
    mark = len(workload.log.entries)
    for _ in range(300):
        workload.step()
    future = workload.log.entries[mark:]
    replies = [restored.apply(index, data) for index, data in future]
    assert replies == workload.replies[-len(future) :], f"seed={seed}"
    assert state(restored) == state(original), f"seed={seed}"
    assert restored.scan(b"", 100) == original.scan(b"", 100), f"seed={seed}"


@pytest.mark.parametrize("seed", SEEDS)
def test_random_workload_replicas_fed_the_same_entries_end_identical(seed: int) -> None:
    workload = run_workload(seed, 500, KVStore(max_sessions=5))
    replica = KVStore(max_sessions=5)
    replies = [replica.apply(index, data) for index, data in workload.log.entries]
    assert replies == workload.replies, f"seed={seed}"
    assert replica.snapshot() == workload.log.store.snapshot(), f"seed={seed}"
    assert replica.stats == workload.log.store.stats, f"seed={seed}"


# ---- size, as the quota counts it ----------------------------------------------------------


def counted(store: KVStore) -> int:
    return sum(len(k) + len(store.get(k)) + KEY_OVERHEAD for k, _ in store.scan(b"", 10**6))


@pytest.mark.parametrize("seed", SEEDS)
def test_size_counts_keys_values_and_the_per_key_overhead_through_any_writes(seed: int) -> None:
    rng = random.Random(seed)
    log = Log(KVStore())
    cid = log.open()
    for seq in range(1, 300):
        key = b"k%d" % rng.randrange(20)
        value = os.urandom(rng.randrange(0, 40))
        kind = rng.randrange(3)
        if kind == 0:
            log.put(cid, seq, key, value)
        elif kind == 1:
            log.delete(cid, seq, key)
        else:
            log.cas(cid, seq, key, log.store.get(key) if rng.random() < 0.7 else b"?", value)
        assert log.store.size == counted(log.store)
        assert log.store.growth(key, b"xy") == (
            len(key) + 2 + KEY_OVERHEAD if log.store.get(key) is None
            else 2 - len(log.store.get(key)))
    again = KVStore()
    again.restore(log.store.snapshot())
    assert again.size == log.store.size


def test_a_scan_with_revisions_answers_each_keys_record() -> None:
    log = Log(KVStore())
    first = log.put(0, 0, b"a/1", b"x").value
    second = log.put(0, 0, b"a/1", b"y").value
    third = log.put(0, 0, b"a/2", b"z").value
    log.put(0, 0, b"b", b"-")
    assert log.store.scan_kv(b"a/", 10) == [[b"a/1", b"y", first, second, 2],
                                          [b"a/2", b"z", third, third, 1]]
    assert log.store.scan_kv(b"a/", 10, b"a/2") == [[b"a/2", b"z", third, third, 1]]
    assert [kv[:2] for kv in log.store.scan_kv(b"", 10)] == \
        [list(p) for p in log.store.scan(b"", 10)]


def test_oldest_answers_the_first_created_key_under_a_prefix_also_inside_a_txn() -> None:
    log = Log(KVStore())
    assert log.store.oldest(b"q/") is None
    b = log.put(0, 0, b"q/b", b"1").value
    log.put(0, 0, b"q/a", b"2")
    log.put(0, 0, b"q/b", b"3")  # rewritten: still created first
    assert log.store.oldest(b"q/") == [b"q/b", b"3", b, log.store.applied_index, 2]
    reply = log.txn([], [[int(Op.DELETE), b"q/b"], [int(Op.OLDEST), b"q/"]])
    assert reply.value[1][1][0] == b"q/a"  # sees the delete before it
    reply = log.txn([], [[int(Op.OLDEST), b"none/"]])
    assert reply.value == [True, [None]]


@pytest.mark.parametrize("seed", SEEDS)
def test_scans_answer_what_a_pass_over_every_key_would_through_puts_deletes_and_restore(
        seed: int) -> None:
    """The memory store's sorted key index against the brute-force answer: keys that
    share prefixes, are prefixes of one another, sit at byte boundaries (0x00, 0xff)."""
    rng = random.Random(seed)
    alphabet = [b"a", b"ab", b"\x00", b"\xff", b"b/", b"a\xff"]
    log = Log(KVStore())
    model: dict[bytes, bytes] = {}
    for step in range(400):
        key = b"".join(rng.choices(alphabet, k=rng.randint(1, 3)))
        if rng.random() < 0.3:
            log.delete(0, 0, key)
            model.pop(key, None)
        else:
            log.put(0, 0, key, b"%d" % step)
            model[key] = b"%d" % step
        if step == 200:  # a restored store builds its index from the snapshot's keys
            restored = KVStore()
            restored.restore(log.store.snapshot())
            log.store = restored
        prefix = b"".join(rng.choices(alphabet, k=rng.randint(0, 2)))
        start = b"".join(rng.choices(alphabet, k=rng.randint(0, 3)))
        limit = rng.randint(1, 12)
        want = sorted((k, v) for k, v in model.items()
                      if k.startswith(prefix) and k >= start)[:limit]
        assert log.store.scan(prefix, limit, start) == want, (prefix, start, limit)
    assert log.store.scan(b"", 10**6) == sorted(model.items()) and len(log.store) == len(model)
