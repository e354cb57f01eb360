"""Reading WAL segment files in tests: where their records start and end. A segment's
file runs on past its records with preallocated zeros, so its size is not where they end."""

from pathlib import Path

from raftkv.storage.record import FrameError, read_frame
from raftkv.storage.wal import SEGMENT_HEADER_SIZE, SegmentHeader


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("wal-*.log"))


def record_offsets(seg: Path) -> list[int]:
    """Where each record of `seg` starts."""
    return _walk(seg.read_bytes())[0]


def records_end(seg: Path) -> int:
    """Where the records of `seg` end."""
    return _walk(seg.read_bytes())[1]


def last_crc(seg: Path) -> int:
    """The crc of the last record of `seg`: what the next record chains to."""
    return _walk(seg.read_bytes())[2]


def _walk(buf: bytes) -> tuple[list[int], int, int]:
    """The records' start offsets, where the last one ends, and its crc."""
    crc = SegmentHeader.decode(buf).prev_crc
    off, starts = SEGMENT_HEADER_SIZE, []
    while off < len(buf):
        try:
            end, next_crc = read_frame(buf, off, crc)[2:]
        except FrameError:
            break
        starts.append(off)
        off, crc = end, next_crc
    return starts, off, crc
