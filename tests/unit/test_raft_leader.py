"""The leader's view of its followers (raftkv/raft/progress.py and the leader's step and
tick functions): snapshots in flight, probes, and acknowledgements it must not trust.

Cores are driven directly: messages are stepped by hand, Readies persisted at once.
"""

from __future__ import annotations

from raftkv.raft import (
    CampaignKind,
    Config,
    Entry,
    HardState,
    Message,
    MsgType,
    Raft,
    Ready,
    Role,
    SnapshotMeta,
)
from raftkv.raft.progress import ProgressState

SNAP = SnapshotMeta(10, 1, (1, 2, 3))


def persist(core: Raft) -> list[Message]:
    """Persist every Ready; returns the messages to others (own ones are stepped back)."""
    out = []
    while core.has_ready():
        rd = core.ready()
        out.extend(rd.messages)
        out.extend(finish(core, rd))
    return out


def finish(core: Raft, rd: Ready) -> list[Message]:
    """`rd` is durable: its acknowledgements leave (our own vote is stepped back in), it
    is applied, and the core advances. Returns the acknowledgements to others."""
    out = []
    for m in rd.persisted_messages:
        if m.to == core.id:
            core.step(m)
        else:
            out.append(m)
    core.advance(rd)
    return out


def leader(**cfg: object) -> Raft:
    """Node 1 of three, leader of term 2 over a log compacted to index 10 (term 1) with
    entries 11-12 after it; node 2 holds everything, node 3 has not answered yet."""
    core = Raft(Config(1, (1, 2, 3), **cfg), hard_state=HardState(1, 0, 12),
                entries=[Entry(1, 11), Entry(1, 12)], snapshot=SNAP, applied=12)
    core.campaign(CampaignKind.ELECTION)
    persist(core)
    core.step(Message(MsgType.VOTE_RESP, 1, 2, 2))
    assert core.role == Role.LEADER
    persist(core)
    ack(core, 2, core.log.last_index())
    persist(core)
    assert core.log.committed == 13  # its no-op: reads may be served
    return core


def ack(core: Raft, frm: int, index: int) -> None:
    core.step(Message(MsgType.APP_RESP, 1, frm, core.term, index=index))


def needing_snapshot(core: Raft) -> None:
    """Node 3 says its log ends before our log start: it gets our snapshot."""
    core.step(Message(MsgType.APP_RESP, 1, 3, core.term, index=core.prs[3].next - 1,
                      reject=True, reject_hint=0))
    assert core.prs[3].state == ProgressState.SNAPSHOT
    assert [m.type for m in persist(core) if m.to == 3] == [MsgType.SNAP]


# -- §7 a snapshot in flight -----------------------------------------------------------

def test_s7_snapshot_wait_counts_heartbeat_intervals_not_read_index_rounds():
    core = leader(check_quorum=False, snapshot_timeout_heartbeats=5)
    needing_snapshot(core)
    # Each ReadIndex round broadcasts a heartbeat (thesis §6.4); under read load that is
    # thousands a second, and none of them is time passing for the snapshot.
    for n in range(50):
        core.read_index(f"r{n}")
        persist(core)
    assert core.prs[3].state == ProgressState.SNAPSHOT
    for _ in range(5 * core.cfg.heartbeat_tick):
        core.tick()
    assert core.prs[3].state == ProgressState.SNAPSHOT
    for _ in range(core.cfg.heartbeat_tick):
        core.tick()
    assert core.prs[3].state == ProgressState.PROBE  # lost: probe, then send it again


def test_s7_a_snapshot_keeps_catch_up_entries_below_it():
    core = leader()
    core.compact(13, catch_up=2)
    assert (core.snapshot.index, core.log.offset) == (13, 11)
    assert [e.index for e in core.log.entries] == [12, 13]
    core.compact(13, catch_up=0)  # no newer snapshot: nothing changes
    assert (core.snapshot.index, core.log.offset) == (13, 11)
    core.compact(12, catch_up=0)  # older than ours: ignored
    assert (core.snapshot.index, core.log.offset) == (13, 11)


def test_s7_a_follower_that_installed_an_older_snapshot_goes_on_from_the_log():
    """The leader's newest snapshot is at 13, its log goes on from 11: a follower that
    answers at 11 (it installed a snapshot there, one that streamed while the leader took
    the newer one) is sent entries, not the newer snapshot as well."""
    core = leader()
    core.compact(13, catch_up=2)
    needing_snapshot(core)
    assert core.prs[3].pending_snapshot == 13
    ack(core, 3, 11)
    assert core.prs[3].state == ProgressState.REPLICATE
    [app] = [m for m in persist(core) if m.to == 3]
    assert (app.type, app.index, [e.index for e in app.entries]) == (MsgType.APP, 11, [12, 13])


