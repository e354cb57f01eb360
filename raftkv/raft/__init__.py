"""The pure Raft core: messages in, a Ready batch out. No sockets, clock, disk or threads."""

from raftkv.raft.types import (
    NONE,
    Entry,
    EntryType,
    HardState,
    InvariantViolation,
    Message,
    MsgType,
    NotLeader,
    ProposalDropped,
    RaftError,
    Ready,
    ReadState,
    Role,
    SnapshotMeta,
)

__all__ = [
    "NONE",
    "Entry",
    "EntryType",
    "HardState",
    "InvariantViolation",
    "Message",
    "MsgType",
    "NotLeader",
    "ProposalDropped",
    "RaftError",
    "ReadState",
    "Ready",
    "Role",
    "SnapshotMeta",
]
