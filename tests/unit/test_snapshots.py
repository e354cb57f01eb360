"""Chunking, reassembly and checking of snapshots between nodes."""

from __future__ import annotations

import dataclasses
import logging
import zlib
from pathlib import Path

import pytest

from raftkv.kv import SnapshotError
from raftkv.raft import InvariantViolation, Message, MsgType, SnapshotMeta
from raftkv.snapshots import SnapshotReceiver, SnapshotSender, SpooledPieces, discard_data
from raftkv.storage.fs import OS_FS
from raftkv.wire import SnapshotChunk

META = SnapshotMeta(50, 3, (1, 2, 3))
DATA = bytes(range(256)) * 40  # 10,240 bytes


class BytesSource:
    """raftkv.snapshots.ChunkSource over bytes in memory; counts its reads."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size, self.checksum = data, len(data), zlib.crc32(data)
        self.reads = 0
        self.gone = False

    def read(self, start: int, n: int) -> bytes:
        if self.gone:
            raise FileNotFoundError("snap-00000000000000000050.snap")
        self.reads += 1
        return self.data[start:start + n]


def chunks(meta: SnapshotMeta = META, data: bytes = DATA, chunk_size: int = 1000,
           frm: int = 1) -> list[SnapshotChunk]:
    sender = SnapshotSender(lambda _: BytesSource(data), chunk_size=chunk_size)
    sender.start(Message(MsgType.SNAP, 2, frm, 3, snapshot=meta))
    return sender.pump(len(data) + 1)


class Validator:
    """Records what it was asked to check (`calls`: the metas, `seen`: the data as
    handed over, bytes or a spooled file); refuses the bytes in `refuse`."""

    def __init__(self, refuse: bytes | None = None) -> None:
        self.refuse = refuse
        self.calls: list[SnapshotMeta] = []
        self.seen: list[object] = []

    def __call__(self, meta: SnapshotMeta, data: bytes | Path) -> str:
        self.calls.append(meta)
        self.seen.append(data)
        raw = data.read_bytes() if isinstance(data, Path) else data
        if raw == self.refuse:
            raise SnapshotError("not a snapshot this store can load")
        return f"state of {len(raw)} bytes"


def feed(r: SnapshotReceiver, parts: list[SnapshotChunk]) -> Message | None:
    """Every chunk in order; what the last one returned (the others must return None)."""
    *head, last = parts
    assert [r.receive(p) for p in head] == [None] * len(head)
    return r.receive(last)


def test_snapshot_travels_in_bounded_chunks_and_is_reassembled():
    parts = chunks()
    assert len(parts) == 11 and max(len(p.data) for p in parts) <= 1000
    r = SnapshotReceiver(Validator())
    m = feed(r, parts)
    assert m.type == MsgType.SNAP and m.snapshot == META
    assert r.held == META
    accepted = r.take(META)
    assert accepted.data == DATA and accepted.state == "state of 10240 bytes"
    assert r.held is None and r.rejected == 0


def test_chunks_reordered_and_duplicated_on_the_way_are_reassembled():
    """The network may deliver a transfer's chunks in any order, some twice (§5.1).
    Found by the replica simulator (seed 24): a receiver that started over at every chunk
    not continuing the last one never completed a snapshot there, and the follower that
    needed it never caught up."""
    parts = chunks()
    shuffled = [parts[3], parts[0], parts[3], parts[10], *reversed(parts[4:10]), parts[1],
                parts[0], parts[2]]
    r = SnapshotReceiver(Validator())
    assert feed(r, shuffled) is not None
    assert r.take(META).data == DATA and r.restarts == 0 and r.rejected == 0


def test_a_lost_chunk_is_filled_in_by_the_next_send_of_the_same_snapshot():
    parts = chunks()
    r = SnapshotReceiver(Validator())
    assert [r.receive(p) for p in parts[:4] + parts[5:]] == [None] * 10  # parts[4] lost
    m = r.receive(chunks()[4])  # the leader's next send, after its wait
    assert m is not None and r.take(META).data == DATA and r.restarts == 0


def test_a_late_chunk_of_an_older_snapshot_does_not_reset_a_newer_transfer():
    older, newer = SnapshotMeta(40, 3, (1, 2, 3)), META
    r = SnapshotReceiver(Validator())
    new_parts = chunks(newer)
    r.receive(new_parts[0])
    assert r.receive(chunks(older)[1]) is None
    assert feed(r, new_parts[1:]) is not None
    assert r.take(newer).data == DATA and r.restarts == 0


def test_a_newer_snapshot_replaces_a_partial_older_one():
    older, newer = SnapshotMeta(40, 3, (1, 2, 3)), META
    r = SnapshotReceiver(Validator())
    r.receive(chunks(older)[0])
    assert feed(r, chunks(newer)) is not None
    assert r.held == newer and r.restarts == 1
    # The SNAP message carries the highest term the snapshot was sent in.
    r.take(newer)
    parts = chunks(newer)
    r.receive(dataclasses.replace(parts[0], term=7))
    assert feed(r, parts[1:]).term == 7


def test_empty_snapshot_is_one_chunk():
    [only] = chunks(data=b"")
    assert only.total == 0 and only.checksum == zlib.crc32(b"")
    assert SnapshotReceiver(Validator()).receive(only) is not None


def test_every_chunk_carries_the_crc32_of_the_whole_snapshot_opened_once():
    opened = []
    sender = SnapshotSender(lambda meta: opened.append(meta) or BytesSource(DATA),
                            chunk_size=1000)
    snap = Message(MsgType.SNAP, 2, 1, 3, snapshot=META)
    sender.start(snap)
    first = sender.pump(10**6)
    sender.start(snap)
    again = sender.pump(10**6)
    assert {c.checksum for c in first + again} == {zlib.crc32(DATA)}
    assert len(first) == len(again) == 11 and not sender.active
    assert opened == [META]  # the retry re-used the source and its checksum


def test_a_turn_sends_a_budget_of_chunks_and_the_transfers_take_turns():
    """Issue 16: the leader read the whole snapshot and queued every chunk in one turn,
    a stop that grows with the state (about a second per 100 MB)."""
    source = BytesSource(DATA)
    sender = SnapshotSender(lambda _: source, chunk_size=1000)
    sender.start(Message(MsgType.SNAP, 2, 1, 3, snapshot=META))
    sender.start(Message(MsgType.SNAP, 3, 1, 3, snapshot=META))
    turn = sender.pump(4000)
    assert [(c.to, c.offset) for c in turn] == [(2, 0), (3, 0), (2, 1000), (3, 1000)]
    assert source.reads == 4 and sender.active
    rest = []
    while sender.active:
        rest += sender.pump(4000)
    r = SnapshotReceiver(Validator())
    assert feed(r, [c for c in turn + rest if c.to == 2]) is not None


def test_asked_again_while_streaming_a_transfer_goes_on_from_where_it_is():
    sender = SnapshotSender(lambda _: BytesSource(DATA), chunk_size=1000)
    snap = Message(MsgType.SNAP, 2, 1, 3, snapshot=META)
    sender.start(snap)
    first = sender.pump(3000)
    sender.start(dataclasses.replace(snap, term=4))
    rest = sender.pump(10**6)
    assert [c.offset for c in first + rest] == list(range(0, 11000, 1000))
    assert {c.term for c in rest} == {4}


def test_a_newer_snapshot_waits_for_an_older_transfer_the_log_goes_on_from():
    """The core asks for its newest snapshot while an older one streams: when the
    leader's log still holds what follows the older one (log_start at or below its
    index), the older transfer finishes, in the new message's term; otherwise the newer
    one starts over. Dropping the older one each time never let a follower whose
    transfers outlast the leader's snapshot interval catch up (sim seed 619 with leases)."""
    newer = dataclasses.replace(META, index=META.index + 40)
    sender = SnapshotSender(lambda meta: BytesSource(DATA if meta == META else b"n" * 500),
                            chunk_size=1000)
    snap = Message(MsgType.SNAP, 2, 1, 3, snapshot=META)
    assert sender.start(snap)
    first = sender.pump(3000)
    assert not sender.start(dataclasses.replace(snap, term=4, snapshot=newer),
                            log_start=META.index)
    rest = sender.pump(10**6)
    assert {c.meta for c in first + rest} == {META}
    assert [c.offset for c in first + rest] == list(range(0, 11000, 1000))
    assert {c.term for c in rest} == {4}

    assert sender.start(snap)
    sender.pump(3000)
    assert sender.start(dataclasses.replace(snap, snapshot=newer), log_start=META.index + 1)
    assert [(c.meta, c.offset) for c in sender.pump(10**6)] == [(newer, 0)]


