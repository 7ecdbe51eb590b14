"""Running a statement on a held connection: parameters, prepared statements, deadlines, errors.

Generated into its ``_sync`` twin by ``tools/async_to_sync.py``: edit this
file and regenerate, never the other.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from itertools import repeat
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncRawCursor, generators
from psycopg._preparing import Prepare
from psycopg._queries import PostgresRawQuery
from psycopg.adapt import Transformer
from psycopg.pq import ExecStatus, TransactionStatus
from psycopg.rows import tuple_row

from . import _impl
from ._config import Hook, PoolConfig
from ._connection_async import _PgConnection
from ._deadline import Deadline
from ._deadline import arm as arm_deadline
from ._deadline import disarm as disarm_deadline
from ._error_text import Sent, rewrite_error
from ._exceptions import (
    CommitUnknownError,
    QueryTimeoutCommitUnknownError,
    QueryTimeoutError,
)
from ._pool_common import (
    PREPARED_ELSEWHERE,
    Row,
    SQLQuery,
    logger,
    safe_call,
)
from ._sql import sql

E = TypeVar("E", bound=BaseException)
IDLE = TransactionStatus.IDLE
TUPLES_OK = ExecStatus.TUPLES_OK
is_read_only_text = _impl.classify.is_read_only


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


class AsyncStatementRunner:
    """Runs statements on a connection held for them, for the pool that inherits it:
    parameters, prepared statements, ``query_timeout``, the query hooks, errors
    redacted of parameter values."""

    _config: PoolConfig
    _row_dicts: bool
    _queries: int
    _query_timeout: float | None
    _prepare_threshold: int | None
    _on_query_start: Hook
    _on_query_results: Hook
    _on_query_error: Hook

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