def test_s7_a_follower_behind_the_log_start_stays_waiting_for_the_snapshot():
    core = leader()
    core.compact(13, catch_up=2)
    needing_snapshot(core)
    ack(core, 3, 10)  # an older snapshot still, before the log's start: nothing to send
    assert core.prs[3].state == ProgressState.SNAPSHOT
    assert [m for m in persist(core) if m.to == 3] == []


# -- §5.3 probing ----------------------------------------------------------------------

def test_s5_3_probe_acknowledged_at_exactly_match_moves_to_replicate():
    core = leader()
    pr = core.prs[2]
    assert (pr.state, pr.match) == (ProgressState.REPLICATE, 13)
    pr.become_probe()  # as after a rejection: where does its log match ours?
    assert core.maybe_send_append(2, send_if_empty=True)  # an empty probe at match
    [probe] = [m for m in persist(core) if m.to == 2]
    assert (probe.index, probe.entries) == (13, [])
    index = core.propose(b"k=v")
    assert [m for m in persist(core) if m.to == 2] == []  # one probe at a time
    # The follower matches at 13, as we knew: the probe found the match point, so
    # replicate at once (etcd-io/raft: MsgAppResp with Match == Index in StateProbe)
    # rather than wait for a heartbeat response to unpause the probe.
    ack(core, 2, 13)
    assert pr.state == ProgressState.REPLICATE
    [app] = [m for m in persist(core) if m.to == 2]
    assert (app.type, [e.index for e in app.entries]) == (MsgType.APP, [index])


def test_s5_3_stale_ack_at_match_changes_nothing_while_replicating():
    core = leader()
    pr = core.prs[2]
    core.propose(b"k=v")
    persist(core)
    inflight = list(pr.inflight)
    ack(core, 2, 13)  # a duplicate of an earlier acknowledgement
    assert (pr.state, pr.match, list(pr.inflight)) == (ProgressState.REPLICATE, 13, inflight)
    assert [m for m in persist(core) if m.to == 2] == []


# -- what a peer says is bounded by what was sent to it ---------------------------------

def test_ack_past_our_last_index_is_dropped_and_counted():
    core = Raft(Config(1, (1, 2, 3)))  # no snapshot: nothing to send below our log
    core.campaign(CampaignKind.ELECTION)
    persist(core)
    core.step(Message(MsgType.VOTE_RESP, 1, 2, 1))
    persist(core)
    last = core.log.last_index()
    # A bad frame: an index we never had. Trusted, it moved `next` past our log, and
    # asking for a snapshot to send there raised InvariantViolation: the leader stopped.
    ack(core, 3, last + 100)
    ack(core, 2, last + 100)
    assert core.role == Role.LEADER
    assert all(pr.match == 0 and pr.next <= last + 1 for pr in (core.prs[2], core.prs[3]))
    assert core.log.committed == 0  # two such acks would have committed past our log
    assert core.status()["dropped"]["ack_past_sent"] == 2
    ack(core, 2, last)
    persist(core)
    assert core.log.committed == last


def test_ack_past_what_was_sent_to_that_peer_is_dropped_and_counted():
    core = leader()
    core.propose(b"k=v")  # index 14, sent to 2 and 3 ...
    sent = core.log.last_index()
    core.prs[3].become_snapshot(SNAP.index)  # (3 is paused: nothing more goes to it)
    persist(core)
    core.propose(b"k=w")  # ... 15, sent only to 2
    persist(core)
    ack(core, 3, sent + 1)
    assert core.prs[3].match == 0
    assert core.status()["dropped"]["ack_past_sent"] == 1
    ack(core, 2, sent + 1)
    assert core.prs[2].match == sent + 1
    assert core.status()["dropped"]["ack_past_sent"] == 1


def test_rejection_of_an_index_never_sent_is_dropped_and_counted():
    core = leader()
    last = core.log.last_index()
    core.step(Message(MsgType.APP_RESP, 1, 2, core.term, index=last + 50, reject=True,
                      reject_hint=last + 40))
    assert core.prs[2].state == ProgressState.REPLICATE
    assert core.status()["dropped"]["ack_past_sent"] == 1


def test_heartbeat_ack_of_a_read_round_never_sent_is_dropped_and_counted():
    core = leader()
    core.read_index("r1")
    persist(core)
    core.step(Message(MsgType.HEARTBEAT_RESP, 1, 3, core.term, context=core.read_round + 7))
    assert core.prs[3].read_ack == 0
    assert core.status()["dropped"]["read_ack_past_sent"] == 1
    assert core.ready().read_states == []  # one voter besides us must confirm the round
    core.step(Message(MsgType.HEARTBEAT_RESP, 1, 3, core.term, context=core.read_round))
    assert [r.ctx for r in core.ready().read_states] == ["r1"]
