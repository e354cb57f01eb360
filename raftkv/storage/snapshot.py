"""Snapshot files: the state machine's bytes plus SnapshotMeta, written atomically.

File layout (`snap-<index, 20 digits>.snap`)::

    8 bytes  magic b"RKVSNAP1"
    u32      meta length        little endian
    u64      data length
    u32      crc                zlib.crc32 over meta followed by data
    meta     msgpack [index, term, voters, learners, data crc]
    data     the state machine's bytes

`data crc` (zlib.crc32 of the data alone, what a transfer's chunks carry) lets a leader
stream the data to a follower from the file, a piece per loop turn, without reading it
whole first (`snapshot_source`). Files written before it existed have a 4-element meta;
their data crc is computed by reading the data once. The writer always encodes `data
crc` as a msgpack uint32 (5 bytes), so the meta's length is known before the data is
read, and the file is written in one pass: the data first, after room for the header
and meta, which are filled in last (the whole-file crc from `crc32_combine`). Readers
take any msgpack int there, so files of either width read alike.

A file under its final name was fsynced before the rename, so any check failure in it is
corruption, not a torn write.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator
from functools import partial
from pathlib import Path

import msgpack

from raftkv.raft.types import SnapshotMeta
from raftkv.storage.disk import Disk
from raftkv.storage.errors import StorageCorruptError
from raftkv.storage.fs import OS_FS, FileSystem

log = logging.getLogger("raftkv.storage")

MAGIC = b"RKVSNAP1"
_HEADER = struct.Struct("<8sIQI")
_SNAP_NAME = re.compile(r"snap-(\d{20})\.snap")
KEEP = 2  # snapshots kept on disk; only the newest is ever loaded
SYNC_EVERY = 4 << 20  # bytes of a snapshot file written between two syncs of it


def snapshot_path(data_dir: Path, index: int) -> Path:
    return data_dir / f"snap-{index:020d}.snap"


def list_snapshots(data_dir: Path, fs: FileSystem = OS_FS) -> list[tuple[int, Path]]:
    """(index, path) of every snapshot file, oldest first."""
    found = [
        (int(m.group(1)), data_dir / n)
        for n in fs.listdir(data_dir)
        if (m := _SNAP_NAME.fullmatch(n))
    ]
    return sorted(found)


def write_snapshot(data_dir: Path, meta: SnapshotMeta, data: bytes, disk: Disk) -> Path:
    path = snapshot_path(data_dir, meta.index)
    disk.publish(write_snapshot_temp(data_dir, meta, data, disk), path)
    return path


def write_snapshot_temp(data_dir: Path, meta: SnapshotMeta, data: bytes | Path,
                        disk: Disk) -> Path:
    """The snapshot file, written and synced under its temp name (`publish` names it).
    `data` is the state machine's bytes, or a file of the OS holding them (not one of
    `disk`'s: the state machine made it), read a range at a time, so that a state of
    gigabytes is never in memory whole."""
    if isinstance(data, Path):
        size = data.stat().st_size
        pieces: Iterable[bytes] = _ranges(data, size)
    else:
        size, pieces = len(data), (data,)
    data_crc = 0

    def summed() -> Iterator[bytes]:
        nonlocal data_crc
        for piece in pieces:
            data_crc = zlib.crc32(piece, data_crc)
            yield piece

    def header() -> bytes:
        body = _meta_body(meta, data_crc)
        crc = crc32_combine(zlib.crc32(body), data_crc, size)
        return _HEADER.pack(MAGIC, len(body), size, crc) + body

    # One pass over the data: written after room for the header, which is filled in
    # last (the meta's fixed width makes its size known before the data crc is).
    return disk.write_temp(snapshot_path(data_dir, meta.index), summed(),
                           sync_every=SYNC_EVERY, header=header,
                           header_size=_HEADER.size + len(_meta_body(meta, 0)))


def _meta_body(meta: SnapshotMeta, data_crc: int) -> bytes:
    """The meta as msgpack, its data crc always 5 bytes wide (uint32), so that the
    body's length does not depend on the crc."""
    fields = (meta.index, meta.term, list(meta.voters), list(meta.learners))
    return b"\x95" + b"".join(msgpack.packb(f) for f in fields) + b"\xce" + _U32.pack(data_crc)


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """zlib.crc32 of A + B from crc1 = crc32(A), crc2 = crc32(B) and len(B), without
    reading either: crc1 is carried through len2 zero bytes by the GF(2) matrices of
    2**k zero bytes, squared from that of one zero bit (zlib's crc32_combine's method),
    then crc2 is added."""
    zero_byte = [_CRC_POLY] + [1 << n for n in range(31)]  # the matrix of one zero bit
    for _ in range(3):
        zero_byte = _gf2_square(zero_byte)  # of 2, 4, then 8 zero bits
    zeros, n = zero_byte, len2  # invariant: `zeros` is the matrix of 2**k zero bytes
    while n > 0:
        if n & 1:
            crc1 = _gf2_times(zeros, crc1)
        n >>= 1
        if n:
            zeros = _gf2_square(zeros)
    return crc1 ^ crc2


