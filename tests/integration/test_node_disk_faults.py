"""A disk that fails an fsync (EIO, ENOSPC) or a write (ENOSPC, disk full) under a node.

On both sync paths of `Replica.process_ready` (inline: a follower, or a leader with little
to overlap; threaded: a leader's Ready with more than `_INLINE_SYNC_MAX` committed
entries, synced by `_Syncer`) the node must:

- stop: a StorageError leaves `run()`, which closes the node; `raftkv node` exits 4;
- acknowledge nothing of the Ready the failure hit: none of its `persisted_messages`
  leaves, a leader does not count its own copy toward commit, and no client of its
  entries is answered;
- after a reopen of the data dir (same machine: the page cache still holds what the
  failed sync did not write), not have the unsynced records in its log.

Nodes run in this process on a temp dir with `FaultyFS` under storage; their Raft
messages and client replies are recorded, never sent, and peers are played by stepping
their messages into `node.replica.core`.
"""

from __future__ import annotations

import errno
import os
import re
import select
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.launcher import free_ports
from raftkv.node import Node, NodeConfig
from raftkv.raft import Entry, HardState, Message, MsgType, Role
from raftkv.raft.core import CAMPAIGN_TRANSFER, CampaignKind
from raftkv.replica import _INLINE_SYNC_MAX
from raftkv.storage import Storage, StorageError
from raftkv.storage.fs import OsFileSystem
from raftkv.wire import ClientRequest, ReplyCode, ReqOp

ROOT = Path(__file__).resolve().parents[2]
_SEGMENT = re.compile(r"wal-\d{10}\.log")
DEADLINE_S = 5.0


