"""Bulk loading on a real server (docs/bulk.md): bulk_insert/update/delete/select and copy_in,
on sync and async pools, connections and transactions.

Tests taking ``db`` run once on a sync pool and once on an async pool; ``call``
awaits what the async pool returns. The ``_flatten`` hot path is whichever
``pgfast._impl`` chose: run this file with and without ``PGFAST_NO_EXTENSIONS=1``.
"""

from __future__ import annotations

import inspect
import math
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Any

import psycopg
import pytest
from conftest import twin
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgfast
from pgfast._factories import create_async_pool, create_pool
from pgfast._pool_async import AsyncConnectionPool
from pgfast._pool_sync import ConnectionPool
from pgfast._sql import SQLQuery, sql

Pool = ConnectionPool | AsyncConnectionPool

COLUMNS = (
    "id int4 PRIMARY KEY, big int8, txt text, num numeric, flag bool, ts timestamptz, "
    "uid uuid, doc jsonb, tags text[], nums int4[]"
)
EPOCH = datetime(2024, 2, 29, 12, 30, tzinfo=timezone.utc)


NAMES = ("id", "big", "txt", "num", "flag", "ts", "uid", "doc", "tags", "nums")
# Row i takes its other values from group i % GROUPS (every 11th group all NULL),
# so a million-row load is checked in full with one representative per group.
GROUPS = 997
BIG = 2**40


def big_of(i: int) -> int | None:
    return None if i % GROUPS % 11 == 5 else (i - 500_000) * BIG


@lru_cache(maxsize=GROUPS)
def _group(k: int) -> tuple[Any, ...]:
    if k % 11 == 5:
        return (None,) * 8
    return (
        f'row {k}, "quoted" \\ {{braces}} ünï' if k % 2 else "",
        Decimal(k) / 7 if k % 3 else Decimal("-1e-20"),
        k % 2 == 0,
        EPOCH + timedelta(seconds=k * 7919, microseconds=k),
        uuid.UUID(int=k * 7919),
        {"k": k, "list": [1, "two", None], "s": "x,y"} if k % 4 else [k, "a"],
        ["a", None, f"t{k}", "NULL", ""] if k % 5 else [],
        [k, -k, None],
    )


def typed_tuple(i: int) -> tuple[Any, ...]:
    """Row ``i`` of a load, in ``NAMES`` order: every common type, and NULLs."""
    return (i, big_of(i), *_group(i % GROUPS))


def typed_row(i: int) -> dict[str, Any]:
    return dict(zip(NAMES, typed_tuple(i), strict=True))


async def call(result: Any) -> Any:
    """The value of a sync call, or of an awaited async one."""
    return await result if inspect.isawaitable(result) else result


async def stream(db: Pool, q: SQLQuery) -> AsyncIterator[Any]:
    rows = db.query_stream(q, batch_size=5000)
    if isinstance(db, AsyncConnectionPool):
        async for row in rows:  # type: ignore[union-attr]
            yield row
    else:
        for row in rows:  # type: ignore[union-attr]
            yield row


@pytest.fixture(params=["sync", "async"])
async def db(request: pytest.FixtureRequest, pg_url: str) -> AsyncIterator[Pool]:
    if request.param == "sync":
        with create_pool(pg_url, pool_size=2) as pool:
            yield pool
    else:
        async with create_async_pool(pg_url, pool_size=2) as apool:
            yield apool


def _name() -> str:
    return f"bulk_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def table(db: Pool) -> AsyncIterator[str]:
    """A fresh table with a column of every common type."""
    name = _name()
    await call(db.execute(sql("CREATE TABLE {} ({})", sql.ident(name), sql.unsafe(COLUMNS))))
    yield name
    await call(db.execute(sql("DROP TABLE {}", sql.ident(name))))


async def count(db: Pool, table: str) -> int:
    return int(await call(db.query_value(sql("SELECT count(*) FROM {}", sql.ident(table)))))


async def assert_loaded(db: Pool, table: str, n: int) -> None:
    """The table holds exactly ``typed_row(0..n-1)``, compared row by row as it streams."""
    seen = 0
    q = sql("SELECT * FROM {} ORDER BY id", sql.ident(table))
    async for row in stream(db, q):
        assert row == typed_row(seen)
        seen += 1
    assert seen == n


async def assert_million_loaded(db: Pool, table: str, n: int) -> None:
    """Every row equals ``typed_row(id)``, checked without reading back every row: ids and
    ``big`` row by row on the server, the other columns equal within each group, and one
    row of each group compared in full here."""
    t = sql.ident(table)
    groups = sql.unsafe(str(GROUPS))  # the same expression in DISTINCT ON and ORDER BY
    check = await call(
        db.query_one(
            sql(
                "SELECT count(*) AS rows, count(DISTINCT id) AS ids, min(id) AS lo, max(id) AS hi, "
                "bool_and(big IS NOT DISTINCT FROM CASE WHEN id % {} % 11 = 5 THEN NULL "
                "ELSE (id - 500000)::int8 * {} END) AS bigs FROM {}",
                GROUPS,
                BIG,
                t,
            )
        )
    )
    assert check == {"rows": n, "ids": n, "lo": 0, "hi": n - 1, "bigs": True}
    spread = await call(
        db.query_one(
            sql(
                "SELECT min(c) AS lo, max(c) AS hi FROM (SELECT count(DISTINCT "
                "(txt, num, flag, ts, uid, doc, tags, nums)) AS c FROM {} GROUP BY id % {}) AS g",
                t,
                GROUPS,
            )
        )
    )
    assert spread == {"lo": 1, "hi": 1}  # one set of values per group
    sample = await call(
        db.query(sql("SELECT DISTINCT ON (id % {0}) * FROM {1} ORDER BY id % {0}, id", groups, t))
    )
    assert len(sample) == GROUPS
    for row in sample:
        assert row == typed_row(row["id"])


