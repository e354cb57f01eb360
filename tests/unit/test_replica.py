"""The replica (raftkv/replica.py) on its interfaces, without a process: an in-memory
disk (tests/powerloss.py), a transport that records, a syncer that syncs when told."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from raftkv.config import NodeConfig
from raftkv.kv import KVStore, encode_open_session
from raftkv.quota import KEY_OVERHEAD
from raftkv.raft import CampaignKind, ConfChange, ConfOp, Entry, EntryType, Message, MsgType
from raftkv.raft.confchange import Membership, encode_change
from raftkv.replica import Replica, open_storage
from raftkv.snapshot_writer import InlineSnapshotWriter, SnapshotWriteError
from raftkv.storage import Storage
from raftkv.wire import ClientRequest, ReplyCode, ReqOp, SnapshotChunk
from tests.powerloss import PowerLossFS

ADDR = {i: f"tcp://n{i}.test:7700" for i in range(1, 6)}


class Recorder:
    """raftkv.interfaces.Transport: everything sent or replied is kept."""

    def __init__(self, node_id: int, peers: dict[int, str]) -> None:
        self.node_id = node_id
        self.peers = {i: a for i, a in peers.items() if i != node_id}
        self.stats: Counter[str] = Counter()
        self.leader_hint = 0
        self.sent: list[Any] = []
        self.replies: list[tuple[int, int, Any]] = []

    def send(self, msg: Any) -> bool:
        self.sent.append(msg)
        return True

    def send_many(self, messages: Any) -> int:
        return sum(self.send(m) for m in messages)

    def reply(self, identity: Any, request_id: int, code: int, value: Any = None,
              leader_hint: int | None = None) -> bool:
        self.replies.append((request_id, code, value))
        return True

    def set_peer(self, node_id: int, address: str) -> bool:
        if node_id == self.node_id or self.peers.get(node_id) == address:
            return False
        self.peers[node_id] = address
        return True

    def remove_peer(self, node_id: int) -> bool:
        return self.peers.pop(node_id, None) is not None

    def pending(self) -> bool:
        return False


class InlineSyncer:
    """raftkv.interfaces.Syncer that syncs at `start`: done at once."""

    def __init__(self, storage: Storage) -> None:
        self.storage, self.seconds = storage, 0.0

    def start(self) -> None:
        self.storage.sync()

    def done(self) -> bool:
        return True

    def finish(self) -> None:
        pass


class Clock:
    def monotonic(self) -> float:
        return 0.0

    def time(self) -> float:
        return 0.0


def start(fs: PowerLossFS, node_id: int, voters: tuple[int, ...],
          peers: dict[int, str]) -> Replica:
    cfg = NodeConfig(node_id, ADDR[node_id], peers, Path(f"/n{node_id}"),
                     initial_voters=voters, fs=fs, seed=node_id)
    storage = open_storage(cfg)
    return Replica(cfg, storage, Recorder(node_id, peers), InlineSyncer(storage), Clock())


def change(r: Replica, op: ConfOp, node_id: int) -> None:
    r.handle_requests([ClientRequest(len(r.pending_writes) + 1, ReqOp.CONF_CHANGE,
                                     conf_op=int(op), target=node_id,
                                     address=ADDR[node_id] if op == ConfOp.ADD_LEARNER
                                     else "")])
    r.process()
    assert r.core.conf.last_index <= r.core.log.committed, "a lone voter commits at once"


def test_a_restarted_replica_still_reaches_a_member_that_was_removed_and_added_back():
    """Replaying the log after a restart applies the removal of node 2 after the entry
    that adds it back is in the log (and in force, §4.1): node 2 must stay a peer.
    Found by the replica simulator (membership mix; seed 6 fails without the fix): the
    node dropped the address for good, and as leader never reached the member."""
    fs = PowerLossFS()
    r = start(fs, 1, (1,), {})
    r.core.campaign(CampaignKind.ELECTION)
    r.process()
    for op in (ConfOp.ADD_LEARNER, ConfOp.REMOVE, ConfOp.ADD_LEARNER):
        change(r, op, 2)
    assert r.core.learners == {2} and r.transport.peers == {2: ADDR[2]}
    r.storage.close()
    again = start(fs, 1, (1,), {})
    again.process()  # the committed log is applied again
    assert again.core.log.applied == r.core.log.applied
    assert again.transport.peers == {2: ADDR[2]}


def test_a_follower_applying_a_removal_and_a_re_add_together_keeps_the_member():
    """A lagging follower appends a removal and the re-add in one batch, then applies
    them: the removal must not disconnect the member the log added back."""
    r = start(PowerLossFS(), 3, (1, 3), {1: ADDR[1]})
    m1 = Membership(frozenset({1, 3}), frozenset({2}))
    m2 = Membership(frozenset({1, 3}))
    changes = [(ConfChange(ConfOp.ADD_LEARNER, 2, ADDR[2]), m1),
               (ConfChange(ConfOp.REMOVE, 2), m2),
               (ConfChange(ConfOp.ADD_LEARNER, 2, ADDR[2]), m1)]
    entries = [Entry(1, i, EntryType.CONF_CHANGE, encode_change(cc, m))
               for i, (cc, m) in enumerate(changes, start=1)]
    r.receive([Message(MsgType.APP, 3, 1, 1, entries=entries, commit=3)], [])
    r.process()
    assert r.core.log.applied == 3 and r.core.learners == {2}
    assert r.transport.peers == {1: ADDR[1], 2: ADDR[2]}


def test_a_member_whose_removal_is_truncated_away_is_reached_again():
    """A follower applies a committed removal of node 2 while its log ends in another,
    uncommitted removal; a new leader's log then truncates that one away, and the re-add
    before it is in force again (§4.1): node 2 must be a peer again. Found by the replica
    simulator (membership mix; seed 1595 fails without the fix): the follower kept no
    address for a member of its configuration, and only the controller's PEERS gave it
    back."""
    r = start(PowerLossFS(), 3, (1, 3), {1: ADDR[1], 4: ADDR[4]})
    with_2 = Membership(frozenset({1, 3}), frozenset({2}))
    without = Membership(frozenset({1, 3}))
    changes = [(ConfChange(ConfOp.ADD_LEARNER, 2, ADDR[2]), with_2),
               (ConfChange(ConfOp.REMOVE, 2), without),
               (ConfChange(ConfOp.ADD_LEARNER, 2, ADDR[2]), with_2),
               (ConfChange(ConfOp.REMOVE, 2), without)]
    entries = [Entry(1, i, EntryType.CONF_CHANGE, encode_change(cc, m))
               for i, (cc, m) in enumerate(changes, start=1)]
    r.receive([Message(MsgType.APP, 3, 1, 1, entries=entries, commit=3)], [])
    r.process()
    assert r.core.log.applied == 3 and r.core.learners == frozenset()
    assert 2 not in r.transport.peers
    # Node 4 leads term 2 (it was a voter of the configuration it was elected under; here
    # it only has to be a peer) and overwrites entry 4.
    r.receive([Message(MsgType.APP, 3, 4, 2, log_term=1, index=3,
                       entries=[Entry(2, 4)], commit=3)], [])
    r.process()
    assert r.core.learners == {2}
    assert r.transport.peers[2] == ADDR[2]


class HeldWriter:
    """raftkv.interfaces.SnapshotWriter that serializes at `start` and writes when the
    test says (`release`), as the node's forked child does while the loop goes on."""

    def __init__(self) -> None:
        self.started = 0
        self.job: tuple[Any, bytes] | None = None
        self.released = False
        self.fail = False

    def start(self, serialize: Any, write: Any) -> None:
        assert self.job is None
        self.started += 1
        self.job, self.released = (write, serialize()), False

    def release(self) -> None:
        assert self.job is not None
        write, data = self.job
        if not self.fail:
            write(data)
        self.released = True

    def done(self) -> bool:
        return self.released

    def finish(self) -> None:
        self.job = None
        if self.fail:
            raise SnapshotWriteError("the disk is full")


