"""Write docs/API.md, the reference of raftkv's public API, from its docstrings.

    python tools/api_docs.py            # (make api-docs) rewrite docs/API.md
    python tools/api_docs.py --check    # exit 1 if docs/API.md differs from the docstrings

The public API is what `raftkv.__all__` exports: each class with its constructor and
its public methods, in the order the source defines them, then each exception with its
bases; then the modules of SUBMODULES (the asyncio client), each with its own `__all__`.
The page opens with raftkv.client's module docstring, the client's overview. The
output depends only on the source (no addresses, no dates, no versions), so the same
code always gives the same bytes; tests/unit/test_api_docs.py runs --check.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import sys
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "API.md"

HEADER = """\
# raftkv API reference

Generated from the docstrings by `make api-docs` (tools/api_docs.py): edit the
docstrings, not this file. `tests/unit/test_api_docs.py` fails when the two differ.
"""


def doc_of(obj: Any) -> str:
    """The object's own docstring, dedented; never one inherited from a base class."""
    raw = obj.__doc__ if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if isinstance(obj, type) and "__doc__" not in vars(obj):
        raw = None
    return inspect.cleandoc(raw) if raw else "*Undocumented.*"


def format_default(value: Any, where: str) -> str:
    text = repr(value)
    if " at 0x" in text:  # an address would change from run to run
        raise ValueError(f"{where}: the default {text} has no stable text; give it a repr")
    return text


def format_signature(fn: Any, where: str, skip_first: bool, returns: bool = True) -> str:
    """`(a: int, *, b: str = 'x') -> None`, the annotations as the source writes them
    (they are strings under `from __future__ import annotations`)."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())[1 if skip_first else 0:]
    parts: list[str] = []
    star_done = False
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
            name = f"*{p.name}"
        elif p.kind is p.VAR_KEYWORD:
            name = f"**{p.name}"
        else:
            name = p.name
        if p.kind is p.POSITIONAL_ONLY:
            raise ValueError(f"{where}: positional-only parameters are not rendered")
        text = name
        if p.annotation is not p.empty:
            text += f": {annotation_text(p.annotation)}"
        if p.default is not p.empty:
            eq = " = " if p.annotation is not p.empty else "="
            text += eq + format_default(p.default, where)
        parts.append(text)
    out = f"({', '.join(parts)})"
    if returns and sig.return_annotation is not sig.empty:
        out += f" -> {annotation_text(sig.return_annotation)}"
    return out


def annotation_text(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    return inspect.formatannotation(annotation)


def type_aliases(module: Any) -> list[tuple[str, str]]:
    """The module's public aliases of unions and generics (`Key = str | bytes`)."""
    return [(name, repr(value)) for name, value in vars(module).items()
            if not name.startswith("_") and isinstance(value, (types.UnionType,
                                                                types.GenericAlias))]


def public_members(cls: type) -> list[tuple[str, Any]]:
    """The public methods, class methods, static methods and properties `cls` defines,
    in source order, then those it inherits from a private module's base (such as
    raftkv._requests'), which a reader of `cls` can call but would not find
    documented anywhere else."""
    out: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for owner in cls.__mro__:
        if owner is not cls and not any(p.startswith("_") for p in owner.__module__.split(".")):
            continue
        for name, value in vars(owner).items():
            if name.startswith("_") or name in seen:
                continue
            if isinstance(value, (classmethod, staticmethod, property)) or inspect.isfunction(
                    value):
                seen.add(name)
                out.append((name, value))
    return out


def render_member(cls: type, name: str, value: Any) -> list[str]:
    where = f"{cls.__name__}.{name}"
    if isinstance(value, property):
        return [f"### `{where}` (property)", "", doc_of(value), ""]
    fn = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
    kind = "classmethod " if isinstance(value, classmethod) else (
        "staticmethod " if isinstance(value, staticmethod) else "")
    if inspect.iscoroutinefunction(fn):
        kind += "async "
    elif inspect.isasyncgenfunction(fn):
        kind += "async iterator "
    sig = format_signature(fn, where, skip_first=not isinstance(value, staticmethod))
    return [f"### `{where}`", "", "```python", f"{kind}{where}{sig}", "```", "",
            doc_of(value), ""]


