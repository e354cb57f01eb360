"""Reading WAL segment files in tests: where their records start and end. A segment's
file runs on past its records with preallocated zeros, so its size is not where they end."""

from pathlib import Path

from raftkv.storage.record import FrameError, read_frame


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("wal-*.log"))


def record_offsets(seg: Path) -> list[int]:
    """Where each record of `seg` starts."""
    return _walk(seg.read_bytes())[0]


def records_end(seg: Path) -> int:
    """Where the records of `seg` end."""
    return _walk(seg.read_bytes())[1]


def _walk(buf: bytes) -> tuple[list[int], int]:
    """The records' start offsets, and where the last one ends."""
    off, starts = 0, []
    while off < len(buf):
        try:
            end = read_frame(buf, off)[2]
        except FrameError:
            break
        starts.append(off)
        off = end
    return starts, off
