"""The only place storage makes data durable, so the fsync policy and its count live here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


@dataclass(slots=True)
class Disk:
    """Syncs files and directories and counts what storage wrote.

    `fsync=False` turns every sync into a no-op. It exists for benchmarks only: with it a
    machine crash (not a process crash) can lose or tear acknowledged data.
    """

    fsync: bool = True
    fsyncs: int = 0
    bytes_written: int = 0
    records: int = 0

    def sync_data(self, fd: int) -> None:
        """Data and the size of the file behind `fd` are durable on return."""
        if self.fsync:
            _fdatasync(fd)
            self.fsyncs += 1

    def sync_file(self, fd: int) -> None:
        if self.fsync:
            os.fsync(fd)
            self.fsyncs += 1

    def sync_dir(self, path: Path) -> None:
        """Entries created, renamed or removed in `path` are durable on return."""
        if not self.fsync:
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.fsyncs += 1

    def write_atomic(self, path: Path, chunks: list[bytes]) -> None:
        """`path` holds exactly `chunks` or its old content (or is absent), never a mix:
        temp file -> fsync -> rename -> fsync(dir). Temp files end in `.tmp`."""
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                self.bytes_written += len(chunk)
            self.sync_file(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self.sync_dir(path.parent)
