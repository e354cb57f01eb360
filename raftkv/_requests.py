"""What the two clients share: the threaded one (raftkv.client) and the asyncio one
(raftkv.aio) differ only in how they wait. Everything a request means lives here, once:

- the arguments: addresses, `raftkv://` URLs, credentials, deadlines;
- each operation's request and the parsing of its reply;
- `ClientCore`, the state both clients keep (addresses, leader guess, policy);
- `Delivery`, the retry state of one request (where the next attempt goes, what an
  answer or a silence means, when to pause, how the request gave up), without I/O, and
  `deliver`, the attempt loop over it as a generator: a client only sends, waits and
  sends back what came;
- `write_steps`, a write's session handling, a generator of the requests it needs;
- `route`, which hands a received message's replies to the requests waiting for them;
- the errors a refusal maps to (`refused`), and a watch's resume rule (`WatchCursor`).

Private: the public names are raftkv.client's, raftkv.aio's and raftkv.retry's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
import time
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import zmq

from raftkv.errors import (
    AuthenticationFailed,
    BadRequest,
    Compacted,
    Forbidden,
    LeaseNotFound,
    QuotaExceeded,
    RaftKVError,
    SessionExpired,
    Timeout,
    Unavailable,
)
from raftkv.kv import KeyValue
from raftkv.leases import MAX_LEASE_TTL_MS
from raftkv.retry import Retry
from raftkv.security import Credentials, credentials_from_env
from raftkv.txn import (
    Compare,
    Key,
    Put,
    TxnOp,
    TxnResult,
    Value,
    lease_id,
    parse_kv,
    parse_oldest,
    parse_result,
    to_bytes,
    txn_wire,
)
from raftkv.watch import DELETE, PUT, Event
from raftkv.wire import (
    MAX_SCAN,
    MAX_WATCH_WAIT_MS,
    ClientReply,
    ClientRequest,
    MalformedFrame,
    ReplyCode,
    ReqOp,
    decode_replies,
)

DEFAULT_TIMEOUT = 5.0  # seconds: a request's whole budget, retries included
CONNECT_GRACE = 0.2  # seconds a new client waits for a connection before skipping a node
HWM = 100_000  # frames a client's DEALER queues for one address
CONSISTENCIES = ("linearizable", "stale")
DEFAULT_WATCH_WAIT = 1.0  # seconds a node holds a watch with no event before answering
URL_SCHEME = "raftkv"
MAX_TTL = MAX_LEASE_TTL_MS / 1000  # seconds

OK = ReplyCode.OK
# Bound once, as OK: these are tested on every request, and looking a member up on its
# enum class costs some 50 ns (CPython 3.11).
_COMPACTED, _GET_STALE, _WATCH = ReplyCode.COMPACTED, ReqOp.GET_STALE, ReqOp.WATCH
# The answers that end a request's retries, whichever attempt they answer.
TERMINAL = frozenset(
    {ReplyCode.OK, ReplyCode.BAD_REQUEST, ReplyCode.STALE_REQUEST, ReplyCode.SESSION_EXPIRED,
     ReplyCode.QUOTA_EXCEEDED, ReplyCode.FORBIDDEN, ReplyCode.COMPACTED,
     ReplyCode.NOT_FOUND}
)

# What a socket monitor reports when a connection's handshake fails (CurveZMQ, ZAP).
HANDSHAKE_FAILED = {
    int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL): "the handshake failed (no keys, or keys "
    "for another cluster)",
    int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL): "the handshake failed (a security mismatch: "
    "keys given to an --insecure cluster, or none to a secure one)",
    int(zmq.EVENT_HANDSHAKE_FAILED_AUTH): "the cluster does not admit this key",
}
HANDSHAKE_EVENTS = int(zmq.EVENT_HANDSHAKE_SUCCEEDED) | sum(HANDSHAKE_FAILED)


def note_handshake(failures: dict[int, str], index: int, event: int) -> None:
    """Keep a client's map of address index -> why its last handshake failed up to
    date with a monitor `event` of address `index` (a success forgets the failure)."""
    if event in HANDSHAKE_FAILED:
        failures[index] = HANDSHAKE_FAILED[event]
    else:
        failures.pop(index, None)

Addresses = str | Sequence[str] | Mapping[int, str]


@dataclass(slots=True)
class Session:
    client_id: int
    seq: int = 0  # the last seq used; a write takes seq + 1


# ---- arguments ---------------------------------------------------------------------


def parse_addresses(addresses: Addresses) -> tuple[list[str], dict[int, int]]:
    """The addresses in order and the map node id -> index in that list."""
    if isinstance(addresses, str):
        return [addresses], {}
    if isinstance(addresses, Mapping):
        items = sorted(addresses.items())
        for nid, addr in items:
            if type(nid) is not int or nid < 1:
                raise ValueError(f"node ids must be ints >= 1, got {nid!r}")
            if not isinstance(addr, str):
                raise TypeError(f"address of node {nid} must be a str, not {addr!r}")
        return [a for _, a in items], {nid: i for i, (nid, _) in enumerate(items)}
    addrs = list(addresses)
    for addr in addrs:
        if not isinstance(addr, str):
            raise TypeError(f"addresses must be str, not {type(addr).__name__}")
    return addrs, {i + 1: i for i in range(len(addrs))}


def settings(
    addresses: Addresses, timeout: float, attempt_timeout: float | None, retry: Retry | None,
    credentials: Credentials | str | os.PathLike[str] | None,
) -> tuple[list[str], dict[int, int], float, Retry, Credentials | None]:
    """A client's checked arguments: its addresses, node id -> address index, default
    deadline, retry policy (`attempt_timeout`, if given, overrides the policy's) and
    credentials (None: $RAFTKV_CREDENTIALS's, if set)."""
    if credentials is None:
        credentials = credentials_from_env()
    elif not isinstance(credentials, Credentials):
        credentials = Credentials.load(credentials)
    addrs, index_of = parse_addresses(addresses)
    if not addrs:
        raise ValueError("no address given")
    if retry is None:
        retry = Retry()
    elif not isinstance(retry, Retry):
        raise TypeError(f"retry must be a raftkv.Retry, not {type(retry).__name__}")
    if not timeout > 0 or (attempt_timeout is not None and not attempt_timeout > 0):
        raise ValueError(
            f"timeout ({timeout}) and attempt_timeout ({attempt_timeout}) must be > 0")
    if attempt_timeout is not None:
        retry = dataclasses.replace(retry, attempt_timeout=float(attempt_timeout))
    return addrs, index_of, float(timeout), retry, credentials


# Query parameters a URL may carry, and how each is read.
def _url_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (1/0, true/false, yes/no, on/off)")


_URL_PARAMS: dict[str, Callable[[str], Any]] = {
    "timeout": float, "attempt_timeout": float, "decode": _url_bool, "credentials": str,
}
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})")


