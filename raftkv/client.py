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
were started with), or a mapping {node_id: address}. A node that does not lead answers
NOT_LEADER with the leader's node id; the client maps that id to an address, so with a
list the order must match the cluster's ids. An id it cannot map, or no hint at all,
sends the request to the next address.

Retries. The client is the one party that retries, whatever address it was given: the
controller forwards each request once and does not retry (harness/router.py), so routed
and direct requests take one code path under the one deadline the caller set, and no
resend sits duplicated in the controller. Every
request is retried, with the same (client_id, seq) for a write, until it gets an answer
or its deadline (`timeout`, 5 s by default, the one deadline a request has) passes:
after NOT_LEADER (to the hinted node; the controller's own NOT_LEADER, with no hint,
says it knows no leader now), UNAVAILABLE, a node that is not connected, or no reply
within the attempt timeout (0.5 s, growing by half after each miss up to 2 s). A node with no
connection is skipped at once, except in the client's first 0.2 s (CONNECT_GRACE), while
its connections are still being made. After every round of as many fruitless attempts as
there are addresses, the client pauses (10 ms, doubling up to 200 ms) so an election is
not hammered; with the controller's address alone, that is after every refusal. A reply
that arrives late from an earlier attempt still completes the request: it answers the
same (client_id, seq).

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
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import zmq
from zmq.utils.monitor import recv_monitor_message

from raftkv.kv import KeyValue
from raftkv.leases import MAX_LEASE_TTL_MS
from raftkv.security import Credentials, credentials_from_env
from raftkv.transport import connect_dealer
from raftkv.txn import (
    Compare,
    Key,
    Put,
    TxnOp,
    TxnResult,
    Value,
    lease_id,
    parse_kv,
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
    encode_request,
    encode_requests,
)

if TYPE_CHECKING:
    from raftkv.concurrency import Election, Lease, Lock

MAX_TTL = MAX_LEASE_TTL_MS / 1000  # seconds
DEFAULT_TIMEOUT = 5.0  # seconds: a request's whole budget, retries included
DEFAULT_ATTEMPT_TIMEOUT = 0.5  # seconds without a reply before trying another address
MAX_ATTEMPT_TIMEOUT = 2.0
FIRST_PAUSE = 0.01  # seconds; after each fruitless round of attempts, doubling
MAX_PAUSE = 0.2
CONNECT_GRACE = 0.2  # seconds a new client waits for a connection before skipping a node
CONSISTENCIES = ("linearizable", "stale")

_HWM = 100_000
# What a socket monitor reports when a connection's handshake fails (CurveZMQ, ZAP).
_HANDSHAKE_FAILED = {
    int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL): "the handshake failed (no keys, or keys "
    "for another cluster)",
    int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL): "the handshake failed (a security mismatch: "
    "keys given to an --insecure cluster, or none to a secure one)",
    int(zmq.EVENT_HANDSHAKE_FAILED_AUTH): "the cluster does not admit this key",
}
_HANDSHAKE_EVENTS = int(zmq.EVENT_HANDSHAKE_SUCCEEDED) | sum(_HANDSHAKE_FAILED)

_OK = ReplyCode.OK
_TERMINAL = frozenset(
    {ReplyCode.OK, ReplyCode.BAD_REQUEST, ReplyCode.STALE_REQUEST, ReplyCode.SESSION_EXPIRED,
     ReplyCode.QUOTA_EXCEEDED, ReplyCode.FORBIDDEN, ReplyCode.COMPACTED,
     ReplyCode.NOT_FOUND}
)
DEFAULT_WATCH_WAIT = 1.0  # seconds a node holds a watch with no event before answering
# What the I/O thread hands a waiting caller: (request_id, address index, reply), where
# reply None means the frame could not be queued (no connection to that address).
_Message = tuple[int, int, ClientReply | None]
_CLOSED: _Message = (-1, -1, None)
# What a caller hands the I/O thread: (address index, request_id, frame, reply queue).
_Outgoing = tuple[int, int, bytes, "queue.SimpleQueue[_Message]"]


class RaftKVError(Exception):
    """Base class of the client's errors."""


class Unavailable(RaftKVError):
    """No node served the request before its deadline, and it certainly had no effect
    (a read, or a write no node ever accepted). Safe to retry."""