class FaultyFS(OsFileSystem):
    """The OS's files, with faults armed on WAL segments and a model of the page cache.

    `arm(op, err)`: the next `op` on a WAL segment (`"sync"`: fdatasync or fsync;
    `"pwrite"`) raises OSError(err) and does nothing else. One shot per arming.

    Page cache: bytes written to a segment and not yet covered by a successful sync of
    that file are cached. A failed sync loses them from the disk, but (as Linux does: it
    marks the pages clean) they stay readable, because the real file holds them, until
    `drop_cache` of that file writes zeros over them. Zeros are what the disk holds there:
    the WAL writes only over preallocated zeros, or past the file's end, where a shorter
    file reads the same to replay (records end at the first zeros).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the sync runs on the node's helper thread
        self._paths: dict[int, Path] = {}  # open write handle -> its file
        self._armed: dict[str, int] = {}  # op -> errno of its next fault
        self._cached: dict[Path, list[tuple[int, int]]] = {}  # (offset, length) unsynced
        self._lost: dict[Path, list[tuple[int, int]]] = {}  # a failed sync covered these
        self.faults: list[tuple[str, str]] = []  # (op, file name) of every fault raised

    def arm(self, op: str, err: int) -> None:
        if op not in ("sync", "pwrite"):
            raise ValueError(op)
        with self._lock:
            self._armed[op] = err

    def lost(self, name: str) -> list[tuple[int, int]]:
        """The ranges of file `name` a failed sync left only in the page cache."""
        with self._lock:
            return [r for p, rs in self._lost.items() if p.name == name for r in rs]

    def _maybe_fail(self, op: str, fd: int) -> None:
        with self._lock:
            path = self._paths.get(fd)
            if path is None or not _SEGMENT.fullmatch(path.name) or op not in self._armed:
                return
            err = self._armed.pop(op)
            self.faults.append((op, path.name))
            if op == "sync":
                self._lost.setdefault(path, []).extend(self._cached.pop(path, []))
        raise OSError(err, os.strerror(err), str(path))

    def open(self, path: Path, *, create: bool = False, exclusive: bool = False,
             truncate: bool = False) -> int:
        fd = super().open(path, create=create, exclusive=exclusive, truncate=truncate)
        with self._lock:
            self._paths[fd] = Path(path)
        return fd

    def close(self, fd: int) -> None:
        with self._lock:
            self._paths.pop(fd, None)
        super().close(fd)

    def rename(self, src: Path, dst: Path) -> None:
        super().rename(src, dst)
        src, dst = Path(src), Path(dst)
        with self._lock:
            for fd, p in self._paths.items():
                if p == src:
                    self._paths[fd] = dst
            for table in (self._cached, self._lost):
                if src in table:
                    table[dst] = table.pop(src)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        self._maybe_fail("pwrite", fd)
        n = super().pwrite(fd, data, offset)
        with self._lock:
            path = self._paths.get(fd)
            if path is not None:
                self._cached.setdefault(path, []).append((offset, n))
        return n

    def fdatasync(self, fd: int) -> None:
        self._maybe_fail("sync", fd)
        super().fdatasync(fd)
        self._synced(fd)

    def fsync(self, fd: int) -> None:
        self._maybe_fail("sync", fd)
        super().fsync(fd)
        self._synced(fd)

    def _synced(self, fd: int) -> None:
        """Every cached byte of the file is on the disk now; what a failed sync lost
        stays lost (its pages are clean: there is nothing left to write)."""
        with self._lock:
            path = self._paths.get(fd)
            if path is not None:
                self._cached.pop(path, None)

    def drop_cache(self, path: Path) -> None:
        super().drop_cache(path)
        with self._lock:
            lost = self._lost.pop(Path(path), [])
        if not lost:
            return
        fd = os.open(path, os.O_WRONLY)
        try:
            for off, n in lost:
                os.pwrite(fd, bytes(n), off)
        finally:
            os.close(fd)


@dataclass
class Outbox:
    """What a node sent: Raft messages, and (request id, code) of client replies."""

    messages: list[Message] = field(default_factory=list)
    replies: list[tuple[int, ReplyCode]] = field(default_factory=list)

    def types(self) -> list[MsgType]:
        return [m.type for m in self.messages]

    def clear(self) -> None:
        self.messages.clear()
        self.replies.clear()


MakeNode = Callable[[Path, FaultyFS], tuple[Node, Outbox]]


@pytest.fixture
def make_node() -> Iterator[MakeNode]:
    """Builds node 1 of voters {1, 2, 3}; nothing it sends leaves the process. Its
    election timeout is far beyond any test, so only the test makes it campaign. A node
    a failing test left open is closed afterwards (its sockets would hang the exit)."""
    made: list[Node] = []

    def make(data_dir: Path, fs: FaultyFS) -> tuple[Node, Outbox]:
        p2, p3 = free_ports(2)
        cfg = NodeConfig(1, "tcp://127.0.0.1:0",
                         {2: f"tcp://127.0.0.1:{p2}", 3: f"tcp://127.0.0.1:{p3}"}, data_dir,
                         heartbeat_ms=10, election_ms=60_000, fs=fs)
        node = Node(cfg)
        made.append(node)
        out = Outbox()

        def reply(identity: Any, request_id: int, code: ReplyCode, value: Any = None,
                  leader_hint: int | None = None) -> bool:
            out.replies.append((request_id, code))
            return True

        # The wire is recorded; Node.send still steps a message to itself (its own vote).
        node.transport.send = lambda m: out.messages.append(m) or True  # type: ignore
        node.transport.send_many = out.messages.extend  # type: ignore[method-assign]
        node.transport.reply = reply  # type: ignore[method-assign]
        return node, out

    yield make
    for node in made:
        if not closed(node):
            node.close()


def open_sessions(node: Node, first_id: int, n: int) -> list[int]:
    """Propose `n` OPEN_SESSION writes; their request ids."""
    ids = list(range(first_id, first_id + n))
    node.replica.handle_requests([ClientRequest(i, ReqOp.OPEN_SESSION, identity=b"client")
                                  for i in ids])
    return ids


def ack(node: Node, frm: int, index: int) -> None:
    node.replica.core.step(Message(MsgType.APP_RESP, 1, frm, node.replica.core.term, index=index))


def elect(node: Node) -> None:
    """Make node 1 the leader of term 1, its no-op entry committed by node 2's ack."""
    node.replica.core.campaign(CampaignKind.ELECTION)
    node.replica.process_ready()
    node.replica.core.step(Message(MsgType.VOTE_RESP, 1, 2, node.replica.core.term))
    node.replica.process_ready()
    assert node.replica.core.role == Role.LEADER
    ack(node, 2, node.replica.core.log.last_index())
    node.replica.process_ready()
    assert node.replica.core.log.applied == node.replica.core.log.last_index() == 1


def wait_readable(fd: int) -> None:
    """Until `fd` is readable; fails the test after DEADLINE_S."""
    ready, _, _ = select.select([fd], [], [], DEADLINE_S)
    assert ready, f"fd {fd} not readable within {DEADLINE_S}s"


def run_until_stopped(node: Node) -> StorageError:
    """`node.run()`, which must end in a StorageError (the node closed by then). A node
    still running after DEADLINE_S is stopped, which fails the test."""
    timer = threading.Timer(DEADLINE_S, node.stop)
    timer.start()
    try:
        with pytest.raises(StorageError) as err:
            node.run()
    finally:
        timer.cancel()
    assert closed(node)
    # Storage's own message on either path: what failed, and what the operator does.
    assert "Restart the node once the disk is fixed" in str(err.value)
    return err.value


def closed(node: Node) -> bool:
    return node.replica.storage._lock_fd is None and node.transport.socket.closed


