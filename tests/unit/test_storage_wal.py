"""Storage WAL behaviour: replay after reopen, rotation, truncation records, torn tails
and corruption."""

import logging
import os
import random
import shutil
import time
from pathlib import Path

import pytest

from raftkv.raft.types import Entry, EntryType, HardState
from raftkv.storage import Storage, StorageCorruptError
from raftkv.storage.record import frame_all, hard_state_record, truncate_record
from raftkv.storage.wal import PREALLOCATE_BYTES, SECTOR, SEGMENT_HEADER_SIZE
from tests.unit.wal_files import record_offsets, records_end, segments


def ents(first: int, n: int, term: int = 1, size: int = 10) -> list[Entry]:
    return [
        Entry(term, i, EntryType.NORMAL, bytes([i % 256]) * size) for i in range(first, first + n)
    ]


def state(st: Storage) -> tuple:
    return (
        st.hard_state,
        st.snapshot,
        [(e.term, e.index, e.type, e.data) for e in st.entries_after_snapshot()],
    )


def test_reopen_replays_entries_and_latest_hard_state(tmp_path):
    with Storage.open(tmp_path) as st:
        st.append(ents(1, 5), HardState(1, 1, 0))
        st.append(ents(6, 3), HardState(1, 1, 4))
        st.sync()
        before = state(st)
    with Storage.open(tmp_path) as st:
        assert state(st) == before
        assert st.hard_state == HardState(1, 1, 4)
        assert (st.first_index, st.last_index) == (1, 8)
        assert [e.index for e in st.entries(3, 6)] == [3, 4, 5]


def test_empty_dir_opens_empty(tmp_path):
    with Storage.open(tmp_path / "new" / "dir") as st:
        assert state(st) == (HardState(), None, [])
        assert (st.first_index, st.last_index) == (1, 0)
        assert st.load_snapshot_data() is None


def test_segments_rotate_at_the_size_limit_and_replay_in_order(tmp_path):
    with Storage.open(tmp_path, segment_bytes=256) as st:
        for i in range(1, 41):
            st.append(ents(i, 1, size=30), HardState(1, 1, 0))
            st.sync()
        before = state(st)
    segs = segments(tmp_path)
    assert len(segs) > 5
    assert all(p.stat().st_size <= 256 for p in segs)
    with Storage.open(tmp_path, segment_bytes=256) as st:
        assert state(st) == before


def test_a_record_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path):
    with Storage.open(tmp_path, segment_bytes=100) as st:
        st.append(ents(1, 1), HardState(1, 1, 0))
        st.append(ents(2, 1, size=5000))
        st.append(ents(3, 1))
        st.sync()
    sizes = [p.stat().st_size for p in segments(tmp_path)]
    assert len(sizes) == 3 and sizes[1] > 5000
    with Storage.open(tmp_path) as st:
        assert len(st.entries_after_snapshot()[1].data) == 5000


def test_conflicting_suffix_is_replaced_and_stays_replaced_after_reopen(tmp_path):
    with Storage.open(tmp_path, segment_bytes=200) as st:
        st.append(ents(1, 10, term=1), HardState(1, 1, 0))
        st.sync()
        size_before = sum(p.stat().st_size for p in segments(tmp_path))
        st.append(ents(6, 2, term=2), HardState(2, 1, 0))  # replaces 6..10
        st.sync()
        assert [(e.index, e.term) for e in st.entries_after_snapshot()][4:] == [
            (5, 1),
            (6, 2),
            (7, 2),
        ]
    # Synced bytes were not edited: the truncation went in as records after them.
    assert sum(p.stat().st_size for p in segments(tmp_path)) > size_before
    with Storage.open(tmp_path) as st:
        assert [(e.index, e.term) for e in st.entries_after_snapshot()] == (
            [(i, 1) for i in range(1, 6)] + [(6, 2), (7, 2)]
        )
        st.append(ents(8, 1, term=2))
        st.append(ents(2, 1, term=3), HardState(3, 1, 1))  # truncate almost everything
        st.sync()
    with Storage.open(tmp_path) as st:
        assert [(e.index, e.term) for e in st.entries_after_snapshot()] == [(1, 1), (2, 3)]


