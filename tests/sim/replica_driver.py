"""Seeded runs of real replicas in the simulated world (tests/sim/replica_sim.py).

A seed picks a fault mix and draws everything else from itself: the cluster, the fault
schedule, the network's losses and delays, the disk's crash states, the clients' choices.
A run has three phases:

1. chaos (`CHAOS_MS` of simulated time): clients read and write, faults fire;
2. settle: faults stop, crashed members restart; within `SETTLE_MS` a leader must take a
   write that every member then applies (liveness), every client's operation ends, and a
   final read of every key is recorded;
3. checks: the clients' history is linearizable (harness/checker.py), every member holds
   the same state, no core dropped an honest message as impossible, and no lease was
   revoked before its TTL ran on the leader's clock (tests/sim/replica_leases.py; every
   mix but membership: see `Run`). Safety (Figure 3) was checked on every
   Ready all along.

Fault mixes (`MIXES`):

- net: loss, duplication, reordering, partitions (symmetric, one-way, the leader alone);
- powerloss: crashes with power loss (unsynced writes lost or torn), some in the middle
  of a turn (after its early messages left, before its fsync), some of the process only;
- self_elect: one voter and two learners; the voter's power is cut right after it wins
  an election (its first Ready as leader may be half written), learners crash too;
- snapshots: compaction every few entries, snapshots sent in small chunks over a lossy,
  duplicating, reordering network, under continuous ReadIndex load; a follower cut off
  while the log moves on must catch up within `CATCH_UP_MS` with at most
  `MAX_SNAPSHOT_SENDS` snapshot transfers, leases raising the write rate; a third of the
  runs keep no catch-up entries below a snapshot (`Plan.catch_up`);
- transfer: leadership transfers while TimeoutNow is lost, duplicated or late, racing
  membership changes and check-quorum step-downs;
- shrink: voters removed one at a time, the leader itself among them, down to one, under
  reads and writes;
- membership: learners added, promoted and removed, with crashes and partitions.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from harness import checker
from harness.checker import Op
from raftkv.raft import ConfOp, MsgType, Ready, Role
from tests.sim.cluster import SafetyViolation
from tests.sim.replica_checks import SimFailure
from tests.sim.replica_clients import Controller, SimClient
from tests.sim.replica_io import TypeRule, address
from tests.sim.replica_leases import TTL_MS, SimLeaseClient
from tests.sim.replica_sim import SimNode, World, node_config

MIXES = ("net", "powerloss", "self_elect", "snapshots", "transfer", "shrink", "membership")
CHAOS_MS = 5000
SETTLE_MS = 4000  # liveness bound once faults stop
CATCH_UP_MS = 5000  # snapshots: a healed follower applies the commit index of the heal
MAX_SNAPSHOT_SENDS = 8  # snapshots: transfers to it while it catches up
HEARTBEAT_MS, ELECTION_MS = 20, 100  # a 10 ms tick, elections in [100, 200) ms
KEYS = 4


@dataclass
class Plan:
    seed: int
    mix: str
    voters: tuple[int, ...]
    spares: tuple[int, ...]  # started later with --join, added by the controller
    drop: float = 0.02
    dup: float = 0.02
    delay: tuple[int, int] = (1, 6)
    writers: int = 2
    readers: int = 1
    sync_ms: tuple[int, int] = (0, 4)  # how long a sync on the "thread" is held
    snapshot_entries: int = 100_000
    catch_up: int = 0  # --snapshot-catch-up-entries
    chunk: int = 512
    segment: int = 16 << 10
    events: list[tuple[int, str, tuple]] = field(default_factory=list)

    @property
    def ids(self) -> tuple[int, ...]:
        return self.voters + self.spares


@dataclass
class Outcome:
    seed: int
    mix: str
    error: str | None = None
    trace: list[str] = field(default_factory=list)
    ops: Counter[str] = field(default_factory=Counter)
    stats: Counter[str] = field(default_factory=Counter)
    catch_ups: list[tuple[int, int]] = field(default_factory=list)  # (ms, snapshot sends)


def make_plan(seed: int) -> Plan:
    mix = MIXES[seed % len(MIXES)]
    rng = random.Random(f"plan-{seed}")
    five = rng.random() < 0.3
    if mix == "self_elect":
        p = Plan(seed, mix, (1,), (2, 3))
    elif mix == "shrink":
        p = Plan(seed, mix, (1, 2, 3, 4, 5) if rng.random() < 0.3 else (1, 2, 3), ())
    elif mix in ("transfer", "membership"):
        p = Plan(seed, mix, (1, 2, 3), (4, 5))
    elif mix in ("net", "powerloss") and five:
        p = Plan(seed, mix, (1, 2, 3, 4, 5), ())
    else:
        p = Plan(seed, mix, (1, 2, 3), ())
    p.segment = rng.choice((4 << 10, 16 << 10, 64 << 10))
    p.writers, p.readers = rng.randint(2, 6), rng.randint(1, 2)
    p.sync_ms = rng.choice(((0, 2), (0, 6), (2, 20), (10, 60)))  # the last: a slow disk
    if rng.random() < 0.4:
        p.snapshot_entries = rng.randint(8, 40)  # compaction in any mix, sometimes
    ev = p.events
    ids = list(p.voters)

    def times(rate_ms: int, start: int = 100, stop: int = CHAOS_MS) -> list[int]:
        out, t = [], start
        while True:
            t += rng.randint(rate_ms // 2, rate_ms * 3 // 2)
            if t >= stop:
                return out
            out.append(t)

    if mix == "net":
        p.drop, p.dup, p.delay = rng.uniform(0.02, 0.2), rng.uniform(0, 0.1), (1, 30)
        for t in times(250):
            kind = rng.choice(("partition", "oneway", "isolate_leader"))
            if kind == "partition":
                cut = rng.randint(1, len(ids) - 1)
                ev.append((t, "partition", (tuple(rng.sample(ids, cut)),)))
            elif kind == "oneway":
                ev.append((t, "oneway", tuple(rng.sample(ids, 2))))
            else:
                ev.append((t, "isolate_leader", ()))
            ev.append((t + rng.randint(30, 300), "heal", ()))
        for t in times(900):
            ev.append((t, "pause", (0 if rng.random() < 0.5 else rng.choice(ids),
                                    rng.randint(20, 400))))
    elif mix == "powerloss":
        for t in times(200):
            target = 0 if rng.random() < 0.4 else rng.choice(ids)  # 0: the leader then
            how = rng.choices(("power", "kill", "cut"), (5, 2, 3))[0]
            ev.append((t, "crash", (target, how, rng.randint(0, 12), rng.randint(20, 400))))
        if rng.random() < 0.5:
            for t in times(400):
                ev.append((t, "partition", (tuple(rng.sample(ids, 1)),)))
                ev.append((t + rng.randint(30, 200), "heal", ()))
        for t in times(1200):
            ev.append((t, "pause", (0 if rng.random() < 0.5 else rng.choice(ids),
                                    rng.randint(20, 300))))
    elif mix == "self_elect":
        ev.append((5, "add_spares", ()))
        for t in times(300, start=200):
            ev.append((t, "crash", (rng.choice(p.spares), rng.choice(("power", "cut")),
                                    rng.randint(0, 12), rng.randint(20, 300))))
        for t in times(350, start=150):
            ev.append((t, "crash", (1, rng.choice(("power", "kill", "cut")),
                                    rng.randint(0, 6), rng.randint(10, 150))))
    elif mix == "snapshots":
        p.snapshot_entries = rng.randint(5, 12)
        p.chunk = rng.choice((32, 64, 128))
        p.drop, p.dup, p.delay = rng.uniform(0.01, 0.04), rng.uniform(0.02, 0.1), (1, 15)
        p.readers = 2
        for start in (rng.randint(150, 350), rng.randint(2500, 3000)):
            ev.append((start, "lag", (rng.randint(400, 900),)))
        for t in times(1500):
            ev.append((t, "crash", (rng.choice(ids), rng.choice(("power", "cut")),
                                    rng.randint(0, 20), rng.randint(20, 150))))
    elif mix == "transfer":
        p.drop = 0.02
        for t in times(150):
            ev.append((t, "transfer", (rng.random(),)))
        for t in times(300):
            ev.append((t, "conf", (rng.choice(("add_learner", "promote", "remove")),
                                   rng.random())))
        for t in times(500):
            ev.append((t, "isolate_leader", ()))
            ev.append((t + rng.randint(80, 250), "heal", ()))
        for t in times(700):
            ev.append((t, "pause", (0, rng.randint(50, 300))))
    elif mix == "shrink":
        p.readers = 2
        t = 100
        for _ in range(len(p.voters) - 1):
            t += rng.randint(150, 350)
            ev.append((t, "shrink", (rng.random() < 0.5, rng.random())))
        for t in times(500):
            target = 0 if rng.random() < 0.5 else rng.choice(ids)
            ev.append((t, "crash", (target, rng.choice(("power", "kill", "cut")),
                                    rng.randint(0, 12), rng.randint(20, 200))))
    elif mix == "membership":
        for t in times(120):
            ev.append((t, "conf", (rng.choice(("add_learner", "promote", "remove")),
                                   rng.random())))
        for t in times(350):
            target = 0 if rng.random() < 0.3 else rng.choice(ids)
            ev.append((t, "crash", (target, rng.choice(("power", "kill", "cut")),
                                    rng.randint(0, 12), rng.randint(20, 300))))
        for t in times(500):
            ev.append((t, "partition", (tuple(rng.sample(ids, 1)),)))
            ev.append((t + rng.randint(30, 200), "heal", ()))
    ev.sort(key=lambda e: e[0])
    # From an RNG of its own, so that every seed kept the schedule it had before the
    # log kept entries below a snapshot. A third of the runs keep none: only snapshots
    # bring a follower back there; the others keep up to three snapshot intervals.
    catch_up = random.Random(f"catch-up-{seed}")
    p.catch_up = (0 if catch_up.random() < 1 / 3
                  else catch_up.randint(1, 3 * min(p.snapshot_entries, 40)))
    return p


class Run:
    """One seed's world, its clients and controller, and the fault schedule."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.world = w = World(plan.seed, sync_ms=plan.sync_ms)
        self.rng = random.Random(f"driver-{plan.seed}")
        self.history: list[Op] = []
        w.net.drop, w.net.dup, w.net.delay = plan.drop, plan.dup, plan.delay
        for i in plan.ids:
            joins = i in plan.spares
            peers = plan.ids if joins else plan.voters
            cfg = node_config(i, peers, voters=() if joins else plan.voters,
                              heartbeat_ms=HEARTBEAT_MS, election_ms=ELECTION_MS,
                              snapshot_entries=plan.snapshot_entries,
                              snapshot_catch_up_entries=plan.catch_up,
                              snapshot_chunk=plan.chunk, segment_bytes=plan.segment)
            w.add_node(i, cfg)
        if plan.mix == "transfer":
            w.net.rules[MsgType.TIMEOUT_NOW] = TypeRule(drop=0.3, dup=0.3, late_ms=150)
        self.downtime: dict[int, int] = {}  # node -> when it may restart
        self.ctl = Controller(w)
        nodes = list(plan.ids)
        self.clients = [SimClient(w, c, nodes, KEYS, history=self.history)
                        for c in range(1, plan.writers + 1)]
        self.clients += [SimClient(w, c, nodes, KEYS, reader=True, history=self.history)
                         for c in range(plan.writers + 1, plan.writers + plan.readers + 1)]
        self.final = SimClient(w, 0, nodes, KEYS, deadline_ms=SETTLE_MS, history=self.history)
        self.final.stopped = True
        # Not in the membership mix: its seeds (2484 among the regressions) keep their
        # schedules, which another client's traffic would redraw.
        self.leases = SimLeaseClient(w, nodes) if plan.mix != "membership" else None
        self.clients_on = True
        self.lags: list[dict[str, Any]] = []  # the snapshot mix's cut-off followers
        self.outcome = Outcome(plan.seed, plan.mix)
        w.on_ready_hooks.append(self.on_ready)

    # -- schedule ----------------------------------------------------------------------

    def start(self) -> None:
        w = self.world
        for i in self.plan.voters:
            w.boot(i)
        for t, kind, args in self.plan.events:
            w.at(t, self.fire, kind, args)
        w.at(1, self.clients_tick)
        w.at(50, self.revive)
        w.at(100, self.controller_poll)

    def clients_tick(self) -> None:
        if self.clients_on:
            for c in self.clients:
                if not c.busy and self.rng.random() < 0.5:
                    c.invoke()
        self.world.at(self.world.now + self.rng.randint(2, 12), self.clients_tick)

    def revive(self) -> None:
        """Restart every crashed member whose downtime is over (the harness's restart);
        a node the configuration no longer has stays down."""
        w = self.world
        lead = w.leader()
        members = lead.replica.core.voters | lead.replica.core.learners if lead else None
        for i, node in w.nodes.items():
            if not node.alive and node.created and w.now >= self.downtime.get(i, 0) \
                    and (members is None or i in members):
                self.restart(i)
        w.at(w.now + 25, self.revive)

    def controller_poll(self) -> None:
        """What the harness's controller does each poll: PEERS to nodes that lag behind
        the configuration."""
        w = self.world
        self.ctl.push_peers({i: address(i) for i, n in w.nodes.items() if n.created})
        w.at(w.now + self.rng.randint(50, 250), self.controller_poll)

    def restart(self, i: int) -> None:
        node = self.world.nodes[i]
        if not node.alive:
            self.world.boot(i)

    def leader_id(self) -> int | None:
        lead = self.world.leader()
        return lead.id if lead else None

    def fire(self, kind: str, args: tuple) -> None:
        w = self.world
        lead = self.leader_id()
        w.note("fault", kind, *args)
        if kind == "partition":
            w.net.partition([args[0]], w.nodes)
        elif kind == "oneway":
            w.net.blocked.add((args[0], args[1]))
        elif kind == "isolate_leader":
            if lead is not None:
                w.net.partition([[lead]], w.nodes)
        elif kind == "heal":
            w.net.heal()
        elif kind == "crash":
            target, how, ops, down = args
            target = target or lead
            if target is None or not w.nodes[target].alive:
                return
            self.downtime[target] = w.now + down
            if how == "cut":
                w.cut_power_soon(target, ops)
            else:
                w.crash(target, power_loss=how == "power")
        elif kind == "pause":
            target = args[0] or lead
            if target is not None:
                w.pause(target, args[1])
        elif kind == "add_spares":
            self.add_spares()
        elif kind == "lag":
            self.start_lag(args[0])
        elif kind == "transfer":
            self.transfer(args[0])
        elif kind == "conf":
            self.conf(ConfOp[args[0].upper()], args[1])
        elif kind == "shrink":
            self.shrink(*args)

    # -- membership and transfers ------------------------------------------------------

    def add_spares(self) -> None:
        """Self-elect: once node 1 leads, its learners are added (retried until they are
        in its configuration)."""
        w = self.world
        lead = w.nodes[1]
        if lead.alive and lead.replica.core.role == Role.LEADER:
            core = lead.replica.core
            for i in self.plan.spares:
                if i not in core.learners:
                    self.add_learner(1, i)
                    break
            if all(i in core.learners for i in self.plan.spares):
                return
        w.at(w.now + 40, self.add_spares)

    def add_learner(self, lead: int, i: int) -> None:
        node = self.world.nodes[i]
        if not node.created:
            self.world.boot(i)  # its first start, with --join
        self.ctl.change(lead, ConfOp.ADD_LEARNER, i, address(i))

    def conf(self, op: ConfOp, pick: float) -> None:
        lead = self.world.leader()
        if lead is None:
            return
        core = lead.replica.core
        if op == ConfOp.ADD_LEARNER:
            candidates = [i for i in self.plan.ids if i not in core.voters | core.learners]
        elif op == ConfOp.PROMOTE:
            candidates = sorted(core.learners)
        else:
            candidates = sorted(core.learners | core.voters) if len(core.voters) > 3 \
                else sorted(core.learners)
        if not candidates:
            return
        target = candidates[int(pick * len(candidates))]
        if op == ConfOp.ADD_LEARNER:
            self.add_learner(lead.id, target)
        else:
            self.ctl.change(lead.id, op, target)

    def shrink(self, self_removal: bool, pick: float) -> None:
        lead = self.world.leader()
        if lead is None:
            self.world.at(self.world.now + 30, self.shrink, self_removal, pick)
            return
        voters = sorted(lead.replica.core.voters)
        if len(voters) <= 1:
            return
        others = [v for v in voters if v != lead.id]
        target = lead.id if self_removal and lead.id in voters else \
            others[int(pick * len(others))]
        self.ctl.change(lead.id, ConfOp.REMOVE, target)

    def transfer(self, pick: float) -> None:
        lead = self.world.leader()
        if lead is None:
            return
        others = sorted(v for v in lead.replica.core.voters if v != lead.id)
        if others:
            self.ctl.transfer(lead.id, others[int(pick * len(others))])

    # -- the snapshot mix: a follower that falls behind --------------------------------

    def start_lag(self, for_ms: int) -> None:
        """Cut a follower off for `for_ms` while the log moves on and is compacted."""
        w = self.world
        lead = w.leader()
        followers = [n for n in w.live() if lead is not None and n is not lead
                     and n.id in lead.replica.core.voters]
        if not followers or (self.lags and "caught_up_at" not in self.lags[-1]):
            w.at(w.now + 50, self.start_lag, for_ms)
            return
        f = followers[int(self.rng.random() * len(followers))]
        self.lags.append({"node": f.id, "cut_at": w.now})
        w.net.partition([[f.id]], w.nodes)
        w.note("lag", f.id, for_ms)
        w.at(w.now + for_ms, self.end_lag)

    def end_lag(self) -> None:
        w = self.world
        w.net.heal()
        lag = self.lags[-1]
        lead = w.leader()
        lag.update(healed_at=w.now, target=lead.replica.core.log.committed if lead else 0,
                   sends=w.snapshot_transfers[lag["node"]])
        w.note("lag healed", lag["node"], "target", lag["target"])
        w.at(w.now + 5, self.watch_lag)

    def watch_lag(self) -> None:
        """The healed follower applies the commit index of the heal within CATCH_UP_MS,
        with at most MAX_SNAPSHOT_SENDS snapshot transfers to it meanwhile."""
        w = self.world
        lag = self.lags[-1]
        node = w.nodes[lag["node"]]
        sends = w.snapshot_transfers[node.id] - lag["sends"]
        if sends > MAX_SNAPSHOT_SENDS:
            raise SimFailure(f"node {node.id}, healed at {lag['healed_at']} ms, was sent "
                             f"{sends} snapshots before it caught up (at most "
                             f"{MAX_SNAPSHOT_SENDS})")
        if node.alive and node.replica.core.log.applied >= lag["target"]:
            lag["caught_up_at"] = w.now
            self.outcome.catch_ups.append((w.now - lag["healed_at"], sends))
            return
        if w.now - lag["healed_at"] > CATCH_UP_MS:
            raise SimFailure(f"node {node.id} cut off from {lag['cut_at']} ms to "
                             f"{lag['healed_at']} ms did not apply index {lag['target']} "
                             f"within {CATCH_UP_MS} ms of the heal (applied "
                             f"{node.replica.core.log.applied if node.alive else '-'}; "
                             f"{sends} snapshot transfers to it)")
        w.at(w.now + 5, self.watch_lag)

    def lagging(self) -> bool:
        return bool(self.lags) and "caught_up_at" not in self.lags[-1]

    # -- observing ---------------------------------------------------------------------

    def on_ready(self, node: SimNode, rd: Ready) -> None:
        if self.leases is not None:
            self.leases.observe(node)
        if self.plan.mix == "self_elect" and node.id == 1 and rd.soft_state is not None \
                and rd.soft_state.role == Role.LEADER and self.rng.random() < 0.4:
            # Right after its self-election: the Ready with its first entry of the term
            # is being written now, and its appends may already be on their way.
            self.downtime[1] = self.world.now + self.rng.randint(10, 120)
            self.world.cut_power_soon(1, self.rng.randint(0, 6))

    def replica_counters(self) -> Counter[str]:
        """The counters of every replica that ran, restarts included."""
        total: Counter[str] = Counter()
        for node in self.world.nodes.values():
            for r in node.replicas:
                for k in ("snapshots_sent", "snapshots_installed", "snapshots_taken",
                          "snapshots_older_kept", "elections_won", "proposals", "reads"):
                    total[k] += r.counters[k]
                total["snapshots_rejected"] += r.snapshot_receiver.rejected
        return total

    # -- settle and check --------------------------------------------------------------

    def run(self) -> Outcome:
        w = self.world
        out = self.outcome
        try:
            self.start()
            w.run_until(CHAOS_MS)
            self.settle()
            self.check()
        except (SimFailure, SafetyViolation, AssertionError) as e:
            out.error = f"{type(e).__name__}: {e}"
        except Exception as e:  # an exception out of a replica is a bug too
            out.error = f"{type(e).__name__} raised in the replica: {e}"
            import traceback

            out.error += "\n" + "".join(traceback.format_exception(e)[-6:])
        out.trace = w.format_trace()
        out.ops = Counter(f"{o.op}:{o.status}" for o in self.history)
        out.stats.update(w.crashes)
        out.stats.update(self.replica_counters())
        out.stats.update(w.coverage)
        out.stats.update({f"net_{k}": v for k, v in w.net.stats.items()})
        return out

    def settle(self) -> None:
        w = self.world
        w.note("settle")
        self.clients_on = False
        if self.leases is not None:
            self.leases.stop()
        net = w.net
        net.heal()
        net.drop = net.dup = 0.0
        net.rules.clear()
        for node in w.live():
            if node.cut_armed:
                node.fs.cut_after(None)
                node.cut_armed = False
        self.downtime.clear()
        deadline = w.now + SETTLE_MS
        # Liveness: a leader takes a write that every member applies.
        final = self.final
        final.stopped = False
        final.invoke("put", "final")
        op = self.history[-1]
        w.run_until(deadline, lambda: op.status == "ok" and self.members_applied())
        if op.status != "ok":
            raise SimFailure(f"liveness: no write committed within {SETTLE_MS} ms of the "
                             f"faults stopping ({op.status}; leader {self.leader_id()})")
        if self.lagging():
            w.run_until(w.now + CATCH_UP_MS, lambda: not self.lagging())
        w.run_until(deadline, lambda: self.members_applied())
        if not self.members_applied():
            raise SimFailure("liveness: the members did not all apply the final write "
                             f"within {SETTLE_MS} ms")
        # Every client's last operation ends (by its deadline at the latest).
        w.run_until(w.now + 3000, lambda: not any(c.busy for c in self.clients))
        if any(c.busy for c in self.clients):
            raise SimFailure("a client's operation never ended")
        # The final reads of every key.
        for k in range(KEYS):
            final.invoke("get", f"k{k}")
            read = self.history[-1]
            w.run_until(w.now + SETTLE_MS, lambda read=read: read.status == "ok")
            if read.status != "ok":
                raise SimFailure(f"liveness: the final read of k{k} did not succeed")
        # Every lease runs out: none is kept alive any more.
        if self.leases is not None:
            w.run_until(w.now + TTL_MS + SETTLE_MS, self.leases.ended)
            if not self.leases.ended():
                left = [i for i, r in self.leases.leases.items() if r.observed is None]
                raise SimFailure(f"liveness: leases {left[:5]} never expired")

    def members(self) -> list[SimNode]:
        lead = self.world.leader()
        if lead is None:
            return []
        core = lead.replica.core
        return [self.world.nodes[i] for i in sorted(core.voters | core.learners)]

    def members_applied(self) -> bool:
        """Every member of the leader's configuration is up and applied what it did."""
        lead = self.world.leader()
        if lead is None:
            return False
        want = lead.replica.core.log.applied
        return all(n.alive and n.replica.core.log.applied >= want for n in self.members())

    def members_level(self) -> bool:
        applied = {n.replica.core.log.applied if n.alive else -1 for n in self.members()}
        return len(applied) == 1

    def check(self) -> None:
        w = self.world
        # The clients' history is linearizable.
        result = checker.check(self.history, timeout_s=30)
        if not result.ok:
            raise SimFailure(f"the history of {len(self.history)} operations is not "
                             f"linearizable: {result.explain()}")
        # Every member holds the same state, once the last commit index reached them.
        w.run_until(w.now + SETTLE_MS, self.members_level)
        if not self.members_level():
            raise SimFailure("liveness: the members did not reach the same applied index "
                             f"within {SETTLE_MS} ms: "
                             f"{ {n.id: n.replica.core.log.applied for n in self.members()} }")
        states = {n.id: state_of(n) for n in self.members()}
        first = next(iter(states.values()))
        for i, st in states.items():
            if st != first:
                raise SimFailure(f"node {i}'s state differs from node {next(iter(states))}'s")
        if self.leases is not None:
            problems = self.leases.problems()
            if problems:
                raise SimFailure(f"{len(problems)} leases revoked early: {problems[0]}")
            self.outcome.stats["leases"] += len(self.leases.leases)
            self.outcome.stats["leases_kept_alive"] += sum(
                len(r.resets) > 1 for r in self.leases.leases.values())
        # No core dropped an honest peer's message as impossible.
        dropped = Counter(w.dropped)
        for n in w.live():
            dropped.update(n.replica.core.dropped)
        if +dropped:
            raise SimFailure(f"honest messages dropped as impossible: {dict(+dropped)}")


def state_of(node: SimNode) -> tuple:
    """A member's replicated state: applied index, data, sessions, added members,
    leases."""
    kv = node.replica.kv
    return (kv.applied_index, kv.scan(b"", 1 << 30),
            [(c, kv.session(c)) for c in sorted(kv._sessions)], sorted(kv.members.items()),
            [(lid, kv.lease(lid)) for lid in sorted(kv.lease_ttls)])


def run(seed: int) -> Outcome:
    return Run(make_plan(seed)).run()


def report(out: Outcome) -> str:
    lines = [
        f"REPLICA SIMULATION FAILED: seed={out.seed} faults={out.mix}",
        f"  error: {out.error}",
        f"  replay: RAFTKV_SIM_SEED={out.seed} make sim-replica",
        "  last events before the failure:",
    ]
    lines += [f"    {t}" for t in out.trace]
    return "\n".join(lines)

