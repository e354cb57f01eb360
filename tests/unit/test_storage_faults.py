"""Disk errors under storage, injected by the PowerLossFS model (tests/powerloss.py).

The rules tested (storage.py, after "fsyncgate" and Rebello et al., "Can Applications
Recover from fsync Failures?", ATC '20):

- After an OSError from the disk (a failed fdatasync/fsync, ENOSPC or EIO on a write)
  the Storage raises StorageError and refuses every further call but `close`: a failed
  fsync must never be retried and trusted, since Linux has marked the unwritten pages
  clean and a second fsync "succeeds" without writing them.
- A reopen in the same boot (no power cut: the page cache still holds the pages the
  disk never got) recovers only what is on the disk, because the verified open syncs
  and then drops the cache before it reads. Without the drop the lost records would be
  read back from the cache as if they were durable:
  `test_without_drop_cache_the_lost_records_come_back` shows the check has teeth.
- After ENOSPC a reopen recovers the synced state.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from raftkv.raft.types import Entry, HardState, SnapshotMeta
from raftkv.storage import Storage, StorageError
from tests.powerloss import PowerLossFS

DATA = Path("/node/data")
SEGMENT_BYTES = 4096


pytestmark = pytest.mark.usefixtures("quiet_storage_log")


def ents(first: int, n: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, data=b"entry %d " % i * 8) for i in range(first, first + n)]


def state(st: Storage) -> tuple:
    return st.hard_state, st.snapshot, [(e.index, e.term, e.data)
                                        for e in st.entries_after_snapshot()]


def open_(fs: PowerLossFS) -> Storage:
    return Storage.open(DATA, segment_bytes=SEGMENT_BYTES, fs=fs)


@pytest.fixture
def fs() -> PowerLossFS:
    disk = PowerLossFS()
    disk.makedirs(DATA.parent)
    disk.sync_all()
    return disk


def synced_storage(fs: PowerLossFS) -> tuple[Storage, tuple]:
    """A storage holding some synced entries (and a synced snapshot), and its state."""
    st = open_(fs)
    st.append(ents(1, 10), HardState(1, 1, 6))
    st.sync()
    st.save_snapshot(SnapshotMeta(5, 1, (1, 2, 3)), b"state at 5")
    st.append(ents(11, 3), HardState(1, 1, 8))
    st.sync()
    return st, state(st)


def refuses_everything(st: Storage) -> None:
    calls: list[Callable[[], object]] = [
        lambda: st.append(ents(st.last_index + 1, 1)),
        lambda: st.append([], HardState(9, 9, 0)),
        st.sync,
        lambda: st.save_snapshot(SnapshotMeta(st.last_index, 1, (1,)), b"s"),
    ]
    for call in calls:
        with pytest.raises(StorageError, match="failed earlier"):
            call()
    st.close()  # releases the dir without syncing


def fail_a_sync(fs: PowerLossFS, op: str, err: int) -> tuple:
    """Append unsynced records, make the sync fail with `err` at `op`; returns the synced
    state from before."""
    st, synced = synced_storage(fs)
    st.append(ents(14, 5), HardState(1, 1, 12))
    fs.fail_next(op, err, path_suffix=".log")
    with pytest.raises(StorageError, match="sync failed"):
        st.sync()
    refuses_everything(st)
    return synced


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC])
def test_a_failed_sync_fails_the_storage_for_good(fs, err):
    fail_a_sync(fs, "fdatasync", err)


def test_a_reopen_in_the_same_boot_does_not_return_records_a_failed_sync_lost(fs):
    synced = fail_a_sync(fs, "fdatasync", errno.EIO)
    segs = [n for n in fs.listdir(DATA) if n.startswith("wal-") and n.endswith(".log")]
    assert any(b"entry 16 " in fs.read(DATA / n) for n in segs), (
        "the page cache no longer serves the lost records: the test would prove nothing")
    with open_(fs) as st:
        assert state(st) == synced
    with open_(fs.crash(random.Random(0))) as st:
        assert state(st) == synced


def test_without_drop_cache_the_lost_records_come_back(fs, monkeypatch):
    synced = fail_a_sync(fs, "fdatasync", errno.EIO)
    monkeypatch.setattr(fs, "drop_cache", lambda path: None)
    with open_(fs) as st:
        got = state(st)
    assert got != synced
    assert [e[0] for e in got[2]][-5:] == [14, 15, 16, 17, 18]


def test_a_failed_sync_of_the_vote_file_fails_the_storage(fs):
    st, synced = synced_storage(fs)
    st.append([], HardState(2, 3, 8))
    fs.fail_next("fdatasync", errno.EIO, path_suffix="/VOTE")
    with pytest.raises(StorageError, match="sync failed"):
        st.sync()
    refuses_everything(st)
    with open_(fs) as st:
        # The WAL's copy was synced before the VOTE file's sync failed.
        assert state(st) == (HardState(2, 3, 8), *synced[1:])


def test_enospc_on_an_append_fails_the_storage_and_a_reopen_recovers_the_synced_state(fs):
    st, synced = synced_storage(fs)
    fs.fail_next("pwrite", errno.ENOSPC, path_suffix=".log")
    with pytest.raises(StorageError, match="No space left"):
        st.append(ents(14, 3, term=2), HardState(2, 2, 8))
    refuses_everything(st)
    with open_(fs) as st:
        assert state(st) == synced
    with open_(fs.crash(random.Random(1))) as st:
        assert state(st) == synced


def test_enospc_on_the_vote_file_fails_the_storage(fs):
    """The WAL took the append before the VOTE file's write failed; those records are in
    the page cache, not lost, so a reopen may keep them (its verified open syncs them)."""
    st, synced = synced_storage(fs)
    fs.fail_next("pwrite", errno.ENOSPC, path_suffix="/VOTE")
    with pytest.raises(StorageError, match="No space left"):
        st.append(ents(14, 3, term=2), HardState(2, 2, 8))
    appended = (HardState(2, 2, 8), synced[1], synced[2] + [(e.index, e.term, e.data)
                                                          for e in ents(14, 3, term=2)])
    refuses_everything(st)
    with open_(fs.crash(random.Random(1))) as st:
        assert state(st)[1:] in (synced[1:], appended[1:])
        assert st.hard_state in (synced[0], appended[0])
    with open_(fs) as st:
        assert state(st) == appended


def test_enospc_while_rotating_fails_the_storage_and_a_reopen_recovers(fs):
    st, synced = synced_storage(fs)
    fs.fail_next("pwrite", errno.ENOSPC, path_suffix=".log.tmp")
    with pytest.raises(StorageError):
        for i in range(14, 200):
            st.append(ents(i, 1))
    refuses_everything(st)
    with open_(fs) as st:
        assert state(st)[2][: len(synced[2])] == synced[2]


@pytest.mark.parametrize("op", ["pwrite", "fsync"])
def test_a_failed_snapshot_write_fails_the_storage_and_a_reopen_recovers(fs, op):
    st, synced = synced_storage(fs)
    fs.fail_next(op, errno.ENOSPC if op == "pwrite" else errno.EIO, path_suffix=".snap.tmp")
    with pytest.raises(StorageError, match="writing snapshot failed"):
        st.save_snapshot(SnapshotMeta(8, 1, (1, 2, 3)), b"state at 8")
    refuses_everything(st)
    with open_(fs) as st:
        assert state(st) == synced
    assert not [n for n in fs.listdir(DATA) if n.endswith(".tmp")]


def test_a_failed_directory_sync_fails_the_storage(fs):
    st, synced = synced_storage(fs)
    fs.fail_next("fsync_dir", errno.EIO)
    with pytest.raises(StorageError):
        st.save_snapshot(SnapshotMeta(8, 1, (1, 2, 3)), b"state at 8")
    refuses_everything(st)
    with open_(fs.crash(random.Random(2))) as st:
        assert state(st) == synced or st.snapshot.index == 8


def test_a_failed_sync_at_close_is_a_storage_error(fs):
    st, _ = synced_storage(fs)
    st.append(ents(14, 1))
    fs.fail_next("fdatasync", errno.EIO)
    with pytest.raises(StorageError):
        st.close()
    with open_(fs) as st2:  # the lock was released
        assert st2.last_index == 13
