"""The storage layer's exceptions. Every one of them means the node must not run on."""

from __future__ import annotations

from pathlib import Path

RECOVERY_HINT = (
    "The node's data dir is damaged and must not be used as is. To recover: stop the node, "
    "move its data dir ({data_dir}) aside (or remove it) and restart the node so it rejoins "
    "and catches up from the leader. That is safe only while a quorum of the other nodes is "
    "healthy; otherwise keep the dir for inspection."
)


class StorageError(Exception):
    """Base class of the storage layer's errors."""


class StorageVersionError(StorageError):
    """The data dir was written in a format this build does not read."""


class StorageCorruptError(StorageError):
    """Durable data failed a check: a bad record, a missing segment or snapshot, a broken
    snapshot. Never raised for a torn tail, which recovery repairs by itself."""

    def __init__(self, path: Path | str, offset: int, problem: str, data_dir: Path | str) -> None:
        self.path = Path(path)
        self.offset = offset
        self.problem = problem
        super().__init__(
            f"storage corrupt: {self.path} at offset {offset}: {problem}. "
            + RECOVERY_HINT.format(data_dir=data_dir)
        )
