"""The wire codec (raftkv/wire.py): round trips, and garbage that must never escape as
anything but MalformedFrame or InvalidRequest.

Fuzz tests are seeded; a failure names its seed. Replay one with
RAFTKV_WIRE_SEED=<seed> .venv/bin/python -m pytest tests/unit/test_wire.py -k fuzz
"""

from __future__ import annotations

import contextlib
import os
import random
import time

import msgpack
import pytest

from raftkv import kv, wire
from raftkv.raft.types import Entry, EntryType, Message, MsgType, SnapshotMeta
from raftkv.wire import (
    MAX_BATCH,
    VERSION,
    ClientReply,
    ClientRequest,
    FrameError,
    InvalidRequest,
    Kind,
    MalformedFrame,
    ReplyCode,
    ReqOp,
    RequestBatch,
    SnapshotChunk,
    decode_frame,
    decode_message,
    decode_replies,
    decode_reply,
    decode_request,
    encode_get,
    encode_message,
    encode_put,
    encode_replies,
    encode_reply,
    encode_request,
    encode_requests,
    encode_snapshot_chunk,
    max_entry_size,
    split_batch,
)

SEEDS = [int(os.environ["RAFTKV_WIRE_SEED"])] if os.environ.get("RAFTKV_WIRE_SEED") else range(8)


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def entries(first: int, n: int, term: int = 3, size: int = 10) -> list[Entry]:
    types = list(EntryType)
    return [
        Entry(term, first + i, types[i % len(types)], bytes([i % 256]) * size) for i in range(n)
    ]


def full_message(t: MsgType, with_entries: bool) -> Message:
    return Message(
        t,
        to=2,
        frm=3,
        term=7,
        log_term=3 if with_entries else 6,
        index=41,
        entries=entries(42, 5) if with_entries else [],
        commit=40,
        reject=t == MsgType.APP_RESP,
        reject_hint=12,
        context=2**64 - 1,
    )


# ---- peer frames ------------------------------------------------------------------


@pytest.mark.parametrize("t", list(MsgType))
def test_every_message_type_round_trips(t: MsgType) -> None:
    m = full_message(t, with_entries=False)
    back = decode_message(encode_message(m))
    assert back == m
    assert type(back.type) is MsgType


def test_append_with_entries_round_trips_with_enum_entry_types() -> None:
    m = full_message(MsgType.APP, with_entries=True)
    back = decode_frame(encode_message(m))
    assert back == m
    assert [type(e.type) for e in back.entries] == [EntryType] * 5


def test_defaults_round_trip() -> None:
    m = Message(MsgType.VOTE, 1, 2, 1)
    assert decode_message(encode_message(m)) == m


@pytest.mark.parametrize("t", [t for t in MsgType if t != MsgType.APP])
def test_entries_on_anything_but_append_are_malformed(t: MsgType) -> None:
    m = full_message(MsgType.APP, with_entries=True)
    m.type = t
    with pytest.raises(MalformedFrame, match="carries entries"):
        decode_message(encode_message(m))


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda es: es.pop(2), "consecutively"),  # a gap
        (lambda es: setattr(es[0], "index", 41), "consecutively"),  # repeats prev index
        (lambda es: setattr(es[3], "term", 2), "terms"),  # decreasing term
        (lambda es: setattr(es[0], "term", 2), "terms"),  # below log_term
        (lambda es: setattr(es[4], "term", 8), "terms"),  # above the message's term
        (lambda es: setattr(es[1], "type", 9), "entry type"),
        (lambda es: setattr(es[1], "data", "text"), "wrong type"),
        (lambda es: setattr(es[1], "index", 43.0), "wrong type"),
    ],
)
def test_append_entries_that_would_break_the_core_are_malformed(mutate, reason) -> None:
    m = full_message(MsgType.APP, with_entries=True)
    mutate(m.entries)
    with pytest.raises(MalformedFrame, match=reason):
        decode_message(encode_message(m))


def test_entry_data_is_bounded() -> None:
    limit = max_entry_size(16, 100)
    m = full_message(MsgType.APP, with_entries=True)
    m.entries[2].data = b"x" * limit
    assert decode_frame(encode_message(m), max_key=16, max_value=100) == m
    m.entries[2].data += b"x"
    with pytest.raises(MalformedFrame, match="over"):
        decode_frame(encode_message(m), max_key=16, max_value=100)


