"""`raftkv bench`: load a real cluster and print throughput, latency and the nodes' cost.

A run starts its own cluster in a temp dir (`launcher.up`: nodes and a controller on
free loopback ports, removed afterwards) or uses the running cluster of `--dir`. It fills
the key space when the mix reads, then spawns load processes (harness/loadgen.py) that
together keep `--clients` requests in flight, straight to the nodes following the leader
(`--via direct`) or through the controller, warms up, and counts `--duration` seconds.
While they run it shows a progress line on stderr (OK answers and failures per second,
apart) and samples each node's and each load process's CPU and memory with psutil.
`--failover` instead kills the leader through the controller while a writer keeps
writing, and times how long writes stop.

A benchmark prints figures; it never fails on a time budget.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psutil
import zmq

from harness import loadgen as load
from harness import rpc
from harness.cluster_state import ClusterState
from harness.launcher import LaunchError, down, find_leader, free_base_port, up
from raftkv import wire
from raftkv.security import present
from raftkv.wire import ClientRequest, ReplyCode, ReqOp

# The default split of --clients over load processes. Measured on the 2-core machine
# (64 in flight, medians of 3 alternating runs): one load process keeps 64 puts in flight
# at 16% CPU, and a second only adds contention for the cores (33.1k vs 27.1k puts/s).
# Reads cost the nodes less and so needed two (78.4k vs 66.8k gets/s) until the load
# generator's own per-request path was trimmed; since then one does better there too
# (106.8k vs 101.1k gets/s).
IN_FLIGHT_PER_PROCESS = 64
SAMPLE_S = 0.5  # progress and psutil sampling period
SETTLE_S = 1.0  # failover: quiet time after the killed node is back, before the next kill
FAILOVER_GIVE_UP_S = 10.0


class BenchError(Exception):
    """The run could not measure anything: no cluster, no leader, a load process failed."""


@dataclass
class BenchConfig:
    nodes: int = 3
    clients: int = 64  # requests in flight, over all load processes
    duration: float = 20.0
    warmup: float = 2.0
    value_size: int = 100
    key_space: int = 10_000
    mix: str = "put"
    consistency: str = "linearizable"
    via: str = "direct"  # direct | controller
    fsync: bool = True
    secure: bool = True  # a temp cluster with the keys `up` makes (False: --insecure)
    state: str = "memory"  # where a temp cluster's nodes keep the state (up --state)
    processes: int = 0  # load processes; 0: see IN_FLIGHT_PER_PROCESS
    cluster_dir: Path | None = None  # a running `raftkv up` cluster instead of a temp one
    failover: bool = False
    failover_rounds: int = 10

    @property
    def load_processes(self) -> int:
        if self.processes:
            return self.processes
        return max(1, math.ceil(self.clients / IN_FLIGHT_PER_PROCESS))


# -- the cluster -------------------------------------------------------------------------------

@contextlib.contextmanager
def bench_cluster(cfg: BenchConfig, log: Callable[[str], None]) -> Iterator[ClusterState]:
    """The cluster of --dir as it runs, or a new one in a temp dir, stopped and removed
    afterwards."""
    if cfg.cluster_dir is not None:
        state = ClusterState.load(Path(cfg.cluster_dir).resolve())
        if state is None:
            raise BenchError(f"no cluster in {cfg.cluster_dir}; start one with: raftkv up")
        state.use_keys()
        yield state
        return
    tmp = Path(tempfile.mkdtemp(prefix="raftkv-bench-"))
    try:
        state, _ = up(tmp / "cluster", nodes=cfg.nodes, base_port=free_base_port(cfg.nodes),
                      fsync=cfg.fsync, progress=log, secure=cfg.secure,
                      node_options=("--state", cfg.state))
        yield state
    except LaunchError as e:
        raise BenchError(str(e)) from e
    finally:
        down(tmp / "cluster", grace=3.0)
        shutil.rmtree(tmp, ignore_errors=True)


def wait_leader(ctx: zmq.Context, state: ClusterState, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find_leader(ctx, state.addresses)
        if found is not None:
            return found[0]
        time.sleep(0.05)
    raise BenchError(f"no leader within {timeout:g}s")


def load_route(cfg: BenchConfig, state: ClusterState, leader: int, process: int = 0
               ) -> load.Route:
    """Where load process number `process` sends: through the controller, or to the nodes
    starting at the leader; for stale gets (any node serves them) process i starts i
    nodes after the leader."""
    if cfg.via == "controller":
        return load.Route((state.controller.address,))
    ids = tuple(sorted(state.addresses))
    first = ids.index(leader)
    if cfg.consistency == "stale" and load.parse_mix(cfg.mix) == 100:
        first = (first + process) % len(ids)
    return load.Route(tuple(state.addresses[i] for i in ids), ids, first)


# -- sampling ------------------------------------------------------------------------------------

class ProcessSampler:
    """CPU% (mean of the samples), peak RSS and peak private memory of labelled processes,
    via psutil. Private is RSS less what is shared with files (Linux's RssFile and
    RssShmem): with `--state lmdb` the data is in the database's mapped pages, which
    count in RSS but are page cache the kernel may drop."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs: dict[str, psutil.Process] = {}
        for label, pid in pids.items():
            with contextlib.suppress(psutil.Error):
                self.procs[label] = psutil.Process(pid)
        self.cpu: dict[str, list[float]] = {label: [] for label in self.procs}
        self.rss: dict[str, int] = dict.fromkeys(self.procs, 0)
        self.private: dict[str, int] = dict.fromkeys(self.procs, 0)

    def start(self) -> None:
        """Begin the first interval (psutil's first cpu_percent means nothing)."""
        for p in self.procs.values():
            with contextlib.suppress(psutil.Error):
                p.cpu_percent()

    def sample(self) -> None:
        for label, p in self.procs.items():
            with contextlib.suppress(psutil.Error), p.oneshot():
                self.cpu[label].append(p.cpu_percent())
                mem = p.memory_info()
                self.rss[label] = max(self.rss[label], mem.rss)
                self.private[label] = max(self.private[label],
                                          mem.rss - getattr(mem, "shared", 0))

    def summary(self) -> dict[str, dict[str, float]]:
        return {label: {"cpu_percent": round(statistics.fmean(self.cpu[label]), 1)
                        if self.cpu[label] else 0.0,
                        "rss_mb": round(self.rss[label] / 2**20, 1),
                        "private_mb": round(self.private[label] / 2**20, 1)}
                for label in self.procs}