def test_a_snapshot_sent_whole_and_asked_for_again_is_sent_again_while_the_log_allows():
    """Chunks of a transfer were lost: the core asks again, by then with a newer
    snapshot. The one sent is sent again (the receiver keeps what it got and fills in
    the rest) while its file is there and the log goes on from it; otherwise, the newer."""
    newer = dataclasses.replace(META, index=META.index + 40)
    sources = {META: BytesSource(DATA), newer: BytesSource(b"n" * 500)}
    sender = SnapshotSender(sources.__getitem__, chunk_size=1000)
    snap = Message(MsgType.SNAP, 2, 1, 3, snapshot=META)
    sender.start(snap)
    sender.pump(10**6)
    assert not sender.active and sender.sending() == set()
    assert sender.start(dataclasses.replace(snap, snapshot=newer), log_start=META.index)
    assert sender.sending() == {META.index}
    again = sender.pump(10**6)
    assert [(c.meta, c.offset) for c in again] == [(META, o) for o in range(0, 11000, 1000)]

    sources[META].gone = True  # pruned since
    assert sender.start(dataclasses.replace(snap, snapshot=newer), log_start=META.index)
    assert [c.meta for c in sender.pump(10**6)] == [newer]
    sources[META].gone = False
    sender.start(snap)
    assert len(sender.pump(10**6)) == 11
    assert sender.start(dataclasses.replace(snap, snapshot=newer), log_start=META.index + 1)
    assert [c.meta for c in sender.pump(10**6)] == [newer]  # the log starts after it


