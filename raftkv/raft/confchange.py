"""Cluster membership: single-server changes (Raft thesis §4.1), with learners.

A change is a CONF_CHANGE log entry. A server uses the latest configuration in its log,
committed or not (§4.1), so a change takes effect when the entry is appended and is
undone if the entry is truncated away. The leader allows one uncommitted change at a
time, and none before an entry of its own term is committed (the fix to the single-server
algorithm, thesis §4.1 / raft-dev 2015). New servers join as learners (non-voting: they
replicate but count in no quorum) and are promoted to voters once caught up (§4.2.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from raftkv.raft.types import Entry, EntryType, RaftError


class ConfOp(IntEnum):
    ADD_LEARNER = 1
    PROMOTE = 2  # learner -> voter
    REMOVE = 3  # voter or learner leaves


@dataclass(frozen=True, slots=True)
class ConfChange:
    op: ConfOp
    node_id: int
    address: str = ""  # where the new node listens (ADD_LEARNER), for the transport


def encode_change(cc: ConfChange, after: Membership) -> bytes:
    """The CONF_CHANGE entry's data: the change and the whole membership it results in,
    so that a server that joined later (and never saw the initial configuration) knows
    every member from the entry alone."""
    ids = ",".join
    return (f"{int(cc.op)} {cc.node_id} {cc.address or '-'} "
            f"{ids(map(str, sorted(after.voters)))} "
            f"{ids(map(str, sorted(after.learners))) or '-'}").encode()


def decode_change(data: bytes) -> tuple[ConfChange, Membership]:
    """The change and membership `encode_change` wrote. Raises ValueError for anything
    else, a membership no leader can have written included (see `change_problem`):
    such an entry, if a buggy leader sends one, changes nothing (`ConfHistory.sync`)."""
    try:
        op, node, address, voters, learners = data.decode().split()
        cc = ConfChange(ConfOp(int(op)), int(node), "" if address == "-" else address)
        m = Membership(frozenset(int(v) for v in voters.split(",")),
                       frozenset(int(v) for v in learners.split(",") if v != "-"))
    except ValueError as e:
        raise ValueError(f"not a configuration change: {data!r:.80}") from e
    problem = change_problem(cc, m)
    if problem is not None:
        raise ValueError(f"not a configuration change ({problem}): {data!r:.80}")
    return cc, m


def change_problem(cc: ConfChange, after: Membership) -> str | None:
    """Why `after` cannot be the membership a leader computed by applying `cc`
    (`Membership.apply`), or None. Node ids are >= 1 (0 is NONE, "nobody"); at least one
    voter remains; no node is both voter and learner; `cc` took effect in `after`."""
    members = after.voters | after.learners
    if cc.node_id < 1 or min(members) < 1:
        return "a node id below 1"
    if not after.voters:
        return "no voter"
    if after.voters & after.learners:
        return "a node both voter and learner"
    if not after.in_force(cc):
        return f"node {cc.node_id} is not where {cc.op.name} puts it"
    return None


class ConfChangeError(RaftError):
    """A membership change that makes no sense for the current membership."""


class ConfChangeBusy(ConfChangeError):
    """A membership change that cannot be made yet: another is uncommitted, or the
    leader has not committed an entry of its term. Retrying later may succeed."""


@dataclass(frozen=True, slots=True)
class Membership:
    voters: frozenset[int]
    learners: frozenset[int] = frozenset()

    def in_force(self, cc: ConfChange) -> bool:
        """Whether the membership already is what `cc` asks for (a retried change that
        went through): the node answers such a retry OK instead of refusing it."""
        n = cc.node_id
        if cc.op == ConfOp.ADD_LEARNER:
            return n in self.voters or n in self.learners
        if cc.op == ConfOp.PROMOTE:
            return n in self.voters
        return n not in self.voters and n not in self.learners

    def apply(self, cc: ConfChange) -> Membership:
        """The membership after `cc`. Raises ConfChangeError for a change that makes no
        sense here (so a leader refuses it before it reaches the log)."""
        n = cc.node_id
        if cc.op == ConfOp.ADD_LEARNER:
            if n in self.voters or n in self.learners:
                raise ConfChangeError(f"node {n} is already a member")
            return Membership(self.voters, self.learners | {n})
        if cc.op == ConfOp.PROMOTE:
            if n not in self.learners:
                raise ConfChangeError(f"node {n} is not a learner")
            return Membership(self.voters | {n}, self.learners - {n})
        if n in self.learners:
            return Membership(self.voters, self.learners - {n})
        if n not in self.voters:
            raise ConfChangeError(f"node {n} is not a member")
        if len(self.voters) == 1:
            raise ConfChangeError("cannot remove the last voter")
        return Membership(self.voters - {n}, self.learners)


@dataclass
class ConfHistory:
    """The membership at the log's start (`base`, from the snapshot or the initial
    configuration) and every change the log holds after it, in index order."""

    base: Membership
    base_index: int = 0
    changes: list[tuple[int, int, Membership]] = field(default_factory=list)  # index, term

    @property
    def current(self) -> Membership:
        return self.changes[-1][2] if self.changes else self.base

    @property
    def last_index(self) -> int:
        """Index of the latest change in the log (the base's index when there is none)."""
        return self.changes[-1][0] if self.changes else self.base_index

    def at(self, index: int) -> Membership:
        m = self.base
        for i, _, after in self.changes:
            if i > index:
                break
            m = after
        return m

    def sync(self, term_at, entries: list[Entry]) -> bool:
        """Bring the history in line with the log after `entries` were appended (and a
        suffix possibly truncated): forget changes whose entry is gone, add new ones.
        `term_at(index)` is the log's term lookup. Returns whether membership changed."""
        before = self.current
        while self.changes and term_at(self.changes[-1][0]) != self.changes[-1][1]:
            self.changes.pop()
        last = self.last_index
        for e in entries:
            if e.type == EntryType.CONF_CHANGE and e.index > last and term_at(e.index) == e.term:
                try:
                    _, after = decode_change(e.data)
                except ValueError:
                    after = self.current  # never written by a leader of ours: no change
                self.changes.append((e.index, e.term, after))
                last = e.index
        return self.current != before

    def compact(self, index: int) -> None:
        """The log up to `index` is now a snapshot: fold those changes into the base."""
        self.base = self.at(index)
        self.base_index = index
        self.changes = [c for c in self.changes if c[0] > index]
