"""The PowerLossFS disk model (tests/powerloss.py) keeps its own rules."""

from __future__ import annotations

import errno
import random
from pathlib import Path

import pytest

from tests.powerloss import SECTOR, PowerCut, PowerLossFS

D = Path("/d")


def fresh() -> PowerLossFS:
    fs = PowerLossFS()
    fs.makedirs(D)
    fs.sync_all()
    return fs


def crashes(fs: PowerLossFS, n: int = 200) -> list[PowerLossFS]:
    return [fs.crash(random.Random(k)) for k in range(n)]


def write_file(fs: PowerLossFS, name: str, data: bytes, *, sync: bool = True) -> int:
    fd = fs.open(D / name, create=True)
    fs.pwrite(fd, data, 0)
    if sync:
        fs.fdatasync(fd)
        fs.fsync_dir(D)
    return fd


def test_synced_data_and_names_always_survive():
    fs = fresh()
    write_file(fs, "a", b"x" * 3000)
    for c in crashes(fs):
        assert c.listdir(D) == ["a"]
        assert c.read(D / "a") == b"x" * 3000


def test_an_unsynced_create_may_vanish_and_a_synced_file_under_it_with_it():
    fs = fresh()
    fd = fs.open(D / "a", create=True)
    fs.pwrite(fd, b"data", 0)
    fs.fdatasync(fd)
    seen = {tuple(c.listdir(D)) for c in crashes(fs)}
    assert seen == {(), ("a",)}


def test_an_unsynced_rename_may_vanish_but_is_atomic():
    fs = fresh()
    write_file(fs, "a.tmp", b"new")
    write_file(fs, "a", b"old")
    fs.rename(D / "a.tmp", D / "a")
    seen = {(tuple(sorted(c.listdir(D))), c.read(D / "a")) for c in crashes(fs)}
    assert seen == {(("a", "a.tmp"), b"old"), (("a",), b"new")}
    fs.fsync_dir(D)
    assert {(tuple(c.listdir(D)), c.read(D / "a")) for c in crashes(fs)} == {(("a",), b"new")}


def test_a_crash_keeps_a_prefix_of_a_directorys_changes():
    fs = fresh()
    for name in "abcde":
        fs.close(fs.open(D / name, create=True))
    seen = {tuple(c.listdir(D)) for c in crashes(fs)}
    assert seen == {tuple("abcde"[:k]) for k in range(6)}


def test_unsynced_sectors_are_any_of_their_versions_and_never_mixed():
    fs = fresh()
    fd = write_file(fs, "f", bytes(2 * SECTOR))
    fs.pwrite(fd, b"A" * (2 * SECTOR), 0)
    fs.pwrite(fd, b"B" * SECTOR, SECTOR)
    seen = set()
    for c in crashes(fs):
        data = c.read(D / "f")
        assert len(data) == 2 * SECTOR
        sectors = (data[:SECTOR], data[SECTOR:])
        assert all(len(set(s)) == 1 for s in sectors), "a sector mixes two versions"
        seen.add(tuple(s[:1] for s in sectors))
    assert seen == {(a, b) for a in (b"\0", b"A") for b in (b"\0", b"A", b"B")}


def test_an_unsynced_size_is_any_size_since_the_last_sync():
    fs = fresh()
    fd = write_file(fs, "f", b"a" * 100)
    fs.pwrite(fd, b"b" * 600, 100)
    fs.ftruncate(fd, 50)
    sizes = {len(c.read(D / "f")) for c in crashes(fs)}
    assert sizes == {100, 700, 50}
    fs.fdatasync(fd)
    assert {c.read(D / "f") for c in crashes(fs)} == {b"a" * 50}


def test_extending_a_file_leaves_zeros_or_the_data():
    fs = fresh()
    fd = write_file(fs, "f", b"")
    fs.pwrite(fd, b"z" * 10, 1000)
    seen = {c.read(D / "f") for c in crashes(fs)}
    assert seen <= {b"", bytes(1010), bytes(1000) + b"z" * 10}
    assert bytes(1000) + b"z" * 10 in seen and b"" in seen


def test_a_failed_fsync_loses_the_writes_on_disk_but_the_cache_serves_them_until_dropped():
    fs = fresh()
    fd = write_file(fs, "f", b"old" * 200)
    fs.pwrite(fd, b"new", 0)
    fs.fail_next("fdatasync", errno.EIO)
    with pytest.raises(OSError) as err:
        fs.fdatasync(fd)
    assert err.value.errno == errno.EIO
    assert fs.read(D / "f")[:3] == b"new"
    fs.fdatasync(fd)  # errseq: reported once, then a sync "succeeds"
    assert fs.read(D / "f")[:3] == b"new"
    assert {c.read(D / "f")[:3] for c in crashes(fs)} == {b"old"}
    fs.drop_cache(D / "f")
    assert fs.read(D / "f")[:3] == b"old"


