"""Growing and shrinking a running cluster, one server at a time (Raft thesis §4.1-4.2).

What `raftkv add-node` and `raftkv remove-node` do, as steps of controller commands:

- add: the controller starts a new node with `--join` (its first start only: cluster.json
  records its later command line without it) and the leader adds it as a
  learner (it replicates but counts in no quorum, §4.2.1); once its log has caught up
  with the commit index seen after the add, it is promoted to voter. Promoting a node
  that is far behind would stall commits: the new majority would need it.
- remove: a leader being removed first hands leadership to the most caught-up other
  voter (§3.10), so the cluster does not sit through an election; then the leader
  removes it, and the controller stops the process once the removal is committed.

Every step is idempotent (a retried change already in force is answered OK), so a
caller that times out can run the same command again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import zmq

from harness.rpc import ControlError, control

CHANGE_TIMEOUT = 15.0  # the supervisor asks for a change up to 10 s while no leader is known


class MembershipError(Exception):
    """A step did not finish in time; the message says which and what state it left."""


def _status(ctx: zmq.Context, controller: str) -> dict[str, Any]:
    st = control(ctx, controller, "status", timeout=CHANGE_TIMEOUT)
    assert isinstance(st, dict)
    return st


def _node(st: dict[str, Any], node_id: int) -> dict[str, Any] | None:
    return next((n for n in st["nodes"] if n["id"] == node_id), None)


def wait_caught_up(ctx: zmq.Context, controller: str, node_id: int, index: int,
                   timeout: float) -> int:
    """Wait until `node_id` has applied `index`; returns its applied index."""
    deadline = time.monotonic() + timeout
    while True:
        node = _node(_status(ctx, controller), node_id)
        applied = (node or {}).get("applied_index") or 0
        if applied >= index:
            return applied
        if time.monotonic() > deadline:
            raise MembershipError(
                f"node {node_id} applied {applied} of {index} entries within {timeout:g}s; "
                f"it stays a learner (see `raftkv logs {node_id}`; `raftkv remove-node "
                f"{node_id}` takes it out)")
        time.sleep(0.05)


def add_node(ctx: zmq.Context, controller: str, *, node_id: int | None = None,
             promote: bool = True, timeout: float = 60.0,
             progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Start a node, add it as a learner, wait until it has caught up, promote it.
    Returns the last answer (with "voters" and "learners") plus "added"/"address"."""
    added = control(ctx, controller, "add-node", *([node_id] if node_id else []),
                    timeout=CHANGE_TIMEOUT)
    assert isinstance(added, dict)
    new = added["added"]
    progress(f"node {new} started at {added['address']} (pid {added['pid']}) and added as "
             f"a learner at index {added['index']}")
    if not promote:
        return added
    target = _status(ctx, controller)
    leader = _node(target, target["leader"]) if target.get("leader") else None
    index = max(added["index"], (leader or {}).get("commit_index") or 0)
    applied = wait_caught_up(ctx, controller, new, index, timeout)
    progress(f"node {new} caught up (applied index {applied})")
    promoted = control(ctx, controller, "promote", new, timeout=CHANGE_TIMEOUT)
    assert isinstance(promoted, dict)
    progress(f"node {new} promoted to voter at index {promoted['index']}; voters "
             f"{promoted['voters']}")
    return {**promoted, "added": new, "address": added["address"], "pid": added["pid"]}


def move_leadership(ctx: zmq.Context, controller: str, away_from: int, timeout: float,
                    progress: Callable[[str], None] = lambda _: None) -> int | None:
    """If `away_from` leads, hand leadership to the most caught-up other live voter and
    wait for it to lead. Returns the new leader, or None when nothing had to move."""
    st = _status(ctx, controller)
    if st.get("leader") != away_from:
        return None
    voters = set(st.get("voters") or ())
    candidates = [n for n in st["nodes"] if n["id"] != away_from and n["id"] in voters
                  and n.get("role") is not None]
    if not candidates:
        raise MembershipError(f"node {away_from} leads and no other voter answers; "
                              "cannot move leadership away from it")
    best = max(candidates, key=lambda n: (n.get("last_index") or 0, -n["id"]))["id"]
    progress(f"node {away_from} leads: handing leadership to node {best} first")
    deadline = time.monotonic() + timeout
    asked_at = -1e9
    while time.monotonic() < deadline:
        if time.monotonic() - asked_at > 1.0:  # a transfer times out in an election (§3.10)
            asked_at = time.monotonic()
            try:
                control(ctx, controller, "transfer-leader", best, timeout=CHANGE_TIMEOUT)
            except ControlError as e:
                progress(f"transfer to node {best} refused ({e}); retrying")
        leader = _status(ctx, controller).get("leader")
        if leader is not None and leader != away_from:
            progress(f"node {leader} leads now")
            return leader
        time.sleep(0.05)
    raise MembershipError(f"leadership did not move away from node {away_from} within "
                          f"{timeout:g}s")


def remove_node(ctx: zmq.Context, controller: str, node_id: int, *, timeout: float = 30.0,
                progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Move leadership away from `node_id` if it leads, then remove it from the cluster
    and stop its process. Returns the controller's answer."""
    move_leadership(ctx, controller, node_id, timeout, progress)
    removed = control(ctx, controller, "remove-node", node_id, timeout=CHANGE_TIMEOUT)
    assert isinstance(removed, dict)
    progress(f"node {node_id} removed at index {removed['index']}"
             f"{' and stopped' if removed['stopped'] else ''}; voters {removed['voters']}")
    return removed