# -- loads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["copy_in", "bulk_insert"])
async def test_load_10k_every_type(db: Pool, table: str, method: str) -> None:
    rows = [typed_row(i) for i in range(10_000)]
    if method == "copy_in":
        assert await call(db.copy_in(table, iter(rows))) == 10_000
    else:
        assert await call(db.bulk_insert(table, rows)) == []
    await assert_loaded(db, table, 10_000)


async def test_load_10k_tuples_with_columns(db: Pool, table: str) -> None:
    names = ["id", "txt", "doc", "tags"]
    rows = [tuple(typed_row(i)[c] for c in names) for i in range(10_000)]
    inserted = await call(
        db.bulk_insert(table, rows[:5000], columns=names, returning=["id", "doc", "tags"])
    )
    assert inserted == [{"id": r[0], "doc": r[2], "tags": r[3]} for r in rows[:5000]]
    assert await call(db.copy_in(table, rows[5000:], columns=names)) == 5000
    got = await call(
        db.query(sql("SELECT id, txt, doc, tags FROM {} ORDER BY id", sql.ident(table)))
    )
    assert [tuple(r.values()) for r in got] == rows


@pytest.mark.parametrize(
    ("flavor", "method"), [("sync", "copy_in"), ("async", "bulk_insert")], ids=str
)
async def test_load_one_million(pg_url: str, flavor: str, method: str) -> None:
    n = 1_000_000
    pool: Pool = create_pool(pg_url) if flavor == "sync" else create_async_pool(pg_url)
    name = _name()
    try:
        await call(pool.execute(sql("CREATE TABLE {} ({})", sql.ident(name), sql.unsafe(COLUMNS))))
        if method == "copy_in":
            rows = (typed_tuple(i) for i in range(n))
            assert await call(pool.copy_in(name, rows, columns=list(NAMES))) == n
        else:
            records = [typed_tuple(i) for i in range(n)]
            assert await call(pool.bulk_insert(name, records, columns=list(NAMES))) == []
            del records
        await assert_million_loaded(pool, name, n)
    finally:
        await call(pool.execute(sql("DROP TABLE IF EXISTS {}", sql.ident(name))))
        await call(pool.dispose())


async def test_copy_in_async_iterable(pg_url: str) -> None:
    async def rows() -> AsyncIterator[dict[str, Any]]:
        for i in range(2500):
            yield typed_row(i)

    async with create_async_pool(pg_url) as pool:
        name = _name()
        await pool.execute(sql("CREATE TABLE {} ({})", sql.ident(name), sql.unsafe(COLUMNS)))
        try:
            assert await pool.copy_in(name, rows()) == 2500
            await assert_loaded(pool, name, 2500)
        finally:
            await pool.execute(sql("DROP TABLE {}", sql.ident(name)))


async def test_copy_in_tuples_fill_every_column_and_empty_input(db: Pool, table: str) -> None:
    rows = [tuple(typed_row(i).values()) for i in range(3)]
    assert await call(db.copy_in(table, rows)) == 3
    assert await call(db.copy_in(table, iter([]))) == 0
    await assert_loaded(db, table, 3)


# -- bad input and atomicity ---------------------------------------------------------------


async def test_unknown_key_is_rejected_with_nothing_written(db: Pool, table: str) -> None:
    records = [{"id": 1, "txt": "a"}, {"id": 2, "txt": "b", "bogus": 1}]
    with pytest.raises(ValueError, match=r"record 1 has key 'bogus'"):
        await call(db.bulk_insert(table, records))
    # copy_in: the bad record comes after the first chunks have been sent.
    rows = [{"id": i} for i in range(5000)] + [{"id": 5000, "bogus": 1}]
    with pytest.raises(ValueError, match=r"record 5000 has key 'bogus'"):
        await call(db.copy_in(table, iter(rows)))
    assert await count(db, table) == 0


async def test_column_the_table_lacks_is_rejected(db: Pool, table: str) -> None:
    with pytest.raises(ValueError, match=r"'nope'.*has no such column"):
        await call(db.bulk_insert(table, [{"id": 1, "nope": 2}]))
    with pytest.raises(ValueError, match=r"'nope'"):
        await call(db.copy_in(table, [(1,)], columns=["nope"]))
    assert await count(db, table) == 0


@pytest.mark.parametrize("rows", [5, "abc", {"id": 1}, None])
async def test_copy_in_rejects_non_iterables(db: Pool, table: str, rows: Any) -> None:
    with pytest.raises(TypeError, match="rows must be an iterable of tuples or dicts"):
        await call(db.copy_in(table, rows))


