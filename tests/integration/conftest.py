from __future__ import annotations

import pytest

from harness.launcher import LocalCluster


@pytest.fixture
def cluster(tmp_path):
    """Three real node processes on free loopback ports, killed by pid afterwards."""
    c = LocalCluster(3, tmp_path)
    c.start_all()
    try:
        yield c
    finally:
        c.close()