class Timeout(RaftKVError):
    """The deadline passed after a write was sent and not answered: the write may or
    may not have been applied, and may still be applied later. Only writes raise it."""


class SessionExpired(Timeout):
    """The server forgot the client's session while a write was being retried: the
    write's outcome is unknown, as for `Timeout`. The next write opens a new session."""


class Compacted(RaftKVError):
    """A watch asked for revisions the node no longer keeps (its watch history is
    bounded: `raftkv node --watch-history-bytes`). `oldest` is the first revision it can
    answer from: read the state again (get, scan), then watch from the revision that
    read saw, plus one."""

    def __init__(self, message: str, oldest: int) -> None:
        super().__init__(message)
        self.oldest = oldest


class LeaseNotFound(RaftKVError):
    """The lease a request named does not exist: it expired or was revoked (or was never
    granted). Nothing was written; a keepalive of it is too late."""


class BadRequest(RaftKVError, ValueError):
    """The server refused the request as invalid; nothing was done. The message is the
    server's."""


class QuotaExceeded(RaftKVError):
    """The leader refused a put or cas: the state is at its quota (`--quota-bytes`).
    Nothing was done. Deleting keys makes room."""


class Forbidden(RaftKVError):
    """The cluster refused the request for this client's key: a client key asked for
    what only the admin key may (raftkv.security). Nothing was done."""


class AuthenticationFailed(RaftKVError):
    """The cluster refused this client's connection: no keys given where the cluster
    requires them, a key it does not admit, or the wrong server key."""


@dataclass(slots=True)
class _Session:
    client_id: int
    seq: int = 0  # the last seq used; a write takes seq + 1


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
                sock = connect_dealer(self.context, addr, hwm=_HWM,
                                      credentials=self.credentials)
                socks.append(sock)
                monitors.append(sock.get_monitor_socket(_HANDSHAKE_EVENTS))
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
            if event in _HANDSHAKE_FAILED:
                self.handshake_failures[i] = _HANDSHAKE_FAILED[event]
            else:
                self.handshake_failures.pop(i, None)

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
                    try:
                        if len(parts) != 1:
                            raise MalformedFrame(f"{len(parts)} parts")
                        replies = decode_replies(parts[0])
                    except MalformedFrame:
                        stats["malformed"] += 1
                        continue
                    for reply in replies:
                        q = pending.get(reply.request_id)
                        if q is None:  # its caller has finished or given up
                            stats["unmatched"] += 1
                            continue
                        q.put((reply.request_id, i, reply))
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


def _parse_addresses(
    addresses: str | Sequence[str] | Mapping[int, str],
) -> tuple[list[str], dict[int, int]]:
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


