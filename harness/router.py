"""The controller's router: the address clients talk to, in front of a cluster's nodes.

Clients reach the cluster at a single address, the controller's ROUTER (`cluster.json`'s
controller address, the default of `raftkv.Client`). The router passes each request to
the node it believes leads and passes the answer back. It runs one loop around a
`zmq.Poller` on the controller's main thread, and nothing on that loop blocks: what
takes time (processes, cluster.json, psutil, membership changes) is the supervisor's,
on its own thread (harness/supervisor.py; harness/handoff.py is the contract between
the two).

Retries: the client owns them, the router forwards once. A request goes to the leader
the router knows now, once. If it knows none, or the frame cannot be queued to that node
(not connected), the router answers at once NOT_LEADER with leader_hint 0: a refusal
before the log, which the client counts as "certainly not applied" and retries. A
node's reply, NOT_LEADER and UNAVAILABLE included, goes back to the client as it came.
The router holds nothing per request: no pending table, no resend, no deadline of its
own. Why:
- one code path for direct and routed clients: `raftkv.Client` already retries
  everything (NOT_LEADER, UNAVAILABLE, no reply) until its deadline, to any address it
  was given; with the controller as its one address it retries the controller, pausing
  after each fruitless round;
- one deadline, the one the user set (the client's `timeout`), instead of a client's and
  a controller's that disagreed;
- no duplicates pending: a client's resend during an election used to sit in the
  controller beside the first copy;
- a router that keeps no state per request can pass batches on unopened.
A request the router sent to a leader that dies or freezes before answering is lost;
the client's attempt timeout sends it again (a write with the same client id and seq,
which the state machine applies once).

Routing. A client frame is `[client_id, frame]`. The router reads only a request's header
(`wire.peek_request`: its id and op), enough to tell requests to forward from STATUS and
CONTROL, served here or handed to the supervisor, and from ops the connection's key may
not send (raftkv.security.refusal; answered FORBIDDEN: the router relays under the admin
key, so the nodes cannot check). A forwarded request leaves *unchanged* as `[client_id,
frame]` on the DEALER connected to the leader; the node answers into that envelope
(transport.py), so the reply comes back as `[client_id, reply]` and goes to the client
byte for byte, REP or REPS. A REQS frame (raftkv.wire: batches) whose every element is
a request to forward is forwarded whole; otherwise it is split (`wire.split_batch`) and
each element served as if it came alone. Single REQ frames of one client taken in one
drain of the front leave for the leader as one REQS frame (`wire.encode_requests` only
prepends a header); the node then answers that client's route with REPS frames.

Leader tracking. Every POLL_S the router sends STATUS to each node under its own envelope
OWN_ENVELOPE (a client's routing id is never 4 bytes starting with a zero byte: ZeroMQ
reserves those and makes its own 5 bytes long), so its requests and relayed ones never
mix. The leader is the believable node that says role == "leader" in the highest term;
a NOT_LEADER reply from a node names it in between polls when its hint can be read
from the frame's header (`wire.not_leader_hint`: a lone REP; a REPS is not opened). A
node is believable while the supervisor's latest sample says its process runs and no
STATUS poll to it has gone unanswered for STALE_AFTER_S. The router also sends each
node its partition (FAULT, before the STATUS on the same connection, so a node that
answers a poll has its faults in force; re-sent every poll while one stands, so a
restarted node is cut off again) and, to a node whose STATUS lacks a member's address,
the members' addresses (PEERS, thesis §4.1).

Commands: a CONTROL request `[name, args]`. `status` (also the answer to a plain STATUS)
and `events [SINCE]` (the timeline, harness/timeline.py) are served here; every other
command goes to the supervisor (see its docstring for the list), which answers when it
is done. The router meanwhile goes on serving clients.

Status map (the CONTROL "status" and STATUS value)::

    {"leader": id | None, "term": n,
     "voters": [ids], "learners": [ids],   (the leader's view; [] while none is known)
     "nodes": [{"id", "address", "pid", "alive", "paused", "member", "role", "term",
                "last_index", "commit_index", "applied_index", "cpu_percent",
                "rss_bytes", "open_files", "uptime_s", "dropped_malformed",
                "partitioned_from": [ids], "exit_code" (of its last process, if the
                controller started it and it exited: 4 means it refused its data dir;
                None otherwise), "vote", "lead", "snapshot_index",
                "log_tail": [[index, term], ...], "counters": {...},
                "fsync_ms": {"p50", "p99", "count"},
                "kv": {"keys", "sessions", "malformed", "bytes", "quota_bytes"},
                "metrics_port", "repair"}, ...],
     "controller": {counters, "commands_running": n, "uptime_s": s}}

A node's Raft fields are None when its last STATUS is stale; its psutil fields (pid,
alive, paused, cpu_percent, rss_bytes, open_files, uptime_s, exit_code) come from the
supervisor's latest sample and are None when its process is not running.
"""

