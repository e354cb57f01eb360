"""Linearizability checker for histories of the raftkv key/value store.

A history is what real clients saw: for every operation, when it was invoked, when (if
ever) it completed, and what it returned. The history is linearizable when there is one
total order of the operations that (1) respects real time -- an operation that completed
before another was invoked comes first -- and (2) is a legal run of a sequential
key/value map. This module decides that.

The search is Wing & Gong's (1993) backtracking search over candidate linearizations,
with Lowe's (2017) memoisation: a configuration is the set of operations linearized so
far (a bitset in a Python int) plus the model state it led to; a configuration seen once
is never explored again, which turns the exponential search into one over distinct
(set, state) pairs. Candidates are chosen "just in time" as in Lowe: walking the call
and return events in time order, an operation may be linearized next only if it was
invoked before the earliest completion among the operations not yet linearized. Reaching
the return of an operation that is not linearized means the current prefix cannot be
extended, and the search backtracks.

Every operation touches one key, so the history is checked one key at a time (the
locality/P-compositionality of Herlihy & Wing, used the same way by Lowe): the whole
history is linearizable iff each key's sub-history is. The model for one key is its value
or absent (None):

    put(v)            -> None     value := v
    get()             -> value    (unchanged)
    delete()          -> existed  value := absent
    cas(expected,new) -> swapped  if value == expected (None = absent): value := new

Status of an operation: ``ok`` completed with that output; ``fail`` certainly did not
take effect (dropped before checking); ``info`` unknown -- it may have taken effect at any
moment after its invoke, or never. An info op is treated as completing at +infinity with
an unconstrained output, so only its effect on the state matters; an info get has no
effect and is dropped. The search succeeds once every ``ok`` op is linearized: any info
op still unplaced is taken never to have happened.

History file (JSON lines, one operation per line)::

    {"client": 3, "op": "cas", "key": "k1", "input": ["a", "b"], "output": true,
     "status": "ok", "invoke": 1712000000000, "complete": 1712000400000}

``input``: put -> value; cas -> [expected or null, new]; get/delete -> null. ``output``:
get -> value or null; delete -> existed (bool); cas -> swapped (bool); put -> null.
Times are integers (``time.monotonic_ns()``); ``complete`` may be null or absent for an
info op. Bytes keys and values are written as str (UTF-8, undecodable bytes escaped with
surrogateescape); the model compares bytes and str by that same decoding, so b"x" == "x".

Command line::

    python -m harness.checker HISTORY.jsonl [--timeout S] [--json]

prints the verdict and, for a violation, the operations of the offending key around the
point where no order exists. Exit status: 0 linearizable, 1 violation, 3 unknown (the
search ran out of time or of its state budget), 2 bad usage or an unreadable history.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPS = ("get", "put", "delete", "cas")
STATUSES = ("ok", "fail", "info")

EXIT_OK = 0
EXIT_VIOLATION = 1
EXIT_BAD_INPUT = 2
EXIT_UNKNOWN = 3

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_STATES = 5_000_000  # memoised configurations across all keys (~1 GB worst case)

_GET, _PUT, _DELETE, _CAS = range(4)
_CODE = {"get": _GET, "put": _PUT, "delete": _DELETE, "cas": _CAS}
_CHECK_CLOCK_EVERY = 512  # search steps between two looks at the clock
_CONTEXT_OPS = 3  # linearized ops shown before the stuck point in an explanation


def _to_text(x: Any) -> Any:
    """bytes -> str (UTF-8, surrogateescape); anything else unchanged."""
    if isinstance(x, bytes | bytearray):
        return bytes(x).decode("utf-8", "surrogateescape")
    return x


def _value(x: Any, what: str) -> Hashable:
    """A value as the model compares it: str/bytes as text, None as absent."""
    x = _to_text(x)
    if not isinstance(x, Hashable) or isinstance(x, bool):
        raise ValueError(f"{what} must be a str, bytes, number or None, not {x!r}")
    return x


@dataclass(slots=True)
class Op:
    """One client operation as recorded: what was asked, what came back, and when.

    ``invoke`` and ``complete`` are ``time.monotonic_ns()`` readings; ``complete`` is None
    for an ``info`` op that never completed.
    """

    client: int | str
    op: str
    key: str | bytes
    input: Any = None
    output: Any = None
    status: str = "ok"
    invoke: int = 0
    complete: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form: bytes as str, cas input as a list."""
        inp = self.input
        if self.op == "cas" and inp is not None:
            inp = [_to_text(inp[0]), _to_text(inp[1])]
        else:
            inp = _to_text(inp)
        return {
            "client": self.client,
            "op": self.op,
            "key": _to_text(self.key),
            "input": inp,
            "output": _to_text(self.output),
            "status": self.status,
            "invoke": self.invoke,
            "complete": self.complete,
        }

    def to_json(self) -> str:
        """One line of a history file (no trailing newline)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Op:
        """Build and validate an Op from a parsed history line; ValueError if malformed."""
        try:
            op = cls(
                client=d["client"],
                op=d["op"],
                key=d["key"],
                input=d.get("input"),
                output=d.get("output"),
                status=d["status"],
                invoke=d["invoke"],
                complete=d.get("complete"),
            )
        except KeyError as e:
            raise ValueError(f"missing field {e.args[0]!r}") from None
        op.validate()
        return op

    def validate(self) -> None:
        """Raise ValueError unless the op is well formed for its kind and status."""
        if self.op not in OPS:
            raise ValueError(f"op must be one of {OPS}, not {self.op!r}")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")
        if not isinstance(self.key, str | bytes):
            raise ValueError(f"key must be str or bytes, not {self.key!r}")
        if type(self.invoke) is not int:
            raise ValueError(f"invoke must be an int, not {self.invoke!r}")
        if self.complete is not None:
            if type(self.complete) is not int:
                raise ValueError(f"complete must be an int or None, not {self.complete!r}")
            if self.complete < self.invoke:
                raise ValueError(f"complete {self.complete} precedes invoke {self.invoke}")
        elif self.status == "ok":
            raise ValueError("an ok op needs a complete time")
        if self.op == "put" and _value(self.input, "put input") is None:
            raise ValueError("put needs a value")
        if self.op == "cas":
            if not isinstance(self.input, list | tuple) or len(self.input) != 2:
                raise ValueError(f"cas input must be [expected, new], not {self.input!r}")
            _value(self.input[0], "cas expected")
            if _value(self.input[1], "cas new") is None:
                raise ValueError("cas needs a new value")
        if self.status == "ok":
            if self.op in ("delete", "cas") and type(self.output) is not bool:
                raise ValueError(f"an ok {self.op} must output a bool, not {self.output!r}")
            if self.op == "get":
                _value(self.output, "get output")


def load_history(path: str | Path) -> list[Op]:
    """Read a JSON-lines history file (see the module docstring); blank lines are skipped.

    Raises ValueError naming the line of the first malformed operation.
    """
    ops: list[Op] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
                ops.append(Op.from_dict(obj))
            except ValueError as e:
                raise ValueError(f"{path}:{n}: {e}") from None
    return ops


def write_history(path: str | Path, history: Iterable[Op]) -> None:
    """Write ops as a JSON-lines history file that `load_history` reads back."""
    with open(path, "w", encoding="utf-8") as f:
        for op in history:
            f.write(op.to_json())
            f.write("\n")


@dataclass(slots=True)
class Result:
    """The verdict on a history, and for a violation the evidence on one key.

    verdict       "ok" (linearizable), "violation", or "unknown" (budget ran out; never
                  read it as ok)
    keys_checked  keys whose sub-history was fully decided
    keys          distinct keys in the history
    ops           operations in the history, of any status
    elapsed_s     wall time of the check
    reason        for "unknown": which budget ran out
    key           for "violation": the key with no linearization
    prefix        the longest linearizable prefix the search reached, in that order
    stuck         the op whose completion that prefix could not be extended past
    concurrent    the ops not in the prefix invoked before `stuck` completed: every
                  order of them from the prefix's state was tried (includes `stuck`)
    state         the key's value after `prefix` (None = absent)
    window        the ops to read: the tail of `prefix` overlapping the stuck point,
                  then `concurrent`, in invoke order
    origin        the time (ns) that explain() prints as 0 ms
    """

    verdict: str
    keys_checked: int
    keys: int
    ops: int
    elapsed_s: float = 0.0
    reason: str = ""
    key: str | bytes | None = None
    prefix: list[Op] = field(default_factory=list)
    stuck: Op | None = None
    concurrent: list[Op] = field(default_factory=list)
    state: Any = None
    window: list[Op] = field(default_factory=list)
    origin: int = 0

    @property
    def ok(self) -> bool:
        """True only for a proven-linearizable history."""
        return self.verdict == "ok"

    def explain(self) -> str:
        """A human-readable account; for a violation, one line per op of the window."""
        head = (
            f"{self.ops} ops, {self.keys_checked}/{self.keys} keys checked, {self.elapsed_s:.2f} s"
        )
        if self.verdict == "ok":
            return f"ok: linearizable ({head})"
        if self.verdict == "unknown":
            return f"unknown: {self.reason} ({head})"
        lines = [f"violation on key {self.key!r}: no linearization exists ({head})"]
        in_window = {id(op) for op in self.window}
        shown = [op for op in self.prefix if id(op) in in_window]
        hidden = len(self.prefix) - len(shown)
        lines.append(
            f"  longest linearizable prefix: {len(self.prefix)} ops, leaving the key "
            + ("absent" if self.state is None else f"= {self.state!r}")
            + (f"; its last {len(shown)} (after {hidden} earlier):" if hidden else ":")
        )
        lines += ["    " + format_op(op, self.origin) for op in shown]
        lines.append("  cannot be extended past the completion of:")
        if self.stuck is not None:
            lines.append(" >> " + format_op(self.stuck, self.origin))
        others = [op for op in self.concurrent if op is not self.stuck]
        if others:
            lines.append("  other ops still unplaced at that point (each order was tried):")
            lines += ["    " + format_op(op, self.origin) for op in others]
        return "\n".join(lines)


def format_op(op: Op, origin: int = 0) -> str:
    """`client op key input -> output [invoke, complete] ms status`, times from origin."""

    def ms(t: int | None) -> str:
        return "      -   " if t is None else f"{(t - origin) / 1e6:10.3f}"

    inp = op.input
    if op.op == "cas" and inp is not None:
        inp = [_to_text(inp[0]), _to_text(inp[1])]
    else:
        inp = _to_text(inp)
    out = "?" if op.status != "ok" else repr(_to_text(op.output))
    return (
        f"client {op.client!s:>4} {op.op:<6} {_to_text(op.key)!r:<10} "
        f"{inp!r} -> {out:<12} [{ms(op.invoke)}, {ms(op.complete)}] {op.status}"
    )


class _Budget:
    """The search's shared limits: an overall deadline and a count of memoised states."""

    __slots__ = ("deadline", "states_left", "reason")

    def __init__(self, timeout_s: float, max_states: int | None) -> None:
        self.deadline = time.monotonic() + timeout_s
        self.states_left = max_states if max_states is not None else -1
        self.reason = ""


