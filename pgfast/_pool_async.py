"""The async pool: borrowing connections and their life cycle.

Statements are run by ``_execute_async``; the query methods come from
``_queryable_async``, dedicated connections and transactions from
``_transaction_async``.

``_pool_sync.py`` is generated from this file by ``tools/async_to_sync.py``;
edit this file and regenerate, never the other.
"""

from __future__ import annotations

import asyncio
import contextlib  # async-only
import math
import threading
import weakref
from collections import deque  # async-only
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from itertools import count
from time import monotonic
from types import TracebackType
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg._preparing import Prepare
from psycopg.pq import TransactionStatus

from . import _impl
from ._config import PoolConfig
from ._connection_async import _behind_pooler, _delivered, _PgConnection
from ._error_text import rewrite_error
from ._exceptions import (
    Error,
    PoolClosedError,
    PoolTimeoutError,
)
from ._execute_async import AsyncStatementRunner, _fresh
from ._pipeline import EXCLUSIVE_WORDS, MAX_DEPTH, Lane, Route, first_word  # async-only
from ._pool_common import (
    ADAPTERS,
    LIVENESS_CHECK_AFTER,
    ClientPrepareManager,
    SQLQuery,
    input_waiting,
    logger,
    safe_call,
    sweep_period,
)
from ._psycopg_pool_async import PsycopgPool, expire, expired
from ._queryable_async import (
    _AsyncQueryable,
    _call,  # async-only
    _settle,
)
from ._split import has_several_statements
from ._transaction_async import AsyncConnection, _AsyncTransactionBlock

T = TypeVar("T")
IDLE = TransactionStatus.IDLE
_pool_numbers = count(1)
is_read_only_text = _impl.classify.is_read_only


class AsyncConnectionPool(AsyncStatementRunner, _AsyncQueryable):
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
        self._routes: dict[str, Route] = {}
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

    async def _probe_connection(self, timeout: float) -> psycopg.AsyncConnection[Any]:
        """A connection of its own, outside the pool, for a cluster's health probes:
        the pool's server and login, waiting at most ``timeout`` seconds to connect."""
        kwargs = await self._connect_kwargs()
        kwargs["connect_timeout"] = math.ceil(timeout)
        return await psycopg.AsyncConnection.connect(self._config.conninfo, **kwargs)

    async def _fail_waiters(self, error: Exception) -> None:
        """Fail every caller waiting for a connection with (a copy of) ``error``."""
        await self._pool.fail_waiters(lambda: _fresh(error))

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
        await self._fail_waiters(exc)

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

    # begin async-only
    # -- automatic pipelining: connections lent as lanes (see _pipeline) -------

    async def _run(self, q: SQLQuery, fetch: bool, dicts: bool | None = None) -> Any:
        text, params = q.format()
        if self._pipeline:
            route = self._route(text)
            if route.pipelined:
                return await self._pipelined(q, text, params, fetch, dicts, route)
        return await self._run_held(q, text, params, fetch, dicts)

    def _route(self, text: str) -> Route:
        """What the pool knows of ``text``: whether it may share a connection with
        other callers' statements, and how quickly it answers.

        Not a statement changing the session or the transaction state (SET,
        BEGIN, LISTEN, COPY, ...), nor several statements (the simple
        protocol, which pipeline mode does not allow, runs those).
        """
        routes = self._routes
        route = routes.get(text)
        if route is None:
            word = first_word(text)
            route = Route(
                bool(word) and word not in EXCLUSIVE_WORDS and not has_several_statements(text)
            )
            if len(routes) >= 4096:
                routes.clear()
            routes[text] = route
        return route

    async def _pipelined(
        self,
        q: SQLQuery,
        text: str,
        params: list[Any],
        fetch: bool,
        dicts: bool | None,
        route: Route,
    ) -> Any:
        """Run one statement on a lane, behind whatever is in flight there."""
        want_dicts = self._row_dicts if dicts is None else dicts
        lane = self._free_lane(route) or await self._lane_slot(route)
        self._queries += 1
        if self._on_query_start is not None:
            safe_call(self._on_query_start, "on_query_start", q, text, params)
        prepare: bool | None = None
        while True:
            try:
                entry = lane.send(text, params, fetch, want_dicts, prepare, route)
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
                    lane = self._free_lane(route) or await self._lane_slot(route)
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

    def _free_lane(self, route: Route, waited: bool = False) -> Lane | None:
        """A lane with room now: for a quick statement, the batch of quick ones written
        in this event-loop turn; else an idle connection made one, else the least loaded.

        ``None`` when the caller should wait (behind earlier waiters, for
        fairness) or check out a further connection (``_lane_slot``).
        """
        if self._closed:
            raise PoolClosedError(f"the pool {self._config.display!r} was disposed")
        if self._slot_waiters and not waited:
            return None
        lanes = self._lanes
        if route.quick:
            for lane in lanes:
                if lane.takes_quick() and self._keeps(lane):
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
            return self._free_lane(route, waited)  # that one drains and goes; another
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

    async def _lane_slot(self, route: Route) -> Lane:
        """Wait for room on a lane, or check a connection out to make one."""
        give_up = monotonic() + self._queue_timeout
        waited = False
        while True:
            lane = self._free_lane(route, waited)
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
