"""One worker process: a blocking ZeroMQ loop around a `Replica` (raftkv/replica.py).

Each turn of the loop (docs/ARCHITECTURE.md: One node):

    poll until the next tick -> drain every ready frame -> feed the replica (the core,
    client requests) -> tick when due -> send what may leave early -> append + ONE fsync
    for the whole batch (group commit) -> send the acknowledgements -> apply committed
    entries -> answer clients and released reads

Everything after the poll is the replica's; this module owns what a process has: the
sockets (raftkv.transport), the fsync thread (`_Syncer`; fdatasync releases the GIL, so
the loop applies the entries that were already durable, answers their clients, and goes
on stepping messages and proposals while it runs), the forked child that writes a
snapshot (raftkv.snapshot_writer), the OS clock, signals, /metrics and the log format.
The next Ready is taken only once the fsync is done, and the acknowledgements that
depend on it (APP_RESP, votes) leave only then; the leader counts its own copy toward a
commit only then too (thesis §10.2.1).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import queue
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from raftkv.config import NodeConfig
from raftkv.interfaces import StateMachine
from raftkv.replica import Replica, open_storage
from raftkv.security import NODE_PREFIX, ServerKeys
from raftkv.snapshot_writer import ForkSnapshotWriter, ThreadSnapshotWriter
from raftkv.storage import Storage, StorageError
from raftkv.transport import Transport

log = logging.getLogger("raftkv.node")

__all__ = ["Node", "NodeConfig", "run_node"]


class _Syncer:
    """Runs `Storage.sync` on a helper thread; `fd` becomes readable when it is done.

    Ownership of the Storage passes to the thread from `start` until `finish`: the loop
    does not touch it meanwhile. fdatasync releases the GIL, so the loop keeps running.
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.fd, self._done_w = os.pipe()
        os.set_blocking(self.fd, False)
        self.busy = False
        self.error: BaseException | None = None
        self.seconds = 0.0  # how long the last sync took
        self._jobs: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="raftkv-fsync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._jobs.get():
            t0 = time.perf_counter()
            try:
                self.storage.sync()
            except BaseException as e:  # handed to the loop, which stops the node
                self.error = e
            self.seconds = time.perf_counter() - t0
            os.write(self._done_w, b"\0")

    def start(self) -> None:
        self.busy = True
        self._jobs.put(True)

    def done(self) -> bool:
        """Whether the sync started last has finished (never blocks)."""
        try:
            return bool(os.read(self.fd, 1))
        except BlockingIOError:
            return False

    def finish(self) -> None:
        """After `done`: raise the sync's error, if any; storage is the loop's again."""
        self.busy = False
        if isinstance(self.error, StorageError):
            raise self.error  # storage's own message says what failed and what to do
        if self.error is not None:
            raise StorageError(f"WAL sync failed: {self.error}") from self.error

    def wait(self) -> None:
        """Block until the sync started last has finished (for shutdown)."""
        if self.busy:
            os.set_blocking(self.fd, True)
            os.read(self.fd, 1)
            os.set_blocking(self.fd, False)
            self.busy = False

    def close(self) -> None:
        self.wait()
        self._jobs.put(False)
        self._thread.join()
        os.close(self.fd)
        os.close(self._done_w)


