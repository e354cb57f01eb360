"""Opening a data dir (format version, identity, lock, a verified open), append
validation and fsync accounting."""

from pathlib import Path

import pytest

from raftkv.raft.types import Entry, HardState, SnapshotMeta
from raftkv.storage import FORMAT, Storage, StorageError, StorageVersionError
from raftkv.storage.errors import (
    StorageCorruptError,
    StorageIdentityError,
    StorageMissingError,
)
from raftkv.storage.fs import OsFileSystem
from raftkv.storage.record import RecordType, decode_entries, decode_hard_state, read_frame
from raftkv.storage.snapshot import SYNC_EVERY
from raftkv.storage.wal import Identity, SegmentHeader
from tests.unit.wal_files import record_offsets, records_end, segments


def ents(first: int, n: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, data=b"v%d" % i) for i in range(first, first + n)]


def test_new_dir_gets_a_format_file(tmp_path):
    d = tmp_path / "a" / "b"
    Storage.open(d).close()
    assert (d / "FORMAT").read_text().splitlines()[0] == FORMAT == "raftkv-storage 2"


def test_unknown_format_version_is_a_clear_error(tmp_path):
    Storage.open(tmp_path).close()
    (tmp_path / "FORMAT").write_text("raftkv-storage 3\n")
    with pytest.raises(StorageVersionError, match="raftkv-storage 3") as err:
        Storage.open(tmp_path)
    assert isinstance(err.value, StorageError)
    Storage.open(tmp_path / "other").close()  # the failed open released its lock


def test_non_empty_dir_without_format_is_refused(tmp_path):
    (tmp_path / "precious.txt").write_text("not ours")
    with pytest.raises(StorageError, match="not a raftkv data dir"):
        Storage.open(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


def test_a_dir_is_opened_by_one_storage_at_a_time(tmp_path):
    st = Storage.open(tmp_path)
    with pytest.raises(StorageError, match="in use"):
        Storage.open(tmp_path)
    st.close()
    Storage.open(tmp_path).close()


def test_closed_storage_refuses_writes(tmp_path):
    st = Storage.open(tmp_path)
    st.close()
    with pytest.raises(StorageError, match="closed"):
        st.append(ents(1, 1))


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        (ents(3, 1), "gap"),
        ([Entry(1, 1), Entry(1, 3)], "contiguous"),
        ([Entry(1, 0)], "snapshot index"),
    ],
)
def test_invalid_appends_raise_and_write_nothing(tmp_path, batch, match):
    with Storage.open(tmp_path) as st:
        st.append(ents(1, 1), HardState(1, 0, 0))
        st.sync()
        before = st.stats()
        with pytest.raises(ValueError, match=match):
            st.append(batch, HardState(9, 9, 0))
        assert st.stats() == before and st.hard_state == HardState(1, 0, 0)
        assert st.last_index == 1


def test_one_fsync_per_batch_and_none_for_an_empty_one(tmp_path):
    with Storage.open(tmp_path) as st:
        st.append([], HardState(1, 1, 0))
        st.sync()
        base, base_bytes = st.stats()["fsyncs"], st.stats()["bytes_written"]
        base_end = records_end(segments(tmp_path)[0])
        for i in range(1, 100, 10):
            st.append(ents(i, 5))
            st.append(ents(i + 5, 5), HardState(1, 1, i))
        st.sync()
        assert st.stats()["fsyncs"] == base + 1
        st.sync()
        st.append([], None)
        st.sync()
        assert st.stats()["fsyncs"] == base + 1
        stats = st.stats()
        assert stats["records"] == 31 and stats["entries"] == 100
        wal_bytes = records_end(segments(tmp_path)[0]) - base_end
        assert stats["bytes_written"] - base_bytes == wal_bytes


def test_entries_of_a_term_the_hard_state_has_not_reached_are_refused(tmp_path):
    with Storage.open(tmp_path) as st:
        st.append([], HardState(1, 1, 0))
        with pytest.raises(ValueError, match="above the hard state's 1"):
            st.append(ents(1, 1, term=2))
        st.append(ents(1, 1, term=2), HardState(2, 0, 0))  # the term goes with them
        assert st.last_index == 1


