"""Pools, querying, transactions and errors on a real server (docs/connecting.md,
querying.md, transactions.md, errors.md).

This file is the source of ``test_pool_sync.py`` (``tools/async_to_sync.py``),
so the sync and async pools pass the same tests.
"""

from __future__ import annotations

import asyncio
import logging
import string
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import datetime
from decimal import Decimal
from time import monotonic
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgfast._error_text import Sent
from pgfast._exceptions import Error, PoolClosedError, PoolTimeoutError, PostCommitError
from pgfast._factories import create_async_pool
from pgfast._pool_async import AsyncConnectionPool
from pgfast._pool_common import IsolationLevel
from pgfast._sql import SQLQuery, sql
from pgfast._transaction_async import AsyncTransaction


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[AsyncConnectionPool]:
    async with create_async_pool(pg_url, pool_size=4, queue_timeout=10) as pool:
        yield pool


@pytest.fixture
async def table(db: AsyncConnectionPool) -> AsyncIterator[Any]:
    name = sql.ident(f"t_{uuid.uuid4().hex[:12]}")
    await db.execute(sql("CREATE TABLE {} (id int PRIMARY KEY, v text)", name))
    yield name
    await db.execute(sql("DROP TABLE {}", name))


def _password(url: str) -> str:
    password = urlsplit(url).password
    assert password, "the test server URL must carry a password"
    return password


def _with(url: str, **parts: Any) -> str:
    u = urlsplit(url)
    netloc = f"{parts.get('user', u.username)}:{parts.get('password', u.password)}@"
    netloc += f"{u.hostname}:{parts.get('port', u.port)}"
    return urlunsplit((u.scheme, netloc, "/" + parts.get("dbname", u.path[1:]), u.query, ""))


async def _until_idle(db: AsyncConnectionPool) -> None:
    for _ in range(100):
        if db.stats()["in_use"] == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"connections still in use: {db.stats()}")


async def _backend_pid(q: Any) -> int:
    return int(await q.query_value(sql("SELECT pg_backend_pid()")))


# -- querying ------------------------------------------------------------------


async def test_rows_are_dicts_with_postgres_types(db: AsyncConnectionPool) -> None:
    rows = await db.query(
        sql(
            "SELECT {}::int8 AS i, {}::numeric AS n, {} AS j, now() AS ts, {} AS arr",
            2**40,
            "1.5",
            {"k": [1, "x"]},
            [1, 2, 3],
        )
    )
    assert len(rows) == 1
    row = rows[0]
    assert row["i"] == 2**40
    assert row["n"] == Decimal("1.5")
    assert row["j"] == {"k": [1, "x"]}
    assert isinstance(row["ts"], datetime) and row["ts"].tzinfo is not None
    assert row["arr"] == [1, 2, 3]
    assert await db.query_value(sql("SELECT pg_typeof({})::text", {"a": 1})) == "jsonb"


async def test_tuple_rows(pg_url: str) -> None:
    async with create_async_pool(pg_url, row_type="tuple") as db:
        assert await db.query(sql("SELECT 1 AS a, {}::text AS b", "x")) == [(1, "x")]
        async with aclosing(db.query_stream(sql("SELECT 1"))) as stream:
            assert [row async for row in stream] == [(1,)]


async def test_statement_without_rows_gives_empty_list(db: AsyncConnectionPool, table: Any) -> None:
    assert await db.query(sql("INSERT INTO {} VALUES (1, 'a')", table)) == []
    assert await db.query(sql("SELECT * FROM {} WHERE id = {}", table, 99)) == []


async def test_multi_statement_text_without_parameters(db: AsyncConnectionPool) -> None:
    assert await db.query(sql("SELECT 1 AS a; SELECT 2 AS b")) == [{"b": 2}]


async def test_query_list_runs_in_one_transaction(db: AsyncConnectionPool, table: Any) -> None:
    results = await db.query(
        [
            sql("INSERT INTO {} VALUES ({}, {}) RETURNING id", table, 1, "a"),
            sql("SELECT count(*) AS n FROM {}", table),
            sql("SELECT txid_current() AS x"),
            sql("SELECT txid_current() AS x"),
        ]
    )
    assert results[0] == [{"id": 1}]
    assert results[1] == [{"n": 1}]
    assert results[2] == results[3]  # same transaction
    with pytest.raises(psycopg.errors.UniqueViolation) as info:
        await db.query(
            [
                sql("INSERT INTO {} VALUES ({}, 'b')", table, 2),
                sql("INSERT INTO {} VALUES ({}, 'c')", table, 1),
            ]
        )
    assert "[redacted]" in str(info.value)
    assert await db.query_value(sql("SELECT count(*) FROM {}", table)) == 1
    assert await db.query([]) == []
    assert db.stats()["in_use"] == 0


async def test_query_list_and_stream_inside_transaction_and_connection(
    db: AsyncConnectionPool, table: Any
) -> None:
    async with db.transaction() as tx:
        await tx.execute(sql("INSERT INTO {} VALUES (1, 'a')", table))
        with pytest.raises(psycopg.errors.UniqueViolation):
            await tx.query(
                [
                    sql("INSERT INTO {} VALUES (2, 'b')", table),
                    sql("INSERT INTO {} VALUES (1, 'dup')", table),
                ]
            )
        # Only the list was rolled back (a savepoint): the transaction goes on.
        rows = [row["id"] async for row in tx.query_stream(sql("SELECT id FROM {}", table))]
        assert rows == [1]
    async with db.connection() as conn:
        streamed = [r["n"] async for r in conn.query_stream(sql("SELECT generate_series(1, 3) n"))]
        assert streamed == [1, 2, 3]
        assert await conn.query_value(sql("SELECT count(*) FROM {}", table)) == 1


