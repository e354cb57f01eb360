"""`raftkv` — the command line. One click function per verb."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from harness.cluster_target import EXIT_UNAVAILABLE, cluster_target, load_state, target_options
from raftkv.extras import EXIT_NOT_INSTALLED
from raftkv.node_defaults import STATES
from raftkv.quota import DEFAULT_QUOTA, MAX_QUOTA
from raftkv.server import EXIT_STORAGE, EXIT_USAGE, fail, metrics_port_option
from raftkv.server import node as node_command_

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_NEGATIVE = 1  # the answer is "no": key not found, not swapped
EXIT_QUOTA = 5
EXIT_REFUSED = 6
EXIT_UNKNOWN = 7  # a write was sent and not answered: it may or may not have been applied
# 9: harness/cli_coord.py's EXIT_LOST

EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  a negative answer: key not found (get, del), not swapped (cas), an endpoint
     unhealthy (endpoint health)
  2  usage error (also: --dir and --endpoints both given, a malformed endpoint) or a
     request the cluster refused as invalid
  3  cluster unavailable: no cluster in --dir, controller down, no leader in --timeout,
     no node of --endpoints answering
  4  a node's data directory is unusable, or its disk failed (node; up and restart
     when a node refuses its dir, e.g. one that vanished: remove-node, then add-node;
     snapshot restore into a dir that is not empty)
  5  the cluster's state is at its quota (node --quota-bytes): the write was refused
     and nothing was done; delete keys to make room
  6  the cluster refused this key: none given where one is needed, one it does not
     admit, or a client key asking for an admin verb (see the README's security part)
  7  a write's outcome is unknown: it was sent and not answered in --timeout (the
     leader died or lost leadership), so it may or may not have been applied; get the
     key to find out. A write with --exactly-once rides out a leader change instead
""" + f"""\
  {EXIT_NOT_INSTALLED}  the command line is not installed: a client-only install lacks the
     server extra's packages (pip install 'raftkv[server]')
  9  a lock or a leadership was lost while held: its lease expired (lock, elect)
"""


dir_option = click.option(
    "--dir", "cluster_dir", envvar="RAFTKV_DIR", default=".raftkv", show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The cluster's directory (env RAFTKV_DIR).")
timeout_option = click.option(
    "--timeout", default=5.0, show_default=True, type=click.FloatRange(min=0.1),
    help="Seconds to wait for the cluster before giving up (exit 3; 7 for a write that "
         "was sent and not answered: its outcome is unknown).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
exactly_once_option = click.option(
    "--exactly-once", is_flag=True,
    help="Open a client session first (one more log entry and round trip), so the write "
         "can be resent safely until --timeout and rides out a leader change. Without it "
         "the write is sent at most once: one entry, one round trip, and exit 7 if it "
         "went unanswered.")


def cluster_options(timeout: float | None = None, what: str = "") -> Callable[[F], F]:
    """--dir or --endpoints (with --credentials), --timeout (the CLI's usual one, or
    `timeout` seconds for `what`) and --json."""
    wait = timeout_option if timeout is None else click.option(
        "--timeout", default=timeout, show_default=True, type=click.FloatRange(min=1),
        help=f"Seconds for {what}.")

    def decorate(f: F) -> F:
        for option in (json_option, wait, target_options, dir_option):
            f = option(f)
        return f
    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog=EXIT_CODES_HELP)
@click.version_option(package_name="raftkv")
def main() -> None:
    """raftkv: a Raft-replicated, durable, linearizable key/value store.

    \b
    raftkv up                 start a 3-node cluster in ./.raftkv (data kept across runs)
    raftkv put KEY VALUE      replicated to a majority and fsynced before OK
    raftkv get KEY            linearizable read through the leader
    raftkv kill-leader        SIGKILL the leader; a new one takes over
    raftkv status             who leads, terms, indexes, cpu and memory
    raftkv down               stop everything; `up` brings it back with its data

    Nodes run by hand (`raftkv node` on each machine): give the data verbs and the
    endpoint, member and snapshot verbs --endpoints HOST:PORT,... (env RAFTKV_ENDPOINTS)
    instead of --dir, and --credentials KEYS for a cluster with keys.

    \b
    raftkv get KEY --endpoints h1:7701,h2:7702,h3:7703
    raftkv endpoint status    each node's role, term, indexes, state size
    raftkv endpoint health    a linearizable read through each node (exit 1 if one fails)
    raftkv member list|add|remove
    raftkv snapshot save FILE / snapshot restore FILE --data-dir D --id N --voters 1,2,3
    """


# -- talking to the cluster -----------------------------------------------------------------

def control(state: Any, name: str, *args: Any, timeout: float = 5.0) -> Any:
    """Run a controller command; exits with the documented code when it fails."""
    import zmq

    from harness.rpc import ControlError
    from harness.rpc import control as run_control

    with zmq.Context() as ctx:
        try:
            return run_control(ctx, state.controller.address, name, *args, timeout=timeout)
        except ControlError as e:
            fail(str(e), control_exit_code(e.code))


def control_exit_code(code: Any) -> int:
    """The exit code of a controller command the controller refused (code None: it did
    not answer)."""
    from raftkv.wire import ReplyCode

    if code == ReplyCode.BAD_REQUEST:
        return EXIT_USAGE
    return EXIT_REFUSED if code == ReplyCode.FORBIDDEN else EXIT_UNAVAILABLE


def with_client(cluster_dir: Path, timeout: float, fn: Callable[[Any], Any]) -> Any:
    """Run `fn(client)` against the cluster the verb names (--endpoints: the nodes; --dir:
    its controller), mapping errors to exit codes (a lease that is gone: 1)."""
    import raftkv

    target = cluster_target(cluster_dir)
    try:
        with target.client(timeout) as kv:
            return fn(kv)
    except raftkv.BadRequest as e:
        fail(str(e), EXIT_USAGE)
    except raftkv.LeaseNotFound as e:
        fail(str(e), EXIT_NEGATIVE)
    except raftkv.QuotaExceeded as e:
        fail(str(e), EXIT_QUOTA)
    except (raftkv.Forbidden, raftkv.AuthenticationFailed) as e:
        fail(str(e), EXIT_REFUSED)
    except raftkv.Timeout as e:
        fail(str(e), EXIT_UNKNOWN)
    except raftkv.Unavailable as e:
        fail(str(e), EXIT_UNAVAILABLE)


def print_answer(word: str, as_json: bool, negative: bool = False, **extra: Any) -> None:
    """WORD, or with --json {"result": WORD, **extra}; exit 1 when `negative`."""
    click.echo(json.dumps({"result": word, **extra}) if as_json else word)
    if negative:
        sys.exit(EXIT_NEGATIVE)


# -- cluster lifecycle ----------------------------------------------------------------------

@main.command()
@dir_option
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 15),
              help="Cluster size (for a new cluster; an existing one keeps its size).")
