"""Start and stop a cluster of node processes on this host.

`LocalCluster` runs `raftkv node` children on free loopback ports under one directory and
cleans up by pid (never by name). The tests and the benchmark use it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from raftkv import wire
from raftkv.wire import ClientReply, ClientRequest, ReqOp

REPO = Path(__file__).resolve().parents[1]


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


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


@dataclass
class NodeProc:
    id: int
    address: str
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalCluster:
    def __init__(self, n: int, root: Path, *, fsync: bool = True,
                 extra_args: tuple[str, ...] = ()) -> None:
        ports = free_ports(n)
        self.root = root
        self.fsync = fsync
        self.extra_args = extra_args
        self.nodes = {
            i: NodeProc(i, f"tcp://127.0.0.1:{ports[i - 1]}", root / f"node{i}",
                        root / f"node{i}.log")
            for i in range(1, n + 1)
        }
        self.ctx = zmq.Context()
        self.next_request = 1

    @property
    def addresses(self) -> dict[int, str]:
        return {i: n.address for i, n in self.nodes.items()}

    def start(self, i: int) -> None:
        node = self.nodes[i]
        args = [sys.executable, "-m", "harness.cli", "node", "--id", str(i),
                "--listen", node.address, "--data-dir", str(node.data_dir), *self.extra_args]
        for j, other in self.nodes.items():
            if j != i:
                args += ["--peer", f"{j}={other.address}"]
        if not self.fsync:
            args.append("--no-fsync")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(node.log_path, "ab") as log:
            node.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=REPO)

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

    # -- raw requests ------------------------------------------------------------------

    def call(self, i: int, req: ClientRequest, timeout: float = 2.0) -> ClientReply | None:
        return self.call_raw(i, wire.encode_request(req), timeout)

    def call_raw(self, i: int, frame: bytes, timeout: float = 2.0) -> ClientReply | None:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        try:
            s.connect(self.nodes[i].address)
            s.send(frame)
            if not s.poll(int(timeout * 1000)):
                return None
            return wire.decode_reply(s.recv())
        finally:
            s.close()

    def request(self, i: int, op: ReqOp, **fields: Any) -> ClientReply | None:
        self.next_request += 1
        return self.call(i, ClientRequest(self.next_request, op, **fields))

    def status(self, i: int) -> dict | None:
        if not self.nodes[i].alive:
            return None
        r = self.request(i, ReqOp.STATUS)
        return r.value if r is not None else None

    def leader(self) -> int | None:
        """The live node that says it leads, in the highest term."""
        best = None
        for i in self.nodes:
            st = self.status(i)
            if st and st["role"] == "leader" and (best is None or st["term"] > best[1]):
                best = (i, st["term"])
        return best[0] if best else None

    def wait_leader(self, timeout: float = 10.0, exclude: int | None = None) -> int:
        return wait_for(lambda: (lambda ld: ld if ld and ld != exclude else None)(self.leader()),
                        timeout, "a leader")
