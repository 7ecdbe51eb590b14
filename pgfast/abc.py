"""Types for code that takes any pgfast queryable: a pool, a dedicated connection,
a transaction or a cluster.

    async def count_users(db: pgfast.abc.AsyncQueryable) -> int:
        return await db.query_value(sql("SELECT count(*) FROM users"))

Each is a ``typing.Protocol``: pgfast's pools, connections, transactions and
clusters satisfy them as they are, and so can a test double.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ._pool_common import Row, TransactionOptions, Unpack
from ._sql import SQLQuery

if TYPE_CHECKING:
    from ._transaction_async import AsyncTransaction
    from ._transaction_sync import Transaction

__all__ = ["AsyncQueryable", "Queryable"]

T = TypeVar("T")


class AsyncQueryable(Protocol):
    """What an async pool, connection, transaction and cluster all offer."""

    async def query(self, q: SQLQuery | list[SQLQuery]) -> Any: ...

    async def query_one(self, q: SQLQuery) -> Row | None: ...

    async def query_value(self, q: SQLQuery) -> Any: ...

    async def execute(self, q: SQLQuery) -> int: ...

    def transaction(
        self, **options: Unpack[TransactionOptions]
    ) -> AbstractAsyncContextManager[AsyncTransaction]: ...

    async def tx(
        self,
        fn: Callable[[AsyncTransaction], Awaitable[T]],
        *,
        retry_serialization_failures: bool | int = False,
        **options: Unpack[TransactionOptions],
    ) -> T: ...

    def query_stream(self, q: SQLQuery, batch_size: int = 1000) -> AsyncGenerator[Row, None]: ...


class Queryable(Protocol):
    """What a sync pool, connection, transaction and cluster all offer."""

    def query(self, q: SQLQuery | list[SQLQuery]) -> Any: ...

    def query_one(self, q: SQLQuery) -> Row | None: ...

    def query_value(self, q: SQLQuery) -> Any: ...

    def execute(self, q: SQLQuery) -> int: ...

    def transaction(
        self, **options: Unpack[TransactionOptions]
    ) -> AbstractContextManager[Transaction]: ...

    def tx(
        self,
        fn: Callable[[Transaction], T],
        *,
        retry_serialization_failures: bool | int = False,
        **options: Unpack[TransactionOptions],
    ) -> T: ...

    def query_stream(self, q: SQLQuery, batch_size: int = 1000) -> Generator[Row, None, None]: ...