@click.option("--base-port", default=7700, show_default=True, type=click.IntRange(1, 65000),
              help="Controller port; node i listens on base-port + i.")
@click.option("--no-fsync", is_flag=True,
              help="FOR BENCHMARKS ONLY: nodes skip fsync, so a machine crash can lose "
                   "acknowledged writes.")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for a leader (exit 3 after).")
@click.option("--quota-bytes", type=click.IntRange(min=1 << 20, max=MAX_QUOTA), default=None,
              help="For a new cluster: every node's --quota-bytes (the state's size past "
              f"which puts are refused; default {DEFAULT_QUOTA >> 30} GiB, at most "
              f"{MAX_QUOTA >> 30} GiB). An existing cluster keeps its own.")
@click.option("--state", type=click.Choice(STATES), default=None,
              help="For a new cluster: where every node keeps the replicated state "
              "(`raftkv node --state`; default memory). lmdb suits a state of millions of "
              "keys: it may grow past RAM, snapshots never copy it into memory, and a "
              "restart after a crash goes on from it; keys are at most 510 bytes. An "
              "existing cluster keeps its own.")
@click.option("--insecure", is_flag=True,
              help="FOR BENCHMARKS AND TEACHING ONLY, for a new cluster: no keys and no "
              "encryption, so anyone who reaches a port may read, write, partition and "
              "reconfigure the cluster. By default `up` makes the cluster's keys in "
              "DIR/keys and its processes admit only those.")
@json_option
def up(cluster_dir: Path, nodes: int, base_port: int, no_fsync: bool, timeout: float,
       quota_bytes: int | None, state: str | None, insecure: bool, as_json: bool) -> None:
    """Start the cluster in --dir (a new one, or the same nodes with their data) and wait
    for a leader. Idempotent: a cluster already up is left as it is. --json: the status
    map (`status --json`) with "started" (false if it was up already).

    A new cluster gets a random cluster id, and each node may create its data dir on its
    first start only: a node whose dir has vanished since refuses to start, and `up`
    exits 4 with the node's message (remove-node, then add-node, if the data is gone)."""
    from harness.launcher import LaunchError
    from harness.launcher import up as launch

    try:
        state, started = launch(cluster_dir, nodes=nodes, base_port=base_port,
                                fsync=not no_fsync, timeout=timeout,
                                progress=lambda m: click.echo(m, err=True),
                                node_options=node_options(quota_bytes, state),
                                secure=not insecure)
    except LaunchError as e:
        fail(str(e), EXIT_STORAGE if e.storage else EXIT_UNAVAILABLE)
    if not started:
        say(f"cluster in {state.dir} is already up", as_json)
    wait_for_controller_leader(state, timeout)
    st = control(state, "status")
    if as_json:
        click.echo(json.dumps({**st, "started": bool(started)}))
        return
    print_status_table(st)


def node_options(quota_bytes: int | None, state: str | None) -> tuple[str, ...]:
    """The `raftkv node` options a new cluster's nodes get from `up`'s."""
    options: tuple[str, ...] = ()
    if quota_bytes is not None:
        options += ("--quota-bytes", str(quota_bytes))
    if state is not None:
        options += ("--state", state)
    return options


