"""The state's quota: how its size is counted, and the bounds of the limit (issue 16).

Kept free of imports, so the command line can show the defaults without loading the
store. The leader enforces the quota (raftkv/replica.py: `Replica.over_quota`); the
state machine counts the size (raftkv/kv.py: `KVStore.size`).
"""

# What each key costs in memory beyond the bytes of its key and value: a dict slot and
# two bytes objects' headers (measured: 252 MB for a million 12-byte keys with 100-byte
# values, 140 B a key over the raw 112).
KEY_OVERHEAD = 128
DEFAULT_QUOTA = 2 << 30  # etcd's default backend quota, and its maximum below
MAX_QUOTA = 8 << 30
