"""A simulated world around real replicas: raftkv.replica.Replica, the real Storage on a
disk that loses power, the real wire codec, driven by seeded events (after TigerBeetle's
VOPR and FoundationDB's simulation: the production replica, a simulated everything else).

What runs real: `Replica` (Ready handling, the inline/threaded sync decision, pending
writes and read batches, snapshots and their chunked transfer, membership glue; not
repair, which only damage mid-log starts and a power cut never leaves), the core inside
it, `Storage` (WAL, VOTE, snapshot files, recovery) over `tests/powerloss.py`'s
`PowerLossFS`, `KVStore` with its sessions, the wire codec for every peer frame, request
and reply, and the transport's FAULT/PEERS handling (`raftkv.transport.serve_control`).

What is simulated, all from one seed, in integer milliseconds (the network, transport,
syncer and clock are in tests/sim/replica_io.py):

- time: one event queue; each node ticks every `tick_ms` at its own phase;
- the network (`Network`): every frame is delayed, and may be lost, duplicated,
  reordered or cut by a partition; rules per Raft message type (lose or delay TimeoutNow);
- the transport (`SimTransport`): the real one's bookkeeping (peers, the fault filter, a
  frame from a peer it does not know is dropped) over `Network`;
- persistence in the background (`SimSyncer`): a Ready the replica syncs "on the thread"
  stays unsynced for a drawn number of milliseconds while the node keeps taking input;
- pauses (`World.pause`: SIGSTOP, a stalled disk): input waits, one tick on resuming;
- crashes (`World.crash`): a power cut (`PowerLossFS.crash`: unsynced writes lost or
  torn), optionally in the middle of a turn (`cut_power_soon`: the disk dies after n more
  operations, so a Ready's early messages are out and its fsync is not), or a killed
  process (the page cache survives). A restart reopens Storage on what the disk kept
  and builds a new Replica, as a restarted process does.

Nothing here reads a wall clock or starts a thread: a seed replays exactly.

Checked on every Ready a replica takes (tests/sim/replica_checks.py, the Raft paper's
Figure 3): election safety, log matching, leader completeness, and state machine safety
(every applied entry is the one committed at its index); after every turn, that the
replica can reach every member of its own configuration.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from raftkv.config import NodeConfig
from raftkv.raft import EventKind, Ready, Role
from raftkv.replica import Replica, open_storage
from raftkv.storage import StorageError
from raftkv.wire import decode_reply
from tests.powerloss import PowerCut, PowerLossFS
from tests.sim.replica_checks import ReplicaChecker, SimFailure
from tests.sim.replica_io import (
    Network,
    SimClock,
    SimSnapshotWriter,
    SimSyncer,
    SimTransport,
    address,
)

# -- nodes -------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class SimNode:
    id: int
    cfg: NodeConfig
    fs: PowerLossFS = dataclasses.field(default_factory=PowerLossFS)
    replica: Replica | None = None
    transport: SimTransport | None = None
    syncer: SimSyncer | None = None
    gen: int = 0  # incarnations: events of an earlier one are ignored
    boots: int = 0
    created: bool = False  # its data dir was made: later starts leave out --new/--join
    turn_pending: bool = False
    tick_due: bool = False
    down_since: int = 0
    cut_armed: bool = False
    paused_until: int = 0  # SIGSTOP: input waits in its socket until then
    replicas: list[Replica] = dataclasses.field(default_factory=list)  # every incarnation

    @property
    def alive(self) -> bool:
        return self.replica is not None


class World:
    """Nodes, clients, the network and time, advanced one event at a time."""

    def __init__(self, seed: int, *, tick_ms: int = 10, sync_ms: tuple[int, int] = (0, 4),
                 trace_len: int = 120) -> None:
        self.seed = seed
        self.rng = random.Random(f"world-{seed}")
        self.fs_rng = random.Random(f"disk-{seed}")
        self.now = 0
        self._seq = 0
        self._queue: list[tuple[int, int, Callable[..., None], tuple]] = []
        self.net = Network(self, random.Random(f"net-{seed}"))
        self.clock = SimClock(self)
        self.tick_ms = tick_ms
        self.sync_ms = sync_ms
        self.nodes: dict[int, SimNode] = {}
        self.clients: dict[bytes, Any] = {}  # identity -> a client with on_reply(reply)
        self.checker = ReplicaChecker()
        self.trace: deque[tuple] = deque(maxlen=trace_len)
        self.dropped: Counter[str] = Counter()  # what crashed cores dropped as impossible
        self.crashes: Counter[str] = Counter()
        self.stamps = 0
        # Observers of every Ready a replica takes, after the safety checks (node, rd).
        self.on_ready_hooks: list[Callable[[SimNode, Ready], None]] = []
        self.partial_recv = 0.3  # how often a turn takes only part of the inbox
        self.snapshot_transfers: Counter[int] = Counter()  # to node id: chunks at 0 sent
        # How often the real paths under test ran (summed over a chunk of seeds, so that
        # a change that stops exercising one shows up).
        self.coverage: Counter[str] = Counter()

    # -- time --------------------------------------------------------------------------

    def at(self, when: int, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, fn, args))

    def run_until(self, until: int, stop: Callable[[], bool] | None = None) -> bool:
        """Run events due up to `until` (then the clock stands at `until`); with `stop`,
        return True as soon as it holds (checked after every event)."""
        q = self._queue
        while q and q[0][0] <= until:
            when, _, fn, args = heapq.heappop(q)
            self.now = when
            fn(*args)
            if stop is not None and stop():
                return True
        self.now = max(self.now, until)
        return stop is not None and stop()

    def stamp(self) -> int:
        """A strictly increasing time for a client history: the order events ran in."""
        self.stamps += 1
        return self.now * 1_000_000 + self.stamps

    def note(self, *what: Any) -> None:
        self.trace.append((self.now, *what))

    # -- nodes -------------------------------------------------------------------------

    def add_node(self, node_id: int, cfg: NodeConfig) -> SimNode:
        node = SimNode(node_id, cfg)
        self.nodes[node_id] = node
        return node

    def boot(self, node_id: int) -> None:
        """Start node `node_id` from what its disk holds, as its process would."""
        node = self.nodes[node_id]
        assert not node.alive
        node.gen += 1
        node.boots += 1
        cfg = dataclasses.replace(node.cfg, fs=node.fs, create_dir=not node.created,
                                  seed=self.seed * 1000 + node_id * 100 + node.boots)
        try:
            storage = open_storage(cfg)
        except StorageError as e:
            raise SimFailure(f"node {node_id} cannot restart on what its disk kept: {e}"
                             ) from e
        node.created = True
        node.transport = SimTransport(self, node, cfg)
        node.syncer = SimSyncer(self, node, storage)
        replica = Replica(cfg, storage, node.transport, node.syncer, self.clock,
                          snapshot_writer=SimSnapshotWriter(self, node))
        self._observe(node, replica)
        node.replica = replica
        node.replicas.append(replica)
        node.turn_pending = False
        node.tick_due = False
        node.cut_armed = False
        node.paused_until = 0
        self.note("boot", node_id, replica.core.term, replica.core.log.last_index(),
                  replica.core.log.committed)
        phase = self.rng.randint(1, self.tick_ms)
        self.at(self.now + phase, self._tick, node, node.gen)
        self.wake(node)

    def crash(self, node_id: int, *, power_loss: bool, why: str = "crash") -> None:
        """Kill node `node_id`: with `power_loss` its disk keeps only what a power cut may
        leave; without, its process died and the page cache stays."""
        node = self.nodes[node_id]
        if not node.alive:
            return
        self.dropped.update(node.replica.core.dropped)
        node.replica = node.transport = node.syncer = None
        node.gen += 1
        node.down_since = self.now
        node.cut_armed = False
        if power_loss or node.fs.cut:
            node.fs = node.fs.crash(self.fs_rng)
        else:
            node.fs.cut_after(None)  # the power stays on
            node.fs.kill()
        self.crashes["power" if power_loss else "kill"] += 1
        self.coverage[why] += 1
        self.note(why, node_id, "power" if power_loss else "kill")

    def cut_power_soon(self, node_id: int, ops: int) -> None:
        """The power goes off before the `ops`+1-th disk operation from now: in the middle
        of what the node does next."""
        node = self.nodes[node_id]
        if node.alive and not node.cut_armed:
            node.fs.cut_after(ops)
            node.cut_armed = True
            self.note("cut armed", node_id, ops)

    def _observe(self, node: SimNode, replica: Replica) -> None:
        """Check every Ready the replica takes, as it takes it (Figure 3 properties)."""
        core = replica.core
        real_ready = core.ready
        checker = self.checker
        hooks = self.on_ready_hooks

        def ready() -> Ready:
            rd = real_ready()
            if rd.soft_state is not None and rd.soft_state.role == Role.LEADER:
                self.note("leads", node.id, core.term)
                checker.on_leader(core)
            if rd.entries:
                checker.on_entries(core, rd.entries)
            if core.log.committed > checker.max_committed:
                checker.on_commit(core, min(core.log.committed, core.log.last_index()))
            for e in rd.committed_entries:
                checker.on_apply(node.id, e)
            for ev in rd.events:
                if ev.kind == EventKind.ELECTION_STARTED and "transfer" in ev.reason:
                    self.coverage["transfer_elections"] += 1
            for hook in hooks:
                hook(node, rd)
            return rd

        core.ready = ready  # type: ignore[method-assign]

    def check_reaches_members(self, node: SimNode) -> None:
        """A replica has an address for every member of the configuration its own log
        holds (§4.1: in force once appended), learned from its configuration, its log or
        its snapshot's state (raftkv.replica), not from the controller: PEERS is for a
        node whose log lags behind the configuration. (While a Ready syncs, entries
        appended meanwhile are wired up once it is done.)"""
        r = node.replica
        if r.syncing is not None:
            return
        core = r.core
        unknown = (core.voters | core.learners) - node.transport.peers.keys() - {node.id}
        if unknown:
            raise SimFailure(f"node {node.id} ({core.role.name.lower()}, term {core.term}) "
                             f"has no address for members {sorted(unknown)} of its "
                             "configuration")

    # -- the node's loop, one turn at a time -------------------------------------------

    def wake(self, node: SimNode) -> None:
        """Input is waiting for `node`: its loop takes a turn soon."""
        if not node.turn_pending and node.alive:
            node.turn_pending = True
            self.at(self.now + self.rng.randint(0, 1), self._turn, node, node.gen)

    def deliver(self, dst: int, gen: int, item: tuple[int, Any, bytes]) -> None:
        node = self.nodes[dst]
        if gen != node.gen or not node.alive:
            self.net.stats["to_the_dead"] += 1
            return  # the connection it travelled on is gone with that process
        node.transport.inbox.append(item)
        self.wake(node)

    def reply_arrives(self, client: bytes, frame: bytes) -> None:
        c = self.clients.get(client)
        if c is not None:
            c.on_reply(decode_reply(frame))

    def pause(self, node_id: int, ms: int) -> None:
        """Stop node `node_id`'s process for `ms` (SIGSTOP, a long GC, a stalled disk):
        its input waits, and it ticks once when it resumes, as Node.run does."""
        node = self.nodes[node_id]
        if node.alive:
            node.paused_until = max(node.paused_until, self.now + ms)
            self.note("pause", node_id, ms)

    def _tick(self, node: SimNode, gen: int) -> None:
        if gen != node.gen:
            return
        if node.paused_until > self.now:
            self.at(node.paused_until, self._tick, node, gen)
            return
        self.at(self.now + self.tick_ms, self._tick, node, gen)
        node.tick_due = True
        self._turn(node, gen)

    def _turn(self, node: SimNode, gen: int) -> None:
        """One turn of raftkv.node.Node.run: the syncer's result if it is in, the frames
        that arrived, the tick if due, then `Replica.process`."""
        if gen != node.gen:
            return
        if node.paused_until > self.now:
            self.at(node.paused_until, self._turn, node, gen)
            return
        node.turn_pending = False
        r = node.replica
        transport = node.transport
        take = len(transport.inbox)
        if take > 1 and self.rng.random() < self.partial_recv:
            take = self.rng.randint(1, take - 1)  # the rest arrives during the turn
        try:
            if node.syncer.done():
                r.finish_sync()
            r.receive(*transport.recv(take))
            if node.tick_due:
                node.tick_due = False
                r.tick()
            r.process()
        except PowerCut:
            self.crash(node.id, power_loss=True, why="power cut in a turn")
            return
        self.check_reaches_members(node)
        cov = self.coverage
        if r.syncing is not None:
            cov["turns_while_syncing"] += 1
        if r.deferred:
            cov["snap_deferred"] += 1
        if r.unsent_snapshots:
            cov["snap_send_deferred"] += 1
        if transport.inbox:
            self.wake(node)

    # -- views -------------------------------------------------------------------------

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.alive]

    def leaders(self) -> list[SimNode]:
        return [n for n in self.live() if n.replica.core.role == Role.LEADER]

    def leader(self) -> SimNode | None:
        """The live node that believes it leads in the highest term."""
        best = None
        for n in self.leaders():
            if best is None or n.replica.core.term > best.replica.core.term:
                best = n
        return best

    def format_trace(self) -> list[str]:
        return [f"t={t}ms " + " ".join(str(x) for x in what) for t, *what in self.trace]


def node_config(node_id: int, ids: Iterable[int], *, voters: tuple[int, ...] | None,
                **kw: Any) -> NodeConfig:
    """Node `node_id`'s configuration in the simulator: every other node of `ids` as a
    configured peer, a data dir on its own simulated disk."""
    peers = {i: address(i) for i in ids if i != node_id}
    return NodeConfig(node_id, address(node_id), peers, Path(f"/data/n{node_id}"),
                      initial_voters=voters, **kw)
