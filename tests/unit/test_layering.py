"""The layers import downward only (docs/ARCHITECTURE.md: Layers): the Raft core knows
nothing else in the project, storage knows only the core's types, and the store never
imports the harness, not even from its entry point (`python -m raftkv` runs the store's
own command line; the harness's is harness/__main__.py). Every import is counted,
including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imports_of(package: str, root: Path = ROOT) -> dict[str, set[str]]:
    """Module file (relative path) -> the project modules it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((root / package.replace(".", "/")).rglob("*.py")):
        rel = path.relative_to(root)
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(rel))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level:
                names.add(f"<relative import in {rel}>")
        found[str(rel)] = {n for n in names if n.split(".")[0] in ("raftkv", "harness")
                           or n.startswith("<")}
    return found


def under(name: str, allowed: tuple[str, ...]) -> bool:
    return any(name == a or name.startswith(a + ".") for a in allowed)


def offending(package: str, allowed: tuple[str, ...], root: Path = ROOT) -> list[str]:
    return sorted(f"{mod}: {name}" for mod, names in imports_of(package, root).items()
                  for name in names if not under(name, allowed))


def test_the_raft_core_imports_nothing_else_of_the_project():
    assert offending("raftkv.raft", ("raftkv.raft",)) == []


def test_storage_imports_only_itself_and_the_cores_types():
    assert offending("raftkv.storage", ("raftkv.storage", "raftkv.raft.types")) == []


def test_the_store_never_imports_the_harness():
    assert offending("raftkv", ("raftkv",)) == []


def test_an_entry_point_of_the_store_importing_the_harness_is_refused_too(tmp_path):
    (tmp_path / "raftkv").mkdir()
    (tmp_path / "raftkv" / "__main__.py").write_text("def main():\n    from harness import cli\n")
    assert offending("raftkv", ("raftkv",), tmp_path) == [
        "raftkv/__main__.py: harness", "raftkv/__main__.py: harness.cli"]


@pytest.mark.parametrize("source", ["def f():\n    from harness import cli\n",
                                    "import harness.cli\n",
                                    "from raftkv.node import Node\n",
                                    "from . import wal\n"])
def test_the_check_sees_every_kind_of_import(tmp_path, source):
    """The test has teeth: an import it must refuse, lazy or relative, is found."""
    pkg = tmp_path / "raftkv" / "storage"
    pkg.mkdir(parents=True)
    (pkg / "probe.py").write_text(source)
    assert offending("raftkv.storage", ("raftkv.storage", "raftkv.raft.types"), tmp_path)
