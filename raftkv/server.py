"""`raftkv node`: one node's process, in the foreground (what `raftkv up` starts, one per
node; on one node per machine, what you run by hand).

The store's own entry point: `python -m raftkv.server node ...`. The harness's CLI
(`bin/raftkv`, harness/cli.py) offers the same command as its `node` verb.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from raftkv import node_defaults as defaults
from raftkv.quota import DEFAULT_QUOTA, KEY_OVERHEAD, MAX_QUOTA

EXIT_USAGE = 2
EXIT_STORAGE = 4  # the data dir is unusable, or its disk failed

metrics_port_option = click.option(
    "--metrics-port", default=0, show_default=True, type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics at http://HOST:PORT/metrics; 0: off.")


def fail(message: str, code: int) -> NoReturn:
    """Print `message` on stderr as the CLI's error and exit with `code`."""
    click.echo(f"raftkv: {message}", err=True)
    sys.exit(code)


class Hex64(click.ParamType):
    """A hex number of at most 64 bits (a cluster id)."""

    name = "hex"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            number = int(value, 16)
        except ValueError:
            number = -1
        if not 0 <= number < 1 << 64:
            self.fail(f"{value!r} is not a hex number of at most 64 bits, e.g. "
                      "9f2c41d07a3e55b1", param, ctx)
        return number


HEX64 = Hex64()

@click.command()
@click.option("--id", "node_id", type=click.IntRange(min=1), required=True,
              help="This node's id (>= 1), unique in the cluster.")
@click.option("--listen", required=True, help="Address to bind, tcp://HOST:PORT.")
@click.option("--peer", "peers", multiple=True,
              help="Another member, ID=tcp://HOST:PORT; repeat. Members added later through "
                   "the log are learned from it.")
@click.option("--voters", default=None, metavar="ID,ID,...",
              help="The cluster's initial voters, the same on every start (default: this "
                   "node and its --peer ids).")
@click.option("--join", is_flag=True,
              help="Join a running cluster: start with no configuration and wait for the "
                   "leader to add this node (`raftkv add-node` does both). Like --new, "
                   "lets an empty or missing --data-dir be created: give it on the node's "
                   "first start only.")
@click.option("--new", "new", is_flag=True,
              help="This is the node's first start in a new cluster: an empty or missing "
                   "--data-dir may be created. Give it on the first start only: without "
                   "--new or --join a missing or empty data dir means lost state, and the "
                   "node refuses to start (exit 4) instead of coming back with no term, "
                   "vote or log.")
@click.option("--cluster-id", type=HEX64, default=0, metavar="HEX",
              help="The cluster's id (hex, up to 64 bits), recorded in the data dir; a dir "
                   "recorded for another cluster is refused (exit 4). Default: unchecked, "
                   "and a dir records the first id it is given.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Where the write-ahead log and snapshots live. Created only with --new "
                   "or --join; it records this node's id and the cluster's, and another "
                   "node's or cluster's dir is refused (exit 4).")
@click.option("--heartbeat-ms", type=click.IntRange(min=1),
              default=defaults.HEARTBEAT_MS, show_default=True,
              help="Leader heartbeat interval.")
@click.option("--election-ms", type=click.IntRange(min=2),
              default=defaults.ELECTION_MS, show_default=True,
              help="Minimum election timeout; each election draws from [N, 2N), in at "
                   "least 10 steps (the node's clock ticks often enough for that).")
@click.option("--no-fsync", is_flag=True,
              help="FOR BENCHMARKS ONLY: skip fsync. A crash of the machine can then lose "
                   "acknowledged writes.")
@click.option("--snapshot-entries", type=click.IntRange(min=1),
              default=defaults.SNAPSHOT_ENTRIES,
              show_default=True, help="Snapshot and compact the log after this many entries "
              "(times the node's jitter factor).")
@click.option("--snapshot-bytes", type=click.IntRange(min=1),
              default=defaults.SNAPSHOT_BYTES,
              show_default=True, help="... or after this many bytes of entry data.")
@click.option("--snapshot-jitter", type=click.FloatRange(min=0, max=4),
              default=defaults.SNAPSHOT_JITTER,
              show_default=True, help="Each node multiplies both thresholds by a factor it "
              "draws from [1, 1 + this) for each snapshot, so members snapshot at different "
              "indexes; 0: exactly at the thresholds.")
@click.option("--snapshot-catch-up-entries", type=click.IntRange(min=0),
              default=defaults.SNAPSHOT_CATCH_UP_ENTRIES, show_default=True,
              help="A snapshot compacts the log only up to this many entries before it "
              "(and keeps no more than a quarter of --snapshot-bytes of their data), so a "
              "follower a little behind catches up from the log, not by a whole snapshot.")
@click.option("--quota-bytes", type=click.IntRange(min=1 << 20, max=MAX_QUOTA),
              default=DEFAULT_QUOTA, show_default=True,
              help="The leader refuses a put or cas that would take the state past this "
              f"size (keys, values and {KEY_OVERHEAD} bytes a key: about its memory); the "
              "CLI exits 5. Deletes still go through. Give every node the same quota. At "
              "most 8 GiB.")
@click.option("--watch-history-bytes", type=click.IntRange(min=0),
              default=defaults.WATCH_BYTES, show_default=True,
              help="Keep the newest puts and deletes, up to this many bytes of keys and "
              "values, for watches; a watch from an older revision is answered COMPACTED "
              "with the oldest one kept. 0: keep none and refuse watches.")
