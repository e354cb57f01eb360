"""`raftkv` — the command line. One click function per verb.

Exit codes: 0 success; 1 the operation's answer is negative (e.g. key not found);
2 usage error; 3 cluster unavailable; 4 the node's data directory is unusable.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

EXIT_UNAVAILABLE = 3
EXIT_STORAGE = 4


def parse_peer(value: str) -> tuple[int, str]:
    node_id, sep, address = value.partition("=")
    if not sep or not node_id.isdigit() or not address.startswith("tcp://"):
        raise click.BadParameter(f"{value!r}: expected ID=tcp://HOST:PORT, e.g. 2=tcp://127.0.0.1:7702")
    return int(node_id), address


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="raftkv")
def main() -> None:
    """raftkv: a Raft-replicated, durable, linearizable key/value store."""


@main.command()
@click.option("--id", "node_id", type=click.IntRange(min=1), required=True,
              help="This node's id (>= 1), unique in the cluster.")
@click.option("--listen", required=True, help="Address to bind, tcp://HOST:PORT.")
@click.option("--peer", "peers", multiple=True, help="Another voter, ID=tcp://HOST:PORT; repeat.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Where the write-ahead log and snapshots live (created if missing).")
@click.option("--heartbeat-ms", type=click.IntRange(min=1), default=50, show_default=True,
              help="Leader heartbeat interval; also the tick of the node's clock.")
@click.option("--election-ms", type=click.IntRange(min=2), default=300, show_default=True,
              help="Minimum election timeout; each election draws from [N, 2N).")
@click.option("--no-fsync", is_flag=True,
              help="FOR BENCHMARKS ONLY: skip fsync. A crash of the machine can then lose "
                   "acknowledged writes.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def node(node_id: int, listen: str, peers: tuple[str, ...], data_dir: Path, heartbeat_ms: int,
         election_ms: int, no_fsync: bool, log_level: str) -> None:
    """Run one node in the foreground until SIGTERM (what `up` starts, one per node).

    \b
    raftkv node --id 1 --listen tcp://127.0.0.1:7701 \\
        --peer 2=tcp://127.0.0.1:7702 --peer 3=tcp://127.0.0.1:7703 --data-dir data/1
    """
    from raftkv.node import NodeConfig, run_node
    from raftkv.storage import StorageError

    logging.basicConfig(level=log_level.upper(),
                        format=f"%(asctime)s node={node_id} %(levelname)s %(message)s")
    peer_map = dict(parse_peer(p) for p in peers)
    if node_id in peer_map:
        raise click.BadParameter(f"--peer names this node's own id {node_id}")
    if election_ms <= heartbeat_ms:
        raise click.BadParameter("--election-ms must be larger than --heartbeat-ms")
    cfg = NodeConfig(node_id, listen, peer_map, data_dir, heartbeat_ms=heartbeat_ms,
                     election_ms=election_ms, fsync=not no_fsync)
    try:
        run_node(cfg)
    except StorageError as e:
        click.echo(f"raftkv node {node_id}: {e}", err=True)
        sys.exit(EXIT_STORAGE)


if __name__ == "__main__":
    main(prog_name="raftkv")
