"""Every use of the async pool's internals in psycopg_pool, in one place.

``_psycopg_pool_sync.py`` is generated from this file by ``tools/async_to_sync.py``;
edit this file and regenerate, never the other.

psycopg_pool owns opening connections, their health checks, ``max_lifetime``
and the sweep of idle ones; pgfast reaches past its public API only here:

- ``_shrink_pool`` (overridden), ``_lock``, ``_nconns``, ``_nconns_min``,
  ``_min_size``, ``_pool`` and ``_close_connection``: pgfast's idle sweep;
- ``_lock``, ``_waiting`` and ``WaitingClient.fail``: failing the callers
  queued in psycopg_pool at once (no server to connect to, a node down);
- ``_expire_at`` on each connection: ``max_lifetime`` and ``max_uses``.

``tests/test_pool_internals.py`` fails loudly when a psycopg_pool release
moves or renames any of them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from time import monotonic
from typing import Any, Protocol

import psycopg_pool

# The attributes of a pool instance, and the methods of the class, used here.
POOL_ATTRIBUTES = ("_lock", "_nconns", "_nconns_min", "_min_size", "_pool", "_waiting")
POOL_METHODS = ("_shrink_pool", "_close_connection")


class _Owner(Protocol):
    async def _cool_stale(self) -> None: ...


class PsycopgPool(psycopg_pool.AsyncConnectionPool[Any]):
    """psycopg_pool's pool with pgfast's idle sweep in place of its shrinking.

    psycopg_pool closes at most one unused connection per ``max_idle`` period,
    so a pool that grew to ``pool_size`` would take ``pool_size`` periods to
    shrink; and the connections pgfast keeps hot are invisible to it. pgfast
    passes a short ``max_idle`` (the sweep period) and, at each sweep, hands
    stale hot connections back and closes every connection idle for longer
    than ``idle_timeout``, down to ``min_size``.
    """

    _pgfast_owner: weakref.ref[Any]
    _pgfast_idle_timeout: float | None

    async def _shrink_pool(self) -> None:
        owner: _Owner | None = self._pgfast_owner()
        if owner is not None:
            await owner._cool_stale()
        if self._pgfast_idle_timeout is None:
            return
        cutoff = monotonic() - self._pgfast_idle_timeout
        closing: list[Any] = []
        async with self._lock:
            surplus = self._nconns - self._min_size
            for conn in list(self._pool):
                if len(closing) >= surplus:
                    break
                if conn._pgfast_idle_since <= cutoff:
                    self._pool.remove(conn)
                    closing.append(conn)
            self._nconns -= len(closing)
            self._nconns_min = len(self._pool)
        for conn in closing:
            await self._close_connection(conn)

    async def fail_waiters(self, error: Callable[[], Exception]) -> None:
        """Fail every caller queued for a connection, each with a fresh ``error()``."""
        async with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        for client in waiting:
            await client.fail(error())


def expire(conn: Any, when: float) -> None:
    """psycopg_pool closes ``conn`` (and opens a replacement) when it is given back."""
    conn._expire_at = when


def expired(conn: Any, now: float) -> bool:
    """Whether ``conn`` is past its ``max_lifetime``."""
    return bool(conn._expire_at <= now)
