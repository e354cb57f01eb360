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

The search takes its sequential model as an object (`_Model`), and there are two.

The register model (the default for get/put/delete/cas histories). Every operation
touches one key, so the history is checked one key at a time (the
locality/P-compositionality of Herlihy & Wing, used the same way by Lowe): the whole
history is linearizable iff each key's sub-history is. The model for one key is its value
or absent (None):

    put(v)            -> None     value := v
    get()             -> value    (unchanged)
    delete()          -> existed  value := absent
    cas(expected,new) -> swapped  if value == expected (None = absent): value := new

The revisions model (chosen when a history has get_kv, cas_rev or txn; `raftkv chaos
--workload txn`). A transaction spans keys and revisions are one order over the whole
log, so the history is one sub-history: the state is every key's record, None (absent)
or (value, create_revision, mod_revision, version), plus a floor, the least the last
write's revision can be (raftkv/kv.py has the store's rules, which are etcd's):

    put(v)              -> revision r   r > floor; floor := r; mod := r; version += 1
                                        (absent: create := r, version := 1)
    get_kv()            -> record or None, all four fields as the state has them
    get()               -> value or None
    delete()            -> existed      record := absent (create and version start over)
    cas(expected, new)  -> swapped      value == expected: as put
    cas_rev(m, new)     -> swapped      mod_revision == m (0: absent): as put
    txn(compare, success, failure) -> [succeeded, results]
        every compare (value/mod/create/version of a key ==, !=, <, > an operand; an
        absent key is None and 0s) holds: the success ops run in order, else the
        failure ops; put -> its revision, delete -> existed, get -> record or None,
        seeing the txn's own writes before it; all its puts share one revision (one
        log entry), so a txn is applied whole or not at all.

Revisions are log indexes, so other entries (sessions, no-ops, other keys) leave gaps:
a write's revision need only exceed the floor. A write whose revision nobody was told
(a cas, a cas_rev, an info op) takes it from an ok read that saw the value it alone
wrote; failing that, its records hold a number standing for "its own, unknown
revision", which a compare or a read can match only with a revision no other op had,
and it raises the floor by one (a write that changed no record leaves the floor). An
info op seen by a read must precede every op of a higher revision. Looser than the
definition in two places: an unseen revision is known only to be > 0 and no other op's
(not bounded by its neighbours), and a write that changed nothing is not held to take
an index. Where an info txn's compare depends on an unseen revision and both branches
write, the search picks the success branch and can then only answer "unknown", never
"violation". The tests hold it to a brute force over orders and log indexes.

Beyond Lowe's cache the search prunes only by dominance, so it stays exact: an ok op that
cannot change the state (a get, a cas that did not swap, ...) and is legal now is placed
without trying alternatives; info ops are tried after the ok ops, and a configuration
whose placed info ops are a superset of an explored one's (same ok ops, same state) is
skipped; values nobody ever read or compared are one token; of interchangeable info ops
only the latest-invoked candidate is tried. A brute-force cross-check in the tests holds
it to the definition. Cost: a few hundredths of a second for 5,000 ops over 10 keys; a
10 s chaos run of the txn workload (7,000-10,000 ops, a few info) in under half a
second. What stays expensive is many info ops (each may have happened at any point
since its invoke) whose effect shows only much later, or proving a violation among
them: there the budget answers "unknown" (a simulated 5,000-op bank history with 3%
info ops takes 10-30 s, sometimes over a minute).

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
get -> value or null; delete -> existed (bool); cas -> swapped (bool); put -> null, or
its revision (the revisions model reads it). Revisions model ops::

    {"op": "get_kv", "key": "k1", "output": ["v", 3, 9, 2]}     value, create, mod, version
    {"op": "cas_rev", "key": "k1", "input": [9, "new"], "output": true}
    {"op": "txn", "key": null,
     "input": {"compare": [["mod", "k1", "==", 9], ["value", "k2", "!=", null]],
               "success": [["put", "k1", "a"], ["delete", "k2"]],
               "failure": [["get", "k1"]]},
     "output": [true, [12, true]]}

(compare targets value, create, mod, version; cmps ==, !=, <, >). Times are integers
(``time.monotonic_ns()``); ``complete`` may be null or absent for an info op. Bytes keys
and values are written as str (UTF-8, undecodable bytes escaped with surrogateescape);
the model compares bytes and str by that same decoding, so b"x" == "x".

Command line::

    python -m harness.checker HISTORY.jsonl [--timeout S] [--model M] [--json]

prints the verdict and, for a violation, the operations of the offending key (in the
revisions model: of the history) around the point where no order exists. Exit status:
0 linearizable, 1 violation, 3 unknown (the search ran out of time or of its state
budget, or guessed), 2 bad usage or an unreadable history.
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

# The ops only the revisions model knows (the module docstring: "The revisions model").
REVISION_OPS = ("get_kv", "cas_rev", "txn")
OPS = ("get", "put", "delete", "cas", *REVISION_OPS)
TXN_TARGETS = ("value", "create", "mod", "version")  # a record's fields, in its order
TXN_CMPS = ("==", "!=", "<", ">")
TXN_OPS = ("put", "delete", "get")
STATUSES = ("ok", "fail", "info")

EXIT_OK = 0
EXIT_VIOLATION = 1
EXIT_BAD_INPUT = 2
EXIT_UNKNOWN = 3

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_STATES = 5_000_000  # memoised configurations across all keys (~1 GB worst case)

