"""Bulk loading speed: 100,000 rows of (int, text, float) into a real server (one run).

- group ``bulk-insert``: ``db.bulk_insert`` (compiled and pure ``_flatten``) vs
  psycopg's ``executemany`` (target: bulk_insert >= 10x faster);
- group ``copy-in``: ``db.copy_in`` (compiled and pure) vs psycopg's binary
  COPY with ``write_row`` (target: copy_in >= 0.9x its speed).

Run: ``python -m pytest benches/bench_bulk.py --benchmark-enable -p no:cacheprovider``
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from pgfast import _bulk_plan, _bulk_sync
from pgfast._factories import create_pool
from pgfast._pool_sync import ConnectionPool
from pgfast._sql import sql
from tests.conftest import twin

ROWS = [(i, f"name {i}", i * 0.5) for i in range(100_000)]
TABLE = "bench_bulk"
COLUMNS = ["id", "name", "score"]


@pytest.fixture(scope="module")
def db(pg_url: str) -> Iterator[ConnectionPool]:
    with create_pool(pg_url, pool_size=2) as pool:
        pool.execute(sql("DROP TABLE IF EXISTS {}", sql.ident(TABLE)))
        pool.execute(sql("CREATE TABLE {} (id int4, name text, score float8)", sql.ident(TABLE)))
        yield pool
        pool.execute(sql("DROP TABLE {}", sql.ident(TABLE)))


@pytest.fixture(scope="module")
def raw(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(params=["cython", "python"])
def flatten_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run pgfast's bulk code with the compiled or the pure ``_flatten`` twin."""
    module = twin("_flatten", request.param)
    monkeypatch.setattr(_bulk_plan, "flatten", module)
    monkeypatch.setattr(_bulk_sync, "flatten", module)
    return str(request.param)


def _run(benchmark: Any, db: ConnectionPool, load: Callable[[], object], rounds: int = 3) -> None:
    def truncate() -> None:
        db.execute(sql("TRUNCATE {}", sql.ident(TABLE)))

    benchmark.pedantic(load, setup=truncate, rounds=rounds, iterations=1)
    assert db.query_value(sql("SELECT count(*) FROM {}", sql.ident(TABLE))) == len(ROWS)


@pytest.mark.benchmark(group="bulk-insert")
def test_bulk_insert(benchmark: Any, db: ConnectionPool, flatten_impl: str) -> None:
    db.bulk_insert(TABLE, ROWS[:10], columns=COLUMNS)  # the one-time column type lookup
    _run(benchmark, db, lambda: db.bulk_insert(TABLE, ROWS, columns=COLUMNS))


@pytest.mark.benchmark(group="bulk-insert")
def test_psycopg_executemany(
    benchmark: Any, db: ConnectionPool, raw: psycopg.Connection[Any]
) -> None:
    def load() -> None:
        with raw.transaction(), raw.cursor() as cur:
            cur.executemany(f"INSERT INTO {TABLE} (id, name, score) VALUES (%s, %s, %s)", ROWS)

    _run(benchmark, db, load, rounds=2)


@pytest.mark.benchmark(group="copy-in")
def test_copy_in(benchmark: Any, db: ConnectionPool, flatten_impl: str) -> None:
    db.copy_in(TABLE, ROWS[:10], columns=COLUMNS)  # the one-time column type lookup
    _run(benchmark, db, lambda: db.copy_in(TABLE, ROWS, columns=COLUMNS))


@pytest.mark.benchmark(group="copy-in")
def test_psycopg_copy_write_row(
    benchmark: Any, db: ConnectionPool, raw: psycopg.Connection[Any]
) -> None:
    def load() -> None:
        statement = f"COPY {TABLE} (id, name, score) FROM STDIN (FORMAT BINARY)"
        with raw.transaction(), raw.cursor() as cur, cur.copy(statement) as copy:
            copy.set_types(["int4", "text", "float8"])
            for row in ROWS:
                copy.write_row(row)

    _run(benchmark, db, load)
