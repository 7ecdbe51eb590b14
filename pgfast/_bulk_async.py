"""Bulk loading on the async pools, connections and transactions (docs/bulk.md).

``_bulk_sync.py`` is generated from this file by ``tools/async_to_sync.py``;
edit this file and regenerate, never the other.

``AsyncBulkMixin`` runs the sans-IO plans of ``pgfast._bulk_plan`` on any host that
offers ``query``, ``tx`` and ``_pool_ref`` (see ``_AsyncHost``): every write
runs inside ``host.tx``, so all batches of one call commit together (a
savepoint when the host already is a transaction), and column types are looked
up on that same connection once per pool, in ``_pool_ref._column_types_cache``,
and again when the cached entry may be stale (see ``_run_write``).
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Iterable,
    Mapping,
    Sequence,
)
from itertools import islice
from typing import Any, TypeVar

import psycopg

from . import _bulk_plan
from ._abc_async import _AsyncHost, _AsyncSession
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


async def _table_info(
    db: _AsyncHost | _AsyncSession, table: _bulk_plan.Table, *, fresh: bool = False
) -> _bulk_plan.TableInfo:
    """``table``'s columns and types: from the pool's cache, else (or when ``fresh``) looked
    up on ``db`` and cached; a failed lookup leaves nothing cached."""
    cache = db._pool_ref._column_types_cache
    info = None if fresh else cache.get(table.key)
    if info is None:
        cache.pop(table.key, None)
        info = _bulk_plan.table_info(table, await db.query(_bulk_plan.column_types_query(table)))
        cache[table.key] = info
    return info


async def _changed_info(
    db: _AsyncHost | _AsyncSession,
    table: _bulk_plan.Table,
    stale: _bulk_plan.TableInfo,
    error: Exception,
) -> _bulk_plan.TableInfo:
    """``table``'s columns looked up again after ``error``; ``error`` is raised again if
    they did not change (so it was not the cached types' fault)."""
    info = await _table_info(db, table, fresh=True)
    if info == stale:
        raise error
    return info


def _cached(
    db: _AsyncHost, table: _bulk_plan.Table, columns: Iterable[str]
) -> _bulk_plan.TableInfo | None:
    """The cached columns of ``table``, if cached and they include every one of ``columns``
    (else they may be from before an ``ALTER TABLE``: look them up again)."""
    info: _bulk_plan.TableInfo | None = db._pool_ref._column_types_cache.get(table.key)
    return info if info is not None and all(c in info.types for c in columns) else None


def _from_cache(
    db: _AsyncHost, plan: _bulk_plan.BulkPlan
) -> tuple[_bulk_plan.TableInfo | None, list[SQLQuery]] | None:
    """``plan``'s queries, built with the given and cached types, and the cached types used;
    ``None`` when the types must be looked up first: not cached, or perhaps stale (the cache
    lacks a column, or a value does not fit a cached type: a column now an array...)."""
    if not plan.needs_types:
        return None, plan.queries(None)  # bad input raises here, before any round trip
    cached = _cached(db, plan.table, plan.missing(None))
    if cached is None:
        return None
    try:
        return cached, plan.queries(cached)
    except (TypeError, ValueError):
        return None  # raised again, if the fresh types do not fix it


def _may_be_stale(error: Exception) -> bool:
    """Whether ``error`` may come from cached types that no longer match the table: from
    the server, class 42 (undefined table or column, datatype mismatch...) or 22 (a value
    sent as the old type); client side, a value the old type's dumper refused."""
    if isinstance(error, psycopg.Error):
        return (error.sqlstate or "")[:2] in ("42", "22")
    return isinstance(error, (TypeError, ValueError))


async def _run_queries(
    tx: _AsyncSession, plan: _bulk_plan.BulkPlan, queries: list[SQLQuery]
) -> Any:
    """Run ``queries`` in order: the rows, or the affected row count."""
    if plan.returns_rows:
        rows: list[Row] = []
        for q in queries:
            rows.extend(await tx.query(q))
        return rows
    count = 0
    for q in queries:
        count += await tx.execute(q)
    return count


async def _run_write(db: _AsyncHost, plan: _bulk_plan.BulkPlan) -> Any:
    """All of ``plan``'s batches in one transaction: the rows, or the affected row count.

    With cached types, a server error that stale types may explain gets the types
    looked up again, and when they changed, the whole call runs once more: its
    first transaction (or savepoint) was rolled back, so nothing of it was written.
    """
    built = _from_cache(db, plan)
    if built is None:

        async def looked_up(tx: _AsyncSession) -> Any:
            info = await _table_info(tx, plan.table, fresh=True)
            return await _run_queries(tx, plan, plan.queries(info))

        return await db.tx(looked_up)
    cached, queries = built
    if not queries:
        return [] if plan.returns_rows else 0
    try:
        return await db.tx(lambda tx: _run_queries(tx, plan, queries))
    except psycopg.Error as exc:
        if cached is None or not _may_be_stale(exc):
            raise
        error = exc
    stale = cached

    async def again(tx: _AsyncSession) -> Any:
        info = await _changed_info(tx, plan.table, stale, error)
        return await _run_queries(tx, plan, plan.queries(info))

    return await db.tx(again)


async def _select(db: _AsyncHost, queries: list[SQLQuery]) -> list[Row]:
    rows: list[Row] = []
    for q in queries:
        rows.extend(await db.query(q))
    return rows


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
        plan = _bulk_plan.plan_insert(
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
        plan = _bulk_plan.plan_update(
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
        plan = _bulk_plan.plan_delete(
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
        plan = _bulk_plan.plan_select(
            table,
            conditions,
            where_columns=where_columns,
            column_types=column_types,
            select_columns=select_columns,
            distinct_columns=distinct_columns,
            order_by=order_by,
            limit=limit,
        )
        built = _from_cache(self, plan)
        if built is None:
            info = await _table_info(self, plan.table, fresh=True)
            return await _select(self, plan.queries(info))
        cached, queries = built
        try:
            return await _select(self, queries)
        except psycopg.Error as exc:
            if cached is None or not _may_be_stale(exc):
                raise
            error = exc
        try:
            info = await _changed_info(self, plan.table, cached, error)
        except psycopg.Error:
            # Gone, or ``self`` is a transaction the failed query aborted: the first error stands.
            raise error from None
        return await _select(self, plan.queries(info))

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
        parsed = _bulk_plan.parse_table(table)
        if columns is not None:
            _bulk_plan.copy_query(parsed, columns)  # bad names raise before anything is sent
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
        cached = _cached(self, parsed, names or ())
        if names is None and cached is not None and not _fills(first[0], cached):
            cached = None  # tuples sized for other columns: the table may have changed
        # Rows taken past the first chunk cannot be taken again: no retry after that.
        streamed = False

        async def work(tx: _AsyncSession, info: _bulk_plan.TableInfo) -> int:
            nonlocal streamed
            target = list(info.columns if names is None else names)
            types = _bulk_plan.copy_types(info, target)
            statement, _ = _bulk_plan.copy_query(parsed, target).format()
            count = 0
            chunk: list[Any] | None = first
            async with tx._raw_connection() as conn, conn.cursor().copy(statement) as copy:
                copy.set_types(types)
                while chunk is not None:
                    for row in flatten.records_to_rows(chunk, target, count):
                        await copy.write_row(row)
                    count += len(chunk)
                    chunk = await anext(chunks, None)
                    streamed = streamed or chunk is not None
            return count

        async def looked_up(tx: _AsyncSession) -> int:
            return await work(tx, await _table_info(tx, parsed, fresh=True))

        if cached is None:
            result: int = await self.tx(looked_up)
            return result
        try:
            result = await self.tx(lambda tx: work(tx, cached))
            return result
        except (psycopg.Error, TypeError, ValueError) as exc:
            if not _may_be_stale(exc):
                raise
            if streamed:
                self._pool_ref._column_types_cache.pop(parsed.key, None)  # fresh next time
                raise
            error = exc
        stale = cached

        async def again(tx: _AsyncSession) -> int:
            return await work(tx, await _changed_info(tx, parsed, stale, error))

        result = await self.tx(again)
        return result


def _fills(row: object, info: _bulk_plan.TableInfo) -> bool:
    """Whether ``row`` may be a tuple of every column in ``info`` (a non-tuple is the
    flattener's to reject)."""
    return not isinstance(row, (tuple, list)) or len(row) == len(info.columns)
