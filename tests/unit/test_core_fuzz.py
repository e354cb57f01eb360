"""Property-based fuzzing of `Raft.step` (issue 17: peer input cannot trip an invariant).

A core in each role is fed sequences of well-formed messages (what raftkv.wire's decoder
lets through, from a peer the transport authenticated) that a buggy peer might send: any
type, any term, indexes in and around the log and at the ends of the uint64 range,
entries of any type (configuration changes whose data is garbage included). Between
messages the application persists, applies and ticks as a node does. No exception may
escape, the core's invariants must hold after every step, and whatever the core sends
must be a frame the wire can carry.

`make test` runs a small, derandomized sample; tests/fuzz.py says how to run more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from raftkv.raft import (
    NONE,
    CampaignKind,
    Config,
    ConfOp,
    Entry,
    EntryType,
    HardState,
    Membership,
    Message,
    MsgType,
    Raft,
    Ready,
    Role,
    SnapshotMeta,
)
from raftkv.raft.confchange import ConfChange, encode_change
from raftkv.raft.progress import ProgressState
from raftkv.wire import MAX_UINT64, decode_message, encode_message
from tests.fuzz import fuzz
from tests.unit.test_raft_leader import finish, persist

MAX_STEPS = 25

VOTERS = (1, 2, 3)
PEERS = (2, 3, 4, 5)  # 4: known, in no configuration; 5: a learner the leader adds
SNAP = SnapshotMeta(10, 1, VOTERS)


# -- the application around the core, as a node runs it ------------------------------

class App:
    """raftkv/replica.py's handling of Readies: a leader's Ready with something to sync
    may be left syncing while messages are stepped (`take_messages` sends meanwhile),
    and a snapshot completed then waits until the sync is done (a bare SNAP frame,
    without one, is stepped like any message)."""

    def __init__(self, core: Raft) -> None:
        self.core = core
        self.syncing: Ready | None = None
        self.deferred: list[Message] = []

    def step(self, m: Message) -> None:
        if self.syncing is not None and m.snapshot is not None:
            self.deferred.append(m)
        else:
            self.core.step(m)

    def process(self, overlap: bool) -> list[Message]:
        """Readies until none is left, or (with `overlap`) a leader's is syncing."""
        core = self.core
        if self.syncing is not None:
            return core.take_messages()
        out = []
        while core.has_ready():
            rd = core.ready()
            out.extend(rd.messages)
            if overlap and core.role == Role.LEADER and (rd.entries or rd.hard_state):
                self.syncing = rd
                return out
            out.extend(finish(core, rd))
        return out

    def finish_sync(self) -> list[Message]:
        if self.syncing is None:
            return []
        rd, self.syncing = self.syncing, None
        out = finish(self.core, rd)
        held, self.deferred = self.deferred, []
        for m in held:
            self.core.step(m)
        return out


# -- cores in each role ----------------------------------------------------------------

def log_after_snapshot() -> dict:
    """A log compacted to index 10 (term 1), then 11-15 of terms 1, 1, 2, 3, 3, committed
    to 13, applied to 12."""
    entries = [Entry(t, i) for i, t in zip(range(11, 16), (1, 1, 2, 3, 3), strict=True)]
    return dict(hard_state=HardState(3, 0, 13), entries=entries, snapshot=SNAP, applied=12)


def follower() -> Raft:
    return Raft(Config(1, VOTERS, seed=1), **log_after_snapshot())


def empty_follower() -> Raft:
    return Raft(Config(1, VOTERS, seed=1))


def repairing_follower() -> Raft:
    return Raft(Config(1, VOTERS, seed=1), repairing=True, **log_after_snapshot())


def learner() -> Raft:
    snap = SnapshotMeta(10, 1, (2, 3), (1,))
    return Raft(Config(1, (), seed=1), hard_state=HardState(3, 0, 12),
                entries=[Entry(1, 11), Entry(2, 12)], snapshot=snap, applied=12)


def campaigning(kind: CampaignKind, role: Role) -> Raft:
    core = follower()
    core.campaign(kind)
    persist(core)
    assert core.role == role
    return core


def pre_candidate() -> Raft:
    return campaigning(CampaignKind.PRE_ELECTION, Role.PRE_CANDIDATE)


def candidate() -> Raft:
    return campaigning(CampaignKind.ELECTION, Role.CANDIDATE)


def elected(core: Raft) -> Raft:
    """`core` wins an election with node 2's vote; node 2 then acknowledges the whole
    log and a configuration change and two writes follow, so the leader has followers
    in different states and entries of its own term."""
    core.campaign(CampaignKind.ELECTION)
    persist(core)
    core.step(Message(MsgType.VOTE_RESP, 1, 2, core.term))
    persist(core)
    assert core.role == Role.LEADER
    core.step(Message(MsgType.APP_RESP, 1, 2, core.term, index=core.log.last_index()))
    persist(core)
    core.propose_conf_change(ConfChange(ConfOp.ADD_LEARNER, 5, "tcp://127.0.0.1:5"))
    core.propose(b"k=v")
    core.propose(b"k=w")
    persist(core)
    return core


