"""A second copy of the term and vote, outside the WAL (the `VOTE` file).

The WAL's newest HARD_STATE record is the one thing whose loss to damage could make a
node vote twice in a term: a repair that cuts the WAL at a corrupt record keeps the term
and vote from here (after Protocol-Aware Recovery, Alagappan et al., FAST '18). It
changes only when the term or vote does (elections), so it costs an fdatasync then and
nothing per write.

Two 512-byte slots, written alternately, so a torn write of one leaves the other::

    8s  magic b"RKVVOTE1"
    u64 seq     which write this is; the valid slot with the higher seq is current
    u64 term
    u64 vote
    u32 crc     zlib.crc32 of the 32 bytes before it
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from raftkv.storage.disk import Disk

MAGIC = b"RKVVOTE1"
SLOT = 512
_BODY = struct.Struct("<8sQQQ")
NAME = "VOTE"


def _encode(seq: int, term: int, vote: int) -> bytes:
    body = _BODY.pack(MAGIC, seq, term, vote)
    slot = body + zlib.crc32(body).to_bytes(4, "little")
    return slot + bytes(SLOT - len(slot))


def decode(buf: bytes) -> tuple[int, int, int] | None:
    """(seq, term, vote) of the current slot, None if neither slot is valid."""
    best = None
    for k in range(2):
        slot = buf[k * SLOT : k * SLOT + _BODY.size + 4]
        if len(slot) < _BODY.size + 4:
            continue
        body, crc = slot[: _BODY.size], int.from_bytes(slot[_BODY.size :], "little")
        if zlib.crc32(body) != crc:
            continue
        magic, seq, term, vote = _BODY.unpack(body)
        if magic == MAGIC and (best is None or seq > best[0]):
            best = (seq, term, vote)
    return best


class VoteFile:
    """Not thread-safe; owned like the WAL it shadows (write on the loop, sync where the
    WAL syncs)."""

    def __init__(self, path: Path, disk: Disk, seq: int, term: int, vote: int) -> None:
        self.path = path
        self.disk = disk
        self.seq = seq
        self.term = term
        self.vote = vote
        self._fd: int | None = disk.fs.open(path, create=True)
        self._dirty = False

    @classmethod
    def create(cls, path: Path, disk: Disk, term: int = 0, vote: int = 0) -> None:
        """A durable VOTE file holding `term` and `vote`."""
        disk.write_atomic(path, [bytes(SLOT), _encode(1, term, vote)])  # slot = seq % 2

    def write(self, term: int, vote: int) -> None:
        """Durable after the next `sync`."""
        if (term, vote) == (self.term, self.vote):
            return
        self.seq += 1
        self.disk.write_all(self._fd, _encode(self.seq, term, vote), (self.seq % 2) * SLOT)
        self.term, self.vote = term, vote
        self._dirty = True

    def sync(self) -> None:
        if self._dirty:
            self.disk.sync_data(self._fd)
            self._dirty = False

    def close(self) -> None:
        if self._fd is not None:
            self.disk.fs.close(self._fd)
            self._fd = None
