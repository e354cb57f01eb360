"""The controller: one process in front of a cluster's nodes (docs/ARCHITECTURE.md).

Clients talk to a single address, the controller's ROUTER (`cluster.json`'s controller
address, the default of `raftkv.Client`). The controller routes each request to the node
it believes leads, hides redirects and elections from the client, watches every worker
with psutil, and kills, restarts, pauses and partitions nodes on command. Everything runs
in one blocking loop around a `zmq.Poller`; the process has no other thread.

Routing. A client request arrives as `[client_id, frame]` and is peeked at with
`wire.decode_request`: a malformed frame is counted and dropped, an invalid one answered
BAD_REQUEST, STATUS and CONTROL are served here. Any other request is forwarded
*unchanged* as `[client_id, frame]` on the DEALER connected to the leader; the node
answers into that envelope (transport.py), so the reply comes back as
`[client_id, reply]` and goes to the client byte for byte. Clients never see:

- NOT_LEADER: the request is re-sent to the hinted leader at once, or, with no hint,
  held and retried every SWEEP_S (probing the next live node while no leader is known);
- UNAVAILABLE (election or transfer under way, leadership lost with the write pending):
  held and retried every SWEEP_S;
- a leader that died or froze: a request unanswered for RESEND_AFTER_S is re-sent to the
  leader known now, unless it sits at a node that still answers our polls and leads.

Re-sending a write is safe: it carries (client_id, seq) and the state machine applies a
seq once and answers a repeat with the saved reply (kv.py). A request still pending at
DEADLINE_S is answered UNAVAILABLE by the controller.

Leader tracking. Every POLL_S the controller sends STATUS to each node under its own
envelope OWN_ENVELOPE (a client's routing id is never 4 bytes starting with a zero byte:
ZeroMQ reserves those and makes its own 5 bytes long), so its requests and relayed ones
never mix. The leader is the believable node that says role == "leader" in the highest
term; a NOT_LEADER hint names it in between polls. A node is believable while its process
lives and no STATUS poll to it has gone unanswered for STALE_AFTER_S.

Commands: a CONTROL request `[name, args]`, answered OK with a small map, or
BAD_REQUEST / UNAVAILABLE with a message:

    status                   -> the status map (also the answer to a plain STATUS)
    kill-leader              -> {"killed": id, "term": term}   UNAVAILABLE if no leader
    kill N                   -> {"killed": N} | {"not_running": N}
    restart N                -> {"restarted": N, "pid": pid} | {"already_running": N}
    pause N / resume N       -> {"paused": N} / {"resumed": N}  BAD_REQUEST if not running
    partition G1 G2 ...      -> {"groups": [[ids], ...]}  (unlisted nodes: one more group)
    heal                     -> {"healed": [ids]}
    transfer-leader N        -> {"transferring_to": N, "from": leader}, or the leader's
                                own refusal relayed as it came
    add-node [N]             -> {"added": N, "address", "pid", "index", "voters",
                                "learners"} once the leader committed N as a learner
                                (N: the next unused id); the node is started first,
                                and the loop waits (about half a second) until it
                                listens, trying another port if it could not bind
    promote N                -> {"promoted": N, "index", "voters", "learners"}
    remove-node N            -> {"removed": N, "stopped": bool, "index", "voters",
                                "learners"}: committed, then the process is stopped and
                                the node dropped from cluster.json (its data dir stays)

Membership commands go to the leader as CONF_CHANGE requests, relayed like client
requests; a retry of a change already in force is answered OK by the node. After a
change every node's command line in cluster.json names every member as a peer. A node's
command line loses --new/--join once the node has been seen up (cluster_state.
FIRST_START_FLAGS): an added node's once it listens, any other's at its first STATUS
answer.
    events [SINCE]           -> {"events": [...], "next": seq, "last": seq, "lost": n}:
                                the timeline (harness/timeline.py) after event SINCE

A group is "1,2" (str) or 3 (int). Partitions are FAULT requests to each node naming
every node outside its group; they are re-sent every poll while a partition stands, so a
restarted node (which starts with no faults) is cut off again until `heal`.

Status map (the CONTROL "status" and STATUS value)::

    {"leader": id | None, "term": n,
     "voters": [ids], "learners": [ids],   (the leader's view; [] while none is known)
     "nodes": [{"id", "address", "pid", "alive", "paused", "member", "role", "term",
                "last_index",
                "commit_index", "applied_index", "cpu_percent", "rss_bytes", "open_files",
                "uptime_s", "dropped_malformed", "partitioned_from": [ids],
                "exit_code" (of its last process, if the controller started it and it
                exited: 4 means it refused its data dir; None otherwise),
                "vote", "lead", "snapshot_index", "log_tail": [[index, term], ...],
                "counters": {...}, "fsync_ms": {"p50", "p99", "count"},
                "kv": {"keys", "sessions", "malformed", "bytes", "quota_bytes"},
                "metrics_port"}, ...],
     "controller": {counters, "pending": n, "uptime_s": s}}

A node's Raft fields are None when its last STATUS is stale; its psutil fields are None
when its process is not running. Processes are only ever signalled through
`cluster_state` helpers that check the create time recorded in cluster.json.
"""

from __future__ import annotations

import errno
import itertools
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import zmq

from harness import cluster_state
from harness.cluster_state import FILE_NAME, ClusterState, NodeEntry
from harness.launcher import free_ports, port_in_use
from harness.timeline import Timeline
from raftkv import wire
from raftkv.metrics import quantile
from raftkv.raft import ConfOp
from raftkv.security import ADMIN, NODE_PREFIX, ServerKeys, make_key, refusal
from raftkv.transport import bind_router, connect_dealer
from raftkv.wire import ClientRequest, ReplyCode, ReqOp

log = logging.getLogger("raftkv.controller")

