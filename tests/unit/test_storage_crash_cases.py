"""Power cuts at every disk operation of particular storage calls, on the PowerLossFS model
(tests/powerloss.py): the cases the randomized test (test_storage_powerloss.py) found,
pinned down so that they stay fixed."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from raftkv.raft.types import Entry, HardState, SnapshotMeta
from raftkv.storage import FORMAT, Storage
from raftkv.storage.disk import Disk
from raftkv.storage.fs import OS_FS, FileSystem
from raftkv.storage.record import (
    SnapshotMarker,
    entries_record,
    frame,
    frame_v1,
    hard_state_record,
    snapshot_marker_record,
)
from raftkv.storage.snapshot import write_snapshot
from tests.powerloss import PowerLossFS

DATA = Path("/node/data")
CRASHES_PER_OP = 30


pytestmark = pytest.mark.usefixtures("quiet_storage_log")


def disk() -> PowerLossFS:
    fs = PowerLossFS()
    fs.makedirs(DATA.parent)
    fs.sync_all()
    return fs


def crashes_during(fs: PowerLossFS, action: Callable[[], object]) -> list[tuple[str, PowerLossFS]]:
    """Run `action`; before each of its disk operations, and after the last, take
    CRASHES_PER_OP states a power cut there may leave."""
    rng = random.Random(0)
    out: list[tuple[str, PowerLossFS]] = []

    def take(name: str, path: Path) -> None:
        out.extend((f"before {name} {path}", fs.crash(rng)) for _ in range(CRASHES_PER_OP))

    fs.on_op = take
    try:
        action()
    finally:
        fs.on_op = None
    take("nothing", Path("/"))
    return out


def state(st: Storage) -> tuple:
    return st.hard_state, st.snapshot, [(e.index, e.term, e.data)
                                        for e in st.entries_after_snapshot()]


def test_power_cut_anywhere_in_the_first_open_leaves_a_dir_that_opens_empty():
    """Found by the power-loss test (seed 1445419628 of its first version): the first
    segment was created under its own name before its header was written, so a cut
    could leave `wal-0000000001.log` empty (its name durable, its data not) and every
    later open refused it as corrupt."""
    fs = disk()
    cases = crashes_during(fs, lambda: Storage.open(DATA, fs=fs))
    for where, crashed in cases:
        with Storage.open(DATA, fs=crashed) as st:
            assert state(st) == (HardState(), None, []), where


def test_power_cut_anywhere_in_a_rotation_loses_nothing_synced():
    fs = disk()
    st = Storage.open(DATA, segment_bytes=512, fs=fs)
    st.append([Entry(1, i, data=b"x" * 100) for i in range(1, 4)], HardState(1, 1, 0))
    st.sync()
    before = state(st)
    cases = crashes_during(fs, lambda: st.append([Entry(1, 4, data=b"y" * 300)]))
    after = state(st)
    for where, crashed in cases:
        with Storage.open(DATA, segment_bytes=512, fs=crashed) as st2:
            assert state(st2) in (before, after), where


def make_format_1_dir(path: Path, fs: FileSystem, *, snapshot: bool) -> tuple:
    """A synced format-1 data dir of two segments; returns its state."""
    disk = Disk(fs=fs)
    fs.makedirs(path)
    disk.write_atomic(path / "FORMAT", [b"raftkv-storage 1\n"])
    first, recs = 1, []
    snap = None
    if snapshot:
        snap = SnapshotMeta(5, 1, (1, 2, 3))
        write_snapshot(path, snap, b"state", disk)
        recs.append(snapshot_marker_record(SnapshotMarker(5, 1, False, 1)))
        first = 6
    hs = HardState(2, 1, first + 1)
    ents = [Entry(1, i, data=b"e%d" % i) for i in range(first, first + 4)]
    recs += [hard_state_record(HardState(1, 1, 0)), entries_record(ents[:2]),
             entries_record(ents[2:]), hard_state_record(hs)]
    for seq, part in ((1, recs[:-2]), (2, recs[-2:])):
        fd = fs.open(path / f"wal-{seq:010d}.log", create=True)
        disk.write_all(fd, b"".join(frame_v1(*r) for r in part), 0)
        disk.sync_data(fd)
        fs.close(fd)
        disk.sync_dir(path)
    return hs, snap, [(e.index, e.term, e.data) for e in ents]


@pytest.mark.parametrize("snapshot", [False, True])
def test_an_upgraded_format_1_dir_opens_again(tmp_path, snapshot):
    """Found by the power-loss test with no power cut at all: the upgrade of a format-1
    dir without a snapshot left its one format-2 segment numbered after the format-1
    ones it deleted, with no snapshot marker to say where the log starts, so the next
    open refused the dir ("WAL segment missing")."""
    d = tmp_path / "data"
    want = make_format_1_dir(d, OS_FS, snapshot=snapshot)
    with Storage.open(d) as st:
        assert state(st) == want
    assert (d / "FORMAT").read_text().splitlines()[0] == FORMAT
    with Storage.open(d) as st:
        assert state(st) == want


@pytest.mark.parametrize("snapshot", [False, True])
def test_power_cut_anywhere_in_an_upgrade_loses_nothing(snapshot):
    """Found by the power-loss test: a cut after the upgrade's segment was renamed into
    place, before FORMAT said 2, left a format-1 dir whose last segment is format 2;
    open replayed the format-1 segments and then that one, which repeats the whole
    log, and refused the dir ("segment starts at index 1, the log before it ends at N",
    or "snapshot at N is not newer than the one at N")."""
    fs = disk()
    want = make_format_1_dir(DATA, fs, snapshot=snapshot)
    fs.sync_all()
    cases = crashes_during(fs, lambda: Storage.open(DATA, segment_bytes=4096, fs=fs).close())
    for where, crashed in cases:
        with Storage.open(DATA, segment_bytes=4096, fs=crashed) as st:
            assert state(st) == want, where
        again = crashed.crash(random.Random(1))
        with Storage.open(DATA, segment_bytes=4096, fs=again) as st:
            assert state(st) == want, where


def test_an_installed_snapshot_whose_marker_rotates_the_wal_opens_again():
    """Found by the power-loss test (seed 122634931 of its first version), with no power
    cut needed: when the marker of a snapshot installed past the log did not fit in the
    last segment, the new segment's header said the log goes on after the snapshot,
    while replay reaches it with the log before the snapshot, so every later open
    refused the dir ("segment starts at index 31, the log before it ends at 11")."""
    fs = disk()
    st = Storage.open(DATA, segment_bytes=4096, fs=fs)
    st.append([Entry(1, i, data=b"x" * 150) for i in range(1, 11)], HardState(1, 1, 10))
    room = 4096 - st._wal.segments[-1].size - 8
    filler = next(b"f" * n for n in range(room, 0, -1)
                  if len(frame(*entries_record([Entry(1, 11, data=b"f" * n)]), 0)[0]) == room)
    st.append([Entry(1, 11, data=filler)])
    st.sync()
    assert 4096 - st._wal.segments[-1].size == 8
    st.save_snapshot(SnapshotMeta(30, 1, (1, 2, 3)), b"state", HardState(1, 1, 30))
    st.close()
    assert sorted(n for n in fs.listdir(DATA) if n.startswith("wal-")) == [
        "wal-0000000001.log", "wal-0000000002.log"]
    with Storage.open(DATA, segment_bytes=4096, fs=fs) as st:
        assert (st.snapshot.index, st.last_index, st.hard_state) == (30, 30, HardState(1, 1, 30))


def test_a_snapshot_never_becomes_durable_before_the_term_appended_before_it():
    """Found by the power-loss test: save_snapshot wrote the snapshot file (durable) while
    earlier appends were still unsynced, so a cut could keep the snapshot and lose the
    new term appended before it; open then refused the dir ("hard state term 1 is below
    the log's last term 2"). Pending appends are now synced first."""
    fs = disk()
    st = Storage.open(DATA, segment_bytes=4096, fs=fs)
    st.append([Entry(1, i, data=b"x") for i in range(1, 4)], HardState(1, 1, 0))
    st.sync()
    before = state(st)
    st.append([], HardState(2, 2, 0))
    new_term = state(st)
    cases = crashes_during(fs, lambda: st.save_snapshot(SnapshotMeta(10, 2, (1,)), b"s",
                                                        HardState(2, 2, 10)))
    after = state(st)
    snapshot_only = (HardState(2, 2, 0), after[1], [])
    for where, crashed in cases:
        with Storage.open(DATA, segment_bytes=4096, fs=crashed) as st2:
            assert state(st2) in (before, new_term, snapshot_only, after), where


def test_a_snapshot_from_a_newer_term_given_without_a_hard_state_raises_the_term_first():
    """Found by the power-loss test, the way node.py installs a leader's snapshot: it calls
    save_snapshot(meta) and appends the Ready's hard state (the leader's term) after it.
    A cut between the two left a snapshot of term 2 with a durable term of 1, which open
    refuses ("hard state term 1 is below the log's last term 2"); tests/integration/
    test_storage_crash.py hit it under kill -9 too. save_snapshot now makes the
    snapshot's term durable first, with no vote."""
    fs = disk()
    st = Storage.open(DATA, segment_bytes=4096, fs=fs)
    st.append([Entry(1, i, data=b"x") for i in range(1, 4)], HardState(1, 1, 3))
    st.sync()
    before = state(st)
    raised = (HardState(2, 0, 3), None, before[2])
    cases = crashes_during(fs, lambda: st.save_snapshot(SnapshotMeta(10, 2, (1,)), b"s"))
    after = state(st)
    assert after == (HardState(2, 0, 3), SnapshotMeta(10, 2, (1,)), [])
    for where, crashed in cases:
        with Storage.open(DATA, segment_bytes=4096, fs=crashed) as st2:
            assert state(st2) in (before, raised, after), where
