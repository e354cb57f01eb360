"""Write-ahead log: numbered, append-only segment files of framed records (record.py).

A format-2 segment starts with a 64-byte header::

    8s  magic b"RKVWAL\\x00\\x02"
    u32 format (2), u32 reserved
    u64 cluster id, u64 node id     the data dir's identity; 0: not recorded
    u64 seq                         the number in the file's name
    u64 first_index                 the index the log's next entry had when it was made
    u32 prev_crc                    the crc of the previous segment's last record
    u32 header crc                  zlib.crc32 of the 52 bytes before it
    8 zero bytes

Invariants:
- Segment sequence numbers are consecutive; a gap is corruption.
- A segment exists under its name only once its header is durable, so before any record
  is written after it, and every segment but the last was synced whole before its
  successor was created. So only the last segment can end in a torn write, and a
  segment whose records end before its successor's prev_crc says is corrupt (its tail
  was lost, not torn).
- Synced bytes are never rewritten; only an unsynced torn tail is ever truncated, and a
  copy of the file is kept first (`<segment>.broken`).
- A segment's file may run past its records with zeros written ahead of the appends
  (preallocation); the records end at a header of zeros followed only by zeros.

The torn-tail rule (after etcd's `isTornEntry`): a record that fails its checks is torn,
not corrupt, only if it is in the last segment and the damage looks like a write cut short
by a power cut: the file ends inside the record, or one of the pieces the record is cut
into at 512-byte sector boundaries is all zeros (a sector that never reached the disk;
the WAL only ever writes over zeros). Bytes after it are never searched for a valid
record to decide. Everything else is corruption (`StorageCorruptError`, naming the file
and offset).

Why preallocate: an fdatasync after an append that grew the file must also commit the
new file size, an ext4 journal transaction, and the journal commits one transaction at
a time for every process on the disk. Into space already written, the same fdatasync
flushes data pages only. (fallocate does not help: ext4 marks such extents unwritten and
converts them on write, again a journal transaction.) etcd preallocates its WAL for the
same reason.
"""

from __future__ import annotations

import logging
import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from raftkv.storage.disk import Disk
from raftkv.storage.errors import StorageCorruptError
from raftkv.storage.record import (
    FrameError,
    Record,
    RecordType,
    frame_all,
    read_frame,
    read_frame_v1,
)

log = logging.getLogger("raftkv.storage")

_SEGMENT_NAME = re.compile(r"wal-(\d{10})\.log")
MAGIC = b"RKVWAL\x00\x02"
_SEG_HEADER = struct.Struct("<8sIIQQQQI")
SEGMENT_HEADER_SIZE = 64
SECTOR = 512
# Zeros are written this far ahead of the appends, a chunk at a time (never past the
# segment size): one file-size change, and one larger flush, per chunk instead of a
# journal commit per fdatasync.
PREALLOCATE_BYTES = 1 << 20
_ZEROS = bytes(PREALLOCATE_BYTES)


def segment_name(seq: int) -> str:
    return f"wal-{seq:010d}.log"


@dataclass(slots=True, frozen=True)
class Identity:
    """Which cluster and node a data dir belongs to; 0 means not recorded."""

    cluster_id: int = 0
    node_id: int = 0


UNKNOWN = Identity()


@dataclass(slots=True, frozen=True)
class SegmentHeader:
    identity: Identity
    seq: int
    first_index: int
    prev_crc: int

    def encode(self) -> bytes:
        body = _SEG_HEADER.pack(MAGIC, 2, 0, self.identity.cluster_id, self.identity.node_id,
                                self.seq, self.first_index, self.prev_crc)
        out = body + zlib.crc32(body).to_bytes(4, "little")
        return out + bytes(SEGMENT_HEADER_SIZE - len(out))

    @classmethod
    def decode(cls, buf: bytes) -> SegmentHeader:
        """FrameError unless `buf` starts with a valid format-2 header."""
        if len(buf) < SEGMENT_HEADER_SIZE:
            raise FrameError(f"segment header cut short ({len(buf)} bytes)")
        body = buf[: _SEG_HEADER.size]
        crc = int.from_bytes(buf[_SEG_HEADER.size : _SEG_HEADER.size + 4], "little")
        if zlib.crc32(body) != crc:
            raise FrameError("segment header CRC mismatch")
        magic, fmt, _, cluster, node, seq, first, prev = _SEG_HEADER.unpack(body)
        if magic != MAGIC or fmt != 2:
            raise FrameError(f"not a format-2 segment header (magic {magic!r}, format {fmt})")
        return cls(Identity(cluster, node), seq, first, prev)