def wait_for_controller_leader(state: Any, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = control(state, "status", timeout=timeout)
        if st.get("leader") is not None or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


@main.command()
@dir_option
@click.option("--grace", default=5.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds between SIGTERM and SIGKILL.")
@json_option
def down(cluster_dir: Path, grace: float, as_json: bool) -> None:
    """Stop the controller and every node. Data stays on disk; `up` brings it back.
    --json: {"stopped": [name, ...]}."""
    from harness.launcher import down as stop_all

    stopped = stop_all(cluster_dir, grace)
    if as_json:
        click.echo(json.dumps({"stopped": stopped}))
        return
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@main.command()
@dir_option
@json_option
@click.option("--watch", is_flag=True, help="Refresh the table every second until Ctrl-C.")
@timeout_option
def status(cluster_dir: Path, as_json: bool, watch: bool, timeout: float) -> None:
    """Who leads, each node's role, term, log/commit/applied index, cpu and memory."""
    state = load_state(cluster_dir)
    if as_json:
        click.echo(json.dumps(control(state, "status", timeout=timeout)))
        return
    if not watch:
        print_status_table(control(state, "status", timeout=timeout))
        return
    try:
        while True:
            st = control(state, "status", timeout=timeout)
            click.clear()
            click.echo(time.strftime("%H:%M:%S") + "  (Ctrl-C to stop)")
            print_status_table(st)
            time.sleep(1)
    except KeyboardInterrupt:
        pass


def print_status_table(st: dict) -> None:
    leader = st.get("leader")
    click.echo(f"leader: {leader if leader is not None else 'none'}   term: {st.get('term')}")
    cols = ("ID", "ADDRESS", "PID", "ALIVE", "MEMBER", "ROLE", "TERM", "LAST", "COMMIT",
            "APPLIED", "CPU%", "RSS MB")
    rows = []
    for n in st.get("nodes", []):
        rss = n.get("rss_bytes")
        rows.append((n["id"], n.get("address", ""), n.get("pid") or "-",
                     ("paused" if n.get("paused") else "yes") if n.get("alive") else "no",
                     n.get("member") or "-", n.get("role") or "-", _dash(n.get("term")),
                     _dash(n.get("last_index")),
                     _dash(n.get("commit_index")), _dash(n.get("applied_index")),
                     _dash(n.get("cpu_percent")), f"{rss / 2**20:.1f}" if rss else "-"))
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(cols)]
    for row in (cols, *rows):
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
    for n in st.get("nodes", []):
        if n.get("repair"):
            click.echo(f"node {n['id']} is REPAIRING its log (no votes until caught up): "
                       f"{n['repair']}")
    print_metrics_lines(st)


def print_metrics_lines(st: dict) -> None:
    """Per node: the election, fsync, loop and snapshot figures its /metrics also
    serves, and its state's size against its quota."""
    for n in st.get("nodes", []):
        c, f = n.get("counters"), n.get("fsync_ms")
        if not c or not f:
            continue
        port = n.get("metrics_port")
        host = n.get("address", "").removeprefix("tcp://").rpartition(":")[0]
        click.echo(f"node {n['id']}: elections started {c.get('elections_started', 0)}, won "
                   f"{c.get('elections_won', 0)}; proposals {c.get('proposals', 0)}; fsync "
                   f"p50 {_dash(f['p50'])} ms, p99 {_dash(f['p99'])} ms of {f['count']}"
                   + (f"; http://{host}:{port}/metrics" if port else ""))
        kv = n.get("kv") or {}
        size = (f"; state {kv['bytes'] / 2**20:,.1f} MiB of its {kv['quota_bytes'] / 2**20:,.0f}"
                " MiB quota" if "bytes" in kv else "")
        click.echo(f"  longest loop turn {_dash(c.get('longest_turn_ms'))} ms; snapshots "
                   f"{c.get('snapshots_taken', 0)} taken, {c.get('snapshots_failed', 0)} "
                   f"failed, the last in {_dash(c.get('last_snapshot_ms'))} ms, stopping the "
                   f"loop {_dash(c.get('last_snapshot_start_ms'))} ms to start and "
                   f"{_dash(c.get('last_snapshot_adopt_ms'))} ms to adopt" + size)


def _dash(v: Any) -> Any:
    return "-" if v is None else v


# -- data -----------------------------------------------------------------------------------

@main.command()
@click.argument("key")
@click.argument("value")
@dir_option
@target_options
@timeout_option
@json_option
@exactly_once_option
@click.option("--lease", "lease_id", type=click.IntRange(min=1), default=None,
              help="Attach KEY to this lease (raftkv lease grant): it is deleted when the "
                   "lease ends. Exit 1 if the lease is gone.")
def put(key: str, value: str, cluster_dir: Path, timeout: float, as_json: bool,
        exactly_once: bool, lease_id: int | None) -> None:
    """Set KEY to VALUE (-: the bytes on stdin, as they are). OK means it is durable on a
    majority; --json adds the write's revision (its log index, now KEY's mod_revision)."""
    data: str | bytes = sys.stdin.buffer.read() if value == "-" else value
    revision = with_client(cluster_dir, timeout, lambda kv: kv.put(
        key, data, lease=lease_id, at_most_once=not exactly_once))
    print_answer("OK", as_json, revision=revision)


@main.command()
@click.argument("key")
@dir_option
@target_options
@timeout_option
@json_option
@click.option("--stale", is_flag=True, help="Read from any node's applied state (faster, may "
              "be out of date) instead of a linearizable read.")
def get(key: str, cluster_dir: Path, timeout: float, as_json: bool, stale: bool) -> None:
    """Print KEY's value. A missing key prints nothing, says so on stderr, exits 1.
    --json adds its create_revision, mod_revision and version (not with --stale)."""
    if as_json and not stale:
        item = with_client(cluster_dir, timeout, lambda kv: kv.get_kv(key))
        value = None if item is None else item.value
    else:
        item = None
        value = with_client(cluster_dir, timeout, lambda kv: kv.get(
            key, consistency="stale" if stale else "linearizable"))
    if as_json:
        out = {"key": key, "found": value is not None,
               "value": None if value is None else value.decode("utf-8", "backslashreplace")}
        if item is not None:
            out.update(create_revision=item.create_revision,
                       mod_revision=item.mod_revision, version=item.version)
        click.echo(json.dumps(out))
    elif value is not None:
        sys.stdout.buffer.write(value + b"\n")
        sys.stdout.flush()
    if value is None:
        if not as_json:
            click.echo(f"raftkv: key not found: {key}", err=True)
        sys.exit(EXIT_NEGATIVE)


@main.command(name="del")
@click.argument("key")
@dir_option
@target_options
@timeout_option
@json_option
@exactly_once_option
def delete(key: str, cluster_dir: Path, timeout: float, as_json: bool,
           exactly_once: bool) -> None:
    """Delete KEY: prints OK, or NOT FOUND (exit 1) when it did not exist."""
    existed = with_client(cluster_dir, timeout,
                          lambda kv: kv.delete(key, at_most_once=not exactly_once))
    print_answer("OK" if existed else "NOT FOUND", as_json, negative=not existed)


@main.command()
@click.argument("key")
@click.argument("expected")
@click.argument("new")
@dir_option
@target_options
@timeout_option
@json_option
@exactly_once_option
@click.option("--absent", is_flag=True,
              help="Swap only if KEY does not exist (EXPECTED is then ignored; pass '').")
@click.option("--mod-revision", type=click.IntRange(min=0), default=None,
              help="Swap only if KEY's mod_revision is this (0: absent) instead of comparing "
              "its value, which a value put back since cannot fool (EXPECTED is then "
              "ignored; pass ''). `get --json` shows it.")
def cas(key: str, expected: str, new: str, cluster_dir: Path, timeout: float, as_json: bool,
        exactly_once: bool, absent: bool, mod_revision: int | None) -> None:
    """Set KEY to NEW only if it now holds EXPECTED: SWAPPED, or NOT SWAPPED (exit 1)."""
    want = None if absent or mod_revision is not None else expected
    swapped = with_client(cluster_dir, timeout, lambda kv: kv.cas(
        key, want, new, mod_revision=mod_revision, at_most_once=not exactly_once))
    print_answer("SWAPPED" if swapped else "NOT SWAPPED", as_json, negative=not swapped)


@main.command()
@click.argument("prefix", default="")
@dir_option
@target_options
@timeout_option
@json_option
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000),
              help="At most this many pairs (one request).")
