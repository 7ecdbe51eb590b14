"""Reliability of the pools under load, cancellation, restarts and shutdown.

Concurrency differs between the flavours (threads vs tasks), so these tests
are written for each one rather than generated.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from pgfast import _pool_async
from pgfast._exceptions import PoolClosedError
from pgfast._factories import create_async_pool, create_pool
from pgfast._sql import sql
from pgfast._transaction_async import AsyncTransaction
from pgfast.testing import LocalCluster


@pytest.fixture(scope="module")
def restartable() -> Iterator[LocalCluster]:
    """A server of our own: restarting the session's one would disturb other tests."""
    with LocalCluster() as cluster:
        yield cluster


def test_sync_pool_survives_server_restart(restartable: LocalCluster) -> None:
    with create_pool(restartable.primary_url, pool_size=4) as db:
        barrier = threading.Barrier(4)

        def hold() -> None:
            def wait(conn: Any) -> None:
                barrier.wait()  # four connections open at once

            db.task(wait)

        threads = [threading.Thread(target=hold) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert db.stats()["size"] == 4
        restartable.restart_primary()
        for i in range(20):
            assert db.query_value(sql("SELECT {}::int", i)) == i
        assert db.tx(lambda tx: tx.query_value(sql("SELECT 1"))) == 1


async def test_async_pool_survives_server_restart(restartable: LocalCluster) -> None:
    async with create_async_pool(restartable.primary_url, pool_size=4) as db:
        await asyncio.gather(*(db.query(sql("SELECT pg_sleep(0.05)")) for _ in range(4)))
        assert db.stats()["size"] == 4
        await asyncio.to_thread(restartable.restart_primary)
        queries = [db.query_value(sql("SELECT {}::int", i)) for i in range(20)]
        results = await asyncio.gather(*queries)
        assert results == list(range(20))
        for i in range(5):  # and sequentially, on each kind of connection
            assert await db.query_value(sql("SELECT {}::int", i)) == i


async def test_cancelling_tasks_cancels_queries_on_the_server(pg_url: str) -> None:
    app = "pgfast-cancel-test"
    async with create_async_pool(pg_url, pool_size=3, application_name=app) as db:
        for i in range(100):
            if i % 2:
                task = asyncio.create_task(db.query(sql("SELECT pg_sleep(30)")))
            else:
                task = asyncio.create_task(db.tx(lambda tx: tx.query(sql("SELECT pg_sleep(30)"))))
            await asyncio.sleep(0.005 if i % 3 else 0.03)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        stats = db.stats()
        assert stats["in_use"] == 0 and stats["idle"] == stats["size"]
        active = await db.query_value(
            sql(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = {} "
                "AND pid <> pg_backend_pid() AND state <> 'idle'",
                app,
            )
        )
        assert active == 0
        assert await db.query_value(sql("SELECT 1")) == 1


async def test_cancelled_query_stops_on_the_server_promptly(pg_url: str) -> None:
    async with create_async_pool(pg_url, pool_size=1) as db:
        pid = await db.query_value(sql("SELECT pg_backend_pid()"))
        task = asyncio.create_task(db.query(sql("SELECT pg_sleep(30)")))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 5
        # The same connection comes back clean, and nothing sleeps on the server.
        assert await db.query_value(sql("SELECT pg_backend_pid()")) == pid
        sleeping = sql(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND query LIKE 'SELECT pg_sleep(30)%'"
        )
        assert await db.query_value(sleeping) == 0


# Churn: connections replaced and swept while the threads/tasks run.
CHURN = [{}, {"idle_timeout": 0.05, "max_uses": 50}]


@pytest.mark.parametrize("options", CHURN, ids=["steady", "churn"])
def test_many_threads_on_a_sync_pool(pg_url: str, options: dict[str, Any]) -> None:
    errors: list[BaseException] = []
    seen: list[list[int]] = [[] for _ in range(50)]
    with create_pool(pg_url, pool_size=10, **options) as db:

        def worker(n: int) -> None:
            try:
                for i in range(200):
                    seen[n].append(db.query_value(sql("SELECT {}::int * 1000 + {}", n, i)))
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert seen == [[n * 1000 + i for i in range(200)] for n in range(50)]
        stats = db.stats()
        assert stats["queries"] == 10000 and stats["in_use"] == 0 and stats["size"] <= 10


@pytest.mark.parametrize("options", CHURN, ids=["steady", "churn"])
async def test_many_tasks_on_an_async_pool(pg_url: str, options: dict[str, Any]) -> None:
    async with create_async_pool(pg_url, pool_size=10, **options) as db:

        async def one(i: int) -> Any:
            return await db.query(sql("SELECT {}::int AS i, {}::text AS s", i, str(i)))

        results = await asyncio.gather(*(one(i) for i in range(500)), return_exceptions=True)
        assert results == [[{"i": i, "s": str(i)}] for i in range(500)]
        stats = db.stats()
        assert stats["queries"] == 500 and stats["in_use"] == 0 and stats["size"] <= 10


async def test_real_serialization_failures_are_retried(pg_url: str) -> None:
    async with create_async_pool(pg_url, pool_size=2) as db:
        await db.execute(sql("CREATE TABLE IF NOT EXISTS pgfast_ser (n int)"))
        await db.execute(sql("TRUNCATE pgfast_ser"))
        both_read = asyncio.Barrier(2) if hasattr(asyncio, "Barrier") else None
        attempts = [0, 0]

        async def add(tx: AsyncTransaction, who: int) -> None:
            attempts[who] += 1
            total = await tx.query_value(sql("SELECT coalesce(sum(n), 0) FROM pgfast_ser"))
            if both_read is not None and attempts[who] == 1:
                await both_read.wait()
            else:
                await asyncio.sleep(0.05)
            await tx.execute(sql("INSERT INTO pgfast_ser VALUES ({})", total + 1))

        options: dict[str, Any] = {
            "isolation_level": "serializable",
            "retry_serialization_failures": True,
        }
        await asyncio.gather(*(db.tx(lambda tx, w=who: add(tx, w), **options) for who in (0, 1)))
        values = await db.query(sql("SELECT n FROM pgfast_ser ORDER BY n"))
        await db.execute(sql("DROP TABLE pgfast_ser"))
    assert values == [{"n": 1}, {"n": 2}]  # serial outcome
    assert sum(attempts) >= 3  # one of them was retried


async def test_dispose_lets_running_operations_finish(pg_url: str) -> None:
    db = create_async_pool(pg_url)
    running = asyncio.create_task(db.query_value(sql("SELECT pg_sleep(0.3)::text || 'done'")))
    await asyncio.sleep(0.1)
    await db.dispose()
    with pytest.raises(PoolClosedError):
        await db.query(sql("SELECT 1"))
    assert await running == "done"
    assert db.stats()["size"] == 0


def test_sync_dispose_lets_running_operations_finish(pg_url: str) -> None:
    db = create_pool(pg_url)
    result: list[Any] = []
    thread = threading.Thread(
        target=lambda: result.append(db.query_value(sql("SELECT pg_sleep(0.3)::text || 'ok'")))
    )
    thread.start()
    time.sleep(0.1)
    db.dispose()
    with pytest.raises(PoolClosedError):
        db.query(sql("SELECT 1"))
    thread.join()
    assert result == ["ok"]


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_forgotten_pool_does_not_block_exit(pg_url: str, flavour: str) -> None:
    script = {
        "sync": """
            import pgfast._factories as p, pgfast._sql as s, sys
            db = p.create_pool(sys.argv[1], min_size=2)
            print(db.query_value(s.sql("SELECT 40 + 2")))
        """,
        "async": """
            import asyncio, pgfast._factories as p, pgfast._sql as s, sys
            async def main():
                db = p.create_async_pool(sys.argv[1], min_size=2)
                print(await db.query_value(s.sql("SELECT 40 + 2")))
            asyncio.run(main())
        """,
    }[flavour]
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), pg_url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout.strip()) == (0, "42"), result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 10


