"""Power cuts at every disk operation of particular storage calls, on the PowerLossFS model
(tests/powerloss.py): the cases the randomized test (test_storage_powerloss.py) found,
pinned down so that they stay fixed."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from raftkv.raft.types import Entry, HardState
from raftkv.storage import Storage
from tests.powerloss import PowerLossFS

DATA = Path("/node/data")
CRASHES_PER_OP = 30


@pytest.fixture(autouse=True)
def _quiet_storage_log() -> Iterator[None]:
    logger = logging.getLogger("raftkv.storage")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def disk() -> PowerLossFS:
    fs = PowerLossFS()
    fs.makedirs(DATA.parent)
    fs.sync_all()
    return fs


def crashes_during(fs: PowerLossFS, action: Callable[[], object]) -> list[tuple[str, PowerLossFS]]:
    """Run `action`; before each of its disk operations, and after the last, take
    CRASHES_PER_OP states a power cut there may leave."""
    rng = random.Random(0)
    out: list[tuple[str, PowerLossFS]] = []

    def take(name: str, path: Path) -> None:
        out.extend((f"before {name} {path}", fs.crash(rng)) for _ in range(CRASHES_PER_OP))

    fs.on_op = take
    try:
        action()
    finally:
        fs.on_op = None
    take("nothing", Path("/"))
    return out


def state(st: Storage) -> tuple:
    return st.hard_state, st.snapshot, [(e.index, e.term, e.data)
                                        for e in st.entries_after_snapshot()]


def test_power_cut_anywhere_in_the_first_open_leaves_a_dir_that_opens_empty():
    """Found as seed 1445419628: the first segment was created under its own name before
    its header was written, so a cut could leave `wal-0000000001.log` empty (its name
    durable, its data not) and every later open refused it as corrupt."""
    fs = disk()
    cases = crashes_during(fs, lambda: Storage.open(DATA, fs=fs))
    for where, crashed in cases:
        with Storage.open(DATA, fs=crashed) as st:
            assert state(st) == (HardState(), None, []), where


def test_power_cut_anywhere_in_a_rotation_loses_nothing_synced():
    fs = disk()
    st = Storage.open(DATA, segment_bytes=512, fs=fs)
    st.append([Entry(1, i, data=b"x" * 100) for i in range(1, 4)], HardState(1, 1, 0))
    st.sync()
    before = state(st)
    cases = crashes_during(fs, lambda: st.append([Entry(1, 4, data=b"y" * 300)]))
    after = state(st)
    for where, crashed in cases:
        with Storage.open(DATA, segment_bytes=512, fs=crashed) as st2:
            assert state(st2) in (before, after), where