@pytest.mark.parametrize(
    "index, value",
    [
        (2, 99),  # unknown message type
        (2, True),  # bool where an int belongs (True == 1 == APP)
        (3, -1),  # negative
        (5, 1.0),  # float term
        (9, 0),  # reject must be a bool
        (12, {}),  # entries must be an array
        (12, [1, 2, 3]),  # not a multiple of 4
    ],
)
def test_peer_field_of_wrong_type_or_range_is_malformed(index: int, value: object) -> None:
    obj = msgpack.unpackb(encode_message(full_message(MsgType.HEARTBEAT, False)))
    obj[index] = value
    with pytest.raises(MalformedFrame):
        decode_message(pack(obj))


def test_peer_frame_with_another_version_or_field_count_is_malformed() -> None:
    obj = msgpack.unpackb(encode_message(full_message(MsgType.HEARTBEAT, False)))
    with pytest.raises(MalformedFrame, match="version"):
        decode_message(pack([VERSION + 1, *obj[1:]]))
    with pytest.raises(MalformedFrame, match="fields"):
        decode_message(pack([*obj, 0]))
    with pytest.raises(MalformedFrame, match="fields"):
        decode_message(pack(obj[:-1]))


# ---- client frames ----------------------------------------------------------------

REQUESTS = [
    ClientRequest(1, ReqOp.GET, key=b"k"),
    ClientRequest(1, ReqOp.GET_STALE, key=b"k"),
    ClientRequest(1, ReqOp.TRANSFER, target=3),
    ClientRequest(1, ReqOp.CONF_CHANGE, conf_op=1, target=4, address="tcp://127.0.0.1:7704"),
    ClientRequest(1, ReqOp.CONF_CHANGE, conf_op=3, target=2),
    ClientRequest(1, ReqOp.PEERS, addresses={4: "tcp://127.0.0.1:7704", 5: "tcp://h:5"}),
    ClientRequest(1, ReqOp.CONTROL, name="kill", args=(2,)),
    ClientRequest(1, ReqOp.CONTROL, name="partition", args=("1,2", "3")),
    ClientRequest(2, ReqOp.SCAN, key=b"pre", limit=10),
    ClientRequest(3, ReqOp.PUT, key=b"k", value=b"v", client_id=5, seq=1),
    ClientRequest(4, ReqOp.DELETE, key=b"k", client_id=5, seq=2),
    ClientRequest(5, ReqOp.CAS, key=b"k", expected=b"v", value=b"w", client_id=5, seq=3),
    ClientRequest(6, ReqOp.CAS, key=b"k", expected=None, value=b"w", client_id=5, seq=4),
    ClientRequest(7, ReqOp.OPEN_SESSION),
    ClientRequest(8, ReqOp.STATUS),
    ClientRequest(9, ReqOp.FAULT, peers=frozenset({2, 3})),
    ClientRequest(10, ReqOp.FAULT),
    ClientRequest(2**64 - 1, ReqOp.GET, key=b""),
    # client_id = seq = 0: a write without a session (kv.py: applied at most once)
    ClientRequest(11, ReqOp.PUT, key=b"k", value=b"v"),
    ClientRequest(12, ReqOp.DELETE, key=b"k"),
    ClientRequest(13, ReqOp.CAS, key=b"k", expected=None, value=b"w"),
    ClientRequest(14, ReqOp.TXN, client_id=5, seq=5,
                  txn=([[1, b"k", 0, 3], [0, b"j", 1, None]], [[1, b"k", b"v"], [5, b"k"]],
                       [[2, b"k"]])),
    ClientRequest(15, ReqOp.TXN, txn=([], [], [])),
    ClientRequest(16, ReqOp.GET_KV, key=b"k"),
    ClientRequest(17, ReqOp.SCAN, key=b"pre", limit=10, start=b"pre-7\x00"),
    ClientRequest(25, ReqOp.SCAN, key=b"pre", limit=10, revisions=True),
    ClientRequest(26, ReqOp.OLDEST, key=b"__lock/jobs/"),
    ClientRequest(27, ReqOp.LEASE_LIST),
    ClientRequest(18, ReqOp.WATCH, key=b"cfg/", prefix=True, revision=7, wait_ms=1000),
    ClientRequest(19, ReqOp.WATCH, key=b"k"),
    ClientRequest(20, ReqOp.PUT, key=b"k", value=b"v", client_id=5, seq=6, lease=77),
    ClientRequest(21, ReqOp.LEASE_GRANT, client_id=5, seq=7, ttl_ms=3000),
    ClientRequest(22, ReqOp.LEASE_REVOKE, lease=77),
    ClientRequest(23, ReqOp.LEASE_KEEPALIVE, lease=77),
    ClientRequest(24, ReqOp.LEASE_INFO, lease=2**64 - 1),
]


