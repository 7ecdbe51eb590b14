"""pgfast.otel: spans and pool metrics, recorded by the OpenTelemetry SDK's in-memory exporters
against a real server."""

from __future__ import annotations

import asyncio
import itertools
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra's test dependencies")

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import pgfast
from pgfast import otel, sql

SECRET = "s3cret-value-§"


class Telemetry:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def instrument(self, db: Any, **kwargs: Any) -> None:
        otel.instrument(
            db, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **kwargs
        )

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], float]]]:
        found: dict[str, list[tuple[dict[str, Any], float]]] = {}
        data = self.reader.get_metrics_data()
        if data is None:  # nothing observed
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points = found.setdefault(metric.name, [])
                    for point in metric.data.data_points:
                        points.append((dict(point.attributes or {}), point.value))
        return found


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    t = Telemetry()
    yield t
    t.tracer_provider.shutdown()
    t.meter_provider.shutdown()


def _no_values(spans: list[ReadableSpan]) -> None:
    for span in spans:
        for value in (span.attributes or {}).values():
            assert SECRET not in str(value)
        assert SECRET not in (span.status.description or "")
        assert not span.events  # no exception events: their messages may quote values


def test_a_span_per_statement(pg_url: str, telemetry: Telemetry) -> None:
    with pgfast.create_pool(pg_url) as db:
        telemetry.instrument(db)
        port = int(pg_url.rsplit(":", 1)[1].split("/")[0])
        rows = db.query(sql("SELECT {}::text AS v, 1 AS n UNION ALL SELECT 'x', 2", SECRET))
        assert len(rows) == 2
        (span,) = telemetry.spans()
        assert span.name == "SELECT postgres"
        assert span.kind == SpanKind.CLIENT
        assert span.status.status_code == StatusCode.UNSET
        assert dict(span.attributes or {}) == {
            "db.system.name": "postgresql",
            "db.namespace": "postgres",
            "server.address": "127.0.0.1",
            "server.port": port,
            "db.query.text": "SELECT $1::text AS v, 1 AS n UNION ALL SELECT 'x', 2",
            "db.operation.name": "SELECT",
            "db.response.returned_rows": 2,
        }
        assert span.end_time is not None and span.start_time is not None
        assert span.end_time >= span.start_time
        _no_values(telemetry.spans())


def test_errors_carry_the_sqlstate(pg_url: str, telemetry: Telemetry) -> None:
    with pgfast.create_pool(pg_url) as db:
        telemetry.instrument(db)
        with pytest.raises(pgfast.errors.DivisionByZero):
            db.query(sql("SELECT 1 / ({}::int - 1)", 1))
        with pytest.raises(pgfast.errors.InvalidTextRepresentation):
            db.query(sql("SELECT {}::int", SECRET))
        first, second = telemetry.spans()
        assert first.status.status_code == StatusCode.ERROR
        assert first.attributes is not None
        assert first.attributes["db.response.status_code"] == "22012"
        assert first.attributes["error.type"] == "22012"
        assert second.attributes is not None
        assert second.attributes["db.response.status_code"] == "22P02"
        _no_values(telemetry.spans())


def test_a_span_per_statement_of_a_list(pg_url: str, telemetry: Telemetry) -> None:
    with pgfast.create_pool(pg_url) as db:
        telemetry.instrument(db)
        db.query([sql("SELECT {}::int AS a", 1), sql("VALUES ({}::text)", SECRET)])
        spans = telemetry.spans()
        assert [s.name for s in spans] == ["SELECT postgres", "VALUES postgres"]
        assert all(s.status.status_code == StatusCode.UNSET for s in spans)
        _no_values(spans)