@dataclass(slots=True)
class Segment:
    seq: int
    path: Path
    size: int = 0  # where its records end: the next append goes here
    allocated: int = 0  # the file's length: records, then zeros written ahead
    # Highest log index any record in this segment mentions (entries, truncation,
    # snapshot marker); 0 if none. A segment whose max_index is <= a durable snapshot's
    # index holds nothing replay still needs once a newer snapshot marker exists.
    max_index: int = 0
    first_index: int = 0  # from its header; 0 for a format-1 segment
    version: int = 2


def looks_torn(buf: bytes, off: int, end: int | None) -> bool:
    """Whether a bad record at `off` (ending at `end`, None if unknown) looks like a
    write cut short by a power cut: the file ends inside it, or a piece of it between
    sector boundaries is all zeros. With its length unknown, only the piece up to the
    first sector boundary can be judged."""
    if end is not None and end > len(buf):
        return True
    stop = min(end if end is not None else (off // SECTOR + 1) * SECTOR, len(buf))
    start = off
    while start < stop:
        piece_end = min((start // SECTOR + 1) * SECTOR, stop)
        if buf.count(0, start, piece_end) == piece_end - start:
            return True
        start = piece_end
    return False


class WAL:
    """Use: `open`, iterate `replay()` to the end, then `write` / `sync`."""

    def __init__(self, data_dir: Path, disk: Disk, segment_bytes: int,
                 identity: Identity) -> None:
        self.dir = data_dir
        self.disk = disk
        self.fs = disk.fs
        self.segment_bytes = segment_bytes
        self.identity = identity
        self.segments: list[Segment] = []
        self._fd: int | None = None
        self._dirty = False  # bytes written to the last segment since its last sync
        self.crc = 0  # the crc of the last record: the seed of the next one

    @classmethod
    def open(cls, data_dir: Path, disk: Disk, segment_bytes: int,
             identity: Identity) -> WAL:
        wal = cls(data_dir, disk, segment_bytes, identity)
        seqs = sorted(
            int(m.group(1)) for n in disk.fs.listdir(data_dir)
            if (m := _SEGMENT_NAME.fullmatch(n))
        )
        for prev, seq in zip(seqs, seqs[1:], strict=False):
            if seq != prev + 1:
                missing = data_dir / segment_name(prev + 1)
                raise StorageCorruptError(missing, 0, "WAL segment missing", data_dir)
        wal.segments = [Segment(s, data_dir / segment_name(s)) for s in seqs]
        return wal

    def corrupt(self, path: Path, offset: int, problem: str) -> StorageCorruptError:
        return StorageCorruptError(path, offset, problem, self.dir)

    def replay(self) -> Iterator[tuple[Segment, int, RecordType, bytes]]:
        """Yield (segment, offset, type, payload) of every record in order, then open the
        last segment for appending. A torn tail of the last segment is truncated (a copy
        kept); any other damage raises StorageCorruptError, with `self.crc` and each
        segment's `size` describing the records before it."""
        prev: Segment | None = None
        for seg in self.segments:
            buf = self.disk.read_verified(seg.path)
            seg.allocated = len(buf)
            if seg.version == 1:
                yield from self._replay_v1(seg, buf)
                prev = seg
                continue
            try:
                hdr = SegmentHeader.decode(buf)
            except FrameError as exc:
                raise self.corrupt(seg.path, 0, str(exc)) from None
            self._check_header(seg, hdr, prev)
            seg.first_index = hdr.first_index
            self.crc = hdr.prev_crc
            off = seg.size = SEGMENT_HEADER_SIZE
            while off < len(buf):
                try:
                    rtype, payload, end, crc = read_frame(buf, off, self.crc)
                except FrameError as exc:
                    if buf.count(0, off) == len(buf) - off:
                        break  # the preallocated tail: the records end here
                    self._torn_or_corrupt(seg, buf, off, exc)
                    break
                yield seg, off, rtype, payload
                self.crc = crc
                off = seg.size = end
            prev = seg
        self.open_last()

    def _replay_v1(self, seg: Segment, buf: bytes) -> Iterator[tuple[Segment, int,
                                                                      RecordType, bytes]]:
        off = 0
        while off < len(buf):
            try:
                rtype, payload, end = read_frame_v1(buf, off)
            except FrameError as exc:
                if buf.count(0, off) == len(buf) - off:
                    break
                self._torn_or_corrupt(seg, buf, off, exc)
                break
            yield seg, off, rtype, payload
            off = seg.size = end

    def _check_header(self, seg: Segment, hdr: SegmentHeader, prev: Segment | None) -> None:
        if hdr.seq != seg.seq:
            raise self.corrupt(seg.path, 0, f"segment header says sequence {hdr.seq}")
        mine, theirs = self.identity, hdr.identity
        for what, want, got in (("cluster", mine.cluster_id, theirs.cluster_id),
                                ("node", mine.node_id, theirs.node_id)):
            if want and got and want != got:
                raise self.corrupt(seg.path, 0, f"segment belongs to {what} {got:x}, "
                                   f"this data dir to {want:x}")
        if prev is not None and prev.version == 2 and hdr.prev_crc != self.crc:
            raise self.corrupt(prev.path, prev.size,
                               f"records end here, but {seg.path.name} continues from "
                               "another record: the segment lost its tail")

    def _torn_or_corrupt(self, seg: Segment, buf: bytes, off: int, exc: FrameError) -> None:
        if seg is not self.segments[-1]:
            raise self.corrupt(seg.path, off, f"{exc} (not at the end of the log)")
        if not looks_torn(buf, off, exc.end):
            raise self.corrupt(seg.path, off, f"{exc}, and no sign of a torn write")
        # The tail of a write cut short by a crash: never synced (a sync covers whole
        # writes), so never acknowledged.
        kept = self.keep_broken(seg.path, buf)
        log.warning("truncating torn tail of %s at offset %d (%s; %d bytes dropped; the "
                    "file as found is kept as %s)", seg.path, off, exc, len(buf) - off,
                    kept.name)
        self.truncate_segment(seg, off)

    def keep_broken(self, path: Path, buf: bytes) -> Path:
        """A durable copy of a damaged file, `<name>.broken` (a number added if taken)."""
        names = set(self.fs.listdir(self.dir))
        name, k = f"{path.name}.broken", 1
        while name in names:
            name, k = f"{path.name}.broken.{k}", k + 1
        self.disk.write_atomic(path.with_name(name), [buf])
        return path.with_name(name)

    def truncate_segment(self, seg: Segment, off: int) -> None:
        fd = self.fs.open(seg.path)
        try:
            self.fs.ftruncate(fd, off)
            self.disk.sync_data(fd)
        finally:
            self.fs.close(fd)
        seg.size = seg.allocated = off

    def drop_after(self, seg: Segment) -> list[Path]:
        """Delete every segment after `seg` (a copy of each kept), newest first so that a
        crash midway leaves consecutive numbers; returns the copies."""
        later = [s for s in self.segments if s.seq > seg.seq]
        kept = []
        for s in reversed(later):
            kept.append(self.keep_broken(s.path, self.fs.read(s.path)))
            self.fs.unlink(s.path)
        self.segments = [s for s in self.segments if s.seq <= seg.seq]
        if later:
            self.disk.sync_dir(self.dir)
        return kept

    def open_last(self, first_index: int = 1) -> None:
        """Append to the last segment from now on (a new first one if there is none)."""
        if not self.segments:
            self.create_segment(1, first_index)
            return
        seg = self.segments[-1]
        self._fd = self.fs.open(seg.path)

    def create_segment(self, seq: int, first_index: int, *, temp: bool = False) -> Segment:
        """A new last segment whose header is durable, appended to (and closing) the
        current one. It is made under a `.tmp` name and renamed once its header is
        durable, so that a crash never leaves a segment without one (a directory entry
        may reach the disk before the file's data does). With `temp` it keeps the
        `.tmp` name, for `publish`."""
        final = self.dir / segment_name(seq)
        if self.fs.exists(final):
            raise FileExistsError(f"{final} exists")
        path = final.with_name(final.name + ".tmp")
        fd = self.fs.open(path, create=True, truncate=True)
        hdr = SegmentHeader(self.identity, seq, first_index, self.crc)
        self.disk.write_all(fd, hdr.encode(), 0)
        self.disk.sync_data(fd)
        if self._fd is not None:
            self.fs.close(self._fd)
        self._fd = fd
        seg = Segment(seq, path, SEGMENT_HEADER_SIZE, SEGMENT_HEADER_SIZE,
                      first_index=first_index)
        self.segments.append(seg)
        if not temp:
            self.publish(seg)
        return seg

    def publish(self, seg: Segment) -> None:
        """Give a synced `.tmp` segment its real name."""
        final = self.dir / segment_name(seg.seq)
        self.fs.rename(seg.path, final)
        self.disk.sync_dir(self.dir)
        seg.path = final

    def _rotate(self, first_index: int) -> None:
        assert self._fd is not None
        if self._dirty:
            self.disk.sync_data(self._fd)  # keeps "only the last segment can be torn"
            self._dirty = False
        self.create_segment(self.segments[-1].seq + 1, first_index)

    def write(self, records: Sequence[Record], max_index: int, last_index: int) -> None:
        """Append `records` to the last segment, rotating first if they would grow it
        past segment_bytes. Durable only after `sync`. `last_index`: the log's last index
        before these records."""
        seg = self.segments[-1]
        blob, crc = frame_all(records, self.crc)
        if seg.size > SEGMENT_HEADER_SIZE and seg.size + len(blob) > self.segment_bytes:
            self._rotate(last_index + 1)
            seg = self.segments[-1]
        end = seg.size + len(blob)
        if end > seg.allocated:
            self._preallocate(seg, end)
        self.disk.write_all(self._fd, blob, seg.size)
        self.crc = crc
        seg.size = end
        if max_index > seg.max_index:
            seg.max_index = max_index
        self._dirty = True
        self.disk.records += len(records)

    def _preallocate(self, seg: Segment, end: int) -> None:
        """Write zeros after `end` (where the pending append will end), up to one chunk
        past what was allocated, and never past the segment size. They become durable
        with the next sync, which then pays for the new file size once for a whole chunk."""
        start = max(end, seg.allocated)
        stop = min(seg.allocated + PREALLOCATE_BYTES, self.segment_bytes)
        while start < stop:
            start += self.fs.pwrite(self._fd, memoryview(_ZEROS)[: stop - start], start)
        seg.allocated = max(start, end)

    def sync(self) -> None:
        """Everything written so far is durable on return (one fdatasync, if any)."""
        if self._dirty:
            self.disk.sync_data(self._fd)
            self._dirty = False

    def first_needed_seq(self, snapshot_index: int) -> int:
        """The oldest segment holding anything a snapshot at `snapshot_index` does not
        cover; never past the last segment."""
        for seg in self.segments[:-1]:
            if seg.max_index > snapshot_index:
                return seg.seq
        return self.segments[-1].seq

    def drop_before(self, seq: int) -> int:
        """Delete segments numbered below `seq`, oldest first, so that a crash midway still
        leaves consecutive numbers. Returns how many were deleted."""
        doomed = [s for s in self.segments if s.seq < seq]
        if doomed:
            self.segments = self.segments[len(doomed) :]
            self.disk.discard([s.path for s in doomed], self.dir)
        return len(doomed)

    def close(self) -> None:
        if self._fd is not None:
            self.fs.close(self._fd)
            self._fd = None
