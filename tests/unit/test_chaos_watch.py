"""The chaos run's watch check (harness/chaos.py: `watch_problems`) finds a repeated, a
missed and a misordered event, and holds a watch cut short by COMPACTED to what it saw."""

from __future__ import annotations

from types import SimpleNamespace

from harness.chaos import watch_problems


def put(client: int, key: str, value: str, revision: int, status: str = "ok") -> dict:
    return {"client": client, "op": "put", "key": key, "input": value, "status": status,
            "revision": revision}


HISTORY = [put(1, "k1", "a", 5), put(2, "k2", "b", 6), put(1, "k1", "c", 8),
           put(2, "k2", "lost?", 9, status="info"), {"client": 1, "op": "get", "key": "k1",
                                                     "status": "ok"}]


def watcher(events: list, compacted: int | None = None, error: str | None = None):
    return SimpleNamespace(events=events, compacted=compacted, error=error)


def test_every_acknowledged_put_seen_once_in_order_is_no_problem() -> None:
    events = [(5, "put", "k1", "a"), (6, "put", "k2", "b"), (7, "delete", "k2", None),
              (8, "put", "k1", "c")]
    assert watch_problems(watcher(events), HISTORY) == []


def test_a_repeated_a_missed_and_a_misordered_event_are_each_reported() -> None:
    repeated = [(5, "put", "k1", "a"), (5, "put", "k1", "a"), (6, "put", "k2", "b"),
                (8, "put", "k1", "c")]
    assert any("repeated" in p for p in watch_problems(watcher(repeated), HISTORY))
    missed = [(5, "put", "k1", "a"), (8, "put", "k1", "c")]
    assert [p for p in watch_problems(watcher(missed), HISTORY)] == [
        "watch missed the put k2='b' at revision 6 (client 2): saw None"]
    wrong_value = [(5, "put", "k1", "a"), (6, "put", "k2", "x"), (8, "put", "k1", "c")]
    assert "saw ('put', 'x')" in watch_problems(watcher(wrong_value), HISTORY)[0]
    misordered = [(6, "put", "k2", "b"), (5, "put", "k1", "a"), (8, "put", "k1", "c")]
    assert watch_problems(watcher(misordered), HISTORY) == [
        "watch events out of revision order"]


def test_a_watch_stopped_by_compacted_is_held_only_to_what_came_before() -> None:
    assert watch_problems(watcher([(5, "put", "k1", "a")], compacted=6), HISTORY) == []
    assert watch_problems(watcher([], compacted=6), HISTORY) == [
        "watch missed the put k1='a' at revision 5 (client 1): saw None"]
    assert watch_problems(watcher([(5, "put", "k1", "a"), (6, "put", "k2", "b"),
                                   (8, "put", "k1", "c")], error="boom"), HISTORY) == [
        "watch failed: boom"]


def test_the_puts_of_an_acknowledged_txn_are_held_to_the_watch_too() -> None:
    transfer = {"client": 3, "op": "txn", "key": None, "status": "ok",
                "input": {"compare": [["mod", "k1", "==", 8]],
                          "success": [["put", "k1", "d"], ["put", "k2", "e"]],
                          "failure": [["get", "k1"]]},
                "output": [True, [10, 10]]}
    failed = dict(transfer, output=[False, [["c", 5, 8, 2]]])
    events = [(5, "put", "k1", "a"), (6, "put", "k2", "b"), (8, "put", "k1", "c"),
              (10, "put", "k1", "d"), (10, "put", "k2", "e")]
    assert watch_problems(watcher(events), HISTORY + [transfer, failed]) == []
    assert watch_problems(watcher(events[:4]), HISTORY + [transfer]) == [
        "watch missed the put k2='e' at revision 10 (client 3): saw None"]


def test_an_unknown_verdict_is_reported_with_the_checkers_reason(tmp_path, monkeypatch) -> None:
    """A check that gave up for a reason other than time (a guessed txn branch, the
    state budget) must say so, not claim it ran past --check-timeout."""
    from harness import chaos, checker

    reason = ("no linearization was found, but the search had to guess the branch of an "
              "indeterminate txn")
    history = [{**put(1, "k1", "a", 5), "invoke": 1, "complete": 2}]
    (tmp_path / "history.jsonl").write_text("")
    monkeypatch.setattr(checker, "check", lambda *a, **kw: checker.Result(
        "unknown", 0, 1, 1, 0.01, reason=reason))
    monkeypatch.setattr(checker, "load_history", lambda path: [])
    monkeypatch.setattr(chaos.ClusterState, "load", staticmethod(lambda d: None))
    monkeypatch.setattr(chaos, "divergent_nodes", lambda state, keys: [])
    report = chaos.ChaosReport()
    chaos.check_history(chaos.ChaosConfig(workload="txn", check_timeout=60.0),
                        SimpleNamespace(dir=tmp_path), history, tmp_path, report,
                        lambda m: None)
    assert report.linearizability == "unknown"
    assert any(reason in p for p in report.problems), report.problems
    assert not any("ran past 60s" in p for p in report.problems), report.problems