def test_user_hooks_still_run_and_uninstrument_restores(pg_url: str, telemetry: Telemetry) -> None:
    seen: list[str] = []
    start = lambda q, text, params: seen.append("start")  # noqa: E731
    results = lambda q, text, params, rows: seen.append("results")  # noqa: E731
    error = lambda q, text, params, exc: seen.append("error")  # noqa: E731
    with pgfast.create_pool(
        pg_url, on_query_start=start, on_query_results=results, on_query_error=error
    ) as db:
        telemetry.instrument(db)
        telemetry.instrument(db)  # a second call does nothing
        db.query(sql("SELECT 1"))
        with pytest.raises(pgfast.errors.UndefinedTable):
            db.query(sql("SELECT * FROM otel_no_such_table"))
        assert seen == ["start", "results", "start", "error"]
        assert len(telemetry.spans()) == 2
        otel.uninstrument(db)
        assert (db._on_query_start, db._on_query_results, db._on_query_error) == (
            start,
            results,
            error,
        )
        db.query(sql("SELECT 1"))
        assert len(telemetry.spans()) == 2
        assert seen[-2:] == ["start", "results"]


def test_a_raising_user_hook_does_not_lose_the_span(pg_url: str, telemetry: Telemetry) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("user hook")

    with pgfast.create_pool(pg_url, on_query_start=broken, on_query_results=broken) as db:
        telemetry.instrument(db)
        assert db.query_value(sql("SELECT 7")) == 7
        (span,) = telemetry.spans()
        assert span.attributes is not None and span.attributes["db.operation.name"] == "SELECT"


