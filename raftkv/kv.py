"""The replicated state machine: a bytes -> bytes map with client sessions.

Every replica applies the same committed log entries in the same order, so everything
`KVStore.apply` does is a deterministic function of (state, index, data): no clock, no
randomness, no dependence on configuration that replicas could disagree on other than
the limits given to the constructor (which must be the same on every replica).

Writes go through the log; reads are served by the node outside it (ReadIndex, thesis
§6.4) with `KVStore.get` and `KVStore.scan`.

Wire form of a command (`Entry.data`), a msgpack array whose first element is the op::

    [Op.PUT,          client_id, seq, key, value]          -> Reply(OK, revision: int)
    [Op.PUT,          client_id, seq, key, value, lease]   -> Reply(OK, revision: int)
    [Op.DELETE,       client_id, seq, key]                 -> Reply(OK, existed: bool)
    [Op.CAS,          client_id, seq, key, expected, new]  -> Reply(OK, swapped: bool)
    [Op.OPEN_SESSION]                                      -> Reply(OK, client_id: int)
    [Op.TXN,          client_id, seq, compares, success, failure]
                                                           -> Reply(OK, [succeeded, results])
    [Op.LEASE_GRANT,  client_id, seq, ttl_ms]              -> Reply(OK, lease_id: int)
    [Op.LEASE_REVOKE, client_id, seq, lease_id]            -> Reply(OK, existed: bool)

`key`, `value`, `new` are msgpack bin (Python bytes); `expected` is bin or nil, nil
meaning "the key is absent". An empty `data` is a no-op (an empty normal entry is a
common leader no-op) and answers Reply(OK, None).

Revisions (etcd's). The revision of a write is the log index of its entry, so it grows
with every write and all replicas agree on it. Each key carries three numbers beside its
value (`KeyValue`): `create_revision`, the revision of the put that created it (since
its last delete); `mod_revision`, of its last change; `version`, how many puts since it
was created (1 at creation). A key that is absent has all three at 0, as in etcd.

A transaction (TXN) is one log entry, so it applies whole or not at all (etcd's Txn): if
every compare holds, the `success` ops run in order, otherwise the `failure` ops::

    compare = [target, key, cmp, operand]   target: Target.VALUE (operand bin or nil,
              nil: absent), MOD / CREATE / VERSION (operand int >= 0); cmp: Cmp
    op      = [Op.PUT, key, value] or [Op.PUT, key, value, lease] -> revision
            | [Op.DELETE, key] -> existed
            | [Op.OLDEST, prefix] -> [key, value, create_revision, mod_revision, version]
              of the key under prefix with the lowest create_revision, or nil
            | [Op.GET, key] -> [value, create_revision, mod_revision, version] or nil

A GET in a transaction sees the writes before it in the same transaction. A key is
written at most once in each branch, and each list holds at most MAX_TXN_OPS items
(etcd's default --max-txn-ops).

Leases (raftkv/leases.py; etcd's). LEASE_GRANT makes a lease whose id is the entry's
index, with a TTL in milliseconds that only the leader's clock measures: the state
machine keeps the TTL and never looks at a clock. A put that names a lease attaches the
key to it (a put without one detaches it: etcd's rule); a lease that does not exist
answers NOT_FOUND and nothing is written (in a transaction, nothing at all). Revoking a
lease deletes every key it holds, each a delete event at the revoke's revision; the
leader proposes the revoke when the TTL ran out on its clock (raftkv/lease_timer.py).

Wire form of a reply: `Reply` is a NamedTuple, so msgpack packs it as the array
`[code, value]`; `Reply.from_wire` turns the unpacked array back into a `Reply`. On an
error code, `value` is a human-readable message (str).

Client sessions (thesis §6.3). A client first proposes OPEN_SESSION; its client id is the
log index of that entry, so ids are unique and every replica agrees on them. Each write
carries (client_id, seq) with seq increasing per client; the store keeps each client's
last applied seq and its reply:

- seq == last applied: a retry; answered with the saved reply, not applied again;
- seq <  last applied: STALE_REQUEST, nothing applied;
- seq >  last applied: applied, and its reply saved;
- unknown client id: SESSION_EXPIRED, nothing applied. The client may not know whether
  its request was applied; it opens a new session and must treat that request as
  indeterminate.

A write whose client_id and seq are both 0 has no session: it is applied when its entry
is, with no deduplication, so a resent copy would apply again. It saves a one-shot
writer the OPEN_SESSION entry (one log entry and one round trip instead of two), and it
is for a writer that sends it once and, if no answer comes, reports the outcome unknown
(raftkv.client: `at_most_once`).

Sessions are ordered by the log index of their last use; opening a session beyond
`max_sessions` evicts the least recently used one. Letting a client name its own id
would make an evicted client indistinguishable from a new one, so its retry would apply
twice; ids handed out by the log close that hole.

Bad data never raises from `apply`: it answers BAD_REQUEST, changes nothing but
`applied_index`, and is counted in `KVStore.stats` (local counters, not replicated).
Applying an index <= `applied_index` is a caller bug and raises `OutOfOrderApply`.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgpack

from raftkv.leases import MAX_LEASE_TTL_MS, LeaseError, LeaseTable
from raftkv.quota import KEY_OVERHEAD

if TYPE_CHECKING:
    from sortedcontainers import SortedList

MAX_KEY_SIZE = 1024
MAX_VALUE_SIZE = 1024 * 1024
MAX_SESSIONS = 10_000
# 4: each value is a record, revisions then value (`_REV`); 3: the data as a list of
# maps; 2 added the member addresses
SNAPSHOT_VERSION = 5  # 5: leases; 4 (without) still restores
MAX_TXN_OPS = 128  # compares, and ops in each branch, of one transaction (etcd's default)
# A key's record in the data: create_revision, mod_revision, version, then the value.
_REV = struct.Struct(">QQQ")
_pack_rev, _unpack_rev = _REV.pack, _REV.unpack_from
REV_SIZE = _REV.size
# The data is split over this many dicts by the key's hash, so that a dict growing past
# its size, which copies it whole (CPython doubles a dict's table: 190 ms at 2.8 million
# keys, 430 ms at 5.6 million), copies one part at a time: that stop is what lost the
# leadership at 3 and 6 million keys.
SHARDS = 256
_SHARD_MASK = SHARDS - 1
_MAX_ID = 2**64 - 1  # client ids and sequence numbers are msgpack uint64


class Op(IntEnum):
    PUT = 1
    DELETE = 2
    CAS = 3
    OPEN_SESSION = 4
    # Reads never enter the log; they have codes so `validate_request` can check them.
    GET = 5
    SCAN = 6
    TXN = 8
    LEASE_GRANT = 11
    LEASE_REVOKE = 12
    OLDEST = 15  # the key under a prefix with the lowest create_revision (a read)


WRITE_OPS = frozenset({Op.PUT, Op.DELETE, Op.CAS})


class Target(IntEnum):
    """What a transaction's compare looks at."""

    VALUE = 0
    MOD = 1  # mod_revision
    CREATE = 2  # create_revision
    VERSION = 3


