"""Snapshots: atomic files, compaction of the WAL, retention, installed snapshots and
recovery of a save interrupted between the snapshot file and its WAL marker."""

import logging
import struct
import zlib
from pathlib import Path

import msgpack
import pytest

from raftkv.raft.types import Entry, HardState, SnapshotMeta
from raftkv.storage import Storage, StorageCorruptError
from raftkv.storage.disk import Disk
from raftkv.storage.record import entries_record, frame
from raftkv.storage.snapshot import MAGIC, crc32_combine, write_snapshot, write_snapshot_temp
from tests.unit.wal_files import segments


def ents(first: int, n: int, term: int = 1, size: int = 30) -> list[Entry]:
    return [Entry(term, i, data=bytes([i % 256]) * size) for i in range(first, first + n)]


def snapshots(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("snap-*.snap"))


def index_terms(st: Storage) -> list[tuple[int, int]]:
    return [(e.index, e.term) for e in st.entries_after_snapshot()]


def fill(path: Path, n: int, term: int = 1) -> None:
    with Storage.open(path, segment_bytes=300) as st:
        for i in range(1, n + 1):
            st.append(ents(i, 1, term), HardState(term, 1, i - 1))
            st.sync()


def test_snapshot_round_trips_meta_data_and_following_entries(tmp_path):
    fill(tmp_path, 30)
    meta = SnapshotMeta(index=20, term=1, voters=(1, 2, 3), learners=(4,))
    with Storage.open(tmp_path, segment_bytes=300) as st:
        st.save_snapshot(meta, b"state machine bytes")
        assert st.snapshot == meta and st.first_index == 21
        assert index_terms(st) == [(i, 1) for i in range(21, 31)]
    with Storage.open(tmp_path) as st:
        assert st.snapshot == meta
        assert st.load_snapshot_data() == b"state machine bytes"
        assert index_terms(st) == [(i, 1) for i in range(21, 31)]
        assert st.hard_state == HardState(1, 1, 29)
        with pytest.raises(ValueError):
            st.entries(20, 22)


def test_compaction_deletes_wholly_covered_segments_and_keeps_the_first_needed_one(tmp_path):
    fill(tmp_path, 40)
    before = segments(tmp_path)
    with Storage.open(tmp_path, segment_bytes=300) as st:
        st.save_snapshot(SnapshotMeta(25, 1, (1,)), b"s")
        after = segments(tmp_path)
        kept_entries = index_terms(st)
    assert len(after) < len(before)
    # The oldest surviving segment holds entry 26; the one before it did not.
    with Storage.open(tmp_path) as st:
        assert index_terms(st) == kept_entries == [(i, 1) for i in range(26, 41)]
    assert b"\x1a" * 30 in after[0].read_bytes()  # entry 26's data
    deleted = sorted(set(before) - set(after))
    assert deleted == before[: len(deleted)]


def test_only_the_newest_two_snapshots_are_kept(tmp_path):
    fill(tmp_path, 40)
    with Storage.open(tmp_path, segment_bytes=300) as st:
        for idx in (10, 20, 30, 35):
            st.save_snapshot(SnapshotMeta(idx, 1, (1,)), b"at %d" % idx)
    assert snapshots(tmp_path) == [
        "snap-00000000000000000030.snap",
        "snap-00000000000000000035.snap",
    ]
    with Storage.open(tmp_path) as st:
        assert st.snapshot.index == 35 and st.load_snapshot_data() == b"at 35"
        assert index_terms(st) == [(i, 1) for i in range(36, 41)]


def test_hard_state_survives_compaction_of_the_segment_that_recorded_it(tmp_path):
    with Storage.open(tmp_path, segment_bytes=200) as st:
        st.append([], HardState(4, 2, 0))  # only ever written here, in segment 1
        for i in range(1, 30):
            st.append(ents(i, 1))
        st.sync()
        st.save_snapshot(SnapshotMeta(29, 1, (1,)), b"s")
    assert not (tmp_path / "wal-0000000001.log").exists()
    with Storage.open(tmp_path) as st:
        assert st.hard_state == HardState(4, 2, 0)