def writer_replica(writer: HeldWriter | InlineSnapshotWriter,
                   fs: PowerLossFS | None = None, catch_up: int = 0, **kw) -> Replica:
    """Node 1, a lone voter and leader, snapshotting every 5 entries exactly, keeping
    `catch_up` entries below each snapshot."""
    cfg = NodeConfig(1, ADDR[1], {}, Path("/n1"), initial_voters=(1,), fs=fs or PowerLossFS(),
                     seed=1, snapshot_entries=5, snapshot_jitter=0.0,
                     snapshot_catch_up_entries=catch_up, **kw)
    storage = open_storage(cfg)
    r = Replica(cfg, storage, Recorder(1, {}), InlineSyncer(storage), Clock(),
                snapshot_writer=writer)
    r.core.campaign(CampaignKind.ELECTION)
    r.process()
    return r


def put(r: Replica, n: int) -> None:
    for _ in range(n):
        r.core.propose(b"")
        r.process()


def test_a_snapshot_is_taken_aside_and_the_log_is_kept_until_it_is_adopted():
    writer = HeldWriter()
    r = writer_replica(writer)
    put(r, 5)
    meta = r.snapshotting
    assert writer.started == 1 and meta is not None
    applied = r.core.log.applied
    put(r, 3)  # applying goes on while the snapshot is written
    assert r.storage.snapshot is None and r.core.snapshot is None
    assert r.core.log.applied == applied + 3
    writer.release()
    r.process()
    assert r.snapshotting is None
    assert r.storage.snapshot == meta == r.core.snapshot
    assert r.storage.first_index == meta.index + 1 == r.core.log.offset + 1
    state = KVStore()
    state.restore(r.storage.load_snapshot_data())
    assert state.applied_index == meta.index  # the state at the start, not later
    assert r.counters["snapshots_taken"] == 1
    assert r.counters["applied_during_snapshots"] == applied + 3 - meta.index


