"""The sync cluster (and the sans-IO routing parts) on a real primary + 2 streaming replicas.

Routing is observed through each pool's ``on_query_start`` hook. Tests that
stop or pause a server of the shared ``pg_cluster`` put it back in ``finally``.
"""

from __future__ import annotations

import contextvars
import gc
import os
import signal
import threading
import time
import tracemalloc
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
import pytest
from conftest import twin
from hypothesis import given, settings
from hypothesis import strategies as st

import pgfast
from pgfast import _cluster_sync, _impl
from pgfast._cluster_common import (
    STATUS_SQL,
    ClusterState,
    Failure,
    classify_failure,
    create_cluster,
    format_lsn,
    is_read_only,
    parse_lsn,
)
from pgfast._cluster_sync import Cluster
from pgfast._pool import create_async_pool, create_pool
from pgfast._sql import sql
from pgfast.testing import LocalCluster

nodb = pytest.mark.nodb
FAKE_URL = "postgresql://nobody@127.0.0.1:1/none"


class Recorder:
    """Statement texts seen by each node's pool; node 0 is the primary."""

    def __init__(self, nodes: int) -> None:
        self.texts: list[list[str]] = [[] for _ in range(nodes)]
        self.errors: list[list[str | None]] = [[] for _ in range(nodes)]

    def start_hook(self, node: int) -> Any:
        return lambda q, text, params: self.texts[node].append(text)

    def error_hook(self, node: int) -> Any:
        return lambda q, text, params, exc: self.errors[node].append(exc.sqlstate)

    def counts(self, needle: str) -> list[int]:
        return [sum(needle in t for t in texts) for texts in self.texts]


P = TypeVar("P")


def recorded_pools(pg_cluster: LocalCluster, rec: Recorder, create: Callable[..., P]) -> list[P]:
    """A pool per node (``create_pool`` or ``create_async_pool``), primary first,
    whose statements and errors ``rec`` records."""
    urls = [pg_cluster.primary_url, *pg_cluster.replica_urls]
    return [
        create(
            url,
            on_query_start=rec.start_hook(n),
            on_query_error=rec.error_hook(n),
            connect_timeout=2,
        )
        for n, url in enumerate(urls)
    ]


def make_cluster(pg_cluster: LocalCluster, rec: Recorder, **options: Any) -> Cluster:
    pools = recorded_pools(pg_cluster, rec, create_pool)
    cluster = create_cluster(pools[0], pools[1:], **options)
    assert isinstance(cluster, Cluster)
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
def db(pg_cluster: LocalCluster, rec: Recorder) -> Iterator[Cluster]:
    with make_cluster(pg_cluster, rec) as cluster:
        yield cluster


