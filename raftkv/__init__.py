"""raftkv: a Raft-replicated, durable, linearizable key/value store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one place: setup.cfg reads it into the metadata (--version)

__all__ = ["AuthenticationFailed", "BadRequest", "Client", "Compare", "Credentials", "Delete",
           "Forbidden", "Get", "KeyValue", "Put", "QuotaExceeded", "RaftKVError",
           "SessionExpired", "Timeout", "TxnResult", "Unavailable"]
# What `raftkv.txn` and `raftkv.kv` give the API; the rest comes from raftkv.client.
_FROM_TXN = frozenset({"Compare", "Delete", "Get", "Put", "TxnResult"})

if TYPE_CHECKING:
    from raftkv.client import (
        AuthenticationFailed,
        BadRequest,
        Client,
        Credentials,
        Forbidden,
        QuotaExceeded,
        RaftKVError,
        SessionExpired,
        Timeout,
        Unavailable,
    )
    from raftkv.kv import KeyValue
    from raftkv.txn import Compare, Delete, Get, Put, TxnResult


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): `import raftkv.kv` or the Raft core must not pull in ZeroMQ.
    if name in _FROM_TXN:
        from raftkv import txn

        return getattr(txn, name)
    if name == "KeyValue":
        from raftkv.kv import KeyValue

        return KeyValue
    if name in __all__:
        from raftkv import client

        return getattr(client, name)
    raise AttributeError(f"module 'raftkv' has no attribute {name!r}")