async def test_copy_in_wrong_tuple_length(db: Pool, table: str) -> None:
    with pytest.raises(ValueError, match=r"record 2 has 1 values, expected 2"):
        await call(db.copy_in(table, [(1, "a"), (2, "b"), (3,)], columns=["id", "txt"]))
    assert await count(db, table) == 0


async def test_failing_row_rolls_back_every_batch(pg_url: str) -> None:
    """60,000 records are two INSERT batches; the duplicate key in the second undoes both."""
    inserts: list[str] = []

    def started(q: Any, text: str, params: Any) -> None:
        if text.startswith("INSERT"):
            inserts.append(text)

    with create_pool(pg_url, on_query_start=started) as pool:
        name = _name()
        pool.execute(sql("CREATE TABLE {} (id int PRIMARY KEY)", sql.ident(name)))
        try:
            records = [{"id": i} for i in range(60_000)] + [{"id": 0}]
            with pytest.raises(psycopg.errors.UniqueViolation):
                pool.bulk_insert(name, records)
            assert len(inserts) == 2
            with pytest.raises(psycopg.errors.UniqueViolation):
                pool.copy_in(name, ((i % 30_000,) for i in range(60_000)))
            assert pool.query_value(sql("SELECT count(*) FROM {}", sql.ident(name))) == 0
        finally:
            pool.execute(sql("DROP TABLE {}", sql.ident(name)))


async def test_nul_in_text_is_a_clear_error(db: Pool, table: str) -> None:
    records = [{"id": 1, "txt": "ok"}, {"id": 2, "txt": "bad\x00text"}]
    with pytest.raises(ValueError, match=r"record 1, column 'txt' \(text\): .*NUL"):
        await call(db.bulk_insert(table, records))
    with pytest.raises(ValueError, match=r"record 0, column 'tags' \(text\[\]\): .*NUL"):
        await call(db.bulk_insert(table, [{"id": 1, "tags": ["a\x00"]}]))
    assert await count(db, table) == 0


# -- update, delete, select -----------------------------------------------------------------


async def test_update_delete_select(db: Pool, table: str) -> None:
    await call(db.bulk_insert(table, [typed_row(i) for i in range(1, 11)]))
    updates: list[dict[str, dict[str, Any]]] = [
        {"where": {"id": i}, "set": {"txt": f"new {i}", "nums": [i]}} for i in (2, 3, 99)
    ]
    assert (
        await call(
            db.bulk_update(table, updates, where_columns=["id"], set_columns=["txt", "nums"])
        )
        == 2
    )
    returned = await call(
        db.bulk_update(
            table,
            [{"where": {"id": 4}, "set": {"flag": None}}],
            where_columns=["id"],
            set_columns=["flag"],
            returning=["id", "flag"],
        )
    )
    assert returned == [{"id": 4, "flag": None}]
    selected = await call(
        db.bulk_select(
            table,
            [{"id": i} for i in (2, 3, 4, 5, 99)],
            where_columns=["id"],
            select_columns=["id", "txt", "nums"],
            order_by=["-id"],
            limit=3,
        )
    )
    assert selected == [
        {"id": 5, "txt": typed_row(5)["txt"], "nums": typed_row(5)["nums"]},
        {"id": 4, "txt": typed_row(4)["txt"], "nums": typed_row(4)["nums"]},
        {"id": 3, "txt": "new 3", "nums": [3]},
    ]
    distinct = await call(
        db.bulk_select(
            table,
            [{"flag": True}, {"flag": False}],
            where_columns=["flag"],
            select_columns=["flag"],
            distinct_columns=["flag"],
            order_by=["flag"],
        )
    )
    assert distinct == [{"flag": False}, {"flag": True}]
    assert (
        await call(db.bulk_delete(table, [{"id": 1}, {"id": 2}, {"id": 99}], where_columns=["id"]))
        == 2
    )
    assert await call(db.bulk_select(table, [], where_columns=["id"])) == []
    assert await call(db.bulk_delete(table, [], where_columns=["id"])) == 0
    assert await count(db, table) == 8


async def test_column_types_looked_up_once_per_pool(pg_url: str) -> None:
    lookups: list[str] = []

    def started(q: Any, text: str, params: Any) -> None:
        if "pg_attribute" in text:
            lookups.append(text)

    async with create_async_pool(pg_url, on_query_start=started) as pool:
        name = _name()
        await pool.execute(sql("CREATE TABLE {} (id int, v text)", sql.ident(name)))
        try:
            await pool.bulk_insert(name, [{"id": 1, "v": "a"}])
            await pool.bulk_insert(name, [{"id": 2}])
            await pool.copy_in(name, [(3, "c")])
            await pool.bulk_select(name, [{"id": 1}], where_columns=["id"])
            assert len(lookups) == 1
            # Given types need no lookup at all.
            await pool.bulk_insert("nowhere", [], column_types={"id": "int4"})
            await pool.bulk_delete(
                name, [{"v": "a"}], where_columns=["v"], column_types={"v": "text"}
            )
            assert len(lookups) == 1
            assert await pool.query_value(sql("SELECT count(*) FROM {}", sql.ident(name))) == 2
        finally:
            await pool.execute(sql("DROP TABLE {}", sql.ident(name)))


