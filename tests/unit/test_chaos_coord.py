"""The lock and lease checks of `raftkv chaos --coordination` (harness/chaos_coord.py):
each accepts what the rules allow and rejects a history that breaks them."""

from __future__ import annotations

from harness.chaos_coord import Hold, LeaseRecord, lease_problems, lock_problems

S = 1_000_000_000  # ns a second


def test_holds_one_after_another_with_growing_tokens_pass() -> None:
    holds = [Hold(1, 10, 0, 1 * S, True), Hold(2, 14, 2 * S, 3 * S, True),
             Hold(1, 20, 3 * S + 1, 4 * S, True)]
    assert lock_problems(holds) == []


def test_two_live_holders_at_once_are_caught() -> None:
    holds = [Hold(1, 10, 0, 2 * S, True), Hold(2, 14, 1 * S, 3 * S, True)]
    assert any("held twice at once" in p for p in lock_problems(holds))


def test_a_token_that_goes_back_is_caught() -> None:
    holds = [Hold(1, 10, 0, 1 * S, True), Hold(2, 9, 2 * S, 3 * S, True)]
    assert any("tokens went back" in p for p in lock_problems(holds))


def test_a_hold_whose_lease_may_have_lapsed_is_left_to_the_fencing_token() -> None:
    holds = [Hold(1, 10, 0, 5 * S, False), Hold(2, 14, 1 * S, 3 * S, True)]
    assert lock_problems(holds) == []


def lease(resets: list[tuple[float, float]], observed: float | None) -> LeaseRecord:
    return LeaseRecord(7, "chaos-lease/7", [(int(a * S), int(b * S)) for a, b in resets], 0,
                       True, None if observed is None else int(observed * S))


def test_a_lease_never_kept_alive_may_end_a_ttl_after_its_grant_was_sent() -> None:
    assert lease_problems([lease([(0, 0.1)], 2.05)], ttl=2.0) == []
    assert lease_problems([lease([(0, 0.1)], None)], ttl=2.0) == []  # not seen: not judged
    early = lease_problems([lease([(0, 0.1)], 1.5)], ttl=2.0)
    assert early and "revoked before its TTL" in early[0]


def test_a_lease_kept_alive_is_judged_by_the_widest_window_between_resets() -> None:
    kept = [(0, 0.1), (0.5, 0.6), (1.0, 1.1), (1.5, 1.6)]
    assert lease_problems([lease(kept, 3.4)], ttl=2.0)  # 1.9 s after the last send: early
    assert lease_problems([lease(kept, 3.6)], ttl=2.0) == []
    gap = [(0, 0.1), (0.5, 0.6), (2.4, 2.7)]  # 2.2 s from a send to the next answer
    assert lease_problems([lease(gap, 2.9)], ttl=2.0) == []
    # a keepalive sent after the delete arrived does not count
    assert lease_problems([lease([(0, 0.1), (3.0, 3.1)], 2.5)], ttl=2.0) == []
