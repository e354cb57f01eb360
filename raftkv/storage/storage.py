"""The storage facade a node uses: recovery on open, group-committed appends, snapshots.

A data dir holds::

    FORMAT                      "raftkv-storage 2", then the dir's identity: see DirInfo
    LOCK                        flock'ed by the one process that has the dir open
    VOTE                        a second copy of the term and vote, see vote.py
    wal-<seq>.log               WAL segments, see wal.py and record.py
    snap-<index>.snap           the newest two snapshots, see snapshot.py
    REPAIR                      present while the node repairs a damaged log from its
                                peers (see `Storage.repair`)
    *.broken                    copies of damaged files, kept for inspection

Opening is verified: every file read is synced and dropped from the page cache first, so
nothing counts as durable that is not on the disk (after kill -9 the page cache still
holds writes that were never synced; after a failed fsync it holds pages the disk never
got). Recovery then cross-checks what it read (`_cross_check`).

Not thread-safe: one node loop owns a Storage (its `sync` may run on a helper thread
while the loop leaves it alone).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from raftkv.raft.types import NONE, Entry, HardState, SnapshotMeta
from raftkv.storage import record, snapshot
from raftkv.storage.disk import Disk, temp_path
from raftkv.storage.errors import (
    DISK_FAILURE_HINT,
    StorageCorruptError,
    StorageError,
    StorageIdentityError,
    StorageMissingError,
    StorageVersionError,
)
from raftkv.storage.fs import OS_FS, FileSystem
from raftkv.storage.memlog import LogError, MemLog
from raftkv.storage.record import Record, RecordType, SnapshotMarker
from raftkv.storage.vote import NAME as VOTE_NAME
from raftkv.storage.vote import VoteFile
from raftkv.storage.vote import decode as decode_vote
from raftkv.storage.wal import (
    MAGIC,
    SEGMENT_HEADER_SIZE,
    UNKNOWN,
    WAL,
    Identity,
    Segment,
    segment_name,
)

log = logging.getLogger("raftkv.storage")

FORMAT = "raftkv-storage 2"
FORMAT_V1 = "raftkv-storage 1"
DEFAULT_SEGMENT_BYTES = 64 << 20
REPAIR_NAME = "REPAIR"
_HOUSEKEEPING = {"LOCK"}  # may exist in a dir that was never initialised


@dataclass(slots=True, frozen=True)
class DirInfo:
    """The FORMAT file: its first line names the format; format 2 adds lines
    `cluster <hex>`, `node <id>`, and after an upgrade `upgraded-at <seq>` (segments
    below that number are format-1 leftovers)."""

    version: int
    identity: Identity = UNKNOWN
    upgraded_at: int = 0

    def encode(self) -> bytes:
        lines = [FORMAT, f"cluster {self.identity.cluster_id:x}",
                 f"node {self.identity.node_id}"]
        if self.upgraded_at:
            lines.append(f"upgraded-at {self.upgraded_at}")
        return ("\n".join(lines) + "\n").encode()

    @classmethod
    def decode(cls, path: Path, text: str) -> DirInfo:
        lines = text.splitlines() or [""]
        if lines[0].strip() == FORMAT_V1:
            return cls(1)
        if lines[0].strip() != FORMAT:
            raise StorageVersionError(
                f"{path} says {lines[0].strip()!r}; this build reads {FORMAT!r} and "
                f"{FORMAT_V1!r}. Open it with the raftkv version that wrote it.")
        fields = {}
        for line in lines[1:]:
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
        try:
            ident = Identity(int(fields.get("cluster", "0"), 16), int(fields.get("node", "0")))
            return cls(2, ident, int(fields.get("upgraded-at", "0")))
        except ValueError as exc:
            raise StorageCorruptError(path, 0, f"unreadable FORMAT file ({exc})",
                                      path.parent) from exc


class Storage:
    """Durable Raft state: hard state, log entries after the snapshot, the snapshot.

    Per node-loop turn: `append(ready.entries, ready.hard_state)` then `sync()`: one
    fdatasync for the whole batch (group commit). Nothing is durable before `sync`
    returns. After an OSError from the disk the instance refuses further use for good (a
    failed fsync must never be retried and trusted); a reopen reads past the page cache.
    """

    def __init__(self, data_dir: Path, wal: WAL, disk: Disk, lock_fd: int) -> None:
        self._dir = data_dir
        self._wal = wal
        self._disk = disk
        self._fs = disk.fs
        self._lock_fd: int | None = lock_fd
        self._log = MemLog([], 0, 0)
        self._hard_state = HardState()
        self._hs_at: tuple[Path, int] = (data_dir, 0)  # where the hard state was read
        self._snapshot: SnapshotMeta | None = None
        self._failed: BaseException | None = None
        self._vote: VoteFile | None = None
        self.repair: str | None = None  # why the log was cut, while a repair is on
        self._first_seq = 1  # no segment below this one ever matters (an upgrade's)

    # ---- opening and recovery ----------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = True,
        identity: Identity = UNKNOWN,
        create: bool = True,
        repair: bool = False,
        fs: FileSystem = OS_FS,
    ) -> Storage:
        """Open and recover the data dir; with `create`, make it if it is missing or
        empty (only a node's first start may: StorageMissingError otherwise).

        `identity` (0 fields: unchecked) must match the one the dir records
        (StorageIdentityError). With `repair`, damage in the middle of the WAL cuts the
        log there instead of refusing: see `repair`. `fsync=False` is for benchmarks
        only: a machine crash may then lose acknowledged data. Raises
        StorageVersionError for an unknown format, StorageCorruptError for damage
        recovery must not guess about, StorageError if another process has it open.
        """
        if segment_bytes <= 0:
            raise ValueError("segment_bytes must be positive")
        path = Path(data_dir)
        disk = Disk(fsync=fsync, fs=fs)
        try:
            _prepare_dir(path, disk, identity, create)
        except OSError as exc:
            raise StorageError(f"data dir {path}: the disk failed while making it ({exc})"
                               ) from exc
        try:
            lock_fd = fs.lock(path / "LOCK")
        except BlockingIOError:
            raise StorageError(f"data dir {path} is in use by another process "
                               "(or Storage)") from None
        wal: WAL | None = None
        st: Storage | None = None
        try:
            info = _check_identity(path, disk, identity)
            snapshot.remove_temp_files(path, fs)
            wal = WAL.open(path, disk, segment_bytes, info.identity)
            info = _mark_versions(wal, info, disk)
            st = cls(path, wal, disk, lock_fd)
            st._first_seq = max(info.upgraded_at, 1)
            st._recover(repair)
            if info.version == 1:
                st._upgrade()
            disk.sync_dir(path)
        except BaseException as exc:
            if st is not None and st._vote is not None:
                st._vote.close()
            if wal is not None:
                wal.close()
            fs.unlock(lock_fd)
            if isinstance(exc, OSError):
                raise StorageError(f"data dir {path}: the disk failed while opening it "
                                   f"({exc}); restart once it is repaired or has space") from exc
            raise
        return st

    def _recover(self, repair: bool) -> None:
        """Read the snapshot and replay the WAL."""
        snaps = snapshot.list_snapshots(self._dir, self._fs)
        if snaps:
            path = snaps[-1][1]
            self._disk.as_on_disk(path)
            self._snapshot = snapshot.check_snapshot(path, self._dir, self._fs)
            if not self._wal.segments:
                raise StorageCorruptError(self._dir, 0, "snapshot present but no WAL", self._dir)
        snap_index = self._snapshot.index if self._snapshot else 0
        self._load_repair_note()
        mem, marker = self._replay(snap_index, repair)

        if self._wal.segments:
            first = self._wal.segments[0]
            need_first = max(marker.first_seq if marker else 1, self._first_seq)
            if first.seq > need_first:
                missing = self._dir / segment_name(need_first)
                raise StorageCorruptError(missing, 0, "WAL segment missing", self._dir)

        # Crashed after the snapshot file became durable, before its marker did? Then no
        # segment was deleted on its account, so the entry at its index (if any) is here.
        unmarked = self._snapshot is not None and (marker is None or marker.index < snap_index)
        keep = unmarked and mem.term(snap_index) == self._snapshot.term
        replayed_last = mem.last if mem.last is not None else snap_index
        if unmarked:
            mem.compact(snap_index, keep)
        elif mem.offset is None:  # no entry record survives: none follows the snapshot
            mem.offset = snap_index
        if mem.offset != snap_index:
            problem = f"log resumes at {mem.offset + 1}, after snapshot {snap_index}"
            first_path = self._wal.segments[0].path if self._wal.segments else self._dir
            raise StorageCorruptError(first_path, 0, problem, self._dir)
        mem.floor = snap_index
        self._log = mem
        self._merge_vote_file()
        if self.repair is not None and self._hard_state.commit > mem.last:
            # The commit index is volatile (paper Figure 2): the leader raises it again.
            self._hard_state = HardState(self._hard_state.term, self._hard_state.vote,
                                         mem.last)
        self._cross_check()
        if unmarked and self._wal.segments[-1].version == 2:  # (an upgrade writes one)
            log.warning("completing interrupted save of snapshot at %d", snap_index)
            self._record_snapshot(self._snapshot, keep, replayed_last)

    def _replay(self, snap_index: int, repair: bool) -> tuple[MemLog, SnapshotMarker | None]:
        """Apply every WAL record; returns the log and the newest snapshot marker."""
        mem = MemLog([], None, None)
        marker: SnapshotMarker | None = None
        current: Segment | None = None
        try:
            for seg, off, rtype, payload in self._wal.replay():
                if seg is not current:
                    current = seg
                    # (A segment opened by a snapshot's marker starts after that snapshot.)
                    if seg.first_index and mem.last is not None and \
                            rtype is not RecordType.SNAPSHOT and \
                            mem.last + 1 != seg.first_index:
                        raise self._wal.corrupt(seg.path, 0, f"segment starts at index "
                                                f"{seg.first_index}, the log before it "
                                                f"ends at {mem.last}")
                try:
                    idx, newer = self._apply_record(mem, rtype, payload, snap_index)
                    if newer is not None:
                        marker = newer
                    elif rtype is RecordType.HARD_STATE:
                        self._hs_at = (seg.path, off)
                except (record.FrameError, LogError) as exc:
                    raise self._wal.corrupt(seg.path, off, str(exc)) from exc
                seg.max_index = max(seg.max_index, idx)
        except StorageCorruptError as exc:
            if not repair:
                raise
            self._cut_at_damage(exc, mem)
        return mem, marker

    def _apply_record(self, mem: MemLog, rtype: RecordType, payload: bytes,
                      snap_index: int) -> tuple[int, SnapshotMarker | None]:
        """Apply one record to `mem` (or the hard state): the highest index it names, and
        the snapshot marker it is, if it is one."""
        if rtype is RecordType.ENTRIES:
            entries = record.decode_entries(payload)
            mem.append(entries)
            return entries[-1].index, None
        if rtype is RecordType.HARD_STATE:
            self._hard_state = record.decode_hard_state(payload)
            return 0, None
        if rtype is RecordType.TRUNCATE:
            idx = record.decode_truncate(payload)
            mem.truncate(idx)
            return idx, None
        marker = record.decode_snapshot_marker(payload)
        if marker.index > snap_index:
            raise LogError(f"snapshot at {marker.index} recorded but its file is gone")
        if marker.index == snap_index and marker.term != self._snapshot.term:
            raise LogError(f"snapshot term {marker.term} != its file's")
        mem.compact(marker.index, marker.keep_suffix)
        return marker.index, marker

    def _cross_check(self) -> None:
        """What recovery read must be a state a Raft node can be in: terms never
        decrease along the log, the hard state's term is at least every entry's and the
        snapshot's, and the commit index is within the log."""
        hs, mem = self._hard_state, self._log
        snap_term = self._snapshot.term if self._snapshot else 0
        path, off = self._hs_at

        def corrupt(where: Path, problem: str) -> StorageCorruptError:
            return StorageCorruptError(where, off if where == path else 0, problem, self._dir)

        prev = snap_term
        for e in mem.entries:
            if e.term < prev:
                where = self._wal.segments[-1].path if self._wal.segments else self._dir
                raise corrupt(where, f"entry {e.index} has term {e.term}, after term {prev}")
            prev = e.term
        if hs.term < prev:
            raise corrupt(path, f"hard state term {hs.term} is below the log's last term "
                          f"{prev}")
        if hs.commit > mem.last:
            raise corrupt(path, f"commit index {hs.commit} is past the last index {mem.last}")

    def _merge_vote_file(self) -> None:
        """The term and vote are the newer of the WAL's and the VOTE file's (see
        vote.py); opens the VOTE file for writing."""
        path = self._dir / VOTE_NAME
        if not self._fs.exists(path):
            VoteFile.create(path, self._disk, self._hard_state.term, self._hard_state.vote)
        found = decode_vote(self._disk.read_verified(path))
        if found is None:
            raise StorageCorruptError(path, 0, "neither copy of the term and vote is valid",
                                      self._dir)
        seq, term, vote = found
        hs = self._hard_state
        if term > hs.term or (term == hs.term and hs.vote == NONE):
            if (term, vote) != (hs.term, hs.vote):
                log.warning("the WAL's term and vote (%d, %d) are behind the VOTE file's "
                            "(%d, %d): using the VOTE file's", hs.term, hs.vote, term, vote)
            self._hard_state = HardState(term, vote, hs.commit)
        elif term == hs.term and vote not in (NONE, hs.vote):
            raise StorageCorruptError(path, 0, f"votes for {vote} in term {term}, the WAL "
                                      f"for {hs.vote}", self._dir)
        self._vote = VoteFile(path, self._disk, seq, term, vote)
        self._vote.write(self._hard_state.term, self._hard_state.vote)
        self._vote.sync()

    # ---- repair (Protocol-Aware Recovery, Alagappan et al., FAST '18) -------------------

    def _cut_at_damage(self, exc: StorageCorruptError, mem: MemLog) -> None:
        """Cut the WAL at the damaged record `exc` names: keep every record before it,
        keep copies of what is cut, and record the repair durably (REPAIR). What was cut
        counts as never written; the node must get it back from its peers before it may
        vote again (see node.py)."""
        wal = self._wal
        hit = next((s for s in wal.segments if s.path == exc.path), None)
        if hit is None:  # a missing segment or snapshot: no place to cut
            raise exc
        kept = [wal.keep_broken(hit.path, self._fs.read(hit.path))]
        kept += wal.drop_after(hit)
        cut = max(exc.offset, 0)
        if hit.version == 2 and cut < SEGMENT_HEADER_SIZE:
            # The header itself is damaged: the segment goes whole.
            self._fs.unlink(hit.path)
            wal.segments.remove(hit)
            self._disk.sync_dir(self._dir)
        else:
            wal.truncate_segment(hit, cut)
        wal.open_last(first_index=(mem.last or 0) + 1)
        note = (f"{exc.path} at offset {exc.offset}: {exc.problem}; the log was cut there "
                f"(last index now {mem.last}); copies kept: "
                + ", ".join(p.name for p in kept))
        self._disk.write_atomic(self._dir / REPAIR_NAME, [note.encode()])
        self.repair = note
        log.error("REPAIR: %s. This node takes no part in elections until the leader has "
                  "sent it everything that could have been committed.", note)

    def _load_repair_note(self) -> None:
        path = self._dir / REPAIR_NAME
        if self._fs.exists(path):
            self.repair = self._fs.read(path).decode(errors="replace")

    def finish_repair(self) -> None:
        """The node holds everything again: the repair is over (durably)."""
        if self.repair is None:
            return
        self._fs.unlink(self._dir / REPAIR_NAME)
        self._disk.sync_dir(self._dir)
        self.repair = None
        log.warning("repair finished: the log is whole again")

    # ---- format 1 -> 2 -------------------------------------------------------------------

    def _upgrade(self) -> None:
        """Rewrite a format-1 dir's recovered state into one format-2 segment, then make
        FORMAT say 2 and delete the old segments. A crash anywhere leaves either the old
        dir or the new segment complete (it is written as .tmp, synced, then renamed)."""
        wal = self._wal
        seq = wal.segments[-1].seq + 1
        wal.crc = 0
        seg = wal.create_segment(seq, self._log.offset + 1, temp=True)
        records: list[Record] = []
        if self._snapshot is not None:
            s = self._snapshot
            records.append(record.snapshot_marker_record(SnapshotMarker(s.index, s.term,
                                                                        True, seq)))
        records.append(record.hard_state_record(self._hard_state))
        if self._log.entries:
            records.append(record.entries_record(self._log.entries))
        wal.write(records, self._log.last, self._log.last)
        wal.sync()
        wal.publish(seg)
        ident = wal.identity
        self._disk.write_atomic(self._dir / "FORMAT", [DirInfo(2, ident, seq).encode()])
        wal.drop_before(seq)
        for s in wal.segments:
            s.version = 2
        log.warning("upgraded data dir %s from format 1 to 2 (segment %d on)", self._dir, seq)

    # ---- reading ------------------------------------------------------------------------

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    @property
    def snapshot(self) -> SnapshotMeta | None:
        return self._snapshot

    @property
    def first_index(self) -> int:
        """Index of the first entry held (snapshot index + 1)."""
        return self._log.offset + 1

    @property
    def last_index(self) -> int:
        """Index of the last entry held, or the snapshot index if none is."""
        return self._log.last

    @property
    def identity(self) -> Identity:
        return self._wal.identity

    @property
    def dir(self) -> Path:
        return self._dir

    @property
    def fs(self) -> FileSystem:
        return self._fs

    def load_snapshot_data(self) -> bytes | None:
        """The newest snapshot's state machine bytes, read and checked; None if none."""
        if self._snapshot is None:
            return None
        _, data = snapshot.read_snapshot(
            snapshot.snapshot_path(self._dir, self._snapshot.index), self._dir, self._fs
        )
        return data

    def snapshot_data(self) -> bytes | Path | None:
        """The newest snapshot's state machine bytes for a restore (None if none): on
        the OS's file system a new temp file in the data dir holding them, copied by the
        kernel, which is the caller's to remove (a state of gigabytes never passes
        through memory); on another (the simulator's) the bytes."""
        if self._snapshot is None:
            return None
        if self._fs is not OS_FS:
            return self.load_snapshot_data()
        to = self._dir / "snap-restore.tmp"
        try:
            snapshot.copy_snapshot_data(
                snapshot.snapshot_path(self._dir, self._snapshot.index), to)
        except OSError as exc:
            to.unlink(missing_ok=True)
            raise self._disk_failed("reading the snapshot", exc) from exc
        return to

    def snapshot_source(self, meta: SnapshotMeta) -> snapshot.SnapshotSource:
        """The data of the newest snapshot, which must be `meta`, to read in ranges
        (a leader streams it to a follower). Raises ValueError for another snapshot."""
        if self._snapshot != meta:
            raise ValueError(f"snapshot {meta} asked for, the newest is {self._snapshot}")
        return snapshot.snapshot_source(snapshot.snapshot_path(self._dir, meta.index), meta,
                                        self._dir, self._fs)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi; requires first_index <= lo <= hi <= last_index+1."""
        off = self._log.offset
        if not off < lo <= hi <= self._log.last + 1:
            raise ValueError(f"entries [{lo}, {hi}) outside [{off + 1}, {self._log.last + 1})")
        return self._log.entries[lo - off - 1 : hi - off - 1]

    def entries_after_snapshot(self) -> list[Entry]:
        return list(self._log.entries)

    def discard_with(self, discarder: Callable[[list[Path], Path], None]) -> None:
        """Hand the deletion of files nothing needs any more to `discarder(paths, dir)`,
        which deletes them in order and syncs the dir: a thread, so the loop does not
        wait for the file system to free them."""
        self._disk.discarder = discarder

    def stats(self) -> dict[str, int]:
        d = self._disk
        return {
            "fsyncs": d.fsyncs,
            "bytes_written": d.bytes_written,
            "records": d.records,
            "segments": len(self._wal.segments),
            "entries": len(self._log.entries),
        }

    # ---- writing ------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry], hard_state: HardState | None = None) -> None:
        """Write `entries` (an entry at index i replaces every stored entry >= i) and then
        `hard_state`; durable after the next `sync`. ValueError (nothing written) if the
        entries are not contiguous, rewrite the snapshot, or leave a gap.

        Records go in an order whose every prefix is a valid state, since a power cut
        keeps a prefix: a new term and vote before the entries of that term, the commit
        index after the entries it covers."""
        self._check_usable()
        records: list[Record] = []
        cur = written = self._hard_state
        new_hs = hard_state if hard_state is not None and hard_state != cur else None
        max_index = 0
        if entries:
            first = entries[0].index
            self._log.check_append(first, entries)
            term = (new_hs or cur).term
            if entries[-1].term > term:
                raise ValueError(f"entry {entries[-1].index} has term {entries[-1].term}, "
                                 f"above the hard state's {term}: a term is durable before "
                                 "any entry of it (thesis §3.8)")
            if new_hs is not None and (new_hs.term, new_hs.vote) != (cur.term, cur.vote):
                written = HardState(new_hs.term, new_hs.vote, cur.commit)
                records.append(record.hard_state_record(written))
            if first <= self._log.last:
                records.append(record.truncate_record(first))
            records.append(record.entries_record(entries))
            max_index = entries[-1].index
        if new_hs is not None and new_hs != written:
            records.append(record.hard_state_record(new_hs))
        if not records:
            return
        self._write(records, max_index)
        # Memory follows the file only once the bytes are in it.
        if entries:
            if first <= self._log.last:
                self._log.truncate(first)
            self._log.append(list(entries))
        if new_hs is not None:
            self._hard_state = new_hs
            try:
                self._vote.write(new_hs.term, new_hs.vote)
            except OSError as exc:
                raise self._disk_failed("VOTE file write", exc) from exc

    def sync(self) -> None:
        """Make everything appended so far durable: one fdatasync (two when the term or
        vote changed), none if nothing new."""
        self._check_usable()
        try:
            self._wal.sync()
            self._vote.sync()
        except OSError as exc:
            raise self._disk_failed("sync", exc) from exc

    def save_snapshot(self, meta: SnapshotMeta, data: bytes | Path,
                      hard_state: HardState | None = None) -> None:
        """Durably store a snapshot (with `hard_state`, if given; with the snapshot's term
        and no vote if that is above the stored term and none is given), then drop the
        log it covers: WAL segments wholly covered are deleted and only the newest two
        snapshot files are kept.

        If the stored entry at meta.index has term meta.term the entries after it are
        kept (local compaction); otherwise they cannot follow the snapshot and are
        dropped (a snapshot installed from the leader).

        Pending appends are synced before the snapshot file is written, so that a power
        cut keeps a prefix of what was written: never the snapshot without what came
        before it (a new term, or the entry the snapshot's `keep` was decided on).
        """
        self._check_usable()
        floor = self._log.floor
        if meta.index <= floor:
            raise ValueError(f"snapshot at {meta.index} is not newer than the one at {floor}")
        cur = self._hard_state
        # The snapshot's term must never be durable before a term at least as high. A
        # caller that gives no hard state gets the snapshot's term with no vote, which a
        # node may always take: it has seen that term, and has cast no durable vote in
        # it, its durable term being lower. (The replica passes the Ready's hard state,
        # which also carries a vote cast in the same Ready.)
        if hard_state is None and meta.term > cur.term:
            hard_state = HardState(meta.term, NONE, cur.commit)
        if hard_state is not None and (hard_state.term, hard_state.vote) != (cur.term,
                                                                             cur.vote):
            self.append([], HardState(hard_state.term, hard_state.vote, cur.commit))
        self.sync()
        keep = self._log.term(meta.index) == meta.term
        try:
            tmp = snapshot.write_snapshot_temp(self._dir, meta, data, self._disk)
        except OSError as exc:
            raise self._disk_failed("writing snapshot", exc) from exc
        if hard_state is not None:
            self._hard_state = hard_state
        self._publish_snapshot(meta, tmp, keep)

    def write_snapshot_file(self, meta: SnapshotMeta, data: bytes | Path) -> None:
        """Write the snapshot of the state up to meta.index under its temp name, synced,
        for `adopt_snapshot` to take. It reads nothing of this object's state and changes
        none (its own Disk counts what it writes), so another process or thread may run
        it: a forked child with a copy-on-write image of the state machine, while the
        loop goes on (raftkv/snapshot_writer.py). `data` is the state's bytes, or a file
        of them handed over: streamed from, then removed whether or not the write
        succeeded. Raises OSError; the caller's error to report."""
        try:
            snapshot.write_snapshot_temp(self._dir, meta, data, Disk(self._disk.fsync, self._fs))
        finally:
            if isinstance(data, Path):
                data.unlink(missing_ok=True)

    def adopt_snapshot(self, meta: SnapshotMeta, keep_files: Collection[int] = ()) -> bool:
        """The file `write_snapshot_file` wrote becomes the snapshot, and the log it
        covers goes. False, and the file removed, if a snapshot from the leader at or
        past meta.index was installed meanwhile. The older snapshot files at the
        indexes `keep_files` stay (a leader streams them to followers).

        A local snapshot covers applied entries only, which are durable here already
        with their term (the core hands out entries for applying up to its stable
        index), so the file needs no sync of the log before it.
        """
        self._check_usable()
        if meta.index <= self._log.floor:
            self.discard_snapshot_file(meta)
            return False
        if self._log.term(meta.index) != meta.term:
            raise ValueError(f"snapshot {meta} is not of this log: its entry "
                             f"{meta.index} has term {self._log.term(meta.index)}")
        self._publish_snapshot(meta, temp_path(snapshot.snapshot_path(self._dir, meta.index)),
                               keep=True, keep_files=keep_files)
        return True

    def discard_snapshot_file(self, meta: SnapshotMeta) -> None:
        """Remove what `write_snapshot_file` left of meta's snapshot, if anything."""
        tmp = temp_path(snapshot.snapshot_path(self._dir, meta.index))
        try:
            if self._fs.exists(tmp):
                self._fs.unlink(tmp)
        except OSError as exc:
            raise self._disk_failed("removing an unused snapshot file", exc) from exc

    def _publish_snapshot(self, meta: SnapshotMeta, tmp: Path, keep: bool,
                          keep_files: Collection[int] = ()) -> None:
        """The synced snapshot file `tmp` takes its name; then the log it covers goes,
        and the older snapshot files but those at the indexes `keep_files`."""
        try:
            self._disk.publish(tmp, snapshot.snapshot_path(self._dir, meta.index))
        except OSError as exc:
            raise self._disk_failed("writing snapshot", exc) from exc
        self._snapshot = meta
        last_before = self._log.last
        self._log.compact(meta.index, keep)
        self._record_snapshot(meta, keep, last_before, keep_files)

    def _record_snapshot(self, meta: SnapshotMeta, keep: bool, last_before: int,
                         keep_files: Collection[int] = ()) -> None:
        """Marker + current hard state into the last segment, sync, then delete what the
        snapshot covers. Deleting only after this sync keeps the newest marker and hard
        state in a surviving segment. `last_before`: the log's last index before the
        snapshot was applied to it, where replay stands when it reaches the marker (a
        segment the marker rotates to must say the log goes on from there)."""
        first_seq = self._wal.first_needed_seq(meta.index)
        marker = SnapshotMarker(meta.index, meta.term, keep, first_seq)
        hs = self._hard_state
        if hs.commit > self._log.last:  # a commit index past a log a snapshot replaced
            hs = self._hard_state = HardState(hs.term, hs.vote, self._log.last)
        self._write([record.snapshot_marker_record(marker), record.hard_state_record(hs)],
                    meta.index, last_before)
        self.sync()
        try:
            self._wal.drop_before(first_seq)
            snapshot.prune_snapshots(self._dir, self._disk, keep_files)
        except OSError as exc:
            raise self._disk_failed("compaction", exc) from exc

    def _write(self, records: list[Record], max_index: int,
               last_index: int | None = None) -> None:
        """`last_index`: where replay stands before these records; the log's last index
        unless memory already moved on."""
        try:
            self._wal.write(records, max_index,
                            self._log.last if last_index is None else last_index)
        except OSError as exc:
            raise self._disk_failed("WAL write", exc) from exc

    def _disk_failed(self, what: str, exc: OSError) -> StorageError:
        """The storage is failed for good from now on (a failed fsync must never be
        retried and trusted); the error to raise, saying what the operator can do."""
        self._failed = exc
        return StorageError(f"{what} failed ({exc}); storage unusable for good. "
                            + DISK_FAILURE_HINT.format(data_dir=self._dir))

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise StorageError(f"storage failed earlier ({self._failed}); reopen it")
        if self._lock_fd is None:
            raise StorageError("storage is closed")

    def close(self) -> None:
        """Sync what was appended and release the data dir."""
        if self._lock_fd is None:
            return
        try:
            if self._failed is None:
                self.sync()
        finally:
            self._wal.close()
            self._vote.close()
            self._fs.unlock(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Storage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _is_empty(path: Path, fs: FileSystem) -> bool:
    """Whether `path` holds nothing but what an interrupted initialisation leaves."""
    return all(n in _HOUSEKEEPING or n.endswith(".tmp") for n in fs.listdir(path))


def _init_files(path: Path, disk: Disk, identity: Identity) -> None:
    """VOTE, then FORMAT: FORMAT existing means the dir is initialised."""
    VoteFile.create(path / VOTE_NAME, disk)
    disk.write_atomic(path / "FORMAT", [DirInfo(2, identity).encode()])


def _prepare_dir(path: Path, disk: Disk, identity: Identity, create: bool) -> None:
    """Make sure `path` is an initialised data dir. A new dir is made whole under a
    temp name, renamed, and its parent synced, so it exists durably or not at all."""
    fs = disk.fs
    if fs.exists(path / "FORMAT"):
        return
    if fs.exists(path) and not _is_empty(path, fs):
        names = sorted(n for n in fs.listdir(path)
                       if n not in _HOUSEKEEPING and not n.endswith(".tmp"))
        raise StorageError(f"{path} is not a raftkv data dir (no FORMAT file; holds "
                           f"{names[:5]})")
    if not create:
        raise StorageMissingError(path)
    if fs.exists(path):  # empty (a fresh mount point, say): initialise in place
        _init_files(path, disk, identity)
        disk.sync_dir(path.parent)
        return
    made = []  # parents that do not exist yet, nearest first
    parent = path.parent
    while not fs.exists(parent):
        made.append(parent)
        parent = parent.parent
    fs.makedirs(path.parent)
    tmp = path.with_name(f".{path.name}.creating")
    if not fs.exists(tmp):
        fs.mkdir(tmp)
    _init_files(tmp, disk, identity)
    fs.rename(tmp, path)
    for d in (path, *made):  # each new entry durable in its parent, deepest first
        disk.sync_dir(d.parent)


def _check_identity(path: Path, disk: Disk, identity: Identity) -> DirInfo:
    """The dir's FORMAT, checked against `identity`; an unrecorded part of the identity
    is recorded now."""
    fmt = path / "FORMAT"
    info = DirInfo.decode(fmt, disk.read_verified(fmt).decode(errors="replace"))
    mine = info.identity
    if identity.cluster_id and mine.cluster_id and identity.cluster_id != mine.cluster_id:
        raise StorageIdentityError(
            f"data dir {path} belongs to cluster {mine.cluster_id:x}, not "
            f"{identity.cluster_id:x}: refusing another cluster's data")
    if identity.node_id and mine.node_id and identity.node_id != mine.node_id:
        raise StorageIdentityError(
            f"data dir {path} belongs to node {mine.node_id}, not node {identity.node_id}: "
            "refusing another node's data (were two dirs swapped?)")
    merged = Identity(mine.cluster_id or identity.cluster_id, mine.node_id or identity.node_id)
    if info.version == 2 and merged != mine:
        info = DirInfo(2, merged, info.upgraded_at)
        disk.write_atomic(fmt, [info.encode()])
    return DirInfo(info.version, merged, info.upgraded_at)


def _mark_versions(wal: WAL, info: DirInfo, disk: Disk) -> DirInfo:
    """Which segments are format 1: all of a format-1 dir's. An upgrade that got as far
    as renaming its segment is finished here (FORMAT, then the old segments go); in a
    format-2 dir the leftovers of an upgrade go. Returns the dir's FORMAT now."""
    if info.version == 1:
        for seg in wal.segments:
            seg.version = 1
        last = wal.segments[-1] if wal.segments else None
        if last is None or wal.fs.read(last.path)[: len(MAGIC)] != MAGIC:
            return info
        last.version = 2
        info = DirInfo(2, info.identity, last.seq)
        disk.write_atomic(wal.dir / "FORMAT", [info.encode()])
    if info.upgraded_at:
        wal.drop_before(info.upgraded_at)
    return info
