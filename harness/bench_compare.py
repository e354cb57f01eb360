"""`python -m harness.bench_compare` (`make bench-compare`): raftkv beside PySyncObj.

The same shape of work on both, on this machine, in the same run: a 3-node replicated
key/value map on loopback, 100-byte values, closed-loop writes with N in flight,
warm-up then a counted window. raftkv: `raftkv bench` (harness/bench.py) on a temp
cluster, fsync on, linearizable. PySyncObj 0.3.17 (the `compare` extra; never a runtime
dependency): a `SyncObj` with a `@replicated` set, one process per node; writes are
driven from the leader's own process through the callback API, so no client hop is
counted against it. Its journal stays in memory with no fsync (its default; its file
journal does not fsync either), and its reads are local, stale reads.

Each system runs each of its settings once per round, the systems taking turns (which
goes first alternates), and the table shows the median of the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from array import array
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from harness.launcher import free_ports
from harness.loadgen import bench_keys, bench_value, summarize

START_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Setting:
    system: str  # raftkv | PySyncObj
    in_flight: int
    label: str
    durability: str
    reads: str
    # PySyncObj: SyncObjConf arguments; raftkv: BenchConfig fields
    options: tuple[tuple[str, Any], ...] = ()


RAFTKV_DURABILITY = "WAL fsync on a majority before OK"
PYSYNCOBJ_DURABILITY = "in-memory journal, no fsync"
RAFTKV_READS = "linearizable (ReadIndex)"
PYSYNCOBJ_READS = "stale (local)"


def settings(in_flight: int) -> list[Setting]:
    """raftkv at 1 and `in_flight` requests, and without fsync (PySyncObj's durability,
    for reference; the ratio uses the durable row). PySyncObj at its fastest single request
    (batching off, 1 ms tick), and at `in_flight` and 1,000 in flight with appends sent
    every 1 ms instead of every 100 ms (its default; batched writes wait for it): the
    settings that gave it the most writes/s here."""
    tick = (("autoTickPeriod", 0.001),)
    fast_appends = (*tick, ("appendEntriesPeriod", 0.001))
    return [
        Setting("raftkv", 1, "1 in flight", RAFTKV_DURABILITY, RAFTKV_READS),
        Setting("raftkv", in_flight, f"{in_flight} in flight", RAFTKV_DURABILITY, RAFTKV_READS),
        Setting("raftkv", in_flight, f"{in_flight} in flight, --no-fsync", "WAL, no fsync",
                RAFTKV_READS, (("fsync", False),)),
        Setting("PySyncObj", 1, "1 in flight, batching off, 1 ms tick", PYSYNCOBJ_DURABILITY,
                PYSYNCOBJ_READS, (("appendEntriesUseBatch", False), *tick)),
        Setting("PySyncObj", in_flight, f"{in_flight} in flight, 1 ms tick, 1 ms appends",
                PYSYNCOBJ_DURABILITY, PYSYNCOBJ_READS, fast_appends),
        Setting("PySyncObj", 1000, "1000 in flight, 1 ms tick, 1 ms appends",
                PYSYNCOBJ_DURABILITY, PYSYNCOBJ_READS, fast_appends),
    ]


@dataclass
class Measured:
    writes_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


# -- raftkv ------------------------------------------------------------------------------------

def run_raftkv(s: Setting, duration: float, warmup: float, value_size: int) -> Measured:
    from harness.bench import BenchConfig, run_bench

    cfg = BenchConfig(clients=s.in_flight, duration=duration, warmup=warmup,
                      value_size=value_size, mix="put", **dict(s.options))
    report = run_bench(cfg)
    return Measured(report["ops_per_s"], report["latency_ms"]["p50"],
                    report["latency_ms"]["p99"], report["errors"])


# -- PySyncObj ----------------------------------------------------------------------------------

def pysyncobj_node(index: int, addresses: list[str], options: dict[str, Any], conn: Any,
                   log_path: str) -> None:
    """One PySyncObj node (a process). Over `conn`: reports ("ready", is_leader) once the
    cluster has a leader; then gets a load to drive as ("drive", ...) or ("idle",), and
    ("stop",) to end. The driver answers with its latencies (bytes) and error counts.
    Its standard error goes to `log_path`: under load PySyncObj logs many warnings
    ("truncating already-applied log entries") and tracebacks of its tick thread, which
    would bury the table; `compare` says how many there were and where."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 (the process's own stderr)

    from pysyncobj import SyncObj, SyncObjConf, replicated

    class ReplicatedDict(SyncObj):
        def __init__(self, me: str, others: list[str], conf: SyncObjConf) -> None:
            super().__init__(me, others, conf)
            self.data: dict[bytes, bytes] = {}

        @replicated
        def set(self, key: bytes, value: bytes) -> None:
            self.data[key] = value

    others = [a for i, a in enumerate(addresses) if i != index]
    node = ReplicatedDict(addresses[index], others, SyncObjConf(**options))
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while node._getLeader() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        conn.send(("ready", node._isLeader()))
        while (order := conn.recv())[0] != "stop":
            if order[0] == "drive":
                conn.send(drive_pysyncobj(node, *order[1:]))
    finally:
        node.destroy()