def test_a_snapshot_keeps_its_catch_up_entries_in_the_log_not_on_disk():
    r = writer_replica(InlineSnapshotWriter(), catch_up=3)
    put(r, 5)
    meta = r.core.snapshot
    assert meta is not None and r.storage.snapshot == meta
    assert r.core.log.offset == meta.index - 3  # the core serves followers from there
    assert r.storage.first_index == meta.index + 1  # the WAL drops all the snapshot covers
    assert r.core.status()["snapshot_index"] == meta.index
    assert r.core.status()["log_start_index"] == meta.index - 3


def test_catch_up_entries_hold_at_most_a_quarter_of_snapshot_bytes():
    r = writer_replica(InlineSnapshotWriter(), catch_up=100, snapshot_bytes=4000)
    for _ in range(5):
        r.core.propose(b"x" * 300)  # a snapshot every 4000 bytes: 1,000 may stay
        r.process()
    meta = r.core.snapshot
    assert meta is not None
    assert r.core.log.offset == meta.index - 3


def test_a_snapshot_streaming_to_a_follower_outlives_newer_ones_and_so_does_the_log_after_it():
    """A transfer that takes longer than the leader takes between snapshots: the leader
    finishes sending the older snapshot when the core asks again with a newer one, keeps
    its file and the log after it meanwhile, and on the follower's acknowledgement of it
    sends entries. Before, each newer snapshot restarted the transfer, and compaction
    left no log after the older one, so such a follower never caught up."""
    r = writer_replica(InlineSnapshotWriter(), snapshot_chunk=16)
    change(r, ConfOp.ADD_LEARNER, 2)
    core, sent = r.core, r.transport.sent

    def turn(n: int = 1) -> None:
        for _ in range(n):
            core.propose(encode_open_session())  # the state grows by a session each
            r.process()

    def ask_again() -> None:
        """Node 2 answers a probe: its log is empty, it needs our snapshot."""
        core.prs[2].become_probe()  # as when the core's snapshot wait runs out
        core.step(Message(MsgType.APP_RESP, 1, 2, core.term, index=core.prs[2].next - 1,
                          reject=True, reject_hint=0))
        r.process()

    turn(200)  # a state of some 3 KB: about 50 turns to stream
    ask_again()
    streaming = core.snapshot
    turn(12)  # two snapshots or more since: the file and the log would be gone
    assert core.snapshot.index >= streaming.index + 10
    assert r.snapshot_sender.active and core.log.offset <= streaming.index
    ask_again()
    assert core.prs[2].pending_snapshot == core.snapshot.index  # it asked for the newest
    assert r.counters["snapshots_older_kept"] == 1
    while r.snapshot_sender.active:
        turn()
    chunks = [c for c in sent if isinstance(c, SnapshotChunk) and c.to == 2]
    assert {c.meta for c in chunks} == {streaming}
    assert sorted(c.offset for c in chunks) == list(range(0, chunks[0].total, 16))
    assert r.counters["snapshots_sent"] == 1
    del sent[:]
    core.step(Message(MsgType.APP_RESP, 1, 2, core.term, index=streaming.index))
    r.process()
    assert core.prs[2].match == streaming.index
    assert [m.index for m in sent if isinstance(m, Message) and m.type == MsgType.APP
            and m.to == 2][:1] == [streaming.index]


def test_a_snapshot_written_inline_counts_nothing_applied_during_it():
    """The counter the large-state integration test reads: zero when the writer stops
    the loop, whatever the machine's speed."""
    r = writer_replica(InlineSnapshotWriter())
    put(r, 12)
    assert r.counters["snapshots_taken"] == 2
    assert r.counters["applied_during_snapshots"] == 0