from __future__ import annotations

import errno
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import zmq

from harness.handoff import PAIR_ADDRESS, STOP, Answer, ClusterView, Command, Members, Shared
from harness.status_map import node_status
from harness.timeline import Timeline
from raftkv import wire
from raftkv.security import ServerKeys, refusal
from raftkv.transport import bind_router, connect_dealer
from raftkv.wire import ClientRequest, ReplyCode, ReqOp

log = logging.getLogger("raftkv.controller")
T = TypeVar("T")

POLL_S = 0.2  # STATUS to every node, and FAULT re-sends, this often
STALE_AFTER_S = 1.0  # a node that leaves a STATUS poll unanswered this long is not believed
OWN_REQUEST_TTL_S = 5.0  # our own STATUS/FAULT/PEERS requests are forgotten after this
OWN_ENVELOPE = b"\x00ctl"
DEALER_ID = b"ctl"
HWM = 10_000
MAX_DRAIN = 1_000  # messages taken off one socket per loop turn
LOCAL_COMMANDS = ("status", "events")  # served by the router; the rest by the supervisor

COUNTER_KEYS = (
    "requests",  # client requests received (any op; each element of a REQS frame)
    "forwarded",  # frames sent to nodes on behalf of clients (REQ or REQS)
    "relayed",  # node reply frames (REP or REPS) passed back to clients
    "no_leader",  # requests answered NOT_LEADER by the router: no leader to send them to
    "malformed",  # frames dropped: undecodable, wrong number of parts
    "bad_requests",  # requests answered BAD_REQUEST by the controller
    "commands",  # CONTROL and STATUS requests served
    "dropped_replies",  # replies not delivered: client gone or HWM reached
    "refused_role",  # requests answered FORBIDDEN: a client key asked for an admin op
    "batches",  # REQS frames the router made of one client's single requests of a drain
)

_NOT_FORWARDED = frozenset({ReqOp.STATUS, ReqOp.CONTROL})


@dataclass(slots=True)
class NodeView:
    """What the router knows of one node."""

    id: int
    dealer: zmq.Socket
    status: dict[str, Any] | None = None  # its last STATUS map
    status_at: float = 0.0  # when that map arrived (monotonic)
    unanswered_since: float = 0.0  # send time of the oldest unanswered STATUS poll; 0: none
    # (pid, create time) of its process in the supervisor's latest sample; None: not
    # running. Invariant: `status` was said by that process (cleared when it changes).
    process_key: tuple[int, float] | None = None
    # Invariant: `fault` is what this node must drop under the current partition;
    # `fault_acked` is what it last confirmed (None: unknown, e.g. after a restart).
    fault: frozenset[int] = frozenset()
    fault_acked: frozenset[int] | None = None


@dataclass(slots=True)
class OwnRequest:
    kind: ReqOp  # STATUS, FAULT or PEERS
    node: int
    sent_at: float
    fault: frozenset[int] = frozenset()
    addresses: dict[int, str] | None = None  # PEERS