POLL_S = 0.2  # STATUS to every node, and FAULT re-sends, this often
SWEEP_S = 0.05  # held requests are retried this often
RESEND_AFTER_S = 1.0  # a request unanswered this long goes to the leader known now
STALE_AFTER_S = 1.0  # a node that leaves a STATUS poll unanswered this long is not believed
DEADLINE_S = 10.0  # a request still pending this long is answered UNAVAILABLE
HEALTH_S = 1.0  # psutil cpu sampling, cluster.json reload check, child reaping
OWN_REQUEST_TTL_S = 5.0  # our own STATUS/FAULT requests are forgotten after this
KILL_WAIT_S = 2.0  # how long a kill command waits for the process to disappear
JOINER_ATTEMPTS = 3  # add-node: ports tried for the new node
JOINER_START_S = 10.0  # add-node: how long the new node may take to listen
OWN_ENVELOPE = b"\x00ctl"
DEALER_ID = b"ctl"
HWM = 10_000
MAX_HOPS = 3  # NOT_LEADER redirects followed at once before waiting for a sweep
MAX_DRAIN = 1_000  # messages taken off one socket per loop turn
MAX_BATCHING_CLIENTS = 65_536  # clients remembered as taking REPS; forgotten past it

COUNTER_KEYS = (
    "requests",  # client requests received (any op)
    "relayed",  # node replies forwarded to clients
    "redirects",  # NOT_LEADER answers re-routed inside the controller
    "retries",  # UNAVAILABLE answers retried inside the controller
    "resends",  # requests re-sent after RESEND_AFTER_S without an answer
    "timeouts",  # requests answered UNAVAILABLE at their deadline
    "malformed",  # frames dropped: undecodable, wrong number of parts
    "bad_requests",  # requests answered BAD_REQUEST by the controller
    "commands",  # CONTROL and STATUS requests served
    "dropped_replies",  # replies not delivered: client gone or HWM reached
    "late_replies",  # node replies to requests already answered
    "refused_role",  # requests answered FORBIDDEN: a client key asked for an admin op
    "batches",  # REQS frames sent to nodes: one client's requests of one drain together
)


