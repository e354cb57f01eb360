"""A node's sockets: one ZeroMQ ROUTER it binds, one DEALER per peer it connects.

Topology. Node i binds a ROUTER at its own address. To reach peer j it connects a
DEALER to j's ROUTER. Without keys the DEALER's routing id is `peer_identity(i)`
(b"n<i>"), so j's ROUTER names the sender of every peer frame; with keys its key names
it instead, and it sets no routing id (see Security). Clients and the controller connect
their own DEALERs (any routing id not of the form b"n<int>" for a peer) to the same
ROUTER; replies go back through the ROUTER to that routing id. DEALERs only send; the
ROUTER receives everything and sends only replies.

Every ZeroMQ message on the ROUTER is `[routing_id, frame]`, `frame` being one of
raftkv.wire's. Anything else (more or fewer parts, an undecodable frame, a peer frame
from an unknown routing id, or whose `frm`/`to` do not match the routing id and this
node) is dropped and counted in `stats`; `recv_all` never raises on input. A client
request that decodes but is invalid is answered BAD_REQUEST here, without reaching the
node. FAULT requests are served here too: the fault filter is the transport's.

Batches. A client that sends a REQS frame (raftkv.wire) takes REPS frames: from then on
`reply` holds the replies to that routing id and `flush` sends them as one frame per
client, once per loop turn, so a pipelining client costs one ZeroMQ message per turn
instead of one per request. Replies to anyone else (REQ-only clients, a proxy's
envelopes) leave at once, one frame each.

Nothing blocks: sends use NOBLOCK and a message that cannot be queued (peer not
connected, high-water mark reached) is dropped and counted. Raft retransmits, so a
dropped peer message costs a round; a dropped reply costs the client a retry.

Security (raftkv.security). Given `ServerKeys`, the ROUTER is a CurveZMQ server that admits
only the cluster's keys and the DEALERs present this node's key. Every message then
carries its connection's role (the ZAP User-Id): a peer frame is taken only from the key
of the node its `frm` names (the routing id alone proves nothing), a node key sends
nothing else, and a client key only `CLIENT_OPS`; anything else is refused (FORBIDDEN for
a request, dropped for a frame) and counted in `refused_role`. Without keys (--insecure)
anyone who reaches the port is trusted.

Fault filter (the harness's partitions): `set_fault(peers)` drops frames to those peers
in `send` and from them in `recv_all`, until a new set replaces it.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from typing import Any, Protocol

import zmq

from raftkv.interfaces import Route
from raftkv.kv import MAX_KEY_SIZE, MAX_VALUE_SIZE
from raftkv.raft.types import Message
from raftkv.security import Credentials, ServerKeys, node_role, refusal
from raftkv.wire import (
    ClientRequest,
    InvalidRequest,
    MalformedFrame,
    ReplyCode,
    ReqOp,
    RequestBatch,
    SnapshotChunk,
    decode_frame,
    encode_peer,
    encode_replies,
    encode_reply,
    max_entry_size,
)

DEFAULT_HWM = 10_000
_CONTROL_OPS = min(ReqOp.FAULT, ReqOp.PEERS)  # the transport serves FAULT and PEERS itself
RECONNECT_IVL_MS = 100  # a restarted peer is reachable again within this
# ZMTP heartbeats detect a peer that vanished without closing its connection (a host
# that died or a cable pulled); IMMEDIATE then stops queueing to it.
HEARTBEAT_IVL_MS = 1_000
HEARTBEAT_TIMEOUT_MS = 3_000

# The hot paths call pyzmq's Cython socket methods with plain int flags: the Python layer
# over them (zmq.Socket.send, send_multipart, recv_multipart, the RCVMORE option) builds
# and ORs enum.Flag members on every call, which cost a node under load several
# microseconds per message (py-spy: ~15% of a loaded leader in sending replies).
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_get = zmq.backend.Socket.get
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)

STAT_KEYS = (
    "frames_in",  # ZeroMQ messages taken off the ROUTER
    "frames_out",  # peer frames and replies handed to ZeroMQ
    "dropped_malformed",  # undecodable, wrong number of parts, or wrong kind
    "dropped_unknown_peer",  # peer frame from a routing id that is not that peer's
    "dropped_send",  # peer frame not queued: peer down, HWM reached, or unknown id
    "dropped_reply",  # reply not queued: client gone or HWM reached
    "dropped_filtered",  # cut by the fault filter, either direction
    "bad_requests",  # answered BAD_REQUEST by the transport
    "faults_set",  # FAULT requests served
    "batches_in",  # REQS frames received
    "batches_out",  # REPS frames sent
    "refused_role",  # a request or frame the connection's key may not send
    "bad_peer_address",  # a peer address ZeroMQ cannot connect to; that peer unreachable
)

MAX_BATCHING_CLIENTS = 65_536  # routing ids remembered as taking REPS; forgotten past it


def bind_router(router: zmq.Socket, address: str, hwm: int = DEFAULT_HWM,
                keys: ServerKeys | None = None) -> str:
    """Set up and bind a ROUTER that clients and peers reach, a CurveZMQ server admitting
    the keys of `keys` if given; returns the bound endpoint (a port of 0 picks a free
    one)."""
    if keys is not None:
        keys.serve(router)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.RCVHWM, hwm)
    router.setsockopt(zmq.SNDHWM, hwm)
    # Replies to a vanished client or over the HWM fail with an error instead of
    # vanishing silently, so they are counted.
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    # A restarted peer reconnects with the same routing id while its old connection
    # may linger (half-open); the new connection must win, not be refused.
    router.setsockopt(zmq.ROUTER_HANDOVER, 1)
    router.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    router.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    if address.startswith("tcp://") and address.endswith(":0"):
        address = address[:-1] + "*"  # ZeroMQ's spelling of "any free port"
    router.bind(address)
    return router.getsockopt_string(zmq.LAST_ENDPOINT)


def connect_dealer(ctx: zmq.Context, address: str, *, routing_id: bytes | None = None,
                   hwm: int = DEFAULT_HWM, credentials: Credentials | None = None) -> zmq.Socket:
    """A DEALER connected to `address`, as every process here talks to a node: it queues
    only to a completed connection (IMMEDIATE), so while the node is down a send fails at
    once instead of piling up frames; it reconnects within RECONNECT_IVL_MS of the node's
    return, and ZMTP heartbeats notice a node that vanished without closing. With
    `credentials` it is a CurveZMQ client."""
    d = ctx.socket(zmq.DEALER)
    try:
        if credentials is not None:
            credentials.apply(d)
        if routing_id is not None:
            d.setsockopt(zmq.ROUTING_ID, routing_id)
        d.setsockopt(zmq.LINGER, 0)
        d.setsockopt(zmq.SNDHWM, hwm)
        d.setsockopt(zmq.RCVHWM, hwm)
        d.setsockopt(zmq.IMMEDIATE, 1)
        d.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        d.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        d.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        d.connect(address)
    except BaseException:
        d.close(linger=0)
        raise
    return d


def peer_identity(node_id: int) -> bytes:
    """The routing id a node's DEALERs present to its peers."""
    return b"n%d" % node_id