def parse_url(url: str, overrides: Mapping[str, Any]) -> tuple[Addresses, dict[str, Any]]:
    """`raftkv://host:port[,host:port...][?timeout=2&decode=1...]` as a client's
    addresses and keyword arguments: one host is one address (typically the
    controller's), several are the nodes' in the order of their ids (1..N). The query
    may set timeout, attempt_timeout, decode and credentials; `overrides` (the caller's
    keyword arguments) may not set one of them again. ValueError, saying what is
    wrong, for anything else."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    form = f"expected {URL_SCHEME}://host:port[,host:port...][?timeout=S&decode=1]"
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise ValueError(f"bad raftkv URL {url!r}: {e}; {form}") from None
    if parts.scheme != URL_SCHEME:
        raise ValueError(f"bad raftkv URL {url!r}: the scheme must be {URL_SCHEME}://, "
                         f"not {parts.scheme + '://' if parts.scheme else 'missing'}; {form}")
    if parts.path or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"bad raftkv URL {url!r}: no path, fragment or user name may "
                         f"follow the hosts; {form}")
    addresses = []
    for entry in parts.netloc.split(","):
        m = _HOST_PORT.fullmatch(entry)
        if m is None or not 1 <= int(m["port"]) <= 65535:
            raise ValueError(f"bad raftkv URL {url!r}: {entry!r} is not host:port with a "
                             f"port in 1..65535; {form}")
        addresses.append(f"tcp://{m['host']}:{int(m['port'])}")
    kwargs: dict[str, Any] = {}
    for name, text in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if name not in _URL_PARAMS:
            raise ValueError(f"bad raftkv URL {url!r}: unknown parameter {name!r} (known: "
                             f"{', '.join(_URL_PARAMS)})")
        if name in kwargs:
            raise ValueError(f"bad raftkv URL {url!r}: {name!r} given twice")
        try:
            kwargs[name] = _URL_PARAMS[name](text)
        except ValueError as e:
            raise ValueError(f"bad raftkv URL {url!r}: {name}={text!r}: {e}") from None
    if parts.query and not kwargs:
        raise ValueError(f"bad raftkv URL {url!r}: the query {parts.query!r} sets nothing")
    twice = sorted(set(kwargs) & set(overrides))
    if twice:
        raise ValueError(f"{', '.join(twice)} given both in the URL and as an argument")
    kwargs.update(overrides)
    return (addresses[0] if len(addresses) == 1 else addresses), kwargs


class ClientCore:
    """The state both clients keep, and how a request's `Delivery` starts from it."""

    _NAME = "raftkv.Client"  # as the client's repr names it
    addresses: tuple[str, ...]
    timeout: float
    retry: Retry
    credentials: Credentials | None

    def _setup(
        self, addresses: Addresses, timeout: float, attempt_timeout: float | None,
        retry: Retry | None, decode: bool,
        credentials: Credentials | str | os.PathLike[str] | None,
    ) -> None:
        addrs, index_of, self.timeout, self.retry, self.credentials = settings(
            addresses, timeout, attempt_timeout, retry, credentials)
        self.addresses = tuple(addrs)
        self.attempt_timeout = self.retry.attempt_timeout
        # How long a new client's sends wait for a socket still connecting.
        self._connect_grace = min(CONNECT_GRACE, self.attempt_timeout / 2)
        self.decode = decode
        self._index_of_node = index_of
        self._leader = 0  # index of the address that answered last; shared guess
        self._request_ids = itertools.count(1)
        self._spread = itertools.count()  # where the next stale read starts
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether `close` (`aclose`) was called: every later call fails."""
        return self._closed

    def _learn_leader(self, index: int) -> None:
        self._leader = index

    def _delivery(self, req: ClientRequest, deadline: float, budget: float,
                  failures: Mapping[int, str], *, write: bool, once: bool,
                  wait: float) -> Delivery:
        # A stale read may go to any node: they are spread over the addresses.
        n = len(self.addresses)
        start = next(self._spread) % n if req.op == _GET_STALE else self._leader
        return Delivery(req, self.addresses, self._index_of_node, start, self.retry,
                        deadline, budget, write=write, once=once, wait=wait,
                        learn=self._learn_leader, failures=failures,
                        credentials=self.credentials)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{self._NAME} {list(self.addresses)} {state}>"


def budget(default: float, timeout: float | None) -> float:
    """A call's deadline in seconds: `timeout`, or the client's `default`."""
    if timeout is None:
        return default
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0, not {timeout!r}")
    return float(timeout)


# ---- requests and their replies ----------------------------------------------------


def put_request(key: Key, value: Value, lease: object = None) -> ClientRequest:
    req = ClientRequest(0, ReqOp.PUT, key=to_bytes(key, "key"))
    req.value = to_bytes(value, "value")
    if lease:
        req.lease = lease_id(lease)
    return req


def grant_request(ttl: float) -> ClientRequest:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0.001 <= ttl <= MAX_TTL:
        raise ValueError(f"a lease's ttl is in seconds, in [0.001, {MAX_TTL:g}], not {ttl!r:.40}")
    return ClientRequest(0, ReqOp.LEASE_GRANT, ttl_ms=round(ttl * 1000))


def parse_grant(raw: object) -> int:
    if type(raw) is not int or raw < 1:
        raise RaftKVError(f"LEASE_GRANT answered {raw!r:.40}, not a lease id")
    return raw


def lease_request(op: ReqOp, lease: object) -> ClientRequest:
    """LEASE_REVOKE, LEASE_KEEPALIVE or LEASE_INFO of a lease (an id, or a Lease)."""
    return ClientRequest(0, op, lease=lease_id(lease))


def parse_keepalive(raw: object) -> float:
    if type(raw) is not int:
        raise RaftKVError(f"LEASE_KEEPALIVE answered {raw!r:.40}, not a TTL")
    return raw / 1000


class LeaseInfo(NamedTuple):
    """What `Client.lease_info` answers: the TTL and what is left of it on the leader's
    clock (seconds), and the keys the lease holds."""

    id: int
    ttl: float
    remaining: float
    keys: list[bytes] | list[str]


def parse_lease_info(lid: int, raw: object, decode: bool) -> LeaseInfo:
    if (type(raw) is not list or len(raw) != 3 or type(raw[0]) is not int
            or type(raw[1]) is not int or type(raw[2]) is not list
            or not all(type(k) is bytes for k in raw[2])):
        raise RaftKVError(f"LEASE_INFO answered {raw!r:.60}")
    keys = [k.decode() for k in raw[2]] if decode else raw[2]
    return LeaseInfo(lid, raw[0] / 1000, raw[1] / 1000, keys)


class LeaseList(NamedTuple):
    """What `Client.leases` answers: every lease (`LeaseInfo`, in id order) as of
    `revision`, the leader's applied index when it read them."""

    revision: int
    leases: list[LeaseInfo]


