"""Durable storage: write-ahead log, snapshots, recovery. See storage.py."""

from raftkv.storage.errors import StorageCorruptError, StorageError, StorageVersionError
from raftkv.storage.storage import DEFAULT_SEGMENT_BYTES, FORMAT, Storage

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "FORMAT",
    "Storage",
    "StorageCorruptError",
    "StorageError",
    "StorageVersionError",
]
