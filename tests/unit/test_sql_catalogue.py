"""The named-query catalogue against its call sites: every `queries.NAME(conn, ...)` in the code
names a query of `sql/*.sql` and passes exactly its parameters, and every query is called.

aiosql builds the query functions at run time, so a type checker cannot see them; this test is
the check of names and parameters that a typed stub would give (no database needed)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from app.settings import PROJECT_ROOT
from app.sql import queries

CODE_DIRS = ("app", "jobs", "bench")


def _declared() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name in queries.available_queries:
        if name.endswith("_cursor") and name.removesuffix("_cursor") in queries.available_queries:
            continue  # aiosql's cursor twin of a select query
        fn = getattr(queries, name)
        out[name] = {
            p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY
        }
    return out


def _calls() -> list[tuple[str, str, set[str] | None]]:
    """(where, query name, keyword names; None when called with **kwargs)."""
    found = []
    for folder in CODE_DIRS:
        for path in sorted(Path(PROJECT_ROOT, folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                    continue
                owner = node.func.value
                if not (isinstance(owner, ast.Name) and owner.id == "queries"):
                    continue
                if node.func.attr == "available_queries":
                    continue
                names: set[str] | None = {k.arg for k in node.keywords if k.arg is not None}
                if any(k.arg is None for k in node.keywords):
                    names = None
                where = f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}"
                found.append((where, node.func.attr, names))
    return found


def test_every_call_names_a_query_and_passes_exactly_its_parameters() -> None:
    declared = _declared()
    problems = []
    for where, name, passed in _calls():
        if name not in declared:
            problems.append(f"{where}: no query named {name!r} in sql/")
        elif passed is not None and passed != declared[name]:
            problems.append(
                f"{where}: {name} takes {sorted(declared[name])}, called with {sorted(passed)}"
            )
    assert problems == []


def test_every_query_is_called_somewhere() -> None:
    called = {name for _, name, _ in _calls()}
    assert sorted(set(_declared()) - called) == []
