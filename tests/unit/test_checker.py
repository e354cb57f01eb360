"""The linearizability checker (harness/checker.py): hand-written histories, a brute-force
cross-check, the history file and CLI, and a 5,000-op run.

Times in the hand-written histories are small ints; `h(...)` builds ops from compact rows.
Randomized tests are seeded; a failure names its seed. Replay one with
RAFTKV_CHECKER_SEED=<seed> .venv/bin/python -m pytest tests/unit/test_checker.py -k random
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.checker import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_UNKNOWN,
    EXIT_VIOLATION,
    Op,
    check,
    load_history,
    main,
    write_history,
)

REPO = Path(__file__).resolve().parents[2]
SEEDS = (
    [int(os.environ["RAFTKV_CHECKER_SEED"])]
    if os.environ.get("RAFTKV_CHECKER_SEED")
    else range(200)
)


def h(*rows: tuple[Any, ...], key: str = "k") -> list[Op]:
    """Rows of (client, op, input, output, invoke, complete[, status])."""
    ops = []
    for row in rows:
        client, op, inp, out, invoke, complete, *rest = row
        ops.append(Op(client, op, key, inp, out, rest[0] if rest else "ok", invoke, complete))
    return ops


def verdict(history: list[Op]) -> str:
    return check(history, timeout_s=10).verdict


# --- legal histories ------------------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    res = check([])
    assert (res.verdict, res.keys_checked, res.ops) == ("ok", 0, 0)


def test_sequential_history_is_linearizable() -> None:
    hist = h(
        (1, "get", None, None, 0, 1),
        (1, "put", "a", None, 2, 3),
        (2, "get", None, "a", 4, 5),
        (2, "cas", ["a", "b"], True, 6, 7),
        (1, "cas", ["a", "c"], False, 8, 9),
        (1, "get", None, "b", 10, 11),
        (2, "delete", None, True, 12, 13),
        (1, "get", None, None, 14, 15),
    )
    res = check(hist)
    assert (res.verdict, res.keys_checked, res.keys, res.ops) == ("ok", 1, 1, 8)
    assert res.ok


def test_read_concurrent_with_write_may_see_either_value() -> None:
    for seen in ("a", "b"):
        hist = h(
            (1, "put", "a", None, 0, 10),
            (2, "put", "b", None, 20, 40),
            (3, "get", None, seen, 25, 35),
        )
        assert verdict(hist) == "ok", seen


def test_concurrent_writes_may_land_in_either_order() -> None:
    for last in ("a", "b"):
        hist = h(
            (1, "put", "a", None, 0, 10),
            (2, "put", "b", None, 5, 15),
            (3, "get", None, last, 20, 30),
            (3, "get", None, last, 40, 50),
        )
        assert verdict(hist) == "ok", last


def test_reads_cannot_flip_back_after_concurrent_writes_settle() -> None:
    hist = h(
        (1, "put", "a", None, 0, 10),
        (2, "put", "b", None, 5, 15),
        (3, "get", None, "a", 20, 30),
        (3, "get", None, "b", 40, 50),
    )
    assert verdict(hist) == "violation"


def test_touching_intervals_count_as_concurrent() -> None:
    # The get completes at 10, the put is invoked at 10: either order is allowed.
    hist = h((1, "get", None, "a", 0, 10), (2, "put", "a", None, 10, 20))
    assert verdict(hist) == "ok"


# --- illegal histories ----------------------------------------------------------------


def test_stale_read_after_newer_write_completed_is_a_violation() -> None:
    hist = h(
        (1, "put", "a", None, 0, 10),
        (1, "put", "b", None, 20, 30),
        (2, "get", None, "a", 40, 50),
    )
    res = check(hist)
    assert res.verdict == "violation"
    assert res.key == "k"
    assert res.stuck is hist[2]
    assert res.prefix == hist[:2] and res.state == "b"


def test_lost_write_is_a_violation() -> None:
    # put b was acknowledged, yet every later read still sees a.
    hist = h(
        (1, "put", "a", None, 0, 10),
        (2, "put", "b", None, 20, 30),
        (1, "get", None, "a", 40, 50),
        (2, "get", None, "a", 60, 70),
    )
    assert verdict(hist) == "violation"


def test_read_of_a_value_never_written_is_a_violation() -> None:
    hist = h((1, "put", "a", None, 0, 10), (2, "get", None, "zzz", 5, 15))
    res = check(hist)
    assert res.verdict == "violation"
    assert res.stuck is hist[1]


def test_read_of_absent_key_after_a_write_is_a_violation() -> None:
    hist = h((1, "put", "a", None, 0, 10), (2, "get", None, None, 20, 30))
    assert verdict(hist) == "violation"


def test_cas_that_swapped_against_the_wrong_value_is_a_violation() -> None:
    hist = h(
        (1, "put", "a", None, 0, 10),
        (2, "cas", ["x", "b"], True, 20, 30),
    )
    assert verdict(hist) == "violation"


def test_cas_that_refused_a_matching_value_is_a_violation() -> None:
    hist = h((1, "put", "a", None, 0, 10), (2, "cas", ["a", "b"], False, 20, 30))
    assert verdict(hist) == "violation"


def test_cas_expecting_absent_swaps_only_when_absent() -> None:
    hist = h(
        (1, "cas", [None, "a"], True, 0, 10),
        (2, "cas", [None, "b"], False, 20, 30),
        (2, "get", None, "a", 40, 50),
    )
    assert verdict(hist) == "ok"
    hist[1].output = True
    assert verdict(hist) == "violation"


def test_cas_effect_is_seen_by_later_reads() -> None:
    hist = h(
        (1, "put", "a", None, 0, 10),
        (2, "cas", ["a", "b"], True, 20, 30),
        (3, "get", None, "a", 40, 50),
    )
    assert verdict(hist) == "violation"
    hist[2].output = "b"
    assert verdict(hist) == "ok"


# --- delete ---------------------------------------------------------------------------


def test_delete_reports_whether_the_key_existed_and_removes_it() -> None:
    hist = h(
        (1, "delete", None, False, 0, 10),
        (1, "put", "a", None, 20, 30),
        (2, "delete", None, True, 40, 50),
        (2, "get", None, None, 60, 70),
        (1, "delete", None, False, 80, 90),
    )
    assert verdict(hist) == "ok"


@pytest.mark.parametrize(
    ("index", "bad_output"),
    [(0, True), (2, False), (3, "a"), (4, True)],
    ids=["existed-on-empty", "missing-after-put", "read-after-delete", "deleted-twice"],
)
def test_delete_with_the_wrong_answer_is_a_violation(index: int, bad_output: Any) -> None:
    hist = h(
        (1, "delete", None, False, 0, 10),
        (1, "put", "a", None, 20, 30),
        (2, "delete", None, True, 40, 50),
        (2, "get", None, None, 60, 70),
        (1, "delete", None, False, 80, 90),
    )
    hist[index].output = bad_output
    assert verdict(hist) == "violation"


def test_concurrent_deletes_only_one_can_find_the_key() -> None:
    rows = [(1, "put", "a", None, 0, 10), (2, "delete", None, True, 20, 40)]
    ok = h(*rows, (3, "delete", None, False, 25, 35))
    both = h(*rows, (3, "delete", None, True, 25, 35))
    assert verdict(ok) == "ok"
    assert verdict(both) == "violation"


# --- info and fail --------------------------------------------------------------------


def test_info_write_may_appear_long_after_it_timed_out() -> None:
    hist = h(
        (1, "put", "a", None, 0, 10),
        (2, "put", "b", None, 20, None, "info"),
        (3, "get", None, "a", 100, 110),
        (3, "get", None, "b", 500, 510),
        (3, "get", None, "b", 600, 610),
    )
    assert verdict(hist) == "ok"


def test_info_write_may_never_take_effect() -> None:
    hist = h(
        (1, "put", "a", None, 0, 10),
        (2, "put", "b", None, 20, 30, "info"),
        (3, "get", None, "a", 100, 110),
    )
    assert verdict(hist) == "ok"


def test_info_write_visible_before_its_invoke_is_a_violation() -> None:
    hist = h(
        (1, "put", "a", None, 0, 10),
        (3, "get", None, "b", 20, 30),
        (2, "put", "b", None, 40, None, "info"),
    )
    res = check(hist)
    assert res.verdict == "violation"
    assert res.stuck is hist[1]


def test_info_write_cannot_appear_take_back_and_reappear() -> None:
    hist = h(
        (1, "put", "a", None, 0, 10),
        (2, "put", "b", None, 20, None, "info"),
        (3, "get", None, "b", 30, 40),
        (3, "get", None, "a", 50, 60),
        (3, "get", None, "b", 70, 80),
    )
    assert verdict(hist) == "violation"


def test_info_cas_and_delete_outputs_are_unconstrained() -> None:
    hist = h(
        (1, "put", "a", None, 0, 10),
        (2, "cas", ["a", "b"], None, 20, None, "info"),
        (3, "delete", None, None, 30, 40, "info"),
        (4, "get", None, "b", 50, 60),
        (4, "get", None, None, 70, 80),
    )
    assert verdict(hist) == "ok"


def test_info_get_is_dropped() -> None:
    hist = h(
        (1, "put", "a", None, 0, 10),
        (2, "get", None, "nonsense", 20, None, "info"),
    )
    assert verdict(hist) == "ok"


def test_failed_write_whose_value_is_read_is_a_violation() -> None:
    hist = h(
        (1, "put", "a", None, 0, 10),
        (2, "put", "b", None, 20, 30, "fail"),
        (3, "get", None, "b", 40, 50),
    )
    assert verdict(hist) == "violation"
    hist[1].status = "info"
    assert verdict(hist) == "ok"


def test_failed_write_is_ignored_by_later_reads() -> None:
    hist = h(
        (1, "put", "a", None, 0, 10),
        (2, "put", "b", None, 20, 30, "fail"),
        (3, "get", None, "a", 40, 50),
    )
    assert verdict(hist) == "ok"


# --- keys -----------------------------------------------------------------------------


def test_keys_are_checked_independently_and_the_bad_one_is_named() -> None:
    good = h((1, "put", "a", None, 0, 10), (2, "get", None, "a", 20, 30), key="good")
    bad = h((1, "put", "x", None, 0, 10), (2, "get", None, "y", 20, 30), key="bad")
    # Reading key "good"'s value from key "bad" is not a thing: "a" is never written there.
    res = check(good + bad)
    assert res.verdict == "violation" and res.key == "bad"
    assert all(op.key == "bad" for op in res.window)
    assert verdict(good + h((1, "put", "x", None, 0, 10), key="bad")) == "ok"


def test_bytes_and_str_keys_and_values_compare_by_utf8() -> None:
    hist = [
        Op(1, "put", b"k", b"caf\xc3\xa9", None, "ok", 0, 10),
        Op(2, "get", "k", None, "café", "ok", 20, 30),
        Op(2, "cas", b"k", [b"caf\xc3\xa9", b"\xff"], True, "ok", 40, 50),
        Op(2, "get", b"k", None, b"\xff", "ok", 60, 70),
    ]
    res = check(hist)
    assert (res.verdict, res.keys) == ("ok", 1)


def test_malformed_ops_are_refused() -> None:
    with pytest.raises(ValueError, match="complete"):
        check([Op(1, "get", "k", None, None, "ok", 10, None)])
    with pytest.raises(ValueError, match="precedes"):
        check([Op(1, "get", "k", None, None, "ok", 10, 5)])
    with pytest.raises(ValueError, match="op must be"):
        check([Op(1, "incr", "k", None, None, "ok", 0, 5)])
    with pytest.raises(ValueError, match="bool"):
        check([Op(1, "cas", "k", ["a", "b"], "yes", "ok", 0, 5)])


# --- explanation ----------------------------------------------------------------------


def test_explain_names_the_key_the_prefix_and_the_stuck_op() -> None:
    hist = h(
        (1, "put", "a", None, 1_000_000, 2_000_000),
        (2, "put", "b", None, 3_000_000, 4_000_000),
        (7, "get", None, "a", 5_000_000, 6_500_000),
    )
    res = check(hist)
    text = res.explain()
    print(text)
    lines = text.splitlines()
    assert lines[0].startswith("violation on key 'k'")
    assert "2 ops" in lines[1] and "'b'" in lines[1]
    stuck = next(line for line in lines if line.startswith(" >> "))
    assert "client    7" in stuck and "get" in stuck and "None -> 'a'" in stuck
    assert "[     4.000,      5.500] ok" in stuck  # ms relative to the first invoke
    assert sum("put" in line for line in lines) == 2


def test_explain_window_is_the_ops_around_the_stuck_point() -> None:
    rows = [(1, "put", f"v{i}", None, 100 * i, 100 * i + 10) for i in range(50)]
    rows.append((2, "get", None, "v3", 100 * 50, 100 * 50 + 10))
    res = check(h(*rows))
    assert res.verdict == "violation"
    assert len(res.prefix) == 50
    assert len(res.window) <= 5, res.explain()
    assert res.window[-1] is res.stuck


def test_explain_of_ok_and_unknown() -> None:
    assert check(h((1, "put", "a", None, 0, 1))).explain().startswith("ok: linearizable")
    res = check(pathological_history(), timeout_s=0.05)
    assert res.explain().startswith("unknown: the search ran past its 0.05 s budget")


# --- brute-force cross-check ----------------------------------------------------------


def brute_force_linearizable(ops: list[Op]) -> bool:
    """Every subset of info ops, every order of it plus the ok ops: the definition."""
    ops = [o for o in ops if o.status == "ok" or (o.status == "info" and o.op != "get")]
    ok_ops = [o for o in ops if o.status == "ok"]
    infos = [o for o in ops if o.status == "info"]
    inf = float("inf")
    for r in range(len(infos) + 1):
        for chosen in itertools.combinations(infos, r):
            for order in itertools.permutations(ok_ops + list(chosen)):
                if any(
                    (a.complete if a.status == "ok" else inf) < b.invoke
                    for j, b in enumerate(order)
                    for a in order[j + 1 :]
                ):
                    continue
                state = None
                for o in order:
                    info = o.status == "info"
                    if o.op == "put":
                        state = o.input
                    elif o.op == "get":
                        if o.output != state:
                            break
                    elif o.op == "delete":
                        if not info and o.output != (state is not None):
                            break
                        state = None
                    else:
                        swapped = state == o.input[0]
                        if not info and o.output != swapped:
                            break
                        if swapped:
                            state = o.input[1]
                else:
                    return True
    return False


def random_small_history(rng: random.Random, n: int) -> list[Op]:
    """Arbitrary (mostly not linearizable) ops on one key over a tiny value domain."""
    values = ["a", "b", None]
    ops = []
    for _ in range(n):
        invoke = rng.randrange(0, 60)
        complete = invoke + rng.randrange(0, 30)
        kind = rng.choice(["get", "put", "delete", "cas"])
        status = rng.choices(["ok", "info", "fail"], [8, 2, 1])[0]
        inp = out = None
        if kind == "put":
            inp = rng.choice(values[:2])
        elif kind == "cas":
            inp = [rng.choice(values), rng.choice(values[:2])]
        if kind == "get":
            out = rng.choice(values)
        elif kind in ("delete", "cas"):
            out = rng.random() < 0.5
        if status == "info" and rng.random() < 0.5:
            complete = None
        ops.append(Op(rng.randrange(4), kind, "k", inp, out, status, invoke, complete))
    return ops


@pytest.mark.parametrize("seed", SEEDS)
def test_random_small_histories_agree_with_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(5):
        hist = random_small_history(rng, rng.randrange(1, 7))
        expected = "ok" if brute_force_linearizable(hist) else "violation"
        got = check(hist)
        assert got.verdict == expected, (
            f"seed {seed}: checker says {got.verdict}, brute force {expected}\n"
            + "\n".join(o.to_json() for o in hist)
        )


# --- simulated register ---------------------------------------------------------------


def simulated_history(
    seed: int,
    n_ops: int = 5000,
    n_keys: int = 10,
    n_clients: int = 8,
    info_rate: float = 0.03,
    fail_rate: float = 0.02,
) -> list[Op]:
    """A linearizable history: each op takes effect at a random instant inside its
    interval (an info op: at some later instant, or never) on a plain dict.

    Clients run one op at a time; every written value is unique, so a read names its
    write. Times are ns-like ints.
    """
    rng = random.Random(seed)
    clock = [rng.randrange(1_000) for _ in range(n_clients)]
    written: dict[str, list[str]] = {f"k{i}": [] for i in range(n_keys)}
    ops: list[Op] = []
    effect_at: list[int | None] = []
    for n in range(n_ops):
        c = min(range(n_clients), key=clock.__getitem__)
        invoke = clock[c] + rng.randrange(0, 200_000)
        complete = invoke + rng.randrange(10_000, 2_000_000)
        clock[c] = complete
        key = f"k{rng.randrange(n_keys)}"
        kind = rng.choices(["get", "put", "cas", "delete"], [40, 30, 20, 10])[0]
        inp: Any = None
        if kind == "put":
            inp = f"v{n}"
            written[key].append(inp)
        elif kind == "cas":
            expected = rng.choice([None, *written[key][-3:]])
            inp = [expected, f"v{n}"]
            written[key].append(inp[1])
        status = "ok"
        at: int | None = rng.randrange(invoke, complete + 1)
        r = rng.random()
        if r < info_rate:
            status = "info"
            at = invoke + rng.randrange(0, 20_000_000) if rng.random() < 0.5 else None
            if rng.random() < 0.5:
                complete = None
        elif r < info_rate + fail_rate:
            status, at = "fail", None
        ops.append(Op(c, kind, key, inp, None, status, invoke, complete))
        effect_at.append(at)
    state: dict[str, str] = {}
    placed = [(at, op) for at, op in zip(effect_at, ops, strict=True) if at is not None]
    for _, op in sorted(placed, key=lambda p: p[0]):
        current = state.get(op.key)
        if op.op == "get":
            op.output = current
        elif op.op == "put":
            state[op.key] = op.input
        elif op.op == "delete":
            op.output = state.pop(op.key, None) is not None
        else:
            op.output = current == op.input[0]
            if op.output:
                state[op.key] = op.input[1]
    for op in ops:
        if op.status == "fail" and op.op in ("delete", "cas"):
            op.output = False
    return ops


def make_stale_read(ops: list[Op], rng: random.Random) -> Op:
    """Change one late read to return a value overwritten before it began; return it."""
    gets = [o for o in ops if o.op == "get" and o.status == "ok"]
    for g in reversed(gets[len(gets) // 2 :]):
        puts = sorted(
            (
                o
                for o in ops
                if o.key == g.key and o.op == "put" and o.status == "ok" and o.complete < g.invoke
            ),
            key=lambda o: o.complete,
        )
        for p2 in reversed(puts):
            older = [p1 for p1 in puts if p1.complete < p2.invoke and p1.input != g.output]
            if older:
                g.output = rng.choice(older).input
                return g
    raise AssertionError("no read to make stale")


@pytest.mark.parametrize("seed", SEEDS[:20])
def test_random_simulated_histories_are_linearizable(seed: int) -> None:
    hist = simulated_history(seed, n_ops=300, n_keys=3, n_clients=6, info_rate=0.1)
    res = check(hist, timeout_s=30)
    assert res.verdict == "ok", f"seed {seed}\n{res.explain()}"
    bad = make_stale_read(hist, random.Random(seed))
    res = check(hist, timeout_s=30)
    assert res.verdict == "violation", f"seed {seed}: {bad}\n{res.explain()}"
    assert res.key == bad.key, f"seed {seed}"


def test_5000_op_history_checks_ok_then_a_stale_read_is_found() -> None:
    seed = int(os.environ.get("RAFTKV_CHECKER_SEED", "20250"))
    hist = simulated_history(seed)
    assert len(hist) == 5000
    t = time.monotonic()
    res = check(hist, timeout_s=60)
    ok_s = time.monotonic() - t
    assert res.verdict == "ok", f"seed {seed}\n{res.explain()}"
    assert (res.keys_checked, res.keys, res.ops) == (10, 10, 5000)

    bad = make_stale_read(hist, random.Random(seed))
    t = time.monotonic()
    res = check(hist, timeout_s=60)
    bad_s = time.monotonic() - t
    print(f"\n5000 ops / 10 keys: ok in {ok_s:.2f} s; stale read found in {bad_s:.2f} s")
    assert res.verdict == "violation", f"seed {seed}: {bad}"
    assert res.key == bad.key and bad in res.concurrent, f"seed {seed}\n{res.explain()}"
    assert ok_s < 60 and bad_s < 60  # a hang guard, not a budget


# --- budgets --------------------------------------------------------------------------


def pathological_history(n: int = 24) -> list[Op]:
    """n mutually concurrent puts, then a read of a value none of them wrote: the search
    must try every subset of the puts (2^n states, each with n possible values)."""
    rows = [(i, "put", f"v{i}", None, 0, 1000) for i in range(n)]
    return h(*rows, (n, "get", None, "never", 2000, 2001))


def test_pathological_history_with_a_tiny_timeout_is_unknown() -> None:
    t = time.monotonic()
    res = check(pathological_history(), timeout_s=0.05)
    assert time.monotonic() - t < 5
    assert res.verdict == "unknown" and not res.ok
    assert res.keys_checked == 0 and "budget" in res.reason


def test_state_budget_gives_unknown() -> None:
    res = check(pathological_history(), timeout_s=60, max_states=10_000)
    assert res.verdict == "unknown" and "states" in res.reason


def test_small_pathological_history_is_decided() -> None:
    assert check(pathological_history(8), timeout_s=60).verdict == "violation"


# --- history file and CLI -------------------------------------------------------------


def test_history_file_round_trip(tmp_path: Path) -> None:
    hist = [
        Op(1, "put", b"k", b"\x00\xff", None, "ok", 5, 9),
        Op("c2", "cas", "k", [None, "x"], False, "ok", 6, 8),
        Op(3, "delete", "k", None, None, "info", 7, None),
        Op(4, "get", "k", None, None, "fail", 8, 10),
    ]
    path = tmp_path / "h.jsonl"
    write_history(path, hist)
    lines = path.read_text().splitlines()
    assert len(lines) == 4
    assert json.loads(lines[1]) == {
        "client": "c2",
        "op": "cas",
        "key": "k",
        "input": [None, "x"],
        "output": False,
        "status": "ok",
        "invoke": 6,
        "complete": 8,
    }
    back = load_history(path)
    assert back[0].key == "k" and back[0].input == b"\x00\xff".decode("utf-8", "surrogateescape")
    assert back[1:] == hist[1:]
    assert check(back).verdict == check(hist).verdict == "ok"


def test_load_history_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text(
        Op(1, "put", "k", "a", None, "ok", 0, 1).to_json()
        + "\n\n"
        + json.dumps({"client": 1, "op": "get", "key": "k", "status": "ok", "invoke": 3})
        + "\n"
    )
    with pytest.raises(ValueError, match=r"h\.jsonl:3: .*complete"):
        load_history(path)


def test_load_history_accepts_absent_complete_and_output(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text(
        json.dumps(
            {"client": 1, "op": "put", "key": "k", "input": "a", "status": "info", "invoke": 3}
        )
    )
    assert load_history(path) == [Op(1, "put", "k", "a", None, "info", 3, None)]


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.jsonl"
    write_history(good, h((1, "put", "a", None, 0, 10), (2, "get", None, "a", 20, 30)))
    bad = tmp_path / "bad.jsonl"
    write_history(bad, h((1, "put", "a", None, 0, 10), (2, "get", None, "b", 20, 30)))
    slow = tmp_path / "slow.jsonl"
    write_history(slow, pathological_history())

    assert main([str(good)]) == EXIT_OK
    assert capsys.readouterr().out.startswith("ok: linearizable")
    assert main([str(bad)]) == EXIT_VIOLATION
    out = capsys.readouterr().out
    assert out.startswith("violation on key 'k'") and " >> " in out
    assert main([str(slow), "--timeout", "0.05"]) == EXIT_UNKNOWN
    assert capsys.readouterr().out.startswith("unknown:")
    assert main([str(tmp_path / "missing.jsonl")]) == EXIT_BAD_INPUT
    assert main([str(bad), "--json"]) == EXIT_VIOLATION
    summary = json.loads(capsys.readouterr().out)
    assert summary["verdict"] == "violation" and summary["key"] == "k"
    assert summary["stuck"]["output"] == "b"


def test_cli_as_a_module(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    write_history(bad, h((1, "put", "a", None, 0, 10), (2, "get", None, "b", 20, 30)))
    run = subprocess.run(
        [sys.executable, "-m", "harness.checker", str(bad), "--timeout", "5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == EXIT_VIOLATION, run.stderr
    assert "violation on key 'k'" in run.stdout
    helped = subprocess.run(
        [sys.executable, "-m", "harness.checker", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "exit status: 0 linearizable, 1 violation, 3 unknown" in helped.stdout
