"""A node's configuration: what its replica (raftkv/replica.py) and its process
(raftkv/node.py) are given."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from raftkv.kv import MAX_KEY_SIZE, MAX_VALUE_SIZE
from raftkv.node_defaults import (
    ELECTION_MS,
    HEARTBEAT_MS,
    LMDB_MAX_KEY_SIZE,
    SEGMENT_BYTES,
    SNAPSHOT_BYTES,
    SNAPSHOT_CATCH_UP_ENTRIES,
    SNAPSHOT_ENTRIES,
    SNAPSHOT_JITTER,
    STATES,
    WATCH_BYTES,
)
from raftkv.quota import DEFAULT_QUOTA
from raftkv.raft import Config
from raftkv.storage.fs import OS_FS, FileSystem
from raftkv.wire import MAX_SNAPSHOT_CHUNK

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
    heartbeat_ms: int = HEARTBEAT_MS
    election_ms: int = ELECTION_MS
    fsync: bool = True
    max_key: int = MAX_KEY_SIZE
    max_value: int = MAX_VALUE_SIZE
    # The leader refuses a PUT or CAS that would take the state past this many bytes
    # (kv.KVStore.size: keys, values and quota.KEY_OVERHEAD a key, about what the state
    # takes in memory).
    quota_bytes: int = DEFAULT_QUOTA
    # Snapshot and drop the log once this many entries, or this many bytes of entry
    # data, were applied since the last snapshot, times a factor each node draws anew
    # for each snapshot from [1, 1 + snapshot_jitter), so that the members do not all
    # snapshot at the same index. A snapshot is written by a forked child; the loop
    # stops only for the fork and for adopting the file.
    snapshot_entries: int = SNAPSHOT_ENTRIES
    snapshot_bytes: int = SNAPSHOT_BYTES
    snapshot_jitter: float = SNAPSHOT_JITTER
    # A snapshot drops the log up to this many entries before its index, no further
    # (and keeps no more than a quarter of snapshot_bytes of their data): a follower a
    # little behind goes on from the log rather than needing the whole snapshot.
    snapshot_catch_up_entries: int = SNAPSHOT_CATCH_UP_ENTRIES
    snapshot_chunk: int = MAX_SNAPSHOT_CHUNK  # bytes of a snapshot per transfer chunk
    # The watch history's bound: the newest events' keys and values, and an overhead
    # each (raftkv/watch.py); 0: no history, WATCH refused.
    watch_bytes: int = WATCH_BYTES
    segment_bytes: int = SEGMENT_BYTES  # the write-ahead log rotates to a new file at this size
    metrics_port: int = 0  # Prometheus /metrics on the listen host; 0: off
    # The cluster's key dir (raftkv.security): only its keys get in. None: no security,
    # anyone who reaches the port is trusted (--insecure).
    keys_dir: Path | None = None
    cluster_id: int = 0  # recorded in the data dir, which refuses another; 0: unchecked
    # Whether a missing or empty data dir may be made: only on a node's first start
    # (a new cluster, or --join). Otherwise it means lost state, and the node refuses.
    create_dir: bool = True
    # Where the replicated state lives: "memory" (a dict, snapshots by a forked child) or
    # "lmdb" (raftkv.lmdb_state: on disk in DATA_DIR/state, kept across restarts; keys
    # of at most LMDB_MAX_KEY_SIZE bytes, so max_key is lowered to that).
    state: str = "memory"
    fs: FileSystem = OS_FS  # the file layer under storage (tests put a faulty disk here)
    # The seed of the election timer's draws; None: one from the OS, different on every
    # start. (The simulator sets it, so a run replays exactly.)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"state {self.state!r}: one of {', '.join(STATES)}")
        if self.state == "lmdb":
            self.max_key = min(self.max_key, LMDB_MAX_KEY_SIZE)

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
        seed = self.seed if self.seed is not None else random.SystemRandom().randrange(2**62)
        return Config(
            self.id,
            voters,
            election_tick=max(k + 1, self.election_ms * k // self.heartbeat_ms),
            heartbeat_tick=k,
            seed=seed,
        )