_GET, _PUT, _DELETE, _CAS = range(4)


class _Unread:
    """The one token for every value no operation ever looked for (see _search)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<a value nobody read>"


UNREAD = _Unread()
_CODE = {"get": _GET, "put": _PUT, "delete": _DELETE, "cas": _CAS}
_CHECK_CLOCK_EVERY = 512  # search steps between two looks at the clock
_FORCED = -1  # stack mark: an op placed without alternatives (see _search)
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


def _jsonable(x: Any) -> Any:
    """`x` with every bytes inside it (lists, tuples, dicts) as text."""
    if isinstance(x, list | tuple):
        return [_jsonable(y) for y in x]
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    return _to_text(x)


def _text(x: Any, what: str) -> str:
    """A key or a revisions-model value: str, or bytes as text."""
    x = _to_text(x)
    if not isinstance(x, str):
        raise ValueError(f"{what} must be str or bytes, not {x!r}")
    return x


def _revision(x: Any, what: str) -> int:
    """A revision or version: an int >= 0 (0: absent)."""
    if type(x) is not int or x < 0:
        raise ValueError(f"{what} must be an int >= 0, not {x!r}")
    return x


def _kv(x: Any, what: str) -> tuple[str, int, int, int] | None:
    """A get_kv output: None (absent) or [value, create_revision, mod_revision, version]."""
    if x is None:
        return None
    if not isinstance(x, list | tuple) or len(x) != 4:
        raise ValueError(f"{what} must be null or [value, create, mod, version], not {x!r}")
    return (_text(x[0], f"{what} value"), _revision(x[1], f"{what} create_revision"),
            _revision(x[2], f"{what} mod_revision"), _revision(x[3], f"{what} version"))


def _txn_input(x: Any) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """A txn's input, validated: (compares, success, failure) as
    (target, key, cmp, operand) and (op, key, value or None) tuples."""
    if not isinstance(x, Mapping) or not set(x) <= {"compare", "success", "failure"}:
        raise ValueError(f"txn input must be {{compare, success, failure}}, not {x!r:.80}")
    compares = []
    for c in x.get("compare") or []:
        if not isinstance(c, list | tuple) or len(c) != 4:
            raise ValueError(f"a compare must be [target, key, cmp, operand], not {c!r}")
        target, key, cmp, operand = c
        if target not in TXN_TARGETS or cmp not in TXN_CMPS:
            raise ValueError(f"a compare's target must be one of {TXN_TARGETS} and its "
                             f"cmp one of {TXN_CMPS}, not {c!r}")
        if target == "value":
            operand = None if operand is None else _text(operand, "compared value")
        else:
            operand = _revision(operand, f"compared {target}")
        compares.append((target, _text(key, "compare key"), cmp, operand))
    branches: list[list[tuple]] = [[], []]
    for branch, name in zip(branches, ("success", "failure"), strict=True):
        for o in x.get(name) or []:
            if not isinstance(o, list | tuple) or not o or o[0] not in TXN_OPS:
                raise ValueError(f"a txn op must be [put, key, value], [delete, key] or "
                                 f"[get, key], not {o!r}")
            if len(o) != (3 if o[0] == "put" else 2):
                raise ValueError(f"a txn {o[0]} has the wrong arguments: {o!r}")
            value = _text(o[2], "txn put value") if o[0] == "put" else None
            branch.append((o[0], _text(o[1], "txn key"), value))
    return compares, branches[0], branches[1]


def _txn_output(x: Any, ops: list[tuple]) -> list[Any]:
    """An ok txn's results for the branch that ran, validated against its ops."""
    if not isinstance(x, list | tuple) or len(x) != len(ops):
        raise ValueError(f"txn results {x!r:.80} do not match its {len(ops)} ops")
    results: list[Any] = []
    for (kind, _, _), r in zip(ops, x, strict=True):
        if kind == "put":
            results.append(_revision(r, "txn put revision"))
        elif kind == "delete":
            if type(r) is not bool:
                raise ValueError(f"a txn delete's result must be a bool, not {r!r}")
            results.append(r)
        else:
            results.append(_kv(r, "txn get result"))
    return results


