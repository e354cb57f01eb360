"""Moving snapshot bytes between nodes in bounded chunks (InstallSnapshot, paper §7).

The Raft core only says "send node N our snapshot" (a SNAP message with its metadata);
`SnapshotSender` turns that into chunks of at most `MAX_SNAPSHOT_CHUNK` bytes, read from
the snapshot file a few per loop turn, each carrying the CRC32 of the whole snapshot.
`SnapshotReceiver` puts chunks back together by offset, in whatever order they come
(Raft assumes a network that loses,
duplicates and reorders messages, paper §5.1): a duplicate is ignored, and a chunk that
was lost is filled in by the leader's next send of the same snapshot, which it makes
after its wait times out; nothing received of that snapshot is thrown away meanwhile. A
whole snapshot reaches the core only once its bytes match the checksum and the node's
check of them (a restore into a scratch state machine) passed: storage and the state
machine are replaced only by a snapshot known to be good.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from raftkv.kv import SnapshotError
from raftkv.raft import InvariantViolation, Message, MsgType, SnapshotMeta
from raftkv.wire import MAX_SNAPSHOT_CHUNK, SnapshotChunk

log = logging.getLogger("raftkv.snapshots")

S = TypeVar("S")  # what a receiver's `validate` makes of a snapshot's bytes


class ChunkSource(Protocol):
    """A snapshot's data, read a range at a time (raftkv.storage's SnapshotSource)."""

    size: int
    checksum: int  # zlib.crc32 of the whole data

    def read(self, start: int, n: int) -> bytes: ...


@dataclass(slots=True)
class _Transfer:
    msg: Message  # the SNAP message whose snapshot goes to msg.to
    source: ChunkSource
    offset: int = 0  # the next byte to send


class SnapshotSender:
    """Streams snapshots to followers. `start(m)` begins sending SNAP message m's
    snapshot to m.to; `pump(budget)` returns the next chunks of every transfer under
    way, about `budget` bytes in all, taking turns. A loop turn pumps one budget, so a
    large snapshot never stops the loop for its size: it is read from the file a range
    at a time, never whole."""

    def __init__(self, open_source: Callable[[SnapshotMeta], ChunkSource],
                 chunk_size: int = MAX_SNAPSHOT_CHUNK) -> None:
        self.open_source = open_source
        self.chunk_size = chunk_size
        self._transfers: dict[int, _Transfer] = {}  # follower -> its transfer
        # The last snapshot opened: a snapshot is immutable, so every send of it (a
        # retry, another follower) reads the one source.
        self._source: tuple[SnapshotMeta, ChunkSource] | None = None

    @property
    def active(self) -> bool:
        """Whether chunks remain to be sent."""
        return bool(self._transfers)

    def start(self, m: Message) -> None:
        """Send SNAP message m's snapshot to m.to. A transfer of the same snapshot to
        that node that is still under way goes on from where it is (the core asks again
        while a large one streams); anything else starts from its first byte, and the
        receiver fills in what it lacks."""
        meta = m.snapshot
        under_way = self._transfers.get(m.to)
        if under_way is not None and under_way.msg.snapshot == meta:
            under_way.msg = m
            return
        if self._source is None or self._source[0] != meta:
            self._source = (meta, self.open_source(meta))
        self._transfers[m.to] = _Transfer(m, self._source[1])

    def pump(self, budget: int) -> list[SnapshotChunk]:
        """The next chunks, about `budget` bytes over all transfers. A transfer whose
        file can no longer be read (a newer snapshot replaced it) is dropped and logged;
        the core asks again for the newer one."""
        out: list[SnapshotChunk] = []
        sent = 0
        while self._transfers and sent < budget:
            for to, t in list(self._transfers.items()):
                m, source = t.msg, t.source
                n = min(self.chunk_size, source.size - t.offset)
                try:
                    data = source.read(t.offset, n) if n > 0 else b""
                    if len(data) != n:
                        raise OSError(f"{n} bytes asked, {len(data)} read")
                except OSError as e:
                    log.warning("snapshot at index %d to node %d dropped at byte %d: %s",
                                m.snapshot.index, to, t.offset, e)
                    del self._transfers[to]
                    continue
                out.append(SnapshotChunk(m.to, m.frm, m.term, m.snapshot, t.offset,
                                         source.size, source.checksum, data))
                t.offset += n
                sent += max(n, 1)
                if t.offset >= source.size:
                    del self._transfers[to]
        return out


@dataclass(slots=True)
class AcceptedSnapshot(Generic[S]):
    """A whole snapshot whose bytes matched their checksum and passed `validate`."""

    meta: SnapshotMeta
    data: bytes
    state: S  # what `validate` built from `data` (the node: a restored scratch KVStore)


@dataclass(slots=True)
class _Partial:
    """The pieces of one snapshot received so far from one sender. Every chunk of a
    transfer carries the same (meta, total, checksum); its sends may interleave."""

    first: SnapshotChunk  # the transfer's identity
    term: int  # the highest term the sender sent it in
    pieces: dict[int, bytes] = field(default_factory=dict)  # offset -> data
    held: int = 0  # bytes in `pieces`

    def same_transfer(self, c: SnapshotChunk) -> bool:
        return c.meta == self.first.meta and c.total == self.first.total


class SnapshotReceiver(Generic[S]):
    """Reassembles snapshots and checks them before the core hears of one.

    A whole snapshot is accepted only if its bytes have the CRC32 its chunks carry and
    `validate(meta, data)` returns (it raises kv.SnapshotError to refuse); anything else
    is dropped, counted in `rejected` and logged, and the leader re-sends after its wait.

    Invariant: at most one accepted snapshot is held, from the SNAP message `receive`
    returns until the core installs it (`take`) or ignores it (`drop`). A snapshot that
    completes meanwhile is dropped unchecked; the leader re-sends it if still needed.
    At most one partial snapshot is kept per sender: the newest it sent (a late chunk of
    an older one is ignored, unless it comes from a later term of the sender).
    """

    def __init__(self, validate: Callable[[SnapshotMeta, bytes], S]) -> None:
        self.validate = validate
        self._partial: dict[int, _Partial] = {}  # sender -> progress
        self._held: AcceptedSnapshot[S] | None = None
        self.restarts = 0  # partial transfers given up for a newer one
        self.rejected = 0  # whole or partial transfers refused: checksum or `validate`

    @property
    def held(self) -> SnapshotMeta | None:
        """The accepted snapshot held for the core, if any."""
        return None if self._held is None else self._held.meta

    def receive(self, c: SnapshotChunk) -> Message | None:
        """Take one chunk; returns the SNAP message to step once the snapshot is whole
        and accepted."""
        assembled = self._assemble(c)
        if assembled is None:
            return None
        data, term = assembled
        if self._held is not None:
            log.info("snapshot at index %d from node %d dropped: the one at index %d is "
                     "not installed yet", c.meta.index, c.frm, self._held.meta.index)
            return None
        self._held = self._accept(c, data)
        if self._held is None:
            return None
        return Message(MsgType.SNAP, c.to, c.frm, term, snapshot=c.meta)

    def _assemble(self, c: SnapshotChunk) -> tuple[bytes, int] | None:
        """The whole snapshot, and the highest term it was sent in, once `c` completes
        it; None before, or if `c` ends the transfer (a checksum that contradicts the
        transfer's, pieces that do not fit together)."""
        p = self._partial.get(c.frm)
        if p is None or not p.same_transfer(c):
            if p is not None:
                if c.meta.index < p.first.meta.index and c.term <= p.term:
                    return None  # a late chunk of a transfer the sender moved on from
                self.restarts += 1
            p = self._partial[c.frm] = _Partial(c, c.term)
        elif c.checksum != p.first.checksum:
            del self._partial[c.frm]
            self._reject(c, f"the chunk at offset {c.offset} carries checksum "
                            f"{c.checksum:#010x}, the first one {p.first.checksum:#010x}")
            return None
        p.term = max(p.term, c.term)
        if c.offset in p.pieces or c.offset + len(c.data) > c.total:
            return None  # a duplicate, or not a piece of these bytes
        p.pieces[c.offset] = c.data
        p.held += len(c.data)
        if p.held < c.total:
            return None
        del self._partial[c.frm]
        pieces = sorted(p.pieces.items())
        end = 0
        for offset, data in pieces:
            if offset != end:
                self.restarts += 1  # overlapping pieces: sent with another chunk size
                return None
            end += len(data)
        return b"".join(data for _, data in pieces), p.term

    def _accept(self, c: SnapshotChunk, data: bytes) -> AcceptedSnapshot[S] | None:
        crc = zlib.crc32(data)
        if crc != c.checksum:
            self._reject(c, f"its {len(data)} bytes have CRC32 {crc:#010x}, the sender's "
                            f"is {c.checksum:#010x}")
            return None
        try:
            state = self.validate(c.meta, data)
        except SnapshotError as e:
            self._reject(c, str(e))
            return None
        return AcceptedSnapshot(c.meta, data, state)

    def _reject(self, c: SnapshotChunk, reason: str) -> None:
        self.rejected += 1
        log.warning("snapshot at index %d (term %d) from node %d rejected: %s", c.meta.index,
                    c.meta.term, c.frm, reason)

    def take(self, meta: SnapshotMeta) -> AcceptedSnapshot[S]:
        """The accepted snapshot `meta`, which the core asked us to install; released."""
        held = self._held
        if held is None or held.meta != meta:
            raise InvariantViolation(f"asked to install snapshot {meta}, but the one held "
                                     f"is {self.held}")
        self._held = None
        return held

    def drop(self, meta: SnapshotMeta) -> S | None:
        """The core ignored snapshot `meta` (stale or duplicate): release its bytes now,
        and hand back its state for the caller to discard (None if it was not held)."""
        if self.held != meta:
            return None
        held, self._held = self._held, None
        assert held is not None
        return held.state
