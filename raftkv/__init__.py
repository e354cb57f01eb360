"""raftkv: a Raft-replicated, durable, linearizable key/value store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one place: setup.cfg reads it into the metadata (--version)

__all__ = ["AuthenticationFailed", "BadRequest", "Client", "Compacted", "Compare",
           "Credentials", "Delete", "Election", "Event", "Forbidden", "Get", "KeyValue",
           "Lease", "LeaseLost", "LeaseNotFound", "Lock", "NotAcquired", "Oldest", "Put",
           "QuotaExceeded", "RaftKVError", "Retry", "SessionExpired", "Timeout",
           "TxnResult", "Unavailable", "Watch"]
# What `raftkv.txn` and `raftkv.concurrency` give the API; KeyValue and Event come from
# raftkv.kv and raftkv.watch, Retry from raftkv.retry, the rest from raftkv.client. The
# asyncio client is raftkv.aio.Client.
_FROM_TXN = frozenset({"Compare", "Delete", "Get", "Oldest", "Put", "TxnResult"})
_FROM_CONCURRENCY = frozenset({"Election", "Lease", "LeaseLost", "Lock", "NotAcquired"})

if TYPE_CHECKING:
    from raftkv.client import (
        AuthenticationFailed,
        BadRequest,
        Client,
        Compacted,
        Credentials,
        Forbidden,
        LeaseNotFound,
        QuotaExceeded,
        RaftKVError,
        SessionExpired,
        Timeout,
        Unavailable,
        Watch,
    )
    from raftkv.concurrency import Election, Lease, LeaseLost, Lock, NotAcquired
    from raftkv.kv import KeyValue
    from raftkv.retry import Retry
    from raftkv.txn import Compare, Delete, Get, Oldest, Put, TxnResult
    from raftkv.watch import Event


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): `import raftkv.kv` or the Raft core must not pull in ZeroMQ.
    if name in _FROM_TXN:
        from raftkv import txn

        return getattr(txn, name)
    if name in _FROM_CONCURRENCY:
        from raftkv import concurrency

        return getattr(concurrency, name)
    if name == "KeyValue":
        from raftkv.kv import KeyValue

        return KeyValue
    if name == "Retry":
        from raftkv.retry import Retry

        return Retry
    if name == "Event":
        from raftkv.watch import Event

        return Event
    if name in __all__:
        from raftkv import client

        return getattr(client, name)
    raise AttributeError(f"module 'raftkv' has no attribute {name!r}")
