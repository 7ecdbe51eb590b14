"""Code that mypy --strict must reject: each line whose trailing comment is
``E: <text>`` gets an error whose message contains <text>. Proves the typing
test can fail."""

from __future__ import annotations

import psycopg

import pgfast
from pgfast import sql
from pgfast.abc import Queryable

db = pgfast.create_pool()
adb = pgfast.create_async_pool()
cluster = pgfast.create_cluster(db, [db])
acluster = pgfast.create_cluster(adb, [adb])


def not_async(tx: pgfast.AsyncTransaction) -> int:
    return 1


def takes_queryable(db: Queryable) -> None:
    pass


async def main() -> None:
    db.query("SELECT 1")  # E: incompatible type "str"
    db.execute(42)  # E: incompatible type "int"
    sql(123)  # E: incompatible type "int"
    sql("SELECT 1") + " LIMIT 1"  # E: Unsupported operand types for +
    count: str = db.execute(sql("DELETE FROM t"))  # E: Incompatible types in assignment
    db.tx(lambda: None)  # E: incompatible type
    await adb.tx(not_async)  # E: incompatible type
    db.tx(lambda tx: None, isolation_levl="serializable")  # E: Unexpected keyword argument
    db.transaction(read_only="yes")  # E: incompatible type "str"
    pgfast.create_cluster(db, [db], balance="round-robin")  # E: No overload variant
    print(pgfast.errors.dataclass)  # E: has no attribute "dataclass"
    takes_queryable(adb)  # E: incompatible type "AsyncConnectionPool"
    takes_queryable(psycopg.Connection.connect())  # E: incompatible type "Connection[
    db.bulk_select("t", [], where_columns=["id"], order="id")  # E: Unexpected keyword argument
    cluster.bulk_select("t", [], where_columns=["id"], order="id")  # E: Unexpected keyword argument
    await acluster.bulk_delete("t", [], where_column=["id"])  # E: Unexpected keyword argument
    await acluster.copy_in("t", [], colums=["id"])  # E: Unexpected keyword argument
    print(count)
