"""The Raft state machine: messages in, a Ready batch out (after etcd-io/raft `raft.go`).

This module never touches a socket, a disk or a clock. Time is `tick()`; everything
else arrives through `step(msg)` or the leader's entry points (`propose`, `read_index`,
`transfer_leader`). What the application must do next is collected into one `Ready`.

Roles are swapped functions: `become_follower`, `become_pre_candidate`,
`become_candidate` and `become_leader` set `self._step` and `self._tick`, so role checks
are not scattered through the handlers. A repairing follower (see `Raft.__init__`) steps
with `_step_repairing`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from raftkv.raft.confchange import (
    ConfChange,
    ConfChangeBusy,
    ConfHistory,
    Membership,
    encode_change,
)
from raftkv.raft.log import RaftLog
from raftkv.raft.progress import Progress, ProgressState
from raftkv.raft.quorum import VoteResult, committed_index, vote_result
from raftkv.raft.types import (
    AFTER_PERSIST_TYPES,
    MAX_INDEX,
    MAX_TERM,
    NONE,
    Entry,
    EntryType,
    EventKind,
    HardState,
    InvariantViolation,
    Message,
    MsgType,
    NotLeader,
    ProposalDropped,
    RaftError,
    RaftEvent,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
    SoftState,
    VoteRefusal,
)

CAMPAIGN_TRANSFER = 1
"""VOTE.context for an election forced by TimeoutNow: it may bypass the leader lease."""

# For `propose`, called once per client write: on Python 3.11 each `Role.LEADER` is an
# attribute lookup through the enum's class (~65 ns).
_LEADER, _CONF_CHANGE = Role.LEADER, EntryType.CONF_CHANGE
_FROM_LEADER = frozenset({MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP})


def refusal_of(context: int) -> VoteRefusal:
    """The refusal a (pre-)vote response carries; UNSAID for anything unknown."""
    try:
        return VoteRefusal(context)
    except ValueError:
        return VoteRefusal.UNSAID


DROP_REASONS = (
    "ack_past_sent",  # APP_RESP at an index past what we sent that peer
    "read_ack_past_sent",  # HEARTBEAT_RESP for a read round we never started
    "term_past_limit",  # any message whose term is past MAX_TERM
    "index_past_limit",  # SNAP whose snapshot ends past MAX_INDEX
    "snapshot_past_term",  # SNAP whose snapshot's last entry has a term past the message's
    "second_leader",  # APP, HEARTBEAT or SNAP from a node other than our term's leader
)
"""Why the core dropped a peer's message that, taken, would break one of its invariants
(`Raft.dropped` counts each). A frame from the network may be wrong; only a local
invariant violation stops a node. The shape of an APP's entries (indexes following its
index, terms within [log_term, term] and never decreasing) is the wire decoder's to
check (raftkv/wire.py), once per frame: the core takes it as given. An APP needs no
index limit: it only extends a log that already matches at its index, so with
snapshots bounded by MAX_INDEX a log grows past it no faster than a leader's own."""


class CampaignKind(IntEnum):
    PRE_ELECTION = 0  # ask first whether we could win, without touching the term (§9.6)
    ELECTION = 1
    TRANSFER = 2  # ordered by the leader through TimeoutNow (thesis §3.10)


@dataclass(slots=True)
class Config:
    id: int
    voters: tuple[int, ...]
    election_tick: int = 10  # ticks without a leader before an election; randomized to [e, 2e)
    heartbeat_tick: int = 1
    pre_vote: bool = True  # thesis §9.6
    check_quorum: bool = True  # thesis §6.2 / §4.2.3
    max_inflight: int = 256  # pipelined appends in flight per follower
    max_entries_per_msg: int = 4096
    # A follower that has not acknowledged a snapshot after this many heartbeat
    # intervals (the leader's heartbeat timer firing, every heartbeat_tick ticks) is
    # probed again: the transfer was lost, or it restarted in the middle. Time, not
    # broadcasts: every ReadIndex round broadcasts heartbeats too.
    snapshot_timeout_heartbeats: int = 50
    seed: int = 0  # election timeouts are drawn from random.Random(seed)

    def __post_init__(self) -> None:
        if self.id <= NONE:
            raise ValueError(f"node id must be >= 1, got {self.id}")
        if self.heartbeat_tick <= 0 or self.election_tick <= self.heartbeat_tick:
            raise ValueError("need 0 < heartbeat_tick < election_tick")


@dataclass(slots=True)
class _PendingRead:
    round: int
    index: int
    ctx: object


@dataclass(slots=True)
class _Outbox:
    messages: list[Message] = field(default_factory=list)
    after_persist: list[Message] = field(default_factory=list)