@click.option("--start", default=None, help="Skip keys below this one (page on with the "
              "last key printed, plus a zero byte; or use --all).")
@click.option("--all", "every", is_flag=True,
              help="Every matching key, in pages of --limit (each page read on its own).")
def scan(prefix: str, cluster_dir: Path, timeout: float, as_json: bool, limit: int,
         start: str | None, every: bool) -> None:
    """List keys starting with PREFIX, in key order, with their values."""
    pairs = with_client(cluster_dir, timeout, lambda kv: list(
        kv.scan_iter(prefix, start=start, page=limit) if every
        else kv.scan(prefix, limit, start=start)))
    if as_json:
        click.echo(json.dumps([[k.decode("utf-8", "backslashreplace"),
                                v.decode("utf-8", "backslashreplace")] for k, v in pairs]))
        return
    for k, v in pairs:
        sys.stdout.buffer.write(k + b"\t" + v + b"\n")
    sys.stdout.flush()


@main.command()
@click.argument("key")
@dir_option
@target_options
@json_option
@click.option("--prefix", is_flag=True, help="Every key starting with KEY.")
@click.option("--rev", "start", type=click.IntRange(min=1), default=None,
              help="From this revision on (default: from the next write).")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Exit after this many events (default: until Ctrl-C).")
def watch(key: str, cluster_dir: Path, as_json: bool, prefix: bool, start: int | None,
          count: int | None) -> None:
    """Print KEY's puts and deletes as they are applied, one line each: revision, PUT or
    DELETE, key and value, tab-separated (--json: an object a line). Rides out leader
    changes without missing or repeating one. A revision the cluster no longer keeps
    exits 1, naming the oldest it has."""
    import raftkv

    def follow(kv: raftkv.Client) -> None:
        seen = 0
        try:
            for event in kv.watch(key, prefix=prefix, start_revision=start):
                value = event.value or b""
                if as_json:
                    click.echo(json.dumps({
                        "revision": event.revision, "type": event.type,
                        "key": event.key.decode("utf-8", "backslashreplace"),
                        "value": None if event.value is None
                        else value.decode("utf-8", "backslashreplace")}))
                else:
                    sys.stdout.buffer.write(b"%d\t%s\t%s\t%s\n" % (
                        event.revision, event.type.upper().encode(), event.key, value))
                    sys.stdout.flush()
                seen += 1
                if count is not None and seen >= count:
                    return
        except raftkv.Compacted as e:
            fail(f"{e}: read the state again (get, scan), then watch with --rev after it",
                 EXIT_NEGATIVE)
        except KeyboardInterrupt:
            pass

    with_client(cluster_dir, 5.0, follow)


