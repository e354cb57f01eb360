"""WAL record framing and the payload codec of each record type.

Format 2 (written now). Every record starts at a multiple of 8 bytes from the start of
its segment, so its first 8 bytes (the length) never straddle a 512-byte sector and can
never be torn::

    u32 length      of payload, little endian
    u8  type        RecordType
    u8  pad         zero bytes after the payload, so the record's size is a multiple of 8
    u16 reserved    0
    u32 crc         zlib.crc32 over the first 8 bytes and the payload, seeded with the
                    previous record's crc (the segment header's prev_crc for a segment's
                    first record): a rolling checksum, as etcd's WAL keeps
    payload         msgpack, `length` bytes
    pad             `pad` zero bytes

Format 1 (read only, to upgrade a data dir) had no alignment and no chain::

    u32 length, u32 crc (zlib.crc32 over the type byte and the payload), u8 type, payload

Records never span segment files. Payloads by type:

    ENTRIES     [first_index, [term, type, data, term, type, data, ...]]   indexes contiguous
    HARD_STATE  [term, vote, commit]
    TRUNCATE    [index]         drops every entry >= index
    SNAPSHOT    [index, term, keep_suffix, first_seq]   see SnapshotMarker
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import msgpack

from raftkv.raft.types import Entry, EntryType, HardState


class RecordType(IntEnum):
    ENTRIES = 1
    HARD_STATE = 2
    SNAPSHOT = 3
    TRUNCATE = 4


Record = tuple[RecordType, bytes]  # a type and its payload, not yet framed

ALIGN = 8
HEAD = struct.Struct("<IBBH")  # length, type, pad, reserved: the 8 bytes never torn
HEADER = struct.Struct("<IBBHI")  # ... then the crc
HEADER_SIZE = HEADER.size
_TYPES = {int(t): t for t in RecordType}
_ENTRY_TYPES = {int(t): t for t in EntryType}
_PADS = [bytes(n) for n in range(ALIGN)]

V1_HEADER = struct.Struct("<IIB")
V1_HEADER_SIZE = V1_HEADER.size
_V1_TYPE_CRC = {t: zlib.crc32(bytes([t])) for t in RecordType}
# No record is larger: a length past it is damage, never a record torn by a power cut.
MAX_RECORD_BYTES = 1 << 30


class FrameError(Exception):
    """The bytes at an offset are not a valid record; the message says why. `end` is
    where the record would end if its length field is to be believed, None if it says
    nothing (a header of zeros, or cut short)."""

    def __init__(self, problem: str, end: int | None = None) -> None:
        super().__init__(problem)
        self.end = end


@dataclass(slots=True, frozen=True)
class SnapshotMarker:
    """A snapshot covering the log up to `index` (term `term`) is durable. Replay drops
    every entry <= index, and every entry > index too unless `keep_suffix` (the entry at
    `index` had term `term`, so what follows it is a valid continuation).
    `first_seq`: every WAL segment with a sequence number >= first_seq must exist."""

    index: int
    term: int
    keep_suffix: bool
    first_seq: int


# ---- format 2 framing --------------------------------------------------------------------


def frame(rtype: RecordType, payload: bytes, prev_crc: int) -> tuple[bytes, int]:
    """The record's bytes and its crc (the next record's seed)."""
    n = len(payload)
    if n > MAX_RECORD_BYTES:
        raise ValueError(f"a record of {n} bytes is over the {MAX_RECORD_BYTES}-byte limit")
    pad = -(HEADER_SIZE + n) % ALIGN
    head = HEAD.pack(n, rtype, pad, 0)
    crc = zlib.crc32(payload, zlib.crc32(head, prev_crc))
    return head + crc.to_bytes(4, "little") + payload + _PADS[pad], crc


def frame_all(records: Sequence[Record], prev_crc: int) -> tuple[bytes, int]:
    parts = []
    for rtype, payload in records:
        blob, prev_crc = frame(rtype, payload, prev_crc)
        parts.append(blob)
    return b"".join(parts), prev_crc


def read_frame(buf: bytes, off: int, prev_crc: int) -> tuple[RecordType, bytes, int, int]:
    """The record at `off` (a multiple of 8): (type, payload, offset past it, its crc).
    FrameError if it is not a valid record chained to `prev_crc`."""
    if off + HEADER_SIZE > len(buf):
        raise FrameError(f"incomplete header ({len(buf) - off} of {HEADER_SIZE} bytes)",
                         off + HEADER_SIZE)
    length, rtype, pad, reserved, crc = HEADER.unpack_from(buf, off)
    if length == 0 and rtype == 0:
        raise FrameError("a record header of zeros")
    if length > MAX_RECORD_BYTES:
        raise FrameError(f"record length {length} is over the limit")
    end = off + HEADER_SIZE + length + pad
    if rtype not in _TYPES:
        raise FrameError(f"unknown record type {rtype}", end)
    if pad != -(HEADER_SIZE + length) % ALIGN or reserved:
        raise FrameError(f"malformed record header (pad {pad}, reserved {reserved})", end)
    if end > len(buf):
        raise FrameError(f"record of {length} bytes runs past the end of the file", end)
    start = off + HEADER_SIZE
    payload = buf[start : start + length]
    head = buf[off : off + HEAD.size]
    if zlib.crc32(payload, zlib.crc32(head, prev_crc)) != crc:
        raise FrameError("CRC mismatch", end)
    if pad and buf[start + length : end] != _PADS[pad]:
        raise FrameError("non-zero padding", end)
    return _TYPES[rtype], payload, end, crc


# ---- format 1 framing (read only) --------------------------------------------------------


def frame_v1(rtype: RecordType, payload: bytes) -> bytes:
    """A format-1 record: only for tests that make format-1 data dirs to upgrade."""
    return V1_HEADER.pack(len(payload), zlib.crc32(payload, _V1_TYPE_CRC[rtype]),
                          rtype) + payload


def read_frame_v1(buf: bytes, off: int) -> tuple[RecordType, bytes, int]:
    """The format-1 record at `off`: (type, payload, offset just past it)."""
    if off + V1_HEADER_SIZE > len(buf):
        raise FrameError(f"incomplete header ({len(buf) - off} of {V1_HEADER_SIZE} bytes)",
                         off + V1_HEADER_SIZE)
    length, crc, rtype = V1_HEADER.unpack_from(buf, off)
    end = off + V1_HEADER_SIZE + length
    if length == 0 and crc == 0 and rtype == 0:
        raise FrameError("a record header of zeros")
    if rtype not in _V1_TYPE_CRC:
        raise FrameError(f"unknown record type {rtype}", end)
    if end > len(buf):
        raise FrameError(f"record of {length} bytes runs past the end of the file", end)
    payload = buf[off + V1_HEADER_SIZE : end]
    if zlib.crc32(payload, _V1_TYPE_CRC[rtype]) != crc:
        raise FrameError("CRC mismatch", end)
    return RecordType(rtype), payload, end


# ---- payloads -----------------------------------------------------------------------------


def entries_record(entries: Sequence[Entry]) -> Record:
    """One record for a batch; caller guarantees indexes are contiguous."""
    flat: list[object] = []
    for e in entries:
        flat += (e.term, e.type, e.data)
    return RecordType.ENTRIES, msgpack.packb([entries[0].index, flat])


def hard_state_record(hs: HardState) -> Record:
    return RecordType.HARD_STATE, msgpack.packb([hs.term, hs.vote, hs.commit])


def truncate_record(index: int) -> Record:
    return RecordType.TRUNCATE, msgpack.packb([index])


def snapshot_marker_record(m: SnapshotMarker) -> Record:
    return RecordType.SNAPSHOT, msgpack.packb([m.index, m.term, m.keep_suffix, m.first_seq])


def _unpack(payload: bytes, n: int) -> list:
    try:
        obj = msgpack.unpackb(payload)
    except Exception as exc:  # msgpack raises several unrelated types
        raise FrameError(f"undecodable payload ({exc})") from exc
    if not isinstance(obj, list) or len(obj) != n:
        raise FrameError(f"payload is not a list of {n} items")
    return obj


def _ints(*values: object) -> bool:
    return all(type(v) is int and v >= 0 for v in values)


def decode_entries(payload: bytes) -> list[Entry]:
    first, flat = _unpack(payload, 2)
    if not _ints(first) or not isinstance(flat, list) or not flat or len(flat) % 3:
        raise FrameError("malformed entries payload")
    try:
        entries = [
            Entry(flat[k], first + k // 3, _ENTRY_TYPES[flat[k + 1]], flat[k + 2])
            for k in range(0, len(flat), 3)
        ]
    except (KeyError, TypeError) as exc:
        raise FrameError(f"unknown entry type {exc}") from exc
    if not all(type(e.term) is int and type(e.data) is bytes for e in entries):
        raise FrameError("malformed entry in entries payload")
    return entries


def decode_hard_state(payload: bytes) -> HardState:
    term, vote, commit = _unpack(payload, 3)
    if not _ints(term, vote, commit):
        raise FrameError("malformed hard state payload")
    return HardState(term, vote, commit)


def decode_truncate(payload: bytes) -> int:
    (index,) = _unpack(payload, 1)
    if not _ints(index):
        raise FrameError("malformed truncate payload")
    return index


def decode_snapshot_marker(payload: bytes) -> SnapshotMarker:
    index, term, keep_suffix, first_seq = _unpack(payload, 4)
    if not _ints(index, term, first_seq):
        raise FrameError("malformed snapshot marker payload")
    return SnapshotMarker(index, term, bool(keep_suffix), first_seq)
