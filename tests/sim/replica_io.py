"""What a replica works through in the simulator (tests/sim/replica_sim.py): the network,
the transport over it, the syncer that holds a sync in the background, the clock.

Each keeps the rules of the real one it stands for (raftkv/interfaces.py): the transport
sends nothing to a peer it has no address for and drops frames from a peer it does not
know, as raftkv.transport does; the syncer's `done` is true once per finished sync, as
the node's fsync thread's pipe is readable once. Every frame is encoded and decoded with
raftkv.wire on its way.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from raftkv.config import NodeConfig
from raftkv.raft import Message, MsgType
from raftkv.snapshot_writer import SnapshotWriteError
from raftkv.storage import StorageError
from raftkv.transport import _CONTROL_OPS, peer_identity, serve_control
from raftkv.wire import (
    ClientRequest,
    InvalidRequest,
    MalformedFrame,
    RequestBatch,
    SnapshotChunk,
    decode_frame,
    encode_peer,
    encode_reply,
    max_entry_size,
)
from tests.powerloss import PowerCut
from tests.sim.replica_checks import SimFailure

if TYPE_CHECKING:
    from tests.sim.replica_sim import SimNode, World

PEER, REQUEST = 0, 1  # what a frame in a node's inbox is


def address(node_id: int) -> str:
    return f"tcp://n{node_id}.sim:7700"


# -- the network -------------------------------------------------------------------------


@dataclasses.dataclass
class TypeRule:
    """Extra faults for one Raft message type: lost, duplicated, or late by up to
    `late_ms`."""

    drop: float = 0.0
    dup: float = 0.0
    late_ms: int = 0


class Network:
    """Frames in flight. Partitions (`blocked`, directed pairs of node ids) cut frames
    both when sent and when due; clients are never partitioned."""

    def __init__(self, world: World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        self.drop = 0.0
        self.dup = 0.0
        self.delay = (1, 3)
        self.blocked: set[tuple[int, int]] = set()
        self.rules: dict[MsgType, TypeRule] = {}
        self.stats: Counter[str] = Counter()

    def _copies(self, rule: TypeRule | None) -> list[int]:
        """The delays of the copies of one frame that arrive (none if it is lost)."""
        rng = self.rng
        drop, dup, late = self.drop, self.dup, 0
        if rule is not None:
            drop, dup, late = max(drop, rule.drop), max(dup, rule.dup), rule.late_ms
        if drop and rng.random() < drop:
            self.stats["dropped"] += 1
            return []
        n = 2 if dup and rng.random() < dup else 1
        lo, hi = self.delay
        out = []
        for _ in range(n):
            d = lo if lo == hi else rng.randint(lo, hi)
            if late:
                d += rng.randint(0, late)
            out.append(d)
        return out

    def send_peer(self, src: int, dst: int, m: Message | SnapshotChunk) -> None:
        if (src, dst) in self.blocked:
            self.stats["partitioned"] += 1
            return
        rule = self.rules.get(m.type) if type(m) is Message else None
        delays = self._copies(rule)
        if not delays:
            return
        frame = encode_peer(m)
        node = self.world.nodes[dst]
        for d in delays:
            self.world.at(self.world.now + d, self._arrive_peer, src, dst, node.gen, frame)

    def _arrive_peer(self, src: int, dst: int, gen: int, frame: bytes) -> None:
        if (src, dst) in self.blocked:
            self.stats["partitioned"] += 1
            return
        self.world.deliver(dst, gen, (PEER, src, frame))

    def send_request(self, client: bytes, dst: int, frame: bytes) -> None:
        node = self.world.nodes[dst]
        for d in self._copies(None):
            self.world.at(self.world.now + d, self.world.deliver, dst, node.gen,
                          (REQUEST, client, frame))

    def send_reply(self, client: bytes, frame: bytes) -> None:
        for d in self._copies(None):
            self.world.at(self.world.now + d, self.world.reply_arrives, client, frame)

    def partition(self, groups: Iterable[Iterable[int]], ids: Iterable[int]) -> None:
        """Nodes in different groups cannot talk; the nodes in no group form one more."""
        sets = [set(g) for g in groups]
        rest = set(ids) - set().union(*sets)
        if rest:
            sets.append(rest)
        self.blocked = {(a, b) for sa in sets for sb in sets if sa is not sb
                        for a in sa for b in sb}

    def heal(self) -> None:
        self.blocked = set()


# -- what the replica works through ------------------------------------------------------


class SimClock:
    """raftkv.interfaces.Clock on the world's time."""

    def __init__(self, world: World) -> None:
        self.world = world

    def monotonic(self) -> float:
        return self.world.now / 1000

    def time(self) -> float:
        return 1_700_000_000 + self.world.now / 1000


