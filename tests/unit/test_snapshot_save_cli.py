"""`raftkv snapshot save` on answers that make no backup (harness/cli_cluster.py): the
reads are replaced, so no cluster runs."""

from __future__ import annotations

from click.testing import CliRunner

import harness.cli_cluster as cli_cluster
from harness.cli import EXIT_UNAVAILABLE, main
from raftkv.kv import KeyValue


def test_a_lease_table_no_state_could_hold_exits_3_and_writes_nothing(tmp_path, monkeypatch):
    state = (10, {b"k": KeyValue(b"v", 1, 1, 1)}, [(11, 1000, [b"k"])])  # granted after 10
    monkeypatch.setattr(cli_cluster, "cluster_target", lambda cluster_dir: None)
    monkeypatch.setattr(cli_cluster, "with_client", lambda cluster_dir, timeout, fn: state)
    out = tmp_path / "b.rkv"
    result = CliRunner().invoke(main, ["snapshot", "save", str(out)])
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    assert "do not make a backup" in result.output and "malformed" in result.output
    assert not out.exists() and not list(tmp_path.iterdir())
