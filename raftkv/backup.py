"""Backups of a cluster's keys (`raftkv snapshot save`) and seeding a data dir from one
(`raftkv snapshot restore`), so that a new cluster starts with that state.

A backup file is the data of one revision of the cluster, every key and its value::

    MAGIC                      b"RAFTKV-BACKUP\\n"
    header length              uint32, big-endian
    header                     msgpack map: version (1), revision, keys, body_bytes,
                               body_crc32, created (ISO 8601, UTC)
    body                       msgpack array of [key, value] (bin), in key order

`revision` is the log index the state is that of: every write up to it is in the backup
and none after it. Revisions of single keys are not kept (the cluster's SCAN does not
answer them): a restored key has create and mod revision `revision` and version 1, so a
restored cluster's writes get revisions above every one the old cluster gave.

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

from raftkv.kv import KVStore
from raftkv.raft.types import SnapshotMeta
from raftkv.storage import Identity, Storage, StorageError

MAGIC = b"RAFTKV-BACKUP\n"
VERSION = 1
_LENGTH = struct.Struct(">I")
_RECORD = struct.Struct(">QQQ")  # create_revision, mod_revision, version (kv.py's records)
_BUILT_FORMAT = 4  # kv.py's snapshot format 4: [4, applied, [{key: record}], sessions, members]
RESTORED_TERM = 1  # the snapshot's term: the first a new cluster's log can have


class BackupError(ValueError):
    """A file that is not a whole, undamaged backup; the message names the problem."""


@dataclass(frozen=True)
class Backup:
    """The state of a cluster at `revision`: its keys and values, in key order."""

    revision: int
    pairs: list[tuple[bytes, bytes]]
    created: str = ""


def write_backup(path: Path, revision: int, pairs: Iterable[tuple[bytes, bytes]]) -> Backup:
    """Write the backup of `pairs` at `revision` to `path`: a temp file, synced, then
    renamed, so `path` is whole or untouched."""
    ordered = sorted(pairs)
    body = msgpack.packb([[k, v] for k, v in ordered], use_bin_type=True)
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
    if type(header) is not dict or header.get("version") != VERSION:
        raise BackupError(f"{path}: backup version {header.get('version')!r:.20} is not "
                          f"supported (want {VERSION})" if type(header) is dict
                          else f"{path}: its header is damaged")
    body = buf[at + length:]
    if len(body) != header.get("body_bytes") or zlib.crc32(body) != header.get("body_crc32"):
        raise BackupError(f"{path} is damaged or cut short: its data does not match the "
                          "length and CRC32 its header records")
    pairs = msgpack.unpackb(body)
    revision = header.get("revision")
    if type(revision) is not int or revision < 0 or len(pairs) != header.get("keys"):
        raise BackupError(f"{path}: its header is inconsistent")
    return Backup(revision, [(k, v) for k, v in pairs], str(header.get("created", "")))


def snapshot_data(backup: Backup, index: int) -> bytes:
    """The state machine's snapshot of `backup`'s keys at `index`, each key created and
    last modified at `index`, version 1, in the format kv.py writes now: built in
    format 4 (data, sessions, members), which KVStore.restore reads, and written again
    by KVStore.snapshot, so a newer format's parts take their empty values."""
    record = _RECORD.pack(index, index, 1)
    built = msgpack.packb((_BUILT_FORMAT, index, [{k: record + v for k, v in backup.pairs}],
                           [], {}), use_bin_type=True)
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