def test_a_new_term_goes_before_its_entries_and_the_commit_index_after_them(tmp_path):
    """A power cut keeps a prefix of the records: every prefix must be a valid state."""
    with Storage.open(tmp_path) as st:
        st.append(ents(1, 2), HardState(1, 1, 0))
        st.append(ents(3, 2, term=2), HardState(2, 3, 4))
        st.sync()
    seg = segments(tmp_path)[0]
    buf, crc = seg.read_bytes(), SegmentHeader.decode(seg.read_bytes()).prev_crc
    got = []
    for off in record_offsets(seg):
        rtype, payload, _, crc = read_frame(buf, off, crc)
        got.append(decode_hard_state(payload) if rtype is RecordType.HARD_STATE
                   else [e.index for e in decode_entries(payload)])
    assert got == [HardState(1, 1, 0), [1, 2], HardState(2, 3, 0), [3, 4], HardState(2, 3, 4)]


def test_unchanged_hard_state_is_not_rewritten(tmp_path):
    with Storage.open(tmp_path) as st:
        st.append([], HardState(1, 2, 0))
        st.append([], HardState(1, 2, 0))
        assert st.stats()["records"] == 1


def test_fsync_off_never_syncs(tmp_path):
    with Storage.open(tmp_path, fsync=False, segment_bytes=64) as st:
        for i in range(1, 20):
            st.append(ents(i, 1), HardState(1, 1, 0))
            st.sync()
        assert st.stats()["fsyncs"] == 0
    with Storage.open(tmp_path) as st:
        assert st.last_index == 19


