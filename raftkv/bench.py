"""`python -m raftkv.bench`: drive a real 3-node cluster and print throughput and latency.

It starts its own cluster (fsync on unless --no-fsync) in a temp dir, then runs
closed-loop phases straight at the leader: each of C logical clients sends its next
request as soon as its previous one is answered. The load generator speaks the wire
protocol on one DEALER socket with C requests in flight, so that the Python client's
own overhead does not hide the server's speed. A benchmark prints figures; it never
fails on a time budget.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import zmq

from raftkv import wire
from raftkv.wire import ClientRequest, ReplyCode, ReqOp


@dataclass
class PhaseResult:
    name: str
    clients: int
    ops: int
    errors: int
    seconds: float
    ops_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def run_phase(ctx: zmq.Context, address: str, name: str, op: ReqOp, clients: int,
              duration: float, value_size: int, key_space: int, client_id: int,
              first_seq: int) -> tuple[PhaseResult, int]:
    """Returns the phase's figures and the next unused sequence number."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    value = os.urandom(value_size // 2 + 1).hex()[:value_size].encode()
    keys = [f"bench-key-{i:06d}".encode() for i in range(key_space)]  # 16 bytes
    encode, decode = wire.encode_request, wire.decode_reply
    seq = first_seq
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    errors = 0
    next_id = 1

    def send_one() -> None:
        nonlocal seq, next_id
        rid = next_id
        next_id += 1
        key = keys[rid % key_space]
        if op == ReqOp.PUT:
            req = ClientRequest(rid, op, key=key, value=value, client_id=client_id, seq=seq)
            seq += 1
        else:
            req = ClientRequest(rid, op, key=key)
        sent_at[rid] = time.perf_counter()
        sock.send(encode(req))

    for _ in range(clients):
        send_one()
    start = time.perf_counter()
    deadline = start + duration
    while sent_at:
        if not sock.poll(5000):
            errors += len(sent_at)
            break
        now = time.perf_counter()
        reply = decode(sock.recv())
        t0 = sent_at.pop(reply.request_id, None)
        if t0 is None:
            continue
        latencies.append(now - t0)
        if reply.code != ReplyCode.OK:
            errors += 1
        if now < deadline:
            send_one()
    elapsed = time.perf_counter() - start
    sock.close()
    latencies.sort()
    ms = [x * 1000 for x in latencies]
    result = PhaseResult(name, clients, len(latencies), errors, round(elapsed, 3),
                         round(len(latencies) / elapsed, 1), round(percentile(ms, 0.5), 3),
                         round(percentile(ms, 0.9), 3), round(percentile(ms, 0.99), 3),
                         round(ms[-1] if ms else 0.0, 3))
    return result, seq


def main(argv: list[str] | None = None) -> int:
    from harness.launcher import LocalCluster

    ap = argparse.ArgumentParser(prog="python -m raftkv.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--clients", type=int, default=64, help="requests in flight (default 64)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per phase")
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--key-space", type=int, default=10_000)
    ap.add_argument("--no-fsync", action="store_true", help="benchmark without fsync")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="raftkv-bench-") as tmp:
        cluster = LocalCluster(args.nodes, Path(tmp), fsync=not args.no_fsync)
        try:
            cluster.start_all()
            leader = cluster.wait_leader(timeout=15)
            address = cluster.nodes[leader].address
            session = cluster.request(leader, ReqOp.OPEN_SESSION)
            client_id = session.value
            seq = 1
            results = []
            phases = [("put, 1 client", ReqOp.PUT, 1),
                      (f"put, {args.clients} in flight", ReqOp.PUT, args.clients),
                      (f"get (linearizable), {args.clients} in flight", ReqOp.GET,
                       args.clients)]
            for name, op, clients in phases:
                if not args.json:
                    print(f"running: {name} for {args.duration:g}s ...", flush=True)
                result, seq = run_phase(cluster.ctx, address, name, op, clients,
                                        args.duration, args.value_size, args.key_space,
                                        client_id, seq)
                results.append(result)
            status = cluster.status(leader) or {}
        finally:
            cluster.close()

    if args.json:
        print(json.dumps({"nodes": args.nodes, "fsync": not args.no_fsync,
                          "value_size": args.value_size,
                          "phases": [asdict(r) for r in results],
                          "leader_fsyncs": status.get("storage", {}).get("fsyncs")}))
        return 0
    print(f"\nraftkv bench: {args.nodes} nodes, fsync {'off' if args.no_fsync else 'on'}, "
          f"{args.value_size}-byte values, {os.cpu_count()} cores")
    print(f"{'phase':<36}{'ops/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
          f"{'errors':>8}")
    for r in results:
        print(f"{r.name:<36}{r.ops_per_s:>10.0f}{r.p50_ms:>9.2f}{r.p90_ms:>9.2f}"
              f"{r.p99_ms:>9.2f}{r.max_ms:>9.2f}{r.errors:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
