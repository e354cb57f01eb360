"""The benchmark's load generator: closed-loop requests in the wire protocol, and the
arithmetic of its figures.

`raftkv bench` (harness/bench.py) starts the cluster, spawns `load_process` in as many
processes as keep the requested number of requests in flight, and summarises what they
measured with `summarize`. Each process pipelines its share of requests on one DEALER
socket: it sends its next request as soon as one is answered, so the Python client's
retry machinery does not hide the server's speed. Straight to nodes it packs the
requests it sends at one moment into one REQS frame and takes REPS frames back
(raftkv.wire: batches), as a pipelining client would; through the controller, which
relays single requests only, it sends one frame per request. Writes carry one session per process
(OPEN_SESSION) with increasing sequence numbers; one connection keeps them in order, and
a request that fails is counted, never retried, so a phase measures exactly what the
cluster did.

`python -m harness.loadgen [OPTIONS]` is `raftkv bench [OPTIONS]`.
"""

from __future__ import annotations

import math
import os
import random
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Any

import zmq

from raftkv import wire
from raftkv.wire import ClientRequest, ReplyCode, ReqOp

STALL_S = 5.0  # no reply at all for this long: the outstanding requests count as errors
DRAIN_S = 5.0  # after the window, how long to wait for the answers still outstanding
MIXES = ("put", "get", "mixed:R/W")
# Bound once: on Python 3.11 each `ReqOp.PUT` is an attribute lookup through the enum's
# class (~65 ns), and the generator's own time per request delays every round (see drive).
_PUT, _GET, _OK = ReqOp.PUT, ReqOp.GET, ReplyCode.OK


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


# -- the load ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Workload:
    """What one load process does: `in_flight` requests outstanding at `address`."""

    address: str
    in_flight: int
    get_percent: int = 0  # 0: puts only, 100: gets only
    stale: bool = False  # GET_STALE instead of linearizable GET
    value_size: int = 100
    key_space: int = 10_000
    batch: bool = False  # REQS/REPS frames: only when `address` is a node's


def bench_keys(key_space: int) -> list[bytes]:
    return [f"bench-key-{i:07d}".encode() for i in range(key_space)]


