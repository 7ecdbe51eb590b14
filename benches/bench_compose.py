"""Composing and formatting SQL: compiled vs pure ``pgfast.sql`` vs ``psycopg.sql``.

Run: ``.venv/bin/python -m pytest benches/bench_compose.py --benchmark-enable -p no:cacheprovider``

Each group times the same work three ways. The psycopg.sql peer keeps values
out of the text with ``Placeholder`` and collects the parameters in a list,
as a psycopg user would, then renders with ``as_string()``.
Targets: compiled >= 5x pure and >= 12x psycopg.sql.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from psycopg import sql as psql

from pgfast import _compose_py

try:
    from pgfast import _compose_c
except ImportError:  # pure-only install: the compiled rows are skipped, the others still run
    _compose_c = None  # type: ignore[assignment]

Builder = Callable[[], tuple[str, list[Any]]]


def _nested(sql: Any) -> Builder:
    """3 nested fragments, one identifier, 10 values."""

    def build() -> tuple[str, list[Any]]:
        where = sql("age > {} AND age < {} AND status = {}", 18, 65, "active")
        org = sql("org_id IN ({}, {}, {})", 1, 2, 3)
        page = sql("ORDER BY created_at DESC LIMIT {} OFFSET {}", 50, 100)
        query = sql(
            "SELECT * FROM {table} WHERE {where} AND {org} AND name <> {name} "
            "AND kind = {kind} {page}",
            table=sql.ident("public", "users"),
            where=where,
            org=org,
            name="x",
            kind="y",
            page=page,
        )
        result: tuple[str, list[Any]] = query.format()
        return result

    return build


def _nested_psycopg() -> tuple[str, list[Any]]:
    ph = psql.Placeholder()
    where = psql.SQL("age > {} AND age < {} AND status = {}").format(ph, ph, ph)
    org = psql.SQL("org_id IN ({}, {}, {})").format(ph, ph, ph)
    page = psql.SQL("ORDER BY created_at DESC LIMIT {} OFFSET {}").format(ph, ph)
    query = psql.SQL(
        "SELECT * FROM {table} WHERE {where} AND {org} AND name <> {name} AND kind = {kind} {page}"
    ).format(
        table=psql.Identifier("public", "users"),
        where=where,
        org=org,
        name=ph,
        kind=ph,
        page=page,
    )
    return query.as_string(), [18, 65, "active", 1, 2, 3, "x", "y", 50, 100]


def _join(sql: Any) -> Builder:
    """1,000 fragments of two values each, joined."""

    def build() -> tuple[str, list[Any]]:
        rows = sql.join([sql("({}, {})", i, "v") for i in range(1000)])
        result: tuple[str, list[Any]] = sql("INSERT INTO t (a, b) VALUES {}", rows).format()
        return result

    return build


def _join_psycopg() -> tuple[str, list[Any]]:
    ph = psql.Placeholder()
    params: list[Any] = []
    fragments = []
    for i in range(1000):
        fragments.append(psql.SQL("({}, {})").format(ph, ph))
        params += (i, "v")
    rows = psql.SQL(", ").join(fragments)
    return psql.SQL("INSERT INTO t (a, b) VALUES {}").format(rows).as_string(), params


IMPLS = {"python": _compose_py.sql, "cython": _compose_c.sql if _compose_c else None}


def _builders(shape: Callable[[Any], Builder], peer: Builder) -> list[Any]:
    cases = [pytest.param(peer, id="psycopg.sql")]
    for name, sql in IMPLS.items():
        marks = [pytest.mark.skip(reason="compiled module not built")] if sql is None else []
        cases.append(pytest.param(shape(sql) if sql else None, id=name, marks=marks))
    return cases


@pytest.mark.benchmark(group="nested: 3 fragments, 1 ident, 10 values")
@pytest.mark.parametrize("build", _builders(_nested, _nested_psycopg))
def test_nested(benchmark: Any, build: Builder) -> None:
    text, params = benchmark(build)
    assert len(params) == 10
    assert '"public"."users"' in text


@pytest.mark.benchmark(group="join of 1,000 fragments")
@pytest.mark.parametrize("build", _builders(_join, _join_psycopg))
def test_join(benchmark: Any, build: Builder) -> None:
    text, params = benchmark(build)
    assert len(params) == 2000
    assert text.startswith("INSERT INTO t (a, b) VALUES (")
