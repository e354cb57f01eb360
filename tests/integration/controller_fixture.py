"""A real cluster behind a real controller, for tests: three `raftkv node` processes and
one controller process on free loopback ports, described by a cluster.json in a temporary
directory. Every process started here, or by the controller (restarts, recorded in
cluster.json), is killed by pid and create time at `close`, never by name."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import zmq

from harness import cluster_state, rpc
from harness.cluster_state import (
    ClusterState,
    NodeEntry,
    ProcEntry,
    new_cluster_id,
    node_argv,
    python_argv,
)
from harness.launcher import free_ports, wait_for
from raftkv import wire
from raftkv.security import KEYS_SUBDIR, make_keys
from raftkv.wire import ClientReply, ClientRequest, ReplyCode, ReqOp

N_NODES = 3


def controller_argv(cluster_dir: Path) -> list[str]:
    """The CLI verb once it exists; until then the function, called directly."""
    from harness.cli import main

    if "controller" in main.commands:
        return python_argv("controller", "--dir", str(cluster_dir))
    code = ("import logging, sys; from pathlib import Path; "
            "from harness.controller import run_controller; "
            "logging.basicConfig(level='INFO', format='%(asctime)s controller %(message)s'); "
            "run_controller(Path(sys.argv[1]))")
    return [sys.executable, "-c", code, str(cluster_dir)]


def write_cluster(root: Path, extra: tuple[str, ...] = ()) -> ClusterState:
    """A new cluster's cluster.json, as `up` writes one: every node's first start, and
    the cluster's keys."""
    ports = free_ports(N_NODES + 1)
    addresses = {i: f"tcp://127.0.0.1:{ports[i]}" for i in range(1, N_NODES + 1)}
    cluster_id = new_cluster_id()
    keys_dir = root.resolve() / KEYS_SUBDIR
    make_keys(keys_dir, list(addresses))
    nodes = []
    for i, address in addresses.items():
        argv = node_argv(i, address, addresses, root / "data" / f"node{i}",
                         voters=tuple(addresses), extra=extra, cluster_id=cluster_id,
                         new=True, keys_dir=keys_dir)
        nodes.append(NodeEntry(address, f"logs/node{i}.log", argv, id=i,
                               data_dir=f"data/node{i}"))
    controller_address = f"tcp://127.0.0.1:{ports[0]}"
    controller = ProcEntry(controller_address, "logs/controller.log", controller_argv(root))
    state = ClusterState(root.resolve(), True, controller, nodes, cluster_id, secure=True)
    state.save()
    return state


class ControllerCluster:
    def __init__(self, root: Path, extra: tuple[str, ...] = ()) -> None:
        self.root = root
        self.state = write_cluster(root, extra)
        self.procs: list[subprocess.Popen] = []
        self.controller: subprocess.Popen | None = None
        self.ctx = zmq.Context()
        self.request_ids = itertools.count(1)
        # The admin key, for our calls and (as after `up`) everything this process starts.
        self.credentials = self.state.credentials()
        self.state.use_keys()

    @property
    def address(self) -> str:
        return self.state.controller.address

    @property
    def node_addresses(self) -> dict[int, str]:
        return self.state.addresses

    def start(self) -> None:
        self.start_nodes()
        self.start_controller()

    def start_nodes(self) -> None:
        """The nodes only: for a test that runs the controller itself."""
        for n in self.state.nodes:
            p = cluster_state.spawn(n.argv, self.root / n.log, detach=False)
            self.procs.append(p)
            n.pid, n.create_time = p.pid, cluster_state.create_time(p.pid)
        self.state.save()

    def start_controller(self) -> None:
        c = self.state.controller
        self.controller = cluster_state.spawn(c.argv, self.root / c.log, detach=False)
        self.procs.append(self.controller)

    def kill_controller(self) -> None:
        assert self.controller is not None
        self.controller.send_signal(signal.SIGKILL)
        self.controller.wait(timeout=10)
        self.controller = None

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        # Nodes the controller restarted are its children, recorded in cluster.json.
        fresh = ClusterState.load(self.root)
        for n in fresh.nodes if fresh else []:
            cluster_state.signal_process(n.pid, n.create_time, signal.SIGKILL)
        self.ctx.destroy(linger=0)

    # -- raw requests to the controller ---------------------------------------------

    def call(self, frame: bytes, timeout: float = 12.0, address: str | None = None
             ) -> ClientReply | None:
        return rpc.call_raw(self.ctx, address or self.address, frame, timeout,
                            self.credentials)

    def request(self, op: ReqOp, timeout: float = 12.0, **fields: Any) -> ClientReply | None:
        req = ClientRequest(next(self.request_ids), op, **fields)
        return self.call(wire.encode_request(req), timeout)

    def command(self, name: str, *args: int | str, timeout: float = 12.0) -> ClientReply:
        reply = self.request(ReqOp.CONTROL, timeout, name=name, args=args)
        assert reply is not None, f"no answer to {name} {args} from the controller"
        return reply

    def status(self) -> dict[str, Any]:
        reply = self.command("status", timeout=2.0)
        assert reply.code == ReplyCode.OK, reply
        return reply.value

    def node(self, node_id: int) -> dict[str, Any]:
        return next(n for n in self.status()["nodes"] if n["id"] == node_id)

    def wait_leader(self, timeout: float = 10.0, exclude: int | None = None) -> int:
        """The leader the controller reports, once it reports one (other than `exclude`)."""
        def leader() -> int | None:
            ld = self.status()["leader"]
            return ld if ld and ld != exclude else None
        return wait_for(leader, timeout, "the controller to report a leader", every=0.05)

    def wait_node(self, node_id: int, what: str, cond: Any, timeout: float = 10.0) -> dict:
        return wait_for(lambda: (lambda n: n if cond(n) else None)(self.node(node_id)),
                        timeout, f"node {node_id}: {what}")