# -- faults ---------------------------------------------------------------------------------

@main.command(name="kill-leader")
@dir_option
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for the new leader (exit 3 after).")
@json_option
def kill_leader(cluster_dir: Path, timeout: float, as_json: bool) -> None:
    """SIGKILL the leader's process, then wait for and print the new leader (--json: one
    object, {"killed", "term", "leader", "leader_term"})."""
    state = load_state(cluster_dir)
    killed = control(state, "kill-leader", timeout=timeout)
    say(f"killed node {killed['killed']}, the leader of term {killed['term']}", as_json)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = control(state, "status", timeout=timeout)
        if st.get("leader") not in (None, killed["killed"]):
            say(f"node {st['leader']} is the new leader (term {st['term']})", as_json)
            if as_json:
                click.echo(json.dumps({**killed, "leader": st["leader"],
                                       "leader_term": st["term"]}))
            return
        time.sleep(0.05)
    fail(f"no new leader within {timeout:g}s", EXIT_UNAVAILABLE)


def say(line: str, as_json: bool) -> None:
    """A line of progress: stdout, or stderr when stdout carries --json's one object."""
    click.echo(line, err=as_json)


# What each controller command's answer says, as text (--json prints the answer).
_DONE_TEXT: dict[str, Callable[[dict], str]] = {
    "killed": lambda r: f"killed node {r['killed']}",
    "not_running": lambda r: f"node {r['not_running']} was not running",
    "restarted": lambda r: f"started node {r['restarted']} (pid {r['pid']})",
    "already_running": lambda r: f"node {r['already_running']} is already running",
    "paused": lambda r: f"paused node {r['paused']}",
    "resumed": lambda r: f"resumed node {r['resumed']}",
    "transferring_to": lambda r: (f"node {r['from']} is handing leadership to node "
                                  f"{r['transferring_to']}"),
    "groups": lambda r: "partitioned: " + " | ".join(",".join(map(str, g))
                                                     for g in r["groups"]),
    "healed": lambda r: f"healed: nodes {', '.join(map(str, r['healed']))} talk freely",
}


def print_done(result: Any, as_json: bool) -> None:
    """A controller command's answer: JSON with --json, else a sentence."""
    if as_json:
        click.echo(json.dumps(result))
        return
    text = next((f(result) for k, f in _DONE_TEXT.items()
                 if isinstance(result, dict) and k in result), None)
    click.echo(text if text is not None else json.dumps(result))


def node_command(name: str, doc: str) -> None:
    @main.command(name=name, help=doc)
    @click.argument("node_id", metavar="NODE", type=click.IntRange(min=1))
    @dir_option
    @timeout_option
    @json_option
    def command(node_id: int, cluster_dir: Path, timeout: float, as_json: bool) -> None:
        state = load_state(cluster_dir)
        result = control(state, name, node_id, timeout=timeout)
        if name == "restart":
            say(_DONE_TEXT["restarted"](result) if "restarted" in result
                else _DONE_TEXT["already_running"](result), as_json)
            back = wait_until_rejoined(state, node_id, timeout, as_json)
            result = {**result, "role": back["role"], "term": back["term"]}
            if as_json:
                click.echo(json.dumps(result))
            return
        print_done(result, as_json)


def wait_until_rejoined(state: Any, node_id: int, timeout: float,
                        as_json: bool = False) -> dict:
    """Wait until the restarted node answers (its status entry); fail with its exit code
    and log tail if it exits first (exit 4 when it refused its data dir)."""
    from harness.launcher import exited_at_start

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = control(state, "status", timeout=timeout)
        node = next(n for n in st["nodes"] if n["id"] == node_id)
        if node.get("role") is not None:
            say(f"node {node_id} is back: {node['role']} in term {node['term']}", as_json)
            return node
        if node.get("exit_code") is not None:
            e = exited_at_start(state, state.node(node_id), node["exit_code"])
            fail(str(e), EXIT_STORAGE if e.storage else EXIT_UNAVAILABLE)
        time.sleep(0.05)
    fail(f"node {node_id} did not answer within {timeout:g}s; see `raftkv logs {node_id}`",
         EXIT_UNAVAILABLE)


node_command("kill", "SIGKILL node NODE's process.")
node_command("restart", "Start node NODE again (if it is not running); it rejoins with its "
                        "data. Exit 4 if it refuses its data dir (e.g. the dir is gone).")
node_command("pause", "SIGSTOP node NODE (it keeps its sockets but does nothing).")
node_command("resume", "SIGCONT a paused node NODE.")
node_command("transfer-leader", "Ask the leader to hand leadership to node NODE.")


