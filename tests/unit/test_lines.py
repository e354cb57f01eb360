"""The tests' deadline on a child's output line (tests/lines.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.lines import line_within


def run(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_a_line_that_comes_is_returned_and_one_that_does_not_fails_naming_it():
    p = run("import time; print('ready', flush=True); time.sleep(60)")
    try:
        assert line_within(p.stdout, 30, "ready") == "ready\n"
        with pytest.raises(AssertionError, match="no line in 0.2 s: the second line"):
            line_within(p.stdout, 0.2, "the second line")
    finally:
        p.kill()
        p.wait()


def test_output_that_ends_first_fails_at_once():
    p = run("pass")
    try:
        with pytest.raises(AssertionError, match="ended before the token"):
            line_within(p.stdout, 30, "the token")
    finally:
        p.wait()
