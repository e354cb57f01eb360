"""The pure Raft core: messages in, a Ready batch out. No sockets, clock, disk or threads."""

from raftkv.raft.confchange import (
    ConfChange,
    ConfChangeBusy,
    ConfChangeError,
    ConfOp,
    Membership,
    decode_change,
)
from raftkv.raft.core import CampaignKind, Config, Raft
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
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
)

__all__ = [
    "ConfChange",
    "ConfChangeBusy",
    "ConfChangeError",
    "ConfOp",
    "Membership",
    "decode_change",
    "CampaignKind",
    "Config",
    "Raft",
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
