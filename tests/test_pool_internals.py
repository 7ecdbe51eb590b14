"""psycopg_pool's internals that pgfast relies on (``pgfast._psycopg_pool_async``) are there.

A psycopg_pool release that moves or renames one fails here, by name, rather
than as a pool that silently stops sweeping idle connections or failing
waiters.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import psycopg_pool
import pytest
from psycopg_pool import pool as sync_module
from psycopg_pool import pool_async as async_module

from pgfast import _psycopg_pool_async, _psycopg_pool_sync
from pgfast._factories import create_async_pool, create_pool
from pgfast._sql import sql

UPGRADE = (
    "psycopg_pool {version} no longer has {what}, which pgfast relies on "
    "(pgfast/_psycopg_pool_async.py): adapt that module to this release"
)


@pytest.mark.parametrize(
    "cls", [psycopg_pool.ConnectionPool, psycopg_pool.AsyncConnectionPool], ids=["sync", "async"]
)
def test_pool_internals_exist(cls: Any) -> None:
    version = psycopg_pool.__version__
    for name in _psycopg_pool_async.POOL_METHODS:
        assert callable(getattr(cls, name, None)), UPGRADE.format(
            version=version, what=f"{cls.__name__}.{name}()"
        )
    pool = cls("", min_size=0, max_size=1, open=False)
    source = inspect.getsource(cls)
    for name in _psycopg_pool_async.POOL_ATTRIBUTES:
        # The async pool makes its lock when opened, in a running loop.
        assert hasattr(pool, name) or f"self.{name} = " in source, UPGRADE.format(
            version=version, what=f"{cls.__name__}.{name}"
        )
    assert _psycopg_pool_async.POOL_ATTRIBUTES == _psycopg_pool_sync.POOL_ATTRIBUTES


def test_waiting_clients_can_be_failed() -> None:
    version = psycopg_pool.__version__
    for module, asynchronous in ((sync_module, False), (async_module, True)):
        client = getattr(module, "WaitingClient", None)
        assert client is not None, UPGRADE.format(version=version, what="WaitingClient")
        fail = getattr(client, "fail", None)
        assert callable(fail), UPGRADE.format(version=version, what="WaitingClient.fail()")
        assert inspect.iscoroutinefunction(fail) == asynchronous


def test_the_overridden_shrink_is_the_one_psycopg_pool_calls() -> None:
    # The sweep runs only if psycopg_pool still calls _shrink_pool by that name.
    for module in (sync_module, async_module):
        source = inspect.getsource(module.ShrinkPool)
        assert "_shrink_pool" in source, UPGRADE.format(
            version=psycopg_pool.__version__, what="ShrinkPool calling _shrink_pool()"
        )


def test_connections_carry_an_expiry(pg_url: str) -> None:
    with create_pool(pg_url, pool_size=1) as db:
        assert db.query_value(sql("SELECT {}::int", 1)) == 1
        conn = db._hot[0]
        assert isinstance(getattr(conn, "_expire_at", None), float), UPGRADE.format(
            version=psycopg_pool.__version__, what="a connection's _expire_at"
        )


def test_waiters_are_failed_through_the_internals(pg_url: str) -> None:
    async def scenario() -> None:
        db = create_async_pool(pg_url, pool_size=1, queue_timeout=10)
        async with db, db.connection():
            waiter = asyncio.ensure_future(db.query_value(sql("SELECT {}::int", 1)))
            await asyncio.sleep(0.1)
            await db._pool.fail_waiters(lambda: RuntimeError("abandoned"))
            with pytest.raises(RuntimeError, match="abandoned"):
                await waiter

    asyncio.run(scenario())
