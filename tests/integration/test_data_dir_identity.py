"""`raftkv node` and its data dir's identity: a dir is created on the first start only
(--new or --join), and a dir of another node or cluster is refused with exit code 4."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.cli import EXIT_STORAGE
from harness.cluster_state import REPO, child_env, node_argv
from harness.launcher import LocalCluster, free_ports


@pytest.fixture
def one_node(tmp_path):
    """A one-node cluster (node 1), killed by pid afterwards."""
    c = LocalCluster(1, tmp_path)
    try:
        yield c
    finally:
        c.close()


def run_node(node_id: int, data_dir: Path, cluster_id: int, *flags: str
             ) -> subprocess.CompletedProcess:
    """`raftkv node` expected to exit on its own: a refused data dir exits before the
    node listens or runs a loop."""
    address = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    argv = node_argv(node_id, address, {}, data_dir, cluster_id=cluster_id,
                     insecure=True) + list(flags)
    return subprocess.run(argv, env=child_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_a_missing_or_empty_data_dir_is_refused_without_new_or_join(tmp_path, state):
    data_dir = tmp_path / "node1"
    if state == "empty":
        data_dir.mkdir()
    p = run_node(1, data_dir, 0xABC)
    assert p.returncode == EXIT_STORAGE, p.stderr
    assert f"node 1: data dir {data_dir} is missing or empty" in p.stderr
    assert "remove-node" in p.stderr and "add-node" in p.stderr  # how to recover
    assert (state == "empty") == data_dir.exists()  # nothing was created
    assert not data_dir.exists() or not any(data_dir.iterdir())


def test_new_creates_the_dir_that_then_belongs_to_its_node_and_cluster(one_node):
    one_node.start(1)  # its first start: --new
    one_node.wait_leader()
    assert one_node.stop(1) == 0
    data_dir = one_node.nodes[1].data_dir
    cluster_id = one_node.cluster_id
    assert (data_dir / "FORMAT").read_text().splitlines()[1:] == [
        f"cluster {cluster_id:x}", "node 1"]
    one_node.start(1)  # a later start, without --new, finds the dir
    one_node.wait_leader()
    one_node.kill(1)
    swapped = run_node(2, data_dir, cluster_id)
    assert swapped.returncode == EXIT_STORAGE, swapped.stderr
    assert "belongs to node 1, not node 2" in swapped.stderr
    assert "were two dirs swapped?" in swapped.stderr
    other = run_node(1, data_dir, cluster_id + 1, "--new")  # --new opens no other's dir
    assert other.returncode == EXIT_STORAGE, other.stderr
    assert f"belongs to cluster {cluster_id:x}, not {cluster_id + 1:x}" in other.stderr
