"""The verbs that work on any deployment, a `raftkv up` cluster (--dir) or nodes run by
hand (--endpoints): `endpoint status|health`, `member list|add|promote|remove`,
`snapshot save|restore`. They talk to the nodes themselves (STATUS, GET, CONF_CHANGE,
TRANSFER, SCAN, WATCH), never to the controller's commands, so both kinds of cluster
take one code path. Registered on harness.cli's `main` group when that module loads.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click

from harness.cli import (
    EXIT_NEGATIVE,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    cluster_options,
    json_option,
    main,
    with_client,
)
from harness.cluster_target import (
    ClusterTarget,
    EndpointsError,
    cluster_target,
    parse_address,
)
from raftkv.kv import KeyValue
from raftkv.raft import ConfOp
from raftkv.server import EXIT_STORAGE, EXIT_USAGE, HEX64, fail, parse_voters
from raftkv.wire import ClientReply, ClientRequest, ReplyCode, ReqOp

HEALTH_KEY = b"health"  # what `endpoint health` reads (etcd's choice); it need not exist
RETRY_PAUSE_S = 0.05  # between attempts at a request the cluster cannot serve yet
SAVE_ATTEMPTS = 3  # `snapshot save` starts over this often when leadership moves


# -- asking the nodes ------------------------------------------------------------------------

def ask(cluster: ClusterTarget, address: str, op: ReqOp, timeout: float, /,
        **fields: Any) -> ClientReply | None:
    """One request to the node at `address`, with the cluster's keys; None if it did not
    answer within `timeout` (down, unreachable, or refusing our keys). `fields` are the
    request's (a CONF_CHANGE's or TRANSFER's `target` is a node id)."""
    import zmq

    from harness import rpc

    with zmq.Context() as ctx:
        return rpc.call(ctx, address, ClientRequest(rpc.next_request_id(), op, **fields),
                        timeout, cluster.credentials)


def statuses(target: ClusterTarget, timeout: float,
             nodes: dict[int, str] | None = None) -> dict[int, dict[str, Any] | str]:
    """Every node's STATUS map (the target's nodes, or `nodes`), asked all at once, or
    why there is none."""
    nodes = target.nodes if nodes is None else nodes

    def one(address: str) -> dict[str, Any] | str:
        reply = ask(target, address, ReqOp.STATUS, timeout)
        if reply is None:
            return f"no answer within {timeout:g}s (down, unreachable, or refusing our keys)"
        if reply.code != ReplyCode.OK:
            return f"{reply.code.name}: {reply.value}"
        return reply.value

    with ThreadPoolExecutor(max_workers=min(16, len(nodes))) as pool:
        found = dict(zip(nodes, pool.map(one, nodes.values()), strict=True))
    return found


def leader_of(found: dict[int, dict[str, Any] | str]) -> tuple[int, dict[str, Any]] | None:
    """(id, STATUS) of the highest-term node that claims to lead (launcher.leader_of's
    rule), if any does."""
    from harness.launcher import leader_of as claimant

    answered = {node_id: st for node_id, st in found.items() if isinstance(st, dict)}
    leading = claimant(answered)
    return None if leading is None else (leading[0], answered[leading[0]])


def addresses_known(target: ClusterTarget,
                    found: dict[int, dict[str, Any] | str]) -> dict[int, str]:
    """Where every node listens, as the target names them and as the nodes' own
    STATUS maps do (their peers: members added since the target was written)."""
    known: dict[int, str] = {}
    for st in found.values():
        if isinstance(st, dict):
            known.update({int(k): v for k, v in st.get("peers", {}).items()})
            known[st["id"]] = st["address"]
    return {**known, **target.nodes}


def refused(reply: ClientReply) -> None:
    """Exit with the code of a request the cluster refused for good."""
    if reply.code == ReplyCode.FORBIDDEN:
        fail(f"{reply.value} (give the admin key: --credentials)", EXIT_REFUSED)
    fail(f"{reply.code.name}: {reply.value}", EXIT_USAGE)


