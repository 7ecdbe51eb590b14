"""pgfast pools vs psycopg on the same server (speed targets in the group list below).

Run: ``.venv/bin/python -m pytest benches/bench_pool.py --benchmark-enable -p no:cacheprovider``

Groups (compare the ``mean`` column inside a group):

- ``query-sync`` / ``query-async``: 100 sequential 1-parameter SELECTs, dict
  rows: pgfast pool ``query()`` vs psycopg's raw cursor on one connection
  (target: <= 1.10x) and vs psycopg_pool + raw cursor.
- ``concurrent-10`` / ``concurrent-100``: 10 / 100 asyncio tasks sharing a
  10-connection pool, 20 queries each: pgfast vs psycopg_pool + AsyncRawCursor
  (target: pgfast >= psycopg_pool).
- ``fetch-10k``: 10,000 rows x 4 columns as dicts: pgfast vs psycopg
  ``dict_row`` (target: pgfast at least as fast).
- asyncpg is a peer in the async groups and ``fetch-10k-async`` (skipped
  when not installed); postgres.js is measured by ``pgfast bench``.
- ``tx-sync``: 50 transactions of one SELECT each (BEGIN, SELECT, COMMIT):
  pgfast ``tx()`` vs psycopg's ``conn.transaction()`` on one connection.

The SQL hot path runs compiled or pure as ``pgfast._impl`` chose
(``PGFAST_NO_EXTENSIONS=1`` for the pure twins); test ids name it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import psycopg
import psycopg_pool
import pytest
from psycopg import AsyncRawCursor, RawCursor
from psycopg.rows import dict_row

from pgfast._factories import create_async_pool, create_pool
from pgfast._impl import IMPL
from pgfast._sql import sql
from pgfast._transaction_sync import Transaction

SEQUENTIAL = 100
TRANSACTIONS = 50
PER_TASK = 20
FETCH = (
    "SELECT g AS id, g::text AS name, g * 1.5 AS score, now() AS at "
    "FROM generate_series(1, 10000) g"
)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _run(
    loop: asyncio.AbstractEventLoop, fn: Callable[[], Coroutine[Any, Any, Any]]
) -> Callable[[], Any]:
    return lambda: loop.run_until_complete(fn())


# -- sequential, sync -------------------------------------------------------------


@pytest.mark.benchmark(group="query-sync")
def test_sync_pgfast(benchmark: Any, pg_url: str) -> None:
    with create_pool(pg_url, pool_size=1) as db:

        def run() -> None:
            for i in range(SEQUENTIAL):
                db.query(sql("SELECT {}::int AS a", i))

        benchmark.extra_info["impl"] = IMPL
        benchmark(run)
        assert db.query(sql("SELECT {}::int AS a", 7)) == [{"a": 7}]


@pytest.mark.benchmark(group="query-sync")
def test_sync_psycopg_raw_cursor(benchmark: Any, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:

        def run() -> None:
            for i in range(SEQUENTIAL):
                cur = RawCursor(conn, row_factory=dict_row)
                cur.execute("SELECT $1::int AS a", [i])
                cur.fetchall()

        benchmark(run)


@pytest.mark.benchmark(group="query-sync")
def test_sync_psycopg_pool_raw_cursor(benchmark: Any, pg_url: str) -> None:
    with psycopg_pool.ConnectionPool(
        pg_url, min_size=1, max_size=1, kwargs={"autocommit": True}
    ) as pool:

        def run() -> None:
            for i in range(SEQUENTIAL):
                with pool.connection() as conn:
                    cur = RawCursor(conn, row_factory=dict_row)
                    cur.execute("SELECT $1::int AS a", [i])
                    cur.fetchall()

        benchmark(run)


# -- sequential, async ------------------------------------------------------------


@pytest.mark.benchmark(group="query-async")
def test_async_pgfast(benchmark: Any, pg_url: str, loop: asyncio.AbstractEventLoop) -> None:
    db = create_async_pool(pg_url, pool_size=1)

    async def run() -> None:
        for i in range(SEQUENTIAL):
            await db.query(sql("SELECT {}::int AS a", i))

    benchmark.extra_info["impl"] = IMPL
    benchmark(_run(loop, run))
    loop.run_until_complete(db.dispose())


@pytest.mark.benchmark(group="query-async")
def test_async_psycopg_raw_cursor(
    benchmark: Any, pg_url: str, loop: asyncio.AbstractEventLoop
) -> None:
    conn = loop.run_until_complete(psycopg.AsyncConnection.connect(pg_url, autocommit=True))

    async def run() -> None:
        for i in range(SEQUENTIAL):
            cur = AsyncRawCursor(conn, row_factory=dict_row)
            await cur.execute("SELECT $1::int AS a", [i])
            await cur.fetchall()

    benchmark(_run(loop, run))
    loop.run_until_complete(conn.close())


@pytest.mark.benchmark(group="query-async")
def test_async_asyncpg(benchmark: Any, pg_url: str, loop: asyncio.AbstractEventLoop) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    conn = loop.run_until_complete(asyncpg.connect(pg_url))

    async def run() -> None:
        for i in range(SEQUENTIAL):
            await conn.fetch("SELECT $1::int AS a", i)

    benchmark(_run(loop, run))
    loop.run_until_complete(conn.close())


async def _psycopg_pool(url: str, size: int) -> psycopg_pool.AsyncConnectionPool:
    pool = psycopg_pool.AsyncConnectionPool(
        url, min_size=size, max_size=size, kwargs={"autocommit": True}, open=False
    )
    await pool.open(wait=True)
    return pool


@pytest.mark.benchmark(group="query-async")
def test_async_psycopg_pool_raw_cursor(
    benchmark: Any, pg_url: str, loop: asyncio.AbstractEventLoop
) -> None:
    pool = loop.run_until_complete(_psycopg_pool(pg_url, 1))

    async def run() -> None:
        for i in range(SEQUENTIAL):
            async with pool.connection() as conn:
                cur = AsyncRawCursor(conn, row_factory=dict_row)
                await cur.execute("SELECT $1::int AS a", [i])
                await cur.fetchall()

    benchmark(_run(loop, run))
    loop.run_until_complete(pool.close())


# -- concurrent, async ------------------------------------------------------------


@pytest.mark.parametrize("tasks", [10, 100])
def test_concurrent_pgfast(
    benchmark: Any, pg_url: str, loop: asyncio.AbstractEventLoop, tasks: int
) -> None:
    benchmark.group = f"concurrent-{tasks}"
    db = create_async_pool(pg_url, pool_size=10, min_size=10)

    async def worker(n: int) -> None:
        for i in range(PER_TASK):
            await db.query(sql("SELECT {}::int AS a", n * i))

    async def run() -> None:
        await asyncio.gather(*(worker(n) for n in range(tasks)))

    benchmark.extra_info["impl"] = IMPL
    benchmark(_run(loop, run))
    loop.run_until_complete(db.dispose())


@pytest.mark.parametrize("tasks", [10, 100])
def test_concurrent_psycopg_pool(
    benchmark: Any, pg_url: str, loop: asyncio.AbstractEventLoop, tasks: int
) -> None:
    benchmark.group = f"concurrent-{tasks}"
    pool = loop.run_until_complete(_psycopg_pool(pg_url, 10))

    async def worker(n: int) -> None:
        for i in range(PER_TASK):
            async with pool.connection() as conn:
                cur = AsyncRawCursor(conn, row_factory=dict_row)
                await cur.execute("SELECT $1::int AS a", [n * i])
                await cur.fetchall()

    async def run() -> None:
        await asyncio.gather(*(worker(n) for n in range(tasks)))

    benchmark(_run(loop, run))
    loop.run_until_complete(pool.close())


@pytest.mark.parametrize("tasks", [10, 100])
def test_concurrent_asyncpg_pool(
    benchmark: Any, pg_url: str, loop: asyncio.AbstractEventLoop, tasks: int
) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    benchmark.group = f"concurrent-{tasks}"

    async def make() -> Any:  # made in the running loop: it binds to it
        return await asyncpg.create_pool(pg_url, min_size=10, max_size=10)

    pool = loop.run_until_complete(make())

    async def worker(n: int) -> None:
        for i in range(PER_TASK):
            await pool.fetch("SELECT $1::int AS a", n * i)

    async def run() -> None:
        await asyncio.gather(*(worker(n) for n in range(tasks)))

    benchmark(_run(loop, run))
    loop.run_until_complete(pool.close())


# -- fetching many rows -----------------------------------------------------------


@pytest.mark.benchmark(group="fetch-10k-async")
def test_fetch_async_pgfast(benchmark: Any, pg_url: str, loop: asyncio.AbstractEventLoop) -> None:
    db = create_async_pool(pg_url, pool_size=1)
    q = sql(FETCH)
    rows = benchmark(_run(loop, lambda: db.query(q)))
    assert len(rows) == 10000 and set(rows[0]) == {"id", "name", "score", "at"}
    loop.run_until_complete(db.dispose())


@pytest.mark.benchmark(group="fetch-10k-async")
def test_fetch_asyncpg(benchmark: Any, pg_url: str, loop: asyncio.AbstractEventLoop) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    conn = loop.run_until_complete(asyncpg.connect(pg_url))
    assert len(benchmark(_run(loop, lambda: conn.fetch(FETCH)))) == 10000
    loop.run_until_complete(conn.close())


@pytest.mark.benchmark(group="fetch-10k")
def test_fetch_pgfast(benchmark: Any, pg_url: str) -> None:
    with create_pool(pg_url, pool_size=1) as db:
        q = sql(FETCH)
        rows = benchmark(db.query, q)
        assert len(rows) == 10000 and set(rows[0]) == {"id", "name", "score", "at"}


@pytest.mark.benchmark(group="fetch-10k")
def test_fetch_psycopg_dict_row(benchmark: Any, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:

        def run() -> list[dict[str, Any]]:
            cur = RawCursor(conn, row_factory=dict_row)
            cur.execute(FETCH)
            return cur.fetchall()

        assert len(benchmark(run)) == 10000


# -- transactions -----------------------------------------------------------------


@pytest.mark.benchmark(group="tx-sync")
def test_tx_pgfast(benchmark: Any, pg_url: str) -> None:
    with create_pool(pg_url, pool_size=1) as db:

        def body(tx: Transaction) -> Any:
            return tx.query_value(sql("SELECT {}::int AS a", 1))

        def run() -> None:
            for _ in range(TRANSACTIONS):
                db.tx(body)

        benchmark.extra_info["impl"] = IMPL
        benchmark(run)
        assert db.tx(body) == 1


@pytest.mark.benchmark(group="tx-sync")
def test_tx_psycopg(benchmark: Any, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:

        def run() -> None:
            for _ in range(TRANSACTIONS):
                with conn.transaction():
                    cur = RawCursor(conn, row_factory=dict_row)
                    cur.execute("SELECT $1::int AS a", [1])
                    cur.fetchone()

        benchmark(run)
