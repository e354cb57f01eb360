"""The storage facade a node uses: recovery on open, group-committed appends, snapshots.

A data dir holds::

    FORMAT                      "raftkv-storage 1"
    LOCK                        flock'ed by the one process that has the dir open
    wal-<seq>.log               WAL segments: records, then zeros written ahead (see
                                wal.py: preallocation) and record.py
    snap-<index>.snap           the newest two snapshots, see snapshot.py

Not thread-safe: one node loop owns a Storage.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from raftkv.raft.types import Entry, HardState, SnapshotMeta
from raftkv.storage import record, snapshot
from raftkv.storage.disk import Disk
from raftkv.storage.errors import StorageCorruptError, StorageError, StorageVersionError
from raftkv.storage.memlog import LogError, MemLog
from raftkv.storage.record import RecordType, SnapshotMarker
from raftkv.storage.wal import WAL, segment_name

log = logging.getLogger("raftkv.storage")

FORMAT = "raftkv-storage 1"
DEFAULT_SEGMENT_BYTES = 64 << 20
_HOUSEKEEPING = {"LOCK"}  # may exist in a dir that was never initialised


class Storage:
    """Durable Raft state: hard state, log entries after the snapshot, the snapshot.

    Per node-loop turn: `append(ready.entries, ready.hard_state)` then `sync()`: one
    fdatasync for the whole batch (group commit). Nothing is durable before `sync`
    returns. After an OSError from the disk the instance refuses further use (a failed
    fsync must never be retried and trusted); reopen to recover.
    """

    def __init__(self, data_dir: Path, wal: WAL, disk: Disk, lock_fd: int) -> None:
        self._dir = data_dir
        self._wal = wal
        self._disk = disk
        self._lock_fd: int | None = lock_fd
        self._log = MemLog([], 0, 0)
        self._hard_state = HardState()
        self._snapshot: SnapshotMeta | None = None
        self._failed: BaseException | None = None

    # ---- opening and recovery ----------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = True,
    ) -> Storage:
        """Open (initialising if empty or absent) and recover the data dir.

        `fsync=False` is for benchmarks only: a machine crash may then lose acknowledged
        data. Raises StorageVersionError for an unknown format, StorageCorruptError for
        damage recovery must not guess about, StorageError if another process has it open.
        """
        if segment_bytes <= 0:
            raise ValueError("segment_bytes must be positive")
        path = Path(data_dir)
        path.mkdir(parents=True, exist_ok=True)
        _refuse_foreign_dir(path)  # before the lock, which would leave a LOCK file behind
        lock_fd = _lock(path)
        wal: WAL | None = None
        try:
            disk = Disk(fsync=fsync)
            _check_format(path, disk)
            snapshot.remove_temp_files(path)
            wal = WAL.open(path, disk, segment_bytes)
            st = cls(path, wal, disk, lock_fd)
            st._recover()
        except BaseException:
            if wal is not None:
                wal.close()
            os.close(lock_fd)
            raise
        return st

    def _recover(self) -> None:
        snaps = snapshot.list_snapshots(self._dir)
        if snaps:
            self._snapshot, _ = snapshot.read_snapshot(snaps[-1][1], self._dir)
            if not self._wal.segments:
                raise StorageCorruptError(self._dir, 0, "snapshot present but no WAL", self._dir)
        snap_index = self._snapshot.index if self._snapshot else 0
        mem, marker = self._replay(snap_index)

        first = self._wal.segments[0]
        need_first = marker.first_seq if marker else 1
        if first.seq > need_first:
            missing = self._dir / segment_name(need_first)
            raise StorageCorruptError(missing, 0, "WAL segment missing", self._dir)

        # Crashed after the snapshot file became durable, before its marker did? Then no
        # segment was deleted on its account, so the entry at its index (if any) is here.
        unmarked = self._snapshot is not None and (marker is None or marker.index < snap_index)
        keep = unmarked and mem.term(snap_index) == self._snapshot.term
        if unmarked:
            mem.compact(snap_index, keep)
        elif mem.offset is None:  # no entry record survives: none follows the snapshot
            mem.offset = snap_index
        if mem.offset != snap_index:
            problem = f"log resumes at {mem.offset + 1}, after snapshot {snap_index}"
            raise StorageCorruptError(first.path, 0, problem, self._dir)
        mem.floor = snap_index
        self._log = mem
        if unmarked:
            log.warning("completing interrupted save of snapshot at %d", snap_index)
            self._record_snapshot(self._snapshot, keep)

    def _replay(self, snap_index: int) -> tuple[MemLog, SnapshotMarker | None]:
        """Apply every WAL record; returns the log and the newest snapshot marker."""
        mem = MemLog([], None, None)
        marker: SnapshotMarker | None = None
        for seg, off, rtype, payload in self._wal.replay():
            try:
                if rtype is RecordType.ENTRIES:
                    entries = record.decode_entries(payload)
                    mem.append(entries)
                    idx = entries[-1].index
                elif rtype is RecordType.HARD_STATE:
                    self._hard_state = record.decode_hard_state(payload)
                    idx = 0
                elif rtype is RecordType.TRUNCATE:
                    idx = record.decode_truncate(payload)
                    mem.truncate(idx)
                else:
                    marker = record.decode_snapshot_marker(payload)
                    idx = marker.index
                    if idx > snap_index:
                        raise LogError(f"snapshot at {idx} recorded but its file is gone")
                    if idx == snap_index and marker.term != self._snapshot.term:
                        raise LogError(f"snapshot term {marker.term} != its file's")
                    mem.compact(idx, marker.keep_suffix)
            except (record.FrameError, LogError) as exc:
                raise self._wal.corrupt(seg.path, off, str(exc)) from exc
            seg.max_index = max(seg.max_index, idx)
        return mem, marker

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

    def load_snapshot_data(self) -> bytes | None:
        """The newest snapshot's state machine bytes, checked again; None if none."""
        if self._snapshot is None:
            return None
        _, data = snapshot.read_snapshot(
            snapshot.snapshot_path(self._dir, self._snapshot.index), self._dir
        )
        return data

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi; requires first_index <= lo <= hi <= last_index+1."""
        off = self._log.offset
        if not off < lo <= hi <= self._log.last + 1:
            raise ValueError(f"entries [{lo}, {hi}) outside [{off + 1}, {self._log.last + 1})")
        return self._log.entries[lo - off - 1 : hi - off - 1]

    def entries_after_snapshot(self) -> list[Entry]:
        return list(self._log.entries)

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
        entries are not contiguous, rewrite the snapshot, or leave a gap."""
        self._check_usable()
        parts: list[bytes] = []
        max_index = 0
        if entries:
            first = entries[0].index
            self._log.check_append(first, entries)
            if first <= self._log.last:
                parts.append(record.encode_truncate(first))
            parts.append(record.encode_entries(entries))
            max_index = entries[-1].index
        if hard_state is not None and hard_state != self._hard_state:
            parts.append(record.encode_hard_state(hard_state))
        if not parts:
            return
        self._write(parts, max_index)
        # Memory follows the file only once the bytes are in it.
        if entries:
            if first <= self._log.last:
                self._log.truncate(first)
            self._log.append(list(entries))
        if hard_state is not None:
            self._hard_state = hard_state

    def sync(self) -> None:
        """Make everything appended so far durable: one fdatasync, none if nothing new."""
        self._check_usable()
        try:
            self._wal.sync()
        except OSError as exc:
            self._failed = exc
            raise StorageError(f"sync failed; storage unusable until reopened: {exc}") from exc

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Durably store a snapshot, then drop the log it covers: WAL segments wholly
        covered are deleted and only the newest two snapshot files are kept.

        If the stored entry at meta.index has term meta.term the entries after it are
        kept (local compaction); otherwise they cannot follow the snapshot and are
        dropped (a snapshot installed from the leader). Also syncs pending appends.
        """
        self._check_usable()
        floor = self._log.floor
        if meta.index <= floor:
            raise ValueError(f"snapshot at {meta.index} is not newer than the one at {floor}")
        keep = self._log.term(meta.index) == meta.term
        try:
            snapshot.write_snapshot(self._dir, meta, data, self._disk)
        except OSError as exc:
            self._failed = exc
            raise StorageError(f"writing snapshot failed: {exc}") from exc
        self._snapshot = meta
        self._log.compact(meta.index, keep)
        self._record_snapshot(meta, keep)

    def _record_snapshot(self, meta: SnapshotMeta, keep: bool) -> None:
        """Marker + current hard state into the last segment, sync, then delete what the
        snapshot covers. Deleting only after this sync keeps the newest marker and hard
        state in a surviving segment."""
        first_seq = self._wal.first_needed_seq(meta.index)
        marker = SnapshotMarker(meta.index, meta.term, keep, first_seq)
        parts = [record.encode_snapshot_marker(marker), record.encode_hard_state(self._hard_state)]
        self._write(parts, meta.index)
        self.sync()
        try:
            self._wal.drop_before(first_seq)
            snapshot.prune_snapshots(self._dir, self._disk)
        except OSError as exc:
            self._failed = exc
            raise StorageError(f"compaction failed: {exc}") from exc

    def _write(self, parts: list[bytes], max_index: int) -> None:
        try:
            self._wal.write(b"".join(parts), len(parts), max_index)
        except OSError as exc:
            self._failed = exc
            raise StorageError(f"WAL write failed; storage unusable until reopened: {exc}") from exc

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
                self._wal.sync()
        finally:
            self._wal.close()
            os.close(self._lock_fd)
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


def _lock(path: Path) -> int:
    fd = os.open(path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(f"data dir {path} is in use by another process (or Storage)") from None
    return fd


def _check_format(path: Path, disk: Disk) -> None:
    fmt = path / "FORMAT"
    try:
        found = fmt.read_text().strip()
    except FileNotFoundError:
        _refuse_foreign_dir(path)
        disk.write_atomic(fmt, [(FORMAT + "\n").encode()])
        return
    if found != FORMAT:
        raise StorageVersionError(
            f"{fmt} says {found!r}; this build reads only {FORMAT!r}. Open it with the raftkv "
            "version that wrote it."
        )


def _refuse_foreign_dir(path: Path) -> None:
    """StorageError if `path` has no FORMAT file yet holds something other than what an
    interrupted initialisation leaves."""
    if (path / "FORMAT").exists():
        return
    others = sorted(
        p.name
        for p in path.iterdir()
        if p.name not in _HOUSEKEEPING and not p.name.endswith(".tmp")
    )
    if others:
        raise StorageError(f"{path} is not a raftkv data dir (no FORMAT file; holds {others[:5]})")