def test_a_failed_snapshot_write_keeps_the_log_and_waits_another_threshold():
    writer = HeldWriter()
    writer.fail = True
    r = writer_replica(writer)
    put(r, 5)
    failed_at = r.snapshotting.index
    writer.release()
    r.process()
    assert r.counters["snapshots_failed"] == 1 and r.counters["snapshots_taken"] == 0
    assert r.storage.snapshot is None and r.storage.first_index == 1
    assert not [n for n in r.cfg.fs.listdir(Path("/n1")) if n.endswith(".tmp")]
    put(r, failed_at + 4 - r.core.log.applied)
    assert writer.started == 1  # not a fork per turn on a full disk
    writer.fail = False
    put(r, 1)
    assert writer.started == 2 and r.snapshotting.index == failed_at + 5


def test_each_node_draws_its_own_snapshot_thresholds():
    """Members that reach the same index do not all snapshot there (issue 16: every
    node stalled at the same index, and the cluster lost its leader)."""
    scales = set()
    for seed in range(1, 6):
        cfg = NodeConfig(1, ADDR[1], {}, Path("/n1"), initial_voters=(1,), fs=PowerLossFS(),
                         seed=seed, snapshot_jitter=0.5)
        storage = open_storage(cfg)
        r = Replica(cfg, storage, Recorder(1, {}), InlineSyncer(storage), Clock())
        scales.add(r.snapshot_scale)
        assert 1.0 <= r.snapshot_scale < 1.5
    assert len(scales) == 5


def test_the_leader_refuses_writes_past_the_quota_and_takes_deletes():
    cfg = NodeConfig(1, ADDR[1], {}, Path("/n1"), initial_voters=(1,), fs=PowerLossFS(),
                     seed=1, quota_bytes=3 * (KEY_OVERHEAD + 102))
    storage = open_storage(cfg)
    r = Replica(cfg, storage, Recorder(1, {}), InlineSyncer(storage), Clock())
    r.core.campaign(CampaignKind.ELECTION)
    r.process()
    r.handle_requests([ClientRequest(1, ReqOp.OPEN_SESSION)])
    r.process()
    cid = r.transport.replies[-1][2]

    def write(rid: int, op: ReqOp, key: bytes, value: bytes | None = None) -> tuple:
        r.handle_requests([ClientRequest(rid, op, key, value, client_id=cid, seq=rid)])
        r.process()
        return r.transport.replies[-1]

    for i in range(3):
        assert write(10 + i, ReqOp.PUT, b"k%d" % i, b"v" * 100)[1] == ReplyCode.OK
    rid, code, message = write(20, ReqOp.PUT, b"k3", b"v" * 100)
    assert code == ReplyCode.QUOTA_EXCEEDED and "--quota-bytes" in message
    assert r.kv.get(b"k3") is None and len(r.kv) == 3
    assert write(21, ReqOp.PUT, b"k0", b"w" * 100)[1] == ReplyCode.OK  # no growth: taken
    assert write(22, ReqOp.DELETE, b"k1")[1] == ReplyCode.OK
    assert write(23, ReqOp.PUT, b"k3", b"v" * 100)[1] == ReplyCode.OK  # room again
    assert r.counters["quota_refused"] == 1
    assert r.status()["kv"]["bytes"] == r.kv.size == 3 * (KEY_OVERHEAD + 102)

    def txn(rid: int, success: list, failure: list = ()) -> tuple:
        r.handle_requests([ClientRequest(rid, ReqOp.TXN, client_id=cid, seq=rid,
                                         txn=([], success, list(failure)))])
        r.process()
        return r.transport.replies[-1]

    put = int(ReqOp.PUT)
    assert txn(30, [[put, b"k0", b"x" * 100]])[1] == ReplyCode.OK  # no growth: taken
    # a new key in either branch would pass the quota: refused, as if both ran
    assert txn(31, [], [[put, b"k9", b"v"]])[1] == ReplyCode.QUOTA_EXCEEDED
    assert r.kv.get(b"k9") is None and r.counters["quota_refused"] == 2


def test_a_peer_message_the_core_drops_is_counted_in_status_and_metrics():
    """A buggy peer's message that the core drops (here a term no cluster reaches) shows
    in the counters, so in /metrics (raftkv_dropped_invalid_total), and by reason."""
    r = start(PowerLossFS(), 1, (1, 2, 3), {2: ADDR[2], 3: ADDR[3]})
    r.receive([Message(MsgType.HEARTBEAT, 1, 2, 2**64 - 1)], [])
    r.process()
    st = r.status()
    assert st["counters"]["dropped_invalid"] == 1
    assert st["dropped"]["term_past_limit"] == 1
    assert r.metrics_view()["counters"]["dropped_invalid"] == 1
