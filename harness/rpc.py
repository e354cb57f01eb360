"""One request, one reply: how the harness asks a node or the controller something."""

from __future__ import annotations

import itertools

import zmq

from raftkv import wire
from raftkv.wire import ClientReply, ClientRequest

_request_ids = itertools.count(1)


def next_request_id() -> int:
    return next(_request_ids)


def call_raw(ctx: zmq.Context, address: str, frame: bytes,
             timeout: float = 2.0) -> ClientReply | None:
    """Send one frame on a fresh DEALER; the decoded reply, or None after `timeout` s."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(address)
        s.send(frame)
        if not s.poll(int(timeout * 1000)):
            return None
        return wire.decode_reply(s.recv())
    finally:
        s.close()


def call(ctx: zmq.Context, address: str, req: ClientRequest,
         timeout: float = 2.0) -> ClientReply | None:
    return call_raw(ctx, address, wire.encode_request(req), timeout)
