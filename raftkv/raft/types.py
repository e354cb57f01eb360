"""Values that cross the core's boundary: entries, messages, hard state, Ready.

Everything here is plain data. The core consumes `Message`s and produces a `Ready`;
storage persists `Entry` and `HardState`; the transport encodes `Message`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

NONE = 0
"""Node id meaning "nobody" (no vote, no known leader). Real node ids are >= 1."""


MAX_TERM = 2**63 - 1
MAX_INDEX = 2**63 - 1
"""The largest term, and log index, the core takes from a peer. Storage and the wire hold
64-bit unsigned values, and the core adds to its own (a campaign's term + 1, a proposal's
index + 1): from here, reaching 2**64 would take 2**63 elections or entries. A peer's
term or snapshot index past these is a bug; taken, the node's next campaign or entry
could not be written, and it would stop."""


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class EntryType(IntEnum):
    NORMAL = 0
    NOOP = 1  # appended by a new leader at once (Raft paper §5.4.2, thesis §6.4)
    CONF_CHANGE = 2


class MsgType(IntEnum):
    APP = 1  # AppendEntries request (paper §5.3)
    APP_RESP = 2
    VOTE = 3  # RequestVote (paper §5.2)
    VOTE_RESP = 4
    PRE_VOTE = 5  # thesis §9.6
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7  # an AppendEntries without entries, carrying a read-index round
    HEARTBEAT_RESP = 8
    TIMEOUT_NOW = 9  # leadership transfer, thesis §3.10
    SNAP = 10  # InstallSnapshot, paper §7


# Messages whose meaning depends on this node's state being durable: a vote grant
# (and a candidate's own vote for itself) and an acknowledgement of appended entries.
# They leave the node only after the Ready that produced them is persisted (thesis §3.8).
AFTER_PERSIST_TYPES = frozenset({MsgType.VOTE, MsgType.VOTE_RESP, MsgType.APP_RESP})


@dataclass(slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(slots=True, frozen=True)
class HardState:
    """What must survive a crash (paper Figure 2, "persistent state on all servers")."""

    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(slots=True, frozen=True)
class SnapshotMeta:
    """What a snapshot covers: the log up to `index` (whose term is `term`) and the
    cluster configuration in force at that index (paper §7)."""

    index: int = 0
    term: int = 0
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


@dataclass(slots=True)
class Message:
    type: MsgType
    to: int
    frm: int
    term: int
    # APP: index/log_term of the entry preceding `entries`.
    # APP_RESP: index is the last index now matching (or, on reject, the rejected index).
    # VOTE/PRE_VOTE: index/log_term describe the candidate's last entry.
    log_term: int = 0
    index: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    # On a rejected APP: the follower's hint where to retry (fast back-off, paper §5.3);
    # log_term then carries the term of the follower's entry at reject_hint.
    reject_hint: int = 0
    # HEARTBEAT/HEARTBEAT_RESP: read-index round (thesis §6.4). VOTE: 1 when the vote
    # comes from a leadership transfer and may bypass the leader lease (thesis §4.2.3).
    context: int = 0
    # SNAP: what the snapshot covers. The core never holds snapshot bytes: the sending
    # node attaches them (in chunks) and the receiving node steps SNAP once it has all.
    snapshot: SnapshotMeta | None = None


@dataclass(slots=True, frozen=True)
class ReadState:
    """A read became safe: serve `ctx` once the state machine has applied `index`."""

    index: int
    ctx: object


@dataclass(slots=True)
class SoftState:
    lead: int
    role: Role


class VoteRefusal(IntEnum):
    """Why a vote or pre-vote was refused; a rejecting VOTE_RESP / PRE_VOTE_RESP carries it
    in `context`, so the candidate can say why it lost (0: the voter did not say)."""

    UNSAID = 0
    LOG_BEHIND = 1  # the candidate's log is not as up to date as the voter's (§5.4.1)
    VOTED_ELSEWHERE = 2  # the voter already voted for another candidate in this term
    HAS_LEADER = 3  # the voter follows a live leader in this term
    STALE_TERM = 4  # the request's term is behind the voter's
    # The voter is repairing a log its storage found damaged: it may have lost entries it
    # acknowledged, so its vote could elect a leader missing a committed entry (PAR,
    # Alagappan et al., FAST '18). It votes again once repaired (`Raft.repairing`).
    REPAIRING = 5


class EventKind(IntEnum):
    """What the core tells a person reading the log (see `RaftEvent`)."""

    PRE_VOTE_STARTED = 1  # reason: why (election timeout)
    PRE_VOTE_WON = 2
    PRE_VOTE_LOST = 3
    ELECTION_STARTED = 4  # reason: election timeout | pre-vote won | transfer from N
    ELECTION_WON = 5
    ELECTION_LOST = 6
    VOTE_GRANTED = 7  # peer: the candidate; reason: "vote" | "pre-vote"
    VOTE_REFUSED = 8  # peer: the candidate; refusal: why
    VOTE_IGNORED = 9  # peer: the candidate; a live leader's lease holds (thesis §4.2.3)
    STEPPED_DOWN = 10  # reason: why a leader or candidate became a follower
    TRANSFER_STARTED = 11  # peer: the target
    REPAIR_DONE = 12  # peer: the leader; reason: the committed (index, term) that ended it


@dataclass(slots=True, frozen=True)
class RaftEvent:
    """One protocol event worth a log line, as data: the core has no logger. `granted`
    and `refused` list the voters of a finished (pre-)election; `refusals` says why each
    refusing voter refused, as far as it told."""

    kind: EventKind
    term: int
    peer: int = NONE
    reason: str = ""
    refusal: VoteRefusal = VoteRefusal.UNSAID
    granted: tuple[int, ...] = ()
    refused: tuple[tuple[int, VoteRefusal], ...] = ()


@dataclass(slots=True)
class Ready:
    """One batch of work for the application, in this order (etcd-io/raft `Ready`):

    1. send `messages` — they may leave before or while the rest is persisted;
    2. install `snapshot` if any (persist it, restore the state machine), then persist
       `entries` (an entry at index i replaces every stored entry >= i) and
       `hard_state` (when not None), with one fsync for the batch;
    3. send `persisted_messages` — only now, they acknowledge what step 2 made durable;
       one addressed to this node itself (a candidate's own vote) is stepped back into
       the core instead;
    4. apply `committed_entries`, then serve `read_states` whose index is applied;
    5. call `advance(ready)`.

    `repaired` is True in exactly one Ready of a core started with `repairing=True`: the
    first after it left repairing mode. The application clears its durable repair marker
    then (with step 2, or later: a node restarted with the marker still set only repairs
    again, which is safe). `events` are never the signal for it.
    """

    hard_state: HardState | None = None
    # A snapshot received from the leader: before anything else in this Ready, make it
    # durable and restore the state machine from it (paper §7). Entries that follow
    # continue the log after snapshot.index.
    snapshot: SnapshotMeta | None = None
    entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    persisted_messages: list[Message] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    # Read contexts this node accepted as leader but can no longer confirm (it lost
    # leadership): the application answers them "retry elsewhere".
    aborted_reads: list[object] = field(default_factory=list)
    soft_state: SoftState | None = None
    # Elections started and ended, votes granted and refused, step-downs: for the log and
    # the dashboard only; nothing to persist or send.
    events: list[RaftEvent] = field(default_factory=list)
    # The core left repairing mode since the last Ready (see above).
    repaired: bool = False


class RaftError(Exception):
    """Base class of the core's errors."""


class NotLeader(RaftError):
    """A proposal, read or transfer reached a node that is not the leader."""

    def __init__(self, leader: int) -> None:
        super().__init__(f"not the leader (leader hint: {leader or 'unknown'})")
        self.leader = leader


class ProposalDropped(RaftError):
    """The leader refuses proposals for now (a leadership transfer is under way)."""


class InvariantViolation(RaftError):
    """A broken invariant of the protocol: the node must stop, never limp on."""
