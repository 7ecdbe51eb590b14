"""The async primary/replica cluster: the single source.

``_cluster_sync.py`` is generated from this file by ``tools/async_to_sync.py``;
edit this file and regenerate, never the other. Routing state and decisions
live in ``_cluster_common``.
"""

from __future__ import annotations

import contextlib
import math
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
from typing import Any, TypeVar

import psycopg
from psycopg import generators
from psycopg.pq import TransactionStatus

from . import _impl
from ._cluster_common import (
    PRIMARY_LSN_SQL,
    REPLAY_LSN_SQL,
    STATUS_SQL,
    WRITE_LSN_SQL,
    AsyncHealthRunner,
    ClusterState,
    Failure,
    classify_failure,
    probe_row,
    probe_timeout,
)
from ._exceptions import PoolClosedError
from ._pool_async import (
    AsyncConnection,
    AsyncConnectionPool,
    AsyncTransaction,
    _AsyncQueryable,
)
from ._pool_common import (
    IsolationLevel,
    Row,
    SQLQuery,
    TransactionOptions,
    Unpack,
    _isolation,
    check_queries,
    check_transaction_options,
    not_a_query,
)

Records = Sequence[Any]

T = TypeVar("T")
IDLE = TransactionStatus.IDLE
Operation = Callable[[_AsyncQueryable], Awaitable[T]]
ProbeConnection = psycopg.AsyncConnection[Any]


def _replica_tx(options: TransactionOptions) -> bool:
    """Whether a transaction with these options may run on a replica: a standby
    refuses SERIALIZABLE (SQLSTATE 0A000), so only other read-only ones may."""
    check_transaction_options(options)
    isolation_level = options.get("isolation_level")
    return bool(options.get("read_only")) and (
        isolation_level is None or _isolation(isolation_level) != IsolationLevel.SERIALIZABLE.value
    )


def _host(db: _AsyncQueryable) -> AsyncConnectionPool | AsyncConnection:
    # The router only ever hands out a node's pool or a primary connection.
    assert isinstance(db, (AsyncConnectionPool, AsyncConnection))
    return db