# -- transactions ---------------------------------------------------------------------------


def test_bulk_in_a_sync_transaction(pg_url: str) -> None:
    with create_pool(pg_url) as pool:
        name = _name()
        pool.execute(sql("CREATE TABLE {} (id int PRIMARY KEY, v text)", sql.ident(name)))
        try:
            with pool.transaction() as tx:
                tx.bulk_insert(name, [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}])
                assert tx.copy_in(name, [(3, "c")]) == 1
                # A failing call rolls back to its savepoint; the transaction goes on.
                with pytest.raises(psycopg.errors.UniqueViolation):
                    tx.bulk_insert(name, [{"id": 4}, {"id": 1}])
                with pytest.raises(psycopg.errors.UniqueViolation):
                    tx.copy_in(name, [(5, "e"), (2, "dup")])
                tx.bulk_update(
                    name, [{"where": {"id": 3}, "set": {"v": "C"}}],
                    where_columns=["id"], set_columns=["v"],
                )  # fmt: skip
                rows = tx.bulk_select(
                    name, [{"id": i} for i in range(6)], where_columns=["id"], order_by=["id"]
                )
                assert rows == [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}, {"id": 3, "v": "C"}]
            with pytest.raises(RuntimeError), pool.transaction() as tx:
                tx.bulk_delete(name, [{"id": 1}], where_columns=["id"])
                raise RuntimeError("roll back")
            assert pool.query_value(sql("SELECT count(*) FROM {}", sql.ident(name))) == 3
            with pool.connection() as conn:
                assert conn.bulk_delete(name, [{"id": 1}], where_columns=["id"]) == 1
        finally:
            pool.execute(sql("DROP TABLE {}", sql.ident(name)))


async def test_bulk_in_an_async_transaction(pg_url: str) -> None:
    async with create_async_pool(pg_url) as pool:
        name = _name()
        await pool.execute(sql("CREATE TABLE {} (id int PRIMARY KEY, v text)", sql.ident(name)))
        try:

            async def work(tx: Any) -> None:
                await tx.bulk_insert(name, [{"id": 1, "v": "a"}])
                assert await tx.copy_in(name, [{"id": 2, "v": "b"}]) == 1
                with pytest.raises(psycopg.errors.UniqueViolation):
                    await tx.copy_in(name, [{"id": 3}, {"id": 2}])
                assert await tx.bulk_select(name, [{"id": 3}], where_columns=["id"]) == []
                raise KeyError("abandon")

            with pytest.raises(KeyError):
                await pool.tx(work)
            assert await pool.query_value(sql("SELECT count(*) FROM {}", sql.ident(name))) == 0

            async def keep(tx: Any) -> int:
                await tx.bulk_insert(name, [{"id": 1, "v": "a"}])
                return int(await tx.bulk_delete(name, [{"id": 1}, {"id": 7}], where_columns=["id"]))

            assert await pool.tx(keep) == 1
        finally:
            await pool.execute(sql("DROP TABLE {}", sql.ident(name)))


# -- names ----------------------------------------------------------------------------------


async def test_schema_qualified_and_quoted_names(db: Pool) -> None:
    schema, odd = f"Bulk Schema {uuid.uuid4().hex[:6]}", 'Odd "Name".T'
    plain = f"bulk_s_{uuid.uuid4().hex[:8]}"
    await call(db.execute(sql("CREATE SCHEMA {}", sql.ident(schema))))
    await call(db.execute(sql("CREATE SCHEMA {}", sql.ident(plain))))
    try:
        await call(
            db.execute(sql('CREATE TABLE {} (id int, "Mixed Col" text)', sql.ident(schema, odd)))
        )
        await call(db.execute(sql("CREATE TABLE {} (id int, v text)", sql.ident(plain, "items"))))
        quoted = sql.ident(schema, odd)
        await call(db.bulk_insert(quoted, [{"id": 1, "Mixed Col": 'x "y"'}]))
        assert await call(db.copy_in(quoted, [(2, "z")])) == 1
        assert await call(
            db.bulk_select(quoted, [{"id": 1}, {"id": 2}], where_columns=["id"], order_by=["id"])
        ) == [{"id": 1, "Mixed Col": 'x "y"'}, {"id": 2, "Mixed Col": "z"}]
        await call(db.bulk_insert(f"{plain}.items", [{"id": 1, "v": "a"}]))
        assert await call(db.copy_in(f"{plain}.items", [{"id": 2, "v": "b"}])) == 1
        assert await call(db.bulk_delete(f"{plain}.items", [{"id": 2}], where_columns=["id"])) == 1
        with pytest.raises(psycopg.errors.UndefinedTable):
            await call(db.bulk_insert(f"{plain}.missing", [{"id": 1}]))
    finally:
        await call(db.execute(sql("DROP SCHEMA {} CASCADE", sql.ident(schema))))
        await call(db.execute(sql("DROP SCHEMA {} CASCADE", sql.ident(plain))))


# -- bounded memory -------------------------------------------------------------------------