class Raft:
    """One Raft peer. Not thread-safe; drive it from a single loop."""

    def __init__(
        self,
        config: Config,
        *,
        hard_state: HardState | None = None,
        entries: list[Entry] | None = None,
        snapshot: SnapshotMeta | None = None,
        applied: int = 0,
        repairing: bool = False,
    ) -> None:
        """With `repairing`, the node's storage found its log damaged and cut it at the
        damage (protocol-aware recovery, Alagappan et al., FAST '18). Having lost entries
        it may have acknowledged, it must neither vote nor campaign: its vote could elect
        a leader missing a committed entry (§5.4.1 assumes acknowledged entries stay).
        It follows a leader as a non-voting catch-up until `maybe_finish_repair` sees it
        durably hold an entry that a leader committed in its own term >= `repair_term`;
        the Ready after that says `repaired`.

        The caller's precondition: every entry this node acknowledged before the damage
        has a term < `hard_state.term` (the node raises its durable term by one, without
        a vote, before the first repairing start)."""
        hs = hard_state or HardState()
        self.id = config.id
        self.cfg = config
        self.rng = random.Random(config.seed)
        self.log = RaftLog(
            entries,
            offset=snapshot.index if snapshot else 0,
            offset_term=snapshot.term if snapshot else 0,
            committed=hs.commit,
            applied=applied,
        )
        # The newest snapshot (ours, or one installed from a leader); the log starts
        # after it, or before it by the entries `compact` kept. What a follower that
        # needs compacted entries is sent.
        self.snapshot = snapshot if snapshot and snapshot.index else None
        self.pending_snapshot: SnapshotMeta | None = None  # received, not yet persisted
        # Membership: the snapshot's (or the initial) configuration, then every change in
        # the log. A node joining an existing cluster starts with no voters at all and
        # learns the configuration from the leader.
        if self.snapshot is not None:
            base = Membership(frozenset(self.snapshot.voters),
                              frozenset(self.snapshot.learners))
        else:
            base = Membership(frozenset(config.voters))
        self.conf = ConfHistory(base, self.log.offset)
        self.conf.sync(self.log.term, self.log.entries)
        self.voters: frozenset[int] = self.conf.current.voters
        self.learners: frozenset[int] = self.conf.current.learners
        self.term = hs.term
        self.vote = hs.vote
        self.repairing = repairing
        self.repair_term = hs.term
        # While repairing: (index, term) of the highest committed entry this node was
        # told of by a leader of a term >= repair_term whose entry has that leader's
        # term. Never truncated (it is committed); repair ends once it is durable here.
        self.repair_point = (0, 0)
        self._repaired_pending = False  # for the next Ready's `repaired`
        self.lead = NONE
        # Who leads `term`, once known; unlike `lead`, kept until the term changes (a
        # term has at most one leader: Election Safety, paper Figure 3).
        self.term_leader = NONE
        self.role = Role.FOLLOWER
        self.prs: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.refusals: dict[int, VoteRefusal] = {}  # why voters refused this campaign
        self.events: list[RaftEvent] = []  # for the log: handed over in the next Ready
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_tick
        self.lead_transferee = NONE
        self.read_round = 0
        self.pending_reads: list[_PendingRead] = []
        self.reads_before_commit: list[object] = []  # held until an entry of our term commits
        self.read_states: list[ReadState] = []
        self.aborted_reads: list[object] = []
        self.out = _Outbox()
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self._bcast_pending = False
        self._prev_hard_state = hs
        self._prev_soft_state = SoftState(NONE, Role.FOLLOWER)
        self._step: Callable[[Message], None] = self._step_follower
        self._tick: Callable[[], None] = self._tick_election
        self.become_follower(self.term, NONE)

    # -- public entry points ---------------------------------------------------------

    def tick(self) -> None:
        self._tick()

    def step(self, m: Message) -> None:
        """Feed one message from a peer (paper Figure 2, "Rules for all servers")."""
        if m.term > MAX_TERM:
            # Taken, our next campaign's term would not fit storage or the wire.
            self.dropped["term_past_limit"] += 1
            return
        if m.term > self.term:
            if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
                forced = m.type == MsgType.VOTE and m.context == CAMPAIGN_TRANSFER
                in_lease = (self.cfg.check_quorum and self.lead != NONE
                            and self.election_elapsed < self.cfg.election_tick)
                if in_lease and not forced:
                    # We heard from a live leader within the minimum election timeout:
                    # a disruptive candidate must not depose it (thesis §4.2.3).
                    self.events.append(RaftEvent(
                        EventKind.VOTE_IGNORED, self.term, m.frm,
                        f"leader {self.lead} was heard within the election timeout"))
                    return
            if m.type == MsgType.PRE_VOTE:
                pass  # a pre-vote never changes our term (thesis §9.6)
            elif m.type == MsgType.PRE_VOTE_RESP and not m.reject:
                pass  # a granted pre-vote carries the term the candidate will use
            elif m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
                self.note_step_down(m)
                self.become_follower(m.term, m.frm)
            else:
                self.note_step_down(m)
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if m.type in (MsgType.APP, MsgType.HEARTBEAT) and (
                self.cfg.check_quorum or self.cfg.pre_vote
            ):
                # A stale leader may be cut off from the rest; answering with our term
                # makes it step down, where staying silent would leave it believing.
                self.send(Message(MsgType.APP_RESP, m.frm, self.id, self.term))
            elif m.type == MsgType.PRE_VOTE:
                self.refuse_vote(m, VoteRefusal.STALE_TERM)
            elif m.type == MsgType.VOTE:
                self.events.append(RaftEvent(EventKind.VOTE_REFUSED, self.term, m.frm,
                                             "vote", VoteRefusal.STALE_TERM))
            return
        if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
            self.handle_vote_request(m)
        else:
            self._step(m)

    def propose(self, data: bytes, type: EntryType = EntryType.NORMAL) -> int:
        """Append a new entry on the leader; returns its index. It is sent to the
        followers when the application next asks for `ready()`, so every proposal of
        one loop turn travels in one append per follower (batching)."""
        if self.role != _LEADER:
            raise NotLeader(self.lead)
        if self.lead_transferee != NONE:
            raise ProposalDropped(f"leadership is moving to node {self.lead_transferee}")
        index = self.log.last_index() + 1
        entry = Entry(self.term, index, type, data)
        self.log.append([entry])
        if type == _CONF_CHANGE:
            self.sync_membership([entry])
        self._bcast_pending = True
        return index

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Propose one membership change (thesis §4.1); returns its log index. Refused
        while another change is uncommitted, or before this leader has committed an
        entry of its term, or when it makes no sense for the current membership."""
        if self.role != Role.LEADER:
            raise NotLeader(self.lead)
        if self.conf.last_index > self.log.committed:
            raise ConfChangeBusy("another configuration change is not committed yet")
        if not self.committed_entry_in_current_term():
            raise ConfChangeBusy("the leader has not yet committed an entry of its term")
        after = self.conf.current.apply(cc)  # raises for a change that makes no sense
        return self.propose(encode_change(cc, after), EntryType.CONF_CHANGE)

    def sync_membership(self, entries: list[Entry]) -> None:
        """Use the latest configuration in the log (§4.1) after entries were appended or
        a suffix replaced; a leader starts or stops tracking the members that changed."""
        if not self.conf.sync(self.log.term, entries):
            return
        m = self.conf.current
        self.voters, self.learners = m.voters, m.learners
        if self.role == Role.LEADER:
            members = m.voters | m.learners | {self.id}
            for pid in list(self.prs):
                if pid not in members:
                    del self.prs[pid]
            for pid in members - self.prs.keys():
                pr = Progress(self.log.last_index() + 1, self.cfg.max_inflight)
                pr.recent_active = True
                self.prs[pid] = pr

    def read_index(self, ctx: object) -> None:
        """Ask for a linearizable read point (thesis §6.4). A `ReadState(index, ctx)`
        appears in a later Ready once a quorum confirmed our leadership; the read may be
        served when the state machine has applied `index`."""
        if self.role != Role.LEADER:
            raise NotLeader(self.lead)
        if not self.committed_entry_in_current_term():
            # Our commit index may lag the true one until our no-op commits (§6.4 step 1).
            self.reads_before_commit.append(ctx)
            return
        self.start_read_round(ctx)

    def transfer_leader(self, target: int) -> None:
        """Hand leadership to `target` (thesis §3.10): bring it up to date, then send it
        TimeoutNow. Proposals are refused meanwhile; the attempt is abandoned after an
        election timeout."""
        if self.role != Role.LEADER:
            raise NotLeader(self.lead)
        if target not in self.voters:
            raise RaftError(f"node {target} is not a voter")
        if target == self.id or target == self.lead_transferee:
            return
        self.lead_transferee = target
        self.election_elapsed = 0
        self.events.append(RaftEvent(EventKind.TRANSFER_STARTED, self.term, target))
        if self.prs[target].match == self.log.last_index():
            self.send_timeout_now(target)
        else:
            self.maybe_send_append(target, send_if_empty=True)

    # -- Ready / advance -------------------------------------------------------------

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    def has_ready(self) -> bool:
        return bool(
            self._bcast_pending
            or self.out.messages
            or self.out.after_persist
            or self.pending_snapshot is not None
            or self.log.stabled < self.log.last_index()
            or self.log.has_next_committed_entries()
            or self.read_states
            or self.aborted_reads
            or self.events
            or self._repaired_pending
            or self.hard_state() != self._prev_hard_state
            or self.soft_state() != self._prev_soft_state
        )

    def ready(self) -> Ready:
        """Collect the work accumulated since the last Ready. Messages and read states
        move into the Ready; entries and hard state stay pending until `advance`."""
        self.flush_appends()
        hs = self.hard_state()
        ss = self.soft_state()
        rd = Ready(
            hard_state=hs if hs != self._prev_hard_state else None,
            snapshot=self.pending_snapshot,
            entries=self.log.unstable_entries(),
            messages=self.out.messages,
            persisted_messages=self.out.after_persist,
            committed_entries=self.log.next_committed_entries(),
            read_states=self.read_states,
            aborted_reads=self.aborted_reads,
            soft_state=ss if ss != self._prev_soft_state else None,
            events=self.events,
            repaired=self._repaired_pending,
        )
        self.events = []
        self._repaired_pending = False
        self.out = _Outbox()
        self.read_states = []
        self.aborted_reads = []
        if rd.soft_state is not None:
            self._prev_soft_state = rd.soft_state
        return rd

    def take_messages(self) -> list[Message]:
        """The messages that may leave before anything is persisted (appends to
        followers, heartbeats, pre-votes: what `ready()` puts in `Ready.messages`),
        taken out now, pending appends flushed first. For an application that persists a
        Ready asynchronously: between that `ready()` and its `advance()` it may send these,
        so that a leader replicates new proposals while its own fsync runs. Entries sent
        this way are persisted by the next Ready like any others; the leader counts its own
        copy only once `advance` says it is durable (thesis §10.2.1)."""
        self.flush_appends()
        msgs = self.out.messages
        if msgs:
            self.out.messages = []
        return msgs

    def advance(self, rd: Ready) -> None:
        """The application persisted `rd.entries` and `rd.hard_state` and applied
        `rd.committed_entries`."""
        if rd.hard_state is not None:
            self._prev_hard_state = rd.hard_state
        if rd.snapshot is not None and rd.snapshot == self.pending_snapshot:
            self.pending_snapshot = None
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
            if self.role == Role.LEADER and self.prs[self.id].maybe_update(self.log.stabled):
                # Our own copy counts toward the commit quorum only once durable (§10.2.1).
                self.maybe_commit()
        if self.repairing:
            self.maybe_finish_repair()
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)

    # -- sending ---------------------------------------------------------------------

    def send(self, m: Message) -> None:
        if m.type in AFTER_PERSIST_TYPES:
            self.out.after_persist.append(m)
        else:
            self.out.messages.append(m)

    def flush_appends(self) -> None:
        """Send what proposals left pending: one append per follower per Ready,
        carrying every new entry (batching) and the commit index."""
        if not self._bcast_pending:
            return
        self._bcast_pending = False
        if self.role != Role.LEADER:
            return
        for pid, pr in self.prs.items():
            if pid != self.id:
                self.maybe_send_append(pid, send_if_empty=pr.sent_commit < self.log.committed)

    def maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        """Send `to` the entries it lacks, unless its window is full. Returns whether a
        message went out."""
        pr = self.prs[to]
        if pr.is_paused():
            return False
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None:
            return self.send_snapshot(to, pr)
        entries = self.log.slice(pr.next, self.log.last_index() + 1,
                                 self.cfg.max_entries_per_msg)
        if not entries and not send_if_empty:
            return False
        self.send(Message(MsgType.APP, to, self.id, self.term, log_term=prev_term,
                          index=prev, entries=entries, commit=self.log.committed))
        pr.sent = max(pr.sent, prev + len(entries))
        if entries:
            pr.sent_entries(entries[-1].index)
        elif pr.state == ProgressState.PROBE:
            pr.probe_sent = True
        pr.sent_commit = self.log.committed
        return True

    def send_snapshot(self, to: int, pr: Progress) -> bool:
        """`to` needs entries we compacted: send our snapshot instead (paper §7)."""
        if self.snapshot is None:
            raise InvariantViolation(
                f"node {to} needs index {pr.next - 1}, below our log start "
                f"{self.log.offset}, and we have no snapshot")
        self.send(Message(MsgType.SNAP, to, self.id, self.term, snapshot=self.snapshot))
        pr.sent = max(pr.sent, self.snapshot.index)
        pr.become_snapshot(self.snapshot.index)
        return True

    def bcast_heartbeat(self) -> None:
        for pid, pr in self.prs.items():
            if pid == self.id:
                continue
            # Never tell a follower to commit past what it is known to hold (§5.3).
            commit = min(pr.match, self.log.committed)
            self.send(Message(MsgType.HEARTBEAT, pid, self.id, self.term, commit=commit,
                              context=self.read_round))

    def send_timeout_now(self, to: int) -> None:
        self.send(Message(MsgType.TIMEOUT_NOW, to, self.id, self.term))

    # -- role transitions ------------------------------------------------------------

    def reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
            self.term_leader = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = (
            self.cfg.election_tick + self.rng.randrange(self.cfg.election_tick)
        )
        self.votes = {}
        self.lead_transferee = NONE
        self.abort_reads()
        self.prs = {}

    def become_follower(self, term: int, lead: int) -> None:
        self.reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER
        self._step = self._step_repairing if self.repairing else self._step_follower
        self._tick = self._tick_election

    def become_pre_candidate(self) -> None:
        if self.role == Role.LEADER:
            raise InvariantViolation("a leader cannot become a pre-candidate")
        # Term and vote stay as they are: a pre-vote changes nothing durable (§9.6).
        self.votes = {}
        self.lead = NONE
        self.role = Role.PRE_CANDIDATE
        self._step = self._step_candidate
        self._tick = self._tick_election

    def become_candidate(self) -> None:
        if self.role == Role.LEADER:
            raise InvariantViolation("a leader cannot become a candidate")
        self.reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE
        self._step = self._step_candidate
        self._tick = self._tick_election

    def become_leader(self) -> None:
        if self.role == Role.FOLLOWER:
            raise InvariantViolation("a follower cannot become leader without an election")
        self.reset(self.term)
        self.lead = self.term_leader = self.id
        self.role = Role.LEADER
        self._step = self._step_leader
        self._tick = self._tick_heartbeat
        last = self.log.last_index()
        for v in self.voters | self.learners | {self.id}:
            pr = Progress(last + 1, self.cfg.max_inflight)
            pr.recent_active = True
            self.prs[v] = pr
        me = self.prs[self.id]
        me.match = self.log.stabled
        me.become_replicate()
        me.next = last + 1
        # A new leader commits an entry of its own term at once: that is what lets it
        # commit earlier entries (§5.4.2, Figure 8) and serve reads (thesis §6.4).
        self.log.append([Entry(self.term, last + 1, EntryType.NOOP)])
        self._bcast_pending = True

    def promotable(self) -> bool:
        """Whether this node may campaign (on a timeout, or on TIMEOUT_NOW): a voter
        whose log is whole. A voter that its latest configuration removes is still one
        until that removal commits: it may be the only server that can bring the entry to
        the others (thesis §4.2.2, Figure 4.6: a leader removing itself crashes or steps
        down, and the voter left lacks the entry, so it campaigns under the old
        configuration and needs the vote this server refuses, its log being longer). Its
        own vote does not count (`poll_votes` counts the latest configuration's voters)."""
        if self.repairing:
            return False
        if self.id in self.voters:
            return True
        return (self.conf.last_index > self.log.committed
                and self.id in self.conf.at(self.log.committed).voters)

    def campaign(self, kind: CampaignKind, reason: str = "election timeout") -> None:
        if not self.promotable():
            return
        if kind == CampaignKind.PRE_ELECTION:
            self.become_pre_candidate()
            vote_type, term = MsgType.PRE_VOTE, self.term + 1
            self.events.append(RaftEvent(EventKind.PRE_VOTE_STARTED, term, reason=reason))
        else:
            self.become_candidate()
            vote_type, term = MsgType.VOTE, self.term
            self.events.append(RaftEvent(EventKind.ELECTION_STARTED, term, reason=reason))
        self.refusals = {}
        if kind == CampaignKind.PRE_ELECTION:
            # A pre-vote changes nothing durable (§9.6): our own counts at once.
            self.votes[self.id] = True
            if self.poll_votes() is not VoteResult.PENDING:
                return
        else:
            # Our own vote counts only once the new term and the vote for ourselves are
            # durable (§3.8), like any voter's grant: it is a VOTE_RESP to ourselves that
            # leaves with the Ready's persisted_messages and that the application steps
            # back in. Counted earlier, a lone voter would lead, and send entries of a
            # term that a crash before the fsync lets it win again, with other entries
            # at the same (index, term) (etcd-io/raft: the self MsgVoteResp).
            self.send(Message(MsgType.VOTE_RESP, self.id, self.id, term))
        for v in sorted(self.voters):
            if v == self.id:
                continue
            self.send(Message(vote_type, v, self.id, term, log_term=self.log.last_term(),
                              index=self.log.last_index(),
                              context=CAMPAIGN_TRANSFER if kind == CampaignKind.TRANSFER else 0))

    def poll_votes(self) -> VoteResult:
        result = vote_result(self.voters, self.votes)
        if result is not VoteResult.PENDING:
            self.note_election_end(result)
        if result is VoteResult.WON:
            if self.role == Role.PRE_CANDIDATE:
                # the pre-vote won: the real one
                self.campaign(CampaignKind.ELECTION, "pre-vote won")
            else:
                self.become_leader()
        elif result is VoteResult.LOST:
            self.become_follower(self.term, NONE)
        return result

    # -- ticks -----------------------------------------------------------------------

    def _tick_election(self) -> None:
        # A node that may not campaign never resets the count: once its leader is quiet
        # the lease (thesis §4.2.3) lapses, and candidates hear its refusal, not silence.
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.campaign(CampaignKind.PRE_ELECTION if self.cfg.pre_vote
                          else CampaignKind.ELECTION)

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum and not self.quorum_active():
                # Cut off from a majority: stop acting as leader (thesis §6.2).
                self.events.append(RaftEvent(
                    EventKind.STEPPED_DOWN, self.term,
                    reason="check-quorum: a majority was not heard from in an election "
                           "timeout"))
                self.become_follower(self.term, NONE)
                return
            self.lead_transferee = NONE  # a transfer that took this long has failed
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self.maybe_expire_snapshots()
            self.bcast_heartbeat()

    def maybe_expire_snapshots(self) -> None:
        """One heartbeat interval passed: a snapshot unacknowledged for
        `snapshot_timeout_heartbeats` of them is taken as lost. The follower is probed;
        its answer (or the heartbeat's) sends the snapshot again (paper §7)."""
        for pid, pr in self.prs.items():
            if pid != self.id and pr.state == ProgressState.SNAPSHOT:
                pr.snapshot_wait += 1
                if pr.snapshot_wait > self.cfg.snapshot_timeout_heartbeats:
                    pr.become_probe()

    def quorum_active(self) -> bool:
        active = {pid: int(pr.recent_active or pid == self.id) for pid, pr in self.prs.items()}
        for pid, pr in self.prs.items():
            pr.recent_active = pid == self.id
        return committed_index(self.voters, active) == 1

    # -- votes -----------------------------------------------------------------------

    def handle_vote_request(self, m: Message) -> None:
        if self.repairing:
            # Every kind of request, a transfer's forced vote included: our log may lack
            # entries we acknowledged, so no vote of ours is safe (§5.4.1).
            self.refuse_vote(m, VoteRefusal.REPAIRING)
            return
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (m.type == MsgType.PRE_VOTE and m.term > self.term)
        )
        resp_type = MsgType.VOTE_RESP if m.type == MsgType.VOTE else MsgType.PRE_VOTE_RESP
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # A granted pre-vote answers in the term the candidate asked for, so the
            # candidate does not drop it as stale.
            self.send(Message(resp_type, m.frm, self.id, m.term))
            self.events.append(RaftEvent(
                EventKind.VOTE_GRANTED, m.term, m.frm,
                "vote" if m.type == MsgType.VOTE else "pre-vote"))
            if m.type == MsgType.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm  # durable before the grant leaves (§3.8: AFTER_PERSIST)
        elif not can_vote:
            self.refuse_vote(m, VoteRefusal.VOTED_ELSEWHERE if self.vote != NONE
                             else VoteRefusal.HAS_LEADER)
        else:
            self.refuse_vote(m, VoteRefusal.LOG_BEHIND)

    def refuse_vote(self, m: Message, why: VoteRefusal) -> None:
        """Answer a (pre-)vote request with a refusal that says why (in `context`)."""
        resp_type = MsgType.VOTE_RESP if m.type == MsgType.VOTE else MsgType.PRE_VOTE_RESP
        self.send(Message(resp_type, m.frm, self.id, self.term, reject=True, context=int(why)))
        if why == VoteRefusal.LOG_BEHIND:
            detail = (f"its last entry (term {m.log_term}, index {m.index}) is behind ours "
                      f"(term {self.log.last_term()}, index {self.log.last_index()})")
        elif why == VoteRefusal.VOTED_ELSEWHERE:
            detail = f"voted for node {self.vote} in term {self.term}"
        elif why == VoteRefusal.HAS_LEADER:
            detail = f"follows leader {self.lead} in term {self.term}"
        elif why == VoteRefusal.REPAIRING:
            detail = (f"repairing a damaged log: no vote until a leader of term >= "
                      f"{self.repair_term} commits an entry of its term held durably here")
        else:
            detail = f"its term {m.term} is behind ours ({self.term})"
        kind = "vote" if m.type == MsgType.VOTE else "pre-vote"
        self.events.append(RaftEvent(EventKind.VOTE_REFUSED, self.term, m.frm,
                                     f"{kind}: {detail}", why))

    # -- events (for the log; nothing here changes the protocol) ---------------------

    def note_election_end(self, result: VoteResult) -> None:
        pre = self.role == Role.PRE_CANDIDATE
        if result is VoteResult.WON:
            kind = EventKind.PRE_VOTE_WON if pre else EventKind.ELECTION_WON
        else:
            kind = EventKind.PRE_VOTE_LOST if pre else EventKind.ELECTION_LOST
        self.events.append(RaftEvent(
            kind, self.term + 1 if pre else self.term,
            granted=tuple(sorted(v for v, ok in self.votes.items() if ok)),
            refused=tuple(sorted((v, self.refusals.get(v, VoteRefusal.UNSAID))
                                 for v, ok in self.votes.items() if not ok))))

    def note_step_down(self, m: Message) -> None:
        """A message of a higher term is about to make us a follower: say so when it
        interrupts a leader or a campaign (a follower's term change is routine)."""
        if self.role == Role.FOLLOWER:
            return
        self.events.append(RaftEvent(
            EventKind.STEPPED_DOWN, self.term, m.frm,
            f"node {m.frm} sent {m.type.name} with term {m.term} > ours ({self.term})"
            + (f", refusing: {refusal_of(m.context).name.lower()}"
               if m.reject and m.type in (MsgType.VOTE_RESP, MsgType.PRE_VOTE_RESP) else "")))

    # -- role step functions ---------------------------------------------------------

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MsgType.TIMEOUT_NOW:
            self.campaign(CampaignKind.TRANSFER, f"leadership transfer from node {m.frm}")
            return
        if t not in _FROM_LEADER or self.from_second_leader(m):
            return
        self.election_elapsed = 0
        self.lead = self.term_leader = m.frm
        if t == MsgType.APP:
            self.handle_append(m)
        elif t == MsgType.HEARTBEAT:
            self.handle_heartbeat(m)
        else:
            self.handle_snapshot(m)

    def from_second_leader(self, m: Message) -> bool:
        """Whether `m` (APP, HEARTBEAT or SNAP of our term) comes from a node other than
        the one we know leads this term; if so it is dropped and counted. A term has at
        most one leader (Election Safety, paper Figure 3): taken, a second one's append
        could replace entries we acknowledged to the first, which may have counted them
        toward a commit, and its heartbeat could commit entries it never matched."""
        if self.term_leader == NONE or self.term_leader == m.frm:
            return False
        self.dropped["second_leader"] += 1
        return True

    def _step_repairing(self, m: Message) -> None:
        """A follower whose log is being repaired: it takes the leader's appends,
        snapshots and heartbeats and acknowledges what it has stored durably since the
        damage (truthful, so the leader may count it); it is not promotable, so
        TIMEOUT_NOW starts nothing."""
        self._step_follower(m)
        if m.type in _FROM_LEADER and self.lead == m.frm:  # taken, from our term's leader
            self.maybe_note_repair_point(m)

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t in _FROM_LEADER:
            if not self.from_second_leader(m):
                self.become_follower(m.term, m.frm)  # a leader of our term exists (§5.2)
                self._step_follower(m)
        elif (t == MsgType.PRE_VOTE_RESP and self.role == Role.PRE_CANDIDATE) or (
            t == MsgType.VOTE_RESP and self.role == Role.CANDIDATE
        ):
            self.votes.setdefault(m.frm, not m.reject)
            if m.reject:
                self.refusals.setdefault(m.frm, refusal_of(m.context))
            self.poll_votes()

    def _step_leader(self, m: Message) -> None:
        pr = self.prs.get(m.frm)
        if pr is None:
            return
        t = m.type
        if t == MsgType.APP_RESP:
            if m.index > pr.sent:
                # It answers an append we never sent: taken, `match` or `next` would
                # pass our log (Progress invariant).
                self.dropped["ack_past_sent"] += 1
                return
            pr.recent_active = True
            if m.reject:
                self.handle_append_rejection(m, pr)
            else:
                self.handle_append_ack(m, pr)
        elif t == MsgType.HEARTBEAT_RESP:
            if m.context > self.read_round:
                # A read round we never started: counted, it could release a later
                # round no quorum confirmed (thesis §6.4).
                self.dropped["read_ack_past_sent"] += 1
                return
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state == ProgressState.REPLICATE and pr.is_paused():
                pr.inflight.popleft()  # let one append through after a possible loss
            if pr.match < self.log.last_index():
                # Even with nothing new to send, an empty append re-checks the follower's
                # log: appends we pipelined to it may have been lost (§5.3).
                self.maybe_send_append(m.frm, send_if_empty=True)
            if m.context > pr.read_ack:
                pr.read_ack = m.context
                self.release_reads()

    def handle_append_rejection(self, m: Message, pr: Progress) -> None:
        # The follower told us the last index at or below the rejected one whose term
        # is <= the term we sent; skip every entry of ours with a larger term (§5.3).
        hint = m.reject_hint
        if m.log_term > 0:
            hint, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
        if pr.maybe_decr_to(m.index, hint):
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
            self.maybe_send_append(m.frm, send_if_empty=True)

    def handle_append_ack(self, m: Message, pr: Progress) -> None:
        # A probe answered at exactly `match` still found where the logs match (§5.3):
        # replicate from there (etcd-io/raft stepLeader, MsgAppResp).
        if not pr.maybe_update(m.index) and not (
                pr.state == ProgressState.PROBE and m.index == pr.match):
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match >= min(pr.pending_snapshot,
                                                                    self.log.offset):
            # It installed the snapshot, or one older than it after which our log goes on
            # (a transfer that outlived a newer snapshot): replicate from there.
            pr.become_probe()
            pr.become_replicate()
        if self.maybe_commit() and self.role != Role.LEADER:
            return  # our own removal committed
        while self.maybe_send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self.send_timeout_now(m.frm)

    def maybe_commit(self) -> bool:
        """Advance commit to what a majority holds, but only by counting replicas of an
        entry of the current term (§5.4.2, Figure 8).

        Followers learn the new commit index from the next append or heartbeat, as in
        §5.3 (the leader "includes that index in future AppendEntries RPCs (including
        heartbeats) so that the other servers eventually find out"): no append goes out
        for it alone. Under load the next batch follows within a round trip; an append
        carrying only the commit index cost each follower a message, a WAL record and an
        acknowledgement per batch. Idle, a follower applies up to one heartbeat late; no
        read depends on that (linearizable reads are the leader's, ReadIndex)."""
        index = committed_index(self.voters, {pid: pr.match for pid, pr in self.prs.items()})
        if index <= self.log.committed or self.log.term(index) != self.term:
            return False
        self.log.commit_to(index)
        if self.id not in self.voters and self.log.committed >= self.conf.last_index:
            # Our removal is committed: stop leading (thesis §4.2.2).
            self.become_follower(self.term, NONE)
            return True
        if self.reads_before_commit:
            held, self.reads_before_commit = self.reads_before_commit, []
            for ctx in held:
                self.start_read_round(ctx)
        return True

    # -- repair (protocol-aware recovery, Alagappan et al., FAST '18) ----------------

    def maybe_note_repair_point(self, m: Message) -> None:
        """`m` came from the leader of our term. If the commit index we now hold (the
        leader's, capped by what it knows we hold) is at an entry of that term, the
        leader committed an entry of its own term, and with it every entry committed in
        an earlier term (§5.4.2), all at lower indexes (Leader Completeness, §5.4.3).
        Every entry whose commit may have counted an acknowledgement we lost has a term
        < repair_term <= m.term, so holding this entry durably is holding all of them."""
        c = self.log.committed
        if (m.term >= self.repair_term and c > self.repair_point[0]
                and self.log.term(c) == m.term):
            self.repair_point = (c, m.term)
        self.maybe_finish_repair()

    def maybe_finish_repair(self) -> None:
        """Leave repairing mode once the repair point is durable here: stabled covers it
        and no snapshot (which may cover it) still waits to be persisted."""
        c, term = self.repair_point
        if not c or self.log.stabled < c or self.pending_snapshot is not None:
            return
        self.repairing = False
        self._repaired_pending = True
        self._step = self._step_follower
        self.events.append(RaftEvent(
            EventKind.REPAIR_DONE, self.term, self.lead,
            f"holds index {c} of term {term}, committed by the leader of that term, "
            f"durably (repairing since term {self.repair_term})"))

    # -- follower handlers -----------------------------------------------------------

    def handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            # Everything up to our commit already matches the leader (§5.4 Log Matching).
            self.send(Message(MsgType.APP_RESP, m.frm, self.id, self.term,
                              index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            if m.entries:
                self.sync_membership(m.entries)
            self.send(Message(MsgType.APP_RESP, m.frm, self.id, self.term, index=last_new))
            return
        hint_index, hint_term = self.log.find_conflict_by_term(
            min(m.index, self.log.last_index()), m.log_term)
        self.send(Message(MsgType.APP_RESP, m.frm, self.id, self.term, index=m.index,
                          reject=True, reject_hint=hint_index, log_term=hint_term))

    def handle_snapshot(self, m: Message) -> None:
        """InstallSnapshot (paper §7), once the node has assembled the whole snapshot."""
        meta = m.snapshot
        if meta is not None and self.snapshot_out_of_bounds(m, meta):
            return
        if meta is None or meta.index <= self.log.committed:
            # Stale or duplicate: we already have everything it covers.
            self.send(Message(MsgType.APP_RESP, m.frm, self.id, self.term,
                              index=self.log.committed))
            return
        if self.log.match_term(meta.index, meta.term):
            # Our log already holds the snapshot's last entry: keep the log (§7).
            self.log.commit_to(meta.index)
        else:
            self.log.restore(meta.index, meta.term)
            self.conf = ConfHistory(Membership(frozenset(meta.voters),
                                               frozenset(meta.learners)), meta.index)
            self.voters, self.learners = self.conf.current.voters, self.conf.current.learners
            self.snapshot = meta
            self.pending_snapshot = meta
        self.send(Message(MsgType.APP_RESP, m.frm, self.id, self.term, index=meta.index))

    def snapshot_out_of_bounds(self, m: Message, meta: SnapshotMeta) -> bool:
        """Whether a snapshot from a peer must be dropped (and is counted): its last entry
        has a term past the term it was sent in (no leader holds an entry of a later
        term than its own, and installed it would sit under entries of lower terms,
        breaking Log Matching, §5.3), or it ends past MAX_INDEX."""
        if meta.term > m.term:
            self.dropped["snapshot_past_term"] += 1
            return True
        if meta.index > MAX_INDEX:
            self.dropped["index_past_limit"] += 1
            return True
        return False

    def compact(self, index: int, catch_up: int = 0) -> None:
        """The application saved a snapshot of its state machine up to `index` (<= the
        applied index): drop the log entries it covers, but for the last `catch_up` of
        them. A follower a little behind, or one that installs an older snapshot than
        this, then goes on from the log instead of needing this snapshot too (etcd's
        SnapshotCatchUpEntries); what is kept is the log's, in memory only."""
        if self.snapshot is not None and index <= self.snapshot.index:
            return
        meta = self.snapshot_meta(index)
        start = index - catch_up
        if start > self.log.offset:
            self.log.compact(start)
            self.conf.compact(start)
        self.snapshot = meta

    def awaiting_snapshot(self) -> set[int]:
        """The followers a leader sent a snapshot and waits on to install it (until
        `snapshot_timeout_heartbeats` pass, or it acknowledges)."""
        return {pid for pid, pr in self.prs.items() if pr.state == ProgressState.SNAPSHOT}

    def snapshot_meta(self, index: int) -> SnapshotMeta:
        """What a snapshot of the state up to `index` (offset < index <= applied) is:
        the term of the entry there and the membership in force at it, not the latest
        one. `compact(index)` records exactly this."""
        term = self.log.term(index)
        if not self.log.offset < index <= self.log.applied or term is None:
            raise InvariantViolation(f"no snapshot at {index}: log offset {self.log.offset}, "
                                     f"applied {self.log.applied}")
        m = self.conf.at(index)
        return SnapshotMeta(index, term, tuple(sorted(m.voters)), tuple(sorted(m.learners)))

    def handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(min(m.commit, self.log.last_index()))
        self.send(Message(MsgType.HEARTBEAT_RESP, m.frm, self.id, self.term,
                          context=m.context))

    # -- reads (thesis §6.4) ---------------------------------------------------------

    def committed_entry_in_current_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    def start_read_round(self, ctx: object) -> None:
        self.read_round += 1
        self.pending_reads.append(_PendingRead(self.read_round, self.log.committed, ctx))
        self.prs[self.id].read_ack = self.read_round
        if len(self.voters) == 1:
            self.release_reads()
        else:
            self.bcast_heartbeat()

    def release_reads(self) -> None:
        acked = committed_index(self.voters,
                                {pid: pr.read_ack for pid, pr in self.prs.items()})
        n = 0
        for r in self.pending_reads:
            if r.round > acked:
                break
            self.read_states.append(ReadState(r.index, r.ctx))
            n += 1
        if n:
            del self.pending_reads[:n]

    def abort_reads(self) -> None:
        """Leadership is lost: reads not yet released can never be confirmed by us."""
        self.aborted_reads.extend(r.ctx for r in self.pending_reads)
        self.aborted_reads.extend(self.reads_before_commit)
        self.pending_reads = []
        self.reads_before_commit = []

    # -- introspection ---------------------------------------------------------------

    def log_tail(self, n: int) -> list[list[int]]:
        """[index, term] of the last `n` entries in the log (durable or not)."""
        return [[e.index, e.term] for e in self.log.entries[-n:]]

    def status(self) -> dict:
        return {
            "id": self.id,
            "term": self.term,
            "vote": self.vote,
            "lead": self.lead,
            "role": self.role.name.lower(),
            "repairing": self.repairing,
            "last_index": self.log.last_index(),
            "commit_index": self.log.committed,
            "applied_index": self.log.applied,
            "stabled_index": self.log.stabled,
            "snapshot_index": self.snapshot.index if self.snapshot else 0,
            "log_start_index": self.log.offset,
            "voters": sorted(self.voters),
            "learners": sorted(self.learners),
            "progress": {pid: {"match": pr.match, "next": pr.next, "state": pr.state.name}
                         for pid, pr in self.prs.items()},
            "dropped": dict(self.dropped),
        }

