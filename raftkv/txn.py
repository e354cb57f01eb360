"""Transactions as a client writes them: compares, and the ops of either branch.

    from raftkv import Client, Compare, Delete, Get, Put
    with Client("tcp://127.0.0.1:7700") as kv:
        r = kv.txn(compare=[Compare.mod("lock") == 0],        # "lock" is absent
                   success=[Put("lock", "me")],
                   failure=[Get("lock")])
        r.succeeded, r.results                                # True, [revision of the put]

A transaction is one log entry (raftkv/kv.py has its semantics, after etcd's Txn): if
every compare holds, the success ops run in order, otherwise the failure ops. A key
that is absent has value None and revisions and version 0. This module only builds the
wire lists; it imports nothing but the codec's enums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from raftkv.kv import Cmp, KeyValue, Op, Target

Key = str | bytes
Value = str | bytes


def to_bytes(x: object, what: str) -> bytes:
    """A key or value as bytes: str is UTF-8 encoded; anything else is a TypeError."""
    if type(x) is bytes:
        return x
    if isinstance(x, str):
        return x.encode()
    if isinstance(x, bytes | bytearray | memoryview):
        return bytes(x)
    raise TypeError(f"{what} must be str or bytes, not {type(x).__name__}")


def lease_id(lease: object) -> int:
    """A lease as its id: an int >= 1, or anything with an int `id` (a `Lease`)."""
    lid = getattr(lease, "id", lease)
    if type(lid) is not int or lid < 1:
        raise TypeError(f"a lease is an id >= 1 or a Lease, not {lease!r:.40}")
    return lid


@dataclass(frozen=True, slots=True)
class Compare:
    """One compare of a transaction: `target` of `key` `cmp` `operand`. Built with
    `Compare.value(key) == b"x"`, `Compare.mod(key) < 7`, `.create`, `.version`."""

    target: Target
    key: bytes
    cmp: Cmp
    operand: bytes | int | None

    @staticmethod
    def value(key: Key) -> _Operand:
        """The key's value (None: absent)."""
        return _Operand(Target.VALUE, to_bytes(key, "key"))

    @staticmethod
    def mod(key: Key) -> _Operand:
        """The key's mod_revision (0: absent)."""
        return _Operand(Target.MOD, to_bytes(key, "key"))

    @staticmethod
    def create(key: Key) -> _Operand:
        """The key's create_revision (0: absent)."""
        return _Operand(Target.CREATE, to_bytes(key, "key"))

    @staticmethod
    def version(key: Key) -> _Operand:
        """How many puts the key had since it was created (0: absent)."""
        return _Operand(Target.VERSION, to_bytes(key, "key"))

    def wire(self) -> list[Any]:
        """The compare as the TXN command holds it (raftkv/kv.py)."""
        return [int(self.target), self.key, int(self.cmp), self.operand]


class _Operand:
    """The left side of a compare; a comparison operator makes the `Compare`."""

    __slots__ = ("target", "key")
    __hash__ = None  # type: ignore[assignment]  # == builds a Compare, not a bool

    def __init__(self, target: Target, key: bytes) -> None:
        self.target, self.key = target, key

    def _make(self, cmp: Cmp, operand: object) -> Compare:
        if self.target == Target.VALUE:
            value = None if operand is None else to_bytes(operand, "compared value")
            return Compare(self.target, self.key, cmp, value)
        if type(operand) is not int or operand < 0:
            raise TypeError(f"a revision or version compares with an int >= 0, not "
                            f"{operand!r:.40}")
        return Compare(self.target, self.key, cmp, operand)

    def __eq__(self, other: object) -> Compare:  # type: ignore[override]
        return self._make(Cmp.EQ, other)

    def __ne__(self, other: object) -> Compare:  # type: ignore[override]
        return self._make(Cmp.NE, other)

    def __lt__(self, other: object) -> Compare:
        return self._make(Cmp.LT, other)

    def __gt__(self, other: object) -> Compare:
        return self._make(Cmp.GT, other)


