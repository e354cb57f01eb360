"""The nemesis: faults injected into a running cluster on a schedule drawn from a seed.

Every fault goes through the controller's commands (the same ones the CLI verbs use), so
a chaos run breaks the cluster exactly as a user at the terminal would. A fault starts,
lasts a drawn time, then is undone (restart, resume, heal); `heal_all` undoes whatever
is left at the end.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from harness.rpc import ControlError, control

KINDS = ("kill", "pause", "partition", "leader-partition", "restart-all", "membership")


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the start of the run
    kind: str
    duration: float
    pick: float  # a draw in [0, 1) that chooses the node or the split


def make_schedule(seed: int, kinds: tuple[str, ...], run_time: float) -> list[Fault]:
    """Faults one after another, each followed by a quiet spell, from 1 s to the last few
    seconds of the run. The same seed gives the same schedule."""
    rng = random.Random(f"nemesis-{seed}")
    faults, t = [], 1.0
    while t < run_time - 3.0:
        duration = rng.uniform(1.0, 4.0)
        faults.append(Fault(round(t, 3), rng.choice(kinds), round(duration, 3), rng.random()))
        t += duration + rng.uniform(1.0, 3.0)
    return faults


@dataclass
class Nemesis:
    controller: str
    node_ids: list[int]
    log: Callable[[str], None] = print
    events: list[tuple[float, str]] = field(default_factory=list)
    injected: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ctx = zmq.Context()
        self.stop_flag = threading.Event()
        self.start_time = time.monotonic()

    def command(self, name: str, *args: object) -> object:
        try:
            return control(self.ctx, self.controller, name, *args, timeout=5.0)
        except ControlError as e:
            self.note(f"{name} {' '.join(map(str, args))}: {e}")
            return None

    def note(self, what: str) -> None:
        t = time.monotonic() - self.start_time
        self.events.append((round(t, 3), what))
        self.log(f"[{t:7.2f}s] nemesis: {what}")

    def leader(self) -> int | None:
        st = self.command("status")
        return st.get("leader") if isinstance(st, dict) else None

    def choose(self, pick: float, prefer_leader: bool = True) -> int:
        leader = self.leader() if prefer_leader and pick < 0.5 else None
        return leader if leader is not None else self.node_ids[int(pick * len(self.node_ids))]

    def run(self, schedule: list[Fault]) -> None:
        """Carry out `schedule` in real time (call in a thread; `stop()` ends it early)."""
        self.start_time = time.monotonic()
        for fault in schedule:
            if self.stop_flag.wait(max(0.0, self.start_time + fault.at - time.monotonic())):
                return
            undo = self.inject(fault)
            self.injected[fault.kind] = self.injected.get(fault.kind, 0) + 1
            self.stop_flag.wait(fault.duration)
            undo()
            if self.stop_flag.is_set():
                return

    def inject(self, f: Fault) -> Callable[[], None]:
        """Start fault `f`; returns what undoes it."""
        if f.kind == "kill":
            node = self.choose(f.pick)
            self.command("kill", node)
            self.note(f"kill -9 node {node}")
            return lambda: (self.command("restart", node), self.note(f"restart node {node}"))
        if f.kind == "pause":
            node = self.choose(f.pick)
            self.command("pause", node)
            self.note(f"SIGSTOP node {node}")
            return lambda: (self.command("resume", node), self.note(f"SIGCONT node {node}"))
        if f.kind in ("partition", "leader-partition"):
            if f.kind == "leader-partition":
                alone = [self.choose(0.0)]
            else:
                rng = random.Random(f.pick)
                shuffled = rng.sample(self.node_ids, len(self.node_ids))
                alone = shuffled[: rng.randint(1, len(shuffled) // 2)]
            rest = [i for i in self.node_ids if i not in alone]
            groups = (",".join(map(str, alone)), ",".join(map(str, rest)))
            self.command("partition", *groups)
            self.note(f"partition {groups[0]} | {groups[1]}")
            return lambda: (self.command("heal"), self.note("heal"))
        if f.kind == "membership":
            self.replace_two(f.pick)
            return lambda: None
        if f.kind == "restart-all":
            for node in self.node_ids:
                self.command("kill", node)
            self.note("kill -9 every node")
            return self.restart_all
        raise ValueError(f"unknown fault kind {f.kind!r}; known: {', '.join(KINDS)}")

    def replace_two(self, pick: float) -> None:
        """Membership churn under load: add two nodes (3 -> 5), kill -9 two of the old
        members (the leader among them when `pick` < 0.5), and remove those two: the
        cluster is back to its size with a majority of new members."""
        from harness.membership import MembershipError, add_node, remove_node

        old = list(self.node_ids)
        try:
            for _ in range(2):
                added = add_node(self.ctx, self.controller, timeout=20.0)
                self.node_ids.append(added["added"])
                self.note(f"added node {added['added']}; voters {added['voters']}")
            leader = self.leader() if pick < 0.5 else None
            rest = random.Random(pick).sample(old, len(old))
            doomed = ([leader] if leader in old else []) + [i for i in rest if i != leader]
            doomed = doomed[:2]
            for node in doomed:
                self.command("kill", node)
                self.note(f"kill -9 node {node}")
            for node in doomed:
                removed = remove_node(self.ctx, self.controller, node, timeout=20.0)
                self.node_ids.remove(node)
                self.note(f"removed node {node}; voters {removed['voters']}")
        except (ControlError, MembershipError) as e:
            self.note(f"membership change failed: {e}")
            self.remove_non_members()

    def remove_non_members(self) -> None:
        """After a failed add: take out a started node that never became a member
        (remove-node of a non-member is answered as done, and stops its process)."""
        from harness.membership import MembershipError, remove_node

        st = self.command("status")
        if not isinstance(st, dict) or not st.get("voters"):
            return
        members = set(st["voters"]) | set(st.get("learners") or ())
        for n in st["nodes"]:
            if n["id"] not in members:
                try:
                    remove_node(self.ctx, self.controller, n["id"], timeout=20.0)
                    self.note(f"removed node {n['id']}, which never became a member")
                except (ControlError, MembershipError) as e:
                    self.note(f"could not remove non-member node {n['id']}: {e}")
                if n["id"] in self.node_ids:
                    self.node_ids.remove(n["id"])

    def restart_all(self) -> None:
        for node in self.node_ids:
            self.command("restart", node)
        self.note("restart every node")

    def heal_all(self) -> None:
        """Undo everything: heal partitions, resume paused nodes, restart dead ones."""
        self.command("heal")
        st = self.command("status")
        for n in st.get("nodes", []) if isinstance(st, dict) else []:
            if n.get("paused"):
                self.command("resume", n["id"])
            if not n.get("alive"):
                self.command("restart", n["id"])
        self.note("healed everything")

    def stop(self) -> None:
        self.stop_flag.set()

    def close(self) -> None:
        self.ctx.destroy(linger=0)
