"""WAL record framing and payload codecs (raftkv/storage/record.py)."""

import zlib

import pytest

from raftkv.raft.types import Entry, EntryType, HardState
from raftkv.storage import record
from raftkv.storage.record import FrameError, RecordType, SnapshotMarker


def framed(*records: record.Record, seed: int = 0) -> bytes:
    return record.frame_all(records, seed)[0]


def test_entries_record_round_trips_every_entry_type_and_empty_data():
    entries = [
        Entry(3, 10, EntryType.NORMAL, b"put k v"),
        Entry(3, 11, EntryType.NOOP, b""),
        Entry(4, 12, EntryType.CONF_CHANGE, bytes(range(256)) * 40),
    ]
    buf = framed(record.entries_record(entries))
    rtype, payload, end, _ = record.read_frame(buf, 0, 0)
    assert (rtype, end) == (RecordType.ENTRIES, len(buf))
    decoded = record.decode_entries(payload)
    assert decoded == entries
    assert all(type(e.type) is EntryType for e in decoded)


def test_hard_state_truncate_and_marker_records_round_trip_in_a_chain():
    hs = HardState(term=7, vote=2, commit=41)
    marker = SnapshotMarker(index=40, term=6, keep_suffix=True, first_seq=3)
    buf = framed(record.hard_state_record(hs), record.truncate_record(99),
                 record.snapshot_marker_record(marker), seed=1234)
    off, crc, got = 0, 1234, []
    while off < len(buf):
        rtype, payload, off, crc = record.read_frame(buf, off, crc)
        got.append(rtype)
        if rtype is RecordType.HARD_STATE:
            assert record.decode_hard_state(payload) == hs
        elif rtype is RecordType.TRUNCATE:
            assert record.decode_truncate(payload) == 99
        else:
            assert record.decode_snapshot_marker(payload) == marker
    assert got == [RecordType.HARD_STATE, RecordType.TRUNCATE, RecordType.SNAPSHOT]


@pytest.mark.parametrize("n", range(0, 20))
def test_every_record_is_padded_to_a_multiple_of_eight(n):
    blob, _ = record.frame(RecordType.ENTRIES, b"x" * n, 0)
    assert len(blob) % record.ALIGN == 0
    assert record.read_frame(blob, 0, 0)[1] == b"x" * n


def test_the_crc_chains_the_previous_record():
    blob, _ = record.frame(RecordType.TRUNCATE, b"\x91\x05", 7)
    record.read_frame(blob, 0, 7)
    with pytest.raises(FrameError, match="CRC"):
        record.read_frame(blob, 0, 8)  # the same record after another predecessor


def test_the_crc_covers_the_length_and_the_type():
    blob = bytearray(framed(record.truncate_record(5)))
    blob[4] = RecordType.HARD_STATE  # same payload, other type
    with pytest.raises(FrameError, match="CRC"):
        record.read_frame(bytes(blob), 0, 0)


@pytest.mark.parametrize(
    ("cut", "reason"),
    [(4, "incomplete header"), (record.HEADER_SIZE + 1, "runs past the end")],
)
def test_short_record_is_a_frame_error(cut, reason):
    buf = framed(record.hard_state_record(HardState(1, 1, 1)))
    with pytest.raises(FrameError, match=reason):
        record.read_frame(buf[:cut], 0, 0)


def test_a_header_of_zeros_says_nothing_of_where_a_record_ends():
    with pytest.raises(FrameError, match="zeros") as err:
        record.read_frame(bytes(64), 0, 0)
    assert err.value.end is None


def test_a_length_over_the_limit_is_not_believed():
    head = record.HEAD.pack(record.MAX_RECORD_BYTES + 1, RecordType.ENTRIES, 0, 0)
    with pytest.raises(FrameError, match="over the limit") as err:
        record.read_frame(head + bytes(64), 0, 0)
    assert err.value.end is None


def test_format_1_records_are_still_read():
    hs = HardState(3, 1, 2)
    blob = record.frame_v1(*record.hard_state_record(hs))
    rtype, payload, end = record.read_frame_v1(blob, 0)
    assert (rtype, end, record.decode_hard_state(payload)) == (RecordType.HARD_STATE,
                                                              len(blob), hs)
    assert zlib.crc32(payload, zlib.crc32(bytes([rtype]))) == int.from_bytes(blob[4:8],
                                                                              "little")


def test_an_entries_record_without_entries_does_not_decode():
    _, payload, _, _ = record.read_frame(framed((RecordType.ENTRIES, b"\x92\x05\x90")), 0, 0)
    with pytest.raises(FrameError):
        record.decode_entries(payload)


@pytest.mark.parametrize("payload", [b"\x93\xff\x01\x00", b"\x93\x01\xa1x\x00", b"\x91\xff"])
def test_payloads_with_wrong_types_do_not_decode(payload):
    with pytest.raises(FrameError):
        if len(payload) == 2:
            record.decode_truncate(payload)
        else:
            record.decode_hard_state(payload)