def test_a_transfer_whose_file_is_gone_is_dropped_and_logged(caplog):
    source = BytesSource(DATA)
    sender = SnapshotSender(lambda _: source, chunk_size=1000)
    sender.start(Message(MsgType.SNAP, 2, 1, 3, snapshot=META))
    sender.pump(2000)
    source.gone = True
    with caplog.at_level(logging.WARNING, logger="raftkv.snapshots"):
        assert sender.pump(2000) == []
    assert not sender.active
    assert "dropped at byte 2000" in caplog.text


def test_bytes_that_do_not_match_the_checksum_are_dropped_counted_and_logged(caplog):
    parts = chunks()
    parts[4] = dataclasses.replace(parts[4], data=b"\xff" + parts[4].data[1:])  # on the way
    validate = Validator()
    r = SnapshotReceiver(validate)
    with caplog.at_level(logging.WARNING, logger="raftkv.snapshots"):
        assert feed(r, parts) is None
    assert r.rejected == 1 and r.held is None
    assert validate.calls == []  # never restored
    assert "index 50" in caplog.text and "CRC32" in caplog.text
    assert feed(r, chunks()) is not None  # the leader's next send is taken


def test_a_chunk_whose_checksum_differs_from_the_first_ends_the_transfer(caplog):
    parts = chunks()
    parts[5] = dataclasses.replace(parts[5], checksum=parts[5].checksum ^ 1)
    r = SnapshotReceiver(Validator())
    with caplog.at_level(logging.WARNING, logger="raftkv.snapshots"):
        assert [r.receive(p) for p in parts] == [None] * len(parts)
    assert r.rejected == 1 and r.held is None
    assert "offset 5000" in caplog.text and "first one" in caplog.text


def test_a_snapshot_the_validator_refuses_is_dropped_and_counted(caplog):
    r = SnapshotReceiver(Validator(refuse=DATA))
    with caplog.at_level(logging.WARNING, logger="raftkv.snapshots"):
        assert feed(r, chunks()) is None
    assert r.rejected == 1 and r.held is None
    assert "not a snapshot this store can load" in caplog.text


def test_at_most_one_accepted_snapshot_is_held():
    validate = Validator()
    r = SnapshotReceiver(validate)
    assert feed(r, chunks()) is not None
    newer = SnapshotMeta(80, 4, (1, 2, 3))
    assert feed(r, chunks(newer, b"newer", frm=3)) is None  # dropped, unchecked
    assert feed(r, chunks()) is None  # a duplicate too
    assert r.held == META and validate.calls == [META] and r.rejected == 0
    assert r.take(META).data == DATA
    assert feed(r, chunks(newer, b"newer", frm=3)) is not None  # room again
    assert r.held == newer


def test_a_snapshot_the_core_ignored_is_released_at_once():
    r = SnapshotReceiver(Validator())
    assert feed(r, chunks()) is not None
    r.drop(SnapshotMeta(49, 3, (1, 2, 3)))  # not the one held: kept
    assert r.held == META
    r.drop(META)
    assert r.held is None
    with pytest.raises(InvariantViolation):
        r.take(META)
    assert feed(r, chunks()) is not None  # and the next one is accepted


# ---- spooled to a file: a snapshot of any size is never in memory whole ---------------


