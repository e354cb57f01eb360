"""What the controller's two threads share: the router's loop and the supervisor's worker
(harness/router.py, harness/supervisor.py; wired together by harness/controller.py).

ZeroMQ sockets are not thread-safe, so each thread owns its own; they talk over one
inproc PAIR (PAIR_ADDRESS, one end each), carrying pickled messages:

    router -> supervisor   Command   a CONTROL request for the supervisor to carry out
                           STOP      the controller is shutting down
    supervisor -> router   Answer    a command's outcome, for the router to send back
                           Members   the members' addresses after add-node / remove-node

Besides the messages, each thread publishes one snapshot for the other in `Shared`, by
replacing an attribute whole (an assignment is atomic under the GIL; a published
object is never changed afterwards, so a reader needs no lock):

- `health`: the supervisor's latest sample of every node's process (psutil), node id ->
  a dict of HEALTH_FIELDS. The router takes it for the status map and to tell which
  nodes run (a node whose process is gone is not routed to).
- `cluster`: the router's view of the cluster (leader, term, the nodes that answered a
  STATUS poll), which the supervisor reads to find the leader it must kill or ask for a
  membership change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PAIR_ADDRESS = "inproc://raftkv-supervisor"
STOP = "stop"

# A node's entry in `Shared.health`.
HEALTH_FIELDS = ("address", "pid", "create_time", "alive", "paused", "cpu_percent",
                 "rss_bytes", "open_files", "uptime_s", "exit_code")


@dataclass(frozen=True, slots=True)
class Command:
    """CONTROL request `request_id` from `client`: command `name` with `args`."""

    client: bytes
    request_id: int
    name: str
    args: tuple


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of a Command: `code` (a wire.ReplyCode) and `value`. `faults`, if
    not None, is the partition now in force: node id -> the nodes it must drop."""

    command: Command
    code: int
    value: Any
    faults: dict[int, frozenset[int]] | None = None


@dataclass(frozen=True, slots=True)
class Members:
    """The cluster's members now (node id -> address), after a membership change."""

    addresses: dict[int, str]


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What the router believes now; published whole on every change."""

    leader: int = 0  # 0: none known
    term: int = 0  # the leader's term, or the highest any node reports
    answered: frozenset[int] = frozenset()  # nodes whose last STATUS poll was answered


@dataclass(slots=True)
class Shared:
    """The two published snapshots. Invariant: `health` is written by the supervisor's
    thread only and `cluster` by the router's, each replaced whole, never mutated."""

    health: dict[int, dict[str, Any]] = field(default_factory=dict)
    cluster: ClusterView = ClusterView()
