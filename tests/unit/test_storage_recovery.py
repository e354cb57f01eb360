"""Recovery beyond the torn tail: cross-checks of what was read, the format-1 upgrade,
and the repair of a log damaged in the middle (Protocol-Aware Recovery, FAST '18)."""

import shutil
from pathlib import Path

import pytest

from raftkv.raft.types import Entry, HardState, SnapshotMeta
from raftkv.storage import Storage, StorageCorruptError
from raftkv.storage.disk import Disk
from raftkv.storage.record import (
    SnapshotMarker,
    entries_record,
    frame_all,
    frame_v1,
    hard_state_record,
    snapshot_marker_record,
    truncate_record,
)
from raftkv.storage.snapshot import write_snapshot
from raftkv.storage.storage import FORMAT, FORMAT_V1
from raftkv.storage.wal import MAGIC, SEGMENT_HEADER_SIZE, SegmentHeader, segment_name
from tests.unit.wal_files import record_offsets, segments


def ents(first: int, n: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, data=b"v%d.%d" % (i, term)) for i in range(first, first + n)]


def state(st: Storage) -> tuple:
    return (st.hard_state, st.snapshot,
            [(e.index, e.term, e.data) for e in st.entries_after_snapshot()])


# ---- cross-checks ---------------------------------------------------------------------------


def _v2_dir_with(path: Path, *records) -> None:
    """A format-2 dir whose only segment holds `records` (written as given, so they can
    say what no Storage would write)."""
    Storage.open(path).close()
    seg = segments(path)[0]
    buf = bytearray(seg.read_bytes())
    crc = SegmentHeader.decode(bytes(buf)).prev_crc
    blob, _ = frame_all(list(records), crc)
    buf[SEGMENT_HEADER_SIZE : SEGMENT_HEADER_SIZE + len(blob)] = blob
    seg.write_bytes(bytes(buf))


@pytest.mark.parametrize(
    ("records", "problem"),
    [
        ((hard_state_record(HardState(1, 1, 0)), entries_record(ents(1, 2, term=2))),
         "hard state term 1 is below the log's last term 2"),
        ((hard_state_record(HardState(3, 1, 0)), entries_record(ents(1, 1, term=2)),
          entries_record(ents(2, 1, term=1))), "entry 2 has term 1, after term 2"),
        ((hard_state_record(HardState(1, 1, 0)), entries_record(ents(1, 2)),
          hard_state_record(HardState(1, 1, 5))), "commit index 5 is past the last index 2"),
    ],
)
def test_recovery_cross_checks_hard_state_and_log(tmp_path, records, problem):
    """Finding 7: nothing checked that the recovered state is one Raft can be in."""
    _v2_dir_with(tmp_path, *records)
    with pytest.raises(StorageCorruptError, match=problem) as err:
        Storage.open(tmp_path)
    assert err.value.path.name.startswith("wal-")