async def test_anything_but_sql_query_is_a_type_error(db: AsyncConnectionPool) -> None:
    for call in (db.query, db.query_one, db.query_value, db.execute):
        with pytest.raises(TypeError, match=r"build queries with pgfast\.sql"):
            await call("SELECT 1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"build queries with pgfast\.sql"):
        await db.query([sql("SELECT 1"), "SELECT 2"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"build queries with pgfast\.sql"):
        await db.query_stream("SELECT 1").__anext__()  # type: ignore[arg-type]


async def test_query_one_and_query_value(db: AsyncConnectionPool) -> None:
    assert await db.query_one(sql("SELECT 1 AS a WHERE false")) is None
    assert await db.query_one(sql("SELECT {}::int AS a", 5)) == {"a": 5}
    with pytest.raises(Error, match=r"at most one row.*returned 2"):
        await db.query_one(sql("SELECT generate_series(1, 2)"))
    assert await db.query_value(sql("SELECT {}::text, 2", "v")) == "v"
    with pytest.raises(Error, match=r"exactly one row.*returned 0"):
        await db.query_value(sql("SELECT 1 WHERE false"))


async def test_execute_returns_row_count(db: AsyncConnectionPool, table: Any) -> None:
    insert = sql("INSERT INTO {} SELECT g, 'x' FROM generate_series(1, 7) g", table)
    assert await db.execute(insert) == 7
    assert await db.execute(sql("UPDATE {} SET v = 'y' WHERE id > {}", table, 4)) == 3
    assert await db.execute(sql("DELETE FROM {} WHERE id < 0", table)) == 0


async def test_query_stream_batches_and_releases(db: AsyncConnectionPool) -> None:
    q = sql("SELECT g AS n FROM generate_series(1, {}) g", 2500)
    rows = [row["n"] async for row in db.query_stream(q, batch_size=100)]
    assert rows == list(range(1, 2501))
    assert db.stats()["in_use"] == 0
    async with aclosing(db.query_stream(q, batch_size=10)) as stream:
        async for row in stream:
            assert db.stats()["in_use"] == 1
            if row["n"] == 15:
                break
    assert db.stats()["in_use"] == 0
    with pytest.raises(ZeroDivisionError):
        async for row in db.query_stream(q):
            row["n"] / 0
    # An abandoned generator is closed soon after (by the event loop, or once unreferenced).
    await _until_idle(db)
    with pytest.raises(ValueError, match="batch_size"):
        await db.query_stream(q, batch_size=0).__anext__()


async def test_query_stream_error_in_query(db: AsyncConnectionPool) -> None:
    with pytest.raises(psycopg.errors.UndefinedTable):
        async for _ in db.query_stream(sql("SELECT * FROM no_such_table_x")):
            pass
    assert db.stats()["in_use"] == 0
    assert await db.query_value(sql("SELECT 1")) == 1


# -- transactions ----------------------------------------------------------------


async def test_tx_commits_and_returns(db: AsyncConnectionPool, table: Any) -> None:
    async def work(tx: AsyncTransaction) -> int:
        await tx.execute(sql("INSERT INTO {} VALUES (1, 'a')", table))
        return int(await tx.query_value(sql("SELECT count(*) FROM {}", table)))

    assert await db.tx(work) == 1
    assert await db.query_value(sql("SELECT count(*) FROM {}", table)) == 1


async def test_tx_rolls_back_and_reraises(db: AsyncConnectionPool, table: Any) -> None:
    async def work(tx: AsyncTransaction) -> None:
        await tx.execute(sql("INSERT INTO {} VALUES (1, 'a')", table))
        raise KeyError("boom")

    with pytest.raises(KeyError):
        await db.tx(work)
    assert await db.query_value(sql("SELECT count(*) FROM {}", table)) == 0
    assert db.stats()["in_use"] == 0


async def test_tx_options(db: AsyncConnectionPool) -> None:
    async def settings(tx: AsyncTransaction) -> list[Any]:
        return [
            await tx.query_value(sql("SHOW transaction_isolation")),
            await tx.query_value(sql("SHOW transaction_read_only")),
            await tx.query_value(sql("SHOW transaction_deferrable")),
            await tx.query_value(sql("SHOW statement_timeout")),
            await tx.query_value(sql("SHOW lock_timeout")),
            await tx.query_value(sql("SHOW idle_in_transaction_session_timeout")),
        ]

    assert await db.tx(
        settings,
        isolation_level=IsolationLevel.SERIALIZABLE,
        read_only=True,
        deferrable=True,
        statement_timeout=1.5,
        lock_timeout=2,
        idle_in_transaction_session_timeout=3,
    ) == ["serializable", "on", "on", "1500ms", "2s", "3s"]
    assert (await db.tx(settings, isolation_level="repeatable read"))[:2] == [
        "repeatable read",
        "off",
    ]
    # SET LOCAL ends with the transaction
    assert await db.query_value(sql("SHOW statement_timeout")) == "0"
    with pytest.raises(ValueError, match="isolation_level"):
        await db.tx(settings, isolation_level="sometimes")
    # The options travel as **options, so a misspelt one is caught by name.
    with pytest.raises(TypeError, match="unknown transaction option 'isolation_levl'"):
        await db.tx(settings, isolation_levl="serializable")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unknown transaction option 'readonly'"):
        db.transaction(readonly=True)  # type: ignore[call-arg]
    assert db.stats()["in_use"] == 0, "a rejected option must hold no connection"


async def test_read_only_tx_refuses_writes(db: AsyncConnectionPool, table: Any) -> None:
    async def write(tx: AsyncTransaction) -> None:
        await tx.execute(sql("INSERT INTO {} VALUES (1, 'a')", table))

    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        await db.tx(write, read_only=True)


async def test_retry_serialization_failures(db: AsyncConnectionPool, table: Any) -> None:
    calls: list[int] = []
    ran: list[int] = []

    async def flaky(tx: AsyncTransaction) -> str:
        calls.append(len(calls))
        attempt = len(calls)
        tx.add_post_commit_step(lambda: ran.append(attempt))
        await tx.execute(sql("INSERT INTO {} VALUES ({}, 'a')", table, attempt))
        if attempt < 3:
            raise psycopg.errors.SerializationFailure("could not serialize access")
        return "done"

    assert await db.tx(flaky, retry_serialization_failures=True) == "done"
    assert len(calls) == 3
    assert ran == [3]  # steps of the failed attempts were dropped
    assert await db.query_value(sql("SELECT array_agg(id) FROM {}", table)) == [3]

    calls.clear()
    with pytest.raises(psycopg.errors.SerializationFailure):
        await db.tx(flaky, retry_serialization_failures=2)
    assert len(calls) == 2

    async def deadlock(tx: AsyncTransaction) -> None:
        calls.append(0)
        raise psycopg.errors.DeadlockDetected("deadlock")

    calls.clear()
    with pytest.raises(psycopg.errors.DeadlockDetected):
        await db.tx(deadlock)
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(psycopg.errors.DeadlockDetected):
        await db.tx(deadlock, retry_serialization_failures=True)
    assert len(calls) == 10
    with pytest.raises(ValueError, match="retry_serialization_failures"):
        await db.tx(deadlock, retry_serialization_failures=0)


async def test_other_errors_are_not_retried(db: AsyncConnectionPool) -> None:
    calls: list[int] = []

    async def fails(tx: AsyncTransaction) -> None:
        calls.append(1)
        await tx.query(sql("SELECT 1/0"))

    with pytest.raises(psycopg.errors.DivisionByZero):
        await db.tx(fails, retry_serialization_failures=True)
    assert calls == [1]


async def test_transaction_context_manager_and_savepoints(
    db: AsyncConnectionPool, table: Any
) -> None:
    async def failing(sp: AsyncTransaction) -> None:
        await sp.execute(sql("INSERT INTO {} VALUES (2, 'inner')", table))
        await sp.execute(sql("INSERT INTO {} VALUES (1, 'dup')", table))

    async with db.transaction() as tx:
        await tx.execute(sql("INSERT INTO {} VALUES (1, 'outer')", table))
        with pytest.raises(psycopg.errors.UniqueViolation):
            await tx.tx(failing)
        sp = tx.transaction()
        with pytest.raises(psycopg.errors.UniqueViolation):
            async with sp as savepoint:
                await failing(savepoint)

        async def inner(sp: AsyncTransaction) -> None:
            await sp.execute(sql("INSERT INTO {} VALUES (3, 'kept')", table))

        await tx.tx(inner)
        with pytest.raises(ValueError, match="nested transaction"):
            tx.transaction(isolation_level="serializable")
        with pytest.raises(TypeError, match="unknown transaction option 'isolation'"):
            await tx.tx(inner, isolation="serializable")  # type: ignore[call-arg]
        with pytest.raises(ValueError, match="nested transaction"):
            await tx.tx(inner, retry_serialization_failures=True)
    rows = await db.query(sql("SELECT id FROM {} ORDER BY id", table))
    assert rows == [{"id": 1}, {"id": 3}]


async def test_post_commit_steps_on_a_dedicated_connection_survive_a_later_error(
    db: AsyncConnectionPool, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def failing_step() -> None:
        raise RuntimeError("the step failed")

    caplog.set_level(logging.ERROR, logger="pgfast")
    with pytest.raises(ValueError, match="after the commit"):
        async with db.connection() as conn:
            async with conn.transaction() as tx:
                tx.add_post_commit_step(lambda: seen.append("committed"))
                tx.add_post_commit_step(failing_step)
                tx.add_post_commit_step(lambda: seen.append("after the failing step"))
            with pytest.raises(psycopg.errors.DivisionByZero):
                async with conn.transaction() as tx:
                    tx.add_post_commit_step(lambda: seen.append("rolled back"))
                    await tx.execute(sql("SELECT 1 / 0"))
            assert seen == [], "steps wait until the connection is released"
            raise ValueError("after the commit")
    # The block's error is the one raised; the failing step is logged, not lost.
    assert seen == ["committed", "after the failing step"]
    assert "a post-commit step failed" in caplog.text and "the step failed" in caplog.text
    assert db.stats()["in_use"] == 0


async def test_a_failed_rollback_at_the_end_of_a_connection_block_hides_nothing(
    db: AsyncConnectionPool, pg_url: str
) -> None:
    seen: list[str] = []
    admin = create_async_pool(pg_url)
    try:
        with pytest.raises(ValueError, match="the block's error"):
            async with db.connection() as conn:
                async with conn.transaction() as tx:
                    tx.add_post_commit_step(lambda: seen.append("committed"))
                pid = await conn.query_value(sql("SELECT pg_backend_pid()"))
                await conn.execute(sql("BEGIN"))  # left open: the block's end rolls it back
                await admin.query(sql("SELECT pg_terminate_backend({})", pid))
                raise ValueError("the block's error")
    finally:
        await admin.dispose()
    assert seen == ["committed"]
    assert db.stats()["in_use"] == 0
    assert await db.query_value(sql("SELECT 1")) == 1


# begin async-only
async def test_a_cancelled_connection_block_drops_its_steps_promptly(
    db: AsyncConnectionPool, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    async def slow_step() -> None:
        await asyncio.sleep(5)
        seen.append("slow step")

    async def work() -> None:
        async with db.connection() as conn:
            async with conn.transaction() as tx:
                tx.add_post_commit_step(slow_step)
            await conn.query(sql("SELECT pg_sleep(5)"))

    task = asyncio.create_task(work())
    await asyncio.sleep(0.3)
    started = monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert monotonic() - started < 2, "a cancellation must not wait on post-commit steps"
    assert seen == []
    assert "1 post-commit step(s) dropped" in caplog.text
    assert db.stats()["in_use"] == 0


# end async-only


async def test_failed_statement_poisons_the_transaction(
    db: AsyncConnectionPool, table: Any
) -> None:
    async def swallow(tx: AsyncTransaction) -> None:
        await tx.execute(sql("INSERT INTO {} VALUES (1, 'a')", table))
        with pytest.raises(psycopg.errors.DivisionByZero):
            await tx.query(sql("SELECT 1/0"))

    with pytest.raises(Error, match="rolled back"):
        await db.tx(swallow)
    assert await db.query_value(sql("SELECT count(*) FROM {}", table)) == 0
    assert db.stats()["in_use"] == 0


async def test_post_commit_steps(db: AsyncConnectionPool, table: Any) -> None:
    seen: list[Any] = []

    async def work(tx: AsyncTransaction) -> None:
        tx.add_post_commit_step(lambda: seen.append(("outer", db.stats()["in_use"])))

        async def rolled_back(sp: AsyncTransaction) -> None:
            sp.add_post_commit_step(lambda: seen.append("rolled back savepoint"))
            raise KeyError

        with pytest.raises(KeyError):
            await tx.tx(rolled_back)

        async def kept(sp: AsyncTransaction) -> None:
            sp.add_post_commit_step(lambda: seen.append("savepoint"))

        await tx.tx(kept)
        assert seen == []

    await db.tx(work)
    assert seen == [("outer", 0), "savepoint"]

    async def fails(tx: AsyncTransaction) -> None:
        tx.add_post_commit_step(lambda: seen.append("never"))
        raise KeyError

    with pytest.raises(KeyError):
        await db.tx(fails)
    assert "never" not in seen


async def test_a_failing_post_commit_step_says_the_transaction_committed(
    db: AsyncConnectionPool, table: Any
) -> None:
    ran: list[str] = []

    def failing(name: str) -> Any:
        def step() -> None:
            ran.append(name)
            raise KeyError(name)

        return step

    async def work(tx: AsyncTransaction) -> str:
        await tx.execute(sql("INSERT INTO {} VALUES (1, 'a')", table))
        tx.add_post_commit_step(failing("first"))
        tx.add_post_commit_step(lambda: ran.append("second"))
        tx.add_post_commit_step(failing("third"))
        return "the result"

    with pytest.raises(PostCommitError, match="committed") as info:
        await db.tx(work)
    assert info.value.result == "the result"
    assert [str(e) for e in info.value.errors] == ["'first'", "'third'"]
    assert info.value.__cause__ is info.value.errors[0]
    assert ran == ["first", "second", "third"]
    assert await db.query_value(sql("SELECT count(*) FROM {}", table)) == 1
    assert db.stats()["in_use"] == 0

    with pytest.raises(PostCommitError) as info:
        async with db.transaction() as tx:
            await tx.execute(sql("INSERT INTO {} VALUES (2, 'b')", table))
            tx.add_post_commit_step(failing("block"))
    assert info.value.result is None
    assert await db.query_value(sql("SELECT count(*) FROM {}", table)) == 2


async def test_advisory_locks(db: AsyncConnectionPool) -> None:
    async with db.transaction() as tx:
        await tx.advisory_lock(4242)
        assert await tx.try_advisory_lock((1, 2)) is True
        async with db.transaction() as other:
            assert await other.try_advisory_lock(4242) is False
            assert await other.try_advisory_lock((1, 2)) is False
            assert await other.try_advisory_lock(4243) is True
        with pytest.raises(TypeError, match="advisory lock key"):
            await tx.advisory_lock("name")  # type: ignore[arg-type]
    async with db.transaction() as tx:  # released at commit
        assert await tx.try_advisory_lock(4242) is True


async def test_shared_advisory_locks(db: AsyncConnectionPool) -> None:
    async with db.transaction() as tx:
        await tx.advisory_lock(77, shared=True)
        async with db.transaction() as other:
            assert await other.try_advisory_lock(77, shared=True) is True
            assert await other.try_advisory_lock(77) is False
        assert await tx.try_advisory_lock((7, 7), shared=True) is True
        async with db.transaction() as other:
            assert await other.try_advisory_lock((7, 7)) is False
            assert await other.try_advisory_lock((7, 7), shared=True) is True
    async with db.transaction() as tx:
        assert await tx.try_advisory_lock(77) is True


async def test_task_and_connection_use_one_connection(db: AsyncConnectionPool) -> None:
    async def work(conn: Any) -> set[int]:
        pids = {await _backend_pid(conn) for _ in range(5)}
        pids.add(await conn.tx(_backend_pid))
        return pids

    assert len(await db.task(work)) == 1
    async with db.connection() as conn:
        assert len(await work(conn)) == 1
        async with conn.transaction() as tx:
            tx.add_post_commit_step(lambda: None)
    with pytest.raises(Error, match="connection has already ended"):
        await conn.query(sql("SELECT 1"))
    with pytest.raises(Error, match="transaction has already ended"):
        await tx.query(sql("SELECT 1"))
    with pytest.raises(Error, match="transaction has already ended"):
        tx.add_post_commit_step(lambda: None)
    assert db.stats()["in_use"] == 0


async def test_exceptions_in_task_and_tx_leak_no_connection(db: AsyncConnectionPool) -> None:
    async def boom(conn: Any) -> None:
        await conn.execute(sql("BEGIN"))  # left open on purpose
        raise RuntimeError

    for _ in range(6):
        with pytest.raises(RuntimeError):
            await db.task(boom)
        with pytest.raises(RuntimeError):
            await db.tx(boom)
    stats = db.stats()
    assert stats["in_use"] == 0 and stats["idle"] == stats["size"]
    assert await db.query_value(sql("SELECT 1")) == 1


# -- errors ------------------------------------------------------------------------


async def test_code_frame_in_syntax_errors(db: AsyncConnectionPool) -> None:
    q = sql("SELECT * FROM foo\nWHERE id = {}\nINER JOIN bar ON bar.id=foo.bar_id", 1)
    with pytest.raises(psycopg.errors.SyntaxError) as info:
        await db.query(q)
    assert info.value.sqlstate == "42601"
    assert str(info.value) == (
        'syntax error at or near "INER"\n\n'
        "  1 | SELECT * FROM foo\n"
        "  2 | WHERE id = $1\n"
        "> 3 | INER JOIN bar ON bar.id=foo.bar_id\n"
        "    | ^^^^"
    )
    assert info.value.diag.message_primary == 'syntax error at or near "INER"'


async def test_parameter_values_never_in_messages(db: AsyncConnectionPool, table: Any) -> None:
    with pytest.raises(psycopg.errors.InvalidTextRepresentation) as info:
        await db.query(sql("SELECT {}::int", "secret-value"))
    assert "secret-value" not in str(info.value)
    await db.execute(sql("INSERT INTO {} VALUES ({}, 'x')", table, 777))
    with pytest.raises(psycopg.errors.UniqueViolation) as unique:
        await db.execute(sql("INSERT INTO {} VALUES ({}, {})", table, 777, "hush-hush"))
    message = str(unique.value)
    assert "777" not in message and "hush-hush" not in message
    assert "DETAIL:  Key (id)=[redacted] already exists." in message
    with pytest.raises(psycopg.errors.NotNullViolation) as notnull:
        await db.execute(sql("INSERT INTO {} VALUES (NULL, {})", table, "q9"))
    assert "q9" not in str(notnull.value)


FAILING_CASTS = ("int", "numeric", "bool", "uuid", "inet", "date", "int[]", "jsonb", "interval")


@settings(max_examples=25, deadline=None)
@given(st.text(string.ascii_letters + string.digits + "_-.:", min_size=7, max_size=24))
async def test_random_parameters_never_appear_in_errors(pg_url: str, drawn: str) -> None:
    secret = "z" + drawn  # no type parses it
    failures: list[BaseException] = []
    t = sql.ident(f"r_{uuid.uuid4().hex[:12]}")
    async with create_async_pool(pg_url, pool_size=1) as db:

        async def fails(q: Any) -> None:
            with pytest.raises(psycopg.Error) as info:
                await db.query(q)
            failures.append(info.value)

        for cast in FAILING_CASTS:
            await fails(sql(f"SELECT {{}}::{cast}", secret))
        await fails(sql("SELECT {}::jsonb", '{"api_key": ' + secret + "}"))
        await fails(sql("SELECT {}::int[]", "{" + secret + "}"))
        await fails(sql("SELECT {}::text AS a,\n  no_such_column", secret))  # a code frame
        await fails(sql("SELECT to_date({}, 'YYYY')", secret))
        assert 'invalid value [redacted] for "YYYY"' in str(failures[-1])
        await db.execute(
            sql("CREATE TABLE {} (k text PRIMARY KEY, n int NOT NULL, c text CHECK (c < 'a'))", t)
        )
        try:
            await db.execute(sql("INSERT INTO {} VALUES ({}, 1, NULL)", t, secret))
            await fails(sql("INSERT INTO {} VALUES ({}, 1, NULL)", t, secret))  # unique
            await fails(sql("INSERT INTO {} VALUES ('k', 1, {})", t, secret))  # check
            await fails(sql("INSERT INTO {} VALUES ({}, NULL, NULL)", t, secret + "2"))
        finally:
            await db.execute(sql("DROP TABLE {}", t))
    for error in failures:
        assert secret not in str(error), str(error)
    assert any("\n> " in str(e) for e in failures)  # the code frame was checked too


async def test_error_hooks_and_logging(pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    events: list[Any] = []

    def broken(*args: Any) -> None:
        raise RuntimeError("hook failure")

    async with create_async_pool(
        pg_url,
        on_query_start=lambda q, text, params: events.append(("start", text, params)),
        on_query_results=lambda q, text, params, rows: events.append(("rows", rows)),
        on_query_error=lambda q, text, params, e: events.append(("error", type(e))),
        on_connection_opened=broken,
        on_connection_closed=lambda: events.append("closed"),
    ) as db:
        with caplog.at_level(logging.ERROR, logger="pgfast"):
            assert await db.query(sql("SELECT {}::int AS a", 3)) == [{"a": 3}]
        assert "on_connection_opened hook raised" in caplog.text
        with pytest.raises(psycopg.errors.DivisionByZero):
            await db.query(sql("SELECT 1/0"))
    assert events == [
        ("start", "SELECT $1::int AS a", [3]),
        ("rows", [{"a": 3}]),
        ("start", "SELECT 1/0", []),
        ("error", psycopg.errors.DivisionByZero),
        "closed",
    ]


# -- options ---------------------------------------------------------------------


async def test_session_options(pg_url: str) -> None:
    async with create_async_pool(
        pg_url,
        schema=["my schema", "public"],
        statement_timeout=5,
        lock_timeout=0.25,
        idle_in_transaction_session_timeout=60,
        application_name="pgfast tests",
    ) as db:
        row = await db.query_one(
            sql(
                "SELECT current_setting('search_path') AS sp, "
                "current_setting('statement_timeout') AS st, "
                "current_setting('lock_timeout') AS lt, "
                "current_setting('idle_in_transaction_session_timeout') AS it, "
                "current_setting('application_name') AS app"
            )
        )
    assert row == {
        "sp": '"my schema","public"',
        "st": "5s",
        "lt": "250ms",
        "it": "1min",
        "app": "pgfast tests",
    }


async def test_statement_timeout_option_cancels(pg_url: str) -> None:
    async with create_async_pool(pg_url, statement_timeout=0.1) as db:
        with pytest.raises(psycopg.errors.QueryCanceled):
            await db.query(sql("SELECT pg_sleep(2)"))
        assert await db.query_value(sql("SELECT 1")) == 1


async def test_password_callable_called_per_connection(pg_url: str) -> None:
    password = _password(pg_url)
    calls: list[int] = []

    def token() -> str:
        calls.append(1)
        return password

    async with create_async_pool(_with(pg_url, password="wrong"), password=token) as db:
        async with db.connection() as c1, db.connection() as c2:
            assert await c1.query_value(sql("SELECT 1")) == await c2.query_value(sql("SELECT 1"))
        assert len(calls) == 2
        assert password not in repr(db)


async def test_max_uses_replaces_connections(pg_url: str) -> None:
    closed: list[int] = []
    async with create_async_pool(
        pg_url, pool_size=2, max_uses=3, on_connection_closed=lambda: closed.append(1)
    ) as db:
        pids = [await _backend_pid(db) for _ in range(9)]
        assert [len(set(pids[i : i + 3])) for i in (0, 3, 6)] == [1, 1, 1]
        assert len(set(pids)) == 3
        assert len(closed) == 3  # each closed after its third use
        assert db.stats()["size"] <= 2


async def test_max_lifetime_replaces_connections(pg_url: str) -> None:
    async with create_async_pool(pg_url, pool_size=2, max_lifetime=0.5) as db:
        first_seen: dict[int, float] = {}
        started = monotonic()
        while monotonic() - started < 2.0:
            pid = await _backend_pid(db)
            first_seen.setdefault(pid, monotonic())
            # A connection is used at most until its first release after max_lifetime.
            assert monotonic() - first_seen[pid] < 0.5 + 0.2
            await asyncio.sleep(0.02)
        assert len(first_seen) >= 3
        assert db.stats()["size"] <= 2


async def test_quiet_pool_shrinks_to_min_size(pg_url: str) -> None:
    app = f"pgfast-shrink-{uuid.uuid4().hex[:8]}"
    closed: list[int] = []
    async with create_async_pool(
        pg_url,
        pool_size=4,
        min_size=1,
        idle_timeout=0.3,
        application_name=app,
        on_connection_closed=lambda: closed.append(1),
    ) as db:
        async with (
            db.connection() as c1,
            db.connection() as c2,
            db.connection() as c3,
            db.connection() as c4,
        ):
            pids = {await _backend_pid(c) for c in (c1, c2, c3, c4)}
        assert len(pids) == 4
        assert db.stats() == {"size": 4, "idle": 4, "in_use": 0, "waiting": 0, "queries": 4}
        # Hot connections go back to psycopg_pool after LIVENESS_CHECK_AFTER (1 s),
        # and are closed at the next sweep, idle_timeout / 4 later at most.
        await asyncio.sleep(1.0 + 0.3)
        stats = db.stats()
        assert (stats["size"], stats["idle"], stats["in_use"]) == (1, 1, 0)
        assert len(closed) == 3
        count = sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = {}", app)
        assert await db.query_value(count) == 1


async def test_on_connection_closed_fires_for_broken_connections(pg_url: str) -> None:
    closed: list[int] = []
    async with (
        create_async_pool(pg_url, pool_size=1, on_connection_closed=lambda: closed.append(1)) as db,
        create_async_pool(pg_url) as admin,
    ):
        for idle in (0.1, 1.2):  # found broken by the query, or by the liveness check
            pid = await _backend_pid(db)
            await admin.query(sql("SELECT pg_terminate_backend({})", pid))
            await asyncio.sleep(idle)
            assert await _backend_pid(db) != pid
        assert len(closed) == 2
        assert db.stats()["size"] == 1


# -- pool life cycle ---------------------------------------------------------------


async def test_pool_timeout_then_recovers(pg_url: str) -> None:
    async with create_async_pool(pg_url, pool_size=1, queue_timeout=0.3) as db:
        async with db.connection() as held:
            await held.query(sql("SELECT 1"))
            with pytest.raises(PoolTimeoutError) as info:
                await db.query(sql("SELECT 1"))
            assert "pool_size=1" in str(info.value)
            assert "other callers waiting" in str(info.value)
            assert isinstance(info.value, TimeoutError)
        assert await db.query_value(sql("SELECT 1")) == 1
        assert db.stats() == {"size": 1, "idle": 1, "in_use": 0, "waiting": 0, "queries": 2}


async def test_dispose_is_idempotent_and_closes(pg_url: str) -> None:
    db = create_async_pool(pg_url)
    await db.query(sql("SELECT 1"))
    await db.dispose()
    await db.dispose()
    with pytest.raises(PoolClosedError):
        await db.query(sql("SELECT 1"))
    with pytest.raises(PoolClosedError):
        await db.tx(_backend_pid)
    assert "closed" in repr(db)


async def test_stats_count_queries(db: AsyncConnectionPool) -> None:
    before = db.stats()["queries"]
    await db.query(sql("SELECT 1"))
    await db.query([sql("SELECT 1"), sql("SELECT 2")])
    assert db.stats()["queries"] == before + 3
    assert set(db.stats()) >= {"size", "idle", "in_use", "waiting", "queries"}


async def test_no_password_in_repr(pg_url: str) -> None:
    password = _password(pg_url)
    db = create_async_pool(pg_url)
    assert password not in repr(db) and "password" not in repr(db)
    await db.dispose()


# -- connection failures ------------------------------------------------------------


async def test_connection_errors_fail_fast(pg_url: str) -> None:
    password = _password(pg_url)
    for url in (
        _with(pg_url, port=1),
        _with(pg_url, dbname="no_such_db_x"),
        _with(pg_url, password=password + "x"),
        _with(pg_url, user="no_such_user_x"),
    ):
        # The default queue_timeout (60 s): the error itself comes at once.
        async with create_async_pool(url, connect_timeout=2) as bad:
            for _ in range(2):  # the first caller, then one finding the pool failing
                started = monotonic()
                with pytest.raises(psycopg.OperationalError) as info:
                    await bad.query(sql("SELECT 1"))
                assert monotonic() - started < 4, url
                assert not isinstance(info.value, PoolTimeoutError)
                assert password not in str(info.value)
            assert bad.stats()["waiting"] == 0 and bad.stats()["in_use"] == 0


async def test_later_callers_connect_once_the_server_accepts(pg_url: str) -> None:
    password = _password(pg_url)
    current = [password + "x"]
    async with create_async_pool(pg_url, password=lambda: current[0], connect_timeout=3) as db:
        with pytest.raises(psycopg.OperationalError) as info:
            await db.query(sql("SELECT 1"))
        assert password not in str(info.value)
        current[0] = password  # psycopg_pool keeps trying in the background
        started = monotonic()
        assert await db.query_value(sql("SELECT 1")) == 1
        assert monotonic() - started < 3


async def test_failed_attempt_does_not_fail_waiters_while_connections_are_busy(
    pg_url: str,
) -> None:
    password = _password(pg_url)
    current = [password]
    async with create_async_pool(
        pg_url, pool_size=2, password=lambda: current[0], queue_timeout=1.5
    ) as db:
        async with db.connection() as held:
            await held.query(sql("SELECT 1"))
            current[0] = password + "x"  # a second connection cannot open
            started = monotonic()
            with pytest.raises(PoolTimeoutError) as info:
                await db.query(sql("SELECT 1"))
            # It waited for the busy connection, the whole queue_timeout.
            assert monotonic() - started >= 1.4
            assert "last connection attempt failed" in str(info.value)
            assert password not in str(info.value)
        assert await db.query_value(sql("SELECT 1")) == 1


async def test_dead_idle_connections_are_replaced_before_use(pg_url: str) -> None:
    errors: list[BaseException] = []
    failed: list[str] = []
    admin = create_async_pool(pg_url)
    async with (
        create_async_pool(
            pg_url,
            pool_size=1,
            on_error=errors.append,
            on_query_error=lambda q, text, params, e: failed.append(text),
        ) as db,
        admin,
    ):
        for idle in (0.1, 1.1):  # a hot connection, then one idle long enough to be checked
            pid = await _backend_pid(db)
            await admin.query(sql("SELECT pg_terminate_backend({})", pid))
            await asyncio.sleep(idle)
            assert await _backend_pid(db) != pid
        # No statement was ever sent on the dead connections.
        assert failed == []
        assert errors and all(isinstance(e, psycopg.OperationalError) for e in errors)


async def test_a_statement_killed_by_the_server_is_not_run_again(
    pg_url: str, db: AsyncConnectionPool, table: Any
) -> None:
    opened: list[int] = []
    password = _password(pg_url)

    def counting_password() -> str:
        opened.append(1)
        if len(opened) > 3:  # bounds a reconnect loop, which then times out
            raise RuntimeError("reconnecting in a loop")
        return password

    async with create_async_pool(
        pg_url, pool_size=1, password=counting_password, queue_timeout=3
    ) as victim:
        started = monotonic()
        with pytest.raises(psycopg.errors.AdminShutdown):
            await victim.execute(sql("SELECT pg_terminate_backend(pg_backend_pid())"))
        assert monotonic() - started < 2 and len(opened) == 1
        # A write killed mid-statement (once: nextval is not rolled back) is
        # the caller's error: running it again could apply it twice.
        seq = sql.ident(f"kill_once_{uuid.uuid4().hex[:12]}")
        await db.execute(sql("CREATE SEQUENCE {}", seq))
        await db.execute(sql("INSERT INTO {} VALUES (1, '')", table))
        update = sql(
            "WITH u AS (UPDATE {} SET v = v || {} RETURNING id) "
            "SELECT CASE WHEN nextval('{}') = 1 THEN pg_terminate_backend(pg_backend_pid()) END "
            "FROM u",
            table,
            "x",
            sql.unsafe(seq.format()[0]),
        )
        try:
            with pytest.raises(psycopg.errors.AdminShutdown):
                await victim.query(update)
        finally:
            await db.execute(sql("DROP SEQUENCE {}", seq))
        assert await db.query_value(sql("SELECT v FROM {}", table)) == ""
        assert await victim.query_value(sql("SELECT 1")) == 1  # and the pool recovers


async def add_echoing_trigger(db: AsyncConnectionPool, table: SQLQuery, message: str) -> None:
    """A deferred constraint trigger on ``table`` (also the function's name) that
    raises ``message``, its ``%`` replaced by the new row's id: a server echo."""
    await db.execute(
        sql(
            "CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION {}, NEW.id; END $$",
            table,
            sql.unsafe("'" + message.replace("'", "''") + "'"),
        )
    )
    await db.execute(
        sql(
            "CREATE CONSTRAINT TRIGGER chk AFTER INSERT ON {} "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {}()",
            table,
            table,
        )
    )


async def test_commit_errors_are_redacted_and_reported(pg_url: str) -> None:
    reported: list[tuple[str, list[Any], BaseException]] = []
    name = sql.ident(f"d_{uuid.uuid4().hex[:12]}")
    async with create_async_pool(
        pg_url, on_query_error=lambda q, text, params, e: reported.append((text, params, e))
    ) as db:
        await db.execute(
            sql(
                "CREATE TABLE {} (id text UNIQUE DEFERRABLE INITIALLY DEFERRED, n int)",
                name,
            )
        )
        try:

            async def twice(tx: AsyncTransaction) -> None:
                for _ in range(2):
                    await tx.execute(sql("INSERT INTO {} VALUES ({}, 1)", name, "SECRETVAL"))

            with pytest.raises(psycopg.errors.UniqueViolation) as info:
                await db.tx(twice)
            assert "SECRETVAL" not in str(info.value)
            assert "Key (id)=[redacted] already exists" in str(info.value)
            assert [(text, params) for text, params, _ in reported] == [("COMMIT", [])]
            assert reported[0][2] is info.value

            insert = sql("INSERT INTO {} VALUES ({}, {})", name, "SECRET-2", 2)
            with pytest.raises(psycopg.errors.UniqueViolation) as batch:
                await db.query([insert, insert])  # the list's own COMMIT
            assert "SECRET-2" not in str(batch.value)
            # A constraint trigger may echo any value sent in the transaction.
            await add_echoing_trigger(db, name, "bad row %")
            for immediate in (False, True):  # fired by COMMIT, or by a statement

                async def echoed(tx: AsyncTransaction) -> None:
                    await tx.execute(sql("INSERT INTO {} VALUES ({}, 3)", name, "trig-secret"))
                    async with tx.transaction() as savepoint:
                        await savepoint.execute(sql("INSERT INTO {} VALUES ('x', {})", name, 7))
                    if immediate:  # noqa: B023 (called at once)
                        await tx.execute(sql("SET CONSTRAINTS ALL IMMEDIATE"))

                with pytest.raises(psycopg.errors.RaiseException) as trig:
                    await db.tx(echoed)
                assert "trig-secret" in str(trig.value.diag.message_primary)  # the server echoed it
                assert "trig-secret" not in str(trig.value)
        finally:
            await db.execute(sql("DROP TABLE {}", name))
            await db.execute(sql("DROP FUNCTION IF EXISTS {}()", name))


async def test_a_large_transaction_keeps_no_parameters_yet_redacts(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past the budget a transaction stops holding its parameters (a bulk load
    # must not keep every batch until COMMIT); its errors then lose every
    # quoted segment instead.
    monkeypatch.setattr(Sent, "BUDGET", 50)
    name = sql.ident(f"big_{uuid.uuid4().hex[:12]}")
    async with create_async_pool(pg_url) as db:
        await db.execute(sql("CREATE TABLE {} (id text, n int)", name))
        await add_echoing_trigger(db, name, 'bad row "%"')
        try:
            seen: list[Sent] = []

            async def load(tx: AsyncTransaction) -> None:
                seen.append(tx._sent)
                await tx.execute(sql("INSERT INTO {} VALUES ({}, 1)", name, "early-secret"))
                await tx.execute(sql("SELECT {}::text", "x" * 100))  # over the budget

            with pytest.raises(psycopg.errors.RaiseException) as info:
                await db.tx(load)
            assert seen[0].params is None
            assert "early-secret" in str(info.value.diag.message_primary)  # the server echoed it
            assert "early-secret" not in str(info.value)
            assert str(info.value) == "bad row [redacted]"
        finally:
            await db.execute(sql("DROP TABLE {}", name))
            await db.execute(sql("DROP FUNCTION {}()", name))
