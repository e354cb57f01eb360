"""The file layer under storage: every byte storage reads or writes, and every sync, goes
through one `FileSystem`.

`OsFileSystem` is the real one. Tests put a model of a disk in its place (for example one
that forgets unsynced writes at a simulated power cut) without storage knowing.

Handles are small integers, as file descriptors are. A handle is open for writing only;
reads go by path: a whole file (at open), or a range (a snapshot streamed to a follower).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Protocol

_fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


class FileSystem(Protocol):
    def listdir(self, path: Path) -> list[str]: ...

    def exists(self, path: Path) -> bool: ...

    def mkdir(self, path: Path) -> None:
        """Create one directory (FileExistsError if present); durable only once its
        parent is synced."""

    def makedirs(self, path: Path) -> None:
        """Create `path` and its missing parents; nothing if it exists."""

    def read(self, path: Path) -> bytes: ...

    def read_range(self, path: Path, offset: int, size: int) -> bytes:
        """Up to `size` bytes of `path` from `offset` (fewer only at its end)."""

    def open(self, path: Path, *, create: bool = False, exclusive: bool = False,
             truncate: bool = False) -> int:
        """A write handle on `path`."""

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int: ...

    def ftruncate(self, fd: int, size: int) -> None: ...

    def fdatasync(self, fd: int) -> None:
        """The file's data and size are durable on return."""

    def fsync(self, fd: int) -> None: ...

    def close(self, fd: int) -> None: ...

    def fsync_dir(self, path: Path) -> None:
        """Entries created, renamed or removed in `path` are durable on return."""

    def rename(self, src: Path, dst: Path) -> None: ...

    def unlink(self, path: Path) -> None: ...

    def drop_cache(self, path: Path) -> None:
        """Forget cached pages of `path`, so the next read comes from the disk. After a
        failed fsync Linux keeps the unwritten pages in the cache, marked clean: without
        this a reopen would read data that never reached the disk."""

    def lock(self, path: Path) -> int:
        """Take an exclusive lock file; BlockingIOError if another holder has it."""

    def unlock(self, handle: int) -> None: ...


class OsFileSystem:
    """The operating system's files."""

    def listdir(self, path: Path) -> list[str]:
        return os.listdir(path)

    def exists(self, path: Path) -> bool:
        return os.path.exists(path)

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def makedirs(self, path: Path) -> None:
        os.makedirs(path, exist_ok=True)

    def read(self, path: Path) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def read_range(self, path: Path, offset: int, size: int) -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            parts = []
            while size > 0:
                part = os.pread(fd, size, offset)
                if not part:
                    break
                parts.append(part)
                offset += len(part)
                size -= len(part)
            return b"".join(parts)
        finally:
            os.close(fd)

    def open(self, path: Path, *, create: bool = False, exclusive: bool = False,
             truncate: bool = False) -> int:
        flags = os.O_WRONLY
        if create:
            flags |= os.O_CREAT
        if exclusive:
            flags |= os.O_EXCL
        if truncate:
            flags |= os.O_TRUNC
        return os.open(path, flags, 0o644)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def fdatasync(self, fd: int) -> None:
        _fdatasync(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def drop_cache(self, path: Path) -> None:
        if not hasattr(os, "posix_fadvise"):
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    def lock(self, path: Path) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise
        return fd

    def unlock(self, handle: int) -> None:
        os.close(handle)


OS_FS = OsFileSystem()
