"""Power loss at random moments, in process, on the PowerLossFS disk model (tests/powerloss.py).

Each iteration runs a seeded workload a Raft node could hand storage (appends with terms,
conflicting suffixes that truncate, term and vote and commit changes, local snapshots,
snapshots installed from a leader with and without their hard state, as node.py installs
them) over 4 KB segments, so segments rotate and compaction deletes them; now and then an
entry is larger than a segment. Before a random share of the disk operations storage
issues, the test takes the state a power cut would leave there (`fs.crash`) and opens it.
Now and then a disk operation is made to fail instead (EIO, ENOSPC): the storage must
fail for good, and a reopen in the same boot, its page cache still holding what the disk
lost, is checked like a crash. The workload goes on, now and then on a recovered disk,
so recovery is also followed by writes and more crashes.

The model: every storage call is turned beforehand into the states the WAL passes
through, one per record (`append_records`, `snapshot_states`); a completed `sync` or
`save_snapshot` makes the current state durable. At a crash, `history` holds the durable
state and then the state after each record written since, up to the end of the call in
progress. The recovered state must be one of them: the log, snapshot and commit index
those of some history[i] (the WAL keeps a prefix of its records), the term and vote those
of some history[j], j >= i (the VOTE file's copy may be ahead of the WAL). Then, stated
on their own:

- open never raises StorageCorruptError after a pure power loss;
- the term never goes back, and a vote in a term never changes to another candidate;
- terms never decrease along the log, and the hard state's term is at least the last
  entry's; each entry's bytes are the ones written for its index and term;
- a second power cut right after a completed open recovers exactly the same state;
- a power cut at a random operation inside open, then another open, still satisfies
  all of the above (`test_power_cut_during_upgrade_from_format_1` does the same for
  the format-1 to 2 upgrade).

Rule the workload follows, as a node does: a local snapshot covers only entries that are
durable (a node applies, and so snapshots, only what it has synced).

`RAFTKV_POWERLOSS_ITERS`: the number of crash points (default 10,000, about 10 s on a
2-core machine; the upgrade test runs a twentieth as many dirs; past about 250,000 add
`--timeout=0`, setup.cfg allows a test 300 s). `RAFTKV_POWERLOSS_SEED=N`: run only
iteration N (of either test), as a failure prints it.
"""

from __future__ import annotations

import errno
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import pytest

from raftkv.raft.types import NONE, Entry, EntryType, HardState, SnapshotMeta
from raftkv.storage import FORMAT, Storage, StorageCorruptError, StorageError
from raftkv.storage.disk import Disk
from raftkv.storage.record import (
    Record,
    SnapshotMarker,
    entries_record,
    frame_v1,
    hard_state_record,
    snapshot_marker_record,
    truncate_record,
)
from raftkv.storage.snapshot import write_snapshot
from raftkv.storage.wal import segment_name
from tests.powerloss import PowerCut, PowerLossFS

