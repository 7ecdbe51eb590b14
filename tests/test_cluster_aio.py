"""The async cluster on a real primary + 2 streaming replicas.

Asyncio-only scenarios (tasks, per-task context); the shared ones are in
test_cluster.py. Named ``_aio`` so tools/async_to_sync.py does not derive a sync copy.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from test_cluster import (  # noqa: F401  (table: a fixture)
    FAKE_URL,
    MISSPELT_BULK_OPTIONS,
    PROBE_BACKEND,
    Recorder,
    recorded_pools,
    server_pid,
    table,
)

import pgfast
from pgfast._cluster_async import AsyncCluster
from pgfast._cluster_common import create_cluster, parse_lsn
from pgfast._pool import create_async_pool
from pgfast._sql import sql
from pgfast.testing import LocalCluster


def make_cluster(pg_cluster: LocalCluster, rec: Recorder, **options: Any) -> AsyncCluster:
    pools = recorded_pools(pg_cluster, rec, create_async_pool)
    cluster = create_cluster(pools[0], pools[1:], **options)
    assert isinstance(cluster, AsyncCluster)
    return cluster


@pytest.fixture
def rec() -> Recorder:
    return Recorder(3)


@pytest.fixture
async def db(pg_cluster: LocalCluster, rec: Recorder) -> AsyncIterator[AsyncCluster]:
    async with make_cluster(pg_cluster, rec) as cluster:
        yield cluster


async def wait_until(what: str, check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.nodb
@pytest.mark.parametrize(("method", "args", "options"), MISSPELT_BULK_OPTIONS)
async def test_a_misspelt_bulk_option_is_rejected_as_by_a_pool(
    method: str, args: tuple[Any, ...], options: dict[str, Any]
) -> None:
    misspelt = next(name for name in options if name not in ("where_columns", "set_columns"))
    pool = create_async_pool(FAKE_URL)
    async with create_cluster(pool, [create_async_pool(FAKE_URL)]) as cluster:
        for db, owner in ((pool, "AsyncBulkMixin"), (cluster, "AsyncCluster")):
            message = rf"{owner}\.{method}\(\) got an unexpected keyword argument '{misspelt}'"
            with pytest.raises(TypeError, match=message):
                await getattr(db, method)("t", *args, **options)


async def test_routing(db: AsyncCluster, rec: Recorder, table: str) -> None:  # noqa: F811
    tag = "/* routing */ "
    assert await db.query(sql.unsafe(tag + f"SELECT count(*) AS n FROM {table}")) == [{"n": 10}]
    assert await db.query_value(sql.unsafe(tag + "SELECT 2")) == 2
    rows = [r async for r in db.query_stream(sql.unsafe(tag + f"SELECT id FROM {table}"), 4)]
    assert len(rows) == 10

    async def read(tx: Any) -> Any:
        return await tx.query_value(sql.unsafe(tag + "SELECT 3"))

    assert await db.tx(read, read_only=True) == 3
    async with db.transaction(read_only=True) as tx:
        assert await tx.query_value(sql.unsafe(tag + "SELECT 4")) == 4
    assert rec.counts(tag) == [0, 3, 2]

    write = "/* writes */ "
    await db.execute(sql.unsafe(write + f"UPDATE {table} SET note = 'a' WHERE id = 1"))
    await db.query(sql.unsafe(write + "SELECT * FROM pg_class LIMIT 1 FOR SHARE"))

    async def work(conn: Any) -> Any:
        return await conn.query(sql.unsafe(write + "SELECT 1"))

    await db.task(work)
    await db.tx(work)
    assert rec.counts(write) == [4, 0, 0]


async def test_bad_transaction_options_are_named_and_hold_nothing(db: AsyncCluster) -> None:
    async def read(tx: Any) -> Any:
        return await tx.query_value(sql("SELECT 1"))

    with pytest.raises(TypeError, match="unknown transaction option 'readonly'"):
        await db.tx(read, readonly=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unknown transaction option 'readonly'"):
        db.transaction(readonly=True)  # type: ignore[call-arg]
    # A bad value fails after a replica was picked: it must be released.
    for _ in range(3):
        with pytest.raises(ValueError, match="statement_timeout"):
            async with db.transaction(read_only=True, statement_timeout=-1):
                pass
        with pytest.raises(ValueError, match="statement_timeout"):
            await db.tx(read, read_only=True, statement_timeout=-1)
    assert [r["in_flight"] for r in db.stats()["replicas"]] == [0, 0]
    assert await db.tx(read, read_only=True) == 1


async def test_a_cancelled_replica_transaction_holds_no_in_flight_count(
    pg_cluster: LocalCluster,
) -> None:
    urls = [pg_cluster.primary_url, *pg_cluster.replica_urls]
    pools = [create_async_pool(u, pool_size=1) for u in urls]
    async with create_cluster(pools[0], pools[1:], balance="least_busy") as db:

        async def read() -> None:
            async with db.transaction(read_only=True) as tx:
                await tx.query_value(sql("SELECT 1"))

        async with pools[1].connection(), pools[2].connection():  # every replica busy
            task = asyncio.create_task(read())
            await wait_until(
                "a read waiting for a replica",
                lambda: sum(p.stats()["waiting"] for p in pools[1:]) == 1,
            )
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert [r["in_flight"] for r in db.stats()["replicas"]] == [0, 0]
        assert all(r["up"] for r in db.stats()["replicas"])


async def test_first_reads_wait_for_lag_to_be_measured_without_a_fallback(
    pg_cluster: LocalCluster, rec: Recorder
) -> None:
    first = sql.unsafe("/* first */ SELECT 1")
    async with make_cluster(pg_cluster, rec, max_replica_lag=5, fallback_to_primary=False) as db:
        assert await asyncio.gather(*(db.query_value(first) for _ in range(10))) == [1] * 10
    assert rec.counts("/* first */")[0] == 0
    assert sum(rec.counts("/* first */")) == 10


async def test_a_write_refused_by_a_replica_runs_on_the_primary(
    pg_cluster: LocalCluster,
    db: AsyncCluster,
    rec: Recorder,
    table: str,  # noqa: F811
) -> None:
    function = f"{table}_add"
    with psycopg.connect(pg_cluster.primary_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE FUNCTION {function}() RETURNS int LANGUAGE sql "
            f"AS $$ INSERT INTO {table} VALUES (77, 'fn') RETURNING id $$"
        )
    pg_cluster.wait_for_replicas()
    assert await db.query_value(sql.unsafe(f"SELECT {function}()")) == 77
    assert rec.counts(f"{function}(")[0] == 1
    assert rec.errors[1] + rec.errors[2] == ["25006"]
    with psycopg.connect(pg_cluster.primary_url, autocommit=True) as conn:
        conn.execute(f"DROP FUNCTION {function}")


async def test_reads_only_the_primary_can_serve(
    pg_cluster: LocalCluster,
    db: AsyncCluster,
    rec: Recorder,
    table: str,  # noqa: F811
) -> None:
    """Read-only SERIALIZABLE transactions and reads of unlogged tables (0A000 on a standby)."""
    level = sql.unsafe("/* level */ SELECT current_setting('transaction_isolation')")

    async def read_level(tx: Any) -> Any:
        return await tx.query_value(level)

    assert await db.tx(read_level, read_only=True, isolation_level="serializable") == "serializable"
    async with db.transaction(read_only=True, isolation_level="SERIALIZABLE") as tx:
        assert await tx.query_value(level) == "serializable"
    assert rec.counts("/* level */") == [2, 0, 0]

    unlogged = f"{table}_unlogged"
    with psycopg.connect(pg_cluster.primary_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE UNLOGGED TABLE {unlogged} AS SELECT g AS id FROM generate_series(1, 3) g"
        )
    pg_cluster.wait_for_replicas()
    try:
        q = sql.unsafe(f"/* unlogged */ SELECT id FROM {unlogged} ORDER BY id")
        assert await db.query(q) == [{"id": 1}, {"id": 2}, {"id": 3}]
        assert [r["id"] async for r in db.query_stream(q, 2)] == [1, 2, 3]
        assert rec.counts("/* unlogged */")[0] == 2
        assert set(rec.errors[1] + rec.errors[2]) == {"0A000"}

        async def read(tx: Any) -> Any:
            return await tx.query(q)

        with pytest.raises(psycopg.errors.FeatureNotSupported):  # the function had started
            await db.tx(read, read_only=True)
        assert rec.counts("/* unlogged */")[0] == 2
        assert all(r["up"] for r in db.stats()["replicas"])
    finally:
        with psycopg.connect(pg_cluster.primary_url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {unlogged}")


async def test_resource_errors_do_not_take_a_replica_out(db: AsyncCluster, rec: Recorder) -> None:
    huge = sql("/* huge */ SELECT array_fill(1, ARRAY[{}::int])", 2_000_000_000)
    with pytest.raises(psycopg.errors.ProgramLimitExceeded):
        await db.query(huge)
    assert rec.counts("/* huge */") == [0, 1, 0]
    assert all(r["up"] for r in db.stats()["replicas"])


async def test_stopped_replica_fails_none_of_50_tasks(
    pg_cluster: LocalCluster, rec: Recorder
) -> None:
    failures: list[BaseException] = []
    reads = [0]
    stop = asyncio.Event()
    async with make_cluster(pg_cluster, rec, health_check_interval=0.2) as db:

        async def reader() -> None:
            while not stop.is_set():
                try:
                    assert await db.query_value(sql("/* load */ SELECT {}::int", 1)) == 1
                    reads[0] += 1
                except Exception as exc:
                    failures.append(exc)

        tasks = [asyncio.create_task(reader()) for _ in range(50)]
        try:
            await wait_until("reads on both", lambda: min(rec.counts("/* load */")[1:]) > 50)
            await asyncio.to_thread(pg_cluster.stop_replica, 0)
            await wait_until("replica 0 out", lambda: not db.stats()["replicas"][0]["up"])
            before = reads[0]
            await wait_until("reads going on", lambda: reads[0] > before + 300)
            on_stopped = rec.counts("/* load */")[1]
            await asyncio.to_thread(pg_cluster.start_replica, 0)
            await wait_until("replica 0 back", lambda: db.stats()["replicas"][0]["up"])
            await wait_until(
                "reads on replica 0 again", lambda: rec.counts("/* load */")[1] > on_stopped + 50
            )
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await asyncio.to_thread(pg_cluster.start_replica, 0)
        assert failures == []
        health = db._health._worker
        assert health is not None and not health.done()
    assert health.done()  # dispose stopped the health task
    with pytest.raises(pgfast.PoolClosedError):
        await db.query(sql("SELECT 1"))


async def test_read_your_writes_per_task(
    pg_cluster: LocalCluster,
    rec: Recorder,
    table: str,  # noqa: F811
) -> None:
    async with make_cluster(pg_cluster, rec, read_your_writes=True) as db:
        q = sql.unsafe(f"/* mine */ SELECT note FROM {table} WHERE id = 900")
        await asyncio.to_thread(pg_cluster.pause_replay, 0)
        await asyncio.to_thread(pg_cluster.pause_replay, 1)
        try:

            async def writer() -> tuple[Any, str | None]:
                await db.execute(sql.unsafe(f"INSERT INTO {table} VALUES (900, 'mine')"))
                return await db.query(q), db.write_token()

            rows, token = await asyncio.create_task(writer())
            assert rows == [{"note": "mine"}]
            assert rec.counts("/* mine */") == [1, 0, 0]
            # This task did not write: its reads may be stale, until it applies the token.
            assert db.write_token() is None
            assert await db.query(q) == []
            assert token is not None
            with db.read_after(token):
                assert await db.query(q) == [{"note": "mine"}]
            assert rec.counts("/* mine */")[0] == 2
        finally:
            await asyncio.to_thread(pg_cluster.resume_replay, 0)
            await asyncio.to_thread(pg_cluster.resume_replay, 1)


async def test_a_stopped_probe_backend_hangs_neither_dispose_nor_the_other_probes(
    pg_cluster: LocalCluster,
    rec: Recorder,
    table: str,  # noqa: F811
) -> None:
    db = make_cluster(pg_cluster, rec, health_check_interval=0.2)
    stopped: int | None = None
    try:
        await db.query(sql("SELECT 1"))  # starts the health checks
        await wait_until("lag measured", lambda: all(r["lag"] == 0 for r in db.stats()["replicas"]))
        stopped = await asyncio.to_thread(server_pid, pg_cluster.replica_urls[0], PROBE_BACKEND)
        os.kill(stopped, signal.SIGSTOP)
        await wait_until("replica 0 out", lambda: not db.stats()["replicas"][0]["up"], timeout=10)
        # Replica 1 is probed on its own schedule: its replay position follows a write.
        await db.execute(sql.unsafe(f"UPDATE {table} SET note = 'probe' WHERE id = 3"))
        written = await db.primary.query_value(sql("SELECT pg_current_wal_lsn()::text"))
        await wait_until(
            "replica 1 probed",
            lambda: parse_lsn(db.stats()["replicas"][1]["replay_lsn"]) >= parse_lsn(written),
            timeout=10,
        )
        started = time.monotonic()
        await asyncio.wait_for(db.dispose(), 5)
        assert time.monotonic() - started < 5
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        await db.dispose()


async def test_async_password_callables_serve_queries_and_health_probes(
    pg_cluster: LocalCluster,
) -> None:
    calls = 0

    async def token(password: str) -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return password

    def pool(url: str) -> pgfast.AsyncConnectionPool:
        parts = urlsplit(url)
        assert parts.password is not None
        bare = urlunsplit(parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}"))
        return create_async_pool(bare, password=lambda: token(parts.password or ""))

    primary, *replicas = [pool(u) for u in (pg_cluster.primary_url, *pg_cluster.replica_urls)]
    async with create_cluster(primary, replicas, health_check_interval=0.1) as db:
        assert await db.query_value(sql("SELECT 1")) == 1
        await asyncio.sleep(0.5)  # several health rounds, each probe connecting with the token
        assert all(r["up"] for r in db.stats()["replicas"])
        assert await db.query_value(sql("SELECT 2")) == 2
    assert calls >= 3
