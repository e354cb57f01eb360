"""The wire codec: every byte string that crosses a socket between processes.

Each frame is one msgpack array whose first two elements are the protocol version and
the frame kind. Positions 0-2 of a client request, `[version, KIND_REQ, request_id]`, are
fixed in every version, so a node can still answer a client that speaks another version.

Peer frames (node to node, hot path: one per Raft `Message`)::

    [VERSION, Kind.RAFT, type, to, frm, term, log_term, index, commit, reject,
     reject_hint, context, entries]

    entries = [term, index, entry_type, data,  term, index, entry_type, data,  ...]

`reject` is a msgpack bool, `data` is bin, every other field a uint64. Only APP carries
entries; their indexes run consecutively from `index + 1`, their terms never decrease,
are >= `log_term` and <= `term`. The decoder checks this shape because the Raft core
treats a violation as a broken invariant and stops the node, and a frame from the network
must never be able to do that.

Snapshot chunks (node to node: InstallSnapshot, paper §7, in pieces; raftkv/snapshots.py)::

    [VERSION, Kind.SNAP_CHUNK, to, frm, term, index, snap_term, voters, learners, offset,
     total, checksum, data]

`voters` and `learners` are arrays of node ids (the snapshot's membership), `data` is bin of
at most MAX_SNAPSHOT_CHUNK bytes, `checksum` is the zlib.crc32 of the whole snapshot (all
`total` bytes), the same in every chunk of one transfer; every other field is a uint64.
Builds before the checksum sent 12 fields; their chunks are malformed here, and theirs
drop ours: a snapshot cannot travel between the two builds.

Client requests (a client or the controller to a node), `request_id` a uint64 chosen by
the sender and echoed in the reply::

    [VERSION, Kind.REQ, request_id, ReqOp.GET,          key]
    [VERSION, Kind.REQ, request_id, ReqOp.GET_STALE,    key]
    [VERSION, Kind.REQ, request_id, ReqOp.SCAN,         prefix, limit]
    [VERSION, Kind.REQ, request_id, ReqOp.SCAN,         prefix, limit, start]
    [VERSION, Kind.REQ, request_id, ReqOp.SCAN,         prefix, limit, start, revisions]
    [VERSION, Kind.REQ, request_id, ReqOp.PUT,          client_id, seq, key, value]
    [VERSION, Kind.REQ, request_id, ReqOp.PUT,          client_id, seq, key, value, lease]
    [VERSION, Kind.REQ, request_id, ReqOp.DELETE,       client_id, seq, key]
    [VERSION, Kind.REQ, request_id, ReqOp.CAS,          client_id, seq, key, expected, new]
    [VERSION, Kind.REQ, request_id, ReqOp.TXN,          client_id, seq, compares, success,
                                                        failure]
    [VERSION, Kind.REQ, request_id, ReqOp.GET_KV,       key]
    [VERSION, Kind.REQ, request_id, ReqOp.OLDEST,       prefix]
    [VERSION, Kind.REQ, request_id, ReqOp.WATCH,        key, prefix, start_revision, wait_ms]
    [VERSION, Kind.REQ, request_id, ReqOp.LEASE_GRANT,  client_id, seq, ttl_ms]
    [VERSION, Kind.REQ, request_id, ReqOp.LEASE_REVOKE, client_id, seq, lease_id]
    [VERSION, Kind.REQ, request_id, ReqOp.LEASE_KEEPALIVE, lease_id]
    [VERSION, Kind.REQ, request_id, ReqOp.LEASE_INFO,   lease_id]
    [VERSION, Kind.REQ, request_id, ReqOp.LEASE_LIST]
    [VERSION, Kind.REQ, request_id, ReqOp.OPEN_SESSION]
    [VERSION, Kind.REQ, request_id, ReqOp.STATUS]
    [VERSION, Kind.REQ, request_id, ReqOp.FAULT,        [peer_id, ...]]
    [VERSION, Kind.REQ, request_id, ReqOp.TRANSFER,     target_id]
    [VERSION, Kind.REQ, request_id, ReqOp.CONF_CHANGE,  conf_op, node_id, address]
    [VERSION, Kind.REQ, request_id, ReqOp.PEERS,        [[node_id, address], ...]]
    [VERSION, Kind.REQ, request_id, ReqOp.CONTROL,      name, [arg, ...]]

Keys and values are bin; `expected` is bin or nil (nil: "the key is absent"); client ids
come from OPEN_SESSION (see raftkv/kv.py: sessions), and a write whose client_id and seq
are both 0 has no session (applied at most once: kv.py). The data ops share kv.Op's numbers.
SCAN's `start` (bin) is a cursor: keys below it are skipped (a client pages on with the
key after the last it got); with `revisions` true each pair also carries the key's
create_revision, mod_revision and version. TXN's lists are kv.py's transaction forms;
the whole command must fit one log entry (`max_entry_size`). GET_KV reads as GET does
(ReadIndex) and answers the revisions too. WATCH (any node answers, from its applied
log: raftkv/watch.py) asks for the puts and deletes of `key` (or of the keys it starts
with, `prefix` a bool) from `start_revision` on (0: from the node's next write); with
none yet, the node waits up to `wait_ms` (at most MAX_WATCH_WAIT_MS) for one before it
answers. Leases (kv.py, raftkv/lease_timer.py): GRANT and REVOKE go through the log; a
PUT naming a `lease` attaches its key to it. KEEPALIVE, INFO and LIST are served by the
leader after a ReadIndex round (so a deposed leader cannot answer them), from its own
clock.
FAULT replaces the set of peers whose traffic the node drops, both ways (the harness's
partitions); an empty list heals. TRANSFER asks the leader to hand leadership to
`target_id` (thesis §3.10); OK means the transfer started. CONF_CHANGE asks the leader
for one membership change (raft.ConfOp: 1 add `node_id` as a learner listening at
`address` (str), 2 promote it to voter, 3 remove it; thesis §4.1); OK, once the change is
committed (or was already in force), with {"index", "voters", "learners"}. PEERS tells
the transport where members listen (the controller sends it to a node that lags behind
the configuration: Raft servers must answer servers not in their own configuration,
thesis §4.1, and a node can only answer a peer whose address it knows); OK with the
node ids it knows. CONTROL is
for the harness's controller (`name` a str such as "kill-leader", args ints or strs);
nodes refuse it.

Replies (a node to the requester)::

    [VERSION, Kind.REP, request_id, code, value, leader_hint]

`leader_hint` is the node id this node believes leads (0: unknown). `code` is a ReplyCode:

    OK               0  value: GET, GET_STALE -> bin or nil (absent); SCAN -> [[key, value], ...]
                        (with revisions: [[key, value, create, mod, version], ...]);
                        GET_KV -> [value, create_revision, mod_revision, version] or nil;
                        OLDEST -> [key, value, create_revision, mod_revision, version]
                        of the key under prefix created first, or nil;
                        PUT -> its revision; DELETE -> existed (bool); CAS -> swapped (bool);
                        TXN -> [succeeded (bool), [result per op]] (kv.py);
                        WATCH -> [next_revision, [[revision, kind, key, value], ...]]
                        (kind 1 put, 2 delete with value nil; ask from next_revision on);
                        OPEN_SESSION -> client_id; STATUS -> map; FAULT -> [peer_id, ...];
                        LEASE_GRANT -> lease_id; LEASE_REVOKE -> existed (bool);
                        LEASE_KEEPALIVE -> the TTL restarted (ms);
                        LEASE_INFO -> [ttl_ms, remaining_ms, [key, ...]];
                        LEASE_LIST -> [applied_index, [[lease_id, ttl_ms, remaining_ms,
                        [key, ...]], ...]], every lease as of that index, in id order
    BAD_REQUEST      1  the request is invalid (unknown op, wrong types, over a limit);
                        nothing was done. value: message naming the problem
    STALE_REQUEST    2  seq below the client's last applied seq (kv.Code)
    SESSION_EXPIRED  3  unknown client id; the outcome is unknown (kv.Code)
    NOT_FOUND        4  the lease named does not exist (expired, revoked, never granted);
                        nothing was done (kv.Code)
    NOT_LEADER      16  this node does not lead; retry at `leader_hint` (0: unknown)
    UNAVAILABLE     17  cannot serve now (no leader, transfer under way, leadership lost
                        while the request was pending); retry, with the same seq for writes
    QUOTA_EXCEEDED  18  a PUT or CAS that would take the state past its quota
    COMPACTED       20  WATCH from a revision the node no longer keeps; value: the
                        oldest revision it can answer from
                        (--quota-bytes); nothing was done. Deletes still go through
    FORBIDDEN       19  the connection's key may not ask this (raftkv.security: a client
                        key asked for an admin op); nothing was done

Codes 0-4 are kv.Code's. On any code other than OK, `value` is a human-readable str.

Batches (a client that keeps many requests in flight on one connection to a node)::

    [VERSION, Kind.REQS, [request, request, ...]]     each element a REQ frame's array
    [VERSION, Kind.REPS, [reply, reply, ...]]         each element a REP frame's array

A node answers the requests of a REQS frame like any others, and from then on may put
every reply it has for that connection in one loop turn into one REPS frame (or send a
lone reply as a plain REP): a client that sends REQS must take both. A client that never
sends REQS only ever gets REP frames, so older clients are unaffected. At most
MAX_BATCH requests per REQS frame; an element that is not a request frame is dropped and
counted, one that is invalid is answered BAD_REQUEST, the rest are served. Since each
element is a complete frame, `encode_requests` and `encode_replies` only prepend an array
header to frames already encoded, and `split_batch` cuts one into its frames unread. A
proxy (the harness's router) reads no further than a request's header (`peek_request`)
and passes replies on unopened.

Errors: anything that is not a frame of this protocol raises `MalformedFrame`; the
transport counts and drops it. A well-formed request that cannot be served as asked
(known version layout, unknown op, wrong argument types, over a size limit, or another
protocol version) raises `InvalidRequest`, which carries the request id so the node can
answer BAD_REQUEST with its message. Both derive from `FrameError`; nothing else is raised
by the decoders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import msgpack

from raftkv import kv
from raftkv.kv import MAX_KEY_SIZE, MAX_VALUE_SIZE
from raftkv.raft.confchange import ConfOp
from raftkv.raft.types import Entry, EntryType, Message, MsgType, SnapshotMeta

VERSION = 1
MAX_UINT64 = 2**64 - 1
MAX_FAULT_PEERS = 1024  # far beyond any cluster; bounds the work of one FAULT request
MAX_CONTROL_NAME = 64
MAX_CONTROL_ARGS = 64
MAX_ADDRESS = 256  # CONF_CHANGE: a tcp://host:port address
_CONF_OPS = frozenset(int(o) for o in ConfOp)
_ADD_LEARNER = int(ConfOp.ADD_LEARNER)

# A replicated command (kv.encode_command) holds a key and up to two values plus a few
# ints of framing; an entry larger than this did not come from a valid request.
_COMMAND_OVERHEAD = 64


def max_entry_size(max_key: int = MAX_KEY_SIZE, max_value: int = MAX_VALUE_SIZE) -> int:
    """The largest `Entry.data` a peer frame may carry under these request limits."""
    return max_key + 2 * max_value + _COMMAND_OVERHEAD


class Kind(IntEnum):
    RAFT = 1
    REQ = 2
    REP = 3
    SNAP_CHUNK = 4  # a piece of a snapshot, node to node (InstallSnapshot, paper §7)
    REQS = 5  # several client requests in one frame
    REPS = 6  # several replies in one frame


MAX_BATCH = 4096  # requests in one REQS frame
MAX_SCAN = 10_000  # pairs in one SCAN reply: a node answers no more
MAX_WATCH_WAIT_MS = 60_000


MAX_SNAPSHOT_CHUNK = 1 << 20  # bytes of snapshot data in one frame
MAX_SNAPSHOT_SIZE = 1 << 40
MAX_CRC32 = 0xFFFFFFFF  # zlib.crc32 is unsigned


@dataclass(slots=True)
class SnapshotChunk:
    """Bytes [offset, offset + len(data)) of the snapshot `meta` describes, `total` bytes
    in all, whose zlib.crc32 is `checksum` (every chunk of a transfer carries the same).
    The receiver steps a SNAP message into its core once it holds every byte and they
    match `checksum`."""

    to: int
    frm: int
    term: int
    meta: SnapshotMeta
    offset: int
    total: int
    checksum: int  # CRC32 of the whole snapshot, not of this chunk
    data: bytes


class ReqOp(IntEnum):
    """Operation of a client request. The data ops have kv.Op's numbers."""

    PUT = 1
    DELETE = 2
    CAS = 3
    OPEN_SESSION = 4
    GET = 5
    SCAN = 6
    GET_STALE = 7  # any node answers from its applied state: no ReadIndex, may be stale
    TXN = 8
    GET_KV = 9  # GET, answering the key's revisions with its value
    WATCH = 10  # the puts and deletes of a key or prefix from a revision on (long poll)
    LEASE_GRANT = 11
    LEASE_REVOKE = 12
    LEASE_KEEPALIVE = 13  # leader: restart a lease's TTL on its clock (not in the log)
    LEASE_INFO = 14  # leader: a lease's TTL, what is left of it, and its keys
    OLDEST = 15  # the key under a prefix created first (a lock's head), as GET_KV reads
    LEASE_LIST = 16  # leader: every lease, its TTL, what is left and its keys, at an index
    STATUS = 32  # control: the node's status map
    FAULT = 33  # control: set the peers whose traffic is dropped both ways
    TRANSFER = 34  # control: leader, hand leadership to a node
    CONF_CHANGE = 35  # control: leader, add/promote/remove a member
    PEERS = 36  # control: where members listen, for the transport
    CONTROL = 40  # a command for the controller process (harness), not for nodes


