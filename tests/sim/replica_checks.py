"""What the replica simulator (tests/sim/replica_sim.py) checks on every Ready: the Raft
paper's Figure 3 properties, as tests/sim/cluster.py's `Checker` does for bare cores."""

from __future__ import annotations

from typing import Any

from tests.sim.cluster import Checker, SafetyViolation


class SimFailure(AssertionError):
    """The run broke a rule: safety, liveness, or a replica that raised."""


class ReplicaChecker(Checker):
    """tests/sim/cluster.py's Figure 3 checks, with Leader Completeness as the paper
    states it: an entry committed in term T is in the log of every leader of a term
    above T. A leader of a lower term may come after the commit: a process paused with
    its vote grants waiting in its socket wins its (old) term once it resumes."""

    def __init__(self) -> None:
        super().__init__()
        # index -> the term of the node that first knew it committed: the committing
        # leader's, or a follower's of that same term (it took the leader's commit index)
        self.commit_terms: dict[int, int] = {}

    def on_commit(self, node: Any, upto: int) -> None:
        for index in range(max(self.max_committed, node.log.offset) + 1, upto + 1):
            self.commit_terms[index] = node.term
        super().on_commit(node, upto)

    def on_leader(self, node: Any) -> None:
        prev = self.leaders.setdefault(node.term, node.id)
        if prev != node.id:
            raise SafetyViolation(
                f"election safety: nodes {prev} and {node.id} both lead term {node.term}")
        for index in range(1, self.max_committed + 1):
            if self.commit_terms.get(index, 0) >= node.term:
                continue
            term = node.log.term(index)
            want = self.committed[index][0]
            if term is not None and term != want or term is None and index > node.log.offset:
                raise SafetyViolation(
                    f"leader completeness: leader {node.id} of term {node.term} has term "
                    f"{term} at index {index}, committed (term {want}) in term "
                    f"{self.commit_terms.get(index)}")
