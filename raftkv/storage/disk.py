"""The only place storage makes data durable, so the fsync policy and its count live here."""

from __future__ import annotations

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
        """The file's bytes as the disk holds them: whatever only the page cache held is
        synced first (an error there refuses the open), and the cache is dropped, so
        nothing read here counts as durable without being so. After kill -9 the cache
        holds writes never synced; after a failed fsync, pages the disk never got."""
        try:
            self.sync_path(path)
            self.fs.drop_cache(path)
        except OSError as exc:
            raise StorageError(f"{path}: cannot make it durable before reading it ({exc}); "
                               "the disk may have lost writes that were never synced. "
                               "Nothing was changed: restart once the disk is repaired"
                               ) from exc
        return self.fs.read(path)

    def write_all(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = self.fs.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
        self.bytes_written += len(data)

    def write_atomic(self, path: Path, chunks: list[bytes]) -> None:
        """`path` holds exactly `chunks` or its old content (or is absent), never a mix:
        temp file -> fsync -> rename -> fsync(dir). Temp files end in `.tmp`."""
        tmp = path.with_name(path.name + ".tmp")
        fd = self.fs.open(tmp, create=True, truncate=True)
        try:
            off = 0
            for chunk in chunks:
                self.write_all(fd, chunk, off)
                off += len(chunk)
            self.sync_file(fd)
        finally:
            self.fs.close(fd)
        self.fs.rename(tmp, path)
        self.sync_dir(path.parent)
