"""Property-based fuzzing of the wire decoders (raftkv/wire.py) with Hypothesis.

The decoders take bytes from the network: whatever they are given, only the documented
errors may escape (MalformedFrame; for requests also InvalidRequest), and what they do
accept encodes back to a frame that decodes to the same thing. Inputs: arbitrary bytes,
arbitrary msgpack values, frames with a valid head and arbitrary fields, and valid
frames with one field replaced. (tests/unit/test_wire.py's seeded fuzz covers
truncations, bit flips and oversized headers.)

`make test` runs a small, derandomized sample; tests/fuzz.py says how to run more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from raftkv.raft import Message
from raftkv.wire import (
    MAX_UINT64,
    VERSION,
    InvalidRequest,
    Kind,
    MalformedFrame,
    ReplyCode,
    decode_frame,
    decode_message,
    decode_replies,
    decode_reply,
    decode_request,
    encode_message,
    encode_replies,
    encode_reply,
    encode_requests,
)
from tests.fuzz import fuzz
from tests.unit.test_wire import valid_frames

# The errors each decoder documents; anything else escaping is a bug.
DECODERS: dict[str, tuple[Callable[[bytes], Any], tuple[type[Exception], ...]]] = {
    "decode_frame": (decode_frame, (MalformedFrame, InvalidRequest)),
    "decode_request": (decode_request, (MalformedFrame, InvalidRequest)),
    "decode_message": (decode_message, (MalformedFrame,)),
    "decode_reply": (decode_reply, (MalformedFrame,)),
    "decode_replies": (decode_replies, (MalformedFrame,)),
}


def decode_all(frame: bytes) -> None:
    """Feed `frame` to every decoder; what one accepts must survive a round trip."""
    for name, (decode, documented) in DECODERS.items():
        try:
            got = decode(frame)
        except documented:
            continue
        except Exception as e:
            raise AssertionError(f"{name} raised {type(e).__name__}: {e}") from e
        check_round_trip(got)


def check_round_trip(got: object) -> None:
    """A peer message or reply a decoder accepted is one the encoder can write back,
    and that decodes to the same value."""
    if type(got) is Message:
        assert decode_message(encode_message(got)) == got
    elif type(got) is list:  # decode_replies
        for r in got:
            assert decode_reply(encode_reply(r.request_id, r.code, r.value,
                                             r.leader_hint)) == r


# -- strategies --------------------------------------------------------------------------

INTS = st.one_of(st.integers(-(2**63), MAX_UINT64),
                 st.sampled_from([0, 1, 2, 3, VERSION, -1, 2**32, 2**63, MAX_UINT64]))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, st.floats(), st.text(max_size=12),
                    st.binary(max_size=24),
                    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.one_of(st.text(max_size=4), st.binary(max_size=4), INTS),
                        inner, max_size=3)),
    max_leaves=20)


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@st.composite
def headed_frames(draw: st.DrawFn) -> bytes:
    """[version, kind, fields...]: a head a decoder goes past, then anything."""
    version = draw(st.one_of(st.just(VERSION), INTS))
    kind = draw(st.one_of(st.sampled_from([int(k) for k in Kind]), INTS))
    return pack([version, kind, *draw(st.lists(VALUES, max_size=14))])


def every_kind_of_frame() -> list[bytes]:
    """A valid frame of every kind: peer messages, a snapshot chunk, requests (test_wire's
    samples), replies, and batches of requests and of replies."""
    frames = valid_frames()
    replies = [encode_reply(7, ReplyCode.OK, [b"k", b"v"], 2),
               encode_reply(8, ReplyCode.NOT_LEADER, "not the leader", 3)]
    return [*frames, *replies, encode_requests(frames[-3:]), encode_replies(replies)]


FRAMES = every_kind_of_frame()


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid frame of each kind with one field replaced, dropped or added."""
    obj = msgpack.unpackb(draw(st.sampled_from(FRAMES)))
    at = draw(st.integers(0, len(obj) - 1))
    how = draw(st.sampled_from(["replace", "drop", "add"]))
    if how == "replace":
        obj[at] = draw(VALUES)
    elif how == "drop":
        del obj[at]
    else:
        obj.insert(at, draw(VALUES))
    return pack(obj)


# -- properties --------------------------------------------------------------------------

@fuzz(examples=300)
@given(frame=st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_documented_errors(frame: bytes) -> None:
    decode_all(frame)


@fuzz(examples=200)
@given(obj=VALUES)
def test_arbitrary_msgpack_values_raise_only_documented_errors(obj: object) -> None:
    decode_all(pack(obj))


@fuzz(examples=150)
@given(frame=headed_frames())
def test_frames_with_a_valid_head_raise_only_documented_errors(frame: bytes) -> None:
    decode_all(frame)


@fuzz(examples=200)
@given(frame=mutated_frames())
def test_valid_frames_with_a_field_changed_raise_only_documented_errors(frame: bytes) -> None:
    decode_all(frame)
