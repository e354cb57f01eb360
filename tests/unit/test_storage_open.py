"""Opening a data dir (format version, lock), append validation and fsync accounting."""

import pytest

from raftkv.raft.types import Entry, HardState
from raftkv.storage import FORMAT, Storage, StorageError, StorageVersionError
from tests.unit.wal_files import records_end, segments


def ents(first: int, n: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, data=b"v%d" % i) for i in range(first, first + n)]


def test_new_dir_gets_a_format_file(tmp_path):
    d = tmp_path / "a" / "b"
    Storage.open(d).close()
    assert (d / "FORMAT").read_text().strip() == FORMAT == "raftkv-storage 1"


def test_unknown_format_version_is_a_clear_error(tmp_path):
    Storage.open(tmp_path).close()
    (tmp_path / "FORMAT").write_text("raftkv-storage 2\n")
    with pytest.raises(StorageVersionError, match="raftkv-storage 2") as err:
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
        st.append(ents(1, 1))
        st.sync()
        before = st.stats()
        with pytest.raises(ValueError, match=match):
            st.append(batch, HardState(9, 9, 0))
        assert st.stats() == before and st.hard_state == HardState()
        assert st.last_index == 1


def test_one_fsync_per_batch_and_none_for_an_empty_one(tmp_path):
    with Storage.open(tmp_path) as st:
        base, base_bytes = st.stats()["fsyncs"], st.stats()["bytes_written"]
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
        assert stats["records"] == 30 and stats["entries"] == 100
        wal_bytes = sum(records_end(p) for p in segments(tmp_path))
        assert stats["bytes_written"] - base_bytes == wal_bytes


def test_unchanged_hard_state_is_not_rewritten(tmp_path):
    with Storage.open(tmp_path) as st:
        st.append([], HardState(1, 2, 0))
        st.append([], HardState(1, 2, 0))
        assert st.stats()["records"] == 1


def test_fsync_off_never_syncs(tmp_path):
    with Storage.open(tmp_path, fsync=False, segment_bytes=64) as st:
        for i in range(1, 20):
            st.append(ents(i, 1))
            st.sync()
        assert st.stats()["fsyncs"] == 0
    with Storage.open(tmp_path) as st:
        assert st.last_index == 19