def test_the_hard_state_term_is_durable_before_an_installed_snapshot_of_a_later_term(
        tmp_path, monkeypatch):
    with Storage.open(tmp_path) as st:
        st.append(ents(1, 3), HardState(1, 1, 2))
        st.sync()
    import raftkv.storage.snapshot as snapshot_mod

    def crash(*args, **kwargs):  # the power goes as the snapshot file is written
        raise KeyboardInterrupt

    monkeypatch.setattr(snapshot_mod, "write_snapshot_temp", crash)
    st = Storage.open(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        st.save_snapshot(SnapshotMeta(9, 4, (1,)), b"s", HardState(4, 2, 9))
    st._wal.close()
    st._vote.close()
    st._fs.unlock(st._lock_fd)
    monkeypatch.undo()
    write_snapshot(tmp_path, SnapshotMeta(9, 4, (1,)), b"s", Disk())  # it did get there
    with Storage.open(tmp_path) as st:
        assert (st.hard_state.term, st.hard_state.vote) == (4, 2)
        assert st.snapshot.index == 9


# ---- format 1 ---------------------------------------------------------------------------------


def _v1_dir(path: Path, *segs: list[tuple]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "FORMAT").write_text(FORMAT_V1 + "\n")
    for seq, recs in enumerate(segs, 1):
        (path / segment_name(seq)).write_bytes(b"".join(frame_v1(*r) for r in recs))


def _v1_sample(path: Path) -> None:
    _v1_dir(path,
            [hard_state_record(HardState(1, 1, 0)), entries_record(ents(1, 5))],
            [hard_state_record(HardState(2, 2, 3)), truncate_record(4),
             entries_record(ents(4, 3, term=2)), hard_state_record(HardState(2, 2, 5))])


def test_a_format_1_dir_is_upgraded_on_open_and_keeps_its_state(tmp_path):
    _v1_sample(tmp_path)
    with Storage.open(tmp_path) as st:
        got = state(st)
        st.append(ents(7, 1, term=2))
        st.sync()
        after = state(st)
    assert got == (HardState(2, 2, 5), None,
                   [(i, 1, b"v%d.1" % i) for i in range(1, 4)]
                   + [(i, 2, b"v%d.2" % i) for i in range(4, 7)])
    assert (tmp_path / "FORMAT").read_text().splitlines()[0] == FORMAT
    segs = segments(tmp_path)
    assert [p.name for p in segs] == [segment_name(3)]
    assert segs[0].read_bytes()[:8] == MAGIC
    with Storage.open(tmp_path) as st:
        assert state(st) == after


def test_a_format_1_dir_with_a_snapshot_is_upgraded(tmp_path):
    _v1_dir(tmp_path,
            [hard_state_record(HardState(3, 1, 0)), entries_record(ents(1, 8, term=3)),
             snapshot_marker_record(SnapshotMarker(6, 3, True, 1)),
             hard_state_record(HardState(3, 1, 7))])
    write_snapshot(tmp_path, SnapshotMeta(6, 3, (1, 2)), b"six", Disk())
    with Storage.open(tmp_path) as st:
        before = state(st)
    assert before[1].index == 6 and [e[0] for e in before[2]] == [7, 8]
    with Storage.open(tmp_path) as st:
        assert state(st) == before and st.load_snapshot_data() == b"six"


@pytest.mark.parametrize("stage", ["tmp-written", "renamed", "format-written"])
def test_an_upgrade_interrupted_anywhere_completes_on_the_next_open(tmp_path, stage):
    ref = tmp_path / "ref"
    _v1_sample(ref)
    with Storage.open(ref) as st:
        expect = state(st)
    upgraded = (ref / segment_name(3)).read_bytes()
    d = tmp_path / "d"
    _v1_sample(d)
    if stage == "tmp-written":
        (d / (segment_name(3) + ".tmp")).write_bytes(upgraded)
    else:
        (d / segment_name(3)).write_bytes(upgraded)
    if stage == "format-written":
        shutil.copy(ref / "FORMAT", d / "FORMAT")
    with Storage.open(d) as st:
        assert state(st) == expect
    assert [p.name for p in segments(d)] == [segment_name(3)]


# ---- repair ---------------------------------------------------------------------------------


def _damaged_middle(path: Path) -> tuple[Path, int]:
    """A log over several segments with one payload byte of a record in the second
    segment flipped; returns that segment and the record's offset."""
    with Storage.open(path, segment_bytes=400) as st:
        st.append([], HardState(1, 1, 0))
        for i in range(1, 40):
            st.append(ents(i, 1), HardState(1, 1, i - 1))
            st.sync()
        st.append([], HardState(2, 3, 38))  # the newest vote: in the last segment
        st.sync()
    seg = segments(path)[1]
    victim = record_offsets(seg)[1]
    buf = bytearray(seg.read_bytes())
    buf[victim + 14] ^= 0x10
    seg.write_bytes(bytes(buf))
    return seg, victim


def test_without_repair_a_damaged_middle_is_refused(tmp_path):
    seg, victim = _damaged_middle(tmp_path)
    with pytest.raises(StorageCorruptError) as err:
        Storage.open(tmp_path, segment_bytes=400)
    assert (err.value.path, err.value.offset) == (seg, victim)


def test_repair_cuts_the_log_at_the_damage_keeps_copies_and_the_vote(tmp_path):
    seg, victim = _damaged_middle(tmp_path)
    later = [p.name for p in segments(tmp_path) if p.name > seg.name]
    assert later
    with Storage.open(tmp_path, segment_bytes=400, repair=True) as st:
        assert st.repair is not None and f"{seg} at offset {victim}" in st.repair
        last = st.last_index
        assert 0 < last < 39
        # The newest term and vote were in a segment that was cut: the VOTE file has them.
        assert (st.hard_state.term, st.hard_state.vote) == (2, 3)
        assert st.hard_state.commit <= last
        st.append(ents(last + 1, 1, term=2))
        st.sync()
        after = state(st)
    assert [p.name for p in segments(tmp_path)] == [segments(tmp_path)[0].name, seg.name]
    broken = sorted(p.name for p in tmp_path.glob("*.broken*"))
    assert f"{seg.name}.broken" in broken and all(f"{n}.broken" in broken for n in later)
    with Storage.open(tmp_path, segment_bytes=400, repair=True) as st:
        assert state(st) == after
        assert st.repair is not None  # until the node says it is whole again
        st.finish_repair()
    with Storage.open(tmp_path, segment_bytes=400) as st:
        assert st.repair is None and state(st) == after


def test_repair_of_a_damaged_snapshot_is_not_attempted(tmp_path):
    with Storage.open(tmp_path) as st:
        st.append(ents(1, 5), HardState(1, 1, 4))
        st.save_snapshot(SnapshotMeta(4, 1, (1,)), b"x" * 50)
    snap = next(tmp_path.glob("snap-*.snap"))
    buf = bytearray(snap.read_bytes())
    buf[-3] ^= 1
    snap.write_bytes(bytes(buf))
    with pytest.raises(StorageCorruptError, match="snapshot CRC"):
        Storage.open(tmp_path, repair=True)
