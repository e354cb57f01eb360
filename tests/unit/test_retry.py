"""The retry policy (raftkv/retry.py): full-jitter back-off within its bounds, attempt
timeouts that grow to a cap, reproducible draws from a seeded source, and a client that
spends no more than a request's deadline however the policy is set."""

from __future__ import annotations

import random
import time

import pytest

from raftkv import Retry
from raftkv.client import FIRST_PAUSE, MAX_PAUSE, Client, Unavailable
from tests.unit import test_client as fakes
from tests.unit.test_client import dead_address, not_leader

# test_client's fixtures: its fake nodes, and clients closed after each test.
ctx, node, client = fakes.ctx, fakes.node, fakes.client


def test_defaults_are_the_clients_former_constants() -> None:
    r = Retry()
    assert (r.attempt_timeout, r.growth, r.max_attempt_timeout) == (0.5, 1.5, 2.0)
    assert (r.backoff_base, r.backoff_cap) == (FIRST_PAUSE, MAX_PAUSE) == (0.01, 0.2)


def test_backoff_is_full_jitter_below_the_doubling_ceiling_and_the_cap() -> None:
    r = Retry(backoff_base=0.01, backoff_cap=0.2, rng=random.Random(1))
    for n in range(12):
        ceiling = min(0.2, 0.01 * 2**n)
        draws = [r.backoff(n) for _ in range(400)]
        assert all(0.0 <= d <= ceiling for d in draws)
        # Spread over the whole range, not pinned to the ceiling (the old back-off was).
        assert min(draws) < ceiling * 0.1 and max(draws) > ceiling * 0.9
    assert r.backoff(10_000) <= 0.2  # no overflow far past the cap
    with pytest.raises(ValueError, match="rounds"):
        r.backoff(-1)


def test_a_seeded_source_gives_the_same_pauses() -> None:
    a = Retry(rng=random.Random(42))
    b = Retry(rng=random.Random(42))
    assert [a.backoff(n) for n in range(10)] == [b.backoff(n) for n in range(10)]
    assert a == b  # the source does not make two policies differ


def test_attempt_timeouts_grow_by_the_factor_up_to_the_cap() -> None:
    r = Retry(attempt_timeout=0.5, growth=1.5, max_attempt_timeout=2.0)
    t, seen = r.attempt_timeout, []
    for _ in range(6):
        t = r.next_attempt_timeout(t)
        seen.append(t)
    assert seen == [0.75, 1.125, 1.6875, 2.0, 2.0, 2.0]
    assert r.next_attempt_timeout(3.0) == 3.0  # a first timeout above the cap stays
    assert r.next_attempt_timeout(1.0, ceiling=1.2) == 1.2


@pytest.mark.parametrize("kw", [{"attempt_timeout": 0}, {"max_attempt_timeout": -1},
                                {"growth": 0.5}, {"backoff_base": -0.1},
                                {"backoff_cap": float("nan")}])
def test_bad_fields_are_refused(kw: dict) -> None:
    with pytest.raises(ValueError):
        Retry(**kw)


def test_the_client_takes_the_policy_and_attempt_timeout_overrides_it(client) -> None:
    policy = Retry(attempt_timeout=0.3, backoff_cap=0.05)
    kv = client(dead_address(), retry=policy)
    assert kv.retry is policy and kv.attempt_timeout == 0.3
    kv2 = client(dead_address(), retry=policy, attempt_timeout=0.1)
    assert kv2.attempt_timeout == 0.1 and kv2.retry.backoff_cap == 0.05
    with pytest.raises(TypeError, match="Retry"):
        Client(dead_address(), retry=0.5)  # type: ignore[arg-type]


class CountingRandom(random.Random):
    """A source that records each ceiling the client asks it to draw below."""

    def __init__(self) -> None:
        super().__init__(0)
        self.ceilings: list[float] = []

    def uniform(self, a: float, b: float) -> float:
        self.ceilings.append(b)
        return b  # the longest pause the policy allows


def test_the_client_pauses_by_the_policy_after_each_fruitless_round(node, client) -> None:
    rng = CountingRandom()
    refuser = node(not_leader(0))
    kv = client(refuser.address, retry=Retry(backoff_base=0.01, backoff_cap=0.04, rng=rng))
    with pytest.raises(Unavailable):  # 2 s: room for the 5 rounds below on a slow machine
        kv.get("k", timeout=2.0)
    # One address: every refusal closes a round. Ceilings double from the base to the cap.
    assert rng.ceilings[:5] == [0.01, 0.02, 0.04, 0.04, 0.04]
    # A pause follows each refusal the fake recorded; at most one attempt after the last.
    assert len(rng.ceilings) <= len(refuser.requests) <= len(rng.ceilings) + 1


def test_the_deadline_bounds_the_pauses_and_the_attempts(node, client) -> None:
    """A policy that would pause 30 s and wait 30 s an attempt: the call still ends at
    its 0.4 s deadline."""
    slow = Retry(attempt_timeout=30, max_attempt_timeout=30, backoff_base=30, backoff_cap=30)
    refuser = node(not_leader(0))
    kv = client(refuser.address, retry=slow)
    start = time.monotonic()
    with pytest.raises(Unavailable):
        kv.get("k", timeout=0.4)
    assert 0.4 <= time.monotonic() - start < 1.5
