"""Majority arithmetic over a set of voters (paper §5.2, §5.3)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from enum import IntEnum


class VoteResult(IntEnum):
    PENDING = 0
    LOST = 1
    WON = 2


def majority(n: int) -> int:
    return n // 2 + 1


def committed_index(voters: Collection[int], acked: Mapping[int, int]) -> int:
    """The largest index that a majority of `voters` has acknowledged (0 when none).

    Used for commit (acked = match index) and for read-index rounds (acked = round).
    """
    if not voters:
        return 0
    values = sorted((acked.get(v, 0) for v in voters), reverse=True)
    return values[majority(len(values)) - 1]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    need = majority(len(voters))
    if granted >= need:
        return VoteResult.WON
    if len(voters) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING
