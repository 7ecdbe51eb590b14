"""Automatic pipelining of async pools, on real servers; and the engine twins' parity.

Pipelining exists for async pools only, so these tests are not generated.
"""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from decimal import Decimal
from time import monotonic
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.adapt import Transformer

from pgfast._exceptions import CommitUnknownError, QueryTimeoutError
from pgfast._factories import create_async_pool
from pgfast._pipeline import TURN_BATCH, _corker
from pgfast._pool_async import AsyncConnectionPool
from pgfast._sql import sql
from pgfast.testing import LocalCluster
from tests.conftest import IMPLS, twin


@pytest.fixture(scope="module")
def restartable() -> Iterator[LocalCluster]:
    """A server of our own: restarting the session's one would disturb other tests."""
    with LocalCluster() as cluster:
        yield cluster


@pytest.fixture
async def table(pg_url: str) -> AsyncIterator[Any]:
    name = sql.ident(f"p_{uuid.uuid4().hex[:12]}")
    async with create_async_pool(pg_url, pipeline=False) as db:
        await db.execute(sql("CREATE TABLE {} (id int PRIMARY KEY)", name))
        yield name
        await db.execute(sql("DROP TABLE {}", name))


async def _in_flight(db: AsyncConnectionPool, count: int) -> None:
    """Wait until ``count`` statements are in flight on the pool's lanes."""
    for _ in range(500):
        if sum(lane.depth for lane in db._lanes) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never {count} statements in flight: {db._lanes}")


async def test_500_tasks_each_get_their_own_result_error_or_cancellation(pg_url: str) -> None:
    starts: list[Any] = []
    ends: list[Any] = []
    async with create_async_pool(
        pg_url,
        pool_size=4,
        on_query_start=lambda q, text, params: starts.append(q),
        on_query_results=lambda q, text, params, rows: ends.append(q),
        on_query_error=lambda q, text, params, error: ends.append(q),
    ) as db:

        async def caller(i: int) -> str:
            kind = i % 5
            if kind == 1:  # an error of its own, between others' statements
                with pytest.raises(psycopg.errors.DivisionByZero) as info:
                    await db.query(sql("SELECT {}::int / 0 AS boom", i))
                assert "division by zero" in str(info.value)
                return "error"
            if kind == 2:  # cancelled while in flight
                try:
                    await asyncio.wait_for(
                        db.query(sql("SELECT pg_sleep(0.01), {}::int AS i", i)), 0.002 * (i % 7)
                    )
                except asyncio.TimeoutError:
                    return "cancelled"
                return "finished"
            if kind == 3:
                assert (
                    await db.execute(sql("SELECT generate_series(1, {})", i % 9 + 1)) == i % 9 + 1
                )
                return "ok"
            rows = await db.query(sql("SELECT {}::int AS i, {}::text AS s", i, f"v{i}"))
            assert rows == [{"i": i, "s": f"v{i}"}]
            return "ok"

        outcomes = await asyncio.gather(*(caller(i) for i in range(500)))
        assert outcomes.count("error") == 100
        assert outcomes.count("ok") == 300
        assert outcomes.count("cancelled") + outcomes.count("finished") == 100
        # Nothing left behind, and the pool serves on.
        for _ in range(200):
            if db.stats()["in_use"] == 0:
                break
            await asyncio.sleep(0.01)
        assert db.stats()["in_use"] == 0
        assert db.stats()["size"] <= 4
        # Callers cancelled before their statement was sent count no query.
        assert 400 <= db.stats()["queries"] == len(starts) <= 500
        assert await db.query_value(sql("SELECT {}::int", 7)) == 7
    assert len(starts) == len(ends)  # each statement: exactly one end hook


async def test_queries_share_a_connection_without_waiting_for_each_other(pg_url: str) -> None:
    async with create_async_pool(pg_url, pool_size=1) as db:
        pid = await db.query_value(sql("SELECT pg_backend_pid()"))
        slow = asyncio.ensure_future(db.query(sql("SELECT pg_sleep(0.3)")))
        await _in_flight(db, 1)
        fast = [
            asyncio.ensure_future(db.query_value(sql("SELECT pg_backend_pid() + {}", i)))
            for i in range(20)
        ]
        await asyncio.sleep(0.05)
        assert db.stats()["waiting"] == 0  # all written behind the slow one
        assert await asyncio.gather(*fast) == [pid + i for i in range(20)]
        await slow


