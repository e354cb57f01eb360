"""`DIR/cluster.json` and the processes it names.

The file is the one record of a cluster started by `raftkv up`: its id, ids, addresses,
the command line of every process, and the pid and create time of the process now running
it.
A pid is only ever signalled when psutil reports the same create time, so a pid reused by
an unrelated process after ours died is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from raftkv.security import ADMIN, KEYS_SUBDIR, Credentials, use_credentials

FILE_NAME = "cluster.json"
FORMAT_VERSION = 1
REPO = Path(__file__).resolve().parents[1]


@dataclass
class ProcEntry:
    """One process of the cluster: what to run, and what runs it now (pid 0: nothing)."""

    address: str
    log: str  # relative to the cluster dir
    argv: list[str]
    pid: int = 0
    create_time: float = 0.0
    metrics_port: int = 0  # Prometheus /metrics on the address's host (0: none)


@dataclass
class NodeEntry(ProcEntry):
    id: int = 0
    data_dir: str = ""  # relative to the cluster dir


@dataclass
class ClusterState:
    dir: Path
    fsync: bool
    controller: ProcEntry
    nodes: list[NodeEntry] = field(default_factory=list)
    # Every node is started with it (--cluster-id) and its data dir records it. 0: a
    # cluster.json of an older raftkv, until `up` gives it one (`adopt_cluster_id`).
    cluster_id: int = 0
    # Whether the cluster's processes admit only the keys in `keys_dir` (raftkv.security).
    # False: --insecure, or a cluster.json of an older raftkv, which has no keys.
    secure: bool = False

    @property
    def keys_dir(self) -> Path:
        return self.dir / KEYS_SUBDIR

    def credentials(self, name: str = ADMIN) -> Credentials | None:
        """Key `name`'s credentials (the admin key by default); None if not secure."""
        return Credentials.load(self.keys_dir, name) if self.secure else None

    def use_keys(self) -> None:
        """This process speaks with the cluster's admin key from now on
        (security.use_credentials); nothing for an insecure cluster."""
        if self.secure:
            use_credentials(self.keys_dir)

    @property
    def state_kind(self) -> str:
        """Where the nodes keep the replicated state (`raftkv node --state`)."""
        return (option_value(self.nodes[0].argv, "--state") if self.nodes else None) or "memory"

    def node(self, node_id: int) -> NodeEntry:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(f"no node {node_id} in {self.dir / FILE_NAME} "
                       f"(nodes: {', '.join(str(n.id) for n in self.nodes)})")

    @property
    def addresses(self) -> dict[int, str]:
        return {n.id: n.address for n in self.nodes}

    @property
    def initial_voters(self) -> tuple[int, ...] | None:
        """The cluster's initial voters, as the nodes' --voters name them (None: none
        does, so a joined node cannot be settled: `settled_argv`)."""
        for n in self.nodes:
            voters = option_value(n.argv, "--voters")
            if voters is not None:
                return tuple(int(v) for v in voters.split(","))
        return None

    def settle(self, node_ids: Collection[int]) -> bool:
        """Record that nodes `node_ids` have had their first start (FIRST_START_FLAGS).
        Returns whether a command line changed."""
        changed = False
        voters = self.initial_voters
        for n in self.nodes:
            if n.id in node_ids and is_first_start(n.argv):
                settled = settled_argv(n.argv, voters)
                changed |= settled != n.argv
                n.argv = settled
        return changed

    def adopt_cluster_id(self, cluster_id: int) -> None:
        """Give a cluster.json of an older raftkv (no cluster id) `cluster_id`. Every
        node in it has had its first start (an older `up` or add-node started each one
        as it recorded it), so each command line is settled too; each data dir records
        the id at the node's next start."""
        self.cluster_id = cluster_id
        self.settle({n.id for n in self.nodes})
        for n in self.nodes:
            n.argv = _strip_options(n.argv, ("--cluster-id",)) + [
                "--cluster-id", format_cluster_id(cluster_id)]

    def save(self) -> None:
        """Write atomically: a reader sees the old file or the new one, never half."""
        data = {"version": FORMAT_VERSION, "fsync": self.fsync,
                "cluster_id": format_cluster_id(self.cluster_id),
                "secure": self.secure,
                "controller": asdict(self.controller),
                "nodes": [asdict(n) for n in self.nodes]}
        # `up` and the controller both save: each writes its own temp file, or one
        # could rename the other's away from under it.
        tmp = self.dir / f"{FILE_NAME}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.dir / FILE_NAME)

    @classmethod
    def load(cls, cluster_dir: Path) -> ClusterState | None:
        """The cluster recorded in `cluster_dir`, or None when there is none."""
        path = Path(cluster_dir) / FILE_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} is unreadable: {e}") from e
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path} has format version {data.get('version')!r}; this raftkv "
                             f"reads version {FORMAT_VERSION}")
        try:
            cluster_id = int(data.get("cluster_id", "0"), 16)  # absent: an older raftkv's
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path} has an unreadable cluster_id: {e}") from e
        return cls(Path(cluster_dir).resolve(), bool(data["fsync"]),
                   ProcEntry(**data["controller"]),
                   [NodeEntry(**n) for n in data["nodes"]], cluster_id,
                   bool(data.get("secure", False)))


