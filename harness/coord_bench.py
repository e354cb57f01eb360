"""`python -m harness.coord_bench`: lock latency and watch fan-out, raftkv against etcd,
alternating in the same minutes (make bench-coord).

Each round runs, on a new 3-node cluster of each system (raftkv: `LocalCluster`, fsync
on, the nodes' addresses given to the client; etcd: bench_compare's cluster, defaults):

- **lock**: one client takes and releases one lock `--locks` times, uncontended, and the
  median and p99 of each acquire and each release are taken. raftkv:
  `Client.lock(name, ttl=10, lease=...)` on one lease kept for the run (etcd's session);
  etcd: `concurrency.Mutex` on one session (harness/etcdcoord, Go).
- **watch**: `--watchers` watch streams on one prefix, spread over 10 clients, from the
  revision after a marker; one writer puts `--events` keys, 16 at a time. The figure is
  events delivered (watchers x events) per second, from the first put until the last
  watcher had every event.

The clients differ in language (Python against Go): the figures are what a user of each
gets, not the servers alone. Print: a table a round, then the medians and their ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import bench_compare as bc
from harness.loadgen import percentile

LOCK_TTL = 10.0
CONNS = 10  # clients the watch streams spread over, in both systems
IN_FLIGHT = 16  # the writer's puts outstanding at once


def raftkv_lock(cluster, n: int) -> dict[str, float]:
    from raftkv import Client

    acquire, release = [], []
    with (Client(cluster.addresses, credentials=cluster.credentials, timeout=10) as kv,
          kv.lease(LOCK_TTL) as lease):
        for _ in range(n):
            lock = kv.lock("bench-lock", lease=lease)
            t0 = time.perf_counter()
            lock.acquire()
            t1 = time.perf_counter()
            lock.release()
            t2 = time.perf_counter()
            acquire.append((t1 - t0) * 1000)
            release.append((t2 - t1) * 1000)
    return summary(acquire, release)


def summary(acquire: list[float], release: list[float]) -> dict[str, float]:
    return {"acquire_p50_ms": statistics.median(acquire),
            "acquire_p99_ms": percentile(sorted(acquire), 0.99),
            "release_p50_ms": statistics.median(release),
            "release_p99_ms": percentile(sorted(release), 0.99)}


def raftkv_watch(cluster, watchers: int, events: int) -> dict[str, float]:
    from raftkv import Client

    clients = [Client(cluster.addresses, credentials=cluster.credentials, timeout=10)
               for _ in range(CONNS)]
    try:
        prefix = f"fanout-{time.monotonic_ns()}/"
        start = clients[0].put(prefix + "start", "") + 1
        done = [0] * watchers
        finished = threading.Barrier(watchers + 1)
        last = [0.0]

        def watch(i: int) -> None:
            seen = 0
            with clients[i % CONNS].watch(prefix, prefix=True, start_revision=start) as w:
                for _ in w:
                    seen += 1
                    if seen >= events:
                        break
            done[i] = seen
            last[0] = max(last[0], time.perf_counter())
            finished.wait()

        threads = [threading.Thread(target=watch, args=(i,), daemon=True)
                   for i in range(watchers)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        keys = iter(range(events))
        lock = threading.Lock()

        def write(kv) -> None:
            while True:
                with lock:
                    i = next(keys, None)
                if i is None:
                    return
                kv.put(f"{prefix}k{i:07d}", "v")

        writers = [threading.Thread(target=write, args=(clients[j % CONNS],))
                   for j in range(IN_FLIGHT)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        finished.wait(timeout=300)
        seconds = last[0] - t0
        return {"events_per_s": sum(done) / seconds, "seconds": seconds}
    finally:
        for c in clients:
            c.close()


def etcd_run(binary: Path, urls: list[str], args: list[str]) -> dict:
    out = subprocess.run([str(binary), "-endpoints", ",".join(urls), *args],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"etcdcoord failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def build_etcdcoord(out_dir: Path) -> Path:
    return bc.build_go(Path(__file__).with_name("etcdcoord") / "main.go", out_dir / "etcdcoord")


def round_raftkv(locks: int, watchers: int, events: int) -> dict[str, float]:
    from harness.launcher import LocalCluster

    with tempfile.TemporaryDirectory(prefix="raftkv-coord-") as d:
        cluster = LocalCluster(3, Path(d))
        try:
            cluster.start_all()
            cluster.wait_leader()
            return {**raftkv_lock(cluster, locks), **raftkv_watch(cluster, watchers, events)}
        finally:
            cluster.close()


def round_etcd(binary: Path, locks: int, watchers: int, events: int) -> dict[str, float]:
    with bc.etcd_cluster(3) as urls:
        lock = etcd_run(binary, urls, ["-mode", "lock", "-n", str(locks),
                                       "-ttl", str(int(LOCK_TTL))])
        watch = etcd_run(binary, urls, ["-mode", "watch", "-watchers", str(watchers),
                                        "-conns", str(CONNS), "-events", str(events),
                                        "-in-flight", str(IN_FLIGHT)])
    return {**summary(lock["acquire_ms"], lock["release_ms"]),
            "events_per_s": watch["delivered"] / watch["seconds"],
            "seconds": watch["seconds"]}


FIELDS = ("acquire_p50_ms", "acquire_p99_ms", "release_p50_ms", "release_p99_ms",
          "events_per_s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--locks", type=int, default=200)
    p.add_argument("--watchers", type=int, default=100)
    p.add_argument("--events", type=int, default=2000)
    a = p.parse_args(argv)
    why = bc.etcd_missing()
    if why:
        print(f"coord_bench: {why} ({bc.ETCD_INSTALL})", file=sys.stderr)
        return 3
    with tempfile.TemporaryDirectory(prefix="etcdcoord-") as d:
        binary = build_etcdcoord(Path(d))
        runs: dict[str, list[dict[str, float]]] = {"raftkv": [], "etcd": []}
        for r in range(a.rounds):
            order = ["raftkv", "etcd"] if r % 2 == 0 else ["etcd", "raftkv"]
            for system in order:
                got = (round_raftkv(a.locks, a.watchers, a.events) if system == "raftkv"
                       else round_etcd(binary, a.locks, a.watchers, a.events))
                runs[system].append(got)
                print(f"round {r + 1} {system:6s} " + "  ".join(
                    f"{f} {got[f]:,.2f}" for f in FIELDS), flush=True)
    print(f"\nmedians of {a.rounds} rounds, {a.locks} locks, {a.watchers} watchers x "
          f"{a.events} events ({bc.etcd_version()})")
    for f in FIELDS:
        mine = statistics.median(x[f] for x in runs["raftkv"])
        theirs = statistics.median(x[f] for x in runs["etcd"])
        print(f"  {f:16s} raftkv {mine:12,.2f}   etcd {theirs:12,.2f}   raftkv/etcd "
              f"{mine / theirs:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
