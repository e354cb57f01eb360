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

Where the pieces wait is the receiver's `Pieces`: in memory (`MemoryPieces`), or in a
temp file beside the node's log (`SpooledPieces`), so that a snapshot of gigabytes is
never in memory whole: a node's own file system hands the whole snapshot over as that
file, which the state machine restores from and storage copies into the snapshot file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from raftkv.kv import SnapshotError
from raftkv.raft import InvariantViolation, Message, MsgType, SnapshotMeta
from raftkv.storage.fs import OS_FS
from raftkv.wire import MAX_SNAPSHOT_CHUNK, SnapshotChunk

if TYPE_CHECKING:
    from raftkv.interfaces import SnapshotData

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
        self._sent: dict[int, _Transfer] = {}  # follower -> the last one sent it whole
        # The last snapshot opened: a snapshot is immutable, so every send of it (a
        # retry, another follower) reads the one source.
        self._source: tuple[SnapshotMeta, ChunkSource] | None = None

    @property
    def active(self) -> bool:
        """Whether chunks remain to be sent."""
        return bool(self._transfers)

    def start(self, m: Message, log_start: int = 0) -> bool:
        """Send SNAP message m's snapshot to m.to; returns whether a new transfer began.

        The leader may have taken a newer snapshot than the one it last sent that node.
        The older one is sent still, in m's term, whenever the follower can go on from
        the leader's log after installing it (its index at or after `log_start`, where
        that log begins): one still streaming goes on from where it is, and one that
        streamed whole but was not acknowledged is sent again, so that the receiver,
        which keeps what it got, fills in the chunks that were lost. Were it given up
        for each newer snapshot, a follower whose transfers take longer than the
        leader takes between snapshots would never catch up. (The leader keeps the
        files and the log after them: raftkv.replica's `snapshots_in_flight`.)
        Otherwise m's snapshot starts from its first byte."""
        meta = m.snapshot
        assert meta is not None
        under_way = self._transfers.get(m.to)
        if under_way is not None:
            sending = under_way.msg.snapshot
            assert sending is not None
            if sending == meta or log_start <= sending.index < meta.index:
                under_way.msg = dataclasses.replace(m, snapshot=sending)
                return False
        sent = self._sent.pop(m.to, None)
        if under_way is None and sent is not None:
            older = sent.msg.snapshot
            assert older is not None
            if log_start <= older.index <= meta.index and _readable(sent.source):
                self._transfers[m.to] = _Transfer(dataclasses.replace(m, snapshot=older),
                                                  sent.source)
                return True
        if self._source is None or self._source[0] != meta:
            self._source = (meta, self.open_source(meta))
        self._transfers[m.to] = _Transfer(m, self._source[1])
        return True

    def sending_to(self, to: int) -> SnapshotMeta | None:
        """The snapshot streaming to node `to`, if any."""
        t = self._transfers.get(to)
        return None if t is None else t.msg.snapshot

    def sending(self) -> set[int]:
        """The indexes of the snapshots streaming now."""
        return {t.msg.snapshot.index for t in self._transfers.values()
                if t.msg.snapshot is not None}

    def sent(self) -> dict[int, int]:
        """Follower -> the index of the last snapshot sent it whole (see `start`)."""
        return {to: t.msg.snapshot.index for to, t in self._sent.items()
                if t.msg.snapshot is not None}

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
                    t.offset = 0
                    self._sent[to] = t  # sent again if the core asks again (see start)
        return out


def _readable(source: ChunkSource) -> bool:
    """Whether the file behind `source` can still be read (a newer snapshot may have
    replaced it)."""
    try:
        source.read(0, 0)
    except OSError:
        return False
    return True


@dataclass(slots=True)
class AcceptedSnapshot(Generic[S]):
    """A whole snapshot whose bytes matched their checksum and passed `validate`."""

    meta: SnapshotMeta
    data: SnapshotData  # bytes, or a file that is the taker's to remove
    state: S  # what `validate` built from `data` (the node: a restored scratch KVStore)


class Pieces(Protocol):
    """Where the chunks of one transfer wait, by offset."""

    held: int  # bytes put so far

    def put(self, offset: int, data: bytes) -> None:
        """Keep `data` at `offset`; the receiver puts each offset once."""

    def has(self, offset: int) -> bool: ...

    def lengths(self) -> list[tuple[int, int]]:
        """(offset, length) of every piece, sorted by offset."""

    def crc32(self) -> int:
        """zlib.crc32 of the pieces in offset order."""

    def whole(self) -> SnapshotData:
        """The pieces joined; they are the caller's from then on."""

    def discard(self) -> None:
        """Free what the pieces hold; nothing else is called after."""


class MemoryPieces:
    def __init__(self) -> None:
        self.pieces: dict[int, bytes] = {}
        self.held = 0

    def put(self, offset: int, data: bytes) -> None:
        self.pieces[offset] = data
        self.held += len(data)

    def has(self, offset: int) -> bool:
        return offset in self.pieces

    def lengths(self) -> list[tuple[int, int]]:
        return sorted((o, len(d)) for o, d in self.pieces.items())

    def crc32(self) -> int:
        crc = 0
        for _, data in sorted(self.pieces.items()):
            crc = zlib.crc32(data, crc)
        return crc

    def whole(self) -> bytes:
        return b"".join(data for _, data in sorted(self.pieces.items()))

    def discard(self) -> None:
        self.pieces.clear()


SPOOL_READ = 4 << 20  # bytes of a spooled snapshot read at a time for its checksum


