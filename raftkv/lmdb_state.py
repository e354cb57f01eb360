"""The replicated state kept in LMDB (`--state lmdb`), for a state that grows past what
a dict in memory holds well.

`LmdbStore` is `raftkv.kv.KVStore` with its data, sessions, member addresses, applied
index and size in an LMDB environment (a copy-on-write B+tree in one memory-mapped file,
etcd's bbolt is its kind): the same `apply`, the same replies, on every replica.

- **Batches.** The entries of one Ready are applied in one write transaction, which
  `flush` commits; the applied index commits with them, so the database always holds
  the state after some whole prefix of the log.
- **Snapshots never stop the loop.** `capture` opens a read transaction, which sees the
  state at that instant however many writes follow (MVCC); a thread copies it,
  compacted, to a file while the loop applies on (py-lmdb copies with the GIL released),
  and storage streams that file into the snapshot file. The snapshot's bytes are that
  copy: an LMDB file, which a follower installs by moving it into place, not by loading
  it into memory.
- **Restart.** After a crash that keeps the page cache (kill -9) the database is opened
  as it is and only the log after its applied index is replayed (`resume`). It is
  written without fsync, so a power cut may leave it torn: a database whose `BOOT` file
  names another boot of the machine than this one is not trusted, and is rebuilt from
  the newest snapshot, which storage wrote synced, and the log after it.
- **Memory.** The data lives in the file's pages, which the kernel caches and may drop;
  the process's own memory holds the sessions and little else.

Layout of the environment (a directory, `<data dir>/state`): named databases `data`
(0x00 + key -> the key's record, revisions then value, as `raftkv.kv` keeps it: LMDB
refuses an empty key, and keys past 511 bytes, so a node with this state takes keys of
at most `MAX_KEY_SIZE` bytes), `sessions` (client id, 8 bytes big-endian -> the session,
`_encode_session`) and `meta` (`format`, `applied`, `size`: 8 bytes big-endian;
`members`: msgpack {node id: address}; `lease:` + lease id, 8 bytes big-endian ->
msgpack [ttl_ms, [key, ...]], one a lease, written when it changed). Format 2 had no
leases, and opens as format 3 with none; format 1 held bare values, from before
revisions, and is refused as `KVStore.restore` refuses snapshots of then.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from raftkv.kv import (
    MAX_SESSIONS,
    MAX_VALUE_SIZE,
    REV_SIZE,
    KVStore,
    Reply,
    Session,
    SnapshotError,
    StateMachineLike,
    check_members,
    next_record,
    parse_leases_in,
    parse_sessions,
    record_growth,
    session_wire,
)
from raftkv.node_defaults import LMDB_MAX_KEY_SIZE
from raftkv.storage.fs import OS_FS

log = logging.getLogger("raftkv.lmdb_state")

FORMAT = 3  # 3: leases; 2: records with revisions, tagged sessions
MAX_KEY_SIZE = LMDB_MAX_KEY_SIZE
_PREFIX = b"\x00"
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
# An LMDB file opens with a page header (16 bytes on 64-bit) then the meta's magic.
_LMDB_MAGIC = struct.pack("<I", 0xBEEFC0DE)
_LMDB_MAGIC_AT = 16
_U64 = struct.Struct(">Q")
_DATA, _SESSIONS, _META = b"data", b"sessions", b"meta"
_LEASE = b"lease:"  # meta: a lease's entry, by its id
# A session's value: a kind byte, then for _TAGGED seq, index and the OK reply's value
# by its tag; for _REVISION seq, index and the OK reply's int (a put's revision); for
# _PACKED msgpack [seq, index, code, value].
_TAGGED_SESSION = struct.Struct(">BQQB")
_REVISION_SESSION = struct.Struct(">BQQQ")
_KIND_TAGGED, _KIND_REVISION, _KIND_PACKED = 0, 1, 2
_TAGGED = (None, True, False)  # the value of an OK reply, by its tag


def this_boot() -> str:
    """The machine's boot id: it changes when the machine restarts, and with it what a
    file written without fsync may hold."""
    try:
        return BOOT_ID_FILE.read_text().strip()
    except OSError:
        return "unknown"


def is_lmdb_image(data: bytes) -> bool:
    """Whether snapshot bytes are an LMDB file (this module's snapshots) rather than
    `KVStore.snapshot`'s msgpack."""
    return data[_LMDB_MAGIC_AT:_LMDB_MAGIC_AT + 4] == _LMDB_MAGIC


class _TrackedSessions(OrderedDict[int, Session]):
    """The sessions, remembering which client ids changed since the last flush: `apply`
    touches a session through exactly these three methods."""

    def __init__(self) -> None:
        super().__init__()
        self.changed: set[int] = set()

    def move_to_end(self, key: int, last: bool = True) -> None:
        self.changed.add(key)
        super().move_to_end(key, last)

    def __setitem__(self, key: int, value: Session) -> None:
        self.changed.add(key)
        super().__setitem__(key, value)

    def popitem(self, last: bool = True) -> tuple[int, Session]:
        item = super().popitem(last)
        self.changed.add(item[0])
        return item


class LmdbStore(KVStore):
    """The state machine in the LMDB environment at `path` (made if missing). Not
    thread-safe, as KVStore: the node's loop is its only caller, and the copy a
    `capture` returns runs on a read transaction of its own.

    `map_size` bounds the file (virtual memory is reserved for it, disk only as used);
    the quota keeps the data well below it. `boot_id` is this boot's (`this_boot`)."""

    __slots__ = ("path", "map_size", "boot_id", "_env", "_data", "_sess_db", "_meta",
                 "_writer", "_reader", "_copying")

    def __init__(self, path: Path, *, map_size: int = 1 << 34,
                 max_key_size: int = MAX_KEY_SIZE, max_value_size: int = MAX_VALUE_SIZE,
                 max_sessions: int = MAX_SESSIONS, boot_id: str | None = None) -> None:
        if max_key_size > MAX_KEY_SIZE:
            raise ValueError(f"max_key_size={max_key_size}: LMDB keys are at most "
                             f"{MAX_KEY_SIZE} bytes here")
        super().__init__(max_key_size, max_value_size, max_sessions)
        self.path = Path(path)
        self.map_size = map_size
        self.boot_id = this_boot() if boot_id is None else boot_id
        self._shards = []
        self._writer: lmdb.Transaction | None = None
        self._reader: lmdb.Transaction | None = None
        self._env: lmdb.Environment | None = None
        self._copying = threading.Lock()  # held while a capture's copy reads the env
        self._open()

    @classmethod
    def open_live(cls, path: Path, **kw: Any) -> LmdbStore:
        """The node's own store at `path`, as a restart finds it. A database another boot
        wrote (a power cut since) is removed unopened: LMDB trusts its file, and a torn
        one may not even open. One this boot wrote that cannot be read is reported and
        removed. Either way the store opens empty, and `resume` says so."""
        boot_id = kw.get("boot_id") or this_boot()
        kw["boot_id"] = boot_id
        if _boot_mark(path) != boot_id:
            shutil.rmtree(path, ignore_errors=True)
            return cls(path, **kw)
        try:
            return cls(path, **kw)
        except (lmdb.Error, SnapshotError) as e:
            log.error("the state database in %s cannot be read (%s): it is removed, and "
                      "the state rebuilt from the newest snapshot and the log", path, e)
            shutil.rmtree(path, ignore_errors=True)
            return cls(path, **kw)

    # ---- the environment ---------------------------------------------------------------

    def _open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        # sync=False: a commit is not fsynced; the log is what is durable, and a database
        # a power cut may have torn is never used (`resume`). readahead=False: a state
        # larger than RAM is read a page at a time, not in runs that evict the hot ones.
        env = lmdb.open(str(self.path), map_size=self.map_size, max_dbs=3, sync=False,
                        metasync=False, readahead=False, max_readers=16, writemap=True)
        self._env = env
        self._data = env.open_db(_DATA)
        self._sess_db = env.open_db(_SESSIONS)
        self._meta = env.open_db(_META)
        try:
            self._load()
        except SnapshotError:
            self._close_env()
            raise
        self._reader = env.begin(db=self._data)

    def _load(self) -> None:
        """The applied index, size, members and sessions, from the database."""
        env = self._env
        assert env is not None
        with env.begin() as txn:
            fmt = _u64(txn.get(b"format", db=self._meta), 0)
            if fmt == 1:
                raise SnapshotError("the state is from before revisions (format 1): this "
                                    "build cannot give its keys revisions every replica "
                                    "agrees on")
            if fmt not in (0, 2, FORMAT):
                raise SnapshotError(f"state format {fmt} is not supported (want {FORMAT})")
            applied = _u64(txn.get(b"applied", db=self._meta), 0)
            size = _u64(txn.get(b"size", db=self._meta), 0)
            raw_members = txn.get(b"members", db=self._meta)
            members = {} if raw_members is None else _unpack(raw_members, "members")
            check_members(members)
            raw = []
            for k, v in txn.cursor(db=self._sess_db):
                if len(k) != 8:
                    raise SnapshotError(f"session {k!r:.40} is malformed")
                raw.append([_U64.unpack(k)[0], *_decode_session(v)])
            raw_leases = []
            cursor = txn.cursor(db=self._meta)
            if cursor.set_range(_LEASE):
                for k, v in cursor:
                    if not k.startswith(_LEASE):
                        break
                    if len(k) != len(_LEASE) + 8:
                        raise SnapshotError(f"lease {k!r:.40} is malformed")
                    raw_leases.append([_U64.unpack(k[len(_LEASE):])[0],
                                       *_unpack(v, "a lease")])
            leases = parse_leases_in(raw_leases, applied,
                                     lambda k: txn.get(_PREFIX + k, db=self._data) is not None)
        raw.sort(key=lambda s: s[2] if len(s) > 2 and type(s[2]) is int else -1)
        sessions = _TrackedSessions()
        for cid, s in parse_sessions(raw, applied).items():
            OrderedDict.__setitem__(sessions, cid, s)
        self._sessions = sessions
        self._members = members
        self._install_leases(leases)
        if fmt != FORMAT:
            with env.begin(write=True) as txn:
                txn.put(b"format", _U64.pack(FORMAT), db=self._meta)
        self._applied_index = applied
        self._size = size

    def _close_env(self) -> None:
        with self._copying:  # closing the env under a running copy would crash it
            pass
        for txn in (self._writer, self._reader):
            if txn is not None:
                txn.abort()
        self._writer = self._reader = None
        if self._env is not None:
            self._env.close()
            self._env = None

    def _wipe(self) -> None:
        """Close and delete the environment; an empty one opens in its place."""
        self._close_env()
        shutil.rmtree(self.path, ignore_errors=True)
        self._open()

    def _mark_boot(self) -> None:
        """Record that this boot writes the database. Neither needs a sync: what a power
        cut takes, it takes with a boot of its own, and then the mark names another."""
        (self.path / "BOOT").write_text(self.boot_id)

    # ---- lifecycle (KVStore's hooks) ---------------------------------------------------

    def resume(self, floor: int, ceiling: int) -> bool:
        """Keep the database if this boot wrote it (no power cut since) and its applied
        index is in [floor, ceiling]; otherwise empty it, for the node to restore the
        snapshot and replay the log into."""
        if _boot_mark(self.path) == self.boot_id and floor <= self._applied_index <= ceiling:
            return True
        self._wipe()
        self._mark_boot()
        return False

    def flush(self) -> None:
        writer = self._writer
        if writer is None:  # nothing applied since the last flush
            return
        sessions = self._sessions
        assert isinstance(sessions, _TrackedSessions)
        for cid in sessions.changed:
            s = sessions.get(cid)
            if s is None:
                writer.delete(_U64.pack(cid), db=self._sess_db)
            else:
                writer.put(_U64.pack(cid), _encode_session(s), db=self._sess_db)
        sessions.changed.clear()
        leases = self._leases
        for lid in leases.changed:
            entry = leases.entry(lid)
            if entry is None:
                writer.delete(_LEASE + _U64.pack(lid), db=self._meta)
            else:
                writer.put(_LEASE + _U64.pack(lid), msgpack.packb(entry), db=self._meta)
        leases.changed.clear()
        writer.put(b"applied", _U64.pack(self._applied_index), db=self._meta)
        writer.put(b"size", _U64.pack(self._size), db=self._meta)
        writer.commit()
        self._writer = None
        assert self._env is not None and self._reader is not None
        self._reader.abort()
        self._reader = self._env.begin(db=self._data)

    def apply(self, index: int, data: bytes) -> Reply:
        if self._writer is None:
            self._begin()
        return super().apply(index, data)

    def apply_membership(self, index: int, node_id: int, address: str | None) -> None:
        writer = self._writer or self._begin()
        super().apply_membership(index, node_id, address)
        writer.put(b"members", msgpack.packb(self._members), db=self._meta)

    def capture(self) -> Callable[[], Path]:
        """The callable copies the state as it is now, compacted, into a new file beside
        the database and returns its path: the file is the caller's (storage streams it
        into the snapshot file, then removes it)."""
        self.flush()
        assert self._env is not None
        env, txn = self._env, self._env.begin()
        parent, copying = self.path.parent, self._copying
        copying.acquire()  # released by the copy, on whichever thread runs it

        def copy() -> Path:
            try:
                fd, name = tempfile.mkstemp(dir=parent, prefix=".state-copy-", suffix=".mdb")
                try:
                    env.copyfd(fd, compact=True, txn=txn)
                except BaseException:
                    os.unlink(name)
                    raise
                finally:
                    os.close(fd)
                return Path(name)
            finally:
                txn.abort()
                copying.release()

        return copy

    def succeed(self, old: StateMachineLike) -> LmdbStore:
        """Move this scratch store's environment to where `old`, the live one, is."""
        assert isinstance(old, LmdbStore), "a node's states are all of one kind"
        self.stats = old.stats
        old.close()
        live = old.path
        self._close_env()
        shutil.rmtree(live, ignore_errors=True)
        os.rename(self.path, live)
        OS_FS.fsync_dir(live.parent)
        self.path = live
        self._open()
        self._mark_boot()
        return self

    def discard(self) -> None:
        self._close_env()
        shutil.rmtree(self.path, ignore_errors=True)

    def close(self) -> None:
        if self._writer is not None:
            self.flush()
        self._close_env()

    # ---- reads -------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        txn = self._writer or self._reader
        assert txn is not None
        rec = txn.get(_PREFIX + key, db=self._data)
        return None if rec is None else rec[REV_SIZE:]

    def scan_records(self, prefix: bytes, limit: int, start: bytes = b""
                     ) -> list[tuple[bytes, bytes]]:
        if limit <= 0:
            return []
        txn = self._writer or self._reader
        assert txn is not None
        out: list[tuple[bytes, bytes]] = []
        cursor = txn.cursor(db=self._data)
        within = _PREFIX + prefix
        if not cursor.set_range(_PREFIX + max(prefix, start)):
            return out
        for k, v in cursor:
            if not k.startswith(within) or len(out) >= limit:
                break
            out.append((k[1:], v))
        return out

    def __len__(self) -> int:
        txn = self._writer or self._reader
        assert txn is not None
        return txn.stat(self._data)["entries"]

    # ---- writes ------------------------------------------------------------------------

    def _begin(self) -> lmdb.Transaction:
        assert self._env is not None
        self._writer = self._env.begin(write=True, db=self._data)
        return self._writer

    def _put(self, index: int, key: bytes, value: bytes) -> int:
        writer = self._writer
        assert writer is not None
        stored = _PREFIX + key
        old = writer.get(stored)
        writer.put(stored, next_record(old, index, value))
        return record_growth(key, old, value)

    def _rec(self, key: bytes) -> bytes | None:
        txn = self._writer or self._reader
        assert txn is not None
        return txn.get(_PREFIX + key, db=self._data)

    def _take(self, key: bytes) -> bytes | None:
        assert self._writer is not None
        return self._writer.pop(_PREFIX + key)

    # ---- snapshots ---------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The state now, as a compacted LMDB file's bytes."""
        path = self.capture()()
        try:
            return path.read_bytes()
        finally:
            path.unlink()

    def restore(self, snapshot: bytes | Path) -> None:
        """Replace the whole state with a snapshot's (its bytes, or a file of them that
        stays the caller's): an LMDB file this module wrote, or `KVStore.snapshot`'s
        msgpack (a node moving from `--state memory`). The new state is built beside the
        old one, which is replaced only once it opened and read back whole: on
        SnapshotError nothing changes. A file is copied by the kernel, never read into
        memory whole."""
        if isinstance(snapshot, Path):
            with open(snapshot, "rb") as f:
                head = f.read(_LMDB_MAGIC_AT + len(_LMDB_MAGIC))
            staged = (_stage_image(self.path, snapshot) if is_lmdb_image(head)
                      else self._stage_msgpack(snapshot.read_bytes()))
        elif is_lmdb_image(snapshot):
            staged = _stage_image(self.path, snapshot)
        else:
            staged = self._stage_msgpack(snapshot)
        try:
            probe = LmdbStore(staged, map_size=self.map_size, max_key_size=self.max_key_size,
                              max_value_size=self.max_value_size,
                              max_sessions=self.max_sessions, boot_id=self.boot_id)
        except (SnapshotError, lmdb.Error) as e:
            shutil.rmtree(staged, ignore_errors=True)
            raise SnapshotError(f"snapshot is not a state this store can open: {e}") from e
        probe.close()
        self._close_env()
        shutil.rmtree(self.path, ignore_errors=True)
        os.rename(staged, self.path)
        self._open()
        self._mark_boot()

    def _stage_msgpack(self, snapshot: bytes) -> Path:
        loaded = KVStore(self.max_key_size, self.max_value_size, self.max_sessions)
        loaded.restore(snapshot)  # raises SnapshotError first, before anything is made
        staged = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=".state-restore-"))
        env = lmdb.open(str(staged), map_size=self.map_size, max_dbs=3, sync=False,
                        metasync=False)
        try:
            data, sess_db, meta = env.open_db(_DATA), env.open_db(_SESSIONS), env.open_db(_META)
            with env.begin(write=True) as txn:
                for shard in loaded._shards:
                    for k, v in shard.items():
                        if len(k) > self.max_key_size:
                            raise SnapshotError(f"the snapshot holds a key of {len(k)} bytes;"
                                                f" LMDB keys are at most {MAX_KEY_SIZE}")
                        txn.put(_PREFIX + k, v, db=data)
                for cid, s in loaded._sessions.items():
                    txn.put(_U64.pack(cid), _encode_session(s), db=sess_db)
                txn.put(b"format", _U64.pack(FORMAT), db=meta)
                txn.put(b"applied", _U64.pack(loaded.applied_index), db=meta)
                txn.put(b"size", _U64.pack(loaded.size), db=meta)
                txn.put(b"members", msgpack.packb(loaded.members), db=meta)
                for lid in loaded.lease_ttls:
                    txn.put(_LEASE + _U64.pack(lid), msgpack.packb(loaded.lease(lid)), db=meta)
        except BaseException:
            env.close()
            shutil.rmtree(staged, ignore_errors=True)
            raise
        env.close()
        return staged