def leader_request(cluster: ClusterTarget, op: ReqOp, timeout: float, /,
                   **fields: Any) -> Any:
    """Have the leader serve a request, following NOT_LEADER hints and waiting out
    elections until `timeout`; its OK answer's value. Only for requests a retry cannot
    apply twice (CONF_CHANGE answers OK for a change already in force; TRANSFER)."""
    deadline = time.monotonic() + timeout
    addresses = dict(cluster.nodes)
    order = list(addresses)
    turn, hint, last = 0, 0, "no node answered"
    while time.monotonic() < deadline:
        # A hint names the node to ask next; without one, the next in turn.
        if hint in addresses:
            node_id = hint
        else:
            node_id = order[turn % len(order)]
            turn += 1
        attempt = max(0.1, min(2.0, deadline - time.monotonic()))
        reply = ask(cluster, addresses[node_id], op, attempt, **fields)
        hint = 0
        if reply is None:
            last = f"node {node_id} did not answer"
            continue
        if reply.code == ReplyCode.OK:
            return reply.value
        if reply.code == ReplyCode.NOT_LEADER:
            hint = reply.leader_hint if reply.leader_hint != node_id else 0
            if hint and hint not in addresses:  # a member added since: the nodes know it
                addresses.update(addresses_known(cluster, statuses(cluster, 1.0)))
            last = f"node {node_id} does not lead"
        elif reply.code == ReplyCode.UNAVAILABLE:
            last = f"node {node_id}: {reply.value}"
        else:
            refused(reply)
        time.sleep(RETRY_PAUSE_S)
    fail(f"no leader served {op.name} within {timeout:g}s ({last})", EXIT_UNAVAILABLE)


# -- endpoint ---------------------------------------------------------------------------------

@main.group()
def endpoint() -> None:
    """Each node of the cluster on its own: its status, its health.

    \b
    raftkv endpoint status --endpoints h1:7701,h2:7702,h3:7703
    raftkv endpoint health --dir .raftkv --json
    """


@endpoint.command(name="status")
@cluster_options()
def endpoint_status(cluster_dir: Path, timeout: float, as_json: bool) -> None:
    """Per endpoint, from its own STATUS: node id, role, term, the leader it knows, log,
    commit and applied index, keys, state size against its quota, snapshot index. An
    endpoint that does not answer in --timeout is listed as such. Exit 3 if none
    answers."""
    target = cluster_target(cluster_dir)
    found = statuses(target, timeout)
    rows = [endpoint_row(node_id, target.nodes[node_id], st) for node_id, st in found.items()]
    if as_json:
        click.echo(json.dumps(rows))
    else:
        print_table(rows, ("id", "address", "role", "term", "leader", "last_index",
                           "commit_index", "applied_index", "keys", "db_bytes",
                           "quota_bytes", "snapshot_index"))
    if all("error" in r for r in rows):
        sys.exit(EXIT_UNAVAILABLE)


def endpoint_row(node_id: int, address: str, st: dict[str, Any] | str) -> dict[str, Any]:
    """One endpoint's figures from its STATUS map (or the reason it has none)."""
    if isinstance(st, str):
        return {"id": node_id, "address": address, "error": st}
    kv = st.get("kv") or {}
    return {"id": st["id"], "address": address, "role": st["role"], "term": st["term"],
            "leader": st.get("lead") or None, "last_index": st["last_index"],
            "commit_index": st["commit_index"], "applied_index": st["applied_index"],
            "keys": kv.get("keys"), "db_bytes": kv.get("bytes"),
            "quota_bytes": kv.get("quota_bytes"), "state": kv.get("state"),
            "snapshot_index": st.get("snapshot_index"), "voters": st.get("voters"),
            "learners": st.get("learners"), "uptime_s": st.get("uptime_s")}