class Cmp(IntEnum):
    """How a transaction's compare tests it."""

    EQ = 0
    NE = 1
    LT = 2
    GT = 3


class KeyValue(NamedTuple):
    """A key's value and revisions (`KVStore.get_kv`)."""

    value: bytes
    create_revision: int
    mod_revision: int
    version: int


class Code(IntEnum):
    """First element of a reply."""

    OK = 0
    BAD_REQUEST = 1  # malformed or over a limit; nothing applied
    STALE_REQUEST = 2  # seq below the client's last applied seq; nothing applied
    SESSION_EXPIRED = 3  # unknown (evicted or never opened) client id; nothing applied
    NOT_FOUND = 4  # the lease a write names does not exist (expired or revoked); nothing applied


class Reply(NamedTuple):
    """What `KVStore.apply` answers; msgpack packs it as `[code, value]`."""

    code: int
    value: Any = None

    @property
    def ok(self) -> bool:
        return self.code == Code.OK

    @classmethod
    def from_wire(cls, obj: object) -> Reply:
        """Rebuild a reply from its unpacked form `[code, value]`; BadRequest if it is
        not one."""
        if (
            not isinstance(obj, list | tuple)
            or len(obj) != 2
            or type(obj[0]) is not int
            or obj[0] not in _CODES
        ):
            raise BadRequest(f"not a reply: {obj!r:.100}")
        return cls(Code(obj[0]), obj[1])


# Plain ints for the hot path: comparing with an enum member costs an attribute lookup.
_PUT, _DELETE, _CAS, _OPEN_SESSION = int(Op.PUT), int(Op.DELETE), int(Op.CAS), int(Op.OPEN_SESSION)
_GET_OP, _TXN = int(Op.GET), int(Op.TXN)
_LEASE_GRANT, _LEASE_REVOKE = int(Op.LEASE_GRANT), int(Op.LEASE_REVOKE)
_OLDEST = int(Op.OLDEST)
_READ_KINDS = frozenset({_GET_OP, _OLDEST})  # a transaction's ops that write nothing
_KEY_WRITES = frozenset({_PUT, _DELETE, _CAS})
_LEASE_OPS = frozenset({_LEASE_GRANT, _LEASE_REVOKE})
_TARGETS = frozenset(int(t) for t in Target)
_CMPS = frozenset(int(c) for c in Cmp)
_CODES = frozenset(int(c) for c in Code)
_OPS = frozenset(int(op) for op in Op)
_OK_NONE = Reply(Code.OK, None)
# A reply built on the hot path: NamedTuple's own __new__ is Python code, 3x slower.
_new_reply = tuple.__new__
# A put's reply with its code as a plain int: a tuple of ints the garbage collector stops
# tracking, where an enum member in it kept each one tracked while its session held it.
_CODE_OK = int(Code.OK)
_OK_TRUE = Reply(Code.OK, True)
_OK_FALSE = Reply(Code.OK, False)


class KVError(Exception):
    """Base class of the state machine's errors."""


class BadRequest(KVError, ValueError):
    """A request the store would refuse; the message says what is wrong."""


class OutOfOrderApply(KVError, RuntimeError):
    """An entry was applied twice or out of log order: a bug in the caller."""


class SnapshotError(KVError, ValueError):
    """The bytes given to `restore` are not a snapshot this store can load."""


@dataclass(slots=True)
class Session:
    """One client's last applied request (thesis §6.3). Mutated in place by `apply`."""

    seq: int
    index: int  # log index of the last use; the order of eviction
    reply: Reply


@dataclass(slots=True)
class KVStats:
    """Local counters for status output. Not replicated state: not in snapshots."""

    malformed: int = 0
    duplicates: int = 0
    stale: int = 0
    expired: int = 0
    evicted: int = 0
    sessionless: int = 0  # writes applied without a session (at most once)


def _problem(
    op: object,
    key: object,
    value: object,
    expected: object,
    limit: object,
    max_key: int,
    max_value: int,
) -> str | None:
    """What is wrong with a request, or None. Deterministic: replies built from it are
    the same on every replica."""
    if type(key) is not bytes:
        return f"key must be bytes, not {type(key).__name__}"
    if len(key) > max_key:
        return f"key of {len(key)} bytes exceeds the limit of {max_key}"
    if op == Op.PUT or op == Op.CAS:
        if type(value) is not bytes:
            return f"value must be bytes, not {type(value).__name__}"
        if len(value) > max_value:
            return f"value of {len(value)} bytes exceeds the limit of {max_value}"
        if op == Op.CAS and expected is not None:
            if type(expected) is not bytes:
                return f"expected value must be bytes or None, not {type(expected).__name__}"
            if len(expected) > max_value:
                return f"expected value of {len(expected)} bytes exceeds the limit of {max_value}"
    elif op == Op.SCAN:
        if type(limit) is not int or limit < 0:
            return f"scan limit must be an int >= 0, not {limit!r:.40}"
        if value is not None and (type(value) is not bytes or len(value) > max_key):
            return f"scan start must be bytes of at most {max_key} bytes, not {value!r:.40}"
    elif op != Op.DELETE and op != Op.GET:
        return f"unknown op {op!r:.40}"
    return None


