"""What a `Replica` (raftkv/replica.py) works through, as typing Protocols.

A replica owns no socket, thread or clock. Whoever drives it supplies these: the node
process (raftkv/node.py: ZeroMQ, an fsync thread, the OS clock) or the simulator
(tests/sim/replica_sim.py: a seeded network, a syncer and a snapshot writer that hold
their work for a drawn number of steps, simulated time). Storage is not among them: a
replica always runs the real `raftkv.storage.Storage`; what is pluggable under it is the
`FileSystem` (raftkv/storage/fs.py), a real disk or one that loses power.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from raftkv.kv import KeyValue, KVStats, Reply
from raftkv.raft.types import Message
from raftkv.wire import SnapshotChunk

Route = bytes | tuple[bytes, bytes]
"""Where a reply goes: a client's routing id, or (proxy's id, client's id)."""

SnapshotData = bytes | Path
"""A snapshot's state machine bytes, or a file holding them that is handed over
(`LmdbStore.capture`): whoever writes the snapshot file streams it, then removes it."""


class Transport(Protocol):
    """The replica's way out: Raft messages and snapshot chunks to peers, replies to
    clients. Sends never block and may drop (counted in `stats`): Raft retransmits, and
    clients retry. `raftkv.transport.Transport` is the real one."""

    leader_hint: int  # the leader this replica believes in, for replies it makes itself
    peers: dict[int, str]  # node id -> address of every peer it can reach
    stats: dict[str, int]

    def send(self, msg: Message | SnapshotChunk) -> bool: ...

    def send_many(self, messages: Iterable[Message | SnapshotChunk]) -> int: ...

    def reply(self, identity: Route, request_id: int, code: int, value: Any = None,
              leader_hint: int | None = None) -> bool: ...

    def set_peer(self, node_id: int, address: str) -> bool:
        """Reach `node_id` at `address` from now on; whether anything changed."""

    def remove_peer(self, node_id: int) -> bool: ...

    def pending(self) -> bool:
        """Whether input is waiting to be received (never blocks)."""


class Syncer(Protocol):
    """Runs `Storage.sync` in the background for a Ready whose persistence overlaps other
    work. From `start` until `finish` the storage is the syncer's: the replica does not
    touch it (it defers what needs it). Whoever drives the replica watches `done` and
    then calls `Replica.finish_sync`."""

    seconds: float  # how long the last sync took

    def start(self) -> None: ...

    def done(self) -> bool:
        """Whether the sync started last has finished (never blocks)."""

    def finish(self) -> None:
        """After `done`: raise the sync's error (a StorageError), if any."""


class SnapshotWriter(Protocol):
    """Writes a snapshot of the state machine without stopping the loop: paper §7 has
    new updates accepted while a snapshot is written, with copy-on-write (fork on Linux,
    in the paper's implementation too). `start(serialize, write)` captures the state as
    it is at the call; `write(serialize())` then runs elsewhere: a forked child in the
    node (raftkv/snapshot_writer.py), a later step in the simulator. The replica watches
    `done`, then calls `finish` and adopts the file. One write at a time."""

    def start(self, serialize: Callable[[], SnapshotData],
              write: Callable[[SnapshotData], None]) -> None: ...

    def done(self) -> bool:
        """Whether the write started last has finished (never blocks)."""

    def finish(self) -> None:
        """After `done`: raise SnapshotWriteError if the write failed."""


class Clock(Protocol):
    """Time as the replica reads it: never for a protocol decision (the core counts
    ticks), only for what it reports (uptime, how long a snapshot or an fsync took) and
    for how long a WATCH is held waiting for an event."""

    def monotonic(self) -> float:
        """Seconds that never go back."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch, for timestamps a person reads."""


class StateMachine(Protocol):
    """The replicated state (raftkv.kv.KVStore): a deterministic function of the entries
    applied, in log order (thesis §3.1)."""

    stats: KVStats  # local counters, not replicated
    # Each applied put and delete as four items, revision, kind, key, value (b"" for a
    # delete), for the
    # node's watch history to take (raftkv/watch.py); None: not recorded.
    events: list[Any] | None

    @property
    def applied_index(self) -> int: ...

    @property
    def members(self) -> dict[int, str]: ...

    @property
    def session_count(self) -> int: ...

    def __len__(self) -> int: ...

    @property
    def size(self) -> int:
        """Bytes the data takes, as the quota counts them."""

    def growth(self, key: bytes, value: bytes) -> int:
        """How much `size` grows if `key` is set to `value` now."""

    def apply(self, index: int, data: bytes) -> Reply: ...

    def apply_membership(self, index: int, node_id: int, address: str | None) -> None: ...

    def get(self, key: bytes) -> bytes | None: ...

    def get_kv(self, key: bytes) -> KeyValue | None: ...

    def scan(self, prefix: bytes, limit: int, start: bytes = b"") -> list[tuple[bytes, bytes]]:
        ...

    def snapshot(self) -> bytes: ...

    def restore(self, snapshot: SnapshotData) -> None:
        """Replace the state with a snapshot's: its bytes, or a file of them that stays
        the caller's."""

    def resume(self, floor: int, ceiling: int) -> bool:
        """Whether the state kept across the node's restart, applied to an index in
        [floor, ceiling], goes on as it is (else it is empty, for a restore)."""

    def flush(self) -> None:
        """What was applied becomes what `capture` and a restart see."""

    def capture(self) -> Callable[[], SnapshotData]:
        """Fix the state now; the callable returns its snapshot, later, elsewhere."""

    def succeed(self, old: Any) -> StateMachine:
        """Replace `old` (closed) as the node's state; returns the state to use."""

    def discard(self) -> None:
        """Release a scratch state that is never installed."""

    def close(self) -> None: ...
