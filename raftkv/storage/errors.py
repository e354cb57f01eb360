"""The storage layer's exceptions. Every one of them means the node must not run on."""

from __future__ import annotations

from pathlib import Path

RECOVERY_HINT = (
    "The node's data dir is damaged and must not be used as is. To recover: stop the node, "
    "move its data dir ({data_dir}) aside (or remove it) and restart the node so it rejoins "
    "and catches up from the leader. That is safe only while a quorum of the other nodes is "
    "healthy; otherwise keep the dir for inspection."
)

DISK_FAILURE_HINT = (
    "Nothing written since the last successful sync was reported durable, so the node "
    "acknowledged none of it. Restart the node once the disk is fixed (for ENOSPC: once "
    "{data_dir} has free space): it reads back only what reached the disk and catches up "
    "from the leader."
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


class StorageMissingError(StorageError):
    """The data dir is missing or empty where state was expected: an unmounted volume, a
    wiped disk. Starting with an empty log would forget the node's term and vote."""

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        super().__init__(
            f"data dir {data_dir} is missing or empty, but this node has run before and "
            "must have state there (is a volume not mounted?). Refusing to start with an "
            "empty log: the node could vote twice in a term and lose acknowledged writes. "
            "If the data is really gone, remove the node from the cluster (`raftkv "
            "remove-node N`) and add a new one (`raftkv add-node`); a node run by hand "
            "starts on an empty dir only with --join, or --new for the first start of a "
            "new cluster."
        )


class StorageIdentityError(StorageError):
    """The data dir belongs to another node or another cluster."""