def leader() -> Raft:
    return elected(follower())


def leader_without_snapshot() -> Raft:
    """Its log starts at index 1: a follower that needs an index below it cannot be
    sent a snapshot (there is none), so nothing may make it look like one does."""
    return elected(Raft(Config(1, VOTERS, seed=1), hard_state=HardState(2, 0, 3),
                        entries=[Entry(1, 1), Entry(1, 2), Entry(2, 3)], applied=3))


# -- well-formed messages from a buggy peer --------------------------------------------

EDGES = (0, 1, 2**31, 2**63 - 1, 2**63, MAX_UINT64 - 1, MAX_UINT64)


def near(draw: st.DrawFn, x: int, spread: int = 3) -> int:
    """Mostly a value near `x`; sometimes one at the edges of the uint64 range."""
    lo, hi = max(0, x - spread), min(MAX_UINT64, x + spread)
    return draw(st.one_of(st.integers(lo, hi), st.integers(lo, hi), st.sampled_from(EDGES)))


def message_term(draw: st.DrawFn, term: int) -> int:
    """Mostly the core's own term (a message of another term is dropped, or turns a
    leader or candidate into a follower at once, ending the run in that role)."""
    return draw(st.one_of(st.just(term), st.just(term), st.just(term),
                          st.integers(max(0, term - 1), min(MAX_UINT64, term + 1)),
                          st.sampled_from(EDGES)))


def conf_change_data(draw: st.DrawFn) -> bytes:
    """A configuration change as a leader writes one, or bytes that only claim to be."""
    cc = ConfChange(draw(st.sampled_from(ConfOp)), draw(st.integers(1, 6)), "tcp://h:1")
    voters = frozenset(draw(st.lists(st.integers(1, 6), min_size=1, max_size=4)))
    learners = frozenset(draw(st.lists(st.integers(1, 6), max_size=2))) - voters
    return draw(st.one_of(st.just(encode_change(cc, Membership(voters, learners))),
                          st.binary(max_size=12),
                          st.sampled_from([b"1 2 - 0 -", b"3 1 - -1,0 -", b"2 9 x 1,1 1"])))


def entries_after(draw: st.DrawFn, index: int, log_term: int, term: int) -> list[Entry]:
    """Entries as the wire lets them through: indexes from index + 1, terms never
    decreasing within [log_term, term]."""
    n = draw(st.integers(0, 4))
    if n == 0 or log_term > term or index + n > MAX_UINT64:
        return []
    terms = sorted(draw(st.lists(st.integers(log_term, min(term, log_term + 3)),
                                 min_size=n, max_size=n)))
    out = []
    for i, t in enumerate(terms):
        etype = draw(st.sampled_from(EntryType))
        data = conf_change_data(draw) if etype == EntryType.CONF_CHANGE else b"x"
        out.append(Entry(t, index + 1 + i, etype, data))
    return out


def snapshot_meta(draw: st.DrawFn, core: Raft, term: int) -> SnapshotMeta | None:
    """What a SNAP carries once its chunks are whole (the chunk decoder's shape: index
    >= 1, at least one voter), or None (a bare SNAP peer frame)."""
    if draw(st.booleans()):
        return None
    voters = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3, unique=True)))
    learners = tuple(draw(st.lists(st.integers(1, 5), max_size=2, unique=True)))
    return SnapshotMeta(max(1, near(draw, core.log.last_index() + 1, 6)), near(draw, term),
                        voters, learners)


# What a node in each role mostly hears: drawn as often as all other types together.
EXPECTED = {
    Role.FOLLOWER: (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP),
    Role.PRE_CANDIDATE: (MsgType.PRE_VOTE_RESP,),
    Role.CANDIDATE: (MsgType.VOTE_RESP,),
    Role.LEADER: (MsgType.APP_RESP, MsgType.HEARTBEAT_RESP),
}


@st.composite
def peer_message(draw: st.DrawFn, core: Raft) -> Message:
    t = draw(st.one_of(st.sampled_from(MsgType), st.sampled_from(EXPECTED[core.role])))
    term = message_term(draw, core.term)
    last = core.log.last_index()
    index = near(draw, last, 4)
    log_term = near(draw, core.log.term(min(index, last)) or 0, 1)
    m = Message(t, core.id, draw(st.sampled_from(PEERS)), term, log_term=log_term,
                index=index, commit=near(draw, core.log.committed, 4),
                reject=draw(st.booleans()), reject_hint=near(draw, index, 4),
                context=near(draw, max(core.read_round, 1), 2))
    if t == MsgType.APP:
        m.entries = entries_after(draw, index, log_term, term)
    elif t == MsgType.SNAP:
        m.snapshot = snapshot_meta(draw, core, term)
    if t != MsgType.SNAP:
        m = decode_message(encode_message(m))  # well-formed: what a node would step
    return m


# -- invariants ------------------------------------------------------------------------

@dataclass
class History:
    """What must never go back across steps: the term, the vote within a term, and
    committed entries (never overwritten, paper Figure 3 "State Machine Safety")."""

    term: int
    vote: int
    committed: dict[int, int]  # index -> term of every committed entry still in the log

    @classmethod
    def of(cls, core: Raft) -> History:
        return cls(core.term, core.vote, committed_terms(core))


