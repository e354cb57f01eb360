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
