"""WAL record framing and payload codecs (raftkv/storage/record.py)."""

import pytest

from raftkv.raft.types import Entry, EntryType, HardState
from raftkv.storage import record
from raftkv.storage.record import FrameError, RecordType, SnapshotMarker


def test_entries_record_round_trips_every_entry_type_and_empty_data():
    entries = [
        Entry(3, 10, EntryType.NORMAL, b"put k v"),
        Entry(3, 11, EntryType.NOOP, b""),
        Entry(4, 12, EntryType.CONF_CHANGE, bytes(range(256)) * 40),
    ]
    buf = record.encode_entries(entries)
    rtype, payload, end = record.read_frame(buf, 0)
    assert (rtype, end) == (RecordType.ENTRIES, len(buf))
    decoded = record.decode_entries(payload)
    assert decoded == entries
    assert all(type(e.type) is EntryType for e in decoded)


def test_hard_state_truncate_and_marker_records_round_trip():
    hs = HardState(term=7, vote=2, commit=41)
    marker = SnapshotMarker(index=40, term=6, keep_suffix=True, first_seq=3)
    buf = (
        record.encode_hard_state(hs)
        + record.encode_truncate(99)
        + record.encode_snapshot_marker(marker)
    )
    off, got = 0, []
    while off < len(buf):
        rtype, payload, off = record.read_frame(buf, off)
        got.append(rtype)
        if rtype is RecordType.HARD_STATE:
            assert record.decode_hard_state(payload) == hs
        elif rtype is RecordType.TRUNCATE:
            assert record.decode_truncate(payload) == 99
        else:
            assert record.decode_snapshot_marker(payload) == marker
    assert got == [RecordType.HARD_STATE, RecordType.TRUNCATE, RecordType.SNAPSHOT]


def test_crc_covers_the_type_byte():
    buf = bytearray(record.encode_truncate(5))
    buf[record.HEADER_SIZE - 1] = RecordType.HARD_STATE  # same payload, other type
    with pytest.raises(FrameError, match="CRC"):
        record.read_frame(bytes(buf), 0)


@pytest.mark.parametrize(
    ("cut", "reason"),
    [(4, "incomplete header"), (record.HEADER_SIZE + 1, "runs past the end")],
)
def test_short_record_is_a_frame_error(cut, reason):
    buf = record.encode_hard_state(HardState(1, 1, 1))
    with pytest.raises(FrameError, match=reason):
        record.read_frame(buf[:cut], 0)


def test_find_frame_skips_garbage_to_the_next_valid_record():
    good = record.encode_hard_state(HardState(2, 1, 0))
    buf = b"\x00\x03\x01garbage" + good
    assert record.find_frame(buf, 0) == len(buf) - len(good)
    assert record.find_frame(buf, len(buf) - len(good) + 1) is None


def test_an_entries_record_without_entries_does_not_decode():
    _, payload, _ = record.read_frame(record.frame(RecordType.ENTRIES, b"\x92\x05\x90"), 0)
    with pytest.raises(FrameError):
        record.decode_entries(payload)
