"""Moving snapshot bytes between nodes in bounded chunks (InstallSnapshot, paper §7).

The Raft core only says "send node N our snapshot" (a SNAP message with its metadata);
`SnapshotSender` turns that into chunks of at most `MAX_SNAPSHOT_CHUNK` bytes read from
storage. `SnapshotReceiver` puts chunks back together; a chunk that does not continue
what it holds (lost, reordered, a leader change, a restart in the middle) makes it start
over, and the leader re-sends the whole snapshot after its wait times out.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from raftkv.raft import Message, MsgType, SnapshotMeta
from raftkv.wire import MAX_SNAPSHOT_CHUNK, SnapshotChunk


class SnapshotSender:
    def __init__(self, load: Callable[[SnapshotMeta], bytes],
                 chunk_size: int = MAX_SNAPSHOT_CHUNK) -> None:
        self.load = load
        self.chunk_size = chunk_size
        # The last snapshot sent, its bytes and their CRC32: a snapshot is immutable, so
        # a re-send (a retry, another follower) reads and checksums it once.
        self._cached: tuple[SnapshotMeta, bytes, int] | None = None

    def chunks(self, m: Message) -> list[SnapshotChunk]:
        """The chunks that carry the snapshot of SNAP message `m`."""
        meta = m.snapshot
        if self._cached is None or self._cached[0] != meta:
            data = self.load(meta)
            self._cached = (meta, data, zlib.crc32(data))
        _, data, crc = self._cached
        total = len(data)
        return [SnapshotChunk(m.to, m.frm, m.term, meta, off, total, crc,
                              data[off:off + self.chunk_size])
                for off in range(0, max(total, 1), self.chunk_size)]


class SnapshotReceiver:
    def __init__(self) -> None:
        self._partial: dict[int, tuple[SnapshotChunk, bytearray]] = {}  # sender -> progress
        self.completed: dict[SnapshotMeta, bytes] = {}
        self.restarts = 0

    def receive(self, c: SnapshotChunk) -> Message | None:
        """Take one chunk; returns the SNAP message to step once the snapshot is whole."""
        held = self._partial.get(c.frm)
        if c.offset == 0:
            if held is not None:
                self.restarts += 1
            held = (c, bytearray())
            self._partial[c.frm] = held
        elif held is None or held[0].meta != c.meta or held[0].total != c.total \
                or len(held[1]) != c.offset:
            self._partial.pop(c.frm, None)  # a gap: wait for the leader to start over
            self.restarts += 1
            return None
        held[1].extend(c.data)
        if len(held[1]) < c.total:
            return None
        del self._partial[c.frm]
        self.completed[c.meta] = bytes(held[1])
        return Message(MsgType.SNAP, c.to, c.frm, c.term, snapshot=c.meta)

    def take(self, meta: SnapshotMeta) -> bytes:
        """The bytes of a completed snapshot the core asked us to install."""
        data = self.completed.pop(meta)
        self.completed.clear()  # older ones are of no use any more
        return data
