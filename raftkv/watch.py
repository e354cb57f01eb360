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
from itertools import accumulate
from operator import add
from typing import Any, NamedTuple

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
    """The newest events, in revision order, within `max_bytes`. Held flat, four items
    an event (revision, kind, key, value), as `KVStore.events` records them: ints and
    bytes in lists, nothing the garbage collector tracks (a tuple an event, tracked until
    a collection passed it, made the collector run every 700 puts)."""

    __slots__ = ("max_bytes", "floor", "_flat", "_revisions", "_ends", "_head")

    def __init__(self, max_bytes: int = WATCH_BYTES, floor: int = 0) -> None:
        self.max_bytes = max_bytes
        self.reset(floor)

    def reset(self, floor: int) -> None:
        """Forget every event: the history answers from `floor + 1` on."""
        self.floor = floor
        self._flat: list[Any] = []
        self._revisions: list[int] = []
        # _ends[i]: the bytes of events 0..i, counted as `max_bytes` counts them; the
        # events before `_head` are dropped.
        self._ends: list[int] = []
        self._head = 0

    def __len__(self) -> int:
        return len(self._revisions) - self._head

    @property
    def bytes(self) -> int:
        ends, head = self._ends, self._head
        if not ends:
            return 0
        return ends[-1] - ends[head - 1] if head else ends[-1]

    def extend(self, flat: list[Any]) -> None:
        """Add events, four items each (revision, kind, key, value: b"" for a delete),
        in revision order and after every event held; then drop the oldest whole
        revisions past `max_bytes`. (No Python loop an event: the apply path.)"""
        revisions, ends = self._revisions, self._ends
        self._flat += flat
        revisions += flat[0::4]
        sizes = map(EVENT_OVERHEAD.__add__, map(add, map(len, flat[2::4]), map(len, flat[3::4])))
        running = accumulate(sizes, initial=ends[-1] if ends else 0)
        next(running)
        ends += running
        total = ends[-1] if ends else 0
        head = self._head
        if total - (ends[head - 1] if head else 0) > self.max_bytes:
            # The first event to keep: past the last whose end leaves the rest in bounds.
            head = min(bisect.bisect_left(ends, total - self.max_bytes, head) + 1,
                       len(revisions))
            revision = revisions[head - 1]
            while head < len(revisions) and revisions[head] == revision:
                head += 1  # a revision goes whole
            self.floor = revision
        if head > 4096 and head * 2 > len(revisions):
            del self._flat[:4 * head], revisions[:head], ends[:head]
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
        flat, revisions = self._flat, self._revisions
        i = bisect.bisect_left(revisions, start, self._head)
        out: list[Event] = []
        n = len(revisions)
        while i < n:
            if len(out) >= limit and revisions[i] != out[-1].revision:
                return out, revisions[i]
            k = flat[4 * i + 2]
            if k == key or prefix and k.startswith(key):
                kind = flat[4 * i + 1]
                out.append(Event(revisions[i], kind, k, None if kind == DELETE
                                 else flat[4 * i + 3]))
            i += 1
        return out, max(start, applied + 1)
