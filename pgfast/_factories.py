"""``create_pool`` and ``create_async_pool``: where a pool is made from its options."""

from __future__ import annotations

import inspect

from ._config import AsyncPoolOptions, PoolOptions, resolve_config
from ._pool_async import AsyncConnectionPool
from ._pool_common import Unpack
from ._pool_sync import ConnectionPool


def create_pool(
    connection_string: str | None = None, /, **options: Unpack[PoolOptions]
) -> ConnectionPool:
    """A thread-safe pool for ``connection_string`` (default: ``DATABASE_URL``, libpq ``PG*``).

    The options are listed in docs/connecting.md; an unknown one is a ``TypeError``.
    """
    for name in ("password", "configure"):
        if inspect.iscoroutinefunction(options.get(name)):
            raise TypeError(
                f"{name} is an async function: a sync pool cannot await it; pass a plain "
                "function, or use create_async_pool"
            )
    return ConnectionPool(resolve_config(connection_string, options, "create_pool"))


def create_async_pool(
    connection_string: str | None = None, /, **options: Unpack[AsyncPoolOptions]
) -> AsyncConnectionPool:
    """The asyncio twin of ``create_pool``; connections open on first use."""
    return AsyncConnectionPool(resolve_config(connection_string, options, "create_async_pool"))