@dataclass(slots=True)
class Op:
    """One client operation as recorded: what was asked, what came back, and when.

    ``invoke`` and ``complete`` are ``time.monotonic_ns()`` readings; ``complete`` is None
    for an ``info`` op that never completed.
    """

    client: int | str
    op: str
    key: str | bytes | None  # None only for a txn, which names its keys in its input
    input: Any = None
    output: Any = None
    status: str = "ok"
    invoke: int = 0
    complete: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form: bytes as str, tuples as lists."""
        return {
            "client": self.client,
            "op": self.op,
            "key": _to_text(self.key),
            "input": _jsonable(self.input),
            "output": _jsonable(self.output),
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
        if not isinstance(self.key, str | bytes) and not (self.op == "txn" and self.key is None):
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
            if self.op == "get_kv":
                _kv(self.output, "get_kv output")
            if self.op == "cas_rev" and type(self.output) is not bool:
                raise ValueError(f"an ok cas_rev must output a bool, not {self.output!r}")
        if self.op == "put" and self.output is not None:
            _revision(self.output, "put output (its revision)")
        if self.op == "cas_rev":
            if not isinstance(self.input, list | tuple) or len(self.input) != 2:
                raise ValueError(f"cas_rev input must be [mod_revision, new], not {self.input!r}")
            _revision(self.input[0], "cas_rev mod_revision")
            _text(self.input[1], "cas_rev new")
        if self.op == "txn":
            _, success, failure = _txn_input(self.input)
            if self.status == "ok":
                out = self.output
                if not isinstance(out, list | tuple) or len(out) != 2 or type(out[0]) is not bool:
                    raise ValueError(f"an ok txn must output [succeeded, results], not {out!r:.80}")
                _txn_output(out[1], success if out[0] else failure)


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
    model         "register" or "revisions" (see check); for "revisions", `key` is the
                  stuck op's key (None for a txn), `state` the records by key (value,
                  create_revision, mod_revision, version; "?" a revision nobody saw) and
                  `floor` the least the last write's revision can be
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
    model: str = "register"
    floor: int = 0

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
        in_window = {id(op) for op in self.window}
        shown = [op for op in self.prefix if id(op) in in_window]
        hidden = len(self.prefix) - len(shown)
        if self.model == "revisions":
            lines = [f"violation of the revisions model: no linearization exists ({head})"]
            left = (f"the records {self.state!r} (absent keys left out), the last write "
                    f"at revision >= {self.floor}")
        else:
            lines = [f"violation on key {self.key!r}: no linearization exists ({head})"]
            left = "the key " + ("absent" if self.state is None else f"= {self.state!r}")
        lines.append(
            f"  longest linearizable prefix: {len(self.prefix)} ops, leaving {left}"
            + (f"; its last {len(shown)} (after {hidden} earlier):" if hidden else ":")
        )
        lines += ["    " + format_op(op, self.origin) for op in shown]
        lines.append("  cannot be extended past the completion of:")
        if self.stuck is not None:
            lines.append(" >> " + format_op(self.stuck, self.origin))
        others = [op for op in self.concurrent if op is not self.stuck and id(op) in in_window]
        if others:
            lines.append("  other ops still unplaced at that point (each order was tried):")
            lines += ["    " + format_op(op, self.origin) for op in others]
        older = len(self.concurrent) - len(others) - (self.stuck is not None)
        if older:
            lines.append(
                f"  and {older} info ops invoked earlier, also unplaced (see Result.concurrent)"
            )
        return "\n".join(lines)


def format_op(op: Op, origin: int = 0) -> str:
    """`client op key input -> output [invoke, complete] ms status`, times from origin."""

    def ms(t: int | None) -> str:
        return "      -   " if t is None else f"{(t - origin) / 1e6:10.3f}"

    inp = _jsonable(op.input)
    out = "?" if op.status != "ok" else repr(_jsonable(op.output))
    shown = _format_txn(inp) if op.op == "txn" and isinstance(inp, dict) else repr(inp)
    return (
        f"client {op.client!s:>4} {op.op:<6} {_to_text(op.key)!r:<10} "
        f"{shown} -> {out:<12} [{ms(op.invoke)}, {ms(op.complete)}] {op.status}"
    )


def _format_txn(inp: dict[str, Any]) -> str:
    """A txn's input in one line: `if mod(k1)==5 then put k1=v, get k2 else get k1`."""

    def ops(branch: list[Any]) -> str:
        return ", ".join(f"{o[0]} {o[1]}" + (f"={o[2]}" if o[0] == "put" else "")
                         for o in branch) or "-"

    cond = " & ".join(f"{t}({k}){c}{v!r}" for t, k, c, v in inp.get("compare") or [])
    return (f"if {cond or 'true'} then {ops(inp.get('success') or [])} "
            f"else {ops(inp.get('failure') or [])}")


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


_ILLEGAL = object()  # a model's step: the op cannot come next from this state


class _Model:
    """What the search needs of a sequential model, over one sub-history `ops` (indexes
    into it name the ops):

    initial          the state before any op; states are hashable and compared with ==
    step(i, state)   the state after op i, or _ILLEGAL where its recorded output (for an
                     ok op) cannot be what it returned; an info op's output is ignored
    settles[i]       for an ok op: if it leaves the state unchanged at one point where it
                     is legal, it does so at every point where it is legal (a read; not a
                     put of the value already there, which elsewhere changes it). Such an
                     op, legal now, is placed without alternatives.
    twin[i]          for an info op: ops with equal non-None twins have the same effect
                     wherever they land, so only the latest-invoked candidate is tried
    needs[i]         info ops that every linearization places before op i (an info op
                     whose effect an ok op saw must happen, and before some ops): op i
                     is not a candidate until they are placed. Empty in general.
    pointless(i, state, new, after_info)
                     an info op whose placement here is dominated by not placing it (the
                     search explores that configuration from the parent anyway)
    guessed          set when step resolved an info op's effect arbitrarily: a violation
                     found after that is reported as unknown
    """

    initial: Any = None
    settles: list[bool]
    twin: list[Hashable | None]
    needs: list[list[int]] | None = None
    guessed: bool = False

    def step(self, i: int, state: Any) -> Any:
        raise NotImplementedError

    def pointless(self, i: int, state: Any, new: Any, after_info: bool) -> bool:
        return new == state


