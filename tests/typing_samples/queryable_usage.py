"""Functions typed with pgfast.abc take every kind of queryable, sync and async."""

from __future__ import annotations

import pgfast
from pgfast import sql
from pgfast.abc import AsyncQueryable, Queryable


def count(db: Queryable) -> int:
    return int(db.query_value(sql("SELECT count(*) FROM users")))


async def acount(db: AsyncQueryable) -> int:
    return int(await db.query_value(sql("SELECT count(*) FROM users")))


def sync_callers(pool: pgfast.ConnectionPool, cluster: pgfast.Cluster) -> None:
    count(pool)
    count(cluster)
    with pool.connection() as conn:
        count(conn)
    with pool.transaction() as tx:
        count(tx)


async def async_callers(pool: pgfast.AsyncConnectionPool, cluster: pgfast.AsyncCluster) -> None:
    await acount(pool)
    await acount(cluster)
    async with pool.connection() as conn:
        await acount(conn)
    async with pool.transaction() as tx:
        await acount(tx)


def generic_sync(db: Queryable) -> int:
    with db.transaction() as tx:
        count(tx)
    return db.tx(count, read_only=True)


async def generic_async(db: AsyncQueryable) -> int:
    async with db.transaction() as tx:
        await acount(tx)
    return await db.tx(acount, read_only=True)