def cluster_pids(state: ClusterState) -> dict[str, int]:
    """The pids running the cluster now (a restart records a new one in cluster.json)."""
    fresh = ClusterState.load(state.dir) or state
    pids = {f"node{n.id}": n.pid for n in fresh.nodes if n.pid}
    if fresh.controller.pid:
        pids["controller"] = fresh.controller.pid
    return pids


def probe_fsync(directory: Path, count: int = 50) -> dict[str, float]:
    """What one small append + fdatasync costs on this disk now (ms): the floor under a
    durable write's latency, which moves with the machine's other I/O."""
    times = []
    with tempfile.NamedTemporaryFile(dir=directory, prefix="fsync-probe-") as f:
        for _ in range(count):
            f.write(b"x" * 128)
            f.flush()
            t0 = time.perf_counter()
            os.fdatasync(f.fileno())
            times.append((time.perf_counter() - t0) * 1000)
    summary = load.summarize(times)
    return {"p50": summary.p50, "p99": summary.p99}


# -- progress ------------------------------------------------------------------------------------

class Progress:
    """One line on stderr, rewritten in place on a terminal, every few seconds otherwise:
    OK answers per second (ops/s) and failures per second (errors/s), apart."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last_line = 0.0

    def show(self, phase: str, elapsed_s: float, total_s: float, ok_rate: float,
             error_rate: float) -> None:
        now = time.monotonic()
        if not self.tty and now - self.last_line < 5.0:
            return
        self.last_line = now
        filled = int(20 * min(1.0, elapsed_s / total_s)) if total_s else 20
        line = (f"[{'#' * filled}{'.' * (20 - filled)}] {phase:<7} {elapsed_s:5.1f}/"
                f"{total_s:g}s {ok_rate:>9,.0f} ops/s {error_rate:>9,.0f} errors/s")
        self.out.write(f"\r{line}" if self.tty else f"{line}\n")
        self.out.flush()

    def done(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


# -- the load run ------------------------------------------------------------------------------

@dataclass
class LoadReport:
    """`ops` are the requests answered OK, `errors` the failures; neither includes the
    other, here and per interval of the timeline. `rerouted` counts the copies of
    requests sent again to another node (NOT_LEADER, or no reply), by cause in
    `reroute_kinds`."""

    ops: int
    seconds: float
    ops_per_s: float
    errors: int
    errors_per_s: float
    error_kinds: dict[str, int]
    rerouted: int
    reroute_kinds: dict[str, int]
    latency_ms: dict[str, float]
    nodes: dict[str, dict[str, float]]
    controller: dict[str, float]
    load_processes: dict[str, float]
    timeline_ops_per_s: list[float] = field(default_factory=list)
    timeline_errors_per_s: list[float] = field(default_factory=list)
    timeline_interval_s: float = load.TIMELINE_S


def run_load(cfg: BenchConfig, routes: list[load.Route], pids: dict[str, int],
             err: TextIO) -> tuple[LoadReport, array]:
    """Spawn the load processes (the i-th sends along routes[i % len(routes)]), run the
    warm-up and the counted window, and gather their figures. Returns the report and
    every latency (ms)."""
    mp = multiprocessing.get_context("spawn")
    shares = load.split_evenly(cfg.clients, min(cfg.load_processes, cfg.clients))
    workers = []
    for i, share in enumerate(shares):
        w = load.Workload(routes[i % len(routes)], share, load.parse_mix(cfg.mix),
                          cfg.consistency == "stale", cfg.value_size, cfg.key_space,
                          batch=True)
        ours, theirs = mp.Pipe()
        counter = mp.Array("q", 2, lock=False)  # OK answers, failures: see load.drive
        proc = mp.Process(target=load.load_process, args=(w, theirs, counter), daemon=True)
        proc.start()
        workers.append((proc, ours, counter))
    try:
        wait_ready(workers)
        start_ns = time.monotonic_ns() + int(cfg.warmup * 1e9)
        end_ns = start_ns + int(cfg.duration * 1e9)
        for _, conn, _ in workers:
            conn.send((start_ns, end_ns))
        sampler = ProcessSampler({**pids, **{f"load{i + 1}": p.pid
                                             for i, (p, _, _) in enumerate(workers)}})
        watch(cfg, workers, sampler, start_ns, end_ns, Progress(err))
        results = [conn.recv()
                   if conn.poll(load.DRAIN_S + load.NO_REPLY_S + 5) else None
                   for _, conn, _ in workers]
    finally:
        for proc, _, _ in workers:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return summarize_load(cfg, results, sampler)


def wait_ready(workers: list, timeout: float = 30.0) -> None:
    for proc, conn, _ in workers:
        if not conn.poll(timeout):
            raise BenchError(f"load process {proc.pid} did not start within {timeout:g}s")
        status, message = conn.recv()
        if status != "ready":
            raise BenchError(f"a load process could not start: {message}")


def watch(cfg: BenchConfig, workers: list, sampler: ProcessSampler, start_ns: int,
          end_ns: int, progress: Progress) -> None:
    """Show progress and sample processes until the window ends."""
    last, last_ns, sampling = (0, 0), time.monotonic_ns(), False
    while (now := time.monotonic_ns()) < end_ns:
        time.sleep(min(SAMPLE_S, max(0.0, (end_ns - now) / 1e9)))
        now = time.monotonic_ns()
        counts = (sum(c[0] for _, _, c in workers), sum(c[1] for _, _, c in workers))
        ok_rate, error_rate = rates(last, counts, (now - last_ns) / 1e9)
        if now < start_ns:
            progress.show("warm-up", cfg.warmup - (start_ns - now) / 1e9, cfg.warmup,
                          ok_rate, error_rate)
        else:
            if sampling:
                sampler.sample()
            else:
                sampler.start()
                sampling = True
            progress.show("load", (now - start_ns) / 1e9, cfg.duration, ok_rate, error_rate)
        last, last_ns = counts, now
        if not any(p.is_alive() for p, _, _ in workers):
            break
    progress.done()


def rates(before: tuple[int, int], after: tuple[int, int], seconds: float
          ) -> tuple[float, float]:
    """OK answers and failures per second between two readings of the load processes'
    counters (OK answers, failures)."""
    seconds = max(seconds, 1e-9)
    return (after[0] - before[0]) / seconds, (after[1] - before[1]) / seconds


def summarize_load(cfg: BenchConfig, results: list[load.LoadResult | None],
                   sampler: ProcessSampler) -> tuple[LoadReport, array]:
    latencies, errors, rerouted = array("d"), Counter(), Counter()
    n_intervals = load.intervals(int(cfg.duration * 1e9), int(load.TIMELINE_S * 1e9))
    ok_per_interval = array("q", [0]) * n_intervals
    errors_per_interval = array("q", [0]) * n_intervals
    for result in results:
        if result is None:
            errors["load process lost"] += 1
            errors_per_interval[-1] += 1
            continue
        latencies.extend(result.latencies_ms)
        errors.update(result.errors)
        rerouted.update(result.rerouted)
        load.add_counts(ok_per_interval, result.ok_per_interval)
        load.add_counts(errors_per_interval, result.errors_per_interval)
    usage = sampler.summary()
    clients = [u for label, u in usage.items() if label.startswith("load")]
    n_errors = sum(errors.values())
    report = LoadReport(
        ops=len(latencies), seconds=cfg.duration,
        ops_per_s=round(len(latencies) / cfg.duration, 1),
        errors=n_errors, errors_per_s=round(n_errors / cfg.duration, 1),
        error_kinds=dict(errors),
        rerouted=sum(rerouted.values()), reroute_kinds=dict(rerouted),
        latency_ms=asdict(load.summarize(latencies)),
        nodes={k: v for k, v in usage.items() if k.startswith("node")},
        controller=usage.get("controller", {}),
        load_processes={"count": len(results),
                        "cpu_percent": round(sum(c["cpu_percent"] for c in clients), 1)},
        timeline_ops_per_s=load.per_second(ok_per_interval, load.TIMELINE_S, cfg.duration),
        timeline_errors_per_s=load.per_second(errors_per_interval, load.TIMELINE_S,
                                              cfg.duration))
    return report, latencies


# -- failover ------------------------------------------------------------------------------------

class Writer(threading.Thread):
    """Writes in a loop, one put at a time, and records when each one succeeded. Each
    attempt goes to every target (the nodes, or the controller) with the same session and
    sequence number, and is sent again every `resend_s` until one target answers OK, so
    the first moment the cluster can take a write is seen without a client's back-off.
    The session makes the duplicates harmless: a write is applied once."""

    def __init__(self, targets: list[str], resend_s: float = 0.01) -> None:
        super().__init__(name="bench-writer", daemon=True)
        self.targets, self.resend_s = targets, resend_s
        # Per acknowledged write (in seq order): when its first attempt was sent, and
        # when the OK came (time.monotonic()).
        self.issued: list[float] = []
        self.acked: list[float] = []
        self.stopping = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        ctx = zmq.Context()
        socks = [self.connect(ctx, t) for t in self.targets]
        poller = zmq.Poller()
        for s in socks:
            poller.register(s, zmq.POLLIN)
        try:
            client_id = self.open_session(ctx)
            rids = itertools.count(1)
            value = load.bench_value(100)
            for seq in itertools.count(1):
                attempts: set[int] = set()  # request ids that carry this seq
                issued = time.monotonic()
                while not self.stopping.is_set():
                    attempts.add(rid := next(rids))
                    frame = wire.encode_request(ClientRequest(
                        rid, ReqOp.PUT, key=b"bench-failover", value=value,
                        client_id=client_id, seq=seq))
                    for s in socks:
                        with contextlib.suppress(zmq.Again):
                            s.send(frame, zmq.NOBLOCK)
                    if self.await_ok(poller, attempts):
                        self.acked.append(time.monotonic())
                        self.issued.append(issued)
                        break
                if self.stopping.is_set():
                    return
        except BenchError as e:
            self.error = str(e)
        finally:
            ctx.destroy(linger=0)

    @staticmethod
    def connect(ctx: zmq.Context, address: str) -> zmq.Socket:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IMMEDIATE, 1)  # nothing queues for a dead peer
        present(s)
        s.connect(address)
        return s

    def open_session(self, ctx: zmq.Context) -> int:
        deadline = time.monotonic() + FAILOVER_GIVE_UP_S
        while time.monotonic() < deadline:
            for t in self.targets:
                r = rpc.call(ctx, t, ClientRequest(rpc.next_request_id(), ReqOp.OPEN_SESSION),
                             timeout=0.5)
                if r is not None and r.code == ReplyCode.OK:
                    return r.value
        raise BenchError("the failover writer could not open a session")

    def await_ok(self, poller: zmq.Poller, attempts: set[int]) -> bool:
        """True once a target answers OK to one of `attempts` within resend_s (a late OK
        to an earlier seq's attempt says nothing about now)."""
        deadline = time.monotonic() + self.resend_s
        while (left := deadline - time.monotonic()) > 0:
            for s, _ in poller.poll(left * 1000):
                reply = wire.decode_reply(s.recv())
                if reply.code == ReplyCode.OK and reply.request_id in attempts:
                    return True
        return False

    def first_success_after(self, t: float, timeout: float) -> float | None:
        """When the first write issued after `t` was acknowledged, waiting up to `timeout`
        for one. A write issued before `t` does not count: its OK may have been given
        before then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            i = bisect.bisect_right(self.issued, t)
            if i < len(self.acked):
                return self.acked[i]
            time.sleep(0.001)
        return None

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)


def measure_failover(cfg: BenchConfig, state: ClusterState, ctx: zmq.Context,
                     log: Callable[[str], None]) -> dict[str, Any]:
    """`failover_rounds` times: kill the leader, time until a write succeeds, restart the
    killed node and let the cluster settle."""
    targets = ([state.controller.address] if cfg.via == "controller"
               else [state.addresses[i] for i in sorted(state.addresses)])
    writer = Writer(targets)
    writer.start()
    rounds: list[dict[str, Any]] = []
    try:
        for i in range(cfg.failover_rounds):
            if writer.first_success_after(time.monotonic(), FAILOVER_GIVE_UP_S) is None:
                raise BenchError(writer.error or "writes did not go through before a kill")
            rounds.append(kill_and_time(ctx, state, writer))
            log(f"failover {i + 1}/{cfg.failover_rounds}: node {rounds[-1]['killed']} "
                f"killed, writes resumed after {rounds[-1]['seconds'] * 1000:.0f} ms")
            restart_and_settle(ctx, state, rounds[-1]["killed"])
    except rpc.ControlError as e:
        raise BenchError(f"a controller command failed: {e}") from e
    finally:
        writer.stop()
    times = [r["seconds"] for r in rounds if r["seconds"] is not None]
    return {"rounds": rounds,
            "median_s": round(statistics.median(times), 3) if times else None,
            "max_s": round(max(times), 3) if times else None}


def kill_and_time(ctx: zmq.Context, state: ClusterState, writer: Writer) -> dict[str, Any]:
    """One kill-leader; `seconds` runs from sending the command to the acknowledgement of
    the first write issued after the controller reported the process gone."""
    controller_status(ctx, state, lambda st: st.get("leader") is not None)
    t0 = time.monotonic()
    killed = rpc.control(ctx, state.controller.address, "kill-leader")
    t1 = time.monotonic()
    resumed = writer.first_success_after(t1, FAILOVER_GIVE_UP_S)
    return {"killed": killed["killed"], "term": killed["term"],
            "seconds": None if resumed is None else round(resumed - t0, 3)}


def restart_and_settle(ctx: zmq.Context, state: ClusterState, node_id: int) -> None:
    rpc.control(ctx, state.controller.address, "restart", node_id)
    controller_status(ctx, state, lambda st: st.get("leader") is not None and next(
        n for n in st["nodes"] if n["id"] == node_id).get("role") is not None)
    time.sleep(SETTLE_S)


def controller_status(ctx: zmq.Context, state: ClusterState,
                      until: Callable[[dict], bool]) -> dict:
    """The controller's status, once `until` holds for it. Raises BenchError after
    FAILOVER_GIVE_UP_S."""
    deadline = time.monotonic() + FAILOVER_GIVE_UP_S
    while True:
        st = rpc.control(ctx, state.controller.address, "status")
        if until(st):
            return st
        if time.monotonic() > deadline:
            raise BenchError(f"the cluster did not recover within {FAILOVER_GIVE_UP_S:g}s: "
                             f"{st}")
        time.sleep(0.05)


# -- the run and its report ---------------------------------------------------------------------

def run_bench(cfg: BenchConfig, err: TextIO = sys.stderr) -> dict[str, Any]:
    """Run the benchmark `cfg` describes and return its report (what --json prints).
    `latencies` and the load figures are absent for a --failover run."""
    def log(message: str) -> None:
        print(message, file=err, flush=True)

    with bench_cluster(cfg, log) as state, zmq.Context() as ctx:
        report: dict[str, Any] = {"config": config_dict(cfg, state),
                                  "cores": psutil.cpu_count()}
        leader = wait_leader(ctx, state)
        if cfg.via == "controller":
            # The controller forwards each request once, refusing it while it knows no
            # leader, and the load does not retry: it starts once the controller routes.
            controller_status(ctx, state, lambda st: st.get("leader") is not None)
        report["disk_fdatasync_ms"] = probe_fsync(state.dir)
        if cfg.failover:
            report["failover"] = measure_failover(cfg, state, ctx, log)
            return report
        routes = [load_route(cfg, state, leader, i) for i in range(cfg.load_processes)]
        if load.parse_mix(cfg.mix) > 0:
            log(f"filling {cfg.key_space} keys ...")
            try:
                load.fill_keys(ctx, load_route(cfg, state, leader), cfg.key_space,
                               cfg.value_size, batch=True)
            except RuntimeError as e:
                raise BenchError(str(e)) from e
        result, latencies = run_load(cfg, routes, cluster_pids(state), err)
    report.update(asdict(result))
    report["latencies"] = latencies
    return report


def config_dict(cfg: BenchConfig, state: ClusterState) -> dict[str, Any]:
    d = asdict(cfg)
    d["cluster_dir"] = str(cfg.cluster_dir) if cfg.cluster_dir else None
    d["nodes"], d["fsync"], d["secure"] = len(state.nodes), state.fsync, state.secure
    d["state"] = state.state_kind
    d["processes"] = cfg.load_processes
    return d


def to_json(report: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in report.items() if k != "latencies"})


def format_report(report: dict[str, Any]) -> str:
    c = report["config"]
    disk = report["disk_fdatasync_ms"]
    lines = [f"raftkv bench: {c['nodes']} nodes, fsync {'on' if c['fsync'] else 'off'}, "
             f"{'CurveZMQ keys' if c['secure'] else 'INSECURE'}, state in {c['state']}, "
             f"{report['cores']} cores, "
             f"via {c['via']}; this disk's fdatasync now: "
             f"p50 {disk['p50']:.2f} ms, p99 {disk['p99']:.2f} ms"]
    if "failover" in report:
        return "\n".join(lines + format_failover(report["failover"]))
    lat = report["latency_ms"]
    lines += [
        f"{describe_mix(c['mix'], c['consistency'])}, {c['clients']} in flight from "
        f"{c['processes']} process(es), {c['value_size']}-byte values, "
        f"{c['key_space']} keys, {c['duration']:g}s after {c['warmup']:g}s warm-up",
        f"throughput   {report['ops_per_s']:,.0f} ops/s  ({report['ops']:,} ops answered OK)",
        f"latency ms   p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  "
        f"p99.9 {lat['p999']:.2f}  max {lat['max']:.2f}",
        f"errors       {report['errors_per_s']:,.0f} errors/s  ({report['errors']:,} failed"
        + (f": {report['error_kinds']})" if report["errors"] else ")"),
    ]
    if c["via"] == "direct":
        lines.append(f"re-routed    {report['rerouted']:,}"
                     + (f"  {report['reroute_kinds']}" if report["rerouted"] else "")
                     + "  (requests sent again to another node, answered apart)")
    lines += format_timeline(report)
    for label, u in report["nodes"].items():
        lines.append(f"{label:<12} cpu {u['cpu_percent']:5.1f}%  rss {u['rss_mb']:.1f} MB"
                     f"  (private {u.get('private_mb', 0.0):.1f} MB)")
    if report["controller"]:
        u = report["controller"]
        lines.append(f"{'controller':<12} cpu {u['cpu_percent']:5.1f}%  rss {u['rss_mb']:.1f} MB")
    lp = report["load_processes"]
    lines.append(f"load         {lp['count']} process(es), cpu {lp['cpu_percent']:.1f}% "
                 "in all")
    return "\n".join(lines)


def format_timeline(report: dict[str, Any]) -> list[str]:
    """The intervals in which something failed, or nothing was answered OK: the rest of
    the timeline is in --json and --out."""
    step, window = report["timeline_interval_s"], report["seconds"]
    rows = [f"  {i * step:5.1f}-{min((i + 1) * step, window):.1f} s {ok:>11,.0f} ops/s "
            f"{bad:>11,.0f} errors/s"
            for i, (ok, bad) in enumerate(zip(report["timeline_ops_per_s"],
                                              report["timeline_errors_per_s"], strict=True))
            if bad or not ok]
    return ["intervals with failures or no OK answer:", *rows] if rows else []


def describe_mix(mix: str, consistency: str) -> str:
    return mix if load.parse_mix(mix) == 0 else f"{mix} ({consistency} gets)"


def format_failover(f: dict[str, Any]) -> list[str]:
    lines = [f"{'kill':>4}  {'node':>4}  {'term':>4}  writes resumed after"]
    for i, r in enumerate(f["rounds"], 1):
        took = "never" if r["seconds"] is None else f"{r['seconds'] * 1000:.0f} ms"
        lines.append(f"{i:>4}  {r['killed']:>4}  {r['term']:>4}  {took}")
    if f["median_s"] is not None:
        lines.append(f"median {f['median_s'] * 1000:.0f} ms, max {f['max_s'] * 1000:.0f} ms")
    return lines


def draw_plot(report: dict[str, Any], path: Path) -> None:
    """Throughput over time and the latency histogram, as a PNG (matplotlib: the `plot`
    extra). Raises BenchError if matplotlib is missing."""
    try:
        import matplotlib
    except ImportError as e:
        raise BenchError("--out needs matplotlib: pip install -e '.[plot]'") from e
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7))
    step = report["timeline_interval_s"]
    ok, failed = report["timeline_ops_per_s"], report["timeline_errors_per_s"]
    edges = [min(step * i, report["seconds"]) for i in range(len(ok) + 1)]
    top.stairs(ok, edges, label="ops/s (answered OK)")
    top.stairs(failed, edges, color="tab:red", label="errors/s (failed)")
    top.set(xlabel="seconds", ylabel="per second", title="throughput and failures",
            ylim=(0, None))
    top.legend()
    bottom.hist(report["latencies"], bins=100, log=True)
    bottom.set(xlabel="latency (ms)", ylabel="requests", title="latency")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
