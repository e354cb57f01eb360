"""Fixtures shared by unit tests that opt in (`pytestmark = pytest.mark.usefixtures(...)`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture
def quiet_storage_log() -> Iterator[None]:
    """Storage's warnings (torn tails, repairs) off: tests that crash a disk thousands of
    times check the outcome, not the log."""
    logger = logging.getLogger("raftkv.storage")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)