def bench_value(value_size: int) -> bytes:
    return os.urandom(value_size // 2 + 1).hex()[:value_size].encode()


class Pipeline:
    """Requests in flight on one DEALER, each remembered with its send time (ns).

    With `batch`, `send` queues the frame and the next `receive` (or `flush`) sends
    everything queued as one REQS frame."""

    def __init__(self, ctx: zmq.Context, address: str, batch: bool = False) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.batch = batch
        self.queued: list[bytes] = []
        self.sent_at: dict[int, int] = {}
        self.next_id = 1
        self.client_id = 0
        self.seq = 0

    def send(self, op: ReqOp, key: bytes = b"", value: bytes | None = None) -> None:
        rid = self.next_id
        self.next_id += 1
        if op == _PUT:
            self.seq += 1
            frame = wire.encode_put(rid, self.client_id, self.seq, key, value)
        elif op == _GET:
            frame = wire.encode_get(rid, key)
        else:
            frame = wire.encode_request(ClientRequest(rid, op, key=key))
        self.sent_at[rid] = time.monotonic_ns()
        if self.batch:
            self.queued.append(frame)
        else:
            self.sock.send(frame)

    def flush(self) -> None:
        if self.queued:
            frames, self.queued = self.queued, []
            self.sock.send(frames[0] if len(frames) == 1 else wire.encode_requests(frames))

    def receive(self, timeout_s: float) -> list[tuple[int, int, wire.ClientReply]]:
        """Send what is queued, then return every answer ready within `timeout_s`, as
        (sent ns, received ns, reply); an answer to no outstanding request is dropped."""
        self.flush()
        got: list[tuple[int, int, wire.ClientReply]] = []
        if not self.sock.poll(int(timeout_s * 1000)):
            return got
        while True:
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return got
            now = time.monotonic_ns()
            for reply in wire.decode_replies(frame):
                sent = self.sent_at.pop(reply.request_id, None)
                if sent is not None:
                    got.append((sent, now, reply))

    def open_session(self, timeout_s: float = STALL_S) -> None:
        """OPEN_SESSION, so this pipeline's puts carry (client_id, seq). Raises
        RuntimeError if it is refused or unanswered."""
        self.send(ReqOp.OPEN_SESSION)
        answers = self.receive(timeout_s)
        if not answers or answers[0][2].code != ReplyCode.OK:
            what = answers[0][2] if answers else f"no answer in {timeout_s:g}s"
            raise RuntimeError(f"OPEN_SESSION failed: {what}")
        self.client_id = answers[0][2].value

    def close(self) -> None:
        self.sock.close()


@dataclass(slots=True)
class LoadResult:
    """What one load process measured in the window: latencies (ms) of the requests
    answered OK, and the failures by kind (reply code name, or "no reply")."""

    latencies_ms: array
    errors: Counter


def drive(pipe: Pipeline, w: Workload, start_ns: int, end_ns: int,
          progress: Any = None) -> LoadResult:
    """Keep `w.in_flight` requests outstanding until `end_ns`; count the answers that
    arrive from `start_ns` on (earlier ones are the warm-up). `progress.value`, if given,
    follows the number of answers so far, warm-up included."""
    random_ = random.Random().random
    keys, value = bench_keys(w.key_space), bench_value(w.value_size)
    get_op = ReqOp.GET_STALE if w.stale else _GET
    latencies, errors = array("d"), Counter()
    answered = 0
    # The generator's time per request is part of every round it waits for: with the
    # cluster answering a whole REQS frame at once, it sends the next frame only when it
    # has handled the replies and built the next requests (hence no per-request method
    # or enum lookups here).
    n_keys, get_share, send = w.key_space, w.get_percent / 100, pipe.send

    def send_next() -> None:
        key = keys[int(random_() * n_keys)]
        if get_share and random_() < get_share:
            send(get_op, key)
        else:
            send(_PUT, key, value)

    for _ in range(w.in_flight):
        send_next()
    while time.monotonic_ns() < end_ns:
        answers = pipe.receive(STALL_S)
        if not answers:
            break  # stalled: what is outstanding counts as errors below
        for sent, received, reply in answers:
            if received >= start_ns:
                if reply.code == _OK:
                    latencies.append((received - sent) / 1e6)
                else:
                    errors[reply.code.name] += 1
            if received < end_ns:
                send_next()
        answered += len(answers)
        if progress is not None:
            progress.value = answered
    drain(pipe)
    if pipe.sent_at:
        errors["no reply"] += len(pipe.sent_at)
    return LoadResult(latencies, errors)


def drain(pipe: Pipeline, timeout_s: float = DRAIN_S) -> None:
    """Wait up to `timeout_s` for the answers still outstanding (not counted)."""
    deadline = time.monotonic() + timeout_s
    while pipe.sent_at and time.monotonic() < deadline:
        pipe.receive(min(0.1, max(0.0, deadline - time.monotonic())))


def load_process(w: Workload, conn: Any, progress: Any) -> None:
    """A load process (multiprocessing target). Over `conn`: it sends ("ready", None) once
    connected (and, for puts, holding a session) or ("failed", message); it receives the
    window (start_ns, end_ns), warms up until start_ns, and sends back its LoadResult's
    (latencies as bytes, errors as a dict)."""
    ctx = zmq.Context()
    pipe = Pipeline(ctx, w.address, w.batch)
    try:
        try:
            if w.get_percent < 100:
                pipe.open_session()
        except RuntimeError as e:
            conn.send(("failed", f"{w.address}: {e}"))
            return
        conn.send(("ready", None))
        start_ns, end_ns = conn.recv()
        result = drive(pipe, w, start_ns, end_ns, progress)
        conn.send((result.latencies_ms.tobytes(), dict(result.errors)))
    finally:
        pipe.close()
        ctx.destroy(linger=0)


def fill_keys(ctx: zmq.Context, address: str, key_space: int, value_size: int,
              in_flight: int = 64, batch: bool = False) -> None:
    """Put every key of the key space once, so that gets find values. Raises
    RuntimeError on the first refusal or silence."""
    pipe = Pipeline(ctx, address, batch)
    try:
        pipe.open_session()
        value = bench_value(value_size)
        for key in bench_keys(key_space):
            pipe.send(ReqOp.PUT, key, value)
            while len(pipe.sent_at) >= in_flight:
                check_filled(pipe.receive(STALL_S))
        while pipe.sent_at:
            check_filled(pipe.receive(STALL_S))
    finally:
        pipe.close()


def check_filled(answers: list[tuple[int, int, wire.ClientReply]]) -> None:
    if not answers:
        raise RuntimeError(f"filling the key space: no answer within {STALL_S:g}s")
    for _, _, reply in answers:
        if reply.code != ReplyCode.OK:
            raise RuntimeError(f"filling the key space: PUT answered {reply}")


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.loadgen`: the `raftkv bench` command."""
    from harness.cli import bench

    return bench.main(args=argv, prog_name="python -m harness.loadgen")


if __name__ == "__main__":
    raise SystemExit(main())