class _Discarder:
    """Deletes the files storage no longer needs (compacted WAL segments, old snapshots)
    on a helper thread, in the order given, then syncs their directory: unlinking a
    large file frees its extents, which took the loop 10-30 ms. A failure costs disk
    space, not data: it is logged, and the next open removes what is left."""

    def __init__(self, fs: Any, fsync: bool) -> None:
        self.fs, self.fsync = fs, fsync
        self._jobs: queue.SimpleQueue[tuple[list[Any], Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="raftkv-discard", daemon=True)
        self._thread.start()

    def __call__(self, paths: list[Any], directory: Any) -> None:
        self._jobs.put((paths, directory))

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            paths, directory = job
            try:
                for path in paths:
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.unlink(path)
                if self.fsync:
                    self.fs.fsync_dir(directory)
            except OSError as e:
                log.warning("could not delete %s: %s; the next start removes them",
                            ", ".join(map(str, paths)), e)

    def close(self) -> None:
        """Finish the deletions handed over so far."""
        self._jobs.put(None)
        self._thread.join()


SLOW_TURN_S = 0.15  # a loop turn this long is logged: half the shortest election timeout


class _FullCollections:
    """Times Python's full (generation 2) garbage collections, which stop the loop for
    as long as they take: a slow turn's warning says how much of it they were."""

    def __init__(self) -> None:
        self._began = 0.0
        self._done: list[tuple[float, float]] = []  # (start, seconds), recent ones
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self._done = [*self._done[-7:], (self._began, time.perf_counter() - self._began)]

    def take(self, since: float) -> float:
        """Seconds of full collections that began at or after `since`."""
        return sum(s for began, s in self._done if began >= since)

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)


class SystemClock:
    """The OS's clocks (raftkv.interfaces.Clock)."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


SYSTEM_CLOCK = SystemClock()


class Node:
    """A replica, its sockets and its fsync thread, in this process."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        storage = open_storage(cfg)
        with contextlib.ExitStack() as undo:  # on failure, release what was made
            undo.callback(_quietly, storage.close)
            keys = (None if cfg.keys_dir is None
                    else ServerKeys(cfg.keys_dir, own=f"{NODE_PREFIX}{cfg.id}"))
            self.transport = Transport(cfg.id, cfg.listen, cfg.peers, max_key=cfg.max_key,
                                       max_value=cfg.max_value, keys=keys)
            undo.callback(self.transport.close)
            self.syncer = _Syncer(storage)
            undo.callback(self.syncer.close)
            self.discarder = _Discarder(cfg.fs, cfg.fsync)
            undo.callback(self.discarder.close)
            storage.discard_with(self.discarder)
            self.gc_timer = _FullCollections()
            undo.callback(self.gc_timer.close)
            if cfg.state == "lmdb":
                self.snapshot_writer: ForkSnapshotWriter | ThreadSnapshotWriter = (
                    ThreadSnapshotWriter())
                new_state, open_state = lmdb_states(cfg)
            else:
                self.snapshot_writer = ForkSnapshotWriter()
                new_state = open_state = None
            self.replica = Replica(cfg, storage, self.transport, self.syncer, SYSTEM_CLOCK,
                                   snapshot_writer=self.snapshot_writer,
                                   new_state=new_state, open_state=open_state)
            undo.pop_all()
        self.stopping = False

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        tick_s = self.cfg.tick_ms() / 1000
        next_tick = time.monotonic() + tick_s
        poller = zmq.Poller()
        sock = self.transport.socket
        poller.register(sock, zmq.POLLIN)
        poller.register(self.syncer.fd, zmq.POLLIN)
        replica = self.replica
        try:
            while not self.stopping:
                self.transport.flush()  # this turn's replies to batching clients
                # Rounded up: rounded down, the last millisecond before a tick was a
                # busy loop of zero-timeout polls (a wakeup or more per tick).
                timeout_ms = 0 if replica.sending_snapshot else max(
                    0, math.ceil((next_tick - time.monotonic()) * 1000))
                events = poller.poll(timeout_ms)
                started = time.perf_counter()
                readable = False
                for what, _ in events:
                    if what is sock:
                        readable = True
                    elif self.syncer.done():
                        replica.finish_sync()
                if readable:
                    replica.receive(*self.transport.recv_all())
                received = time.perf_counter()
                now = time.monotonic()
                if now >= next_tick:
                    replica.tick()
                    # After a long stall (a slow fsync, SIGSTOP) tick once, not in a burst:
                    # a burst would fire election timeouts that no real silence caused.
                    next_tick = max(next_tick + tick_s, now)
                replica.process()
                ended = time.perf_counter()
                replica.record_turn(ended - started)
                if ended - started > SLOW_TURN_S:
                    log.warning("slow loop turn: %.0f ms (input %.0f ms, the rest %.0f ms; "
                                "full garbage collections in it: %.0f ms)",
                                (ended - started) * 1000, (received - started) * 1000,
                                (ended - received) * 1000, self.gc_timer.take(started) * 1000)
            if replica.syncing is not None:
                # Stopped while a Ready syncs: a failed sync ends the node with its
                # StorageError, never as a clean stop (its acknowledgements stay unsent).
                self.syncer.wait()
                self.syncer.finish()
        finally:
            self.close()

    def stop(self, *_: Any) -> None:
        """Finish the current turn (and its fsync), then leave the loop."""
        self.stopping = True

    def close(self) -> None:
        self.snapshot_writer.close()
        self.replica.kv.close()
        self.gc_timer.close()
        self.syncer.close()  # waits for a running fsync; storage.close syncs the rest
        self.transport.close()
        self.replica.storage.close()
        self.discarder.close()
        log.info("stopped")


