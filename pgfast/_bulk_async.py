"""Bulk loading on pools, connections and transactions (API.md §8): the single source.

``_bulk_sync.py`` is generated from this file by ``tools/async_to_sync.py``;
edit this file and regenerate, never the other.

``AsyncBulkMixin`` runs the sans-IO plans of ``pgfast._bulk`` on any host that
offers ``query``, ``tx`` and ``_pool_ref`` (see ``_AsyncHost``): every write
runs inside ``host.tx``, so all batches of one call commit together (a
savepoint when the host already is a transaction), and column types are looked
up on that same connection once per pool, in ``_pool_ref._column_types_cache``.
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager
from itertools import islice
from typing import Any, Protocol, TypeVar

import psycopg

from . import _bulk
from ._impl import flatten
from ._sql import SQLQuery

T = TypeVar("T")
Row = Any
Records = Sequence[Any]
Conditions = Sequence[Mapping[str, Any]]
Names = list[str] | tuple[str, ...]
Types = Mapping[str, str]

# Rows taken from copy_in's iterable at a time: memory stays bounded by this,
# and larger chunks gain nothing (psycopg buffers the COPY stream itself).
COPY_CHUNK_ROWS = 1000


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


async def _table_info(db: _AsyncHost | _AsyncSession, table: _bulk.Table) -> _bulk.TableInfo:
    """``table``'s columns and types: from the pool's cache, else looked up on ``db``."""
    cache = db._pool_ref._column_types_cache
    info = cache.get(table.key)
    if info is None:
        info = _bulk.table_info(table, await db.query(_bulk.column_types_query(table)))
        cache[table.key] = info
    return info


async def _run_write(db: _AsyncHost, plan: _bulk.BulkPlan) -> Any:
    """All of ``plan``'s batches in one transaction: the rows, or the affected row count."""
    cached = db._pool_ref._column_types_cache.get(plan.table.key)
    ready = None
    if not plan.needs_types or cached is not None:
        ready = plan.queries(cached)  # bad columns raise here, before any round trip
        if not ready:
            return [] if plan.returns_rows else 0

    async def work(tx: _AsyncSession) -> Any:
        queries = ready if ready is not None else plan.queries(await _table_info(tx, plan.table))
        if plan.returns_rows:
            rows: list[Row] = []
            for q in queries:
                rows.extend(await tx.query(q))
            return rows
        count = 0
        for q in queries:
            count += await tx.execute(q)
        return count

    return await db.tx(work)


def _check_rows(rows: object) -> None:
    if isinstance(rows, AsyncIterable):  # async-only
        return  # async-only
    if isinstance(rows, (str, bytes, bytearray, Mapping)) or not isinstance(rows, Iterable):
        raise TypeError(f"rows must be an iterable of tuples or dicts, not {type(rows).__name__}")


async def _achunks(rows: AsyncIterable[Any], size: int) -> AsyncIterator[list[Any]]:  # async-only
    chunk: list[Any] = []  # async-only
    async for row in rows:  # async-only
        chunk.append(row)  # async-only
        if len(chunk) == size:  # async-only
            yield chunk  # async-only
            chunk = []  # async-only
    if chunk:  # async-only
        yield chunk  # async-only


async def _chunks(rows: Any, size: int) -> AsyncIterator[list[Any]]:
    """``rows`` in lists of at most ``size``, taken lazily: never all in memory at once."""
    if isinstance(rows, AsyncIterable):  # async-only
        async for chunk in _achunks(rows, size):  # async-only
            yield chunk  # async-only
        return  # async-only
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk


class AsyncBulkMixin:
    """``bulk_insert``, ``bulk_update``, ``bulk_delete``, ``bulk_select`` and ``copy_in``."""

    async def bulk_insert(
        self: _AsyncHost,
        table: str | SQLQuery,
        records: Records,
        *,
        columns: Names | None = None,
        column_types: Types | None = None,
        returning: Names | SQLQuery | None = None,
    ) -> list[Row]:
        """Insert ``records`` (dicts, or tuples in ``columns`` order) in one transaction.

        Returns the ``returning`` columns of the inserted rows, or ``[]``.
        """
        plan = _bulk.plan_insert(
            table, records, columns=columns, column_types=column_types, returning=returning
        )
        result: list[Row] = await _run_write(self, plan)
        return result if plan.returns_rows else []

    async def bulk_update(
        self: _AsyncHost,
        table: str | SQLQuery,
        updates: Sequence[Mapping[str, Mapping[str, Any]]],
        *,
        where_columns: Names,
        set_columns: Names,
        column_types: Types | None = None,
        returning: Names | SQLQuery | None = None,
    ) -> Any:
        """Apply ``{"where": {...}, "set": {...}}`` updates in one transaction.

        Returns the number of rows updated, or the ``returning`` rows.
        """
        plan = _bulk.plan_update(
            table,
            updates,
            where_columns=where_columns,
            set_columns=set_columns,
            column_types=column_types,
            returning=returning,
        )
        return await _run_write(self, plan)

    async def bulk_delete(
        self: _AsyncHost,
        table: str | SQLQuery,
        conditions: Conditions,
        *,
        where_columns: Names,
        column_types: Types | None = None,
    ) -> int:
        """Delete the rows matching any of ``conditions`` in one transaction; return the count."""
        plan = _bulk.plan_delete(
            table, conditions, where_columns=where_columns, column_types=column_types
        )
        count: int = await _run_write(self, plan)
        return count

    async def bulk_select(
        self: _AsyncHost,
        table: str | SQLQuery,
        conditions: Conditions,
        *,
        where_columns: Names,
        column_types: Types | None = None,
        select_columns: Names | None = None,
        distinct_columns: Names | None = None,
        order_by: Names | None = None,
        limit: int | None = None,
    ) -> list[Row]:
        """The rows matching any of ``conditions`` (one query; ``-col`` in ``order_by`` is
        descending)."""
        plan = _bulk.plan_select(
            table,
            conditions,
            where_columns=where_columns,
            column_types=column_types,
            select_columns=select_columns,
            distinct_columns=distinct_columns,
            order_by=order_by,
            limit=limit,
        )
        info = await _table_info(self, plan.table) if plan.needs_types else None
        rows: list[Row] = []
        for q in plan.queries(info):
            rows.extend(await self.query(q))
        return rows

    async def copy_in(
        self: _AsyncHost,
        table: str | SQLQuery,
        rows: Iterable[Any] | AsyncIterable[Any],
        *,
        columns: Names | None = None,
    ) -> int:
        """Binary COPY of ``rows`` (tuples, or dicts keyed by column) into ``table``.

        ``rows`` is consumed lazily, a chunk at a time, so a generator of any
        length streams in bounded memory. Without ``columns``: a dict's keys
        (of the first row), or every column of the table for tuples. All rows
        are copied in one transaction; returns how many were copied.
        """
        parsed = _bulk.parse_table(table)
        if columns is not None:
            _bulk.copy_query(parsed, columns)  # bad names raise before anything is sent
            if not columns:
                raise ValueError("columns must name at least one column")
        _check_rows(rows)
        chunks = _chunks(rows, COPY_CHUNK_ROWS)
        first = await anext(chunks, None)
        if first is None:
            return 0
        names = columns
        if names is None and isinstance(first[0], Mapping):
            names = flatten.keys_of(first)

        async def work(tx: _AsyncSession) -> int:
            info = await _table_info(tx, parsed)
            target = list(info.columns if names is None else names)
            types = _bulk.copy_types(info, target)
            statement, _ = _bulk.copy_query(parsed, target).format()
            count = 0
            chunk: list[Any] | None = first
            async with tx._raw_connection() as conn, conn.cursor().copy(statement) as copy:
                copy.set_types(types)
                while chunk is not None:
                    for row in flatten.records_to_rows(chunk, target, count):
                        await copy.write_row(row)
                    count += len(chunk)
                    chunk = await anext(chunks, None)
            return count

        result: int = await self.tx(work)
        return result
