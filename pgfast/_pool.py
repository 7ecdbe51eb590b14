"""``create_pool`` and ``create_async_pool``: the entry points of API.md §2."""

from __future__ import annotations

import inspect
from typing import Any

from ._config import resolve_config
from ._pool_async import AsyncConnectionPool
from ._pool_sync import ConnectionPool


def create_pool(connection_string: str | None = None, /, **options: Any) -> ConnectionPool:
    """A thread-safe pool for ``connection_string`` (default: ``DATABASE_URL``, libpq ``PG*``).

    Options are listed in API.md §2; an unknown one is a ``TypeError``.
    """
    if inspect.iscoroutinefunction(options.get("password")):
        raise TypeError(
            "password is an async function: a sync pool cannot await it; pass a plain "
            "function, or use create_async_pool"
        )
    return ConnectionPool(resolve_config(connection_string, options, "create_pool"))


def create_async_pool(
    connection_string: str | None = None, /, **options: Any
) -> AsyncConnectionPool:
    """The asyncio twin of ``create_pool``; connections open on first use."""
    return AsyncConnectionPool(resolve_config(connection_string, options, "create_async_pool"))