def lmdb_states(cfg: NodeConfig) -> tuple[Callable[[], StateMachine],
                                          Callable[[], StateMachine]]:
    """`--state lmdb`: a scratch store to restore a received snapshot into (beside the
    live one, which it replaces once installed), and the node's own in DATA_DIR/state.
    The map is sized well past the quota: LMDB needs room for pages a running copy
    still reads and for free pages it has not reused yet."""
    from raftkv.lmdb_state import LmdbStore, remove_leftovers

    map_size = 4 * cfg.quota_bytes + (1 << 30)
    limits = {"max_key_size": cfg.max_key, "max_value_size": cfg.max_value,
              "map_size": map_size}

    def new_state() -> StateMachine:
        return LmdbStore(Path(tempfile.mkdtemp(dir=cfg.data_dir, prefix="state.incoming-")),
                         **limits)

    def open_state() -> StateMachine:
        remove_leftovers(cfg.data_dir)
        return LmdbStore.open_live(cfg.data_dir / "state", **limits)

    return new_state, open_state


def _quietly(close: Any) -> None:
    """Release a resource on a failed start without hiding why the start failed."""
    with contextlib.suppress(Exception):
        close()


class _RaftLogContext(logging.Filter):
    """Stamps every log record with the node's current term and role."""

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        core = self.node.replica.core
        record.term = core.term
        record.role = core.role.name.lower()
        return True


def run_node(cfg: NodeConfig) -> None:
    """Run one node in the foreground until SIGTERM/SIGINT. Log lines carry the time,
    node id, term and role."""
    node = Node(cfg)
    fmt = logging.Formatter(
        f"%(asctime)s node={cfg.id} term=%(term)s role=%(role)s %(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_RaftLogContext(node))
        handler.setFormatter(fmt)
    core = node.replica.core
    log.info("up: %d entries on disk, commit %d, listening on %s", core.log.last_index(),
             core.log.committed, node.transport.endpoint)
    if cfg.metrics_port:
        start_metrics(node)
    signal.signal(signal.SIGTERM, node.stop)
    signal.signal(signal.SIGINT, node.stop)
    node.run()


def start_metrics(node: Node) -> None:
    """Serve /metrics on the listen address's host. A busy port costs the metrics, not
    the node: it is logged and the node runs on."""
    from raftkv.metrics import node_families, serve

    host = node.cfg.listen.removeprefix("tcp://").rpartition(":")[0]
    try:
        node.replica.metrics_port = serve(node_families(node.replica.metrics_view), host,
                                          node.cfg.metrics_port)
    except OSError as e:
        log.warning("metrics: cannot serve on %s:%d (%s); running without /metrics", host,
                    node.cfg.metrics_port, e)
        return
    log.info("metrics on http://%s:%d/metrics", host, node.replica.metrics_port)