def test_installed_snapshot_with_a_different_term_drops_the_conflicting_suffix(tmp_path):
    fill(tmp_path, 20, term=1)
    with Storage.open(tmp_path) as st:
        st.save_snapshot(SnapshotMeta(15, 2, (1, 2, 3)), b"leader's state", HardState(2, 0, 15))
        assert index_terms(st) == [] and st.last_index == 15
        st.append(ents(16, 2, term=2))
        st.sync()
    with Storage.open(tmp_path) as st:
        assert st.snapshot.term == 2
        assert index_terms(st) == [(16, 2), (17, 2)]


def test_installed_snapshot_beyond_the_last_entry(tmp_path):
    fill(tmp_path, 5)
    with Storage.open(tmp_path) as st:
        st.save_snapshot(SnapshotMeta(100, 3, (1, 2)), b"far ahead", HardState(3, 0, 100))
        with pytest.raises(ValueError, match="gap"):
            st.append(ents(102, 1))
        st.append(ents(101, 1, term=3))
        st.sync()
    with Storage.open(tmp_path) as st:
        assert (st.first_index, st.last_index) == (101, 101)
        assert index_terms(st) == [(101, 3)]


def test_stale_snapshot_is_refused(tmp_path):
    fill(tmp_path, 10)
    with Storage.open(tmp_path) as st:
        st.save_snapshot(SnapshotMeta(8, 1, (1,)), b"s")
        for idx in (8, 5):
            with pytest.raises(ValueError, match="not newer"):
                st.save_snapshot(SnapshotMeta(idx, 1, (1,)), b"old")
        with pytest.raises(ValueError, match="snapshot index"):
            st.append(ents(8, 3, term=2))


@pytest.mark.parametrize(("term", "kept"), [(1, [(i, 1) for i in range(13, 21)]), (2, [])])
def test_save_interrupted_after_the_snapshot_file_is_completed_on_open(
    tmp_path, caplog, term, kept
):
    fill(tmp_path, 20, term=1)
    hs = HardState(term, 1, 19 if term == 1 else 12)
    with Storage.open(tmp_path) as st:  # the snapshot's term is durable before its file
        st.append([], hs)
    # A crash after the rename, before the WAL marker: only the file exists.
    write_snapshot(tmp_path, SnapshotMeta(12, term, (1,)), b"s", Disk())
    with caplog.at_level(logging.WARNING, logger="raftkv.storage"), Storage.open(tmp_path) as st:
        assert (st.snapshot.index, st.snapshot.term) == (12, term)
        assert index_terms(st) == kept
    assert "interrupted save" in caplog.text
    with Storage.open(tmp_path) as st:  # the marker is in the WAL now
        assert index_terms(st) == kept and st.hard_state == hs


def test_a_snapshot_written_aside_is_adopted_with_the_log_after_it_kept(tmp_path):
    """The node's snapshot is written by a forked child (write_snapshot_file), then
    adopted by the loop; until then nothing of the storage changed."""
    fill(tmp_path, 30)
    meta = SnapshotMeta(20, 1, (1,))
    with Storage.open(tmp_path, segment_bytes=300) as st:
        st.write_snapshot_file(meta, b"state at 20")
        assert st.snapshot is None and st.first_index == 1
        assert snapshots(tmp_path) == []
        assert st.adopt_snapshot(meta)
        assert st.snapshot == meta and st.first_index == 21
    assert not list(tmp_path.glob("*.tmp"))
    with Storage.open(tmp_path) as st:
        assert st.snapshot == meta and st.load_snapshot_data() == b"state at 20"
        assert index_terms(st) == [(i, 1) for i in range(21, 31)]