@click.option("--state", type=click.Choice(defaults.STATES), default="memory",
              show_default=True,
              help="Where the replicated state lives. memory: a dict; snapshots are "
              "written by a forked child, and a restart loads the newest one. lmdb: an "
              "LMDB database in DATA_DIR/state, which may grow past RAM; snapshots are "
              "copies of it made on a thread, and a restart after a crash goes on from "
              "the database (after a power cut, from the newest snapshot). Give every "
              "node the same.")
@click.option("--wal-segment-bytes", type=click.IntRange(min=4096),
              default=defaults.SEGMENT_BYTES,
              show_default=True, help="Size at which the write-ahead log starts a new file.")
@click.option("--keys", "keys_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None,
              help="The cluster's key dir (`raftkv up` makes DIR/keys): the node serves "
              "CurveZMQ with the cluster's server key, presents its key node-<id> to its "
              "peers, and admits only the public keys there, each in its role (node, admin, "
              "client). See the README's security section.")
@click.option("--insecure", is_flag=True,
              help="FOR BENCHMARKS AND TEACHING ONLY: no keys, no encryption; anyone who "
              "reaches the port may read, write, and partition or reconfigure the cluster.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@metrics_port_option
def node(node_id: int, listen: str, peers: tuple[str, ...], voters: str | None, join: bool,
         new: bool, cluster_id: int, data_dir: Path, heartbeat_ms: int, election_ms: int,
         no_fsync: bool, snapshot_entries: int, snapshot_bytes: int, snapshot_jitter: float,
         snapshot_catch_up_entries: int,
         quota_bytes: int, watch_history_bytes: int, state: str, wal_segment_bytes: int,
         keys_dir: Path | None, insecure: bool, log_level: str, metrics_port: int) -> None:
    """Run one node in the foreground until SIGTERM (what `up` starts, one per node).

    \b
    raftkv node --id 1 --listen tcp://127.0.0.1:7701 --new \\
        --peer 2=tcp://127.0.0.1:7702 --peer 3=tcp://127.0.0.1:7703 --data-dir data/1 \\
        --keys cluster/keys

    --new (or --join) on the first start only: later starts leave it out, so a node
    whose data dir has vanished (an unmounted volume, a wiped disk) refuses to start.

    \b
    One of --keys DIR and --insecure is required.

    \b
    Exit codes:
      0  stopped by SIGTERM or SIGINT
      2  usage error, or --keys names no usable keys
      4  the data dir is unusable: missing or empty without --new/--join, another
         node's or cluster's, damaged, or in use; the message says how to recover
    """
    from raftkv.config import NodeConfig
    from raftkv.node import run_node
    from raftkv.security import CredentialsError
    from raftkv.storage import StorageError

    logging.basicConfig(level=log_level.upper(),
                        format=f"%(asctime)s node={node_id} %(levelname)s %(message)s")
    peer_map = dict(parse_peer(p) for p in peers)
    if node_id in peer_map:
        raise click.BadParameter(f"--peer names this node's own id {node_id}")
    if election_ms <= heartbeat_ms:
        raise click.BadParameter("--election-ms must be larger than --heartbeat-ms")
    if new and join:
        raise click.BadParameter("--new (a new cluster) and --join (a running one) exclude "
                                 "each other")
    if (keys_dir is None) == (not insecure):
        raise click.BadParameter("give exactly one of --keys DIR (the cluster's key dir; "
                                 "`raftkv up` makes DIR/keys) and --insecure")
    initial = parse_voters(voters, join)
    cfg = NodeConfig(node_id, listen, peer_map, data_dir, initial_voters=initial,
                     heartbeat_ms=heartbeat_ms,
                     election_ms=election_ms, fsync=not no_fsync,
                     snapshot_entries=snapshot_entries, snapshot_bytes=snapshot_bytes,
                     snapshot_jitter=snapshot_jitter,
                     snapshot_catch_up_entries=snapshot_catch_up_entries, quota_bytes=quota_bytes,
                     watch_bytes=watch_history_bytes, segment_bytes=wal_segment_bytes,
                     metrics_port=metrics_port,
                     cluster_id=cluster_id, create_dir=new or join, keys_dir=keys_dir,
                     state=state)
    try:
        run_node(cfg)
    except StorageError as e:
        fail(f"node {node_id}: {e}", EXIT_STORAGE)
    except CredentialsError as e:
        fail(f"node {node_id}: {e}", EXIT_USAGE)


def parse_voters(voters: str | None, join: bool) -> tuple[int, ...] | None:
    if join:
        if voters is not None:
            raise click.BadParameter("--join and --voters exclude each other")
        return ()
    if voters is None:
        return None
    try:
        ids = tuple(sorted({int(v) for v in voters.split(",")}))
    except ValueError:
        ids = ()
    if not ids or ids[0] < 1:
        raise click.BadParameter(f"--voters {voters!r}: expected node ids, e.g. 1,2,3")
    return ids


def parse_peer(value: str) -> tuple[int, str]:
    node_id, sep, address = value.partition("=")
    if not sep or not node_id.isdigit() or not address.startswith("tcp://"):
        raise click.BadParameter(
            f"{value!r}: expected ID=tcp://HOST:PORT, e.g. 2=tcp://127.0.0.1:7702")
    return int(node_id), address




@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="raftkv")
def main() -> None:
    """raftkv's server side: `node` runs one node."""


main.add_command(node)

if __name__ == "__main__":
    main(prog_name="python -m raftkv.server")
