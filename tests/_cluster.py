"""What the cluster tests share: routing seen through each pool's hooks, server
processes to stop, and the waits whose async twins the generated sync tests call
(tools/async_to_sync.py renames ``_async`` names to ``_sync``)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from pgfast._cluster_async import AsyncCluster
from pgfast._cluster_common import STATUS_SQL
from pgfast._cluster_sync import Cluster
from pgfast.testing import LocalCluster

FAKE_URL = "postgresql://nobody@127.0.0.1:1/none"
PROBE_BACKEND = (
    "SELECT pid FROM pg_stat_activity WHERE query = "
    + psycopg.sql.quote(STATUS_SQL.decode())
    + " AND pid <> pg_backend_pid()"
)
WAL_RECEIVER = "SELECT pid FROM pg_stat_wal_receiver"

P = TypeVar("P")


class Recorder:
    """Statement texts seen by each node's pool; node 0 is the primary."""

    def __init__(self, nodes: int) -> None:
        self.texts: list[list[str]] = [[] for _ in range(nodes)]
        self.errors: list[list[str | None]] = [[] for _ in range(nodes)]

    def start_hook(self, node: int) -> Any:
        return lambda q, text, params: self.texts[node].append(text)

    def error_hook(self, node: int) -> Any:
        return lambda q, text, params, exc: self.errors[node].append(exc.sqlstate)

    def counts(self, needle: str) -> list[int]:
        return [sum(needle in t for t in texts) for texts in self.texts]


def recorded_pools(pg_cluster: LocalCluster, rec: Recorder, create: Callable[..., P]) -> list[P]:
    """A pool per node (``create_pool`` or ``create_async_pool``), primary first,
    whose statements and errors ``rec`` records."""
    urls = [pg_cluster.primary_url, *pg_cluster.replica_urls]
    return [
        create(
            url,
            on_query_start=rec.start_hook(n),
            on_query_error=rec.error_hook(n),
            connect_timeout=2,
        )
        for n, url in enumerate(urls)
    ]


def server_pid(url: str, query: str) -> int:
    """The pid of the process of the server at ``url`` found by ``query`` (one row)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None, query
    return int(row[0])


async def wait_until_async(what: str, check: Callable[[], Any], timeout: float = 20.0) -> None:
    """Poll ``check()`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def wait_until_sync(what: str, check: Callable[[], Any], timeout: float = 20.0) -> None:
    """Poll ``check()`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def dispose_within_async(cluster: AsyncCluster, seconds: float) -> float:
    """Dispose ``cluster``; fail (instead of hanging) when it takes longer than ``seconds``."""
    started = time.monotonic()
    await asyncio.wait_for(cluster.dispose(), seconds)
    return time.monotonic() - started


def dispose_within_sync(cluster: Cluster, seconds: float) -> float:
    """Dispose ``cluster`` in a thread; fail (instead of hanging) when it takes longer."""
    started = time.monotonic()
    thread = threading.Thread(target=cluster.dispose, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"dispose() still running after {seconds} s"
    return time.monotonic() - started


def alive_async(health: asyncio.Task[None]) -> bool:
    """Whether a cluster's health task runs."""
    return not health.done()


def alive_sync(health: threading.Thread) -> bool:
    """Whether a cluster's health thread runs; it is a daemon thread, so it never keeps
    the process alive."""
    assert health.daemon and health.name == "pgfast-cluster-health"
    return health.is_alive()