def session_problem(client_id: object, seq: object) -> str | None:
    """What is wrong with a write's (client_id, seq), or None: both in [1, 2**64) (a
    session's write), or both 0 (a write without a session, applied at most once)."""
    if type(client_id) is int and type(seq) is int and client_id == 0 and seq == 0:
        return None
    for name, x in (("client_id", client_id), ("seq", seq)):
        if type(x) is not int or not 1 <= x <= _MAX_ID:
            return (f"{name} must be an int in [1, 2**64) (or client_id and seq both 0: "
                    f"a write without a session), not {x!r:.40}")
    return None


def validate_request(
    op: Op,
    key: bytes,
    value: bytes | None = None,
    expected: bytes | None = None,
    limit: int | None = None,
    *,
    max_key_size: int = MAX_KEY_SIZE,
    max_value_size: int = MAX_VALUE_SIZE,
) -> None:
    """Raise BadRequest if the store would refuse this request (GET, SCAN, PUT, DELETE
    or CAS; for SCAN `key` is the prefix and `value` the start key, None for the first;
    for CAS `value` is the new value).

    The node calls it before proposing, so a bad request is answered at once instead of
    going through the log. Use `KVStore.validate_request` for a store's own limits.
    """
    problem = _problem(op, key, value, expected, limit, max_key_size, max_value_size)
    if problem is not None:
        raise BadRequest(problem)


_packer = msgpack.Packer(use_bin_type=True)  # C packer; a call holds the GIL throughout


def encode_command(
    op: Op,
    key: bytes,
    value: bytes | None = None,
    expected: bytes | None = None,
    *,
    client_id: int,
    seq: int,
    lease: int = 0,
) -> bytes:
    """Encode a write (PUT, DELETE or CAS; for CAS `value` is the new value) as entry data;
    a PUT with `lease` attaches the key to it.

    Raises BadRequest on a read op, a wrong type or an id/seq out of range. Sizes are not
    checked here: call `KVStore.validate_request` first; `apply` rechecks them with the
    store's limits, deterministically, and answers BAD_REQUEST if they are exceeded.
    """
    problem = session_problem(client_id, seq)
    if problem is None and op not in WRITE_OPS:
        problem = f"{op!r:.40} is not a write: only PUT, DELETE and CAS go through the log"
    if problem is None:
        problem = _problem(op, key, value, expected, None, _MAX_ID, _MAX_ID)
    if problem is None and lease:
        problem = (lease_id_problem(lease) if op == Op.PUT
                   else f"only a PUT takes a lease, not {op!r:.40}")
    if problem is not None:
        raise BadRequest(problem)
    if op == Op.PUT:
        if lease:
            return _packer.pack((int(op), client_id, seq, key, value, lease))
        return _packer.pack((int(op), client_id, seq, key, value))
    if op == Op.DELETE:
        return _packer.pack((int(op), client_id, seq, key))
    return _packer.pack((int(op), client_id, seq, key, expected, value))


def encode_open_session() -> bytes:
    """Entry data that opens a client session; the reply's value is the new client id."""
    return _packer.pack((int(Op.OPEN_SESSION),))


def txn_problem(compares: object, success: object, failure: object, max_key: int,
                max_value: int) -> str | None:
    """What is wrong with a transaction's three lists (the module docstring's forms),
    or None. Deterministic, as `_problem`."""
    if type(compares) is not list or type(success) is not list or type(failure) is not list:
        return "a transaction is three lists: compares, success ops, failure ops"
    if max(len(compares), len(success), len(failure)) > MAX_TXN_OPS:
        return f"a transaction holds at most {MAX_TXN_OPS} compares and ops in each branch"
    for c in compares:
        if type(c) is not list or len(c) != 4:
            return f"compare {c!r:.60} is not [target, key, cmp, operand]"
        target, key, cmp, operand = c
        if type(target) is not int or target not in _TARGETS:
            return f"compare target {target!r:.40} is not one of {sorted(_TARGETS)}"
        if type(cmp) is not int or cmp not in _CMPS:
            return f"compare op {cmp!r:.40} is not one of {sorted(_CMPS)}"
        if type(key) is not bytes or len(key) > max_key:
            return f"compare key must be bytes of at most {max_key}, not {key!r:.40}"
        if target == Target.VALUE:
            if operand is not None and (type(operand) is not bytes
                                        or len(operand) > max_value):
                return f"a value compare takes bytes of at most {max_value} or nil"
        elif type(operand) is not int or not 0 <= operand <= _MAX_ID:
            return f"a revision or version compare takes an int >= 0, not {operand!r:.40}"
    for branch in (success, failure):
        written: set[bytes] = set()
        for op in branch:
            if type(op) is not list or not op or type(op[0]) is not int:
                return f"transaction op {op!r:.60} is not [op, key, ...]"
            kind = op[0]
            if kind == _PUT and len(op) in (3, 4):
                problem = _problem(Op.PUT, op[1], op[2], None, None, max_key, max_value)
                if problem is None and len(op) == 4:
                    problem = lease_id_problem(op[3])
            elif kind in (_DELETE, _GET_OP, _OLDEST) and len(op) == 2:
                problem = _problem(Op.DELETE, op[1], None, None, None, max_key, max_value)
            else:
                return (f"transaction op {op!r:.60} is not [PUT, key, value] (a put may add "
                        "a lease), [DELETE, key], [GET, key] or [OLDEST, prefix]")
            if problem is not None:
                return problem
            if kind not in _READ_KINDS:
                if op[1] in written:
                    return f"key {op[1]!r:.40} is written twice in one transaction branch"
                written.add(op[1])
    return None


