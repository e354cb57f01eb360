"""The watch history a node keeps: the recent writes, as events, for WATCH requests.

Every applied put and delete is an event (revision, kind, key, value), the state
machine's own record of it (`KVStore.events`), so every replica has the same events at
the same revisions. A node keeps the newest of them, at most `max_bytes` of keys,
values and EVENT_OVERHEAD an event (about what they take in memory); a client that
watches from a revision older than what is kept gets COMPACTED, with the oldest revision
still there, and re-reads the state before watching on (etcd's rule after a
compaction).

What is kept starts where the node's state started: a restart keeps the events replayed
from the log after its snapshot (or its resumed state), a snapshot installed from the
leader starts them anew at its index. `floor` is the last revision the history cannot
answer for: a watch from `floor + 1` on never misses an event.
"""

from __future__ import annotations

import bisect
from operator import itemgetter
from typing import NamedTuple

from raftkv.node_defaults import WATCH_BYTES

PUT, DELETE = 1, 2  # an event's kind; kv.Op's numbers
# Bytes an event takes in memory beyond its key and value: its tuple, its slot in two
# lists and two bytes objects' headers (measured: 303 B for a 17-byte key and a 100-byte
# value, 186 over the raw 117).
EVENT_OVERHEAD = 192
MAX_WATCH_EVENTS = 1000  # events in one WATCH reply, about (a revision is never split)


class Event(NamedTuple):
    """One applied write: a put (value) or a delete (value None)."""

    revision: int
    kind: int  # PUT or DELETE
    key: bytes | str  # str from a client made with decode=True
    value: bytes | str | None

    @property
    def type(self) -> str:
        """"put" or "delete"."""
        return "put" if self.kind == PUT else "delete"


class Compacted(Exception):
    """The history no longer holds the revisions asked for; `oldest` is the first
    revision it can answer from."""

    def __init__(self, oldest: int) -> None:
        super().__init__(f"revisions before {oldest} are no longer kept")
        self.oldest = oldest


class WatchHistory:
    """The newest events, in revision order, within `max_bytes`."""

    __slots__ = ("max_bytes", "floor", "_events", "_ends", "_head")

    def __init__(self, max_bytes: int = WATCH_BYTES, floor: int = 0) -> None:
        self.max_bytes = max_bytes
        self.reset(floor)

    def reset(self, floor: int) -> None:
        """Forget every event: the history answers from `floor + 1` on."""
        self.floor = floor
        self._events: list[tuple[int, int, bytes, bytes | None]] = []
        # _ends[i]: the bytes of events[0..i], counted as `max_bytes` counts them; the
        # events before `_head` are dropped.
        self._ends: list[int] = []
        self._head = 0

    def __len__(self) -> int:
        return len(self._events) - self._head

    @property
    def bytes(self) -> int:
        ends, head = self._ends, self._head
        return ends[-1] - ends[head - 1] if ends and head else (ends[-1] if ends else 0)

    def extend(self, events: list[tuple[int, int, bytes, bytes | None]]) -> None:
        """Add events (tuples of Event's fields, in revision order, after every event
        held), then drop the oldest whole revisions past `max_bytes`. Held as the
        tuples they came as: an Event is made only for a reply (the hot path is here)."""
        held, ends = self._events, self._ends
        held.extend(events)
        total = ends[-1] if ends else 0
        append = ends.append
        for e in events:
            total += (len(e[2]) + EVENT_OVERHEAD if e[3] is None
                      else len(e[2]) + len(e[3]) + EVENT_OVERHEAD)
            append(total)
        head = self._head
        dropped = ends[head - 1] if head else 0
        if total - dropped > self.max_bytes:
            # The first event to keep: past the last whose end leaves the rest in bounds.
            head = bisect.bisect_left(ends, total - self.max_bytes, head)
            head = min(head + 1, len(held))
            revision = held[head - 1][0]
            while head < len(held) and held[head][0] == revision:
                head += 1  # a revision goes whole
            self.floor = revision
        if head > 4096 and head * 2 > len(held):
            del held[:head], ends[:head]
            head = 0
        self._head = head

    def since(self, start: int, key: bytes, prefix: bool, applied: int,
              limit: int = MAX_WATCH_EVENTS) -> tuple[list[Event], int]:
        """The events from revision `start` on whose key is `key` (or starts with it,
        if `prefix`), at most about `limit` (never splitting a revision), and the
        revision to ask from next. `applied` is the state's applied index: with no
        event left to give, the next revision is past it. Raises Compacted if `start`
        is at or below `floor`."""
        if start <= self.floor:
            raise Compacted(self.floor + 1)
        events = self._events
        i = bisect.bisect_left(events, start, self._head, key=_revision)
        out: list[Event] = []
        n = len(events)
        while i < n:
            e = events[i]
            if len(out) >= limit and e[0] != out[-1].revision:
                return out, e[0]
            if e[2] == key or prefix and e[2].startswith(key):
                out.append(Event(*e))
            i += 1
        return out, max(start, applied + 1)


_revision = itemgetter(0)
