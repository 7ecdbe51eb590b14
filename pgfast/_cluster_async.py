"""The async primary/replica cluster; routing state and decisions live in ``_cluster_common``.

``_cluster_sync.py`` is generated from this file by ``tools/async_to_sync.py``;
edit this file and regenerate, never the other.

Every operation runs on a dedicated connection of one node's pool, checked
out here: a read's connection is tracked (cut when its node is marked down,
so the read runs again elsewhere), and a write knows whether it failed before
anything was sent (then it may wait for a primary and run there) or after
(never run again).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar, cast

import psycopg
from psycopg import generators
from psycopg.pq import TransactionStatus

from ._bulk_async import Conditions, Names, Records, Types
from ._cluster_common import (
    HURRIED_INTERVAL,
    READ_ONLY_SQL_TRANSACTION,
    REPLAY_LSN_SQL,
    ROLE_SQL,
    STATUS_SQL,
    WRITE_LSN_SQL,
    AsyncWorker,
    ClusterState,
    Failure,
    ProbeRefused,
    classify_failure,
    each_async,
    is_read_only,
    probe_row,
    probe_timeout,
    running_async,
    start_async,
    stop_async,
    wait_async,
)
from ._exceptions import NoPrimaryError, PoolClosedError, PoolTimeoutError, PostCommitError
from ._pool_async import AsyncConnectionPool
from ._pool_common import (
    IsolationLevel,
    Row,
    SQLQuery,
    TransactionOptions,
    Unpack,
    _isolation,
    check_queries,
    check_transaction_options,
    logger,
    not_a_query,
)
from ._queryable_async import _AsyncQueryable
from ._transaction_async import AsyncConnection, AsyncTransaction

T = TypeVar("T")
IDLE = TransactionStatus.IDLE
Operation = Callable[[_AsyncQueryable], Awaitable[T]]
ProbeConnection = psycopg.AsyncConnection[Any]
Checkout = AbstractAsyncContextManager[AsyncConnection]


def _replica_tx(options: TransactionOptions) -> bool:
    """Whether a transaction with these options may run on a replica: a standby
    refuses SERIALIZABLE (SQLSTATE 0A000), so only other read-only ones may."""
    check_transaction_options(options)
    isolation_level = options.get("isolation_level")
    return bool(options.get("read_only")) and (
        isolation_level is None or _isolation(isolation_level) != IsolationLevel.SERIALIZABLE.value
    )


def _host(db: _AsyncQueryable) -> AsyncConnectionPool | AsyncConnection:
    # The router only ever hands out a node's pool or one of its connections.
    assert isinstance(db, (AsyncConnectionPool, AsyncConnection))
    return db


def _pgconn(conn: AsyncConnection) -> Any:
    """The libpq connection under a dedicated connection (to cut it from any thread)."""
    raw = conn._conn
    assert raw is not None
    return raw.pgconn


async def _exit(block: AbstractAsyncContextManager[Any], exc: BaseException | None) -> None:
    """Leave ``block`` as its ``with`` statement would, after ``exc`` (None: no error)."""
    if exc is None:
        await block.__aexit__(None, None, None)
    else:
        await block.__aexit__(type(exc), exc, exc.__traceback__)


class _FailoverClock:
    """A write's wait for a primary ends ``failover_timeout`` after its first failed attempt."""

    __slots__ = ("deadline", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline: float | None = None

    def start(self) -> float:
        if self.deadline is None:
            self.deadline = time.monotonic() + self.timeout
        return self.deadline


class AsyncHealthRunner:
    """Runs a cluster's health loop in the background: as a task of the event loop using
    the cluster (a sync cluster's: in a daemon thread).

    Besides starting and stopping the loop it is where writers waiting for a
    primary meet it: ``notify()`` (a round ended, the primary changed) wakes
    ``wait_change``, and while someone is ``hurry``-ing the loop sleeps at
    most ``HURRIED_INTERVAL`` between rounds.
    """

    def __init__(self, body: Callable[[], Awaitable[None]], stop_timeout: float) -> None:
        self._body = body
        self._stop_timeout = stop_timeout
        self._worker: AsyncWorker | None = None
        self._stopping = False
        # A sync cluster's threads share the counters and the worker.
        self._lock = threading.Lock()
        self._wake = asyncio.Event()  # cuts the sleep between two rounds short
        self._changed = asyncio.Event()  # replaced at each notify()
        self._measured = asyncio.Event()  # set once a first round has completed
        self._hurry = 0
        self.generation = 0
        self.rounds_started = 0
        self.rounds_done = 0

    def ensure_started(self) -> None:
        """Start the loop (a task of the running event loop, or a thread), unless it
        runs already."""
        if running_async(self._worker):
            return
        with self._lock:
            if self._stopping or running_async(self._worker):
                return
            # begin async-only
            # Events are bound to the loop that first waits on them: new ones per loop.
            measured = self.measured
            self._wake = asyncio.Event()
            self._changed = asyncio.Event()
            self._measured = asyncio.Event()
            if measured:
                self._measured.set()
            # end async-only
            self._worker = start_async(self._body)

    async def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` (less while hurried, or until woken); True when the loop must stop."""
        if self._hurry:
            seconds = min(seconds, HURRIED_INTERVAL)
        if not self._stopping:
            await wait_async(self._wake, seconds)
        self._wake.clear()
        return self._stopping

    def wake(self) -> None:
        """Start the next round now."""
        self._wake.set()

    def hurry(self, delta: int) -> None:
        """+1 while a writer waits for a primary (rounds run now, then more often), -1 after."""
        with self._lock:
            self._hurry += delta
        if delta > 0:
            self._wake.set()

    @property
    def measured(self) -> bool:
        """Whether a first round has completed."""
        return self._measured.is_set()

    def round_started(self) -> None:
        with self._lock:
            self.rounds_started += 1

    def round_done(self) -> None:
        """Called by the loop after each round."""
        with self._lock:
            self.rounds_done += 1
        self._measured.set()
        self.notify()

    def notify(self) -> None:
        """Wake every ``wait_change`` (a round ended, or the primary changed)."""
        with self._lock:
            self.generation += 1
            changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_change(self, generation: int, timeout: float) -> None:
        """Wait until ``notify()`` was called after ``generation`` was read, or ``timeout``."""
        changed = self._changed  # taken first: a notify() after the check below sets it
        if generation == self.generation:
            await wait_async(changed, timeout)

    async def wait_measured(self) -> None:
        """Wait for the first round to complete (at most the time a round may take)."""
        await wait_async(self._measured, self._stop_timeout)

    async def stop(self) -> None:
        """Stop the loop: its probes are bounded, so it ends within a round; never wait longer."""
        self._stopping = True
        self._wake.set()
        self.notify()  # writers waiting for a primary see the cluster closed
        worker, self._worker = self._worker, None
        await stop_async(worker, self._stop_timeout)


class AsyncCluster:
    """Writes go to the primary, reads are spread over the replicas (``create_cluster``)."""

    def __init__(
        self,
        pools: list[AsyncConnectionPool],
        state: ClusterState,
        health_check_interval: float,
        failover_timeout: float,
    ) -> None:
        # Node 0 is the pool given as the primary, node i + 1 replica i.
        self._pools = pools
        self._state = state
        self._interval = health_check_interval
        self._failover_timeout = failover_timeout
        self._closed = False
        # Set by pgfast.otel: told why each operation goes where it goes (a routing reason).
        self._on_route: Callable[[str], None] | None = None
        self._probe_timeout = probe_timeout(health_check_interval)
        # Nodes that refused STATUS_SQL are probed with ROLE_SQL.
        self._role_only = [False] * len(pools)
        # A round probes every node at once; each probe may connect then query,
        # each step bounded.
        self._health = AsyncHealthRunner(self._health_loop, 2 * self._probe_timeout + 1.0)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._pools) - 1} replicas"
        return f"<pgfast.{type(self).__name__} {state}>"

    @property
    def primary(self) -> AsyncConnectionPool:
        """The pool of the current primary (the last known one while none answers)."""
        return self._pools[self._state.primary]

    @property
    def replicas(self) -> list[AsyncConnectionPool]:
        """The pools serving reads: the given replicas without a promoted one, then
        the given primary once it answers in recovery (demoted)."""
        return [self._pools[j] for j in self._state.replica_nodes()]

    # -- querying ------------------------------------------------------------

    async def query(self, q: SQLQuery | list[SQLQuery]) -> Any:
        """Run ``q`` on a replica when it is read-only, else on the primary.

        A list of queries goes to a replica only when every one is read-only.
        """
        if isinstance(q, SQLQuery):
            read = is_read_only(q)
        elif isinstance(q, list):
            read = all(is_read_only(one) for one in check_queries(q))
        else:
            not_a_query(q)
        return await self._route(lambda db: db.query(q), read)

    async def query_one(self, q: SQLQuery) -> Row | None:
        """The only row of ``q`` (or ``None``), routed like ``query``."""
        return await self._route(lambda db: db.query_one(q), is_read_only(q))

    async def query_value(self, q: SQLQuery) -> Any:
        """The first column of the only row of ``q``, routed like ``query``."""
        return await self._route(lambda db: db.query_value(q), is_read_only(q))

    async def execute(self, q: SQLQuery) -> int:
        """Run a statement on the primary; return the number of rows it affected."""
        if not isinstance(q, SQLQuery):
            not_a_query(q)
        return await self._route(lambda db: db.execute(q), False)

    async def query_stream(self, q: SQLQuery, batch_size: int = 1000) -> AsyncGenerator[Row, None]:
        """Yield the rows of ``q`` in batches (see the pool's), from a replica when read-only.

        A node that fails before the first row is replaced by another one.
        """
        self._check_open()
        if is_read_only(q):
            async with aclosing(self._replicas()) as replicas:
                async for j in replicas:
                    started = False
                    try:
                        block, conn, pgconn = await self._enter_node(j)
                        try:
                            async with aclosing(conn.query_stream(q, batch_size)) as rows:
                                async for row in rows:
                                    if not started:
                                        started = True
                                        self._state.count_query(j)
                                    yield row
                        except BaseException as exc:
                            await self._exit_node(j, block, pgconn, exc)
                            raise
                        await self._exit_node(j, block, pgconn, None)
                        if not started:
                            self._state.count_query(j)
                        return
                    except Exception as exc:
                        if started:
                            raise
                        failure = await self._read_failed(j, exc)
                        if failure is Failure.QUERY_ERROR:
                            raise
                        if failure is Failure.RERUN_ON_PRIMARY:
                            self._route_to("write")
                            break  # only the primary can run it
        else:
            self._route_to("write")
        clock = _FailoverClock(self._failover_timeout)
        while True:
            j, block, conn = await self._enter_primary(clock)
            self._state.count_query(j)
            started = False
            try:
                async with aclosing(conn.query_stream(q, batch_size)) as rows:
                    async for row in rows:
                        started = True
                        yield row
            except BaseException as exc:
                await self._leave(block, conn, exc)
                if started or not isinstance(exc, Exception):
                    raise
                if not await self._retry_write(j, exc, clock, None, True):
                    raise
                continue
            await self._leave(block, conn, None)
            return

    # -- transactions and connections ----------------------------------------

    async def tx(
        self,
        fn: Callable[[AsyncTransaction], Awaitable[T]],
        *,
        retry_serialization_failures: bool | int = False,
        **options: Unpack[TransactionOptions],
    ) -> T:
        """Run ``fn(tx)`` in a transaction: on a replica when ``read_only`` (and not
        SERIALIZABLE, which a standby cannot run), else on the primary.

        A replica that fails or refuses the transaction before ``fn`` starts is
        replaced by another node or the primary. On the primary, a transaction
        that met no writable primary (its BEGIN found the connection lost, or a
        demoted primary refused a write: nothing was written) runs again once
        one answers, within ``failover_timeout``.
        """
        started = False

        async def first(tx: AsyncTransaction) -> T:
            nonlocal started
            started = True
            return await fn(tx)

        async def op(db: _AsyncQueryable) -> T:
            nonlocal started
            started = False  # each attempt starts afresh
            return await _host(db).tx(
                first, retry_serialization_failures=retry_serialization_failures, **options
            )

        return await self._route(op, _replica_tx(options), lambda: started)

    def transaction(
        self, **options: Unpack[TransactionOptions]
    ) -> AbstractAsyncContextManager[AsyncTransaction]:
        """One transaction attempt: on a replica when ``read_only`` (and not
        SERIALIZABLE), else on the primary."""
        # Options are checked now, as a pool's transaction() does, not on entry.
        return self._transaction(options, _replica_tx(options))

    @asynccontextmanager
    async def _transaction(
        self, options: TransactionOptions, on_replica: bool
    ) -> AsyncIterator[AsyncTransaction]:
        self._check_open()
        if on_replica:
            async with aclosing(self._replicas()) as replicas:
                async for j in replicas:
                    block = None
                    try:
                        block, conn, pgconn = await self._enter_node(j)
                        tx_block = conn.transaction(**options)
                        tx = await tx_block.__aenter__()
                    except BaseException as exc:  # a cancellation too must hand it back
                        if block is not None:  # a failed _enter_node left nothing behind
                            await self._exit_node(j, block, pgconn, exc)
                        if not isinstance(exc, Exception):
                            raise
                        failure = await self._read_failed(j, exc)
                        if failure is Failure.QUERY_ERROR:
                            raise
                        if failure is Failure.RERUN_ON_PRIMARY:
                            self._route_to("write")
                            break  # refused before the block started: the primary runs it
                        continue
                    self._state.count_query(j)
                    try:
                        try:
                            yield tx
                        except BaseException as exc:
                            if isinstance(exc, Exception):
                                await self._read_failed(j, exc)  # a lost node leaves rotation
                            await _exit(tx_block, exc)
                            raise
                        await _exit(tx_block, None)
                    except BaseException as exc:
                        await self._exit_node(j, block, pgconn, exc)
                        raise
                    await self._exit_node(j, block, pgconn, None)
                    return
        else:
            self._route_to("write")
        async with self.connection() as conn, conn.transaction(**options) as tx:
            yield tx

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """A dedicated connection to the primary for the block."""
        self._check_open()
        j, block, conn = await self._enter_primary(_FailoverClock(self._failover_timeout))
        self._state.count_query(j)
        try:
            yield conn
        except BaseException as exc:
            await self._leave(block, conn, exc)
            raise
        await self._leave(block, conn, None)

    async def task(self, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``fn(connection)`` with a dedicated connection to the primary."""
        async with self.connection() as conn:
            return await fn(conn)

    # -- bulk loading: writes on the primary, bulk_select as a read ----------

    async def bulk_insert(
        self,
        table: str | SQLQuery,
        records: Records,
        *,
        columns: Names | None = None,
        column_types: Types | None = None,
        returning: Names | SQLQuery | None = None,
    ) -> list[Row]:
        """``bulk_insert`` on the primary (see the pool's)."""
        return await self._route(
            lambda db: _host(db).bulk_insert(
                table, records, columns=columns, column_types=column_types, returning=returning
            ),
            False,
        )

    async def bulk_update(
        self,
        table: str | SQLQuery,
        updates: Sequence[Mapping[str, Mapping[str, Any]]],
        *,
        where_columns: Names,
        set_columns: Names,
        column_types: Types | None = None,
        returning: Names | SQLQuery | None = None,
    ) -> Any:
        """``bulk_update`` on the primary (see the pool's)."""
        return await self._route(
            lambda db: _host(db).bulk_update(
                table,
                updates,
                where_columns=where_columns,
                set_columns=set_columns,
                column_types=column_types,
                returning=returning,
            ),
            False,
        )

    async def bulk_delete(
        self,
        table: str | SQLQuery,
        conditions: Conditions,
        *,
        where_columns: Names,
        column_types: Types | None = None,
    ) -> int:
        """``bulk_delete`` on the primary (see the pool's)."""
        return await self._route(
            lambda db: _host(db).bulk_delete(
                table, conditions, where_columns=where_columns, column_types=column_types
            ),
            False,
        )

    async def bulk_select(
        self,
        table: str | SQLQuery,
        conditions: Conditions,
        *,
        where_columns: Names,
        column_types: Types | None = None,
        select_columns: Names | None = None,
        distinct_columns: Names | None = None,
        order_by: Names | None = None,
        limit: int | None = None,
    ) -> list[Row]:
        """``bulk_select`` on a replica (see the pool's)."""
        return await self._route(
            lambda db: _host(db).bulk_select(
                table,
                conditions,
                where_columns=where_columns,
                column_types=column_types,
                select_columns=select_columns,
                distinct_columns=distinct_columns,
                order_by=order_by,
                limit=limit,
            ),
            True,
        )

    async def copy_in(
        self,
        table: str | SQLQuery,
        rows: Iterable[Any] | AsyncIterable[Any],
        *,
        columns: Names | None = None,
    ) -> int:
        """``copy_in`` on the primary (see the pool's)."""
        # Rows from an iterator may be consumed: only a sequence can be sent again.
        return await self._route(
            lambda db: _host(db).copy_in(table, rows, columns=columns),
            False,
            rerun=isinstance(rows, Sequence),
        )

    # -- read-your-writes ----------------------------------------------------

    def write_token(self) -> str | None:
        """The WAL position of this context's last write (``read_your_writes``), or None.

        Pass it to ``read_after`` in another process to read that write back.
        """
        return self._state.write_token()

    def read_after(self, token: str | None) -> contextlib.AbstractContextManager[None]:
        """``with cluster.read_after(token):`` reads see the writes ``token`` stands for."""
        return self._state.read_after(token)

    # -- life cycle ----------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Per node, in the order given to ``create_cluster``: its pool's stats, ``role``
        (``"primary"``, ``"replica"`` or ``"down"``), ``routed`` (operations sent to
        it), ``up``, ``in_flight`` (reads), ``lag`` (seconds) and ``replay_lsn``."""
        state = self._state
        nodes = [state.node_stats(j, pool.stats()) for j, pool in enumerate(self._pools)]
        return {"primary": nodes[0], "replicas": nodes[1:]}

    async def dispose(self) -> None:
        """Stop the health checks and dispose every pool. Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        await self._health.stop()
        for pool in self._pools:
            await pool.dispose()

    async def __aenter__(self) -> AsyncCluster:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.dispose()

    # -- routing -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosedError("the cluster was disposed")
        self._health.ensure_started()

    def _route_to(self, reason: str) -> None:
        """Tell the route hook (set by pgfast.otel) why an operation goes where it goes."""
        if self._on_route is not None:
            self._on_route(reason)

    async def _route(
        self,
        op: Operation[T],
        read: bool,
        started: Callable[[], bool] | None = None,
        rerun: bool = True,
    ) -> T:
        """Run ``op`` on a replica for a read, else (or as a fallback) on the primary.

        ``started`` is given for transactions: once the user's function has
        started they are neither retried elsewhere nor re-run on the primary
        after a lost connection. ``rerun``: whether a write refused by a
        read-only (demoted) primary may be sent again to the next one.
        """
        self._check_open()
        if read:
            async with aclosing(self._replicas()) as replicas:
                async for j in replicas:
                    result = cast(T, None)  # op's result, once it returned
                    try:
                        block, conn, pgconn = await self._enter_node(j)
                        try:
                            result = await op(conn)
                        except BaseException as exc:
                            await self._exit_node(j, block, pgconn, exc)
                            raise
                        await self._exit_node(j, block, pgconn, None)
                    except PostCommitError as exc:
                        # A read-only transaction's steps run when its connection is handed back.
                        exc.result = result
                        raise
                    except Exception as exc:
                        failure = await self._read_failed(j, exc)
                        if failure is Failure.QUERY_ERROR or (started is not None and started()):
                            raise
                        if failure is Failure.RERUN_ON_PRIMARY:
                            break  # only the primary can run it: a write after all
                        continue
                    self._state.count_query(j)
                    return result
                else:
                    state = self._state
                    writer = state.writer if state.writer >= 0 else state.primary
                    state.count_query(writer)
                    return await op(self._pools[writer])
        return await self._write(op, started, rerun)

    async def _replicas(self) -> AsyncGenerator[int, None]:
        """The replicas to try a read on, one at a time, each counted in flight until the
        next one is asked for or the loop is left.

        The caller runs the read on the node it is given, and asks for another one only
        once ``_read_failed`` took that node out of rotation. After the last one the read
        falls back to the primary (``no_replica`` raises when it may not), and the route
        hook is told why.
        """
        state = self._state
        exclude = 0
        while (j := await self._pick(exclude)) >= 0:
            self._route_to("read")
            try:
                yield j
            finally:
                state.selector.release(j)
            exclude |= 1 << j
        state.no_replica()
        self._route_to(state.fallback_reason(exclude))

    async def _read_failed(self, j: int, exc: Exception) -> Failure:
        """What ``exc``, raised by a read on replica ``j``, means for it; a node at fault
        is taken out of rotation."""
        failure = classify_failure(exc)
        if failure is Failure.NODE_DOWN:
            await self._node_down(j, str(exc))
        return failure

    async def _pick(self, exclude: int) -> int:
        """A replica node (counted in flight) for a read, or -1 for the primary."""
        state = self._state
        if state.await_first_round and not self._health.measured:
            await self._health.wait_measured()
        j: int = state.selector.pick(state.eligible(exclude))
        if j >= 0 or not state.token():
            return j
        # No replica is known to have replayed this context's writes: ask one.
        j = state.selector.pick(state.candidates(exclude))
        if j < 0:
            return j
        try:
            async with self._pools[j]._raw_connection() as conn:
                cur = await conn.execute(REPLAY_LSN_SQL)
                row = await cur.fetchone()
        except BaseException as exc:  # a cancellation too must release it
            state.selector.release(j)
            if isinstance(exc, Exception) and await self._read_failed(j, exc) is Failure.NODE_DOWN:
                return -1
            raise
        state.note_replay(j, None if row is None else row[0])
        if state.reached_token(j):
            return j
        state.selector.release(j)
        return -1

    async def _enter_node(self, j: int) -> tuple[Checkout, AsyncConnection, Any]:
        """A dedicated connection of node ``j`` for a read, tracked: cut when the node
        is marked down. Returns the checkout to leave with ``_exit_node``."""
        block = self._pools[j].connection()
        conn = await block.__aenter__()
        pgconn = _pgconn(conn)
        if not self._state.track(j, pgconn):
            error = psycopg.OperationalError(f"{self._state.names[j]} left rotation")
            await self._exit_node(j, block, pgconn, error)
            raise error
        return block, conn, pgconn

    async def _exit_node(
        self, j: int, block: Checkout, pgconn: Any, exc: BaseException | None
    ) -> None:
        self._state.untrack(j, pgconn)
        await _exit(block, exc)

    async def _node_down(self, j: int, reason: str, cut_reads: bool = False) -> None:
        """Node ``j`` failed: out of rotation, the callers queued for one of its
        connections sent elsewhere, and with ``cut_reads`` (a failed health probe)
        its reads in flight too. One read's lost connection cuts no other: a
        stream or transaction already under way could not run again."""
        previous = self._state.mark_down(j, reason, cut_reads)
        await self._abandon_waiters(j, f"{self._state.names[j]} left rotation ({reason})")
        if previous is not None:
            await self._writer_changed(previous)

    async def _writer_changed(self, previous: int) -> None:
        """Another node (or none) is the primary now: writes queued for a connection
        of the previous one go to the new one, and waiting writers look again."""
        if previous >= 0 and previous != self._state.writer:
            await self._abandon_waiters(previous, f"{self._state.names[previous]} is no primary")
        self._health.notify()

    async def _abandon_waiters(self, j: int, reason: str) -> None:
        """Fail every caller waiting in node ``j``'s pool for a connection.

        No connection would come soon (the pool retries connecting for its
        whole connect_timeout): they fail with a connection error, which
        routing takes as "nothing was sent", so reads and writes run elsewhere.
        """
        message = f"{reason}: the wait for a connection was abandoned"
        await self._pools[j]._fail_waiters(psycopg.OperationalError(message))

    # -- writes --------------------------------------------------------------

    async def _write(self, op: Operation[T], started: Callable[[], bool] | None, rerun: bool) -> T:
        """Run ``op`` on the primary; through a failover, once nothing was written."""
        clock = _FailoverClock(self._failover_timeout)
        self._route_to("write")
        while True:
            j, block, conn = await self._enter_primary(clock)
            self._state.count_query(j)
            try:
                result = await op(conn)
            except BaseException as exc:
                await self._leave(block, conn, exc)
                if isinstance(exc, Exception) and await self._retry_write(
                    j, exc, clock, started, rerun
                ):
                    continue
                raise
            try:
                await self._leave(block, conn, None)
            except PostCommitError as exc:
                # A transaction's steps run when its connection is handed back.
                exc.result = result
                raise
            return result

    async def _enter_primary(self, clock: _FailoverClock) -> tuple[int, Checkout, AsyncConnection]:
        """A dedicated connection of the primary, once one answers (within
        ``failover_timeout``). Returns the node and the checkout to ``_leave``."""
        while True:
            j = self._state.writer
            if j < 0:
                await self._await_primary(-1, None, clock)
                continue
            block = self._pools[j].connection()
            try:
                conn = await block.__aenter__()
            except Exception as exc:
                if (
                    isinstance(exc, PoolClosedError)
                    or classify_failure(exc) is not Failure.NODE_DOWN
                ):
                    raise
                # Nothing was sent. A pool that is only busy (no connection free
                # within its queue_timeout) is no reason to wait for another primary.
                busy = isinstance(exc, PoolTimeoutError)
                if not await self._await_primary(j, exc, clock, same_node=not busy):
                    raise
                continue
            if clock.deadline is not None:
                self._route_to("failover")  # this write waited for a primary
            return j, block, conn

    async def _leave(
        self, block: Checkout, conn: AsyncConnection, exc: BaseException | None
    ) -> None:
        """End a primary checkout; with read_your_writes, the WAL position reached on
        its connection becomes this context's token first."""
        try:
            if self._state.read_your_writes:
                if exc is None:
                    await self._record_committed_write(conn)
                else:
                    # The block may have committed writes before it failed.
                    with contextlib.suppress(Exception):
                        await self._record_write(conn)
        finally:
            await _exit(block, exc)

    async def _retry_write(
        self,
        j: int,
        exc: Exception,
        clock: _FailoverClock,
        started: Callable[[], bool] | None,
        rerun: bool,
    ) -> bool:
        """Whether a write that failed on node ``j`` runs again (after waiting for a
        primary): only when nothing was written."""
        failure = classify_failure(exc)
        if failure is Failure.NODE_DOWN:
            if started is not None and not started():
                # Its BEGIN found the connection lost: nothing ran.
                return await self._await_primary(j, exc, clock)
            # Sent, then the connection died: it may have run. Never again; but
            # the primary may be gone, so look now.
            self._health.wake()
            return False
        if rerun and isinstance(exc, psycopg.Error) and exc.sqlstate == READ_ONLY_SQL_TRANSACTION:
            # Refused by a read-only server: nothing was written. A demoted
            # primary, unless a fresh probe finds the node still writable
            # (then the transaction itself was read-only: the caller's error).
            return await self._await_primary(j, exc, clock, same_node=False)
        return False

    async def _await_primary(
        self,
        failed: int,
        exc: BaseException | None,
        clock: _FailoverClock,
        same_node: bool = True,
    ) -> bool:
        """Wait until a writable primary answers; True to try the write again.

        ``failed`` is the node the write just failed on (-1: none was known).
        Another node becoming the primary ends the wait at once; the same one
        must be confirmed by a health round started after the failure, and
        then counts only when ``same_node`` (else False: the failure was not
        the node's). Health rounds run quickly meanwhile. Past the write's
        ``failover_timeout``, ``NoPrimaryError``.
        """
        state, runner = self._state, self._health
        deadline = clock.start()
        fresh = runner.rounds_started + 1
        runner.hurry(1)
        try:
            while True:
                self._check_open()
                generation = runner.generation
                writer = state.writer
                if writer >= 0 and writer != failed:
                    return True
                if writer >= 0 and runner.rounds_done >= fresh:
                    return same_node
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NoPrimaryError(
                        f"no writable primary within failover_timeout="
                        f"{self._failover_timeout:g} s: {state.describe()}"
                    ) from exc
                await runner.wait_change(generation, remaining)
        finally:
            runner.hurry(-1)

    async def _record_committed_write(self, conn: AsyncConnection) -> None:
        """Record the position of a write that committed; it must not fail the write.

        When its own connection cannot tell (lost right after the commit),
        any other connection of the primary can: its current position is at
        or past the commit.
        """
        try:
            await self._record_write(conn)
            return
        except Exception as exc:
            failure: Exception = exc
        try:
            async with conn._pool_ref.connection() as other:
                await self._record_write(other)
        except Exception as exc:
            logger.warning(
                "pgfast: the position of a committed write could not be read (%s, then %s): "
                "reads may not see it until a replica catches up",
                failure,
                exc,
            )

    async def _record_write(self, conn: AsyncConnection) -> None:
        pool = conn._pool_ref
        async with conn._raw_connection() as raw:
            if raw.closed or raw.pgconn.transaction_status != IDLE:
                return
            async with pool._deadline(raw):  # type: ignore[arg-type]
                cur = await raw.execute(WRITE_LSN_SQL)
                row = await cur.fetchone()
        self._state.wrote(None if row is None else row[0])

    # -- health --------------------------------------------------------------

    async def _health_loop(self) -> None:
        """Each ``health_check_interval``: probe every node at once, each on its own
        connection. Each answer says what the node is (primary, standby, down) and,
        for standbys, how far behind; nodes that failed come back when they answer.
        Every probe is bounded in time."""
        runner = self._health
        probes: list[ProbeConnection | None] = [None] * len(self._pools)

        async def probe(j: int) -> None:
            sent_at = time.monotonic()
            try:
                row = await self._probe(probes, j)
                previous = self._state.record_status(j, row, sent_at, time.monotonic())
            except Exception as exc:
                await self._node_down(j, f"health probe failed: {exc}", cut_reads=True)
                return
            if previous is not None:
                await self._writer_changed(previous)

        try:
            while True:
                runner.round_started()
                await each_async(len(self._pools), probe)
                runner.round_done()
                if await runner.sleep(self._interval):
                    break
        finally:
            for conn in probes:
                if conn is not None:
                    await conn.close()

    async def _probe(self, probes: list[ProbeConnection | None], j: int) -> list[str | None]:
        """The first row of ``STATUS_SQL`` on node ``j``'s probe connection (opened
        when needed), within the probe timeout: a server that stopped answering (a
        partition, a stopped process) cannot hang the health loop. Raises on failure,
        closing the connection. A server that refuses the query itself (one of its
        functions missing or forbidden) is asked ``ROLE_SQL`` from then on."""
        pool = self._pools[j]
        config = pool._config
        conn = probes[j]
        started = time.monotonic()
        try:
            if conn is None or conn.closed:
                conn = probes[j] = await pool._probe_connection(self._probe_timeout)
            query = ROLE_SQL if self._role_only[j] else STATUS_SQL
            conn.pgconn.send_query(query)
            # psycopg's own wait loop, with a deadline (its query methods have none).
            results = await conn.wait(generators.execute(conn.pgconn), timeout=self._probe_timeout)
            try:
                row = probe_row(results)
            except ProbeRefused as exc:
                if query is ROLE_SQL:
                    raise
                self._role_only[j] = True
                logger.warning(
                    "pgfast: %s refused the health probe (%s): only its role is checked",
                    self._state.names[j],
                    config.redact(str(exc)),
                )
                conn.pgconn.send_query(ROLE_SQL)
                left = max(0.1, self._probe_timeout - (time.monotonic() - started))
                row = probe_row(await conn.wait(generators.execute(conn.pgconn), timeout=left))
            if len(row) != 6:
                raise psycopg.OperationalError(f"unexpected probe answer ({len(row)} columns)")
            return row
        except Exception as exc:
            probes[j] = None
            if conn is not None:
                await conn.close()  # mid-query after a timeout: unusable
            if time.monotonic() - started >= self._probe_timeout:
                reason = f"no answer within {self._probe_timeout:g} s"
            else:
                reason = config.redact(str(exc)) or type(exc).__name__
            raise psycopg.OperationalError(reason) from None
