"""The only place storage makes data durable, so the fsync policy and its count live here."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from raftkv.storage.errors import StorageError
from raftkv.storage.fs import OS_FS, FileSystem


@dataclass(slots=True)
class Disk:
    """Syncs files and directories through `fs` and counts what storage wrote.

    `fsync=False` turns every sync into a no-op. It exists for benchmarks only: with it a
    machine crash (not a process crash) can lose or tear acknowledged data.
    """

    fsync: bool = True
    fs: FileSystem = field(default=OS_FS)
    # Who deletes files nothing needs any more (`discard`); None: done at once. The node
    # hands them to a thread: unlinking a 64 MB segment or an old snapshot took the loop
    # 10-30 ms.
    discarder: Callable[[list[Path], Path], None] | None = None
    fsyncs: int = 0
    bytes_written: int = 0
    records: int = 0

    def sync_data(self, fd: int) -> None:
        """Data and the size of the file behind `fd` are durable on return."""
        if self.fsync:
            self.fs.fdatasync(fd)
            self.fsyncs += 1

    def sync_file(self, fd: int) -> None:
        if self.fsync:
            self.fs.fsync(fd)
            self.fsyncs += 1

    def sync_dir(self, path: Path) -> None:
        """Entries created, renamed or removed in `path` are durable on return."""
        if self.fsync:
            self.fs.fsync_dir(path)
            self.fsyncs += 1

    def sync_path(self, path: Path) -> None:
        """Whatever of `path` is still only in the page cache is durable on return."""
        if not self.fsync:
            return
        fd = self.fs.open(path)
        try:
            self.fs.fsync(fd)
        finally:
            self.fs.close(fd)
        self.fsyncs += 1

    def read_verified(self, path: Path) -> bytes:
        """The file's bytes as the disk holds them (`as_on_disk`)."""
        self.as_on_disk(path)
        return self.fs.read(path)

    def as_on_disk(self, path: Path) -> None:
        """From now on reads of `path` see what the disk holds: whatever only the page
        cache held is synced first (an error there refuses the open), and the cache is
        dropped, so nothing read counts as durable without being so. After kill -9 the
        cache holds writes never synced; after a failed fsync, pages the disk never got."""
        try:
            self.sync_path(path)
            self.fs.drop_cache(path)
        except OSError as exc:
            raise StorageError(f"{path}: cannot make it durable before reading it ({exc}); "
                               "the disk may have lost writes that were never synced. "
                               "Nothing was changed: restart once the disk is repaired"
                               ) from exc

    def discard(self, paths: list[Path], directory: Path) -> None:
        """Delete `paths` in `directory`, in order, and sync the directory: files nothing
        refers to any more (compacted segments, old snapshots). Handed to `discarder` if
        there is one; a crash before it ran leaves what a crash midway here leaves, which
        opening tolerates and removes later."""
        if not paths:
            return
        if self.discarder is not None:
            self.discarder(paths, directory)
            return
        for path in paths:
            self.fs.unlink(path)
        self.sync_dir(directory)

    def write_all(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = self.fs.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
        self.bytes_written += len(data)

    def write_atomic(self, path: Path, chunks: list[bytes]) -> None:
        """`path` holds exactly `chunks` or its old content (or is absent), never a mix:
        temp file -> fsync -> rename -> fsync(dir). Temp files end in `.tmp`."""
        self.publish(self.write_temp(path, chunks), path)

    def write_temp(self, path: Path, chunks: Iterable[bytes], sync_every: int = 0,
                   header: Callable[[], bytes] | None = None, header_size: int = 0) -> Path:
        """Write `chunks` to `path`'s temp file (its name + `.tmp`), synced; returns it.
        Nothing refers to a temp file: a crash before `publish` leaves a leftover that
        the next open removes. With `sync_every`, data is synced each time that many
        bytes were written, so that a large file never leaves the disk so much to flush
        at once that the WAL's fsyncs queue behind it (Redis's incremental fsync).
        `header`: the chunks start at `header_size`, and once they are all written
        `header()`, exactly `header_size` bytes, fills the file's start (a header that
        sums up what follows, made in the same pass)."""
        tmp = temp_path(path)
        fd = self.fs.open(tmp, create=True, truncate=True)
        try:
            off = header_size
            for chunk in chunks:
                view = memoryview(chunk)
                step = sync_every or len(view) or 1
                for start in range(0, len(view), step):
                    piece = view[start:start + step]
                    self.write_all(fd, piece, off)
                    off += len(piece)
                    if sync_every and len(piece) == step:
                        self.sync_data(fd)
            if header is not None:
                head = header()
                if len(head) != header_size:
                    raise ValueError(f"header of {len(head)} bytes, not {header_size}")
                self.write_all(fd, head, 0)
            self.sync_file(fd)
        finally:
            self.fs.close(fd)
        return tmp

    def publish(self, tmp: Path, path: Path) -> None:
        """The synced temp file `tmp` becomes `path`, durably."""
        self.fs.rename(tmp, path)
        self.sync_dir(path.parent)


def temp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")