def committed_terms(core: Raft) -> dict[int, int]:
    lg = core.log
    return {e.index: e.term for e in lg.entries[: lg.committed - lg.offset]}


def check_invariants(core: Raft, before: History) -> None:
    """The core's invariants (raftkv/raft/log.py, progress.py; paper Figure 3), and that
    nothing went back since `before`."""
    lg = core.log
    assert lg.offset <= lg.applied <= lg.committed <= lg.last_index(), vars_of(lg)
    assert lg.applied <= lg.stabled <= lg.last_index(), vars_of(lg)
    assert [e.index for e in lg.entries] == list(range(lg.offset + 1, lg.last_index() + 1))
    terms = [lg.offset_term] + [e.term for e in lg.entries]
    assert terms == sorted(terms), f"log terms decrease: {terms}"
    assert terms[-1] <= core.term, f"entry of term {terms[-1]} in term {core.term}"
    assert core.term >= before.term, f"term went back from {before.term} to {core.term}"
    if core.term == before.term and before.vote:
        assert core.vote == before.vote, f"voted {before.vote}, then {core.vote}, in a term"
    for index, term in committed_terms(core).items():
        if index in before.committed:
            assert term == before.committed[index], f"committed entry {index} overwritten"
    if core.role == Role.LEADER:
        check_progress(core)
    hs = core.hard_state()
    assert max(hs.term, hs.vote, hs.commit, lg.last_index()) <= MAX_UINT64


def check_progress(core: Raft) -> None:
    """Progress invariant (raftkv/raft/progress.py): 0 <= match < next, and
    match <= sent <= the leader's last index."""
    last = core.log.last_index()
    for pid, pr in core.prs.items():
        assert 0 <= pr.match < pr.next <= last + 1, (pid, pr)
        if pid != core.id:
            assert pr.match <= pr.sent <= last, (pid, pr, pr.sent)
        if pr.state == ProgressState.SNAPSHOT:
            assert pr.pending_snapshot <= last, (pid, pr)


def vars_of(lg: object) -> dict:
    return {k: getattr(lg, k) for k in ("offset", "applied", "committed", "stabled")}


def check_sendable(messages: list[Message]) -> None:
    """Whatever the core sends, the wire carries and the peer's decoder accepts."""
    for m in messages:
        if m.type == MsgType.SNAP:
            assert m.snapshot is not None and 1 <= m.snapshot.index <= MAX_UINT64
            continue
        assert decode_message(encode_message(m)) == m, m


# -- the property ----------------------------------------------------------------------

def run_steps(data: st.DataObject, core: Raft) -> None:
    """Step up to MAX_STEPS messages; after each, the application may handle Readies
    (leaving a leader's syncing, or finishing that sync), tick, or call the leader's
    entry points as clients do."""
    app = App(core)
    for _ in range(data.draw(st.integers(1, MAX_STEPS))):
        before = History.of(core)
        app.step(data.draw(peer_message(core)))
        check_invariants(core, before)
        act(data, app, data.draw(st.sampled_from(ACTIONS)))
        check_invariants(core, before)
    check_sendable(app.finish_sync() + app.process(overlap=False))
    check_invariants(core, History.of(core))


ACTIONS = ("none", "process", "process_overlapping", "finish_sync", "tick",
           "election_timeout", "propose", "read", "transfer")


def act(data: st.DataObject, app: App, action: str) -> None:
    """What the node does between two peer messages. A leader's entry points may refuse
    (NotLeader, ProposalDropped during a transfer): that is for the client, not a fault."""
    core = app.core
    if action in ("process", "process_overlapping"):
        check_sendable(app.process(overlap=action == "process_overlapping"))
    elif action == "finish_sync":
        check_sendable(app.finish_sync())
    elif action == "tick":
        core.tick()
    elif action == "election_timeout":
        for _ in range(2 * core.cfg.election_tick):  # check-quorum, or a campaign
            core.tick()
    elif core.role == Role.LEADER:
        if action == "propose" and core.lead_transferee == NONE:
            core.propose(b"k=v")
        elif action == "read":
            core.read_index(object())
        elif action == "transfer":
            core.transfer_leader(data.draw(st.sampled_from(sorted(core.voters))))


def role_test(make: Callable[[], Raft]) -> Callable:
    @fuzz(examples=40)
    @given(data=st.data())
    def test(data: st.DataObject) -> None:
        core = make()
        check_invariants(core, History.of(core))
        run_steps(data, core)

    return test


test_follower_takes_any_peer_message = role_test(follower)
test_empty_follower_takes_any_peer_message = role_test(empty_follower)
test_repairing_follower_takes_any_peer_message = role_test(repairing_follower)
test_learner_takes_any_peer_message = role_test(learner)
test_pre_candidate_takes_any_peer_message = role_test(pre_candidate)
test_candidate_takes_any_peer_message = role_test(candidate)
test_leader_takes_any_peer_message = role_test(leader)
test_leader_without_snapshot_takes_any_peer_message = role_test(leader_without_snapshot)