def test_spans_are_children_of_the_current_span(pg_url: str, telemetry: Telemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("app")
    with pgfast.create_pool(pg_url) as db:
        telemetry.instrument(db)
        with tracer.start_as_current_span("request") as parent:
            db.query(sql("SELECT 1"))
        query_span = next(s for s in telemetry.spans() if s.name != "request")
        assert query_span.parent is not None
        assert query_span.parent.span_id == parent.get_span_context().span_id


async def test_async_pool_concurrent_tasks(pg_url: str, telemetry: Telemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("app")
    async with pgfast.create_async_pool(pg_url, pool_size=3) as db:
        telemetry.instrument(db)

        async def one(i: int) -> Any:
            with tracer.start_as_current_span(f"task {i}"):
                q = sql("SELECT {}::int AS ", i) + sql.unsafe(f"v{i}") + sql(" FROM pg_sleep(0.01)")
                return await db.query_value(q)

        assert await asyncio.gather(*(one(i) for i in range(8))) == list(range(8))
        spans = telemetry.spans()
        parents = {s.context.span_id: s.name for s in spans if s.name.startswith("task")}
        queries = [s for s in spans if not s.name.startswith("task")]
        assert len(queries) == 8
        for span in queries:
            assert span.attributes is not None
            text = str(span.attributes["db.query.text"])
            i = int(text.split("AS v", 1)[1].split()[0])
            assert span.parent is not None and parents[span.parent.span_id] == f"task {i}"
            assert span.attributes["db.response.returned_rows"] == 1


async def test_async_errors(pg_url: str, telemetry: Telemetry) -> None:
    async with pgfast.create_async_pool(pg_url) as db:
        telemetry.instrument(db)
        with pytest.raises(pgfast.errors.DivisionByZero):
            await db.query(sql("SELECT 1/0"))
        (span,) = telemetry.spans()
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes is not None and span.attributes["error.type"] == "22012"


def test_a_failed_commit_is_a_span(pg_url: str, telemetry: Telemetry) -> None:
    with pgfast.create_pool(pg_url) as db:
        db.query(sql("DROP TABLE IF EXISTS otel_deferred"))
        db.query(sql("CREATE TABLE otel_deferred (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)"))
        telemetry.instrument(db)
        with pytest.raises(pgfast.errors.UniqueViolation), db.transaction() as tx:
            tx.query(sql("INSERT INTO otel_deferred VALUES (1), (1)"))
        commit = [s for s in telemetry.spans() if s.name.startswith("COMMIT")]
        assert len(commit) == 1
        assert commit[0].attributes is not None
        assert commit[0].attributes["db.response.status_code"] == "23505"
        otel.uninstrument(db)
        db.query(sql("DROP TABLE otel_deferred"))


def test_pool_metrics(pg_url: str, telemetry: Telemetry) -> None:
    with pgfast.create_pool(pg_url, pool_size=4) as db:
        telemetry.instrument(db, name="main")
        db.query(sql("SELECT 1"))
        with db.connection() as conn:
            conn.query(sql("SELECT 1"))
            found = telemetry.metrics()
            stats = db.stats()
        pool = {"db.client.connection.pool.name": "main"}
        counts = found["db.client.connection.count"]
        assert ({**pool, "db.client.connection.state": "used"}, 1) in counts
        idle = [v for a, v in counts if a["db.client.connection.state"] == "idle"]
        assert idle == [stats["idle"]]
        assert found["db.client.connection.max"] == [(pool, 4)]
        assert found["db.client.connection.pending_requests"] == [(pool, 0)]
        otel.uninstrument(db)
        assert not any(points for points in telemetry.metrics().values())


def test_cluster_spans_name_the_node(pg_cluster: Any, telemetry: Telemetry) -> None:
    primary = pgfast.create_pool(pg_cluster.primary_url)
    replicas = [pgfast.create_pool(url) for url in pg_cluster.replica_urls]
    with pgfast.create_cluster(primary, replicas) as cluster:
        telemetry.instrument(cluster)
        cluster.query(sql("SELECT 1"))
        cluster.query(sql("CREATE TEMP TABLE otel_t (id int)"))
        read, write = telemetry.spans()
        assert read.attributes is not None and write.attributes is not None
        assert read.attributes["pgfast.cluster.node"] in ("replica 0", "replica 1")
        assert write.attributes["pgfast.cluster.node"] == "primary"
        assert write.attributes["db.operation.name"] == "CREATE"
        names = {
            a["db.client.connection.pool.name"]
            for a, _ in telemetry.metrics()["db.client.connection.max"]
        }
        assert len(names) == 3 and any(n.endswith(" primary") for n in names)
        otel.uninstrument(cluster)
        cluster.query(sql("SELECT 1"))
        assert len(telemetry.spans()) == 2


def test_nothing_is_imported_when_off(pg_url: str) -> None:
    code = (
        "import sys, pgfast\n"
        "from pgfast import sql\n"
        f"with pgfast.create_pool({pg_url!r}) as db:\n"
        "    db.query(sql('SELECT 1'))\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
        "assert 'pgfast.otel' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_not_a_pool() -> None:
    with pytest.raises(TypeError, match="takes a pgfast pool or cluster"):
        otel.instrument("postgresql://")  # type: ignore[arg-type]


def test_statements_whose_end_is_never_reported_are_bounded(
    pg_url: str, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(otel, "MAX_PENDING", 3)
    with pgfast.create_pool(pg_url) as db:
        telemetry.instrument(db)
        kept = [[i] for i in range(5)]
        for params in kept:  # started, as a cancelled statement would be, never ended
            db._on_query_start(sql("SELECT {}", params[0]), "SELECT $1", params)
        lost = telemetry.spans()
        assert len(lost) == 2
        assert all((s.attributes or {}).get("pgfast.span.end_unknown") for s in lost)
        otel.uninstrument(db)  # ends the rest
        assert len(telemetry.spans()) == 5


# -- every started statement ends: these need the pools to report each end ----------------


def test_execute_ends_its_span(pg_url: str, telemetry: Telemetry) -> None:
    with pgfast.create_pool(pg_url) as db:
        telemetry.instrument(db)
        db.execute(sql("SELECT 1"))
        assert [s.name for s in telemetry.spans()] == ["SELECT postgres"]


def test_stream_ends_its_span(pg_url: str, telemetry: Telemetry) -> None:
    with pgfast.create_pool(pg_url) as db:
        telemetry.instrument(db)
        assert len(list(db.query_stream(sql("SELECT generate_series(1, 10)")))) == 10
        assert [s.name for s in telemetry.spans()] == ["SELECT postgres"]


def test_a_failed_list_ends_every_span(pg_url: str, telemetry: Telemetry) -> None:
    with pgfast.create_pool(pg_url) as db:
        telemetry.instrument(db)
        with pytest.raises(pgfast.errors.DivisionByZero):
            db.query([sql("SELECT 1"), sql("SELECT 1/0"), sql("SELECT 3")])
        spans = telemetry.spans()
        assert len(spans) == 3
        codes = [(s.attributes or {}).get("db.response.status_code") for s in spans]
        assert "22012" in codes


async def test_a_cancelled_query_ends_its_span(pg_url: str, telemetry: Telemetry) -> None:
    async with pgfast.create_async_pool(pg_url) as db:
        telemetry.instrument(db)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(db.query(sql("SELECT pg_sleep(5)")), 0.2)
        (span,) = telemetry.spans()
        assert span.status.status_code == StatusCode.ERROR


# -- transactions --------------------------------------------------------------------------


def _by_id(spans: list[ReadableSpan]) -> dict[int, ReadableSpan]:
    return {s.context.span_id: s for s in spans}


def _children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def test_a_transaction_is_the_parent_of_its_statements(pg_url: str, telemetry: Telemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("app")
    port = int(pg_url.rsplit(":", 1)[1].split("/")[0])
    with pgfast.create_pool(pg_url) as db:
        telemetry.instrument(db)
        with tracer.start_as_current_span("request") as request:
            with db.transaction(isolation_level="repeatable_read", read_only=True) as tx:
                tx.query(sql("SELECT {}::text", SECRET))
                with tx.transaction() as savepoint:  # no span of its own
                    savepoint.query(sql("SELECT 2"))
            db.query(sql("SELECT 3"))  # after the block: no child of it
        spans = telemetry.spans()
        (transaction,) = [s for s in spans if s.name.startswith("TRANSACTION")]
        assert transaction.name == "TRANSACTION postgres"
        assert transaction.kind == SpanKind.INTERNAL
        assert transaction.status.status_code == StatusCode.UNSET
        assert transaction.parent is not None
        assert transaction.parent.span_id == request.get_span_context().span_id
        assert dict(transaction.attributes or {}) == {
            "db.system.name": "postgresql",
            "db.namespace": "postgres",
            "server.address": "127.0.0.1",
            "server.port": port,
            "pgfast.transaction.isolation_level": "repeatable read",
            "pgfast.transaction.read_only": True,
            "pgfast.transaction.attempt": 1,
        }
        inside = _children(spans, transaction)
        assert [(s.attributes or {})["db.query.text"] for s in inside] == [
            "SELECT $1::text",
            "SELECT 2",
        ]
        after = next(s for s in spans if (s.attributes or {}).get("db.query.text") == "SELECT 3")
        assert after.parent is not None
        assert after.parent.span_id == request.get_span_context().span_id
        assert transaction.start_time is not None and transaction.end_time is not None
        assert all(transaction.start_time <= (s.start_time or 0) for s in inside)
        assert all((s.end_time or 0) <= transaction.end_time for s in inside)
        _no_values([s for s in spans if s.name != "request"])


def test_a_rolled_back_transaction_is_an_error(pg_url: str, telemetry: Telemetry) -> None:
    with pgfast.create_pool(pg_url) as db:
        telemetry.instrument(db)
        with pytest.raises(ValueError), db.transaction(deferrable=False) as tx:
            tx.query(sql("SELECT 1"))
            raise ValueError(SECRET)
        with pytest.raises(pgfast.errors.DivisionByZero):
            db.tx(lambda tx: tx.query(sql("SELECT 1/0")))
        first, second = [s for s in telemetry.spans() if s.name.startswith("TRANSACTION")]
        assert first.status.status_code == StatusCode.ERROR
        assert first.attributes is not None
        assert first.attributes["error.type"] == "builtins.ValueError"
        assert first.attributes["pgfast.transaction.deferrable"] is False
        assert second.status.status_code == StatusCode.ERROR
        assert second.attributes is not None and second.attributes["error.type"] == "22012"
        (failed,) = _children(telemetry.spans(), second)
        assert failed.attributes is not None and failed.attributes["error.type"] == "22012"
        _no_values(telemetry.spans())


def test_a_failed_begin_ends_its_transaction(pg_url: str, telemetry: Telemetry) -> None:
    with pgfast.create_pool(pg_url) as db:
        telemetry.instrument(db)
        with pytest.raises(pgfast.errors.InvalidParameterValue), db.transaction(lock_timeout=1e9):
            pass
        (transaction,) = [s for s in telemetry.spans() if s.name.startswith("TRANSACTION")]
        assert transaction.status.status_code == StatusCode.ERROR
        (begin,) = _children(telemetry.spans(), transaction)
        assert begin.name.startswith("BEGIN")


async def test_a_retried_tx_is_a_span_per_attempt(pg_url: str, telemetry: Telemetry) -> None:
    attempts: list[int] = []

    async def fn(tx: pgfast.AsyncTransaction) -> int:
        attempts.append(1)
        value = await tx.query_value(sql("SELECT {}::int", len(attempts)))
        if len(attempts) < 3:
            raise pgfast.errors.SerializationFailure()  # retried like the server's own
        return int(value)

    async with pgfast.create_async_pool(pg_url) as db:
        telemetry.instrument(db)
        assert await db.tx(fn, isolation_level="serializable", retry_serialization_failures=3) == 3
        spans = telemetry.spans()
        transactions = [s for s in spans if s.name.startswith("TRANSACTION")]
        assert len(transactions) == 3
        for number, span in enumerate(transactions, 1):
            attributes = dict(span.attributes or {})
            assert attributes["pgfast.transaction.attempt"] == number
            assert attributes["pgfast.transaction.isolation_level"] == "serializable"
            (statement,) = _children(spans, span)
            assert (statement.attributes or {})["db.operation.name"] == "SELECT"
        assert [s.status.status_code for s in transactions] == [
            StatusCode.ERROR,
            StatusCode.ERROR,
            StatusCode.UNSET,
        ]
        assert (transactions[0].attributes or {})["error.type"] == "40001"
        assert not transactions[0].events
        for previous, span in itertools.pairwise(transactions):
            (event,) = span.events
            assert event.name == "retry"
            assert dict(event.attributes or {}) == {
                "pgfast.transaction.attempt": (span.attributes or {})["pgfast.transaction.attempt"],
                "db.response.status_code": "40001",
            }
            (link,) = span.links
            assert link.context.span_id == previous.context.span_id


async def test_a_server_serialization_failure_is_a_retry_event(
    pg_url: str, telemetry: Telemetry
) -> None:
    async with pgfast.create_async_pool(pg_url, pool_size=2) as db:
        await db.execute(sql("DROP TABLE IF EXISTS otel_skew"))
        await db.execute(sql("CREATE TABLE otel_skew (k int, v int)"))
        await db.execute(sql("INSERT INTO otel_skew VALUES (1, 10), (2, 20)"))
        telemetry.instrument(db)
        both_read = asyncio.Event()
        reads = 0

        def skew(mine: int, theirs: int) -> Any:
            # Write skew: each reads what the other writes, then writes; the
            # second to commit gets 40001 and is run again.
            async def fn(tx: pgfast.AsyncTransaction) -> None:
                nonlocal reads
                total = await tx.query_value(
                    sql("SELECT sum(v) FROM otel_skew WHERE k = {}", theirs)
                )
                reads += 1
                if reads == 2:
                    both_read.set()
                await asyncio.wait_for(both_read.wait(), 10)
                await tx.execute(sql("INSERT INTO otel_skew VALUES ({}, {})", mine, total))

            return fn

        await asyncio.gather(
            db.tx(skew(1, 2), isolation_level="serializable", retry_serialization_failures=3),
            db.tx(skew(2, 1), isolation_level="serializable", retry_serialization_failures=3),
        )
        otel.uninstrument(db)
        await db.execute(sql("DROP TABLE otel_skew"))
        transactions = [s for s in telemetry.spans() if s.name.startswith("TRANSACTION")]
        assert len(transactions) == 3
        failed = [s for s in transactions if s.status.status_code == StatusCode.ERROR]
        assert len(failed) == 1 and (failed[0].attributes or {})["error.type"] == "40001"
        (retried,) = [s for s in transactions if s.events]
        assert [e.name for e in retried.events] == ["retry"]
        assert (retried.events[0].attributes or {})["db.response.status_code"] == "40001"
        assert (retried.attributes or {})["pgfast.transaction.attempt"] == 2


def test_hooks_are_none_until_instrumented(pg_url: str, telemetry: Telemetry) -> None:
    with pgfast.create_pool(pg_url) as db:
        assert db._on_transaction is None
        telemetry.instrument(db)
        assert db._on_transaction is not None
        otel.uninstrument(db)
        assert db._on_transaction is None
        with db.transaction() as tx:
            tx.query(sql("SELECT 1"))
        assert telemetry.spans() == []


def test_uninstrument_ends_an_open_transaction(pg_url: str, telemetry: Telemetry) -> None:
    with pgfast.create_pool(pg_url) as db:
        telemetry.instrument(db)
        with db.transaction() as tx:
            tx.query(sql("SELECT 1"))
            otel.uninstrument(db)
            assert db._on_transaction is not None  # until the open transaction ends
            with db.transaction() as other:  # none begins
                other.query(sql("SELECT 2"))
            tx.query(sql("SELECT 3"))
        assert db._on_transaction is None
        assert trace.get_current_span() is trace.INVALID_SPAN  # its context was left
        _statement, transaction = telemetry.spans()
        assert transaction.name == "TRANSACTION postgres"
        assert transaction.end_time is not None


# -- cluster routing -----------------------------------------------------------------------


def _route(span: ReadableSpan) -> tuple[Any, Any]:
    attributes = span.attributes or {}
    return attributes.get("pgfast.cluster.node"), attributes.get("pgfast.cluster.route")


def _cluster(pg_cluster: Any, **options: Any) -> pgfast.Cluster:
    primary = pgfast.create_pool(pg_cluster.primary_url)
    replicas = [pgfast.create_pool(url) for url in pg_cluster.replica_urls]
    cluster = pgfast.create_cluster(primary, replicas, **options)
    assert isinstance(cluster, pgfast.Cluster)
    return cluster


def test_cluster_spans_say_why_they_went_there(pg_cluster: Any, telemetry: Telemetry) -> None:
    with _cluster(pg_cluster) as cluster:
        assert cluster._on_route is None
        telemetry.instrument(cluster)
        cluster.query(sql("SELECT 1"))
        cluster.execute(sql("CREATE TEMP TABLE otel_route (id int)"))
        cluster.tx(lambda tx: tx.query(sql("SELECT 2")), read_only=True)
        with cluster.transaction() as tx:
            tx.query(sql("SELECT 3"))
        cluster.primary.query(sql("SELECT 4"))  # not routed: no reason
        # In the order they ended: a transaction's statements before it.
        read, write, read_tx_statement, read_tx, write_tx_statement, write_tx, direct = (
            telemetry.spans()
        )
        assert _route(read) in (("replica 0", "read"), ("replica 1", "read"))
        assert _route(write) == ("primary", "write")
        assert read_tx.name == "TRANSACTION postgres"
        assert _route(read_tx) == _route(read_tx_statement)
        assert _route(read_tx)[1] == "read" and _route(read_tx)[0] != "primary"
        assert write_tx.name == "TRANSACTION postgres"
        assert _route(write_tx) == _route(write_tx_statement) == ("primary", "write")
        assert _route(direct) == ("primary", None)
        otel.uninstrument(cluster)
        assert cluster._on_route is None


async def test_async_cluster_routes(pg_cluster: Any, telemetry: Telemetry) -> None:
    primary = pgfast.create_async_pool(pg_cluster.primary_url)
    replicas = [pgfast.create_async_pool(url) for url in pg_cluster.replica_urls]
    async with pgfast.create_cluster(primary, replicas) as cluster:
        telemetry.instrument(cluster)
        await cluster.query(sql("SELECT 1"))
        await cluster.tx(lambda tx: tx.execute(sql("CREATE TEMP TABLE otel_r (id int)")))
        read, statement, transaction = telemetry.spans()
        assert _route(read)[1] == "read" and _route(read)[0] != "primary"
        assert _route(transaction) == _route(statement) == ("primary", "write")
        assert statement.parent is not None
        assert statement.parent.span_id == transaction.context.span_id


def test_reads_a_replica_refuses_are_routed_as_writes(
    pg_cluster: Any, telemetry: Telemetry
) -> None:
    """A query and a stream that turn out to write say so, like a transaction that writes."""
    with _cluster(pg_cluster) as cluster:
        cluster.execute(sql("CREATE TABLE IF NOT EXISTS otel_refused (id serial, v int)"))
        cluster.execute(
            sql(
                "CREATE OR REPLACE FUNCTION otel_refused_add(x int) RETURNS int LANGUAGE sql AS "
                "$$ INSERT INTO otel_refused (v) VALUES (x) RETURNING v $$"
            )
        )
        telemetry.instrument(cluster)
        pg_cluster.wait_for_replicas()
        writes = sql("SELECT otel_refused_add({}::int) AS v", 1)
        assert cluster.query(writes) == [{"v": 1}]
        assert list(cluster.query_stream(writes)) == [{"v": 1}]
        with cluster.transaction() as tx:  # not read_only: the primary, as a write
            tx.query(writes)
        spans = [s for s in telemetry.spans() if "otel_refused_add" in str(s.attributes)]
        # The refused attempts on a replica are reads; what the primary ran, writes.
        refused = [_route(s) for s in spans if s.status.status_code is StatusCode.ERROR]
        ran = [_route(s) for s in spans if s.status.status_code is not StatusCode.ERROR]
        assert len(refused) == 2 and all(why == "read" for _, why in refused)
        assert ran == [("primary", "write")] * 3
        otel.uninstrument(cluster)
        cluster.execute(sql("DROP TABLE otel_refused"))
        cluster.execute(sql("DROP FUNCTION otel_refused_add(int)"))


def test_cluster_reads_on_the_primary_say_why(pg_cluster: Any, telemetry: Telemetry) -> None:
    def reads() -> list[tuple[Any, Any]]:
        return [_route(s) for s in telemetry.spans() if "otel_why" in str(s.attributes)]

    # Replicas too far behind (replay paused): the primary, for "lag".
    with _cluster(pg_cluster, max_replica_lag=0.3, health_check_interval=0.1) as cluster:
        telemetry.instrument(cluster)
        pg_cluster.pause_replay(0)
        pg_cluster.pause_replay(1)
        try:
            cluster.execute(sql("CREATE TEMP TABLE otel_lag (id int)"))
            deadline = time.monotonic() + 20
            while not all((r["lag"] or 0) > 0.3 for r in cluster.stats()["replicas"]):
                assert time.monotonic() < deadline, "the replicas' lag was never measured"
                time.sleep(0.05)
            cluster.query(sql("/* otel_why */ SELECT 1"))
            assert reads() == [("primary", "lag")]
        finally:
            pg_cluster.resume_replay(0)
            pg_cluster.resume_replay(1)
    # A replica that has not replayed this context's write: the primary, for
    # "read_your_writes".
    telemetry.exporter.clear()
    with _cluster(pg_cluster, read_your_writes=True) as cluster:
        telemetry.instrument(cluster)
        pg_cluster.pause_replay(0)
        pg_cluster.pause_replay(1)
        try:
            cluster.execute(sql("CREATE TEMP TABLE otel_ryw (id int)"))
            cluster.query(sql("/* otel_why */ SELECT 1"))
            assert reads() == [("primary", "read_your_writes")]
        finally:
            pg_cluster.resume_replay(0)
            pg_cluster.resume_replay(1)
    pg_cluster.wait_for_replicas()


def test_cluster_read_falls_back_when_no_replica_answers(pg_url: str, telemetry: Telemetry) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = pg_url.replace(pg_url.rsplit(":", 1)[1].split("/")[0], str(port), 1)
    primary = pgfast.create_pool(pg_url)
    replica = pgfast.create_pool(dead, connect_timeout=1, queue_timeout=2)
    with pgfast.create_cluster(primary, [replica]) as cluster:
        telemetry.instrument(cluster)
        assert cluster.query_value(sql("SELECT 1")) == 1
        (span,) = telemetry.spans()
        assert _route(span) == ("primary", "fallback")