class _RegisterModel(_Model):
    """One key's value, or absent (None): the module docstring's table."""

    def __init__(self, ops: list[Op]) -> None:
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
        # A value no get returned and no cas expected can never be told apart from any
        # other such value: all the model can learn of it is "present, and none of the
        # values anyone looked for". Writing them all as one token merges states that
        # differ only in which unread value the key holds.
        looked_for = {out[i] for i in range(n) if code[i] == _GET and not info[i]}
        looked_for.update(arg_a[i] for i in range(n) if code[i] == _CAS)
        for i in range(n):
            if code[i] == _PUT and arg_a[i] not in looked_for:
                arg_a[i] = UNREAD
            elif code[i] == _CAS and arg_b[i] not in looked_for:
                arg_b[i] = UNREAD
        self.code, self.info, self.arg_a, self.arg_b, self.out = code, info, arg_a, arg_b, out
        self.settles = [c != _PUT for c in code]
        self.twin = [(code[i], arg_a[i], arg_b[i]) if info[i] else None for i in range(n)]

    def step(self, i: int, state: Any) -> Any:
        c = self.code[i]
        if c == _PUT:
            return self.arg_a[i]
        if c == _GET:
            return state if self.out[i] == state else _ILLEGAL
        if c == _DELETE:
            legal = self.info[i] or self.out[i] == (state is not None)
            return None if legal else _ILLEGAL
        swapped = state == self.arg_a[i]
        if not self.info[i] and self.out[i] != swapped:
            return _ILLEGAL
        return self.arg_b[i] if swapped else state

    def pointless(self, i: int, state: Any, new: Any, after_info: bool) -> bool:
        # Also a blind write (put/delete) right after another info op: it overwrites that
        # op's effect, so the configuration equals the one without the earlier op.
        return new == state or (after_info and self.code[i] != _CAS)



