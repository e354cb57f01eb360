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
from raftkv.storage.wal import PREALLOCATE_BYTES
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
            st.append(ents(i, 1, size=30))
            st.sync()
        before = state(st)
    segs = segments(tmp_path)
    assert len(segs) > 5
    assert all(p.stat().st_size <= 256 for p in segs)
    with Storage.open(tmp_path, segment_bytes=256) as st:
        assert state(st) == before


def test_a_record_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path):
    with Storage.open(tmp_path, segment_bytes=100) as st:
        st.append(ents(1, 1))
        st.append(ents(2, 1, size=5000))
        st.append(ents(3, 1))
        st.sync()
    sizes = [p.stat().st_size for p in segments(tmp_path)]
    assert len(sizes) == 3 and sizes[1] > 5000
    with Storage.open(tmp_path) as st:
        assert len(st.entries_after_snapshot()[1].data) == 5000


def test_conflicting_suffix_is_replaced_and_stays_replaced_after_reopen(tmp_path):
    with Storage.open(tmp_path, segment_bytes=200) as st:
        st.append(ents(1, 10, term=1))
        st.sync()
        size_before = sum(p.stat().st_size for p in segments(tmp_path))
        st.append(ents(6, 2, term=2))  # replaces 6..10
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
        st.append(ents(2, 1, term=3))  # truncate almost everything
        st.sync()
    with Storage.open(tmp_path) as st:
        assert [(e.index, e.term) for e in st.entries_after_snapshot()] == [(1, 1), (2, 3)]


def _last_append_bounds(tmp_path: Path, last: str) -> tuple[tuple, tuple, Path, int, int]:
    """Writes a log whose final append is one record; returns the state before and after
    it, the last segment and the record's [start, end) offsets."""
    with Storage.open(tmp_path, segment_bytes=250) as st:
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


def _tear(path: Path, cut: int, end: int, how: str) -> None:
    """A crash during the append that was to end at `end`: only the bytes before `cut`
    reached the disk. Past them the file ends ("truncated", a file that grew with each
    append) or holds zeros ("zeroed", space preallocated ahead of the appends)."""
    if how == "truncated":
        os.truncate(path, cut)
    else:
        buf = bytearray(path.read_bytes())
        buf[cut:end] = bytes(end - cut)
        path.write_bytes(bytes(buf))


@pytest.mark.parametrize("how", ["truncated", "zeroed"])
@pytest.mark.parametrize("last", ["entries", "hard_state"])
def test_torn_last_record_is_dropped_at_every_cut_and_the_log_stays_writable(
    tmp_path, caplog, last, how
):
    pristine = tmp_path / "pristine"
    before, after, seg, start, end = _last_append_bounds(pristine, last)
    assert end - start > 10
    record = (pristine / seg.name).read_bytes()[start:end]
    for cut in range(start, end + 1):
        d = tmp_path / f"cut{cut}"
        shutil.copytree(pristine, d)
        _tear(d / seg.name, cut, end, how)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="raftkv.storage"), Storage.open(d) as st:
            assert state(st) == (after if cut == end else before), f"cut at {cut}"
            torn_logged = any("torn tail" in r.getMessage() for r in caplog.records)
            # A record whose surviving bytes are all zeros is indistinguishable from
            # preallocated space: it is dropped without a report.
            torn = start < cut < end and (how == "truncated" or any(record[: cut - start]))
            assert torn_logged == torn, f"cut at {cut}"
            st.append(ents(st.last_index + 1, 1, term=5), HardState(5, 1, 1))
            st.sync()
            expect = state(st)
        assert (d / seg.name).stat().st_size >= start
        with Storage.open(d) as st:
            assert state(st) == expect, f"cut at {cut}"


def test_bad_crc_final_record_is_a_torn_tail(tmp_path, caplog):
    before, _, seg, start, end = _last_append_bounds(tmp_path, "entries")
    buf = bytearray(seg.read_bytes())
    buf[end - 2] ^= 0x40
    seg.write_bytes(bytes(buf))
    with caplog.at_level(logging.WARNING, logger="raftkv.storage"), Storage.open(tmp_path) as st:
        assert state(st) == before
    assert f"{seg} at offset {start}" in caplog.text
    assert seg.stat().st_size == start


def test_appends_write_into_zeros_written_ahead_and_replay_stops_at_them(tmp_path, caplog):
    with Storage.open(tmp_path) as st:  # the default segment size: 64 MiB
        st.append(ents(1, 3), HardState(1, 1, 0))
        st.sync()
        seg = segments(tmp_path)[0]
        # One chunk of zeros ahead; further appends land inside it, not growing the file.
        assert seg.stat().st_size == PREALLOCATE_BYTES
        st.append(ents(4, 2))
        st.sync()
        assert seg.stat().st_size == PREALLOCATE_BYTES
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
            st.append(ents(i, 1, size=big))
        st.sync()
        expect = state(st)
    seg = segments(tmp_path)[0]
    assert seg.stat().st_size == 2 * PREALLOCATE_BYTES
    assert records_end(seg) > PREALLOCATE_BYTES
    with Storage.open(tmp_path) as st:
        assert state(st) == expect


def test_zeros_are_never_written_past_the_segment_size(tmp_path):
    with Storage.open(tmp_path, segment_bytes=300) as st:
        for i in range(1, 20):
            st.append(ents(i, 1))
        st.sync()
    assert len(segments(tmp_path)) > 1
    assert all(p.stat().st_size <= 300 for p in segments(tmp_path))


def test_a_log_written_without_preallocation_is_read_and_appended_to(tmp_path):
    """Segments written before preallocation end at their last record."""
    with Storage.open(tmp_path, segment_bytes=300) as st:
        for i in range(1, 20):
            st.append(ents(i, 1))
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
    assert "followed by a valid record" in str(err.value)
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
