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
``"primary"`` or ``"replica N"``, the position given to ``create_cluster``)
and why (``pgfast.cluster.route``: ``write``, ``read``, ``lag``,
``read_your_writes``, ``failover`` or ``fallback``).

Each transaction (``transaction()``, ``tx()``) is an INTERNAL span
``"TRANSACTION {database}"`` from its BEGIN to its COMMIT or ROLLBACK, the
parent of its statements' spans. Each attempt of a ``tx()`` that retries a
serialization failure is a span of its own (``pgfast.transaction.attempt``),
linked to the attempt before it and holding a ``retry`` event with the
SQLSTATE that caused it.

Metrics are observed from ``db.stats()`` at each collection, under the
conventions' names: ``db.client.connection.count`` (by
``db.client.connection.state``: ``idle`` / ``used``),
``db.client.connection.max`` and ``db.client.connection.pending_requests``,
each with ``db.client.connection.pool.name``.

Spans are built on the pool's query hooks (``on_query_start``,
``on_query_results``, ``on_query_error``); hooks given to ``create_pool``
keep running after the span's own work. Transactions and cluster routing
are told by two internal hooks (a pool's ``_on_transaction``, a cluster's
``_on_route``), ``None`` until ``instrument`` sets them.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import weakref
from collections.abc import Callable, Iterable
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import context, metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.trace import (
    Link,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TracerProvider,
)
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
_HOOKS = ("_on_query_start", "_on_query_results", "_on_query_error", "_on_transaction")

_lock = threading.Lock()
_instrumented: weakref.WeakKeyDictionary[Any, _Instrumentation] = weakref.WeakKeyDictionary()
# Per instrumented cluster: its pools then (after a failover its primary and
# replica lists differ, and uninstrument must still find every one) and its
# routing hook.
_clusters: weakref.WeakKeyDictionary[Any, tuple[list[Any], _Hook]] = weakref.WeakKeyDictionary()

# The routing decision of this context's cluster operation: (the cluster's key,
# reason), read by the spans its pools start, cleared once the routed
# statement (or transaction) ends so that no later statement inherits it.
_ROUTE: ContextVar[tuple[object, str] | None] = ContextVar("pgfast_otel_route", default=None)
# How many of pgfast's transaction spans are open in this context: their
# statements keep the route, which the transaction clears when it ends.
_IN_TRANSACTION: ContextVar[int] = ContextVar("pgfast_otel_in_transaction", default=0)
_ISOLATION = re.compile(
    r"ISOLATION LEVEL (READ UNCOMMITTED|READ COMMITTED|REPEATABLE READ|SERIALIZABLE)"
)


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
    cluster: object | None = None
    if isinstance(db, (Cluster, AsyncCluster)):
        nodes: list[tuple[Any, str | None]] = [(db.primary, "primary")]
        nodes += [(pool, f"replica {i}") for i, pool in enumerate(db.replicas)]
        cluster = object()  # what the spans of its pools recognize its routes by
        with _lock:
            if db not in _clusters:
                hook = _Hook(_router(cluster), db._on_route)
                _clusters[db] = ([pool for pool, _ in nodes], hook)
                db._on_route = hook
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
            instrumentation = _Instrumentation(pool, tracer, node, name, cluster)
            _instrumented[pool] = instrumentation
        instrumentation.observer = observer
        instrumentation.install()
        observer.add(pool, instrumentation.pool_attributes)


def uninstrument(db: ConnectionPool | AsyncConnectionPool | Cluster | AsyncCluster) -> None:
    """Stop tracing ``db`` and reporting its metrics; the original hooks are restored
    (a transaction still open keeps its span until it ends)."""
    pools: list[Any] = [db]
    if isinstance(db, (Cluster, AsyncCluster)):
        with _lock:
            entry = _clusters.pop(db, None)
        pools = [db.primary, *db.replicas]
        if entry is not None:
            pools, hook = entry
            hook.active = False
            original = hook.original
            if db._on_route is hook:
                db._on_route = original
    for pool in pools:
        with _lock:
            instrumentation = _instrumented.pop(pool, None)
        if instrumentation is not None:
            instrumentation.remove()


