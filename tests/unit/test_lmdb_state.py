"""The state machine kept in LMDB (raftkv/lmdb_state.py): the same replies as the one in
memory, whatever it is fed; what a restart, a power cut, a capture and a restore keep.

Randomized tests are seeded, as tests/unit/test_kv.py's (RAFTKV_KV_SEED replays one).
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from raftkv.kv import (
    Code,
    KVStore,
    Op,
    Reply,
    Session,
    SnapshotError,
    encode_command,
    session_wire,
)
from raftkv.lmdb_state import (
    LmdbStore,
    _decode_session,
    _encode_session,
    is_lmdb_image,
    remove_leftovers,
)
from raftkv.raft import SnapshotMeta
from raftkv.raft.types import Entry, HardState
from raftkv.snapshot_writer import SnapshotWriteError, ThreadSnapshotWriter
from raftkv.storage import Identity, Storage
from tests.unit.test_kv import SEEDS, Log, Workload
from tests.unit.test_transport import wait_until

MAP = 1 << 26


def wire(store: KVStore) -> tuple:
    """Everything replicated, comparable across the two kinds of store."""
    sessions = [session_wire(cid, store.session(cid)) for cid in store._sessions]
    pairs = store.scan(b"", 10**6)
    return (store.applied_index, pairs, store.scan_kv(b"", 10**6), sessions,
            sorted(store.members.items()), store.size, len(store),
            [(lid, store.lease(lid)) for lid in sorted(store.lease_ttls)], store.leases())


def open_store(path: Path, **kw: object) -> LmdbStore:
    """A new store, opened as a node opens its own: `resume` first."""
    store = LmdbStore(path, map_size=MAP, boot_id="boot-1", **kw)
    assert not store.resume(0, 0)
    return store


def reopen(path: Path, **kw: object) -> LmdbStore:
    """The store at `path` after a restart in the same boot (kill -9 keeps the page
    cache), before `resume` decides whether to keep it."""
    return LmdbStore(path, map_size=MAP, boot_id="boot-1", **kw)


def filled(path: Path, puts: int, value: bytes, key: bytes = b"k%05d"
           ) -> tuple[LmdbStore, Log, int]:
    """A new store with one session's `puts` puts (keys `key % seq`, or `key` itself if
    it has no format), flushed; the store, its log and the session's client id."""
    store = open_store(path)
    log = Log(store)
    cid = log.open()
    for seq in range(1, puts + 1):
        log.put(cid, seq, key % seq if b"%" in key else key, value)
    store.flush()
    return store, log, cid


def feed(workload: Workload, steps: int, store: KVStore) -> list:
    """`steps` more of the workload, flushed every few entries as a node's Readys are."""
    replies = []
    for i in range(steps):
        workload.step()
        replies.append(workload.replies[-1])
        if i % 7 == 0:
            store.flush()
    store.flush()
    return replies


@pytest.mark.parametrize("seed", SEEDS)
def test_fed_the_same_entries_it_answers_and_ends_as_the_store_in_memory(
        seed: int, tmp_path: Path) -> None:
    lm = open_store(tmp_path / "state", max_sessions=5)
    workload = Workload(random.Random(seed), Log(lm))
    feed(workload, 400, lm)
    memory = KVStore(max_sessions=5)
    replies = [memory.apply(index, data) for index, data in workload.log.entries]
    assert replies == workload.replies, f"seed={seed}"
    assert wire(lm) == wire(memory), f"seed={seed}"
    assert lm.stats == memory.stats, f"seed={seed}"
    for prefix in (b"", b"a", b"b", b"zz"):
        for start in (b"", b"a", b"ab\x00", b"b", b"zz"):
            assert lm.scan(prefix, 3, start) == memory.scan(prefix, 3, start), f"seed={seed}"


@pytest.mark.parametrize("seed", SEEDS[:10])
def test_reopened_in_the_same_boot_it_goes_on_where_it_was(seed: int, tmp_path: Path) -> None:
    lm = open_store(tmp_path / "state", max_sessions=5)
    workload = Workload(random.Random(seed), Log(lm))
    feed(workload, 200, lm)
    lm.apply_membership(lm.applied_index + 1, 4, "tcp://127.0.0.1:9")
    lm.flush()
    before = wire(lm)
    lm.close()
    again = reopen(tmp_path / "state", max_sessions=5)
    assert again.resume(0, before[0])
    assert wire(again) == before, f"seed={seed}"
    # ... and answers the same future as a store that never stopped
    memory = KVStore(max_sessions=5)
    for index, data in workload.log.entries:
        memory.apply(index, data)
    memory.apply_membership(again.applied_index, 4, "tcp://127.0.0.1:9")
    workload.log.store = again
    mark = len(workload.log.entries)
    feed(workload, 200, again)
    replies = [memory.apply(i, d) for i, d in workload.log.entries[mark:]]
    assert replies == workload.replies[-len(replies):], f"seed={seed}"
    assert wire(again) == wire(memory), f"seed={seed}"


