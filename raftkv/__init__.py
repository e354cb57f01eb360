"""raftkv: a Raft-replicated, durable, linearizable key/value store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one place: setup.cfg reads it into the metadata (--version)

__all__ = ["AuthenticationFailed", "BadRequest", "Client", "Credentials", "Forbidden",
           "QuotaExceeded", "RaftKVError", "SessionExpired", "Timeout", "Unavailable"]

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


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): `import raftkv.kv` or the Raft core must not pull in ZeroMQ.
    if name in __all__:
        from raftkv import client

        return getattr(client, name)
    raise AttributeError(f"module 'raftkv' has no attribute {name!r}")