async def test_pipeline_false_holds_a_connection_per_query(pg_url: str) -> None:
    async with create_async_pool(pg_url, pool_size=1, pipeline=False) as db:
        slow = asyncio.ensure_future(db.query(sql("SELECT pg_sleep(0.3)")))
        await asyncio.sleep(0.1)
        fast = asyncio.ensure_future(db.query_value(sql("SELECT {}::int", 1)))
        await asyncio.sleep(0.05)
        assert db.stats()["waiting"] == 1 and not db._lanes
        assert await fast == 1
        await slow


async def test_session_statements_and_several_statements_hold_their_connection(
    pg_url: str,
) -> None:
    async with create_async_pool(pg_url, pool_size=2) as db:
        results = await asyncio.gather(
            *(db.query(sql("SELECT 1 AS a; SELECT 2 AS b")) for _ in range(20)),
            *(db.query_value(sql("SELECT {}::int", i)) for i in range(20)),
        )
        assert results[:20] == [[{"b": 2}]] * 20
        assert results[20:] == list(range(20))
        await db.execute(sql("SET application_name = 'x'"))  # not pipelined: no error


async def test_pipelined_statements_are_prepared_under_names_of_their_own(pg_url: str) -> None:
    async with create_async_pool(pg_url, pool_size=1) as db:
        for _ in range(3):
            await asyncio.gather(*(db.query_value(sql("SELECT {}::int + 1", i)) for i in range(10)))
        names = await db.query(sql("SELECT name FROM pg_prepared_statements"))
    assert len(names) == 1 and names[0]["name"].startswith("_pgf")
    async with create_async_pool(pg_url, pool_size=1, prepare_threshold=None) as db:
        for _ in range(3):
            await asyncio.gather(*(db.query_value(sql("SELECT {}::int + 1", i)) for i in range(10)))
        assert await db.query_value(sql("SELECT count(*) FROM pg_prepared_statements")) == 0


async def test_ddl_in_a_pipeline_keeps_prepared_statements_right(pg_url: str) -> None:
    name = sql.ident(f"d_{uuid.uuid4().hex[:12]}")
    async with create_async_pool(pg_url, pool_size=1) as db:
        await db.execute(sql("CREATE TABLE {} (a int)", name))
        for _ in range(8):
            assert await db.query(sql("SELECT * FROM {} WHERE a > {}", name, 0)) == []
        await db.execute(sql("DROP TABLE {}", name))
        await db.execute(sql("CREATE TABLE {} (a int, b text)", name))
        await db.execute(sql("INSERT INTO {} VALUES (1, 'x')", name))
        for _ in range(3):
            rows = await db.query(sql("SELECT * FROM {} WHERE a > {}", name, 0))
            assert rows == [{"a": 1, "b": "x"}]
        await db.execute(sql("DROP TABLE {}", name))


async def test_terminated_backend_fails_every_caller_in_flight_and_runs_nothing_again(
    pg_url: str, table: Any
) -> None:
    async with create_async_pool(pg_url, pool_size=1) as db:
        pid = await db.query_value(sql("SELECT pg_backend_pid()"))
        slow = asyncio.ensure_future(db.query(sql("SELECT pg_sleep(5)")))
        writes = [
            asyncio.ensure_future(db.execute(sql("INSERT INTO {} VALUES ({})", table, i)))
            for i in range(40)
        ]
        await _in_flight(db, 41)
        async with create_async_pool(pg_url, pipeline=False) as other:
            await other.query(sql("SELECT pg_terminate_backend({})", pid))
        started = monotonic()
        outcomes = await asyncio.wait_for(
            asyncio.gather(slow, *writes, return_exceptions=True), timeout=10
        )
        assert monotonic() - started < 5
        assert isinstance(outcomes[0], psycopg.errors.AdminShutdown)
        for outcome in outcomes[1:]:
            # Writes lost after they were sent: they may have committed.
            assert isinstance(outcome, CommitUnknownError), outcome
        # None of the writes ran, none ran twice, and the pool recovered.
        assert await db.query_value(sql("SELECT count(*) FROM {}", table)) == 0
        assert await db.query_value(sql("SELECT {}::int", 3)) == 3
        assert db.stats()["in_use"] == 0