_CRC_POLY = 0xEDB88320  # zlib's CRC-32, reflected
_U32 = struct.Struct(">I")


def _gf2_times(matrix: list[int], vector: int) -> int:
    total, i = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[i]
        vector >>= 1
        i += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, row) for row in matrix]


def _ranges(path: Path, size: int) -> Iterator[bytes]:
    """The first `size` bytes of `path`, SYNC_EVERY at a time."""
    with open(path, "rb") as f:
        for offset in range(0, size, SYNC_EVERY):
            piece = f.read(min(SYNC_EVERY, size - offset))
            if not piece:
                raise OSError(f"{path} ended at {offset} bytes, not {size}")
            yield piece


def read_snapshot(path: Path, data_dir: Path,
                  fs: FileSystem = OS_FS) -> tuple[SnapshotMeta, bytes]:
    """The snapshot in `path`, checked; StorageCorruptError if any check fails."""
    return parse_snapshot(path, fs.read(path), data_dir)


def parse_snapshot(path: Path, buf: bytes, data_dir: Path) -> tuple[SnapshotMeta, bytes]:
    """The snapshot file `path` whose bytes are `buf`, checked."""
    meta, data_at = _checked(path, data_dir, lambda at, n: buf[at:at + n])
    return meta, buf[data_at:]


def check_snapshot(path: Path, data_dir: Path, fs: FileSystem = OS_FS) -> SnapshotMeta:
    """The meta of the snapshot file `path`, checked as `parse_snapshot` checks it but
    read a range at a time, so that a snapshot of gigabytes is never in memory whole;
    StorageCorruptError if any check fails."""
    return _checked(path, data_dir, partial(fs.read_range, path))[0]


ReadRange = Callable[[int, int], bytes]  # (offset, size) -> up to size bytes from there


def _checked(path: Path, data_dir: Path, read: ReadRange) -> tuple[SnapshotMeta, int]:
    """The meta of snapshot file `path`, read through `read`, and where its data starts,
    once its size, CRC and name check; StorageCorruptError otherwise."""

    def corrupt(offset: int, problem: str) -> StorageCorruptError:
        return StorageCorruptError(path, offset, problem, data_dir)

    meta_len, data_len, crc, body = _read_head(read, corrupt)
    start = _HEADER.size
    running, at, end = zlib.crc32(body), start + len(body), start + meta_len + data_len
    while len(body) == meta_len and at < end:
        piece = read(at, min(SYNC_EVERY, end - at))
        if not piece:
            break
        running = zlib.crc32(piece, running)
        at += len(piece)
    if at < end or read(end, 1):
        size = at if at < end else f"more than {end}"
        raise corrupt(start, f"snapshot file has {size} bytes, its header says {end}")
    if running != crc:
        raise corrupt(start, f"snapshot CRC mismatch over bytes {start}..{end}")
    meta, _ = _decode_meta(body, corrupt(start, "undecodable snapshot meta"))
    if path != snapshot_path(path.parent, meta.index):
        raise corrupt(start, f"snapshot file name does not match its index {meta.index}")
    return meta, start + meta_len


