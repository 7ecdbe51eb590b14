"""The cluster on a real primary + 2 streaming replicas.

This file is the source of ``test_cluster_sync.py`` (``tools/async_to_sync.py``),
so the sync and async clusters pass the same tests; the routing state without a
cluster object is tested in test_cluster.py. Routing is observed through each
pool's ``on_query_start`` hook. Tests that stop or pause a server of the shared
``pg_cluster`` put it back in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import signal
import tracemalloc
import uuid
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg.errors import FeatureNotSupported

import pgfast
from pgfast import _cluster_async
from pgfast._bulk_async import AsyncBulkMixin
from pgfast._cluster_async import AsyncCluster
from pgfast._cluster_common import ClusterState, create_cluster, is_read_only, parse_lsn
from pgfast._factories import create_async_pool
from pgfast._sql import sql
from pgfast._transaction_async import AsyncTransaction
from pgfast.testing import LocalCluster
from tests._cluster import (
    FAKE_URL,
    PROBE_BACKEND,
    WAL_RECEIVER,
    Recorder,
    alive_async,
    dispose_within_async,
    recorded_pools,
    server_pid,
    wait_until_async,
)
from tests._concurrent import call_blocking_async, each_async

nodb = pytest.mark.nodb


def make_cluster(pg_cluster: LocalCluster, rec: Recorder, **options: Any) -> AsyncCluster:
    pools = recorded_pools(pg_cluster, rec, create_async_pool)
    cluster = create_cluster(pools[0], pools[1:], **options)
    assert isinstance(cluster, AsyncCluster)
    return cluster


@pytest.fixture
def rec() -> Recorder:
    return Recorder(3)


@pytest.fixture
def table(pg_cluster: LocalCluster) -> Iterator[str]:
    name = f"cluster_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.primary_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, note text)")
        conn.execute(f"INSERT INTO {name} SELECT g, 'seed' FROM generate_series(1, 10) g")
    pg_cluster.wait_for_replicas()
    yield name
    with psycopg.connect(pg_cluster.primary_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {name}")


@pytest.fixture
async def db(pg_cluster: LocalCluster, rec: Recorder) -> AsyncIterator[AsyncCluster]:
    async with make_cluster(pg_cluster, rec) as cluster:
        yield cluster


# -- no server needed ----------------------------------------------------------


@nodb
async def test_create_cluster_checks_its_arguments() -> None:
    pools = [create_async_pool(FAKE_URL) for _ in range(2)]
    with pytest.raises(ValueError, match="at least one replica"):
        create_cluster(pools[0], [])
    with pytest.raises(TypeError, match="replicas must be a list"):
        create_cluster(pools[0], pools[1])  # type: ignore[arg-type]
    # The selector tracks 64 nodes, the primary included.
    with pytest.raises(ValueError, match="at most 63 replicas, got 64"):
        create_cluster(pools[0], [pools[1]] * 64)
    with pytest.raises(ValueError, match="balance must be one of"):
        create_cluster(pools[0], pools[1:], balance="fastest")  # type: ignore[call-overload]
    for bad in (0, -1, "1", True):
        with pytest.raises(ValueError, match="max_replica_lag"):
            create_cluster(pools[0], pools[1:], max_replica_lag=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="health_check_interval"):
        create_cluster(pools[0], pools[1:], health_check_interval=0)
    for wrong in (0, -1.5, "30", None, True):
        with pytest.raises(ValueError, match="failover_timeout must be a number of seconds"):
            create_cluster(pools[0], pools[1:], failover_timeout=wrong)  # type: ignore[arg-type]
    async with create_cluster(pools[0], pools[1:]) as cluster:
        assert isinstance(cluster, AsyncCluster)
        assert cluster.primary is pools[0]
        assert cluster.replicas == pools[1:]
        with pytest.raises(TypeError, match=r"build queries with pgfast\.sql"):
            await cluster.query("SELECT 1")  # type: ignore[arg-type]
    with pytest.raises(pgfast.PoolClosedError):
        await cluster.query(sql("SELECT 1"))


@nodb
async def test_read_after_rejects_bad_tokens() -> None:
    pools = [create_async_pool(FAKE_URL), create_async_pool(FAKE_URL)]
    async with create_cluster(pools[0], pools[1:]) as cluster:
        assert cluster.write_token() is None
        with pytest.raises(ValueError, match="invalid write token"), cluster.read_after("nope"):
            pass
        with cluster.read_after("A/10"):
            assert cluster.write_token() == "A/10"
            with cluster.read_after("1/0"):  # an older token never rewinds the position
                assert cluster.write_token() == "A/10"
        assert cluster.write_token() is None


MISSPELT_BULK_OPTIONS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("bulk_insert", ([{"id": 1}],), {"column": ["id"]}),
    ("bulk_update", ([],), {"where_columns": ["id"], "set_columns": ["v"], "returnin": ["id"]}),
    ("bulk_delete", ([{"id": 1}],), {"where_column": ["id"]}),
    ("bulk_select", ([{"id": 1}],), {"where_columns": ["id"], "order": ["id"]}),
    ("copy_in", ([(1,)],), {"colums": ["id"]}),
]


@nodb
@pytest.mark.parametrize(("method", "args", "options"), MISSPELT_BULK_OPTIONS)
async def test_a_misspelt_bulk_option_is_rejected_as_by_a_pool(
    method: str, args: tuple[Any, ...], options: dict[str, Any]
) -> None:
    misspelt = next(name for name in options if name not in ("where_columns", "set_columns"))
    pool = create_async_pool(FAKE_URL)
    async with create_cluster(pool, [create_async_pool(FAKE_URL)]) as cluster:
        for db, owner in ((pool, AsyncBulkMixin), (cluster, AsyncCluster)):
            # Raised by the call itself: nothing is routed, no connection is asked for.
            message = rf"{owner.__name__}\.{method}\(\) got an unexpected keyword argument "
            with pytest.raises(TypeError, match=f"{message}'{misspelt}'"):
                await getattr(db, method)("t", *args, **options)


@nodb
async def test_many_clusters_leave_nothing_behind() -> None:
    async def churn(count: int) -> list[weakref.ref[ClusterState]]:
        refs = []
        for _ in range(count):
            cluster = create_cluster(create_async_pool(FAKE_URL), [create_async_pool(FAKE_URL)])
            cluster._state.wrote("1/0")  # what a write with read_your_writes records
            with cluster.read_after("2/0"):
                assert cluster.write_token() == "2/0"
            assert cluster.write_token() == "1/0"
            refs.append(weakref.ref(cluster._state))
            await cluster.dispose()
        return refs

    await churn(10)
    gc.collect()
    variables = len(contextvars.copy_context())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        refs = await churn(1000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(contextvars.copy_context()) <= variables + 1
    assert all(ref() is None for ref in refs)
    assert grown < 200_000, grown


# -- routing -------------------------------------------------------------------


async def test_routing(db: AsyncCluster, rec: Recorder, table: str) -> None:
    tag = "/* routing */ "
    assert await db.query(sql.unsafe(tag + f"SELECT count(*) AS n FROM {table}")) == [{"n": 10}]
    one = sql.unsafe(tag + f"SELECT id FROM {table} WHERE id = 1")
    assert await db.query_one(one) == {"id": 1}
    assert await db.query_value(sql.unsafe(tag + f"SELECT max(id) FROM {table}")) == 10
    stream = db.query_stream(sql.unsafe(tag + f"SELECT id FROM {table}"), 3)
    assert [r["id"] async for r in stream] == [*range(1, 11)]
    both = [sql.unsafe(tag + "SELECT 1 AS a"), sql.unsafe(tag + "SELECT 2 AS a")]
    assert await db.query(both) == [[{"a": 1}], [{"a": 2}]]
    assert await db.tx(lambda tx: tx.query_value(sql.unsafe(tag + "SELECT 3")), read_only=True) == 3
    async with db.transaction(read_only=True) as tx:
        assert await tx.query_value(sql.unsafe(tag + "SELECT 4")) == 4
    # Round robin from replica 0, one turn per read (the list's two statements are one).
    assert rec.counts(tag) == [0, 5, 3]

    write = "/* writes */ "
    await db.execute(sql.unsafe(write + f"UPDATE {table} SET note = 'x' WHERE id = 1"))
    await db.query(sql.unsafe(write + f"INSERT INTO {table} VALUES (11, 'q') RETURNING id"))
    await db.query(
        [sql.unsafe(write + "SELECT 1"), sql.unsafe(write + f"DELETE FROM {table} WHERE id = 11")]
    )
    # execute always goes to the primary
    assert await db.execute(sql.unsafe(write + "SELECT 1")) == 1
    await db.tx(lambda tx: tx.query(sql.unsafe(write + "SELECT 5")))
    async with db.transaction() as tx:
        await tx.query(sql.unsafe(write + "SELECT 6"))
    await db.task(lambda conn: conn.query(sql.unsafe(write + "SELECT 7")))
    async with db.connection() as conn:
        await conn.query(sql.unsafe(write + "SELECT 8"))
    assert [r async for r in db.query_stream(sql.unsafe(write + "SELECT txid_current()"))]
    assert rec.counts(write)[1:] == [0, 0]
    assert rec.counts(write)[0] == 10

    stats = db.stats()
    assert stats["primary"]["routed"] == 9
    assert sum(r["routed"] for r in stats["replicas"]) == 7
    assert all(r["up"] and r["in_flight"] == 0 for r in stats["replicas"])
    assert stats["primary"]["queries"] >= 10  # the pool's own stats are included


async def test_round_robin_spreads_reads_evenly(db: AsyncCluster, rec: Recorder) -> None:
    for i in range(1000):
        await db.query(sql("/* spread */ SELECT {}::int", i))
    assert rec.counts("/* spread */") == [0, 500, 500]


async def test_bad_transaction_options_are_named_and_hold_nothing(db: AsyncCluster) -> None:
    async def read(tx: AsyncTransaction) -> Any:
        return await tx.query_value(sql("SELECT 1"))

    with pytest.raises(TypeError, match="unknown transaction option 'readonly'"):
        await db.tx(read, readonly=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unknown transaction option 'readonly'"):
        db.transaction(readonly=True)  # type: ignore[call-arg]
    # A bad value fails after a replica was picked: it must be released.
    bad: dict[str, Any] = {"read_only": True, "statement_timeout": -1}
    for _ in range(3):
        with pytest.raises(ValueError, match="statement_timeout"):
            async with db.transaction(**bad):
                pass
        with pytest.raises(ValueError, match="statement_timeout"):
            await db.tx(read, **bad)
    assert [r["in_flight"] for r in db.stats()["replicas"]] == [0, 0]
    assert await db.tx(read, read_only=True) == 1


# begin async-only
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
            await wait_until_async(
                "a read waiting for a replica",
                lambda: sum(p.stats()["waiting"] for p in pools[1:]) == 1,
            )
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert [r["in_flight"] for r in db.stats()["replicas"]] == [0, 0]
        assert all(r["up"] for r in db.stats()["replicas"])


# end async-only


async def test_query_errors_do_not_take_a_replica_out(db: AsyncCluster, rec: Recorder) -> None:
    for _ in range(4):
        with pytest.raises(psycopg.errors.SyntaxError):
            await db.query(sql("/* bad */ SELECT FROM WHERE"))
    assert rec.counts("/* bad */") == [0, 2, 2]  # not retried anywhere
    assert all(r["up"] for r in db.stats()["replicas"])


async def test_resource_and_limit_errors_do_not_take_a_replica_out(
    db: AsyncCluster, rec: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    # SQLSTATE 54000, an OperationalError to psycopg: the query's fault, not the node's.
    huge = sql("/* huge */ SELECT array_fill(1, ARRAY[{}::int])", 2_000_000_000)
    for turn in range(2):
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            await db.query(huge)
        assert rec.counts("/* huge */") == [0, 1, turn]  # raised, not re-run elsewhere
    assert all(r["up"] for r in db.stats()["replicas"])
    assert "left rotation" not in caplog.text


async def test_functions_running_sql_text_never_reach_a_replica(
    pg_cluster: LocalCluster, db: AsyncCluster, rec: Recorder
) -> None:
    # A standby runs these (advisory locks and set_config work there): the
    # classifier alone keeps them on the primary.
    app = f"evil_{uuid.uuid4().hex[:8]}"
    for text in (
        "SELECT query_to_xml('select pg_advisory_lock(42)', true, true, '')",
        "SELECT * FROM ts_stat('select to_tsvector(pg_advisory_lock(43)::text)')",
        f"SELECT query_to_xml('select set_config(''application_name'', ''{app}'', false)', "
        "true, true, '')",
    ):
        await db.query(sql.unsafe("/* sql text */ " + text))
    assert rec.counts("/* sql text */") == [3, 0, 0]
    for url in pg_cluster.replica_urls:
        with psycopg.connect(url, autocommit=True) as conn:
            locks = (
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid IN (42, 43)"
            )
            assert conn.execute(locks).fetchone() == (0,)
            apps = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            assert conn.execute(apps, [app]).fetchone() == (0,)


async def test_read_only_serializable_transactions_run_on_the_primary(
    db: AsyncCluster, rec: Recorder
) -> None:
    level = sql.unsafe("/* level */ SELECT current_setting('transaction_isolation')")
    serializable = await db.tx(
        lambda tx: tx.query_value(level), read_only=True, isolation_level="serializable"
    )
    assert serializable == "serializable"
    async with db.transaction(
        read_only=True, isolation_level=pgfast.IsolationLevel.SERIALIZABLE, deferrable=True
    ) as tx:
        assert await tx.query_value(level) == "serializable"
    async with db.transaction(read_only=True, isolation_level="SERIALIZABLE") as tx:
        assert await tx.query_value(level) == "serializable"
    assert rec.counts("/* level */") == [3, 0, 0]
    # Other read-only levels still run on replicas.
    value = await db.tx(
        lambda tx: tx.query_value(level), read_only=True, isolation_level="repeatable read"
    )
    assert value == "repeatable read"
    assert rec.counts("/* level */")[0] == 3
    assert rec.errors == [[], [], []]


async def test_a_transaction_refused_before_it_starts_runs_on_the_primary(
    db: AsyncCluster, rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Were SERIALIZABLE routed to a replica, its BEGIN would fail there (0A000)
    # before the function starts: the primary then runs the transaction.
    monkeypatch.setattr(_cluster_async, "_replica_tx", lambda opts: bool(opts.get("read_only")))
    level = sql.unsafe("/* begin */ SELECT current_setting('transaction_isolation')")
    options: dict[str, Any] = {"read_only": True, "isolation_level": "serializable"}
    assert await db.tx(lambda tx: tx.query_value(level), **options) == "serializable"
    async with db.transaction(**options) as tx:
        assert await tx.query_value(level) == "serializable"
    assert rec.counts("/* begin */") == [2, 0, 0]
    assert all(r["up"] for r in db.stats()["replicas"])


async def test_reads_of_unlogged_tables_run_on_the_primary(
    pg_cluster: LocalCluster, db: AsyncCluster, rec: Recorder, table: str
) -> None:
    unlogged = f"{table}_unlogged"
    with psycopg.connect(pg_cluster.primary_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE UNLOGGED TABLE {unlogged} AS SELECT g AS id FROM generate_series(1, 5) g"
        )
    pg_cluster.wait_for_replicas()
    try:
        q = sql.unsafe(f"/* unlogged */ SELECT count(*) FROM {unlogged}")
        assert await db.query_value(q) == 5
        assert await db.query([q, q]) == [[{"count": 5}], [{"count": 5}]]
        ids = sql.unsafe(f"/* unlogged */ SELECT id FROM {unlogged} ORDER BY id")
        assert await db.query(ids) == [{"id": i} for i in range(1, 6)]
        assert [r["id"] async for r in db.query_stream(ids, 2)] == [1, 2, 3, 4, 5]
        served = rec.counts("/* unlogged */")
        # Every read was refused by a replica first.
        assert served[0] == 5 and served[1] + served[2] >= 4
        assert set(rec.errors[1] + rec.errors[2]) == {"0A000"}
        assert all(r["up"] for r in db.stats()["replicas"])
        # Once the function has started on the replica, its error is raised.
        with pytest.raises(FeatureNotSupported):
            await db.tx(lambda tx: tx.query_value(q), read_only=True)
        with pytest.raises(FeatureNotSupported):
            async with db.transaction(read_only=True) as tx:
                await tx.query_value(q)
        assert rec.counts("/* unlogged */")[0] == 5
        assert all(r["up"] for r in db.stats()["replicas"])
    finally:
        with psycopg.connect(pg_cluster.primary_url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {unlogged}")


async def test_a_write_refused_by_a_replica_runs_on_the_primary(
    pg_cluster: LocalCluster, db: AsyncCluster, rec: Recorder, table: str
) -> None:
    function = f"{table}_add"
    with psycopg.connect(pg_cluster.primary_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE FUNCTION {function}(i int) RETURNS int LANGUAGE sql "
            f"AS $$ INSERT INTO {table} VALUES (i, 'fn') RETURNING id $$"
        )
    pg_cluster.wait_for_replicas()
    q = sql.unsafe(f"SELECT {function}(") + sql("{})", 42)
    assert is_read_only(q)  # a user function: the classifier cannot know
    assert await db.query_value(q) == 42
    sent = rec.counts(f"{function}(")
    assert sent[0] == 1 and sent[1] + sent[2] == 1
    assert rec.errors[1] + rec.errors[2] == ["25006"]
    written = sql.unsafe(f"SELECT count(*) FROM {table} WHERE note = 'fn'")
    assert await db.primary.query_value(written) == 1
    with psycopg.connect(pg_cluster.primary_url, autocommit=True) as conn:
        conn.execute(f"DROP FUNCTION {function}")


WRITES = [
    "INSERT INTO {t} VALUES (100, 'w')",
    "UPDATE {t} SET note = 'u' WHERE id = 100",
    "WITH d AS (DELETE FROM {t} WHERE id = 100 RETURNING id) SELECT count(*) FROM d",
    "SELECT * FROM {t} WHERE id = 1 FOR UPDATE",
    "SELECT * FROM {t} WHERE id = 1 FOR SHARE",
    "SELECT pg_advisory_lock(1), pg_advisory_unlock(1)",
    "SELECT id INTO TEMP {t}_copy FROM {t}",
    "CREATE TEMP TABLE {t}_tmp (a int)",
    "MERGE INTO {t} USING (VALUES (1)) v(id) ON {t}.id = v.id WHEN MATCHED THEN DO NOTHING",
    "DO $$ BEGIN PERFORM 1; END $$",
    "/* SELECT */ DELETE FROM {t} WHERE id = -1",
    "SELECT txid_current()",
]


async def test_writes_never_reach_a_replica(db: AsyncCluster, rec: Recorder, table: str) -> None:
    for template in WRITES:
        q = sql.unsafe(template.format(t=table))
        assert not is_read_only(q), template
        await db.query(q)
    async with db.connection() as conn:
        await conn.query(sql.unsafe("SELECT 1"))
    assert rec.texts[1] == rec.texts[2] == []
    assert rec.errors == [[], [], []]


async def test_bulk_writes_go_to_the_primary_and_bulk_select_to_a_replica(
    pg_cluster: LocalCluster, db: AsyncCluster, rec: Recorder, table: str
) -> None:
    records = [{"id": 100 + i, "note": f"bulk {i}"} for i in range(5)]
    await db.bulk_insert(table, records)
    await db.bulk_update(
        table,
        [{"where": {"id": 100}, "set": {"note": "changed"}}],
        where_columns=["id"],
        set_columns=["note"],
    )
    assert await db.copy_in(table, [(200, "copied")], columns=["id", "note"]) == 1
    assert await db.bulk_delete(table, [{"id": 104}], where_columns=["id"]) == 1
    count = sql.unsafe(f"SELECT count(*) FROM {table} WHERE id >= 100")
    assert await db.primary.query_value(count) == 5
    written = [sum(table in t for t in texts) for texts in rec.texts]
    assert written[0] >= 4 and written[1:] == [0, 0]  # COPY is not a hooked query

    pg_cluster.wait_for_replicas()
    rows = await db.bulk_select(
        table, [{"id": 100}, {"id": 101}, {"id": 200}], where_columns=["id"], order_by=["-id"]
    )
    assert [(r["id"], r["note"]) for r in rows] == [
        (200, "copied"),
        (101, "bulk 1"),
        (100, "changed"),
    ]
    after = [sum(table in t for t in texts) for texts in rec.texts]
    assert after[0] == written[0] and after[1] + after[2] >= 1  # the select ran on a replica


async def test_post_commit_error_of_a_replica_transaction_carries_its_result(
    db: AsyncCluster,
) -> None:
    async def work(tx: AsyncTransaction) -> Any:
        tx.add_post_commit_step(lambda: 1 / 0)
        return await tx.query_value(sql("SELECT 41 + 1"))

    with pytest.raises(pgfast.PostCommitError) as info:
        await db.tx(work, read_only=True)
    assert info.value.result == 42
    assert isinstance(info.value.__cause__, ZeroDivisionError)


# -- replica health --------------------------------------------------------------

# Readers at once while a replica stops (tasks, or threads).
READERS = 4
READERS = 50  # async-only


@pytest.mark.parametrize("stopped", [0, 1])
async def test_stopped_replica_fails_no_read_and_rejoins(
    pg_cluster: LocalCluster, rec: Recorder, stopped: int
) -> None:
    failures: list[BaseException] = []
    reads = [0]
    stop = asyncio.Event()
    load = sql("/* load */ SELECT {}::int", 1)
    node = stopped + 1  # the replicas' nodes follow the primary's
    async with make_cluster(pg_cluster, rec, health_check_interval=0.2) as db:

        async def reader() -> None:
            while not stop.is_set():
                try:
                    assert await db.query_value(load) == 1
                    reads[0] += 1
                except Exception as exc:
                    failures.append(exc)

        async def stop_and_start() -> None:
            try:
                await wait_until_async(
                    "reads on both replicas", lambda: min(rec.counts("/* load */")[1:]) > 50
                )
                await call_blocking_async(pg_cluster.stop_replica, stopped)
                await wait_until_async(
                    f"replica {stopped} out", lambda: not db.stats()["replicas"][stopped]["up"]
                )
                before = reads[0]
                await wait_until_async("reads going on", lambda: reads[0] > before + 300)
                on_stopped = rec.counts("/* load */")[node]
                await call_blocking_async(pg_cluster.start_replica, stopped)
                await wait_until_async(
                    f"replica {stopped} back", lambda: db.stats()["replicas"][stopped]["up"]
                )
                await wait_until_async(
                    f"reads on replica {stopped} again",
                    lambda: rec.counts("/* load */")[node] > on_stopped + 50,
                )
            finally:
                stop.set()

        try:
            await each_async(READERS + 1, lambda i: reader() if i else stop_and_start())
        finally:
            await call_blocking_async(pg_cluster.start_replica, stopped)
        assert failures == []
        assert db.stats()["replicas"][1 - stopped]["up"]
        health = db._health._worker
        assert health is not None and alive_async(health)
    assert not alive_async(health)  # dispose stopped the health checks
    with pytest.raises(pgfast.PoolClosedError):
        await db.query(sql("SELECT 1"))


async def test_all_replicas_down_falls_back_to_the_primary(rec: Recorder) -> None:
    with LocalCluster(replicas=1) as own:
        urls = [own.primary_url, *own.replica_urls]
        pools = [
            create_async_pool(u, on_query_start=rec.start_hook(n), queue_timeout=2)
            for n, u in enumerate(urls)
        ]
        async with create_cluster(pools[0], pools[1:], health_check_interval=0.2) as db:
            assert await db.query_value(sql("/* one */ SELECT 1")) == 1
            await call_blocking_async(own.stop_replica, 0)
            for _ in range(20):
                assert await db.query_value(sql("/* one */ SELECT 1")) == 1
            assert rec.counts("/* one */")[0] == 20
        pools = [create_async_pool(u, queue_timeout=2) for u in urls]
        strict = create_cluster(pools[0], pools[1:], fallback_to_primary=False)
        async with strict:
            with pytest.raises(pgfast.Error, match="fallback_to_primary is False"):
                await strict.query(sql("SELECT 1"))


# -- lag and read-your-writes ----------------------------------------------------------


async def test_lagging_replica_is_skipped(
    pg_cluster: LocalCluster, rec: Recorder, table: str
) -> None:
    async with make_cluster(pg_cluster, rec, max_replica_lag=0.5, health_check_interval=0.1) as db:
        # Until the health checks (started by the first operation) have measured
        # the lag, reads go to the primary.
        await db.query(sql.unsafe("/* unknown */ SELECT 1"))
        await wait_until_async(
            "lag measured", lambda: all(r["lag"] == 0 for r in db.stats()["replicas"])
        )
        pg_cluster.pause_replay(0)
        try:
            await db.execute(sql.unsafe(f"UPDATE {table} SET note = 'lag' WHERE id = 2"))
            await wait_until_async(
                "replica 0 behind", lambda: (db.stats()["replicas"][0]["lag"] or 0) > 0.5
            )
            for _ in range(50):
                await db.query(sql.unsafe("/* fresh */ SELECT 1"))
            assert rec.counts("/* fresh */") == [0, 0, 50]
            assert rec.counts("/* unknown */")[0] <= 1
        finally:
            pg_cluster.resume_replay(0)
        await wait_until_async("replica 0 caught up", lambda: db.stats()["replicas"][0]["lag"] == 0)
        for _ in range(10):
            await db.query(sql.unsafe("/* again */ SELECT 1"))
        assert rec.counts("/* again */") == [0, 5, 5]


async def test_first_reads_wait_for_lag_to_be_measured_without_a_fallback(
    pg_cluster: LocalCluster, rec: Recorder
) -> None:
    # Until the first health round no replica is known to be close enough; with
    # no fallback to the primary, reads wait for that round instead of failing.
    first = sql.unsafe("/* first */ SELECT 1")
    async with make_cluster(pg_cluster, rec, max_replica_lag=5, fallback_to_primary=False) as db:
        assert await each_async(10, lambda _: db.query_value(first)) == [1] * 10
    assert rec.counts("/* first */")[0] == 0
    assert sum(rec.counts("/* first */")) == 10


async def test_read_your_writes_with_replay_paused(
    pg_cluster: LocalCluster, rec: Recorder, table: str
) -> None:
    q = sql.unsafe(f"/* mine */ SELECT note FROM {table} WHERE id = 500")
    async with make_cluster(pg_cluster, rec, read_your_writes=True) as db:
        pg_cluster.pause_replay(0)
        pg_cluster.pause_replay(1)
        try:
            assert db.write_token() is None

            async def write(_: int) -> tuple[Any, str | None]:
                await db.execute(sql.unsafe(f"INSERT INTO {table} VALUES (500, 'mine')"))
                return await db.query(q), db.write_token()

            # Another worker writes: its reads see its write.
            [(rows, token)] = await each_async(1, write)
            assert rows == [{"note": "mine"}]
            assert rec.counts("/* mine */") == [1, 0, 0]
            assert token is not None and parse_lsn(token) > 0
            # This one has a context of its own, without the token: its reads go to
            # the replicas, stale, until it applies the token.
            assert db.write_token() is None
            assert await db.query(q) == []
            with db.read_after(token):
                assert await db.query(q) == [{"note": "mine"}]
            assert rec.counts("/* mine */")[0] == 2
            # The token carries the write to another cluster object (another process).
            rec2 = Recorder(3)
            async with make_cluster(pg_cluster, rec2) as db2:
                assert await db2.query(q) == []
                with db2.read_after(token):
                    assert await db2.query(q) == [{"note": "mine"}]
                assert rec2.counts("/* mine */")[0] == 1
        finally:
            pg_cluster.resume_replay(0)
            pg_cluster.resume_replay(1)
        pg_cluster.wait_for_replicas()
        # Once replayed, the replicas serve the token's reads again.
        before = sum(rec.counts("/* mine */")[1:])
        with db.read_after(token):
            for _ in range(4):
                assert await db.query(q) == [{"note": "mine"}]
        assert sum(rec.counts("/* mine */")[1:]) == before + 4
        assert rec.counts("/* mine */")[0] == 2


async def test_read_your_writes_after_transactions(
    pg_cluster: LocalCluster, rec: Recorder, table: str
) -> None:
    async with make_cluster(pg_cluster, rec, read_your_writes=True) as db:
        pg_cluster.pause_replay(0)
        pg_cluster.pause_replay(1)
        try:
            await db.tx(
                lambda tx: tx.execute(sql.unsafe(f"INSERT INTO {table} VALUES (600, 'tx')"))
            )
            first = db.write_token()
            assert first is not None
            async with db.transaction() as tx:
                await tx.execute(sql.unsafe(f"INSERT INTO {table} VALUES (601, 'block')"))
            second = db.write_token()
            assert second is not None and parse_lsn(second) > parse_lsn(first)
            rows = await db.tx(
                lambda tx: tx.query(
                    sql.unsafe(f"SELECT id FROM {table} WHERE id >= 600 ORDER BY id")
                ),
                read_only=True,
            )
            assert rows == [{"id": 600}, {"id": 601}]
        finally:
            pg_cluster.resume_replay(0)
            pg_cluster.resume_replay(1)


# -- bounded health probes, lag against the primary, credentials ----------------


async def test_a_stopped_probe_backend_hangs_neither_dispose_nor_the_other_probes(
    pg_cluster: LocalCluster, rec: Recorder, table: str
) -> None:
    db = make_cluster(pg_cluster, rec, health_check_interval=0.2)
    stopped: int | None = None
    try:
        await db.query(sql("SELECT 1"))  # starts the health checks
        await wait_until_async(
            "lag measured", lambda: all(r["lag"] == 0 for r in db.stats()["replicas"])
        )
        stopped = await call_blocking_async(server_pid, pg_cluster.replica_urls[0], PROBE_BACKEND)
        os.kill(stopped, signal.SIGSTOP)
        await wait_until_async(
            "replica 0 out", lambda: not db.stats()["replicas"][0]["up"], timeout=10
        )
        # Replica 1 is still probed: its replay position follows a new write.
        await db.execute(sql.unsafe(f"UPDATE {table} SET note = 'probe' WHERE id = 3"))
        written = await db.primary.query_value(sql("SELECT pg_current_wal_lsn()::text"))
        await wait_until_async(
            "replica 1 probed",
            lambda: parse_lsn(db.stats()["replicas"][1]["replay_lsn"]) >= parse_lsn(written),
            timeout=10,
        )
        assert db.stats()["replicas"][1]["up"]
        assert await dispose_within_async(db, 5) < 5
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        await db.dispose()


async def test_lag_is_measured_against_the_primary() -> None:
    rec = Recorder(2)
    with LocalCluster(replicas=1) as own:
        urls = [own.primary_url, *own.replica_urls]
        pools = [
            create_async_pool(u, on_query_start=rec.start_hook(n), connect_timeout=2)
            for n, u in enumerate(urls)
        ]
        async with create_cluster(
            pools[0], pools[1:], max_replica_lag=0.5, health_check_interval=0.1
        ) as db:
            with psycopg.connect(own.primary_url, autocommit=True) as conn:
                conn.execute("CREATE TABLE lagged (id int PRIMARY KEY)")
            own.wait_for_replicas()
            await db.query(sql("SELECT 1"))
            await wait_until_async("lag measured", lambda: db.stats()["replicas"][0]["lag"] == 0)
            # An idle primary: a replica that replayed everything is not behind.
            await asyncio.sleep(1.0)
            assert db.stats()["replicas"][0]["lag"] == 0
            assert await db.query_value(sql("/* idle */ SELECT count(*) FROM lagged")) == 0
            assert rec.counts("/* idle */") == [0, 1]

            # A stalled WAL receiver: the replica has replayed all it received.
            receiver = server_pid(own.replica_urls[0], WAL_RECEIVER)
            os.kill(receiver, signal.SIGSTOP)
            try:
                await db.execute(sql("INSERT INTO lagged VALUES (1)"))
                await wait_until_async(
                    "lag > 0.5", lambda: (db.stats()["replicas"][0]["lag"] or 0) > 0.5
                )
                for _ in range(5):
                    q = sql("/* stalled */ SELECT count(*) FROM lagged")
                    assert await db.query_value(q) == 1  # never the replica's stale 0
                assert rec.counts("/* stalled */") == [5, 0]
            finally:
                os.kill(receiver, signal.SIGCONT)
            await wait_until_async("caught up", lambda: db.stats()["replicas"][0]["lag"] == 0)

            # Paused replay.
            own.pause_replay(0)
            try:
                await db.execute(sql("INSERT INTO lagged VALUES (2)"))
                await wait_until_async(
                    "lag > 0.5", lambda: (db.stats()["replicas"][0]["lag"] or 0) > 0.5
                )
                paused = sql("/* paused */ SELECT count(*) FROM lagged")
                assert await db.query_value(paused) == 2
                assert rec.counts("/* paused */") == [1, 0]
            finally:
                own.resume_replay(0)
            await wait_until_async("caught up", lambda: db.stats()["replicas"][0]["lag"] == 0)
            resumed = sql("/* resumed */ SELECT count(*) FROM lagged")
            assert await db.query_value(resumed) == 2
            assert rec.counts("/* resumed */") == [0, 1]


async def test_password_callables_serve_queries_and_health_probes(
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