WRITE_OPS = frozenset({ReqOp.PUT, ReqOp.DELETE, ReqOp.CAS})  # one key's writes
_LEASE_OPS = frozenset({ReqOp.LEASE_GRANT, ReqOp.LEASE_REVOKE, ReqOp.LEASE_KEEPALIVE,
                        ReqOp.LEASE_INFO})
# Checked as a GET (OLDEST's key is a prefix).
_KEY_READS = frozenset({ReqOp.GET_STALE, ReqOp.GET_KV, ReqOp.WATCH, ReqOp.OLDEST})


class ReplyCode(IntEnum):
    """Second field of a reply; 0-3 are kv.Code's, 16 and up are the node's own."""

    OK = 0
    BAD_REQUEST = 1
    STALE_REQUEST = 2
    SESSION_EXPIRED = 3
    NOT_FOUND = 4
    NOT_LEADER = 16
    UNAVAILABLE = 17
    QUOTA_EXCEEDED = 18
    FORBIDDEN = 19
    COMPACTED = 20


class FrameError(Exception):
    """Base class of the codec's errors."""


class MalformedFrame(FrameError, ValueError):
    """Bytes that are not a frame of this protocol. Count and drop; never answer."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidRequest(FrameError, ValueError):
    """A client request that can be answered but not served: reply BAD_REQUEST with
    `message` to `request_id`."""

    def __init__(self, request_id: int, message: str) -> None:
        super().__init__(f"request {request_id}: {message}")
        self.request_id = request_id
        self.message = message


@dataclass(slots=True)
class ClientRequest:
    """A decoded client request. Fields an op does not use keep their defaults."""

    request_id: int
    op: ReqOp
    key: bytes = b""  # GET, PUT, DELETE, CAS: the key; SCAN: the prefix
    value: bytes | None = None  # PUT: the value; CAS: the new value
    expected: bytes | None = None  # CAS: the value required now (None: absent)
    client_id: int = 0  # writes: session id from OPEN_SESSION; 0 (and seq 0): none
    seq: int = 0  # writes: per-client sequence number
    limit: int = 0  # SCAN: at most this many pairs
    start: bytes = b""  # SCAN: no key below this one (b"": from the first)
    revisions: bool = False  # SCAN: answer each key's revisions too
    peers: frozenset[int] = frozenset()  # FAULT: peers to cut off
    target: int = 0  # TRANSFER: the node to hand leadership to; CONF_CHANGE: the node
    conf_op: int = 0  # CONF_CHANGE: a raft.ConfOp
    address: str = ""  # CONF_CHANGE: where an added node listens
    addresses: dict[int, str] | None = None  # PEERS: node id -> address
    name: str = ""  # CONTROL: the command
    args: tuple = ()  # CONTROL: its arguments (ints and strs)
    txn: tuple[list, list, list] | None = None  # TXN: compares, success ops, failure ops
    prefix: bool = False  # WATCH: `key` is a prefix
    revision: int = 0  # WATCH: the first revision wanted (0: the node's next)
    wait_ms: int = 0  # WATCH: how long to wait for an event
    lease: int = 0  # PUT: the lease to attach the key to (0: none); LEASE_*: the lease
    ttl_ms: int = 0  # LEASE_GRANT: the lease's TTL
    # Where the reply goes, filled in by the transport: the sender's routing id, or
    # (proxy id, client id) for a request relayed by the controller.
    identity: bytes | tuple[bytes, bytes] = b""
    # The command bytes of a PUT the decoder checked, packed once there (`command`).
    data: bytes = field(default=b"", repr=False, compare=False)

    def command(self) -> bytes:
        """The entry data to propose for a write or OPEN_SESSION (kv's command form).

        Raises kv.BadRequest for a read or control op."""
        if self.data:
            return self.data
        if self.op == ReqOp.OPEN_SESSION:
            return kv.encode_open_session()
        if self.op == ReqOp.TXN and self.txn is not None:
            return kv.encode_txn(*self.txn, client_id=self.client_id, seq=self.seq)
        if self.op == ReqOp.LEASE_GRANT or self.op == ReqOp.LEASE_REVOKE:
            return kv.encode_lease(
                kv.Op(int(self.op)), self.ttl_ms if self.op == ReqOp.LEASE_GRANT else self.lease,
                client_id=self.client_id, seq=self.seq)
        if self.op not in WRITE_OPS:
            raise kv.BadRequest(f"{self.op.name} does not go through the log")
        return kv.encode_command(
            kv.Op(int(self.op)),
            self.key,
            self.value,
            self.expected,
            client_id=self.client_id,
            seq=self.seq,
            lease=self.lease,
        )


@dataclass(slots=True)
class RequestBatch:
    """A decoded REQS frame: the requests to serve, those to answer BAD_REQUEST, and how
    many elements were not request frames at all."""

    requests: list[ClientRequest]
    invalid: list[InvalidRequest]
    malformed: int = 0


@dataclass(slots=True)
class ClientReply:
    request_id: int
    code: ReplyCode
    value: Any = None
    leader_hint: int = 0

    @property
    def ok(self) -> bool:
        return self.code == ReplyCode.OK


# ---- encoding ----------------------------------------------------------------------

# One C packer for the module: `pack` is a single C call holding the GIL, so sharing it
# is safe, and it saves building a Packer per frame.
_packer = msgpack.Packer(use_bin_type=True)
_pack = _packer.pack
_RAFT = int(Kind.RAFT)
_REQ = int(Kind.REQ)
_REP = int(Kind.REP)
_SNAP_CHUNK = int(Kind.SNAP_CHUNK)
_REQS = int(Kind.REQS)
_REPS = int(Kind.REPS)
_PUT_OP = int(ReqOp.PUT)
_TXN_OP = int(ReqOp.TXN)
_GET_OP = int(ReqOp.GET)
_PUT, _GET = ReqOp.PUT, ReqOp.GET  # bound once: enum attribute lookups are slow on 3.11


def encode_message(m: Message) -> bytes:
    """A Raft message as a peer frame."""
    entries = m.entries
    if entries:
        flat = [x for e in entries for x in (e.term, e.index, e.type, e.data)]
    else:
        flat = []
    return _pack(
        (
            VERSION,
            _RAFT,
            m.type,
            m.to,
            m.frm,
            m.term,
            m.log_term,
            m.index,
            m.commit,
            bool(m.reject),
            m.reject_hint,
            m.context,
            flat,
        )
    )


def encode_snapshot_chunk(c: SnapshotChunk) -> bytes:
    """Peer frame: [VERSION, SNAP_CHUNK, to, frm, term, index, snap_term, voters, learners,
    offset, total, checksum, data]."""
    m = c.meta
    return _pack((VERSION, _SNAP_CHUNK, c.to, c.frm, c.term, m.index, m.term, list(m.voters),
                  list(m.learners), c.offset, c.total, c.checksum, c.data))


def encode_peer(m: Message | SnapshotChunk) -> bytes:
    return encode_snapshot_chunk(m) if type(m) is SnapshotChunk else encode_message(m)


def _decode_snapshot_chunk(obj: list[Any]) -> SnapshotChunk:
    if len(obj) != 13:
        raise MalformedFrame(f"snapshot chunk has {len(obj)} fields, not 13")
    _, _, to, frm, term, index, snap_term, voters, learners, offset, total, crc, data = obj
    ints = (to, frm, term, index, snap_term, offset, total, crc)
    if not all(type(x) is int and x >= 0 for x in ints) or type(data) is not bytes:
        raise MalformedFrame("snapshot chunk field of the wrong type")
    if crc > MAX_CRC32:
        raise MalformedFrame("snapshot chunk checksum is not a CRC32")
    for ids in (voters, learners):
        if (type(ids) is not list or len(ids) > MAX_FAULT_PEERS
                or not all(type(i) is int and i >= 1 for i in ids)):
            raise MalformedFrame("snapshot chunk: voters/learners are not node ids")
    if (len(data) > MAX_SNAPSHOT_CHUNK or total > MAX_SNAPSHOT_SIZE
            or offset + len(data) > total or index < 1 or not voters):
        raise MalformedFrame("snapshot chunk sizes or index out of range")
    meta = SnapshotMeta(index, snap_term, tuple(voters), tuple(learners))
    return SnapshotChunk(to, frm, term, meta, offset, total, crc, data)


def encode_put(request_id: int, client_id: int, seq: int, key: bytes,
               value: bytes | None) -> bytes:
    """The frame `encode_request` makes of a PUT, without a ClientRequest to build first:
    for a client sending many (1.5 us a request that way, 0.2 us this way, here)."""
    try:
        return _pack((VERSION, _REQ, request_id, _PUT_OP, client_id, seq, key, value))
    except (TypeError, OverflowError) as e:
        raise ValueError(f"cannot encode PUT {request_id}: {e}") from e


def encode_get(request_id: int, key: bytes) -> bytes:
    """The frame `encode_request` makes of a linearizable GET (see `encode_put`)."""
    try:
        return _pack((VERSION, _REQ, request_id, _GET_OP, key))
    except (TypeError, OverflowError) as e:
        raise ValueError(f"cannot encode GET {request_id}: {e}") from e


def encode_request(req: ClientRequest) -> bytes:
    """A client request frame. Raises ValueError if `req` does not fit its op's layout
    (the decoder's limits are not applied: the node is the judge of those)."""
    op = req.op
    if op == ReqOp.PUT and not req.lease:
        return encode_put(req.request_id, req.client_id, req.seq, req.key, req.value)
    if op == ReqOp.GET:
        return encode_get(req.request_id, req.key)
    head = (VERSION, _REQ, req.request_id, int(op))
    if op == ReqOp.GET_STALE or op == ReqOp.GET_KV or op == ReqOp.OLDEST:
        body: tuple[Any, ...] = (req.key,)
    elif op == ReqOp.SCAN:
        if req.revisions:
            body = (req.key, req.limit, req.start, True)
        else:
            body = (req.key, req.limit, req.start) if req.start else (req.key, req.limit)
    elif op == ReqOp.PUT:
        body = (req.client_id, req.seq, req.key, req.value, req.lease)
    elif op == ReqOp.DELETE:
        body = (req.client_id, req.seq, req.key)
    elif op == ReqOp.LEASE_GRANT:
        body = (req.client_id, req.seq, req.ttl_ms)
    elif op == ReqOp.LEASE_REVOKE:
        body = (req.client_id, req.seq, req.lease)
    elif op == ReqOp.LEASE_KEEPALIVE or op == ReqOp.LEASE_INFO:
        body = (req.lease,)
    elif op == ReqOp.CAS:
        body = (req.client_id, req.seq, req.key, req.expected, req.value)
    elif op == ReqOp.TXN:
        body = (req.client_id, req.seq, *(req.txn or ([], [], [])))
    elif op == ReqOp.WATCH:
        body = (req.key, req.prefix, req.revision, req.wait_ms)
    elif op == ReqOp.OPEN_SESSION or op == ReqOp.STATUS or op == ReqOp.LEASE_LIST:
        body = ()
    elif op == ReqOp.FAULT:
        body = (sorted(req.peers),)
    elif op == ReqOp.TRANSFER:
        body = (req.target,)
    elif op == ReqOp.CONF_CHANGE:
        body = (req.conf_op, req.target, req.address)
    elif op == ReqOp.PEERS:
        body = ([[k, v] for k, v in sorted((req.addresses or {}).items())],)
    elif op == ReqOp.CONTROL:
        body = (req.name, list(req.args))
    else:
        raise ValueError(f"unknown op {op!r:.40}")
    try:
        return _pack(head + body)
    except (TypeError, OverflowError) as e:
        raise ValueError(f"cannot encode {req!r:.200}: {e}") from e


def encode_reply(request_id: int, code: int, value: Any = None, leader_hint: int = 0) -> bytes:
    """A reply frame. Raises ValueError if `value` is not msgpack-serializable."""
    try:
        return _pack((VERSION, _REP, request_id, int(code), value, leader_hint))
    except (TypeError, OverflowError, ValueError) as e:
        raise ValueError(f"cannot encode reply to request {request_id}: {e}") from e


def _batch_head(kind: int, n: int) -> bytes:
    """The bytes of `[VERSION, kind, [` followed by n elements still to be written."""
    head = bytes((0x93, VERSION, kind))
    if n < 16:
        return head + bytes((0x90 | n,))
    if n < 1 << 16:
        return head + b"\xdc" + n.to_bytes(2, "big")
    return head + b"\xdd" + n.to_bytes(4, "big")


def encode_requests(frames: list[bytes]) -> bytes:
    """A REQS frame holding requests already encoded by `encode_request`."""
    return _batch_head(_REQS, len(frames)) + b"".join(frames)


def encode_replies(frames: list[bytes]) -> bytes:
    """A REPS frame holding replies already encoded by `encode_reply`."""
    return _batch_head(_REPS, len(frames)) + b"".join(frames)


# ---- decoding ----------------------------------------------------------------------


def split_batch(data: bytes, kind: Kind) -> list[bytes] | None:
    """The elements of a REQS or REPS frame (`kind`) as the bytes each was encoded to, a
    REQ or REP frame apiece, for a proxy to pass on without decoding and encoding them
    again; None if `data` is not a batch of that kind. Raises MalformedFrame if it is one
    but broken. Only the framing is read: each element is for `decode_request` or
    `decode_reply` to check."""
    if type(data) is not bytes or len(data) < 4 or data[0] != 0x93 or data[2] != kind:
        return None
    if data[1] != VERSION:
        raise MalformedFrame(f"protocol version {data[1]} is not {VERSION}")
    unpacker = msgpack.Unpacker(max_buffer_size=len(data))
    unpacker.feed(data)
    try:
        unpacker.read_array_header()
        unpacker.skip()  # the version and the kind, read above
        unpacker.skip()
        n = unpacker.read_array_header()
        if n > MAX_BATCH:
            raise MalformedFrame(f"batch of {n} elements, more than {MAX_BATCH}")
        elements, start = [], unpacker.tell()
        for _ in range(n):
            unpacker.skip()
            end = unpacker.tell()
            elements.append(data[start:end])
            start = end
    except MalformedFrame:
        raise
    except Exception as e:  # msgpack's errors for truncated or non-array input
        raise MalformedFrame(f"batch frame is not [version, kind, [frame, ...]]: {e}") from e
    if start != len(data):
        raise MalformedFrame(f"{len(data) - start} bytes after the batch")
    return elements


_unpackb = msgpack.unpackb
_MSG_TYPES: dict[int, MsgType] = {int(t): t for t in MsgType}
_ENTRY_TYPES: dict[int, EntryType] = {int(t): t for t in EntryType}
_REQ_OPS: dict[int, ReqOp] = {int(o): o for o in ReqOp}
_REPLY_CODES: dict[int, ReplyCode] = {int(c): c for c in ReplyCode}
_APP = int(MsgType.APP)
_INT_ONLY = {int}
_BYTES_ONLY = {bytes}
_ARGC = {
    ReqOp.GET: 1,
    ReqOp.GET_STALE: 1,
    ReqOp.SCAN: 2,
    ReqOp.PUT: 4,
    ReqOp.DELETE: 3,
    ReqOp.CAS: 5,
    ReqOp.TXN: 5,
    ReqOp.GET_KV: 1,
    ReqOp.OLDEST: 1,
    ReqOp.WATCH: 4,
    ReqOp.LEASE_GRANT: 3,
    ReqOp.LEASE_REVOKE: 3,
    ReqOp.LEASE_KEEPALIVE: 1,
    ReqOp.LEASE_INFO: 1,
    ReqOp.LEASE_LIST: 0,
    ReqOp.OPEN_SESSION: 0,
    ReqOp.STATUS: 0,
    ReqOp.FAULT: 1,
    ReqOp.TRANSFER: 1,
    ReqOp.CONF_CHANGE: 3,
    ReqOp.PEERS: 1,
    ReqOp.CONTROL: 2,
}
# Trailing arguments an op may leave out: SCAN's start and revisions, PUT's lease.
_OPTIONAL_ARGS = {ReqOp.SCAN: 2, ReqOp.PUT: 1}


def _unpack(data: bytes, strict_map_key: bool = True) -> Any:
    if type(data) is not bytes:
        raise MalformedFrame(f"frame is {type(data).__name__}, not bytes")
    try:
        return _unpackb(data, use_list=True, raw=False, strict_map_key=strict_map_key)
    except Exception as e:  # msgpack raises ValueError, TypeError, StackError, ...
        raise MalformedFrame(f"not a msgpack value: {type(e).__name__}") from None


def _head(obj: Any) -> int:
    """Check the version and return the kind of an unpacked frame (not the version of a
    request: that one is answered, see `_decode_request`)."""
    if type(obj) is not list or len(obj) < 2:
        raise MalformedFrame("frame is not an array of at least 2 elements")
    kind = obj[1]
    if type(obj[0]) is not int or type(kind) is not int:
        raise MalformedFrame("frame version or kind is not an int")
    if obj[0] != VERSION and kind != _REQ:
        raise MalformedFrame(f"protocol version {obj[0]} is not {VERSION}")
    return kind


def decode_message(data: bytes, *, max_entry: int | None = None) -> Message:
    """A peer frame back into a Message. Raises MalformedFrame.

    `max_entry` bounds each entry's data (default: `max_entry_size()`)."""
    obj = _unpack(data)
    if _head(obj) != _RAFT:
        raise MalformedFrame("not a peer frame")
    return _decode_message(obj, max_entry_size() if max_entry is None else max_entry)


def _decode_message(obj: list[Any], max_entry: int) -> Message:
    if len(obj) != 13:
        raise MalformedFrame(f"peer frame has {len(obj)} fields, not 13")
    _, _, t, to, frm, term, log_term, index, commit, reject, hint, ctx, flat = obj
    if not (
        type(t) is int
        and type(to) is int
        and type(frm) is int
        and type(term) is int
        and type(log_term) is int
        and type(index) is int
        and type(commit) is int
        and type(hint) is int
        and type(ctx) is int
        and type(reject) is bool
        and type(flat) is list
    ):
        raise MalformedFrame("peer frame field of the wrong type")
    # msgpack has no int above 2**64 - 1, so >= 0 is the whole range check.
    if min(to, frm, term, log_term, index, commit, hint, ctx) < 0:
        raise MalformedFrame("peer frame field is negative")
    mtype = _MSG_TYPES.get(t)
    if mtype is None:
        raise MalformedFrame(f"unknown message type {t}")
    if not flat:
        return Message(mtype, to, frm, term, log_term, index, [], commit, reject, hint, ctx)
    if t != _APP:
        raise MalformedFrame(f"{mtype.name} carries entries")
    n, rem = divmod(len(flat), 4)
    if rem:
        raise MalformedFrame("entries array length is not a multiple of 4")
    terms = flat[0::4]
    idxs = flat[1::4]
    etypes = flat[2::4]
    datas = flat[3::4]
    # Column checks run in C; the order matters: types first, since True == 1 == 1.0.
    if (
        set(map(type, terms)) != _INT_ONLY
        or set(map(type, idxs)) != _INT_ONLY
        or set(map(type, etypes)) != _INT_ONLY
        or set(map(type, datas)) != _BYTES_ONLY
    ):
        raise MalformedFrame("entry field of the wrong type")
    if idxs != list(range(index + 1, index + 1 + n)):
        raise MalformedFrame(f"entry indexes do not run consecutively from {index + 1}")
    if terms[0] < log_term or terms[-1] > term or terms != sorted(terms):
        raise MalformedFrame("entry terms decrease or fall outside [log_term, term]")
    if not set(etypes) <= _ENTRY_TYPES.keys():
        raise MalformedFrame("unknown entry type")
    if max(map(len, datas)) > max_entry:
        raise MalformedFrame(f"entry data over {max_entry} bytes")
    entries = list(map(Entry, terms, idxs, map(_ENTRY_TYPES.__getitem__, etypes), datas))
    return Message(mtype, to, frm, term, log_term, index, entries, commit, reject, hint, ctx)


def decode_request(
    data: bytes,
    *,
    identity: bytes | tuple[bytes, bytes] = b"",
    max_key: int = MAX_KEY_SIZE,
    max_value: int = MAX_VALUE_SIZE,
) -> ClientRequest:
    """A client request frame. Raises MalformedFrame or InvalidRequest."""
    obj = _unpack(data)
    if _head(obj) != _REQ:
        raise MalformedFrame("not a client request frame")
    return _decode_request(obj, identity, max_key, max_value)


def _decode_request(
    obj: list[Any], identity: bytes | tuple[bytes, bytes], max_key: int, max_value: int
) -> ClientRequest:
    if len(obj) < 3:
        raise MalformedFrame("client request has no request id")
    rid = obj[2]
    if type(rid) is not int or rid < 0:
        raise MalformedFrame("request id is not a uint64")
    # From here on the sender can be told what is wrong.
    if obj[0] != VERSION:
        raise InvalidRequest(rid, f"protocol version {obj[0]} is not supported (want {VERSION})")
    if len(obj) < 4:
        raise InvalidRequest(rid, "request has no op")
    raw_op = obj[3]
    if type(raw_op) is int and raw_op == _PUT_OP and len(obj) == 8:
        # The hot path: a PUT checked inline (kv.validate_request's rules, without building
        # enums) and its command packed once, for the log, the WAL and the appends.
        _, _, _, _, cid, seq, key, value = obj
        if (type(cid) is int and type(seq) is int and (cid >= 1 and seq >= 1 or cid == seq == 0)
                and type(key) is bytes and len(key) <= max_key
                and type(value) is bytes and len(value) <= max_value):
            return ClientRequest(rid, _PUT, key, value, None, cid, seq,
                                 identity=identity, data=_pack((_PUT_OP, cid, seq, key, value)))
    elif type(raw_op) is int and raw_op == _GET_OP and len(obj) == 5:
        key = obj[4]  # the other hot path: a GET, checked inline too
        if type(key) is bytes and len(key) <= max_key:
            return ClientRequest(rid, _GET, key, identity=identity)
    op = _REQ_OPS.get(raw_op) if type(raw_op) is int else None
    if op is None:
        raise InvalidRequest(rid, f"unknown op {raw_op!r:.40}")
    args = obj[4:]
    least, most = _ARGC[op], _ARGC[op] + _OPTIONAL_ARGS.get(op, 0)
    if not least <= len(args) <= most:
        takes = (least if least == most else f"{least} or {most}" if most == least + 1
                 else f"{least} to {most}")
        raise InvalidRequest(rid, f"{op.name} takes {takes} arguments, not {len(args)}")
    req = ClientRequest(rid, op, identity=identity)
    if op in WRITE_OPS:
        req.client_id, req.seq = args[0], args[1]
        problem = kv.session_problem(req.client_id, req.seq)
        if problem is not None:
            raise InvalidRequest(rid, problem)
        req.key = args[2]
        if op == ReqOp.PUT:
            req.value = args[3]
            if len(args) == 5:
                problem = kv.lease_id_problem(args[4])
                if problem is not None:
                    raise InvalidRequest(rid, problem)
                req.lease = args[4]
        elif op == ReqOp.CAS:
            req.expected, req.value = args[3], args[4]
    elif op in (ReqOp.GET, ReqOp.GET_STALE, ReqOp.GET_KV, ReqOp.OLDEST):
        req.key = args[0]
    elif op == ReqOp.TXN:
        return _decode_txn(req, args, max_key, max_value)
    elif op in _LEASE_OPS:
        return _decode_lease(req, args)
    elif op == ReqOp.WATCH:
        key, prefix, revision, wait_ms = args
        if (type(prefix) is not bool or type(revision) is not int
                or not 0 <= revision <= MAX_UINT64 or type(wait_ms) is not int
                or not 0 <= wait_ms <= MAX_WATCH_WAIT_MS):
            raise InvalidRequest(rid, "WATCH takes a key, prefix (bool), a start revision "
                                 f"(int >= 0) and a wait of 0-{MAX_WATCH_WAIT_MS} ms")
        req.key, req.prefix, req.revision, req.wait_ms = key, prefix, revision, wait_ms
    elif op == ReqOp.SCAN:
        req.key, req.limit = args[:2]
        if len(args) >= 3:
            if type(args[2]) is not bytes:
                raise InvalidRequest(rid, f"scan start must be bytes, not {args[2]!r:.40}")
            req.start = args[2]
        if len(args) == 4:
            if type(args[3]) is not bool:
                raise InvalidRequest(rid, f"scan revisions must be a bool, not {args[3]!r:.40}")
            req.revisions = args[3]
    elif op == ReqOp.FAULT:
        peers = args[0]
        if (
            type(peers) is not list
            or len(peers) > MAX_FAULT_PEERS
            or not all(type(p) is int and p >= 1 for p in peers)
        ):
            raise InvalidRequest(
                rid, f"FAULT takes a list of at most {MAX_FAULT_PEERS} node ids >= 1"
            )
        req.peers = frozenset(peers)
        return req
    elif op == ReqOp.TRANSFER:
        target = args[0]
        if type(target) is not int or not 1 <= target <= MAX_UINT64:
            raise InvalidRequest(rid, f"TRANSFER takes a node id >= 1, not {target!r:.40}")
        req.target = target
        return req
    elif op == ReqOp.CONF_CHANGE:
        conf_op, target, address = args
        if (type(conf_op) is not int or conf_op not in _CONF_OPS
                or type(target) is not int or not 1 <= target <= MAX_UINT64
                or type(address) is not str or len(address) > MAX_ADDRESS):
            raise InvalidRequest(rid, "CONF_CHANGE takes an op (1 add learner, 2 promote, "
                                 "3 remove), a node id >= 1 and an address (str of at most "
                                 f"{MAX_ADDRESS} chars)")
        if conf_op == _ADD_LEARNER and not address.startswith("tcp://"):
            raise InvalidRequest(rid, f"adding node {target} needs its tcp:// address, "
                                 f"not {address!r:.40}")
        req.conf_op, req.target, req.address = conf_op, target, address
        return req
    elif op == ReqOp.PEERS:
        pairs = args[0]
        if (type(pairs) is not list or len(pairs) > MAX_FAULT_PEERS
                or not all(type(p) is list and len(p) == 2 and type(p[0]) is int
                           and 1 <= p[0] <= MAX_UINT64 and type(p[1]) is str
                           and p[1].startswith("tcp://") and len(p[1]) <= MAX_ADDRESS
                           for p in pairs)):
            raise InvalidRequest(rid, "PEERS takes a list of [node id >= 1, tcp:// address] "
                                 f"pairs (at most {MAX_FAULT_PEERS})")
        req.addresses = dict(pairs)
        return req
    elif op == ReqOp.CONTROL:
        name, cargs = args
        if (type(name) is not str or not 0 < len(name) <= MAX_CONTROL_NAME
                or type(cargs) is not list or len(cargs) > MAX_CONTROL_ARGS
                or not all(type(a) in (int, str) for a in cargs)):
            raise InvalidRequest(rid, "CONTROL takes a command name (str) and a list of at "
                                 f"most {MAX_CONTROL_ARGS} ints or strs")
        req.name, req.args = name, tuple(cargs)
        return req
    else:  # OPEN_SESSION, STATUS, LEASE_LIST: no arguments
        return req
    try:
        kv.validate_request(
            kv.Op.GET if op in _KEY_READS else kv.Op(int(op)),
            req.key,
            req.start if op == ReqOp.SCAN else req.value,
            req.expected,
            req.limit if op == ReqOp.SCAN else None,
            max_key_size=max_key,
            max_value_size=max_value,
        )
    except kv.BadRequest as e:
        raise InvalidRequest(rid, str(e)) from None
    return req


def _decode_lease(req: ClientRequest, args: list[Any]) -> ClientRequest:
    """GRANT and REVOKE: a session and a TTL or lease id, checked as `apply` will;
    KEEPALIVE and INFO: a lease id."""
    op = req.op
    if op == ReqOp.LEASE_GRANT or op == ReqOp.LEASE_REVOKE:
        client_id, seq, arg = args
        problem = kv.session_problem(client_id, seq) or kv.lease_problem(int(op), arg)
        if problem is not None:
            raise InvalidRequest(req.request_id, problem)
        req.client_id, req.seq = client_id, seq
        if op == ReqOp.LEASE_GRANT:
            req.ttl_ms = arg
        else:
            req.lease = arg
        return req
    problem = kv.lease_id_problem(args[0])
    if problem is not None:
        raise InvalidRequest(req.request_id, problem)
    req.lease = args[0]
    return req


def _decode_txn(req: ClientRequest, args: list[Any], max_key: int,
                max_value: int) -> ClientRequest:
    """A TXN's arguments, checked as `apply` will check them, and its command packed once
    and bounded to what a log entry may hold."""
    client_id, seq, compares, success, failure = args
    problem = kv.session_problem(client_id, seq) or kv.txn_problem(
        compares, success, failure, max_key, max_value)
    if problem is not None:
        raise InvalidRequest(req.request_id, problem)
    req.client_id, req.seq, req.txn = client_id, seq, (compares, success, failure)
    req.data = _pack((_TXN_OP, client_id, seq, compares, success, failure))  # kv's form
    limit = max_entry_size(max_key, max_value)
    if len(req.data) > limit:
        raise InvalidRequest(req.request_id, f"the transaction takes {len(req.data):,} bytes "
                             f"as a log entry, over the limit of {limit:,} (one key and two "
                             "values at their limits): split it")
    return req


def decode_reply(data: bytes) -> ClientReply:
    """A reply frame. Raises MalformedFrame. The value is not checked against the op:
    the requester knows what it asked."""
    obj = _unpack(data, strict_map_key=False)  # a status map may be keyed by node id
    if _head(obj) != _REP:
        raise MalformedFrame("not a reply frame")
    return _decode_reply(obj)


def decode_replies(data: bytes) -> list[ClientReply]:
    """A REP or a REPS frame: the replies it holds. Raises MalformedFrame if the frame,
    or any reply in it, is not one."""
    obj = _unpack(data, strict_map_key=False)
    kind = _head(obj)
    if kind == _REP:
        return [_decode_reply(obj)]
    if kind != _REPS:
        raise MalformedFrame("not a reply frame")
    if obj[0] != VERSION or len(obj) != 3 or type(obj[2]) is not list:
        raise MalformedFrame("REPS is not [version, kind, [reply, ...]]")
    out = []
    for r in obj[2]:
        if _head(r) != _REP:
            raise MalformedFrame("REPS element is not a reply")
        out.append(_decode_reply(r))
    return out


# The bytes after a uint64's msgpack type byte: how a header is read without unpacking.
_UINT_WIDTH = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_NOT_LEADER_CODE = int(ReplyCode.NOT_LEADER)


def _after_uint(data: bytes, at: int) -> tuple[int, int]:
    """The uint64 whose msgpack encoding starts at `at`, and where the next value starts;
    (0, 0) if there is none there."""
    b = data[at]
    if b < 0x80:
        return b, at + 1
    width = _UINT_WIDTH.get(b, 0)
    if not width or at + 1 + width > len(data):
        return 0, 0
    return int.from_bytes(data[at + 1:at + 1 + width], "big"), at + 1 + width


def peek_request(data: bytes) -> tuple[int, ReqOp]:
    """The request id and op of a REQ frame, read from its header bytes alone: what a
    proxy needs to route a request, leaving the rest for the node to check. Raises what
    `decode_request` raises for a header it cannot read (another version, an unknown op,
    not a request): such a frame is decoded whole to say why."""
    if type(data) is bytes and len(data) > 4 and 0x94 <= data[0] <= 0x9F \
            and data[1] == VERSION and data[2] == _REQ:
        rid, at = _after_uint(data, 3)
        if at and at < len(data):
            op = _REQ_OPS.get(data[at])  # every op is a positive fixint: its own byte
            if op is not None:
                return rid, op
    req = decode_request(data)
    return req.request_id, req.op


def not_leader_hint(data: bytes) -> int | None:
    """The leader hint of a REP frame that answers NOT_LEADER; None for any other frame
    (a REPS included). Only a NOT_LEADER reply, small, is decoded: the code is read from
    the header bytes."""
    if type(data) is not bytes or len(data) < 7 or data[0] != 0x96 or data[2] != _REP:
        return None
    _, at = _after_uint(data, 3)
    if not at or at >= len(data) or data[at] != _NOT_LEADER_CODE:
        return None
    try:
        return decode_reply(data).leader_hint
    except MalformedFrame:
        return None


def _decode_reply(obj: list[Any]) -> ClientReply:
    if obj[0] != VERSION:
        raise MalformedFrame(f"protocol version {obj[0]} is not {VERSION}")
    if len(obj) != 6:
        raise MalformedFrame(f"reply has {len(obj)} fields, not 6")
    _, _, rid, code, value, hint = obj
    if type(rid) is not int or rid < 0 or type(hint) is not int or hint < 0:
        raise MalformedFrame("reply request id or leader hint is not a uint64")
    rcode = _REPLY_CODES.get(code) if type(code) is int else None
    if rcode is None:
        raise MalformedFrame(f"unknown reply code {code!r:.40}")
    return ClientReply(rid, rcode, value, hint)


def _decode_batch(obj: list[Any], identity: bytes | tuple[bytes, bytes], max_key: int,
                  max_value: int) -> RequestBatch:
    if obj[0] != VERSION or len(obj) != 3 or type(obj[2]) is not list:
        raise MalformedFrame("REQS is not [version, kind, [request, ...]]")
    elems = obj[2]
    if len(elems) > MAX_BATCH:
        raise MalformedFrame(f"REQS holds {len(elems)} requests, more than {MAX_BATCH}")
    batch = RequestBatch([], [])
    for r in elems:
        try:
            if _head(r) != _REQ:
                raise MalformedFrame("REQS element is not a request")
            batch.requests.append(_decode_request(r, identity, max_key, max_value))
        except MalformedFrame:
            batch.malformed += 1
        except InvalidRequest as e:
            batch.invalid.append(e)
    return batch


def decode_frame(
    data: bytes,
    *,
    identity: bytes | tuple[bytes, bytes] = b"",
    max_key: int = MAX_KEY_SIZE,
    max_value: int = MAX_VALUE_SIZE,
    max_entry: int | None = None,
) -> Message | SnapshotChunk | ClientRequest | RequestBatch:
    """What a node's socket receives: a peer frame, a client request or a batch of them,
    told apart by kind with a single unpack. Raises MalformedFrame or InvalidRequest."""
    obj = _unpack(data)
    kind = _head(obj)
    if kind == _RAFT:
        if max_entry is None:
            max_entry = max_entry_size(max_key, max_value)
        return _decode_message(obj, max_entry)
    if kind == _SNAP_CHUNK:
        return _decode_snapshot_chunk(obj)
    if kind == _REQ:
        return _decode_request(obj, identity, max_key, max_value)
    if kind == _REQS:
        return _decode_batch(obj, identity, max_key, max_value)
    raise MalformedFrame(f"frame kind {kind} is not received by a node")
