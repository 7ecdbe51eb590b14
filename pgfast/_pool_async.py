"""The async pool, its dedicated connections and transactions.

``_pool_sync.py`` is generated from this file by ``tools/async_to_sync.py``
(``async``/``await`` dropped, ``AsyncX`` -> ``X``, asyncio -> threading/time);
edit this file and regenerate, never the other.

Internal protocol (for bulk loading and clusters): every queryable
(``AsyncConnectionPool``, ``AsyncConnection``, ``AsyncTransaction``) offers

- ``query(q)``, ``execute(q)``, ``tx(fn, **options)`` as documented;
- ``_raw_connection()``: an async context manager yielding the underlying
  ``psycopg.AsyncConnection`` (autocommit; checked out of the pool for a pool,
  the queryable's own one otherwise), e.g. for COPY. Leave it IDLE (or in the
  transaction state you found it) when done;
- ``_pool_ref``: the owning ``AsyncConnectionPool``, whose
  ``_column_types_cache`` dict is free for per-pool caches.
"""

from __future__ import annotations

import asyncio
import contextlib  # async-only
import copy
import inspect
import threading
import weakref
from collections import deque  # async-only
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from itertools import count, repeat
from time import monotonic
from types import TracebackType
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import AsyncRawCursor, AsyncRawServerCursor, generators
from psycopg._preparing import Prepare
from psycopg._queries import PostgresRawQuery
from psycopg.adapt import Transformer
from psycopg.pq import ExecStatus, TransactionStatus
from psycopg.rows import tuple_row

from . import _impl
from ._bulk_async import AsyncBulkMixin
from ._config import PoolConfig
from ._deadline import Deadline
from ._deadline import arm as arm_deadline
from ._deadline import disarm as disarm_deadline
from ._exceptions import (
    CommitUnknownError,
    Error,
    PoolClosedError,
    PoolTimeoutError,
    PostCommitError,
    QueryTimeoutCommitUnknownError,
    QueryTimeoutError,
)
from ._frame import Sent, rewrite_error
from ._pipeline import EXCLUSIVE_WORDS, MAX_DEPTH, TURN_BATCH, Lane, first_word  # async-only
from ._pool_common import (
    ADAPTERS,
    LIVENESS_CHECK_AFTER,
    PREPARED_ELSEWHERE,
    RETRYABLE_TX,
    ClientPrepareManager,
    Row,
    SQLQuery,
    TransactionOptions,
    Unpack,
    advisory_lock_query,
    backoff,
    begin_statement,
    check_queries,
    check_savepoint_options,
    check_transaction_options,
    ended,
    input_waiting,
    logger,
    not_a_query,
    retry_attempts,
    retry_connect,
    safe_call,
    sweep_period,
)
from ._psycopg_pool_async import PsycopgPool, expire, expired
from ._split import has_several_statements, several_statements_error
from ._sql import sql

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)
IDLE = TransactionStatus.IDLE
TUPLES_OK = ExecStatus.TUPLES_OK
INERROR = TransactionStatus.INERROR
_pool_numbers = count(1)
_cursor_numbers = count(1)
is_read_only_text = _impl.classify.is_read_only


class _PgConnection(psycopg.AsyncConnection[Any]):
    """psycopg's connection plus the bookkeeping pgfast needs.

    Each pool connects through its own subclass, whose ``_pgfast_pool`` is told
    of a failed connection attempt, so that callers waiting for a connection
    get the error itself instead of waiting for psycopg_pool's next attempt.
    """

    _pgfast_pool: AsyncConnectionPool | None = None
    _pgfast_idle_since: float = 0.0
    _pgfast_uses: int = 0
    _pgfast_encoding: str = "utf-8"
    _pgfast_on_close: Callable[[], Any] | None = None
    _pgfast_input_waiting: Callable[[], bool]
    _pgfast_statement_prefix: str = "_pgf"
    # The deadline that sent a cancel request for this connection's statement
    # (query_timeout, or an interrupted task): see AsyncConnectionPool._release.
    _pgfast_cancel: Deadline | None = None
    # psycopg's Transformer kept for pipelined statements (dumpers and loaders cached).
    _pgfast_tx: Any = None

    @classmethod
    async def connect(cls, conninfo: str = "", **kwargs: Any) -> _PgConnection:
        """Connect, retrying failed attempts with jittered backoff.

        A refused or reset attempt fails no caller while a later one succeeds:
        only when attempts keep failing for the pool's connect timeout (or the
        server refuses the login itself) is the error passed on.
        """
        pool = cls._pgfast_pool
        give_up = None if pool is None else monotonic() + pool._connect_timeout
        for attempt in count(1):
            try:
                return await super().connect(conninfo, **kwargs)
            except Exception as exc:
                if give_up is None or not retry_connect(exc) or monotonic() >= give_up:
                    if pool is not None:
                        await pool._connect_failed(exc)
                    raise
                logger.debug("pgfast: connection attempt %d failed, retrying: %s", attempt, exc)
            await asyncio.sleep(min(backoff(attempt), max(0.0, give_up - monotonic())))
        raise AssertionError("unreachable")  # pragma: no cover

    def cancel(self) -> None:
        """Ask the server to cancel the running statement, without blocking anything.

        psycopg calls this when a statement is interrupted (a cancelled task,
        Ctrl-C). The request goes out from another thread; when the statement
        has not ended a second later, the link is cut (see ``_deadline``).
        """
        pending = self._pgfast_cancel
        if not self.closed and (pending is None or pending.ended):
            self._pgfast_cancel = arm_deadline(self.pgconn, 0.0)

    async def cancel_safe(self, *, timeout: float = 30.0) -> None:
        """``cancel()``: it never blocks, whatever ``timeout``."""
        self.cancel()

    def _pgfast_prepared_elsewhere(self, exc: BaseException) -> bool:
        """Whether ``exc`` says one of this connection's prepared statements is unknown
        (26000) or already known (42P05) to the server connection a pooler picked:
        the statement did not run."""
        return isinstance(exc, PREPARED_ELSEWHERE) and self._pgfast_statement_prefix in str(exc)

    def _pgfast_settle(self) -> None:
        """The interrupted statement has ended: its cancel must not cut the link any more."""
        pending = self._pgfast_cancel
        if pending is not None:
            disarm_deadline(pending)

    async def close(self) -> None:
        hook, self._pgfast_on_close = self._pgfast_on_close, None
        await super().close()
        if hook is not None:
            safe_call(hook, "on_connection_closed")


async def _behind_pooler(conn: _PgConnection) -> bool:
    """Whether a pooler or proxy stands between ``conn`` and its server process.

    Such a middleman answers the login itself, with a backend process id of
    its own making: the server's ``pg_backend_pid()`` is then another one.
    """
    cur = await conn.execute("SELECT pg_backend_pid()", prepare=False)
    row = await cur.fetchone()
    return row is None or row[0] != conn.pgconn.backend_pid


async def _delivered(cancel: Deadline) -> bool:
    """Whether the cancel request reached the server, waiting a little for it.

    The statement it was sent for has ended (usually with the server's
    "canceling statement" error), so the request is at most moments away.
    """
    for _ in range(20):
        if cancel.delivered:
            return True
        await asyncio.sleep(0.005)
    return cancel.delivered


def _fresh(exc: E) -> E:
    """A copy of ``exc`` for one more caller: one exception object raised in
    several tasks or threads would collect all their tracebacks."""
    return copy.copy(exc).with_traceback(None)


def _names(result: Any, conn: _PgConnection) -> list[str]:
    encoding = conn._pgfast_encoding
    return [result.fname(i).decode(encoding) for i in range(result.nfields)]


