"""WAL record framing and the payload codec of each record type.

A record on disk::

    u32 length      of payload, little endian
    u32 crc         zlib.crc32 over the type byte followed by the payload
    u8  type        RecordType
    payload         msgpack, `length` bytes

Records never span segment files. Payloads by type:

    ENTRIES     [first_index, [term, type, data, term, type, data, ...]]   indexes contiguous
    HARD_STATE  [term, vote, commit]
    TRUNCATE    [index]         drops every entry >= index
    SNAPSHOT    [index, term, keep_suffix, first_seq]   see SnapshotMarker
"""

from __future__ import annotations

import re
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


HEADER = struct.Struct("<IIB")
HEADER_SIZE = HEADER.size
_TYPE_CRC = {t: zlib.crc32(bytes([t])) for t in RecordType}
_ENTRY_TYPES = {int(t): t for t in EntryType}
# Any byte that may sit at offset 8 of a valid header: used to look for valid records
# after a bad one without trying every offset in Python.
_TYPE_BYTE = re.compile(b"[" + bytes([min(RecordType)]) + b"-" + bytes([max(RecordType)]) + b"]")


class FrameError(Exception):
    """The bytes at an offset are not a valid record; the message says why."""


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


def frame(rtype: RecordType, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload, _TYPE_CRC[rtype]), rtype) + payload


def read_frame(buf: bytes, off: int) -> tuple[RecordType, bytes, int]:
    """The record at `off`: (type, payload, offset just past it). FrameError if invalid."""
    if off + HEADER_SIZE > len(buf):
        raise FrameError(f"incomplete header ({len(buf) - off} of {HEADER_SIZE} bytes)")
    length, crc, rtype = HEADER.unpack_from(buf, off)
    if rtype not in _TYPE_CRC:
        raise FrameError(f"unknown record type {rtype}")
    start = off + HEADER_SIZE
    end = start + length
    if end > len(buf):
        raise FrameError(f"record of {length} bytes runs past the end of the file")
    payload = buf[start:end]
    if zlib.crc32(payload, _TYPE_CRC[rtype]) != crc:
        raise FrameError("CRC mismatch")
    return RecordType(rtype), payload, end


def find_frame(buf: bytes, start: int) -> int | None:
    """Offset of the first valid record beginning at or after `start`, or None."""
    for m in _TYPE_BYTE.finditer(buf, start + HEADER_SIZE - 1):
        off = m.start() - (HEADER_SIZE - 1)
        try:
            read_frame(buf, off)
        except FrameError:
            continue
        return off
    return None


def encode_entries(entries: Sequence[Entry]) -> bytes:
    """One framed record for a batch; caller guarantees indexes are contiguous."""
    flat: list[object] = []
    for e in entries:
        flat += (e.term, e.type, e.data)
    return frame(RecordType.ENTRIES, msgpack.packb([entries[0].index, flat]))


def encode_hard_state(hs: HardState) -> bytes:
    return frame(RecordType.HARD_STATE, msgpack.packb([hs.term, hs.vote, hs.commit]))


def encode_truncate(index: int) -> bytes:
    return frame(RecordType.TRUNCATE, msgpack.packb([index]))


def encode_snapshot_marker(m: SnapshotMarker) -> bytes:
    payload = msgpack.packb([m.index, m.term, m.keep_suffix, m.first_seq])
    return frame(RecordType.SNAPSHOT, payload)


def _unpack(payload: bytes, n: int) -> list:
    try:
        obj = msgpack.unpackb(payload)
    except Exception as exc:  # msgpack raises several unrelated types
        raise FrameError(f"undecodable payload ({exc})") from exc
    if not isinstance(obj, list) or len(obj) != n:
        raise FrameError(f"payload is not a list of {n} items")
    return obj


def decode_entries(payload: bytes) -> list[Entry]:
    first, flat = _unpack(payload, 2)
    if not isinstance(first, int) or not isinstance(flat, list) or not flat or len(flat) % 3:
        raise FrameError("malformed entries payload")
    try:
        return [
            Entry(flat[k], first + k // 3, _ENTRY_TYPES[flat[k + 1]], flat[k + 2])
            for k in range(0, len(flat), 3)
        ]
    except KeyError as exc:
        raise FrameError(f"unknown entry type {exc}") from exc


def decode_hard_state(payload: bytes) -> HardState:
    term, vote, commit = _unpack(payload, 3)
    return HardState(term, vote, commit)


def decode_truncate(payload: bytes) -> int:
    (index,) = _unpack(payload, 1)
    return index


def decode_snapshot_marker(payload: bytes) -> SnapshotMarker:
    index, term, keep_suffix, first_seq = _unpack(payload, 4)
    return SnapshotMarker(index, term, bool(keep_suffix), first_seq)
