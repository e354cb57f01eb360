"""`python -m harness.bench_compare` (`make bench-compare`): raftkv beside PySyncObj and etcd.

The same shape of work on each, on this machine, in the same run: a 3-node replicated
key/value map on loopback, 100-byte values, closed-loop writes with N in flight,
warm-up then a counted window. raftkv: `raftkv bench` (harness/bench.py) on a temp
cluster, fsync on, linearizable. PySyncObj 0.3.17 (the `compare` extra; never a runtime
dependency): a `SyncObj` with a `@replicated` set, one process per node; writes are
driven from the leader's own process through the callback API, so no client hop is
counted against it. Its journal stays in memory with no fsync (its default; its file
journal does not fsync either), and its reads are local, stale reads.

etcd, when `etcd` is on PATH (Debian's etcd-server, 3.4.23; never a dependency): a new
3-member cluster per run, on free loopback ports with its data dirs in a temp dir, every
setting etcd's default, so durable as raftkv is: a member fsyncs its WAL before it
acknowledges, the leader before it applies. The load comes from harness/etcdload/main.go,
a Go program on the clientv3 of Debian's golang-etcd-server-dev (built here with Debian's
golang-go, GOPATH mode, ~15 s the first time, ~1 s from then on): N goroutines, each one
put at a time, straight to the leader as raftkv's load goes to its leader, over one gRPC
connection at 1 in flight and ETCD_CONNS at N. Without etcd, go or those sources there
are no etcd rows and a line says what to install.

Why Go: a Python client would be part of what is measured. At 64 in flight, each on a
new cluster, 5 s windows, the four in turn for four rounds (three of them while another
benchmark loaded this 2-core machine, load average 5-10), puts/s and the generator's CPU
over its run:
  Go clientv3, 4 connections  4,496  4,527  10,411  5,118  (17-33% of a core)
  Go clientv3, 1 connection   3,719  4,134  11,594  4,161  (16-34%)
  `etcd3` 0.12.0 from PyPI    2,178  2,596   4,273  2,446  (35-60%; gRPC, 64 threads,
                                                            protobuf < 4: pure Python)
  aiohttp, etcd's JSON API    1,983  1,789   1,816  1,861  (27-30%; /v3/kv/put, 64 tasks)
Per put the Python generators spent 4-5x the Go one's CPU, on the cores the three members
need, and drove at most 57% of its rate. Four connections beat one in three rounds of four,
so the N row uses ETCD_CONNS. One put at a time, p50: Go 0.83 and 1.13 ms, aiohttp 1.60,
etcd3 2.14 (one loaded run each).

Each system runs each of its settings once per round, the systems taking turns to go first,
and the table shows the median of the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.launcher import free_ports
from harness.loadgen import bench_keys, bench_value, summarize

START_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Setting:
    system: str  # raftkv | PySyncObj | etcd
    in_flight: int
    label: str
    durability: str
    reads: str
    # PySyncObj: SyncObjConf arguments; raftkv: BenchConfig fields; etcd: etcdload flags
    options: tuple[tuple[str, Any], ...] = ()


RAFTKV_DURABILITY = "WAL fsync on a majority before OK"
PYSYNCOBJ_DURABILITY = "in-memory journal, no fsync"
RAFTKV_READS = "linearizable (ReadIndex)"
PYSYNCOBJ_READS = "stale (local)"
SYSTEMS = ("raftkv", "PySyncObj", "etcd")


def settings(in_flight: int, etcd: bool = False) -> list[Setting]:
    """raftkv at 1 and `in_flight` requests, and without fsync (PySyncObj's durability,
    for reference; the ratio uses the durable row). PySyncObj at its fastest single request
    (batching off, 1 ms tick), and at `in_flight` and 1,000 in flight with appends sent
    every 1 ms instead of every 100 ms (its default; batched writes wait for it): the
    settings that gave it the most writes/s here. With `etcd`, etcd at 1 and `in_flight`
    (the latter over ETCD_CONNS connections), as it comes."""
    tick = (("autoTickPeriod", 0.001),)
    fast_appends = (*tick, ("appendEntriesPeriod", 0.001))
    etcd_rows = [
        Setting("etcd", 1, "1 in flight, Go clientv3", ETCD_DURABILITY, ETCD_READS),
        Setting("etcd", in_flight, f"{in_flight} in flight, Go clientv3, {ETCD_CONNS} conns",
                ETCD_DURABILITY, ETCD_READS, (("conns", ETCD_CONNS),)),
    ] if etcd else []
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
        *etcd_rows,
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


# -- etcd --------------------------------------------------------------------------------------

# etcd's defaults, unchanged: a member fsyncs its WAL before it acknowledges entries, and
# the leader fsyncs its own before it applies what a majority acknowledged.
ETCD_DURABILITY = RAFTKV_DURABILITY
ETCD_READS = "linearizable (ReadIndex)"
ETCD_LOAD_SOURCE = Path(__file__).with_name("etcdload") / "main.go"
# Where Debian's golang-etcd-server-dev installs clientv3 and its dependencies (GOPATH
# layout: Go 1.19 builds against it with GO111MODULE=off, no module download).
DEBIAN_GOPATH = Path("/usr/share/gocode")
ETCD_INSTALL = "apt-get install etcd-server golang-go golang-etcd-server-dev"
ETCD_CONNS = 4  # etcdload -conns at more than one in flight (see the module docstring)
# A follower exits at once on SIGTERM; the leader first tries to hand over leadership, and
# with its followers stopping too it waits ~7 s for that to fail. The data is thrown away,
# so it is killed instead.
ETCD_STOP_GRACE_S = 1.0


def etcd_missing() -> str | None:
    """Why the etcd rows cannot run on this machine, or None if they can."""
    if shutil.which("etcd") is None:
        return "etcd is not on PATH"
    if shutil.which("go") is None:
        return "go (to build the etcd load generator) is not on PATH"
    if not (DEBIAN_GOPATH / "src/go.etcd.io/etcd/clientv3").is_dir():
        return f"etcd's Go client sources are not under {DEBIAN_GOPATH}"
    return None


def etcd_version() -> str:
    """`etcd --version`'s first line ("etcd Version: 3.4.23") and where etcd is."""
    out = subprocess.run(["etcd", "--version"], capture_output=True, text=True, timeout=10)
    return f"{(out.stdout.splitlines() or ['?'])[0]} ({shutil.which('etcd')})"


