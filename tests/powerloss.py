"""A disk that loses power: an in-memory `FileSystem` (raftkv/storage/fs.py) that records
every write and sync and, on `crash`, keeps only what a power cut may leave behind.

After Jepsen's LazyFS and the ALICE study (Pillai et al., "All File Systems Are Not
Created Equal", OSDI '14). The rules, which are the contract storage is tested against:

Files (content)
  - A file has durable content (on the disk for sure) and a page cache (what reads see).
    `fdatasync`/`fsync` of a handle makes the file's cache content and size durable.
  - Between syncs, the model remembers every version each 512-byte sector of the file
    had, starting with its durable one (zeros where the file was extended), and every
    size the file had, starting with its durable one.
  - Sectors are atomic: after a crash, each unsynced sector holds exactly one of its
    versions (any one, whatever the order they were written in: some kept, some zero,
    some torn), never a mix of bytes from two of them. The WAL's torn-tail rule
    (wal.py) assumes this. The file's size is any one of its sizes since the last sync;
    sectors past it are cut off. Synced sectors, and the synced size, always survive.

Directories (names)
  - `open(create=True)`, `mkdir`, `rename` and `unlink` change the names at once, but
    durably only once the directory is synced (`fsync_dir`). Until then they are an
    ordered list per directory, of which a crash keeps a prefix (ext4 journals them in
    order). A rename within a directory is one entry, so it is atomic. A rename across
    directories is an entry in each, so a crash may keep either, both or neither.
  - A file or directory no surviving name leads to is gone after a crash, whatever was
    synced in it. Syncing a file never makes its name durable (POSIX promises no more).

Failed syncs (Linux page cache semantics, see "fsyncgate", and errseq_t)
  - `fail_next("fdatasync" | "fsync", errno)` makes the next such call fail: it raises
    OSError, the file's writes since its last sync never reach the disk (its durable
    content and size stay; a real disk may have taken some, the model takes none), but
    they stay readable from the cache (Linux marks the pages clean). A later sync of the
    file succeeds without writing them; writing the same sector again makes the whole
    sector dirty, lost bytes included, as a cache page is. `drop_cache(path)` makes
    reads of those sectors, and of the size if nothing is pending, come from the disk
    again.
  - `fail_next("pwrite", errno.ENOSPC)` (or any errno, or any other counted operation)
    raises before the operation changes anything.

Power cuts
  - `crash(rng)` returns a new PowerLossFS holding one state a power cut may leave
    (chosen by `rng`, so the same seed gives the same state); this one is unchanged and
    may go on. Open handles and locks do not survive.
  - `kill()`: the process died, not the machine: handles and locks are gone, the page
    cache (unsynced writes too) stays, as after kill -9.
  - `cut_after(n)` arms a cut: the n+1-th counted operation from now, and every operation
    after it, raises PowerCut (not an OSError: nothing may handle it) without acting.
    Then `crash` gives the state the cut left.

Counted operations (`ops`, `on_op`): open (a `lock` counts as one), pwrite, ftruncate,
fdatasync, fsync, fsync_dir, mkdir, rename, unlink. Reads, listdir, exists, close,
unlock and drop_cache change nothing a crash keeps and are not counted.

Paths are `pathlib.Path`, relative ones taken from the root; handles are ints and follow
their file through a rename (for `path_suffix` and `on_op`). `lock` lets one holder at a
time have a path.
"""

from __future__ import annotations

import errno as errnos
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SECTOR = 512


class PowerCut(BaseException):
    """The power went off: raised by every operation after an armed cut."""


