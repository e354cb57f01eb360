"""Command lines in cluster.json follow membership changes (harness/cluster_state.py)."""

from __future__ import annotations

from pathlib import Path

from harness.cluster_state import joiner_argv, node_argv, with_peers

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

    from harness.controller import wait_listening
    from harness.launcher import free_ports

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