def _dicts(names: list[str], rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    if len(rows) == 1:  # the common case, where building iterators costs more
        return [dict(zip(names, rows[0], strict=True))]
    # All in C: no per-row bytecode, no keyword arguments.
    return list(map(dict, map(zip, repeat(names), rows)))


async def _send(
    conn: _PgConnection,
    text: str,
    params: list[Any],
    fetch: bool,
    dicts: bool,
    prepare: bool | None,
) -> Any:
    """Run one statement with parameters on psycopg's libpq layer: its rows (or, when
    not ``fetch``, its row count).

    What psycopg's cursor does for it, without the cursor: parameters dumped
    by the connection's ``Transformer``, the connection's prepared statement
    cache (client-unique names), psycopg's waiting (an interrupted statement
    is cancelled and read to its end), psycopg's errors. Rows come from the
    engine.
    """
    pgconn = conn.pgconn
    tx = conn._pgfast_tx
    if tx is None:
        tx = conn._pgfast_tx = Transformer(conn)
    pgq = PostgresRawQuery(tx)
    pgq.convert(text, params)
    manager = conn._prepared
    if manager._to_flush:
        await conn.wait(manager.maintain_gen(conn))
    prep, name = manager.get(pgq, prepare)
    if prep is Prepare.NO:
        pgconn.send_query_params(pgq.query, pgq.params, pgq.types, pgq.formats)
    else:
        if prep is Prepare.SHOULD:
            pgconn.send_prepare(name, pgq.query, pgq.types)
            for result in await conn.wait(generators.execute(pgconn)):
                if result.status == ExecStatus.FATAL_ERROR:
                    raise psycopg.errors.error_from_result(result, encoding=conn._pgfast_encoding)
        pgconn.send_query_prepared(name, pgq.params, pgq.formats)
    key = manager.maybe_add_to_cache(pgq, prep, name)
    results = await conn.wait(generators.execute(pgconn))
    if key is not None:
        manager.validate(key, prep, name, results)
    result = results[-1]
    status = result.status
    if status == ExecStatus.FATAL_ERROR:
        raise psycopg.errors.error_from_result(result, encoding=conn._pgfast_encoding)
    if not fetch:
        return result.command_tuples or 0
    if status != TUPLES_OK:
        return []
    return _impl.engine.load_rows(tx, result, dicts, conn._pgfast_encoding)


# begin async-only
async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn``; await its result when it is awaitable (async pools take async callables)."""
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


# end async-only


async def _settle(result: Awaitable[T], method: str) -> T:
    """The result of the function given to ``tx`` / ``task``, of the pool's own flavour.

    A function of the other flavour is refused: given a coroutine function, a
    sync pool would never run its body (and commit an empty transaction).
    """
    if True:  # ASYNC
        if not inspect.isawaitable(result):
            raise TypeError(f"{method}() on an async pool takes an async function (async def)")
        return await result
    else:
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # it will never run: close it, without a RuntimeWarning
            raise TypeError(
                f"{method}() on a sync pool takes a plain function, not an async def "
                "(its coroutine would never run): use create_async_pool for async code"
            )
        return result


class _AsyncQueryable(AsyncBulkMixin):
    """The querying methods shared by pools, connections and transactions.

    Bulk loading (``bulk_insert``, ``copy_in``, ...) comes from the bulk mixin.

    A subclass provides ``_acquire`` / ``_release`` (the psycopg connection to
    run on) and ``_pool_ref``. No statement is run twice: a pool replaces a
    dead connection before sending anything on it, and a failure after the
    send reaches the caller.
    """

    _pool_ref: AsyncConnectionPool
    # In a transaction: the parameters of every statement sent in it, to
    # redact them from errors of its COMMIT (deferred constraints echo them).
    _sent: Sent | None = None

    async def _acquire(self) -> _PgConnection:
        raise NotImplementedError

    async def _release(self, conn: _PgConnection) -> None:
        raise NotImplementedError

    @asynccontextmanager
    async def _raw_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The underlying psycopg connection, for COPY and other driver-level work."""
        conn = await self._acquire()
        try:
            yield conn
        finally:
            await self._release(conn)

    async def _run(self, q: SQLQuery, fetch: bool, dicts: bool | None = None) -> Any:
        text, params = q.format()
        return await self._run_held(q, text, params, fetch, dicts)

    async def _run_held(
        self, q: SQLQuery, text: str, params: list[Any], fetch: bool, dicts: bool | None
    ) -> Any:
        """Run one statement on a connection held for it alone (or the queryable's own).

        Never retried once sent: a statement whose connection died may have
        run, even committed. A pool hands out no connection known to be
        dead (see AsyncConnectionPool._acquire), so no retry is needed.
        """
        if params and has_several_statements(text):
            raise several_statements_error()
        if self._sent is not None:
            self._sent.add(params)
        conn = await self._acquire()
        try:
            return await self._pool_ref._execute(conn, q, text, params, fetch, dicts, self._sent)
        finally:
            await self._release(conn)

    async def query(self, q: SQLQuery | list[SQLQuery]) -> Any:
        """Run ``q`` and return its rows; a list of queries runs in one transaction."""
        if isinstance(q, SQLQuery):
            return await self._run(q, True)
        if isinstance(q, list):
            return await self._query_many(check_queries(q))
        not_a_query(q)

    async def _query_many(self, queries: list[SQLQuery]) -> list[list[Row]]:
        if not queries:
            return []
        pool = self._pool_ref
        formatted = [q.format() for q in queries]
        if self._sent is not None:
            for _, params in formatted:
                self._sent.add(params)
        conn = await self._acquire()
        try:
            return await pool._execute_many(conn, queries, formatted)
        finally:
            await self._release(conn)

    async def query_one(self, q: SQLQuery) -> Row | None:
        """The only row of ``q``, or ``None``; more than one row is an error."""
        rows = await self.query(q)
        if len(rows) > 1:
            raise Error(f"query_one() expected at most one row, the query returned {len(rows)}")
        return rows[0] if rows else None

    async def query_value(self, q: SQLQuery) -> Any:
        """The first column of the only row of ``q``."""
        if not isinstance(q, SQLQuery):
            not_a_query(q)
        rows = await self._run(q, True, False)
        if len(rows) != 1:
            raise Error(f"query_value() expected exactly one row, the query returned {len(rows)}")
        return rows[0][0]

    async def execute(self, q: SQLQuery) -> int:
        """Run a statement; return the number of rows it affected."""
        if not isinstance(q, SQLQuery):
            not_a_query(q)
        return int(await self._run(q, False))

    def _block(self, begin: str | None) -> _AsyncTransactionBlock:
        raise NotImplementedError

    def transaction(self, **options: Unpack[TransactionOptions]) -> _AsyncTransactionBlock:
        """A context manager running its block in one transaction (one attempt).

        On a pool the transaction takes a connection of its own; on a dedicated
        connection it runs there.
        """
        return self._block(begin_statement(options))

    async def tx(
        self,
        fn: Callable[[AsyncTransaction], Awaitable[T]],
        *,
        retry_serialization_failures: bool | int = False,
        **options: Unpack[TransactionOptions],
    ) -> T:
        """Run ``fn(tx)`` in a transaction: COMMIT and return its result, or ROLLBACK.

        Serialization failures and deadlocks (40001, 40P01) re-run ``fn`` from
        the start when ``retry_serialization_failures`` allows more attempts.
        """
        attempts = retry_attempts(retry_serialization_failures)
        return await _run_tx(self.transaction(**options), fn, attempts)

    async def query_stream(self, q: SQLQuery, batch_size: int = 1000) -> AsyncGenerator[Row, None]:
        """Yield the rows of ``q``, fetched ``batch_size`` at a time through a server cursor.

        Leaving the loop early releases the connection; wrap the call in
        ``contextlib.aclosing`` to release it at once rather than when the
        generator is collected.
        """
        if not isinstance(q, SQLQuery):
            not_a_query(q)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, not {batch_size!r}")
        text, params = q.format()
        if self._sent is not None:
            self._sent.add(params)
        pool = self._pool_ref
        conn = await self._acquire()
        try:
            own_tx = conn.pgconn.transaction_status == IDLE
            sent = Sent()
            sent.add(params)
            if own_tx:
                await pool._control(conn, "BEGIN")
            try:
                cur = AsyncRawServerCursor(
                    conn, f"pgfast_stream_{next(_cursor_numbers)}", row_factory=tuple_row
                )
                try:
                    async with pool._deadline(conn):
                        await pool._declare(cur, q, text, params)
                    names = _names(cur.pgresult, conn) if pool._row_dicts else None
                    try:
                        while True:
                            async with pool._deadline(conn):
                                batch = await cur.fetchmany(batch_size)
                            if not batch:
                                break
                            for row in batch if names is None else _dicts(names, batch):
                                yield row
                    except BaseException as exc:
                        if pool._on_query_error is not None:
                            safe_call(pool._on_query_error, "on_query_error", q, text, params, exc)
                        raise
                    if pool._on_query_results is not None:
                        safe_call(pool._on_query_results, "on_query_results", q, text, params, [])
                finally:
                    await cur.close()
            except BaseException:
                if own_tx and not conn.closed:
                    await pool._control(conn, "ROLLBACK", sent)
                raise
            if own_tx:
                await pool._control(conn, "COMMIT", sent)
        finally:
            await self._release(conn)


class AsyncConnectionPool(_AsyncQueryable):
    """A pool of PostgreSQL connections (create it with ``create_async_pool``)."""

    def __init__(self, config: PoolConfig) -> None:
        opts = config.options
        self._config = config
        self._pool_ref = self
        self._row_dicts = opts.row_type == "dict"
        self._on_query_start = opts.on_query_start
        self._on_query_results = opts.on_query_results
        self._on_query_error = opts.on_query_error
        # Set by pgfast.otel: told (block, "begin" / "end" / "retry", error) of each transaction.
        self._on_transaction: Callable[[object, str, BaseException | None], None] | None = None
        self._on_error = opts.on_error
        self._max_uses = opts.max_uses
        self._queue_timeout = float(opts.queue_timeout)
        self._query_timeout = None if opts.query_timeout is None else float(opts.query_timeout)
        # None once a pooler is found between pgfast and the server.
        self._prepare_threshold: int | None = opts.prepare_threshold
        self._queries = 0
        self._waiting = 0
        self._in_use = 0
        self._guard: asyncio.Future[None] | None = None  # async-only
        # begin async-only
        # Automatic pipelining: the connections in pipeline mode (lanes), the
        # connections being checked out to become one, the callers waiting
        # for room on a lane (in arrival order), and each text's routing.
        self._pipeline = opts.pipeline
        self._lanes: list[Lane] = []
        self._lanes_opening = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._routes: dict[str, bool] = {}
        self._lane_releases: set[asyncio.Task[None]] = set()
        # end async-only
        self._opened = False
        self._closed = False
        # Recently used idle connections, kept out of psycopg_pool (LIFO): the
        # hot path then skips psycopg_pool's checkout machinery. Guarded by
        # ``_lock`` together with ``_waiting`` so that a caller queued in
        # psycopg_pool is always handed a connection being released.
        self._hot: list[_PgConnection] = []
        self._lock = threading.Lock()
        self._column_types_cache: dict[Any, Any] = {}
        kwargs: Any = dict(config.connect_kwargs, context=ADAPTERS)
        if callable(opts.password):
            kwargs = self._connect_kwargs

        # The last failed connection attempt, while no attempt has succeeded since.
        self._connect_error: Exception | None = None
        self._connect_timeout = config.connect_timeout  # what libpq really waits per attempt
        idle_timeout = None if opts.idle_timeout is None else float(opts.idle_timeout)
        connection_class = type("_PgConnection", (_PgConnection,), {"_pgfast_pool": self})
        self._pool = PsycopgPool(
            config.conninfo,
            connection_class=connection_class,
            kwargs=kwargs,
            min_size=opts.min_size,
            max_size=opts.pool_size,
            open=False,
            configure=self._configure,
            check=self._check,
            name=f"pgfast-{next(_pool_numbers)}",
            timeout=self._queue_timeout,
            max_lifetime=float(opts.max_lifetime),
            max_idle=sweep_period(idle_timeout),
            reconnect_failed=self._reconnect_failed,
        )
        self._pool._pgfast_owner = weakref.ref(self)
        self._pool._pgfast_idle_timeout = idle_timeout

    async def _connect_kwargs(self) -> dict[str, Any]:
        """psycopg's connect() kwargs for one new connection (a password callable
        is called each time)."""
        config = self._config
        password = config.options.password
        if not callable(password):
            return dict(config.connect_kwargs, context=ADAPTERS)
        if True:  # ASYNC
            value = await _call(password)
        else:
            value = password()
        return dict(config.kwargs_with_password(value), context=ADAPTERS)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"size={self._config.options.pool_size}"
        return f"<pgfast.{type(self).__name__} {self._config.display!r} {state}>"

    # -- connections -------------------------------------------------------

    async def _connect_failed(self, exc: Exception) -> None:
        """A connection attempt failed (in psycopg_pool's worker, which retries later).

        When no connection is open, nothing will come back for the callers
        waiting in psycopg_pool: they get this error now. When some are open
        and busy, the waiters keep waiting for them.
        """
        self._report(exc)
        self._connect_error = exc
        if self._live_connections():
            return
        await self._pool.fail_waiters(lambda: _fresh(exc))

    def _live_connections(self) -> int:
        """Open connections: busy ones (they come back), hot ones and psycopg_pool's idle ones."""
        available = self._pool.get_stats().get("pool_available", 0)
        return self._in_use + len(self._hot) + available

    async def _configure(self, conn: _PgConnection) -> None:
        opts = self._config.options
        statements = conn._prepared = ClientPrepareManager()
        conn._pgfast_statement_prefix = statements.prefix
        conn.prepare_threshold = self._prepare_threshold
        try:
            if self._prepare_threshold is not None and await _behind_pooler(conn):
                self._pooler_found(conn, "its backend process id is not the one it was told")
            if opts.configure is not None:
                if True:  # ASYNC
                    await _call(opts.configure, conn)
                else:
                    opts.configure(conn)
                # It runs in autocommit mode; whatever it left open is committed.
                if conn.pgconn.transaction_status != IDLE:
                    await conn.execute("COMMIT")
                if not conn.autocommit:
                    await conn.set_autocommit(True)
        except Exception as exc:
            # psycopg_pool discards the connection; the waiters get the error
            # when no other connection can serve them, as for a failed connect.
            await self._connect_failed(exc)
            raise
        self._connect_error = None
        conn._pgfast_idle_since = monotonic()
        conn._pgfast_encoding = conn.info.encoding
        conn._pgfast_input_waiting = input_waiting(conn.pgconn.socket)
        conn._pgfast_on_close = opts.on_connection_closed
        if opts.on_connection_opened is not None:
            safe_call(opts.on_connection_opened, "on_connection_opened")

    async def _check(self, conn: _PgConnection) -> None:
        # Only connections idle for a while, or with input waiting (the
        # server ended the session, or a notification), pay a round trip.
        if (
            monotonic() - conn._pgfast_idle_since < LIVENESS_CHECK_AFTER
            and not conn._pgfast_input_waiting()
        ):
            return
        try:
            await psycopg_pool.AsyncConnectionPool.check_connection(conn)
        except Exception as exc:
            self._report(exc)
            # psycopg_pool drops a broken connection without closing it: close
            # it here so that on_connection_closed fires.
            await conn.close()
            raise

    def _pooler_found(self, conn: _PgConnection, evidence: str) -> None:
        """A pooler shares server connections between clients: stop preparing statements.

        A statement prepared on one server connection is unknown to the next
        one the pooler picks; inside a transaction that error would abort it.
        """
        conn.prepare_threshold = None
        if self._prepare_threshold is not None:
            self._prepare_threshold = None
            logger.info(
                "pgfast: pool %r: a connection pooler or proxy is between pgfast and the "
                "server (%s); server-side prepared statements are off for this pool",
                self._config.display,
                evidence,
            )

    def _reconnect_failed(self, pool: Any) -> None:
        self._report(Error(f"pool {self._config.display!r} could not reconnect to the server"))

    def _report(self, exc: BaseException) -> None:
        if isinstance(exc, psycopg.Error):
            rewrite_error(exc, None, None, self._config.secrets)
        if self._on_error is not None:
            safe_call(self._on_error, "on_error", exc)

    async def _acquire(self) -> _PgConnection:
        """A live connection: none that is known to be dead is handed out.

        A hot connection is used as is only when it was idle briefly and no
        input waits on its socket; otherwise it goes back to psycopg_pool,
        whose check (``_check``) replaces it if the server ended its session.
        """
        if self._closed:
            raise PoolClosedError(f"the pool {self._config.display!r} was disposed")
        hot = self._hot
        if not hot and self._lanes:  # async-only
            for parked in self._unpark_all():  # async-only
                await self._release(parked)  # async-only
        with self._lock:
            conn = hot.pop() if hot else None
            if conn is None:
                self._waiting += 1
            else:
                self._in_use += 1
        if conn is not None:
            if (
                monotonic() - conn._pgfast_idle_since < LIVENESS_CHECK_AFTER
                and not conn._pgfast_input_waiting()
            ):
                conn._pgfast_uses += 1
                return conn
            with self._lock:
                self._in_use -= 1
                self._waiting += 1
        try:
            if conn is not None:
                # Stale or dead: so are the other hot ones, likely.
                await self._pool.putconn(conn)
                await self._cool_all()
            if not self._opened:
                await self._open()
            conn = await self._getconn()
        except BaseException as exc:
            with self._lock:
                self._waiting -= 1
            if isinstance(exc, psycopg_pool.PoolTimeout):
                raise self._timeout_error() from None
            if isinstance(exc, psycopg_pool.PoolClosed):
                raise PoolClosedError(f"the pool {self._config.display!r} was disposed") from None
            raise
        with self._lock:
            self._waiting -= 1
            self._in_use += 1
        conn._pgfast_uses += 1
        return conn

    async def _getconn(self) -> _PgConnection:
        """A connection from psycopg_pool, or, when the server cannot be reached, its error.

        While no connection is open and the last attempt failed, a caller
        waits at most ``connect_timeout`` for psycopg_pool's next attempt.
        """
        deadline = monotonic() + self._queue_timeout
        while True:
            timeout = deadline - monotonic()
            if self._connect_error is not None and not self._live_connections():
                timeout = min(timeout, self._connect_timeout)
            try:
                conn: _PgConnection = await self._pool.getconn(timeout)
                return conn
            except psycopg_pool.PoolTimeout:
                error = self._connect_error
                if error is not None and not self._live_connections():
                    raise _fresh(error) from None
                if monotonic() >= deadline:
                    raise

    async def _open(self) -> None:
        await self._pool.open()
        self._opened = True
        # begin async-only
        # psycopg_pool's async workers outlive a cancellation: a pool nobody
        # disposed would keep asyncio.run() from returning. asyncio.run()
        # cancels the tasks left at exit; this one then disposes the pool.
        if self._guard is None and not self._closed:
            self._guard = asyncio.ensure_future(self._dispose_when_cancelled())

    async def _dispose_when_cancelled(self) -> None:
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            self._guard = None
            await self.dispose()
        # end async-only

    def _timeout_error(self) -> PoolTimeoutError:
        size = self._config.options.pool_size
        stats = self.stats()
        message = (
            f"no connection became free within {self._queue_timeout:g} s (queue_timeout): "
            f"pool_size={size}, {stats['size']} connections open or opening, "
            f"{stats['in_use']} busy, {self._waiting} other callers waiting"
        )
        if self._connect_error is not None:
            # Already redacted by _report.
            message += f"; the last connection attempt failed: {str(self._connect_error).strip()}"
        return PoolTimeoutError(message)

    async def _release(self, conn: _PgConnection) -> None:
        now = monotonic()
        conn._pgfast_idle_since = now
        keep = False
        pending = conn._pgfast_cancel
        if pending is not None:
            conn._pgfast_settle()
            conn._pgfast_cancel = None
            if not conn.closed and not await _delivered(pending):
                # The cancel request may still reach the server and stop
                # whatever runs next here: this connection is done.
                await conn.close()
        if conn.closed:
            # Broken: psycopg_pool drops it without closing it; closing it
            # here fires on_connection_closed.
            await conn.close()
        elif self._max_uses is not None and conn._pgfast_uses >= self._max_uses:
            expire(conn, now)  # psycopg_pool closes it and opens a replacement
        else:
            keep = conn.pgconn.transaction_status == IDLE and not expired(conn, now)
        hot = self._hot
        with self._lock:
            self._in_use -= 1
            if keep and not self._waiting and not self._closed:
                hot.append(conn)
                if now - hot[0]._pgfast_idle_since <= LIVENESS_CHECK_AFTER:
                    self._wake_lane_waiter()  # async-only
                    return
                conn = hot.pop(0)  # the oldest went stale: psycopg_pool takes it
        await self._pool.putconn(conn)
        self._wake_lane_waiter()  # async-only

    async def _cool_stale(self) -> None:
        """Hand the hot connections unused for a while back to psycopg_pool (at each sweep)."""
        now = monotonic()
        with self._lock:
            hot = self._hot
            stale = [c for c in hot if now - c._pgfast_idle_since >= LIVENESS_CHECK_AFTER]
            if stale:
                hot[:] = [c for c in hot if now - c._pgfast_idle_since < LIVENESS_CHECK_AFTER]
        for conn in stale:
            await self._pool.putconn(conn)

    async def _cool_all(self) -> None:
        """Hand every hot connection back to psycopg_pool (which checks, expires, closes)."""
        with self._lock:
            conns, self._hot[:] = self._hot[:], []
        for conn in conns:
            await self._pool.putconn(conn)

    # -- automatic pipelining --------------------------------------------------
    # begin async-only

    async def _run(self, q: SQLQuery, fetch: bool, dicts: bool | None = None) -> Any:
        text, params = q.format()
        if self._pipeline and self._pipelinable(text):
            return await self._pipelined(q, text, params, fetch, dicts)
        return await self._run_held(q, text, params, fetch, dicts)

    def _pipelinable(self, text: str) -> bool:
        """Whether ``text`` may share a connection with other callers' statements.

        Not a statement changing the session or the transaction state (SET,
        BEGIN, LISTEN, COPY, ...), nor several statements (the simple
        protocol, which pipeline mode does not allow, runs those).
        """
        routes = self._routes
        route = routes.get(text)
        if route is None:
            word = first_word(text)
            route = bool(word) and word not in EXCLUSIVE_WORDS and not has_several_statements(text)
            if len(routes) >= 4096:
                routes.clear()
            routes[text] = route
        return route

    async def _pipelined(
        self, q: SQLQuery, text: str, params: list[Any], fetch: bool, dicts: bool | None
    ) -> Any:
        """Run one statement on a lane, behind whatever is in flight there."""
        want_dicts = self._row_dicts if dicts is None else dicts
        lane = self._free_lane() or await self._lane_slot()
        self._queries += 1
        if self._on_query_start is not None:
            safe_call(self._on_query_start, "on_query_start", q, text, params)
        prepare: bool | None = None
        while True:
            try:
                entry = lane.send(text, params, fetch, want_dicts, prepare)
            except BaseException as exc:
                if not lane.entries and not lane.released:
                    lane.drained()  # a parameter that could not be sent: nothing was
                await self._claim_release(lane)
                if isinstance(exc, psycopg.Error):
                    self._failed(exc, q, text, params)
                elif self._on_query_error is not None:
                    safe_call(self._on_query_error, "on_query_error", q, text, params, exc)
                raise
            if self._slot_waiters and lane.accepting and lane.depth < MAX_DEPTH:
                self._wake_lane_waiter()
            timeout = self._query_timeout
            if timeout is not None:
                lane.arm(entry, timeout)
            assert entry.future is not None
            try:
                value = await entry.future
            except asyncio.CancelledError as exc:
                ended = lane.abandon(entry)
                if ended is not None:
                    # Its cancel request is on the way: wait (briefly) for the
                    # statement to end, as psycopg does on a held connection.
                    with contextlib.suppress(asyncio.CancelledError):
                        await ended
                await self._claim_release(lane)
                if self._on_query_error is not None:
                    safe_call(self._on_query_error, "on_query_error", q, text, params, exc)
                raise
            except psycopg.Error as exc:
                conn = lane.conn
                if entry.prep is not Prepare.NO and conn._pgfast_prepared_elsewhere(exc):
                    if entry.name not in lane.failed_prepares:
                        self._pooler_found(conn, f"the server answered {exc.sqlstate}")
                    prepare = False
                    await self._claim_release(lane)
                    lane = self._free_lane() or await self._lane_slot()
                    continue
                # Judged before the connection is released (and closed when broken).
                writes = not is_read_only_text(text)
                snapshot = entry.snapshot
                outcome = self._statement_failed(exc, conn, snapshot, writes, q, text, params, None)
                await self._claim_release(lane)
                if outcome is exc:
                    raise
                raise outcome from exc
            except BaseException as exc:  # query_timeout with others in flight, or a loader's error
                await self._claim_release(lane)
                if self._on_query_error is not None:
                    safe_call(self._on_query_error, "on_query_error", q, text, params, exc)
                raise
            await self._claim_release(lane)
            break
        if self._on_query_results is not None:
            safe_call(self._on_query_results, "on_query_results", q, text, params, value)
        return value

    async def _claim_release(self, lane: Lane) -> None:
        """Give the drained lane's connection back to the pool, when it needs the slow
        path, before the statement returns (as a held connection is)."""
        if lane.pending_release is not None:
            conn, lane.pending_release = lane.pending_release, None
            await self._release(conn)

    def _free_lane(self, waited: bool = False) -> Lane | None:
        """A lane with room now: an idle connection made one, else the least loaded.

        ``None`` when the caller should wait (behind earlier waiters, for
        fairness) or check out a further connection (``_lane_slot``).
        """
        if self._closed:
            raise PoolClosedError(f"the pool {self._config.display!r} was disposed")
        if self._slot_waiters and not waited:
            return None
        lanes = self._lanes
        for lane in lanes:
            # Statements ready in the same event-loop turn travel together.
            if 0 < lane.turn_writes < TURN_BATCH and lane.accepting and self._keeps(lane):
                return lane
        for lane in list(lanes):
            if lane.parked and lane.conn._pgfast_input_waiting():
                # Whatever came (the server ending the session?) is read first.
                lane.readable()
            if lane.parked and self._keeps(lane):
                return lane
        conn = self._take_hot()
        if conn is not None:
            return self._new_lane(conn)
        if not lanes:
            return None
        # Callers waiting for a connection of their own (a transaction, a
        # stream) get one as soon as a lane drains: lanes stop taking work.
        exclusive = self._waiting - self._lanes_opening
        draining = sum(1 for lane in lanes if not lane.accepting)
        best: Lane | None = None
        for lane in lanes:
            if lane.accepting and (best is None or lane.depth < best.depth):
                best = lane
        while exclusive > draining and best is not None:
            best.accepting = False
            draining += 1
            best = None
            for lane in lanes:
                if lane.accepting and (best is None or lane.depth < best.depth):
                    best = lane
        if best is None or best.depth >= MAX_DEPTH:
            return None
        if best.depth and self._can_grow():
            return None  # a connection of its own beats queueing behind others
        if not self._keeps(best):
            return self._free_lane(waited)  # that one drains and goes; another
        return best

    def _keeps(self, lane: Lane) -> bool:
        """Count one more use of ``lane``'s connection; False when past its max_lifetime
        (the lane then takes no more statements). The use that reaches max_uses is its last."""
        conn = lane.conn
        if expired(conn, monotonic()):
            lane.accepting = False
            if lane.parked:
                lane.retire()
            return False
        conn._pgfast_uses += 1
        if self._max_uses is not None and conn._pgfast_uses >= self._max_uses:
            lane.accepting = False
        return True

    def _may_park(self, lane: Lane) -> bool:
        """Whether a drained lane may keep its connection: not while others wait for
        one, nor past its max_lifetime."""
        return (
            not self._closed
            and self._waiting <= self._lanes_opening
            and not expired(lane.conn, monotonic())
        )

    def _unpark_all(self) -> list[_PgConnection]:
        """Retire the parked lanes; their connections, when the pool must release them."""
        conns = []
        for lane in list(self._lanes):
            if lane.parked:
                lane.retire()
                if lane.pending_release is not None:
                    conns.append(lane.pending_release)
                    lane.pending_release = None
        return conns

    def _can_grow(self) -> bool:
        return self._in_use + self._lanes_opening < self._config.options.pool_size

    def _take_hot(self) -> _PgConnection | None:
        """A hot connection usable at once (as ``_acquire`` would hand out), or ``None``."""
        hot = self._hot
        if not hot:
            return None
        with self._lock:
            if not hot or self._waiting > self._lanes_opening:
                return None
            conn = hot[-1]
            if (
                monotonic() - conn._pgfast_idle_since >= LIVENESS_CHECK_AFTER
                or conn._pgfast_input_waiting()
            ):
                return None  # _acquire hands it to psycopg_pool for a check
            hot.pop()
            self._in_use += 1
        conn._pgfast_uses += 1
        return conn

    def _new_lane(self, conn: _PgConnection) -> Lane:
        lane = Lane(self, conn, asyncio.get_running_loop())
        self._lanes.append(lane)
        if self._max_uses is not None and conn._pgfast_uses >= self._max_uses:
            lane.accepting = False
        return lane

    async def _lane_slot(self) -> Lane:
        """Wait for room on a lane, or check a connection out to make one."""
        give_up = monotonic() + self._queue_timeout
        waited = False
        while True:
            lane = self._free_lane(waited)
            if lane is not None:
                return lane
            # With no lane at all, one caller at a time waits for a connection
            # (the others wait for its lane): callers queued in psycopg_pool
            # would stay there while a lane serves everyone else.
            if self._can_grow() or not (self._lanes or self._lanes_opening):
                self._lanes_opening += 1
                try:
                    conn = await self._acquire()
                except BaseException:
                    self._wake_lane_waiter()  # the next one tries in its turn
                    raise
                finally:
                    self._lanes_opening -= 1
                return self._new_lane(conn)
            remaining = give_up - monotonic()
            if remaining <= 0:
                raise self._timeout_error()
            waiter = asyncio.get_running_loop().create_future()
            if waited:
                self._slot_waiters.appendleft(waiter)  # keep its place in line
            else:
                self._slot_waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._wake_lane_waiter()  # pass the wake-up on
                if isinstance(exc, asyncio.TimeoutError):
                    raise self._timeout_error() from None
                raise
            finally:
                if waiter in self._slot_waiters:
                    self._slot_waiters.remove(waiter)
            waited = True

    def _wake_lane_waiter(self) -> None:
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _lane_gone(self, lane: Lane) -> None:
        with contextlib.suppress(ValueError):
            self._lanes.remove(lane)

    def _return_lane_conn(self, lane: Lane, conn: _PgConnection) -> _PgConnection | None:
        """A lane drained: its connection goes hot at once when nothing needs checking."""
        now = monotonic()
        kept = False
        with self._lock:
            if (
                conn._pgfast_cancel is None
                and not conn.closed
                and conn.pgconn.transaction_status == IDLE
                and not self._waiting
                and not self._closed
                and (self._max_uses is None or conn._pgfast_uses < self._max_uses)
                and not expired(conn, now)
            ):
                conn._pgfast_idle_since = now
                self._in_use -= 1
                self._hot.append(conn)
                kept = True
        if kept:
            self._wake_lane_waiter()
            return None
        # A caller of the lane releases it inline (as a held connection is
        # released before its statement returns); failing that, a task does.
        asyncio.get_running_loop().call_soon(self._release_unclaimed, lane)
        return conn

    def _release_unclaimed(self, lane: Lane) -> None:
        conn, lane.pending_release = lane.pending_release, None
        if conn is not None:
            task = asyncio.get_running_loop().create_task(self._release(conn))
            self._lane_releases.add(task)
            task.add_done_callback(self._lane_releases.discard)

    # end async-only

    # -- running statements --------------------------------------------------

    def _failed(
        self,
        exc: psycopg.Error,
        q: Any,
        text: str,
        params: list[Any],
        sent: Sent | None = None,
    ) -> None:
        """Redact ``exc`` of ``params`` (of everything ``sent`` in its transaction,
        when given) and tell the error hook."""
        self._redact(exc, text, params, sent)
        if self._on_query_error is not None:
            safe_call(self._on_query_error, "on_query_error", q, text, params, exc)

    def _redact(self, exc: psycopg.Error, text: str, params: list[Any], sent: Sent | None) -> None:
        if sent is None:
            rewrite_error(exc, text, params, self._config.secrets)
        else:
            known = sent.params
            redacted = params if known is None else known
            rewrite_error(exc, text, redacted, self._config.secrets, known is None)

    def _statement_failed(
        self,
        exc: psycopg.Error,
        conn: _PgConnection,
        deadline: Deadline | None,
        may_commit: bool,
        q: Any,
        text: str,
        params: list[Any],
        sent: Sent | None,
    ) -> BaseException:
        """Redact ``exc``, tell the error hook, and return the error the caller gets."""
        self._redact(exc, text, params, sent)
        outcome = self._outcome(exc, conn, deadline, may_commit)
        if self._on_query_error is not None:
            safe_call(self._on_query_error, "on_query_error", q, text, params, outcome)
        return outcome

    async def _control(self, conn: _PgConnection, statement: str, sent: Sent | None = None) -> None:
        """Run BEGIN, COMMIT, SAVEPOINT, ...: its error is redacted of ``sent``.

        ``sent`` holds the parameters of the statements sent before it in the
        transaction, which a COMMIT may echo (a deferred constraint's DETAIL).
        A ROLLBACK goes through psycopg's ``execute``, which then forgets its
        prepared statements (they may use objects the rollback undid); the
        others are sent as plain simple queries, without a cursor or psycopg's
        prepare bookkeeping: about 18 µs less per statement, two per ``tx()``.
        """
        if conn._pgfast_cancel is not None:
            conn._pgfast_settle()  # the interrupted statement has ended
        deadline = self._arm(conn)
        try:
            if statement.startswith("ROLLBACK"):
                await conn.execute(statement)
            else:
                conn.pgconn.send_query(statement.encode())
                for result in await conn.wait(generators.execute(conn.pgconn)):
                    if result.status == ExecStatus.FATAL_ERROR:
                        encoding = conn.info.encoding
                        raise psycopg.errors.error_from_result(result, encoding=encoding)
        except psycopg.Error as exc:
            q = sql.unsafe(statement)
            commit = statement == "COMMIT"
            outcome = self._statement_failed(exc, conn, deadline, commit, q, statement, [], sent)
            if outcome is exc:
                raise
            raise outcome from exc
        finally:
            if deadline is not None:
                self._end_deadline(conn, deadline)

    async def _execute(
        self,
        conn: _PgConnection,
        q: SQLQuery,
        text: str,
        params: list[Any],
        fetch: bool,
        dicts: bool | None = None,
        sent: Sent | None = None,
    ) -> Any:
        """Run one statement; ``sent``: in a transaction, all the parameters sent in it."""
        self._queries += 1
        if conn._pgfast_cancel is not None:
            conn._pgfast_settle()  # an interrupted statement before this one has ended
        if self._on_query_start is not None:
            safe_call(self._on_query_start, "on_query_start", q, text, params)
        deadline = self._arm(conn)
        idle = conn.pgconn.transaction_status == IDLE
        rows: list[Any] = []
        count = 0
        try:
            if params:
                want_dicts = self._row_dicts if dicts is None else dicts
                try:
                    value = await _send(conn, text, params, fetch, want_dicts, None)
                except PREPARED_ELSEWHERE as exc:
                    if not (idle and conn._pgfast_prepared_elsewhere(exc)):
                        raise
                    self._pooler_found(conn, f"the server answered {exc.sqlstate}")
                    value = await _send(conn, text, params, fetch, want_dicts, False)
                if fetch:
                    rows = value
                else:
                    count = value
            else:
                # The simple protocol, which allows several statements: the
                # last one gives the result.
                cur = AsyncRawCursor(conn, row_factory=tuple_row)
                await cur.execute(text)
                while cur.nextset():
                    pass
                result = cur.pgresult
                rows = []
                if not fetch:
                    count = max(cur.rowcount, 0)
                elif result is None or result.status != TUPLES_OK:
                    pass
                else:
                    rows = await cur.fetchall()
                    if self._row_dicts if dicts is None else dicts:
                        names = _names(result, conn)
                        rows = _dicts(names, rows)
        except psycopg.Error as exc:
            # A statement may echo values sent earlier in its transaction.
            writes = idle and not is_read_only_text(text)
            outcome = self._statement_failed(exc, conn, deadline, writes, q, text, params, sent)
            if outcome is exc:
                raise
            raise outcome from exc
        except BaseException as exc:  # cancelled, interrupted: the statement ended too
            if self._on_query_error is not None:
                safe_call(self._on_query_error, "on_query_error", q, text, params, exc)
            raise
        finally:
            if deadline is not None:
                self._end_deadline(conn, deadline)
        if self._on_query_results is not None:
            safe_call(self._on_query_results, "on_query_results", q, text, params, rows)
        return rows if fetch else count

    def _outcome(
        self, exc: psycopg.Error, conn: _PgConnection, deadline: Deadline | None, may_commit: bool
    ) -> BaseException:
        """The error the caller gets for ``exc``: itself, or what it means.

        ``may_commit``: the statement commits work if it completes (a COMMIT,
        or a write outside a transaction), so losing the link after sending
        it leaves the caller not knowing whether it did.
        """
        unknown = may_commit and exc.sqlstate is None and conn.broken
        if deadline is not None and deadline.fired:
            timeout = self._query_timeout
            if deadline.severed:
                what = (
                    f"did not answer within {timeout:g} s (query_timeout), nor confirm the "
                    "cancel within one more second: the connection was closed"
                )
                if unknown:
                    return QueryTimeoutCommitUnknownError(
                        f"the statement {what}; it may or may not have committed"
                    )
                return QueryTimeoutError(f"the statement {what}")
            return QueryTimeoutError(
                f"the statement did not answer within {timeout:g} s (query_timeout) "
                "and was cancelled"
            )
        if unknown:
            return CommitUnknownError(
                "the connection was lost after the statement was sent and before its "
                f"answer: it may or may not have committed ({str(exc).strip()})"
            )
        return exc

    def _arm(self, conn: _PgConnection) -> Deadline | None:
        """The ``query_timeout`` deadline of a statement about to be sent on ``conn``."""
        timeout = self._query_timeout
        return None if timeout is None else arm_deadline(conn.pgconn, timeout)

    @asynccontextmanager
    async def _deadline(self, conn: _PgConnection) -> AsyncIterator[None]:
        """``query_timeout`` around one step that commits nothing (a stream's fetches)."""
        deadline = self._arm(conn)
        if deadline is None:
            yield
            return
        try:
            yield
        except psycopg.Error as exc:
            outcome = self._outcome(exc, conn, deadline, False)
            if outcome is exc:
                raise
            raise outcome from exc
        finally:
            self._end_deadline(conn, deadline)

    def _end_deadline(self, conn: _PgConnection, deadline: Deadline) -> None:
        disarm_deadline(deadline)
        if deadline.fired:
            conn._pgfast_cancel = deadline  # see _release

    async def _execute_many(
        self,
        conn: _PgConnection,
        queries: list[SQLQuery],
        formatted: list[tuple[str, list[Any]]],
    ) -> list[list[Row]]:
        self._queries += len(queries)
        cursors: list[AsyncRawCursor[Any]] = []
        started = 0
        deadline = self._arm(conn)
        idle = conn.pgconn.transaction_status == IDLE
        try:
            # One round trip: psycopg's pipeline mode, inside one transaction
            # (a savepoint when the connection is already in one).
            async with conn.pipeline(), conn.transaction():
                for q, (text, params) in zip(queries, formatted, strict=True):
                    if self._on_query_start is not None:
                        safe_call(self._on_query_start, "on_query_start", q, text, params)
                    started += 1
                    cur = AsyncRawCursor(conn, row_factory=tuple_row)
                    await cur.execute(text, params)
                    cursors.append(cur)
        except psycopg.Error as exc:
            # The failing statement is the first one left without a result;
            # when none is, the COMMIT failed, which may echo any parameter.
            failed = next((i for i, c in enumerate(cursors) if c.pgresult is None), None)
            if failed is None and len(cursors) == len(queries):
                sent = Sent()
                for _, params in formatted:
                    sent.add(params)
                self._failed(exc, sql.unsafe("COMMIT"), "COMMIT", [], sent)
            else:
                text, params = formatted[failed or 0]
                self._failed(exc, queries[failed or 0], text, params)
            # The batch rolled back: every other started statement ends with it.
            if self._on_query_error is not None:
                for i in range(started):
                    if i != failed:
                        text, params = formatted[i]
                        hook = self._on_query_error
                        safe_call(hook, "on_query_error", queries[i], text, params, exc)
            # Run in one transaction: lost at its COMMIT, it may have committed.
            writes = idle and not all(is_read_only_text(text) for text, _ in formatted)
            outcome = self._outcome(exc, conn, deadline, writes)
            if outcome is exc:
                raise
            raise outcome from exc
        finally:
            if deadline is not None:
                self._end_deadline(conn, deadline)
        results = []
        for cur in cursors:
            result = cur.pgresult
            rows: list[Any] = []
            if result is not None and result.status == TUPLES_OK:
                rows = await cur.fetchall()
                if self._row_dicts:
                    names = _names(result, conn)
                    rows = _dicts(names, rows)
            results.append(rows)
        if self._on_query_results is not None:
            for q, (text, params), rows in zip(queries, formatted, results, strict=True):
                safe_call(self._on_query_results, "on_query_results", q, text, params, rows)
        return results

    async def _declare(self, cur: Any, q: SQLQuery, text: str, params: list[Any]) -> None:
        self._queries += 1
        if cur.connection._pgfast_cancel is not None:
            cur.connection._pgfast_settle()
        if self._on_query_start is not None:
            safe_call(self._on_query_start, "on_query_start", q, text, params)
        try:
            await cur.execute(text, params or None)
        except psycopg.Error as exc:
            self._failed(exc, q, text, params)
            raise

    # -- transactions and connections ----------------------------------------

    def _block(self, begin: str | None) -> _AsyncTransactionBlock:
        return _AsyncTransactionBlock(self, None, begin)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """A dedicated connection for several operations, released at the end of the block."""
        conn = await self._acquire()
        dedicated = AsyncConnection(self, conn)
        try:
            yield dedicated
        except BaseException as exc:
            await self._end_dedicated(dedicated, conn, exc)
            # Only committed transactions left steps here: their work is in the
            # database, so they run after an error too (without hiding it). A
            # cancellation or an interrupt must not wait on user code: dropped.
            if isinstance(exc, (Exception, GeneratorExit)):
                await dedicated._run_post_commit(exc)
            elif dedicated._post_commit:
                logger.warning(
                    "pgfast: %d post-commit step(s) dropped: the connection block was "
                    "interrupted (%s)",
                    len(dedicated._post_commit),
                    type(exc).__name__,
                )
            raise
        await self._end_dedicated(dedicated, conn, None)
        await dedicated._run_post_commit()

    async def _end_dedicated(
        self, dedicated: AsyncConnection, conn: _PgConnection, error: BaseException | None
    ) -> None:
        """Roll back what the block left open and return the connection to the pool."""
        dedicated._conn = None
        try:
            if conn.pgconn.transaction_status != IDLE and not conn.closed:
                try:
                    await self._control(conn, "ROLLBACK")
                except psycopg.Error as failure:
                    if error is None:
                        raise
                    # Keep the block's error; the pool discards a broken connection.
                    logger.warning("pgfast: ROLLBACK failed: %s", failure)
        finally:
            await self._release(conn)

    async def task(self, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``fn(connection)`` with a dedicated connection and return its result."""
        async with self.connection() as conn:
            return await _settle(fn(conn), "task")

    # -- life cycle ----------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """``size``, ``idle``, ``in_use``, ``waiting`` connections/callers and ``queries`` run."""
        in_use = self._in_use
        waiting = self._waiting
        waiting += len(self._slot_waiters)  # async-only
        parked = sum(1 for lane in self._lanes if lane.parked)  # async-only
        in_use -= parked  # async-only
        if self._opened and not self._closed:
            measures = self._pool.get_stats()
            idle = measures.get("pool_available", 0) + len(self._hot)
            idle += parked  # async-only
            size = max(measures.get("pool_size", 0), in_use + idle)
        else:
            size, idle = in_use, 0
        return {
            "size": size,
            "idle": idle,
            "in_use": in_use,
            "waiting": waiting,
            "queries": self._queries,
        }

    async def dispose(self) -> None:
        """Close the pool: new operations raise PoolClosedError, running ones finish.

        Idle connections are closed now, busy ones when they are returned.
        Calling it again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        guard, self._guard = self._guard, None  # async-only
        if guard is not None and guard is not asyncio.current_task():  # async-only
            guard.cancel()  # async-only
        for conn in self._unpark_all():  # async-only
            await self._release(conn)  # async-only
        while self._slot_waiters:  # async-only
            # each woken waiter sees the pool closed  # async-only
            self._wake_lane_waiter()  # async-only
        await self._pool.close()
        # After close, psycopg_pool closes what it is handed back.
        await self._cool_all()

    async def __aenter__(self) -> AsyncConnectionPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.dispose()


async def _run_tx(
    block: _AsyncTransactionBlock, fn: Callable[[AsyncTransaction], Awaitable[T]], attempts: int
) -> T:
    for attempt in range(1, attempts + 1):
        result: Any = None
        try:
            async with block as tx:
                result = await _settle(fn(tx), "tx")
            return result  # type: ignore[no-any-return]
        except PostCommitError as exc:
            exc.result = result
            raise
        except psycopg.Error as exc:
            if attempt == attempts or exc.sqlstate not in RETRYABLE_TX:
                raise
            if block._pool._on_transaction is not None:
                block._pool._on_transaction(block, "retry", exc)
            logger.info("pgfast: retrying a transaction (attempt %d): %s", attempt + 1, exc)
        await asyncio.sleep(backoff(attempt))
    raise AssertionError("unreachable")  # pragma: no cover


class AsyncConnection(_AsyncQueryable):
    """One connection of the pool, dedicated to a block of work (``pool.connection()``)."""

    _what = "connection"

    def __init__(self, pool: AsyncConnectionPool, conn: _PgConnection) -> None:
        self._pool_ref = pool
        self._conn: _PgConnection | None = conn
        self._post_commit: list[Callable[[], Any]] = []
        self._in_transaction = False

    def __repr__(self) -> str:
        state = "ended" if self._conn is None else "open"
        return f"<pgfast.{type(self).__name__} {state}>"

    async def _acquire(self) -> _PgConnection:
        conn = self._conn
        if conn is None:
            ended(self._what)
        return conn

    async def _release(self, conn: _PgConnection) -> None:
        pass

    async def _run_post_commit(self, pending: BaseException | None = None) -> None:
        """Run every step, even after one fails.

        Failing steps raise one ``PostCommitError`` once all have run; with an
        error ``pending`` (the block's own), they are logged instead.
        """
        steps, self._post_commit = self._post_commit, []
        errors: list[BaseException] = []
        for step in steps:
            try:
                if True:  # ASYNC
                    await _call(step)
                else:
                    step()
            except Exception as exc:
                if pending is None:
                    errors.append(exc)
                else:
                    logger.exception("pgfast: a post-commit step failed (after %r)", pending)
        if errors:
            raise PostCommitError(
                f"the transaction committed, then {len(errors)} of its {len(steps)} "
                f"post-commit step(s) raised; the first: {type(errors[0]).__name__}: {errors[0]}",
                None,
                errors,
            ) from errors[0]

    def _block(self, begin: str | None) -> _AsyncTransactionBlock:
        return _AsyncTransactionBlock(self._pool_ref, self, begin)

    async def task(self, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``fn(self)``: this connection already is dedicated."""
        await self._acquire()
        return await _settle(fn(self), "task")


class AsyncTransaction(AsyncConnection):
    """A transaction in progress (or a savepoint inside one)."""

    _what = "transaction"
    _sent: Sent

    def __init__(
        self,
        pool: AsyncConnectionPool,
        conn: _PgConnection,
        savepoint: str | None,
        sent: Sent,
    ) -> None:
        super().__init__(pool, conn)
        self._savepoint = savepoint
        self._savepoints = count(1)
        self._sent = sent  # shared by the transaction and its savepoints

    def transaction(self, **options: Unpack[TransactionOptions]) -> _AsyncTransactionBlock:
        """A SAVEPOINT: an error in the block rolls back to it and re-raises."""
        check_transaction_options(options)
        check_savepoint_options(options)
        return _AsyncTransactionBlock(self._pool_ref, self, None)

    async def tx(
        self,
        fn: Callable[[AsyncTransaction], Awaitable[T]],
        *,
        retry_serialization_failures: bool | int = False,
        **options: Unpack[TransactionOptions],
    ) -> T:
        """Run ``fn(savepoint)`` in a SAVEPOINT; retries belong to the outermost ``tx``."""
        check_savepoint_options({"retry_serialization_failures": retry_serialization_failures})
        async with self.transaction(**options) as savepoint:
            return await _settle(fn(savepoint), "tx")

    def add_post_commit_step(self, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` after the outermost transaction commits and releases its connection.

        Dropped when this transaction (or savepoint) rolls back or is retried.
        """
        if self._conn is None:
            ended(self._what)
        if not callable(fn):
            raise TypeError(f"a post-commit step must be callable, not {type(fn).__name__}")
        self._post_commit.append(fn)

    async def advisory_lock(self, key: int | tuple[int, int], *, shared: bool = False) -> None:
        """Wait for the transaction-scoped advisory lock ``key`` (an int or two ints).

        ``shared=True`` takes the shared lock, which other shared holders do not block.
        """
        function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        await self.query(advisory_lock_query(function, key))

    async def try_advisory_lock(self, key: int | tuple[int, int], *, shared: bool = False) -> bool:
        """Take the transaction-scoped advisory lock ``key`` if it is free; say if it was."""
        function = "pg_try_advisory_xact_lock_shared" if shared else "pg_try_advisory_xact_lock"
        return bool(await self.query_value(advisory_lock_query(function, key)))


class _AsyncTransactionBlock:
    """``async with``: BEGIN (or SAVEPOINT) on entry, COMMIT (or RELEASE) / ROLLBACK on exit.

    ``parent`` is ``None`` for a pool (a connection is checked out for the
    block), a dedicated connection, or a transaction (then it is a savepoint).
    """

    def __init__(
        self, pool: AsyncConnectionPool, parent: AsyncConnection | None, begin: str | None
    ) -> None:
        self._pool = pool
        self._parent = parent
        self._begin = begin
        self._tx: AsyncTransaction | None = None

    async def __aenter__(self) -> AsyncTransaction:
        parent = self._parent
        if parent is None:
            conn = await self._pool._acquire()
        else:
            conn = await parent._acquire()
            if parent._in_transaction:
                raise Error(f"this {parent._what} is already running a nested transaction")
        savepoint = None
        sent = Sent()
        if isinstance(parent, AsyncTransaction):
            savepoint = f"pgfast_savepoint_{next(parent._savepoints)}"
            statement = f"SAVEPOINT {savepoint}"
            sent = parent._sent
        else:
            assert self._begin is not None
            statement = self._begin
            if self._pool._on_transaction is not None:
                self._pool._on_transaction(self, "begin", None)
        try:
            await self._pool._control(conn, statement, sent)
        except BaseException as error:
            if self._pool._on_transaction is not None:
                self._pool._on_transaction(self, "end", error)
            if parent is None:
                await self._pool._release(conn)
            raise
        if parent is not None:
            parent._in_transaction = True
        self._tx = AsyncTransaction(self._pool, conn, savepoint, sent)
        return self._tx

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tx = self._tx
        assert tx is not None and tx._conn is not None
        conn = tx._conn
        tx._conn = None
        self._tx = None
        parent = self._parent
        if parent is not None:
            parent._in_transaction = False
        try:
            if exc is None:
                await self._commit(conn, tx)
            else:
                try:
                    await self._rollback(conn, tx)
                except psycopg.Error as failure:
                    # Keep the user's exception; a broken connection is
                    # discarded by the pool on release.
                    logger.warning("pgfast: ROLLBACK failed: %s", failure)
        except BaseException as error:
            exc = error  # the transaction's outcome, for the end hook
            raise
        finally:
            if self._pool._on_transaction is not None:
                self._pool._on_transaction(self, "end", exc)
            if parent is None:
                await self._pool._release(conn)
        if exc is None:
            if parent is None:
                await tx._run_post_commit()
            else:
                parent._post_commit.extend(tx._post_commit)

    async def _commit(self, conn: _PgConnection, tx: AsyncTransaction) -> None:
        if conn.broken or conn.closed:
            raise Error(
                f"the {'savepoint' if tx._savepoint else 'transaction'} did not commit: its "
                "connection was lost during the block (catching that error does not undo it)"
            )
        if conn.pgconn.transaction_status == INERROR:
            # COMMIT would silently roll back: say so instead.
            await self._rollback(conn, tx)
            raise Error(
                f"the {'savepoint' if tx._savepoint else 'transaction'} was rolled back: "
                "one of its statements failed (catching the error does not undo that; "
                "use a nested transaction to recover from an error)"
            )
        if tx._savepoint is None:
            await self._pool._control(conn, "COMMIT", tx._sent)
        else:
            await self._pool._control(conn, f"RELEASE SAVEPOINT {tx._savepoint}", tx._sent)

    async def _rollback(self, conn: _PgConnection, tx: AsyncTransaction) -> None:
        if conn.closed:
            return
        if tx._savepoint is None:
            await self._pool._control(conn, "ROLLBACK", tx._sent)
        else:
            await self._pool._control(
                conn,
                f"ROLLBACK TO SAVEPOINT {tx._savepoint}; RELEASE SAVEPOINT {tx._savepoint}",
                tx._sent,
            )
