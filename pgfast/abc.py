"""Types for code that takes any pgfast queryable: a pool, a dedicated connection,
a transaction or a cluster.

    async def count_users(db: pgfast.abc.AsyncQueryable) -> int:
        return await db.query_value(sql("SELECT count(*) FROM users"))

Each is a ``typing.Protocol``: pgfast's pools, connections, transactions and
clusters satisfy them as they are, and so can a test double.
"""

from ._abc_async import AsyncQueryable
from ._abc_sync import Queryable

__all__ = ["AsyncQueryable", "Queryable"]