def test_errors_on_idle_connections_reach_on_error(pg_url: str) -> None:
    errors: list[BaseException] = []
    with (
        create_pool(pg_url, pool_size=1, on_error=errors.append) as db,
        create_pool(pg_url) as admin,
    ):
        pid = db.query_value(sql("SELECT pg_backend_pid()"))
        admin.execute(sql("SELECT pg_terminate_backend({})", pid))
        time.sleep(1.2)
        assert db.query_value(sql("SELECT pg_backend_pid()")) != pid
    assert len(errors) == 1 and isinstance(errors[0], psycopg.OperationalError)


@pytest.fixture(scope="module")
def with_replica() -> Iterator[LocalCluster]:
    """A replica to stop and start: a server that dies and comes back."""
    with LocalCluster(replicas=1) as cluster:
        yield cluster


def _bad_port(url: str) -> str:
    u = urlsplit(url)
    return urlunsplit(u._replace(netloc=u.netloc.rsplit(":", 1)[0] + ":1"))


def test_server_death_fails_reads_promptly_then_recovers(with_replica: LocalCluster) -> None:
    url = with_replica.replica_urls[0]

    async def async_read(db: Any) -> Any:
        return await db.query_value(sql("SELECT 1"))

    loop = asyncio.new_event_loop()
    # Default queue_timeout (60 s): failed connection attempts are retried for
    # connect_timeout, then reach the callers.
    with create_pool(url, connect_timeout=2) as sync_db:
        async_db = create_async_pool(url, connect_timeout=2)
        assert sync_db.query_value(sql("SELECT 1")) == loop.run_until_complete(async_read(async_db))
        with_replica.stop_replica(0)
        for read in (
            lambda: sync_db.query_value(sql("SELECT 1")),
            lambda: loop.run_until_complete(async_read(async_db)),
        ):
            for _ in range(2):  # a connection found dead, then a pool with none
                started = time.monotonic()
                with pytest.raises(psycopg.OperationalError):
                    read()
                assert time.monotonic() - started < 5
        with_replica.start_replica(0)
        # psycopg_pool reconnects in the background (with backoff), for later callers.
        for read in (
            lambda: sync_db.query_value(sql("SELECT 1")),
            lambda: loop.run_until_complete(async_read(async_db)),
        ):
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert read() == 1
                    break
                except psycopg.OperationalError:
                    assert time.monotonic() < deadline
        loop.run_until_complete(async_db.dispose())
    loop.close()