@dataclass(slots=True)
class _KeyVerdict:
    verdict: str
    prefix: list[int] = field(default_factory=list)
    stuck: int = -1
    candidates: list[int] = field(default_factory=list)
    state: Any = None


def _check_key(ops: list[Op], budget: _Budget) -> _KeyVerdict:
    """Wing & Gong search with Lowe's memoisation over one key's ok and info ops.

    Events live in a doubly linked list (arrays `nxt`/`prv`, sentinel 0 at the head and
    `tail` at the end) sorted by time: a call event per op, a return event per ok op. At
    equal times calls sort first, so touching intervals count as concurrent (the
    permissive reading). Linearizing an op unlinks its events ("lift"); backtracking
    links them back in reverse order, so the list is always exactly the unlinearized ops.
    """
    n = len(ops)
    code = [_CODE[o.op] for o in ops]
    info = [o.status == "info" for o in ops]
    arg_a: list[Any] = []
    arg_b: list[Any] = []
    out: list[Any] = []
    for o, c in zip(ops, code, strict=True):
        if c == _CAS:
            arg_a.append(_value(o.input[0], "cas expected"))
            arg_b.append(_value(o.input[1], "cas new"))
        else:
            arg_a.append(_value(o.input, "put input") if c == _PUT else None)
            arg_b.append(None)
        out.append(_value(o.output, "output") if c == _GET else o.output)

    # Events: (time, 0=call/1=return, op). Ids 1..E in sorted order; 0 head, E+1 tail.
    raw = [(o.invoke, 0, i) for i, o in enumerate(ops)]
    raw += [(o.complete, 1, i) for i, o in enumerate(ops) if not info[i]]
    raw.sort()
    tail = len(raw) + 1
    ev_op = [-1] * (tail + 1)
    ev_call = [False] * (tail + 1)
    call_ev = [0] * n
    ret_ev = [0] * n  # 0: none (info op)
    for e, (_, kind, i) in enumerate(raw, 1):
        ev_op[e] = i
        if kind == 0:
            ev_call[e] = True
            call_ev[i] = e
        else:
            ret_ev[i] = e
    nxt = list(range(1, tail + 2))
    prv = list(range(-1, tail))
    bit = [1 << i for i in range(n)]

    seen: set[tuple[int, Any]] = set()
    stack: list[tuple[int, Any]] = []  # (op, state before it)
    linearized = 0
    state: Any = None
    pending_ok = n - sum(info)
    best = _KeyVerdict("violation", stuck=-1)
    best_depth = -1
    steps = 0
    entry = nxt[0]
    while pending_ok:
        steps += 1
        if steps % _CHECK_CLOCK_EVERY == 0 and time.monotonic() > budget.deadline:
            budget.reason = "timeout"
            return _KeyVerdict("unknown")
        if ev_call[entry]:
            i = ev_op[entry]
            c = code[i]
            if c == _PUT:
                legal, new = True, arg_a[i]
            elif c == _GET:
                legal, new = out[i] == state, state
            elif c == _DELETE:
                legal, new = info[i] or out[i] == (state is not None), None
            else:
                swapped = state == arg_a[i]
                legal = info[i] or out[i] == swapped
                new = arg_b[i] if swapped else state
            if legal:
                config = (linearized | bit[i], new)
                if config not in seen:
                    if budget.states_left == 0:
                        budget.reason = "state budget"
                        return _KeyVerdict("unknown")
                    budget.states_left -= 1
                    seen.add(config)
                    stack.append((i, state))
                    linearized, state = config
                    # lift: unlink the call, then the return
                    nxt[prv[entry]] = nxt[entry]
                    prv[nxt[entry]] = prv[entry]
                    r = ret_ev[i]
                    if r:
                        nxt[prv[r]] = nxt[r]
                        prv[nxt[r]] = prv[r]
                        pending_ok -= 1
                    entry = nxt[0]
                    continue
            entry = nxt[entry]
            continue
        if entry == tail:  # unreachable while an ok op is pending: its return is ahead
            raise AssertionError("checker reached the end of the events with ops pending")
        # A return event: its op had to be linearized by now and is not. Backtrack.
        if len(stack) > best_depth:
            best_depth = len(stack)
            cands = []
            e = nxt[0]
            while e != entry:
                if ev_call[e]:
                    cands.append(ev_op[e])
                e = nxt[e]
            best = _KeyVerdict("violation", [j for j, _ in stack], ev_op[entry], cands, state)
        if not stack:
            return best
        i, state = stack.pop()
        linearized ^= bit[i]
        e = call_ev[i]
        r = ret_ev[i]
        if r:  # unlift: relink in the reverse order of lift
            nxt[prv[r]] = r
            prv[nxt[r]] = r
            pending_ok += 1
        nxt[prv[e]] = e
        prv[nxt[e]] = e
        entry = nxt[e]
    return _KeyVerdict("ok")