@pytest.mark.parametrize("args", [
    [ReqOp.LEASE_GRANT, 0, 0, 0], [ReqOp.LEASE_GRANT, 0, 0, 2**41], [ReqOp.LEASE_GRANT, 1, 0, 5],
    [ReqOp.LEASE_REVOKE, 0, 0, 0], [ReqOp.LEASE_KEEPALIVE, "1"], [ReqOp.LEASE_INFO, True],
    [ReqOp.LEASE_LIST, 1],
    [ReqOp.PUT, 5, 1, b"k", b"v", 0], [ReqOp.PUT, 5, 1, b"k", b"v", None],
])
def test_a_lease_request_out_of_range_is_answered_not_served(args: list) -> None:
    with pytest.raises(InvalidRequest) as e:
        decode_request(pack([VERSION, Kind.REQ, 9, *args]))
    assert e.value.request_id == 9


def test_a_leased_put_and_a_lease_grant_propose_what_kv_applies() -> None:
    put = decode_request(encode_request(REQUESTS[-5]))
    assert msgpack.unpackb(put.command()) == [kv.Op.PUT, 5, 6, b"k", b"v", 77]
    grant = decode_request(encode_request(ClientRequest(1, ReqOp.LEASE_GRANT, ttl_ms=3000)))
    store = kv.KVStore()
    assert store.apply(42, grant.command()) == kv.Reply(kv.Code.OK, 42)
    assert store.lease_ttls == {42: 3000}


@pytest.mark.parametrize("req", REQUESTS, ids=lambda r: f"{r.op.name}-{r.request_id}")
def test_every_request_round_trips(req: ClientRequest) -> None:
    back = decode_request(encode_request(req), identity=b"\0abc")
    assert back == ClientRequest(**{**_fields(req), "identity": b"\0abc"})
    assert decode_frame(encode_request(req), identity=b"\0abc") == back


def _fields(req: ClientRequest) -> dict:
    return {f: getattr(req, f) for f in req.__slots__}


def test_every_op_has_a_round_trip_case() -> None:
    assert {r.op for r in REQUESTS} == set(ReqOp)


def test_data_ops_share_kv_numbers_and_codes_share_kv_codes() -> None:
    for op in kv.Op:
        assert ReqOp[op.name] == op
    for code in kv.Code:
        assert ReplyCode[code.name] == code


def test_encode_put_is_the_frame_encode_request_makes_of_a_put() -> None:
    put = ClientRequest(7, ReqOp.PUT, key=b"k", value=b"v" * 100, client_id=3, seq=9)
    frame = encode_put(7, 3, 9, b"k", b"v" * 100)
    assert frame == encode_request(put)
    assert decode_request(frame, identity=b"x") == decode_request(encode_request(put),
                                                                  identity=b"x")
    with pytest.raises(ValueError, match="cannot encode PUT 8"):
        encode_put(8, 3, -1 << 70, b"k", b"v")


def test_encode_get_is_the_frame_encode_request_makes_of_a_get() -> None:
    get = ClientRequest(7, ReqOp.GET, key=b"k")
    assert encode_get(7, b"k") == encode_request(get)
    assert decode_request(encode_get(7, b"k"), identity=b"x") == ClientRequest(
        7, ReqOp.GET, key=b"k", identity=b"x")
    with pytest.raises(InvalidRequest, match="key of 5 bytes exceeds the limit of 4"):
        decode_request(encode_get(8, b"kkkkk"), max_key=4)  # past the fast path's check
    with pytest.raises(InvalidRequest, match="key must be bytes"):
        decode_request(msgpack.packb([VERSION, int(Kind.REQ), 9, int(ReqOp.GET), "k"]))


def test_write_request_becomes_the_kv_command() -> None:
    store = kv.KVStore()
    assert store.apply(1, ClientRequest(1, ReqOp.OPEN_SESSION).command()) == (kv.Code.OK, 1)
    put = ClientRequest(2, ReqOp.PUT, key=b"k", value=b"v", client_id=1, seq=1)
    assert decode_request(encode_request(put)).command() == put.command()
    assert store.apply(2, put.command()).ok
    assert store.get(b"k") == b"v"
    with pytest.raises(kv.BadRequest):
        ClientRequest(3, ReqOp.GET, key=b"k").command()


