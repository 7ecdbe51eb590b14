"""Pools behind a transaction-mode PgBouncer, on stalled and reset links, and losing COMMITs.

Every test runs against real servers: PgBouncer from the machine, links
through ``FaultProxy`` (a loopback TCP proxy that stalls and resets).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from time import monotonic
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from pgfast import _pool_async
from pgfast._exceptions import CommitUnknownError, Error, QueryTimeoutError
from pgfast._factories import create_async_pool
from pgfast._pool_async import AsyncConnectionPool
from pgfast._sql import sql
from pgfast.testing import FaultProxy, LocalPgBouncer
from tests._concurrent import each_async


@pytest.fixture
def counter(pg_url: str) -> Iterator[Any]:
    """A one-row table ``(id 1, n 0)``, dropped afterwards."""
    name = f"ctr_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, n int8 NOT NULL)")
        conn.execute(f"INSERT INTO {name} VALUES (1, 0)")
    yield sql.ident(name)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {name}")


@pytest.fixture
def proxy(pg_url: str) -> Iterator[FaultProxy]:
    with FaultProxy.for_url(pg_url) as fault_proxy:
        yield fault_proxy


@pytest.fixture
async def proxied(pg_url: str, proxy: FaultProxy) -> AsyncIterator[AsyncConnectionPool]:
    async with create_async_pool(proxy.url_for(pg_url), pool_size=2, query_timeout=1) as db:
        yield db


# -- PgBouncer in transaction mode ----------------------------------------------


async def _two_clients_through(url: str, counter: Any, rounds: int, **options: Any) -> int:
    """Two pools share PgBouncer's server connections: one increments a counter,
    the other echoes numbers. Returns the increments acknowledged."""
    async with (
        create_async_pool(url, pool_size=4, **options) as writes,
        create_async_pool(url, pool_size=4, **options) as reads,
    ):

        async def client(i: int) -> int:
            acknowledged = 0
            for k in range(rounds):
                if i % 2:
                    q = sql("UPDATE {} SET n = n + 1 WHERE id = {} RETURNING n", counter, 1)
                    n = await writes.query_value(q)
                    assert isinstance(n, int), f"an UPDATE answered {n!r}"
                    acknowledged += 1
                else:
                    # Were it to run the UPDATE, its row would be {"n": ...}.
                    assert await reads.query_one(sql("SELECT {}::int8 AS a", k)) == {"a": k}
            return acknowledged

        return sum(await each_async(8, client))


@pytest.mark.parametrize("options", [{}, {"prepare_threshold": None}], ids=["defaults", "never"])
async def test_behind_pgbouncer_each_caller_runs_its_own_statement(
    pg_url: str, counter: Any, options: dict[str, Any]
) -> None:
    with LocalPgBouncer(pg_url, default_pool_size=2) as bouncer:
        acknowledged = await _two_clients_through(bouncer.url, counter, 60, **options)
    async with create_async_pool(pg_url) as direct:
        applied = await direct.query_value(sql("SELECT n FROM {}", counter))
    assert applied == acknowledged == 4 * 60


async def test_behind_an_undetected_pooler_prepared_statements_heal(
    pg_url: str, counter: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Defeat the check made at connect time, as a pooler passing the server's
    # process id through would: the unique statement names and the retry of a
    # statement the server connection does not know must carry the load.
    async def never(conn: Any) -> bool:
        return False

    monkeypatch.setattr(_pool_async, "_behind_pooler", never)
    caplog.set_level("INFO", logger="pgfast")
    with LocalPgBouncer(pg_url, default_pool_size=2) as bouncer:
        acknowledged = await _two_clients_through(bouncer.url, counter, 60)
    async with create_async_pool(pg_url) as direct:
        applied = await direct.query_value(sql("SELECT n FROM {}", counter))
    assert applied == acknowledged == 4 * 60
    assert "prepared statements are off" in caplog.text


async def test_pooler_found_at_connect_turns_preparing_off(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="pgfast")
    bouncer = LocalPgBouncer(pg_url, pool_mode="session", default_pool_size=2)
    with bouncer:
        async with create_async_pool(bouncer.url, pool_size=1) as db:
            for _ in range(10):
                assert await db.query_value(sql("SELECT {}::int", 7)) == 7
            prepared = await db.query_value(sql("SELECT count(*) FROM pg_prepared_statements"))
    assert prepared == 0
    assert "backend process id" in caplog.text


async def test_direct_connections_prepare_under_names_of_their_own(pg_url: str) -> None:
    async with create_async_pool(pg_url, pool_size=1) as db:
        for _ in range(6):
            assert await db.query_value(sql("SELECT {}::int + 1", 1)) == 2
        names = await db.query(sql("SELECT name FROM pg_prepared_statements"))
    assert len(names) == 1
    assert names[0]["name"].startswith("_pgf") and len(names[0]["name"]) > len("_pgf_pg3_0")


async def test_prepare_threshold_none_never_prepares(pg_url: str) -> None:
    async with create_async_pool(pg_url, pool_size=1, prepare_threshold=None) as db:
        for _ in range(20):
            assert await db.query_value(sql("SELECT {}::int + 1", 1)) == 2
        assert await db.query_value(sql("SELECT count(*) FROM pg_prepared_statements")) == 0


# -- stalled links: query_timeout -----------------------------------------------


async def test_query_timeout_on_a_stalled_link(
    proxied: AsyncConnectionPool, proxy: FaultProxy
) -> None:
    assert await proxied.query_value(sql("SELECT {}::int", 1)) == 1
    proxy.stall()
    started = monotonic()
    with pytest.raises(QueryTimeoutError, match="connection was closed"):
        await proxied.query_value(sql("SELECT {}::int", 2))
    assert monotonic() - started < 6.0  # 1 s, then 1 s for the cancel to be confirmed
    proxy.resume()
    assert await proxied.query_value(sql("SELECT {}::int", 3)) == 3
    assert proxied.stats()["in_use"] == 0


async def test_query_timeout_in_a_transaction_on_a_stalled_link(
    proxied: AsyncConnectionPool, proxy: FaultProxy
) -> None:
    lost = pytest.raises(Error, match="did not commit: its connection was lost")
    with lost:
        async with proxied.transaction() as tx:
            assert await tx.query_value(sql("SELECT {}::int", 1)) == 1
            proxy.stall()
            with pytest.raises(QueryTimeoutError):
                await tx.query_value(sql("SELECT {}::int", 2))
    proxy.resume()
    assert await proxied.query_value(sql("SELECT {}::int", 3)) == 3


async def test_query_timeout_covers_batches_and_stream_fetches(pg_url: str) -> None:
    async with create_async_pool(pg_url, pool_size=1, query_timeout=0.3) as db:
        with pytest.raises(QueryTimeoutError):
            await db.query([sql("SELECT {}::int", 1), sql("SELECT pg_sleep(5)")])
        rows = sql(
            "SELECT g, pg_sleep(CASE WHEN g = 3 THEN 5 ELSE 0 END) FROM generate_series(1, 4) g"
        )
        seen = []
        with pytest.raises(QueryTimeoutError):
            async for row in db.query_stream(rows, batch_size=1):
                seen.append(row["g"])
        assert seen == [1, 2]
        assert await db.query_value(sql("SELECT {}::int", 5)) == 5
        assert db.stats()["in_use"] == 0


async def test_query_timeout_cancels_a_slow_statement(pg_url: str) -> None:
    async with create_async_pool(pg_url, pool_size=1, query_timeout=0.3) as db:
        pid = await db.query_value(sql("SELECT pg_backend_pid()"))
        started = monotonic()
        with pytest.raises(QueryTimeoutError, match="was cancelled") as info:
            await db.query(sql("SELECT pg_sleep(5)"))
        assert 0.25 < monotonic() - started < 4.0
        assert isinstance(info.value, TimeoutError)
        assert isinstance(info.value.__cause__, psycopg.errors.QueryCanceled)
        # The server confirmed the cancel: the connection is reused.
        assert await db.query_value(sql("SELECT pg_backend_pid()")) == pid


async def test_statement_timeout_is_not_query_timeout(pg_url: str) -> None:
    cancelled = pytest.raises(psycopg.errors.QueryCanceled)
    async with create_async_pool(pg_url, statement_timeout=0.2, query_timeout=5) as db:
        with cancelled:
            await db.query(sql("SELECT pg_sleep(2)"))


# -- resets: connection attempts and lost answers -------------------------------


async def test_failed_connection_attempts_fail_no_caller(pg_url: str, proxy: FaultProxy) -> None:
    proxy.reset_connects(every=10)
    url = proxy.url_for(pg_url)
    async with create_async_pool(url, pool_size=5, max_uses=1, connect_timeout=5) as db:

        async def client(i: int) -> list[int]:
            return [await db.query_value(sql("SELECT {}::int", i * 100 + k)) for k in range(30)]

        results = await each_async(5, client)
    assert results == [[i * 100 + k for k in range(30)] for i in range(5)]
    assert proxy.connections >= 150  # max_uses=1: one connection per query, 1 in 10 reset


async def _reset_once_running(pg_url: str, proxy: FaultProxy, statement: str) -> None:
    """Reset every link through ``proxy`` once a statement starting with
    ``statement`` is running on the server (not before: a reset during the
    connection attempt would only be retried)."""
    running = sql(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
        "AND pid <> pg_backend_pid() AND query LIKE {}",
        statement + "%",
    )
    async with create_async_pool(pg_url, pool_size=1) as direct:
        deadline = monotonic() + 30
        while not await direct.query_value(running):
            assert monotonic() < deadline, f"{statement} never started"
            await asyncio.sleep(0.01)
    proxy.reset_all()


async def _error_of(work: Callable[[], Awaitable[Any]]) -> Exception | None:
    try:
        await work()
    except Exception as exc:
        return exc
    return None


async def test_connection_lost_during_commit_is_commit_unknown(
    pg_url: str, proxy: FaultProxy, counter: Any
) -> None:
    # A deferred trigger sleeps during COMMIT; the link is reset meanwhile. The
    # server still commits: the caller must not be told it did not.
    fn = f"slow_commit_{uuid.uuid4().hex[:8]}"
    async with create_async_pool(pg_url) as direct:
        await direct.execute(
            sql.unsafe(
                f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$"
            )
        )
        await direct.execute(
            sql(
                "CREATE CONSTRAINT TRIGGER slow AFTER UPDATE ON {} DEFERRABLE INITIALLY DEFERRED "
                "FOR EACH ROW EXECUTE FUNCTION {}()",
                counter,
                sql.ident(fn),
            )
        )
    async with create_async_pool(proxy.url_for(pg_url), pool_size=1) as db:

        async def increment() -> None:
            async with db.transaction() as tx:
                await tx.execute(sql("UPDATE {} SET n = n + 1 WHERE id = 1", counter))

        error, _ = await each_async(
            2,
            lambda i: (
                _error_of(increment) if i == 0 else _reset_once_running(pg_url, proxy, "COMMIT")
            ),
        )
        assert isinstance(error, CommitUnknownError), error
        assert "may or may not have committed" in str(error)
        assert db.stats()["in_use"] == 0
    async with create_async_pool(pg_url) as direct:
        for _ in range(100):  # the backend finishes its COMMIT after the reset
            if await direct.query_value(sql("SELECT n FROM {}", counter)) == 1:
                break
            await asyncio.sleep(0.05)
        assert await direct.query_value(sql("SELECT n FROM {}", counter)) == 1
        await direct.execute(sql("DROP FUNCTION {} CASCADE", sql.ident(fn)))


async def test_connection_lost_during_a_write_is_commit_unknown_but_not_during_a_read(
    pg_url: str, proxy: FaultProxy, counter: Any
) -> None:
    async with create_async_pool(proxy.url_for(pg_url), pool_size=1) as db:

        async def write() -> None:
            await db.execute(
                sql("UPDATE {} SET n = n + 1 WHERE id = 1 AND pg_sleep(1) IS NOT NULL", counter)
            )

        async def read() -> None:
            await db.query(sql("SELECT pg_sleep(1)"))

        error, _ = await each_async(
            2,
            lambda i: _error_of(write) if i == 0 else _reset_once_running(pg_url, proxy, "UPDATE"),
        )
        assert isinstance(error, CommitUnknownError), error
        error, _ = await each_async(
            2,
            lambda i: (
                _error_of(read) if i == 0 else _reset_once_running(pg_url, proxy, "SELECT pg_sleep")
            ),
        )
        assert isinstance(error, psycopg.OperationalError), error
        assert await db.query_value(sql("SELECT {}::int", 1)) == 1


async def test_a_login_the_server_refuses_is_not_retried(pg_url: str) -> None:
    u = urlsplit(pg_url)
    wrong = urlunsplit(u._replace(netloc=f"{u.username}:not-the-password@{u.hostname}:{u.port}"))
    async with create_async_pool(wrong, connect_timeout=5) as db:
        started = monotonic()
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            await db.query(sql("SELECT 1"))
        assert monotonic() - started < 4  # not retried for connect_timeout
