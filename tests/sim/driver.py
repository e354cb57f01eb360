"""Seeded random runs of the simulated cluster, and shrinking of a failing run.

A run is (seed, schedule): the schedule is a list of fault and client events drawn from
the seed up front; network randomness (loss, duplication, delay) comes from the cluster's
own RNG seeded with the same seed. `run(seed)` replays exactly. When a run fails,
`shrink` removes schedule events while the failure persists, so the report shows the
fewest events that still reproduce it, with the trace of messages before the failure.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from raftkv.raft import ConfOp
from tests.sim.cluster import Cluster, SafetyViolation, encode_put

# name -> (drop rate, duplicate rate, (min delay, max delay) in time units, faults)
# A tick is 10 time units, so a delay above 10 reorders messages across heartbeats.
# Crashes come back after a drawn downtime; "unpersisted" crashes die between sending a
# Ready's early messages and its fsync; "leader" targets whoever leads at that moment,
# which is what Figure 8 and the stale-read scenarios need.
FAULT_MIXES: dict[str, tuple[float, float, tuple[int, int], tuple[str, ...]]] = {
    "calm": (0.0, 0.0, (1, 3), ()),
    "lossy": (0.15, 0.05, (1, 25), ()),
    "partitions": (0.02, 0.0, (1, 8), ("partition", "oneway", "isolate_leader")),
    "crashes": (0.02, 0.02, (1, 8), ("crash", "crash_leader")),
    "chaos": (0.1, 0.05, (1, 20), ("partition", "oneway", "isolate_leader", "crash",
                                    "crash_leader", "membership")),
    "membership": (0.02, 0.0, (1, 8), ("membership", "membership", "crash_leader",
                                       "partition")),
}
SPARE_NODES = 2  # nodes outside the initial configuration, for membership changes
SIZES = (3, 5, 7)
CHAOS_TICKS = 200
SETTLE_TICKS = 150  # liveness bound: after healing, a leader and a commit within this


@dataclass(frozen=True)
class Event:
    tick: int
    kind: str
    args: tuple = ()

    def __repr__(self) -> str:
        return f"Event({self.tick}, {self.kind!r}, {self.args!r})"


@dataclass
class Outcome:
    seed: int
    size: int
    mix: str
    schedule: list[Event]
    error: str | None = None
    trace: list[str] = field(default_factory=list)
    acked: int = 0
    reads: int = 0
    events_run: int = 0


def params(seed: int) -> tuple[int, str]:
    mixes = list(FAULT_MIXES)
    return SIZES[seed % len(SIZES)], mixes[(seed // len(SIZES)) % len(mixes)]


def make_schedule(seed: int, size: int, mix: str) -> list[Event]:
    rng = random.Random(f"schedule-{seed}")
    faults = FAULT_MIXES[mix][3]
    ids = list(range(1, size + 1))
    events: list[Event] = []
    for tick in range(CHAOS_TICKS):
        # Clients: writes and reads sent to a node that believes it leads; `pick` chooses
        # among several believers, so a deposed leader that has not noticed gets traffic.
        if rng.random() < 0.5:
            events.append(Event(tick, "put", (f"k{rng.randrange(4)}", rng.random())))
        if rng.random() < 0.3:
            events.append(Event(tick, "get", (f"k{rng.randrange(4)}", rng.random())))
        if faults and rng.random() < 0.1:
            kind = rng.choice(faults)
            duration = rng.randint(5, 40)
            if kind == "partition":
                shuffled = rng.sample(ids, size)
                cut = rng.randint(1, size - 1)
                events.append(Event(tick, kind, (tuple(shuffled[:cut]),)))
                events.append(Event(tick + duration, "heal"))
            elif kind == "oneway":
                a, b = rng.sample(ids, 2)
                events.append(Event(tick, kind, (a, b)))
            elif kind == "membership":
                op = rng.choice(("add_learner", "promote", "remove"))
                events.append(Event(tick, "conf", (op, rng.random())))
            elif kind == "isolate_leader":
                events.append(Event(tick, kind))
                events.append(Event(tick + duration, "heal"))
            else:
                # 0 stands for "whoever leads when the event fires"
                target = 0 if kind == "crash_leader" else rng.choice(ids)
                unpersisted = rng.random() < 0.5
                events.append(Event(tick, "crash", (target, unpersisted, duration)))
        if mix == "membership" and rng.random() < 0.25:
            # Changes in quick succession, so that some meet a leader change half-way.
            op = rng.choice(("add_learner", "promote", "remove"))
            events.append(Event(tick, "conf", (op, rng.random())))
        if faults and rng.random() < 0.02:
            events.append(Event(tick, "heal"))
    events.sort(key=lambda e: e.tick)
    return events


def run(seed: int, schedule: list[Event] | None = None) -> Outcome:
    size, mix = params(seed)
    if schedule is None:
        schedule = make_schedule(seed, size, mix)
    out = Outcome(seed, size, mix, schedule)
    drop, dup, delay, _ = FAULT_MIXES[mix]
    # Most runs compact their logs (some very often), so snapshots are installed on
    # followers that fell behind; a quarter keep the whole log.
    compact_every = random.Random(f"compact-{seed}").choice((None, 4, 10, 30))
    spare = SPARE_NODES if "membership" in FAULT_MIXES[mix][3] else 0
    c = Cluster(size, seed, compact_every=compact_every, spare=spare)
    c.drop_rate, c.dup_rate, c.delay = drop, dup, delay
    value = 0
    try:
        by_tick: dict[int, list[Event]] = {}
        for e in schedule:
            by_tick.setdefault(e.tick, []).append(e)
        restarts: dict[int, list[int]] = {}  # tick -> nodes that come back then
        for tick in range(CHAOS_TICKS):
            for i in restarts.pop(tick, ()):
                c.restart(i)
            for e in by_tick.get(tick, ()):
                out.events_run += 1
                lead = c.leader()
                believers = c.believed_leaders()
                if e.kind in ("put", "get") and believers:
                    target = believers[int(e.args[1] * len(believers))]
                    if e.kind == "put":
                        value += 1
                        c.propose(target, e.args[0], str(value))
                    else:
                        c.read(target, e.args[0])
                elif e.kind == "partition":
                    c.partition(e.args[0])
                elif e.kind == "oneway":
                    c.block(*e.args)
                elif e.kind == "isolate_leader" and lead is not None:
                    c.isolate(lead)
                elif e.kind == "crash":
                    target, unpersisted, downtime = e.args
                    target = target or lead
                    if target is not None and c.nodes[target].alive:
                        if unpersisted:
                            c.nodes[target].crash_on_next_ready = True
                        else:
                            c.crash(target)
                        restarts.setdefault(tick + downtime, []).append(target)
                elif e.kind == "conf":
                    c.change_membership(ConfOp[e.args[0].upper()], e.args[1])
                elif e.kind == "heal":
                    c.heal()
            c.run(1)
        settle(c)
    except (SafetyViolation, AssertionError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
        out.trace = list(c.trace)
    except Exception as exc:  # an exception out of the core is a bug too
        out.error = f"{type(exc).__name__} in core: {exc}"
        out.trace = list(c.trace)
    out.acked = c.acked_count
    out.reads = len(c.read_results)
    return out


def settle(c: Cluster) -> None:
    """Heal everything, then require liveness: a leader, a new write committed and
    applied everywhere, and every node's applied state identical."""
    c.heal()
    c.drop_rate = c.dup_rate = 0.0
    for i in c.ids:
        node = c.nodes[i]
        node.crash_on_next_ready = False
        c.restart(i)
    final = encode_put("final", "settled")
    proposed: tuple[int, int, int] | None = None  # (node, index, term) of our proposal

    def settled() -> bool:
        nonlocal proposed
        lead = c.leader()
        if lead is None:
            return False
        core = c.nodes[lead].core
        if proposed is None or proposed[0] != lead or core.term != proposed[2]:
            # The leader we asked may have been a stale one whose entry was overwritten:
            # ask the current leader again (a client retrying, as a real one would).
            index = c.propose(lead, "final", "settled")
            proposed = (lead, index, core.term) if index is not None else None
            return False
        index = proposed[1]
        members = c.members()
        return all(len(n.applied) >= index and n.applied[index - 1].data == final
                   for i, n in c.nodes.items() if i in members)

    c.run_until(settled, SETTLE_TICKS)
    c.check_converged()
    c.check_nothing_dropped()


def shrink(out: Outcome, budget: int = 200) -> Outcome:
    """Greedily drop schedule events (halves, then single events) while the run still
    fails. The result still fails; its schedule is usually far shorter."""
    best = out
    chunk = max(1, len(best.schedule) // 2)
    tries = 0
    while chunk >= 1 and tries < budget:
        i = 0
        progressed = False
        while i < len(best.schedule) and tries < budget:
            candidate = best.schedule[:i] + best.schedule[i + chunk :]
            tries += 1
            result = run(best.seed, candidate)
            if result.error:
                best = result
                progressed = True
            else:
                i += chunk
        if not progressed:
            chunk //= 2
    return best


def report(out: Outcome) -> str:
    lines = [
        f"SIMULATION FAILED: seed={out.seed} nodes={out.size} faults={out.mix}",
        f"  error: {out.error}",
        f"  replay: RAFTKV_SIM_SEED={out.seed} make sim",
        f"  shortest schedule found ({len(out.schedule)} events): "
        f"run({out.seed}, {out.schedule!r})",
        "  last events before the failure:",
    ]
    lines += [f"    {t}" for t in out.trace]
    return "\n".join(lines)