REPLIES = [
    (ReplyCode.OK, None),
    (ReplyCode.OK, b"value"),
    (ReplyCode.OK, True),
    (ReplyCode.OK, 12345),
    (ReplyCode.OK, [[b"a", b"1"], [b"b", b"2"]]),
    (ReplyCode.OK, {"leader": 2, "terms": {1: 3, 2: 3}}),  # int map keys allowed
    (ReplyCode.BAD_REQUEST, "value of 5 bytes exceeds the limit of 4"),
    (ReplyCode.STALE_REQUEST, "stale"),
    (ReplyCode.SESSION_EXPIRED, "expired"),
    (ReplyCode.NOT_FOUND, "lease 7 not found"),
    (ReplyCode.NOT_LEADER, "ask node 3"),
    (ReplyCode.UNAVAILABLE, "no leader"),
    (ReplyCode.QUOTA_EXCEEDED, "the state holds 2,147,483,000 bytes"),
    (ReplyCode.FORBIDDEN, "FAULT needs the admin key; this connection has a client key"),
    (ReplyCode.COMPACTED, 42),
    (ReplyCode.OK, [9, [[7, 1, b"k", b"v"], [8, 2, b"k", None]]]),  # WATCH's events
]


@pytest.mark.parametrize("code, value", REPLIES)
def test_every_reply_round_trips(code: ReplyCode, value: object) -> None:
    back = decode_reply(encode_reply(99, code, value, 3))
    assert back == ClientReply(99, code, value, 3)
    assert type(back.code) is ReplyCode
    assert back.ok == (code == ReplyCode.OK)


def test_every_reply_code_has_a_round_trip_case() -> None:
    assert {code for code, _ in REPLIES} == set(ReplyCode)


# ---- batches (REQS / REPS) ---------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 15, 16, 300, 70_000])  # every msgpack array header size
def test_a_reply_batch_round_trips_in_order(n: int) -> None:
    replies = [ClientReply(i, ReplyCode.OK, bytes([i % 256]) * (i % 5), 2) for i in range(n)]
    frame = encode_replies([encode_reply(r.request_id, r.code, r.value, r.leader_hint)
                            for r in replies])
    assert msgpack.unpackb(frame)[:2] == [VERSION, Kind.REPS]
    assert decode_replies(frame) == replies


def test_decode_replies_takes_a_plain_reply_too() -> None:
    assert decode_replies(encode_reply(7, ReplyCode.NOT_LEADER, "ask 2", 2)) == [
        ClientReply(7, ReplyCode.NOT_LEADER, "ask 2", 2)]


@pytest.mark.parametrize("frame", [
    pack([VERSION, Kind.REPS]),
    pack([VERSION, Kind.REPS, "nope"]),
    pack([VERSION, Kind.REPS, [[VERSION, Kind.REQ, 1, ReqOp.STATUS]]]),
    pack([VERSION, Kind.REPS, [[VERSION, Kind.REP, 1, 99, None, 0]]]),
    pack([VERSION, Kind.REQS, []]),
])
def test_a_bad_reply_batch_is_malformed(frame: bytes) -> None:
    with pytest.raises(MalformedFrame):
        decode_replies(frame)


def test_a_request_batch_is_served_answered_or_dropped_element_by_element() -> None:
    put = ClientRequest(1, ReqOp.PUT, key=b"k", value=b"v", client_id=3, seq=4)
    get = ClientRequest(2, ReqOp.GET, key=b"k")
    too_big = ClientRequest(3, ReqOp.PUT, key=b"k", value=b"x" * 17, client_id=3, seq=5)
    frame = encode_requests([encode_request(put), pack("garbage"), encode_request(get),
                             encode_request(too_big), encode_reply(9, ReplyCode.OK)])
    batch = decode_frame(frame, identity=b"c1", max_value=16)
    assert type(batch) is RequestBatch
    assert [(r.request_id, r.op, r.identity) for r in batch.requests] == [
        (1, ReqOp.PUT, b"c1"), (2, ReqOp.GET, b"c1")]
    assert batch.requests[0].command() == put.command()
    assert [e.request_id for e in batch.invalid] == [3]
    assert "limit of 16" in batch.invalid[0].message
    assert batch.malformed == 2


@pytest.mark.parametrize("frame", [
    pack([VERSION, Kind.REQS]),
    pack([VERSION, Kind.REQS, {}]),
    pack([VERSION, Kind.REQS, [], 1]),
    pack([VERSION + 1, Kind.REQS, []]),
    encode_requests([encode_request(ClientRequest(1, ReqOp.STATUS))] * (MAX_BATCH + 1)),
])
def test_a_bad_request_batch_is_malformed(frame: bytes) -> None:
    with pytest.raises(MalformedFrame):
        decode_frame(frame)