class SimSyncer:
    """raftkv.interfaces.Syncer: `start` holds the sync for a drawn number of
    milliseconds; then `Storage.sync` runs (the disk may be cut then) and `done` says so
    once, as the node's fsync thread's pipe does. A crash meanwhile loses the sync: it
    never ran, and the power cut keeps what it keeps of the unsynced writes."""

    def __init__(self, world: World, node: SimNode, storage: Any) -> None:
        self.world, self.node, self.storage = world, node, storage
        self.seconds = 0.0
        self.busy = False
        self._done = False
        self.error: BaseException | None = None
        self._started = 0

    def start(self) -> None:
        assert not self.busy, "a second sync started before the first finished"
        self.busy = True
        self._started = self.world.now
        self.world.coverage["syncs_threaded"] += 1
        lo, hi = self.world.sync_ms
        self.world.at(self.world.now + self.world.rng.randint(lo, hi), self._complete,
                      self.node.gen)

    def _complete(self, gen: int) -> None:
        if gen != self.node.gen:
            return  # the node crashed while its sync was held: it never ran
        try:
            self.storage.sync()
        except PowerCut:
            self.world.crash(self.node.id, power_loss=True, why="power cut during a sync")
            return
        except Exception as e:  # noqa: BLE001 - handed to the replica, as the thread does
            self.error = e
        self.seconds = (self.world.now - self._started) / 1000
        self._done = True
        self.world.wake(self.node)

    def done(self) -> bool:
        if self._done:
            self._done = False
            return True
        return False

    def finish(self) -> None:
        self.busy = False
        if isinstance(self.error, StorageError):
            raise self.error
        if self.error is not None:
            raise StorageError(f"WAL sync failed: {self.error}") from self.error


class SimSnapshotWriter:
    """raftkv.interfaces.SnapshotWriter: the state is serialized at `start`, as a fork
    captures it, and the file is written through the node's disk a drawn number of
    milliseconds later, as the node's forked child writes it while the loop goes on. A
    power cut may come during that write. A crash before it ends the write (the child
    dies with its node): what it left is a temp file, which the next open removes."""

    def __init__(self, world: World, node: SimNode) -> None:
        self.world, self.node = world, node
        self.busy = False
        self._done = False
        self.error: OSError | None = None

    def start(self, serialize: Callable[[], bytes], write: Callable[[bytes], None]) -> None:
        assert not self.busy, "a second snapshot started before the first was adopted"
        self.busy, self._done, self.error = True, False, None
        data = serialize()
        self.world.coverage["snapshots_written_aside"] += 1
        lo, hi = self.world.sync_ms
        self.world.at(self.world.now + self.world.rng.randint(lo, 4 * hi + 1), self._complete,
                      self.node.gen, write, data)

    def _complete(self, gen: int, write: Callable[[bytes], None], data: bytes) -> None:
        if gen != self.node.gen:
            return
        try:
            write(data)
        except PowerCut:
            self.world.crash(self.node.id, power_loss=True, why="power cut during a "
                             "snapshot write")
            return
        except OSError as e:
            self.error = e
        self._done = True
        self.world.wake(self.node)

    def done(self) -> bool:
        return self._done

    def finish(self) -> None:
        self.busy = self._done = False
        if self.error is not None:
            raise SnapshotWriteError(f"writing the snapshot failed: {self.error}")


