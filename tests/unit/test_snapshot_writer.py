"""The node's snapshot writer (raftkv/snapshot_writer.py): a forked child writes the state
as it was at the fork, while the parent goes on changing it."""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import pytest

from raftkv.snapshot_writer import ForkSnapshotWriter, SnapshotWriteError


def wait_done(writer: ForkSnapshotWriter) -> None:
    deadline = time.monotonic() + 20
    while not writer.done():
        assert time.monotonic() < deadline, "the snapshot writer never finished"
        time.sleep(0.005)


def test_the_child_writes_the_state_as_it_was_at_the_fork(tmp_path):
    state = {b"k%d" % i: b"v" for i in range(50_000)}
    out = tmp_path / "snap"
    writer = ForkSnapshotWriter()
    writer.start(lambda: b"".join(sorted(state)), out.write_bytes)
    state.clear()  # the parent goes on; the child's copy-on-write image does not see it
    state[b"later"] = b"x"
    wait_done(writer)
    writer.finish()
    assert out.read_bytes() == b"".join(sorted(b"k%d" % i for i in range(50_000)))
    assert writer.pid is None


def test_a_write_that_fails_in_the_child_is_an_error_in_the_parent(tmp_path):
    writer = ForkSnapshotWriter()
    writer.start(lambda: b"data", (tmp_path / "no-such-dir" / "snap").write_bytes)
    wait_done(writer)
    with pytest.raises(SnapshotWriteError, match="exited with status 1"):
        writer.finish()


def test_closing_stops_a_write_in_progress(tmp_path):
    def slow() -> bytes:
        time.sleep(60)
        return b""

    writer = ForkSnapshotWriter()
    writer.start(slow, Path(tmp_path / "never").write_bytes)
    pid = writer.pid
    try:
        assert pid is not None and not writer.done()
    finally:
        writer.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no zombie left behind
    assert not (tmp_path / "never").exists()


def test_one_write_at_a_time(tmp_path):
    writer = ForkSnapshotWriter()
    writer.start(lambda: (time.sleep(60), b"")[1], (tmp_path / "a").write_bytes)
    try:
        with pytest.raises(RuntimeError, match="being written already"):
            writer.start(lambda: b"", (tmp_path / "b").write_bytes)
    finally:
        writer.close()


def test_what_is_alive_at_a_fork_is_frozen_out_of_full_collections(tmp_path):
    """Issue 16: full collections walked the whole in-memory log (150-380 ms at 4
    million keys) and one cost the leadership; frozen, they walk what came since."""
    alive = [[i] for i in range(10_000)]  # tracked containers, as log entries are
    gc.unfreeze()
    writer = ForkSnapshotWriter()
    try:
        writer.start(lambda: b"", (tmp_path / "snap").write_bytes)
        assert gc.get_freeze_count() >= len(alive)
        wait_done(writer)
        writer.finish()
    finally:
        gc.unfreeze()