_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from pgfast._factories import create_pool
    from pgfast._sql import sql

    n = int(sys.argv[2])
    with create_pool(sys.argv[1]) as db:
        db.execute(sql("CREATE TEMP TABLE t (a int8, b int8)"))
        db.copy_in("t", ((i, i) for i in range(10_000)))  # warm up every code path
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert db.copy_in("t", ((i, -i) for i in range(n))) == n
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert db.query_value(sql("SELECT count(*) FROM t")) == n + 10_000
    print((after - before) * 1024)
    """
)


def test_copy_in_generator_keeps_memory_flat(pg_url: str) -> None:
    n = 2_000_000
    bound = 40 * 1024 * 1024
    # Materialised, the rows alone (a tuple and an int each, plus the list slot)
    # would take more than the bound several times over.
    materialised = n * (sys.getsizeof((1, 2)) + sys.getsizeof(2**40) + 8)
    assert materialised > 3 * bound
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, pg_url, str(n)],
        capture_output=True, text=True, timeout=120, check=False, env=os.environ.copy(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    growth = int(done.stdout.strip())
    assert growth < bound, f"peak RSS grew by {growth / 2**20:.1f} MiB"


# -- type modifiers: bulk calls behave as a plain INSERT, UPDATE or WHERE ---------------------

MOD_TYPES = {
    "name": "varchar(5)",
    "code": "char(2)",
    "n": "numeric(5,2)",
    "bits": "bit(3)",
    "names": "varchar(3)[]",
    "codes": "char(2)[]",
    "ns": "numeric(3,1)[]",
    "bitss": "bit(2)[]",
}


@pytest.fixture
async def mods(db: Pool) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A table with a column of each modified type and ``dom``, of a domain over varchar(5):
    (its name, the types a user would give in ``column_types``)."""
    name = _name()
    domain = sql.ident(f"{name}_d")
    await call(db.execute(sql("CREATE DOMAIN {} AS varchar(5) CHECK (VALUE <> 'bad')", domain)))
    columns = ", ".join(f"{c} {t}" for c, t in MOD_TYPES.items())
    await call(
        db.execute(
            sql(
                "CREATE TABLE {} (id int PRIMARY KEY, {}, dom {})",
                sql.ident(name),
                sql.unsafe(columns),
                domain,
            )
        )
    )
    # A domain named in column_types is cast to, checks and all: give its base type.
    yield name, {**MOD_TYPES, "dom": "varchar(5)"}
    await call(db.execute(sql("DROP TABLE {}; DROP DOMAIN {}", sql.ident(name), domain)))


async def outcome(db: Pool, run: Any, table: str, column: str, row_id: int) -> tuple[str, Any]:
    """``("error", class name)`` if ``run()`` raises, else ``("stored", the column's value)``."""
    try:
        await call(run())
    except psycopg.Error as exc:
        return "error", type(exc).__name__
    q = sql("SELECT {} FROM {} WHERE id = {}", sql.ident(column), sql.ident(table), row_id)
    return "stored", await call(db.query_value(q))


WRITES = [
    ("name", "toolongname"),
    ("name", "abcde   "),  # trailing spaces past the length are dropped, not an error
    ("name", "abc"),
    ("code", "xyz"),
    ("code", "x"),
    ("n", Decimal("1.234")),  # rounded on assignment, as by a plain INSERT
    ("n", Decimal("12345.6")),
    ("bits", "1011"),
    ("bits", "10"),
    ("bits", "101"),
    ("names", ["abcd"]),
    ("names", ["abc", None]),
    ("codes", ["xyz"]),
    ("ns", [Decimal("1.26")]),
    ("ns", [Decimal("123.4")]),
    ("bitss", ["101"]),
    ("bitss", ["10"]),
    ("dom", "toolongname"),
    ("dom", "bad"),
    ("dom", "ok"),
]


@pytest.mark.parametrize(("column", "value"), WRITES)
async def test_insert_and_update_enforce_modifiers_like_plain_sql(
    db: Pool, mods: tuple[str, dict[str, str]], column: str, value: Any
) -> None:
    table, _ = mods
    t, c = sql.ident(table), sql.ident(column)
    plain = await outcome(
        db, lambda: db.execute(sql("INSERT INTO {} (id, {}) VALUES (1, {})", t, c, value)), table,
        column, 1,
    )  # fmt: skip
    bulk = await outcome(
        db, lambda: db.bulk_insert(table, [{"id": 2, column: value}]), table, column, 2
    )
    assert bulk == plain
    assert bulk[0] == "stored" or await count(db, table) == int(plain[0] == "stored")
    await call(db.execute(sql("DELETE FROM {}; INSERT INTO {} (id) VALUES (1), (2)", t, t)))
    plain = await outcome(
        db, lambda: db.execute(sql("UPDATE {} SET {} = {} WHERE id = 1", t, c, value)), table,
        column, 1,
    )  # fmt: skip
    bulk = await outcome(
        db,
        lambda: db.bulk_update(
            table, [{"where": {"id": 2}, "set": {column: value}}],
            where_columns=["id"], set_columns=[column],
        ),
        table, column, 2,
    )  # fmt: skip
    assert bulk == plain


