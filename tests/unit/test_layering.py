"""The layers import downward only (docs/ARCHITECTURE.md: Layers): the Raft core knows
nothing else in the project, storage knows only the core's types, and the store never
imports the harness (but for its entry point, raftkv/__main__.py, which hands the command
line to harness.cli). Every import is counted, including those inside functions."""

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


def offending(package: str, allowed: tuple[str, ...], root: Path = ROOT,
              entry_points: dict[str, tuple[str, ...]] | None = None) -> list[str]:
    """`entry_points`: module file -> what it may import besides `allowed`."""
    extra = entry_points or {}
    return sorted(f"{mod}: {name}" for mod, names in imports_of(package, root).items()
                  for name in names if not under(name, allowed + extra.get(mod, ())))


# The one exception to "the store never imports the harness": raftkv/__main__.py is
# `python -m raftkv` and the `raftkv` console script, an entry point that is run and never
# imported, handing the command line up to harness.cli (issue 19). It may import that
# and nothing else of the harness, and no module of raftkv may import it, so nothing the
# store loads ever reaches the harness.
ENTRY_POINTS = {"raftkv/__main__.py": ("harness.cli",)}


def store_offences(root: Path = ROOT) -> list[str]:
    found = offending("raftkv", ("raftkv",), root, ENTRY_POINTS)
    return found + sorted(f"{mod}: {name}" for mod, names in imports_of("raftkv", root).items()
                          for name in names if under(name, ("raftkv.__main__",)))


def test_the_raft_core_imports_nothing_else_of_the_project():
    assert offending("raftkv.raft", ("raftkv.raft",)) == []


def test_storage_imports_only_itself_and_the_cores_types():
    assert offending("raftkv.storage", ("raftkv.storage", "raftkv.raft.types")) == []


def test_the_store_never_imports_the_harness():
    assert store_offences() == []


@pytest.mark.parametrize(("module", "source"), [
    ("__main__.py", "def main():\n    from harness.launcher import up\n"),
    ("client.py", "def f():\n    from harness.cli import main\n"),
    ("client.py", "import raftkv.__main__\n"),
])
def test_the_entry_points_exception_is_narrow(tmp_path, module, source):
    """raftkv/__main__.py may import harness.cli alone; no other module may import the
    harness, nor import raftkv/__main__.py to reach it."""
    (tmp_path / "raftkv").mkdir()
    (tmp_path / "raftkv" / "__main__.py").write_text("from harness.cli import main\n")
    assert store_offences(tmp_path) == []
    (tmp_path / "raftkv" / module).write_text(source)
    assert store_offences(tmp_path)


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