class SimTransport:
    """raftkv.interfaces.Transport over the simulated network, keeping the real
    transport's rules: a peer it has no address for is not sent to, and a frame from a
    peer it does not know is dropped; FAULT and PEERS are served here
    (raftkv.transport.serve_control) before the replica sees any request."""

    def __init__(self, world: World, node: SimNode, cfg: NodeConfig) -> None:
        self.world, self.node = world, node
        self.node_id = cfg.id
        self.max_key, self.max_value = cfg.max_key, cfg.max_value
        self.max_entry = max_entry_size(cfg.max_key, cfg.max_value)
        self.peers = {pid: addr for pid, addr in cfg.peers.items() if pid != cfg.id}
        self.stats: Counter[str] = Counter()
        self.leader_hint = 0
        self.fault: frozenset[int] = frozenset()
        self.inbox: deque[tuple[int, Any, bytes]] = deque()

    # sending

    def send(self, msg: Message | SnapshotChunk) -> bool:
        to = msg.to
        if to in self.fault:
            self.stats["dropped_filtered"] += 1
            return False
        if self.peers.get(to) != address(to):
            self.stats["dropped_send"] += 1
            return False
        self.stats["frames_out"] += 1
        world = self.world
        if type(msg) is SnapshotChunk and msg.offset == 0:
            world.snapshot_transfers[to] += 1
        if self.node.replica is not None and self.node.replica.syncing is not None:
            world.coverage["sent_while_syncing"] += 1
        world.net.send_peer(self.node_id, to, msg)
        return True

    def send_many(self, messages: Iterable[Message | SnapshotChunk]) -> int:
        return sum(self.send(m) for m in messages)

    def reply(self, identity: Any, request_id: int, code: int, value: Any = None,
              leader_hint: int | None = None) -> bool:
        frame = encode_reply(request_id, code, value,
                             self.leader_hint if leader_hint is None else leader_hint)
        self.stats["frames_out"] += 1
        self.world.net.send_reply(identity, frame)
        return True

    def set_peer(self, node_id: int, addr: str) -> bool:
        if node_id == self.node_id or self.peers.get(node_id) == addr:
            return False
        self.peers[node_id] = addr
        return True

    def remove_peer(self, node_id: int) -> bool:
        return self.peers.pop(node_id, None) is not None

    def set_fault(self, drop_peers: Iterable[int]) -> None:
        self.fault = frozenset(drop_peers)

    def pending(self) -> bool:
        return bool(self.inbox)

    # receiving

    def recv(self, take: int) -> tuple[list[Message | SnapshotChunk], list[ClientRequest]]:
        """Decode the first `take` frames of the inbox, as `Transport.recv_all` does."""
        messages: list[Message | SnapshotChunk] = []
        requests: list[ClientRequest] = []
        inbox, stats = self.inbox, self.stats
        for _ in range(min(take, len(inbox))):
            kind, src, frame = inbox.popleft()
            stats["frames_in"] += 1
            if kind == PEER:
                if src in self.fault:
                    stats["dropped_filtered"] += 1
                    continue
                identity = peer_identity(src)
            else:
                identity = src
            try:
                obj = decode_frame(frame, identity=identity, max_key=self.max_key,
                                   max_value=self.max_value, max_entry=self.max_entry)
            except MalformedFrame as e:
                raise SimFailure(f"node {self.node_id}: a frame of ours is malformed: {e}"
                                 ) from e
            except InvalidRequest as e:
                raise SimFailure(f"node {self.node_id}: a request of ours is invalid: "
                                 f"{e.message}") from e
            if kind == PEER:
                if type(obj) not in (Message, SnapshotChunk) or obj.to != self.node_id \
                        or obj.frm != src:
                    raise SimFailure(f"node {self.node_id}: frame from node {src} decodes "
                                     f"to {obj!r:.200}")
                if src not in self.peers:
                    stats["dropped_unknown_peer"] += 1
                    continue
                messages.append(obj)
            elif type(obj) is RequestBatch:
                raise SimFailure("the simulated clients send no batches")
            elif obj.op < _CONTROL_OPS or not serve_control(self, identity, obj):
                requests.append(obj)
        return messages, requests
