"""The in-memory Raft log with its three cursors: stabled, committed, applied.

Indexes are 1-based; `offset` is the index of the last entry covered by a snapshot
(0 without one), so `entries[i - offset - 1]` is the entry at index `i`.

Invariant: offset <= applied <= committed, applied <= stabled, and every entry at an
index <= stabled is durable on this node.
"""

from __future__ import annotations

from raftkv.raft.types import Entry, InvariantViolation


class RaftLog:
    __slots__ = ("entries", "offset", "offset_term", "committed", "applied", "stabled")

    def __init__(
        self,
        entries: list[Entry] | None = None,
        *,
        offset: int = 0,
        offset_term: int = 0,
        committed: int = 0,
        applied: int = 0,
    ) -> None:
        self.entries: list[Entry] = list(entries or [])
        self.offset = offset
        self.offset_term = offset_term
        for i, e in enumerate(self.entries):
            if e.index != offset + 1 + i:
                raise InvariantViolation(
                    f"log not contiguous: entry {i} has index {e.index}, want {offset + 1 + i}"
                )
        self.stabled = self.last_index()
        if committed > self.stabled:
            raise InvariantViolation(
                f"commit {committed} is past the last durable index {self.stabled}"
            )
        self.committed = committed
        self.applied = max(applied, offset)
        if self.applied > self.committed:
            self.committed = self.applied

    # -- queries ---------------------------------------------------------------------

    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def term(self, index: int) -> int | None:
        """The term of the entry at `index`, or None when it is compacted or absent."""
        if index == self.offset:
            return self.offset_term
        if index < self.offset or index > self.last_index():
            return None
        return self.entries[index - self.offset - 1].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Election restriction (paper §5.4.1): the candidate's log is at least as new."""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def slice(self, lo: int, hi: int, max_entries: int) -> list[Entry]:
        """Entries with lo <= index < hi, at most max_entries of them."""
        hi = min(hi, lo + max_entries)
        return self.entries[lo - self.offset - 1 : hi - self.offset - 1]

    def unstable_entries(self) -> list[Entry]:
        return self.entries[self.stabled - self.offset :]

    def next_committed_entries(self) -> list[Entry]:
        """Committed entries not yet applied, limited to what is durable locally."""
        hi = min(self.committed, self.stabled)
        if hi <= self.applied:
            return []
        return self.entries[self.applied - self.offset : hi - self.offset]

    def has_next_committed_entries(self) -> bool:
        return min(self.committed, self.stabled) > self.applied

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= `index` whose term is <= `term`, and that term.

        Used for fast back-off (paper §5.3, end): one round trip skips a whole term.
        """
        index = min(index, self.last_index())
        while index > self.offset:
            t = self.entries[index - self.offset - 1].term
            if t <= term:
                return index, t
            index -= 1
        return self.offset, self.offset_term

    # -- mutations -------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Append entries that directly follow the last one (a leader's own proposals)."""
        self.entries.extend(entries)

    def maybe_append(self, prev_index: int, prev_term: int, commit: int,
                     entries: list[Entry]) -> int | None:
        """The follower side of AppendEntries (paper §5.3). Returns the index of the last
        new entry, or None when the consistency check on (prev_index, prev_term) fails."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        for i, e in enumerate(entries):
            if e.index <= self.offset:
                continue  # covered by our snapshot, hence committed and identical
            if not self.match_term(e.index, e.term):
                if e.index <= self.committed:
                    raise InvariantViolation(
                        f"conflict at index {e.index} (term {e.term}) "
                        f"is at or below commit {self.committed}"
                    )
                self.truncate_and_append(entries[i:])
                break
        self.commit_to(min(commit, last_new))
        return last_new

    def truncate_and_append(self, entries: list[Entry]) -> None:
        """Replace every entry at or after entries[0].index by `entries`."""
        first = entries[0].index
        if first > self.last_index() + 1:
            raise InvariantViolation(f"gap: appending {first} after {self.last_index()}")
        del self.entries[first - self.offset - 1 :]
        self.entries.extend(entries)
        if first <= self.stabled:
            self.stabled = first - 1  # the replaced suffix is no longer what disk holds

    def commit_to(self, index: int) -> bool:
        """Raise the commit index (never lower it). Returns whether it moved."""
        if index <= self.committed:
            return False
        if index > self.last_index():
            raise InvariantViolation(
                f"commit {index} is past the last index {self.last_index()}"
            )
        self.committed = index
        return True

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to `index` are durable, unless a truncation replaced them since."""
        if self.match_term(index, term) and index > self.stabled:
            self.stabled = index

    def compact(self, index: int) -> int:
        """Drop the entries up to `index`, which a snapshot now covers (paper §7). Only
        applied entries may go. Returns the term of the entry at `index`."""
        term = self.term(index)
        if index > self.applied or term is None:
            raise InvariantViolation(
                f"cannot compact to {index}: applied {self.applied}, offset {self.offset}, "
                f"last {self.last_index()}")
        del self.entries[: index - self.offset]
        self.offset, self.offset_term = index, term
        return term

    def restore(self, index: int, term: int) -> None:
        """Replace the whole log by a snapshot up to (index, term) from the leader."""
        self.entries = []
        self.offset, self.offset_term = index, term
        self.committed = self.applied = self.stabled = index

    def applied_to(self, index: int) -> None:
        if index < self.applied or index > min(self.committed, self.stabled):
            raise InvariantViolation(
                f"applied {index} outside [{self.applied}, "
                f"{min(self.committed, self.stabled)}]"
            )
        self.applied = index
