"""Dedicated connections and transactions: BEGIN and COMMIT, savepoints, post-commit
steps, advisory locks.

Generated into its ``_sync`` twin by ``tools/async_to_sync.py``: edit this
file and regenerate, never the other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from itertools import count
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus

from ._connection_async import _PgConnection
from ._error_text import Sent
from ._exceptions import (
    Error,
    PostCommitError,
)
from ._pool_common import (
    TransactionOptions,
    Unpack,
    advisory_lock_query,
    check_savepoint_options,
    check_transaction_options,
    ended,
    logger,
)
from ._queryable_async import (
    _AsyncQueryable,
    _call,  # async-only
    _settle,
)

if TYPE_CHECKING:
    from ._pool_async import AsyncConnectionPool

T = TypeVar("T")
INERROR = TransactionStatus.INERROR


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
