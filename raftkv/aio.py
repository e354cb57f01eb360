"""The asyncio client: `raftkv.aio.Client`, the methods of `raftkv.Client` as coroutines.

    from raftkv import aio
    async with aio.Client("tcp://127.0.0.1:7700") as kv:  # or aio.Client.from_url(...)
        await kv.put("user:1", "alice")
        await kv.get("user:1")                          # b"alice"
        async for pair in kv.scan_iter("user:"):
            ...
        async with kv.watch("user:", prefix=True) as w:
            async for event in w:                       # raftkv.Event
                ...

Everything but the waiting is raftkv.client's, shared through raftkv._requests:
addressing, the retries and their `Retry` policy under the one deadline, the errors
(the same classes, raised in the same cases with the same words), sessions and
exactly-once writes, `at_most_once`, credentials, and the watch's resume rule (never a
missed or repeated event; `Compacted`). Read raftkv.client's module docstring for them.

Event loop. A client belongs to the event loop that first uses it (its reader tasks
run there) and is not thread-safe; many coroutines of that loop may have requests in
flight at once. It holds one DEALER per address, on a `zmq.asyncio` context; one reader
task per DEALER routes each reply (a REPS batch is split) by request id to the queue of
the request waiting for it, so a late reply to an earlier attempt still completes its
request. A request is sent straight from its coroutine, one frame per request (no REQS
batching). Close it with `aclose()` or `async with`: a client left open leaves its
reader tasks pending when the loop ends.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from raftkv import _requests as rq
from raftkv._requests import (
    DEFAULT_TIMEOUT,
    DEFAULT_WATCH_WAIT,
    HANDSHAKE_EVENTS,
    HWM,
    OK,
    TERMINAL,
    LeaseInfo,
    LeaseList,
)
from raftkv.errors import RaftKVError, Unavailable
from raftkv.kv import KeyValue
from raftkv.retry import Retry
from raftkv.security import Credentials
from raftkv.transport import connect_dealer
from raftkv.txn import Compare, Key, TxnOp, TxnResult, Value
from raftkv.watch import Event
from raftkv.wire import (
    ClientReply,
    ClientRequest,
    ReqOp,
    encode_request,
)

__all__ = ["Client", "Watch"]

# What a reader task hands a waiting request: (request_id, address index, reply).
_Message = tuple[int, int, ClientReply | None]
_CLOSED: _Message = (-1, -1, None)  # the client closed


class Client(rq.ClientCore):
    """An asyncio connection to a raftkv cluster: the arguments of `raftkv.Client`
    (see it and raftkv.aio), but `context`, if given, is a `zmq.asyncio.Context` (not
    terminated by `aclose`). Construct it anywhere; use it in one event loop."""

    _NAME = "raftkv.aio.Client"

    def __init__(
        self,
        addresses: str | Sequence[str] | Mapping[int, str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        attempt_timeout: float | None = None,
        retry: Retry | None = None,
        decode: bool = False,
        context: zmq.asyncio.Context | None = None,
        credentials: Credentials | str | os.PathLike[str] | None = None,
    ) -> None:
        self._setup(addresses, timeout, attempt_timeout, retry, decode, credentials)
        addrs = list(self.addresses)
        self.stats = {"malformed": 0, "unmatched": 0}
        self._sessions = rq.SessionPool()
        # Address index -> why its last handshake failed; gone once one succeeds.
        self._handshake_failures: dict[int, str] = {}
        # request id -> the queue of the request that sent it; the request removes its
        # own ids when it ends, so a reply to none of them is counted unmatched.
        self._pending: dict[int, asyncio.Queue[_Message]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._own_context = context is None
        self._context = zmq.asyncio.Context() if context is None else context
        self._socks: list[zmq.asyncio.Socket] = []
        self._monitors: list[zmq.asyncio.Socket] = []
        try:
            for addr in addrs:
                sock = connect_dealer(self._context, addr, hwm=HWM,
                                      credentials=self.credentials)
                self._socks.append(sock)
                self._monitors.append(sock.get_monitor_socket(HANDSHAKE_EVENTS))
        except BaseException as e:
            self._close_sockets()
            raise ValueError(f"cannot connect to {addrs}: {e}") from e
        # Until then, a send to a socket still connecting waits for it (the sockets
        # connect from now on, loop or not); after it, no connection means a node down.
        self._grace_end = time.monotonic() + self._connect_grace

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Client:
        """A client for a `raftkv://` URL, as `raftkv.Client.from_url`."""
        addresses, kw = rq.parse_url(url, kwargs)
        return cls(addresses, **kw)

    # ---- public API: raftkv.Client's, awaited ------------------------------------

    async def put(self, key: Key, value: Value, *, lease: int | None = None,
                  timeout: float | None = None, at_most_once: bool = False) -> int:
        """As `raftkv.Client.put`: the write's revision (`lease`: an id from `grant`)."""
        req = rq.put_request(key, value, lease)
        return rq.parse_revision(await self._write(req, timeout, at_most_once))

    async def grant(self, ttl: float, *, timeout: float | None = None) -> int:
        """As `raftkv.Client.grant`: a new lease's id."""
        return rq.parse_grant(await self._write(rq.grant_request(ttl), timeout, False))

    async def revoke(self, lease: int, *, timeout: float | None = None) -> bool:
        """As `raftkv.Client.revoke`."""
        req = rq.lease_request(ReqOp.LEASE_REVOKE, lease)
        return bool(await self._write(req, timeout, False))

    async def keepalive(self, lease: int, *, timeout: float | None = None) -> float:
        """As `raftkv.Client.keepalive`: the TTL restarted, in seconds."""
        reply = await self._read(rq.lease_request(ReqOp.LEASE_KEEPALIVE, lease), timeout)
        return rq.parse_keepalive(reply.value)

    async def lease_info(self, lease: int, *, timeout: float | None = None) -> LeaseInfo:
        """As `raftkv.Client.lease_info`."""
        req = rq.lease_request(ReqOp.LEASE_INFO, lease)
        reply = await self._read(req, timeout)
        return rq.parse_lease_info(req.lease, reply.value, self.decode)

    async def leases(self, *, timeout: float | None = None) -> LeaseList:
        """As `raftkv.Client.leases`."""
        reply = await self._read(ClientRequest(0, ReqOp.LEASE_LIST), timeout)
        return rq.parse_lease_list(reply.value, self.decode)

    async def get_kv(self, key: Key, *, timeout: float | None = None) -> KeyValue | None:
        """As `raftkv.Client.get_kv`."""
        reply = await self._read(rq.get_kv_request(key), timeout)
        return rq.parse_get_kv(reply.value, self.decode)

    async def oldest(self, prefix: Key, *, timeout: float | None = None
                     ) -> tuple[Any, KeyValue] | None:
        """As `raftkv.Client.oldest`."""
        reply = await self._read(rq.oldest_request(prefix), timeout)
        return rq.parse_oldest_reply(reply.value, self.decode)

    async def txn(self, compare: Sequence[Compare] = (), success: Sequence[TxnOp] = (),
                  failure: Sequence[TxnOp] = (), *, timeout: float | None = None,
                  at_most_once: bool = False) -> TxnResult:
        """As `raftkv.Client.txn`."""
        req, success, failure = rq.txn_request(compare, success, failure)
        raw = await self._write(req, timeout, at_most_once)
        return rq.parse_txn(raw, success, failure, self.decode)

    async def get(self, key: Key, *, consistency: str = "linearizable",
                  timeout: float | None = None) -> bytes | str | None:
        """As `raftkv.Client.get`."""
        reply = await self._read(rq.get_request(key, consistency), timeout)
        return rq.parse_get(reply.value, self.decode)

    async def cas(self, key: Key, expected: Value | None, new: Value, *,
                  mod_revision: int | None = None, timeout: float | None = None,
                  at_most_once: bool = False) -> bool:
        """As `raftkv.Client.cas` (with `mod_revision`, a txn)."""
        if mod_revision is not None:
            compare, success = rq.cas_on_revision(key, expected, new, mod_revision)
            result = await self.txn(compare, success, timeout=timeout,
                                    at_most_once=at_most_once)
            return result.succeeded
        return bool(await self._write(rq.cas_request(key, expected, new), timeout,
                                      at_most_once))

    async def delete(self, key: Key, *, timeout: float | None = None,
                     at_most_once: bool = False) -> bool:
        """As `raftkv.Client.delete`: True if the key existed."""
        return bool(await self._write(rq.delete_request(key), timeout, at_most_once))

    async def scan(self, prefix: Key = b"", limit: int = 100, *, start: Key | None = None,
                   revisions: bool = False, timeout: float | None = None,
                   ) -> list[tuple[Any, Any]]:
        """As `raftkv.Client.scan`."""
        req = rq.scan_request(prefix, limit, start, revisions)
        return rq.parse_scan((await self._read(req, timeout)).value, self.decode, revisions)

    async def scan_iter(self, prefix: Key = b"", *, start: Key | None = None,
                        page: int = 1000, revisions: bool = False,
                        timeout: float | None = None,
                        ) -> AsyncIterator[tuple[Any, Any]]:
        """As `raftkv.Client.scan_iter`, an async iterator: each page is a read."""
        cursor: bytes | None = rq.first_cursor(start, page)
        while cursor is not None:
            pairs = await self.scan(prefix, page, start=cursor, revisions=revisions,
                                    timeout=timeout)
            cursor = rq.next_cursor(pairs, cursor, page)
            for pair in pairs:
                yield pair

    def watch(self, key: Key, *, prefix: bool = False, start_revision: int | None = None,
              wait: float = DEFAULT_WATCH_WAIT) -> Watch:
        """As `raftkv.Client.watch`, an async iterator of `Event`s (`async for`)."""
        start = rq.check_watch(start_revision, wait)
        return Watch(self, rq.to_bytes(key, "key"), prefix, start, wait)

    async def aclose(self) -> None:
        """Stop the reader tasks and close the sockets. Requests in flight fail;
        later ones raise RaftKVError. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for q in set(self._pending.values()):
            q.put_nowait(_CLOSED)
        self._close_sockets()

    async def __aenter__(self) -> Client:
        self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- the sockets ---------------------------------------------------------------

    def _close_sockets(self) -> None:
        for s in self._socks:
            s.disable_monitor()
            s.close(linger=0)
        for m in self._monitors:
            m.close(linger=0)
        if self._own_context:
            self._context.term()

    def _start(self) -> None:
        """Start the reader tasks in the running loop, once; refuse another loop."""
        if self._closed:
            raise RaftKVError("the client is closed")
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None:
            raise RaftKVError("a raftkv.aio.Client serves only the event loop it started in")
        self._loop = loop
        for i, (sock, monitor) in enumerate(zip(self._socks, self._monitors, strict=True)):
            self._tasks.append(loop.create_task(self._read_replies(i, sock)))
            self._tasks.append(loop.create_task(self._read_monitor(i, monitor)))

    async def _read_replies(self, i: int, sock: zmq.asyncio.Socket) -> None:
        while True:
            rq.route(await sock.recv_multipart(), i, self._pending, self.stats)

    async def _read_monitor(self, i: int, monitor: zmq.asyncio.Socket) -> None:
        while True:
            event = (await recv_monitor_message(monitor))["event"]  # type: ignore[misc]
            rq.note_handshake(self._handshake_failures, i, event)

    async def _submit(self, i: int, frame: bytes) -> bool:
        """Queue `frame` on socket `i`; False if it has no connection. During the
        connect grace a send may wait for the socket to connect; after it, never."""
        sending = self._socks[i].send(frame, zmq.NOBLOCK)
        if not sending.done():
            # pyzmq queues even a NOBLOCK send behind a send already waiting on the
            # socket (a grace send), and then waits for the socket to take it: with
            # IMMEDIATE and the node down, for ever. So every wait is bounded by the
            # grace, and asyncio.wait (not wait_for) is used because closing the
            # socket cancels the send's future, which must not cancel this task.
            try:
                await asyncio.wait({sending}, timeout=max(0.0, self._grace_end - time.monotonic()))
            finally:
                sending.cancel()  # no-op once done; a send left queued would go out later
        elif isinstance(sending.exception(), zmq.Again):
            left = self._grace_end - time.monotonic()
            if left <= 0:
                return False
            sending = self._socks[i].send(frame)  # waits for the connection
            try:
                await asyncio.wait({sending}, timeout=left)
            finally:
                sending.cancel()
        return sending.done() and not sending.cancelled() and sending.exception() is None

    # ---- requests ------------------------------------------------------------------

    async def _read(self, req: ClientRequest, timeout: float | None) -> ClientReply:
        budget = rq.budget(self.timeout, timeout)
        reply, _ = await self._send(req, time.monotonic() + budget, budget, write=False)
        if reply.code != OK:
            raise rq.refused(req, reply)
        return reply

    async def _write(self, req: ClientRequest, timeout: float | None,
                     at_most_once: bool) -> Any:
        budget = rq.budget(self.timeout, timeout)
        deadline = time.monotonic() + budget
        steps = rq.write_steps(req, self._sessions, at_most_once)
        try:
            step = next(steps)
            while True:
                sent, write, once = step
                answer = await self._send(sent, deadline, budget, write=write, once=once)
                step = steps.send(answer)
        except StopIteration as done:
            return done.value
        finally:
            steps.close()

    async def _watch_poll(self, req: ClientRequest, wait: float) -> ClientReply:
        budget = self.timeout + wait
        reply, _ = await self._send(req, time.monotonic() + budget, budget, write=False,
                                    wait=wait)
        return reply

    async def _send(
        self, req: ClientRequest, deadline: float, budget: float, *, write: bool,
        once: bool = False, wait: float = 0.0,
    ) -> tuple[ClientReply, bool]:
        """As raftkv.Client._send: deliver `req` until a final answer or the deadline,
        by raftkv._requests.Delivery's rules; (that answer, whether an attempt went
        unanswered)."""
        self._start()
        d = self._delivery(req, deadline, budget, self._handshake_failures, write=write,
                           once=once, wait=wait)
        q: asyncio.Queue[_Message] = asyncio.Queue()
        request_ids: list[int] = []
        steps = rq.deliver(d)
        try:
            step, until = next(steps)
            while True:
                if step is rq.PAUSE:
                    outcome = await _wait(q, -1, until)
                elif self._closed:
                    outcome = rq.CLOSED
                else:
                    rid = next(self._request_ids)
                    req.request_id = rid
                    self._pending[rid] = q
                    request_ids.append(rid)
                    if await self._submit(d.target, encode_request(req)):
                        outcome = await _wait(q, rid, until)
                    else:
                        outcome = rq.NOT_CONNECTED
                step, until = steps.send(outcome)
        except StopIteration as done:
            return done.value
        finally:
            for rid in request_ids:
                self._pending.pop(rid, None)


async def _wait(q: asyncio.Queue[_Message], rid: int, until: float) -> rq.Outcome:
    """What decides attempt `rid` (see raftkv._requests.ATTEMPT): its own reply, a
    final answer to any earlier attempt, or the client's close. None if `until` passes
    first."""
    while True:
        remaining = until - time.monotonic()
        if remaining <= 0:
            return None
        try:
            # asyncio.timeout, not wait_for: wait_for wraps the get in a Task per wait.
            async with asyncio.timeout(remaining):
                request_id, index, reply = await q.get()
        except TimeoutError:
            return None
        if reply is None:
            return rq.CLOSED
        if request_id == rid or reply.code in TERMINAL:
            return index, reply


class Watch(rq.WatchCursor):
    """An async iterator of the events an `aio.Client.watch` asked for (`async for`);
    `close` (or leaving its `async with` block) ends it. One consumer."""

    def __init__(self, client: Client, key: bytes, prefix: bool, start: int,
                 wait: float) -> None:
        super().__init__(key, prefix, start, wait)
        self._client = client

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Event:
        while not self._buffer:
            if self._closed or self._client._closed:
                raise StopAsyncIteration
            await self.poll()
        return self._buffer.popleft()

    async def poll(self) -> list[Event]:
        """As `raftkv.Watch.poll`: one request's new events ([] if no node answered)."""
        req = self._request()
        try:
            reply = await self._client._watch_poll(req, self.wait)
        except Unavailable:
            return []
        return self._absorb(req, reply, self._client.decode)

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