def _last_append_bounds(tmp_path: Path, last: str) -> tuple[tuple, tuple, Path, int, int]:
    """Writes a log whose final append is one record; returns the state before and after
    it, the last segment and the record's [start, end) offsets."""
    with Storage.open(tmp_path, segment_bytes=330) as st:
        for i in range(1, 12):
            st.append(ents(i, 1, size=20), HardState(1, 1, i - 1))
        st.sync()
        before = state(st)
        seg = segments(tmp_path)[-1]
        start = records_end(seg)
        if last == "entries":
            st.append(ents(12, 3, size=20))
        else:
            st.append([], HardState(2, 3, 10))
        st.sync()
        after = state(st)
    assert segments(tmp_path)[-1] == seg and len(segments(tmp_path)) >= 3
    return before, after, seg, start, records_end(seg)


def _zero_sectors(path: Path, start: int, end: int, lost: set[int]) -> None:
    """A power cut during the append of [start, end): the sectors numbered in `lost`
    never reached the disk, so they hold what they held before, zeros where the record
    was to go (the WAL writes only over zeros). Sectors are atomic: each is old or new."""
    buf = bytearray(path.read_bytes())
    for k in lost:
        lo, hi = max(start, k * SECTOR), min(end, (k + 1) * SECTOR)
        buf[lo:hi] = bytes(hi - lo)
    path.write_bytes(bytes(buf))


@pytest.mark.parametrize("last", ["entries", "hard_state"])
def test_a_last_record_cut_short_at_any_byte_is_a_torn_tail(tmp_path, caplog, last):
    pristine = tmp_path / "pristine"
    before, after, seg, start, end = _last_append_bounds(pristine, last)
    assert end - start > 10
    for cut in range(start, end + 1):
        d = tmp_path / f"cut{cut}"
        shutil.copytree(pristine, d)
        os.truncate(d / seg.name, cut)  # the file's new size never reached the disk
        caplog.clear()
        expect = after if cut == end else before
        if last == "hard_state":  # the VOTE file got the new term and vote (vote.py)
            hs = expect[0]
            expect = (HardState(after[0].term, after[0].vote, hs.commit), *expect[1:])
        with caplog.at_level(logging.WARNING, logger="raftkv.storage"), Storage.open(d) as st:
            assert state(st) == expect, f"cut at {cut}"
            torn_logged = any("torn tail" in r.getMessage() for r in caplog.records)
            assert torn_logged == (start < cut < end), f"cut at {cut}"
            st.append(ents(st.last_index + 1, 1, term=5), HardState(5, 1, 1))
            st.sync()
            expect = state(st)
        with Storage.open(d) as st:
            assert state(st) == expect, f"cut at {cut}"


def _big_last_append(path: Path, value: bytes) -> tuple[tuple, Path, int, int]:
    """A log whose final append is one record of several sectors holding `value`."""
    with Storage.open(path) as st:
        st.append(ents(1, 3), HardState(1, 1, 0))
        st.sync()
        before = state(st)
        seg = segments(path)[-1]
        start = records_end(seg)
        st.append([Entry(1, 4, EntryType.NORMAL, value)])
        st.sync()
    return before, seg, start, records_end(seg)


