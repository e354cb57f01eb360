"""The defaults of a node's tunables, stated once: raftkv.config.NodeConfig takes them,
and `raftkv node` (raftkv/server.py) shows them in --help. It imports nothing, so the CLI,
which every `bin/raftkv` verb loads, does not pay for importing the node to know them."""

HEARTBEAT_MS = 50
ELECTION_MS = 300
# 100,000 entries is etcd's default snapshot count too.
SNAPSHOT_ENTRIES = 100_000
SNAPSHOT_BYTES = 64 << 20
SNAPSHOT_JITTER = 0.5
# Entries kept below a snapshot for followers a little behind: etcd's default too.
SNAPSHOT_CATCH_UP_ENTRIES = 5000
SEGMENT_BYTES = 64 << 20
WATCH_BYTES = 16 << 20  # the watch history's keys and values (raftkv/watch.py)
LMDB_MAX_KEY_SIZE = 510  # --state lmdb: LMDB's 511-byte keys, less raftkv.lmdb_state's prefix
STATES = ("memory", "lmdb")  # where a node may keep the replicated state (--state)