class SpooledPieces:
    """The pieces written at their offsets into the temp file `path` (the OS's file
    system: a node's); in memory, only their offsets. The CRC is summed as pieces come
    in order, and only what came out of order is read back for it. `whole` hands the
    file over. The name ends in `.tmp`, so a file a crash left behind is removed when
    storage next opens the dir."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = OS_FS.open(path, create=True, truncate=True)
        self.offsets: dict[int, int] = {}  # offset -> length
        self.held = 0
        self.summed, self.crc = 0, 0  # invariant: crc is zlib.crc32 of [0, summed)

    def put(self, offset: int, data: bytes) -> None:
        assert self.fd is not None
        view = memoryview(data)
        at = offset
        while view:
            n = OS_FS.pwrite(self.fd, view, at)
            view, at = view[n:], at + n
        self.offsets[offset] = len(data)
        self.held += len(data)
        if offset == self.summed:
            self.crc = zlib.crc32(data, self.crc)
            self.summed += len(data)

    def has(self, offset: int) -> bool:
        return offset in self.offsets

    def lengths(self) -> list[tuple[int, int]]:
        return sorted(self.offsets.items())

    def crc32(self) -> int:
        crc = self.crc
        for at in range(self.summed, self.held, SPOOL_READ):
            crc = zlib.crc32(OS_FS.read_range(self.path, at, min(SPOOL_READ,
                                                                self.held - at)), crc)
        return crc

    def whole(self) -> Path:
        self._close()
        return self.path

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._close()
        with contextlib.suppress(OSError):
            OS_FS.unlink(self.path)

    def _close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            OS_FS.close(fd)


def discard_data(data: SnapshotData) -> None:
    """Free snapshot data that nothing will use: remove a handed-over file."""
    if isinstance(data, Path):
        data.unlink(missing_ok=True)


class _Partial:
    """The pieces of one snapshot received so far from one sender. Every chunk of a
    transfer carries the same (meta, total, checksum); its sends may interleave."""

    __slots__ = ("first", "term", "pieces")

    def __init__(self, first: SnapshotChunk, pieces: Pieces) -> None:
        self.first = first  # the transfer's identity
        self.term = first.term  # the highest term the sender sent it in
        self.pieces = pieces

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

    def __init__(self, validate: Callable[[SnapshotMeta, SnapshotData], S],
                 new_pieces: Callable[[SnapshotChunk], Pieces] = lambda _: MemoryPieces(),
                 ) -> None:
        self.validate = validate
        self.new_pieces = new_pieces
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
        if self._held is not None and c.meta == self._held.meta:
            return None  # a resend of the snapshot already accepted: nothing to add
        try:
            assembled = self._assemble(c)
        except OSError as e:  # the spool's disk (full, failing): this transfer only
            p = self._partial.pop(c.frm, None)
            if p is not None:
                p.pieces.discard()
            self._reject(c, f"its chunks could not be kept: {e}")
            return None
        if assembled is None:
            return None
        pieces, term = assembled
        if self._held is not None:
            pieces.discard()
            log.info("snapshot at index %d from node %d dropped: the one at index %d is "
                     "not installed yet", c.meta.index, c.frm, self._held.meta.index)
            return None
        self._held = self._accept(c, pieces)
        if self._held is None:
            return None
        return Message(MsgType.SNAP, c.to, c.frm, term, snapshot=c.meta)

    def _assemble(self, c: SnapshotChunk) -> tuple[Pieces, int] | None:
        """The whole snapshot's pieces, and the highest term it was sent in, once `c`
        completes it; None before, or if `c` ends the transfer (a checksum that
        contradicts the transfer's, pieces that do not fit together)."""
        p = self._partial.get(c.frm)
        if p is None or not p.same_transfer(c):
            if p is not None:
                if c.meta.index < p.first.meta.index and c.term <= p.term:
                    return None  # a late chunk of a transfer the sender moved on from
                self.restarts += 1
                p.pieces.discard()
            p = self._partial[c.frm] = _Partial(c, self.new_pieces(c))
        elif c.checksum != p.first.checksum:
            del self._partial[c.frm]
            p.pieces.discard()
            self._reject(c, f"the chunk at offset {c.offset} carries checksum "
                            f"{c.checksum:#010x}, the first one {p.first.checksum:#010x}")
            return None
        p.term = max(p.term, c.term)
        pieces = p.pieces
        if pieces.has(c.offset) or c.offset + len(c.data) > c.total:
            return None  # a duplicate, or not a piece of these bytes
        pieces.put(c.offset, c.data)
        if pieces.held < c.total:
            return None
        del self._partial[c.frm]
        end = 0
        for offset, length in pieces.lengths():
            if offset != end:
                self.restarts += 1  # overlapping pieces: sent with another chunk size
                pieces.discard()
                return None
            end += length
        return pieces, p.term

    def _accept(self, c: SnapshotChunk, pieces: Pieces) -> AcceptedSnapshot[S] | None:
        try:
            crc = pieces.crc32()
            data = pieces.whole()
        except OSError as e:
            pieces.discard()
            self._reject(c, f"its chunks could not be read back: {e}")
            return None
        if crc != c.checksum:
            discard_data(data)
            self._reject(c, f"its {c.total} bytes have CRC32 {crc:#010x}, the sender's "
                            f"is {c.checksum:#010x}")
            return None
        return self._validated(c, data)

    def _validated(self, c: SnapshotChunk, data: SnapshotData) -> AcceptedSnapshot[S] | None:
        try:
            state = self.validate(c.meta, data)
        except SnapshotError as e:
            discard_data(data)
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
        discard_data(held.data)
        return held.state