def test_a_snapshot_written_aside_loses_to_the_leaders_installed_meanwhile(tmp_path):
    fill(tmp_path, 30)
    mine, leaders = SnapshotMeta(20, 1, (1,)), SnapshotMeta(40, 2, (1,))
    with Storage.open(tmp_path) as st:
        st.write_snapshot_file(mine, b"mine")
        st.save_snapshot(leaders, b"the leader's")
        assert not st.adopt_snapshot(mine)
        assert st.snapshot == leaders
    assert not list(tmp_path.glob("*.tmp"))
    assert snapshots(tmp_path) == ["snap-00000000000000000040.snap"]


def test_a_snapshot_of_another_log_is_refused(tmp_path):
    fill(tmp_path, 30)
    with Storage.open(tmp_path) as st:
        st.write_snapshot_file(SnapshotMeta(20, 7, (1,)), b"x")
        with pytest.raises(ValueError, match="not of this log"):
            st.adopt_snapshot(SnapshotMeta(20, 7, (1,)))
        assert st.snapshot is None and st.first_index == 1


def test_leftover_temp_files_are_removed(tmp_path):
    fill(tmp_path, 3)
    (tmp_path / "snap-00000000000000000002.snap.tmp").write_bytes(b"half a snapsh")
    with Storage.open(tmp_path) as st:
        assert st.snapshot is None
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("offset", [3, 30, -5])  # magic, meta, data
def test_bit_flip_in_a_snapshot_is_corruption_naming_the_file(tmp_path, offset):
    fill(tmp_path, 10)
    with Storage.open(tmp_path) as st:
        st.save_snapshot(SnapshotMeta(9, 1, (1, 2, 3)), b"x" * 100)
    path = tmp_path / snapshots(tmp_path)[-1]
    buf = bytearray(path.read_bytes())
    buf[offset] ^= 0x10
    path.write_bytes(bytes(buf))
    with pytest.raises(StorageCorruptError) as err:
        Storage.open(tmp_path)
    assert err.value.path == path
    assert str(path) in str(err.value) and "offset" in str(err.value)


def test_snapshot_file_missing_while_the_wal_records_it_is_corruption(tmp_path):
    fill(tmp_path, 10)
    with Storage.open(tmp_path) as st:
        st.save_snapshot(SnapshotMeta(5, 1, (1,)), b"s5")
        st.save_snapshot(SnapshotMeta(9, 1, (1,)), b"s9")
    (tmp_path / snapshots(tmp_path)[-1]).unlink()
    with pytest.raises(StorageCorruptError, match="file is gone"):
        Storage.open(tmp_path)


def test_missing_first_needed_segment_after_compaction_is_corruption(tmp_path):
    fill(tmp_path, 40)
    with Storage.open(tmp_path, segment_bytes=300) as st:
        st.save_snapshot(SnapshotMeta(20, 1, (1,)), b"s")
    segs = segments(tmp_path)
    assert len(segs) >= 2
    segs[0].unlink()
    with pytest.raises(StorageCorruptError, match="segment missing") as err:
        Storage.open(tmp_path)
    assert err.value.path == segs[0]


def test_replay_starting_at_an_old_marker_does_not_assume_the_log_resumes_after_it(tmp_path):
    # Segment 2 opens with the marker of snapshot 5; entries 6..10 sat in segment 1,
    # which snapshot 15 then deleted. Replay from segment 2 must not see a gap at 11.
    batch = ents(1, 10)
    seg_bytes = 64 + len(frame(*entries_record(batch), 0)[0]) + 20  # too full for the marker
    with Storage.open(tmp_path, segment_bytes=seg_bytes) as st:
        st.append(batch, HardState(1, 1, 0))
        st.save_snapshot(SnapshotMeta(5, 1, (1,)), b"s5")
        for i in range(11, 21):
            st.append(ents(i, 1))
        st.sync()
        st.save_snapshot(SnapshotMeta(15, 1, (1,)), b"s15")
    assert segments(tmp_path)[0].name == "wal-0000000002.log"
    with Storage.open(tmp_path) as st:
        assert index_terms(st) == [(i, 1) for i in range(16, 21)]


