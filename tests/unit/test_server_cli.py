"""`raftkv node`'s options: their defaults are the node's (NodeConfig), stated once."""

from __future__ import annotations

import dataclasses

from raftkv.config import NodeConfig
from raftkv.server import node

# Option name -> the NodeConfig field it sets.
_FIELDS = {
    "heartbeat_ms": "heartbeat_ms",
    "election_ms": "election_ms",
    "snapshot_entries": "snapshot_entries",
    "snapshot_bytes": "snapshot_bytes",
    "snapshot_jitter": "snapshot_jitter",
    "quota_bytes": "quota_bytes",
    "wal_segment_bytes": "segment_bytes",
}


def test_node_option_defaults_are_node_config_defaults() -> None:
    config = {f.name: f.default for f in dataclasses.fields(NodeConfig)}
    options = {p.name: p.default for p in node.params}
    assert {name: options[name] for name in _FIELDS} == {
        name: config[field] for name, field in _FIELDS.items()}