def drive_pysyncobj(node: Any, in_flight: int, start_ns: int, end_ns: int, value_size: int,
                    key_space: int) -> tuple[bytes, dict[str, int]]:
    """Closed loop on the leader: `in_flight` sets outstanding; each callback (run on
    PySyncObj's tick thread) records its latency and sends the next set."""
    import random

    from pysyncobj import FAIL_REASON

    keys, value, rng = bench_keys(key_space), bench_value(value_size), random.Random()
    latencies, errors = array("d"), Counter()
    outstanding = [0]

    def send_next() -> None:
        sent = time.monotonic_ns()
        outstanding[0] += 1
        node.set(keys[rng.randrange(key_space)], value,
                 callback=lambda _result, err: answered(sent, err))

    def answered(sent: int, err: Any) -> None:
        now = time.monotonic_ns()
        outstanding[0] -= 1
        if now >= start_ns and now < end_ns:
            if err == FAIL_REASON.SUCCESS:
                latencies.append((now - sent) / 1e6)
            else:
                errors[str(err)] += 1
        if now < end_ns:
            send_next()

    for _ in range(in_flight):
        send_next()
    time.sleep(max(0.0, (end_ns - time.monotonic_ns()) / 1e9))
    drain_deadline = time.monotonic() + 5.0
    while outstanding[0] > 0 and time.monotonic() < drain_deadline:
        time.sleep(0.01)
    return latencies.tobytes(), dict(errors)


def run_pysyncobj(s: Setting, duration: float, warmup: float, value_size: int,
                  key_space: int = 10_000, log_path: str = os.devnull) -> Measured:
    """Start three node processes, drive the load from the leader's, stop them all."""
    mp = multiprocessing.get_context("spawn")
    addresses = [f"127.0.0.1:{p}" for p in free_ports(3)]
    nodes = []
    for i in range(3):
        ours, theirs = mp.Pipe()
        proc = mp.Process(target=pysyncobj_node,
                          args=(i, addresses, dict(s.options), theirs, log_path), daemon=True)
        proc.start()
        nodes.append((proc, ours))
    try:
        leaders = [conn for _, conn in nodes if receive(conn, "ready")[1]]
        if len(leaders) != 1:
            raise RuntimeError(f"PySyncObj: {len(leaders)} nodes claim to lead")
        start_ns = time.monotonic_ns() + int(warmup * 1e9)
        leaders[0].send(("drive", s.in_flight, start_ns, start_ns + int(duration * 1e9),
                         value_size, key_space))
        raw, errors = receive(leaders[0], "results", duration + warmup + 30)
    finally:
        for proc, conn in nodes:
            if proc.is_alive():
                with contextlib.suppress(OSError):
                    conn.send(("stop",))
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
    latencies = array("d")
    latencies.frombytes(raw)
    summary = summarize(latencies)
    return Measured(round(len(latencies) / duration, 1), summary.p50, summary.p99,
                    sum(errors.values()))


def receive(conn: Any, what: str, timeout: float = START_TIMEOUT_S) -> Any:
    if not conn.poll(timeout):
        raise RuntimeError(f"PySyncObj: no {what} within {timeout:g}s")
    return conn.recv()


# -- the comparison ---------------------------------------------------------------------------