def test_what_was_applied_but_not_flushed_is_not_kept(tmp_path: Path) -> None:
    lm, log, cid = filled(tmp_path / "state", 1, b"1", b"a")
    log.put(cid, 2, b"b", b"2")
    lm._close_env()  # the process dies with its transaction open: nothing of it commits
    again = reopen(tmp_path / "state")
    assert again.resume(0, 10)
    assert again.applied_index == 2
    assert again.get(b"a") == b"1" and again.get(b"b") is None


@pytest.mark.parametrize("case", ["another boot", "no mark", "behind the snapshot",
                                  "ahead of the log"])
def test_a_database_it_cannot_trust_is_emptied_for_a_restore(case: str, tmp_path: Path) -> None:
    lm, _, _ = filled(tmp_path / "state", 5, b"v", b"k%d")
    lm.close()
    floor, ceiling, boot = 0, 6, "boot-1"
    if case == "another boot":  # a power cut in between: what the file holds is unknown
        boot = "boot-2"
    elif case == "no mark":
        (tmp_path / "state" / "BOOT").unlink()
    elif case == "behind the snapshot":  # a snapshot was installed, the swap not made
        floor = 7
    else:  # the log was cut shorter than what the state applied
        ceiling = 5
    again = LmdbStore.open_live(tmp_path / "state", map_size=MAP, boot_id=boot)
    assert not again.resume(floor, ceiling)
    assert (again.applied_index, len(again), again.session_count, again.size) == (0, 0, 0, 0)
    assert (tmp_path / "state" / "BOOT").read_text() == boot


@pytest.mark.parametrize("boot", ["boot-1", "boot-2"], ids=["this boot", "another boot"])
def test_a_torn_database_opens_empty(boot: str, tmp_path: Path, caplog) -> None:
    """A database another boot wrote is removed unopened (a power cut may have torn it
    so that LMDB cannot even open it); one this boot wrote that cannot be read is
    reported, then removed."""
    lm, _, _ = filled(tmp_path / "state", 199, b"v" * 300, b"k%d")
    lm.close()
    with open(tmp_path / "state" / "data.mdb", "r+b") as f:
        f.write(b"\xa5" * 65536)
    again = LmdbStore.open_live(tmp_path / "state", map_size=MAP, boot_id=boot)
    assert not again.resume(0, 1000)
    assert (again.applied_index, len(again)) == (0, 0)
    assert ("cannot be read" in caplog.text) == (boot == "boot-1")


def test_a_capture_holds_the_state_of_its_moment_while_writes_go_on(tmp_path: Path) -> None:
    lm, log, cid = filled(tmp_path / "state", 500, b"x" * 50, b"key-%04d")
    before = wire(lm)
    copy = lm.capture()
    for seq in range(501, 601):
        log.put(cid, seq, b"key-%04d" % (seq - 500), b"changed")
    log.delete(cid, 601, b"key-0100")
    lm.flush()
    copied = copy()
    assert copied.parent == tmp_path and copied.name.startswith(".state-copy-")
    image = copied.read_bytes()
    assert is_lmdb_image(image)
    restored = open_store(tmp_path / "other")
    restored.restore(image)
    assert wire(restored) == before
    assert lm.get(b"key-0001") == b"changed"


def test_a_thread_writer_copies_while_the_loop_applies(tmp_path: Path) -> None:
    lm, log, cid = filled(tmp_path / "state", 2000, b"y" * 100, b"key-%05d")
    before = wire(lm)
    written: list[bytes] = []
    writer = ThreadSnapshotWriter()
    writer.start(lm.capture(), lambda copied: written.append(copied.read_bytes()))
    seq = 2001
    while not writer.done():
        log.put(cid, seq, b"key-%05d" % (seq % 2000), b"z")
        lm.flush()
        seq += 1
    writer.finish()
    restored = open_store(tmp_path / "copy")
    restored.restore(written[0])
    assert wire(restored) == before


def test_a_failed_copy_is_reported_by_finish(tmp_path: Path) -> None:
    writer = ThreadSnapshotWriter()

    def fail(_: bytes) -> None:
        raise OSError("disk full")

    writer.start(lambda: b"", fail)
    wait_until(writer.done, "the writer's thread to end")
    with pytest.raises(SnapshotWriteError, match="disk full"):
        writer.finish()


def test_a_snapshot_of_the_store_in_memory_restores_into_lmdb(tmp_path: Path) -> None:
    memory = KVStore(max_sessions=5)
    workload = Workload(random.Random(7), Log(memory))
    for _ in range(300):
        workload.step()
    memory.apply_membership(memory.applied_index + 1, 5, "tcp://127.0.0.1:5")
    lm = open_store(tmp_path / "state", max_sessions=5)
    lm.restore(memory.snapshot())
    assert wire(lm) == wire(memory)


