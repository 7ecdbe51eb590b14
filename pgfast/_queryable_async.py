"""The querying methods every pool, dedicated connection and transaction offers.

Generated into its ``_sync`` twin by ``tools/async_to_sync.py``: edit this
file and regenerate, never the other.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from itertools import count
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import AsyncRawServerCursor
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row

from ._bulk_async import AsyncBulkMixin
from ._connection_async import _PgConnection
from ._error_text import Sent
from ._exceptions import (
    Error,
    PostCommitError,
)
from ._execute_async import _dicts, _names
from ._pool_common import (
    RETRYABLE_TX,
    Row,
    SQLQuery,
    TransactionOptions,
    Unpack,
    backoff,
    begin_statement,
    check_queries,
    logger,
    not_a_query,
    retry_attempts,
    safe_call,
)
from ._split import has_several_statements, several_statements_error

if TYPE_CHECKING:
    from ._pool_async import AsyncConnectionPool

T = TypeVar("T")
IDLE = TransactionStatus.IDLE
_cursor_numbers = count(1)


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


# At the end: the transaction module builds on this one. Imported at run time
# all the same, so that typing.get_type_hints() resolves the signatures above.
from ._transaction_async import AsyncTransaction, _AsyncTransactionBlock  # noqa: E402