def remove_leftovers(data_dir: Path) -> None:
    """Remove what a node stopped mid-copy or mid-restore left in its data dir."""
    for p in data_dir.glob(".state-*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    for p in data_dir.glob("state.incoming-*"):
        shutil.rmtree(p, ignore_errors=True)


def _stage_image(live: Path, image: bytes | Path) -> Path:
    staged = Path(tempfile.mkdtemp(dir=live.parent, prefix=".state-restore-"))
    if isinstance(image, Path):
        shutil.copyfile(image, staged / "data.mdb")  # copy_file_range: in the kernel
    else:
        (staged / "data.mdb").write_bytes(image)
    return staged


def _encode_session(s: Session) -> bytes:
    """A session as its value in `sessions`: a kind byte, then seq, index and the reply,
    in 18 or 25 bytes for the replies a put, delete or cas gets, msgpack for any other."""
    code, value = s.reply
    if code == 0 and (value is None or value is True or value is False):
        return _TAGGED_SESSION.pack(_KIND_TAGGED, s.seq, s.index, _TAGGED.index(value))
    if code == 0 and type(value) is int and 0 <= value <= 0xFFFF_FFFF_FFFF_FFFF:
        return _REVISION_SESSION.pack(_KIND_REVISION, s.seq, s.index, value)
    return bytes((_KIND_PACKED,)) + msgpack.packb(session_wire(0, s)[1:])


def _decode_session(raw: bytes) -> list[Any]:
    """[seq, index, code, value], as `parse_sessions` checks them."""
    kind = raw[0] if raw else None
    if kind == _KIND_TAGGED and len(raw) == _TAGGED_SESSION.size:
        _, seq, index, tag = _TAGGED_SESSION.unpack(raw)
        if tag >= len(_TAGGED):
            raise SnapshotError(f"session reply tag {tag} is unknown")
        return [seq, index, 0, _TAGGED[tag]]
    if kind == _KIND_REVISION and len(raw) == _REVISION_SESSION.size:
        _, seq, index, revision = _REVISION_SESSION.unpack(raw)
        return [seq, index, 0, revision]
    item = _unpack(raw[1:], "session") if kind == _KIND_PACKED else None
    if type(item) is not list:
        raise SnapshotError(f"session {raw!r:.40} is malformed")
    return item


def _boot_mark(path: Path) -> str | None:
    """The boot that wrote the database at `path`, if it says."""
    try:
        return (path / "BOOT").read_text()
    except OSError:
        return None


def _u64(raw: bytes | None, default: int) -> int:
    if raw is None:
        return default
    if len(raw) != 8:
        raise SnapshotError(f"state meta value {raw!r:.40} is not 8 bytes")
    return _U64.unpack(raw)[0]


def _unpack(raw: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(raw, strict_map_key=False)
    except Exception as e:
        raise SnapshotError(f"state {what} is not valid msgpack: {e}") from e