async def test_statements_of_one_loop_turn_share_one_connection(pg_url: str) -> None:
    async with create_async_pool(pg_url, pool_size=4, min_size=4) as db:

        async def pids(n: int) -> list[int]:
            return await asyncio.gather(
                *(db.query_value(sql("SELECT pg_backend_pid() + {}", 0)) for _ in range(n))
            )

        await pids(1)  # now known to be quick
        assert len(set(await pids(TURN_BATCH))) == 1
        two = await pids(2 * TURN_BATCH)
        # A full batch, then another connection (later ones may be queued
        # behind either while further connections open).
        assert two[:TURN_BATCH] == [two[0]] * TURN_BATCH
        assert two[TURN_BATCH] != two[0]


@pytest.mark.nodb
def test_only_tcp_sockets_are_corked() -> None:
    """A Unix-domain connection has no cork: its lane writes as it goes."""
    left, right = socket.socketpair(socket.AF_UNIX)
    try:
        assert _corker(left.fileno()) is None
    finally:
        left.close()
        right.close()
    if not hasattr(socket, "TCP_CORK"):
        return
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    try:
        corker = _corker(client.fileno())
        assert corker is not None
        # A duplicate: closing it leaves the connection open.
        corker.close()
        client.sendall(b"x")
    finally:
        client.close()
        listener.close()


async def test_slow_statements_of_one_turn_take_connections_of_their_own(pg_url: str) -> None:
    """Only quick statements are batched: slow ones run side by side, first seen or not."""
    slow = sql("SELECT pg_backend_pid() FROM pg_sleep(0.3)")
    async with create_async_pool(pg_url, pool_size=4, min_size=4) as db:
        for _ in range(2):  # unknown, then known to be slow
            started = monotonic()
            pids = await asyncio.gather(*(db.query_value(slow) for _ in range(4)))
            assert len(set(pids)) == 4
            assert monotonic() - started < 1.2  # not one after another (4 x 0.3 s)


