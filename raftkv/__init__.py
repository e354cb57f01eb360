"""raftkv: a Raft-replicated, durable, linearizable key/value store."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one place: setup.cfg reads it into the metadata (--version)

__all__ = ["AuthenticationFailed", "BadRequest", "Client", "Compacted", "Compare",
           "Credentials", "Delete", "Election", "Event", "Forbidden", "Get", "KeyValue",
           "Lease", "LeaseLost", "LeaseNotFound", "Lock", "NotAcquired", "Oldest", "Put",
           "QuotaExceeded", "RaftKVError", "Retry", "SessionExpired", "Timeout",
           "TxnResult", "Unavailable", "Watch"]
# The module each name comes from, where it is not raftkv.client. The asyncio client is
# raftkv.aio.Client.
_MODULE_OF = {
    **dict.fromkeys(("Compare", "Delete", "Get", "Oldest", "Put", "TxnResult"), "txn"),
    **dict.fromkeys(("Election", "Lease", "LeaseLost", "Lock", "NotAcquired"), "concurrency"),
    "KeyValue": "kv", "Retry": "retry", "Event": "watch",
}

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
    if name not in __all__:
        raise AttributeError(f"module 'raftkv' has no attribute {name!r}")
    module = importlib.import_module(f"raftkv.{_MODULE_OF.get(name, 'client')}")
    return getattr(module, name)