def _search(ops: list[Op], model: _Model, budget: _Budget) -> _KeyVerdict:
    """Wing & Gong search with Lowe's memoisation over one sub-history's ok and info
    ops, against `model` (see _Model).

    The ok ops' events live in a doubly linked list (arrays `nxt`/`prv`, sentinel 0 at
    the head and `tail` at the end) sorted by time: a call and a return per op. At equal
    times calls sort first, so touching intervals count as concurrent (the permissive
    reading). Linearizing an op unlinks its events ("lift"); backtracking links them back
    in reverse order, so the list always holds exactly the unlinearized ok ops. Info ops
    have no return; they sit in a second list (`inxt`/`iprv`) sorted by invoke.

    From a configuration the candidates are, in this order: the ok ops whose call comes
    before the first return in the list, then the info ops invoked by that return's time.
    Trying info ops last and never being forced to place one is where info ops differ;
    the memo is where they are cheap. Because an info op may also never happen, a
    configuration with a set I of info ops placed can do nothing that the same
    configuration with a subset of I cannot (it can always skip the rest), so the memo
    maps (ok ops placed, state) to the info sets explored and prunes any superset. That
    refinement of Lowe's memo keeps each pending-forever info op from doubling the
    search; with no info ops it is exactly his (set, state) cache.
    """
    n = len(ops)
    info = [o.status == "info" for o in ops]
    step, pointless, settles = model.step, model.pointless, model.settles
    ok_ops = [i for i in range(n) if not info[i]]
    ops_invoke = [o.invoke for o in ops]
    info_ops = sorted((i for i in range(n) if info[i]), key=lambda i: (ops[i].invoke, i))
    # Info ops with the same effect (op, argument(s)) are interchangeable, except that an
    # earlier-invoked one can be placed at more points. So of those that are candidates
    # at once only the latest-invoked is tried, keeping the more flexible ones for later.
    twins: dict[Hashable, list[int]] = {}
    for i in info_ops:
        if model.twin[i] is not None:
            twins.setdefault(model.twin[i], []).append(i)
    later_twins: list[list[int]] = [[] for _ in range(n)]
    for group in twins.values():
        for rank, i in enumerate(group):
            later_twins[i] = group[rank + 1 :] if len(group) <= 64 else group[rank + 1 : rank + 65]
    bit = [0] * n  # ok ops and info ops each numbered from bit 0 in their own set
    for rank, i in enumerate(ok_ops):
        bit[i] = 1 << rank
    for rank, i in enumerate(info_ops):
        bit[i] = 1 << rank
    need = [0] * n  # the info ops op i waits for, as an info set
    for i, before in enumerate(model.needs or ()):
        for j in before:
            need[i] |= bit[j]

    # The ok events: (time, 0=call/1=return, op); ids 1..E in order, 0 head, E+1 tail.
    raw = [(ops[i].invoke, 0, i) for i in ok_ops] + [(ops[i].complete, 1, i) for i in ok_ops]
    raw.sort()
    tail = len(raw) + 1
    ev_op = [-1] * (tail + 1)
    ev_time = [0] * (tail + 1)
    ev_call = [False] * (tail + 1)
    call_ev = [0] * n
    ret_ev = [0] * n
    for e, (t, kind, i) in enumerate(raw, 1):
        ev_op[e], ev_time[e] = i, t
        if kind == 0:
            ev_call[e] = True
            call_ev[i] = e
        else:
            ret_ev[i] = e
    nxt = list(range(1, tail + 2))
    prv = list(range(-1, tail))
    # The info ops: nodes 1..m in invoke order, 0 head, m+1 tail.
    itail = len(info_ops) + 1
    inode_op = [-1, *info_ops, -1]
    inode_time = [0, *(ops[i].invoke for i in info_ops), 0]
    inode = [0] * n
    for p, i in enumerate(info_ops, 1):
        inode[i] = p
    inxt = list(range(1, itail + 2))
    iprv = list(range(-1, itail))

    seen: dict[tuple[int, Any], list[int]] = {}  # (ok set, state) -> info sets explored
    stack: list[tuple[int, Any, int]] = []  # (op, state before it, stuck return if info)
    lin_ok = lin_info = 0
    state: Any = model.initial
    pending_ok = len(ok_ops)
    best = _KeyVerdict("violation")
    best_depth = -1
    # The deepest dead end's ops, updated in place: stack[:same] is unchanged since it
    # was last taken, so a deeper dead end copies only the rest (a full copy each time
    # is quadratic on one long sub-history, as the revisions model's is).
    best_prefix: list[int] = []
    same = 0
    steps = 0
    entry = nxt[0]  # cursor in the ok events, while placing ok ops
    ientry = 0  # cursor in the info list, once the ok candidates are exhausted
    stuck = 0  # the first return event: the deadline for every candidate
    placing_ok = True
    while pending_ok:
        steps += 1
        if steps % _CHECK_CLOCK_EVERY == 0 and time.monotonic() > budget.deadline:
            budget.reason = "timeout"
            return _KeyVerdict("unknown")
        dead = False
        if placing_ok:
            if not ev_call[entry]:
                if entry == tail:  # unreachable while an ok op is pending
                    raise AssertionError("checker reached the end of the events")
                # The first return: its op must be placed before any op invoked later.
                placing_ok = False
                stuck = entry
                ientry = inxt[0]
                continue
            i = ev_op[entry]
        elif ientry == itail or inode_time[ientry] > ev_time[stuck]:
            dead = True  # no candidate extends this prefix
        else:
            i = inode_op[ientry]
        if not dead:
            new = _ILLEGAL if need[i] & ~lin_info else step(i, state)
            legal = new is not _ILLEGAL
            if legal and info[i]:
                if pointless(i, state, new, bool(stack) and info[stack[-1][0]]):
                    legal = False
                else:
                    deadline = ev_time[stuck]
                    for k in later_twins[i]:
                        if ops_invoke[k] > deadline:
                            break
                        if not lin_info & bit[k]:
                            legal = False  # a later twin is a candidate: it is tried instead
                            break
            if legal:
                # An ok op that leaves the state alone wherever it is legal (a get, a
                # cas that did not swap or swapped v for v, a delete that found nothing;
                # not a put, whose effect depends on where it lands: `settles`) and is
                # legal now can move to this point of any linearization that exists from
                # here: it is a candidate, so nothing pending must precede it. So it is
                # the only child worth trying: if it fails, so does this configuration.
                forced = not info[i] and settles[i] and new == state
                if info[i]:
                    key, infos = (lin_ok, new), lin_info | bit[i]
                else:
                    key, infos = (lin_ok | bit[i], new), lin_info
                explored = seen.get(key)
                if explored is None or all(old & ~infos for old in explored):
                    if budget.states_left == 0:
                        budget.reason = "state budget"
                        return _KeyVerdict("unknown")
                    budget.states_left -= 1
                    if explored is None:
                        seen[key] = [infos]
                    else:
                        explored.append(infos)
                    if info[i]:
                        stack.append((i, state, stuck))
                        p = ientry
                        inxt[iprv[p]] = inxt[p]
                        iprv[inxt[p]] = iprv[p]
                        lin_info = infos
                    else:
                        stack.append((i, state, _FORCED if forced else 0))
                        e, r = entry, ret_ev[i]  # lift: unlink the call, then the return
                        nxt[prv[e]] = nxt[e]
                        prv[nxt[e]] = prv[e]
                        nxt[prv[r]] = nxt[r]
                        prv[nxt[r]] = prv[r]
                        lin_ok = key[0]
                        pending_ok -= 1
                    state = new
                    entry = nxt[0]
                    placing_ok = True
                    continue
                # Already explored, so failed (an ancestor has fewer ok ops placed).
                dead = forced
            if not dead:
                if placing_ok:
                    entry = nxt[entry]
                else:
                    ientry = inxt[ientry]
                continue
        # A dead end. Keep the deepest as the evidence, then backtrack.
        if len(stack) > best_depth:
            best_depth = len(stack)
            del best_prefix[same:]
            best_prefix += [j for j, _, _ in stack[same:]]
            same = len(stack)
            best = _KeyVerdict("violation", best_prefix, state=state)
            if placing_ok:  # a forced op found failed: show what it was stuck behind
                e = entry
                while ev_call[e]:
                    e = nxt[e]
                stuck = e
            best.stuck = ev_op[stuck]
            e = nxt[0]
            while e != stuck:
                if ev_call[e]:
                    best.candidates.append(ev_op[e])
                e = nxt[e]
            p = inxt[0]
            while p != itail and inode_time[p] <= ev_time[stuck]:
                best.candidates.append(inode_op[p])
                p = inxt[p]
        while True:
            if not stack:
                return best
            i, state, saved = stack.pop()
            if len(stack) < same:
                same = len(stack)
            if info[i]:
                p = inode[i]
                inxt[iprv[p]] = p
                iprv[inxt[p]] = p
                lin_info ^= bit[i]
                ientry = inxt[p]
                stuck = saved
                placing_ok = False
                break
            e, r = call_ev[i], ret_ev[i]  # unlift: relink in the reverse order of lift
            nxt[prv[r]] = r
            prv[nxt[r]] = r
            nxt[prv[e]] = e
            prv[nxt[e]] = e
            lin_ok ^= bit[i]
            pending_ok += 1
            if saved != _FORCED:
                entry = nxt[e]
                placing_ok = True
                break
    return _KeyVerdict("ok")


