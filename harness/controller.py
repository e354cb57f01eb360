"""The controller: one process in front of a cluster's nodes (docs/ARCHITECTURE.md),
made of two parts that share nothing but an inproc PAIR and two published snapshots
(harness/handoff.py):

- the router (harness/router.py), on the main thread: the address clients talk to. It
  forwards each request once to the leader it knows, passes replies back unopened,
  tracks the leader with STATUS polls and serves `status` and `events`; nothing on its
  loop blocks.
- the supervisor (harness/supervisor.py), on a worker thread: node processes, psutil
  health, cluster.json, and the commands that take time (kill, restart, pause,
  partition, add-node, remove-node, transfer-leader, ...).

`run_controller` (what `raftkv controller` runs) wires them together; `Controller` is the
same pair for a caller that runs it itself (a test, in its own process).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import zmq

from harness.cluster_state import FILE_NAME, ClusterState
from harness.handoff import Shared
from harness.router import Router
from harness.supervisor import Supervisor
from raftkv.security import ADMIN, ServerKeys

log = logging.getLogger("raftkv.controller")

JOIN_S = 3.0  # how long closing waits for the supervisor to finish its command


class Controller:
    """The router and the supervisor of the cluster `state` describes, on `context`.
    `run` serves until `stop` (from a signal handler or another thread); `close` after."""

    def __init__(self, state: ClusterState, context: zmq.Context) -> None:
        self.state = state
        # The cluster's keys (raftkv.security): the front admits only them, and the
        # controller speaks to the nodes with the admin key. None: --insecure.
        self.keys = ServerKeys(state.keys_dir, own=ADMIN) if state.secure else None
        self.shared = Shared()
        self.supervisor = Supervisor(state, context, self.shared, self.keys)
        self.router = Router(state.controller.address, state.addresses, self.keys, context,
                             self.shared)
        self.thread = threading.Thread(target=self.supervisor.run, name="supervisor",
                                       daemon=True)

    def run(self) -> None:
        self.thread.start()
        self.router.run()

    def stop(self, *_: Any) -> None:
        self.router.stop()

    def close(self) -> None:
        if self.thread.is_alive():
            self.router.stop_supervisor()
            self.thread.join(JOIN_S)
        self.router.close()
        if not self.thread.is_alive():  # else still in a command: its sockets stay its own
            self.supervisor.close()
        if self.keys is not None:
            self.keys.close()


def run_controller(cluster_dir: Path, metrics_port: int = 0) -> None:
    """Run the controller of the cluster recorded in `cluster_dir` in the foreground
    until SIGTERM/SIGINT, with Prometheus metrics on `metrics_port` (0: none). Raises
    FileNotFoundError if there is no cluster.json there."""
    state = ClusterState.load(Path(cluster_dir))
    if state is None:
        raise FileNotFoundError(f"no {FILE_NAME} in {cluster_dir}: start a cluster with "
                                "`raftkv up` first")
    context = zmq.Context()
    try:
        controller = Controller(state, context)
        if metrics_port:
            start_metrics(controller, metrics_port)
        signal.signal(signal.SIGTERM, controller.stop)
        signal.signal(signal.SIGINT, controller.stop)
        try:
            controller.run()
        finally:
            controller.close()
            log.info("controller stopped")
    finally:
        context.destroy(linger=0)


def start_metrics(controller: Controller, port: int) -> None:
    """Serve /metrics on the controller address's host; a busy port is logged, not fatal."""
    from harness.controller_metrics import controller_families
    from raftkv.metrics import serve

    host = controller.state.controller.address.removeprefix("tcp://").rpartition(":")[0]
    try:
        bound = serve(controller_families(controller.router), host, port)
    except OSError as e:
        log.warning("metrics: cannot serve on %s:%d (%s); running without /metrics", host,
                    port, e)
        return
    log.info("metrics on http://%s:%d/metrics", host, bound)