def parse_lease_list(raw: object, decode: bool) -> LeaseList:
    if (type(raw) is not list or len(raw) != 2 or type(raw[0]) is not int
            or type(raw[1]) is not list):
        raise RaftKVError(f"LEASE_LIST answered {raw!r:.60}")
    leases = []
    for item in raw[1]:
        if type(item) is not list or len(item) != 4 or type(item[0]) is not int:
            raise RaftKVError(f"LEASE_LIST answered a lease {item!r:.60}")
        leases.append(parse_lease_info(item[0], item[1:], decode))
    return LeaseList(raw[0], leases)


def parse_revision(revision: object) -> int:
    if type(revision) is not int:
        raise RaftKVError(f"PUT answered {revision!r:.40}, not a revision")
    return revision


def get_kv_request(key: Key) -> ClientRequest:
    return ClientRequest(0, ReqOp.GET_KV, key=to_bytes(key, "key"))


def oldest_request(prefix: Key) -> ClientRequest:
    return ClientRequest(0, ReqOp.OLDEST, key=to_bytes(prefix, "prefix"))


def parse_oldest_reply(raw: object, decode: bool) -> tuple[Any, KeyValue] | None:
    try:
        return parse_oldest(raw, decode)
    except ValueError as e:
        raise RaftKVError(f"OLDEST answered {e}") from None