def _replay(prefix: list[Op]) -> Any:
    """The key's value after `prefix` run in order (the search keeps unread values as one
    token; this names the actual one)."""
    state: Any = None
    for o in prefix:
        if o.op == "put":
            state = _value(o.input, "put input")
        elif o.op == "delete":
            state = None
        elif o.op == "cas" and state == _value(o.input[0], "cas expected"):
            state = _value(o.input[1], "cas new")
    return state


# The revisions model's ops, compiled (see _RevisionModel).
_R_GET, _R_GET_KV, _R_TXN = range(3)
_T_VALUE, _T_CREATE, _T_MOD, _T_VERSION = range(4)  # also the fields of a record
_C_EQ, _C_NE, _C_LT, _C_GT = range(4)
_TARGET_CODE = {name: n for n, name in enumerate(TXN_TARGETS)}
_CMP_CODE = {name: n for n, name in enumerate(TXN_CMPS)}


class _RevisionModel(_Model):
    """A map of a few keys with etcd's revisions (the module docstring's "revisions
    model"). A state is (floor, record of key 1, ..., record of key K): a record is None
    (absent) or (value, create_revision, mod_revision, version), and floor is the least
    the last write's log index can be. Every write is one log entry, so its revision is
    > floor and becomes the floor; a write that changed a record but whose revision
    nobody saw still took an index, so it raises the floor by one (one that changed
    nothing, a failed compare or a delete of nothing, leaves it), and the records it
    writes hold the negative number -(op + 1) for "this op's revision, unknown", which
    equals no revision any other op had (the `known` set), since each log entry has an
    index of its own.
    Every op but a read is compiled to a transaction: put = txn(success=[put]),
    delete = txn(success=[delete]), cas = txn(value == expected, [put]),
    cas_rev = txn(mod == m, [put])."""

    def __init__(self, ops: list[Op], parsed: list[tuple | None]) -> None:
        """`parsed`: each op as _as_txn gives it."""
        keys = sorted({k for o, p in zip(ops, parsed, strict=True) for k in _keys_of(o, p)})
        self.keys = keys
        slot = {k: n for n, k in enumerate(keys, 1)}  # a key's place in the state tuple
        self.initial = (0, *(None for _ in keys))
        self.settles = [True] * len(ops)
        self.twin = [None] * len(ops)
        self.prog: list[tuple] = []
        # Which op may write each (key, value), and which mod_revisions ok reads saw it
        # with: the one writer of a value that was seen has the revision it was seen at.
        writers: dict[tuple[str, str], set[int]] = {}
        seen_at: dict[tuple[str, str], set[int]] = {}
        for i, (o, p) in enumerate(zip(ops, parsed, strict=True)):
            if p is None:
                if o.op == "get_kv" and o.status == "ok" and o.output is not None:
                    kv = _kv(o.output, "get_kv output")
                    assert kv is not None
                    seen_at.setdefault((_text(o.key, "key"), kv[0]), set()).add(kv[2])
                continue
            compares, success, failure, succeeded, results = p
            for kind, key, value in success + failure:
                if kind == "put":
                    writers.setdefault((key, value), set()).add(i)
            if results is not None:
                ran = success if succeeded else failure
                for (kind, key, _), r in zip(ran, results, strict=True):
                    if kind == "get" and r is not None:
                        seen_at.setdefault((key, r[0]), set()).add(r[2])
        revisions: list[int | None] = []
        self.broken: list[bool] = []  # an ok txn whose puts answered different revisions
        for i, p in enumerate(parsed):
            rev: int | None = None
            broken = False
            if p is not None:
                compares, success, failure, succeeded, results = p
                if results is not None:
                    ran = success if succeeded else failure
                    put_revs = {r for (kind, _, _), r in zip(ran, results, strict=True)
                                if kind == "put"}
                    broken = len(put_revs) > 1
                    rev = min(put_revs) if put_revs else None
                if rev is None:
                    may_write = (success if succeeded else failure) if succeeded is not None \
                        else success + failure
                    for kind, key, value in may_write:
                        if kind == "put" and writers[(key, value)] == {i} \
                                and (key, value) in seen_at:
                            rev = min(seen_at[(key, value)])
                            break
            revisions.append(rev)
            self.broken.append(broken)
        self.known = frozenset(r for r in revisions if r is not None)
        # An info op with a revision was seen by an ok read, so it happened, and before
        # every op with a higher revision: the log is in revision order.
        required = sorted((revisions[i], i) for i, o in enumerate(ops)
                          if o.status == "info" and revisions[i] is not None)
        if required:
            self.needs = [[j for r, j in required if rev is not None and r < rev]
                          for rev in revisions]
        for i, (o, p) in enumerate(zip(ops, parsed, strict=True)):
            if p is None:
                k = slot[_text(o.key, "key")]
                if o.op == "get":
                    self.prog.append((_R_GET, k, _value(o.output, "get output")))
                else:
                    self.prog.append((_R_GET_KV, k, _kv(o.output, "get_kv output")))
                continue
            compares, success, failure, succeeded, results = p

            def compile_ops(branch: list[tuple]) -> tuple:
                return tuple((kind, slot[key], value) for kind, key, value in branch)

            writes = [any(kind != "get" for kind, _, _ in b) for b in (success, failure)]
            self.prog.append((
                _R_TXN,
                tuple((_TARGET_CODE[t], slot[k], _CMP_CODE[c], v) for t, k, c, v in compares),
                compile_ops(success), compile_ops(failure), succeeded,
                None if results is None else tuple(results), revisions[i], writes))

    def _same(self, have: int, saw: int) -> bool:
        """Whether a record's revision `have` can be the `saw` an ok read answered."""
        return have == saw or (have < 0 and saw > 0 and saw not in self.known)

    def _matches(self, rec: tuple | None, saw: tuple | None) -> bool:
        if rec is None or saw is None:
            return rec is saw
        return (rec[0] == saw[0] and rec[3] == saw[3] and self._same(rec[1], saw[1])
                and self._same(rec[2], saw[2]))

    def _holds(self, rec: tuple | None, target: int, cmp: int, operand: Any) -> bool | None:
        """Whether a compare holds on `rec` (kv.py's `_holds`): None where it depends on
        a revision nobody saw."""
        if target == _T_VALUE:
            have = None if rec is None else rec[0]
            if cmp == _C_EQ:
                return have == operand
            if cmp == _C_NE:
                return have != operand
            if have is None or operand is None or type(have) is not type(operand):
                return False
        else:
            have = 0 if rec is None else rec[target]
            if have < 0:  # an unknown revision: > 0, and no other op's
                if cmp in (_C_EQ, _C_NE):
                    if operand == 0 or operand in self.known:
                        return cmp == _C_NE
                    return None
                if cmp == _C_GT and operand == 0:
                    return True
                if cmp == _C_LT and operand <= 1:
                    return False
                return None
        if cmp == _C_EQ:
            return have == operand
        if cmp == _C_NE:
            return have != operand
        return have < operand if cmp == _C_LT else have > operand

    def step(self, i: int, state: Any) -> Any:
        p = self.prog[i]
        if p[0] == _R_GET:
            rec = state[p[1]]
            return state if (None if rec is None else rec[0]) == p[2] else _ILLEGAL
        if p[0] == _R_GET_KV:
            return state if self._matches(state[p[1]], p[2]) else _ILLEGAL
        if self.broken[i]:
            return _ILLEGAL
        _, compares, success, failure, succeeded, results, rev, writes = p
        holds: bool | None = True
        for target, k, cmp, operand in compares:
            h = self._holds(state[k], target, cmp, operand)
            if h is False:
                holds = False
                break
            if h is None:
                holds = None
        if succeeded is not None:  # an ok op: its answer says which branch ran
            if holds is not None and holds != succeeded:
                return _ILLEGAL
            branch = succeeded
        elif holds is not None:
            branch = holds
        else:
            # An info op whose compares depend on a revision nobody saw. A branch that
            # writes nothing is dominated by the op never happening, so the other is
            # the one to try; with writes in both, either may be the truth.
            if writes[0] and writes[1]:
                self.guessed = True
            branch = writes[0] or not writes[1]
        floor = state[0]
        if rev is None:
            written = -(i + 1)
        elif rev > floor:
            written = floor = rev
        else:
            return _ILLEGAL  # revisions grow with the log
        new = list(state)
        changed = False
        for j, (kind, k, value) in enumerate(success if branch else failure):
            rec = new[k]
            if kind == "put":
                new[k] = ((value, written, written, 1) if rec is None
                          else (value, rec[1], written, rec[3] + 1))
                changed = True
            elif kind == "delete":
                if results is not None and results[j] != (rec is not None):
                    return _ILLEGAL
                new[k] = None
                changed = changed or rec is not None
            elif results is not None and not self._matches(rec, results[j]):
                return _ILLEGAL
        # A write nobody saw the revision of took the next index at least. One that
        # changed nothing is left where it is: so it leaves the state as it found it
        # wherever it is legal (`settles`), and need not be tried at every place.
        new[0] = floor + 1 if rev is None and changed else floor
        return tuple(new)

    def pointless(self, i: int, state: Any, new: Any, after_info: bool) -> bool:
        # An info op that changes no record only raised the floor, which can only make
        # what follows harder: never happening dominates it.
        return new[1:] == state[1:]

    def records(self, state: Any) -> dict[str, Any]:
        """The state's records by key (absent keys left out), unknown revisions as '?'."""
        def rev(r: int) -> int | str:
            return "?" if r < 0 else r

        return {k: (rec[0], rev(rec[1]), rev(rec[2]), rec[3])
                for k, rec in zip(self.keys, state[1:], strict=True) if rec is not None}