def print_table(rows: list[dict[str, Any]], cols: tuple[str, ...],
                error_key: str = "error") -> None:
    """Rows under upper-cased column names; a row with `error_key` (why the node gave
    no figures) is listed after the table, with its reason."""
    heads = tuple(c.upper().replace("_INDEX", "").replace("_", " ") for c in cols)
    cells = [tuple("-" if r.get(c) is None else str(r[c]) for c in cols) for r in rows
             if error_key not in r]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    for line in (heads, *cells):
        click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    for r in rows:
        if error_key in r:
            click.echo(f"node {r['id']} at {r['address']}: {r[error_key]}")


@endpoint.command(name="health")
@cluster_options()
def endpoint_health(cluster_dir: Path, timeout: float, as_json: bool) -> None:
    """Per endpoint: healthy if within --timeout it answers, names a leader, and a
    linearizable read (ReadIndex) sent to it, or to the leader it names, is served.
    Exit 1 if any endpoint is unhealthy."""
    target = cluster_target(cluster_dir)
    found = statuses(target, timeout)
    addresses = addresses_known(target, found)
    with ThreadPoolExecutor(max_workers=min(16, len(found))) as pool:
        rows = list(pool.map(lambda item: health_of(target, addresses, *item, timeout),
                             found.items()))
    if as_json:
        click.echo(json.dumps(rows))
    else:
        for r in rows:
            verdict = "healthy" if r["healthy"] else "UNHEALTHY"
            click.echo(f"{r['address']} (node {r['id']}): {verdict}: {r['detail']}")
    if not all(r["healthy"] for r in rows):
        sys.exit(EXIT_NEGATIVE)


def health_of(target: ClusterTarget, addresses: dict[int, str], node_id: int,
              st: dict[str, Any] | str, timeout: float) -> dict[str, Any]:
    """One endpoint's health, with what decided it."""
    row: dict[str, Any] = {"id": node_id, "address": target.nodes[node_id]}
    if isinstance(st, str):
        return {**row, "healthy": False, "detail": st}
    started = time.monotonic()
    reply = ask(target, target.nodes[node_id], ReqOp.GET, timeout, key=HEALTH_KEY)
    via = node_id
    if reply is not None and reply.code == ReplyCode.NOT_LEADER and reply.leader_hint:
        via = reply.leader_hint
        if via not in addresses:
            return {**row, "healthy": False,
                    "detail": f"it names node {via} as leader, whose address is unknown"}
        left = max(0.1, timeout - (time.monotonic() - started))
        reply = ask(target, addresses[via], ReqOp.GET, left, key=HEALTH_KEY)
    took_ms = round((time.monotonic() - started) * 1000, 1)
    if reply is None:
        return {**row, "healthy": False,
                "detail": f"a linearizable read through node {via} was not answered "
                          f"within {timeout:g}s"}
    if reply.code != ReplyCode.OK:
        return {**row, "healthy": False,
                "detail": f"a linearizable read through node {via} was refused: "
                          f"{reply.code.name} {reply.value}"}
    lag = max(0, (st.get("commit_index") or 0) - (st.get("applied_index") or 0))
    return {**row, "healthy": True, "leader": via, "took_ms": took_ms,
            "detail": f"{st['role']} in term {st['term']}; a linearizable read through "
                      f"node {via} took {took_ms} ms; {lag} committed entries to apply"}


# -- member -----------------------------------------------------------------------------------

@main.group()
def member() -> None:
    """The cluster's membership, changed one server at a time over CONF_CHANGE (Raft
    thesis §4.1), on any deployment. On a `raftkv up` cluster, add-node and
    remove-node also start and stop the node's process; these verbs never do.

    \b
    raftkv member list --endpoints h1:7701,h2:7702,h3:7703
    # on h4: raftkv node --id 4 --listen tcp://h4:7704 --join --peer 1=tcp://h1:7701 ...
    raftkv member add 4 h4:7704        # a learner, caught up, then promoted to voter
    raftkv member remove 2             # leadership moves off it first if it leads
    """


