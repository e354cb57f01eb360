"""--endpoints parsing and how a verb picks its cluster (harness/cluster_target.py)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.cluster_target import EndpointsError, load_credentials, parse_endpoints
from raftkv.security import ADMIN, CLIENT, Credentials, CredentialsError, make_key, make_keys


@pytest.mark.parametrize("text, nodes", [
    ("h1:7701,h2:7702", {1: "tcp://h1:7701", 2: "tcp://h2:7702"}),
    ("tcp://10.0.0.1:7701, 10.0.0.2:7702 ,h3:7703",
     {1: "tcp://10.0.0.1:7701", 2: "tcp://10.0.0.2:7702", 3: "tcp://h3:7703"}),
    ("3=h3:7703,1=tcp://h1:7701", {3: "tcp://h3:7703", 1: "tcp://h1:7701"}),
    ("[::1]:7701", {1: "tcp://[::1]:7701"}),
    ("localhost:07701", {1: "tcp://localhost:7701"}),
])
def test_endpoints_name_nodes_in_order_or_by_id(text, nodes):
    assert parse_endpoints(text) == nodes


@pytest.mark.parametrize("text, says", [
    ("", "no endpoint"),
    (" , ", "no endpoint"),
    ("h1:7701,,h2:7702", "empty endpoint"),
    ("h1", "HOST:PORT"),
    ("h1:", "HOST:PORT"),
    (":7701", "HOST:PORT"),
    ("h1:port", "HOST:PORT"),
    ("h1:0", "1 to 65535"),
    ("h1:65536", "1 to 65535"),
    ("udp://h1:7701", "only tcp://"),
    ("ipc:///tmp/x", "only tcp://"),
    ("::1:7701", "[ADDRESS]:PORT"),
    ("[::zz]:7701", "not an IPv6"),
    ("h 1:7701", "not a host"),
    ("1=h1:7701,h2:7702", "name every endpoint's id"),
    ("0=h1:7701", "whole number >= 1"),
    ("x=h1:7701", "whole number >= 1"),
    ("1=h1:7701,1=h2:7702", "given twice"),
    ("h1:7701,tcp://h1:7701", "given twice"),
])
def test_malformed_endpoints_are_refused_naming_the_problem(text, says):
    with pytest.raises(EndpointsError, match=says.replace("[", r"\[").replace("]", r"\]")):
        parse_endpoints(text)


def test_a_dir_of_keys_gives_its_admin_key_else_its_client_key(tmp_path):
    make_keys(tmp_path / "keys", [1])
    admin = Credentials.load(tmp_path / "keys", ADMIN)
    assert load_credentials(tmp_path) == admin  # a cluster dir: DIR/keys
    assert load_credentials(tmp_path / "keys") == admin
    (tmp_path / "client-only").mkdir()
    make_key(tmp_path / "client-only", "server")
    make_key(tmp_path / "client-only", CLIENT)
    assert load_credentials(tmp_path / "client-only") == Credentials.load(
        tmp_path / "client-only", CLIENT)
    with pytest.raises(CredentialsError, match="no such file"):
        load_credentials(tmp_path / "missing.key_secret")


@pytest.fixture
def run(monkeypatch, tmp_path):
    for name in ("RAFTKV_DIR", "RAFTKV_ENDPOINTS", "RAFTKV_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # the default .raftkv holds nothing

    def invoke(*args: str, env: dict[str, str] | None = None):
        return CliRunner().invoke(main, list(args), env=env)
    return invoke


def test_both_ways_at_one_level_is_a_usage_error(run, tmp_path):
    r = run("get", "k", "--dir", str(tmp_path), "--endpoints", "h:1")
    assert r.exit_code == 2 and "both --dir and --endpoints" in r.output
    r = run("get", "k", env={"RAFTKV_DIR": str(tmp_path), "RAFTKV_ENDPOINTS": "h:1"})
    assert r.exit_code == 2 and "in the environment" in r.output


def test_the_command_line_beats_the_environment(run, tmp_path):
    # --endpoints given, RAFTKV_DIR set: the endpoints are used (here: malformed, exit 2)
    r = run("get", "k", "--endpoints", "bad", env={"RAFTKV_DIR": str(tmp_path)})
    assert r.exit_code == 2 and "'bad'" in r.output
    # --dir given, RAFTKV_ENDPOINTS set: the dir is used (no cluster there, exit 3)
    r = run("get", "k", "--dir", str(tmp_path), env={"RAFTKV_ENDPOINTS": "bad"})
    assert r.exit_code == 3 and "no cluster in" in r.output


def test_neither_names_both_ways_out(run):
    r = run("scan")
    assert r.exit_code == 3 and "--endpoints" in r.output and "raftkv up" in r.output


def test_bad_credentials_are_a_usage_error(run, tmp_path):
    r = run("get", "k", "--endpoints", "h:1", "--credentials", str(tmp_path / "nothing"))
    assert r.exit_code == 2 and "no such file" in r.output


def test_top_level_help_lists_every_exit_code():
    from raftkv.extras import EXIT_NOT_INSTALLED

    out = CliRunner().invoke(main, ["--help"]).output
    codes = [line.split()[0] for line in out.split("Exit codes:")[1].splitlines()
             if line.strip()[:1].isdigit()]
    assert codes == [str(c) for c in range(len(codes))]  # none left out
    assert str(EXIT_NOT_INSTALLED) in codes
    assert "--endpoints" in out
