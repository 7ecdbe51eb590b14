"""Typical asyncio user code: must type-check under mypy --strict."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any

from typing_extensions import assert_type

import pgfast
from pgfast import sql


async def credit(tx: pgfast.AsyncTransaction) -> int:
    await tx.execute(sql("UPDATE acct SET bal = bal + {} WHERE id = {}", 5, 1))
    balance: int = await tx.query_value(sql("SELECT bal FROM acct WHERE id = {}", 1))
    return balance


async def main() -> None:
    async with pgfast.create_async_pool("postgresql://app@db/app", pool_size=20) as db:
        assert_type(db, pgfast.AsyncConnectionPool)
        rows: list[dict[str, Any]] = await db.query(sql("SELECT 1 AS one"))
        assert_type(await db.tx(credit, retry_serialization_failures=True), int)
        assert_type(await db.execute(sql("VACUUM")), int)
        async with db.transaction(isolation_level=pgfast.IsolationLevel.REPEATABLE_READ) as tx:
            assert_type(tx, pgfast.AsyncTransaction)
            await tx.query(sql("SELECT 1"))
        async with aclosing(db.query_stream(sql("SELECT * FROM big"))) as stream:
            async for row in stream:
                print(row)
        print(rows, db.stats())


asyncio.run(main())
