"""The Python client: `Client(...).put/get/delete/cas/scan` over ZeroMQ.

    from raftkv import Client
    with Client("tcp://127.0.0.1:7700") as kv:      # the controller, or the node addresses
        kv.put("user:1", "alice")
        kv.get("user:1")                          # b"alice" (str with decode=True), None if absent
        kv.get("user:1", consistency="stale")     # any node, from its applied state
        kv.cas("user:1", "alice", "bob")          # True: swapped
        kv.delete("user:1")                       # True: the key existed
        kv.scan("user:", limit=100)               # [(key, value), ...] sorted by key

Addresses. One address (a str: typically the controller, which forwards to the leader), a
list of node addresses (node ids are taken to be 1..N in list order, the ids the nodes
were started with), or a mapping {node_id: address}; or a URL, `Client.from_url(
"raftkv://h1:7701,h2:7702?timeout=2")`, whose hosts are one address or the nodes' in id
order. A node that does not lead answers NOT_LEADER with the leader's node id; the
client maps that id to an address, so with a list the order must match the cluster's
ids. An id it cannot map, or no hint at all, sends the request to the next address.

Retries. The client is the one party that retries, whatever address it was given: the
controller forwards each request once and does not retry (harness/router.py), so routed
and direct requests take one code path under the one deadline the caller set, and no
resend sits duplicated in the controller. Every
request is retried, with the same (client_id, seq) for a write, until it gets an answer
or its deadline (`timeout`, 5 s by default, the one deadline a request has) passes:
after NOT_LEADER (to the hinted node; the controller's own NOT_LEADER, with no hint,
says it knows no leader now), UNAVAILABLE, a node that is not connected, or no reply
within the attempt timeout. A node with no connection is skipped at once, except in the
client's first 0.2 s (CONNECT_GRACE), while its connections are still being made. After
every round of as many fruitless attempts as there are addresses, the client pauses so
an election is not hammered; with the controller's address alone, that is after every
refusal. The pacing is a `Retry` policy (raftkv.retry; `Client(..., retry=Retry(...))`):
by default an attempt timeout of 0.5 s growing by half after each miss up to 2 s, and
a full-jitter pause, uniform in [0, min(200 ms, 10 ms * 2**n)] after the n-th fruitless
round. The deadline cuts every attempt and pause. A reply that arrives late from an
earlier attempt still completes the request: it answers the same (client_id, seq).

Errors (all derive from `RaftKVError`):

- `Unavailable`: the deadline passed and the request certainly did not take effect:
  every write attempt was refused before it reached the log (NOT_LEADER, not connected),
  or the request was a read (reads have no effect; retrying is always safe).
- `Timeout`: the deadline passed after a write was sent and not answered (or answered
  UNAVAILABLE, which a node also says when it lost leadership with the write pending):
  the write MAY OR MAY NOT have been applied, and may still be applied later. Read the
  key to find out. Only writes raise it.
- `SessionExpired(Timeout)`: the server forgot this client's session while a write was
  being retried, so the write's outcome is unknown. (A session found expired on a
  write's first delivery is replaced and the write retried transparently: nothing was
  applied.)
- `BadRequest(ValueError)`: the server refused the request as invalid (over a size
  limit, ...); nothing was done. The message is the server's.
- `QuotaExceeded`: the leader refused a put or cas at the state's quota.
- `LeaseNotFound`: the lease a put, keepalive or revoke named has expired or was
  revoked (or never existed); nothing was written.
- `Forbidden`: this client's key may not ask that (a client key asked for an admin op).
- `AuthenticationFailed`: no node took the request, and the cluster refused this
  client's connection: no keys where the cluster needs them, a key it does not admit,
  or the wrong server key. ZeroMQ reports the failed handshake (a socket monitor); the
  client raises this in place of `Unavailable`.

Credentials (raftkv.security). `credentials=` takes a `Credentials`, or the path of a
cluster dir, a key dir or a `.key_secret` file (a dir's `client` key is taken); by default
the client uses $RAFTKV_CREDENTIALS, and with neither it connects without keys, which only
an `--insecure` cluster accepts.

Sessions (kv.py, thesis §6.3). The store keeps only the last applied seq per client and
refuses a lower one, so one session can carry one write at a time. The client keeps a
pool of sessions, opened lazily (an OPEN_SESSION request, itself retried until the
deadline): a write takes a free session, or opens one if none is free, and uses seq + 1.
So a client holds as many sessions as it ever had writes in flight at once. Reads
carry no session.

At most once. `put`, `delete` and `cas` take `at_most_once=True` for a one-shot writer
(the CLI's `put`): the write carries no session, so it needs no OPEN_SESSION first (one
log entry and one round trip, not two), but a second copy of it would apply again. So
it is sent again only after a refusal that proves it never reached the log (NOT_LEADER,
not connected); once sent, it is waited for until the deadline, and no answer, or
UNAVAILABLE, raises Timeout: its outcome is unknown.

Reads are linearizable unless `get(..., consistency="stale")` asks for any node's
applied state (GET_STALE).

Threading. A `Client` is safe to share between threads, with many requests in flight at
once. One background I/O thread owns every ZeroMQ socket (one DEALER per address; ZeroMQ
sockets are not thread-safe). A caller encodes its frame, puts it on a queue, wakes the
I/O thread through a socket pair only if it is asleep in its poll, and waits on its own
queue; the I/O thread sends, receives and routes each reply by request id. Under load
the I/O thread rarely sleeps, so most requests cost no wakeup, and it drains and sends
many frames per turn over one connection per node. It packs the frames it sends to one
address in one turn into one REQS frame, and the node, or the controller, answers with
REPS frames (raftkv.wire: batches; the controller forwards a REQS frame to the leader
whole and passes its REPS back unopened). Replies may come either way. Sockets owned per
calling thread were about a quarter faster in a bare 64-thread loop, but cost 64 x N
connections, leak with the threads that made them, and cannot be closed safely by
`close()` while another thread is using them; one owner thread makes `close()` exact.

asyncio. `raftkv.aio.Client` is this client for an event loop: the same methods as
coroutines, the same errors, retries, sessions and watch rules (raftkv/_requests.py holds
them once for both), reader tasks on `zmq.asyncio` in place of the I/O thread.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from raftkv import _requests as rq
from raftkv._requests import (
    CONNECT_GRACE,
    CONSISTENCIES,
    DEFAULT_TIMEOUT,
    DEFAULT_WATCH_WAIT,
    HANDSHAKE_EVENTS,
    HWM,
    OK,
    TERMINAL,
    LeaseInfo,
    LeaseList,
)
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
from raftkv.retry import (
    DEFAULT_ATTEMPT_TIMEOUT,
    FIRST_PAUSE,
    MAX_ATTEMPT_TIMEOUT,
    MAX_PAUSE,
    Retry,
)
from raftkv.security import Credentials
from raftkv.transport import connect_dealer
from raftkv.txn import Compare, Key, TxnOp, TxnResult, Value
from raftkv.watch import Event
from raftkv.wire import (
    ClientReply,
    ClientRequest,
    ReqOp,
    encode_request,
    encode_requests,
)

# The names this module has always given (errors, defaults): raftkv.errors,
# raftkv.retry and raftkv._requests define them now.
__all__ = [
    "CONNECT_GRACE", "CONSISTENCIES", "DEFAULT_ATTEMPT_TIMEOUT", "DEFAULT_TIMEOUT",
    "DEFAULT_WATCH_WAIT", "FIRST_PAUSE", "MAX_ATTEMPT_TIMEOUT", "MAX_PAUSE",
    "AuthenticationFailed", "BadRequest", "Client", "Compacted", "Credentials", "Forbidden",
    "LeaseInfo", "LeaseList", "LeaseNotFound", "QuotaExceeded", "RaftKVError", "Retry",
    "SessionExpired", "Timeout", "Unavailable", "Watch",
]

if TYPE_CHECKING:
    from raftkv.concurrency import Election, Lease, Lock

# What the I/O thread hands a waiting caller: (request_id, address index, reply), where
# reply None means the frame could not be queued (no connection to that address).
_Message = tuple[int, int, ClientReply | None]
_CLOSED: _Message = (-1, -1, None)
# What a caller hands the I/O thread: (address index, request_id, frame, reply queue).
_Outgoing = tuple[int, int, bytes, "queue.SimpleQueue[_Message]"]


class _IOThread(threading.Thread):
    """Owns the DEALER sockets. Callers talk to it only through `submit`, `pending` and
    `close`; every other attribute is the thread's own."""

    def __init__(
        self, addresses: Sequence[str], context: zmq.Context, connect_grace: float,
        credentials: Credentials | None = None,
    ) -> None:
        super().__init__(name="raftkv-client-io", daemon=True)
        self.addresses = list(addresses)
        self.credentials = credentials
        # Address index -> why its last handshake failed; gone once one succeeds. The
        # thread writes it, callers read it (single dict operations, atomic).
        self.handshake_failures: dict[int, str] = {}
        self.connect_grace = connect_grace
        self.context = context
        # request id -> the caller's queue. Callers add and remove their own ids; the
        # thread only reads (single dict operations are atomic under the GIL).
        self.pending: dict[int, queue.SimpleQueue[_Message]] = {}
        self.outbox: queue.SimpleQueue[_Outgoing] = queue.SimpleQueue()
        self.stats = {"malformed": 0, "unmatched": 0}
        self.closing = False
        self.error: BaseException | None = None
        self.ready = threading.Event()
        # Set just before the thread may block in poll and cleared when it wakes. A
        # caller puts its frame on `outbox` first and reads `asleep` second; the thread
        # sets `asleep` first and checks `outbox` second, so one of them sees the other.
        self.asleep = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def submit(
        self, index: int, request_id: int, frame: bytes, q: queue.SimpleQueue[_Message]
    ) -> None:
        self.outbox.put((index, request_id, frame, q))
        if self.asleep:
            self.wake()

    def wake(self) -> None:
        # OSError: the buffer is full (a wakeup is already pending) or the pair closed.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def close(self, timeout: float = 5.0) -> None:
        self.closing = True
        self.wake()
        if self.is_alive():
            self.join(timeout)
        self._wake_r.close()
        self._wake_w.close()

    def run(self) -> None:
        socks: list[zmq.Socket] = []
        monitors: list[zmq.Socket] = []
        try:
            for addr in self.addresses:
                sock = connect_dealer(self.context, addr, hwm=HWM,
                                      credentials=self.credentials)
                socks.append(sock)
                monitors.append(sock.get_monitor_socket(HANDSHAKE_EVENTS))
        except BaseException as e:
            self.error = e
            for s in socks + monitors:
                s.close(linger=0)
            self.ready.set()
            return
        self.ready.set()
        try:
            self._loop(socks, monitors)
        finally:
            for s in socks:
                s.disable_monitor()
                s.close(linger=0)
            for m in monitors:
                m.close(linger=0)
            for q in list(self.pending.values()):
                q.put(_CLOSED)

    def _read_monitor(self, i: int, monitor: zmq.Socket) -> None:
        while monitor.poll(0):
            event = recv_monitor_message(monitor)["event"]
            rq.note_handshake(self.handshake_failures, i, event)

    def _loop(self, socks: list[zmq.Socket], monitors: list[zmq.Socket]) -> None:
        poller = zmq.Poller()
        index_of: dict[Any, int] = {}
        for i, s in enumerate(socks):
            poller.register(s, zmq.POLLIN)
            index_of[s] = i
        monitor_of: dict[Any, int] = {}
        for i, m in enumerate(monitors):
            poller.register(m, zmq.POLLIN)
            monitor_of[m] = i
        wake_fd = self._wake_r.fileno()
        poller.register(wake_fd, zmq.POLLIN)
        outbox = self.outbox
        pending = self.pending
        stats = self.stats
        route = rq.route
        # A fresh socket is still connecting when the first requests come, and with
        # IMMEDIATE its sends fail. Until `grace_end`, such frames wait here for the
        # socket to become writable (connected) instead of failing at once; after it, a
        # socket without a connection means a node that is down.
        grace_end = time.monotonic() + self.connect_grace
        parked: dict[int, list[tuple[int, bytes, queue.SimpleQueue[_Message]]]] = {}
        while not self.closing:
            if parked:
                left = grace_end - time.monotonic()
                timeout: int | None = int(left * 1000) + 1
                if left <= 0:
                    for i, frames in parked.items():
                        poller.modify(socks[i], zmq.POLLIN)
                        for rid, _, q in frames:
                            q.put((rid, i, None))
                    parked.clear()
                    timeout = None
            else:
                timeout = None
            self.asleep = True
            if not outbox.empty() or self.closing:
                timeout = 0
            events = poller.poll(timeout)
            self.asleep = False
            for s, mask in events:
                i = index_of.get(s)
                if i is None and s in monitor_of:
                    self._read_monitor(monitor_of[s], s)
                    continue
                if i is None:  # the wakeup socket
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except OSError:
                        pass
                    continue
                if mask & zmq.POLLOUT and i in parked:
                    frames = parked.pop(i)
                    poller.modify(s, zmq.POLLIN)
                    for rid, frame, q in frames:
                        self._send(socks, i, rid, frame, q, parked, poller, grace_end)
                if not mask & zmq.POLLIN:
                    continue
                while True:
                    try:
                        parts = s.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    route(parts, i, pending, stats)
            by_socket: dict[int, list[tuple[int, bytes, queue.SimpleQueue[_Message]]]] = {}
            while True:
                try:
                    i, rid, frame, q = outbox.get_nowait()
                except queue.Empty:
                    break
                by_socket.setdefault(i, []).append((rid, frame, q))
            for i, items in by_socket.items():
                if len(items) > 1 and i not in parked:
                    try:
                        socks[i].send(encode_requests([f for _, f, _ in items]), zmq.NOBLOCK)
                        continue
                    except zmq.Again:
                        pass  # not connected: each frame parks or fails on its own
                for rid, frame, q in items:
                    self._send(socks, i, rid, frame, q, parked, poller, grace_end)

    @staticmethod
    def _send(
        socks: list[zmq.Socket],
        i: int,
        rid: int,
        frame: bytes,
        q: queue.SimpleQueue[_Message],
        parked: dict[int, list[tuple[int, bytes, queue.SimpleQueue[_Message]]]],
        poller: zmq.Poller,
        grace_end: float,
    ) -> None:
        """Queue `frame` on socket `i`, park it while the socket is new and connecting,
        or tell the caller it could not be sent."""
        if i not in parked:
            try:
                socks[i].send(frame, zmq.NOBLOCK)
                return
            except zmq.Again:
                pass
            if time.monotonic() >= grace_end:
                q.put((rid, i, None))
                return
            parked[i] = []
            poller.modify(socks[i], zmq.POLLIN | zmq.POLLOUT)
        parked[i].append((rid, frame, q))