def _reads_only(p: tuple | None) -> bool:
    """Whether an op (as _as_txn gives it) writes nothing, whatever branch it takes."""
    return p is None or all(kind == "get" for kind, _, _ in p[1] + p[2])


def _keys_of(o: Op, p: tuple | None) -> list[str]:
    """The keys op `o` (`p` as _as_txn gives it) names."""
    if p is None:
        return [_text(o.key, "key")]
    compares, success, failure = p[:3]
    return [c[1] for c in compares] + [x[1] for x in success + failure]


def _as_txn(o: Op) -> tuple | None:
    """A write as (compares, success, failure, succeeded, results): succeeded None for an
    info op, results None where unknown (results only of the branch that ran). None for
    a read."""
    ok = o.status == "ok"
    if o.op in ("get", "get_kv"):
        return None
    key = _text(o.key, "key") if o.op != "txn" else ""
    if o.op == "put":
        value = _text(o.input, "put value")
        results = [o.output] if ok and o.output is not None else None
        return [], [("put", key, value)], [], True if ok else None, results
    if o.op == "delete":
        return [], [("delete", key, None)], [], True if ok else None, [o.output] if ok else None
    if o.op == "cas":
        expected = None if o.input[0] is None else _text(o.input[0], "cas expected")
        compare = ("value", key, "==", expected)
        return [compare], [("put", key, _text(o.input[1], "cas new"))], [], \
            o.output if ok else None, None
    if o.op == "cas_rev":
        compare = ("mod", key, "==", o.input[0])
        return [compare], [("put", key, _text(o.input[1], "cas_rev new"))], [], \
            o.output if ok else None, None
    compares, success, failure = _txn_input(o.input)
    if not ok:
        return compares, success, failure, None, None
    succeeded = o.output[0]
    return compares, success, failure, succeeded, \
        _txn_output(o.output[1], success if succeeded else failure)