def test_files_whose_deletion_never_ran_are_tolerated_on_open(tmp_path):
    """The node deletes compacted segments and old snapshots on a thread: a crash before
    it ran leaves them all, which an open must take as a crash midway would."""
    with Storage.open(tmp_path, segment_bytes=300) as st:
        st.discard_with(lambda paths, directory: None)  # a deleter that never ran
        for i in range(1, 61):
            st.append(ents(i, 1), HardState(1, 1, i - 1))
            st.sync()
            if i % 20 == 0:
                st.save_snapshot(SnapshotMeta(i - 5, 1, (1,)), b"state %d" % i)
    assert len(snapshots(tmp_path)) == 3 and len(segments(tmp_path)) > 6
    with Storage.open(tmp_path) as st:
        assert st.snapshot.index == 55 and st.load_snapshot_data() == b"state 60"
        assert index_terms(st) == [(i, 1) for i in range(56, 61)]


def test_a_large_file_is_synced_as_it_is_written(tmp_path):
    disk = Disk()
    tmp = disk.write_temp(tmp_path / "f", [b"h", b"x" * 10_000], sync_every=4096)
    assert tmp.read_bytes() == b"h" + b"x" * 10_000
    assert disk.fsyncs == 3  # two full 4 KiB pieces of the data, then the whole file


def test_a_snapshot_is_read_in_ranges_with_the_crc_its_file_keeps(tmp_path):
    fill(tmp_path, 30)
    meta = SnapshotMeta(20, 1, (1, 2, 3))
    data = bytes(range(256)) * 100
    with Storage.open(tmp_path) as st:
        st.save_snapshot(meta, data)
        source = st.snapshot_source(meta)
        assert (source.size, source.checksum) == (len(data), zlib.crc32(data))
        assert b"".join(source.read(i, 1000) for i in range(0, len(data), 1000)) == data
        with pytest.raises(ValueError, match="newest is"):
            st.snapshot_source(SnapshotMeta(19, 1, (1, 2, 3)))


def test_a_snapshot_file_from_before_the_data_crc_is_streamed_too(tmp_path):
    """Format of earlier sessions: a 4-element meta; the data's crc is computed once."""
    fill(tmp_path, 30)
    meta, data = SnapshotMeta(20, 1, (1,)), b"old state" * 50
    body = msgpack.packb([20, 1, [1], []])
    header = struct.pack("<8sIQI", MAGIC, len(body), len(data), zlib.crc32(data, zlib.crc32(body)))
    (tmp_path / "snap-00000000000000000020.snap").write_bytes(header + body + data)
    with Storage.open(tmp_path) as st:
        assert st.snapshot == meta and st.load_snapshot_data() == data
        source = st.snapshot_source(meta)
        assert source.checksum == zlib.crc32(data) and source.read(0, 10**6) == data


@pytest.mark.parametrize("seed", range(20))
def test_crc32_combine_is_the_crc_of_the_concatenation(seed):
    rng = __import__("random").Random(seed)
    a = rng.randbytes(rng.randrange(0, 300))
    b = rng.randbytes(rng.choice([0, 1, 7, rng.randrange(1, 5000)]))
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_a_snapshot_file_is_written_in_one_pass_with_its_header_last(tmp_path):
    """The data is read once (summed as it is written) and the header is filled in
    after it; the file is the documented layout, whatever the crc's value."""
    meta = SnapshotMeta(7, 2, (1, 2), (3,))
    for data in (b"", b"x", bytes(range(256)) * 40):
        disk = Disk()
        tmp = write_snapshot_temp(tmp_path, meta, data, disk)
        buf = tmp.read_bytes()
        magic, meta_len, data_len, crc = struct.unpack_from("<8sIQI", buf)
        body = buf[24:24 + meta_len]
        assert (magic, data_len, buf[24 + meta_len:]) == (MAGIC, len(data), data)
        assert crc == zlib.crc32(data, zlib.crc32(body))
        assert msgpack.unpackb(body) == [7, 2, [1, 2], [3], zlib.crc32(data)]
        assert disk.bytes_written == len(buf)  # every byte written once
        tmp.unlink()