class AsyncCluster:
    """Writes go to the primary, reads are spread over the replicas (``create_cluster``)."""

    def __init__(
        self,
        primary: AsyncConnectionPool,
        replicas: list[AsyncConnectionPool],
        state: ClusterState,
        health_check_interval: float,
    ) -> None:
        self._primary = primary
        self._replicas = replicas
        self._state = state
        self._interval = health_check_interval
        self._closed = False
        self._probe_timeout = probe_timeout(health_check_interval)
        # A round probes the primary, then the replicas (at worst one by one in the
        # sync twin); each probe may connect then query, each step bounded.
        stop_timeout = 2 * self._probe_timeout * (1 + len(replicas))
        self._health = AsyncHealthRunner(self._health_loop, stop_timeout)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._replicas)} replicas"
        return f"<pgfast.{type(self).__name__} {state}>"

    @property
    def primary(self) -> AsyncConnectionPool:
        """The primary's pool, for direct access."""
        return self._primary

    @property
    def replicas(self) -> list[AsyncConnectionPool]:
        """The replicas' pools, in the order given to ``create_cluster``."""
        return list(self._replicas)

    # -- querying ------------------------------------------------------------

    async def query(self, q: SQLQuery | list[SQLQuery]) -> Any:
        """Run ``q`` on a replica when it is read-only, else on the primary.

        A list of queries goes to a replica only when every one is read-only.
        """
        if isinstance(q, SQLQuery):
            read = self._is_read(q)
        elif isinstance(q, list):
            read = all(self._is_read(one) for one in check_queries(q))
        else:
            not_a_query(q)
        return await self._route(lambda db: db.query(q), read)

    async def query_one(self, q: SQLQuery) -> Row | None:
        """The only row of ``q`` (or ``None``), routed like ``query``."""
        return await self._route(lambda db: db.query_one(q), self._is_read(q))

    async def query_value(self, q: SQLQuery) -> Any:
        """The first column of the only row of ``q``, routed like ``query``."""
        return await self._route(lambda db: db.query_value(q), self._is_read(q))

    async def execute(self, q: SQLQuery) -> int:
        """Run a statement on the primary; return the number of rows it affected."""
        if not isinstance(q, SQLQuery):
            not_a_query(q)
        return await self._route(lambda db: db.execute(q), False)

    async def query_stream(self, q: SQLQuery, batch_size: int = 1000) -> AsyncGenerator[Row, None]:
        """Yield the rows of ``q`` in batches (see the pool's), from a replica when read-only.

        A replica that fails before the first row is replaced by another node.
        """
        self._check_open()
        if not self._is_read(q):
            async with self._writer() as db, aclosing(db.query_stream(q, batch_size)) as rows:
                self._state.count_query(None)
                async for row in rows:
                    yield row
            return
        exclude = 0
        refused = False
        while True:
            i = await self._pick(exclude)
            if i < 0:
                break
            started = False
            try:
                async with aclosing(self._replicas[i].query_stream(q, batch_size)) as rows:
                    async for row in rows:
                        if not started:
                            started = True
                            self._state.count_query(i)
                        yield row
                if not started:
                    self._state.count_query(i)
                return
            except Exception as exc:
                failure = classify_failure(exc)
                if started or failure is Failure.QUERY_ERROR:
                    raise
                if failure is Failure.RERUN_ON_PRIMARY:
                    refused = True
                    break
                self._state.mark_down(i, str(exc))
                exclude |= 1 << i
            finally:
                self._state.selector.release(i)
        if not refused:
            self._state.no_replica()
        async with self._writer() as db, aclosing(db.query_stream(q, batch_size)) as rows:
            self._state.count_query(None)
            async for row in rows:
                yield row

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
        replaced by another node or the primary.
        """
        started = False

        async def first(tx: AsyncTransaction) -> T:
            nonlocal started
            started = True
            return await fn(tx)

        async def op(db: _AsyncQueryable) -> T:
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
            exclude = 0
            while (i := await self._pick(exclude)) >= 0:
                try:
                    block = self._replicas[i].transaction(**options)
                    tx = await block.__aenter__()
                except BaseException as exc:  # a cancellation too must release it
                    self._state.selector.release(i)
                    failure = classify_failure(exc)
                    if failure is Failure.QUERY_ERROR:
                        raise
                    if failure is Failure.RERUN_ON_PRIMARY:
                        break  # refused before the block started: the primary runs it
                    self._state.mark_down(i, str(exc))
                    exclude |= 1 << i
                    continue
                self._state.count_query(i)
                try:
                    try:
                        yield tx
                    except BaseException as exc:
                        if self._node_down(exc):
                            self._state.mark_down(i, str(exc))
                        await block.__aexit__(type(exc), exc, exc.__traceback__)
                        raise
                    await block.__aexit__(None, None, None)
                finally:
                    self._state.selector.release(i)
                return
            else:
                self._state.no_replica()
        self._state.count_query(None)
        async with self._writer() as db, _host(db).transaction(**options) as tx:
            yield tx

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """A dedicated connection to the primary for the block."""
        self._check_open()
        self._state.count_query(None)
        async with self._primary_connection() as conn:
            yield conn

    async def task(self, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``fn(connection)`` with a dedicated connection to the primary."""
        async with self.connection() as conn:
            return await fn(conn)

    # -- bulk loading (API.md §8): writes on the primary, bulk_select as a read --

    async def bulk_insert(self, table: str | SQLQuery, records: Records, **options: Any) -> Any:
        """``bulk_insert`` on the primary (options as for a pool's)."""
        return await self._route(lambda db: _host(db).bulk_insert(table, records, **options), False)

    async def bulk_update(
        self, table: str | SQLQuery, updates: Sequence[Mapping[str, Any]], **options: Any
    ) -> Any:
        """``bulk_update`` on the primary (options as for a pool's)."""
        return await self._route(lambda db: _host(db).bulk_update(table, updates, **options), False)

    async def bulk_delete(self, table: str | SQLQuery, conditions: Records, **options: Any) -> int:
        """``bulk_delete`` on the primary (options as for a pool's)."""
        return await self._route(
            lambda db: _host(db).bulk_delete(table, conditions, **options), False
        )

    async def bulk_select(
        self, table: str | SQLQuery, conditions: Records, **options: Any
    ) -> list[Row]:
        """``bulk_select`` on a replica (options as for a pool's)."""
        return await self._route(
            lambda db: _host(db).bulk_select(table, conditions, **options), True
        )

    async def copy_in(
        self, table: str | SQLQuery, rows: Iterable[Any] | AsyncIterable[Any], **options: Any
    ) -> int:
        """``copy_in`` on the primary (options as for a pool's)."""
        return await self._route(lambda db: _host(db).copy_in(table, rows, **options), False)

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
        """Per node: its pool's stats, reads/writes routed to it, and for replicas
        ``up``, ``in_flight``, ``lag`` (seconds) and ``replay_lsn``."""
        state = self._state
        return {
            "primary": state.node_stats(None, self._primary.stats()),
            "replicas": [state.node_stats(i, p.stats()) for i, p in enumerate(self._replicas)],
        }

    async def dispose(self) -> None:
        """Stop the health checks and dispose every pool. Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        await self._health.stop()
        for pool in (self._primary, *self._replicas):
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

    @staticmethod
    def _is_read(q: SQLQuery) -> bool:
        if not isinstance(q, SQLQuery):
            not_a_query(q)
        return bool(_impl.classify.is_read_only(q.format()[0]))

    @staticmethod
    def _node_down(exc: BaseException) -> bool:
        return isinstance(exc, Exception) and classify_failure(exc) is Failure.NODE_DOWN

    async def _route(
        self, op: Operation[T], read: bool, started: Callable[[], bool] | None = None
    ) -> T:
        """Run ``op`` on a replica for a read, else (or as a fallback) on the primary.

        ``started`` is given for transactions: once the user's function has
        started they are neither retried elsewhere nor re-run on the primary.
        """
        self._check_open()
        state = self._state
        if read:
            exclude = 0
            while (i := await self._pick(exclude)) >= 0:
                try:
                    result = await op(self._replicas[i])
                except Exception as exc:
                    failure = classify_failure(exc)
                    if failure is Failure.QUERY_ERROR:
                        raise
                    user_code_ran = started is not None and started()
                    if failure is Failure.RERUN_ON_PRIMARY:
                        if user_code_ran:
                            raise
                        read = False  # only the primary can run it
                        break
                    state.mark_down(i, str(exc))
                    if user_code_ran:
                        raise
                    exclude |= 1 << i
                    continue
                finally:
                    state.selector.release(i)
                state.count_query(i)
                return result
            if read:
                state.no_replica()
        state.count_query(None)
        if read or not state.read_your_writes:
            return await op(self._primary)
        async with self._primary_connection() as conn:
            return await op(conn)

    async def _pick(self, exclude: int) -> int:
        """A replica (counted in flight) for a read, or -1 for the primary."""
        state = self._state
        if state.await_first_round and not self._health.measured:
            await self._health.wait_measured()
        i: int = state.selector.pick(state.eligible(exclude))
        if i >= 0 or not state.token():
            return i
        # No replica is known to have replayed this context's writes: ask one.
        i = state.selector.pick(state.candidates(exclude))
        if i < 0:
            return i
        try:
            async with self._replicas[i]._raw_connection() as conn:
                cur = await conn.execute(REPLAY_LSN_SQL)
                row = await cur.fetchone()
        except BaseException as exc:  # a cancellation too must release it
            state.selector.release(i)
            if classify_failure(exc) is not Failure.NODE_DOWN:
                raise
            state.mark_down(i, str(exc))
            return -1
        state.note_replay(i, None if row is None else row[0])
        if state.reached_token(i):
            return i
        state.selector.release(i)
        return -1

    @asynccontextmanager
    async def _writer(self) -> AsyncIterator[_AsyncQueryable]:
        """The primary: its pool, or with read_your_writes a connection whose
        writes are recorded."""
        if not self._state.read_your_writes:
            yield self._primary
            return
        async with self._primary_connection() as conn:
            yield conn

    @asynccontextmanager
    async def _primary_connection(self) -> AsyncIterator[AsyncConnection]:
        """A primary connection; with read_your_writes, the WAL position reached on it
        at the end of the block becomes this context's token."""
        async with self._primary.connection() as conn:
            if not self._state.read_your_writes:
                yield conn
                return
            try:
                yield conn
            except BaseException:
                # The block may have committed writes before it failed.
                with contextlib.suppress(Exception):
                    await self._record_write(conn)
                raise
            await self._record_write(conn)

    async def _record_write(self, conn: AsyncConnection) -> None:
        async with conn._raw_connection() as raw:
            if raw.closed or raw.pgconn.transaction_status != IDLE:
                return
            cur = await raw.execute(WRITE_LSN_SQL)
            row = await cur.fetchone()
        self._state.wrote(None if row is None else row[0])

    # -- health --------------------------------------------------------------

    async def _health_loop(self, runner: AsyncHealthRunner) -> None:
        """Each ``health_check_interval``: sample the primary's WAL position, then probe
        every replica on its own connection: down ones come back when they answer, up
        ones report replay position and lag. Every probe is bounded in time."""
        # Slot 0 is the primary's probe connection, slot i + 1 replica i's.
        probes: list[ProbeConnection | None] = [None] * (1 + len(self._replicas))

        async def probe_replica(i: int) -> None:
            try:
                row = await self._probe(probes, i + 1, STATUS_SQL)
            except Exception as exc:
                self._state.mark_down(i, f"health probe failed: {exc}")
                return
            self._state.record_status(i, row, time.monotonic())
            self._state.mark_up(i)

        try:
            while True:
                at = time.monotonic()
                # Without the primary, lag is measured against its last known position.
                with contextlib.suppress(Exception):
                    position = (await self._probe(probes, 0, PRIMARY_LSN_SQL))[0]
                    if position is not None:
                        self._state.record_primary(position, at)
                await runner.each(len(self._replicas), probe_replica)
                runner.round_done()
                if await runner.sleep(self._interval):
                    break
        finally:
            for conn in probes:
                if conn is not None:
                    await conn.close()

    async def _probe(
        self, probes: list[ProbeConnection | None], slot: int, query: bytes
    ) -> list[str | None]:
        """The first row of ``query`` on the probe connection ``probes[slot]`` (opened
        when needed), within the probe timeout: a server that stopped answering (a
        partition, a stopped process) cannot hang the health loop. Raises on failure,
        closing the connection."""
        pool = self._primary if slot == 0 else self._replicas[slot - 1]
        config = pool._config
        conn = probes[slot]
        started = time.monotonic()
        try:
            if conn is None or conn.closed:
                conn = probes[slot] = await psycopg.AsyncConnection.connect(
                    config.conninfo,
                    **{
                        **await pool._connect_kwargs(),
                        "connect_timeout": math.ceil(self._probe_timeout),
                    },
                )
            conn.pgconn.send_query(query)
            # psycopg's own wait loop, with a deadline (its query methods have none).
            results = await conn.wait(generators.execute(conn.pgconn), timeout=self._probe_timeout)
            return probe_row(results)
        except Exception as exc:
            probes[slot] = None
            if conn is not None:
                await conn.close()  # mid-query after a timeout: unusable
            if time.monotonic() - started >= self._probe_timeout:
                reason = f"no answer within {self._probe_timeout:g} s"
            else:
                reason = config.redact(str(exc)) or type(exc).__name__
            raise psycopg.OperationalError(reason) from None