class Client(rq.ClientCore):
    """A connection to a raftkv cluster; see the module docstring for addressing,
    retries, errors and threading.

    `addresses`: one address (str), a list of node addresses (node ids 1..N in list
    order), or a mapping {node_id: address}; `Client.from_url` takes a `raftkv://` URL
    instead. `timeout`: the default deadline of each call, in seconds, retries included
    (each call may override it). `retry`: the retry policy (`Retry`: attempt timeouts
    and back-off); `attempt_timeout`, if given, overrides the policy's (how long to wait
    for one node's reply before trying the next). `decode=True` returns str (UTF-8)
    instead of bytes for values and scanned keys. `context`: a ZeroMQ context to use
    (not terminated by `close`); by default the client makes its own. `credentials`:
    see the module docstring (default: $RAFTKV_CREDENTIALS, or none).
    """

    def __init__(
        self,
        addresses: str | Sequence[str] | Mapping[int, str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        attempt_timeout: float | None = None,
        retry: Retry | None = None,
        decode: bool = False,
        context: zmq.Context | None = None,
        credentials: Credentials | str | os.PathLike[str] | None = None,
    ) -> None:
        self._setup(addresses, timeout, attempt_timeout, retry, decode, credentials)
        addrs = list(self.addresses)
        self._sessions = rq.SessionPool(threading.Lock())
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._io = _IOThread(addrs, self._context, self._connect_grace,
                             credentials=self.credentials)
        self._io.start()
        self._io.ready.wait()
        if self._io.error is not None:
            error = self._io.error
            self.close()
            raise ValueError(f"cannot connect to {addrs}: {error}") from error

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Client:
        """A client for `raftkv://host:port[,host:port...][?timeout=2&decode=1]`: one
        host is one address (typically the controller's), several are the nodes' in the
        order of their ids (1..N). The query may set `timeout`, `attempt_timeout`,
        `decode` and `credentials` (a path); `kwargs` are the constructor's other
        arguments and may not repeat one the URL sets. ValueError for a bad URL."""
        addresses, kw = rq.parse_url(url, kwargs)
        return cls(addresses, **kw)

    # ---- public API ----------------------------------------------------------------

    def put(
        self, key: Key, value: Value, *, lease: int | Lease | None = None,
        timeout: float | None = None, at_most_once: bool = False
    ) -> int:
        """Set `key` to `value`; the write's revision (its log index: it becomes the
        key's mod_revision). With `lease` (an id from `grant`, or a `Lease`) the key is
        deleted when the lease expires or is revoked; a put without one takes the key out
        of any lease it had (etcd's rule). Raises LeaseNotFound if the lease is gone, and
        Timeout if the outcome is unknown (see Timeout; `at_most_once`: see the module
        docstring)."""
        req = rq.put_request(key, value, lease)
        return rq.parse_revision(self._write(req, timeout, at_most_once))

    def get_kv(self, key: Key, *, timeout: float | None = None) -> KeyValue | None:
        """The value of `key` with its revisions (`KeyValue`: value, create_revision,
        mod_revision, version), or None if it is absent. Linearizable, as `get`."""
        reply = self._read(rq.get_kv_request(key), timeout)
        return rq.parse_get_kv(reply.value, self.decode)

    def oldest(self, prefix: Key, *, timeout: float | None = None
               ) -> tuple[Any, KeyValue] | None:
        """The key under `prefix` created first (the lowest create_revision), as (key,
        KeyValue), or None if no key has the prefix. Linearizable, as `get`."""
        reply = self._read(rq.oldest_request(prefix), timeout)
        return rq.parse_oldest_reply(reply.value, self.decode)

    def txn(
        self,
        compare: Sequence[Compare] = (),
        success: Sequence[TxnOp] = (),
        failure: Sequence[TxnOp] = (),
        *,
        timeout: float | None = None,
        at_most_once: bool = False,
    ) -> TxnResult:
        """Run `success` if every compare holds, else `failure`, as one log entry (see
        raftkv.txn): `TxnResult(succeeded, results)`, a result per op of the branch that
        ran (Put: its revision; Delete: whether the key existed; Get: a KeyValue or
        None). Raises Timeout if the outcome is unknown, as a put does."""
        req, success, failure = rq.txn_request(compare, success, failure)
        raw = self._write(req, timeout, at_most_once)
        return rq.parse_txn(raw, success, failure, self.decode)

    def get(
        self, key: Key, *, consistency: str = "linearizable", timeout: float | None = None
    ) -> bytes | str | None:
        """The value of `key`, or None if it is absent.

        `consistency="linearizable"` (the default): served by the leader after a
        ReadIndex round, so it reflects every write acknowledged before the call.
        `consistency="stale"`: served by any node (the client spreads these over the
        addresses) from what that node has applied; it may miss recent writes, and two
        stale reads may even see the key go back in time. Cheaper: no Raft round."""
        reply = self._read(rq.get_request(key, consistency), timeout)
        return rq.parse_get(reply.value, self.decode)

    def cas(
        self,
        key: Key,
        expected: Value | None,
        new: Value,
        *,
        mod_revision: int | None = None,
        timeout: float | None = None,
        at_most_once: bool = False,
    ) -> bool:
        """Set `key` to `new` if its value is `expected` (None: if it is absent); True if
        it was swapped. With `mod_revision`, compare that instead of the value (0: the
        key is absent; `expected` must then be None), which a value put back since
        cannot fool (the ABA problem). Raises Timeout if the outcome is unknown (see
        Timeout; `at_most_once`: see the module docstring)."""
        if mod_revision is not None:
            compare, success = rq.cas_on_revision(key, expected, new, mod_revision)
            return self.txn(compare, success, timeout=timeout,
                            at_most_once=at_most_once).succeeded
        req = rq.cas_request(key, expected, new)
        return bool(self._write(req, timeout, at_most_once))

    def delete(
        self, key: Key, *, timeout: float | None = None, at_most_once: bool = False
    ) -> bool:
        """Remove `key`; True if it existed. Raises Timeout if the outcome is unknown
        (see Timeout); a retried delete that was applied still answers its first reply
        (`at_most_once`: see the module docstring)."""
        return bool(self._write(rq.delete_request(key), timeout, at_most_once))

    def scan(
        self,
        prefix: Key = b"",
        limit: int = 100,
        *,
        start: Key | None = None,
        revisions: bool = False,
        timeout: float | None = None,
    ) -> list[tuple[Any, Any]]:
        """Up to `limit` (key, value) pairs whose key starts with `prefix` and is not
        below `start`, sorted by key; linearizable (the protocol has no stale scan). A
        node caps one reply (10,000 pairs); limit 0 asks for the cap. To page on, pass
        the last key you got plus a zero byte as `start`, or use `scan_iter`. With
        `revisions`, each pair is (key, KeyValue): the value with the key's
        create_revision, mod_revision and version."""
        req = rq.scan_request(prefix, limit, start, revisions)
        return rq.parse_scan(self._read(req, timeout).value, self.decode, revisions)

    def scan_iter(
        self,
        prefix: Key = b"",
        *,
        start: Key | None = None,
        page: int = 1000,
        revisions: bool = False,
        timeout: float | None = None,
    ) -> Iterator[tuple[Any, Any]]:
        """Every (key, value) pair whose key starts with `prefix` (and is not below
        `start`), in key order, fetched `page` pairs a request. Each page is a
        linearizable read of its own, not one snapshot: a key written between two pages
        shows as the page that reached it saw it. `revisions`: as for `scan`."""
        cursor: bytes | None = rq.first_cursor(start, page)
        while cursor is not None:
            pairs = self.scan(prefix, page, start=cursor, revisions=revisions,
                              timeout=timeout)
            cursor = rq.next_cursor(pairs, cursor, page)
            yield from pairs

    def watch(
        self,
        key: Key,
        *,
        prefix: bool = False,
        start_revision: int | None = None,
        wait: float = DEFAULT_WATCH_WAIT,
    ) -> Watch:
        """The puts and deletes of `key` (or of every key starting with it, if
        `prefix`), from `start_revision` on (None: from the next write), as an iterator
        of `Event`s in revision order. It never misses or repeats one, across leader
        changes and reconnects: each request asks from the revision after the last
        delivered. Raises `Compacted` when no node keeps the revisions asked for any
        more. `wait`: how long a node holds one request with no event to give."""
        start = rq.check_watch(start_revision, wait)
        return Watch(self, rq.to_bytes(key, "key"), prefix, start, wait)

    # ---- leases, locks and elections (raftkv/concurrency.py) ---------------------------

    def grant(self, ttl: float, *, timeout: float | None = None) -> int:
        """A new lease of `ttl` seconds (at least 0.001); its id. The leader times it:
        unless kept alive (`keepalive`) within each `ttl`, it expires and every key put
        with it is deleted. A new leader restarts every lease at its full TTL, so a
        failover never shortens one. `lease(ttl)` keeps one alive for you."""
        return rq.parse_grant(self._write(rq.grant_request(ttl), timeout, False))

    def revoke(self, lease: int | Lease, *, timeout: float | None = None) -> bool:
        """End a lease now and delete the keys it holds; False if it was gone already."""
        req = rq.lease_request(ReqOp.LEASE_REVOKE, lease)
        return bool(self._write(req, timeout, False))

    def keepalive(self, lease: int | Lease, *, timeout: float | None = None) -> float:
        """Restart the lease's TTL on the leader's clock; the TTL, in seconds. Raises
        LeaseNotFound once it expired (or was revoked): too late, its keys are gone or
        going."""
        reply = self._read(rq.lease_request(ReqOp.LEASE_KEEPALIVE, lease), timeout)
        return rq.parse_keepalive(reply.value)

    def lease_info(self, lease: int | Lease, *, timeout: float | None = None) -> LeaseInfo:
        """The lease's TTL, the seconds left of it on the leader's clock, and the keys it
        holds. Raises LeaseNotFound if it is gone."""
        req = rq.lease_request(ReqOp.LEASE_INFO, lease)
        return rq.parse_lease_info(req.lease, self._read(req, timeout).value, self.decode)

    def leases(self, *, timeout: float | None = None) -> LeaseList:
        """Every lease, its TTL, the seconds left of it on the leader's clock and its
        keys, as of one revision (`LeaseList.revision`): a linearizable read."""
        req = ClientRequest(0, ReqOp.LEASE_LIST)
        return rq.parse_lease_list(self._read(req, timeout).value, self.decode)

    def lease(self, ttl: float, *, keepalive: bool = True) -> Lease:
        """Grant a lease of `ttl` seconds and, with `keepalive`, keep it alive from a
        background thread (every ttl/3) until `close()` or the end of a `with` block,
        which revoke it. See `raftkv.concurrency.Lease`."""
        from raftkv.concurrency import Lease

        return Lease(self, ttl, keepalive=keepalive)

    def lock(self, name: Key, ttl: float = 10.0, *, lease: Lease | None = None) -> Lock:
        """A distributed lock (etcd's mutex: raftkv.concurrency.Lock); acquire it with
        `with kv.lock("jobs"):` or `.acquire(timeout=)`. Held on a lease of `ttl`
        seconds kept alive meanwhile: a holder that dies releases it within `ttl`. Its
        `revision` is a fencing token: it grows with each holder. `lease`: hold it on
        this `Lease` (one the caller keeps alive for many locks, etcd's session) instead
        of granting one an acquire."""
        from raftkv.concurrency import Lock

        return Lock(self, name, ttl, lease)

    def election(self, name: Key, ttl: float = 10.0, *,
                 lease: Lease | None = None) -> Election:
        """A leader election (etcd's: raftkv.concurrency.Election): `campaign(value)`,
        `leader()`, `observe()`, `resign()`. `lease`: as for `lock`."""
        from raftkv.concurrency import Election

        return Election(self, name, ttl, lease)

    def _watch_poll(self, req: ClientRequest, wait: float) -> ClientReply:
        """One WATCH request, whose attempts may each be held `wait` seconds."""
        budget = self.timeout + wait
        reply, _ = self._send(req, time.monotonic() + budget, budget, write=False, wait=wait)
        return reply

    def close(self) -> None:
        """Stop the I/O thread and close the sockets (unsent frames are dropped).
        Calls in flight fail; later calls raise RaftKVError. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._io.close()
        if self._own_context:
            self._context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- requests ------------------------------------------------------------------

    def _read(self, req: ClientRequest, timeout: float | None) -> ClientReply:
        budget = rq.budget(self.timeout, timeout)
        reply, _ = self._send(req, time.monotonic() + budget, budget, write=False)
        if reply.code != OK:
            raise rq.refused(req, reply)
        return reply

    def _write(self, req: ClientRequest, timeout: float | None, at_most_once: bool) -> Any:
        budget = rq.budget(self.timeout, timeout)
        deadline = time.monotonic() + budget
        steps = rq.write_steps(req, self._sessions, at_most_once)
        try:
            step = next(steps)
            while True:
                sent, write, once = step
                step = steps.send(self._send(sent, deadline, budget, write=write, once=once))
        except StopIteration as done:
            return done.value
        finally:
            steps.close()

    def _send(
        self, req: ClientRequest, deadline: float, budget: float, *, write: bool,
        once: bool = False, wait: float = 0.0,
    ) -> tuple[ClientReply, bool]:
        """Deliver `req` until a node answers it for good (OK, BAD_REQUEST,
        STALE_REQUEST, SESSION_EXPIRED) or `deadline` passes. Returns that reply and
        whether an earlier attempt of this write went unanswered (its fate unknown).
        Raises Unavailable, or Timeout for a write that may have been applied.
        `once`: the request may reach the log only once, so it is sent again only after
        a refusal that proves it did not (NOT_LEADER, not connected); one that may have
        is waited for until the deadline, and UNAVAILABLE raises Timeout at once.
        `wait`: how long a node may hold the request before answering (a WATCH), added
        to each attempt's timeout. The retry rules are raftkv._requests.Delivery's."""
        if self._closed:
            raise RaftKVError("the client is closed")
        io = self._io
        pending = io.pending
        d = self._delivery(req, deadline, budget, io.handshake_failures, write=write,
                           once=once, wait=wait)
        q: queue.SimpleQueue[_Message] = queue.SimpleQueue()
        request_ids: list[int] = []
        steps = rq.deliver(d)
        try:
            step, until = next(steps)
            while True:
                if step is rq.PAUSE:
                    outcome = _wait(q, -1, until)
                elif io.closing:
                    outcome = rq.CLOSED
                else:
                    rid = next(self._request_ids)
                    req.request_id = rid
                    pending[rid] = q
                    request_ids.append(rid)
                    io.submit(d.target, rid, encode_request(req), q)
                    outcome = _wait(q, rid, until)
                step, until = steps.send(outcome)
        except StopIteration as done:
            return done.value
        finally:
            for rid in request_ids:
                pending.pop(rid, None)


def _wait(q: queue.SimpleQueue[_Message], rid: int, until: float) -> rq.Outcome:
    """What decides attempt `rid` (see raftkv._requests.ATTEMPT): its own reply or send
    failure, a final answer to any earlier attempt, or the client's close. None if
    `until` passes first."""
    while True:
        remaining = until - time.monotonic()
        if remaining <= 0:
            return None
        try:
            request_id, index, reply = q.get(timeout=remaining)
        except queue.Empty:
            return None
        if request_id == _CLOSED[0]:
            return rq.CLOSED
        if reply is None:
            if request_id == rid:
                return rq.NOT_CONNECTED
        elif request_id == rid or reply.code in TERMINAL:
            return index, reply


class Watch(rq.WatchCursor):
    """An iterator of the events a `Client.watch` asked for; `close` (or leaving its
    `with` block) ends it. Not thread-safe: one consumer."""

    def __init__(self, client: Client, key: bytes, prefix: bool, start: int,
                 wait: float) -> None:
        super().__init__(key, prefix, start, wait)
        self._client = client

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> Event:
        while not self._buffer:
            if self._closed or self._client._closed:
                raise StopIteration
            self.poll()
        return self._buffer.popleft()

    def poll(self) -> list[Event]:
        """One request: the events there are now, waiting up to `wait` for one; they
        are also queued for iteration. Gives [] when no node answered in time (the
        next poll asks from the same revision)."""
        req = self._request()
        try:
            reply = self._client._watch_poll(req, self.wait)
        except Unavailable:
            return []
        return self._absorb(req, reply, self._client.decode)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
