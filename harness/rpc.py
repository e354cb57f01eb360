"""One request, one reply: how the harness asks a node or the controller something."""

from __future__ import annotations

import itertools

import zmq

from raftkv import wire
from raftkv.security import Credentials, present
from raftkv.wire import ClientReply, ClientRequest, ReplyCode, ReqOp

_request_ids = itertools.count(1)


def next_request_id() -> int:
    return next(_request_ids)


def call_raw(ctx: zmq.Context, address: str, frame: bytes, timeout: float = 2.0,
             credentials: Credentials | None = None) -> ClientReply | None:
    """Send one frame on a fresh DEALER; the decoded reply, or None after `timeout` s.
    The DEALER presents `credentials`, or those of $RAFTKV_CREDENTIALS (none if unset)."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    try:
        present(s, credentials)
        s.connect(address)
        s.send(frame)
        if not s.poll(int(timeout * 1000)):
            return None
        return wire.decode_reply(s.recv())
    finally:
        s.close()


def call(ctx: zmq.Context, address: str, req: ClientRequest, timeout: float = 2.0,
         credentials: Credentials | None = None) -> ClientReply | None:
    return call_raw(ctx, address, wire.encode_request(req), timeout, credentials)


class ControlError(Exception):
    """A controller command failed. `code` is the reply code (None: no answer at all)."""

    def __init__(self, code: ReplyCode | None, message: str) -> None:
        super().__init__(message)
        self.code = code


def control(ctx: zmq.Context, address: str, name: str, *args: object,
            timeout: float = 5.0, credentials: Credentials | None = None) -> object:
    """Run controller command `name` (what the CLI verb of that name does) and return its
    answer; raises ControlError when the controller refuses or does not answer."""
    req = ClientRequest(next_request_id(), ReqOp.CONTROL, name=name, args=args)
    reply = call(ctx, address, req, timeout, credentials)
    if reply is None:
        raise ControlError(None, f"the controller at {address} did not answer within "
                                 f"{timeout:g}s; `raftkv up` restarts it")
    if reply.code != ReplyCode.OK:
        raise ControlError(reply.code, str(reply.value))
    return reply.value
