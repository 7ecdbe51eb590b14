"""The connections a pool opens: login retries, a cancel that never blocks, pooler detection.

Generated into its ``_sync`` twin by ``tools/async_to_sync.py``: edit this
file and regenerate, never the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from itertools import count
from time import monotonic
from typing import TYPE_CHECKING, Any

import psycopg

from ._deadline import Deadline
from ._deadline import arm as arm_deadline
from ._deadline import disarm as disarm_deadline
from ._pool_common import (
    PREPARED_ELSEWHERE,
    backoff,
    logger,
    retry_connect,
    safe_call,
)

if TYPE_CHECKING:
    from ._pool_async import AsyncConnectionPool


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