def reopened_last_index(data_dir: Path, fs: FaultyFS) -> int:
    with Storage.open(data_dir, fs=fs) as st:
        return st.last_index


def follow(node: Node, first: int, n: int) -> None:
    """Node 2, leader of term 1, appends entries first..first+n-1 to node 1."""
    prev = first - 1
    node.replica.core.step(Message(MsgType.APP, 1, 2, 1, log_term=1 if prev else 0, index=prev,
                                   entries=[Entry(1, i) for i in range(first, first + n)]))


# -- the model --------------------------------------------------------------------------


def test_faulty_fs_serves_what_a_failed_sync_lost_until_the_cache_is_dropped(tmp_path):
    """Without this the reopen tests below would pass against a storage that reads the
    page cache: the records must be readable after the failed sync, gone after a drop."""
    fs = FaultyFS()
    seg = tmp_path / "wal-0000000001.log"
    with Storage.open(tmp_path, fs=fs) as st:
        st.append([Entry(1, 1)], HardState(1, 0, 0))
        st.sync()
        st.append([Entry(1, 2, data=b"lost entry")])
        fs.arm("sync", errno.EIO)
        with pytest.raises(StorageError, match="Input/output error"):
            st.sync()
    assert fs.faults == [("sync", seg.name)]
    assert fs.lost(seg.name)
    assert b"lost entry" in fs.read(seg)  # still cached: a plain read sees it
    assert reopened_last_index(tmp_path, fs) == 1
    assert b"lost entry" not in fs.read(seg)


# -- the inline path: a follower ---------------------------------------------------------


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC], ids=["EIO", "ENOSPC"])
@pytest.mark.parametrize("what", ["append", "vote"])
def test_a_follower_whose_sync_fails_stops_without_acknowledging(make_node, tmp_path, err, what):
    fs = FaultyFS()
    data = tmp_path / "n1"
    node, out = make_node(data, fs)
    follow(node, 1, 2)
    node.replica.process_ready()
    assert out.types() == [MsgType.APP_RESP]  # entries 1-2 are durable and acknowledged
    out.clear()
    if what == "append":
        follow(node, 3, 3)
        expected = MsgType.APP_RESP
    else:
        # A transfer's vote request: granted though node 1 has heard from a leader.
        node.replica.core.step(Message(MsgType.VOTE, 1, 3, 2, log_term=1, index=2,
                                       context=CAMPAIGN_TRANSFER))
        assert node.replica.core.vote == 3
        expected = MsgType.VOTE_RESP
    assert node.replica.core.has_ready()
    fs.arm("sync", err)
    failure = run_until_stopped(node)
    assert os.strerror(err) in str(failure)
    assert fs.faults == [("sync", "wal-0000000001.log")]
    assert expected not in out.types(), "an acknowledgement left after its sync failed"
    assert out.messages == []
    assert reopened_last_index(data, fs) == 2


@pytest.mark.parametrize("first", [True, False], ids=["preallocating", "record"])
def test_a_follower_whose_disk_is_full_stops_without_acknowledging(make_node, tmp_path, first):
    """ENOSPC on the append itself: on a fresh segment the first write is the zeros
    written ahead of the records, later ones the records."""
    fs = FaultyFS()
    data = tmp_path / "n1"
    node, out = make_node(data, fs)
    durable = 0
    if not first:
        follow(node, 1, 2)
        node.replica.process_ready()
        out.clear()
        durable = 2
    follow(node, durable + 1, 3)
    fs.arm("pwrite", errno.ENOSPC)
    failure = run_until_stopped(node)
    assert "No space left on device" in str(failure)
    assert fs.faults == [("pwrite", "wal-0000000001.log")]
    assert MsgType.APP_RESP not in out.types(), "an append was acknowledged on a full disk"
    assert reopened_last_index(data, fs) == durable


# -- the threaded path: a leader ---------------------------------------------------------