def _read_head(read: ReadRange, corrupt: Callable[[int, str], StorageCorruptError]
               ) -> tuple[int, int, int, bytes]:
    """The header's meta length, data length and crc, and the meta's bytes (as many of
    them as the file has)."""
    head = read(0, _HEADER.size)
    if len(head) < _HEADER.size:
        raise corrupt(0, f"snapshot file shorter than its {_HEADER.size}-byte header")
    magic, meta_len, data_len, crc = _HEADER.unpack(head)
    if magic != MAGIC:
        raise corrupt(0, f"bad snapshot magic {magic!r}")
    return meta_len, data_len, crc, read(_HEADER.size, meta_len)


def copy_snapshot_data(path: Path, to: Path) -> None:
    """The data of the snapshot file `path` (checked before) into a new file `to`,
    copied by the kernel (copy_file_range), never through memory."""
    with open(path, "rb") as src:
        magic, meta_len, data_len, _ = _HEADER.unpack(src.read(_HEADER.size))
        at, left = _HEADER.size + meta_len, data_len
        with open(to, "wb") as dst:
            while left:
                n = os.copy_file_range(src.fileno(), dst.fileno(), min(left, 1 << 30), at)
                if n == 0:
                    raise OSError(f"{path} ended {left} bytes short of its data")
                at, left = at + n, left - n


def _decode_meta(body: bytes, error: StorageCorruptError) -> tuple[SnapshotMeta, int | None]:
    """The meta and the data crc (None in a file written before it was kept)."""
    try:
        index, term, voters, learners, *crc = msgpack.unpackb(body)
        meta = SnapshotMeta(index, term, tuple(voters), tuple(learners))
    except Exception as exc:  # the file's CRC matched: a bug wrote it, still not usable
        raise error from exc
    if len(crc) > 1 or crc and type(crc[0]) is not int:
        raise error
    return meta, crc[0] if crc else None


class SnapshotSource:
    """The data of one snapshot file, read a range at a time: what a leader streams to
    a follower. The file was checked whole when it was opened or written by this node;
    a range that went bad on the disk since is caught by the receiver's check of the
    data crc, which refuses the snapshot."""

    def __init__(self, path: Path, fs: FileSystem, offset: int, size: int, crc: int) -> None:
        self.path, self.fs = path, fs
        self.offset, self.size, self.checksum = offset, size, crc

    def read(self, start: int, n: int) -> bytes:
        """Up to `n` bytes of the data from `start`; OSError if the file is gone."""
        return self.fs.read_range(self.path, self.offset + start, min(n, self.size - start))


def snapshot_source(path: Path, meta: SnapshotMeta, data_dir: Path,
                    fs: FileSystem = OS_FS) -> SnapshotSource:
    """The data of the snapshot file `path`, which holds `meta`, to be read in ranges."""

    def corrupt(offset: int, problem: str) -> StorageCorruptError:
        return StorageCorruptError(path, offset, problem, data_dir)

    meta_len, data_len, _, body = _read_head(partial(fs.read_range, path), corrupt)
    found, crc = _decode_meta(body, corrupt(_HEADER.size, "undecodable snapshot meta"))
    if found != meta:
        raise corrupt(_HEADER.size, f"snapshot file holds {found}, not {meta}")
    offset = _HEADER.size + meta_len
    if crc is None:  # written before the data crc was kept: read the data once for it
        crc = zlib.crc32(fs.read_range(path, offset, data_len))
    return SnapshotSource(path, fs, offset, data_len, crc)


def prune_snapshots(data_dir: Path, disk: Disk, keep_files: Collection[int] = ()) -> None:
    """Delete all but the newest KEEP snapshot files and those at the indexes
    `keep_files`."""
    disk.discard([path for index, path in list_snapshots(data_dir, disk.fs)[:-KEEP]
                  if index not in keep_files], data_dir)


def remove_temp_files(data_dir: Path, fs: FileSystem = OS_FS) -> None:
    """Temp files are leftovers of writes a crash interrupted; nothing refers to them."""
    for name in sorted(fs.listdir(data_dir)):
        if name.endswith(".tmp"):
            log.warning("removing leftover temp file %s", data_dir / name)
            fs.unlink(data_dir / name)
