"""Bulk loading calls: must type-check under mypy --strict."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pgfast
from pgfast import sql


def events() -> Iterator[tuple[int, str]]:
    for i in range(10):
        yield i, f"event {i}"


def load(db: pgfast.ConnectionPool) -> None:
    inserted: list[Any] = db.bulk_insert(
        "users", [{"id": 1, "name": "Ada"}], column_types={"id": "int8"}, returning=["id"]
    )
    db.bulk_insert(sql.ident("app", "users"), [(2, "Grace")], columns=["id", "name"])
    db.bulk_update(
        "users",
        [{"where": {"id": 1}, "set": {"name": "Ada L."}}],
        where_columns=["id"],
        set_columns=["name"],
    )
    deleted: int = db.bulk_delete("users", [{"id": 2}], where_columns=["id"])
    found: list[Any] = db.bulk_select(
        "users", [{"id": 1}], where_columns=["id"], order_by=["-id"], limit=10
    )
    copied: int = db.copy_in("events", events(), columns=["id", "label"])
    wanted = pgfast.bulk_condition([{"id": 1}], where_columns=["id"], column_types={"id": "int8"})
    db.query(sql("SELECT * FROM users WHERE {}", wanted))
    print(inserted, deleted, found, copied)


async def aload(db: pgfast.AsyncConnectionPool) -> int:
    await db.bulk_insert("users", [{"id": 3, "name": "Linus"}])
    copied: int = await db.copy_in("events", [(1, "x")])
    return copied