@dataclass(eq=False, slots=True)
class _File:
    """`data` is the page cache, `disk` the durable content. `versions[s]`: the contents
    sector s had since the last sync, durable one first; `sizes`: likewise the sizes.
    `lost`: sectors whose cached content a failed sync never wrote."""

    data: bytearray = field(default_factory=bytearray)
    disk: bytearray = field(default_factory=bytearray)
    versions: dict[int, list[bytes]] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=lambda: [0])
    lost: set[int] = field(default_factory=set)

    def sector(self, buf: bytearray, s: int) -> bytes:
        piece = bytes(buf[s * SECTOR : (s + 1) * SECTOR])
        return piece if len(piece) == SECTOR else piece + bytes(SECTOR - len(piece))

    def touch(self, first: int, stop: int) -> None:
        """Record the current cache content of sectors first..stop-1 as new versions."""
        for s in range(first, stop):
            vs = self.versions.get(s)
            if vs is None:
                vs = self.versions[s] = [self.sector(self.disk, s)]
            cur = self.sector(self.data, s)
            if vs[-1] != cur:
                vs.append(cur)
            self.lost.discard(s)

    def resize(self, size: int) -> None:
        old = len(self.data)
        if size == old:
            return
        if size < old:
            del self.data[size:]
        else:
            self.data.extend(bytes(size - old))
        lo, hi = min(old, size), max(old, size)
        self.touch(lo // SECTOR, (hi + SECTOR - 1) // SECTOR)
        self.sizes.append(size)

    def pending(self) -> bool:
        return bool(self.versions) or len(self.sizes) > 1

    def synced(self) -> None:
        """The cache's dirty sectors and its size are now on the disk."""
        size = len(self.data)
        disk = self.disk[:size]
        disk.extend(bytes(size - len(disk)))
        for s in self.versions:
            disk[s * SECTOR : (s + 1) * SECTOR] = self.data[s * SECTOR : (s + 1) * SECTOR]
        del disk[size:]
        self.disk = disk
        self.versions = {}
        self.sizes = [size]
        self.lost = {s for s in self.lost if s * SECTOR < size}

    def sync_failed(self) -> None:
        """The dirty sectors never reach the disk; the cache keeps them, marked clean."""
        self.lost |= self.versions.keys()
        self.versions = {}
        self.sizes = [len(self.disk)]

    def after_crash(self, rng: random.Random) -> _File:
        size = rng.choice(self.sizes)
        out = self.disk[:size]
        out.extend(bytes(size - len(out)))
        for s in sorted(self.versions):
            start = s * SECTOR
            if start >= size:
                continue
            version = rng.choice(self.versions[s])
            out[start : min(start + SECTOR, size)] = version[: size - start]
        return _File(bytearray(out), bytearray(out), {}, [size], set())


@dataclass(eq=False, slots=True)
class _Dir:
    """`entries`: the names as they are now; `durable`: as the disk has them; `pending`:
    the changes since the last fsync_dir, oldest first, each ("set", name, node) or
    ("del", name) or ("move", src, dst, node)."""

    entries: dict[str, _File | _Dir] = field(default_factory=dict)
    durable: dict[str, _File | _Dir] = field(default_factory=dict)
    pending: list[tuple] = field(default_factory=list)

    def change(self, op: tuple) -> None:
        _apply(self.entries, op)
        self.pending.append(op)

    def synced(self) -> None:
        self.durable = dict(self.entries)
        self.pending = []


def _apply(names: dict[str, _File | _Dir], op: tuple) -> None:
    if op[0] == "set":
        names[op[1]] = op[2]
    elif op[0] == "del":
        names.pop(op[1], None)
    else:
        names.pop(op[1], None)
        names[op[2]] = op[3]


def _parts(path: Path | str) -> tuple[str, ...]:
    p = Path(path)
    return tuple(x for x in (p.parts[1:] if p.is_absolute() else p.parts) if x not in ("", "."))


class PowerLossFS:
    """See the module docstring for the rules. `ops` counts the counted operations done,
    `fired` the injected faults raised; `on_op(name, path)`, if set, is called before
    each counted operation (and may call `crash`)."""

    def __init__(self) -> None:
        self._root = _Dir()
        self._fds: dict[int, tuple[_File, Path]] = {}
        self._next_fd = 3
        self._locks: dict[int, Path] = {}
        self._faults: list[tuple[str, int, str | None]] = []
        self._cut_at: int | None = None
        self._dead = False
        self.ops = 0
        self.fired = 0
        self.on_op: Callable[[str, Path], None] | None = None

    # ---- power and faults ------------------------------------------------------------------

    def crash(self, rng: random.Random) -> PowerLossFS:
        """A new PowerLossFS holding a state a power cut now may leave: see the rules."""
        out = PowerLossFS()
        memo: dict[int, _File | _Dir] = {}

        def copy(node: _File | _Dir) -> _File | _Dir:
            if id(node) in memo:
                return memo[id(node)]
            if isinstance(node, _File):
                memo[id(node)] = new = node.after_crash(rng)
                return new
            memo[id(node)] = new_dir = _Dir()
            names = dict(node.durable)
            for op in node.pending[: rng.randint(0, len(node.pending))]:
                _apply(names, op)
            for name, child in names.items():
                new_dir.entries[name] = copy(child)
            new_dir.durable = dict(new_dir.entries)
            return new_dir

        out._root = copy(self._root)
        return out

    def kill(self) -> None:
        """The process using this disk died (kill -9), the machine did not: its handles
        and locks are gone; the page cache, unsynced writes included, stays."""
        self._fds.clear()
        self._locks.clear()

    def cut_after(self, n: int | None) -> None:
        """Cut the power before the n+1-th counted operation from now (None: disarm)."""
        self._cut_at = None if n is None else self.ops + n

    @property
    def cut(self) -> bool:
        """Whether an armed cut has happened."""
        return self._dead

    def fail_next(self, op: str, err: int = errnos.EIO, path_suffix: str | None = None) -> None:
        """Make the next `op` (a counted operation's name) on a path ending in
        `path_suffix` (any path if None) raise OSError(err): see the rules."""
        self._faults.append((op, err, path_suffix))

    def clear_faults(self) -> None:
        """Forget the faults `fail_next` armed that have not fired."""
        self._faults.clear()

    def sync_all(self) -> None:
        """Make everything durable, as a clean shutdown and `sync` would."""

        def walk(d: _Dir) -> None:
            d.synced()
            for child in d.entries.values():
                if isinstance(child, _Dir):
                    walk(child)
                elif child.pending():
                    child.synced()

        walk(self._root)

    def _op(self, name: str, path: Path, file: _File | None = None) -> None:
        if self._dead:
            raise PowerCut(name)
        if self._cut_at is not None and self.ops >= self._cut_at:
            self._dead = True
            raise PowerCut(name)
        if self.on_op is not None:
            self.on_op(name, path)
        self.ops += 1
        for k, (op, err, suffix) in enumerate(self._faults):
            if op == name and (suffix is None or str(path).endswith(suffix)):
                del self._faults[k]
                self.fired += 1
                if file is not None and name in ("fdatasync", "fsync"):
                    file.sync_failed()
                raise OSError(err, os.strerror(err), str(path))

    def _alive(self) -> None:
        if self._dead:
            raise PowerCut("after the cut")

    # ---- names ----------------------------------------------------------------------------

    def _lookup(self, path: Path | str) -> _File | _Dir | None:
        node: _File | _Dir | None = self._root
        for part in _parts(path):
            if not isinstance(node, _Dir):
                return None
            node = node.entries.get(part)
        return node

    def _dir(self, path: Path | str) -> _Dir:
        node = self._lookup(path)
        if node is None:
            raise FileNotFoundError(errnos.ENOENT, "No such file or directory", str(path))
        if not isinstance(node, _Dir):
            raise NotADirectoryError(errnos.ENOTDIR, "Not a directory", str(path))
        return node

    def _file(self, path: Path | str) -> _File:
        node = self._lookup(path)
        if node is None:
            raise FileNotFoundError(errnos.ENOENT, "No such file or directory", str(path))
        if not isinstance(node, _File):
            raise IsADirectoryError(errnos.EISDIR, "Is a directory", str(path))
        return node

    def _parent(self, path: Path) -> tuple[_Dir, str]:
        parts = _parts(path)
        if not parts:
            raise FileExistsError(errnos.EEXIST, "File exists", str(path))
        return self._dir(Path("/", *parts[:-1])), parts[-1]

    # ---- the FileSystem protocol ------------------------------------------------------------

    def listdir(self, path: Path) -> list[str]:
        self._alive()
        return list(self._dir(path).entries)

    def exists(self, path: Path) -> bool:
        self._alive()
        return self._lookup(path) is not None

    def mkdir(self, path: Path) -> None:
        self._op("mkdir", path)
        parent, name = self._parent(path)
        if name in parent.entries:
            raise FileExistsError(errnos.EEXIST, "File exists", str(path))
        parent.change(("set", name, _Dir()))

    def makedirs(self, path: Path) -> None:
        parts = _parts(path)
        for k in range(1, len(parts) + 1):
            sub = Path("/", *parts[:k])
            node = self._lookup(sub)
            if node is None:
                self.mkdir(sub)
            elif not isinstance(node, _Dir):
                raise FileExistsError(errnos.EEXIST, "File exists", str(sub))

    def read(self, path: Path) -> bytes:
        self._alive()
        return bytes(self._file(path).data)

    def read_range(self, path: Path, offset: int, size: int) -> bytes:
        self._alive()
        return bytes(self._file(path).data[offset:offset + size])

    def open(self, path: Path, *, create: bool = False, exclusive: bool = False,
             truncate: bool = False) -> int:
        self._op("open", path)
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            if not create:
                raise FileNotFoundError(errnos.ENOENT, "No such file or directory", str(path))
            node = _File()
            parent.change(("set", name, node))
        elif isinstance(node, _Dir):
            raise IsADirectoryError(errnos.EISDIR, "Is a directory", str(path))
        elif create and exclusive:
            raise FileExistsError(errnos.EEXIST, "File exists", str(path))
        if truncate:
            node.resize(0)
        fd = self._next_fd
        self._next_fd += 1
        self._fds[fd] = (node, Path(path))
        return fd

    def _handle(self, fd: int) -> tuple[_File, Path]:
        try:
            return self._fds[fd]
        except KeyError:
            raise OSError(errnos.EBADF, "Bad file descriptor") from None

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        f, path = self._handle(fd)
        self._op("pwrite", path)
        data = bytes(data)
        end = offset + len(data)
        if not data:
            return 0
        old = len(f.data)
        if end > old:
            f.data.extend(bytes(end - old))
        f.data[offset:end] = data
        lo = min(offset, old)
        f.touch(lo // SECTOR, (end + SECTOR - 1) // SECTOR)
        if end > old:
            f.sizes.append(end)
        return len(data)

    def ftruncate(self, fd: int, size: int) -> None:
        f, path = self._handle(fd)
        self._op("ftruncate", path)
        f.resize(size)

    def fdatasync(self, fd: int) -> None:
        f, path = self._handle(fd)
        self._op("fdatasync", path, f)
        f.synced()

    def fsync(self, fd: int) -> None:
        f, path = self._handle(fd)
        self._op("fsync", path, f)
        f.synced()

    def close(self, fd: int) -> None:
        self._alive()
        self._handle(fd)
        del self._fds[fd]

    def fsync_dir(self, path: Path) -> None:
        self._op("fsync_dir", path)
        self._dir(path).synced()

    def rename(self, src: Path, dst: Path) -> None:
        self._op("rename", src)
        sdir, sname = self._parent(src)
        ddir, dname = self._parent(dst)
        node = sdir.entries.get(sname)
        if node is None:
            raise FileNotFoundError(errnos.ENOENT, "No such file or directory", str(src))
        old = ddir.entries.get(dname)
        if old is node:
            return
        if isinstance(old, _Dir):
            if not isinstance(node, _Dir):
                raise IsADirectoryError(errnos.EISDIR, "Is a directory", str(dst))
            if old.entries:
                raise OSError(errnos.ENOTEMPTY, "Directory not empty", str(dst))
        elif old is not None and isinstance(node, _Dir):
            raise NotADirectoryError(errnos.ENOTDIR, "Not a directory", str(dst))
        if sdir is ddir:
            sdir.change(("move", sname, dname, node))
        else:
            ddir.change(("set", dname, node))
            sdir.change(("del", sname))
        for fd, (f, _) in self._fds.items():
            if f is node:
                self._fds[fd] = (f, Path(dst))

    def unlink(self, path: Path) -> None:
        self._op("unlink", path)
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            raise FileNotFoundError(errnos.ENOENT, "No such file or directory", str(path))
        if isinstance(node, _Dir):
            raise IsADirectoryError(errnos.EISDIR, "Is a directory", str(path))
        parent.change(("del", name))

    def drop_cache(self, path: Path) -> None:
        self._alive()
        f = self._file(path)
        if not f.pending():
            f.data = bytearray(f.disk)
        else:
            for s in f.lost:
                start = s * SECTOR
                n = min(SECTOR, len(f.data) - start)
                if n > 0:
                    f.data[start : start + n] = f.sector(f.disk, s)[:n]
        f.lost.clear()

    def lock(self, path: Path) -> int:
        fd = self.open(path, create=True)
        if any(_parts(p) == _parts(path) for p in self._locks.values()):
            del self._fds[fd]
            raise BlockingIOError(errnos.EWOULDBLOCK, "Resource temporarily unavailable",
                                  str(path))
        self._locks[fd] = Path(path)
        return fd

    def unlock(self, handle: int) -> None:
        self._alive()
        self._locks.pop(handle, None)
        self._fds.pop(handle, None)