def test_reply_with_unpackable_value_raises_value_error() -> None:
    with pytest.raises(ValueError, match="request 5"):
        encode_reply(5, ReplyCode.OK, object())


def invalid(obj: list) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        decode_request(pack(obj), max_key=8, max_value=16)
    return info.value


@pytest.mark.parametrize(
    "args, message",
    [
        ([99], "unknown op 99"),
        (["get", b"k"], "unknown op 'get'"),
        ([ReqOp.GET], "takes 1 arguments, not 0"),
        ([ReqOp.GET, b"k", b"extra"], "takes 1 arguments, not 2"),
        ([ReqOp.GET, "k"], "key must be bytes, not str"),
        ([ReqOp.GET, b"k" * 9], "key of 9 bytes exceeds the limit of 8"),
        ([ReqOp.PUT, 1, 1, b"k", b"v" * 17], "value of 17 bytes exceeds the limit of 16"),
        ([ReqOp.PUT, 1, 1, b"k", None], "value must be bytes"),
        ([ReqOp.PUT, 0, 1, b"k", b"v"], "client_id must be an int"),
        ([ReqOp.PUT, 1, -1, b"k", b"v"], "seq must be an int"),
        ([ReqOp.PUT, 1, 0, b"k", b"v"], "both 0"),
        ([ReqOp.DELETE, 0, 3, b"k"], "both 0"),
        ([ReqOp.PUT, 1, True, b"k", b"v"], "seq must be an int"),
        ([ReqOp.CAS, 1, 1, b"k", b"e" * 17, b"v"], "expected value of 17 bytes"),
        ([ReqOp.CAS, 1, 1, b"k", 3, b"v"], "expected value must be bytes or None"),
        ([ReqOp.SCAN, b"p", -1], "scan limit"),
        ([ReqOp.SCAN, b"p", "all"], "scan limit"),
        ([ReqOp.SCAN, b"p", 5, None], "scan start must be bytes"),
        ([ReqOp.SCAN, b"p", 5, b"s" * 9], "scan start must be bytes of at most 8"),
        ([ReqOp.SCAN, b"p", 5, b"s", True, 1], "takes 2 to 4 arguments, not 5"),
        ([ReqOp.SCAN, b"p", 5, b"s", 1], "scan revisions must be a bool"),
        ([ReqOp.WATCH, b"k", 1, 0, 0], "prefix (bool)"),
        ([ReqOp.WATCH, b"k", False, -1, 0], "start revision"),
        ([ReqOp.WATCH, b"k", False, 0, 60_001], "wait of 0-60000 ms"),
        ([ReqOp.WATCH, b"k" * 9, False, 0, 0], "key of 9 bytes"),
        ([ReqOp.FAULT, [0]], "node ids >= 1"),
        ([ReqOp.FAULT, 2], "node ids >= 1"),
        ([ReqOp.FAULT, list(range(1, 2000))], "at most 1024"),
        ([ReqOp.STATUS, 1], "takes 0 arguments"),
        ([ReqOp.TRANSFER, 0], "node id >= 1"),
        ([ReqOp.TRANSFER, "2"], "node id >= 1"),
        ([ReqOp.CONF_CHANGE, 9, 4, ""], "1 add learner, 2 promote, 3 remove"),
        ([ReqOp.CONF_CHANGE, 2, 0, ""], "a node id >= 1"),
        ([ReqOp.CONF_CHANGE, 2, 4, "x" * 300], "at most 256"),
        ([ReqOp.CONF_CHANGE, 1, 4, ""], "needs its tcp:// address"),
        ([ReqOp.CONF_CHANGE, 1, 4], "takes 3 arguments"),
        ([ReqOp.PEERS, [[0, "tcp://h:1"]]], "node id >= 1"),
        ([ReqOp.PEERS, [[4, "udp://h:1"]]], "tcp:// address"),
        ([ReqOp.PEERS, [4, "tcp://h:1"]], "pairs"),
        ([ReqOp.CONTROL, "", []], "command name"),
        ([ReqOp.CONTROL, "kill", [1.5]], "ints or strs"),
        ([ReqOp.CONTROL, "kill", 2], "ints or strs"),
        ([ReqOp.GET_KV, b"k" * 9], "key of 9 bytes exceeds the limit of 8"),
        ([ReqOp.TXN, 1, 1, [], []], "takes 5 arguments"),
        ([ReqOp.TXN, 0, 1, [], [], []], "client_id must be an int"),
        ([ReqOp.TXN, 1, 1, [[1, b"k" * 9, 0, 1]], [], []], "compare key"),
        ([ReqOp.TXN, 1, 1, [], [[1, b"k", b"v" * 17]], []], "value of 17 bytes"),
        ([ReqOp.TXN, 1, 1, [], [[1, b"k", b"1"], [1, b"k", b"2"]], []], "written twice"),
        # each op fits the limits, but not the whole in one log entry (max_entry_size)
        ([ReqOp.TXN, 1, 1, [], [[1, b"k%d" % i, b"v" * 16] for i in range(6)], []],
         "over the limit"),
        ([], "no op"),
    ],
)
def test_invalid_request_names_the_problem_and_keeps_the_request_id(args, message) -> None:
    e = invalid([VERSION, Kind.REQ, 77, *args])
    assert e.request_id == 77
    assert message in e.message