def record_started(cluster_dir: Path, node_ids: Collection[int]) -> None:
    """`ClusterState.settle` on cluster.json as it is now (others write it too: `up`,
    the controller), written back only if a command line changed."""
    state = ClusterState.load(cluster_dir)
    if state is not None and state.settle(node_ids):
        state.save()


def record_first_starts(state: ClusterState, node_ids: Collection[int]) -> bool:
    """Nodes `node_ids` answered: their first start is over. Their command lines are
    settled (FIRST_START_FLAGS) in `state` and in cluster.json; whether any changed."""
    if not state.settle(node_ids):
        return False
    record_started(state.dir, node_ids)
    return True


def new_cluster_id() -> int:
    """A random, nonzero 64-bit cluster id (0 means "unchecked" to a node)."""
    return secrets.randbits(64) or 1


def format_cluster_id(cluster_id: int) -> str:
    """As `raftkv node --cluster-id` takes it and the data dir's FORMAT file shows it."""
    return f"{cluster_id:x}"


def python_argv(*args: str) -> list[str]:
    """A command line that runs the raftkv CLI with this interpreter."""
    return [sys.executable, "-m", "harness.cli", *args]


def server_argv(*args: str) -> list[str]:
    """A command line that runs the store's own entry point (raftkv/server.py)."""
    return [sys.executable, "-m", "raftkv.server", *args]


def node_argv(node_id: int, address: str, peers: dict[int, str], data_dir: Path,
              *, fsync: bool = True, extra: tuple[str, ...] = (),
              voters: tuple[int, ...] | None = None, metrics_port: int = 0,
              cluster_id: int = 0, new: bool = False, keys_dir: Path | None = None,
              insecure: bool = False) -> list[str]:
    """The command line of one node: exactly what `raftkv node` takes. `voters`: the
    cluster's initial voters; () joins a running cluster (--join, which also lets the
    data dir be created); None leaves it to the node (itself and its peers). `new`: the
    node's first start in a new cluster (--new). `cluster_id`: 0 leaves it unchecked.
    `keys_dir` (--keys) or `insecure` (--insecure): the node needs one of them, here or
    in `extra`."""
    argv = server_argv("node", "--id", str(node_id), "--listen", address,
                       "--data-dir", str(data_dir), *peer_options(node_id, peers))
    if voters == ():
        argv.append("--join")
    elif voters is not None:
        argv += ["--voters", ",".join(map(str, sorted(voters)))]
    if new:
        argv.append("--new")
    if cluster_id:
        argv += ["--cluster-id", format_cluster_id(cluster_id)]
    if not fsync:
        argv.append("--no-fsync")
    if metrics_port:
        argv += ["--metrics-port", str(metrics_port)]
    if keys_dir is not None:
        argv += ["--keys", str(keys_dir)]
    if insecure:
        argv.append("--insecure")
    return argv + list(extra)


# Options of `raftkv node` that name the node, its peers or its start; each takes a value.
_IDENTITY_OPTIONS = ("--id", "--listen", "--data-dir", "--peer", "--voters", "--metrics-port")

# The first start. A recorded command line carries --new (a node of a new cluster) or
# --join (a node being added) until the node has been seen up once: answering STATUS to
# `up` or to the controller's polls, or listening after add-node started it. A node is up
# only after Storage.open made its data dir durable with its identity in it, so from then
# on that dir must exist: the command line is settled (`settled_argv`), and a node whose
# dir vanishes refuses to start instead of coming back with no term, vote or log. (The
# dir's own FORMAT file cannot say this: a dir that is gone says nothing.)
FIRST_START_FLAGS = ("--new", "--join")