def parse_get_kv(raw: object, decode: bool) -> KeyValue | None:
    try:
        return parse_kv(raw, decode)
    except ValueError as e:
        raise RaftKVError(f"GET_KV answered {e}") from None


def txn_request(compare: Sequence[Compare], success: Sequence[TxnOp],
                failure: Sequence[TxnOp]) -> tuple[ClientRequest, list[TxnOp], list[TxnOp]]:
    """The TXN request, and the branches as lists (what `parse_txn` reads the reply by)."""
    ok, fail = list(success), list(failure)
    return ClientRequest(0, ReqOp.TXN, txn=txn_wire(list(compare), ok, fail)), ok, fail


def parse_txn(raw: object, success: list[TxnOp], failure: list[TxnOp],
              decode: bool) -> TxnResult:
    try:
        return parse_result(raw, success, failure, decode)
    except ValueError as e:
        raise RaftKVError(f"TXN answered {e}") from None


def get_request(key: Key, consistency: str) -> ClientRequest:
    if consistency == "linearizable":
        op = ReqOp.GET
    elif consistency == "stale":
        op = ReqOp.GET_STALE
    else:
        raise ValueError(f"consistency must be one of {CONSISTENCIES}, not {consistency!r}")
    return ClientRequest(0, op, key=to_bytes(key, "key"))


def parse_get(value: object, decode: bool) -> bytes | str | None:
    if value is None:
        return None
    if type(value) is not bytes:
        raise RaftKVError(f"GET reply value is {type(value).__name__}, not bytes")
    return value.decode() if decode else value


def cas_on_revision(key: Key, expected: Value | None, new: Value,
                    mod_revision: int) -> tuple[list[Compare], list[TxnOp]]:
    """A cas on the mod_revision, as the compare and success branch of a txn."""
    if expected is not None:
        raise ValueError("give cas either an expected value or a mod_revision")
    return [Compare.mod(key) == mod_revision], [Put(key, new)]


def cas_request(key: Key, expected: Value | None, new: Value) -> ClientRequest:
    return ClientRequest(
        0,
        ReqOp.CAS,
        key=to_bytes(key, "key"),
        value=to_bytes(new, "new value"),
        expected=None if expected is None else to_bytes(expected, "expected value"),
    )


def delete_request(key: Key) -> ClientRequest:
    return ClientRequest(0, ReqOp.DELETE, key=to_bytes(key, "key"))


def scan_request(prefix: Key, limit: int, start: Key | None,
                 revisions: bool = False) -> ClientRequest:
    if type(limit) is not int or limit < 0:
        raise ValueError(f"limit must be an int >= 0, not {limit!r}")
    return ClientRequest(0, ReqOp.SCAN, key=to_bytes(prefix, "prefix"), limit=limit,
                         start=b"" if start is None else to_bytes(start, "start"),
                         revisions=bool(revisions))


def parse_scan(pairs: object, decode: bool, revisions: bool = False) -> list[tuple[Any, Any]]:
    """A SCAN reply: (key, value) pairs, or with `revisions` (key, KeyValue) pairs."""
    if type(pairs) is not list:
        raise RaftKVError(f"SCAN reply value is {type(pairs).__name__}, not a list")
    if revisions:
        try:
            return [(p[0].decode() if decode else p[0], parse_kv(p[1:], decode))
                    for p in pairs]
        except (ValueError, TypeError, IndexError, AttributeError) as e:
            raise RaftKVError(f"SCAN answered {pairs!r:.80}: {e}") from None
    if decode:
        return [(k.decode(), v.decode()) for k, v in pairs]
    return [(k, v) for k, v in pairs]