# -- membership ----------------------------------------------------------------------------

def run_membership(fn: Callable[..., Any], *args: Any, as_json: bool = False,
                   **kwargs: Any) -> Any:
    """Run a harness.membership step, mapping its failures to exit codes. Progress goes
    to stdout, or to stderr when stdout carries --json."""
    import zmq

    from harness.membership import MembershipError
    from harness.rpc import ControlError

    with zmq.Context() as ctx:
        try:
            return fn(ctx, *args, progress=lambda m: click.echo(m, err=as_json), **kwargs)
        except ControlError as e:
            fail(str(e), control_exit_code(e.code))
        except MembershipError as e:
            fail(str(e), EXIT_UNAVAILABLE)


@main.command(name="add-node")
@dir_option
@click.option("--id", "node_id", type=click.IntRange(min=1), default=None,
              help="The new node's id (default: one past every id used so far).")
@click.option("--learner", is_flag=True,
              help="Leave it a non-voting learner (no promotion).")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds to wait for the new node to catch up before promoting it.")
@json_option
def add_node(cluster_dir: Path, node_id: int | None, learner: bool, timeout: float,
             as_json: bool) -> None:
    """Start a new node and add it to the cluster: it joins as a learner, catches up
    (a snapshot, then the log), and is promoted to voter (Raft thesis §4.1-4.2)."""
    from harness.membership import add_node as run_add

    state = load_state(cluster_dir)
    result = run_membership(run_add, state.controller.address, node_id=node_id,
                            promote=not learner, timeout=timeout, as_json=as_json)
    if as_json:
        click.echo(json.dumps(result))


@main.command(name="remove-node")
@click.argument("node_id", metavar="NODE", type=click.IntRange(min=1))
@dir_option
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds to wait for leadership to move away from NODE.")
@json_option
def remove_node(node_id: int, cluster_dir: Path, timeout: float, as_json: bool) -> None:
    """Remove node NODE from the cluster and stop it. If it leads, leadership moves to
    the most caught-up other voter first. Its data directory is kept."""
    from harness.membership import remove_node as run_remove

    state = load_state(cluster_dir)
    result = run_membership(run_remove, state.controller.address, node_id, timeout=timeout,
                            as_json=as_json)
    if as_json:
        click.echo(json.dumps(result))


@main.command()
@click.argument("groups", nargs=-1, required=True)
@dir_option
@timeout_option
@json_option
def partition(groups: tuple[str, ...], cluster_dir: Path, timeout: float,
              as_json: bool) -> None:
    """Split the cluster: GROUPS like `1,2 3` cannot talk to each other (nodes not named
    form one more group). Lasts until `heal`. --json: {"groups": [[id, ...], ...]}."""
    for g in groups:
        if not all(part.strip().isdigit() for part in g.split(",")):
            raise click.BadParameter(f"{g!r}: a group is node ids separated by commas, e.g. 1,2")
    print_done(control(load_state(cluster_dir), "partition", *groups, timeout=timeout),
               as_json)


@main.command()
@dir_option
@timeout_option
@json_option
def heal(cluster_dir: Path, timeout: float, as_json: bool) -> None:
    """Remove every partition. --json: {"healed": [id, ...]}."""
    print_done(control(load_state(cluster_dir), "heal", timeout=timeout), as_json)


# -- dashboard ------------------------------------------------------------------------------

def dashboard_token(value: str | None) -> str:
    """--token checked, or a new random token when it is not given."""
    from harness.dashboard.app import check_token, new_token

    if value is None:
        return new_token()
    try:
        return check_token(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e


@main.command()
@dir_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on. The page can kill nodes: keep it on loopback "
                   "unless every user of that network may.")
@click.option("--port", default=7780, show_default=True, type=click.IntRange(1, 65535))
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a browser.")
@click.option("--token", envvar="RAFTKV_DASHBOARD_TOKEN", show_envvar=True, metavar="TOKEN",
              callback=lambda _ctx, _param, value: dashboard_token(value),
              help="The token every request but the page itself must carry (header "
                   "X-Raftkv-Token; the page takes it from the ?token= of its URL). "
                   "Default: a new random one at each start, printed in the URL. Fix it "
                   "for scripts; printable ASCII, no spaces; keep it secret.")
def dashboard(cluster_dir: Path, host: str, port: int, open_browser: bool,
              token: str) -> None:
    """Serve a live web page of the cluster: a card per node, each node's log as a strip
    coloured by term, a timeline of elections and faults, and buttons that run the same
    controller commands as the CLI verbs. Prints the page's URL, with the token that
    every control request (and every view but the page) needs. Runs until Ctrl-C."""
    import webbrowser

    from harness.dashboard.app import run_dashboard

    state = load_state(cluster_dir)

    def ready(url: str) -> None:
        click.echo(f"dashboard of {state.dir} on {url} (Ctrl-C stops)", err=True)
        if open_browser:
            webbrowser.open(url)

    try:
        run_dashboard(state.controller.address, host, port, token, ready)
    except OSError as e:
        fail(f"cannot serve on {host}:{port}: {e}", EXIT_UNAVAILABLE)


# -- logs -----------------------------------------------------------------------------------