def leader_status(target: ClusterTarget, timeout: float) -> tuple[int, dict[str, Any],
                                                                   dict[int, dict | str]]:
    """(leader id, its STATUS, every node's STATUS) once some node leads; exit 3 if none
    does within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        found = statuses(target, min(2.0, timeout))
        leading = leader_of(found)
        if leading is not None:
            return leading[0], leading[1], found
        if time.monotonic() > deadline:
            fail(f"no node of {target.origin} leads within {timeout:g}s", EXIT_UNAVAILABLE)
        time.sleep(RETRY_PAUSE_S)


@member.command(name="list")
@cluster_options()
def member_list(cluster_dir: Path, timeout: float, as_json: bool) -> None:
    """The members in force on the leader: id, address, voter or learner, and each
    one's role as it answers (- if it does not)."""
    target = cluster_target(cluster_dir)
    leader, st, found = leader_status(target, timeout)
    addresses = addresses_known(target, found)
    rows = []
    for kind in ("voters", "learners"):
        for node_id in st.get(kind) or ():
            mine = found.get(node_id)
            rows.append({"id": node_id, "address": addresses.get(node_id),
                         "member": kind[:-1],
                         "role": mine.get("role") if isinstance(mine, dict) else None})
    if as_json:
        click.echo(json.dumps({"leader": leader, "term": st["term"], "members": rows}))
        return
    click.echo(f"leader: {leader}   term: {st['term']}")
    print_table(rows, ("id", "address", "member", "role"))


