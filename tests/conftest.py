from __future__ import annotations

import pytest

from raftkv.security import ENV_CREDENTIALS


@pytest.fixture(autouse=True)
def no_inherited_credentials(monkeypatch):
    """Every test starts without $RAFTKV_CREDENTIALS, and what it sets there (a cluster
    brought up in-process names its admin key) is undone after it."""
    monkeypatch.delenv(ENV_CREDENTIALS, raising=False)