def build_etcd_load(out_dir: Path) -> Path:
    """Compile harness/etcdload/main.go to `out_dir`/etcdload (about 15 s on 2 cores the
    first time, then about 1 s from Go's build cache)."""
    return build_go(ETCD_LOAD_SOURCE, out_dir / "etcdload")


def build_go(source: Path, binary: Path) -> Path:
    """Compile a Go program against Debian's clientv3 sources (GOPATH mode) to `binary`."""
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(DEBIAN_GOPATH), "GOFLAGS": ""}
    if not any(env.get(v) for v in ("GOCACHE", "XDG_CACHE_HOME", "HOME")):
        env["GOCACHE"] = str(binary.parent / "go-build")  # go will not build with no cache
    proc = subprocess.run(["go", "build", "-o", str(binary), str(source)],
                          env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"etcd: building {source} failed:\n{proc.stderr}")
    return binary


def etcd_commands(root: Path, ports: list[int]) -> list[list[str]]:
    """One etcd command line per member: member i (from 1) listens for clients on
    ports[i - 1] and for peers on ports[nodes + i - 1], all on 127.0.0.1, and keeps its
    data in root/e<i>. No flag touches durability."""
    nodes = len(ports) // 2
    if nodes < 1 or len(ports) != 2 * nodes or len(set(ports)) != len(ports):
        raise ValueError(f"etcd: need two distinct ports per member, got {ports}")
    url = "http://127.0.0.1:{}".format
    initial = ",".join(f"e{i + 1}={url(p)}" for i, p in enumerate(ports[nodes:]))
    return [["etcd", "--name", f"e{i + 1}", "--data-dir", str(root / f"e{i + 1}"),
             "--listen-client-urls", url(client), "--advertise-client-urls", url(client),
             "--listen-peer-urls", url(peer), "--initial-advertise-peer-urls", url(peer),
             "--initial-cluster", initial, "--initial-cluster-state", "new",
             "--initial-cluster-token", "raftkv-compare", "--logger", "zap",
             "--log-outputs", "stderr"]
            for i, (client, peer) in enumerate(zip(ports[:nodes], ports[nodes:], strict=True))]


