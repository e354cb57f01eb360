"""Durable storage: write-ahead log, snapshots, recovery. See storage.py."""

from raftkv.storage.errors import (
    StorageCorruptError,
    StorageError,
    StorageIdentityError,
    StorageMissingError,
    StorageVersionError,
)
from raftkv.storage.storage import DEFAULT_SEGMENT_BYTES, FORMAT, Storage
from raftkv.storage.wal import Identity

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "FORMAT",
    "Identity",
    "Storage",
    "StorageCorruptError",
    "StorageError",
    "StorageIdentityError",
    "StorageMissingError",
    "StorageVersionError",
]