def threaded_ready(node: Node, out: Outbox) -> tuple[list[int], list[int]]:
    """Bring leader node 1 to a Ready that takes the threaded path: entries 2-6 committed
    (with node 2) and not yet applied, entries 7-9 new, and a refusal of node 3's vote
    request among its persisted_messages. Returns the request ids of the committed and
    of the new entries."""
    elect(node)
    committed = open_sessions(node, 100, _INLINE_SYNC_MAX + 1)
    node.replica.process_ready()  # nothing committed in it: synced inline
    ack(node, 2, 1 + len(committed))
    pending = open_sessions(node, 200, 3)
    node.replica.core.step(Message(MsgType.VOTE, 1, 3, node.replica.core.term, log_term=1, index=1))
    out.clear()
    return committed, pending


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC], ids=["EIO", "ENOSPC"])
def test_a_leader_whose_threaded_sync_fails_stops_without_acknowledging(make_node, tmp_path, err):
    fs = FaultyFS()
    data = tmp_path / "n1"
    node, out = make_node(data, fs)
    committed, pending = threaded_ready(node, out)
    fs.arm("sync", err)
    node.replica.process_ready()
    rd = node.replica.syncing
    assert rd is not None, "the Ready did not take the threaded path"
    assert len(rd.committed_entries) > _INLINE_SYNC_MAX
    assert [e.index for e in rd.entries] == [7, 8, 9]
    assert [m.type for m in rd.persisted_messages] == [MsgType.VOTE_RESP]
    # While the leader's own sync runs node 2 acknowledges the new entries: no majority
    # without the leader's copy, which is not durable.
    ack(node, 2, 9)
    node.replica.send(node.replica.core.take_messages())
    wait_readable(node.syncer.fd)
    failure = run_until_stopped(node)
    assert str(failure).startswith(f"sync failed ([Errno {err}] ")  # as on the inline path
    assert fs.faults == [("sync", "wal-0000000001.log")]
    assert MsgType.VOTE_RESP not in out.types(), "a persisted message left after its sync failed"
    assert node.replica.core.log.committed == 6, "the leader counted its own copy of a failed sync"
    # The entries committed before were durable already: answered while the sync ran.
    answered = [r for r, _ in out.replies]
    assert not set(pending) & set(answered), "a client of the failed Ready was answered"
    assert sorted(answered) == committed
    assert reopened_last_index(data, fs) == 6


def test_a_leader_whose_disk_is_full_stops_before_its_sync(make_node, tmp_path):
    """ENOSPC on the append of a Ready that would sync on the thread: it stops at the
    append, on the loop, and applies nothing of that Ready."""
    fs = FaultyFS()
    data = tmp_path / "n1"
    node, out = make_node(data, fs)
    threaded_ready(node, out)
    fs.arm("pwrite", errno.ENOSPC)
    run_until_stopped(node)
    assert fs.faults == [("pwrite", "wal-0000000001.log")]
    assert node.replica.syncing is None
    assert MsgType.VOTE_RESP not in out.types()
    assert node.replica.core.log.committed == 6
    assert out.replies == []
    assert reopened_last_index(data, fs) == 6


@pytest.mark.parametrize("fails", [True, False], ids=["failed", "synced"])
def test_a_stop_during_a_threaded_sync_ends_as_the_sync_did(make_node, tmp_path, fails):
    """SIGTERM arriving while the helper thread syncs: a failed sync must not end the
    node as a clean stop would; a good one still does."""
    fs = FaultyFS()
    data = tmp_path / "n1"
    node, out = make_node(data, fs)
    threaded_ready(node, out)
    if fails:
        fs.arm("sync", errno.EIO)
    node.replica.process_ready()
    assert node.replica.syncing is not None
    node.stop()
    wait_readable(node.syncer.fd)
    if fails:
        run_until_stopped(node)
        assert MsgType.VOTE_RESP not in out.types()
    else:
        node.run()
        assert closed(node)
    assert reopened_last_index(data, fs) == (6 if fails else 9)


# -- the command line --------------------------------------------------------------------

# `raftkv node` with FaultyFS under its storage, armed with argv[1] (op) and argv[2] (an
# errno name); the command's arguments follow.
_FAULTY_NODE = """
import errno, sys
from raftkv import node
from tests.integration.test_node_disk_faults import FaultyFS

run_node = node.run_node

def run_on_a_faulty_disk(cfg):
    cfg.fs = FaultyFS()
    cfg.fs.arm(sys.argv[1], getattr(errno, sys.argv[2]))
    run_node(cfg)

node.run_node = run_on_a_faulty_disk
from harness.cli import main
main(sys.argv[3:], prog_name="raftkv")
"""


@pytest.mark.parametrize(("op", "err"), [("sync", "EIO"), ("sync", "ENOSPC"),
                                         ("pwrite", "ENOSPC")])
def test_raftkv_node_exits_4_saying_what_failed_and_what_to_do(tmp_path, op, err):
    """A one-voter node elects itself at once; the Ready of its election meets the fault."""
    argv = [sys.executable, "-c", _FAULTY_NODE, op, err, "node", "--id", "1",
            "--listen", "tcp://127.0.0.1:0", "--data-dir", str(tmp_path / "n1"), "--new",
            "--heartbeat-ms", "10", "--election-ms", "20", "--insecure"]
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 4, r.stderr
    assert "Traceback" not in r.stderr
    message = r.stderr.strip().splitlines()[-1]
    assert message.startswith("raftkv: node 1: "), message
    assert os.strerror(getattr(errno, err)) in message
    assert "wal-0000000001.log" in message
    assert "Restart the node once the disk is fixed" in message