def test_request_of_another_version_is_answered_not_dropped() -> None:
    e = invalid([VERSION + 1, Kind.REQ, 5, "whatever", "the", "layout"])
    assert e.request_id == 5
    assert "protocol version 2 is not supported" in e.message


@pytest.mark.parametrize(
    "obj",
    [
        [VERSION, Kind.REQ],  # no request id
        [VERSION, Kind.REQ, -1, ReqOp.GET, b"k"],
        [VERSION, Kind.REQ, "7", ReqOp.GET, b"k"],
        [VERSION, Kind.REP, 7, 0, None, 0],  # a reply sent to a node
        [VERSION, 9, 7],
        ["1", Kind.REQ, 7, ReqOp.GET, b"k"],
        {"version": 1},
        7,
    ],
)
def test_garbage_that_is_not_a_request_is_malformed(obj: object) -> None:
    with pytest.raises(MalformedFrame):
        decode_frame(pack(obj))


@pytest.mark.parametrize(
    "obj",
    [
        [VERSION, Kind.REP, 7, 99, None, 0],  # unknown code
        [VERSION, Kind.REP, 7, 0, None],  # too short
        [VERSION, Kind.REP, 7, 0, None, -1],
        [VERSION + 1, Kind.REP, 7, 0, None, 0],
        [VERSION, Kind.REQ, 7, ReqOp.GET, b"k"],
    ],
)
def test_bad_reply_is_malformed(obj: object) -> None:
    with pytest.raises(MalformedFrame):
        decode_reply(pack(obj))


def test_non_bytes_input_is_malformed() -> None:
    with pytest.raises(MalformedFrame, match="not bytes"):
        decode_frame("text")  # type: ignore[arg-type]


# ---- fuzz -------------------------------------------------------------------------


def valid_frames() -> list[bytes]:
    frames = [encode_message(full_message(t, False)) for t in MsgType]
    frames.append(encode_message(full_message(MsgType.APP, True)))
    frames.append(encode_snapshot_chunk(CHUNK))
    frames += [encode_request(r) for r in REQUESTS]
    return frames


def random_value(rng: random.Random, depth: int = 0) -> object:
    choices = [
        lambda: rng.randrange(-(2**63), 2**64),
        lambda: rng.choice([0, 1, 2, 3, VERSION, -1, 2**64 - 1]),
        lambda: rng.random(),
        lambda: rng.choice([True, False, None]),
        lambda: rng.randbytes(rng.randrange(0, 40)),
        lambda: "s" * rng.randrange(0, 5),
    ]
    if depth < 3:
        choices.append(lambda: [random_value(rng, depth + 1) for _ in range(rng.randrange(0, 6))])
        choices.append(lambda: {b"k": random_value(rng, depth + 1)})
    return rng.choice(choices)()


