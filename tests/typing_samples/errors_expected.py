"""Code that mypy --strict must reject: each line whose trailing comment is
``E: <text>`` gets an error whose message contains <text>. Proves the typing
test can fail."""

from __future__ import annotations

import pgfast
from pgfast import sql

db = pgfast.create_pool()
adb = pgfast.create_async_pool()
cluster = pgfast.create_cluster(db, [db])
acluster = pgfast.create_cluster(adb, [adb])


def not_async(tx: pgfast.AsyncTransaction) -> int:
    return 1


async def main() -> None:
    db.query("SELECT 1")  # E: incompatible type "str"
    db.execute(42)  # E: incompatible type "int"
    sql(123)  # E: incompatible type "int"
    count: str = db.execute(sql("DELETE FROM t"))  # E: Incompatible types in assignment
    db.tx(lambda: None)  # E: incompatible type
    await adb.tx(not_async)  # E: incompatible type
    db.tx(lambda tx: None, isolation_levl="serializable")  # E: Unexpected keyword argument
    db.transaction(read_only="yes")  # E: incompatible type "str"
    pgfast.create_cluster(db, [db], balance="round-robin")  # E: No overload variant
    db.bulk_select("t", [], where_columns=["id"], order="id")  # E: Unexpected keyword argument
    cluster.bulk_select("t", [], where_columns=["id"], order="id")  # E: Unexpected keyword argument
    await acluster.bulk_delete("t", [], where_column=["id"])  # E: Unexpected keyword argument
    await acluster.copy_in("t", [], colums=["id"])  # E: Unexpected keyword argument
    print(count)