def address_argument(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        return parse_address(value)
    except EndpointsError as e:
        raise click.BadParameter(str(e)) from e


@member.command(name="add")
@click.argument("node_id", metavar="ID", type=click.IntRange(min=1))
@click.argument("address", metavar="HOST:PORT", callback=address_argument)
@click.option("--learner", is_flag=True, help="Leave it a learner (no vote); `member "
              "promote ID` later.")
@cluster_options(60.0, "the whole change, catching up included")
def member_add(node_id: int, address: str, learner: bool, cluster_dir: Path,
               timeout: float, as_json: bool) -> None:
    """Add node ID, listening at HOST:PORT, as a learner; once it has applied what was
    committed when it was added, promote it to voter. Start the node first with
    `raftkv node --id ID --listen tcp://HOST:PORT --join --peer ...` (and the cluster's
    --keys and --cluster-id). A change already in force is answered as done."""
    target = cluster_target(cluster_dir)
    deadline = time.monotonic() + timeout
    added = leader_request(target, ReqOp.CONF_CHANGE, timeout,
                           conf_op=int(ConfOp.ADD_LEARNER), target=node_id, address=address)
    click.echo(f"node {node_id} at {address} added as a learner at index "
               f"{added['index']}", err=as_json)
    result = {"added": node_id, "address": address, **added}
    if not learner:
        caught_up(target, node_id, address, added["index"], deadline - time.monotonic(),
                  as_json)
        result = {**result, **promote(target, node_id, deadline - time.monotonic(), as_json)}
    if as_json:
        click.echo(json.dumps(result))


def caught_up(target: ClusterTarget, node_id: int, address: str, index: int,
              timeout: float, as_json: bool) -> None:
    """Wait until the node at `address` has applied `index`: promoting a node far behind
    would stall commits, since the new majority would need it (thesis §4.2.1)."""
    deadline = time.monotonic() + timeout
    applied = 0
    while time.monotonic() < deadline:
        reply = ask(target, address, ReqOp.STATUS, 1.0)
        if reply is not None and reply.code == ReplyCode.OK:
            applied = reply.value.get("applied_index") or 0
            if applied >= index:
                click.echo(f"node {node_id} caught up (applied index {applied})",
                           err=as_json)
                return
        time.sleep(RETRY_PAUSE_S)
    fail(f"node {node_id} applied {applied} of {index} within the timeout; it stays a "
         f"learner (`raftkv member promote {node_id}` once it catches up, or `raftkv "
         f"member remove {node_id}`)", EXIT_UNAVAILABLE)


def promote(target: ClusterTarget, node_id: int, timeout: float,
            as_json: bool) -> dict[str, Any]:
    done = leader_request(target, ReqOp.CONF_CHANGE, max(timeout, 1.0), conf_op=int(ConfOp.PROMOTE),
                          target=node_id)
    click.echo(f"node {node_id} promoted to voter at index {done['index']}; voters "
               f"{done['voters']}", err=as_json)
    return {"promoted": node_id, **done}


@member.command(name="promote")
@click.argument("node_id", metavar="ID", type=click.IntRange(min=1))
@cluster_options()
def member_promote(node_id: int, cluster_dir: Path, timeout: float, as_json: bool) -> None:
    """Make learner ID a voter (check first, with `endpoint status`, that it has caught
    up)."""
    done = promote(cluster_target(cluster_dir), node_id, timeout, as_json)
    if as_json:
        click.echo(json.dumps(done))


@member.command(name="remove")
@click.argument("node_id", metavar="ID", type=click.IntRange(min=1))
@cluster_options(30.0, "the whole change, moving leadership included")
def member_remove(node_id: int, cluster_dir: Path, timeout: float, as_json: bool) -> None:
    """Remove node ID from the cluster. If it leads, leadership is handed to the most
    caught-up other voter first (thesis §3.10). Its process keeps running, out of the
    cluster, until you stop it."""
    target = cluster_target(cluster_dir)
    deadline = time.monotonic() + timeout
    move_leadership(target, node_id, timeout, as_json)
    done = leader_request(target, ReqOp.CONF_CHANGE, max(1.0, deadline - time.monotonic()),
                          conf_op=int(ConfOp.REMOVE), target=node_id)
    click.echo(f"node {node_id} removed at index {done['index']}; voters {done['voters']}",
               err=as_json)
    if as_json:
        click.echo(json.dumps({"removed": node_id, **done}))


def move_leadership(target: ClusterTarget, away_from: int, timeout: float,
                    as_json: bool) -> None:
    """If `away_from` leads, hand leadership to the most caught-up other voter that
    answers, and wait until another node leads."""
    deadline = time.monotonic() + timeout
    leader, st, found = leader_status(target, timeout)
    if leader != away_from:
        return
    voters = set(st.get("voters") or ())
    candidates = [s for i, s in found.items()
                  if i != away_from and i in voters and isinstance(s, dict)]
    if not candidates:
        fail(f"node {away_from} leads and no other voter answers; cannot move "
             "leadership away from it", EXIT_UNAVAILABLE)
    best = max(candidates, key=lambda s: (s["last_index"], -s["id"]))["id"]
    click.echo(f"node {away_from} leads: handing leadership to node {best} first",
               err=as_json)
    asked_at = -1e9
    while time.monotonic() < deadline:
        if time.monotonic() - asked_at > 1.0:  # a transfer that fails ends in an election
            asked_at = time.monotonic()
            reply = ask(target, addresses_known(target, found)[away_from], ReqOp.TRANSFER,
                        1.0, target=best)
            if reply is not None and reply.code in (ReplyCode.FORBIDDEN,
                                                    ReplyCode.BAD_REQUEST):
                refused(reply)
        now = leader_of(statuses(target, 1.0))
        if now is not None and now[0] != away_from:
            click.echo(f"node {now[0]} leads now", err=as_json)
            return
        time.sleep(RETRY_PAUSE_S)
    fail(f"leadership did not move away from node {away_from} within {timeout:g}s",
         EXIT_UNAVAILABLE)


# -- snapshot ---------------------------------------------------------------------------------

@main.group()
def snapshot() -> None:
    """Back up the cluster's keys to a file, and start a new cluster from one.

    \b
    raftkv snapshot save backup.rkv --endpoints h1:7701,h2:7702,h3:7703
    raftkv snapshot restore backup.rkv --data-dir /var/lib/raftkv/1 --id 1 \\
        --voters 1,2,3 --cluster-id 9f2c41d07a3e55b1      # on each new node, its --id
    """


@snapshot.command(name="save")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@cluster_options(60.0, "the whole backup")
def snapshot_save(file: Path, cluster_dir: Path, timeout: float, as_json: bool) -> None:
    """Write every key and value, and every lease, as of one revision, to FILE (whole or
    not at all).

    The state is a true point in time: the keys are read in linearizable pages (SCAN),
    then the leases (LEASE_LIST, which names the revision it read them at), and the
    writes applied meanwhile (WATCH from before the first page up to that revision) are
    laid over the pages, giving the keys at that revision. The leader must lead
    throughout, a majority of the voters answering in its term afterwards (else it starts
    over, up to 3 times). Each key keeps its create and mod revision and version, each
    lease its TTL and keys. Exit 3 if the cluster cannot serve it in --timeout."""
    from raftkv.backup import BackupError, write_backup

    target = cluster_target(cluster_dir)
    deadline = time.monotonic() + timeout
    for attempt in range(1, SAVE_ATTEMPTS + 1):
        state = with_client(cluster_dir, max(1.0, deadline - time.monotonic()),
                            lambda kv: read_state(target, kv, deadline))
        if not isinstance(state, str):
            break
        click.echo(f"{state}; starting over ({attempt} of {SAVE_ATTEMPTS})", err=True)
    else:
        fail(f"no backup in {SAVE_ATTEMPTS} attempts: {state}", EXIT_UNAVAILABLE)
    revision, data, leases = state
    try:
        backup = write_backup(file, revision, data.items(), leases)
    except BackupError as e:  # a lease table no state could hold: nothing was written
        fail(f"the cluster's answers do not make a backup: {e}", EXIT_UNAVAILABLE)
    result = {"file": str(file), "revision": revision, "keys": len(backup.items),
              "leases": len(backup.leases), "bytes": file.stat().st_size}
    click.echo(json.dumps(result) if as_json else
               f"saved {len(backup.items)} keys and {len(backup.leases)} leases as of "
               f"revision {revision} to {file} ({result['bytes']} bytes)")


Leases = list[tuple[int, int, list[bytes]]]  # (lease_id, ttl_ms, keys), as write_backup takes


def read_state(target: ClusterTarget, kv: Any,
               deadline: float) -> tuple[int, dict[bytes, KeyValue], Leases] | str:
    """(revision R, every key's value and revisions at R, the leases at R), or why the
    reads may not be one leader's.

    Invariant: a linearizable page reads the state at some index between `start` (the
    leader's applied index before the first page) and R (the index LEASE_LIST, read
    after the last page, names), because one leader in one term served every read: a
    majority of the voters still being in that term afterwards proves no later term
    elected anyone (a deposed leader that has not heard yet would still claim to lead).
    So laying every event of (start, R] over the pages, in revision order, leaves each
    key as the last write at or before R left it. An event a page already saw (at or
    below the key's mod_revision there) is skipped: a put's version counts once."""
    import raftkv

    leader, before, found = leader_status(target, max(1.0, deadline - time.monotonic()))
    start, term, voters = before["applied_index"], before["term"], before["voters"]
    everyone = addresses_known(target, found)  # voters the endpoints do not name too
    data: dict[bytes, KeyValue] = dict(kv.scan_iter(b"", page=1000, revisions=True))
    listing = kv.leases(timeout=max(1.0, deadline - time.monotonic()))
    found = statuses(target, 2.0, everyone)
    after = found.get(leader)
    if not isinstance(after, dict) or (after["role"], after["term"]) != ("leader", term):
        return f"node {leader} no longer leads in term {term}"
    in_term = [i for i in voters if isinstance(st := found.get(i), dict) and st["term"] == term]
    if len(in_term) <= len(voters) // 2:
        return (f"only voters {in_term} of {voters} answered in term {term}: not a "
                "majority, so a later term may have a leader")
    end = listing.revision
    watch = kv.watch(b"", prefix=True, start_revision=start + 1, wait=0.2)
    try:
        while watch.next_revision <= end:
            if time.monotonic() > deadline:
                fail(f"the writes up to revision {end} were not all delivered in time",
                     EXIT_UNAVAILABLE)
            for event in watch.poll():
                if event.revision > end:
                    break
                was = data.get(event.key)
                if was is not None and was.mod_revision >= event.revision:
                    continue  # the page read the key after this write
                if event.type == "delete":
                    data.pop(event.key, None)
                elif was is None:
                    data[event.key] = KeyValue(event.value, event.revision, event.revision, 1)
                else:
                    data[event.key] = KeyValue(event.value, was.create_revision,
                                               event.revision, was.version + 1)
    except raftkv.Compacted as e:
        fail(f"the cluster no longer keeps the writes made during the backup ({e}); try "
             "again when writes are fewer, or give the nodes more --watch-history-bytes",
             EXIT_UNAVAILABLE)
    leases = [(i.id, round(i.ttl * 1000), i.keys) for i in listing.leases]
    lacking = next((k for _, _, keys in leases for k in keys if k not in data), None)
    if lacking is not None:
        return f"a lease holds key {lacking!r:.40}, which the state at {end} lacks"
    return end, data, leases


@snapshot.command(name="restore")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="The new node's data dir: missing or empty.")
@click.option("--id", "node_id", type=click.IntRange(min=1), required=True,
              help="The node the dir is for (its `raftkv node --id`).")