class Transport:
    """The sockets of node `node_id`. Not thread-safe; the node's loop is its only user.

    `peers` maps node ids to `tcp://host:port` addresses; this node's own id, if present,
    is skipped. `listen` is the ROUTER's bind address (port 0 or `*` picks a free port;
    `endpoint` says which).
    """

    def __init__(
        self,
        node_id: int,
        listen: str,
        peers: dict[int, str],
        *,
        max_key: int = MAX_KEY_SIZE,
        max_value: int = MAX_VALUE_SIZE,
        hwm: int = DEFAULT_HWM,
        context: zmq.Context | None = None,
        keys: ServerKeys | None = None,
    ) -> None:
        if node_id < 1:
            raise ValueError(f"node id must be >= 1, got {node_id}")
        self.node_id = node_id
        self.max_key = max_key
        self.max_value = max_value
        self.max_entry = max_entry_size(max_key, max_value)
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        # The leader this node believes in, sent as the hint in replies the transport
        # makes itself (bad requests, FAULT). The node keeps it current.
        self.leader_hint = 0
        self.fault: frozenset[int] = frozenset()
        # Routes of clients that sent REQS (so they take REPS), and the replies held for
        # them until `flush`. A route through a proxy (the controller) batches as a
        # direct client does: the proxy sent REQS for that client, so it takes REPS.
        self._batching: set[Route] = set()
        self._held: dict[Route, list[bytes]] = {}
        self.peers = {pid: addr for pid, addr in peers.items() if pid != node_id}
        # Invariant: _peer_by_identity and _dealers have exactly the ids of `peers`.
        self._peer_by_identity = {peer_identity(pid): pid for pid in self.peers}
        self._own_context = context is None
        self._ctx = zmq.Context() if context is None else context
        self._dealers: dict[int, zmq.Socket] = {}
        self.keys = keys
        self._credentials = keys.client if keys is not None else None
        self.socket: zmq.Socket = self._ctx.socket(zmq.ROUTER)
        try:
            self._setup(listen, hwm)
        except BaseException:
            self.close()
            raise

    def _setup(self, listen: str, hwm: int) -> None:
        self._hwm = hwm
        self.endpoint: str = bind_router(self.socket, listen, hwm, self.keys)
        for pid, addr in self.peers.items():
            self._dealers[pid] = self._connect_peer(addr)

    def _connect_peer(self, address: str) -> zmq.Socket:
        # With keys the key names us, and a routing id would only be a slot another key
        # holder could take over (ROUTER_HANDOVER) to cut our link: the peer's ROUTER
        # picks one instead.
        routing_id = peer_identity(self.node_id) if self._credentials is None else None
        return connect_dealer(self._ctx, address, routing_id=routing_id, hwm=self._hwm,
                              credentials=self._credentials)

    # ---- receiving -----------------------------------------------------------------

    def poll(self, timeout_ms: int) -> bool:
        """Wait up to `timeout_ms` for something to receive; True if there is.
        A node with other sockets registers `socket` in its own zmq.Poller instead."""
        return bool(self.socket.poll(timeout_ms, zmq.POLLIN))

    def pending(self) -> bool:
        """Whether a frame is waiting to be received (never blocks)."""
        return bool(_get(self.socket, _EVENTS) & _POLLIN)

    def recv_all(
        self, max_frames: int = 1_000
    ) -> tuple[list[Message | SnapshotChunk], list[ClientRequest]]:
        """Drain up to `max_frames` ZeroMQ messages without blocking: the Raft messages
        for this node and the client requests it must serve. Never raises on input."""
        sock = self.socket
        stats = self.stats
        messages: list[Message | SnapshotChunk] = []
        requests: list[ClientRequest] = []
        peer_by_identity = self._peer_by_identity
        peers = self.peers
        fault = self.fault
        me = self.node_id
        # With keys, the last part is taken as a zmq.Frame, which carries the connection's
        # role (ZAP User-Id); `role` stays None without them, and nothing is checked.
        copy = self.keys is None
        role: str | None = None
        n = 0
        while n < max_frames:
            try:
                identity = _recv(sock, _NOBLOCK)
            except zmq.Again:
                break
            n += 1
            # A ROUTER delivers whole messages, the sender's routing id first: at least
            # one part follows it, and no part of a started message can be missing.
            frame = _recv(sock, _NOBLOCK, copy)
            route: Route = identity
            if _get(sock, _RCVMORE):
                # A proxy (the harness's controller) relays for a client: the middle frame
                # is the client's routing id, echoed back in the reply (ZeroMQ envelope).
                envelope = frame if copy else frame.bytes
                frame = _recv(sock, _NOBLOCK, copy)
                route = (identity, envelope)
                if _get(sock, _RCVMORE):
                    while _get(sock, _RCVMORE):
                        _recv(sock, _NOBLOCK)
                    stats["dropped_malformed"] += 1
                    continue
            if not copy:
                role = frame.get("User-Id")
                frame = frame.bytes
            try:
                obj = decode_frame(
                    frame,
                    identity=route,
                    max_key=self.max_key,
                    max_value=self.max_value,
                    max_entry=self.max_entry,
                )
            except MalformedFrame:
                stats["dropped_malformed"] += 1
                continue
            except InvalidRequest as e:
                stats["bad_requests"] += 1
                self.reply(route, e.request_id, ReplyCode.BAD_REQUEST, e.message)
                continue
            if type(obj) is RequestBatch:
                stats["batches_in"] += 1
                if route not in self._batching:
                    if len(self._batching) >= MAX_BATCHING_CLIENTS:
                        self._batching.clear()  # safe: they all take plain REP frames too
                    self._batching.add(route)
                stats["dropped_malformed"] += obj.malformed
                for e in obj.invalid:
                    stats["bad_requests"] += 1
                    self.reply(route, e.request_id, ReplyCode.BAD_REQUEST, e.message)
                for req in obj.requests:
                    if role is not None and self.forbidden(route, req, role):
                        continue
                    if req.op < _CONTROL_OPS or not self.serve_control(route, req):
                        requests.append(req)
                continue
            if type(obj) is Message or type(obj) is SnapshotChunk:
                # The sender is a peer of ours and the frame is meant for us. Without keys
                # the routing id its DEALER set names it; with keys, only the key of node
                # `frm` proves it is node `frm` (anyone may set any routing id).
                frm = obj.frm
                if route is not identity or obj.to != me or (
                        peer_by_identity.get(identity) != frm if copy else frm not in peers):
                    stats["dropped_unknown_peer"] += 1
                    continue
                if role is not None and role != node_role(frm):
                    stats["refused_role"] += 1
                    continue
                if frm in fault:
                    stats["dropped_filtered"] += 1
                    continue
                messages.append(obj)
            elif role is not None and self.forbidden(route, obj, role):
                continue
            elif obj.op < _CONTROL_OPS or not self.serve_control(route, obj):
                requests.append(obj)
        stats["frames_in"] += n
        return messages, requests

    def forbidden(self, route: Route, req: ClientRequest, role: str) -> bool:
        """Whether a connection of `role` may not send `req` (security.refusal); if so,
        it is answered FORBIDDEN and counted."""
        why = refusal(role, req.op)
        if why is None:
            return False
        self.stats["refused_role"] += 1
        self.reply(route, req.request_id, ReplyCode.FORBIDDEN, why)
        return True

    def serve_control(self, route: Route, req: ClientRequest) -> bool:
        """Serve FAULT and PEERS, the requests that are the transport's own; False for
        any other request (the node's)."""
        return serve_control(self, route, req)

    # ---- sending -------------------------------------------------------------------

    def send(self, msg: Message | SnapshotChunk) -> bool:
        """Queue a Raft message to its peer without blocking; False if it was dropped
        (peer down, HWM reached, filtered, or not a peer). Dropped messages are counted."""
        to = msg.to
        if to in self.fault:
            self.stats["dropped_filtered"] += 1
            return False
        dealer = self._dealers.get(to)
        if dealer is None:
            self.stats["dropped_send"] += 1
            return False
        try:
            _send(dealer, encode_peer(msg), _NOBLOCK)
        except zmq.Again:
            self.stats["dropped_send"] += 1
            return False
        self.stats["frames_out"] += 1
        return True

    def send_many(self, messages: Iterable[Message]) -> int:
        """`send` each message; returns how many were queued.

        Not coalesced into one frame: the core sends at most one append per follower
        per Ready, so a batch rarely holds two messages for the same peer."""
        sent = 0
        send = self.send
        for m in messages:
            sent += send(m)
        return sent

    def reply(
        self,
        identity: Route,
        request_id: int,
        code: int,
        value: Any = None,
        leader_hint: int | None = None,
    ) -> bool:
        """Answer a client request without blocking; False if the reply was dropped
        (client gone or HWM reached; counted). `leader_hint` defaults to `leader_hint`.
        A reply to a client that sends REQS is held until `flush` (and counted if that
        drops it).

        Raises ValueError if `value` cannot be encoded: a bug in the caller."""
        frame = encode_reply(
            request_id, code, value, self.leader_hint if leader_hint is None else leader_hint
        )
        if identity in self._batching:
            held = self._held.get(identity)
            if held is None:
                self._held[identity] = [frame]
            else:
                held.append(frame)
            return True
        return self._send_reply(identity, frame, 1)

    def flush(self) -> None:
        """Send the replies `reply` held for batching clients: one frame per client. The
        node calls it once per loop turn, before it waits for input."""
        if not self._held:
            return
        held, self._held = self._held, {}
        for identity, frames in held.items():
            if len(frames) == 1:
                self._send_reply(identity, frames[0], 1)
            elif self._send_reply(identity, encode_replies(frames), len(frames)):
                self.stats["batches_out"] += 1

    def _send_reply(self, identity: Route, frame: bytes, replies: int) -> bool:
        sock = self.socket
        try:
            if type(identity) is tuple:
                _send(sock, identity[0], _SNDMORE_NOBLOCK)
                _send(sock, identity[1], _SNDMORE_NOBLOCK)
            else:
                _send(sock, identity, _SNDMORE_NOBLOCK)
            _send(sock, frame, _NOBLOCK)
        except zmq.Again:
            self.stats["dropped_reply"] += replies
            return False
        except zmq.ZMQError as e:
            if e.errno != errno.EHOSTUNREACH:
                raise
            self.stats["dropped_reply"] += replies
            return False
        self.stats["frames_out"] += 1
        return True

    # ---- membership ----------------------------------------------------------------

    def set_peer(self, node_id: int, address: str) -> bool:
        """Reach `node_id` at `address` from now on (a member added, or one that moved);
        returns whether anything changed. Our own id is ignored. An address ZeroMQ cannot
        connect to (it came from the network: a PEERS request, a log entry) leaves the
        node without a route to that peer, counted in `bad_peer_address`; it never
        stops the node."""
        if node_id == self.node_id or self.peers.get(node_id) == address:
            return False
        self.remove_peer(node_id)
        try:
            dealer = self._connect_peer(address)
        except zmq.ZMQError:
            self.stats["bad_peer_address"] += 1
            return True
        self._dealers[node_id] = dealer
        self.peers[node_id] = address
        self._peer_by_identity[peer_identity(node_id)] = node_id
        return True

    def remove_peer(self, node_id: int) -> bool:
        """Stop talking to `node_id` (a member removed); frames from it are dropped as
        from an unknown peer. Returns whether it was a peer."""
        if self.peers.pop(node_id, None) is None:
            return False
        self._peer_by_identity.pop(peer_identity(node_id), None)
        self._dealers.pop(node_id).close(linger=0)
        return True

    # ---- faults and lifecycle ------------------------------------------------------

    def set_fault(self, drop_peers: Iterable[int]) -> None:
        """Drop all traffic to and from `drop_peers` from now on (replacing the previous
        set); an empty set heals. Ids that are not peers are kept and have no effect."""
        self.fault = frozenset(drop_peers)

    def close(self) -> None:
        """Close every socket (LINGER 0: unsent frames are discarded) and the context if
        this transport made it. Idempotent."""
        for d in self._dealers.values():
            d.close(linger=0)
        self._dealers.clear()
        self.socket.close(linger=0)
        if self.keys is not None:
            self.keys.close()
        if self._own_context and not self._ctx.closed:
            self._ctx.term()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ControlTarget(Protocol):
    """What `serve_control` needs of a transport (the simulator's serves these too)."""

    fault: frozenset[int]
    peers: dict[int, str]
    stats: dict[str, int]

    def set_fault(self, drop_peers: Iterable[int]) -> None: ...

    def set_peer(self, node_id: int, address: str) -> bool: ...

    def reply(self, identity: Route, request_id: int, code: int, value: Any = None,
              leader_hint: int | None = None) -> bool: ...


def serve_control(t: ControlTarget, route: Route, req: ClientRequest) -> bool:
    """Serve FAULT (drop traffic to and from those peers, until the next FAULT) and PEERS
    (where members listen: the controller tells a node that lags behind the
    configuration, so it can answer them, thesis §4.1); False for any other request."""
    if req.op == ReqOp.FAULT:
        t.set_fault(req.peers)
        t.stats["faults_set"] += 1
        t.reply(route, req.request_id, ReplyCode.OK, sorted(t.fault))
    elif req.op == ReqOp.PEERS:
        for node_id, address in (req.addresses or {}).items():
            t.set_peer(node_id, address)
        t.reply(route, req.request_id, ReplyCode.OK, sorted(t.peers))
    else:
        return False
    return True