def _is_id(x: object) -> bool:
    """Whether `x` is a uint64 id >= 1 (a lease, a client)."""
    return type(x) is int and 1 <= x <= _MAX_ID


def lease_problem(op: int, arg: object) -> str | None:
    """What is wrong with LEASE_GRANT's TTL (ms) or LEASE_REVOKE's lease id, or None."""
    if op == _LEASE_GRANT:
        if type(arg) is not int or not 1 <= arg <= MAX_LEASE_TTL_MS:
            return f"a lease's TTL must be an int of ms in [1, {MAX_LEASE_TTL_MS}], not {arg!r:.40}"
        return None
    return lease_id_problem(arg)


def lease_id_problem(lease_id: object) -> str | None:
    """What is wrong with a lease id a request names (a put's, a revoke's, a
    keepalive's), or None."""
    return None if _is_id(lease_id) else f"a lease id must be an int >= 1, not {lease_id!r:.40}"


def encode_lease(op: Op, arg: int, *, client_id: int, seq: int) -> bytes:
    """Entry data of LEASE_GRANT (`arg` the TTL in ms) or LEASE_REVOKE (`arg` the lease
    id). Raises BadRequest on a bad one."""
    problem = session_problem(client_id, seq)
    if problem is None and op not in (Op.LEASE_GRANT, Op.LEASE_REVOKE):
        problem = f"{op!r:.40} is not a lease op"
    problem = problem or lease_problem(int(op), arg)
    if problem is not None:
        raise BadRequest(problem)
    return _packer.pack((int(op), client_id, seq, arg))


def encode_txn(compares: list, success: list, failure: list, *, client_id: int,
               seq: int) -> bytes:
    """Entry data of a transaction (the module docstring's form). Raises BadRequest on a
    malformed one; sizes are the caller's to check, as for `encode_command`."""
    problem = session_problem(client_id, seq) or txn_problem(
        compares, success, failure, _MAX_ID, _MAX_ID)
    if problem is not None:
        raise BadRequest(problem)
    return _packer.pack((_TXN, client_id, seq, compares, success, failure))


class StateMachineLike(Protocol):
    """What `KVStore.succeed` needs of the state it replaces."""

    stats: KVStats

    def close(self) -> None: ...


