"""Backups of a cluster's keys (`raftkv snapshot save`) and seeding a data dir from one
(`raftkv snapshot restore`), so that a new cluster starts with that state.

A backup file is the data of one revision of the cluster, every key and its value::

    MAGIC                      b"RAFTKV-BACKUP\\n"
    header length              uint32, big-endian
    header                     msgpack map: version (3), revision, keys, body_bytes,
                               body_crc32, created (ISO 8601, UTC)
    body                       msgpack array [items, leases]: items an array of [key,
                               value, create_revision, mod_revision, version] in key
                               order, leases one of [lease_id, ttl_ms, [key, ...]] in id
                               order (`LeaseTable.wire`)

`revision` is the log index the state is that of: every write up to it is in the backup
and none after it, and each key keeps the revisions it had then (0 < create <= mod <=
revision), so a restored cluster answers a compare on them as the old one would, and
its writes get revisions above every one the old cluster gave. The leases are those
that existed at `revision`, each with its TTL and the keys it held then: restored, a
key put with a lease (a lock's, an election's) still ends with it, the lease timed
afresh from its full TTL when the new cluster's first leader starts, as after any
failover. Version 2 files held the items alone (their keys restore without leases), and
version 1 files [key, value] only (their keys restore as created and modified at
`revision`, version 1).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from raftkv.kv import KeyValue, KVStore, pack_record
from raftkv.leases import LeaseError, LeaseTable
from raftkv.raft.types import SnapshotMeta
from raftkv.storage import Identity, Storage, StorageError

MAGIC = b"RAFTKV-BACKUP\n"
VERSION = 3
_VERSIONS = (1, 2, VERSION)  # what read_backup reads
_BUILT_FORMAT = 5  # kv.py's snapshot format 5, which snapshot_data builds
_LENGTH = struct.Struct(">I")
RESTORED_TERM = 1  # the snapshot's term: the first a new cluster's log can have


class BackupError(ValueError):
    """A file that is not a whole, undamaged backup; the message names the problem."""


@dataclass(frozen=True)
class Backup:
    """The state of a cluster at `revision`: its keys with their values and revisions
    (`KeyValue`), in key order, and its leases ([lease_id, ttl_ms, [key, ...]], in id
    order, as `LeaseTable.wire` gives them)."""

    revision: int
    items: list[tuple[bytes, KeyValue]]
    created: str = ""
    leases: list[list[Any]] = field(default_factory=list)

    @property
    def pairs(self) -> list[tuple[bytes, bytes]]:
        return [(k, kv.value) for k, kv in self.items]


def write_backup(path: Path, revision: int,
                 items: Iterable[tuple[bytes, bytes | KeyValue]],
                 leases: Iterable[tuple[int, int, Iterable[bytes]]] = ()) -> Backup:
    """Write the backup of `items` and `leases` at `revision` to `path`: a temp file,
    synced, then renamed, so `path` is whole or untouched. An item is (key, KeyValue),
    or (key, value) for a key created and last modified at `revision`; a lease is
    (lease_id, ttl_ms, its keys). BackupError (a ValueError) if an item is not bytes
    with revisions up to `revision` (the file could not be read back), or a lease is
    malformed or holds a key the items lack: nothing is written."""
    ordered = sorted(_entry([k, *(v if isinstance(v, KeyValue)
                                 else KeyValue(v, revision, revision, 1))], revision, str(path))
                     for k, v in items)
    table = _lease_table([[lid, ttl, sorted(keys)] for lid, ttl, keys in leases], revision,
                         {k for k, _ in ordered}, str(path))
    leases_wire = table.wire()
    body = msgpack.packb([[[k, *kv] for k, kv in ordered], leases_wire], use_bin_type=True)
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
    return Backup(revision, ordered, created, leases_wire)


def _lease_table(raw: object, revision: int, keys: set[bytes], where: str) -> LeaseTable:
    """The leases `raw` ([[lease_id, ttl_ms, [key, ...]], ...]) of a state at
    `revision` whose keys are `keys`; BackupError naming the first problem."""
    try:
        table = LeaseTable.from_wire(raw, revision)
    except LeaseError as e:
        raise BackupError(f"{where}: {e}") from None
    for k in table.owner:
        if k not in keys:
            raise BackupError(f"{where}: a lease holds key {k!r:.40}, which it lacks")
    return table


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
    if type(header) is not dict or header.get("version") not in _VERSIONS:
        raise BackupError(f"{path}: backup version {header.get('version')!r:.20} is not "
                          f"supported (want {VERSION})" if type(header) is dict
                          else f"{path}: its header is damaged")
    body = buf[at + length:]
    if len(body) != header.get("body_bytes") or zlib.crc32(body) != header.get("body_crc32"):
        raise BackupError(f"{path} is damaged or cut short: its data does not match the "
                          "length and CRC32 its header records")
    try:
        unpacked = msgpack.unpackb(body)
    except Exception as e:  # its CRC32 matches: written so, not damaged on the way
        raise BackupError(f"{path}: its data is not msgpack ({e})") from None
    entries, raw_leases = _parts(unpacked, header["version"], path)
    revision = header.get("revision")
    if type(revision) is not int or revision < 0 or len(entries) != header.get("keys"):
        raise BackupError(f"{path}: its header is inconsistent")
    items = [_entry([*e, revision, revision, 1] if type(e) is list and header["version"] == 1
                    else e, revision, str(path)) for e in entries]
    leases = _lease_table(raw_leases, revision, {k for k, _ in items}, str(path)).wire()
    return Backup(revision, items, str(header.get("created", "")), leases)


def _entry(e: object, revision: int, where: str) -> tuple[bytes, KeyValue]:
    """Entry `e` ([key, value, create_revision, mod_revision, version]) of a state at
    `revision` as (key, KeyValue); BackupError if it is not one."""
    if (type(e) is not list or len(e) != 5 or type(e[0]) is not bytes or type(e[1]) is not bytes
            or not all(type(x) is int for x in e[2:])
            or not 0 < e[2] <= e[3] <= max(revision, 1) or e[4] < 1):
        raise BackupError(f"{where}: entry {e!r:.60} is not a key, its value and "
                          f"revisions up to {revision}")
    return e[0], KeyValue(*e[1:])


def _parts(body: object, version: int, path: Path) -> tuple[list[Any], list[Any]]:
    """A body's items and leases: version 3 holds both, 1 and 2 the items alone."""
    if version < 3:
        body = [body, []]
    if type(body) is not list or len(body) != 2 or not all(type(p) is list for p in body):
        raise BackupError(f"{path}: its data is not [items, leases]")
    return body[0], body[1]


def snapshot_data(backup: Backup, index: int) -> bytes:
    """The state machine's snapshot of `backup`'s keys, with their revisions, and its
    leases, at `index`, in the format kv.py writes now: built as format 5 (data,
    sessions, members, leases), read by KVStore.restore, which checks it, and written
    again by KVStore.snapshot."""
    data = {k: pack_record(kv.create_revision, kv.mod_revision, kv.version, kv.value)
            for k, kv in backup.items}
    built = msgpack.packb((_BUILT_FORMAT, index, [data], [], {}, backup.leases),
                          use_bin_type=True)
    state = KVStore()
    state.restore(built)  # SnapshotError if kv.py no longer reads format 5
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