async def test_query_timeout_spares_quick_statements_of_the_same_turn(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A slow statement that times out is cancelled alone: the quick statements of its
    turn were not written behind it, and no connection is cut."""
    async with create_async_pool(pg_url, pool_size=4, min_size=4, query_timeout=1) as db:
        assert await db.query_value(sql("SELECT {}::int", 0)) == 0  # known to be quick
        outcomes = await asyncio.gather(
            db.query_value(sql("SELECT 1 FROM pg_sleep(3)")),
            *(db.query_value(sql("SELECT {}::int", i)) for i in range(1, 4)),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], QueryTimeoutError)
        assert "was cancelled" in str(outcomes[0])
        assert outcomes[1:] == [1, 2, 3]
    assert "answered nothing" not in caplog.text


@pytest.mark.skipif(not hasattr(socket, "TCP_CORK"), reason="TCP_CORK is Linux's")
async def test_a_batch_is_corked_until_the_turn_ends(pg_url: str) -> None:
    corked: list[list[int]] = []

    def on_start(*args: Any) -> None:
        corked.append(
            [
                lane.corker.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)
                for lane in db._lanes
                if lane.corker is not None
            ]
        )

    async with create_async_pool(pg_url, pool_size=2, on_query_start=on_start) as db:
        await db.query_value(sql("SELECT {}::int", 0))  # a parked lane; a quick text
        corked.clear()
        assert await asyncio.gather(
            *(db.query_value(sql("SELECT {}::int", i)) for i in range(4))
        ) == [0, 1, 2, 3]
        # The turn's first statement leaves at once; from the second on (the
        # hook runs before a statement is written), the socket is corked.
        assert corked == [[0], [0], [1], [1]]
        lanes = list(db._lanes)
        assert lanes and all(not lane.corked for lane in lanes)
        for lane in lanes:
            assert lane.corker is not None
            assert lane.corker.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 0


async def test_disposed_pool_leaves_no_session_behind(pg_url: str) -> None:
    """A lane's corking socket is a duplicate: it must not keep a closed connection open."""
    async with create_async_pool(pg_url, pool_size=3) as db:
        pids = set(
            await asyncio.gather(
                *(db.query_value(sql("SELECT pg_backend_pid() + {}", 0)) for _ in range(40))
            )
        )
        # Held here, so that only closing them (not collection) can end them.
        corkers = [lane.corker for lane in db._lanes if lane.corker is not None]
    if hasattr(socket, "TCP_CORK"):
        assert corkers
    assert all(corker.fileno() == -1 for corker in corkers)
    async with create_async_pool(pg_url, pipeline=False) as probe:
        for _ in range(200):
            alive = await probe.query_value(
                sql("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY({})", list(pids))
            )
            if alive == 0:
                break
            await asyncio.sleep(0.02)
        assert alive == 0


async def test_server_restart_with_a_full_pipeline(restartable: LocalCluster) -> None:
    url = restartable.primary_url
    name = sql.ident(f"r_{uuid.uuid4().hex[:12]}")
    async with create_async_pool(url, pool_size=2, queue_timeout=30) as db:
        await db.execute(sql("CREATE TABLE {} (id int PRIMARY KEY)", name))
        slow = []
        for _ in range(2):  # one per connection: statements of one loop turn share one
            slow.append(asyncio.ensure_future(db.query(sql("SELECT pg_sleep(10)"))))
            await _in_flight(db, len(slow))
        writes = [
            asyncio.ensure_future(db.execute(sql("INSERT INTO {} VALUES ({})", name, i)))
            for i in range(60)
        ]
        await _in_flight(db, 62)
        restart = threading.Thread(target=restartable.restart_primary)
        restart.start()
        outcomes = await asyncio.wait_for(
            asyncio.gather(*slow, *writes, return_exceptions=True), timeout=20
        )
        await asyncio.get_running_loop().run_in_executor(None, restart.join)
        for outcome in outcomes:
            assert isinstance(outcome, (psycopg.OperationalError, CommitUnknownError)), outcome
        assert await db.query_value(sql("SELECT count(*) FROM {}", name)) == 0
        assert await asyncio.gather(
            *(db.query_value(sql("SELECT {}::int", i)) for i in range(50))
        ) == list(range(50))
        await db.execute(sql("DROP TABLE {}", name))


async def test_query_timeout_of_a_statement_alone_cancels_it(pg_url: str) -> None:
    async with create_async_pool(pg_url, pool_size=1, query_timeout=0.3) as db:
        pid = await db.query_value(sql("SELECT pg_backend_pid()"))
        with pytest.raises(QueryTimeoutError, match="was cancelled"):
            await db.query(sql("SELECT pg_sleep(5)"))
        assert await db.query_value(sql("SELECT pg_backend_pid()")) == pid


async def test_query_timeout_with_others_behind_never_cancels_them(pg_url: str) -> None:
    async with create_async_pool(pg_url, pool_size=1, query_timeout=0.5) as db:
        slow = asyncio.ensure_future(db.query(sql("SELECT pg_sleep(0.7)")))
        await _in_flight(db, 1)
        quick = [asyncio.ensure_future(db.query_value(sql("SELECT {}::int", i))) for i in range(5)]
        started = monotonic()
        outcomes = await asyncio.gather(slow, *quick, return_exceptions=True)
        assert monotonic() - started < 3
        # The slow statement timed out (not cancelled on the server: others
        # were behind it); the quick ones behind it either answered or
        # timed out, but none was cancelled by someone else's request.
        assert isinstance(outcomes[0], QueryTimeoutError)
        for i, outcome in enumerate(outcomes[1:]):
            assert outcome == i or isinstance(
                outcome, (QueryTimeoutError, psycopg.OperationalError)
            )
            assert not isinstance(outcome, psycopg.errors.QueryCanceled)
        assert await db.query_value(sql("SELECT {}::int", 9)) == 9


async def test_a_stalled_pipelined_link_fails_every_query_on_it(pg_url: str) -> None:
    from pgfast.testing import FaultProxy

    with FaultProxy.for_url(pg_url) as proxy:
        async with create_async_pool(proxy.url_for(pg_url), pool_size=1, query_timeout=0.5) as db:
            assert await db.query_value(sql("SELECT {}::int", 1)) == 1
            proxy.stall()
            started = monotonic()
            outcomes = await asyncio.gather(
                *(db.query_value(sql("SELECT {}::int", i)) for i in range(10)),
                return_exceptions=True,
            )
            assert monotonic() - started < 4
            for outcome in outcomes:
                assert isinstance(outcome, (QueryTimeoutError, psycopg.OperationalError)), outcome
            proxy.resume()
            assert await db.query_value(sql("SELECT {}::int", 3)) == 3


async def test_transactions_are_not_starved_by_pipelined_load(pg_url: str) -> None:
    async with create_async_pool(pg_url, pool_size=1, queue_timeout=5) as db:
        stop = False

        async def load() -> int:
            n = 0
            while not stop:
                await db.query_value(sql("SELECT {}::int", n))
                n += 1
            return n

        loaders = [asyncio.ensure_future(load()) for _ in range(20)]
        await asyncio.sleep(0.1)
        for _ in range(5):
            assert await db.tx(lambda tx: tx.query_value(sql("SELECT 1"))) == 1
        stop = True
        assert all(n > 0 for n in await asyncio.gather(*loaders))


async def test_max_uses_counts_each_pipelined_query(pg_url: str) -> None:
    closed: list[int] = []
    async with create_async_pool(
        pg_url, pool_size=2, max_uses=10, on_connection_closed=lambda: closed.append(1)
    ) as db:
        await asyncio.gather(*(db.query_value(sql("SELECT {}::int", i)) for i in range(100)))
        await asyncio.sleep(0.1)
    assert len(closed) >= 10


# -- the engine twins ----------------------------------------------------------


def _result(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    cur = psycopg.RawCursor(conn)
    cur.execute(query, params)
    return cur.pgresult


@pytest.fixture(scope="module")
def raw_conn(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


TYPES_QUERY = (
    "SELECT 1::int2 AS a, 2::int4 AS b, (2^40)::int8 AS c, 1.5::numeric AS d, 'x'::text AS e, "
    "NULL::int AS f, true AS g, '{\"k\": [1]}'::jsonb AS h, '{1,2}'::int[] AS i, "
    "'2020-01-02 03:04:05+00'::timestamptz AS j, '\\x00ff'::bytea AS k, 0.25::float8 AS l, "
    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS m, 'é'::varchar AS \"ü\""
)


@pytest.mark.parametrize("dicts", [True, False], ids=["dicts", "tuples"])
def test_engine_twins_load_the_same_rows(raw_conn: psycopg.Connection[Any], dicts: bool) -> None:
    result = _result(raw_conn, TYPES_QUERY + " FROM generate_series(1, 3)")
    loaded = [
        twin("_engine", impl).load_rows(Transformer(raw_conn), result, dicts, "utf-8")
        for impl in IMPLS
    ]
    assert all(rows == loaded[0] for rows in loaded)
    first = loaded[0][0]
    values = list(first.values()) if dicts else list(first)
    assert values[2] == 2**40 and values[3] == Decimal("1.5") and values[5] is None
    assert values[7] == {"k": [1]} and values[8] == [1, 2]
    assert values[9] == datetime(2020, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    if dicts:
        assert list(first)[-1] == "ü"
    empty = _result(raw_conn, "SELECT 1 AS a WHERE false")
    for impl in IMPLS:
        assert twin("_engine", impl).load_rows(Transformer(raw_conn), empty, dicts, "utf-8") == []


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(-(2**63), 2**63 - 1),
            st.none()
            | st.text(
                alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"])
            ),
        ),
        min_size=0,
        max_size=20,
    ),
    dicts=st.booleans(),
)
def test_engine_twins_parity_fuzz(
    raw_conn: psycopg.Connection[Any], rows: list[tuple[int, str | None]], dicts: bool
) -> None:
    ints = [r[0] for r in rows]
    texts = [r[1] for r in rows]
    result = _result(
        raw_conn,
        "SELECT * FROM unnest($1::int8[], $2::text[]) AS t(n, s)",
        [ints, texts],
    )
    loaded = [
        twin("_engine", impl).load_rows(Transformer(raw_conn), result, dicts, "utf-8")
        for impl in IMPLS
    ]
    expected: list[Any] = [{"n": n, "s": s} for n, s in rows] if dicts else rows
    for got in loaded:
        assert got == expected
        assert all(type(row) is (dict if dicts else tuple) for row in got)


def test_engine_is_chosen_with_the_other_hot_paths() -> None:
    from pgfast import _impl

    assert _impl.engine.__name__ == f"pgfast._engine{'_c' if _impl.IMPL == 'cython' else '_py'}"


PIPELINED = [
    (b"SELECT $1::int AS a", [b"1"]),
    (b"SELECT 1 / $1::int", [b"0"]),  # division by zero: isolated by its own Sync
    (b"SELECT generate_series(1, $1::int)", [b"3"]),
    (b"SELEC 1", None),  # a syntax error
    (b"SELECT $1::text", [b"last"]),
]


class _InFlight:
    __slots__ = ("error", "result")

    def __init__(self) -> None:
        self.error: Any = None
        self.result: Any = None


def _summary(entry: _InFlight) -> tuple[Any, ...]:
    if entry.error is not None:
        return ("error", entry.error.error_field(psycopg.pq.DiagnosticField.SQLSTATE))
    res = entry.result
    return ("rows", res.ntuples, res.get_value(0, 0) if res.ntuples else None)


@pytest.mark.parametrize("impl", IMPLS)
def test_engine_twins_match_pipelined_results_in_order(pg_url: str, impl: str) -> None:
    engine = twin("_engine", impl)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        pgconn = conn.pgconn
        pgconn.enter_pipeline_mode()
        entries: deque[_InFlight] = deque()
        for text, params in PIPELINED:
            pgconn.send_query_params(text, params)
            pgconn.pipeline_sync()
            entries.append(_InFlight())
        expected = list(entries)
        while pgconn.flush():
            select.select([], [pgconn.socket], [], 5)
        finished: list[_InFlight] = []
        started = monotonic()
        while entries and monotonic() - started < 10:
            select.select([pgconn.socket], [], [], 1)
            pgconn.consume_input()
            engine.read_results(pgconn, entries, finished.append)
        pgconn.exit_pipeline_mode()
    assert finished == expected  # in order, each once
    assert [_summary(e) for e in finished] == [
        ("rows", 1, b"1"),
        ("error", b"22012"),
        ("rows", 3, b"1"),
        ("error", b"42601"),
        ("rows", 1, b"last"),
    ]


async def test_a_parameter_that_cannot_be_sent_fails_only_its_caller(pg_url: str) -> None:
    async with create_async_pool(pg_url, pool_size=1) as db:
        slow = asyncio.ensure_future(db.query_value(sql("SELECT pg_sleep(0.2), {}::int", 1)))
        await _in_flight(db, 1)
        with pytest.raises(psycopg.ProgrammingError, match="cannot adapt"):
            await db.query(sql("SELECT {}", object()))
        with pytest.raises(psycopg.ProgrammingError, match="cannot adapt"):
            await db.query(sql("SELECT {}", object()))
        assert await db.query_value(sql("SELECT {}::int", 2)) == 2
        await slow
        assert db.stats()["in_use"] == 0


async def test_pipelined_callers_wait_at_most_queue_timeout(pg_url: str) -> None:
    from pgfast._exceptions import PoolTimeoutError

    async with create_async_pool(pg_url, pool_size=1, queue_timeout=0.3) as db:
        async with db.connection():
            started = monotonic()
            outcomes = await asyncio.gather(
                *(db.query_value(sql("SELECT {}::int", i)) for i in range(3)),
                return_exceptions=True,
            )
            assert all(isinstance(o, PoolTimeoutError) for o in outcomes), outcomes
            assert monotonic() - started < 2
        assert await asyncio.gather(
            *(db.query_value(sql("SELECT {}::int", i)) for i in range(3))
        ) == [0, 1, 2]
