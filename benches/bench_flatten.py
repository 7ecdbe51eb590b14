"""Flattening 100,000 records x 3 columns: compiled twin vs pure twin vs a plain listcomp;
and a 100,000-row insert built by ``pgfast._bulk_plan`` vs psycopg ``executemany``.

Targets: flattening compiled >= 5x pure; bulk insert >= 10x executemany. Run:
    .venv/bin/python -m pytest benches/bench_flatten.py --benchmark-enable -p no:cacheprovider
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

ROWS = 100_000
COLUMNS = ["id", "name", "score"]
RECORDS = [{"id": i, "name": f"user {i}", "score": i * 0.5} for i in range(ROWS)]
TUPLES = [(i, f"user {i}", i * 0.5) for i in range(ROWS)]
IMPLS = ["_flatten_c", "_flatten_py"]
BENCH_TYPES = {"id": "int8", "name": "text", "score": "float8"}


def listcomp_columns(records: list[dict[str, Any]], columns: list[str]) -> list[list[Any]]:
    """The obvious hand-written version (no validation of unknown keys)."""
    return [[record.get(name) for record in records] for name in columns]


@pytest.mark.benchmark(group="records_to_columns 100k x 3")
@pytest.mark.parametrize("module", IMPLS)
def test_records_to_columns(benchmark: Any, module: str) -> None:
    flat = importlib.import_module(f"pgfast.{module}")
    result = benchmark(flat.records_to_columns, RECORDS, COLUMNS)
    assert result[0][-1] == ROWS - 1


@pytest.mark.benchmark(group="records_to_columns 100k x 3")
def test_records_to_columns_peer_listcomp(benchmark: Any) -> None:
    result = benchmark(listcomp_columns, RECORDS, COLUMNS)
    assert result[0][-1] == ROWS - 1


@pytest.mark.benchmark(group="records_to_rows 100k x 3 (COPY)")
@pytest.mark.parametrize("module", IMPLS)
def test_records_to_rows(benchmark: Any, module: str) -> None:
    flat = importlib.import_module(f"pgfast.{module}")
    result = benchmark(flat.records_to_rows, RECORDS, COLUMNS)
    assert result[-1][0] == ROWS - 1


@pytest.mark.benchmark(group="tuples_to_columns 100k x 3")
@pytest.mark.parametrize("module", IMPLS)
def test_tuples_to_columns(benchmark: Any, module: str) -> None:
    flat = importlib.import_module(f"pgfast.{module}")
    result = benchmark(flat.tuples_to_columns, TUPLES, 3)
    assert result[0][-1] == ROWS - 1


@pytest.mark.benchmark(group="batch_ends 100k x 3")
@pytest.mark.parametrize("module", IMPLS)
def test_batch_ends(benchmark: Any, module: str) -> None:
    flat = importlib.import_module(f"pgfast.{module}")
    columns = flat.records_to_columns(RECORDS, COLUMNS)
    result = benchmark(flat.batch_ends, columns, 50_000, 1 << 25)
    assert result == [50_000, ROWS]


@pytest.mark.benchmark(group="array parameters 100k int + 100k float")
@pytest.mark.parametrize("module", IMPLS)
@pytest.mark.parametrize("form", ["binary_array", "array_literal"])
def test_array_parameters(benchmark: Any, module: str, form: str) -> None:
    """The two numeric columns' parameters: binary arrays (sent now) vs array literals."""
    flat = importlib.import_module(f"pgfast.{module}")
    ints, _, floats = flat.records_to_columns(RECORDS, COLUMNS)

    def encode() -> list[Any]:
        if form == "binary_array":
            return [flat.binary_array(ints, "int8"), flat.binary_array(floats, "float8")]
        return [flat.array_literal(ints, None), flat.array_literal(floats, None)]

    result = benchmark(encode)
    assert None not in result


# --- end to end: the sans-IO insert plan run by plain psycopg vs executemany ------------------

INSERT_ROWS = [{"id": i, "name": f"user {i}", "score": i * 0.5} for i in range(ROWS)]


@pytest.fixture
def table_conn(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_url, autocommit=True, cursor_factory=psycopg.RawCursor) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_flatten")
        conn.execute("CREATE UNLOGGED TABLE bench_flatten (id int8, name text, score float8)")
        yield conn
        conn.execute("DROP TABLE bench_flatten")


def _truncate(conn: psycopg.Connection[Any]) -> tuple[tuple[()], dict[str, Any]]:
    conn.execute("TRUNCATE bench_flatten")
    return (), {}


@pytest.mark.benchmark(group="insert 100k rows (int8, text, float8)")
def test_insert_bulk_plan(benchmark: Any, table_conn: psycopg.Connection[Any]) -> None:
    from pgfast import _bulk_plan

    def load() -> None:
        plan = _bulk_plan.plan_insert("bench_flatten", INSERT_ROWS, column_types=BENCH_TYPES)
        with table_conn.transaction():
            for query in plan.queries():
                table_conn.execute(*query.format())

    benchmark.pedantic(load, setup=lambda: _truncate(table_conn), rounds=5)
    assert table_conn.execute("SELECT count(*) FROM bench_flatten").fetchone() == (ROWS,)


@pytest.mark.benchmark(group="insert 100k rows (int8, text, float8)")
def test_insert_peer_executemany(benchmark: Any, table_conn: psycopg.Connection[Any]) -> None:
    rows = [(r["id"], r["name"], r["score"]) for r in INSERT_ROWS]

    def load() -> None:
        with table_conn.transaction(), table_conn.cursor() as cur:
            cur.executemany("INSERT INTO bench_flatten VALUES ($1, $2, $3)", rows)

    benchmark.pedantic(load, setup=lambda: _truncate(table_conn), rounds=2)
    assert table_conn.execute("SELECT count(*) FROM bench_flatten").fetchone() == (ROWS,)
