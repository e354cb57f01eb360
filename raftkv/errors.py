"""The client's errors (raftkv.client, raftkv.aio). All derive from `RaftKVError`;
raftkv.client's module docstring says when each is raised."""

from __future__ import annotations


class RaftKVError(Exception):
    """Base class of the client's errors."""


class Unavailable(RaftKVError):
    """No node served the request before its deadline, and it certainly had no effect
    (a read, or a write no node ever accepted). Safe to retry."""


class Timeout(RaftKVError):
    """The deadline passed after a write was sent and not answered: the write may or
    may not have been applied, and may still be applied later. Only writes raise it."""


class SessionExpired(Timeout):
    """The server forgot the client's session while a write was being retried: the
    write's outcome is unknown, as for `Timeout`. The next write opens a new session."""


class Compacted(RaftKVError):
    """A watch asked for revisions no node keeps any more (a node's watch history is
    bounded: `raftkv node --watch-history-bytes`; the client asked every node that
    answered). `oldest` is the first revision one of them can answer from: read the
    state again (get, scan), then watch from the revision that read saw, plus one."""

    def __init__(self, message: str, oldest: int) -> None:
        super().__init__(message)
        self.oldest = oldest


class BadRequest(RaftKVError, ValueError):
    """The server refused the request as invalid; nothing was done. The message is the
    server's."""


class LeaseNotFound(RaftKVError):
    """The lease a request named does not exist: it expired or was revoked (or was never
    granted). Nothing was written; a keepalive of it is too late."""


class QuotaExceeded(RaftKVError):
    """The leader refused a put or cas: the state is at its quota (`--quota-bytes`).
    Nothing was done. Deleting keys makes room."""


class Forbidden(RaftKVError):
    """The cluster refused the request for this client's key: a client key asked for
    what only the admin key may (raftkv.security). Nothing was done."""


class AuthenticationFailed(RaftKVError):
    """The cluster refused this client's connection: no keys given where the cluster
    requires them, a key it does not admit, or the wrong server key."""