def _router(cluster: object) -> Callable[[str], None]:
    """The work of a cluster's routing hook: note the reason for the spans to come."""

    def route(reason: str) -> None:
        _ROUTE.set((cluster, reason))

    return route


def _clear_route(cluster: object | None) -> None:
    route = _ROUTE.get()
    if route is not None and route[0] is cluster:
        _ROUTE.set(None)


def _transaction_options(begin: str) -> dict[str, str | bool]:
    """The options a BEGIN statement sets, as span attributes."""
    words = begin.split(";", 1)[0]  # BEGIN ...; then its SET LOCALs
    found: dict[str, str | bool] = {}
    isolation = _ISOLATION.search(words)
    if isolation is not None:
        found["pgfast.transaction.isolation_level"] = isolation[1].lower()
        words = _ISOLATION.sub("", words)  # its READ is no READ ONLY / READ WRITE
    if "READ ONLY" in words or "READ WRITE" in words:
        found["pgfast.transaction.read_only"] = "READ ONLY" in words
    if "DEFERRABLE" in words:
        found["pgfast.transaction.deferrable"] = "NOT DEFERRABLE" not in words
    return found


def _failed(span: Span, exc: BaseException) -> None:
    """Mark ``span`` failed with ``exc``'s SQLSTATE or class, never its message
    (a server message may quote values)."""
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        span.set_attribute("db.response.status_code", sqlstate)
    error_type = sqlstate or f"{type(exc).__module__}.{type(exc).__qualname__}"
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


