"""`raftkv chaos`: concurrent clients, a nemesis, and the checks that follow.

A run brings up its own cluster in a temp dir (or uses --dir), optionally writes a large
state of filler keys that the checks ignore (--preload: snapshots to take, restart from
and send while faults come), starts client processes
that do random get/put/delete/cas on a few keys with values never written twice
(--workload register), or transfers between a few accounts (--workload txn: see
`txn_client_worker`), injects faults from a seeded schedule (nemesis.py), heals, waits
for recovery, then:

1. checks the recorded history for linearizability (checker.py: each key on its own
   for the register workload; for txn, the revisions model over all keys at once);
2. checks that every acknowledged write is present or was legally overwritten (the
   txn workload's history ends with a get_kv of every key, so its model checks that);
3. checks that every node converged to the same applied state;
4. checks what a watcher of every client key saw through the faults (`Watcher`): each
   acknowledged put once, at the revision its put answered, and no event twice;
   with --coordination, also that a lock never had two live holders and its fencing
   tokens grew, and that no lease was revoked before its TTL ran (chaos_coord.py);
5. prints a summary and writes history.jsonl, watch.jsonl and the node logs under the
   run dir.

Exit codes: 0 every check passed; 1 a violation; 3 the cluster never recovered.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import zmq

from harness.chaos_coord import Coordination
from harness.cluster_state import ClusterState

EXIT_OK, EXIT_VIOLATION, EXIT_UNRECOVERED = 0, 1, 3
OP_TIMEOUT = 2.0  # a client's deadline for one operation
PRELOAD_VALUE = 100  # bytes per filler value
RECOVERY_TIMEOUT = 30.0


# -- client processes ---------------------------------------------------------------------

def client_worker(worker: int, addresses: dict[int, str] | str, keys: int, stop_at_ns: int,
                  out_path: str, seed: int) -> None:
    """One client process: random operations until `stop_at_ns` (time.monotonic_ns, which
    is comparable across processes on one host), each recorded as one JSON line. Every
    fourth client only reads: it keeps talking to the node it found leading, as a
    read-heavy application would, and so is the one to meet a deposed leader."""
    from raftkv import Client

    rng = random.Random(f"client-{seed}-{worker}")
    seen: dict[str, str | None] = {}
    reader = worker % 4 == 0
    n = 0
    with Client(addresses, timeout=OP_TIMEOUT, decode=True) as kv, open(out_path, "w") as out:
        while time.monotonic_ns() < stop_at_ns:
            n += 1
            key = f"k{rng.randrange(keys)}"
            kind = "get" if reader else rng.choices(("get", "put", "delete", "cas"),
                                                     (4, 3, 1, 2))[0]
            value = f"{worker}-{n}"
            op = {"client": worker, "op": kind, "key": key, "input": None, "output": None}
            if kind == "put":
                op["input"] = value
            elif kind == "cas":
                op["input"] = [seen.get(key), value]

            def call(kind: str = kind, key: str = key, value: str = value,
                     op: dict = op) -> None:
                if kind == "get":
                    op["output"] = seen[key] = kv.get(key)
                elif kind == "put":
                    op["revision"] = kv.put(key, value)
                elif kind == "delete":
                    op["output"] = kv.delete(key)
                else:
                    op["output"] = kv.cas(key, op["input"][0], value)

            perform(op, call, out)


def perform(op: dict, call: Callable[[], None], out: TextIO) -> None:
    """Run `call`, which fills in op's output, and write `op` to `out` as one JSON line
    with its times and status: ok; info on Timeout (it may or may not have happened,
    and may yet); fail on any other refusal (it certainly did not happen)."""
    from raftkv import RaftKVError, Timeout, Unavailable

    op["invoke"] = time.monotonic_ns()
    try:
        call()
        op["status"] = "ok"
        op["complete"] = time.monotonic_ns()
    except Timeout:
        op["status"], op["complete"] = "info", None
    except (Unavailable, RaftKVError):
        op["status"], op["complete"] = "fail", time.monotonic_ns()
    out.write(json.dumps(op) + "\n")
    out.flush()


def txn_client_worker(worker: int, addresses: dict[int, str] | str, keys: int,
                      stop_at_ns: int, out_path: str, seed: int) -> None:
    """One client process of the txn workload: accounts k0 .. k<keys-1> whose values are
    "<balance>:<worker>-<n>" (never written twice), until `stop_at_ns`. Its ops, each
    recorded as one JSON line in the checker's revisions format: get_kv; a transfer, a
    txn "if both accounts are as I last saw them (mod_revision, sometimes version or
    value) then put both new balances, else get both"; an audit, a txn reading every
    account at one revision; cas by mod_revision; put (its revision is recorded); delete.
    Every fourth client only reads (get_kv and audits)."""
    from raftkv import Client, Compare, Get, Put

    rng = random.Random(f"txn-client-{seed}-{worker}")
    names = [f"k{i}" for i in range(keys)]
    seen: dict[str, list] = {}  # an account's record as this client last saw it
    reader = worker % 4 == 0
    n = 0

    def record(kv: object) -> list | None:
        return None if kv is None else list(kv)  # KeyValue: value, create, mod, version

    def balance(key: str) -> int:
        rec = seen.get(key)
        return int(rec[0].split(":")[0]) if rec else 0

    def compare(key: str) -> tuple[list, Compare]:
        rec = seen.get(key) or [None, 0, 0, 0]
        how = rng.choices(("mod", "version", "value"), (8, 1, 1))[0]
        if how == "mod":
            return ["mod", key, "==", rec[2]], Compare.mod(key) == rec[2]
        if how == "version":
            return ["version", key, "==", rec[3]], Compare.version(key) == rec[3]
        return ["value", key, "==", rec[0]], Compare.value(key) == rec[0]

    with Client(addresses, timeout=OP_TIMEOUT, decode=True) as kv, open(out_path, "w") as out:
        while time.monotonic_ns() < stop_at_ns:
            n += 1
            a, b = rng.sample(names, 2)
            kind = (rng.choices(("get_kv", "audit"), (3, 1))[0] if reader else
                    rng.choices(("get_kv", "transfer", "audit", "cas_rev", "put", "delete"),
                                (25, 40, 10, 10, 10, 5))[0])
            op: dict = {"client": worker, "op": kind, "key": a, "input": None,
                        "output": None}
            call: Callable[[], object]
            if kind == "get_kv":
                def call(a: str = a) -> object:
                    seen[a] = rec = record(kv.get_kv(a))
                    return rec
            elif kind in ("transfer", "audit"):
                op["op"], op["key"] = "txn", None
                if kind == "transfer":
                    amount = rng.randrange(1, 10)
                    (ca, wa), (cb, wb) = compare(a), compare(b)
                    va = f"{balance(a) - amount}:{worker}-{n}"
                    vb = f"{balance(b) + amount}:{worker}-{n}"
                    op["input"] = {"compare": [ca, cb], "success": [["put", a, va],
                                                                    ["put", b, vb]],
                                   "failure": [["get", a], ["get", b]]}
                    txn = ([wa, wb], [Put(a, va), Put(b, vb)], [Get(a), Get(b)])
                else:
                    op["input"] = {"compare": [], "success": [["get", k] for k in names],
                                   "failure": []}
                    txn = ([], [Get(k) for k in names], [])

                def call(txn: tuple = txn, inp: dict = op["input"]) -> object:
                    r = kv.txn(*txn)
                    ran = inp["success"] if r.succeeded else inp["failure"]
                    results = [record(x) if o[0] == "get" else x
                               for o, x in zip(ran, r.results, strict=True)]
                    for o, x in zip(ran, results, strict=True):
                        if o[0] == "get":
                            seen[o[1]] = x
                    return [r.succeeded, results]
            elif kind == "cas_rev":
                mod = (seen.get(a) or [None, 0, 0, 0])[2]
                op["input"] = [mod, f"{balance(a)}:{worker}-{n}"]

                def call(a: str = a, mod: int = mod, new: str = op["input"][1]) -> object:
                    return kv.cas(a, None, new, mod_revision=mod)
            elif kind == "put":
                op["input"] = f"{rng.randrange(100)}:{worker}-{n}"

                def call(a: str = a, value: str = op["input"], op: dict = op) -> object:
                    op["revision"] = kv.put(a, value)  # the watch check reads it here
                    return op["revision"]
            else:
                def call(a: str = a) -> object:
                    return kv.delete(a)

            def run(call: Callable[[], object] = call, op: dict = op) -> None:
                op["output"] = call()

            perform(op, run, out)


WORKERS = {"register": client_worker, "txn": txn_client_worker}


# -- the watcher -----------------------------------------------------------------------------

WATCH_PREFIX = "k"  # the client keys, k0 .. k<keys-1>, and the end marker below
WATCH_END_KEY = "k:watch-end"


class Watcher:
    """A thread watching every client key from `start` on, through the faults, as an
    application would (raftkv.Client.watch: it resumes from the revision after the last
    event it delivered, whichever node answers). It stops at the first event at or past
    `end` (set once the run is over), or when a node answers COMPACTED (`compacted`: the
    revision the watch had asked from, which that node no longer kept: a node's history
    starts where its state did at its last start), the documented answer, not a
    violation."""

    def __init__(self, addresses: dict[int, str] | str, start: int) -> None:
        self.addresses, self.start = addresses, start
        self.events: list[tuple[int, str, str, str | None]] = []
        self.end: int | None = None
        self.compacted: int | None = None
        self.error: str | None = None
        self._watch = None
        self._done = threading.Event()  # set once the watch delivered `end`, or stopped
        self._thread = threading.Thread(target=self._run, name="chaos-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from raftkv import Client, Compacted, RaftKVError

        try:
            with Client(self.addresses, timeout=OP_TIMEOUT, decode=True) as kv:
                self._watch = kv.watch(WATCH_PREFIX, prefix=True, start_revision=self.start,
                                       wait=0.5)
                for e in self._watch:
                    self.events.append((e.revision, e.type, e.key, e.value))
                    if self.end is not None and e.revision >= self.end:
                        return
        except Compacted:
            self.compacted = self._watch.next_revision if self._watch else self.start
        except RaftKVError as e:
            self.error = str(e)
        finally:
            self._done.set()

    def finish(self, end: int, timeout: float) -> bool:
        """Wait until the watch delivered revision `end` (or stopped), then end it;
        whether it got there within `timeout`."""
        self.end = end
        # Delivered before `end` was set, the thread did not see it: look, then wait.
        if not self.reached(end):
            self._done.wait(timeout)
        if self._watch is not None:
            self._watch.close()  # its next poll, at most `wait` away, ends the thread
        self._thread.join(5)
        return self.reached(end) or self.compacted is not None

    def reached(self, revision: int) -> bool:
        return bool(self.events) and self.events[-1][0] >= revision


def watch_problems(watcher: Watcher, history: list[dict]) -> list[str]:
    """Never repeat: no (revision, key) twice, and revisions in order. Never miss: each
    acknowledged put is there, at the revision its put answered, with its value (below
    the revision a COMPACTED answer stopped the watch at)."""
    problems = []
    counts = Counter((r, key) for r, _, key, _ in watcher.events)
    twice = sorted(x for x, c in counts.items() if c > 1)[:5]
    if twice:
        problems.append(f"watch repeated events: {twice}")
    revisions = [r for r, *_ in watcher.events]
    if revisions != sorted(revisions):
        problems.append("watch events out of revision order")
    got = {(r, key): (kind, value) for r, kind, key, value in watcher.events}
    limit = watcher.compacted or float("inf")
    for op in history:
        if op["status"] != "ok":
            continue
        for key, value, r in acknowledged_puts(op):
            if r >= limit:
                continue
            if got.get((r, key)) != ("put", value):
                problems.append(f"watch missed the put {key}={value!r} at revision {r} "
                                f"(client {op['client']}): saw {got.get((r, key))}")
    if watcher.error:
        problems.append(f"watch failed: {watcher.error}")
    return problems


def acknowledged_puts(op: dict) -> list[tuple[str, str, int]]:
    """(key, value, revision) of each put an ok op answered the revision of: a put, or
    the puts of the branch a txn ran."""
    if op["op"] == "put" and op.get("revision") is not None:
        return [(op["key"], op["input"], op["revision"])]
    if op["op"] == "txn" and isinstance(op.get("output"), list):
        succeeded, results = op["output"]
        ran = op["input"]["success" if succeeded else "failure"]
        return [(o[1], o[2], r) for o, r in zip(ran, results, strict=True) if o[0] == "put"]
    return []


# -- the run ---------------------------------------------------------------------------------

@dataclass
class ChaosConfig:
    nodes: int = 5
    run_time: float = 60.0
    clients: int = 8
    keys: int = 10
    nemesis: tuple[str, ...] = ("kill", "pause", "partition", "leader-partition", "restart-all")
    seed: int = 0
    run_dir: Path | None = None
    check_timeout: float = 60.0
    preload: int = 0  # filler keys (PRELOAD_VALUE bytes each) written before the faults
    state: str = "memory"  # where the nodes keep the state (raftkv node --state)
    workload: str = "register"  # register: get/put/delete/cas; txn: transfers (WORKERS)
    coordination: bool = False  # also run the lock and lease workloads (chaos_coord.py)


@dataclass
class ChaosReport:
    verdict: str = "ok"  # ok | violation | unrecovered
    problems: list[str] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    elections: int = 0
    longest_unavailable_s: float = 0.0
    run_dir: str = ""
    linearizability: str = ""

    @property
    def exit_code(self) -> int:
        return {"ok": EXIT_OK, "violation": EXIT_VIOLATION}.get(self.verdict, EXIT_UNRECOVERED)


def run_chaos(cfg: ChaosConfig, log: Callable[[str], None] = print) -> ChaosReport:
    from harness.launcher import down, free_base_port, up

    owned_dir = cfg.run_dir is None
    run_dir = Path(tempfile.mkdtemp(prefix="raftkv-chaos-")) if owned_dir else cfg.run_dir
    run_dir = run_dir.resolve()
    report = ChaosReport(run_dir=str(run_dir))
    log(f"chaos: seed {cfg.seed}, {cfg.nodes} nodes, {cfg.clients} clients, {cfg.keys} keys, "
        f"{cfg.workload} workload, {cfg.run_time:g}s, nemesis {','.join(cfg.nemesis)}, "
        f"state in {cfg.state}; run dir {run_dir}")
    cluster_dir = run_dir / "cluster"
    try:
        state, _ = up(cluster_dir, nodes=cfg.nodes, base_port=free_base_port(cfg.nodes),
                      progress=log, node_options=("--state", cfg.state))
        if cfg.preload:
            preload(state, cfg.preload, log)
        history = drive(cfg, state, run_dir, report, log)
        check_history(cfg, state, history, run_dir, report, log)
    except RecoveryFailed as e:
        report.verdict = "unrecovered"
        report.problems.append(str(e))
    finally:
        down(cluster_dir, grace=3.0)
    print_summary(report, log)
    return report


class RecoveryFailed(Exception):
    pass


def preload(state, keys: int, log: Callable[[str], None]) -> None:
    """Write `keys` filler keys (bench keys, which the clients never touch) through the
    leader, 64 in flight."""
    from harness.launcher import find_leader
    from harness.loadgen import Route, fill_keys

    ctx = zmq.Context()
    try:
        t0 = time.monotonic()
        ids = tuple(state.addresses)
        found = find_leader(ctx, state.addresses, timeout=2.0)
        first = ids.index(found[0]) if found and found[0] in ids else 0  # NOT_LEADER re-routes
        fill_keys(ctx, Route(tuple(state.addresses[i] for i in ids), ids, first), keys,
                  PRELOAD_VALUE)
        log(f"chaos: preloaded {keys:,} keys of {PRELOAD_VALUE} bytes in "
            f"{time.monotonic() - t0:.1f}s")
    finally:
        ctx.destroy(linger=0)


def drive(cfg: ChaosConfig, state, run_dir: Path, report: ChaosReport,
          log: Callable[[str], None]) -> list[dict]:
    from harness.nemesis import Nemesis, make_schedule

    stop_at = time.monotonic_ns() + int(cfg.run_time * 1e9)
    mp = multiprocessing.get_context("spawn")
    # Members come and go under the membership nemesis: clients then go through the
    # controller, the one address that stays.
    addresses = (state.controller.address if "membership" in cfg.nemesis
                 else state.addresses)
    watcher = Watcher(addresses, start_revision(addresses))
    coordination = Coordination(addresses, cfg.seed) if cfg.coordination else None
    workers = [mp.Process(target=WORKERS[cfg.workload],
                          args=(w, addresses, cfg.keys, stop_at,
                                str(run_dir / f"client{w}.jsonl"), cfg.seed))
               for w in range(1, cfg.clients + 1)]
    nemesis = Nemesis(state.controller.address, [n.id for n in state.nodes], log=log)
    first_term = (nemesis.command("status") or {}).get("term") or 0
    for w in workers:
        w.start()
    thread = threading.Thread(target=nemesis.run,
                              args=(make_schedule(cfg.seed, cfg.nemesis, cfg.run_time),),
                              daemon=True)
    thread.start()
    try:
        for w in workers:
            w.join(timeout=cfg.run_time + 4 * OP_TIMEOUT + 30)
    finally:
        nemesis.stop()
        thread.join(timeout=30)
        for w in workers:
            if w.is_alive():
                w.kill()
                w.join()
        nemesis.heal_all()
        if coordination is not None:
            coordination.stop()
    report.faults = dict(nemesis.injected)
    state = ClusterState.load(state.dir) or state  # the members now, after any change
    try:
        final_reads = recover(cfg, state, nemesis, log)
        report.elections = max(0, ((nemesis.command("status") or {}).get("term") or 0)
                               - first_term)
    finally:
        nemesis.close()
    history = []
    for w in range(1, cfg.clients + 1):
        path = run_dir / f"client{w}.jsonl"
        if path.exists():
            history += [json.loads(line) for line in path.read_text().splitlines() if line]
    history += final_reads
    history.sort(key=lambda op: op["invoke"])
    with open(run_dir / "history.jsonl", "w") as f:
        for op in history:
            f.write(json.dumps(op) + "\n")
    end = end_revision(state.addresses)
    if not watcher.finish(end, RECOVERY_TIMEOUT):
        report.problems.append(f"the watch did not reach revision {end} within "
                               f"{RECOVERY_TIMEOUT:g}s after recovery (it got to "
                               f"{watcher.events[-1][0] if watcher.events else None})")
    with open(run_dir / "watch.jsonl", "w") as f:
        for event in watcher.events:
            f.write(json.dumps(event) + "\n")
    if watcher.compacted:
        log(f"watch: COMPACTED asking from {watcher.compacted}; checked the events below "
            "it")
    log(f"watch: {len(watcher.events)} events")
    report.problems += watch_problems(watcher, history)
    if coordination is not None:
        report.problems += coordination.problems(run_dir, log)
    return history


def start_revision(addresses: dict[int, str] | str) -> int:
    """A revision to watch from: the one after a write made now."""
    from raftkv import Client

    with Client(addresses, timeout=RECOVERY_TIMEOUT) as kv:
        return kv.put("chaos:watch-start", "") + 1


def end_revision(addresses: dict[int, str]) -> int:
    """The revision of a write to a watched key made once the run is over."""
    from raftkv import Client

    with Client(addresses, timeout=RECOVERY_TIMEOUT) as kv:
        return kv.put(WATCH_END_KEY, "end")


def recover(cfg: ChaosConfig, state, nemesis, log: Callable[[str], None]) -> list[dict]:
    """Wait until the healed cluster takes a write, then read every key once (recorded as
    the history's last operations). Raises RecoveryFailed after RECOVERY_TIMEOUT."""
    from raftkv import Client, RaftKVError

    deadline = time.monotonic() + RECOVERY_TIMEOUT
    with Client(state.addresses, timeout=RECOVERY_TIMEOUT) as kv:
        while True:
            try:
                kv.put("chaos:recovered", "yes")
                break
            except RaftKVError as e:
                if time.monotonic() > deadline:
                    raise RecoveryFailed(f"no write succeeded within {RECOVERY_TIMEOUT:g}s "
                                         f"after healing: {e}") from e
                nemesis.heal_all()
        if "membership" in cfg.nemesis:
            nemesis.remove_non_members()  # a node whose add failed half way
        log(f"recovered: a write succeeded {RECOVERY_TIMEOUT - (deadline - time.monotonic()):.1f}"
            "s after healing")
        reads = []
        for k in range(cfg.keys):
            invoke = time.monotonic_ns()
            if cfg.workload == "txn":  # the record, revisions and all
                found = kv.get_kv(f"k{k}")
                output: object = None if found is None else [
                    found.value.decode(), *found[1:]]
            else:
                value = kv.get(f"k{k}")
                output = value.decode() if value is not None else None
            reads.append({"client": 0, "op": "get_kv" if cfg.workload == "txn" else "get",
                          "key": f"k{k}", "input": None, "output": output,
                          "status": "ok", "invoke": invoke, "complete": time.monotonic_ns()})
    return reads


def check_history(cfg: ChaosConfig, state, history: list[dict], run_dir: Path,
                  report: ChaosReport, log: Callable[[str], None]) -> None:
    from harness import checker

    state = ClusterState.load(state.dir) or state  # the members now, after any change
    for status in ("ok", "fail", "info"):
        report.ops[status] = sum(1 for op in history if op["status"] == status)
    report.longest_unavailable_s = longest_gap(history)
    log(f"checking {len(history)} operations for linearizability ...")
    result = checker.check(checker.load_history(run_dir / "history.jsonl"),
                           timeout_s=cfg.check_timeout,
                           model="revisions" if cfg.workload == "txn" else "register")
    report.linearizability = result.verdict
    if result.verdict == "violation":
        report.verdict = "violation"
        report.problems.append("not linearizable:\n" + result.explain())
    elif result.verdict == "unknown":
        report.problems.append(f"linearizability unknown: {result.reason}")
    if cfg.workload != "txn":  # the txn history's final get_kv reads check that
        report.problems += lost_writes(history)
    report.problems += divergent_nodes(state, cfg.keys)
    if report.verdict == "ok" and report.problems:
        report.verdict = "violation"


def lost_writes(history: list[dict]) -> list[str]:
    """An acknowledged write must be what the final read sees, or be followed (or
    overlapped) by another write that may have replaced it."""
    problems = []
    final = {op["key"]: op for op in history if op["client"] == 0}
    for key, read in final.items():
        writes = [op for op in history if op["key"] == key and op["status"] != "fail"
                  and op["client"] != 0 and op["op"] in ("put", "delete", "cas")]
        acked = [op for op in writes if op["status"] == "ok" and op["op"] == "put"]
        if not acked:
            continue
        last = max(acked, key=lambda op: op["complete"])
        if read["output"] == last["input"]:
            continue
        # Some write invoked before the final read and not finished before `last` began
        # may legally have replaced it.
        replacers = [op for op in writes if op is not last and op["invoke"] < read["invoke"]
                     and (op["complete"] is None or op["complete"] > last["invoke"])]
        if not replacers:
            problems.append(f"lost write: {key}={last['input']!r} (client {last['client']}) "
                            f"was acknowledged, but the final read saw {read['output']!r} "
                            "and no later write explains it")
    return problems


def divergent_nodes(state, keys: int) -> list[str]:
    """Every node's applied state is the same once all caught up with the leader."""
    from harness import rpc
    from harness.launcher import find_leader
    from raftkv.wire import ClientRequest, ReqOp

    with zmq.Context() as ctx:
        addresses = members(ctx, state)

        def statuses() -> dict[int, dict]:
            out = {}
            for node_id, address in addresses.items():
                r = rpc.call(ctx, address, ClientRequest(rpc.next_request_id(), ReqOp.STATUS))
                if r is not None:
                    out[node_id] = r.value
            return out

        deadline = time.monotonic() + 20
        while True:
            st = statuses()
            applied = {s["applied_index"] for s in st.values()}
            if len(st) == len(addresses) and len(applied) == 1:
                break
            if time.monotonic() > deadline:
                return [f"nodes did not converge within 20 s: applied indexes "
                        f"{ {i: s['applied_index'] for i, s in st.items()} }"]
            time.sleep(0.1)
        leader = find_leader(ctx, addresses)
        problems = []
        for k in range(keys):
            values = {}
            for node_id, address in addresses.items():
                r = rpc.call(ctx, address, ClientRequest(rpc.next_request_id(),
                                                         ReqOp.GET_STALE, key=f"k{k}".encode()))
                values[node_id] = r.value if r is not None else "<no answer>"
            if len(set(values.values())) > 1:
                problems.append(f"nodes disagree on k{k} at applied index {applied}: {values} "
                                f"(leader {leader})")
        return problems


def members(ctx: zmq.Context, state) -> dict[int, str]:
    """The nodes of cluster.json that the leader counts as members (a node whose
    add-node failed half way runs but is no member, and has nothing to converge to)."""
    from harness.launcher import leader_of, node_statuses

    statuses = node_statuses(ctx, state.addresses)
    found = leader_of(statuses)
    if found is None:
        return state.addresses
    st = statuses[found[0]]
    ids = set(st.get("voters", ())) | set(st.get("learners", ()))
    return {i: a for i, a in state.addresses.items() if i in ids}


def longest_gap(history: list[dict]) -> float:
    """The longest time without any operation completing successfully, in seconds."""
    done = sorted(op["complete"] for op in history if op["status"] == "ok" and op["client"])
    if len(done) < 2:
        return 0.0
    return round(max(b - a for a, b in zip(done, done[1:], strict=False)) / 1e9, 3)


def print_summary(r: ChaosReport, log: Callable[[str], None]) -> None:
    log("")
    log(f"ops: {r.ops.get('ok', 0)} ok, {r.ops.get('fail', 0)} failed, "
        f"{r.ops.get('info', 0)} unknown")
    log(f"faults injected: {', '.join(f'{k} x{v}' for k, v in sorted(r.faults.items())) or '-'}")
    log(f"elections (term increase): {r.elections}; longest unavailability: "
        f"{r.longest_unavailable_s:.2f}s")
    log(f"linearizability: {r.linearizability or '-'}")
    for p in r.problems:
        log(f"PROBLEM: {p}")
    log(f"verdict: {r.verdict.upper()}   (history and logs in {r.run_dir})")
