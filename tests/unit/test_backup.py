"""Backup files and seeding a data dir from one (raftkv/backup.py)."""

from __future__ import annotations

import struct
import zlib

import msgpack
import pytest

from raftkv.backup import MAGIC, BackupError, read_backup, seed_data_dir, write_backup
from raftkv.kv import KeyValue, KVStore, Op, encode_lease
from raftkv.storage import Identity, Storage, StorageError, StorageIdentityError


def test_a_backup_reads_back_in_key_order(tmp_path):
    path = tmp_path / "b.rkv"
    write_backup(path, 17, [(b"b", b"2"), (b"a", b""), (b"\x00", b"\xff" * 10)])
    backup = read_backup(path)
    assert backup.revision == 17
    assert backup.pairs == [(b"\x00", b"\xff" * 10), (b"a", b""), (b"b", b"2")]
    assert backup.created
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("damage, says", [
    (lambda b: b"x" + b[1:], "not a raftkv backup"),
    (lambda b: b[:-1], "damaged or cut short"),
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "damaged or cut short"),
    (lambda b: b[:16], "damaged"),
])
def test_a_damaged_backup_is_refused(tmp_path, damage, says):
    path = tmp_path / "b.rkv"
    write_backup(path, 3, [(b"k%d" % i, b"v" * i) for i in range(50)])
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(BackupError, match=says):
        read_backup(path)


def test_a_backup_keeps_each_keys_revisions_and_refuses_impossible_ones(tmp_path):
    path = tmp_path / "b.rkv"
    write_backup(path, 40, [(b"k", KeyValue(b"v", 7, 31, 5)), (b"plain", b"p")])
    backup = read_backup(path)
    assert backup.items == [(b"k", KeyValue(b"v", 7, 31, 5)),
                            (b"plain", KeyValue(b"p", 40, 40, 1))]
    meta = seed_data_dir(backup, tmp_path / "d", 1, 0, (1,))
    with Storage.open(tmp_path / "d", identity=Identity(0, 1), create=False) as st:
        kv = KVStore()
        kv.restore(st.load_snapshot_data())
    assert meta.index == 40 and kv.get_kv(b"k") == KeyValue(b"v", 7, 31, 5)
    with pytest.raises(BackupError, match="revisions up to 40"):  # modified after it
        write_backup(tmp_path / "later.rkv", 40, [(b"k", KeyValue(b"v", 7, 41, 1))])
    body = msgpack.packb([[[b"k", b"v", 7, 41, 1]], []])
    with pytest.raises(BackupError, match="revisions up to 40"):
        read_backup(crafted(tmp_path / "crafted.rkv", 3, body, revision=40))
    assert not (tmp_path / "later.rkv").exists()


@pytest.mark.parametrize("items", [
    [("k", b"v")],  # a str key: msgpack would write it as a string, unreadable as a key
    [(b"k", "v")],
    [(b"k", b"v"), ("j", b"w")],
])
def test_a_backup_of_keys_or_values_that_are_not_bytes_is_refused_unwritten(tmp_path, items):
    with pytest.raises(BackupError, match="is not a key, its value"):
        write_backup(tmp_path / "b.rkv", 5, items)
    assert not (tmp_path / "b.rkv").exists()


def test_a_seeded_dir_opens_as_a_compacted_node_with_the_state(tmp_path):
    path = tmp_path / "b.rkv"
    backup = write_backup(path, 40, [(b"k1", b"one"), (b"k2", b"two")])
    meta = seed_data_dir(backup, tmp_path / "d", 2, 0xBEEF, (3, 1, 2))
    assert (meta.index, meta.term, meta.voters) == (40, 1, (1, 2, 3))
    with Storage.open(tmp_path / "d", identity=Identity(0xBEEF, 2), create=False) as st:
        assert st.snapshot == meta and st.last_index == 40
        kv = KVStore()
        kv.restore(st.load_snapshot_data())
    assert kv.applied_index == 40
    item = kv.get_kv(b"k2")
    assert item is not None and item.value == b"two"
    assert (item.create_revision, item.mod_revision, item.version) == (40, 40, 1)
    with pytest.raises(StorageIdentityError):  # the dir is node 2's of cluster beef
        Storage.open(tmp_path / "d", identity=Identity(0xBEEF, 1), create=False)


def test_an_empty_backup_still_seeds_a_snapshot_at_index_one(tmp_path):
    backup = write_backup(tmp_path / "b.rkv", 0, [])
    assert seed_data_dir(backup, tmp_path / "d", 1, 0, (1,)).index == 1


