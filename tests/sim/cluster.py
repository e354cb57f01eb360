"""An in-memory cluster of Raft cores under a simulated network and clock.

Everything is driven by explicit calls (scripted scenarios) or by `driver.py` (seeded
random runs). Each node keeps a "disk" (what its Ready batches made durable) apart from
its core, so a crash loses exactly what was not yet persisted. The `Checker` verifies
the Raft paper's Figure 3 properties after every change.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from raftkv.raft import (
    CampaignKind,
    ConfChange,
    ConfChangeError,
    Config,
    ConfOp,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    NotLeader,
    ProposalDropped,
    Raft,
    RaftEvent,
    Role,
    SnapshotMeta,
)


class SafetyViolation(AssertionError):
    """A Figure 3 property (or read linearizability) failed."""


def encode_put(key: str, value: str) -> bytes:
    return f"{key}={value}".encode()


def decode_put(data: bytes) -> tuple[str, str]:
    key, _, value = data.decode().partition("=")
    return key, value


@dataclass
class Disk:
    """What survives a crash: the hard state, the latest snapshot, and the entries after
    it that a Ready made durable."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta | None = None
    entries: list[Entry] = field(default_factory=list)
    # The node's durable repair marker: set when damage cut the log, cleared by the
    # Ready that says `repaired`. A node booted with it set starts repairing.
    repairing: bool = False

    @property
    def offset(self) -> int:
        return self.snapshot.index if self.snapshot else 0

    def persist(self, hs: HardState | None, entries: list[Entry]) -> None:
        if entries:
            first = entries[0].index
            del self.entries[first - self.offset - 1 :]
            self.entries.extend(entries)
        if hs is not None:
            self.hard_state = hs

    def save_snapshot(self, meta: SnapshotMeta) -> None:
        """A snapshot replaces the entries it covers; later entries stay only if the
        log still matches at its last index (a local compaction)."""
        keep = [e for e in self.entries if e.index > meta.index]
        matches = any(e.index == meta.index and e.term == meta.term for e in self.entries)
        self.entries = keep if matches else []
        self.snapshot = meta


@dataclass
class SimNode:
    id: int
    disk: Disk
    core: Raft | None
    kv: dict[str, tuple[str, int]] = field(default_factory=dict)  # key -> (value, index)
    applied: list[Entry] = field(default_factory=list)
    # Set by a "crash before persist" fault: the next Ready is sent but never persisted.
    crash_on_next_ready: bool = False
    events: deque[RaftEvent] = field(default_factory=lambda: deque(maxlen=200))

    @property
    def alive(self) -> bool:
        return self.core is not None


@dataclass(order=True)
class _InFlight:
    at: int
    seq: int
    msg: Message = field(compare=False)


class Checker:
    """Continuous checks of election safety, log matching, leader completeness and
    state machine safety (Raft paper Figure 3)."""

    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}  # term -> leader id
        # (index, term) -> (term of index-1, type, data). If every (index, term) has one
        # predecessor and one payload, two logs holding the same (index, term) agree on
        # every earlier entry: that is Log Matching, checked per new entry.
        self.entry_ids: dict[tuple[int, int], tuple[int, int, bytes]] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}  # index -> (term, data)
        self.max_committed = 0

    def on_leader(self, node: Raft) -> None:
        prev = self.leaders.setdefault(node.term, node.id)
        if prev != node.id:
            raise SafetyViolation(
                f"election safety: nodes {prev} and {node.id} both lead term {node.term}")
        # Leader completeness: every committed entry is in the new leader's log.
        for index in range(1, self.max_committed + 1):
            term = node.log.term(index)
            want = self.committed[index][0]
            if term is not None and term != want or term is None and index > node.log.offset:
                raise SafetyViolation(
                    f"leader completeness: leader {node.id} of term {node.term} has term "
                    f"{term} at committed index {index}, committed in term {want}")

    def on_entries(self, node: Raft, entries: list[Entry]) -> None:
        for e in entries:
            prev_term = node.log.term(e.index - 1)
            ident = (prev_term if prev_term is not None else -1, int(e.type), e.data)
            seen = self.entry_ids.setdefault((e.index, e.term), ident)
            if seen != ident:
                raise SafetyViolation(
                    f"log matching: node {node.id} holds ({e.index}, term {e.term}) with "
                    f"predecessor/payload {ident}, another log has {seen}")

    def on_commit(self, node: Raft, upto: int) -> None:
        for index in range(max(self.max_committed, node.log.offset) + 1, upto + 1):
            e = node.log.entries[index - node.log.offset - 1]
            self.committed[index] = (e.term, e.data)
        self.max_committed = max(self.max_committed, upto)
        # Committed entries below upto that this node has must agree too.

    def on_apply(self, node_id: int, e: Entry) -> None:
        want = self.committed.get(e.index)
        if want is None:
            raise SafetyViolation(f"node {node_id} applied index {e.index} not known committed")
        if want != (e.term, e.data):
            raise SafetyViolation(
                f"state machine safety: node {node_id} applied {e.index} as "
                f"(term {e.term}, {e.data!r}); committed was (term {want[0]}, {want[1]!r})")