def mutations(rng: random.Random, frame: bytes) -> list[bytes]:
    obj = msgpack.unpackb(frame)
    out = [
        rng.randbytes(rng.randrange(0, 64)),  # random bytes
        frame[: rng.randrange(0, len(frame))],  # truncated
        frame + rng.randbytes(rng.randrange(1, 8)),  # trailing garbage
        bytes(b ^ (1 << rng.randrange(8)) if rng.random() < 0.05 else b for b in frame),
        b"\xdb\xff\xff\xff\xff" + b"x" * 10,  # str32 claiming 4 GiB
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 G elements
        b"\xc6\x7f\xff\xff\xff" + b"x",  # bin32 claiming 2 GiB
        b"\x91" * 5000 + b"\xc0",  # nesting deeper than the unpacker's stack
        b"\xd4\x01\x00",  # ext type
        b"\xd6\xff\x00\x00\x00\x01",  # timestamp ext
    ]
    for _ in range(6):  # one field replaced by something random
        o = list(obj)
        o[rng.randrange(len(o))] = random_value(rng)
        out.append(pack(o))
    o = list(obj)
    o[0] = VERSION + rng.randrange(1, 5)  # wrong version
    out.append(pack(o))
    out.append(pack(obj[: rng.randrange(0, len(obj))]))  # missing fields
    out.append(pack(obj + [random_value(rng)]))  # extra field
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_decoders_raise_only_frame_errors(seed: int) -> None:
    rng = random.Random(seed)
    try:
        for frame in valid_frames():
            for bad in mutations(rng, frame):
                for decode in (decode_frame, decode_message, decode_request, decode_reply):
                    with contextlib.suppress(FrameError):
                        decode(bad)
    except Exception as e:  # anything else is a bug; name the seed to replay it
        raise AssertionError(
            f"seed {seed}: {type(e).__name__}: {e} (RAFTKV_WIRE_SEED={seed})"
        ) from e


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_random_structures_raise_only_frame_errors(seed: int) -> None:
    rng = random.Random(seed)
    kinds = [Kind.RAFT, Kind.REQ, Kind.REP, Kind.SNAP_CHUNK]
    try:
        for _ in range(2000):
            obj = [VERSION, rng.choice(kinds)]
            obj += [random_value(rng) for _ in range(rng.randrange(0, 15))]
            with contextlib.suppress(FrameError):
                decode_frame(pack(obj))
    except Exception as e:
        raise AssertionError(
            f"seed {seed}: {type(e).__name__}: {e} (RAFTKV_WIRE_SEED={seed})"
        ) from e


# ---- throughput (printed, not asserted) -------------------------------------------


def test_append_codec_throughput_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    m = Message(MsgType.APP, 2, 1, 5, log_term=5, index=99, entries=entries(100, 64, 5, 100))
    frame = encode_message(m)
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        decode_frame(encode_message(m))
    rate = n / (time.perf_counter() - start)
    hb = Message(MsgType.HEARTBEAT, 2, 1, 5, commit=3, context=9)
    start = time.perf_counter()
    for _ in range(n * 10):
        decode_frame(encode_message(hb))
    hb_rate = n * 10 / (time.perf_counter() - start)
    with capsys.disabled():
        print(
            f"\nwire: APP with 64 x 100 B entries ({len(frame)} B): {rate:,.0f} encode+decode/s; "
            f"HEARTBEAT: {hb_rate:,.0f}/s"
        )


CHUNK = SnapshotChunk(2, 1, 7, SnapshotMeta(100, 6, (1, 2, 3), ()), 4096, 10_000,
                      0xFFFF_FFFF, b"x" * 100)


def test_snapshot_chunk_round_trips_with_its_checksum() -> None:
    assert decode_frame(encode_snapshot_chunk(CHUNK)) == CHUNK
    zero = SnapshotChunk(2, 1, 7, SnapshotMeta(1, 1, (1,), (4,)), 0, 0, 0, b"")
    assert decode_frame(encode_snapshot_chunk(zero)) == zero


@pytest.mark.parametrize("obj", [
    [VERSION, 4, 2, 1, 7, 100, 6, [1, 2, 3], [], 9_950, 10_000, 5, b"x" * 100],  # past total
    [VERSION, 4, 2, 1, 7, 0, 6, [1, 2, 3], [], 0, 10, 5, b"x"],  # index 0
    [VERSION, 4, 2, 1, 7, 100, 6, [0], [], 0, 10, 5, b"x"],  # not a node id
    [VERSION, 4, 2, 1, 7, 100, 6, [1], [], 0, 10, 5, "x"],  # data not bytes
    [VERSION, 4, 2, 1, 7, 100, 6, [1], [], 0, 10, 5],  # short
    [VERSION, 4, 2, 1, 7, 100, 6, [1], [], 0, 10, b"x"],  # the layout before the checksum
    [VERSION, 4, 2, 1, 7, 100, 6, [1], [], 0, 10, 5, b"x", 0],  # a field too many
])
def test_snapshot_chunk_of_the_wrong_shape_is_malformed(obj: list) -> None:
    with pytest.raises(MalformedFrame):
        decode_frame(pack(obj))


