"""raftkv: a Raft-replicated, durable, linearizable key/value store."""

__version__ = "0.1.0"