class _Transaction:
    """One transaction block's span (of its current attempt) and what the next attempt needs."""

    __slots__ = ("attempt", "in_transaction", "previous", "retry", "span", "token")

    def __init__(
        self, span: Span, attempt: int, token: Token[Context], in_transaction: Token[int]
    ) -> None:
        self.span: Span | None = span
        self.attempt = attempt
        self.token: Token[Context] | None = token  # the context that made the span current
        self.in_transaction: Token[int] | None = in_transaction
        self.previous: SpanContext | None = None  # the ended attempt's span
        self.retry: str | None = None  # the SQLSTATE a retry was decided for


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
    """The spans of one pool: started by its start hook, ended by its results or error
    hook; and those of its transactions, told by its transaction hook."""

    def __init__(
        self,
        pool: Pool,
        tracer: trace.Tracer,
        node: str | None,
        name: str | None,
        cluster: object | None = None,
    ):
        self.pool = weakref.ref(pool)
        self.tracer = tracer
        self.cluster = cluster  # the key of the cluster's routing decisions
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
        # Transaction blocks with a span open, or whose next attempt follows a retry.
        self.transactions: weakref.WeakKeyDictionary[object, _Transaction] = (
            weakref.WeakKeyDictionary()
        )
        self.lock = threading.Lock()
        self.hooks: list[_Hook] = []
        self.closing = False  # uninstrumented: open transactions end, none begins

    def install(self) -> None:
        pool = self.pool()
        if pool is None:
            return
        works: tuple[Callable[..., None], ...] = (
            self.start,
            self.results,
            self.error,
            self.transaction,
        )
        for attribute, work in zip(_HOOKS, works, strict=True):
            hook = _Hook(work, getattr(pool, attribute))
            self.hooks.append(hook)
            setattr(pool, attribute, hook)

    def _unhook(self, attribute: str, hook: _Hook) -> None:
        pool = self.pool()
        hook.active = False  # a hook wrapped again by someone else just passes through
        if pool is not None and getattr(pool, attribute) is hook:
            setattr(pool, attribute, hook.original)

    def _open_transactions(self) -> bool:
        with self.lock:
            return any(t.span is not None for t in self.transactions.values())

    def remove(self) -> None:
        pool = self.pool()
        with self.lock:
            self.closing = True  # no new transaction span
        # A transaction still open keeps its span (and the context that makes it
        # current) until it ends: only then is the transaction hook taken off.
        keep = self._open_transactions()
        for attribute, hook in zip(_HOOKS, self.hooks, strict=True):
            if not (keep and attribute == "_on_transaction"):
                self._unhook(attribute, hook)
        if self.observer is not None and pool is not None:
            self.observer.remove(pool)
        with self.lock:
            pending, self.pending = self.pending, {}
        for _, span in pending.values():
            span.set_attribute("pgfast.span.end_unknown", True)
            span.end()

    def _attributes(self) -> dict[str, str | int | bool]:
        """The pool's attributes, with the route of this context's cluster operation."""
        attributes: dict[str, str | int | bool] = {**self.attributes}
        route = _ROUTE.get()
        if route is not None and route[0] is self.cluster:
            attributes["pgfast.cluster.route"] = route[1]
        return attributes

    def _span(self, text: str) -> Span:
        operation = statement_keyword(text)
        attributes = self._attributes()
        attributes["db.query.text"] = text
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

    def _ended(self) -> None:
        """A statement ended: its route is spent, unless a transaction holds it."""
        if self.cluster is not None and not _IN_TRANSACTION.get():
            _clear_route(self.cluster)

    def results(self, q: object, text: str, params: list[Any], rows: Any) -> None:
        self._ended()
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
        self._ended()
        _failed(span, exc)
        span.end()

    # -- transactions --------------------------------------------------------

    def transaction(self, block: object, event: str, exc: BaseException | None) -> None:
        if event == "begin":
            self._begin(block)
        elif event == "end":
            self._end(block, exc)
        elif event == "retry" and exc is not None:
            with self.lock:
                state = self.transactions.get(block)
            if state is not None:
                state.retry = getattr(exc, "sqlstate", None) or type(exc).__name__

    def _begin(self, block: object) -> None:
        with self.lock:
            if self.closing:
                return
            state = self.transactions.pop(block, None)
        if state is not None and state.span is not None:  # its end was never reported
            state.span.set_attribute("pgfast.span.end_unknown", True)
            state.span.end()
        attributes = self._attributes()
        attributes.update(_transaction_options(getattr(block, "_begin", None) or ""))
        attempt, links, retry = 1, [], None
        if state is not None and state.retry is not None:
            attempt, retry = state.attempt + 1, state.retry
            if state.previous is not None:
                links.append(Link(state.previous, {"pgfast.transaction.attempt": state.attempt}))
        attributes["pgfast.transaction.attempt"] = attempt
        name = " ".join(part for part in ("TRANSACTION", self.target) if part)
        span = self.tracer.start_span(
            name, kind=SpanKind.INTERNAL, attributes=attributes, links=links
        )
        if retry is not None:
            span.add_event(
                "retry", {"pgfast.transaction.attempt": attempt, "db.response.status_code": retry}
            )
        # Current until the block ends: its statements' spans are its children.
        token = context.attach(trace.set_span_in_context(span))
        depth = _IN_TRANSACTION.set(_IN_TRANSACTION.get() + 1)
        with self.lock:
            self.transactions[block] = _Transaction(span, attempt, token, depth)

    def _end(self, block: object, exc: BaseException | None) -> None:
        with self.lock:
            state = self.transactions.get(block)
            if state is None or state.span is None:
                return  # a savepoint, or a transaction begun before instrument()
            span, token, depth = state.span, state.token, state.in_transaction
            state.span = state.token = state.in_transaction = None
        if exc is not None:
            _failed(span, exc)
        span.end()
        state.previous = span.get_span_context()
        if depth is not None:
            try:
                _IN_TRANSACTION.reset(depth)
            except (ValueError, RuntimeError):  # ended in another context than it began in
                _IN_TRANSACTION.set(max(0, _IN_TRANSACTION.get() - 1))
        if token is not None:
            context.detach(token)
        self._ended()
        if self.closing and not self._open_transactions():
            self._unhook("_on_transaction", self.hooks[_HOOKS.index("_on_transaction")])


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