def test_any_set_of_lost_sectors_of_the_last_append_is_a_torn_tail(tmp_path):
    pristine = tmp_path / "pristine"
    before, seg, start, end = _big_last_append(pristine, bytes(range(1, 256)) * 8)
    sectors = range(start // SECTOR, (end - 1) // SECTOR + 1)
    assert len(sectors) >= 4
    for n in range(1, 2 ** len(sectors)):
        lost = {k for i, k in enumerate(sectors) if n >> i & 1}
        d = tmp_path / f"lost{n}"
        shutil.copytree(pristine, d)
        _zero_sectors(d / seg.name, start, end, lost)
        with Storage.open(d) as st:
            assert state(st) == before, f"lost sectors {sorted(lost)}"
        kept = list(d.glob(f"{seg.name}.broken*"))
        # Only a loss that left zeros from the record's start on looks like the end of
        # the records; every other loss is a torn tail, and its file is kept.
        clean_end = lost == set(range(sectors[0], sectors[-1] + 1))
        assert bool(kept) != clean_end, f"lost sectors {sorted(lost)}"


def test_a_value_holding_log_records_does_not_stop_a_torn_tail_from_being_dropped(tmp_path):
    """Finding 1: a torn last record whose value held bytes of valid records was taken
    for corruption ("followed by a valid record") and the node could not start."""
    records, _ = frame_all([hard_state_record(HardState(9, 9, 3)), truncate_record(2)], 0)
    value = (b"v" * 13 + records) * 30  # copies at aligned and unaligned offsets
    pristine = tmp_path / "pristine"
    before, seg, start, end = _big_last_append(pristine, value)
    for cut in range(start + 1, end, 7):
        for how in ("truncated", "zeroed"):
            d = tmp_path / f"{how}{cut}"
            shutil.copytree(pristine, d)
            if how == "truncated":
                os.truncate(d / seg.name, cut)
            else:  # the sector holding `cut`, and every one after, never reached the disk
                _zero_sectors(d / seg.name, start, end,
                              set(range(cut // SECTOR, end // SECTOR + 1)))
            with Storage.open(d) as st:
                assert state(st) == before, f"{how} at {cut}"


def test_a_bit_flip_in_the_last_acknowledged_record_is_corruption_not_a_torn_tail(tmp_path):
    """Finding 5: it was dropped as torn, with a warning, and the file truncated."""
    _, _, seg, start, end = _last_append_bounds(tmp_path, "entries")
    _flip(seg, end - 6, seed=3)
    size, content = seg.stat().st_size, seg.read_bytes()
    with pytest.raises(StorageCorruptError, match="no sign of a torn write") as err:
        Storage.open(tmp_path)
    assert (err.value.path, err.value.offset) == (seg, start)
    assert seg.stat().st_size == size and seg.read_bytes() == content  # untouched


def test_a_torn_tail_is_copied_before_it_is_truncated(tmp_path):
    _, _, seg, start, end = _last_append_bounds(tmp_path, "entries")
    os.truncate(seg, end - 3)
    whole = seg.read_bytes()
    with Storage.open(tmp_path):
        pass
    assert (tmp_path / f"{seg.name}.broken").read_bytes() == whole
    assert seg.stat().st_size == start


@pytest.mark.parametrize("lost", ["hard_state", "truncate"])
def test_a_non_last_segment_that_lost_its_tail_is_corruption(tmp_path, lost):
    """Finding 2: a lost tail of a non-last segment was read as preallocated zeros,
    bringing back an older vote or the entries a truncation had removed."""
    with Storage.open(tmp_path, segment_bytes=600) as st:
        st.append(ents(1, 6, term=1), HardState(1, 1, 0))
        if lost == "hard_state":
            st.append([], HardState(5, 2, 0))
        else:
            st.append(ents(4, 1, term=2), HardState(2, 1, 0))  # TRUNCATE 4, then entry 4
        st.sync()
        first = segments(tmp_path)[0]
        while len(segments(tmp_path)) == 1:
            st.append(ents(st.last_index + 1, 1, term=st.hard_state.term))
            st.sync()
    offsets = record_offsets(first)
    victim = {"hard_state": offsets[2], "truncate": offsets[3]}[lost]
    buf = bytearray(first.read_bytes())
    buf[victim:] = bytes(len(buf) - victim)
    first.write_bytes(bytes(buf))
    with pytest.raises(StorageCorruptError, match="lost its tail") as err:
        Storage.open(tmp_path, segment_bytes=600)
    assert err.value.path == first


def test_appends_write_into_zeros_written_ahead_and_replay_stops_at_them(tmp_path, caplog):
    with Storage.open(tmp_path) as st:  # the default segment size: 64 MiB
        st.append(ents(1, 3), HardState(1, 1, 0))
        st.sync()
        seg = segments(tmp_path)[0]
        # One chunk of zeros ahead; further appends land inside it, not growing the file.
        assert seg.stat().st_size == SEGMENT_HEADER_SIZE + PREALLOCATE_BYTES
        st.append(ents(4, 2))
        st.sync()
        assert seg.stat().st_size == SEGMENT_HEADER_SIZE + PREALLOCATE_BYTES
        expect = state(st)
    assert 0 < records_end(seg) < PREALLOCATE_BYTES
    with caplog.at_level(logging.WARNING, logger="raftkv.storage"), Storage.open(tmp_path) as st:
        assert state(st) == expect
        st.append(ents(6, 1))  # continues right after the records, not after the zeros
        st.sync()
        expect = state(st)
    assert "torn" not in caplog.text  # a zero tail is where the records end, not damage
    with Storage.open(tmp_path) as st:
        assert state(st) == expect


def test_the_next_chunk_is_zeroed_when_appends_reach_the_end_of_the_last(tmp_path):
    big = PREALLOCATE_BYTES // 4
    with Storage.open(tmp_path) as st:
        for i in range(1, 6):  # 5 x 1/4 chunk: past the first chunk
            st.append(ents(i, 1, size=big), HardState(1, 1, 0))
        st.sync()
        expect = state(st)
    seg = segments(tmp_path)[0]
    assert seg.stat().st_size == SEGMENT_HEADER_SIZE + 2 * PREALLOCATE_BYTES
    assert records_end(seg) > PREALLOCATE_BYTES
    with Storage.open(tmp_path) as st:
        assert state(st) == expect


def test_zeros_are_never_written_past_the_segment_size(tmp_path):
    with Storage.open(tmp_path, segment_bytes=300) as st:
        for i in range(1, 20):
            st.append(ents(i, 1), HardState(1, 1, 0))
        st.sync()
    assert len(segments(tmp_path)) > 1
    assert all(p.stat().st_size <= 300 for p in segments(tmp_path))


def test_a_log_written_without_preallocation_is_read_and_appended_to(tmp_path):
    """Segments written before preallocation end at their last record."""
    with Storage.open(tmp_path, segment_bytes=300) as st:
        for i in range(1, 20):
            st.append(ents(i, 1), HardState(1, 1, 0))
        st.sync()
    for seg in segments(tmp_path):
        os.truncate(seg, records_end(seg))
    with Storage.open(tmp_path, segment_bytes=300) as st:
        assert st.last_index == 19
        st.append(ents(20, 1))
        st.sync()
        expect = state(st)
    with Storage.open(tmp_path, segment_bytes=300) as st:
        assert state(st) == expect and st.last_index == 20


def _flip(path: Path, offset: int, seed: int) -> None:
    buf = bytearray(path.read_bytes())
    buf[offset] ^= 1 << random.Random(seed).randrange(8)
    path.write_bytes(bytes(buf))


@pytest.mark.parametrize("where", ["header", "payload"])
def test_bit_flip_in_a_middle_segment_is_corruption_naming_file_and_offset(tmp_path, where):
    seed = time.time_ns()
    _last_append_bounds(tmp_path, "entries")
    seg = segments(tmp_path)[1]
    offsets = record_offsets(seg)
    rec = offsets[len(offsets) // 2]
    _flip(seg, rec + (1 if where == "header" else 12), seed)
    with pytest.raises(StorageCorruptError) as err:
        Storage.open(tmp_path)
    assert (err.value.path, err.value.offset) == (seg, rec), f"seed {seed}"
    msg = str(err.value)
    assert str(seg) in msg and f"offset {rec}" in msg and "rejoin" in msg, msg


def test_bad_record_in_last_segment_followed_by_a_valid_one_is_corruption(tmp_path):
    _, _, seg, start, _ = _last_append_bounds(tmp_path, "entries")
    offsets = record_offsets(seg)
    assert offsets[-1] == start and len(offsets) >= 3
    victim = offsets[-2]  # followed by the valid final record
    _flip(seg, victim + 10, seed=1)
    size = seg.stat().st_size
    with pytest.raises(StorageCorruptError) as err:
        Storage.open(tmp_path)
    assert (err.value.path, err.value.offset) == (seg, victim)
    assert "no sign of a torn write" in str(err.value)
    assert seg.stat().st_size == size  # nothing was truncated


def test_corrupt_length_field_in_last_segment_is_not_mistaken_for_a_torn_tail(tmp_path):
    _, _, seg, _, _ = _last_append_bounds(tmp_path, "entries")
    victim = record_offsets(seg)[0]
    buf = bytearray(seg.read_bytes())
    buf[victim + 3] = 0x7F  # length now runs far past the end of the file
    seg.write_bytes(bytes(buf))
    with pytest.raises(StorageCorruptError) as err:
        Storage.open(tmp_path)
    assert (err.value.path, err.value.offset) == (seg, victim)


def test_missing_middle_segment_is_corruption(tmp_path):
    _last_append_bounds(tmp_path, "entries")
    segs = segments(tmp_path)
    assert len(segs) >= 3
    segs[1].unlink()
    with pytest.raises(StorageCorruptError, match="segment missing") as err:
        Storage.open(tmp_path)
    assert err.value.path == segs[1]


def test_missing_first_segment_is_corruption(tmp_path):
    _last_append_bounds(tmp_path, "entries")
    segs = segments(tmp_path)
    segs[0].unlink()
    with pytest.raises(StorageCorruptError, match="segment missing") as err:
        Storage.open(tmp_path)
    assert err.value.path == segs[0]
