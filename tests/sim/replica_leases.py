"""A lease client of the replica simulator: it grants short leases, puts a key with each,
keeps every other one alive a while, and never revokes one, through the real protocol
(LEASE_GRANT, PUT with a lease, LEASE_KEEPALIVE after ReadIndex) to the real replicas.

The run then judges it as `raftkv chaos --coordination` judges its leases
(harness/chaos_coord.py: `lease_problems`): a revoke needs a TTL-wide window between two
resets the client saw answered. A revoke is "observed" at the first moment any replica
has applied it (no earlier than it was proposed); the world's clock is every node's, so
the leader's TTL is measured on the same time as the client's.
"""

from __future__ import annotations

import random

from harness.chaos_coord import LeaseRecord, lease_problems
from raftkv.wire import ClientReply, ClientRequest, ReplyCode, ReqOp, encode_request
from tests.sim.replica_checks import SimFailure
from tests.sim.replica_sim import SimNode, World

TTL_MS = 500  # 2.5 to 5 elections
GRANT_EVERY_MS = (200, 600)
KEEP_EVERY_MS = 120
ATTEMPT_MS = 100
_MS = 1_000_000  # ns a simulated ms, for the records chaos_coord judges


class SimLeaseClient:
    """One request at a time (a grant, a put, or a keepalive), retried as the other
    simulated clients retry: the hinted leader after NOT_LEADER, the next node after
    UNAVAILABLE or silence, until `ATTEMPT_MS * 8`."""

    def __init__(self, world: World, nodes: list[int]) -> None:
        self.world = world
        self.nodes = nodes
        self.identity = b"lease"
        self.rng = random.Random(f"leases-{world.seed}")
        self.leases: dict[int, LeaseRecord] = {}  # by lease id
        self.target = nodes[0]
        self.on = True
        self.next_rid = 1 << 48
        # The request in flight: it, when it was first sent, its deadline, its attempts.
        self.call: tuple[ClientRequest, int, int, set[int]] | None = None
        self.queue: list[ClientRequest] = []
        world.clients[self.identity] = self
        world.at(world.now + 50, self._grant_tick)
        world.at(world.now + 50, self._keep_tick)

    # -- what it asks --------------------------------------------------------------------

    def _grant_tick(self) -> None:
        if not self.on:
            return
        self.queue.append(ClientRequest(0, ReqOp.LEASE_GRANT, ttl_ms=TTL_MS))
        self._next()
        self.world.at(self.world.now + self.rng.randint(*GRANT_EVERY_MS), self._grant_tick)

    def _keep_tick(self) -> None:
        now = self.world.now
        for rec in self.leases.values():
            if rec.keep_until and now * _MS < rec.keep_until and not any(
                    r.op == ReqOp.LEASE_KEEPALIVE and r.lease == rec.id for r in self.queue):
                self.queue.append(ClientRequest(0, ReqOp.LEASE_KEEPALIVE, lease=rec.id))
        self._next()
        if self.on:
            self.world.at(now + KEEP_EVERY_MS, self._keep_tick)

    def stop(self) -> None:
        """No new leases, no more keepalives: every lease now runs out."""
        self.on = False
        for rec in self.leases.values():
            rec.keep_until = 0

    # -- one request at a time -----------------------------------------------------------

    def _next(self) -> None:
        if self.call is None and self.queue:
            req = self.queue.pop(0)
            now = self.world.now
            self.call = (req, now, now + ATTEMPT_MS * 8, set())
            self._attempt()

    def _attempt(self) -> None:
        req, sent, deadline, rids = self.call
        if self.world.now >= deadline:
            self.call = None  # given up: a grant or put of unknown outcome is watched anyway
            self._next()
            return
        self.next_rid += 1
        req.request_id = self.next_rid
        rids.add(self.next_rid)
        if self.target in self.world.nodes:
            self.world.net.send_request(self.identity, self.target, encode_request(req))
        self.world.at(self.world.now + ATTEMPT_MS, self._timeout, self.next_rid)

    def _timeout(self, rid: int) -> None:
        if self.call is not None and self.call[0].request_id == rid:
            self._retry(None)

    def _retry(self, hint: int | None) -> None:
        i = self.nodes.index(self.target) if self.target in self.nodes else -1
        self.target = hint if hint in self.nodes else self.nodes[(i + 1) % len(self.nodes)]
        self._attempt()

    def on_reply(self, reply: ClientReply) -> None:
        if self.call is None or reply.request_id not in self.call[3]:
            return
        req, sent, _, _ = self.call
        if reply.code in (ReplyCode.NOT_LEADER, ReplyCode.UNAVAILABLE):
            if reply.request_id == req.request_id:
                self._retry(reply.leader_hint or None)
            return
        self.call = None
        now = self.world.now
        if req.op == ReqOp.LEASE_GRANT and reply.code == ReplyCode.OK:
            lid = reply.value
            keep = (now + self.rng.randint(TTL_MS, 2 * TTL_MS)) * _MS \
                if self.rng.random() < 0.5 else 0
            self.leases[lid] = LeaseRecord(lid, f"lease/{lid}", [(sent * _MS, now * _MS)], keep)
            self.queue.insert(0, ClientRequest(0, ReqOp.PUT, key=b"lease/%d" % lid, value=b"x",
                                               lease=lid))
        elif req.op == ReqOp.PUT:
            self.leases[req.lease].put_ok = reply.code == ReplyCode.OK
        elif req.op == ReqOp.LEASE_KEEPALIVE:
            rec = self.leases[req.lease]
            if reply.code == ReplyCode.OK:
                rec.resets.append((sent * _MS, now * _MS))
            else:
                rec.keep_until = 0
        elif reply.code != ReplyCode.OK:
            raise SimFailure(f"{req.op.name} answered {ReplyCode(reply.code).name}: "
                             f"{reply.value}")
        self._next()

    # -- what the replicas did -------------------------------------------------------------

    def observe(self, node: SimNode) -> None:
        """After a Ready of `node`: a lease it has applied the grant of and no longer
        holds was revoked by now."""
        kv = node.replica.kv
        for lid, rec in self.leases.items():
            if rec.observed is None and kv.applied_index >= lid and lid not in kv.lease_ttls:
                rec.observed = self.world.now * _MS

    def ended(self) -> bool:
        """Whether every lease was seen revoked (looking at every live node now: the
        Ready that applied the last revoke may be its node's last for a while)."""
        for node in self.world.live():
            self.observe(node)
        return all(rec.observed is not None for rec in self.leases.values())

    def problems(self) -> list[str]:
        return lease_problems(list(self.leases.values()), ttl=TTL_MS / 1000)