def test_overlong_text_raises_instead_of_being_truncated(pg_url: str) -> None:
    with create_pool(pg_url) as pool:
        name = _name()
        t = sql.ident(name)
        pool.execute(sql("CREATE TABLE {} (id int, name varchar(5), code char(2))", t))
        try:
            with pytest.raises(psycopg.errors.StringDataRightTruncation):
                pool.bulk_insert(name, [{"id": 1, "name": "toolongname", "code": "xyz"}])
            with pytest.raises(psycopg.errors.StringDataRightTruncation):
                pool.bulk_insert(
                    name, [{"id": 1, "name": "toolongname"}], column_types={"name": "varchar(5)"}
                )
            assert pool.query_value(sql("SELECT count(*) FROM {}", t)) == 0
        finally:
            pool.execute(sql("DROP TABLE {}", t))


# (column, a stored value, a value that a cast to the column's type would truncate or
# round into the stored one, and that therefore must not match it)
NEAR_MISSES = [
    ("name", "toolo", "toolongname"),
    ("code", "xy", "xyz"),
    ("n", Decimal("1.23"), Decimal("1.234")),
    ("bits", "101", "1010"),
    ("names", ["abc"], ["abcd"]),
    ("codes", ["xy"], ["xyz"]),
    ("ns", [Decimal("1.3")], [Decimal("1.26")]),
    ("dom", "toolo", "toolongname"),
    ("dom", "toolo", "bad"),  # compared, not checked against the domain
]


@pytest.mark.parametrize("given", [False, True], ids=["looked-up", "given"])
@pytest.mark.parametrize(("column", "stored", "probe"), NEAR_MISSES)
async def test_conditions_compare_like_plain_where(
    db: Pool, mods: tuple[str, dict[str, str]], column: str, stored: Any, probe: Any, given: bool
) -> None:
    table, types = mods
    t, c = sql.ident(table), sql.ident(column)
    await call(db.execute(sql("INSERT INTO {} (id, {}) VALUES (1, {})", t, c, stored)))
    plain = await call(db.query(sql("SELECT id FROM {} WHERE {} = {}", t, c, probe)))
    assert plain == []
    column_types = {column: types[column]} if given else None
    for value, ids in ((probe, []), (stored, [{"id": 1}])):  # the stored value does match
        conditions = [{column: value}]
        found = await call(
            db.bulk_select(
                table, conditions, where_columns=[column], column_types=column_types,
                select_columns=["id"],
            )
        )  # fmt: skip
        assert found == ids
        where = pgfast.bulk_condition(
            conditions, where_columns=[column], column_types={column: types[column]}
        )
        assert await call(db.query(sql("SELECT id FROM {} WHERE {}", t, where))) == ids
    deleted = db.bulk_delete(
        table, [{column: probe}], where_columns=[column], column_types=column_types
    )
    assert await call(deleted) == 0
    assert await count(db, table) == 1


# -- the column type cache follows the table ---------------------------------------------------


@pytest.fixture
async def watched(pg_url: str, flavor: str) -> AsyncIterator[tuple[Pool, list[str], str]]:
    """A pool that records its type lookups, and a table ``(id int PRIMARY KEY, v int)``."""
    lookups: list[str] = []

    def started(q: Any, text: str, params: Any) -> None:
        if "pg_attribute" in text:
            lookups.append(text)

    name = _name()
    pool: Pool = (create_pool if flavor == "sync" else create_async_pool)(
        pg_url, pool_size=2, on_query_start=started
    )
    await call(pool.execute(sql("CREATE TABLE {} (id int PRIMARY KEY, v int)", sql.ident(name))))
    yield pool, lookups, name
    await call(pool.execute(sql("DROP TABLE IF EXISTS {}", sql.ident(name))))
    await call(pool.dispose())


async def recreate(db: Pool, table: str, columns: str) -> None:
    t = sql.ident(table)
    await call(db.execute(sql("DROP TABLE {}; CREATE TABLE {} ({})", t, t, sql.unsafe(columns))))


async def rows_of(db: Pool, table: str) -> list[Any]:
    return list(await call(db.query(sql("SELECT * FROM {} ORDER BY id", sql.ident(table)))))


@pytest.mark.parametrize("flavor", ["sync", "async"])
async def test_cache_sees_an_added_column(watched: tuple[Pool, list[str], str]) -> None:
    db, lookups, table = watched
    await call(db.bulk_insert(table, [{"id": 1, "v": 1}]))
    await call(db.execute(sql("ALTER TABLE {} ADD COLUMN extra int", sql.ident(table))))
    await call(db.bulk_insert(table, [{"id": 2, "extra": 20}]))
    assert len(lookups) == 2
    assert await call(db.copy_in(table, [(3, 3, 30)])) == 1  # tuples of the new width
    assert await call(db.bulk_select(table, [{"extra": 30}], where_columns=["extra"])) == [
        {"id": 3, "v": 3, "extra": 30}
    ]
    assert len(lookups) == 2  # the refreshed entry is cached again
    assert await rows_of(db, table) == [
        {"id": 1, "v": 1, "extra": None},
        {"id": 2, "v": None, "extra": 20},
        {"id": 3, "v": 3, "extra": 30},
    ]