def first_cursor(start: Key | None, page: int) -> bytes:
    """Where a scan_iter starts, once its page size is checked."""
    if type(page) is not int or not 1 <= page <= MAX_SCAN:
        raise ValueError(f"page must be an int in [1, {MAX_SCAN}], not {page!r}")
    return b"" if start is None else to_bytes(start, "start")


def next_cursor(pairs: list[tuple[Any, Any]], cursor: bytes, page: int) -> bytes | None:
    """Where the page after `pairs` (asked from `cursor`) starts; None after the last.
    Only the first and last keys matter: a decoded page is not encoded back whole."""
    if not pairs:
        return None
    first = to_bytes(pairs[0][0], "key")
    if first < cursor:  # a node ignoring the cursor would loop forever
        raise RaftKVError(f"SCAN from {cursor!r:.40} answered {first!r:.40}")
    if len(pairs) < page:
        return None
    return to_bytes(pairs[-1][0], "key") + b"\x00"


def open_session_request() -> ClientRequest:
    # An unanswered OPEN_SESSION may still open a session nobody uses; the server
    # evicts it in time, so it is retried like a read.
    return ClientRequest(0, ReqOp.OPEN_SESSION)


def parse_session(req: ClientRequest, reply: ClientReply) -> Session:
    if reply.code != OK:
        raise refused(req, reply)
    client_id = reply.value
    if type(client_id) is not int or client_id < 1:
        raise RaftKVError(f"OPEN_SESSION answered client id {client_id!r:.40}")
    return Session(client_id)


# ---- outcomes ----------------------------------------------------------------------


def refused(req: ClientRequest, reply: ClientReply) -> RaftKVError:
    """The error of a final answer other than OK."""
    if reply.code == ReplyCode.BAD_REQUEST:
        return BadRequest(str(reply.value))
    if reply.code == ReplyCode.QUOTA_EXCEEDED:
        return QuotaExceeded(str(reply.value))
    if reply.code == ReplyCode.FORBIDDEN:
        return Forbidden(str(reply.value))
    if reply.code == ReplyCode.NOT_FOUND:
        return LeaseNotFound(str(reply.value))
    return RaftKVError(f"{req.op.name} answered {reply.code.name}: {reply.value}")


class SessionPool:
    """A client's free sessions, most recently used last (see raftkv.client: Sessions).
    `lock` guards them where threads share the client; None where one event loop
    does (nothing runs between a take's check and its pop)."""

    def __init__(self, lock: AbstractContextManager[Any] | None = None) -> None:
        self._free: list[Session] = []
        self._lock = lock if lock is not None else contextlib.nullcontext()

    def take(self) -> Session | None:
        with self._lock:
            return self._free.pop() if self._free else None

    def give(self, session: Session) -> None:
        with self._lock:
            self._free.append(session)


# One request a write needs sent: (request, write, once); the client sends it with
# `write`/`once` under the write's deadline and sends back (final reply, ambiguous).
Step = tuple[ClientRequest, bool, bool]
Steps = Generator[Step, tuple[ClientReply, bool], Any]


def write_steps(req: ClientRequest, pool: SessionPool, at_most_once: bool) -> Steps:
    """A write as the requests it sends (see `Step`): a session write takes a free
    session from `pool` (or opens one: an OPEN_SESSION step) and sends `req` with its
    next seq, again with a new session if the old one had expired on the only delivery;
    an at-most-once write sends `req` once, without a session. Returns the reply's
    value; raises as the write fails. The client closes the generator when a send
    raises, which returns the session to the pool."""
    if at_most_once:
        req.client_id = req.seq = 0
        reply, _ = yield req, True, True
        if reply.code != OK:
            raise refused(req, reply)
        return reply.value
    session: Session | None = yield from _take_session(pool)
    try:
        while True:
            assert session is not None
            session.seq += 1
            req.client_id, req.seq = session.client_id, session.seq
            reply, ambiguous = yield req, True, False
            if reply.code == OK:
                return reply.value
            if reply.code == ReplyCode.QUOTA_EXCEEDED and ambiguous:
                raise Timeout(
                    f"{req.op.name} of client {req.client_id} seq {req.seq}: refused "
                    f"for the quota after an unanswered attempt, which may or may not "
                    f"have been applied ({reply.value})")
            if reply.code != ReplyCode.SESSION_EXPIRED:
                raise refused(req, reply)
            session = None  # the server forgot it: never reused
            if ambiguous:
                raise SessionExpired(
                    f"{req.op.name} of client {req.client_id} seq {req.seq}: the session "
                    "expired while the write was being retried after an unanswered "
                    "attempt; the write may or may not have been applied"
                )
            # The only delivery was refused, so nothing was applied: send it again
            # with a new session.
            session = yield from _take_session(pool)
    finally:
        if session is not None:
            pool.give(session)