class KVStore:
    """The state machine of one replica (hashicorp/raft's FSM: apply/snapshot/restore).

    Not thread-safe: the node's loop is its only caller.
    """

    __slots__ = (
        "max_key_size",
        "max_value_size",
        "max_sessions",
        "stats",
        "_shards",
        "_index",
        "_sessions",
        "_members",
        "_applied_index",
        "_size",
        "_leases",
        "_owner",
        "events",
    )

    def __init__(
        self,
        max_key_size: int = MAX_KEY_SIZE,
        max_value_size: int = MAX_VALUE_SIZE,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        if max_key_size < 1 or max_value_size < 0 or max_sessions < 1:
            raise ValueError(
                f"bad limits: max_key_size={max_key_size} (>= 1), "
                f"max_value_size={max_value_size} (>= 0), max_sessions={max_sessions} (>= 1)"
            )
        self.max_key_size = max_key_size
        self.max_value_size = max_value_size
        self.max_sessions = max_sessions
        self.stats = KVStats()
        # Key -> value, in the dict `hash(key) & _SHARD_MASK` picks. Python's hash of
        # bytes is seeded per process, so where a key lives is local, never replicated:
        # a snapshot is re-split on restore.
        self._shards: list[dict[bytes, bytes]] = [{} for _ in range(SHARDS)]
        # Every key of the shards, in byte order, so that a scan (a page, a lock's queue)
        # costs O(log n + what it returns), not a pass over every key. Invariant: it
        # holds exactly the shards' keys; `_put` adds a new key, `_take` removes one.
        self._index = _sorted_keys(())
        # Least recently used (by log index) first. Invariant: the sessions' `index`
        # values strictly increase in iteration order, and all are <= applied_index.
        self._sessions: OrderedDict[int, Session] = OrderedDict()
        # Addresses of the members added through the log (ADD_LEARNER), so that they
        # survive compaction: a node that restarts, or installs a snapshot, still knows
        # where every added member listens. The initial members' come from configuration.
        self._members: dict[int, str] = {}
        self._applied_index = 0
        self._size = 0  # sum over keys of len(key) + len(value) + KEY_OVERHEAD
        self._leases = LeaseTable()
        self._owner = self._leases.owner  # key -> its lease, read on every write
        # Where each applied put and delete is recorded, as four items: revision, kind,
        # key, value (b"" for a delete) (raftkv.watch), for the node to take after each
        # batch; None: not recorded. Flat, so that no container is left for the garbage
        # collector to track.
        self.events: list[Any] | None = None

    # ---- reads (served outside the log) ------------------------------------------------

    @property
    def applied_index(self) -> int:
        """The last log index applied (0 before any)."""
        return self._applied_index

    def get(self, key: bytes) -> bytes | None:
        rec = self._shards[hash(key) & _SHARD_MASK].get(key)
        return None if rec is None else rec[REV_SIZE:]

    def get_kv(self, key: bytes) -> KeyValue | None:
        """The key's value and revisions, or None if it is absent."""
        return record_kv(self._rec(key))

    def scan(self, prefix: bytes, limit: int, start: bytes = b"") -> list[tuple[bytes, bytes]]:
        """Up to `limit` (key, value) pairs whose key starts with `prefix` and is not
        below `start` (a cursor: the key after the last one a page held), sorted by key."""
        return [(k, rec[REV_SIZE:]) for k, rec in self.scan_records(prefix, limit, start)]

    def scan_kv(self, prefix: bytes, limit: int, start: bytes = b"") -> list[list[Any]]:
        """`scan` with each key's revisions: [key, value, create_revision, mod_revision,
        version] lists, as SCAN with revisions answers them."""
        return [[k, *record_kv(rec)] for k, rec in self.scan_records(prefix, limit, start)]

    def oldest(self, prefix: bytes) -> list[Any] | None:
        """[key, value, create_revision, mod_revision, version] of the key under
        `prefix` created first (the lowest create_revision; the head of a lock's queue),
        or None if there is none."""
        records = self.scan_records(prefix, 1 << 62)
        if not records:
            return None
        key, rec = min(records, key=lambda kr: _unpack_rev(kr[1])[0])
        return [key, *record_kv(rec)]

    def scan_records(self, prefix: bytes, limit: int, start: bytes = b""
                     ) -> list[tuple[bytes, bytes]]:
        """`scan`'s keys with their records (`_REV` then the value)."""
        if limit <= 0:
            return []
        # The keys under `prefix` are one run of the order, from `prefix` itself on.
        out = []
        rec = self._rec
        for k in self._index.irange(minimum=max(prefix, start)):
            if not k.startswith(prefix):
                break
            out.append((k, rec(k)))
            if len(out) == limit:
                break
        return out

    def __len__(self) -> int:
        return len(self._index)

    @property
    def size(self) -> int:
        """Bytes the data takes, as a quota counts them: each key's and value's length,
        plus KEY_OVERHEAD a key."""
        return self._size

    def growth(self, key: bytes, value: bytes) -> int:
        """How much `size` grows if `key` is set to `value` now (negative: it shrinks)."""
        return record_growth(key, self._rec(key), value)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def session(self, client_id: int) -> Session | None:
        """A copy of a client's session, or None (for status and tests)."""
        s = self._sessions.get(client_id)
        return None if s is None else Session(s.seq, s.index, s.reply)

    def validate_request(
        self,
        op: Op,
        key: bytes,
        value: bytes | None = None,
        expected: bytes | None = None,
        limit: int | None = None,
    ) -> None:
        """`validate_request` with this store's limits."""
        problem = _problem(op, key, value, expected, limit, self.max_key_size, self.max_value_size)
        if problem is not None:
            raise BadRequest(problem)

    @property
    def lease_ttls(self) -> dict[int, int]:
        """Lease id -> TTL in ms, of every lease that exists (the table's own dict: do
        not change it)."""
        return self._leases.ttl

    @property
    def lease_epoch(self) -> int:
        """A local count of grants and revokes: when it moved, `lease_ttls` did."""
        return self._leases.epoch

    def lease(self, lease_id: int) -> list[Any] | None:
        """A lease's [ttl_ms, [key, ...]], or None if it does not exist."""
        return self._leases.entry(lease_id)

    def leases(self) -> list[list[Any]]:
        """Every lease as [lease_id, ttl_ms, [key, ...]], in id order, keys sorted."""
        return self._leases.wire()

    def _install_leases(self, table: LeaseTable) -> None:
        self._leases = table
        self._owner = table.owner

    @property
    def members(self) -> dict[int, str]:
        """Node id -> address of every member added through the log and not removed."""
        return dict(self._members)

    # ---- writes (through the log) ------------------------------------------------------

    def apply_membership(self, index: int, node_id: int, address: str | None) -> None:
        """Apply the committed configuration change at `index`: `address` is where an
        added node listens, None removes the node. Same ordering rule as `apply`."""
        if index <= self._applied_index:
            raise OutOfOrderApply(
                f"entry {index} applied but the store has already applied up to "
                f"{self._applied_index}: entries must be applied once, in log order"
            )
        self._applied_index = index
        if address is None:
            self._members.pop(node_id, None)
        elif address:
            self._members[node_id] = address

    def apply(self, index: int, data: bytes) -> Reply:
        """Apply the committed entry at `index`; never raises on bad `data`.

        Raises OutOfOrderApply if `index` <= applied_index. Gaps are allowed, so the
        node may skip entries that are not commands (configuration changes).
        """
        if index <= self._applied_index:
            raise OutOfOrderApply(
                f"entry {index} applied but the store has already applied up to "
                f"{self._applied_index}: entries must be applied once, in log order"
            )
        self._applied_index = index
        if not data:
            return _OK_NONE
        try:
            cmd = msgpack.unpackb(data)
        except Exception:
            return self._malformed("command is not a msgpack value")
        if type(cmd) is not list or not cmd:
            return self._malformed("command is not a non-empty array")
        op = cmd[0]
        n = len(cmd)
        # The checks below are `_problem`'s, inlined for speed; `_problem` words the reply.
        max_key = self.max_key_size
        max_value = self.max_value_size
        if type(op) is not int:  # True == 1 and 1.0 == 1, but neither is an op
            return self._malformed(f"unknown op {op!r:.40}")
        lease = 0
        if op == _PUT and (n == 5 or n == 6):
            key = cmd[3]
            value = cmd[4]
            expected = None
            if n == 6:
                lease = cmd[5]
            valid = (
                type(key) is bytes
                and len(key) <= max_key
                and type(value) is bytes
                and len(value) <= max_value
                and (n == 5 or _is_id(lease))
            )
        elif op == _DELETE and n == 4:
            key = cmd[3]
            value = expected = None
            valid = type(key) is bytes and len(key) <= max_key
        elif op == _CAS and n == 6:
            key = cmd[3]
            expected = cmd[4]
            value = cmd[5]
            valid = (
                type(key) is bytes
                and len(key) <= max_key
                and type(value) is bytes
                and len(value) <= max_value
                and (expected is None or type(expected) is bytes and len(expected) <= max_value)
            )
        elif op == _OPEN_SESSION and n == 1:
            return self._open_session(index)
        elif op in _LEASE_OPS and n == 4:
            problem = lease_problem(op, cmd[3])
            if problem is not None:
                return self._malformed(problem)
            key = value = expected = None
            valid = True
        elif op == _TXN and n == 6:
            key = value = expected = None
            problem = txn_problem(cmd[3], cmd[4], cmd[5], max_key, max_value)
            if problem is not None:
                return self._malformed(problem)
            valid = True
        elif op in _OPS:
            if op in (Op.GET, Op.SCAN, Op.OLDEST):
                return self._malformed(f"op {Op(op).name} is a read: reads are not applied")
            want = {Op.PUT: "4 or 5", Op.DELETE: 3, Op.CAS: 5, Op.OPEN_SESSION: 0, Op.TXN: 5,
                    Op.LEASE_GRANT: 3, Op.LEASE_REVOKE: 3}[Op(op)]
            return self._malformed(f"op {Op(op).name} with {n - 1} arguments, not {want}")
        else:
            return self._malformed(f"unknown op {op!r:.40}")
        client_id = cmd[1]
        seq = cmd[2]
        # msgpack has no integer above 2**64 - 1, so `> 0` is the whole range check.
        if (
            not valid
            or type(client_id) is not int
            or type(seq) is not int
            or not (client_id > 0 and seq > 0 or client_id == seq == 0)
        ):
            return self._malformed(
                session_problem(client_id, seq)
                or _problem(op, key, value, expected, None, max_key, max_value)
                or "invalid command"
            )
        if not client_id:
            # No session: applied as it comes, so a resend would apply again. The client
            # sends it once (raftkv.client: at_most_once).
            self.stats.sessionless += 1
            if op in _KEY_WRITES:
                return self._write(index, op, key, value, expected, lease)
            return self._other(index, op, cmd)

        # Exactly-once (thesis §6.3): decided before touching the data.
        sessions = self._sessions
        session = sessions.get(client_id)
        if session is None:
            self.stats.expired += 1
            return Reply(
                Code.SESSION_EXPIRED,
                f"client {client_id} has no session (expired or never opened): "
                "open a new session; the outcome of this request is unknown",
            )
        if seq <= session.seq:
            if seq == session.seq:
                self.stats.duplicates += 1
                session.index = index
                sessions.move_to_end(client_id)
                return session.reply
            self.stats.stale += 1
            return Reply(
                Code.STALE_REQUEST,
                f"request {seq} of client {client_id} is stale: "
                f"its request {session.seq} is already applied",
            )

        if op in _KEY_WRITES:
            reply = self._write(index, op, key, value, expected, lease)
        else:
            reply = self._other(index, op, cmd)
        session.seq = seq
        session.index = index
        session.reply = reply
        sessions.move_to_end(client_id)
        return reply

    def _write(self, index: int, op: int, key: bytes, value: bytes | None,
               expected: bytes | None, lease: int = 0) -> Reply:
        """Do a validated PUT, DELETE or CAS at revision `index` on the data, keeping
        `size` and the key's lease; its reply. The data is reached through `_rec`, `_put`
        and `_take` only, which a store kept elsewhere replaces (raftkv.lmdb_state)."""
        events = self.events
        if op == _PUT:
            if lease or self._owner:
                if lease and lease not in self._leases:
                    return lease_not_found(lease)
                self._leases.attach(key, lease)
            self._size += self._put(index, key, value)
            if events is not None:
                events += (index, _PUT, key, value)
            return _new_reply(Reply, (_CODE_OK, index))
        if op == _DELETE:
            return _OK_TRUE if self._delete(index, key) else _OK_FALSE
        old = self._rec(key)
        if (None if old is None else old[REV_SIZE:]) != expected:
            return _OK_FALSE  # None == None: "expected absent" and it is
        if self._owner:
            self._leases.attach(key, 0)
        self._size += self._put(index, key, value)
        if events is not None:
            events += (index, _PUT, key, value)
        return _OK_TRUE

    def _delete(self, index: int, key: bytes) -> bool:
        """Delete `key` at revision `index`; whether it existed."""
        old = self._take(key)
        if old is None:
            return False
        self._size -= len(key) + len(old) - REV_SIZE + KEY_OVERHEAD
        if self._owner:
            self._leases.attach(key, 0)
        if self.events is not None:
            self.events += (index, _DELETE, key, b"")
        return True

    def _other(self, index: int, op: int, cmd: list) -> Reply:
        """A validated TXN, LEASE_GRANT or LEASE_REVOKE at revision `index`."""
        if op == _TXN:
            return self._txn(index, cmd[3], cmd[4], cmd[5])
        if op == _LEASE_GRANT:
            self._leases.grant(index, cmd[3])
            return Reply(Code.OK, index)
        keys = self._leases.revoke(cmd[3])
        if keys is None:
            return _OK_FALSE
        for key in sorted(keys):  # the same event order on every replica
            self._delete(index, key)
        return _OK_TRUE

    def _txn(self, index: int, compares: list, success: list, failure: list) -> Reply:
        """Apply a validated transaction at revision `index`: [succeeded, results]."""
        succeeded = all(self._holds(c) for c in compares)
        ops = success if succeeded else failure
        for op in ops:  # a lease missing refuses the whole transaction, before any write
            if len(op) == 4 and op[3] not in self._leases:
                return lease_not_found(op[3])
        results: list[Any] = []
        for op in ops:
            kind, key = op[0], op[1]
            if kind == _GET_OP:
                kv = self.get_kv(key)
                results.append(None if kv is None else list(kv))
            elif kind == _OLDEST:
                results.append(self.oldest(key))
            else:
                results.append(self._write(index, kind, key, op[2] if kind == _PUT else None,
                                           None, op[3] if len(op) == 4 else 0).value)
        return Reply(Code.OK, [succeeded, results])

    def _holds(self, compare: list) -> bool:
        """Whether a validated compare holds now. An absent key's value is nil and its
        revisions and version are 0 (etcd's rule); nil is neither less nor greater than
        a value."""
        target, key, cmp, operand = compare
        kv = self.get_kv(key)
        have: Any
        if target == Target.VALUE:
            have = None if kv is None else kv.value
            if (have is None or operand is None) and cmp != Cmp.EQ and cmp != Cmp.NE:
                return False
        elif kv is None:
            have = 0
        elif target == Target.MOD:
            have = kv.mod_revision
        elif target == Target.CREATE:
            have = kv.create_revision
        else:
            have = kv.version
        if cmp == Cmp.EQ:
            return have == operand
        if cmp == Cmp.NE:
            return have != operand
        if cmp == Cmp.LT:
            return have < operand
        return have > operand

    def _put(self, index: int, key: bytes, value: bytes) -> int:
        """Set `key` to `value` at revision `index`; how much `size` grows."""
        shard = self._shards[hash(key) & _SHARD_MASK]
        old = shard.get(key)
        shard[key] = next_record(old, index, value)
        if old is None:
            self._index.add(key)
        return record_growth(key, old, value)

    def _rec(self, key: bytes) -> bytes | None:
        """The key's record (`_REV` then the value), or None."""
        return self._shards[hash(key) & _SHARD_MASK].get(key)

    def _take(self, key: bytes) -> bytes | None:
        """Remove `key`; its record (None: it was absent)."""
        rec = self._shards[hash(key) & _SHARD_MASK].pop(key, None)
        if rec is not None:
            self._index.remove(key)
        return rec

    def _open_session(self, index: int) -> Reply:
        sessions = self._sessions
        while len(sessions) >= self.max_sessions:
            sessions.popitem(last=False)  # least recently used by log index
            self.stats.evicted += 1
        sessions[index] = Session(0, index, _OK_NONE)
        return Reply(Code.OK, index)

    def _malformed(self, message: str) -> Reply:
        self.stats.malformed += 1
        return Reply(Code.BAD_REQUEST, message)


    # ---- the state's lifecycle, for a store kept outside memory (raftkv.lmdb_state) ----

    def resume(self, floor: int, ceiling: int) -> bool:
        """Whether this store still holds the state it had when the node stopped, at an
        applied index in [floor, ceiling], so that the node need not restore a snapshot
        into it. A state in memory never does."""
        return False

    def flush(self) -> None:
        """The entries applied so far become what `capture` and a restart see. In
        memory only the leases' change marks go."""
        if self._leases.changed:
            self._leases.changed.clear()

    def capture(self) -> Callable[[], bytes]:
        """Fix the state as it is now; the callable returns its snapshot bytes later,
        elsewhere. In memory `snapshot` itself: the fork of the snapshot writer fixes
        the state, copy-on-write."""
        return self.snapshot

    def succeed(self, old: StateMachineLike) -> KVStore:
        """Take the place of `old`, the node's state until a snapshot restored into this
        one is installed: its local counters carry on; `old` is closed."""
        self.stats = old.stats
        old.close()
        return self

    def discard(self) -> None:
        """A scratch state never installed: release it."""

    def close(self) -> None:
        """The node stops: release what the state holds open."""

    # ---- snapshots ---------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole replicated state: data, sessions (in eviction order), applied index,
        the addresses of members added through the log, and the leases.

        Wire form: msgpack [SNAPSHOT_VERSION, applied_index, [{key: record, ...}, ...],
        [[client_id, seq, index, reply_code, reply_value], ...], {node_id: address, ...},
        [[lease_id, ttl_ms, [key, ...]], ...]] (version 4 had no leases).
        The data is a list of maps, which together hold every key once (how many, and
        which key is in which, does not matter); a record is the key's create_revision,
        mod_revision and version (uint64 big-endian each) then its value. Versions 1-3
        held bare values, and are refused (`restore`).
        """
        return msgpack.packb(
            (SNAPSHOT_VERSION, self._applied_index, self._shards,
             [session_wire(cid, s) for cid, s in self._sessions.items()], self._members,
             self._leases.wire()),
            use_bin_type=True,
        )

    def restore(self, snapshot: bytes | Path) -> None:
        """Replace the whole state with a snapshot's (its bytes, or a file of them). On
        SnapshotError nothing changes."""
        if isinstance(snapshot, Path):
            snapshot = snapshot.read_bytes()  # this state lives in memory whole anyway
        try:
            obj = msgpack.unpackb(snapshot, strict_map_key=False)
        except Exception as e:
            raise SnapshotError(f"snapshot is not valid msgpack: {e}") from e
        if type(obj) is not list or len(obj) not in (4, 5, 6):
            raise SnapshotError("snapshot is not an array of 4 to 6 elements")
        version, applied, data, raw_sessions = obj[:4]
        members = obj[4] if len(obj) >= 5 else {}
        if version in (1, 2, 3):
            # Its keys' revisions are unknown, and would be made up differently on each
            # replica (each restores a snapshot of its own index, then replays the log).
            raise SnapshotError(
                f"snapshot version {version} is from before revisions (raftkv 0.1): this "
                "build cannot give its keys revisions every replica agrees on; copy the "
                "data out with the build that wrote it (raftkv scan) into a new cluster")
        if (version, len(obj)) not in ((4, 5), (SNAPSHOT_VERSION, 6)):
            raise SnapshotError(
                f"snapshot version {version!r:.40} is not supported (want {SNAPSHOT_VERSION})"
            )
        if type(applied) is not int or applied < 0:
            raise SnapshotError(f"snapshot applied index {applied!r:.40} is not an int >= 0")
        shards, size = _split(data)
        check_members(members)
        sessions = parse_sessions(raw_sessions, applied)
        leases = parse_leases_in(obj[5] if len(obj) == 6 else [], applied,
                                 lambda k: k in shards[hash(k) & _SHARD_MASK])
        index = _sorted_keys(k for shard in shards for k in shard)
        self._install_leases(leases)
        self._shards = shards
        self._index = index
        self._sessions = sessions
        self._members = members
        self._applied_index = applied
        self._size = size


def lease_not_found(lease_id: int) -> Reply:
    return Reply(Code.NOT_FOUND, f"lease {lease_id} not found: it expired or was revoked, "
                 "or was never granted; nothing was written")


def parse_leases_in(raw: object, applied: int, has: Callable[[bytes], bool]) -> LeaseTable:
    """A state's leases (`LeaseTable.wire`'s form); SnapshotError if malformed or
    holding a key the data lacks (`has`)."""
    try:
        table = LeaseTable.from_wire(raw, applied)
    except LeaseError as e:
        raise SnapshotError(f"leases: {e}") from None
    for k in table.owner:
        if not has(k):
            raise SnapshotError(f"a lease holds key {k!r:.40}, which the data lacks")
    return table


def session_wire(client_id: int, s: Session) -> tuple[int, int, int, int, Any]:
    """One session as `parse_sessions` reads it back."""
    return (client_id, s.seq, s.index, int(s.reply.code), s.reply.value)


def check_members(members: object) -> None:
    """SnapshotError unless `members` is a map of node id to address, as a snapshot
    holds the members added through the log."""
    if type(members) is not dict or not all(
        type(k) is int and k >= 1 and type(v) is str for k, v in members.items()
    ):
        raise SnapshotError("snapshot member addresses are not a map of node id to str")


def parse_sessions(raw: object, applied: int) -> OrderedDict[int, Session]:
    """Sessions in their wire form `[[client_id, seq, index, reply_code, reply_value],
    ...]`, least recently used first, as a snapshot holds them. SnapshotError if one is
    malformed, out of order, or used after `applied`."""
    if type(raw) is not list:
        raise SnapshotError("snapshot sessions are not an array")
    sessions: OrderedDict[int, Session] = OrderedDict()
    last_index = 0
    for item in raw:
        if (
            type(item) is not list
            or len(item) != 5
            or not all(type(x) is int for x in item[:4])
            or item[1] < 0
            or not last_index < item[2] <= applied
            or item[0] < 1
            or item[3] not in _CODES
            or item[0] in sessions
        ):
            raise SnapshotError(f"snapshot session {item!r:.100} is malformed or out of order")
        cid, seq, index, code, value = item
        last_index = index
        if code == Code.OK and value is None:  # share the constants, as `apply` does
            reply = _OK_NONE
        elif code == Code.OK and value is True:
            reply = _OK_TRUE
        elif code == Code.OK and value is False:
            reply = _OK_FALSE
        else:
            reply = Reply(Code(code), value)
        sessions[cid] = Session(seq, index, reply)
    return sessions


def _sorted_keys(keys: Iterable[bytes]) -> SortedList:
    """`keys` in a SortedList (imported here: a client-only install, which imports this
    module for its types, lacks the server extra's sortedcontainers)."""
    from sortedcontainers import SortedList

    return SortedList(keys)


def _split(maps: object) -> tuple[list[dict[bytes, bytes]], int]:
    """A snapshot's data, split over this process's shards, and its size as the quota
    counts it. SnapshotError if it is not maps of bytes to records (`_REV` then the
    value) holding each key once."""
    if type(maps) is not list or not all(type(m) is dict for m in maps):
        raise SnapshotError("snapshot data is not a list of maps")
    shards: list[dict[bytes, bytes]] = [{} for _ in range(SHARDS)]
    count = size = 0
    for m in maps:
        for k, v in m.items():
            if type(k) is not bytes or type(v) is not bytes:
                raise SnapshotError("snapshot data is not a map of bytes to bytes")
            problem = record_problem(v)
            if problem is not None:
                raise SnapshotError(f"snapshot record of key {k!r:.40}: {problem}")
            shards[hash(k) & _SHARD_MASK][k] = v
            size += len(k) + len(v) - REV_SIZE
        count += len(m)
    if sum(map(len, shards)) != count:
        raise SnapshotError("snapshot data holds a key twice")
    return shards, size + KEY_OVERHEAD * count


def pack_record(create: int, mod: int, version: int, value: bytes) -> bytes:
    """A key's record: its revisions, then its value."""
    return _pack_rev(create, mod, version) + value


def next_record(old: bytes | None, index: int, value: bytes) -> bytes:
    """The record of a key set to `value` at revision `index`, `old` its record before."""
    if old is None:
        return _pack_rev(index, index, 1) + value
    create, _, version = _unpack_rev(old)
    return _pack_rev(create, index, version + 1) + value


def record_growth(key: bytes, old: bytes | None, value: bytes) -> int:
    """How `size` moves when `key` goes from the record `old` (None: absent) to
    `value`."""
    if old is None:
        return len(key) + len(value) + KEY_OVERHEAD
    return len(value) - len(old) + REV_SIZE


def record_kv(rec: bytes | None) -> KeyValue | None:
    """A record as the KeyValue it holds (None stays None)."""
    if rec is None:
        return None
    create, mod, version = _unpack_rev(rec)
    return KeyValue(rec[REV_SIZE:], create, mod, version)


def record_problem(rec: bytes) -> str | None:
    """What is wrong with a stored record, or None: too short, or revisions out of
    order (0 < create <= mod, version >= 1)."""
    if len(rec) < REV_SIZE:
        return f"{len(rec)} bytes, shorter than its revisions"
    create, mod, version = _unpack_rev(rec)
    if not 0 < create <= mod or version < 1:
        return f"revisions out of order (create {create}, mod {mod}, version {version})"
    return None