@main.command()
@click.argument("which", metavar="[NODE]", required=False)
@dir_option
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C stops).")
@click.option("-n", "--lines", default=50, show_default=True, help="Lines of history per log.")
def logs(which: str | None, cluster_dir: Path, follow: bool, lines: int) -> None:
    """Show the logs: one node's (NODE is an id, or `controller`), or all of them."""
    state = load_state(cluster_dir)
    entries = {str(n.id): n.log for n in state.nodes} | {"controller": state.controller.log}
    if which is not None and which not in entries:
        raise click.BadParameter(f"{which!r}: expected a node id ({', '.join(entries)})")
    paths = [state.dir / entries[which]] if which else [state.dir / p for p in entries.values()]
    offsets = {}
    for p in paths:
        text = p.read_text(errors="replace") if p.exists() else ""
        for line in text.splitlines()[-lines:]:
            click.echo(line if which else f"{p.stem}: {line}")
        offsets[p] = len(text.encode())
    try:
        while follow:
            for p in paths:
                if p.exists() and p.stat().st_size > offsets[p]:
                    with open(p, "rb") as f:
                        f.seek(offsets[p])
                        chunk = f.read()
                    offsets[p] += len(chunk)
                    for line in chunk.decode(errors="replace").splitlines():
                        click.echo(line if which else f"{p.stem}: {line}")
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass


# -- processes ------------------------------------------------------------------------------

@main.command()
@dir_option
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@metrics_port_option
def controller(cluster_dir: Path, log_level: str, metrics_port: int) -> None:
    """Run the controller in the foreground (what `up` starts): routes client requests
    to the leader and carries out kill/restart/pause/partition commands."""
    from harness.controller import run_controller

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s controller %(levelname)s %(message)s")
    run_controller(cluster_dir.resolve(), metrics_port=metrics_port)


@main.command()
@click.option("--nodes", default=5, show_default=True, type=click.IntRange(3, 9))
@click.option("--time", "run_time", default=60.0, show_default=True,
              type=click.FloatRange(min=5), help="Seconds of load and faults.")
@click.option("--clients", default=8, show_default=True, type=click.IntRange(1, 64),
              help="Client processes doing random operations.")
@click.option("--keys", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--nemesis", default="kill,pause,partition,leader-partition,restart-all",
              show_default=True, help="Fault kinds, comma-separated.")
@click.option("--seed", default=None, type=int, help="Seed of the fault schedule and the "
              "clients' choices (default: random, printed).")
@click.option("--dir", "run_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Run directory (default: a new temp dir, kept).")
@click.option("--check-timeout", default=120.0, show_default=True,
              type=click.FloatRange(min=1), help="Budget of the linearizability check; past "
              "it the verdict is 'unknown', never 'ok'.")
@click.option("--preload", default=0, show_default=True, type=click.IntRange(0, 10_000_000),
              help="Filler keys (100-byte values) written before the faults start, which "
              "the checks ignore: a large state for nodes to snapshot, restart from and "
              "send while faults come (a snapshot every 100,000 entries).")
@click.option("--state", type=click.Choice(STATES), default="memory",
              show_default=True, help="Where the nodes keep the state (`raftkv up --state`).")
@click.option("--workload", type=click.Choice(("register", "txn")), default="register",
              show_default=True,
              help="register: get/put/delete/cas, checked one key at a time; txn: "
              "transfers between --keys accounts (multi-key txns comparing mod_revision), "
              "get_kv, audits, cas by mod_revision, puts and deletes, checked by the "
              "checker's revisions model over all keys at once.")
@click.option("--coordination", is_flag=True,
              help="Also run lock contenders and short leases through the faults, and check "
                   "that no lock had two live holders, fencing tokens grew, and no lease was "
                   "revoked before its TTL ran (locks.jsonl, leases.jsonl).")
def chaos(nodes: int, run_time: float, clients: int, keys: int, nemesis: str,
          seed: int | None, run_dir: Path | None, check_timeout: float,
          preload: int, state: str, workload: str, coordination: bool) -> None:
    """Run a cluster under random faults and check what clients saw was linearizable.

    \b
    Exit codes: 0 all checks passed; 1 a violation (linearizability, a lost
    acknowledged write, nodes that diverged, a watch that missed or repeated an event,
    a lock held twice, a lease revoked early); 3 the cluster never recovered.
    """
    import random

    from harness.chaos import ChaosConfig, run_chaos
    from harness.nemesis import KINDS

    kinds = tuple(k.strip() for k in nemesis.split(",") if k.strip())
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise click.BadParameter(f"unknown fault kind(s) {sorted(unknown)}; known: "
                                 f"{', '.join(KINDS)}", param_hint="--nemesis")
    seed = seed if seed is not None else random.SystemRandom().randrange(1_000_000)
    if workload == "txn" and keys < 2:
        raise click.BadParameter("a transfer needs two accounts", param_hint="--keys")
    report = run_chaos(ChaosConfig(nodes, run_time, clients, keys, kinds, seed, run_dir,
                                   check_timeout, preload, state, workload, coordination),
                       log=lambda m: click.echo(m))
    sys.exit(report.exit_code)


@main.command()
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 15),
              help="Cluster size of the temp cluster.")