def _take_session(pool: SessionPool) -> Generator[Step, tuple[ClientReply, bool], Session]:
    session = pool.take()
    if session is not None:
        return session
    req = open_session_request()
    reply, _ = yield req, False, False
    return parse_session(req, reply)


class Delivery:
    """The retry state of one request (see raftkv.client's Retries), free of I/O. The
    client loops: while `expired` is not raised, send the request to `target`, wait up
    to `until(now)`, and report what came: `no_reply`, `not_connected`, or `answered`
    (a final answer ends the request). Then `missed` says how long to pause, if a
    whole round went by (a final answer to any earlier attempt still ends the pause).

    `learn(index)` is told each address found to lead (a hint or an OK), the client's
    guess for its next request. `failures` is the client's live map of address index
    -> why its handshake failed."""

    def __init__(
        self, req: ClientRequest, addresses: Sequence[str], index_of_node: Mapping[int, int],
        start: int, retry: Retry, deadline: float, budget: float, *, write: bool,
        once: bool, wait: float, learn: Callable[[int], None],
        failures: Mapping[int, str], credentials: Credentials | None,
    ) -> None:
        self.req, self.addresses, self.index_of_node = req, addresses, index_of_node
        self.n = len(addresses)
        self.retry, self.deadline, self.budget = retry, deadline, budget
        self.write, self.once = write, once
        self.learn, self.failures, self.credentials = learn, failures, credentials
        # A stale read or a watch may be served by any node: their answers say nothing
        # about the leader (stale reads are also spread, `ClientCore._delivery`).
        self.any_node = req.op == _GET_STALE or req.op == _WATCH
        self.target = start
        self.attempt_timeout = retry.attempt_timeout + wait
        # next_attempt_timeout never goes below the current one: no floor needed here.
        self.ceiling = retry.max_attempt_timeout + wait
        self.tried: dict[str, str] = {}  # address -> what its last attempt got
        # A WATCH's COMPACTED answers, by address index: each node keeps its own watch
        # history (a restarted one only what it replayed since its snapshot), so another
        # may still hold the revisions; the watch is compacted once every node says so.
        self.compacted: dict[int, ClientReply] = {}
        # Whether an attempt went unanswered (for a write: its fate is unknown).
        self.ambiguous = False
        self.misses = 0  # attempts that did not end the request

    def expired(self, now: float, closed: bool) -> None:
        """Raise the request's error if its deadline passed or the client closed."""
        if now >= self.deadline or closed:
            raise self.gave_up(closed)

    def until(self, now: float) -> float:
        """When the attempt sent at `now` counts as unanswered. A write sent `once` is
        waited for to the deadline: it may not be sent again."""
        return self.deadline if self.once else min(now + self.attempt_timeout, self.deadline)

    def _next(self) -> None:
        """On to the next address, past those that answered COMPACTED."""
        for _ in range(self.n):
            self.target = (self.target + 1) % self.n
            if self.target not in self.compacted:
                return

    def no_reply(self) -> None:
        self.ambiguous = True
        self.tried[self.addresses[self.target]] = f"no reply in {self.attempt_timeout:.3g}s"
        self.attempt_timeout = self.retry.next_attempt_timeout(self.attempt_timeout,
                                                                self.ceiling)
        self._next()

    def not_connected(self) -> None:
        self.tried[self.addresses[self.target]] = "not connected"
        if not self.ambiguous and len(self.failures) == self.n:
            # ZeroMQ does not retry a refused handshake: nobody can serve.
            raise self.gave_up(False)
        self._next()

    def answered(self, index: int, reply: ClientReply) -> ClientReply | None:
        """The final answer (from address `index`), or None after noting a refusal."""
        if reply.code == _COMPACTED and self.req.op == _WATCH:
            if type(reply.value) is int and reply.value >= 1:
                self.compacted[index] = reply
                if len(self.compacted) == self.n:  # the node keeping the most answers
                    return min(self.compacted.values(), key=lambda r: r.value)
                self.tried[self.addresses[index]] = f"COMPACTED (keeps from {reply.value})"
            else:  # no oldest revision to resume from: not an answer to act on
                self.tried[self.addresses[index]] = f"COMPACTED naming {reply.value!r:.40}"
            if index == self.target:
                self._next()
            return None
        if reply.code in TERMINAL:
            if reply.code == OK and not self.any_node:
                self.learn(index)
            return reply
        addr = self.addresses[self.target]
        hint = reply.leader_hint
        hinted = self.index_of_node.get(hint)
        if reply.code == ReplyCode.UNAVAILABLE:
            self.ambiguous = True
            self.tried[addr] = f"UNAVAILABLE: {reply.value}"
            if self.once:
                raise Timeout(
                    f"{self.req.op.name} (at most once): {addr} answered "
                    f"UNAVAILABLE ({reply.value}) after the write was sent; "
                    "it may or may not have been applied, and is not resent")
        elif hint and hinted is None:
            self.tried[addr] = (
                f"NOT_LEADER: leader is node {hint}, whose address this "
                "client was not given (pass every node's address)"
            )
        else:
            self.tried[addr] = f"NOT_LEADER (leader: {hint or 'unknown'})"
        if hinted is not None and hinted != self.target:
            self.target = hinted
            self.learn(hinted)
        else:
            self._next()
        return None

    def missed(self) -> float | None:
        """After an attempt that did not end the request: the pause before the next
        (the policy's back-off, cut at the deadline by the caller) when it closed a
        round of as many fruitless attempts as there are addresses, else None."""
        self.misses += 1
        if self.misses % self.n:
            return None
        return self.retry.backoff(self.misses // self.n - 1)  # rounds closed, less one

    def gave_up(self, closed: bool) -> RaftKVError:
        req, budget = self.req, self.budget
        where = "; ".join(f"{a}: {what}" for a, what in self.tried.items()) or "none reached"
        if self.compacted and not closed:  # the nodes that could answer had compacted
            oldest = min(r.value for r in self.compacted.values())
            return compacted(req.revision, oldest, f" (no other node answered: {where})")
        ambiguous = self.write and self.ambiguous
        what = f"{req.op.name}" + (f" (client {req.client_id} seq {req.seq})" if req.seq else "")
        if ambiguous:
            why = "the client was closed" if closed else f"no answer within {budget:.3g}s"
            return Timeout(
                f"{what}: {why} after the write was sent; it may or may not have been "
                f"applied. Tried {where}"
            )
        if closed:
            return RaftKVError(f"{what}: the client was closed. Tried {where}")
        if self.failures:
            hint = ("pass credentials= or set RAFTKV_CREDENTIALS to the cluster's dir"
                    if self.credentials is None else
                    "check that these keys are the cluster's (its DIR/keys)")
            at: dict[str, list[str]] = {}
            for i, reason in sorted(self.failures.items()):
                at.setdefault(reason, []).append(self.addresses[i])
            why = "; ".join(f"{r} at {', '.join(a)}" for r, a in at.items())
            return AuthenticationFailed(
                f"{what}: the cluster refused this client's connection ({why}); {hint}")
        return Unavailable(
            f"{what}: no node served it within {budget:.3g}s; it had no effect. Tried {where}"
        )


# What `deliver` asks of a client: ATTEMPT, send the request to `Delivery.target` and
# wait until the time given for what decides it; PAUSE, wait until then for a final
# answer to an earlier attempt. The client sends back what came: (address index,
# reply), NOT_CONNECTED (the frame could not be queued), CLOSED (the client closed; an
# ATTEMPT of a closed client sends nothing), or None (nothing by then).
ATTEMPT, PAUSE = "attempt", "pause"
NOT_CONNECTED, CLOSED = object(), object()
Outcome = tuple[int, ClientReply] | object | None
Deliver = Generator[tuple[str, float], Outcome, tuple[ClientReply, bool]]


def deliver(d: Delivery) -> Deliver:
    """A request's attempts under `d`'s rules (see ATTEMPT): returns the final answer
    and whether an attempt went unanswered; raises as the request gives up."""
    closed = False
    while True:
        now = time.monotonic()
        d.expired(now, closed)
        outcome = yield ATTEMPT, d.until(now)
        if outcome is CLOSED:
            closed = True
            continue
        if outcome is None:
            d.no_reply()
        elif outcome is NOT_CONNECTED:
            d.not_connected()
        elif isinstance(outcome, tuple):
            final = d.answered(*outcome)
            if final is not None:
                return final, d.ambiguous
        pause = d.missed()
        if pause is not None:
            # A late final answer to an earlier attempt still ends the pause. A late
            # COMPACTED to a WATCH is final only once every node has said so: until
            # then it is noted, and the pause goes on.
            until = min(time.monotonic() + pause, d.deadline)
            while isinstance(outcome := (yield PAUSE, until), tuple):
                final = d.answered(*outcome)
                if final is not None:
                    return final, d.ambiguous
            if outcome is CLOSED:
                closed = True


def route(parts: list[bytes], index: int, pending: Mapping[int, Any],
          stats: dict[str, int]) -> None:
    """Hand each reply of a message from address `index` (a REP or a REPS batch) to the
    queue `pending` holds for its request id, as (request id, index, reply); count in
    `stats` a malformed message and a reply nobody waits for (its request has finished
    or given up)."""
    try:
        if len(parts) != 1:
            raise MalformedFrame(f"{len(parts)} parts")
        replies = decode_replies(parts[0])
    except MalformedFrame:
        stats["malformed"] += 1
        return
    for reply in replies:
        q = pending.get(reply.request_id)
        if q is None:
            stats["unmatched"] += 1
            continue
        q.put_nowait((reply.request_id, index, reply))


# ---- watches -----------------------------------------------------------------------


def compacted(revision: int, oldest: int, more: str = "") -> Compacted:
    """The error of a watch from `revision` that the nodes no longer keep."""
    return Compacted(f"revision {revision} is no longer kept; the oldest is {oldest}{more}",
                     oldest)


def check_watch(start_revision: int | None, wait: float) -> int:
    """The revision a new watch asks from (0: the node's next write)."""
    if start_revision is not None and (type(start_revision) is not int
                                       or start_revision < 1):
        raise ValueError(f"start_revision must be an int >= 1, not {start_revision!r}")
    if not 0 < wait <= MAX_WATCH_WAIT_MS / 1000:
        raise ValueError(f"wait must be in (0, {MAX_WATCH_WAIT_MS / 1000:g}] s")
    return start_revision or 0


class WatchCursor:
    """Where a watch is: each request asks from `next_revision`, the revision after the
    last event delivered, so a watch never misses or repeats one across leader changes
    and reconnects."""

    def __init__(self, key: bytes, prefix: bool, start: int, wait: float) -> None:
        self.key, self.prefix, self.wait = key, prefix, wait
        # The revision the next request asks from (0: the node's next write).
        self.next_revision = start
        # Events received and not yet iterated; all below next_revision.
        self._buffer: deque[Event] = deque()
        self._closed = False  # set by close()

    def close(self) -> None:
        """End the iteration (after the events already received)."""
        self._closed = True

    def _request(self) -> ClientRequest:
        return ClientRequest(0, ReqOp.WATCH, key=self.key, prefix=self.prefix,
                             revision=self.next_revision, wait_ms=round(self.wait * 1000))

    def _absorb(self, req: ClientRequest, reply: ClientReply, decode: bool) -> list[Event]:
        """The events of `reply` not delivered before, queued for iteration; the
        cursor moves past them."""
        if reply.code == ReplyCode.COMPACTED:
            # Delivery returns a WATCH's COMPACTED only with an oldest revision (an int).
            raise compacted(self.next_revision, reply.value)
        if reply.code != OK:
            raise refused(req, reply)
        try:
            next_revision, events = parse_watch(reply.value, decode)
        except ValueError as e:
            raise RaftKVError(f"WATCH answered {e}") from None
        # Never repeat one: a node answers from the revision asked, but is not trusted to.
        fresh = [e for e in events if e.revision >= self.next_revision]
        self.next_revision = max(self.next_revision, next_revision)
        self._buffer.extend(fresh)
        return fresh


def parse_watch(raw: object, decode: bool) -> tuple[int, list[Event]]:
    """A WATCH reply's value: the next revision and the events; ValueError if not."""
    if (type(raw) is not list or len(raw) != 2 or type(raw[0]) is not int
            or type(raw[1]) is not list):
        raise ValueError(f"not [next_revision, events]: {raw!r:.80}")
    events = []
    last = 0
    for e in raw[1]:
        if (type(e) is not list or len(e) != 4 or type(e[0]) is not int or e[0] < last
                or e[1] not in (PUT, DELETE) or type(e[2]) is not bytes
                or (type(e[3]) is not bytes if e[1] == PUT else e[3] is not None)):
            raise ValueError(f"not an event in order: {e!r:.80}")
        last = e[0]
        key, value = e[2], e[3]
        if decode:
            key, value = key.decode(), None if value is None else value.decode()
        events.append(Event(e[0], e[1], key, value))
    if events and raw[0] <= last:
        raise ValueError(f"next revision {raw[0]} is not past the events'")
    return raw[0], events