def check(
    history: Iterable[Op | Mapping[str, Any]],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_states: int | None = DEFAULT_MAX_STATES,
) -> Result:
    """Decide whether `history` is linearizable for the key/value model.

    Keys are checked independently (smallest first) within one overall budget:
    `timeout_s` of wall time and `max_states` memoised configurations (None: no cap).
    Running out of either gives "unknown", never "ok". The first key found to have no
    linearization gives "violation" at once, with the evidence in the Result.
    Dicts in `history` are read with `Op.from_dict`; ValueError on a malformed op.
    """
    started = time.monotonic()
    budget = _Budget(timeout_s, max_states)
    ops: list[Op] = []
    for o in history:
        if not isinstance(o, Op):
            o = Op.from_dict(o)
        else:
            o.validate()
        ops.append(o)
    origin = min((o.invoke for o in ops), default=0)
    by_key: dict[Any, list[Op]] = {}
    for o in ops:
        if o.status == "fail" or (o.status == "info" and o.op == "get"):
            by_key.setdefault(_to_text(o.key), [])
            continue
        by_key.setdefault(_to_text(o.key), []).append(o)

    def result(verdict: str, checked: int, **kw: Any) -> Result:
        return Result(
            verdict,
            checked,
            len(by_key),
            len(ops),
            time.monotonic() - started,
            origin=origin,
            **kw,
        )

    checked = 0
    for key_ops in sorted(by_key.values(), key=len):
        if not key_ops:
            checked += 1
            continue
        if time.monotonic() > budget.deadline:
            budget.reason = "timeout"
            break
        kv = _check_key(key_ops, budget)
        if kv.verdict == "unknown":
            break
        if kv.verdict == "violation":
            prefix = [key_ops[i] for i in kv.prefix]
            concurrent = sorted((key_ops[i] for i in kv.candidates), key=lambda o: o.invoke)
            # The prefix from its first ok op still running when the unplaced ops began.
            start = min(o.invoke for o in concurrent)
            cut = next(
                (
                    j
                    for j, o in enumerate(prefix)
                    if o.complete is not None and o.status == "ok" and o.complete >= start
                ),
                len(prefix),
            )
            tail_ops = prefix[min(cut, max(0, len(prefix) - _CONTEXT_OPS)) :]
            window = sorted(tail_ops + concurrent, key=lambda o: o.invoke)
            return result(
                "violation",
                checked,
                key=key_ops[0].key,
                prefix=prefix,
                stuck=key_ops[kv.stuck],
                concurrent=concurrent,
                state=kv.state,
                window=window,
            )
        checked += 1
    else:
        return result("ok", checked)
    if budget.reason == "timeout":
        reason = f"the search ran past its {timeout_s:g} s budget"
    else:
        reason = f"the search exceeded its budget of {max_states} states"
    return result("unknown", checked, reason=f"{reason}; {checked} keys decided, none bad")


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.checker",
        description="Check a raftkv client history (JSON lines) for linearizability "
        "(Wing & Gong search with Lowe's memoisation, one key at a time).",
        epilog="exit status: 0 linearizable, 1 violation, 3 unknown (budget ran out), "
        "2 bad usage or unreadable history",
    )
    parser.add_argument("history", help="JSON-lines history, one operation per line")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"overall search budget in seconds (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--max-states",
        type=int,
        default=DEFAULT_MAX_STATES,
        metavar="N",
        help=f"memoised search states before giving up (default {DEFAULT_MAX_STATES})",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead")
    args = parser.parse_args(argv)
    try:
        history = load_history(args.history)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    res = check(history, timeout_s=args.timeout, max_states=args.max_states)
    if args.json:
        summary: dict[str, Any] = {
            "verdict": res.verdict,
            "keys_checked": res.keys_checked,
            "keys": res.keys,
            "ops": res.ops,
            "elapsed_s": round(res.elapsed_s, 3),
        }
        if res.verdict == "unknown":
            summary["reason"] = res.reason
        if res.verdict == "violation":
            summary["key"] = _to_text(res.key)
            summary["stuck"] = res.stuck.to_dict() if res.stuck else None
            summary["window"] = [o.to_dict() for o in res.window]
        print(json.dumps(summary))
    else:
        print(res.explain())
    return {"ok": EXIT_OK, "violation": EXIT_VIOLATION}.get(res.verdict, EXIT_UNKNOWN)


if __name__ == "__main__":
    sys.exit(main())