@click.option("--clients", default=64, show_default=True, type=click.IntRange(min=1),
              help="Requests kept in flight (closed loop), over all load processes.")
@click.option("--duration", default=20.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds counted, after the warm-up.")
@click.option("--warmup", default=2.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds of load before counting starts.")
@click.option("--value-size", default=100, show_default=True,
              type=click.IntRange(1, 1 << 20), help="Bytes per value.")
@click.option("--key-space", default=10_000, show_default=True,
              type=click.IntRange(1, 10_000_000), help="Keys drawn uniformly from this many.")
@click.option("--mix", default="put", show_default=True,
              help="put, get, or mixed:R/W (R% gets, W% puts, e.g. mixed:90/10). A mix "
                   "with gets first writes every key once.")
@click.option("--consistency", default="linearizable", show_default=True,
              type=click.Choice(["linearizable", "stale"]),
              help="Gets: ReadIndex on the leader, or any node's applied state.")
@click.option("--via", default="direct", show_default=True,
              type=click.Choice(["direct", "controller"]),
              help="Straight to the nodes, following the leader (a NOT_LEADER answer "
                   "sends the request again, unchanged, to the node it names; a node "
                   "silent for 0.5 s is left for the next), or through the controller.")
@click.option("--processes", default=0, show_default=True, type=click.IntRange(min=0),
              help="Load processes (0: one per 64 requests in flight; more only "
                   "contend for the cores).")
@click.option("--no-fsync", is_flag=True,
              help="FOR BENCHMARKS ONLY: the temp cluster's nodes skip fsync.")
@click.option("--insecure", is_flag=True,
              help="FOR BENCHMARKS ONLY: the temp cluster runs without keys or encryption "
                   "(`raftkv up --insecure`); a run with and one without it, alternated, "
                   "give the cost of security.")
@click.option("--state", type=click.Choice(STATES), default="memory",
              show_default=True, help="Where the temp cluster's nodes keep the state "
              "(`raftkv up --state`).")
@click.option("--failover", is_flag=True,
              help="Instead of load: kill the leader (controller kill-leader) while a "
                   "writer writes, time until writes resume, restart the node; repeat.")
@click.option("--failover-rounds", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--dir", "cluster_dir", default=None,
              type=click.Path(file_okay=False, path_type=Path),
              help="Use the running cluster of `raftkv up --dir DIR` (it keeps its size and "
                   "fsync; bench-key-* keys are written) instead of a temp one.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw throughput over time and the latency histogram to this PNG "
                   "(needs matplotlib: the `plot` extra).")
@json_option
def bench(nodes: int, clients: int, duration: float, warmup: float, value_size: int,
          key_space: int, mix: str, consistency: str, via: str, processes: int,
          no_fsync: bool, insecure: bool, state: str, failover: bool, failover_rounds: int,
          cluster_dir: Path | None, out: Path | None, as_json: bool) -> None:
    """Benchmark a cluster: closed-loop load from client processes, then ops/s, latency
    percentiles, errors, and each node's CPU and memory. Starts its own cluster in a temp
    dir unless --dir names a running one. A progress line goes to stderr.

    ops/s counts OK answers only; every failure (any other answer, or none) is counted
    in errors/s, apart, in the progress line, the timeline, --json and --out. With --via
    direct, requests re-routed to the leader are counted as re-routes, not failures.

    \b
    raftkv bench                                  64 puts in flight for 20 s
    raftkv bench --clients 1                      one put at a time
    raftkv bench --mix get                        linearizable gets
    raftkv bench --mix mixed:90/10 --via controller
    raftkv bench --failover                       10 x kill-leader: when do writes resume?

    Exit 0 with figures (errors are counted, not fatal); 2 bad options; 3 no cluster or
    no leader.
    """
    from harness.bench import BenchConfig, BenchError, draw_plot, format_report, run_bench, to_json
    from harness.loadgen import parse_mix

    try:
        parse_mix(mix)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--mix") from e
    cfg = BenchConfig(nodes=nodes, clients=clients, duration=duration, warmup=warmup,
                      value_size=value_size, key_space=key_space, mix=mix,
                      consistency=consistency, via=via, fsync=not no_fsync,
                      secure=not insecure, state=state,
                      processes=processes, cluster_dir=cluster_dir, failover=failover,
                      failover_rounds=failover_rounds)
    try:
        report = run_bench(cfg)
        if out is not None and not failover:
            draw_plot(report, out)
    except BenchError as e:
        fail(str(e), EXIT_UNAVAILABLE)
    click.echo(to_json(report) if as_json else format_report(report))


main.add_command(node_command_)

# The verbs of other modules register themselves on `main`: those that work on any
# deployment (endpoint, member, snapshot) and the coordination verbs (lease, lock,
# elect). Imported last, since they use what this module defines.
import harness.cli_cluster  # noqa: E402,F401
import harness.cli_coord  # noqa: E402,F401

if __name__ == "__main__":
    # `python -m harness.cli` runs this file as __main__, a copy apart from harness.cli,
    # on whose `main` the other modules' verbs registered: run that one.
    from harness.cli import main as registered

    registered(prog_name="raftkv")
