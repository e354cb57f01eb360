"""The CLI's coordination verbs: `lease`, `lock` and `elect` (raftkv.concurrency). They
register on harness.cli's `main` when harness/cli.py imports this module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from harness.cli import (
    EXIT_NEGATIVE,
    cluster_options,
    dir_option,
    json_option,
    main,
    print_answer,
    with_client,
)
from harness.cluster_target import target_options
from raftkv.server import EXIT_USAGE, fail

EXIT_LOST = 9  # the lock (or leadership) was lost while held: its lease expired


def _sigterm_as_ctrl_c() -> None:
    """From now on SIGTERM interrupts as Ctrl-C does, so that a `finally` releases what
    the verb holds (set before anything is held: a SIGTERM may come at any moment)."""
    def stop(*_: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)


def _hold(lease: Any) -> bool:
    """Block until Ctrl-C or SIGTERM (False) or until `lease` is lost (True)."""
    lost = threading.Event()
    lease.on_lost = lambda _lease: lost.set()
    try:
        while not lost.wait(3600):
            pass
    except KeyboardInterrupt:
        return False
    return True


def _text(b: bytes | str) -> str:
    return b.decode("utf-8", "backslashreplace") if isinstance(b, bytes) else b


# -- lease ------------------------------------------------------------------------------------

@click.group()
def lease() -> None:
    """Leases: grant one, keep it alive, look at one or list them all, revoke one. A key
    put with a lease (`raftkv put KEY VALUE --lease ID`) is deleted when the lease ends:
    revoked, or not kept alive within its TTL (the leader times it, and a new leader
    restarts it at its full TTL)."""


@lease.command(name="grant")
@click.argument("ttl", type=click.FloatRange(min=0.001))
@cluster_options()
def lease_grant(ttl: float, cluster_dir: Path, timeout: float, as_json: bool) -> None:
    """Grant a lease of TTL seconds; print its id."""
    lid = with_client(cluster_dir, timeout, lambda kv: kv.grant(ttl, timeout=timeout))
    click.echo(json.dumps({"id": lid, "ttl": ttl}) if as_json else str(lid))


@lease.command(name="revoke")
@click.argument("lease_id", metavar="ID", type=click.IntRange(min=1))
@cluster_options()
def lease_revoke(lease_id: int, cluster_dir: Path, timeout: float, as_json: bool) -> None:
    """End lease ID now and delete its keys. Exit 1 if it was gone already."""
    existed = with_client(cluster_dir, timeout, lambda kv: kv.revoke(lease_id, timeout=timeout))
    print_answer("revoked" if existed else "not found", as_json, negative=not existed,
                 id=lease_id)


@lease.command(name="info")
@click.argument("lease_id", metavar="ID", type=click.IntRange(min=1))
@cluster_options()
def lease_info(lease_id: int, cluster_dir: Path, timeout: float, as_json: bool) -> None:
    """Lease ID's TTL, the seconds left of it on the leader's clock, and its keys. Exit 1
    if it is gone."""
    _echo_lease(with_client(cluster_dir, timeout,
                            lambda kv: kv.lease_info(lease_id, timeout=timeout)), as_json)


def _echo_lease(i: Any, as_json: bool) -> None:
    """One `LeaseInfo`: a JSON object, or a line of text."""
    keys = [_text(k) for k in i.keys]
    if as_json:
        click.echo(json.dumps({"id": i.id, "ttl": i.ttl, "remaining": i.remaining,
                               "keys": keys}))
    else:
        click.echo(f"lease {i.id}: ttl {i.ttl:g}s, {i.remaining:.3f}s left, "
                   f"{len(keys)} keys{': ' if keys else ''}{' '.join(keys)}")


@lease.command(name="list")
@cluster_options()
def lease_list(cluster_dir: Path, timeout: float, as_json: bool) -> None:
    """Every lease, as `lease info` prints one (with --json, a JSON object a line), as of
    one revision: a line per lease, in id order."""
    listing = with_client(cluster_dir, timeout, lambda kv: kv.leases(timeout=timeout))
    for i in listing.leases:
        _echo_lease(i, as_json)


@lease.command(name="keepalive")
@click.argument("lease_id", metavar="ID", type=click.IntRange(min=1))
@cluster_options()
@click.option("--once", is_flag=True, help="One keepalive, then exit.")
def lease_keepalive(lease_id: int, cluster_dir: Path, timeout: float, as_json: bool,
                    once: bool) -> None:
    """Keep lease ID alive (every third of its TTL) until Ctrl-C, printing each renewal;
    exit 1 once it is gone (expired or revoked)."""
    def keep(kv: Any) -> None:
        try:
            while True:
                ttl = kv.keepalive(lease_id, timeout=timeout)
                print_answer("kept alive", as_json, id=lease_id, ttl=ttl)
                if once:
                    return
                time.sleep(ttl / 3)
        except KeyboardInterrupt:
            pass

    with_client(cluster_dir, timeout, keep)


# -- lock -------------------------------------------------------------------------------------

@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@dir_option
@target_options
@json_option
@click.option("--ttl", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds the lock outlives this process if it dies holding it.")
@click.option("--wait", "wait", default=None, type=click.FloatRange(min=0),
              help="Give up (exit 1) if not acquired within this many seconds (default: "
                   "wait as long as it takes).")
def lock(name: str, command: tuple[str, ...], cluster_dir: Path, as_json: bool, ttl: float,
         wait: float | None) -> None:
    """Acquire lock NAME, run COMMAND while holding it, release it; exit with COMMAND's
    code. Use `--` before COMMAND: `raftkv lock backups -- ./backup.sh`. COMMAND gets the
    lock's fencing token (its revision, larger for every later holder) in
    $RAFTKV_LOCK_TOKEN. Without COMMAND: print the token and hold the lock until Ctrl-C.

    If the lock's lease is lost while COMMAND runs (this process could not reach the
    cluster for TTL seconds), COMMAND gets SIGTERM and the exit code is 9: another holder
    may have it by now. Exit 1: not acquired within --wait."""
    from raftkv.concurrency import LeaseLost, NotAcquired

    if command and command[0] == "--":
        command = command[1:]

    def run(kv: Any) -> int:
        held = kv.lock(name, ttl=ttl)
        try:
            token = held.acquire(timeout=wait)
        except NotAcquired as e:
            fail(str(e), EXIT_NEGATIVE)
        try:
            if not command:
                print_answer(f"locked {name}: token {token}", as_json, name=name, token=token)
                if _hold(held.lease):
                    fail(f"lock {name!r} was lost (its lease expired): another holder may "
                         "have it", EXIT_LOST)
                return 0
            env = dict(os.environ, RAFTKV_LOCK_NAME=name, RAFTKV_LOCK_TOKEN=str(token))
            proc = subprocess.Popen(command, env=env)
            lost = threading.Event()
            held.lease.on_lost = lambda _lease: (lost.set(), proc.terminate())
            try:
                code = proc.wait()
            except KeyboardInterrupt:
                proc.terminate()
                code = proc.wait()
            if lost.is_set():
                fail(f"lock {name!r} was lost while {command[0]} ran (its lease expired): "
                     "another holder may have it", EXIT_LOST)
            return code
        except LeaseLost as e:
            fail(str(e), EXIT_LOST)
        except KeyboardInterrupt:
            return 0  # Ctrl-C or SIGTERM before the wait began: released all the same
        finally:
            held.release()

    if not command and wait == 0:
        fail("--wait 0 with no COMMAND would release the lock at once", EXIT_USAGE)
    _sigterm_as_ctrl_c()
    sys.exit(with_client(cluster_dir, 10.0, run))


# -- elect ------------------------------------------------------------------------------------

@click.command()
@click.argument("name")
@click.argument("value", required=False)
@dir_option
@target_options
@json_option
@click.option("--ttl", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds the leadership outlives this process if it dies leading.")
@click.option("--listen", is_flag=True,
              help="Do not campaign: print the leader, then each change of leader.")
def elect(name: str, value: str | None, cluster_dir: Path, as_json: bool, ttl: float,
          listen: bool) -> None:
    """Campaign in election NAME with VALUE: block until elected, print it, lead until
    Ctrl-C (or SIGTERM), then resign. With --listen, print the leader's value now and at
    each change (an empty line: no leader). Exit 9 if the leadership's lease is lost."""
    from raftkv.concurrency import LeaseLost

    if listen == (value is not None):
        fail("give VALUE to campaign, or --listen to follow the leader", EXIT_USAGE)

    def follow(kv: Any) -> None:
        try:
            for leader in kv.election(name).observe():
                text = "" if leader is None else _text(leader.value)
                if as_json:
                    click.echo(json.dumps({"leader": None if leader is None else text,
                                           "revision": leader and leader.revision}))
                else:
                    click.echo(text)
        except KeyboardInterrupt:
            pass

    def campaign(kv: Any) -> None:
        e = kv.election(name, ttl=ttl)
        try:
            revision = e.campaign(value)
            print_answer(f"elected {name}: {value} (revision {revision})", as_json, name=name,
                         value=value, revision=revision)
            if _hold(e.lease):
                fail(f"the leadership of {name!r} was lost (its lease expired)", EXIT_LOST)
        except LeaseLost as err:
            fail(str(err), EXIT_LOST)
        except KeyboardInterrupt:
            pass  # Ctrl-C or SIGTERM before the wait began: resign all the same
        finally:
            e.resign()

    _sigterm_as_ctrl_c()
    with_client(cluster_dir, 10.0, follow if listen else campaign)


for _command in (lease, lock, elect):
    main.add_command(_command)