class RecordingFS(OsFileSystem):
    """The real files, with a log of every call that makes or reads them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self._paths: dict[int, str] = {}

    def open(self, path: Path, **kw: bool) -> int:
        fd = super().open(path, **kw)
        self._paths[fd] = Path(path).name
        return fd

    def fsync(self, fd: int) -> None:
        self.calls.append(("fsync", self._paths[fd]))
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self.calls.append(("fsync", self._paths[fd]))
        super().fdatasync(fd)

    def fsync_dir(self, path: Path) -> None:
        self.calls.append(("fsync_dir", Path(path).name))
        super().fsync_dir(path)

    def drop_cache(self, path: Path) -> None:
        self.calls.append(("drop_cache", Path(path).name))
        super().drop_cache(path)

    def read(self, path: Path) -> bytes:
        self.calls.append(("read", Path(path).name))
        return super().read(path)

    def rename(self, src: Path, dst: Path) -> None:
        self.calls.append(("rename", f"{Path(src).name}->{Path(dst).name}"))
        super().rename(src, dst)


def test_open_syncs_and_drops_the_cache_of_every_file_before_reading_it(tmp_path):
    """After kill -9 the page cache still holds writes that were never synced: read as
    they are, they would count as durable (a follower acked them again without a sync)."""
    with Storage.open(tmp_path, segment_bytes=200) as st:
        for i in range(1, 20):
            st.append(ents(i, 1), HardState(1, 1, i - 1))
        st.sync()
    fs = RecordingFS()
    Storage.open(tmp_path, segment_bytes=200, fs=fs).close()
    data_files = [p.name for p in segments(tmp_path)] + ["VOTE"]
    assert len(data_files) > 3
    for name in data_files:
        reads = fs.calls.index(("read", name))
        assert ("fsync", name) in fs.calls[:reads], name
        assert ("drop_cache", name) in fs.calls[:reads], name
    assert fs.calls[-1] == ("fsync_dir", tmp_path.name)


def test_new_parent_dirs_are_synced_into_their_own_parents(tmp_path):
    fs = RecordingFS()
    Storage.open(tmp_path / "a" / "b" / "node1", fs=fs).close()
    synced = [name for call, name in fs.calls if call == "fsync_dir"]
    assert {"b", "a", tmp_path.name} <= set(synced)


def test_a_new_dir_is_made_under_a_temp_name_then_renamed_and_its_parent_synced(tmp_path):
    fs = RecordingFS()
    Storage.open(tmp_path / "node1", fs=fs).close()
    renamed = fs.calls.index(("rename", ".node1.creating->node1"))
    assert ("fsync_dir", tmp_path.name) in fs.calls[renamed:]
    assert not (tmp_path / ".node1.creating").exists()
    assert {"FORMAT", "VOTE"} <= {p.name for p in (tmp_path / "node1").iterdir()}


@pytest.mark.parametrize("empty", [False, True])
def test_a_missing_or_empty_dir_is_refused_unless_creating(tmp_path, empty):
    d = tmp_path / "mnt"
    if empty:
        d.mkdir()
    with pytest.raises(StorageMissingError, match="remove-node") as err:
        Storage.open(d, create=False)
    assert "missing or empty" in str(err.value)
    assert d.exists() == empty  # nothing was made
    Storage.open(d, create=True).close()
    Storage.open(d, create=False).close()


def test_the_dir_records_its_cluster_and_node_and_refuses_others(tmp_path):
    mine = Identity(cluster_id=0xABC, node_id=2)
    Storage.open(tmp_path, identity=mine).close()
    text = (tmp_path / "FORMAT").read_text()
    assert "cluster abc" in text and "node 2" in text
    with pytest.raises(StorageIdentityError, match="belongs to node 2, not node 3"):
        Storage.open(tmp_path, identity=Identity(0xABC, 3))
    with pytest.raises(StorageIdentityError, match="cluster abc, not def"):
        Storage.open(tmp_path, identity=Identity(0xDEF, 2))
    Storage.open(tmp_path, identity=mine).close()
    Storage.open(tmp_path).close()  # no identity given: not checked


def test_an_unrecorded_identity_is_recorded_on_the_next_open(tmp_path):
    Storage.open(tmp_path).close()
    Storage.open(tmp_path, identity=Identity(7, 1)).close()
    with pytest.raises(StorageIdentityError):
        Storage.open(tmp_path, identity=Identity(7, 9))


def test_segment_headers_carry_the_identity(tmp_path):
    Storage.open(tmp_path / "a", identity=Identity(5, 1)).close()
    Storage.open(tmp_path / "b", identity=Identity(5, 2)).close()
    seg = segments(tmp_path / "a")[0]
    (tmp_path / "b" / seg.name).write_bytes(seg.read_bytes())  # a segment from node 1
    with pytest.raises(StorageError, match="belongs to node 1"):
        Storage.open(tmp_path / "b", identity=Identity(5, 2))


class FailingSyncFS(OsFileSystem):
    def fsync(self, fd: int) -> None:
        raise OSError(5, "Input/output error")


def test_a_disk_error_at_open_is_a_storage_error_that_changes_nothing(tmp_path):
    with Storage.open(tmp_path) as st:
        st.append(ents(1, 3), HardState(1, 1, 0))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(StorageError, match="restart once the disk is repaired") as err:
        Storage.open(tmp_path, fs=FailingSyncFS())
    assert "corrupt" not in str(err.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    with Storage.open(tmp_path) as st:  # the lock was released
        assert st.last_index == 3


def test_the_snapshot_is_checked_a_range_at_a_time_and_read_only_when_restored(tmp_path):
    """At 10 million keys a restart read the 1.2 GB snapshot whole into memory to check
    it, and kept it there even when the state went on without it (--state lmdb after
    kill -9). Open now checks it in ranges after syncing it and dropping its cache; its
    bytes are read only for a restore, and handed over as a file on a real disk."""
    data = bytes(range(256)) * 40
    with Storage.open(tmp_path) as st:
        for i in range(1, 10):
            st.append(ents(i, 1), HardState(1, 1, i - 1))
        st.sync()
        st.save_snapshot(SnapshotMeta(8, 1, (1,)), data)
    fs = RangeRecordingFS()
    name = "snap-00000000000000000008.snap"
    with Storage.open(tmp_path, fs=fs) as st:
        assert ("read", name) not in fs.calls
        ranges = [n for call, n in fs.calls if call == "read_range " + name]
        assert sum(ranges) >= len(data) and max(ranges) <= SYNC_EVERY
        first = fs.calls.index(("read_range " + name, 24))
        assert {("fsync", name), ("drop_cache", name)} <= set(fs.calls[:first])
        assert st.load_snapshot_data() == data
        assert st.snapshot_data() == data  # not the OS's file system: the bytes
    with Storage.open(tmp_path) as st:
        restore = st.snapshot_data()
        assert restore == tmp_path / "snap-restore.tmp" and restore.read_bytes() == data
        restore.unlink()


@pytest.mark.parametrize("damage", ["short", "longer", "flipped"])
def test_a_snapshot_checked_in_ranges_is_corruption_when_damaged(tmp_path, damage):
    with Storage.open(tmp_path) as st:
        for i in range(1, 10):
            st.append(ents(i, 1), HardState(1, 1, i - 1))
        st.sync()
        st.save_snapshot(SnapshotMeta(8, 1, (1,)), b"x" * 5000)
    path = tmp_path / "snap-00000000000000000008.snap"
    buf = bytearray(path.read_bytes())
    if damage == "short":
        del buf[-10:]
    elif damage == "longer":
        buf += b"!"
    else:
        buf[3000] ^= 1
    path.write_bytes(bytes(buf))
    with pytest.raises(StorageCorruptError, match="header says|CRC mismatch") as e:
        Storage.open(tmp_path)
    assert path.name in str(e.value)


class RangeRecordingFS(RecordingFS):
    def read_range(self, path: Path, offset: int, size: int) -> bytes:
        data = super().read_range(path, offset, size)
        self.calls.append(("read_range " + Path(path).name, len(data)))
        return data