def wait_until(what: str, check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def server_pid(url: str, query: str) -> int:
    """The pid of the process of the server at ``url`` found by ``query`` (one row)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None, query
    return int(row[0])


PROBE_BACKEND = (
    "SELECT pid FROM pg_stat_activity WHERE query = "
    + psycopg.sql.quote(STATUS_SQL.decode())
    + " AND pid <> pg_backend_pid()"
)
WAL_RECEIVER = "SELECT pid FROM pg_stat_wal_receiver"


def dispose_within(cluster: Cluster, seconds: float) -> float:
    """Dispose ``cluster`` in a thread; fail (instead of hanging) when it takes longer."""
    started = time.monotonic()
    thread = threading.Thread(target=cluster.dispose, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"dispose() still running after {seconds} s"
    return time.monotonic() - started


# -- no server needed ----------------------------------------------------------


@nodb
def test_create_cluster_checks_its_arguments() -> None:
    sync_pools = [create_pool(FAKE_URL) for _ in range(2)]
    async_pool = create_async_pool(FAKE_URL)
    with pytest.raises(ValueError, match="at least one replica"):
        create_cluster(sync_pools[0], [])
    with pytest.raises(TypeError, match=r"all sync .* or all async"):
        create_cluster(sync_pools[0], [async_pool])
    with pytest.raises(TypeError, match="replicas must be a list"):
        create_cluster(sync_pools[0], sync_pools[1])  # type: ignore[arg-type]
    # The selector tracks 64 nodes, the primary included.
    with pytest.raises(ValueError, match="at most 63 replicas, got 64"):
        create_cluster(sync_pools[0], [sync_pools[1]] * 64)
    with pytest.raises(ValueError, match="balance must be one of"):
        create_cluster(sync_pools[0], sync_pools[1:], balance="fastest")  # type: ignore[call-overload]
    for bad in (0, -1, "1", True):
        with pytest.raises(ValueError, match="max_replica_lag"):
            create_cluster(sync_pools[0], sync_pools[1:], max_replica_lag=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="health_check_interval"):
        create_cluster(sync_pools[0], sync_pools[1:], health_check_interval=0)
    for wrong in (0, -1.5, "30", None, True):
        with pytest.raises(ValueError, match="failover_timeout must be a number of seconds"):
            create_cluster(sync_pools[0], sync_pools[1:], failover_timeout=wrong)  # type: ignore[arg-type]
    with create_cluster(sync_pools[0], sync_pools[1:]) as cluster:
        assert isinstance(cluster, Cluster)
        assert cluster.primary is sync_pools[0]
        assert cluster.replicas == sync_pools[1:]
        with pytest.raises(TypeError, match=r"build queries with pgfast\.sql"):
            cluster.query("SELECT 1")  # type: ignore[arg-type]
    with pytest.raises(pgfast.PoolClosedError):
        cluster.query(sql("SELECT 1"))


READ_ONLY_CASES = [
    ("SELECT 1", True),
    ("/* DELETE */ SELECT 'INSERT'", True),
    ("WITH x AS (SELECT 1) SELECT * FROM x", True),
    ("SELECT * FROM t FOR UPDATE", False),
    ("SELECT nextval('s')", False),
    ("INSERT INTO t VALUES (1)", False),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", False),
    ("SELECT 1 INTO t2", False),
]


@nodb
@pytest.mark.parametrize(("text", "expected"), READ_ONLY_CASES)
def test_is_read_only_wrapper_agrees_with_both_twins(text: str, expected: bool, impl: str) -> None:
    assert is_read_only(sql.unsafe(text)) is expected
    assert twin("_classify", impl).is_read_only(text) is expected


@nodb
def test_is_read_only_takes_sql_queries_only() -> None:
    with pytest.raises(TypeError, match=r"build queries with pgfast\.sql"):
        is_read_only("SELECT 1")  # type: ignore[arg-type]
    # Parameters never change the answer: only the text is classified.
    assert is_read_only(sql("SELECT * FROM t WHERE note = {}", "DELETE FROM t"))


@nodb
@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="SELCTINRUPDAFOWH ;'\"$-/*()1x\n", max_size=60))
def test_is_read_only_wrapper_is_the_classifier(text: str) -> None:
    assert is_read_only(sql.unsafe(text)) is bool(_impl.classify.is_read_only(text))


@nodb
@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_lsn_round_trip(lsn: int) -> None:
    assert parse_lsn(format_lsn(lsn)) == lsn


@nodb
def test_lsn_parsing() -> None:
    assert parse_lsn("16/B374D848") == 0x16_B374D848
    assert parse_lsn("0/0") == 0
    for bad in ("", "16", "16/", "/1", "G/1", "1/2/3", "123456789/0", " 0/1", "0/1\n"):
        with pytest.raises(ValueError, match="invalid write token"):
            parse_lsn(bad)
    with pytest.raises(TypeError, match="write token is a str"):
        parse_lsn(5)  # type: ignore[arg-type]


E = psycopg.errors
FAILURES: list[tuple[BaseException, Failure]] = [
    # the node cannot be reached or used
    (pgfast.PoolTimeoutError("busy"), Failure.NODE_DOWN),
    (pgfast.PoolClosedError("closed"), Failure.NODE_DOWN),
    (psycopg.OperationalError("server closed the connection unexpectedly"), Failure.NODE_DOWN),
    (E.ConnectionFailure(), Failure.NODE_DOWN),  # 08006
    (E.ProtocolViolation(), Failure.NODE_DOWN),  # 08P01
    (E.AdminShutdown(), Failure.NODE_DOWN),  # 57P01
    (E.CrashShutdown(), Failure.NODE_DOWN),  # 57P02
    (E.CannotConnectNow(), Failure.NODE_DOWN),  # 57P03
    (E.DatabaseDropped(), Failure.NODE_DOWN),  # 57P04
    (E.IdleSessionTimeout(), Failure.NODE_DOWN),  # 57P05
    # only the primary can run it
    (E.ReadOnlySqlTransaction(), Failure.RERUN_ON_PRIMARY),  # 25006
    (E.FeatureNotSupported(), Failure.RERUN_ON_PRIMARY),  # 0A000
    (E.SerializationFailure(), Failure.RERUN_ON_PRIMARY),  # 40001
    (E.DeadlockDetected(), Failure.RERUN_ON_PRIMARY),  # 40P01
    (E.LockNotAvailable(), Failure.RERUN_ON_PRIMARY),  # 55P03
    # the query's own: psycopg makes classes 53-58 OperationalError, yet the node is fine
    (E.QueryCanceled(), Failure.QUERY_ERROR),  # 57014
    (E.OutOfMemory(), Failure.QUERY_ERROR),  # 53200
    (E.DiskFull(), Failure.QUERY_ERROR),  # 53100
    (E.ProgramLimitExceeded(), Failure.QUERY_ERROR),  # 54000
    (E.ObjectNotInPrerequisiteState(), Failure.QUERY_ERROR),  # 55000
    (E.IoError(), Failure.QUERY_ERROR),  # 58030
    (E.SyntaxError(), Failure.QUERY_ERROR),
    (E.UndefinedTable(), Failure.QUERY_ERROR),
    (psycopg.InterfaceError("the cursor is closed"), Failure.QUERY_ERROR),
    (ValueError(), Failure.QUERY_ERROR),
]


@nodb
@pytest.mark.parametrize(("exc", "expected"), FAILURES, ids=[type(e).__name__ for e, _ in FAILURES])
def test_failure_classification(exc: BaseException, expected: Failure) -> None:
    assert classify_failure(exc) is expected


@nodb
def test_read_after_rejects_bad_tokens() -> None:
    with create_cluster(create_pool(FAKE_URL), [create_pool(FAKE_URL)]) as cluster:
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
def test_a_misspelt_bulk_option_is_rejected_as_by_a_pool(
    method: str, args: tuple[Any, ...], options: dict[str, Any]
) -> None:
    misspelt = next(name for name in options if name not in ("where_columns", "set_columns"))
    pool = create_pool(FAKE_URL)
    with create_cluster(pool, [create_pool(FAKE_URL)]) as cluster:
        for db, owner in ((pool, "BulkMixin"), (cluster, "Cluster")):
            # Raised by the call itself: nothing is routed, no connection is asked for.
            message = rf"{owner}\.{method}\(\) got an unexpected keyword argument '{misspelt}'"
            with pytest.raises(TypeError, match=message):
                getattr(db, method)("t", *args, **options)


# -- routing -------------------------------------------------------------------


def test_routing(db: Cluster, rec: Recorder, table: str) -> None:
    tag = "/* routing */ "
    assert db.query(sql.unsafe(tag + f"SELECT count(*) AS n FROM {table}")) == [{"n": 10}]
    assert db.query_one(sql.unsafe(tag + f"SELECT id FROM {table} WHERE id = 1")) == {"id": 1}
    assert db.query_value(sql.unsafe(tag + f"SELECT max(id) FROM {table}")) == 10
    assert [r["id"] for r in db.query_stream(sql.unsafe(tag + f"SELECT id FROM {table}"), 3)] == [
        *range(1, 11)
    ]
    assert db.query([sql.unsafe(tag + "SELECT 1 AS a"), sql.unsafe(tag + "SELECT 2 AS a")]) == [
        [{"a": 1}],
        [{"a": 2}],
    ]
    assert db.tx(lambda tx: tx.query_value(sql.unsafe(tag + "SELECT 3")), read_only=True) == 3
    with db.transaction(read_only=True) as tx:
        assert tx.query_value(sql.unsafe(tag + "SELECT 4")) == 4
    primary, r0, r1 = rec.counts(tag)
    assert primary == 0
    assert r0 + r1 == 8 and r0 >= 3 and r1 >= 3  # round robin over both replicas

    write = "/* writes */ "
    db.execute(sql.unsafe(write + f"UPDATE {table} SET note = 'x' WHERE id = 1"))
    db.query(sql.unsafe(write + f"INSERT INTO {table} VALUES (11, 'q') RETURNING id"))
    db.query(
        [sql.unsafe(write + "SELECT 1"), sql.unsafe(write + f"DELETE FROM {table} WHERE id = 11")]
    )
    assert db.execute(sql.unsafe(write + "SELECT 1")) == 1  # execute always goes to the primary
    db.tx(lambda tx: tx.query(sql.unsafe(write + "SELECT 5")))
    with db.transaction() as tx:
        tx.query(sql.unsafe(write + "SELECT 6"))
    db.task(lambda conn: conn.query(sql.unsafe(write + "SELECT 7")))
    with db.connection() as conn:
        conn.query(sql.unsafe(write + "SELECT 8"))
    assert list(db.query_stream(sql.unsafe(write + "SELECT txid_current()")))
    assert rec.counts(write)[1:] == [0, 0]
    assert rec.counts(write)[0] == 10

    stats = db.stats()
    assert stats["primary"]["routed"] == 9
    assert sum(r["routed"] for r in stats["replicas"]) == 7
    assert all(r["up"] and r["in_flight"] == 0 for r in stats["replicas"])
    assert stats["primary"]["queries"] >= 10  # the pool's own stats are included


def test_round_robin_spreads_reads_evenly(db: Cluster, rec: Recorder) -> None:
    for i in range(1000):
        db.query(sql("/* spread */ SELECT {}::int", i))
    assert rec.counts("/* spread */") == [0, 500, 500]


def test_query_errors_do_not_take_a_replica_out(db: Cluster, rec: Recorder) -> None:
    for _ in range(4):
        with pytest.raises(psycopg.errors.SyntaxError):
            db.query(sql("/* bad */ SELECT FROM WHERE"))
    assert rec.counts("/* bad */") == [0, 2, 2]  # not retried anywhere
    assert all(r["up"] for r in db.stats()["replicas"])


def test_resource_and_limit_errors_do_not_take_a_replica_out(
    db: Cluster, rec: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    # SQLSTATE 54000, an OperationalError to psycopg: the query's fault, not the node's.
    huge = sql("/* huge */ SELECT array_fill(1, ARRAY[{}::int])", 2_000_000_000)
    for _ in range(2):
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            db.query(huge)
    assert rec.counts("/* huge */") == [0, 1, 1]  # raised, not re-run elsewhere
    assert all(r["up"] for r in db.stats()["replicas"])
    assert "left rotation" not in caplog.text


def test_functions_running_sql_text_never_reach_a_replica(
    pg_cluster: LocalCluster, db: Cluster, rec: Recorder
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
        db.query(sql.unsafe("/* sql text */ " + text))
    assert rec.counts("/* sql text */") == [3, 0, 0]
    for url in pg_cluster.replica_urls:
        with psycopg.connect(url, autocommit=True) as conn:
            locks = (
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid IN (42, 43)"
            )
            assert conn.execute(locks).fetchone() == (0,)
            apps = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            assert conn.execute(apps, [app]).fetchone() == (0,)


def test_read_only_serializable_transactions_run_on_the_primary(db: Cluster, rec: Recorder) -> None:
    level = sql.unsafe("/* level */ SELECT current_setting('transaction_isolation')")
    assert db.tx(lambda tx: tx.query_value(level), read_only=True, isolation_level="serializable")
    with db.transaction(
        read_only=True, isolation_level=pgfast.IsolationLevel.SERIALIZABLE, deferrable=True
    ) as tx:
        assert tx.query_value(level) == "serializable"
    assert rec.counts("/* level */") == [2, 0, 0]
    # Other read-only levels still run on replicas.
    value = db.tx(
        lambda tx: tx.query_value(level), read_only=True, isolation_level="repeatable read"
    )
    assert value == "repeatable read"
    assert rec.counts("/* level */")[0] == 2
    assert rec.errors == [[], [], []]


def test_a_transaction_refused_before_it_starts_runs_on_the_primary(
    db: Cluster, rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Were SERIALIZABLE routed to a replica, its BEGIN would fail there (0A000)
    # before the function starts: the primary then runs the transaction.
    monkeypatch.setattr(_cluster_sync, "_replica_tx", lambda opts: bool(opts.get("read_only")))
    level = sql.unsafe("/* begin */ SELECT current_setting('transaction_isolation')")
    options: dict[str, Any] = {"read_only": True, "isolation_level": "serializable"}
    assert db.tx(lambda tx: tx.query_value(level), **options) == "serializable"
    with db.transaction(**options) as tx:
        assert tx.query_value(level) == "serializable"
    assert rec.counts("/* begin */") == [2, 0, 0]
    assert all(r["up"] for r in db.stats()["replicas"])


def test_reads_of_unlogged_tables_run_on_the_primary(
    pg_cluster: LocalCluster, db: Cluster, rec: Recorder, table: str
) -> None:
    unlogged = f"{table}_unlogged"
    with psycopg.connect(pg_cluster.primary_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE UNLOGGED TABLE {unlogged} AS SELECT g AS id FROM generate_series(1, 5) g"
        )
    pg_cluster.wait_for_replicas()
    try:
        q = sql.unsafe(f"/* unlogged */ SELECT count(*) FROM {unlogged}")
        assert db.query_value(q) == 5
        assert db.query([q, q]) == [[{"count": 5}], [{"count": 5}]]
        stream = sql.unsafe(f"/* unlogged */ SELECT id FROM {unlogged} ORDER BY id")
        assert [r["id"] for r in db.query_stream(stream, 2)] == [1, 2, 3, 4, 5]
        served = rec.counts("/* unlogged */")
        assert (
            served[0] == 4 and served[1] + served[2] >= 3
        )  # every read refused by a replica first
        assert set(rec.errors[1] + rec.errors[2]) == {"0A000"}
        assert all(r["up"] for r in db.stats()["replicas"])
        # Once the function has started on the replica, its error is raised.
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            db.tx(lambda tx: tx.query_value(q), read_only=True)
        with (
            pytest.raises(psycopg.errors.FeatureNotSupported),
            db.transaction(read_only=True) as tx,
        ):
            tx.query_value(q)
        assert rec.counts("/* unlogged */")[0] == 4
    finally:
        with psycopg.connect(pg_cluster.primary_url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {unlogged}")


def test_a_write_refused_by_a_replica_runs_on_the_primary(
    pg_cluster: LocalCluster, db: Cluster, rec: Recorder, table: str
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
    assert db.query_value(q) == 42
    sent = rec.counts(f"{function}(")
    assert sent[0] == 1 and sent[1] + sent[2] == 1
    assert rec.errors[1] + rec.errors[2] == ["25006"]
    assert (
        db.primary.query_value(sql.unsafe(f"SELECT count(*) FROM {table} WHERE note = 'fn'")) == 1
    )
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


def test_writes_never_reach_a_replica(db: Cluster, rec: Recorder, table: str) -> None:
    for template in WRITES:
        q = sql.unsafe(template.format(t=table))
        assert not is_read_only(q), template
        db.query(q)
    with db.connection() as conn:
        conn.query(sql.unsafe("SELECT 1"))
    assert rec.texts[1] == rec.texts[2] == []
    assert rec.errors == [[], [], []]


def test_bulk_writes_go_to_the_primary_and_bulk_select_to_a_replica(
    pg_cluster: LocalCluster, db: Cluster, rec: Recorder, table: str
) -> None:
    records = [{"id": 100 + i, "note": f"bulk {i}"} for i in range(5)]
    db.bulk_insert(table, records)
    db.bulk_update(
        table,
        [{"where": {"id": 100}, "set": {"note": "changed"}}],
        where_columns=["id"],
        set_columns=["note"],
    )
    assert db.copy_in(table, [(200, "copied")], columns=["id", "note"]) == 1
    assert db.bulk_delete(table, [{"id": 104}], where_columns=["id"]) == 1
    assert db.primary.query_value(sql.unsafe(f"SELECT count(*) FROM {table} WHERE id >= 100")) == 5
    written = [sum(table in t for t in texts) for texts in rec.texts]
    assert written[0] >= 4 and written[1:] == [0, 0]  # COPY is not a hooked query

    pg_cluster.wait_for_replicas()
    rows = db.bulk_select(
        table, [{"id": 100}, {"id": 101}, {"id": 200}], where_columns=["id"], order_by=["-id"]
    )
    assert [(r["id"], r["note"]) for r in rows] == [
        (200, "copied"),
        (101, "bulk 1"),
        (100, "changed"),
    ]
    after = [sum(table in t for t in texts) for texts in rec.texts]
    assert after[0] == written[0] and after[1] + after[2] >= 1  # the select ran on a replica


# -- replica health --------------------------------------------------------------


def test_stopped_replica_fails_no_read_and_rejoins(pg_cluster: LocalCluster, rec: Recorder) -> None:
    failures: list[BaseException] = []
    reads = [0]
    stop = threading.Event()
    with make_cluster(pg_cluster, rec, health_check_interval=0.2) as db:

        def reader() -> None:
            while not stop.is_set():
                try:
                    assert db.query_value(sql("/* load */ SELECT {}::int", 1)) == 1
                    reads[0] += 1
                except BaseException as exc:
                    failures.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            wait_until("reads on both replicas", lambda: min(rec.counts("/* load */")[1:]) > 20)
            pg_cluster.stop_replica(1)
            wait_until("replica 1 out", lambda: not db.stats()["replicas"][1]["up"])
            before = reads[0]
            wait_until("reads going on", lambda: reads[0] > before + 200)
            on_stopped = rec.counts("/* load */")[2]
            pg_cluster.start_replica(1)
            wait_until("replica 1 back", lambda: db.stats()["replicas"][1]["up"])
            wait_until(
                "reads on replica 1 again", lambda: rec.counts("/* load */")[2] > on_stopped + 20
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            pg_cluster.start_replica(1)
        assert failures == []
        assert db.stats()["replicas"][0]["up"]
        health = [t for t in threading.enumerate() if t.name == "pgfast-cluster-health"]
        assert health and all(t.daemon for t in health)
    assert not any(t.is_alive() for t in health)  # dispose stopped the health thread


def test_all_replicas_down_falls_back_to_the_primary(rec: Recorder) -> None:
    with LocalCluster(replicas=1) as own:
        urls = [own.primary_url, *own.replica_urls]
        pools = [
            create_pool(u, on_query_start=rec.start_hook(n), queue_timeout=2)
            for n, u in enumerate(urls)
        ]
        with create_cluster(pools[0], pools[1:], health_check_interval=0.2) as db:
            assert db.query_value(sql("/* one */ SELECT 1")) == 1
            own.stop_replica(0)
            for _ in range(20):
                assert db.query_value(sql("/* one */ SELECT 1")) == 1
            assert rec.counts("/* one */")[0] == 20
        pools = [create_pool(u, queue_timeout=2) for u in urls]
        with (
            create_cluster(pools[0], pools[1:], fallback_to_primary=False) as strict,
            pytest.raises(pgfast.Error, match="fallback_to_primary is False"),
        ):
            strict.query(sql("SELECT 1"))


# -- lag and read-your-writes ----------------------------------------------------------


def test_lagging_replica_is_skipped(pg_cluster: LocalCluster, rec: Recorder, table: str) -> None:
    with make_cluster(pg_cluster, rec, max_replica_lag=0.5, health_check_interval=0.1) as db:
        # Until the health checks (started by the first operation) have measured
        # the lag, reads go to the primary.
        db.query(sql.unsafe("/* unknown */ SELECT 1"))
        wait_until("lag measured", lambda: all(r["lag"] == 0 for r in db.stats()["replicas"]))
        pg_cluster.pause_replay(0)
        try:
            db.execute(sql.unsafe(f"UPDATE {table} SET note = 'lag' WHERE id = 2"))
            wait_until("replica 0 behind", lambda: (db.stats()["replicas"][0]["lag"] or 0) > 0.5)
            for _ in range(50):
                db.query(sql.unsafe("/* fresh */ SELECT 1"))
            assert rec.counts("/* fresh */") == [0, 0, 50]
            assert rec.counts("/* unknown */")[0] <= 1
        finally:
            pg_cluster.resume_replay(0)
        wait_until("replica 0 caught up", lambda: db.stats()["replicas"][0]["lag"] == 0)
        for _ in range(10):
            db.query(sql.unsafe("/* again */ SELECT 1"))
        assert rec.counts("/* again */") == [0, 5, 5]


def test_first_reads_wait_for_lag_to_be_measured_without_a_fallback(
    pg_cluster: LocalCluster, rec: Recorder
) -> None:
    # Until the first health round no replica is known to be close enough; with
    # no fallback to the primary, a read waits for that round instead of failing.
    with make_cluster(pg_cluster, rec, max_replica_lag=5, fallback_to_primary=False) as db:
        assert db.query_value(sql.unsafe("/* first */ SELECT 1")) == 1
        assert rec.counts("/* first */")[0] == 0
        assert sum(rec.counts("/* first */")) == 1


def test_read_your_writes_with_replay_paused(
    pg_cluster: LocalCluster, rec: Recorder, table: str
) -> None:
    with make_cluster(pg_cluster, rec, read_your_writes=True) as db:
        pg_cluster.pause_replay(0)
        pg_cluster.pause_replay(1)
        try:
            assert db.write_token() is None
            db.execute(sql.unsafe(f"INSERT INTO {table} VALUES (500, 'mine')"))
            token = db.write_token()
            assert token is not None and parse_lsn(token) > 0
            q = sql.unsafe(f"/* mine */ SELECT note FROM {table} WHERE id = 500")
            assert db.query(q) == [{"note": "mine"}]
            assert rec.counts("/* mine */") == [1, 0, 0]
            # Another thread has its own context: no token, reads go to replicas.
            other: list[Any] = []
            thread = threading.Thread(target=lambda: other.append(db.query(q)))
            thread.start()
            thread.join()
            assert other == [[]]
            # The token carries the write to another cluster object (another process).
            rec2 = Recorder(3)
            with make_cluster(pg_cluster, rec2) as db2:
                assert db2.query(q) == []
                with db2.read_after(token):
                    assert db2.query(q) == [{"note": "mine"}]
                assert rec2.counts("/* mine */")[0] == 1
        finally:
            pg_cluster.resume_replay(0)
            pg_cluster.resume_replay(1)
        pg_cluster.wait_for_replicas()
        # Once replayed, the replicas serve this context's reads again.
        before = sum(rec.counts("/* mine */")[1:])
        for _ in range(4):
            assert db.query(q) == [{"note": "mine"}]
        assert sum(rec.counts("/* mine */")[1:]) == before + 4
        assert rec.counts("/* mine */")[0] == 1


def test_read_your_writes_after_transactions(
    pg_cluster: LocalCluster, rec: Recorder, table: str
) -> None:
    with make_cluster(pg_cluster, rec, read_your_writes=True) as db:
        pg_cluster.pause_replay(0)
        pg_cluster.pause_replay(1)
        try:
            db.tx(lambda tx: tx.execute(sql.unsafe(f"INSERT INTO {table} VALUES (600, 'tx')")))
            first = db.write_token()
            assert first is not None
            with db.transaction() as tx:
                tx.execute(sql.unsafe(f"INSERT INTO {table} VALUES (601, 'block')"))
            second = db.write_token()
            assert second is not None and parse_lsn(second) > parse_lsn(first)
            rows = db.tx(
                lambda tx: tx.query(
                    sql.unsafe(f"SELECT id FROM {table} WHERE id >= 600 ORDER BY id")
                ),
                read_only=True,
            )
            assert rows == [{"id": 600}, {"id": 601}]
        finally:
            pg_cluster.resume_replay(0)
            pg_cluster.resume_replay(1)


# -- bounded health probes, lag against the primary, no per-cluster leaks ----------------


def test_a_stopped_probe_backend_hangs_neither_dispose_nor_the_other_probes(
    pg_cluster: LocalCluster, rec: Recorder, table: str
) -> None:
    db = make_cluster(pg_cluster, rec, health_check_interval=0.2)
    stopped: int | None = None
    try:
        db.query(sql("SELECT 1"))  # starts the health checks
        wait_until("lag measured", lambda: all(r["lag"] == 0 for r in db.stats()["replicas"]))
        stopped = server_pid(pg_cluster.replica_urls[0], PROBE_BACKEND)
        os.kill(stopped, signal.SIGSTOP)
        wait_until("replica 0 out", lambda: not db.stats()["replicas"][0]["up"], timeout=10)
        # Replica 1 is still probed: its replay position follows a new write.
        db.execute(sql.unsafe(f"UPDATE {table} SET note = 'probe' WHERE id = 3"))
        written = db.primary.query_value(sql("SELECT pg_current_wal_lsn()::text"))
        wait_until(
            "replica 1 probed",
            lambda: parse_lsn(db.stats()["replicas"][1]["replay_lsn"]) >= parse_lsn(written),
            timeout=10,
        )
        assert db.stats()["replicas"][1]["up"]
        assert dispose_within(db, 5) < 5
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        db.dispose()


def test_lag_is_measured_against_the_primary() -> None:
    rec = Recorder(2)
    with LocalCluster(replicas=1) as own:
        urls = [own.primary_url, *own.replica_urls]
        pools = [
            create_pool(u, on_query_start=rec.start_hook(n), connect_timeout=2)
            for n, u in enumerate(urls)
        ]
        with create_cluster(
            pools[0], pools[1:], max_replica_lag=0.5, health_check_interval=0.1
        ) as db:
            with psycopg.connect(own.primary_url, autocommit=True) as conn:
                conn.execute("CREATE TABLE lagged (id int PRIMARY KEY)")
            own.wait_for_replicas()
            db.query(sql("SELECT 1"))
            wait_until("lag measured", lambda: db.stats()["replicas"][0]["lag"] == 0)
            # An idle primary: a replica that replayed everything is not behind.
            time.sleep(1.0)
            assert db.stats()["replicas"][0]["lag"] == 0
            assert db.query_value(sql("/* idle */ SELECT count(*) FROM lagged")) == 0
            assert rec.counts("/* idle */") == [0, 1]

            # A stalled WAL receiver: the replica has replayed all it received.
            receiver = server_pid(own.replica_urls[0], WAL_RECEIVER)
            os.kill(receiver, signal.SIGSTOP)
            try:
                db.execute(sql("INSERT INTO lagged VALUES (1)"))
                wait_until("lag > 0.5", lambda: (db.stats()["replicas"][0]["lag"] or 0) > 0.5)
                for _ in range(5):
                    q = sql("/* stalled */ SELECT count(*) FROM lagged")
                    assert db.query_value(q) == 1  # never the replica's stale 0
                assert rec.counts("/* stalled */") == [5, 0]
            finally:
                os.kill(receiver, signal.SIGCONT)
            wait_until("caught up", lambda: db.stats()["replicas"][0]["lag"] == 0)

            # Paused replay.
            own.pause_replay(0)
            try:
                db.execute(sql("INSERT INTO lagged VALUES (2)"))
                wait_until("lag > 0.5", lambda: (db.stats()["replicas"][0]["lag"] or 0) > 0.5)
                assert db.query_value(sql("/* paused */ SELECT count(*) FROM lagged")) == 2
                assert rec.counts("/* paused */") == [1, 0]
            finally:
                own.resume_replay(0)
            wait_until("caught up", lambda: db.stats()["replicas"][0]["lag"] == 0)
            assert db.query_value(sql("/* resumed */ SELECT count(*) FROM lagged")) == 2
            assert rec.counts("/* resumed */") == [0, 1]


def status(replay: str, age: float | None = None, receiver: str | None = "streaming") -> list[Any]:
    """A STATUS_SQL row of a standby."""
    return ["true", "on", replay, None if age is None else str(age), receiver, None]


def writable(position: str, timeline: int = 1) -> list[Any]:
    """A STATUS_SQL row of a primary."""
    return ["false", "off", position, None, None, f"{timeline:08X}"]


@nodb
def test_lag_rules() -> None:
    state = ClusterState(1, "round_robin", 1.0, False, True)
    state.record_status(1, status("0/100"), 10.0, 10.0)
    assert state.lag == [None, None]  # the primary's position is not known yet
    state.record_status(0, writable("0/100"), 10.0, 10.0)
    state.record_status(1, status("0/100", age=3600.0), 10.5, 10.5)
    assert state.lag == [0.0, 0.0]  # caught up: an old last commit means an idle primary
    assert state.eligible(0) == 0b10
    state.record_status(0, writable("0/200"), 11.0, 11.0)
    state.record_status(1, status("0/100", age=3600.0), 12.5, 12.5)
    assert state.lag[1] == 2.5  # last seen caught up at 10.0
    assert state.eligible(0) == 0
    state.record_status(1, status("0/180", age=0.25), 12.6, 12.6)
    assert state.lag[1] == 0.25  # its last replayed commit is a tighter bound
    state.record_status(1, status("0/200", receiver=None), 12.7, 12.7)
    assert state.lag[1] is None  # no WAL receiver: it cannot keep up
    state.record_status(1, status("0/200", receiver="unknown"), 12.8, 12.8)
    assert state.lag[1] == 0.0  # receiver hidden from this role: the positions decide
    assert state.writer == 0
    state.record_status(1, writable("0/210", timeline=2), 13.0, 13.0)
    assert state.writer == 1  # promoted: a higher timeline than the old primary's
    assert state.eligible(0) == 0  # a primary serves no reads as a replica
    assert [state.role(0), state.role(1)] == ["down", "primary"]


@nodb
def test_roles_follow_the_probes() -> None:
    state = ClusterState(2, "round_robin", None, False, True, ["p", "r0", "r1"])
    assert state.writer == 0 and state.replica_nodes() == [1, 2]
    assert [state.role(j) for j in range(3)] == ["primary", "replica", "replica"]
    # The given primary keeps its role until it has answered a probe.
    state.record_status(2, writable("0/300", timeline=2), 1.0, 1.0)
    assert state.writer == 0
    assert state.record_status(0, writable("0/200"), 1.0, 1.0) == 0  # changed, from node 0
    assert state.writer == 2 and state.primary == 2  # the highest timeline wins
    assert state.role(0) == "down"  # writable but not chosen: no writes, no reads
    assert state.replica_nodes() == [1]
    # The old primary goes away, then comes back in recovery: it serves reads.
    assert state.mark_down(0, "connection refused") is None  # the primary did not change
    assert "connection refused" in state.describe()
    state.record_status(0, status("0/300"), 2.0, 2.0)
    assert state.role(0) == "replica" and state.replica_nodes() == [1, 0]
    assert state.eligible(0) == 0b011
    # No writable node: no writer, but the last primary is remembered.
    assert state.mark_down(2, "no answer within 1 s") == 2
    assert state.writer == -1 and state.primary == 2
    assert state.describe() == (
        "p: standby (in recovery); r0: not probed yet; r1: down (no answer within 1 s)"
    )
    state.record_status(2, writable("0/310", timeline=2), 3.0, 3.0)
    assert state.writer == 2
    # Fenced with default_transaction_read_only: not in recovery, yet refusing writes.
    state.record_status(2, ["false", "on", "0/310", None, None, "00000002"], 4.0, 4.0)
    assert state.writer == -1 and state.role(2) == "down"
    assert "read-only" in state.describe()


@nodb
def test_many_clusters_leave_nothing_behind() -> None:
    def churn(count: int) -> list[weakref.ref[ClusterState]]:
        refs = []
        for _ in range(count):
            cluster = create_cluster(create_pool(FAKE_URL), [create_pool(FAKE_URL)])
            cluster._state.wrote("1/0")  # what a write with read_your_writes records
            with cluster.read_after("2/0"):
                assert cluster.write_token() == "2/0"
            assert cluster.write_token() == "1/0"
            refs.append(weakref.ref(cluster._state))
            cluster.dispose()
        return refs

    churn(10)
    gc.collect()
    variables = len(contextvars.copy_context())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        refs = churn(1000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(contextvars.copy_context()) <= variables + 1
    assert all(ref() is None for ref in refs)
    assert grown < 200_000, grown


def test_post_commit_error_of_a_replica_transaction_carries_its_result(db: Cluster) -> None:
    def work(tx: Any) -> Any:
        tx.add_post_commit_step(lambda: 1 / 0)
        return tx.query_value(sql("SELECT 41 + 1"))

    with pytest.raises(pgfast.PostCommitError) as info:
        db.tx(work, read_only=True)
    assert info.value.result == 42
    assert isinstance(info.value.__cause__, ZeroDivisionError)