@click.option("--voters", required=True, metavar="ID,ID,...",
              help="The new cluster's voters, the same for every node restored.")
@click.option("--cluster-id", type=HEX64, default=0, metavar="HEX",
              help="The new cluster's id (`raftkv node --cluster-id`), recorded in the "
                   "dir; default: unrecorded, the node records the first it is given.")
@json_option
def snapshot_restore(file: Path, data_dir: Path, node_id: int, voters: str,
                     cluster_id: int, as_json: bool) -> None:
    """Make --data-dir a data dir whose node starts with FILE's state: run it on each
    node of the new cluster, with its own --id and the same --voters, then start every
    node as usual WITHOUT --new (`raftkv node --id N --data-dir D --peer ...`).

    The dir holds a snapshot at the backup's revision, so the new cluster's revisions
    go on above the old one's; each key keeps its revisions and version, each lease its
    TTL and keys, timed afresh from its full TTL once the new cluster has a leader (a
    backup from before leases were saved restores its keys without). Exit 2 for a file
    that is not a whole backup, 4 for a data dir that is not empty or cannot be
    written."""
    from raftkv.backup import BackupError, read_backup, seed_data_dir
    from raftkv.storage import StorageError

    ids = parse_voters(voters, join=False)
    assert ids is not None
    if node_id not in ids:
        raise click.BadParameter(f"node {node_id} is not among the voters {voters}",
                                 param_hint="--id")
    try:
        backup = read_backup(file)
    except (BackupError, OSError) as e:
        fail(str(e), EXIT_USAGE)
    try:
        meta = seed_data_dir(backup, data_dir, node_id, cluster_id, ids)
    except (StorageError, OSError) as e:
        fail(f"{data_dir}: {e}", EXIT_STORAGE)
    result = {"data_dir": str(data_dir), "id": node_id, "revision": backup.revision,
              "index": meta.index, "keys": len(backup.items), "leases": len(backup.leases),
              "voters": list(meta.voters)}
    click.echo(json.dumps(result) if as_json else
               f"{data_dir}: node {node_id} starts from {len(backup.items)} keys and "
               f"{len(backup.leases)} leases at index "
               f"{meta.index}, voters {','.join(map(str, meta.voters))}; start it "
               "without --new")
