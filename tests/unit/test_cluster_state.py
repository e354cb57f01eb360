"""Command lines in cluster.json follow membership changes and a node's first start
(harness/cluster_state.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil

from harness.cluster_state import (
    ClusterState,
    ProcEntry,
    create_time,
    is_first_start,
    joiner_argv,
    node_argv,
    option_value,
    record_started,
    settled_argv,
    stop_process,
    with_peers,
)
from tests.lines import line_within

PEERS = {1: "tcp://h:1", 2: "tcp://h:2", 3: "tcp://h:3"}


def options(argv: list[str]) -> list[str]:
    return argv[argv.index("node") + 1:]


def test_node_argv_names_peers_initial_voters_and_join() -> None:
    argv = options(node_argv(1, PEERS[1], PEERS, Path("/d/1"), voters=(1, 2, 3),
                             fsync=False, extra=("--snapshot-entries", "50")))
    assert argv == ["--id", "1", "--listen", "tcp://h:1", "--data-dir", "/d/1",
                    "--peer", "2=tcp://h:2", "--peer", "3=tcp://h:3", "--voters", "1,2,3",
                    "--no-fsync", "--snapshot-entries", "50"]
    assert "--join" in node_argv(4, "tcp://h:4", PEERS, Path("/d/4"), voters=())
    assert "--voters" not in node_argv(1, PEERS[1], PEERS, Path("/d/1"))


def test_with_peers_replaces_only_the_peers() -> None:
    argv = node_argv(2, PEERS[2], PEERS, Path("/d/2"), voters=(1, 2, 3),
                     extra=("--snapshot-entries", "50"))
    grown = with_peers(argv, 2, {**PEERS, 4: "tcp://h:4"})
    assert grown[:grown.index("node") + 1] == argv[:argv.index("node") + 1]
    opts = options(grown)
    assert [opts[i + 1] for i, a in enumerate(opts) if a == "--peer"] == [
        "1=tcp://h:1", "3=tcp://h:3", "4=tcp://h:4"]
    assert opts[opts.index("--voters") + 1] == "1,2,3"  # the initial voters never change
    assert opts[opts.index("--snapshot-entries") + 1] == "50"
    shrunk = options(with_peers(grown, 2, {2: "tcp://h:2", 4: "tcp://h:4"}))
    assert [a for a in shrunk if "=tcp://" in a] == ["4=tcp://h:4"]


def test_joiner_keeps_the_template_options_but_not_its_identity() -> None:
    template = node_argv(1, PEERS[1], PEERS, Path("/d/1"), voters=(1, 2, 3), fsync=False,
                         extra=("--snapshot-entries", "50"), metrics_port=9101)
    argv = options(joiner_argv(template, 4, "tcp://h:4", PEERS, Path("/d/4"),
                               metrics_port=9104))
    assert argv[argv.index("--metrics-port") + 1] == "9104" and "9101" not in argv
    assert argv[:6] == ["--id", "4", "--listen", "tcp://h:4", "--data-dir", "/d/4"]
    assert [a for a in argv if "=tcp://" in a] == ["1=tcp://h:1", "2=tcp://h:2",
                                                   "3=tcp://h:3"]
    assert "--join" in argv and "--voters" not in argv
    assert "--no-fsync" in argv and argv[argv.index("--snapshot-entries") + 1] == "50"


def test_wait_listening_tells_a_started_node_from_one_that_exited() -> None:
    import socket
    import subprocess
    import sys

    from harness.launcher import free_ports
    from harness.supervisor import wait_listening

    port = free_ports(1)[0]
    listener = subprocess.Popen([sys.executable, "-c", (
        "import socket, time; s = socket.socket(); "
        f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(30)")])
    try:
        assert wait_listening(listener, port, 10.0)
    finally:
        listener.kill()
        listener.wait()
    with socket.socket() as taken:  # the port is taken: the child fails to bind, exits
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        failing = subprocess.Popen([sys.executable, "-c", (
            f"import socket; socket.socket().bind(('127.0.0.1', {busy}))")],
            stderr=subprocess.DEVNULL)
        try:
            assert not wait_listening(failing, busy, 10.0)
            assert failing.poll() is not None
        finally:
            failing.kill()
            failing.wait()


def test_a_new_cluster_starts_its_nodes_with_its_id_and_new_only_the_first_time(
        tmp_path: Path) -> None:
    from harness.launcher import new_cluster

    state = new_cluster(tmp_path, 3, 7700, fsync=True)
    state.save()
    hex_id = f"{state.cluster_id:x}"
    assert state.cluster_id and ClusterState.load(tmp_path).cluster_id == state.cluster_id
    for n in state.nodes:
        assert "--new" in n.argv and option_value(n.argv, "--cluster-id") == hex_id
    record_started(tmp_path, {2})
    after = ClusterState.load(tmp_path)
    assert ["--new" in n.argv for n in after.nodes] == [True, False, True]
    settled = after.node(2).argv
    assert option_value(settled, "--cluster-id") == hex_id
    assert option_value(settled, "--voters") == "1,2,3"
    # A membership change rewrites the peers and nothing else: no --new comes back.
    grown = with_peers(settled, 2, {**after.addresses, 4: "tcp://h:4"})
    assert not is_first_start(grown) and option_value(grown, "--cluster-id") == hex_id


def test_a_joiner_joins_once_then_restarts_with_the_initial_voters() -> None:
    template = node_argv(1, PEERS[1], PEERS, Path("/d/1"), voters=(1, 2, 3), new=True,
                         cluster_id=0xABC)
    first = joiner_argv(template, 4, "tcp://h:4", PEERS, Path("/d/4"))
    assert "--join" in first and "--new" not in first
    assert option_value(first, "--cluster-id") == "abc"
    later = settled_argv(first, (1, 2, 3))
    assert not is_first_start(later)
    assert option_value(later, "--voters") == "1,2,3"
    assert option_value(later, "--cluster-id") == "abc"
    # Initial voters unknown: --join stays, or the node would count itself a voter.
    assert "--join" in settled_argv(first, None)


def test_an_older_cluster_json_without_an_id_loads_and_adopts_one(tmp_path: Path) -> None:
    old = node_argv(1, PEERS[1], PEERS, Path("/d/1"), voters=(1, 2, 3))
    joined = node_argv(4, "tcp://h:4", PEERS, Path("/d/4"), voters=())
    (tmp_path / "cluster.json").write_text(json.dumps({
        "version": 1, "fsync": True,
        "controller": {"address": "tcp://h:0", "log": "logs/c.log", "argv": []},
        "nodes": [{"address": PEERS[1], "log": "logs/node1.log", "argv": old, "id": 1},
                  {"address": "tcp://h:4", "log": "logs/node4.log", "argv": joined,
                   "id": 4}]}))
    state = ClusterState.load(tmp_path)
    assert state.cluster_id == 0 and state.node(4).argv == joined
    state.adopt_cluster_id(0xBEEF)
    state.save()
    again = ClusterState.load(tmp_path)
    assert again.cluster_id == 0xBEEF
    for n in again.nodes:  # they all ran under the older raftkv: no first start left
        assert option_value(n.argv, "--cluster-id") == "beef" and not is_first_start(n.argv)
    assert option_value(again.node(4).argv, "--voters") == "1,2,3"


def test_two_writers_saving_at_once_never_break_each_other(tmp_path):
    """`up` and the controller both save cluster.json: with one shared temp name, one
    renamed the other's file away and crashed (FileNotFoundError)."""
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            st = ClusterState(tmp_path, True, ProcEntry("tcp://127.0.0.1:1", "c.log", []))
            for _ in range(300):
                st.save()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert ClusterState.load(tmp_path) is not None
    assert not list(tmp_path.glob("*.tmp"))