@dataclass(frozen=True, slots=True)
class Put:
    """Set `key` to `value`; its result is the write's revision. `lease`: a lease id
    the key is attached to (deleted when the lease is revoked or expires); 0 or None:
    none (a put without a lease takes the key out of any lease, as in etcd). A lease
    that does not exist refuses the whole transaction (`LeaseNotFound`)."""

    key: Key
    value: Value
    lease: int | None = None

    def wire(self) -> list[Any]:
        """The op as the TXN command holds it (raftkv/kv.py)."""
        op = [int(Op.PUT), to_bytes(self.key, "key"), to_bytes(self.value, "value")]
        if self.lease:
            op.append(lease_id(self.lease))
        return op


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove `key`; its result is whether it existed."""

    key: Key

    def wire(self) -> list[Any]:
        """The op as the TXN command holds it (raftkv/kv.py)."""
        return [int(Op.DELETE), to_bytes(self.key, "key")]


@dataclass(frozen=True, slots=True)
class Get:
    """Read `key` inside the transaction (after the ops before it); its result is a
    KeyValue, or None if absent."""

    key: Key

    def wire(self) -> list[Any]:
        """The op as the TXN command holds it (raftkv/kv.py)."""
        return [int(Op.GET), to_bytes(self.key, "key")]


@dataclass(frozen=True, slots=True)
class Oldest:
    """Read, inside the transaction, the key under `prefix` created first (the lowest
    create_revision: the head of a lock's queue); its result is (key, KeyValue), or
    None if no key has the prefix."""

    prefix: Key

    def wire(self) -> list[Any]:
        """The op as the TXN command holds it (raftkv/kv.py)."""
        return [int(Op.OLDEST), to_bytes(self.prefix, "prefix")]


TxnOp = Put | Delete | Get | Oldest


class TxnResult(NamedTuple):
    """Whether every compare held, and the result of each op of the branch that ran."""

    succeeded: bool
    results: list[Any]


def txn_wire(compare: list[Compare], success: list[TxnOp], failure: list[TxnOp]
             ) -> tuple[list, list, list]:
    """The three wire lists of a transaction. TypeError on anything that is not a
    Compare or an op of this module."""
    for c in compare:
        if not isinstance(c, Compare):
            raise TypeError(f"compare must hold Compare objects (Compare.value(key) == x), "
                            f"not {type(c).__name__}")
    for op in [*success, *failure]:
        if not isinstance(op, TxnOp):
            raise TypeError(f"success and failure hold Put, Delete, Get and Oldest, not "
                            f"{type(op).__name__}")
    return ([c.wire() for c in compare], [op.wire() for op in success],
            [op.wire() for op in failure])


def parse_kv(raw: object, decode: bool) -> KeyValue | None:
    """A GET_KV reply (or a Get's result) as a KeyValue; ValueError if it is not one."""
    if raw is None:
        return None
    if (type(raw) is not list or len(raw) != 4 or type(raw[0]) is not bytes
            or not all(type(x) is int for x in raw[1:])):
        raise ValueError(f"not a key's value and revisions: {raw!r:.80}")
    value = raw[0].decode() if decode else raw[0]
    return KeyValue(value, raw[1], raw[2], raw[3])


def parse_oldest(raw: object, decode: bool) -> tuple[Any, KeyValue] | None:
    """An OLDEST reply (or an Oldest's result) as (key, KeyValue); ValueError if it is
    not one."""
    if raw is None:
        return None
    if type(raw) is not list or len(raw) != 5 or type(raw[0]) is not bytes:
        raise ValueError(f"not a key with its value and revisions: {raw!r:.80}")
    kv = parse_kv(raw[1:], decode)
    assert kv is not None
    return (raw[0].decode() if decode else raw[0]), kv


def parse_result(raw: object, success: list[TxnOp], failure: list[TxnOp],
                 decode: bool) -> TxnResult:
    """A TXN reply's value as a TxnResult; ValueError if it does not match the branch
    it says ran."""
    if type(raw) is not list or len(raw) != 2 or type(raw[0]) is not bool:
        raise ValueError(f"not a transaction's result: {raw!r:.80}")
    ops = success if raw[0] else failure
    if type(raw[1]) is not list or len(raw[1]) != len(ops):
        raise ValueError(f"not a transaction's result: {raw!r:.80}")
    results: list[Any] = []
    for op, r in zip(ops, raw[1], strict=True):
        if isinstance(op, Get):
            results.append(parse_kv(r, decode))
        elif isinstance(op, Oldest):
            results.append(parse_oldest(r, decode))
        else:
            results.append(r)
    return TxnResult(raw[0], results)
