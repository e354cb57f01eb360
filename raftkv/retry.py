"""How a client paces its attempts: `Retry`, given as `Client(..., retry=Retry(...))`.

A request has one budget, its deadline (`timeout`); the policy only decides how that
budget is spent. Each attempt waits `attempt_timeout` for a reply before the client
tries another address, and that wait grows by `growth` after every attempt that got no
reply, up to `max_attempt_timeout`. After each round of fruitless attempts (as many as
there are addresses: every node refused, or did not answer), the client pauses before
the next round so that an election is not hammered: "full jitter" (AWS, Exponential
Backoff and Jitter), a pause drawn uniformly from [0, min(backoff_cap, backoff_base *
2**n)] after the n-th fruitless round (n from 0). The draw spreads the retries of many
clients that lost their leader at the same moment. No pause and no attempt outlasts the
request's deadline: the client cuts both at it.

    from raftkv import Client, Retry
    Client(addrs, retry=Retry(backoff_cap=1.0))              # patient with elections
    Client(addrs, retry=Retry(rng=random.Random(7)))         # reproducible pauses (tests)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

DEFAULT_ATTEMPT_TIMEOUT = 0.5  # seconds without a reply before trying another address
MAX_ATTEMPT_TIMEOUT = 2.0
ATTEMPT_GROWTH = 1.5
FIRST_PAUSE = 0.01  # seconds: the back-off's base (its first round's ceiling)
MAX_PAUSE = 0.2  # seconds: the back-off's cap


@dataclass(frozen=True)
class Retry:
    """A client's retry policy (see raftkv.retry): per-attempt timeouts that grow, and
    a full-jitter back-off between fruitless rounds. The request's deadline bounds both.

    `attempt_timeout`: seconds to wait for one node's reply before trying another;
    after each attempt with no reply it is multiplied by `growth`, up to
    `max_attempt_timeout`. `backoff_base`, `backoff_cap`: the pause after the n-th
    fruitless round (n from 0) is uniform in [0, min(backoff_cap, backoff_base * 2**n)].
    `rng`: the random source of the pauses (a seeded `random.Random` makes them
    reproducible); by default the `random` module's. Immutable, so one policy may be
    shared by many clients (a shared `rng` is then shared too)."""

    attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT
    growth: float = ATTEMPT_GROWTH
    max_attempt_timeout: float = MAX_ATTEMPT_TIMEOUT
    backoff_base: float = FIRST_PAUSE
    backoff_cap: float = MAX_PAUSE
    rng: random.Random | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.attempt_timeout > 0 or not self.max_attempt_timeout > 0:
            raise ValueError(f"attempt_timeout ({self.attempt_timeout}) and "
                             f"max_attempt_timeout ({self.max_attempt_timeout}) must be > 0")
        if not self.growth >= 1:
            raise ValueError(f"growth must be >= 1, not {self.growth!r}")
        if not self.backoff_base >= 0 or not self.backoff_cap >= 0:
            raise ValueError(f"backoff_base ({self.backoff_base}) and backoff_cap "
                             f"({self.backoff_cap}) must be >= 0")

    def next_attempt_timeout(self, current: float, ceiling: float | None = None) -> float:
        """The attempt timeout after an attempt of `current` seconds got no reply:
        grown, but not past `ceiling` (default `max_attempt_timeout`) and never below
        `current` (a first timeout above the ceiling stays as given)."""
        top = self.max_attempt_timeout if ceiling is None else ceiling
        return max(current, min(current * self.growth, top))

    def backoff(self, rounds: int) -> float:
        """The pause, in seconds, after fruitless round `rounds` (0 for the first):
        uniform in [0, min(backoff_cap, backoff_base * 2**rounds)]."""
        if rounds < 0:
            raise ValueError(f"rounds must be >= 0, not {rounds}")
        # 2**rounds grows without bound; past 64 doublings the cap has long applied.
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0 ** min(rounds, 64))
        return (self.rng or random).uniform(0.0, ceiling)
