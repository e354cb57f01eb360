"""How raftkv installs (issue 19): a client-only install (`pip install raftkv`) pulls
pyzmq and msgpack alone, and the client runs with nothing else; the server's packages are
the `server` extra, and the command lines say so when they are missing; `python -m
raftkv` is the store's own command line (a node) and `raftkv` the harness's; the version
is stated once; py.typed ships.

The client-only tests run Python in a subprocess with a meta-path finder that refuses the
imports such an install could not satisfy, so they prove the install works, not merely
that this one happens to hold more than it needs."""

from __future__ import annotations

import configparser
import importlib.metadata
import importlib.resources
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

import raftkv
from raftkv.extras import EXIT_NOT_INSTALLED, SERVER_MODULES
from tests.unit.test_client import FakeKV, FakeNode

ROOT = Path(__file__).resolve().parents[2]
MODULE_OF = {"pyzmq": "zmq"}  # distributions whose import name is not their own


def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "setup.cfg")
    return cfg


def modules_of(requirements: str) -> set[str]:
    """The top-level import names of a setup.cfg list of requirements."""
    names = (re.match(r"[A-Za-z0-9_.-]+", line.strip()) for line in requirements.splitlines())
    return {MODULE_OF.get(m[0].lower(), m[0].lower().replace("-", "_")) for m in names if m}


CLIENT_MODULES = modules_of(setup_cfg()["options"]["install_requires"])
SERVER_EXTRA = modules_of(setup_cfg()["options.extras_require"]["server"])

# Run first in each child (its arguments: ARGS, a JSON object). A `Refuse` finder, put
# first on sys.meta_path, fails every import whose top-level name `refuse` picks as a
# missing package does, and keeps the names it refused.
PRELUDE = """\
import importlib.abc, json, sys
ARGS = json.loads(sys.argv[1])
class Refuse(importlib.abc.MetaPathFinder):
    def __init__(self, refuse):
        self.refuse, self.refused = refuse, []
    def find_spec(self, name, path=None, target=None):
        if self.refuse(name.partition(".")[0]):
            self.refused.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (refused)", name=name)
        return None
"""


def run_child(code: str, args: dict, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PRELUDE + code, json.dumps(args)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)


def test_the_client_runs_with_only_the_packages_a_client_install_pulls(tmp_path):
    """Everything outside the stdlib, raftkv and install_requires is refused; the client,
    and the asyncio one, still connect, write, read and close, and no server package was
    even tried."""
    code = """
allowed = set(ARGS["allowed"])
finder = Refuse(lambda top: top not in allowed and top not in sys.stdlib_module_names)
sys.meta_path.insert(0, finder)
try:
    import click  # noqa
    raise SystemExit("the finder let click in")
except ImportError:
    pass
import raftkv
with raftkv.Client(ARGS["address"], timeout=10) as kv:
    kv.put("user:1", "alice")
    value = kv.get("user:1", timeout=10)
import asyncio
from raftkv import aio
async def use_aio():
    async with aio.Client(ARGS["address"], timeout=10) as akv:
        await akv.put("user:2", "bob")
        return await akv.get("user:2")
aio_value = asyncio.run(use_aio())
print(json.dumps({"value": value.decode(), "aio_value": aio_value.decode(),
                  "refused": finder.refused,
                  "server_loaded": sorted(set(ARGS["server"]) & set(sys.modules))}))
"""
    ctx = zmq.Context()
    node = FakeNode(ctx, FakeKV())
    try:
        p = run_child(code, {"allowed": sorted(CLIENT_MODULES | {"raftkv"}),
                             "server": sorted(SERVER_EXTRA), "address": node.address},
                      tmp_path)
    finally:
        node.stop()
        ctx.term()
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.splitlines()[-1])
    assert out["value"] == "alice" and out["aio_value"] == "bob"
    assert out["server_loaded"] == []
    # Only the prelude's own probe: the stdlib may try a few optional modules (`org`, for
    # Jython, from copy and pickle), but the client never tried a server package.
    tried = {name.partition(".")[0] for name in out["refused"]}
    assert tried & SERVER_EXTRA == {"click"}, out["refused"]


@pytest.mark.parametrize("module", ["harness", "raftkv"])
def test_the_command_on_a_client_only_install_says_to_install_the_server_extra(
        tmp_path, module):
    """`raftkv` (harness/__main__.py) and `python -m raftkv` alike."""
    code = """
sys.meta_path.insert(0, Refuse(lambda top: top in ARGS["server"]))
import runpy
sys.argv = ["raftkv", "get", "user:1"]
runpy.run_module(ARGS["module"], run_name="__main__", alter_sys=True)
"""
    p = run_child(code, {"server": sorted(SERVER_EXTRA), "module": module}, tmp_path)
    assert p.returncode == EXIT_NOT_INSTALLED == 8, p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    [line] = p.stderr.splitlines()
    assert "pip install 'raftkv[server]'" in line
    assert all(name in line for name in SERVER_EXTRA), line


def test_the_entry_point_checks_exactly_the_server_extras_modules():
    scripts = setup_cfg()["options.entry_points"]["console_scripts"]
    assert "raftkv = harness.__main__:main" in scripts
    assert set(SERVER_MODULES) == SERVER_EXTRA
    assert not CLIENT_MODULES & SERVER_EXTRA


@pytest.mark.parametrize(("module", "usage", "verbs"), [
    ("harness", "Usage: raftkv [OPTIONS] COMMAND", ("up", "put", "node")),
    ("raftkv", "Usage: python -m raftkv [OPTIONS] COMMAND", ("node",)),
])
def test_the_command_lines_answer_help_and_version(tmp_path, module, usage, verbs):
    """The harness's (the `raftkv` script's entry) and the store's own, which runs a node."""
    p = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(usage), p.stdout
    assert all(re.search(rf"^  {verb}\s", p.stdout, re.M) for verb in verbs)
    p = subprocess.run([sys.executable, "-m", module, "--version"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.endswith(f"version {raftkv.__version__}\n")


def test_the_version_is_stated_once_and_the_metadata_carries_it():
    assert setup_cfg()["metadata"]["version"] == "attr: raftkv.__version__"
    assert importlib.metadata.version("raftkv") == raftkv.__version__


def test_the_installed_metadata_requires_only_the_clients_packages_unconditionally():
    requires = importlib.metadata.requires("raftkv") or []
    always = "\n".join(r for r in requires if "extra ==" not in r)
    server = "\n".join(r.partition(";")[0] for r in requires if 'extra == "server"' in r)
    assert modules_of(always) == CLIENT_MODULES == {"zmq", "msgpack"}
    assert modules_of(server) == SERVER_EXTRA


def test_py_typed_is_in_the_package_and_declared_as_its_data():
    assert importlib.resources.files("raftkv").joinpath("py.typed").is_file()
    assert "py.typed" in setup_cfg()["options.package_data"]["raftkv"].split()