def render_class(qualname: str, cls: type) -> list[str]:
    lines = [f"## `{qualname}`", ""]
    init = vars(cls).get("__init__")
    if init is not None:
        sig = format_signature(init, f"{cls.__name__}.__init__", skip_first=True,
                               returns=False)
        lines += ["```python", f"{qualname}{sig}", "```", ""]
    lines += [doc_of(cls), ""]
    if "__enter__" in vars(cls) and "__exit__" in vars(cls):
        lines += ["Usable in a `with` statement (defines `__enter__` and `__exit__`).", ""]
    if "__aenter__" in vars(cls) and "__aexit__" in vars(cls):
        lines += ["Usable in an `async with` statement (defines `__aenter__` and "
                  "`__aexit__`).", ""]
    for name, value in public_members(cls):
        lines += render_member(cls, name, value)
    return lines


def render_exception(qualname: str, cls: type) -> list[str]:
    bases = ", ".join(b.__name__ if b.__module__ == "builtins" else f"raftkv.{b.__name__}"
                      for b in cls.__bases__)
    lines = [f"### `{qualname}({bases})`", "", doc_of(cls), ""]
    for name, value in public_members(cls):
        lines += render_member(cls, name, value)
    return lines


# Public modules whose classes are documented in sections of their own, after
# raftkv's: their names repeat raftkv's (raftkv.aio.Client), so they are not in its
# __all__. Each module's __all__ lists what is rendered, its docstring opens the section.
SUBMODULES = ("raftkv.aio",)


def render_submodule(name: str) -> list[str]:
    import importlib

    module = importlib.import_module(name)
    lines = [f"## Module `{name}`", "", doc_of(module), ""]
    for cls_name in module.__all__:
        obj = getattr(module, cls_name)
        if not isinstance(obj, type):
            raise ValueError(f"{name}.{cls_name} is not a class: teach tools/api_docs.py it")
        lines += render_class(f"{name}.{cls_name}", obj)
    return lines


def render() -> str:
    import raftkv
    import raftkv.client

    names = list(raftkv.__all__)
    objects = {name: getattr(raftkv, name) for name in names}
    for name, obj in objects.items():
        if not isinstance(obj, type):
            raise ValueError(f"raftkv.{name} is not a class: teach tools/api_docs.py it")
    classes = [n for n in names if not issubclass(objects[n], BaseException)]
    # Bases before the classes derived from them; __all__'s order among equals.
    errors = sorted((n for n in names if issubclass(objects[n], BaseException)),
                    key=lambda n: len(objects[n].__mro__))

    lines = [HEADER, "## Contents", ""]
    lines += [f"- [`raftkv.{n}`](#raftkv{n.lower()})" for n in classes]
    lines += ["- [Exceptions](#exceptions): " + ", ".join(f"`{n}`" for n in errors)]
    lines += [f"- [Module `{m}`](#module-{m.replace('.', '')})" for m in SUBMODULES] + [""]
    lines += ["## Overview (raftkv.client)", "", doc_of(raftkv.client), ""]
    aliases = type_aliases(raftkv.client)
    if aliases:
        lines += ["Type aliases (raftkv.client):", ""]
        lines += [f"- `{name} = {text}`" for name, text in aliases] + [""]
    for name in classes:
        lines += render_class(f"raftkv.{name}", objects[name])
    lines += ["## Exceptions", ""]
    for name in errors:
        lines += render_exception(f"raftkv.{name}", objects[name])
    for module in SUBMODULES:
        lines += render_submodule(module)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the file differs from the docstrings; write nothing")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="default: docs/API.md")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current == text:
            return 0
        diff = difflib.unified_diff(current.splitlines(), text.splitlines(),
                                    str(args.output), "from the docstrings", lineterm="", n=1)
        print(f"{args.output} is out of date with the docstrings: run make api-docs",
              file=sys.stderr)
        print("\n".join(list(diff)[:60]), file=sys.stderr)
        return 1
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
