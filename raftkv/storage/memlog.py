"""The in-memory log that WAL records are applied to, live and on replay alike.

Applying the same records in the same order through this one class is what makes the
state after a reopen equal the state before it.
"""

from __future__ import annotations

from collections.abc import Sequence

from raftkv.raft.types import Entry


class LogError(ValueError):
    """A change that would break the log's invariants (a gap, a rewrite of compacted
    entries). Live it is the caller's bug; on replay it is corruption."""


class MemLog:
    """Invariant: entries[k].index == offset + 1 + k, and no entry <= floor.

    `offset is None` only during replay, while no record has told where the log resumes:
    replay may start in a segment whose predecessors a snapshot made redundant, and even
    a snapshot marker there does not say it (the entries after it may have been in a
    deleted segment too). `floor` is the index of the newest snapshot marker applied,
    None if none was.
    """

    __slots__ = ("entries", "offset", "floor")

    def __init__(self, entries: list[Entry], offset: int | None, floor: int | None) -> None:
        self.entries = entries
        self.offset = offset
        self.floor = floor

    @property
    def last(self) -> int | None:
        return None if self.offset is None else self.offset + len(self.entries)

    def term(self, index: int) -> int | None:
        if self.offset is None or not self.offset < index <= self.offset + len(self.entries):
            return None
        return self.entries[index - self.offset - 1].term

    def check_append(self, first: int, entries: Sequence[Entry]) -> None:
        """LogError unless `entries` (contiguous, starting at `first`) may be written."""
        if self.floor is not None and first <= self.floor:
            raise LogError(f"entry {first} is at or below the snapshot index {self.floor}")
        last = self.last
        if last is not None and first > last + 1:
            raise LogError(f"entry {first} would leave a gap after the last index {last}")
        for k, e in enumerate(entries):
            if e.index != first + k:
                raise LogError(f"entries not contiguous: {e.index} follows {first + k - 1}")

    def truncate(self, index: int) -> None:
        """Drop every entry >= index."""
        if self.floor is not None and index <= self.floor:
            raise LogError(f"truncation at {index} is at or below the snapshot index {self.floor}")
        if self.offset is None:
            return
        if index <= self.offset + 1:
            self.entries.clear()
            self.offset = index - 1
        else:
            del self.entries[index - self.offset - 1 :]

    def append(self, entries: list[Entry]) -> None:
        """Precondition: entries[0].index == last + 1 (or the start is still unknown)."""
        first = entries[0].index
        last = self.last
        if last is not None and first != last + 1:
            raise LogError(f"entry {first} does not follow the last index {last}")
        if self.offset is None:
            self.offset = first - 1
        self.entries += entries

    def compact(self, index: int, keep_suffix: bool) -> None:
        """Apply a snapshot at `index`: drop entries <= index (all of them unless
        keep_suffix)."""
        if self.floor is not None and index <= self.floor:
            raise LogError(f"snapshot at {index} is not newer than the one at {self.floor}")
        self.floor = index
        if self.offset is None:
            if not keep_suffix:  # nothing survives, so the log resumes right after index
                self.offset = index
        elif not keep_suffix or index >= self.offset + len(self.entries):
            self.entries.clear()
            self.offset = index
        elif index > self.offset:
            del self.entries[: index - self.offset]
            self.offset = index