def spooled(tmp_path: Path, validate: Validator) -> SnapshotReceiver:
    return SnapshotReceiver(validate, lambda c: SpooledPieces(
        tmp_path / f"snap-incoming-{c.frm}-{c.meta.index}.tmp"))


def test_a_spooled_snapshot_is_handed_over_as_its_file(tmp_path):
    parts = chunks()
    shuffled = [parts[3], parts[0], parts[3], parts[10], *reversed(parts[4:10]), parts[1],
                parts[0], parts[2]]
    validate = Validator()
    r = spooled(tmp_path, validate)
    assert feed(r, shuffled) is not None
    accepted = r.take(META)
    assert isinstance(accepted.data, Path) and accepted.data.read_bytes() == DATA
    assert validate.seen == [accepted.data] and accepted.state == "state of 10240 bytes"
    discard_data(accepted.data)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", ["bad checksum", "refused", "replaced", "dropped",
                                 "another held"])
def test_a_spooled_snapshot_nobody_takes_leaves_no_file(tmp_path, how):
    parts = chunks()
    r = spooled(tmp_path, Validator(refuse=DATA if how == "refused" else None))
    if how == "bad checksum":
        parts = [dataclasses.replace(p, checksum=p.checksum ^ 1) for p in parts]
        assert feed(r, parts) is None and r.rejected == 1
    elif how == "refused":
        assert feed(r, parts) is None and r.rejected == 1
    elif how == "replaced":
        r.receive(chunks(SnapshotMeta(40, 3, (1, 2, 3)))[0])
        assert len(list(tmp_path.iterdir())) == 1
        assert feed(r, parts) is not None
        discard_data(r.take(META).data)
    elif how == "dropped":
        assert feed(r, parts) is not None
        assert r.drop(META) == "state of 10240 bytes"
    else:
        assert feed(r, parts) is not None
        assert feed(r, chunks(SnapshotMeta(60, 3, (1, 2, 3)), frm=3)) is None
        discard_data(r.take(META).data)
    assert list(tmp_path.iterdir()) == []


def test_a_resend_of_the_held_snapshot_leaves_its_file_whole(tmp_path):
    """Found at 10M keys: the leader sent the same snapshot again before the follower
    installed it, the new transfer's spool took the same name and truncated the held
    one's file, and storage then copied 480 MiB of a 1.37 GB snapshot."""
    r = spooled(tmp_path, Validator())
    assert feed(r, chunks()) is not None
    for p in chunks()[:5]:  # the resend, cut short by the install
        assert r.receive(p) is None
    accepted = r.take(META)
    assert accepted.data.read_bytes() == DATA
    discard_data(accepted.data)
    assert list(tmp_path.iterdir()) == []  # the resend kept nothing either


class FailingPieces(SpooledPieces):
    """A spool whose disk fails (full) once `fail` is set."""

    fail = False

    def put(self, offset: int, data: bytes) -> None:
        if FailingPieces.fail:
            raise OSError(28, "No space left on device")
        super().put(offset, data)


def test_a_spool_whose_disk_fails_rejects_that_transfer_only(tmp_path, monkeypatch):
    r = SnapshotReceiver(Validator(), lambda c: FailingPieces(
        tmp_path / f"snap-incoming-{c.frm}-{c.meta.index}.tmp"))
    parts = chunks()
    r.receive(parts[0])
    monkeypatch.setattr(FailingPieces, "fail", True)
    assert r.receive(parts[1]) is None and r.rejected == 1
    assert list(tmp_path.iterdir()) == []  # its partial file went with it
    monkeypatch.setattr(FailingPieces, "fail", False)
    assert feed(r, chunks()) is not None  # the leader's next send goes through
    discard_data(r.take(META).data)


def test_a_spool_sums_pieces_that_come_in_order_and_reads_back_only_the_rest(
        tmp_path, monkeypatch):
    reads: list[int] = []
    real = OS_FS.read_range
    monkeypatch.setattr(OS_FS, "read_range",
                        lambda path, at, n: reads.append(n) or real(path, at, n))
    parts = chunks()
    # parts[3] last: summed through it, then 4,000 on read back (its successors came early)
    for order, read_back in ((parts, 0), ([*parts[:3], *parts[4:], parts[3]], 6 * 1000 + 240)):
        reads.clear()
        r = spooled(tmp_path, Validator())
        assert feed(r, order) is not None
        assert sum(reads) == read_back
        accepted = r.take(META)
        assert accepted.data.read_bytes() == DATA
        discard_data(accepted.data)
