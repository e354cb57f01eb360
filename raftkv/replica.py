"""One replica: the Raft core, its storage and state machine, and the glue between them.

A replica is everything a node does except waiting for input: no socket, no thread, no
clock of its own. It works through the interfaces of raftkv/interfaces.py (a Transport,
a Syncer, a SnapshotWriter, a Clock, a StateMachine) over the real `Storage`. Its driver
calls, in each turn of its loop (docs/ARCHITECTURE.md: One node):

    receive(messages, requests) -> tick() when due -> process()
    finish_sync() whenever the Syncer reports done

raftkv/node.py drives it with ZeroMQ, an fsync thread, a forking snapshot writer and the
OS clock; the simulator (tests/sim/replica_sim.py) with a seeded network, a syncer and a
snapshot writer that hold their work for a drawn number of steps, simulated time and a
disk that loses power.

`process` handles Readies in the order of the Ready contract (raftkv/raft/types.py). A
write is answered only after its entry is committed (durable on a majority, thesis §3.8)
and applied here; a read only once a ReadIndex round confirmed leadership and the state
machine has caught up to the read index (thesis §6.4). The leader counts its own copy
toward a commit only once it is durable (thesis §10.2.1).
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from raftkv import failpoints
from raftkv.config import NodeConfig
from raftkv.eventlog import COUNTER_KEYS as EVENT_COUNTERS
from raftkv.eventlog import EventLog
from raftkv.interfaces import (
    Clock,
    Route,
    SnapshotData,
    SnapshotWriter,
    StateMachine,
    Syncer,
    Transport,
)
from raftkv.kv import KVStore, Op, SnapshotError, encode_lease, lease_not_found
from raftkv.lease_timer import LeaseTimer
from raftkv.metrics import BATCH_BOUNDS, FSYNC_BOUNDS_S, TURN_BOUNDS_S, Buckets
from raftkv.quota import KEY_OVERHEAD
from raftkv.raft import (
    NONE,
    ConfChange,
    ConfChangeBusy,
    ConfChangeError,
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
from raftkv.snapshot_writer import InlineSnapshotWriter, SnapshotWriteError
from raftkv.snapshots import (
    ChunkSource,
    MemoryPieces,
    Pieces,
    SnapshotReceiver,
    SnapshotSender,
    SpooledPieces,
    discard_data,
)
from raftkv.storage import Identity, Storage
from raftkv.storage.fs import OS_FS
from raftkv.watch import Compacted, WatchHistory
from raftkv.wire import MAX_SCAN, ClientRequest, ReplyCode, ReqOp, SnapshotChunk

log = logging.getLogger("raftkv.node")

LOG_TAIL = 32  # [index, term] pairs of the log's end in STATUS (the dashboard's strips)
# A leader's Ready with at most this many committed entries, and no input waiting, is
# synced on the loop's own thread, as a follower's always is (see process_ready).
_INLINE_SYNC_MAX = 4
# Enum members the per-request and per-entry loops compare with, bound once: on Python
# 3.11 each `ReqOp.GET` is an attribute lookup through the enum's class (~65 ns), and
# with several per request they cost the leader's request loop 16 us per 64 gets, 2 us
# bound like this.
_GET, _GET_STALE, _SCAN, _GET_KV = ReqOp.GET, ReqOp.GET_STALE, ReqOp.SCAN, ReqOp.GET_KV
_WATCH = ReqOp.WATCH
_KEEPALIVE, _LEASE_INFO, _OLDEST = ReqOp.LEASE_KEEPALIVE, ReqOp.LEASE_INFO, ReqOp.OLDEST
_LEASE_LIST = ReqOp.LEASE_LIST
_LEASE_READS = frozenset({_KEEPALIVE, _LEASE_INFO, _LEASE_LIST})
# Served after a ReadIndex round.
_LEADER_READS = frozenset({_GET, _SCAN, _GET_KV, _OLDEST, *_LEASE_READS})
_TRANSFER, _CONF_CHANGE_OP, _CONTROL, _STATUS = (ReqOp.TRANSFER, ReqOp.CONF_CHANGE,
                                                 ReqOp.CONTROL, ReqOp.STATUS)
_NORMAL, _CONF_CHANGE_ENTRY = EntryType.NORMAL, EntryType.CONF_CHANGE
_OK, _UNAVAILABLE = ReplyCode.OK, ReplyCode.UNAVAILABLE
_GROWING = frozenset({ReqOp.PUT, ReqOp.CAS, ReqOp.TXN})  # the writes a quota may refuse
_SNAPSHOT_CHUNKS_PER_TURN = 4  # a turn streams this many chunks of snapshot to followers
MAX_WATCHERS = 10_000  # WATCH requests a node holds waiting for events


@dataclass(slots=True)
class _Watcher:
    """A WATCH request waiting for an event, until `deadline` (the clock's)."""

    req: ClientRequest
    deadline: float


@dataclass(slots=True)
class _PendingWrite:
    identity: Route
    request_id: int
    term: int
    op: ReqOp


@dataclass(slots=True)
class _ReadBatch:
    """All reads of one loop turn share one ReadIndex round."""

    requests: list[ClientRequest] = field(default_factory=list)
    index: int = 0  # set when released


def open_storage(cfg: NodeConfig) -> Storage:
    """The node's data dir, opened and recovered as every start of the node does: a
    damaged log mid-WAL is cut and repaired from the peers (`begin_repair`)."""
    return Storage.open(cfg.data_dir, fsync=cfg.fsync, segment_bytes=cfg.segment_bytes,
                        identity=Identity(cfg.cluster_id, cfg.id), create=cfg.create_dir,
                        repair=True, fs=cfg.fs)


class Replica:
    """The replica of node `cfg.id`, started from what `storage` recovered.

    `storage` is open (`open_storage`); `syncer` syncs that same storage. `transport`
    knows the configured peers (`cfg.peers`); the replica adds the members its state
    and log name. `new_state` makes an empty state machine (a KVStore with the
    configured limits by default); it is also what a received snapshot is restored
    into before it may replace anything. `open_state` opens the node's own state
    machine, if that is not `new_state` (a state kept on disk: raftkv.lmdb_state).
    `snapshot_writer` writes local snapshots (inline by default, stopping the replica
    while it does).
    """

    def __init__(self, cfg: NodeConfig, storage: Storage, transport: Transport,
                 syncer: Syncer, clock: Clock,
                 new_state: Callable[[], StateMachine] | None = None,
                 snapshot_writer: SnapshotWriter | None = None,
                 open_state: Callable[[], StateMachine] | None = None) -> None:
        self.cfg = cfg
        self.storage = storage
        self.transport = transport
        self.syncer = syncer
        self.clock = clock
        self.snapshot_writer: SnapshotWriter = snapshot_writer or InlineSnapshotWriter()
        self.new_state: Callable[[], StateMachine] = new_state or (
            lambda: KVStore(max_key_size=cfg.max_key, max_value_size=cfg.max_value))
        repairing = storage.repair is not None
        if repairing:
            begin_repair(storage)
        self.kv = (open_state or self.new_state)()
        # The state machine goes on from where it was when the node stopped if it kept
        # that state (`--state lmdb` after kill -9), or else starts from the newest
        # snapshot; then it re-applies the log after its applied index.
        snapshot = storage.snapshot
        floor = snapshot.index if snapshot else 0
        resumed = self.kv.resume(floor, storage.last_index)
        if not resumed and snapshot is not None:
            data = storage.snapshot_data()
            assert data is not None
            try:
                self.kv.restore(data)
            finally:
                discard_data(data)
        # Whether the state went on from where the node stopped (STATUS shows it).
        self.resumed_state = resumed
        if resumed:
            log.info("state kept across the restart: applied up to index %d, the log "
                     "replays from there", self.kv.applied_index)
        # The events of the writes replayed and applied from here on (raftkv/watch.py).
        self.watch_history = WatchHistory(cfg.watch_bytes,
                                          self.kv.applied_index if resumed else floor)
        self.kv.events = [] if cfg.watch_bytes else None
        self.watchers: list[_Watcher] = []
        log_tail = storage.entries_after_snapshot()  # a copy: read it once
        self.core = Raft(
            cfg.raft_config(),
            hard_state=storage.hard_state,
            entries=log_tail,
            snapshot=snapshot,
            applied=self.kv.applied_index if resumed else floor,
            repairing=repairing,
        )
        self.snapshot_sender = SnapshotSender(self.open_snapshot_source, cfg.snapshot_chunk)
        self.spool_names = itertools.count(1)
        self.snapshot_receiver = SnapshotReceiver(self.restore_scratch,
                                                  self.new_snapshot_pieces)
        self.bytes_since_snapshot = 0
        # The local snapshot being written, and when it started; None when none is.
        self.snapshotting: SnapshotMeta | None = None
        self.snapshot_started = 0.0
        # Each node draws its own thresholds, so the members of a cluster snapshot at
        # different indexes, not all at once.
        self.snapshot_rng = random.Random(cfg.seed)
        self.snapshot_scale = self.draw_snapshot_scale()
        self.snapshot_from = storage.snapshot.index if storage.snapshot else 0
        hs = storage.hard_state
        self.durable_term_vote = (hs.term, hs.vote)
        # Where every member listens: configuration (the transport's), then members added
        # through the log (kept in the state machine, so they survive compaction), then
        # the log's tail. `addresses` keeps every one learned, so that a member the log
        # takes out and then puts back is reached again (`wire_members`).
        self.addresses: dict[int, str] = {**cfg.peers}
        for node_id, address in {**self.kv.members, **added_addresses(log_tail)}.items():
            self.learn_address(node_id, address)
        self._wired: tuple[frozenset[int], frozenset[int]] | None = None
        self.pending_writes: dict[int, _PendingWrite] = {}  # log index -> who waits
        self.read_batches: dict[int, _ReadBatch] = {}  # ReadIndex ctx -> its reads
        self.released: list[_ReadBatch] = []  # confirmed, waiting for apply to catch up
        self.next_read_ctx = 1
        # The Ready whose fsync is running; None when none is. Until it is done the core
        # is stepped but not asked for another Ready.
        self.syncing: Ready | None = None
        # While a Ready syncs the syncer owns the Storage, so what needs it waits:
        # received snapshots to step (installing one replaces the log that Ready
        # describes), snapshots to send (their bytes are read from storage).
        self.deferred: list[Message] = []
        self.unsent_snapshots: list[Message] = []
        # What STATUS shows of storage: a copy taken while the replica owned it.
        self.storage_view = self.storage_status()
        self.started = clock.monotonic()
        self.failpoints = failpoints.enabled()
        # The leader's clock over the leases (raftkv/lease_timer.py); idle on a follower.
        # The lease-half-ttl failpoint's deliberate bug: leases expire early.
        self.lease_timer = LeaseTimer(
            scale=0.5 if "lease-half-ttl" in self.failpoints else 1.0)
        for name in sorted(self.failpoints):
            log.warning("FAILPOINT %s is ON: %s", name, failpoints.KNOWN[name])
        self.counters = {"proposals": 0, "reads": 0, "fsyncs": 0, "elections_won": 0,
                         "not_leader": 0, "snapshots_taken": 0, "snapshots_installed": 0,
                         "snapshots_sent": 0, "snapshots_older_kept": 0,
                         "snapshots_failed": 0,
                         "last_snapshot_ms": 0, "last_snapshot_start_ms": 0,
                         "last_snapshot_adopt_ms": 0, "applied_during_snapshots": 0,
                         "longest_turn_ms": 0, "quota_refused": 0,
                         "watchers": 0, "watch_events": 0, "watch_compacted": 0,
                         "leases_expired": 0,
                         **dict.fromkeys(EVENT_COUNTERS, 0)}
        self.events = EventLog(clock.time)
        self.fsync_seconds = Buckets(FSYNC_BOUNDS_S)
        self.append_batch = Buckets(BATCH_BOUNDS)
        self.loop_turn = Buckets(TURN_BOUNDS_S)
        self.metrics_port = 0  # set by the node once /metrics is served

    # -- one turn of the driver's loop -------------------------------------------------

    def receive(self, messages: list[Message | SnapshotChunk],
                requests: list[ClientRequest]) -> None:
        """Step peer messages into the core (snapshot chunks are assembled first), then
        take the client requests."""
        step = self.core.step
        for m in messages:
            if type(m) is SnapshotChunk:
                self.receive_snapshot_chunk(m)
                continue
            step(m)
        if requests:
            self.handle_requests(requests)

    def tick(self) -> None:
        self.core.tick()
        if self.watchers:
            self.expire_watchers()
        if self.lease_timer.deadlines:
            self.maybe_revoke_leases()

    def process(self) -> None:
        """The end of a turn: while a Ready syncs, send what may leave before it is
        durable (a leader's appends of what was proposed meanwhile); then handle Readies
        (`process_ready`); adopt a snapshot its writer finished; send the next chunks
        of snapshots streaming to followers."""
        if self.syncing is not None:
            self.send(self.core.take_messages())
        self.process_ready()
        # Adopted only once the core's messages are out: a SNAP among them names the
        # snapshot storage holds until then.
        if (self.syncing is None and self.snapshotting is not None
                and self.snapshot_writer.done()):
            self.finish_snapshot()
        if self.snapshot_sender.active:
            self.transport.send_many(self.snapshot_sender.pump(
                _SNAPSHOT_CHUNKS_PER_TURN * self.cfg.snapshot_chunk))

    # -- Ready -------------------------------------------------------------------------

    def process_ready(self) -> None:
        """Handle Readies until the core has none, or one waits for its fsync."""
        core = self.core
        while self.syncing is None and core.has_ready():
            rd = core.ready()
            if rd.repaired:
                self.storage.finish_repair()
            if self._wired is None or (core.voters is not self._wired[0]
                                       or core.learners is not self._wired[1]):
                # The configuration changed (ordinary batches cost two identity checks):
                # a member added in this batch gets its first append in these messages.
                self.wire_members(rd.entries)
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
                t0 = self.clock.monotonic()
                self.storage.sync()
                self.record_sync(self.clock.monotonic() - t0)
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
                sender = self.snapshot_sender
                if sender.start(m, self.core.log.offset):
                    self.counters["snapshots_sent"] += 1
                if sender.sending_to(m.to) != m.snapshot:
                    self.counters["snapshots_older_kept"] += 1
            else:
                self.transport.send(m)

    # -- snapshots (paper §7) ----------------------------------------------------------

    def open_snapshot_source(self, meta: SnapshotMeta) -> ChunkSource:
        stored = self.storage.snapshot
        if stored != meta:
            raise InvariantViolation(f"asked to send snapshot {meta}, storage has {stored}")
        return self.storage.snapshot_source(meta)

    @property
    def sending_snapshot(self) -> bool:
        """Whether snapshot chunks wait to be sent: the driver should turn again soon."""
        return self.snapshot_sender.active

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
            dropped = self.snapshot_receiver.drop(m.snapshot)
            if dropped is not None:
                dropped.discard()

    def new_snapshot_pieces(self, c: SnapshotChunk) -> Pieces:
        """Where a snapshot from the leader waits until it is whole: a temp file in the
        data dir (removed at the next open if a crash leaves it), never in memory whole,
        on the OS's file system; in memory on another (the simulator's)."""
        storage = self.storage
        if storage.fs is not OS_FS:
            return MemoryPieces()
        # A name of its own per transfer: a resend of a snapshot must never write into
        # the file of one accepted and not yet installed.
        name = f"snap-incoming-{c.frm}-{c.meta.index:020d}-{next(self.spool_names)}.tmp"
        return SpooledPieces(storage.dir / name)

    def restore_scratch(self, meta: SnapshotMeta, data: SnapshotData) -> StateMachine:
        """A fresh state machine restored from a received snapshot, before the snapshot
        may replace anything. Raises SnapshotError if the bytes do not hold the state
        up to `meta.index`."""
        scratch = self.new_state()
        try:
            scratch.restore(data)
            # The store's index may trail meta.index, never pass it: entries that change
            # no state (a new leader's NOOP) do not move it, and every entry after
            # meta.index is applied after the snapshot, which the store refuses at an
            # index it has applied.
            if scratch.applied_index > meta.index:
                raise SnapshotError(f"the state has applied up to index "
                                    f"{scratch.applied_index}, past the snapshot's "
                                    f"{meta.index}")
        except BaseException:
            scratch.discard()
            raise
        return scratch

    def install_snapshot(self, meta: SnapshotMeta, hard_state: HardState | None) -> None:
        """A snapshot from the leader replaces our state: durable first (after the term
        that brought it), then the state machine restored from it on arrival
        (`restore_scratch`) is swapped in."""
        accepted = self.snapshot_receiver.take(meta)
        data = accepted.data
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        try:
            self.storage.save_snapshot(meta, data, hard_state)
        finally:
            discard_data(data)
        self.kv = accepted.state.succeed(self.kv)
        self.kv.events = [] if self.cfg.watch_bytes else None
        self.watch_history.reset(meta.index)  # the events before it are not ours to give
        self.wake_watchers()
        for node_id, address in self.kv.members.items():
            self.learn_address(node_id, address)
        self.bytes_since_snapshot = 0
        self.snapshot_from = meta.index
        self.counters["snapshots_installed"] += 1
        log.info("installed snapshot at index %d (term %d, %d bytes)", meta.index, meta.term,
                 size)

    def draw_snapshot_scale(self) -> float:
        """This node's factor on the snapshot thresholds, until its next snapshot:
        uniform in [1, 1 + snapshot_jitter)."""
        return 1.0 + self.snapshot_rng.random() * self.cfg.snapshot_jitter

    def maybe_snapshot(self) -> None:
        """Start a snapshot once the log since the last one is over this node's
        threshold. The state is serialized and written off the loop (`snapshot_writer`);
        the log is compacted once the file is durable (`finish_snapshot`)."""
        if self.snapshotting is not None:
            return
        core, cfg, scale = self.core, self.cfg, self.snapshot_scale
        applied = core.log.applied
        if (applied - self.snapshot_from < cfg.snapshot_entries * scale
                and self.bytes_since_snapshot < cfg.snapshot_bytes * scale):
            return
        t0 = self.clock.monotonic()
        meta = core.snapshot_meta(applied)
        if not meta.voters:
            # A node that joined a running cluster starts with no configuration, and
            # learns none before the entry that added it: a snapshot below that entry
            # would name no members, and every receiver would refuse it. It snapshots
            # once it has applied that far.
            return
        self.snapshotting, self.snapshot_started = meta, t0
        self.snapshot_from = applied
        self.bytes_since_snapshot = 0
        self.snapshot_scale = self.draw_snapshot_scale()
        self.snapshot_writer.start(self.kv.capture(),
                                   partial(self.storage.write_snapshot_file, meta))
        self.counters["last_snapshot_start_ms"] = round((self.clock.monotonic() - t0) * 1000, 3)
        if self.snapshot_writer.done():  # written inline: adopt it in this same turn
            self.finish_snapshot()

    def finish_snapshot(self) -> None:
        """The snapshot writer is done: a file written whole becomes the snapshot, in
        storage and then in the core, which drop the log it covers. A failed write is
        logged and counted, and the next one starts after another threshold's worth."""
        meta = self.snapshotting
        assert meta is not None
        self.snapshotting = None
        t0 = self.clock.monotonic()
        try:
            self.snapshot_writer.finish()
        except SnapshotWriteError as e:
            self.counters["snapshots_failed"] += 1
            log.error("snapshot at index %d not taken: %s", meta.index, e)
            self.storage.discard_snapshot_file(meta)
            return
        in_flight = self.snapshots_in_flight()
        if not self.storage.adopt_snapshot(meta, keep_files=in_flight):
            log.info("snapshot at index %d dropped: one from the leader at %d came first",
                     meta.index, self.storage.snapshot.index)
            return
        # A follower that installs a snapshot in flight goes on from the log after it:
        # that much is kept (etcd pauses compaction for a snapshot in flight too).
        catch_up = max(self.catch_up_entries(meta.index),
                       meta.index - min(in_flight, default=meta.index))
        self.core.compact(meta.index, catch_up)
        if self.core.snapshot != meta:
            raise InvariantViolation(f"storage took snapshot {meta}, the core made "
                                     f"{self.core.snapshot}")
        now = self.clock.monotonic()
        self.counters["snapshots_taken"] += 1
        # Zero for a writer that stops the loop (it adopts in the turn that started it):
        # the count says the loop went on while the file was written.
        self.counters["applied_during_snapshots"] += self.core.log.applied - meta.index
        self.counters["last_snapshot_ms"] = round((now - self.snapshot_started) * 1000, 3)
        self.counters["last_snapshot_adopt_ms"] = round((now - t0) * 1000, 3)
        log.info("snapshot at index %d taken in %.1f ms; the loop stopped for %.1f ms to "
                 "start it and %.1f ms to adopt it", meta.index,
                 self.counters["last_snapshot_ms"], self.counters["last_snapshot_start_ms"],
                 self.counters["last_snapshot_adopt_ms"])

    def snapshots_in_flight(self) -> set[int]:
        """The indexes of the snapshots a follower may yet install from us: those
        streaming, and those sent whole to a follower the core still waits on (until its
        snapshot wait runs out, a bounded time): if chunks were lost, they are sent
        again (SnapshotSender.start). Their files and the log after them are kept."""
        if self.core.role != Role.LEADER:
            return set()
        waited_on = self.core.awaiting_snapshot()
        return self.snapshot_sender.sending() | {
            index for to, index in self.snapshot_sender.sent().items() if to in waited_on}

    def catch_up_entries(self, index: int) -> int:
        """How many entries up to `index` the log keeps when a snapshot there compacts
        it: `snapshot_catch_up_entries`, fewer if they hold over a quarter of
        `snapshot_bytes` of data (the log is in memory)."""
        entries, top = self.core.log.entries, index - self.core.log.offset
        budget, limit = self.cfg.snapshot_bytes // 4, min(self.cfg.snapshot_catch_up_entries, top)
        for n in range(limit):
            budget -= len(entries[top - 1 - n].data)  # the entry at index - n
            if budget < 0:
                return n
        return limit

    def record_turn(self, seconds: float) -> None:
        """How long one turn of the driver's loop worked (its wait for input excluded)."""
        self.loop_turn.observe(seconds)
        ms = seconds * 1000
        if ms > self.counters["longest_turn_ms"]:
            self.counters["longest_turn_ms"] = round(ms, 3)

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
        self.kv.flush()
        timer = self.lease_timer
        if timer.leading and timer.epoch != self.kv.lease_epoch:  # a grant or revoke applied
            timer.reconcile(self.kv.lease_ttls, self.kv.lease_epoch, self.clock.monotonic())
        events = self.kv.events
        if events:
            self.watch_history.extend(events)
            events.clear()
            if self.watchers:
                self.wake_watchers()

    # -- membership (thesis §4.1) ------------------------------------------------------

    def learn_address(self, node_id: int, address: str) -> bool:
        """Reach `node_id` at `address` from now on; whether the transport changed."""
        self.addresses[node_id] = address
        return self.transport.set_peer(node_id, address)

    def wire_members(self, entries: list[Entry]) -> None:
        """The configuration in force changed: every member of it is reachable. A
        configuration takes effect when its entry is appended (§4.1), so a member that
        `entries` add is reached at their address at once, before the entry commits. A
        member can also come back without an entry that adds it: a follower's log
        truncated away the entry that removed it (a change is undone with its entry),
        after the committed removal before it had disconnected it."""
        added = added_addresses(entries)
        for node_id, address in added.items():
            if self.learn_address(node_id, address):
                log.info("member %d is at %s", node_id, address)
        core = self.core
        self._wired = (core.voters, core.learners)
        peers, me = self.transport.peers, self.cfg.id
        for node_id in core.voters | core.learners:
            if node_id != me and node_id not in peers and node_id in self.addresses:
                self.transport.set_peer(node_id, self.addresses[node_id])

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
            elif cc.node_id not in self.core.voters | self.core.learners:
                # Disconnected only if no later entry in the log added it back: the
                # configuration in force is the log's latest (§4.1), and applying trails
                # appending (a restart replays the whole log; a lagging follower appends
                # a removal and a re-add in one batch).
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
                self.learn_address(cc.node_id, cc.address)
            self.pending_writes[index] = _PendingWrite(req.identity, req.request_id,
                                                       self.core.term, req.op)

    def ack_before_commit(self, rd: Ready) -> None:
        """FAILPOINT: answer puts once only our own disk has them (a deliberate bug)."""
        for e in rd.entries:
            w = self.pending_writes.get(e.index)
            if w is not None and w.op == ReqOp.PUT and w.term == e.term:
                del self.pending_writes[e.index]
                # what the put would answer once applied: its revision
                self.transport.reply(w.identity, w.request_id, ReplyCode.OK, e.index)

    def on_role_change(self, rd: Ready) -> None:
        ss = rd.soft_state
        self.transport.leader_hint = ss.lead
        log.info("now %s; leader %s", ss.role.name.lower(), ss.lead or "unknown")
        if ss.role == Role.LEADER:
            self.counters["elections_won"] += 1
            self.lease_timer.start(self.kv.lease_ttls, self.kv.lease_epoch,
                                   self.clock.monotonic())
            return
        self.lease_timer.stop()
        if self.pending_writes:
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
            if op in _LEADER_READS:
                if batch is None:
                    batch = _ReadBatch()
                batch.requests.append(req)
            elif op == _GET_STALE:
                # Any role answers from what it has applied: fast, possibly stale.
                self.counters["reads"] += 1
                self.transport.reply(req.identity, req.request_id, _OK, self.kv.get(req.key))
            elif op == _WATCH:
                self.watch(req)
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
        if req.op in _GROWING and self.core.role == Role.LEADER and self.over_quota(req):
            return
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

    def over_quota(self, req: ClientRequest) -> bool:
        """Refuse (QUOTA_EXCEEDED) a write that would take the state past its quota. The
        leader decides before proposing, as etcd does, never the state machine, so that
        replicas whose quota differs cannot diverge; writes already in the log when the
        state reaches the quota still apply, so it may pass it by what was in flight."""
        size, quota = self.kv.size, self.cfg.quota_bytes
        if req.txn is None:
            # A write grows the state by at most a new key's whole count: below the quota
            # by that much (almost always), no lookup of the key on the request path.
            value = req.value or b""
            if (size + len(req.key) + len(value) + KEY_OVERHEAD <= quota
                    or size + self.kv.growth(req.key, value) <= quota):
                return False
        else:  # the puts of both branches, as if both ran
            puts = [(op[1], op[2]) for ops in req.txn[1:] for op in ops if op[0] == ReqOp.PUT]
            if (size + sum(len(k) + len(v) + KEY_OVERHEAD for k, v in puts) <= quota
                    or size + sum(self.kv.growth(k, v) for k, v in puts) <= quota):
                return False
        self.counters["quota_refused"] += 1
        self.transport.reply(
            req.identity, req.request_id, ReplyCode.QUOTA_EXCEEDED,
            f"the state holds {size:,} bytes (keys, values and {KEY_OVERHEAD} bytes a key) "
            f"and this write would take it past its quota of {self.cfg.quota_bytes:,} "
            "(--quota-bytes): delete keys, or raise the quota on every node")
        return True

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
                elif req.op in _LEASE_READS:
                    self.serve_lease(req)
                    continue
                elif req.op == _GET_KV:
                    kv = self.kv.get_kv(req.key)
                    value = None if kv is None else list(kv)
                elif req.op == _OLDEST:
                    value = self.kv.oldest(req.key)
                else:
                    limit = min(req.limit or MAX_SCAN, MAX_SCAN)
                    if req.revisions:
                        value = self.kv.scan_kv(req.key, limit, req.start)
                    else:
                        value = [list(kv) for kv in self.kv.scan(req.key, limit, req.start)]
                reply(req.identity, req.request_id, _OK, value)

    # -- leases (raftkv/lease_timer.py) ---------------------------------------------------

    def maybe_revoke_leases(self) -> None:
        """Propose the revoke of each lease whose TTL ran out on this leader's clock.
        The revoke carries no session: a second copy finds the lease gone and does
        nothing."""
        for lease_id in self.lease_timer.due(self.clock.monotonic()):
            try:
                self.core.propose(encode_lease(Op.LEASE_REVOKE, lease_id, client_id=0, seq=0))
            except (NotLeader, ProposalDropped):
                return  # `due` hands it out again after its retry, if this node still leads
            self.counters["leases_expired"] += 1
            log.info("lease %d expired (TTL %d ms): revoke proposed", lease_id,
                     self.kv.lease_ttls.get(lease_id, 0))

    def serve_lease(self, req: ClientRequest) -> None:
        """KEEPALIVE, LEASE_INFO or LEASE_LIST, after its ReadIndex round: only the
        leader times leases, so only it answers. LEASE_LIST names the applied index its
        table is that of: the state the read saw, exactly (a backup relies on it)."""
        reply, timer = self.transport.reply, self.lease_timer
        if not timer.leading:
            self.counters["not_leader"] += 1
            reply(req.identity, req.request_id, ReplyCode.NOT_LEADER,
                  f"node {self.cfg.id} is not the leader", self.core.lead)
            return
        # The timer was reconciled with the state after the batch that applied the read's
        # index (`apply`), and started when this node took the lead.
        now = self.clock.monotonic()
        if req.op == _LEASE_LIST:
            table = [[lid, ttl, round((timer.remaining(lid, now) or 0.0) * 1000), keys]
                     for lid, ttl, keys in self.kv.leases()]
            reply(req.identity, req.request_id, _OK, [self.kv.applied_index, table])
            return
        ttl = self.kv.lease_ttls.get(req.lease)
        if ttl is None:
            reply(req.identity, req.request_id, ReplyCode.NOT_FOUND,
                  lease_not_found(req.lease).value)
        elif req.op == _LEASE_INFO:
            entry = self.kv.lease(req.lease)
            left = timer.remaining(req.lease, now) or 0.0
            reply(req.identity, req.request_id, _OK, [ttl, round(left * 1000), entry[1]])
        elif timer.renew(req.lease, ttl, now):
            reply(req.identity, req.request_id, _OK, ttl)
        else:
            reply(req.identity, req.request_id, ReplyCode.NOT_FOUND,
                  f"lease {req.lease} expired: its TTL ran out and its revoke is under way")

    # -- watches (raftkv/watch.py) -------------------------------------------------------

    def watch(self, req: ClientRequest) -> None:
        """Answer a WATCH with the events it asks for now, or hold it until some come
        or its wait is over. Any role answers: the events are those of the log it
        applied, the same at the same revision on every node."""
        if not self.cfg.watch_bytes:
            self.transport.reply(req.identity, req.request_id, ReplyCode.BAD_REQUEST,
                                 f"node {self.cfg.id} keeps no watch history "
                                 "(--watch-history-bytes 0)")
            return
        if not req.revision:
            req.revision = self.kv.applied_index + 1  # from the next write on
        if self.answer_watch(req) or not req.wait_ms:
            return
        if len(self.watchers) >= MAX_WATCHERS:
            self.transport.reply(req.identity, req.request_id, ReplyCode.UNAVAILABLE,
                                 f"node {self.cfg.id} holds {MAX_WATCHERS} watches already")
            return
        self.watchers.append(_Watcher(req, self.clock.monotonic() + req.wait_ms / 1000))
        self.counters["watchers"] = len(self.watchers)

    def answer_watch(self, req: ClientRequest, *, even_if_none: bool = False) -> bool:
        """Reply to a WATCH if it has events (or `even_if_none`), or COMPACTED if the
        history no longer reaches its revision; whether it was answered."""
        try:
            events, next_revision = self.watch_history.since(
                req.revision, req.key, req.prefix, self.kv.applied_index)
        except Compacted as e:
            self.counters["watch_compacted"] += 1
            self.transport.reply(req.identity, req.request_id, ReplyCode.COMPACTED, e.oldest)
            return True
        if not events and not even_if_none:
            return False
        self.counters["watch_events"] += len(events)
        self.transport.reply(req.identity, req.request_id, _OK,
                             [next_revision, [list(e) for e in events]])
        return True

    def wake_watchers(self) -> None:
        """New events (or a history started anew): answer the watches they concern."""
        self.watchers = [w for w in self.watchers if not self.answer_watch(w.req)]
        self.counters["watchers"] = len(self.watchers)

    def expire_watchers(self) -> None:
        """Answer the watches whose wait is over, with no events."""
        now, waiting = self.clock.monotonic(), []
        for w in self.watchers:
            if w.deadline <= now:
                self.answer_watch(w.req, even_if_none=True)
            else:
                waiting.append(w)
        self.watchers = waiting
        self.counters["watchers"] = len(waiting)

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
            uptime_s=round(self.clock.monotonic() - self.started, 3),
            transport=dict(self.transport.stats),
            **self.storage_view,
            kv={"keys": len(self.kv), "sessions": self.kv.session_count,
                "malformed": self.kv.stats.malformed, "bytes": self.kv.size,
                "quota_bytes": self.cfg.quota_bytes, "state": self.cfg.state,
                "resumed": self.resumed_state},
            counters=self.counter_values(),
            failpoints=sorted(self.failpoints),
            log_tail=self.core.log_tail(LOG_TAIL),
            events=self.events.tail(),
            histograms=self.histograms(),
            metrics_port=self.metrics_port,
        )
        return s

    def storage_status(self) -> dict[str, Any]:
        """STATUS's view of storage. Only while the replica owns it (no Ready syncing):
        `status` shows the copy taken last, refreshed then and after each sync."""
        return {"storage": self.storage.stats(), "repair": self.storage.repair}

    def counter_values(self) -> dict[str, int | float]:
        """The replica's counters with those its helpers keep. `dropped_invalid`: peer
        messages the core dropped as impossible (a buggy peer's), every reason summed;
        STATUS's `dropped` has them by reason (raftkv.raft.core.DROP_REASONS)."""
        return {**self.counters, "snapshots_rejected": self.snapshot_receiver.rejected,
                "dropped_invalid": sum(self.core.dropped.values())}

    def histograms(self) -> dict[str, Any]:
        return {"fsync_seconds": self.fsync_seconds.to_dict(),
                "append_batch_entries": self.append_batch.to_dict(),
                "loop_turn_seconds": self.loop_turn.to_dict()}

    def metrics_view(self) -> dict[str, Any]:
        """What /metrics shows: the STATUS values that are safe to read from the metrics
        server's thread (attribute loads, copies of fixed-key dicts and lists)."""
        core, raft_log = self.core, self.core.log
        return {"term": core.term, "role": core.role.name.lower(),
                "last_index": raft_log.last_index(), "commit_index": raft_log.committed,
                "applied_index": raft_log.applied,
                "snapshot_index": snapshot.index if (snapshot := core.snapshot) else 0,
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
