"""OpenTelemetry for pgfast: a span per statement and pool metrics (``pip install pgfast[otel]``).

``instrument(db)`` hooks a pool (sync or async) or a cluster onto the
OpenTelemetry API; ``uninstrument(db)`` takes it off again. Nothing here is
imported by pgfast itself, so an application that never imports
``pgfast.otel`` pays nothing for it.

Spans follow the OpenTelemetry database semantic conventions: one CLIENT span
per statement named ``"{operation} {database}"``, with ``db.system.name``,
``db.namespace``, ``db.query.text`` (the text with its ``$n`` placeholders,
never the parameter values), ``db.operation.name``, ``server.address``,
``server.port`` and ``db.response.returned_rows``; a failed statement has
status ERROR, ``db.response.status_code`` and ``error.type`` (its SQLSTATE).
A cluster's spans also say which node ran them (``pgfast.cluster.node``:
``"primary"`` or ``"replica N"``, the position given to ``create_cluster``).

Metrics are observed from ``db.stats()`` at each collection, under the
conventions' names: ``db.client.connection.count`` (by
``db.client.connection.state``: ``idle`` / ``used``),
``db.client.connection.max`` and ``db.client.connection.pending_requests``,
each with ``db.client.connection.pool.name``.

Spans are built on the pool's query hooks (``on_query_start``,
``on_query_results``, ``on_query_error``); hooks given to ``create_pool``
keep running after the span's own work.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from psycopg.conninfo import conninfo_to_dict

from . import __version__
from ._cluster_async import AsyncCluster
from ._cluster_sync import Cluster
from ._pool_async import AsyncConnectionPool
from ._pool_sync import ConnectionPool
from ._split import statement_keyword

__all__ = ["instrument", "uninstrument"]

logger = logging.getLogger("pgfast")

SCOPE = "pgfast"
# Statements started and not yet ended, per pool. A statement whose end the
# pool never reports would otherwise stay forever; past this many the oldest
# is ended (its span then says "pgfast.span.end_unknown").
MAX_PENDING = 4096

Pool = ConnectionPool | AsyncConnectionPool
_HOOKS = ("_on_query_start", "_on_query_results", "_on_query_error")

_lock = threading.Lock()
_instrumented: weakref.WeakKeyDictionary[Any, _Instrumentation] = weakref.WeakKeyDictionary()
# The pools each cluster had when instrumented: after a failover its primary and
# replica lists differ, and uninstrument must still find every one.
_cluster_pools: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def instrument(
    db: ConnectionPool | AsyncConnectionPool | Cluster | AsyncCluster,
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    name: str | None = None,
) -> None:
    """Trace every statement ``db`` runs and report its pool metrics.

    ``db`` is a pool (sync or async) or a cluster, whose pools are each
    instrumented. The providers default to the global ones. ``name`` is the
    ``db.client.connection.pool.name`` of the metrics (default:
    ``host:port/database``; a cluster adds each node's position).
    Instrumenting twice does nothing.
    """
    if isinstance(db, (Cluster, AsyncCluster)):
        nodes: list[tuple[Any, str | None]] = [(db.primary, "primary")]
        nodes += [(pool, f"replica {i}") for i, pool in enumerate(db.replicas)]
        with _lock:
            _cluster_pools.setdefault(db, [pool for pool, _ in nodes])
    elif isinstance(db, (ConnectionPool, AsyncConnectionPool)):
        nodes = [(db, None)]
    else:
        raise TypeError(
            f"pgfast.otel.instrument() takes a pgfast pool or cluster, not {type(db).__name__!r}"
        )
    tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
    observer = _observer(meter_provider)
    for pool, node in nodes:
        with _lock:
            if pool in _instrumented:
                continue
            instrumentation = _Instrumentation(pool, tracer, node, name)
            _instrumented[pool] = instrumentation
        instrumentation.observer = observer
        instrumentation.install()
        observer.add(pool, instrumentation.pool_attributes)


def uninstrument(db: ConnectionPool | AsyncConnectionPool | Cluster | AsyncCluster) -> None:
    """Stop tracing ``db`` and reporting its metrics; the original hooks are restored."""
    if isinstance(db, (Cluster, AsyncCluster)):
        with _lock:
            pools: list[Any] = _cluster_pools.pop(db, []) or [db.primary, *db.replicas]
    else:
        pools = [db]
    for pool in pools:
        with _lock:
            instrumentation = _instrumented.pop(pool, None)
        if instrumentation is not None:
            instrumentation.remove()


def _server(pool: Pool) -> tuple[str | None, int | None, str | None]:
    """``(host, port, database)`` the pool connects to, as far as its settings say."""
    try:
        params = conninfo_to_dict(pool._config.conninfo)
    except Exception:  # never fail the application over telemetry
        params = {}

    def first(key: str, env: str) -> str | None:
        # A multi-host string names several servers: the first is the usual one.
        value = str(params.get(key) or os.environ.get(env) or "")
        return value.split(",")[0].strip() or None

    host = first("host", "PGHOST") or first("hostaddr", "PGHOSTADDR")
    port_text = first("port", "PGPORT")
    port = int(port_text) if port_text and port_text.isdigit() else 5432
    database = first("dbname", "PGDATABASE") or first("user", "PGUSER")
    return host, port if host else None, database


class _Hook:
    """One of the pool's query hooks: the span's work, then the hook it replaced."""

    __slots__ = ("active", "original", "work")

    def __init__(self, work: Callable[..., None], original: Callable[..., Any] | None) -> None:
        self.work = work
        self.original = original
        self.active = True

    def __call__(self, *args: Any) -> None:
        if self.active:
            try:
                self.work(*args)
            except Exception:  # a telemetry fault never reaches the query
                logger.exception("pgfast.otel: recording a span failed (ignored)")
        if self.original is not None:
            self.original(*args)


class _Instrumentation:
    """The spans of one pool: started by its start hook, ended by its results or error hook."""

    def __init__(self, pool: Pool, tracer: trace.Tracer, node: str | None, name: str | None):
        self.pool = weakref.ref(pool)
        self.tracer = tracer
        self.observer: _Observer | None = None
        host, port, database = _server(pool)
        attributes: dict[str, str | int] = {"db.system.name": "postgresql"}
        if database:
            attributes["db.namespace"] = database
        if host:
            attributes["server.address"] = host
        if port:
            attributes["server.port"] = port
        if node is not None:
            attributes["pgfast.cluster.node"] = node
        self.attributes = attributes
        self.target = database or (f"{host}:{port}" if host else None)
        pool_name = name or (f"{host}:{port}/{database}" if host else database or "postgresql")
        self.pool_attributes: dict[str, str] = {
            "db.client.connection.pool.name": pool_name if node is None else f"{pool_name} {node}"
        }
        if node is not None:
            self.pool_attributes["pgfast.cluster.node"] = node
        # id(params) -> (params, span): the hooks of one statement get the same
        # params list, which the entry keeps alive so its id is not reused.
        self.pending: dict[int, tuple[list[Any], Span]] = {}
        self.lock = threading.Lock()
        self.hooks: list[_Hook] = []

    def install(self) -> None:
        pool = self.pool()
        if pool is None:
            return
        works: tuple[Callable[..., None], ...] = (self.start, self.results, self.error)
        for attribute, work in zip(_HOOKS, works, strict=True):
            hook = _Hook(work, getattr(pool, attribute))
            self.hooks.append(hook)
            setattr(pool, attribute, hook)

    def remove(self) -> None:
        pool = self.pool()
        for attribute, hook in zip(_HOOKS, self.hooks, strict=True):
            hook.active = False  # a hook wrapped again by someone else just passes through
            if pool is not None and getattr(pool, attribute) is hook:
                setattr(pool, attribute, hook.original)
        if self.observer is not None and pool is not None:
            self.observer.remove(pool)
        with self.lock:
            pending, self.pending = self.pending, {}
        for _, span in pending.values():
            span.set_attribute("pgfast.span.end_unknown", True)
            span.end()

    def _span(self, text: str) -> Span:
        operation = statement_keyword(text)
        attributes: dict[str, str | int] = {**self.attributes, "db.query.text": text}
        if operation is not None:
            attributes["db.operation.name"] = operation
        name = " ".join(part for part in (operation, self.target) if part) or "postgresql"
        return self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)

    def start(self, q: object, text: str, params: list[Any]) -> None:
        span = self._span(text)
        evicted = None
        with self.lock:
            self.pending[id(params)] = (params, span)
            if len(self.pending) > MAX_PENDING:
                evicted = self.pending.pop(next(iter(self.pending)))[1]
        if evicted is not None:
            evicted.set_attribute("pgfast.span.end_unknown", True)
            evicted.end()

    def _take(self, params: list[Any]) -> Span | None:
        with self.lock:
            entry = self.pending.pop(id(params), None)
        return None if entry is None else entry[1]

    def results(self, q: object, text: str, params: list[Any], rows: Any) -> None:
        span = self._take(params)
        if span is None:
            return
        if isinstance(rows, list):
            span.set_attribute("db.response.returned_rows", len(rows))
        span.end()

    def error(self, q: object, text: str, params: list[Any], exc: BaseException) -> None:
        span = self._take(params)
        if span is None:
            # A statement the pool reports only when it fails (BEGIN, COMMIT, ...).
            span = self._span(text)
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate:
            span.set_attribute("db.response.status_code", sqlstate)
        # The class, never the message: server messages may quote values.
        error_type = sqlstate or f"{type(exc).__module__}.{type(exc).__qualname__}"
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.end()


class _Observer:
    """The pool metrics of one meter provider, observed from each pool's ``stats()``."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.pools: dict[int, tuple[weakref.ref[Any], dict[str, str]]] = {}
        self.lock = threading.Lock()
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            callbacks=[self._count],
            unit="{connection}",
            description="Connections of the pool, by state (idle or used).",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.max",
            callbacks=[self._max],
            unit="{connection}",
            description="The most connections the pool opens (pool_size).",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            callbacks=[self._pending],
            unit="{request}",
            description="Callers waiting for a connection of the pool.",
        )

    def add(self, pool: Pool, attributes: dict[str, str]) -> None:
        with self.lock:
            self.pools[id(pool)] = (weakref.ref(pool), attributes)

    def remove(self, pool: Pool) -> None:
        with self.lock:
            self.pools.pop(id(pool), None)

    def _stats(self) -> Iterable[tuple[Any, dict[str, Any], dict[str, str]]]:
        with self.lock:
            entries = list(self.pools.items())
        for key, (ref, attributes) in entries:
            pool = ref()
            if pool is None:
                with self.lock:
                    if self.pools.get(key, (None,))[0] is ref:
                        del self.pools[key]
                continue
            yield pool, pool.stats(), attributes

    def _count(self, options: CallbackOptions) -> Iterable[Observation]:
        for _, stats, attributes in self._stats():
            yield Observation(stats["idle"], {**attributes, "db.client.connection.state": "idle"})
            yield Observation(stats["in_use"], {**attributes, "db.client.connection.state": "used"})

    def _max(self, options: CallbackOptions) -> Iterable[Observation]:
        for pool, _, attributes in self._stats():
            yield Observation(pool._config.options.pool_size, attributes)

    def _pending(self, options: CallbackOptions) -> Iterable[Observation]:
        for _, stats, attributes in self._stats():
            yield Observation(stats["waiting"], attributes)


# One observer per meter provider: its instruments are registered once.
_observers: dict[int, tuple[Any, _Observer]] = {}


def _observer(meter_provider: MeterProvider | None) -> _Observer:
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    with _lock:
        entry = _observers.get(id(provider))
        if entry is None or entry[0] is not provider:
            meter = metrics.get_meter(SCOPE, __version__, meter_provider=provider)
            entry = (provider, _Observer(meter))
            _observers[id(provider)] = entry
        return entry[1]