SEGMENT_BYTES = 4096
DATA = Path("/node/data")
CRASH_POINTS = int(os.environ.get("RAFTKV_POWERLOSS_ITERS", "10000"))
ONE_SEED = os.environ.get("RAFTKV_POWERLOSS_SEED")
UPGRADE_ITERS = max(1, CRASH_POINTS // 20)
CRASH_PROBABILITY = 0.35  # per disk operation of the workload
CUT_IN_OPEN = 0.5  # share of crash points whose first open is cut short
RECRASH = 0.5  # share of crash points crashed again right after the open
ADOPT = 0.08  # share of crash points the workload goes on from
FAULT = 0.02  # share of steps before which a disk operation is made to fail
PER_ITERATION = min(200, CRASH_POINTS)  # crash points per iteration (seed)


pytestmark = pytest.mark.usefixtures("quiet_storage_log")


def entry_data(index: int, term: int) -> bytes:
    """Mostly a few dozen bytes; now and then more than a segment holds."""
    repeat = 1000 if (index * 31 + term) % 89 == 0 else 1 + (index * 7 + term) % 13
    return b"%d:%d;" % (index, term) * repeat


def snapshot_data(index: int, term: int) -> bytes:
    return b"state at %d/%d" % (index, term) * (1 + index % 50)


def make_entries(first: int, n: int, term: int) -> list[Entry]:
    return [Entry(term, i, EntryType(i % 3), entry_data(i, term)) for i in range(first, first + n)]


# ---- the model ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class State:
    """What a Raft node's storage holds: hard state, snapshot (index, term), and the
    term of each entry after the snapshot."""

    hs: HardState = HardState()
    snap: tuple[int, int] = (0, 0)
    terms: tuple[int, ...] = ()

    @property
    def last(self) -> int:
        return self.snap[0] + len(self.terms)

    def term_at(self, index: int) -> int | None:
        if self.snap[0] < index <= self.last:
            return self.terms[index - self.snap[0] - 1]
        if index == self.snap[0]:
            return self.snap[1]
        return None

    def brief(self) -> str:
        hs = self.hs
        runs: list[str] = []
        for t in self.terms:
            if runs and runs[-1].startswith(f"{t}x"):
                runs[-1] = f"{t}x{int(runs[-1].split('x')[1]) + 1}"
            else:
                runs.append(f"{t}x1")
        return (f"hs=({hs.term},{hs.vote},{hs.commit}) snap={self.snap} "
                f"last={self.last} terms=[{' '.join(runs)}]")


def append_records(s: State, entries: list[Entry],
                   hs: HardState | None) -> list[tuple[Record, State]]:
    """The WAL records `Storage.append(entries, hs)` writes, each with the state after it."""
    out: list[tuple[Record, State]] = []
    new_hs = hs if hs is not None and hs != s.hs else None
    if entries:
        first = entries[0].index
        if new_hs is not None and (new_hs.term, new_hs.vote) != (s.hs.term, s.hs.vote):
            s = replace(s, hs=HardState(new_hs.term, new_hs.vote, s.hs.commit))
            out.append((hard_state_record(s.hs), s))
        if first <= s.last:
            s = replace(s, terms=s.terms[: first - s.snap[0] - 1])
            out.append((truncate_record(first), s))
        s = replace(s, terms=s.terms + tuple(e.term for e in entries))
        out.append((entries_record(entries), s))
    if new_hs is not None:
        s = replace(s, hs=new_hs)
        out.append((hard_state_record(new_hs), s))
    return out


def append_states(s: State, entries: list[Entry], hs: HardState | None) -> list[State]:
    return [state for _, state in append_records(s, entries, hs)]


def snapshot_states(s: State, meta: SnapshotMeta, hs: HardState | None) -> list[State]:
    """The states `Storage.save_snapshot(meta, data, hs)` passes through: the new term
    and vote if any (without `hs`, the snapshot's term if it is above the stored one),
    the snapshot (its file, then its marker), the hard state after it."""
    out = []
    if hs is None and meta.term > s.hs.term:
        hs = HardState(meta.term, NONE, s.hs.commit)
    if hs is not None and (hs.term, hs.vote) != (s.hs.term, s.hs.vote):
        out += append_states(s, [], HardState(hs.term, hs.vote, s.hs.commit))
        s = out[-1]
    keep = s.term_at(meta.index) == meta.term and meta.index <= s.last
    s = replace(s, snap=(meta.index, meta.term),
                terms=s.terms[meta.index - s.snap[0]:] if keep else ())
    out.append(s)
    final = hs if hs is not None else s.hs
    if final.commit > s.last:
        final = replace(final, commit=s.last)
    if final != s.hs:
        s = replace(s, hs=final)
        out.append(s)
    return out


def observe(st: Storage) -> State:
    """The state an opened storage holds, checking the bytes of every entry and of the
    snapshot on the way."""
    snap = (st.snapshot.index, st.snapshot.term) if st.snapshot else (0, 0)
    if st.snapshot is not None:
        assert st.load_snapshot_data() == snapshot_data(*snap), "snapshot bytes differ"
    ents = st.entries_after_snapshot()
    for k, e in enumerate(ents):
        assert e.index == snap[0] + 1 + k, f"entry {e.index} where {snap[0] + 1 + k} belongs"
        assert (e.type, e.data) == (EntryType(e.index % 3), entry_data(e.index, e.term)), (
            f"entry {e.index} (term {e.term}) holds bytes never written for it")
    return State(st.hard_state, snap, tuple(e.term for e in ents))


def check_recovered(got: State, history: list[State]) -> None:
    """The assertions of the module docstring, one by one, then the exact one."""
    synced = history[0]
    hs, shs = got.hs, synced.hs
    assert hs.term >= shs.term, f"term went back from {shs.term} to {hs.term}"
    if hs.term == shs.term and shs.vote != NONE:
        assert hs.vote == shs.vote, (
            f"vote in term {hs.term} changed from {shs.vote} to {hs.vote}: a double vote")
    prev = got.snap[1]
    for k, t in enumerate(got.terms):
        idx = got.snap[0] + 1 + k
        assert t >= prev, f"entry {idx} has term {t} after term {prev}"
        prev = t
    assert hs.term >= prev, f"hard state term {hs.term} below the log's last term {prev}"
    assert hs.commit <= got.last, f"commit {hs.commit} past the last index {got.last}"
    for i, s in enumerate(history):
        if (s.snap, s.terms, s.hs.commit) != (got.snap, got.terms, hs.commit):
            continue
        if any((h.hs.term, h.hs.vote) == (hs.term, hs.vote) for h in history[i:]):
            return
    raise AssertionError(
        "recovered a state that is neither the synced one nor one reached by a prefix of "
        f"the records written since:\n  got      {got.brief()}\n"
        + "\n".join(f"  history[{i}] {s.brief()}" for i, s in enumerate(history)))


# ---- the workload ---------------------------------------------------------------------------


def next_step(rng: random.Random, s: State, durable: State) -> list[tuple]:
    """The calls a Raft node could make next: committed entries are never rewritten; a
    local snapshot covers only durable, committed entries."""
    hs = s.hs
    floor = max(hs.commit, s.snap[0])
    r = rng.random()
    if hs.term == 0 or r < 0.05:  # an election: a new term, voted or not yet
        vote = rng.choice([NONE, 1, 2, 3])
        return [("append", [], HardState(hs.term + 1, vote, hs.commit))]
    if r < 0.08 and hs.vote == NONE:  # a vote in the current term
        return [("append", [], HardState(hs.term, rng.randint(1, 3), hs.commit))]
    snappable = min(durable.hs.commit, durable.last, s.last)
    if r < 0.14 and snappable > s.snap[0] and s.term_at(snappable) == durable.term_at(snappable):
        index = rng.randint(s.snap[0] + 1, snappable)
        return [("snapshot", SnapshotMeta(index, s.term_at(index), (1, 2, 3)), None)]
    if r < 0.18:  # installed from a leader: over our uncommitted suffix, or past our log
        if s.last > floor and rng.random() < 0.5:
            index = rng.randint(floor + 1, s.last)
        else:
            index = s.last + rng.randint(1, 5)
        term = hs.term + rng.choice([0, 1])
        new_hs = HardState(term, hs.vote if term == hs.term else rng.choice([NONE, 1, 2, 3]),
                           index)
        meta = SnapshotMeta(index, term, (1, 2, 3))
        if rng.random() < 0.5:  # as node.py does it: the snapshot, then the Ready's hs
            return [("snapshot", meta, None), ("append", [], new_hs)]
        return [("snapshot", meta, new_hs)]
    if r < 0.30 and s.last > floor:  # a new leader's entries replace an uncommitted suffix
        first, n, term = rng.randint(floor + 1, s.last), rng.randint(1, 6), hs.term + 1
        return [("append", make_entries(first, n, term),
                 HardState(term, rng.choice([NONE, 1, 2, 3]), hs.commit))]
    first, n = s.last + 1, rng.randint(1, 12)
    commit = rng.randint(hs.commit, first + n - 1) if rng.random() < 0.6 else hs.commit
    return [("append", make_entries(first, n, hs.term), HardState(hs.term, hs.vote, commit))]


def step_states(s: State, step: tuple) -> list[State]:
    if step[0] == "append":
        return append_states(s, step[1], step[2])
    return snapshot_states(s, step[1], step[2])


def perform(st: Storage, step: tuple) -> None:
    if step[0] == "append":
        st.append(step[1], step[2])
    else:
        meta = step[1]
        st.save_snapshot(meta, snapshot_data(meta.index, meta.term), step[2])


@dataclass(slots=True)
class CrashPoint:
    fs: PowerLossFS
    history: list[State]
    where: str


@dataclass(slots=True)
class Run:
    """One iteration: a workload on one disk, crash points taken along the way."""

    seed: int
    rng: random.Random
    crash_rng: random.Random
    fs: PowerLossFS = field(default_factory=PowerLossFS)
    history: list[State] = field(default_factory=lambda: [State()])
    pending: list[CrashPoint] = field(default_factory=list)
    where: str = "first open"
    checked: int = 0
    open_ops: int = 40  # the most operations an open has taken so far

    def on_op(self, name: str, path: Path) -> None:
        if self.crash_rng.random() < CRASH_PROBABILITY:
            self.pending.append(CrashPoint(self.fs.crash(self.crash_rng), list(self.history),
                                           f"{self.where}, before {name} {path}"))

    def watch(self, fs: PowerLossFS) -> None:
        self.fs = fs
        fs.on_op = self.on_op

    def fail(self, cp: CrashPoint, problem: str) -> AssertionError:
        return AssertionError(
            f"seed {self.seed} (RAFTKV_POWERLOSS_SEED={self.seed} replays it), crash point "
            f"{self.checked} ({cp.where}): {problem}")

    def open(self, fs: PowerLossFS, cp: CrashPoint) -> Storage:
        """Storage.open, any failure reported with the seed (a PowerCut passes)."""
        try:
            return Storage.open(DATA, segment_bytes=SEGMENT_BYTES, fs=fs)
        except StorageCorruptError as exc:
            raise self.fail(cp, f"open after a power cut reports corruption: {exc}") from exc
        except Exception as exc:
            raise self.fail(cp, f"open failed: {exc!r}") from exc

    def recover(self, fs: PowerLossFS, cp: CrashPoint) -> tuple[Storage, State]:
        st = self.open(fs, cp)
        try:
            got = observe(st)
            check_recovered(got, cp.history)
        except AssertionError as exc:
            raise self.fail(cp, str(exc)) from exc
        return st, got

    def check(self, cp: CrashPoint) -> tuple[PowerLossFS, Storage, State]:
        """Recover `cp` (with a cut during the first open, sometimes) and check it."""
        rng = self.crash_rng
        fs = cp.fs
        if rng.random() < CUT_IN_OPEN:
            fs.cut_after(rng.randint(0, self.open_ops))
            try:
                self.open(fs, cp).close()
                fs.cut_after(None)
            except PowerCut:
                fs = fs.crash(rng)
                cp = replace(cp, where=cp.where + ", then again during open")
        start = fs.ops
        st, got = self.recover(fs, cp)
        self.open_ops = max(self.open_ops, fs.ops - start)
        if rng.random() < RECRASH:
            again = fs.crash(rng)
            st2, got2 = self.recover(again,
                                     replace(cp, where=cp.where + ", then right after open"))
            if got2 != got:
                raise self.fail(cp, f"a power cut right after open changed the state:\n"
                                f"  first open  {got.brief()}\n  second open {got2.brief()}")
            st2.close()
        self.checked += 1
        return fs, st, got

    def call(self, action: Callable[[], None], states: list[State], where: str,
             durable: bool) -> bool:
        """Perform `action`, whose WAL states are `states`; False if it failed on a
        fault injected into the disk (then the storage is failed for good)."""
        self.where = where
        self.history += states
        fired = self.fs.fired
        try:
            action()
        except StorageError:
            if self.fs.fired == fired:
                raise
            return False
        except Exception as exc:
            raise AssertionError(f"seed {self.seed} (RAFTKV_POWERLOSS_SEED={self.seed} "
                                 f"replays it), {where}: {exc!r}") from exc
        if durable:
            self.history = [self.history[-1]]
        return True

    def inject_fault(self) -> None:
        """Make a later disk operation fail: a sync with EIO, or a write with ENOSPC."""
        op = self.rng.choice(["fdatasync", "fsync", "pwrite"])
        err = errno.ENOSPC if op == "pwrite" else self.rng.choice([errno.EIO, errno.ENOSPC])
        self.fs.clear_faults()
        self.fs.fail_next(op, err)
        self.where += f" (then {op} fails with {errno.errorcode[err]})"


def run_iteration(seed: int, budget: int = PER_ITERATION) -> int:
    """Run iteration `seed` until it has checked at least `budget` crash points; returns
    how many it checked."""
    rng = random.Random(seed)
    run = Run(seed, rng, random.Random(seed ^ 0x5EED))
    fs = run.fs
    fs.makedirs(DATA.parent)
    fs.sync_all()
    run.watch(fs)
    st = run.open(fs, CrashPoint(fs, [State()], "first open"))
    s = State()
    steps = 0
    while run.checked < budget:
        steps += 1
        if rng.random() < FAULT:
            run.inject_fault()
        ok = True
        if rng.random() < 0.8:
            for step in next_step(rng, s, run.history[0]):
                states = step_states(s, step)
                ok = run.call(partial(perform, st, step), states, f"step {steps} {step[0]}",
                              step[0] == "snapshot")
                if not ok:
                    break
                if states:
                    s = states[-1]
        else:
            ok = run.call(st.sync, [], f"step {steps} sync", True)
        if not ok:  # failed for good: reopen in the same boot, the cache still warm
            st.close()
            run.fs.clear_faults()
            fs_after, st, s = run.check(CrashPoint(run.fs, list(run.history),
                                                   f"{run.where}, reopened in the same boot"))
            run.watch(fs_after)
            run.history = [s]
        adopt = None
        for cp in run.pending:
            cfs, cst, got = run.check(cp)
            if adopt is None and rng.random() < ADOPT:
                adopt = (cfs, cst, got)
            else:
                cst.close()
        run.pending.clear()
        if adopt is not None:
            cfs, st, s = adopt
            run.watch(cfs)
            run.history = [s]
            run.where = f"step {steps}, recovered"
    return run.checked


def test_power_loss_at_random_moments_keeps_every_synced_state():
    if ONE_SEED is not None:
        run_iteration(int(ONE_SEED))
        return
    base = time.time_ns() % 2**31
    print(f"seeds from {base} (RAFTKV_POWERLOSS_SEED=N replays iteration N)")
    started = time.monotonic()
    total, seed = 0, base
    while total < CRASH_POINTS:
        total += run_iteration(seed)
        seed += 1
    print(f"{total} crash points in {seed - base} iterations, "
          f"{time.monotonic() - started:.1f} s")


# ---- the format-1 to 2 upgrade ----------------------------------------------------------------


def build_v1_dir(rng: random.Random) -> tuple[PowerLossFS, list[State]]:
    """A format-1 data dir on a PowerLossFS whose last segment ends in unsynced records,
    and the history a crash now may recover (the synced state, then each record after)."""
    fs = PowerLossFS()
    fs.makedirs(DATA)
    fs.sync_all()
    disk = Disk(fs=fs)
    disk.write_atomic(DATA / "FORMAT", [b"raftkv-storage 1\n"])
    s = State()
    records: list[tuple[Record, State]] = []
    if rng.random() < 0.5:
        index, term = rng.randint(1, 30), rng.randint(1, 3)
        meta = SnapshotMeta(index, term, (1, 2, 3))
        write_snapshot(DATA, meta, snapshot_data(index, term), disk)
        s = State(HardState(term, rng.choice([NONE, 1, 2]), index), (index, term))
        records += [(snapshot_marker_record(SnapshotMarker(index, term, False, 1)), s),
                    (hard_state_record(s.hs), s)]
    for _ in range(rng.randint(0, 30)):
        step = next_step(rng, s, s)[0]
        if step[0] == "append" and (recs := append_records(s, step[1], step[2])):
            records += recs
            s = recs[-1][1]
    synced = rng.randint(2 if records and records[0][1].snap[0] else 0, len(records))
    history = [records[synced - 1][1] if synced else State()]
    history += [state for _, state in records[synced:]]
    seq, fd, off = 0, None, 0
    for k, ((rtype, payload), _) in enumerate(records):
        blob = frame_v1(rtype, payload)
        if fd is None or (off and off + len(blob) > 700 and k <= synced):
            if fd is not None:
                disk.sync_data(fd)
                fs.close(fd)
            seq += 1
            fd = fs.open(DATA / segment_name(seq), create=True, exclusive=True)
            disk.sync_dir(DATA)
            off = 0
            if rng.random() < 0.5:
                disk.write_all(fd, bytes(2048), 0)
                disk.sync_data(fd)
        disk.write_all(fd, blob, off)
        off += len(blob)
        if k + 1 == synced:
            disk.sync_data(fd)
    return fs, history


def test_power_cut_during_upgrade_from_format_1():
    """A format-1 dir, possibly with a torn tail, is opened (upgraded) with a power cut at
    a random operation inside the open, then opened again: the history rule holds, the
    dir is format 2, a power cut right after changes nothing, and it takes appends."""
    base = int(ONE_SEED) if ONE_SEED is not None else time.time_ns() % 2**31
    for seed in range(base, base + (1 if ONE_SEED is not None else UPGRADE_ITERS)):
        rng = random.Random(seed)
        where = f"seed {seed} (RAFTKV_POWERLOSS_SEED={seed} replays it)"
        fs, history = build_v1_dir(rng)
        cs = rng.getrandbits(32)
        probe = fs.crash(random.Random(cs))
        Storage.open(DATA, segment_bytes=SEGMENT_BYTES, fs=probe).close()
        crashed = fs.crash(random.Random(cs))
        crashed.cut_after(rng.randint(0, probe.ops))
        try:
            Storage.open(DATA, segment_bytes=SEGMENT_BYTES, fs=crashed).close()
            crashed.cut_after(None)
            after = crashed
        except PowerCut:
            after = crashed.crash(rng)
        try:
            st = Storage.open(DATA, segment_bytes=SEGMENT_BYTES, fs=after)
        except StorageCorruptError as exc:
            raise AssertionError(f"{where}: open after a cut during the upgrade: {exc}") from exc
        try:
            got = observe(st)
            check_recovered(got, history)
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from exc
        assert after.read(DATA / "FORMAT").decode().splitlines()[0] == FORMAT, where
        again = after.crash(rng)
        with Storage.open(DATA, segment_bytes=SEGMENT_BYTES, fs=again) as st2:
            assert observe(st2) == got, where
        nxt = got.last + 1
        st.append(make_entries(nxt, 1, got.hs.term), None)
        st.sync()
        final = after.crash(rng)
        with Storage.open(DATA, segment_bytes=SEGMENT_BYTES, fs=final) as st3:
            assert observe(st3) == replace(got, terms=got.terms + (got.hs.term,)), where