@pytest.mark.parametrize("flavor", ["sync", "async"])
async def test_cache_sees_a_renamed_column(watched: tuple[Pool, list[str], str]) -> None:
    db, lookups, table = watched
    await call(db.bulk_insert(table, [{"id": 1, "v": 1}]))
    await call(db.execute(sql("ALTER TABLE {} RENAME COLUMN v TO w", sql.ident(table))))
    await call(db.bulk_insert(table, [{"id": 2, "w": 2}]))
    with pytest.raises(ValueError, match=r"'v': table .* has no such column"):
        await call(db.bulk_insert(table, [{"id": 3, "v": 3}]))
    # Each unknown name gets one look (the column may have been added meanwhile).
    with pytest.raises(ValueError, match="'v'"):
        await call(db.bulk_update(
            table, [{"where": {"id": 1}, "set": {"v": 9}}], where_columns=["id"], set_columns=["v"]
        ))  # fmt: skip
    assert await rows_of(db, table) == [{"id": 1, "w": 1}, {"id": 2, "w": 2}]
    assert len(lookups) == 4


@pytest.mark.parametrize("flavor", ["sync", "async"])
async def test_cache_sees_a_recreated_table(watched: tuple[Pool, list[str], str]) -> None:
    db, lookups, table = watched
    await call(db.bulk_insert(table, [{"id": 1, "v": 1}]))
    await recreate(db, table, "id int PRIMARY KEY, v text")
    await call(db.bulk_insert(table, [{"id": 1, "v": "one"}, {"id": 2, "v": "two"}]))
    assert len(lookups) == 2
    await recreate(db, table, "id int PRIMARY KEY, v int[]")
    assert await call(db.bulk_update(
        table, [{"where": {"id": 1}, "set": {"v": [1, 2]}}], where_columns=["id"], set_columns=["v"]
    )) == 0  # fmt: skip
    await call(db.bulk_insert(table, [{"id": 1, "v": [1, 2]}]))
    assert len(lookups) == 3
    await recreate(db, table, "id int PRIMARY KEY, v text")
    await call(db.execute(sql("INSERT INTO {} VALUES (1, 'one'), (2, 'two')", sql.ident(table))))
    found = await call(db.bulk_select(table, [{"v": "two"}], where_columns=["v"]))
    assert found == [{"id": 2, "v": "two"}]
    assert await call(db.bulk_delete(table, [{"v": "one"}], where_columns=["v"])) == 1
    assert len(lookups) == 4
    await recreate(db, table, "id int PRIMARY KEY, v float8")  # binary COPY of other types
    assert await call(db.copy_in(table, [{"id": 3, "v": 0.5}])) == 1
    assert await rows_of(db, table) == [{"id": 3, "v": 0.5}]
    assert len(lookups) == 5


@pytest.mark.parametrize("flavor", ["sync", "async"])
async def test_errors_not_caused_by_the_cache_are_not_retried(
    watched: tuple[Pool, list[str], str],
) -> None:
    db, lookups, table = watched
    await call(db.bulk_insert(table, [{"id": 1, "v": 1}]))
    # Types unchanged: one look, then the server's own error, with nothing written twice.
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        await call(db.bulk_insert(table, [{"id": 2, "v": 2}, {"id": 3, "v": "three"}]))
    assert len(lookups) == 2
    with pytest.raises(psycopg.errors.UniqueViolation):  # not a type problem: no look at all
        await call(db.bulk_insert(table, [{"id": 1, "v": 1}]))
    assert len(lookups) == 2
    await call(db.execute(sql("DROP TABLE {}", sql.ident(table))))
    with pytest.raises(psycopg.errors.UndefinedTable):
        await call(db.bulk_insert(table, [{"id": 1, "v": 1}]))
    assert await call(db.query_value(sql("SELECT to_regclass({})::text", table))) is None


@pytest.mark.parametrize("flavor", ["sync"])
async def test_copy_in_is_not_retried_once_rows_streamed(
    watched: tuple[Pool, list[str], str],
) -> None:
    db, lookups, table = watched
    await call(db.copy_in(table, [(0, 0)]))
    await recreate(db, table, "id int PRIMARY KEY, v text")
    taken: list[int] = []

    def rows() -> Iterator[tuple[int, int]]:
        for i in range(2_500):  # more than one chunk, sent with the stale int4 type
            taken.append(i)
            yield i, i

    with pytest.raises(psycopg.Error):
        await call(db.copy_in(table, rows()))
    assert len(taken) == 2_500 and len(lookups) == 1  # a generator cannot be read twice
    assert (table,) not in db._column_types_cache  # looked up afresh next time
    assert await call(db.copy_in(table, [(1, "one")])) == 1
    assert len(lookups) == 2
    assert await rows_of(db, table) == [{"id": 1, "v": "one"}]


def test_cache_refresh_inside_a_transaction(pg_url: str) -> None:
    with create_pool(pg_url) as pool:
        name = _name()
        pool.execute(sql("CREATE TABLE {} (id int PRIMARY KEY, v int)", sql.ident(name)))
        try:
            pool.bulk_insert(name, [{"id": 1, "v": 1}])
            with pool.transaction() as tx:
                tx.execute(sql("ALTER TABLE {} ALTER COLUMN v TYPE text", sql.ident(name)))
                tx.bulk_insert(name, [{"id": 2, "v": "two"}])  # retried in its savepoint
                assert tx.bulk_select(name, [{"v": "two"}], where_columns=["v"]) == [
                    {"id": 2, "v": "two"}
                ]
            assert pool.query(sql("SELECT * FROM {} ORDER BY id", sql.ident(name))) == [
                {"id": 1, "v": "1"},
                {"id": 2, "v": "two"},
            ]
        finally:
            pool.execute(sql("DROP TABLE {}", sql.ident(name)))