@pytest.mark.parametrize("blob", [b"", b"junk", b"\x00" * 4096,
                                  b"\x00" * 16 + b"\xde\xc0\xef\xbe" + b"\x00" * 4076])
def test_a_bad_snapshot_is_refused_and_changes_nothing(blob: bytes, tmp_path: Path) -> None:
    lm, _, _ = filled(tmp_path / "state", 1, b"1", b"a")
    before = wire(lm)
    with pytest.raises(SnapshotError):
        lm.restore(blob)
    assert wire(lm) == before
    assert not list(tmp_path.glob(".state-*"))


def test_a_scratch_store_takes_the_live_ones_place(tmp_path: Path) -> None:
    live, _, _ = filled(tmp_path / "state", 1, b"1", b"old")
    live.stats.malformed = 3
    source = open_store(tmp_path / "elsewhere")
    slog = Log(source)
    scid = slog.open()
    slog.put(scid, 1, b"new", b"2")
    source.flush()
    scratch = open_store(tmp_path / "state.incoming-1")
    scratch.restore(source.snapshot())
    installed = scratch.succeed(live)
    assert installed.path == tmp_path / "state"
    assert not (tmp_path / "state.incoming-1").exists()
    assert installed.get(b"new") == b"2" and installed.get(b"old") is None
    assert installed.stats.malformed == 3
    installed.close()
    again = reopen(tmp_path / "state")
    assert again.resume(0, 100)
    assert again.get(b"new") == b"2"


def test_discard_and_leftovers_leave_no_dirs(tmp_path: Path) -> None:
    scratch = open_store(tmp_path / "state.incoming-x")
    scratch.discard()
    assert not (tmp_path / "state.incoming-x").exists()
    (tmp_path / ".state-copy-1").mkdir()
    (tmp_path / ".state-copy-2.mdb").write_bytes(b"a copy a crash left")
    (tmp_path / "state.incoming-2").mkdir()
    (tmp_path / "state").mkdir()
    remove_leftovers(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["state"]


def test_close_waits_for_a_running_copy(tmp_path: Path) -> None:
    lm, _, _ = filled(tmp_path / "state", 3000, b"v" * 200)
    copy = lm.capture()
    out: list[Path] = []
    t = threading.Thread(target=lambda: out.append(copy()))
    t.start()
    lm.close()  # must not pull the environment from under the copy
    t.join()
    assert is_lmdb_image(out[0].read_bytes())


def test_storage_streams_a_copy_into_the_snapshot_file_and_removes_it(tmp_path: Path) -> None:
    lm, _, _ = filled(tmp_path / "state", 3000, b"v" * 2000)  # about 6 MB: several ranges
    st = Storage.open(tmp_path / "wal", identity=Identity(1, 1), create=True)
    try:
        st.append([Entry(1, i) for i in range(1, 3003)], HardState(1, 0, 3002))
        st.sync()
        meta = SnapshotMeta(3002, 1, (1,))
        copied = lm.capture()()
        expected = copied.read_bytes()
        st.write_snapshot_file(meta, copied)
        assert not copied.exists()
        assert st.adopt_snapshot(meta)
        assert st.load_snapshot_data() == expected
    finally:
        st.close()


def test_snapshot_bytes_session_encoding_takes_any_reply() -> None:
    for reply in (Reply(Code.OK, None), Reply(Code.OK, True), Reply(Code.OK, False),
                  Reply(Code.OK, 1), Reply(Code.OK, 2**64 - 1), Reply(Code.OK, [True, [5]]),
                  Reply(Code.OK, -1), Reply(Code.BAD_REQUEST, "why")):
        raw = _encode_session(Session(7, 9, reply))
        assert _decode_session(raw) == [7, 9, int(reply.code), reply.value]
        assert type(_decode_session(raw)[3]) is type(reply.value)


def test_writes_refused_by_the_sessions_leave_the_database_as_it_was(tmp_path: Path) -> None:
    lm = open_store(tmp_path / "state")
    log = Log(lm)
    reply = log.append(encode_command(Op.PUT, b"a", b"1", client_id=99, seq=1))
    assert reply.code == Code.SESSION_EXPIRED
    lm.flush()
    assert lm.get(b"a") is None and lm.size == 0


def test_a_database_from_before_revisions_is_refused(tmp_path: Path) -> None:
    store, _, _ = filled(tmp_path / "state", 3, b"v")
    with store._env.begin(write=True) as txn:
        txn.put(b"format", (1).to_bytes(8, "big"), db=store._meta)
    store.close()
    with pytest.raises(SnapshotError, match="before revisions"):
        reopen(tmp_path / "state")
