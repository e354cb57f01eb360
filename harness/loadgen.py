"""The benchmark's load generator: closed-loop requests in the wire protocol, and the
arithmetic of its figures.

`raftkv bench` (harness/bench.py) starts the cluster, spawns `load_process` in as many
processes as keep the requested number of requests in flight, and summarises what they
measured. Each process pipelines its share of requests (`Pipeline`): it sends its next
request as soon as one is answered, so the Python client's retry machinery does not hide
the server's speed. Straight to nodes it packs the requests it sends at one moment into
one REQS frame and takes REPS frames back (raftkv.wire: batches), as a pipelining client
would, the same through the controller, which forwards a REQS frame whole to the leader
and passes the REPS back unopened. Writes carry one session per request in flight (OPEN_SESSION), as
`raftkv.Client` does: a session carries one write at a time, its next write the next
sequence number. The store keeps each session's last sequence number only, so a write
re-sent after the writes behind it were applied would be STALE_REQUEST on a shared
session; on its own session it is answered with its saved reply.

Straight to nodes, a process follows the leader as `raftkv.Client` does: a NOT_LEADER
answer sends the request again, unchanged, to the node its `leader_hint` names (or, with
no usable hint, to the next node), and a node that leaves a request unanswered for
NO_REPLY_S is presumed gone, its requests sent to the next node. Unchanged means the same
request id and, for a write, the same session and sequence number, so the store applies
it at most once (kv.py). A re-routed request that is then answered OK is an OK, its
latency taken from its first send; the re-routes are counted apart. Any other answer
than OK is a failure: counted by kind, never sent again, so a phase measures what the
cluster did. Failures are never throughput: every figure, per interval and in sum,
counts OK answers and failures apart.

`python -m harness.loadgen [OPTIONS]` is `raftkv bench [OPTIONS]`.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from raftkv import wire
from raftkv.client import DEFAULT_ATTEMPT_TIMEOUT, FIRST_PAUSE, MAX_PAUSE
from raftkv.security import present
from raftkv.wire import ClientRequest, ReplyCode, ReqOp

STALL_S = 5.0  # opening a session, filling the key space: no answer this long is a failure
DRAIN_S = 5.0  # after the window, how long to wait for the answers still outstanding
# A request unanswered this long presumes its node gone; after each round of re-routes
# with no OK, re-routed requests wait a pause, doubling: raftkv.Client's timings.
NO_REPLY_S = DEFAULT_ATTEMPT_TIMEOUT
FIRST_PAUSE_S, MAX_PAUSE_S = FIRST_PAUSE, MAX_PAUSE
TIMELINE_S = 0.5  # the interval of the per-interval figures
MIXES = ("put", "get", "mixed:R/W")
# Bound once: on Python 3.11 each `ReqOp.PUT` is an attribute lookup through the enum's
# class (~65 ns), and the generator's own time per request delays every round (see drive).
_PUT, _GET, _OK = ReqOp.PUT, ReqOp.GET, ReplyCode.OK
_NOT_LEADER = ReplyCode.NOT_LEADER
# An outstanding request: (first send ns, frame, index of the target its latest copy went
# to or -1 while it waits out a pause, latest send ns).
_Entry = tuple[int, bytes, int, int]


# -- figures ---------------------------------------------------------------------------------

@dataclass(slots=True)
class LatencySummary:
    """Latencies in milliseconds; percentiles by nearest rank."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    p999: float
    max: float


def percentile(sorted_values: list[float] | array, q: float) -> float:
    """The nearest-rank `q`-quantile (0 < q <= 1) of ascending `sorted_values`; 0.0 if
    there are none."""
    n = len(sorted_values)
    if n == 0:
        return 0.0
    return sorted_values[min(n - 1, max(0, math.ceil(q * n) - 1))]