def test_seeding_refuses_a_dir_that_holds_anything(tmp_path):
    backup = write_backup(tmp_path / "b.rkv", 5, [(b"k", b"v")])
    (tmp_path / "d").mkdir()
    (tmp_path / "empty").mkdir()
    seed_data_dir(backup, tmp_path / "empty", 1, 0, (1,))  # an empty dir will do
    (tmp_path / "d" / "wal-1.log").write_bytes(b"x")
    with pytest.raises(StorageError, match="not empty"):
        seed_data_dir(backup, tmp_path / "d", 1, 0, (1,))
    with pytest.raises(ValueError):
        seed_data_dir(backup, tmp_path / "e", 1, 0, ())


def test_a_backup_keeps_the_leases_and_a_restored_state_holds_them(tmp_path):
    path = tmp_path / "b.rkv"
    write_backup(path, 50, [(b"__lock/a/1", KeyValue(b"", 12, 12, 1)), (b"cfg", b"x"),
                            (b"svc/2", KeyValue(b"up", 20, 20, 1))],
                 leases=[(11, 5000, [b"__lock/a/1"]), (19, 60_000, [b"svc/2"]), (30, 900, [])])
    backup = read_backup(path)
    assert backup.leases == [[11, 5000, [b"__lock/a/1"]], [19, 60_000, [b"svc/2"]],
                             [30, 900, []]]
    seed_data_dir(backup, tmp_path / "d", 1, 0, (1,))
    with Storage.open(tmp_path / "d", identity=Identity(0, 1), create=False) as st:
        kv = KVStore()
        kv.restore(st.load_snapshot_data())
    assert kv.lease_ttls == {11: 5000, 19: 60_000, 30: 900}
    assert kv.lease(11) == [5000, [b"__lock/a/1"]] and kv.lease(30) == [900, []]
    kv.apply(51, encode_lease(Op.LEASE_REVOKE, 11, client_id=0, seq=0))
    assert kv.get(b"__lock/a/1") is None and kv.get(b"cfg") == b"x"


@pytest.mark.parametrize("leases, says", [
    ([(11, 5000, [b"gone"])], "holds key b'gone'"),
    ([(51, 5000, [])], "malformed"),  # granted after the backup's revision
    ([(11, 0, [])], "malformed"),
    ([(11, 5000, [b"k"]), (12, 5000, [b"k"])], "held twice"),
])
def test_a_lease_the_state_could_not_hold_is_refused(tmp_path, leases, says):
    with pytest.raises(BackupError, match=says):
        write_backup(tmp_path / "b.rkv", 50, [(b"k", b"v")], leases=leases)
    assert not (tmp_path / "b.rkv").exists()


def test_a_version_2_backup_still_restores_its_keys_without_leases(tmp_path):
    body = msgpack.packb([[b"k", b"v", 3, 9, 2]], use_bin_type=True)
    header = msgpack.packb({"version": 2, "revision": 10, "keys": 1, "body_bytes": len(body),
                            "body_crc32": zlib.crc32(body), "created": "then"})
    path = tmp_path / "v2.rkv"
    path.write_bytes(MAGIC + struct.pack(">I", len(header)) + header + body)
    backup = read_backup(path)
    assert backup.items == [(b"k", KeyValue(b"v", 3, 9, 2))] and backup.leases == []


def crafted(path, version: int, body: bytes, keys: int = 1, revision: int = 10):
    """A backup file at `revision` around `body`, its length and CRC32 right: only its
    content wrong."""
    header = msgpack.packb({"version": version, "revision": revision, "keys": keys,
                            "body_bytes": len(body), "body_crc32": zlib.crc32(body),
                            "created": "then"})
    path.write_bytes(MAGIC + struct.pack(">I", len(header)) + header + body)
    return path


@pytest.mark.parametrize("version, body", [
    (3, b"\xc1"),  # not msgpack
    (3, msgpack.packb([[], []]) + b"\x00"),  # trailing bytes
    (3, msgpack.packb([[None], []])),
    (3, msgpack.packb([[7], []])),
    (3, msgpack.packb([[dict.fromkeys("abcde", 1)], []])),  # len 5, not a list
    (2, msgpack.packb([None])),
    (1, msgpack.packb([None])),
    (1, msgpack.packb([5])),
])
def test_a_body_whose_crc_matches_but_is_not_a_backup_is_refused(tmp_path, version, body):
    with pytest.raises(BackupError):
        read_backup(crafted(tmp_path / "b.rkv", version, body))
