"""Settings shared by the Hypothesis fuzz tests (tests/unit/test_*_fuzz.py).

`make test` runs each with a small, derandomized sample: the same examples every run,
so a failure reproduces as it is. Longer runs, by environment variable:

    RAFTKV_FUZZ_EXAMPLES=5000   examples per test instead of its default
    RAFTKV_FUZZ_SEED=N          other examples than the default ones, the same for one N

for example `RAFTKV_FUZZ_EXAMPLES=5000 RAFTKV_FUZZ_SEED=7 make test`. Hypothesis prints
a failing example's draws; replay it with the same two variables.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from hypothesis import HealthCheck, seed, settings

EXAMPLES = os.environ.get("RAFTKV_FUZZ_EXAMPLES")
SEED = os.environ.get("RAFTKV_FUZZ_SEED")

F = TypeVar("F", bound=Callable[..., object])


def fuzz(examples: int) -> Callable[[F], F]:
    """Decorate a @given test: `examples` examples (RAFTKV_FUZZ_EXAMPLES overrides),
    derandomized unless RAFTKV_FUZZ_SEED picks a seed; no example database, no deadline
    (a run's time is bounded by its example count)."""
    n = int(EXAMPLES) if EXAMPLES else examples

    def decorate(test: F) -> F:
        configured = settings(max_examples=n, deadline=None, derandomize=SEED is None,
                              database=None,
                              suppress_health_check=[HealthCheck.too_slow])(test)
        return seed(int(SEED))(configured) if SEED is not None else configured

    return decorate