@dataclass
class ReadOp:
    id: int
    key: str
    node: int
    invoked_at: int
    floor: int  # highest write index acknowledged for the key before the read began


class Cluster:
    def __init__(
        self,
        n: int,
        seed: int = 0,
        *,
        election_tick: int = 10,
        pre_vote: bool = True,
        check_quorum: bool = True,
        max_inflight: int = 8,
        max_entries_per_msg: int = 64,
        trace_len: int = 60,
        compact_every: int | None = None,
        spare: int = 0,
    ) -> None:
        self.compact_every = compact_every
        # index -> (kv, applied entries): every snapshot ever taken, shared by all nodes
        # (state machine safety makes the state at an index the same everywhere).
        self.snapshots: dict[int, tuple[dict, list[Entry]]] = {}
        self.ids = list(range(1, n + 1 + spare))
        self.initial_voters = tuple(range(1, n + 1))  # spare nodes join later, if at all
        self.seed = seed
        self.rng = random.Random(seed)
        self.cfg_args = dict(election_tick=election_tick, pre_vote=pre_vote,
                             check_quorum=check_quorum, max_inflight=max_inflight,
                             max_entries_per_msg=max_entries_per_msg)
        self.now = 0
        self.seq = 0
        self.boot_count = 0
        self.inflight: list[_InFlight] = []
        self.blocked: set[tuple[int, int]] = set()  # (from, to) pairs that drop everything
        self.drop_rate = 0.0
        self.lose_next: set[MsgType] = set()  # lose the next message of each of these types
        self.dup_rate = 0.0
        self.delay = (1, 1)
        self.checker = Checker()
        self.delivered: Counter[tuple[MsgType, bool]] = Counter()  # (type, reject) -> count
        self.dropped: Counter[str] = Counter()  # what crashed cores dropped (Raft.dropped)
        self.trace: deque[str] = deque(maxlen=trace_len)
        self.nodes: dict[int, SimNode] = {}
        for i in self.ids:
            self.nodes[i] = SimNode(i, Disk(), None)
            self.boot(i)
        # Client bookkeeping: proposals waiting for their entry to apply on the leader.
        self.pending_writes: dict[tuple[int, int], tuple[int, int, str, str]] = {}
        self.acked_writes: dict[str, int] = {}  # key -> highest acknowledged write index
        self.acked_count = 0
        self.pending_reads: dict[int, ReadOp] = {}
        self.read_results: list[tuple[ReadOp, int]] = []
        self.waiting_reads: dict[int, list[tuple[int, ReadOp]]] = {}
        self.next_op = 1

    # -- node lifecycle --------------------------------------------------------------

    def boot(self, i: int) -> None:
        node = self.nodes[i]
        self.boot_count += 1
        voters = self.initial_voters if i in self.initial_voters else ()
        cfg = Config(i, voters, seed=self.seed * 1000 + self.boot_count, **self.cfg_args)
        snap = node.disk.snapshot
        node.core = Raft(cfg, hard_state=node.disk.hard_state, entries=list(node.disk.entries),
                         snapshot=snap, applied=snap.index if snap else 0,
                         repairing=node.disk.repairing)
        self.restore_state(node, snap)
        node.crash_on_next_ready = False
        self.trace.append(f"t={self.now} boot {i} term={node.disk.hard_state.term} "
                          f"last={len(node.disk.entries)}")

    def crash(self, i: int, before_persist: bool = False) -> None:
        """Kill node i. With before_persist, it first produces one more Ready, sends the
        messages allowed before persistence, and dies before the fsync."""
        node = self.nodes[i]
        if not node.alive:
            return
        if before_persist and node.core.has_ready():
            rd = node.core.ready()
            for m in rd.messages:
                self.send(m)
            self.trace.append(f"t={self.now} crash {i} before persisting "
                              f"{len(rd.entries)} entries, hs={rd.hard_state}")
        else:
            self.trace.append(f"t={self.now} crash {i}")
        self.dropped.update(node.core.dropped)
        node.core = None
        for w in [k for k, v in self.pending_writes.items() if v[0] == i]:
            del self.pending_writes[w]

    def restart(self, i: int) -> None:
        if not self.nodes[i].alive:
            self.boot(i)
            self.drive(i)

    def damage(self, i: int, keep: int) -> None:
        """Kill node i, lose its durable log after index `keep` (storage found the record
        after it corrupt and cut the log there), and restart it as the node would: term
        raised by one with no vote, repair marker set."""
        self.crash(i)
        disk = self.nodes[i].disk
        del disk.entries[keep - disk.offset :]
        hs = disk.hard_state
        disk.hard_state = HardState(hs.term + 1, 0, min(hs.commit, keep))
        disk.repairing = True
        self.trace.append(f"t={self.now} damage {i} after {keep}")
        self.restart(i)

    # -- network ---------------------------------------------------------------------

    def send(self, m: Message) -> None:
        if (m.frm, m.to) in self.blocked:
            return
        if m.type in self.lose_next:
            self.lose_next.discard(m.type)
            self.trace.append(f"t={self.now} lost {m.frm}->{m.to} {m.type.name}")
            return
        if self.drop_rate and self.rng.random() < self.drop_rate:
            return
        copies = 2 if self.dup_rate and self.rng.random() < self.dup_rate else 1
        for _ in range(copies):
            self.seq += 1
            lo, hi = self.delay
            at = self.now + (lo if lo == hi else self.rng.randint(lo, hi))
            heapq.heappush(self.inflight, _InFlight(at, self.seq, m))

    def partition(self, *groups: Iterable[int]) -> None:
        """Split the cluster: nodes in different groups cannot talk (symmetric)."""
        sets = [set(g) for g in groups]
        rest = set(self.ids) - set().union(*sets)
        if rest:
            sets.append(rest)
        self.blocked = {(a, b) for sa in sets for sb in sets if sa is not sb
                        for a in sa for b in sb}
        self.trace.append(f"t={self.now} partition {[sorted(s) for s in sets]}")

    def block(self, frm: int, to: int) -> None:
        """A one-way fault: messages from `frm` to `to` are lost."""
        self.blocked.add((frm, to))
        self.trace.append(f"t={self.now} block {frm}->{to}")

    def isolate(self, i: int) -> None:
        self.partition([i])

    def heal(self) -> None:
        self.blocked = set()
        self.trace.append(f"t={self.now} heal")

    def deliver_due(self) -> int:
        """Deliver every message due by now. Returns how many were delivered."""
        n = 0
        while self.inflight and self.inflight[0].at <= self.now:
            m = heapq.heappop(self.inflight).msg
            if (m.frm, m.to) in self.blocked:
                continue
            self.step(m)
            n += 1
        return n

    def deliver_until(self, cond: Callable[[], bool], max_messages: int = 10_000) -> None:
        """Deliver messages one at a time, in due order, until `cond()` holds."""
        for _ in range(max_messages):
            if cond():
                return
            if not self.inflight:
                raise AssertionError("network drained before the condition held")
            item = heapq.heappop(self.inflight)
            self.now = max(self.now, item.at)
            if (item.msg.frm, item.msg.to) not in self.blocked:
                self.step(item.msg)
        raise AssertionError("condition not met")

    def expire_leases(self) -> None:
        """Followers act as if they had not heard from a leader for an election timeout."""
        for n in self.nodes.values():
            if n.alive and n.core.role != Role.LEADER:
                n.core.election_elapsed = max(n.core.election_elapsed, n.core.cfg.election_tick)

    def elect(self, i: int) -> None:
        """Make node i campaign now (as if its election timer fired) and deliver the
        whole election. Fails the test if it does not become leader. The other nodes are
        treated as not having heard from a leader for an election timeout, so their
        leader lease (thesis §4.2.3) does not make them ignore the candidate."""
        node = self.nodes[i]
        for _ in range(3):  # a first attempt may only teach the candidate a newer term
            self.expire_leases()
            node.core.campaign(CampaignKind.PRE_ELECTION if self.cfg_args["pre_vote"]
                               else CampaignKind.ELECTION)
            self.drive(i)
            self.deliver_until(lambda: node.core.role in (Role.LEADER, Role.FOLLOWER))
            if node.core.role == Role.LEADER:
                return
        raise AssertionError(f"node {i} did not win an election")

    def deliver_all(self, max_rounds: int = 1000) -> None:
        """Deliver messages, including the ones delivery creates, until none is left."""
        for _ in range(max_rounds):
            if not self.inflight:
                return
            self.now = max(self.now, self.inflight[0].at)
            self.deliver_due()
        raise AssertionError("network did not quiesce")

    def step(self, m: Message) -> None:
        node = self.nodes[m.to]
        if not node.alive:
            return
        self.delivered[(m.type, m.reject)] += 1
        self.trace.append(
            f"t={self.now} {m.frm}->{m.to} {m.type.name} term={m.term} idx={m.index} "
            f"lt={m.log_term} n={len(m.entries)} commit={m.commit}"
            f"{' REJECT' if m.reject else ''}")
        node.core.step(m)
        self.drive(m.to)

    # -- time ------------------------------------------------------------------------

    def tick(self, ids: Iterable[int] | None = None) -> None:
        for i in ids if ids is not None else self.ids:
            node = self.nodes[i]
            if node.alive:
                node.core.tick()
                self.drive(i)

    def run(self, ticks: int, tick_every: int = 10) -> None:
        """Advance the clock `ticks` ticks, delivering messages as they fall due."""
        for _ in range(ticks):
            for _ in range(tick_every):
                self.now += 1
                self.deliver_due()
            self.tick()

    def run_until(self, cond: Callable[[], bool], max_ticks: int, tick_every: int = 10) -> int:
        for t in range(max_ticks):
            if cond():
                return t
            self.run(1, tick_every)
        if cond():
            return max_ticks
        raise AssertionError(f"condition not met within {max_ticks} ticks (seed {self.seed})")

    # -- the application loop, as a node process would run it ------------------------

    def drive(self, i: int) -> None:
        node = self.nodes[i]
        while node.alive and node.core.has_ready():
            core = node.core
            if node.crash_on_next_ready:
                self.crash(i, before_persist=True)
                return
            rd = core.ready()
            if rd.soft_state is not None and rd.soft_state.role == Role.LEADER:
                self.trace.append(f"t={self.now} {i} leads term {core.term}")
                self.checker.on_leader(core)
            for m in rd.messages:
                self.send(m)
            if rd.snapshot is not None:
                self.trace.append(f"t={self.now} {i} installs snapshot {rd.snapshot.index}")
                node.disk.save_snapshot(rd.snapshot)
                self.restore_state(node, rd.snapshot)
            self.checker.on_entries(core, rd.entries)
            node.disk.persist(rd.hard_state, rd.entries)
            for m in rd.persisted_messages:
                if m.to == i:
                    core.step(m)  # our own vote, now durable: the node steps it back in
                else:
                    self.send(m)
            if core.log.committed > self.checker.max_committed:
                self.checker.on_commit(core, min(core.log.committed, core.log.last_index()))
            for e in rd.committed_entries:
                self.apply(node, e)
            for rs in rd.read_states:
                self.waiting_reads.setdefault(i, []).append((rs.index, rs.ctx))
            for ctx in rd.aborted_reads:
                self.pending_reads.pop(ctx, None)
            if rd.repaired:
                node.disk.repairing = False
            node.events.extend(rd.events)
            core.advance(rd)
            self.serve_reads(node)
            self.maybe_compact(node)

    def maybe_compact(self, node: SimNode) -> None:
        """Snapshot the state machine and drop the log it covers, as a node would once
        its log grows past a threshold."""
        core = node.core
        if self.compact_every is None or core is None:
            return
        index = core.log.applied
        if index - core.log.offset < self.compact_every:
            return
        data = (dict(node.kv), list(node.applied))
        known = self.snapshots.setdefault(index, data)
        if [(e.index, e.term, e.data) for e in known[1]] != [
                (e.index, e.term, e.data) for e in data[1]]:
            raise SafetyViolation(f"node {node.id}'s state at {index} differs from another's")
        core.compact(index)
        node.disk.save_snapshot(core.snapshot)
        self.trace.append(f"t={self.now} {node.id} compacts to {index}")

    def restore_state(self, node: SimNode, snap: SnapshotMeta | None) -> None:
        if snap is None:
            node.kv, node.applied = {}, []
            return
        kv, applied = self.snapshots[snap.index]
        node.kv, node.applied = dict(kv), list(applied)

    def apply(self, node: SimNode, e: Entry) -> None:
        self.checker.on_apply(node.id, e)
        node.applied.append(e)
        if e.type == EntryType.NORMAL:
            key, value = decode_put(e.data)
            node.kv[key] = (value, e.index)
        pending = self.pending_writes.pop((node.id, e.index), None)
        if pending is not None:
            _, term, key, _ = pending
            if term == e.term:  # our entry, not one that overwrote it
                self.acked_count += 1
                self.acked_writes[key] = max(self.acked_writes.get(key, 0), e.index)

    def serve_reads(self, node: SimNode) -> None:
        waiting = self.waiting_reads.get(node.id)
        if not waiting:
            return
        keep = []
        for index, ctx in waiting:
            if node.core.log.applied < index:
                keep.append((index, ctx))
                continue
            op = self.pending_reads.pop(ctx, None)
            if op is None:
                continue
            _, got = node.kv.get(op.key, ("", 0))
            if got < op.floor:
                raise SafetyViolation(
                    f"stale read: read {op.id} of {op.key!r} on node {node.id} saw the write "
                    f"at index {got}, but the write at {op.floor} was acknowledged before it")
            self.read_results.append((op, got))
        self.waiting_reads[node.id] = keep

    # -- clients ---------------------------------------------------------------------

    def leader(self) -> int | None:
        """The live node that believes it leads in the highest term."""
        best = None
        for node in self.nodes.values():
            if node.alive and node.core.role == Role.LEADER and (
                best is None or node.core.term > self.nodes[best].core.term
            ):
                best = node.id
        return best

    def believed_leaders(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.alive and n.core.role == Role.LEADER]

    def propose(self, i: int, key: str, value: str) -> int | None:
        node = self.nodes[i]
        if not node.alive:
            return None
        try:
            index = node.core.propose(encode_put(key, value))
        except (NotLeader, ProposalDropped):
            return None
        self.pending_writes[(i, index)] = (i, node.core.term, key, value)
        self.drive(i)
        return index

    def read(self, i: int, key: str) -> int | None:
        node = self.nodes[i]
        if not node.alive:
            return None
        op = ReadOp(self.next_op, key, i, self.now, self.acked_writes.get(key, 0))
        self.next_op += 1
        try:
            node.core.read_index(op.id)
        except NotLeader:
            return None
        self.pending_reads[op.id] = op
        self.drive(i)
        return op.id

    # -- convergence -----------------------------------------------------------------

    def members(self) -> set[int]:
        """The members in the configuration of the current leader (all nodes without one)."""
        lead = self.leader()
        if lead is None:
            return set(self.ids)
        core = self.nodes[lead].core
        return set(core.voters | core.learners)

    def change_membership(self, op: ConfOp, pick: float) -> None:
        """Ask the leader for one membership change on a node chosen by `pick`."""
        lead = self.leader()
        if lead is None:
            return
        core = self.nodes[lead].core
        candidates = {
            ConfOp.ADD_LEARNER: [i for i in self.ids if i not in core.voters | core.learners],
            ConfOp.PROMOTE: sorted(core.learners),
            ConfOp.REMOVE: sorted(core.learners | core.voters) if len(core.voters) > 3
            else sorted(core.learners),
        }[op]
        if not candidates:
            return
        target = candidates[int(pick * len(candidates))]
        try:
            index = core.propose_conf_change(ConfChange(op, target))
        except (NotLeader, ConfChangeError):
            return
        self.trace.append(f"t={self.now} {lead} proposes {op.name} {target} at {index}")
        self.drive(lead)

    def check_nothing_dropped(self) -> None:
        """Every peer here is honest: a core that dropped one's message as impossible
        (an ack past what was sent, a malformed append) has a wrong bound, which would
        cost liveness."""
        total = Counter(self.dropped)
        for n in self.nodes.values():
            if n.alive:
                total.update(n.core.dropped)
        if +total:
            raise SafetyViolation(f"honest messages dropped as impossible: {dict(+total)}")

    def check_converged(self) -> None:
        """Every live member applied the same entries (after the cluster settled)."""
        members = self.members()
        logs = {i: [(e.index, e.term, e.data) for e in n.applied]
                for i, n in self.nodes.items() if n.alive and i in members}
        first = next(iter(logs.values()))
        for i, log in logs.items():
            if log != first:
                raise SafetyViolation(f"node {i} applied a different sequence")