def test_many_waiting_threads_get_the_connection_error(pg_url: str) -> None:
    attempts: list[BaseException] = []
    errors: list[BaseException] = []
    url = _bad_port(pg_url)
    with create_pool(url, pool_size=10, connect_timeout=2, on_error=attempts.append) as db:

        def worker() -> None:
            try:
                db.query(sql("SELECT 1"))
            except BaseException as exc:  # checked below
                errors.append(exc)

        started = time.monotonic()
        threads = [threading.Thread(target=worker) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert 1.5 < time.monotonic() - started < 5  # retried for connect_timeout, no longer
        assert db.stats()["waiting"] == 0
    assert len(errors) == 20
    assert all(isinstance(e, psycopg.OperationalError) for e in errors)
    assert len({id(e) for e in errors}) == 20  # each caller its own exception
    assert 1 <= len(attempts) <= 5  # one attempt at a time, not one per waiter


async def test_many_waiting_tasks_get_the_connection_error(pg_url: str) -> None:
    attempts: list[BaseException] = []
    url = _bad_port(pg_url)
    async with create_async_pool(url, connect_timeout=2, on_error=attempts.append) as db:
        started = time.monotonic()
        results = await asyncio.gather(
            *(db.query(sql("SELECT 1")) for _ in range(20)), return_exceptions=True
        )
        assert 1.5 < time.monotonic() - started < 5  # retried for connect_timeout, no longer
        assert db.stats()["waiting"] == 0
    assert all(isinstance(r, psycopg.OperationalError) for r in results)
    assert 1 <= len(attempts) <= 5


async def test_async_password_callable_is_awaited(pg_url: str) -> None:
    password = urlsplit(pg_url).password
    calls: list[int] = []

    async def token() -> str:
        calls.append(1)
        await asyncio.sleep(0)
        return password or ""

    async with create_async_pool(pg_url, password=token) as db:
        assert await db.query_value(sql("SELECT 1")) == 1
    assert calls == [1]


def test_sync_tx_and_task_refuse_async_functions(pg_url: str) -> None:
    async def body(tx: Any) -> None:
        tx.execute(sql("CREATE TABLE never_created_by_pgfast (id int)"))

    with create_pool(pg_url) as db:
        with pytest.raises(TypeError, match="async def"):
            db.tx(body)
        with pytest.raises(TypeError, match="async def"):
            db.task(body)
        with pytest.raises(TypeError, match="async def"):
            db.tx(lambda tx: tx.tx(body))
        assert db.stats()["in_use"] == 0
        assert db.query_value(sql("SELECT to_regclass('never_created_by_pgfast')")) is None


async def test_async_tx_and_task_refuse_plain_functions(pg_url: str) -> None:
    async with create_async_pool(pg_url) as db:
        with pytest.raises(TypeError, match="async function"):
            await db.tx(lambda tx: 1)  # type: ignore[arg-type,return-value]
        with pytest.raises(TypeError, match="async function"):
            await db.task(lambda conn: 1)  # type: ignore[arg-type,return-value]
        assert db.stats()["in_use"] == 0


async def test_cancelled_callers_leave_no_waiter_behind(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every hot connection counts as stale: acquiring goes through psycopg_pool
    # and its liveness check, where a cancellation may land.
    monkeypatch.setattr(_pool_async, "LIVENESS_CHECK_AFTER", 0.0)
    async with create_async_pool(pg_url, pool_size=1) as db:
        for steps in range(12):
            await db.query(sql("SELECT 1"))
            task = asyncio.create_task(db.query(sql("SELECT 1")))
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            stats = db.stats()
            assert (stats["waiting"], stats["in_use"]) == (0, 0), steps
        assert await db.query_value(sql("SELECT 2")) == 2