def summarize(latencies_ms: list[float] | array) -> LatencySummary:
    """The summary of unsorted latencies, rounded to microseconds."""
    ordered = sorted(latencies_ms)
    if not ordered:
        return LatencySummary(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    return LatencySummary(
        len(ordered), round(sum(ordered) / len(ordered), 3),
        *(round(percentile(ordered, q), 3) for q in (0.5, 0.9, 0.99, 0.999)),
        round(ordered[-1], 3))


def parse_mix(mix: str) -> int:
    """The percentage of gets in `mix`: "put" (0), "get" (100) or "mixed:R/W", R% gets and
    W% puts with R + W = 100. Raises ValueError naming the accepted forms."""
    if mix == "put":
        return 0
    if mix == "get":
        return 100
    kind, _, ratio = mix.partition(":")
    reads, _, writes = ratio.partition("/")
    if kind == "mixed" and reads.isdigit() and writes.isdigit() \
            and int(reads) + int(writes) == 100:
        return int(reads)
    raise ValueError(f"mix {mix!r}: expected put, get or mixed:R/W with R + W = 100 "
                     "(R% gets, W% puts), e.g. mixed:90/10")


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` as `parts` integers that differ by at most one, larger first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def intervals(window_ns: int, interval_ns: int) -> int:
    """How many intervals of `interval_ns` cover a window of `window_ns` (the last one may
    be shorter)."""
    return max(1, -(-window_ns // interval_ns))


def per_second(counts: Sequence[int], interval_s: float, window_s: float) -> list[float]:
    """Counts per interval of `interval_s` over a window of `window_s` as rates per
    second; the last interval is what is left of the window."""
    rates = []
    for i, count in enumerate(counts):
        length = min(interval_s, window_s - i * interval_s)
        rates.append(round(count / length, 1) if length > 0 else 0.0)
    return rates


def add_counts(total: array, counts: Sequence[int]) -> None:
    """Add `counts` into `total` element by element, growing `total` as needed."""
    total.extend([0] * max(0, len(counts) - len(total)))
    for i, count in enumerate(counts):
        total[i] += count


# -- the load ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Route:
    """Where a load process sends. With `node_ids` (each address's node id, as NOT_LEADER
    hints name them) the addresses are the nodes', `first` the one sent to first, and the
    load follows the leader among them; without, `addresses` is one address that finds
    the leader itself (the controller)."""

    addresses: tuple[str, ...]
    node_ids: tuple[int, ...] = ()
    first: int = 0


@dataclass(frozen=True, slots=True)
class Workload:
    """What one load process does: `in_flight` requests outstanding along `route`."""

    route: Route
    in_flight: int
    get_percent: int = 0  # 0: puts only, 100: gets only
    stale: bool = False  # GET_STALE instead of linearizable GET
    value_size: int = 100
    key_space: int = 10_000
    batch: bool = False  # REQS/REPS frames (nodes and the controller both take them)


def bench_keys(key_space: int) -> list[bytes]:
    return [f"bench-key-{i:07d}".encode() for i in range(key_space)]


def bench_value(value_size: int) -> bytes:
    return os.urandom(value_size // 2 + 1).hex()[:value_size].encode()


Answer = tuple[int, int, wire.ClientReply]  # (first send ns, received ns, reply)


class Pipeline:
    """Requests in flight along a `Route`, on one DEALER per address, all sent to one
    address at a time: `target`, an index into the route's addresses.

    With `batch`, `send` queues the frame and the next `receive` (or `flush`) sends
    everything queued as one REQS frame.

    Following the leader (a route of nodes). A NOT_LEADER from the node that holds a
    request's latest copy moves `target`, if it was that node, to the node the hint
    names, or to the next node when the hint is missing or names the refusing node or
    one presumed gone; the request goes again, the same frame, to `target`. A request
    whose latest copy has waited `no_reply_s` presumes its node gone: if that is `target`,
    `target` moves to the next node, and every request at the silent node goes again to
    `target`. A node presumed gone is believed again once it answers anything. Each time
    `target` has moved as often as there are nodes with no OK in between, re-routed
    requests wait a pause (FIRST_PAUSE_S doubling up to MAX_PAUSE_S) so that an election
    is not hammered. An OK to any copy, from any node, answers its request; a refusal of
    a copy that is not the latest is ignored. `rerouted` counts the copies sent again,
    by cause ("NOT_LEADER", "no reply"), within `count_window` (ns)."""

    def __init__(self, ctx: zmq.Context, route: Route, batch: bool = False,
                 no_reply_s: float = NO_REPLY_S) -> None:
        self.socks: list[zmq.Socket] = []
        self.index_of: dict[zmq.Socket, int] = {}
        self.poller = zmq.Poller()
        for i, address in enumerate(route.addresses):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            present(sock)
            sock.connect(address)
            self.socks.append(sock)
            self.index_of[sock] = i
            self.poller.register(sock, zmq.POLLIN)
        self.node_index = {node_id: i for i, node_id in enumerate(route.node_ids)}
        self.follow = bool(route.node_ids)
        self.target = route.first
        self.batch = batch
        self.queued: list[bytes] = []
        self.queued_rids: list[int] = []  # the requests of `queued`, in the same order
        # Outstanding requests by request id, in the order of their latest send.
        self.out: dict[int, _Entry] = {}
        self.next_id = 1
        self.free_sessions: list[int] = []  # client ids with no write outstanding
        self.session_seq: dict[int, int] = {}  # client id -> its last seq
        self.put_session: dict[int, int] = {}  # an outstanding put's rid -> its client id
        self.no_reply_ns = int(no_reply_s * 1e9)
        self.gone = -1  # the node presumed gone, if any: its hints are not followed
        self.moves = 0  # moves of `target` since the last OK
        self.pause_ns = 0
        self.hold_until = 0  # ns: re-routed requests wait in `held` until then
        self.held: list[int] = []
        self.rerouted: Counter = Counter()
        self.count_window = (0, 2**63)

    def send(self, op: ReqOp, key: bytes = b"", value: bytes | None = None) -> None:
        rid = self.next_id
        self.next_id += 1
        if op == _PUT:
            cid = self.free_sessions.pop()  # IndexError: more puts than open_sessions
            seq = self.session_seq[cid] = self.session_seq[cid] + 1
            self.put_session[rid] = cid
            frame = wire.encode_put(rid, cid, seq, key, value)
        elif op == _GET:
            frame = wire.encode_get(rid, key)
        else:
            frame = wire.encode_request(ClientRequest(rid, op, key=key))
        now = time.monotonic_ns()
        target = self.target
        self.out[rid] = (now, frame, target, now)
        if self.batch:
            self.queued.append(frame)
            self.queued_rids.append(rid)
        else:
            self._put(target, frame)

    def _put(self, i: int, frame: bytes) -> None:
        # zmq.Again: the queue to a node that is down is full; the frame goes unanswered.
        with contextlib.suppress(zmq.Again):
            self.socks[i].send(frame, zmq.NOBLOCK)

    def flush(self) -> None:
        if self.queued:
            frames, self.queued = self.queued, []
            self.queued_rids.clear()
            self._put(self.target,
                      frames[0] if len(frames) == 1 else wire.encode_requests(frames))

    def receive(self, timeout_s: float) -> list[Answer]:
        """Send what is queued, then return every answer ready within `timeout_s`, as
        (first send ns, received ns, reply). Answers to no outstanding request, refusals
        of copies that are not the latest and NOT_LEADERs that re-route (see the class)
        are not returned; with no answer ready, it returns when a pause ends or a request
        has waited `no_reply_s`, having re-routed it."""
        out = self.out
        if self.follow and out:
            now = time.monotonic_ns()
            self._reroute_due(now)
            wait_ns = int(timeout_s * 1e9)
            if self.held:
                wait_ns = min(wait_ns, self.hold_until - now)
            elif out:
                wait_ns = min(wait_ns, next(iter(out.values()))[3] + self.no_reply_ns - now)
            wait_ms = max(0, -(-wait_ns // 1_000_000))
        else:
            wait_ms = int(timeout_s * 1000)
        self.flush()
        got: list[Answer] = []
        for sock, _ in self.poller.poll(wait_ms):
            i = self.index_of[sock]
            if i == self.gone:
                self.gone = -1
            while True:
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                now = time.monotonic_ns()
                for reply in wire.decode_replies(frame):
                    entry = out.get(reply.request_id)
                    if entry is None:
                        continue
                    if reply.code is _OK or not self.follow:
                        del out[reply.request_id]
                        got.append((entry[0], now, reply))
                    else:
                        self._refused(reply, entry, i, got, now)
        if got:
            put_session, free = self.put_session, self.free_sessions
            for _, _, reply in got:  # answered: its session carries the next write
                cid = put_session.pop(reply.request_id, None)
                if cid is not None:
                    free.append(cid)
            if self.moves and any(reply.code is _OK for _, _, reply in got):
                self.moves = self.pause_ns = 0
        return got

    def _refused(self, reply: wire.ClientReply, entry: _Entry, i: int, got: list[Answer],
                 now: int) -> None:
        """A reply other than OK from node `i` to request `reply.request_id`, whose
        `entry` is in `out`, where it stays (in its place: `out` is in send order) when
        the reply is to an earlier copy, the latest being elsewhere or held."""
        rid = reply.request_id
        if entry[2] != i:
            return
        del self.out[rid]
        if reply.code is not _NOT_LEADER:
            got.append((entry[0], now, reply))
            return
        if i == self.target:
            hinted = self.node_index.get(reply.leader_hint, -1)
            self._move(hinted if hinted not in (-1, i, self.gone) else self._next_after(i),
                       now)
        self._reroute(rid, entry, "NOT_LEADER", now)

    def _reroute_due(self, now: int) -> None:
        """Send the held requests once their pause is over, and re-route the requests at
        a node that left the oldest of them unanswered for `no_reply_s`."""
        out = self.out
        if self.held:
            if now < self.hold_until:
                return
            held, self.held = self.held, []
            for rid in held:
                entry = out.pop(rid, None)
                if entry is not None:
                    self._resend(rid, entry, now)
        if not out:
            return
        oldest = next(iter(out.values()))
        if now - oldest[3] < self.no_reply_ns:
            return
        silent = oldest[2]
        if silent == self.target:
            self.gone = silent
            self._move(self._next_after(silent), now)
        for rid in [rid for rid, entry in out.items() if entry[2] == silent]:
            self._reroute(rid, out.pop(rid), "no reply", now)

    def _next_after(self, i: int) -> int:
        n = len(self.socks)
        j = (i + 1) % n
        if j == self.gone and n > 2:
            j = (j + 1) % n
        return j

    def _move(self, target: int, now: int) -> None:
        self.target = target
        out = self.out
        for rid in self.queued_rids:  # they go out to the new target at the next flush
            entry = out.get(rid)  # None: answered meanwhile, by a late OK to a copy
            if entry is not None:
                out[rid] = (entry[0], entry[1], target, entry[3])
        self.moves += 1
        if self.moves % len(self.socks) == 0:
            self.pause_ns = min(max(2 * self.pause_ns, int(FIRST_PAUSE_S * 1e9)),
                                int(MAX_PAUSE_S * 1e9))
            self.hold_until = now + self.pause_ns

    def _reroute(self, rid: int, entry: _Entry, cause: str, now: int) -> None:
        """Send request `rid` again to `target`, or hold it while a pause lasts."""
        if self.count_window[0] <= now < self.count_window[1]:
            self.rerouted[cause] += 1
        if now < self.hold_until:
            self.out[rid] = (entry[0], entry[1], -1, now)
            self.held.append(rid)
        else:
            self._resend(rid, entry, now)

    def _resend(self, rid: int, entry: _Entry, now: int) -> None:
        target, frame = self.target, entry[1]
        self.out[rid] = (entry[0], frame, target, now)
        if self.batch:
            self.queued.append(frame)
            self.queued_rids.append(rid)
        else:
            self._put(target, frame)

    def open_sessions(self, count: int, timeout_s: float = STALL_S) -> None:
        """`count` sessions (OPEN_SESSION), so that as many puts can be outstanding, each
        with its own (client_id, seq). Raises RuntimeError if one is refused, or not all
        are answered within `timeout_s`."""
        for _ in range(count):
            self.send(ReqOp.OPEN_SESSION)
        deadline = time.monotonic() + timeout_s
        while len(self.free_sessions) < count and (left := deadline - time.monotonic()) > 0:
            for _, _, reply in self.receive(left):
                if reply.code != ReplyCode.OK:
                    raise RuntimeError(f"OPEN_SESSION failed: {reply}")
                self.free_sessions.append(reply.value)
                self.session_seq[reply.value] = 0
        if len(self.free_sessions) < count:
            raise RuntimeError(f"OPEN_SESSION failed: {count - len(self.free_sessions)} of "
                               f"{count} unanswered in {timeout_s:g}s")

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


@dataclass(slots=True)
class LoadResult:
    """What one load process measured in the window: latencies (ms) of the requests
    answered OK, the failures by kind (reply code name, or "no reply"), per interval of
    the window the OK answers and the failures, and the re-routes by cause."""

    latencies_ms: array
    errors: Counter
    ok_per_interval: array = field(default_factory=lambda: array("q"))
    errors_per_interval: array = field(default_factory=lambda: array("q"))
    rerouted: Counter = field(default_factory=Counter)


def drive(pipe: Pipeline, w: Workload, start_ns: int, end_ns: int, progress: Any = None,
          interval_ns: int = int(TIMELINE_S * 1e9)) -> LoadResult:
    """Keep `w.in_flight` requests outstanding until `end_ns`; count the answers received
    from `start_ns` until `end_ns` (earlier ones are the warm-up, later ones are drained
    and not counted), each in its interval of `interval_ns`. A request still unanswered
    after the drain is a failure ("no reply") of the last interval. `progress`, if given
    (two integers), follows the OK answers and the failures so far, warm-up included."""
    random_ = random.Random().random
    keys, value = bench_keys(w.key_space), bench_value(w.value_size)
    get_op = ReqOp.GET_STALE if w.stale else _GET
    latencies, errors = array("d"), Counter()
    n_intervals = intervals(end_ns - start_ns, interval_ns)
    oks, failures = array("q", [0]) * n_intervals, array("q", [0]) * n_intervals
    ok_total = failed_total = 0
    pipe.count_window = (start_ns, end_ns)
    pipe.rerouted.clear()  # re-routes while sessions were opened are not the window's
    # The generator's time per request is part of every round it waits for: with the
    # cluster answering a whole REQS frame at once, it sends the next frame only when it
    # has handled the replies and built the next requests (hence no per-request method
    # or enum lookups here).
    n_keys, get_share, send, receive = w.key_space, w.get_percent / 100, pipe.send, pipe.receive

    def send_next() -> None:
        key = keys[int(random_() * n_keys)]
        if get_share and random_() < get_share:
            send(get_op, key)
        else:
            send(_PUT, key, value)

    for _ in range(w.in_flight):
        send_next()
    while (now := time.monotonic_ns()) < end_ns:
        answers = receive(min(NO_REPLY_S, (end_ns - now) / 1e9))
        if not answers:
            continue
        for sent, received, reply in answers:
            if reply.code is _OK:
                ok_total += 1
                if start_ns <= received < end_ns:
                    latencies.append((received - sent) / 1e6)
                    oks[(received - start_ns) // interval_ns] += 1
            else:
                failed_total += 1
                if start_ns <= received < end_ns:
                    errors[reply.code.name] += 1
                    failures[(received - start_ns) // interval_ns] += 1
            if received < end_ns:
                send_next()
        if progress is not None:
            progress[0] = ok_total
            progress[1] = failed_total
    drain(pipe)
    if pipe.out:
        errors["no reply"] += len(pipe.out)
        failures[-1] += len(pipe.out)
    return LoadResult(latencies, errors, oks, failures, pipe.rerouted)


def drain(pipe: Pipeline, timeout_s: float = DRAIN_S) -> None:
    """Wait up to `timeout_s` for the answers still outstanding (not counted)."""
    deadline = time.monotonic() + timeout_s
    while pipe.out and time.monotonic() < deadline:
        pipe.receive(min(0.1, max(0.0, deadline - time.monotonic())))


def load_process(w: Workload, conn: Any, progress: Any) -> None:
    """A load process (multiprocessing target). Over `conn`: it sends ("ready", None) once
    connected (and, for puts, holding a session) or ("failed", message); it receives the
    window (start_ns, end_ns), warms up until start_ns, and sends back its LoadResult
    (it pickles as it is). `progress`: see `drive`."""
    ctx = zmq.Context()
    pipe = Pipeline(ctx, w.route, w.batch)
    try:
        try:
            if w.get_percent < 100:
                pipe.open_sessions(w.in_flight)
        except RuntimeError as e:
            conn.send(("failed", f"{w.route.addresses[w.route.first]}: {e}"))
            return
        conn.send(("ready", None))
        start_ns, end_ns = conn.recv()
        conn.send(drive(pipe, w, start_ns, end_ns, progress))
    finally:
        pipe.close()
        ctx.destroy(linger=0)


def fill_keys(ctx: zmq.Context, route: Route, key_space: int, value_size: int,
              in_flight: int = 64, batch: bool = False) -> None:
    """Put every key of the key space once, so that gets find values. A put answered
    UNAVAILABLE (its leader lost the leadership with it pending; it may or may not have
    been applied) is put again: the same value twice is the same state. Raises
    RuntimeError on any other refusal, or when nothing is answered for STALL_S."""
    pipe = Pipeline(ctx, route, batch)
    key_of: dict[int, bytes] = {}  # outstanding put's request id -> its key
    value = bench_value(value_size)

    def put(key: bytes) -> None:
        key_of[pipe.next_id] = key
        pipe.send(ReqOp.PUT, key, value)

    try:
        pipe.open_sessions(in_flight)
        for key in bench_keys(key_space):
            put(key)
            fill_until(pipe, in_flight - 1, key_of, put)
        fill_until(pipe, 0, key_of, put)
    finally:
        pipe.close()


def fill_until(pipe: Pipeline, outstanding: int, key_of: dict[int, bytes],
               put: Callable[[bytes], None]) -> None:
    """Take answers until at most `outstanding` requests are outstanding, putting again
    the key of a put answered UNAVAILABLE. Raises RuntimeError on another refusal, or
    when nothing is answered for STALL_S."""
    answered_at = time.monotonic()
    while len(pipe.out) > outstanding:
        answers = pipe.receive(STALL_S)
        if answers:
            answered_at = time.monotonic()
        elif time.monotonic() - answered_at > STALL_S:
            raise RuntimeError(f"filling the key space: no answer within {STALL_S:g}s")
        for _, _, reply in answers:
            key = key_of.pop(reply.request_id)
            if reply.code == ReplyCode.UNAVAILABLE:
                put(key)
            elif reply.code != ReplyCode.OK:
                raise RuntimeError(f"filling the key space: PUT answered {reply}")


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.loadgen`: the `raftkv bench` command."""
    from harness.cli import bench

    return bench.main(args=argv, prog_name="python -m harness.loadgen")


if __name__ == "__main__":
    raise SystemExit(main())