MODELS = ("register", "revisions")


def check(
    history: Iterable[Op | Mapping[str, Any]],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_states: int | None = DEFAULT_MAX_STATES,
    model: str = "auto",
) -> Result:
    """Decide whether `history` is linearizable for the key/value model.

    `model`: "register" checks each key on its own (smallest first); "revisions" checks
    the whole history as one map with revisions (get_kv, cas_rev and txn need it);
    "auto" takes "revisions" when any op needs it. Within one overall budget:
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
    needs_revisions = next((o for o in ops if o.op in REVISION_OPS), None)
    if model == "auto":
        model = "revisions" if needs_revisions else "register"
    if model not in MODELS:
        raise ValueError(f"model must be one of {('auto', *MODELS)}, not {model!r}")
    if model == "register" and needs_revisions is not None:
        raise ValueError(f"a {needs_revisions.op} needs the revisions model")
    origin = min((o.invoke for o in ops), default=0)
    # The sub-histories checked on their own: one a key (register), or one in all
    # (revisions: every write takes the next log index, which ties all keys together).
    parts: dict[Any, list[Op]] = {}
    parsed: list[tuple | None] = []  # revisions: parts[None]'s ops as _as_txn gives them
    all_keys: set[Any] = set()
    for o in ops:
        if model == "revisions":  # each op parsed once, here
            p = _as_txn(o)
            keys, reads_only = _keys_of(o, p), _reads_only(p)
        else:
            keys, reads_only = [_to_text(o.key)], o.op == "get"
        all_keys.update(keys)
        part = parts.setdefault(None if model == "revisions" else keys[0], [])
        # Dropped: what did not happen, and an info op that cannot write (a read, or a
        # txn of reads), whose only trace would be its unknown output.
        if not (o.status == "fail" or (o.status == "info" and reads_only)):
            part.append(o)
            if model == "revisions":
                parsed.append(p)

    def result(verdict: str, checked: int, **kw: Any) -> Result:
        return Result(
            verdict,
            checked,
            len(all_keys),
            len(ops),
            time.monotonic() - started,
            origin=origin,
            model=model,
            **kw,
        )

    checked = 0
    for part_ops in sorted(parts.values(), key=len):
        weight = len(all_keys) if model == "revisions" else 1
        if not part_ops:
            checked += weight
            continue
        if time.monotonic() > budget.deadline:
            budget.reason = "timeout"
            break
        m = (_RevisionModel(part_ops, parsed) if model == "revisions"
             else _RegisterModel(part_ops))
        kv = _search(part_ops, m, budget)
        if kv.verdict == "violation" and m.guessed:
            budget.reason = "guessed"
            break
        if kv.verdict == "unknown":
            break
        if kv.verdict == "violation":
            prefix = [part_ops[i] for i in kv.prefix]
            concurrent = sorted((part_ops[i] for i in kv.candidates), key=lambda o: o.invoke)
            # The prefix from its first ok op still running when the unplaced ok ops
            # began; info ops invoked before that (unplaced since) are left out too.
            start = min(o.invoke for o in concurrent if o.status == "ok")
            cut = next(
                (
                    j
                    for j, o in enumerate(prefix)
                    if o.complete is not None and o.status == "ok" and o.complete >= start
                ),
                len(prefix),
            )
            tail_ops = prefix[min(cut, max(0, len(prefix) - _CONTEXT_OPS)) :]
            recent = [o for o in concurrent if o.status == "ok" or o.invoke >= start]
            window = sorted(tail_ops + recent, key=lambda o: o.invoke)
            stuck = part_ops[kv.stuck]
            if isinstance(m, _RevisionModel):
                state: Any = m.records(kv.state)
                floor = kv.state[0]
            else:
                state, floor = _replay(prefix), 0
            return result(
                "violation",
                checked,
                key=stuck.key if model == "revisions" else part_ops[0].key,
                prefix=prefix,
                stuck=stuck,
                concurrent=concurrent,
                state=state,
                window=window,
                floor=floor,
            )
        checked += weight
    else:
        return result("ok", checked)
    if budget.reason == "timeout":
        reason = f"the search ran past its {timeout_s:g} s budget"
    elif budget.reason == "guessed":
        reason = ("no linearization was found, but the search had to guess the branch of "
                  "an indeterminate txn whose compares depend on a revision nobody saw")
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
    parser.add_argument(
        "--model",
        choices=("auto", *MODELS),
        default="auto",
        help="register: each key on its own; revisions: one map with revisions and "
        "transactions (needed by get_kv, cas_rev, txn); auto (default): revisions if "
        "any op needs it",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead")
    args = parser.parse_args(argv)
    try:
        history = load_history(args.history)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        res = check(history, timeout_s=args.timeout, max_states=args.max_states,
                    model=args.model)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
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
