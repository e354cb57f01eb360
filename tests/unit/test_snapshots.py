"""Chunking and reassembly of snapshots between nodes."""

import zlib

from raftkv.raft import Message, MsgType, SnapshotMeta
from raftkv.snapshots import SnapshotReceiver, SnapshotSender

META = SnapshotMeta(50, 3, (1, 2, 3))
DATA = bytes(range(256)) * 40  # 10,240 bytes


def chunks(chunk_size: int = 1000):
    sender = SnapshotSender(lambda meta: DATA, chunk_size=chunk_size)
    return sender.chunks(Message(MsgType.SNAP, 2, 1, 3, snapshot=META))


def test_snapshot_travels_in_bounded_chunks_and_is_reassembled():
    parts = chunks()
    assert len(parts) == 11 and max(len(p.data) for p in parts) <= 1000
    r = SnapshotReceiver()
    results = [r.receive(p) for p in parts]
    assert results[:-1] == [None] * 10
    assert results[-1].type == MsgType.SNAP and results[-1].snapshot == META
    assert r.take(META) == DATA


def test_a_gap_discards_the_transfer_and_a_new_start_succeeds():
    parts = chunks()
    r = SnapshotReceiver()
    r.receive(parts[0])
    assert r.receive(parts[2]) is None  # parts[1] was lost
    assert r.receive(parts[3]) is None  # nothing to continue
    for p in parts[:-1]:
        assert r.receive(p) is None
    assert r.receive(parts[-1]) is not None
    assert r.take(META) == DATA and r.restarts >= 1


def test_empty_snapshot_is_one_chunk():
    sender = SnapshotSender(lambda meta: b"")
    [only] = sender.chunks(Message(MsgType.SNAP, 2, 1, 3, snapshot=META))
    assert only.total == 0
    assert SnapshotReceiver().receive(only) is not None


def test_every_chunk_carries_the_crc32_of_the_whole_snapshot_computed_once():
    loads = []
    sender = SnapshotSender(lambda meta: loads.append(meta) or DATA, chunk_size=1000)
    snap = Message(MsgType.SNAP, 2, 1, 3, snapshot=META)
    first, again = sender.chunks(snap), sender.chunks(snap)
    assert {c.checksum for c in first + again} == {zlib.crc32(DATA)}
    assert loads == [META]  # the retry re-used the bytes and their checksum
