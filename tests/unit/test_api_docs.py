"""docs/API.md is generated from the public API's docstrings (tools/api_docs.py, `make
api-docs`) and stays true: these fail when the file and the docstrings differ."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import raftkv

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "api_docs.py"

_spec = importlib.util.spec_from_file_location("api_docs", SCRIPT)
assert _spec is not None and _spec.loader is not None
api_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(api_docs)


def test_the_api_reference_matches_the_docstrings(capsys):
    code = api_docs.main(["--check"])
    assert code == 0, f"docs/API.md is stale, run `make api-docs`:\n{capsys.readouterr().err}"


def test_the_check_fails_on_a_stale_file_and_leaves_it_alone(tmp_path, capsys):
    stale = tmp_path / "API.md"
    text = api_docs.render() + "A method the client no longer has.\n"
    stale.write_text(text)
    assert api_docs.main(["--check", "--output", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert stale.read_text() == text
    assert api_docs.main(["--output", str(stale)]) == 0  # regenerating makes it true
    assert api_docs.main(["--check", "--output", str(stale)]) == 0


def test_every_export_and_public_method_is_in_the_reference():
    text = api_docs.render()
    for name in raftkv.__all__:
        assert f"`raftkv.{name}" in text, name
    for name in ("put", "get", "cas", "delete", "scan", "close"):
        assert f"### `Client.{name}`" in text
        assert getattr(raftkv.Client, name).__doc__.splitlines()[0] in text


def test_another_process_and_hash_seed_render_the_same_bytes(tmp_path):
    out = tmp_path / "API.md"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, str(SCRIPT), "--output", str(out)], cwd=tmp_path,
                   env=env, check=True, timeout=60)
    assert out.read_text() == api_docs.render()
