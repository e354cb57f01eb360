"""Reading a child process's output with a deadline, so a line that never comes fails
the test at once, naming what was awaited, instead of blocking until pytest's timeout."""

from __future__ import annotations

import queue
import threading
from typing import IO


def line_within(stream: IO[str], timeout: float, what: str) -> str:
    """The next line of `stream`; AssertionError naming `what` if none comes within
    `timeout` seconds or the stream ends first. The reader thread is a daemon: a line
    that comes late is dropped with it when the test kills the process."""
    got: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: got.put(stream.readline()), daemon=True).start()
    try:
        line = got.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no line in {timeout} s: {what}") from None
    if not line:
        raise AssertionError(f"the output ended before {what}")
    return line
