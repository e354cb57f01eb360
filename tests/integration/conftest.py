from __future__ import annotations

import pytest

from tests.integration.procs import ProcCluster


@pytest.fixture
def cluster(tmp_path):
    """Three real node processes on free loopback ports, killed by pid afterwards."""
    c = ProcCluster(3, tmp_path)
    c.start_all()
    try:
        yield c
    finally:
        c.close()