class Router:
    """The router's state and loop. Not thread-safe: `run` is its only driver (`stop`
    may be called from a signal handler)."""

    def __init__(self, front_address: str, addresses: dict[int, str], keys: ServerKeys | None,
                 context: zmq.Context, shared: Shared) -> None:
        self.front_address = front_address
        self.context = context
        self.shared = shared
        self.keys = keys
        self.stopping = False
        self.started = time.monotonic()
        self.counters = dict.fromkeys(COUNTER_KEYS, 0)
        self.own: dict[int, OwnRequest] = {}
        self.own_ids = itertools.count(1)
        self.leader = 0  # the node requests go to; 0: none known
        self.leader_since = 0.0  # when `leader` was last set (monotonic)
        self.addresses = dict(addresses)  # the members, node id -> address
        self.health: dict[int, dict[str, Any]] = {}  # the supervisor's sample taken in
        self.commands_running = 0  # handed to the supervisor, not answered yet
        self.timeline = Timeline()
        self.front = context.socket(zmq.ROUTER)
        self.pair = context.socket(zmq.PAIR)
        self.views: dict[int, NodeView] = {}
        self.poller = zmq.Poller()
        self.view_by_socket: dict[zmq.Socket, NodeView] = {}
        bind_router(self.front, front_address, HWM, keys)
        self.pair.connect(PAIR_ADDRESS)
        self.poller.register(self.front, zmq.POLLIN)
        self.poller.register(self.pair, zmq.POLLIN)
        for node_id, address in sorted(self.addresses.items()):
            self.add_view(node_id, address)
        self.take_health(time.monotonic())

    # ---- sockets -------------------------------------------------------------------

    def add_view(self, node_id: int, address: str) -> NodeView:
        dealer = connect_dealer(self.context, address, routing_id=DEALER_ID, hwm=HWM,
                                credentials=self.keys.client if self.keys else None)
        view = NodeView(node_id, dealer)
        self.views[node_id] = view
        self.view_by_socket[dealer] = view
        self.poller.register(dealer, zmq.POLLIN)
        return view

    def remove_view(self, node_id: int) -> None:
        view = self.views.pop(node_id)
        self.poller.unregister(view.dealer)
        del self.view_by_socket[view.dealer]
        view.dealer.close(linger=0)
        if self.leader == node_id:
            self.set_leader(0, time.monotonic())
        for v in self.views.values():
            v.fault -= {node_id}

    def close(self) -> None:
        for v in self.views.values():
            v.dealer.close(linger=0)
        self.front.close(linger=0)
        self.pair.close(linger=0)

    # ---- the loop ------------------------------------------------------------------

    def run(self) -> None:
        next_poll = time.monotonic()
        log.info("controller up on %s for nodes %s", self.front_address,
                 ", ".join(str(i) for i in self.views))
        while not self.stopping:
            timeout = max(0.0, next_poll - time.monotonic())
            for sock, _ in self.poller.poll(int(timeout * 1000) + 1):
                if sock is self.front:
                    self.drain_front()
                elif sock is self.pair:
                    self.drain_supervisor()
                elif sock in self.view_by_socket:  # not a node removed this turn
                    self.drain_node(self.view_by_socket[sock])
            now = time.monotonic()
            self.take_health(now)
            if now >= next_poll:
                next_poll = now + POLL_S
                self.poll_nodes(now)

    def stop(self, *_: Any) -> None:
        self.stopping = True

    def stop_supervisor(self) -> None:
        """Tell the supervisor's thread to end (after the command it is running)."""
        self.pair.send_pyobj(STOP)

    # ---- client side ---------------------------------------------------------------

    def drain_front(self) -> None:
        # What one client sent for the leader in this drain, as (request id, frame):
        # leaves as one REQS frame when the drain ends (`send_outbox`).
        outbox: dict[bytes, list[tuple[int, bytes]]] = {}
        try:
            self.take_front(outbox)
        finally:
            for client, entries in outbox.items():
                self.send_to_leader(client, entries)

    def take_front(self, outbox: dict[bytes, list[tuple[int, bytes]]]) -> None:
        # With keys, each message's frames carry its connection's role (ZAP User-Id).
        copy = self.keys is None
        for _ in range(MAX_DRAIN):
            try:
                parts = self.front.recv_multipart(zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                return
            if len(parts) != 2:
                self.counters["malformed"] += 1
                continue
            if copy:
                self.handle_frame(parts[0], parts[1], None, outbox)
            else:
                self.handle_frame(parts[0].bytes, parts[1].bytes, parts[1].get("User-Id"),
                                  outbox)

    def handle_frame(self, client: bytes, frame: bytes, role: str | None,
                     outbox: dict[bytes, list[tuple[int, bytes]]]) -> None:
        """A REQ frame, or a REQS frame: forwarded whole if every request in it is to be
        forwarded, else split and served request by request. `role` is the
        connection's (None: no keys, anyone may ask anything)."""
        try:
            batch = wire.split_batch(frame, wire.Kind.REQS)
        except wire.MalformedFrame:
            self.counters["malformed"] += 1
            return
        if batch is None:
            self.handle_request(client, frame, role, outbox)
            return
        ids = []
        for one in batch:
            try:
                rid, op = wire.peek_request(one)
            except wire.FrameError:
                break
            if op in _NOT_FORWARDED or role is not None and refusal(role, op) is not None:
                break
            ids.append(rid)
        else:
            self.counters["requests"] += len(batch)
            if batch:
                self.forward_whole(client, frame, ids)
            return
        for one in batch:
            self.handle_request(client, one, role, outbox)

    def handle_request(self, client: bytes, frame: bytes, role: str | None,
                       outbox: dict[bytes, list[tuple[int, bytes]]]) -> None:
        self.counters["requests"] += 1
        peeked = self.read_request(client, frame, wire.peek_request)
        if peeked is None:
            return
        rid, op = peeked
        why = None if role is None else refusal(role, op)
        if why is not None:
            self.counters["refused_role"] += 1
            self.answer(client, rid, ReplyCode.FORBIDDEN, why)
        elif op == ReqOp.STATUS:
            self.counters["commands"] += 1
            self.answer(client, rid, ReplyCode.OK, self.status_map())
        elif op == ReqOp.CONTROL:
            self.counters["commands"] += 1
            self.take_command(client, frame)
        else:
            outbox.setdefault(client, []).append((rid, frame))

    def read_request(self, client: bytes, frame: bytes, read: Callable[[bytes], T]) -> T | None:
        """`read(frame)`; None once a frame it cannot read is counted and dropped
        (malformed) or answered BAD_REQUEST (invalid)."""
        try:
            return read(frame)
        except wire.MalformedFrame:
            self.counters["malformed"] += 1
        except wire.InvalidRequest as e:
            self.counters["bad_requests"] += 1
            self.answer(client, e.request_id, ReplyCode.BAD_REQUEST, e.message)
        return None

    def answer(self, client: bytes, request_id: int, code: ReplyCode, value: Any = None) -> None:
        """Reply from the router itself; the hint is the leader it routes to (0 in a
        NOT_LEADER: it is sent only when none is known)."""
        self.send_frame(client, wire.encode_reply(request_id, code, value, self.leader))

    def send_frame(self, client: bytes, frame: bytes) -> None:
        try:
            self.front.send_multipart((client, frame), zmq.NOBLOCK)
        except zmq.Again:
            self.counters["dropped_replies"] += 1
        except zmq.ZMQError as e:
            if e.errno != errno.EHOSTUNREACH:
                raise
            self.counters["dropped_replies"] += 1

    # ---- forwarding ----------------------------------------------------------------

    def forward_whole(self, client: bytes, frame: bytes, request_ids: list[int]) -> None:
        """Send a client's REQS frame to the leader as it came."""
        if not self.forward(client, frame):
            self.refuse(client, request_ids)

    def send_to_leader(self, client: bytes, entries: list[tuple[int, bytes]]) -> None:
        """Send one client's single requests of a drain to the leader: a lone one as its
        own frame, several as one REQS frame."""
        frame = (entries[0][1] if len(entries) == 1
                 else wire.encode_requests([f for _, f in entries]))
        if not self.forward(client, frame):
            self.refuse(client, [rid for rid, _ in entries])
        elif len(entries) > 1:
            self.counters["batches"] += 1

    def forward(self, client: bytes, frame: bytes) -> bool:
        """Send `frame` once, in `client`'s envelope, to the leader known now; False if
        there is none or the frame could not be queued to it (so it never left)."""
        now = time.monotonic()
        leader = self.leader
        if not leader or not self.believable(self.views[leader], now):
            return False
        try:
            self.views[leader].dealer.send_multipart((client, frame), zmq.NOBLOCK)
        except zmq.Again:  # no connection to that node (down) or its queue is full
            self.set_leader(0, now)
            return False
        self.counters["forwarded"] += 1
        return True

    def refuse(self, client: bytes, request_ids: list[int]) -> None:
        """Answer NOT_LEADER, hint 0, to requests that went nowhere: a refusal before the
        log, so the client knows they had no effect and retries."""
        self.counters["no_leader"] += len(request_ids)
        frames = [wire.encode_reply(rid, ReplyCode.NOT_LEADER, "no leader known; retry", 0)
                  for rid in request_ids]
        if frames:
            self.send_frame(client, frames[0] if len(frames) == 1
                            else wire.encode_replies(frames))

    def drain_node(self, view: NodeView) -> None:
        for _ in range(MAX_DRAIN):
            try:
                parts = view.dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(parts) != 2:
                self.counters["malformed"] += 1
                continue
            envelope, frame = parts
            if envelope == OWN_ENVELOPE:
                self.handle_own_replies(view, frame)
                continue
            # A client's reply, passed on unopened; a lone NOT_LEADER names the leader.
            hint = wire.not_leader_hint(frame)
            if hint is not None:
                self.learn_leader_hint(view.id, hint, time.monotonic())
            self.counters["relayed"] += 1
            self.send_frame(envelope, frame)

    def learn_leader_hint(self, refuser: int, hint: int, now: float) -> None:
        """A node refused as not the leader and named `hint` (0: it knows none). A hint
        at a node we do not believe (killed, frozen) is ignored: a follower may not have
        noticed yet that its leader is gone, and following it would ping-pong."""
        if hint and hint != refuser and hint in self.views:
            if self.believable(self.views[hint], now):
                self.set_leader(hint, now)
        elif self.leader == refuser:
            self.set_leader(0, now)

    def set_leader(self, node_id: int, now: float) -> None:
        if node_id != self.leader:
            log.info("leader: %s", f"node {node_id}" if node_id else "unknown")
            self.timeline.add("leader", f"routing to leader node {node_id}" if node_id
                              else "no leader known", node_id or None,
                              self.timeline.max_term or None)
        self.leader = node_id
        self.leader_since = now
        self.publish(now)

    def publish(self, now: float) -> None:
        """Replace the view the supervisor reads (handoff.Shared.cluster)."""
        self.shared.cluster = ClusterView(
            self.leader, self.leader_term(now),
            frozenset(i for i, v in self.views.items() if v.status is not None))

    # ---- the supervisor ------------------------------------------------------------

    def take_command(self, client: bytes, frame: bytes) -> None:
        req = self.read_request(client, frame, wire.decode_request)
        if req is None:
            return
        if req.name in LOCAL_COMMANDS:
            self.serve_local(client, req)
            return
        # The supervisor carries it out on its thread and answers through `pair`.
        self.commands_running += 1
        self.pair.send_pyobj(Command(client, req.request_id, req.name, req.args))

    def serve_local(self, client: bytes, req: ClientRequest) -> None:
        if req.name == "status":
            if req.args:
                self.bad_command(client, req, "status takes no arguments")
            else:
                self.answer(client, req.request_id, ReplyCode.OK, self.status_map())
            return
        if len(req.args) > 1:
            self.bad_command(client, req, "events takes at most one number")
            return
        since = req.args[0] if req.args else 0
        if type(since) is str and since.strip().isdigit():
            since = int(since)
        if type(since) is not int:
            self.bad_command(client, req, f"events: {since!r:.40} is not a number")
            return
        self.answer(client, req.request_id, ReplyCode.OK, self.timeline.since(since))

    def bad_command(self, client: bytes, req: ClientRequest, message: str) -> None:
        self.counters["bad_requests"] += 1
        self.answer(client, req.request_id, ReplyCode.BAD_REQUEST, message)

    def drain_supervisor(self) -> None:
        for _ in range(MAX_DRAIN):
            try:
                msg = self.pair.recv_pyobj(zmq.NOBLOCK)
            except zmq.Again:
                return
            now = time.monotonic()
            self.take_health(now)  # what the supervisor did shows before its answer
            if isinstance(msg, Members):
                self.set_members(msg.addresses, now)
            elif isinstance(msg, Answer):
                self.finish_command(msg, now)

    def finish_command(self, answer: Answer, now: float) -> None:
        cmd = answer.command
        self.commands_running -= 1
        if answer.faults is not None:
            for node_id, v in self.views.items():
                v.fault = answer.faults.get(node_id, frozenset())
            self.send_faults(now)
        code = ReplyCode(answer.code)
        if code == ReplyCode.OK:
            log.info("command %s %s -> %s", cmd.name, list(cmd.args), answer.value)
            self.timeline.command(cmd.name, cmd.args, answer.value)
        elif code == ReplyCode.BAD_REQUEST:
            self.counters["bad_requests"] += 1
        self.answer(cmd.client, cmd.request_id, code, answer.value)

    def set_members(self, addresses: dict[int, str], now: float) -> None:
        for node_id in set(self.views) - set(addresses):
            self.remove_view(node_id)
        for node_id, address in addresses.items():
            if node_id in self.views and self.addresses.get(node_id) != address:
                self.remove_view(node_id)
            if node_id not in self.views:
                self.add_view(node_id, address)
        self.addresses = dict(addresses)
        self.apply_health(now)  # the sample that came with the change names new nodes
        self.update_leader(now)

    def take_health(self, now: float) -> None:
        """Take in the supervisor's latest sample if it is new. A node whose process is
        not the one its status came from (killed, restarted, started by `up`) has said
        nothing yet."""
        if self.shared.health is not self.health:
            self.apply_health(now)

    def apply_health(self, now: float) -> None:
        health = self.health = self.shared.health
        changed = False
        for node_id, view in self.views.items():
            h = health.get(node_id)
            key = (h["pid"], h["create_time"]) if h and h["alive"] else None
            if key != view.process_key:
                view.process_key = key
                view.status, view.unanswered_since, view.fault_acked = None, 0.0, None
                changed = True
        if changed:
            self.update_leader(now)

    # ---- leader tracking -----------------------------------------------------------

    def poll_nodes(self, now: float) -> None:
        """STATUS to every node; FAULT to those whose partition may not be in force."""
        for v in self.views.values():
            # A partition is re-sent every poll while it stands: a restarted node comes
            # back with no faults, and FAULT is idempotent. It goes before the STATUS on
            # the same connection, so a node that answers a poll has its faults in force.
            if v.fault or v.fault_acked != v.fault:
                self.send_own(v, OwnRequest(ReqOp.FAULT, v.id, now, v.fault))
            missing = self.unknown_members(v)
            if missing:
                # It lags behind the configuration (the log that names them has not
                # reached it): tell it where they are, so it can answer them (§4.1).
                self.send_own(v, OwnRequest(ReqOp.PEERS, v.id, now, addresses=missing))
            if not v.unanswered_since:
                v.unanswered_since = now
            self.send_own(v, OwnRequest(ReqOp.STATUS, v.id, now))
        for rid, own in list(self.own.items()):
            if now - own.sent_at > OWN_REQUEST_TTL_S:
                del self.own[rid]
        self.update_leader(now)

    def send_faults(self, now: float) -> None:
        for v in self.views.values():
            v.fault_acked = None
            self.send_own(v, OwnRequest(ReqOp.FAULT, v.id, now, v.fault))

    def unknown_members(self, view: NodeView) -> dict[int, str]:
        """The members whose addresses the node's last status lacks."""
        known = (view.status or {}).get("peers")
        if known is None:
            return {}
        return {i: a for i, a in self.addresses.items()
                if i != view.id and known.get(str(i)) != a}

    def send_own(self, view: NodeView, own: OwnRequest) -> None:
        rid = next(self.own_ids)
        req = ClientRequest(rid, own.kind, peers=own.fault, addresses=own.addresses)
        try:
            view.dealer.send_multipart((OWN_ENVELOPE, wire.encode_request(req)), zmq.NOBLOCK)
        except zmq.Again:
            return  # not connected: the node counts as unanswered until it is
        self.own[rid] = own

    def handle_own_replies(self, view: NodeView, frame: bytes) -> None:
        try:
            replies = wire.decode_replies(frame)
        except wire.MalformedFrame:
            self.counters["malformed"] += 1
            return
        for reply in replies:
            self.handle_own_reply(view, reply)

    def handle_own_reply(self, view: NodeView, reply: wire.ClientReply) -> None:
        own = self.own.pop(reply.request_id, None)
        if own is None or own.node != view.id or reply.code != ReplyCode.OK:
            return
        if own.kind == ReqOp.FAULT:
            view.fault_acked = own.fault
            return
        if own.kind == ReqOp.PEERS:
            return  # the next STATUS shows them
        if not isinstance(reply.value, dict) or reply.value.get("id") != view.id:
            self.counters["malformed"] += 1
            return
        now = time.monotonic()
        self.timeline.observe(view.id, view.status, reply.value)
        view.status = reply.value
        view.status_at = now
        view.unanswered_since = 0.0
        self.update_leader(now)

    def believable(self, view: NodeView, now: float) -> bool:
        """Its process runs and it answers polls: what it says about itself holds."""
        if view.process_key is None:
            return False
        return not (view.unanswered_since and now - view.unanswered_since > STALE_AFTER_S)

    def fresh_status(self, view: NodeView, now: float) -> dict[str, Any] | None:
        if view.status is None or not self.believable(view, now):
            return None
        return view.status if now - view.status_at <= STALE_AFTER_S else None

    def update_leader(self, now: float) -> None:
        """The believable node that claims leadership in the highest term leads (a
        deposed leader that has not heard of the new term claims a lower one)."""
        best: tuple[int, int] | None = None
        for v in self.views.values():
            st = self.fresh_status(v, now)
            if st and st.get("role") == "leader":
                term = st.get("term", 0)
                if best is None or term > best[1]:
                    best = (v.id, term)
        if best is not None:
            self.set_leader(best[0], now)
            return
        if self.leader:
            view = self.views[self.leader]
            st = self.fresh_status(view, now)
            # A leader learned from a hint stands until a poll answered after the hint
            # says otherwise.
            if not self.believable(view, now) or (
                st and st.get("role") != "leader" and view.status_at > self.leader_since
            ):
                self.set_leader(0, now)
                return
        self.publish(now)

    def leader_term(self, now: float) -> int:
        """The leader's term, or the highest term any node reports."""
        if self.leader and self.leader in self.views:
            st = self.fresh_status(self.views[self.leader], now)
            if st and st.get("role") == "leader":
                return st["term"]
        return max((v.status.get("term", 0) for v in self.views.values() if v.status),
                   default=0)

    # ---- status --------------------------------------------------------------------

    def status_map(self) -> dict[str, Any]:
        now = time.monotonic()
        self.take_health(now)
        self.update_leader(now)
        leader = self.views.get(self.leader)
        lst = (self.fresh_status(leader, now) if leader else None) or {}
        voters, learners = sorted(lst.get("voters", ())), sorted(lst.get("learners", ()))
        return {
            "leader": self.leader or None,
            "term": self.leader_term(now),
            "voters": voters,
            "learners": learners,
            "nodes": [node_status(i, self.fresh_status(v, now), self.health.get(i), v.fault,
                                  voters, learners)
                      for i, v in sorted(self.views.items())],
            "controller": {**self.counters, "commands_running": self.commands_running,
                           "uptime_s": round(now - self.started, 3)},
        }
