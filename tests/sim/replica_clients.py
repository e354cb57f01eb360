"""Simulated clients of the replica simulator (tests/sim/replica_sim.py): they speak the
real protocol (ClientRequest frames through the wire codec, sessions, retries with the
same sequence number) and record a history for harness/checker.py, in the format
harness/chaos.py records.

A client does as raftkv.client.Client does: a write takes its session (OPEN_SESSION the
first time, retried like a read) and the next seq; every attempt is retried, to the
hinted leader after NOT_LEADER, to the next node after UNAVAILABLE or silence, with the
same (client id, seq), until an answer or the operation's deadline. A reply to any
earlier attempt of the same operation completes it. At the deadline a write that was
sent and not refused for sure (silence, UNAVAILABLE) is `info` (it may have happened,
and may still); anything else is `fail` (it certainly did not).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from harness.checker import Op
from raftkv.raft import ConfOp
from raftkv.wire import ClientReply, ClientRequest, ReplyCode, ReqOp, encode_request
from tests.sim.replica_checks import SimFailure
from tests.sim.replica_sim import World

_READ_LIKE = (ReqOp.GET, ReqOp.OPEN_SESSION)
_WRITE_OPS = {"put": ReqOp.PUT, "delete": ReqOp.DELETE, "cas": ReqOp.CAS}


@dataclass
class _Call:
    """One operation in flight: what the client asked and how its attempts went."""

    req: ClientRequest
    op: Op | None  # None: the client's own OPEN_SESSION
    deadline: int
    ambiguous: bool = False  # an attempt may have reached the log
    request_ids: set[int] = field(default_factory=set)
    attempt: int = 0
    misses: int = 0
    tried: list[int] = field(default_factory=list)  # the target of every attempt


class SimClient:
    """One client: one operation at a time, on `keys` keys, values never written twice.
    A `reader` only reads (ReadIndex load)."""

    def __init__(self, world: World, cid: int, nodes: list[int], keys: int, *,
                 reader: bool = False, attempt_ms: int = 150, deadline_ms: int = 2000,
                 history: list[Op]) -> None:
        self.world = world
        self.cid = cid
        self.identity = b"c%d" % cid
        self.nodes = nodes  # whom it may ask, in retry order
        self.keys = keys
        self.reader = reader
        self.attempt_ms = attempt_ms
        self.deadline_ms = deadline_ms
        self.history = history
        self.rng = random.Random(f"client-{world.seed}-{cid}")
        self.session = 0
        self.seq = 0
        self.target = self.rng.choice(nodes)
        self.call: _Call | None = None
        self.pending_op: Op | None = None  # a write waiting for its session
        self.seen: dict[str, str | None] = {}
        self.n = 0
        self.next_rid = cid << 32
        self.stopped = False
        world.clients[self.identity] = self

    @property
    def busy(self) -> bool:
        return self.call is not None or self.pending_op is not None

    # -- invoking ----------------------------------------------------------------------

    def invoke(self, kind: str | None = None, key: str | None = None) -> None:
        """Start the next operation (a random one unless given), if none is running."""
        if self.busy or self.stopped:
            return
        self.n += 1
        rng = self.rng
        key = key or f"k{rng.randrange(self.keys)}"
        if kind is None:
            kind = "get" if self.reader else rng.choices(("get", "put", "delete", "cas"),
                                                         (4, 3, 1, 2))[0]
        value = f"{self.cid}-{self.n}"
        op = Op(self.cid, kind, key, invoke=self.world.stamp(), status="info")
        if kind == "put":
            op.input = value
        elif kind == "cas":
            op.input = [self.seen.get(key), value]
        self.history.append(op)
        if kind == "get":
            self._start(ClientRequest(0, ReqOp.GET, key=key.encode()), op)
        elif self.session:
            self._start_write(op)
        else:
            self.pending_op = op
            self._start(ClientRequest(0, ReqOp.OPEN_SESSION), None,
                         deadline=self.world.now + self.deadline_ms)

    def _start_write(self, op: Op, deadline: int | None = None) -> None:
        self.seq += 1
        exp = None
        value = None
        if op.op == "put":
            value = op.input.encode()
        elif op.op == "cas":
            exp = op.input[0].encode() if op.input[0] is not None else None
            value = op.input[1].encode()
        req = ClientRequest(0, _WRITE_OPS[op.op], key=op.key.encode(), value=value,
                            expected=exp, client_id=self.session, seq=self.seq)
        self._start(req, op, deadline)

    def _start(self, req: ClientRequest, op: Op | None, deadline: int | None = None) -> None:
        self.call = _Call(req, op, deadline or self.world.now + self.deadline_ms)
        self._attempt()

    def _attempt(self) -> None:
        call = self.call
        assert call is not None
        world = self.world
        if world.now >= call.deadline:
            self._give_up()
            return
        self.next_rid += 1
        call.req.request_id = self.next_rid
        call.request_ids.add(self.next_rid)
        call.attempt += 1
        call.tried.append(self.target)
        node = world.nodes.get(self.target)
        if node is not None:
            world.net.send_request(self.identity, self.target, encode_request(call.req))
        attempt = call.attempt
        world.at(world.now + self.attempt_ms, self._timeout, call, attempt)

    def _timeout(self, call: _Call, attempt: int) -> None:
        if self.call is not call or call.attempt != attempt:
            return
        if call.req.op not in _READ_LIKE:
            call.ambiguous = True  # it may have reached a leader and its log
        self._retry(self._next_target())

    def _next_target(self) -> int:
        i = self.nodes.index(self.target) if self.target in self.nodes else -1
        return self.nodes[(i + 1) % len(self.nodes)]

    def _retry(self, target: int) -> None:
        call = self.call
        assert call is not None
        self.target = target
        call.misses += 1
        pause = 0
        if call.misses % len(self.nodes) == 0:
            # A whole round without an answer: give an election time to finish.
            pause = min(10 * 2 ** (call.misses // len(self.nodes)), 200)
        self.world.at(self.world.now + pause, self._resend, call, call.attempt)

    def _resend(self, call: _Call, attempt: int) -> None:
        if self.call is call and call.attempt == attempt:
            self._attempt()

    # -- answers -----------------------------------------------------------------------

    def on_reply(self, reply: ClientReply) -> None:
        call = self.call
        if call is None or reply.request_id not in call.request_ids:
            return  # an answer to an operation already finished
        code = reply.code
        latest = reply.request_id == call.req.request_id
        if code == ReplyCode.OK:
            self._done(reply.value)
        elif code in (ReplyCode.NOT_LEADER, ReplyCode.UNAVAILABLE):
            if not latest:
                return  # a refusal of an earlier attempt: the current one decides
            if code == ReplyCode.UNAVAILABLE and call.req.op not in _READ_LIKE:
                call.ambiguous = True
            hint = reply.leader_hint
            recent = call.tried[-(len(self.nodes) - 1):]
            # A hint to a node tried in this round is not followed: two nodes with stale
            # hints (removed ones, still running) would bounce the client between them.
            target = hint if hint in self.nodes and hint not in recent else \
                self._next_target()
            call.attempt += 1  # the attempt's timer is void
            self._retry(target)
        else:
            raise SimFailure(f"client {self.cid}: {call.req.op.name} answered "
                             f"{ReplyCode(code).name}: {reply.value}")

    def _done(self, value: Any) -> None:
        call = self.call
        self.call = None
        if call.op is None:  # our session
            if type(value) is not int or value < 1:
                raise SimFailure(f"OPEN_SESSION answered {value!r}")
            self.session, self.seq = value, 0
            op, self.pending_op = self.pending_op, None
            if op is not None:
                self._start_write(op, call.deadline)
            return
        op = call.op
        op.status, op.complete = "ok", self.world.stamp()
        if op.op == "get":
            op.output = value.decode() if value is not None else None
            self.seen[op.key] = op.output
        elif op.op == "put":
            self.seen[op.key] = op.input
        elif op.op in ("delete", "cas"):
            if type(value) is not bool:
                raise SimFailure(f"{op.op} answered {value!r}, not a bool")
            op.output = value
        self.world.note("ok", self.cid, op.op, op.key, op.input, op.output)

    def _give_up(self) -> None:
        call = self.call
        self.call = None
        op = call.op
        if op is None:  # no session: the write waiting for it never went out
            op, self.pending_op = self.pending_op, None
            if op is not None:
                op.status, op.complete = "fail", self.world.stamp()
            return
        if call.req.op == ReqOp.GET or not call.ambiguous:
            op.status, op.complete = "fail", self.world.stamp()
        # else: info, complete None: it may have happened, at any time from now on
        self.world.note("gave up", self.cid, op.op, op.key, op.status)


class Controller:
    """The harness controller's part: membership changes, leadership transfers and PEERS
    for nodes that lag behind the configuration, as requests over the network to the
    node that believes it leads. Answers are recorded, never waited for."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.identity = b"ctl"
        self.next_rid = 1
        self.answers: list[tuple[ReqOp, int, ReplyCode, Any]] = []
        self.sent: dict[int, tuple[ClientRequest, int]] = {}  # request id -> (it, to)
        world.clients[self.identity] = self

    def _send(self, node_id: int, req: ClientRequest) -> None:
        self.next_rid += 1
        req.request_id = self.next_rid
        self.sent[self.next_rid] = (req, node_id)
        self.world.net.send_request(self.identity, node_id, encode_request(req))

    def on_reply(self, reply: ClientReply) -> None:
        """Record the answer. A change or transfer may be refused (the membership moved
        on meanwhile); PEERS never is."""
        req, via = self.sent.pop(reply.request_id, (None, 0))
        if req is None:
            return  # a duplicate
        self.answers.append((req.op, req.target, reply.code, reply.value))
        self.world.note("ctl answer", req.op.name, req.target, reply.code.name)
        if reply.code == ReplyCode.OK and req.op == ReqOp.CONF_CHANGE \
                and req.conf_op == ConfOp.REMOVE and req.target == via:
            self.world.coverage["leader_removed_itself"] += 1
        if reply.code == ReplyCode.BAD_REQUEST and req.op == ReqOp.PEERS:
            raise SimFailure(f"PEERS was refused: {reply.value}")

    def change(self, leader: int, op: ConfOp, target: int, addr: str = "") -> None:
        self.world.note("ctl", op.name, target, "via", leader)
        self._send(leader, ClientRequest(0, ReqOp.CONF_CHANGE, conf_op=int(op), target=target,
                                         address=addr))

    def transfer(self, leader: int, target: int) -> None:
        self.world.note("ctl transfer", target, "via", leader)
        self._send(leader, ClientRequest(0, ReqOp.TRANSFER, target=target))

    def push_peers(self, addresses: dict[int, str]) -> None:
        """PEERS to every live node whose transport lacks a member's address (the
        controller reads that from STATUS's "peers")."""
        for node in self.world.live():
            missing = {i: a for i, a in addresses.items()
                       if i != node.id and node.transport.peers.get(i) != a}
            if missing:
                self._send(node.id, ClientRequest(0, ReqOp.PEERS, addresses=missing))