class Client:
    """A connection to a raftkv cluster; see the module docstring for addressing,
    retries, errors and threading.

    `addresses`: one address (str), a list of node addresses (node ids 1..N in list
    order), or a mapping {node_id: address}. `timeout`: the default deadline of each
    call, in seconds, retries included (each call may override it). `attempt_timeout`:
    how long to wait for one node's reply before trying the next. `decode=True` returns
    str (UTF-8) instead of bytes for values and scanned keys. `context`: a ZeroMQ
    context to use (not terminated by `close`); by default the client makes its own.
    `credentials`: see the module docstring (default: $RAFTKV_CREDENTIALS, or none).
    """

    def __init__(
        self,
        addresses: str | Sequence[str] | Mapping[int, str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        decode: bool = False,
        context: zmq.Context | None = None,
        credentials: Credentials | str | os.PathLike[str] | None = None,
    ) -> None:
        if credentials is None:
            credentials = credentials_from_env()
        elif not isinstance(credentials, Credentials):
            credentials = Credentials.load(credentials)
        self.credentials: Credentials | None = credentials
        addrs, index_of = _parse_addresses(addresses)
        if not addrs:
            raise ValueError("no address given")
        if not timeout > 0 or not attempt_timeout > 0:
            raise ValueError(
                f"timeout ({timeout}) and attempt_timeout ({attempt_timeout}) must be > 0"
            )
        self.addresses: tuple[str, ...] = tuple(addrs)
        self.timeout = float(timeout)
        self.attempt_timeout = float(attempt_timeout)
        self.decode = decode
        self._index_of_node = index_of
        self._leader = 0  # index of the address that answered last; shared guess
        self._request_ids = itertools.count(1)
        self._spread = itertools.count()  # where the next stale read starts
        self._sessions: list[_Session] = []  # free sessions, most recently used last
        self._sessions_lock = threading.Lock()
        self._closed = False
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        grace = min(CONNECT_GRACE, self.attempt_timeout / 2)
        self._io = _IOThread(addrs, self._context, grace,
                             credentials=credentials)
        self._io.start()
        self._io.ready.wait()
        if self._io.error is not None:
            error = self._io.error
            self.close()
            raise ValueError(f"cannot connect to {addrs}: {error}") from error

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
        req = ClientRequest(0, ReqOp.PUT, key=to_bytes(key, "key"))
        req.value = to_bytes(value, "value")
        if lease:
            req.lease = lease_id(lease)
        revision = self._write(req, timeout, at_most_once)
        if type(revision) is not int:
            raise RaftKVError(f"PUT answered {revision!r:.40}, not a revision")
        return revision

    def get_kv(self, key: Key, *, timeout: float | None = None) -> KeyValue | None:
        """The value of `key` with its revisions (`KeyValue`: value, create_revision,
        mod_revision, version), or None if it is absent. Linearizable, as `get`."""
        reply = self._read(ClientRequest(0, ReqOp.GET_KV, key=to_bytes(key, "key")), timeout)
        try:
            return parse_kv(reply.value, self.decode)
        except ValueError as e:
            raise RaftKVError(f"GET_KV answered {e}") from None

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
        success, failure = list(success), list(failure)
        req = ClientRequest(0, ReqOp.TXN, txn=txn_wire(list(compare), success, failure))
        raw = self._write(req, timeout, at_most_once)
        try:
            return parse_result(raw, success, failure, self.decode)
        except ValueError as e:
            raise RaftKVError(f"TXN answered {e}") from None

    def get(
        self, key: Key, *, consistency: str = "linearizable", timeout: float | None = None
    ) -> bytes | str | None:
        """The value of `key`, or None if it is absent.

        `consistency="linearizable"` (the default): served by the leader after a
        ReadIndex round, so it reflects every write acknowledged before the call.
        `consistency="stale"`: served by any node (the client spreads these over the
        addresses) from what that node has applied; it may miss recent writes, and two
        stale reads may even see the key go back in time. Cheaper: no Raft round."""
        if consistency == "linearizable":
            op = ReqOp.GET
        elif consistency == "stale":
            op = ReqOp.GET_STALE
        else:
            raise ValueError(f"consistency must be one of {CONSISTENCIES}, not {consistency!r}")
        reply = self._read(ClientRequest(0, op, key=to_bytes(key, "key")), timeout)
        value = reply.value
        if value is None:
            return None
        if type(value) is not bytes:
            raise RaftKVError(f"GET reply value is {type(value).__name__}, not bytes")
        return value.decode() if self.decode else value

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
            if expected is not None:
                raise ValueError("give cas either an expected value or a mod_revision")
            return self.txn([Compare.mod(key) == mod_revision], [Put(key, new)],
                            timeout=timeout, at_most_once=at_most_once).succeeded
        req = ClientRequest(
            0,
            ReqOp.CAS,
            key=to_bytes(key, "key"),
            value=to_bytes(new, "new value"),
            expected=None if expected is None else to_bytes(expected, "expected value"),
        )
        return bool(self._write(req, timeout, at_most_once))

    def delete(
        self, key: Key, *, timeout: float | None = None, at_most_once: bool = False
    ) -> bool:
        """Remove `key`; True if it existed. Raises Timeout if the outcome is unknown
        (see Timeout); a retried delete that was applied still answers its first reply
        (`at_most_once`: see the module docstring)."""
        req = ClientRequest(0, ReqOp.DELETE, key=to_bytes(key, "key"))
        return bool(self._write(req, timeout, at_most_once))

    def scan(
        self,
        prefix: Key = b"",
        limit: int = 100,
        *,
        start: Key | None = None,
        timeout: float | None = None,
    ) -> list[tuple[bytes, bytes]] | list[tuple[str, str]]:
        """Up to `limit` (key, value) pairs whose key starts with `prefix` and is not
        below `start`, sorted by key; linearizable (the protocol has no stale scan). A
        node caps one reply (10,000 pairs); limit 0 asks for the cap. To page on, pass
        the last key you got plus a zero byte as `start`, or use `scan_iter`."""
        if type(limit) is not int or limit < 0:
            raise ValueError(f"limit must be an int >= 0, not {limit!r}")
        req = ClientRequest(0, ReqOp.SCAN, key=to_bytes(prefix, "prefix"), limit=limit,
                            start=b"" if start is None else to_bytes(start, "start"))
        pairs = self._read(req, timeout).value
        if type(pairs) is not list:
            raise RaftKVError(f"SCAN reply value is {type(pairs).__name__}, not a list")
        if self.decode:
            return [(k.decode(), v.decode()) for k, v in pairs]
        return [(k, v) for k, v in pairs]

    def scan_iter(
        self,
        prefix: Key = b"",
        *,
        start: Key | None = None,
        page: int = 1000,
        timeout: float | None = None,
    ) -> Iterator[tuple[bytes, bytes]] | Iterator[tuple[str, str]]:
        """Every (key, value) pair whose key starts with `prefix` (and is not below
        `start`), in key order, fetched `page` pairs a request. Each page is a
        linearizable read of its own, not one snapshot: a key written between two pages
        shows as the page that reached it saw it."""
        if type(page) is not int or not 1 <= page <= MAX_SCAN:
            raise ValueError(f"page must be an int in [1, {MAX_SCAN}], not {page!r}")
        cursor = b"" if start is None else to_bytes(start, "start")
        while True:
            pairs = self.scan(prefix, page, start=cursor, timeout=timeout)
            keys = [k.encode() if isinstance(k, str) else k for k, _ in pairs]
            if keys and keys[0] < cursor:  # a node ignoring the cursor would loop forever
                raise RaftKVError(f"SCAN from {cursor!r:.40} answered {keys[0]!r:.40}")
            yield from pairs  # type: ignore[misc]
            if len(pairs) < page:
                return
            cursor = keys[-1] + b"\x00"

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
        delivered. Raises `Compacted` when the node no longer keeps the revisions asked
        for. `wait`: how long a node holds one request with no event to give."""
        if start_revision is not None and (type(start_revision) is not int
                                           or start_revision < 1):
            raise ValueError(f"start_revision must be an int >= 1, not {start_revision!r}")
        if not 0 < wait <= MAX_WATCH_WAIT_MS / 1000:
            raise ValueError(f"wait must be in (0, {MAX_WATCH_WAIT_MS / 1000:g}] s")
        return Watch(self, to_bytes(key, "key"), prefix, start_revision or 0, wait)

    # ---- leases, locks and elections (raftkv/concurrency.py) ---------------------------

    def grant(self, ttl: float, *, timeout: float | None = None) -> int:
        """A new lease of `ttl` seconds (at least 0.001); its id. The leader times it:
        unless kept alive (`keepalive`) within each `ttl`, it expires and every key put
        with it is deleted. A new leader restarts every lease at its full TTL, so a
        failover never shortens one. `lease(ttl)` keeps one alive for you."""
        req = ClientRequest(0, ReqOp.LEASE_GRANT, ttl_ms=_ttl_ms(ttl))
        lid = self._write(req, timeout, False)
        if type(lid) is not int or lid < 1:
            raise RaftKVError(f"LEASE_GRANT answered {lid!r:.40}, not a lease id")
        return lid

    def revoke(self, lease: int | Lease, *, timeout: float | None = None) -> bool:
        """End a lease now and delete the keys it holds; False if it was gone already."""
        return bool(self._write(ClientRequest(0, ReqOp.LEASE_REVOKE, lease=lease_id(lease)),
                                timeout, False))

    def keepalive(self, lease: int | Lease, *, timeout: float | None = None) -> float:
        """Restart the lease's TTL on the leader's clock; the TTL, in seconds. Raises
        LeaseNotFound once it expired (or was revoked): too late, its keys are gone or
        going."""
        req = ClientRequest(0, ReqOp.LEASE_KEEPALIVE, lease=lease_id(lease))
        ttl_ms = self._read(req, timeout).value
        if type(ttl_ms) is not int:
            raise RaftKVError(f"LEASE_KEEPALIVE answered {ttl_ms!r:.40}, not a TTL")
        return ttl_ms / 1000

    def lease_info(self, lease: int | Lease, *, timeout: float | None = None) -> LeaseInfo:
        """The lease's TTL, the seconds left of it on the leader's clock, and the keys it
        holds. Raises LeaseNotFound if it is gone."""
        req = ClientRequest(0, ReqOp.LEASE_INFO, lease=lease_id(lease))
        raw = self._read(req, timeout).value
        if (type(raw) is not list or len(raw) != 3 or type(raw[0]) is not int
                or type(raw[1]) is not int or type(raw[2]) is not list):
            raise RaftKVError(f"LEASE_INFO answered {raw!r:.60}")
        keys = [k.decode() if self.decode else k for k in raw[2]]
        return LeaseInfo(lease_id(lease), raw[0] / 1000, raw[1] / 1000, keys)

    def lease(self, ttl: float, *, keepalive: bool = True) -> Lease:
        """Grant a lease of `ttl` seconds and, with `keepalive`, keep it alive from a
        background thread (every ttl/3) until `close()` or the end of a `with` block,
        which revoke it. See `raftkv.concurrency.Lease`."""
        from raftkv.concurrency import Lease

        return Lease(self, ttl, keepalive=keepalive)

    def lock(self, name: Key, ttl: float = 10.0) -> Lock:
        """A distributed lock (etcd's mutex: raftkv.concurrency.Lock); acquire it with
        `with kv.lock("jobs"):` or `.acquire(timeout=)`. Held on a lease of `ttl`
        seconds kept alive meanwhile: a holder that dies releases it within `ttl`. Its
        `revision` is a fencing token: it grows with each holder."""
        from raftkv.concurrency import Lock

        return Lock(self, name, ttl)

    def election(self, name: Key, ttl: float = 10.0) -> Election:
        """A leader election (etcd's: raftkv.concurrency.Election): `campaign(value)`,
        `leader()`, `observe()`, `resign()`."""
        from raftkv.concurrency import Election

        return Election(self, name, ttl)

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

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<raftkv.Client {list(self.addresses)} {state}>"

    # ---- requests ------------------------------------------------------------------

    def _budget(self, timeout: float | None) -> float:
        if timeout is None:
            return self.timeout
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, not {timeout!r}")
        return float(timeout)

    def _read(self, req: ClientRequest, timeout: float | None) -> ClientReply:
        budget = self._budget(timeout)
        reply, _ = self._send(req, time.monotonic() + budget, budget, write=False)
        if reply.code != _OK:
            raise self._refused(req, reply)
        return reply

    def _write(self, req: ClientRequest, timeout: float | None, at_most_once: bool) -> Any:
        budget = self._budget(timeout)
        deadline = time.monotonic() + budget
        if at_most_once:
            req.client_id = req.seq = 0
            reply, _ = self._send(req, deadline, budget, write=True, once=True)
            if reply.code != _OK:
                raise self._refused(req, reply)
            return reply.value
        session: _Session | None = self._take_session(deadline, budget)
        try:
            while True:
                session.seq += 1
                req.client_id = session.client_id
                req.seq = session.seq
                reply, ambiguous = self._send(req, deadline, budget, write=True)
                if reply.code == _OK:
                    return reply.value
                if reply.code == ReplyCode.QUOTA_EXCEEDED and ambiguous:
                    raise Timeout(
                        f"{req.op.name} of client {req.client_id} seq {req.seq}: refused "
                        f"for the quota after an unanswered attempt, which may or may not "
                        f"have been applied ({reply.value})")
                if reply.code != ReplyCode.SESSION_EXPIRED:
                    raise self._refused(req, reply)
                expired, session = session.client_id, None
                if ambiguous:
                    raise SessionExpired(
                        f"{req.op.name} of client {expired} seq {req.seq}: the session "
                        "expired while the write was being retried after an unanswered "
                        "attempt; the write may or may not have been applied"
                    )
                # The only delivery was refused, so nothing was applied: start over.
                session = self._take_session(deadline, budget)
        finally:
            if session is not None:
                with self._sessions_lock:
                    self._sessions.append(session)

    def _take_session(self, deadline: float, budget: float) -> _Session:
        with self._sessions_lock:
            if self._sessions:
                return self._sessions.pop()
        # An unanswered OPEN_SESSION may still open a session nobody uses; the server
        # evicts it in time, so it is retried like a read.
        req = ClientRequest(0, ReqOp.OPEN_SESSION)
        reply, _ = self._send(req, deadline, budget, write=False)
        if reply.code != _OK:
            raise self._refused(req, reply)
        client_id = reply.value
        if type(client_id) is not int or client_id < 1:
            raise RaftKVError(f"OPEN_SESSION answered client id {client_id!r:.40}")
        return _Session(client_id)

    def _refused(self, req: ClientRequest, reply: ClientReply) -> RaftKVError:
        if reply.code == ReplyCode.BAD_REQUEST:
            return BadRequest(str(reply.value))
        if reply.code == ReplyCode.QUOTA_EXCEEDED:
            return QuotaExceeded(str(reply.value))
        if reply.code == ReplyCode.FORBIDDEN:
            return Forbidden(str(reply.value))
        if reply.code == ReplyCode.NOT_FOUND:
            return LeaseNotFound(str(reply.value))
        return RaftKVError(f"{req.op.name} answered {reply.code.name}: {reply.value}")

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
        to each attempt's timeout."""
        if self._closed:
            raise RaftKVError("the client is closed")
        io = self._io
        pending = io.pending
        n = len(self.addresses)
        q: queue.SimpleQueue[_Message] = queue.SimpleQueue()
        request_ids: list[int] = []
        tried: dict[str, str] = {}  # address -> what its last attempt got
        ambiguous = False
        # A stale read may be served by any node: spread them, and learn nothing about
        # the leader from their answers.
        stale = req.op == ReqOp.GET_STALE
        target = next(self._spread) % n if stale else self._leader
        attempt_timeout = self.attempt_timeout + wait
        max_attempt_timeout = max(MAX_ATTEMPT_TIMEOUT + wait, attempt_timeout)
        pause = 0.0
        misses = 0
        try:
            while True:
                now = time.monotonic()
                if now >= deadline or io.closing:
                    raise self._gave_up(req, budget, tried, write and ambiguous, io.closing)
                rid = next(self._request_ids)
                req.request_id = rid
                frame = encode_request(req)
                pending[rid] = q
                request_ids.append(rid)
                io.submit(target, rid, frame, q)
                addr = self.addresses[target]
                msg = _wait(q, rid, deadline if once else min(now + attempt_timeout, deadline))
                if msg is None:
                    ambiguous = True
                    tried[addr] = f"no reply in {attempt_timeout:.3g}s"
                    attempt_timeout = min(attempt_timeout * 1.5, max_attempt_timeout)
                    target = (target + 1) % n
                elif msg is _CLOSED:
                    continue  # the loop's top raises
                else:
                    _, index, reply = msg
                    if reply is None:
                        tried[addr] = "not connected"
                        if not ambiguous and len(io.handshake_failures) == n:
                            # ZeroMQ does not retry a refused handshake: nobody can serve.
                            raise self._gave_up(req, budget, tried, False, False)
                        target = (target + 1) % n
                    elif reply.code in _TERMINAL:
                        if reply.code == _OK and not stale:
                            self._leader = index
                        return reply, ambiguous
                    else:
                        hint = reply.leader_hint
                        hinted = self._index_of_node.get(hint)
                        if reply.code == ReplyCode.UNAVAILABLE:
                            ambiguous = True
                            tried[addr] = f"UNAVAILABLE: {reply.value}"
                            if once:
                                raise Timeout(
                                    f"{req.op.name} (at most once): {addr} answered "
                                    f"UNAVAILABLE ({reply.value}) after the write was sent; "
                                    "it may or may not have been applied, and is not resent")
                        elif hint and hinted is None:
                            tried[addr] = (
                                f"NOT_LEADER: leader is node {hint}, whose address this "
                                "client was not given (pass every node's address)"
                            )
                        else:
                            tried[addr] = f"NOT_LEADER (leader: {hint or 'unknown'})"
                        if hinted is not None and hinted != target:
                            target = self._leader = hinted
                        else:
                            target = (target + 1) % n
                misses += 1
                if misses % n == 0:
                    # A whole round without an answer: give an election time to finish.
                    # A late answer to an earlier attempt still ends the wait.
                    pause = min(max(pause * 2, FIRST_PAUSE), MAX_PAUSE)
                    msg = _wait(q, -1, min(time.monotonic() + pause, deadline))
                    if msg is not None and msg is not _CLOSED and msg[2] is not None:
                        if msg[2].code == _OK and not stale:
                            self._leader = msg[1]
                        return msg[2], ambiguous
        finally:
            for rid in request_ids:
                pending.pop(rid, None)

    def _gave_up(
        self,
        req: ClientRequest,
        budget: float,
        tried: dict[str, str],
        ambiguous: bool,
        closed: bool,
    ) -> RaftKVError:
        where = "; ".join(f"{a}: {what}" for a, what in tried.items()) or "none reached"
        what = f"{req.op.name}" + (f" (client {req.client_id} seq {req.seq})" if req.seq else "")
        if ambiguous:
            why = "the client was closed" if closed else f"no answer within {budget:.3g}s"
            return Timeout(
                f"{what}: {why} after the write was sent; it may or may not have been "
                f"applied. Tried {where}"
            )
        if closed:
            return RaftKVError(f"{what}: the client was closed. Tried {where}")
        refused = self._io.handshake_failures
        if refused:
            hint = ("pass credentials= or set RAFTKV_CREDENTIALS to the cluster's dir"
                    if self.credentials is None else
                    "check that these keys are the cluster's (its DIR/keys)")
            at: dict[str, list[str]] = {}
            for i, reason in sorted(refused.items()):
                at.setdefault(reason, []).append(self.addresses[i])
            why = "; ".join(f"{r} at {', '.join(a)}" for r, a in at.items())
            return AuthenticationFailed(
                f"{what}: the cluster refused this client's connection ({why}); {hint}")
        return Unavailable(
            f"{what}: no node served it within {budget:.3g}s; it had no effect. Tried {where}"
        )


def _ttl_ms(ttl: float) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0.001 <= ttl <= MAX_TTL:
        raise ValueError(f"a lease's ttl is in seconds, in [0.001, {MAX_TTL:g}], not {ttl!r:.40}")
    return round(ttl * 1000)


class LeaseInfo(NamedTuple):
    """What `Client.lease_info` answers: the TTL and what is left of it on the leader's
    clock (seconds), and the keys the lease holds."""

    id: int
    ttl: float
    remaining: float
    keys: list[bytes] | list[str]


def _wait(q: queue.SimpleQueue[_Message], rid: int, until: float) -> _Message | None:
    """The next message that decides attempt `rid`: its own reply (or send failure), a
    final answer to any earlier attempt, or _CLOSED. None if `until` passes first."""
    while True:
        remaining = until - time.monotonic()
        if remaining <= 0:
            return None
        try:
            msg = q.get(timeout=remaining)
        except queue.Empty:
            return None
        reply = msg[2]
        if msg[0] == rid or msg is _CLOSED or (reply is not None and reply.code in _TERMINAL):
            return msg


class Watch:
    """An iterator of the events a `Client.watch` asked for; `close` (or leaving its
    `with` block) ends it. Not thread-safe: one consumer."""

    def __init__(self, client: Client, key: bytes, prefix: bool, start: int,
                 wait: float) -> None:
        self._client = client
        self.key, self.prefix, self.wait = key, prefix, wait
        # The revision the next request asks from (0: the node's next write).
        self.next_revision = start
        self._buffer: deque[Event] = deque()
        self._closed = False

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
        req = ClientRequest(0, ReqOp.WATCH, key=self.key, prefix=self.prefix,
                            revision=self.next_revision, wait_ms=round(self.wait * 1000))
        try:
            reply = self._client._watch_poll(req, self.wait)
        except Unavailable:
            return []
        if reply.code == ReplyCode.COMPACTED:
            raise Compacted(f"revision {self.next_revision} is no longer kept; the oldest "
                            f"is {reply.value}", reply.value if type(reply.value) is int else 0)
        if reply.code != _OK:
            raise self._client._refused(req, reply)
        try:
            next_revision, events = _parse_watch(reply.value, self._client.decode)
        except ValueError as e:
            raise RaftKVError(f"WATCH answered {e}") from None
        # Never repeat one: a node answers from the revision asked, but is not trusted to.
        fresh = [e for e in events if e.revision >= self.next_revision]
        self.next_revision = max(self.next_revision, next_revision)
        self._buffer.extend(fresh)
        return fresh

    def close(self) -> None:
        """End the iteration (after the events already received)."""
        self._closed = True

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse_watch(raw: object, decode: bool) -> tuple[int, list[Event]]:
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
