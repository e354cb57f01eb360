"""Start and stop clusters of node processes on this host.

- `up` / `down`: the detached cluster of `raftkv up`, recorded in `DIR/cluster.json`
  (see cluster_state.py); it outlives the command, and `up` on a dir with data brings the
  same nodes back with their data.
- `LocalCluster`: node processes that are children of the caller, for tests and the
  benchmark; cleaned up by pid (never by name).
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from harness import rpc
from harness.cluster_state import (
    ClusterState,
    NodeEntry,
    ProcEntry,
    create_time,
    live_process,
    new_cluster_id,
    node_argv,
    python_argv,
    record_first_starts,
    spawn,
    stop_process,
)
from raftkv.security import ADMIN, KEYS_SUBDIR, Credentials, make_keys, use_credentials
from raftkv.server import EXIT_STORAGE
from raftkv.wire import ClientReply, ClientRequest, ReplyCode, ReqOp

DEFAULT_BASE_PORT = 7700
LEADER_TIMEOUT = 10.0


class LaunchError(Exception):
    """`up` could not bring the cluster up; the message says why and what to do.
    `storage`: a node refused its data dir (it exited with EXIT_STORAGE)."""

    def __init__(self, message: str, *, storage: bool = False) -> None:
        super().__init__(message)
        self.storage = storage


def free_ports(n: int, avoid: frozenset[int] = frozenset()) -> list[int]:
    """`n` distinct ports free now, none of them in `avoid` (ports a caller is about to
    give to something else: a cluster's node ports, which the kernel may hand out too)."""
    socks = []
    try:
        while len(socks) < n + len(avoid):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            if sum(x.getsockname()[1] not in avoid for x in socks) == n:
                break
        return [p for s in socks if (p := s.getsockname()[1]) not in avoid][:n]
    finally:
        for s in socks:
            s.close()


def port_in_use(address: str) -> bool:
    """Whether a process listens on `address`. SO_REUSEADDR, as ZeroMQ's own bind uses,
    so connections of a stopped process lingering in TIME_WAIT do not count."""
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError:
            return True
    return False


def ephemeral_ports() -> range:
    """The ports the kernel hands to outgoing connections (Linux's ip_local_port_range;
    its default elsewhere)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32_768, 60_999
    return range(low, high + 1)


def free_base_port(n: int) -> int:
    """A base port p with p .. p + n all free (controller and n nodes), for runs that must
    not collide with a cluster on the default ports. Below the ephemeral range: a port
    free when checked there could be taken by any outgoing connection before the node
    binds it (found by CI: a chaos run's node 5 exited with "Address already in use")."""
    rng = random.Random()
    low = ephemeral_ports().start
    top = low if low > 20_000 + n + 1 else 60_000  # no room below: take the old range
    for _ in range(500):
        base = rng.randrange(20_000, top - n)
        if not any(port_in_use(f"tcp://127.0.0.1:{base + i}") for i in range(n + 1)):
            return base
    raise LaunchError(f"found no run of {n + 1} free ports")


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll `cond` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def node_statuses(ctx: zmq.Context, addresses: dict[int, str], timeout: float = 0.5,
                  credentials: Credentials | None = None) -> dict[int, dict]:
    """The STATUS map of every node that answers within `timeout`."""
    found = {}
    for node_id, address in addresses.items():
        r = rpc.call(ctx, address, ClientRequest(rpc.next_request_id(), ReqOp.STATUS), timeout,
                     credentials)
        if r is not None and r.code == ReplyCode.OK:
            found[node_id] = r.value
    return found


def leader_of(statuses: dict[int, dict]) -> tuple[int, int] | None:
    """(leader id, term): the highest-term node that claims to lead."""
    claims = [(st["term"], node_id) for node_id, st in statuses.items()
              if st.get("role") == "leader"]
    return (max(claims)[1], max(claims)[0]) if claims else None


def find_leader(ctx: zmq.Context, addresses: dict[int, str], timeout: float = 0.5,
                credentials: Credentials | None = None) -> tuple[int, int] | None:
    """(leader id, term) from the nodes' own STATUS answers: the highest-term claimant."""
    return leader_of(node_statuses(ctx, addresses, timeout, credentials))


# -- up / down -------------------------------------------------------------------------------

def new_cluster(cluster_dir: Path, nodes: int, base_port: int, fsync: bool,
                host: str = "127.0.0.1", node_options: tuple[str, ...] = (),
                secure: bool = True) -> ClusterState:
    """A new cluster's record: a random cluster id, and every node's command line for
    its first start (--new: see cluster_state.FIRST_START_FLAGS), ending in
    `node_options` (kept for every later start). `secure`: its keys are made in
    DIR/keys (raftkv.security); otherwise every node runs --insecure."""
    addresses = {i: f"tcp://{host}:{base_port + i}" for i in range(1, nodes + 1)}
    # Metrics ports: free ones the kernel picks now, kept in cluster.json so `up` reuses
    # them (a node whose metrics port got taken meanwhile runs on without /metrics).
    # Not the cluster's own ports: a node's metrics port equal to another node's listen
    # port left one of them without /metrics (found by CI).
    metrics = free_ports(nodes + 1, avoid=frozenset(base_port + i for i in range(nodes + 1)))
    state = ClusterState(
        cluster_dir, fsync,
        ProcEntry(f"tcp://{host}:{base_port}", "logs/controller.log",
                  python_argv("controller", "--dir", str(cluster_dir),
                              "--metrics-port", str(metrics[0])),
                  metrics_port=metrics[0]),
        cluster_id=new_cluster_id(), secure=secure,
    )
    if secure:
        make_keys(state.keys_dir, list(addresses))
    for i, address in addresses.items():
        data_dir = cluster_dir / "data" / f"node{i}"
        state.nodes.append(NodeEntry(address, f"logs/node{i}.log",
                                     node_argv(i, address, addresses, data_dir, fsync=fsync,
                                               voters=tuple(addresses),
                                               metrics_port=metrics[i],
                                               cluster_id=state.cluster_id, new=True,
                                               keys_dir=state.keys_dir if secure else None,
                                               insecure=not secure, extra=node_options),
                                     metrics_port=metrics[i], id=i,
                                     data_dir=f"data/node{i}"))
    return state


def check_port_free(address: str) -> None:
    if port_in_use(address):
        raise LaunchError(f"port {address.rpartition(':')[2]} ({address}) is in use by "
                          "another program; stop it, or pick other ports with --base-port "
                          "on a new --dir")


def start_process(state: ClusterState, entry: ProcEntry) -> subprocess.Popen | None:
    """Start `entry` unless its process still runs. Returns the process it started."""
    if live_process(entry.pid, entry.create_time) is not None:
        return None
    check_port_free(entry.address)
    proc = spawn(entry.argv, state.dir / entry.log, detach=True)
    entry.pid, entry.create_time = proc.pid, create_time(proc.pid)
    state.save()
    return proc


def check_started(state: ClusterState,
                  started: list[tuple[ProcEntry, subprocess.Popen]]) -> None:
    """Fail with the exit code and log tail of any process that exited after starting;
    a node's log ends with why (for a refused data dir, also how to recover)."""
    for entry, proc in started:
        code = proc.poll()
        if code is not None:
            raise exited_at_start(state, entry, code)


def exited_at_start(state: ClusterState, entry: ProcEntry, code: int) -> LaunchError:
    """The error for process `entry` that exited with `code` as it started: its name,
    the code, and the end of its log."""
    name = f"node {entry.id}" if isinstance(entry, NodeEntry) else "the controller"
    storage = isinstance(entry, NodeEntry) and code == EXIT_STORAGE
    why = " (its data dir is unusable)" if storage else ""
    log = state.dir / entry.log
    tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
    return LaunchError(f"{name} ({entry.address}) exited at start with code {code}{why}; "
                       f"the end of {log}:\n  " + "\n  ".join(tail), storage=storage)


def up(cluster_dir: Path, *, nodes: int = 3, base_port: int = DEFAULT_BASE_PORT,
       fsync: bool = True, timeout: float = LEADER_TIMEOUT,
       progress: Callable[[str], None] = lambda _: None,
       node_options: tuple[str, ...] = (), secure: bool = True) -> tuple[ClusterState, bool]:
    """Bring the cluster in `cluster_dir` up. Returns (state, whether anything started).

    A dir without a cluster gets a new one (a random cluster id; each node's first start
    may create its data dir); a dir with one restarts whatever is not running, with its
    data, and a node whose data dir is gone refuses to start. Raises LaunchError on a
    busy port, a process that exits at start (`storage` set when a node refused its data
    dir), or no leader in `timeout`. `node_options` (`raftkv node` options) go to every
    node of a new cluster; an existing one keeps the options it was made with, and its
    security (`secure`: keys made in DIR/keys, or every node --insecure). From then on
    this process speaks with the cluster's admin key (`ClusterState.use_keys`)."""
    cluster_dir = Path(cluster_dir).resolve()
    cluster_dir.mkdir(parents=True, exist_ok=True)
    state = ClusterState.load(cluster_dir)
    if state is None:
        state = new_cluster(cluster_dir, nodes, base_port, fsync, node_options=node_options,
                            secure=secure)
        state.save()
    elif not state.cluster_id:
        state.adopt_cluster_id(new_cluster_id())
        state.save()
    state.use_keys()
    # Check every port first, so a busy one leaves nothing half started.
    for entry in [*state.nodes, state.controller]:
        if live_process(entry.pid, entry.create_time) is None:
            check_port_free(entry.address)
    started: list[tuple[ProcEntry, subprocess.Popen]] = []
    for entry in [*state.nodes, state.controller]:
        proc = start_process(state, entry)
        if proc is not None:
            started.append((entry, proc))
    if not started:
        return state, False
    progress(f"started {len(started)} process(es); waiting for a leader ...")
    # Up means: a leader, and every node started here answering (a node that dies while
    # starting, say on a bad data dir, is reported even if the others elected a leader).
    started_ids = {e.id for e, _ in started if isinstance(e, NodeEntry)}
    with zmq.Context() as ctx:
        deadline = time.monotonic() + timeout
        while True:
            check_started(state, started)  # one that exited at start is reported at once
            statuses = node_statuses(ctx, state.addresses, credentials=state.credentials())
            record_first_starts(state, statuses.keys())
            if leader_of(statuses) is not None and started_ids <= statuses.keys():
                break
            if time.monotonic() > deadline:
                silent = sorted(started_ids - statuses.keys())
                what = (f"node(s) {', '.join(map(str, silent))} did not answer"
                        if leader_of(statuses) else "no leader elected")
                raise LaunchError(f"{what} within {timeout:g}s; see the logs in "
                                  f"{cluster_dir / 'logs'}")
            time.sleep(0.05)
    return state, True


def down(cluster_dir: Path, grace: float = 5.0) -> list[str]:
    """Stop the controller and every node (SIGTERM, SIGKILL after `grace` s). Data stays.
    Returns what was stopped; an empty list when nothing ran (idempotent)."""
    state = ClusterState.load(Path(cluster_dir).resolve())
    if state is None:
        return []
    stopped = []
    for name, entry in [("controller", state.controller),
                        *[(f"node {n.id}", n) for n in state.nodes]]:
        if stop_process(entry.pid, entry.create_time, grace):
            stopped.append(name)
        entry.pid, entry.create_time = 0, 0.0
    state.save()
    return stopped


# -- LocalCluster: child processes for tests and benchmarks ---------------------------------

@dataclass
class NodeProc:
    id: int
    address: str
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen | None = None
    started: bool = False  # started before: its data dir must exist (no --new)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalCluster:
    def __init__(self, n: int, root: Path, *, fsync: bool = True,
                 extra_args: tuple[str, ...] = (), secure: bool = True) -> None:
        ports = free_ports(n)
        self.root = root
        # Secure by default, as `up` is: keys in root/keys, and from now on this process
        # speaks with the admin key (as after `up`), so that a test's clients find it as
        # a user's do.
        self.keys_dir: Path | None = root / KEYS_SUBDIR if secure else None
        self.credentials: Credentials | None = None
        if self.keys_dir is not None:
            make_keys(self.keys_dir, list(range(1, n + 1)))
            self.credentials = Credentials.load(self.keys_dir, ADMIN)
            use_credentials(self.keys_dir)
        self.fsync = fsync
        self.cluster_id = new_cluster_id()
        self.extra_args = extra_args
        self.nodes = {
            i: NodeProc(i, f"tcp://127.0.0.1:{ports[i - 1]}", root / f"node{i}",
                        root / f"node{i}.log")
            for i in range(1, n + 1)
        }
        self.ctx = zmq.Context()

    @property
    def addresses(self) -> dict[int, str]:
        return {i: n.address for i, n in self.nodes.items()}

    def start(self, i: int) -> None:
        """Start node `i`: its first start may create its data dir, later ones may not."""
        node = self.nodes[i]
        argv = node_argv(i, node.address, self.addresses, node.data_dir, fsync=self.fsync,
                         extra=self.extra_args, cluster_id=self.cluster_id,
                         new=not node.started, keys_dir=self.keys_dir,
                         insecure=self.keys_dir is None)
        node.proc = spawn(argv, node.log_path, detach=False)
        node.started = True

    def start_all(self) -> None:
        for i in self.nodes:
            self.start(i)

    def kill(self, i: int) -> None:
        """SIGKILL: the process gets no chance to flush or sync anything."""
        node = self.nodes[i]
        if node.proc is not None:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(timeout=10)
            node.proc = None

    def stop(self, i: int) -> int:
        """SIGTERM and wait; returns the exit code."""
        node = self.nodes[i]
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
        code = node.proc.wait(timeout=10)
        node.proc = None
        return code

    def close(self) -> None:
        for i in self.nodes:
            self.kill(i)
        self.ctx.destroy(linger=0)

    def call_raw(self, i: int, frame: bytes, timeout: float = 2.0) -> ClientReply | None:
        return rpc.call_raw(self.ctx, self.nodes[i].address, frame, timeout, self.credentials)

    def request(self, i: int, op: ReqOp, **fields: Any) -> ClientReply | None:
        req = ClientRequest(rpc.next_request_id(), op, **fields)
        return rpc.call(self.ctx, self.nodes[i].address, req, credentials=self.credentials)

    def status(self, i: int) -> dict | None:
        if not self.nodes[i].alive:
            return None
        r = self.request(i, ReqOp.STATUS)
        return r.value if r is not None else None

    def leader(self) -> int | None:
        live = {i: n.address for i, n in self.nodes.items() if n.alive}
        found = find_leader(self.ctx, live, timeout=2.0, credentials=self.credentials)
        return found[0] if found else None

    def wait_leader(self, timeout: float = 10.0, exclude: int | None = None) -> int:
        return wait_for(lambda: (lambda ld: ld if ld and ld != exclude else None)(self.leader()),
                        timeout, "a leader")