def is_first_start(argv: list[str]) -> bool:
    """Whether `argv` is a node's command line for its first start."""
    return any(flag in argv for flag in FIRST_START_FLAGS)


def settled_argv(argv: list[str], initial_voters: tuple[int, ...] | None) -> list[str]:
    """A node's command line for every start after the first: without --new and --join.
    A joined node gets the cluster's initial voters in place of --join, the same as every
    member's: they matter only while its log and snapshot name no configuration, and a
    node not among them is no voter then. With `initial_voters` unknown, --join stays:
    with neither, the node would count itself and its peers as the voters."""
    if "--join" in argv and initial_voters is not None:
        return _strip_options(argv, (), FIRST_START_FLAGS) + [
            "--voters", ",".join(map(str, sorted(initial_voters)))]
    return _strip_options(argv, (), ("--new",))


def option_value(argv: list[str], name: str) -> str | None:
    """The value of option `name` in `argv` (the last one given), or None."""
    found = None
    for i, arg in enumerate(argv[:-1]):
        if arg == name:
            found = argv[i + 1]
    return found


def _strip_options(argv: list[str], names: tuple[str, ...], flags: tuple[str, ...] = ()
                   ) -> list[str]:
    """`argv` without the options `names` (and their values) and the flags `flags`."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in names:
            i += 2
        else:
            if argv[i] not in flags:
                out.append(argv[i])
            i += 1
    return out


def peer_options(node_id: int, peers: dict[int, str]) -> list[str]:
    return [x for pid, addr in sorted(peers.items()) if pid != node_id
            for x in ("--peer", f"{pid}={addr}")]


def with_peers(argv: list[str], node_id: int, peers: dict[int, str]) -> list[str]:
    """A node's command line with its --peer options replaced by `peers`: how the other
    members' command lines follow a membership change, so that a restarted node knows
    every member's address."""
    return _strip_options(argv, ("--peer",)) + peer_options(node_id, peers)


def joiner_argv(template: list[str], node_id: int, address: str, peers: dict[int, str],
                data_dir: Path, metrics_port: int = 0) -> list[str]:
    """The command line of a node joining the cluster, from a member's (`template`): its
    options (fsync, snapshot thresholds, the cluster id, ...), its own identity, every
    member as a peer, and --join in place of the initial voters (its first start: see
    FIRST_START_FLAGS)."""
    options = _strip_options(template[template.index("node") + 1:], _IDENTITY_OPTIONS,
                             FIRST_START_FLAGS)
    return node_argv(node_id, address, peers, data_dir, voters=(),
                     metrics_port=metrics_port) + options


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    return env


def spawn(argv: list[str], log_path: Path, *, detach: bool) -> subprocess.Popen:
    """Start `argv` with its output appended to `log_path`. A detached process gets its own
    session, so it outlives the terminal and the command that started it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=child_env(), cwd=REPO,
                                start_new_session=detach, close_fds=True)


def create_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


def live_process(pid: int, created: float) -> psutil.Process | None:
    """The process `pid` if it is still the one created at `created` and not a zombie."""
    if pid <= 0:
        return None
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - created) > 0.05 or p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except psutil.Error:
        return None


def signal_process(pid: int, created: float, sig: int) -> bool:
    """Send `sig` to `pid` only if it is still our process. Returns whether it was sent."""
    p = live_process(pid, created)
    if p is None:
        return False
    try:
        p.send_signal(sig)
        return True
    except psutil.Error:
        return False


def stop_process(pid: int, created: float, grace: float = 5.0) -> bool:
    """SIGTERM, then SIGKILL after `grace` seconds. Returns whether it had been running.

    A process that exited counts as gone while still a zombie: one whose parent is not
    this process is reaped by its own parent (or init) whenever that gets to it."""
    p = live_process(pid, created)
    if p is None:
        return False
    try:
        p.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        p.terminate()
        if not wait_gone(pid, created, grace):
            p.kill()
            wait_gone(pid, created, grace)
    except psutil.Error:
        pass
    with contextlib.suppress(psutil.Error):
        p.wait(timeout=0)  # reaps it if it is our child
    return True


def wait_gone(pid: int, created: float, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while live_process(pid, created) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