def client_url(command: list[str]) -> str:
    return command[command.index("--listen-client-urls") + 1]


def etcd_healthy(url: str) -> bool:
    """Whether the member at `url` says it is healthy: it has a leader and a quorum read
    through it succeeds (etcd 3.4's /health)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1.0) as reply:
            return json.load(reply).get("health") == "true"
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def etcd_cluster(nodes: int = 3) -> Iterator[list[str]]:
    """A new etcd cluster of `nodes` members on free loopback ports, in a temp dir; yields
    the client URLs once every member is healthy. On exit every member started is sent
    SIGTERM, then SIGKILL if still running after ETCD_STOP_GRACE_S, and waited for; then
    the dir is removed."""
    root = Path(tempfile.mkdtemp(prefix="raftkv-compare-etcd-"))
    procs: list[subprocess.Popen] = []
    try:
        commands = etcd_commands(root, free_ports(2 * nodes))
        for i, command in enumerate(commands):
            with open(root / f"e{i + 1}.log", "wb") as log:
                procs.append(subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT))
        urls = [client_url(c) for c in commands]
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(etcd_healthy(u) for u in urls):
            exited = [i for i, p in enumerate(procs) if p.poll() is not None]
            if exited or time.monotonic() > deadline:
                i = exited[0] if exited else 0
                tail = (root / f"e{i + 1}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"etcd: the cluster was not healthy within "
                                   f"{START_TIMEOUT_S:g}s; member e{i + 1}'s log ends:\n{tail}")
            time.sleep(0.1)
        yield urls
    finally:
        for p in procs:
            p.terminate()
        deadline = time.monotonic() + ETCD_STOP_GRACE_S
        for p in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(root, ignore_errors=True)


def run_etcd(s: Setting, duration: float, warmup: float, value_size: int, load: Path,
             key_space: int = 10_000) -> Measured:
    """A new 3-member cluster; `load` (build_etcd_load) drives the setting on its leader."""
    with etcd_cluster() as urls:
        command = [str(load), "-endpoints", ",".join(urls), "-in-flight", str(s.in_flight),
                   "-warmup", f"{warmup}s", "-duration", f"{duration}s",
                   "-value-size", str(value_size), "-key-space", str(key_space),
                   *(f"-{name}={value}" for name, value in s.options)]
        proc = subprocess.run(command, capture_output=True, text=True,
                              timeout=warmup + duration + START_TIMEOUT_S + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"etcd: the load generator failed: {proc.stderr.strip()}")
    return parse_etcd_load(proc.stdout, duration)


def parse_etcd_load(out: str, duration: float) -> Measured:
    """etcdload's JSON as a Measured: OK puts in the window per second, their latency
    percentiles; errors are failed puts plus puts still unanswered when their time ran out."""
    report = json.loads(out)
    latencies = array("d", report["latencies_ms"])
    summary = summarize(latencies)
    return Measured(round(len(latencies) / duration, 1), summary.p50, summary.p99,
                    sum(report["errors"].values()) + report["unanswered"])


# -- the comparison ---------------------------------------------------------------------------

def compare(rounds: int, duration: float, warmup: float, in_flight: int, value_size: int,
            log: Any = print, pysyncobj_log: str = os.devnull, etcd_load: Path | None = None,
            systems: tuple[str, ...] = SYSTEMS) -> list[tuple[Setting, list[Measured]]]:
    """Every setting of `systems` once per round, the systems taking turns to go first.
    PySyncObj's nodes write their standard error to `pysyncobj_log`. etcd runs only given
    `etcd_load`, its load generator (build_etcd_load)."""
    table = [s for s in settings(in_flight, etcd=etcd_load is not None) if s.system in systems]
    present = [system for system in SYSTEMS if any(s.system == system for s in table)]
    runs: dict[Setting, list[Measured]] = {s: [] for s in table}
    for r in range(rounds):
        for system in rotated(present, r):
            for s in (s for s in table if s.system == system):
                if system == "raftkv":
                    m = run_raftkv(s, duration, warmup, value_size)
                elif system == "PySyncObj":
                    m = run_pysyncobj(s, duration, warmup, value_size, log_path=pysyncobj_log)
                else:
                    assert etcd_load is not None  # etcd's settings exist only with it
                    m = run_etcd(s, duration, warmup, value_size, etcd_load)
                runs[s].append(m)
                log(f"round {r + 1}/{rounds}: {system} {s.label}: {m.writes_per_s:,.0f} "
                    f"writes/s, p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms, "
                    f"{m.errors} errors")
    return list(runs.items())


def rotated(systems: list[str], r: int) -> list[str]:
    """The order of round `r`: each system goes first in turn (two systems alternate)."""
    k = r % len(systems) if systems else 0
    return systems[k:] + systems[:k]


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
                      f"same machine", *lines, *ratio_lines(rows)])


def ratio_lines(rows: list[tuple[Setting, Measured]]) -> list[str]:
    """raftkv's durable writes/s at more than one in flight over PySyncObj's best; over
    etcd's at the same number in flight; one client's put p50 on both. A line only when
    the table has the rows it needs."""
    durable = [(s, m) for s, m in rows
               if s.system == "raftkv" and s.durability == RAFTKV_DURABILITY]
    ours = [m for s, m in durable if s.in_flight > 1]
    peers = [(s, m) for s, m in rows if s.system == "PySyncObj"]
    lines = []
    if ours and peers:
        best_s, best = max(peers, key=lambda sm: sm[1].writes_per_s)
        top = max(m.writes_per_s for m in ours)
        lines.append(f"raftkv durable linearizable writes/s / PySyncObj's best "
                     f"({best_s.label}): {ratio(top, best.writes_per_s)}")
    for e, em in ((s, m) for s, m in rows if s.system == "etcd"):
        same = [m for s, m in durable if s.in_flight == e.in_flight]
        if same and e.in_flight > 1:
            lines.append(f"raftkv / etcd, puts/s at {e.in_flight} in flight, both durable: "
                         f"{ratio(same[0].writes_per_s, em.writes_per_s)}")
        elif same:
            lines.append(f"one client's put p50: raftkv {same[0].p50_ms:.2f} ms, etcd "
                         f"{em.p50_ms:.2f} ms (raftkv's / etcd's: "
                         f"{ratio(same[0].p50_ms, em.p50_ms)})")
    return lines


def ratio(a: float, b: float) -> str:
    return f"{a / max(b, 1e-9):.2f}x"


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
    ap.add_argument("--no-etcd", action="store_true", help="no etcd rows even if it is here")
    args = ap.parse_args(argv)
    if not pysyncobj_installed():
        print("PySyncObj is not installed: pip install -e '.[compare]' (make bench-compare)",
              file=sys.stderr)
        return 2
    fd, pysyncobj_log = tempfile.mkstemp(prefix="raftkv-compare-pysyncobj-", suffix=".log")
    os.close(fd)
    with tempfile.TemporaryDirectory(prefix="raftkv-compare-etcdload-") as build_dir:
        etcd_load = None
        if not args.no_etcd and (why := etcd_missing()):
            print(f"no etcd rows: {why} ({ETCD_INSTALL})", file=sys.stderr)
        elif not args.no_etcd:
            print(f"etcd: {etcd_version()}; load: {ETCD_LOAD_SOURCE} (Go clientv3)",
                  file=sys.stderr)
            etcd_load = build_etcd_load(Path(build_dir))
        runs = compare(args.rounds, args.duration, args.warmup, args.in_flight,
                       args.value_size, log=lambda m: print(m, file=sys.stderr, flush=True),
                       pysyncobj_log=pysyncobj_log, etcd_load=etcd_load)
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
