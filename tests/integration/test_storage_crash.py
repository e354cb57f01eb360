"""Crash safety of raftkv.storage with real processes and kill -9.

A child process appends and syncs batches in a loop (a seeded mix of appends, conflicting
suffixes, vote changes, local and installed snapshots, over tiny segments) and reports
each completed sync on a pipe. The parent kills it at random moments and reopens the dir:
the recovered state must be the state after the last reported sync, or a state reached
while writing the next batch (one record at a time) — never anything else.

Run as a script this file is the child: `python test_storage_crash.py child DIR SEED`
(or `vote DIR TERM VOTE`). The seed of a run is printed and read from RAFTKV_SEED.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from raftkv.raft.types import NONE, Entry, EntryType, HardState, SnapshotMeta
from raftkv.storage import Storage

SEGMENT_BYTES = 4096
KILLS = 60
SEED = int(os.environ.get("RAFTKV_SEED", time.time_ns() % 2**32))

# ---- the workload, shared by child (which performs it) and parent (which predicts it) ----


def entry_data(index: int, term: int) -> bytes:
    return b"%d:%d;" % (index, term) * (1 + (index * 7 + term) % 9)


def snapshot_data(index: int, term: int) -> bytes:
    return b"state at %d/%d" % (index, term)


@dataclass(slots=True)
class Model:
    hs: HardState = HardState()
    snap: tuple[int, int] = (0, 0)  # index, term
    terms: list[int] = field(default_factory=list)  # term of each entry after the snapshot

    @property
    def last(self) -> int:
        return self.snap[0] + len(self.terms)

    def term_at(self, index: int) -> int | None:
        if self.snap[0] < index <= self.last:
            return self.terms[index - self.snap[0] - 1]
        return None

    def key(self) -> tuple:
        return self.hs, self.snap, tuple(self.terms)

    def copy(self) -> Model:
        return Model(self.hs, self.snap, list(self.terms))

    @classmethod
    def of(cls, st: Storage) -> Model:
        """The model of an opened storage, checking every byte it holds on the way."""
        snap = (st.snapshot.index, st.snapshot.term) if st.snapshot else (0, 0)
        if st.snapshot:
            assert st.load_snapshot_data() == snapshot_data(*snap), f"seed {SEED}"
        ents = st.entries_after_snapshot()
        for k, e in enumerate(ents):
            assert e.index == snap[0] + 1 + k, f"seed {SEED}"
            assert (e.type, e.data) == (e.index % 3, entry_data(e.index, e.term)), f"seed {SEED}"
        return cls(st.hard_state, snap, [e.term for e in ents])


def next_step(rng: random.Random, m: Model) -> tuple:
    """A step a Raft node could hand storage: committed entries are never rewritten."""
    hs = m.hs
    floor = max(hs.commit, m.snap[0])
    r = rng.random()
    if hs.term == 0 or r < 0.06:  # new term and vote, nothing else
        return ("append", m.last + 1, 0, 0, HardState(hs.term + 1, rng.randint(1, 5), hs.commit))
    if r < 0.10 and hs.commit > m.snap[0]:  # local snapshot of what was applied
        return ("snapshot", hs.commit, m.term_at(hs.commit), hs)
    if r < 0.13:  # installed from a new leader: over our uncommitted suffix, or past our log
        if m.last > floor and rng.random() < 0.5:
            index = rng.randint(floor + 1, m.last)
        else:
            index = m.last + rng.randint(1, 5)
        return ("snapshot", index, hs.term + 1, HardState(hs.term + 1, rng.randint(1, 5), index))
    if r < 0.25 and m.last > floor:  # a new leader's entries replace an uncommitted suffix
        first, n, term = rng.randint(floor + 1, m.last), rng.randint(1, 6), hs.term + 1
        return ("append", first, n, term, HardState(term, rng.randint(1, 5), hs.commit))
    first, n = m.last + 1, rng.randint(1, 16)
    commit = rng.randint(hs.commit, first + n - 1) if rng.random() < 0.6 else hs.commit
    return ("append", first, n, hs.term, HardState(hs.term, hs.vote, commit))


def transitions(m: Model, step: tuple) -> Iterator[None]:
    """Apply `step` to the model one WAL record at a time, yielding after each record."""
    if step[0] == "append":
        _, first, n, term, hs = step
        if n:
            if first <= m.last:
                del m.terms[first - m.snap[0] - 1 :]
                yield
            m.terms += [term] * n
            yield
    else:
        _, index, term, hs = step
        if term > m.hs.term:  # save_snapshot makes the snapshot's term durable first
            m.hs = HardState(term, NONE, m.hs.commit)
            yield
        keep = m.term_at(index) == term
        m.terms = m.terms[index - m.snap[0] :] if keep else []
        m.snap = (index, term)
        yield  # the snapshot file's rename; recovery completes the rest of a save
    if hs != m.hs:
        m.hs = hs
        yield


def play_batch(rng: random.Random, m: Model, st: Storage | None = None) -> list[tuple]:
    """One group-committed batch: perform it on `st` (child) or list the model's state
    after each record (parent)."""
    keys = []
    for _ in range(rng.randint(1, 3)):
        step = next_step(rng, m)
        if st is not None:
            perform(st, step)
        for _ in transitions(m, step):
            if st is None:
                keys.append(m.key())
    return keys


def perform(st: Storage, step: tuple) -> None:
    if step[0] == "append":
        _, first, n, term, hs = step
        ents = [
            Entry(term, i, EntryType(i % 3), entry_data(i, term)) for i in range(first, first + n)
        ]
        st.append(ents, hs)
    else:
        _, index, term, hs = step
        st.save_snapshot(SnapshotMeta(index, term, (1, 2, 3)), snapshot_data(index, term))
        st.append([], hs)


def child(data_dir: str, seed: int) -> None:
    rng = random.Random(seed)
    st = Storage.open(data_dir, segment_bytes=SEGMENT_BYTES)
    m = Model.of(st)
    os.write(1, b"ready\n")
    while True:
        play_batch(rng, m, st)
        st.sync()
        os.write(1, b"synced %d\n" % m.last)  # one short write: atomic on a pipe


def vote_child(data_dir: str, term: int, vote: int) -> None:
    st = Storage.open(data_dir)
    st.append([], HardState(term, vote, 0))
    st.sync()
    os.write(1, b"synced\n")
    sys.stdin.read()  # the parent never closes it: wait here to be killed


# ---- the parent ----------------------------------------------------------------------------


class Child:
    """A child process whose lines are read with deadlines; always killed by pid."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[bytes] = []
        self._buf = b""

    def _read(self, timeout: float) -> bool:
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], timeout)[0]:
            return True
        chunk = os.read(fd, 65536)
        self._buf += chunk
        *done, self._buf = self._buf.split(b"\n")
        self.lines += done
        return bool(chunk)

    def wait_for_lines(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.lines) < n:
            left = deadline - time.monotonic()
            assert left > 0, (
                f"child reported {len(self.lines)}/{n} lines in {timeout}s; seed {SEED}"
            )
            if not self._read(left):
                err = self.proc.stderr.read().decode(errors="replace")
                raise AssertionError(f"child exited early; seed {SEED}\n{err}")

    def kill(self) -> None:
        """SIGKILL, reap, and collect every line written before death."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        while self._read(10):
            pass
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


def test_kill9_at_random_moments_loses_nothing_reported(tmp_path):
    print(f"seed {SEED} (set RAFTKV_SEED to replay)")
    rng = random.Random(SEED)
    d = tmp_path / "data"
    with Storage.open(d, segment_bytes=SEGMENT_BYTES) as st:
        model = Model.of(st)
    started = time.monotonic()
    total_synced = 0
    for kill in range(KILLS):
        child_seed = rng.randrange(2**32)
        reports = rng.randint(0, 25)
        ch = Child("child", str(d), str(child_seed))
        try:
            ch.wait_for_lines(1 + reports)
            if rng.random() < 0.5:
                time.sleep(rng.uniform(0, 0.003))  # land somewhere inside a batch
        finally:
            ch.kill()
        assert ch.proc.returncode == -signal.SIGKILL, f"seed {SEED}"
        synced = sum(line.startswith(b"synced") for line in ch.lines)
        total_synced += synced

        sim, sim_rng = model.copy(), random.Random(child_seed)
        for _ in range(synced):
            play_batch(sim_rng, sim)
        candidates = [sim.key(), *play_batch(sim_rng, sim)]
        with Storage.open(d, segment_bytes=SEGMENT_BYTES) as st:
            model = Model.of(st)
        got = model.key()
        assert got in candidates, (
            f"seed {SEED}, kill {kill}, {synced} syncs reported: recovered hs={got[0]} "
            f"snap={got[1]} last={model.last}; expected hs={candidates[0][0]} "
            f"snap={candidates[0][1]} last={candidates[0][1][0] + len(candidates[0][2])} "
            "or a state within the next batch"
        )
    assert total_synced > KILLS, f"too few syncs to mean anything; seed {SEED}"
    assert time.monotonic() - started < 60


def test_a_synced_vote_survives_kill9(tmp_path):
    d = tmp_path / "data"
    for term in range(1, 6):
        ch = Child("vote", str(d), str(term), str(term % 3 + 1))
        try:
            ch.wait_for_lines(1)
        finally:
            ch.kill()
        with Storage.open(d) as st:
            assert st.hard_state == HardState(term, term % 3 + 1, 0)


if __name__ == "__main__":
    if sys.argv[1] == "child":
        child(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "vote":
        vote_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
