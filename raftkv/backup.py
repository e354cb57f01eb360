"""Backups of a cluster's keys (`raftkv snapshot save`) and seeding a data dir from one
(`raftkv snapshot restore`), so that a new cluster starts with that state.

A backup file is the data of one revision of the cluster, every key and its value::

    MAGIC                      b"RAFTKV-BACKUP\\n"
    header length              uint32, big-endian
    header                     msgpack map: version (2), revision, keys, body_bytes,
                               body_crc32, created (ISO 8601, UTC)
    body                       msgpack array of [key, value, create_revision,
                               mod_revision, version], in key order

`revision` is the log index the state is that of: every write up to it is in the backup
and none after it, and each key keeps the revisions it had then (0 < create <= mod <=
revision), so a restored cluster answers a compare on them as the old one would, and
its writes get revisions above every one the old cluster gave. Version 1 files held
[key, value] only; their keys restore as created and modified at `revision`, version 1.
Leases are not kept: a key put with a lease restores without one.

Restoring writes, into a new data dir, what a node that has compacted its log holds: its
FORMAT (node id, cluster id), a snapshot at index `revision` (term 1, the new cluster's
voters) and a WAL with its marker. Every member gets the same snapshot, so all start from
one state; `raftkv node` then opens the dir as on any later start (no --new).
"""

from __future__ import annotations

import datetime
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgpack

from raftkv.kv import KeyValue, KVStore, pack_record
from raftkv.raft.types import SnapshotMeta
from raftkv.storage import Identity, Storage, StorageError

MAGIC = b"RAFTKV-BACKUP\n"
VERSION = 2
_LENGTH = struct.Struct(">I")
_BUILT_FORMAT = 4  # kv.py's snapshot format 4: [4, applied, [{key: record}], sessions, members]
RESTORED_TERM = 1  # the snapshot's term: the first a new cluster's log can have


class BackupError(ValueError):
    """A file that is not a whole, undamaged backup; the message names the problem."""


@dataclass(frozen=True)
class Backup:
    """The state of a cluster at `revision`: its keys with their values and revisions
    (`KeyValue`), in key order."""

    revision: int
    items: list[tuple[bytes, KeyValue]]
    created: str = ""

    @property
    def pairs(self) -> list[tuple[bytes, bytes]]:
        return [(k, kv.value) for k, kv in self.items]


def write_backup(path: Path, revision: int,
                 items: Iterable[tuple[bytes, bytes | KeyValue]]) -> Backup:
    """Write the backup of `items` at `revision` to `path`: a temp file, synced, then
    renamed, so `path` is whole or untouched. An item is (key, KeyValue), or (key,
    value) for a key created and last modified at `revision`."""
    ordered = sorted((k, v if isinstance(v, KeyValue) else KeyValue(v, revision, revision, 1))
                     for k, v in items)
    body = msgpack.packb([[k, *kv] for k, kv in ordered], use_bin_type=True)
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    header = msgpack.packb({"version": VERSION, "revision": revision, "keys": len(ordered),
                            "body_bytes": len(body), "body_crc32": zlib.crc32(body),
                            "created": created})
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + _LENGTH.pack(len(header)) + header + body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return Backup(revision, ordered, created)


def read_backup(path: Path) -> Backup:
    """The backup in `path`; BackupError if it is not one, or is damaged."""
    buf = path.read_bytes()
    if not buf.startswith(MAGIC):
        raise BackupError(f"{path} is not a raftkv backup (`raftkv snapshot save` makes one)")
    at = len(MAGIC) + _LENGTH.size
    if len(buf) < at:
        raise BackupError(f"{path} is cut short")
    (length,) = _LENGTH.unpack_from(buf, len(MAGIC))
    try:
        header = msgpack.unpackb(buf[at:at + length])
    except Exception as e:
        raise BackupError(f"{path}: its header is damaged ({e})") from None
    if type(header) is not dict or header.get("version") not in (1, VERSION):
        raise BackupError(f"{path}: backup version {header.get('version')!r:.20} is not "
                          f"supported (want {VERSION})" if type(header) is dict
                          else f"{path}: its header is damaged")
    body = buf[at + length:]
    if len(body) != header.get("body_bytes") or zlib.crc32(body) != header.get("body_crc32"):
        raise BackupError(f"{path} is damaged or cut short: its data does not match the "
                          "length and CRC32 its header records")
    entries = msgpack.unpackb(body)
    revision = header.get("revision")
    if type(revision) is not int or revision < 0 or len(entries) != header.get("keys"):
        raise BackupError(f"{path}: its header is inconsistent")
    items = []
    for e in entries:
        if header["version"] == 1:
            e = [*e, revision, revision, 1]
        if (len(e) != 5 or type(e[0]) is not bytes or type(e[1]) is not bytes
                or not all(type(x) is int for x in e[2:])
                or not 0 < e[2] <= e[3] <= max(revision, 1) or e[4] < 1):
            raise BackupError(f"{path}: entry {e!r:.60} is not a key, its value and "
                              f"revisions up to {revision}")
        items.append((e[0], KeyValue(*e[1:])))
    return Backup(revision, items, str(header.get("created", "")))


def snapshot_data(backup: Backup, index: int) -> bytes:
    """The state machine's snapshot of `backup`'s keys, with their revisions, at `index`,
    in the format kv.py writes now: built in format 4 (data, sessions, members), which
    KVStore.restore reads, and written again by KVStore.snapshot, so a newer format's
    parts take their empty values."""
    data = {k: pack_record(kv.create_revision, kv.mod_revision, kv.version, kv.value)
            for k, kv in backup.items}
    built = msgpack.packb((_BUILT_FORMAT, index, [data], [], {}), use_bin_type=True)
    state = KVStore()
    state.restore(built)  # SnapshotError if kv.py no longer reads format 4
    return state.snapshot()


def seed_data_dir(backup: Backup, data_dir: Path, node_id: int, cluster_id: int,
                  voters: tuple[int, ...]) -> SnapshotMeta:
    """Make `data_dir` (missing or empty) node `node_id`'s data dir of a new cluster
    whose state starts as `backup`'s: a snapshot at the backup's revision (at least 1),
    with `voters` as its configuration. Raises StorageError if the dir is in use or holds
    anything, ValueError for bad arguments."""
    if node_id < 1 or not voters or min(voters) < 1:
        raise ValueError("node ids are whole numbers >= 1, and there is at least one voter")
    if data_dir.exists() and any(data_dir.iterdir()):
        raise StorageError(f"{data_dir} is not empty: a restore makes a new data dir; "
                           "give a new or empty one")
    index = max(backup.revision, 1)
    meta = SnapshotMeta(index, RESTORED_TERM, tuple(sorted(set(voters))), ())
    data = snapshot_data(backup, index)
    with Storage.open(data_dir, identity=Identity(cluster_id, node_id), create=True) as st:
        st.save_snapshot(meta, data)
    return meta