def test_a_failed_fsync_of_an_extension_loses_the_size_too():
    fs = fresh()
    fd = write_file(fs, "f", b"a" * 10)
    fs.pwrite(fd, b"b" * 10, 10)
    fs.fail_next("fsync", errno.EIO, path_suffix="/f")
    with pytest.raises(OSError):
        fs.fsync(fd)
    assert fs.read(D / "f") == b"a" * 10 + b"b" * 10
    fs.drop_cache(D / "f")
    assert fs.read(D / "f") == b"a" * 10


def test_rewriting_a_lost_sector_writes_the_whole_cached_sector():
    fs = fresh()
    fd = write_file(fs, "f", bytes(SECTOR))
    fs.pwrite(fd, b"L", 0)
    fs.fail_next("fdatasync")
    with pytest.raises(OSError):
        fs.fdatasync(fd)
    fs.pwrite(fd, b"N", 1)
    fs.fdatasync(fd)
    fs.drop_cache(D / "f")
    assert fs.read(D / "f")[:3] == b"LN\0"


def test_enospc_on_pwrite_writes_nothing():
    fs = fresh()
    fd = write_file(fs, "f", b"abc")
    fs.fail_next("pwrite", errno.ENOSPC)
    with pytest.raises(OSError) as err:
        fs.pwrite(fd, b"xyz", 3)
    assert err.value.errno == errno.ENOSPC
    assert fs.read(D / "f") == b"abc"
    assert fs.pwrite(fd, b"xyz", 3) == 3


def test_faults_match_the_path_suffix():
    fs = fresh()
    a = write_file(fs, "a", b"1")
    b = write_file(fs, "b", b"1")
    fs.fail_next("fdatasync", errno.EIO, path_suffix="/b")
    fs.fdatasync(a)
    with pytest.raises(OSError):
        fs.fdatasync(b)


def test_a_cut_stops_every_operation_and_crash_gives_the_state_it_left():
    fs = fresh()
    fd = write_file(fs, "f", b"synced")
    fs.cut_after(1)
    fs.pwrite(fd, b"unsynced", 6)
    with pytest.raises(PowerCut):
        fs.fdatasync(fd)
    with pytest.raises(PowerCut):
        fs.read(D / "f")
    assert {c.read(D / "f") for c in crashes(fs)} == {b"synced", b"syncedunsynced",
                                                     b"synced" + bytes(8)}


def test_crash_is_a_function_of_the_seed_and_leaves_the_original_running():
    fs = fresh()
    fd = write_file(fs, "f", b"")
    for k in range(20):
        fs.pwrite(fd, bytes([65 + k]) * SECTOR, k * SECTOR)
    a, b = fs.crash(random.Random(7)), fs.crash(random.Random(7))
    assert a.read(D / "f") == b.read(D / "f")
    fs.fdatasync(fd)
    assert len(fs.read(D / "f")) == 20 * SECTOR


def test_lock_lets_one_holder_at_a_time():
    fs = fresh()
    h = fs.lock(D / "LOCK")
    with pytest.raises(BlockingIOError):
        fs.lock(D / "LOCK")
    fs.unlock(h)
    fs.unlock(fs.lock(D / "LOCK"))


def test_a_killed_process_leaves_its_unsynced_writes_and_no_lock():
    fs = fresh()
    fs.lock(D / "LOCK")
    fd = fs.open(D / "f", create=True)
    fs.pwrite(fd, b"cached", 0)
    fs.kill()
    with pytest.raises(OSError):
        fs.pwrite(fd, b"x", 0)
    fs.unlock(fs.lock(D / "LOCK"))
    assert fs.read(D / "f") == b"cached"


def test_names_behave_like_a_posix_directory():
    fs = fresh()
    with pytest.raises(FileNotFoundError):
        fs.open(D / "missing")
    fs.close(fs.open(D / "a", create=True))
    with pytest.raises(FileExistsError):
        fs.open(D / "a", create=True, exclusive=True)
    with pytest.raises(FileExistsError):
        fs.mkdir(D)
    fs.makedirs(D / "x" / "y")
    assert fs.exists(D / "x" / "y") and not fs.exists(D / "z")
    with pytest.raises(IsADirectoryError):
        fs.unlink(D / "x")
    fs.unlink(D / "a")
    assert sorted(fs.listdir(D)) == ["x"]