def test_free_ports_skips_the_ports_it_is_told_to_avoid(monkeypatch):
    """Found by CI: a node's metrics port, picked by the kernel, was another node's
    listen port (base port + id), and that node ran without /metrics."""
    import harness.launcher as launcher

    handed = iter([7001, 7003, 7002, 7004])

    class FakeSocket:
        def bind(self, address: tuple[str, int]) -> None:
            self.port = next(handed)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

        def close(self) -> None:
            pass

    monkeypatch.setattr(launcher.socket, "socket", FakeSocket)
    assert launcher.free_ports(2, avoid=frozenset({7001, 7002})) == [7003, 7004]


def test_free_base_port_stays_below_the_ports_outgoing_connections_take():
    """Found by CI: a chaos run's node port, free when checked, was taken by an outgoing
    connection's ephemeral port before the node bound it."""
    from harness.launcher import ephemeral_ports, free_base_port

    low = ephemeral_ports().start
    for _ in range(50):
        base = free_base_port(5)
        assert base >= 20_000 and base + 5 < low


def test_stop_process_counts_a_zombie_another_parent_has_not_reaped_as_stopped() -> None:
    """`down` stops processes it did not start; one that exited is a zombie until its
    parent (here a process that never reaps it; in a container, a slow init) gets to
    it. psutil's wait took such a zombie for alive until the grace period ran out,
    SIGKILLed it and waited again: `down` spent 2 s a process."""
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\n"
         "p = subprocess.Popen(['sleep', '60'])\n"
         "print(p.pid, flush=True)\n"
         "time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    pid = 0
    try:
        pid = int(line_within(parent.stdout, 30, "the child's pid"))
        created = create_time(pid)
        done = threading.Event()
        result: list[bool] = []
        t = threading.Thread(target=lambda: (result.append(stop_process(pid, created, 60)),
                                             done.set()), daemon=True)
        t.start()
        assert done.wait(timeout=30), "stop_process waited out its grace on a zombie"
        assert result == [True]
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        if pid:  # the grandchild, had stop_process not got to it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait()