# -- array literal round trips ----------------------------------------------------------------

HYPO_COLUMNS = (
    "id int4, t text, f float8, d numeric, i int8, b bool, ts timestamptz, u uuid, by bytea"
)


@pytest.fixture(scope="module")
def sync_db(pg_url: str) -> Iterator[ConnectionPool]:
    with create_pool(pg_url, pool_size=2) as pool:
        yield pool


@pytest.fixture(scope="module")
def hypo_table(sync_db: ConnectionPool) -> Iterator[str]:
    name = _name()
    sync_db.execute(sql("CREATE TABLE {} ({})", sql.ident(name), sql.unsafe(HYPO_COLUMNS)))
    yield name
    sync_db.execute(sql("DROP TABLE {}", sql.ident(name)))


# Text made of pieces that matter to an array literal, and any other character but NUL.
nasty_text = st.lists(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")
    | st.sampled_from(['"', "\\", "{", "}", ",", " ", "\t", "\n", "'", "NULL", "null", "é", "🙂"]),
    max_size=12,
).map("".join) | st.sampled_from(["", "NULL", "null", " ", '""', "\\", "{}", "{NULL}", ","])

values = {
    "t": nasty_text,
    "f": st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([-0.0, 5e-324, 1.7976931348623157e308]),
    "d": st.decimals(allow_nan=True, allow_infinity=True)
    | st.sampled_from(
        [Decimal("1E+1000"), Decimal("-0"), Decimal("0E-30"), Decimal("1" * 200 + "." + "9" * 200)]
    ),
    "i": st.integers(-(2**63), 2**63 - 1) | st.sampled_from([-(2**63), 2**63 - 1]),
    "b": st.booleans(),
    "ts": st.datetimes(
        min_value=datetime(1000, 1, 1),
        max_value=datetime(9000, 1, 1),
        timezones=st.builds(
            timezone, st.integers(-15 * 60, 15 * 60).map(lambda m: timedelta(minutes=m))
        ),
    ),
    "u": st.uuids(),
    "by": st.binary(max_size=20),
}
records = st.lists(
    st.fixed_dictionaries({}, optional={k: st.none() | v for k, v in values.items()}), max_size=8
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, Decimal) and isinstance(b, Decimal) and a.is_nan():
        return b.is_nan()
    return bool(a == b)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=records)
def test_array_literal_round_trip(
    sync_db: ConnectionPool, hypo_table: str, batch: list[dict[str, Any]]
) -> None:
    """Whatever text, float, numeric, ... values are sent as array literals come back equal."""
    sync_db.execute(sql("TRUNCATE {}", sql.ident(hypo_table)))
    rows = [{"id": i, **r} for i, r in enumerate(batch)]
    columns = ["id", *values]
    sync_db.bulk_insert(hypo_table, rows, columns=columns)
    got = sync_db.query(sql("SELECT * FROM {} ORDER BY id", sql.ident(hypo_table)))
    assert len(got) == len(rows)
    for sent, back in zip(rows, got, strict=True):
        for column in columns:
            assert _same(sent.get(column), back[column]), (column, sent.get(column), back[column])


@pytest.mark.nodb
def test_nan_decimals_are_written_as_nan() -> None:
    from pgfast._bulk_plan import plan_insert

    plan = plan_insert(
        "t", [{"d": Decimal("-NaN")}, {"d": Decimal("sNaN")}], column_types={"d": "numeric"}
    )
    (query,) = plan.queries()
    assert query.format()[1] == ['{"NaN","NaN"}']


@pytest.mark.nodb
@given(
    items=st.lists(
        st.none() | nasty_text | st.integers() | st.floats() | st.booleans(), max_size=10
    )
)
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_array_literal_twins_agree(impl: str, items: list[Any]) -> None:
    """Each twin writes the same literal as the pure one for the values the round trip sends."""
    expected = twin("_flatten", "python").array_literal(items, None)
    assert twin("_flatten", impl).array_literal(items, None) == expected


@pytest.mark.nodb
def test_flatten_twin_does_not_import_the_other(impl: str) -> None:
    """Both twins take their error messages from pgfast._flatten_messages."""
    module = twin("_flatten", impl).__name__
    other = "pgfast._flatten_py" if impl == "cython" else "pgfast._flatten_c"
    script = (
        f"import sys, {module}; "
        f"print({other!r} in sys.modules, 'pgfast._flatten_messages' in sys.modules)"
    )
    env = {**os.environ, "PGFAST_IMPL": impl}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    assert done.stdout.split() == ["False", "True"]
    with pytest.raises(
        ValueError, match=r"record 0 has key 'x', which is not one of the columns \['a'\]"
    ):
        twin("_flatten", impl).records_to_rows([{"x": 1}], ["a"])
