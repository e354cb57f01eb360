"""Snapshot writers (raftkv.interfaces.SnapshotWriter): where a snapshot's state is
serialized and its file written.

`ForkSnapshotWriter` is the node's. `fork()` gives a child the state machine as it is at
that instant, copy-on-write (paper §7; Redis's BGSAVE does the same), so the loop pays
only for the fork, which copies page tables, not the state, and goes on applying while
the child serializes, writes and fsyncs the file. The child dies with the node
(PR_SET_PDEATHSIG), so no orphan writes into a data dir a restarted node has opened.

Before forking, everything alive is frozen out of Python's garbage collector
(`gc.freeze`, Instagram's pre-fork trick): a full collection then walks only what was
made since the last snapshot, not the whole log kept in memory (full collections over
400,000 log entries took 150-380 ms at 4 million keys, and one cost the leadership),
and the collector never writes to the frozen objects, whose pages the parent would
otherwise copy from the child. Frozen objects are still freed by reference counting;
only a reference cycle alive at a freeze is never collected, which is why the young
generations are collected first.

`ThreadSnapshotWriter` is the node's with `--state lmdb`: the state machine fixes its
state itself (`LmdbStore.capture` opens a read transaction), and a thread copies it with
the GIL released, so there is nothing to fork.

`InlineSnapshotWriter` does the work inside `start`, stopping the caller for as long: for
unit tests and tools, where there is no loop to keep going.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raftkv.interfaces import SnapshotData

_PR_SET_PDEATHSIG = 1


class SnapshotWriteError(Exception):
    """A snapshot could not be written; nothing was adopted, the log is kept whole."""


class InlineSnapshotWriter:
    def __init__(self) -> None:
        self._error: BaseException | None = None

    def start(self, serialize: Callable[[], SnapshotData],
              write: Callable[[SnapshotData], None]) -> None:
        self._error = None
        try:
            write(serialize())
        except OSError as e:
            self._error = e

    def done(self) -> bool:
        return True

    def finish(self) -> None:
        if self._error is not None:
            raise SnapshotWriteError(f"writing the snapshot failed: {self._error}")


class ThreadSnapshotWriter:
    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, serialize: Callable[[], SnapshotData],
              write: Callable[[SnapshotData], None]) -> None:
        if self._thread is not None:
            raise RuntimeError("a snapshot is being written already")
        self._error = None

        def run() -> None:
            try:
                write(serialize())
            except Exception as e:  # noqa: BLE001 - finish() raises it on the loop
                self._error = e

        self._thread = threading.Thread(target=run, name="raftkv-snapshot", daemon=True)
        self._thread.start()

    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def finish(self) -> None:
        thread, error = self._thread, self._error
        self._thread = self._error = None
        if thread is None or thread.is_alive():
            raise RuntimeError("finish() before done()")
        if error is not None:
            raise SnapshotWriteError(f"writing the snapshot failed: {error!r}")

    def close(self) -> None:
        """Wait for a write in progress (a copy cannot be stopped halfway)."""
        if self._thread is not None:
            self._thread.join()
        self._thread = self._error = None


class ForkSnapshotWriter:
    def __init__(self) -> None:
        self.pid: int | None = None  # the child writing now, until it is reaped
        self._status: int | None = None

    def start(self, serialize: Callable[[], SnapshotData],
              write: Callable[[SnapshotData], None]) -> None:
        if self.pid is not None:
            raise RuntimeError("a snapshot is being written already")
        parent = os.getpid()
        gc.collect(1)
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            _child(parent, serialize, write)  # never returns
        self.pid, self._status = pid, None

    def done(self) -> bool:
        if self.pid is None or self._status is not None:
            return True
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self._status = status
        return True

    def finish(self) -> None:
        pid, status = self.pid, self._status
        self.pid = self._status = None
        if status is None:
            raise RuntimeError("finish() before done()")
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise SnapshotWriteError(f"the snapshot writer (pid {pid}) {how}; its error, if "
                                     "it could say, is in the node's stderr")

    def close(self) -> None:
        """Stop a write in progress (the node is stopping): its temp file is left for the
        next open to remove."""
        if self.pid is not None and self._status is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        self.pid = self._status = None


def _child(parent: int, serialize: Callable[[], SnapshotData],
           write: Callable[[SnapshotData], None]) -> None:
    """The forked child: write, then leave at once with os._exit, running no cleanup of
    the parent's (sockets, threads, atexit) that it inherited and does not own."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)
        gc.disable()  # collecting would touch every tracked object: pages copied for nothing
        write(serialize())
        code = 0
    except BaseException as e:  # noqa: BLE001 - the exit status carries it to the parent
        with contextlib.suppress(OSError):
            os.write(2, f"raftkv snapshot writer (pid {os.getpid()}): {e!r}\n".encode())
    finally:
        os._exit(code)
