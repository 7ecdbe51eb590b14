"""Protocols: the queryable type user code can take, and what pgfast's own modules
need of each other.

Generated into ``_abc_sync.py`` by ``tools/async_to_sync.py``: edit this file
and regenerate, never the other.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

import psycopg

from ._pool_common import Row, TransactionOptions, Unpack
from ._sql import SQLQuery

T = TypeVar("T")


class AsyncQueryable(Protocol):
    """What an async pool, connection, transaction and cluster all offer (a
    transaction is one too: ``tx`` and ``transaction`` hand out an ``AsyncQueryable``)."""

    async def query(self, q: SQLQuery | list[SQLQuery]) -> Any: ...

    async def query_one(self, q: SQLQuery) -> Row | None: ...

    async def query_value(self, q: SQLQuery) -> Any: ...

    async def execute(self, q: SQLQuery) -> int: ...

    def transaction(
        self, **options: Unpack[TransactionOptions]
    ) -> AbstractAsyncContextManager[AsyncQueryable]: ...

    async def tx(
        self,
        fn: Callable[[AsyncQueryable], Awaitable[T]],
        *,
        retry_serialization_failures: bool | int = False,
        **options: Unpack[TransactionOptions],
    ) -> T: ...

    def query_stream(self, q: SQLQuery, batch_size: int = 1000) -> AsyncGenerator[Row, None]: ...


# -- what bulk loading needs of the object it runs on ------------------------


class _Cache(Protocol):
    _column_types_cache: dict[Any, Any]


class _AsyncSession(Protocol):
    """What the executor needs of a transaction (pgfast's ``AsyncTransaction``)."""

    @property
    def _pool_ref(self) -> _Cache: ...

    async def query(self, q: SQLQuery) -> Any: ...

    async def execute(self, q: SQLQuery) -> int: ...

    def _raw_connection(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]: ...


class _AsyncHost(Protocol):
    """What the executor needs of a pool, connection, transaction or cluster."""

    @property
    def _pool_ref(self) -> _Cache: ...

    async def query(self, q: SQLQuery) -> Any: ...

    async def tx(self, fn: Callable[[Any], Awaitable[T]]) -> T: ...