@pytest.mark.parametrize("checksum", [None, b"\x00\x00\x00\x05", "5", 5.0, True, -1, 2**32,
                                      2**64 - 1, [5]])
def test_snapshot_chunk_checksum_must_be_a_crc32(checksum: object) -> None:
    obj = [VERSION, 4, 2, 1, 7, 100, 6, [1, 2, 3], [], 0, 10, checksum, b"x"]
    with pytest.raises(MalformedFrame):
        decode_frame(pack(obj))


# ---- splitting a batch, for a proxy ----------------------------------------------------


def test_split_batch_gives_back_each_element_as_it_was_encoded() -> None:
    reqs = [encode_request(ClientRequest(i, ReqOp.GET, key=b"k%d" % i)) for i in range(20)]
    reps = [encode_reply(i, ReplyCode.OK, b"v" * i, 2) for i in range(3)]
    assert split_batch(encode_requests(reqs), Kind.REQS) == reqs
    assert split_batch(encode_replies(reps), Kind.REPS) == reps
    assert split_batch(encode_requests([]), Kind.REQS) == []


def test_split_batch_leaves_what_is_not_a_batch_of_its_kind() -> None:
    req = encode_request(ClientRequest(1, ReqOp.GET, key=b"k"))
    assert split_batch(req, Kind.REQS) is None
    assert split_batch(encode_requests([req]), Kind.REPS) is None
    assert split_batch(b"", Kind.REQS) is None


@pytest.mark.parametrize("frame", [
    encode_requests([encode_request(ClientRequest(1, ReqOp.GET, key=b"k"))])[:-1],
    encode_requests([encode_request(ClientRequest(1, ReqOp.GET, key=b"k"))]) + b"\x00",
    b"\x93\x01\x05\x01",  # the third element is no array
    b"\x93\x02\x05\x90",  # another protocol version
], ids=["truncated", "trailing bytes", "not an array", "version"])
def test_split_batch_refuses_a_broken_batch(frame: bytes) -> None:
    with pytest.raises(MalformedFrame):
        split_batch(frame, Kind.REQS)


# ---- what a proxy reads of a frame ---------------------------------------------------


@pytest.mark.parametrize("rid", [0, 1, 127, 128, 255, 256, 65_535, 65_536, 2**32, 2**64 - 1])
@pytest.mark.parametrize("req", [
    ClientRequest(0, ReqOp.PUT, b"k", b"v", client_id=3, seq=4),
    ClientRequest(0, ReqOp.GET, b"k"),
    ClientRequest(0, ReqOp.OPEN_SESSION),
    ClientRequest(0, ReqOp.STATUS),
    ClientRequest(0, ReqOp.CONTROL, name="kill", args=(1,)),
])
def test_peek_request_reads_the_id_and_op_from_the_header(rid, req):
    req.request_id = rid
    assert wire.peek_request(encode_request(req)) == (rid, req.op)


def test_peek_request_raises_what_decode_request_raises_for_a_header_it_cannot_read():
    with pytest.raises(wire.InvalidRequest, match="unknown op") as e:
        wire.peek_request(msgpack.packb([1, 2, 77, 99]))
    assert e.value.request_id == 77
    with pytest.raises(wire.InvalidRequest, match="version"):
        wire.peek_request(msgpack.packb([9, 2, 5, 5, b"k"]))
    for junk in (b"", b"\xc1garbage", msgpack.packb([1, 3, 5, 0, None, 0])):
        with pytest.raises(wire.MalformedFrame):
            wire.peek_request(junk)


def test_not_leader_hint_is_read_from_a_lone_not_leader_reply_only():
    for rid in (1, 300, 2**40):
        frame = encode_reply(rid, ReplyCode.NOT_LEADER, "not the leader", 3)
        assert wire.not_leader_hint(frame) == 3
    assert wire.not_leader_hint(encode_reply(1, ReplyCode.NOT_LEADER, "x", 0)) == 0
    assert wire.not_leader_hint(encode_reply(1, ReplyCode.OK, b"v", 3)) is None
    assert wire.not_leader_hint(encode_reply(1, ReplyCode.UNAVAILABLE, "x", 3)) is None
    batch = wire.encode_replies([encode_reply(1, ReplyCode.NOT_LEADER, "x", 3)])
    assert wire.not_leader_hint(batch) is None  # a REPS is not opened
    assert wire.not_leader_hint(b"\x96\x01\x03\x01\x10") is None  # cut short
