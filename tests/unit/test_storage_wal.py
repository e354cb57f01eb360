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
from raftkv.storage.record import read_frame


def ents(first: int, n: int, term: int = 1, size: int = 10) -> list[Entry]:
    return [
        Entry(term, i, EntryType.NORMAL, bytes([i % 256]) * size) for i in range(first, first + n)
    ]


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("wal-*.log"))


def record_offsets(seg: Path) -> list[int]:
    buf, off, out = seg.read_bytes(), 0, []
    while off < len(buf):
        out.append(off)
        off = read_frame(buf, off)[2]
    return out


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
        start = seg.stat().st_size
        if last == "entries":
            st.append(ents(12, 3, size=20))
        else:
            st.append([], HardState(2, 3, 10))
        st.sync()
        after = state(st)
    assert segments(tmp_path)[-1] == seg and len(segments(tmp_path)) >= 3
    return before, after, seg, start, seg.stat().st_size


@pytest.mark.parametrize("last", ["entries", "hard_state"])
def test_torn_last_record_is_dropped_at_every_cut_and_the_log_stays_writable(
    tmp_path, caplog, last
):
    pristine = tmp_path / "pristine"
    before, after, seg, start, end = _last_append_bounds(pristine, last)
    assert end - start > 10
    for cut in range(start, end + 1):
        d = tmp_path / f"cut{cut}"
        shutil.copytree(pristine, d)
        os.truncate(d / seg.name, cut)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="raftkv.storage"), Storage.open(d) as st:
            assert state(st) == (after if cut == end else before), f"cut at {cut}"
            torn_logged = any("torn tail" in r.getMessage() for r in caplog.records)
            assert torn_logged == (start < cut < end), f"cut at {cut}"
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


def test_zero_filled_tail_is_a_torn_tail(tmp_path):
    before, after, seg, _, end = _last_append_bounds(tmp_path, "entries")
    with open(seg, "ab") as f:
        f.write(bytes(4096))
    with Storage.open(tmp_path) as st:
        assert state(st) == after
    assert seg.stat().st_size == end


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
