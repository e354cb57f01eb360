"""One worker process: a blocking loop around the Raft core, its storage and sockets.

Each turn of the loop (docs/ARCHITECTURE.md: One node):

    poll until the next tick -> drain every ready frame -> feed the core -> send what may
    leave early -> append + ONE fsync for the whole batch (group commit) -> send the
    acknowledgements -> apply committed entries -> answer clients and released reads

The fsync runs on a helper thread (`_Syncer`; fdatasync releases the GIL) while the loop
applies the entries that were already durable, answers their clients, and goes on
receiving and stepping messages and proposals. The next Ready is taken only once the
fsync is done, and the acknowledgements that depend on it (APP_RESP, votes) leave only
then; the leader counts its own copy toward a commit only then too (thesis §10.2.1).

Nothing else runs in the process. A write is answered only after its entry is committed
(durable on a majority, thesis §3.8) and applied here; a read only once a ReadIndex round
confirmed leadership and the state machine has caught up to the read index (thesis §6.4).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from raftkv import failpoints
from raftkv.eventlog import COUNTER_KEYS as EVENT_COUNTERS
from raftkv.eventlog import EventLog
from raftkv.kv import MAX_KEY_SIZE, MAX_VALUE_SIZE, KVStore, SnapshotError
from raftkv.metrics import BATCH_BOUNDS, FSYNC_BOUNDS_S, Buckets
from raftkv.raft import (
    NONE,
    ConfChange,
    ConfChangeBusy,
    ConfChangeError,
    Config,
    ConfOp,
    Entry,
    EntryType,
    HardState,
    InvariantViolation,
    Message,
    MsgType,
    NotLeader,
    ProposalDropped,
    Raft,
    RaftError,
    Ready,
    Role,
    SnapshotMeta,
    decode_change,
)
from raftkv.snapshots import SnapshotReceiver, SnapshotSender
from raftkv.storage import Identity, Storage, StorageError
from raftkv.storage.fs import OS_FS, FileSystem
from raftkv.transport import Transport
from raftkv.wire import ClientRequest, ReplyCode, ReqOp, SnapshotChunk

log = logging.getLogger("raftkv.node")

MAX_SCAN = 10_000  # bounds the size of one SCAN reply
LOG_TAIL = 32  # [index, term] pairs of the log's end in STATUS (the dashboard's strips)
# A leader's Ready with at most this many committed entries, and no input waiting, is
# synced on the loop's own thread, as a follower's always is (see process_ready).
_INLINE_SYNC_MAX = 4
# Enum members the per-request and per-entry loops compare with, bound once: on Python
# 3.11 each `ReqOp.GET` is an attribute lookup through the enum's class (~65 ns), and
# with several per request they cost the leader's request loop 16 us per 64 gets, 2 us
# bound like this.
_GET, _GET_STALE, _SCAN = ReqOp.GET, ReqOp.GET_STALE, ReqOp.SCAN
_TRANSFER, _CONF_CHANGE_OP, _CONTROL, _STATUS = (ReqOp.TRANSFER, ReqOp.CONF_CHANGE,
                                                 ReqOp.CONTROL, ReqOp.STATUS)
_NORMAL, _CONF_CHANGE_ENTRY = EntryType.NORMAL, EntryType.CONF_CHANGE
_OK, _UNAVAILABLE = ReplyCode.OK, ReplyCode.UNAVAILABLE
# The randomized election timeout takes at least this many distinct values (paper §5.2:
# the spread is what makes split votes rare; etcd draws from 10-20 ticks).
MIN_ELECTION_SLOTS = 10


@dataclass(slots=True)
class NodeConfig:
    id: int
    listen: str
    peers: dict[int, str]  # other members we know of: id -> tcp://host:port
    data_dir: Path
    # The cluster's initial voters (etcd's "initial cluster"): the configuration before
    # any change in the log, the same on every start. None: this node and its peers;
    # () for a node that joins a running cluster and learns the configuration from it.
    initial_voters: tuple[int, ...] | None = None
    # The leader's heartbeat interval, and the minimum election timeout: each election
    # draws from [election_ms, 2 * election_ms), in steps of one tick (`tick_ms`).
    heartbeat_ms: int = 50
    election_ms: int = 300
    fsync: bool = True
    max_key: int = MAX_KEY_SIZE
    max_value: int = MAX_VALUE_SIZE
    # Snapshot and drop the log once this many entries, or this many bytes of entry
    # data, were applied since the last snapshot. A snapshot stops the loop while the
    # state is serialized and written (7-10 ms for 10,000 keys here), and the three nodes
    # reach the threshold together; 100,000 (etcd's default too) makes that one stall per
    # 100,000 writes, for about 25 MB more log in memory and a 0.5 s longer replay.
    snapshot_entries: int = 100_000
    snapshot_bytes: int = 64 << 20
    segment_bytes: int = 64 << 20  # the write-ahead log rotates to a new file at this size
    metrics_port: int = 0  # Prometheus /metrics on the listen host; 0: off
    cluster_id: int = 0  # recorded in the data dir, which refuses another; 0: unchecked
    # Whether a missing or empty data dir may be made: only on a node's first start
    # (a new cluster, or --join). Otherwise it means lost state, and the node refuses.
    create_dir: bool = True
    fs: FileSystem = OS_FS  # the file layer under storage (tests put a faulty disk here)

    def ticks_per_heartbeat(self) -> int:
        """How many times the node's clock ticks per heartbeat: the fewest that give the
        election timeout MIN_ELECTION_SLOTS distinct values. By default 2: a 25 ms tick,
        a heartbeat every 2 ticks, elections drawn from [12, 24) ticks, [300, 600) ms."""
        return max(1, -(-MIN_ELECTION_SLOTS * self.heartbeat_ms // self.election_ms))

    def tick_ms(self) -> float:
        return self.heartbeat_ms / self.ticks_per_heartbeat()

    def raft_config(self) -> Config:
        voters = self.initial_voters
        if voters is None:
            voters = tuple(sorted({self.id, *self.peers}))
        k = self.ticks_per_heartbeat()
        return Config(
            self.id,
            voters,
            election_tick=max(k + 1, self.election_ms * k // self.heartbeat_ms),
            heartbeat_tick=k,
            seed=random.SystemRandom().randrange(2**62),
        )


@dataclass(slots=True)
class _PendingWrite:
    identity: bytes | tuple[bytes, bytes]
    request_id: int
    term: int
    op: ReqOp


@dataclass(slots=True)
class _ReadBatch:
    """All reads of one loop turn share one ReadIndex round."""

    requests: list[ClientRequest] = field(default_factory=list)
    index: int = 0  # set when released


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


class Node:
    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.storage = Storage.open(cfg.data_dir, fsync=cfg.fsync,
                                    segment_bytes=cfg.segment_bytes,
                                    identity=Identity(cfg.cluster_id, cfg.id),
                                    create=cfg.create_dir, repair=True, fs=cfg.fs)
        repairing = self.storage.repair is not None
        if repairing:
            begin_repair(self.storage)
        self.kv = KVStore(max_key_size=cfg.max_key, max_value_size=cfg.max_value)
        # The state machine starts from the newest snapshot, then re-applies the log.
        snapshot = self.storage.snapshot
        if snapshot is not None:
            self.kv.restore(self.storage.load_snapshot_data())
        log_tail = self.storage.entries_after_snapshot()  # a copy: read it once
        self.core = Raft(
            cfg.raft_config(),
            hard_state=self.storage.hard_state,
            entries=log_tail,
            snapshot=snapshot,
            applied=snapshot.index if snapshot else 0,
            repairing=repairing,
        )
        self.snapshot_sender = SnapshotSender(self.load_snapshot)
        self.snapshot_receiver = SnapshotReceiver(self.restore_scratch)
        self.bytes_since_snapshot = 0
        hs = self.storage.hard_state
        self.durable_term_vote = (hs.term, hs.vote)
        # Where every member listens: configuration, then members added through the log
        # (kept in the state machine, so they survive compaction), then the log's tail.
        addresses = {**cfg.peers, **self.kv.members}
        addresses.update(added_addresses(log_tail))
        self.transport = Transport(cfg.id, cfg.listen, addresses, max_key=cfg.max_key,
                                   max_value=cfg.max_value)
        self.pending_writes: dict[int, _PendingWrite] = {}  # log index -> who waits
        self.read_batches: dict[int, _ReadBatch] = {}  # ReadIndex ctx -> its reads
        self.released: list[_ReadBatch] = []  # confirmed, waiting for apply to catch up
        self.next_read_ctx = 1
        self.syncer = _Syncer(self.storage)
        # The Ready whose fsync is running; None when none is. Until it is done the core
        # is stepped but not asked for another Ready.
        self.syncing: Ready | None = None
        # While a Ready syncs the helper thread owns the Storage (`_Syncer`), so what
        # needs it waits: received snapshots to step (installing one replaces the log
        # that Ready describes), snapshots to send (their bytes are read from storage).
        self.deferred: list[Message] = []
        self.unsent_snapshots: list[Message] = []
        # What STATUS shows of storage: a copy taken while the loop owned it.
        self.storage_view = self.storage_status()
        self.stopping = False
        self.started = time.monotonic()
        self.failpoints = failpoints.enabled()
        for name in sorted(self.failpoints):
            log.warning("FAILPOINT %s is ON: %s", name, failpoints.KNOWN[name])
        self.counters = {"proposals": 0, "reads": 0, "fsyncs": 0, "elections_won": 0,
                         "not_leader": 0, "snapshots_taken": 0, "snapshots_installed": 0,
                         "snapshots_sent": 0, "last_snapshot_ms": 0,
                         **dict.fromkeys(EVENT_COUNTERS, 0)}
        self.events = EventLog()
        self.fsync_seconds = Buckets(FSYNC_BOUNDS_S)
        self.append_batch = Buckets(BATCH_BOUNDS)
        self.metrics_port = 0  # bound by run_node when cfg.metrics_port is set

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        tick_s = self.cfg.tick_ms() / 1000
        next_tick = time.monotonic() + tick_s
        poller = zmq.Poller()
        sock = self.transport.socket
        poller.register(sock, zmq.POLLIN)
        poller.register(self.syncer.fd, zmq.POLLIN)
        try:
            while not self.stopping:
                self.transport.flush()  # this turn's replies to batching clients
                # Rounded up: rounded down, the last millisecond before a tick was a
                # busy loop of zero-timeout polls (a wakeup or more per tick).
                timeout_ms = max(0, math.ceil((next_tick - time.monotonic()) * 1000))
                events = poller.poll(timeout_ms)
                readable = False
                for what, _ in events:
                    if what is sock:
                        readable = True
                    elif self.syncer.done():
                        self.finish_sync()
                if readable:
                    messages, requests = self.transport.recv_all()
                    for m in messages:
                        if type(m) is SnapshotChunk:
                            self.receive_snapshot_chunk(m)
                            continue
                        self.core.step(m)
                    self.handle_requests(requests)
                now = time.monotonic()
                if now >= next_tick:
                    self.core.tick()
                    # After a long stall (a slow fsync, SIGSTOP) tick once, not in a burst:
                    # a burst would fire election timeouts that no real silence caused.
                    next_tick = max(next_tick + tick_s, now)
                if self.syncing is not None:
                    # Replicate what was proposed meanwhile without waiting for our fsync.
                    self.send(self.core.take_messages())
                self.process_ready()
            if self.syncing is not None:
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
        self.syncer.close()  # waits for a running fsync; storage.close syncs the rest
        self.transport.close()
        self.storage.close()
        log.info("stopped")

    # -- Ready -------------------------------------------------------------------------

    def process_ready(self) -> None:
        """Handle Readies until the core has none, or one waits for its fsync."""
        core = self.core
        while self.syncing is None and core.has_ready():
            rd = core.ready()
            if rd.repaired:
                self.storage.finish_repair()
            if rd.entries and core.conf.last_index >= rd.entries[0].index:
                # A member added in this batch gets its first append in these messages.
                # (The core's history says whether the batch holds a change at all, so
                # ordinary batches cost one comparison, not a scan.)
                self.connect_added_members(rd.entries)
            self.send(rd.messages)
            if rd.snapshot is not None:
                self.install_snapshot(rd.snapshot, rd.hard_state)
            sync = False
            if rd.entries or rd.hard_state is not None:
                self.storage.append(rd.entries, rd.hard_state)
                sync = self.must_sync(rd)
                if rd.entries:
                    self.append_batch.observe(len(rd.entries))
                if "ack-before-commit" in self.failpoints:
                    self.ack_before_commit(rd)
            if sync:
                if core.role == Role.LEADER and (len(rd.committed_entries) > _INLINE_SYNC_MAX
                                                 or self.transport.pending()):
                    # A leader overlaps the fsync with what does not depend on it: the
                    # committed entries of this Ready are durable here already (the core
                    # hands out only entries up to the stable index), so they are applied
                    # and answered meanwhile, and the next frames are taken.
                    self.syncing = rd
                    self.syncer.start()
                    self.apply_ready(rd)
                    return
                # Nothing to overlap, or a follower: its acknowledgement is on the
                # leader's commit path and its applying is not, so it syncs, acknowledges,
                # then applies. (Through the thread its ack waited for two handoffs and
                # for the apply, both competing for the CPU; the commit index now reaches
                # it with the next batch of entries, so most of its Readies apply some.)
                t0 = time.perf_counter()
                self.storage.sync()
                self.record_sync(time.perf_counter() - t0)
            self.send(rd.persisted_messages)
            self.apply_ready(rd)
            self.advance(rd)

    def finish_sync(self) -> None:
        """The syncing Ready is durable: its acknowledgements may leave."""
        rd = self.syncing
        assert rd is not None
        self.syncing = None
        self.syncer.finish()
        self.record_sync(self.syncer.seconds)
        self.storage_view = self.storage_status()
        self.send(rd.persisted_messages)
        if self.unsent_snapshots:
            held, self.unsent_snapshots = self.unsent_snapshots, []
            self.send(held)
        self.advance(rd)
        if self.deferred:
            held, self.deferred = self.deferred, []
            for m in held:
                self.step_snapshot(m)

    def record_sync(self, seconds: float) -> None:
        self.counters["fsyncs"] += 1
        self.fsync_seconds.observe(seconds)

    def apply_ready(self, rd: Ready) -> None:
        self.apply(rd)
        if rd.soft_state is not None:
            self.on_role_change(rd)
        if rd.events:
            self.events.record(rd.events, self.counters)
        for rs in rd.read_states:
            batch = self.read_batches.pop(rs.ctx, None)
            if batch is not None:
                batch.index = rs.index
                self.released.append(batch)
        for ctx in rd.aborted_reads:
            batch = self.read_batches.pop(ctx, None)
            if batch is not None:
                self.fail_reads(batch.requests, "leadership lost before the read was "
                                "confirmed")

    def advance(self, rd: Ready) -> None:
        self.core.advance(rd)
        self.serve_released_reads()
        self.maybe_snapshot()

    def must_sync(self, rd: Ready) -> bool:
        """Whether this Ready must be durable before its persisted_messages leave: new
        entries, a new term or vote do (thesis §3.8); a hard state that only moved the
        commit index does not. The commit index is volatile in Raft (paper Figure 2): its
        record is written now and made durable by the next sync, and a crash before then
        recovers an older commit index, which the leader raises again. (etcd-io/raft
        `MustSync`.) Without this a follower paid a whole fdatasync for every append that
        only carried the leader's new commit index, one per committed batch, and the
        next batch of entries waited behind it."""
        hs = rd.hard_state
        if rd.entries or (hs is not None and (hs.term, hs.vote) != self.durable_term_vote):
            if hs is not None:
                self.durable_term_vote = (hs.term, hs.vote)
            return True
        return False

    def send(self, messages: list[Message]) -> None:
        """Send what the core wrote; a message to this node itself (a candidate's own
        vote, once durable) is stepped back into the core, never put on the wire."""
        me = self.cfg.id
        for m in messages:
            if m.to == me:
                self.core.step(m)
            elif m.type == MsgType.SNAP:
                if self.syncing is not None:
                    self.unsent_snapshots.append(m)  # its bytes are in storage
                    continue
                self.counters["snapshots_sent"] += 1
                self.transport.send_many(self.snapshot_sender.chunks(m))
            else:
                self.transport.send(m)

    # -- snapshots (paper §7) ----------------------------------------------------------

    def load_snapshot(self, meta: SnapshotMeta) -> bytes:
        stored = self.storage.snapshot
        if stored != meta:
            raise InvariantViolation(f"asked to send snapshot {meta}, storage has {stored}")
        return self.storage.load_snapshot_data()

    def receive_snapshot_chunk(self, c: SnapshotChunk) -> None:
        """Assemble; a snapshot that is whole and passed its checks is stepped into the
        core, or held until the syncing Ready is done."""
        m = self.snapshot_receiver.receive(c)
        if m is None:
            return
        if self.syncing is not None:
            # Installing a snapshot replaces the log the syncing Ready describes: step it
            # once that Ready is done.
            self.deferred.append(m)
            return
        self.step_snapshot(m)

    def step_snapshot(self, m: Message) -> None:
        """Step a SNAP message whose snapshot the receiver holds, accepted."""
        self.core.step(m)
        if self.core.pending_snapshot != m.snapshot:
            # The core did not take it (stale, duplicate, or its log already holds the
            # snapshot's last entry): nothing will install it, so free it now.
            self.snapshot_receiver.drop(m.snapshot)

    def restore_scratch(self, meta: SnapshotMeta, data: bytes) -> KVStore:
        """A fresh state machine restored from a received snapshot, before the snapshot
        may replace anything. Raises SnapshotError if the bytes do not hold the state
        up to `meta.index`."""
        scratch = KVStore(max_key_size=self.cfg.max_key, max_value_size=self.cfg.max_value)
        scratch.restore(data)
        # The store's index may trail meta.index, never pass it: entries that change no
        # state (a new leader's NOOP) do not move it, and every entry after meta.index is
        # applied after the snapshot, which the store refuses at an index it has applied.
        if scratch.applied_index > meta.index:
            raise SnapshotError(f"the state has applied up to index "
                                f"{scratch.applied_index}, past the snapshot's {meta.index}")
        return scratch

    def install_snapshot(self, meta: SnapshotMeta, hard_state: HardState | None) -> None:
        """A snapshot from the leader replaces our state: durable first (after the term
        that brought it), then the state machine restored from it on arrival
        (`restore_scratch`) is swapped in."""
        accepted = self.snapshot_receiver.take(meta)
        data = accepted.data
        self.storage.save_snapshot(meta, data, hard_state)
        accepted.state.stats = self.kv.stats  # local counters, not part of the state
        self.kv = accepted.state
        for node_id, address in self.kv.members.items():
            self.transport.set_peer(node_id, address)
        self.bytes_since_snapshot = 0
        self.counters["snapshots_installed"] += 1
        log.info("installed snapshot at index %d (term %d, %d bytes)", meta.index, meta.term,
                 len(data))

    def maybe_snapshot(self) -> None:
        """Compact once the log since the last snapshot is over a threshold. The pause is
        measured: serializing the state stops the loop for that long."""
        core = self.core
        applied = core.log.applied
        if (applied - core.log.offset < self.cfg.snapshot_entries
                and self.bytes_since_snapshot < self.cfg.snapshot_bytes):
            return
        t0 = time.perf_counter()
        data = self.kv.snapshot()
        # The core describes the snapshot (term, and the membership in force at `applied`,
        # not the latest one); storage keeps exactly that, and that is what is sent.
        core.compact(applied)
        self.storage.save_snapshot(core.snapshot, data)
        self.bytes_since_snapshot = 0
        ms = (time.perf_counter() - t0) * 1000
        self.counters["snapshots_taken"] += 1
        self.counters["last_snapshot_ms"] = round(ms, 3)
        log.info("snapshot at index %d: %d bytes in %.1f ms", applied, len(data), ms)

    def apply(self, rd: Ready) -> None:
        kv_apply, waiting, reply = self.kv.apply, self.pending_writes, self.transport.reply
        for e in rd.committed_entries:
            if e.type == _NORMAL:
                self.bytes_since_snapshot += len(e.data)
                result = kv_apply(e.index, e.data)
                code, value = result.code, result.value
            elif e.type == _CONF_CHANGE_ENTRY:
                code, value = _OK, self.apply_membership(e)
            else:
                continue
            waiter = waiting.pop(e.index, None)
            if waiter is None:
                continue
            if waiter.term == e.term:
                reply(waiter.identity, waiter.request_id, code, value)
            else:
                # Another leader's entry took this index: ours was never committed.
                reply(waiter.identity, waiter.request_id, _UNAVAILABLE,
                      "leadership changed; retry with the same sequence number")

    # -- membership (thesis §4.1) ------------------------------------------------------

    def connect_added_members(self, entries: list[Entry]) -> None:
        """A configuration takes effect when its entry is appended (§4.1), so the
        transport learns an added member's address then, before it is committed."""
        for node_id, address in added_addresses(entries).items():
            if self.transport.set_peer(node_id, address):
                log.info("member %d is at %s", node_id, address)

    def apply_membership(self, e: Entry) -> dict[str, Any]:
        """A committed configuration change: the state machine records the address of
        an added member and forgets a removed one; a removed peer is disconnected."""
        try:
            cc, after = decode_change(e.data)
        except ValueError:
            log.error("entry %d is not a configuration change: ignored", e.index)
            self.kv.apply_membership(e.index, 0, "")
            return {"index": e.index}
        removed = cc.op == ConfOp.REMOVE
        self.kv.apply_membership(e.index, cc.node_id, None if removed else cc.address)
        if removed:
            if cc.node_id == self.cfg.id:
                log.warning("this node was removed from the cluster at index %d; it takes "
                            "no further part and can be stopped", e.index)
            else:
                self.transport.remove_peer(cc.node_id)
        log.info("membership at index %d: %s node %d -> voters %s, learners %s", e.index,
                 cc.op.name.lower(), cc.node_id, sorted(after.voters), sorted(after.learners))
        return {"index": e.index, "voters": sorted(after.voters),
                "learners": sorted(after.learners)}

    def change_membership(self, req: ClientRequest) -> None:
        """CONF_CHANGE: answered OK once the change is committed, or at once when the
        membership already is what was asked (a retry of a change that went through)."""
        cc = ConfChange(ConfOp(req.conf_op), req.target, req.address)
        try:
            index = self.core.propose_conf_change(cc)
        except NotLeader as e:
            self.counters["not_leader"] += 1
            self.transport.reply(req.identity, req.request_id, ReplyCode.NOT_LEADER,
                                 f"node {self.cfg.id} is not the leader", e.leader)
        except (ConfChangeBusy, ProposalDropped) as e:
            self.transport.reply(req.identity, req.request_id, ReplyCode.UNAVAILABLE, str(e))
        except ConfChangeError as e:
            m = self.core.conf.current
            if m.in_force(cc):
                self.transport.reply(req.identity, req.request_id, ReplyCode.OK,
                                     {"index": self.core.conf.last_index,
                                      "voters": sorted(m.voters),
                                      "learners": sorted(m.learners)})
            else:
                self.transport.reply(req.identity, req.request_id, ReplyCode.BAD_REQUEST,
                                     str(e))
        else:
            log.info("proposed %s of node %d at index %d", cc.op.name.lower(), cc.node_id,
                     index)
            if cc.op == ConfOp.ADD_LEARNER:
                # The leader replicates to the learner from now on, maybe before this
                # entry's Ready: the transport must know where it is already.
                self.transport.set_peer(cc.node_id, cc.address)
            self.pending_writes[index] = _PendingWrite(req.identity, req.request_id,
                                                       self.core.term, req.op)

    def ack_before_commit(self, rd: Ready) -> None:
        """FAILPOINT: answer puts once only our own disk has them (a deliberate bug)."""
        for e in rd.entries:
            w = self.pending_writes.get(e.index)
            if w is not None and w.op == ReqOp.PUT and w.term == e.term:
                del self.pending_writes[e.index]
                self.transport.reply(w.identity, w.request_id, ReplyCode.OK, None)

    def on_role_change(self, rd: Ready) -> None:
        ss = rd.soft_state
        self.transport.leader_hint = ss.lead
        log.info("now %s; leader %s", ss.role.name.lower(), ss.lead or "unknown")
        if ss.role == Role.LEADER:
            self.counters["elections_won"] += 1
        elif self.pending_writes:
            # Our proposals may still commit under the next leader, or be overwritten:
            # the outcome is unknown, and a retry with the same seq is answered once.
            for w in self.pending_writes.values():
                self.transport.reply(w.identity, w.request_id, ReplyCode.UNAVAILABLE,
                                     "leadership lost while the write was pending; retry "
                                     "with the same sequence number", ss.lead)
            self.pending_writes.clear()

    # -- client requests ---------------------------------------------------------------

    def handle_requests(self, requests: list[ClientRequest]) -> None:
        batch: _ReadBatch | None = None
        read_local = "read-local" in self.failpoints
        for req in requests:
            op = req.op
            if op == _GET and read_local:
                op = _GET_STALE  # the deliberate bug: no ReadIndex
            if op in (_GET, _SCAN):
                if batch is None:
                    batch = _ReadBatch()
                batch.requests.append(req)
            elif op == _GET_STALE:
                # Any role answers from what it has applied: fast, possibly stale.
                self.counters["reads"] += 1
                self.transport.reply(req.identity, req.request_id, _OK, self.kv.get(req.key))
            elif op == _TRANSFER:
                self.transfer(req)
            elif op == _CONF_CHANGE_OP:
                self.change_membership(req)
            elif op == _CONTROL:
                self.transport.reply(req.identity, req.request_id, ReplyCode.BAD_REQUEST,
                                     "CONTROL commands go to the controller, not to a node")
            elif op == _STATUS:
                self.transport.reply(req.identity, req.request_id, ReplyCode.OK, self.status())
            else:
                self.propose(req)
        if batch is not None:
            self.start_read(batch)

    def propose(self, req: ClientRequest) -> None:
        try:
            index = self.core.propose(req.command())
        except NotLeader as e:
            self.counters["not_leader"] += 1
            self.transport.reply(req.identity, req.request_id, ReplyCode.NOT_LEADER,
                                 f"node {self.cfg.id} is not the leader", e.leader)
            return
        except ProposalDropped as e:
            self.transport.reply(req.identity, req.request_id, ReplyCode.UNAVAILABLE, str(e))
            return
        self.counters["proposals"] += 1
        self.pending_writes[index] = _PendingWrite(req.identity, req.request_id, self.core.term,
                                                   req.op)

    def transfer(self, req: ClientRequest) -> None:
        try:
            self.core.transfer_leader(req.target)
        except NotLeader as e:
            self.transport.reply(req.identity, req.request_id, ReplyCode.NOT_LEADER,
                                 f"node {self.cfg.id} is not the leader", e.leader)
        except InvariantViolation:
            raise  # our own state is broken: the node stops; no client asked for that
        except RaftError as e:
            self.transport.reply(req.identity, req.request_id, ReplyCode.BAD_REQUEST, str(e))
        else:
            self.transport.reply(req.identity, req.request_id, ReplyCode.OK,
                                 f"transferring leadership to node {req.target}")

    def start_read(self, batch: _ReadBatch) -> None:
        ctx = self.next_read_ctx
        self.next_read_ctx += 1
        try:
            self.core.read_index(ctx)
        except NotLeader as e:
            self.counters["not_leader"] += len(batch.requests)
            for req in batch.requests:
                self.transport.reply(req.identity, req.request_id, ReplyCode.NOT_LEADER,
                                     f"node {self.cfg.id} is not the leader", e.leader)
            return
        self.read_batches[ctx] = batch

    def serve_released_reads(self) -> None:
        applied = self.core.log.applied
        reply, get = self.transport.reply, self.kv.get
        while self.released and self.released[0].index <= applied:
            batch = self.released.pop(0)
            self.counters["reads"] += len(batch.requests)
            for req in batch.requests:
                if req.op == _GET:
                    value: Any = get(req.key)
                else:
                    limit = min(req.limit or MAX_SCAN, MAX_SCAN)
                    value = [list(kv) for kv in self.kv.scan(req.key, limit)]
                reply(req.identity, req.request_id, _OK, value)

    def fail_reads(self, requests: list[ClientRequest], why: str) -> None:
        for req in requests:
            self.transport.reply(req.identity, req.request_id, ReplyCode.UNAVAILABLE, why)

    # -- introspection -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        if self.syncing is None:
            self.storage_view = self.storage_status()
        s = self.core.status()
        s.pop("progress", None)
        s.update(
            address=self.cfg.listen,
            peers={str(k): v for k, v in sorted(self.transport.peers.items())},
            uptime_s=round(time.monotonic() - self.started, 3),
            transport=dict(self.transport.stats),
            **self.storage_view,
            kv={"keys": len(self.kv), "sessions": self.kv.session_count,
                "malformed": self.kv.stats.malformed},
            counters=self.counter_values(),
            failpoints=sorted(self.failpoints),
            log_tail=self.core.log_tail(LOG_TAIL),
            events=self.events.tail(),
            histograms=self.histograms(),
            metrics_port=self.metrics_port,
        )
        return s

    def storage_status(self) -> dict[str, Any]:
        """STATUS's view of storage. Only while the loop owns it (no Ready syncing):
        `status` shows the copy taken last, refreshed then and after each sync."""
        return {"storage": self.storage.stats(), "repair": self.storage.repair}

    def counter_values(self) -> dict[str, int | float]:
        """The node's counters with those its helpers keep."""
        return {**self.counters, "snapshots_rejected": self.snapshot_receiver.rejected}

    def histograms(self) -> dict[str, Any]:
        return {"fsync_seconds": self.fsync_seconds.to_dict(),
                "append_batch_entries": self.append_batch.to_dict()}

    def metrics_view(self) -> dict[str, Any]:
        """What /metrics shows: the STATUS values that are safe to read from the metrics
        server's thread (attribute loads, copies of fixed-key dicts and lists)."""
        core, raft_log = self.core, self.core.log
        return {"term": core.term, "role": core.role.name.lower(),
                "last_index": raft_log.last_index(), "commit_index": raft_log.committed,
                "applied_index": raft_log.applied, "snapshot_index": raft_log.offset,
                "counters": self.counter_values(), "transport": dict(self.transport.stats),
                "histograms": self.histograms()}