def compare(rounds: int, duration: float, warmup: float, in_flight: int, value_size: int,
            log: Any = print, pysyncobj_log: str = os.devnull
            ) -> list[tuple[Setting, list[Measured]]]:
    """Every setting once per round, the systems alternating which goes first.
    PySyncObj's nodes write their standard error to `pysyncobj_log`."""
    table = settings(in_flight)
    runs: dict[Setting, list[Measured]] = {s: [] for s in table}
    for r in range(rounds):
        order = ["raftkv", "PySyncObj"] if r % 2 == 0 else ["PySyncObj", "raftkv"]
        for system in order:
            for s in (s for s in table if s.system == system):
                if system == "raftkv":
                    m = run_raftkv(s, duration, warmup, value_size)
                else:
                    m = run_pysyncobj(s, duration, warmup, value_size, log_path=pysyncobj_log)
                runs[s].append(m)
                log(f"round {r + 1}/{rounds}: {system} {s.label}: {m.writes_per_s:,.0f} "
                    f"writes/s, p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms, "
                    f"{m.errors} errors")
    return list(runs.items())


def medians(runs: list[Measured]) -> Measured:
    return Measured(*(round(statistics.median(getattr(m, f) for m in runs), 3)
                      for f in ("writes_per_s", "p50_ms", "p99_ms", "errors")))


def format_table(rows: list[tuple[Setting, Measured]], rounds: int) -> str:
    head = ("system", "setting", "durability", "reads", "writes/s", "p50 ms", "p99 ms")
    cells = [head] + [(s.system, s.label, s.durability, s.reads, f"{m.writes_per_s:,.0f}",
                       f"{m.p50_ms:.2f}", f"{m.p99_ms:.2f}") for s, m in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i >= 4 else c.ljust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([f"medians of {rounds} alternating rounds, 3 nodes on loopback, "
                      f"same machine", *lines, ratio_line(rows)])


def ratio_line(rows: list[tuple[Setting, Measured]]) -> str:
    ours = max((m for s, m in rows
                if s.system == "raftkv" and s.in_flight > 1 and s.durability == RAFTKV_DURABILITY),
               key=lambda m: m.writes_per_s)
    best_s, best = max(((s, m) for s, m in rows if s.system == "PySyncObj"),
                       key=lambda sm: sm[1].writes_per_s)
    return (f"raftkv durable linearizable writes/s / PySyncObj's best ({best_s.label}): "
            f"{ours.writes_per_s / max(best.writes_per_s, 1e-9):.2f}x")


def pysyncobj_installed() -> bool:
    """Whether PySyncObj can be imported, without importing it here: on import it replaces
    socket.inet_ntop for the whole process with a Windows-only version
    (pysyncobj/win_inet_pton.py, 0.3.17), which breaks psutil's connection listing. Only
    its node processes import it."""
    return importlib.util.find_spec("pysyncobj") is not None


def describe_log(path: str) -> str:
    """One line on what PySyncObj's nodes wrote to their standard error."""
    with open(path, errors="replace") as f:
        lines = f.read().splitlines()
    if not lines:
        return f"PySyncObj's nodes wrote nothing to their standard error ({path})"
    tracebacks = sum(line.startswith("Traceback") for line in lines)
    return (f"PySyncObj's nodes wrote {len(lines):,} lines to their standard error, "
            f"{tracebacks:,} of them tracebacks (its own warnings and tick-thread errors, "
            f"e.g. {lines[0][:80]!r}): {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.bench_compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="runs of each setting (median)")
    ap.add_argument("--duration", type=float, default=5.0, help="counted seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds per run")
    ap.add_argument("--in-flight", type=int, default=64, help="the shared offered load")
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--json", action="store_true", help="print the medians as JSON")
    args = ap.parse_args(argv)
    if not pysyncobj_installed():
        print("PySyncObj is not installed: pip install -e '.[compare]' (make bench-compare)",
              file=sys.stderr)
        return 2
    fd, pysyncobj_log = tempfile.mkstemp(prefix="raftkv-compare-pysyncobj-", suffix=".log")
    os.close(fd)
    runs = compare(args.rounds, args.duration, args.warmup, args.in_flight, args.value_size,
                   log=lambda m: print(m, file=sys.stderr, flush=True),
                   pysyncobj_log=pysyncobj_log)
    print(describe_log(pysyncobj_log), file=sys.stderr)
    rows = [(s, medians(ms)) for s, ms in runs]
    if args.json:
        print(json.dumps([{**asdict(s), **asdict(m), "runs": [asdict(x) for x in ms]}
                          for (s, m), (_, ms) in zip(rows, runs, strict=True)]))
    else:
        print(format_table(rows, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
