"""Typical cluster code: create_cluster's type follows the pools' kind."""

from __future__ import annotations

import os
from typing import Any

from typing_extensions import assert_type

import pgfast
from pgfast import sql


def sync_cluster() -> None:
    primary = pgfast.create_pool(os.environ["DATABASE_URL"])
    replicas = [pgfast.create_pool(u) for u in os.environ["DATABASE_REPLICA_URLS"].split(",")]
    db = pgfast.create_cluster(primary, replicas, balance="least_busy", max_replica_lag=5.0)
    assert_type(db, pgfast.Cluster)
    with db:
        rows: list[dict[str, Any]] = db.query(sql("SELECT * FROM users WHERE id = {}", 1))
        token = db.write_token()
        with db.read_after(token):
            print(rows, db.query_value(sql("SELECT count(*) FROM users")))
        assert_type(db.execute(sql("DELETE FROM users WHERE id = {}", 1)), int)
        assert_type(db.primary, pgfast.ConnectionPool)


async def async_cluster() -> None:
    primary = pgfast.create_async_pool(os.environ["DATABASE_URL"])
    replicas = [pgfast.create_async_pool(u) for u in os.environ["DATABASE_REPLICA_URLS"].split(",")]
    db = pgfast.create_cluster(primary, replicas, read_your_writes=True)
    assert_type(db, pgfast.AsyncCluster)
    async with db:
        await db.query(sql("SELECT 1"))
        assert_type(await db.copy_in("users", [(1, "ada")], columns=["id", "name"]), int)