def begin_repair(storage: Storage) -> None:
    """The storage cut a damaged log (Protocol-Aware Recovery, FAST '18): raise the term
    by one, with no vote, before the core starts. Every entry this node acknowledged
    before the damage then has a lower term than any leader it will follow, so the
    core's repair ends only once such a leader's own-term commit is durable here, which
    covers everything committed with this node's help (raftkv.raft.core: repairing)."""
    hs = storage.hard_state
    storage.append([], HardState(hs.term + 1, NONE, hs.commit))
    storage.sync()
    log.error("repairing a damaged log (%s); term raised to %d; no votes until a leader "
              "has sent back what was lost", storage.repair, hs.term + 1)


def added_addresses(entries: list[Entry]) -> dict[int, str]:
    """Node id -> address of every member that the CONF_CHANGE entries among `entries`
    add, in log order."""
    found: dict[int, str] = {}
    for e in entries:
        if e.type == EntryType.CONF_CHANGE:
            try:
                cc, _ = decode_change(e.data)
            except ValueError:
                continue
            if cc.op == ConfOp.ADD_LEARNER and cc.address:
                found[cc.node_id] = cc.address
    return found


class _RaftLogContext(logging.Filter):
    """Stamps every log record with the node's current term and role."""

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        record.term = self.node.core.term
        record.role = self.node.core.role.name.lower()
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
    log.info("up: %d entries on disk, commit %d, listening on %s", node.core.log.last_index(),
             node.core.log.committed, node.transport.endpoint)
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
        node.metrics_port = serve(node_families(node.metrics_view), host, node.cfg.metrics_port)
    except OSError as e:
        log.warning("metrics: cannot serve on %s:%d (%s); running without /metrics", host,
                    node.cfg.metrics_port, e)
        return
    log.info("metrics on http://%s:%d/metrics", host, node.metrics_port)