class CommandError(Exception):
    """A command that cannot be carried out: answered with `code` and the message."""

    def __init__(self, code: ReplyCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class Pending:
    """A client request relayed to a node and not answered yet."""

    client: bytes
    request_id: int
    op: ReqOp
    frame: bytes  # exactly as the client sent it
    deadline: float
    node: int = 0  # where the latest attempt went; 0: held, to be retried at the next sweep
    sent_at: float = 0.0
    avoid: int = 0  # a node that just refused it: not probed next while no leader is known
    hops: int = 0  # redirects followed at once since the last sweep (bounds a hint loop)
    # A command relayed through the leader: turns the node's OK value (and the id of the
    # node that gave it) into the command's answer, doing what follows the change.
    on_ok: Callable[[int, Any], Any] | None = None
    command: tuple[str, tuple] = ("", ())  # that command's name and arguments


@dataclass(slots=True)
class NodeView:
    """What the controller knows of one node."""

    id: int
    dealer: zmq.Socket
    status: dict[str, Any] | None = None  # its last STATUS map
    status_at: float = 0.0  # when that map arrived (monotonic)
    unanswered_since: float = 0.0  # send time of the oldest unanswered STATUS poll; 0: none
    process: psutil.Process | None = None  # kept between samples, for cpu_percent
    process_key: tuple[int, float] = (0, 0.0)  # (pid, create_time) `process` was made for
    cpu_percent: float | None = None
    # Invariant: `fault` is what this node must drop under the current partition;
    # `fault_acked` is what it last confirmed (None: unknown, e.g. after a restart).
    fault: frozenset[int] = frozenset()
    fault_acked: frozenset[int] | None = None
    # (pid, exit code) of the last node process we started that exited; its status
    # shows the code while that pid is the node's recorded one.
    exited: tuple[int, int] | None = None


@dataclass(slots=True)
class OwnRequest:
    kind: ReqOp  # STATUS, FAULT or PEERS
    node: int
    sent_at: float
    fault: frozenset[int] = frozenset()
    addresses: dict[int, str] | None = None  # PEERS


class Controller:
    """The controller's state and loop. Not thread-safe: `run` is its only driver."""

    def __init__(self, state: ClusterState, context: zmq.Context) -> None:
        self.state = state
        self.context = context
        self.stopping = False
        self.started = time.monotonic()
        self.counters = dict.fromkeys(COUNTER_KEYS, 0)
        self.pending: dict[tuple[bytes, int], Pending] = {}
        # While the front is drained, what is dispatched waits here, by (node, client),
        # and leaves as one REQS frame per pair when the drain ends (`send_outbox`): a
        # node serves a batch in one turn where it took one frame a request. None: send
        # at once (sweeps, redirects).
        self.outbox: dict[tuple[int, bytes], list[Pending]] | None = None
        # Clients that sent REQS, and their replies held until the turn ends (flush_held).
        self.batching: set[bytes] = set()
        self.held: dict[bytes, list[bytes]] = {}
        self.own: dict[int, OwnRequest] = {}
        self.own_ids = itertools.count(1)
        self.leader = 0  # the node requests go to; 0: none known
        self.leader_since = 0.0  # when `leader` was last set (monotonic)
        # (node id, Popen) of the node processes we started, reaped in the loop.
        self.children: list[tuple[int, Any]] = []
        self.timeline = Timeline()
        self.state_mtime = self.read_state_mtime()
        # The cluster's keys (raftkv.security): the front admits only them, and the
        # controller speaks to the nodes with the admin key. None: --insecure.
        self.keys = ServerKeys(state.keys_dir, own=ADMIN) if state.secure else None
        self.front = self.context.socket(zmq.ROUTER)
        self.views: dict[int, NodeView] = {}
        self.poller = zmq.Poller()
        self.view_by_socket: dict[zmq.Socket, NodeView] = {}
        self.setup_front()
        self.poller.register(self.front, zmq.POLLIN)
        for n in self.state.nodes:
            self.add_view(n)

    # ---- sockets -------------------------------------------------------------------

    def setup_front(self) -> None:
        bind_router(self.front, self.state.controller.address, HWM, self.keys)

    def connect_dealer(self, address: str) -> zmq.Socket:
        return connect_dealer(self.context, address, routing_id=DEALER_ID, hwm=HWM,
                              credentials=self.keys.client if self.keys else None)

    def add_view(self, entry: NodeEntry) -> NodeView:
        view = NodeView(entry.id, self.connect_dealer(entry.address))
        self.views[entry.id] = view
        self.view_by_socket[view.dealer] = view
        self.poller.register(view.dealer, zmq.POLLIN)
        return view

    def remove_view(self, node_id: int) -> None:
        view = self.views.pop(node_id)
        self.poller.unregister(view.dealer)
        del self.view_by_socket[view.dealer]
        view.dealer.close(linger=0)
        if self.leader == node_id:
            self.set_leader(0, time.monotonic())
        for pending in self.pending.values():
            if pending.node == node_id:
                pending.node = 0
            if pending.avoid == node_id:
                pending.avoid = 0
        for v in self.views.values():
            v.fault -= {node_id}

    def close(self) -> None:
        for entry in list(self.pending.values()):
            self.answer(entry.client, entry.request_id, ReplyCode.UNAVAILABLE,
                        "the controller is shutting down; retry")
        self.pending.clear()
        for v in self.views.values():
            v.dealer.close(linger=0)
        self.front.close(linger=0)
        if self.keys is not None:
            self.keys.close()

    # ---- the loop ------------------------------------------------------------------

    def run(self) -> None:
        now = time.monotonic()
        next_poll = next_sweep = next_health = now
        log.info("controller up on %s for nodes %s", self.state.controller.address,
                 ", ".join(str(i) for i in self.views))
        while not self.stopping:
            timeout = max(0.0, min(next_poll, next_sweep, next_health) - time.monotonic())
            for sock, _ in self.poller.poll(int(timeout * 1000) + 1):
                if sock is self.front:
                    self.drain_front()
                elif sock in self.view_by_socket:  # not a node removed this turn
                    self.drain_node(self.view_by_socket[sock])
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + POLL_S
                self.poll_nodes(now)
            if now >= next_sweep:
                next_sweep = now + SWEEP_S
                self.sweep_pending(now)
            if now >= next_health:
                next_health = now + HEALTH_S
                self.sample_health()
            self.flush_held()

    def stop(self, *_: Any) -> None:
        self.stopping = True

    # ---- client side ---------------------------------------------------------------

    def drain_front(self) -> None:
        self.outbox = {}
        try:
            self.take_front()
        finally:
            outbox, self.outbox = self.outbox, None
            self.send_outbox(outbox, time.monotonic())

    def take_front(self) -> None:
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
                self.handle_frame(parts[0], parts[1])
            else:
                self.handle_frame(parts[0].bytes, parts[1].bytes, parts[1].get("User-Id"))

    def handle_frame(self, client: bytes, frame: bytes, role: str | None = None) -> None:
        """A REQ frame, or a REQS frame whose requests are served one by one, each passed
        on as the bytes it came as; `role` is the connection's (None: no keys)."""
        try:
            batch = wire.split_batch(frame, wire.Kind.REQS)
        except wire.MalformedFrame:
            self.counters["malformed"] += 1
            return
        if batch is None:
            self.handle_request(client, frame, role)
            return
        # A client that sends REQS takes REPS: its replies of a turn leave together.
        if client not in self.batching:
            if len(self.batching) >= MAX_BATCHING_CLIENTS:
                self.batching.clear()  # safe: they all take plain REP frames too
            self.batching.add(client)
        for one in batch:
            self.handle_request(client, one, role)

    def handle_request(self, client: bytes, frame: bytes, role: str | None = None) -> None:
        """Serve or route one request; `role` is its connection's (None: no keys, anyone
        may ask anything)."""
        self.counters["requests"] += 1
        try:
            req = wire.decode_request(frame)
        except wire.MalformedFrame:
            self.counters["malformed"] += 1
            return
        except wire.InvalidRequest as e:
            self.counters["bad_requests"] += 1
            self.answer(client, e.request_id, ReplyCode.BAD_REQUEST, e.message)
            return
        self.serve(client, req, frame, role)

    def serve(self, client: bytes, req: ClientRequest, frame: bytes, role: str | None) -> None:
        why = None if role is None else refusal(role, req.op)
        if why is not None:
            self.counters["refused_role"] += 1
            self.answer(client, req.request_id, ReplyCode.FORBIDDEN, why)
            return
        if req.op == ReqOp.STATUS:
            self.counters["commands"] += 1
            self.answer(client, req.request_id, ReplyCode.OK, self.status_map())
        elif req.op == ReqOp.CONTROL:
            self.counters["commands"] += 1
            self.run_command(client, req)
        else:
            now = time.monotonic()
            self.admit(Pending(client, req.request_id, req.op, frame, now + DEADLINE_S), now)

    def answer(self, client: bytes, request_id: int, code: ReplyCode, value: Any = None) -> None:
        """Reply from the controller itself; the hint is the leader it routes to."""
        self.send_to_client(client, wire.encode_reply(request_id, code, value, self.leader))

    def send_to_client(self, client: bytes, frame: bytes) -> None:
        if client in self.batching:
            self.held.setdefault(client, []).append(frame)
            return
        self.send_frame(client, frame)

    def flush_held(self) -> None:
        """Send the replies held for clients that batch: one REPS frame each (a lone
        reply as a REP). Once a loop turn, as a node does."""
        held, self.held = self.held, {}
        for client, frames in held.items():
            self.send_frame(client, frames[0] if len(frames) == 1
                            else wire.encode_replies(frames))

    def send_frame(self, client: bytes, frame: bytes) -> None:
        try:
            self.front.send_multipart((client, frame), zmq.NOBLOCK)
        except zmq.Again:
            self.counters["dropped_replies"] += 1
        except zmq.ZMQError as e:
            if e.errno != errno.EHOSTUNREACH:
                raise
            self.counters["dropped_replies"] += 1

    # ---- relaying ------------------------------------------------------------------

    def admit(self, entry: Pending, now: float) -> None:
        # Invariant: every entry in `pending` has been answered to nobody yet, and is
        # either at a node (node != 0) or held for the next sweep (node == 0).
        self.pending[(entry.client, entry.request_id)] = entry
        self.dispatch(entry, now)

    def dispatch(self, entry: Pending, now: float) -> None:
        """Send `entry` to the node most likely to serve it, or hold it for the next sweep."""
        target = self.pick_target(entry, now)
        entry.node = 0
        if not target:
            return
        if self.outbox is not None:
            self.outbox.setdefault((target, entry.client), []).append(entry)
            return
        self.send_batch(target, entry.client, [entry], now)

    def send_outbox(self, outbox: dict[tuple[int, bytes], list[Pending]], now: float) -> None:
        for (target, client), entries in outbox.items():
            if target in self.views:
                self.send_batch(target, client, entries, now)

    def send_batch(self, target: int, client: bytes, entries: list[Pending], now: float) -> None:
        """Send `entries`, all of one client, to node `target`: a lone request as its own
        frame, several as one REQS frame (the node answers each with its own REP)."""
        frame = (entries[0].frame if len(entries) == 1
                 else wire.encode_requests([e.frame for e in entries]))
        try:
            self.views[target].dealer.send_multipart((client, frame), zmq.NOBLOCK)
        except zmq.Again:  # no connection to that node (down) or its queue is full
            for entry in entries:
                entry.avoid = target
            if target == self.leader:
                self.set_leader(0, now)
            return
        if len(entries) > 1:
            self.counters["batches"] += 1
        for entry in entries:
            entry.node = target
            entry.sent_at = now

    def pick_target(self, entry: Pending, now: float) -> int:
        if self.leader and self.believable(self.views[self.leader], now):
            return self.leader
        # No leader known: probe the next live node after the one that refused last. A
        # follower that knows the leader answers NOT_LEADER with its id; during an
        # election, it answers without a hint and the entry waits a sweep.
        ids = sorted(self.views)
        start = ids.index(entry.avoid) + 1 if entry.avoid in self.views else 0
        for k in range(len(ids)):
            v = self.views[ids[(start + k) % len(ids)]]
            if self.believable(v, now):
                return v.id
        return 0

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
            try:
                batch = wire.split_batch(frame, wire.Kind.REPS)
            except wire.MalformedFrame:
                self.counters["malformed"] += 1
                continue
            for one in (frame,) if batch is None else batch:
                try:
                    reply = wire.decode_reply(one)
                except wire.MalformedFrame:
                    self.counters["malformed"] += 1
                    continue
                if envelope == OWN_ENVELOPE:
                    self.handle_own_reply(view, reply)
                else:
                    self.handle_relayed_reply(view, envelope, one, reply)

    def handle_relayed_reply(
        self, view: NodeView, client: bytes, frame: bytes, reply: wire.ClientReply
    ) -> None:
        entry = self.pending.get((client, reply.request_id))
        if entry is None:
            self.counters["late_replies"] += 1
            return
        code = reply.code
        if code in (ReplyCode.NOT_LEADER, ReplyCode.UNAVAILABLE):
            if entry.node != view.id:
                return  # an earlier attempt's refusal; the latest one is still out
            now = time.monotonic()
            if code == ReplyCode.NOT_LEADER:
                self.counters["redirects"] += 1
                self.learn_leader_hint(view.id, reply.leader_hint, now)
            else:
                self.counters["retries"] += 1
            entry.avoid = view.id
            entry.node = 0
            # Follow a fresh hint at once, a few times; otherwise (an election, a transfer,
            # two nodes naming each other) the entry waits for the next sweep.
            if (code == ReplyCode.NOT_LEADER and self.leader and self.leader != view.id
                    and entry.hops < MAX_HOPS):
                entry.hops += 1
                self.dispatch(entry, now)
            return
        # A final answer, from any attempt: it answers the same request (writes are
        # deduplicated by (client_id, seq)), so it goes to the client as it came.
        del self.pending[(client, reply.request_id)]
        self.counters["relayed"] += 1
        if entry.on_ok is not None and code == ReplyCode.OK:
            try:
                value = entry.on_ok(view.id, reply.value)
            except (CommandError, psutil.Error, OSError) as e:
                log.warning("after %s: %s", entry.op.name, e)
                self.answer(client, reply.request_id, ReplyCode.UNAVAILABLE,
                            f"the change was made, but what follows failed: {e}")
                return
            log.info("command %s %s -> %s", *entry.command, value)
            self.timeline.command(*entry.command, value)
            self.answer(client, reply.request_id, ReplyCode.OK, value)
            return
        self.send_to_client(client, frame)

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

    def sweep_pending(self, now: float) -> None:
        """Retry held requests, re-send stuck ones, and answer the expired."""
        for key, entry in list(self.pending.items()):
            if now >= entry.deadline:
                del self.pending[key]
                self.counters["timeouts"] += 1
                self.answer(entry.client, entry.request_id, ReplyCode.UNAVAILABLE,
                            f"no leader within {DEADLINE_S:g} s")
            elif entry.node == 0:
                entry.hops = 0
                self.dispatch(entry, now)
            elif now - entry.sent_at >= RESEND_AFTER_S and self.should_resend(entry, now):
                self.counters["resends"] += 1
                entry.avoid = entry.node
                self.dispatch(entry, now)

    def should_resend(self, entry: Pending, now: float) -> bool:
        """A slow leader that still answers polls keeps its requests; anything else
        (dead, frozen, deposed) sends them on to the leader known now."""
        if entry.node == self.leader and self.believable(self.views[entry.node], now):
            entry.sent_at = now  # look again in RESEND_AFTER_S
            return False
        return True

    # ---- leader tracking -----------------------------------------------------------

    def poll_nodes(self, now: float) -> None:
        """STATUS to every node; FAULT to those whose partition may not be in force."""
        for v in self.views.values():
            self.refresh_process(v)
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

    def unknown_members(self, view: NodeView) -> dict[int, str]:
        """The members (in cluster.json) whose addresses the node's last status lacks."""
        known = (view.status or {}).get("peers")
        if known is None:
            return {}
        return {n.id: n.address for n in self.state.nodes
                if n.id != view.id and known.get(str(n.id)) != n.address}

    def send_own(self, view: NodeView, own: OwnRequest) -> None:
        rid = next(self.own_ids)
        req = ClientRequest(rid, own.kind, peers=own.fault, addresses=own.addresses)
        try:
            view.dealer.send_multipart((OWN_ENVELOPE, wire.encode_request(req)), zmq.NOBLOCK)
        except zmq.Again:
            return  # not connected: the node counts as unanswered until it is
        self.own[rid] = own

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
        if cluster_state.is_first_start(self.state.node(view.id).argv):
            self.maybe_reload_state()  # what others wrote is taken in before writing
            if cluster_state.record_first_starts(self.state, {view.id}):
                self.state_mtime = self.read_state_mtime()

    def believable(self, view: NodeView, now: float) -> bool:
        """Its process runs and it answers polls: what it says about itself holds."""
        if view.process is None:
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
        if not self.leader:
            return
        view = self.views[self.leader]
        st = self.fresh_status(view, now)
        # A leader learned from a hint stands until a poll answered after the hint
        # says otherwise.
        if not self.believable(view, now) or (
            st and st.get("role") != "leader" and view.status_at > self.leader_since
        ):
            self.set_leader(0, now)

    def leader_term(self, now: float) -> int:
        """The leader's term, or the highest term any node reports."""
        if self.leader:
            st = self.fresh_status(self.views[self.leader], now)
            if st and st.get("role") == "leader":
                return st["term"]
        return max((v.status.get("term", 0) for v in self.views.values() if v.status),
                   default=0)

    # ---- processes -----------------------------------------------------------------

    def refresh_process(self, view: NodeView) -> psutil.Process | None:
        """The node's process if it runs, keeping the same psutil object while the pid and
        create time in cluster.json do not change (cpu_percent measures between calls)."""
        entry = self.state.node(view.id)
        key = (entry.pid, entry.create_time)
        p = view.process
        if p is not None and key == view.process_key:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    return p
            except psutil.Error:
                pass
            view.process = None
            return None
        view.process_key = key
        view.process = cluster_state.live_process(*key)
        view.cpu_percent = None
        if view.process is not None:
            try:
                view.process.cpu_percent(None)  # the baseline; the next call measures
            except psutil.Error:
                view.process = None
        return view.process

    def sample_health(self) -> None:
        self.reap_children()
        self.maybe_reload_state()
        for v in self.views.values():
            p = self.refresh_process(v)
            if p is None:
                continue
            try:
                v.cpu_percent = p.cpu_percent(None)
            except psutil.Error:
                v.cpu_percent = None

    def reap_children(self) -> None:
        """Collect node processes we started that exited, keeping each one's code for
        the node's status."""
        running = []
        for node_id, child in self.children:
            code = child.poll()
            if code is None:
                running.append((node_id, child))
            elif node_id in self.views:
                self.views[node_id].exited = (child.pid, code)
                log.info("node %d (pid %d) exited with code %d", node_id, child.pid, code)
        self.children = running

    def read_state_mtime(self) -> float:
        try:
            return (self.state.dir / FILE_NAME).stat().st_mtime
        except OSError:
            return 0.0

    def maybe_reload_state(self) -> None:
        """Take in pids recorded by others (`raftkv up` restarting a node)."""
        mtime = self.read_state_mtime()
        if mtime == self.state_mtime:
            return
        self.state_mtime = mtime
        try:
            fresh = ClusterState.load(self.state.dir)
        except ValueError as e:
            log.warning("ignoring unreadable cluster state: %s", e)
            return
        if fresh is None:
            return
        for n in fresh.nodes:
            if n.id in self.views:
                self.update_entry(n)

    def update_entry(self, fresh: NodeEntry) -> None:
        entry = self.state.node(fresh.id)
        entry.pid, entry.create_time = fresh.pid, fresh.create_time
        entry.argv, entry.log = fresh.argv, fresh.log

    def save_node_pid(self, node_id: int, pid: int, created: float) -> None:
        """Record a restarted node in cluster.json, keeping whatever else changed there."""
        entry = self.state.node(node_id)
        entry.pid, entry.create_time = pid, created
        try:
            fresh = ClusterState.load(self.state.dir)
        except ValueError:
            fresh = None
        target = fresh if fresh is not None else self.state
        target.node(node_id).pid, target.node(node_id).create_time = pid, created
        target.save()
        self.state_mtime = self.read_state_mtime()

    # ---- commands ------------------------------------------------------------------

    def run_command(self, client: bytes, req: ClientRequest) -> None:
        handler = COMMANDS.get(req.name)
        try:
            if handler is None:
                raise CommandError(ReplyCode.BAD_REQUEST,
                                   f"unknown command {req.name!r}; commands: "
                                   f"{', '.join(sorted(COMMANDS))}")
            value = handler(self, client, req)
        except CommandError as e:
            if e.code == ReplyCode.BAD_REQUEST:
                self.counters["bad_requests"] += 1
            self.answer(client, req.request_id, e.code, e.message)
            return
        except (psutil.Error, OSError) as e:
            log.warning("command %s %s failed: %s", req.name, list(req.args), e)
            self.answer(client, req.request_id, ReplyCode.UNAVAILABLE,
                        f"{req.name} failed: {e}")
            return
        if value is not None:  # None: answered later (relayed through a node)
            if req.name not in ("status", "events"):
                log.info("command %s %s -> %s", req.name, list(req.args), value)
                self.timeline.command(req.name, req.args, value)
            self.answer(client, req.request_id, ReplyCode.OK, value)

    def node_arg(self, name: str, args: tuple) -> int:
        """The single node id argument of `name`, checked."""
        if len(args) != 1:
            raise CommandError(ReplyCode.BAD_REQUEST,
                               f"{name} takes one node id, got {len(args)} arguments")
        return self.parse_id(name, args[0])

    def parse_id(self, name: str, arg: int | str) -> int:
        if type(arg) is str and arg.strip().isdigit():
            arg = int(arg)
        if type(arg) is not int:
            raise CommandError(ReplyCode.BAD_REQUEST,
                               f"{name}: {arg!r:.40} is not a node id")
        if arg not in self.views:
            raise CommandError(ReplyCode.BAD_REQUEST,
                               f"{name}: unknown node {arg}; nodes: "
                               f"{', '.join(str(i) for i in sorted(self.views))}")
        return arg

    @staticmethod
    def no_args(name: str, args: tuple) -> None:
        if args:
            raise CommandError(ReplyCode.BAD_REQUEST, f"{name} takes no arguments")

    def running_process(self, name: str, node_id: int) -> psutil.Process:
        p = self.refresh_process(self.views[node_id])
        if p is None:
            raise CommandError(ReplyCode.BAD_REQUEST, f"{name}: node {node_id} is not running")
        return p

    def command_status(self, client: bytes, req: ClientRequest) -> dict[str, Any]:
        self.no_args(req.name, req.args)
        return self.status_map()

    def command_kill_leader(self, client: bytes, req: ClientRequest) -> dict[str, Any]:
        self.no_args(req.name, req.args)
        now = time.monotonic()
        self.update_leader(now)
        if not self.leader:
            raise CommandError(ReplyCode.UNAVAILABLE, "no leader to kill")
        leader, term = self.leader, self.leader_term(now)
        if not self.kill_node(leader):
            raise CommandError(ReplyCode.UNAVAILABLE,
                               f"no leader to kill: node {leader} is not running")
        return {"killed": leader, "term": term}

    def command_kill(self, client: bytes, req: ClientRequest) -> dict[str, Any]:
        node_id = self.node_arg(req.name, req.args)
        if self.kill_node(node_id):
            return {"killed": node_id}
        return {"not_running": node_id}

    def kill_node(self, node_id: int) -> bool:
        entry = self.state.node(node_id)
        if not cluster_state.signal_process(entry.pid, entry.create_time, signal.SIGKILL):
            return False
        # SIGKILL is asynchronous: wait until the process is gone (or a zombie), so a
        # `restart` right after this answer finds it dead.
        cluster_state.wait_gone(entry.pid, entry.create_time, KILL_WAIT_S)
        log.info("killed node %d (pid %d)", node_id, entry.pid)
        view = self.views[node_id]
        # What it said is void now; requests at it move on at the next sweep.
        view.process = None
        view.status = None
        view.fault_acked = None
        if self.leader == node_id:
            self.set_leader(0, time.monotonic())
        for pending in self.pending.values():
            if pending.node == node_id:
                pending.node, pending.avoid = 0, node_id
        self.reap_children()
        return True

    def command_restart(self, client: bytes, req: ClientRequest) -> dict[str, Any]:
        node_id = self.node_arg(req.name, req.args)
        view = self.views[node_id]
        if self.refresh_process(view) is not None:
            return {"already_running": node_id}
        self.maybe_reload_state()  # the command line as `up` last settled it
        entry = self.state.node(node_id)
        child = cluster_state.spawn(entry.argv, self.state.dir / entry.log, detach=True)
        self.children.append((node_id, child))
        self.save_node_pid(node_id, child.pid, cluster_state.create_time(child.pid))
        view.status, view.unanswered_since, view.fault_acked = None, 0.0, None
        self.refresh_process(view)
        log.info("restarted node %d as pid %d", node_id, child.pid)
        return {"restarted": node_id, "pid": child.pid}

    def command_pause(self, client: bytes, req: ClientRequest) -> dict[str, Any]:
        node_id = self.node_arg(req.name, req.args)
        self.running_process(req.name, node_id).suspend()
        return {"paused": node_id}

    def command_resume(self, client: bytes, req: ClientRequest) -> dict[str, Any]:
        node_id = self.node_arg(req.name, req.args)
        self.running_process(req.name, node_id).resume()
        return {"resumed": node_id}

    def command_partition(self, client: bytes, req: ClientRequest) -> dict[str, Any]:
        groups = self.parse_groups(req.name, req.args)
        everyone = frozenset(self.views)
        for group in groups:
            for node_id in group:
                self.views[node_id].fault = everyone - group
        self.send_faults(time.monotonic())
        return {"groups": [sorted(g) for g in groups]}

    def parse_groups(self, name: str, args: tuple) -> list[frozenset[int]]:
        """The groups named by `args`, plus one of the nodes no group names."""
        if not args:
            raise CommandError(ReplyCode.BAD_REQUEST,
                               f"{name} takes groups of node ids, e.g. '1,2' '3'")
        groups: list[frozenset[int]] = []
        seen: set[int] = set()
        for arg in args:
            parts = arg.split(",") if type(arg) is str else [arg]
            group = frozenset(self.parse_id(name, p) for p in parts)
            if group & seen:
                raise CommandError(ReplyCode.BAD_REQUEST,
                                   f"{name}: node {min(group & seen)} is in two groups")
            seen |= group
            groups.append(group)
        rest = frozenset(self.views) - seen
        if rest:
            groups.append(rest)
        return groups

    def command_heal(self, client: bytes, req: ClientRequest) -> dict[str, Any]:
        self.no_args(req.name, req.args)
        for v in self.views.values():
            v.fault = frozenset()
        self.send_faults(time.monotonic())
        return {"healed": sorted(self.views)}

    def send_faults(self, now: float) -> None:
        for v in self.views.values():
            v.fault_acked = None
            self.send_own(v, OwnRequest(ReqOp.FAULT, v.id, now, v.fault))

    def command_transfer_leader(self, client: bytes, req: ClientRequest) -> None:
        target = self.node_arg(req.name, req.args)
        # Relayed like a client request, so redirects and elections are handled alike.
        frame = wire.encode_request(ClientRequest(req.request_id, ReqOp.TRANSFER,
                                                  target=target))
        self.relay(client, req, frame,
                   lambda leader, _: {"transferring_to": target, "from": leader})
        return None

    def relay(self, client: bytes, req: ClientRequest, frame: bytes,
              on_ok: Callable[[int, Any], Any]) -> None:
        """Send command `req`'s request (`frame`) to the leader like a client request
        (redirects, elections and deadlines handled alike); its OK is answered with
        on_ok's value."""
        now = time.monotonic()
        op = wire.decode_request(frame).op
        self.admit(Pending(client, req.request_id, op, frame, now + DEADLINE_S, on_ok=on_ok,
                           command=(req.name, req.args)), now)

    # ---- membership (raftkv add-node / remove-node) --------------------------------

    def command_add_node(self, client: bytes, req: ClientRequest) -> None:
        """Start a new node that joins the cluster, and ask the leader to add it as a
        learner. Answered once the change is committed; `promote` makes it a voter."""
        if len(req.args) > 1:
            raise CommandError(ReplyCode.BAD_REQUEST, "add-node takes at most a node id")
        node_id = self.new_node_id(req.args[0] if req.args else None)
        data_dir = f"data/node{node_id}"
        if (self.state.dir / data_dir).exists():
            raise CommandError(ReplyCode.BAD_REQUEST,
                               f"add-node: {self.state.dir / data_dir} exists (a removed node's "
                               "data?); move it away or pick another id")
        entry, child = self.start_joiner(node_id, data_dir)
        address = entry.address
        self.state.nodes.append(entry)
        self.save_members()
        self.add_view(entry)
        log.info("started node %d as pid %d at %s; adding it as a learner", node_id,
                 child.pid, address)
        frame = wire.encode_request(ClientRequest(
            req.request_id, ReqOp.CONF_CHANGE, conf_op=int(ConfOp.ADD_LEARNER),
            target=node_id, address=address))
        self.relay(client, req, frame,
                   lambda _, value: {"added": node_id, "address": address, "pid": child.pid,
                                     **value})
        return None

    def start_joiner(self, node_id: int, data_dir: str) -> tuple[NodeEntry, Any]:
        """Start node `node_id` with --join and wait until it listens; its entry records
        the command line of its later starts. A port that was free when picked can be
        taken before the node binds it (an outgoing connection's ephemeral port): then
        the node exits, and another port is tried."""
        address = self.new_node_address(node_id)
        if self.state.secure:  # the members admit its key once they reread the key dir
            make_key(self.state.keys_dir, f"{NODE_PREFIX}{node_id}")
        for _ in range(JOINER_ATTEMPTS):
            # Metrics like the others': on a free port if they have them.
            metrics_port = free_ports(1)[0] if self.state.nodes[0].metrics_port else 0
            argv = cluster_state.joiner_argv(self.state.nodes[0].argv, node_id, address,
                                             self.state.addresses, self.state.dir / data_dir,
                                             metrics_port)
            entry = NodeEntry(address, f"logs/node{node_id}.log", argv, id=node_id,
                              data_dir=data_dir, metrics_port=metrics_port)
            child = cluster_state.spawn(argv, self.state.dir / entry.log, detach=True)
            self.children.append((node_id, child))
            if wait_listening(child, int(address.rpartition(":")[2]), JOINER_START_S):
                entry.pid, entry.create_time = child.pid, cluster_state.create_time(child.pid)
                # Listening, so it has had its first start: cluster_state.FIRST_START_FLAGS.
                entry.argv = cluster_state.settled_argv(argv, self.state.initial_voters)
                return entry, child
            if child.poll() is None:
                child.kill()
            log.warning("node %d did not start at %s; trying another port", node_id, address)
            address = f"tcp://{address.removeprefix('tcp://').rpartition(':')[0]}:" \
                      f"{free_ports(1)[0]}"
        tail = (self.state.dir / f"logs/node{node_id}.log").read_text(
            errors="replace").splitlines()[-3:]
        raise CommandError(ReplyCode.UNAVAILABLE,
                           f"add-node: node {node_id} did not start; the end of its log: "
                           + " | ".join(tail))

    def command_promote(self, client: bytes, req: ClientRequest) -> None:
        node_id = self.node_arg(req.name, req.args)
        frame = wire.encode_request(ClientRequest(
            req.request_id, ReqOp.CONF_CHANGE, conf_op=int(ConfOp.PROMOTE), target=node_id))
        self.relay(client, req, frame,
                   lambda _, value: {"promoted": node_id, **value})
        return None

    def command_remove_node(self, client: bytes, req: ClientRequest) -> None:
        """Ask the leader to remove a member; once that is committed, stop its process
        and forget it. (`raftkv remove-node` moves leadership away from it first.)"""
        node_id = self.node_arg(req.name, req.args)
        if len(self.views) == 1:
            raise CommandError(ReplyCode.BAD_REQUEST, "remove-node: cannot remove the last node")
        frame = wire.encode_request(ClientRequest(
            req.request_id, ReqOp.CONF_CHANGE, conf_op=int(ConfOp.REMOVE), target=node_id))
        self.relay(client, req, frame,
                   lambda _, value: {"removed": node_id, "stopped": self.forget_node(node_id),
                                     **value})
        return None

    def forget_node(self, node_id: int) -> bool:
        """Stop a removed member's process and drop it from cluster.json (its data dir
        stays). Returns whether it was running."""
        if node_id not in self.views:
            return False  # a retry of a removal already done
        entry = self.state.node(node_id)
        stopped = cluster_state.stop_process(entry.pid, entry.create_time, grace=KILL_WAIT_S)
        self.remove_view(node_id)
        self.state.nodes.remove(entry)
        self.save_members()
        return stopped

    def new_node_id(self, arg: int | str | None) -> int:
        if arg is None:
            # Past every id in use or with a data dir: a new node never reuses old data.
            used = [n.id for n in self.state.nodes]
            used += [int(p.name[4:]) for p in (self.state.dir / "data").glob("node*")
                     if p.name[4:].isdigit()]
            return max(used, default=0) + 1
        if type(arg) is str and arg.strip().isdigit():
            arg = int(arg)
        if type(arg) is not int or arg < 1:
            raise CommandError(ReplyCode.BAD_REQUEST, f"add-node: {arg!r:.40} is not a node id")
        if arg in self.views:
            raise CommandError(ReplyCode.BAD_REQUEST, f"add-node: node {arg} already exists")
        return arg

    def new_node_address(self, node_id: int) -> str:
        """The controller's port + id, as `up` numbers them, if free; else any free port."""
        host, _, port = self.state.controller.address.removeprefix("tcp://").rpartition(":")
        taken = set(self.state.addresses.values())
        candidate = f"tcp://{host}:{int(port) + node_id}"
        if int(port) + node_id < 65536 and candidate not in taken and not port_in_use(candidate):
            return candidate
        return f"tcp://{host}:{free_ports(1)[0]}"

    def save_members(self) -> None:
        """Write cluster.json after a membership change: every node's command line names
        every member as a peer, so a restarted node knows them all."""
        self.maybe_reload_state()  # keep pids that `raftkv up` recorded meanwhile
        addresses = self.state.addresses
        for n in self.state.nodes:
            n.argv = cluster_state.with_peers(n.argv, n.id, addresses)
        self.state.save()
        self.state_mtime = self.read_state_mtime()

    def command_events(self, client: bytes, req: ClientRequest) -> dict[str, Any]:
        if len(req.args) > 1:
            raise CommandError(ReplyCode.BAD_REQUEST, "events takes at most one number")
        since = req.args[0] if req.args else 0
        if type(since) is str and since.strip().isdigit():
            since = int(since)
        if type(since) is not int:
            raise CommandError(ReplyCode.BAD_REQUEST, f"events: {since!r:.40} is not a number")
        return self.timeline.since(since)

    # ---- status --------------------------------------------------------------------

    def status_map(self) -> dict[str, Any]:
        # At once: a node that exited shows its exit code, one `up` started its pid.
        self.reap_children()
        self.maybe_reload_state()
        now = time.monotonic()
        self.update_leader(now)
        leader = self.views.get(self.leader)
        lst = (self.fresh_status(leader, now) if leader else None) or {}
        voters, learners = sorted(lst.get("voters", ())), sorted(lst.get("learners", ()))
        return {
            "leader": self.leader or None,
            "term": self.leader_term(now),
            "voters": voters,
            "learners": learners,
            "nodes": [self.node_status(v, now, voters, learners)
                      for _, v in sorted(self.views.items())],
            "controller": {**self.counters, "pending": len(self.pending),
                           "uptime_s": round(now - self.started, 3)},
        }

    def node_status(self, view: NodeView, now: float, voters: list[int],
                    learners: list[int]) -> dict[str, Any]:
        entry = self.state.node(view.id)
        st = self.fresh_status(view, now) or {}
        p = self.refresh_process(view)
        health = process_health(p)
        return {
            "id": view.id,
            "address": entry.address,
            "pid": entry.pid,
            "alive": p is not None,
            "paused": health.pop("paused"),
            "member": ("voter" if view.id in voters else
                       "learner" if view.id in learners else None),
            "role": st.get("role"),
            "term": st.get("term"),
            "last_index": st.get("last_index"),
            "commit_index": st.get("commit_index"),
            "applied_index": st.get("applied_index"),
            "cpu_percent": view.cpu_percent if p is not None else None,
            **health,
            "dropped_malformed": (st.get("transport") or {}).get("dropped_malformed"),
            "partitioned_from": sorted(view.fault),
            "exit_code": view.exited[1] if view.exited and view.exited[0] == entry.pid
                         else None,
            **dashboard_fields(st),
        }


def dashboard_fields(st: dict[str, Any]) -> dict[str, Any]:
    """The rest of a node's STATUS that the dashboard and `status --json` show (all None
    when the status is stale)."""
    fsync = (st.get("histograms") or {}).get("fsync_seconds")
    return {
        "vote": st.get("vote"),
        "lead": st.get("lead"),
        "snapshot_index": st.get("snapshot_index"),
        "log_tail": st.get("log_tail"),
        "counters": st.get("counters"),
        "kv": st.get("kv"),
        "fsync_ms": None if fsync is None else {
            "p50": ms(quantile(fsync, 0.5)), "p99": ms(quantile(fsync, 0.99)),
            "count": fsync["count"]},
        "metrics_port": st.get("metrics_port"),
        "repair": st.get("repair"),
    }


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def wait_listening(child: Any, port: int, timeout: float) -> bool:
    """Whether process `child` (a Popen) listens on TCP `port` within `timeout` seconds;
    False as soon as it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None:
        try:
            conns = psutil.Process(child.pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns):
            return True
        time.sleep(0.02)
    return False


def process_health(p: psutil.Process | None) -> dict[str, Any]:
    """psutil's view of a worker: all None when it does not run."""
    health: dict[str, Any] = {"paused": False, "rss_bytes": None, "open_files": None,
                              "uptime_s": None}
    if p is None:
        return health
    try:
        with p.oneshot():
            health["paused"] = p.status() == psutil.STATUS_STOPPED
            health["rss_bytes"] = p.memory_info().rss
            health["open_files"] = len(p.open_files())
            health["uptime_s"] = round(time.time() - p.create_time(), 3)
    except psutil.Error:
        pass
    return health


CommandHandler = Callable[[Controller, bytes, ClientRequest], "dict[str, Any] | None"]
COMMANDS: dict[str, CommandHandler] = {
    "status": Controller.command_status,
    "kill-leader": Controller.command_kill_leader,
    "kill": Controller.command_kill,
    "restart": Controller.command_restart,
    "pause": Controller.command_pause,
    "resume": Controller.command_resume,
    "partition": Controller.command_partition,
    "heal": Controller.command_heal,
    "transfer-leader": Controller.command_transfer_leader,
    "add-node": Controller.command_add_node,
    "promote": Controller.command_promote,
    "remove-node": Controller.command_remove_node,
    "events": Controller.command_events,
}


def run_controller(cluster_dir: Path, metrics_port: int = 0) -> None:
    """Run the controller of the cluster recorded in `cluster_dir` in the foreground
    until SIGTERM/SIGINT, with Prometheus metrics on `metrics_port` (0: none). Raises
    FileNotFoundError if there is no cluster.json there."""
    state = ClusterState.load(Path(cluster_dir))
    if state is None:
        raise FileNotFoundError(f"no {FILE_NAME} in {cluster_dir}: start a cluster with "
                                "`raftkv up` first")
    context = zmq.Context()
    try:
        controller = Controller(state, context)
        if metrics_port:
            start_metrics(controller, metrics_port)
        signal.signal(signal.SIGTERM, controller.stop)
        signal.signal(signal.SIGINT, controller.stop)
        try:
            controller.run()
        finally:
            controller.close()
            log.info("controller stopped")
    finally:
        context.destroy(linger=0)


def start_metrics(controller: Controller, port: int) -> None:
    """Serve /metrics on the controller address's host; a busy port is logged, not fatal."""
    from harness.controller_metrics import controller_families
    from raftkv.metrics import serve

    host = controller.state.controller.address.removeprefix("tcp://").rpartition(":")[0]
    try:
        bound = serve(controller_families(controller), host, port)
    except OSError as e:
        log.warning("metrics: cannot serve on %s:%d (%s); running without /metrics", host,
                    port, e)
        return
    log.info("metrics on http://%s:%d/metrics", host, bound)
